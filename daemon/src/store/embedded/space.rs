//! Free space on the embedded store's disk. New messages are refused while
//! it is below a reserve (`store.min_free_mb`), so that what is already
//! queued can still be attempted and settled in the space left, and the
//! store never meets a full disk in the middle of a commit (redb then fails
//! every later write until it is opened again). Postfix's `queue_minfree`
//! does the same for its queue directory.

use crate::store::{Result, StoreError};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a reading of the free space is trusted: a check on every
/// message would cost a system call each.
const READ_EVERY: Duration = Duration::from_millis(200);

pub const DEFAULT_RESERVE: u64 = 100 << 20;

pub struct DiskSpace {
    dir: PathBuf,
    reserve: AtomicU64,
    /// When the file system was last asked, and what it said.
    last: Mutex<Option<(Instant, u64)>>,
}

impl DiskSpace {
    pub fn new(dir: PathBuf) -> DiskSpace {
        DiskSpace {
            dir,
            reserve: AtomicU64::new(DEFAULT_RESERVE),
            last: Mutex::new(None),
        }
    }

    pub fn set_reserve(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
    }

    /// Whether a new message may be written.
    pub fn check(&self) -> Result<()> {
        let reserve = self.reserve.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        let free = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            match *last {
                Some((at, free)) if at.elapsed() < READ_EVERY => free,
                _ => {
                    // A file system that cannot say is not held against
                    // the message: the write itself will tell.
                    let free = free_bytes(&self.dir).unwrap_or(u64::MAX);
                    *last = Some((Instant::now(), free));
                    free
                }
            }
        };
        if free < reserve {
            return Err(StoreError::NoSpace {
                free_mb: free >> 20,
                reserve_mb: reserve >> 20,
            });
        }
        Ok(())
    }
}

/// Bytes an unprivileged process may still write under `dir`.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` a buffer of the
    // right type, which statvfs fills when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: filled, as statvfs returned 0.
    let stat = unsafe { stat.assume_init() };
    // u64 already on 64-bit Linux, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_below_the_reserve_and_reads_the_real_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let space = DiskSpace::new(dir.path().to_path_buf());
        let free = free_bytes(dir.path()).expect("statvfs");
        assert!(free > 0);
        space.set_reserve(1);
        assert!(space.check().is_ok());
        let space = DiskSpace::new(dir.path().to_path_buf());
        space.set_reserve(u64::MAX);
        match space.check() {
            // Other tests write meanwhile: the disk's free space moves.
            Err(StoreError::NoSpace { free_mb, .. }) => {
                assert!(
                    free_mb.abs_diff(free >> 20) < 256,
                    "{free_mb} MB, {free} bytes"
                )
            }
            other => panic!("{other:?}"),
        }
        space.set_reserve(0);
        assert!(space.check().is_ok(), "0 turns the check off");
    }
}
