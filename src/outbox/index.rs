//! The pointer index: where in the log each pending record is.
//!
//! ## Chunks, not one entry per record
//!
//! sled holds the index as chunks: one value per 32 consecutive ids. sled 0.34 keeps
//! bookkeeping in memory for every node of its tree, whether cached or not, and a node holds
//! few entries: one 21-byte pointer per record made 100,000 pending records cost ~4 MB of
//! RSS just to open, against ~0.8 MB as chunks (measured 2026-11-29 with a bare sled and the
//! same cache; `benches/pipeline.rs` P5 measures the gateway). Records arrive one at a time
//! at a barrier, so grouping by arrival (per group of submits) would not help there: chunks
//! by id do, however the records came.
//!
//! ## Format
//!
//! `q` + chunk number (`id >> 5`, u64 BE) → `3`, then for each pending id of the chunk, in id
//! order, 21 bytes: slot (`id & 31`): u8, segment: u64 BE, offset: u64 BE, length: u32 BE.
//! A chunk with no pending id is deleted.
//!
//! ## Chunks being written: the overlay
//!
//! A group of submits is staged while the group before it is still being written (see the
//! [`super`] docs), so a chunk may have changes sled must not see yet: their log entries are
//! not fsynced. Such chunks live in the writer's [`Overlay`]: the chunk's newest value, and
//! how many staged groups changed it and are not applied yet. Staging reads and changes the
//! overlay. A group being applied writes, for each chunk it changed, the overlay's value
//! *without the ids of later groups*: ids only grow, and only a group with no other group in
//! flight may move older records (the quota), so those are exactly the entries whose log
//! bytes are fsynced. An ack or dead letter read-modify-writes sled's value directly, so it
//! first waits until none of its chunks is held in the overlay (one fsync and apply, a few
//! ms); it then never races a group writing the same chunk.

use std::collections::{BTreeMap, BTreeSet};

use super::segments::Location;
use super::OutboxError;

/// The sled key prefix of the chunks.
pub(super) const PREFIX: u8 = b'q';
/// log2 of the ids per chunk.
const BITS: u32 = 5;
/// First byte of a chunk value.
const VERSION: u8 = 3;
/// Bytes per pointer in a chunk value.
const ENTRY: usize = 21;

/// The chunk an id is in.
pub(super) fn chunk_of(id: u64) -> u64 {
    id >> BITS
}

/// The sled key of a chunk.
pub(super) fn chunk_key(chunk: u64) -> [u8; 9] {
    super::key(PREFIX, chunk)
}

/// The pointers of one chunk, in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Chunk {
    entries: Vec<(u64, Location)>,
}

impl Chunk {
    /// Decode chunk `chunk`'s value; `None` if it is not one (damaged).
    pub(super) fn decode(chunk: u64, v: &[u8]) -> Option<Chunk> {
        let (&version, rest) = v.split_first()?;
        if version != VERSION || rest.len() % ENTRY != 0 {
            return None;
        }
        let base = chunk.checked_mul(1 << BITS)?;
        let mut entries: Vec<(u64, Location)> = Vec::with_capacity(rest.len() / ENTRY);
        for e in rest.chunks_exact(ENTRY) {
            if u64::from(e[0]) >= 1 << BITS {
                return None;
            }
            let id = base + u64::from(e[0]);
            if entries.last().is_some_and(|(last, _)| *last >= id) {
                return None;
            }
            let loc = Location {
                seg: u64::from_be_bytes(e[1..9].try_into().ok()?),
                off: u64::from_be_bytes(e[9..17].try_into().ok()?),
                len: u32::from_be_bytes(e[17..21].try_into().ok()?),
            };
            entries.push((id, loc));
        }
        Some(Chunk { entries })
    }

    /// The value stored in sled.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + self.entries.len() * ENTRY);
        v.push(VERSION);
        for (id, loc) in &self.entries {
            // The low bits of the id: below 32, so the cast keeps them all.
            #[allow(clippy::cast_possible_truncation)]
            v.push((id & ((1 << BITS) - 1)) as u8);
            v.extend_from_slice(&loc.seg.to_be_bytes());
            v.extend_from_slice(&loc.off.to_be_bytes());
            v.extend_from_slice(&loc.len.to_be_bytes());
        }
        v
    }

    pub(super) fn get(&self, id: u64) -> Option<Location> {
        let i = self.entries.binary_search_by_key(&id, |e| e.0).ok()?;
        Some(self.entries[i].1)
    }

    /// Point `id` at `loc` (added, or moved).
    pub(super) fn set(&mut self, id: u64, loc: Location) {
        match self.entries.binary_search_by_key(&id, |e| e.0) {
            Ok(i) => self.entries[i].1 = loc,
            Err(i) => self.entries.insert(i, (id, loc)),
        }
    }

    pub(super) fn remove(&mut self, id: u64) -> Option<Location> {
        let i = self.entries.binary_search_by_key(&id, |e| e.0).ok()?;
        Some(self.entries.remove(i).1)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn entries(&self) -> &[(u64, Location)] {
        &self.entries
    }

    /// The batch operation that stores this chunk as it is.
    pub(super) fn write_to(&self, chunk: u64, batch: &mut sled::Batch) {
        if self.is_empty() {
            batch.remove(&chunk_key(chunk));
        } else {
            batch.insert(&chunk_key(chunk), self.encode());
        }
    }
}

/// sled's value of `chunk` (empty if absent). A damaged value is an error naming it: its
/// records stay where they are, unread, rather than being dropped by a rewrite.
pub(super) fn load(db: &sled::Db, chunk: u64) -> Result<Chunk, OutboxError> {
    match db.get(chunk_key(chunk))? {
        None => Ok(Chunk::default()),
        Some(v) => Chunk::decode(chunk, &v).ok_or_else(|| damaged(chunk)),
    }
}

/// The error for a chunk value that does not decode.
pub(super) fn damaged(chunk: u64) -> OutboxError {
    OutboxError::Store(format!(
        "outbox index chunk {chunk} (records {} to {}) is damaged",
        chunk << BITS,
        (chunk << BITS) + (1 << BITS) - 1
    ))
}

/// A chunk changed by staged groups that are not applied yet.
#[derive(Debug)]
struct Held {
    chunk: Chunk,
    /// Staged groups that changed it and are not applied (or failed) yet. 0 while the
    /// group that is being staged changes it for the first time.
    groups: u32,
}

/// Chunks changed by groups staged but not yet applied (see the module docs), or, while
/// opening, by the replay.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    held: BTreeMap<u64, Held>,
}

impl Overlay {
    /// Where `id` is: the overlay's value of its chunk, else sled's.
    pub(super) fn get(&self, db: &sled::Db, id: u64) -> Result<Option<Location>, OutboxError> {
        let c = chunk_of(id);
        match self.held.get(&c) {
            Some(h) => Ok(h.chunk.get(id)),
            None => Ok(load(db, c)?.get(id)),
        }
    }

    /// Read `id`'s chunk from sled into the overlay unless it is there already (so that
    /// [`Overlay::set`] of that id cannot fail after this); the overlay's chunk.
    pub(super) fn ensure(&mut self, db: &sled::Db, id: u64) -> Result<&mut Chunk, OutboxError> {
        let c = chunk_of(id);
        let held = match self.held.entry(c) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => v.insert(Held {
                chunk: load(db, c)?,
                groups: 0,
            }),
        };
        Ok(&mut held.chunk)
    }

    /// Point `id` at `loc` in the overlay (its chunk read from sled first if it is not held);
    /// the chunk joins `touched`.
    pub(super) fn set(
        &mut self,
        db: &sled::Db,
        id: u64,
        loc: Location,
        touched: &mut BTreeSet<u64>,
    ) -> Result<(), OutboxError> {
        self.ensure(db, id)?.set(id, loc);
        touched.insert(chunk_of(id));
        Ok(())
    }

    /// A group that changed `chunks` was staged: they are held until it is applied or fails.
    pub(super) fn hold(&mut self, chunks: &BTreeSet<u64>) {
        for c in chunks {
            if let Some(h) = self.held.get_mut(c) {
                h.groups += 1;
            }
        }
    }

    /// What a group that changed `chunks` and allocated ids below `end` writes when it is
    /// applied: each chunk without the ids of later groups.
    pub(super) fn values(&self, chunks: &BTreeSet<u64>, end: u64) -> Vec<(u64, Chunk)> {
        chunks
            .iter()
            .filter_map(|c| {
                let h = self.held.get(c)?;
                let mut chunk = h.chunk.clone();
                chunk.entries.retain(|(id, _)| *id < end);
                Some((*c, chunk))
            })
            .collect()
    }

    /// A group that changed `chunks` was applied or failed: release its hold. Chunks no group
    /// holds any more leave the overlay (sled has their value).
    pub(super) fn release(&mut self, chunks: &BTreeSet<u64>) {
        for c in chunks {
            if let Some(h) = self.held.get_mut(c) {
                h.groups = h.groups.saturating_sub(1);
                if h.groups == 0 {
                    self.held.remove(c);
                }
            }
        }
    }

    /// A group that changed `chunks` and allocated ids below `end` failed (sled does not
    /// have it): each chunk becomes sled's value again, plus the records of later groups.
    pub(super) fn revert(
        &mut self,
        db: &sled::Db,
        chunks: &BTreeSet<u64>,
        end: u64,
    ) -> Result<(), OutboxError> {
        for c in chunks {
            let Some(h) = self.held.get_mut(c) else {
                continue;
            };
            let mut chunk = load(db, *c)?;
            for (id, loc) in &h.chunk.entries {
                if *id >= end {
                    chunk.set(*id, *loc);
                }
            }
            h.chunk = chunk;
        }
        Ok(())
    }

    /// Is any of these chunks held by a staged group?
    pub(super) fn holds_any(&self, mut chunks: impl Iterator<Item = u64>) -> bool {
        !self.held.is_empty() && chunks.any(|c| self.held.get(&c).is_some_and(|h| h.groups > 0))
    }

    /// Forget chunks no staged group holds: changes left by a staging that panicked half-way
    /// (sled's value is the truth for them). Called before a group is staged.
    pub(super) fn drop_unheld(&mut self) {
        self.held.retain(|_, h| h.groups > 0);
    }

    /// Every chunk in the overlay into `batch` (the replay's end), emptying it.
    pub(super) fn drain_into(&mut self, batch: &mut sled::Batch) {
        for (c, h) in std::mem::take(&mut self.held) {
            h.chunk.write_to(c, batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(seg: u64, off: u64) -> Location {
        Location { seg, off, len: 77 }
    }

    #[test]
    fn a_chunk_value_round_trips_and_keeps_id_order() {
        let mut c = Chunk::default();
        for id in [70u64, 64, 95, 66] {
            c.set(id, loc(id, id * 10));
        }
        let v = c.encode();
        // version, then 4 entries of 21 bytes: slot 0 (id 64) first.
        assert_eq!(v.len(), 1 + 4 * 21);
        assert_eq!(v[0], 3);
        assert_eq!(&v[1..10], &[0, 0, 0, 0, 0, 0, 0, 0, 64]);
        let back = Chunk::decode(2, &v).unwrap();
        assert_eq!(back, c);
        let ids: Vec<u64> = back.entries().iter().map(|e| e.0).collect();
        assert_eq!(ids, [64, 66, 70, 95]);
        assert_eq!(back.get(70), Some(loc(70, 700)));
    }

    #[test]
    fn a_damaged_chunk_value_is_refused_not_misread() {
        let mut c = Chunk::default();
        c.set(33, loc(1, 2));
        c.set(34, loc(1, 3));
        let good = c.encode();
        let mut unsorted = good.clone();
        unsorted[1] = 9; // slot 9 before slot 2
        let mut bad_slot = good.clone();
        bad_slot[1] = 40;
        let mut bad_version = good.clone();
        bad_version[0] = 2;
        for v in [
            &b""[..],
            &good[..good.len() - 1],
            &unsorted,
            &bad_slot,
            &bad_version,
        ] {
            assert_eq!(Chunk::decode(1, v), None, "{v:?}");
        }
        assert!(Chunk::decode(u64::MAX, &good).is_none(), "no id overflow");
    }

    #[test]
    fn applying_a_group_writes_its_chunks_without_later_groups_ids() {
        let d = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(d.path()).open().unwrap();
        let mut o = Overlay::default();
        // Group 1 stores ids 30, 31, 32 (chunks 0 and 1); group 2 stores 33 (chunk 1).
        let mut g1 = BTreeSet::new();
        for id in [30, 31, 32] {
            o.set(&db, id, loc(1, id), &mut g1).unwrap();
        }
        o.hold(&g1);
        let mut g2 = BTreeSet::new();
        o.set(&db, 33, loc(2, 33), &mut g2).unwrap();
        o.hold(&g2);
        let v = o.values(&g1, 33);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[1].1.entries().iter().map(|e| e.0).collect::<Vec<_>>(),
            [32]
        );
        let mut b = sled::Batch::default();
        for (c, chunk) in &v {
            chunk.write_to(*c, &mut b);
        }
        db.apply_batch(b).unwrap();
        o.release(&g1);
        assert!(!o.holds_any([0].into_iter()), "chunk 0 is free");
        assert!(o.holds_any([1].into_iter()), "chunk 1 is held by group 2");
        assert_eq!(load(&db, 1).unwrap().entries().len(), 1, "sled has 32 only");
        // Group 2 fails: chunk 1 is sled's value again, with group 1's record 32.
        o.revert(&db, &g2, 34).unwrap();
        assert_eq!(o.get(&db, 33).unwrap(), None);
        assert_eq!(o.get(&db, 32).unwrap(), Some(loc(1, 32)));
        o.release(&g2);
        assert!(!o.holds_any([0, 1].into_iter()));
    }
}
