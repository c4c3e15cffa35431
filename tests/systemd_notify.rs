//! systemd `Type=notify`: the master sends the exact message sequence to a
//! NOTIFY_SOCKET datagram listener that the test creates (systemd itself is
//! never started).

use graceful_dev::notify::Notifications;
use graceful_dev::process::Service;
use graceful_dev::temp_dir;
use graceful_dev::testapp;
use nix::sys::signal::Signal;

use graceful_dev::TIMEOUT as T;

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

#[test]
fn notify_sequence_over_start_reload_failed_reload_and_stop() {
    let notes = Notifications::bind("sequence-notify", T);
    let dir = temp_dir("sequence");
    let flag = dir.join("fail");
    // The build each worker reports, named in its status.
    let build = dir.join("build");
    std::fs::write(&build, "app 1.0").unwrap();
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[
            ("NOTIFY_SOCKET", notes.address()),
            ("TESTAPP_FAIL_IF_EXISTS", flag.to_str().unwrap()),
            ("TESTAPP_BUILD_FILE", build.to_str().unwrap()),
        ],
    );
    let w1 = service.ready_worker(1, T);
    assert_eq!(
        notes.recv(),
        format!("READY=1\nSTATUS=serving app 1.0 with worker 1 (pid {w1})")
    );
    // Workers are not the main PID: they never see NOTIFY_SOCKET.
    let environ = std::fs::read(format!("/proc/{w1}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains("NOTIFY_SOCKET"));

    // Reload, into a new build.
    std::fs::write(&build, "app 2.0").unwrap();
    let before = monotonic_usec();
    service.signal(Signal::SIGHUP);
    let reloading = notes.recv();
    let after = monotonic_usec();
    let lines: Vec<&str> = reloading.lines().collect();
    assert_eq!(lines.len(), 3, "{reloading}");
    assert_eq!(lines[0], "RELOADING=1");
    let usec: u64 = lines[1]
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        before <= usec && usec <= after,
        "MONOTONIC_USEC={usec} not within [{before}, {after}]"
    );
    assert_eq!(
        lines[2],
        "STATUS=reloading (signal SIGHUP): starting worker 2"
    );
    let w2 = service.ready_worker(2, T);
    assert_eq!(
        notes.recv(),
        format!("READY=1\nSTATUS=reload finished: serving app 2.0 with worker 2 (pid {w2})")
    );
    // What follows is sent by the master's new image, to the same socket,
    // from the same PID.
    let upgraded = service.wait_line("master upgraded in place", T);
    assert!(
        upgraded.contains(&format!("(pid {} kept)", service.pid())),
        "{upgraded}"
    );
    // Worker 1 has drained and exited, so that the stop below finds exactly
    // one worker to drain (on a busy machine it may otherwise still be there).
    service.wait_line("after draining", T);

    // A failed reload: RELOADING, then READY again with the reason.
    std::fs::write(&flag, "exit").unwrap();
    service.signal(Signal::SIGHUP);
    let reloading = notes.recv();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(
        reloading.ends_with("\nSTATUS=reloading (signal SIGHUP): starting worker 3"),
        "{reloading}"
    );
    let failed = notes.recv();
    assert!(
        failed.starts_with("READY=1\nSTATUS=reload failed: worker 3 (pid "),
        "{failed}"
    );
    assert!(
        failed.ends_with(&format!(
            ") exited with status 3 before it was ready; still serving with worker 2 (pid {w2})"
        )),
        "{failed}"
    );

    // The serving worker crashes: no worker serves until the next is ready.
    std::fs::remove_file(&flag).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(w2), Signal::SIGKILL).unwrap();
    assert_eq!(
        notes.recv(),
        format!(
            "STATUS=no worker is serving (worker 2 (pid {w2}) was killed by SIGKILL); \
             starting a new one in 100 ms"
        )
    );
    let w4 = service.ready_worker(4, T);
    assert_eq!(
        notes.recv(),
        format!("READY=1\nSTATUS=serving app 2.0 with worker 4 (pid {w4})")
    );

    // Stop.
    service.signal(Signal::SIGTERM);
    assert_eq!(
        notes.recv(),
        "STOPPING=1\nEXTEND_TIMEOUT_USEC=21500000\nSTATUS=stopping (SIGTERM): draining 1 worker(s)"
    );
    assert_eq!(service.wait_exit(T).code(), Some(0));
    drop(service);
}

#[test]
fn abstract_notify_socket() {
    let notes = Notifications::bind_abstract(T);
    assert!(notes.address().starts_with('@'));
    let service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("NOTIFY_SOCKET", notes.address())],
    );
    let w1 = service.ready_worker(1, T);
    assert_eq!(
        notes.recv(),
        format!("READY=1\nSTATUS=serving with worker 1 (pid {w1})")
    );
}

#[test]
fn watchdog_keep_alives_while_a_worker_serves() {
    let notes = Notifications::bind("watchdog", T);
    // WATCHDOG_USEC=200 ms: a keep-alive every 100 ms.
    let service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[
            ("NOTIFY_SOCKET", notes.address()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    service.ready_worker(1, T);
    assert!(notes.recv().starts_with("READY=1"));
    for _ in 0..3 {
        assert_eq!(notes.recv(), "WATCHDOG=1");
    }
    drop(service);
}
