//! A fleet behind a real load balancer: three instances of
//! `examples/service` behind HAProxy, which checks `/readyz` on each
//! instance's health listener every 100 ms. Load runs through HAProxy the
//! whole time. A rolling restart, the Kubernetes way (stop one instance,
//! start it again, then the next), loses nothing with `shutdown_delay`; the
//! same restart without it is measured for comparison. A rolling reload,
//! the graceful way, loses nothing. And behind HAProxy in TCP mode, a
//! certificate rotated by a Kubernetes `..data` swap (`watch_paths`, no
//! signal) fails no TLS handshake, and the new certificate is served.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use graceful_dev::load::{Load, Mode, Report};
use graceful_dev::process::Service;
use graceful_dev::{built, temp_dir, TIMEOUT as T};
use nix::sys::signal::Signal;

/// One instance: its ports, and the running service.
struct Instance {
    app: u16,
    admin: u16,
    service: Option<Service>,
}

impl Instance {
    /// Three instances, not started, each with ports of its own.
    fn three() -> Vec<Instance> {
        (0..3)
            .map(|_| Instance {
                app: graceful_dev::free_port(),
                admin: graceful_dev::free_port(),
                service: None,
            })
            .collect()
    }

    fn start(&mut self, delay: &str) {
        let service = Service::start(
            &built("service"),
            &[
                &format!("127.0.0.1:{}", self.app),
                &format!("127.0.0.1:{}", self.admin),
            ],
            &[("GRACEFUL_SHUTDOWN_DELAY", delay)],
        );
        service.ready_worker(1, T);
        self.service = Some(service);
    }

    /// testapp over TLS with the files in `volume`, reloading when they
    /// change, and the health handler on the admin port.
    fn start_tls(&mut self, volume: &Path) {
        let file = |name: &str| volume.join(name).to_str().unwrap().to_string();
        let service = Service::start(
            &graceful_dev::testapp(),
            &[&format!("127.0.0.1:{}", self.app)],
            &[
                ("TESTAPP_TLS_CERT", &file("tls.crt")),
                ("TESTAPP_TLS_KEY", &file("tls.key")),
                ("GRACEFUL_WATCH_PATHS", volume.to_str().unwrap()),
                ("TESTAPP_HEALTH_ADDR", &format!("127.0.0.1:{}", self.admin)),
            ],
        );
        service.ready_worker(1, T);
        self.service = Some(service);
    }

    /// SIGTERM, and the master's exit (0).
    fn stop(&mut self) -> Duration {
        let mut service = self.service.take().expect("running");
        let began = Instant::now();
        service.signal(Signal::SIGTERM);
        assert!(service.wait_exit(T).success(), "{}", service.log_text());
        began.elapsed()
    }
}

/// HAProxy in front of `instances`, with its admin socket.
struct Balancer {
    service: Service,
    socket: PathBuf,
    frontend: SocketAddr,
}

impl Balancer {
    fn start(dir: &Path, instances: &[Instance]) -> Balancer {
        Balancer::start_in(dir, instances, "http")
    }

    /// With `mode` `tcp`, HAProxy passes TLS through to the instances.
    fn start_in(dir: &Path, instances: &[Instance], mode: &str) -> Balancer {
        let frontend: SocketAddr = format!("127.0.0.1:{}", graceful_dev::free_port())
            .parse()
            .unwrap();
        let socket = dir.join("haproxy.sock");
        let servers: String = instances
            .iter()
            .enumerate()
            .map(|(i, instance)| {
                format!(
                    "    server s{i} 127.0.0.1:{} check port {} inter 100ms fall 1 rise 1\n",
                    instance.app, instance.admin
                )
            })
            .collect();
        // A usual configuration: retries, and redispatch of a connection
        // that fails to another server.
        let config = format!(
            "global\n    maxconn 1000\n    stats socket {} mode 600 level admin\n\
             defaults\n    mode {mode}\n    timeout connect 1s\n    timeout client 10s\n    \
             timeout server 10s\n    timeout check 500ms\n    retries 3\n    option redispatch\n\
             frontend web\n    bind {frontend}\n    default_backend app\n\
             backend app\n    option httpchk GET /readyz\n    http-check expect status 200\n{servers}",
            socket.display()
        );
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let haproxy = graceful_dev::tool("haproxy");
        let service = Service::start(&haproxy, &["-db", "-f", file.to_str().unwrap()], &[]);
        let balancer = Balancer {
            service,
            socket,
            frontend,
        };
        balancer.wait_up(instances.len());
        balancer
    }

    /// The status (`UP`, `DOWN`, ...) of each server, from `show stat`.
    fn statuses(&self) -> Vec<(String, String)> {
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return Vec::new();
        };
        stream.set_read_timeout(Some(T)).unwrap();
        stream.write_all(b"show stat\n").unwrap();
        let mut csv = String::new();
        let _ = stream.read_to_string(&mut csv);
        let mut lines = csv.lines();
        let Some(header) = lines.next() else {
            return Vec::new();
        };
        let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
        let at = |name: &str| columns.iter().position(|c| *c == name).unwrap();
        let (proxy, server, status) = (at("pxname"), at("svname"), at("status"));
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > status && f[proxy] == "app" && f[server].starts_with('s'))
            .map(|f| (f[server].to_string(), f[status].to_string()))
            .collect()
    }

    /// Waits until `n` servers are `UP`.
    fn wait_up(&self, n: usize) {
        let deadline = Instant::now() + T;
        loop {
            let statuses = self.statuses();
            if statuses.iter().filter(|(_, s)| s == "UP").count() == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not {n} servers up: {statuses:?}\n{}",
                self.service.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Three instances with `delay`, HAProxy in front, and load through it in
/// both HTTP/1 modes; `roll` is run on each instance in turn, each waited
/// for until HAProxy has all three up again. Returns each load's report.
fn fleet(name: &str, delay: &str, roll: impl Fn(&mut Instance, &Balancer)) -> Vec<(Mode, Report)> {
    let dir = temp_dir(name);
    let mut instances = Instance::three();
    for instance in &mut instances {
        instance.start(delay);
    }
    let balancer = Balancer::start(&dir, &instances);
    let loads: Vec<(Mode, Load)> = [Mode::KeepAlive, Mode::NewConnection]
        .into_iter()
        .map(|mode| (mode, Load::start(balancer.frontend, mode, 2, "/")))
        .collect();
    for (_, load) in &loads {
        assert!(load.wait_progress(50, T));
    }
    for instance in &mut instances {
        roll(instance, &balancer);
        balancer.wait_up(3);
        for (_, load) in &loads {
            assert!(load.wait_progress(50, T));
        }
    }
    let reports = loads
        .into_iter()
        .map(|(mode, load)| (mode, load.stop()))
        .collect();
    drop(balancer);
    drop(instances);
    reports
}

fn print(what: &str, reports: &[(Mode, Report)]) {
    for (mode, report) in reports {
        println!("{what}, {}: {}", mode.name(), report.summary());
    }
}

/// Stop, then start again on the same ports, as a Deployment's rolling
/// update replaces a pod.
fn restart(delay: &'static str) -> impl Fn(&mut Instance, &Balancer) {
    move |instance, _| {
        let took = instance.stop();
        println!("instance on port {} stopped in {took:?}", instance.app);
        instance.start(delay);
    }
}

#[test]
fn a_rolling_restart_with_a_shutdown_delay_loses_nothing() {
    let reports = fleet("haproxy-delay", "1s", restart("1s"));
    print("rolling restart with shutdown_delay 1s", &reports);
    for (mode, report) in &reports {
        report.assert_clean(mode.name());
    }
}

/// What the delay prevents: the same rolling restart without it. Measured,
/// not asserted, beyond the load going on: HAProxy sends connections to an
/// instance that has stopped accepting until its next check fails.
#[test]
fn a_rolling_restart_without_a_shutdown_delay_is_measured() {
    let reports = fleet("haproxy-no-delay", "0s", restart("0s"));
    print("rolling restart without shutdown_delay", &reports);
    for (mode, report) in &reports {
        assert!(report.ok > 0, "{}: {}", mode.name(), report.summary());
    }
}

#[test]
fn a_rolling_reload_loses_nothing() {
    let reports = fleet("haproxy-reload", "1s", |instance, _| {
        let service = instance.service.as_ref().expect("running");
        service.signal(Signal::SIGHUP);
        service.ready_worker(2, T);
        service.wait_line("after draining", T);
    });
    print("rolling reload", &reports);
    for (mode, report) in &reports {
        report.assert_clean(mode.name());
    }
}

#[test]
fn a_certificate_rotated_by_a_data_swap_behind_haproxy_fails_no_handshake() {
    use graceful_dev::tls::{fetch, TestCa, Volume};
    let dir = temp_dir("haproxy-tls");
    let ca = TestCa::new();
    let first = ca.leaf("first");
    // One Secret volume, mounted by every instance, as a Deployment's pods
    // each mount the same Secret.
    let mut volume = Volume::new(&dir, &first.cert_pem, &first.key_pem);
    let mut instances = Instance::three();
    for instance in &mut instances {
        instance.start_tls(&volume.dir);
    }
    let balancer = Balancer::start_in(&dir, &instances, "tcp");
    let client = ca.client_config();
    assert_eq!(
        fetch(balancer.frontend, &client, false, "/")
            .unwrap()
            .peer_cert,
        first.der
    );
    let loads: Vec<(Mode, Load)> = [Mode::KeepAlive, Mode::NewConnection, Mode::Http2]
        .into_iter()
        .map(|mode| {
            let load = Load::start_with(balancer.frontend, mode, 2, "/", Some(client.clone()));
            (mode, load)
        })
        .collect();
    for (_, load) in &loads {
        assert!(load.wait_progress(50, T));
    }
    // The rotation: no signal is sent; every instance reloads by itself.
    let second = ca.leaf("second");
    volume.swap(&second.cert_pem, &second.key_pem);
    for instance in &instances {
        let service = instance.service.as_ref().unwrap();
        service.ready_worker(2, T);
        service.wait_line("after draining", T);
    }
    for (_, load) in &loads {
        assert!(load.wait_progress(50, T));
    }
    // Every instance now presents the new certificate.
    for _ in 0..6 {
        let got = fetch(balancer.frontend, &client, false, "/").unwrap();
        assert_eq!(got.peer_cert, second.der);
    }
    for (mode, load) in loads {
        let report = load.stop();
        println!(
            "TLS through HAProxy during a rotation, {}: {}",
            mode.name(),
            report.summary()
        );
        report.assert_clean(mode.name());
    }
    drop(balancer);
    drop(instances);
}
