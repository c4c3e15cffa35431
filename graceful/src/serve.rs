//! The one serving skeleton, [`run`], shared by workers, single-mode
//! processes and the portable fallback: build the runtime, run the user's
//! `main`, acquire every listener, serve, announce readiness, wait for the
//! drain, and wind down. Each role is an [`Adapter`] that supplies only what
//! differs: where listeners come from, how readiness is announced, how a
//! stop arrives and how a failed start is reported.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::addr::{ListenAddr, ListenRequest};
use crate::config::Config;
use crate::drain::{self, Socket, Tracked};
use crate::handler::{CatchUnwind, Connection, DatagramSocket, Handler, Peer, Serves};
use crate::log::{log, Throttled};
use crate::registration::{self, MainOutput, Registration};
use crate::slots::Slots;
use crate::Error;

/// Descriptors kept free of connections, for listeners, the control socket,
/// files the application opens, and the runtime itself.
#[cfg(unix)]
const SPARE_DESCRIPTORS: usize = 64;

/// Why a serving process could not start. Typed here; it becomes text only
/// when it is reported to another process or the log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("cannot build the tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error("main panicked: {0}")]
    Panicked(String),
    /// What `main` returned, as [`MainOutput`] describes it.
    #[error("{0}")]
    Main(String),
    #[error(transparent)]
    Setup(#[from] Error),
    /// Every registration that failed, each naming its address.
    #[error("{}", join(.0))]
    Listeners(Vec<Error>),
    /// Readiness could not be announced.
    #[cfg(unix)]
    #[error("{0}")]
    Announce(String),
}

fn join(errors: &[Error]) -> String {
    let texts: Vec<String> = errors.iter().map(Error::to_string).collect();
    texts.join("; ")
}

/// What one kind of serving process supplies to [`run`].
pub(crate) trait Adapter {
    /// The process in log lines: "worker 3 (pid 42)".
    fn name(&self) -> String;

    /// Runs first on the runtime, before `main`: signal handlers and the
    /// like. An error here ends the process as it is.
    fn install(&mut self, config: &Config) -> Result<(), Error>;

    /// The listener for one registration.
    async fn listener(&mut self, request: &ListenRequest) -> Result<Listener, String>;

    /// Every listener accepts: announce it, and start watching for whatever
    /// stops this process. `started` is when the process began to start.
    async fn ready(&mut self, config: &Config, started: Instant) -> Result<(), StartError>;

    /// Every listener is had and not yet served: the last moment before a
    /// client can reach this process (a worker gives up its privileges
    /// here).
    fn confine(&mut self) -> Result<(), StartError> {
        Ok(())
    }

    /// Reports a failed start where it belongs; returns the error [`run`]
    /// returns.
    fn fail(&self, error: StartError) -> Error;

    /// On the way into the drain.
    fn draining(&self, _config: &Config) {}

    /// In the drain, once every accept loop has ended and dropped its
    /// listener: new connections go to whoever else holds the sockets.
    fn stopped_accepting(&self) {}

    /// The drain is over: `drained` connections ended in it, `cut` were
    /// cut at `stop_timeout`.
    fn drained(&self, _drained: u64, _cut: u64) {}

    /// After the runtime has shut down.
    fn finish(self, _config: &Config) -> Result<(), Error>
    where
        Self: Sized,
    {
        Ok(())
    }
}

/// Serves `registrations` (and those `register!` makes while `main` runs)
/// until the drain ends.
pub(crate) fn run<A, F, Fut>(
    config: &Config,
    registrations: Vec<Registration>,
    main: F,
    mut adapter: A,
) -> Result<(), Error>
where
    A: Adapter,
    F: FnOnce() -> Fut,
    Fut: Future,
    Fut::Output: MainOutput,
{
    let started = Instant::now();
    crate::log::install_panic_hook();
    let runtime = match build_runtime(config) {
        Ok(runtime) => runtime,
        Err(e) => return Err(adapter.fail(e)),
    };
    let result = runtime.block_on(async {
        adapter.install(config)?;
        let registrations = run_main(registrations, main)
            .await
            .map_err(|e| adapter.fail(e))?;
        let served = acquire(registrations, &mut adapter)
            .await
            .map_err(|e| adapter.fail(e))?;
        adapter.confine().map_err(|e| adapter.fail(e))?;
        // Ready from the first accept: a health check never reaches a
        // process that is not, and the start cannot fail after this but
        // for the announcement, which ends the process.
        crate::health::set_ready();
        // The accept loops run here, on the thread that called `block_on`,
        // beside the rest (as a plain hyper server's accept loop in
        // `#[tokio::main]` does), not as tasks of the runtime's workers: see
        // `AcceptLoops`. They end once the drain starts, which `serving`
        // waits for; an error from `serving` ends the wait at once.
        let accepting = async {
            start_serving(served, config).await;
            Ok(())
        };
        let serving = async {
            adapter
                .ready(config, started)
                .await
                .map_err(|e| adapter.fail(e))?;
            crate::shutdown_signal().await;
            adapter.draining(config);
            Ok(())
        };
        tokio::try_join!(accepting, serving)?;
        wait_drained(config, &adapter).await;
        Ok(())
    });
    // Connections still open past the deadline are dropped here; do not wait
    // for handlers that never yield.
    runtime.shutdown_timeout(Duration::ZERO);
    result?;
    adapter.finish(config)
}

/// The runtime a serving process runs on.
fn build_runtime(config: &Config) -> Result<tokio::runtime::Runtime, StartError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = config.worker_threads {
        builder.worker_threads(n.get());
    }
    builder.build().map_err(StartError::Runtime)
}

/// Runs the user's `main` and returns every registration: the builder's and
/// those `register!` made while `main` ran.
async fn run_main<F, Fut>(
    mut registrations: Vec<Registration>,
    main: F,
) -> Result<Vec<Registration>, StartError>
where
    F: FnOnce() -> Fut,
    Fut: Future,
    Fut::Output: MainOutput,
{
    match CatchUnwind::new(main()).await {
        Err(panic) => return Err(StartError::Panicked(panic)),
        Ok(output) => output.into_result().map_err(StartError::Main)?,
    }
    registrations.extend(registration::take());
    if registrations.is_empty() {
        return Err(Error::NoListeners.into());
    }
    Ok(registrations)
}

/// A socket to serve: a listening socket on the runtime, or a datagram
/// socket for a datagram handler.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
    Datagram(Datagram),
}

/// A datagram socket, kept as it came: each run of its handler gets its own
/// copy on the runtime (a handler that panics is started again).
#[derive(Debug)]
pub(crate) enum Datagram {
    Udp(std::net::UdpSocket),
    #[cfg(unix)]
    Unixgram(std::os::unix::net::UnixDatagram),
}

impl Datagram {
    /// The kind of handler this socket is for.
    fn serves(&self) -> Serves {
        match self {
            Datagram::Udp(_) => Serves::Udp,
            #[cfg(unix)]
            Datagram::Unixgram(_) => Serves::Unixgram,
        }
    }

    /// A copy of the socket on the runtime, for one run of the handler.
    fn for_handler(&self) -> std::io::Result<DatagramSocket> {
        Ok(match self {
            Datagram::Udp(socket) => {
                let copy = socket.try_clone()?;
                copy.set_nonblocking(true)?;
                DatagramSocket::Udp(tokio::net::UdpSocket::from_std(copy)?)
            }
            #[cfg(unix)]
            Datagram::Unixgram(socket) => {
                let copy = socket.try_clone()?;
                copy.set_nonblocking(true)?;
                DatagramSocket::Unixgram(tokio::net::UnixDatagram::from_std(copy)?)
            }
        })
    }
}

impl Listener {
    /// The socket's identity, its device and inode: the same for every
    /// descriptor of one socket.
    #[cfg(unix)]
    fn socket_id(&self) -> Option<(u64, u64)> {
        use std::os::fd::AsFd;
        let fd = match self {
            Listener::Tcp(listener) => listener.as_fd(),
            Listener::Unix(listener) => listener.as_fd(),
            Listener::Datagram(Datagram::Udp(socket)) => socket.as_fd(),
            Listener::Datagram(Datagram::Unixgram(socket)) => socket.as_fd(),
        };
        let stat = nix::sys::stat::fstat(fd).ok()?;
        Some((stat.st_dev as u64, stat.st_ino as u64))
    }

    /// The kind of handler this socket is for.
    fn serves(&self) -> Serves {
        match self {
            Listener::Datagram(socket) => socket.serves(),
            _ => Serves::Connections,
        }
    }
}

/// A socket the master or a predecessor handed over, as the runtime's
/// listener or a datagram socket, by its type.
#[cfg(unix)]
pub(crate) fn to_listener(fd: std::os::fd::OwnedFd) -> std::io::Result<Listener> {
    let socket = socket2::SockRef::from(&fd);
    let is_unix = socket.local_addr()?.is_unix();
    if socket.r#type()? == socket2::Type::DGRAM {
        return Ok(Listener::Datagram(if is_unix {
            Datagram::Unixgram(std::os::unix::net::UnixDatagram::from(fd))
        } else {
            Datagram::Udp(std::net::UdpSocket::from(fd))
        }));
    }
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

/// A listener, its handler, and its TLS acceptor if it serves TLS.
struct Served {
    /// The address as registered, for the log.
    addr: String,
    listener: Listener,
    handler: Handler,
    tls: Option<Tls>,
}

/// A listening socket an accept loop serves.
enum Accepting {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
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

/// Gets a listener for every registration from the adapter. All or nothing:
/// any failure fails the start, with every failing address named.
async fn acquire<A: Adapter>(
    registrations: Vec<Registration>,
    adapter: &mut A,
) -> Result<Vec<Served>, StartError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    // Each socket had, by its identity, and the address that had it.
    #[cfg(unix)]
    let mut had: Vec<((u64, u64), String)> = Vec::new();
    for registration in registrations {
        let served = async {
            let tls = load_tls(&registration)?;
            let request = ListenRequest::new(&registration.addr, registration.unix_mode)?;
            let serves = registration.handler.serves();
            let refused = |reason: String| Error::Listen {
                addr: registration.addr.clone(),
                reason,
            };
            if let Some(reason) = mismatch(serves, &request.addr, tls.is_some()) {
                return Err(refused(reason));
            }
            let listener = adapter.listener(&request).await.map_err(refused)?;
            if listener.serves() != serves {
                // A socket systemd passed under a name, of the other kind.
                return Err(refused(format!(
                    "the socket is {}, and the handler serves {}",
                    describe(listener.serves()),
                    describe(serves)
                )));
            }
            // Two registrations of one socket would share its connections
            // at random between two handlers.
            #[cfg(unix)]
            if let Some(id) = listener.socket_id() {
                if let Some((_, first)) = had.iter().find(|(seen, _)| *seen == id) {
                    return Err(refused(format!(
                        "it is the socket {first:?} was registered on: an address is served \
                         by one handler (\"127.0.0.1:0\" is one port, bound once; use another \
                         address for another listener)"
                    )));
                }
                had.push((id, registration.addr.clone()));
            }
            Ok::<_, Error>(Served {
                addr: registration.addr.clone(),
                listener,
                handler: registration.handler.clone(),
                tls,
            })
        };
        match served.await {
            Ok(served) => out.push(served),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(StartError::Listeners(errors))
    }
}

/// What a handler that serves `serves` cannot be given at `addr`, with or
/// without TLS; `None` if nothing. An address systemd names is checked
/// once its socket is had.
fn mismatch(serves: Serves, addr: &ListenAddr, tls: bool) -> Option<String> {
    if tls && serves != Serves::Connections {
        return Some("`tls =` applies to connections, not to a datagram handler".into());
    }
    let fits = match addr {
        ListenAddr::Systemd(_) => true,
        ListenAddr::Udp { .. } => serves == Serves::Udp,
        ListenAddr::Unixgram(_) => serves == Serves::Unixgram,
        ListenAddr::Tcp { .. } | ListenAddr::Unix(_) => serves == Serves::Connections,
    };
    (!fits).then(|| {
        let wanted = match serves {
            Serves::Connections => {
                "a \"host:port\" or \"unix:\" address; \"udp:\" and \"unixgram:\" take a \
                 datagram handler, async fn(tokio::net::UdpSocket) or \
                 async fn(tokio::net::UnixDatagram)"
            }
            Serves::Udp => {
                "a \"udp:host:port\" address (or \"systemd:NAME\" for a UDP socket systemd passes)"
            }
            Serves::Unixgram => {
                "a \"unixgram:/path\" address (or \"systemd:NAME\" for a Unix datagram socket \
                 systemd passes)"
            }
        };
        format!("the handler serves {}: it needs {wanted}", describe(serves))
    })
}

/// A kind of socket, as errors name it.
fn describe(serves: Serves) -> &'static str {
    match serves {
        Serves::Connections => "connections (HTTP or a stream handler)",
        Serves::Udp => "UDP datagrams",
        Serves::Unixgram => "Unix datagrams",
    }
}

/// Serves every listener, each on its own accept loop, all within one
/// connection limit, and starts each datagram handler. The accept loops
/// are returned, to be polled by the caller.
fn start_serving(served: Vec<Served>, config: &Config) -> AcceptLoops {
    let limits = config.limits;
    let cap = connection_cap(limits.max_connections);
    let mut http = crate::http::Builders::new();
    // No hyper timers: a header read timeout would arm a timer for every
    // HTTP/1 request, and HTTP/2 PING keep-alive takes a lock and reads the
    // clock on every frame. drain::serve_connection enforces both
    // timeouts with one timer per connection, and the kernel's keep-alive
    // probes find the dead peers of HTTP/2 connections.
    http.http1
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_size);
    http.http2
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    let shared = Arc::new(Shared {
        http: Arc::new(drain::HttpServing {
            builders: http,
            timers: drain::Timers {
                idle_grace: config.idle_grace,
                header_timeout: limits.header_timeout,
                idle_timeout: limits.idle_timeout,
            },
        }),
        slots: Slots::new(cap),
    });
    let mut accepting = Vec::new();
    for served in served {
        let listener = match served.listener {
            Listener::Datagram(socket) => {
                tokio::spawn(serve_datagrams(served.addr, served.handler, socket));
                continue;
            }
            Listener::Tcp(listener) => Accepting::Tcp(listener),
            #[cfg(unix)]
            Listener::Unix(listener) => Accepting::Unix(listener),
        };
        let loop_ = accept_loop(listener, served.handler, served.tls, shared.clone());
        accepting.push(Some(
            Box::pin(loop_) as Pin<Box<dyn Future<Output = ()> + Send>>
        ));
    }
    AcceptLoops(accepting)
}

/// Every listener's accept loop, polled together by whoever awaits this,
/// which is ready once every loop has ended (each ends when the drain
/// starts).
///
/// Why not tasks of their own: the thread that accepts is the thread that
/// allocates each connection's task, socket wrappers and boxes. On the
/// `block_on` thread those come from that thread's malloc arena (glibc),
/// apart from the buffers the connection's worker allocates. Accepting on a
/// worker put them among the connection's own allocations, and hyper's read
/// buffer, grown at each connection's second read, was copied (`realloc`)
/// more often: with a connection per request, 32,791 instructions per
/// request against 31,076 here, `memcpy` under `realloc` 4,153 against
/// 2,663 (`scripts/instructions graceful close`; plain hyper-util, which
/// accepts in `block_on`, copies nothing there).
struct AcceptLoops(Vec<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>);

impl Future for AcceptLoops {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut running = false;
        for slot in &mut self.0 {
            if let Some(accepting) = slot {
                if accepting.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    running = true;
                }
            }
        }
        if running {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    }
}

/// How long a datagram handler that ended while serving waits before it is
/// started again.
const DATAGRAM_RESTART: Duration = Duration::from_secs(1);

/// Runs a datagram handler until the drain, and counts it in the drain as
/// one open connection until it returns. One that ends before the drain (it
/// returned, or panicked) is logged and started again after
/// [`DATAGRAM_RESTART`]: the socket must be read, or datagrams pile up
/// unanswered.
async fn serve_datagrams(addr: String, handler: Handler, socket: Datagram) {
    let _open = drain::global().hold();
    loop {
        let ended = match socket.for_handler() {
            Ok(copy) => handler.serve_datagrams(copy).await,
            Err(e) => {
                crate::log::event!(
                    Error,
                    { event = "datagram_handler_failed", address = addr.as_str() },
                    "cannot hand the socket of {addr:?} to its datagram handler: {e}; \
                     its datagrams go to other workers only"
                );
                return;
            }
        };
        let draining = drain::is_shutting_down();
        match ended {
            Ok(()) if draining => return,
            Ok(()) => crate::log::event!(
                Warn,
                { event = "datagram_handler_returned", address = addr.as_str() },
                "the datagram handler of {addr:?} returned while serving; started again in {:?} \
                 (a datagram handler reads until graceful::shutdown_signal())",
                DATAGRAM_RESTART
            ),
            Err(message) => crate::log::event!(
                Error,
                {
                    event = "handler_panicked",
                    address = addr.as_str(),
                    panic = message.as_str(),
                },
                "the datagram handler of {addr:?} panicked: {message}{}",
                if draining {
                    String::new()
                } else {
                    format!("; started again in {DATAGRAM_RESTART:?}")
                }
            ),
        }
        if draining {
            return;
        }
        tokio::select! {
            () = drain::global().stopping() => return,
            () = tokio::time::sleep(DATAGRAM_RESTART) => {}
        }
    }
}

/// Connections one process may hold: `max_connections`, lowered to fit the
/// open-file limit with some to spare.
fn connection_cap(max_connections: usize) -> usize {
    #[cfg(unix)]
    let fits = crate::fd::open_file_limit().map_or(usize::MAX, |soft| {
        usize::try_from(soft)
            .unwrap_or(usize::MAX)
            .saturating_sub(SPARE_DESCRIPTORS)
            .max(1)
    });
    #[cfg(not(unix))]
    let fits = usize::MAX;
    let cap = max_connections.min(fits);
    if cap < max_connections {
        log!(
            "serving at most {cap} connections at once, not max_connections {max_connections}: \
             the open-file limit leaves room for no more"
        );
    }
    cap
}

/// What every accept loop of a process shares.
struct Shared {
    http: Arc<drain::HttpServing>,
    /// One slot per open connection.
    slots: Arc<Slots>,
}

/// Failed accepts and a full connection limit can each come in a flood.
static ACCEPT_FAILED: Throttled = Throttled::new(Duration::from_secs(10));
static LIMIT_REACHED: Throttled = Throttled::new(Duration::from_secs(10));

/// Waits for the drain to start, then for every connection to close, for up
/// to `stop_timeout`, and logs what happened under the adapter's name.
async fn wait_drained<A: Adapter>(config: &Config, adapter: &A) {
    drain::global().stopping().await;
    let started = Instant::now();
    // A connection accepted at the moment the drain starts must be counted
    // before the count is read: every accept loop has ended (and dropped
    // its listener) when this is called.
    adapter.stopped_accepting();
    let name = adapter.name();
    let finished = tokio::time::timeout(config.stop_timeout, drain::global().idle())
        .await
        .is_ok();
    let cut = if finished {
        0
    } else {
        drain::global().active()
    };
    let open = drain::global().handled();
    let drained = open - cut.min(open);
    adapter.drained(drained as u64, cut as u64);
    let took = started.elapsed();
    let line = format!(
        "{name} drained {drained} connection(s) in {} ms, {cut} cut at the {:?} stop_timeout",
        took.as_millis(),
        config.stop_timeout,
    );
    // Connections cut are worth a warning.
    let level = if cut > 0 {
        crate::log::Level::Warn
    } else {
        crate::log::Level::Info
    };
    crate::log::event_at!(
        level,
        {
            event = "drained",
            drained = drained as u64,
            cut = cut as u64,
            took_ms = crate::log::millis(took),
            stop_timeout_ms = crate::log::millis(config.stop_timeout),
        },
        "{line}"
    );
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

async fn accept_loop(listener: Accepting, handler: Handler, tls: Option<Tls>, shared: Arc<Shared>) {
    let stopping = drain::global().stopping();
    tokio::pin!(stopping);
    loop {
        // A slot first: at the limit, new connections wait in the backlog.
        let slot = match shared.slots.try_take() {
            Some(slot) => slot,
            None => {
                let cap = shared.slots.cap() as u64;
                LIMIT_REACHED.line_with(
                    format_args!(
                        "pid {}: {} connections open, the most this process serves at once; \
                         new ones wait in the backlog",
                        std::process::id(),
                        cap
                    ),
                    |text| {
                        crate::log::event!(
                            Warn,
                            { event = "connection_limit", max_connections = cap },
                            "{text}"
                        )
                    },
                );
                tokio::select! {
                    biased;
                    () = stopping.as_mut() => break,
                    slot = shared.slots.take() => slot,
                }
            }
        };
        // Polled by hand rather than through `select!` and `accept()`'s
        // future: the listener's readiness is asked for directly, with no
        // waiter of its own to register and remove at every accept.
        let accepted = std::future::poll_fn(|cx| {
            if stopping.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let Some(accepted) = accepted else { break };
        let conn = Conn {
            handler: &handler,
            http: &shared.http,
            tls: tls.as_ref(),
        };
        match accepted {
            Ok(Accepted::Tcp(stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let tcp = drain::TcpSocket::of(&stream);
                conn.spawn(
                    Socket::Tcp(Tracked::new(stream, slot)),
                    tcp,
                    Peer::Tcp(peer),
                );
            }
            #[cfg(unix)]
            Ok(Accepted::Unix(stream)) => {
                let io = Socket::Unix(Tracked::new(stream, slot));
                conn.spawn(io, None, Peer::Unix)
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                // Out of file descriptors or memory: back off briefly rather
                // than spin; the connection stays queued in the backlog.
                ACCEPT_FAILED.line_with(
                    format_args!("accept failed: {e}; retrying in 50 ms"),
                    |text| crate::log::event!(Warn, { event = "accept_failed" }, "{text}"),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Dropping the listener closes this process's copy; the copy whoever
    // holds the listeners keeps holds the accept queue for the next
    // generation.
}

/// What serving one accepted connection needs: the accept loop's, lent
/// (the connection's task takes its own references of what it keeps).
struct Conn<'a> {
    handler: &'a Handler,
    http: &'a Arc<drain::HttpServing>,
    tls: Option<&'a Tls>,
}

impl Conn<'_> {
    /// Serves one accepted connection on its own task, after the TLS
    /// handshake if the listener has TLS. The connection was counted
    /// (`Tracked`) before this is called, so the drain cannot miss it, the
    /// handshake included.
    fn spawn(self, io: Socket, tcp: Option<drain::TcpSocket>, peer: Peer) {
        let Conn { handler, http, tls } = self;
        match tls {
            None => serve(io, tcp, peer, handler, http),
            #[cfg(feature = "tls")]
            Some(acceptor) => {
                let handshake = acceptor.accept(io);
                let idle_grace = http.timers.idle_grace;
                // A client that sends nothing is one, TLS or not: a
                // `header_timeout` set shorter than the handshake's bound
                // bounds the handshake too.
                let timeout = crate::tls::HANDSHAKE_TIMEOUT.min(http.timers.header_timeout);
                let (handler, http) = (handler.clone(), http.clone());
                tokio::spawn(async move {
                    // A failed or slow handshake (a scanner, a client that
                    // distrusts the certificate) ends this connection only.
                    // Once the drain starts, a handshake still going on gets
                    // `idle_grace` more, like an idle keep-alive connection.
                    let drained = async {
                        drain::global().stopping().await;
                        tokio::time::sleep(idle_grace).await;
                    };
                    let stream = tokio::select! {
                        done = tokio::time::timeout(timeout, handshake) => done,
                        _ = drained => return,
                    };
                    if let Ok(Ok(stream)) = stream {
                        let io = Socket::Boxed(Box::pin(stream));
                        serve(io, tcp, peer, &handler, &http);
                    }
                });
            }
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
        }
    }
}

/// Serves one connection on a task of its own: HTTP, or the stream
/// handler's protocol. A stream connection counts in the drain for as long
/// as the handler holds it; the handler sees `shutdown_signal()` and is cut
/// at `stop_timeout`. An HTTP connection's task is the boxed future of
/// the handler's own connection code (see `ServeHttp::spawn`): a wake of
/// the connection's task goes through no `async` layers of its own.
fn serve(
    io: Socket,
    tcp: Option<drain::TcpSocket>,
    peer: Peer,
    handler: &Handler,
    http: &Arc<drain::HttpServing>,
) {
    if handler.is_stream() {
        let handler = handler.clone();
        tokio::spawn(async move { handler.serve_stream(Connection::new(io), peer).await });
    } else {
        handler.spawn_http(io, tcp, http.clone())
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Accepting {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<Accepted>> {
        match self {
            Accepting::Tcp(l) => l.poll_accept(cx).map_ok(|(s, peer)| Accepted::Tcp(s, peer)),
            #[cfg(unix)]
            Accepting::Unix(l) => l.poll_accept(cx).map_ok(|(s, _)| Accepted::Unix(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handler_is_given_only_the_kind_of_socket_it_serves() {
        let addr = |text: &str| ListenAddr::parse(text).unwrap();
        let fits = |serves, text: &str, tls| mismatch(serves, &addr(text), tls).is_none();
        for text in [":80", "127.0.0.1:80", "unix:/a", "systemd:web"] {
            assert!(fits(Serves::Connections, text, false), "{text}");
            assert!(fits(Serves::Connections, text, true), "{text} with TLS");
        }
        for text in ["udp::53", "udp:[::1]:53", "systemd:dns"] {
            assert!(fits(Serves::Udp, text, false), "{text}");
        }
        assert!(fits(Serves::Unixgram, "unixgram:/a", false));
        assert!(fits(Serves::Unixgram, "systemd:log", false));
        for (serves, text) in [
            (Serves::Connections, "udp::53"),
            (Serves::Connections, "unixgram:/a"),
            (Serves::Udp, ":53"),
            (Serves::Udp, "unixgram:/a"),
            (Serves::Udp, "unix:/a"),
            (Serves::Unixgram, "udp::53"),
            (Serves::Unixgram, "unix:/a"),
        ] {
            assert!(!fits(serves, text, false), "{serves:?} on {text}");
        }
        assert_eq!(
            mismatch(Serves::Udp, &addr(":53"), false).unwrap(),
            "the handler serves UDP datagrams: it needs a \"udp:host:port\" address (or \
             \"systemd:NAME\" for a UDP socket systemd passes)"
        );
        assert!(mismatch(Serves::Connections, &addr("udp::53"), false)
            .unwrap()
            .starts_with("the handler serves connections (HTTP or a stream handler): it needs"));
        assert_eq!(
            mismatch(Serves::Udp, &addr("udp::53"), true).unwrap(),
            "`tls =` applies to connections, not to a datagram handler"
        );
    }
}
