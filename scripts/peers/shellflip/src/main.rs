//! Usage: shellflip-hello ADDR

use std::convert::Infallible;
use std::os::fd::{AsRawFd, FromRawFd};

use shellflip::{RestartConfig, ShutdownCoordinator};

const LISTEN_FD: &str = "HELLO_LISTEN_FD";

async fn hello(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<String>, Infallible> {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    Ok(hyper::Response::new(format!(
        "Hello, port: {host}, \"{}\"",
        req.uri().path()
    )))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .expect("usage: shellflip-hello ADDR");
    let listener = match std::env::var(LISTEN_FD) {
        // SAFETY: the descriptor was our parent's listener, left open for us.
        Ok(fd) => unsafe { std::net::TcpListener::from_raw_fd(fd.parse()?) },
        Err(_) => std::net::TcpListener::bind(&addr)?,
    };
    let fd = listener.as_raw_fd();
    // Inherited by the next process.
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;

    let restart = RestartConfig {
        environment: vec![(LISTEN_FD.into(), fd.to_string().into())],
        ..Default::default()
    };
    let restart_task = restart.try_into_restart_task()?;
    tokio::pin!(restart_task);
    let coordinator = ShutdownCoordinator::new();
    shellflip::startup_complete()?;
    eprintln!(
        "pid {} serving on {}",
        std::process::id(),
        listener.local_addr()?
    );

    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let builder = builder.clone();
                let handle = coordinator.handle();
                tokio::spawn(async move {
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), hyper::service::service_fn(hello))
                        .await;
                    drop(handle);
                });
            }
            result = &mut restart_task => {
                if let Err(e) = result {
                    eprintln!("restart failed: {e}");
                }
                break;
            }
        }
    }
    drop(listener);
    coordinator.shutdown().await;
    Ok(())
}
