//! Lifecycle messages on stderr.
//!
//! Each message is formatted first and written with one `write` call, so lines
//! from the master and its workers, which share stderr, never interleave.

use std::io::Write;

pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    let mut text = format!("graceful: {args}");
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

macro_rules! log {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}
pub(crate) use log;
