//! Reads: the oldest pending records, through the index into the log. Readers never change
//! anything; a record that cannot be read is handed to the writer for the dead letters.

use super::index::{self, chunk_of, Chunk};
use super::segments::Location;
use super::writer::Command;
use super::{decode_record, Outbox, OutboxError, Shared, StoredRecord};

/// Read pending record `id` at `loc`; a record stored without an image gets the placeholder.
fn load(shared: &Shared, id: u64, loc: Location) -> Result<StoredRecord, OutboxError> {
    let r = shared
        .readers
        .read(&shared.seg_dir, loc)
        .map_err(|e| OutboxError::Corrupt {
            id,
            message: format!("log segment {} at {}: {e}", loc.seg, loc.off),
        })?;
    if r.header.id != id {
        return Err(OutboxError::Corrupt {
            id,
            message: format!(
                "log segment {} at {} holds record {}",
                loc.seg, loc.off, r.header.id
            ),
        });
    }
    let mut rec = decode_record(id, &r.body)?;
    if rec.image.is_empty() {
        rec.image = crate::imaging::placeholder_jpeg().to_vec();
    }
    Ok(rec)
}

/// Every pending record's pointer, oldest first (a damaged chunk is skipped with an ERROR:
/// its records stay in the log and are found again by a rebuild).
fn pointers(db: &sled::Db) -> impl Iterator<Item = Result<(u64, Location), OutboxError>> {
    db.scan_prefix([index::PREFIX]).flat_map(|item| {
        let out: Vec<Result<(u64, Location), OutboxError>> = match item {
            Err(e) => vec![Err(e.into())],
            Ok((k, v)) => {
                let c = k
                    .get(1..9)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes);
                match c.and_then(|c| Chunk::decode(c, &v).map(|ch| (c, ch))) {
                    Some((_, chunk)) => chunk.entries().iter().copied().map(Ok).collect(),
                    None => {
                        tracing::error!(error = %index::damaged(c.unwrap_or(0)), "outbox: skipped a damaged index chunk; its records are not uploaded until the index is rebuilt");
                        Vec::new()
                    }
                }
            }
        };
        out
    })
}

/// Is `id` still pending at `loc`? (If not, it was delivered or moved while we read.)
fn still_at(db: &sled::Db, id: u64, loc: Location) -> bool {
    index::load(db, chunk_of(id)).is_ok_and(|c| c.get(id) == Some(loc))
}

impl Outbox {
    /// The oldest pending records: at most `max_records`, and (but always at least one)
    /// at most `max_bytes` of estimated request size. A record that cannot be read is
    /// moved to the dead letters with the reason, never returned and never lost.
    pub fn peek(
        &self,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Vec<StoredRecord>, OutboxError> {
        let shared = self.shared();
        let db = shared.db()?;
        let mut out = Vec::new();
        let mut size = 0u64;
        for p in pointers(&db) {
            if out.len() >= max_records {
                break;
            }
            let (id, loc) = p?;
            match load(shared, id, loc) {
                Ok(r) => {
                    let s = r.wire_size();
                    if !out.is_empty() && size + s > max_bytes {
                        break;
                    }
                    size += s;
                    out.push(r);
                }
                Err(_) if !still_at(&db, id, loc) => {}
                Err(e) => {
                    tracing::error!(id, error = %e, "outbox: a pending record cannot be read; moving it to the dead letters");
                    self.try_send(Command::Dead(id, e.to_string(), None));
                }
            }
        }
        Ok(out)
    }
}

/// When the oldest pending record was accepted (Unix ms).
pub(super) fn oldest_submitted_ms(shared: &Shared) -> Option<i64> {
    let db = shared.db().ok()?;
    let (id, loc) = pointers(&db).next()?.ok()?;
    load(shared, id, loc).ok().map(|r| r.meta.submitted_ms)
}
