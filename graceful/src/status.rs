//! The lifecycle events an operator is told about: each renders its log
//! line and its systemd notification (`READY=1`, `STATUS=`, ...) from one
//! definition, for master and single mode alike.

// Off Unix there is no master, single mode or systemd: the one process
// reports only its failed start.
#![cfg_attr(not(unix), allow(dead_code))]

use std::time::{Duration, Instant};

use crate::log::Level;
use crate::Signal;

/// How a reload ended, told to whoever asked for it (the `graceful reload`
/// command, or `graceful::reload_and_wait()`). It crosses a master's
/// upgrade in place as part of its state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(unix, derive(serde::Serialize, serde::Deserialize))]
pub(crate) enum Outcome {
    /// Generation `generation`, process `pid`, serves; it was ready in
    /// `took`. `build` is the application's, where the worker said.
    Reloaded {
        generation: u64,
        pid: u32,
        took: Duration,
        #[cfg_attr(unix, serde(default))]
        build: Option<String>,
    },
    /// The reload did not take effect, for this reason (as the log says it).
    Failed(String),
}

impl Outcome {
    /// One line for a person.
    pub(crate) fn line(&self) -> String {
        match self {
            Outcome::Reloaded {
                generation,
                pid,
                took,
                build,
            } => {
                format!(
                    "generation {generation} (pid {pid}) is serving{}; it was ready in {} ms",
                    spaced(build.as_deref()),
                    took.as_millis()
                )
            }
            Outcome::Failed(reason) => reason.clone(),
        }
    }
}

/// `" app 1.4.2"` after "serving", or nothing for a build not told.
pub(crate) fn spaced(build: Option<&str>) -> String {
    build.map(|b| format!(" {b}")).unwrap_or_default()
}

/// One worker in a status answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerStatus {
    pub(crate) generation: u64,
    pub(crate) pid: Option<u32>,
    /// The application's build, as the worker reported it.
    pub(crate) build: Option<String>,
    /// Started, or ready for a serving worker, or told to stop for a
    /// draining one.
    pub(crate) since: Instant,
    /// Open connections, as the worker answered; `None`: no answer.
    pub(crate) connections: Option<u64>,
}

/// The master's part of a status answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    /// `starting`, `serving`, `reloading`, `recovering` or `stopping`.
    pub(crate) state: &'static str,
    pub(crate) serving: Option<WorkerStatus>,
    pub(crate) starting: Option<WorkerStatus>,
    pub(crate) draining: Vec<WorkerStatus>,
    /// When the last reload ended, and how.
    pub(crate) last_reload: Option<(Instant, Outcome)>,
    pub(crate) reloads_queued: bool,
    /// What the master has counted, for metrics; `None` where no master
    /// counts (a single-mode process).
    pub(crate) counters: Option<Counters>,
}

/// The upper bounds of the reload-duration histogram's buckets, in
/// milliseconds (the last bucket, `+Inf`, is implied).
pub(crate) const RELOAD_BUCKETS_MS: [u64; 11] =
    [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000];

/// What a master counts from its first start on, across its upgrades in
/// place, for `graceful metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(unix, derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(unix, serde(deny_unknown_fields))]
pub(crate) struct Counters {
    pub(crate) reloads_failed: u64,
    pub(crate) worker_starts: u64,
    /// Serving workers that exited without being told to stop.
    pub(crate) worker_crashes: u64,
    /// Connections that ended in a worker's drain, and those cut at its
    /// `stop_timeout`, as the workers reported them.
    pub(crate) connections_drained: u64,
    pub(crate) connections_cut: u64,
    /// Successful reloads by how long the new worker took to be ready: a
    /// count per bucket of [`RELOAD_BUCKETS_MS`] plus `+Inf`, not
    /// cumulative.
    pub(crate) reload_buckets: [u64; 12],
    pub(crate) reload_ms_sum: u64,
}

impl Counters {
    /// One reload whose new worker was ready in `took`.
    pub(crate) fn reloaded(&mut self, took: Duration) {
        let ms = crate::log::millis(took);
        let bucket = RELOAD_BUCKETS_MS
            .iter()
            .position(|&bound| ms <= bound)
            .unwrap_or(RELOAD_BUCKETS_MS.len());
        self.reload_buckets[bucket] += 1;
        self.reload_ms_sum += ms;
    }

    /// Successful reloads: every one is in a bucket.
    pub(crate) fn reloads_succeeded(&self) -> u64 {
        self.reload_buckets.iter().sum()
    }
}

/// One event worth a line in the log and, under systemd, a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// A reload begins. `starting` names what it starts, where known
    /// (`"worker 7"`).
    ReloadStarted {
        why: String,
        starting: Option<String>,
    },
    /// The first process of the service serves, of the application's
    /// `build` where it said. `note` follows the log line's standard text.
    Ready {
        name: String,
        took: Duration,
        build: Option<String>,
        note: String,
    },
    /// A reload's new worker serves, of `build` where it said; the old one
    /// drains.
    ReloadFinished {
        name: String,
        took: Duration,
        build: Option<String>,
        old: String,
    },
    /// Single mode: the successor `pid` serves; `old` (this process) drains.
    HandedOver {
        pid: u32,
        build: Option<String>,
        old: String,
    },
    /// A reload was rolled back; `still` serves.
    ReloadFailed { reason: String, still: String },
    /// The first start failed: the service exits.
    StartFailed { reason: String },
    /// No worker serves; a new one starts after `delay`.
    NoWorker { reason: String, delay: Duration },
    /// The master stops on `signal`, draining `workers` for up to
    /// `stop_timeout`, and asks systemd for `extend` more time.
    Stopping {
        signal: Signal,
        workers: usize,
        stop_timeout: Duration,
        extend: Duration,
    },
    /// The master stops on `signal`, and its serving worker serves on for
    /// `delay` (`shutdown_delay`), not ready to health checks, before the
    /// drain; systemd is asked for `extend` more time.
    LameDuck {
        signal: Signal,
        delay: Duration,
        extend: Duration,
    },
    /// Single mode: `name` (this process) drains before it exits, and asks
    /// systemd for `extend` more time. The drain itself logs why.
    Draining { name: String, extend: Duration },
}

impl Report {
    /// How bad it is, for the journal's priority and for `tracing`.
    pub(crate) fn level(&self) -> Level {
        match self {
            Report::ReloadFailed { .. } | Report::StartFailed { .. } | Report::NoWorker { .. } => {
                Level::Error
            }
            _ => Level::Info,
        }
    }

    /// Writes the log line, or with the `tracing` feature in a process whose
    /// application has a subscriber, emits the event with its fields.
    pub(crate) fn write(&self) {
        #[cfg(feature = "tracing")]
        if crate::log::to_tracing() {
            self.trace();
            return;
        }
        if let Some(line) = self.log_line() {
            crate::log::line_at(self.level(), format_args!("{line}"));
        }
    }

    #[cfg(feature = "tracing")]
    fn trace(&self) {
        use crate::log::{event_at, millis};
        let Some(line) = self.log_line() else {
            return;
        };
        let level = self.level();
        match self {
            Report::ReloadStarted { why, .. } => {
                event_at!(level, { event = "reload_started", why = why.as_str() }, "{line}")
            }
            Report::Ready {
                name, took, build, ..
            } => event_at!(
                level,
                { event = "ready", name = name.as_str(), took_ms = millis(*took), version = build.as_deref() },
                "{line}"
            ),
            Report::ReloadFinished {
                name,
                took,
                build,
                old,
            } => event_at!(
                level,
                { event = "reload_finished", name = name.as_str(), took_ms = millis(*took), version = build.as_deref(), old = old.as_str() },
                "{line}"
            ),
            Report::HandedOver { pid, build, old } => event_at!(
                level,
                {
                    event = "reload_finished",
                    successor_pid = *pid,
                    version = build.as_deref(),
                    old = old.as_str()
                },
                "{line}"
            ),
            Report::ReloadFailed { reason, still } => event_at!(
                level,
                { event = "reload_failed", reason = reason.as_str(), still = still.as_str() },
                "{line}"
            ),
            Report::StartFailed { reason } => {
                event_at!(level, { event = "start_failed", reason = reason.as_str() }, "{line}")
            }
            Report::NoWorker { reason, delay } => event_at!(
                level,
                { event = "no_worker", reason = reason.as_str(), delay_ms = millis(*delay) },
                "{line}"
            ),
            Report::Stopping {
                workers,
                stop_timeout,
                ..
            } => event_at!(
                level,
                { event = "stopping", workers = *workers as u64, stop_timeout_ms = millis(*stop_timeout) },
                "{line}"
            ),
            Report::LameDuck { delay, .. } => event_at!(
                level,
                { event = "lame_duck", shutdown_delay_ms = millis(*delay) },
                "{line}"
            ),
            Report::Draining { .. } => {}
        }
    }

    /// The log line, if the event has one.
    pub(crate) fn log_line(&self) -> Option<String> {
        Some(match self {
            Report::ReloadStarted { why, .. } => format!("reload started ({why})"),
            Report::Ready {
                name,
                took,
                build,
                note,
            } => format!(
                "{name} ready in {} ms and serving{}{note}",
                took.as_millis(),
                spaced(build.as_deref())
            ),
            Report::ReloadFinished {
                name,
                took,
                build,
                old,
            } => format!(
                "reload finished: {name} ready in {} ms and serving{}; {old} draining",
                took.as_millis(),
                spaced(build.as_deref())
            ),
            Report::HandedOver { pid, build, old } => format!(
                "reload finished: successor (pid {pid}) is serving{}; {old} draining",
                spaced(build.as_deref())
            ),
            Report::ReloadFailed { reason, still } => {
                format!("reload failed: {reason}; still serving with {still}")
            }
            Report::StartFailed { reason } => format!("start failed: {reason}"),
            Report::NoWorker { reason, delay } => format!(
                "no worker is serving ({reason}); starting a new one in {} ms",
                delay.as_millis()
            ),
            Report::Stopping {
                signal,
                workers,
                stop_timeout,
                ..
            } => format!(
                "stopping ({signal}): draining {workers} worker(s) for up to {stop_timeout:?}"
            ),
            Report::LameDuck { signal, delay, .. } => format!(
                "stopping ({signal}): serving on for the {delay:?} shutdown_delay, not ready to \
                 health checks, then draining; {signal} again drains at once"
            ),
            Report::Draining { .. } => return None,
        })
    }

    /// The systemd notification, if the event has one. `monotonic_usec` is
    /// the time for `RELOADING=1`.
    pub(crate) fn notification(&self, monotonic_usec: u64) -> Option<String> {
        Some(match self {
            Report::ReloadStarted { why, starting } => {
                let starting = starting
                    .as_ref()
                    .map(|s| format!(": starting {s}"))
                    .unwrap_or_default();
                format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS=reloading ({why}){starting}")
            }
            Report::Ready { name, build, .. } => {
                format!("READY=1\nSTATUS=serving{} with {name}", spaced(build.as_deref()))
            }
            Report::ReloadFinished { name, build, .. } => format!(
                "READY=1\nSTATUS=reload finished: serving{} with {name}",
                spaced(build.as_deref())
            ),
            Report::HandedOver { pid, build, .. } => format!(
                "MAINPID={pid}\nREADY=1\nSTATUS=reload finished: serving{} with pid {pid}",
                spaced(build.as_deref())
            ),
            Report::ReloadFailed { .. } => format!("READY=1\nSTATUS={}", self.log_line()?),
            Report::StartFailed { .. } => return None,
            Report::NoWorker { .. } => format!("STATUS={}", self.log_line()?),
            Report::Stopping {
                signal,
                workers,
                extend,
                ..
            } => format!(
                "STOPPING=1\nEXTEND_TIMEOUT_USEC={}\nSTATUS=stopping ({signal}): draining {workers} worker(s)",
                extend.as_micros()
            ),
            Report::LameDuck {
                signal,
                delay,
                extend,
            } => format!(
                "STOPPING=1\nEXTEND_TIMEOUT_USEC={}\nSTATUS=stopping ({signal}): serving on for the {delay:?} shutdown_delay",
                extend.as_micros()
            ),
            Report::Draining { name, extend } => format!(
                "STOPPING=1\nEXTEND_TIMEOUT_USEC={}\nSTATUS=stopping: draining {name}",
                extend.as_micros()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_reload_reads_the_same_in_the_log_and_in_systemd() {
        let report = Report::ReloadFailed {
            reason: "worker 2 (pid 9) exited with status 3 before it was ready".into(),
            still: "worker 1 (pid 8)".into(),
        };
        let line = report.log_line().unwrap();
        assert_eq!(
            line,
            "reload failed: worker 2 (pid 9) exited with status 3 before it was ready; \
             still serving with worker 1 (pid 8)"
        );
        assert_eq!(
            report.notification(0).unwrap(),
            format!("READY=1\nSTATUS={line}")
        );
    }

    #[test]
    fn the_build_that_serves_is_named_in_the_log_systemd_and_the_answer() {
        let said = |report: Report| (report.log_line().unwrap(), report.notification(0).unwrap());
        let ready = |build: Option<&str>| Report::Ready {
            name: "worker 1 (pid 101)".into(),
            took: Duration::from_millis(7),
            build: build.map(Into::into),
            note: String::new(),
        };
        assert_eq!(
            said(ready(Some("app 1.0"))),
            (
                "worker 1 (pid 101) ready in 7 ms and serving app 1.0".into(),
                "READY=1\nSTATUS=serving app 1.0 with worker 1 (pid 101)".into()
            )
        );
        assert_eq!(
            said(ready(None)),
            (
                "worker 1 (pid 101) ready in 7 ms and serving".into(),
                "READY=1\nSTATUS=serving with worker 1 (pid 101)".into()
            )
        );
        let finished = Report::ReloadFinished {
            name: "worker 2 (pid 102)".into(),
            took: Duration::from_millis(9),
            build: Some("app 2.0".into()),
            old: "worker 1 (pid 101)".into(),
        };
        assert_eq!(
            said(finished),
            (
                "reload finished: worker 2 (pid 102) ready in 9 ms and serving app 2.0; worker 1 \
                 (pid 101) draining"
                    .into(),
                "READY=1\nSTATUS=reload finished: serving app 2.0 with worker 2 (pid 102)".into()
            )
        );
        // Single mode: the successor that took over.
        let handed_over = |build: Option<&str>| Report::HandedOver {
            pid: 202,
            build: build.map(Into::into),
            old: "process 1 (pid 201)".into(),
        };
        assert_eq!(
            said(handed_over(Some("app 2.0"))),
            (
                "reload finished: successor (pid 202) is serving app 2.0; process 1 (pid 201) \
                 draining"
                    .into(),
                "MAINPID=202\nREADY=1\nSTATUS=reload finished: serving app 2.0 with pid 202".into()
            )
        );
        assert_eq!(
            said(handed_over(None)),
            (
                "reload finished: successor (pid 202) is serving; process 1 (pid 201) draining"
                    .into(),
                "MAINPID=202\nREADY=1\nSTATUS=reload finished: serving with pid 202".into()
            )
        );
        let outcome = |build: Option<&str>| {
            Outcome::Reloaded {
                generation: 2,
                pid: 102,
                took: Duration::from_millis(9),
                build: build.map(Into::into),
            }
            .line()
        };
        assert_eq!(
            outcome(Some("app 2.0")),
            "generation 2 (pid 102) is serving app 2.0; it was ready in 9 ms"
        );
        assert_eq!(
            outcome(None),
            "generation 2 (pid 102) is serving; it was ready in 9 ms"
        );
    }

    #[test]
    fn failures_are_errors_and_the_rest_is_information() {
        let failed = [
            Report::ReloadFailed {
                reason: "r".into(),
                still: "worker 1".into(),
            },
            Report::StartFailed { reason: "r".into() },
            Report::NoWorker {
                reason: "r".into(),
                delay: Duration::from_millis(100),
            },
        ];
        for report in failed {
            assert_eq!(report.level(), Level::Error, "{report:?}");
        }
        let fine = Report::ReloadStarted {
            why: "signal SIGHUP".into(),
            starting: None,
        };
        assert_eq!(fine.level(), Level::Info);
    }

    #[test]
    fn reload_started_carries_the_monotonic_time() {
        let report = Report::ReloadStarted {
            why: "signal SIGHUP".into(),
            starting: Some("worker 2".into()),
        };
        assert_eq!(report.log_line().unwrap(), "reload started (signal SIGHUP)");
        assert_eq!(
            report.notification(1234).unwrap(),
            "RELOADING=1\nMONOTONIC_USEC=1234\nSTATUS=reloading (signal SIGHUP): starting worker 2"
        );
        let single = Report::ReloadStarted {
            why: "graceful::reload()".into(),
            starting: None,
        };
        assert_eq!(
            single.notification(5).unwrap(),
            "RELOADING=1\nMONOTONIC_USEC=5\nSTATUS=reloading (graceful::reload())"
        );
    }

    #[test]
    fn stopping_asks_systemd_for_the_whole_drain() {
        let report = Report::Stopping {
            signal: Signal::SIGTERM,
            workers: 2,
            stop_timeout: Duration::from_secs(20),
            extend: Duration::from_millis(21_500),
        };
        assert_eq!(
            report.log_line().unwrap(),
            "stopping (SIGTERM): draining 2 worker(s) for up to 20s"
        );
        assert_eq!(
            report.notification(0).unwrap(),
            "STOPPING=1\nEXTEND_TIMEOUT_USEC=21500000\nSTATUS=stopping (SIGTERM): draining 2 worker(s)"
        );
        let single = Report::Draining {
            name: "process 1 (pid 7)".into(),
            extend: Duration::from_secs(21),
        };
        assert_eq!(single.log_line(), None);
        assert!(single
            .notification(0)
            .unwrap()
            .ends_with("STATUS=stopping: draining process 1 (pid 7)"));
    }
}
