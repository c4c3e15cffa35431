// `watch` is a flag.

#[graceful::main(watch = "yes")]
async fn main() {}
