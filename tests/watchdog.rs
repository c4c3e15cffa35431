//! The worker watchdog: a serving worker whose runtime does not answer the
//! master's check (here, a worker stopped with SIGSTOP) is killed and
//! replaced while clients wait in the backlog, and systemd's `WATCHDOG=1`
//! pauses meanwhile. And the master's idle cost with every operator feature
//! on.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use graceful_dev::http::{get, pid_of};
use graceful_dev::notify::Notifications;
use graceful_dev::process::Service;
use graceful_dev::procfs::{status_value, wait_gone};
use graceful_dev::{temp_dir, testapp, TIMEOUT as T};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Stops `pid` with SIGSTOP and waits until every one of its threads is
/// stopped: until then it may still accept a connection.
fn stop(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let deadline = Instant::now() + T;
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let all_stopped = tasks.flatten().all(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
            state.starts_with('T') || state.starts_with('t')
        });
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "worker {pid} did not stop");
        std::thread::yield_now();
    }
}

/// Clients that connect while the serving worker is stopped: each must get
/// its answer from the worker that replaces it.
fn clients_during(addr: &str, n: usize) -> Vec<std::thread::JoinHandle<(u16, String)>> {
    (0..n)
        .map(|_| {
            let addr = addr.to_string();
            std::thread::spawn(move || get(&addr, "/pid").expect("no refused or reset connection"))
        })
        .collect()
}

#[test]
fn a_stopped_worker_is_replaced_and_watchdog_keep_alives_pause_meanwhile() {
    // The thread that receives the notifications outlives the test, so
    // the socket's directory is the test's own, removed when it ends.
    let dir = temp_dir("watchdog-sigstop");
    let notes = Notifications::bind_in(&dir, T);
    // WATCHDOG_USEC = 2 s: the master checks its worker every 500 ms.
    let service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[
            ("NOTIFY_SOCKET", notes.address()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    service.wait_line("the serving worker is checked every 500ms", T);
    // Every notification, with when it came.
    let (tx, received) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || loop {
        let note = notes.recv();
        if tx.send((Instant::now(), note)).is_err() {
            return;
        }
    });
    let watchdog = |within: Duration| loop {
        match received.recv_timeout(within) {
            Ok((at, note)) if note == "WATCHDOG=1" => return at,
            Ok(_) => continue,
            Err(e) => panic!("no WATCHDOG=1 within {within:?}: {e}"),
        }
    };
    watchdog(T);
    watchdog(T);

    let stopped = Instant::now();
    stop(first);
    let clients = clients_during(&addr, 5);
    let (line, _) = service.wait_line_n_at("did not answer the watchdog check within 500ms", 0, T);
    assert!(line.contains(&format!("worker 1 (pid {first})")), "{line}");
    let second = service.ready_worker(2, T);
    let replaced = Instant::now();
    assert!(wait_gone(first, T), "the stopped worker was killed");
    for client in clients {
        let (status, body) = client.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.trim(), second.to_string());
    }
    assert_eq!(pid_of(&addr), second);
    service.wait_line(
        &format!("worker 1 (pid {first}) was killed by SIGKILL unexpectedly: it did not answer"),
        T,
    );
    eprintln!(
        "replaced {} ms after SIGSTOP (check period 500 ms)",
        replaced.duration_since(stopped).as_millis()
    );
    // No keep-alive from a check answered before the stop was delivered
    // onwards, until the new worker answers one.
    let mut paused = Vec::new();
    let resumed = loop {
        let (at, note) = received.recv_timeout(T).expect("keep-alives resume");
        if note != "WATCHDOG=1" {
            continue;
        }
        if at < replaced {
            paused.push(at);
        } else {
            break at;
        }
    };
    let late: Vec<_> = paused
        .iter()
        .filter(|at| at.duration_since(stopped) > Duration::from_millis(100))
        .map(|at| at.duration_since(stopped))
        .collect();
    assert!(
        late.is_empty(),
        "WATCHDOG=1 while no worker answered: {late:?}"
    );
    assert!(resumed > replaced);
}

#[test]
fn the_watchdog_option_works_without_systemd() {
    let service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_WATCHDOG_MS", "300")],
    );
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    service.wait_line("the serving worker is checked every 300ms", T);
    stop(first);
    let clients = clients_during(&addr, 3);
    service.wait_line("did not answer the watchdog check within 300ms", T);
    let second = service.ready_worker(2, T);
    for client in clients {
        assert_eq!(client.join().unwrap().1.trim(), second.to_string());
    }
    // A worker that answers is left alone: several periods later the same
    // worker serves.
    let checks = 5;
    let until = Instant::now() + Duration::from_millis(300 * checks);
    while Instant::now() < until {
        assert_eq!(pid_of(&addr), second);
    }
    assert_eq!(service.count_lines("killing it and its process group"), 1);
}

/// Whether `pid` is blocked in `poll` or `ppoll` (the first number of
/// `/proc/PID/syscall`, on x86_64 and aarch64).
fn asleep(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat.rsplit_once(") ").unwrap().1;
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let number = syscall.split_whitespace().next().unwrap_or("");
    let polls: &[&str] = if cfg!(target_arch = "x86_64") {
        &["7", "271"]
    } else {
        &["73"]
    };
    state.starts_with('S') && polls.contains(&number)
}

/// Context switches of `pid`'s only thread so far.
fn switches(pid: i32) -> u64 {
    status_value(pid, "voluntary_ctxt_switches:").unwrap()
        + status_value(pid, "nonvoluntary_ctxt_switches:").unwrap()
}

#[test]
fn an_idle_master_with_a_control_socket_and_no_watchdog_never_wakes_up() {
    let dir = temp_dir("watchdog-idle");
    let socket = dir.join("control.sock");
    let service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("GRACEFUL_CONTROL_SOCKET", socket.to_str().unwrap())],
    );
    service.ready_worker(1, T);
    let master = service.pid();
    assert_eq!(status_value(master, "Threads:"), Some(1));
    // The ready line is written before the master ends that turn of its
    // loop: the window starts once it sleeps in poll.
    let deadline = Instant::now() + T;
    while !asleep(master) {
        assert!(Instant::now() < deadline, "the master never went to sleep");
        std::thread::yield_now();
    }
    let before = switches(master);
    // A window in which nothing is sent to the master: it must not run.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(switches(master), before, "the idle master woke up");
    let rss = status_value(master, "VmRSS:").unwrap();
    eprintln!("idle master: 1 thread, 0 wake-ups in 2 s, {rss} KiB resident");
    // A status query wakes it, as it should.
    let (code, _, _) = graceful_dev::graceful_command(&["status", socket.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(switches(master) > before);
}
