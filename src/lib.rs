//! Support for graceful's integration tests and benchmark: starting a
//! service binary and reading its lifecycle log, sending single requests, and
//! generating load that counts every failure by kind.

#![allow(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod load;
pub mod notify;
pub mod process;
pub mod tls;

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
