//! Reloads under steady load: zero failed requests, in each client mode.
//!
//! Each test runs clients that send their next request as soon as the
//! previous one is answered, and reloads the service 30 times. After each
//! reload it waits for the old worker to exit and for requests to flow on the
//! new one. Every failure is counted by kind and printed if any occurs.

use std::net::SocketAddr;

use graceful_dev::load::{Load, Mode};
use graceful_dev::process::Service;
use graceful_dev::testapp;
use nix::sys::signal::Signal;

use graceful_dev::TIMEOUT as T;
const RELOADS: usize = 30;
const CLIENTS: usize = 4;

fn reloads_under_load(mode: Mode) {
    let grace = std::env::var("TESTAPP_IDLE_GRACE_MS").unwrap_or_else(|_| "500".into());
    let env = [("TESTAPP_IDLE_GRACE_MS", grace.as_str())];
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &env);
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    service.ready_worker(1, T);
    let load = Load::start(addr, mode, CLIENTS, "/");
    assert!(load.wait_progress(50, T), "no load before the first reload");
    for reload in 0..RELOADS {
        service.signal(Signal::SIGHUP);
        service.ready_worker(reload as u64 + 2, T);
        service.wait_line_n("after draining", reload, T);
        assert!(
            load.wait_progress(100, T),
            "requests stopped flowing after reload {}",
            reload + 1
        );
    }
    let report = load.stop();
    println!(
        "{}: {}",
        mode.name(),
        report.summary().lines().next().unwrap_or("")
    );
    if report.failed() > 0 {
        eprintln!("{}", service.log_text());
    }
    report.assert_clean(mode.name());
    assert!(
        report.ok >= (RELOADS * 100) as u64,
        "too few requests: {}",
        report.summary()
    );
    assert_eq!(service.count_lines("reload finished"), RELOADS);
    assert_eq!(service.count_lines("reload failed"), 0);
}

#[test]
fn zero_failures_http1_keep_alive() {
    reloads_under_load(Mode::KeepAlive);
}

#[test]
fn zero_failures_http1_new_connection_per_request() {
    reloads_under_load(Mode::NewConnection);
}

#[test]
fn zero_failures_http2() {
    reloads_under_load(Mode::Http2);
}
