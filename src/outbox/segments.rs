//! The segment log: numbered append-only files in `<outbox path>/segments/`, the outbox's
//! source of truth (see the [`super`] module docs for what is written when). This file knows
//! the byte format, scanning with resynchronisation, the head being written and readers.
//!
//! ## Entry format (version 2)
//!
//! ```text
//! magic:       4 bytes  "LkL2" (0x4C 0x6B 0x4C 0x32)
//! kind:        u8       1 record, 2 record moved by the quota, 3 acks, 4 abort, 5 dead letters
//! id:          u64 BE   the record's id (records); 0 for marks
//! accepted_ms: i64 BE   when the source key was accepted (records); when written (marks)
//! key_hash:    u64 BE   the source key's 64-bit hash (records, see `dedupe`); 0 for marks
//! body_len:    u32 BE
//! body_crc:    u32 BE   CRC-32 of the body
//! header_crc:  u32 BE   CRC-32 of the 37 bytes above
//! body:        records: the encoded record (`encode_record`); acks and dead letters: ids
//!              (u64 BE each); abort: first and last id of the failed group (u64 BE each)
//! ```
//!
//! The header has its own checksum, so a damaged body is known by its id and length and
//! skipped as a unit, and a damaged header is skipped by searching for the next magic whose
//! header checks out (resynchronisation). Entries of version 1 (before the log held marks:
//! `0xA5`, `body_len: u32 BE`, `crc32: u32 BE` of the body, then `kind: u8` (0 new, 1 moved),
//! `id`, `accepted_ms`, `key_len: u32 BE`, the source key and the record) are still read; a
//! segment is of one version throughout, told by its first byte.
//!
//! A segment file is `{number:016x}.log`. Numbers only grow.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::dedupe;

/// The directory under the outbox path.
pub(super) const DIR: &str = "segments";
const MAGIC: [u8; 4] = *b"LkL2";
/// Bytes of a version 2 header.
pub(super) const HEADER: usize = 41;
const V1_MAGIC: u8 = 0xA5;
const V1_HEADER: usize = 9;
const V1_BODY_FIXED: usize = 1 + 8 + 8 + 4;
/// How much is read at a time while searching for the next entry.
const SEARCH_WINDOW: usize = 64 << 10;

/// What an entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A record accepted from a source.
    Record,
    /// A pending record copied here by the quota (its image maybe dropped) so its old
    /// segment can go.
    Moved,
    /// These records were delivered (a hint: written without an fsync of its own).
    Acks,
    /// The group of these ids failed and its submitters were told so: none of it is stored.
    Abort,
    /// These records went to the dead letters (a hint: the dead-letter file is the truth).
    Dead,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Record => 1,
            Kind::Moved => 2,
            Kind::Acks => 3,
            Kind::Abort => 4,
            Kind::Dead => 5,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::Record,
            2 => Kind::Moved,
            3 => Kind::Acks,
            4 => Kind::Abort,
            5 => Kind::Dead,
            _ => return None,
        })
    }

    /// Does the entry hold a record?
    pub(super) fn is_record(self) -> bool {
        matches!(self, Kind::Record | Kind::Moved)
    }
}

/// An entry's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub kind: Kind,
    pub id: u64,
    pub accepted_ms: i64,
    pub key_hash: u64,
    pub body_len: u32,
    body_crc: u32,
}

/// Where an entry is: segment number, offset of its first byte, whole length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub seg: u64,
    pub off: u64,
    pub len: u32,
}

/// Encode an entry.
pub(super) fn encode(kind: Kind, id: u64, accepted_ms: i64, key_hash: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + body.len());
    v.extend_from_slice(&MAGIC);
    v.push(kind.code());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&accepted_ms.to_be_bytes());
    v.extend_from_slice(&key_hash.to_be_bytes());
    v.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    v.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
    let hcrc = crc32fast::hash(&v);
    v.extend_from_slice(&hcrc.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Encode a list of ids (the body of acks and dead-letter marks).
pub(super) fn encode_ids(ids: &[u64]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.to_be_bytes()).collect()
}

/// The ids of a mark's body.
pub(super) fn decode_ids(body: &[u8]) -> Vec<u64> {
    body.chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_be_bytes))
        .collect()
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// Parse a version 2 header; `None` unless magic and checksum are right.
fn parse_header(h: &[u8]) -> Option<Header> {
    if h.len() < HEADER || h[..4] != MAGIC {
        return None;
    }
    if crc32fast::hash(&h[..HEADER - 4]) != be_u32(&h[HEADER - 4..HEADER])? {
        return None;
    }
    Some(Header {
        kind: Kind::from_code(h[4])?,
        id: be_u64(&h[5..13])?,
        accepted_ms: i64::from_be_bytes(h[13..21].try_into().ok()?),
        key_hash: be_u64(&h[21..29])?,
        body_len: be_u32(&h[29..33])?,
        body_crc: be_u32(&h[33..37])?,
    })
}

/// Parse a whole version 1 entry (header and body); `None` unless its checksum is right.
fn parse_v1(bytes: &[u8]) -> Option<(Header, Vec<u8>, usize)> {
    if bytes.first() != Some(&V1_MAGIC) {
        return None;
    }
    let len = usize::try_from(be_u32(bytes.get(1..5)?)?).ok()?;
    let crc = be_u32(bytes.get(5..9)?)?;
    let body = bytes.get(V1_HEADER..V1_HEADER.checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let kind = match *body.first()? {
        0 => Kind::Record,
        1 => Kind::Moved,
        _ => return None,
    };
    let id = be_u64(body.get(1..9)?)?;
    let accepted_ms = i64::from_be_bytes(body.get(9..17)?.try_into().ok()?);
    let key_len = usize::try_from(be_u32(body.get(17..21)?)?).ok()?;
    let key_end = V1_BODY_FIXED.checked_add(key_len)?;
    let key = body.get(V1_BODY_FIXED..key_end)?;
    let record = body.get(key_end..)?.to_vec();
    let header = Header {
        kind,
        id,
        accepted_ms,
        key_hash: if key.is_empty() {
            0
        } else {
            dedupe::key_hash(key)
        },
        body_len: u32::try_from(record.len()).ok()?,
        body_crc: 0,
    };
    Some((header, record, V1_HEADER + len))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The file of segment `seg`.
pub(super) fn path_of(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:016x}.log"))
}

/// Every segment in `dir` with its length, oldest first. Other files are left alone.
pub(super) fn list(dir: &Path) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if let Ok(seg) = u64::from_str_radix(stem, 16) {
            out.push((seg, e.metadata()?.len()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// fsync a directory, so a file created, renamed or deleted in it stays so after a power cut.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One thing a scan found.
#[derive(Debug)]
pub(super) enum Item {
    /// An intact entry (its body if the scan read bodies, or if it is a mark).
    Entry {
        loc: Location,
        header: Header,
        body: Option<Vec<u8>>,
    },
    /// Bytes that are no intact entry, up to the next one (or the end of the file). `id` is
    /// the id of the record whose header survived at `off`, if one did.
    Damaged { off: u64, len: u64, id: Option<u64> },
}

/// What a scan reads of record bodies (marks are always read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bodies {
    /// Read and check every body.
    Check,
    /// Check headers only: a damaged record body is found when the record is read.
    Skip,
}

/// An intact entry found by a scan: header, body (if read), whole length.
type Found = (Header, Option<Vec<u8>>, u64);

/// Bytes read ahead at once while scanning entries that are small (a plain record is a few
/// hundred bytes: one read serves hundreds of headers instead of one `pread` each).
const READ_AHEAD: usize = 64 << 10;
/// An entry longer than this is followed by a read of just the next header (an image
/// record's body is skipped, not read, when bodies are not checked).
const LONG_ENTRY: u64 = 4 << 10;

/// A segment file being scanned.
struct Scan<'a> {
    f: &'a File,
    len: u64,
    v1: bool,
    bodies: Bodies,
    /// Bytes read ahead: (file offset of the first, the bytes).
    ahead: std::cell::RefCell<(u64, Vec<u8>)>,
    /// Read ahead at most this much at the next miss (small after a long entry).
    ahead_len: std::cell::Cell<usize>,
}

impl Scan<'_> {
    /// `n` bytes at `off`: from the read-ahead buffer if it holds them, else read (with
    /// read-ahead, within the file).
    fn read(&self, off: u64, n: usize) -> io::Result<Vec<u8>> {
        {
            let ahead = self.ahead.borrow();
            let start = off
                .checked_sub(ahead.0)
                .and_then(|s| usize::try_from(s).ok());
            if let Some(bytes) = start.and_then(|s| ahead.1.get(s..s.checked_add(n)?)) {
                return Ok(bytes.to_vec());
            }
        }
        let want = n.max(self.ahead_len.get());
        let left = usize::try_from(self.len.saturating_sub(off)).unwrap_or(usize::MAX);
        let take = want.min(left).max(n);
        let mut b = vec![0u8; take];
        self.f.read_exact_at(&mut b, off)?;
        let out = b[..n].to_vec();
        if take > n {
            *self.ahead.borrow_mut() = (off, b);
        }
        Ok(out)
    }

    /// An entry of `whole` bytes was found: read ahead less after a long one.
    fn passed(&self, whole: u64) {
        self.ahead_len.set(if whole > LONG_ENTRY {
            HEADER
        } else {
            READ_AHEAD
        });
    }

    /// The intact entry at `off`, if there is one: its header, its body if read, its length.
    fn entry_at(&self, off: u64) -> io::Result<Option<Found>> {
        let left = self.len - off;
        if self.v1 {
            if left < V1_HEADER as u64 {
                return Ok(None);
            }
            let h = self.read(off, V1_HEADER)?;
            let Some(len) = be_u32(&h[1..5]).and_then(|l| usize::try_from(l).ok()) else {
                return Ok(None);
            };
            if h[0] != V1_MAGIC || (V1_HEADER + len) as u64 > left {
                return Ok(None);
            }
            let bytes = self.read(off, V1_HEADER + len)?;
            return Ok(parse_v1(&bytes).map(|(h, body, n)| (h, Some(body), n as u64)));
        }
        if left < HEADER as u64 {
            return Ok(None);
        }
        let Some(h) = parse_header(&self.read(off, HEADER)?) else {
            return Ok(None);
        };
        let whole = HEADER as u64 + u64::from(h.body_len);
        if whole > left {
            return Ok(None);
        }
        if h.kind.is_record() && self.bodies == Bodies::Skip {
            return Ok(Some((h, None, whole)));
        }
        let body = self.read(off + HEADER as u64, h.body_len as usize)?;
        if crc32fast::hash(&body) != h.body_crc {
            return Ok(None);
        }
        Ok(Some((h, Some(body), whole)))
    }

    /// The header at `off` if it is intact (whatever its body): names a damaged record.
    fn header_at(&self, off: u64) -> Option<Header> {
        if self.v1 || self.len - off < HEADER as u64 {
            return None;
        }
        parse_header(&self.read(off, HEADER).ok()?)
    }

    /// The offset of the next intact entry after `from`, or the end of the file.
    fn next_entry(&self, from: u64) -> io::Result<u64> {
        let mut at = from;
        while at < self.len {
            let n = usize::try_from((self.len - at).min(SEARCH_WINDOW as u64)).unwrap_or(0);
            let window = self.read(at, n)?;
            for i in 0..window.len() {
                let hit = if self.v1 {
                    window[i] == V1_MAGIC
                } else {
                    window[i..].starts_with(&MAGIC[..(window.len() - i).min(4)])
                };
                if hit && self.entry_at(at + i as u64)?.is_some() {
                    return Ok(at + i as u64);
                }
            }
            // A magic cut by the window's end is looked at again from the next window.
            at += (n.saturating_sub(3)).max(1) as u64;
        }
        Ok(self.len)
    }
}

/// Scan segment `seg` from `from` to its end, calling `visit` for each entry and each
/// damaged range in order. Returns the file's length.
pub(super) fn scan(
    dir: &Path,
    seg: u64,
    from: u64,
    bodies: Bodies,
    mut visit: impl FnMut(Item),
) -> io::Result<u64> {
    let f = File::open(path_of(dir, seg))?;
    let len = f.metadata()?.len();
    let mut first = [0u8; 1];
    let v1 = len > 0 && f.read_exact_at(&mut first, 0).is_ok() && first[0] == V1_MAGIC;
    let s = Scan {
        f: &f,
        len,
        v1,
        bodies,
        ahead: std::cell::RefCell::new((0, Vec::new())),
        ahead_len: std::cell::Cell::new(READ_AHEAD),
    };
    let mut at = from.min(len);
    while at < len {
        if let Some((header, body, whole)) = s.entry_at(at)? {
            s.passed(whole);
            visit(Item::Entry {
                loc: Location {
                    seg,
                    off: at,
                    len: u32::try_from(whole).map_err(|_| invalid("entry too long"))?,
                },
                header,
                body,
            });
            at += whole;
            continue;
        }
        let id = s.header_at(at).filter(|h| h.kind.is_record()).map(|h| h.id);
        let next = s.next_entry(at + 1)?;
        visit(Item::Damaged {
            off: at,
            len: next - at,
            id,
        });
        at = next;
    }
    Ok(len)
}

/// Copy a damaged byte range of a segment to `<aside>/<segment>-<offset>.bin`.
pub(super) fn copy_aside(
    dir: &Path,
    seg: u64,
    off: u64,
    len: u64,
    aside: &Path,
) -> io::Result<PathBuf> {
    std::fs::create_dir_all(aside)?;
    let f = File::open(path_of(dir, seg))?;
    let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| invalid("range too long"))?];
    f.read_exact_at(&mut bytes, off)?;
    let to = aside.join(format!("{seg:016x}-{off:016x}.bin"));
    let mut out = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&to)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    sync_dir(aside)?;
    Ok(to)
}

/// The segment being written, owned by the writer alone.
pub(super) struct Head {
    pub seg: u64,
    /// Where it is (test fault injection finds its plan by it).
    #[cfg_attr(not(test), allow(dead_code))]
    dir: PathBuf,
    file: File,
    /// Bytes in the file that belong to the log (all written entries).
    pub len: u64,
}

impl Head {
    /// Create segment `seg` (it must not exist) and make its name durable.
    pub(super) fn create(dir: &Path, seg: u64) -> io::Result<Head> {
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(path_of(dir, seg))?;
        sync_dir(dir)?;
        Ok(Head {
            seg,
            dir: dir.to_path_buf(),
            file,
            len: 0,
        })
    }

    /// Where entries of these lengths will go, in order.
    pub(super) fn place(&self, lens: impl IntoIterator<Item = usize>) -> Vec<Location> {
        let mut off = self.len;
        lens.into_iter()
            .map(|n| {
                let loc = Location {
                    seg: self.seg,
                    off,
                    len: u32::try_from(n).unwrap_or(u32::MAX),
                };
                off += n as u64;
                loc
            })
            .collect()
    }

    /// Write `bytes` at the end, and `fdatasync` if `sync`. On an error the file is cut back
    /// to where it ended, so a failed write leaves nothing behind; if even that fails, the
    /// error says so (`Cut::Failed`) and the caller must write an abort mark.
    pub(super) fn append(&mut self, bytes: &[u8], sync: bool) -> Result<(), (io::Error, Cut)> {
        #[cfg(test)]
        if let Some(cut_fails) = faults::take(&self.dir) {
            // The bytes reach the file, then the disk is "full".
            let _ = self.file.write_all_at(bytes, self.len);
            let full = io::Error::from_raw_os_error(28);
            if cut_fails {
                return Err((full, Cut::Failed(io::Error::from_raw_os_error(5))));
            }
            let _ = self.file.set_len(self.len);
            return Err((full, Cut::Done));
        }
        let r = self.file.write_all_at(bytes, self.len).and_then(|()| {
            if sync {
                let started = std::time::Instant::now();
                let r = self.file.sync_data();
                crate::telemetry::outbox_fsync(started.elapsed());
                r
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let cut = match self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data())
                {
                    Ok(()) => Cut::Done,
                    Err(c) => Cut::Failed(c),
                };
                Err((e, cut))
            }
        }
    }

    /// `fdatasync` what was written without one.
    pub(super) fn sync(&self) -> io::Result<()> {
        let started = std::time::Instant::now();
        let r = self.file.sync_data();
        crate::telemetry::outbox_fsync(started.elapsed());
        r
    }

    /// Cut anything past the log's end (a failed write that could not be cut then) before
    /// the head is left for a new one. Best effort: replay skips such bytes anyway.
    pub(super) fn seal(&self) {
        if self.file.metadata().is_ok_and(|m| m.len() > self.len) {
            let _ = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
        }
    }
}

/// Test-only fault injection: make the next appends under a segment directory fail.
#[cfg(test)]
pub(super) mod faults {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// (segment directory, appends left to fail, whether cutting them off fails too).
    static PLAN: Mutex<Vec<(PathBuf, u32, bool)>> = Mutex::new(Vec::new());

    /// Fail the next `n` appends under `dir` with ENOSPC; `cut_fails`: the cut fails too.
    pub(in crate::outbox) fn fail_appends(dir: &Path, n: u32, cut_fails: bool) {
        PLAN.lock().unwrap().push((dir.to_path_buf(), n, cut_fails));
    }

    pub(super) fn take(dir: &Path) -> Option<bool> {
        let mut plan = PLAN.lock().unwrap();
        let i = plan.iter().position(|(d, n, _)| d == dir && *n > 0)?;
        plan[i].1 -= 1;
        Some(plan[i].2)
    }
}

/// Whether a failed append was cut off again.
#[derive(Debug)]
pub(super) enum Cut {
    Done,
    Failed(io::Error),
}

/// Open segment files for reading, by number. Reading a deleted segment's open file still
/// works (the inode lives until closed), so a reader racing a deletion sees old bytes, and
/// the caller re-checks the index.
#[derive(Default)]
pub(super) struct Readers {
    files: Mutex<HashMap<u64, Arc<File>>>,
}

/// A record entry read back.
#[derive(Debug)]
pub(super) struct Read {
    pub header: Header,
    pub body: Vec<u8>,
}

impl Readers {
    fn file(&self, dir: &Path, seg: u64) -> io::Result<Arc<File>> {
        let mut files = self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = files.get(&seg) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(path_of(dir, seg))?);
        files.insert(seg, f.clone());
        Ok(f)
    }

    /// Read and check the entry at `loc` (either version).
    pub(super) fn read(&self, dir: &Path, loc: Location) -> io::Result<Read> {
        let f = self.file(dir, loc.seg)?;
        let mut bytes = vec![0u8; loc.len as usize];
        f.read_exact_at(&mut bytes, loc.off)?;
        if bytes.first() == Some(&V1_MAGIC) {
            let (header, body, n) =
                parse_v1(&bytes).ok_or_else(|| invalid("entry checksum mismatch"))?;
            if n != bytes.len() {
                return Err(invalid("entry length differs from the index"));
            }
            return Ok(Read { header, body });
        }
        let header =
            parse_header(&bytes).ok_or_else(|| invalid("no intact entry header at this offset"))?;
        if HEADER + header.body_len as usize != bytes.len() {
            return Err(invalid("entry length differs from the index"));
        }
        let body = bytes.split_off(HEADER);
        if crc32fast::hash(&body) != header.body_crc {
            return Err(invalid("entry checksum mismatch (damaged on disk)"));
        }
        Ok(Read { header, body })
    }

    /// Forget a segment's open file (it is being deleted).
    pub(super) fn forget(&self, seg: u64) {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&seg);
    }

    /// Forget every open file (the store is being reopened).
    pub(super) fn clear(&self) {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path, seg: u64, bodies: Bodies) -> Vec<Item> {
        let mut out = Vec::new();
        scan(dir, seg, 0, bodies, |i| out.push(i)).unwrap();
        out
    }

    fn write_seg(dir: &Path, seg: u64, bytes: &[u8]) {
        std::fs::write(path_of(dir, seg), bytes).unwrap();
    }

    #[test]
    fn an_entry_reads_back_as_written_with_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let e = encode(Kind::Record, 7, 1234, 99, b"record bytes");
        assert_eq!(e.len(), HEADER + 12);
        write_seg(dir.path(), 1, &e);
        let r = Readers::default();
        let got = r
            .read(
                dir.path(),
                Location {
                    seg: 1,
                    off: 0,
                    len: u32::try_from(e.len()).unwrap(),
                },
            )
            .unwrap();
        assert_eq!(
            (got.header.id, got.header.accepted_ms, got.header.key_hash),
            (7, 1234, 99)
        );
        assert_eq!(got.body, b"record bytes");
    }

    #[test]
    fn a_flipped_byte_in_a_middle_entry_is_skipped_and_the_entries_after_it_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = Vec::new();
        for id in 1..=5u64 {
            all.extend(encode(
                Kind::Record,
                id,
                0,
                id,
                &[u8::try_from(id).unwrap(); 100],
            ));
        }
        // Entry 3's body starts at 2 * 141 + 41.
        all[2 * 141 + 41 + 10] ^= 0xFF;
        write_seg(dir.path(), 1, &all);
        let items = entries(dir.path(), 1, Bodies::Check);
        let ids: Vec<u64> = items
            .iter()
            .filter_map(|i| match i {
                Item::Entry { header, .. } => Some(header.id),
                Item::Damaged { .. } => None,
            })
            .collect();
        assert_eq!(ids, vec![1, 2, 4, 5]);
        assert!(items.iter().any(|i| matches!(
            i,
            Item::Damaged {
                off: 282,
                len: 141,
                id: Some(3)
            }
        )));
        // Checking headers only, the damaged body is not noticed here (the reader catches it).
        assert_eq!(entries(dir.path(), 1, Bodies::Skip).len(), 5);
    }

    #[test]
    fn a_damaged_header_is_skipped_by_searching_for_the_next_intact_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = Vec::new();
        for id in 1..=3u64 {
            all.extend(encode(Kind::Record, id, 0, 0, &[0x4C; 300]));
        }
        all[341 + 6] ^= 0x01; // entry 2's id
        write_seg(dir.path(), 1, &all);
        let items = entries(dir.path(), 1, Bodies::Check);
        assert_eq!(items.len(), 3);
        assert!(matches!(
            items[1],
            Item::Damaged {
                off: 341,
                len: 341,
                id: None
            }
        ));
        assert!(matches!(
            items[2],
            Item::Entry {
                header: Header { id: 3, .. },
                ..
            }
        ));
    }

    #[test]
    fn a_torn_tail_is_a_damaged_range_to_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = encode(Kind::Record, 1, 0, 0, b"one");
        let two = encode(Kind::Record, 2, 0, 0, b"two two");
        all.extend_from_slice(&two[..two.len() - 3]);
        write_seg(dir.path(), 1, &all);
        let items = entries(dir.path(), 1, Bodies::Check);
        assert_eq!(items.len(), 2);
        assert!(matches!(
            items[1],
            Item::Damaged {
                off: 44,
                id: Some(2),
                ..
            }
        ));
    }

    #[test]
    fn version_1_entries_are_still_read() {
        // 0xA5, body_len, crc, then kind 0, id 9, accepted 5, key "k", record "rec".
        let mut body = vec![0u8];
        body.extend_from_slice(&9u64.to_be_bytes());
        body.extend_from_slice(&5i64.to_be_bytes());
        body.extend_from_slice(&1u32.to_be_bytes());
        body.extend_from_slice(b"k");
        body.extend_from_slice(b"rec");
        let mut e = vec![V1_MAGIC];
        e.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        e.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        e.extend_from_slice(&body);
        let dir = tempfile::tempdir().unwrap();
        write_seg(dir.path(), 1, &e);
        let items = entries(dir.path(), 1, Bodies::Check);
        let Item::Entry { header, body, loc } = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(
            (header.id, header.accepted_ms, header.key_hash),
            (9, 5, dedupe::key_hash(b"k"))
        );
        assert_eq!(body.as_deref(), Some(&b"rec"[..]));
        let r = Readers::default().read(dir.path(), *loc).unwrap();
        assert_eq!(r.body, b"rec");
    }

    #[test]
    fn short_and_long_entries_mixed_are_all_found_reading_ahead_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = Vec::new();
        let mut want = Vec::new();
        for id in 1..=400u64 {
            // Mostly plain records (read ahead), every 7th an image-sized one (not).
            let n = if id % 7 == 0 {
                30_000
            } else {
                200 + (id as usize % 50)
            };
            let e = encode(
                Kind::Record,
                id,
                0,
                id,
                &vec![u8::try_from(id % 256).unwrap(); n],
            );
            want.push((id, all.len() as u64, e.len()));
            all.extend(e);
        }
        write_seg(dir.path(), 1, &all);
        for bodies in [Bodies::Skip, Bodies::Check] {
            let got: Vec<(u64, u64, usize)> = entries(dir.path(), 1, bodies)
                .into_iter()
                .map(|i| match i {
                    Item::Entry { header, loc, body } => {
                        if bodies == Bodies::Check {
                            let b = body.unwrap();
                            assert!(b.iter().all(|x| u64::from(*x) == header.id % 256));
                        }
                        (header.id, loc.off, loc.len as usize)
                    }
                    Item::Damaged { .. } => panic!("{i:?}"),
                })
                .collect();
            assert_eq!(got, want, "{bodies:?}");
        }
    }

    #[test]
    fn a_failed_append_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Head::create(dir.path(), 1).unwrap();
        h.append(b"abc", true).unwrap();
        assert_eq!(h.len, 3);
        assert_eq!(std::fs::read(path_of(dir.path(), 1)).unwrap(), b"abc");
    }
}
