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
use crate::role::{ENV_CONTROL_FD, ENV_GENERATION};
use crate::{Error, Signal};

/// The program this service runs again on reload: recorded once, at start,
/// so that a new build renamed over the path is what the next reload runs.
#[derive(Debug, Clone)]
pub(crate) struct Executable {
    path: PathBuf,
    argv: Vec<OsString>,
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

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Prepares generation `generation`: a control socket pair and the
    /// command, with the child's end of the socket and `inherit` made
    /// inheritable in the child only. With `own_group` the child leads a
    /// process group of its own, so that a kill of that group reaches every
    /// process it started.
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
    ) -> std::io::Result<Prepared> {
        let (mine, theirs) = control::pair()?;
        set_nonblocking(mine.as_fd())?;
        inherit.push(theirs.as_raw_fd());
        let mut command = Command::new(&self.path);
        if let Some(arg0) = self.argv.first() {
            command.arg0(arg0);
        }
        command.args(self.argv.iter().skip(1));
        command
            .env(ENV_CONTROL_FD, theirs.as_raw_fd().to_string())
            .env(ENV_GENERATION, generation.to_string());
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
    if let Some(arg0) = std::env::args_os().next() {
        let path = Path::new(&arg0);
        if arg0.to_string_lossy().contains('/') {
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
    std::env::current_exe().map_err(|e| Error::io("cannot find the path of this executable", e))
}
