//! The master's decisions: events in, actions out, and no I/O.
//!
//! [`Core::handle`] takes what happened (a signal, a message from generation
//! N, a child's exit, a timer) at a given instant and returns what to do
//! (start generation N, tell N to stop, kill a PID, report, exit). The loop in
//! the parent module does the I/O both ways. Everything the master decides
//! is therefore tested here without processes.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::control::Readiness;
use crate::log::Level;
use crate::state::{
    self, Clock, CoreState, HeldState, PhaseState, QueryState, WaiterState, WorkerPhase,
    WorkerState,
};
use crate::status::{Counters, Outcome, Report, Status, WorkerStatus};
use crate::Signal;

/// How long after `stop_timeout` the master waits before it kills a worker
/// that is still draining (the worker cuts its own connections at
/// `stop_timeout`; this is for one that is stuck).
pub(crate) const KILL_GRACE: Duration = Duration::from_millis(500);
/// Restart backoff after a crash: doubles from the first to the last value.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A worker that served this long before it crashed resets the backoff.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a starting worker that closed its control channel may take to
/// exit before it is killed.
const CLOSED_GRACE: Duration = Duration::from_secs(1);
/// How long a changed executable must be quiet before it is reloaded: a
/// file still being written triggers one reload, once it is complete.
pub(crate) const WATCH_QUIET: Duration = Duration::from_millis(300);
/// How long a status query waits for the workers' connection counts.
pub(crate) const STATUS_WAIT: Duration = Duration::from_secs(1);
/// How long the answer to a `graceful reload` command waits for the workers
/// told to stop to stop accepting: one that does not say so in time (a
/// wedged runtime accepts nothing anyway) does not hold the answer longer.
pub(crate) const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Who waits for a reload's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Waiter {
    /// `graceful::reload()` or `reload_and_wait()` in generation N.
    Worker(u64),
    /// A connection to the control socket, by the loop's number for it.
    Client(u64),
}

impl Waiter {
    fn why(self) -> String {
        match self {
            Waiter::Worker(generation) => format!("graceful::reload() in worker {generation}"),
            Waiter::Client(_) => "graceful reload command".to_string(),
        }
    }
}

/// The worker watchdog: how often the serving worker is checked, and
/// whether an answer is passed on to systemd as `WATCHDOG=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WatchdogConfig {
    pub(crate) every: Duration,
    pub(crate) systemd: bool,
}

#[derive(Debug, Clone, Copy)]
struct Watchdog {
    config: WatchdogConfig,
    /// When the next check is due.
    next: Instant,
    /// The check in flight: the generation asked, and the check's number.
    pending: Option<(u64, u64)>,
}

/// A reload's outcome for a control-socket client, held until no worker
/// told to stop still accepts, or until `until`.
#[derive(Debug, Clone)]
struct Held {
    to: Waiter,
    outcome: Outcome,
    until: Instant,
}

impl Held {
    fn answer(self) -> Action {
        Action::Answer {
            to: self.to,
            outcome: self.outcome,
        }
    }
}

/// A status query waiting for the workers' answers.
#[derive(Debug, Clone, Copy)]
struct Query {
    client: u64,
    check: u64,
    deadline: Instant,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A signal the master handles.
    Signal(Signal),
    /// Generation N was started as process `pid`.
    Spawned { generation: u64, pid: u32 },
    /// Generation N could not be started.
    SpawnFailed { generation: u64, reason: String },
    /// Generation N is ready: `main` returned and every listener accepts;
    /// with the master states its build can take over, if it said.
    Ready {
        generation: u64,
        readiness: Option<Readiness>,
    },
    /// Generation N reports why its start failed; it exits next.
    Failed { generation: u64, reason: String },
    /// Generation N reports the application's build (`version`).
    Build { generation: u64, build: String },
    /// Generation N reads a reload's outcome that names the new build.
    TakesBuilds { generation: u64 },
    /// A reload is asked for by someone who waits for its outcome.
    ReloadRequested { by: Waiter },
    /// Generation N, told to stop, no longer accepts connections.
    StoppedAccepting { generation: u64 },
    /// The control socket's client asks for the status.
    StatusRequested { client: u64 },
    /// Generation N answered check `check`: its runtime runs, with
    /// `connections` open.
    Alive {
        generation: u64,
        check: u64,
        connections: u64,
    },
    /// Generation N finished its drain: `drained` connections ended, `cut`
    /// were cut at `stop_timeout`.
    Drained {
        generation: u64,
        drained: u64,
        cut: u64,
    },
    /// Generation N's control channel reached EOF or broke; `unreadable`
    /// says why, where it broke on a message the master cannot read.
    ControlClosed {
        generation: u64,
        unreadable: Option<String>,
    },
    /// A child was reaped; `how` is "exited with status 3", "was killed by
    /// SIGKILL".
    Exited { pid: u32, how: String },
    /// The executable file changed (watched with `watch = true`; only
    /// Linux has the watch).
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    ExecutableChanged,
    /// The executable file is being written by a writer that holds it open:
    /// it cannot run (`ETXTBSY`) until that writer closes it, however long
    /// the writer pauses, so no reload is due before it is `ExecutableChanged`
    /// again.
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    ExecutableWriting,
    /// A path of `watch_paths` changed (debounced as `ExecutableChanged`;
    /// Linux only, too).
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    PathChanged(String),
    /// Time passed: deadlines up to now are due.
    Tick,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start generation N (answered by `Spawned` or `SpawnFailed`).
    Spawn { generation: u64 },
    /// Tell generation N to drain and exit.
    Stop { generation: u64 },
    /// Tell generation N that the service is stopping: it serves on for the
    /// `shutdown_delay`, not ready to health checks.
    LameDuck { generation: u64 },
    /// SIGKILL this child.
    Kill { pid: u32 },
    /// A lifecycle event for the log and systemd.
    Report(Report),
    /// A log line, at a level.
    Log(Level, String),
    /// `WATCHDOG=1` to systemd.
    Watchdog,
    /// Ask generation N's runtime to answer check `check` (answered by
    /// `Alive`).
    Check { generation: u64, check: u64 },
    /// Tell a waiter how the reload it asked for ended.
    Answer { to: Waiter, outcome: Outcome },
    /// Give the control socket's client the status.
    Status { client: u64, status: Box<Status> },
    /// Generation N serves: keep its listeners open even while no worker
    /// runs (after a crash), so that clients wait in the backlog.
    KeepListeners { generation: u64 },
    /// Generation N is gone: close its channel, release its listeners.
    Release { generation: u64 },
    /// The master is done: `Err` with the reason the first start failed.
    Exit(Result<(), String>),
    /// Re-execute the master in place: generation N, just ready, runs the
    /// new build and reads this master's state.
    UpgradeMaster { generation: u64 },
}

/// Where the service stands. Together with the queued flag, this is the
/// whole of the master's state apart from its table of workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No worker has been ready yet; `starting` is the first.
    Booting { starting: u64 },
    /// `current` serves; `starting` is a reload in flight.
    Serving {
        current: u64,
        starting: Option<u64>,
        streak: u32,
    },
    /// No worker serves since one died; `next` replaces it. `streak` counts
    /// crashes in a row, for the backoff.
    Recovering { next: Next, streak: u32 },
    /// Every worker is told to stop; `current` was serving.
    Stopping { current: Option<u64> },
    /// The exit action has been given.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A new worker starts at this instant.
    At(Instant),
    /// This generation is starting.
    Starting(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Started; not ready yet. Killed at the deadline.
    Starting { deadline: Instant },
    /// Ready; serving, or the current generation until the next is ready.
    Serving,
    /// Told to stop; killed at the deadline if still alive.
    Draining { kill_at: Instant },
    /// SIGKILL sent; waiting to reap it.
    Killed,
}

#[derive(Debug)]
struct Worker {
    generation: u64,
    /// `None` between `Spawn` and `Spawned`.
    pid: Option<u32>,
    state: State,
    started: Instant,
    ready_at: Option<Instant>,
    /// Whether its control channel is still open.
    connected: bool,
    /// When it was told to stop.
    stopped_at: Option<Instant>,
    /// The last check it answered, and its open connections then.
    answered: Option<(u64, u64)>,
    /// Whether it may still accept connections: until it says it stopped,
    /// or its channel closes.
    accepting: bool,
    /// What the worker reported before it exited, or why it was killed.
    failure: Option<String>,
    /// What its build said it can take over, when it was ready.
    readiness: Option<Readiness>,
    /// The application's build, as the worker reported it.
    build: Option<String>,
    /// Whether it reads a reload's outcome that names the new build; any
    /// other worker is told the outcome without it.
    takes_builds: bool,
}

impl Worker {
    fn name(&self) -> String {
        match self.pid {
            Some(pid) => format!("worker {} (pid {pid})", self.generation),
            None => format!("worker {}", self.generation),
        }
    }
}

/// The master's state and decisions.
#[derive(Debug)]
pub(crate) struct Core {
    options: Options,
    /// A stop in its `shutdown_delay`: the drain starts at this instant,
    /// for the stop signal that began it. Not carried across an upgrade,
    /// which never happens while stopping.
    lame_duck: Option<(Instant, Signal)>,
    /// Draining workers cut because more than `max_draining` were draining.
    cut_draining: u64,
    watchdog: Option<Watchdog>,
    /// Numbers the checks sent to workers.
    checks: u64,
    queries: Vec<Query>,
    /// Who waits for the reload in flight, and for the queued one.
    waiting: Vec<Waiter>,
    waiting_queued: Vec<Waiter>,
    /// Clients told a reload's outcome once the old worker stops accepting,
    /// so that new connections go to the new one when they hear it.
    held: Vec<Held>,
    last_reload: Option<(Instant, Outcome)>,
    workers: Vec<Worker>,
    next_generation: u64,
    phase: Phase,
    /// A reload was asked for while one was in flight: it runs next.
    queued: bool,
    /// The executable changed: reload at this instant if nothing else
    /// changes it before.
    changed: Option<Instant>,
    /// What changed, for the reload's reason: a watched path, or the
    /// executable (`None`).
    changed_path: Option<String>,
    counters: Counters,
    out: Vec<Action>,
}

/// The options the core decides by: always the running build's, never
/// carried across an upgrade in place.
#[derive(Debug)]
struct Options {
    stop_timeout: Duration,
    shutdown_delay: Duration,
    ready_timeout: Duration,
    max_draining: usize,
    upgrade_master: bool,
    reload_signals: Vec<Signal>,
    stop_signals: Vec<Signal>,
}

impl Options {
    fn new(config: &Config) -> Options {
        Options {
            stop_timeout: config.stop_timeout,
            shutdown_delay: config.shutdown_delay,
            ready_timeout: config.ready_timeout,
            max_draining: config.max_draining,
            upgrade_master: config.upgrade_master,
            reload_signals: config.reload_signals.clone(),
            stop_signals: config.stop_signals.clone(),
        }
    }
}

impl Core {
    /// A master that starts its first worker: `Spawn { generation: 1 }`.
    pub(crate) fn start(
        config: &Config,
        watchdog: Option<WatchdogConfig>,
        now: Instant,
    ) -> (Core, Vec<Action>) {
        let mut core = Core {
            options: Options::new(config),
            lame_duck: None,
            cut_draining: 0,
            watchdog: watchdog.map(|config| Watchdog {
                config,
                next: now + config.every,
                pending: None,
            }),
            checks: 0,
            queries: Vec::new(),
            waiting: Vec::new(),
            waiting_queued: Vec::new(),
            held: Vec::new(),
            last_reload: None,
            workers: Vec::new(),
            next_generation: 1,
            phase: Phase::Done,
            queued: false,
            changed: None,
            changed_path: None,
            counters: Counters::default(),
            out: Vec::new(),
        };
        let first = core.spawn(now);
        core.phase = Phase::Booting { starting: first };
        let actions = std::mem::take(&mut core.out);
        (core, actions)
    }

    /// Decides what `event`, at `now`, calls for.
    pub(crate) fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        match event {
            Event::Signal(signal) => {
                if self.options.stop_signals.contains(&signal) {
                    self.stop(now, signal);
                } else if self.options.reload_signals.contains(&signal) {
                    self.request_reload(now, &format!("signal {signal}"), None);
                } else if signal == Signal::SIGQUIT {
                    // Its default action would kill the master and leave the
                    // workers to notice: a stop, done properly.
                    self.stop(now, signal);
                } else {
                    self.warn(format!(
                        "received {signal}, which is neither a reload nor a stop signal here; ignored"
                    ));
                }
            }
            Event::Spawned { generation, pid } => {
                if let Some(w) = self.worker(generation) {
                    w.pid = Some(pid);
                    let name = w.name();
                    self.log(format!("{name} starting"));
                }
            }
            Event::SpawnFailed { generation, reason } => {
                self.workers.retain(|w| w.generation != generation);
                self.failed_start(now, generation, reason);
            }
            Event::Ready {
                generation,
                readiness,
            } => self.ready(now, generation, readiness),
            Event::Failed { generation, reason } => {
                if let Some(w) = self.worker(generation) {
                    w.failure = Some(reason);
                }
            }
            Event::Build { generation, build } => {
                if let Some(w) = self.worker(generation) {
                    w.build = Some(build);
                }
            }
            Event::TakesBuilds { generation } => {
                if let Some(w) = self.worker(generation) {
                    w.takes_builds = true;
                }
            }
            Event::ReloadRequested { by } => self.request_reload(now, &by.why(), Some(by)),
            Event::StoppedAccepting { generation } => {
                if let Some(w) = self.worker(generation) {
                    w.accepting = false;
                }
                self.release_held(now);
            }
            Event::StatusRequested { client } => self.query(now, client),
            Event::Drained { drained, cut, .. } => {
                self.counters.connections_drained += drained;
                self.counters.connections_cut += cut;
            }
            Event::Alive {
                generation,
                check,
                connections,
            } => self.alive(now, generation, check, connections),
            Event::ControlClosed {
                generation,
                unreadable,
            } => {
                // The worker is exiting (or broke the protocol): it is reaped
                // by waitpid. One that lingers before it was ready is killed.
                if let Some(w) = self.worker(generation) {
                    w.connected = false;
                    w.accepting = false;
                    if let (None, Some(why)) = (&w.failure, unreadable) {
                        w.failure = Some(format!(
                            "sent a control message this master cannot read ({why}): a build \
                             of another graceful protocol, or not a graceful program"
                        ));
                    }
                    if let State::Starting { deadline } = &mut w.state {
                        *deadline = (*deadline).min(now + CLOSED_GRACE);
                    }
                }
                self.release_held(now);
            }
            Event::Exited { pid, how } => self.exited(now, pid, &how),
            Event::ExecutableChanged => self.changed = Some(now + WATCH_QUIET),
            Event::ExecutableWriting => self.changed = None,
            Event::PathChanged(path) => {
                self.changed = Some(now + WATCH_QUIET);
                self.changed_path = Some(path);
            }
            Event::Tick => self.tick(now),
        }
        std::mem::take(&mut self.out)
    }

    /// When the loop must wake up next with a `Tick`; `None`: only an event
    /// wakes it (an idle master sleeps).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.iter().filter_map(|w| match w.state {
            State::Starting { deadline } => Some(deadline),
            State::Draining { kill_at } => Some(kill_at),
            State::Serving | State::Killed => None,
        });
        let restart = match self.phase {
            Phase::Recovering {
                next: Next::At(at), ..
            } => Some(at),
            _ => None,
        };
        let watchdog = self.watchdog.map(|w| w.next).filter(|_| self.serving());
        let queries = self.queries.iter().map(|q| q.deadline);
        let held = self.held.iter().map(|h| h.until);
        let lame_duck = self.lame_duck.map(|(until, _)| until);
        workers
            .chain(lame_duck)
            .chain(restart)
            .chain(watchdog)
            .chain(self.changed)
            .chain(queries)
            .chain(held)
            .min()
    }

    /// Keep-alives go to systemd only while a worker serves, so that its
    /// watchdog notices a service that cannot get a worker up.
    fn serving(&self) -> bool {
        matches!(
            self.phase,
            Phase::Serving { .. } | Phase::Stopping { current: Some(_) }
        )
    }

    fn worker(&mut self, generation: u64) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.generation == generation)
    }

    fn name_of(&self, generation: u64) -> String {
        self.workers
            .iter()
            .find(|w| w.generation == generation)
            .map_or_else(|| format!("worker {generation}"), Worker::name)
    }

    fn log(&mut self, line: String) {
        self.out.push(Action::Log(Level::Info, line));
    }

    fn warn(&mut self, line: String) {
        self.out.push(Action::Log(Level::Warn, line));
    }

    fn error(&mut self, line: String) {
        self.out.push(Action::Log(Level::Error, line));
    }

    fn report(&mut self, report: Report) {
        self.out.push(Action::Report(report));
    }

    /// The generation starting now, if any.
    fn starting(&self) -> Option<u64> {
        match self.phase {
            Phase::Booting { starting } => Some(starting),
            Phase::Serving { starting, .. } => starting,
            Phase::Recovering {
                next: Next::Starting(g),
                ..
            } => Some(g),
            _ => None,
        }
    }

    fn spawn(&mut self, now: Instant) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.counters.worker_starts += 1;
        self.workers.push(Worker {
            generation,
            pid: None,
            state: State::Starting {
                deadline: now + self.options.ready_timeout,
            },
            started: now,
            ready_at: None,
            connected: true,
            failure: None,
            stopped_at: None,
            answered: None,
            accepting: true,
            readiness: None,
            build: None,
            takes_builds: false,
        });
        self.out.push(Action::Spawn { generation });
        generation
    }

    fn request_reload(&mut self, now: Instant, why: &str, by: Option<Waiter>) {
        if matches!(self.phase, Phase::Stopping { .. } | Phase::Done) {
            self.warn(format!("reload requested ({why}) while stopping; ignored"));
            self.answer(by, &Outcome::Failed("the service is stopping".into()));
            return;
        }
        if self.starting().is_some() {
            if !self.queued {
                self.log(format!(
                    "reload requested ({why}) while another is in progress; it will run next"
                ));
            }
            // At most one queued: later requests are covered by it, and
            // their waiters are told its outcome.
            self.queued = true;
            self.waiting_queued.extend(by);
            return;
        }
        self.report(Report::ReloadStarted {
            why: why.to_string(),
            starting: Some(format!("worker {}", self.next_generation)),
        });
        self.waiting.extend(by);
        let generation = self.spawn(now);
        self.phase = match self.phase {
            Phase::Serving {
                current, streak, ..
            } => Phase::Serving {
                current,
                starting: Some(generation),
                streak,
            },
            Phase::Recovering { streak, .. } => Phase::Recovering {
                next: Next::Starting(generation),
                streak,
            },
            other => other,
        };
    }

    fn run_queued(&mut self, now: Instant) {
        if std::mem::take(&mut self.queued) {
            self.waiting = std::mem::take(&mut self.waiting_queued);
            self.request_reload(now, "queued request", None);
        }
    }

    /// A reload ended: its waiters are told, and it is the last reload.
    fn finish_reload(&mut self, now: Instant, outcome: Outcome) {
        let waiting = std::mem::take(&mut self.waiting);
        self.answer(waiting, &outcome);
        self.last_reload = Some((now, outcome));
    }

    /// A reload that replaced a worker ended: a worker that asked is told
    /// now (it may be the one told to stop next), a client once the old
    /// worker stops accepting.
    fn finish_replacing(&mut self, now: Instant, outcome: Outcome) {
        let (clients, workers): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| matches!(w, Waiter::Client(_)));
        self.held.extend(clients.into_iter().map(|to| Held {
            to,
            outcome: outcome.clone(),
            until: now + ANSWER_WAIT,
        }));
        self.waiting = workers;
        self.finish_reload(now, outcome);
    }

    /// Answers the held clients once no worker told to stop accepts, and
    /// each one whose wait is over.
    fn release_held(&mut self, now: Instant) {
        if self.held.is_empty() {
            return;
        }
        let accepting = self
            .workers
            .iter()
            .any(|w| w.accepting && matches!(w.state, State::Draining { .. }));
        let (due, held): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| !accepting || h.until <= now);
        self.held = held;
        self.out.extend(due.into_iter().map(Held::answer));
    }

    /// Tells each of `waiters` the `outcome`: a worker that did not say it
    /// reads the new build's name, without it.
    fn answer(&mut self, waiters: impl IntoIterator<Item = Waiter>, outcome: &Outcome) {
        for to in waiters {
            let mut outcome = outcome.clone();
            if let (Waiter::Worker(generation), Outcome::Reloaded { build, .. }) =
                (to, &mut outcome)
            {
                let takes = |w: &Worker| w.generation == generation && w.takes_builds;
                if !self.workers.iter().any(takes) {
                    *build = None;
                }
            }
            self.out.push(Action::Answer { to, outcome });
        }
    }

    fn ready(&mut self, now: Instant, generation: u64, readiness: Option<Readiness>) {
        let Some(worker) = self.worker(generation) else {
            return;
        };
        if !matches!(worker.state, State::Starting { .. }) {
            return;
        }
        worker.state = State::Serving;
        worker.ready_at = Some(now);
        worker.readiness = readiness.clone();
        let took = now.duration_since(worker.started);
        let name = worker.name();
        let build = worker.build.clone();
        let reloaded = Outcome::Reloaded {
            generation,
            pid: worker.pid.unwrap_or(0),
            took,
            build: build.clone(),
        };
        let (previous, streak) = match self.phase {
            Phase::Booting { .. } => (None, 0),
            Phase::Serving {
                current, streak, ..
            } => (Some(current), streak),
            Phase::Recovering { streak, .. } => (None, streak),
            Phase::Stopping { .. } | Phase::Done => return,
        };
        self.phase = Phase::Serving {
            current: generation,
            starting: None,
            streak,
        };
        match previous {
            Some(old) => {
                // Before the stop: the old worker may be the one that asked.
                self.finish_replacing(now, reloaded);
                let kill_at = now + self.options.stop_timeout + KILL_GRACE;
                if let Some(w) = self.worker(old) {
                    w.state = State::Draining { kill_at };
                    w.stopped_at = Some(now);
                }
                self.out.push(Action::Stop { generation: old });
                let old = self.name_of(old);
                self.counters.reloaded(took);
                self.report(Report::ReloadFinished {
                    name,
                    took,
                    build,
                    old,
                });
                self.cut_excess_draining();
                self.upgrade(generation, readiness.as_ref());
            }
            None => {
                if !self.waiting.is_empty() {
                    self.finish_reload(now, reloaded);
                }
                self.report(Report::Ready {
                    name,
                    took,
                    build,
                    note: String::new(),
                })
            }
        }
        self.out.push(Action::KeepListeners { generation });
        self.run_queued(now);
    }

    /// Generation `generation` will never be ready: it is gone, or could not
    /// be started.
    fn failed_start(&mut self, now: Instant, generation: u64, reason: String) {
        if self.starting() != Some(generation) {
            return;
        }
        match self.phase {
            Phase::Booting { .. } => {
                self.finish_reload(now, Outcome::Failed(format!("start failed: {reason}")));
                self.report(Report::StartFailed {
                    reason: reason.clone(),
                });
                self.phase = Phase::Done;
                self.out.push(Action::Exit(Err(reason)));
            }
            Phase::Serving {
                current, streak, ..
            } => {
                self.phase = Phase::Serving {
                    current,
                    starting: None,
                    streak,
                };
                let still = self.name_of(current);
                self.counters.reloads_failed += 1;
                let report = Report::ReloadFailed { reason, still };
                if let Some(line) = report.log_line() {
                    self.finish_reload(now, Outcome::Failed(line));
                }
                self.report(report);
                self.run_queued(now);
            }
            Phase::Recovering { streak, .. } => {
                if !self.waiting.is_empty() {
                    let line = format!("reload failed: {reason}; no worker is serving");
                    self.finish_reload(now, Outcome::Failed(line));
                }
                self.schedule_restart(now, streak, reason)
            }
            Phase::Stopping { .. } | Phase::Done => {}
        }
    }

    fn schedule_restart(&mut self, now: Instant, streak: u32, reason: String) {
        let delay = BACKOFF_FIRST
            .saturating_mul(1u32 << streak.min(16))
            .min(BACKOFF_MAX);
        self.phase = Phase::Recovering {
            next: Next::At(now + delay),
            streak: streak + 1,
        };
        self.report(Report::NoWorker { reason, delay });
    }

    fn exited(&mut self, now: Instant, pid: u32, how: &str) {
        // Children that are not workers (orphans re-parented to a master
        // that is PID 1) are reaped and nothing else.
        let Some(index) = self.workers.iter().position(|w| w.pid == Some(pid)) else {
            return;
        };
        let worker = self.workers.remove(index);
        let name = worker.name();
        let generation = worker.generation;
        let detail = |when: &str| match &worker.failure {
            Some(failure) => format!("{name} {how} {when}: {failure}"),
            None => format!("{name} {how} {when}"),
        };
        match self.phase {
            Phase::Stopping { .. } | Phase::Done => self.log(format!("{name} {how}")),
            _ if worker.ready_at.is_none() => {
                self.failed_start(now, generation, detail("before it was ready"))
            }
            Phase::Serving {
                current,
                starting,
                streak,
            } if current == generation => {
                let stable = worker
                    .ready_at
                    .is_some_and(|at| now.duration_since(at) >= STABLE_AFTER);
                let streak = if stable { 0 } else { streak };
                self.counters.worker_crashes += 1;
                self.error(detail("unexpectedly"));
                match starting {
                    // A reload in flight replaces it.
                    Some(g) => {
                        self.phase = Phase::Recovering {
                            next: Next::Starting(g),
                            streak,
                        }
                    }
                    None => self.schedule_restart(now, streak, format!("{name} {how}")),
                }
            }
            _ => self.log(format!("{name} {how} after draining")),
        }
        self.out.push(Action::Release { generation });
        self.release_held(now);
        if matches!(self.phase, Phase::Stopping { .. }) && self.workers.is_empty() {
            self.phase = Phase::Done;
            self.lame_duck = None;
            self.out.push(Action::Exit(Ok(())));
        }
    }

    fn tick(&mut self, now: Instant) {
        if let Some((until, signal)) = self.lame_duck {
            if until <= now {
                self.lame_duck = None;
                self.drain_all(now, signal);
            }
        }
        if self.changed.is_some_and(|at| at <= now) {
            self.changed = None;
            let why = match self.changed_path.take() {
                Some(path) => format!("{path} changed"),
                None => "the executable changed".to_string(),
            };
            self.request_reload(now, &why, None);
        }
        self.watchdog_tick(now);
        self.release_held(now);
        let expired = self.queries.iter().any(|q| q.deadline <= now);
        if expired {
            self.answer_queries(now);
        }
        if let Phase::Recovering {
            next: Next::At(at),
            streak,
        } = self.phase
        {
            if at <= now {
                self.log("restarting".into());
                let generation = self.spawn(now);
                self.phase = Phase::Recovering {
                    next: Next::Starting(generation),
                    streak,
                };
            }
        }
        let ready_timeout = self.options.ready_timeout;
        let mut kills = Vec::new();
        for w in &mut self.workers {
            let why = match w.state {
                State::Starting { deadline } if deadline <= now => {
                    if w.failure.is_none() {
                        w.failure = Some(if w.connected {
                            format!("was not ready within the {ready_timeout:?} ready_timeout")
                        } else {
                            "closed its control channel before it was ready and did not exit"
                                .to_string()
                        });
                    }
                    "it did not become ready in time"
                }
                State::Draining { kill_at } if kill_at <= now => {
                    "it was still running after stop_timeout"
                }
                _ => continue,
            };
            if let Some(pid) = w.pid {
                w.state = State::Killed;
                kills.push((format!("killing {} with SIGKILL: {why}", w.name()), pid));
            }
        }
        for (line, pid) in kills {
            self.warn(line);
            self.out.push(Action::Kill { pid });
        }
    }

    /// A stop signal. The first one stops the service: with a
    /// `shutdown_delay` and a serving worker, that worker serves on for the
    /// delay, then every worker drains. One during the delay drains at once;
    /// one during the drain kills every worker.
    fn stop(&mut self, now: Instant, signal: Signal) {
        if let Some((_, first)) = self.lame_duck.take() {
            self.log(format!(
                "{signal} received again: the rest of the {:?} shutdown_delay is skipped",
                self.options.shutdown_delay
            ));
            self.drain_all(now, first);
            return;
        }
        if let Phase::Stopping { .. } = self.phase {
            self.warn(format!(
                "{signal} received again while stopping; killing every worker now"
            ));
            self.kill_all(|_| true);
            return;
        }
        let current = match self.phase {
            Phase::Serving { current, .. } => Some(current),
            _ => None,
        };
        self.phase = Phase::Stopping { current };
        self.queued = false;
        let mut waiters = std::mem::take(&mut self.waiting);
        waiters.append(&mut self.waiting_queued);
        let stopping = Outcome::Failed(format!("the service is stopping ({signal})"));
        self.answer(waiters, &stopping);
        // Reloads that finished are told so now: every worker stops.
        let held = std::mem::take(&mut self.held);
        self.out.extend(held.into_iter().map(Held::answer));
        if current.is_none() || self.options.shutdown_delay.is_zero() {
            self.drain_all(now, signal);
            return;
        }
        self.lame_duck = Some((now + self.options.shutdown_delay, signal));
        self.report(Report::LameDuck {
            signal,
            delay: self.options.shutdown_delay,
            // The delay and the whole drain, so that neither is cut short
            // by TimeoutStopSec.
            extend: self.options.shutdown_delay
                + self.options.stop_timeout
                + KILL_GRACE
                + Duration::from_secs(1),
        });
        // A reload's new worker serves nothing yet, and never will.
        self.kill_all(|state| matches!(state, State::Starting { .. }));
        let serving = self.workers.iter().filter(|w| w.state == State::Serving);
        let lame: Vec<Action> = serving
            .map(|w| Action::LameDuck {
                generation: w.generation,
            })
            .collect();
        self.out.extend(lame);
    }

    /// Tells every serving worker to drain (on `signal`), and kills those
    /// still starting; exits at once if no worker is left.
    fn drain_all(&mut self, now: Instant, signal: Signal) {
        self.report(Report::Stopping {
            signal,
            workers: self.workers.len(),
            stop_timeout: self.options.stop_timeout,
            // Ask systemd for the whole drain, so a long stop_timeout is not
            // cut short by TimeoutStopSec.
            extend: self.options.stop_timeout + KILL_GRACE + Duration::from_secs(1),
        });
        // Starting workers serve nothing yet: nothing to drain.
        self.kill_all(|state| matches!(state, State::Starting { .. }));
        let kill_at = now + self.options.stop_timeout + KILL_GRACE;
        let mut stops = Vec::new();
        for w in &mut self.workers {
            if w.state == State::Serving {
                w.state = State::Draining { kill_at };
                w.stopped_at = Some(now);
                stops.push(Action::Stop {
                    generation: w.generation,
                });
            }
        }
        self.out.extend(stops);
        if self.workers.is_empty() {
            self.phase = Phase::Done;
            self.out.push(Action::Exit(Ok(())));
        }
    }

    fn next_check(&mut self) -> u64 {
        self.checks += 1;
        self.checks
    }

    /// The serving worker, if one serves (or drains at stop).
    fn current(&self) -> Option<u64> {
        match self.phase {
            Phase::Serving { current, .. }
            | Phase::Stopping {
                current: Some(current),
            } => Some(current),
            _ => None,
        }
    }

    /// A due watchdog check: the previous check unanswered is a wedged
    /// worker, killed and replaced; otherwise the next check is sent.
    fn watchdog_tick(&mut self, now: Instant) {
        let Some(mut watchdog) = self.watchdog else {
            return;
        };
        let current = self.current();
        if watchdog.next > now || current.is_none() {
            // With no worker serving, the check is due as soon as one does.
            return;
        }
        watchdog.next = now + watchdog.config.every;
        let missed = watchdog.pending.filter(|&(generation, _)| {
            Some(generation) == current && matches!(self.phase, Phase::Serving { .. })
        });
        watchdog.pending = None;
        if let Some((generation, _)) = missed {
            self.watchdog = Some(watchdog);
            self.missed_check(generation, watchdog.config.every);
            return;
        }
        if let Some(generation) = current {
            let check = self.next_check();
            watchdog.pending = Some((generation, check));
            self.out.push(Action::Check { generation, check });
        }
        self.watchdog = Some(watchdog);
    }

    fn missed_check(&mut self, generation: u64, every: Duration) {
        let Some(w) = self.worker(generation) else {
            return;
        };
        let Some(pid) = w.pid else {
            return;
        };
        let why = format!("it did not answer the watchdog check within {every:?}");
        w.state = State::Killed;
        let name = w.name();
        self.error(format!(
            "{name}: {why}; killing it and its process group, and starting a new worker"
        ));
        if let Some(w) = self.worker(generation) {
            w.failure = Some(why);
        }
        self.out.push(Action::Kill { pid });
    }

    fn alive(&mut self, now: Instant, generation: u64, check: u64, connections: u64) {
        let Some(w) = self.worker(generation) else {
            return;
        };
        w.answered = Some((check, connections));
        if let Some(watchdog) = &mut self.watchdog {
            if watchdog.pending == Some((generation, check)) {
                watchdog.pending = None;
                if watchdog.config.systemd && self.current() == Some(generation) {
                    self.out.push(Action::Watchdog);
                }
            }
        }
        self.answer_queries(now);
    }

    /// Workers a status query asks for their connections: those past
    /// their start, whose runtime reads the channel.
    fn checked(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter().filter(|w| {
            w.connected
                && w.pid.is_some()
                && matches!(w.state, State::Serving | State::Draining { .. })
        })
    }

    fn query(&mut self, now: Instant, client: u64) {
        let check = self.next_check();
        let checks: Vec<Action> = self
            .checked()
            .map(|w| Action::Check {
                generation: w.generation,
                check,
            })
            .collect();
        self.out.extend(checks);
        self.queries.push(Query {
            client,
            check,
            deadline: now + STATUS_WAIT,
        });
        self.answer_queries(now);
    }

    /// Answers the queries that every worker answered, or whose wait is
    /// over.
    fn answer_queries(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.queries.len() {
            let query = self.queries[i];
            let complete = self
                .checked()
                .all(|w| w.answered.is_some_and(|(check, _)| check >= query.check));
            if complete || query.deadline <= now {
                self.queries.remove(i);
                let status = self.status(query.check);
                self.out.push(Action::Status {
                    client: query.client,
                    status: Box::new(status),
                });
            } else {
                i += 1;
            }
        }
    }

    fn status(&self, check: u64) -> Status {
        let of = |w: &Worker, since: Instant| WorkerStatus {
            generation: w.generation,
            pid: w.pid,
            build: w.build.clone(),
            since,
            connections: w
                .answered
                .filter(|&(answered, _)| answered >= check)
                .map(|(_, connections)| connections),
        };
        let find = |generation: Option<u64>| {
            self.workers
                .iter()
                .find(|w| Some(w.generation) == generation)
        };
        let serving = find(self.current())
            .filter(|w| w.state == State::Serving)
            .map(|w| of(w, w.ready_at.unwrap_or(w.started)));
        let starting = find(self.starting()).map(|w| of(w, w.started));
        let draining = self
            .workers
            .iter()
            .filter(|w| matches!(w.state, State::Draining { .. } | State::Killed))
            .filter(|w| Some(w.generation) != self.starting())
            .map(|w| of(w, w.stopped_at.unwrap_or(w.started)))
            .collect();
        let state = match self.phase {
            Phase::Booting { .. } => "starting",
            Phase::Serving { starting: None, .. } => "serving",
            Phase::Serving { .. } => "reloading",
            Phase::Recovering { .. } => "recovering",
            Phase::Stopping { .. } | Phase::Done => "stopping",
        };
        Status {
            state,
            serving,
            starting,
            draining,
            last_reload: self.last_reload.clone(),
            reloads_queued: self.queued,
            counters: Some(self.counters.clone()),
        }
    }

    /// Cuts the oldest draining workers while more than `max_draining`
    /// drain.
    fn cut_excess_draining(&mut self) {
        let mut draining: Vec<(u64, u32)> = self
            .workers
            .iter()
            .filter(|w| matches!(w.state, State::Draining { .. }))
            .filter_map(|w| Some((w.generation, w.pid?)))
            .collect();
        draining.sort_unstable();
        let excess = draining.len().saturating_sub(self.options.max_draining);
        for &(generation, pid) in &draining[..excess] {
            self.cut_draining += 1;
            if let Some(w) = self.worker(generation) {
                w.failure = Some("cut: more than max_draining workers were draining".into());
            }
            let name = self.name_of(generation);
            if let Some(w) = self.worker(generation) {
                w.state = State::Killed;
            }
            self.warn(format!(
                "killing {name} with SIGKILL: more than max_draining ({}) workers were draining \
                 ({} cut so far)",
                self.options.max_draining, self.cut_draining
            ));
            self.out.push(Action::Kill { pid });
        }
    }

    /// A reload replaced a worker: the master follows into the new build if
    /// that build reads the state this one writes, and says why not if not.
    fn upgrade(&mut self, generation: u64, readiness: Option<&Readiness>) {
        if !self.options.upgrade_master {
            return;
        }
        let why_not = match readiness {
            Some(r) if (r.reads.0..=r.reads.1).contains(&state::FORMAT) => {
                self.out.push(Action::UpgradeMaster { generation });
                return;
            }
            Some(r) => format!(
                "its graceful {} reads master state formats {}..={}, this master writes format {}",
                r.version,
                r.reads.0,
                r.reads.1,
                state::FORMAT
            ),
            None => "its build does not say which master state it reads (a graceful version \
                     older than master upgrades)"
                .to_string(),
        };
        let name = self.name_of(generation);
        self.warn(format!(
            "master kept at graceful {}: the new version cannot take over its state ({name}: \
             {why_not}); restart the service to upgrade the master",
            env!("CARGO_PKG_VERSION")
        ));
    }

    /// Whether the master may re-execute now: not once it is stopping.
    pub(crate) fn can_upgrade(&self) -> bool {
        !matches!(self.phase, Phase::Stopping { .. } | Phase::Done)
    }

    fn kill_all(&mut self, which: impl Fn(State) -> bool) {
        for w in &mut self.workers {
            if let (true, Some(pid)) = (which(w.state), w.pid) {
                w.state = State::Killed;
                self.out.push(Action::Kill { pid });
            }
        }
    }
}

/// The core across an upgrade in place: every field but the options, which
/// the new image takes from its own build.
impl Core {
    /// The state to carry, with its moments relative to `clock`.
    pub(crate) fn export(&self, clock: &Clock) -> CoreState {
        let waiter = |w: &Waiter| match *w {
            Waiter::Worker(g) => WaiterState::Worker(g),
            Waiter::Client(id) => WaiterState::Client(id),
        };
        let phase = match self.phase {
            Phase::Booting { starting } => PhaseState::Booting { starting },
            Phase::Serving {
                current,
                starting,
                streak,
            } => PhaseState::Serving {
                current,
                starting,
                streak,
            },
            Phase::Recovering {
                next: Next::At(at),
                streak,
            } => PhaseState::RecoveringAt {
                at: clock.rel(at),
                streak,
            },
            Phase::Recovering {
                next: Next::Starting(starting),
                streak,
            } => PhaseState::RecoveringWith { starting, streak },
            Phase::Stopping { current } => PhaseState::Stopping { current },
            Phase::Done => PhaseState::Done,
        };
        let workers = self
            .workers
            .iter()
            .map(|w| WorkerState {
                generation: w.generation,
                pid: w.pid,
                state: match w.state {
                    State::Starting { deadline } => WorkerPhase::Starting {
                        deadline: clock.rel(deadline),
                    },
                    State::Serving => WorkerPhase::Serving,
                    State::Draining { kill_at } => WorkerPhase::Draining {
                        kill_at: clock.rel(kill_at),
                    },
                    State::Killed => WorkerPhase::Killed,
                },
                started: clock.rel(w.started),
                ready_at: w.ready_at.map(|at| clock.rel(at)),
                connected: w.connected,
                stopped_at: w.stopped_at.map(|at| clock.rel(at)),
                answered: w.answered,
                accepting: w.accepting,
                failure: w.failure.clone(),
                reads: w.readiness.as_ref().map(|r| r.reads),
                version: w.readiness.as_ref().map(|r| r.version.clone()),
                build: w.build.clone(),
                takes_builds: w.takes_builds,
            })
            .collect();
        CoreState {
            phase,
            queued: self.queued,
            workers,
            next_generation: self.next_generation,
            checks: self.checks,
            cut_draining: self.cut_draining,
            waiting: self.waiting.iter().map(waiter).collect(),
            waiting_queued: self.waiting_queued.iter().map(waiter).collect(),
            held: self
                .held
                .iter()
                .map(|h| HeldState {
                    to: waiter(&h.to),
                    outcome: h.outcome.clone(),
                    until: clock.rel(h.until),
                })
                .collect(),
            last_reload: self
                .last_reload
                .as_ref()
                .map(|(at, outcome)| (clock.rel(*at), outcome.clone())),
            watchdog: self.watchdog.map(|w| (clock.rel(w.next), w.pending)),
            queries: self
                .queries
                .iter()
                .map(|q| QueryState {
                    client: q.client,
                    check: q.check,
                    deadline: clock.rel(q.deadline),
                })
                .collect(),
            changed: self.changed.map(|at| clock.rel(at)),
            counters: self.counters.clone(),
        }
    }

    /// The core a re-executed master resumes with: the carried state under
    /// the new build's options. Deadlines already given stay: a draining
    /// worker keeps its kill time, a starting one its ready deadline; the new
    /// `stop_timeout` and `ready_timeout` apply to the workers told from now
    /// on. The watchdog keeps its schedule if it still runs, starts one
    /// period from now if it is new, and stops if it is off now.
    pub(crate) fn resume(
        config: &Config,
        watchdog: Option<WatchdogConfig>,
        carried: CoreState,
        clock: &Clock,
        now: Instant,
    ) -> Core {
        let waiter = |w: WaiterState| match w {
            WaiterState::Worker(g) => Waiter::Worker(g),
            WaiterState::Client(id) => Waiter::Client(id),
        };
        let phase = match carried.phase {
            PhaseState::Booting { starting } => Phase::Booting { starting },
            PhaseState::Serving {
                current,
                starting,
                streak,
            } => Phase::Serving {
                current,
                starting,
                streak,
            },
            PhaseState::RecoveringAt { at, streak } => Phase::Recovering {
                next: Next::At(clock.at(at)),
                streak,
            },
            PhaseState::RecoveringWith { starting, streak } => Phase::Recovering {
                next: Next::Starting(starting),
                streak,
            },
            PhaseState::Stopping { current } => Phase::Stopping { current },
            PhaseState::Done => Phase::Done,
        };
        let workers = carried
            .workers
            .into_iter()
            .map(|w| Worker {
                generation: w.generation,
                pid: w.pid,
                state: match w.state {
                    WorkerPhase::Starting { deadline } => State::Starting {
                        deadline: clock.at(deadline),
                    },
                    WorkerPhase::Serving => State::Serving,
                    WorkerPhase::Draining { kill_at } => State::Draining {
                        kill_at: clock.at(kill_at),
                    },
                    WorkerPhase::Killed => State::Killed,
                },
                started: clock.at(w.started),
                ready_at: w.ready_at.map(|at| clock.at(at)),
                connected: w.connected,
                stopped_at: w.stopped_at.map(|at| clock.at(at)),
                answered: w.answered,
                accepting: w.accepting,
                failure: w.failure,
                readiness: w.reads.map(|reads| Readiness {
                    reads,
                    version: w.version.unwrap_or_default(),
                }),
                build: w.build,
                takes_builds: w.takes_builds,
            })
            .collect();
        let carried_watchdog = carried.watchdog;
        Core {
            options: Options::new(config),
            lame_duck: None,
            cut_draining: carried.cut_draining,
            watchdog: watchdog.map(|config| match carried_watchdog {
                Some((next, pending)) => Watchdog {
                    config,
                    next: clock.at(next).min(now + config.every),
                    pending,
                },
                None => Watchdog {
                    config,
                    next: now + config.every,
                    pending: None,
                },
            }),
            checks: carried.checks,
            queries: carried
                .queries
                .into_iter()
                .map(|q| Query {
                    client: q.client,
                    check: q.check,
                    deadline: clock.at(q.deadline),
                })
                .collect(),
            waiting: carried.waiting.into_iter().map(waiter).collect(),
            waiting_queued: carried.waiting_queued.into_iter().map(waiter).collect(),
            held: carried
                .held
                .into_iter()
                .map(|h| Held {
                    to: waiter(h.to),
                    outcome: h.outcome,
                    until: clock.at(h.until),
                })
                .collect(),
            last_reload: carried
                .last_reload
                .map(|(at, outcome)| (clock.at(at), outcome)),
            workers,
            next_generation: carried.next_generation,
            phase,
            queued: carried.queued,
            changed: carried.changed.map(|at| clock.at(at)),
            // Not carried: a reload due then says the executable changed.
            changed_path: None,
            counters: carried.counters,
            out: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::config;

    const MS: Duration = Duration::from_millis(1);

    /// A core at a fixed start instant, with the default options (ready
    /// timeout 30 s, stop timeout 20 s).
    struct Run {
        core: Core,
        t0: Instant,
    }

    impl Run {
        /// Started, with worker 1 spawned as pid 101 and ready at +5 ms.
        fn serving() -> Run {
            let mut run = Run::booting();
            run.spawned(0, 1, 101);
            run.at(
                5,
                Event::Ready {
                    generation: 1,
                    readiness: None,
                },
            );
            run
        }

        /// Started; worker 1 is about to be spawned.
        fn booting() -> Run {
            Run::with_watchdog(None)
        }

        fn with_watchdog(watchdog: Option<WatchdogConfig>) -> Run {
            // Upgrades of the master have tests of their own below.
            let config = Config {
                upgrade_master: false,
                ..config()
            };
            Run::with_config(&config, watchdog)
        }

        fn with_config(config: &Config, watchdog: Option<WatchdogConfig>) -> Run {
            let t0 = Instant::now();
            let (core, actions) = Core::start(config, watchdog, t0);
            assert_eq!(actions, [Action::Spawn { generation: 1 }]);
            Run { core, t0 }
        }

        fn at(&mut self, ms: u64, event: Event) -> Vec<Action> {
            self.core.handle(self.t0 + MS * ms as u32, event)
        }

        /// A reload asked for by `by`, who waits for its outcome.
        fn ask(&mut self, ms: u64, by: Waiter) -> Vec<Action> {
            self.at(ms, Event::ReloadRequested { by })
        }

        /// Generation `generation` was started as `pid`.
        fn spawned(&mut self, ms: u64, generation: u64, pid: u32) -> Vec<Action> {
            self.at(ms, Event::Spawned { generation, pid })
        }

        /// A reload by SIGHUP that spawns `generation` as `pid`.
        fn reload(&mut self, ms: u64, generation: u64, pid: u32) {
            let actions = self.at(ms, Event::Signal(Signal::SIGHUP));
            assert!(
                actions.contains(&Action::Spawn { generation }),
                "{actions:?}"
            );
            self.at(ms, Event::Spawned { generation, pid });
        }
    }

    fn exited(pid: u32, code: i32) -> Event {
        Event::Exited {
            pid,
            how: format!("exited with status {code}"),
        }
    }

    fn spawns(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Spawn { .. }))
            .count()
    }

    fn no_worker_delay(actions: &[Action]) -> Option<Duration> {
        actions.iter().find_map(|a| match a {
            Action::Report(Report::NoWorker { delay, .. }) => Some(*delay),
            _ => None,
        })
    }

    #[test]
    fn the_first_ready_worker_serves_and_its_listeners_are_kept() {
        let mut run = Run::booting();
        assert_eq!(
            run.spawned(0, 1, 101),
            [Action::Log(
                Level::Info,
                "worker 1 (pid 101) starting".into()
            )]
        );
        assert_eq!(
            run.at(
                7,
                Event::Ready {
                    generation: 1,
                    readiness: None
                }
            ),
            [
                Action::Report(Report::Ready {
                    name: "worker 1 (pid 101)".into(),
                    took: 7 * MS,
                    build: None,
                    note: String::new(),
                }),
                Action::KeepListeners { generation: 1 },
            ]
        );
        // Serving and idle: nothing to wake up for.
        assert_eq!(run.core.next_deadline(), None);
    }

    #[test]
    fn a_workers_build_is_told_where_it_serves() {
        let mut run = Run::booting();
        run.spawned(0, 1, 101);
        let build = |generation, build: &str| Event::Build {
            generation,
            build: build.into(),
        };
        assert_eq!(run.at(2, build(1, "app 1.0")), []);
        let ready = |generation| Event::Ready {
            generation,
            readiness: None,
        };
        assert_eq!(
            run.at(7, ready(1))[0],
            Action::Report(Report::Ready {
                name: "worker 1 (pid 101)".into(),
                took: 7 * MS,
                build: Some("app 1.0".into()),
                note: String::new(),
            })
        );
        run.ask(1000, Waiter::Client(4));
        run.spawned(1000, 2, 102);
        run.at(1001, build(2, "app 2.0"));
        // A build for a generation that is not there changes nothing.
        run.at(1002, build(9, "app 9.0"));
        let status = run.core.status(0);
        assert_eq!(status.serving.unwrap().build.as_deref(), Some("app 1.0"));
        assert_eq!(status.starting.unwrap().build.as_deref(), Some("app 2.0"));
        let actions = run.at(1010, ready(2));
        assert!(
            actions.contains(&Action::Report(Report::ReloadFinished {
                name: "worker 2 (pid 102)".into(),
                took: 10 * MS,
                build: Some("app 2.0".into()),
                old: "worker 1 (pid 101)".into(),
            })),
            "{actions:?}"
        );
        // The client is answered once the old worker no longer accepts.
        let actions = run.at(1020, Event::StoppedAccepting { generation: 1 });
        assert!(
            actions.contains(&Action::Answer {
                to: Waiter::Client(4),
                outcome: Outcome::Reloaded {
                    generation: 2,
                    pid: 102,
                    took: 10 * MS,
                    build: Some("app 2.0".into()),
                },
            }),
            "{actions:?}"
        );
        let status = run.core.status(0);
        assert_eq!(status.serving.unwrap().build.as_deref(), Some("app 2.0"));
        assert_eq!(status.draining[0].build.as_deref(), Some("app 1.0"));
    }

    #[test]
    fn a_worker_that_asked_is_told_the_new_build_only_if_it_reads_it() {
        let mut run = Run::serving();
        let build = |generation, build: &str| Event::Build {
            generation,
            build: build.into(),
        };
        let ready = |generation| Event::Ready {
            generation,
            readiness: None,
        };
        let told = |actions: &[Action], waiter| {
            answers(actions)
                .into_iter()
                .find(|(to, _)| *to == waiter)
                .map(|(_, outcome)| outcome)
        };
        // Worker 1 did not say it reads builds (an older build): told the
        // outcome without it, as its decoder takes it.
        run.ask(1000, Waiter::Worker(1));
        run.spawned(1000, 2, 102);
        run.at(1001, build(2, "app 2.0"));
        run.at(1002, Event::TakesBuilds { generation: 2 });
        let actions = run.at(1010, ready(2));
        assert_eq!(
            told(&actions, Waiter::Worker(1)),
            Some(reloaded(2, 102, 10)),
            "{actions:?}"
        );
        // Worker 2 did: told that worker 3 serves app 3.0.
        run.ask(2000, Waiter::Worker(2));
        run.spawned(2000, 3, 103);
        run.at(2001, build(3, "app 3.0"));
        let actions = run.at(2010, ready(3));
        assert_eq!(
            told(&actions, Waiter::Worker(2)),
            Some(Outcome::Reloaded {
                generation: 3,
                pid: 103,
                took: 10 * MS,
                build: Some("app 3.0".into()),
            }),
            "{actions:?}"
        );
    }

    #[test]
    fn the_old_worker_serves_until_the_new_one_is_ready() {
        let mut run = Run::serving();
        let actions = run.at(1000, Event::Signal(Signal::SIGHUP));
        assert_eq!(
            actions,
            [
                Action::Report(Report::ReloadStarted {
                    why: "signal SIGHUP".into(),
                    starting: Some("worker 2".into()),
                }),
                Action::Spawn { generation: 2 },
            ]
        );
        run.spawned(1000, 2, 102);
        // However long the new worker takes, the old one is not told to stop.
        assert_eq!(run.at(1900, Event::Tick), []);
        let actions = run.at(
            2000,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        assert_eq!(
            actions,
            [
                Action::Stop { generation: 1 },
                Action::Report(Report::ReloadFinished {
                    name: "worker 2 (pid 102)".into(),
                    took: 1000 * MS,
                    build: None,
                    old: "worker 1 (pid 101)".into(),
                }),
                Action::KeepListeners { generation: 2 },
            ]
        );
        // Worker 1 is killed if still there at stop_timeout + the grace.
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 22_500));
        // The old one exits after its drain: released, nothing else.
        assert_eq!(
            run.at(2500, exited(101, 0)),
            [
                Action::Log(
                    Level::Info,
                    "worker 1 (pid 101) exited with status 0 after draining".into()
                ),
                Action::Release { generation: 1 },
            ]
        );
    }

    #[test]
    fn a_hundred_reload_requests_make_one_reload_in_flight_and_one_queued() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        let mut actions = Vec::new();
        for i in 0..100 {
            let event = if i % 2 == 0 {
                Event::Signal(Signal::SIGUSR1)
            } else {
                Event::ReloadRequested {
                    by: Waiter::Worker(1),
                }
            };
            actions.extend(run.at(1001 + i, event));
        }
        assert_eq!(spawns(&actions), 0, "{actions:?}");
        assert_eq!(
            actions,
            [Action::Log(
                Level::Info,
                "reload requested (signal SIGUSR1) while another is in progress; it will run next"
                    .into()
            )]
        );
        // The reload in flight finishes: exactly one more starts.
        let actions = run.at(
            1200,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        assert_eq!(spawns(&actions), 1, "{actions:?}");
        assert!(actions.contains(&Action::Report(Report::ReloadStarted {
            why: "queued request".into(),
            starting: Some("worker 3".into()),
        })));
        run.spawned(1200, 3, 103);
        // And after that one, none.
        assert_eq!(
            spawns(&run.at(
                1300,
                Event::Ready {
                    generation: 3,
                    readiness: None
                }
            )),
            0
        );
    }

    #[test]
    fn a_worker_that_exits_before_it_is_ready_is_rolled_back_with_its_reason() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        run.at(
            1010,
            Event::Failed {
                generation: 2,
                reason: "main panicked: boom".into(),
            },
        );
        let actions = run.at(1011, exited(102, 1));
        assert_eq!(
            actions,
            [
                Action::Report(Report::ReloadFailed {
                    reason: "worker 2 (pid 102) exited with status 1 before it was ready: \
                             main panicked: boom"
                        .into(),
                    still: "worker 1 (pid 101)".into(),
                }),
                Action::Release { generation: 2 },
            ]
        );
        // Worker 1 was never told to stop, and a later reload works.
        run.reload(2000, 3, 103);
    }

    #[test]
    fn a_worker_not_ready_within_ready_timeout_is_killed_and_rolled_back() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 31_000));
        assert_eq!(run.at(30_999, Event::Tick), []);
        assert_eq!(
            run.at(31_000, Event::Tick),
            [
                Action::Log(
                    Level::Warn,
                    "killing worker 2 (pid 102) with SIGKILL: it did not become ready in time"
                        .into()
                ),
                Action::Kill { pid: 102 },
            ]
        );
        let actions = run.at(
            31_001,
            Event::Exited {
                pid: 102,
                how: "was killed by SIGKILL".into(),
            },
        );
        assert_eq!(
            actions[0],
            Action::Report(Report::ReloadFailed {
                reason: "worker 2 (pid 102) was killed by SIGKILL before it was ready: \
                         was not ready within the 30s ready_timeout"
                    .into(),
                still: "worker 1 (pid 101)".into(),
            })
        );
    }

    #[test]
    fn a_worker_that_closes_its_channel_but_lingers_is_killed_after_a_second() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        run.at(
            1100,
            Event::ControlClosed {
                generation: 2,
                unreadable: None,
            },
        );
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 2100));
        assert_eq!(run.at(2100, Event::Tick)[1], Action::Kill { pid: 102 });
        let actions = run.at(2101, exited(102, 0));
        let Action::Report(Report::ReloadFailed { reason, .. }) = &actions[0] else {
            panic!("{actions:?}");
        };
        assert!(
            reason.ends_with("closed its control channel before it was ready and did not exit"),
            "{reason}"
        );
    }

    #[test]
    fn a_worker_whose_message_cannot_be_read_fails_with_what_it_sent() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        let unreadable = |generation| Event::ControlClosed {
            generation,
            unreadable: Some("unknown control message tag 0x5a".into()),
        };
        run.at(1100, unreadable(2));
        assert_eq!(run.at(2100, Event::Tick)[1], Action::Kill { pid: 102 });
        let killed = Event::Exited {
            pid: 102,
            how: "was killed by SIGKILL".into(),
        };
        let actions = run.at(2101, killed);
        let Action::Report(Report::ReloadFailed { reason, .. }) = &actions[0] else {
            panic!("{actions:?}");
        };
        assert_eq!(
            reason,
            "worker 2 (pid 102) was killed by SIGKILL before it was ready: sent a control \
             message this master cannot read (unknown control message tag 0x5a): a build of \
             another graceful protocol, or not a graceful program"
        );
        // A reason the worker gave first is the one kept.
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        run.at(
            1050,
            Event::Failed {
                generation: 2,
                reason: "main panicked: boom".into(),
            },
        );
        run.at(1100, unreadable(2));
        let actions = run.at(1101, exited(102, 1));
        let Action::Report(Report::ReloadFailed { reason, .. }) = &actions[0] else {
            panic!("{actions:?}");
        };
        assert!(reason.ends_with("main panicked: boom"), "{reason}");
    }

    #[test]
    fn a_worker_that_cannot_be_spawned_is_a_failed_reload() {
        let mut run = Run::serving();
        run.at(1000, Event::Signal(Signal::SIGHUP));
        let actions = run.at(
            1000,
            Event::SpawnFailed {
                generation: 2,
                reason: "cannot start a worker from /app: No such file or directory".into(),
            },
        );
        assert_eq!(
            actions,
            [Action::Report(Report::ReloadFailed {
                reason: "cannot start a worker from /app: No such file or directory".into(),
                still: "worker 1 (pid 101)".into(),
            })]
        );
        // Nothing is starting any more: the next request reloads at once.
        assert_eq!(spawns(&run.at(1001, Event::Signal(Signal::SIGHUP))), 1);
    }

    #[test]
    fn a_request_queued_during_a_failed_reload_runs_after_it() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        run.at(1001, Event::Signal(Signal::SIGHUP));
        let actions = run.at(1002, exited(102, 3));
        assert!(matches!(
            actions[0],
            Action::Report(Report::ReloadFailed { .. })
        ));
        assert!(
            actions.contains(&Action::Spawn { generation: 3 }),
            "{actions:?}"
        );
    }

    #[test]
    fn the_first_worker_failing_ends_the_master_with_its_reason() {
        let mut run = Run::booting();
        run.spawned(0, 1, 101);
        run.at(
            3,
            Event::Failed {
                generation: 1,
                reason: "cannot listen on \":80\": permission denied".into(),
            },
        );
        let reason = "worker 1 (pid 101) exited with status 1 before it was ready: \
                      cannot listen on \":80\": permission denied";
        assert_eq!(
            run.at(4, exited(101, 1)),
            [
                Action::Report(Report::StartFailed {
                    reason: reason.into()
                }),
                Action::Exit(Err(reason.into())),
                Action::Release { generation: 1 },
            ]
        );
    }

    #[test]
    fn crashes_back_off_from_100_ms_doubling_to_10_s() {
        let mut run = Run::serving();
        let mut now = 1000;
        let mut delays = Vec::new();
        for generation in 2..=10 {
            // Worker N runs as pid 100 + N; the one before it crashes.
            let actions = run.at(now, exited(100 + generation as u32 - 1, 101));
            let delay = no_worker_delay(&actions).expect("a restart is scheduled");
            delays.push(delay.as_millis());
            // Not before the delay; at it, a new worker.
            now += delay.as_millis() as u64;
            assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * now as u32));
            assert_eq!(spawns(&run.at(now - 1, Event::Tick)), 0);
            let actions = run.at(now, Event::Tick);
            assert_eq!(actions[0], Action::Log(Level::Info, "restarting".into()));
            assert_eq!(actions[1], Action::Spawn { generation });
            let pid = 100 + generation as u32;
            run.at(now, Event::Spawned { generation, pid });
            run.at(
                now + 5,
                Event::Ready {
                    generation,
                    readiness: None,
                },
            );
            now += 10;
        }
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
    }

    #[test]
    fn a_worker_that_served_10_s_before_it_crashed_resets_the_backoff() {
        let mut run = Run::serving();
        let first = run.at(1000, exited(101, 1));
        assert_eq!(no_worker_delay(&first), Some(100 * MS));
        run.at(1100, Event::Tick);
        run.spawned(1100, 2, 102);
        run.at(
            1105,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        // A quick second crash doubles the delay...
        assert_eq!(
            no_worker_delay(&run.at(2000, exited(102, 1))),
            Some(200 * MS)
        );
        run.at(2200, Event::Tick);
        run.spawned(2200, 3, 103);
        run.at(
            2205,
            Event::Ready {
                generation: 3,
                readiness: None,
            },
        );
        // ...a crash after 10 s of service starts it over.
        let late = run.at(12_205, exited(103, 1));
        assert_eq!(no_worker_delay(&late), Some(100 * MS));
    }

    #[test]
    fn beyond_max_draining_the_oldest_draining_worker_is_cut() {
        // The default allows 4 draining workers: reloads 2 to 5 leave
        // workers 1 to 4 draining, reload 6 cuts worker 1, reload 7 worker 2.
        let mut run = Run::serving();
        let mut cut = Vec::new();
        for generation in 2..=7u64 {
            let at = generation * 1000;
            run.reload(at, generation, 100 + generation as u32);
            let actions = run.at(
                at + 10,
                Event::Ready {
                    generation,
                    readiness: None,
                },
            );
            cut.extend(actions.iter().filter_map(|a| match a {
                Action::Kill { pid } => Some(*pid),
                _ => None,
            }));
            if generation == 6 {
                assert!(actions.contains(&Action::Log(
                    Level::Warn,
                    "killing worker 1 (pid 101) with SIGKILL: more than max_draining (4) \
                     workers were draining (1 cut so far)"
                        .into()
                )));
            }
        }
        assert_eq!(cut, [101, 102]);
        // A worker that finished draining in time is not counted.
        run.at(8000, exited(103, 0));
        run.reload(9000, 8, 108);
        let actions = run.at(
            9010,
            Event::Ready {
                generation: 8,
                readiness: None,
            },
        );
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Kill { .. })),
            "{actions:?}"
        );
    }

    #[test]
    fn a_crash_during_a_reload_is_replaced_by_the_reload_in_flight() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        let actions = run.at(
            1001,
            Event::Exited {
                pid: 101,
                how: "was killed by SIGSEGV".into(),
            },
        );
        assert_eq!(
            actions,
            [
                Action::Log(
                    Level::Error,
                    "worker 1 (pid 101) was killed by SIGSEGV unexpectedly".into()
                ),
                Action::Release { generation: 1 },
            ]
        );
        // No restart of its own: worker 2 takes over when ready, with no
        // one to stop.
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 31_000));
        let actions = run.at(
            1100,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        assert_eq!(
            actions[0],
            Action::Report(Report::Ready {
                name: "worker 2 (pid 102)".into(),
                took: 100 * MS,
                build: None,
                note: String::new(),
            })
        );
        assert!(!actions.iter().any(|a| matches!(a, Action::Stop { .. })));
    }

    #[test]
    fn a_crash_during_a_reload_that_then_fails_schedules_a_restart() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        run.at(1001, exited(101, 1));
        let actions = run.at(1002, exited(102, 1));
        assert_eq!(no_worker_delay(&actions), Some(100 * MS), "{actions:?}");
        assert_eq!(spawns(&run.at(1102, Event::Tick)), 1);
    }

    /// Serving worker 1 (pid 101) with a 5 s `shutdown_delay`.
    fn with_delay() -> Run {
        let config = Config {
            upgrade_master: false,
            shutdown_delay: Duration::from_secs(5),
            ..config()
        };
        let mut run = Run::with_config(&config, None);
        run.spawned(0, 1, 101);
        run.at(
            5,
            Event::Ready {
                generation: 1,
                readiness: None,
            },
        );
        run
    }

    #[test]
    fn with_a_shutdown_delay_the_serving_worker_serves_on_then_drains() {
        let mut run = with_delay();
        let actions = run.at(1000, Event::Signal(Signal::SIGTERM));
        assert_eq!(
            actions,
            [
                Action::Report(Report::LameDuck {
                    signal: Signal::SIGTERM,
                    delay: Duration::from_secs(5),
                    extend: Duration::from_millis(26_500),
                }),
                Action::LameDuck { generation: 1 },
            ]
        );
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 6000));
        // Reloads are refused meanwhile; the status says stopping.
        assert_eq!(
            run.at(2000, Event::Signal(Signal::SIGHUP)),
            [Action::Log(
                Level::Warn,
                "reload requested (signal SIGHUP) while stopping; ignored".into()
            )]
        );
        assert_eq!(run.at(5999, Event::Tick), []);
        let actions = run.at(6000, Event::Tick);
        assert_eq!(
            actions,
            [
                Action::Report(Report::Stopping {
                    signal: Signal::SIGTERM,
                    workers: 1,
                    stop_timeout: Duration::from_secs(20),
                    extend: Duration::from_millis(21_500),
                }),
                Action::Stop { generation: 1 },
            ]
        );
        assert_eq!(
            run.at(6100, exited(101, 0)).last(),
            Some(&Action::Exit(Ok(())))
        );
    }

    #[test]
    fn a_second_stop_signal_skips_the_rest_of_the_shutdown_delay() {
        let mut run = with_delay();
        run.at(1000, Event::Signal(Signal::SIGTERM));
        let actions = run.at(1500, Event::Signal(Signal::SIGINT));
        assert_eq!(
            actions[0],
            Action::Log(
                Level::Info,
                "SIGINT received again: the rest of the 5s shutdown_delay is skipped".into()
            )
        );
        assert!(
            actions.contains(&Action::Stop { generation: 1 }),
            "{actions:?}"
        );
        assert!(
            matches!(
                actions[1],
                Action::Report(Report::Stopping {
                    signal: Signal::SIGTERM,
                    ..
                })
            ),
            "{actions:?}"
        );
        // The delay's end changes nothing now; a third signal kills.
        assert_eq!(run.at(6000, Event::Tick), []);
        assert_eq!(
            run.at(6001, Event::Signal(Signal::SIGTERM)).last(),
            Some(&Action::Kill { pid: 101 })
        );
    }

    #[test]
    fn a_stop_in_the_delay_kills_a_starting_worker_and_a_crash_ends_it() {
        let mut run = with_delay();
        run.reload(500, 2, 102);
        let actions = run.at(1000, Event::Signal(Signal::SIGTERM));
        assert!(actions.contains(&Action::Kill { pid: 102 }), "{actions:?}");
        assert!(actions.contains(&Action::LameDuck { generation: 1 }));
        assert!(!actions.contains(&Action::LameDuck { generation: 2 }));
        run.at(1001, exited(102, 0));
        // The serving worker dies in the delay: nothing to restart or drain.
        let last = run.at(2000, exited(101, 1));
        assert_eq!(last.last(), Some(&Action::Exit(Ok(()))), "{last:?}");
        assert_eq!(run.core.next_deadline(), None);
        assert_eq!(run.at(6000, Event::Tick), []);
    }

    #[test]
    fn without_a_serving_worker_a_stop_drains_at_once_despite_the_delay() {
        let config = Config {
            shutdown_delay: Duration::from_secs(5),
            ..config()
        };
        let mut run = Run::with_config(&config, None);
        run.spawned(0, 1, 101);
        let actions = run.at(10, Event::Signal(Signal::SIGTERM));
        assert!(
            matches!(actions[0], Action::Report(Report::Stopping { .. })),
            "{actions:?}"
        );
        assert!(actions.contains(&Action::Kill { pid: 101 }));
    }

    #[test]
    fn stop_during_a_reload_kills_the_starting_worker_and_drains_the_serving_one() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        let actions = run.at(1500, Event::Signal(Signal::SIGTERM));
        assert_eq!(
            actions,
            [
                Action::Report(Report::Stopping {
                    signal: Signal::SIGTERM,
                    workers: 2,
                    stop_timeout: Duration::from_secs(20),
                    extend: Duration::from_millis(21_500),
                }),
                Action::Kill { pid: 102 },
                Action::Stop { generation: 1 },
            ]
        );
        // A reload asked for now is refused; a late Ready changes nothing.
        assert_eq!(
            run.at(1501, Event::Signal(Signal::SIGHUP)),
            [Action::Log(
                Level::Warn,
                "reload requested (signal SIGHUP) while stopping; ignored".into()
            )]
        );
        assert_eq!(
            run.at(
                1502,
                Event::Ready {
                    generation: 2,
                    readiness: None
                }
            ),
            []
        );
        assert_eq!(
            run.at(1503, exited(102, 0)).last(),
            Some(&Action::Release { generation: 2 })
        );
        let last = run.at(1600, exited(101, 0));
        assert_eq!(
            last,
            [
                Action::Log(
                    Level::Info,
                    "worker 1 (pid 101) exited with status 0".into()
                ),
                Action::Release { generation: 1 },
                Action::Exit(Ok(())),
            ]
        );
    }

    #[test]
    fn a_draining_worker_is_killed_at_stop_timeout_plus_the_grace() {
        let mut run = Run::serving();
        run.at(1000, Event::Signal(Signal::SIGINT));
        let kill_at = 1000 + 20_000 + 500;
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * kill_at));
        assert_eq!(run.at(kill_at as u64 - 1, Event::Tick), []);
        assert_eq!(
            run.at(kill_at as u64, Event::Tick),
            [
                Action::Log(Level::Warn, "killing worker 1 (pid 101) with SIGKILL: it was still running after stop_timeout"
                        .into()
                ),
                Action::Kill { pid: 101 },
            ]
        );
    }

    #[test]
    fn a_second_stop_signal_kills_every_worker_at_once() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        run.at(
            1100,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        run.at(1200, Event::Signal(Signal::SIGTERM));
        let actions = run.at(1300, Event::Signal(Signal::SIGINT));
        assert_eq!(
            actions[0],
            Action::Log(
                Level::Warn,
                "SIGINT received again while stopping; killing every worker now".into()
            )
        );
        let mut killed: Vec<_> = actions[1..].to_vec();
        killed.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(
            killed,
            [Action::Kill { pid: 101 }, Action::Kill { pid: 102 }]
        );
    }

    #[test]
    fn stop_with_no_worker_alive_exits_at_once() {
        let mut run = Run::serving();
        run.at(1000, exited(101, 1));
        let actions = run.at(1050, Event::Signal(Signal::SIGTERM));
        assert_eq!(actions.last(), Some(&Action::Exit(Ok(()))));
        // The restart that was scheduled never happens.
        assert_eq!(run.core.next_deadline(), None);
    }

    #[test]
    fn signals_that_are_not_configured_and_unknown_children_change_nothing() {
        let mut run = Run::serving();
        assert_eq!(
            run.at(10, Event::Signal(Signal::SIGUSR2)),
            [Action::Log(
                Level::Warn,
                "received SIGUSR2, which is neither a reload nor a stop signal here; ignored"
                    .into()
            )]
        );
        // An orphan reaped by a master that is PID 1.
        assert_eq!(run.at(12, exited(999, 0)), []);
        assert_eq!(run.core.next_deadline(), None);
    }

    /// A 5 s watchdog, passed on to systemd.
    fn systemd_watchdog() -> Option<WatchdogConfig> {
        Some(WatchdogConfig {
            every: Duration::from_secs(5),
            systemd: true,
        })
    }

    fn check(generation: u64, check: u64) -> Action {
        Action::Check { generation, check }
    }

    fn alive(generation: u64, check: u64, connections: u64) -> Event {
        Event::Alive {
            generation,
            check,
            connections,
        }
    }

    #[test]
    fn the_watchdog_checks_and_feeds_only_while_a_worker_serves() {
        let mut run = Run::with_watchdog(systemd_watchdog());
        run.spawned(0, 1, 101);
        // Booting: the deadline is the ready timeout, not the watchdog.
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 30_000));
        assert_eq!(run.at(5000, Event::Tick), []);
        run.at(
            5001,
            Event::Ready {
                generation: 1,
                readiness: None,
            },
        );
        assert_eq!(run.at(5002, Event::Tick), [check(1, 1)]);
        // WATCHDOG=1 is the answer passed on, not the timer.
        assert_eq!(run.at(5003, alive(1, 1, 0)), [Action::Watchdog]);
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 10_002));
        // No worker serves after a crash: no check, no keep-alive, until one
        // does.
        run.at(6000, exited(101, 1));
        run.at(6100, Event::Tick);
        run.spawned(6100, 2, 102);
        assert!(run
            .at(10_002, Event::Tick)
            .iter()
            .all(|a| !matches!(a, Action::Check { .. } | Action::Watchdog)));
        run.at(
            10_003,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        assert_eq!(run.at(10_004, Event::Tick), [check(2, 2)]);
        assert_eq!(run.at(10_005, alive(2, 2, 7)), [Action::Watchdog]);
        // An answer from another worker, or to an older check, feeds nothing.
        assert_eq!(run.at(10_006, alive(2, 1, 7)), []);
    }

    #[test]
    fn a_worker_that_does_not_answer_its_check_is_killed_and_replaced() {
        let mut run = serving_with_watchdog();
        assert_eq!(run.at(5000, Event::Tick), [check(1, 1)]);
        // No answer by the next check: killed, and no keep-alive.
        let actions = run.at(10_000, Event::Tick);
        assert_eq!(
            actions,
            [
                Action::Log(
                    Level::Error,
                    "worker 1 (pid 101): it did not answer the watchdog check within 5s; \
                     killing it and its process group, and starting a new worker"
                        .into()
                ),
                Action::Kill { pid: 101 }
            ]
        );
        // Its exit is a crash: logged with the reason, replaced after the
        // first backoff step, with the listeners kept.
        let actions = run.at(
            10_001,
            Event::Exited {
                pid: 101,
                how: "was killed by SIGKILL".into(),
            },
        );
        assert_eq!(
            actions[0],
            Action::Log(
                Level::Error,
                "worker 1 (pid 101) was killed by SIGKILL unexpectedly: it did not answer the \
                 watchdog check within 5s"
                    .into()
            )
        );
        assert_eq!(no_worker_delay(&actions), Some(BACKOFF_FIRST));
        assert!(actions.contains(&Action::Release { generation: 1 }));
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::Watchdog | Action::Check { .. })));
        assert_eq!(spawns(&run.at(10_101, Event::Tick)), 1);
    }

    #[test]
    fn a_worker_that_answers_late_but_before_the_next_check_is_kept() {
        let mut run = Run::with_watchdog(Some(WatchdogConfig {
            every: Duration::from_secs(5),
            systemd: false,
        }));
        run.spawned(0, 1, 101);
        run.at(
            10,
            Event::Ready {
                generation: 1,
                readiness: None,
            },
        );
        run.at(5000, Event::Tick);
        // Outside systemd an answer is recorded, and nothing is sent.
        assert_eq!(run.at(9999, alive(1, 1, 3)), []);
        assert_eq!(run.at(10_000, Event::Tick), [check(1, 2)]);
    }

    fn reloaded(generation: u64, pid: u32, took_ms: u32) -> Outcome {
        Outcome::Reloaded {
            generation,
            pid,
            took: MS * took_ms,
            build: None,
        }
    }

    /// Worker 1 serves; `by` asks for a reload at +1000 ms, and worker 2
    /// (pid 102) is ready at +1050 ms. Returns what its readiness called for.
    fn replaced_for(by: Waiter, why: &str) -> (Run, Vec<Action>) {
        let mut run = Run::serving();
        let actions = run.ask(1000, by);
        assert_eq!(
            actions[0],
            Action::Report(Report::ReloadStarted {
                why: why.into(),
                starting: Some("worker 2".into()),
            })
        );
        run.spawned(1000, 2, 102);
        let actions = run.at(
            1050,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        (run, actions)
    }

    #[test]
    fn a_worker_that_asked_is_answered_before_it_is_stopped() {
        let (_, actions) = replaced_for(Waiter::Worker(1), "graceful::reload() in worker 1");
        let answer = Action::Answer {
            to: Waiter::Worker(1),
            outcome: reloaded(2, 102, 50),
        };
        let answered = actions.iter().position(|a| *a == answer);
        let stopped = actions
            .iter()
            .position(|a| *a == Action::Stop { generation: 1 });
        assert!(answered.is_some() && answered < stopped, "{actions:?}");
    }

    /// Worker 1 serves, and client 7's reload has just made worker 2 (pid
    /// 102) ready at +1050 ms and told worker 1 to stop.
    fn replaced_for_a_client() -> Run {
        let (run, actions) = replaced_for(Waiter::Client(7), "graceful reload command");
        assert!(actions.contains(&Action::Stop { generation: 1 }));
        // Worker 1 may still take a new connection: not yet.
        assert_eq!(answers(&actions), []);
        run
    }

    #[test]
    fn a_reload_command_is_answered_once_the_old_worker_stops_accepting() {
        let mut run = replaced_for_a_client();
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 2050));
        // Another worker's news does not release it.
        assert_eq!(
            answers(&run.at(1051, Event::StoppedAccepting { generation: 2 })),
            []
        );
        let actions = run.at(1052, Event::StoppedAccepting { generation: 1 });
        assert_eq!(
            answers(&actions),
            [(Waiter::Client(7), reloaded(2, 102, 50))]
        );
        // Told once.
        assert_eq!(answers(&run.at(2050, Event::Tick)), []);
        assert_eq!(answers(&run.at(1060, exited(101, 0))), []);
    }

    #[test]
    fn a_reload_command_is_answered_when_the_old_worker_exits_or_its_wait_is_over() {
        let mut run = replaced_for_a_client();
        assert_eq!(
            answers(&run.at(1060, exited(101, 0))),
            [(Waiter::Client(7), reloaded(2, 102, 50))]
        );

        let mut run = replaced_for_a_client();
        let closed = run.at(
            1060,
            Event::ControlClosed {
                generation: 1,
                unreadable: None,
            },
        );
        assert_eq!(
            answers(&closed),
            [(Waiter::Client(7), reloaded(2, 102, 50))]
        );

        // An old worker that never says so (its runtime is wedged) holds the
        // answer for ANSWER_WAIT at most.
        let mut run = replaced_for_a_client();
        assert_eq!(answers(&run.at(2049, Event::Tick)), []);
        assert_eq!(
            answers(&run.at(2050, Event::Tick)),
            [(Waiter::Client(7), reloaded(2, 102, 50))]
        );

        // A stop tells it at once: the reload did happen.
        let mut run = replaced_for_a_client();
        let actions = run.at(1060, Event::Signal(Signal::SIGTERM));
        assert_eq!(
            answers(&actions),
            [(Waiter::Client(7), reloaded(2, 102, 50))]
        );
    }

    /// The answer to each waiter in `actions`.
    fn answers(actions: &[Action]) -> Vec<(Waiter, Outcome)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Answer { to, outcome } => Some((*to, outcome.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_rolled_back_reload_answers_with_the_reason_the_log_gives() {
        let mut run = Run::serving();
        run.ask(1000, Waiter::Client(1));
        run.spawned(1000, 2, 102);
        run.at(
            1010,
            Event::Failed {
                generation: 2,
                reason: "main returned an error: no database".into(),
            },
        );
        let actions = run.at(1020, exited(102, 1));
        let reason = "reload failed: worker 2 (pid 102) exited with status 1 before it was \
                      ready: main returned an error: no database; still serving with worker 1 \
                      (pid 101)";
        assert_eq!(
            answers(&actions),
            [(Waiter::Client(1), Outcome::Failed(reason.into()))]
        );
        assert!(actions.contains(&Action::Report(Report::ReloadFailed {
            reason: "worker 2 (pid 102) exited with status 1 before it was ready: main \
                     returned an error: no database"
                .into(),
            still: "worker 1 (pid 101)".into(),
        })));
    }

    #[test]
    fn a_reload_that_times_out_answers_once_the_worker_is_gone() {
        let mut run = Run::serving();
        run.ask(1000, Waiter::Client(1));
        run.spawned(1000, 2, 102);
        let actions = run.at(31_000, Event::Tick);
        assert!(actions.contains(&Action::Kill { pid: 102 }));
        assert_eq!(answers(&actions), []);
        let actions = run.at(
            31_001,
            Event::Exited {
                pid: 102,
                how: "was killed by SIGKILL".into(),
            },
        );
        let [(Waiter::Client(1), Outcome::Failed(reason))] = &answers(&actions)[..] else {
            panic!("{actions:?}");
        };
        assert!(
            reason.contains("was not ready within the 30s ready_timeout"),
            "{reason}"
        );
    }

    #[test]
    fn coalesced_requests_are_answered_by_the_reload_that_covers_them() {
        let mut run = Run::serving();
        run.ask(1000, Waiter::Client(1));
        run.spawned(1000, 2, 102);
        // Asked during reload 2: covered by reload 3, which starts next.
        for by in [Waiter::Client(2), Waiter::Worker(1), Waiter::Client(3)] {
            run.at(1001, Event::ReloadRequested { by });
        }
        let actions = run.at(
            1100,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        assert_eq!(answers(&actions), []);
        assert_eq!(spawns(&actions), 1);
        assert_eq!(
            answers(&run.at(1100, Event::StoppedAccepting { generation: 1 })),
            [(Waiter::Client(1), reloaded(2, 102, 100))]
        );
        run.spawned(1100, 3, 103);
        // Asked during reload 3: covered by reload 4.
        run.ask(1101, Waiter::Client(4));
        let actions = run.at(1200, exited(103, 2));
        let failed = |by| {
            (
                by,
                Outcome::Failed(
                    "reload failed: worker 3 (pid 103) exited with status 2 before it was \
                     ready; still serving with worker 2 (pid 102)"
                        .into(),
                ),
            )
        };
        assert_eq!(
            answers(&actions),
            [
                failed(Waiter::Client(2)),
                failed(Waiter::Worker(1)),
                failed(Waiter::Client(3))
            ]
        );
        assert_eq!(spawns(&actions), 1, "{actions:?}");
        run.spawned(1200, 4, 104);
        run.at(
            1300,
            Event::Ready {
                generation: 4,
                readiness: None,
            },
        );
        // Worker 1 drains still, but no longer accepts: only worker 2 holds
        // the answer.
        assert_eq!(
            answers(&run.at(1300, Event::StoppedAccepting { generation: 2 })),
            [(Waiter::Client(4), reloaded(4, 104, 100))]
        );
    }

    #[test]
    fn a_stop_answers_every_waiter_and_later_requests_at_once() {
        let mut run = Run::serving();
        run.ask(1000, Waiter::Client(1));
        run.ask(1001, Waiter::Client(2));
        let stopping = Outcome::Failed("the service is stopping (SIGTERM)".into());
        let actions = run.at(1002, Event::Signal(Signal::SIGTERM));
        assert_eq!(
            answers(&actions),
            [
                (Waiter::Client(1), stopping.clone()),
                (Waiter::Client(2), stopping)
            ]
        );
        let actions = run.ask(1003, Waiter::Client(3));
        assert_eq!(
            answers(&actions),
            [(
                Waiter::Client(3),
                Outcome::Failed("the service is stopping".into())
            )]
        );
    }

    #[test]
    fn a_status_query_waits_for_every_worker_past_its_start_or_one_second() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        run.at(
            1100,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        run.reload(2000, 3, 103);
        // Worker 1 drains, 2 serves, 3 starts: 1 and 2 are asked.
        let actions = run.at(2001, Event::StatusRequested { client: 5 });
        assert_eq!(actions, [check(1, 1), check(2, 1)]);
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 3001));
        assert_eq!(run.at(2002, alive(2, 1, 3)), []);
        let actions = run.at(2003, alive(1, 1, 12));
        let [Action::Status { client: 5, status }] = &actions[..] else {
            panic!("{actions:?}");
        };
        let at = |ms: u32| run.t0 + MS * ms;
        assert_eq!(status.state, "reloading");
        assert_eq!(
            status.serving,
            Some(WorkerStatus {
                generation: 2,
                pid: Some(102),
                build: None,
                since: at(1100),
                connections: Some(3),
            })
        );
        assert_eq!(
            status.starting,
            Some(WorkerStatus {
                generation: 3,
                pid: Some(103),
                build: None,
                since: at(2000),
                connections: None,
            })
        );
        assert_eq!(
            status.draining,
            [WorkerStatus {
                generation: 1,
                pid: Some(101),
                build: None,
                since: at(1100),
                connections: Some(12),
            }]
        );
        assert_eq!(
            status.last_reload,
            Some((
                at(1100),
                Outcome::Reloaded {
                    generation: 2,
                    pid: 102,
                    took: MS * 100,
                    build: None,
                }
            ))
        );
        // A worker that does not answer: the status comes at the deadline,
        // without its count.
        run.at(2500, Event::StatusRequested { client: 6 });
        run.at(2501, alive(2, 2, 4));
        assert_eq!(run.at(3499, Event::Tick), []);
        let actions = run.at(3500, Event::Tick);
        let [Action::Status { client: 6, status }] = &actions[..] else {
            panic!("{actions:?}");
        };
        assert_eq!(status.draining[0].connections, None);
        assert_eq!(status.serving.as_ref().unwrap().connections, Some(4));
    }

    #[test]
    fn a_reload_asked_while_no_worker_serves_is_answered_by_the_replacement() {
        let mut run = Run::serving();
        run.at(1000, exited(101, 1));
        // During the backoff: the request starts the replacement at once.
        run.ask(1010, Waiter::Client(1));
        run.spawned(1010, 2, 102);
        // It fails: the waiter is told, and a restart is scheduled.
        let actions = run.at(1020, exited(102, 3));
        assert_eq!(
            answers(&actions),
            [(
                Waiter::Client(1),
                Outcome::Failed(
                    "reload failed: worker 2 (pid 102) exited with status 3 before it was \
                     ready; no worker is serving"
                        .into()
                )
            )]
        );
        assert!(no_worker_delay(&actions).is_some());
        // The next one is asked for and serves: the waiter is told so.
        run.ask(1030, Waiter::Client(2));
        run.spawned(1030, 3, 103);
        let actions = run.at(
            1040,
            Event::Ready {
                generation: 3,
                readiness: None,
            },
        );
        assert_eq!(
            answers(&actions),
            [(
                Waiter::Client(2),
                Outcome::Reloaded {
                    generation: 3,
                    pid: 103,
                    took: MS * 10,
                    build: None,
                }
            )]
        );
    }

    #[test]
    fn a_first_start_or_a_crash_restart_is_not_a_reload() {
        let mut run = Run::serving();
        run.at(6, Event::StatusRequested { client: 1 });
        let actions = run.at(7, alive(1, 1, 0));
        let [Action::Status { status, .. }] = &actions[..] else {
            panic!("{actions:?}");
        };
        assert_eq!(status.last_reload, None);
        assert_eq!(status.state, "serving");
        // A crash and its restart: still no reload.
        run.at(20_000, exited(101, 1));
        run.at(20_100, Event::Tick);
        run.at(
            20_100,
            Event::Spawned {
                generation: 2,
                pid: 102,
            },
        );
        let actions = run.at(
            20_110,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        assert_eq!(answers(&actions), []);
        run.at(20_200, Event::StatusRequested { client: 2 });
        let actions = run.at(20_201, alive(2, 2, 0));
        let [Action::Status { status, .. }] = &actions[..] else {
            panic!("{actions:?}");
        };
        assert_eq!(status.last_reload, None);
    }

    #[test]
    fn a_check_pending_for_a_worker_replaced_meanwhile_kills_nobody() {
        let mut run = serving_with_watchdog();
        assert_eq!(run.at(5000, Event::Tick), [check(1, 1)]);
        // Worker 2 serves before worker 1 answered; worker 1 drains.
        run.reload(5001, 2, 102);
        run.at(
            5002,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        let actions = run.at(10_000, Event::Tick);
        assert_eq!(actions, [check(2, 2)]);
    }

    #[test]
    fn a_changing_executable_is_reloaded_once_it_has_been_quiet() {
        let mut run = Run::serving();
        // A file being written: a change every 100 ms for half a second.
        for at in (1000..=1500).step_by(100) {
            assert_eq!(run.at(at, Event::ExecutableChanged), []);
            assert_eq!(run.at(at + 50, Event::Tick), []);
        }
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 1800));
        assert_eq!(run.at(1799, Event::Tick), []);
        let actions = run.at(1800, Event::Tick);
        assert_eq!(
            actions[0],
            Action::Report(Report::ReloadStarted {
                why: "the executable changed".into(),
                starting: Some("worker 2".into()),
            })
        );
        assert_eq!(spawns(&actions), 1);
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 31_800));
    }

    #[test]
    fn an_executable_still_held_by_its_writer_waits_for_the_close() {
        let mut run = Run::serving();
        // Written, then the writer pauses for a second with the file open:
        // no reload (the file cannot run), however long the pause.
        assert_eq!(run.at(1000, Event::ExecutableChanged), []);
        assert_eq!(run.at(1010, Event::ExecutableWriting), []);
        assert_eq!(run.core.next_deadline(), None);
        assert_eq!(run.at(2000, Event::Tick), []);
        // The writer closes it: one reload, once quiet.
        assert_eq!(run.at(2500, Event::ExecutableChanged), []);
        assert_eq!(run.at(2799, Event::Tick), []);
        let actions = run.at(2800, Event::Tick);
        assert_eq!(spawns(&actions), 1, "{actions:?}");
    }

    #[test]
    fn a_changed_watched_path_reloads_once_quiet_and_names_the_path() {
        let mut run = Run::serving();
        // A Kubernetes swap: several events within a few milliseconds.
        for at in [1000, 1001, 1003] {
            assert_eq!(run.at(at, Event::PathChanged("/etc/tls/".into())), []);
        }
        assert_eq!(run.at(1302, Event::Tick), []);
        let actions = run.at(1303, Event::Tick);
        assert_eq!(
            actions[0],
            Action::Report(Report::ReloadStarted {
                why: "/etc/tls/ changed".into(),
                starting: Some("worker 2".into()),
            })
        );
        assert_eq!(spawns(&actions), 1);
        // The executable, next time, is named as such.
        run.at(
            1304,
            Event::Spawned {
                generation: 2,
                pid: 102,
            },
        );
        run.at(
            1310,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        run.at(2000, Event::ExecutableChanged);
        let actions = run.at(2300, Event::Tick);
        assert!(
            matches!(&actions[0], Action::Report(Report::ReloadStarted { why, .. }) if why == "the executable changed"),
            "{actions:?}"
        );
    }

    #[test]
    fn the_counters_count_reloads_starts_crashes_and_drains() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        run.at(
            1040,
            Event::Ready {
                generation: 2,
                readiness: None,
            },
        );
        run.at(
            1100,
            Event::Drained {
                generation: 1,
                drained: 3,
                cut: 1,
            },
        );
        run.at(1101, exited(101, 0));
        run.reload(2000, 3, 103);
        run.at(2010, exited(103, 1));
        // The serving worker crashes; its replacement starts.
        run.at(60_000, exited(102, 1));
        run.at(60_100, Event::Tick);
        let counters = &run.core.status(0).counters.expect("a master counts");
        let mut expected = Counters {
            reloads_failed: 1,
            worker_starts: 4,
            worker_crashes: 1,
            connections_drained: 3,
            connections_cut: 1,
            ..Counters::default()
        };
        expected.reloaded(Duration::from_millis(40));
        assert_eq!(counters, &expected);
        assert_eq!(
            expected.reload_buckets[2], 1,
            "40 ms is in the 50 ms bucket"
        );
        // They cross an upgrade in place.
        let clock = Clock::writer(run.t0);
        let state = run.core.export(&clock);
        assert_eq!(&state.counters, counters);
    }

    #[test]
    fn an_unconfigured_sigquit_stops_gracefully() {
        let mut run = Run::serving();
        let actions = run.at(10, Event::Signal(Signal::SIGQUIT));
        assert!(matches!(
            actions[0],
            Action::Report(Report::Stopping {
                signal: Signal::SIGQUIT,
                ..
            })
        ));
        assert!(actions.contains(&Action::Stop { generation: 1 }));
    }

    /// Serving since +10 ms, with a 5 s watchdog period passed on to
    /// systemd.
    fn serving_with_watchdog() -> Run {
        let mut run = Run::with_watchdog(systemd_watchdog());
        run.spawned(0, 1, 101);
        run.at(
            10,
            Event::Ready {
                generation: 1,
                readiness: None,
            },
        );
        run
    }

    #[test]
    fn the_first_watchdog_keep_alive_comes_one_period_after_start() {
        let mut run = serving_with_watchdog();
        assert_eq!(run.at(20, Event::Tick), []);
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 5000));
    }

    #[test]
    fn the_watchdog_is_fed_while_the_serving_worker_drains_at_stop() {
        let mut run = serving_with_watchdog();
        run.at(1000, Event::Signal(Signal::SIGTERM));
        let check = check(1, 1);
        assert_eq!(run.at(5000, Event::Tick), [check]);
        assert_eq!(run.at(5001, alive(1, 1, 2)), [Action::Watchdog]);
        // A drain is not killed by the watchdog: stop_timeout bounds it.
        let actions = run.at(10_000, Event::Tick);
        assert!(!actions.contains(&Action::Kill { pid: 101 }), "{actions:?}");
    }

    #[test]
    fn a_reload_during_the_restart_backoff_starts_at_once() {
        let mut run = Run::serving();
        run.at(1000, exited(101, 1));
        let actions = run.at(1010, Event::Signal(Signal::SIGHUP));
        assert_eq!(spawns(&actions), 1);
        // The backoff timer is gone: the only deadline is the new worker's.
        assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 31_010));
    }

    /// A core that upgrades the master, serving worker 1 (pid 101).
    fn upgrading() -> Run {
        let mut run = Run::with_config(&config(), None);
        run.spawned(0, 1, 101);
        let actions = run.at(
            5,
            Event::Ready {
                generation: 1,
                readiness: Some(reads(state::READS)),
            },
        );
        // The first start is no upgrade: the master already runs this build.
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::UpgradeMaster { .. })));
        run
    }

    fn reads(formats: (u32, u32)) -> Readiness {
        Readiness {
            reads: formats,
            version: "9.9.9".into(),
        }
    }

    fn ready_with(generation: u64, readiness: Option<Readiness>) -> Event {
        Event::Ready {
            generation,
            readiness,
        }
    }

    fn kept_line(actions: &[Action]) -> Option<String> {
        actions.iter().find_map(|a| match a {
            Action::Log(Level::Warn, line) if line.starts_with("master kept at") => {
                Some(line.clone())
            }
            _ => None,
        })
    }

    #[test]
    fn a_reload_upgrades_the_master_into_a_build_that_reads_its_state() {
        let mut run = upgrading();
        run.reload(1000, 2, 102);
        let actions = run.at(1010, ready_with(2, Some(reads((1, 3)))));
        // Last, once the old worker is told to stop.
        let stop = actions
            .iter()
            .position(|a| *a == Action::Stop { generation: 1 });
        let upgrade = actions
            .iter()
            .position(|a| *a == Action::UpgradeMaster { generation: 2 });
        assert!(stop.is_some() && upgrade > stop, "{actions:?}");
        assert_eq!(kept_line(&actions), None);
        assert!(run.core.can_upgrade());
    }

    #[test]
    fn the_master_is_kept_and_says_why_when_the_new_build_cannot_read_its_state() {
        let mut run = upgrading();
        // A build older than master upgrades says nothing: a rollback.
        run.reload(1000, 2, 102);
        let actions = run.at(1010, ready_with(2, None));
        assert!(!actions.contains(&Action::UpgradeMaster { generation: 2 }));
        let line = kept_line(&actions).expect("a line that says the master is kept");
        assert!(line.contains("worker 2 (pid 102)"), "{line}");
        assert!(line.contains("older than master upgrades"), "{line}");
        assert!(
            line.ends_with("restart the service to upgrade the master"),
            "{line}"
        );
        // A build that reads only newer formats.
        run.reload(2000, 3, 103);
        let actions = run.at(2010, ready_with(3, Some(reads((2, 4)))));
        assert!(!actions.contains(&Action::UpgradeMaster { generation: 3 }));
        let line = kept_line(&actions).unwrap();
        assert!(
            line.contains(
                "its graceful 9.9.9 reads master state formats 2..=4, this master writes format 1"
            ),
            "{line}"
        );
    }

    #[test]
    fn upgrade_master_off_keeps_the_master_silently() {
        let mut run = Run::serving();
        run.reload(1000, 2, 102);
        let actions = run.at(1010, ready_with(2, Some(reads(state::READS))));
        assert!(!actions.contains(&Action::UpgradeMaster { generation: 2 }));
        assert_eq!(kept_line(&actions), None);
    }

    #[test]
    fn a_worker_restarted_after_a_crash_is_no_upgrade() {
        let mut run = upgrading();
        run.at(1000, exited(101, 1));
        run.at(1100, Event::Tick);
        run.spawned(1100, 2, 102);
        let actions = run.at(1110, ready_with(2, Some(reads(state::READS))));
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::UpgradeMaster { .. })));
    }

    #[test]
    fn a_stopping_master_does_not_upgrade() {
        let mut run = upgrading();
        run.at(1000, Event::Signal(Signal::SIGTERM));
        assert!(!run.core.can_upgrade());
    }

    /// A core in the middle of everything: worker 1 draining, worker 2
    /// serving, worker 3 starting for a reload whose client waits, a queued
    /// reload, a held answer and a status query in flight.
    fn busy() -> Run {
        let mut run = upgrading();
        run.ask(1000, Waiter::Client(7));
        run.spawned(1000, 2, 102);
        run.at(
            1005,
            Event::Build {
                generation: 2,
                build: "app 2.0".into(),
            },
        );
        run.at(1006, Event::TakesBuilds { generation: 2 });
        run.at(1010, ready_with(2, Some(reads(state::READS))));
        run.ask(1020, Waiter::Client(8));
        run.spawned(1020, 3, 103);
        run.ask(1030, Waiter::Worker(2));
        run.at(1040, Event::StatusRequested { client: 9 });
        run
    }

    #[test]
    fn the_core_resumes_exactly_where_it_stopped() {
        let run = busy();
        let now = run.t0 + MS * 1050;
        let clock = Clock::writer(now);
        let carried = run.core.export(&clock);
        let resumed = Core::resume(&config(), None, carried.clone(), &clock, now);
        assert_eq!(resumed.export(&clock), carried);
        assert_eq!(resumed.next_deadline(), run.core.next_deadline());
        // Through the state's own encoding too.
        let json = serde_json::to_vec(&carried).unwrap();
        let decoded: CoreState = serde_json::from_slice(&json).unwrap();
        assert_eq!(decoded, carried);
    }

    #[test]
    fn a_draining_worker_keeps_its_deadline_and_new_options_apply_to_the_next() {
        let mut run = busy();
        let now = run.t0 + MS * 1050;
        let clock = Clock::writer(now);
        let longer = Config {
            stop_timeout: Duration::from_secs(60),
            ..config()
        };
        run.core = Core::resume(&longer, None, run.core.export(&clock), &clock, now);
        // The held answer and the status query end their 1 s waits.
        run.at(3000, Event::Tick);
        // Worker 1 was told to stop at +1010 ms under the old 20 s: it is
        // still cut at 1010 + 20 000 + 500.
        assert_eq!(run.at(21_509, Event::Tick), []);
        let actions = run.at(21_510, Event::Tick);
        assert!(actions.contains(&Action::Kill { pid: 101 }), "{actions:?}");
        // Worker 3 becomes ready: worker 2 is told to stop under the new 60 s.
        run.at(21_600, ready_with(3, Some(reads(state::READS))));
        run.at(23_000, Event::Tick);
        let actions = run.at(81_599, Event::Tick);
        assert!(!actions.contains(&Action::Kill { pid: 102 }), "{actions:?}");
        let actions = run.at(82_100, Event::Tick);
        assert!(actions.contains(&Action::Kill { pid: 102 }), "{actions:?}");
    }

    #[test]
    fn a_watchdog_the_new_version_sets_checks_one_period_after_the_resume() {
        let mut run = Run::serving();
        let now = run.t0 + MS * 1000;
        let clock = Clock::writer(now);
        let carried = run.core.export(&clock);
        run.core = Core::resume(&config(), systemd_watchdog(), carried, &clock, now);
        assert_eq!(run.core.next_deadline(), Some(now + Duration::from_secs(5)));
        assert_eq!(run.at(5999, Event::Tick), []);
        let actions = run.at(6000, Event::Tick);
        assert!(
            matches!(actions[..], [Action::Check { generation: 1, .. }]),
            "{actions:?}"
        );
    }

    #[test]
    fn a_carried_watchdog_check_comes_no_later_than_one_new_period_after_the_resume() {
        let every = |ms| {
            Some(WatchdogConfig {
                every: MS * ms,
                systemd: true,
            })
        };
        // The check carried is due at +5000 ms; the resume is at +1000 ms.
        for (period, due) in [(1000, 2000), (60_000, 5000)] {
            let mut run = serving_with_watchdog();
            assert_eq!(run.core.next_deadline(), Some(run.t0 + MS * 5000));
            let now = run.t0 + MS * 1000;
            let clock = Clock::writer(now);
            let carried = run.core.export(&clock);
            run.core = Core::resume(&config(), every(period), carried, &clock, now);
            assert_eq!(
                run.core.next_deadline(),
                Some(run.t0 + MS * due),
                "a period of {period} ms"
            );
        }
    }

    #[test]
    fn waiters_held_answers_and_queries_are_answered_after_a_resume() {
        let mut run = busy();
        let now = run.t0 + MS * 1050;
        let clock = Clock::writer(now);
        run.core = Core::resume(&config(), None, run.core.export(&clock), &clock, now);
        // The status query in flight is answered once its workers answer.
        run.at(1060, alive(1, 3, 0));
        let actions = run.at(1061, alive(2, 3, 4));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Status { client: 9, .. })),
            "{actions:?}"
        );
        // The held answer to client 7 goes once worker 1 stops accepting.
        let actions = run.at(1070, Event::StoppedAccepting { generation: 1 });
        assert!(
            actions.iter().any(|a| matches!(
                a,
                Action::Answer {
                    to: Waiter::Client(7),
                    outcome: Outcome::Reloaded { generation: 2, .. }
                }
            )),
            "{actions:?}"
        );
        // Worker 3's reload answers client 8; the queued one (worker 2's)
        // runs next.
        let actions = run.at(1100, ready_with(3, Some(reads(state::READS))));
        assert!(
            actions.contains(&Action::Spawn { generation: 4 }),
            "{actions:?}"
        );
        assert!(actions.contains(&Action::UpgradeMaster { generation: 3 }));
    }
}
