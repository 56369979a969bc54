//! Dedupe at ingest: which source keys were accepted within the window (10 minutes).
//!
//! A source key is remembered as a 64-bit hash (the first 8 bytes of its MD5: stable across
//! versions and platforms, and 100,000 keys in one window collide with odds of about
//! 3 in 10^10) in a time bucket of a tenth of the window. In memory: a set per bucket, so a
//! lookup is a few hash probes and forgetting a bucket is dropping a set. Not in sled: every
//! record's log entry carries its key's hash and acceptance time, segments are kept for the
//! window unless the quota or a full disk takes them earlier, and those keep their keys in
//! `keys/` first (below; see the [`super`] invariants), so opening rebuilds the window from
//! the log and `keys/` ([`super::replay`]). Versions before this one kept sled entries (`e` + bucket (u64 BE) +
//! the group's first id (u64 BE) → the group's hashes, u64 LE each): read once when such a
//! store is opened.
//!
//! A key is a duplicate if its bucket lies within the window of now, either side (the
//! clock may step back): so it is remembered for the window and at most one bucket more.
//!
//! ## Keys of segments deleted within the window
//!
//! The quota deletes segments long before the window is over (a 1 MiB `max_disk` holds a
//! few seconds of events with images), and so does a (nearly) full file system; the
//! delivered records of such a segment take their keys with them. Their keys are kept on
//! disk first: appended (fsynced before the segment file is deleted) to `keys/<bucket>.keys`,
//! the bucket's hashes, 8 bytes each (u64 LE), one file per bucket of acceptance time.
//! Opening reads them into the window after the log ([`super::replay`]; they are not
//! compared with the log's records, whose own keys may be among them), cuts a torn tail off
//! to whole hashes, and deletes the files of buckets past the window; the writer deletes
//! those once a minute. They count towards `max_disk` and the quota never deletes them: 8
//! bytes per event of the last 10 minutes (120 KiB at 25 events a second), against the
//! hundreds of bytes each deleted entry frees. Without them, a broker's re-delivery after a
//! power cut of a message whose PUBACK was lost (its record stored, delivered, and its
//! segment compacted meanwhile) was stored a second time.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

/// The sled key prefix of the entries.
pub(super) const PREFIX: u8 = b'e';

/// The hash a source key is remembered by.
pub(super) fn key_hash(source_key: &[u8]) -> u64 {
    let d = Md5::digest(source_key);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// The values are hashes already: use them as they are.
#[derive(Default)]
pub(super) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type HashSet64 = HashSet<u64, BuildHasherDefault<Identity>>;

/// The keys accepted within the window, in buckets.
pub(super) struct Seen {
    window_ms: i64,
    bucket_ms: i64,
    buckets: BTreeMap<i64, HashSet64>,
}

impl Seen {
    pub(super) fn new(window_ms: i64) -> Seen {
        Seen {
            window_ms,
            bucket_ms: (window_ms / 10).max(1),
            buckets: BTreeMap::new(),
        }
    }

    pub(super) fn bucket(&self, at_ms: i64) -> i64 {
        at_ms.div_euclid(self.bucket_ms)
    }

    /// Was `hash` accepted within the window of `now_ms`?
    pub(super) fn contains(&self, hash: u64, now_ms: i64) -> bool {
        let lo = self.bucket(now_ms.saturating_sub(self.window_ms));
        let hi = self.bucket(now_ms.saturating_add(self.window_ms));
        self.buckets
            .range(lo..=hi)
            .any(|(_, set)| set.contains(&hash))
    }

    pub(super) fn insert(&mut self, hash: u64, at_ms: i64) {
        self.insert_in_bucket(hash, self.bucket(at_ms));
    }

    pub(super) fn insert_in_bucket(&mut self, hash: u64, bucket: i64) {
        self.buckets.entry(bucket).or_default().insert(hash);
    }

    /// Take every key of `other` in (same window).
    pub(super) fn absorb(&mut self, other: Seen) {
        for (b, set) in other.buckets {
            self.buckets.entry(b).or_default().extend(set);
        }
    }

    /// Forget a key (its group failed).
    pub(super) fn remove(&mut self, hash: u64, at_ms: i64) {
        let b = self.bucket(at_ms);
        if let Some(set) = self.buckets.get_mut(&b) {
            set.remove(&hash);
            if set.is_empty() {
                self.buckets.remove(&b);
            }
        }
    }

    /// The first bucket still needed at `now_ms`: everything before it can go.
    pub(super) fn horizon(&self, now_ms: i64) -> i64 {
        self.bucket(now_ms.saturating_sub(self.window_ms))
    }

    /// Forget the buckets before the horizon; returns the horizon.
    pub(super) fn prune(&mut self, now_ms: i64) -> i64 {
        let h = self.horizon(now_ms);
        self.buckets = self.buckets.split_off(&h);
        h
    }

    /// How many keys are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.buckets.values().map(HashSet::len).sum()
    }
}

/// The directory (under the outbox path) of the keys of deleted segments.
pub(super) const KEYS_DIR: &str = "keys";

fn keys_file(dir: &Path, bucket: i64) -> PathBuf {
    dir.join(format!("{bucket}.keys"))
}

/// The keys files in `dir`: (bucket, path, length). A missing directory has none.
fn keys_files(dir: &Path) -> io::Result<Vec<(i64, PathBuf, u64)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name();
        let Some(b) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".keys"))
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        out.push((b, e.path(), e.metadata()?.len()));
    }
    Ok(out)
}

/// Keep `keys` (hash, acceptance time) on disk before the segment holding them is deleted:
/// appended to their buckets' files and fsynced. The bytes added. A failed append is cut
/// off again, so a file always holds whole hashes (a power cut's torn tail is cut on open).
pub(super) fn keep(dir: &Path, seen: &Seen, keys: &[(u64, i64)]) -> io::Result<u64> {
    let mut by_bucket: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
    for &(h, at) in keys {
        if h != 0 {
            by_bucket
                .entry(seen.bucket(at))
                .or_default()
                .extend_from_slice(&h.to_le_bytes());
        }
    }
    if by_bucket.is_empty() {
        return Ok(0);
    }
    if !dir.exists() {
        super::replay::private_dir(dir)?;
        if let Some(parent) = dir.parent() {
            super::segments::sync_dir(parent)?;
        }
    }
    let mut created = false;
    let mut added = 0u64;
    for (b, bytes) in by_bucket {
        let p = keys_file(dir, b);
        created |= !p.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&p)?;
        let before = f.metadata()?.len();
        let before = before - before % 8;
        if let Err(e) = f.write_all(&bytes).and_then(|()| f.sync_data()) {
            let _ = f.set_len(before).and_then(|()| f.sync_data());
            return Err(e);
        }
        added += bytes.len() as u64;
    }
    if created {
        super::segments::sync_dir(dir)?;
    }
    Ok(added)
}

/// Read the kept keys of the window into `seen`; delete the files of buckets before its
/// horizon at `now_ms` and cut torn tails. The bytes of the files kept.
pub(super) fn load(dir: &Path, seen: &mut Seen, now_ms: i64) -> io::Result<u64> {
    let horizon = seen.horizon(now_ms);
    let mut bytes = 0;
    for (b, path, len) in keys_files(dir)? {
        if b < horizon {
            std::fs::remove_file(&path)?;
            continue;
        }
        let data = std::fs::read(&path)?;
        let whole = len - len % 8;
        if whole != len {
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            f.set_len(whole)?;
            f.sync_all()?;
        }
        for h in decode(&data) {
            if h != 0 {
                seen.insert_in_bucket(h, b);
            }
        }
        bytes += whole;
    }
    Ok(bytes)
}

/// Delete the files of buckets before `horizon`. The bytes of the files left.
pub(super) fn prune_files(dir: &Path, horizon: i64) -> io::Result<u64> {
    let mut bytes = 0;
    let mut removed = false;
    for (b, path, len) in keys_files(dir)? {
        if b < horizon {
            std::fs::remove_file(&path)?;
            removed = true;
        } else {
            bytes += len;
        }
    }
    if removed {
        super::segments::sync_dir(dir)?;
    }
    Ok(bytes)
}

/// The bucket of an entry's sled key.
pub(super) fn entry_bucket(k: &[u8]) -> Option<i64> {
    let b: [u8; 8] = k.get(1..9)?.try_into().ok()?;
    i64::try_from(u64::from_be_bytes(b)).ok()
}

/// A group's hashes back (a torn tail is ignored).
pub(super) fn decode(v: &[u8]) -> impl Iterator<Item = u64> + '_ {
    v.chunks_exact(8).map(|c| {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        u64::from_le_bytes(b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn a_key_is_remembered_for_the_window_and_at_most_one_bucket_more() {
        let mut s = Seen::new(10 * MIN);
        let h = key_hash(b"cam1/2026-11-29 08:00:00/A12345");
        let t0 = 1_000 * MIN + 30_000;
        s.insert(h, t0);
        assert!(s.contains(h, t0));
        assert!(s.contains(h, t0 + 10 * MIN - 1), "within the window");
        assert!(s.contains(h, t0 - 5 * MIN), "the clock stepped back");
        assert!(
            !s.contains(h, t0 + 11 * MIN),
            "past the window and a bucket"
        );
        assert!(!s.contains(key_hash(b"another"), t0));
    }

    #[test]
    fn pruning_forgets_whole_buckets_past_the_window_only() {
        let mut s = Seen::new(10 * MIN);
        let t0 = 1_000 * MIN;
        s.insert(1, t0);
        s.insert(2, t0 + 5 * MIN);
        s.prune(t0 + 10 * MIN + 1);
        assert!(
            s.contains(1, t0 + 10 * MIN + 1),
            "its bucket is not past yet"
        );
        s.prune(t0 + 11 * MIN);
        assert!(!s.contains(1, t0 + 11 * MIN));
        assert!(s.contains(2, t0 + 11 * MIN));
        assert_eq!(s.len(), 1);
        s.remove(2, t0 + 5 * MIN);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn entries_of_the_version_before_are_read_back() {
        // `e`, bucket 123 (u64 BE), first id 9 (u64 BE) → hashes, u64 LE each.
        let mut k = vec![PREFIX];
        k.extend_from_slice(&123u64.to_be_bytes());
        k.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(entry_bucket(&k), Some(123));
        let hashes = [1, u64::MAX, key_hash(b"x")];
        let v: Vec<u8> = hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
        assert_eq!(decode(&v).collect::<Vec<_>>(), hashes);
    }

    #[test]
    fn the_hash_of_a_key_never_changes() {
        // Stored in the log: a new version must read an old store's entries the same way.
        assert_eq!(key_hash(b""), 0x04b2_008f_d98c_1dd4);
    }
}
