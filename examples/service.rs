//! A production-shaped service for a fleet behind a load balancer or on
//! Kubernetes: the application on its first argument (default `:8080`), and
//! health and metrics on its second (default `:8081`), where probes, the
//! load balancer's checks and Prometheus's scrapes go: `/livez`, `/readyz`
//! and `/metrics`. On SIGTERM it keeps serving for the
//! `shutdown_delay` while `/readyz` answers 503, so the balancer takes it out
//! of rotation before its listeners close; then it drains for up to
//! `stop_timeout`.
//!
//! ```text
//! cargo run --example service -- :8080 :8081
//! curl http://127.0.0.1:8081/readyz     # ready
//! curl http://127.0.0.1:8081/metrics    # graceful_reloads_total, ...
//! kill -TERM <pid>                      # 5 s of lame duck, then the drain
//! ```
//!
//! `GRACEFUL_SHUTDOWN_DELAY`, `GRACEFUL_WATCH_PATHS` and the other
//! `GRACEFUL_*` variables override the options at run time;
//! `examples/kubernetes/` deploys it.

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;

#[path = "shared/hello.rs"]
mod hello;

/// `/metrics` for Prometheus; `/livez` and `/readyz` for probes.
async fn admin(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    match req.uri().path() {
        "/metrics" => graceful::metrics(req).await,
        _ => graceful::health(req).await,
    }
}

#[graceful::main(shutdown_delay = "5s", stop_timeout = "20s")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let app = args.next().unwrap_or_else(|| ":8080".to_string());
    let admin_addr = args.next().unwrap_or_else(|| ":8081".to_string());
    graceful::register!(app, hello::hello);
    graceful::register!(admin_addr, admin);
}
