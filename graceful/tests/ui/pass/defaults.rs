use std::convert::Infallible;
async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> {
    Ok(http::Response::new(String::new()))
}

#[graceful::main]
async fn serve() {
    graceful::register!(":9222", hello);
}

// trybuild runs pass cases: only check that the expansion type-checks, as a
// `fn()` that would start the service.
fn main() {
    let _start: fn() = serve;
}
