//! Every option of `#[graceful::main]` takes effect at run time, not only in
//! the expansion: `src/bin/all_options.rs` sets each to a value other than
//! its default, and this test sees each one in the service's behaviour.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use graceful_dev::http::get;
use graceful_dev::process::Service;
use graceful_dev::{built, temp_dir, TIMEOUT as T};
use nix::sys::signal::Signal;

#[test]
fn every_attribute_option_takes_effect() {
    let dir = temp_dir("all-options");
    let hang = dir.join("hang");
    let hang_env = hang.to_str().unwrap().to_string();
    let mut service = Service::start_with(
        &built("all_options"),
        &["127.0.0.1:0"],
        &[("ALL_OPTIONS_HANG_IF_EXISTS", &hang_env)],
        |command| {
            command.current_dir(&dir);
        },
    );
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);

    // reload = [SIGUSR2], stop = [SIGTERM, SIGQUIT]
    let started = service.wait_line("master started", T);
    assert!(
        started.ends_with("reload with SIGUSR2, stop with SIGTERM, SIGQUIT"),
        "{started}"
    );
    // pid_file = "all-options.pid", relative to the working directory
    let pid_file = dir.join("all-options.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        service.pid().to_string()
    );
    // worker_threads = 3
    assert_eq!(get(&addr, "/threads").unwrap().1.trim(), "3");
    // control_socket = "all-options.sock", relative to the working directory
    let socket = dir.join("all-options.sock");
    let (code, status, _) = graceful_dev::graceful_command(&["status", socket.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        status.contains(&format!("master pid {}", service.pid())),
        "{status}"
    );
    // watchdog = "2s"
    service.wait_line("the serving worker is checked every 2s", T);
    // user = "graceful-test", group = "graceful-test-extra" (which
    // scripts/test creates): every id of the worker, and none of the master.
    let ids = |pid: i32, key: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let id = |flag: &str, name: &str| {
        let (code, out, err) =
            graceful_dev::run_bounded(std::process::Command::new("id").args([flag, name]));
        assert_eq!(code, 0, "id {flag} {name}: {err}");
        out.trim().to_string()
    };
    let extra = graceful_dev::run_bounded(
        std::process::Command::new("getent").args(["group", "graceful-test-extra"]),
    )
    .1;
    let extra_gid = extra.split(':').nth(2).unwrap().to_string();
    assert_eq!(ids(first, "Uid:"), vec![id("-u", "graceful-test"); 4]);
    assert_eq!(ids(first, "Gid:"), vec![extra_gid; 4]);
    assert_eq!(ids(service.pid(), "Uid:"), vec!["0"; 4]);

    // idle_grace = "200ms": an idle keep-alive connection keeps the old
    // worker for 200 ms after the new one is ready, not the default 500 ms.
    let mut idle = TcpStream::connect(&addr).unwrap();
    write!(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    assert!(idle.read(&mut buf).unwrap() > 0);
    // Like a real client, it closes its end when the server closes its own
    // (else the server's lingering close waits 250 ms more for it).
    let closer = std::thread::spawn(move || {
        idle.set_read_timeout(Some(T)).unwrap();
        let _ = idle.read_to_end(&mut Vec::new());
    });
    service.signal(Signal::SIGUSR2);
    let (_, ready) = service.wait_line_n_at("reload finished", 0, T);
    let exit = format!("worker 1 (pid {first}) exited with status 0 after draining");
    let (_, gone) = service.wait_line_n_at(&exit, 0, T);
    let kept = gone.duration_since(ready);
    println!("idle_grace: the old worker exited {kept:?} after the new one was ready");
    closer.join().unwrap();
    assert!(
        kept >= Duration::from_millis(190) && kept < Duration::from_millis(450),
        "kept {kept:?}"
    );
    assert!(service
        .log_text()
        .contains("reload started (signal SIGUSR2)"));

    // ready_timeout = "1500ms"
    std::fs::write(&hang, b"").unwrap();
    service.signal(Signal::SIGUSR2);
    let failed = service.wait_line("reload failed", T);
    assert!(
        failed.contains("was not ready within the 1.5s ready_timeout"),
        "{failed}"
    );

    // header_timeout = "2s": a connection that sends nothing is closed.
    let began = Instant::now();
    let mut silent = TcpStream::connect(&addr).unwrap();
    silent.set_read_timeout(Some(T)).unwrap();
    assert_eq!(
        silent.read(&mut buf).unwrap_or(0),
        0,
        "closed without a byte"
    );
    let closed = began.elapsed();
    println!("header_timeout: a silent connection was closed after {closed:?}");
    assert!(
        closed >= Duration::from_millis(1900) && closed < Duration::from_millis(2900),
        "{closed:?}"
    );

    // idle_timeout = "1s": a keep-alive connection idle after a request is
    // closed politely. (For HTTP/1 the header timeout bounds the wait for
    // the next request head too: the shorter of the two applies.)
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(T)).unwrap();
    write!(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(idle.read(&mut buf).unwrap() > 0);
    let answered = Instant::now();
    assert_eq!(idle.read(&mut buf).unwrap_or(0), 0);
    let kept = answered.elapsed();
    println!("idle_timeout: an idle connection was closed after {kept:?}");
    assert!(
        kept >= Duration::from_millis(900) && kept < Duration::from_millis(1900),
        "{kept:?}"
    );

    // max_header_size = 16384: a larger request head gets 431.
    let mut big = TcpStream::connect(&addr).unwrap();
    write!(
        big,
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    )
    .unwrap();
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    // max_connections = 20: with 20 silent connections open, a 21st waits
    // in the backlog until the header timeout frees their slots.
    let silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let began = Instant::now();
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    let waited = began.elapsed();
    println!("max_connections: the 21st connection was served after {waited:?}");
    assert!(
        waited >= Duration::from_millis(500),
        "served at once: {waited:?}"
    );
    drop(silent);

    // stop_timeout = "3s", and SIGQUIT stops
    service.signal(Signal::SIGQUIT);
    let stopping = service.wait_line("stopping (SIGQUIT)", T);
    assert!(stopping.ends_with("for up to 3s"), "{stopping}");
    assert_eq!(service.wait_exit(T).code(), Some(0));
    assert!(!pid_file.exists(), "the PID file is removed on stop");
    drop(service);
}
