#[graceful::main(mode = "single", user = "www-data")]
async fn main() {}
