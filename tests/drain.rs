//! How a worker winds down: long streams end through `shutdown_signal()`,
//! HTTP/2 clients get GOAWAY while their open streams complete.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use graceful_dev::process::{wait_gone, Service};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(20);

fn testapp() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_testapp"))
}

#[test]
fn a_stream_ends_cleanly_when_its_handler_sees_shutdown_signal() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let old = service.ready_worker(1, T);
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    conn.write_all(format!("GET /stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    service.wait_line(&format!("stream started in pid {old}"), T);
    // Read until the stream is flowing.
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&received).contains("data: tick") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        received.extend_from_slice(&buf[..n]);
    }

    service.signal(Signal::SIGHUP);
    service.wait_line("reload finished", T);
    conn.read_to_end(&mut received)
        .expect("the stream ends with EOF, not a reset");
    let received = String::from_utf8(received).unwrap();
    assert!(received.starts_with("HTTP/1.1 200 OK"), "{received}");
    assert!(received.contains("data: tick"), "{received}");
    assert!(
        received.contains("event: bye"),
        "the handler's goodbye was sent: {received}"
    );
    assert!(
        received.ends_with("0\r\n\r\n"),
        "the chunked body was terminated: {received:?}"
    );
    assert!(wait_gone(old, T));
    // Ended by the handler, not cut at the 20 s stop_timeout.
    let drained = service.wait_line(&format!("worker 1 (pid {old}) drained"), T);
    assert!(
        drained.contains("drained 1 connection(s)") && drained.contains(", 0 cut"),
        "{drained}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_goaway_and_open_streams_complete() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let old = service.ready_worker(1, T);
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::get(format!("http://{addr}/slow?ms=1500"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let in_flight = tokio::spawn(sender.send_request(request));
    service.wait_line(&format!("slow request started in pid {old}"), T);

    service.signal(Signal::SIGHUP);
    service.wait_line("reload finished", T);
    let response = tokio::time::timeout(T, in_flight)
        .await
        .unwrap()
        .unwrap()
        .expect("the open stream completes");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("slow 1500 done by {old}\n").as_bytes());
    // GOAWAY: the server closes the connection once its streams are done, and
    // the client learns it may not open new streams on it.
    tokio::time::timeout(T, conn)
        .await
        .expect("the connection was closed by the server")
        .unwrap()
        .unwrap();
    assert!(
        sender.ready().await.is_err(),
        "the connection still accepts streams"
    );
    assert!(wait_gone(old, T));
    let drained = service.wait_line(&format!("worker 1 (pid {old}) drained"), T);
    assert!(
        drained.contains("drained 1 connection(s)") && drained.contains(", 0 cut"),
        "{drained}"
    );
}
