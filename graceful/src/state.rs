//! The master's whole state as one typed, versioned value: what an upgrading
//! master writes before it re-executes itself in place, and what the new
//! image (or the new executable in its check role) reads back.
//!
//! The encoding is a header line, `graceful-master-state FORMAT\n`, then the
//! state as JSON. A reader knows the formats it reads ([`READS`]); a worker
//! tells its master those formats in its ready message, so a master never
//! re-executes into a build that cannot read what it writes.
//!
//! Instants cannot cross `execve` as such: each is written relative to the
//! writer's `CLOCK_MONOTONIC` reading ([`Clock`]), and the reader takes off
//! the time the exec itself took, so deadlines stay where they were.
//! Descriptors cross by number: the writer clears `FD_CLOEXEC` on exactly
//! those named here, and the reader checks each before it owns it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::status::{Counters, Outcome};

/// The format this build writes.
pub(crate) const FORMAT: u32 = 1;
/// The formats this build reads, oldest and newest.
pub(crate) const READS: (u32, u32) = (1, 1);
/// The first bytes of an encoded state.
const MAGIC: &str = "graceful-master-state ";

/// Why bytes are not a state this build can take over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StateError {
    #[error("not a graceful master state (it does not start with {MAGIC:?})")]
    NotAState,
    #[error("state format {found} cannot be read by this build, which reads formats {}..={}", .reads.0, .reads.1)]
    UnknownFormat { found: String, reads: (u32, u32) },
    #[error("malformed state: {0}")]
    Malformed(String),
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
}

/// A moment, in microseconds from the writer's clock reading: negative in
/// the past (when a worker started), positive in the future (a deadline).
pub(crate) type Rel = i64;

/// Converts instants to [`Rel`] and back across the exec.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    now: Instant,
    /// How long ago, on the writer's side, the state was written (the exec's
    /// own time): subtracted from every moment when it is read.
    behind: Duration,
}

impl Clock {
    /// The writer's clock, now.
    pub(crate) fn writer(now: Instant) -> Clock {
        Clock {
            now,
            behind: Duration::ZERO,
        }
    }

    /// The reader's clock for a state written at monotonic time `written_us`.
    pub(crate) fn reader(now: Instant, written_us: u64) -> Clock {
        let behind = crate::notify::monotonic_usec().saturating_sub(written_us);
        Clock {
            now,
            behind: Duration::from_micros(behind),
        }
    }

    pub(crate) fn rel(&self, at: Instant) -> Rel {
        let us = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        if at >= self.now {
            us(at - self.now)
        } else {
            -us(self.now - at)
        }
    }

    pub(crate) fn at(&self, rel: Rel) -> Instant {
        let base = self.now.checked_sub(self.behind).unwrap_or(self.now);
        let magnitude = Duration::from_micros(rel.unsigned_abs());
        if rel >= 0 {
            base.checked_add(magnitude).unwrap_or(base)
        } else {
            base.checked_sub(magnitude).unwrap_or(base)
        }
    }
}

/// Everything the master holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MasterState {
    /// `CLOCK_MONOTONIC` when this was written, in microseconds.
    pub(crate) written_us: u64,
    /// The master as the status shows it.
    pub(crate) master: MasterInfo,
    /// The program every generation runs, and the master re-executes.
    pub(crate) executable: ExecutableState,
    /// Signals received and not yet acted on.
    pub(crate) signals: Vec<i32>,
    /// The signals the writer handled: the reader handles them too, so one
    /// sent in the exec window, or later by a script written for the old
    /// options, is logged instead of killing the master.
    pub(crate) caught: Vec<i32>,
    /// The writer's options, to say what changes.
    pub(crate) options: OptionsState,
    pub(crate) notify: Option<NotifyState>,
    pub(crate) listeners: Vec<ListenerState>,
    pub(crate) control: Option<ControlState>,
    /// The inotify descriptor of `watch`.
    pub(crate) watch_fd: Option<i32>,
    pub(crate) children: Vec<ChildState>,
    pub(crate) core: CoreState,
    /// Log lines the writer could not write and has not yet reported
    /// (stderr was not being read): the reader reports them with its next
    /// line that can be written. Absent in a state from before this field.
    #[serde(default)]
    pub(crate) lost_log_lines: u64,
}

/// Who the master is, for `graceful status` and the upgrade's log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MasterInfo {
    /// When the service's master first started, Unix milliseconds.
    pub(crate) started_ms: u64,
    /// When this image started (its first start or its last upgrade).
    pub(crate) image_ms: u64,
    /// Upgrades in place since the first start.
    pub(crate) upgrades: u64,
    /// The build this image runs, as the log says it.
    pub(crate) build: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecutableState {
    pub(crate) path: Vec<u8>,
    pub(crate) argv: Vec<Vec<u8>>,
}

/// The options the writer ran with, for the ones that change meaning or
/// files when they change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OptionsState {
    pub(crate) stop_timeout_ms: u64,
    pub(crate) ready_timeout_ms: u64,
    pub(crate) reload_signals: Vec<String>,
    pub(crate) stop_signals: Vec<String>,
    pub(crate) watchdog_ms: Option<u64>,
    pub(crate) max_draining: usize,
    pub(crate) watch: bool,
    pub(crate) control_socket: Option<Vec<u8>>,
    pub(crate) pid_file: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NotifyState {
    /// `NOTIFY_SOCKET` as systemd set it.
    pub(crate) address: String,
    pub(crate) watchdog_us: Option<u64>,
}

/// One held listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerState {
    pub(crate) key: String,
    pub(crate) fd: i32,
    pub(crate) kind: ListenerKind,
    /// Generations that hold it.
    pub(crate) users: Vec<u64>,
    /// Held for the serving generation.
    pub(crate) kept: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) enum ListenerKind {
    Tcp,
    /// A socket file this service bound, with its device and inode.
    Unix {
        path: Vec<u8>,
        dev: u64,
        ino: u64,
    },
    /// Passed by systemd.
    Activated,
    /// A UDP socket, for a datagram handler.
    Udp,
    /// A Unix datagram socket file this service bound.
    Unixgram {
        path: Vec<u8>,
        dev: u64,
        ino: u64,
    },
}

/// The control socket and its connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControlState {
    pub(crate) path: Vec<u8>,
    pub(crate) fd: i32,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) next_id: u64,
    pub(crate) clients: Vec<ClientState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientState {
    pub(crate) id: u64,
    pub(crate) fd: i32,
    /// The request line so far and its deadline, or the request it made.
    pub(crate) reading: Option<(Vec<u8>, Rel)>,
    pub(crate) asked: Option<String>,
}

/// A worker as the loop knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChildState {
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    /// The master's end of its channel, until it reached EOF.
    pub(crate) control_fd: Option<i32>,
}

/// The decision core's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CoreState {
    pub(crate) phase: PhaseState,
    pub(crate) queued: bool,
    pub(crate) workers: Vec<WorkerState>,
    pub(crate) next_generation: u64,
    pub(crate) checks: u64,
    pub(crate) cut_draining: u64,
    pub(crate) waiting: Vec<WaiterState>,
    pub(crate) waiting_queued: Vec<WaiterState>,
    pub(crate) held: Vec<HeldState>,
    pub(crate) last_reload: Option<(Rel, Outcome)>,
    /// The watchdog's next check, and the check in flight.
    pub(crate) watchdog: Option<(Rel, Option<(u64, u64)>)>,
    pub(crate) queries: Vec<QueryState>,
    pub(crate) changed: Option<Rel>,
    /// What the master has counted, for metrics. Absent in a state from
    /// before this field.
    #[serde(default)]
    pub(crate) counters: Counters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PhaseState {
    Booting {
        starting: u64,
    },
    Serving {
        current: u64,
        starting: Option<u64>,
        streak: u32,
    },
    RecoveringAt {
        at: Rel,
        streak: u32,
    },
    RecoveringWith {
        starting: u64,
        streak: u32,
    },
    Stopping {
        current: Option<u64>,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WorkerPhase {
    Starting { deadline: Rel },
    Serving,
    Draining { kill_at: Rel },
    Killed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerState {
    pub(crate) generation: u64,
    pub(crate) pid: Option<u32>,
    pub(crate) state: WorkerPhase,
    pub(crate) started: Rel,
    pub(crate) ready_at: Option<Rel>,
    pub(crate) connected: bool,
    pub(crate) stopped_at: Option<Rel>,
    pub(crate) answered: Option<(u64, u64)>,
    pub(crate) accepting: bool,
    pub(crate) failure: Option<String>,
    /// The state formats its build reads, and its graceful version.
    pub(crate) reads: Option<(u32, u32)>,
    pub(crate) version: Option<String>,
    /// The application's build, as the worker reported it; absent in the
    /// state of a master older than builds in the status.
    #[serde(default)]
    pub(crate) build: Option<String>,
    /// Whether it reads a reload's outcome that names the new build;
    /// absent (no) in the state of a master older than such outcomes.
    #[serde(default)]
    pub(crate) takes_builds: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WaiterState {
    Worker(u64),
    Client(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeldState {
    pub(crate) to: WaiterState,
    pub(crate) outcome: Outcome,
    pub(crate) until: Rel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryState {
    pub(crate) client: u64,
    pub(crate) check: u64,
    pub(crate) deadline: Rel,
}

impl MasterState {
    /// The header line, then the JSON.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = format!("{MAGIC}{FORMAT}\n").into_bytes();
        // Serialising plain data into memory cannot fail.
        serde_json::to_writer(&mut bytes, self).expect("the master state serialises");
        bytes
    }

    /// The state in `bytes`, checked: a format this build reads, every field
    /// of it, and consistent (see [`MasterState::check`]).
    pub(crate) fn decode(bytes: &[u8]) -> Result<MasterState, StateError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_bytes())
            .ok_or(StateError::NotAState)?;
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let found = String::from_utf8_lossy(&rest[..end.min(16)]).into_owned();
        let format: u32 = found.parse().map_err(|_| StateError::UnknownFormat {
            found: found.clone(),
            reads: READS,
        })?;
        if !(READS.0..=READS.1).contains(&format) || end == rest.len() {
            return Err(StateError::UnknownFormat {
                found,
                reads: READS,
            });
        }
        let state: MasterState = serde_json::from_slice(&rest[end + 1..])
            .map_err(|e| StateError::Malformed(e.to_string()))?;
        state.check()?;
        Ok(state)
    }

    /// Every descriptor the state names, with what it is.
    pub(crate) fn descriptors(&self) -> Vec<(i32, String)> {
        self.listeners
            .iter()
            .map(|l| (l.fd, format!("listener {:?}", l.key)))
            .chain(self.control.iter().flat_map(|c| {
                std::iter::once((c.fd, "the control socket".to_string())).chain(
                    c.clients
                        .iter()
                        .map(|client| (client.fd, format!("control client {}", client.id))),
                )
            }))
            .chain(self.watch_fd.map(|fd| (fd, "the watch".to_string())))
            .chain(self.children.iter().filter_map(|c| {
                c.control_fd
                    .map(|fd| (fd, format!("worker {}'s channel", c.generation)))
            }))
            .collect()
    }

    /// What serde cannot see: descriptors above stderr and each named once,
    /// workers named once with a PID, and a phase and children that name
    /// workers the state has.
    fn check(&self) -> Result<(), StateError> {
        let bad = |why: String| Err(StateError::Inconsistent(why));
        let mut fds = HashSet::new();
        for (fd, what) in self.descriptors() {
            if fd < 3 {
                return bad(format!("{what} has descriptor {fd}, which is stdio"));
            }
            if !fds.insert(fd) {
                return bad(format!("descriptor {fd} ({what}) is named twice"));
            }
        }
        let core = &self.core;
        let mut generations = HashSet::new();
        for w in &core.workers {
            if !generations.insert(w.generation) || w.generation >= core.next_generation {
                return bad(format!(
                    "worker {} is named twice, or at or past the next generation {}",
                    w.generation, core.next_generation
                ));
            }
        }
        for child in &self.children {
            let known = core
                .workers
                .iter()
                .any(|w| w.generation == child.generation && w.pid == Some(child.pid));
            if !known || child.pid == 0 {
                return bad(format!(
                    "child {} (pid {}) is not a worker of the state",
                    child.generation, child.pid
                ));
            }
        }
        let in_phase: Vec<u64> = match core.phase {
            PhaseState::Booting { starting } | PhaseState::RecoveringWith { starting, .. } => {
                vec![starting]
            }
            PhaseState::Serving {
                current, starting, ..
            } => std::iter::once(current).chain(starting).collect(),
            PhaseState::Stopping { .. } | PhaseState::RecoveringAt { .. } | PhaseState::Done => {
                vec![]
            }
        };
        if let Some(missing) = in_phase.iter().find(|g| !generations.contains(g)) {
            return bad(format!(
                "the phase names worker {missing}, which is not in the state"
            ));
        }
        if self.executable.path.is_empty() {
            return bad("the executable path is empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A state with one of everything: two workers (one draining), a
    /// listener of each kind, a control socket with a reading and an asking
    /// client, a held answer and a queued waiter.
    pub(crate) fn sample() -> MasterState {
        let worker = |generation, pid, state| WorkerState {
            generation,
            pid: Some(pid),
            state,
            started: -5_000_000,
            ready_at: Some(-4_000_000),
            connected: true,
            stopped_at: None,
            answered: Some((3, 12)),
            accepting: true,
            failure: None,
            reads: Some(READS),
            version: Some("0.1.0".into()),
            build: Some("app 2.0.1".into()),
            takes_builds: true,
        };
        MasterState {
            written_us: 1_000_000,
            master: MasterInfo {
                started_ms: 1_700_000_000_000,
                image_ms: 1_700_000_100_000,
                upgrades: 2,
                build: "graceful 0.1.0".into(),
            },
            executable: ExecutableState {
                path: b"/srv/app".to_vec(),
                argv: vec![b"app".to_vec(), b"--port=80".to_vec()],
            },
            signals: vec![15],
            caught: vec![1, 10, 15, 2, 3, 12],
            options: OptionsState {
                stop_timeout_ms: 2_000,
                ready_timeout_ms: 30_000,
                reload_signals: vec!["SIGHUP".into()],
                stop_signals: vec!["SIGTERM".into(), "SIGINT".into()],
                watchdog_ms: None,
                max_draining: 4,
                watch: false,
                control_socket: Some(b"/run/app.ctl".to_vec()),
                pid_file: None,
            },
            notify: Some(NotifyState {
                address: "@systemd-notify".into(),
                watchdog_us: Some(4_000_000),
            }),
            listeners: vec![
                ListenerState {
                    key: "127.0.0.1:8080".into(),
                    fd: 5,
                    kind: ListenerKind::Tcp,
                    users: vec![1, 2],
                    kept: true,
                },
                ListenerState {
                    key: "unix:/run/app.sock".into(),
                    fd: 6,
                    kind: ListenerKind::Unix {
                        path: b"/run/app.sock".to_vec(),
                        dev: 2049,
                        ino: 77,
                    },
                    users: vec![2],
                    kept: true,
                },
                ListenerState {
                    key: "systemd:http".into(),
                    fd: 3,
                    kind: ListenerKind::Activated,
                    users: vec![],
                    kept: false,
                },
                ListenerState {
                    key: "udp::5353".into(),
                    fd: 13,
                    kind: ListenerKind::Udp,
                    users: vec![2],
                    kept: true,
                },
                ListenerState {
                    key: "unixgram:/run/app.dgram".into(),
                    fd: 14,
                    kind: ListenerKind::Unixgram {
                        path: b"/run/app.dgram".to_vec(),
                        dev: 2049,
                        ino: 79,
                    },
                    users: vec![2],
                    kept: true,
                },
            ],
            control: Some(ControlState {
                path: b"/run/app.ctl".to_vec(),
                fd: 7,
                dev: 2049,
                ino: 78,
                next_id: 9,
                clients: vec![
                    ClientState {
                        id: 7,
                        fd: 8,
                        reading: Some((b"rel".to_vec(), 4_000_000)),
                        asked: None,
                    },
                    ClientState {
                        id: 8,
                        fd: 9,
                        reading: None,
                        asked: Some("reload".into()),
                    },
                ],
            }),
            watch_fd: Some(10),
            children: vec![
                ChildState {
                    generation: 1,
                    pid: 101,
                    control_fd: Some(11),
                },
                ChildState {
                    generation: 2,
                    pid: 102,
                    control_fd: Some(12),
                },
            ],
            core: CoreState {
                phase: PhaseState::Serving {
                    current: 2,
                    starting: None,
                    streak: 0,
                },
                queued: false,
                workers: vec![
                    WorkerState {
                        state: WorkerPhase::Draining { kill_at: 1_500_000 },
                        stopped_at: Some(-1_000),
                        ..worker(1, 101, WorkerPhase::Serving)
                    },
                    worker(2, 102, WorkerPhase::Serving),
                ],
                next_generation: 3,
                checks: 3,
                cut_draining: 0,
                waiting: vec![],
                waiting_queued: vec![WaiterState::Worker(2)],
                held: vec![HeldState {
                    to: WaiterState::Client(8),
                    outcome: Outcome::Reloaded {
                        generation: 2,
                        pid: 102,
                        took: Duration::from_millis(7),
                        build: Some("app 2.0.1".into()),
                    },
                    until: 900_000,
                }],
                last_reload: Some((
                    -1_000,
                    Outcome::Reloaded {
                        generation: 2,
                        pid: 102,
                        took: Duration::from_millis(7),
                        build: None,
                    },
                )),
                watchdog: Some((2_000_000, Some((2, 3)))),
                queries: vec![QueryState {
                    client: 7,
                    check: 3,
                    deadline: 500_000,
                }],
                changed: None,
                counters: Counters {
                    reloads_failed: 1,
                    worker_starts: 9,
                    worker_crashes: 1,
                    connections_drained: 120,
                    connections_cut: 2,
                    reload_buckets: [0, 1, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0],
                    reload_ms_sum: 190,
                },
            },
            lost_log_lines: 3,
        }
    }

    #[test]
    fn a_state_round_trips() {
        let state = sample();
        let bytes = state.encode();
        assert!(bytes.starts_with(b"graceful-master-state 1\n"));
        assert_eq!(MasterState::decode(&bytes).unwrap(), state);
    }

    #[test]
    fn a_state_without_the_lost_line_count_reads_as_none_lost() {
        let mut state = sample();
        let text = String::from_utf8(state.encode()).unwrap();
        let older = text.replace(",\"lost_log_lines\":3", "");
        assert_ne!(older, text);
        state.lost_log_lines = 0;
        assert_eq!(MasterState::decode(older.as_bytes()).unwrap(), state);
    }

    #[test]
    fn a_state_from_a_master_without_builds_reads_as_none_told() {
        let mut state = sample();
        let text = String::from_utf8(state.encode()).unwrap();
        let older = text
            .replace(",\"build\":\"app 2.0.1\"", "")
            .replace(",\"takes_builds\":true", "");
        assert!(!older.contains("app 2.0.1"), "{older}");
        assert!(!older.contains("takes_builds"), "{older}");
        for worker in &mut state.core.workers {
            worker.build = None;
            worker.takes_builds = false;
        }
        for held in &mut state.core.held {
            if let Outcome::Reloaded { build, .. } = &mut held.outcome {
                *build = None;
            }
        }
        assert_eq!(MasterState::decode(older.as_bytes()).unwrap(), state);
    }

    #[test]
    fn every_truncation_is_an_error_never_a_state() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            let err = MasterState::decode(&bytes[..len]).unwrap_err();
            assert!(
                matches!(
                    err,
                    StateError::NotAState
                        | StateError::UnknownFormat { .. }
                        | StateError::Malformed(_)
                ),
                "{len}: {err}"
            );
        }
    }

    #[test]
    fn unknown_formats_and_foreign_bytes_are_refused_by_name() {
        let json = &sample().encode()[b"graceful-master-state 1\n".len()..];
        let with = |header: &str| [header.as_bytes(), json].concat();
        assert_eq!(
            MasterState::decode(&with("graceful-master-state 2\n"))
                .unwrap_err()
                .to_string(),
            "state format 2 cannot be read by this build, which reads formats 1..=1"
        );
        assert!(matches!(
            MasterState::decode(&with("graceful-master-state 0\n")),
            Err(StateError::UnknownFormat { .. })
        ));
        assert!(matches!(
            MasterState::decode(&with("graceful-master-state x\n")),
            Err(StateError::UnknownFormat { .. })
        ));
        assert_eq!(
            MasterState::decode(b"#!/bin/sh\n"),
            Err(StateError::NotAState)
        );
    }

    #[test]
    fn malformed_fields_are_named() {
        let text = String::from_utf8(sample().encode()).unwrap();
        let renamed = text.replace("\"next_generation\"", "\"next_gen\"");
        let err = MasterState::decode(renamed.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("next_gen"), "{err}");
        let wrong_type = text.replace("\"upgrades\":2", "\"upgrades\":\"two\"");
        let err = MasterState::decode(wrong_type.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("malformed state"), "{err}");
    }

    #[test]
    fn inconsistent_states_are_refused() {
        let refused = |change: &dyn Fn(&mut MasterState), expected: &str| {
            let mut state = sample();
            change(&mut state);
            let err = MasterState::decode(&state.encode())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}");
        };
        refused(
            &|s| s.listeners[1].fd = 5,
            "descriptor 5 (listener \"unix:/run/app.sock\") is named twice",
        );
        refused(&|s| s.watch_fd = Some(2), "the watch has descriptor 2");
        refused(&|s| s.children[0].pid = 999, "child 1 (pid 999)");
        refused(
            &|s| {
                s.core.phase = PhaseState::Serving {
                    current: 2,
                    starting: Some(5),
                    streak: 0,
                }
            },
            "the phase names worker 5",
        );
        refused(&|s| s.core.next_generation = 2, "worker 2 is named twice");
        refused(&|s| s.executable.path.clear(), "executable path is empty");
    }

    #[test]
    fn moments_survive_the_exec_less_the_time_it_took() {
        let t0 = Instant::now();
        let writer = Clock::writer(t0);
        let soon = t0 + Duration::from_millis(1500);
        let earlier = t0 - Duration::from_millis(20);
        assert_eq!(writer.rel(soon), 1_500_000);
        assert_eq!(writer.rel(earlier), -20_000);
        // Read 40 ms later: each moment is 40 ms nearer.
        let t1 = t0 + Duration::from_millis(40);
        let reader = Clock {
            now: t1,
            behind: Duration::from_millis(40),
        };
        assert_eq!(reader.at(1_500_000), soon);
        assert_eq!(reader.at(-20_000), earlier);
        // Out of range moments saturate instead of panicking.
        let _ = reader.at(i64::MIN);
        let _ = reader.at(i64::MAX);
    }
}
