//! A datagram echo server, reloaded like an HTTP one: each datagram comes
//! back prefixed with the PID of the worker that answered it.
//!
//! `cargo run --example udp_echo [ADDR]` (default `udp:127.0.0.1:9224`),
//! then `nc -u 127.0.0.1 9224`, and `kill -HUP <pid>` to reload: no datagram
//! is lost, and the answers come from the new worker. With a
//! `unixgram:/path` address it echoes Unix datagrams instead (to clients
//! that bind an address of their own, or there is nobody to answer).
//!
//! The master holds the socket, so every worker reads the same kernel
//! queue. A worker reads until `graceful::shutdown_signal()`, which it gets
//! only once its successor is ready and reading: what it leaves in the queue
//! is the successor's to read. `recv_from` gives up a datagram only when it
//! completes, so dropping it in `select!` loses nothing.

use tokio::net::{UdpSocket, UnixDatagram};

/// The answer to `datagram`: this worker's PID, a space, the datagram.
fn answer(datagram: &[u8]) -> Vec<u8> {
    let mut answer = format!("{} ", std::process::id()).into_bytes();
    answer.extend_from_slice(datagram);
    answer
}

async fn echo(socket: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => received,
            () = graceful::shutdown_signal() => return,
        };
        match received {
            Ok((n, peer)) => {
                // A full send buffer waits; a peer that is gone is its loss.
                let _ = socket.send_to(&answer(&buf[..n]), peer).await;
            }
            // An ICMP error about an earlier answer, reported here: the
            // socket is fine.
            Err(e) => eprintln!("udp_echo: {e}"),
        }
    }
}

async fn echo_unix(socket: UnixDatagram) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => received,
            () = graceful::shutdown_signal() => return,
        };
        match received {
            Ok((n, peer)) => {
                if let Some(path) = peer.as_pathname() {
                    let _ = socket.send_to(&answer(&buf[..n]), path).await;
                }
            }
            Err(e) => eprintln!("udp_echo: {e}"),
        }
    }
}

#[graceful::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "udp:127.0.0.1:9224".into());
    if addr.starts_with("unixgram:") {
        graceful::register!(addr, echo_unix);
    } else {
        graceful::register!(addr, echo);
    }
}
