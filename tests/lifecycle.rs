//! The core lifecycle with real binaries and real signals: serve, reload,
//! drain, stop, stop_timeout, binary replacement, reload from code.

use std::time::{Duration, Instant};

use graceful_dev::built;
use graceful_dev::http::{curl, get, pid_of};
use graceful_dev::process::Service;
use graceful_dev::procfs::{is_alive, wait_gone};
use graceful_dev::temp_dir;
use graceful_dev::testapp;
use nix::sys::signal::Signal;

use graceful_dev::TIMEOUT as T;

#[test]
fn hello_example_serves_http1_and_h2() {
    let service = Service::start(&built("hello"), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);
    let (status, body) = get(&addr, "/world%3Cb%3E").unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, format!("Hello, port: {addr}, \"/world%3Cb%3E\"\n"));
    let body = curl(&[format!("http://{addr}/curl")]);
    assert_eq!(body, format!("Hello, port: {addr}, \"/curl\"\n"));
    let h2 = curl(&[
        "--http2-prior-knowledge".to_string(),
        "-w".into(),
        "%{http_version}".into(),
        format!("http://{addr}/h2"),
    ]);
    assert_eq!(h2, format!("Hello, port: {addr}, \"/h2\"\n2"));
    // A body of known length keeps its Content-Length through the handler
    // adapter (it was once sent chunked).
    let head = curl(&["-si".to_string(), format!("http://{addr}/len")]);
    let expected = format!("Hello, port: {addr}, \"/len\"\n").len();
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {expected}\r\n")),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
}

#[test]
fn sighup_replaces_the_worker_and_keeps_the_master() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let mut previous = service.ready_worker(1, T);
    assert_eq!(pid_of(&addr), previous);
    for generation in 2..=3 {
        service.signal(Signal::SIGHUP);
        let next = service.ready_worker(generation, T);
        // Until it has stopped, the old worker may take a connection.
        assert!(
            wait_gone(previous, T),
            "the old worker {previous} is still running"
        );
        assert_eq!(pid_of(&addr), next, "the new worker serves");
        previous = next;
        assert!(
            is_alive(service.pid()),
            "the master is still the same process"
        );
    }
    assert!(service
        .log_text()
        .contains(&format!("master started (pid {},", service.pid())));
}

#[test]
fn a_request_in_flight_during_reload_completes() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let old = service.ready_worker(1, T);
    let client = {
        let addr = addr.clone();
        std::thread::spawn(move || get(&addr, "/slow?ms=1500"))
    };
    service.wait_line(&format!("slow request started in pid {old}"), T);
    service.signal(Signal::SIGHUP);
    service.wait_line("reload finished", T);
    let (status, body) = client.join().unwrap().expect("the slow request completes");
    assert_eq!(status, 200);
    assert_eq!(body, format!("slow 1500 done by {old}\n"));
    assert!(wait_gone(old, T));
    service.wait_line(&format!("worker 1 (pid {old}) drained 1 connection(s)"), T);
}

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let mut service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let worker = service.ready_worker(1, T);
    let client = std::thread::spawn(move || get(&addr, "/slow?ms=1000"));
    service.wait_line("slow request started", T);
    service.signal(Signal::SIGTERM);
    let (status, body) = client.join().unwrap().expect("the slow request completes");
    assert_eq!(
        (status, body),
        (200, format!("slow 1000 done by {worker}\n"))
    );
    let status = service.wait_exit(T);
    assert_eq!(status.code(), Some(0), "{}", service.log_text());
    assert!(wait_gone(worker, T), "no worker left behind");
    assert!(service.log_text().contains("stopped"));
}

#[test]
fn sigint_stops_like_sigterm() {
    let mut service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let worker = service.ready_worker(1, T);
    service.signal(Signal::SIGINT);
    assert_eq!(service.wait_exit(T).code(), Some(0));
    assert!(wait_gone(worker, T));
}

#[test]
fn stop_timeout_cuts_a_longer_request() {
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_STOP_TIMEOUT_MS", "1000")],
    );
    let addr = service.addr(T);
    let worker = service.ready_worker(1, T);
    let client = std::thread::spawn(move || get(&addr, "/slow?ms=15000"));
    service.wait_line("slow request started", T);
    let began = Instant::now();
    service.signal(Signal::SIGTERM);
    let status = service.wait_exit(T);
    let took = began.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(900),
        "exited before the stop timeout: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "exit came {took:?} after SIGTERM, stop_timeout is 1s"
    );
    if let Ok((status, body)) = client.join().unwrap() {
        panic!("the request should have been cut, got {status} {body}");
    }
    assert!(wait_gone(worker, T));
    service.wait_line("1 cut at the 1s stop_timeout", T);
}

#[test]
fn replacing_the_binary_then_sighup_runs_the_new_code() {
    let dir = temp_dir("replace");
    let app = dir.join("app");
    graceful_dev::copy_executable(&testapp(), &app);
    let service = Service::start(&app, &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    assert!(get(&addr, "/").unwrap().1.starts_with("testapp v1"));

    // Deploy: write the new build beside it, rename it over the old path.
    let staged = dir.join("app.new");
    graceful_dev::copy_executable(&built("hello"), &staged);
    std::fs::rename(&staged, &app).unwrap();
    service.signal(Signal::SIGHUP);
    service.ready_worker(2, T);
    // Until it has stopped, worker 1 may take a connection.
    assert!(wait_gone(first, T));
    let (status, body) = get(&addr, "/new").unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, format!("Hello, port: {addr}, \"/new\"\n"));
    drop(service);
}

#[test]
fn reload_from_code_goes_through_the_master() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    assert_eq!(get(&addr, "/reload").unwrap().1, "reload requested\n");
    let second = service.ready_worker(2, T);
    assert_ne!(first, second);
    assert!(wait_gone(first, T));
    assert!(service
        .log_text()
        .contains("reload started (graceful::reload() in worker 1)"));
}

#[test]
fn a_failed_registration_fails_the_start_and_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let dir = temp_dir("taken");
    let flag = dir.join("fail");
    std::fs::write(&flag, format!("port-in-use:{taken_addr}")).unwrap();
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_FAIL_IF_EXISTS", flag.to_str().unwrap())],
    );
    let status = service.wait_exit(T);
    assert_eq!(status.code(), Some(1), "{}", service.log_text());
    let log = service.log_text();
    assert!(
        log.contains(&format!("cannot listen on {taken_addr:?}")),
        "{log}"
    );
    assert!(log.contains("address already in use"), "{log}");
    // All or nothing: the other, valid address was never served.
    assert!(!log.contains("and serving"), "{log}");
    drop(service);
}

/// One address registered twice (here, port 0 spelled two ways) is one
/// socket: two handlers would share its connections at random. The start
/// fails, naming the address.
#[test]
fn one_socket_registered_twice_fails_the_start_and_names_it() {
    let dir = temp_dir("twice");
    let flag = dir.join("fail");
    // testapp registers its argument, and "port-in-use:ADDR" registers ADDR
    // first: "localhost:0" is held as "127.0.0.1:0", the same socket.
    std::fs::write(&flag, "port-in-use:localhost:0").unwrap();
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_FAIL_IF_EXISTS", flag.to_str().unwrap())],
    );
    assert_eq!(
        service.wait_exit(T).code(),
        Some(1),
        "{}",
        service.log_text()
    );
    let log = service.log_text();
    assert!(
        log.contains(
            "cannot listen on \"127.0.0.1:0\": it is the socket \"localhost:0\" was registered \
             on: an address is served by one handler"
        ),
        "{log}"
    );
    assert!(!log.contains("and serving"), "{log}");
    drop(service);
}

#[test]
fn bad_addresses_fail_the_start_with_a_clear_error() {
    for (addr, expected) in [
        ("", "the address is empty"),
        ("localhost", "missing port"),
        (":70000", "port 70000 is out of range"),
        ("unix:", "needs a path"),
        (
            "no-such-host.invalid:80",
            "cannot resolve host `no-such-host.invalid`",
        ),
    ] {
        let mut service = Service::start(&testapp(), &[addr], &[]);
        assert_eq!(service.wait_exit(T).code(), Some(1));
        let log = service.log_text();
        assert!(
            log.contains(&format!("{addr:?}")) && log.contains(expected),
            "{addr:?}: {log}"
        );
    }
}

#[test]
fn a_unix_path_that_is_not_a_stale_socket_is_never_removed() {
    let dir = temp_dir("unix-taken");
    let file = dir.join("plain");
    std::fs::write(&file, b"keep me").unwrap();
    let live = dir.join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    for (path, expected) in [
        (&*file, "exists and is not a socket; refusing to remove it"),
        (&*dir, "exists and is not a socket; refusing to remove it"),
        (&*live, "is in use by a running listener"),
    ] {
        let addr = format!("unix:{}", path.display());
        let mut service = Service::start(&testapp(), &[&addr], &[]);
        assert_eq!(service.wait_exit(T).code(), Some(1));
        let log = service.log_text();
        assert!(
            log.contains(&format!("cannot listen on {addr:?}"))
                && log.contains(&format!("{} {expected}", path.display())),
            "{addr}: {log}"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    assert!(live.exists());
}

#[test]
fn several_listeners_in_one_process() {
    let dir = temp_dir("multi");
    let sock = dir.join("admin.sock");
    let unix = format!("unix:{}", sock.display());
    let mut service = Service::start(&built("multi"), &["127.0.0.1:0", "[::1]:0", &unix], &[]);
    service.ready_worker(1, T);
    let mut addrs: Vec<String> = (0..3).map(|n| service.addr_n(n, T)).collect();
    addrs.sort();
    let v4 = addrs.iter().find(|a| a.starts_with("127.")).unwrap();
    let v6 = addrs.iter().find(|a| a.starts_with('[')).unwrap();
    assert!(addrs.contains(&unix));
    assert_eq!(curl(&[format!("http://{v4}/x")]), "api: GET /x\n");
    assert_eq!(curl(&[format!("http://{v6}/y")]), "web: /y\n");
    let admin = curl(&["--unix-socket", sock.to_str().unwrap(), "http://localhost/"]);
    assert!(admin.starts_with("admin: worker pid "), "{admin}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660, "unix_mode is applied");
    // Stopped for good: the socket file is removed.
    service.stop_cleanly(T);
    assert!(!sock.exists(), "the socket file is left behind");
    drop(service);
}

#[test]
fn a_privileged_port_without_permission_is_a_clear_error() {
    use std::os::unix::process::CommandExt;
    let mut service = Service::start_with(&testapp(), &["127.0.0.1:81"], &[], |command| {
        command.uid(65534).gid(65534);
    });
    assert_eq!(service.wait_exit(T).code(), Some(1));
    let log = service.log_text();
    let expected = "cannot listen on \"127.0.0.1:81\": bind 127.0.0.1:81: permission denied";
    assert!(log.contains(expected), "{log}");
}
