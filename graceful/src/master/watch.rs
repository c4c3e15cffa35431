//! Watching the executable file for a new build (`watch = true`), and the
//! files and directories of `watch_paths`: inotify on their directories, one
//! descriptor each in the master's `poll` set, no thread and no timer of
//! their own. Linux only.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// Changes to one file, seen through its directory (a build renamed or
/// linked over the path replaces the file, which a watch on the file itself
/// would not follow).
#[derive(Debug)]
pub(crate) struct ExecutableWatch {
    inotify: Inotify,
    name: OsString,
    /// Whether a writer wrote to the file and has not closed it yet: such a
    /// file cannot be executed (`ETXTBSY`), however long it has been quiet.
    writing: bool,
}

/// Where the changes read last left the executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Written and closed, renamed or linked over the path, or its mode
    /// changed: ready to run once it stays quiet.
    Written,
    /// Written to by a writer that still holds it open (a copy or a linker
    /// that paused): not to be run until it is closed.
    Writing,
}

/// Whether the file is still being written after `event` on its name, given
/// whether it was before: a write starts it, the writer's close or a new
/// file at the name (renamed or linked over it) ends it, and a change of
/// mode says nothing about it.
fn still_writing(writing: bool, event: AddWatchFlags) -> bool {
    if event.intersects(
        AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CREATE,
    ) {
        false
    } else {
        writing || event.contains(AddWatchFlags::IN_MODIFY)
    }
}

impl ExecutableWatch {
    pub(crate) fn new(path: &Path) -> std::io::Result<ExecutableWatch> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("the path has no file name"))?
            .to_owned();
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB;
        inotify.add_watch(dir, mask)?;
        Ok(ExecutableWatch {
            inotify,
            name,
            writing: false,
        })
    }

    /// The watch a master carried across its exec: the inotify descriptor
    /// `fd` (checked to be one, made close-on-exec again) on `path`'s
    /// directory, so that a change made during the exec is still seen.
    pub(crate) fn carried(fd: RawFd, path: &Path) -> std::io::Result<ExecutableWatch> {
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("the path has no file name"))?
            .to_owned();
        let (fd, ()) = crate::fd::take_carried(fd, |_| {
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .map_err(|e| format!("descriptor {fd}: {e}"))?;
            if link.as_os_str() == "anon_inode:inotify" {
                Ok(())
            } else {
                Err(format!(
                    "descriptor {fd} is {}, not an inotify instance",
                    link.display()
                ))
            }
        })
        .map_err(std::io::Error::other)?;
        // SAFETY: an inotify descriptor, as checked.
        let inotify = unsafe { Inotify::from_owned_fd(fd) };
        // Not carried: while a write was open the old image had no reload
        // pending (nor has the state it handed over), and the file's next
        // event says again whether it is still being written.
        Ok(ExecutableWatch {
            inotify,
            name,
            writing: false,
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Reads what happened since the last call: whether the file changed,
    /// and if so, whether a writer still holds it.
    pub(crate) fn changed(&mut self) -> Option<Change> {
        let mut changed = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for event in &events {
                if event.name.as_deref() == Some(self.name.as_os_str()) {
                    changed = true;
                    self.writing = still_writing(self.writing, event.mask);
                }
            }
        }
        changed.then_some(if self.writing {
            Change::Writing
        } else {
            Change::Written
        })
    }
}

/// Files and directories whose change reloads (`watch_paths`), each
/// watched through a directory: a directory given is watched itself, and
/// any change in it counts; a file is watched through its directory, where
/// a change to its name counts, and so does one to a name that starts with
/// `..` (Kubernetes swaps a volume's `..data` symlink, so the file's own
/// name never changes). Renames over the name (certbot's symlinks, an
/// editor's save) and rewrites in place are both seen.
#[derive(Debug)]
pub(crate) struct PathsWatch {
    inotify: Inotify,
    /// Each watch: its descriptor, the path as configured, and the name to
    /// look for in the directory (`None`: any).
    watches: Vec<(WatchDescriptor, PathBuf, Option<OsString>)>,
}

impl PathsWatch {
    /// Watches `paths`; an error names the path that cannot be watched.
    pub(crate) fn new(paths: &[PathBuf]) -> Result<PathsWatch, String> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| format!("cannot start inotify: {e}"))?;
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB;
        let mut watches = Vec::new();
        for path in paths {
            let (dir, name) = if path.is_dir() {
                (path.as_path(), None)
            } else {
                let dir = match path.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir,
                    _ => Path::new("."),
                };
                let name = path
                    .file_name()
                    .ok_or_else(|| format!("cannot watch {}: it names no file", path.display()))?;
                (dir, Some(name.to_owned()))
            };
            let wd = inotify.add_watch(dir, mask).map_err(|e| {
                format!(
                    "cannot watch {} (its directory {}): {e}",
                    path.display(),
                    dir.display()
                )
            })?;
            watches.push((wd, path.clone(), name));
        }
        Ok(PathsWatch { inotify, watches })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Reads what happened since the last call: the first watched path a
    /// change concerns, if any.
    pub(crate) fn changed(&self) -> Option<PathBuf> {
        let mut changed = None;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for event in &events {
                let hit = self.watches.iter().find(|(wd, _, name)| {
                    *wd == event.wd && concerns(name.as_deref(), event.name.as_deref())
                });
                if let (None, Some((_, path, _))) = (&changed, hit) {
                    changed = Some(path.clone());
                }
            }
        }
        changed
    }
}

/// Whether a change to the entry `entry` of a watched directory concerns
/// the file `name` in it (`None`: the directory itself is watched).
fn concerns(name: Option<&std::ffi::OsStr>, entry: Option<&std::ffi::OsStr>) -> bool {
    match (name, entry) {
        (None, _) => true,
        (Some(name), Some(entry)) => entry == name || entry.as_encoded_bytes().starts_with(b".."),
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn a_change_concerns_the_file_its_name_or_a_kubernetes_swap() {
        let file = Some(OsStr::new("tls.crt"));
        assert!(concerns(file, Some(OsStr::new("tls.crt"))));
        assert!(concerns(file, Some(OsStr::new("..data"))));
        assert!(concerns(
            file,
            Some(OsStr::new("..2026_12_02_08_00_00.123"))
        ));
        assert!(!concerns(file, Some(OsStr::new("tls.key"))));
        assert!(!concerns(file, Some(OsStr::new(".tls.crt.swp"))));
        assert!(!concerns(file, None));
        assert!(concerns(None, Some(OsStr::new("anything"))));
        assert!(concerns(None, None));
    }

    #[test]
    fn a_write_holds_the_file_until_its_writer_closes_it_or_it_is_replaced() {
        let modify = AddWatchFlags::IN_MODIFY;
        assert!(still_writing(false, modify));
        assert!(still_writing(true, modify));
        assert!(still_writing(true, AddWatchFlags::IN_ATTRIB));
        assert!(!still_writing(false, AddWatchFlags::IN_ATTRIB));
        for done in [
            AddWatchFlags::IN_CLOSE_WRITE,
            AddWatchFlags::IN_MOVED_TO,
            AddWatchFlags::IN_CREATE,
        ] {
            assert!(!still_writing(true, done), "{done:?}");
            assert!(!still_writing(false, done), "{done:?}");
        }
    }

    /// Reads changes until one leaves the file written, waiting on the
    /// inotify descriptor up to 5 s in all. A writer's close reaches inotify
    /// only with the last copy of its descriptor: another test's thread that
    /// forks (upgrade.rs's tests run processes) holds one until its child
    /// execs, so the close may come late. True when it came.
    fn written_within_5s(watch: &mut ExecutableWatch) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if watch.changed() == Some(Change::Written) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let ms = PollTimeout::try_from(left.as_millis().max(1) as u64).unwrap();
            let mut fds = [PollFd::new(watch.fd(), PollFlags::POLLIN)];
            poll(&mut fds, ms).unwrap();
        }
    }

    #[test]
    fn an_executable_open_for_writing_is_writing_until_closed() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("graceful-exe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("app");
        // Watched before the first write, so that its close, however late,
        // is read here and not taken for a later change.
        let mut watch = ExecutableWatch::new(&exe).unwrap();
        std::fs::write(&exe, "one").unwrap();
        assert!(written_within_5s(&mut watch));
        assert_eq!(watch.changed(), None);
        std::fs::write(dir.join("other"), "x").unwrap();
        assert_eq!(watch.changed(), None);
        // Opened, written, paused: still being written.
        let mut file = std::fs::File::create(&exe).unwrap();
        file.write_all(b"two").unwrap();
        assert_eq!(watch.changed(), Some(Change::Writing));
        assert_eq!(watch.changed(), None);
        file.write_all(b"three").unwrap();
        assert_eq!(watch.changed(), Some(Change::Writing));
        drop(file);
        assert!(written_within_5s(&mut watch));
        assert_eq!(watch.changed(), None);
        // A build linked over the path (as cargo does): written at once.
        std::fs::write(dir.join("app.build"), "four").unwrap();
        std::fs::remove_file(&exe).unwrap();
        std::fs::hard_link(dir.join("app.build"), &exe).unwrap();
        assert_eq!(watch.changed(), Some(Change::Written));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn renames_rewrites_and_a_data_swap_are_seen_and_others_are_not() {
        let dir = std::env::temp_dir().join(format!("graceful-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let volume = dir.join("volume");
        std::fs::create_dir_all(&volume).unwrap();
        let cert = dir.join("tls.crt");
        std::fs::write(&cert, "one").unwrap();
        let watch = PathsWatch::new(&[cert.clone(), volume.clone()]).unwrap();
        assert_eq!(watch.changed(), None);
        // Another file in the same directory: not a change.
        std::fs::write(dir.join("other"), "x").unwrap();
        assert_eq!(watch.changed(), None);
        // Rewritten in place, then replaced by a rename.
        std::fs::write(&cert, "two").unwrap();
        assert_eq!(watch.changed(), Some(cert.clone()));
        std::fs::write(dir.join("tls.crt.new"), "three").unwrap();
        assert_eq!(watch.changed(), None);
        std::fs::rename(dir.join("tls.crt.new"), &cert).unwrap();
        assert_eq!(watch.changed(), Some(cert.clone()));
        // A Kubernetes volume: ..data swapped to a new directory.
        std::fs::create_dir(volume.join("..2")).unwrap();
        std::os::unix::fs::symlink("..2", volume.join("..data_tmp")).unwrap();
        let _ = watch.changed();
        std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
        assert_eq!(watch.changed(), Some(volume.clone()));
        // A directory that does not exist is named in the error.
        let missing = dir.join("missing").join("x.pem");
        let err = PathsWatch::new(std::slice::from_ref(&missing)).unwrap_err();
        assert!(
            err.starts_with(&format!("cannot watch {}", missing.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
