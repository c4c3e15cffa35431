//! A load generator that records every request's outcome.
//!
//! Three client modes: HTTP/1.1 on keep-alive connections, HTTP/1.1 with a
//! new connection per request, and HTTP/2 (prior knowledge). A request that
//! the client never sent (the connection was already closing, as hyper tells
//! with `TrySendError::take_message`) is retried on a new connection, as any
//! pooled client does; everything else that is not a 2xx is a failure, by
//! kind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    KeepAlive,
    NewConnection,
    Http2,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::KeepAlive, Mode::NewConnection, Mode::Http2];

    pub fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "http1 keep-alive",
            Mode::NewConnection => "http1 new conn",
            Mode::Http2 => "http2",
        }
    }
}

/// Per-request timeout; a request slower than this is a failure.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub sent: u64,
    pub ok: u64,
    /// HTTP/2 requests refused by the server's final GOAWAY (stream id above
    /// its last-stream-id: never processed, safe to retry by RFC 9113 §8.1.4)
    /// and retried on a new connection, as real HTTP/2 clients do.
    pub retried_goaway: u64,
    /// Requests never written to a connection (it closed first: `ready()`
    /// failed, or hyper handed the request back) and sent again on a new
    /// connection. Counted so that a server that drops every connection
    /// cannot pass as one that lost nothing: see [`Report::assert_clean`].
    pub retried_unsent: u64,
    pub failures: BTreeMap<String, u64>,
    /// The first few failures in full.
    pub examples: Vec<String>,
    /// (offset since start, latency), in microseconds, of each successful request.
    pub latencies: Vec<(u64, u64)>,
    pub elapsed: Duration,
}

impl Report {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn merge(&mut self, other: Report) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.retried_goaway += other.retried_goaway;
        self.retried_unsent += other.retried_unsent;
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        for e in other.examples {
            if self.examples.len() < 10 {
                self.examples.push(e);
            }
        }
        self.latencies.extend(other.latencies);
    }

    pub fn summary(&self) -> String {
        format!(
            "sent {} ok {} (retried after GOAWAY refused them: {}; retried unsent: {}) failed {} {:?}; examples: {:#?}",
            self.sent,
            self.ok,
            self.retried_goaway,
            self.retried_unsent,
            self.failed(),
            self.failures,
            self.examples
        )
    }

    /// The load made progress and lost nothing: some requests answered, none
    /// failed, and requests retried because they were never sent stayed
    /// fewer than those answered (a server that accepts and drops every
    /// connection fails this).
    /// `what` names the load in the message.
    #[track_caller]
    pub fn assert_clean(&self, what: &str) {
        assert!(
            self.ok > 0,
            "{what}: no request was answered: {}",
            self.summary()
        );
        assert_eq!(self.failed(), 0, "{what}: {}", self.summary());
        assert!(
            self.retried_unsent < self.ok,
            "{what}: more requests retried unsent than answered: {}",
            self.summary()
        );
    }

    fn fail(&mut self, kind: &str, detail: String) {
        *self.failures.entry(kind.to_string()).or_default() += 1;
        if self.examples.len() < 10 {
            self.examples.push(format!("{kind}: {detail}"));
        }
    }
}

/// Load running on its own thread and runtime until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Report>,
}

impl Load {
    /// `concurrency` clients; each sends its next request as soon as the
    /// previous one is answered.
    pub fn start(addr: SocketAddr, mode: Mode, concurrency: usize, path: &str) -> Load {
        Load::start_with(addr, mode, concurrency, path, None)
    }

    /// Like [`Load::start`], over TLS with `tls` (its ALPN is set per mode)
    /// when given.
    pub fn start_with(
        addr: SocketAddr,
        mode: Mode,
        concurrency: usize,
        path: &str,
        tls: Option<Arc<ClientConfig>>,
    ) -> Load {
        let tls = tls.map(|config| crate::tls::with_alpn(&config, mode == Mode::Http2));
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (stop2, done2, path) = (stop.clone(), done.clone(), path.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let start = Instant::now();
                let total = Arc::new(Mutex::new(Report::default()));
                let mut tasks = Vec::new();
                for _ in 0..concurrency {
                    let (stop, done, total, path, tls) = (
                        stop2.clone(),
                        done2.clone(),
                        total.clone(),
                        path.clone(),
                        tls.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        let target = Target { addr, mode, tls };
                        let report = client(&target, &path, &stop, &done, start).await;
                        total.lock().unwrap().merge(report);
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                let mut report = std::mem::take(&mut *total.lock().unwrap());
                report.elapsed = start.elapsed();
                report
            })
        });
        Load { stop, done, thread }
    }

    /// Requests answered (successfully or not) so far.
    pub fn completed(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Blocks until at least `n` more requests have completed, up to `timeout`.
    pub fn wait_progress(&self, n: u64, timeout: Duration) -> bool {
        let target = self.completed() + n;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.completed() >= target {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// Where and how the clients connect.
struct Target {
    addr: SocketAddr,
    mode: Mode,
    tls: Option<Arc<ClientConfig>>,
}

async fn connect(target: &Target) -> Result<Sender, (String, String)> {
    let stream = TcpStream::connect(target.addr).await.map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
            "connect refused"
        } else {
            "connect error"
        };
        (kind.to_string(), e.to_string())
    })?;
    let _ = stream.set_nodelay(true);
    match &target.tls {
        None => handshake(stream, target.mode).await,
        Some(config) => {
            let name = ServerName::IpAddress(target.addr.ip().into());
            let stream = TlsConnector::from(config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| ("tls handshake".to_string(), e.to_string()))?;
            handshake(stream, target.mode).await
        }
    }
}

async fn handshake<I>(io: I, mode: Mode) -> Result<Sender, (String, String)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    if mode == Mode::Http2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| classify(&e))?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| classify(&e))?;
        tokio::spawn(conn);
        Ok(Sender::H1(sender))
    }
}

/// Whether the server refused this HTTP/2 stream with GOAWAY: its id is above
/// the last-stream-id, so the server never processed it.
fn refused_by_goaway(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR)
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// Names the kind of a failed request.
pub fn classify(e: &hyper::Error) -> (String, String) {
    let detail = format!("{e:?}");
    if e.is_timeout() {
        return ("timeout".into(), detail);
    }
    if e.is_incomplete_message() {
        return ("eof before response".into(), detail);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            let kind = match io.kind() {
                ConnectionReset | ConnectionAborted | BrokenPipe => "reset",
                UnexpectedEof => "eof before response",
                _ => "io error",
            };
            return (kind.into(), detail);
        }
        source = s.source();
    }
    if e.is_closed() || e.is_canceled() {
        return ("eof before response".into(), detail);
    }
    ("other".into(), detail)
}

async fn client(
    target: &Target,
    path: &str,
    stop: &AtomicBool,
    done: &AtomicU64,
    start: Instant,
) -> Report {
    let mut report = Report::default();
    let mut sender: Option<Sender> = None;
    let (addr, mode) = (target.addr, target.mode);
    let scheme = if target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let uri = format!("{scheme}://{addr}{path}");
    while !stop.load(Ordering::Relaxed) {
        if sender.as_ref().is_none_or(|s| s.is_closed()) || mode == Mode::NewConnection {
            match tokio::time::timeout(REQUEST_TIMEOUT, connect(target)).await {
                Ok(Ok(s)) => sender = Some(s),
                Ok(Err((kind, detail))) => {
                    report.sent += 1;
                    report.fail(&kind, detail);
                    done.fetch_add(1, Ordering::Relaxed);
                    // A refused connection means the service is down: do not
                    // spin on it.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    report.sent += 1;
                    report.fail("timeout", "connect".into());
                    done.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let mut builder = Request::get(&uri);
        if mode != Mode::Http2 {
            builder = builder.header(http::header::HOST, addr.to_string());
        }
        let request = builder.body(Empty::<Bytes>::new()).unwrap();
        let began = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response = match s {
                Sender::H1(s) => {
                    if s.ready().await.is_err() {
                        return Err(None);
                    }
                    s.try_send_request(request).await
                }
                Sender::H2(s) => {
                    if s.ready().await.is_err() {
                        return Err(None);
                    }
                    s.try_send_request(request).await
                }
            };
            match response {
                Ok(response) => {
                    let status = response.status();
                    match response.into_body().collect().await {
                        Ok(_) => Ok(status),
                        Err(e) => Err(Some(classify(&e))),
                    }
                }
                // Never written to the connection: safe to retry elsewhere.
                Err(e) if e.message().is_some() => Err(None),
                Err(e) if refused_by_goaway(e.error()) => {
                    Err(Some(("retry".into(), String::new())))
                }
                Err(e) => Err(Some(classify(e.error()))),
            }
        })
        .await;
        match outcome {
            Err(_) => {
                report.sent += 1;
                report.fail("timeout", format!("no response within {REQUEST_TIMEOUT:?}"));
                sender = None;
            }
            Ok(Err(None)) => {
                report.retried_unsent += 1;
                sender = None;
                continue;
            }
            Ok(Err(Some((kind, _)))) if kind == "retry" => {
                report.retried_goaway += 1;
                sender = None;
                continue;
            }
            Ok(Err(Some((kind, detail)))) => {
                report.sent += 1;
                report.fail(&kind, detail);
                sender = None;
            }
            Ok(Ok(status)) if status.is_success() => {
                report.sent += 1;
                report.ok += 1;
                let at = began.duration_since(start).as_micros() as u64;
                report
                    .latencies
                    .push((at, began.elapsed().as_micros() as u64));
            }
            Ok(Ok(status)) => {
                report.sent += 1;
                report.fail("non-2xx", status.to_string());
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    report
}
