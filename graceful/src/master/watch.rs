//! Watching the executable file for a new build (`watch = true`): inotify on
//! its directory, one descriptor in the master's `poll` set, no thread and
//! no timer of its own. Linux only.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Changes to one file, seen through its directory (a build renamed or
/// linked over the path replaces the file, which a watch on the file itself
/// would not follow).
#[derive(Debug)]
pub(crate) struct ExecutableWatch {
    inotify: Inotify,
    name: OsString,
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
        Ok(ExecutableWatch { inotify, name })
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
        Ok(ExecutableWatch { inotify, name })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Reads what happened since the last call: whether the file changed.
    pub(crate) fn changed(&self) -> bool {
        let mut changed = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            changed |= events
                .iter()
                .any(|event| event.name.as_deref() == Some(self.name.as_os_str()));
        }
        changed
    }
}
