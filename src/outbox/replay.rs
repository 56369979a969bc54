//! Opening the store: sled opened (or moved aside and the index rebuilt), the log replayed
//! into the index from `m/wal`, the dedupe memory rebuilt from the log, the books (segment
//! sizes and live counts, counters) worked out, and stores of earlier versions taken over.
//! The writer runs the same recovery when it has to reopen sled.
//!
//! ## Replay
//!
//! Segments are read oldest first. Entries at or after `m/wal` are applied to the index:
//! a record sets its pointer (a moved record moves it), acks and dead-letter marks remove
//! theirs, an abort removes its group's ids. Entries of the dedupe window (by the file's
//! modification time) are read for their source-key hashes too, before `m/wal` by their
//! headers only. A record whose key an earlier record of the window already has is a
//! submit that was refused but whose bytes stayed (invariant 2): it is dropped. Then the
//! keys kept for segments deleted within the window (`keys/`, see [`dedupe`]) join the
//! window.
//!
//! Damage: a range of bytes that is no intact entry is skipped, the scan resumes at the
//! next intact entry ([`segments::scan`]). At the end of the newest segment it is a write a
//! crash interrupted (nobody was answered for it): cut off. Anywhere else it is copied to
//! `damaged/` with an ERROR, and a record whose header survived becomes a dead letter with
//! the reason. With `Bodies::Skip` (a rebuild, for speed) a damaged record body is found
//! when the record is read, and dead-lettered then.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::dedupe::{self, Seen};
use super::index::{self, Chunk, Edit, Src};
use super::segments::{self, Bodies, Head, Item, Kind};
use super::writer::Books;
use super::{dead, quota, OpenReport, OutboxError, OutboxOptions, Shared, StoreHealth};
use crate::clock::Clock;

/// `m/format`: the store's layout version (3: the log with marks, dead letters in files).
pub(super) const K_FORMAT: &[u8] = b"m/format";
const FORMAT: u64 = 3;
/// `m/wal`: (segment, offset) up to which the log is in the index.
pub(super) const K_WAL: &[u8] = b"m/wal";
/// `m/next_id`: the next record id (ids also never go below what the log holds).
pub(super) const K_NEXT_ID: &[u8] = b"m/next_id";
/// Keys of versions before this one, deleted a few at a time by the writer: dedupe entries
/// (`e`, `d`) and segment counts (`g`).
pub(super) const LEGACY_PREFIXES: [u8; 3] = [b'e', b'd', b'g'];
/// Pending records inline (versions before the log, and their dead-letter retries).
const P_INLINE: u8 = b'r';
/// Dead letters inline (versions before dead-letter files).
const P_DEAD_V2: u8 = b'x';
/// Segments modified this long before the dedupe window are not read for dedupe.
const WINDOW_SLACK_MS: i64 = 60_000;

/// The directory damaged log ranges are copied to.
pub(super) const DAMAGED_DIR: &str = "damaged";

pub(super) fn wal_value(seg: u64, off: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&seg.to_be_bytes());
    v[8..].copy_from_slice(&off.to_be_bytes());
    v
}

fn read_u64(db: &sled::Db, k: &[u8]) -> Result<Option<u64>, OutboxError> {
    Ok(db
        .get(k)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes))
}

fn read_wal(db: &sled::Db) -> Result<Option<(u64, u64)>, OutboxError> {
    Ok(db.get(K_WAL)?.and_then(|v| {
        let b: [u8; 16] = v.as_ref().try_into().ok()?;
        Some((
            u64::from_be_bytes(b[..8].try_into().ok()?),
            u64::from_be_bytes(b[8..].try_into().ok()?),
        ))
    }))
}

fn id_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?))
}

/// Is this I/O error "no space left on the device" (or over a disk quota)?
pub(super) fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28 | 122))
}

fn sled_no_space(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if is_no_space(io))
}

fn is_lock_error(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

/// Open sled with the outbox's settings. No background flusher: the writer flushes the
/// index when it decides (see [`super::writer`]).
fn open_sled(path: &Path, opts: &OutboxOptions) -> Result<sled::Db, sled::Error> {
    let mut tries = 0;
    loop {
        let r = sled::Config::new()
            .path(path)
            .cache_capacity(opts.cache_capacity)
            .flush_every_ms(None)
            .open();
        match r {
            Err(e) if is_lock_error(&e) && tries < 50 => {
                // sled frees its lock from a background thread after the last handle drops.
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// sled's own files in the outbox directory.
fn is_sled_file(name: &str) -> bool {
    matches!(name, "conf" | "db" | "blobs") || name.starts_with("snap.")
}

/// Move sled's files to `index.broken-<unix time>/` inside the store; returns where.
fn move_sled_aside(path: &Path) -> std::io::Result<PathBuf> {
    let base = format!("index.broken-{}", Clock::local_ms() / 1000);
    let mut aside = path.join(&base);
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = path.join(format!("{base}-{n}"));
    }
    std::fs::create_dir(&aside)?;
    for e in std::fs::read_dir(path)? {
        let e = e?;
        let name = e.file_name();
        if name.to_str().is_some_and(is_sled_file) {
            std::fs::rename(e.path(), aside.join(&name))?;
        }
    }
    segments::sync_dir(path)?;
    Ok(aside)
}

/// Open the index: sled as it is, or (any failure but a lock, a permission or a full disk)
/// with its files moved aside and a fresh one. Returns the handle, where the old files went
/// and why.
pub(super) fn open_index(
    path: &Path,
    opts: &OutboxOptions,
    reserve: u64,
) -> Result<(sled::Db, Option<PathBuf>, Option<String>), OutboxError> {
    let fail = |message: String| OutboxError::Open {
        path: path.to_path_buf(),
        message,
    };
    let first = match open_sled(path, opts) {
        Err(e) if sled_no_space(&e) && quota::release(path) => open_sled(path, opts),
        other => other,
    };
    let e = match first {
        Ok(db) => return Ok((db, None, None)),
        Err(e) => e,
    };
    let permanent = match &e {
        sled::Error::Io(io) => {
            is_lock_error(&e)
                || io.kind() == std::io::ErrorKind::PermissionDenied
                || is_no_space(io)
        }
        _ => false,
    };
    if permanent {
        return Err(fail(format!(
            "{e} (free space: {})",
            quota::free_space(path).map_or_else(|| "unknown".into(), |f| format!("{f} bytes"))
        )));
    }
    let aside = move_sled_aside(path).map_err(|m| {
        fail(format!(
            "index (sled) cannot be opened ({e}) and could not be moved aside: {m}"
        ))
    })?;
    let _ = quota::release_if_tight(path, reserve);
    let db = open_sled(path, opts)
        .map_err(|e2| fail(format!("a fresh index cannot be created either: {e2}")))?;
    Ok((
        db,
        Some(aside),
        Some(format!("the index (sled) could not be opened: {e}")),
    ))
}

/// What a recovery worked out: the writer's starting state.
pub(super) struct Recovered {
    pub books: Books,
    pub seen: Seen,
    pub next_id: u64,
    pub report: OpenReport,
    /// The newest segment number (0: none): the head must be after it.
    pub last_seg: u64,
    /// Keys of earlier versions are left to delete.
    pub legacy_keys: bool,
    /// Pending records inline in sled (earlier versions): to move into the log.
    pub inline: Vec<(u64, Vec<u8>)>,
}

/// Modification time of a file, Unix ms (0 if unknown).
fn mtime_ms(p: &Path) -> i64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// The dedupe side of a replay: hashes of the window, and for the entries after `m/wal`
/// (the only ones an abort mark can name: a failed group is never indexed) which key each
/// id took.
struct Window {
    seen: Seen,
    now: i64,
    span_ms: i64,
    of_id: HashMap<u64, (u64, i64)>,
}

impl Window {
    /// Take a record's key into the window. A record replayed into the index (`replayed`)
    /// whose key an earlier record of the window has is a resurrected duplicate: false.
    fn take(&mut self, id: u64, hash: u64, at: i64, replayed: bool) -> bool {
        if hash == 0 || (self.now - at).abs() >= self.span_ms {
            return true;
        }
        if replayed {
            if self.seen.contains(hash, at) {
                return false;
            }
            self.of_id.insert(id, (hash, at));
        }
        self.seen.insert(hash, at);
        true
    }

    /// A group was aborted: its keys were never accepted.
    fn forget(&mut self, id: u64) {
        if let Some((hash, at)) = self.of_id.remove(&id) {
            self.seen.remove(hash, at);
        }
    }
}

/// One segment's entries applied as the scan finds them (nothing of the segment is held).
struct Pass<'a> {
    shared: &'a Shared,
    db: &'a sled::Db,
    seg: u64,
    path: &'a Path,
    /// Offset from which entries apply to the index (`None`: before `m/wal`, window only).
    applies_from: Option<u64>,
    /// This is the newest segment, of this length: damage at its end is a torn tail.
    torn_end: Option<u64>,
    modified: i64,
    damaged_dir: &'a Path,
    edit: &'a mut Edit,
    win: &'a mut Window,
    report: &'a mut OpenReport,
    next_id: &'a mut u64,
    sizes: &'a mut BTreeMap<u64, (u64, i64)>,
}

impl Pass<'_> {
    fn item(&mut self, item: Item) -> Result<(), OutboxError> {
        let db = self.db;
        let seg = self.seg;
        match item {
            Item::Entry { loc, header, body } => {
                let applies = self.applies_from.is_some_and(|f| loc.off >= f);
                match header.kind {
                    Kind::Record | Kind::Moved => {
                        *self.next_id = (*self.next_id).max(header.id.saturating_add(1));
                        // A moved record keeps its key in the window; it is never a
                        // duplicate of itself.
                        let fresh =
                            self.win
                                .take(header.id, header.key_hash, header.accepted_ms, applies)
                                || header.kind == Kind::Moved;
                        if !fresh {
                            self.edit.remove(Src::sled(db), header.id)?;
                            self.report.duplicates_dropped += 1;
                            tracing::warn!(id = header.id, segment = seg, "outbox: the log holds a record whose source key an earlier record has (a submit that was refused, but whose bytes stayed): not restored");
                            return Ok(());
                        }
                        if applies {
                            self.edit.set(Src::sled(db), header.id, loc)?;
                            self.report.replayed += 1;
                        }
                    }
                    Kind::Acks | Kind::Dead => {
                        if applies {
                            for id in segments::decode_ids(body.as_deref().unwrap_or(&[])) {
                                self.edit.remove(Src::sled(db), id)?;
                            }
                            self.report.replayed += 1;
                        }
                    }
                    Kind::Abort => {
                        let ids = segments::decode_ids(body.as_deref().unwrap_or(&[]));
                        if let [first, last] = ids[..] {
                            *self.next_id = (*self.next_id).max(last.saturating_add(1));
                            // A group is at most a few hundred submits.
                            for id in first..=last.min(first.saturating_add(1 << 16)) {
                                self.win.forget(id);
                                if applies {
                                    self.edit.remove(Src::sled(db), id)?;
                                }
                            }
                            if applies {
                                self.report.replayed += 1;
                            }
                        }
                    }
                }
            }
            Item::Damaged { off, len: n, id } => {
                if self.torn_end.is_some_and(|end| off + n == end) {
                    // The end of the newest segment: a write a crash cut short.
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(self.path)
                        .and_then(|f| {
                            f.set_len(off)?;
                            f.sync_all()
                        })
                        .map_err(|e| OutboxError::Open {
                            path: self.shared.seg_dir.clone(),
                            message: format!("cutting a torn entry: {e}"),
                        })?;
                    self.report.torn_tail += n;
                    self.sizes.insert(seg, (off, self.modified));
                    tracing::warn!(segment = seg, offset = off, bytes = n, "outbox: cut a torn entry off the end of the log (a crash mid-write, before its fsync returned: no source was acknowledged for it)");
                    return Ok(());
                }
                if self.applies_from.is_none_or(|f| off < f) {
                    return Ok(()); // indexed already; a damaged record is caught when read
                }
                self.report.damaged_ranges += 1;
                let kept =
                    segments::copy_aside(&self.shared.seg_dir, seg, off, n, self.damaged_dir)
                        .map_or_else(
                            |e| format!("could not be copied aside: {e}"),
                            |p| format!("copied to {}", p.display()),
                        );
                tracing::error!(segment = seg, offset = off, bytes = n, record = ?id, kept = %kept, "outbox: a damaged range of the log was skipped; the entries after it are kept");
                if let Some(id) = id {
                    self.edit.remove(Src::sled(db), id)?;
                    let reason = format!(
                        "damaged in the outbox log (segment {seg} at offset {off}, {n} bytes, {kept})"
                    );
                    if dead::read(&self.shared.dead_dir, id).is_err() {
                        dead::write(&self.shared.dead_dir, id, &reason, &[])?;
                    }
                    self.report.damaged_records += 1;
                }
            }
        }
        Ok(())
    }
}

/// Recover the index and the writer's state from sled and the log. `rebuild`: why the
/// index must be rebuilt from the whole log (sled was replaced), if it must.
#[allow(clippy::too_many_lines)] // one pass over the log, told in order
pub(super) fn recover(
    shared: &Shared,
    db: &sled::Db,
    opts: &OutboxOptions,
    mut rebuild: Option<String>,
) -> Result<Recovered, OutboxError> {
    let seg_dir = &shared.seg_dir;
    let now = Clock::local_ms();
    let window_ms = i64::try_from(opts.dedupe_window.as_millis()).unwrap_or(i64::MAX);
    let mut report = OpenReport::default();
    let files = segments::list(seg_dir).map_err(|e| OutboxError::LogUnreadable(e.to_string()))?;
    let format = read_u64(db, K_FORMAT)?;
    let mut wal = read_wal(db)?;
    if rebuild.is_none() && wal.is_none() && files.iter().any(|(_, len)| *len > 0) {
        rebuild = Some("the index (sled) holds nothing while the log has entries".into());
    }
    let mut batch = sled::Batch::default();
    if rebuild.is_some() {
        // Whatever index there is cannot be trusted: start it again from the log.
        for k in db.scan_prefix([index::PREFIX]).keys() {
            batch.remove(k?);
        }
        wal = None;
    }
    let (wal_seg, wal_off) = wal.unwrap_or((0, 0));
    let mut win = Window {
        seen: Seen::new(window_ms),
        now,
        span_ms: window_ms,
        of_id: HashMap::new(),
    };
    let mut legacy_keys = false;
    let mut inline = Vec::new();
    // Keys an earlier version kept in sled: in the window, but not compared with the log's
    // records (those keys are the log's own records' keys).
    let mut legacy_seen = Seen::new(window_ms);
    if format != Some(FORMAT) && rebuild.is_none() {
        legacy_keys = take_over_legacy(
            shared,
            db,
            (&mut legacy_seen, now, window_ms),
            &mut inline,
            &mut batch,
        )?;
    }
    let inline_next = inline.iter().map(|(id, _)| id + 1).max().unwrap_or(1);
    db.apply_batch(std::mem::take(&mut batch))?;

    let mut edit = Edit::lenient();
    let mut next_id = read_u64(db, K_NEXT_ID)?.unwrap_or(1).max(inline_next);
    let newest = files.last().map(|f| f.0);
    let mut sizes: BTreeMap<u64, (u64, i64)> = BTreeMap::new();
    let damaged_dir = shared.path.join(DAMAGED_DIR);
    for &(seg, len) in &files {
        let path = segments::path_of(seg_dir, seg);
        let modified = mtime_ms(&path);
        sizes.insert(seg, (len, modified));
        let applies_from = match seg.cmp(&wal_seg) {
            std::cmp::Ordering::Less => None,
            std::cmp::Ordering::Equal => Some(wal_off),
            std::cmp::Ordering::Greater => Some(0),
        };
        let in_window = modified >= now - window_ms - WINDOW_SLACK_MS;
        if applies_from.is_none() && !in_window {
            continue;
        }
        let bodies = if applies_from.is_some() && (rebuild.is_none() || Some(seg) == newest) {
            Bodies::Check
        } else {
            Bodies::Skip
        };
        let mut failed = None;
        let mut pass = Pass {
            shared,
            db,
            seg,
            path: &path,
            applies_from,
            torn_end: (Some(seg) == newest).then_some(len),
            modified,
            damaged_dir: &damaged_dir,
            edit: &mut edit,
            win: &mut win,
            report: &mut report,
            next_id: &mut next_id,
            sizes: &mut sizes,
        };
        let scanned = segments::scan(seg_dir, seg, 0, bodies, |i| {
            if failed.is_none() {
                failed = pass.item(i).err();
            }
        });
        if let Err(e) = scanned {
            // An unreadable file (a bad sector): its records cannot be restored, the
            // rest can. The file stays for an operator.
            report.damaged_ranges += 1;
            tracing::error!(segment = seg, error = %e, "outbox: a segment of the log cannot be read; skipped (its records are not restored; the file is kept)");
            continue;
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
    win.seen.absorb(legacy_seen);
    // The keys of segments deleted within the window (see [`dedupe`]): after the log, so
    // never compared with its records (whose own keys may be among them).
    let mut kept_seen = Seen::new(window_ms);
    let keys_bytes = dedupe::load(&shared.path.join(dedupe::KEYS_DIR), &mut kept_seen, now)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "outbox: the kept dedupe keys of deleted segments cannot be read; a broker's re-delivery of an event they name may be stored again");
            0
        });
    win.seen.absorb(kept_seen);
    // A dead letter wins over a pointer to the same record (a dead-letter move or a retry
    // the crash interrupted).
    let dead = dead::scan(&shared.dead_dir)?;
    for (id, _) in &dead {
        edit.remove(Src::sled(db), *id)?;
        next_id = next_id.max(id.saturating_add(1));
    }
    edit.write(&mut batch);
    let last = files.last().map(|f| f.0);
    if let Some(seg) = last {
        let end = sizes.get(&seg).map_or(0, |s| s.0);
        batch.insert(K_WAL, &wal_value(seg, end)[..]);
    }
    db.apply_batch(std::mem::take(&mut batch))?;

    // The books, from the index as it now is.
    let mut books = Books::default();
    for (&seg, &(size, modified)) in &sizes {
        books.add_segment(seg, size, modified);
    }
    let mut pending = 0u64;
    for item in db.scan_prefix([index::PREFIX]) {
        let (k, v) = item?;
        let Some(c) = id_of(&k) else { continue };
        let Some(chunk) = Chunk::decode(c, &v) else {
            tracing::error!(error = %index::damaged(c), "outbox: a damaged index chunk was skipped; its records are not uploaded");
            continue;
        };
        for (id, loc) in chunk.entries() {
            pending += 1;
            next_id = next_id.max(id.saturating_add(1));
            if !books.point(loc.seg) {
                report.missing += 1;
            }
        }
    }
    if report.missing > 0 {
        tracing::error!(records = report.missing, "outbox: pending records point into log segments whose files are missing; they will be dead-lettered when read");
    }
    books.pending = pending;
    books.dead = dead.len() as u64;
    books.dead_bytes = dead.iter().map(|(_, n)| n).sum();
    books.keys_bytes = keys_bytes;
    batch.insert(K_NEXT_ID, &next_id.to_be_bytes());
    batch.insert(K_FORMAT, &FORMAT.to_be_bytes());
    db.apply_batch(batch)?;
    db.flush()?;
    report.pending = pending;
    report.rebuilt = rebuild;
    Ok(Recovered {
        books,
        seen: win.seen,
        next_id,
        report,
        last_seg: last.unwrap_or(0).max(wal_seg),
        legacy_keys,
        inline,
    })
}

/// Take over what versions before this one kept in sled: dedupe entries of the window into
/// memory (their keys are deleted later, a few at a time), dead letters into files, inline
/// pending records (returned, to be written to the log). True if legacy keys remain.
fn take_over_legacy(
    shared: &Shared,
    db: &sled::Db,
    (seen, now, span_ms): (&mut Seen, i64, i64),
    inline: &mut Vec<(u64, Vec<u8>)>,
    batch: &mut sled::Batch,
) -> Result<bool, OutboxError> {
    let horizon = seen.horizon(now);
    let mut legacy = false;
    for item in db.scan_prefix([dedupe::PREFIX]) {
        let (k, v) = item?;
        legacy = true;
        if let Some(b) = dedupe::entry_bucket(&k).filter(|b| *b >= horizon) {
            for h in dedupe::decode(&v) {
                seen.insert_in_bucket(h, b);
            }
        }
    }
    // Versions before the log: `d` + source key → accepted at (Unix ms, i64 BE).
    for item in db.scan_prefix([b'd']) {
        let (k, v) = item?;
        let at = <[u8; 8]>::try_from(v.as_ref()).map_or(i64::MIN, i64::from_be_bytes);
        if (now - at).abs() < span_ms {
            seen.insert(dedupe::key_hash(&k[1..]), at);
        }
    }
    for p in LEGACY_PREFIXES {
        legacy |= db.scan_prefix([p]).next().is_some();
    }
    for item in db.scan_prefix([P_DEAD_V2]) {
        let (k, v) = item?;
        let Some(id) = id_of(&k) else { continue };
        let (reason, record) = dead::split(&v);
        dead::write(&shared.dead_dir, id, &reason, record)?;
        batch.remove(k);
    }
    for item in db.scan_prefix([P_INLINE]) {
        let (k, v) = item?;
        if let Some(id) = id_of(&k) {
            inline.push((id, v.to_vec()));
        }
    }
    for k in ["m/pending", "m/dead", "m/bytes"] {
        batch.remove(k.as_bytes());
    }
    Ok(legacy)
}

/// Remove the inline records of an earlier version once they are in the log.
pub(super) fn forget_inline(db: &sled::Db, ids: &[u64]) -> Result<(), OutboxError> {
    let mut batch = sled::Batch::default();
    for id in ids {
        let mut k = [0u8; 9];
        k[0] = P_INLINE;
        k[1..].copy_from_slice(&id.to_be_bytes());
        batch.remove(&k);
    }
    db.apply_batch(batch)?;
    Ok(())
}

/// Everything [`super::Outbox::open`] hands the writer.
pub(super) struct Opened {
    pub shared: Arc<Shared>,
    pub db: sled::Db,
    pub report: OpenReport,
    pub recovered: Recovered,
    pub head: Head,
}

/// Make a directory private (0700), creating it if needed.
pub(super) fn private_dir(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
}

/// Open the store at `path` (see the module docs).
pub(super) fn open(path: &Path, opts: &OutboxOptions) -> Result<Opened, OutboxError> {
    let seg_dir = path.join(segments::DIR);
    let dead_dir = path.join(dead::DIR);
    let io_err = |what: &str, e: std::io::Error| OutboxError::Open {
        path: path.to_path_buf(),
        message: format!("{what}: {e}"),
    };
    for d in [path, &seg_dir, &dead_dir] {
        private_dir(d).map_err(|e| io_err("creating the store's directories", e))?;
    }
    let reserve = quota::reserve_size(opts.max_disk);
    quota::release_if_tight(path, reserve);
    let (db, aside, why) = open_index(path, opts, reserve)?;
    if let (Some(aside), Some(why)) = (&aside, &why) {
        tracing::error!(path = %path.display(), moved_to = %aside.display(), reason = %why, "outbox: the index could not be opened; moved sled's files aside and rebuilding the index from the log (pending records are kept; settings such as the space count start again)");
    }
    let shared = Arc::new(Shared {
        path: path.to_path_buf(),
        seg_dir: seg_dir.clone(),
        dead_dir,
        db: RwLock::new(Some(db.clone())),
        overlay: index::Overlay::default(),
        readers: segments::Readers::default(),
        pending: AtomicU64::new(0),
        dead: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        health: Mutex::new(StoreHealth::Ok),
        rebuilt_ms: AtomicI64::new(0),
        report: Mutex::new(OpenReport::default()),
        notify: tokio::sync::Notify::new(),
    });
    let t0 = std::time::Instant::now();
    let mut recovered = match recover(&shared, &db, opts, why) {
        Err(OutboxError::LogUnreadable(e)) => {
            // The log itself cannot be read: only now is the whole store moved aside.
            drop(db);
            drop(shared);
            let aside = PathBuf::from(format!(
                "{}.unreadable-{}",
                path.display(),
                Clock::local_ms() / 1000
            ));
            std::fs::rename(path, &aside).map_err(|re| {
                io_err(
                    &format!("the log cannot be read ({e}) and the store could not be moved aside"),
                    re,
                )
            })?;
            tracing::error!(path = %path.display(), moved_to = %aside.display(), error = %e, "outbox: THE LOG CANNOT BE READ; the whole store was moved aside and a fresh one started: its pending records were NOT uploaded (`lotlink outbox aside` lists it)");
            let mut opened = open(path, opts)?;
            opened.report.moved_aside = Some(aside);
            return Ok(opened);
        }
        other => other?,
    };
    recovered.report.moved_aside = aside;
    if let Some(why) = &recovered.report.rebuilt {
        shared
            .rebuilt_ms
            .store(Clock::local_ms(), Ordering::Relaxed);
        tracing::warn!(reason = %why, pending = recovered.report.pending, ms = t0.elapsed().as_millis(), "outbox: rebuilt the index from the log");
    }
    let head = match Head::create(&seg_dir, recovered.last_seg + 1) {
        Err(e) if is_no_space(&e) && quota::release(path) => {
            Head::create(&seg_dir, recovered.last_seg + 1)
        }
        other => other,
    }
    .map_err(|e| io_err("starting a new segment", e))?;
    recovered.books.add_segment(head.seg, 0, Clock::local_ms());
    *shared
        .report
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = recovered.report.clone();
    let r = &recovered.report;
    if r.replayed > 0 || r.damaged_ranges > 0 || r.duplicates_dropped > 0 || r.torn_tail > 0 {
        tracing::info!(
            replayed = r.replayed,
            damaged_ranges = r.damaged_ranges,
            damaged_records = r.damaged_records,
            duplicates_dropped = r.duplicates_dropped,
            torn_tail_bytes = r.torn_tail,
            "outbox: replayed the log entries the index had not flushed before the last stop"
        );
    }
    Ok(Opened {
        shared,
        db,
        report: recovered.report.clone(),
        recovered,
        head,
    })
}
