//! What an operator and a deploy script are told: the `graceful reload`
//! command and its outcome, `graceful status`, `reload_and_wait()` from
//! code, against real services and real failures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use graceful_dev::http::{get, pid_of};
use graceful_dev::process::Service;
use graceful_dev::procfs::wait_gone;
use graceful_dev::{
    copy_executable, graceful_command, run_bounded, temp_dir, testapp, TempDir, TIMEOUT as T,
};

/// A service whose executable is a copy in its own directory (so a test may
/// replace it with a broken build), with a control socket there.
struct Deployed {
    /// Removed when this is dropped.
    dir: TempDir,
    exe: PathBuf,
    socket: String,
    flag: PathBuf,
}

impl Deployed {
    fn new(name: &str) -> Deployed {
        let dir = temp_dir(&format!("operators-{name}"));
        let exe = dir.join("app");
        copy_executable(&testapp(), &exe);
        Deployed {
            socket: dir.join("control.sock").to_str().unwrap().to_string(),
            flag: dir.join("fail"),
            exe,
            dir,
        }
    }

    fn start(&self, extra: &[(&str, &str)]) -> Service {
        let mut envs = vec![
            ("GRACEFUL_CONTROL_SOCKET", self.socket.as_str()),
            ("TESTAPP_FAIL_IF_EXISTS", self.flag.to_str().unwrap()),
        ];
        envs.extend_from_slice(extra);
        Service::start(&self.exe, &["127.0.0.1:0"], &envs)
    }

    /// Puts `content` in place of the executable, as a deploy does: written
    /// beside it, then renamed over it.
    fn install(&self, content: &[u8]) {
        let (written, next) = (self.dir.join("app.written"), self.dir.join("app.next"));
        std::fs::write(&written, content).unwrap();
        copy_executable(&written, &next);
        std::fs::rename(&next, &self.exe).unwrap();
    }

    fn reload(&self) -> (i32, String, String) {
        graceful_command(&["reload", &self.socket])
    }

    fn status_json(&self) -> serde_json::Value {
        let (code, out, err) = graceful_command(&["status", "--json", &self.socket]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(out.lines().count(), 1, "{out}");
        serde_json::from_str(&out).unwrap()
    }
}

/// The PID in `reloaded: generation N (pid P) is serving...`.
fn reported_pid(out: &str) -> i32 {
    let rest = out.split("(pid ").nth(1).unwrap_or_else(|| panic!("{out}"));
    rest.split(')').next().unwrap().parse().unwrap()
}

/// A deploy script's smoke test runs right after `graceful reload` returns:
/// the answer waits until the old worker no longer accepts, so every new
/// connection from then on reaches the version it reported.
#[test]
fn once_the_reload_command_returns_every_new_connection_reaches_the_new_worker() {
    let app = Deployed::new("smoke");
    let service = app.start(&[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);
    for generation in 2..=11 {
        let (code, out, err) = app.reload();
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.starts_with(&format!("reloaded: generation {generation} ")),
            "{out}"
        );
        let serving = reported_pid(&out);
        for n in 0..10 {
            assert_eq!(
                pid_of(&addr),
                serving,
                "connection {n} after reload {generation} reached an old worker"
            );
        }
    }
}

#[test]
fn the_reload_command_reports_success_and_each_kind_of_failure() {
    let app = Deployed::new("outcomes");
    let service = app.start(&[]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);

    // A good reload: exit 0, the new generation and the PID that serves.
    let (code, out, err) = app.reload();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reloaded: generation 2 (pid "), "{out}");
    let serving = reported_pid(&out);
    assert_eq!(pid_of(&addr), serving);
    assert!(wait_gone(first, T));

    // Each failure: exit 1, the reason the master logged, the old worker
    // named as still serving, and it still serves.
    let still = format!("still serving with worker 2 (pid {serving})");
    let cases: [(&str, &str); 4] = [
        ("panic", "main panicked: testapp was told to panic"),
        (
            "error",
            "main returned an error: \"testapp was told to fail\"",
        ),
        (
            "bad-addr",
            "invalid address \"127.0.0.1:99999\": port 99999 is out of range",
        ),
        ("hang", "was not ready within the 5s ready_timeout"),
    ];
    for (mode, reason) in cases {
        std::fs::write(&app.flag, mode).unwrap();
        let (code, out, err) = app.reload();
        assert_eq!(code, 1, "{mode}: {out}{err}");
        assert!(out.is_empty(), "{mode}: {out}");
        assert!(
            err.starts_with("graceful: reload failed: "),
            "{mode}: {err}"
        );
        assert!(err.contains(reason), "{mode}: {err}");
        assert!(err.contains(&still), "{mode}: {err}");
        assert_eq!(pid_of(&addr), serving, "{mode}");
    }
    std::fs::remove_file(&app.flag).unwrap();

    // A build that cannot even start: the command is not the service's
    // binary, so the failure is still reported.
    app.install(b"#!/bin/sh\necho 'broken build: missing libfoo.so' >&2\nexit 1\n");
    let (code, _, err) = app.reload();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("exited with status 1 before it was ready"),
        "{err}"
    );
    assert!(err.contains(&still), "{err}");
    assert!(service
        .log_text()
        .contains("broken build: missing libfoo.so"));

    // The same failure as one line of JSON, for a deploy script.
    let (code, out, _) = graceful_command(&["reload", "--json", &app.socket]);
    assert_eq!(code, 1);
    let failed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(failed["ok"], false);
    assert!(
        failed["reason"].as_str().unwrap().contains(&still),
        "{failed}"
    );

    // The fixed build is deployed: the next reload runs it.
    app.install(&std::fs::read(testapp()).unwrap());
    let (code, out, err) = graceful_command(&["reload", "--json", &app.socket]);
    assert_eq!(code, 0, "{out}{err}");
    let reloaded: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reloaded["ok"], true);
    assert_eq!(reloaded["generation"], 9);
    assert_eq!(reloaded["pid"], pid_of(&addr));
    let (code, out, err) = app.reload();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(pid_of(&addr), reported_pid(&out));

    // The status tells the last outcome, and the log says who asked.
    let status = app.status_json();
    assert_eq!(status["last_reload"]["ok"], true);
    assert_eq!(status["serving"]["pid"], reported_pid(&out));
    assert!(service
        .log_text()
        .contains("reload started (graceful reload command)"));
}

#[test]
fn concurrent_reload_commands_are_each_told_the_reload_that_covered_them() {
    let app = Deployed::new("concurrent");
    let service = app.start(&[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);
    // Worker 2 takes three seconds to start: requests made meanwhile queue.
    std::fs::write(&app.flag, "slow:3000").unwrap();
    let first = {
        let socket = app.socket.clone();
        std::thread::spawn(move || graceful_command(&["reload", &socket]))
    };
    service.wait_line("worker 2 (pid", T);
    let queued: Vec<_> = (0..4)
        .map(|_| {
            let socket = app.socket.clone();
            std::thread::spawn(move || graceful_command(&["reload", &socket]))
        })
        .collect();
    let (code, out, err) = first.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reloaded: generation 2 "), "{out}");
    let mut pids = Vec::new();
    for waiter in queued {
        let (code, out, err) = waiter.join().unwrap();
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.starts_with("reloaded: generation 3 "), "{out}");
        pids.push(reported_pid(&out));
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "one reload covered them all: {pids:?}");
    assert_eq!(pid_of(&addr), pids[0]);
    assert_eq!(service.count_lines("reload started"), 2);
}

#[test]
fn the_reload_command_fails_clearly_when_it_cannot_ask() {
    let dir = temp_dir("operators-cannot-ask");
    // No socket at all.
    let missing = dir.join("missing.sock");
    let (code, _, err) = graceful_command(&["reload", missing.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such socket"), "{err}");
    assert!(err.contains("missing.sock"), "{err}");
    // A socket left by a service that is not running.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (code, _, err) = graceful_command(&["status", stale.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the service is not running"), "{err}");
    // The PID file given by mistake: not a service down.
    let pid_file = dir.join("app.pid");
    std::fs::write(&pid_file, "123\n").unwrap();
    let (code, _, err) = graceful_command(&["reload", pid_file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a socket but a regular file"), "{err}");
    // No socket named, and none in the environment.
    let (code, _, err) = run_bounded(
        std::process::Command::new(graceful_dev::built("ctl"))
            .arg("reload")
            .env_remove("GRACEFUL_CONTROL_SOCKET"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("GRACEFUL_CONTROL_SOCKET"), "{err}");
    // An unknown command.
    let (code, _, err) = graceful_command(&["restart", stale.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown command \"restart\""), "{err}");
    // An option the command does not have, named as such.
    let (code, _, err) = graceful_command(&["metrics", "--json", stale.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("graceful metrics has no --json: the metrics are Prometheus text"),
        "{err}"
    );
}

/// Where the `graceful` command's output goes in the test below.
enum Sink {
    /// A pipe whose reader has gone, as `graceful status | head -1` leaves.
    ClosedPipe,
    /// A full disk: every write fails with ENOSPC.
    DevFull,
    /// A pipe the test reads.
    Piped,
}

impl Sink {
    fn stdio(&self) -> std::process::Stdio {
        match self {
            Sink::ClosedPipe => {
                let (reader, writer) = nix::unistd::pipe().unwrap();
                drop(reader);
                writer.into()
            }
            Sink::DevFull => std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap()
                .into(),
            Sink::Piped => std::process::Stdio::piped(),
        }
    }
}

/// Runs `graceful ARGS` with its standard output into `out` and its
/// standard error into `err`: its exit code and standard error (empty
/// unless piped).
fn ctl_into(args: &[&str], out: Sink, err: Sink) -> (i32, String) {
    let (code, _, text) = graceful_dev::run_bounded_into(
        std::process::Command::new(graceful_dev::built("ctl"))
            .args(args)
            .stdout(out.stdio())
            .stderr(err.stdio()),
    );
    (code, text)
}

/// `graceful status | head -1`, a full disk, a closed standard error: the
/// command never panics (Rust's `println!` does on a failed write), and a
/// deploy script still reads a reload's outcome from the exit status.
#[test]
fn an_answer_that_cannot_be_written_leaves_the_outcome_in_the_exit_status() {
    let app = Deployed::new("unwritable");
    let service = app.start(&[]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    let socket = app.socket.as_str();

    // The reader has gone: it had what it wanted, so nothing is said.
    for args in [
        &["status", socket][..],
        &["status", "--json", socket],
        &["metrics", socket],
        &["--help"],
    ] {
        let (code, err) = ctl_into(args, Sink::ClosedPipe, Sink::Piped);
        assert_eq!((code, err.as_str()), (0, ""), "{args:?}");
    }
    // A full disk: the text the command is for was not written.
    let (code, err) = ctl_into(&["status", socket], Sink::DevFull, Sink::Piped);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err,
        "graceful: cannot write the answer to standard output: No space left on device (os error 28)\n"
    );

    // A reload whose answer cannot be written still happened, and says so
    // by its exit status.
    let (code, err) = ctl_into(&["reload", socket], Sink::DevFull, Sink::Piped);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(wait_gone(first, T));
    let second = pid_of(&addr);
    assert_ne!(second, first);
    let (code, err) = ctl_into(&["reload", "--json", socket], Sink::ClosedPipe, Sink::Piped);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(wait_gone(second, T));

    // A failed reload whose message cannot be written is still exit 1, and
    // the worker before it still serves.
    let serving = pid_of(&addr);
    std::fs::write(&app.flag, "error").unwrap();
    for (out, err) in [
        (Sink::Piped, Sink::DevFull),
        (Sink::Piped, Sink::ClosedPipe),
        (Sink::DevFull, Sink::DevFull),
    ] {
        assert_eq!(ctl_into(&["reload", socket], out, err).0, 1);
    }
    let (code, _) = ctl_into(&["reload", "--json", socket], Sink::DevFull, Sink::DevFull);
    assert_eq!(code, 1);
    assert_eq!(pid_of(&addr), serving);
}

/// Runs the `graceful` command as the unprivileged user `nobody`.
fn as_nobody(ctl: &Path, args: &[&str]) -> (i32, String, String) {
    run_bounded(
        std::process::Command::new(graceful_dev::tool("setpriv"))
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(ctl)
            .args(args),
    )
}

#[test]
fn only_the_services_user_or_root_may_use_the_control_socket() {
    let app = Deployed::new("permissions");
    let service = app.start(&[]);
    service.ready_worker(1, T);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&app.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is owner-only");
    // A copy of the command that `nobody` may run, in a directory it may
    // enter.
    std::fs::set_permissions(&app.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ctl = app.dir.join("graceful");
    copy_executable(&graceful_dev::built("ctl"), &ctl);
    let (code, _, err) = as_nobody(&ctl, &["reload", &app.socket]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    // Even if the file is opened to everyone, the master checks who the
    // peer is.
    std::fs::set_permissions(&app.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _, err) = as_nobody(&ctl, &["reload", &app.socket]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("uid 65534 is neither the service's user (0) nor root"),
        "{err}"
    );
    assert_eq!(service.count_lines("reload started"), 0);
    assert!(service
        .log_text()
        .contains("control socket: refused a client of uid 65534"));
}

#[test]
fn a_hostile_file_or_a_running_service_at_the_socket_path_is_an_error() {
    let app = Deployed::new("hostile-path");
    // A regular file where the socket should be: never replaced.
    std::fs::write(&app.socket, "precious").unwrap();
    let mut service = app.start(&[]);
    let status = service.wait_exit(T);
    assert_eq!(status.code(), Some(1));
    let line = service.wait_line(&format!("control socket {:?}", app.socket), T);
    assert!(line.contains("not a socket"), "{line}");
    assert_eq!(std::fs::read_to_string(&app.socket).unwrap(), "precious");
    std::fs::remove_file(&app.socket).unwrap();

    // A socket another master answers on: the second refuses to start.
    let running = app.start(&[]);
    running.ready_worker(1, T);
    let mut second = app.start(&[]);
    assert_eq!(second.wait_exit(T).code(), Some(1));
    let line = second.wait_line(&format!("control socket {:?}", app.socket), T);
    assert!(line.contains("in use"), "{line}");
    // The first still answers, and its socket was not taken away.
    assert_eq!(app.status_json()["master_pid"], running.pid());
}

#[test]
fn silent_garbage_or_too_many_clients_are_refused_and_the_master_goes_on() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let app = Deployed::new("silent");
    let service = app.start(&[]);
    service.ready_worker(1, T);
    let answer = |mut client: UnixStream| {
        client.set_read_timeout(Some(T)).unwrap();
        let mut answer = String::new();
        let _ = client.read_to_string(&mut answer);
        answer
    };
    // Clients that connect and say nothing: the master does not wait on
    // them; one more than it holds at once is refused at once.
    let silent: Vec<_> = (0..16)
        .map(|_| UnixStream::connect(&app.socket).unwrap())
        .collect();
    let extra = UnixStream::connect(&app.socket).unwrap();
    assert_eq!(
        answer(extra),
        "error too many control connections (16 open); try again\n"
    );
    let (code, _, err) = graceful_command(&["status", &app.socket]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("too many control connections"), "{err}");
    // The silent ones are closed after 5 s, with a line that says why.
    for client in silent {
        assert_eq!(answer(client), "error no request within 5s\n");
    }
    // Garbage, or a line too long, gets an error line naming the fault.
    let mut garbage = UnixStream::connect(&app.socket).unwrap();
    garbage.write_all(b"shutdown now please\n").unwrap();
    assert!(
        answer(garbage).contains("unknown request \"shutdown now please\""),
        "garbage"
    );
    let mut long = UnixStream::connect(&app.socket).unwrap();
    let _ = long.write_all(&[b'x'; 1000]);
    assert!(answer(long).contains("at most 64 bytes"));
    // Through it all, the master served and answers.
    let (code, out, err) = graceful_command(&["status", &app.socket]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("serving:     worker 1"), "{out}");
}

#[test]
fn the_status_shows_draining_workers_with_their_open_connections() {
    let app = Deployed::new("status");
    let service = app.start(&[]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    let before = app.status_json();
    assert_eq!(before["mode"], "master");
    assert_eq!(before["master_pid"], service.pid());
    assert_eq!(before["state"], "serving");
    assert_eq!(before["serving"]["generation"], 1);
    assert_eq!(before["serving"]["pid"], first);
    assert_eq!(before["draining"], serde_json::json!([]));
    assert_eq!(before["last_reload"], serde_json::Value::Null);
    assert_eq!(before["listeners"], serde_json::json!([addr]));

    // Three slow requests hold worker 1 through a reload.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || get(&addr, "/slow?ms=4000"))
        })
        .collect();
    let deadline = std::time::Instant::now() + T;
    while app.status_json()["serving"]["connections"] != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the requests never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, out, err) = app.reload();
    assert_eq!(code, 0, "{out}{err}");
    let during = app.status_json();
    assert_eq!(during["serving"]["generation"], 2);
    assert_eq!(during["serving"]["pid"], reported_pid(&out));
    assert_eq!(
        during["draining"],
        serde_json::json!([{
            "generation": 1,
            "pid": first,
            "since": during["draining"][0]["since"],
            "connections": 3,
            "version": null,
        }])
    );
    assert_eq!(during["last_reload"]["ok"], true);
    assert_eq!(during["last_reload"]["generation"], 2);
    let (code, text, _) = graceful_command(&["status", &app.socket]);
    assert_eq!(code, 0);
    assert!(
        text.contains(&format!("draining:    worker 1 (pid {first}) since ")),
        "{text}"
    );
    assert!(text.contains("3 open connections"), "{text}");
    assert!(text.contains("last reload: ok at "), "{text}");
    for request in slow {
        assert_eq!(request.join().unwrap().unwrap().0, 200);
    }
    assert!(wait_gone(first, T));
}

#[test]
fn reload_and_wait_resolves_to_the_outcome_in_master_mode() {
    let app = Deployed::new("from-code");
    let service = app.start(&[]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    // The old worker asks, is told, and only then drains.
    let (status, body) = get(&addr, "/reload-and-wait").unwrap();
    assert_eq!(status, 200);
    let second = service.ready_worker(2, T);
    assert_eq!(
        body,
        format!(
            "reloaded generation 2 pid {second}: generation 2 (pid {second}) is serving; it \
             was ready in {} ms\n",
            body.split("ready in ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
        )
    );
    assert!(wait_gone(first, T));
    std::fs::write(&app.flag, "error").unwrap();
    let (_, body) = get(&addr, "/reload-and-wait").unwrap();
    assert!(body.starts_with("not reloaded: reload failed: "), "{body}");
    assert!(body.contains("testapp was told to fail"), "{body}");
    assert!(
        body.contains(&format!("still serving with worker 2 (pid {second})")),
        "{body}"
    );
}

#[test]
fn reload_and_wait_resolves_to_the_outcome_in_single_mode() {
    let dir = temp_dir("operators-single");
    let flag = dir.join("fail");
    let pid_file = dir.join("app.pid");
    let service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[
            ("GRACEFUL_MODE", "single"),
            ("TESTAPP_FAIL_IF_EXISTS", flag.to_str().unwrap()),
            ("TESTAPP_PID_FILE", pid_file.to_str().unwrap()),
        ],
    );
    let addr = service.addr(T);
    service.ready("process", 1, T);
    std::fs::write(&flag, "panic").unwrap();
    let (_, body) = get(&addr, "/reload-and-wait").unwrap();
    assert!(body.starts_with("not reloaded: reload failed: "), "{body}");
    assert!(body.contains("main panicked"), "{body}");
    assert_eq!(pid_of(&addr), service.pid());
    std::fs::remove_file(&flag).unwrap();
    let (_, body) = get(&addr, "/reload-and-wait").unwrap();
    assert!(body.starts_with("reloaded generation 2 pid "), "{body}");
    let successor: i32 = body
        .trim_start_matches("reloaded generation 2 pid ")
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The PID file names the successor by the time the reload is told done:
    // a deploy script that waited for the outcome and reads it next signals
    // the process that serves, not the one leaving.
    assert!(
        body.ends_with(&format!("; the PID file says \"{successor}\\n\"\n")),
        "{body}"
    );
    // The process that asked is told first, and drains next: until it has
    // stopped accepting it may still take a connection.
    assert!(wait_gone(service.pid(), T), "the first process drained");
    assert_eq!(pid_of(&addr), successor);
}

#[test]
fn control_socket_and_watchdog_are_refused_in_single_mode() {
    let dir = temp_dir("operators-single-refused");
    let socket = dir.join("c.sock");
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[
            ("GRACEFUL_MODE", "single"),
            ("GRACEFUL_CONTROL_SOCKET", socket.to_str().unwrap()),
        ],
    );
    assert_eq!(service.wait_exit(T).code(), Some(1));
    service.wait_line("invalid option control_socket: it needs master mode", T);
}

#[test]
fn a_control_socket_path_too_long_for_a_socket_address_is_told_with_its_length_and_the_limit() {
    let app = Deployed::new("long-path");
    let dir = app.dir.to_str().unwrap();
    // 120 bytes: more than the 107 a Unix socket's address holds on Linux.
    let long = format!("{dir}/{}", "s".repeat(119 - dir.len()));
    assert_eq!(long.len(), 120);
    let limit = "the socket path is 120 bytes long; a Unix socket's address holds at most 107";
    let mut service = app.start(&[("GRACEFUL_CONTROL_SOCKET", &long)]);
    assert_eq!(service.wait_exit(T).code(), Some(1));
    let line = service.wait_line(&format!("control socket {long:?}"), T);
    assert!(line.contains(limit), "{line}");
    for command in ["reload", "status"] {
        let (code, _, err) = graceful_command(&[command, &long]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&format!("control socket {long:?}")), "{err}");
        assert!(err.contains(limit), "{err}");
    }
}

/// A deploy script can tell which build serves: each worker reports its
/// `version`, and the reload's answer, the status (carried across the
/// master's upgrade in place) and the log name it.
#[test]
fn the_reload_answer_the_status_and_the_log_name_the_build_that_serves() {
    let deployed = Deployed::new("build");
    let build = deployed.dir.join("build");
    std::fs::write(&build, "app 1.0\n").unwrap();
    let service = deployed.start(&[("TESTAPP_BUILD_FILE", build.to_str().unwrap())]);
    let first = service.ready_worker(1, T);
    let ready = service.wait_line(&format!("worker 1 (pid {first}) ready in "), T);
    assert!(ready.ends_with(" ms and serving app 1.0"), "{ready}");
    let status = deployed.status_json();
    assert_eq!(status["serving"]["version"], "app 1.0", "{status}");

    // The new build.
    std::fs::write(&build, "app 2.0\n").unwrap();
    let (code, out, err) = deployed.reload();
    assert_eq!(code, 0, "{out}{err}");
    let second = reported_pid(&out);
    assert!(
        out.starts_with(&format!(
            "reloaded: generation 2 (pid {second}) is serving app 2.0; it was ready in "
        )),
        "{out}"
    );
    let status = deployed.status_json();
    assert_eq!(status["serving"]["generation"], 2, "{status}");
    assert_eq!(status["serving"]["version"], "app 2.0", "{status}");
    // The master that answers has re-executed itself since the worker
    // said its build.
    assert_eq!(status["master"]["upgrades"], 1, "{status}");
    let (code, text, err) = graceful_command(&["status", &deployed.socket]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains(&format!(
            "serving:     worker 2 (pid {second}, app 2.0) since "
        )),
        "{text}"
    );
    // And as JSON, for a deploy script that reads it with jq.
    std::fs::write(&build, "app 3.0\n").unwrap();
    let (code, out, err) = graceful_command(&["reload", "--json", &deployed.socket]);
    assert_eq!(code, 0, "{out}{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["generation"], 3, "{answer}");
    assert_eq!(answer["version"], "app 3.0", "{answer}");
    let finished = service.wait_line("reload finished: worker 2 ", T);
    assert!(
        finished.contains(&format!("worker 2 (pid {second}) ready in "))
            && finished.contains(&format!(
                " ms and serving app 2.0; worker 1 (pid {first}) draining"
            )),
        "{finished}"
    );
    // A worker that asks with reload_and_wait() is told the new build too.
    let third = answer["pid"].as_u64().unwrap();
    std::fs::write(&build, "app 4.0\n").unwrap();
    let (status, body) = get(&service.addr(T), "/reload-and-wait").unwrap();
    assert_eq!(status, 200);
    let fourth = service.ready_worker(4, T);
    assert!(
        body.starts_with(&format!(
            "reloaded generation 4 pid {fourth} version \"app 4.0\": generation 4 (pid \
             {fourth}) is serving app 4.0; it was ready in "
        )),
        "{body} (asked of worker 3, pid {third})"
    );
}

/// A build whose messages the master cannot read (from a newer, incompatible
/// graceful, or not graceful at all) is rolled back, and the reason names
/// what it sent.
#[test]
fn a_build_whose_messages_the_master_cannot_read_is_rolled_back_with_the_reason() {
    let app = Deployed::new("unreadable");
    let service = app.start(&[]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    app.install(
        b"#!/bin/bash\nprintf 'Zfrom the future' >&\"$GRACEFUL_CONTROL_FD\"\nexec sleep 30\n",
    );
    let (code, _, err) = app.reload();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown control message tag 0x5a"), "{err}");
    assert!(
        err.contains(&format!("still serving with worker 1 (pid {first})")),
        "{err}"
    );
    assert_eq!(pid_of(&addr), first);
}

/// Single mode names the build too: in the log, systemd's status and
/// `reload_and_wait()`'s answer.
#[test]
fn single_mode_names_the_build_that_serves() {
    let dir = temp_dir("operators-single-build");
    let build = dir.join("build");
    std::fs::write(&build, "app 1.0\n").unwrap();
    let service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[
            ("GRACEFUL_MODE", "single"),
            ("TESTAPP_BUILD_FILE", build.to_str().unwrap()),
        ],
    );
    let addr = service.addr(T);
    let first = service.ready("process", 1, T);
    let ready = service.wait_line(&format!("process 1 (pid {first}) ready in "), T);
    assert!(
        ready.contains(" ms and serving app 1.0 (single-process mode)"),
        "{ready}"
    );
    std::fs::write(&build, "app 2.0\n").unwrap();
    let (status, body) = get(&addr, "/reload-and-wait").unwrap();
    assert_eq!(status, 200);
    let successor = service.ready("process", 2, T);
    assert!(
        body.starts_with(&format!(
            "reloaded generation 2 pid {successor} version \"app 2.0\": generation 2 (pid \
             {successor}) is serving app 2.0; it was ready in "
        )),
        "{body}"
    );
    let ready = service.wait_line(&format!("process 2 (pid {successor}) ready in "), T);
    assert!(ready.ends_with(" ms and serving app 2.0"), "{ready}");
    let finished = service.wait_line("reload finished: successor ", T);
    assert!(
        finished.ends_with(&format!(
            "successor (pid {successor}) is serving app 2.0; process 1 (pid {first}) draining"
        )),
        "{finished}"
    );
    assert!(wait_gone(first, T));
}

/// `#[graceful::main]` names the package's build without being told.
#[test]
fn the_attribute_macro_reports_the_packages_name_and_version() {
    let dir = temp_dir("operators-macro-build");
    let socket = dir.join("control.sock");
    let service = Service::start(
        &graceful_dev::built("hello"),
        &["127.0.0.1:0"],
        &[("GRACEFUL_CONTROL_SOCKET", socket.to_str().unwrap())],
    );
    service.ready_worker(1, T);
    let (code, out, err) = graceful_command(&["status", "--json", socket.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        status["serving"]["version"],
        format!("graceful-dev {}", env!("CARGO_PKG_VERSION")),
        "{status}"
    );
}
