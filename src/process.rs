//! A service under test: a real process, its stderr read line by line.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Lines the service has written to stderr so far.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
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
                lock.lock().unwrap().lines.push(line);
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
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.log;
        let mut log = lock.lock().unwrap();
        loop {
            let found: Vec<&String> = log.lines.iter().filter(|l| l.contains(needle)).collect();
            if let Some(line) = found.get(nth) {
                let line = (*line).clone();
                drop(log);
                self.note_workers();
                return line;
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

/// The fields of `/proc/PID/stat` after the command name: `[0]` state,
/// `[1]` parent PID, `[11]` user and `[12]` system CPU ticks.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit(')').next()?;
    Some(after_name.split_whitespace().map(str::to_string).collect())
}

/// Every process, as `(pid, stat fields)`.
fn processes() -> Vec<(i32, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat_fields(pid)?)))
        .collect()
}

fn is_live_state(fields: &[String]) -> bool {
    fields
        .first()
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| is_live_state(&fields))
}

/// Waits until `pid` has exited (or is a zombie), up to `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    !is_alive(pid)
}

/// Live children of `pid`, from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let parent = pid.to_string();
    processes()
        .into_iter()
        .filter(|(_, f)| f.get(1) == Some(&parent) && is_live_state(f))
        .map(|(child, _)| child)
        .collect()
}

/// Unreaped (zombie) children of `pid`, from /proc.
pub fn zombies_of(pid: i32) -> Vec<i32> {
    let parent = pid.to_string();
    processes()
        .into_iter()
        .filter(|(_, f)| f.get(1) == Some(&parent) && f.first().is_some_and(|s| s == "Z"))
        .map(|(child, _)| child)
        .collect()
}

/// User + system CPU time of a process, from /proc (zero if it is gone).
pub fn cpu_time(pid: i32) -> Duration {
    let fields = stat_fields(pid).unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

/// A numeric field of `/proc/PID/status`, such as `"VmRSS:"` (KiB) or `"Threads:"`.
pub fn status_value(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open file descriptors of a process.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A fresh temporary directory for one test: `graceful-test-NAME-PID`.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("graceful-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The worker PID that answers `GET /pid` (testapp and the axum example).
pub fn pid_of(addr: &str) -> i32 {
    let (status, body) = get(addr, "/pid").expect("GET /pid");
    assert_eq!(status, 200, "GET /pid: {body}");
    body.trim().parse().expect("a pid")
}

/// One HTTP/1.1 request on a new connection; returns (status, body).
pub fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies: keep only the data lines.
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.split("\r\n")
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join("")
    } else {
        body
    };
    Ok((status, body))
}

/// Runs `curl` with `args` and returns its stdout; panics with stderr on failure.
pub fn curl<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}
