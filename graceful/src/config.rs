//! The options of a service as one plain value, [`Config`]: what every role
//! reads, and all that the master is ever given.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Signal};

/// How a service runs: a master and workers (the default), or one process.
///
/// | | `Master` (default) | `Single` |
/// | --- | --- | --- |
/// | processes | a master (no user code) and one worker; during a reload, also the new worker, and old workers until they have drained | one; during a reload, also the successor, and old processes until they have drained |
/// | PID across reloads | the same | changes: announced to systemd with `MAINPID=` and written to `pid_file` |
/// | process managers | any (systemd, supervisor, a container's PID 1) | systemd (`Type=notify`, `NotifyAccess=all`) or none; not supervisor or a container's PID 1, which lose track of it |
///
/// `GRACEFUL_MODE=single` or `GRACEFUL_MODE=master` in the environment
/// overrides the mode set in code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// A master keeps the PID and the sockets; workers serve.
    #[default]
    Master,
    /// One process binds and serves; a reload starts a successor that
    /// inherits the sockets, and the old process drains once it is ready.
    Single,
}

/// The environment variable that overrides `control_socket` set in code (an
/// empty value turns it off). The `graceful` command reads it too.
pub(crate) const ENV_CONTROL_SOCKET: &str = "GRACEFUL_CONTROL_SOCKET";
/// The shortest `watchdog` period: a check must have time to be answered.
pub(crate) const MIN_WATCHDOG: Duration = Duration::from_millis(100);
/// The longest any duration option may be. Longer is taken for a mistake
/// (`"300y"` for `"300s"`), and keeps every deadline computed from an option
/// representable: `Instant + Duration` panics past its range, which
/// `Duration::MAX` or `"500000000000y"` would reach at a stop.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The environment variable that overrides `watch` set in code.
pub(crate) const ENV_WATCH: &str = "GRACEFUL_WATCH";

/// The environment variable that overrides `upgrade_master` set in code.
pub(crate) const ENV_UPGRADE_MASTER: &str = "GRACEFUL_UPGRADE_MASTER";

/// The environment variables that override `user` and `group` set in code
/// (an empty value turns the option off).
pub(crate) const ENV_USER: &str = "GRACEFUL_USER";
pub(crate) const ENV_GROUP: &str = "GRACEFUL_GROUP";

/// The environment variable that overrides `watch_paths` set in code:
/// paths separated by `:` (an empty value watches none).
pub(crate) const ENV_WATCH_PATHS: &str = "GRACEFUL_WATCH_PATHS";

/// The environment variable that overrides `shutdown_delay` set in code.
pub(crate) const ENV_SHUTDOWN_DELAY: &str = "GRACEFUL_SHUTDOWN_DELAY";

/// The environment variable that overrides the mode set in code.
pub(crate) const ENV_MODE: &str = "GRACEFUL_MODE";

impl Mode {
    /// The mode `GRACEFUL_MODE` names, if it is set; any value but `master`
    /// or `single` is an error.
    pub(crate) fn from_env() -> Result<Option<Mode>, Error> {
        Mode::from_value(std::env::var_os(ENV_MODE).as_deref())
    }

    /// The mode a value of `GRACEFUL_MODE` names.
    fn from_value(value: Option<&std::ffi::OsStr>) -> Result<Option<Mode>, Error> {
        let Some(value) = value else {
            return Ok(None);
        };
        match value.to_str() {
            Some("master") => Ok(Some(Mode::Master)),
            Some("single") => Ok(Some(Mode::Single)),
            _ => Err(Error::InvalidMode {
                value: value.to_string_lossy().into_owned(),
            }),
        }
    }
}

/// The validated options. Made by [`Config::validate`] from what the builder
/// (or the macro) collected; read, never changed, by every role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) stop_timeout: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) idle_grace: Duration,
    pub(crate) reload_signals: Vec<Signal>,
    pub(crate) stop_signals: Vec<Signal>,
    /// Threads of each serving runtime; `None`: one per core.
    pub(crate) worker_threads: Option<NonZeroUsize>,
    pub(crate) mode: Mode,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) limits: Limits,
    /// Old workers that may drain at once; beyond it the oldest is cut.
    pub(crate) max_draining: usize,
    /// Reload when the executable file is replaced.
    pub(crate) watch: bool,
    /// Where the master answers the `graceful` command (reload, status).
    pub(crate) control_socket: Option<PathBuf>,
    /// How often the master checks that the serving worker's runtime
    /// answers, when systemd does not set the period (`WATCHDOG_USEC`).
    pub(crate) watchdog: Option<Duration>,
    /// The master re-executes itself into the new build after a reload.
    pub(crate) upgrade_master: bool,
    /// On a stop signal, how long the serving process keeps accepting and
    /// serving, not ready to health checks, before it drains.
    pub(crate) shutdown_delay: Duration,
    /// Reload when one of these files or directories changes.
    pub(crate) watch_paths: Vec<PathBuf>,
    /// The user workers serve as, by name or uid (`privilege.rs`).
    pub(crate) user: Option<String>,
    /// Their group, by name or gid; `None`: the user's own.
    pub(crate) group: Option<String>,
    /// The application's build, as its workers report it to the master
    /// (`graceful status`, the reload's answer).
    pub(crate) version: Option<String>,
}

/// What one connection may cost: the limits a hostile client meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// How long a new connection may take to start its first request
    /// (protocol sniff, HTTP/2 preface, TLS after the handshake included).
    pub(crate) header_timeout: Duration,
    /// How long a connection may go without a new request before it is
    /// closed politely.
    pub(crate) idle_timeout: Duration,
    /// Connections one serving process holds open at most; more wait in the
    /// listening socket's backlog.
    pub(crate) max_connections: usize,
    /// The largest request head, in bytes.
    pub(crate) max_header_size: usize,
}

/// hyper's smallest read buffer: a request head limit below it cannot work.
pub(crate) const MIN_HEADER_SIZE: usize = 8192;

/// The options as the builder collects them, before they are checked.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) stop_timeout: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) idle_grace: Duration,
    pub(crate) reload_signals: Vec<Signal>,
    pub(crate) stop_signals: Vec<Signal>,
    pub(crate) worker_threads: Option<usize>,
    pub(crate) mode: Mode,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_header_size: usize,
    pub(crate) max_draining: usize,
    pub(crate) watch: bool,
    pub(crate) control_socket: Option<PathBuf>,
    pub(crate) watchdog: Option<Duration>,
    pub(crate) upgrade_master: bool,
    pub(crate) user: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) shutdown_delay: Duration,
    pub(crate) watch_paths: Vec<PathBuf>,
    pub(crate) version: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            stop_timeout: Duration::from_secs(20),
            ready_timeout: Duration::from_secs(30),
            idle_grace: Duration::from_millis(500),
            reload_signals: vec![Signal::SIGHUP, Signal::SIGUSR1],
            stop_signals: vec![Signal::SIGTERM, Signal::SIGINT],
            worker_threads: None,
            mode: Mode::Master,
            pid_file: None,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_size: 64 * 1024,
            max_draining: 4,
            watch: false,
            control_socket: None,
            watchdog: None,
            upgrade_master: true,
            user: None,
            group: None,
            shutdown_delay: Duration::ZERO,
            watch_paths: Vec::new(),
            version: None,
        }
    }
}

impl Options {
    /// Checks the options; the first mistake is the error.
    pub(crate) fn validate(self) -> Result<Config, Error> {
        let worker_threads = match self.worker_threads {
            None => None,
            Some(n) => Some(NonZeroUsize::new(n).ok_or_else(|| Error::InvalidOption {
                option: "worker_threads",
                reason: "a runtime needs at least 1 thread".into(),
            })?),
        };
        let invalid = |option, reason: &str| Error::InvalidOption {
            option,
            reason: reason.into(),
        };
        if self.header_timeout.is_zero() {
            return Err(invalid(
                "header_timeout",
                "a connection needs some time to send a request",
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(invalid(
                "idle_timeout",
                "a keep-alive connection needs some time between requests",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid(
                "max_connections",
                "at least 1 connection must be served",
            ));
        }
        if self.max_draining == 0 {
            return Err(invalid(
                "max_draining",
                "at least 1 old worker must be allowed to drain, or every reload would cut requests",
            ));
        }
        if self.max_header_size < MIN_HEADER_SIZE {
            return Err(invalid(
                "max_header_size",
                &format!(
                    "{} bytes is below the smallest request head buffer, {MIN_HEADER_SIZE} bytes",
                    self.max_header_size
                ),
            ));
        }
        if self.watchdog.is_some_and(|every| every < MIN_WATCHDOG) {
            return Err(invalid(
                "watchdog",
                &format!("a worker needs at least {MIN_WATCHDOG:?} to answer a check"),
            ));
        }
        for (option, value) in [
            ("stop_timeout", self.stop_timeout),
            ("ready_timeout", self.ready_timeout),
            ("idle_grace", self.idle_grace),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("watchdog", self.watchdog.unwrap_or_default()),
            ("shutdown_delay", self.shutdown_delay),
        ] {
            if value > MAX_DURATION {
                return Err(invalid(option, &format!("{value:?} {TOO_LONG}")));
            }
        }
        if self.stop_signals.is_empty() {
            return Err(Error::NoStopSignal);
        }
        if let Some(signal) = self
            .reload_signals
            .iter()
            .find(|s| self.stop_signals.contains(s))
        {
            return Err(Error::SignalConflict { signal: *signal });
        }
        let user = name("user", ENV_USER, std::env::var_os(ENV_USER), self.user)?;
        let group = name("group", ENV_GROUP, std::env::var_os(ENV_GROUP), self.group)?;
        identity_options(user.as_deref(), group.as_deref())?;
        if let Some(version) = &self.version {
            version_value(version).map_err(|why| invalid("version", &why))?;
        }
        let shutdown_delay = duration_value(
            "shutdown_delay",
            ENV_SHUTDOWN_DELAY,
            std::env::var_os(ENV_SHUTDOWN_DELAY).as_deref(),
            self.shutdown_delay,
        )?;
        Ok(Config {
            stop_timeout: self.stop_timeout,
            ready_timeout: self.ready_timeout,
            idle_grace: self.idle_grace,
            reload_signals: self.reload_signals,
            stop_signals: self.stop_signals,
            worker_threads,
            mode: self.mode,
            pid_file: self.pid_file,
            limits: Limits {
                header_timeout: self.header_timeout,
                idle_timeout: self.idle_timeout,
                max_connections: self.max_connections,
                max_header_size: self.max_header_size,
            },
            max_draining: self.max_draining,
            control_socket: control_socket_value(
                std::env::var_os(ENV_CONTROL_SOCKET),
                self.control_socket,
            ),
            watchdog: self.watchdog,
            watch: switch("watch", ENV_WATCH, self.watch)?,
            upgrade_master: switch("upgrade_master", ENV_UPGRADE_MASTER, self.upgrade_master)?,
            user,
            group,
            shutdown_delay,
            watch_paths: watch_paths_value(std::env::var_os(ENV_WATCH_PATHS), self.watch_paths),
            version: self.version,
        })
    }
}

/// The longest `version`, in bytes: it shares a line of the status with the
/// worker's generation, PID and times.
pub(crate) const MAX_VERSION: usize = 100;

/// `#[graceful::main]`'s default `version`, the package's name and version
/// where the build tool set both: cut to fit, at a character, since a
/// default must not stop the start.
pub(crate) fn package_version(name: Option<&str>, version: Option<&str>) -> Option<String> {
    let mut text = format!("{} {}", name?, version?);
    crate::log::cut(&mut text, MAX_VERSION);
    Some(text)
}

/// Why `version` cannot be shown on one line of the status, if it cannot.
fn version_value(version: &str) -> Result<(), String> {
    if version.trim().is_empty() {
        return Err(
            "an empty version; name the build (\"1.4.2\"), or leave the option unset".into(),
        );
    }
    if version.len() > MAX_VERSION {
        return Err(format!(
            "it is {} bytes long; a version is at most {MAX_VERSION} bytes",
            version.len()
        ));
    }
    if let Some((at, c)) = version.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "{version:?} has the control character {c:?} at byte {at}; a version is one line of \
             text"
        ));
    }
    Ok(())
}

/// A duration option: `var` in the environment (`"5s"`, `"500ms"`,
/// `"1m30s"`) overrides the value set in code.
fn duration_value(
    option: &'static str,
    var: &str,
    value: Option<&std::ffi::OsStr>,
    in_code: Duration,
) -> Result<Duration, Error> {
    let Some(value) = value else {
        return Ok(in_code);
    };
    let invalid = |why: String| Error::InvalidOption {
        option,
        reason: format!("{var}={value:?} {why}"),
    };
    let text = value
        .to_str()
        .ok_or_else(|| invalid("is not UTF-8".into()))?;
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if digits_only {
        return Err(invalid(
            "has no unit; write it like \"5s\" or \"500ms\"".into(),
        ));
    }
    let duration = humantime::parse_duration(text)
        .map_err(|e| invalid(format!("is not a duration like \"5s\" or \"500ms\": {e}")))?;
    if duration > MAX_DURATION {
        // "1y" is humantime's 365.25 days: say so, or the refusal of a
        // year as longer than a year reads as a contradiction.
        let calendar = text
            .split(|c: char| !c.is_ascii_alphabetic())
            .any(|unit| matches!(unit, "y" | "year" | "years" | "M" | "month" | "months"));
        return Err(invalid(if calendar {
            format!(
                "{TOO_LONG} (a \"y\" is 365.25 days here and an \"M\" 30.44; write it in \
                 days, such as \"365d\")"
            )
        } else {
            TOO_LONG.into()
        }));
    }
    Ok(duration)
}

/// Why a duration above [`MAX_DURATION`] is refused.
const TOO_LONG: &str = "is longer than a year (365 days), the longest a duration option may be";

/// A user or group option: `var` in the environment overrides the value set
/// in code, and an empty value turns it off. An empty name set in code, or a
/// variable that is not UTF-8, is an error.
fn name(
    option: &'static str,
    var: &str,
    value: Option<std::ffi::OsString>,
    in_code: Option<String>,
) -> Result<Option<String>, Error> {
    match value {
        None => match in_code {
            Some(name) if name.is_empty() => Err(Error::InvalidOption {
                option,
                reason: "an empty name; name a user or group, or leave the option unset".into(),
            }),
            other => Ok(other),
        },
        Some(value) if value.is_empty() => Ok(None),
        Some(value) => match value.into_string() {
            Ok(name) => Ok(Some(name)),
            Err(value) => Err(Error::InvalidOption {
                option,
                reason: format!("{var}={value:?} is not UTF-8"),
            }),
        },
    }
}

/// `group` needs `user`, and both need Linux.
fn identity_options(user: Option<&str>, group: Option<&str>) -> Result<(), Error> {
    if let (None, Some(group)) = (user, group) {
        return Err(Error::InvalidOption {
            option: "group",
            reason: format!(
                "{group:?} is set without user: a worker that keeps the master's user keeps its \
                 groups too; set user as well"
            ),
        });
    }
    #[cfg(not(target_os = "linux"))]
    if let Some(user) = user {
        return Err(Error::InvalidOption {
            option: "user",
            reason: format!(
                "{user:?}: serving as another user is implemented on Linux only; start the \
                 service as that user instead"
            ),
        });
    }
    Ok(())
}

/// The control socket: `GRACEFUL_CONTROL_SOCKET`'s value (`var`) over the
/// path set in code; set and empty, none.
fn control_socket_value(
    var: Option<std::ffi::OsString>,
    in_code: Option<PathBuf>,
) -> Option<PathBuf> {
    match var {
        None => in_code,
        Some(value) if value.is_empty() => None,
        Some(value) => Some(PathBuf::from(value)),
    }
}

/// The watched paths: `GRACEFUL_WATCH_PATHS`'s value (`var`, separated as
/// `PATH` is), over the paths set in code; empty entries are skipped, and
/// set and empty, none.
fn watch_paths_value(var: Option<std::ffi::OsString>, in_code: Vec<PathBuf>) -> Vec<PathBuf> {
    match var {
        None => in_code,
        Some(value) => std::env::split_paths(&value)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
    }
}

/// An on/off option: `var` in the environment (`1`/`true`, `0`/`false`)
/// overrides the value set in code.
fn switch(option: &'static str, var: &str, in_code: bool) -> Result<bool, Error> {
    switch_value(option, var, std::env::var_os(var).as_deref(), in_code)
}

fn switch_value(
    option: &'static str,
    var: &str,
    value: Option<&std::ffi::OsStr>,
    in_code: bool,
) -> Result<bool, Error> {
    let Some(value) = value else {
        return Ok(in_code);
    };
    match value.to_str() {
        Some("1" | "true") => Ok(true),
        Some("0" | "false") => Ok(false),
        _ => Err(Error::InvalidOption {
            option,
            reason: format!("{var}={value:?} is not 1 or 0 (true or false)"),
        }),
    }
}

/// A list of signals as the start line shows it.
#[cfg(unix)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignalList<'a>(pub(crate) &'a [Signal]);

#[cfg(unix)]
impl std::fmt::Display for SignalList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("graceful::reload() only");
        }
        for (i, signal) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(signal.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The defaults, validated: what most unit tests start from.
    pub(crate) fn config() -> Config {
        Options::default().validate().unwrap()
    }

    #[test]
    fn bad_options_are_refused_with_the_option_named() {
        let threads = Options {
            worker_threads: Some(0),
            ..Options::default()
        };
        assert_eq!(
            threads.validate().unwrap_err().to_string(),
            "invalid option worker_threads: a runtime needs at least 1 thread"
        );
        let no_stop = Options {
            stop_signals: vec![],
            ..Options::default()
        };
        assert!(matches!(no_stop.validate(), Err(Error::NoStopSignal)));
        let both = Options {
            reload_signals: vec![Signal::SIGUSR2, Signal::SIGTERM],
            ..Options::default()
        };
        assert!(matches!(
            both.validate(),
            Err(Error::SignalConflict {
                signal: Signal::SIGTERM
            })
        ));
        for (options, expected) in [
            (
                Options {
                    header_timeout: Duration::ZERO,
                    ..Options::default()
                },
                "invalid option header_timeout",
            ),
            (
                Options {
                    idle_timeout: Duration::ZERO,
                    ..Options::default()
                },
                "invalid option idle_timeout",
            ),
            (
                Options {
                    max_connections: 0,
                    ..Options::default()
                },
                "invalid option max_connections",
            ),
            (
                Options {
                    max_header_size: 8191,
                    ..Options::default()
                },
                "8191 bytes is below the smallest request head buffer, 8192 bytes",
            ),
        ] {
            let err = options.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        assert!(Options {
            max_header_size: 8192,
            ..Options::default()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn graceful_mode_names_a_mode_or_is_an_error() {
        use std::ffi::OsStr;
        assert_eq!(Mode::from_value(None).unwrap(), None);
        assert_eq!(
            Mode::from_value(Some(OsStr::new("master"))).unwrap(),
            Some(Mode::Master)
        );
        assert_eq!(
            Mode::from_value(Some(OsStr::new("single"))).unwrap(),
            Some(Mode::Single)
        );
        let err = Mode::from_value(Some(OsStr::new("solo"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid GRACEFUL_MODE=\"solo\": use \"master\" or \"single\""
        );
    }

    #[test]
    fn a_switch_is_overridden_by_its_variable_or_names_it() {
        use std::ffi::OsStr;
        let var = "GRACEFUL_UPGRADE_MASTER";
        let value = |v: Option<&str>, in_code| {
            switch_value("upgrade_master", var, v.map(OsStr::new), in_code)
        };
        assert!(value(None, true).unwrap());
        assert!(!value(None, false).unwrap());
        for on in ["1", "true"] {
            assert!(value(Some(on), false).unwrap());
        }
        for off in ["0", "false"] {
            assert!(!value(Some(off), true).unwrap());
        }
        assert_eq!(
            value(Some("yes"), true).unwrap_err().to_string(),
            "invalid option upgrade_master: GRACEFUL_UPGRADE_MASTER=\"yes\" is not 1 or 0 (true or false)"
        );
    }

    #[test]
    fn the_control_socket_and_watched_paths_come_from_code_or_their_variable() {
        use std::ffi::OsString;
        let in_code = || Some(PathBuf::from("/run/app/control.sock"));
        assert_eq!(control_socket_value(None, in_code()), in_code());
        assert_eq!(
            control_socket_value(Some(OsString::from("/run/other.sock")), in_code()),
            Some(PathBuf::from("/run/other.sock"))
        );
        assert_eq!(control_socket_value(Some(OsString::new()), in_code()), None);
        let in_code = || vec![PathBuf::from("/etc/app")];
        assert_eq!(watch_paths_value(None, in_code()), in_code());
        // Separated as PATH is, an empty entry skipped.
        let sep = if cfg!(windows) { ';' } else { ':' };
        let value = OsString::from(format!("/etc/tls{sep}{sep}/etc/other{sep}"));
        assert_eq!(
            watch_paths_value(Some(value), in_code()),
            [PathBuf::from("/etc/tls"), PathBuf::from("/etc/other")]
        );
        assert_eq!(
            watch_paths_value(Some(OsString::new()), in_code()),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn user_and_group_come_from_code_or_their_variable() {
        use std::ffi::OsString;
        let user = |var: Option<&str>, code: Option<&str>| {
            name(
                "user",
                "GRACEFUL_USER",
                var.map(OsString::from),
                code.map(str::to_string),
            )
        };
        assert_eq!(user(None, None).unwrap(), None);
        assert_eq!(user(None, Some("www")).unwrap().as_deref(), Some("www"));
        assert_eq!(
            user(Some("app"), Some("www")).unwrap().as_deref(),
            Some("app")
        );
        assert_eq!(user(Some("app"), None).unwrap().as_deref(), Some("app"));
        // An empty variable turns the option off; an empty name in code is
        // a mistake.
        assert_eq!(user(Some(""), Some("www")).unwrap(), None);
        assert_eq!(
            user(None, Some("")).unwrap_err().to_string(),
            "invalid option user: an empty name; name a user or group, or leave the option unset"
        );
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let bad = name(
                "group",
                "GRACEFUL_GROUP",
                Some(OsString::from_vec(vec![0xff])),
                None,
            );
            assert_eq!(
                bad.unwrap_err().to_string(),
                "invalid option group: GRACEFUL_GROUP=\"\\xFF\" is not UTF-8"
            );
        }
        assert_eq!(
            identity_options(None, Some("www")).unwrap_err().to_string(),
            "invalid option group: \"www\" is set without user: a worker that keeps the \
             master's user keeps its groups too; set user as well"
        );
        assert!(identity_options(None, None).is_ok());
        #[cfg(target_os = "linux")]
        assert!(identity_options(Some("www"), Some("www")).is_ok());
        #[cfg(not(target_os = "linux"))]
        assert!(identity_options(Some("www"), None)
            .unwrap_err()
            .to_string()
            .contains("Linux only"));
    }

    #[test]
    fn a_duration_variable_overrides_the_code_or_names_itself() {
        use std::ffi::OsStr;
        let var = "GRACEFUL_SHUTDOWN_DELAY";
        let value = |v: Option<&str>| {
            duration_value(
                "shutdown_delay",
                var,
                v.map(OsStr::new),
                Duration::from_secs(3),
            )
        };
        assert_eq!(value(None).unwrap(), Duration::from_secs(3));
        assert_eq!(value(Some("5s")).unwrap(), Duration::from_secs(5));
        assert_eq!(value(Some("500ms")).unwrap(), Duration::from_millis(500));
        assert_eq!(value(Some("1m30s")).unwrap(), Duration::from_secs(90));
        assert_eq!(value(Some("0s")).unwrap(), Duration::ZERO);
        assert_eq!(
            value(Some("5")).unwrap_err().to_string(),
            "invalid option shutdown_delay: GRACEFUL_SHUTDOWN_DELAY=\"5\" has no unit; write it \
             like \"5s\" or \"500ms\""
        );
        assert_eq!(value(Some("365days")).unwrap(), MAX_DURATION);
        for year in ["1y", "1year", "12months", "11M 31d", "2years"] {
            assert_eq!(
                value(Some(year)).unwrap_err().to_string(),
                format!(
                    "invalid option shutdown_delay: GRACEFUL_SHUTDOWN_DELAY={year:?} is longer \
                     than a year (365 days), the longest a duration option may be (a \"y\" is \
                     365.25 days here and an \"M\" 30.44; write it in days, such as \"365d\")"
                )
            );
        }
        assert_eq!(
            value(Some("11months")).unwrap(),
            Duration::from_secs(11 * 2_630_016)
        );
        for long in ["365days 1ns", "366d", "8761h", "18446744073709551615s"] {
            assert_eq!(
                value(Some(long)).unwrap_err().to_string(),
                format!(
                    "invalid option shutdown_delay: GRACEFUL_SHUTDOWN_DELAY={long:?} is longer \
                     than a year (365 days), the longest a duration option may be"
                )
            );
        }
        for bad in ["", "soon", "5 parsecs", "-1s"] {
            let err = value(Some(bad)).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "invalid option shutdown_delay: GRACEFUL_SHUTDOWN_DELAY={bad:?} is not a \
                     duration"
                )),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn a_version_is_one_short_line() {
        let with = |version: &str| {
            Options {
                version: Some(version.into()),
                ..Options::default()
            }
            .validate()
            .map(|config| config.version)
            .map_err(|e| e.to_string())
        };
        assert_eq!(with("hello 1.4.2"), Ok(Some("hello 1.4.2".into())));
        let longest = "é".repeat(MAX_VERSION / 2);
        assert_eq!(with(&longest), Ok(Some(longest.clone())));
        assert_eq!(
            with(&format!("{longest}x")),
            Err(
                "invalid option version: it is 101 bytes long; a version is at most 100 bytes"
                    .into()
            )
        );
        assert_eq!(
            with(" "),
            Err(
                "invalid option version: an empty version; name the build (\"1.4.2\"), or \
                 leave the option unset"
                    .into()
            )
        );
        assert_eq!(
            with("1.4\n2"),
            Err(
                "invalid option version: \"1.4\\n2\" has the control character '\\n' at \
                 byte 3; a version is one line of text"
                    .into()
            )
        );
        assert_eq!(Options::default().validate().unwrap().version, None);
        // The macro's default: the package's name and version, if both are
        // known.
        let package = package_version;
        assert_eq!(
            package(Some("hello"), Some("1.4.2")),
            Some("hello 1.4.2".into())
        );
        assert_eq!(package(None, Some("1.4.2")), None);
        assert_eq!(package(Some("hello"), None), None);
        // A package's name and version that do not fit are cut, at a
        // character, rather than stop a start the user configured nothing
        // for.
        let long = "é".repeat(60);
        let cut = package(Some("ab"), Some(&long)).unwrap();
        assert_eq!(cut, format!("ab {}", "é".repeat(48)));
        assert_eq!(cut.len(), MAX_VERSION - 1);
    }

    #[test]
    fn a_watchdog_period_is_at_least_its_minimum() {
        let every = |period| {
            Options {
                watchdog: Some(period),
                ..Options::default()
            }
            .validate()
        };
        assert_eq!(every(MIN_WATCHDOG).unwrap().watchdog, Some(MIN_WATCHDOG));
        for short in [MIN_WATCHDOG - Duration::from_nanos(1), Duration::ZERO] {
            assert_eq!(
                every(short).unwrap_err().to_string(),
                "invalid option watchdog: a worker needs at least 100ms to answer a check"
            );
        }
    }

    #[test]
    fn every_duration_option_may_be_up_to_a_year_and_no_longer() {
        type Set = fn(&mut Options, Duration);
        let options: [(&str, Set); 7] = [
            ("stop_timeout", |o, d| o.stop_timeout = d),
            ("ready_timeout", |o, d| o.ready_timeout = d),
            ("idle_grace", |o, d| o.idle_grace = d),
            ("header_timeout", |o, d| o.header_timeout = d),
            ("idle_timeout", |o, d| o.idle_timeout = d),
            ("watchdog", |o, d| o.watchdog = Some(d)),
            ("shutdown_delay", |o, d| o.shutdown_delay = d),
        ];
        for (name, set) in options {
            let with = |value| {
                let mut options = Options::default();
                set(&mut options, value);
                options.validate()
            };
            assert!(with(MAX_DURATION).is_ok(), "{name}");
            for long in [MAX_DURATION + Duration::from_nanos(1), Duration::MAX] {
                assert_eq!(
                    with(long).unwrap_err().to_string(),
                    format!(
                        "invalid option {name}: {long:?} is longer than a year (365 days), the \
                         longest a duration option may be"
                    )
                );
            }
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = config();
        assert_eq!(config.stop_timeout, Duration::from_secs(20));
        assert_eq!(config.ready_timeout, Duration::from_secs(30));
        assert_eq!(config.idle_grace, Duration::from_millis(500));
        assert_eq!(config.reload_signals, [Signal::SIGHUP, Signal::SIGUSR1]);
        assert_eq!(config.stop_signals, [Signal::SIGTERM, Signal::SIGINT]);
        assert_eq!(config.worker_threads, None);
        assert_eq!(config.mode, Mode::Master);
        assert!(config.upgrade_master);
        assert_eq!((config.user, config.group), (None, None));
        assert_eq!(config.shutdown_delay, Duration::ZERO);
        assert_eq!(
            config.limits,
            Limits {
                header_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(60),
                max_connections: 10_000,
                max_header_size: 65_536,
            }
        );
    }

    #[cfg(unix)]
    #[test]
    fn signal_lists_read_as_in_the_start_line() {
        assert_eq!(
            SignalList(&[Signal::SIGHUP, Signal::SIGUSR1]).to_string(),
            "SIGHUP, SIGUSR1"
        );
        assert_eq!(SignalList(&[]).to_string(), "graceful::reload() only");
    }
}
