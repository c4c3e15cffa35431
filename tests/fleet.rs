//! What a fleet behind a load balancer needs: the health handler
//! (`graceful::health`), and the lame-duck stop (`shutdown_delay`): on a
//! stop signal the service keeps accepting and serving for the delay while
//! `/readyz` says it is stopping, then drains; a second stop signal skips
//! the rest of the delay. In master and single mode.

use std::path::Path;
use std::time::{Duration, Instant};

use graceful_dev::http::get;
use graceful_dev::process::Service;
use graceful_dev::{testapp, TIMEOUT as T};
use nix::sys::signal::Signal;

/// One request on a new connection: its status, its head in lower case
/// (for header names), and its body.
fn request(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    let (status, head, body) = graceful_dev::http::request(addr, method, path).expect("request");
    (status, head.to_ascii_lowercase(), body)
}

/// The first `/readyz` answer that is not 200, polled (bounded): the stop's
/// log line is written by the master, and the worker it then tells may not
/// have heard yet.
fn not_ready(health: &str) -> (u16, String, String) {
    let deadline = Instant::now() + T;
    loop {
        let answer = request(health, "GET", "/readyz");
        if answer.0 != 200 {
            return answer;
        }
        assert!(Instant::now() < deadline, "/readyz still answers 200");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// testapp with the health handler on a second listener and the given
/// extra environment; returns the service, the app's and the health
/// handler's addresses.
fn service(envs: &[(&str, &str)]) -> (Service, String, String) {
    // Another address than the app's: "127.0.0.1:0" twice is one socket.
    let mut all = vec![("TESTAPP_HEALTH_ADDR", "127.0.0.2:0")];
    all.extend_from_slice(envs);
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &all);
    let app = service.addr_n(0, T);
    let health = service.addr_n(1, T);
    (service, app, health)
}

#[test]
fn the_health_handler_answers_livez_and_readyz_without_caching() {
    let (service, _, health) = service(&[]);
    service.ready_worker(1, T);
    for path in ["/livez", "/readyz"] {
        let (status, head, body) = request(&health, "GET", path);
        assert_eq!(status, 200, "{path}");
        assert!(head.contains("cache-control: no-store"), "{path}: {head}");
        assert_eq!(body, if path == "/livez" { "ok\n" } else { "ready\n" });
        let (status, _, body) = request(&health, "HEAD", path);
        assert_eq!((status, body.as_str()), (200, ""), "HEAD {path}");
    }
    assert_eq!(request(&health, "GET", "/other").0, 404);
    assert_eq!(request(&health, "POST", "/readyz").0, 405);
}

/// Sends `signal` to `pid`, and checks that for `delay` after it the
/// service still accepts and serves while `/readyz` says `stopping`; then
/// that it drains and exits 0, not before the delay is over.
fn serves_on_through_the_delay(
    mut service: Service,
    stopper: i32,
    app: &str,
    health: &str,
    delay: Duration,
) {
    let signalled = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(stopper), Signal::SIGTERM).unwrap();
    service.wait_line("shutdown_delay", T);
    let (status, head, body) = not_ready(health);
    assert_eq!((status, body.as_str()), (503, "stopping\n"));
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert_eq!(request(health, "GET", "/livez").0, 200);
    // New connections are still served while the delay lasts.
    let mut served = 0;
    while signalled.elapsed() < delay.mul_f32(0.8) {
        assert_eq!(get(app, "/").expect("served in the delay").0, 200);
        served += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(served > 5, "only {served} requests in the delay");
    let status = service.wait_exit(T);
    let took = signalled.elapsed();
    assert!(status.success(), "{}", service.log_text());
    assert!(
        took >= delay,
        "exited {took:?} after the signal, within the {delay:?} delay"
    );
    println!("{served} new connections served in the delay; exited {took:?} after SIGTERM");
}

#[test]
fn with_a_shutdown_delay_a_stop_serves_on_and_reports_stopping_then_drains() {
    let (service, app, health) = service(&[("GRACEFUL_SHUTDOWN_DELAY", "1500ms")]);
    service.ready_worker(1, T);
    let master = service.pid();
    serves_on_through_the_delay(service, master, &app, &health, Duration::from_millis(1500));
}

#[test]
fn in_single_mode_too() {
    let (service, app, health) = service(&[
        ("GRACEFUL_SHUTDOWN_DELAY", "1500ms"),
        ("GRACEFUL_MODE", "single"),
    ]);
    let process = service.ready("process", 1, T);
    serves_on_through_the_delay(service, process, &app, &health, Duration::from_millis(1500));
}

#[test]
fn a_second_stop_signal_skips_the_rest_of_the_delay() {
    let (mut service, _, health) = service(&[("GRACEFUL_SHUTDOWN_DELAY", "1h")]);
    service.ready_worker(1, T);
    service.signal(Signal::SIGTERM);
    service.wait_line("serving on for the 3600s shutdown_delay", T);
    assert_eq!(not_ready(&health).0, 503);
    service.signal(Signal::SIGTERM);
    // Bounded by T, far below the hour.
    assert!(service.wait_exit(T).success(), "{}", service.log_text());
    service.wait_line(
        "SIGTERM received again: the rest of the 3600s shutdown_delay is skipped",
        Duration::ZERO,
    );
}

/// testapp started with `GRACEFUL_SHUTDOWN_DELAY=delay`, which it must
/// refuse (exit 1): its log.
fn refused_with_shutdown_delay(delay: &str) -> String {
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("GRACEFUL_SHUTDOWN_DELAY", delay)],
    );
    assert_eq!(service.wait_exit(T).code(), Some(1));
    service.log_text()
}

#[test]
fn a_malformed_shutdown_delay_stops_the_start_naming_it() {
    let log = refused_with_shutdown_delay("5");
    assert!(
        log.contains(
            "invalid option shutdown_delay: GRACEFUL_SHUTDOWN_DELAY=\"5\" has no unit; write it \
             like \"5s\" or \"500ms\""
        ),
        "{log}"
    );
}

/// A delay past what an `Instant` can add made the master panic at the
/// stop ("overflow when adding duration to instant"), after serving
/// normally until then; now the start is refused, naming the variable.
#[test]
fn a_shutdown_delay_longer_than_a_year_stops_the_start_naming_it() {
    let log = refused_with_shutdown_delay("500000000000y");
    assert!(
        log.contains(
            "invalid option shutdown_delay: GRACEFUL_SHUTDOWN_DELAY=\"500000000000y\" is longer \
             than a year (365 days), the longest a duration option may be"
        ),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// The value after `key` on the first line of `text` that has it.
fn value_after<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?}"))
        .trim()
        .trim_matches('"')
}

/// Seconds in `"5s"` or `"20s"`.
fn seconds(text: &str) -> u64 {
    text.strip_suffix('s').unwrap().parse().unwrap()
}

#[test]
fn the_kubernetes_grace_period_covers_the_delay_and_the_drain_without_a_pre_stop_hook() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest =
        std::fs::read_to_string(root.join("examples/kubernetes/deployment.yaml")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/service.rs")).unwrap();
    let grace: u64 = value_after(&manifest, "terminationGracePeriodSeconds:")
        .parse()
        .unwrap();
    let env_delay = manifest
        .split("name: GRACEFUL_SHUTDOWN_DELAY")
        .nth(1)
        .map(|rest| seconds(value_after(rest, "value:")))
        .expect("GRACEFUL_SHUTDOWN_DELAY in the Deployment");
    let attribute = value_after(&example, "#[graceful::main(");
    let option = |name: &str| {
        let rest = attribute.split(&format!("{name} = \"")).nth(1).unwrap();
        seconds(&format!("{}s", rest.split("s\"").next().unwrap()))
    };
    let (code_delay, stop_timeout) = (option("shutdown_delay"), option("stop_timeout"));
    assert_eq!(
        env_delay, code_delay,
        "the Deployment and the example agree"
    );
    assert!(
        grace > env_delay + stop_timeout,
        "terminationGracePeriodSeconds {grace} must exceed shutdown_delay {env_delay} + \
         stop_timeout {stop_timeout}"
    );
    assert!(
        !manifest.contains("preStop:"),
        "the delay replaces a preStop sleep"
    );
    assert_eq!(
        value_after(manifest.split("readinessProbe:").nth(1).unwrap(), "path:"),
        "/readyz"
    );
    assert_eq!(
        value_after(manifest.split("livenessProbe:").nth(1).unwrap(), "path:"),
        "/livez"
    );
    let dockerfile = std::fs::read_to_string(root.join("examples/kubernetes/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("ENTRYPOINT [\"/service\""),
        "the exec form: the master is PID 1"
    );
}
