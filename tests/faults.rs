//! The fault matrix: failed reloads roll back, crashed workers come back,
//! a dead master takes its workers with it, signals are coalesced, and stop
//! always ends every process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use graceful_dev::http::{get, pid_of};
use graceful_dev::load::{Load, Mode};
use graceful_dev::process::Service;
use graceful_dev::procfs::{children_of, cpu_time, is_alive, wait_gone};
use graceful_dev::testapp;
use graceful_dev::{temp_dir, TempDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use graceful_dev::TIMEOUT as T;

/// A flag file that makes testapp fail, in a directory of the test's own
/// (removed with it).
struct Flag {
    path: PathBuf,
    _dir: TempDir,
}

impl Flag {
    fn new(name: &str) -> Flag {
        let dir = temp_dir(&format!("faults-{name}"));
        Flag {
            path: dir.join("fail"),
            _dir: dir,
        }
    }
    fn env(&self) -> (&'static str, &str) {
        ("TESTAPP_FAIL_IF_EXISTS", self.path.to_str().unwrap())
    }
    fn set(&self, mode: &str) {
        std::fs::write(&self.path, mode).unwrap();
    }
    fn clear(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn failed_reloads_roll_back_with_zero_failed_requests() {
    let flag = Flag::new("rollback");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken_addr(&taken);
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[flag.env()]);
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    let serving = service.ready_worker(1, T);
    let load = Load::start(addr, Mode::KeepAlive, 2, "/");
    let fresh = Load::start(addr, Mode::NewConnection, 2, "/");

    let cases: [(&str, &str); 5] = [
        ("exit", "exited with status 3"),
        ("panic", "main panicked: testapp was told to panic"),
        (
            "error",
            "main returned an error: \"testapp was told to fail\"",
        ),
        (
            "bad-addr",
            "invalid address \"127.0.0.1:99999\": port 99999 is out of range",
        ),
        (&format!("port-in-use:{taken}"), "address already in use"),
    ];
    for (n, (mode, reason)) in cases.iter().enumerate() {
        flag.set(mode);
        service.signal(Signal::SIGHUP);
        let line = service.wait_line_n("reload failed", n, T);
        assert!(line.contains(reason), "{mode}: {line}");
        assert!(
            line.contains(&format!("still serving with worker 1 (pid {serving})")),
            "{line}"
        );
        assert!(load.wait_progress(20, T));
        assert_eq!(
            pid_of(&addr.to_string()),
            serving,
            "the old worker still serves"
        );
    }
    // A later good reload works.
    flag.clear();
    service.signal(Signal::SIGHUP);
    service.wait_line("reload finished", T);
    assert!(wait_gone(serving, T));
    assert!(load.wait_progress(20, T));
    for report in [load.stop(), fresh.stop()] {
        report.assert_clean("load");
    }
    assert!(is_alive(service.pid()));
}

fn taken_addr(listener: &std::net::TcpListener) -> String {
    listener.local_addr().unwrap().to_string()
}

#[test]
fn a_worker_that_never_becomes_ready_is_killed_after_ready_timeout() {
    let flag = Flag::new("hang");
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[flag.env()]);
    let addr = service.addr(T);
    let serving = service.ready_worker(1, T);
    flag.set("hang");
    let began = Instant::now();
    service.signal(Signal::SIGHUP);
    let line = service.wait_line("reload failed", T);
    let took = began.elapsed();
    assert!(
        line.contains("was not ready within the 5s ready_timeout"),
        "{line}"
    );
    assert!(line.contains("was killed by SIGKILL"), "{line}");
    assert!(took >= Duration::from_secs(5), "killed early: {took:?}");
    assert_eq!(pid_of(&addr), serving);
    assert_eq!(
        children_of(service.pid()),
        vec![serving],
        "only the serving worker is left"
    );
}

#[test]
fn a_crashed_worker_is_restarted_and_clients_wait_in_the_backlog() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    let first = service.ready_worker(1, T);
    let fresh = Load::start(addr, Mode::NewConnection, 2, "/");
    assert!(fresh.wait_progress(20, T));
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    let second = service.ready_worker(2, T);
    assert!(fresh.wait_progress(20, T));
    // A crash outside any handler (abort) is the same.
    let _ = get(&addr.to_string(), "/abort");
    let third = service.ready_worker(3, T);
    assert!(fresh.wait_progress(20, T));
    let report = fresh.stop();
    // Requests in flight on the crashed worker's own connections can fail;
    // no connection may be refused: the master kept the socket open.
    assert_eq!(
        report.failures.get("connect refused"),
        None,
        "{}",
        report.summary()
    );
    assert!(report.failed() <= 4, "{}", report.summary());
    assert!(service.log_text().contains(&format!(
        "worker 1 (pid {first}) was killed by SIGKILL unexpectedly"
    )));
    assert!(service.log_text().contains(&format!(
        "worker 2 (pid {second}) was killed by SIGABRT unexpectedly"
    )));
    assert_eq!(pid_of(&addr.to_string()), third);
}

#[test]
fn a_crash_loop_backs_off() {
    let flag = Flag::new("loop");
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[flag.env()]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    flag.set("exit");
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    // Each restart comes no sooner than the delay the log announced: the
    // time between the two lines, not the text, is what is checked.
    for (nth, delay) in [100u64, 200, 400, 800].into_iter().enumerate() {
        let (line, scheduled) = service.wait_line_n_at("starting a new one in", nth, T);
        assert!(line.ends_with(&format!("in {delay} ms")), "{line}");
        let (_, restarted) = service.wait_line_n_at("graceful: restarting", nth, T);
        let waited = restarted.duration_since(scheduled);
        assert!(
            waited >= Duration::from_millis(delay - 15),
            "restart {} came {waited:?} after it was scheduled for {delay} ms later",
            nth + 1
        );
    }
    // The listener stayed open all along; once starts succeed again, the
    // next attempt serves.
    flag.clear();
    let line = service.wait_line("and serving", T);
    assert!(line.contains("ready in"), "{line}");
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    let cpu = cpu_time(service.pid());
    assert!(
        cpu < Duration::from_millis(500),
        "the master used {cpu:?} of CPU"
    );
}

#[test]
fn a_handler_panic_or_error_is_a_logged_500_and_nothing_else() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let worker = service.ready_worker(1, T);
    assert_eq!(get(&addr, "/panic").unwrap().0, 500);
    assert_eq!(get(&addr, "/error").unwrap().0, 500);
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    assert_eq!(pid_of(&addr), worker);
    service.wait_line(
        "handler panicked on GET /panic: handler panicked on purpose; answered 500",
        T,
    );
    service.wait_line(
        "handler error on GET /error: handler failed on purpose; answered 500",
        T,
    );
}

#[test]
fn workers_exit_when_the_master_is_killed() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let worker = service.ready_worker(1, T);
    service.signal(Signal::SIGKILL);
    let began = Instant::now();
    assert!(
        wait_gone(worker, Duration::from_secs(5)),
        "the worker outlived its master"
    );
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "took {:?}",
        began.elapsed()
    );
    service.wait_line("the master exited; draining", T);
    // No orphan keeps the port.
    let refused = std::net::TcpStream::connect(&addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn a_burst_of_reload_signals_is_coalesced() {
    let flag = Flag::new("burst");
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[flag.env()]);
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    service.ready_worker(1, T);
    let load = Load::start(addr, Mode::KeepAlive, 2, "/");
    // Every new worker takes 600 ms to start, and 100 signals arrive, each
    // on its own, within about 250 ms: all during the first reload.
    flag.set("slow:600");
    for _ in 0..100 {
        service.signal(Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(2));
    }
    // The reload in flight, then exactly one more for all the others. By the
    // time worker 2 has drained, a third reload would have started: queued
    // reloads start the moment the one before is ready.
    service.wait_line_n("reload finished", 1, T);
    service.wait_line("worker 2 (pid", T);
    service.wait_line_n("after draining", 1, T);
    // Settle: every started reload has finished and one worker is left.
    let deadline = Instant::now() + T;
    loop {
        let started = service.count_lines("reload started");
        let ended = service.count_lines("reload finished") + service.count_lines("reload failed");
        if started == ended && children_of(service.pid()).len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not settle:\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = load.stop();
    report.assert_clean("load");
    // At most one reload in flight at any time, in the order of the log.
    let mut in_flight = false;
    for line in service.lines() {
        if line.contains("reload started") {
            assert!(!in_flight, "two reloads in flight:\n{}", service.log_text());
            in_flight = true;
        } else if line.contains("reload finished") || line.contains("reload failed") {
            in_flight = false;
        }
    }
    let reloads = service.count_lines("reload started");
    assert_eq!(
        reloads,
        2,
        "100 signals during one reload must make that reload and one more:\n{}",
        service.log_text()
    );
    assert!(service
        .log_text()
        .contains("while another is in progress; it will run next"));
    assert_eq!(service.count_lines("reload failed"), 0);
}

#[test]
fn stop_during_a_reload_ends_every_generation() {
    let flag = Flag::new("stopreload");
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[flag.env(), ("TESTAPP_STOP_TIMEOUT_MS", "2000")],
    );
    let first = service.ready_worker(1, T);
    flag.set("hang");
    service.signal(Signal::SIGHUP);
    service.wait_line("worker 2 (pid", T);
    let began = Instant::now();
    service.signal(Signal::SIGTERM);
    let status = service.wait_exit(T);
    assert_eq!(status.code(), Some(0));
    // The starting worker is killed at once and the idle serving one drains
    // at once: well inside the 2 s stop_timeout, and without the kill that
    // would end a worker still running after it.
    assert!(
        began.elapsed() < Duration::from_millis(1000),
        "took {:?}:\n{}",
        began.elapsed(),
        service.log_text()
    );
    assert_eq!(
        service.count_lines("still running after stop_timeout"),
        0,
        "{}",
        service.log_text()
    );
    for pid in service.worker_pids() {
        assert!(
            wait_gone(pid, Duration::from_secs(1)),
            "worker {pid} left behind"
        );
    }
    assert!(!is_alive(first));
}

#[test]
fn a_stuck_worker_is_killed_after_stop_timeout_and_the_master_exits() {
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_STOP_TIMEOUT_MS", "1000")],
    );
    let worker = service.ready_worker(1, T);
    // A stopped process cannot drain: only SIGKILL ends it.
    kill(Pid::from_raw(worker), Signal::SIGSTOP).unwrap();
    let began = Instant::now();
    service.signal(Signal::SIGTERM);
    let status = service.wait_exit(T);
    let took = began.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(2500),
        "took {took:?}"
    );
    service.wait_line(&format!("killing worker 1 (pid {worker}) with SIGKILL"), T);
    assert!(wait_gone(worker, T));
}

#[test]
fn tampered_worker_markers_are_clear_errors() {
    for (fd, expected) in [
        ("garbage", "not a file descriptor number"),
        ("1", "0, 1 and 2 are stdin, stdout and stderr"),
        ("999", "the descriptor is not open"),
    ] {
        let out = std::process::Command::new(testapp())
            .env("GRACEFUL_CONTROL_FD", fd)
            .env("GRACEFUL_GENERATION", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{fd}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "invalid worker environment GRACEFUL_CONTROL_FD={fd:?}: {expected}"
            )),
            "{stderr}"
        );
    }
    // An open descriptor that is not a control socket (a regular file).
    let file = std::fs::File::open(testapp()).unwrap();
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let out = unsafe_inherit(fd);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a graceful control socket"));
}

/// Runs testapp with `fd` inherited and named as its control socket.
fn unsafe_inherit(fd: i32) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(testapp());
    command
        .env("GRACEFUL_CONTROL_FD", fd.to_string())
        .env("GRACEFUL_GENERATION", "1");
    // SAFETY: fcntl is async-signal-safe; it clears CLOEXEC on one fd.
    unsafe {
        command.pre_exec(move || {
            nix::libc::fcntl(fd, nix::libc::F_SETFD, 0);
            Ok(())
        });
    }
    command.output().unwrap()
}

#[test]
fn a_slowloris_client_cannot_hold_a_draining_worker_past_stop_timeout() {
    use std::io::Write;
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_STOP_TIMEOUT_MS", "1500")],
    );
    let addr = service.addr(T);
    let worker = service.ready_worker(1, T);
    // Half a request head, never finished.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    assert_eq!(
        get(&addr, "/").unwrap().0,
        200,
        "the worker has accepted connections"
    );
    let began = Instant::now();
    service.stop_cleanly(T);
    let took = began.elapsed();
    // The worker cuts the connection itself at its 1.5 s stop_timeout, and
    // exits before the master's kill at stop_timeout + 0.5 s would.
    assert!(
        took < Duration::from_millis(1900),
        "a slow client held the stop for {took:?}"
    );
    let drained = service.wait_line(&format!("worker 1 (pid {worker}) drained"), T);
    assert!(
        drained.ends_with("1 cut at the 1.5s stop_timeout"),
        "{drained}"
    );
    assert_eq!(
        service.count_lines("killing worker"),
        0,
        "{}",
        service.log_text()
    );
    assert!(wait_gone(worker, T));
}

#[test]
fn back_to_back_reloads_under_load_lose_nothing() {
    // One reload every 10 ms for a second: generations are replaced while
    // connections are being accepted, which is where an accepted but not yet
    // counted connection could be lost.
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    service.ready_worker(1, T);
    let loads = [
        Load::start(addr, Mode::KeepAlive, 2, "/"),
        Load::start(addr, Mode::NewConnection, 2, "/"),
    ];
    // SIGHUP and SIGUSR1 alike (the two default reload signals).
    for i in 0..100 {
        let signal = if i % 2 == 0 {
            Signal::SIGHUP
        } else {
            Signal::SIGUSR1
        };
        service.signal(signal);
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + T;
    while !(service.count_lines("reload started")
        == service.count_lines("reload finished") + service.count_lines("reload failed")
        && children_of(service.pid()).len() == 1)
    {
        assert!(
            Instant::now() < deadline,
            "did not settle:\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for load in loads {
        let report = load.stop();
        report.assert_clean("load");
    }
    assert_eq!(service.count_lines("reload failed"), 0);
    // Reloads did happen, many of them, coalesced or not.
    let finished = service.count_lines("reload finished");
    assert!(
        finished >= 10,
        "{finished} reloads:\n{}",
        service.log_text()
    );
    // Both signals reload. In the storm SIGUSR1 may always have been
    // coalesced into a reload already in flight (pending together with
    // SIGHUP across an upgrade's exec, the lower number is taken first), so
    // it is checked on its own, once the service has settled.
    let before = service.count_lines("reload finished");
    service.signal(Signal::SIGUSR1);
    service.wait_line("reload started (signal SIGUSR1)", T);
    service.wait_line_n("reload finished", before, T);
}

#[test]
fn a_second_stop_signal_kills_every_worker_at_once() {
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_STOP_TIMEOUT_MS", "20000")],
    );
    let addr = service.addr(T);
    let worker = service.ready_worker(1, T);
    // A request that would hold the drain for 20 s.
    let slow = std::thread::spawn(move || get(&addr, "/slow?ms=20000"));
    service.wait_line("slow request started", T);
    service.signal(Signal::SIGTERM);
    service.wait_line("stopping (SIGTERM)", T);
    let began = Instant::now();
    service.stop_cleanly(T);
    let took = began.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    service.wait_line(
        "SIGTERM received again while stopping; killing every worker now",
        T,
    );
    service.wait_line(&format!("worker 1 (pid {worker}) was killed by SIGKILL"), T);
    assert!(
        slow.join().unwrap().is_err(),
        "the cut request got an answer"
    );
}

#[test]
fn master_mode_as_pid_1_reloads_and_reaps_orphans() {
    let mut service = Service::start_as_pid_1(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    service.wait_line("master started (pid 1,", T);
    let first = pid_of(&addr);
    // The master as the host sees it: unshare's only child.
    let master = children_of(service.pid());
    assert_eq!(master.len(), 1, "{master:?}");
    let master = master[0];
    kill(Pid::from_raw(master), Signal::SIGHUP).unwrap();
    service.wait_line("reload finished", T);
    // Worker 1 may take a connection until it has been told to stop.
    service.wait_line("after draining", T);
    assert_ne!(pid_of(&addr), first);
    // An orphan (a 1 s sleep whose parent shell exits at once) is
    // re-parented to PID 1, the master, which reaps it when it exits: it
    // does not stay a zombie. Its PID is answered as the namespace numbers
    // it; the host's is found by NSpid among the master's children.
    let orphan: i32 = get(&addr, "/orphan").unwrap().1.trim().parse().unwrap();
    let deadline = Instant::now() + T;
    let host_pid = loop {
        let found = children_of(master).into_iter().find(|&child| {
            graceful_dev::procfs::status_line(child, "NSpid:")
                .is_some_and(|ids| ids.split_whitespace().last() == Some(&orphan.to_string()))
        });
        if let Some(pid) = found {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "orphan {orphan} never became the master's child"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    while std::path::Path::new(&format!("/proc/{host_pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "orphan {host_pid} was not reaped; zombies of the master: {:?}",
            graceful_dev::procfs::zombies_of(master)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(Pid::from_raw(master), Signal::SIGTERM).unwrap();
    assert_eq!(service.wait_exit(T).code(), Some(0));
}

#[test]
fn the_old_worker_answers_while_the_new_one_takes_a_second_to_start() {
    let flag = Flag::new("gate");
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[flag.env()]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    flag.set("slow:1000");
    service.signal(Signal::SIGHUP);
    let (_, spawned) = service.wait_line_n_at("worker 2 (pid", 0, T);
    // For the second worker 2 takes to start, worker 1 answers every
    // request on a new connection, promptly: it was not told to stop.
    let mut answered = 0;
    while spawned.elapsed() < Duration::from_millis(800) {
        let began = Instant::now();
        let (status, body) = get(&addr, "/pid").unwrap();
        let took = began.elapsed();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body.trim().parse::<i32>().unwrap(),
            first,
            "answered by another worker"
        );
        assert!(took < Duration::from_millis(250), "a request took {took:?}");
        answered += 1;
    }
    assert!(answered >= 10, "only {answered} requests in 800 ms");
    assert_eq!(
        service.count_lines("reload finished"),
        0,
        "{}",
        service.log_text()
    );
    let second = service.ready_worker(2, T);
    // Worker 1 may take a connection until it is told to stop, which comes
    // after worker 2's ready line.
    service.wait_line(
        &format!("worker 1 (pid {first}) exited with status 0 after draining"),
        T,
    );
    assert_eq!(pid_of(&addr), second);
}
