//! How a worker winds down: long streams end through `shutdown_signal()`,
//! HTTP/2 clients get GOAWAY while their open streams complete.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use graceful_dev::process::Service;
use graceful_dev::procfs::wait_gone;
use graceful_dev::testapp;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::Signal;

use graceful_dev::TIMEOUT as T;

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

/// Sends an upgrade request and returns the connection after `hello`.
fn upgraded(addr: &str, query: &str) -> std::net::TcpStream {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    let request = format!(
        "GET /upgrade{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: upgrade\r\nUpgrade: testapp\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&received).contains("hello\n") {
        let n = conn.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before hello: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols"),
        "{text}"
    );
    conn
}

#[test]
fn an_upgraded_connection_counts_in_the_drain_and_ends_on_shutdown_signal() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let old = service.ready_worker(1, T);
    let mut conn = upgraded(&addr, "");
    service.signal(Signal::SIGHUP);
    service.wait_line("reload finished", T);
    let mut rest = String::new();
    conn.read_to_string(&mut rest)
        .expect("a clean end, not a reset");
    assert_eq!(rest, "bye\n");
    assert!(wait_gone(old, T));
    let drained = service.wait_line(&format!("worker 1 (pid {old}) drained"), T);
    assert!(
        drained.contains("drained 1 connection(s)") && drained.contains(", 0 cut"),
        "{drained}"
    );
}

#[test]
fn an_upgraded_connection_that_never_ends_is_cut_at_stop_timeout() {
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_STOP_TIMEOUT_MS", "1000")],
    );
    let addr = service.addr(T);
    let worker = service.ready_worker(1, T);
    let mut conn = upgraded(&addr, "?stubborn");
    let began = std::time::Instant::now();
    service.stop_cleanly(T);
    let took = began.elapsed();
    // The upgraded connection held the drain until the deadline, no longer.
    assert!(
        took >= Duration::from_millis(900),
        "did not wait for the upgraded connection: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "held past stop_timeout: {took:?}"
    );
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    assert!(wait_gone(worker, T));
    service.wait_line("1 cut at the 1s stop_timeout", T);
}

#[test]
fn a_closed_connection_lingers_so_the_client_reads_eof_not_a_reset() {
    // A client that asked to close but had already sent more (a pipelined
    // request, or an HTTP/2 stream opened as a GOAWAY was on its way): the
    // server must not close with that unread, or the kernel answers RST and
    // the client gets "connection reset" or "broken pipe" instead of the end
    // of the stream.
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);
    let mut client = std::net::TcpStream::connect(&addr).unwrap();
    client.set_read_timeout(Some(T)).unwrap();
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'X', 256 * 1024));
    client.write_all(&request).unwrap();
    let mut answer = Vec::new();
    let read = client.read_to_end(&mut answer);
    assert!(
        read.is_ok(),
        "the connection ended with {read:?}, not EOF, after {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    // The server still reads (and drops) what comes after its FIN. A server
    // that closed with data unread sent RST just after its FIN: the error
    // it leaves on the socket shows within microseconds, and lingering
    // lasts 250 ms, so 100 ms without one tells the two apart.
    assert!(client.write_all(b"more").is_ok());
    let quiet = std::time::Instant::now() + Duration::from_millis(100);
    while std::time::Instant::now() < quiet {
        assert_eq!(
            client.take_error().unwrap().map(|e| e.kind()),
            None,
            "the server reset the connection"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_http1_response_finished_in_the_drain_says_connection_close_and_the_connection_ends() {
    // A keep-alive client whose request is answered while the worker drains
    // (within idle_grace, 20 s here, so hyper has not been told to close)
    // must learn from the response that the connection ends, or it may send
    // its next request just as the server closes.
    let service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_IDLE_GRACE_MS", "20000")],
    );
    let addr = service.addr(T);
    let old = service.ready_worker(1, T);
    let mut client = std::net::TcpStream::connect(&addr).unwrap();
    client.set_read_timeout(Some(T)).unwrap();
    client
        .write_all(b"GET /until-drain HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    service.wait_line("waiting for the drain", T);
    service.signal(Signal::SIGHUP);
    let mut answer = Vec::new();
    let read = client.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(read.is_ok(), "{read:?} after {answer:?}");
    assert!(answer.starts_with("http/1.1 200 ok\r\n"), "{answer:?}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
    assert!(
        head.lines().any(|l| l == "connection: close"),
        "no `connection: close` in a response finished in the drain: {head:?}"
    );
    assert_eq!(
        body.trim(),
        old.to_string(),
        "answered by the draining worker"
    );
}
