//! The error type of the crate.

use std::io;
use std::path::PathBuf;

use crate::Signal;

/// Everything that can go wrong when starting, running or reloading a
/// graceful service. Each message names the address, signal, path or process
/// involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address given to `register!` or `Server::register` cannot be parsed.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as the user wrote it.
        addr: String,
        /// Why it is invalid, and how to write it instead.
        reason: String,
    },
    /// The listener for an address could not be bound or handed over (by the
    /// master, or by the process itself in single mode and on non-Unix
    /// platforms).
    #[error("cannot listen on {addr:?}: {reason}")]
    Listen {
        /// The address as the user wrote it.
        addr: String,
        /// The operating system's error, with what was attempted.
        reason: String,
    },
    /// The same signal is configured to reload and to stop.
    #[error("signal {signal} is configured both to reload and to stop; a signal can do only one")]
    SignalConflict {
        /// The signal in both lists.
        signal: Signal,
    },
    /// A builder option has a value it cannot take.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option, as the builder method is named.
        option: &'static str,
        /// Why the value is refused.
        reason: String,
    },
    /// The stop signal list is empty.
    #[error(
        "no stop signal is configured, so the service could not be stopped; keep at least one"
    )]
    NoStopSignal,
    /// The executable recorded at start could not be started as a worker.
    #[error("cannot start a worker from {path}: {source}")]
    Spawn {
        /// The executable path recorded when the master started.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The first worker did not become ready, so there is nothing to serve.
    #[error("the first worker failed to start: {reason}")]
    StartFailed {
        /// What the worker reported, or how it exited.
        reason: String,
    },
    /// This process is a worker and its start failed (main returned an error,
    /// panicked, or a listener could not be had).
    #[error("{reason}")]
    WorkerStart {
        /// The reason, also reported to the master.
        reason: String,
    },
    /// The environment that marks a process graceful started (a worker or a
    /// single-mode successor) is present but malformed.
    #[error("invalid worker environment {var}={value:?}: {reason}; this variable is set by graceful for the processes it starts and must not be set by hand")]
    WorkerEnv {
        /// The environment variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// `graceful::reload()` was called in a process graceful does not run: not
    /// a worker, and not a single-mode process.
    #[error("graceful::reload() was called outside a process graceful runs (a worker started by a graceful master, or a single-mode process)")]
    NotManaged,
    /// A TLS certificate or key file cannot be read, parsed or used.
    #[error("TLS file {path:?}: {reason}")]
    Tls {
        /// The certificate or key file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `GRACEFUL_MODE` has a value other than `master` or `single`.
    #[error("invalid GRACEFUL_MODE={value:?}: use \"master\" or \"single\"")]
    InvalidMode {
        /// The value found.
        value: String,
    },
    /// The PID file cannot be written.
    #[error("cannot write the PID file {path:?}: {source}")]
    PidFile {
        /// The path given to `pid_file`.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Something that needs a Unix system was asked for elsewhere.
    #[error("{what} needs a Unix system; on this platform graceful serves in one process without reloads")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
    /// The worker registered no listener.
    #[error("no listener was registered; call `graceful::register!(addr, handler)` in main")]
    NoListeners,
    /// A reload was asked for and waited on, and did not take effect: the
    /// serving worker (or process) still serves.
    #[error("{reason}")]
    ReloadFailed {
        /// Why, as the log says it (`reload failed: worker 7 (pid 123)
        /// exited with status 3 before it was ready: ...; still serving with
        /// worker 6 (pid 120)`).
        reason: String,
    },
    /// The control socket of a service could not be used.
    #[error("control socket {socket:?}: {reason}")]
    Control {
        /// The socket's path.
        socket: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl Error {
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The process exit status that fits this error: 2 for a misuse of the
    /// worker environment, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::WorkerEnv { .. } => 2,
            _ => 1,
        }
    }
}
