//! The master: keeps the PID and the listening sockets, starts workers,
//! switches generations on reload, and runs no user code.
//!
//! It is one thread with no async runtime: a `poll` loop over the signal
//! self-pipe and each worker's control socket, with a timeout computed from
//! the nearest deadline. When nothing happens it sleeps in `poll` without
//! waking up.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::control::{self, ToMaster};
use crate::listeners::Listeners;
use crate::log::log;
use crate::notify::{monotonic_usec, Notifier};
use crate::signal::SignalPipe;
use crate::worker::{ENV_CONTROL_FD, ENV_GENERATION};
use crate::{Error, Server, Signal};

/// How long after `stop_timeout` the master waits before it kills a worker
/// that is still draining (the worker cuts its own connections at
/// `stop_timeout`; this is for one that is stuck).
const KILL_GRACE: Duration = Duration::from_millis(500);
/// Restart backoff after a crash: doubles from the first to the last value.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A worker that served this long before it crashed resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Started; not ready yet. Killed at the deadline.
    Starting { deadline: Instant },
    /// The current generation.
    Serving,
    /// Told to stop; killed at the deadline if still alive.
    Draining { kill_at: Instant },
    /// SIGKILL sent; waiting to reap it.
    Killed,
}

#[derive(Debug)]
struct Worker {
    generation: u64,
    pid: Pid,
    control: Option<OwnedFd>,
    state: State,
    /// Listener keys this worker asked for.
    keys: HashSet<String>,
    started: Instant,
    ready_at: Option<Instant>,
    /// What the worker reported before it exited, or why it was killed.
    failure: Option<String>,
}

impl Worker {
    fn name(&self) -> String {
        format!("worker {} (pid {})", self.generation, self.pid)
    }
}

struct Master {
    server: Server,
    executable: PathBuf,
    argv: Vec<OsString>,
    signals: SignalPipe,
    workers: Vec<Worker>,
    next_generation: u64,
    current: Option<u64>,
    ever_ready: bool,
    reload_queued: bool,
    restart_at: Option<Instant>,
    crash_streak: u32,
    stopping: bool,
    listeners: Listeners,
    /// Keys of the last generation that became ready: kept open even while no
    /// worker runs (after a crash), so clients wait in the backlog.
    serving_keys: HashSet<String>,
    exit: Option<Result<(), Error>>,
    /// systemd notification, when NOTIFY_SOCKET is set.
    notify: Option<Notifier>,
    /// When the next `WATCHDOG=1` is due (sent only while a worker serves).
    watchdog_at: Option<Instant>,
}

/// The path workers are started from: recorded once, at start, so that a new
/// build renamed over it is what the next reload runs. A path with a slash in
/// argv[0] is kept as written (made absolute), so a symlink that is switched to
/// a new release is followed too.
pub(crate) fn executable_path() -> Result<PathBuf, Error> {
    if let Some(arg0) = std::env::args_os().next() {
        let path = Path::new(&arg0);
        if arg0.to_string_lossy().contains('/') {
            let absolute = if path.is_absolute() {
                path.to_path_buf()
            } else {
                std::env::current_dir()
                    .map_err(|e| Error::io("cannot read the current directory", e))?
                    .join(path)
            };
            // Drop `.` components: "./target/app" is recorded as ".../target/app".
            let absolute: PathBuf = absolute.components().collect();
            if absolute.is_file() {
                return Ok(absolute);
            }
        }
    }
    std::env::current_exe().map_err(|e| Error::io("cannot find the path of this executable", e))
}

pub(crate) fn run(server: Server) -> Result<(), Error> {
    // Before anything else: the activated sockets and their variables.
    let activated = crate::activation::take();
    let executable = executable_path()?;
    let mut handled: Vec<Signal> = server.reload_signals.clone();
    handled.extend(server.stop_signals.iter().copied());
    let signals = SignalPipe::install(&handled)?;
    // Before any worker is started: workers must not see NOTIFY_SOCKET.
    let notify = Notifier::from_env();
    let watchdog_at = notify
        .as_ref()
        .and_then(|n| n.watchdog)
        .map(|every| Instant::now() + every);
    let mut master = Master {
        server,
        executable,
        argv: std::env::args_os().collect(),
        signals,
        workers: Vec::new(),
        next_generation: 1,
        current: None,
        ever_ready: false,
        reload_queued: false,
        restart_at: None,
        crash_streak: 0,
        stopping: false,
        listeners: Listeners::new(activated),
        serving_keys: HashSet::new(),
        exit: None,
        notify,
        watchdog_at,
    };
    log!(
        "master started (pid {}, executable {}); reload with {}, stop with {}",
        std::process::id(),
        master.executable.display(),
        list(&master.server.reload_signals),
        list(&master.server.stop_signals),
    );
    if let Some(path) = &master.server.pid_file {
        crate::single::write_pid_file(path, std::process::id())?;
    }
    let result = master.spawn().and_then(|()| master.event_loop());
    master.listeners.close_all();
    if let Some(path) = &master.server.pid_file {
        crate::single::remove_pid_file(path, std::process::id());
    }
    match &result {
        Ok(()) => log!("stopped"),
        Err(e) => log!("exiting: {e}"),
    }
    result
}

/// The command that starts the next generation (a worker, or a single-mode
/// successor): the recorded executable with the original argv. In the child,
/// between fork and exec, the descriptors in `inherit` are made to survive
/// exec, the `ignore` signals are ignored (a reload signal sent to the
/// process group must not kill the child before it installs its own
/// handlers), and the `default` signal numbers get their default action.
pub(crate) fn next_generation(
    executable: &Path,
    argv: &[OsString],
    inherit: Vec<RawFd>,
    ignore: &[Signal],
    default: Vec<i32>,
) -> Command {
    let ignore: Vec<i32> = ignore.iter().map(|s| s.number()).collect();
    let mut command = Command::new(executable);
    if let Some(arg0) = argv.first() {
        command.arg0(arg0);
    }
    command.args(argv.iter().skip(1));
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (fcntl, signal), on memory allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            for &fd in &inherit {
                if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for &sig in &ignore {
                nix::libc::signal(sig, nix::libc::SIG_IGN);
            }
            for &sig in &default {
                nix::libc::signal(sig, nix::libc::SIG_DFL);
            }
            Ok(())
        });
    }
    command
}

pub(crate) fn list(signals: &[Signal]) -> String {
    if signals.is_empty() {
        return "graceful::reload() only".into();
    }
    signals
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Master {
    fn event_loop(&mut self) -> Result<(), Error> {
        loop {
            if let Some(result) = self.exit.take() {
                return result;
            }
            let timeout = match self.next_deadline() {
                None => PollTimeout::NONE,
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    // Round up so the loop does not spin just before a deadline.
                    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let readable: Vec<u64> = {
                let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
                let mut owners = Vec::new();
                for w in &self.workers {
                    if let Some(control) = &w.control {
                        fds.push(PollFd::new(control.as_fd(), PollFlags::POLLIN));
                        owners.push(w.generation);
                    }
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(Error::io("poll failed in the master", e.into())),
                }
                fds[1..]
                    .iter()
                    .zip(owners)
                    .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
                    .map(|(_, generation)| generation)
                    .collect()
            };
            for number in self.signals.drain() {
                self.on_signal(number);
            }
            for generation in readable {
                self.read_control(generation);
            }
            self.reap();
            self.on_timers();
        }
    }

    fn notify(&self, message: &str) {
        if let Some(notify) = &self.notify {
            notify.send(message);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.iter().filter_map(|w| match w.state {
            State::Starting { deadline } => Some(deadline),
            State::Draining { kill_at } => Some(kill_at),
            State::Serving | State::Killed => None,
        });
        // Keep-alives only while a worker serves: systemd's watchdog then
        // notices a service that cannot get a worker up.
        let watchdog = self.watchdog_at.filter(|_| self.current.is_some());
        workers.chain(self.restart_at).chain(watchdog).min()
    }

    fn worker(&mut self, generation: u64) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.generation == generation)
    }

    fn on_signal(&mut self, number: i32) {
        let Some(signal) = Signal::from_number(number) else {
            return; // SIGCHLD: reaping happens on every turn of the loop.
        };
        if self.server.stop_signals.contains(&signal) {
            self.stop(signal);
        } else if self.server.reload_signals.contains(&signal) {
            self.request_reload(&format!("signal {signal}"));
        }
    }

    fn request_reload(&mut self, why: &str) {
        if self.stopping {
            log!("reload requested ({why}) while stopping; ignored");
            return;
        }
        if self
            .workers
            .iter()
            .any(|w| matches!(w.state, State::Starting { .. }))
        {
            if !self.reload_queued {
                log!("reload requested ({why}) while another is in progress; it will run next");
            }
            // At most one queued: later requests are covered by it.
            self.reload_queued = true;
            return;
        }
        log!("reload started ({why})");
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading ({why}): starting worker {}",
            monotonic_usec(),
            self.next_generation
        ));
        self.restart_at = None;
        if let Err(e) = self.spawn() {
            self.after_failed_start(&e.to_string());
        }
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let spawn_error = |source| Error::Spawn {
            path: self.executable.clone(),
            source,
        };
        let (mine, theirs) = control::pair().map_err(spawn_error)?;
        control::set_nonblocking(mine.as_fd(), true).map_err(spawn_error)?;
        let generation = self.next_generation;
        let child_fd = theirs.as_raw_fd();
        // Our handlers must not run in the child before exec: they write to
        // the master's pipe.
        let default = self.server.stop_signals.iter().map(|s| s.number());
        let default = default.chain([NixSignal::SIGCHLD as i32]).collect();
        let mut command = next_generation(
            &self.executable,
            &self.argv,
            vec![child_fd],
            &self.server.reload_signals,
            default,
        );
        command
            .env(ENV_CONTROL_FD, child_fd.to_string())
            .env(ENV_GENERATION, generation.to_string());
        let child = command.spawn().map_err(spawn_error)?;
        drop(theirs);
        self.next_generation += 1;
        let pid = Pid::from_raw(child.id() as i32);
        // The master reaps with waitpid itself; the std handle is not needed.
        drop(child);
        let now = Instant::now();
        self.workers.push(Worker {
            generation,
            pid,
            control: Some(mine),
            state: State::Starting {
                deadline: now + self.server.ready_timeout,
            },
            keys: HashSet::new(),
            started: now,
            ready_at: None,
            failure: None,
        });
        log!("worker {generation} (pid {pid}) starting");
        Ok(())
    }

    fn read_control(&mut self, generation: u64) {
        loop {
            let Some(worker) = self.worker(generation) else {
                return;
            };
            let Some(control) = &worker.control else {
                return;
            };
            match control::recv_from_worker(control.as_fd()) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Ok(Some(ToMaster::Listen(key))) => self.listen(generation, &key),
                Ok(Some(ToMaster::Ready)) => self.on_ready(generation),
                Ok(Some(ToMaster::Failed(reason))) => {
                    if let Some(w) = self.worker(generation) {
                        w.failure = Some(reason);
                    }
                }
                Ok(Some(ToMaster::Reload)) => {
                    let why = format!("graceful::reload() in worker {generation}");
                    self.request_reload(&why);
                }
                Ok(None) | Err(_) => {
                    // The worker is exiting (or broke the protocol); it is
                    // reaped by waitpid. One that lingers is killed.
                    let kill_at = Instant::now() + Duration::from_secs(1);
                    let w = self.worker(generation).expect("checked above");
                    w.control = None;
                    if let State::Starting { deadline } = &mut w.state {
                        *deadline = (*deadline).min(kill_at);
                    }
                    return;
                }
            }
        }
    }

    fn listen(&mut self, generation: u64, request: &str) {
        let result = self.listeners.acquire(generation, request);
        let Some(worker) = self.workers.iter_mut().find(|w| w.generation == generation) else {
            return;
        };
        let Some(control) = &worker.control else {
            return;
        };
        let sent = match result {
            Ok(key) => {
                let held = self.listeners.get(&key).expect("just acquired");
                worker.keys.insert(key);
                control::send_listener(control.as_fd(), held.fd.as_fd(), &held.local)
            }
            Err(reason) => control::send_listen_error(control.as_fd(), &reason),
        };
        if let Err(e) = sent {
            log!("cannot answer {}: {e}", worker.name());
        }
    }

    fn on_ready(&mut self, generation: u64) {
        let now = Instant::now();
        let stop_timeout = self.server.stop_timeout;
        let Some(worker) = self.worker(generation) else {
            return;
        };
        if !matches!(worker.state, State::Starting { .. }) {
            return;
        }
        worker.state = State::Serving;
        worker.ready_at = Some(now);
        let took = now.duration_since(worker.started).as_millis();
        let name = worker.name();
        self.serving_keys = worker.keys.clone();
        self.ever_ready = true;
        self.restart_at = None;
        let previous = self.current.replace(generation);
        match previous.and_then(|g| self.worker(g)) {
            Some(old) => {
                old.state = State::Draining {
                    kill_at: now + stop_timeout + KILL_GRACE,
                };
                if let Some(control) = &old.control {
                    let _ = control::send_stop(control.as_fd());
                }
                let old_name = old.name();
                log!("reload finished: {name} ready in {took} ms and serving; {old_name} draining");
                self.notify(&format!(
                    "READY=1\nSTATUS=reload finished: serving with {name}"
                ));
            }
            None => {
                log!("{name} ready in {took} ms and serving");
                self.notify(&format!("READY=1\nSTATUS=serving with {name}"));
            }
        }
        self.collect_listeners();
        if self.reload_queued {
            self.reload_queued = false;
            self.request_reload("queued request");
        }
    }

    /// A worker that never became ready is gone or could not be started.
    fn after_failed_start(&mut self, reason: &str) {
        if self.stopping {
            return;
        }
        if let Some(current) = self
            .current
            .and_then(|g| self.workers.iter().find(|w| w.generation == g))
        {
            log!(
                "reload failed: {reason}; still serving with {}",
                current.name()
            );
            let status = format!(
                "READY=1\nSTATUS=reload failed: {reason}; still serving with {}",
                current.name()
            );
            self.notify(&status);
        } else if !self.ever_ready {
            log!("start failed: {reason}");
            self.exit = Some(Err(Error::StartFailed {
                reason: reason.to_string(),
            }));
            return;
        } else {
            self.schedule_restart(reason);
            return;
        }
        if self.reload_queued {
            self.reload_queued = false;
            self.request_reload("queued request");
        }
    }

    fn schedule_restart(&mut self, reason: &str) {
        let delay = BACKOFF_FIRST
            .saturating_mul(1u32 << self.crash_streak.min(16))
            .min(BACKOFF_MAX);
        self.crash_streak += 1;
        self.restart_at = Some(Instant::now() + delay);
        log!(
            "no worker is serving ({reason}); starting a new one in {} ms",
            delay.as_millis()
        );
        self.notify(&format!(
            "STATUS=no worker is serving ({reason}); starting a new one in {} ms",
            delay.as_millis()
        ));
    }

    fn reap(&mut self) {
        loop {
            // waitpid(-1) also reaps orphans re-parented to us when the
            // master is PID 1 in a container; those are simply not ours.
            let (pid, how) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, format!("exited with status {code}")),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, format!("was killed by {signal}"))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Ok(_) => continue,
                Err(e) => {
                    log!("waitpid failed: {e}");
                    return;
                }
            };
            self.on_exit(pid, &how);
        }
    }

    fn on_exit(&mut self, pid: Pid, how: &str) {
        // The worker may have sent its last messages (the reason its start
        // failed) just before it exited: read them before judging the exit.
        if let Some(generation) = self
            .workers
            .iter()
            .find(|w| w.pid == pid)
            .map(|w| w.generation)
        {
            self.read_control(generation);
        }
        let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        let worker = self.workers.remove(index);
        let name = worker.name();
        let detail = |when: &str| match &worker.failure {
            Some(failure) => format!("{name} {how} {when}: {failure}"),
            None => format!("{name} {how} {when}"),
        };
        if self.stopping {
            log!("{name} {how}");
        } else if worker.ready_at.is_none() {
            self.after_failed_start(&detail("before it was ready"));
        } else if self.current == Some(worker.generation) {
            self.current = None;
            if worker
                .ready_at
                .is_some_and(|at| at.elapsed() >= STABLE_AFTER)
            {
                self.crash_streak = 0;
            }
            log!("{}", detail("unexpectedly"));
            let starting = self
                .workers
                .iter()
                .any(|w| matches!(w.state, State::Starting { .. }));
            if !starting {
                self.schedule_restart(&format!("{name} {how}"));
            }
        } else {
            log!("{name} {how} after draining");
        }
        self.listeners.release(worker.generation);
        self.collect_listeners();
        if self.stopping && self.workers.is_empty() && self.exit.is_none() {
            self.exit = Some(Ok(()));
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let every = self.notify.as_ref().and_then(|n| n.watchdog);
        if let (Some(at), Some(every)) = (self.watchdog_at, every) {
            if at <= now && self.current.is_some() {
                self.notify("WATCHDOG=1");
                self.watchdog_at = Some(now + every);
            }
        }
        if self.restart_at.is_some_and(|at| at <= now) {
            self.restart_at = None;
            log!("restarting");
            if let Err(e) = self.spawn() {
                let reason = e.to_string();
                self.schedule_restart(&reason);
            }
        }
        let ready_timeout = self.server.ready_timeout;
        for w in &mut self.workers {
            let why = match w.state {
                State::Starting { deadline } if deadline <= now => {
                    if w.failure.is_none() {
                        w.failure = Some(if w.control.is_none() {
                            "closed its control channel before it was ready and did not exit"
                                .to_string()
                        } else {
                            format!("was not ready within the {ready_timeout:?} ready_timeout")
                        });
                    }
                    "it did not become ready in time"
                }
                State::Draining { kill_at } if kill_at <= now => {
                    "it was still running after stop_timeout"
                }
                _ => continue,
            };
            log!("killing {} with SIGKILL: {why}", w.name());
            // Only our own, unreaped child: its PID cannot have been reused.
            let _ = kill(w.pid, NixSignal::SIGKILL);
            w.state = State::Killed;
        }
    }

    fn stop(&mut self, signal: Signal) {
        let now = Instant::now();
        if self.stopping {
            log!("{signal} received again while stopping; killing every worker now");
            for w in &mut self.workers {
                let _ = kill(w.pid, NixSignal::SIGKILL);
                w.state = State::Killed;
            }
            return;
        }
        self.stopping = true;
        self.reload_queued = false;
        self.restart_at = None;
        log!(
            "stopping ({signal}): draining {} worker(s) for up to {:?}",
            self.workers.len(),
            self.server.stop_timeout
        );
        let kill_at = now + self.server.stop_timeout + KILL_GRACE;
        // Ask systemd for the whole drain, so a long stop_timeout is not cut
        // short by TimeoutStopSec.
        let extend = (self.server.stop_timeout + KILL_GRACE + Duration::from_secs(1)).as_micros();
        self.notify(&format!(
            "STOPPING=1\nEXTEND_TIMEOUT_USEC={extend}\nSTATUS=stopping ({signal}): draining {} worker(s)",
            self.workers.len()
        ));
        for w in &mut self.workers {
            match w.state {
                State::Starting { .. } => {
                    // Not serving anything yet: nothing to drain.
                    let _ = kill(w.pid, NixSignal::SIGKILL);
                    w.state = State::Killed;
                }
                State::Serving => {
                    if let Some(control) = &w.control {
                        let _ = control::send_stop(control.as_fd());
                    }
                    w.state = State::Draining { kill_at };
                }
                State::Draining { .. } | State::Killed => {}
            }
        }
        if self.workers.is_empty() {
            self.exit = Some(Ok(()));
        }
    }

    /// Closes listeners that no live worker uses and the serving generation
    /// does not need.
    fn collect_listeners(&mut self) {
        self.listeners.collect(&self.serving_keys);
    }
}
