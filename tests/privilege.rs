//! Least privilege (`user`, `group`): a root master binds a port below 1024
//! and keeps its privileges, while every thread of every worker serves as
//! an unprivileged user with `no_new_privs`, through reloads, the watchdog
//! and a stop. A user that does not exist, or cannot be taken, stops the
//! start with the option and the value named.
//!
//! These run as root (so does `.ci/run`), with the user `graceful-test`, a
//! member of the group `graceful-test-extra`, which `scripts/test` creates.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use graceful_dev::http::curl;
use graceful_dev::process::Service;
use graceful_dev::procfs::wait_gone;
use graceful_dev::tls::TestCa;
use graceful_dev::{graceful_command, run_bounded, temp_dir, testapp, TIMEOUT as T};
use nix::sys::signal::Signal;

/// The unprivileged user the tests serve as.
const USER: &str = "graceful-test";

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `id` of the test user: its uid, its gid, and every group it is in.
fn user_ids() -> (u32, u32, BTreeSet<u32>) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests start a root master: run them as root (scripts/test does, in .ci/run)"
    );
    let id = |flag: &str| {
        let (code, out, err) = run_bounded(std::process::Command::new("id").args([flag, USER]));
        assert_eq!(
            code, 0,
            "id {flag} {USER}: {err}; scripts/test creates the user {USER}"
        );
        out.split_whitespace()
            .map(|n| n.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    let groups: BTreeSet<u32> = id("-G").into_iter().collect();
    assert!(
        groups.len() >= 2,
        "{USER} must be in a supplementary group too (scripts/test adds it to graceful-test-extra)"
    );
    (id("-u")[0], id("-g")[0], groups)
}

/// One thread's credentials, from `/proc/PID/task/TID/status`.
#[derive(Debug, PartialEq, Eq)]
struct Thread {
    uids: Vec<u32>,
    gids: Vec<u32>,
    groups: BTreeSet<u32>,
    no_new_privs: bool,
    effective_caps: String,
}

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in\n{status}"))
        .trim()
}

fn numbers(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

fn thread(status: &str) -> Thread {
    Thread {
        // Real, effective, saved and filesystem ids.
        uids: numbers(field(status, "Uid:")),
        gids: numbers(field(status, "Gid:")),
        groups: numbers(field(status, "Groups:")).into_iter().collect(),
        no_new_privs: field(status, "NoNewPrivs:") == "1",
        effective_caps: field(status, "CapEff:").to_string(),
    }
}

/// Every thread of `pid`, by name.
fn threads(pid: i32) -> Vec<(String, Thread)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap();
            (field(&status, "Name:").to_string(), thread(&status))
        })
        .collect()
}

/// Asserts that every thread of worker `pid` serves as the test user, and
/// returns how many there are.
fn assert_unprivileged(pid: i32) -> usize {
    let (uid, gid, groups) = user_ids();
    let expected = Thread {
        uids: vec![uid; 4],
        gids: vec![gid; 4],
        groups,
        no_new_privs: true,
        effective_caps: "0000000000000000".into(),
    };
    let threads = threads(pid);
    for (name, thread) in &threads {
        assert_eq!(thread, &expected, "thread {name} of worker {pid}");
    }
    threads.len()
}

/// A free TCP port below 1024 on 127.0.0.1: only root may bind it.
fn privileged_port() -> u16 {
    (700..1000)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port between 700 and 999")
}

/// A file only root may read.
fn root_only(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn workers_serve_as_the_user_on_every_thread_while_the_master_keeps_root() {
    let dir = temp_dir("privilege");
    // The directory is open to all, so that a refused open is the file's.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("privilege").write(&dir, "server");
    // The key is root's alone: the worker reads it before it drops root.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let secret = dir.join("secret");
    root_only(&secret, "root only");
    let public = dir.join("public");
    std::fs::write(&public, "anyone").unwrap();

    let port = privileged_port();
    let addr = format!("127.0.0.1:{port}");
    let service = Service::start(
        &testapp(),
        &[&addr],
        &[
            ("GRACEFUL_USER", USER),
            ("TESTAPP_TLS_CERT", s(&cert)),
            ("TESTAPP_TLS_KEY", s(&key)),
            ("TESTAPP_EXTRA_THREADS", "1"),
            ("TESTAPP_WATCHDOG_MS", "300"),
        ],
    );
    assert_eq!(service.addr(T), addr);
    let first = service.ready_worker(1, T);
    service.wait_line(
        &format!("workers serve as user {USER} (uid "),
        Duration::ZERO,
    );
    let get = |path: &str| {
        curl(&[
            "--cacert",
            s(&ca_file),
            "--max-time",
            "10",
            &format!("https://{addr}{path}"),
        ])
    };

    // Every thread: the runtime's, the blocking pool's and main's own, all
    // started before the drop.
    let names: BTreeSet<String> = threads(first).into_iter().map(|(name, _)| name).collect();
    assert!(names.contains("testapp-own"), "{names:?}");
    assert!(assert_unprivileged(first) >= 4, "{names:?}");
    // The master keeps root, and may still exec what it likes.
    for (name, master) in threads(service.pid()) {
        assert_eq!(master.uids, [0; 4], "master thread {name}");
        assert_eq!(master.gids, [0; 4], "master thread {name}");
        assert!(!master.no_new_privs, "master thread {name}");
    }

    // The TLS key was read as root; the handler is refused root's files,
    // not everyone's, and cannot signal the master.
    assert!(get("/").starts_with("testapp v1 pid "), "{}", get("/"));
    assert_eq!(get(&format!("/open?{}", s(&public))), "read 6 bytes\n");
    assert_eq!(
        get(&format!("/open?{}", s(&secret))),
        "error: Permission denied (os error 13)\n"
    );
    assert_eq!(
        get("/signal-master"),
        "error: EPERM: Operation not permitted\n"
    );

    // A reload: the new worker drops too, and the low port stays served.
    service.signal(Signal::SIGHUP);
    let second = service.ready_worker(2, T);
    assert!(wait_gone(first, T), "worker 1 still runs");
    assert_unprivileged(second);
    assert_eq!(get("/pid"), format!("{second}\n"));

    // The watchdog: a stopped worker is killed by the root master and
    // replaced by one that drops too.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second), Signal::SIGSTOP).unwrap();
    let third = service.ready_worker(3, T);
    assert!(wait_gone(second, T), "the stopped worker was not killed");
    assert_unprivileged(third);
    assert_eq!(get("/pid"), format!("{third}\n"));

    // A stop drains the unprivileged worker: a request in flight finishes.
    let slow = {
        let (ca_file, addr) = (ca_file.clone(), addr.clone());
        std::thread::spawn(move || {
            curl(&[
                "--cacert",
                s(&ca_file),
                "--max-time",
                "10",
                &format!("https://{addr}/slow?ms=700"),
            ])
        })
    };
    service.wait_line("slow request started", T);
    let mut service = service;
    service.signal(Signal::SIGTERM);
    assert_eq!(slow.join().unwrap(), format!("slow 700 done by {third}\n"));
    assert!(service.wait_exit(T).success(), "{}", service.log_text());
}

#[test]
fn a_user_that_cannot_be_had_stops_the_start_naming_it() {
    let (uid, gid, _) = user_ids();
    let refused = |envs: &[(&str, &str)], configure: &dyn Fn(&mut std::process::Command)| {
        let mut service = Service::start_with(&testapp(), &["127.0.0.1:0"], envs, configure);
        let status = service.wait_exit(T);
        assert_eq!(status.code(), Some(1), "{}", service.log_text());
        assert_eq!(service.count_lines("ready"), 0, "{}", service.log_text());
        service.log_text()
    };
    let as_root = |_: &mut std::process::Command| {};
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[("GRACEFUL_USER", "graceful-no-such-user")],
            "invalid option user: \"graceful-no-such-user\" is not a user on this system",
        ),
        (
            &[
                ("GRACEFUL_USER", USER),
                ("GRACEFUL_GROUP", "graceful-no-such-group"),
            ],
            "invalid option group: \"graceful-no-such-group\" is not a group on this system",
        ),
        (
            &[("GRACEFUL_USER", "root")],
            "invalid option user: \"root\" is uid 0: its workers would keep every privilege",
        ),
        (
            &[("GRACEFUL_GROUP", "graceful-test")],
            "invalid option group: \"graceful-test\" is set without user",
        ),
        (
            &[("GRACEFUL_USER", USER), ("GRACEFUL_MODE", "single")],
            "invalid option user: \"graceful-test\": single mode cannot serve as another user",
        ),
    ];
    for (envs, expected) in cases {
        let log = refused(envs, &as_root);
        assert!(log.contains(expected), "{envs:?}:\n{log}");
    }
    // A master that is not root cannot start workers as someone else.
    let nobody = |command: &mut std::process::Command| {
        use std::os::unix::process::CommandExt;
        command.uid(65534).gid(65534);
    };
    let log = refused(&[("GRACEFUL_USER", USER)], &nobody);
    assert!(
        log.contains(&format!(
            "invalid option user: \"{USER}\": the master runs as uid 65534 and gid 65534, not as \
             root, so its workers cannot become uid {uid} and gid {gid}"
        )),
        "{log}"
    );
}

/// The owner of `path`, and its permission bits.
fn owner_and_mode(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.mode() & 0o7777)
}

#[test]
fn the_files_the_master_creates_stay_roots_and_the_unprivileged_worker_serves_its_unix_socket() {
    let (uid, _, _) = user_ids();
    let dir = temp_dir("privilege-files");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.join("app.sock");
    let control = dir.join("control.sock");
    let pid_file = dir.join("app.pid");
    let mut service = Service::start(
        &testapp(),
        &[&format!("unix:{}", s(&socket))],
        &[
            ("GRACEFUL_USER", USER),
            ("GRACEFUL_CONTROL_SOCKET", s(&control)),
            ("TESTAPP_PID_FILE", s(&pid_file)),
        ],
    );
    let worker = service.ready_worker(1, T);
    assert_eq!(threads(worker)[0].1.uids, [uid; 4]);
    // Root's files, as the master made them: the listener with the mode
    // the umask leaves (unix_mode would set it), the control socket and the
    // PID file owner-only or read-only to others.
    let (owner, listener_mode) = owner_and_mode(&socket);
    assert_eq!(owner, 0);
    assert_eq!(owner_and_mode(&control), (0, 0o600));
    assert_eq!(owner_and_mode(&pid_file).0, 0);
    // The worker serves the socket it was handed: it never opens the path.
    let answer = curl(&[
        "--unix-socket",
        s(&socket),
        "--max-time",
        "10",
        "http://x/pid",
    ]);
    assert_eq!(
        answer,
        format!("{worker}\n"),
        "listener mode {listener_mode:o}"
    );
    // The operator's tools work as before: the master answers root.
    let (code, status, err) = graceful_dev::graceful_command(&["status", s(&control)]);
    assert_eq!(code, 0, "{err}");
    assert!(status.contains(&format!("pid {worker}")), "{status}");
    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit(T).success(), "{}", service.log_text());
    // The master, still root, removed what it made.
    assert!(!socket.exists() && !control.exists() && !pid_file.exists());
}

#[test]
fn a_udp_port_below_1024_is_served_by_an_unprivileged_worker() {
    let (uid, _, _) = user_ids();
    let port = (700..1000)
        .find(|port| std::net::UdpSocket::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free UDP port between 700 and 999");
    let service = Service::start(
        &graceful_dev::built("udp_echo"),
        &[&format!("udp:127.0.0.1:{port}")],
        &[("GRACEFUL_USER", USER)],
    );
    let worker = service.ready_worker(1, T);
    assert_eq!(threads(worker)[0].1.uids, [uid; 4]);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(("127.0.0.1", port)).unwrap();
    client.set_read_timeout(Some(T)).unwrap();
    client.send(b"hello").unwrap();
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], format!("{worker} hello").as_bytes());
}

/// The capability's number (`linux/capability.h`): the bit of
/// `/proc/PID/status`'s `CapEff` and the argument of `PR_CAPBSET_DROP`.
const CAP_SYS_PTRACE: u64 = 19;

/// A master without `CAP_SYS_PTRACE` (root in a container, by default)
/// cannot open the executable of a worker that serves as another user
/// (`/proc/PID/exe`): it says so, and upgrades into the file at the path
/// instead, as it did before it looked at the worker's.
#[test]
fn a_master_that_cannot_open_its_workers_executable_upgrades_from_the_path() {
    let without_ptrace = |command: &mut std::process::Command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe, and touches no memory.
        unsafe {
            command.pre_exec(|| {
                // Out of the bounding set, so the exec gives root no
                // CAP_SYS_PTRACE.
                if nix::libc::prctl(nix::libc::PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    };
    let mut service = Service::start_with(
        &testapp(),
        &["127.0.0.1:0"],
        &[("GRACEFUL_USER", USER)],
        without_ptrace,
    );
    let master = service.pid();
    let status = std::fs::read_to_string(format!("/proc/{master}/status")).unwrap();
    let effective = u64::from_str_radix(field(&status, "CapEff:"), 16).unwrap();
    assert_eq!(
        effective & (1 << CAP_SYS_PTRACE),
        0,
        "the master has CAP_SYS_PTRACE"
    );
    let addr = service.addr(T);
    service.ready_worker(1, T);
    service.signal(Signal::SIGHUP);
    let second = service.ready_worker(2, T);
    let line = service.wait_line("instead of worker 2's", T);
    assert!(
        line.contains(&format!("cannot open /proc/{second}/exe: ")),
        "{line}"
    );
    let line = service.wait_line("master upgraded in place", T);
    assert!(line.contains(&format!("(pid {master} kept)")), "{line}");
    let answer = curl(&["--max-time", "10", &format!("http://{addr}/pid")]);
    assert_eq!(answer, format!("{second}\n"));
    service.stop_cleanly(T);
}

/// `graceful reload` run as root believes a service of another user only
/// when its control socket lies in a directory not everyone can write to:
/// in `/tmp`, anyone could have put a socket at that path while the
/// service was down, and answered "reloaded" to a deploy script.
#[test]
fn the_reload_command_believes_another_users_socket_only_in_a_directory_not_everyone_can_write() {
    user_ids();
    let nobody = |command: &mut std::process::Command| {
        use std::os::unix::process::CommandExt;
        command.uid(65534).gid(65534);
    };
    let serve_in = |dir: &Path| {
        let socket = dir.join("control.sock");
        let service = Service::start_with(
            &testapp(),
            &["127.0.0.1:0"],
            &[("GRACEFUL_CONTROL_SOCKET", s(&socket))],
            nobody,
        );
        service.ready_worker(1, T);
        (service, socket)
    };

    // A directory anyone may create files in, as /tmp.
    let shared = temp_dir("privilege-shared-dir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (mut service, socket) = serve_in(&shared);
    for verb in ["reload", "status"] {
        let (code, out, err) = graceful_command(&[verb, s(&socket)]);
        assert_eq!(code, 2, "{verb}: {out}{err}");
        assert!(
            err.contains(&format!(
                "the process answering on it runs as uid 65534, which is neither yours (0) nor \
                 root, and anyone may create files in {}: not trusting its answer",
                shared.display()
            )),
            "{verb}: {err}"
        );
    }
    // Refused before it asked: the service did not reload.
    assert_eq!(service.count_lines("ready"), 1, "{}", service.log_text());
    // Run as the service's own user, the command is believed.
    let mut ctl = std::process::Command::new(graceful_dev::built("ctl"));
    nobody(ctl.args(["reload", s(&socket)]));
    let (code, out, err) = run_bounded(&mut ctl);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reloaded: generation 2 (pid "), "{out}");
    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit(T).success(), "{}", service.log_text());

    // The service's own directory (systemd's RuntimeDirectory=): root
    // believes it.
    let own = temp_dir("privilege-own-dir");
    nix::unistd::chown(own.path(), Some(65534.into()), Some(65534.into())).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut service, socket) = serve_in(&own);
    let (code, out, err) = graceful_command(&["reload", s(&socket)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reloaded: generation 2 (pid "), "{out}");
    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit(T).success(), "{}", service.log_text());
}
