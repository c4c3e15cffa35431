#[graceful::main(version = "1.4.2\n")]
async fn main() {}
