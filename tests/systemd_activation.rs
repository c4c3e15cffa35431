//! systemd socket activation with the real `systemd-socket-activate`: the
//! activated socket is used (by name or by address), survives reloads, and
//! the PID stays the same. systemd itself is never started.

use std::path::PathBuf;
use std::time::Duration;

use graceful_dev::http::{get, pid_of};
use graceful_dev::process::Service;
use graceful_dev::procfs::wait_gone;
use graceful_dev::testapp;
use nix::sys::signal::kill;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use graceful_dev::TIMEOUT as T;

fn activate() -> PathBuf {
    graceful_dev::tool("systemd-socket-activate")
}

/// systemd-socket-activate logs "Listening on" around its listen() call: wait
/// (bounded) until a connection is accepted into the backlog.
fn wait_listening(addr: &str) {
    let deadline = std::time::Instant::now() + T;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} never accepted a connection"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reloads_keep_the_activated_socket(service: &Service, addr: &str, first_response: i32) {
    let first = service.ready_worker(1, T);
    assert_eq!(
        first_response, first,
        "the connection that started the service was served"
    );
    assert_eq!(pid_of(addr), first);
    let environ = std::fs::read(format!("/proc/{first}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("LISTEN_FDS"),
        "workers must not see LISTEN_FDS"
    );
    for generation in 2..=3 {
        service.signal(Signal::SIGHUP);
        let worker = service.ready_worker(generation, T);
        // The master re-executed itself with the activated socket.
        service.wait_line_n("master upgraded in place", generation as usize - 2, T);
        // The old worker may still take a connection until it has stopped.
        service.wait_line_n("after draining", generation as usize - 2, T);
        assert_eq!(
            pid_of(addr),
            worker,
            "the new worker serves the activated socket:\n{}",
            service.log_text()
        );
    }
    assert_eq!(service.count_lines("reload finished"), 2);
    // Never bound by graceful itself: the activated socket was used.
    assert_eq!(
        service.count_lines("listening on "),
        0,
        "{}",
        service.log_text()
    );
}

/// Starts testapp under systemd-socket-activate on a free port, with
/// `register(addr)` as its address argument, and returns once the socket
/// accepts connections. Like systemd, systemd-socket-activate starts the
/// service on the first connection, which waits in the backlog meanwhile.
fn activated(fdname: Option<&str>, register: impl FnOnce(&str) -> String) -> (Service, String) {
    let addr = format!("127.0.0.1:{}", graceful_dev::free_port());
    let testapp = testapp();
    let register = register(&addr);
    let fdname = fdname.map(|name| format!("--fdname={name}"));
    let mut args = vec!["-l", addr.as_str()];
    args.extend(fdname.as_deref());
    args.extend([testapp.to_str().unwrap(), register.as_str()]);
    let service = Service::start(&activate(), &args, &[]);
    service.wait_line(&format!("Listening on {addr} as 3."), T);
    wait_listening(&addr);
    (service, addr)
}

#[test]
fn named_socket_by_systemd_name() {
    let (mut service, addr) = activated(Some("web"), |_| "systemd:web".to_string());
    let first = pid_of(&addr);
    service.wait_line(&format!("socket activation: {addr} as \"web\""), T);
    reloads_keep_the_activated_socket(&service, &addr, first);
    service.stop_cleanly(T);
}

#[test]
fn unnamed_socket_by_address() {
    let (service, addr) = activated(None, str::to_string);
    let first = pid_of(&addr);
    service.wait_line(&format!("socket activation: {addr} as \"unknown\""), T);
    reloads_keep_the_activated_socket(&service, &addr, first);
}

#[test]
fn a_name_systemd_did_not_pass_is_a_clear_error() {
    let (mut service, addr) = activated(Some("web"), |_| "systemd:api".to_string());
    // The first connection starts the service, which then fails.
    assert!(get(&addr, "/").is_err(), "nothing can serve it");
    assert_eq!(service.wait_exit(T).code(), Some(1));
    let log = service.log_text();
    assert!(
        log.contains("systemd passed no socket named \"api\"; it passed: web"),
        "{log}"
    );
}

#[test]
fn a_systemd_name_without_activation_is_a_clear_error() {
    let mut service = Service::start(&testapp(), &["systemd:web"], &[]);
    assert_eq!(service.wait_exit(T).code(), Some(1));
    let log = service.log_text();
    assert!(
        log.contains("systemd passed no socket named \"web\"; it passed: none"),
        "{log}"
    );
}

#[test]
fn single_mode_hands_the_activated_socket_to_each_successor() {
    let addr = format!("127.0.0.1:{}", graceful_dev::free_port());
    let testapp = testapp();
    let args = [
        "-l",
        addr.as_str(),
        "--fdname=web",
        // systemd-socket-activate passes on only the variables given with -E.
        "-E",
        "GRACEFUL_MODE=single",
        testapp.to_str().unwrap(),
        "systemd:web",
    ];
    let service = Service::start(&activate(), &args, &[]);
    service.wait_line(&format!("Listening on {addr} as 3."), T);
    wait_listening(&addr);
    let mut current = pid_of(&addr);
    assert_eq!(current, service.ready("process", 1, T));
    for generation in 2..=3 {
        kill(Pid::from_raw(current), Signal::SIGHUP).unwrap();
        let next = service.ready("process", generation, T);
        assert!(wait_gone(current, T));
        assert_eq!(pid_of(&addr), next, "{}", service.log_text());
        current = next;
    }
    assert_eq!(
        service.count_lines("listening on "),
        0,
        "never bound by graceful"
    );
    kill(Pid::from_raw(current), Signal::SIGTERM).unwrap();
    service.wait_line("stopped", T);
    assert!(wait_gone(current, T));
}

#[test]
fn sockets_passed_without_listen_pid_are_used_as_systemfd_passes_them() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fd = listener.as_raw_fd();
    let service = Service::start_with(&testapp(), &[&addr], &[("LISTEN_FDS", "1")], |command| {
        // SAFETY: dup2 is async-signal-safe; `fd` stays open in the
        // parent until the child has started.
        unsafe {
            command.pre_exec(move || {
                // At 3 already, dup2 would keep its close-on-exec flag.
                let done = if fd == 3 {
                    nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
                } else {
                    nix::libc::dup2(fd, 3)
                };
                if done == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    service.wait_line("without LISTEN_PID (as systemfd --no-pid passes them)", T);
    service.ready_worker(1, T);
    drop(listener);
    // The socket the test bound serves: the master used it, bound nothing.
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    assert!(
        !service.log_text().contains("listening on"),
        "{}",
        service.log_text()
    );
    assert!(service.log_text().contains("socket activation: 127.0.0.1:"));
}

/// Under socket activation with a NOTIFY_SOCKET listener, as under systemd:
/// each reload upgrades the master in place, and the upgraded master keeps
/// the activated socket, the PID and the notifications.
#[test]
fn an_upgraded_master_keeps_the_activated_socket_and_notifies_from_the_same_pid() {
    let notes = graceful_dev::notify::Notifications::bind("activation-upgrade", T);
    let addr = format!("127.0.0.1:{}", graceful_dev::free_port());
    let testapp = testapp();
    // systemd-socket-activate passes on only the variables named with -E.
    let notify = format!("NOTIFY_SOCKET={}", notes.address());
    let args = [
        "-l",
        addr.as_str(),
        "--fdname=x",
        "-E",
        notify.as_str(),
        testapp.to_str().unwrap(),
        "systemd:x",
    ];
    let mut service = Service::start(&activate(), &args, &[]);
    wait_listening(&addr);
    // systemd-socket-activate execs the service: its PID is the master's.
    let main_pid = service.pid();
    assert_eq!(pid_of(&addr), service.ready_worker(1, T));
    let (ready, from) = notes.recv_with_pid();
    assert!(ready.starts_with("READY=1"), "{ready}");
    assert_eq!(from, main_pid);
    for generation in 2..=3u64 {
        service.signal(Signal::SIGHUP);
        let worker = service.ready_worker(generation, T);
        let (reloading, from) = notes.recv_with_pid();
        assert!(reloading.starts_with("RELOADING=1"), "{reloading}");
        assert_eq!(from, main_pid);
        let (ready, from) = notes.recv_with_pid();
        assert_eq!(
            ready,
            format!(
                "READY=1\nSTATUS=reload finished: serving with worker {generation} (pid {worker})"
            )
        );
        assert_eq!(from, main_pid, "notified from the same PID");
        let line = service.wait_line_n("master upgraded in place", generation as usize - 2, T);
        assert!(line.contains(&format!("(pid {main_pid} kept)")), "{line}");
        service.wait_line_n("after draining", generation as usize - 2, T);
        assert_eq!(pid_of(&addr), worker);
    }
    service.signal(Signal::SIGTERM);
    let (stopping, from) = notes.recv_with_pid();
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    assert_eq!(from, main_pid);
    assert_eq!(service.wait_exit(T).code(), Some(0));
}
