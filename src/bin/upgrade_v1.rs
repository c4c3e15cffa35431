//! Version 1 of a service for `tests/upgrade.rs`: a short `stop_timeout`
//! and reload on SIGHUP only.

async fn handle(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<String>, std::convert::Infallible> {
    graceful_dev::versioned::respond("v1", req).await
}

#[graceful::main(stop_timeout = "1s", reload = [SIGHUP])]
async fn main() {
    graceful::register!(graceful_dev::versioned::addr(), handle);
}
