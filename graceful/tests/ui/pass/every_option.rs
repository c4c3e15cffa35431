use std::convert::Infallible;
async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> {
    Ok(http::Response::new(String::new()))
}

#[graceful::main(
    stop_timeout = "1m30s",
    ready_timeout = "500ms",
    idle_grace = "250ms",
    reload = [SIGHUP, SIGUSR1, SIGUSR2],
    stop = [SIGTERM, SIGINT, SIGQUIT],
    worker_threads = 2,
    mode = "single",
    pid_file = "/run/app.pid",
    shutdown_delay = "5s",
    watch_paths = ["/etc/app/config.toml", "/etc/tls/"],
)]
async fn serve() {
    graceful::register!(":9222", hello);
}

// trybuild runs pass cases: only check that the expansion type-checks, as a
// `fn()` that would start the service.
fn main() {
    let _start: fn() = serve;
}
