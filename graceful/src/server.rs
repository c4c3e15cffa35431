//! The public builder, [`Server`]: collects options and registrations,
//! validates them into a `Config`, and hands each role what it needs (the
//! master gets the `Config` alone).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Mode, Options};
use crate::handler::IntoHandler;
use crate::registration::{MainOutput, Registration};
use crate::{Error, Signal};

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
#[derive(Debug)]
pub struct Server {
    options: Options,
    registrations: Vec<Registration>,
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
            options: Options::default(),
            registrations: Vec::new(),
        }
    }

    /// How long a stopping worker may drain before its remaining connections
    /// are cut. The master kills a worker that is still alive shortly after.
    pub fn stop_timeout(mut self, timeout: Duration) -> Server {
        self.options.stop_timeout = timeout;
        self
    }

    /// How long a new worker may take to become ready (its `main` returned
    /// and every listener accepts) before it is killed and the reload is
    /// rolled back.
    pub fn ready_timeout(mut self, timeout: Duration) -> Server {
        self.options.ready_timeout = timeout;
        self
    }

    /// How long a draining worker keeps an idle HTTP/1 keep-alive connection
    /// open, so that a request the client is sending right now is still
    /// answered (with `Connection: close`) instead of failing.
    pub fn idle_grace(mut self, grace: Duration) -> Server {
        self.options.idle_grace = grace;
        self
    }

    /// The signals that start a reload (default SIGHUP, SIGUSR1). An empty
    /// list leaves only [`reload()`](crate::reload).
    pub fn reload_signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Server {
        self.options.reload_signals = signals.into_iter().collect();
        self
    }

    /// The signals that stop the service (default SIGTERM, SIGINT).
    pub fn stop_signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Server {
        self.options.stop_signals = signals.into_iter().collect();
        self
    }

    /// Threads of each worker's tokio runtime (default: one per core). Zero
    /// is refused by [`run`](Server::run) with [`Error::InvalidOption`].
    pub fn worker_threads(mut self, threads: usize) -> Server {
        self.options.worker_threads = Some(threads);
        self
    }

    /// How long a new connection may take to start its first request
    /// (default 30 s), and a request head to arrive once it has started.
    /// This covers the protocol sniff, the HTTP/2 preface, and a TLS
    /// connection after its handshake: a client that connects and sends
    /// nothing is closed after it. A TLS handshake itself is bounded by
    /// 10 s, or by this if it is shorter.
    pub fn header_timeout(mut self, timeout: Duration) -> Server {
        self.options.header_timeout = timeout;
        self
    }

    /// How long a keep-alive connection (HTTP/1 or HTTP/2) may go without a
    /// new request before it is closed politely (default 60 s): a response
    /// in progress finishes first, and an HTTP/2 client gets GOAWAY. For
    /// HTTP/1 the [header timeout](Server::header_timeout) bounds that wait
    /// too, so the shorter applies. The TCP sockets of HTTP/2 connections
    /// also get the kernel's keep-alive probes, so one whose peer vanished
    /// is closed within about 40 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> Server {
        self.options.idle_timeout = timeout;
        self
    }

    /// Connections each serving process holds open at most (default
    /// 10,000; lowered to fit the open-file limit). Beyond it, new
    /// connections wait in the listening socket's backlog instead of
    /// exhausting descriptors.
    pub fn max_connections(mut self, connections: usize) -> Server {
        self.options.max_connections = connections;
        self
    }

    /// The largest request head, in bytes (default 64 KiB, at least 8 KiB);
    /// a larger one is answered `431 Request Header Fields Too Large`.
    pub fn max_header_size(mut self, bytes: usize) -> Server {
        self.options.max_header_size = bytes;
        self
    }

    /// Old workers that may drain at once (default 4). A reload that would
    /// leave more cuts the oldest draining worker (SIGKILL), logged and
    /// counted, so that reloads in quick succession while clients hold long
    /// requests cannot pile up processes: with the default, a service has
    /// at most the master, one serving worker, one starting and four
    /// draining.
    pub fn max_draining(mut self, workers: usize) -> Server {
        self.options.max_draining = workers;
        self
    }

    /// Reloads when the executable file is replaced (a new build renamed or
    /// linked over it), once the file has been quiet for 300 ms and no
    /// writer holds it open, as for a development loop (default off). A broken build is rolled back like
    /// any failed reload. `GRACEFUL_WATCH=1` or `0` overrides it. Master mode
    /// on Linux only (the master watches the file's directory with inotify,
    /// with no thread and no periodic wake-up); elsewhere it is logged as
    /// unavailable.
    pub fn watch(mut self, on: bool) -> Server {
        self.options.watch = on;
        self
    }

    /// The master's control socket (default none): a Unix socket, created
    /// owner-only, on which `graceful reload` waits for a reload's outcome
    /// and `graceful status` reads the service's state (see the README's
    /// section for operators). `GRACEFUL_CONTROL_SOCKET` overrides it (empty:
    /// none). A stale socket left by a master that died is replaced; any
    /// other file at the path, or a socket a running master answers on, is
    /// an error naming the path. Master mode only.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Server {
        self.options.control_socket = Some(path.into());
        self
    }

    /// Checks that the serving worker's runtime answers, every `period`
    /// (default off; at least 100 ms): the master sends a check over the
    /// worker's control channel, which the worker answers from its async
    /// runtime. A worker that has not answered by the next check (its
    /// runtime is wedged, or the process is stopped) is logged, killed with
    /// its process group and replaced as a crashed worker would be, while
    /// the listeners stay open. Under systemd with `WatchdogSec=`, the period
    /// is a quarter of `WATCHDOG_USEC` whatever is set here, and `WATCHDOG=1`
    /// is sent only when the serving worker answers. Master mode only.
    pub fn watchdog(mut self, period: Duration) -> Server {
        self.options.watchdog = Some(period);
        self
    }

    /// Whether the master upgrades itself in place on reload (default on):
    /// once a reload's new worker is ready, the master re-executes the
    /// executable it runs (keeping its PID, its listeners, its workers and
    /// its control socket), so that the new build's code and options, such
    /// as `stop_timeout` or the reload signals, apply from that reload on.
    /// It does so only when the new build says it can read the master's
    /// state and, run in a check role, has read it; otherwise the master
    /// keeps its version and logs why. `GRACEFUL_UPGRADE_MASTER=1` or `0`
    /// overrides it. Master mode only. With the builder, code before
    /// `run()` also runs in that check, a short-lived process.
    pub fn upgrade_master(mut self, on: bool) -> Server {
        self.options.upgrade_master = on;
        self
    }

    /// Reload when one of these files or directories changes: a
    /// certificate renewed by certbot, a Kubernetes Secret or ConfigMap
    /// volume whose `..data` symlink is swapped, a configuration file
    /// rewritten in place. The master watches each path's directory with
    /// inotify in its poll set (Linux; no thread, no periodic wake-up) and
    /// reloads once the changes have been quiet for 300 ms. A path's
    /// directory must exist when the master starts. A new worker that fails
    /// on the new files (a bad certificate) is rolled back as any failed
    /// reload; the log names the path that changed. `GRACEFUL_WATCH_PATHS`
    /// (paths separated by `:`) overrides it.
    pub fn watch_paths<P: Into<PathBuf>>(mut self, paths: impl IntoIterator<Item = P>) -> Server {
        self.options.watch_paths = paths.into_iter().map(Into::into).collect();
        self
    }

    /// On a stop signal, how long to keep accepting and serving before the
    /// drain, while [`health`](crate::health) and [`is_ready`](crate::is_ready)
    /// report the process as stopping (default 0: drain at once). Load
    /// balancers and Kubernetes take a replica out of rotation some seconds
    /// after it is told to stop; until then new connections keep coming,
    /// and are served. A second stop signal skips the rest of the delay.
    /// It applies in master and single mode; a reload is not delayed.
    /// `GRACEFUL_SHUTDOWN_DELAY` (`"5s"`, `"500ms"`) overrides it.
    pub fn shutdown_delay(mut self, delay: Duration) -> Server {
        self.options.shutdown_delay = delay;
        self
    }

    /// Workers serve as this user, given by name or uid, while the master
    /// stays as it was started (root). Each worker runs `main` and takes its
    /// listeners with the master's privileges, so root-only files (a TLS
    /// key, a configuration) can be read there. Before it accepts a
    /// connection or reports ready, it sets its supplementary groups to the
    /// user's (none for a uid with no entry in the user database), its gid
    /// to [`group`](Server::group) or the user's, and its real, effective
    /// and saved uids to the user's, on every thread; `no_new_privs` is set
    /// at its start. If it could take root back (`setuid(0)` succeeds), it
    /// aborts.
    ///
    /// The master checks at its start that the user exists, is not root,
    /// and can be taken: the master must be root, or already that user. The
    /// option needs master mode and Linux. `GRACEFUL_USER` in the
    /// environment overrides it; an empty value turns it off.
    ///
    /// ```no_run
    /// # async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, std::convert::Infallible> { todo!() }
    /// graceful::Server::new()
    ///     .user("www-data")
    ///     .register(":443", hello)
    ///     .run_and_exit(|| async {});
    /// ```
    pub fn user(mut self, user: impl Into<String>) -> Server {
        self.options.user = Some(user.into());
        self
    }

    /// The group workers serve as, by name or gid, with
    /// [`user`](Server::user) (which it needs); by default the user's
    /// primary group. `GRACEFUL_GROUP` in the environment overrides it; an
    /// empty value turns it off.
    pub fn group(mut self, group: impl Into<String>) -> Server {
        self.options.group = Some(group.into());
        self
    }

    /// The application's build, such as `"hello 1.4.2"` or a commit hash:
    /// each worker reports it to the master, and `graceful status` shows it
    /// beside the worker, as does the answer of `graceful reload` and the
    /// log line of a worker that became ready. A deploy script can so tell
    /// whether the new build serves. `#[graceful::main]` sets it to the
    /// package's name and version (`CARGO_PKG_NAME`, `CARGO_PKG_VERSION`)
    /// unless its `version` option says otherwise. One line of at most 100
    /// bytes. Master mode only.
    pub fn version(mut self, version: impl Into<String>) -> Server {
        self.options.version = Some(version.into());
        self
    }

    /// `#[graceful::main]`'s default `version`: the package's name and
    /// version, where the build tool set them.
    #[doc(hidden)]
    pub fn __package_version(self, name: Option<&str>, version: Option<&str>) -> Server {
        match crate::config::package_version(name, version) {
            Some(version) => self.version(version),
            None => self,
        }
    }

    /// Master/worker processes (the default) or a single process; see
    /// [`Mode`]. The environment variable `GRACEFUL_MODE` overrides it.
    pub fn mode(mut self, mode: Mode) -> Server {
        self.options.mode = mode;
        self
    }

    /// Writes the service's PID to `path` (atomically, by rename) and
    /// removes the file on stop. In master mode that is the master's PID,
    /// written at start, which never changes. In single mode it is the
    /// serving process's PID, written when it is ready and rewritten with
    /// each successor's PID when the successor takes over. A path that cannot
    /// be written is an error that stops the start.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Server {
        self.options.pid_file = Some(path.into());
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

    /// Runs the service like [`run_with`](Server::run_with), then exits the
    /// process with its status: 0 after a clean stop; otherwise the error is
    /// logged once (a failed start is already reported where it belongs) and
    /// the status is [`Error::exit_code`]. This is what `#[graceful::main]`
    /// expands to, and the way to write the same `main` without the macro:
    ///
    /// ```no_run
    /// # use std::convert::Infallible;
    /// # async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> { todo!() }
    /// fn main() {
    ///     graceful::Server::new().run_and_exit(|| async {
    ///         graceful::register!(":9222", hello);
    ///     })
    /// }
    /// ```
    pub fn run_and_exit<F, Fut>(self, main: F) -> !
    where
        F: FnOnce() -> Fut,
        Fut: Future,
        Fut::Output: MainOutput,
    {
        let code = match self.run_with(main) {
            Ok(()) => 0,
            // Already reported (by the master, or to it).
            Err(e @ (Error::WorkerStart { .. } | Error::StartFailed { .. })) => e.exit_code(),
            Err(e) => {
                crate::log::log!("{e}");
                e.exit_code()
            }
        };
        std::process::exit(code)
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
        let config = self.options.validate()?;
        let registrations = self.registrations;
        #[cfg(not(unix))]
        {
            // Checked even here, so that a typo is not silently ignored.
            Mode::from_env()?;
            crate::portable::run(&config, registrations, main)
        }
        #[cfg(unix)]
        {
            use crate::role::Role;
            match Role::detect(config.mode)? {
                Role::Master => {
                    // The master runs no user code: the registrations, and
                    // the handlers in them, are dropped here unused.
                    drop(registrations);
                    crate::master::run(config)
                }
                Role::Single => crate::single::run(&config, registrations, None, main),
                Role::Worker(parent) => crate::worker::run(&config, registrations, parent, main),
                Role::Successor { parent, inherited } => {
                    crate::single::run(&config, registrations, Some((parent, inherited)), main)
                }
                Role::ResumedMaster(state) => {
                    drop(registrations);
                    crate::master::resume(config, state)
                }
                Role::CheckState(state) => {
                    drop(registrations);
                    crate::master::check_state(state)
                }
            }
        }
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
