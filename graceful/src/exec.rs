//! Starting the next generation: the executable path recorded at start, and
//! the command that runs it as a child with a control socket, for the
//! master's workers and single mode's successors alike.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::control;
use crate::fd::set_nonblocking;
use crate::role::{
    ENV_CONTROL_FD, ENV_GENERATION, ENV_MASTER_BUILDS, ENV_MASTER_FORMAT, ENV_MASTER_METRICS,
    MASTER_BUILDS_LEVEL,
};
use crate::{Error, Signal};

/// The program this service runs again on reload: recorded once, at start,
/// so that a new build renamed over the path is what the next reload runs.
#[derive(Debug, Clone)]
pub(crate) struct Executable {
    path: PathBuf,
    argv: Vec<OsString>,
}

/// What a master tells each worker it starts about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FromMaster {
    /// The state format of a master that can upgrade into the worker's
    /// build (`upgrade_master`).
    pub(crate) upgrade_format: Option<u32>,
}

impl Executable {
    /// This process's executable and arguments. A path with a slash in
    /// argv[0] is kept as written (made absolute), so a symlink that is
    /// switched to a new release is followed too.
    pub(crate) fn current() -> Result<Executable, Error> {
        Ok(Executable {
            path: path_of_this_executable()?,
            argv: std::env::args_os().collect(),
        })
    }

    /// The executable recorded by a previous image of this master.
    pub(crate) fn from_parts(path: PathBuf, argv: Vec<OsString>) -> Executable {
        Executable { path, argv }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn argv(&self) -> &[OsString] {
        &self.argv
    }

    /// The command that runs this program with its original arguments
    /// (argv[0] as it was given).
    pub(crate) fn command(&self) -> Command {
        self.command_at(&self.path)
    }

    /// The same, running `program` (this executable by another name, such
    /// as a descriptor's) with argv[0] as it was given.
    pub(crate) fn command_at(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        if let Some(arg0) = self.argv.first() {
            command.arg0(arg0);
        }
        command.args(self.argv.iter().skip(1));
        command
    }

    /// Prepares generation `generation`: a control socket pair and the
    /// command, with the child's end of the socket and `inherit` made
    /// inheritable in the child only. With `own_group` the child leads a
    /// process group of its own, so that a kill of that group reaches every
    /// process it started.
    ///
    /// `master` is set when the parent is a master (not a single-mode
    /// predecessor): the child may then report its drain and ask for
    /// metrics, and says whether it reads the master's state format, if
    /// the master can upgrade into the child's build.
    ///
    /// Between fork and exec the child also ignores `ignore` (a reload
    /// signal sent to the process group must not kill it before it installs
    /// its own handlers) and resets the signal numbers in `default` to their
    /// default action.
    pub(crate) fn prepare(
        &self,
        generation: u64,
        mut inherit: Vec<RawFd>,
        ignore: &[Signal],
        default: Vec<i32>,
        own_group: bool,
        master: Option<FromMaster>,
    ) -> std::io::Result<Prepared> {
        let (mine, theirs) = control::pair()?;
        set_nonblocking(mine.as_fd())?;
        inherit.push(theirs.as_raw_fd());
        let mut command = self.command();
        command
            .env(ENV_CONTROL_FD, theirs.as_raw_fd().to_string())
            .env(ENV_GENERATION, generation.to_string());
        if let Some(master) = master {
            command.env(ENV_MASTER_METRICS, "1");
            command.env(ENV_MASTER_BUILDS, MASTER_BUILDS_LEVEL.to_string());
            if let Some(format) = master.upgrade_format {
                command.env(ENV_MASTER_FORMAT, format.to_string());
            }
        }
        let ignore: Vec<i32> = ignore.iter().map(|s| s.number()).collect();
        // SAFETY: between fork and exec only async-signal-safe calls are made
        // (setpgid, fcntl, signal), on memory allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                if own_group && nix::libc::setpgid(0, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                for &fd in &inherit {
                    if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for &sig in &ignore {
                    nix::libc::signal(sig, nix::libc::SIG_IGN);
                }
                for &sig in &default {
                    nix::libc::signal(sig, nix::libc::SIG_DFL);
                }
                Ok(())
            });
        }
        Ok(Prepared {
            command,
            control: mine,
            theirs,
        })
    }
}

/// A child about to be started: its command (to add environment to) and
/// the parent's end of its control socket.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) command: Command,
    pub(crate) control: OwnedFd,
    /// The child's end: closed in the parent once the child is started, so
    /// that the parent sees EOF when the child exits.
    theirs: OwnedFd,
}

impl Prepared {
    /// Starts the child; returns it with the parent's end of the channel.
    pub(crate) fn spawn(mut self) -> std::io::Result<(std::process::Child, OwnedFd)> {
        let child = self.command.spawn()?;
        drop(self.theirs);
        Ok((child, self.control))
    }

    /// Starts the child on the async runtime, which can wait for it.
    pub(crate) fn spawn_async(self) -> std::io::Result<(tokio::process::Child, OwnedFd)> {
        let Prepared {
            command,
            control,
            theirs,
        } = self;
        let child = tokio::process::Command::from(command).spawn()?;
        drop(theirs);
        Ok((child, control))
    }
}

fn path_of_this_executable() -> Result<PathBuf, Error> {
    let current = std::env::current_exe()
        .map_err(|e| Error::io("cannot find the path of this executable", e))?;
    if let Some(arg0) = std::env::args_os().next() {
        let path = Path::new(&arg0);
        if !arg0.to_string_lossy().contains('/') {
            // Started through PATH, as a shell or a process manager does: the
            // file found there, as found (a symlink is kept, so switching it
            // to a new release is followed at the next reload), if it is
            // the program running now.
            let cwd = std::env::current_dir().unwrap_or_default();
            let found = search_path(&arg0, &std::env::var_os("PATH").unwrap_or_default(), &cwd);
            if let Some(found) = found.filter(|found| same_file(found, &current)) {
                return Ok(found);
            }
        } else {
            let absolute = if path.is_absolute() {
                path.to_path_buf()
            } else {
                std::env::current_dir()
                    .map_err(|e| Error::io("cannot read the current directory", e))?
                    .join(path)
            };
            // Drop `.` components: "./target/app" is recorded as ".../target/app".
            let absolute: PathBuf = absolute.components().collect();
            if absolute.is_file() {
                return Ok(absolute);
            }
        }
    }
    Ok(current)
}

/// The first executable file named `name` in the directories of `path` (the
/// value of `PATH`), made absolute against `cwd`, as `execvp` finds it.
fn search_path(name: &std::ffi::OsStr, path: &std::ffi::OsStr, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| cwd.join(dir).join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether two paths lead to the same file (after symlinks).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_name_is_found_through_path_and_a_symlink_is_kept_as_found() {
        let dir = std::env::temp_dir().join(format!("graceful-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (bin, releases, empty) = (dir.join("bin"), dir.join("releases"), dir.join("empty"));
        for d in [&bin, &releases, &empty] {
            std::fs::create_dir_all(d).unwrap();
        }
        let release = releases.join("app-1");
        std::fs::write(&release, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&release, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&release, bin.join("app")).unwrap();
        // Not executable: skipped, as execvp skips it.
        std::fs::write(empty.join("app"), b"").unwrap();
        let path = std::env::join_paths([&empty, &bin]).unwrap();
        let found = search_path(OsStr::new("app"), &path, &dir).unwrap();
        assert_eq!(found, bin.join("app"), "the symlink itself, not its target");
        assert!(same_file(&found, &release));
        // A relative PATH entry is taken against the working directory.
        let found = search_path(OsStr::new("app"), OsStr::new("bin"), &dir).unwrap();
        assert_eq!(found, bin.join("app"));
        assert_eq!(search_path(OsStr::new("other"), &path, &dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
