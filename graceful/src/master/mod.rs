//! The master: keeps the PID and the listening sockets, starts workers,
//! switches generations on reload, and runs no user code: it is given the
//! [`Config`] alone, never the registrations.
//!
//! What to do is decided by [`core::Core`], which has no I/O. This module is
//! the loop around it: one thread with no async runtime, a `poll` over the
//! signal self-pipe and each worker's control socket, with a timeout to the
//! core's nearest deadline. When nothing happens it sleeps in `poll` without
//! waking up.

mod core;
mod socket;
#[cfg(any(target_os = "linux", target_os = "android"))]
mod watch;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal as NixSignal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use self::core::{Action, Core, Event, Waiter, WatchdogConfig};
use self::socket::ControlSocket;
use crate::config::{Config, SignalList};
use crate::control::{self, ToMaster, ToWorker};
use crate::ctl::{self, Request};
use crate::exec::Executable;
use crate::listeners::Listeners;
use crate::log::log;
use crate::notify::{self, Notifier};
use crate::signal::SignalPipe;
use crate::{activation, pidfile, Error, Signal};

/// A started worker, as the loop knows it: its PID and its channel.
#[derive(Debug)]
struct Child {
    pid: u32,
    /// `None` once the channel reached EOF.
    control: Option<OwnedFd>,
}

struct Master {
    config: Config,
    executable: Executable,
    signals: SignalPipe,
    listeners: Listeners,
    notify: Option<Notifier>,
    children: HashMap<u64, Child>,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    watch: Option<watch::ExecutableWatch>,
    control: Option<ControlSocket>,
    core: Core,
    exit: Option<Result<(), String>>,
}

/// The signals the master handles: the configured ones, and those whose
/// default action would kill it (SIGQUIT stops; SIGUSR2 is logged and
/// ignored unless configured). SIGWINCH is ignored by default and left so.
fn caught_signals(config: &Config) -> Vec<Signal> {
    let mut caught: Vec<Signal> = config.reload_signals.clone();
    caught.extend(config.stop_signals.iter().copied());
    for signal in [Signal::SIGQUIT, Signal::SIGUSR2] {
        if !caught.contains(&signal) {
            caught.push(signal);
        }
    }
    caught
}

/// Starts watching the executable, or says why not.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn watch_executable(path: &std::path::Path) -> Option<watch::ExecutableWatch> {
    match watch::ExecutableWatch::new(path) {
        Ok(watch) => {
            log!("watching {} for a new build to reload", path.display());
            Some(watch)
        }
        Err(e) => {
            log!(
                "cannot watch {} ({e}); reload with a signal",
                path.display()
            );
            None
        }
    }
}

/// The worker watchdog: from systemd's `WATCHDOG_USEC` when it is set
/// (checks at a quarter of it, so that a wedged worker is found and
/// replaced before systemd's own deadline), else from the option.
fn watchdog_config(config: &Config, notify: Option<&Notifier>) -> Option<WatchdogConfig> {
    match notify.and_then(|n| n.watchdog) {
        Some(usec) => Some(WatchdogConfig {
            every: (usec / 4).max(crate::config::MIN_WATCHDOG),
            systemd: true,
        }),
        None => config.watchdog.map(|every| WatchdogConfig {
            every,
            systemd: false,
        }),
    }
}

/// Runs the master until the service has stopped.
pub(crate) fn run(config: Config) -> Result<(), Error> {
    // Before anything else: the activated sockets and their variables.
    let activated = activation::take();
    let raised = crate::fd::raise_open_file_limit();
    let executable = Executable::current()?;
    let signals = SignalPipe::install(&caught_signals(&config))?;
    // Before any worker is started: workers must not see NOTIFY_SOCKET.
    let notify = Notifier::from_env();
    log!(
        "master started (pid {}, executable {}); reload with {}, stop with {}",
        std::process::id(),
        executable.path().display(),
        SignalList(&config.reload_signals),
        SignalList(&config.stop_signals),
    );
    if let Some((soft, hard)) = raised {
        log!("raised the limit on open files from {soft} to {hard} (the hard limit)");
    }
    if let Some(path) = &config.pid_file {
        pidfile::write(path, std::process::id())?;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let watch = config
        .watch
        .then(|| watch_executable(executable.path()))
        .flatten();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    if config.watch {
        log!("watch is not available on this platform (it needs inotify); reload with a signal");
    }
    let control = match &config.control_socket {
        Some(path) => {
            let control = ControlSocket::bind(path)?;
            log!(
                "control socket {}: `graceful reload` and `graceful status` answer there",
                control.path().display()
            );
            Some(control)
        }
        None => None,
    };
    let watchdog = watchdog_config(&config, notify.as_ref());
    if let Some(watchdog) = watchdog {
        log!(
            "worker watchdog: the serving worker is checked every {:?}{}",
            watchdog.every,
            if watchdog.systemd {
                " (a quarter of systemd's WATCHDOG_USEC); WATCHDOG=1 is sent when it answers"
            } else {
                ""
            }
        );
    }
    let (core, actions) = Core::start(&config, watchdog, Instant::now());
    let mut master = Master {
        config,
        executable,
        signals,
        listeners: Listeners::new(activated),
        notify,
        children: HashMap::new(),
        #[cfg(any(target_os = "linux", target_os = "android"))]
        watch,
        control,
        core,
        exit: None,
    };
    master.perform(actions);
    let result = master.event_loop();
    master.listeners.close_all();
    if let Some(control) = master.control.take() {
        control.close();
    }
    if let Some(path) = &master.config.pid_file {
        pidfile::remove(path, std::process::id());
    }
    match &result {
        Ok(()) => log!("stopped"),
        Err(e) => log!("exiting: {e}"),
    }
    result
}

impl Master {
    fn event_loop(&mut self) -> Result<(), Error> {
        loop {
            if let Some(exit) = self.exit.take() {
                return exit.map_err(|reason| Error::StartFailed { reason });
            }
            let deadline = [
                self.core.next_deadline(),
                self.control.as_ref().and_then(ControlSocket::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    // Round up so the loop does not spin just before a deadline.
                    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            #[cfg(any(target_os = "linux", target_os = "android"))]
            let mut watched = false;
            let mut accept = false;
            let (readable, clients): (Vec<u64>, Vec<u64>) = {
                let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
                #[cfg(any(target_os = "linux", target_os = "android"))]
                let watch_at = self.watch.as_ref().map(|watch| {
                    fds.push(PollFd::new(watch.fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                let listener_at = self.control.as_ref().map(|control| {
                    fds.push(PollFd::new(control.listener_fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                let first_client = fds.len();
                let mut client_ids = Vec::new();
                if let Some(control) = &self.control {
                    for (id, fd) in control.client_fds() {
                        fds.push(PollFd::new(fd, PollFlags::POLLIN));
                        client_ids.push(id);
                    }
                }
                let first_child = fds.len();
                let mut owners = Vec::new();
                for (&generation, child) in &self.children {
                    if let Some(control) = &child.control {
                        fds.push(PollFd::new(control.as_fd(), PollFlags::POLLIN));
                        owners.push(generation);
                    }
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(Error::io("poll failed in the master", e.into())),
                }
                let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
                #[cfg(any(target_os = "linux", target_os = "android"))]
                if let Some(at) = watch_at {
                    watched = ready(&fds[at]);
                }
                if let Some(at) = listener_at {
                    accept = ready(&fds[at]);
                }
                let clients = fds[first_client..first_child]
                    .iter()
                    .zip(client_ids)
                    .filter(|(fd, _)| ready(fd))
                    .map(|(_, id)| id)
                    .collect();
                let children = fds[first_child..]
                    .iter()
                    .zip(owners)
                    .filter(|(fd, _)| ready(fd))
                    .map(|(_, generation)| generation)
                    .collect();
                (children, clients)
            };
            for number in self.signals.pending() {
                // SIGCHLD is not configurable: reaping happens on every turn.
                if let Some(signal) = Signal::from_number(number) {
                    self.handle(Event::Signal(signal));
                }
            }
            for generation in readable {
                self.read_control(generation);
            }
            #[cfg(any(target_os = "linux", target_os = "android"))]
            if watched && self.watch.as_ref().is_some_and(|w| w.changed()) {
                self.handle(Event::ExecutableChanged);
            }
            self.reap();
            for id in clients {
                self.read_client(id);
            }
            if let Some(control) = &mut self.control {
                if accept {
                    control.accept(Instant::now());
                }
                control.expire(Instant::now());
            }
            self.handle(Event::Tick);
        }
    }

    /// A request from the control socket's client `id`, if it sent one.
    fn read_client(&mut self, id: u64) {
        let Some(control) = &mut self.control else {
            return;
        };
        match control.read(id) {
            Some(Request::Reload) => {
                // The longest the outcome can take: a reload queued behind
                // one in flight, each up to ready_timeout, after a restart
                // backoff at worst, then the wait for the old worker to stop
                // accepting.
                let bound = self.config.ready_timeout * 2
                    + core::BACKOFF_MAX
                    + core::ANSWER_WAIT
                    + Duration::from_secs(2);
                control.reply(id, &ctl::pending_line(bound), false);
                self.handle(Event::ReloadRequested {
                    by: Waiter::Client(id),
                });
            }
            Some(Request::Status { .. }) => self.handle(Event::StatusRequested { client: id }),
            None => {}
        }
    }

    fn handle(&mut self, event: Event) {
        let actions = self.core.handle(Instant::now(), event);
        self.perform(actions);
    }

    fn perform(&mut self, actions: Vec<Action>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            let answer = match action {
                Action::Spawn { generation } => Some(self.spawn(generation)),
                Action::Stop { generation } => {
                    if let Some(control) = self.control(generation) {
                        let _ = control::send(control, &ToWorker::Stop);
                    }
                    None
                }
                // Only our own, unreaped child, which leads its own process
                // group: neither can have been reused. The whole group, so
                // that nothing the worker started outlives it.
                Action::Kill { pid } => {
                    let _ = killpg(Pid::from_raw(pid as i32), NixSignal::SIGKILL);
                    None
                }
                Action::Report(report) => {
                    notify::publish(&report, self.notify.as_ref());
                    None
                }
                Action::Log(level, line) => {
                    crate::log::line_at(level, format_args!("{line}"));
                    None
                }
                Action::Watchdog => {
                    self.notify("WATCHDOG=1");
                    None
                }
                Action::KeepListeners { generation } => {
                    self.listeners.keep(generation);
                    self.listeners.collect();
                    None
                }
                Action::Release { generation } => {
                    self.children.remove(&generation);
                    self.listeners.release(generation);
                    self.listeners.collect();
                    None
                }
                Action::Exit(result) => {
                    self.exit = Some(result);
                    None
                }
                Action::Check { generation, check } => {
                    if let Some(control) = self.control(generation) {
                        let _ = control::send(control, &ToWorker::Check(check));
                    }
                    None
                }
                Action::Answer {
                    to: Waiter::Worker(generation),
                    outcome,
                } => {
                    if let Some(control) = self.control(generation) {
                        let _ = control::send(control, &ToWorker::Reloaded(outcome));
                    }
                    None
                }
                Action::Answer {
                    to: Waiter::Client(id),
                    outcome,
                } => {
                    if let Some(control) = &mut self.control {
                        control.reply(id, &ctl::outcome_line(&outcome), true);
                    }
                    None
                }
                Action::Status { client, status } => {
                    if let Some(control) = &mut self.control {
                        let view = ctl::View {
                            master_pid: std::process::id(),
                            status: &status,
                            listeners: self.listeners.names(),
                            now: Instant::now(),
                            wall: std::time::SystemTime::now(),
                        };
                        // A client that hung up meanwhile is gone: nothing to render.
                        let text = match control.asked(client) {
                            Some(Request::Status { json: true }) => Some(view.json()),
                            Some(_) => Some(view.text()),
                            None => None,
                        };
                        if let Some(text) = text {
                            control.reply(client, &text, true);
                        }
                    }
                    None
                }
            };
            if let Some(event) = answer {
                queue.extend(self.core.handle(Instant::now(), event));
            }
        }
    }

    fn notify(&self, message: &str) {
        if let Some(notify) = &self.notify {
            notify.send(message);
        }
    }

    fn control(&self, generation: u64) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.children
            .get(&generation)?
            .control
            .as_ref()
            .map(|c| c.as_fd())
    }

    /// Starts a worker; returns how that went, for the core.
    fn spawn(&mut self, generation: u64) -> Event {
        // Our handlers must not run in the child before exec: they write to
        // the master's pipe. Reload signals are ignored there instead.
        let caught = caught_signals(&self.config).into_iter();
        let default = caught
            .filter(|s| !self.config.reload_signals.contains(s))
            .map(|s| s.number());
        let default = default.chain([NixSignal::SIGCHLD as i32]).collect();
        let started = self
            .executable
            .prepare(
                generation,
                Vec::new(),
                &self.config.reload_signals,
                default,
                true,
            )
            .and_then(|prepared| prepared.spawn());
        match started {
            Ok((child, control)) => {
                let pid = child.id();
                // The master reaps with waitpid itself; the std handle is not needed.
                drop(child);
                let control = Some(control);
                self.children.insert(generation, Child { pid, control });
                Event::Spawned { generation, pid }
            }
            Err(source) => Event::SpawnFailed {
                generation,
                reason: Error::Spawn {
                    path: self.executable.path().to_path_buf(),
                    source,
                }
                .to_string(),
            },
        }
    }

    /// Reads every message generation N has queued.
    fn read_control(&mut self, generation: u64) {
        loop {
            let Some(control) = self.control(generation) else {
                return;
            };
            let event = match control::recv::<ToMaster>(control) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Ok(Some(ToMaster::Listen(request))) => {
                    let answer = self.listeners.acquire(generation, &request);
                    // Disjoint from the table's borrow: the channel, by field.
                    let child = self.children.get(&generation);
                    let Some(control) = child.and_then(|c| c.control.as_ref()) else {
                        return;
                    };
                    let sent = match &answer {
                        Ok(held) => {
                            control::send(control.as_fd(), &ToWorker::Listener(held.as_fd()))
                        }
                        Err(e) => {
                            control::send(control.as_fd(), &ToWorker::ListenError(e.to_string()))
                        }
                    };
                    if let Err(e) = sent {
                        log!("cannot answer worker {generation}: {e}");
                    }
                    continue;
                }
                Ok(Some(ToMaster::Ready)) => Event::Ready { generation },
                Ok(Some(ToMaster::Failed(reason))) => Event::Failed { generation, reason },
                Ok(Some(ToMaster::Reload)) => Event::ReloadRequested {
                    by: Waiter::Worker(generation),
                },
                Ok(Some(ToMaster::StoppedAccepting)) => Event::StoppedAccepting { generation },
                Ok(Some(ToMaster::Alive { check, connections })) => Event::Alive {
                    generation,
                    check,
                    connections,
                },
                Ok(None) | Err(_) => {
                    if let Some(child) = self.children.get_mut(&generation) {
                        child.control = None;
                    }
                    Event::ControlClosed { generation }
                }
            };
            self.handle(event);
        }
    }

    fn reap(&mut self) {
        loop {
            // waitpid(-1) also reaps orphans re-parented to us when the
            // master is PID 1 in a container; the core ignores those.
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
            let pid = pid.as_raw() as u32;
            // The worker may have sent its last messages (the reason its
            // start failed) just before it exited: read them before the core
            // judges the exit.
            let generation = self
                .children
                .iter()
                .find(|(_, child)| child.pid == pid)
                .map(|(&generation, _)| generation);
            if let Some(generation) = generation {
                self.read_control(generation);
                // Whatever the worker started and left behind goes with it,
                // now, while the group still has members and so its number
                // cannot have been reused.
                let _ = killpg(Pid::from_raw(pid as i32), NixSignal::SIGKILL);
            }
            self.handle(Event::Exited { pid, how });
        }
    }
}
