#[graceful::main(watch_paths = "/etc/app/config.toml")]
async fn main() {}
