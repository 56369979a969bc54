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
//! ## One writer, and the overlay
//!
//! Only the outbox's writer (see `writer`) changes chunks: it reads a chunk, changes it and
//! writes it back, so two changes of one chunk never race. Readers read whole chunk values.
//!
//! The writer does not hand each change to sled: a sled batch makes sled write its log
//! buffer to its file (`pin_log` rolls the buffer), so one batch per event cost a second
//! file's data and inode in every journal commit (measured: 2 write I/Os and ~10 KB per
//! event on ext4). Changed chunks go to the [`Overlay`] instead, in memory, which readers
//! look at before sled; the writer moves the overlay into sled in one batch when it flushes
//! the index (see `writer`), or earlier, unsynced, once it holds [`SPILL_CHUNKS`] chunks.
//! Nothing in the overlay is lost to a crash that the log cannot give back: the log is
//! replayed from `m/wal`, which only moves with a flush.

use std::collections::BTreeMap;
use std::sync::RwLock;

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
/// The overlay is moved into sled (without an fsync) once it holds this many chunks (8,192
/// ids, at most ~170 KB): a backlog stored at full speed does not grow it without bound.
/// (4 in unit tests, so they cross it.)
pub(super) const SPILL_CHUNKS: usize = if cfg!(test) { 4 } else { 256 };

/// The chunk an id is in.
pub(super) fn chunk_of(id: u64) -> u64 {
    id >> BITS
}

/// The sled key of a chunk.
pub(super) fn chunk_key(chunk: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = PREFIX;
    k[1..].copy_from_slice(&chunk.to_be_bytes());
    k
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

    pub(super) fn into_entries(self) -> Vec<(u64, Location)> {
        self.entries
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
fn load(db: &sled::Db, chunk: u64) -> Result<Chunk, OutboxError> {
    match db.get(chunk_key(chunk))? {
        None => Ok(Chunk::default()),
        Some(v) => Chunk::decode(chunk, &v).ok_or_else(|| damaged(chunk)),
    }
}

/// Chunks the writer changed since it last wrote them to sled (an empty chunk: all its
/// records left). See the module docs.
#[derive(Default)]
pub(super) struct Overlay {
    chunks: RwLock<BTreeMap<u64, Chunk>>,
}

impl Overlay {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Chunk>> {
        self.chunks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Chunk>> {
        self.chunks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The overlay's version of `chunk`, if it has one.
    pub(super) fn get(&self, chunk: u64) -> Option<Chunk> {
        self.read().get(&chunk).cloned()
    }

    /// The first chunk at or after `from` the overlay has.
    pub(super) fn first_from(&self, from: u64) -> Option<(u64, Chunk)> {
        self.read()
            .range(from..)
            .next()
            .map(|(c, ch)| (*c, ch.clone()))
    }

    /// Chunks held.
    pub(super) fn len(&self) -> usize {
        self.read().len()
    }

    /// The batch operations that store every chunk held.
    pub(super) fn write_to(&self, batch: &mut sled::Batch) {
        for (c, chunk) in self.read().iter() {
            chunk.write_to(*c, batch);
        }
    }

    /// Forget everything held (it is in sled now, or sled is being rebuilt from the log).
    pub(super) fn clear(&self) {
        self.write().clear();
    }
}

/// Where chunks are read from: the overlay first (the writer's and the readers' view), then
/// sled; or sled alone (a replay, which writes its result to sled in one batch).
#[derive(Clone, Copy)]
pub(super) struct Src<'a> {
    db: &'a sled::Db,
    overlay: Option<&'a Overlay>,
}

impl<'a> Src<'a> {
    pub(super) fn new(db: &'a sled::Db, overlay: &'a Overlay) -> Src<'a> {
        Src {
            db,
            overlay: Some(overlay),
        }
    }

    pub(super) fn sled(db: &'a sled::Db) -> Src<'a> {
        Src { db, overlay: None }
    }

    /// The current value of `chunk` (empty if absent; see [`load`] for a damaged one).
    pub(super) fn load(self, chunk: u64) -> Result<Chunk, OutboxError> {
        match self.overlay.and_then(|o| o.get(chunk)) {
            Some(c) => Ok(c),
            None => load(self.db, chunk),
        }
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

/// Chunks being changed by one operation of the writer or one replay: each read once,
/// written together into one batch.
#[derive(Default)]
pub(super) struct Edit {
    chunks: BTreeMap<u64, Chunk>,
    /// A damaged chunk is taken as empty (replay: the log says what belongs in it) rather
    /// than an error (the writer: its records stay where they are, unread).
    lenient: bool,
}

impl Edit {
    /// An edit that takes damaged chunks as empty, with an ERROR.
    pub(super) fn lenient() -> Edit {
        Edit {
            chunks: BTreeMap::new(),
            lenient: true,
        }
    }

    fn chunk(&mut self, src: Src<'_>, id: u64) -> Result<&mut Chunk, OutboxError> {
        let c = chunk_of(id);
        if let std::collections::btree_map::Entry::Vacant(v) = self.chunks.entry(c) {
            let loaded = match src.load(c) {
                Err(e) if self.lenient => {
                    tracing::error!(error = %e, "outbox: a damaged index chunk is replaced from the log");
                    Chunk::default()
                }
                other => other?,
            };
            v.insert(loaded);
        }
        self.chunks
            .get_mut(&c)
            .ok_or_else(|| OutboxError::Store("index chunk vanished".into()))
    }

    /// Point `id` at `loc`.
    pub(super) fn set(&mut self, src: Src<'_>, id: u64, loc: Location) -> Result<(), OutboxError> {
        self.chunk(src, id)?.set(id, loc);
        Ok(())
    }

    /// Take `id` out; where it pointed, if it was pending.
    pub(super) fn remove(
        &mut self,
        src: Src<'_>,
        id: u64,
    ) -> Result<Option<Location>, OutboxError> {
        Ok(self.chunk(src, id)?.remove(id))
    }

    /// The batch operations that store the changed chunks.
    pub(super) fn write(self, batch: &mut sled::Batch) {
        for (c, chunk) in &self.chunks {
            chunk.write_to(*c, batch);
        }
    }

    /// Put the changed chunks into the overlay (replacing its versions).
    pub(super) fn commit(self, overlay: &Overlay) {
        if !self.chunks.is_empty() {
            overlay.write().extend(self.chunks);
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
}
