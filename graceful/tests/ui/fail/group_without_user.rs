#[graceful::main(group = "www-data")]
async fn main() {}
