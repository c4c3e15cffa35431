//! Version 2 of the service of `upgrade_v1.rs`: a long `stop_timeout` and
//! reload on SIGUSR2 instead of SIGHUP.

async fn handle(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<String>, std::convert::Infallible> {
    graceful_dev::versioned::respond("v2", req).await
}

#[graceful::main(stop_timeout = "8s", reload = [SIGUSR2])]
async fn main() {
    graceful::register!(graceful_dev::versioned::addr(), handle);
}
