// A keep-alive connection needs some time between requests.

#[graceful::main(idle_timeout = "0s", max_connections = 0)]
async fn main() {}
