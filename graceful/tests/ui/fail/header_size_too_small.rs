// The smallest request head the runtime can read is 8192 bytes.

#[graceful::main(max_header_size = 1024)]
async fn main() {}
