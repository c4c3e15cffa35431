//! A service under test: a real process started and ended by its PID, its
//! stderr read line by line, and the worker PIDs its log names.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::procfs::is_alive;

/// Lines the service has written to stderr so far.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    /// When each line was read, for tests that time the service by its log.
    read_at: Vec<Instant>,
    closed: bool,
}

pub struct Service {
    child: Child,
    log: Arc<(Mutex<Log>, Condvar)>,
    /// Every worker PID seen in the log, killed on drop if still alive.
    workers: Mutex<HashSet<i32>>,
}

impl Service {
    pub fn start(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Service {
        Service::start_with(program, args, envs, |_| {})
    }

    /// `program` as PID 1 of a new PID namespace, as in a container (with
    /// `unshare`, whose PID this service has). Should the test fail early,
    /// the program gets SIGTERM when unshare is killed.
    pub fn start_as_pid_1(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Service {
        let mut all = vec![
            "--fork",
            "--pid",
            "--kill-child=SIGTERM",
            program.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        Service::start(&crate::tool("unshare"), &all, envs)
    }

    pub fn start_with(
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Service {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        configure(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let stderr = child.stderr.take().expect("stderr piped");
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        let sink = log.clone();
        let echo = std::env::var_os("GRACEFUL_TEST_ECHO").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("  | {line}");
                }
                let (lock, cond) = &*sink;
                let mut log = lock.lock().unwrap();
                log.lines.push(line);
                log.read_at.push(Instant::now());
                drop(log);
                cond.notify_all();
            }
            let (lock, cond) = &*sink;
            lock.lock().unwrap().closed = true;
            cond.notify_all();
        });
        Service {
            child,
            log,
            workers: Mutex::default(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().lines.clone()
    }

    pub fn log_text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until the `nth` (0-based) line containing `needle` appears.
    pub fn wait_line_n(&self, needle: &str, nth: usize, timeout: Duration) -> String {
        self.wait_line_n_at(needle, nth, timeout).0
    }

    /// Like [`wait_line_n`](Service::wait_line_n), with the instant the line
    /// was read (within a millisecond of when it was written: the reader
    /// thread blocks on the pipe).
    pub fn wait_line_n_at(&self, needle: &str, nth: usize, timeout: Duration) -> (String, Instant) {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.log;
        let mut log = lock.lock().unwrap();
        loop {
            let found = log
                .lines
                .iter()
                .zip(&log.read_at)
                .filter(|(l, _)| l.contains(needle))
                .nth(nth)
                .map(|(l, at)| (l.clone(), *at));
            if let Some(found) = found {
                drop(log);
                self.note_workers();
                return found;
            }
            let now = Instant::now();
            if now >= deadline || log.closed {
                let text = log.lines.join("\n");
                drop(log);
                panic!(
                    "no line #{nth} containing {needle:?} within {timeout:?} (stderr {}):\n{text}",
                    if now >= deadline {
                        "still open"
                    } else {
                        "closed"
                    }
                );
            }
            log = cond.wait_timeout(log, deadline - now).unwrap().0;
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the service to exit
    /// with status 0; fails with its log otherwise.
    pub fn stop_cleanly(&mut self, timeout: Duration) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(timeout);
        assert_eq!(status.code(), Some(0), "{}", self.log_text());
    }

    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        self.wait_line_n(needle, 0, timeout)
    }

    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    fn note_workers(&self) {
        let mut workers = self.workers.lock().unwrap();
        for line in self.lines() {
            if let Some(pid) = worker_pid_in(&line) {
                workers.insert(pid);
            }
        }
    }

    /// The address of the first listener the master logged.
    pub fn addr(&self, timeout: Duration) -> String {
        self.addr_n(0, timeout)
    }

    pub fn addr_n(&self, nth: usize, timeout: Duration) -> String {
        let line = self.wait_line_n("listening on ", nth, timeout);
        let rest = line.split("listening on ").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().to_string()
    }

    /// The PID of worker `generation` once it is ready.
    pub fn ready_worker(&self, generation: u64, timeout: Duration) -> i32 {
        self.ready("worker", generation, timeout)
    }

    /// The PID of `role` (`worker`, or `process` in single mode) number
    /// `generation` once it is ready.
    pub fn ready(&self, role: &str, generation: u64, timeout: Duration) -> i32 {
        let needle = format!("{role} {generation} (pid ");
        let deadline = Instant::now() + timeout;
        let line = self.wait_line(&needle, timeout);
        let pid = worker_pid_in(&line).expect("pid in line");
        let ready = format!("{role} {generation} (pid {pid}) ready");
        self.wait_line(&ready, deadline.saturating_duration_since(Instant::now()));
        pid
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal the master");
    }

    /// Waits for the master to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.wait_log_closed(deadline);
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the master did not exit within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            // The child is not ours to waitpid with a timeout; a short sleep
            // between checks is bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until every process writing to the log has closed it (the
    /// master's last lines, and its workers', may still be in the pipe when
    /// it has exited), or until `deadline`: a descendant that outlives the
    /// master keeps the pipe open, and the test then reads what is there.
    fn wait_log_closed(&self, deadline: Instant) {
        let (lock, cond) = &*self.log;
        let mut log = lock.lock().unwrap();
        while !log.closed {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            log = cond.wait_timeout(log, deadline - now).unwrap().0;
        }
    }

    /// Every worker PID the log has named so far.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.note_workers();
        self.workers.lock().unwrap().iter().copied().collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.note_workers();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.workers.lock().unwrap().iter() {
            if is_alive(*pid) {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

fn worker_pid_in(line: &str) -> Option<i32> {
    let rest = line.split("(pid ").nth(1)?;
    rest.split(')').next()?.parse().ok()
}
