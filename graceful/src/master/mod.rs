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
mod upgrade;
#[cfg(any(target_os = "linux", target_os = "android"))]
mod watch;

pub(crate) use self::upgrade::check_state;

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

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
use crate::exec::{Executable, FromMaster};
use crate::listeners::Listeners;
use crate::log::log;
use crate::notify::{self, Notifier};
use crate::signal::SignalPipe;
use crate::state::{
    ChildState, Clock, ExecutableState, MasterInfo, MasterState, NotifyState, OptionsState,
};
use crate::{activation, metrics, pidfile, Error, Signal};

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
    /// `watch_paths`.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    paths: Option<watch::PathsWatch>,
    control: Option<ControlSocket>,
    core: Core,
    exit: Option<Result<(), String>>,
    /// The signals whose handlers are installed.
    caught: Vec<Signal>,
    /// Who this master is, for the status and the next upgrade.
    info: MasterInfo,
    /// The core asked to upgrade into generation N's build: done at the end
    /// of the loop's turn, with every action of the turn carried out.
    upgrade: Option<u64>,
    metrics_queries: MetricsQueries,
}

/// The signals the master handles: the configured ones, those whose
/// default action would kill it (SIGQUIT stops; SIGUSR2 is logged and
/// ignored unless configured), and after an upgrade those the previous
/// image handled (logged and ignored unless configured now, so a script
/// still sending the old reload signal does not kill the master). SIGWINCH
/// is ignored by default and left so.
fn caught_signals(config: &Config, previous: &[Signal]) -> Vec<Signal> {
    let mut caught: Vec<Signal> = config.reload_signals.clone();
    caught.extend(config.stop_signals.iter().copied());
    for &signal in [Signal::SIGQUIT, Signal::SIGUSR2].iter().chain(previous) {
        if !caught.contains(&signal) {
            caught.push(signal);
        }
    }
    caught
}

/// Milliseconds since the Unix epoch, for the status's wall-clock times.
fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, crate::log::millis)
}

/// The build this image runs, as the log and the status say it: graceful's
/// version and state format, and the executable file it was started from
/// with its modification time.
fn build(executable: &Path) -> String {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let image = std::fs::metadata("/proc/self/exe");
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let image = std::fs::metadata(executable);
    let modified = image
        .and_then(|m| m.modified())
        .map(|at| format!(" modified {}", humantime::format_rfc3339_seconds(at)))
        .unwrap_or_default();
    format!(
        "graceful {} (state format {}), {}{modified}",
        env!("CARGO_PKG_VERSION"),
        crate::state::FORMAT,
        executable.display()
    )
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

/// The status queries made for workers' metrics requests: the core answers
/// a query by its client number, which for these starts far above any
/// control socket client's.
#[derive(Debug)]
struct MetricsQueries {
    /// Each query's client number, and the generation that asked.
    pending: HashMap<u64, u64>,
    next: u64,
}

impl MetricsQueries {
    fn new() -> MetricsQueries {
        MetricsQueries {
            pending: HashMap::new(),
            next: 1 << 62,
        }
    }

    /// The client number of a new query for `generation`.
    fn ask(&mut self, generation: u64) -> u64 {
        let client = self.next;
        self.next += 1;
        self.pending.insert(client, generation);
        client
    }

    /// The generation that asked, if `client` is one of these queries.
    fn answered(&mut self, client: u64) -> Option<u64> {
        self.pending.remove(&client)
    }
}

/// Starts watching `watch_paths`, if any; an error names the path.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn watch_paths(paths: &[std::path::PathBuf]) -> Result<Option<watch::PathsWatch>, String> {
    if paths.is_empty() {
        return Ok(None);
    }
    let watch = watch::PathsWatch::new(paths)?;
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    log!("watching {} to reload when they change", list.join(", "));
    Ok(Some(watch))
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
    // A user that does not exist, or cannot be taken, stops the start.
    #[cfg(target_os = "linux")]
    let identity = crate::privilege::check_master(&config)?;
    // Before anything else: the activated sockets and their variables.
    let activated = activation::take();
    let raised = crate::fd::raise_open_file_limit();
    let executable = Executable::current()?;
    let caught = caught_signals(&config, &[]);
    let signals = SignalPipe::install(&caught)?;
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
    #[cfg(target_os = "linux")]
    if let Some(identity) = identity {
        log!(
            "workers serve as {identity}, with no_new_privs, once they have their listeners; \
             the master keeps uid {}",
            nix::unistd::geteuid()
        );
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
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let paths = watch_paths(&config.watch_paths).map_err(|reason| Error::InvalidOption {
        option: "watch_paths",
        reason,
    })?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    if !config.watch_paths.is_empty() {
        return Err(Error::InvalidOption {
            option: "watch_paths",
            reason: "watching files needs inotify (Linux); reload with a signal".into(),
        });
    }
    let control = match &config.control_socket {
        Some(path) => Some(bind_control(path)?),
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
    let now = unix_ms(SystemTime::now());
    let info = MasterInfo {
        started_ms: now,
        image_ms: now,
        upgrades: 0,
        build: build(executable.path()),
    };
    let mut master = Master {
        config,
        executable,
        signals,
        listeners: Listeners::new(activated),
        notify,
        children: HashMap::new(),
        #[cfg(any(target_os = "linux", target_os = "android"))]
        watch,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        paths,
        control,
        core,
        exit: None,
        caught,
        info,
        upgrade: None,
        metrics_queries: MetricsQueries::new(),
    };
    master.perform(actions);
    master.serve()
}

/// Binds the control socket at `path` and says so.
fn bind_control(path: &Path) -> Result<ControlSocket, Error> {
    let control = ControlSocket::bind(path)?;
    log!(
        "control socket {}: `graceful reload` and `graceful status` answer there",
        control.path().display()
    );
    Ok(control)
}

/// Runs a master image that re-executed itself: takes over the state its
/// previous image left on `pipe`, applies this build's options where they
/// differ (and logs each), then carries on.
pub(crate) fn resume(config: Config, pipe: OwnedFd) -> Result<(), Error> {
    let state = upgrade::read_state(pipe).map_err(|reason| Error::StartFailed {
        reason: format!("the master cannot resume after its upgrade: {reason}"),
    })?;
    // Lines the old image could not write are reported by this one.
    crate::log::add_lost_lines(state.lost_log_lines);
    let now = Instant::now();
    let clock = Clock::reader(now, state.written_us);
    let previous: Vec<Signal> = state
        .caught
        .iter()
        .filter_map(|&n| Signal::from_number(n))
        .collect();
    let caught = caught_signals(&config, &previous);
    let signals = SignalPipe::install(&caught)?;
    // Signals sent during the exec were held pending: they reach the
    // handlers now, after those the old image had already read.
    upgrade::unblock_inherited(&caught);
    let executable = Executable::from_parts(
        PathBuf::from(upgrade::os(state.executable.path)),
        state.executable.argv.into_iter().map(upgrade::os).collect(),
    );
    #[cfg(target_os = "linux")]
    upgrade::name_after(&executable);
    let notify = state
        .notify
        .and_then(|n| Notifier::from_parts(n.address, n.watchdog_us.map(Duration::from_micros)));
    let listeners = Listeners::from_state(state.listeners);
    let mut children = HashMap::new();
    for child in state.children {
        let control = child.control_fd.and_then(|fd| match control::carried(fd) {
            Ok(control) => Some(control),
            Err(e) => {
                log!(
                    "worker {}'s channel did not survive the master's upgrade: {e}",
                    child.generation
                );
                None
            }
        });
        children.insert(
            child.generation,
            Child {
                pid: child.pid,
                control,
            },
        );
    }
    let old = state.options;
    let mut changes = options_changed(&old, &config);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let carried_watch = state.watch_fd.and_then(|fd| {
        watch::ExecutableWatch::carried(fd, executable.path())
            .map_err(|e| log!("the watch did not survive the master's upgrade: {e}"))
            .ok()
    });
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let watch = match (config.watch, carried_watch) {
        (true, Some(watch)) => Some(watch),
        (true, None) => watch_executable(executable.path()),
        (false, _) => None,
    };
    // Watched anew: a change in the exec's few milliseconds is not seen.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let paths = watch_paths(&config.watch_paths)
        .map_err(|e| log!("watch_paths after the master's upgrade: {e}; reload with a signal"))
        .ok()
        .flatten();
    let mut control = state.control.and_then(|carried| {
        ControlSocket::from_state(carried, &clock)
            .map_err(|e| log!("the control socket did not survive the master's upgrade: {e}"))
            .ok()
    });
    if config.control_socket != upgrade::path(&old.control_socket) {
        control = match (&config.control_socket, control) {
            (Some(path), carried) => match bind_control(path) {
                Ok(mut new) => {
                    if let Some(carried) = carried {
                        // Clients that wait for an answer keep their
                        // connections; the old path goes.
                        new.adopt(carried);
                    }
                    changes.push(format!("the control socket moved to {}", path.display()));
                    Some(new)
                }
                Err(e) => {
                    changes.push(format!("the control socket stays where it was: {e}"));
                    carried
                }
            },
            (None, carried) => {
                if let Some(carried) = carried {
                    carried.close();
                }
                changes.push("the control socket is closed".into());
                None
            }
        };
    }
    let pid = std::process::id();
    let old_pid_file = upgrade::path(&old.pid_file);
    if config.pid_file != old_pid_file {
        if let Some(path) = &config.pid_file {
            if let Err(e) = pidfile::write(path, pid) {
                changes.push(format!("{e}"));
            }
        }
        if let Some(path) = &old_pid_file {
            pidfile::remove(path, pid);
        }
    }
    if config.mode == crate::config::Mode::Single {
        changes.push(
            "mode = single takes effect when the service is next started; until then it keeps \
             its master"
                .into(),
        );
    }
    let watchdog = watchdog_config(&config, notify.as_ref());
    let core = Core::resume(&config, watchdog, state.core, &clock, Instant::now());
    let info = MasterInfo {
        started_ms: state.master.started_ms,
        image_ms: unix_ms(SystemTime::now()),
        upgrades: state.master.upgrades + 1,
        build: build(executable.path()),
    };
    let took = Duration::from_micros(notify::monotonic_usec().saturating_sub(state.written_us));
    log!(
        "master upgraded in place (pid {pid} kept): now {}; was {} (upgrade {}; the exec took {} ms)",
        info.build,
        state.master.build,
        info.upgrades,
        took.as_millis()
    );
    for change in changes {
        log!("after the upgrade: {change}");
    }
    let mut master = Master {
        config,
        executable,
        signals,
        listeners,
        notify,
        children,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        watch,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        paths,
        control,
        core,
        exit: None,
        caught,
        info,
        upgrade: None,
        metrics_queries: MetricsQueries::new(),
    };
    // Received by the old image and not acted on yet: first.
    for number in state.signals {
        if let Some(signal) = Signal::from_number(number) {
            log!("{signal} was received during the upgrade: acting on it now");
            master.handle(Event::Signal(signal));
        }
    }
    master.serve()
}

/// Signal names, as the state records them.
fn signal_names(signals: &[Signal]) -> Vec<String> {
    signals.iter().map(|s| s.name().to_string()).collect()
}

/// The options of `config` as the state records them.
fn options_state(config: &Config) -> OptionsState {
    let millis = crate::log::millis;
    OptionsState {
        stop_timeout_ms: millis(config.stop_timeout),
        ready_timeout_ms: millis(config.ready_timeout),
        reload_signals: signal_names(&config.reload_signals),
        stop_signals: signal_names(&config.stop_signals),
        watchdog_ms: config.watchdog.map(millis),
        max_draining: config.max_draining,
        watch: config.watch,
        control_socket: config
            .control_socket
            .as_ref()
            .map(|p| upgrade::bytes(p.as_os_str())),
        pid_file: config
            .pid_file
            .as_ref()
            .map(|p| upgrade::bytes(p.as_os_str())),
    }
}

/// What changed between the options the previous image ran with and this
/// build's, and what each change means for the workers already running.
fn options_changed(old: &OptionsState, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    let ms = crate::log::millis;
    let millis = |ms: u64| format!("{:?}", Duration::from_millis(ms));
    if old.stop_timeout_ms != ms(new.stop_timeout) {
        changes.push(format!(
            "stop_timeout {} -> {:?}: for workers told to stop from now on; a worker already \
             draining keeps the deadline it was given",
            millis(old.stop_timeout_ms),
            new.stop_timeout
        ));
    }
    if old.ready_timeout_ms != ms(new.ready_timeout) {
        changes.push(format!(
            "ready_timeout {} -> {:?}: for workers started from now on",
            millis(old.ready_timeout_ms),
            new.ready_timeout
        ));
    }
    if old.reload_signals != signal_names(&new.reload_signals)
        || old.stop_signals != signal_names(&new.stop_signals)
    {
        changes.push(format!(
            "reload with {} (was {}), stop with {} (was {})",
            SignalList(&new.reload_signals),
            old.reload_signals.join(", "),
            SignalList(&new.stop_signals),
            old.stop_signals.join(", ")
        ));
    }
    if old.watchdog_ms != new.watchdog.map(ms) {
        changes.push(match new.watchdog {
            Some(every) => format!("watchdog every {every:?}"),
            None => "watchdog off (unless systemd sets WATCHDOG_USEC)".into(),
        });
    }
    if old.max_draining != new.max_draining {
        changes.push(format!(
            "max_draining {} -> {}: applies at the next reload",
            old.max_draining, new.max_draining
        ));
    }
    if old.watch != new.watch {
        changes.push(format!("watch {} -> {}", old.watch, new.watch));
    }
    if upgrade::path(&old.pid_file) != new.pid_file {
        changes.push(match &new.pid_file {
            Some(file) => format!(
                "pid_file is {} now (the old file is removed)",
                file.display()
            ),
            None => "pid_file is off now (the old file is removed)".into(),
        });
    }
    changes
}

impl Master {
    /// The loop, then the cleanup at exit.
    fn serve(mut self) -> Result<(), Error> {
        let result = self.event_loop();
        self.listeners.close_all();
        if let Some(control) = self.control.take() {
            control.close();
        }
        if let Some(path) = &self.config.pid_file {
            pidfile::remove(path, std::process::id());
        }
        match &result {
            Ok(()) => log!("stopped"),
            Err(e) => log!("exiting: {e}"),
        }
        result
    }

    /// Everything this master holds, as the next image reads it.
    fn to_state(&self, clock: &Clock, signals: Vec<i32>) -> MasterState {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let watch_fd = self.watch.as_ref().map(|w| w.fd().as_raw_fd());
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let watch_fd = None;
        MasterState {
            written_us: notify::monotonic_usec(),
            master: self.info.clone(),
            executable: ExecutableState {
                path: upgrade::bytes(self.executable.path().as_os_str()),
                argv: self
                    .executable
                    .argv()
                    .iter()
                    .map(|a| upgrade::bytes(a))
                    .collect(),
            },
            signals,
            caught: self.caught.iter().map(|s| s.number()).collect(),
            options: options_state(&self.config),
            notify: self.notify.as_ref().map(|n| NotifyState {
                address: n.text.clone(),
                watchdog_us: n
                    .watchdog
                    .map(|w| u64::try_from(w.as_micros()).unwrap_or(u64::MAX)),
            }),
            listeners: self.listeners.to_state(),
            control: self.control.as_ref().map(|c| c.to_state(clock)),
            watch_fd,
            children: self
                .children
                .iter()
                .map(|(&generation, child)| ChildState {
                    generation,
                    pid: child.pid,
                    control_fd: child.control.as_ref().map(|c| c.as_raw_fd()),
                })
                .collect(),
            core: self.core.export(clock),
            // Read, not taken: if the exec fails, this image reports them.
            lost_log_lines: crate::log::lost_lines(),
        }
    }

    /// Re-executes the master into the executable generation N runs. On
    /// success this does not return; on failure the master carries on as it
    /// was, and says why.
    fn upgrade_in_place(&mut self, generation: u64) {
        let blocked = upgrade::Blocked::block(&self.caught);
        // Read before the state is taken, carried in it, acted on by the
        // new image; later ones stay pending across the exec.
        let pending = self.signals.pending();
        let clock = Clock::writer(Instant::now());
        let state = self.to_state(&clock, pending.clone());
        let bytes = state.encode();
        let carried: Vec<RawFd> = state.descriptors().into_iter().map(|(fd, _)| fd).collect();
        let worker = self.children.get(&generation).map(|c| c.pid);
        let why = match upgrade::open_build_of(&self.executable, generation, worker) {
            Err(why) => why,
            Ok(file) => match upgrade::check(&self.executable, &file, &bytes) {
                Err(why) => format!(
                    "worker {generation}'s build at {} cannot take over its state: {why}",
                    self.executable.path().display()
                ),
                Ok(()) => match upgrade::state_pipe(&bytes) {
                    Err(e) => format!("cannot pass on its state: {e}"),
                    Ok(pipe) => upgrade::exec(&self.executable, &file, &pipe, &carried),
                },
            },
        };
        blocked.unblock();
        crate::log::line_at(
            crate::log::Level::Error,
            format_args!(
                "master kept at {} (pid {}): {why}; worker {generation} serves, and the next reload \
                 tries the upgrade again",
                self.info.build,
                std::process::id()
            ),
        );
        for number in pending {
            if let Some(signal) = Signal::from_number(number) {
                self.handle(Event::Signal(signal));
            }
        }
    }
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
            #[cfg(any(target_os = "linux", target_os = "android"))]
            let mut paths_changed = false;
            let mut accept = false;
            let (readable, clients): (Vec<u64>, Vec<u64>) = {
                let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
                #[cfg(any(target_os = "linux", target_os = "android"))]
                let watch_at = self.watch.as_ref().map(|watch| {
                    fds.push(PollFd::new(watch.fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                #[cfg(any(target_os = "linux", target_os = "android"))]
                let paths_at = self.paths.as_ref().map(|paths| {
                    fds.push(PollFd::new(paths.fd(), PollFlags::POLLIN));
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
                #[cfg(any(target_os = "linux", target_os = "android"))]
                if let Some(at) = paths_at {
                    paths_changed = ready(&fds[at]);
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
            match self
                .watch
                .as_mut()
                .filter(|_| watched)
                .and_then(|w| w.changed())
            {
                Some(watch::Change::Written) => self.handle(Event::ExecutableChanged),
                Some(watch::Change::Writing) => self.handle(Event::ExecutableWriting),
                None => {}
            }
            #[cfg(any(target_os = "linux", target_os = "android"))]
            if let Some(path) = paths_changed
                .then(|| self.paths.as_ref().and_then(|p| p.changed()))
                .flatten()
            {
                self.handle(Event::PathChanged(path.display().to_string()));
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
            if let Some(generation) = self.upgrade.take() {
                if self.exit.is_none() && self.core.can_upgrade() {
                    self.upgrade_in_place(generation);
                }
            }
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
            Some(Request::Status { .. } | Request::Metrics) => {
                self.handle(Event::StatusRequested { client: id })
            }
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
                Action::LameDuck { generation } => {
                    if let Some(control) = self.control(generation) {
                        let _ = control::send(control, &ToWorker::LameDuck);
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
                Action::UpgradeMaster { generation } => {
                    self.upgrade = Some(generation);
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
                    if let Some(generation) = self.metrics_queries.answered(client) {
                        let text = metrics::render(std::process::id(), &status);
                        if let Some(control) = self.control(generation) {
                            let _ = control::send(control, &ToWorker::Metrics(text));
                        }
                    } else if let Some(control) = &mut self.control {
                        let view = ctl::View {
                            master_pid: std::process::id(),
                            master: &self.info,
                            status: &status,
                            listeners: self.listeners.names(),
                            now: Instant::now(),
                            wall: std::time::SystemTime::now(),
                        };
                        // A client that hung up meanwhile is gone: nothing to render.
                        let text = match control.asked(client) {
                            Some(Request::Status { json: true }) => Some(view.json()),
                            Some(Request::Metrics) => {
                                Some(metrics::render(std::process::id(), &status))
                            }
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
        let caught = self.caught.iter().copied();
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
                Some(FromMaster {
                    upgrade_format: self.config.upgrade_master.then_some(crate::state::FORMAT),
                }),
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
                Ok(Some(ToMaster::Ready(readiness))) => Event::Ready {
                    generation,
                    readiness,
                },
                Ok(Some(ToMaster::Failed(reason))) => Event::Failed { generation, reason },
                Ok(Some(ToMaster::Build(build))) => Event::Build { generation, build },
                Ok(Some(ToMaster::TakesBuilds)) => Event::TakesBuilds { generation },
                Ok(Some(ToMaster::Reload)) => Event::ReloadRequested {
                    by: Waiter::Worker(generation),
                },
                Ok(Some(ToMaster::StoppedAccepting)) => Event::StoppedAccepting { generation },
                Ok(Some(ToMaster::Drained { drained, cut })) => Event::Drained {
                    generation,
                    drained,
                    cut,
                },
                Ok(Some(ToMaster::Metrics)) => Event::StatusRequested {
                    client: self.metrics_queries.ask(generation),
                },
                Ok(Some(ToMaster::Alive { check, connections })) => Event::Alive {
                    generation,
                    check,
                    connections,
                },
                closed @ (Ok(None) | Err(_)) => {
                    if let Some(child) = self.children.get_mut(&generation) {
                        child.control = None;
                    }
                    // A message this master cannot read (`InvalidData`)
                    // is the reason; EOF and other errors need none.
                    let unreadable = match closed {
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            Some(e.to_string())
                        }
                        _ => None,
                    };
                    Event::ControlClosed {
                        generation,
                        unreadable,
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::config;

    #[test]
    fn unchanged_options_say_nothing_and_each_change_says_what_it_means() {
        let same = config();
        assert_eq!(
            options_changed(&options_state(&same), &same),
            Vec::<String>::new()
        );
        let new = Config {
            stop_timeout: Duration::from_secs(30),
            reload_signals: vec![Signal::SIGUSR2],
            watchdog: Some(Duration::from_secs(5)),
            max_draining: 2,
            pid_file: Some("/run/app.pid".into()),
            ..config()
        };
        let old = OptionsState {
            stop_timeout_ms: 2000,
            ..options_state(&same)
        };
        let changes = options_changed(&old, &new);
        assert_eq!(
            changes,
            [
                "stop_timeout 2s -> 30s: for workers told to stop from now on; a worker already \
                 draining keeps the deadline it was given",
                "reload with SIGUSR2 (was SIGHUP, SIGUSR1), stop with SIGTERM, SIGINT (was \
                 SIGTERM, SIGINT)",
                "watchdog every 5s",
                "max_draining 4 -> 2: applies at the next reload",
                "pid_file is /run/app.pid now (the old file is removed)",
            ]
        );
    }

    #[test]
    fn signals_the_old_image_handled_stay_handled() {
        let new = Config {
            reload_signals: vec![Signal::SIGUSR2],
            ..config()
        };
        let caught = caught_signals(&new, &[Signal::SIGHUP, Signal::SIGUSR1]);
        for signal in [
            Signal::SIGUSR2,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGQUIT,
        ] {
            assert!(caught.contains(&signal), "{signal}");
        }
        // Logged and ignored now, instead of their default action (exit).
        assert!(caught.contains(&Signal::SIGHUP) && caught.contains(&Signal::SIGUSR1));
        assert_eq!(caught.len(), 6, "each once: {caught:?}");
    }
}
