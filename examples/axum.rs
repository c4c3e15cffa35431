//! An axum `Router` served by graceful, unchanged: any tower `Service` works
//! in `register!`.
//!
//! ```text
//! cargo run --example axum -- :9222
//! curl http://127.0.0.1:9222/hello/world     # Hello, world
//! kill -HUP <pid>                             # reload, zero downtime
//! ```

use axum::extract::Path;
use axum::routing::get;
use axum::Router;

async fn hello(Path(name): Path<String>) -> String {
    format!("Hello, {name}\n")
}

async fn pid() -> String {
    format!("{}\n", std::process::id())
}

#[graceful::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| ":9222".to_string());
    let app = Router::new()
        .route("/hello/{name}", get(hello))
        .route("/pid", get(pid));
    graceful::register!(addr, app);
}
