use std::convert::Infallible;
async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> {
    Ok(http::Response::new(String::new()))
}

#[graceful::main(stop_timeout = "20s", stop_timeout = "5s")]
async fn main() {
    graceful::register!(":0", hello);
}
