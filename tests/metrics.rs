//! Metrics in the Prometheus text format, from `graceful metrics` over the
//! control socket and from the `graceful::metrics` handler, checked by
//! `promtool check metrics` (Debian package `prometheus`) and by value after
//! reloads, a failed reload and a drain.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use graceful_dev::http::get;
use graceful_dev::process::Service;
use graceful_dev::{graceful_command, temp_dir, testapp, TIMEOUT as T};
use nix::sys::signal::Signal;

/// `promtool check metrics` on `text`: its exit status and what it said.
fn promtool(text: &str) -> (i32, String) {
    let mut child = Command::new(graceful_dev::tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), said)
}

/// The value of the sample `name` (with its labels) in `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn graceful_metrics_and_the_handler_pass_promtool_and_count_what_happened() {
    let dir = temp_dir("metrics");
    let socket = dir.join("control.sock");
    let fail = dir.join("fail");
    // A build whose label value must be escaped.
    let build = dir.join("build");
    std::fs::write(&build, "app \"2\" \\ 1").unwrap();
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[
            ("GRACEFUL_CONTROL_SOCKET", socket.to_str().unwrap()),
            ("TESTAPP_FAIL_IF_EXISTS", fail.to_str().unwrap()),
            ("TESTAPP_BUILD_FILE", build.to_str().unwrap()),
        ],
    );
    let addr = service.addr(T);
    service.ready_worker(1, T);
    // A keep-alive connection the first worker drains at the reload.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    write!(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    idle.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 512];
    assert!(idle.read(&mut buf).unwrap() > 0);
    let closer = std::thread::spawn(move || {
        let _ = idle.read_to_end(&mut Vec::new());
    });
    service.signal(Signal::SIGHUP);
    let second = service.ready_worker(2, T);
    service.wait_line("worker 1", T);
    service.wait_line("exited with status 0 after draining", T);
    closer.join().unwrap();
    // A reload that fails.
    std::fs::write(&fail, "exit").unwrap();
    service.signal(Signal::SIGHUP);
    service.wait_line("reload failed", T);
    std::fs::remove_file(&fail).unwrap();

    let (code, text, err) = graceful_command(&["metrics", socket.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (status, said) = promtool(&text);
    assert_eq!(status, 0, "promtool: {said}\n{text}");
    println!("graceful metrics:\n{text}promtool check metrics: exit {status} {said}");
    assert_eq!(
        sample(
            &text,
            &format!(
                "graceful_info{{version=\"0.1.0\",pid=\"{}\"}}",
                service.pid()
            )
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "graceful_reloads_total{outcome=\"succeeded\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "graceful_reloads_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(sample(&text, "graceful_worker_starts_total"), 3.0);
    assert_eq!(sample(&text, "graceful_worker_crashes_total"), 0.0);
    assert_eq!(sample(&text, "graceful_workers{state=\"serving\"}"), 1.0);
    assert_eq!(
        sample(
            &text,
            "graceful_worker_build_info{generation=\"2\",state=\"serving\",version=\"app \\\"2\\\" \\\\ 1\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "graceful_workers{state=\"draining\"}"), 0.0);
    assert!(
        sample(&text, "graceful_connections_drained_total") >= 1.0,
        "{text}"
    );
    assert_eq!(sample(&text, "graceful_connections_cut_total"), 0.0);
    assert_eq!(sample(&text, "graceful_reload_duration_seconds_count"), 1.0);
    assert_eq!(
        sample(
            &text,
            "graceful_reload_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        1.0
    );
    // The serving worker answered the master's check just now.
    let connections = format!("graceful_open_connections{{generation=\"{}\"}}", 2);
    assert!(sample(&text, &connections) >= 0.0);

    // The handler, in the worker, asks the master: the same service.
    let (status, body) = get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    let (code, said) = promtool(&body);
    assert_eq!(code, 0, "promtool: {said}\n{body}");
    assert_eq!(
        sample(&body, "graceful_reloads_total{outcome=\"failed\"}"),
        1.0
    );
    // This request's connection is open while it is answered.
    assert!(sample(&body, &connections) >= 1.0, "{body}");
    assert_eq!(get(&addr, "/pid").unwrap().1.trim(), second.to_string());

    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit(T).success());
}

#[test]
fn in_single_mode_the_handler_answers_for_the_process_itself() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[("GRACEFUL_MODE", "single")]);
    let addr = service.addr(T);
    let process = service.ready("process", 1, T);
    let (status, body) = get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    let (code, said) = promtool(&body);
    assert_eq!(code, 0, "promtool: {said}\n{body}");
    assert_eq!(
        sample(
            &body,
            &format!("graceful_info{{version=\"0.1.0\",pid=\"{process}\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(&body, "graceful_open_connections{generation=\"1\"}"),
        1.0
    );
    assert!(
        !body.contains("graceful_reloads_total"),
        "no master counts: {body}"
    );
}
