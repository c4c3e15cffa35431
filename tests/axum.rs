//! An axum app (a tower service) reloaded under load: zero failures.

use std::net::SocketAddr;

use graceful_dev::built;
use graceful_dev::http::{get, pid_of};
use graceful_dev::load::{Load, Mode};
use graceful_dev::process::Service;
use graceful_dev::procfs::wait_gone;
use nix::sys::signal::Signal;

use graceful_dev::TIMEOUT as T;

#[test]
fn an_axum_router_reloads_under_load_with_zero_failures() {
    let service = Service::start(&built("axum"), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    assert_eq!(
        get(&addr, "/hello/axum").unwrap(),
        (200, "Hello, axum\n".to_string())
    );
    assert_eq!(
        get(&addr, "/missing").unwrap().0,
        404,
        "axum's own routing answers"
    );

    let socket: SocketAddr = addr.parse().unwrap();
    let loads = [
        Load::start(socket, Mode::KeepAlive, 2, "/hello/load"),
        Load::start(socket, Mode::Http2, 2, "/hello/load"),
    ];
    for load in &loads {
        assert!(load.wait_progress(50, T));
    }
    for n in 0..10 {
        service.signal(Signal::SIGHUP);
        service.ready_worker(n + 2, T);
        service.wait_line_n("after draining", n as usize, T);
        for load in &loads {
            assert!(load.wait_progress(20, T));
        }
    }
    for load in loads {
        let report = load.stop();
        report.assert_clean("load");
    }
    assert!(wait_gone(first, T));
    assert_ne!(pid_of(&addr), first);
}
