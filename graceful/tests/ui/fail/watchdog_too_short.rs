// A worker needs time to answer a check: the period is at least 100 ms.

#[graceful::main(watchdog = "50ms")]
async fn main() {}
