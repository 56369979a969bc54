//! Dead letters: records the platform explicitly rejected (or that could not be read back),
//! kept with the reason until an operator retries or drops them. One file each,
//! `dead/{id:016x}.dead`: `reason_len: u32 BE`, the reason (UTF-8), then the record as
//! stored (empty if it could not be read). Written to a temporary name, fsynced and renamed,
//! so a dead letter is whole or absent. A file, not sled: dead letters survive a rebuild of
//! the index, and are rare.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::segments::sync_dir;
use super::{decode_record, DeadRecord, OutboxError, RecordMeta, StoredRecord};

/// The directory under the outbox path.
pub(super) const DIR: &str = "dead";

fn path_of(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.dead"))
}

fn io(what: &str, e: &std::io::Error) -> OutboxError {
    OutboxError::Store(format!("dead letters: {what}: {e}"))
}

/// The file's bytes for a dead letter.
fn encode(reason: &str, record: &[u8]) -> Vec<u8> {
    let reason = if u32::try_from(reason.len()).is_ok() {
        reason.as_bytes()
    } else {
        b""
    };
    let mut v = Vec::with_capacity(4 + reason.len() + record.len());
    v.extend_from_slice(&u32::try_from(reason.len()).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(reason);
    v.extend_from_slice(record);
    v
}

/// A dead letter's bytes (this format, also that of versions before dead-letter files)
/// split into the reason and the record.
pub(super) fn split(v: &[u8]) -> (String, &[u8]) {
    let len = v
        .get(0..4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, |b| u32::from_be_bytes(b) as usize);
    let end = 4usize.saturating_add(len).min(v.len());
    let reason = String::from_utf8_lossy(v.get(4..end).unwrap_or(&[])).into_owned();
    (reason, v.get(end..).unwrap_or(&[]))
}

/// Create (or truncate) a file only its owner can read.
pub(super) fn private_file(p: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(p)
}

/// Write dead letter `id` durably; returns its size in bytes.
pub(super) fn write(dir: &Path, id: u64, reason: &str, record: &[u8]) -> Result<u64, OutboxError> {
    std::fs::create_dir_all(dir).map_err(|e| io("creating the directory", &e))?;
    let bytes = encode(reason, record);
    let tmp = dir.join(format!("{id:016x}.tmp"));
    let r = (|| {
        let mut f = private_file(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path_of(dir, id))?;
        sync_dir(dir)
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("writing", &e));
    }
    Ok(bytes.len() as u64)
}

/// The record bytes and reason of dead letter `id`.
pub(super) fn read(dir: &Path, id: u64) -> Result<(String, Vec<u8>), OutboxError> {
    match std::fs::read(path_of(dir, id)) {
        Ok(v) => {
            let (reason, rest) = split(&v);
            Ok((reason, rest.to_vec()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(OutboxError::NoSuchDead(id)),
        Err(e) => Err(io("reading", &e)),
    }
}

/// Delete dead letter `id`; returns the bytes freed.
pub(super) fn remove(dir: &Path, id: u64) -> Result<u64, OutboxError> {
    let p = path_of(dir, id);
    let len = match std::fs::metadata(&p) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OutboxError::NoSuchDead(id))
        }
        Err(e) => return Err(io("reading", &e)),
    };
    std::fs::remove_file(&p).map_err(|e| io("deleting", &e))?;
    sync_dir(dir).map_err(|e| io("deleting", &e))?;
    Ok(len)
}

/// The ids of every dead letter with its file size, in id order. Left-over temporary files
/// (a crash while writing one) are deleted.
pub(super) fn scan(dir: &Path) -> Result<Vec<(u64, u64)>, OutboxError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("listing", &e)),
    };
    for e in rd {
        let e = e.map_err(|e| io("listing", &e))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if std::path::Path::new(name)
            .extension()
            .is_some_and(|x| x == "tmp")
        {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let Some(id) = name
            .strip_suffix(".dead")
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        else {
            continue;
        };
        let len = e.metadata().map_err(|e| io("listing", &e))?.len();
        out.push((id, len));
    }
    out.sort_unstable();
    Ok(out)
}

/// Every dead letter, oldest first. One whose record cannot be decoded is listed with an
/// empty record and a remark saying so.
pub(super) fn list(dir: &Path) -> Result<Vec<DeadRecord>, OutboxError> {
    let mut out = Vec::new();
    for (id, _) in scan(dir)? {
        let (reason, rest) = match read(dir, id) {
            Ok(r) => r,
            Err(OutboxError::NoSuchDead(_)) => continue,
            Err(e) => return Err(e),
        };
        let record = decode_record(id, &rest).unwrap_or_else(|_| StoredRecord {
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
