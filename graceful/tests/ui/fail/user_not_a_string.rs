#[graceful::main(user = 33)]
async fn main() {}
