//! Single-process mode's part in [`serve::run`]: no master. The process
//! binds its own listeners (or inherits its predecessor's table) and serves
//! them. A reload starts a successor from the same executable path, which
//! inherits every listener; once the successor is ready, this process drains
//! and exits. If the successor fails to start, this one keeps serving.
//!
//! The successor tells its predecessor how its start went over the same kind
//! of control socket a worker uses (`Ready` or `Failed`), and inherits the
//! listener table as descriptors plus `GRACEFUL_INHERIT`.

use std::ffi::OsString;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::addr::ListenRequest;
use crate::config::{Config, SignalList};
use crate::control::{self, Channel, ToMaster};
use crate::exec::Executable;
use crate::listeners::Listeners;
use crate::log::log;
use crate::notify::{self, Notifier};
use crate::registration::{MainOutput, Registration};
use crate::role::{Parent, ENV_INHERIT, ENV_MASTER_BUILDS, ENV_ROLE};
use crate::serve::{self, Adapter, Listener, StartError};
use crate::status::{Outcome, Report};
use crate::{activation, drain, pidfile, signal, Error};

/// Where `graceful::reload()` sends its request in single mode.
static RELOAD: OnceLock<mpsc::UnboundedSender<String>> = OnceLock::new();

/// Who waits for the outcome of a reload asked for with
/// `reload_and_wait()`. A reload that starts takes those waiting then; those
/// that come during it are covered by it (or, if it fails, by the next).
static WAITERS: Mutex<Vec<oneshot::Sender<Outcome>>> = Mutex::new(Vec::new());

fn take_waiters() -> Vec<oneshot::Sender<Outcome>> {
    std::mem::take(&mut *WAITERS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// `graceful::reload()` (without `waiter`) or `reload_and_wait()` in a
/// single-mode process. Not single mode: the waiter is given back.
pub(crate) fn request_reload(
    waiter: Option<oneshot::Sender<Outcome>>,
) -> Result<(), Option<oneshot::Sender<Outcome>>> {
    let Some(sender) = RELOAD.get() else {
        return Err(waiter);
    };
    let why = match waiter {
        Some(waiter) => {
            // Before the request: the reload it starts must find it.
            WAITERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(waiter);
            "graceful::reload_and_wait()"
        }
        None => "graceful::reload()",
    };
    let _ = sender.send(why.to_string());
    Ok(())
}

fn tell(waiters: impl IntoIterator<Item = oneshot::Sender<Outcome>>, outcome: &Outcome) {
    for waiter in waiters {
        let _ = waiter.send(outcome.clone());
    }
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

/// What this process shares with its reload task.
struct Shared {
    config: Config,
    generation: u64,
    executable: Executable,
    listeners: Mutex<Listeners>,
    systemd: Option<Systemd>,
    /// Set once a successor has taken over: the listeners are its now.
    handed_over: AtomicBool,
}

impl Shared {
    fn name(&self) -> String {
        format!("process {} (pid {})", self.generation, std::process::id())
    }

    fn notify(&self, message: &str) {
        if let Some(systemd) = &self.systemd {
            systemd.notifier.send(message);
        }
    }

    fn report(&self, report: &Report) {
        notify::publish(report, self.systemd.as_ref().map(|s| &s.notifier));
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, Listeners> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs a single-mode process: the first one (`predecessor` is `None`), or
/// a successor with the table it inherited.
pub(crate) fn run<F, Fut>(
    config: &Config,
    registrations: Vec<Registration>,
    predecessor: Option<(Parent, String)>,
    main: F,
) -> Result<(), Error>
where
    F: FnOnce() -> Fut,
    Fut: Future,
    Fut::Output: MainOutput,
{
    // Options that need a master are refused, not ignored.
    for (option, set) in [
        ("control_socket", config.control_socket.is_some()),
        ("watchdog", config.watchdog.is_some()),
    ] {
        if set {
            return Err(Error::InvalidOption {
                option,
                reason: "it needs master mode (the default): in single mode no process \
                         outlives a reload to own it"
                    .into(),
            });
        }
    }
    if let Some(user) = &config.user {
        return Err(Error::InvalidOption {
            option: "user",
            reason: format!(
                "{user:?}: single mode cannot serve as another user, since the process that \
                 serves also binds new addresses and starts the next version; use master mode \
                 (the default), whose master keeps the privileges"
            ),
        });
    }
    // Before anything else: what systemd and the predecessor passed.
    let (listeners, generation, predecessor) = match predecessor {
        None => {
            let activated = activation::take();
            if let Some((soft, hard)) = crate::fd::raise_open_file_limit() {
                log!("raised the limit on open files from {soft} to {hard} (the hard limit)");
            }
            (Listeners::new(activated), 1, None)
        }
        Some((parent, inherited)) => {
            let control = parent.control.as_raw_fd();
            let listeners =
                Listeners::import(&inherited, control).map_err(|e| Error::WorkerEnv {
                    var: ENV_INHERIT,
                    value: inherited.clone(),
                    reason: e.to_string(),
                })?;
            let tells_builds = parent.master_builds > 0;
            (
                listeners,
                parent.generation,
                Some((parent.control, tells_builds)),
            )
        }
    };
    crate::log::set_generation(generation);
    let shared = Arc::new(Shared {
        config: config.clone(),
        generation,
        executable: Executable::current()?,
        listeners: Mutex::new(listeners),
        systemd: Systemd::from_env(),
        handed_over: false.into(),
    });
    let single = Single {
        shared,
        predecessor,
        reloads: None,
    };
    serve::run(config, registrations, main, single)
}

struct Single {
    shared: Arc<Shared>,
    /// The control socket to the predecessor, for a successor; and whether
    /// the predecessor takes its build (`GRACEFUL_MASTER_BUILDS`).
    predecessor: Option<(OwnedFd, bool)>,
    reloads: Option<mpsc::UnboundedReceiver<String>>,
}

impl Adapter for Single {
    fn name(&self) -> String {
        self.shared.name()
    }

    fn install(&mut self, config: &Config) -> Result<(), Error> {
        let (reload_tx, reload_rx) = mpsc::unbounded_channel();
        let _ = RELOAD.set(reload_tx.clone());
        self.reloads = Some(reload_rx);
        // Stop signals drain, as in a worker; reload signals start a successor.
        signal::handle_in_serving(
            &config.reload_signals,
            &config.stop_signals,
            config.shutdown_delay,
            Some(reload_tx),
        )
    }

    async fn listener(&mut self, request: &ListenRequest) -> Result<Listener, String> {
        let mut listeners = self.shared.listeners();
        let fd = listeners
            .acquire(self.shared.generation, request)
            .map_err(|e| e.to_string())?;
        // The table keeps its copy, to pass on to a successor.
        let fd = fd
            .try_clone()
            .map_err(|e| format!("cannot duplicate the listener: {e}"))?;
        serve::to_listener(fd).map_err(|e| format!("cannot use the listener: {e}"))
    }

    async fn ready(&mut self, config: &Config, started: Instant) -> Result<(), StartError> {
        let shared = &self.shared;
        {
            // Inherited listeners the new code no longer registers are closed.
            let mut listeners = shared.listeners();
            listeners.keep(shared.generation);
            listeners.collect();
        }
        let took = started.elapsed();
        match &self.predecessor {
            Some((control, tells_builds)) => {
                let announce = |message: &ToMaster, what: &str| {
                    control::send(control.as_fd(), message).map_err(|e| {
                        StartError::Announce(format!("cannot tell the predecessor {what}: {e}"))
                    })
                };
                // Its build first, so that the reload's outcome names it.
                if let (true, Some(version)) = (tells_builds, &config.version) {
                    announce(&ToMaster::Build(version.clone()), "this process's build")?;
                }
                // The predecessor drains and exits now; nothing more is said.
                announce(&ToMaster::Ready(None), "this process is ready")?;
                crate::log::event!(
                    Info,
                    {
                        event = "ready",
                        took_ms = crate::log::millis(took),
                        version = config.version.as_deref()
                    },
                    "{} ready in {} ms and serving{}",
                    shared.name(),
                    took.as_millis(),
                    crate::status::spaced(config.version.as_deref())
                );
            }
            None => {
                // The PID file first: whoever reads the log line can rely on it.
                if let Some(path) = &config.pid_file {
                    pidfile::write(path, std::process::id())?;
                }
                shared.report(&Report::Ready {
                    name: shared.name(),
                    took,
                    build: config.version.clone(),
                    note: format!(
                        " (single-process mode); reload with {}, stop with {}",
                        SignalList(&config.reload_signals),
                        SignalList(&config.stop_signals)
                    ),
                });
            }
        }
        if let Some(requests) = self.reloads.take() {
            tokio::spawn(reloads(shared.clone(), requests));
        }
        if let Some(timeout) = shared.systemd.as_ref().and_then(|s| s.notifier.watchdog) {
            tokio::spawn(watchdog(shared.clone(), timeout / 2));
        }
        Ok(())
    }

    fn fail(&self, error: StartError) -> Error {
        let reason = error.to_string();
        match &self.predecessor {
            Some((control, _)) => {
                let _ = control::send(control.as_fd(), &ToMaster::Failed(reason.clone()));
                Error::WorkerStart { reason }
            }
            None => {
                self.shared.report(&Report::StartFailed {
                    reason: reason.clone(),
                });
                Error::StartFailed { reason }
            }
        }
    }

    /// Tells systemd when this process stops (not when it hands over). Done
    /// here, on the way into the drain, and not by a task of its own: a task
    /// could still be waiting to run when a quick drain ends and the runtime
    /// is shut down, and the message would be lost.
    fn draining(&self, config: &Config) {
        if self.shared.handed_over.load(Ordering::SeqCst) {
            return;
        }
        self.shared.report(&Report::Draining {
            name: self.shared.name(),
            // Ask for the whole drain, so a long stop_timeout is not cut
            // short by TimeoutStopSec.
            extend: config.stop_timeout + Duration::from_secs(1),
        });
    }

    fn finish(self, config: &Config) -> Result<(), Error> {
        let shared = &self.shared;
        let mut listeners = shared.listeners();
        if shared.handed_over.load(Ordering::SeqCst) {
            crate::log::event!(
                Info,
                { event = "exited" },
                "{} exits; its successor serves",
                shared.name()
            );
            // Close our copies only: the sockets and their files are the
            // successor's now.
            *listeners = Listeners::default();
        } else {
            listeners.close_all();
            if let Some(path) = &config.pid_file {
                pidfile::remove(path, std::process::id());
            }
            crate::log::event!(Info, { event = "stopped" }, "stopped");
        }
        Ok(())
    }
}

/// Runs reloads one at a time; requests that arrive during one are
/// coalesced into one more.
async fn reloads(shared: Arc<Shared>, mut requests: mpsc::UnboundedReceiver<String>) {
    let stopping = drain::global().stopping();
    tokio::pin!(stopping);
    loop {
        let why = tokio::select! {
            () = stopping.as_mut() => break,
            why = requests.recv() => match why {
                Some(why) => why,
                None => break,
            },
        };
        if crate::health::stopping() {
            log!("reload requested ({why}) while the service is stopping; ignored");
            tell(
                take_waiters(),
                &Outcome::Failed("the service is stopping".into()),
            );
            continue;
        }
        if std::process::id() == 1 {
            log!(
                "reload requested ({why}) but this process is PID 1, and its successor would \
                 end with it; still serving. Use master mode (the default) for in-place reloads here"
            );
            tell(
                take_waiters(),
                &Outcome::Failed("this process is PID 1: use master mode to reload here".into()),
            );
            continue;
        }
        shared.report(&Report::ReloadStarted {
            why,
            starting: None,
        });
        let waiting = take_waiters();
        let started = Instant::now();
        let outcome = successor(&shared).await;
        // Requests that came in meanwhile are covered by one more reload.
        let mut queued = false;
        while requests.try_recv().is_ok() {
            queued = true;
        }
        match outcome {
            // `_child` is held, never awaited, for the life of this task:
            // the successor is not reaped by this process, so its PID cannot
            // be reused while requests are passed on to it.
            Ok(Handover {
                pid,
                build,
                child: _child,
            }) => {
                shared.report(&Report::HandedOver {
                    pid,
                    build: build.clone(),
                    old: shared.name(),
                });
                let reloaded = Outcome::Reloaded {
                    generation: shared.generation + 1,
                    pid,
                    took: started.elapsed(),
                    build,
                };
                // The PID file first: whoever is told the reload is done
                // may read it next, and must find the successor there.
                if let Some(path) = &shared.config.pid_file {
                    if let Err(e) = pidfile::write(path, pid) {
                        // Left, the file would name this process, which
                        // drains and exits: `kill -HUP $(cat app.pid)`
                        // could then reach whatever process gets its PID
                        // next. Removing works on a full disk.
                        pidfile::remove(path, std::process::id());
                        log!(
                            "{e}; removed it rather than leave it naming pid {}, which is \
                             leaving (pid {pid} serves)",
                            std::process::id()
                        );
                    }
                }
                // Those who asked meanwhile are covered too: their request
                // is passed on to the successor below.
                tell(waiting.into_iter().chain(take_waiters()), &reloaded);
                shared.handed_over.store(true, Ordering::SeqCst);
                drain::global().start(None);
                if queued {
                    pass_on(&shared, pid);
                }
                // Requests that reach this process while it drains may be
                // for a build newer than the successor's: pass them on too.
                while requests.recv().await.is_some() {
                    pass_on(&shared, pid);
                }
                break;
            }
            Err(NoHandover::Stopped) => {
                let stopping = Outcome::Failed("this process is stopping".into());
                tell(waiting.into_iter().chain(take_waiters()), &stopping);
                break;
            }
            Err(NoHandover::Failed(reason)) => {
                let report = Report::ReloadFailed {
                    reason,
                    still: shared.name(),
                };
                if let Some(line) = report.log_line() {
                    tell(waiting, &Outcome::Failed(line));
                }
                shared.report(&report);
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
fn pass_on(shared: &Shared, pid: u32) {
    match shared.config.reload_signals.first() {
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

/// Why a reload did not hand over.
enum NoHandover {
    /// This process started to drain meanwhile.
    Stopped,
    /// The successor did not become ready, for this reason.
    Failed(String),
}

/// A successor that is ready: its PID, the build it reported, and its
/// handle.
struct Handover {
    pid: u32,
    build: Option<String>,
    child: tokio::process::Child,
}

/// Starts a successor and waits until it is ready, fails, or the drain of
/// this process starts.
async fn successor(shared: &Shared) -> Result<Handover, NoHandover> {
    let spawn_failed = |e: std::io::Error| {
        NoHandover::Failed(format!(
            "cannot start a successor from {}: {e}",
            shared.executable.path().display()
        ))
    };
    let (inherit, fds) = shared.listeners().export();
    let generation = shared.generation + 1;
    let mut prepared = shared
        .executable
        // The successor stays in this process's group: it becomes the
        // service, which a terminal or a process manager signals as a group.
        .prepare(
            generation,
            fds,
            &shared.config.reload_signals,
            Vec::new(),
            false,
            None,
        )
        .map_err(spawn_failed)?;
    // Level 1: the successor says its build (`B`); nothing more is said
    // to it in single mode.
    prepared
        .command
        .env(ENV_ROLE, "successor")
        .env(ENV_INHERIT, inherit)
        .env(ENV_MASTER_BUILDS, "1");
    if let Some(systemd) = &shared.systemd {
        prepared
            .command
            .envs(systemd.env.iter().map(|(k, v)| (k, v)));
    }
    let (mut child, control) = prepared.spawn_async().map_err(spawn_failed)?;
    let pid = child.id().unwrap_or(0);
    crate::log::event!(
        Info,
        { event = "successor_starting", successor_pid = pid },
        "successor {generation} (pid {pid}) starting"
    );

    let ready_timeout = shared.config.ready_timeout;
    let waited = tokio::select! {
        answer = answer(control) => answer,
        _ = tokio::time::sleep(ready_timeout) => Err(format!(
            "was not ready within the {ready_timeout:?} ready_timeout"
        )),
        _ = crate::shutdown_signal() => {
            crate::log::event!(
                Warn,
                { event = "successor_killed", successor_pid = pid },
                "stopping: killing successor (pid {pid}), which was not ready"
            );
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(NoHandover::Stopped);
        }
    };
    match waited {
        Ok(build) => Ok(Handover { pid, build, child }),
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
            Err(NoHandover::Failed(format!(
                "successor (pid {pid}) {status} before it was ready: {reason}"
            )))
        }
    }
}

/// Reads the successor's answer: `Ok` with the build it reported once it is
/// ready, or why it is not.
async fn answer(control: OwnedFd) -> Result<Option<String>, String> {
    let channel = Channel::new(control).map_err(|e| format!("cannot watch it: {e}"))?;
    let mut failure = None;
    let mut build = None;
    loop {
        match channel.recv::<ToMaster>().await {
            Ok(Some(ToMaster::Ready(_))) => return Ok(build),
            Ok(Some(ToMaster::Build(told))) => build = Some(told),
            Ok(Some(ToMaster::Failed(reason))) => failure = Some(reason),
            Ok(Some(other)) => log!("unexpected message from the successor: {other:?}"),
            Ok(None) => {
                return Err(failure.unwrap_or_else(|| "it closed its control socket".into()))
            }
            Err(e) => return Err(format!("control socket: {e}")),
        }
    }
}

async fn watchdog(shared: Arc<Shared>, every: Duration) {
    let stopping = drain::global().stopping();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            () = stopping.as_mut() => return,
            _ = tokio::time::sleep(every) => shared.notify("WATCHDOG=1"),
        }
    }
}
