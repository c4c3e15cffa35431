//! The signals graceful can reload or stop on: the public [`Signal`], the
//! master's self-pipe, and the handlers of a serving process.
//!
//! The master runs no async runtime: a signal handler writes the signal number
//! into a non-blocking pipe that the master's `poll` loop watches. Nothing else
//! happens in the handler, which keeps it async-signal-safe. Serving
//! processes use tokio's signal streams instead ([`handle_in_serving`]).

use std::fmt;

#[cfg(unix)]
pub(crate) use pipe::SignalPipe;
#[cfg(unix)]
pub(crate) use serving::handle_in_serving;

/// A signal that graceful can install a handler for.
///
/// `SIGKILL` and `SIGSTOP` are not here: no process can catch them.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// Hang-up; a reload signal by default.
    SIGHUP,
    /// Interrupt (Ctrl-C); a stop signal by default.
    SIGINT,
    /// Quit.
    SIGQUIT,
    /// Terminate; a stop signal by default.
    SIGTERM,
    /// User signal 1; a reload signal by default.
    SIGUSR1,
    /// User signal 2.
    SIGUSR2,
    /// Window size change.
    SIGWINCH,
}

impl Signal {
    /// Every signal graceful can handle.
    pub const ALL: [Signal; 7] = [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ];

    /// The conventional name, such as `"SIGHUP"`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::SIGHUP => "SIGHUP",
            Signal::SIGINT => "SIGINT",
            Signal::SIGQUIT => "SIGQUIT",
            Signal::SIGTERM => "SIGTERM",
            Signal::SIGUSR1 => "SIGUSR1",
            Signal::SIGUSR2 => "SIGUSR2",
            Signal::SIGWINCH => "SIGWINCH",
        }
    }

    /// The signal number on this platform.
    #[cfg(unix)]
    #[cfg_attr(docsrs, doc(cfg(unix)))]
    pub fn number(self) -> i32 {
        self.to_nix() as i32
    }

    #[cfg(unix)]
    pub(crate) fn to_nix(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal as nix_signal;
        match self {
            Signal::SIGHUP => nix_signal::SIGHUP,
            Signal::SIGINT => nix_signal::SIGINT,
            Signal::SIGQUIT => nix_signal::SIGQUIT,
            Signal::SIGTERM => nix_signal::SIGTERM,
            Signal::SIGUSR1 => nix_signal::SIGUSR1,
            Signal::SIGUSR2 => nix_signal::SIGUSR2,
            Signal::SIGWINCH => nix_signal::SIGWINCH,
        }
    }

    #[cfg(unix)]
    pub(crate) fn from_number(n: i32) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.number() == n)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Signal {
    type Err = String;

    fn from_str(s: &str) -> Result<Signal, String> {
        Signal::ALL
            .into_iter()
            .find(|sig| sig.name() == s)
            .ok_or_else(|| format!("unknown signal {s:?}; expected one of SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH"))
    }
}

#[cfg(unix)]
mod serving {
    use tokio::signal::unix::{signal, Signal as Stream, SignalKind};
    use tokio::sync::mpsc::UnboundedSender;

    use super::Signal;
    use crate::Error;

    /// Handles the configured signals in a serving process. Stop signals
    /// start the drain, also when sent to a worker directly (as with
    /// `KillMode=control-group` or a terminal's Ctrl-C to the process
    /// group). With `reload` (single mode) each reload signal is sent on it;
    /// without it, reload signals are the master's business, received and
    /// ignored.
    /// A stop signal drains, after `shutdown_delay` if one is set (see
    /// `health::stop_requested`).
    pub(crate) fn handle_in_serving(
        reload_signals: &[Signal],
        stop_signals: &[Signal],
        shutdown_delay: std::time::Duration,
        reload: Option<UnboundedSender<String>>,
    ) -> Result<(), Error> {
        let handle = |sig: Signal| -> Result<Stream, Error> {
            signal(SignalKind::from_raw(sig.number()))
                .map_err(|e| Error::io(format!("cannot handle {sig}"), e))
        };
        for &sig in reload_signals {
            // Installing the handler replaces the inherited SIG_IGN. Without a
            // receiver the stream is dropped, so the signal is received and
            // ignored.
            let mut stream = handle(sig)?;
            if let Some(reload) = reload.clone() {
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        let _ = reload.send(format!("signal {sig}"));
                    }
                });
            }
        }
        for &sig in stop_signals {
            let mut stream = handle(sig)?;
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    crate::health::stop_requested(&format!("received {sig}"), shutdown_delay);
                }
            });
        }
        Ok(())
    }
}

#[cfg(unix)]
mod pipe {
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
    use std::sync::atomic::{AtomicI32, Ordering};

    use nix::errno::Errno;
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    use nix::sys::signal::{self as nix_signal, SaFlags, SigAction, SigHandler, SigSet};

    use super::Signal;
    use crate::Error;

    /// Write end of the self-pipe, read by the signal handler.
    static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(signal: nix::libc::c_int) {
        let saved = Errno::last_raw();
        let fd = PIPE_WRITE.load(Ordering::Relaxed);
        if fd >= 0 {
            let byte = signal as u8;
            // SAFETY: write(2) is async-signal-safe; the buffer is a live local byte.
            // A full pipe drops the byte, which is fine: one pending byte per kind
            // of event is enough to wake the loop.
            unsafe { nix::libc::write(fd, (&byte as *const u8).cast(), 1) };
        }
        Errno::set_raw(saved);
    }

    /// Signals delivered to the master, as bytes on a pipe.
    #[derive(Debug)]
    pub(crate) struct SignalPipe {
        read: OwnedFd,
        _write: OwnedFd,
    }

    fn set_flags(fd: BorrowedFd<'_>) -> nix::Result<()> {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(())
    }

    impl SignalPipe {
        /// Installs the handler for `signals` (and SIGCHLD). Called once, by the
        /// master, before it starts any worker.
        pub(crate) fn install(signals: &[Signal]) -> Result<SignalPipe, Error> {
            let io = |what: &str, e: Errno| Error::io(what.to_string(), e.into());
            let (read, write) =
                nix::unistd::pipe().map_err(|e| io("cannot create the signal pipe", e))?;
            set_flags(read.as_fd()).map_err(|e| io("cannot configure the signal pipe", e))?;
            set_flags(write.as_fd()).map_err(|e| io("cannot configure the signal pipe", e))?;
            PIPE_WRITE.store(write.as_raw_fd(), Ordering::Relaxed);

            let mut all: Vec<nix_signal::Signal> = signals.iter().map(|s| s.to_nix()).collect();
            all.push(nix_signal::Signal::SIGCHLD);
            // Each handler runs with the others blocked, so that signals
            // pending at once (held across a master's exec) are written to
            // the pipe one at a time, lowest number first, rather than
            // nested in reverse.
            let mut mask = SigSet::empty();
            for &sig in &all {
                mask.add(sig);
            }
            let action = SigAction::new(
                SigHandler::Handler(on_signal),
                SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
                mask,
            );
            for sig in all {
                // SAFETY: the handler only calls async-signal-safe functions
                // (write, and errno save/restore).
                unsafe { nix_signal::sigaction(sig, &action) }
                    .map_err(|e| io(&format!("cannot install a handler for {sig}"), e))?;
            }
            Ok(SignalPipe {
                read,
                _write: write,
            })
        }

        pub(crate) fn fd(&self) -> BorrowedFd<'_> {
            self.read.as_fd()
        }

        /// Returns the signal numbers received since the last call.
        pub(crate) fn pending(&self) -> Vec<i32> {
            let mut out = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                match nix::unistd::read(&self.read, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend(buf[..n].iter().map(|b| i32::from(*b))),
                }
            }
            out
        }
    }
}
