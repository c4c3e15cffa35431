#[graceful::main(watch_paths = ["/etc/tls/", ""])]
async fn main() {}
