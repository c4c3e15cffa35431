#[graceful::main(upgrade_master = "no")]
async fn main() {}
