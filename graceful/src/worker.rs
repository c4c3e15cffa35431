//! The worker: runs the user's `main`, asks the master for its listeners,
//! serves until told to stop, then drains.

use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::task::JoinHandle;

use crate::addr::ListenAddr;
use crate::control::{self, ToMaster, ToWorker};
use crate::drain::{self, Tracked};
use crate::handler::{CatchUnwind, Handler};
use crate::log::log;
use crate::server::{take_registrations, MainOutput, Registration};
use crate::{Error, Server};

/// Environment variable that carries the worker's end of the control channel.
pub(crate) const ENV_CONTROL_FD: &str = "GRACEFUL_CONTROL_FD";
/// Environment variable that carries the worker's generation number.
pub(crate) const ENV_GENERATION: &str = "GRACEFUL_GENERATION";
/// Set to `successor` for a single-mode process's successor.
pub(crate) const ENV_ROLE: &str = "GRACEFUL_ROLE";

/// How long a slow client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What marks this process as a worker.
#[derive(Debug)]
pub(crate) struct WorkerEnv {
    pub(crate) control: OwnedFd,
    pub(crate) generation: u64,
    /// Started by a single-mode process to take over from it, not by a master.
    pub(crate) successor: bool,
}

impl WorkerEnv {
    /// Reads and removes the worker markers. `Ok(None)`: not a worker.
    pub(crate) fn detect() -> Result<Option<WorkerEnv>, Error> {
        let Some(raw_fd) = std::env::var_os(ENV_CONTROL_FD) else {
            return Ok(None);
        };
        let value = raw_fd.to_string_lossy().into_owned();
        let bad = |var: &'static str, value: &str, reason: &str| Error::WorkerEnv {
            var,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let generation = std::env::var(ENV_GENERATION).unwrap_or_default();
        let successor = std::env::var_os(ENV_ROLE).is_some_and(|role| role == "successor");
        // Remove the markers so that processes the app starts are not
        // mistaken for workers. No other thread exists yet: the runtime is
        // built later.
        std::env::remove_var(ENV_CONTROL_FD);
        std::env::remove_var(ENV_GENERATION);
        std::env::remove_var(ENV_ROLE);

        let fd: i32 = value
            .parse()
            .map_err(|_| bad(ENV_CONTROL_FD, &value, "not a file descriptor number"))?;
        if fd < 3 {
            return Err(bad(
                ENV_CONTROL_FD,
                &value,
                "0, 1 and 2 are stdin, stdout and stderr",
            ));
        }
        let generation: u64 = generation
            .parse()
            .map_err(|_| bad(ENV_GENERATION, &generation, "not a generation number"))?;
        // Check that the descriptor is open and is a SOCK_SEQPACKET socket
        // before taking ownership of it.
        // SAFETY: fcntl(F_GETFD) on any integer is harmless; it only reports
        // whether the descriptor is open.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } == -1 {
            return Err(bad(ENV_CONTROL_FD, &value, "the descriptor is not open"));
        }
        // SAFETY: the descriptor is open (checked above); borrowing it for
        // the duration of the check does not close or move it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::SockType) {
            Ok(nix::sys::socket::SockType::SeqPacket) => {}
            _ => {
                return Err(bad(
                    ENV_CONTROL_FD,
                    &value,
                    "the descriptor is not a graceful control socket",
                ))
            }
        }
        // SAFETY: the master passed this descriptor to us alone, it is open
        // and of the right kind, and nothing else in this process refers to it.
        let control = unsafe { OwnedFd::from_raw_fd(fd) };
        control::set_cloexec(control.as_raw_fd())
            .map_err(|e| Error::io("cannot set FD_CLOEXEC on the control socket", e))?;
        Ok(Some(WorkerEnv {
            control,
            generation,
            successor,
        }))
    }
}

/// The control socket of this worker, for [`crate::reload`].
static CONTROL: OnceLock<Arc<OwnedFd>> = OnceLock::new();

pub(crate) fn request_reload() -> Result<(), Error> {
    if crate::single::request_reload().is_some() {
        return Ok(());
    }
    let control = CONTROL.get().ok_or(Error::NotManaged)?;
    control::send_to_master(control.as_fd(), &ToMaster::Reload)
        .map_err(|e| Error::io("cannot ask the master to reload", e))
}

pub(crate) fn run<F, Fut>(mut server: Server, env: WorkerEnv, main: F) -> Result<(), Error>
where
    F: FnOnce() -> Fut,
    Fut: Future,
    Fut::Output: MainOutput,
{
    let control = Arc::new(env.control);
    let _ = CONTROL.set(control.clone());
    let fail = |reason: String| {
        let _ = control::send_to_master(control.as_fd(), &ToMaster::Failed(reason.clone()));
        Error::WorkerStart { reason }
    };
    let runtime = build_runtime(&server).map_err(fail)?;
    let result = runtime.block_on(async {
        listen_for_signals(&server)?;
        let registrations = run_main(&mut server, main).await.map_err(fail)?;
        let served = acquire(registrations, |request| {
            listener_from_master(&control, request)
        })
        .map_err(fail)?;
        let accepting = start_serving(served, server.idle_grace);
        control::send_to_master(control.as_fd(), &ToMaster::Ready)
            .map_err(|e| fail(format!("cannot tell the master this worker is ready: {e}")))?;
        watch_master(control.clone())?;
        let name = format!("worker {} (pid {})", env.generation, std::process::id());
        drain(accepting, &server, &name).await;
        Ok(())
    });
    // Connections still open past the deadline are dropped here; do not wait
    // for handlers that never yield.
    runtime.shutdown_timeout(Duration::ZERO);
    result
}

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

/// Stop signals sent to the worker directly (as with `KillMode=control-group`
/// or a terminal's Ctrl-C to the process group) start the drain; reload
/// signals are the master's business and are ignored here.
fn listen_for_signals(server: &Server) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    for sig in &server.reload_signals {
        // Installing the handler replaces the inherited SIG_IGN; the stream is
        // dropped, so the signal is received and ignored.
        let _ignored = signal(SignalKind::from_raw(sig.number()))
            .map_err(|e| Error::io(format!("cannot handle {sig}"), e))?;
    }
    for sig in server.stop_signals.clone() {
        let mut stream = signal(SignalKind::from_raw(sig.number()))
            .map_err(|e| Error::io(format!("cannot handle {sig}"), e))?;
        tokio::spawn(async move {
            if stream.recv().await.is_some() {
                drain::global().start(Some(&format!("received {sig}")));
            }
        });
    }
    Ok(())
}

/// Reads the control channel after the start: `Stop`, or EOF when the master
/// is gone. Either starts the drain. No polling: the read blocks in epoll.
fn watch_master(control: Arc<OwnedFd>) -> Result<(), Error> {
    control::set_nonblocking(control.as_fd(), true)
        .map_err(|e| Error::io("cannot make the control socket non-blocking", e))?;
    // SAFETY: the Arc<OwnedFd> moved in keeps the descriptor open, and
    // pointing at the same socket, for as long as the AsyncFd lives.
    let async_fd = unsafe { AsyncFd::register_with_interest(control, Interest::READABLE) }
        .map_err(|e| Error::io("cannot watch the control socket", e.into_parts().1))?;
    tokio::spawn(async move {
        let why = loop {
            let mut guard = match async_fd.readable().await {
                Ok(guard) => guard,
                Err(e) => break format!("the control socket failed: {e}"),
            };
            match guard.try_io(|fd| control::recv_from_master(fd.get_ref().as_fd())) {
                Err(_would_block) => continue,
                Ok(Ok(Some(ToWorker::Stop))) => break String::new(),
                Ok(Ok(Some(other))) => log!("unexpected control message {other:?}; ignored"),
                Ok(Ok(None)) => break "the master exited".to_string(),
                Ok(Err(e)) => break format!("the control socket failed: {e}"),
            }
        };
        drain::global().start((!why.is_empty()).then_some(why.as_str()));
    });
    Ok(())
}

enum Listener {
    Tcp(tokio::net::TcpListener),
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
/// request (`"ADDR"` or `"ADDR\tmode=NNN"`) with a listening socket. All or
/// nothing: any failure fails the start, with every failing address named.
pub(crate) fn acquire(
    registrations: Vec<Registration>,
    mut source: impl FnMut(&str) -> Result<OwnedFd, String>,
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
            let fd = source(&request).map_err(listen_error)?;
            let listener = to_listener(fd)
                .map_err(|e| listen_error(format!("cannot use the listener: {e}")))?;
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

/// Asks the master for the listener of one request.
fn listener_from_master(control: &OwnedFd, request: &str) -> Result<OwnedFd, String> {
    control::send_to_master(control.as_fd(), &ToMaster::Listen(request.to_string()))
        .map_err(|e| format!("cannot ask the master: {e}"))?;
    match control::recv_from_master(control.as_fd()) {
        Ok(Some(ToWorker::Listener(fd, _local))) => Ok(fd),
        Ok(Some(ToWorker::ListenError(reason))) => Err(reason),
        Ok(Some(ToWorker::Stop)) => Err("the master is stopping".into()),
        Ok(None) => Err("the master exited".into()),
        Err(e) => Err(format!("control channel: {e}")),
    }
}

fn to_listener(fd: OwnedFd) -> std::io::Result<Listener> {
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
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}
