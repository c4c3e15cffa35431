//! systemd `Type=notify` messages, sent by the process systemd watches: the
//! master (the main PID, so the default `NotifyAccess=main` is enough), or
//! in single mode the serving process, which passes the socket on to its
//! successor (`NotifyAccess=all`). What each lifecycle event says is in
//! `status.rs`.
//!
//! `READY=1` once the first worker is ready; `RELOADING=1` with
//! `MONOTONIC_USEC=` when a reload starts and `READY=1` when it ends, whether
//! it succeeded or was rolled back; `STATUS=` lines naming the generation, the
//! worker PID and the last reload's result; `STOPPING=1` and
//! `EXTEND_TIMEOUT_USEC=` on stop; `WATCHDOG=1` when `WATCHDOG_USEC` asks for it: in
//! master mode each time the serving worker answers the master's check, in
//! single mode at half the timeout while the process serves.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::log::log;
use crate::status::Report;

#[derive(Debug)]
pub(crate) struct Notifier {
    /// `NOTIFY_SOCKET` as it was set, carried across a master's upgrade.
    pub(crate) text: String,
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
    /// systemd's watchdog timeout, `WATCHDOG_USEC`: `WATCHDOG=1` must come
    /// more often than this.
    pub(crate) watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads and removes `NOTIFY_SOCKET` (and the watchdog variables), so
    /// that the processes this one starts never send unless it passes them
    /// on (single mode does, to its successor).
    pub(crate) fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = watchdog_from_env();
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
        Notifier::from_parts(path.to_string_lossy().into_owned(), watchdog)
    }

    /// A notifier for the address `text` (as `NOTIFY_SOCKET` sets it).
    pub(crate) fn from_parts(text: String, watchdog: Option<Duration>) -> Option<Notifier> {
        let addr = match address(&text) {
            Ok(addr) => addr,
            Err(e) => {
                log!("NOTIFY_SOCKET={text:?} is not usable ({e}); systemd will not be notified");
                return None;
            }
        };
        let socket = match UnixDatagram::unbound() {
            Ok(socket) => socket,
            Err(e) => {
                log!("cannot create the systemd notification socket: {e}");
                return None;
            }
        };
        Some(Notifier {
            text,
            socket,
            addr,
            watchdog,
        })
    }

    pub(crate) fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            log!(
                "cannot notify systemd ({}): {e}",
                message.lines().next().unwrap_or("")
            );
        }
    }
}

fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn address(text: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    if let Some(name) = text.strip_prefix('@') {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            return std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes());
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = name;
            return Err(std::io::Error::other(
                "abstract sockets exist on Linux only",
            ));
        }
    }
    std::os::unix::net::SocketAddr::from_pathname(text)
}

/// Tells of a lifecycle event: its log line, and its notification to systemd
/// when there is a notifier.
pub(crate) fn publish(report: &Report, notifier: Option<&Notifier>) {
    report.write();
    if let Some(notifier) = notifier {
        if let Some(message) = report.notification(monotonic_usec()) {
            notifier.send(&message);
        }
    }
}

/// `MONOTONIC_USEC=` for `RELOADING=1`: CLOCK_MONOTONIC in microseconds.
pub(crate) fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000,
        Err(_) => 0,
    }
}
