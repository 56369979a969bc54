//! # The durable outbox
//!
//! Every plate event the gateway accepts lives here until the platform has it. The outbox
//! is a directory (`[outbox] path`):
//!
//! | file | role | if lost or damaged |
//! |---|---|---|
//! | `segments/*.log` | **the log, the source of truth**: every accepted record, and marks for acks, dead letters and failed groups ([`segments`]) | damaged byte ranges are skipped and copied to `damaged/`; the rest is read |
//! | sled's files (`conf`, `db`, `blobs/`, `snap.*`) | **the index**: a pointer per pending record ([`index`]), how far the log is indexed (`m/wal`), the next id, and settings ([`settings`]) | moved to `index.broken-<time>/` and rebuilt from the log ([`replay`]) |
//! | `dead/*.dead` | dead letters, one file each ([`dead`]) | — |
//! | `keys/*.keys` | source-key hashes of the dedupe window whose segments were deleted early (quota, full disk) ([`dedupe`]) | a re-delivered event of those may be stored again |
//! | `reserve` | a few MiB kept free for starting on a full disk ([`quota`]) | re-created |
//!
//! It is used through this module only; no sled type appears in its public API, and the
//! uploader's part of it is the narrow [`RecordStore`] trait.
//!
//! ## Roles (one file each)
//!
//! - [`segments`]: the log's byte format, scanning with resynchronisation, the head, readers.
//! - [`writer`]: **the one owner of the log's head and of the index.** A thread that drains
//!   a bounded channel of commands (submits, acks, dead letters, flushes): all submits
//!   waiting are written as one group with one `write` and one `fdatasync`, then indexed
//!   (in memory: the index's overlay, see [`index`]) and answered. Nothing else writes the
//!   log or changes the index. **One durable write per event**: the group's `fdatasync` is
//!   the only I/O an event causes until the lazy index flush; sled's files are not touched
//!   per event (a sled batch per event made sled write its log buffer, and so a second
//!   file's blocks and inode went into every journal commit).
//! - [`reader`]: [`Outbox::peek`]: the oldest pending records, read from the log through
//!   the index.
//! - [`quota`]: `max_disk`, compaction of the oldest segment, the reserve file.
//! - [`dead`]: dead-letter files.
//! - [`replay`]: opening: sled opened (or moved aside and rebuilt), the log after `m/wal`
//!   replayed into the index, the dedupe memory rebuilt, versions before this one taken over.
//!   One pass over each segment, entries handled as they are read (nothing of a segment is
//!   held), small entries' headers read ahead 64 KiB at a time; the entries before `m/wal`
//!   only give their key hashes to the window (an id → key map is kept only for the entries
//!   after `m/wal`, the only ones an abort mark can name).
//! - [`settings`]: one typed accessor per small persisted value.
//! - [`index`], [`dedupe`]: the pointer chunks and their in-memory overlay; the source keys
//!   of the dedupe window (in memory only: dropped a tenth of the window at a time, a set
//!   per bucket, so expiry is a small step whatever the backlog's age).
//!
//! ## Record format
//!
//! A record is `version: u8 = 1`, `meta_len: u32 BE`, `meta` (JSON of [`RecordMeta`]:
//! every platform field but the image, plus bookkeeping), then the raw image bytes (JPEG,
//! within the platform's 50,000-Base64-character budget; Base64 is applied at upload). No
//! image bytes means "no image": the placeholder JPEG is attached when the record is read,
//! so it is never stored. A log entry wraps a record with its id, the hash of its source key
//! and a header and body checksum ([`segments`]). Ids are u64 on every target and only
//! grow (a failed group's ids are never reused), so id order is insertion order.
//!
//! ## Invariants
//!
//! 1. **The log is the truth; the index can always be rebuilt from it.** A record is in
//!    the log, fsynced, before anyone is told it is stored. The index's changes wait in
//!    memory and reach sled's disk lazily ([`writer`]: 30 s after the first change, before
//!    a segment is deleted, before a quota move, at shutdown; never when nothing changed);
//!    `m/wal` says how far the log is indexed, and opening replays the log from there.
//!    Replay is idempotent.
//! 2. **A submit whose submitter was told "failed" is never resurrected.** A failed write or
//!    fsync is cut off the file again (`ftruncate`, fsynced); if even that fails, an abort
//!    mark naming the group's ids goes first into the next write, and replay drops those
//!    ids. Replay also drops a record whose source key an earlier record of the window has.
//! 3. Records are read oldest first (id order).
//! 4. A record leaves the index only by [`Outbox::ack`] (the platform said success, or
//!    `1004` for a request holding that record alone) or by [`Outbox::dead_letter`] (the
//!    platform explicitly rejected it), which first writes it to a dead-letter file.
//!    Nothing else removes a pending record: not retries, not the quota, not age.
//! 5. Segment files are deleted oldest first only: when no pending record points into the
//!    oldest, it is not the head, its newest entry is older than the dedupe window, and a
//!    sled flush has made the index without it lasting (or by the quota, see below, or on
//!    a nearly full file system). So the marks in later segments never name records of a
//!    deleted segment that could come back. A segment deleted before the window is over
//!    first has the keys of its records that did not move appended to `keys/` and fsynced
//!    ([`dedupe`]), so opening rebuilds the whole dedupe window from the log and `keys/`.
//! 6. A source key accepted within the dedupe window (10 minutes) is accepted once, across
//!    crashes and power cuts too (a broker re-sends a message whose PUBACK was lost,
//!    however long ago its record was delivered and its segment compacted).
//!
//! ## When a record is safe
//!
//! [`Outbox::submit`] returns `Stored` only after the record's log entry was written and
//! fsynced (`fdatasync`; a new segment's directory entry is fsynced when it is created):
//! then it survives SIGKILL and power loss. Drivers acknowledge their source only after
//! that. A duplicate is answered after its group's fsync too, since the first copy may be
//! in that very group. An ack is a mark in the log without an fsync of its own and a change
//! of the index: losing it to a power cut only means the record is sent again and the
//! platform answers `1004`, which counts as delivered (**delivery is at least once**: a
//! power cut within about 30 s of an ack, before the next group's `fdatasync` or the index
//! flush carried its mark, re-sends that record). The mark rides on the next group's
//! `fdatasync` (same file, usually the same block) or the index flush: it costs no I/O of
//! its own.
//!
//! ## When the disk quota is hit
//!
//! [`Outbox::bytes`] counts the segment files, the dead-letter files and the kept keys.
//! When the next group would take it over `max_disk`, the oldest segment is compacted: its
//! pending records are copied to the head without their images (their `remark` says so;
//! they keep their id and so their place), the index is flushed, the keys of its other
//! records are kept if they are within the dedupe window, and the old file is deleted;
//! oldest segment first, until the group fits. If even that is not enough, the records that
//! do not fit get [`OutboxError::Full`]: the driver does not acknowledge, and the camera or
//! broker keeps the event. Segments are `max_disk / 32` long (64 KiB to 16 MiB).
//!
//! The quota never deletes the keys of the window to make room. The trade-off, decided for
//! the operator: an acknowledged event is never lost; a refused event is not lost either
//! (its source keeps it and sends it again); a key forgotten within the window turns a
//! re-delivery into a second record at the platform, which nothing downstream can undo. So
//! when the window's keys (8 bytes an event) and the pending records without images cannot
//! both fit, new events are refused rather than keys forgotten. A key costs 8 bytes against
//! the hundreds of bytes of the entry whose deletion keeps it, so compaction always gains.
//!
//! ## When the disk is full
//!
//! A write the file system refuses (`ENOSPC`, `EIO`) is cut off again and its submitters get
//! [`OutboxError::Unavailable`]: they are not acknowledged, the source keeps the events.
//! That is a state, not a crash: acks, reads and the uploader go on (an ack whose mark
//! cannot be written is still applied to the index), and the next submit tries again, so
//! the store works again by itself once space is back. [`Outbox::health`] says
//! `Refusing` meanwhile (`/healthz` answers 503). It writes nothing to find out (`/healthz`
//! may be probed every few seconds for years): the writer's last write and fsync succeeded,
//! its thread lives, and `statvfs` says the file system is not read-only and not full. If sled fails (it keeps an error once it
//! had one), the writer reopens it and replays the log. A few MiB are kept in `reserve`
//! and released when the file system is nearly full, so the gateway can open its store and
//! drain it even when the backlog filled the disk.
//!
//! ## A store that cannot be opened
//!
//! If sled cannot be opened (corruption, a stale `snap.*.generating`, an empty `conf`) or
//! holds no index while the log has entries, only sled's files are moved to
//! `index.broken-<unix time>/`, and the index is rebuilt from the log ([`OpenReport`]
//! says so, an ERROR in the log, and [`Outbox::rebuilt_recently`] for an hour: `/healthz`
//! answers 503 "degraded" meanwhile). sled holds a file lock that is
//! freed from a background thread after the last handle is dropped: keep one [`Outbox`] per
//! process; opening retries briefly on the lock.

mod dead;
mod dedupe;
mod index;
mod quota;
mod reader;
mod replay;
mod segments;
mod settings;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use writer::Command;

pub(crate) use settings::SpaceReport;

/// Text added to `remark` when the quota forced the image out.
pub const DEGRADED_REMARK: &str = "图片因网关存储已满被替换 (image replaced: gateway outbox full)";

/// Below this much free space (and with the reserve already released) the store is
/// reported as refusing before a write fails: not even one image record fits.
const MIN_FREE: u64 = 128 << 10;

/// How long after a rebuild of the index [`Outbox::rebuilt_recently`] reports it (and
/// `/healthz` answers 503 "degraded").
const REBUILT_REPORTED_FOR: Duration = Duration::from_secs(3600);

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox store error: {0}")]
    Store(String),
    #[error("outbox is full: {needed} more bytes would exceed max_disk = {max} bytes even with every pending image replaced; the source keeps the event")]
    Full { needed: u64, max: u64 },
    #[error("outbox cannot store now ({0}); the source keeps the event")]
    Unavailable(String),
    #[error("cannot open outbox at {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("record {id} is not decodable: {message}")]
    Corrupt { id: u64, message: String },
    #[error("no dead letter with id {0}")]
    NoSuchDead(u64),
    #[error("the outbox log cannot be read: {0}")]
    LogUnreadable(String),
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
    /// Encoded image, within the platform budget; empty = no image (the placeholder is
    /// attached when the record is read).
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

/// Outbox settings.
#[derive(Debug, Clone)]
pub struct OutboxOptions {
    /// Most bytes of segment and dead-letter files.
    pub max_disk: u64,
    /// sled page cache, bytes. Small on a Pi.
    pub cache_capacity: u64,
    /// Window in which a source key is accepted once.
    pub dedupe_window: Duration,
    /// How often the index is flushed to disk while it changes (it is rebuilt from the log
    /// after a crash, so this only bounds the replay at the next start).
    pub index_flush: Duration,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            max_disk: 2 << 30,
            cache_capacity: 4 << 20,
            dedupe_window: Duration::from_secs(600),
            index_flush: Duration::from_secs(30),
        }
    }
}

/// What happened while opening.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// sled could not be opened or had no index: its files were moved here (inside the
    /// outbox directory) and the index was rebuilt from the log. Why, in `rebuilt`.
    pub moved_aside: Option<PathBuf>,
    /// Why the index was rebuilt from the whole log, if it was.
    pub rebuilt: Option<String>,
    /// Log entries replayed into the index (written after the index was last flushed).
    pub replayed: u64,
    /// Records pending after opening.
    pub pending: u64,
    /// Damaged byte ranges of the log that were skipped (copied to `damaged/`).
    pub damaged_ranges: u64,
    /// Records whose header survived in a damaged range: moved to the dead letters.
    pub damaged_records: u64,
    /// Bytes cut off the end of the newest segment (a write a crash interrupted).
    pub torn_tail: u64,
    /// Records the log held twice within the dedupe window (a resurrected submit): dropped.
    pub duplicates_dropped: u64,
    /// Records whose segment file is missing (they are dead-lettered when read).
    pub missing: u64,
}

/// Whether the store takes new events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// Storing.
    Ok,
    /// New events are refused (disk full, quota, a write error) since `since_ms` (Unix ms);
    /// reads and acks go on, and it recovers by itself.
    Refusing { since_ms: i64, reason: String },
    /// The store cannot recover by itself (the writer is gone, the index cannot be
    /// reopened): the service should be restarted.
    Broken { reason: String },
}

/// The state the writer shares with readers: the index handle, counters, health.
struct Shared {
    path: PathBuf,
    seg_dir: PathBuf,
    dead_dir: PathBuf,
    /// sled; replaced when the writer reopens it (`None` meanwhile).
    db: RwLock<Option<sled::Db>>,
    /// Index chunks changed since they were last written to sled (see [`index`]).
    overlay: index::Overlay,
    readers: segments::Readers,
    pending: AtomicU64,
    dead: AtomicU64,
    /// What `max_disk` limits: segment, dead-letter and kept-key files.
    bytes: AtomicU64,
    health: Mutex<StoreHealth>,
    /// When the index was last rebuilt from the whole log (Unix ms; 0: never here).
    rebuilt_ms: AtomicI64,
    /// What the last open (or reopen) of the index found.
    report: Mutex<OpenReport>,
    notify: Notify,
}

impl Shared {
    fn db(&self) -> Result<sled::Db, OutboxError> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| OutboxError::Store("the outbox index is being reopened".into()))
    }

    fn set_health(&self, h: StoreHealth) {
        *self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = h;
    }

    fn health(&self) -> StoreHealth {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The handle's inside: the writer's channel and thread.
struct Inner {
    shared: Arc<Shared>,
    /// Commands to the writer (bounded: see [`writer`]).
    tx: Option<flume::Sender<Command>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer, which flushes the index; wait for it, so a
        // store opened again right after sees everything.
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The narrow interface of a durable record store: what ingest and the uploader need to
/// move `carInOut` records, with no sled type in it. [`Outbox`] implements it; another
/// embedded store could replace it behind this trait, and `tests/it/outbox_model.rs` runs the
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
            .field("path", &self.inner.shared.path)
            .finish_non_exhaustive()
    }
}

/// Encode a record value.
pub fn encode_record(meta: &RecordMeta, image: &[u8]) -> Vec<u8> {
    // Serialising a struct of strings and integers cannot fail.
    let m = serde_json::to_vec(meta).unwrap_or_default();
    let mut v = Vec::with_capacity(5 + m.len() + image.len());
    v.push(1);
    v.extend_from_slice(&u32::try_from(m.len()).unwrap_or(u32::MAX).to_be_bytes());
    v.extend_from_slice(&m);
    v.extend_from_slice(image);
    v
}

/// Decode a record value.
pub(crate) fn decode_record(id: u64, v: &[u8]) -> Result<StoredRecord, OutboxError> {
    let bad = |m: &str| OutboxError::Corrupt {
        id,
        message: m.to_string(),
    };
    if v.first() != Some(&1) {
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

/// Something the outbox moved aside (see [`moved_aside`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Aside {
    /// `index` (sled's files it could not open), `damaged` (a damaged range of the log),
    /// `store` (a whole store whose log could not be read).
    pub what: &'static str,
    pub path: PathBuf,
    /// Bytes in it.
    pub bytes: u64,
}

fn tree_bytes(p: &Path) -> u64 {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p).map_or(0, |rd| {
            rd.filter_map(Result::ok)
                .map(|e| tree_bytes(&e.path()))
                .sum()
        }),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// What the store at `path` moved aside, oldest first by name. Reads only.
pub(crate) fn moved_aside(path: &Path) -> Vec<Aside> {
    let mut out = Vec::new();
    let list = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        let prefix = format!("{}.unreadable-", name.to_string_lossy());
        for p in list(parent) {
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            {
                out.push(Aside {
                    what: "store",
                    bytes: tree_bytes(&p),
                    path: p,
                });
            }
        }
    }
    for p in list(path) {
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("index.broken-"))
        {
            out.push(Aside {
                what: "index",
                bytes: tree_bytes(&p),
                path: p,
            });
        }
    }
    for p in list(&path.join(replay::DAMAGED_DIR)) {
        out.push(Aside {
            what: "damaged",
            bytes: tree_bytes(&p),
            path: p,
        });
    }
    out
}

/// Wait for the writer's answer to a command.
async fn answer<T>(
    rx: tokio::sync::oneshot::Receiver<Result<T, OutboxError>>,
) -> Result<T, OutboxError> {
    rx.await.unwrap_or_else(|_| {
        Err(OutboxError::Store(
            "the outbox writer stopped before answering".into(),
        ))
    })
}

impl Outbox {
    /// Open (or create) the outbox at `path` (see the module docs: sled opened or rebuilt,
    /// the log replayed), and start its writer.
    pub fn open(path: &Path, opts: OutboxOptions) -> Result<(Outbox, OpenReport), OutboxError> {
        let opened = replay::open(path, &opts)?;
        let report = opened.report.clone();
        let shared = opened.shared.clone();
        let (tx, rx) = flume::bounded(writer::QUEUE);
        let w = writer::Writer::new(opened, opts);
        let handle = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || w.run(&rx))
            .map_err(|e| OutboxError::Open {
                path: path.to_path_buf(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok((
            Outbox {
                inner: Arc::new(Inner {
                    shared,
                    tx: Some(tx),
                    writer: Some(handle),
                }),
            },
            report,
        ))
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Send a command to the writer; waits while its queue is full.
    async fn send(&self, cmd: Command) -> Result<(), OutboxError> {
        let tx = self
            .inner
            .tx
            .as_ref()
            .ok_or_else(|| OutboxError::Store("the outbox is closed".into()))?;
        tx.send_async(cmd)
            .await
            .map_err(|_| OutboxError::Store("the outbox writer has stopped (see the log)".into()))
    }

    /// Send a command without waiting (from synchronous code); dropped if the queue is full.
    fn try_send(&self, cmd: Command) {
        if let Some(tx) = &self.inner.tx {
            let _ = tx.try_send(cmd);
        }
    }

    /// Store a record durably. Returns after the record is on disk (see the module docs);
    /// concurrent submits share one write and one fsync. A submit whose caller gave up is
    /// still stored (or refused): its source was never acknowledged, so a re-delivery is
    /// answered as a duplicate.
    pub async fn submit(&self, rec: NewRecord) -> Result<Submitted, OutboxError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Command::Submit(Box::new(rec), tx)).await?;
        answer(rx).await
    }

    /// The platform has these records: they leave the index (see "When a record is safe").
    pub async fn ack(&self, ids: &[u64]) -> Result<(), OutboxError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Command::Ack(ids.to_vec(), tx)).await?;
        answer(rx).await
    }

    /// The platform explicitly rejected this record: move it to the dead letters.
    pub async fn dead_letter(&self, id: u64, reason: &str) -> Result<(), OutboxError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Command::Dead(id, reason.to_owned(), Some(tx)))
            .await?;
        answer(rx).await
    }

    /// Every dead letter, oldest first.
    pub fn dead_list(&self) -> Result<Vec<DeadRecord>, OutboxError> {
        dead::list(&self.shared().dead_dir)
    }

    /// Put a dead letter back for upload (same id, so it keeps its place in order).
    pub async fn dead_retry(&self, id: u64) -> Result<(), OutboxError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Command::DeadRetry(id, tx)).await?;
        answer(rx).await
    }

    /// Delete a dead letter for good.
    pub async fn dead_drop(&self, id: u64) -> Result<(), OutboxError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Command::DeadDrop(id, tx)).await?;
        answer(rx).await
    }

    /// Make the index and settings durable now (the log always is).
    pub async fn flush(&self) -> Result<(), OutboxError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Command::Flush(tx)).await?;
        answer(rx).await
    }

    /// Pending records.
    pub fn len(&self) -> u64 {
        self.shared().pending.load(Ordering::Relaxed)
    }

    /// No pending records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dead letters.
    pub fn dead_len(&self) -> u64 {
        self.shared().dead.load(Ordering::Relaxed)
    }

    /// What `max_disk` limits: the segment files, the dead-letter files and the kept keys.
    pub fn bytes(&self) -> u64 {
        self.shared().bytes.load(Ordering::Relaxed)
    }

    /// The whole store on disk: sled's files, the segment and dead-letter files, bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.shared()
            .db()
            .ok()
            .and_then(|db| db.size_on_disk().ok())
            .unwrap_or(0)
            + self.bytes()
    }

    /// When the oldest pending record was accepted (Unix ms).
    pub fn oldest_submitted_ms(&self) -> Option<i64> {
        reader::oldest_submitted_ms(self.shared())
    }

    /// Whether new events are being stored (see [`StoreHealth`]). Writes nothing: the
    /// writer's state (its last write and fsync succeeded, or why not), the writer thread
    /// alive, and the file system neither read-only nor out of space (`statvfs`), so
    /// `/healthz` may ask as often as it likes without wearing the card.
    pub fn health(&self) -> StoreHealth {
        if self
            .inner
            .writer
            .as_ref()
            .is_some_and(std::thread::JoinHandle::is_finished)
        {
            return StoreHealth::Broken {
                reason: "the outbox writer thread has stopped".into(),
            };
        }
        let h = self.shared().health();
        if h != StoreHealth::Ok {
            return h;
        }
        let path = &self.shared().path;
        let refusing = |reason: &str| StoreHealth::Refusing {
            since_ms: crate::clock::Clock::local_ms(),
            reason: reason.to_owned(),
        };
        if quota::read_only(path) == Some(true) {
            return refusing("the file system holding the outbox is mounted read-only");
        }
        if !quota::has_reserve(path) && quota::free_space(path).is_some_and(|f| f < MIN_FREE) {
            return refusing("the disk holding the outbox is full");
        }
        h
    }

    /// When the index was last rebuilt from the log, if within the last hour (Unix ms).
    pub fn rebuilt_recently(&self) -> Option<i64> {
        let t = self.shared().rebuilt_ms.load(Ordering::Relaxed);
        let age = crate::clock::Clock::local_ms() - t;
        (t > 0 && age < i64::try_from(REBUILT_REPORTED_FOR.as_millis()).unwrap_or(i64::MAX))
            .then_some(t)
    }

    /// What the last open (or reopen by the writer) of the store found.
    pub fn open_report(&self) -> OpenReport {
        self.shared()
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Wait until something may be pending (a submit, a dead-letter retry, a space change).
    pub async fn changed(&self) {
        self.shared().notify.notified().await;
    }

    /// Wake the uploader (e.g. on shutdown or a space change).
    pub fn wake(&self) {
        self.shared().notify.notify_one();
    }

    /// The typed settings kept in the index (see [`settings`]).
    pub fn settings(&self) -> settings::Settings<'_> {
        settings::Settings::new(self.shared())
    }
}

#[cfg(test)]
mod tests;
