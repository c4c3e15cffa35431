//! Lifecycle messages on stderr, written so that a stalled reader never
//! blocks the process.
//!
//! Each message is formatted first and written with one `write` call, so lines
//! from the master and its workers, which share stderr, never interleave.
//! Whatever reads stderr (a terminal, a pipe to a logger, journald's socket)
//! may stop reading: a blocking write would then stall the master's loop, or
//! a worker's threads on every handler panic. So the write never blocks:
//! stderr is written through a descriptor of its own in non-blocking mode (a
//! pipe or terminal is reopened through `/proc/self/fd/2`, which gives a new
//! open file description; a socket is sent to with `MSG_DONTWAIT`), and a
//! line that does not fit is counted, not waited for. The count is reported
//! with the next line that is written.
//!
//! Each line has a level. When stderr is the journal (`JOURNAL_STREAM` names
//! stderr's device and inode, as systemd sets it), lines carry the syslog
//! priority prefix (`<3>` error, `<4>` warning, `<6>` info), so that
//! `journalctl -p err` shows failed reloads and crashes.
//!
//! With the `tracing` feature, a serving process (worker or single mode)
//! whose application has set a global `tracing` subscriber emits its
//! lifecycle events through it instead (target `graceful`, with fields),
//! and writes no line; see [`event!`]. The master runs no user code, has no
//! subscriber, and always writes lines.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(unix)]
use std::sync::OnceLock;

/// Lines that could not be written since the last one that was.
static LOST: AtomicU64 = AtomicU64::new(0);

/// The longest line written whole: a pipe writes up to `PIPE_BUF` bytes at
/// once or not at all, so longer lines are cut, never split.
const LONGEST: usize = 4096;

/// How bad a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Error,
    Warn,
    Info,
}

impl Level {
    /// The syslog priority, for the journal.
    fn priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
        }
    }
}

/// A duration in whole milliseconds, as event fields and control messages
/// carry it (saturating, though no duration here comes near it).
pub(crate) fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    line_at(Level::Info, args);
}

pub(crate) fn line_at(level: Level, args: std::fmt::Arguments<'_>) {
    write_line(level, format!("graceful: {args}"));
}

/// The generation of this serving process, for the fields of its `tracing`
/// events and its own metrics (0: not known, as in the master).
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records this serving process's generation for its events.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) fn set_generation(generation: u64) {
    GENERATION.store(generation, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn generation() -> u64 {
    GENERATION.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether events go to the application's `tracing` subscriber rather than
/// to stderr: only once one has been set globally.
#[cfg(feature = "tracing")]
pub(crate) fn to_tracing() -> bool {
    tracing::dispatcher::has_been_set()
}

/// Makes panics print through the same writer, so that a panic in a handler
/// (which a client can cause at will) cannot block on a stalled stderr as
/// the standard hook would. Installed by serving processes before `main`,
/// which may replace it. The backtrace follows `RUST_BACKTRACE`, as with
/// the standard hook.
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let backtrace = std::backtrace::Backtrace::capture();
        let mut text = format!("thread '{name}' {info}");
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            text.push_str(&format!("\nstack backtrace:\n{backtrace}"));
        }
        write_line(Level::Error, text);
    }));
}

/// The syslog prefix for `level`, when stderr is the journal.
fn prefix(level: Level) -> String {
    if journal() {
        format!("<{}>", level.priority())
    } else {
        String::new()
    }
}

/// Lines not written and not yet reported, for a master's state.
#[cfg(unix)]
pub(crate) fn lost_lines() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// Lines a master's previous image could not write: reported with the next
/// line this one writes.
#[cfg(unix)]
pub(crate) fn add_lost_lines(lines: u64) {
    LOST.fetch_add(lines, Ordering::Relaxed);
}

/// Writes one line, whole or not at all, without blocking.
fn write_line(level: Level, text: String) {
    let text = whole_line(&prefix(level), &text);
    let lost = LOST.load(Ordering::Relaxed);
    if lost > 0 {
        let note = format!(
            "{}graceful: {lost} log line(s) could not be written: stderr was not being read\n",
            prefix(Level::Warn)
        );
        if write(note.as_bytes()) {
            LOST.fetch_sub(lost, Ordering::Relaxed);
        } else {
            LOST.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    if !write(text.as_bytes()) {
        LOST.fetch_add(1, Ordering::Relaxed);
    }
}

/// The line written for `text` after `prefix`: with its newline, at most
/// [`LONGEST`] bytes, so that one `write` to a pipe takes it whole.
fn whole_line(prefix: &str, text: &str) -> String {
    let mut line = format!("{prefix}{text}");
    cut(&mut line, LONGEST - 1);
    line.push('\n');
    line
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
pub(crate) fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` is
/// `DEVICE:INODE` of the stream systemd connected, and it is stderr's only if
/// stderr has not been redirected since.
#[cfg(unix)]
fn journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
            return false;
        };
        let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
            return false;
        };
        dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
    })
}

#[cfg(not(unix))]
fn journal() -> bool {
    false
}

/// Opens what the writer needs while this process may still open it: a
/// worker that gives up its privileges may not reopen a stderr pipe owned by
/// root afterwards.
#[cfg(target_os = "linux")]
pub(crate) fn prepare() {
    journal();
    sink();
}

/// How stderr is written without blocking.
#[cfg(unix)]
enum Sink {
    /// A descriptor of our own on the same pipe or terminal, non-blocking.
    Reopened(std::fs::File),
    /// A socket: each send is `MSG_DONTWAIT`.
    Socket,
    /// Anything else (a file: writes do not wait on a reader).
    Plain,
}

#[cfg(unix)]
fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
            return Sink::Plain;
        };
        let kind = meta.file_type();
        if kind.is_socket() {
            Sink::Socket
        } else if kind.is_fifo() || kind.is_char_device() {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
                .open("/proc/self/fd/2")
                .map_or(Sink::Plain, Sink::Reopened)
        } else {
            Sink::Plain
        }
    })
}

/// Writes `bytes` whole, at once, or not at all; `false` if it would block
/// or failed.
#[cfg(unix)]
fn write(bytes: &[u8]) -> bool {
    match sink() {
        Sink::Reopened(file) => matches!((&*file).write(bytes), Ok(n) if n == bytes.len()),
        Sink::Socket => {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            let flags =
                nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT;
            matches!(nix::sys::socket::send(2, bytes, flags), Ok(n) if n == bytes.len())
        }
        Sink::Plain => std::io::stderr().lock().write_all(bytes).is_ok(),
    }
}

#[cfg(not(unix))]
fn write(bytes: &[u8]) -> bool {
    std::io::stderr().lock().write_all(bytes).is_ok()
}

macro_rules! log {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}
pub(crate) use log;

/// A line at a level: `log_at!(Error, "...")`.
macro_rules! log_at {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::line_at($crate::log::Level::$level, format_args!($($arg)*))
    };
}
pub(crate) use log_at;

/// A lifecycle event of a serving process: a `tracing` event with fields
/// (plus `generation` and `pid`) when the application has a subscriber and
/// the `tracing` feature is on, else the line. With `tracing_only`, an event
/// whose line the master writes: no line here.
///
/// `event!(Info, { connections = n, cut = m }, "drained {n} ...", ...)`
macro_rules! event {
    ($level:ident, { $($field:ident = $value:expr),* $(,)? }, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        if $crate::log::to_tracing() {
            $crate::log::trace!($level, { $($field = $value),* }, $($arg)+);
        } else {
            $crate::log::log_at!($level, $($arg)+);
        }
        #[cfg(not(feature = "tracing"))]
        {
            $(let _ = &$value;)*
            $crate::log::log_at!($level, $($arg)+);
        }
    }};
    (tracing_only $level:ident, { $($field:ident = $value:expr),* $(,)? }, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        if $crate::log::to_tracing() {
            $crate::log::trace!($level, { $($field = $value),* }, $($arg)+);
        }
        #[cfg(not(feature = "tracing"))]
        {
            $(let _ = &$value;)*
        }
    }};
}
pub(crate) use event;

/// [`event!`] at a level known only at run time (each level is its own
/// `tracing` callsite).
macro_rules! event_at {
    ($level:expr, { $($field:ident = $value:expr),* $(,)? }, $($arg:tt)+) => {
        match $level {
            $crate::log::Level::Error => {
                $crate::log::event!(Error, { $($field = $value),* }, $($arg)+)
            }
            $crate::log::Level::Warn => {
                $crate::log::event!(Warn, { $($field = $value),* }, $($arg)+)
            }
            $crate::log::Level::Info => {
                $crate::log::event!(Info, { $($field = $value),* }, $($arg)+)
            }
        }
    };
}
pub(crate) use event_at;

/// The `tracing` event itself, with this process's generation and PID.
#[cfg(feature = "tracing")]
macro_rules! trace {
    ($level:ident, { $($field:ident = $value:expr),* }, $($arg:tt)+) => {
        ::tracing::event!(
            target: "graceful",
            $crate::log::tracing_level!($level),
            generation = $crate::log::generation(),
            pid = ::std::process::id(),
            $($field = $value,)*
            "{}",
            format_args!($($arg)+)
        )
    };
}
#[cfg(feature = "tracing")]
pub(crate) use trace;

#[cfg(feature = "tracing")]
macro_rules! tracing_level {
    (Error) => {
        ::tracing::Level::ERROR
    };
    (Warn) => {
        ::tracing::Level::WARN
    };
    (Info) => {
        ::tracing::Level::INFO
    };
}
#[cfg(feature = "tracing")]
pub(crate) use tracing_level;

/// A line that can come in a flood (one per failed `accept`, one per
/// refused connection): written at most once per `period`, with the number
/// left out since.
#[derive(Debug)]
pub(crate) struct Throttled {
    period: std::time::Duration,
    last: std::sync::Mutex<Option<std::time::Instant>>,
    left_out: std::sync::atomic::AtomicU64,
}

impl Throttled {
    pub(crate) const fn new(period: std::time::Duration) -> Throttled {
        Throttled {
            period,
            last: std::sync::Mutex::new(None),
            left_out: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Writes the line with `write` (an event), unless one was written less
    /// than `period` ago. Returns whether it was written.
    pub(crate) fn line_with(
        &self,
        args: std::fmt::Arguments<'_>,
        write: impl FnOnce(std::fmt::Arguments<'_>),
    ) -> bool {
        use std::sync::atomic::Ordering;
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < self.period) {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *last = Some(now);
        match self.left_out.swap(0, Ordering::Relaxed) {
            0 => write(args),
            n => write(format_args!(
                "{args} ({n} more like it in the last {:?} left out)",
                self.period
            )),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_cut_at_a_character_boundary() {
        let mut text = "é".repeat(3000);
        cut(&mut text, 4095);
        assert_eq!(text.len(), 4094);
        let mut short = "ok".to_string();
        cut(&mut short, 4095);
        assert_eq!(short, "ok");
    }

    #[test]
    fn a_line_with_its_prefix_and_newline_fits_one_pipe_write() {
        let long = whole_line("<3>", &"x".repeat(10_000));
        assert_eq!(long.len(), LONGEST);
        assert!(
            long.starts_with("<3>xx") && long.ends_with("x\n"),
            "{long:?}"
        );
        assert_eq!(whole_line("<6>", "ready"), "<6>ready\n");
        assert_eq!(whole_line("", &"y".repeat(LONGEST - 1)).len(), LONGEST);
        let cut_short = whole_line("", &"é".repeat(LONGEST));
        assert_eq!(cut_short.len(), LONGEST - 1, "a character is not split");
    }

    #[test]
    fn a_flood_is_one_line_per_period() {
        let throttled = Throttled::new(std::time::Duration::from_secs(3600));
        let written = std::cell::Cell::new(0);
        let write = |_: std::fmt::Arguments<'_>| written.set(written.get() + 1);
        assert!(throttled.line_with(format_args!("first"), write));
        for _ in 0..1000 {
            assert!(!throttled.line_with(format_args!("again"), write));
        }
        assert_eq!(written.get(), 1);
        assert_eq!(
            throttled
                .left_out
                .load(std::sync::atomic::Ordering::Relaxed),
            1000
        );
    }
}
