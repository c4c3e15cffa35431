//! The fallback for systems without Unix processes and signals (Windows),
//! as an adapter over [`serve::run`]: one process serves every listener,
//! with no master and no reload, and Ctrl-C drains it exactly as a stop
//! signal drains a worker. It says so once at start.

use std::future::Future;
use std::time::Instant;

use crate::addr::ListenRequest;
use crate::config::Config;
use crate::log::log;
use crate::registration::{MainOutput, Registration};
use crate::serve::{self, Adapter, Datagram, Listener, StartError};
use crate::status::Report;
use crate::Error;

/// Runs the one process of this platform.
pub(crate) fn run<F, Fut>(
    config: &Config,
    registrations: Vec<Registration>,
    main: F,
) -> Result<(), Error>
where
    F: FnOnce() -> Fut,
    Fut: Future,
    Fut::Output: MainOutput,
{
    log!(
        "this platform has no Unix processes and signals: serving in one process without \
         reloads; Ctrl-C drains and stops"
    );
    serve::run(config, registrations, main, Portable)
}

struct Portable;

impl Adapter for Portable {
    fn name(&self) -> String {
        format!("process (pid {})", std::process::id())
    }

    fn install(&mut self, config: &Config) -> Result<(), Error> {
        let delay = config.shutdown_delay;
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                crate::health::stop_requested("received Ctrl-C", delay);
            }
        });
        Ok(())
    }

    /// Binds the listener itself (Unix-only addresses are refused by the
    /// address parser and by `bind`).
    async fn listener(&mut self, request: &ListenRequest) -> Result<Listener, String> {
        let (socket, local) = request.addr.bind().map_err(|e| e.to_string())?;
        log!(
            "listening on {local} (registered as {:?})",
            request.addr.to_string()
        );
        if request.addr.is_datagram() {
            return Ok(Listener::Datagram(Datagram::Udp(socket.into())));
        }
        let listener = std::net::TcpListener::from(socket);
        let ready = listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener));
        ready
            .map(Listener::Tcp)
            .map_err(|e| format!("cannot use the listener: {e}"))
    }

    async fn ready(&mut self, _config: &Config, _started: Instant) -> Result<(), StartError> {
        log!("{} ready and serving", self.name());
        Ok(())
    }

    fn fail(&self, error: StartError) -> Error {
        let reason = error.to_string();
        if let Some(line) = (Report::StartFailed {
            reason: reason.clone(),
        })
        .log_line()
        {
            log!("{line}");
        }
        Error::StartFailed { reason }
    }
}
