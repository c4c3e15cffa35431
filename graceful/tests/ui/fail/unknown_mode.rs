#[graceful::main(mode = "solo")]
async fn main() {}
