//! The PID file: written atomically (a file beside it, then a rename) and
//! removed on stop only while it still names this service.

use std::path::Path;

use crate::Error;

/// Writes `pid` to `path` atomically: a file beside it, then a rename.
pub(crate) fn write(path: &Path, pid: u32) -> Result<(), Error> {
    let error = |source| Error::PidFile {
        path: path.to_path_buf(),
        source,
    };
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&aside, format!("{pid}\n")).map_err(error)?;
    std::fs::rename(&aside, path).map_err(|e| {
        let _ = std::fs::remove_file(&aside);
        error(e)
    })
}

/// Removes the PID file if it still names `pid`.
pub(crate) fn remove(path: &Path, pid: u32) {
    let ours = std::fs::read_to_string(path).is_ok_and(|text| text.trim() == pid.to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_and_removed_only_while_it_names_us() {
        let dir = std::env::temp_dir().join(format!("graceful-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.pid");
        write(&path, 42).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "42\n");
        remove(&path, 43);
        assert!(path.exists(), "a file naming another PID is left alone");
        remove(&path, 42);
        assert!(!path.exists());
        let err = write(&dir.join("missing").join("app.pid"), 1).unwrap_err();
        assert!(err.to_string().contains("missing/app.pid"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
