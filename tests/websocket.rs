//! The WebSocket example: on reload each open socket gets close 1012, and
//! the client that reconnects lands on the new worker.

use futures_util::{SinkExt, StreamExt};
use graceful_dev::built;
use graceful_dev::process::Service;
use graceful_dev::procfs::wait_gone;
use nix::sys::signal::Signal;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use graceful_dev::TIMEOUT as T;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut Socket) -> Message {
    tokio::time::timeout(T, ws.next())
        .await
        .expect("a message in time")
        .expect("the socket is open")
        .expect("a valid message")
}

/// Connects, checks the greeting, and returns the socket and the worker PID.
async fn connect(addr: &str) -> (Socket, i32) {
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    let Message::Text(greeting) = next(&mut ws).await else {
        panic!("no greeting");
    };
    let pid = greeting
        .strip_prefix("hello from pid ")
        .expect("greeting")
        .parse()
        .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text(format!("{pid}: ping")));
    (ws, pid)
}

#[test]
fn a_reload_closes_sockets_with_1012_and_clients_reconnect_to_the_new_worker() {
    let service = Service::start(&built("websocket"), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut a, pid_a) = connect(&addr).await;
        let (mut b, pid_b) = connect(&addr).await;
        assert_eq!((pid_a, pid_b), (first, first));

        service.signal(Signal::SIGHUP);
        let second = service.ready_worker(2, T);
        for ws in [&mut a, &mut b] {
            match next(ws).await {
                Message::Close(Some(frame)) => {
                    assert_eq!(frame.code, CloseCode::Restart);
                    assert_eq!(frame.reason.as_str(), "service restart");
                }
                other => panic!("expected close 1012, got {other:?}"),
            }
            // tungstenite answers the close; then the server ends the socket.
            assert!(tokio::time::timeout(T, ws.next()).await.unwrap().is_none());
        }

        let (mut c, pid_c) = connect(&addr).await;
        assert_eq!(pid_c, second, "the reconnect lands on the new worker");
        c.close(None).await.unwrap();
    });
    // The old worker ended because its sockets closed, not at stop_timeout.
    assert!(wait_gone(first, T));
    let line = service.wait_line(&format!("(pid {first}) drained"), T);
    assert!(line.contains("drained 2 connection(s)"), "{line}");
    assert!(line.contains(", 0 cut"), "{line}");
}
