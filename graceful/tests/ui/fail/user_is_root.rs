#[graceful::main(user = "root")]
async fn main() {}
