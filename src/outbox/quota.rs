//! Disk space: the `max_disk` quota (what counts, which segment goes first) and the reserve
//! file that lets the gateway start and drain on a full disk.
//!
//! ## The quota
//!
//! What counts is the segment files and the dead-letter files (sled's files come on top: a
//! pointer per pending record, ~25 bytes). When a group of submits would take the total over
//! `max_disk`, the writer compacts the oldest segment (its pending records are copied to
//! the head without their images, see [`strip_image`]) until the group fits, oldest first;
//! what still does not fit is refused ([`super::OutboxError::Full`]).
//!
//! ## The reserve
//!
//! `reserve` is a file of [`reserve_size`] bytes of real blocks (written, not sparse). When
//! the file system's free space falls below the reserve's size (a backlog, or something else
//! on the card, filled it), the reserve is deleted, so sled can open, write its index and
//! the uploader can drain; it is written again once twice its size is free.

use std::io::Write;
use std::path::Path;

use super::{RecordMeta, DEGRADED_REMARK};

/// The reserve file under the outbox path.
pub(super) const RESERVE: &str = "reserve";

/// How big the reserve is for this quota: 1/256 of it, 1 to 8 MiB.
pub(super) fn reserve_size(max_disk: u64) -> u64 {
    (max_disk / 256).clamp(1 << 20, 8 << 20)
}

/// Bytes the file system holding `path` has free for us, if the platform can tell.
pub(super) fn free_space(path: &Path) -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above; statvfs only writes into `st`.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &raw mut st) };
        if rc != 0 {
            return None;
        }
        #[allow(clippy::useless_conversion)] // u32 on 32-bit targets, u64 on 64-bit
        Some(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = path;
        None
    }
}

/// Whether the file system holding `path` is mounted read-only (`statvfs`, nothing written),
/// if the platform can tell.
pub(super) fn read_only(path: &Path) -> Option<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above; statvfs only writes into `st`.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &raw mut st) };
        if rc != 0 {
            return None;
        }
        Some(st.f_flag & libc::ST_RDONLY != 0)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = path;
        None
    }
}

/// Is the reserve in place?
pub(super) fn has_reserve(dir: &Path) -> bool {
    dir.join(RESERVE).exists()
}

/// Delete the reserve if the file system has less than `size` free. Returns true if it was
/// released.
pub(super) fn release_if_tight(dir: &Path, size: u64) -> bool {
    if !has_reserve(dir) || free_space(dir).is_some_and(|f| f >= size) {
        return false;
    }
    release(dir)
}

/// Delete the reserve now (something failed for want of space). True if there was one.
pub(super) fn release(dir: &Path) -> bool {
    match std::fs::remove_file(dir.join(RESERVE)) {
        Ok(()) => {
            let _ = super::segments::sync_dir(dir);
            tracing::warn!(path = %dir.display(), "outbox: released the reserve file: the file system is (nearly) full");
            true
        }
        Err(_) => false,
    }
}

/// Write the reserve if it is missing and twice its size is free. True if it is in place.
pub(super) fn ensure(dir: &Path, size: u64) -> bool {
    if has_reserve(dir) {
        return true;
    }
    if free_space(dir).is_some_and(|f| f < size.saturating_mul(2)) {
        return false;
    }
    let tmp = dir.join("reserve.tmp");
    let r = (|| {
        let mut f = super::dead::private_file(&tmp)?;
        let block = vec![0u8; 64 << 10];
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
            f.write_all(&block[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(RESERVE))?;
        super::segments::sync_dir(dir)
    })();
    match r {
        Ok(()) => true,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(error = %e, "outbox: could not write the reserve file yet");
            false
        }
    }
}

/// A record's meta once the quota dropped its image: marked degraded, `remark` says so.
pub(super) fn strip_image(mut meta: RecordMeta) -> RecordMeta {
    if !meta.degraded {
        meta.degraded = true;
        meta.remark = Some(match meta.remark.take() {
            Some(r) if !r.is_empty() => format!("{r}; {DEGRADED_REMARK}"),
            _ => DEGRADED_REMARK.to_string(),
        });
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_written_released_and_written_again() {
        let d = tempfile::tempdir().unwrap();
        assert!(ensure(d.path(), 1 << 20));
        assert_eq!(
            std::fs::metadata(d.path().join(RESERVE)).unwrap().len(),
            1 << 20
        );
        assert!(!release_if_tight(d.path(), 1 << 20), "plenty of room: kept");
        assert!(release(d.path()));
        assert!(!has_reserve(d.path()));
        assert!(ensure(d.path(), 1 << 20));
    }

    #[test]
    fn the_reserve_scales_with_the_quota_within_bounds() {
        assert_eq!(reserve_size(64 << 20), 1 << 20);
        assert_eq!(reserve_size(1 << 30), 4 << 20);
        assert_eq!(reserve_size(2 << 30), 8 << 20);
        assert_eq!(reserve_size(100 << 30), 8 << 20);
    }
}
