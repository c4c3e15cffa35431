//! Hostile clients, hostile hosts: what an attacker or a broken environment
//! can do to a running service, reproduced against real processes, and the
//! behaviour that must hold. Timeouts come from options set small, never
//! from sleeping.

use std::time::Duration;

use graceful_dev::http::get;
use graceful_dev::process::Service;
use graceful_dev::procfs::{is_alive, wait_gone};
use graceful_dev::{testapp, TIMEOUT as T};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn nothing_a_sigkilled_worker_started_outlives_it() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let worker = service.ready_worker(1, T);
    let child: i32 = get(&addr, "/child").unwrap().1.trim().parse().unwrap();
    assert!(is_alive(child));
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    service.ready_worker(2, T);
    assert!(
        wait_gone(child, Duration::from_secs(5)),
        "process {child}, started by the killed worker {worker}, is still running"
    );
}

#[test]
fn nothing_a_worker_started_outlives_the_service() {
    let mut service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);
    let child: i32 = get(&addr, "/child").unwrap().1.trim().parse().unwrap();
    service.signal(Signal::SIGTERM);
    assert_eq!(service.wait_exit(T).code(), Some(0));
    assert!(
        wait_gone(child, Duration::from_secs(5)),
        "process {child} outlived the service"
    );
}

#[test]
fn a_stray_role_marker_is_ignored_and_reloads_and_stops_work() {
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[
            ("GRACEFUL_ROLE", "successor"),
            ("GRACEFUL_INHERIT", "garbage"),
        ],
    );
    let addr = service.addr(T);
    service.ready_worker(1, T);
    service.wait_line("ignoring GRACEFUL_ROLE from the environment", T);
    service.wait_line("ignoring GRACEFUL_INHERIT from the environment", T);
    service.signal(Signal::SIGHUP);
    service.wait_line("reload finished", T);
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    let began = std::time::Instant::now();
    service.signal(Signal::SIGTERM);
    assert_eq!(service.wait_exit(T).code(), Some(0));
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "took {:?}",
        began.elapsed()
    );
}
