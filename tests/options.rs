//! Every option of `#[graceful::main]` takes effect at run time, not only in
//! the expansion: `src/bin/all_options.rs` sets each to a value other than
//! its default, and this test sees each one in the service's behaviour.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use graceful_dev::http::get;
use graceful_dev::process::Service;
use graceful_dev::{built, temp_dir, TIMEOUT as T};
use nix::sys::signal::Signal;

#[test]
fn every_attribute_option_takes_effect() {
    let dir = temp_dir("all-options");
    let hang = dir.join("hang");
    let hang_env = hang.to_str().unwrap().to_string();
    let mut service = Service::start_with(
        &built("all_options"),
        &["127.0.0.1:0"],
        &[("ALL_OPTIONS_HANG_IF_EXISTS", &hang_env)],
        |command| {
            command.current_dir(&dir);
        },
    );
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);

    // reload = [SIGUSR2], stop = [SIGTERM, SIGQUIT]
    let started = service.wait_line("master started", T);
    assert!(
        started.ends_with("reload with SIGUSR2, stop with SIGTERM, SIGQUIT"),
        "{started}"
    );
    // pid_file = "all-options.pid", relative to the working directory
    let pid_file = dir.join("all-options.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        service.pid().to_string()
    );
    // worker_threads = 3
    assert_eq!(get(&addr, "/threads").unwrap().1.trim(), "3");

    // idle_grace = "200ms": an idle keep-alive connection keeps the old
    // worker for 200 ms after the new one is ready, not the default 500 ms.
    let mut idle = TcpStream::connect(&addr).unwrap();
    write!(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    assert!(idle.read(&mut buf).unwrap() > 0);
    service.signal(Signal::SIGUSR2);
    let (_, ready) = service.wait_line_n_at("reload finished", 0, T);
    let exit = format!("worker 1 (pid {first}) exited with status 0 after draining");
    let (_, gone) = service.wait_line_n_at(&exit, 0, T);
    let kept = gone.duration_since(ready);
    println!("idle_grace: the old worker exited {kept:?} after the new one was ready");
    assert!(
        kept >= Duration::from_millis(190) && kept < Duration::from_millis(450),
        "kept {kept:?}"
    );
    assert!(service
        .log_text()
        .contains("reload started (signal SIGUSR2)"));

    // ready_timeout = "1500ms"
    std::fs::write(&hang, b"").unwrap();
    service.signal(Signal::SIGUSR2);
    let failed = service.wait_line("reload failed", T);
    assert!(
        failed.contains("was not ready within the 1.5s ready_timeout"),
        "{failed}"
    );

    // stop_timeout = "3s", and SIGQUIT stops
    service.signal(Signal::SIGQUIT);
    let stopping = service.wait_line("stopping (SIGQUIT)", T);
    assert!(stopping.ends_with("for up to 3s"), "{stopping}");
    assert_eq!(service.wait_exit(T).code(), Some(0));
    assert!(!pid_file.exists(), "the PID file is removed on stop");
    drop(service);
    std::fs::remove_dir_all(dir).unwrap();
}
