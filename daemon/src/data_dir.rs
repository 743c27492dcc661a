//! The data directory is the daemon user's alone: it holds SecretKeys,
//! DKIM private keys, the operator token and the queue. Started by hand
//! under a umask of 022, the store's files came out 0644 in a 0755
//! directory, readable by every local user. So the process's umask is
//! 077 before any file is made (whatever it inherited), the directory is
//! made 0700, and what is already there with group or other bits is made
//! private at start, with a warning naming it.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// How deep the repair walks (the directory's own layout is two levels).
const DEPTH: usize = 4;

/// Makes `dir` (0700) if it is missing and private if it is not; from now
/// on this process makes files 0600 and directories 0700.
pub fn prepare(dir: &Path) -> io::Result<()> {
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    repair(dir, DEPTH)
}

/// Takes group and other permissions off `path` and what is below it;
/// symbolic links are left alone (their targets may be anyone's).
fn repair(path: &Path, depth: usize) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        let private = mode & 0o700;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(private))?;
        tracing::warn!(
            path = %path.display(),
            was = format!("{mode:o}"),
            now = format!("{private:o}"),
            "other local users could read this; made private to the daemon's user"
        );
    }
    if meta.is_dir() && depth > 0 {
        for entry in std::fs::read_dir(path)? {
            repair(&entry?.path(), depth - 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wider_modes_are_repaired_and_new_files_are_private() {
        let top = tempfile::tempdir().expect("tempdir");
        let dir = top.path().join("data");
        std::fs::create_dir_all(dir.join("tls")).expect("mkdir");
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        std::fs::write(dir.join("kiln.redb"), b"x").expect("write");
        std::fs::write(dir.join("tls/key.pem"), b"x").expect("write");
        set(&dir.join("kiln.redb"), 0o644);
        set(&dir.join("tls/key.pem"), 0o640);
        set(&dir.join("tls"), 0o755);
        set(&dir, 0o755);
        prepare(&dir).expect("prepare");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("tls")), 0o700);
        assert_eq!(mode(&dir.join("kiln.redb")), 0o600);
        assert_eq!(mode(&dir.join("tls/key.pem")), 0o600);
        std::fs::write(dir.join("new"), b"x").expect("write");
        assert_eq!(mode(&dir.join("new")), 0o600);
        let fresh = top.path().join("fresh/data");
        prepare(&fresh).expect("prepare");
        assert_eq!(mode(&fresh), 0o700);
    }
}
