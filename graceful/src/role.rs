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
}

/// The link to the process that started this one.
#[derive(Debug)]
pub(crate) struct Parent {
    /// This process's end of the control socket.
    pub(crate) control: OwnedFd,
    /// This process's generation.
    pub(crate) generation: u64,
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
        // Removed so that processes the app starts are not mistaken for
        // graceful's own.
        for var in [ENV_CONTROL_FD, ENV_GENERATION, ENV_ROLE, ENV_INHERIT] {
            std::env::remove_var(var);
        }
        let Some(control) = control else {
            // Markers without a control socket were not set by graceful for
            // this process (a stray export in a shell, a copied unit file):
            // they are removed above, so no child sees them either.
            let stray = [
                (ENV_GENERATION, !generation.is_empty()),
                (ENV_ROLE, role.is_some()),
                (ENV_INHERIT, !inherited.is_empty()),
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
        let parent = Parent::from_markers(&control.to_string_lossy(), &generation)?;
        // A successor serves in single mode whatever its own mode says: its
        // predecessor hands over to it and exits.
        Ok(if successor {
            Role::Successor { parent, inherited }
        } else {
            Role::Worker(parent)
        })
    }
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
        })
    }
}
