//! The worker's part in [`serve::run`]: listeners come from the master over
//! the control channel, readiness is a `Ready` message, and a stop is a
//! `Stop` message, a stop signal, or the master's exit (EOF).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::addr::ListenRequest;
use crate::config::Config;
use crate::control::{self, Channel, ToMaster, ToWorker};
use crate::log::log;
use crate::registration::{MainOutput, Registration};
use crate::role::Parent;
use crate::serve::{self, Adapter, Listener, StartError};
use crate::{drain, signal, Error};

/// This worker's control channel, for [`request_reload`].
static CONTROL: OnceLock<Arc<Channel>> = OnceLock::new();

/// `graceful::reload()` in a worker: asks the master. `None`: this process
/// is not a worker.
pub(crate) fn request_reload() -> Option<Result<(), Error>> {
    let control = CONTROL.get()?;
    Some(
        control
            .send(&ToMaster::Reload)
            .map_err(|e| Error::io("cannot ask the master to reload", e)),
    )
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
    let worker = Worker {
        generation: parent.generation,
        control: Control::Raw(parent.control),
    };
    serve::run(config, registrations, main, worker)
}

struct Worker {
    generation: u64,
    control: Control,
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
        signal::handle_in_serving(&config.reload_signals, &config.stop_signals, None)?;
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
        let fd = match channel.recv::<ToWorker<OwnedFd>>().await {
            Ok(Some(ToWorker::Listener(fd))) => fd,
            Ok(Some(ToWorker::ListenError(reason))) => return Err(reason),
            Ok(Some(ToWorker::Stop)) => return Err("the master is stopping".into()),
            Ok(None) => return Err("the master exited".into()),
            Err(e) => return Err(format!("control channel: {e}")),
        };
        serve::to_listener(fd).map_err(|e| format!("cannot use the listener: {e}"))
    }

    async fn ready(&mut self, _config: &Config, _started: Instant) -> Result<(), StartError> {
        let channel = self.channel().map_err(StartError::Announce)?.clone();
        channel.send(&ToMaster::Ready).map_err(|e| {
            StartError::Announce(format!("cannot tell the master this worker is ready: {e}"))
        })?;
        tokio::spawn(watch_master(channel));
        Ok(())
    }

    fn fail(&self, error: StartError) -> Error {
        let reason = error.to_string();
        if let Some(control) = self.control() {
            let _ = control::send(control, &ToMaster::Failed(reason.clone()));
        }
        Error::WorkerStart { reason }
    }
}

/// Reads the control channel after the start: `Stop`, or EOF when the master
/// is gone. Either starts the drain. No polling: the read waits in epoll.
async fn watch_master(channel: Arc<Channel>) {
    let why = loop {
        match channel.recv::<ToWorker<OwnedFd>>().await {
            Ok(Some(ToWorker::Stop)) => break None,
            Ok(Some(other)) => log!("unexpected control message {other:?}; ignored"),
            Ok(None) => break Some("the master exited".to_string()),
            Err(e) => break Some(format!("the control socket failed: {e}")),
        }
    };
    drain::global().start(why.as_deref());
}
