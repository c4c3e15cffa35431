//! The public builder, [`Server`], and what it registers, [`Registration`].

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::handler::{Handler, IntoHandler};
#[cfg(unix)]
use crate::{master, single, worker};
use crate::{Error, Signal};

/// One listener and the handler that serves it.
///
/// Made by `register!` or by hand and added with [`Server::add_registration`].
pub struct Registration {
    pub(crate) addr: String,
    pub(crate) handler: Handler,
    pub(crate) unix_mode: Option<u32>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::TlsConfig>,
}

impl Registration {
    /// A listener on `addr` (see [`register!`](crate::register) for the
    /// address forms) served by `handler`.
    pub fn new<H, M>(addr: impl Into<String>, handler: H) -> Registration
    where
        H: IntoHandler<M>,
    {
        Registration {
            addr: addr.into(),
            handler: handler.into_handler(),
            unix_mode: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The permission bits of a `unix:` socket file, such as `0o660`, set by
    /// the master when it binds the socket (and again on each reload).
    pub fn unix_mode(mut self, mode: u32) -> Registration {
        self.unix_mode = Some(mode);
        self
    }

    /// Serves this listener over TLS (HTTP/1.1 and HTTP/2 by ALPN). A
    /// [`TlsConfig`](crate::TlsConfig) made from PEM files is read again by
    /// every new worker, so a reload picks up rotated certificates; a
    /// `rustls::ServerConfig` is used as given.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: impl Into<crate::TlsConfig>) -> Registration {
        self.tls = Some(tls.into());
        self
    }

    /// The address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Registration {
    #[cfg(feature = "tls")]
    fn tls_debug(&self) -> &dyn fmt::Debug {
        &self.tls
    }

    #[cfg(not(feature = "tls"))]
    fn tls_debug(&self) -> &dyn fmt::Debug {
        &"(the tls feature is off)"
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("addr", &self.addr)
            .field("unix_mode", &self.unix_mode)
            .field("tls", &self.tls_debug())
            .finish_non_exhaustive()
    }
}

/// Registrations made with `register!` while `main` runs.
static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    open: true,
    list: Vec::new(),
});

struct Registry {
    open: bool,
    list: Vec<Registration>,
}

pub(crate) fn register(registration: Registration) {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if registry.open {
        registry.list.push(registration);
    } else {
        crate::log::log!(
            "register!({:?}) was called after the worker started serving and is ignored; \
             call register! before main returns",
            registration.addr
        );
    }
}

/// Takes every registration made so far and refuses later ones.
pub(crate) fn take_registrations() -> Vec<Registration> {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry.open = false;
    std::mem::take(&mut registry.list)
}

/// A graceful service: options, listeners, and [`run`](Server::run).
///
/// `#[graceful::main]` expands into this builder; use it directly when you
/// prefer no macro.
///
/// ```no_run
/// use std::convert::Infallible;
/// use std::time::Duration;
///
/// async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> {
///     Ok(http::Response::new("hello\n".to_string()))
/// }
///
/// fn main() -> Result<(), graceful::Error> {
///     graceful::Server::new()
///         .stop_timeout(Duration::from_secs(20))
///         .register(":9222", hello)
///         .run()
/// }
/// ```
///
/// Code before `run()` runs in the master and in every worker; code after
/// it runs when the service has stopped. Keep both small, or use the macro,
/// whose `main` body runs in workers only.
pub struct Server {
    pub(crate) stop_timeout: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) idle_grace: Duration,
    pub(crate) reload_signals: Vec<Signal>,
    pub(crate) stop_signals: Vec<Signal>,
    pub(crate) worker_threads: Option<usize>,
    pub(crate) mode: Mode,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) registrations: Vec<Registration>,
}

/// How a service runs: a master and workers (the default), or one process.
///
/// | | `Master` (default) | `Single` |
/// | --- | --- | --- |
/// | processes | a master (no user code) and one worker; two during a reload | one; two during a reload |
/// | PID across reloads | the same | changes: announced to systemd with `MAINPID=` and written to `pid_file` |
/// | process managers | any (systemd, supervisor, a container's PID 1) | systemd (`Type=notify`, `NotifyAccess=all`) or none; not supervisor or a container's PID 1, which lose track of it |
///
/// `GRACEFUL_MODE=single` or `GRACEFUL_MODE=master` in the environment
/// overrides the mode set in code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// A master keeps the PID and the sockets; workers serve.
    #[default]
    Master,
    /// One process binds and serves; a reload starts a successor that
    /// inherits the sockets, and the old process drains once it is ready.
    Single,
}

/// The environment variable that overrides [`Server::mode`].
pub(crate) const ENV_MODE: &str = "GRACEFUL_MODE";

impl Mode {
    fn from_env() -> Result<Option<Mode>, Error> {
        match std::env::var_os(ENV_MODE) {
            None => Ok(None),
            Some(value) => match value.to_str() {
                Some("master") => Ok(Some(Mode::Master)),
                Some("single") => Ok(Some(Mode::Single)),
                _ => Err(Error::InvalidMode {
                    value: value.to_string_lossy().into_owned(),
                }),
            },
        }
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("stop_timeout", &self.stop_timeout)
            .field("ready_timeout", &self.ready_timeout)
            .field("idle_grace", &self.idle_grace)
            .field("reload_signals", &self.reload_signals)
            .field("stop_signals", &self.stop_signals)
            .field("worker_threads", &self.worker_threads)
            .field("mode", &self.mode)
            .field("pid_file", &self.pid_file)
            .field("registrations", &self.registrations)
            .finish()
    }
}

impl Default for Server {
    fn default() -> Server {
        Server::new()
    }
}

impl Server {
    /// The defaults: `stop_timeout` 20 s, `ready_timeout` 30 s, `idle_grace`
    /// 500 ms, reload on SIGHUP and SIGUSR1, stop on SIGTERM and SIGINT.
    pub fn new() -> Server {
        Server {
            stop_timeout: Duration::from_secs(20),
            ready_timeout: Duration::from_secs(30),
            idle_grace: Duration::from_millis(500),
            reload_signals: vec![Signal::SIGHUP, Signal::SIGUSR1],
            stop_signals: vec![Signal::SIGTERM, Signal::SIGINT],
            worker_threads: None,
            mode: Mode::Master,
            pid_file: None,
            registrations: Vec::new(),
        }
    }

    /// How long a stopping worker may drain before its remaining connections
    /// are cut. The master kills a worker that is still alive shortly after.
    pub fn stop_timeout(mut self, timeout: Duration) -> Server {
        self.stop_timeout = timeout;
        self
    }

    /// How long a new worker may take to become ready (its `main` returned
    /// and every listener accepts) before it is killed and the reload is
    /// rolled back.
    pub fn ready_timeout(mut self, timeout: Duration) -> Server {
        self.ready_timeout = timeout;
        self
    }

    /// How long a draining worker keeps an idle HTTP/1 keep-alive connection
    /// open, so that a request the client is sending right now is still
    /// answered (with `Connection: close`) instead of failing.
    pub fn idle_grace(mut self, grace: Duration) -> Server {
        self.idle_grace = grace;
        self
    }

    /// The signals that start a reload (default SIGHUP, SIGUSR1). An empty
    /// list leaves only [`reload()`](crate::reload).
    pub fn reload_signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Server {
        self.reload_signals = signals.into_iter().collect();
        self
    }

    /// The signals that stop the service (default SIGTERM, SIGINT).
    pub fn stop_signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Server {
        self.stop_signals = signals.into_iter().collect();
        self
    }

    /// Threads of each worker's tokio runtime (default: one per core). Zero
    /// is refused by [`run`](Server::run) with [`Error::InvalidOption`].
    pub fn worker_threads(mut self, threads: usize) -> Server {
        self.worker_threads = Some(threads);
        self
    }

    /// Master/worker processes (the default) or a single process; see
    /// [`Mode`]. The environment variable `GRACEFUL_MODE` overrides it.
    pub fn mode(mut self, mode: Mode) -> Server {
        self.mode = mode;
        self
    }

    /// Writes the service's PID to `path` (atomically, by rename) and
    /// removes the file on stop. In master mode that is the master's PID,
    /// written at start, which never changes. In single mode it is the
    /// serving process's PID, written when it is ready and rewritten with
    /// each successor's PID when the successor takes over. A path that cannot
    /// be written is an error that stops the start.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Server {
        self.pid_file = Some(path.into());
        self
    }

    /// Adds a listener on `addr` served by `handler`; see
    /// [`register!`](crate::register).
    pub fn register<H, M>(self, addr: impl Into<String>, handler: H) -> Server
    where
        H: IntoHandler<M>,
    {
        self.add_registration(Registration::new(addr, handler))
    }

    /// Adds a prepared [`Registration`].
    pub fn add_registration(mut self, registration: Registration) -> Server {
        self.registrations.push(registration);
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.worker_threads == Some(0) {
            return Err(Error::InvalidOption {
                option: "worker_threads",
                reason: "a runtime needs at least 1 thread".into(),
            });
        }
        if self.stop_signals.is_empty() {
            return Err(Error::NoStopSignal);
        }
        if let Some(signal) = self
            .reload_signals
            .iter()
            .find(|s| self.stop_signals.contains(s))
        {
            return Err(Error::SignalConflict { signal: *signal });
        }
        Ok(())
    }

    /// Runs the service: as the master in the process you started, as a
    /// worker in the processes the master starts.
    ///
    /// In the master this returns when the service has stopped. In a worker
    /// it returns after the drain, or with an error if the worker's start
    /// failed (already reported to the master).
    pub fn run(self) -> Result<(), Error> {
        self.run_with(|| async {})
    }

    /// Like [`run`](Server::run), and in workers only, first runs `main` on
    /// the worker's runtime; `register!` calls made while it runs are served.
    /// This is what `#[graceful::main]` expands to.
    pub fn run_with<F, Fut>(self, main: F) -> Result<(), Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future,
        Fut::Output: MainOutput,
    {
        self.validate()?;
        #[cfg(not(unix))]
        {
            // Checked even here, so that a typo is not silently ignored.
            Mode::from_env()?;
            crate::portable::run(self, main)
        }
        #[cfg(unix)]
        match worker::WorkerEnv::detect()? {
            // A successor serves in single mode whatever its own mode says:
            // its predecessor hands over to it and exits.
            Some(env) if env.successor => single::run(self, Some(env), main),
            Some(env) => worker::run(self, env, main),
            None => match Mode::from_env()?.unwrap_or(self.mode) {
                Mode::Master => master::run(self),
                Mode::Single => single::run(self, None, main),
            },
        }
    }
}

/// What `main` may return under `#[graceful::main]`: `()` or
/// `Result<(), E>` with `E: Debug`.
pub trait MainOutput {
    /// `Err` with a description when `main` failed.
    fn into_result(self) -> Result<(), String>;
}

impl MainOutput for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Debug> MainOutput for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| format!("main returned an error: {e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_refused_before_anything_starts() {
        let err = Server::new().worker_threads(0).run().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid option worker_threads: a runtime needs at least 1 thread"
        );
        let err = Server::new().stop_signals([]).run().unwrap_err();
        assert!(matches!(err, Error::NoStopSignal), "{err}");
        let err = Server::new()
            .reload_signals([Signal::SIGTERM])
            .run()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("signal SIGTERM is configured both"),
            "{err}"
        );
    }
}
