use std::convert::Infallible;
async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> {
    Ok(http::Response::new(String::new()))
}

#[graceful::main(reload = [SIGHUP, SIGUSR2], stop = [SIGTERM, SIGUSR2])]
async fn main() {
    graceful::register!(":0", hello);
}
