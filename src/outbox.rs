//! # The durable outbox
//!
//! Every plate event the gateway accepts lives here until the platform has it. The outbox
//! is a directory (`[outbox] path`) holding a [sled] database (the index, dedupe entries,
//! counters, dead letters, settings) and a segment log (`segments/`, see [`segments`]) that
//! holds the records themselves. It is used through this module only; no sled type appears
//! in its public API, and the uploader's part of it is the narrow [`RecordStore`] trait, so
//! another embedded store could replace it here alone.
//!
//! ## Why records live in a log beside sled
//!
//! Measured here (`benches/run.sh`, rows P1, P5 and IMG): sled 0.34 with ~37 KB values
//! wrote ~4.6x the data to disk and needed ~2-3x the space while its GC caught up, took 41 %
//! of the raw grouped-fsync rate at best, and replays its whole log on the first open after a
//! backlog (0.8 s for 100,000 records). So a record's bytes are written once, to an
//! append-only segment file, and fsynced there; sled keeps only a 21-byte pointer per record,
//! 32 of them to a value (see [`index`]), and is flushed in the background. Kinder to SD
//! cards, and sled stays small.
//!
//! ## Record format
//!
//! sled keys, with a one-byte prefix:
//!
//! | key | value |
//! |---|---|
//! | `q` + chunk (id >> 5, u64 big-endian) | the pointers into the segment log of the chunk's pending records ([`index`]) |
//! | `r` + id (u64 BE) | a pending record inline (written by a dead-letter retry, and by versions before the log); or, from versions before [`index`], a pointer `2, seg: u64, off: u64, len: u32`, moved into `q` when opening |
//! | `x` + id | a dead letter: `reason_len: u32 BE`, reason (UTF-8), then the record inline |
//! | `e` + bucket + first id (u64 BE each) | dedupe entry of a group of submits: the 64-bit hashes of its source keys (see [`dedupe`]) |
//! | `d` + source key | dedupe entry of a version before the log (accepted-at, Unix ms, i64 BE): taken over into `e` when opening |
//! | `g` + segment (u64 BE) | how many pending records point into that segment |
//! | `s` | the newest space report, JSON `{"total","surplus","seq"}` |
//! | `m/…` | counters and settings: `next_id`, `pending`, `dead`, `bytes` (inline values), `wal` (how far the log is applied: segment, offset), `space_sent`, `ts_unit`, `occupied` |
//!
//! A record inline is `version: u8 = 1`, `meta_len: u32 BE`, `meta` (JSON of [`RecordMeta`]:
//! every platform field but the image, plus bookkeeping), then the raw image bytes (JPEG,
//! within the platform's 50,000-Base64-character budget; Base64 is applied at upload). A
//! segment entry wraps the same bytes with its id, source key and a CRC ([`segments`]).
//! Ids are u64 on every target (no `usize` in the format), allocated from `m/next_id`,
//! which only grows, so ids are never reused and big-endian keys sort in insertion order.
//!
//! ## Invariants
//!
//! 1. A record is in the log, fsynced, before sled points at it; sled's batches are atomic,
//!    so a pointer, its dedupe entry, the segment counts, the counters and `m/wal` move
//!    together or not at all.
//! 2. Every entry after `m/wal` was fsynced but may be missing from sled (sled is flushed
//!    in the background): opening replays those entries into sled, so sled never loses a
//!    record the log has. A torn entry at the end of the log (a crash mid-write, before its
//!    fsync returned, so before anyone was answered) is cut off.
//! 3. Records are read oldest first (id order = insertion order; `q` and `r` merged).
//! 4. A record leaves the index (`q` or `r`) only by [`Outbox::ack`] (the platform said success, or `1004` for
//!    a request holding that record alone) or by [`Outbox::dead_letter`] (the platform
//!    explicitly rejected it: `1501`/`1502`/repeated `2001`), which moves it to `x` intact.
//!    Nothing else ever deletes a pending record: not retries, not the quota, not age.
//! 5. A segment file is deleted only when no pending record points into it, it is not the
//!    one being written, and a sled flush has made that lasting.
//! 6. A source key accepted within the dedupe window (10 minutes) is accepted once. The
//!    keys of the window are kept in memory too (a set of hashes per minute), so a submit
//!    reads nothing from sled.
//!
//! ## When a record is safe
//!
//! [`Outbox::submit`] returns only after the record's log entry was written and fsynced
//! (`fdatasync`) and its pointer applied to sled: then it survives SIGKILL and power loss.
//! Concurrent submits are stored as a group: one buffered `write` and one `fdatasync` for all
//! of them, one sled batch (group commit, see [`Outbox::submit`]). Groups are pipelined: the
//! next group is staged while one is fsynced, and its write starts as soon as that fsync
//! returns, while the finished group is applied to sled and answered. Staging a group while
//! an earlier one is not yet in sled needs three rules, all in `Outbox::write_groups`:
//! dedupe also looks at the keys of groups not yet applied; every batch writes the counters
//! sled should hold *after* it (the writer keeps the books both with and without the groups
//! not yet applied, and an ack changes both); and the quota compacts only when no earlier
//! group is unapplied (a record that needs it waits for the next group). The group's queue is
//! bounded by the submitters waiting on it: one record each. Drivers acknowledge their
//! source only after `submit` returned. A duplicate is answered after its group's fsync too,
//! since the first copy may be in that very group.
//!
//! `ack` and `dead_letter` flush sled; losing one of them to a crash only means the record
//! is sent again, and the platform answers `1004`, which counts as delivered.
//!
//! ## When the disk quota is hit
//!
//! [`Outbox::bytes`] counts the segment files plus the inline values (dead letters). When
//! the next record would take it over `max_disk`, the oldest segment is compacted: its
//! pending records are copied to the head of the log, each image replaced by the small
//! placeholder JPEG (their `remark` says so), and the old file is deleted; oldest segment
//! first, until the record fits. If even that is not enough, `submit` fails with
//! [`OutboxError::Full`]: the driver does not acknowledge, and the camera or broker keeps
//! the event. Segments are `max_disk / 32` long (64 KiB to 16 MiB). sled's own files come on
//! top (a pointer per record, a dedupe entry per group, ~60 bytes per record).
//!
//! Changes of the index that groups not yet applied made (a staged group's pointers, the
//! quota's moves) are kept in the writer's overlay until they are applied; see [`index`]
//! for how an ack and a group writing the same chunk are kept apart.
//!
//! ## A store that cannot be opened
//!
//! If sled reports corruption, the directory is renamed to `<path>.corrupt-<unix time>`, a
//! fresh store is started, and an ERROR names where the old one went (never a crash loop).
//! sled holds a file lock that is freed from a background thread after the last handle is
//! dropped: keep one [`Outbox`] per process; opening retries briefly on the lock.

mod dedupe;
mod index;
mod segments;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::protocol::Clock;

const P_RECORD: u8 = b'r';
const P_DEAD: u8 = b'x';
const P_DEDUPE: u8 = b'd';
const P_SEGMENT: u8 = b'g';
const K_WAL: &[u8] = b"m/wal";
const K_SPACE: &[u8] = b"s";
const K_NEXT_ID: &[u8] = b"m/next_id";
const K_PENDING: &[u8] = b"m/pending";
const K_DEAD: &[u8] = b"m/dead";
const K_BYTES: &[u8] = b"m/bytes";
const K_SPACE_SENT: &[u8] = b"m/space_sent";
const RECORD_VERSION: u8 = 1;
/// First byte of a pointer into the segment log.
const POINTER_VERSION: u8 = 2;

use dedupe::Seen;
use index::{chunk_of, Chunk, Overlay};
use segments::{Head, Kind, Location, LogWrite, Readers};
/// Text added to `remark` when the quota forced the image out.
pub const DEGRADED_REMARK: &str = "图片因网关存储已满被替换 (image replaced: gateway outbox full)";

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox store error: {0}")]
    Store(String),
    #[error("outbox is full: {needed} more bytes would exceed max_disk = {max} bytes even with every pending image replaced; the source keeps the event")]
    Full { needed: u64, max: u64 },
    #[error("cannot open outbox at {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("record {id} is not decodable: {message}")]
    Corrupt { id: u64, message: String },
    #[error("no dead letter with id {0}")]
    NoSuchDead(u64),
}

impl From<sled::Error> for OutboxError {
    fn from(e: sled::Error) -> Self {
        OutboxError::Store(e.to_string())
    }
}

/// Everything of a `carInOut` record but the image, plus bookkeeping. Field names are the
/// platform's, so this serialises straight into the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMeta {
    #[serde(rename = "carNo", default, skip_serializing_if = "Option::is_none")]
    pub car_no: Option<String>,
    #[serde(rename = "inOutType")]
    pub in_out_type: String,
    #[serde(rename = "inOutTime")]
    pub in_out_time: String,
    #[serde(rename = "imgName")]
    pub img_name: String,
    #[serde(rename = "nodeName")]
    pub node_name: String,
    #[serde(rename = "carColor", default, skip_serializing_if = "Option::is_none")]
    pub car_color: Option<String>,
    #[serde(rename = "carStyle")]
    pub car_style: String,
    #[serde(rename = "carBrand", default, skip_serializing_if = "Option::is_none")]
    pub car_brand: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remark: Option<String>,
    /// Gateway bookkeeping: when the record was accepted (Unix ms, corrected clock).
    #[serde(rename = "_submittedMs", default)]
    pub submitted_ms: i64,
    /// Gateway bookkeeping: the image was replaced because of the disk quota.
    #[serde(rename = "_degraded", default)]
    pub degraded: bool,
}

/// How the record's `imgName` is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImgName {
    /// Use this name as it is.
    Given(String),
    /// `{lot}_{node}_{stamp}_{id}.jpg`, the node part shortened so the whole fits 50 chars.
    Auto {
        lot: String,
        node: String,
        stamp: String,
    },
}

impl ImgName {
    fn render(&self, id: u64) -> String {
        match self {
            ImgName::Given(s) => s.chars().take(50).collect(),
            ImgName::Auto { lot, node, stamp } => {
                let suffix = format!("_{stamp}_{id}.jpg");
                let room = 50usize.saturating_sub(suffix.chars().count());
                let head: String = format!("{lot}_{node}").chars().take(room).collect();
                let name = format!("{head}{suffix}");
                name.chars().take(50).collect()
            }
        }
    }
}

/// A record to store. `meta.img_name` is replaced by `img_name` rendered with the new id.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Dedupe key; empty = no dedupe.
    pub source_key: String,
    pub meta: RecordMeta,
    pub img_name: ImgName,
    /// Encoded image, within the platform budget.
    pub image: Vec<u8>,
}

/// A stored record, as read back.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub id: u64,
    pub meta: RecordMeta,
    pub image: Vec<u8>,
}

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredRecord")
            .field("id", &self.id)
            .field("meta", &self.meta)
            .field("image_bytes", &self.image.len())
            .finish()
    }
}

impl StoredRecord {
    /// Approximate size of this record in a request body (Base64 image + fields).
    pub fn wire_size(&self) -> u64 {
        let b64 = crate::imaging::b64_len(self.image.len()) as u64;
        let fields = [
            self.meta.car_no.as_deref().unwrap_or(""),
            &self.meta.in_out_time,
            &self.meta.img_name,
            &self.meta.node_name,
            self.meta.car_color.as_deref().unwrap_or(""),
            self.meta.car_brand.as_deref().unwrap_or(""),
            self.meta.remark.as_deref().unwrap_or(""),
        ]
        .iter()
        .map(|s| s.len() as u64 * 2)
        .sum::<u64>();
        b64 + fields + 200
    }
}

/// A dead letter: a record the platform explicitly rejected, with why.
#[derive(Debug, Clone)]
pub struct DeadRecord {
    pub record: StoredRecord,
    pub reason: String,
}

/// The outcome of a submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Stored under this id.
    Stored(u64),
    /// The source key was accepted within the dedupe window: nothing stored.
    Duplicate,
}

/// The latest space report and whether it has been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceReport {
    pub total: u64,
    pub surplus: u64,
    /// Grows by one per change.
    pub seq: u64,
}

/// Outbox settings.
#[derive(Debug, Clone)]
pub struct OutboxOptions {
    /// Most bytes of stored record values.
    pub max_disk: u64,
    /// sled page cache, bytes. Small on a Pi.
    pub cache_capacity: u64,
    /// Window in which a source key is accepted once.
    pub dedupe_window: Duration,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            max_disk: 2 << 30,
            cache_capacity: 4 << 20,
            dedupe_window: Duration::from_secs(600),
        }
    }
}

/// Counters and segment bookkeeping: in memory, and persisted in every batch that changes
/// them (`m/…` and `g…` keys; segment lengths are read from the files when opening).
#[derive(Debug, Clone, Default)]
struct State {
    next_id: u64,
    pending: u64,
    dead: u64,
    /// Bytes of record values stored inline in sled (dead letters, old-format records).
    inline_bytes: u64,
    /// Pending records pointing into each segment (absent = none).
    live: BTreeMap<u64, u64>,
    /// Length of each segment file that is kept (the head included).
    sizes: BTreeMap<u64, u64>,
    /// Bytes the quota could free in each segment by replacing images (an estimate: only
    /// ever too high, which costs one compaction that frees less than hoped).
    gain: BTreeMap<u64, u64>,
}

impl State {
    /// What `max_disk` limits: the segment files and the inline values.
    fn bytes(&self) -> u64 {
        self.inline_bytes + self.sizes.values().sum::<u64>()
    }

    /// Write the counters, and the counts of the segments in `touched`.
    fn write(&self, b: &mut sled::Batch, touched: &BTreeSet<u64>) {
        b.insert(K_NEXT_ID, &self.next_id.to_be_bytes());
        b.insert(K_PENDING, &self.pending.to_be_bytes());
        b.insert(K_DEAD, &self.dead.to_be_bytes());
        b.insert(K_BYTES, &self.inline_bytes.to_be_bytes());
        for &seg in touched {
            match self.live.get(&seg) {
                Some(n) if *n > 0 => b.insert(&key(P_SEGMENT, seg), &n.to_be_bytes()),
                _ => b.remove(&key(P_SEGMENT, seg)),
            }
        }
    }

    /// A record was appended at `loc`; `gain` bytes of it could be freed by the quota.
    fn add(&mut self, loc: Location, gain: u64) {
        *self.live.entry(loc.seg).or_insert(0) += 1;
        *self.sizes.entry(loc.seg).or_insert(0) += u64::from(loc.len);
        *self.gain.entry(loc.seg).or_insert(0) += gain;
    }

    /// One record fewer points into `seg`; returns how many still do.
    fn release(&mut self, seg: u64) -> u64 {
        let n = self.live.entry(seg).or_insert(0);
        *n = n.saturating_sub(1);
        *n
    }

    /// A record pointing into `seg` is gone. Returns true if no pending record points into
    /// that segment any more and it is not the head: it is then dropped from the books and
    /// its file may be deleted after the next sled flush.
    fn unlink(&mut self, seg: u64, head: u64) -> bool {
        if self.release(seg) > 0 {
            return false;
        }
        self.live.remove(&seg);
        if seg == head {
            return false;
        }
        self.sizes.remove(&seg);
        self.gain.remove(&seg);
        true
    }

    /// Move the per-segment counts by a group's `delta`, `sign` = 1 to add the group, -1 to
    /// take it out again.
    fn shift_live(&mut self, delta: &BTreeMap<u64, i64>, sign: i64) {
        for (seg, d) in delta {
            let n = self.live.entry(*seg).or_insert(0);
            *n = n.saturating_add_signed(sign * d);
            if *n == 0 {
                self.live.remove(seg);
            }
        }
    }

    /// [`State::forget`] for the counters only (`applied`: no segment is deleted for it).
    fn forget_counts(&mut self, v: &Value) {
        self.forget(v, u64::MAX, &mut BTreeSet::new(), &mut Vec::new());
    }

    /// Forget a pending record that is being removed.
    fn forget(&mut self, v: &Value, head: u64, touched: &mut BTreeSet<u64>, reap: &mut Vec<u64>) {
        match v {
            Value::Log(loc) => {
                touched.insert(loc.seg);
                if self.unlink(loc.seg, head) {
                    reap.push(loc.seg);
                }
            }
            Value::Inline(v) => {
                self.inline_bytes = self.inline_bytes.saturating_sub(v.len() as u64);
            }
        }
    }
}

/// Where a pending record is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    /// In the segment log (the index points there).
    Log(Location),
    /// Inline in sled, under `r` + id.
    Inline(sled::IVec),
}

/// The books and the segment being written, under one lock.
struct Writer {
    /// The books including groups staged but not yet applied to sled: what the quota,
    /// segment deletion and new ids go by.
    st: State,
    head: Head,
    /// Source keys accepted within the dedupe window, staged groups' included.
    seen: Seen,
    /// Index chunks changed by groups not yet applied.
    index: Overlay,
}

/// What a group of submits changes, staged before it is written and applied.
struct Group {
    next: State,
    batch: sled::Batch,
    touched: BTreeSet<u64>,
    /// This group's source keys (hashes), and its first record's id: its dedupe entry.
    hashes: Vec<u64>,
    first_id: u64,
    /// Pending records gained (or lost, by the quota's moves) per segment.
    live: BTreeMap<u64, i64>,
    /// Index chunks this group changed (their values are in the overlay).
    chunks: BTreeSet<u64>,
    /// Records stored.
    stored: u64,
    /// May the quota compact? Only when no earlier group is still being written: compaction
    /// reads old segments and the index, which must be complete.
    may_compact: bool,
    /// The log bytes to write and fsync.
    write: LogWrite,
    /// Segments emptied by this group: deleted after a flush.
    reap: Vec<u64>,
    /// Anything to apply?
    changed: bool,
}

/// A group staged and waiting for its log write: its answers, and what to apply to sled.
struct Staged {
    answers: Vec<Answer>,
    results: Vec<Result<Submitted, OutboxError>>,
    batch: sled::Batch,
    touched: BTreeSet<u64>,
    /// The group's source keys (hashes) and when they were accepted: forgotten if it fails.
    hashes: Vec<u64>,
    at: i64,
    live: BTreeMap<u64, i64>,
    /// Index chunks changed: written from the overlay when the group is applied.
    chunks: BTreeSet<u64>,
    stored: u64,
    /// One past the group's last id: the chunks are written without the ids from here on.
    next_id: u64,
    /// How far the log is applied once this group is: `m/wal`.
    wal: (u64, u64),
    reap: Vec<u64>,
    /// Anything to apply? (Its log bytes may all be written already: by a roll.)
    changed: bool,
}

/// A group whose log write runs on a blocking thread.
struct Flight {
    group: Staged,
    write: tokio::task::JoinHandle<std::io::Result<()>>,
}

struct Inner {
    db: sled::Db,
    path: PathBuf,
    seg_dir: PathBuf,
    opts: OutboxOptions,
    /// Start a new segment once the head is this long.
    roll: u64,
    writer: Mutex<Writer>,
    /// The counters as sled has them (`next_id`, `pending`, `dead`, `inline_bytes`, `live`;
    /// `sizes` and `gain` unused): what every batch writes, applied under this lock so the
    /// batches reach sled in the order their counters were computed. A group's changes
    /// reach it when the group is applied; an ack or dead letter changes both it and the
    /// writer's books (lock order: writer, then this).
    applied: Mutex<State>,
    readers: Readers,
    notify: Notify,
    /// Told whenever index chunks leave the overlay: an ack or dead letter waiting for its
    /// chunks (see [`index`]) looks again.
    index_free: Notify,
    /// When dedupe entries were last pruned (Unix ms; 0: not since opening).
    pruned_ms: AtomicI64,
    /// Flush tickets taken after a write was applied…
    written: AtomicU64,
    /// …and the highest ticket a completed flush covers. Held while flushing, so one flush
    /// runs at a time and everyone who wrote before it started shares it.
    flushed: tokio::sync::Mutex<u64>,
    /// Submits waiting to be stored (see [`Outbox::submit`]).
    queue: Mutex<SubmitQueue>,
    /// Held by whoever writes the log, so writes reach the files in the order they were
    /// staged even if a writer task died with a write still running.
    log: Mutex<()>,
}

/// Submits waiting to be stored, and whether a group writer is running.
#[derive(Default)]
struct SubmitQueue {
    items: Vec<Queued>,
    writing: bool,
}

/// A submit waiting in the queue.
type Queued = (NewRecord, Answer);

/// Where a submit's answer goes.
type Answer = tokio::sync::oneshot::Sender<Result<Submitted, OutboxError>>;

/// The narrow interface of a durable record store: what ingest and the uploader need to
/// move `carInOut` records, with no sled type in it. [`Outbox`] implements it; another
/// embedded store could replace it behind this trait, and `tests/outbox_model.rs` runs the
/// outbox and an in-memory model through it side by side.
pub trait RecordStore: Send + Sync {
    /// Store a record durably (see [`Outbox::submit`]): on return it survives a power cut.
    fn append(
        &self,
        rec: NewRecord,
    ) -> impl std::future::Future<Output = Result<Submitted, OutboxError>> + Send;
    /// The oldest pending records, at most `max_records` and (always at least one) at most
    /// `max_bytes` of estimated request size.
    fn peek(&self, max_records: usize, max_bytes: u64) -> Result<Vec<StoredRecord>, OutboxError>;
    /// The platform has these records: they leave the store.
    fn ack(&self, ids: &[u64])
        -> impl std::future::Future<Output = Result<(), OutboxError>> + Send;
    /// The platform rejected this record: kept aside with the reason, no longer pending.
    fn dead_letter(
        &self,
        id: u64,
        reason: &str,
    ) -> impl std::future::Future<Output = Result<(), OutboxError>> + Send;
    /// Pending records.
    fn len(&self) -> u64;
    /// No pending records.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RecordStore for Outbox {
    fn append(
        &self,
        rec: NewRecord,
    ) -> impl std::future::Future<Output = Result<Submitted, OutboxError>> + Send {
        self.submit(rec)
    }
    fn peek(&self, max_records: usize, max_bytes: u64) -> Result<Vec<StoredRecord>, OutboxError> {
        Outbox::peek(self, max_records, max_bytes)
    }
    fn ack(
        &self,
        ids: &[u64],
    ) -> impl std::future::Future<Output = Result<(), OutboxError>> + Send {
        Outbox::ack(self, ids)
    }
    fn dead_letter(
        &self,
        id: u64,
        reason: &str,
    ) -> impl std::future::Future<Output = Result<(), OutboxError>> + Send {
        Outbox::dead_letter(self, id, reason)
    }
    fn len(&self) -> u64 {
        Outbox::len(self)
    }
}

/// The durable outbox. Cheap to clone; one per process (see the module docs).
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// What happened while opening.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Where a corrupt store was moved, if it was.
    pub moved_aside: Option<PathBuf>,
}

fn key(prefix: u8, id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn id_of(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

fn read_u64(db: &sled::Db, k: &[u8]) -> Result<Option<u64>, OutboxError> {
    Ok(db.get(k)?.and_then(|v| {
        let b: [u8; 8] = v.as_ref().try_into().ok()?;
        Some(u64::from_be_bytes(b))
    }))
}

/// `m/wal`: the log is applied to sled up to this segment and offset.
fn wal_value(seg: u64, off: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&seg.to_be_bytes());
    v[8..].copy_from_slice(&off.to_be_bytes());
    v
}

/// Replaying log entries that sled had not flushed, while opening.
struct Replay<'a> {
    db: &'a sled::Db,
    batch: sled::Batch,
    touched: BTreeSet<u64>,
    /// Index chunks changed by this replay (sled does not have them yet).
    index: Overlay,
    seen: Seen,
    entries: u64,
}

impl Replay<'_> {
    /// Move pointers that versions before [`index`] kept one per `r` key into their chunks.
    /// Inline records stay where they are.
    fn take_over_pointers(&mut self) -> Result<u64, OutboxError> {
        let mut n = 0;
        for item in self.db.scan_prefix([P_RECORD]) {
            let (k, v) = item?;
            let (Some(id), Some(loc)) = (id_of(&k), decode_pointer(&v)) else {
                continue;
            };
            self.index.set(self.db, id, loc, &mut BTreeSet::new())?;
            self.batch.remove(k);
            n += 1;
        }
        Ok(n)
    }

    /// Apply one entry found after `m/wal`. A new record past `next_id` is added with its
    /// dedupe entry; a moved record re-points its index entry if it is still pending.
    fn apply(
        &mut self,
        st: &mut State,
        loc: Location,
        e: &segments::Entry,
    ) -> Result<(), OutboxError> {
        match e.kind {
            Kind::New if e.id >= st.next_id => {
                if !e.source_key.is_empty() {
                    let h = dedupe::key_hash(&e.source_key);
                    self.seen.insert(h, e.accepted_ms);
                    self.batch.insert(
                        &dedupe::entry_key(self.seen.bucket(e.accepted_ms), e.id)[..],
                        dedupe::encode(&[h]),
                    );
                }
                self.index.set(self.db, e.id, loc, &mut BTreeSet::new())?;
                st.add(loc, 0);
                st.pending += 1;
                st.next_id = e.id + 1;
            }
            Kind::New => {}
            Kind::Moved => {
                let current = self.index.get(self.db, e.id)?;
                let Some(from) = current.filter(|c| *c != loc) else {
                    return Ok(());
                };
                self.index.set(self.db, e.id, loc, &mut BTreeSet::new())?;
                st.release(from.seg);
                self.touched.insert(from.seg);
                st.add(loc, 0);
            }
        }
        self.touched.insert(loc.seg);
        self.entries += 1;
        Ok(())
    }
}

/// A pointer of a version before [`index`] (`2, seg, off, len`), taken over when opening.
fn decode_pointer(v: &[u8]) -> Option<Location> {
    if v.len() != 21 || v[0] != POINTER_VERSION {
        return None;
    }
    Some(Location {
        seg: u64::from_be_bytes(v[1..9].try_into().ok()?),
        off: u64::from_be_bytes(v[9..17].try_into().ok()?),
        len: u32::from_be_bytes(v[17..21].try_into().ok()?),
    })
}

/// Encode a record value.
pub fn encode_record(meta: &RecordMeta, image: &[u8]) -> Vec<u8> {
    // Serialising a struct of strings and integers cannot fail.
    let m = serde_json::to_vec(meta).unwrap_or_default();
    let mut v = Vec::with_capacity(5 + m.len() + image.len());
    v.push(RECORD_VERSION);
    v.extend_from_slice(&u32::try_from(m.len()).unwrap_or(u32::MAX).to_be_bytes());
    v.extend_from_slice(&m);
    v.extend_from_slice(image);
    v
}

/// Decode a record value.
pub fn decode_record(id: u64, v: &[u8]) -> Result<StoredRecord, OutboxError> {
    let bad = |m: &str| OutboxError::Corrupt {
        id,
        message: m.to_string(),
    };
    if v.first() != Some(&RECORD_VERSION) {
        return Err(bad("unknown record version"));
    }
    let len: [u8; 4] = v
        .get(1..5)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad("short header"))?;
    let len = u32::from_be_bytes(len) as usize;
    let end = 5usize.checked_add(len).ok_or_else(|| bad("bad length"))?;
    let meta_bytes = v.get(5..end).ok_or_else(|| bad("meta past the end"))?;
    let meta: RecordMeta =
        serde_json::from_slice(meta_bytes).map_err(|e| bad(&format!("meta: {e}")))?;
    Ok(StoredRecord {
        id,
        meta,
        image: v[end..].to_vec(),
    })
}

/// Why a record was not staged.
enum Staging {
    /// It needs the quota to compact while an earlier group is still being written: it
    /// goes back to the queue.
    Later(Box<NewRecord>),
    Failed(OutboxError),
}

impl From<OutboxError> for Staging {
    fn from(e: OutboxError) -> Self {
        Staging::Failed(e)
    }
}

impl From<sled::Error> for Staging {
    fn from(e: sled::Error) -> Self {
        Staging::Failed(e.into())
    }
}

/// Send every submitter its answer (one that gave up is not waiting: nothing to do).
fn answer_all(answers: Vec<Answer>, results: Vec<Result<Submitted, OutboxError>>) {
    for (answer, r) in answers.into_iter().zip(results) {
        let _ = answer.send(r);
    }
}

/// A group's write or flush failed: every submit it had accepted (stored or duplicate) gets
/// the store error instead; refusals keep their own.
fn fail_the_accepted(results: &mut [Result<Submitted, OutboxError>], message: &str) {
    for r in results.iter_mut().filter(|r| r.is_ok()) {
        *r = Err(OutboxError::Store(message.to_owned()));
    }
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

fn is_corruption(e: &sled::Error) -> bool {
    match e {
        sled::Error::Corruption { .. }
        | sled::Error::ReportableBug(_)
        | sled::Error::Unsupported(_) => true,
        sled::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        sled::Error::CollectionNotFound(_) => false,
    }
}

fn open_sled(path: &Path, opts: &OutboxOptions) -> Result<sled::Db, sled::Error> {
    let mut tries = 0;
    loop {
        let r = sled::Config::new()
            .path(path)
            .cache_capacity(opts.cache_capacity)
            .flush_every_ms(Some(500))
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

impl Outbox {
    /// Open (or create) the outbox at `path`: sled first (a corrupt store is moved aside, see
    /// the module docs), then the log entries sled had not flushed are replayed into it.
    pub fn open(path: &Path, opts: OutboxOptions) -> Result<(Outbox, OpenReport), OutboxError> {
        let mut report = OpenReport::default();
        let db = match open_sled(path, &opts) {
            Ok(db) => db,
            Err(e) if is_corruption(&e) => {
                let aside = PathBuf::from(format!(
                    "{}.corrupt-{}",
                    path.display(),
                    Clock::local_ms() / 1000
                ));
                std::fs::rename(path, &aside).map_err(|re| OutboxError::Open {
                    path: path.to_path_buf(),
                    message: format!("store is corrupt ({e}) and could not be moved aside: {re}"),
                })?;
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    error = %e,
                    "outbox store could not be opened (corrupt); moved it aside and started a fresh one: the records in it were NOT uploaded"
                );
                report.moved_aside = Some(aside);
                open_sled(path, &opts).map_err(|e| OutboxError::Open {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            Err(e) => {
                return Err(OutboxError::Open {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
            }
        };
        let seg_dir = path.join(segments::DIR);
        let io_err = |what: &str, e: std::io::Error| OutboxError::Open {
            path: seg_dir.clone(),
            message: format!("{what}: {e}"),
        };
        std::fs::create_dir_all(&seg_dir).map_err(|e| io_err("creating the segment log", e))?;
        let mut st = State {
            next_id: read_u64(&db, K_NEXT_ID)?.unwrap_or(1),
            pending: read_u64(&db, K_PENDING)?.unwrap_or(0),
            dead: read_u64(&db, K_DEAD)?.unwrap_or(0),
            inline_bytes: read_u64(&db, K_BYTES)?.unwrap_or(0),
            ..State::default()
        };
        for item in db.scan_prefix([P_SEGMENT]) {
            let (k, v) = item?;
            if let (Some(seg), Ok(n)) = (id_of(&k), <[u8; 8]>::try_from(v.as_ref())) {
                st.live.insert(seg, u64::from_be_bytes(n));
            }
        }
        let (wal_seg, wal_off) = db
            .get(K_WAL)?
            .and_then(|v| {
                let b: [u8; 16] = v.as_ref().try_into().ok()?;
                Some((
                    u64::from_be_bytes(b[..8].try_into().ok()?),
                    u64::from_be_bytes(b[8..].try_into().ok()?),
                ))
            })
            .unwrap_or((0, 0));
        let files = segments::list(&seg_dir).map_err(|e| io_err("listing the segment log", e))?;
        let mut replay = Replay {
            db: &db,
            batch: sled::Batch::default(),
            touched: BTreeSet::new(),
            index: Overlay::default(),
            seen: Self::load_dedupe(&db, &opts)?,
            entries: 0,
        };
        let taken_over = replay.take_over_pointers()?;
        let last = files.last().map(|f| f.0);
        for &(seg, mut size) in &files {
            if seg >= wal_seg {
                let from = if seg == wal_seg { wal_off.min(size) } else { 0 };
                let (entries, good_end) = segments::scan(&seg_dir, seg, from)
                    .map_err(|e| io_err("reading the segment log", e))?;
                for (loc, e) in entries {
                    replay.apply(&mut st, loc, &e)?;
                }
                if good_end < size {
                    if Some(seg) == last {
                        tracing::warn!(segment = seg, offset = good_end, cut = size - good_end, "outbox: cut a torn entry off the end of the log (a crash mid-write, before its fsync returned: no source was acknowledged for it)");
                    } else {
                        tracing::error!(segment = seg, offset = good_end, cut = size - good_end, "outbox: a segment of the log is damaged in the middle; the entries after the damage are lost");
                    }
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(segments::path_of(&seg_dir, seg))
                        .and_then(|f| {
                            f.set_len(good_end)?;
                            f.sync_all()
                        })
                        .map_err(|e| io_err("cutting a torn entry", e))?;
                    size = good_end;
                }
            }
            st.sizes.insert(seg, size);
            // Unknown until compacted: assume the whole segment could shrink.
            st.gain.insert(seg, size);
        }
        // Pointers into a segment whose file is gone (removed by hand?) cannot be followed:
        // say so; `peek` moves such records to the dead letters with the reason.
        let missing: Vec<u64> = st
            .live
            .keys()
            .copied()
            .filter(|s| !st.sizes.contains_key(s))
            .collect();
        for seg in missing {
            tracing::error!(segment = seg, records = st.live.get(&seg).copied().unwrap_or(0), "outbox: pending records point into a log segment whose file is missing; they will be dead-lettered");
            st.live.remove(&seg);
            replay.touched.insert(seg);
        }
        // Never reuse a number `m/wal` may name.
        let head_seg = last.map_or(1, |s| s + 1).max(wal_seg + 1);
        let head =
            Head::create(&seg_dir, head_seg).map_err(|e| io_err("starting a new segment", e))?;
        st.sizes.insert(head.seg, 0);
        // Segments no pending record points into: left over from a stop between an ack's
        // flush and the file's deletion, or emptied by the replay.
        let reap: Vec<u64> = st
            .sizes
            .keys()
            .copied()
            .filter(|s| *s != head.seg && st.live.get(s).copied().unwrap_or(0) == 0)
            .collect();
        for seg in &reap {
            st.sizes.remove(seg);
            st.gain.remove(seg);
            replay.touched.insert(*seg);
        }
        st.live.retain(|_, n| *n > 0);
        let Replay {
            mut batch,
            touched,
            mut index,
            seen,
            entries,
            ..
        } = replay;
        index.drain_into(&mut batch);
        st.write(&mut batch, &touched);
        batch.insert(K_WAL, &wal_value(head.seg, 0)[..]);
        db.apply_batch(batch)?;
        if entries > 0 || taken_over > 0 || !reap.is_empty() {
            db.flush()?;
        }
        if taken_over > 0 {
            tracing::info!(
                records = taken_over,
                "outbox: moved the pointers of an older version into index chunks"
            );
        }
        if entries > 0 {
            tracing::info!(
                entries,
                "outbox: replayed log entries that sled had not flushed before the last stop"
            );
        }
        let roll = (opts.max_disk / 32).clamp(64 << 10, 16 << 20);
        let ob = Outbox {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                seg_dir,
                opts,
                roll,
                applied: Mutex::new(st.clone()),
                writer: Mutex::new(Writer {
                    st,
                    head,
                    seen,
                    index: Overlay::default(),
                }),
                log: Mutex::new(()),
                readers: Readers::default(),
                notify: Notify::new(),
                index_free: Notify::new(),
                pruned_ms: AtomicI64::new(0),
                written: AtomicU64::new(0),
                flushed: tokio::sync::Mutex::new(0),
                queue: Mutex::new(SubmitQueue::default()),
            }),
        };
        ob.delete_segments(&reap);
        // Dedupe entries are forgotten by the first submit, not here: with a big backlog the
        // scan would delay the first upload after a restart.
        Ok((ob, report))
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A poisoned lock means a panic mid-update in this process; the books are still the
        // last values applied, so carry on with them.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Delete segment files no pending record points into (after a flush made that lasting).
    fn delete_segments(&self, segs: &[u64]) {
        for &seg in segs {
            self.inner.readers.forget(seg);
            match std::fs::remove_file(segments::path_of(&self.inner.seg_dir, seg)) {
                Ok(()) => tracing::debug!(segment = seg, "outbox: deleted a drained segment"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = seg, error = %e, "outbox: could not delete a drained segment; retried at the next start");
                }
            }
        }
    }

    /// Make everything written so far durable (fsync), sharing the work with concurrent
    /// callers (group commit).
    ///
    /// sled 0.34's own `flush_async` can deadlock when called concurrently (sled issues
    /// #1308, #1241; seen here as a hung submit in the crash test), so the outbox runs at
    /// most one blocking `flush` at a time on a blocking thread, and a caller whose write
    /// was applied before a flush started is covered by it.
    pub async fn flush(&self) -> Result<(), OutboxError> {
        let ticket = self.inner.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.inner.flushed.lock().await;
        if *flushed >= ticket {
            return Ok(());
        }
        // Every ticket up to `target` belongs to a write applied before this point.
        let target = self.inner.written.load(Ordering::SeqCst);
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| OutboxError::Store(format!("flush task failed: {e}")))??;
        *flushed = target;
        Ok(())
    }

    /// Store a record durably. Returns after the record is on disk (see module docs).
    ///
    /// Concurrent submits are stored together: each queues its record; if no group writer is
    /// running, it starts one (a task of its own, so a submitter that gives up cannot cancel
    /// a group half-way). The writer takes everything queued so far, appends it to the log
    /// with one `write` and one `fdatasync`, applies the pointers as one sled batch (counters
    /// written once), answers every submitter of the group, and repeats until the queue is
    /// empty; it stages the next group while the previous one's fsync runs (see
    /// `write_groups`). The queue holds at most one record per waiting submitter. A
    /// submit whose caller gave up is still stored; its source was never acknowledged, so a
    /// re-delivery is answered as a duplicate.
    pub async fn submit(&self, rec: NewRecord) -> Result<Submitted, OutboxError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start_writer = {
            let mut q = self.queue();
            q.items.push((rec, tx));
            !std::mem::replace(&mut q.writing, true)
        };
        if start_writer {
            let ob = self.clone();
            tokio::spawn(async move { ob.write_groups().await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(OutboxError::Store(
                "the submit was not answered (the group writer failed)".into(),
            ))
        })
    }

    fn applied(&self) -> MutexGuard<'_, State> {
        self.inner
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn log_lock(&self) -> MutexGuard<'_, ()> {
        self.inner
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn queue(&self) -> MutexGuard<'_, SubmitQueue> {
        self.inner
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The group writer: store what is queued, group by group, until nothing is.
    ///
    /// Pipelined: while group k's log bytes are written and fsynced on a blocking thread, the
    /// writer stages group k+1 (its entries, pointers and dedupe entries); as soon as k's
    /// fsync returns, k+1's write starts, and k is applied to sled and answered meanwhile. So
    /// the disk is kept busy, and staging and applying (CPU) overlap with the fsync.
    async fn write_groups(&self) {
        // Should this task die half-way (a panic, a runtime shutting down), the next submit
        // starts a new writer. Disarmed on the normal way out, where `writing` is cleared
        // under the same lock that saw the queue empty: clearing it later could stop a
        // writer another submit has started meanwhile.
        struct Died<'a>(Option<&'a Outbox>);
        impl Drop for Died<'_> {
            fn drop(&mut self) {
                if let Some(ob) = self.0 {
                    ob.queue().writing = false;
                }
            }
        }
        let mut died = Died(Some(self));
        let mut flight: Option<Flight> = None;
        // The last group put records back for the quota: let the flight land first.
        let mut drain = false;
        loop {
            let items = {
                let mut q = self.queue();
                if q.items.is_empty() && flight.is_none() {
                    q.writing = false;
                    died.0 = None;
                    return;
                }
                if drain && flight.is_some() {
                    Vec::new()
                } else {
                    std::mem::take(&mut q.items)
                }
            };
            let mut staged = None;
            if !items.is_empty() {
                let ob = self.clone();
                // The quota may compact only when every earlier group is in sled.
                let may_compact = flight.is_none();
                // A panic here drops the group's answers: its submitters get an error.
                if let Ok((s, deferred)) =
                    tokio::task::spawn_blocking(move || ob.stage_group(items, may_compact)).await
                {
                    drain = deferred;
                    staged = Some(s);
                }
            }
            let mut answered = false;
            if let Some(f) = flight.take() {
                let written = f.write.await.unwrap_or_else(|e| {
                    Err(std::io::Error::other(format!("the log writer failed: {e}")))
                });
                match written {
                    Ok(()) => {
                        // Start the next write at once; apply this group meanwhile.
                        if let Some((s, write)) = staged.take() {
                            flight = self.launch(s, write);
                        }
                        // Applying here rather than in a task of its own measured faster
                        // (P1: 49-54k/s against 45-49k/s): staging and applying would
                        // compete for the same two cores.
                        self.finish(f.group).await;
                        answered = true;
                    }
                    Err(e) => {
                        // The bytes of a group staged after it follow bytes whose fate is
                        // unknown: fail it too, and go on in a new segment.
                        let message = format!("writing the outbox log: {e}");
                        let mut failed = vec![f.group];
                        failed.extend(staged.take().map(|(s, _)| s));
                        self.fail(failed, &message);
                    }
                }
            }
            if let Some((s, write)) = staged {
                flight = self.launch(s, write);
            }
            // If some submitters just answered are already back, let the others queue their
            // next records too before the next group is taken: otherwise groups alternate
            // between a big and a small half.
            if answered && !self.queue().items.is_empty() {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Start a staged group's log write on a blocking thread; a group with nothing to apply
    /// (all duplicates or refused) is answered at once: every group before it is fsynced.
    fn launch(&self, s: Staged, write: LogWrite) -> Option<Flight> {
        if !s.changed {
            answer_all(s.answers, s.results);
            return None;
        }
        let ob = self.clone();
        Some(Flight {
            group: s,
            write: tokio::task::spawn_blocking(move || {
                let _log = ob.log_lock();
                write.run()
            }),
        })
    }

    /// A group's log bytes are fsynced: apply it to sled, then answer its submitters.
    async fn finish(&self, mut s: Staged) {
        let n = s.results.len();
        let answers = std::mem::take(&mut s.answers);
        let chunks = s.chunks.clone();
        let ob = self.clone();
        let (results, reap) = match tokio::task::spawn_blocking(move || ob.apply_group(s)).await {
            Ok(done) => done,
            Err(e) => {
                // Whatever it did, its chunks must not stay held: acks would wait forever.
                self.release_chunks(&mut self.writer(), &chunks);
                (
                    (0..n)
                        .map(|_| Err(OutboxError::Store(format!("the group writer failed: {e}"))))
                        .collect(),
                    Vec::new(),
                )
            }
        };
        if results
            .iter()
            .any(|r| matches!(r, Ok(Submitted::Stored(_))))
        {
            self.inner.notify.notify_one();
        }
        // Old dedupe entries are pruned by the first group after opening, then at most once
        // a minute: it scans every entry (pruning every 512 submits took a third of the
        // writer's time at 30,000 submits/s, measured with P1).
        let now = Clock::local_ms();
        let last = self.inner.pruned_ms.load(Ordering::Relaxed);
        if (now - last).abs() >= 60_000
            && self
                .inner
                .pruned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if let Err(e) = self.gc_dedupe() {
                tracing::warn!(error = %e, "outbox: pruning old dedupe entries failed; retried later");
            }
        }
        // Segments the quota emptied go once sled has made their records' moves lasting,
        // before anyone is answered: the disk then holds what `bytes` says.
        if !reap.is_empty() {
            match self.flush().await {
                Ok(()) => self.delete_segments(&reap),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox: flush failed; drained segments are deleted at the next start");
                }
            }
        }
        answer_all(answers, results);
    }

    /// Apply a group whose log bytes are fsynced: its pointers, dedupe entry and counters
    /// as one sled batch. Returns the answers and the segments to delete after a flush.
    fn apply_group(&self, mut s: Staged) -> (Vec<Result<Submitted, OutboxError>>, Vec<u64>) {
        let mut batch = std::mem::take(&mut s.batch);
        // No ack changes these chunks while the group holds them (see `index`), so the
        // values read here are still current when the batch is applied below.
        for (c, chunk) in self.writer().index.values(&s.chunks, s.next_id) {
            chunk.write_to(c, &mut batch);
        }
        let mut a = self.applied();
        let mut app = a.clone();
        app.next_id = app.next_id.max(s.next_id);
        app.pending += s.stored;
        app.shift_live(&s.live, 1);
        app.write(&mut batch, &s.touched);
        batch.insert(K_WAL, &wal_value(s.wal.0, s.wal.1)[..]);
        let applied = self.inner.db.apply_batch(batch);
        if applied.is_ok() {
            *a = app;
        }
        drop(a);
        match applied {
            Ok(()) => {
                self.release_chunks(&mut self.writer(), &s.chunks);
                (std::mem::take(&mut s.results), std::mem::take(&mut s.reap))
            }
            Err(e) => {
                // The entries are in the log but not in sled: not pending (a later group
                // moves `m/wal` past them), and their submitters are refused.
                let mut results = std::mem::take(&mut s.results);
                fail_the_accepted(&mut results, &e.to_string());
                self.unstage(&mut self.writer(), std::slice::from_ref(&s), false);
                (results, Vec::new())
            }
        }
    }

    /// A group that held these index chunks is applied or failed: release them, and wake the
    /// acks and dead letters waiting for them.
    fn release_chunks(&self, w: &mut Writer, chunks: &BTreeSet<u64>) {
        w.index.release(chunks);
        self.inner.index_free.notify_waiters();
    }

    /// Groups whose log write failed: answer their submitters with the error, take them
    /// out of the books, and go on in a new segment.
    fn fail(&self, groups: Vec<Staged>, message: &str) {
        tracing::warn!(error = message, "outbox: a log write failed; the submits of its group were refused (their sources keep the events)");
        self.unstage(&mut self.writer(), &groups, true);
        for mut g in groups {
            fail_the_accepted(&mut g.results, message);
            answer_all(g.answers, g.results);
        }
    }

    /// Take failed groups out of the books (their records are not pending: their
    /// submitters were refused; ids are not reused). Segment sizes are read back from the
    /// files, since what reached them is unknown, and with `new_head` writing goes on in a
    /// new segment.
    fn unstage(&self, w: &mut Writer, groups: &[Staged], new_head: bool) {
        for g in groups {
            for h in &g.hashes {
                w.seen.remove(*h, g.at);
            }
            w.st.pending = w.st.pending.saturating_sub(g.stored);
            w.st.shift_live(&g.live, -1);
            // Its pointers and moves leave the index (in order: a later group's records
            // stay until its own turn).
            if let Err(e) = w.index.revert(&self.inner.db, &g.chunks, g.next_id) {
                tracing::error!(error = %e, "outbox: could not read the index back after a failed write");
            }
            self.release_chunks(w, &g.chunks);
        }
        if let Ok(files) = segments::list(&self.inner.seg_dir) {
            for (seg, size) in files {
                if seg == w.head.seg || w.st.live.contains_key(&seg) {
                    w.st.sizes.insert(seg, size);
                    w.st.gain.entry(seg).or_insert(size);
                }
            }
        }
        if new_head {
            match Head::create(&self.inner.seg_dir, w.head.seg + 1) {
                Ok(h) => {
                    w.st.sizes.insert(h.seg, 0);
                    w.head = h;
                }
                Err(e) => {
                    tracing::error!(error = %e, "outbox: could not start a new log segment after a failed write; writing on in the old one");
                }
            }
        }
    }

    /// Stage every record of a group: entries appended to the head's buffer, the pointers
    /// and dedupe entries batched, the books moved on. Each record gets its own answer
    /// (stored, duplicate, full). Records that need the quota to compact while an earlier
    /// group is still being written go back to the front of the queue (returns `true`).
    fn stage_group(&self, group: Vec<Queued>, may_compact: bool) -> ((Staged, LogWrite), bool) {
        let now = Clock::local_ms();
        let mut guard = self.writer();
        let w = &mut *guard;
        w.index.drop_unheld();
        let mut g = Group {
            next: w.st.clone(),
            batch: sled::Batch::default(),
            touched: BTreeSet::new(),
            hashes: Vec::new(),
            first_id: 0,
            live: BTreeMap::new(),
            chunks: BTreeSet::new(),
            stored: 0,
            may_compact,
            write: LogWrite::default(),
            reap: Vec::new(),
            changed: false,
        };
        let mut answers = Vec::with_capacity(group.len());
        let mut results = Vec::with_capacity(group.len());
        let mut later = Vec::new();
        for (rec, answer) in group {
            if !later.is_empty() {
                later.push((rec, answer));
                continue;
            }
            match self.stage(&mut w.head, &mut w.seen, &mut w.index, &mut g, rec, now) {
                Ok(r) => {
                    answers.push(answer);
                    results.push(Ok(r));
                }
                Err(Staging::Later(rec)) => later.push((*rec, answer)),
                Err(Staging::Failed(e)) => {
                    answers.push(answer);
                    results.push(Err(e));
                }
            }
        }
        let deferred = !later.is_empty();
        if deferred {
            let mut q = self.queue();
            q.items.splice(0..0, later);
        }
        w.head.take(&mut g.write);
        if !g.hashes.is_empty() {
            g.batch.insert(
                &dedupe::entry_key(w.seen.bucket(now), g.first_id)[..],
                dedupe::encode(&g.hashes),
            );
        }
        if g.changed {
            w.st = g.next;
        }
        w.index.hold(&g.chunks);
        let staged = Staged {
            answers,
            results,
            batch: g.batch,
            touched: g.touched,
            hashes: g.hashes,
            at: now,
            live: g.live,
            chunks: g.chunks,
            stored: g.stored,
            next_id: w.st.next_id,
            wal: (w.head.seg, w.head.len),
            reap: g.reap,
            changed: g.changed,
        };
        ((staged, g.write), deferred)
    }

    /// Add one record (its log entry, pointer and dedupe entry, and whatever the quota makes
    /// it compact) to the group. On an error nothing of this record is staged.
    fn stage(
        &self,
        head: &mut Head,
        seen: &mut Seen,
        index: &mut Overlay,
        g: &mut Group,
        mut rec: NewRecord,
        now: i64,
    ) -> Result<Submitted, Staging> {
        let hash = if rec.source_key.is_empty() {
            None
        } else {
            let h = dedupe::key_hash(rec.source_key.as_bytes());
            if seen.contains(h, now) {
                return Ok(Submitted::Duplicate);
            }
            Some(h)
        };
        let id = g.next.next_id;
        rec.meta.img_name = rec.img_name.render(id);
        let record = encode_record(&rec.meta, &rec.image);
        let entry = segments::encode(Kind::New, id, now, rec.source_key.as_bytes(), &record);
        let need = entry.len() as u64;
        let max = self.inner.opts.max_disk;
        if g.next.bytes() + need > max {
            if !g.may_compact {
                return Err(Staging::Later(Box::new(rec)));
            }
            self.make_room(head, index, g, need)?;
        }
        if g.next.bytes() + need > max {
            return Err(OutboxError::Full { needed: need, max }.into());
        }
        if head.len >= self.inner.roll {
            self.roll(head, g)?;
        }
        index.ensure(&self.inner.db, id)?;
        let loc = head.append(&entry);
        let gain = rec
            .image
            .len()
            .saturating_sub(crate::imaging::placeholder_jpeg().len()) as u64;
        g.next.add(loc, gain);
        *g.live.entry(loc.seg).or_insert(0) += 1;
        g.touched.insert(loc.seg);
        index.set(&self.inner.db, id, loc, &mut g.chunks)?;
        if let Some(h) = hash {
            seen.insert(h, now);
            if g.hashes.is_empty() {
                g.first_id = id;
            }
            g.hashes.push(h);
        }
        g.next.next_id = id + 1;
        g.next.pending += 1;
        g.stored += 1;
        g.changed = true;
        Ok(Submitted::Stored(id))
    }

    /// Start a new head segment. The old one's bytes are written and fsynced now if nothing
    /// else is writing (the quota may compact it next), else with the group's write.
    fn roll(&self, head: &mut Head, g: &mut Group) -> Result<(), OutboxError> {
        let io = |e: std::io::Error| OutboxError::Store(format!("outbox log: {e}"));
        if g.may_compact {
            let _log = self.log_lock();
            head.sync().map_err(io)?;
        } else {
            head.take(&mut g.write);
        }
        let new = Head::create(&self.inner.seg_dir, head.seg + 1).map_err(io)?;
        let old = std::mem::replace(head, new);
        g.next.sizes.insert(old.seg, old.len);
        g.next.sizes.insert(head.seg, 0);
        g.changed = true;
        if g.next.live.get(&old.seg).copied().unwrap_or(0) == 0 {
            g.next.sizes.remove(&old.seg);
            g.next.gain.remove(&old.seg);
            g.reap.push(old.seg);
        }
        Ok(())
    }

    /// The quota: compact the oldest segments (their records copied to the head with the
    /// image replaced by the placeholder, the old file deleted) until `need` more bytes fit
    /// or nothing is left to shrink.
    fn make_room(
        &self,
        head: &mut Head,
        index: &mut Overlay,
        g: &mut Group,
        need: u64,
    ) -> Result<(), OutboxError> {
        let max = self.inner.opts.max_disk;
        let mut replaced = 0u64;
        while g.next.bytes() + need > max {
            let victim = g
                .next
                .live
                .keys()
                .copied()
                .find(|s| *s != head.seg && g.next.gain.get(s).copied().unwrap_or(0) > 0);
            let victim = match victim {
                Some(v) => v,
                // Everything that could shrink is in the head: start a new one, then the
                // old head is compacted like any other segment.
                None if g.next.gain.get(&head.seg).copied().unwrap_or(0) > 0
                    && g.next.live.get(&head.seg).copied().unwrap_or(0) > 0 =>
                {
                    self.roll(head, g)?;
                    continue;
                }
                None => break,
            };
            replaced += self.compact(head, index, g, victim)?;
        }
        if replaced > 0 {
            tracing::warn!(
                replaced,
                bytes = g.next.bytes(),
                max_disk = max,
                "outbox quota reached: replaced the images of the oldest pending records with a placeholder"
            );
        }
        Ok(())
    }

    /// Copy the pending records of segment `victim` to the head, images replaced by the
    /// placeholder, and drop the segment (its file goes after the group's flush). Returns
    /// how many images were replaced.
    fn compact(
        &self,
        head: &mut Head,
        index: &mut Overlay,
        g: &mut Group,
        victim: u64,
    ) -> Result<u64, OutboxError> {
        let (entries, _) = segments::scan(&self.inner.seg_dir, victim, 0)
            .map_err(|e| OutboxError::Store(format!("outbox log, segment {victim}: {e}")))?;
        let placeholder = crate::imaging::placeholder_jpeg();
        let mut replaced = 0;
        for (loc, e) in entries {
            // Records of this very group are not in sled yet (a roll made their segment
            // a candidate): the overlay has their pointers.
            if index.get(&self.inner.db, e.id)? != Some(loc) {
                continue; // delivered, dead-lettered or moved already
            }
            let record = match decode_record(e.id, &e.record) {
                Ok(mut r) if !r.meta.degraded && r.image.len() > placeholder.len() => {
                    r.meta.degraded = true;
                    r.meta.remark = Some(crate::ingest::append_remark(
                        r.meta.remark.as_deref(),
                        DEGRADED_REMARK,
                    ));
                    replaced += 1;
                    encode_record(&r.meta, placeholder)
                }
                _ => e.record,
            };
            let entry = segments::encode(Kind::Moved, e.id, e.accepted_ms, &e.source_key, &record);
            if head.len >= self.inner.roll {
                self.roll(head, g)?;
            }
            index.ensure(&self.inner.db, e.id)?;
            let to = head.append(&entry);
            g.next.add(to, 0);
            *g.live.entry(to.seg).or_insert(0) += 1;
            g.touched.insert(to.seg);
            index.set(&self.inner.db, e.id, to, &mut g.chunks)?;
            g.next.release(victim);
            *g.live.entry(victim).or_insert(0) -= 1;
        }
        g.touched.insert(victim);
        g.changed = true;
        if g.next.live.get(&victim).copied().unwrap_or(0) > 0 {
            // The index points at entries the scan did not find (a damaged segment): keep
            // the file, and do not try it again.
            tracing::error!(
                segment = victim,
                "outbox: the quota could not move every record out of a segment (damaged?); it is kept"
            );
            g.next.gain.insert(victim, 0);
            return Ok(replaced);
        }
        g.next.live.remove(&victim);
        g.next.sizes.remove(&victim);
        g.next.gain.remove(&victim);
        g.reap.push(victim);
        Ok(replaced)
    }

    /// Read a pending record back: followed into the log, or decoded inline.
    fn load(&self, id: u64, v: &Value) -> Result<StoredRecord, OutboxError> {
        let loc = match v {
            Value::Log(loc) => *loc,
            Value::Inline(v) => return decode_record(id, v),
        };
        let e = self
            .inner
            .readers
            .read(&self.inner.seg_dir, loc)
            .map_err(|e| OutboxError::Corrupt {
                id,
                message: format!("log segment {} at {}: {e}", loc.seg, loc.off),
            })?;
        if e.id != id {
            return Err(OutboxError::Corrupt {
                id,
                message: format!(
                    "log segment {} at {} holds record {}",
                    loc.seg, loc.off, e.id
                ),
            });
        }
        decode_record(id, &e.record)
    }

    /// The oldest pending records: at most `max_records`, and (but always at least one)
    /// at most `max_bytes` of estimated request size. A record that cannot be read is
    /// moved to the dead letters with the reason, never returned and never lost.
    pub fn peek(
        &self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Vec<StoredRecord>, OutboxError> {
        let mut out = Vec::new();
        let mut size = 0u64;
        let mut corrupt = Vec::new();
        for item in self.pending() {
            if out.len() >= max_records {
                break;
            }
            let (id, v) = item?;
            match self.load(id, &v) {
                Ok(r) => {
                    let s = r.wire_size();
                    if !out.is_empty() && size + s > max_bytes {
                        break;
                    }
                    size += s;
                    out.push(r);
                }
                // Delivered or moved while we read (its segment may be gone): not corrupt.
                Err(_) if self.lookup(id)? != Some(v) => {}
                Err(e) => corrupt.push((id, e.to_string())),
            }
        }
        for (id, why) in corrupt {
            // Its segment (if now empty) is deleted at the next start. If a group being
            // written holds its index chunk, the next peek moves it.
            if self.dead_letter_now(id, &why)?.is_some() {
                tracing::error!(id, error = %why, "outbox record is not decodable; moved to the dead letters");
            }
        }
        Ok(out)
    }

    /// Every pending record sled has, oldest first (see [`Pending`]).
    fn pending(&self) -> Pending {
        Pending {
            chunks: self.inner.db.scan_prefix([index::PREFIX]),
            inline: self.inner.db.scan_prefix([P_RECORD]).peekable(),
            buffered: std::collections::VecDeque::new(),
        }
    }

    /// Where sled has pending record `id`, if it is pending.
    fn lookup(&self, id: u64) -> Result<Option<Value>, OutboxError> {
        if let Some(loc) = index::load(&self.inner.db, chunk_of(id))?.get(id) {
            return Ok(Some(Value::Log(loc)));
        }
        Ok(self.inner.db.get(key(P_RECORD, id))?.map(Value::Inline))
    }

    /// Take pending record `id` out of the index in `batch`: its chunk (read from sled once
    /// into `chunks`, written by the caller) or its inline key. `None` if it is not pending.
    fn take(
        &self,
        id: u64,
        chunks: &mut BTreeMap<u64, Chunk>,
        batch: &mut sled::Batch,
    ) -> Result<Option<Value>, OutboxError> {
        let c = chunk_of(id);
        let chunk = match chunks.entry(c) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(index::load(&self.inner.db, c)?)
            }
        };
        if let Some(loc) = chunk.remove(id) {
            return Ok(Some(Value::Log(loc)));
        }
        let k = key(P_RECORD, id);
        let v = self.inner.db.get(k)?;
        if v.is_some() {
            batch.remove(&k);
        }
        Ok(v.map(Value::Inline))
    }

    /// An ack or dead-letter change, done: `next` becomes the writer's books and `app`
    /// sled's, whose counters go into `batch` (those of the `touched` segments too). The
    /// books change only if sled took the batch.
    fn commit_books(
        &self,
        w: &mut Writer,
        a: &mut State,
        next: State,
        app: State,
        mut batch: sled::Batch,
        touched: &BTreeSet<u64>,
    ) -> Result<(), OutboxError> {
        app.write(&mut batch, touched);
        self.inner.db.apply_batch(batch)?;
        w.st = next;
        *a = app;
        Ok(())
    }

    /// The platform has these records: delete them.
    pub async fn ack(&self, ids: &[u64]) -> Result<(), OutboxError> {
        let reap = self.when_index_free(|| self.ack_now(ids)).await?;
        self.flush().await?;
        self.delete_segments(&reap);
        Ok(())
    }

    /// Run `attempt` until it is done (`Some`): `None` means a group being written holds an
    /// index chunk it needs, and it is tried again each time chunks are released.
    async fn when_index_free<T>(
        &self,
        mut attempt: impl FnMut() -> Result<Option<T>, OutboxError>,
    ) -> Result<T, OutboxError> {
        loop {
            // Taken before looking, so a chunk freed in between still wakes this.
            let free = self.inner.index_free.notified();
            if let Some(done) = attempt()? {
                return Ok(done);
            }
            free.await;
        }
    }

    /// [`Outbox::ack`] unless a group being written holds one of the records' index chunks
    /// (`None`: wait for `index_free` and try again). Returns the segments that emptied.
    fn ack_now(&self, ids: &[u64]) -> Result<Option<Vec<u64>>, OutboxError> {
        let mut w = self.writer();
        if w.index.holds_any(ids.iter().map(|id| chunk_of(*id))) {
            return Ok(None);
        }
        let head = w.head.seg;
        let mut next = w.st.clone();
        let mut a = self.applied();
        let mut app = a.clone();
        let mut batch = sled::Batch::default();
        let mut chunks = BTreeMap::new();
        let mut touched = BTreeSet::new();
        let mut reap = Vec::new();
        for &id in ids {
            if let Some(v) = self.take(id, &mut chunks, &mut batch)? {
                next.pending = next.pending.saturating_sub(1);
                next.forget(&v, head, &mut touched, &mut reap);
                app.pending = app.pending.saturating_sub(1);
                app.forget_counts(&v);
            }
        }
        for (c, chunk) in &chunks {
            chunk.write_to(*c, &mut batch);
        }
        self.commit_books(&mut w, &mut a, next, app, batch, &touched)?;
        Ok(Some(reap))
    }

    /// Move a pending record to the dead letters (inline, with the reason). Returns the
    /// segments that emptied, or `None` if a group being written holds the record's index
    /// chunk (try again once `index_free` is told).
    fn dead_letter_now(&self, id: u64, reason: &str) -> Result<Option<Vec<u64>>, OutboxError> {
        let mut w = self.writer();
        if w.index.holds_any(std::iter::once(chunk_of(id))) {
            return Ok(None);
        }
        let mut chunks = BTreeMap::new();
        let mut batch = sled::Batch::default();
        let Some(v) = self.take(id, &mut chunks, &mut batch)? else {
            return Ok(Some(Vec::new()));
        };
        let record = match &v {
            Value::Inline(v) => v.to_vec(),
            Value::Log(loc) => match self.inner.readers.read(&self.inner.seg_dir, *loc) {
                Ok(e) => e.record,
                Err(e) => {
                    tracing::error!(id, segment = loc.seg, error = %e, "outbox: a dead-lettered record could not be read from the log; only its reason is kept");
                    Vec::new()
                }
            },
        };
        let reason = if u32::try_from(reason.len()).is_ok() {
            reason.as_bytes()
        } else {
            b""
        };
        let mut dv = Vec::with_capacity(4 + reason.len() + record.len());
        dv.extend_from_slice(&u32::try_from(reason.len()).unwrap_or(0).to_be_bytes());
        dv.extend_from_slice(reason);
        dv.extend_from_slice(&record);
        let head = w.head.seg;
        let mut next = w.st.clone();
        let mut a = self.applied();
        let mut app = a.clone();
        let mut touched = BTreeSet::new();
        let mut reap = Vec::new();
        next.forget(&v, head, &mut touched, &mut reap);
        app.forget_counts(&v);
        for s in [&mut next, &mut app] {
            s.pending = s.pending.saturating_sub(1);
            s.dead += 1;
            s.inline_bytes += dv.len() as u64;
        }
        for (c, chunk) in &chunks {
            chunk.write_to(*c, &mut batch);
        }
        batch.insert(&key(P_DEAD, id), dv);
        self.commit_books(&mut w, &mut a, next, app, batch, &touched)?;
        Ok(Some(reap))
    }

    /// The platform explicitly rejected this record: move it to the dead letters.
    pub async fn dead_letter(&self, id: u64, reason: &str) -> Result<(), OutboxError> {
        let reap = self
            .when_index_free(|| self.dead_letter_now(id, reason))
            .await?;
        self.flush().await?;
        self.delete_segments(&reap);
        Ok(())
    }

    /// Every dead letter, oldest first.
    pub fn dead_list(&self) -> Result<Vec<DeadRecord>, OutboxError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix([P_DEAD]) {
            let (k, v) = item?;
            let Some(id) = id_of(&k) else { continue };
            let (reason, rest) = split_dead(&v);
            let record = decode_record(id, rest).unwrap_or_else(|_| StoredRecord {
                id,
                meta: RecordMeta {
                    car_no: None,
                    in_out_type: String::new(),
                    in_out_time: String::new(),
                    img_name: String::new(),
                    node_name: String::new(),
                    car_color: None,
                    car_style: String::new(),
                    car_brand: None,
                    remark: Some("undecodable record".into()),
                    submitted_ms: 0,
                    degraded: false,
                },
                image: Vec::new(),
            });
            out.push(DeadRecord { record, reason });
        }
        Ok(out)
    }

    /// Move a dead letter back to pending (same id, so it keeps its place in order).
    pub async fn dead_retry(&self, id: u64) -> Result<(), OutboxError> {
        {
            let db = &self.inner.db;
            let mut w = self.writer();
            let Some(v) = db.get(key(P_DEAD, id))? else {
                return Err(OutboxError::NoSuchDead(id));
            };
            // Back to pending inline (the old format, still read): a dead letter is rare and
            // small enough not to need the log.
            let (_, rest) = split_dead(&v);
            let mut next = w.st.clone();
            let mut a = self.applied();
            let mut app = a.clone();
            for s in [&mut next, &mut app] {
                s.dead = s.dead.saturating_sub(1);
                s.pending += 1;
                s.inline_bytes = s.inline_bytes.saturating_sub(v.len() as u64) + rest.len() as u64;
            }
            let mut batch = sled::Batch::default();
            batch.remove(&key(P_DEAD, id));
            batch.insert(&key(P_RECORD, id), rest);
            self.commit_books(&mut w, &mut a, next, app, batch, &BTreeSet::new())?;
        }
        self.inner.notify.notify_one();
        self.flush().await
    }

    /// Delete a dead letter for good.
    pub async fn dead_drop(&self, id: u64) -> Result<(), OutboxError> {
        {
            let db = &self.inner.db;
            let mut w = self.writer();
            let Some(v) = db.get(key(P_DEAD, id))? else {
                return Err(OutboxError::NoSuchDead(id));
            };
            let mut next = w.st.clone();
            let mut a = self.applied();
            let mut app = a.clone();
            for s in [&mut next, &mut app] {
                s.dead = s.dead.saturating_sub(1);
                s.inline_bytes = s.inline_bytes.saturating_sub(v.len() as u64);
            }
            let mut batch = sled::Batch::default();
            batch.remove(&key(P_DEAD, id));
            self.commit_books(&mut w, &mut a, next, app, batch, &BTreeSet::new())?;
        }
        self.flush().await
    }

    /// Pending records.
    pub fn len(&self) -> u64 {
        self.applied().pending
    }

    /// No pending records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dead letters.
    pub fn dead_len(&self) -> u64 {
        self.applied().dead
    }

    /// What `max_disk` limits: the segment files and the records stored inline.
    pub fn bytes(&self) -> u64 {
        self.writer().st.bytes()
    }

    /// The whole store on disk: sled's files and the segment files, bytes.
    pub fn size_on_disk(&self) -> u64 {
        let segments: u64 = self.writer().st.sizes.values().sum();
        self.inner.db.size_on_disk().unwrap_or(0) + segments
    }

    /// When the oldest pending record was accepted (Unix ms).
    pub fn oldest_submitted_ms(&self) -> Option<i64> {
        let (id, v) = self.pending().next()?.ok()?;
        self.load(id, &v).ok().map(|r| r.meta.submitted_ms)
    }

    /// Wait until something may be pending (a submit, a dead-letter retry, a space change).
    pub async fn changed(&self) {
        self.inner.notify.notified().await;
    }

    /// Wake the uploader (e.g. on shutdown or a space change).
    pub fn wake(&self) {
        self.inner.notify.notify_one();
    }

    /// Record the newest space figures; coalesces: only the newest is kept.
    pub fn set_space(&self, total: u64, surplus: u64) -> Result<Option<SpaceReport>, OutboxError> {
        let db = &self.inner.db;
        let guard = self.writer();
        let cur = self.space_latest()?;
        if let Some(cur) = cur {
            if cur.total == total && cur.surplus == surplus {
                return Ok(None);
            }
        }
        let rep = SpaceReport {
            total,
            surplus,
            seq: cur.map_or(1, |c| c.seq + 1),
        };
        db.insert(K_SPACE, serde_json::to_vec(&rep).unwrap_or_default())?;
        drop(guard);
        self.inner.notify.notify_one();
        Ok(Some(rep))
    }

    /// The newest space report, if any was ever set.
    pub fn space_latest(&self) -> Result<Option<SpaceReport>, OutboxError> {
        Ok(self
            .inner
            .db
            .get(K_SPACE)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// The space report to send: the newest, if it has not been sent yet (or `force`).
    pub fn space_to_send(&self, force: bool) -> Result<Option<SpaceReport>, OutboxError> {
        let Some(latest) = self.space_latest()? else {
            return Ok(None);
        };
        let sent = read_u64(&self.inner.db, K_SPACE_SENT)?.unwrap_or(0);
        Ok((force || sent != latest.seq).then_some(latest))
    }

    /// The platform has the report with this seq.
    pub fn space_sent(&self, seq: u64) -> Result<(), OutboxError> {
        self.inner.db.insert(K_SPACE_SENT, &seq.to_be_bytes())?;
        Ok(())
    }

    /// A small persisted setting (e.g. the ts unit `auto` settled on).
    pub fn setting(&self, name: &str) -> Result<Option<String>, OutboxError> {
        let k = format!("m/{name}");
        Ok(self
            .inner
            .db
            .get(k.as_bytes())?
            .and_then(|v| String::from_utf8(v.to_vec()).ok()))
    }

    /// Persist a small setting (durable at the next flush).
    pub fn set_setting(&self, name: &str, value: &str) -> Result<(), OutboxError> {
        let k = format!("m/{name}");
        self.inner.db.insert(k.as_bytes(), value.as_bytes())?;
        Ok(())
    }

    /// The dedupe memory from sled's entries within the window (see [`dedupe`]); older
    /// ones are deleted. Entries of versions before the log (`d` + source key → accepted-at)
    /// are taken over and deleted.
    fn load_dedupe(db: &sled::Db, opts: &OutboxOptions) -> Result<Seen, OutboxError> {
        let now = Clock::local_ms();
        let window = i64::try_from(opts.dedupe_window.as_millis()).unwrap_or(i64::MAX);
        let mut seen = Seen::new(window);
        let horizon = seen.horizon(now);
        let mut batch = sled::Batch::default();
        for item in db.scan_prefix([dedupe::PREFIX]) {
            let (k, v) = item?;
            match dedupe::entry_bucket(&k) {
                Some(b) if b >= horizon => {
                    for h in dedupe::decode(&v) {
                        seen.insert_in_bucket(h, b);
                    }
                }
                _ => batch.remove(k),
            }
        }
        // Taken over as one entry per bucket, under id 0 (no record has it).
        let mut legacy: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
        for item in db.scan_prefix([P_DEDUPE]) {
            let (k, v) = item?;
            let at = v.as_ref().try_into().map_or(i64::MIN, i64::from_be_bytes);
            if (now - at).abs() < window {
                let h = dedupe::key_hash(&k[1..]);
                seen.insert(h, at);
                legacy.entry(seen.bucket(at)).or_default().push(h);
            }
            batch.remove(k);
        }
        for (b, hashes) in legacy {
            batch.insert(&dedupe::entry_key(b, 0)[..], dedupe::encode(&hashes));
        }
        db.apply_batch(batch)?;
        Ok(seen)
    }

    /// Forget dedupe keys older than the window: in memory, and their sled entries.
    fn gc_dedupe(&self) -> Result<(), OutboxError> {
        self.gc_dedupe_at(Clock::local_ms())
    }

    fn gc_dedupe_at(&self, now: i64) -> Result<(), OutboxError> {
        let horizon = self.writer().seen.prune(now);
        let mut batch = sled::Batch::default();
        let mut n = 0u32;
        for k in self
            .inner
            .db
            .range(&[dedupe::PREFIX][..]..&dedupe::bucket_start(horizon)[..])
            .keys()
        {
            batch.remove(k?);
            n += 1;
        }
        if n > 0 {
            self.inner.db.apply_batch(batch)?;
        }
        Ok(())
    }
}

/// Pending records as sled has them, oldest first: the pointers of the index chunks (`q`) and
/// the inline records (`r`) merged in id order. A damaged chunk is skipped with an ERROR (its
/// records stay in the log and in the counts; nothing deletes them); a sled error is an item.
struct Pending {
    chunks: sled::Iter,
    inline: std::iter::Peekable<sled::Iter>,
    /// The rest of the chunk being read.
    buffered: std::collections::VecDeque<(u64, Location)>,
}

impl Iterator for Pending {
    type Item = Result<(u64, Value), OutboxError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.buffered.is_empty() {
            match self.chunks.next() {
                None => break,
                Some(Err(e)) => return Some(Err(e.into())),
                Some(Ok((k, v))) => {
                    let Some(c) = id_of(&k) else { continue };
                    match Chunk::decode(c, &v) {
                        Some(chunk) => self.buffered.extend(chunk.entries().iter().copied()),
                        None => {
                            tracing::error!(error = %index::damaged(c), "outbox: skipped a damaged index chunk; its records are not uploaded");
                        }
                    }
                }
            }
        }
        let inline = loop {
            match self.inline.peek() {
                None => break None,
                Some(Ok((k, _))) => match id_of(k) {
                    Some(id) => break Some(id),
                    None => {
                        self.inline.next(); // not a record key
                    }
                },
                Some(Err(_)) => {
                    let e = self.inline.next()?.err()?;
                    return Some(Err(e.into()));
                }
            }
        };
        match (self.buffered.front().copied(), inline) {
            (None, None) => None,
            (Some((id, loc)), i) if i.map_or(true, |i| id < i) => {
                self.buffered.pop_front();
                Some(Ok((id, Value::Log(loc))))
            }
            _ => {
                let (k, v) = self.inline.next()?.ok()?;
                Some(Ok((id_of(&k)?, Value::Inline(v))))
            }
        }
    }
}

fn split_dead(v: &[u8]) -> (String, &[u8]) {
    let len = v
        .get(0..4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, |b| u32::from_be_bytes(b) as usize);
    let end = 4usize.saturating_add(len).min(v.len());
    let reason = String::from_utf8_lossy(v.get(4..end).unwrap_or(&[])).into_owned();
    (reason, v.get(end..).unwrap_or(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn meta(plate: &str) -> RecordMeta {
        RecordMeta {
            car_no: Some(plate.to_string()),
            in_out_type: "in".into(),
            in_out_time: "2026-11-28 08:00:00".into(),
            img_name: String::new(),
            node_name: "入口1".into(),
            car_color: Some("蓝".into()),
            car_style: "0".into(),
            car_brand: None,
            remark: None,
            submitted_ms: 1,
            degraded: false,
        }
    }

    fn rec(key: &str, plate: &str, image: Vec<u8>) -> NewRecord {
        NewRecord {
            source_key: key.into(),
            meta: meta(plate),
            img_name: ImgName::Auto {
                lot: "350".into(),
                node: "入口1".into(),
                stamp: "20261128080000".into(),
            },
            image,
        }
    }

    /// Bytes of the segment files on disk.
    fn log_on_disk(dir: &Path) -> u64 {
        segments::list(&dir.join("ob").join(segments::DIR))
            .unwrap()
            .iter()
            .map(|(_, len)| len)
            .sum()
    }

    /// Store record "A" in a fresh outbox under `dir` and close it; returns its segment dir.
    async fn one_record_then_closed(dir: &Path) -> PathBuf {
        let ob = open(dir, 1 << 30);
        ob.submit(rec("a", "A", vec![1; 300])).await.unwrap();
        dir.join("ob").join(segments::DIR)
    }

    fn open(dir: &Path, max_disk: u64) -> Outbox {
        Outbox::open(
            &dir.join("ob"),
            OutboxOptions {
                max_disk,
                ..OutboxOptions::default()
            },
        )
        .expect("open")
        .0
    }

    #[tokio::test]
    async fn records_come_back_oldest_first_and_leave_only_when_acked() {
        let d = tempfile::tempdir().unwrap();
        let ob = open(d.path(), 1 << 30);
        for i in 0..5 {
            ob.submit(rec("", &format!("晋A0000{i}"), vec![0xFF, 0xD8, i]))
                .await
                .unwrap();
        }
        let got = ob.peek(3, u64::MAX).unwrap();
        let plates: Vec<_> = got.iter().map(|r| r.meta.car_no.clone().unwrap()).collect();
        assert_eq!(plates, ["晋A00000", "晋A00001", "晋A00002"]);
        assert_eq!(got[0].image, vec![0xFF, 0xD8, 0]);
        assert_eq!(
            got[0].meta.img_name,
            format!("350_入口1_20261128080000_{}.jpg", got[0].id)
        );
        ob.ack(&[got[0].id, got[1].id]).await.unwrap();
        assert_eq!(ob.len(), 3);
        assert_eq!(
            ob.peek(1, u64::MAX).unwrap()[0].meta.car_no.as_deref(),
            Some("晋A00002")
        );
    }

    #[tokio::test]
    async fn the_same_source_key_is_accepted_once() {
        let d = tempfile::tempdir().unwrap();
        let ob = open(d.path(), 1 << 30);
        assert!(matches!(
            ob.submit(rec("cam1/1/晋A1", "晋A1", vec![1]))
                .await
                .unwrap(),
            Submitted::Stored(_)
        ));
        assert_eq!(
            ob.submit(rec("cam1/1/晋A1", "晋A1", vec![1]))
                .await
                .unwrap(),
            Submitted::Duplicate
        );
        assert_eq!(ob.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submits_are_stored_in_groups_each_key_once_and_the_counters_survive_a_reopen(
    ) {
        let d = tempfile::tempdir().unwrap();
        let ob = open(d.path(), 1 << 30);
        // 64 submitters at once, every key twice: the copies may land in one group.
        let mut tasks = Vec::new();
        for i in 0..64u8 {
            let ob = ob.clone();
            tasks.push(tokio::spawn(async move {
                let k = i / 2;
                ob.submit(rec(
                    &format!("cam/{k}"),
                    &format!("晋A{k:05}"),
                    vec![k; 100],
                ))
                .await
            }));
        }
        let mut stored = Vec::new();
        let mut duplicates = 0;
        for t in tasks {
            match t.await.unwrap().unwrap() {
                Submitted::Stored(id) => stored.push(id),
                Submitted::Duplicate => duplicates += 1,
            }
        }
        stored.sort_unstable();
        stored.dedup();
        assert_eq!((stored.len(), duplicates), (32, 32));
        assert_eq!(ob.len(), 32);
        let bytes = ob.bytes();
        let plates: std::collections::BTreeSet<_> = ob
            .peek(100, u64::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.meta.car_no.unwrap_or_default())
            .collect();
        assert_eq!(plates.len(), 32, "every key once");
        drop(ob);
        let ob = open(d.path(), 1 << 30);
        assert_eq!((ob.len(), ob.bytes()), (32, bytes), "counters as written");
        let Submitted::Stored(id) = ob.submit(rec("", "晋B1", vec![1])).await.unwrap() else {
            panic!("stored")
        };
        assert!(id > *stored.last().unwrap(), "ids are never reused");
    }

    #[tokio::test]
    async fn dead_letters_keep_the_record_and_the_reason_and_can_be_retried() {
        let d = tempfile::tempdir().unwrap();
        let ob = open(d.path(), 1 << 30);
        let Submitted::Stored(id) = ob.submit(rec("", "BAD", vec![9; 10])).await.unwrap() else {
            panic!()
        };
        ob.dead_letter(id, "1502 参数不符合规定值").await.unwrap();
        assert_eq!((ob.len(), ob.dead_len()), (0, 1));
        let dead = ob.dead_list().unwrap();
        assert_eq!(dead[0].reason, "1502 参数不符合规定值");
        assert_eq!(dead[0].record.image, vec![9; 10]);
        ob.dead_retry(id).await.unwrap();
        assert_eq!((ob.len(), ob.dead_len()), (1, 0));
        ob.dead_letter(id, "again").await.unwrap();
        ob.dead_drop(id).await.unwrap();
        // Only the segment being written is left, and it is what `bytes` counts.
        assert_eq!((ob.len(), ob.dead_len()), (0, 0));
        assert_eq!(ob.bytes(), log_on_disk(d.path()));
    }

    #[tokio::test]
    async fn at_the_quota_old_images_become_placeholders_and_then_submits_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let max = 1 << 20;
        let ob = open(d.path(), max);
        let img = vec![7u8; 200_000];
        let mut ids = Vec::new();
        for i in 0..5 {
            match ob
                .submit(rec("", &format!("P{i}"), img.clone()))
                .await
                .unwrap()
            {
                Submitted::Stored(id) => ids.push(id),
                Submitted::Duplicate => panic!(),
            }
        }
        // The sixth does not fit: the oldest image is replaced, nothing is deleted.
        ob.submit(rec("", "P5", img.clone())).await.unwrap();
        assert_eq!(ob.len(), 6);
        assert!(ob.bytes() <= max);
        assert_eq!(
            ob.bytes(),
            log_on_disk(d.path()),
            "the compacted segment's file is gone"
        );
        let first = &ob.peek(1, u64::MAX).unwrap()[0];
        assert!(first.meta.degraded);
        assert_eq!(first.image, crate::imaging::placeholder_jpeg());
        assert!(first
            .meta
            .remark
            .as_deref()
            .unwrap()
            .contains("outbox full"));
        // A record that cannot fit even with every image replaced: a clear error, and
        // still nothing deleted.
        let before = ob.len();
        let refused = ob.submit(rec("", "HUGE", vec![1u8; 1 << 20])).await;
        assert!(
            matches!(refused, Err(OutboxError::Full { .. })),
            "{refused:?}"
        );
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("source keeps the event"));
        assert_eq!(ob.len(), before);
        assert!(ob.len() >= 6);
        let all = ob.peek(1000, u64::MAX).unwrap();
        assert_eq!(all.len() as u64, ob.len());
    }

    /// The ids of the oldest `max` pending records.
    fn peeked_ids(ob: &Outbox, max: usize) -> Vec<u64> {
        ob.peek(max, u64::MAX)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect()
    }

    /// `tasks` submitters at once, each submitting `per` records made by `make(task, i)`:
    /// every answer.
    async fn submit_from_many(
        ob: &Outbox,
        tasks: u32,
        per: u32,
        make: fn(u32, u32) -> NewRecord,
    ) -> Vec<Result<Submitted, OutboxError>> {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let ob = ob.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for i in 0..per {
                        out.push(ob.submit(make(t, i)).await);
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    }

    /// The writer stages a group while the previous one is still being written, and acks
    /// run in between: every batch must still leave sled's counters true.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acks_running_between_pipelined_groups_leave_the_stored_counters_true() {
        let d = tempfile::tempdir().unwrap();
        let ob = open(d.path(), 1 << 30);
        let acker = {
            let ob = ob.clone();
            tokio::spawn(async move {
                let mut acked = BTreeSet::new();
                while acked.len() < 600 {
                    let ids = peeked_ids(&ob, 7);
                    if ids.is_empty() {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    ob.ack(&ids).await.unwrap();
                    acked.extend(ids);
                }
                acked
            })
        };
        let stored: BTreeSet<u64> = submit_from_many(&ob, 32, 40, |t, i| {
            let key = format!("cam{t}/{i}");
            rec(&key, &key, vec![7; 300])
        })
        .await
        .into_iter()
        .map(|r| match r {
            Ok(Submitted::Stored(id)) => id,
            other => panic!("every key is new: {other:?}"),
        })
        .collect();
        let acked = acker.await.unwrap();
        let pending: Vec<u64> = stored.difference(&acked).copied().collect();
        assert_eq!(stored.len(), 32 * 40);
        assert_eq!(peeked_ids(&ob, 10_000), pending);
        assert_eq!(ob.len(), pending.len() as u64);
        drop(ob);
        let ob = open(d.path(), 1 << 30);
        assert_eq!(ob.len(), pending.len() as u64, "the counter sled holds");
        assert_eq!(peeked_ids(&ob, 10_000), pending);
        assert_eq!(ob.bytes(), log_on_disk(d.path()));
    }

    /// An ack of a record whose index chunk a group being written also changes waits for
    /// that group; the group's write then cannot bring the acked record back. A group that
    /// fails leaves the chunk as sled had it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ack_waits_while_a_group_being_written_holds_its_index_chunk() {
        let d = tempfile::tempdir().unwrap();
        let ob = open(d.path(), 1 << 30);
        let Submitted::Stored(a) = ob.submit(rec("a", "A", vec![1; 50])).await.unwrap() else {
            panic!()
        };
        // Stage B by hand (what the group writer does), in A's chunk: the chunk is held.
        let stage = |key: &str| {
            let (tx, _rx) = tokio::sync::oneshot::channel();
            let ((staged, write), deferred) =
                ob.stage_group(vec![(rec(key, key, vec![2; 50]), tx)], true);
            assert!(!deferred);
            (staged, write)
        };
        let (staged, write) = stage("b");
        let b = staged.next_id - 1;
        assert_eq!(chunk_of(a), chunk_of(b));
        assert_eq!(ob.ack_now(&[a]).unwrap(), None, "held: the ack must wait");
        let acking = tokio::spawn({
            let ob = ob.clone();
            async move { ob.ack(&[a]).await }
        });
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!acking.is_finished(), "still waiting for the group");
        write.run().unwrap();
        let (results, _) = ob.apply_group(staged);
        assert!(matches!(results[0], Ok(Submitted::Stored(id)) if id == b));
        tokio::time::timeout(Duration::from_secs(10), acking)
            .await
            .expect("the ack goes on once the group is applied")
            .unwrap()
            .unwrap();
        assert_eq!(peeked_ids(&ob, 10), [b], "A acked, B pending");
        // C is staged and its write fails: C is refused and the chunk is B's alone again.
        let (staged, _write) = stage("c");
        ob.fail(vec![staged], "disk gone");
        assert_eq!(
            ob.ack_now(&[]).unwrap(),
            Some(vec![]),
            "nothing held any more"
        );
        assert_eq!(peeked_ids(&ob, 10), [b]);
        drop(ob);
        let ob = open(d.path(), 1 << 30);
        assert_eq!(peeked_ids(&ob, 10), [b], "as sled has it after a reopen");
        assert_eq!(ob.len(), 1);
    }

    /// Records that need the quota to compact while an earlier group is still being written
    /// wait for the next group: all are answered, none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submits_at_the_quota_are_all_answered_and_none_is_lost() {
        let d = tempfile::tempdir().unwrap();
        let max = 1 << 20;
        let ob = open(d.path(), max);
        let answers = tokio::time::timeout(
            Duration::from_secs(60),
            submit_from_many(&ob, 16, 10, |t, i| {
                rec("", &format!("P{t}/{i}"), vec![9; 50_000])
            }),
        )
        .await
        .expect("every submit is answered");
        let mut stored: Vec<u64> = answers
            .into_iter()
            .filter_map(|r| match r {
                Ok(Submitted::Stored(id)) => Some(id),
                Ok(Submitted::Duplicate) => panic!("no source key, no duplicate"),
                Err(OutboxError::Full { .. }) => None,
                Err(e) => panic!("{e}"),
            })
            .collect();
        stored.sort_unstable();
        // 8 MB of images into a 1 MiB quota: images were replaced and every record kept
        // (placeholders fit; a segment the quota could not compact would refuse some).
        assert_eq!(stored.len(), 160);
        let all = ob.peek(1000, u64::MAX).unwrap();
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), stored);
        assert!(all.iter().any(|r| r.meta.degraded));
        assert_eq!(ob.len(), stored.len() as u64);
        assert!(ob.bytes() <= max);
        assert_eq!(ob.bytes(), log_on_disk(d.path()));
        drop(all);
        drop(ob);
        let ob = open(d.path(), max);
        assert_eq!(ob.len(), stored.len() as u64);
        assert_eq!(ob.bytes(), log_on_disk(d.path()));
    }

    /// sled is flushed in the background, so a SIGKILL can take its newest batches; the
    /// log has the records (fsynced before submit returned) and opening puts them back.
    #[tokio::test]
    async fn records_sled_lost_in_a_crash_are_replayed_from_the_log() {
        let d = tempfile::tempdir().unwrap();
        let saved: Vec<(sled::IVec, sled::IVec)>;
        let later;
        {
            let ob = open(d.path(), 1 << 30);
            ob.submit(rec("a", "A", vec![1; 300])).await.unwrap();
            ob.flush().await.unwrap();
            // sled as it was after the first record…
            saved = ob
                .inner
                .db
                .iter()
                .map(Result::unwrap)
                .filter(|(k, _)| {
                    k.starts_with(b"m/")
                        || k.starts_with(&[P_SEGMENT])
                        || k.starts_with(&[index::PREFIX])
                })
                .collect();
            let mut ids = vec![];
            for (k, p) in [("b", "B"), ("c", "C")] {
                if let Submitted::Stored(id) = ob.submit(rec(k, p, vec![2; 300])).await.unwrap() {
                    ids.push(id);
                }
            }
            later = ids;
            // …and then it loses the next two batches, as an unflushed sled does.
            let db = &ob.inner.db;
            for k in db.scan_prefix([index::PREFIX]).keys() {
                db.remove(k.unwrap()).unwrap();
            }
            for (k, v) in &saved {
                db.insert(k, v).unwrap();
            }
            let dedupe_entries: Vec<_> = db
                .scan_prefix([dedupe::PREFIX])
                .keys()
                .map(Result::unwrap)
                .filter(|k| later.iter().any(|id| k.ends_with(&id.to_be_bytes())))
                .collect();
            assert_eq!(dedupe_entries.len(), 2, "one per group");
            for k in dedupe_entries {
                db.remove(k).unwrap();
            }
            ob.flush().await.unwrap();
            assert_eq!(ob.pending().count(), 1);
        }
        let ob = open(d.path(), 1 << 30);
        let all = ob.peek(10, u64::MAX).unwrap();
        let plates: Vec<_> = all.iter().map(|r| r.meta.car_no.clone().unwrap()).collect();
        assert_eq!(plates, ["A", "B", "C"], "replayed, in order");
        assert_eq!(all[1].image, vec![2; 300], "intact");
        assert_eq!(all.iter().skip(1).map(|r| r.id).collect::<Vec<_>>(), later);
        assert_eq!(ob.len(), 3);
        assert_eq!(
            ob.submit(rec("c", "C", vec![2])).await.unwrap(),
            Submitted::Duplicate,
            "the dedupe entry came back too"
        );
        let Submitted::Stored(n) = ob.submit(rec("d", "D", vec![3])).await.unwrap() else {
            panic!()
        };
        assert!(n > later[1], "ids never go back");
        assert_eq!(ob.bytes(), log_on_disk(d.path()));
    }

    /// Stores of the version before index chunks kept one pointer per `r` key: opening takes
    /// them over into chunks, and inline records stay inline, all in one order.
    #[tokio::test]
    async fn pointers_of_an_older_version_are_taken_over_into_index_chunks() {
        let d = tempfile::tempdir().unwrap();
        let mut ids = vec![];
        {
            let ob = open(d.path(), 1 << 30);
            for (k, p) in [("a", "A"), ("b", "B"), ("c", "C")] {
                if let Submitted::Stored(id) = ob.submit(rec(k, p, vec![1; 100])).await.unwrap() {
                    ids.push(id);
                }
            }
            // Rewrite the index as the old version kept it: `r` + id → `2, seg, off, len`,
            // and the middle record inline (as a dead-letter retry leaves it).
            let db = &ob.inner.db;
            let middle = ob.peek(3, u64::MAX).unwrap()[1].clone();
            for item in db.scan_prefix([index::PREFIX]) {
                let (k, v) = item.unwrap();
                let chunk = Chunk::decode(id_of(&k).unwrap(), &v).unwrap();
                for (id, l) in chunk.entries() {
                    let mut p = vec![POINTER_VERSION];
                    p.extend_from_slice(&l.seg.to_be_bytes());
                    p.extend_from_slice(&l.off.to_be_bytes());
                    p.extend_from_slice(&l.len.to_be_bytes());
                    db.insert(key(P_RECORD, *id), p).unwrap();
                }
                db.remove(k).unwrap();
            }
            db.insert(
                key(P_RECORD, middle.id),
                encode_record(&middle.meta, &middle.image),
            )
            .unwrap();
            ob.flush().await.unwrap();
        }
        let ob = open(d.path(), 1 << 30);
        let all = ob.peek(10, u64::MAX).unwrap();
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
        assert_eq!(all[2].image, vec![1; 100], "followed into the log");
        let inline: Vec<u64> = ob
            .inner
            .db
            .scan_prefix([P_RECORD])
            .keys()
            .map(|k| id_of(&k.unwrap()).unwrap())
            .collect();
        assert_eq!(inline, [ids[1]], "only the inline record is left under r");
        assert_eq!(ob.inner.db.scan_prefix([index::PREFIX]).count(), 1);
        ob.ack(&ids).await.unwrap();
        assert!(ob.is_empty());
        assert_eq!(ob.pending().count(), 0, "chunk and inline key both gone");
    }

    #[tokio::test]
    async fn dedupe_entries_past_the_window_are_deleted_from_memory_and_sled() {
        let d = tempfile::tempdir().unwrap();
        let ob = open(d.path(), 1 << 30);
        for k in ["a", "b", "c"] {
            ob.submit(rec(k, k, vec![1])).await.unwrap();
        }
        let entries = |ob: &Outbox| ob.inner.db.scan_prefix([dedupe::PREFIX]).count();
        assert!(entries(&ob) >= 1);
        let now = Clock::local_ms();
        ob.gc_dedupe_at(now + 60_000).unwrap();
        assert!(entries(&ob) >= 1, "still inside the window");
        assert_eq!(ob.writer().seen.len(), 3);
        ob.gc_dedupe_at(now + 12 * 60_000).unwrap();
        assert_eq!(entries(&ob), 0);
        assert_eq!(ob.writer().seen.len(), 0);
    }

    /// Versions before the log kept one sled entry per source key (`d` + key → accepted at);
    /// an upgrade within the window must still refuse those keys once.
    #[tokio::test]
    async fn dedupe_entries_of_an_older_version_are_taken_over() {
        let d = tempfile::tempdir().unwrap();
        {
            let ob = open(d.path(), 1 << 30);
            let db = &ob.inner.db;
            let mut old = vec![P_DEDUPE];
            old.extend_from_slice(b"cam/old");
            db.insert(&old, &Clock::local_ms().to_be_bytes()).unwrap();
            let mut stale = vec![P_DEDUPE];
            stale.extend_from_slice(b"cam/stale");
            db.insert(&stale, &(Clock::local_ms() - 3_600_000).to_be_bytes())
                .unwrap();
            ob.flush().await.unwrap();
        }
        let ob = open(d.path(), 1 << 30);
        assert_eq!(ob.inner.db.scan_prefix([P_DEDUPE]).count(), 0, "taken over");
        assert_eq!(
            ob.submit(rec("cam/old", "A", vec![1])).await.unwrap(),
            Submitted::Duplicate
        );
        assert!(matches!(
            ob.submit(rec("cam/stale", "B", vec![1])).await.unwrap(),
            Submitted::Stored(_)
        ));
        drop(ob);
        let ob = open(d.path(), 1 << 30);
        assert_eq!(
            ob.submit(rec("cam/old", "A", vec![1])).await.unwrap(),
            Submitted::Duplicate,
            "and kept"
        );
    }

    /// A crash in the middle of writing a group leaves half an entry at the end of the log.
    /// Nobody was answered for it; opening cuts it off and carries on.
    #[tokio::test]
    async fn a_torn_entry_at_the_end_of_the_log_is_cut_off() {
        let d = tempfile::tempdir().unwrap();
        let dir = one_record_then_closed(d.path()).await;
        let (last, len) = *segments::list(&dir).unwrap().last().unwrap();
        let torn = segments::encode(Kind::New, 99, 0, b"z", &[5; 200]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(segments::path_of(&dir, last))
            .unwrap();
        std::io::Write::write_all(&mut f, &torn[..torn.len() / 2]).unwrap();
        drop(f);
        let ob = open(d.path(), 1 << 30);
        assert_eq!(ob.len(), 1);
        assert_eq!(
            std::fs::metadata(segments::path_of(&dir, last))
                .unwrap()
                .len(),
            len,
            "cut back to the last whole entry"
        );
        ob.submit(rec("b", "B", vec![2; 300])).await.unwrap();
        let plates: Vec<_> = ob
            .peek(10, u64::MAX)
            .unwrap()
            .iter()
            .map(|r| r.meta.car_no.clone().unwrap())
            .collect();
        assert_eq!(plates, ["A", "B"]);
    }

    /// A segment file removed by hand (or lost by a dying card): its records cannot be
    /// sent, but they are not silently forgotten either: they become dead letters that say
    /// why, and the outbox carries on.
    #[tokio::test]
    async fn records_whose_segment_file_is_gone_become_dead_letters_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let dir = one_record_then_closed(d.path()).await;
        for (seg, _) in segments::list(&dir).unwrap() {
            std::fs::remove_file(segments::path_of(&dir, seg)).unwrap();
        }
        let ob = open(d.path(), 1 << 30);
        assert!(ob.peek(10, u64::MAX).unwrap().is_empty());
        assert_eq!((ob.len(), ob.dead_len()), (0, 1));
        assert!(
            ob.dead_list().unwrap()[0].reason.contains("log segment"),
            "{}",
            ob.dead_list().unwrap()[0].reason
        );
        ob.submit(rec("b", "B", vec![2; 300])).await.unwrap();
        assert_eq!(ob.peek(10, u64::MAX).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn counters_survive_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let ids = {
            let ob = open(d.path(), 1 << 30);
            let mut ids = vec![];
            for i in 0..3 {
                if let Submitted::Stored(id) = ob
                    .submit(rec(&format!("k{i}"), "X", vec![1; 100]))
                    .await
                    .unwrap()
                {
                    ids.push(id);
                }
            }
            ob.dead_letter(ids[0], "r").await.unwrap();
            ids
        };
        let ob = open(d.path(), 1 << 30);
        assert_eq!((ob.len(), ob.dead_len()), (2, 1));
        assert_eq!(
            ob.submit(rec("k1", "X", vec![1])).await.unwrap(),
            Submitted::Duplicate
        );
        let Submitted::Stored(n) = ob.submit(rec("k9", "X", vec![1])).await.unwrap() else {
            panic!()
        };
        assert!(n > ids[2], "ids never go back");
    }

    #[tokio::test]
    async fn space_reports_coalesce_to_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let ob = open(d.path(), 1 << 30);
        assert_eq!(ob.space_to_send(false).unwrap(), None);
        for s in 0..500 {
            ob.set_space(500, s).unwrap();
        }
        let r = ob.space_to_send(false).unwrap().unwrap();
        assert_eq!((r.total, r.surplus), (500, 499));
        ob.space_sent(r.seq).unwrap();
        assert_eq!(ob.space_to_send(false).unwrap(), None);
        assert_eq!(ob.space_to_send(true).unwrap().unwrap().surplus, 499);
        assert_eq!(
            ob.set_space(500, 499).unwrap(),
            None,
            "no change, no report"
        );
    }

    #[test]
    fn a_garbage_record_value_is_an_error_not_a_panic() {
        for v in [
            &b""[..],
            b"\x01",
            b"\x01\xff\xff\xff\xff{}",
            b"\x02abc",
            b"\x01\x00\x00\x00\x02{}",
        ] {
            let _ = decode_record(1, v);
        }
        assert!(decode_record(1, b"\x01\x00\x00\x00\x02{}").is_err());
    }

    #[test]
    fn auto_image_names_fit_50_chars_and_keep_the_id() {
        let n = ImgName::Auto {
            lot: "350".into(),
            node: "一个非常非常非常非常非常非常非常非常非常非常非常长的出入口名称".into(),
            stamp: "20261128080000".into(),
        }
        .render(123_456_789);
        assert!(n.chars().count() <= 50, "{n}");
        assert!(n.ends_with("_20261128080000_123456789.jpg"), "{n}");
    }

    /// Ids and byte counts are u64 on every target: on armv7 (32-bit usize) ids past
    /// u32::MAX keep their order, names and keys, and a store over 4 GiB counts correctly.
    #[tokio::test]
    async fn ids_and_sizes_past_u32_work_on_32_bit_targets() {
        let d = tempfile::tempdir().unwrap();
        let first = u64::from(u32::MAX) - 1;
        let five_gib = 5u64 << 30;
        {
            let ob = open(d.path(), 6 << 30);
            ob.inner.db.insert(K_NEXT_ID, &first.to_be_bytes()).unwrap();
            ob.inner
                .db
                .insert(K_BYTES, &five_gib.to_be_bytes())
                .unwrap();
            ob.flush().await.unwrap();
        }
        let ob = open(d.path(), 6 << 30);
        let mut ids = vec![];
        for i in 0..3 {
            match ob.submit(rec(&format!("big{i}"), "X", vec![7; 64])).await {
                Ok(Submitted::Stored(id)) => ids.push(id),
                other => panic!("submit {i}: {other:?}"),
            }
        }
        assert_eq!(ids, [first, first + 1, first + 2]);
        assert_eq!(ids[2], 1 << 32, "the third id is past u32::MAX");
        assert!(ob.bytes() > five_gib, "{}", ob.bytes());
        let got = ob.peek(10, u64::MAX).unwrap();
        assert_eq!(
            got.iter().map(|r| r.id).collect::<Vec<_>>(),
            ids,
            "oldest first"
        );
        assert!(
            got[2].meta.img_name.ends_with("_4294967296.jpg"),
            "{}",
            got[2].meta.img_name
        );
        let before = ob.bytes();
        ob.ack(&[ids[2]]).await.unwrap();
        assert_eq!(ob.len(), 2);
        assert!(ob.bytes() <= before && ob.bytes() > five_gib);
        ob.dead_letter(ids[1], "r").await.unwrap();
        assert_eq!(ob.dead_list().unwrap()[0].record.id, u64::from(u32::MAX));
        let bytes = ob.bytes();
        drop(ob);
        let ob = open(d.path(), 6 << 30);
        assert_eq!((ob.len(), ob.dead_len(), ob.bytes()), (1, 1, bytes));
        let Submitted::Stored(n) = ob.submit(rec("big9", "X", vec![1])).await.unwrap() else {
            panic!()
        };
        assert_eq!(n, (1 << 32) + 1, "ids never go back, even past 2^32");
    }
}

#[cfg(test)]
mod corruption_tests {
    use super::*;

    #[tokio::test]
    async fn a_store_that_cannot_be_opened_is_moved_aside_and_a_fresh_one_started() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ob");
        {
            let (ob, _) = Outbox::open(&path, OutboxOptions::default()).unwrap();
            ob.set_setting("x", "y").unwrap();
            ob.flush().await.unwrap();
        }
        // Garbage over sled's files, as a dying SD card might leave them.
        for f in ["conf", "db"] {
            let p = path.join(f);
            if p.exists() {
                std::fs::write(&p, vec![0xA5u8; 4096]).unwrap();
            }
        }
        let (ob, report) =
            Outbox::open(&path, OutboxOptions::default()).expect("opens a fresh store");
        let aside = report
            .moved_aside
            .expect("the corrupt store was moved aside");
        assert!(
            aside.to_string_lossy().contains("ob.corrupt-"),
            "{}",
            aside.display()
        );
        assert!(
            aside.join("db").exists(),
            "the old files are kept for an operator"
        );
        assert_eq!(ob.len(), 0);
        assert_eq!(ob.setting("x").unwrap(), None, "a fresh store");
    }
}
