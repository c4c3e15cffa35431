//! Drain: the shutdown signal, connection tracking, and how one connection
//! winds down.
//!
//! When the worker is told to stop, every connection is told at once.
//! HTTP/2 connections get GOAWAY right away (it is race-free). HTTP/1
//! connections are not closed at once: a client may be sending its next
//! request on an idle keep-alive connection at that very moment (hyper issue
//! #3792). Instead every response from then on carries `Connection: close`, so
//! busy connections close themselves after their current response, and only
//! connections that stay idle for the whole `idle_grace` are closed.
//!
//! A connection counts as in flight for as long as its socket is open, which
//! includes upgraded connections (WebSocket) that a handler still holds.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Process-wide drain state. One per process: a worker drains once.
#[derive(Debug)]
pub(crate) struct Drain {
    /// Set once, when the drain starts, before anyone is woken.
    starting: AtomicBool,
    active: AtomicUsize,
    /// Connections ever tracked.
    opened: AtomicUsize,
    /// (open, opened) when the drain started, taken before anyone is woken.
    at_start: std::sync::Mutex<(usize, usize)>,
    idle: Notify,
    /// Woken once, when the drain starts: what [`Stopping`] waits on.
    stopping: Notify,
}

#[inline]
pub(crate) fn global() -> &'static Drain {
    static DRAIN: OnceLock<Drain> = OnceLock::new();
    DRAIN.get_or_init(Drain::new)
}

/// Completes when this process starts to drain: a graceful worker that was
/// told to stop (by the master, a stop signal, or the master's exit).
///
/// Long-lived handlers (server-sent events, WebSocket) await this to end
/// their streams cleanly instead of being cut at `stop_timeout`.
///
/// ```no_run
/// # async fn stream() {
/// tokio::select! {
///     _ = graceful::shutdown_signal() => { /* send a close frame, then return */ }
///     _ = std::future::pending::<()>() => {}
/// }
/// # }
/// ```
pub async fn shutdown_signal() {
    global().stopping().await
}

/// Whether this process has started to drain.
#[inline]
pub fn is_shutting_down() -> bool {
    // The flag is set before anyone is woken, so this never says "no"
    // after shutdown_signal() has resolved.
    global().starting.load(Ordering::SeqCst)
}

impl Drain {
    fn new() -> Drain {
        Drain {
            starting: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            opened: AtomicUsize::new(0),
            at_start: std::sync::Mutex::new((0, 0)),
            idle: Notify::new(),
            stopping: Notify::new(),
        }
    }

    /// Ready once this drain has started (see [`Stopping`]).
    pub(crate) fn stopping(&'static self) -> Stopping {
        Stopping {
            // Made before the flag is read (at each poll): a drain that
            // starts in between wakes it.
            notified: self.stopping.notified(),
            drain: self,
            armed: None,
        }
    }

    /// Starts the drain (once). `why`, when given, is logged before anyone
    /// is woken, so the line is written even if the drain is over at once.
    pub(crate) fn start(&self, why: Option<&str>) {
        if self.starting.swap(true, Ordering::SeqCst) {
            return;
        }
        match why {
            Some(why) => crate::log::event!(
                Info,
                { event = "draining", reason = why },
                "pid {}: {why}; draining",
                std::process::id()
            ),
            // Told to stop by the master, which writes the line.
            None => crate::log::event!(
                tracing_only Info,
                { event = "draining", reason = "told to stop" },
                "pid {}: told to stop; draining",
                std::process::id()
            ),
        }
        *self.at_start.lock().unwrap_or_else(|e| e.into_inner()) =
            (self.active(), self.opened.load(Ordering::SeqCst));
        self.stopping.notify_waiters();
    }

    /// Connections the drain has had to deal with: those open when it
    /// started plus any accepted while the accept loops were ending.
    pub(crate) fn handled(&self) -> usize {
        let (open, opened) = *self.at_start.lock().unwrap_or_else(|e| e.into_inner());
        open + self.opened.load(Ordering::SeqCst).saturating_sub(opened)
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Counts as one open connection until the guard is dropped: a
    /// connection's socket, or a datagram handler while it runs.
    pub(crate) fn hold(&'static self) -> Guard {
        self.opened.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_add(1, Ordering::SeqCst);
        Guard(self)
    }

    /// Waits until no connection is open.
    pub(crate) async fn idle(&self) {
        loop {
            if self.active() == 0 {
                return;
            }
            // `notify_one` stores a permit when nobody waits, so a guard
            // dropped between the check and this await is not missed.
            self.idle.notified().await;
        }
    }
}

/// One open connection, or a running datagram handler, in the drain's count.
pub(crate) struct Guard(&'static Drain);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_one();
        }
    }
}

pin_project_lite::pin_project! {
    /// Ready once the drain has started: what `shutdown_signal()` is, and
    /// what every part of a serving process waits on for the drain (accept
    /// loops and connections beside their own work, polled at each of
    /// their wakes). It registers with the drain once, at its first poll, and is
    /// looked at again (a lock) only when polled with another waker or
    /// once the drain has started; otherwise a poll reads one flag. (A
    /// `watch` channel's `wait_for`, made again at each accept, took a lock
    /// to register and one to deregister every time.)
    pub(crate) struct Stopping {
        #[pin]
        notified: tokio::sync::futures::Notified<'static>,
        drain: &'static Drain,
        armed: Option<std::task::Waker>,
    }
}

impl Future for Stopping {
    type Output = ();

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.drain.starting.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if this.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Registered with this waker, which the drain wakes.
            return Poll::Pending;
        }
        let poll = this.notified.poll(cx);
        if poll.is_pending() {
            *this.armed = Some(cx.waker().clone());
        }
        poll
    }
}

/// How long a connection the server closes keeps reading (and dropping)
/// what the client still sends, at most ...
pub(crate) const LINGER: Duration = Duration::from_secs(1);
/// ... and for how long the client may stay quiet meanwhile (a request
/// sent just before the client saw the close arrives within a round trip).
pub(crate) const LINGER_QUIET: Duration = Duration::from_millis(250);

/// A socket that counts as one open connection, and holds one of the
/// process's connection slots, until it is dropped.
///
/// Its shutdown lingers, as nginx's `lingering_close` does: it sends FIN,
/// then reads and drops what the client sends until the client closes too,
/// for up to [`LINGER`], or until it has been quiet for [`LINGER_QUIET`].
/// Closing a socket with unread data in it makes the kernel answer with
/// RST, and a client that had sent a request just as an
/// HTTP/2 GOAWAY (or an HTTP/1 `Connection: close` response) was on its way
/// then gets a connection error instead of reading the GOAWAY that tells
/// it the request was not processed and may be retried. A connection whose
/// client said it sends nothing more (see [`Tracked::client_done`]), and
/// has nothing more waiting to be read, closes at once, as a plain
/// server's does: lingering costs the connection's task a wake more and a
/// timer.
pub(crate) struct Tracked<T> {
    io: T,
    /// Set once FIN is sent: the lingering's timer, and when it ends at the
    /// latest.
    linger: Option<(Pin<Box<tokio::time::Sleep>>, tokio::time::Instant)>,
    /// The HTTP connection it carries, if any: whether its client said it
    /// sends nothing more (see [`Socket::attach`]).
    http: std::sync::Weak<Activity>,
    _guard: Guard,
    _slot: crate::slots::Slot,
}

impl<T> Tracked<T> {
    pub(crate) fn new(io: T, slot: crate::slots::Slot) -> Tracked<T> {
        Tracked {
            io,
            linger: None,
            http: std::sync::Weak::new(),
            _guard: global().hold(),
            _slot: slot,
        }
    }

    /// Whether the client said it sends nothing more, so that closing
    /// needs no lingering: its last HTTP/1 request had no body and ended
    /// the connection (`Connection: close`, or HTTP/1.0 without
    /// keep-alive), which obliges it to send nothing after (RFC 9112,
    /// 9.6). nginx lingers in the same cases only, when more may come.
    fn client_done(&self) -> bool {
        self.http
            .upgrade()
            .is_some_and(|http| http.client_done.load(Ordering::Relaxed))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

/// A socket read only if tokio's readiness says something may have come:
/// edge-triggered, it is cleared by a read that came back short or would
/// block, and set again when something arrives. Nothing came, then, is
/// known without a system call and without registering a waker.
pub(crate) trait ReadReady {
    /// What is waiting to be read, into `buf`: `WouldBlock` if nothing
    /// arrived since the last read, `Ok(0)` at the peer's FIN.
    fn read_if_ready(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl ReadReady for tokio::net::TcpStream {
    fn read_if_ready(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.try_read(buf)
    }
}

#[cfg(unix)]
impl ReadReady for tokio::net::UnixStream {
    fn read_if_ready(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.try_read(buf)
    }
}

impl<T: AsyncRead + AsyncWrite + ReadReady + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let (timer, end) = match &mut this.linger {
            Some((timer, end)) => (timer, *end),
            None => {
                std::task::ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
                if this.client_done() {
                    // Unless it broke its word: what it sent anyway is
                    // lingered over as any other client's. Nothing came
                    // since the last read (the usual case) is known without
                    // a read.
                    let mut sink = [0u8; 64];
                    match this.io.read_if_ready(&mut sink) {
                        Ok(n) if n > 0 => {}
                        _ => return Poll::Ready(Ok(())),
                    }
                }
                let now = tokio::time::Instant::now();
                let timer = Box::pin(tokio::time::sleep_until(now + LINGER_QUIET));
                let (timer, end) = this.linger.insert((timer, now + LINGER));
                (timer, *end)
            }
        };
        let mut sink = [0u8; 1024];
        loop {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                // Data: dropped, and read on, for another quiet period.
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let quiet = tokio::time::Instant::now() + LINGER_QUIET;
                    timer.as_mut().reset(quiet.min(end));
                }
                // EOF or an error: the client is done.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What a connection is: readable and writable, asynchronously.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// An accepted connection as the worker serves it: a TCP or Unix socket,
/// counted in the drain, read and written as it is (no box, no dynamic
/// call, as a plain server's socket), or any other stream (TLS) in a box.
pub(crate) enum Socket {
    Tcp(Tracked<tokio::net::TcpStream>),
    #[cfg(unix)]
    Unix(Tracked<tokio::net::UnixStream>),
    #[cfg(feature = "tls")]
    Boxed(Pin<Box<dyn Io>>),
}

/// The stream under a [`Socket`], whichever it is.
macro_rules! each_socket {
    ($socket:expr, $io:ident => $call:expr) => {
        match $socket {
            Socket::Tcp($io) => $call,
            #[cfg(unix)]
            Socket::Unix($io) => $call,
            #[cfg(feature = "tls")]
            Socket::Boxed($io) => $call,
        }
    };
}

impl Socket {
    /// Lets the socket see what the client of the HTTP connection it
    /// carries said (see [`Tracked::client_done`]). A boxed stream (TLS)
    /// is not reached, and lingers whatever its client said.
    fn attach(&mut self, activity: &Arc<Activity>) {
        match self {
            Socket::Tcp(tracked) => tracked.http = Arc::downgrade(activity),
            #[cfg(unix)]
            Socket::Unix(tracked) => tracked.http = Arc::downgrade(activity),
            #[cfg(feature = "tls")]
            Socket::Boxed(_) => {}
        }
    }
}

// `#[inline]` on the socket's I/O, and on the few functions of this crate
// that every request calls: hyper's connection code that calls them is
// compiled in the application's crate (it is generic over the handler), and
// a function of another crate that is neither generic nor `#[inline]` is
// called there out of line, from wherever it lies in the binary. Inlined,
// a kept-alive request touched 579-591 instruction-cache lines instead of
// 614-618 (`scripts/instructions graceful h1 --cache`; plain hyper-util: 482).
impl AsyncRead for Socket {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each_socket!(self.get_mut(), io => Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for Socket {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each_socket!(self.get_mut(), io => Pin::new(io).poll_write(cx, buf))
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_socket!(self.get_mut(), io => Pin::new(io).poll_flush(cx))
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_socket!(self.get_mut(), io => Pin::new(io).poll_shutdown(cx))
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each_socket!(self.get_mut(), io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        each_socket!(self, io => io.is_write_vectored())
    }
}

/// How a listener's HTTP connections are served: hyper's builders for the
/// two protocols, and the timers of each connection. Shared by the
/// connections, each of which holds it, so that its future owns all it
/// needs and is spawned on its own.
pub(crate) struct HttpServing {
    pub(crate) builders: crate::http::Builders,
    pub(crate) timers: Timers,
}

/// The timers of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timers {
    /// How long an idle HTTP/1 connection is kept once the drain starts.
    pub(crate) idle_grace: Duration,
    /// How long a new connection may take to start its first request.
    pub(crate) header_timeout: Duration,
    /// How long a connection may go without a new request.
    pub(crate) idle_timeout: Duration,
}

/// Whether a connection has started a request, and when one last ended
/// (milliseconds of [`coarse_millis`]). How many it is handling is how many
/// requests hold it: see [`Activity::handling`].
///
/// Its `Arc` is graceful's one small allocation per connection, made on
/// the accept loops' thread and freed by a worker thread into that thread's
/// cache of free chunks, and it is kept to 32 bytes: glibc's allocator
/// rounds that up to the 48-byte chunk that hyper itself allocates and frees
/// for every request, so the requests take those chunks again. At 56 bytes
/// (when it also held the connection's start and socket) closed connections
/// filled the worker's cache of 64-byte chunks, which no request takes. A
/// request's 36-byte response text, finding the cache of 48-byte chunks
/// empty, was then handed a whole 64-byte chunk, whose free overflowed that
/// full cache into a fast bin, and the next 8 KB read buffer made malloc
/// consolidate its fast bins: once per kept-alive request (99,525 times in
/// 100,000 requests, against 81 for plain hyper-util; docs/throughput.md).
struct Activity {
    started: AtomicBool,
    h2: AtomicBool,
    /// Its client's last HTTP/1 request said the client sends nothing more
    /// (see [`Tracked::client_done`]).
    client_done: AtomicBool,
    last: std::sync::atomic::AtomicU64,
}

/// The holders of a connection's [`Activity`] that are not requests: the
/// connection's task and its service.
const NOT_REQUESTS: usize = 2;

impl Activity {
    /// A connection opened now, with no request yet.
    fn new() -> Activity {
        Activity {
            started: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            client_done: AtomicBool::new(false),
            last: std::sync::atomic::AtomicU64::new(coarse_millis()),
        }
    }

    /// How many requests are being handled: each request's future holds the
    /// activity until it is dropped, whether it finished or was cancelled
    /// (an HTTP/2 stream the client reset). Counting the holders needs no
    /// count of its own, which a cancelled request would leave raised
    /// forever (it never reaches the end that lowers it).
    fn handling(self: &Arc<Self>) -> usize {
        Arc::strong_count(self) - NOT_REQUESTS
    }

    #[inline]
    fn touch(&self) {
        self.last.store(coarse_millis(), Ordering::Relaxed);
    }

    /// How long the connection has gone without a request ending (or since
    /// it opened, if none has).
    fn idle_for(&self) -> Duration {
        let last = self.last.load(Ordering::Relaxed);
        Duration::from_millis(coarse_millis().saturating_sub(last))
    }
}

/// A monotonic clock in milliseconds, read at the end of every request.
/// Linux: `CLOCK_MONOTONIC_COARSE`, a variable the kernel updates at each
/// tick (1 to 10 ms), which the vDSO reads without the hardware clock; the
/// idle timeout it serves is counted in seconds. The precise clock cost
/// 0.7 % of the serving process's time under a saturating HTTP/2 load.
#[inline]
fn coarse_millis() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::time::{clock_gettime, ClockId};
        if let Ok(t) = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) {
            return t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000;
        }
    }
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// What woke a connection's task.
enum Woke {
    Closed,
    Drain,
    Timer,
}

/// What answers the requests of a connection: an HTTP handler, typed, so
/// that hyper calls it and polls its future without a box or a dynamic
/// call per request.
pub(crate) trait Respond: Send + Sync + 'static {
    /// The response body.
    type Body: hyper::body::Body<
            Data = bytes::Bytes,
            Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        > + Send
        + 'static;
    /// One request's answer. It never fails: a handler's errors and panics
    /// are answered already (500). It holds `finish` until it is dropped,
    /// and calls [`Finish::finish`] on its response before it returns it.
    type Future: Future<Output = Result<Response<Self::Body>, Infallible>> + Send + 'static;

    fn respond(&self, req: Request<Incoming>, finish: Finish) -> Self::Future;
}

/// The service hyper calls for each request on one connection.
struct ConnService<R> {
    respond: Arc<R>,
    activity: Arc<Activity>,
    /// The TCP socket under the connection, if it is one.
    tcp: Option<TcpSocket>,
}

impl<R: Respond> hyper::service::Service<Request<Incoming>> for ConnService<R> {
    type Response = Response<R::Body>;
    type Error = Infallible;
    type Future = R::Future;

    fn call(&self, req: Request<Incoming>) -> R::Future {
        let activity = &self.activity;
        let http1 = req.version() < Version::HTTP_2;
        // The first HTTP/2 request only: a plain load before the swap keeps
        // the locked read-modify-write off every later request.
        if !http1
            && !activity.h2.load(Ordering::Relaxed)
            && !activity.h2.swap(true, Ordering::Relaxed)
        {
            if let Some(tcp) = &self.tcp {
                tcp.probe_dead_peer();
            }
        }
        if !activity.started.load(Ordering::Relaxed) {
            activity.started.store(true, Ordering::Relaxed);
        }
        if http1 {
            let done = hyper::body::Body::is_end_stream(req.body()) && ends_connection(&req);
            if activity.client_done.load(Ordering::Relaxed) != done {
                activity.client_done.store(done, Ordering::Relaxed);
            }
        }
        self.respond.respond(req, Finish(activity.clone()))
    }
}

/// Whether an HTTP/1 request ends its connection: HTTP/1.1 with the
/// `close` connection option, or HTTP/1.0 without `keep-alive`. A short
/// head (most) is searched through rather than hashed into: hashing the
/// name cost more than the search.
fn ends_connection<B>(req: &Request<B>) -> bool {
    if req.version() <= Version::HTTP_10 {
        !says(req, b"keep-alive")
    } else {
        says(req, b"close")
    }
}

/// Whether the request's `Connection` header lists `option`. The option is
/// a constant of known length, so that its comparison is unrolled.
fn says<B, const N: usize>(req: &Request<B>, option: &[u8; N]) -> bool {
    let headers = req.headers();
    if headers.len() <= 8 {
        // Names first: most requests on a kept-alive connection have no
        // `Connection` header, and the names alone are the shorter walk.
        headers.keys().any(|name| name == CONNECTION)
            && headers
                .iter()
                .any(|(name, value)| name == CONNECTION && lists(value, option))
    } else {
        headers
            .get_all(CONNECTION)
            .iter()
            .any(|value| lists(value, option))
    }
}

/// Whether a `Connection` value lists `option`, in any case. Most values
/// are the one option (`Connection: close`): a comparison, where splitting
/// into tokens costs ten times as much.
fn lists<const N: usize>(value: &HeaderValue, option: &[u8; N]) -> bool {
    let value = value.as_bytes();
    is_option(value, option) || lists_among_others(value, option)
}

/// `value` is `option` (lowercase letters and `-`), in any case: each byte
/// lowered only where the option has a letter, with the option's length
/// and letters known when compiled, where `eq_ignore_ascii_case` lowers
/// both sides byte by byte (about 100 instructions for `close`).
fn is_option<const N: usize>(value: &[u8], option: &[u8; N]) -> bool {
    let Ok(value) = <&[u8; N]>::try_from(value) else {
        return false;
    };
    let mut differ = 0;
    for (&v, &o) in value.iter().zip(option) {
        differ |= (v | (u8::from(o.is_ascii_lowercase()) << 5)) ^ o;
    }
    differ == 0
}

#[cold]
#[inline(never)]
fn lists_among_others(value: &[u8], option: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(option))
}

/// A request's hold on its connection's bookkeeping, kept by the request's
/// future: while it is held, the request counts as being handled (see
/// [`Activity::handling`]); [`Finish::finish`] ends it. A field of the
/// handler's own future rather than a future around it, so that a response
/// is moved once less, and each request's task is no larger than it must be
/// (hyper copies that task for every HTTP/2 stream).
pub(crate) struct Finish(Arc<Activity>);

impl Finish {
    /// The request's response is ready: the connection's idle time counts
    /// from now, and an HTTP/1 response finished in the drain says
    /// `Connection: close` (a connection is HTTP/2 from its first request;
    /// the version is the connection's, read here rather than kept in every
    /// request's task).
    pub(crate) fn finish<B>(&self, response: &mut Response<B>) {
        let activity = &self.0;
        activity.touch();
        if is_shutting_down()
            && !activity.h2.load(Ordering::Relaxed)
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }

    /// A hold on a connection of its own, for unit tests of a request's
    /// future.
    #[cfg(test)]
    pub(crate) fn detached() -> Finish {
        Finish(Arc::new(Activity::new()))
    }
}

/// How long a dead peer may hold an HTTP/2 connection: TCP keep-alive
/// probes start after this much silence ...
#[cfg(unix)]
const KEEPALIVE_IDLE: Duration = Duration::from_secs(20);
/// ... and come this often, ...
#[cfg(unix)]
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ... this many times before the kernel gives up on the peer;
#[cfg(unix)]
const KEEPALIVE_PROBES: u32 = 4;
/// and data sent but not acknowledged for this long ends the connection
/// too (Linux).
#[cfg(any(target_os = "linux", target_os = "android"))]
const UNACKNOWLEDGED: Duration = Duration::from_secs(40);

/// The TCP socket under a connection, borrowed for as long as the
/// connection lives.
pub(crate) struct TcpSocket {
    #[cfg(unix)]
    fd: std::os::fd::RawFd,
}

impl TcpSocket {
    #[cfg(unix)]
    pub(crate) fn of(stream: &tokio::net::TcpStream) -> Option<TcpSocket> {
        use std::os::fd::AsRawFd;
        Some(TcpSocket {
            fd: stream.as_raw_fd(),
        })
    }

    #[cfg(not(unix))]
    pub(crate) fn of(_stream: &tokio::net::TcpStream) -> Option<TcpSocket> {
        None
    }

    /// Has the kernel find out when the peer of a long-lived connection is
    /// gone (power lost, network cut): an HTTP/2 connection without
    /// streams is ended by the idle timeout, but one whose streams are open
    /// would otherwise wait for the peer forever. hyper's HTTP/2 PING
    /// keep-alive would do the same, but takes a lock and reads the clock
    /// on every frame; the kernel's probes cost nothing while the peer
    /// talks. Best effort: a failure leaves the connection as it was.
    fn probe_dead_peer(&self) {
        #[cfg(unix)]
        {
            // SAFETY: the descriptor belongs to the socket of the
            // connection that carries the request being served, which
            // outlives this call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
            let socket = socket2::SockRef::from(&fd);
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(KEEPALIVE_IDLE)
                .with_interval(KEEPALIVE_INTERVAL)
                .with_retries(KEEPALIVE_PROBES);
            let _ = socket.set_tcp_keepalive(&keepalive);
            #[cfg(any(target_os = "linux", target_os = "android"))]
            let _ = socket.set_tcp_user_timeout(Some(UNACKNOWLEDGED));
        }
    }
}

/// Serves one accepted connection until it closes, a timer ends it, or the
/// drain ends it. `io` is (or wraps) a [`Tracked`] socket, so it counts in
/// the drain, and sees whether the client said it sends nothing more;
/// `tcp` is its TCP socket, if it is one.
///
/// A connection that has not started a request within `header_timeout` is
/// dropped: a client that sends nothing, or part of the HTTP/2 preface, or
/// nothing after its TLS handshake. One that then starts no new request for
/// `idle_timeout` (HTTP/1: the shorter of the two) is shut down politely (a
/// response in progress finishes; HTTP/2 gets GOAWAY). The connection's one
/// timer is looked at only when it fires: a request costs no timer.
///
/// The connection's bookkeeping is allocated here, by the caller (the
/// accept loop), with the connection's task, rather than by the task when
/// it first runs, among hyper's allocations of the connection's first
/// buffers: there, in one build, hyper's 8 KB read buffer, grown at the
/// second read, could seldom grow where it was and was copied (`realloc`;
/// `scripts/instructions graceful close`, about 3,800 instructions per
/// connection). Where it lands moves with the heap's layout from build to
/// build, for plain hyper-util too; this keeps the worker's own
/// allocations per connection to hyper's.
pub(crate) fn serve_connection<R: Respond>(
    mut io: Socket,
    tcp: Option<TcpSocket>,
    respond: Arc<R>,
    http: Arc<HttpServing>,
) -> impl Future<Output = ()> + Send {
    let epoch = tokio::time::Instant::now();
    let activity = Arc::new(Activity::new());
    io.attach(&activity);
    let service = ConnService {
        respond,
        activity: activity.clone(),
        tcp,
    };
    serving(io, service, activity, http, epoch)
}

async fn serving<R: Respond>(
    io: Socket,
    service: ConnService<R>,
    activity: Arc<Activity>,
    http: Arc<HttpServing>,
    // When the connection was accepted: its header timeout counts from then.
    epoch: tokio::time::Instant,
) {
    let timers = http.timers;
    let conn = crate::http::HttpConn::new(&http.builders, io, service);
    tokio::pin!(conn);
    let drain_started = global().stopping();
    tokio::pin!(drain_started);
    // Until the first request, the header timeout; then the idle timeout
    // from the last request's end, pushed back while one is being handled.
    // The first check comes at the earlier of the two.
    let first_check = timers.header_timeout.min(timers.idle_timeout);
    let timer = tokio::time::sleep_until(epoch + first_check);
    tokio::pin!(timer);
    // The waker the timer was last polled with: it wakes it when it fires,
    // so while it stays the task's waker, each wake of the connection looks
    // at a flag instead of polling the timer again (as `Stopping` does for
    // the drain).
    let mut armed: Option<std::task::Waker> = None;
    loop {
        let woke = std::future::poll_fn(|cx| {
            if conn.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Closed);
            }
            if drain_started.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Drain);
            }
            let fresh = armed.as_ref().is_none_or(|w| !w.will_wake(cx.waker()));
            if (fresh || timer.is_elapsed()) && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Timer);
            }
            if fresh {
                armed = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        match woke {
            Woke::Closed => return,
            Woke::Drain => break,
            Woke::Timer => {}
        }
        // Polled again with the new deadline before the next wait.
        armed = None;
        let now = tokio::time::Instant::now();
        if !activity.started.load(Ordering::Relaxed) {
            let limit = epoch + timers.header_timeout;
            if now < limit {
                timer.as_mut().reset(limit);
                continue;
            }
            // Nothing worth keeping: drop the connection.
            return;
        }
        // HTTP/1: the next request head must also come within the header
        // timeout of the last request's end.
        let idle_timeout = if activity.h2.load(Ordering::Relaxed) {
            timers.idle_timeout
        } else {
            first_check
        };
        if activity.handling() > 0 {
            timer.as_mut().reset(now + idle_timeout);
            continue;
        }
        let idle_for = activity.idle_for();
        if idle_for < idle_timeout {
            timer.as_mut().reset(now + (idle_timeout - idle_for));
            continue;
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
        return;
    }
    if !activity.h2.load(Ordering::Relaxed) {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(timers.idle_grace) => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coarse clock counts milliseconds, as the precise one does, to
    /// within its tick (at most 10 ms) and the scheduler's delay.
    #[test]
    fn the_coarse_clock_counts_milliseconds() {
        let precise = std::time::Instant::now();
        let start = coarse_millis();
        std::thread::sleep(Duration::from_millis(100));
        let counted = coarse_millis() - start;
        let elapsed = precise.elapsed().as_millis() as u64;
        assert!(
            counted + 20 >= elapsed && counted <= elapsed + 20,
            "coarse {counted} ms, precise {elapsed} ms"
        );
        assert!(counted >= 80, "coarse {counted} ms over 100 ms");
        // And it is the kernel's monotonic clock, in milliseconds.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let precise = crate::notify::monotonic_usec() / 1000;
            assert!(precise.abs_diff(coarse_millis()) <= 20, "{precise}");
        }
    }

    /// A request ends its connection as RFC 9112 (9.3, 9.6) says: HTTP/1.1
    /// with the `close` option, in any case and among others; HTTP/1.0
    /// unless it asks for `keep-alive`.
    #[test]
    fn a_request_ends_its_connection_when_it_says_so() {
        let request = |version, values: &[&str]| {
            let mut req = Request::builder().version(version);
            for value in values {
                req = req.header(CONNECTION, *value);
            }
            req.body(()).unwrap()
        };
        let v11 = Version::HTTP_11;
        let v10 = Version::HTTP_10;
        assert!(ends_connection(&request(v11, &["close"])));
        assert!(ends_connection(&request(v11, &["Close"])));
        assert!(ends_connection(&request(v11, &["upgrade, close"])));
        assert!(ends_connection(&request(v11, &["te", " CLOSE "])));
        assert!(!ends_connection(&request(v11, &[])));
        assert!(!ends_connection(&request(v11, &["keep-alive"])));
        assert!(!ends_connection(&request(v11, &["closed, x-close"])));
        // Only a letter's case is ignored: `-` matches `-` alone (0x0d
        // would match it once lowered), and no byte stands for a letter
        // but that letter in either case.
        assert!(is_option(b"Keep-Alive", b"keep-alive"));
        assert!(is_option(b"CLOSE", b"close"));
        assert!(!is_option(b"keep\ralive", b"keep-alive"));
        assert!(!is_option(b"keep\x0dalive", b"keep-alive"));
        assert!(!is_option(b"clos", b"close"));
        assert!(!is_option(b"closes", b"close"));
        assert!(!is_option(b"c\x0cose", b"close"));
        for b in 0..=255u8 {
            let value = [b];
            assert_eq!(is_option(&value, b"l"), b == b'l' || b == b'L', "{b:#x}");
            assert_eq!(is_option(&value, b"-"), b == b'-', "{b:#x}");
        }
        assert!(ends_connection(&request(v10, &[])));
        assert!(ends_connection(&request(v10, &["close"])));
        assert!(!ends_connection(&request(v10, &["Keep-Alive"])));
        assert!(!ends_connection(&request(v10, &["te,keep-alive"])));
        assert!(ends_connection(&request(Version::HTTP_09, &[])));
        // A long head is looked up rather than searched through.
        let long = |close: bool| {
            let mut req = request(v11, if close { &["close"] } else { &[] });
            for i in 0..10 {
                let name = http::HeaderName::try_from(format!("x-{i}")).unwrap();
                req.headers_mut()
                    .insert(name, HeaderValue::from_static("1"));
            }
            req
        };
        assert!(ends_connection(&long(true)));
        assert!(!ends_connection(&long(false)));
    }

    /// A stream in memory is read to find out, as a socket whose readiness
    /// is set.
    impl ReadReady for tokio::io::DuplexStream {
        fn read_if_ready(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut buf = ReadBuf::new(buf);
            match Pin::new(self).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) => Ok(buf.filled().len()),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    /// Closing lingers unless the client said it sends nothing more and has
    /// sent nothing more: then the socket closes at once, with no timer.
    #[test]
    fn closing_lingers_unless_the_client_said_it_sends_nothing_more() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Whether the shutdown is done at once, for a client that said
        // `done`, and had sent `unread` before it.
        let closes_at_once = |done: bool, unread: &[u8]| {
            runtime.block_on(async {
                use tokio::io::AsyncWriteExt;
                let (server, mut client) = tokio::io::duplex(4096);
                client.write_all(unread).await.unwrap();
                let slot = crate::slots::Slots::new(1).try_take().unwrap();
                let mut tracked = Tracked::new(server, slot);
                let http = Arc::new(Activity::new());
                http.client_done.store(done, Ordering::Relaxed);
                tracked.http = Arc::downgrade(&http);
                std::future::poll_fn(|cx| {
                    Poll::Ready(Pin::new(&mut tracked).poll_shutdown(cx).is_ready())
                })
                .await
            })
        };
        assert!(closes_at_once(true, b""));
        assert!(!closes_at_once(true, b"GET /more HTTP/1.1\r\n"));
        assert!(!closes_at_once(false, b""));
    }

    /// `Stopping` is ready once the drain starts, whether it was made (or
    /// first polled) before or after, and is woken by the start; polled
    /// again with the same waker before it, it stays pending.
    #[test]
    fn stopping_is_woken_by_the_drain_and_ready_after_it() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let drain: &'static Drain = Box::leak(Box::new(Drain::new()));
        let mut polled = Box::pin(drain.stopping());
        let mut made = Box::pin(drain.stopping());
        assert!(polled.as_mut().poll(&mut cx).is_pending());
        assert!(polled.as_mut().poll(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        drain.start(Some("a test"));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the start wakes it");
        assert!(polled.as_mut().poll(&mut cx).is_ready());
        assert!(made.as_mut().poll(&mut cx).is_ready());
        assert!(Box::pin(drain.stopping()).as_mut().poll(&mut cx).is_ready());
        // Another drain's start wakes nothing here.
        let other: &'static Drain = Box::leak(Box::new(Drain::new()));
        let mut waiting = Box::pin(other.stopping());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        drain.start(None);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
    }

    /// The bookkeeping's `Arc` stays within the 48-byte chunk that hyper's
    /// own per-request allocations use (see [`Activity`]): glibc serves
    /// requests of up to 40 bytes from it.
    #[test]
    fn a_connections_bookkeeping_fits_the_chunk_hyper_allocates_per_request() {
        // An `Arc`'s allocation: its two counts, then the value.
        let allocated = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Activity>();
        assert!(allocated <= 40, "{allocated} bytes");
    }

    /// A connection is idle from the end of its last request: `touch`
    /// starts the count again.
    #[test]
    fn a_request_ending_starts_the_idle_count_again() {
        let activity = Activity::new();
        activity
            .last
            .store(coarse_millis() - 5_000, Ordering::Relaxed);
        let idle = activity.idle_for();
        assert!(
            idle >= Duration::from_secs(5) && idle < Duration::from_secs(6),
            "{idle:?}"
        );
        activity.touch();
        assert!(activity.idle_for() < Duration::from_millis(50));
        // The connection's task and its service hold it; each request's
        // future adds one until it is dropped.
        let task = Arc::new(activity);
        let service = task.clone();
        assert_eq!(task.handling(), 0);
        let request = task.clone();
        assert_eq!(task.handling(), 1);
        drop(request);
        assert_eq!(task.handling(), 0);
        drop(service);
    }
}
