//! With the `tracing` feature, a service that sets a `tracing` subscriber
//! receives graceful's lifecycle events with their fields, in its workers
//! and in single mode, and they are not written twice; the master, which
//! runs no user code, writes lines, with syslog priorities when stderr is
//! the journal.

use graceful_dev::built;
use graceful_dev::http::get;
use graceful_dev::process::Service;
use graceful_dev::TIMEOUT as T;
use nix::sys::signal::Signal;

#[test]
fn worker_events_reach_the_applications_subscriber_with_their_fields() {
    let mut service = Service::start(&built("traced"), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    let fields = |generation: u64, pid: i32| format!("generation={generation} pid={pid}");
    let ready = service.wait_line(" INFO graceful: worker 1 (pid ", T);
    // The build is the package's, named by `#[graceful::main]`.
    let build = format!("graceful-dev {}", env!("CARGO_PKG_VERSION"));
    assert!(
        ready.contains(&format!(
            "and serving {build} {} event=\"ready\" took_ms=",
            fields(1, first)
        )) && ready.ends_with(&format!(" version=\"{build}\"")),
        "{ready}"
    );
    assert_eq!(get(&addr, "/panic").unwrap().0, 500);
    let panicked = service.wait_line("ERROR graceful: handler panicked on GET /panic", T);
    assert!(
        panicked.ends_with(&format!(
            "{} event=\"handler_panicked\" method=\"GET\" path=\"/panic\" panic=\"traced was \
             told to panic\"",
            fields(1, first)
        )),
        "{panicked}"
    );
    service.signal(Signal::SIGHUP);
    let second = service.ready_worker(2, T);
    let drained = service.wait_line(
        &format!(" INFO graceful: worker 1 (pid {first}) drained"),
        T,
    );
    assert!(
        drained.ends_with(&format!(
            "{} event=\"drained\" drained=0 cut=0 took_ms=0 stop_timeout_ms=2000",
            fields(1, first)
        )),
        "{drained}"
    );
    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit(T).success());
    service.wait_line("graceful: stopped", T);
    let log = service.log_text();
    // The worker's events went to the subscriber only; the master's lines,
    // as ever.
    assert!(
        !log.contains(&format!("\ngraceful: worker 1 (pid {first}) drained")),
        "{log}"
    );
    assert!(!log.contains("\ngraceful: handler panicked"), "{log}");
    assert!(log.contains(&format!(
        "\ngraceful: reload finished: worker 2 (pid {second}) ready in "
    )));
}

#[test]
fn single_mode_events_reach_the_subscriber_too() {
    let service = Service::start(
        &built("traced"),
        &["127.0.0.1:0"],
        &[("GRACEFUL_MODE", "single")],
    );
    let pid = service.pid();
    let listening = service.wait_line(" INFO graceful: listening on 127.0.0.1:", T);
    assert!(
        listening.contains(&format!(
            "generation=1 pid={pid} event=\"listening\" address=\"127.0.0.1:"
        )),
        "{listening}"
    );
    assert!(
        listening.ends_with("registered=\"127.0.0.1:0\""),
        "{listening}"
    );
    let ready = service.wait_line(" INFO graceful: process 1 (pid ", T);
    assert!(
        ready.contains("event=\"ready\" name=\"process 1 (pid "),
        "{ready}"
    );
    service.signal(Signal::SIGHUP);
    let started = service.wait_line(" INFO graceful: reload started (signal SIGHUP)", T);
    assert!(
        started.ends_with("event=\"reload_started\" why=\"signal SIGHUP\""),
        "{started}"
    );
    let finished = service.wait_line(" INFO graceful: reload finished: successor (pid ", T);
    assert!(
        finished.contains("event=\"reload_finished\" successor_pid="),
        "{finished}"
    );
    service.wait_line(&format!("generation=1 pid={pid} event=\"exited\""), T);
}

#[test]
fn master_lines_carry_syslog_priorities_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    // Stand in for systemd: stderr is a socket, and JOURNAL_STREAM names it.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let meta = std::fs::metadata(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&theirs)
    ))
    .unwrap();
    let journal_stream = format!("{}:{}", meta.dev(), meta.ino());
    let dir = graceful_dev::temp_dir("tracing-journal");
    let flag = dir.join("fail");
    ours.set_read_timeout(Some(T)).unwrap();
    let child = std::process::Command::new(graceful_dev::testapp())
        .arg("127.0.0.1:0")
        .env("JOURNAL_STREAM", &journal_stream)
        .env("TESTAPP_FAIL_IF_EXISTS", &flag)
        .stderr(std::os::fd::OwnedFd::from(theirs))
        .spawn()
        .unwrap();
    let mut child = Ended(child);
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    let lines = std::io::BufRead::lines(std::io::BufReader::new(ours));
    let mut lines = lines.map(|l| l.unwrap());
    let mut wait_for = |needle: &str| -> String {
        lines
            .by_ref()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}"))
    };
    assert!(wait_for("master started").starts_with("<6>graceful: master started"));
    wait_for("ready in");
    std::fs::write(&flag, "exit").unwrap();
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    let failed = wait_for("reload failed");
    assert!(
        failed.starts_with("<3>graceful: reload failed: worker 2"),
        "{failed}"
    );
    nix::sys::signal::kill(pid, Signal::SIGUSR2).unwrap();
    let ignored = wait_for("SIGUSR2");
    assert!(
        ignored.starts_with("<4>graceful: received SIGUSR2"),
        "{ignored}"
    );
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    assert!(wait_for("stopped").starts_with("<6>graceful: stopped"));
    assert!(child.0.wait().unwrap().success());
}

/// A child that is killed by its PID and reaped if the test fails first.
struct Ended(std::process::Child);

impl Drop for Ended {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
