//! Single-process mode: no master. The process binds its own listeners and
//! serves them. A reload starts a successor from the same executable path,
//! which inherits every listener; once the successor is ready, this process
//! drains and exits. If the successor fails to start, this one keeps serving.
//!
//! The successor tells its predecessor how its start went over the same kind
//! of control socket a worker uses (`Ready` or `Failed`), and inherits the
//! listener table as descriptors plus `GRACEFUL_INHERIT`.

use std::ffi::OsString;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::control::{self, ToMaster};
use crate::listeners::Listeners;
use crate::log::log;
use crate::notify::{monotonic_usec, Notifier};
use crate::serve;
use crate::server::MainOutput;
use crate::worker::{self, WorkerEnv, ENV_CONTROL_FD, ENV_GENERATION, ENV_ROLE};
use crate::{Error, Server};

/// Carries the listener table to a successor.
const ENV_INHERIT: &str = "GRACEFUL_INHERIT";

/// Where `graceful::reload()` sends its request in single mode.
static RELOAD: OnceLock<mpsc::UnboundedSender<String>> = OnceLock::new();

/// `graceful::reload()` in a single-mode process. `None`: not single mode.
pub(crate) fn request_reload() -> Option<()> {
    let sender = RELOAD.get()?;
    let _ = sender.send("graceful::reload()".to_string());
    Some(())
}

/// What a single-mode process knows about systemd, to pass on to successors.
struct Systemd {
    notifier: Notifier,
    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC`, given to successors as they are.
    env: Vec<(&'static str, OsString)>,
}

impl Systemd {
    fn from_env() -> Option<Systemd> {
        let env: Vec<(&'static str, OsString)> = ["NOTIFY_SOCKET", "WATCHDOG_USEC"]
            .into_iter()
            .filter_map(|var| std::env::var_os(var).map(|value| (var, value)))
            .collect();
        Notifier::from_env().map(|notifier| Systemd { notifier, env })
    }
}

/// Everything the reload task needs.
struct Process {
    server: Server,
    generation: u64,
    executable: PathBuf,
    argv: Vec<OsString>,
    listeners: Mutex<Listeners>,
    systemd: Option<Systemd>,
    /// Set once a successor has taken over: the listeners are its now.
    handed_over: std::sync::atomic::AtomicBool,
}

impl Process {
    fn notify(&self, message: &str) {
        if let Some(systemd) = &self.systemd {
            systemd.notifier.send(message);
        }
    }

    fn name(&self) -> String {
        format!("process {} (pid {})", self.generation, std::process::id())
    }
}

pub(crate) fn run<F, Fut>(
    mut server: Server,
    predecessor: Option<WorkerEnv>,
    main: F,
) -> Result<(), Error>
where
    F: FnOnce() -> Fut,
    Fut: Future,
    Fut::Output: MainOutput,
{
    let started = Instant::now();
    // Before anything else: what systemd and the predecessor passed.
    let listeners = match &predecessor {
        None => Listeners::new(crate::activation::take()),
        Some(_) => {
            let inherited = std::env::var(ENV_INHERIT).unwrap_or_default();
            std::env::remove_var(ENV_INHERIT);
            Listeners::import(&inherited).map_err(|reason| Error::WorkerEnv {
                var: ENV_INHERIT,
                value: inherited.clone(),
                reason,
            })?
        }
    };
    let systemd = Systemd::from_env();
    let generation = predecessor.as_ref().map_or(1, |p| p.generation);
    let fail = |reason: String| match &predecessor {
        Some(p) => {
            let _ = control::send_to_master(p.control.as_fd(), &ToMaster::Failed(reason.clone()));
            Error::WorkerStart { reason }
        }
        None => {
            log!("start failed: {reason}");
            Error::StartFailed { reason }
        }
    };
    let executable = crate::master::executable_path()?;
    let runtime = serve::build_runtime(&server).map_err(fail)?;
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let _ = RELOAD.set(reload_tx.clone());

    let result = runtime.block_on(async {
        // Stop signals drain, as in a worker; reload signals start a successor.
        worker::listen_for_signals(&server, Some(reload_tx))?;
        let registrations = serve::run_main(&mut server, main).await.map_err(fail)?;
        let mut listeners = listeners;
        let mut keys = std::collections::HashSet::new();
        let served = serve::acquire(registrations, |request| {
            let key = listeners.acquire(generation, request)?;
            let fd = &listeners.get(&key).expect("just acquired").fd;
            let fd = fd
                .try_clone()
                .map_err(|e| format!("cannot duplicate the listener: {e}"))?;
            keys.insert(key);
            serve::to_listener(fd)
        })
        .map_err(fail)?;
        // Inherited listeners the new code no longer registers are closed.
        listeners.collect(&keys);
        let accepting = serve::start_serving(served, server.idle_grace);
        let process = Arc::new(Process {
            server,
            generation,
            executable,
            argv: std::env::args_os().collect(),
            listeners: Mutex::new(listeners),
            systemd,
            handed_over: false.into(),
        });
        let took = started.elapsed().as_millis();
        match &predecessor {
            Some(p) => {
                // The predecessor drains and exits now; nothing more is said.
                control::send_to_master(p.control.as_fd(), &ToMaster::Ready).map_err(|e| {
                    fail(format!("cannot tell the predecessor this process is ready: {e}"))
                })?;
                log!("{} ready in {took} ms and serving", process.name());
            }
            None => {
                // The PID file first: whoever reads the log line can rely on it.
                if let Some(path) = &process.server.pid_file {
                    write_pid_file(path, std::process::id()).map_err(|e| fail(e.to_string()))?;
                }
                log!(
                    "{} ready in {took} ms and serving (single-process mode); reload with {}, stop with {}",
                    process.name(),
                    crate::master::list(&process.server.reload_signals),
                    crate::master::list(&process.server.stop_signals),
                );
                process.notify(&format!("READY=1\nSTATUS=serving with {}", process.name()));
            }
        }
        tokio::spawn(reloads(process.clone(), reload_rx));
        if let Some(every) = process.systemd.as_ref().and_then(|s| s.notifier.watchdog) {
            tokio::spawn(watchdog(process.clone(), every));
        }
        // Announced here, on the way into the drain, and not by a task of its
        // own: a task could still be waiting to run when a quick drain ends
        // and the runtime is shut down, and the message would be lost.
        crate::shutdown_signal().await;
        announce_stop(&process);
        serve::drain(accepting, &process.server, &process.name()).await;
        Ok::<_, Error>(process)
    });
    runtime.shutdown_timeout(Duration::ZERO);
    let process = result?;
    let handed_over = process
        .handed_over
        .load(std::sync::atomic::Ordering::SeqCst);
    let mut listeners = process.listeners.lock().unwrap_or_else(|e| e.into_inner());
    if handed_over {
        log!("{} exits; its successor serves", process.name());
        // Close our copies only: the sockets and their files are the
        // successor's now.
        *listeners = Listeners::default();
    } else {
        listeners.close_all();
        if let Some(path) = &process.server.pid_file {
            remove_pid_file(path, std::process::id());
        }
        log!("stopped");
    }
    Ok(())
}

/// Runs reloads one at a time; requests that arrive during one are
/// coalesced into one more.
async fn reloads(process: Arc<Process>, mut requests: mpsc::UnboundedReceiver<String>) {
    let mut stopping = crate::drain::global().subscribe();
    loop {
        let why = tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            why = requests.recv() => match why {
                Some(why) => why,
                None => break,
            },
        };
        if std::process::id() == 1 {
            log!(
                "reload requested ({why}) but this process is PID 1, and its successor would \
                 end with it; still serving. Use master mode (the default) for in-place reloads here"
            );
            continue;
        }
        log!("reload started ({why})");
        process.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading ({why})",
            monotonic_usec()
        ));
        let outcome = successor(&process).await;
        // Requests that came in meanwhile are covered by one more reload.
        let mut queued = false;
        while requests.try_recv().is_ok() {
            queued = true;
        }
        match outcome {
            // `_child` is held, never awaited, for the life of this task:
            // the successor is not reaped by this process, so its PID cannot
            // be reused while requests are passed on to it.
            Ok((pid, _child)) => {
                let name = process.name();
                log!("reload finished: successor (pid {pid}) is serving; {name} draining");
                process.notify(&format!(
                    "MAINPID={pid}\nREADY=1\nSTATUS=reload finished: serving with pid {pid}"
                ));
                if let Some(path) = &process.server.pid_file {
                    if let Err(e) = write_pid_file(path, pid) {
                        log!("{e}");
                    }
                }
                process
                    .handed_over
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                crate::drain::global().start(None);
                if queued {
                    pass_on(&process, pid);
                }
                // Requests that reach this process while it drains may be
                // for a build newer than the successor's: pass them on too.
                while requests.recv().await.is_some() {
                    pass_on(&process, pid);
                }
                break;
            }
            Err(Stopped) => break,
            Err(Failed(reason)) => {
                let name = process.name();
                log!("reload failed: {reason}; still serving with {name}");
                process.notify(&format!(
                    "READY=1\nSTATUS=reload failed: {reason}; still serving with {name}"
                ));
                if queued {
                    log!("running the reload requested during the failed one");
                    let _ = RELOAD.get().map(|r| r.send("queued request".into()));
                }
            }
        }
    }
}

/// Passes a reload request on to the successor `pid`, which is ready and so
/// handles its reload signals.
fn pass_on(process: &Process, pid: u32) {
    match process.server.reload_signals.first() {
        Some(sig) => {
            log!("passing a reload request on to the successor (pid {pid}) as {sig}");
            let target = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(target, sig.to_nix());
        }
        None => log!(
            "a reload request is dropped: no reload signal is configured to pass it on to \
             the successor (pid {pid})"
        ),
    }
}

enum Outcome {
    Stopped,
    Failed(String),
}
use Outcome::{Failed, Stopped};

/// Starts a successor and waits until it is ready (its PID and handle),
/// fails, or the drain of this process starts.
async fn successor(process: &Process) -> Result<(u32, tokio::process::Child), Outcome> {
    let spawn_failed = |e: std::io::Error| {
        Failed(format!(
            "cannot start a successor from {}: {e}",
            process.executable.display()
        ))
    };
    let (mine, theirs) = control::pair().map_err(spawn_failed)?;
    control::set_nonblocking(mine.as_fd(), true).map_err(spawn_failed)?;
    let (inherit, mut keep) = process
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .export();
    keep.push(theirs.as_raw_fd());
    let mut command = tokio::process::Command::from(crate::master::next_generation(
        &process.executable,
        &process.argv,
        keep,
        &process.server.reload_signals,
        Vec::new(),
    ));
    command
        .env(ENV_CONTROL_FD, theirs.as_raw_fd().to_string())
        .env(ENV_GENERATION, (process.generation + 1).to_string())
        .env(ENV_ROLE, "successor")
        .env(ENV_INHERIT, inherit);
    if let Some(systemd) = &process.systemd {
        command.envs(systemd.env.iter().map(|(k, v)| (k, v)));
    }
    let mut child = command.spawn().map_err(spawn_failed)?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    log!("successor {} (pid {pid}) starting", process.generation + 1);

    let waited = tokio::select! {
        answer = answer(mine) => answer,
        _ = tokio::time::sleep(process.server.ready_timeout) => Err(format!(
            "was not ready within the {:?} ready_timeout",
            process.server.ready_timeout
        )),
        _ = crate::shutdown_signal() => {
            log!("stopping: killing successor (pid {pid}), which was not ready");
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(Stopped);
        }
    };
    match waited {
        Ok(()) => Ok((pid, child)),
        Err(reason) => {
            // Give an exiting successor a moment to be reaped, so that its
            // exit status is part of the reason; then kill it.
            let status = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
                Ok(Ok(status)) => format!("{status}"),
                _ => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    "was killed with SIGKILL".to_string()
                }
            };
            Err(Failed(format!(
                "successor (pid {pid}) {status} before it was ready: {reason}"
            )))
        }
    }
}

/// Reads the successor's answer: `Ok` when it is ready, or why it is not.
async fn answer(control: OwnedFd) -> Result<(), String> {
    // SAFETY: the OwnedFd moved in keeps the descriptor open, and pointing at
    // the same socket, for as long as the AsyncFd lives.
    let control = unsafe { AsyncFd::register_with_interest(control, Interest::READABLE) }
        .map_err(|e| format!("cannot watch it: {}", e.into_parts().1))?;
    let mut failure = None;
    loop {
        let mut guard = control
            .readable()
            .await
            .map_err(|e| format!("control socket: {e}"))?;
        match guard.try_io(|fd| control::recv_from_worker(fd.get_ref().as_fd())) {
            Err(_would_block) => continue,
            Ok(Ok(Some(ToMaster::Ready))) => return Ok(()),
            Ok(Ok(Some(ToMaster::Failed(reason)))) => failure = Some(reason),
            Ok(Ok(Some(other))) => log!("unexpected message from the successor: {other:?}"),
            Ok(Ok(None)) => {
                return Err(failure.unwrap_or_else(|| "it closed its control socket".into()))
            }
            Ok(Err(e)) => return Err(format!("control socket: {e}")),
        }
    }
}

/// Tells systemd when this process stops (not when it hands over).
fn announce_stop(process: &Process) {
    if process
        .handed_over
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return;
    }
    // Ask for the whole drain, so a long stop_timeout is not cut short by
    // TimeoutStopSec.
    let extend = (process.server.stop_timeout + Duration::from_secs(1)).as_micros();
    process.notify(&format!(
        "STOPPING=1\nEXTEND_TIMEOUT_USEC={extend}\nSTATUS=stopping: draining {}",
        process.name()
    ));
}

async fn watchdog(process: Arc<Process>, every: Duration) {
    let mut stopping = crate::drain::global().subscribe();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => process.notify("WATCHDOG=1"),
        }
    }
}

/// Writes `pid` to `path` atomically: a file beside it, then a rename.
pub(crate) fn write_pid_file(path: &Path, pid: u32) -> Result<(), Error> {
    let error = |source| Error::PidFile {
        path: path.to_path_buf(),
        source,
    };
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&aside, format!("{pid}\n")).map_err(error)?;
    std::fs::rename(&aside, path).map_err(|e| {
        let _ = std::fs::remove_file(&aside);
        error(e)
    })
}

/// Removes the PID file if it still names `pid`.
pub(crate) fn remove_pid_file(path: &Path, pid: u32) {
    let ours = std::fs::read_to_string(path).is_ok_and(|text| text.trim() == pid.to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}
