//! A line-echo server on any stream protocol, reloaded like an HTTP one.
//! Each connection gets its lines back; when the worker drains, every open
//! connection is told `goodbye` and closed once it has been quiet for half a
//! second.
//!
//! `cargo run --example echo [ADDR]` (default `:9223`), then
//! `nc 127.0.0.1 9223`, and `kill -HUP <pid>` to reload.

use std::time::Duration;

use graceful::{Connection, Peer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// After the drain starts, lines are still answered until none has come for
/// this long: a client that connected just as the drain started is served,
/// not sent away (the same reason HTTP has `idle_grace`).
const GRACE: Duration = Duration::from_millis(500);

async fn echo(conn: Connection, _peer: Peer) {
    let (read, mut write) = tokio::io::split(conn);
    let mut lines = BufReader::new(read).lines();
    let mut draining = false;
    loop {
        let quiet = async {
            if draining {
                tokio::time::sleep(GRACE).await
            } else {
                graceful::shutdown_signal().await
            }
        };
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if write.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
                // The client closed, or the connection broke.
                _ => return,
            },
            _ = quiet => {
                if draining {
                    let _ = write.write_all(b"goodbye\n").await;
                    let _ = write.shutdown().await;
                    return;
                }
                draining = true;
            }
        }
    }
}

#[graceful::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| ":9223".into());
    graceful::register!(addr, echo);
}
