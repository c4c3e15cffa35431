//! Several servers in one process: three listeners, each with its own handler.
//!
//! ```text
//! cargo run --example multi -- :9222 :9223 unix:/tmp/graceful-multi.sock
//! ```

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;

async fn api(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(format!(
        "api: {} {}\n",
        req.method(),
        req.uri().path()
    )))
}

async fn web(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(format!("web: {}\n", req.uri().path())))
}

fn admin() {
    // register! works from any function main calls.
    let addr = std::env::args()
        .nth(3)
        .unwrap_or_else(|| "unix:/tmp/graceful-multi.sock".into());
    let admin = |_req: Request<Incoming>| async {
        let body = format!("admin: worker pid {}\n", std::process::id());
        Ok::<_, Infallible>(Response::new(body))
    };
    // Options follow the handler: only the owner and its group may connect.
    graceful::register!(addr, admin, unix_mode = 0o660);
}

#[graceful::main(stop_timeout = "10s")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let api_addr = args.next().unwrap_or_else(|| ":9222".into());
    let web_addr = args.next().unwrap_or_else(|| ":9223".into());
    graceful::register!(api_addr, api);
    graceful::register!(web_addr, web);
    admin();
}
