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

    /// Writes the line, unless one was written less than `period` ago.
    /// Returns whether it was written.
    pub(crate) fn line(&self, args: std::fmt::Arguments<'_>) -> bool {
        use std::sync::atomic::Ordering;
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < self.period) {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *last = Some(now);
        match self.left_out.swap(0, Ordering::Relaxed) {
            0 => line(args),
            n => line(format_args!(
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
    fn a_flood_is_one_line_per_period() {
        let throttled = Throttled::new(std::time::Duration::from_secs(3600));
        assert!(throttled.line(format_args!("first")));
        for _ in 0..1000 {
            assert!(!throttled.line(format_args!("again")));
        }
        assert_eq!(
            throttled
                .left_out
                .load(std::sync::atomic::Ordering::Relaxed),
            1000
        );
    }
}
