//! The writer: the one owner of the log's head and of the index.
//!
//! A thread of its own drains a bounded channel of [`Command`]s ([`QUEUE`] deep; a full
//! queue makes submitters wait, so a driver holds its event at the source). It takes every
//! command waiting (up to [`BATCH`]) and stores all the submits among them as one group:
//! dedupe against the window, ids, the quota, one `write` and one `fdatasync`, then the
//! pointers into the index (its in-memory overlay, see [`super::index`]) and the answers.
//! Acks, dead letters and flushes follow in the order they came. Nothing else writes the
//! log or changes the index, so no lock guards them.
//!
//! ## Flushing the index
//!
//! The index reaches sled (one batch: the overlay's chunks, `m/wal` (how far the log is
//! indexed) and `m/next_id`) and sled's disk (one `fsync`) when [`OutboxOptions::index_flush`]
//! has passed since it first changed, before a segment file is deleted, on
//! [`Command::Flush`], and when the writer stops. Between flushes nothing is written but
//! the log: per group one `write` and one `fdatasync`, per ack a mark without a sync of its
//! own (it goes with the next group's `fdatasync` or the flush). With nothing changed the
//! thread sleeps, with no timer armed, until the next segment may be deleted, or an hour.
//!
//! ## Failures
//!
//! A failed write is cut off again (see [`Head::append`]); if that fails too, an abort
//! mark for the group's ids goes first into the next write. The submitters get
//! [`OutboxError::Unavailable`] and the store is `Refusing` until a write succeeds (logged
//! when it starts, every 5 minutes while it lasts, and when it ends). A sled error makes
//! the writer reopen sled and replay the log ([`super::replay`]), at most every 5 s; if
//! that keeps failing for a minute the store is `Broken`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dedupe::{self, key_hash, Seen};
use super::index::{chunk_of, Edit, Src, SPILL_CHUNKS};
use super::replay::{self, Opened, K_NEXT_ID, K_WAL};
use super::segments::{self, Cut, Head, Kind, Location};
use super::{
    dead, decode_record, encode_record, quota, NewRecord, OutboxError, OutboxOptions, Shared,
    StoreHealth, Submitted,
};
use crate::clock::Clock;

/// Commands waiting for the writer, at most.
pub(super) const QUEUE: usize = 256;
/// Commands taken at once (and so submits in one group), at most.
const BATCH: usize = 256;
/// A refusal lasting this long is summarised in the log again.
const SUMMARY_EVERY: Duration = Duration::from_secs(300);
/// The writer tries to reopen a failed index at most this often…
const REOPEN_EVERY: Duration = Duration::from_secs(5);
/// …and gives up (the store is broken) after failing this long.
const REOPEN_GIVE_UP: Duration = Duration::from_secs(60);
/// Keys of earlier versions deleted per tick.
const LEGACY_STEP: usize = 2000;
/// Asleep with nothing to do, the writer wakes this often at most.
const IDLE: Duration = Duration::from_secs(3600);

/// Where an answer goes.
pub(super) type Answer<T> = tokio::sync::oneshot::Sender<Result<T, OutboxError>>;

/// What the writer is asked to do.
pub(super) enum Command {
    Submit(Box<NewRecord>, Answer<Submitted>),
    Ack(Vec<u64>, Answer<()>),
    /// Move a record to the dead letters; `None`: nobody waits (a reader found it corrupt).
    Dead(u64, String, Option<Answer<()>>),
    DeadRetry(u64, Answer<()>),
    DeadDrop(u64, Answer<()>),
    Flush(Answer<()>),
}

/// One segment as the writer counts it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SegInfo {
    pub size: u64,
    /// Pending records pointing into it.
    pub live: u64,
    /// When it was last written (Unix ms).
    pub newest_ms: i64,
}

/// The writer's books: segments, counters.
#[derive(Debug, Default)]
pub(super) struct Books {
    pub segs: BTreeMap<u64, SegInfo>,
    pub pending: u64,
    pub dead: u64,
    pub dead_bytes: u64,
    /// The kept keys of deleted segments (see [`super::dedupe`]).
    pub keys_bytes: u64,
}

impl Books {
    pub(super) fn add_segment(&mut self, seg: u64, size: u64, newest_ms: i64) {
        self.segs.insert(
            seg,
            SegInfo {
                size,
                live: 0,
                newest_ms,
            },
        );
    }

    /// A pending record points into `seg`; false if that segment is not known (missing).
    pub(super) fn point(&mut self, seg: u64) -> bool {
        match self.segs.get_mut(&seg) {
            Some(s) => {
                s.live += 1;
                true
            }
            None => false,
        }
    }

    fn unpoint(&mut self, seg: u64) {
        if let Some(s) = self.segs.get_mut(&seg) {
            s.live = s.live.saturating_sub(1);
        }
    }

    /// What `max_disk` limits.
    pub(super) fn bytes(&self) -> u64 {
        self.segs.values().map(|s| s.size).sum::<u64>() + self.dead_bytes + self.keys_bytes
    }
}

/// A lasting refusal of new events.
struct Refusal {
    since: Instant,
    reason: String,
    refused: u64,
    last_summary: Instant,
}

/// One submit of a group, staged.
enum Staged {
    Record {
        id: u64,
        hash: u64,
        entry: Vec<u8>,
    },
    /// Its key was accepted before this group.
    Duplicate,
    /// Its key is in this group already: answered with the group.
    DuplicateInGroup,
    Refused(OutboxError),
}

/// The writer (see the module docs).
pub(super) struct Writer {
    shared: Arc<Shared>,
    opts: OutboxOptions,
    db: sled::Db,
    head: Head,
    books: Books,
    seen: Seen,
    next_id: u64,
    /// Start a new segment once the head is this long.
    roll: u64,
    reserve: u64,
    /// Ids of failed groups whose bytes could not be cut off: an abort mark is owed.
    owed_abort: Option<(u64, u64)>,
    /// The index changed since it was last flushed (since when).
    dirty: Option<Instant>,
    /// Marks were written to the head without an fsync.
    head_unsynced: bool,
    refusing: Option<Refusal>,
    /// sled failed: when first, when last tried to reopen, why.
    index_failed: Option<(Instant, Option<Instant>, String)>,
    legacy_keys: bool,
    last_prune: Instant,
    last_reserve_check: Instant,
}

fn io_unavailable(e: &std::io::Error) -> OutboxError {
    if replay::is_no_space(e) {
        OutboxError::Unavailable(format!("the disk is full: {e}"))
    } else {
        OutboxError::Unavailable(format!("write to the log failed: {e}"))
    }
}

impl Writer {
    pub(super) fn new(o: Opened, opts: OutboxOptions) -> Writer {
        let roll = (opts.max_disk / 32).clamp(64 << 10, 16 << 20);
        let reserve = quota::reserve_size(opts.max_disk);
        let r = o.recovered;
        let mut w = Writer {
            shared: o.shared,
            db: o.db,
            head: o.head,
            books: r.books,
            seen: r.seen,
            next_id: r.next_id,
            roll,
            reserve,
            owed_abort: None,
            dirty: None,
            head_unsynced: false,
            refusing: None,
            index_failed: None,
            legacy_keys: r.legacy_keys,
            last_prune: Instant::now(),
            last_reserve_check: Instant::now(),
            opts,
        };
        if !r.inline.is_empty() {
            w.take_over_inline(&r.inline);
        }
        quota::ensure(&w.shared.path, w.reserve);
        w.publish();
        w
    }

    /// Put the counters where readers see them.
    fn publish(&self) {
        let s = &self.shared;
        s.pending.store(self.books.pending, Ordering::Relaxed);
        s.dead.store(self.books.dead, Ordering::Relaxed);
        s.bytes.store(self.books.bytes(), Ordering::Relaxed);
    }

    /// Run until every handle is gone, then flush the index.
    pub(super) fn run(mut self, rx: &flume::Receiver<Command>) {
        loop {
            match rx.recv_timeout(self.sleep_for()) {
                Ok(first) => {
                    let mut cmds = vec![first];
                    while cmds.len() < BATCH {
                        match rx.try_recv() {
                            Ok(c) => cmds.push(c),
                            Err(_) => break,
                        }
                    }
                    self.handle(cmds);
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            self.tick();
        }
        if let Some((first, last)) = self.owed_abort {
            let m = Self::abort_mark(first, last);
            if self.head.append(&m, true).is_ok() {
                self.owed_abort = None;
                self.grow_head(m.len() as u64);
            }
        }
        self.head.seal();
        if let Err(e) = self.flush_index() {
            tracing::warn!(error = %e, "outbox: the index could not be flushed at shutdown; the log is replayed at the next start");
        }
    }

    /// How long to sleep when nothing comes.
    fn sleep_for(&self) -> Duration {
        let mut d = IDLE;
        if let Some(since) = self.dirty {
            d = d.min(self.opts.index_flush.saturating_sub(since.elapsed()));
        }
        if self.index_failed.is_some() || self.legacy_keys {
            d = d.min(REOPEN_EVERY);
        }
        if self.refusing.is_some() {
            d = d.min(SUMMARY_EVERY);
        }
        if self.deletable_soon() {
            d = d.min(self.opts.dedupe_window);
        }
        d.max(Duration::from_millis(10))
    }

    fn handle(&mut self, cmds: Vec<Command>) {
        if self.index_failed.is_some() {
            self.try_reopen(true);
        }
        let mut submits = Vec::new();
        let mut rest = Vec::new();
        for c in cmds {
            match c {
                Command::Submit(r, a) => submits.push((r, a)),
                other => rest.push(other),
            }
        }
        if !submits.is_empty() {
            self.store_group(submits);
        }
        // Each answer goes out after the counters readers see are up to date.
        for c in rest {
            match c {
                Command::Submit(r, a) => self.store_group(vec![(r, a)]),
                Command::Ack(ids, a) => {
                    let r = self.ack(&ids);
                    self.publish();
                    let _ = a.send(r);
                }
                Command::Dead(id, reason, a) => {
                    let r = self.dead_letter(id, &reason);
                    self.publish();
                    if let Some(a) = a {
                        let _ = a.send(r);
                    } else if let Err(e) = r {
                        tracing::warn!(id, error = %e, "outbox: could not move an unreadable record to the dead letters (tried again at the next read)");
                    }
                }
                Command::DeadRetry(id, a) => {
                    let r = self.dead_retry(id);
                    self.publish();
                    let _ = a.send(r);
                }
                Command::DeadDrop(id, a) => {
                    let r = self.dead_drop(id);
                    self.publish();
                    let _ = a.send(r);
                }
                Command::Flush(a) => {
                    let _ = a.send(self.flush_index());
                }
            }
        }
    }

    /// Stage, write, index and answer a group of submits.
    fn store_group(&mut self, submits: Vec<(Box<NewRecord>, Answer<Submitted>)>) {
        let now = Clock::local_ms();
        self.prune_window(now);
        let mut answers = Vec::with_capacity(submits.len());
        let mut staged = Vec::with_capacity(submits.len());
        let mut in_group = HashSet::new();
        for (rec, answer) in submits {
            answers.push(answer);
            let rec = *rec;
            let hash = if rec.source_key.is_empty() {
                0
            } else {
                key_hash(rec.source_key.as_bytes())
            };
            if hash != 0 && self.seen.contains(hash, now) {
                staged.push(Staged::Duplicate);
                continue;
            }
            if hash != 0 && !in_group.insert(hash) {
                staged.push(Staged::DuplicateInGroup);
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let mut meta = rec.meta;
            meta.img_name = rec.img_name.render(id);
            let body = encode_record(&meta, &rec.image);
            staged.push(Staged::Record {
                id,
                hash,
                entry: segments::encode(Kind::Record, id, now, hash, &body),
            });
        }
        self.fit_quota(&mut staged);
        let results = self.write_group(staged, now);
        self.publish();
        for (a, r) in answers.into_iter().zip(results) {
            let _ = a.send(r);
        }
    }

    /// Make room for the staged records under `max_disk` (compacting old segments); the
    /// records that still do not fit are refused.
    fn fit_quota(&mut self, staged: &mut [Staged]) {
        let max = self.opts.max_disk;
        // A record larger than the whole quota can never fit: refused without compacting.
        for s in staged.iter_mut() {
            if let Staged::Record { entry, .. } = s {
                let n = entry.len() as u64;
                if n > max {
                    *s = Staged::Refused(OutboxError::Full { needed: n, max });
                }
            }
        }
        let need: u64 = staged
            .iter()
            .map(|s| match s {
                Staged::Record { entry, .. } => entry.len() as u64,
                _ => 0,
            })
            .sum();
        if self.books.bytes() + need > max {
            self.make_room(need);
        }
        let mut used = self.books.bytes();
        for s in staged.iter_mut() {
            if let Staged::Record { entry, .. } = s {
                let n = entry.len() as u64;
                if used + n > max {
                    *s = Staged::Refused(OutboxError::Full { needed: n, max });
                } else {
                    used += n;
                }
            }
        }
    }

    /// Write a staged group with one write and one fsync; the answers in order.
    fn write_group(
        &mut self,
        staged: Vec<Staged>,
        now: i64,
    ) -> Vec<Result<Submitted, OutboxError>> {
        let records: Vec<(u64, u64, usize)> = staged
            .iter()
            .filter_map(|s| match s {
                Staged::Record { id, hash, entry } => Some((*id, *hash, entry.len())),
                _ => None,
            })
            .collect();
        let mut written: Result<Vec<Location>, OutboxError> = Ok(Vec::new());
        if !records.is_empty() {
            written = self.append_records(&staged);
        }
        let mut results = Vec::with_capacity(staged.len());
        match written {
            Ok(locs) => {
                if !records.is_empty() {
                    self.index_records(&records, &locs, now);
                    self.accepting();
                }
                let mut locs = locs.into_iter();
                for s in staged {
                    results.push(match s {
                        Staged::Record { id, .. } => {
                            locs.next();
                            Ok(Submitted::Stored(id))
                        }
                        Staged::Duplicate | Staged::DuplicateInGroup => Ok(Submitted::Duplicate),
                        Staged::Refused(e) => {
                            self.refused(&e.to_string());
                            Err(e)
                        }
                    });
                }
            }
            Err(e) => {
                let msg = e.to_string();
                self.refused(&msg);
                for s in staged {
                    results.push(match s {
                        Staged::Duplicate => Ok(Submitted::Duplicate),
                        Staged::Refused(e) => Err(e),
                        _ => Err(OutboxError::Unavailable(msg.clone())),
                    });
                }
            }
        }
        if let Some(r) = &mut self.refusing {
            r.refused += results.iter().filter(|r| r.is_err()).count() as u64;
        }
        results
    }

    /// Append the staged records (after an owed abort mark) and fsync: their locations.
    fn append_records(&mut self, staged: &[Staged]) -> Result<Vec<Location>, OutboxError> {
        if self.head.len >= self.roll {
            self.roll_head().map_err(|e| io_unavailable(&e))?;
        }
        let mut buf = Vec::new();
        if let Some((first, last)) = self.owed_abort {
            buf.extend(Self::abort_mark(first, last));
        }
        let mut lens = vec![buf.len()];
        let (mut first, mut last) = (u64::MAX, 0);
        for s in staged {
            if let Staged::Record { id, entry, .. } = s {
                buf.extend_from_slice(entry);
                lens.push(entry.len());
                first = first.min(*id);
                last = last.max(*id);
            }
        }
        let mut locs = self.head.place(lens);
        locs.remove(0);
        match self.head.append(&buf, true) {
            Ok(()) => {
                self.head_unsynced = false;
                self.owed_abort = None;
                self.grow_head(buf.len() as u64);
                Ok(locs)
            }
            Err((e, cut)) => {
                if let Cut::Failed(c) = cut {
                    tracing::error!(error = %c, first, last, "outbox: a failed write could not be cut off the log; an abort mark for its records will be written first thing");
                    self.owed_abort = Some(match self.owed_abort {
                        Some((f, _)) => (f, last),
                        None => (first, last),
                    });
                }
                Err(io_unavailable(&e))
            }
        }
    }

    fn abort_mark(first: u64, last: u64) -> Vec<u8> {
        segments::encode(
            Kind::Abort,
            0,
            Clock::local_ms(),
            0,
            &segments::encode_ids(&[first, last]),
        )
    }

    /// The head grew by `n` bytes (written now).
    fn grow_head(&mut self, n: u64) {
        let seg = self.books.segs.entry(self.head.seg).or_default();
        seg.size += n;
        seg.newest_ms = Clock::local_ms();
    }

    /// Start a new head segment (the old one is complete: everything in it was fsynced, or
    /// is a mark that may be lost).
    fn roll_head(&mut self) -> std::io::Result<()> {
        if self.head_unsynced {
            self.head.sync()?;
            self.head_unsynced = false;
        }
        self.head.seal();
        let next = self.head.seg + 1;
        self.head = Head::create(&self.shared.seg_dir, next)?;
        self.books.add_segment(next, 0, Clock::local_ms());
        Ok(())
    }

    /// Forget the keys past the window (in memory and their files), once a minute.
    fn prune_window(&mut self, now: i64) {
        if self.last_prune.elapsed() < Duration::from_secs(60) {
            return;
        }
        self.last_prune = Instant::now();
        let horizon = self.seen.prune(now);
        match dedupe::prune_files(&self.keys_dir(), horizon) {
            Ok(bytes) => self.books.keys_bytes = bytes,
            Err(e) => {
                tracing::warn!(error = %e, "outbox: could not delete the kept keys past the dedupe window; tried again in a minute");
            }
        }
    }

    fn keys_dir(&self) -> std::path::PathBuf {
        self.shared.path.join(dedupe::KEYS_DIR)
    }

    /// Keep the keys of the window among `keys` (hash, acceptance time) on disk: their
    /// segment is about to be deleted (see [`super::dedupe`]). Nothing may be deleted if
    /// this fails.
    fn keep_keys(&mut self, keys: &[(u64, i64)]) -> Result<(), OutboxError> {
        let now = Clock::local_ms();
        let horizon = self.seen.horizon(now);
        let keys: Vec<(u64, i64)> = keys
            .iter()
            .copied()
            .filter(|&(_, at)| self.seen.bucket(at) >= horizon)
            .collect();
        let added = dedupe::keep(&self.keys_dir(), &self.seen, &keys).map_err(|e| {
            OutboxError::Unavailable(format!("keeping the dedupe keys of a segment: {e}"))
        })?;
        self.books.keys_bytes += added;
        Ok(())
    }

    /// The source keys (hash, acceptance time) of the records in segment `seg`.
    fn keys_of(&self, seg: u64) -> Result<Vec<(u64, i64)>, OutboxError> {
        let mut keys = Vec::new();
        segments::scan(&self.shared.seg_dir, seg, 0, segments::Bodies::Skip, |i| {
            if let segments::Item::Entry { header, .. } = i {
                if header.kind.is_record() && header.key_hash != 0 {
                    keys.push((header.key_hash, header.accepted_ms));
                }
            }
        })
        .map_err(|e| OutboxError::Store(format!("reading segment {seg}: {e}")))?;
        Ok(keys)
    }

    /// Point the index at records just written; remember their keys.
    fn index_records(&mut self, records: &[(u64, u64, usize)], locs: &[Location], now: i64) {
        let mut edit = Edit::default();
        for ((id, hash, _), loc) in records.iter().zip(locs) {
            if let Err(e) = edit.set(self.src(), *id, *loc) {
                self.index_error(&e);
            }
            self.books.point(loc.seg);
            self.books.pending += 1;
            if *hash != 0 {
                self.seen.insert(*hash, now);
            }
        }
        self.apply(edit);
        self.shared.notify.notify_one();
    }

    /// Where the writer reads index chunks: its overlay, then sled.
    fn src(&self) -> Src<'_> {
        Src::new(&self.db, &self.shared.overlay)
    }

    /// Put changed chunks into the overlay (see [`super::index`]); the index is dirty until
    /// flushed. A large overlay is moved into sled now, unsynced.
    fn apply(&mut self, edit: Edit) {
        edit.commit(&self.shared.overlay);
        self.dirty.get_or_insert_with(Instant::now);
        if self.shared.overlay.len() >= SPILL_CHUNKS {
            let mut batch = sled::Batch::default();
            self.shared.overlay.write_to(&mut batch);
            match self.db.apply_batch(batch) {
                Ok(()) => self.shared.overlay.clear(),
                Err(e) => self.index_error(&OutboxError::from(e)),
            }
        }
    }

    /// sled failed: the records are safe in the log; reopen sled and replay it.
    fn index_error(&mut self, e: &OutboxError) {
        if self.index_failed.is_none() {
            tracing::warn!(error = %e, "outbox: the index (sled) failed; it will be reopened and rebuilt from the log (nothing pending is lost)");
            self.index_failed = Some((Instant::now(), None, e.to_string()));
        }
    }

    /// Reopen a failed index (at most every [`REOPEN_EVERY`] unless `now`).
    fn try_reopen(&mut self, now: bool) {
        let Some((since, last, why)) = self.index_failed.take() else {
            return;
        };
        if !now && last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            self.index_failed = Some((since, last, why));
            return;
        }
        match self.reopen() {
            Ok(()) => {
                tracing::info!(
                    after_s = since.elapsed().as_secs(),
                    "outbox: the index was reopened and replayed from the log"
                );
                if matches!(self.shared.health(), StoreHealth::Broken { .. }) {
                    self.shared.set_health(StoreHealth::Ok);
                }
            }
            Err(e) => {
                if since.elapsed() >= REOPEN_GIVE_UP {
                    tracing::error!(error = %e, first_error = %why, "outbox: the index cannot be reopened; the store is broken (restart the service; check the disk)");
                    self.shared.set_health(StoreHealth::Broken {
                        reason: format!("the outbox index cannot be reopened: {e}"),
                    });
                }
                self.index_failed = Some((since, Some(Instant::now()), why));
            }
        }
    }

    /// Drop sled, open it again (moved aside if it cannot be), replay the log, and go on
    /// in a new head segment.
    fn reopen(&mut self) -> Result<(), OutboxError> {
        let path = self.shared.path.clone();
        self.shared.readers.clear();
        *self
            .shared
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        // The overlay's changes are in the log (or were hints): the replay restores them.
        self.shared.overlay.clear();
        // Our own handle goes last: swap in a throwaway in-memory one meanwhile.
        // (No flusher thread for it either: it holds nothing and lives for one replay.)
        self.db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .map_err(OutboxError::from)?;
        quota::release_if_tight(&path, self.reserve);
        let (db, aside, why) = replay::open_index(&path, &self.opts, self.reserve)?;
        *self
            .shared
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(db.clone());
        self.db = db;
        let r = replay::recover(&self.shared, &self.db, &self.opts, why)?;
        if let Some(aside) = aside {
            tracing::error!(moved_to = %aside.display(), "outbox: the index could not be reopened; moved sled's files aside and rebuilt the index from the log");
            self.shared
                .rebuilt_ms
                .store(Clock::local_ms(), Ordering::Relaxed);
        }
        *self
            .shared
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = r.report.clone();
        self.books = r.books;
        self.next_id = self.next_id.max(r.next_id);
        // Keep our own dedupe memory: it has everything the log has and more.
        self.head_unsynced = false;
        self.head = Head::create(&self.shared.seg_dir, r.last_seg.max(self.head.seg) + 1)
            .map_err(|e| io_unavailable(&e))?;
        self.books.add_segment(self.head.seg, 0, Clock::local_ms());
        self.dirty = None;
        self.publish();
        Ok(())
    }

    /// Records of an earlier version kept inline in sled: into the log, same ids.
    fn take_over_inline(&mut self, inline: &[(u64, Vec<u8>)]) {
        let now = Clock::local_ms();
        let mut buf = Vec::new();
        let mut lens = Vec::new();
        for (id, bytes) in inline {
            let e = segments::encode(Kind::Record, *id, now, 0, bytes);
            lens.push(e.len());
            buf.extend(e);
        }
        let locs = self.head.place(lens);
        if let Err((e, _)) = self.head.append(&buf, true) {
            tracing::error!(error = %e, "outbox: could not move the inline records of an earlier version into the log; they stay in sled, unsent, until the next start");
            return;
        }
        self.grow_head(buf.len() as u64);
        let mut edit = Edit::default();
        for ((id, _), loc) in inline.iter().zip(&locs) {
            if edit.set(self.src(), *id, *loc).is_ok() {
                self.books.point(loc.seg);
                self.books.pending += 1;
            }
        }
        self.apply(edit);
        let ids: Vec<u64> = inline.iter().map(|(id, _)| *id).collect();
        if let Err(e) = replay::forget_inline(&self.db, &ids).and_then(|()| self.flush_index()) {
            tracing::warn!(error = %e, "outbox: inline records of an earlier version were copied to the log but not yet removed from sled");
        }
        tracing::info!(
            records = ids.len(),
            "outbox: moved the inline records of an earlier version into the log"
        );
    }

    /// Remove these records from the index (delivered); a mark goes to the log.
    fn ack(&mut self, ids: &[u64]) -> Result<(), OutboxError> {
        let mut edit = Edit::default();
        let mut gone = Vec::new();
        for &id in ids {
            if let Some(loc) = edit.remove(self.src(), id)? {
                self.books.unpoint(loc.seg);
                self.books.pending = self.books.pending.saturating_sub(1);
                gone.push(id);
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        self.apply(edit);
        self.mark(Kind::Acks, &gone);
        Ok(())
    }

    /// Write a mark without an fsync of its own; one that cannot be written is only a hint
    /// lost (the index has the change).
    fn mark(&mut self, kind: Kind, ids: &[u64]) {
        let e = segments::encode(kind, 0, Clock::local_ms(), 0, &segments::encode_ids(ids));
        match self.head.append(&e, false) {
            Ok(()) => {
                self.head_unsynced = true;
                self.grow_head(e.len() as u64);
            }
            Err((err, _)) => {
                tracing::debug!(error = %err, "outbox: a mark could not be written to the log (the index has the change)");
            }
        }
    }

    /// Move a pending record to the dead letters: its file first, then out of the index.
    fn dead_letter(&mut self, id: u64, reason: &str) -> Result<(), OutboxError> {
        let Some(loc) = self.src().load(chunk_of(id))?.get(id) else {
            return Ok(());
        };
        let record = match self.shared.readers.read(&self.shared.seg_dir, loc) {
            Ok(r) => r.body,
            Err(e) => {
                tracing::error!(id, segment = loc.seg, error = %e, "outbox: a dead-lettered record could not be read from the log; only its reason is kept");
                Vec::new()
            }
        };
        let size = dead::write(&self.shared.dead_dir, id, reason, &record)?;
        let mut edit = Edit::default();
        edit.remove(self.src(), id)?;
        self.apply(edit);
        self.books.unpoint(loc.seg);
        self.books.pending = self.books.pending.saturating_sub(1);
        self.books.dead += 1;
        self.books.dead_bytes += size;
        self.mark(Kind::Dead, &[id]);
        Ok(())
    }

    /// A dead letter back to pending: into the log (same id, fsynced), then its file goes.
    fn dead_retry(&mut self, id: u64) -> Result<(), OutboxError> {
        let (_, record) = dead::read(&self.shared.dead_dir, id)?;
        if self.head.len >= self.roll {
            self.roll_head().map_err(|e| io_unavailable(&e))?;
        }
        // No dedupe key: it was accepted long ago.
        let e = segments::encode(Kind::Record, id, Clock::local_ms(), 0, &record);
        let loc = self.head.place([e.len()])[0];
        self.head
            .append(&e, true)
            .map_err(|(err, _)| io_unavailable(&err))?;
        self.grow_head(e.len() as u64);
        let mut edit = Edit::default();
        edit.set(self.src(), id, loc)?;
        self.apply(edit);
        self.books.point(loc.seg);
        self.books.pending += 1;
        let freed = dead::remove(&self.shared.dead_dir, id)?;
        self.books.dead = self.books.dead.saturating_sub(1);
        self.books.dead_bytes = self.books.dead_bytes.saturating_sub(freed);
        self.shared.notify.notify_one();
        Ok(())
    }

    fn dead_drop(&mut self, id: u64) -> Result<(), OutboxError> {
        let freed = dead::remove(&self.shared.dead_dir, id)?;
        self.books.dead = self.books.dead.saturating_sub(1);
        self.books.dead_bytes = self.books.dead_bytes.saturating_sub(freed);
        Ok(())
    }

    /// Flush the index: the head's unsynced marks, `m/wal`, `m/next_id`, sled.
    fn flush_index(&mut self) -> Result<(), OutboxError> {
        if self.index_failed.is_some() {
            self.try_reopen(true);
            if let Some((_, _, why)) = &self.index_failed {
                return Err(OutboxError::Store(format!(
                    "the index is being reopened: {why}"
                )));
            }
        }
        if self.head_unsynced {
            // Best effort: a lost mark is only a hint.
            if self.head.sync().is_ok() {
                self.head_unsynced = false;
            }
        }
        let mut batch = sled::Batch::default();
        self.shared.overlay.write_to(&mut batch);
        batch.insert(K_WAL, &replay::wal_value(self.head.seg, self.head.len)[..]);
        batch.insert(K_NEXT_ID, &self.next_id.to_be_bytes());
        let r = self.db.apply_batch(batch).and_then(|()| {
            // sled has every chunk now: readers find them there.
            self.shared.overlay.clear();
            self.db.flush().map(|_| ())
        });
        match r {
            Ok(()) => {
                self.dirty = None;
                Ok(())
            }
            Err(e) => {
                let e = OutboxError::from(e);
                if matches!(&e, OutboxError::Store(m) if m.contains("No space")) {
                    quota::release(&self.shared.path);
                }
                self.index_error(&e);
                Err(e)
            }
        }
    }

    /// Is there a segment that will be deletable once it is old enough?
    fn deletable_soon(&self) -> bool {
        self.books
            .segs
            .iter()
            .next()
            .is_some_and(|(seg, s)| *seg != self.head.seg && s.live == 0)
    }

    /// Segments that may go now, oldest first (see invariant 5). On a (nearly) full file
    /// system the age rule is waived: space first.
    fn deletable(&self) -> Vec<u64> {
        if !self.deletable_soon() {
            return Vec::new();
        }
        let now = Clock::local_ms();
        let window = i64::try_from(self.opts.dedupe_window.as_millis()).unwrap_or(i64::MAX);
        let tight = self.refusing.is_some()
            || quota::free_space(&self.shared.path).is_some_and(|f| f < self.reserve * 2);
        self.books
            .segs
            .iter()
            .take_while(|(seg, s)| {
                **seg != self.head.seg && s.live == 0 && (tight || now - s.newest_ms >= window)
            })
            .map(|(seg, _)| *seg)
            .collect()
    }

    /// Delete segments (the index without them must be flushed first).
    fn delete_segments(&mut self, segs: &[u64]) {
        for &seg in segs {
            self.shared.readers.forget(seg);
            match std::fs::remove_file(segments::path_of(&self.shared.seg_dir, seg)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = seg, error = %e, "outbox: could not delete a drained segment; tried again later");
                    return;
                }
            }
            self.books.segs.remove(&seg);
        }
        if !segs.is_empty() {
            let _ = segments::sync_dir(&self.shared.seg_dir);
            self.publish();
        }
    }

    /// Periodic work: flush, delete, reopen, clean up, report.
    fn tick(&mut self) {
        if self.index_failed.is_some() {
            self.try_reopen(false);
        }
        let mut gone = self.deletable();
        let due = self
            .dirty
            .is_some_and(|t| t.elapsed() >= self.opts.index_flush);
        if (due || !gone.is_empty()) && self.dirty.is_some() && self.flush_index().is_err() {
            return;
        }
        // Segments deleted within the window (a full file system waives the age rule) keep
        // their keys first.
        // A segment is young when its newest key is still in the window: the rule
        // `keep_keys` applies to each key, the window's own horizon.
        let now = Clock::local_ms();
        let horizon = self.seen.horizon(now);
        let young = gone.iter().position(|seg| {
            self.books
                .segs
                .get(seg)
                .is_some_and(|s| self.seen.bucket(s.newest_ms) >= horizon)
        });
        if let Some(pos) = young {
            let mut kept = gone.len();
            for (i, &seg) in gone.iter().enumerate().skip(pos) {
                if let Err(e) = self.keys_of(seg).and_then(|k| self.keep_keys(&k)) {
                    tracing::debug!(segment = seg, error = %e, "outbox: could not keep the dedupe keys of a drained segment; it is deleted later");
                    kept = i;
                    break;
                }
            }
            gone.truncate(kept);
        }
        if !gone.is_empty() {
            self.delete_segments(&gone);
        }
        self.prune_window(now);
        if self.legacy_keys {
            self.delete_legacy_keys();
        }
        if self.last_reserve_check.elapsed() >= Duration::from_secs(60) {
            self.last_reserve_check = Instant::now();
            quota::ensure(&self.shared.path, self.reserve);
        }
        if let Some(r) = &mut self.refusing {
            if r.last_summary.elapsed() >= SUMMARY_EVERY {
                r.last_summary = Instant::now();
                tracing::warn!(for_s = r.since.elapsed().as_secs(), refused = r.refused, pending = self.books.pending, reason = %r.reason, "outbox: still refusing new events (the sources keep them)");
            }
        }
    }

    fn delete_legacy_keys(&mut self) {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for p in replay::LEGACY_PREFIXES {
            for k in self
                .db
                .scan_prefix([p])
                .keys()
                .take(LEGACY_STEP - n)
                .flatten()
            {
                batch.remove(k);
                n += 1;
            }
        }
        if n == 0 {
            self.legacy_keys = false;
            return;
        }
        if let Err(e) = self.db.apply_batch(batch) {
            self.index_error(&e.into());
        }
        self.dirty.get_or_insert_with(Instant::now);
    }

    /// New events are refused (`reason`): a state, logged when it starts.
    fn refused(&mut self, reason: &str) {
        if self.refusing.is_none() {
            let since_ms = Clock::local_ms();
            tracing::warn!(
                reason,
                pending = self.books.pending,
                "outbox: refusing new events (the sources keep them); uploads go on"
            );
            self.refusing = Some(Refusal {
                since: Instant::now(),
                reason: reason.to_owned(),
                refused: 0,
                last_summary: Instant::now(),
            });
            self.shared.set_health(StoreHealth::Refusing {
                since_ms,
                reason: reason.to_owned(),
            });
        }
    }

    /// A group was stored: a refusal, if any, is over.
    fn accepting(&mut self) {
        if let Some(r) = self.refusing.take() {
            tracing::info!(after_s = r.since.elapsed().as_secs(), refused = r.refused, reason = %r.reason, "outbox: storing new events again");
            if !matches!(self.shared.health(), StoreHealth::Broken { .. }) {
                self.shared.set_health(StoreHealth::Ok);
            }
        }
    }

    /// Compact the oldest segments until `need` more bytes fit under `max_disk` (the head
    /// too, after starting a new one), oldest first.
    fn make_room(&mut self, need: u64) {
        while self.books.bytes() + need > self.opts.max_disk {
            let Some(&victim) = self.books.segs.keys().next() else {
                return;
            };
            if victim == self.head.seg {
                if self.head.len == 0 {
                    return;
                }
                if let Err(e) = self.roll_head() {
                    tracing::warn!(error = %e, "outbox: could not start a new segment for the quota");
                    return;
                }
            }
            let before = self.books.bytes();
            if let Err(e) = self.compact(victim) {
                tracing::warn!(segment = victim, error = %e, "outbox: could not compact a segment for the quota");
                return;
            }
            if self.books.bytes() >= before {
                return; // nothing left to gain
            }
        }
    }

    /// Copy the pending records of `victim` to the head without their images, flush the
    /// index, delete the file.
    fn compact(&mut self, victim: u64) -> Result<(), OutboxError> {
        let mut found = Vec::new();
        segments::scan(
            &self.shared.seg_dir,
            victim,
            0,
            segments::Bodies::Check,
            |i| {
                if let segments::Item::Entry {
                    loc,
                    header,
                    body: Some(body),
                } = i
                {
                    if header.kind.is_record() {
                        found.push((loc, header, body));
                    }
                }
            },
        )
        .map_err(|e| OutboxError::Store(format!("reading segment {victim}: {e}")))?;
        let mut moved = Vec::new();
        let mut gone_keys = Vec::new();
        let mut degraded = 0u64;
        for (loc, header, body) in found {
            if self.src().load(chunk_of(header.id))?.get(header.id) != Some(loc) {
                // Delivered, dead, or moved already: its key stays in the window.
                gone_keys.push((header.key_hash, header.accepted_ms));
                continue;
            }
            let Ok(rec) = decode_record(header.id, &body) else {
                gone_keys.push((header.key_hash, header.accepted_ms));
                continue; // the reader dead-letters it
            };
            if !rec.meta.degraded && !rec.image.is_empty() {
                degraded += 1;
            }
            let body = encode_record(&quota::strip_image(rec.meta), &[]);
            moved.push((
                header.id,
                segments::encode(
                    Kind::Moved,
                    header.id,
                    header.accepted_ms,
                    header.key_hash,
                    &body,
                ),
            ));
        }
        if self.head.len >= self.roll {
            self.roll_head().map_err(|e| io_unavailable(&e))?;
        }
        let buf: Vec<u8> = moved.iter().flat_map(|(_, e)| e.iter().copied()).collect();
        let locs = self.head.place(moved.iter().map(|(_, e)| e.len()));
        if !buf.is_empty() {
            self.head
                .append(&buf, true)
                .map_err(|(e, _)| io_unavailable(&e))?;
            self.grow_head(buf.len() as u64);
        }
        let mut edit = Edit::default();
        for ((id, _), loc) in moved.iter().zip(&locs) {
            edit.set(self.src(), *id, *loc)?;
            self.books.unpoint(victim);
            self.books.point(loc.seg);
        }
        self.apply(edit);
        self.flush_index()?;
        self.keep_keys(&gone_keys)?;
        let before = self.books.bytes();
        self.delete_segments(&[victim]);
        tracing::info!(
            segment = victim,
            records = moved.len(),
            images_dropped = degraded,
            freed = before.saturating_sub(self.books.bytes()),
            "outbox: quota reached; compacted the oldest segment (its pending records keep their place without their images)"
        );
        Ok(())
    }
}
