//! supervisor as it is really used: supervisord (from PyPI, installed by
//! .ci/run) runs the hello example from a generated config. HUP reloads under
//! load with zero failures and the same PID, stop leaves nothing, a crashed
//! master is restarted and nothing of it is left.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use graceful_dev::http::get;
use graceful_dev::load::{Load, Mode};
use graceful_dev::procfs::{children_of, wait_gone};
use graceful_dev::{built, temp_dir, TempDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use graceful_dev::TIMEOUT as T;

struct Supervisor {
    /// Removed after supervisord has stopped (fields drop after `drop`).
    dir: TempDir,
    daemon: Child,
    addr: String,
}

impl Supervisor {
    fn start(name: &str) -> Supervisor {
        let dir = temp_dir(&format!("supervisor-{name}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let d = dir.display();
        let config = format!(
            "[supervisord]\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}\n\
             [unix_http_server]\nfile={d}/supervisor.sock\n\
             [supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\
             [program:hello]\ncommand={hello} {addr}\nenvironment=GRACEFUL_CONTROL_SOCKET=\"{d}/control.sock\"\nstopsignal=TERM\nstopwaitsecs=30\nstopasgroup=false\nkillasgroup=true\n\
             autorestart=unexpected\nexitcodes=0\nstartsecs=1\nredirect_stderr=true\nstdout_logfile={d}/hello.log\n",
            hello = built("hello").display(),
        );
        std::fs::write(dir.join("supervisord.conf"), config).unwrap();
        let daemon = Command::new(graceful_dev::tool("supervisord"))
            .args(["-n", "-c"])
            .arg(dir.join("supervisord.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start supervisord");
        Supervisor { dir, daemon, addr }
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(graceful_dev::tool("supervisorctl"))
            .arg("-c")
            .arg(self.dir.join("supervisord.conf"))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hello.log")).unwrap_or_default()
    }

    /// Waits (bounded) until hello.log has `n` lines containing `needle`.
    fn wait_log(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + T;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} x{n} in hello.log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The PID supervisor reports for hello (its master).
    fn pid(&self) -> i32 {
        let deadline = Instant::now() + T;
        loop {
            let status = self.ctl(&["pid", "hello"]);
            if let Ok(pid) = status.trim().parse::<i32>() {
                if pid > 0 {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "supervisor reports no pid: {status}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // supervisord stops its programs on SIGTERM.
        let _ = kill(Pid::from_raw(self.daemon.id() as i32), Signal::SIGTERM);
        let _ = self.daemon.wait();
    }
}

fn worker_pid_from(log: &str, generation: u64) -> i32 {
    let needle = format!("worker {generation} (pid ");
    let line = log
        .lines()
        .find(|l| l.contains(&needle) && l.contains("ready"))
        .expect("ready line");
    line.split(&needle)
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn supervisorctl_signal_hup_reloads_under_load_and_stop_leaves_nothing() {
    let sup = Supervisor::start("hup");
    sup.wait_log("worker 1 (pid", 1);
    sup.wait_log("ready in", 1);
    let master = sup.pid();
    assert_eq!(get(&sup.addr, "/").unwrap().0, 200);

    let addr: SocketAddr = sup.addr.parse().unwrap();
    let load = Load::start(addr, Mode::KeepAlive, 4, "/");
    assert!(load.wait_progress(50, T));
    for n in 1..=3 {
        let out = sup.ctl(&["signal", "HUP", "hello"]);
        assert!(out.contains("signalled"), "{out}");
        sup.wait_log("after draining", n);
        assert!(load.wait_progress(50, T));
    }
    // The documented command: waits, and names the worker that serves.
    let socket = sup.dir.join("control.sock");
    let (code, out, err) = graceful_dev::graceful_command(&["reload", socket.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reloaded: generation 5 (pid "), "{out}");
    sup.wait_log("after draining", 4);
    assert!(load.wait_progress(50, T));
    let report = load.stop();
    report.assert_clean("load");
    assert_eq!(sup.pid(), master, "the PID supervisor watches changed");
    // Each reload also upgraded the master in place, with the same PID.
    sup.wait_log(&format!("master upgraded in place (pid {master} kept)"), 4);

    let log = sup.log();
    let last = worker_pid_from(&log, 5);
    assert!(out.contains(&format!("(pid {last})")), "{out}");
    let out = sup.ctl(&["stop", "hello"]);
    assert!(out.contains("stopped"), "{out}");
    assert!(
        wait_gone(master, T) && wait_gone(last, T),
        "processes left behind:\n{}",
        sup.log()
    );
    assert!(sup.log().contains("graceful: stopped"));
}

#[test]
fn a_crashed_master_is_restarted_and_nothing_of_it_is_left() {
    let sup = Supervisor::start("crash");
    sup.wait_log("ready in", 1);
    let master = sup.pid();
    let workers = children_of(master);
    assert_eq!(workers.len(), 1);
    kill(Pid::from_raw(master), Signal::SIGKILL).unwrap();
    // supervisor starts a new master (exit by SIGKILL is unexpected) ...
    let deadline = Instant::now() + T;
    let new_master = loop {
        let pid = sup.pid();
        if pid != master {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "supervisor did not restart hello"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    sup.wait_log("ready in", 2);
    assert_eq!(get(&sup.addr, "/").unwrap().0, 200);
    // ... and the old master's worker saw EOF and exited.
    assert!(
        wait_gone(workers[0], T),
        "the old worker outlived its master"
    );
    assert!(children_of(new_master).len() == 1);
}
