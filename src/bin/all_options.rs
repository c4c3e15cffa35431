//! Every option of `#[graceful::main]` but `mode` (see `single_attr.rs`), each
//! with a value other than its default, so that `tests/options.rs` can see
//! each take effect at run time. The PID file is relative: the test runs this
//! binary in a directory of its own.
//!
//! `GET /threads` answers the number of worker threads of the runtime.
//! `ALL_OPTIONS_HANG_IF_EXISTS=PATH`: when PATH exists at start, `main` never
//! returns, so the new worker is never ready.

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;

async fn handle(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let body = match req.uri().path() {
        "/threads" => format!(
            "{}\n",
            tokio::runtime::Handle::current().metrics().num_workers()
        ),
        _ => format!("{}\n", std::process::id()),
    };
    Ok(Response::new(body))
}

#[graceful::main(
    stop_timeout = "3s",
    ready_timeout = "1500ms",
    idle_grace = "200ms",
    reload = [SIGUSR2],
    stop = [SIGTERM, SIGQUIT],
    worker_threads = 3,
    pid_file = "all-options.pid",
    header_timeout = "2s",
    idle_timeout = "1s",
    max_connections = 20,
    max_header_size = 16384,
    max_draining = 2,
    control_socket = "all-options.sock",
    watchdog = "2s",
    user = "graceful-test",
    group = "graceful-test-extra"
)]
async fn main() {
    if let Some(path) = std::env::var_os("ALL_OPTIONS_HANG_IF_EXISTS") {
        if std::path::Path::new(&path).exists() {
            std::future::pending::<()>().await;
        }
    }
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    graceful::register!(addr, handle);
}
