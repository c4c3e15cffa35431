//! Hostile clients, hostile hosts: what an attacker or a broken environment
//! can do to a running service, reproduced against real processes, and the
//! behaviour that must hold. Timeouts come from options set small, never
//! from sleeping.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use graceful_dev::http::get;
use graceful_dev::process::Service;
use graceful_dev::procfs::{is_alive, wait_gone};
use graceful_dev::{testapp, TIMEOUT as T};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn nothing_a_sigkilled_worker_started_outlives_it() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let worker = service.ready_worker(1, T);
    let child: i32 = get(&addr, "/child").unwrap().1.trim().parse().unwrap();
    assert!(is_alive(child));
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    service.ready_worker(2, T);
    assert!(
        wait_gone(child, Duration::from_secs(5)),
        "process {child}, started by the killed worker {worker}, is still running"
    );
}

#[test]
fn nothing_a_worker_started_outlives_the_service() {
    let mut service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);
    let child: i32 = get(&addr, "/child").unwrap().1.trim().parse().unwrap();
    service.stop_cleanly(T);
    assert!(
        wait_gone(child, Duration::from_secs(5)),
        "process {child} outlived the service"
    );
}

#[test]
fn a_stray_role_marker_is_ignored_and_reloads_and_stops_work() {
    let mut service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[
            ("GRACEFUL_ROLE", "successor"),
            ("GRACEFUL_INHERIT", "garbage"),
        ],
    );
    let addr = service.addr(T);
    service.ready_worker(1, T);
    service.wait_line("ignoring GRACEFUL_ROLE from the environment", T);
    service.wait_line("ignoring GRACEFUL_INHERIT from the environment", T);
    service.signal(Signal::SIGHUP);
    service.wait_line("reload finished", T);
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    let began = std::time::Instant::now();
    service.stop_cleanly(T);
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "took {:?}",
        began.elapsed()
    );
}

/// Lets this test process open more sockets than a default soft limit.
fn raise_own_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[test]
fn silent_connections_are_closed_and_a_normal_client_is_served() {
    raise_own_open_file_limit();
    // As under systemd's default soft limit: 1024 descriptors, 1,100
    // clients that connect and send nothing.
    let testapp = testapp();
    let service = Service::start(
        &graceful_dev::tool("prlimit"),
        &["--nofile=1024", testapp.to_str().unwrap(), "127.0.0.1:0"],
        &[("TESTAPP_HEADER_TIMEOUT_MS", "1000")],
    );
    let addr = service.addr(T);
    service.ready_worker(1, T);
    let mut silent: Vec<TcpStream> = (0..1100)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // A normal client is served once the header timeout has closed the
    // connections ahead of it.
    let began = Instant::now();
    let (status, _) = get(&addr, "/").unwrap();
    assert_eq!(status, 200);
    println!("a normal client was served after {:?}", began.elapsed());
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    // And every silent connection is closed by the server, none left open.
    let mut buf = [0u8; 16];
    for (i, conn) in silent.iter_mut().enumerate() {
        conn.set_read_timeout(Some(T)).unwrap();
        match conn.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!(
                "silent connection {i}: {other:?}; the server's side of it: {}; \
                 the kernel's listen overflows: {}; the service's log:\n{}",
                server_side(&addr, conn.local_addr().unwrap()),
                listen_overflows(),
                service.log_text()
            ),
        }
    }
    println!(
        "all 1100 silent connections closed after {:?}",
        began.elapsed()
    );
    assert!(service
        .log_text()
        .contains("connections open, the most this process serves at once"));
}

/// The fields of the row of `/proc/net/tcp` for the server's side of the
/// connection from `client` to `server` (the fourth, `01`, is established;
/// the fifth the timer), if the server's kernel has one.
fn server_row(server: &str, client: std::net::SocketAddr) -> Option<Vec<String>> {
    let port: u16 = server.rsplit(':').next().unwrap().parse().unwrap();
    let local = format!("0100007F:{port:04X}");
    let remote = format!("0100007F:{:04X}", client.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[1] == local && f[2] == remote)
}

/// For a failure message: the server's side of the connection from
/// `client`, or that the server has none, which means its kernel never
/// completed the handshake (and no process ever accepted it).
fn server_side(server: &str, client: std::net::SocketAddr) -> String {
    server_row(server, client).map_or_else(
        || format!("no socket on {server} for {client}"),
        |row| row.join(" "),
    )
}

/// For a failure message: the kernel's counts of handshakes dropped because
/// a listener's accept queue was full, since boot.
fn listen_overflows() -> String {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let rows: Vec<Vec<&str>> = netstat
        .lines()
        .filter(|l| l.starts_with("TcpExt:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let [names, values] = rows.as_slice() else {
        return "unknown".into();
    };
    names
        .iter()
        .zip(values)
        .filter(|(name, _)| name.starts_with("Listen"))
        .map(|(name, value)| format!("{name} {value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The test app on a port of its own, with these header and idle timeouts
/// (milliseconds).
fn testapp_with_timeouts(header_ms: &str, idle_ms: &str) -> Service {
    Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[
            ("TESTAPP_HEADER_TIMEOUT_MS", header_ms),
            ("TESTAPP_IDLE_TIMEOUT_MS", idle_ms),
        ],
    )
}

/// An HTTP/2 connection to `addr` that has made one request, answered 200:
/// its local address, its sender (the client closes the connection once the
/// sender is dropped), and its task, which ends when the connection does.
async fn http2_one_request(
    addr: &str,
) -> (
    std::net::SocketAddr,
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client = stream.local_addr().unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    http2_get(&mut sender, addr, "/").await;
    (client, sender, conn)
}

/// How long `conn` stays open from now; it must close within the test's
/// bound.
async fn time_until_closed(
    conn: &mut tokio::task::JoinHandle<Result<(), hyper::Error>>,
) -> Duration {
    let idle = Instant::now();
    tokio::time::timeout(T, conn)
        .await
        .expect("the idle connection stays open")
        .ok();
    idle.elapsed()
}

/// A connection closed by an idle timeout of 1 s: not before it, and not
/// long after.
fn assert_closed_by_the_idle_timeout(took: Duration) {
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn a_partial_http2_preface_or_an_idle_http2_connection_is_closed() {
    let (_service, addr, runtime) = serving_with_an_idle_timeout_of_1s();
    // Half the preface, then nothing.
    let mut partial = TcpStream::connect(&addr).unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    partial.set_read_timeout(Some(T)).unwrap();
    let began = Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(partial.read(&mut buf).unwrap_or(0), 0);
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    // An HTTP/2 connection that made one request, then idles: GOAWAY and
    // closed after the idle timeout.
    let took = runtime.block_on(async {
        let (_, _sender, mut conn) = http2_one_request(&addr).await;
        time_until_closed(&mut conn).await
    });
    println!("an idle HTTP/2 connection was closed after {took:?}");
    assert_closed_by_the_idle_timeout(took);
}

/// A request on `sender`'s connection to `addr`, answered 200.
async fn http2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    addr: &str,
    path: &str,
) {
    let response = sender.send_request(get_request(addr, path)).await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
}

/// A GET of `path` from `addr`, for an HTTP/2 sender.
fn get_request(addr: &str, path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap()
}

/// The test app with header and idle timeouts of 1 s, its worker ready:
/// the service, its address, and a runtime for a client.
fn serving_with_an_idle_timeout_of_1s() -> (Service, String, tokio::runtime::Runtime) {
    let service = testapp_with_timeouts("1000", "1000");
    let addr = service.addr(T);
    service.ready_worker(1, T);
    (service, addr, tokio::runtime::Runtime::new().unwrap())
}

#[test]
fn a_busy_connection_outlives_the_idle_timeout_and_is_closed_once_idle() {
    // Each wait below is shorter than the idle timeout, and the whole test
    // longer: the connection stays open only if the end of each request
    // pushes the idle deadline back, and a request being handled holds it.
    let (_service, addr, runtime) = serving_with_an_idle_timeout_of_1s();
    let took = runtime.block_on(async {
        let (_, mut sender, mut conn) = http2_one_request(&addr).await;
        // Handled for twice the idle timeout.
        http2_get(&mut sender, &addr, "/slow?ms=2000").await;
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            http2_get(&mut sender, &addr, "/pid").await;
        }
        assert!(!conn.is_finished(), "the busy connection was closed");
        time_until_closed(&mut conn).await
    });
    println!("a connection busy for 4.4 s was closed {took:?} after its last request");
    assert_closed_by_the_idle_timeout(took);
}

#[test]
fn a_cancelled_request_does_not_keep_an_http2_connection_open() {
    // A client that starts a long request and resets its stream: the
    // connection is idle from then on, and the idle timeout must close it,
    // not wait for a request that will never end.
    let (_service, addr, runtime) = serving_with_an_idle_timeout_of_1s();
    let took = runtime.block_on(async {
        let (_, mut sender, mut conn) = http2_one_request(&addr).await;
        let pending = sender.send_request(get_request(&addr, "/slow?ms=60000"));
        // Dropped unanswered: the client resets the stream.
        let cancelled = tokio::time::timeout(Duration::from_millis(300), pending).await;
        assert!(cancelled.is_err(), "the slow request was answered");
        time_until_closed(&mut conn).await
    });
    println!("an HTTP/2 connection whose only request was cancelled was closed {took:?} later");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_kept_alive_connection_whose_next_request_head_trickles_is_closed_at_the_header_timeout() {
    // The idle timeout is long: only the header timeout can close this
    // connection within the wait below.
    let service = testapp_with_timeouts("1000", "60000");
    let addr = service.addr(T);
    service.ready_worker(1, T);
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = conn.read(&mut buf).expect("the first response");
        assert!(n > 0, "closed before the first response");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    // The next request head, a byte every 200 ms: never complete.
    let began = Instant::now();
    let head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Trickle: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for byte in head.iter().cycle().take(100) {
        if conn.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        match conn.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            // The rest of the first response, if any.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let took = began.elapsed();
    println!("a trickled request head was cut after {took:?}");
    assert!(closed, "still open after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// The TCP keep-alive timer of the server's end of the connection from
/// `client` (`/proc/net/tcp`: timer kind 2 is keep-alive), in seconds, or
/// `None` when no keep-alive timer runs. Data not yet acknowledged shows
/// its retransmission timer instead: that passes within a round trip.
fn server_keepalive_timer(server: &str, client: std::net::SocketAddr) -> Option<f64> {
    let began = Instant::now();
    loop {
        let row = server_row(server, client).unwrap_or_else(|| {
            panic!(
                "no socket on {server} for {client} in\n{}",
                std::fs::read_to_string("/proc/net/tcp").unwrap_or_default()
            )
        });
        let (kind, when) = row[5].split_once(':').unwrap();
        if kind != "01" || began.elapsed() > T {
            return (kind == "02").then(|| u64::from_str_radix(when, 16).unwrap() as f64 / 100.0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn http2_connections_have_the_kernel_probe_for_a_vanished_peer_and_http1_ones_do_not() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (client, _sender, conn) = http2_one_request(&addr).await;
        // Probes start after 20 s of silence (the timer is in ticks of
        // 10 ms, so a little under).
        let timer = server_keepalive_timer(&addr, client);
        assert!(
            timer.is_some_and(|t| t > 15.0 && t <= 20.0),
            "HTTP/2 keep-alive timer: {timer:?}"
        );
        conn.abort();
    });
    let mut http1 = TcpStream::connect(&addr).unwrap();
    http1.set_read_timeout(Some(T)).unwrap();
    http1
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(http1.read(&mut buf).unwrap() > 0);
    let timer = server_keepalive_timer(&addr, http1.local_addr().unwrap());
    assert_eq!(timer, None, "an HTTP/1 connection");
}

#[test]
fn draining_workers_are_bounded_and_the_oldest_is_cut() {
    let service = Service::start(
        &testapp(),
        &["127.0.0.1:0"],
        &[("TESTAPP_MAX_DRAINING", "1")],
    );
    let addr = service.addr(T);
    // Each generation holds a long request when it is replaced. Right after
    // a reload the old worker may still accept a connection or two: send
    // requests until one starts on the new worker.
    let mut held = Vec::new();
    let mut started = 0;
    for generation in 1..=3u64 {
        let worker = service.ready_worker(generation, T);
        loop {
            let addr = addr.clone();
            held.push(std::thread::spawn(move || get(&addr, "/slow?ms=20000")));
            let line = service.wait_line_n("slow request started", started, T);
            started += 1;
            if line.ends_with(&format!("in pid {worker}")) {
                break;
            }
        }
        if generation < 3 {
            service.signal(Signal::SIGHUP);
        }
    }
    // Worker 3 serves and worker 2 drains; worker 1 was cut when worker 3
    // became ready, instead of a third process piling up.
    service.wait_line(
        "with SIGKILL: more than max_draining (1) workers were draining (1 cut so far)",
        T,
    );
    let cut = service.wait_line("killing worker 1 (pid", T);
    assert!(cut.contains("more than max_draining"), "{cut}");
    service.wait_line("was killed by SIGKILL after draining", T);
    // Workers 2 and 3 are left. Once, beside two busy loops, a third live
    // child was seen at this moment and not at the next look: it is shown
    // (its /proc stat and command line) and waited for, within bounds, so
    // that a process that stays is still a failure.
    let began = std::time::Instant::now();
    let mut children = graceful_dev::procfs::children_of(service.pid());
    while children.len() != 2 && began.elapsed() < T {
        for child in &children {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            println!(
                "child {child}: {stat} {:?}",
                String::from_utf8_lossy(&cmdline)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
        children = graceful_dev::procfs::children_of(service.pid());
    }
    assert_eq!(children.len(), 2, "{children:?}\n{}", service.log_text());
    drop(service);
    for request in held {
        let _ = request.join();
    }
}

#[test]
fn started_through_path_a_switched_symlink_is_followed_at_reload() {
    let dir = graceful_dev::temp_dir("through-path");
    let (bin, releases) = (dir.join("bin"), dir.join("releases"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&releases).unwrap();
    for release in ["1", "2"] {
        graceful_dev::copy_executable(&testapp(), &releases.join(release));
    }
    std::os::unix::fs::symlink(releases.join("1"), bin.join("app")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let service = Service::start(
        std::path::Path::new("app"),
        &["127.0.0.1:0"],
        &[("PATH", &path)],
    );
    let first = service.ready_worker(1, T);
    let started = service.wait_line("master started", T);
    assert!(
        started.contains(&format!("executable {}", bin.join("app").display())),
        "{started}"
    );
    let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe(first), releases.join("1"));
    // A deploy: a new symlink renamed over the old one.
    std::os::unix::fs::symlink(releases.join("2"), bin.join("app.new")).unwrap();
    std::fs::rename(bin.join("app.new"), bin.join("app")).unwrap();
    service.signal(Signal::SIGHUP);
    let second = service.ready_worker(2, T);
    assert_eq!(exe(second), releases.join("2"));
    drop(service);
}

#[test]
fn sigusr2_does_not_kill_the_master_and_sigquit_stops_it_properly() {
    let mut service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);
    service.signal(Signal::SIGUSR2);
    service.wait_line(
        "received SIGUSR2, which is neither a reload nor a stop signal here; ignored",
        T,
    );
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    service.signal(Signal::SIGQUIT);
    service.wait_line("stopping (SIGQUIT): draining 1 worker(s)", T);
    assert_eq!(service.wait_exit(T).code(), Some(0));
}

#[test]
fn a_stalled_stderr_blocks_neither_requests_nor_signals() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = graceful_dev::temp_dir("stalled-stderr");
    let fifo = dir.join("stderr");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A reader that holds the FIFO open and reads nothing: writes fill the
    // pipe's buffer and then would block.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let sock = dir.join("app.sock");
    let control = dir.join("control.sock");
    let child = std::process::Command::new(testapp())
        .arg(format!("unix:{}", sock.display()))
        .env("GRACEFUL_CONTROL_SOCKET", &control)
        .env("TESTAPP_CHECK_DELAY_MS", "1000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(writer)
        .spawn()
        .unwrap();
    let master = Pid::from_raw(child.id() as i32);
    // Ended by its PID whatever happens; its workers follow it (EOF).
    struct Ends(std::process::Child);
    impl Drop for Ends {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Ends(child);
    let ask = |path: &str| -> String {
        let answer = || -> std::io::Result<String> {
            let mut stream = std::os::unix::net::UnixStream::connect(&sock)?;
            stream.set_read_timeout(Some(T))?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        };
        answer().unwrap_or_else(|e| format!("error: {e}"))
    };
    let deadline = Instant::now() + T;
    while !ask("/pid").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the service never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each handler panic writes a log line: far more than the pipe holds.
    // Every request is still answered, promptly.
    let began = Instant::now();
    for i in 0..1500 {
        let answer = ask("/panic");
        assert!(
            answer.starts_with("HTTP/1.1 500"),
            "request {i}: {answer:?}"
        );
    }
    println!("1500 panicking requests answered in {:?}", began.elapsed());
    // The master logs too, and must not block: a reload, then a stop.
    let first = ask("/pid");
    kill(master, Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + T;
    while ask("/pid") == first {
        assert!(Instant::now() < deadline, "the reload never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Room again. The master upgrades itself in place after the reload,
    // once its new executable has answered a check held for 1 s: the pipe
    // is drained meanwhile, so the lines the old image could not write are
    // reported by the new image only if they are carried across the exec.
    let mut drained = Vec::new();
    let _ = reader.read_to_end(&mut drained);
    let deadline = Instant::now() + T;
    loop {
        let (_, status, _) = graceful_dev::graceful_command(&["status", control.to_str().unwrap()]);
        if status.contains("1 upgrade(s) in place") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the master never upgraded:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next line says how many could not be written.
    kill(master, Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + T;
    let mut text = String::new();
    while !text.contains("could not be written") {
        assert!(Instant::now() < deadline, "no count of lost lines:\n{text}");
        let mut more = Vec::new();
        let _ = reader.read_to_end(&mut more);
        text.push_str(&String::from_utf8_lossy(&more));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Stalled again? Stop anyway, promptly.
    kill(master, Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "SIGTERM did not stop the master within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_worker_out_of_file_descriptors_backs_off_and_a_reload_serves_the_client_it_could_not_accept() {
    let mut service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    let first = service.ready_worker(1, T);
    // As a handler that leaks descriptors leaves it: every one the worker
    // could open is open. Standard input, output and error fill a limit of
    // 3, so the next accept fails with EMFILE.
    let (code, out, err) = graceful_dev::run_bounded(
        std::process::Command::new(graceful_dev::tool("prlimit"))
            .arg(format!("--pid={first}"))
            .arg("--nofile=3:3"),
    );
    assert_eq!(code, 0, "prlimit: {out}{err}");
    let mut client = TcpStream::connect(&addr).unwrap();
    client.set_read_timeout(Some(T)).unwrap();
    client
        .write_all(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    service.wait_line("accept failed: Too many open files", T);
    // It waits between tries rather than spinning on a listener that stays
    // readable: a spinning worker runs for the whole second.
    let before = graceful_dev::procfs::run_time(first);
    let began = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let ran = graceful_dev::procfs::run_time(first) - before;
    assert!(
        ran < Duration::from_millis(200),
        "the worker ran {ran:?} in {:?} of failing accepts",
        began.elapsed()
    );
    assert_eq!(
        service.count_lines("accept failed"),
        1,
        "{}",
        service.log_text()
    );
    // The client waited in the listener's backlog; the next worker serves it.
    service.signal(Signal::SIGHUP);
    let second = service.ready_worker(2, T);
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&format!("{second}\n")), "{answer}");
    assert!(wait_gone(first, T), "the first worker drained and exited");
    service.stop_cleanly(T);
}
