//! Datagram handlers (`examples/udp_echo.rs`) across reloads: while a
//! client sends numbered datagrams as fast as they are answered, 20 reloads
//! lose none and answer none twice, and after each reload the answers come
//! from the new worker. Over UDP, over `unixgram:`, on a socket passed by
//! `systemd-socket-activate --datagram`, and through a failed reload. The
//! same client against a plain echo that closes its socket and binds again
//! counts what a restart without graceful loses.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graceful_dev::process::Service;
use graceful_dev::procfs::wait_gone;
use graceful_dev::{built, copy_executable, temp_dir, TIMEOUT as T};
use nix::sys::signal::Signal;

/// Datagrams in flight at once.
const WINDOW: u64 = 8;
/// A datagram not answered within this is counted lost.
const LOST_AFTER: Duration = Duration::from_secs(2);

/// A connected datagram socket, UDP or Unix.
trait Datagrams: Send + Sync + 'static {
    fn send(&self, bytes: &[u8]) -> io::Result<usize>;
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
}

impl Datagrams for std::net::UdpSocket {
    fn send(&self, bytes: &[u8]) -> io::Result<usize> {
        std::net::UdpSocket::send(self, bytes)
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        std::net::UdpSocket::recv(self, buf)
    }
}

impl Datagrams for UnixDatagram {
    fn send(&self, bytes: &[u8]) -> io::Result<usize> {
        UnixDatagram::send(self, bytes)
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        UnixDatagram::recv(self, buf)
    }
}

fn udp_client(port: u16) -> std::net::UdpSocket {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    socket
}

/// What the client saw.
#[derive(Debug, Default)]
struct Tally {
    /// Sequence number → the PID in its answer.
    answered: BTreeMap<u64, u32>,
    duplicated: Vec<u64>,
    lost: Vec<u64>,
    /// Answers to datagrams already counted lost.
    late: Vec<u64>,
    /// `ECONNREFUSED` and the like: nothing listened when a datagram came.
    refused: u64,
}

/// A client that keeps [`WINDOW`] numbered datagrams in flight until it is
/// told to stop, then waits for the last answers.
struct Client {
    stop: Arc<AtomicBool>,
    /// The next sequence number it will send.
    next: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    thread: std::thread::JoinHandle<()>,
}

impl Client {
    fn start(socket: impl Datagrams) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let thread = {
            let (stop, next, tally) = (stop.clone(), next.clone(), tally.clone());
            std::thread::spawn(move || run(&socket, &stop, &next, &tally))
        };
        Client {
            stop,
            next,
            tally,
            thread,
        }
    }

    fn answered(&self) -> usize {
        self.tally.lock().unwrap().answered.len()
    }

    /// Waits until `n` more datagrams than now have been answered.
    fn wait_answers(&self, n: usize) {
        let target = self.answered() + n;
        let deadline = Instant::now() + T;
        while self.answered() < target {
            assert!(Instant::now() < deadline, "the echo stopped answering");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn finish(self) -> (u64, Tally) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        let sent = self.next.load(Ordering::SeqCst);
        (
            sent,
            Arc::try_unwrap(self.tally).unwrap().into_inner().unwrap(),
        )
    }
}

fn run(socket: &dyn Datagrams, stop: &AtomicBool, next: &AtomicU64, tally: &Mutex<Tally>) {
    let mut in_flight: HashMap<u64, Instant> = HashMap::new();
    let mut buf = [0u8; 256];
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && in_flight.is_empty() || Instant::now() > give_up {
            return;
        }
        while !stopping && (in_flight.len() as u64) < WINDOW {
            // The number is taken before the send: a test that reads
            // `next` then knows every datagram from there on is sent after
            // it read. (Taken after, a datagram already sent to the old
            // worker could look as if it came later: under two busy loops
            // the test once saw one "answered by an older worker".)
            let seq = next.fetch_add(1, Ordering::SeqCst);
            match socket.send(seq.to_string().as_bytes()) {
                Ok(_) => {
                    in_flight.insert(seq, Instant::now());
                }
                // An ICMP "port unreachable" for an earlier datagram: the
                // number is sent again next time.
                Err(_) => {
                    next.store(seq, Ordering::SeqCst);
                    tally.lock().unwrap().refused += 1;
                    break;
                }
            }
        }
        let received = socket.recv(&mut buf);
        let mut tally = tally.lock().unwrap();
        match received {
            Ok(n) => {
                let text = std::str::from_utf8(&buf[..n]).unwrap();
                let (pid, seq) = text.split_once(' ').unwrap();
                let (pid, seq): (u32, u64) = (pid.parse().unwrap(), seq.parse().unwrap());
                if in_flight.remove(&seq).is_some() {
                    tally.answered.insert(seq, pid);
                } else if tally.lost.contains(&seq) {
                    tally.late.push(seq);
                } else {
                    tally.duplicated.push(seq);
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(_) => tally.refused += 1,
        }
        let now = Instant::now();
        in_flight.retain(|seq, sent| {
            let lost = now.duration_since(*sent) > LOST_AFTER;
            if lost {
                tally.lost.push(*seq);
            }
            !lost
        });
    }
}

/// Reloads `service` 20 times under `client`'s load. After each, once the
/// old worker has exited, the datagrams sent are answered by the new worker
/// (or, if one is still queued at the next reload, by a newer one), never by
/// an older one. Returns what the client saw.
fn twenty_reloads(service: &Service, client: Client) -> (u64, Tally) {
    let mut worker = service.ready_worker(1, T);
    client.wait_answers(50);
    // Each generation's worker, and the first sequence number sent once
    // the worker before it had exited.
    let mut generations: Vec<(u32, u64)> = vec![(worker as u32, 0)];
    for generation in 2..=21 {
        service.signal(Signal::SIGHUP);
        let new = service.ready_worker(generation, T);
        assert!(wait_gone(worker, T), "worker {worker} did not exit");
        generations.push((new as u32, client.next.load(Ordering::SeqCst)));
        worker = new;
        client.wait_answers(50);
    }
    let (sent, tally) = client.finish();
    let generation_of = |pid: u32| generations.iter().position(|(p, _)| *p == pid);
    for (g, (pid, start)) in generations.iter().enumerate().skip(1) {
        let end = generations.get(g + 1).map_or(sent, |(_, next)| *next);
        let answers: Vec<(u64, u32)> = tally
            .answered
            .range(*start..end)
            .map(|(seq, by)| (*seq, *by))
            .collect();
        for (seq, by) in &answers {
            let by_generation = generation_of(*by).expect("an answer from a known worker");
            assert!(
                by_generation >= g,
                "datagram {seq}, sent once worker {pid} served alone, was answered by an older \
                 worker, {by}"
            );
        }
        assert!(
            answers.iter().any(|(_, by)| by == pid),
            "worker {pid} answered nothing after its reload"
        );
    }
    (sent, tally)
}

fn assert_lossless(what: &str, sent: u64, tally: &Tally) {
    println!(
        "{what}: {sent} datagrams over 20 reloads: {} answered once, {} lost, {} answered twice, \
         {} answered late, {} refused",
        tally.answered.len(),
        tally.lost.len(),
        tally.duplicated.len(),
        tally.late.len(),
        tally.refused
    );
    assert!(tally.lost.is_empty(), "{what}: lost {:?}", tally.lost);
    assert!(
        tally.duplicated.is_empty(),
        "{what}: twice {:?}",
        tally.duplicated
    );
    assert!(tally.late.is_empty(), "{what}: late {:?}", tally.late);
    assert_eq!(tally.refused, 0, "{what}: refused");
    assert_eq!(
        tally.answered.len() as u64,
        sent,
        "{what}: every datagram answered"
    );
}

/// The port of the first `udp:` socket the master logged.
fn udp_port(service: &Service) -> u16 {
    let line = service.wait_line("listening on udp:", T);
    let rest = line.split("listening on udp:").nth(1).unwrap();
    let addr = rest.split_whitespace().next().unwrap();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn twenty_reloads_over_udp_lose_no_datagram_and_the_new_worker_answers() {
    let service = Service::start(&built("udp_echo"), &["udp:127.0.0.1:0"], &[]);
    let client = Client::start(udp_client(udp_port(&service)));
    let (sent, tally) = twenty_reloads(&service, client);
    assert_lossless("udp", sent, &tally);
}

#[test]
fn twenty_reloads_over_unixgram_lose_no_datagram_and_the_new_worker_answers() {
    let dir = temp_dir("unixgram");
    let server = dir.join("echo.sock");
    let service = Service::start(
        &built("udp_echo"),
        &[&format!("unixgram:{}", server.display())],
        &[],
    );
    service.wait_line("listening on unixgram:", T);
    let socket = UnixDatagram::bind(dir.join("client.sock")).unwrap();
    socket.connect(&server).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let (sent, tally) = twenty_reloads(&service, Client::start(socket));
    assert_lossless("unixgram", sent, &tally);
    drop(service);
}

/// What a restart without graceful loses: the same client against an echo
/// that closes its socket and binds the port again, 20 times.
#[test]
fn without_graceful_a_rebind_loses_datagrams() {
    let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = first.local_addr().unwrap().port();
    let client = Client::start(udp_client(port));
    let mut socket = first;
    let mut buf = [0u8; 256];
    for restart in 0..=20 {
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        // Serve 100 datagrams, as a version does between two reloads.
        let mut served = 0;
        let deadline = Instant::now() + T;
        while served < 100 {
            assert!(Instant::now() < deadline, "no datagram came");
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let mut answer = format!("{} ", restart + 1).into_bytes();
                answer.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&answer, peer);
                served += 1;
            }
        }
        if restart == 20 {
            break;
        }
        // The restart: what is queued in the old socket goes with it.
        drop(socket);
        socket = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    }
    // The last answers, until the client has given up on the rest.
    client.stop.store(true, Ordering::SeqCst);
    let stopping = Instant::now();
    while stopping.elapsed() < LOST_AFTER + Duration::from_millis(500) {
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let mut answer = b"21 ".to_vec();
            answer.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&answer, peer);
        }
    }
    let (sent, tally) = client.finish();
    println!(
        "without graceful: {sent} datagrams over 20 rebinds: {} answered, {} lost, {} refused",
        tally.answered.len(),
        tally.lost.len(),
        tally.refused
    );
    assert_eq!(
        tally.answered.len() + tally.lost.len(),
        sent as usize,
        "every datagram is answered or lost"
    );
}

#[test]
fn a_udp_socket_from_systemd_socket_activate_is_served_across_reloads() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let echo = built("udp_echo");
    let service = Service::start(
        &graceful_dev::tool("systemd-socket-activate"),
        &[
            "--datagram",
            "-l",
            &addr,
            "--fdname=echo",
            echo.to_str().unwrap(),
            "systemd:echo",
        ],
        &[],
    );
    service.wait_line(&format!("Listening on {addr} as 3."), T);
    // The first datagram starts the service, and waits in the socket.
    let client = Client::start(udp_client(port));
    service.wait_line(&format!("socket activation: udp:{addr} as \"echo\""), T);
    let (sent, tally) = twenty_reloads(&service, client);
    assert_lossless("activated udp", sent, &tally);
    assert_eq!(
        service.count_lines("listening on "),
        0,
        "graceful bound nothing itself:\n{}",
        service.log_text()
    );
}

#[test]
fn a_failed_reload_leaves_the_old_worker_reading() {
    let dir = temp_dir("datagram-rollback");
    let app = dir.join("app");
    copy_executable(&built("udp_echo"), &app);
    let mut service = Service::start(&app, &["udp:127.0.0.1:0"], &[]);
    let client = Client::start(udp_client(udp_port(&service)));
    let worker = service.ready_worker(1, T);
    client.wait_answers(50);
    // The next version cannot start.
    let broken = dir.join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    let aside = dir.join("app.new");
    copy_executable(&broken, &aside);
    std::fs::rename(&aside, &app).unwrap();
    service.signal(Signal::SIGHUP);
    service.wait_line("reload failed", T);
    let after = client.next.load(Ordering::SeqCst);
    client.wait_answers(200);
    let (sent, tally) = client.finish();
    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit(T).success(), "{}", service.log_text());
    for (seq, by) in tally.answered.range(after..) {
        assert_eq!(*by, worker as u32, "datagram {seq} after the failed reload");
    }
    assert!(tally.lost.is_empty(), "lost {:?}", tally.lost);
    assert!(tally.duplicated.is_empty());
    assert!(tally.answered.len() as u64 >= after + 200, "sent {sent}");
}

/// One datagram and its answer, with a bounded wait.
fn ask(socket: &std::net::UdpSocket, datagram: &str) -> String {
    socket.set_read_timeout(Some(T)).unwrap();
    socket.send(datagram.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("an answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn a_datagram_handler_that_panics_or_returns_is_started_again() {
    let mut service = Service::start(&built("datagram_faults"), &["udp:127.0.0.1:0"], &[]);
    let socket = udp_client(udp_port(&service));
    let worker = service.ready_worker(1, T);
    assert_eq!(ask(&socket, "1"), format!("{worker} 1"));
    socket.send(b"panic").unwrap();
    service.wait_line(
        "the datagram handler of \"udp:127.0.0.1:0\" panicked: told to panic; started again in 1s",
        T,
    );
    // Meanwhile the datagram waits in the socket, and the same worker,
    // with its handler started again, answers it.
    assert_eq!(ask(&socket, "2"), format!("{worker} 2"));
    socket.send(b"return").unwrap();
    service.wait_line(
        "the datagram handler of \"udp:127.0.0.1:0\" returned while serving",
        T,
    );
    assert_eq!(ask(&socket, "3"), format!("{worker} 3"));
    // Its third start (the line may come after the answer: another pipe).
    service.wait_line_n(
        &format!("datagram_faults: handler started in {worker}"),
        2,
        T,
    );
    // A handler that returns on shutdown_signal() is not started again.
    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit(T).success(), "{}", service.log_text());
    assert_eq!(service.count_lines("datagram_faults: handler started"), 3);
    assert_eq!(service.count_lines("returned while serving"), 1);
}

#[test]
fn a_handler_on_the_wrong_kind_of_address_fails_the_start_naming_it() {
    let mut service = Service::start(&built("datagram_faults"), &["127.0.0.1:0"], &[]);
    assert_eq!(service.wait_exit(T).code(), Some(1));
    let log = service.log_text();
    assert!(
        log.contains(
            "cannot listen on \"127.0.0.1:0\": the handler serves UDP datagrams: it needs a \
             \"udp:host:port\" address"
        ),
        "{log}"
    );
    assert_eq!(
        service.count_lines("listening on"),
        0,
        "nothing was bound:\n{log}"
    );
}

#[test]
fn single_mode_hands_a_udp_socket_to_each_successor_without_loss() {
    let service = Service::start(
        &built("udp_echo"),
        &["udp:127.0.0.1:0"],
        &[("GRACEFUL_MODE", "single")],
    );
    let client = Client::start(udp_client(udp_port(&service)));
    let mut process = service.ready("process", 1, T);
    client.wait_answers(50);
    for generation in 2..=11 {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(process), Signal::SIGHUP).unwrap();
        let new = service.ready("process", generation, T);
        assert!(wait_gone(process, T), "process {process} did not exit");
        let from = client.next.load(Ordering::SeqCst);
        client.wait_answers(50);
        let tally = client.tally.lock().unwrap();
        assert!(
            tally
                .answered
                .range(from..)
                .all(|(_, by)| *by == new as u32),
            "answered by an older process after the handover"
        );
        drop(tally);
        process = new;
    }
    let (sent, tally) = client.finish();
    println!(
        "single mode: {sent} datagrams over 10 handovers: {} answered once, {} lost",
        tally.answered.len(),
        tally.lost.len()
    );
    assert!(
        tally.lost.is_empty() && tally.duplicated.is_empty(),
        "{tally:?}"
    );
    assert_eq!(tally.answered.len() as u64, sent);
}
