//! TLS listeners: HTTP/1.1 and h2 by ALPN to curl and to a rustls client,
//! certificate rotation by reload under load with zero failures, and broken
//! certificates rolled back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use graceful_dev::built;
use graceful_dev::http::curl;
use graceful_dev::load::{Load, Mode};
use graceful_dev::process::Service;
use graceful_dev::procfs::{fd_count, wait_gone};
use graceful_dev::temp_dir;
use graceful_dev::testapp;
use graceful_dev::tls::{fetch, TestCa, Volume};
use nix::sys::signal::Signal;

use graceful_dev::TIMEOUT as T;

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// testapp over TLS with these PEM files, on a free port.
fn tls_testapp(cert: &Path, key: &Path) -> Service {
    tls_testapp_with(cert, key, &[])
}

/// [`tls_testapp`] with more variables in its environment.
fn tls_testapp_with(cert: &Path, key: &Path, extra: &[(&str, &str)]) -> Service {
    let mut envs = vec![("TESTAPP_TLS_CERT", s(cert)), ("TESTAPP_TLS_KEY", s(key))];
    envs.extend_from_slice(extra);
    Service::start(&testapp(), &["127.0.0.1:0"], &envs)
}

#[test]
fn the_tls_example_speaks_http1_and_h2_to_curl_and_rustls() {
    let dir = temp_dir("tls-example");
    let ca = TestCa::new();
    let leaf = ca.leaf("example");
    let (cert, key) = leaf.write(&dir, "server");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();

    let service = Service::start(&built("tls"), &["127.0.0.1:0", s(&cert), s(&key)], &[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = curl(&[
            flag,
            "--cacert",
            s(&ca_file),
            "-w",
            "|%{http_version}",
            &format!("https://{addr}/world"),
        ]);
        assert_eq!(
            out,
            format!("Hello, port: {addr}, \"/world\"\n|{version}"),
            "curl {flag}"
        );
    }

    let socket: SocketAddr = addr.parse().unwrap();
    let client = ca.client_config();
    for (http2, alpn) in [(false, "http/1.1"), (true, "h2")] {
        let got = fetch(socket, &client, http2, "/rust").unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.alpn, alpn);
        assert_eq!(got.body, format!("Hello, port: {addr}, \"/rust\"\n"));
        assert_eq!(got.peer_cert, leaf.der);
    }

    // Plain HTTP on the TLS port is not answered as HTTP.
    assert!(!matches!(graceful_dev::http::get(&addr, "/"), Ok((200, _))));
}

#[test]
fn a_reload_serves_rotated_certificates_with_zero_failures() {
    let dir = temp_dir("tls-rotate");
    let ca = TestCa::new();
    let first = ca.leaf("first");
    let (cert, key) = first.write(&dir, "server");
    let service = tls_testapp(&cert, &key);
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    let worker1 = service.ready_worker(1, T);
    let client = ca.client_config();
    assert_eq!(
        fetch(addr, &client, false, "/").unwrap().peer_cert,
        first.der
    );

    let loads: Vec<Load> = Mode::ALL
        .into_iter()
        .map(|mode| Load::start_with(addr, mode, 2, "/", Some(client.clone())))
        .collect();
    for load in &loads {
        assert!(load.wait_progress(30, T));
    }

    let mut previous = worker1;
    for round in 0..3u64 {
        let leaf = ca.leaf(&format!("rotated-{round}"));
        leaf.write(&dir, "server");
        service.signal(Signal::SIGHUP);
        service.ready_worker(round + 2, T);
        assert!(wait_gone(previous, T), "the old worker drained");
        for http2 in [false, true] {
            let got = fetch(addr, &client, http2, "/pid").unwrap();
            assert_eq!(got.peer_cert, leaf.der, "round {round}, h2 {http2}");
            previous = got.body.trim().parse().unwrap();
        }
        for load in &loads {
            assert!(load.wait_progress(30, T));
        }
    }
    for (mode, load) in Mode::ALL.into_iter().zip(loads) {
        let report = load.stop();
        eprintln!("{}: {}", mode.name(), report.summary());
        assert!(report.ok > 0, "{}: {}", mode.name(), report.summary());
        report.assert_clean(mode.name());
    }
}

#[test]
fn a_broken_certificate_is_rolled_back_and_named() {
    let dir = temp_dir("tls-broken");
    let ca = TestCa::new();
    let good = ca.leaf("good");
    let (cert, key) = good.write(&dir, "server");
    let service = tls_testapp(&cert, &key);
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    let serving = service.ready_worker(1, T);
    let client = ca.client_config();
    let load = Load::start_with(addr, Mode::NewConnection, 2, "/", Some(client.clone()));
    assert!(load.wait_progress(20, T));

    let other = ca.leaf("other");
    type BreakIt<'a> = Box<dyn Fn() + 'a>;
    let cases: [(&str, BreakIt, String); 3] = [
        (
            "garbage",
            Box::new(|| std::fs::write(&cert, "not a certificate\n").unwrap()),
            format!("TLS file {cert:?}: no PEM certificate found"),
        ),
        (
            "mismatch",
            Box::new(|| std::fs::write(&cert, &other.cert_pem).unwrap()),
            format!("TLS file {key:?}: the private key does not match the certificate in {cert:?}"),
        ),
        (
            "missing",
            Box::new(|| std::fs::remove_file(&key).unwrap()),
            format!("TLS file {key:?}: No such file or directory"),
        ),
    ];
    for (n, (name, break_it, reason)) in cases.iter().enumerate() {
        break_it();
        service.signal(Signal::SIGHUP);
        let line = service.wait_line_n("reload failed", n, T);
        assert!(line.contains(reason.as_str()), "{name}: {line}");
        assert!(line.contains(&format!("(pid {serving})")), "{name}: {line}");
        assert!(load.wait_progress(20, T));
        let got = fetch(addr, &client, true, "/pid").unwrap();
        assert_eq!(got.peer_cert, good.der, "{name}: the old certificate");
        assert_eq!(got.body.trim(), serving.to_string(), "{name}");
    }
    let report = load.stop();
    report.assert_clean("load");
}

#[test]
fn a_broken_certificate_at_first_start_is_an_error_naming_the_file() {
    let dir = temp_dir("tls-first");
    let cert = dir.join("missing.crt");
    let key = dir.join("missing.key");
    let mut service = tls_testapp(&cert, &key);
    let status = service.wait_exit(T);
    assert_eq!(status.code(), Some(1));
    let line = service.wait_line("failed to start", T);
    assert!(
        line.contains(&format!("TLS file {cert:?}: No such file or directory")),
        "{line}"
    );
}

#[test]
fn a_handshake_in_progress_counts_in_the_drain_and_gets_idle_grace() {
    let dir = temp_dir("tls-handshake");
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("server").write(&dir, "server");
    let mut service = tls_testapp(&cert, &key);
    let addr = service.addr(T);
    let worker = service.ready_worker(1, T);
    // A client that connects and never sends its ClientHello. Wait (bounded)
    // until the worker has accepted it: one more open descriptor.
    let fds = fd_count(worker);
    let silent = std::net::TcpStream::connect(&addr).unwrap();
    let deadline = std::time::Instant::now() + T;
    while fd_count(worker) <= fds {
        assert!(std::time::Instant::now() < deadline, "never accepted");
        std::thread::sleep(Duration::from_millis(5));
    }

    let began = std::time::Instant::now();
    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit(T).success());
    let line = service.wait_line("drained", T);
    // The silent connection was counted and held the drain for idle_grace.
    assert!(line.contains("drained 1 connection(s)"), "{line}");
    let ms: u64 = line
        .split(" in ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms >= 450, "{line}");
    assert!(line.contains(", 0 cut"), "{line}");
    // idle_grace (500 ms), not the 10 s handshake timeout nor stop_timeout.
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    drop(silent);
}

#[test]
fn listen_and_serve_tls_is_a_drop_in_that_reloads() {
    let dir = temp_dir("tls-dropin");
    let ca = TestCa::new();
    let leaf = ca.leaf("dropin");
    let (cert, key) = leaf.write(&dir, "server");
    let program = PathBuf::from(env!("CARGO_BIN_EXE_tls_dropin"));
    let service = Service::start(&program, &["127.0.0.1:0", s(&cert), s(&key)], &[]);
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    let first = service.ready_worker(1, T);
    let client = ca.client_config();
    for http2 in [false, true] {
        let got = fetch(addr, &client, http2, "/").unwrap();
        assert_eq!(got.body.trim(), first.to_string());
        assert_eq!(got.peer_cert, leaf.der);
    }
    service.signal(Signal::SIGHUP);
    let second = service.ready_worker(2, T);
    assert!(wait_gone(first, T));
    let got = fetch(addr, &client, true, "/").unwrap();
    assert_eq!(got.body.trim(), second.to_string());
}

#[test]
fn a_certificate_rotated_by_a_data_swap_is_served_with_no_signal_and_no_failure() {
    let dir = temp_dir("tls-watch");
    let ca = TestCa::new();
    let first = ca.leaf("first");
    let mut volume = Volume::new(&dir, &first.cert_pem, &first.key_pem);
    let service = tls_testapp_with(
        &volume.dir.join("tls.crt"),
        &volume.dir.join("tls.key"),
        &[("GRACEFUL_WATCH_PATHS", s(&volume.dir))],
    );
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    service.ready_worker(1, T);
    service.wait_line(&format!("watching {} to reload", volume.dir.display()), T);
    let client = ca.client_config();
    assert_eq!(
        fetch(addr, &client, false, "/").unwrap().peer_cert,
        first.der
    );
    let load = Load::start_with(addr, Mode::NewConnection, 2, "/", Some(client.clone()));
    assert!(load.wait_progress(20, T));
    // Rotated: no signal is sent.
    let second = ca.leaf("second");
    volume.swap(&second.cert_pem, &second.key_pem);
    service.wait_line(
        &format!("reload started ({} changed)", volume.dir.display()),
        T,
    );
    service.ready_worker(2, T);
    assert!(load.wait_progress(20, T));
    for http2 in [false, true] {
        assert_eq!(
            fetch(addr, &client, http2, "/").unwrap().peer_cert,
            second.der
        );
    }
    // A broken certificate: the reload fails, names the file, and the
    // second certificate is still served.
    volume.swap("not a certificate", &second.key_pem);
    let failed = service.wait_line("reload failed", T);
    assert!(failed.contains("TLS file"), "{failed}");
    assert!(failed.contains("tls.crt"), "{failed}");
    assert!(load.wait_progress(20, T));
    assert_eq!(
        fetch(addr, &client, true, "/").unwrap().peer_cert,
        second.der
    );
    let report = load.stop();
    eprintln!(
        "new TLS connections through a rotation and a failed one: {}",
        report.summary()
    );
    report.assert_clean("new connection over TLS");
    assert_eq!(service.count_lines("reload started"), 2);
    drop(service);
}

#[test]
fn a_client_that_stalls_its_handshake_is_closed_at_a_header_timeout_shorter_than_10s() {
    use std::io::Read;
    let dir = temp_dir("tls-stalled-handshake");
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("server").write(&dir, "server");
    let service = tls_testapp_with(&cert, &key, &[("TESTAPP_HEADER_TIMEOUT_MS", "1000")]);
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    service.ready_worker(1, T);
    // Connects and never sends its ClientHello: as a connection that sends
    // nothing, it has the header timeout, not the 10 s handshake bound.
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(T)).unwrap();
    let began = std::time::Instant::now();
    let read = silent.read(&mut [0u8; 16]);
    let took = began.elapsed();
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?} after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // A client that completes its handshake is served as before.
    let client = ca.client_config();
    assert!(fetch(addr, &client, false, "/").is_ok());
}
