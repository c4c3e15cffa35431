//! Single-process mode (`GRACEFUL_MODE=single`): no master; a reload starts a
//! successor that inherits the listeners, and the old process drains once it
//! is ready. Zero failures under load, a failed successor leaves the old
//! process serving, stop drains, and systemd hears `MAINPID=`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use graceful_dev::http::{get, pid_of};
use graceful_dev::load::{Load, Mode};
use graceful_dev::notify::Notifications;
use graceful_dev::process::Service;
use graceful_dev::procfs::{children_of, fd_count, is_alive, wait_gone};
use graceful_dev::testapp;
use graceful_dev::{temp_dir, TempDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use graceful_dev::TIMEOUT as T;

fn signal(pid: i32, signal: Signal) {
    kill(Pid::from_raw(pid), signal).unwrap();
}

fn pid_file(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// testapp in single-process mode, with `envs` besides.
fn single(envs: &[(&str, &str)]) -> Service {
    let mut all = vec![("GRACEFUL_MODE", "single")];
    all.extend_from_slice(envs);
    Service::start(&testapp(), &["127.0.0.1:0"], &all)
}

/// A single-mode testapp whose failures a flag file sets, under keep-alive
/// load.
struct Flagged {
    service: Service,
    dir: TempDir,
    flag: PathBuf,
    addr: String,
    first: i32,
    load: Load,
}

fn single_under_load(name: &str) -> Flagged {
    let dir = temp_dir(name);
    let flag = dir.join("flag");
    let service = single(&[("TESTAPP_FAIL_IF_EXISTS", flag.to_str().unwrap())]);
    let addr = service.addr(T);
    let first = service.ready("process", 1, T);
    let load = Load::start(addr.parse().unwrap(), Mode::KeepAlive, 2, "/");
    assert!(load.wait_progress(20, T));
    Flagged {
        service,
        dir,
        flag,
        addr,
        first,
        load,
    }
}

#[test]
fn reloads_under_load_lose_nothing_and_the_pid_file_follows() {
    let dir = temp_dir("single-reload");
    let pid_path = dir.join("app.pid");
    let mut service = single(&[("TESTAPP_PID_FILE", pid_path.to_str().unwrap())]);
    let addr = service.addr(T);
    let first = service.ready("process", 1, T);
    assert_eq!(first, service.pid(), "no master: the process serves itself");
    assert_eq!(pid_file(&pid_path), first);
    assert_eq!(pid_of(&addr), first);

    let socket: SocketAddr = addr.parse().unwrap();
    let loads: Vec<Load> = Mode::ALL
        .into_iter()
        .map(|mode| Load::start(socket, mode, 2, "/"))
        .collect();
    for load in &loads {
        assert!(load.wait_progress(30, T));
    }
    let mut current = first;
    for generation in 2..=11u64 {
        signal(current, Signal::SIGHUP);
        let next = service.ready("process", generation, T);
        assert!(
            wait_gone(current, T),
            "process {current} drained and exited"
        );
        assert_eq!(pid_file(&pid_path), next);
        assert_eq!(pid_of(&addr), next);
        for load in &loads {
            assert!(load.wait_progress(20, T));
        }
        current = next;
    }
    for (mode, load) in Mode::ALL.into_iter().zip(loads) {
        let report = load.stop();
        eprintln!("{}: {}", mode.name(), report.summary());
        assert!(report.ok > 0, "{}: {}", mode.name(), report.summary());
        report.assert_clean(mode.name());
    }
    // The first process exited 0 after handing over.
    assert!(service.wait_exit(T).success());

    signal(current, Signal::SIGTERM);
    assert!(wait_gone(current, T));
    service.wait_line("stopped", T);
    assert!(!pid_path.exists(), "the PID file is removed on stop");
    assert!(get(&addr, "/").is_err(), "the listener is closed");
}

#[test]
fn a_failed_successor_leaves_the_old_process_serving() {
    let Flagged {
        service,
        dir: _dir,
        flag,
        addr,
        first,
        load,
    } = single_under_load("single-fail");

    let cases = [
        ("exit", "exit status: 3 before it was ready"),
        ("panic", "main panicked: testapp was told to panic"),
        (
            "error",
            "main returned an error: \"testapp was told to fail\"",
        ),
        ("bad-addr", "port 99999 is out of range"),
    ];
    for (n, (mode, reason)) in cases.iter().enumerate() {
        std::fs::write(&flag, mode).unwrap();
        signal(first, Signal::SIGHUP);
        let line = service.wait_line_n("reload failed", n, T);
        assert!(line.contains(reason), "{mode}: {line}");
        assert!(
            line.contains(&format!("still serving with process 1 (pid {first})")),
            "{line}"
        );
        assert!(load.wait_progress(20, T));
        assert_eq!(pid_of(&addr), first);
    }
    std::fs::remove_file(&flag).unwrap();
    // graceful::reload() from a handler works in single mode too.
    assert_eq!(get(&addr, "/reload").unwrap().1, "reload requested\n");
    let second = service.ready("process", 2, T);
    assert!(wait_gone(first, T));
    assert_eq!(pid_of(&addr), second);
    let report = load.stop();
    report.assert_clean("load");
    signal(second, Signal::SIGTERM);
    assert!(wait_gone(second, T));
}

#[test]
fn stop_drains_in_flight_requests_like_a_worker() {
    let mut service = single(&[]);
    let addr = service.addr(T);
    service.ready("process", 1, T);
    let slow = {
        let addr = addr.clone();
        std::thread::spawn(move || get(&addr, "/slow?ms=700"))
    };
    service.wait_line("slow request started", T);
    service.signal(Signal::SIGTERM);
    let (status, body) = slow.join().unwrap().unwrap();
    assert_eq!((status, body.starts_with("slow 700 done")), (200, true));
    assert!(service.wait_exit(T).success());
    let line = service.wait_line("drained", T);
    assert!(line.contains("drained 1 connection(s)"), "{line}");
    assert!(line.contains(", 0 cut"), "{line}");
}

#[test]
fn systemd_hears_ready_reloading_and_the_successors_mainpid() {
    let notes = Notifications::bind("single-notify", T);
    let service = single(&[("NOTIFY_SOCKET", notes.address())]);
    let first = service.ready("process", 1, T);
    assert_eq!(
        notes.recv(),
        format!("READY=1\nSTATUS=serving with process 1 (pid {first})")
    );
    signal(first, Signal::SIGHUP);
    let reloading = notes.recv();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let second = service.ready("process", 2, T);
    assert_eq!(
        notes.recv(),
        format!("MAINPID={second}\nREADY=1\nSTATUS=reload finished: serving with pid {second}")
    );
    // The successor is the main PID now, and it was given NOTIFY_SOCKET.
    assert!(wait_gone(first, T));
    signal(second, Signal::SIGTERM);
    let stopping = notes.recv();
    assert!(
        stopping.starts_with("STOPPING=1\nEXTEND_TIMEOUT_USEC="),
        "{stopping}"
    );
    assert!(
        stopping.ends_with(&format!(
            "STATUS=stopping: draining process 2 (pid {second})"
        )),
        "{stopping}"
    );
    assert!(wait_gone(second, T));
    assert!(!is_alive(second));
}

#[test]
fn bad_mode_and_unwritable_pid_file_are_named_errors() {
    let mut service = Service::start(&testapp(), &["127.0.0.1:0"], &[("GRACEFUL_MODE", "solo")]);
    assert_eq!(service.wait_exit(T).code(), Some(1));
    let line = service.wait_line("GRACEFUL_MODE", T);
    assert!(
        line.contains("invalid GRACEFUL_MODE=\"solo\": use \"master\" or \"single\""),
        "{line}"
    );

    for mode in ["single", "master"] {
        let mut service = Service::start(
            &testapp(),
            &["127.0.0.1:0"],
            &[
                ("GRACEFUL_MODE", mode),
                ("TESTAPP_PID_FILE", "/nonexistent-dir/app.pid"),
            ],
        );
        assert_eq!(service.wait_exit(T).code(), Some(1), "{mode}");
        let line = service.wait_line("PID file", T);
        assert!(
            line.contains("cannot write the PID file \"/nonexistent-dir/app.pid\""),
            "{mode}: {line}"
        );
    }
}

/// A full disk at a reload: the PID file cannot name the successor. It was
/// left naming the process that drains and exits, whose PID the next
/// process to start may get, so that `kill -HUP $(cat app.pid)` would reach
/// a stranger; now it is removed, and the log says why. The disk is a
/// 64 KiB tmpfs in a mount namespace of the service's own (`unshare -m`),
/// filled by the test through `/proc/PID/root`.
#[test]
fn a_pid_file_that_cannot_follow_a_reload_on_a_full_disk_is_removed_not_left_stale() {
    let dir = temp_dir("single-full-disk");
    let disk = dir.join("disk");
    std::fs::create_dir(&disk).unwrap();
    let pid_path = disk.join("app.pid");
    let script = format!(
        "mount -t tmpfs -o size=64k graceful-test {disk} && exec {app} 127.0.0.1:0",
        disk = disk.display(),
        app = testapp().display()
    );
    let service = Service::start(
        &graceful_dev::tool("unshare"),
        &["--mount", "--propagation", "private", "sh", "-c", &script],
        &[
            ("GRACEFUL_MODE", "single"),
            ("TESTAPP_PID_FILE", pid_path.to_str().unwrap()),
        ],
    );
    let addr = service.addr(T);
    let first = service.ready("process", 1, T);
    assert_eq!(first, service.pid(), "unshare and sh exec the service");
    // The service's view of the disk, from outside its namespace.
    let seen = |pid: i32| {
        let relative = pid_path.strip_prefix("/").unwrap();
        PathBuf::from(format!("/proc/{pid}/root")).join(relative)
    };
    assert_eq!(pid_file(&seen(first)), first);
    assert!(!pid_path.exists(), "the tmpfs is the service's own");
    // Filled up: a write fails with ENOSPC, as on a full disk.
    let filler = seen(first).with_file_name("filler");
    let filled = std::fs::write(&filler, vec![0u8; 128 * 1024]).unwrap_err();
    assert_eq!(filled.raw_os_error(), Some(nix::libc::ENOSPC), "{filled}");

    signal(first, Signal::SIGHUP);
    let second = service.ready("process", 2, T);
    let line = service.wait_line("cannot write the PID file", T);
    assert!(line.contains("No space left on device"), "{line}");
    assert!(!seen(second).exists(), "the PID file still names {first}");
    assert!(
        line.contains(&format!(
            "removed it rather than leave it naming pid {first}, which is leaving (pid \
             {second} serves)"
        )),
        "{line}"
    );
    assert!(wait_gone(first, T));
    assert!(!seen(second).exists());
    assert_eq!(pid_of(&addr), second);
}

#[test]
fn as_pid_1_a_reload_is_refused_and_the_process_keeps_serving() {
    let service =
        Service::start_as_pid_1(&testapp(), &["127.0.0.1:0"], &[("GRACEFUL_MODE", "single")]);
    let addr = service.addr(T);
    assert_eq!(service.ready("process", 1, T), 1);
    assert_eq!(get(&addr, "/reload").unwrap().1, "reload requested\n");
    let line = service.wait_line("this process is PID 1", T);
    assert!(line.contains("still serving"), "{line}");
    assert_eq!(pid_of(&addr), 1);
    assert_eq!(
        service.count_lines("starting"),
        0,
        "no successor was started"
    );

    // unshare leaves SIGTERM to its child: send it to testapp's host PID.
    let inside = children_of(service.pid());
    assert_eq!(inside.len(), 1, "{inside:?}");
    signal(inside[0], Signal::SIGTERM);
    service.wait_line("stopped", T);
    assert!(wait_gone(inside[0], T));
}

#[test]
fn the_attribute_selects_single_mode_and_graceful_mode_overrides_it() {
    let program = PathBuf::from(env!("CARGO_BIN_EXE_single_attr"));
    let service = Service::start(&program, &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let pid = service.ready("process", 1, T);
    assert_eq!(pid, service.pid());
    assert_eq!(pid_of(&addr), pid);
    assert!(service.log_text().contains("(single-process mode)"));

    let service = Service::start(&program, &["127.0.0.1:0"], &[("GRACEFUL_MODE", "master")]);
    service.wait_line("master started", T);
    let addr = service.addr(T);
    let worker = service.ready_worker(1, T);
    assert_ne!(worker, service.pid());
    assert_eq!(pid_of(&addr), worker);
}

#[test]
fn reload_requests_during_a_reload_are_coalesced_and_passed_on() {
    let Flagged {
        service,
        dir: _dir,
        flag,
        addr,
        first,
        load,
    } = single_under_load("single-burst");
    // Successors now take 1 s to start: every signal of the burst arrives
    // while successor 2 starts.
    std::fs::write(&flag, "slow:1000").unwrap();
    signal(first, Signal::SIGHUP);
    service.wait_line("successor 2 (pid", T);
    for _ in 0..20 {
        signal(first, Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = service.ready("process", 2, T);
    // The 20 requests became one, passed on to process 2 (they may be for a
    // build newer than the one it runs), which reloads once more.
    let line = service.wait_line("passing a reload request on", T);
    assert!(
        line.contains(&format!("(pid {second}) as SIGHUP")),
        "{line}"
    );
    let third = service.ready("process", 3, T);
    assert!(wait_gone(first, T) && wait_gone(second, T));
    assert_eq!(
        service.count_lines("reload started"),
        2,
        "{}",
        service.log_text()
    );
    assert_eq!(service.count_lines("passing a reload request on"), 1);
    assert_eq!(pid_of(&addr), third);
    let report = load.stop();
    report.assert_clean("load");
    signal(third, Signal::SIGTERM);
    assert!(wait_gone(third, T));
}

#[test]
fn the_watchdog_is_kept_by_whichever_process_serves() {
    let notes = Notifications::bind("single-watchdog", T);
    // WATCHDOG_USEC=200 ms: a keep-alive every 100 ms.
    let service = single(&[
        ("NOTIFY_SOCKET", notes.address()),
        ("WATCHDOG_USEC", "200000"),
    ]);
    let first = service.ready("process", 1, T);
    let (ready, from) = notes.recv_with_pid();
    assert!(ready.starts_with("READY=1"), "{ready}");
    assert_eq!(from, first);
    assert_eq!(notes.recv_with_pid(), ("WATCHDOG=1".to_string(), first));

    signal(first, Signal::SIGHUP);
    let second = service.ready("process", 2, T);
    // Up to the handover the first process keeps the watchdog; from then on
    // only the successor does (systemd follows MAINPID=).
    let (mut handed_over, mut from_second, mut late_from_first) = (false, 0, 0);
    while from_second < 3 || !handed_over {
        let (message, from) = notes.recv_with_pid();
        if from == second {
            assert_eq!(message, "WATCHDOG=1");
            from_second += 1;
        } else if !handed_over {
            assert_eq!(from, first, "{message}");
            handed_over = message.starts_with(&format!("MAINPID={second}\n"));
        } else {
            // At most one keep-alive already on its way at the handover.
            assert_eq!((from, message.as_str()), (first, "WATCHDOG=1"));
            late_from_first += 1;
            assert!(late_from_first <= 1, "the old process kept sending");
        }
    }
    signal(second, Signal::SIGTERM);
    assert!(wait_gone(second, T));
}

#[test]
fn twenty_reloads_leak_no_descriptor() {
    let service = single(&[]);
    let addr = service.addr(T);
    let mut current = service.ready("process", 1, T);
    let mut counts = Vec::new();
    for generation in 2..=21u64 {
        signal(current, Signal::SIGHUP);
        let next = service.ready("process", generation, T);
        assert!(wait_gone(current, T));
        current = next;
        // Quiet: no connection is open while the count is taken.
        counts.push(fd_count(current));
    }
    assert_eq!(pid_of(&addr), current);
    // Every successor holds the same descriptors as the first successor did.
    assert!(counts.iter().all(|n| *n == counts[0]), "{counts:?}");
    signal(current, Signal::SIGTERM);
    assert!(wait_gone(current, T));
}
