#[graceful::main(user = "www-data", group = "")]
async fn main() {}
