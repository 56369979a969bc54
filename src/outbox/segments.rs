//! The outbox's segment log: numbered append-only files in `<outbox path>/segments/`
//! holding every record the outbox accepted, written and fsynced before a submit returns.
//! The design (why a log beside sled, replay, deletion) is in the [`super`] module docs;
//! this file only knows the byte format and the files.
//!
//! ## Entry format
//!
//! ```text
//! 0xA5                magic
//! body_len: u32 BE
//! crc32:    u32 BE    of the body
//! body:
//!   kind:        u8      0 = a new record, 1 = a record moved here by the quota
//!   id:          u64 BE
//!   accepted_ms: i64 BE  when the source key was accepted (dedupe)
//!   key_len:     u32 BE, the source key (UTF-8, may be empty)
//!   record:      the encoded record ([`super::encode_record`]) to the end of the body
//! ```
//!
//! A segment file is `{number:016x}.log`. Numbers only grow.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The directory under the outbox path.
pub(super) const DIR: &str = "segments";
const MAGIC: u8 = 0xA5;
/// Magic, length and CRC.
const HEADER: usize = 9;
/// Body bytes before the source key.
const BODY_FIXED: usize = 1 + 8 + 8 + 4;

/// Why an entry was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A record accepted from a source.
    New,
    /// A pending record copied here (its image maybe replaced) so its old segment can go.
    Moved,
}

/// One entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub kind: Kind,
    pub id: u64,
    pub accepted_ms: i64,
    pub source_key: Vec<u8>,
    /// An encoded record.
    pub record: Vec<u8>,
}

/// Where an entry is: segment number, offset of its magic byte, whole length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub seg: u64,
    pub off: u64,
    pub len: u32,
}

/// Encode an entry (header and body).
pub(super) fn encode(kind: Kind, id: u64, accepted_ms: i64, key: &[u8], record: &[u8]) -> Vec<u8> {
    let body_len = BODY_FIXED + key.len() + record.len();
    let mut v = Vec::with_capacity(HEADER + body_len);
    v.push(MAGIC);
    v.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    v.push(match kind {
        Kind::New => 0,
        Kind::Moved => 1,
    });
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&accepted_ms.to_be_bytes());
    v.extend_from_slice(&u32::try_from(key.len()).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(if u32::try_from(key.len()).is_ok() {
        key
    } else {
        b""
    });
    v.extend_from_slice(record);
    let crc = crc32fast::hash(&v[HEADER..]);
    v[5..9].copy_from_slice(&crc.to_be_bytes());
    v
}

/// The body length a header announces, if the header is well formed.
fn body_len(header: &[u8; HEADER]) -> Option<(usize, u32)> {
    if header[0] != MAGIC {
        return None;
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let crc = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    Some((usize::try_from(len).ok()?, crc))
}

/// Decode a body whose CRC was checked.
fn decode_body(b: &[u8]) -> Option<Entry> {
    let kind = match *b.first()? {
        0 => Kind::New,
        1 => Kind::Moved,
        _ => return None,
    };
    let id = u64::from_be_bytes(b.get(1..9)?.try_into().ok()?);
    let accepted_ms = i64::from_be_bytes(b.get(9..17)?.try_into().ok()?);
    let key_len = usize::try_from(u32::from_be_bytes(b.get(17..21)?.try_into().ok()?)).ok()?;
    let key_end = BODY_FIXED.checked_add(key_len)?;
    Some(Entry {
        kind,
        id,
        accepted_ms,
        source_key: b.get(BODY_FIXED..key_end)?.to_vec(),
        record: b.get(key_end..)?.to_vec(),
    })
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

/// Read every whole, intact entry of a segment from `from` on. Returns the entries with their
/// locations and the offset where the intact part ends (the file length if all is well).
pub(super) fn scan(dir: &Path, seg: u64, from: u64) -> io::Result<(Vec<(Location, Entry)>, u64)> {
    let mut bytes = Vec::new();
    let mut f = File::open(path_of(dir, seg))?;
    std::io::Seek::seek(&mut f, io::SeekFrom::Start(from))?;
    f.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let Some((len, crc)) = body_len(header.try_into().map_err(|_| invalid("header"))?) else {
            break;
        };
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(entry) = decode_body(body) else {
            break;
        };
        let whole = HEADER + len;
        out.push((
            Location {
                seg,
                off: from + at as u64,
                len: u32::try_from(whole).map_err(|_| invalid("entry too long"))?,
            },
            entry,
        ));
        at += whole;
    }
    Ok((out, from + at as u64))
}

/// fsync a directory, so a file created or renamed in it survives a power cut.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segment being written. Appends are buffered until they are written: by
/// [`Head::sync`] at once, or handed over with [`Head::take`] as part of a [`LogWrite`] that
/// another thread performs while the next group is staged.
pub(super) struct Head {
    pub seg: u64,
    file: Arc<File>,
    /// Bytes in the file plus the buffer.
    pub len: u64,
    buf: Vec<u8>,
}

impl Head {
    /// Create segment `seg` (it must not exist) and make its name durable.
    pub(super) fn create(dir: &Path, seg: u64) -> io::Result<Head> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path_of(dir, seg))?;
        sync_dir(dir)?;
        Ok(Head {
            seg,
            file: Arc::new(file),
            len: 0,
            buf: Vec::new(),
        })
    }

    /// Queue an entry; it is durable once written and fsynced.
    pub(super) fn append(&mut self, entry: &[u8]) -> Location {
        let loc = Location {
            seg: self.seg,
            off: self.len,
            len: u32::try_from(entry.len()).unwrap_or(u32::MAX),
        };
        self.buf.extend_from_slice(entry);
        self.len += entry.len() as u64;
        loc
    }

    /// Hand the queued appends over to be written elsewhere (see [`LogWrite`]).
    pub(super) fn take(&mut self, w: &mut LogWrite) {
        if !self.buf.is_empty() {
            w.parts
                .push((self.file.clone(), std::mem::take(&mut self.buf)));
        }
    }

    /// Write the queued appends and fsync them, here and now.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        let mut w = LogWrite::default();
        self.take(&mut w);
        w.run()
    }
}

/// Appends to write and fsync, in order: a group's bytes, perhaps in two segments if the
/// group started a new one. Runs on a thread of its own while the writer stages the next
/// group; never two at once, so the file sees the groups in order.
#[derive(Default)]
pub(super) struct LogWrite {
    parts: Vec<(Arc<File>, Vec<u8>)>,
}

impl LogWrite {
    /// `write` every part, then `fdatasync` every file written.
    pub(super) fn run(self) -> io::Result<()> {
        for (file, buf) in &self.parts {
            file.as_ref().write_all(buf)?;
        }
        for (file, _) in &self.parts {
            file.sync_data()?;
        }
        Ok(())
    }
}

/// Open segment files for reading, by number. Reading a deleted segment's open file still
/// works (the inode lives until closed), so a reader racing a deletion sees old bytes, and
/// the caller re-checks the index.
#[derive(Default)]
pub(super) struct Readers {
    files: Mutex<HashMap<u64, Arc<File>>>,
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

    /// Read and check the entry at `loc`.
    pub(super) fn read(&self, dir: &Path, loc: Location) -> io::Result<Entry> {
        let f = self.file(dir, loc.seg)?;
        let len = usize::try_from(loc.len).map_err(|_| invalid("entry too long"))?;
        if len < HEADER {
            return Err(invalid("entry shorter than its header"));
        }
        let mut bytes = vec![0u8; len];
        f.read_exact_at(&mut bytes, loc.off)?;
        let header: &[u8; HEADER] = bytes[..HEADER].try_into().map_err(|_| invalid("header"))?;
        let (body_len, crc) = body_len(header).ok_or_else(|| invalid("no entry at this offset"))?;
        let body = &bytes[HEADER..];
        if body.len() != body_len {
            return Err(invalid("entry length differs from the index"));
        }
        if crc32fast::hash(body) != crc {
            return Err(invalid("entry checksum mismatch"));
        }
        decode_body(body).ok_or_else(|| invalid("entry body is malformed"))
    }

    /// Forget a segment's open file (it is being deleted).
    pub(super) fn forget(&self, seg: u64) {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&seg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_as_written_and_a_torn_tail_ends_the_scan() {
        let d = tempfile::tempdir().unwrap();
        let mut head = Head::create(d.path(), 7).unwrap();
        let a = encode(Kind::New, 1, 10, b"cam|1", b"record one");
        let b = encode(Kind::Moved, 2, 20, b"", b"record two");
        let la = head.append(&a);
        let lb = head.append(&b);
        head.sync().unwrap();
        let readers = Readers::default();
        let got = readers.read(d.path(), lb).unwrap();
        assert_eq!(
            got,
            Entry {
                kind: Kind::Moved,
                id: 2,
                accepted_ms: 20,
                source_key: vec![],
                record: b"record two".to_vec(),
            }
        );
        assert_eq!(readers.read(d.path(), la).unwrap().source_key, b"cam|1");
        // Half an entry at the end, as a crash mid-write leaves it.
        let c = encode(Kind::New, 3, 30, b"k", b"record three");
        head.append(&c[..c.len() / 2]);
        head.sync().unwrap();
        let (entries, good_end) = scan(d.path(), 7, 0).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(good_end, (a.len() + b.len()) as u64);
        // A scan from the middle starts at that entry.
        let (from_b, _) = scan(d.path(), 7, lb.off).unwrap();
        assert_eq!(from_b.len(), 1);
        assert_eq!(from_b[0].1.id, 2);
        assert_eq!(list(d.path()).unwrap()[0].0, 7);
    }

    #[test]
    fn a_flipped_bit_is_caught_by_the_checksum() {
        let d = tempfile::tempdir().unwrap();
        let mut head = Head::create(d.path(), 1).unwrap();
        let mut e = encode(Kind::New, 1, 10, b"k", b"some record bytes");
        let last = e.len() - 1;
        e[last] ^= 0x10;
        let loc = head.append(&e);
        head.sync().unwrap();
        let err = Readers::default().read(d.path(), loc).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(scan(d.path(), 1, 0).unwrap().0.is_empty());
    }
}
