//! `#[graceful::main(mode = "single")]`: the attribute selects single-process
//! mode, and `GRACEFUL_MODE` overrides it. Answers every request with its PID.

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;

async fn pid(_: Request<Incoming>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(format!("{}\n", std::process::id())))
}

#[graceful::main(mode = "single", stop_timeout = "5s")]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    graceful::register!(addr, pid);
}
