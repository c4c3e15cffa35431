//! One HTTP connection as hyper serves it: HTTP/1.1 (with upgrades) or
//! HTTP/2 with prior knowledge, told apart by the connection's first bytes.
//!
//! hyper-util's `auto` connection does the same, but reads the first 24
//! bytes (the length of the HTTP/2 preface) on their own and leaves the
//! rest of the request to a second read: two system calls where one does,
//! on every new connection. Here the first read takes whatever has come, up
//! to [`FIRST_READ`] bytes, and hyper is handed those bytes before the
//! socket's next ones; hyper's connection is then polled directly, without
//! `auto`'s layers around it.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A response body hyper can send on either protocol.
pub(crate) trait SendableBody: Body<Error: Into<BoxError>> + Send + 'static {}
impl<B: Body<Error: Into<BoxError>> + Send + 'static> SendableBody for B {}

/// A service hyper can serve a connection with, on either protocol.
pub(crate) trait ConnectionService:
    HttpService<Incoming, Future: Send + 'static, ResBody: SendableBody<Data: Send>> + Send + 'static
{
}
impl<S> ConnectionService for S where
    S: HttpService<Incoming, Future: Send + 'static, ResBody: SendableBody<Data: Send>>
        + Send
        + 'static
{
}

/// A socket a connection can be served on.
pub(crate) trait ConnectionIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ConnectionIo for T {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113, 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most the first read takes: a request head of this size or less
/// (nearly all) is read whole by it.
const FIRST_READ: usize = 4096;

/// hyper's builders for the two protocols, configured once per process.
pub(crate) struct Builders {
    pub(crate) http1: http1::Builder,
    pub(crate) http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    pub(crate) fn new() -> Builders {
        Builders {
            http1: http1::Builder::new(),
            http2: http2::Builder::new(TokioExecutor::new()),
        }
    }
}

/// The socket hyper reads and writes: the bytes read to tell the protocol
/// apart come first, then the socket's.
pub(crate) struct Prefixed<T> {
    read: Vec<u8>,
    /// How much of `read` hyper has taken.
    taken: usize,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.read.len() {
            let rest = &this.read[this.taken..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.taken += n;
            if this.taken == this.read.len() {
                this.read = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Which protocol bytes read so far speak: `None` while they could still be
/// the start of the HTTP/2 preface.
fn protocol(read: &[u8]) -> Option<Protocol> {
    let n = read.len().min(PREFACE.len());
    if read[..n] != PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

pin_project_lite::pin_project! {
    /// One connection: its first bytes being read, then hyper's connection
    /// for the protocol they speak. Ready when the connection is over.
    pub(crate) struct HttpConn<'a, T, S>
    where
        S: HttpService<Incoming>,
    {
        builders: &'a Builders,
        #[pin]
        state: State<T, S>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<T, S>
    where
        S: HttpService<Incoming>,
    {
        Reading {
            start: Option<(T, S)>,
            read: Vec<u8>,
        },
        Http1 {
            #[pin]
            conn: http1::UpgradeableConnection<TokioIo<Prefixed<T>>, S>,
        },
        Http2 {
            #[pin]
            conn: http2::Connection<TokioIo<Prefixed<T>>, S, TokioExecutor>,
        },
        Over,
    }
}

impl<'a, T: ConnectionIo, S: ConnectionService> HttpConn<'a, T, S> {
    pub(crate) fn new(builders: &'a Builders, io: T, service: S) -> Self {
        HttpConn {
            builders,
            state: State::Reading {
                start: Some((io, service)),
                read: Vec::new(),
            },
        }
    }

    /// Starts a graceful shutdown: HTTP/1 closes after the response in
    /// progress, HTTP/2 sends GOAWAY; a connection whose first bytes have
    /// not come yet is over at once.
    pub(crate) fn graceful_shutdown(self: Pin<&mut Self>) {
        let mut state = self.project().state;
        match state.as_mut().project() {
            StateProj::Reading { .. } => state.set(State::Over),
            StateProj::Http1 { conn } => conn.graceful_shutdown(),
            StateProj::Http2 { conn } => conn.graceful_shutdown(),
            StateProj::Over => {}
        }
    }
}

impl<T: ConnectionIo, S: ConnectionService> Future for HttpConn<'_, T, S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let builders = *this.builders;
        let mut state = this.state;
        loop {
            match state.as_mut().project() {
                StateProj::Reading { start, read } => {
                    let Some((io, _)) = start.as_mut() else {
                        return Poll::Ready(());
                    };
                    let mut buf = [MaybeUninit::<u8>::uninit(); FIRST_READ];
                    let mut buf = ReadBuf::uninit(&mut buf);
                    // An error or the end before a protocol is known: the
                    // connection is over, with nothing to answer.
                    if ready!(Pin::new(io).poll_read(cx, &mut buf)).is_err()
                        || buf.filled().is_empty()
                    {
                        state.set(State::Over);
                        return Poll::Ready(());
                    }
                    read.extend_from_slice(buf.filled());
                    let Some(protocol) = protocol(read) else {
                        continue;
                    };
                    let (io, service) = start.take().expect("taken once, here");
                    let io = TokioIo::new(Prefixed {
                        read: std::mem::take(read),
                        taken: 0,
                        io,
                    });
                    state.set(match protocol {
                        Protocol::Http1 => State::Http1 {
                            conn: builders.http1.serve_connection(io, service).with_upgrades(),
                        },
                        Protocol::Http2 => State::Http2 {
                            conn: builders.http2.serve_connection(io, service),
                        },
                    });
                }
                StateProj::Http1 { conn } => return conn.poll(cx).map(|_| ()),
                StateProj::Http2 { conn } => return conn.poll(cx).map(|_| ()),
                StateProj::Over => return Poll::Ready(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server wrote, read until it ends with `end`.
    async fn read_until(client: &mut tokio::io::DuplexStream, end: &[u8]) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut answer = Vec::new();
        while !answer.ends_with(end) {
            let mut chunk = [0u8; 512];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
        answer
    }

    /// A runtime on this thread, with timers, for one test.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn the_first_bytes_tell_http2_from_http1() {
        assert_eq!(protocol(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(protocol(b"G"), Some(Protocol::Http1));
        // A method that starts as the preface does, until it differs.
        assert_eq!(protocol(b"PRI"), None);
        assert_eq!(protocol(b"PRI * HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(protocol(b"PUT / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(protocol(&PREFACE[..23]), None);
        assert_eq!(protocol(PREFACE), Some(Protocol::Http2));
        let mut more = PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(protocol(&more), Some(Protocol::Http2));
    }

    /// Bytes read to tell the protocol, over one read or several, reach
    /// hyper before the socket's next ones: a request whose first byte came
    /// alone (it could have begun the HTTP/2 preface) is served whole, and
    /// so is a second request on the same connection.
    #[test]
    fn the_bytes_read_to_tell_the_protocol_reach_hyper_first() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = runtime();
        runtime.block_on(async {
            let (server, mut client) = tokio::io::duplex(4096);
            let service = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                let answer = format!("{} {}", req.method(), req.uri().path());
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(answer),
                )))
            });
            let builders = Builders::new();
            let serving = async {
                HttpConn::new(&builders, server, service).await;
            };
            let talking = async {
                client.write_all(b"P").await.unwrap();
                // Served only once the rest has come.
                tokio::task::yield_now().await;
                client
                    .write_all(b"OST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
                // The first answer whole before the second request, so that
                // hyper reads again: from the socket, not the same bytes.
                let mut answer = read_until(&mut client, b"POST /first").await;
                client
                    .write_all(b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                client.read_to_end(&mut answer).await.unwrap();
                String::from_utf8(answer).unwrap()
            };
            let both = async { tokio::join!(serving, talking) };
            let ((), answer) = tokio::time::timeout(std::time::Duration::from_secs(5), both)
                .await
                .expect("served within 5 s");
            assert_eq!(answer.matches("POST /first").count(), 1, "{answer}");
            assert!(answer.ends_with("GET /second"), "{answer}");
            assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
        });
    }

    /// A socket that records what is done to it, vectored writes or not.
    #[derive(Default)]
    struct Recorder {
        vectored: bool,
        written: Vec<u8>,
        flushed: bool,
        shut: bool,
        unread: &'static [u8],
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().unread).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.get_mut().written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.get_mut().flushed = true;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.get_mut().shut = true;
            Poll::Ready(Ok(()))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }
    }

    /// The bytes read first come out first, in reads of any size, then the
    /// socket's; writes, flushes, shutdowns and whether writes are vectored
    /// are the socket's own.
    #[test]
    fn the_prefixed_socket_reads_its_bytes_first_and_writes_through() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = runtime();
        runtime.block_on(async {
            for vectored in [false, true] {
                let socket = Recorder {
                    vectored,
                    unread: b"ghij",
                    ..Recorder::default()
                };
                let mut io = Prefixed {
                    read: b"abcdef".to_vec(),
                    taken: 0,
                    io: socket,
                };
                assert_eq!(io.is_write_vectored(), vectored);
                let mut small = [0u8; 4];
                assert_eq!(io.read(&mut small).await.unwrap(), 4);
                assert_eq!(&small, b"abcd");
                let mut rest = Vec::new();
                io.read_to_end(&mut rest).await.unwrap();
                assert_eq!(rest, b"efghij");
                io.write_all(b"answer").await.unwrap();
                io.flush().await.unwrap();
                io.shutdown().await.unwrap();
                assert_eq!(io.io.written, b"answer");
                assert!(io.io.flushed && io.io.shut);
            }
        });
    }

    /// A graceful shutdown ends a connection whose first bytes have not
    /// come at once, and an idle HTTP/1.1 connection after its last
    /// response.
    #[test]
    fn a_graceful_shutdown_ends_a_waiting_or_idle_connection() {
        use tokio::io::AsyncWriteExt;
        let runtime = runtime();
        let service = hyper::service::service_fn(|_: hyper::Request<Incoming>| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"hi"),
            )))
        });
        let builders = Builders::new();
        runtime.block_on(async {
            let within = std::time::Duration::from_secs(5);
            // Nothing sent yet.
            let (server, _client) = tokio::io::duplex(4096);
            let conn = HttpConn::new(&builders, server, service);
            tokio::pin!(conn);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(conn.as_mut().poll(&mut cx).is_pending());
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(within, conn)
                .await
                .expect("over at once");

            // Idle after one kept-alive request.
            let (server, mut client) = tokio::io::duplex(4096);
            let conn = HttpConn::new(&builders, server, service);
            tokio::pin!(conn);
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            tokio::select! {
                () = conn.as_mut() => panic!("the connection ended before answering"),
                _ = read_until(&mut client, b"hi") => {}
            }
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(within, conn)
                .await
                .expect("an idle connection ends at a graceful shutdown");
        });
    }

    /// A connection that ends before its protocol is known is over, with
    /// nothing written.
    #[test]
    fn a_connection_that_ends_before_its_protocol_is_known_is_over() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = runtime();
        runtime.block_on(async {
            let (server, mut client) = tokio::io::duplex(64);
            let service = hyper::service::service_fn(|_: hyper::Request<Incoming>| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            });
            let builders = Builders::new();
            client.write_all(&PREFACE[..10]).await.unwrap();
            client.shutdown().await.unwrap();
            let conn = HttpConn::new(&builders, server, service);
            tokio::time::timeout(std::time::Duration::from_secs(5), conn)
                .await
                .expect("over at the end of the bytes");
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "{rest:?}");
        });
    }
}
