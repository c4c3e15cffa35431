//! The seed's example: every request is answered with
//! `Hello, port: <Host header>, "<HTML-escaped path>"`.
//!
//! ```text
//! cargo run --example hello -- :9222
//! curl http://127.0.0.1:9222/world      # Hello, port: 127.0.0.1:9222, "/world"
//! kill -HUP <pid>                        # reload, zero downtime
//! kill -TERM <pid>                       # drain and exit 0
//! ```

#[path = "shared/hello.rs"]
mod hello;

#[graceful::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| ":9222".to_string());
    graceful::register!(addr, hello::hello);
}
