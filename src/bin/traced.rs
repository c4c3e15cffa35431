//! A service that logs with `tracing`: it sets a subscriber first thing in
//! `main`, so graceful's lifecycle events in its workers (and in single
//! mode) go to the subscriber, with their fields, instead of to stderr as
//! lines. The master, which runs no user code, writes lines.
//!
//! `GET /panic` panics in the handler; anything else answers the PID.

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;

async fn handle(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    if req.uri().path() == "/panic" {
        panic!("traced was told to panic");
    }
    Ok(Response::new(format!("{}\n", std::process::id())))
}

#[graceful::main(stop_timeout = "2s")]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    graceful::register!(addr, handle);
}
