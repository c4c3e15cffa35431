//! Support for graceful's integration tests and benchmark: starting a
//! service binary and reading its lifecycle log, sending single requests, and
//! generating load that counts every failure by kind.

#![allow(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod http;
pub mod load;
pub mod notify;
pub mod process;
pub mod procfs;
pub mod tls;
pub mod versioned;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The bound on every wait in the tests: a process that is not ready, a
/// line that is not logged, a request that is not answered by then is a
/// failure, never a hang.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The path of a system tool a test drives. A missing tool fails the test
/// with its name and the command that installs it (`scripts/test` installs
/// them all), never with a bare "No such file".
pub fn tool(name: &str) -> PathBuf {
    let install = match name {
        "curl" => "apt-get install curl",
        "systemd-socket-activate" => "apt-get install systemd (installing it starts nothing)",
        "unshare" | "prlimit" | "taskset" | "setpriv" => "apt-get install util-linux",
        "supervisord" | "supervisorctl" => "python3 -m pip install supervisor",
        "haproxy" => "apt-get install haproxy",
        "promtool" => "apt-get install prometheus (installing it starts nothing without systemd)",
        _ => "see scripts/test",
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/lib/systemd"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed, and this test drives it: run `scripts/test`, \
                 which installs every tool the tests need, or `{install}`"
            )
        })
}

/// Writes `text` and a newline to stderr in one `write(2)`, so that the line
/// is not split by graceful's own log lines, which the process writes through
/// a descriptor of its own (`eprintln!` writes a formatted line in pieces).
/// Test programs announce what tests wait for with it.
pub fn say(text: &str) {
    use std::io::Write;
    let line = format!("{text}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a tool whose
/// configuration needs a number (systemd-socket-activate, HAProxy).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The application the integration tests drive (`src/bin/testapp.rs`).
pub fn testapp() -> PathBuf {
    built("testapp")
}

/// Runs the `graceful` command (`src/bin/ctl.rs`) with `args`, bounded by
/// [`TIMEOUT`]: its exit code, stdout and stderr.
pub fn graceful_command(args: &[&str]) -> (i32, String, String) {
    run_bounded(std::process::Command::new(built("ctl")).args(args))
}

/// Runs `command` to its end, killed by its PID if it takes longer than
/// [`TIMEOUT`]: its exit code (-1 if killed), stdout and stderr.
pub fn run_bounded(command: &mut std::process::Command) -> (i32, String, String) {
    run_bounded_into(
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    )
}

/// Runs `command` as [`run_bounded`] does, its standard output and error
/// left where `command` sends them: what was piped is read, and the other
/// is returned empty. The pipes are read while the command runs, so that
/// an output larger than a pipe holds (64 KiB) cannot stall it, and only
/// until the deadline, so that a process it left behind holding a pipe
/// open cannot stall the test.
pub fn run_bounded_into(command: &mut std::process::Command) -> (i32, String, String) {
    let mut child = command.spawn().expect("start the command");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let out = child.stdout.take().map(read_to_end_in_thread);
    let err = child.stderr.take().map(read_to_end_in_thread);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let read = |output: Option<std::sync::mpsc::Receiver<String>>, name: &str| {
        let Some(output) = output else {
            return String::new();
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        output
            .recv_timeout(left.max(Duration::from_secs(1)))
            .unwrap_or_else(|_| {
                panic!(
                    "{name} of {command:?} still open {}s after its start: a process it left \
                 behind holds it",
                    TIMEOUT.as_secs()
                )
            })
    };
    let out = read(out, "the standard output");
    let err = read(err, "the standard error");
    (status.code().unwrap_or(-1), out, err)
}

/// Reads `pipe` to its end on a thread of its own: its text, when it ends.
fn read_to_end_in_thread(
    mut pipe: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = send.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    receive
}

/// Copies the executable `from` to `to` (mode 755) with `cp`, in a process
/// of its own. Written from the test process, the file could not be run
/// for a moment: another test's thread that forks meanwhile holds the
/// writing descriptor until its child execs, and `exec` of a file open for
/// writing fails with "Text file busy".
pub fn copy_executable(from: &std::path::Path, to: &std::path::Path) {
    let (code, out, err) =
        run_bounded(std::process::Command::new("cp").arg("--").arg(from).arg(to));
    assert_eq!(
        code,
        0,
        "cp {} {}: {out}{err}",
        from.display(),
        to.display()
    );
    let (code, out, err) = run_bounded(std::process::Command::new("chmod").arg("755").arg(to));
    assert_eq!(code, 0, "chmod 755 {}: {out}{err}", to.display());
}

/// Writes `text` to `to` as an executable file (mode 755), as a deploy
/// writes a build: from a child process, for the reason given at
/// [`copy_executable`].
pub fn write_executable(text: &str, to: &std::path::Path) {
    let (code, out, err) = run_bounded(
        std::process::Command::new("sh")
            .args(["-c", "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\""])
            .arg("sh")
            .arg(text)
            .arg(to),
    );
    assert_eq!(code, 0, "writing {}: {out}{err}", to.display());
}

/// A test's own temporary directory, `graceful-test-NAME-PID`, made fresh
/// and removed when the value is dropped: at the test's end, and also when
/// it fails, as the panic unwinds. Set `GRACEFUL_TEST_KEEP=1` to keep the
/// directories of failed tests (their logs, sockets and builds); each one
/// kept is named on stderr.
///
/// Declare it before the processes that use it (a [`process::Service`]),
/// so that they are ended before it is removed.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if keeps(
            std::thread::panicking(),
            std::env::var_os("GRACEFUL_TEST_KEEP").as_deref(),
        ) {
            eprintln!("kept {} (GRACEFUL_TEST_KEEP=1)", self.path.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                // Not a panic: this may run while a failed test unwinds.
                eprintln!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Whether a [`TempDir`] is kept: only by a failed test, and only when asked
/// to with `GRACEFUL_TEST_KEEP=1`.
fn keeps(failed: bool, keep: Option<&std::ffi::OsStr>) -> bool {
    failed && keep.is_some_and(|v| v == "1")
}

/// A fresh temporary directory for one test: `graceful-test-NAME-PID`,
/// removed when the returned guard is dropped (see [`TempDir`]).
pub fn temp_dir(name: &str) -> TempDir {
    let path = std::env::temp_dir().join(format!("graceful-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path)
        .unwrap_or_else(|e| panic!("creating the test directory {}: {e}", path.display()));
    TempDir { path }
}

/// Path of a binary built next to the test binary: `examples/NAME` or `NAME`.
pub fn built(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/test-HASH -> target/<profile>
    let profile = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let example = profile.join("examples").join(name);
    if example.exists() {
        return example;
    }
    profile.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tests_directory_is_removed_when_it_ends_and_when_it_fails() {
        let dir = temp_dir("unit-passed");
        std::fs::write(dir.join("file"), b"x").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        let path = dir.to_path_buf();
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists(), "{} left", path.display());

        let (tx, rx) = std::sync::mpsc::channel();
        let failed = std::thread::spawn(move || {
            let dir = temp_dir("unit-failed");
            tx.send(dir.to_path_buf()).unwrap();
            panic!("the test failed");
        })
        .join();
        assert!(failed.is_err());
        let path = rx.recv().unwrap();
        // Unless this run keeps failed tests' directories.
        if keeps(true, std::env::var_os("GRACEFUL_TEST_KEEP").as_deref()) {
            assert!(path.is_dir(), "{} not kept", path.display());
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            assert!(!path.exists(), "{} left", path.display());
        }
    }

    #[test]
    fn only_a_failed_tests_directory_is_kept_and_only_when_asked() {
        let one = Some(std::ffi::OsStr::new("1"));
        assert!(keeps(true, one));
        assert!(!keeps(false, one));
        assert!(!keeps(true, None));
        assert!(!keeps(true, Some(std::ffi::OsStr::new("0"))));
        assert!(!keeps(true, Some(std::ffi::OsStr::new(""))));
    }

    #[test]
    fn a_command_whose_output_is_larger_than_a_pipe_holds_runs_to_its_end() {
        let started = std::time::Instant::now();
        let (code, out, err) = run_bounded(std::process::Command::new("sh").arg("-c").arg(
            "head -c 300000 /dev/zero | tr '\\0' a; head -c 200000 /dev/zero | tr '\\0' b >&2",
        ));
        assert_eq!((code, out.len(), err.len()), (0, 300_000, 200_000));
        assert!(out.bytes().all(|b| b == b'a') && err.bytes().all(|b| b == b'b'));
        assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    }
}
