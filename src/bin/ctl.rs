//! The `graceful` command, as the integration tests run it: the same
//! `graceful::ctl::main()` that graceful-reload's `graceful` binary is
//! (binaries of a dependency are not built for this package's tests).

fn main() -> std::process::ExitCode {
    graceful::ctl::main()
}
