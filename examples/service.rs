//! A production-shaped service for a fleet behind a load balancer or on
//! Kubernetes: the application on its first argument (default `:8080`), and
//! the health handler on its second (default `:8081`), where probes and the
//! load balancer's checks go. On SIGTERM it keeps serving for the
//! `shutdown_delay` while `/readyz` answers 503, so the balancer takes it out
//! of rotation before its listeners close; then it drains for up to
//! `stop_timeout`.
//!
//! ```text
//! cargo run --example service -- :8080 :8081
//! curl http://127.0.0.1:8081/readyz     # ready
//! kill -TERM <pid>                      # 5 s of lame duck, then the drain
//! ```
//!
//! `GRACEFUL_SHUTDOWN_DELAY`, `GRACEFUL_WATCH_PATHS` and the other
//! `GRACEFUL_*` variables override the options at run time;
//! `examples/kubernetes/` deploys it.

#[path = "shared/hello.rs"]
mod hello;

#[graceful::main(shutdown_delay = "5s", stop_timeout = "20s")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let app = args.next().unwrap_or_else(|| ":8080".to_string());
    let admin = args.next().unwrap_or_else(|| ":8081".to_string());
    graceful::register!(app, hello::hello);
    graceful::register!(admin, graceful::health);
}
