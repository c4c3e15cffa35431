//! What user code hands the serving process: [`Registration`]s (one listener
//! and its handler each), the `register!` registry they are collected in
//! while `main` runs, and what `main` may return ([`MainOutput`]).

use std::fmt;
use std::sync::Mutex;

use crate::handler::{Handler, IntoHandler};

/// One listener and the handler that serves it.
///
/// Made by `register!` or by hand and added with
/// [`Server::add_registration`](crate::Server::add_registration).
#[derive(Debug)]
pub struct Registration {
    pub(crate) addr: String,
    pub(crate) handler: Handler,
    pub(crate) unix_mode: Option<u32>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::TlsConfig>,
}

impl Registration {
    /// A listener on `addr` (see [`register!`](crate::register) for the
    /// address forms) served by `handler`.
    pub fn new<H, M>(addr: impl Into<String>, handler: H) -> Registration
    where
        H: IntoHandler<M>,
    {
        Registration {
            addr: addr.into(),
            handler: handler.into_handler(),
            unix_mode: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The permission bits of a `unix:` socket file, such as `0o660`, set by
    /// the process that binds the socket (and again on each reload).
    pub fn unix_mode(mut self, mode: u32) -> Registration {
        self.unix_mode = Some(mode);
        self
    }

    /// Serves this listener over TLS (HTTP/1.1 and HTTP/2 by ALPN). A
    /// [`TlsConfig`](crate::TlsConfig) made from PEM files is read again by
    /// every new worker, so a reload picks up rotated certificates; a
    /// `rustls::ServerConfig` is used as given.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: impl Into<crate::TlsConfig>) -> Registration {
        self.tls = Some(tls.into());
        self
    }

    /// The address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// Registrations made with `register!` while `main` runs.
static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    open: true,
    list: Vec::new(),
});

struct Registry {
    open: bool,
    list: Vec<Registration>,
}

/// Records a registration made by `register!`; after [`take`] it is refused
/// with a log line.
pub(crate) fn register(registration: Registration) {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if registry.open {
        registry.list.push(registration);
    } else {
        crate::log::log!(
            "register!({:?}) was called after the worker started serving and is ignored; \
             call register! before main returns",
            registration.addr
        );
    }
}

/// Takes every registration made so far and refuses later ones.
pub(crate) fn take() -> Vec<Registration> {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry.open = false;
    std::mem::take(&mut registry.list)
}

/// What `main` may return under `#[graceful::main]`: `()` or
/// `Result<(), E>` with `E: Debug`.
pub trait MainOutput {
    /// `Err` with a description when `main` failed.
    fn into_result(self) -> Result<(), String>;
}

impl MainOutput for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Debug> MainOutput for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| format!("main returned an error: {e:?}"))
    }
}
