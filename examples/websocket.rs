//! A WebSocket echo server on hyper's upgrade, with tokio-tungstenite.
//!
//! Each connection is greeted with the worker's PID and every text message is
//! echoed back. On reload (or stop) the worker's `graceful::shutdown_signal()`
//! fires, and each open socket is sent a close frame, 1012 "service restart",
//! so clients reconnect at once and land on the new worker, instead of being
//! cut at `stop_timeout`.
//!
//! ```text
//! cargo run --example websocket -- :9222
//! websocat ws://127.0.0.1:9222/     # hello from pid 1234
//! kill -HUP <pid>                   # the client gets close 1012, reconnects
//! ```

use std::convert::Infallible;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long a client has to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

async fn websocket(mut req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let is_upgrade = req
        .headers()
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = req.headers().get(SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_upgrade, key) else {
        let mut response = Response::new("connect with a WebSocket client\n".to_string());
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        response
            .headers_mut()
            .insert(UPGRADE, "websocket".parse().unwrap());
        return Ok(response);
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                echo(WebSocketStream::from_raw_socket(io, Role::Server, None).await).await;
            }
            Err(e) => eprintln!("websocket: upgrade failed: {e}"),
        }
    });
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, "websocket")
        .header(SEC_WEBSOCKET_ACCEPT, derive_accept_key(key.as_bytes()))
        .body(String::new())
        .unwrap();
    Ok(response)
}

async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let pid = std::process::id();
    if ws
        .send(Message::text(format!("hello from pid {pid}")))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            _ = graceful::shutdown_signal() => break,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if ws.send(Message::text(format!("{pid}: {text}"))).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // pings are answered by tungstenite
            },
        }
    }
    // The worker is draining: say so, and wait (briefly) for the client's
    // close frame so that the connection ends cleanly on both sides.
    let close = CloseFrame {
        code: CloseCode::Restart,
        reason: "service restart".into(),
    };
    if ws.close(Some(close)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[graceful::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| ":9222".to_string());
    graceful::register!(addr, websocket);
}
