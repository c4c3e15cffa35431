//! One-shot HTTP clients for tests: a raw HTTP/1.1 request and curl.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// The worker PID that answers `GET /pid` (testapp and the axum example).
pub fn pid_of(addr: &str) -> i32 {
    let (status, body) = get(addr, "/pid").expect("GET /pid");
    assert_eq!(status, 200, "GET /pid: {body}");
    body.trim().parse().expect("a pid")
}

/// One HTTP/1.1 GET on a new connection; returns (status, body).
pub fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path).map(|(status, _, body)| (status, body))
}

/// One HTTP/1.1 request on a new connection; returns (status, head, body).
pub fn request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or((response.clone(), String::new()));
    // Chunked bodies: keep only the data lines.
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.split("\r\n")
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join("")
    } else {
        body
    };
    Ok((status, head, body))
}

/// Runs `curl` with `args` and returns its stdout; panics with stderr on failure.
pub fn curl<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = Command::new(crate::tool("curl"))
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}
