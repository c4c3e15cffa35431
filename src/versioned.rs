//! The service of `src/bin/upgrade_v1.rs` and `upgrade_v2.rs`: two builds of
//! one service whose options differ, for the master's upgrade in place.
//! Routes: `/` (version and worker pid), `/slow?ms=N` (answers after N ms).

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

/// Answers a request as build `version`.
pub async fn respond(
    version: &str,
    req: Request<Incoming>,
) -> Result<Response<String>, Infallible> {
    let pid = std::process::id();
    if req.uri().path() == "/slow" {
        let ms = slow_ms(req.uri());
        eprintln!("{version}: slow request started in pid {pid}");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(format!(
            "{version} slow {ms} done by {pid}\n"
        )));
    }
    Ok(Response::new(format!("{version} pid {pid}\n")))
}

/// `N` of `/slow?ms=N` (default 1000), for this app and the test app.
pub fn slow_ms(uri: &http::Uri) -> u64 {
    uri.query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// The address to serve: the first argument, or any free port.
pub fn addr() -> String {
    std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
}
