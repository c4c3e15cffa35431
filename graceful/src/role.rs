//! Which role this process has (master, worker, single-mode process or
//! successor), read once from the environment markers graceful sets for the
//! processes it starts, and the names of those markers.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::config::Mode;
use crate::fd::set_cloexec;
use crate::Error;

/// The child's end of the control socket, set for every process graceful
/// starts (a worker, or a single-mode successor).
pub(crate) const ENV_CONTROL_FD: &str = "GRACEFUL_CONTROL_FD";
/// The generation number of the started process.
pub(crate) const ENV_GENERATION: &str = "GRACEFUL_GENERATION";
/// `successor` for a single-mode process's successor.
pub(crate) const ENV_ROLE: &str = "GRACEFUL_ROLE";
/// The listener table a successor inherits
/// (see `Listeners::export`).
pub(crate) const ENV_INHERIT: &str = "GRACEFUL_INHERIT";
/// Set by a master that can upgrade itself in place, for its workers: the
/// state format it writes. A worker that sees it says in its ready message
/// which formats its build reads.
pub(crate) const ENV_MASTER_FORMAT: &str = "GRACEFUL_MASTER_FORMAT";
/// Set by a master that counts its workers' drains and answers their
/// metrics requests (`ToMaster::Drained`, `ToMaster::Metrics`): a worker
/// sends those only to such a master.
pub(crate) const ENV_MASTER_METRICS: &str = "GRACEFUL_MASTER_METRICS";
/// Set by a master that shows its workers' builds: a worker sends its
/// `version` (`ToMaster::Build`) only to such a master. Its value is a
/// level: from 2, the master also names the new build in a reload's outcome
/// to a worker that says it reads it (`ToMaster::TakesBuilds`).
pub(crate) const ENV_MASTER_BUILDS: &str = "GRACEFUL_MASTER_BUILDS";
/// The level of `GRACEFUL_MASTER_BUILDS` this build's master sets.
pub(crate) const MASTER_BUILDS_LEVEL: u32 = 2;
/// The read end of a pipe holding a master's state (`state.rs`): for the
/// master image that takes over, or, with `GRACEFUL_ROLE=check`, for the
/// new executable asked whether it can.
pub(crate) const ENV_MASTER_STATE: &str = "GRACEFUL_MASTER_STATE";
/// `GRACEFUL_ROLE` of the process that checks a master state.
pub(crate) const ROLE_CHECK: &str = "check";

/// What this process is.
#[derive(Debug)]
pub(crate) enum Role {
    /// Started by a user or a process manager, in master mode.
    Master,
    /// Started by a user or a process manager, in single mode.
    Single,
    /// Started by a master.
    Worker(Parent),
    /// Started by a single-mode process to take over from it, with the
    /// listener table it inherits.
    Successor { parent: Parent, inherited: String },
    /// A master that re-executed itself: it resumes from the state on this
    /// pipe.
    ResumedMaster(OwnedFd),
    /// Asked by an upgrading master whether this build can take over the
    /// state on this pipe; answers on stdout and exits.
    CheckState(OwnedFd),
}

/// The link to the process that started this one.
#[derive(Debug)]
pub(crate) struct Parent {
    /// This process's end of the control socket.
    pub(crate) control: OwnedFd,
    /// This process's generation.
    pub(crate) generation: u64,
    /// The master can upgrade itself into this build, and asks whether it
    /// may (`GRACEFUL_MASTER_FORMAT`).
    pub(crate) master_upgrades: bool,
    /// The master counts drains and answers metrics requests
    /// (`GRACEFUL_MASTER_METRICS`).
    pub(crate) master_metrics: bool,
    /// How the master shows builds: the level in `GRACEFUL_MASTER_BUILDS`,
    /// 0 for a master that does not.
    pub(crate) master_builds: u32,
}

impl Role {
    /// Reads and removes the markers. `mode` is the mode set in code, which
    /// `GRACEFUL_MODE` overrides in a process graceful did not start.
    ///
    /// Called before any thread exists: the runtime is built later.
    pub(crate) fn detect(mode: Mode) -> Result<Role, Error> {
        let control = std::env::var_os(ENV_CONTROL_FD);
        let generation = std::env::var(ENV_GENERATION).unwrap_or_default();
        let role = std::env::var_os(ENV_ROLE);
        let successor = role.as_ref().is_some_and(|role| role == "successor");
        let inherited = std::env::var(ENV_INHERIT).unwrap_or_default();
        let master_upgrades = std::env::var_os(ENV_MASTER_FORMAT).is_some();
        let master_metrics = std::env::var_os(ENV_MASTER_METRICS).is_some();
        let master_builds = builds_level(std::env::var_os(ENV_MASTER_BUILDS).as_deref());
        let state = std::env::var_os(ENV_MASTER_STATE);
        // Removed so that processes the app starts are not mistaken for
        // graceful's own.
        for var in [
            ENV_CONTROL_FD,
            ENV_GENERATION,
            ENV_ROLE,
            ENV_INHERIT,
            ENV_MASTER_FORMAT,
            ENV_MASTER_METRICS,
            ENV_MASTER_BUILDS,
            ENV_MASTER_STATE,
        ] {
            std::env::remove_var(var);
        }
        if let Some(state) = state {
            let state = state.to_string_lossy();
            let fd = state_pipe(&state)?;
            return match (control, role.as_ref().and_then(|r| r.to_str())) {
                (None, None) => Ok(Role::ResumedMaster(fd)),
                (None, Some(ROLE_CHECK)) => Ok(Role::CheckState(fd)),
                _ => Err(Error::WorkerEnv {
                    var: ENV_MASTER_STATE,
                    value: state.into_owned(),
                    reason: format!(
                        "set together with {ENV_CONTROL_FD} or a {ENV_ROLE} other than {ROLE_CHECK:?}"
                    ),
                }),
            };
        }
        let Some(control) = control else {
            // Markers without a control socket were not set by graceful for
            // this process (a stray export in a shell, a copied unit file):
            // they are removed above, so no child sees them either.
            let stray = [
                (ENV_GENERATION, !generation.is_empty()),
                (ENV_ROLE, role.is_some()),
                (ENV_INHERIT, !inherited.is_empty()),
                (ENV_MASTER_FORMAT, master_upgrades),
                (ENV_MASTER_METRICS, master_metrics),
                (ENV_MASTER_BUILDS, master_builds > 0),
            ];
            for (var, present) in stray {
                if present {
                    crate::log::log!(
                        "ignoring {var} from the environment: graceful sets it only for the \
                         processes it starts, with {ENV_CONTROL_FD}"
                    );
                }
            }
            return Ok(match Mode::from_env()?.unwrap_or(mode) {
                Mode::Master => Role::Master,
                Mode::Single => Role::Single,
            });
        };
        let mut parent = Parent::from_markers(&control.to_string_lossy(), &generation)?;
        parent.master_upgrades = master_upgrades;
        parent.master_metrics = master_metrics;
        parent.master_builds = master_builds;
        // A successor serves in single mode whatever its own mode says: its
        // predecessor hands over to it and exits.
        Ok(if successor {
            Role::Successor { parent, inherited }
        } else {
            Role::Worker(parent)
        })
    }
}

/// The state pipe a master passed, checked before anything reads it: a
/// number above stderr, open, and a pipe.
fn state_pipe(value: &str) -> Result<OwnedFd, Error> {
    let bad = |reason: &str| Error::WorkerEnv {
        var: ENV_MASTER_STATE,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let fd: i32 = value
        .parse()
        .map_err(|_| bad("not a file descriptor number"))?;
    if fd < 3 {
        return Err(bad("0, 1 and 2 are stdin, stdout and stderr"));
    }
    // SAFETY: fstat on any integer is harmless; it only reports whether the
    // descriptor is open and what it is.
    let mut stat = std::mem::MaybeUninit::<nix::libc::stat>::uninit();
    if unsafe { nix::libc::fstat(fd, stat.as_mut_ptr()) } == -1 {
        return Err(bad("the descriptor is not open"));
    }
    // SAFETY: fstat succeeded, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFIFO {
        return Err(bad("the descriptor is not a pipe"));
    }
    // SAFETY: the master passed this pipe to this process alone; it is open
    // and nothing else here refers to it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(fd.as_fd()).map_err(|e| Error::io("cannot set FD_CLOEXEC on the state pipe", e))?;
    Ok(fd)
}

impl Parent {
    /// Checks the markers before anything trusts them: the descriptor must be
    /// an open `SOCK_SEQPACKET` socket above stderr.
    fn from_markers(control: &str, generation: &str) -> Result<Parent, Error> {
        let bad = |var: &'static str, value: &str, reason: &str| Error::WorkerEnv {
            var,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let fd: i32 = control
            .parse()
            .map_err(|_| bad(ENV_CONTROL_FD, control, "not a file descriptor number"))?;
        if fd < 3 {
            return Err(bad(
                ENV_CONTROL_FD,
                control,
                "0, 1 and 2 are stdin, stdout and stderr",
            ));
        }
        let generation: u64 = generation
            .parse()
            .map_err(|_| bad(ENV_GENERATION, generation, "not a generation number"))?;
        // SAFETY: fcntl(F_GETFD) on any integer is harmless; it only reports
        // whether the descriptor is open.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } == -1 {
            return Err(bad(ENV_CONTROL_FD, control, "the descriptor is not open"));
        }
        // SAFETY: the descriptor is open (checked above); borrowing it for
        // the duration of the check does not close or move it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::SockType) {
            Ok(nix::sys::socket::SockType::SeqPacket) => {}
            _ => {
                return Err(bad(
                    ENV_CONTROL_FD,
                    control,
                    "the descriptor is not a graceful control socket",
                ))
            }
        }
        // SAFETY: the parent passed this descriptor to us alone, it is open
        // and of the right kind, and nothing else in this process refers to it.
        let control = unsafe { OwnedFd::from_raw_fd(fd) };
        set_cloexec(control.as_fd())
            .map_err(|e| Error::io("cannot set FD_CLOEXEC on the control socket", e))?;
        Ok(Parent {
            control,
            generation,
            master_upgrades: false,
            master_metrics: false,
            master_builds: 0,
        })
    }
}

/// The level in `GRACEFUL_MASTER_BUILDS`: 0 where it is not set, and 1
/// where it is set to anything but a number (the first masters that set it
/// set "1"; a later one sets a higher number).
fn builds_level(value: Option<&std::ffi::OsStr>) -> u32 {
    value.map_or(0, |value| {
        value
            .to_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
            .max(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builds_level_is_a_number_and_any_other_value_is_the_first() {
        let level = |value: &str| builds_level(Some(std::ffi::OsStr::new(value)));
        assert_eq!(builds_level(None), 0);
        assert_eq!(level("1"), 1);
        assert_eq!(level("2"), 2);
        assert_eq!(level("17"), 17);
        assert_eq!(level("0"), 1);
        assert_eq!(level(""), 1);
        assert_eq!(level("yes"), 1);
    }
}
