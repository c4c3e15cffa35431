//! The worker: runs the user's `main`, asks the master for its listeners,
//! serves until told to stop, then drains.

use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::UnboundedSender;

use crate::control::{self, ToMaster, ToWorker};
use crate::drain;
use crate::log::log;
use crate::serve::{acquire, build_runtime, drain, run_main, start_serving, to_listener};
use crate::server::MainOutput;
use crate::{Error, Server, Signal};

/// Environment variable that carries the worker's end of the control channel.
pub(crate) const ENV_CONTROL_FD: &str = "GRACEFUL_CONTROL_FD";
/// Environment variable that carries the worker's generation number.
pub(crate) const ENV_GENERATION: &str = "GRACEFUL_GENERATION";
/// Set to `successor` for a single-mode process's successor.
pub(crate) const ENV_ROLE: &str = "GRACEFUL_ROLE";

/// What marks this process as a worker.
#[derive(Debug)]
pub(crate) struct WorkerEnv {
    pub(crate) control: OwnedFd,
    pub(crate) generation: u64,
    /// Started by a single-mode process to take over from it, not by a master.
    pub(crate) successor: bool,
}

impl WorkerEnv {
    /// Reads and removes the worker markers. `Ok(None)`: not a worker.
    pub(crate) fn detect() -> Result<Option<WorkerEnv>, Error> {
        let Some(raw_fd) = std::env::var_os(ENV_CONTROL_FD) else {
            return Ok(None);
        };
        let value = raw_fd.to_string_lossy().into_owned();
        let bad = |var: &'static str, value: &str, reason: &str| Error::WorkerEnv {
            var,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let generation = std::env::var(ENV_GENERATION).unwrap_or_default();
        let successor = std::env::var_os(ENV_ROLE).is_some_and(|role| role == "successor");
        // Remove the markers so that processes the app starts are not
        // mistaken for workers. No other thread exists yet: the runtime is
        // built later.
        std::env::remove_var(ENV_CONTROL_FD);
        std::env::remove_var(ENV_GENERATION);
        std::env::remove_var(ENV_ROLE);

        let fd: i32 = value
            .parse()
            .map_err(|_| bad(ENV_CONTROL_FD, &value, "not a file descriptor number"))?;
        if fd < 3 {
            return Err(bad(
                ENV_CONTROL_FD,
                &value,
                "0, 1 and 2 are stdin, stdout and stderr",
            ));
        }
        let generation: u64 = generation
            .parse()
            .map_err(|_| bad(ENV_GENERATION, &generation, "not a generation number"))?;
        // Check that the descriptor is open and is a SOCK_SEQPACKET socket
        // before taking ownership of it.
        // SAFETY: fcntl(F_GETFD) on any integer is harmless; it only reports
        // whether the descriptor is open.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } == -1 {
            return Err(bad(ENV_CONTROL_FD, &value, "the descriptor is not open"));
        }
        // SAFETY: the descriptor is open (checked above); borrowing it for
        // the duration of the check does not close or move it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::SockType) {
            Ok(nix::sys::socket::SockType::SeqPacket) => {}
            _ => {
                return Err(bad(
                    ENV_CONTROL_FD,
                    &value,
                    "the descriptor is not a graceful control socket",
                ))
            }
        }
        // SAFETY: the master passed this descriptor to us alone, it is open
        // and of the right kind, and nothing else in this process refers to it.
        let control = unsafe { OwnedFd::from_raw_fd(fd) };
        control::set_cloexec(control.as_raw_fd())
            .map_err(|e| Error::io("cannot set FD_CLOEXEC on the control socket", e))?;
        Ok(Some(WorkerEnv {
            control,
            generation,
            successor,
        }))
    }
}

/// The control socket of this worker, for [`crate::reload`].
static CONTROL: OnceLock<Arc<OwnedFd>> = OnceLock::new();

pub(crate) fn request_reload() -> Result<(), Error> {
    let control = CONTROL.get().ok_or(Error::NotManaged)?;
    control::send_to_master(control.as_fd(), &ToMaster::Reload)
        .map_err(|e| Error::io("cannot ask the master to reload", e))
}

pub(crate) fn run<F, Fut>(mut server: Server, env: WorkerEnv, main: F) -> Result<(), Error>
where
    F: FnOnce() -> Fut,
    Fut: Future,
    Fut::Output: MainOutput,
{
    let control = Arc::new(env.control);
    let _ = CONTROL.set(control.clone());
    let fail = |reason: String| {
        let _ = control::send_to_master(control.as_fd(), &ToMaster::Failed(reason.clone()));
        Error::WorkerStart { reason }
    };
    let runtime = build_runtime(&server).map_err(fail)?;
    let result = runtime.block_on(async {
        listen_for_signals(&server, None)?;
        let registrations = run_main(&mut server, main).await.map_err(fail)?;
        let served = acquire(registrations, |request| {
            listener_from_master(&control, request).and_then(to_listener)
        })
        .map_err(fail)?;
        let accepting = start_serving(served, server.idle_grace);
        control::send_to_master(control.as_fd(), &ToMaster::Ready)
            .map_err(|e| fail(format!("cannot tell the master this worker is ready: {e}")))?;
        watch_master(control.clone())?;
        let name = format!("worker {} (pid {})", env.generation, std::process::id());
        drain(accepting, &server, &name).await;
        Ok(())
    });
    // Connections still open past the deadline are dropped here; do not wait
    // for handlers that never yield.
    runtime.shutdown_timeout(Duration::ZERO);
    result
}

/// Handles the configured signals in a serving process. Stop signals start
/// the drain, also when sent to a worker directly (as with
/// `KillMode=control-group` or a terminal's Ctrl-C to the process group).
/// With `reload` (single mode) each reload signal is sent on it; without it,
/// reload signals are the master's business, received and ignored.
pub(crate) fn listen_for_signals(
    server: &Server,
    reload: Option<UnboundedSender<String>>,
) -> Result<(), Error> {
    use tokio::signal::unix::{signal, Signal as Stream, SignalKind};
    let handle = |sig: Signal| -> Result<Stream, Error> {
        signal(SignalKind::from_raw(sig.number()))
            .map_err(|e| Error::io(format!("cannot handle {sig}"), e))
    };
    for &sig in &server.reload_signals {
        // Installing the handler replaces the inherited SIG_IGN. Without a
        // receiver the stream is dropped, so the signal is received and ignored.
        let mut stream = handle(sig)?;
        if let Some(reload) = reload.clone() {
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    let _ = reload.send(format!("signal {sig}"));
                }
            });
        }
    }
    for &sig in &server.stop_signals {
        let mut stream = handle(sig)?;
        tokio::spawn(async move {
            if stream.recv().await.is_some() {
                drain::global().start(Some(&format!("received {sig}")));
            }
        });
    }
    Ok(())
}

/// Reads the control channel after the start: `Stop`, or EOF when the master
/// is gone. Either starts the drain. No polling: the read blocks in epoll.
fn watch_master(control: Arc<OwnedFd>) -> Result<(), Error> {
    control::set_nonblocking(control.as_fd(), true)
        .map_err(|e| Error::io("cannot make the control socket non-blocking", e))?;
    // SAFETY: the Arc<OwnedFd> moved in keeps the descriptor open, and
    // pointing at the same socket, for as long as the AsyncFd lives.
    let async_fd = unsafe { AsyncFd::register_with_interest(control, Interest::READABLE) }
        .map_err(|e| Error::io("cannot watch the control socket", e.into_parts().1))?;
    tokio::spawn(async move {
        let why = loop {
            let mut guard = match async_fd.readable().await {
                Ok(guard) => guard,
                Err(e) => break format!("the control socket failed: {e}"),
            };
            match guard.try_io(|fd| control::recv_from_master(fd.get_ref().as_fd())) {
                Err(_would_block) => continue,
                Ok(Ok(Some(ToWorker::Stop))) => break String::new(),
                Ok(Ok(Some(other))) => log!("unexpected control message {other:?}; ignored"),
                Ok(Ok(None)) => break "the master exited".to_string(),
                Ok(Err(e)) => break format!("the control socket failed: {e}"),
            }
        };
        drain::global().start((!why.is_empty()).then_some(why.as_str()));
    });
    Ok(())
}

/// Asks the master for the listener of one request.
fn listener_from_master(control: &OwnedFd, request: &str) -> Result<OwnedFd, String> {
    control::send_to_master(control.as_fd(), &ToMaster::Listen(request.to_string()))
        .map_err(|e| format!("cannot ask the master: {e}"))?;
    match control::recv_from_master(control.as_fd()) {
        Ok(Some(ToWorker::Listener(fd, _local))) => Ok(fd),
        Ok(Some(ToWorker::ListenError(reason))) => Err(reason),
        Ok(Some(ToWorker::Stop)) => Err("the master is stopping".into()),
        Ok(None) => Err("the master exited".into()),
        Err(e) => Err(format!("control channel: {e}")),
    }
}
