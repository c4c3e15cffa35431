//! What `register!` accepts as a handler, turned into one boxed form.
//!
//! Four shapes are accepted: an async fn or closure
//! `Fn(Request<Incoming>) -> Future<Output = Result<Response<B>, E>>`, any
//! `hyper::service::Service`, any `tower::Service` (such as `axum::Router`),
//! and, for any other protocol, a stream handler
//! `Fn(Connection, Peer) -> Future<Output = ()>` that is given each accepted
//! connection; and for datagrams, a handler given the socket itself,
//! `Fn(tokio::net::UdpSocket)` or `Fn(tokio::net::UnixDatagram)` returning
//! `Future<Output = ()>`. A marker type parameter keeps the impls apart, as
//! axum does for its handlers.
//!
//! Errors returned by a handler and panics inside one become a 500 response
//! and a log line; they never take the worker down.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::drain::{self, Respond, Socket};

/// A boxed error, as handlers and bodies may return any error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body every handler's body is converted to: a whole body
/// held as it is, or any other body boxed.
///
/// Most responses are whole (`String`, `Full<Bytes>`, `Empty`): those
/// are not boxed, which saves an allocation and a dynamic call per request.
pub(crate) enum ResponseBody {
    /// The whole body, until it is sent; `None` once sent, or if empty.
    Whole(Option<Bytes>),
    /// Any other body.
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

// `#[inline]`: called for every response by hyper's code, which is compiled
// in the application's crate (see `Socket`'s I/O in drain.rs).
impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Whole(data) => {
                Poll::Ready(data.take().map(|d| Ok(http_body::Frame::data(d))))
            }
            ResponseBody::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Whole(data) => data.is_none(),
            ResponseBody::Boxed(body) => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ResponseBody::Whole(data) => {
                http_body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Boxed(body) => body.size_hint(),
        }
    }
}

impl ResponseBody {
    fn whole(data: Bytes) -> ResponseBody {
        ResponseBody::Whole(if data.is_empty() { None } else { Some(data) })
    }

    /// Converts any body: `String`, `Full<Bytes>` and `Empty<Bytes>`, which
    /// hold their whole data, are taken apart without a copy; a body boxed
    /// already is kept; anything else is boxed.
    fn from_body<B>(body: B) -> ResponseBody
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let mut slot = Some(body);
        let any: &mut dyn Any = &mut slot;
        if let Some(s) = any.downcast_mut::<Option<String>>().and_then(Option::take) {
            return ResponseBody::whole(Bytes::from(s));
        }
        if any.downcast_mut::<Option<Empty<Bytes>>>().is_some() {
            return ResponseBody::Whole(None);
        }
        if let Some(full) = any
            .downcast_mut::<Option<Full<Bytes>>>()
            .and_then(Option::take)
        {
            return ResponseBody::Whole(whole_data(full));
        }
        if let Some(boxed) = any
            .downcast_mut::<Option<UnsyncBoxBody<Bytes, BoxError>>>()
            .and_then(Option::take)
        {
            return ResponseBody::Boxed(boxed);
        }
        let body = slot.expect("taken only by a match, which returns");
        ResponseBody::Boxed(IntoBytes { body }.boxed_unsync())
    }
}

/// The data of a `Full`, which gives it up on its first poll, at once.
fn whole_data(mut full: Full<Bytes>) -> Option<Bytes> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut full).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().ok().filter(|d| !d.is_empty()),
        Poll::Ready(Some(Err(never))) => match never {},
        Poll::Ready(None) | Poll::Pending => None,
    }
}

/// A tower service's future, boxed with its readiness.
type BoxFuture<B> = Pin<Box<dyn Future<Output = Result<Response<B>, BoxError>> + Send>>;

/// An HTTP handler with its type erased per connection, not per request:
/// each handler type gets its own copy of the connection's serving code,
/// so a request costs no box and no dynamic call.
trait ServeHttp: Send + Sync {
    /// Serves one connection on a task of its own, whose future is the
    /// connection's, boxed: the task then holds a pointer, where the 2.2 KB
    /// future itself would be copied into the task and again at each of its
    /// stage changes (measured: more CPU time per connection unboxed).
    fn spawn(
        self: Arc<Self>,
        io: Socket,
        tcp: Option<drain::TcpSocket>,
        http: Arc<drain::HttpServing>,
    );
}

impl<R: Respond> ServeHttp for R {
    fn spawn(
        self: Arc<Self>,
        io: Socket,
        tcp: Option<drain::TcpSocket>,
        http: Arc<drain::HttpServing>,
    ) {
        tokio::spawn(Box::pin(drain::serve_connection(io, tcp, self, http)));
    }
}

/// A handler in the boxed form the worker serves. Made by [`IntoHandler`].
#[derive(Clone)]
pub struct Handler {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Http(Arc<dyn ServeHttp>),
    Stream(Arc<StreamFn>),
    Udp(Arc<DatagramFn<tokio::net::UdpSocket>>),
    #[cfg(unix)]
    Unixgram(Arc<DatagramFn<tokio::net::UnixDatagram>>),
}

/// A datagram handler, boxed: given the socket, it serves until the drain.
type DatagramFn<S> = dyn Fn(S) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// What kind of socket a handler serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serves {
    /// Accepted connections: HTTP or a stream handler.
    Connections,
    /// A UDP socket.
    Udp,
    /// A Unix datagram socket.
    Unixgram,
}

/// A datagram socket, handed to a datagram handler.
#[derive(Debug)]
pub(crate) enum DatagramSocket {
    Udp(tokio::net::UdpSocket),
    #[cfg(unix)]
    Unixgram(tokio::net::UnixDatagram),
}

/// A stream handler, boxed.
type StreamFn = dyn Fn(Connection, Peer) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// An accepted connection, for a stream handler: read and write it with
/// tokio's `AsyncReadExt`/`AsyncWriteExt`. It counts in the drain until it
/// is dropped, and is TLS already decrypted when the listener has `tls =`.
pub struct Connection {
    io: Pin<Box<dyn drain::Io>>,
}

impl Connection {
    pub(crate) fn new<T>(io: T) -> Connection
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        Connection { io: Box::pin(io) }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl tokio::io::AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.io.as_mut().poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.io.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io.as_mut().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.io.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Who is at the other end of a [`Connection`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A TCP client at this address.
    Tcp(std::net::SocketAddr),
    /// A Unix socket client (usually unnamed).
    Unix,
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handler").finish_non_exhaustive()
    }
}

/// Marker types that tell the [`IntoHandler`] impls apart.
pub mod marker {
    /// An async fn or closure.
    #[derive(Debug)]
    pub enum AsyncFn {}
    /// A `hyper::service::Service`.
    #[derive(Debug)]
    pub enum HyperService {}
    /// A `tower::Service`.
    #[derive(Debug)]
    pub enum TowerService {}
    /// A stream handler: `Fn(Connection, Peer) -> impl Future<Output = ()>`.
    #[derive(Debug)]
    pub enum Stream {}
    /// A UDP handler: `Fn(tokio::net::UdpSocket) -> impl Future<Output = ()>`.
    #[derive(Debug)]
    pub enum Udp {}
    /// A Unix datagram handler:
    /// `Fn(tokio::net::UnixDatagram) -> impl Future<Output = ()>`.
    #[derive(Debug)]
    pub enum Unixgram {}
}

/// A UDP handler is given the socket the master holds (`udp:` addresses,
/// or a datagram socket systemd passed) once the worker is ready, and must
/// read until [`shutdown_signal()`](crate::shutdown_signal) completes: the
/// next worker reads from the same socket, so the datagrams this one leaves
/// unread are the next one's.
impl<F, Fut> IntoHandler<marker::Udp> for F
where
    F: Fn(tokio::net::UdpSocket) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn into_handler(self) -> Handler {
        Handler {
            kind: Kind::Udp(Arc::new(move |socket| Box::pin(self(socket)))),
        }
    }
}

/// A Unix datagram handler (`unixgram:` addresses), served as a UDP handler
/// is.
#[cfg(unix)]
impl<F, Fut> IntoHandler<marker::Unixgram> for F
where
    F: Fn(tokio::net::UnixDatagram) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn into_handler(self) -> Handler {
        Handler {
            kind: Kind::Unixgram(Arc::new(move |socket| Box::pin(self(socket)))),
        }
    }
}

impl<F, Fut> IntoHandler<marker::Stream> for F
where
    F: Fn(Connection, Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn into_handler(self) -> Handler {
        Handler {
            kind: Kind::Stream(Arc::new(move |conn, peer| Box::pin(self(conn, peer)))),
        }
    }
}

/// Anything `register!` can serve. `M` is a marker chosen by inference; you
/// never name it.
pub trait IntoHandler<M>: Send + 'static {
    /// Boxes the handler.
    fn into_handler(self) -> Handler;
}

impl IntoHandler<()> for Handler {
    fn into_handler(self) -> Handler {
        self
    }
}

fn box_body<B>(response: Response<B>) -> Response<ResponseBody>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    response.map(ResponseBody::from_body)
}

pin_project! {
    /// Converts a body's data to `Bytes` while keeping its size hint, so
    /// that a body of known length is still sent with `Content-Length` (a
    /// `MapFrame` would lose the hint and force chunked encoding).
    struct IntoBytes<B> {
        #[pin]
        body: B,
    }
}

impl<B> Body for IntoBytes<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx).map(|frame| {
            frame.map(|result| {
                result
                    .map(|frame| frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
                    .map_err(Into::into)
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl<F, Fut, B, E> IntoHandler<marker::AsyncFn> for F
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    fn into_handler(self) -> Handler {
        Handler {
            kind: Kind::Http(Arc::new(AsyncFnHandler(self))),
        }
    }
}

/// An async fn or closure as an HTTP handler.
struct AsyncFnHandler<F>(F);

impl<F, Fut, B, E> Respond for AsyncFnHandler<F>
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    type Body = ResponseBody;
    type Future = Handling<Fut>;

    fn respond(&self, req: Request<Incoming>, finish: drain::Finish) -> Self::Future {
        Handling::call(req, finish, |req| (self.0)(req))
    }
}

impl<S, B> IntoHandler<marker::HyperService> for S
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn into_handler(self) -> Handler {
        Handler {
            kind: Kind::Http(Arc::new(HyperHandler(self))),
        }
    }
}

/// A `hyper::service::Service` as an HTTP handler.
struct HyperHandler<S>(S);

impl<S, B> Respond for HyperHandler<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Body = ResponseBody;
    type Future = Handling<S::Future>;

    fn respond(&self, req: Request<Incoming>, finish: drain::Finish) -> Self::Future {
        Handling::call(req, finish, |req| self.0.call(req))
    }
}

impl<S, B> IntoHandler<marker::TowerService> for S
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn into_handler(self) -> Handler {
        Handler {
            kind: Kind::Http(Arc::new(TowerHandler(self))),
        }
    }
}

/// A `tower::Service` as an HTTP handler: cloned for each request, which
/// waits for `poll_ready` before it is called. Its future is boxed (it is
/// an async block); an axum router boxes its own anyway.
struct TowerHandler<S>(S);

impl<S, B> Respond for TowerHandler<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Body = ResponseBody;
    type Future = Handling<BoxFuture<B>>;

    fn respond(&self, req: Request<Incoming>, finish: drain::Finish) -> Self::Future {
        Handling::call(req, finish, |req| {
            let mut svc = self.0.clone();
            Box::pin(async move {
                std::future::poll_fn(|cx| svc.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                svc.call(req).await.map_err(Into::into)
            }) as BoxFuture<B>
        })
    }
}

pin_project! {
    /// A future that turns a panic of the inner future into
    /// `Err(message)`. Used for handlers (a panic becomes a 500, or ends a
    /// stream connection), datagram handlers (started again), and `main` in
    /// workers (a panic becomes a reported start failure).
    pub(crate) struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(future: F) -> CatchUnwind<F> {
        CatchUnwind { future }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(panic) => Poll::Ready(Err(panic_message(&*panic))),
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

fn internal_error() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::whole(Bytes::from_static(
        b"Internal Server Error\n",
    )));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

impl Handler {
    /// Whether this is a stream handler rather than an HTTP one.
    pub(crate) fn is_stream(&self) -> bool {
        matches!(self.kind, Kind::Stream(_))
    }

    /// What kind of socket this handler serves.
    pub(crate) fn serves(&self) -> Serves {
        match self.kind {
            Kind::Http(_) | Kind::Stream(_) => Serves::Connections,
            Kind::Udp(_) => Serves::Udp,
            #[cfg(unix)]
            Kind::Unixgram(_) => Serves::Unixgram,
        }
    }

    /// Runs a datagram handler on `socket` until it returns. `Err` is the
    /// message of a panic in it.
    pub(crate) async fn serve_datagrams(&self, socket: DatagramSocket) -> Result<(), String> {
        let run = match (&self.kind, socket) {
            (Kind::Udp(call), DatagramSocket::Udp(socket)) => call(socket),
            #[cfg(unix)]
            (Kind::Unixgram(call), DatagramSocket::Unixgram(socket)) => call(socket),
            _ => unreachable!("a datagram handler is given the socket it serves"),
        };
        CatchUnwind::new(run).await
    }

    /// Gives a connection to a stream handler; a panic in it is logged and
    /// ends that connection only.
    pub(crate) async fn serve_stream(&self, conn: Connection, peer: Peer) {
        let Kind::Stream(call) = &self.kind else {
            unreachable!("serve_stream is called for stream handlers only");
        };
        // For the log line on a panic only: a copy, formatted then.
        let from = peer.clone();
        if let Err(message) = CatchUnwind::new(call(conn, peer)).await {
            let peer = format!("{from:?}");
            crate::log::event!(
                Error,
                { event = "handler_panicked", peer = peer.as_str(), panic = message.as_str() },
                "stream handler panicked on a connection from {peer}: {message}; connection closed"
            );
        }
    }

    /// Serves one accepted connection over HTTP, on a task of its own,
    /// until it closes, a timer ends it, or the drain ends it (see
    /// [`drain::serve_connection`]).
    pub(crate) fn spawn_http(
        &self,
        io: Socket,
        tcp: Option<drain::TcpSocket>,
        http: Arc<drain::HttpServing>,
    ) {
        let Kind::Http(serve) = &self.kind else {
            unreachable!("spawn_http is called for HTTP handlers only");
        };
        serve.clone().spawn(io, tcp, http)
    }
}

pin_project! {
    /// One request in an HTTP handler: the handler's future, and what a log
    /// line about its failure names; or, if the call panicked, a 500 to
    /// answer. Its response body becomes a [`ResponseBody`]; its errors and
    /// panics (in the call or in the future it returns) become a logged 500.
    /// It holds the request's [`drain::Finish`] until it is dropped.
    pub(crate) struct Handling<F> {
        #[pin]
        state: State<F>,
        finish: drain::Finish,
    }
}

pin_project! {
    /// An enum rather than an optional future, so that its tag is folded
    /// into the method's and costs no room in every request's task.
    #[project = StateProj]
    enum State<F> {
        Running {
            #[pin]
            future: CatchUnwind<F>,
            method: Method,
            path: Option<PathAndQuery>,
        },
        CallPanicked,
    }
}

impl<F> Handling<F> {
    /// Calls the handler with `req` (`call`). A panic in the call is logged
    /// at once, and the request answered 500 when polled.
    fn call<Q>(
        req: Request<Q>,
        finish: drain::Finish,
        call: impl FnOnce(Request<Q>) -> F,
    ) -> Handling<F> {
        // Kept for the log line on error: a method is inline for the
        // standard ones, and a path is a reference count.
        let method = req.method().clone();
        let path = req.uri().path_and_query().cloned();
        let state = match std::panic::catch_unwind(AssertUnwindSafe(|| call(req))) {
            Ok(future) => State::Running {
                future: CatchUnwind::new(future),
                method,
                path,
            },
            Err(panic) => {
                log_failure(
                    &method,
                    path.as_ref(),
                    Failure::Panicked(panic_message(&*panic)),
                );
                State::CallPanicked
            }
        };
        Handling { state, finish }
    }
}

impl<F, B, E> Future for Handling<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.state.project() {
            // Logged when the call panicked.
            StateProj::CallPanicked => internal_error(),
            StateProj::Running {
                future,
                method,
                path,
            } => match future.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Ok(response))) => box_body(response),
                Poll::Ready(Ok(Err(error))) => failed(method, path, Failure::Error(error.into())),
                Poll::Ready(Err(panic)) => failed(method, path, Failure::Panicked(panic)),
            },
        };
        this.finish.finish(&mut response);
        Poll::Ready(Ok(response))
    }
}

/// The 500 that answers a handler's failure, logged.
#[cold]
fn failed(
    method: &Method,
    path: &Option<PathAndQuery>,
    failure: Failure,
) -> Response<ResponseBody> {
    log_failure(method, path.as_ref(), failure);
    internal_error()
}

/// How a handler failed.
enum Failure {
    Error(BoxError),
    Panicked(String),
}

/// Logs a handler's failure on `method` `path`. Apart from
/// `Handling::poll`, which runs for every request, so that the log lines'
/// code stays out of its way.
#[cold]
#[inline(never)]
fn log_failure(method: &Method, path: Option<&PathAndQuery>, failure: Failure) {
    let path = path.map_or("", PathAndQuery::path);
    match failure {
        Failure::Error(error) => {
            let error = error.to_string();
            crate::log::event!(
                Error,
                {
                    event = "handler_error",
                    method = method.as_str(),
                    path = path,
                    error = error.as_str(),
                },
                "handler error on {method} {path}: {error}; answered 500"
            );
        }
        Failure::Panicked(panic) => crate::log::event!(
            Error,
            {
                event = "handler_panicked",
                method = method.as_str(),
                path = path,
                panic = panic.as_str(),
            },
            "handler panicked on {method} {path}: {panic}; answered 500"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_named_by_its_message_of_either_string_type_or_as_without_one() {
        let message = |payload: Box<dyn Any + Send>| panic_message(&*payload);
        assert_eq!(message(Box::new("told to")), "told to");
        assert_eq!(message(Box::new(format!("told {}", 2))), "told 2");
        assert_eq!(message(Box::new(42_u32)), "a panic without a message");
    }

    /// Every frame of a body, polled to its end, and its size hint first.
    fn drain(mut body: ResponseBody) -> (Option<u64>, bool, Vec<Bytes>) {
        let hint = body.size_hint().exact();
        let ended_at_once = body.is_end_stream();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut frames = Vec::new();
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => frames.push(frame.into_data().unwrap()),
                Poll::Ready(Some(Err(e))) => panic!("{e}"),
                Poll::Ready(None) => break,
                Poll::Pending => panic!("a test body is always ready"),
            }
        }
        (hint, ended_at_once, frames)
    }

    #[test]
    fn whole_bodies_are_held_unboxed_with_their_length_and_data() {
        let hello = || Bytes::from_static(b"hello");
        let cases = [
            ResponseBody::from_body(String::from("hello")),
            ResponseBody::from_body(Full::new(hello())),
        ];
        for mut body in cases {
            assert!(matches!(body, ResponseBody::Whole(Some(_))));
            // After its one frame, the body says it has ended, so that the
            // frame carries the end of the stream.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let copy = match &body {
                ResponseBody::Whole(data) => ResponseBody::Whole(data.clone()),
                ResponseBody::Boxed(_) => unreachable!(),
            };
            assert!(Pin::new(&mut body).poll_frame(&mut cx).is_ready());
            assert!(body.is_end_stream());
            let body = copy;
            assert_eq!(drain(body), (Some(5), false, vec![hello()]));
        }
        for empty in [
            ResponseBody::from_body(String::new()),
            ResponseBody::from_body(Empty::<Bytes>::new()),
            ResponseBody::from_body(Full::new(Bytes::new())),
        ] {
            assert!(matches!(empty, ResponseBody::Whole(None)));
            assert_eq!(drain(empty), (Some(0), true, vec![]));
        }
    }

    #[test]
    fn other_bodies_are_boxed_once_and_keep_their_frames_and_hint() {
        // A body in two frames, of unknown length.
        let chunks = Chunks(vec![Bytes::from_static(b"one "), Bytes::from_static(b"two")].into());
        let body = ResponseBody::from_body(chunks);
        assert!(matches!(body, ResponseBody::Boxed(_)));
        assert_eq!(
            drain(body),
            (
                None,
                false,
                vec![Bytes::from_static(b"one "), Bytes::from_static(b"two")]
            )
        );
        // A body already boxed is not boxed again.
        let boxed: UnsyncBoxBody<Bytes, BoxError> = Full::new(Bytes::from_static(b"x"))
            .map_err(|never: std::convert::Infallible| match never {})
            .boxed_unsync();
        let body = ResponseBody::from_body(boxed);
        assert!(matches!(body, ResponseBody::Boxed(_)));
        assert_eq!(
            drain(body),
            (Some(1), false, vec![Bytes::from_static(b"x")])
        );
    }

    /// Data frames that are all ready, of a length not told in advance.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
        }
    }

    /// A connection writes the way its socket does: a TCP socket takes a
    /// response's head and body in one vectored write, and the box around
    /// it must not turn that into one write per buffer, or a copy.
    #[test]
    fn a_connection_writes_vectored_when_its_socket_does() {
        use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            let mut conn = Connection::new(client);
            assert!(conn.is_write_vectored());
            let bufs = [
                std::io::IoSlice::new(b"head "),
                std::io::IoSlice::new(b"body"),
            ];
            let written =
                std::future::poll_fn(|cx| Pin::new(&mut conn).poll_write_vectored(cx, &bufs))
                    .await
                    .unwrap();
            assert_eq!(written, 9, "both buffers in one write");
            let mut got = [0u8; 9];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"head body");
            // Plain reads, writes, flush and shutdown pass through too.
            conn.write_all(b"more").await.unwrap();
            conn.flush().await.unwrap();
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"more");
            server.write_all(b"back").await.unwrap();
            let mut got = [0u8; 4];
            conn.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"back");
            conn.shutdown().await.unwrap();
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "EOF after the shutdown");
            // A stream that does not write vectored is not said to.
            assert!(!Connection::new(NotVectored).is_write_vectored());
        });
    }

    /// A handler's panic, in the call or in its future, and its error are
    /// each answered 500; a response is passed on as it is.
    #[test]
    fn a_panic_in_the_call_or_the_future_and_an_error_are_answered_500() {
        type Answer = Result<Response<ResponseBody>, BoxError>;
        fn answer(handling: Handling<Pin<Box<dyn Future<Output = Answer> + Send>>>) -> StatusCode {
            let mut handling = std::pin::pin!(handling);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match handling.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(response)) => response.status(),
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => panic!("the handlers here are ready at once"),
            }
        }
        let request = || Request::get("/x").body(()).unwrap();
        let ok = Handling::call(request(), drain::Finish::detached(), |_| {
            Box::pin(async { Ok(Response::new(ResponseBody::Whole(None))) })
                as Pin<Box<dyn Future<Output = Answer> + Send>>
        });
        assert_eq!(answer(ok), StatusCode::OK);
        let panics_when_called = Handling::call(
            request(),
            drain::Finish::detached(),
            |_| -> Pin<Box<dyn Future<Output = Answer> + Send>> { panic!("in the call") },
        );
        assert_eq!(
            answer(panics_when_called),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let panics_when_polled = Handling::call(request(), drain::Finish::detached(), |_| {
            Box::pin(async {
                panic!("in the future");
                #[allow(unreachable_code)]
                Err("unreachable".into())
            }) as Pin<Box<dyn Future<Output = Answer> + Send>>
        });
        assert_eq!(
            answer(panics_when_polled),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let fails = Handling::call(request(), drain::Finish::detached(), |_| {
            Box::pin(async { Err::<Response<ResponseBody>, BoxError>("no".into()) })
                as Pin<Box<dyn Future<Output = Answer> + Send>>
        });
        assert_eq!(answer(fails), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// A body of another type is boxed through `IntoBytes`, which keeps
    /// its size hint (or `Content-Length` would be lost) and its end.
    #[test]
    fn a_body_of_another_type_keeps_its_size_and_its_end() {
        let body = ResponseBody::from_body(Full::new(&b"hello"[..]));
        assert!(matches!(body, ResponseBody::Boxed(_)));
        assert_eq!(
            drain(body),
            (Some(5), false, vec![Bytes::from_static(b"hello")])
        );
        let empty = ResponseBody::from_body(Full::new(&b""[..]));
        assert!(matches!(empty, ResponseBody::Boxed(_)));
        assert_eq!(drain(empty), (Some(0), true, vec![]));
    }

    /// A stream that writes one buffer at a time: an end of file to read,
    /// and a sink to write.
    struct NotVectored;

    impl tokio::io::AsyncRead for NotVectored {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl tokio::io::AsyncWrite for NotVectored {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}
