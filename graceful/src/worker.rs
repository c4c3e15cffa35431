//! The worker's part in [`serve::run`]: listeners come from the master over
//! the control channel, readiness is a `Ready` message, and a stop is a
//! `Stop` message, a stop signal, or the master's exit (EOF).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::addr::ListenRequest;
use crate::config::Config;
use crate::control::{self, Channel, ToMaster, ToWorker};
#[cfg(target_os = "linux")]
use crate::privilege::Identity;
use crate::registration::{MainOutput, Registration};
use crate::role::Parent;
use crate::serve::{self, Adapter, Listener, StartError};
use crate::status::Outcome;
use crate::{drain, signal, Error};

/// This worker's control channel, for [`request_reload`].
static CONTROL: OnceLock<Arc<Channel>> = OnceLock::new();

/// Who waits for the master's answers to one kind of request, in the order
/// the requests were sent: the master answers each request once, in that
/// order.
struct Answers<T>(Mutex<VecDeque<T>>);

impl<T> Answers<T> {
    const fn new() -> Answers<T> {
        Answers(Mutex::new(VecDeque::new()))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `message` and, once it is sent, queues `waiter` for its
    /// answer: under the lock, so that the queue's order is the messages'.
    fn ask(&self, control: &Channel, message: &ToMaster, waiter: T) -> std::io::Result<()> {
        let mut queue = self.queue();
        control.send(message)?;
        queue.push_back(waiter);
        Ok(())
    }

    /// The waiter of the oldest request, whose answer has come.
    fn answered(&self) -> Option<T> {
        self.queue().pop_front()
    }

    /// Nobody will answer: the waiters are told so by their dropped
    /// senders.
    fn clear(&self) {
        self.queue().clear();
    }
}

/// Reload requests; `None` for one nobody waits on (`graceful::reload()`).
static RELOADS: Answers<Option<oneshot::Sender<Outcome>>> = Answers::new();
/// Metrics requests (`graceful::metrics`).
static METRICS: Answers<oneshot::Sender<String>> = Answers::new();

/// `graceful::reload()` (without `waiter`) or `reload_and_wait()` in a
/// worker: asks the master. `None`: this process is not a worker.
pub(crate) fn request_reload(
    waiter: Option<oneshot::Sender<Outcome>>,
) -> Option<Result<(), Error>> {
    let control = CONTROL.get()?;
    Some(
        RELOADS
            .ask(control, &ToMaster::Reload, waiter)
            .map_err(|e| Error::io("cannot ask the master to reload", e)),
    )
}

/// Set when the master counts drains and answers metrics requests.
static MASTER_METRICS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `graceful::metrics` in a worker: asks the master. `None`: this process is
/// not a worker; `Err`: its master cannot answer.
pub(crate) fn request_metrics() -> Option<Result<oneshot::Receiver<String>, String>> {
    let control = CONTROL.get()?;
    if !MASTER_METRICS.load(std::sync::atomic::Ordering::Relaxed) {
        return Some(Err(
            "this worker's master is a build without metrics; reload it into this one".into(),
        ));
    }
    let (tx, rx) = oneshot::channel();
    Some(
        METRICS
            .ask(control, &ToMaster::Metrics, tx)
            .map(|()| rx)
            .map_err(|e| format!("cannot ask the master: {e}")),
    )
}

/// The master's answer to the oldest metrics request.
fn deliver_metrics(text: String) {
    if let Some(waiter) = METRICS.answered() {
        let _ = waiter.send(text);
    }
}

/// The master's answer to the oldest reload request.
fn deliver(outcome: Outcome) {
    if let Some(Some(waiter)) = RELOADS.answered() {
        let _ = waiter.send(outcome);
    }
}

/// Handles a message the master may send at any time, while the worker
/// waits for its listeners (`main` may have asked for a reload already) and
/// while it serves and drains; gives back any other.
fn in_passing(channel: &Channel, message: ToWorker<OwnedFd>) -> Result<(), ToWorker<OwnedFd>> {
    match message {
        ToWorker::LameDuck => crate::health::set_lame_duck(),
        ToWorker::Metrics(text) => deliver_metrics(text),
        ToWorker::Reloaded(outcome) => deliver(outcome),
        ToWorker::Check(check) => answer_check(channel, check),
        other => return Err(other),
    }
    Ok(())
}

/// Answers a check from the master: from this task, on the runtime, so a
/// runtime that cannot run tasks does not answer.
fn answer_check(channel: &Channel, check: u64) {
    let connections = drain::global().active() as u64;
    let _ = channel.send(&ToMaster::Alive { check, connections });
}

/// Runs a worker started by the master.
pub(crate) fn run<F, Fut>(
    config: &Config,
    registrations: Vec<Registration>,
    parent: Parent,
    main: F,
) -> Result<(), Error>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future,
    Fut::Output: MainOutput,
{
    crate::log::set_generation(parent.generation);
    MASTER_METRICS.store(parent.master_metrics, std::sync::atomic::Ordering::Relaxed);
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let mut worker = Worker {
        generation: parent.generation,
        control: Control::Raw(parent.control),
        master_upgrades: parent.master_upgrades,
        master_builds: parent.master_builds,
        #[cfg(target_os = "linux")]
        identity: None,
    };
    #[cfg(target_os = "linux")]
    match identity(config) {
        Ok(identity) => worker.identity = identity,
        Err(e) => return Err(worker.fail(StartError::Setup(e))),
    }
    serve::run(config, registrations, main, worker)
}

/// The identity this worker will serve as, looked up before any thread
/// exists, with `execve` locked for every thread to come.
#[cfg(target_os = "linux")]
fn identity(config: &Config) -> Result<Option<Identity>, Error> {
    let Some(identity) = Identity::resolve(config)? else {
        return Ok(None);
    };
    crate::privilege::lock_exec()?;
    Ok(Some(identity))
}

struct Worker {
    generation: u64,
    control: Control,
    /// The master asked which of its states this build can take over.
    master_upgrades: bool,
    /// How the master shows each worker's build (`version`): the level in
    /// `GRACEFUL_MASTER_BUILDS`, 0 for a master that does not.
    master_builds: u32,
    /// The `user` and `group` this worker serves as, once it has its
    /// listeners.
    #[cfg(target_os = "linux")]
    identity: Option<Identity>,
}

/// The control socket: as inherited until the runtime takes it.
enum Control {
    Raw(OwnedFd),
    Channel(Arc<Channel>),
    /// Taking it onto the runtime failed.
    Gone,
}

impl Worker {
    fn control(&self) -> Option<BorrowedFd<'_>> {
        match &self.control {
            Control::Raw(raw) => Some(raw.as_fd()),
            Control::Channel(channel) => Some(channel.fd()),
            Control::Gone => None,
        }
    }

    fn channel(&self) -> Result<&Arc<Channel>, String> {
        match &self.control {
            Control::Channel(channel) => Ok(channel),
            _ => Err("the control channel is not set up".to_string()),
        }
    }
}

impl Adapter for Worker {
    fn name(&self) -> String {
        format!("worker {} (pid {})", self.generation, std::process::id())
    }

    fn install(&mut self, config: &Config) -> Result<(), Error> {
        signal::handle_in_serving(
            &config.reload_signals,
            &config.stop_signals,
            config.shutdown_delay,
            None,
        )?;
        if let Control::Raw(raw) = std::mem::replace(&mut self.control, Control::Gone) {
            let channel =
                Channel::new(raw).map_err(|e| Error::io("cannot watch the control socket", e))?;
            let channel = Arc::new(channel);
            let _ = CONTROL.set(channel.clone());
            self.control = Control::Channel(channel);
        }
        Ok(())
    }

    async fn listener(&mut self, request: &ListenRequest) -> Result<Listener, String> {
        let channel = self.channel()?;
        channel
            .send(&ToMaster::Listen(request.clone()))
            .map_err(|e| format!("cannot ask the master: {e}"))?;
        let fd = loop {
            let message = match channel.recv::<ToWorker<OwnedFd>>().await {
                Ok(Some(message)) => message,
                Ok(None) => return Err("the master exited".into()),
                Err(e) => return Err(format!("control channel: {e}")),
            };
            match in_passing(channel, message) {
                Ok(()) => {}
                Err(ToWorker::Listener(fd)) => break fd,
                Err(ToWorker::ListenError(reason)) => return Err(reason),
                Err(ToWorker::Stop) => return Err("the master is stopping".into()),
                Err(other) => return Err(format!("unexpected control message {other:?}")),
            }
        };
        serve::to_listener(fd).map_err(|e| format!("cannot use the listener: {e}"))
    }

    #[cfg(target_os = "linux")]
    fn confine(&mut self) -> Result<(), StartError> {
        if let Some(identity) = &self.identity {
            // The log's writer opens stderr anew: while it still may.
            crate::log::prepare();
            identity.assume()?;
        }
        Ok(())
    }

    async fn ready(&mut self, config: &Config, started: Instant) -> Result<(), StartError> {
        let channel = self.channel().map_err(StartError::Announce)?.clone();
        // Before the ready message, so that the line and the answer that
        // tell this worker ready can name its build.
        if self.master_builds >= 2 {
            channel.send(&ToMaster::TakesBuilds).map_err(|e| {
                StartError::Announce(format!(
                    "cannot tell the master what this worker reads: {e}"
                ))
            })?;
        }
        if let (1.., Some(version)) = (self.master_builds, &config.version) {
            channel
                .send(&ToMaster::Build(version.clone()))
                .map_err(|e| {
                    StartError::Announce(format!("cannot tell the master this worker's build: {e}"))
                })?;
        }
        // What this build can take over, so that the master re-executes
        // into it only if it can read the master's state.
        let readiness = self.master_upgrades.then(|| control::Readiness {
            reads: crate::state::READS,
            version: env!("CARGO_PKG_VERSION").to_string(),
        });
        channel.send(&ToMaster::Ready(readiness)).map_err(|e| {
            StartError::Announce(format!("cannot tell the master this worker is ready: {e}"))
        })?;
        // The master writes the line; a subscriber gets the event.
        let took = started.elapsed();
        let version = config.version.as_deref();
        crate::log::event!(
            tracing_only Info,
            { event = "ready", took_ms = crate::log::millis(took), version = version },
            "{} ready in {} ms and serving{}",
            self.name(),
            took.as_millis(),
            crate::status::spaced(version)
        );
        tokio::spawn(watch_master(channel));
        Ok(())
    }

    /// A master that counts them is told how the drain ended.
    fn drained(&self, drained: u64, cut: u64) {
        if let (true, Ok(channel)) = (
            MASTER_METRICS.load(std::sync::atomic::Ordering::Relaxed),
            self.channel(),
        ) {
            let _ = channel.send(&ToMaster::Drained { drained, cut });
        }
    }

    /// The master answers those who asked for the reload once the old
    /// worker no longer takes new connections.
    fn stopped_accepting(&self) {
        if let Ok(channel) = self.channel() {
            let _ = channel.send(&ToMaster::StoppedAccepting);
        }
    }

    fn fail(&self, error: StartError) -> Error {
        let reason = error.to_string();
        if let Some(control) = self.control() {
            let _ = control::send(control, &ToMaster::Failed(reason.clone()));
        }
        Error::WorkerStart { reason }
    }
}

/// Reads the control channel after the start until the master is gone
/// (EOF): `Stop` starts the drain, and the master's checks and reload
/// outcomes are answered while the worker serves and while it drains. EOF
/// starts the drain too. No polling: the read waits in epoll.
async fn watch_master(channel: Arc<Channel>) {
    let why = loop {
        let message = match channel.recv::<ToWorker<OwnedFd>>().await {
            Ok(Some(message)) => message,
            Ok(None) => break "the master exited".to_string(),
            Err(e) => break format!("the control socket failed: {e}"),
        };
        match in_passing(&channel, message) {
            Ok(()) => {}
            Err(ToWorker::Stop) => drain::global().start(None),
            Err(other) => {
                crate::log::log_at!(Warn, "unexpected control message {other:?}; ignored")
            }
        }
    };
    // Nobody will answer the reloads and metrics asked for.
    RELOADS.clear();
    METRICS.clear();
    // Once: a worker told to stop is draining already, and says nothing.
    drain::global().start(Some(&why));
}
