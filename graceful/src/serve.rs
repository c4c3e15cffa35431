//! Serving: the runtime, the user's `main`, the accept loops and the drain,
//! shared by workers, single-mode processes and the portable fallback.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::task::JoinHandle;

use crate::addr::ListenAddr;
use crate::drain::{self, Tracked};
use crate::handler::{CatchUnwind, Handler};
use crate::log::log;
use crate::server::{take_registrations, MainOutput, Registration};
use crate::{Error, Server};

/// How long a slow client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime a serving process runs on.
pub(crate) fn build_runtime(server: &Server) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = server.worker_threads {
        builder.worker_threads(n);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the tokio runtime: {e}"))
}

/// Runs the user's `main` and returns every registration: the builder's and
/// those `register!` made while `main` ran.
pub(crate) async fn run_main<F, Fut>(
    server: &mut Server,
    main: F,
) -> Result<Vec<Registration>, String>
where
    F: FnOnce() -> Fut,
    Fut: Future,
    Fut::Output: MainOutput,
{
    match CatchUnwind(Box::pin(main())).await {
        Err(panic) => return Err(format!("main panicked: {panic}")),
        Ok(output) => output.into_result()?,
    }
    let mut registrations = std::mem::take(&mut server.registrations);
    registrations.extend(take_registrations());
    if registrations.is_empty() {
        return Err(Error::NoListeners.to_string());
    }
    Ok(registrations)
}

/// Serves every listener, each on its own accept loop.
pub(crate) fn start_serving(served: Vec<Served>, idle_grace: Duration) -> Vec<JoinHandle<()>> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    http.http2().timer(TokioTimer::new());
    let http = Arc::new(http);
    served
        .into_iter()
        .map(|served| tokio::spawn(accept_loop(served, http.clone(), idle_grace)))
        .collect()
}

/// Waits for the drain to start, then for every connection to close, for up
/// to `stop_timeout`, and logs what happened under `name`.
pub(crate) async fn drain(accepting: Vec<JoinHandle<()>>, server: &Server, name: &str) {
    drain::global().subscribe().wait_for(|s| *s).await.ok();
    let started = Instant::now();
    // A connection accepted at the moment the drain starts must be counted
    // before the count is read: wait for every accept loop to have ended
    // (and dropped its listener) first.
    for accept in accepting {
        let _ = accept.await;
    }
    let finished = tokio::time::timeout(server.stop_timeout, drain::global().idle())
        .await
        .is_ok();
    let cut = if finished {
        0
    } else {
        drain::global().active()
    };
    let open = drain::global().handled();
    log!(
        "{name} drained {} connection(s) in {} ms, {} cut at the {:?} stop_timeout",
        open - cut.min(open),
        started.elapsed().as_millis(),
        cut,
        server.stop_timeout,
    );
}

/// A listening socket on the runtime.
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

/// A listener, its handler, and its TLS acceptor if it serves TLS.
pub(crate) struct Served {
    listener: Listener,
    handler: Handler,
    tls: Option<Tls>,
}

#[cfg(feature = "tls")]
type Tls = tokio_rustls::TlsAcceptor;
#[cfg(not(feature = "tls"))]
type Tls = std::convert::Infallible;

/// Loads the registration's TLS configuration: certificate files are read
/// here, by every new worker, so a reload picks up rotated files.
#[cfg(feature = "tls")]
fn load_tls(registration: &Registration) -> Result<Option<Tls>, Error> {
    match &registration.tls {
        None => Ok(None),
        Some(config) => Ok(Some(tokio_rustls::TlsAcceptor::from(config.load()?))),
    }
}

#[cfg(not(feature = "tls"))]
fn load_tls(_: &Registration) -> Result<Option<Tls>, Error> {
    Ok(None)
}

/// Gets a listener for every registration from `source`, which answers a
/// request (`"ADDR"` or `"ADDR\tmode=NNN"`) with a listener. All or
/// nothing: any failure fails the start, with every failing address named.
pub(crate) fn acquire(
    registrations: Vec<Registration>,
    mut source: impl FnMut(&str) -> Result<Listener, String>,
) -> Result<Vec<Served>, String> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for registration in registrations {
        let served = load_tls(&registration).and_then(|tls| {
            let addr = &registration.addr;
            let listen_error = |reason: String| Error::Listen {
                addr: addr.to_string(),
                reason,
            };
            let request = request_for(addr, registration.unix_mode)?;
            let listener = source(&request).map_err(listen_error)?;
            Ok(Served {
                listener,
                handler: registration.handler,
                tls,
            })
        });
        match served {
            Ok(served) => out.push(served),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("; "))
    }
}

/// The listener request for an address: `"ADDR"` in canonical form, with
/// `"\tmode=NNN"` for a Unix socket's mode.
fn request_for(addr: &str, unix_mode: Option<u32>) -> Result<String, Error> {
    let parsed = ListenAddr::parse(addr)?;
    let mut request = parsed.to_string();
    if let Some(mode) = unix_mode {
        if !matches!(parsed, ListenAddr::Unix(_)) {
            return Err(Error::InvalidAddress {
                addr: addr.to_string(),
                reason: "unix_mode applies to \"unix:\" addresses only".into(),
            });
        }
        if mode > 0o7777 {
            return Err(Error::InvalidAddress {
                addr: addr.to_string(),
                reason: format!("unix_mode {mode:#o} is not a file mode (0o0000 to 0o7777)"),
            });
        }
        request.push_str(&format!("\tmode={mode}"));
    }
    Ok(request)
}

/// Errors from `accept` that concern one connection, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::Interrupted
    )
}

async fn accept_loop(
    served: Served,
    http: Arc<auto::Builder<TokioExecutor>>,
    idle_grace: Duration,
) {
    let Served {
        listener,
        handler,
        tls,
    } = served;
    let mut stopping = drain::global().subscribe();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopping.wait_for(|s| *s) => break,
            accepted = accept(&listener) => accepted,
        };
        let conn = Conn {
            handler: handler.clone(),
            http: http.clone(),
            idle_grace,
        };
        match accepted {
            Ok(Accepted::Tcp(stream)) => {
                let _ = stream.set_nodelay(true);
                conn.spawn(Tracked::new(stream), tls.as_ref());
            }
            #[cfg(unix)]
            Ok(Accepted::Unix(stream)) => conn.spawn(Tracked::new(stream), tls.as_ref()),
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                // Out of file descriptors or memory: back off briefly rather
                // than spin; the connection stays queued in the backlog.
                log!("accept failed: {e}; retrying in 50 ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Dropping the listener closes this worker's copy; the master's copy keeps
    // the accept queue for the next generation.
}

/// What serving one accepted connection needs.
struct Conn {
    handler: Handler,
    http: Arc<auto::Builder<TokioExecutor>>,
    idle_grace: Duration,
}

impl Conn {
    /// Serves one accepted connection on its own task, after the TLS
    /// handshake if the listener has TLS. The connection was counted
    /// (`Tracked`) before this is called, so the drain cannot miss it, the
    /// handshake included.
    fn spawn<T>(self, io: Tracked<T>, tls: Option<&Tls>)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            handler,
            http,
            idle_grace,
        } = self;
        match tls {
            None => {
                tokio::spawn(drain::serve_connection(io, handler, http, idle_grace));
            }
            #[cfg(feature = "tls")]
            Some(acceptor) => {
                let handshake = acceptor.accept(io);
                tokio::spawn(async move {
                    // A failed or slow handshake (a scanner, a client that
                    // distrusts the certificate) ends this connection only.
                    // Once the drain starts, a handshake still going on gets
                    // `idle_grace` more, like an idle keep-alive connection.
                    let mut stopping = drain::global().subscribe();
                    let drained = async {
                        let _ = stopping.wait_for(|s| *s).await;
                        tokio::time::sleep(idle_grace).await;
                    };
                    let timeout = crate::tls::HANDSHAKE_TIMEOUT;
                    let stream = tokio::select! {
                        done = tokio::time::timeout(timeout, handshake) => done,
                        _ = drained => return,
                    };
                    if let Ok(Ok(stream)) = stream {
                        drain::serve_connection(stream, handler, http, idle_grace).await;
                    }
                });
            }
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        #[cfg(unix)]
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// A listening socket, as the runtime's listener.
#[cfg(unix)]
pub(crate) fn to_listener(fd: std::os::fd::OwnedFd) -> Result<Listener, String> {
    to_runtime(fd).map_err(|e| format!("cannot use the listener: {e}"))
}

#[cfg(unix)]
fn to_runtime(fd: std::os::fd::OwnedFd) -> std::io::Result<Listener> {
    let is_unix = socket2::SockRef::from(&fd).local_addr()?.is_unix();
    if is_unix {
        let std = std::os::unix::net::UnixListener::from(fd);
        std.set_nonblocking(true)?;
        Ok(Listener::Unix(tokio::net::UnixListener::from_std(std)?))
    } else {
        let std = std::net::TcpListener::from(fd);
        std.set_nonblocking(true)?;
        Ok(Listener::Tcp(tokio::net::TcpListener::from_std(std)?))
    }
}
