//! The application the integration tests drive. Its address is the first
//! argument; its behaviour is set by environment variables so that every
//! generation of one service can be told apart and made to fail:
//!
//! - `TESTAPP_VERSION`: text included in every response (default `v1`).
//! - `TESTAPP_FAIL_IF_EXISTS=PATH`: when PATH exists at start, fail in the
//!   way PATH's content names: `exit`, `panic`, `error`, `hang`, `bad-addr`,
//!   `port-in-use:ADDR`; or, with `slow:MS`, start MS milliseconds late.
//! - `TESTAPP_STOP_TIMEOUT_MS`, `TESTAPP_IDLE_GRACE_MS`,
//!   `TESTAPP_HEADER_TIMEOUT_MS`, `TESTAPP_IDLE_TIMEOUT_MS`,
//!   `TESTAPP_MAX_CONNECTIONS`, `TESTAPP_MAX_DRAINING`: override those options.
//! - `TESTAPP_TLS_CERT`, `TESTAPP_TLS_KEY`: serve over TLS with these PEM files.
//! - `TESTAPP_PID_FILE`: the `pid_file` option.
//! - `TESTAPP_CHECK_DELAY_MS`: when run by an upgrading master in the check
//!   role (`GRACEFUL_ROLE=check`), wait that long first, so that a test can
//!   send signals, or replace the executable, while the master waits to
//!   re-execute. With `TESTAPP_CHECK_STARTED=PATH` the check writes PATH
//!   before it waits.
//! - `TESTAPP_WATCHDOG_MS`: the `watchdog` option. (`control_socket` is set
//!   with `GRACEFUL_CONTROL_SOCKET`, `user` and `group` with `GRACEFUL_USER`
//!   and `GRACEFUL_GROUP`.)
//! - `TESTAPP_HEALTH_ADDR=ADDR`: also serve `graceful::health` there (its
//!   listener is the second the master logs). `shutdown_delay` is set with
//!   `GRACEFUL_SHUTDOWN_DELAY`.
//! - `TESTAPP_BUILD_FILE=PATH`: the `version` option, read from PATH at
//!   each start, so that a test can deploy a "new build" by rewriting it.
//! - `TESTAPP_EXTRA_THREADS=1`: `main` starts a thread of its own and a
//!   thread of the runtime's blocking pool, both still alive when the worker
//!   starts serving.
//!
//! `GRACEFUL_MODE=single` runs it in single-process mode.
//!
//! Routes: `/` (version and worker pid), `/slow?ms=N` (answers after N ms),
//! `/pid` (worker pid only), `/until-drain` (answers its worker's pid once
//! that worker drains), `/reload` (calls `graceful::reload()`),
//! `/reload-and-wait` (calls `graceful::reload_and_wait()`; answers the
//! outcome, and what `TESTAPP_PID_FILE` says once it is known),
//! `/child` (starts a process that runs for a minute; answers its PID),
//! `/orphan` (starts a process that outlives its parent; answers its PID),
//! `/panic` (the handler panics), `/error` (the handler returns `Err`), `/abort` (the worker aborts), `/stream`
//! (ticks until `graceful::shutdown_signal()`, then `event: bye`), `/metrics`
//! (`graceful::metrics`), `/upgrade`
//! (an upgraded connection that ends on `shutdown_signal()`, or never with
//! `?stubborn`), `/open?PATH` (reads the file at PATH; answers its size or
//! the error), `/signal-master` (checks with signal 0 whether this process
//! may signal its parent; answers `allowed` or the error).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

/// `/stream`: a server-sent-events style body that ticks every 100 ms until
/// the worker starts to drain, then says goodbye and ends cleanly.
fn stream() -> Response<Channel<Bytes, Infallible>> {
    let (mut tx, body) = Channel::new(4);
    tokio::spawn(async move {
        graceful_dev::say(&format!(
            "testapp: stream started in pid {}",
            std::process::id()
        ));
        loop {
            tokio::select! {
                _ = graceful::shutdown_signal() => {
                    let _ = tx.send_data(Bytes::from_static(b"event: bye\n\n")).await;
                    return;
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if tx.send_data(Bytes::from_static(b"data: tick\n\n")).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Response::new(body)
}

/// `/upgrade`: switches protocols, writes `hello`, then on
/// `graceful::shutdown_signal()` writes `bye` and closes. With `?stubborn` it
/// never closes, to be cut at `stop_timeout`.
fn upgrade(mut req: Request<Incoming>) -> Response<BoxBody> {
    let stubborn = req.uri().query() == Some("stubborn");
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        graceful_dev::say(&format!("testapp: upgraded in pid {}", std::process::id()));
        let _ = io.write_all(b"hello\n").await;
        graceful::shutdown_signal().await;
        if stubborn {
            std::future::pending::<()>().await;
        }
        let _ = io.write_all(b"bye\n").await;
        let _ = io.shutdown().await;
    });
    Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "testapp")
        .body(Full::new(Bytes::new()).boxed_unsync())
        .unwrap()
}

async fn handle(req: Request<Incoming>) -> Result<Response<BoxBody>, std::io::Error> {
    if req.uri().path() == "/error" {
        return Err(std::io::Error::other("handler failed on purpose"));
    }
    if req.uri().path() == "/upgrade" {
        return Ok(upgrade(req));
    }
    if req.uri().path() == "/stream" {
        return Ok(stream().map(|b| b.boxed_unsync()));
    }
    if req.uri().path() == "/metrics" {
        let response = match graceful::metrics(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        return Ok(response.map(|b| Full::new(Bytes::from(b)).boxed_unsync()));
    }
    let response = match handle_text(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    Ok(response.map(|b| Full::new(Bytes::from(b)).boxed_unsync()))
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

async fn handle_text(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let version = std::env::var("TESTAPP_VERSION").unwrap_or_else(|_| "v1".into());
    let pid = std::process::id();
    match req.uri().path() {
        "/slow" => {
            let ms = graceful_dev::versioned::slow_ms(req.uri());
            graceful_dev::say(&format!("testapp: slow request started in pid {pid}"));
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Response::new(format!("slow {ms} done by {pid}\n")))
        }
        "/pid" => Ok(Response::new(format!("{pid}\n"))),
        "/until-drain" => {
            graceful_dev::say(&format!("testapp: waiting for the drain in pid {pid}"));
            graceful::shutdown_signal().await;
            Ok(Response::new(format!("{pid}\n")))
        }
        // A child process that runs for a minute; answers its PID.
        "/child" => {
            let mut child = tokio::process::Command::new("sleep")
                .arg("60")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("run sleep");
            let id = child.id().unwrap_or(0);
            // Reaped here when it ends, so that it is never left a zombie.
            tokio::spawn(async move { child.wait().await });
            Ok(Response::new(format!("{id}\n")))
        }
        // A grandchild that outlives its parent: orphaned, it is re-parented
        // to the nearest reaper (the master, when the master is PID 1).
        "/orphan" => {
            let out = std::process::Command::new("sh")
                // Its output goes elsewhere, so that this answers as soon as
                // the shell exits, while the orphan still runs.
                .args(["-c", "sleep 1 >/dev/null 2>&1 & echo $!"])
                .output()
                .expect("run sh");
            Ok(Response::new(
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ))
        }
        "/open" => {
            let path = req.uri().query().unwrap_or_default();
            Ok(Response::new(match std::fs::read(path) {
                Ok(bytes) => format!("read {} bytes\n", bytes.len()),
                Err(e) => format!("error: {e}\n"),
            }))
        }
        "/signal-master" => {
            let parent = nix::unistd::Pid::parent();
            Ok(Response::new(match nix::sys::signal::kill(parent, None) {
                Ok(()) => format!("allowed to signal {parent}\n"),
                Err(e) => format!("error: {e}\n"),
            }))
        }
        "/panic" => panic!("handler panicked on purpose"),
        "/abort" => std::process::abort(),
        "/reload" => match graceful::reload() {
            Ok(()) => Ok(Response::new("reload requested\n".to_string())),
            Err(e) => Ok(Response::new(format!("reload failed: {e}\n"))),
        },
        "/reload-and-wait" => match graceful::reload_and_wait().await {
            // With a PID file, what it says the moment the reload is told
            // done, as a deploy script that waited would read it.
            Ok(done) => Ok(Response::new(format!(
                "reloaded generation {} pid {}{}: {}{}\n",
                done.generation,
                done.pid,
                done.version
                    .map_or(String::new(), |v| format!(" version {v:?}")),
                done.message,
                std::env::var_os("TESTAPP_PID_FILE").map_or(String::new(), |path| format!(
                    "; the PID file says {:?}",
                    std::fs::read_to_string(path).unwrap_or_else(|e| e.to_string())
                ))
            ))),
            Err(e) => Ok(Response::new(format!("not reloaded: {e}\n"))),
        },
        _ => Ok(Response::new(format!("testapp {version} pid {pid}\n"))),
    }
}

fn fail_mode() -> Option<String> {
    let path = std::env::var_os("TESTAPP_FAIL_IF_EXISTS")?;
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

async fn app() -> Result<(), String> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    match fail_mode().as_deref() {
        None => {}
        Some("exit") => std::process::exit(3),
        Some("panic") => panic!("testapp was told to panic"),
        Some("error") => return Err("testapp was told to fail".into()),
        Some("hang") => std::future::pending::<()>().await,
        Some("bad-addr") => {
            graceful::register!("127.0.0.1:99999", handle);
        }
        Some(other) => {
            if let Some(taken) = other.strip_prefix("port-in-use:") {
                graceful::register!(taken.to_string(), handle);
            }
            if let Some(ms) = other.strip_prefix("slow:").and_then(|ms| ms.parse().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
    if std::env::var_os("TESTAPP_EXTRA_THREADS").is_some() {
        std::thread::Builder::new()
            .name("testapp-own".into())
            .spawn(|| loop {
                std::thread::park();
            })
            .expect("start a thread");
        // The blocking pool keeps an idle thread for 10 s.
        tokio::task::spawn_blocking(|| ())
            .await
            .expect("run on the blocking pool");
    }
    let health = std::env::var("TESTAPP_HEALTH_ADDR").ok();
    match (
        std::env::var_os("TESTAPP_TLS_CERT"),
        std::env::var_os("TESTAPP_TLS_KEY"),
    ) {
        (Some(cert), Some(key)) => {
            let tls = graceful::TlsConfig::from_pem_files(cert, key);
            graceful::register!(addr, handle, tls = tls);
        }
        _ => graceful::register!(addr, handle),
    }
    if let Some(health) = health {
        graceful::register!(health, graceful::health);
    }
    Ok(())
}

/// A number from the environment variable `name`, if it is set.
fn number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    if std::env::var_os("GRACEFUL_ROLE").is_some_and(|role| role == "check") {
        if let Some(ms) = number("TESTAPP_CHECK_DELAY_MS") {
            if let Some(path) = std::env::var_os("TESTAPP_CHECK_STARTED") {
                std::fs::write(&path, b"").expect("TESTAPP_CHECK_STARTED: cannot write the file");
            }
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    let mut server = graceful::Server::new().ready_timeout(Duration::from_secs(5));
    let ms = |name| number(name).map(Duration::from_millis);
    if let Some(timeout) = ms("TESTAPP_STOP_TIMEOUT_MS") {
        server = server.stop_timeout(timeout);
    }
    if let Some(timeout) = ms("TESTAPP_HEADER_TIMEOUT_MS") {
        server = server.header_timeout(timeout);
    }
    if let Some(timeout) = ms("TESTAPP_IDLE_TIMEOUT_MS") {
        server = server.idle_timeout(timeout);
    }
    if let Some(grace) = ms("TESTAPP_IDLE_GRACE_MS") {
        server = server.idle_grace(grace);
    }
    if let Some(n) = number("TESTAPP_MAX_DRAINING") {
        server = server.max_draining(n as usize);
    }
    if let Some(n) = number("TESTAPP_MAX_CONNECTIONS") {
        server = server.max_connections(n as usize);
    }
    if let Some(path) = std::env::var_os("TESTAPP_PID_FILE") {
        server = server.pid_file(path);
    }
    if let Some(period) = ms("TESTAPP_WATCHDOG_MS") {
        server = server.watchdog(period);
    }
    if let Some(path) = std::env::var_os("TESTAPP_BUILD_FILE") {
        let build = std::fs::read_to_string(&path).expect("TESTAPP_BUILD_FILE: cannot read it");
        server = server.version(build.trim_end());
    }
    server.run_and_exit(app)
}
