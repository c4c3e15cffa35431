//! Zero-downtime reloads for hyper servers.
//!
//! A service annotated with `#[graceful::main]` runs as two kinds of process.
//! The **master** is the process you start: it keeps the PID that systemd or
//! supervisor watches, holds every listening socket, and runs no code of
//! yours. **Workers** run your `main`, serve HTTP/1.1 and HTTP/2 on the
//! sockets the master hands them, and are replaced on reload: replace the
//! binary, send `SIGHUP`, and a new worker starts from the new file. Only when
//! it is ready is the old one told to drain. If it fails to start, the old one
//! keeps serving.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use hyper::body::Incoming;
//!
//! async fn hello(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
//!     Ok(Response::new(format!("Hello, {}\n", req.uri().path())))
//! }
//!
//! #[graceful::main]
//! async fn main() {
//!     graceful::register!(":9222", hello);
//! }
//! ```
//!
//! Then `kill -HUP <pid>` reloads with zero failed requests, and `kill -TERM
//! <pid>` (or Ctrl-C) drains in-flight requests for up to `stop_timeout` and
//! exits 0.
//!
//! Everything the macros do is reachable without them: see [`Server`] and
//! [`listen_and_serve`].
//!
//! Also here:
//!
//! - TLS with rustls (the default `tls` feature): `register!(addr, app, tls =
//!   TlsConfig::from_pem_files(cert, key))` or [`listen_and_serve_tls`]. Each
//!   new worker reads the files again, so rotating a certificate is "replace
//!   the files, send SIGHUP".
//! - For fleets: [`health`] (`/livez`, `/readyz`) and [`is_ready`],
//!   `shutdown_delay` (keep serving after a stop signal while `/readyz`
//!   says 503), `watch_paths` (reload when a certificate or configuration
//!   file changes) and [`metrics`] in the Prometheus text format.
//! - [`shutdown_signal()`] for handlers that hold connections open
//!   (WebSocket, server-sent events).
//! - Least privilege on Linux: with `#[graceful::main(user = "www-data")]`
//!   the master stays root, and each worker gives up root on every thread
//!   once it has run `main` and received its listeners, before it serves
//!   anyone. See [`Server::user`].
//! - Single-process mode, with no master: `#[graceful::main(mode = "single")]`
//!   or `GRACEFUL_MODE=single`. See [`Mode`] for the trade-offs.
//! - On non-Unix targets the crate serves in one process without reloads.

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The crate's README (its crates.io page), doc-tested with the crate.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

// Master/worker processes, reloads, systemd and the successor handover are
// Unix-only; elsewhere the crate serves in one process without reload
// (`portable`). Modules are listed from the public surface down to the
// leaves; ARCHITECTURE.md has the map of who uses whom.
#[cfg(unix)]
mod activation;
mod addr;
mod config;
#[cfg(unix)]
mod control;
#[cfg(unix)]
pub mod ctl;
mod drain;
mod error;
#[cfg(unix)]
mod exec;
#[cfg(unix)]
mod fd;
mod handler;
mod health;
mod http;
#[cfg(unix)]
mod listeners;
mod log;
#[cfg(unix)]
mod master;
mod metrics;
#[cfg(unix)]
mod notify;
#[cfg(unix)]
mod pidfile;
#[cfg(not(unix))]
mod portable;
#[cfg(target_os = "linux")]
mod privilege;
mod registration;
#[cfg(unix)]
mod role;
mod serve;
mod server;
mod signal;
#[cfg(unix)]
mod single;
mod slots;
#[cfg(unix)]
mod state;
mod status;
#[cfg(feature = "tls")]
mod tls;
#[cfg(unix)]
mod worker;

pub use config::Mode;
pub use drain::{is_shutting_down, shutdown_signal};
pub use error::Error;
pub use handler::{marker, BoxError, Connection, Handler, IntoHandler, Peer};
pub use health::{health, is_ready};
pub use metrics::metrics;
pub use registration::{MainOutput, Registration};
pub use server::Server;
pub use signal::Signal;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::TlsConfig;
/// The rustls version graceful serves TLS with, for building a
/// [`rustls::ServerConfig`] by hand.
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tokio_rustls::rustls;

/// Turns `async fn main` into the master/worker bootstrap.
///
/// The master (the process you start) never runs the body of `main`: it
/// checks for the worker marker before it builds any runtime. Each worker
/// builds a multi-threaded tokio runtime, runs the body, serves every
/// listener registered with [`register!`], and tells the master it is ready
/// once the body has returned successfully and every listener accepts.
///
/// All options are optional:
///
/// | option | default | meaning |
/// | --- | --- | --- |
/// | `stop_timeout = "20s"` | `"20s"` | how long a stopping worker drains before open connections are cut |
/// | `ready_timeout = "30s"` | `"30s"` | how long a new worker may take to become ready before the reload is rolled back |
/// | `shutdown_delay = "5s"` | `"0s"` | on a stop signal, keep accepting and serving this long, with [`health`] answering `/readyz` 503, before the drain; a second stop signal skips it (`GRACEFUL_SHUTDOWN_DELAY` overrides it); see [`Server::shutdown_delay`] |
/// | `idle_grace = "500ms"` | `"500ms"` | how long a draining worker keeps idle HTTP/1 keep-alive connections |
/// | `reload = [SIGHUP, SIGUSR1]` | `[SIGHUP, SIGUSR1]` | signals that reload; `[]` leaves only [`reload()`] |
/// | `stop = [SIGTERM, SIGINT]` | `[SIGTERM, SIGINT]` | signals that stop |
/// | `worker_threads = 4` | one per core | threads of each worker's runtime |
/// | `mode = "single"` | `"master"` | one process and no master; see [`Mode`] (`GRACEFUL_MODE` overrides it) |
/// | `pid_file = "/run/app.pid"` | none | write the serving PID there; see [`Server::pid_file`] |
/// | `header_timeout = "30s"` | `"30s"` | a connection must start a request within it; see [`Server::header_timeout`] |
/// | `idle_timeout = "60s"` | `"60s"` | a connection with no new request for it is closed politely; see [`Server::idle_timeout`] |
/// | `max_connections = 10000` | `10000` | connections per serving process; see [`Server::max_connections`] |
/// | `max_header_size = 65536` | `65536` | the largest request head, in bytes; see [`Server::max_header_size`] |
/// | `max_draining = 4` | `4` | old workers draining at once; see [`Server::max_draining`] |
/// | `watch = true` | `false` | reload when the executable is replaced; see [`Server::watch`] |
/// | `watch_paths = ["/etc/tls/"]` | none | reload when one of these files or directories changes (a renewed certificate, a Kubernetes Secret or ConfigMap volume); `GRACEFUL_WATCH_PATHS` (`:`-separated) overrides it; see [`Server::watch_paths`] |
/// | `control_socket = "/run/app/graceful.sock"` | none | where `graceful reload` and `graceful status` reach the master (`GRACEFUL_CONTROL_SOCKET` overrides it); see [`Server::control_socket`] and [`ctl`] |
/// | `watchdog = "10s"` | off (under systemd: a quarter of `WatchdogSec=`) | check that the serving worker's runtime answers, and replace it if not; see [`Server::watchdog`] |
/// | `user = "www-data"` | none | workers serve as this user (name or uid) once they have their listeners; the master stays root (`GRACEFUL_USER` overrides it); see [`Server::user`] |
/// | `group = "www-data"` | the user's | the group workers serve as, with `user` (`GRACEFUL_GROUP` overrides it); see [`Server::group`] |
/// | `version = "1.4.2+8c0ffee"` | the package's name and version | the build each worker reports, named by `graceful reload`, `graceful status` and the "ready" log line; see [`Server::version`] |
/// | `upgrade_master = false` | `true` | whether a reload also re-executes the master in place, so the new build's code and options apply (`GRACEFUL_UPGRADE_MASTER` overrides it); see [`Server::upgrade_master`] |
///
/// Durations are written like `"500ms"`, `"20s"`, `"1m30s"` or `"4h"`.
/// Mistakes are compile errors on the offending token.
///
/// ```no_run
/// # use std::convert::Infallible;
/// # async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> { todo!() }
/// #[graceful::main(stop_timeout = "5s", reload = [SIGHUP], stop = [SIGTERM, SIGINT, SIGQUIT])]
/// async fn main() -> Result<(), std::io::Error> {
///     let addr = std::env::args().nth(1).unwrap_or_else(|| ":9222".into());
///     graceful::register!(addr, hello);
///     Ok(())
/// }
/// ```
///
/// The equivalent code without the macro:
///
/// ```no_run
/// # use std::convert::Infallible;
/// # use std::time::Duration;
/// # async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> { todo!() }
/// use graceful::{Server, Signal};
///
/// fn main() {
///     let server = Server::new()
///         .stop_timeout(Duration::from_secs(5))
///         .reload_signals([Signal::SIGHUP])
///         .stop_signals([Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT]);
///     server.run_and_exit(|| async {
///         let addr = std::env::args().nth(1).unwrap_or_else(|| ":9222".into());
///         graceful::register!(addr, hello);
///         Ok::<(), std::io::Error>(())
///     })
/// }
/// ```
pub use graceful_macros::main;

/// Declares a listener and the handler that serves it.
///
/// Call it in `main` or in any function `main` calls, as often as needed,
/// before `main` returns. The worker asks the master for every registered
/// address once `main` has returned; if any of them fails (a bad address, a
/// port in use), the worker's start fails as a whole, with every failing
/// address and the reason, and nothing is served.
///
/// Addresses:
///
/// | form | meaning |
/// | --- | --- |
/// | `"127.0.0.1:8080"`, `"[::1]:8080"` | that IP and port |
/// | `":8080"` | every interface, IPv4 and IPv6, as in Go |
/// | `"localhost:8080"` | the first address of the name (IPv4 preferred) |
/// | `"127.0.0.1:0"` | a free port, bound once and kept across reloads; the master logs it |
/// | `"unix:/run/app.sock"` | a Unix socket; a stale socket file is replaced, anything else at the path is an error |
/// | `"systemd:web"` | the socket systemd passed with `FileDescriptorName=web`; an address such as `":8080"` also takes an activated socket listening there |
/// | `"udp:127.0.0.1:5353"`, `"udp:[::1]:5353"`, `"udp::5353"` | a UDP socket, for a datagram handler |
/// | `"unixgram:/run/app.sock"` | a Unix datagram socket, for a datagram handler |
///
/// Handlers: an `async fn(Request<Incoming>) -> Result<Response<B>, E>`, a
/// closure of that shape (annotate its argument type), any
/// `hyper::service::Service`, and any `tower::Service` such as
/// `axum::Router`. A handler error or panic becomes a logged 500.
///
/// For any other protocol over TCP or a Unix socket (and TLS with `tls =`),
/// a stream handler `async fn(Connection, Peer)` is given each accepted
/// connection. It gets the same listener handover, readiness gate and drain:
/// its connections count in the drain, it sees [`shutdown_signal()`] to end
/// them politely, and it is cut at `stop_timeout`. The HTTP timeouts do not
/// apply to it.
///
/// ```no_run
/// use graceful::{Connection, Peer};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// async fn banner(mut conn: Connection, peer: Peer) {
///     let _ = conn.write_all(format!("hello, {peer:?}\n").as_bytes()).await;
///     let mut buf = [0u8; 1024];
///     while let Ok(n @ 1..) = conn.read(&mut buf).await {
///         let _ = conn.write_all(&buf[..n]).await;
///     }
/// }
///
/// #[graceful::main]
/// async fn main() {
///     graceful::register!(":9223", banner);
/// }
/// ```
///
/// For datagrams, a handler `async fn(tokio::net::UdpSocket)` on a `udp:`
/// address (or `async fn(tokio::net::UnixDatagram)` on `unixgram:`) is
/// given the socket itself once the worker is ready, and reads until
/// [`shutdown_signal()`]. Every worker shares the socket the master holds,
/// and the old one is told to stop only once the new one reads, so a reload
/// loses no datagram that the handler leaves in the socket. A handler that
/// returns or panics while serving is started again after a second.
///
/// ```no_run
/// async fn echo(socket: tokio::net::UdpSocket) {
///     let mut buf = [0u8; 2048];
///     loop {
///         let received = tokio::select! {
///             received = socket.recv_from(&mut buf) => received,
///             () = graceful::shutdown_signal() => return,
///         };
///         // An error is an ICMP report about an earlier answer.
///         if let Ok((n, peer)) = received {
///             let _ = socket.send_to(&buf[..n], peer).await;
///         }
///     }
/// }
///
/// #[graceful::main]
/// async fn main() {
///     graceful::register!("udp::5353", echo);
/// }
/// ```
///
/// ```no_run
/// # use std::convert::Infallible;
/// # use http::{Request, Response};
/// # use hyper::body::Incoming;
/// # async fn hello(_: Request<Incoming>) -> Result<Response<String>, Infallible> { todo!() }
/// #[graceful::main]
/// async fn main() {
///     graceful::register!(":9222", hello);
///     graceful::register!("unix:/tmp/admin.sock", |_req: Request<Incoming>| async {
///         Ok::<_, Infallible>(Response::new("ok\n".to_string()))
///     });
/// }
/// ```
/// Options follow the handler as `name = value` and are the methods of
/// [`Registration`]: `register!("unix:/run/app.sock", app, unix_mode = 0o660)`,
/// or `register!(":8443", app, tls = TlsConfig::from_pem_files("cert.pem", "key.pem"))`
/// for TLS (see [`TlsConfig`]; needs the default `tls` feature).
#[macro_export]
macro_rules! register {
    ($addr:expr, $handler:expr $(,)?) => {
        $crate::__private::register($crate::Registration::new($addr, $handler))
    };
    ($addr:expr, $handler:expr, $($option:ident = $value:expr),+ $(,)?) => {
        $crate::__private::register($crate::Registration::new($addr, $handler)$(.$option($value))+)
    };
}

/// Asks the master to reload, exactly as a reload signal does, and returns
/// once the request is sent; [`reload_and_wait`] also waits for the outcome.
///
/// It goes over the worker's control channel, not through a signal, so it
/// works when the master is PID 1 in a container. In single-process mode it
/// starts a successor, as a reload signal does there. Returns
/// [`Error::NotManaged`] outside a worker or single-mode process, and
/// [`Error::Unsupported`] on non-Unix targets.
pub fn reload() -> Result<(), Error> {
    #[cfg(unix)]
    return request_reload(None);
    #[cfg(not(unix))]
    return Err(Error::Unsupported {
        what: "graceful::reload()",
    });
}

/// Asks for a reload: a single-mode process reloads itself, a worker asks
/// its master. `waiter` is told the outcome.
#[cfg(unix)]
fn request_reload(
    waiter: Option<tokio::sync::oneshot::Sender<status::Outcome>>,
) -> Result<(), Error> {
    match single::request_reload(waiter) {
        Ok(()) => Ok(()),
        Err(waiter) => worker::request_reload(waiter).unwrap_or(Err(Error::NotManaged)),
    }
}

/// A reload that took effect: the generation that now serves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// The new worker's generation (1 is the first worker; in single mode,
    /// the successor's generation).
    pub generation: u64,
    /// The PID of the process that now serves.
    pub pid: u32,
    /// What the master says about it, for a person: `generation 4 (pid
    /// 31207) is serving app 1.4.2; it was ready in 38 ms`.
    pub message: String,
    /// The build the new worker reported (its [`Server::version`]), where
    /// it did. Told to the `graceful` command ([`ctl::reload`]) and to
    /// [`reload_and_wait`], in a worker and in single mode; not to a worker
    /// started by a master of a build older than this one (the first
    /// reload after such an upgrade).
    pub version: Option<String>,
}

/// Asks for a reload, as [`reload`] does, and resolves to its outcome: the
/// new generation and its PID once it serves, or [`Error::ReloadFailed`]
/// with the reason once the reload was rolled back.
///
/// A request made while a reload runs is covered by the next one (as with
/// signals), and resolves to that reload's outcome. The calling process is
/// the old one: it is told the outcome before it drains, so until it has
/// stopped accepting, a new connection may still reach it (the `graceful
/// reload` command, outside the service, returns only once it has). In
/// single mode, a request made while a successor starts
/// resolves to that successor's outcome. The wait is bounded by the
/// master's `ready_timeout` (twice it, for a request that waits behind
/// another reload).
///
/// ```no_run
/// # async fn deploy() -> Result<(), graceful::Error> {
/// let reloaded = graceful::reload_and_wait().await?;
/// println!("now serving: pid {}", reloaded.pid);
/// # Ok(())
/// # }
/// ```
pub async fn reload_and_wait() -> Result<Reloaded, Error> {
    #[cfg(unix)]
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        request_reload(Some(tx))?;
        outcome(rx.await)
    }
    #[cfg(not(unix))]
    return Err(Error::Unsupported {
        what: "graceful::reload_and_wait()",
    });
}

#[cfg(unix)]
fn outcome(
    answer: Result<status::Outcome, tokio::sync::oneshot::error::RecvError>,
) -> Result<Reloaded, Error> {
    match answer {
        Ok(outcome) => {
            let message = outcome.line();
            match outcome {
                status::Outcome::Reloaded {
                    generation,
                    pid,
                    build,
                    ..
                } => Ok(Reloaded {
                    generation,
                    pid,
                    version: build,
                    message,
                }),
                status::Outcome::Failed(reason) => Err(Error::ReloadFailed { reason }),
            }
        }
        Err(_) => Err(Error::ReloadFailed {
            reason: "no outcome: the master exited, or this process is stopping".into(),
        }),
    }
}

/// The drop-in for Go's `http.ListenAndServe`: serves `handler` on `addr`
/// with the default options, with zero-downtime reloads.
///
/// ```no_run
/// # use std::convert::Infallible;
/// # async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> { todo!() }
/// fn main() -> Result<(), graceful::Error> {
///     graceful::listen_and_serve(":9222", hello)
/// }
/// ```
pub fn listen_and_serve<H, M>(addr: &str, handler: H) -> Result<(), Error>
where
    H: IntoHandler<M>,
{
    Server::new().register(addr, handler).run()
}

/// The drop-in for Go's `http.ListenAndServeTLS`: serves `handler` over TLS
/// (HTTP/1.1 and HTTP/2 by ALPN) on `addr`, with the certificate chain and
/// key read from PEM files by every worker, so a reload picks up rotated
/// files.
///
/// ```no_run
/// # use std::convert::Infallible;
/// # async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> { todo!() }
/// fn main() -> Result<(), graceful::Error> {
///     graceful::listen_and_serve_tls(":8443", "cert.pem", "key.pem", hello)
/// }
/// ```
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub fn listen_and_serve_tls<H, M>(
    addr: &str,
    cert: impl AsRef<std::path::Path>,
    key: impl AsRef<std::path::Path>,
    handler: H,
) -> Result<(), Error>
where
    H: IntoHandler<M>,
{
    let tls = TlsConfig::from_pem_files(cert, key);
    Server::new()
        .add_registration(Registration::new(addr, handler).tls(tls))
        .run()
}

/// Used by the `register!` expansion. Not public API.
#[doc(hidden)]
pub mod __private {
    use crate::Registration;

    pub fn register(registration: Registration) {
        crate::registration::register(registration);
    }
}
