//! What a load balancer's health check reads: whether this serving process
//! is ready ([`is_ready`]), the ready-made [`health`] handler, and the
//! lame-duck stop (`shutdown_delay`): on a stop signal the process keeps
//! accepting and serving for the delay while it reports not ready, so the
//! balancer takes it out of rotation before its listeners close.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode};

use crate::drain;

/// Set once the process serves: `main` returned and every listener is had;
/// set just before the first accept, and before the process reports ready.
static READY: AtomicBool = AtomicBool::new(false);
/// Set when the service started to stop and serves on for the delay.
static LAME_DUCK: AtomicBool = AtomicBool::new(false);

/// Whether this process is ready to serve new clients: `main` has returned,
/// every listener is had, and no stop has begun, neither the
/// `shutdown_delay` nor the drain.
///
/// It is what [`health`] answers on `/readyz`; use it to write a health
/// route of your own. Outside a process graceful runs it is `false`.
///
/// ```no_run
/// # use std::convert::Infallible;
/// # use http::{Request, Response, StatusCode};
/// async fn ready(_: Request<hyper::body::Incoming>) -> Result<Response<String>, Infallible> {
///     let mut response = Response::new(String::new());
///     if !graceful::is_ready() {
///         *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
///     }
///     Ok(response)
/// }
/// ```
pub fn is_ready() -> bool {
    not_ready().is_none()
}

/// Why [`is_ready`] is `false`, as `/readyz` says it; `None` if ready.
fn not_ready() -> Option<&'static str> {
    if drain::is_shutting_down() {
        Some("draining")
    } else if LAME_DUCK.load(Ordering::SeqCst) {
        Some("stopping")
    } else if !READY.load(Ordering::SeqCst) {
        Some("starting")
    } else {
        None
    }
}

/// Whether a stop has begun: the `shutdown_delay` or the drain.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) fn stopping() -> bool {
    LAME_DUCK.load(Ordering::SeqCst) || drain::is_shutting_down()
}

/// The process has reported ready.
pub(crate) fn set_ready() {
    READY.store(true, Ordering::SeqCst);
}

/// The service is stopping and this process serves on for the delay.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) fn set_lame_duck() {
    LAME_DUCK.store(true, Ordering::SeqCst);
}

/// A stop signal (`why`) in a serving process. With no `delay`, the drain
/// starts. Otherwise the process keeps serving for `delay`, not ready to
/// health checks, then drains; a second stop signal drains at once.
pub(crate) fn stop_requested(why: &str, delay: Duration) {
    let drain = drain::global();
    if delay.is_zero() || drain::is_shutting_down() {
        drain.start(Some(why));
        return;
    }
    if LAME_DUCK.swap(true, Ordering::SeqCst) {
        drain.start(Some(&format!(
            "{why} again: the rest of the {delay:?} shutdown_delay is skipped"
        )));
        return;
    }
    crate::log::event!(
        Info,
        { event = "lame_duck", reason = why, shutdown_delay_ms = crate::log::millis(delay) },
        "pid {}: {why}; serving on for the {delay:?} shutdown_delay, not ready to health \
         checks, then draining (a second stop signal drains at once)",
        std::process::id()
    );
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        drain.start(Some("the shutdown_delay is over"));
    });
}

/// A health handler for load balancers and Kubernetes probes. Register it
/// on an address of its own, or beside the application's:
///
/// ```no_run
/// # use std::convert::Infallible;
/// # async fn app(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> { todo!() }
/// #[graceful::main(shutdown_delay = "5s")]
/// async fn main() {
///     graceful::register!(":8080", app);
///     graceful::register!(":8081", graceful::health);
/// }
/// ```
///
/// - `GET /livez` (or `HEAD`): `200 ok` whenever the process's runtime runs
///   this handler.
/// - `GET /readyz`: `200 ready` while [`is_ready`]; otherwise `503` with
///   `stopping` (during the `shutdown_delay`) or `draining`. (`starting`,
///   while `main` runs, is for [`is_ready`] only: the handler is first
///   reached once the process serves.)
/// - Any other path is `404`, another method `405`.
///
/// Every answer carries `Cache-Control: no-store`.
pub async fn health(req: Request<hyper::body::Incoming>) -> Result<Response<String>, Infallible> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/livez") => (StatusCode::OK, "ok"),
        (&Method::GET | &Method::HEAD, "/readyz") => match not_ready() {
            None => (StatusCode::OK, "ready"),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
        },
        (_, "/livez" | "/readyz") => (StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD"),
        _ => (StatusCode::NOT_FOUND, "not found; try /livez or /readyz"),
    };
    Ok(uncached(
        status,
        "text/plain; charset=utf-8",
        format!("{body}\n"),
    ))
}

/// A response that no cache keeps (`Cache-Control: no-store`), as health
/// and metrics answers are: each tells the state of this moment.
pub(crate) fn uncached(status: StatusCode, content_type: &str, body: String) -> Response<String> {
    Response::builder()
        .status(status)
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .expect("a response of static parts")
}
