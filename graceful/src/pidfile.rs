//! The PID file: written atomically and safely in a directory others may
//! write to, and removed on stop only while it still names this service.
//!
//! A root service writing into a shared directory must not be turned against
//! its host: the temporary file has an unpredictable name and is created
//! exclusively (`O_CREAT|O_EXCL`, which never follows a symlink), then renamed
//! over the path (a rename replaces a symlink there, never its target).

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// Writes `pid` to `path` atomically: a new file beside it, then a rename.
pub(crate) fn write(path: &Path, pid: u32) -> Result<(), Error> {
    write_through(path, &aside(path), pid)
}

/// Writes `pid` to `aside`, which must not exist yet, then renames it to
/// `path`.
fn write_through(path: &Path, aside: &Path, pid: u32) -> Result<(), Error> {
    let error = |source| Error::PidFile {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(aside)
        .map_err(error)?;
    let written = file
        .write_all(format!("{pid}\n").as_bytes())
        .and_then(|()| std::fs::rename(aside, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(aside);
        error(e)
    })
}

/// A name beside `path` that nobody can predict: 64 random bits from the
/// standard library's OS-seeded hasher keys.
fn aside(path: &Path) -> PathBuf {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{:016x}.tmp", hasher.finish()));
    path.with_file_name(name)
}

/// Removes the PID file if it is a regular file (not a symlink someone put
/// there) that still names `pid`.
pub(crate) fn remove(path: &Path, pid: u32) {
    let regular = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    let ours =
        regular && std::fs::read_to_string(path).is_ok_and(|text| text.trim() == pid.to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("graceful-pidfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn written_whole_and_removed_only_while_it_names_us() {
        let dir = dir("basic");
        let path = dir.join("app.pid");
        write(&path, 42).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "42\n");
        remove(&path, 43);
        assert!(path.exists(), "a file naming another PID is left alone");
        remove(&path, 42);
        assert!(!path.exists());
        let err = write(&dir.join("missing").join("app.pid"), 1).unwrap_err();
        assert!(err.to_string().contains("missing/app.pid"), "{err}");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "nothing left beside it"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_names_are_not_predictable() {
        let path = Path::new("/run/app.pid");
        let (a, b) = (aside(path), aside(path));
        assert_ne!(a, b);
        assert_eq!(a.parent(), path.parent());
        assert!(a
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("app.pid."));
    }

    #[test]
    fn a_file_planted_at_the_temporary_name_is_never_written_through() {
        let dir = dir("planted");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.join("app.pid");
        let aside = dir.join("app.pid.tmp");
        // A symlink to a file the service must not touch...
        std::os::unix::fs::symlink(&victim, &aside).unwrap();
        assert!(write_through(&path, &aside, 7).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!path.exists());
        // ...or a regular file someone else owns: refused too, never reused.
        std::fs::remove_file(&aside).unwrap();
        std::fs::write(&aside, b"theirs").unwrap();
        assert!(write_through(&path, &aside, 7).is_err());
        assert_eq!(std::fs::read(&aside).unwrap(), b"theirs");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_at_the_path_is_replaced_and_its_target_untouched() {
        let dir = dir("symlink");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.join("app.pid");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write(&path, 7).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "7\n");
        // A symlink planted later is never followed by the removal either.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&victim, b"7\n").unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        remove(&path, 7);
        assert!(victim.exists() && std::fs::symlink_metadata(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
