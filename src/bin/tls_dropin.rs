//! `graceful::listen_and_serve_tls(addr, cert, key, handler)`, the drop-in
//! for Go's `ListenAndServeTLS`: arguments `ADDR CERT_PEM KEY_PEM`. Answers
//! every request with its PID.

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;

async fn pid(_: Request<Incoming>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(format!("{}\n", std::process::id())))
}

fn main() -> Result<(), graceful::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, cert, key] = &args[..] else {
        eprintln!("usage: tls_dropin ADDR CERT_PEM KEY_PEM");
        std::process::exit(2);
    };
    graceful::listen_and_serve_tls(addr, cert, key, pid)
}
