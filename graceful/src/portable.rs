//! The fallback for systems without Unix processes and signals (Windows):
//! one process serves every listener, with no master and no reload, and
//! Ctrl-C drains it exactly as a stop signal drains a worker. It says so once
//! at start.

use std::future::Future;

use crate::addr::ListenAddr;
use crate::log::log;
use crate::serve::{self, Listener};
use crate::server::MainOutput;
use crate::{Error, Server};

pub(crate) fn run<F, Fut>(mut server: Server, main: F) -> Result<(), Error>
where
    F: FnOnce() -> Fut,
    Fut: Future,
    Fut::Output: MainOutput,
{
    log!(
        "this platform has no Unix processes and signals: serving in one process without \
         reloads; Ctrl-C drains and stops"
    );
    let fail = |reason: String| {
        log!("start failed: {reason}");
        Error::StartFailed { reason }
    };
    let runtime = serve::build_runtime(&server).map_err(fail)?;
    let result = runtime.block_on(async {
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                crate::drain::global().start(Some("received Ctrl-C"));
            }
        });
        let registrations = serve::run_main(&mut server, main).await.map_err(fail)?;
        let served = serve::acquire(registrations, bind).map_err(fail)?;
        let accepting = serve::start_serving(served, server.idle_grace);
        let name = format!("process (pid {})", std::process::id());
        log!("{name} ready and serving");
        serve::drain(accepting, &server, &name).await;
        Ok(())
    });
    runtime.shutdown_timeout(std::time::Duration::ZERO);
    result
}

/// Binds the listener for one request (`"ADDR"`; Unix-only options are
/// refused by the address parser and by `bind`).
fn bind(request: &str) -> Result<Listener, String> {
    let addr = ListenAddr::parse(request).map_err(|e| e.to_string())?;
    let (socket, local) = addr.bind()?;
    log!("listening on {local} (registered as {request:?})");
    let listener = std::net::TcpListener::from(socket);
    let ready = listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener));
    ready
        .map(Listener::Tcp)
        .map_err(|e| format!("cannot use the listener: {e}"))
}
