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

use std::path::PathBuf;
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
        "unshare" | "prlimit" | "taskset" => "apt-get install util-linux",
        "supervisord" | "supervisorctl" => "python3 -m pip install supervisor",
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

/// The application the integration tests drive (`src/bin/testapp.rs`).
pub fn testapp() -> PathBuf {
    built("testapp")
}

/// A fresh temporary directory for one test: `graceful-test-NAME-PID`.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("graceful-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
