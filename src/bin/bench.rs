//! The reload benchmark: `cargo build --release --bins --examples && target/release/bench`.
//!
//! It runs the same hello handler two ways, as a plain hyper-util server and
//! as a graceful service (this binary re-executed with `--plain` or
//! `--graceful`), drives load in three client modes, reloads the graceful
//! service N times under that load, and prints a table:
//! failures by kind, latency in steady state and within 1 s of a reload,
//! reload timings, throughput against the plain server, and the master's
//! memory, threads and CPU.
//!
//! Options: `--reloads N` (default 100), `--seconds S` of steady-state load
//! per server and mode, in alternating 1 s slices (default 5), `--clients C`
//! (default 32).
//!
//! Two more measurements, each on its own:
//! - `bench --saturate [ROUNDS] [SECONDS] [h1|close|h2]`: throughput against plain
//!   hyper-util with clients that saturate the server (wrk for HTTP/1.1,
//!   h2load for h2c; Debian `wrk` and `nghttp2-client`), the servers on
//!   CPU 0 and the client on CPU 1, interleaved, with a plain / plain
//!   control; 8 rounds of 3 s by default. A new connection per request
//!   costs wrk more than the server, so for that client each server is
//!   capped at half a core (a cgroup's CPU quota; needs root). Beside the
//!   rates: how busy the server's CPU was (CPU 0's busy share, or the share
//!   of its cap it used), to show whether the client saturated the server,
//!   and the serving process's CPU time per request, the cost where it did
//!   not.
//! - `bench --paired [ROUNDS] [SECONDS] [h1|close|h2]`: the same clients,
//!   but plain and graceful served at the same time, both on CPU 0, each
//!   with its own client on CPU 1, so that the machine's changes of speed
//!   fall on both alike; with a plain beside plain control, and each
//!   server's run time per request (`schedstat`). Under the table, each
//!   client's ratios by the order in the pair, and each round taken with
//!   the round two later, in the other order, so that an advantage of the
//!   server started first cancels; and a note naming each client whose
//!   pairs left CPU 0 (or a cap) idle more than 5 % of the time, whose
//!   rates the clients set. See [`paired`].
//! - For both: `BENCH_PATH=/PATH` sets the path the clients ask for (default
//!   `/`), and with it the size of each response's text, which moves
//!   glibc's allocator between its paths (docs/throughput.md);
//!   `GLIBC_TUNABLES`, which the servers inherit, is printed in the heading.
//! - `bench --pinned [ROUNDS] [SECONDS]`: throughput with the servers on CPU 0
//!   and the load generator on CPU 1 (`taskset`, `sched_setaffinity`), so
//!   that a few percent can be told from noise; the ratio's median and
//!   spread over the rounds (default 5 rounds of 5 s).
//! - `bench --upgrade [N]`: N reloads under load with the master's upgrade
//!   in place on and N with it off, interleaved: failures, signal → new
//!   master image, and the master's RSS and descriptors (default 100).
//! - `bench --idle-connections N`: N idle keep-alive connections open across
//!   a reload: the worker's memory per connection, the time from the new
//!   worker ready to the old one gone, and requests on new connections
//!   meanwhile.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use graceful_dev::load::{Load, Mode, Report};
use graceful_dev::process::Service;
use graceful_dev::procfs::{cpu_time, run_time, status_value, wait_gone};
use graceful_dev::tls::TestCa;
use http::{Request, Response};
use hyper::body::Incoming;
use nix::sys::signal::Signal;

use graceful_dev::TIMEOUT as T;

async fn hello(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    Ok(Response::new(format!(
        "Hello, port: {host}, \"{}\"\n",
        req.uri().path()
    )))
}

/// The baseline: hyper-util's auto server on a multi-thread runtime, the same
/// handler, no graceful.
fn plain(addr: &str) {
    exit_on_sigterm();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        eprintln!(
            "graceful: listening on {} (plain)",
            listener.local_addr().unwrap()
        );
        let builder = std::sync::Arc::new(hyper_util::server::conn::auto::Builder::new(
            hyper_util::rt::TokioExecutor::new(),
        ));
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = builder
                    .serve_connection(io, hyper::service::service_fn(hello))
                    .await;
            });
        }
    });
}

/// SIGTERM ends the plain server with `exit(0)`, from a thread of its own
/// that waits for it (blocked in every other thread, which inherit the
/// mask), so that a build instrumented for profile-guided optimization
/// writes its profile, as graceful's processes do at their stop
/// (`scripts/pgo`), and the serving path is not touched.
fn exit_on_sigterm() {
    let mut term = nix::sys::signal::SigSet::empty();
    term.add(Signal::SIGTERM);
    term.thread_block().expect("block SIGTERM");
    std::thread::spawn(move || {
        let _ = term.wait();
        std::process::exit(0)
    });
}

struct Options {
    reloads: usize,
    seconds: u64,
    clients: usize,
}

/// The commands `bench` takes, for `--help` and after a bad argument.
const USAGE: &str = "usage:
  bench [--reloads N] [--seconds S] [--clients C]   reloads under load (default 100, 5, 32)
  bench --saturate [ROUNDS] [SECONDS] [h1|close|h2] saturating clients, one server at a time
  bench --paired [ROUNDS] [SECONDS] [h1|close|h2]   saturating clients, both servers at once
  bench --pinned [ROUNDS] [SECONDS]                 the benchmark's own client, pinned
  bench --upgrade [N]                               N reloads with the master's upgrade on and off
  bench --idle-connections [N]                      N idle keep-alive connections across a reload
  bench --load ADDR [SECONDS]                       load only, on a server started by hand
  bench --plain ADDR | --graceful [ADDR [CERT KEY]] the two servers
BENCH_PATH=/PATH sets the path --saturate and --paired ask for (default /);
GLIBC_TUNABLES, if set, is inherited by the servers and printed.
Build first: cargo build --release --bins --examples";

/// Says what is wrong with the command line, then the usage, and exits 2.
fn bad_argument(message: &str) -> ! {
    eprintln!("bench: {message}\n{USAGE}");
    std::process::exit(2);
}

/// `v` as a whole number above 0.
fn whole(v: &str) -> Option<u64> {
    v.parse().ok().filter(|&v| v > 0)
}

/// Argument `n`, parsed as a whole number above 0 named `name`, or
/// `default` when it is absent.
fn whole_arg(n: usize, name: &str, default: u64) -> u64 {
    match std::env::args().nth(n) {
        None => default,
        Some(v) => whole(&v).unwrap_or_else(|| {
            bad_argument(&format!("{name} is a whole number above 0, not {v:?}"))
        }),
    }
}

fn options() -> Options {
    let mut o = Options {
        reloads: 100,
        seconds: 5,
        clients: 32,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || -> u64 {
            args.get(i + 1).and_then(|v| whole(v)).unwrap_or_else(|| {
                bad_argument(&format!("{} needs a whole number above 0", args[i]))
            })
        };
        match args[i].as_str() {
            "--reloads" => o.reloads = value() as usize,
            "--seconds" => o.seconds = value(),
            "--clients" => o.clients = value() as usize,
            other => bad_argument(&format!("unknown option {other:?}")),
        }
        i += 2;
    }
    o
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn latency_cell(mut micros: Vec<u64>) -> String {
    micros.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "{:.2} / {:.2} / {:.1}",
        ms(percentile(&micros, 0.5)),
        ms(percentile(&micros, 0.99)),
        ms(*micros.last().unwrap_or(&0))
    )
}

fn failures(report: &Report) -> String {
    if report.failures.is_empty() {
        return "0".into();
    }
    report
        .failures
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The smallest and the largest of `v`.
fn spread(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &r| (a.min(r), b.max(r)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Throughput of graceful against plain hyper-util with the servers pinned
/// to CPU 0 and this load generator to CPU 1, in interleaved 1 s slices,
/// several rounds; prints each round's ratio, the median and the spread.
fn pinned(me: &std::path::Path, rounds: usize, seconds: u64) {
    let mut mine = nix::sched::CpuSet::new();
    mine.set(1).expect("CPU 1");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &mine).expect("pin to CPU 1");
    let taskset = graceful_dev::tool("taskset");
    let me = me.to_str().unwrap();
    println!(
        "bench --pinned: servers on CPU 0, load generator on CPU 1; {rounds} rounds of {seconds} s per server and mode, 32 clients\n"
    );
    println!("| mode | ratio graceful / plain, each round | median | min – max |");
    println!("| --- | --- | --- | --- |");
    for mode in Mode::ALL {
        let mut ratios = Vec::new();
        for _ in 0..rounds {
            let plain = Service::start(&taskset, &["-c", "0", me, "--plain", "127.0.0.1:0"], &[]);
            let plain_addr: SocketAddr = plain.addr(T).parse().unwrap();
            let service =
                Service::start(&taskset, &["-c", "0", me, "--graceful", "127.0.0.1:0"], &[]);
            let addr: SocketAddr = service.addr(T).parse().unwrap();
            service.ready_worker(1, T);
            let (mut plain_rate, mut rate) = (Vec::new(), Vec::new());
            for slice in 0..seconds * 2 {
                let (target, into) = if slice % 2 == 0 {
                    (plain_addr, &mut plain_rate)
                } else {
                    (addr, &mut rate)
                };
                let load = Load::start(target, mode, 32, "/");
                std::thread::sleep(Duration::from_secs(1));
                let report = load.stop();
                report.assert_clean(mode.name());
                into.push(report.ok as f64 / report.elapsed.as_secs_f64());
            }
            let sum = |v: &[f64]| v.iter().sum::<f64>();
            ratios.push(sum(&rate) / sum(&plain_rate));
        }
        let cells: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        let (min, max) = spread(&ratios);
        println!(
            "| {} | {} | {:.3} | {min:.3} – {max:.3} |",
            mode.name(),
            cells.join(", "),
            median(ratios.clone())
        );
    }
}

/// A client that saturates a server: wrk (HTTP/1.1) or h2load (h2c).
#[derive(Debug, Clone, Copy)]
enum Saturating {
    KeepAlive,
    NewConnection,
    Http2,
}

impl Saturating {
    const ALL: [Saturating; 3] = [
        Saturating::KeepAlive,
        Saturating::NewConnection,
        Saturating::Http2,
    ];

    fn name(self) -> &'static str {
        match self {
            Saturating::KeepAlive => "http1 keep-alive (wrk -t1 -c32)",
            Saturating::NewConnection => {
                "http1 new connection (wrk -t1 -c32, Connection: close; each server capped at half a core)"
            }
            Saturating::Http2 => "h2c (h2load -t1 -c32 -m10)",
        }
    }

    /// The share of a core each server may use. A new connection per
    /// request costs the client (connect, close) more than the server, so
    /// wrk on a core of its own cannot keep a server on the other busy; a
    /// server capped at half a core (a cgroup's CPU quota) can be kept
    /// busy, and the rate it serves at its cap measures its cost.
    fn cap(self) -> Option<f64> {
        match self {
            Saturating::NewConnection => Some(0.5),
            Saturating::KeepAlive | Saturating::Http2 => None,
        }
    }

    /// The name of this client beside another's, in [`paired`], where a
    /// capped server gets half the cap it has alone.
    fn paired_name(self) -> &'static str {
        match self {
            Saturating::NewConnection => {
                "http1 new connection (wrk -t1 -c32, Connection: close; each server capped at a quarter of a core)"
            }
            Saturating::KeepAlive | Saturating::Http2 => self.name(),
        }
    }

    /// The name `bench --saturate` takes to run this client only.
    fn key(self) -> &'static str {
        match self {
            Saturating::KeepAlive => "h1",
            Saturating::NewConnection => "close",
            Saturating::Http2 => "h2",
        }
    }

    /// Runs the client on CPU 1 against `addr`: first for a second not
    /// counted (the server's first page faults, its allocator's first
    /// growth, the same for every server), then for `seconds`; its rate
    /// then, in requests per second. Any error or non-2xx answer is a
    /// failure.
    /// `server` is the serving process, whose CPU time is read around the
    /// measured seconds, with how busy it kept its CPU: CPU 0's busy share,
    /// or, for a server capped at a share of a core, the share of its cap
    /// it used.
    fn run(self, addr: SocketAddr, seconds: u64, server: i32) -> Run {
        self.run_once(addr, 1);
        let (cpu0, spent) = (cpu0_times(), cpu_time(server));
        let rate = self.run_once(addr, seconds);
        let (cpu0_after, spent) = (cpu0_times(), cpu_time(server) - spent);
        let (busy, total) = (cpu0_after.0 - cpu0.0, cpu0_after.1 - cpu0.1);
        let busy = match self.cap() {
            Some(share) => spent.as_secs_f64() / (share * seconds as f64),
            None => busy as f64 / total.max(1) as f64,
        };
        Run {
            rate,
            cpu_per_request: spent.as_secs_f64() / (rate * seconds as f64),
            busy,
        }
    }

    fn run_once(self, addr: SocketAddr, seconds: u64) -> f64 {
        let taskset = graceful_dev::tool("taskset");
        let url = format!("http://{addr}{}", request_path());
        let duration = format!("{seconds}s");
        let mut command = std::process::Command::new(taskset);
        command.args(["-c", "1"]);
        match self {
            Saturating::KeepAlive => {
                command.args(["wrk", "-t1", "-c32", "-d", &duration, &url]);
            }
            Saturating::NewConnection => {
                command.args([
                    "wrk",
                    "-t1",
                    "-c32",
                    "-d",
                    &duration,
                    "-H",
                    "Connection: close",
                    &url,
                ]);
            }
            Saturating::Http2 => {
                command.args(["h2load", "-t1", "-c32", "-m10", "-D", &duration, &url]);
            }
        }
        let (code, out, err) = graceful_dev::run_bounded(&mut command);
        assert_eq!(code, 0, "{}: {out}{err}", self.name());
        match self {
            Saturating::KeepAlive | Saturating::NewConnection => {
                assert!(
                    !out.contains("Non-2xx") && !out.contains("Socket errors"),
                    "wrk saw failures:\n{out}"
                );
                out.lines()
                    .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no rate in wrk's output:\n{out}"))
            }
            Saturating::Http2 => {
                let failed = out
                    .lines()
                    .find(|l| l.starts_with("requests:"))
                    .unwrap_or_default();
                assert!(
                    failed.contains(" 0 failed, 0 errored"),
                    "h2load saw failures: {failed}\n{out}"
                );
                out.lines()
                    .find_map(|l| l.strip_prefix("finished in "))
                    .and_then(|l| l.split(", ").nth(1))
                    .and_then(|r| r.strip_suffix(" req/s"))
                    .and_then(|r| r.parse().ok())
                    .unwrap_or_else(|| panic!("no rate in h2load's output:\n{out}"))
            }
        }
    }
}

/// One measured run of a client against a server.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Requests per second.
    rate: f64,
    /// The serving process's CPU time (user and system) per request, in
    /// seconds.
    cpu_per_request: f64,
    /// CPU 0's busy share (everything but idle and I/O wait), 0 to 1: the
    /// servers run there alone, so under 1 the server was not saturated.
    /// For a capped server, the share of its cap it used.
    busy: f64,
}

/// CPU 0's busy and total time since boot, in ticks, from `/proc/stat`.
fn cpu0_times() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu0 "))
        .expect("/proc/stat has a cpu0 line");
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("/proc/stat's cpu0 fields are numbers"))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user)
    let total: u64 = ticks.iter().take(8).sum();
    (total - ticks[3] - ticks[4], total)
}

/// A cgroup that caps the CPU time of the processes put in it at a share
/// of one core: cgroup v2's `cpu.max`, or v1's CFS quota. Removed when
/// dropped (it is empty by then: the servers it held have ended).
struct CpuCap {
    dir: std::path::PathBuf,
}

impl CpuCap {
    /// A cap of `share` of a core, counted over 10 ms periods (short, so
    /// that the server runs often, and briefly idle, not for 100 ms then
    /// stopped for 100 ms).
    /// `label` tells apart the caps of one run.
    fn new(share: f64, label: &str) -> Result<CpuCap, String> {
        let period = 10_000u64;
        let quota = (period as f64 * share) as u64;
        let name = format!("graceful-bench-{}-{label}", std::process::id());
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let v2_cpu = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"));
        let (dir, files) = if v2_cpu {
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            (
                v2.join(&name),
                vec![("cpu.max", format!("{quota} {period}"))],
            )
        } else {
            (
                std::path::Path::new("/sys/fs/cgroup/cpu").join(&name),
                vec![
                    ("cpu.cfs_period_us", period.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            )
        };
        std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let cap = CpuCap { dir };
        for (file, value) in files {
            let path = cap.dir.join(file);
            std::fs::write(&path, value).map_err(|e| format!("write {}: {e}", path.display()))?;
        }
        Ok(cap)
    }

    /// Puts the process `pid`, all its threads, under the cap.
    fn add(&self, pid: i32) {
        let procs = self.dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("write {pid} to {}: {e}", procs.display()));
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Throughput of graceful against plain hyper-util with independent
/// clients that saturate the server: the servers on CPU 0, wrk or h2load on
/// CPU 1. Each round runs five servers in turn, each a fresh process:
/// plain, graceful, plain, a second plain server (the A/A control), plain;
/// graceful and the control swap places every other round. Each is
/// measured against the geometric mean of the two plain runs just before
/// and after it, so that a drift of the machine's speed during the round
/// falls on both sides alike, and the control goes through exactly what
/// graceful does. Prints, for each client, the plain server's rate, each
/// round's ratio, the median with its 95 % confidence interval, and the
/// control's median and interval; and, to show whether the client
/// saturated the server, how busy the server kept its CPU (CPU 0, or its
/// cap: see [`Saturating::cap`]), with the serving process's CPU time per
/// request (graceful's against the plain runs around it, as for the rate):
/// where the server's CPU was not busy throughout, the rate is the
/// client's, and the CPU time per request is the cost.
fn saturate(me: &std::path::Path, rounds: usize, seconds: u64, clients: &[Saturating]) {
    let taskset = graceful_dev::tool("taskset");
    let me = me.to_str().unwrap();
    println!(
        "bench --saturate: servers on CPU 0, the client on CPU 1; {rounds} rounds of {seconds} s per server, five servers a round (plain, graceful, plain, plain as the A/A control, plain; graceful and the control swap every other round), each against the plain runs before and after it; path {path}{tunables}\n",
        path = request_path(),
        tunables = glibc_tunables(),
    );
    println!("| client | plain, median req/s | CPU busy (of CPU 0, or of the cap), plain / graceful, median | graceful / plain req/s, each round | median (95 % CI) | A/A plain / plain, median (95 % CI) | CPU time per request, graceful / plain, median (95 % CI) |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut unsaturated = Vec::new();
    for &client in clients {
        let (mut ratios, mut controls, mut costs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut plain_rates, mut plain_busy, mut graceful_busy) =
            (Vec::new(), Vec::new(), Vec::new());
        let cap = match client.cap().map(|share| CpuCap::new(share, "saturate")) {
            None => None,
            Some(Ok(cap)) => Some(cap),
            Some(Err(e)) => {
                println!(
                    "| {} | not run: no CPU cap ({e}) | | | | | |",
                    client.name()
                );
                continue;
            }
        };
        // The serving process, capped if the client needs it.
        let serving = |pid: i32| {
            if let Some(cap) = &cap {
                cap.add(pid);
            }
            pid
        };
        let plain_run = || {
            let plain = Service::start(&taskset, &["-c", "0", me, "--plain", "127.0.0.1:0"], &[]);
            let addr: SocketAddr = plain.addr(T).parse().unwrap();
            client.run(addr, seconds, serving(plain.pid()))
        };
        let graceful_run = || {
            let service =
                Service::start(&taskset, &["-c", "0", me, "--graceful", "127.0.0.1:0"], &[]);
            let addr: SocketAddr = service.addr(T).parse().unwrap();
            let worker = service.ready_worker(1, T);
            client.run(addr, seconds, serving(worker))
        };
        for round in 0..rounds {
            let graceful_first = round % 2 == 0;
            let first = plain_run();
            let middle_one = if graceful_first {
                graceful_run()
            } else {
                plain_run()
            };
            let second = plain_run();
            let middle_two = if graceful_first {
                plain_run()
            } else {
                graceful_run()
            };
            let third = plain_run();
            // Each middle run against the plain runs on either side of it.
            let against = |run: Run, before: Run, after: Run| {
                let rate = run.rate / (before.rate * after.rate).sqrt();
                let cost =
                    run.cpu_per_request / (before.cpu_per_request * after.cpu_per_request).sqrt();
                (rate, cost)
            };
            let one = against(middle_one, first, second);
            let two = against(middle_two, second, third);
            let ((rate, cost), (control, _), graceful) = if graceful_first {
                (one, two, middle_one)
            } else {
                (two, one, middle_two)
            };
            for plain in [first, second, third] {
                plain_rates.push(plain.rate);
                plain_busy.push(plain.busy);
            }
            graceful_busy.push(graceful.busy);
            ratios.push(rate);
            controls.push(control);
            costs.push(cost);
        }
        let (plain_busy, graceful_busy) = (median(plain_busy), median(graceful_busy));
        if plain_busy.min(graceful_busy) < SATURATED {
            unsaturated.push(client.name());
        }
        println!(
            "| {} | {:.0} | {:.0} % / {:.0} % | {} | {} | {} | {} |",
            client.name(),
            median(plain_rates),
            plain_busy * 100.0,
            graceful_busy * 100.0,
            each_round(&ratios),
            median_cell(&ratios),
            median_cell(&controls),
            median_cell(&costs),
        );
    }
    for name in unsaturated {
        println!(
            "\n{name}: the server's CPU (CPU 0, or its cap) was busy less than {:.0} % of the time, so the client, not the server, set the rate; its req/s ratio says little, and the CPU time per request is the cost to read.",
            SATURATED * 100.0
        );
    }
}

/// `bench FLAG [ROUNDS] [SECONDS] [CLIENT]`: 8 rounds of 3 s of every
/// client by default.
fn saturating_args(flag: &str) -> (usize, u64, Vec<Saturating>) {
    let clients = match std::env::args().nth(4) {
        None => Saturating::ALL.to_vec(),
        Some(key) => match Saturating::ALL.into_iter().find(|c| c.key() == key) {
            Some(client) => vec![client],
            None => {
                let keys = Saturating::ALL.map(Saturating::key);
                bad_argument(&format!("{flag} CLIENT is one of {keys:?}, not {key:?}"))
            }
        },
    };
    (
        whole_arg(2, &format!("{flag} ROUNDS"), 8) as usize,
        whole_arg(3, &format!("{flag} SECONDS"), 3),
        clients,
    )
}

/// The path the saturating clients ask for: `BENCH_PATH`, or `/`. The
/// handler answers with a text that holds it, so the path sets the size of
/// each response, and with it which of the allocator's bins a request's
/// allocations come from (docs/throughput.md: at some sizes glibc's
/// `malloc` consolidates its fast bins on every request, in either server).
/// Read and checked once, for the run's heading and every client after it.
fn request_path() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| match std::env::var("BENCH_PATH") {
        Err(std::env::VarError::NotPresent) => "/".to_string(),
        Ok(path) if valid_request_path(&path) => path,
        Ok(path) => bad_argument(&format!(
            "BENCH_PATH is a path of 1 to 2,000 bytes that starts with / and has only letters, digits and -._~/, not {path:?}"
        )),
        Err(std::env::VarError::NotUnicode(path)) => {
            bad_argument(&format!("BENCH_PATH is not UTF-8: {path:?}"))
        }
    })
}

/// `GLIBC_TUNABLES`, which the servers inherit, for the run's heading.
fn glibc_tunables() -> String {
    std::env::var("GLIBC_TUNABLES").map_or(String::new(), |t| format!("; GLIBC_TUNABLES={t}"))
}

/// Whether `path` can go into a client's URL as it is: it starts with `/`,
/// holds only unreserved characters and `/`, and is not too long for a
/// request line.
fn valid_request_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 2000
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
}

/// One server's side of a [`paired`] run.
#[derive(Debug, Clone, Copy)]
struct Side {
    /// Requests per second, as its client counted them.
    rate: f64,
    /// The serving process's run time per request, in seconds.
    cpu_per_request: f64,
    /// The share of a core (or of its cap) the serving process ran.
    share: f64,
}

/// Throughput of graceful against plain hyper-util with both servers
/// running at the same time on CPU 0, each with its own client (wrk or
/// h2load) on CPU 1, so that whatever slows the machine during a run slows
/// both alike: on this virtual machine the speed moves by ±10–20 % from
/// one second to the next, which sequential runs ([`saturate`]) can only
/// average out over many rounds. Each round runs two such pairs, each of
/// fresh processes: plain beside graceful, and plain beside a second plain
/// server (the A/A control), in alternating order; which server of a pair
/// starts first and whose client starts first alternates too. The
/// scheduler shares CPU 0 between the two busy servers; each server's run
/// time (`schedstat`, to the nanosecond) is read around the measured
/// seconds, so that the table shows both the rate each served and what
/// each request cost it. For a connection per request each server is
/// capped at a quarter of a core (a cgroup each), so that one wrk can keep
/// both busy; each then runs its cap's worth, and the rates compare the
/// costs directly.
fn paired(me: &std::path::Path, rounds: usize, seconds: u64, clients: &[Saturating]) {
    let taskset = graceful_dev::tool("taskset");
    let me = me.to_str().unwrap();
    println!(
        "bench --paired: two servers at once on CPU 0, each with its own client on CPU 1; {rounds} rounds of two pairs (plain beside graceful, plain beside plain as the A/A control), {seconds} s each, fresh processes, the order alternating; path {path}{tunables}\n",
        path = request_path(),
        tunables = glibc_tunables(),
    );
    println!("| client | plain, median req/s | share of CPU 0 (or of the cap) run, plain / graceful, median (graceful's / plain's, median) | graceful / plain req/s, each round | median (95 % CI) | A/A plain / plain, median (95 % CI) | CPU time per request, graceful / plain, median (95 % CI) | A/A, CPU time per request, median (95 % CI) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut unsaturated = Vec::new();
    let mut by_slot = Vec::new();
    for &client in clients {
        // Each server's cap, if the client needs one: half the cap a server
        // has alone.
        let cap_share = client.cap().map(|share| share / 2.0);
        let caps = match cap_share {
            None => None,
            Some(share) => match (CpuCap::new(share, "a"), CpuCap::new(share, "b")) {
                (Ok(a), Ok(b)) => Some([a, b]),
                (Err(e), _) | (_, Err(e)) => {
                    println!(
                        "| {} | not run: no CPU cap ({e}) | | | | | | |",
                        client.paired_name()
                    );
                    continue;
                }
            },
        };
        // Starts the server in `slot` (0 or 1) and returns it with its
        // serving process (capped if the client needs it) and address.
        let start = |graceful: bool, slot: usize| {
            let mode = if graceful { "--graceful" } else { "--plain" };
            let service = Service::start(&taskset, &["-c", "0", me, mode, "127.0.0.1:0"], &[]);
            let addr: SocketAddr = service.addr(T).parse().unwrap();
            let pid = if graceful {
                service.ready_worker(1, T)
            } else {
                service.pid()
            };
            if let Some(caps) = &caps {
                caps[slot].add(pid);
            }
            (service, pid, addr)
        };
        // Runs plain beside plain or graceful; the plain one in slot
        // `plain_slot`, started first and its client first when 0.
        let pair = |graceful: bool, plain_slot: usize| {
            let a = start(graceful && plain_slot != 0, 0);
            let b = start(graceful && plain_slot != 1, 1);
            let both = |secs: u64| {
                std::thread::scope(|s| {
                    let first = s.spawn(|| client.run_once(a.2, secs));
                    let second = client.run_once(b.2, secs);
                    [first.join().expect("the client's thread"), second]
                })
            };
            both(1);
            let before = [run_time(a.1), run_time(b.1)];
            let rates = both(seconds);
            let spent = [run_time(a.1) - before[0], run_time(b.1) - before[1]];
            let side = |i: usize| Side {
                rate: rates[i],
                cpu_per_request: spent[i].as_secs_f64() / (rates[i] * seconds as f64),
                share: spent[i].as_secs_f64() / (seconds as f64 * cap_share.unwrap_or(1.0)),
            };
            (side(plain_slot), side(1 - plain_slot))
        };
        let (mut ratios, mut controls, mut costs, mut control_costs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut plain_rates, mut plain_shares, mut graceful_shares, mut share_ratios) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut pairs_saturated = 0;
        for round in 0..rounds {
            let plain_slot = plain_slot(round);
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for graceful in order {
                let (plain, other) = pair(graceful, plain_slot);
                let rate = other.rate / plain.rate;
                let cost = other.cpu_per_request / plain.cpu_per_request;
                plain_rates.push(plain.rate);
                if pair_saturated(plain.share, other.share, cap_share.is_some()) {
                    pairs_saturated += 1;
                }
                if graceful {
                    ratios.push(rate);
                    costs.push(cost);
                    plain_shares.push(plain.share);
                    graceful_shares.push(other.share);
                    share_ratios.push(other.share / plain.share);
                } else {
                    controls.push(rate);
                    control_costs.push(cost);
                }
            }
        }
        println!(
            "| {} | {:.0} | {:.1} % / {:.1} % ({:.3}) | {} | {} | {} | {} | {} |",
            client.paired_name(),
            median(plain_rates),
            median(plain_shares) * 100.0,
            median(graceful_shares) * 100.0,
            median(share_ratios),
            each_round(&ratios),
            median_cell(&ratios),
            median_cell(&controls),
            median_cell(&costs),
            median_cell(&control_costs),
        );
        if pairs_saturated < 2 * rounds {
            unsaturated.push((client.paired_name(), 2 * rounds - pairs_saturated));
        }
        let (first, second) = split_by_slot(&ratios);
        by_slot.push(format!(
            "{}: graceful / plain, median, with plain started first {}, second {}; each round with the round two later, the slots swapped (geometric mean), median (95 % CI): {}, A/A {}; CPU time per request the same way: {}, A/A {}",
            client.paired_name(),
            median_text(&first),
            median_text(&second),
            median_cell(&slot_balanced(&ratios)),
            median_cell(&slot_balanced(&controls)),
            median_cell(&slot_balanced(&costs)),
            median_cell(&slot_balanced(&control_costs)),
        ));
    }
    // Which server starts first (its client too, its cap the first) can
    // favour it by several percent, alike for plain and graceful; the
    // medians above, of rounds balanced between the two orders, then fall
    // between two groups, and their intervals widen.
    println!("\nBy the order in the pair (the plain server started first, or second, two rounds of each in turn):\n");
    for line in by_slot {
        println!("- {line}");
    }
    for (name, pairs) in unsaturated {
        println!(
            "\n{name}: in {pairs} of {} pairs the two servers kept their CPU (CPU 0, or each its cap) busy less than {:.0} % of the time, so the clients, not the servers, set those rates; their req/s ratios say little, and the CPU time per request is the cost to read.",
            2 * rounds,
            SATURATED * 100.0
        );
    }
}

/// The slot of the plain server in `paired`'s round `round` (0: it and its
/// client start first, and it has the first cap), changed every two rounds
/// while the order of the two pairs changes every round.
fn plain_slot(round: usize) -> usize {
    (round / 2) % 2
}

/// Rounds' values split by [`plain_slot`]: those with the plain server
/// first, then those with it second.
fn split_by_slot(values: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (round, &value) in values.iter().enumerate() {
        if plain_slot(round) == 0 {
            first.push(value);
        } else {
            second.push(value);
        }
    }
    (first, second)
}

/// Each round's ratio with the ratio of the round two later, whose plain
/// server has the other slot: their geometric mean, in which a factor that
/// favours one slot over the other cancels. A round with the plain server
/// second, or without such a partner, starts none.
fn slot_balanced(ratios: &[f64]) -> Vec<f64> {
    (0..ratios.len())
        .filter(|&round| plain_slot(round) == 0 && round + 2 < ratios.len())
        .map(|round| (ratios[round] * ratios[round + 2]).sqrt())
        .collect()
}

/// Whether a pair of servers was saturated: uncapped, the two together
/// kept CPU 0 busy (their `share`s are each of the whole core); capped,
/// each ran its whole cap.
fn pair_saturated(a: f64, b: f64, capped: bool) -> bool {
    if capped {
        a.min(b) >= SATURATED
    } else {
        a + b >= SATURATED
    }
}

/// Each round's ratio, as a table cell.
fn each_round(ratios: &[f64]) -> String {
    let cells: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    cells.join(", ")
}

/// The median with its 95 % confidence interval, as a table cell; "none"
/// where there are no values (too few rounds for the slots' split).
fn median_cell(v: &[f64]) -> String {
    if v.is_empty() {
        return NO_ROUND.to_string();
    }
    let (low, high) = median_interval(v);
    format!("{:.3} ({low:.3} – {high:.3})", median(v.to_vec()))
}

/// The median alone, as text; "none" where there are no values.
fn median_text(v: &[f64]) -> String {
    if v.is_empty() {
        return NO_ROUND.to_string();
    }
    format!("{:.3}", median(v.to_vec()))
}

/// What a median of no rounds reads as, rather than a ratio of 0.
const NO_ROUND: &str = "none (too few rounds)";

/// CPU 0's busy share from which a server counts as saturated.
const SATURATED: f64 = 0.95;

/// A 95 % confidence interval for the median of `v`, from its order
/// statistics (distribution-free): the `k`-th smallest and the `k`-th
/// largest value, for the largest `k` with P(Binomial(n, ½) < k) ≤ 2.5 %.
/// Fewer than 6 values give no such `k`: the interval is then the whole
/// range.
fn median_interval(v: &[f64]) -> (f64, f64) {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let k = rank_for_median_interval(n);
    (sorted[k - 1], sorted[n - k])
}

/// The rank `k` (1-based) of [`median_interval`]'s lower end among `n`
/// values: the largest `k` with P(X ≤ k - 1) ≤ 0.025 for X ~ Binomial(n, ½),
/// and 1 when there is none. The probabilities are summed from their
/// logarithms, so that 2⁻ⁿ does not underflow for any number of rounds.
fn rank_for_median_interval(n: usize) -> usize {
    let mut ln_pmf = -(n as f64) * std::f64::consts::LN_2; // ln P(X = 0)
    let mut cdf = ln_pmf.exp(); // P(X <= k - 1), for k = 1
    let mut k = 1;
    // The tail reaches 0.025 long before the middle; the bound only makes
    // the loop's end plain.
    while k < n {
        // Whether k + 1 qualifies: P(X <= k) = P(X <= k - 1) + P(X = k).
        ln_pmf += ((n - k + 1) as f64 / k as f64).ln();
        let next = cdf + ln_pmf.exp();
        if next > 0.025 {
            break;
        }
        cdf = next;
        k += 1;
    }
    k
}

/// `n` idle keep-alive connections across a reload.
fn idle_connections(me: &std::path::Path, n: usize) {
    use std::io::{Read, Write};
    let service = Service::start(me, &["--graceful", "127.0.0.1:0"], &[]);
    let addr: SocketAddr = service.addr(T).parse().unwrap();
    let worker = service.ready_worker(1, T);
    let rss = |pid| status_value(pid, "VmRSS:").unwrap_or(0);
    let before = rss(worker);
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let _ = c.read(&mut buf).unwrap();
        idle.push(c);
    }
    let after = rss(worker);
    let fresh = Load::start(addr, Mode::NewConnection, 4, "/");
    assert!(fresh.wait_progress(100, T));
    service.signal(Signal::SIGHUP);
    service.wait_line("reload finished", T);
    let ready = Instant::now();
    service.wait_line("after draining", T);
    let gone = ready.elapsed();
    let report = fresh.stop();
    report.assert_clean("new connections during the reload");
    println!("bench --idle-connections {n}\n");
    println!("| idle keep-alive connections | worker RSS before / after | per connection | new worker ready → old worker gone | requests on new connections meanwhile: ok / failed |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| {n} | {before} / {after} KiB | {:.1} KiB | {:.0} ms | {} / {} |",
        (after.saturating_sub(before)) as f64 / n as f64,
        gone.as_secs_f64() * 1000.0,
        report.ok,
        report.failed()
    );
    drop(idle);
}

/// `bench --upgrade N`: N reloads under keep-alive load with the master's
/// upgrade in place on, then N with it off (`GRACEFUL_UPGRADE_MASTER=0`), in
/// alternating blocks of 10: failures, signal → new worker ready, signal →
/// the master's new image running (its log line), and the master's RSS and
/// descriptors after the first and the last reload.
fn upgrade(me: &std::path::Path, n: usize) {
    struct Run {
        service: Service,
        load: Load,
        done: usize,
        ready_ms: Vec<f64>,
        upgraded_ms: Vec<f64>,
        /// The master's RSS (KiB) and descriptors after the first reload,
        /// and after the last.
        first: Option<(u64, usize)>,
        last: Option<(u64, usize)>,
    }
    let start = |on: &str| {
        let service = Service::start(
            me,
            &["--graceful", "127.0.0.1:0"],
            &[("GRACEFUL_UPGRADE_MASTER", on)],
        );
        let addr: SocketAddr = service.addr(T).parse().unwrap();
        service.ready_worker(1, T);
        let load = Load::start(addr, Mode::KeepAlive, 16, "/");
        assert!(load.wait_progress(100, T));
        Run {
            service,
            load,
            done: 0,
            ready_ms: Vec::new(),
            upgraded_ms: Vec::new(),
            first: None,
            last: None,
        }
    };
    let mut runs = [("on", start("1")), ("off", start("0"))];
    while runs.iter().any(|(_, r)| r.done < n) {
        for (name, run) in &mut runs {
            for _ in 0..10.min(n - run.done) {
                std::thread::sleep(Duration::from_millis(50));
                let generation = run.done as u64 + 2;
                let sent = Instant::now();
                run.service.signal(Signal::SIGHUP);
                run.service.ready_worker(generation, T);
                run.ready_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                if *name == "on" {
                    let (_, at) =
                        run.service
                            .wait_line_n_at("master upgraded in place", run.done, T);
                    run.upgraded_ms
                        .push(at.duration_since(sent).as_secs_f64() * 1000.0);
                }
                run.service.wait_line_n("after draining", run.done, T);
                run.done += 1;
                let pid = run.service.pid();
                let now = (
                    status_value(pid, "VmRSS:").unwrap_or(0),
                    graceful_dev::procfs::fd_count(pid),
                );
                run.first.get_or_insert(now);
                run.last = Some(now);
            }
        }
    }
    println!();
    println!(
        "bench --upgrade {n} (keep-alive load, 16 clients; blocks of 10 reloads, alternating)\n"
    );
    println!("| upgrade_master | reloads | sent / ok | failed | signal → new worker ready ms, median / max | signal → new master image running ms, median / max | master RSS KiB, after reload 1 / {n} | master descriptors, after reload 1 / {n} |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, run) in runs {
        let report = run.load.stop();
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let upgraded = if run.upgraded_ms.is_empty() {
            "— (master kept)".to_string()
        } else {
            format!(
                "{:.1} / {:.1}",
                median(run.upgraded_ms.clone()),
                max(&run.upgraded_ms)
            )
        };
        let (first, last) = (run.first.unwrap_or_default(), run.last.unwrap_or_default());
        println!(
            "| {name} | {} | {} / {} | {} | {:.1} / {:.1} | {upgraded} | {} / {} | {} / {} |",
            run.done,
            report.sent,
            report.ok,
            failures(&report),
            median(run.ready_ms.clone()),
            max(&run.ready_ms),
            first.0,
            last.0,
            first.1,
            last.1,
        );
        drop(run.service);
    }
}

fn main() {
    let first = std::env::args().nth(1);
    if first.as_deref() == Some("--plain") {
        let addr = std::env::args()
            .nth(2)
            .unwrap_or_else(|| bad_argument("--plain needs the address to listen on"));
        return plain(&addr);
    }
    if std::env::var_os("GRACEFUL_BENCH_SERVICE").is_some()
        || first.as_deref() == Some("--graceful")
    {
        let addr = std::env::args()
            .nth(2)
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let mut registration = graceful::Registration::new(addr, hello);
        // --graceful ADDR CERT KEY: over TLS.
        if let (Some(cert), Some(key)) = (std::env::args().nth(3), std::env::args().nth(4)) {
            registration = registration.tls(graceful::TlsConfig::from_pem_files(cert, key));
        }
        // Room for the scale measurement's 10,000 idle connections.
        let server = graceful::Server::new()
            .max_connections(50_000)
            .add_registration(registration);
        let code = match server.run() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("graceful: {e}");
                1
            }
        };
        std::process::exit(code);
    }

    if matches!(first.as_deref(), Some("--help" | "-h")) {
        println!("{USAGE}");
        return;
    }
    if first.as_deref() == Some("--load") {
        // Load only, for profiling a server started by hand:
        // bench --load ADDR SECONDS
        let addr: SocketAddr = match std::env::args().nth(2).map(|a| a.parse()) {
            Some(Ok(addr)) => addr,
            Some(Err(e)) => bad_argument(&format!("--load ADDR: {e}")),
            None => bad_argument("--load needs the server's ADDR (host:port)"),
        };
        let seconds = whole_arg(3, "--load SECONDS", 5);
        let load = Load::start(addr, Mode::KeepAlive, 32, "/");
        std::thread::sleep(Duration::from_secs(seconds));
        let r = load.stop();
        println!(
            "{:.0} req/s, {}",
            r.ok as f64 / r.elapsed.as_secs_f64(),
            r.summary().lines().next().unwrap_or("")
        );
        return;
    }
    let me = std::env::current_exe().unwrap();
    if first.as_deref() == Some("--saturate") {
        let (rounds, seconds, clients) = saturating_args("--saturate");
        return saturate(&me, rounds, seconds, &clients);
    }
    if first.as_deref() == Some("--paired") {
        let (rounds, seconds, clients) = saturating_args("--paired");
        return paired(&me, rounds, seconds, &clients);
    }
    if first.as_deref() == Some("--pinned") {
        return pinned(
            &me,
            whole_arg(2, "--pinned ROUNDS", 5) as usize,
            whole_arg(3, "--pinned SECONDS", 5),
        );
    }
    if first.as_deref() == Some("--upgrade") {
        return upgrade(&me, whole_arg(2, "--upgrade N", 100) as usize);
    }
    if first.as_deref() == Some("--idle-connections") {
        return idle_connections(&me, whole_arg(2, "--idle-connections N", 10_000) as usize);
    }
    let o = options();
    println!(
        "bench: {} reloads per mode, {} s steady state per server and mode, {} clients, {} cores",
        o.reloads,
        o.seconds,
        o.clients,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // Idle master: memory, threads, wake-ups, and stop time with no
    // connections, measured on the hello example (what a user ships; this
    // binary also carries the load generator and certificate generation).
    let hello = me.parent().unwrap().join("examples/hello");
    assert!(
        hello.exists(),
        "build the examples first: cargo build --release --bins --examples"
    );
    // With a control socket, and after one status query, so that the idle
    // figures include the operator features.
    let control_dir = graceful_dev::temp_dir("bench-idle");
    let control = control_dir.join("control.sock");
    let control = control.to_str().unwrap();
    let mut idle = Service::start(
        &hello,
        &["127.0.0.1:0"],
        &[("GRACEFUL_CONTROL_SOCKET", control)],
    );
    idle.ready_worker(1, T);
    let master = idle.pid();
    let (code, _, err) = graceful_dev::run_bounded(
        std::process::Command::new(me.parent().unwrap().join("ctl")).args(["status", control]),
    );
    assert_eq!(code, 0, "graceful status: {err}");
    // The answer is written before that turn of the master's loop ends.
    std::thread::sleep(Duration::from_millis(100));
    let switches = |pid| {
        status_value(pid, "voluntary_ctxt_switches:").unwrap_or(0)
            + status_value(pid, "nonvoluntary_ctxt_switches:").unwrap_or(0)
    };
    let (before, cpu_before) = (switches(master), cpu_time(master));
    std::thread::sleep(Duration::from_secs(3));
    let idle_wakeups = switches(master) - before;
    let idle_cpu = cpu_time(master).saturating_sub(cpu_before).as_millis();
    let idle_rss = status_value(master, "VmRSS:").unwrap_or(0);
    let idle_threads = status_value(master, "Threads:").unwrap_or(0);
    let stop_began = Instant::now();
    idle.signal(Signal::SIGTERM);
    idle.wait_exit(T);
    let stop_ms = stop_began.elapsed().as_secs_f64() * 1000.0;
    drop(control_dir);

    // Old worker exit after the new one is ready, idle keep-alive connections
    // only: clients that close their end when the server closes its own, as
    // pooled HTTP clients do, then clients that never read again (for whom
    // the lingering close waits out its 250 ms of quiet).
    let mut idle_exit_ms = [0.0; 2];
    for (i, closes) in [true, false].into_iter().enumerate() {
        let service = Service::start(&me, &["--graceful", "127.0.0.1:0"], &[]);
        let addr: SocketAddr = service.addr(T).parse().unwrap();
        service.ready_worker(1, T);
        let mut idle_conns = Vec::new();
        let mut closers = Vec::new();
        for _ in 0..8 {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf).unwrap();
            if closes {
                c.set_read_timeout(Some(T)).unwrap();
                closers.push(std::thread::spawn(move || {
                    let _ = c.read_to_end(&mut Vec::new());
                }));
            } else {
                idle_conns.push(c);
            }
        }
        service.signal(Signal::SIGHUP);
        service.wait_line("reload finished", T);
        let ready_at = Instant::now();
        service.wait_line("after draining", T);
        idle_exit_ms[i] = ready_at.elapsed().as_secs_f64() * 1000.0;
        drop(idle_conns);
        for closer in closers {
            let _ = closer.join();
        }
        drop(service);
    }

    let mut rows = Vec::new();
    let mut master_notes = Vec::new();
    for mode in Mode::ALL {
        // Throughput and steady-state latency: the plain server and the
        // graceful service run side by side and take turns in 1 s slices, so
        // drift on the machine affects both alike.
        let plain_srv = Service::start(&me, &["--plain", "127.0.0.1:0"], &[]);
        let plain_addr: SocketAddr = plain_srv.addr(T).parse().unwrap();
        let service = Service::start(&me, &["--graceful", "127.0.0.1:0"], &[]);
        let addr: SocketAddr = service.addr(T).parse().unwrap();
        service.ready_worker(1, T);
        let master = service.pid();
        let cpu0 = cpu_time(master);
        let (mut plain_ok, mut plain_time) = (0u64, Duration::ZERO);
        let (mut ok, mut time) = (0u64, Duration::ZERO);
        let mut steady_latencies: Vec<u64> = Vec::new();
        for _ in 0..o.seconds {
            let load = Load::start(plain_addr, mode, o.clients, "/");
            std::thread::sleep(Duration::from_secs(1));
            let r = load.stop();
            (plain_ok, plain_time) = (plain_ok + r.ok, plain_time + r.elapsed);
            let load = Load::start(addr, mode, o.clients, "/");
            std::thread::sleep(Duration::from_secs(1));
            let r = load.stop();
            (ok, time) = (ok + r.ok, time + r.elapsed);
            steady_latencies.extend(r.latencies.iter().map(|(_, l)| *l));
        }
        drop(plain_srv);
        let plain_rps = plain_ok as f64 / plain_time.as_secs_f64();
        let rps = ok as f64 / time.as_secs_f64();

        // graceful, N reloads at full load.
        let load_start = Instant::now();
        let load = Load::start(addr, mode, o.clients, "/");
        let (mut to_ready, mut to_exit, mut windows) = (Vec::new(), Vec::new(), Vec::new());
        for n in 0..o.reloads {
            std::thread::sleep(Duration::from_millis(100));
            let sent = Instant::now();
            service.signal(Signal::SIGHUP);
            service.wait_line_n("reload finished", n, T);
            let ready = Instant::now();
            service.wait_line_n("after draining", n, T);
            to_ready.push((ready - sent).as_secs_f64() * 1000.0);
            to_exit.push(ready.elapsed().as_secs_f64() * 1000.0);
            let at = (sent - load_start).as_micros() as u64;
            windows.push((at, at + 1_000_000));
        }
        std::thread::sleep(Duration::from_millis(200));
        let reloading = load.stop();
        let near_reload: Vec<u64> = reloading
            .latencies
            .iter()
            .filter(|(at, _)| windows.iter().any(|(a, b)| at >= a && at <= b))
            .map(|(_, l)| *l)
            .collect();
        for example in reloading.examples.iter().take(3) {
            master_notes.push(format!("{}: failure example: {example}", mode.name()));
        }
        let cpu = cpu_time(master).saturating_sub(cpu0).as_millis();
        master_notes.push(format!(
            "{}: master CPU {} ms over {} reloads, RSS {} KiB, {} thread(s)",
            mode.name(),
            cpu,
            o.reloads,
            status_value(master, "VmRSS:").unwrap_or(0),
            status_value(master, "Threads:").unwrap_or(0)
        ));
        rows.push(vec![
            mode.name().to_string(),
            format!(
                "{} / {} / {}",
                reloading.sent, reloading.ok, reloading.retried_goaway
            ),
            failures(&reloading),
            latency_cell(steady_latencies),
            latency_cell(near_reload),
            format!(
                "{:.1} / {:.1}",
                median(to_ready.clone()),
                to_ready.iter().copied().fold(0.0, f64::max)
            ),
            format!(
                "{:.1} / {:.1}",
                median(to_exit.clone()),
                to_exit.iter().copied().fold(0.0, f64::max)
            ),
            format!("{rps:.0} / {plain_rps:.0} = {:.3}", rps / plain_rps),
        ]);
        drop(service);
    }

    // The other setups: single-process mode, and TLS with a new handshake
    // per request, each reloaded under load.
    let dir = graceful_dev::temp_dir("bench-reloads");
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("bench").write(&dir, "server");
    struct Setup<'a> {
        name: &'a str,
        args: Vec<&'a str>,
        envs: Vec<(&'a str, &'a str)>,
        mode: Mode,
        tls: bool,
    }
    let tls_args = vec![
        "--graceful",
        "127.0.0.1:0",
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    ];
    let setups = [
        Setup {
            name: "single mode, http1 keep-alive",
            args: vec!["--graceful", "127.0.0.1:0"],
            envs: vec![("GRACEFUL_MODE", "single")],
            mode: Mode::KeepAlive,
            tls: false,
        },
        Setup {
            name: "TLS, http1 new conn (handshake per request)",
            args: tls_args.clone(),
            envs: vec![],
            mode: Mode::NewConnection,
            tls: true,
        },
        Setup {
            name: "TLS, http2",
            args: tls_args,
            envs: vec![],
            mode: Mode::Http2,
            tls: true,
        },
    ];
    let mut other_rows = Vec::new();
    for Setup {
        name,
        args,
        envs,
        mode,
        tls,
    } in setups
    {
        let single = !envs.is_empty();
        let service = Service::start(&me, &args, &envs);
        let addr: SocketAddr = service.addr(T).parse().unwrap();
        let role = if single { "process" } else { "worker" };
        let mut serving = service.ready(role, 1, T);
        let tls = tls.then(|| ca.client_config());
        let load = Load::start_with(addr, mode, o.clients, "/", tls);
        let mut to_ready = Vec::new();
        for n in 0..o.reloads {
            std::thread::sleep(Duration::from_millis(100));
            let sent = Instant::now();
            // In single mode the PID to signal is the serving process's.
            let target = if single { serving } else { service.pid() };
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(target), Signal::SIGHUP).unwrap();
            let next = service.ready(role, n as u64 + 2, T);
            to_ready.push(sent.elapsed().as_secs_f64() * 1000.0);
            assert!(
                wait_gone(serving, T) || !single,
                "old process still running"
            );
            serving = next;
        }
        std::thread::sleep(Duration::from_millis(200));
        let report = load.stop();
        other_rows.push(vec![
            name.to_string(),
            o.reloads.to_string(),
            format!(
                "{} / {} / {}",
                report.sent, report.ok, report.retried_goaway
            ),
            failures(&report),
            format!(
                "{:.1} / {:.1}",
                median(to_ready.clone()),
                to_ready.iter().copied().fold(0.0, f64::max)
            ),
        ]);
        if single {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(serving), Signal::SIGTERM).unwrap();
            wait_gone(serving, T);
        }
        drop(service);
    }
    drop(dir);

    println!();
    println!("| mode | sent / ok / retried after GOAWAY, during reloads | failed | latency ms p50 / p99 / max, steady | latency ms p50 / p99 / max, within 1 s of a reload | signal → ready ms, median / max | ready → old exit ms, median / max | req/s graceful / plain = ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
    println!();
    let mut summary = BTreeMap::new();
    summary.insert(
        "idle master RSS (examples/hello, control socket, after a status query)",
        format!("{idle_rss} KiB"),
    );
    summary.insert(
        "idle master threads (examples/hello, control socket)",
        idle_threads.to_string(),
    );
    summary.insert(
        "idle master wake-ups in 3 s (examples/hello, control socket)",
        idle_wakeups.to_string(),
    );
    summary.insert(
        "idle master CPU in 3 s (examples/hello)",
        format!("{idle_cpu} ms"),
    );
    summary.insert(
        "SIGTERM → exit, no connections (examples/hello)",
        format!("{stop_ms:.1} ms"),
    );
    summary.insert(
        "ready → old exit, 8 idle keep-alive connections (clients close on the server's FIN / never read)",
        format!(
            "{:.1} / {:.1} ms (idle_grace 500 ms)",
            idle_exit_ms[0], idle_exit_ms[1]
        ),
    );
    println!("| setup | reloads | sent / ok / retried after GOAWAY | failed | signal → ready ms, median / max |");
    println!("| --- | --- | --- | --- | --- |");
    for row in other_rows {
        println!("| {} |", row.join(" | "));
    }
    println!();
    println!("| measure | value |");
    println!("| --- | --- |");
    for (k, v) in summary {
        println!("| {k} | {v} |");
    }
    println!();
    for note in master_notes {
        println!("{note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_path_is_taken_only_as_a_client_can_send_it() {
        for good in [
            "/",
            "/aaaa",
            "/a/b-c_d.e~f",
            &format!("/{}", "a".repeat(1999)),
        ] {
            assert!(valid_request_path(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "//x y",
            "/a?b",
            "/a#b",
            "/%41",
            "/\u{e9}",
            &format!("/{}", "a".repeat(2000)),
        ] {
            assert!(!valid_request_path(bad), "{bad}");
        }
    }

    /// The ranks of the median's 95 % interval are those of the binomial
    /// tables (none below 6 values, then x(1)–x(n) up to 8, x(3)–x(10) of
    /// 12, x(4)–x(13) of 16, x(6)–x(15) of 20), and for every n up to 120
    /// those of an exact count: the largest k with
    /// 40 · (C(n, 0) + … + C(n, k - 1)) ≤ 2ⁿ.
    #[test]
    fn the_median_interval_has_the_ranks_of_the_binomial_tables() {
        let ranks: Vec<(usize, usize)> = [5, 6, 8, 9, 12, 16, 20, 30]
            .into_iter()
            .map(|n| (n, rank_for_median_interval(n)))
            .collect();
        assert_eq!(
            ranks,
            [
                (5, 1),
                (6, 1),
                (8, 1),
                (9, 2),
                (12, 3),
                (16, 4),
                (20, 6),
                (30, 10)
            ]
        );
        for n in 1..=120usize {
            let (mut below, mut choose, mut k) = (0u128, 1u128, 1);
            // below = C(n, 0) + … + C(n, k - 2); choose = C(n, k - 1).
            while 40 * (below + choose) <= 1u128 << n {
                below += choose;
                choose = choose * (n - (k - 1)) as u128 / k as u128;
                k += 1;
            }
            let exact = (k - 1).max(1);
            assert_eq!(rank_for_median_interval(n), exact, "n = {n}");
        }
        // Many rounds: no underflow, and the interval narrows around the
        // middle (n/2 - 0.98 √n, the normal approximation).
        let k = rank_for_median_interval(10_000);
        assert!((4_900..=4_903).contains(&k), "{k}");
        let values: Vec<f64> = (1..=16).rev().map(f64::from).collect();
        assert_eq!(median_interval(&values), (4.0, 13.0));
        assert_eq!(median_interval(&[]), (0.0, 0.0));
    }

    /// Two servers sharing CPU 0 are saturated when together they fill it
    /// (each may run less than half); capped ones when each fills its cap.
    #[test]
    fn a_pair_is_saturated_when_its_cpu_is_full() {
        assert!(pair_saturated(0.49, 0.49, false));
        assert!(pair_saturated(0.70, 0.25, false));
        assert!(!pair_saturated(0.47, 0.47, false));
        assert!(pair_saturated(1.0, 0.96, true));
        assert!(!pair_saturated(1.0, 0.90, true));
        assert!(!pair_saturated(0.60, 0.40, true));
        // The bound itself counts.
        assert!(pair_saturated(SATURATED, 0.0, false));
        assert!(pair_saturated(1.0, SATURATED, true));
    }

    /// The plain server's slot changes every two rounds; split by it, and
    /// a factor that favours one slot cancels in the balanced ratios.
    #[test]
    fn a_slot_that_favours_its_server_cancels_in_the_balanced_ratios() {
        let slots: Vec<usize> = (0..8).map(plain_slot).collect();
        assert_eq!(slots, [0, 0, 1, 1, 0, 0, 1, 1]);
        // graceful / plain is 0.97, and the server started first runs 6 %
        // faster: graceful gains when plain is second.
        let ratios: Vec<f64> = (0..8)
            .map(|round| match plain_slot(round) {
                0 => 0.97 / 1.06,
                _ => 0.97 * 1.06,
            })
            .collect();
        let (first, second) = split_by_slot(&ratios);
        assert_eq!(first, [0.97 / 1.06; 4]);
        assert_eq!(second, [0.97 * 1.06; 4]);
        let balanced = slot_balanced(&ratios);
        assert_eq!(balanced.len(), 4);
        for value in balanced {
            assert!((value - 0.97).abs() < 1e-12, "{value}");
        }
        // Each round is taken with the round two later, not its neighbour.
        let distinct = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
        assert_eq!(slot_balanced(&distinct), [2.0, 4.0, 32.0, 64.0]);
        // A round whose partner is missing is left out: 7 rounds give 3.
        assert_eq!(slot_balanced(&distinct[..7]), [2.0, 4.0, 32.0]);
        assert_eq!(slot_balanced(&distinct[..2]), Vec::<f64>::new());
    }

    /// Two rounds both have the plain server first, so the second slot
    /// and the balanced ratios have no rounds: printed as such, not as a
    /// ratio of 0.000.
    #[test]
    fn too_few_rounds_for_the_slots_split_print_none_not_zero() {
        let (first, second) = split_by_slot(&[0.98, 1.01]);
        assert_eq!(median_text(&first), "0.995");
        assert_eq!(median_text(&second), NO_ROUND);
        assert_eq!(median_cell(&slot_balanced(&[0.98, 1.01])), NO_ROUND);
        assert_eq!(median_cell(&[0.9, 1.0, 1.1]), "1.000 (0.900 – 1.100)");
    }

    /// An even count's median is the mean of its two middle values, not
    /// the upper one (which put every median of 16 rounds a rank high).
    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![0.90, 1.10]), 1.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![7.0]), 7.0);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
