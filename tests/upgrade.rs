//! The master's upgrade in place, with real processes: a new build's
//! options take effect with the same master PID, nothing is lost or leaked
//! across many upgrades, deadlines and waiting clients cross the exec, and
//! the master is kept (and says why) when the new build cannot take over.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use graceful_dev::http::get;
use graceful_dev::load::{Load, Mode};
use graceful_dev::process::Service;
use graceful_dev::procfs::{fd_count, wait_gone};
use graceful_dev::{
    built, copy_executable, graceful_command, run_bounded, temp_dir, testapp, write_executable,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use graceful_dev::TIMEOUT as T;

const UPGRADED: &str = "master upgraded in place";

/// Version 1 of a service (stop_timeout 1 s, reload on SIGHUP) replaced by
/// version 2 (stop_timeout 8 s, reload on SIGUSR2): after one SIGHUP the
/// master is version 2. A 4 s request in flight at the stop is answered,
/// where version 1's master would have killed its worker at 1.5 s.
#[test]
fn a_new_build_with_a_longer_stop_timeout_and_other_signals_takes_over_the_master() {
    let dir = temp_dir("upgrade-v1-v2");
    let app = dir.join("app");
    copy_executable(&built("upgrade_v1"), &app);
    let mut service = Service::start(&app, &["127.0.0.1:0"], &[]);
    let master = service.pid();
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    assert!(get(&addr, "/").unwrap().1.starts_with("v1 pid"));

    let staged = dir.join("app.new");
    copy_executable(&built("upgrade_v2"), &staged);
    std::fs::rename(&staged, &app).unwrap();
    service.signal(Signal::SIGHUP);
    service.ready_worker(2, T);
    let line = service.wait_line(UPGRADED, T);
    assert!(line.contains(&format!("(pid {master} kept)")), "{line}");
    service.wait_line("after the upgrade: stop_timeout 1s -> 8s", T);
    service.wait_line("after the upgrade: reload with SIGUSR2 (was SIGHUP)", T);
    assert!(wait_gone(first, T));
    assert!(get(&addr, "/").unwrap().1.starts_with("v2 pid"));

    // The new reload signal works; the old one is logged and ignored.
    service.signal(Signal::SIGUSR2);
    let third = service.ready_worker(3, T);
    service.wait_line_n(UPGRADED, 1, T);
    service.signal(Signal::SIGHUP);
    service.wait_line(
        "received SIGHUP, which is neither a reload nor a stop signal",
        T,
    );

    // A request in flight when the stop comes is answered under 8 s.
    let slow = std::thread::spawn({
        let addr = addr.clone();
        move || get(&addr, "/slow?ms=4000")
    });
    service.wait_line(&format!("v2: slow request started in pid {third}"), T);
    service.signal(Signal::SIGTERM);
    let (status, body) = slow
        .join()
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(status, 200);
    assert_eq!(body, format!("v2 slow 4000 done by {third}\n"));
    assert_eq!(
        service.wait_exit(T).code(),
        Some(0),
        "{}",
        service.log_text()
    );
    assert_eq!(service.count_lines("killing"), 0, "{}", service.log_text());
}

/// 20 reloads under keep-alive and new-connection load: each upgrades the
/// master, no request fails, the PID stays, and the master holds as many
/// descriptors after the last as after the first.
#[test]
fn twenty_upgrading_reloads_under_load_lose_nothing_and_leak_nothing() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let master = service.pid();
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    service.ready_worker(1, T);
    let keep_alive = Load::start(addr, Mode::KeepAlive, 4, "/");
    let fresh = Load::start(addr, Mode::NewConnection, 2, "/");
    let mut baseline = None;
    for generation in 2..=21u64 {
        service.signal(Signal::SIGHUP);
        service.ready_worker(generation, T);
        let n = generation as usize - 2;
        let line = service.wait_line_n(UPGRADED, n, T);
        assert!(line.contains(&format!("(pid {master} kept)")), "{line}");
        assert!(line.contains(&format!("(upgrade {}; ", n + 1)), "{line}");
        // The old worker is gone: one worker, one channel.
        service.wait_line_n("after draining", n, T);
        let fds = fd_count(master);
        match baseline {
            None => baseline = Some(fds),
            Some(first) => assert_eq!(fds, first, "descriptors after upgrade {}", n + 1),
        }
        assert!(keep_alive.wait_progress(20, T) && fresh.wait_progress(5, T));
    }
    keep_alive.stop().assert_clean("keep-alive load");
    fresh.stop().assert_clean("new-connection load");
    assert_eq!(
        service.count_lines("master kept"),
        0,
        "{}",
        service.log_text()
    );
}

/// Worker 1 is stopped (SIGSTOP) with a request open, so it cannot drain
/// by itself. Reload 1 tells it to stop (stop_timeout 2 s: killed 2.5 s
/// later); reload 2, 1.5 s later, upgrades the master again. The new image
/// kills worker 1 at the deadline the first image gave it, not 2.5 s after
/// its own start.
#[test]
fn a_draining_worker_survives_the_upgrade_and_is_cut_at_its_own_deadline() {
    let service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_STOP_TIMEOUT_MS", "2000")],
    );
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    let _slow = std::thread::spawn({
        let addr = addr.clone();
        move || get(&addr, "/slow?ms=60000")
    });
    service.wait_line(&format!("slow request started in pid {first}"), T);
    kill(Pid::from_raw(first), Signal::SIGSTOP).unwrap();
    service.signal(Signal::SIGHUP);
    service.ready_worker(2, T);
    let (_, told) = service.wait_line_n_at("reload finished", 0, T);
    service.wait_line_n(UPGRADED, 0, T);
    std::thread::sleep(Duration::from_millis(1500));
    service.signal(Signal::SIGHUP);
    service.ready_worker(3, T);
    service.wait_line_n(UPGRADED, 1, T);
    let (line, killed) = service.wait_line_n_at(
        &format!(
            "killing worker 1 (pid {first}) with SIGKILL: it was still running after stop_timeout"
        ),
        0,
        T,
    );
    let after = killed.duration_since(told);
    assert!(
        after >= Duration::from_millis(2400) && after < Duration::from_millis(3500),
        "{line}: {after:?} after it was told to stop (its deadline was 2.5 s)"
    );
    assert!(wait_gone(first, T));
}

/// testapp with a control socket in `dir` and `extra` in its environment,
/// reloaded once with `graceful reload`, which must report generation 2:
/// the service and its socket's path.
fn reloaded_by_the_command(dir: &std::path::Path, extra: (&str, &str)) -> (Service, String) {
    let socket = dir.join("control.sock").to_str().unwrap().to_string();
    let service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("GRACEFUL_CONTROL_SOCKET", socket.as_str()), extra],
    );
    service.ready_worker(1, T);
    let (code, out, err) = graceful_command(&["reload", &socket]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reloaded: generation 2 (pid "), "{out}");
    (service, socket)
}

/// `graceful status --json` of the master at `socket`.
fn status_json(socket: &str) -> serde_json::Value {
    let (code, out, err) = graceful_command(&["status", "--json", socket]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// A `graceful reload` client whose answer is due after the exec (the new
/// build's check takes 300 ms, during which the old worker stops accepting)
/// is answered by the new image.
#[test]
fn a_reload_command_waiting_across_the_upgrade_gets_its_answer() {
    let dir = temp_dir("upgrade-client");
    let (service, socket) = reloaded_by_the_command(&dir, ("TESTAPP_CHECK_DELAY_MS", "300"));
    // The log is read by a thread of its own: the line may come after the
    // answer.
    service.wait_line(UPGRADED, T);
    assert_eq!(service.count_lines(UPGRADED), 1, "{}", service.log_text());

    let status = status_json(&socket);
    assert_eq!(status["master"]["upgrades"], 1, "{status}");
    assert_eq!(status["master_pid"], service.pid(), "{status}");
    let (_, text, _) = graceful_command(&["status", &socket]);
    assert!(text.contains("1 upgrade(s) in place"), "{text}");
}

/// SIGHUP and SIGTERM sent while the master waits to re-execute (the new
/// build's check takes 500 ms, with the master's signals blocked) are
/// acted on by the new image: a reload starts, then the service stops.
/// (Pending at once, they are taken lowest number first.)
#[test]
fn a_sighup_and_a_sigterm_sent_during_the_exec_window_are_both_honoured() {
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_CHECK_DELAY_MS", "500")],
    );
    service.ready_worker(1, T);
    service.signal(Signal::SIGHUP);
    service.ready_worker(2, T);
    service.wait_line("reload finished", T);
    service.signal(Signal::SIGHUP);
    service.stop_cleanly(T);
    let lines = service.lines();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{}", lines.join("\n")))
    };
    let upgraded = at(UPGRADED);
    assert!(at("reload started (signal SIGHUP)") < upgraded);
    let second = lines
        .iter()
        .rposition(|l| l.contains("reload started (signal SIGHUP)"))
        .unwrap();
    assert!(second > upgraded, "{}", lines.join("\n"));
    assert!(at("stopping (SIGTERM)") > upgraded, "{}", lines.join("\n"));
}

/// A build written over the executable while the master checks the one
/// worker 2 runs (the check takes 1 s) is not what the master becomes: it
/// opens the executable once, then checks and executes that file, so the
/// broken build written in between (`exit 3`) is left for the next reload
/// to try. The master keeps its PID and serves, and a stop still works.
#[test]
fn a_build_written_while_the_master_checks_the_last_one_is_not_what_it_executes() {
    let dir = temp_dir("upgrade-race");
    let app = dir.join("app");
    copy_executable(&testapp(), &app);
    let started = dir.join("check-started");
    let service = Service::start(
        &app,
        &["127.0.0.1:0"],
        &[
            ("TESTAPP_CHECK_DELAY_MS", "1000"),
            ("TESTAPP_CHECK_STARTED", started.to_str().unwrap()),
        ],
    );
    let master = service.pid();
    let addr = service.addr(T);
    service.ready_worker(1, T);
    service.signal(Signal::SIGHUP);
    let second = service.ready_worker(2, T);
    let deadline = std::time::Instant::now() + T;
    while !started.exists() {
        assert!(std::time::Instant::now() < deadline, "no check started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let staged = dir.join("app.new");
    write_executable("#!/bin/sh\nexit 3\n", &staged);
    std::fs::rename(&staged, &app).unwrap();
    let line = service.wait_line(UPGRADED, T);
    assert!(line.contains(&format!("(pid {master} kept)")), "{line}");
    assert_eq!(get(&addr, "/pid").unwrap().1, format!("{second}\n"));
    // Named after its file, as an exec of the path names it (`ps`, `top`),
    // not after the descriptor it was executed from.
    let comm = std::fs::read_to_string(format!("/proc/{master}/comm")).unwrap();
    assert_eq!(comm, "app\n");
    broken_build_rolls_back(service, &addr, second);
}

/// The check role reads the state from the pipe it is given and refuses,
/// with the reason on stdout and a failing exit status, what it cannot take
/// over.
#[test]
fn the_check_role_refuses_a_state_it_cannot_read() {
    let check = |state: &str| {
        let script = "exec 3< <(printf '%s' \"$STATE\"); exec \"$APP\"";
        run_bounded(
            Command::new("bash")
                .args(["-c", script])
                .env("APP", testapp())
                .env("STATE", state)
                .env("GRACEFUL_ROLE", "check")
                .env("GRACEFUL_MASTER_STATE", "3"),
        )
    };
    let (code, out, _) = check("graceful-master-state 99\n{}");
    assert_ne!(code, 0);
    assert_eq!(
        out,
        "error state format 99 cannot be read by this build, which reads formats 1..=1\n"
    );
    let (code, out, _) = check("graceful-master-state 1\n{\"written_us\":1");
    assert_ne!(code, 0);
    assert!(out.starts_with("error malformed state: "), "{out}");
    let (code, out, _) = check("#!/bin/sh\n");
    assert_ne!(code, 0);
    assert!(
        out.starts_with("error not a graceful master state"),
        "{out}"
    );
    // Not a pipe: refused before anything reads it.
    let (code, _, err) = run_bounded(
        Command::new(testapp())
            .env("GRACEFUL_ROLE", "check")
            .env("GRACEFUL_MASTER_STATE", "1"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("GRACEFUL_MASTER_STATE"), "{err}");
}

/// A broken build (`exit 3`) is written to the path while the new worker,
/// started from the build before it, is still starting: the master
/// becomes the worker's build, the very file the worker runs, not what the
/// path holds by then. The next reload tries the broken build and rolls
/// it back.
#[test]
fn a_build_written_while_the_new_worker_starts_waits_for_the_next_reload() {
    let dir = temp_dir("upgrade-worker-build");
    let (service, app) = reloading_with_a_slow_worker(&dir);
    let (master, addr) = (service.pid(), service.addr(T));
    let staged = dir.join("app.new");
    write_executable("#!/bin/sh\nexit 3\n", &staged);
    std::fs::rename(&staged, &app).unwrap();
    let second = service.ready_worker(2, T);
    let line = service.wait_line(UPGRADED, T);
    assert!(line.contains(&format!("(pid {master} kept)")), "{line}");
    assert_eq!(
        same_executable(master, second),
        Ok(true),
        "the master runs another file than worker 2"
    );
    assert_eq!(get(&addr, "/pid").unwrap().1, format!("{second}\n"));
    std::fs::remove_file(dir.join("slow")).unwrap();
    broken_build_rolls_back(service, &addr, second);
}

/// The next reload runs the broken build (`exit 3`) now at the path, and
/// rolls it back: worker `second` still serves at `addr`. Then a stop ends
/// the service with status 0.
fn broken_build_rolls_back(mut service: Service, addr: &str, second: i32) {
    service.signal(Signal::SIGHUP);
    let failed = service.wait_line("reload failed", T);
    assert!(failed.contains("exited with status 3"), "{failed}");
    assert_eq!(get(addr, "/pid").unwrap().1, format!("{second}\n"));
    service.stop_cleanly(T);
}

/// A copy of testapp at `dir`/app, serving, then reloaded once: returns
/// once worker 2 has started (its exec done), which holds back its
/// readiness for a second (`dir`/slow, removed to start the next one at
/// once), and the copy's path.
fn reloading_with_a_slow_worker(dir: &std::path::Path) -> (Service, std::path::PathBuf) {
    let app = dir.join("app");
    copy_executable(&testapp(), &app);
    let flag = dir.join("slow");
    let service = Service::start(
        &app,
        &["127.0.0.1:0"],
        &[("TESTAPP_FAIL_IF_EXISTS", flag.to_str().unwrap())],
    );
    service.ready_worker(1, T);
    std::fs::write(&flag, "slow:1000").unwrap();
    service.signal(Signal::SIGHUP);
    service.wait_line("worker 2 (pid", T);
    (service, app)
}

/// Whether processes `a` and `b` run the same executable file.
fn same_executable(a: i32, b: i32) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let file = |pid: i32| {
        std::fs::metadata(format!("/proc/{pid}/exe"))
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| format!("/proc/{pid}/exe: {e}"))
    };
    Ok(file(a)? == file(b)?)
}

/// The executable is deleted while the new worker starts (it was exec'd
/// already): the master still becomes that worker's build, from the file
/// the worker runs, and a stop still works.
#[test]
fn a_deleted_executable_is_still_the_build_the_master_becomes() {
    let dir = temp_dir("upgrade-deleted");
    let (mut service, app) = reloading_with_a_slow_worker(&dir);
    let (master, addr) = (service.pid(), service.addr(T));
    std::fs::remove_file(&app).unwrap();
    let second = service.ready_worker(2, T);
    let line = service.wait_line(UPGRADED, T);
    assert!(line.contains(&format!("(pid {master} kept)")), "{line}");
    assert_eq!(same_executable(master, second), Ok(true));
    let image = std::fs::read_link(format!("/proc/{master}/exe")).unwrap();
    assert!(
        image.to_string_lossy().ends_with(" (deleted)"),
        "{}",
        image.display()
    );
    service.wait_line("after draining", T);
    assert_eq!(get(&addr, "/pid").unwrap().1, format!("{second}\n"));
    service.stop_cleanly(T);
}

/// `GRACEFUL_UPGRADE_MASTER=0` keeps the master's image across a reload
/// (the new worker serves; the master is not re-executed), and a value that
/// is neither on nor off stops the start, naming the variable.
#[test]
fn graceful_upgrade_master_turns_the_upgrade_off_or_names_a_bad_value() {
    let dir = temp_dir("upgrade-off");
    let (mut service, socket) = reloaded_by_the_command(&dir, ("GRACEFUL_UPGRADE_MASTER", "0"));
    // With the upgrade on, the master re-executes before it answers (see
    // the test above), so the count would be 1 here.
    let status = status_json(&socket);
    assert_eq!(status["master"]["upgrades"], 0, "{status}");
    assert_eq!(status["serving"]["generation"], 2, "{status}");
    service.stop_cleanly(T);
    assert_eq!(service.count_lines(UPGRADED), 0, "{}", service.log_text());

    let mut refused = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("GRACEFUL_UPGRADE_MASTER", "yes")],
    );
    assert_eq!(refused.wait_exit(T).code(), Some(1));
    refused.wait_line(
        "invalid option upgrade_master: GRACEFUL_UPGRADE_MASTER=\"yes\" is not 1 or 0 (true or false)",
        T,
    );
}
