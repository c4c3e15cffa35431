use std::convert::Infallible;
async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> {
    Ok(http::Response::new(String::new()))
}

#[derive(Debug)]
struct MyError;

fn config() -> Result<String, MyError> {
    Ok(":9222".into())
}

#[graceful::main(reload = [])]
async fn serve() -> Result<(), MyError> {
    let addr = config()?;
    graceful::register!(addr, hello);
    Ok(())
}

// trybuild runs pass cases: only check that the expansion type-checks, as a
// `fn()` that would start the service.
fn main() {
    let _start: fn() = serve;
}
