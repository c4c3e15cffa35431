use std::convert::Infallible;
async fn hello(_: http::Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> {
    Ok(http::Response::new(String::new()))
}

use std::sync::Arc;

fn register_from_a_function(counter: Arc<u64>) {
    graceful::register!("unix:/tmp/x.sock", move |_req: http::Request<hyper::body::Incoming>| {
        let counter = counter.clone();
        async move { Ok::<_, Infallible>(http::Response::new(format!("{counter}"))) }
    });
}

#[graceful::main(stop_timeout = "4h")]
async fn serve() {
    graceful::register!("[::1]:0", hyper::service::service_fn(hello));
    register_from_a_function(Arc::new(7));
    graceful::register!(":9222", hello,);
}

// trybuild runs pass cases: only check that the expansion type-checks, as a
// `fn()` that would start the service.
fn main() {
    let _start: fn() = serve;
}
