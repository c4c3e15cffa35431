//! A UDP handler that misbehaves on request, for `tests/datagram.rs`: it
//! answers `PID DATAGRAM`, except that `panic` makes it panic and `return`
//! makes it return while the worker serves. Each start of the handler is
//! logged as `datagram_faults: handler started in PID`.

use tokio::net::UdpSocket;

async fn handler(socket: UdpSocket) {
    graceful_dev::say(&format!(
        "datagram_faults: handler started in {}",
        std::process::id()
    ));
    let mut buf = [0u8; 512];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => received,
            () = graceful::shutdown_signal() => return,
        };
        let Ok((n, peer)) = received else { continue };
        match &buf[..n] {
            b"panic" => panic!("told to panic"),
            b"return" => return,
            datagram => {
                let mut answer = format!("{} ", std::process::id()).into_bytes();
                answer.extend_from_slice(datagram);
                let _ = socket.send_to(&answer, peer).await;
            }
        }
    }
}

#[graceful::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "udp:127.0.0.1:0".to_string());
    graceful::register!(addr, handler);
}
