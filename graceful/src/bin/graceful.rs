//! The `graceful` command: `graceful reload [SOCKET]` asks a running
//! service's master to reload and waits for the outcome; `graceful status
//! [--json] [SOCKET]` prints its state. See [`graceful::ctl`].

#[cfg(unix)]
fn main() -> std::process::ExitCode {
    graceful::ctl::main()
}

#[cfg(not(unix))]
fn main() -> std::process::ExitCode {
    use std::io::Write;
    // Not `eprintln!`, which panics when standard error cannot be written.
    let _ = writeln!(
        std::io::stderr(),
        "graceful: the control socket needs a Unix system"
    );
    std::process::ExitCode::from(2)
}
