//! Reads: the oldest pending records, through the index into the log. Readers never change
//! anything; a record that cannot be read is handed to the writer for the dead letters.

use super::index::{self, chunk_of, Chunk, Overlay, Src};
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

/// Every pending record's pointer, oldest first: sled's chunks with the overlay's versions
/// in their place (see [`super::index`]). A damaged chunk is skipped with an ERROR: its
/// records stay in the log and are found again by a rebuild.
struct Pointers<'a> {
    sled: sled::Iter,
    sled_done: bool,
    /// sled's next chunk (number, and its value unless damaged), not yet passed on.
    next_sled: Option<(u64, Option<Chunk>)>,
    overlay: &'a Overlay,
    /// Chunks below this are done.
    cursor: u64,
    out: std::vec::IntoIter<(u64, Location)>,
}

fn pointers<'a>(shared: &'a Shared, db: &sled::Db) -> Pointers<'a> {
    Pointers {
        sled: db.scan_prefix([index::PREFIX]),
        sled_done: false,
        next_sled: None,
        overlay: &shared.overlay,
        cursor: 0,
        out: Vec::new().into_iter(),
    }
}

impl Pointers<'_> {
    /// sled's next chunk at or after the cursor, kept in `next_sled`.
    fn fill_sled(&mut self) -> Result<(), OutboxError> {
        while !self.sled_done
            && self
                .next_sled
                .as_ref()
                .is_none_or(|(c, _)| *c < self.cursor)
        {
            self.next_sled = None;
            match self.sled.next() {
                None => self.sled_done = true,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok((k, v))) => {
                    let Some(c) = k
                        .get(1..9)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes)
                    else {
                        continue;
                    };
                    self.next_sled = Some((c, Chunk::decode(c, &v)));
                }
            }
        }
        Ok(())
    }
}

impl Iterator for Pointers<'_> {
    type Item = Result<(u64, Location), OutboxError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(p) = self.out.next() {
                return Some(Ok(p));
            }
            if let Err(e) = self.fill_sled() {
                self.sled_done = true;
                return Some(Err(e));
            }
            let from_sled = self.next_sled.as_ref().map(|(c, _)| *c);
            let (c, chunk) = match (self.overlay.first_from(self.cursor), from_sled) {
                (None, None) => return None,
                (Some((oc, chunk)), s) if s.is_none_or(|s| oc <= s) => (oc, Some(chunk)),
                _ => {
                    let (c, chunk) = self.next_sled.take()?;
                    if chunk.is_none() {
                        tracing::error!(error = %index::damaged(c), "outbox: skipped a damaged index chunk; its records are not uploaded until the index is rebuilt");
                    }
                    (c, chunk)
                }
            };
            // Chunk numbers are ids >> 5: this never overflows.
            self.cursor = c + 1;
            if let Some(chunk) = chunk {
                self.out = chunk.into_entries().into_iter();
            }
        }
    }
}

/// Is `id` still pending at `loc`? (If not, it was delivered or moved while we read.)
fn still_at(shared: &Shared, db: &sled::Db, id: u64, loc: Location) -> bool {
    Src::new(db, &shared.overlay)
        .load(chunk_of(id))
        .is_ok_and(|c| c.get(id) == Some(loc))
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
        for p in pointers(shared, &db) {
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
                Err(_) if !still_at(shared, &db, id, loc) => {}
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
    let (id, loc) = pointers(shared, &db).next()?.ok()?;
    load(shared, id, loc).ok().map(|r| r.meta.submitted_ms)
}
