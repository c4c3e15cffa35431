//! Validation of the parsed arguments into a typed configuration.
//!
//! Every mistake becomes a `syn::Error` on the smallest offending token, and
//! all mistakes are combined into one error so the user sees them together.

use std::collections::HashMap;

use proc_macro2::Span;
use syn::Ident;

use crate::args::{RawArg, RawArgs, RawValue};

/// Signals a handler can be installed for, in the order the docs list them.
const SIGNALS: &[&str] = &[
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGWINCH",
];

/// Options `#[graceful::main]` understands.
const KEYS: &[&str] = &[
    "stop_timeout",
    "ready_timeout",
    "idle_grace",
    "reload",
    "stop",
    "worker_threads",
    "mode",
    "pid_file",
    "header_timeout",
    "idle_timeout",
    "max_connections",
    "max_header_size",
    "max_draining",
    "watch",
    "control_socket",
    "watchdog",
    "upgrade_master",
    "user",
    "group",
    "shutdown_delay",
    "watch_paths",
    "version",
];

/// The smallest `max_header_size` the runtime accepts (hyper's read buffer).
const MIN_HEADER_SIZE: usize = 8192;

/// The shortest `watchdog` period the runtime accepts.
const MIN_WATCHDOG_MS: u64 = 100;

/// Values of `mode`.
const MODES: &[&str] = &["master", "single"];

/// A signal named in the attribute, with the token that named it.
pub(crate) struct SignalArg {
    pub(crate) name: String,
    pub(crate) span: Span,
}

/// The validated arguments. `None` means "use the runtime's default".
#[derive(Default)]
pub(crate) struct Config {
    pub(crate) stop_timeout: Option<u64>,
    pub(crate) ready_timeout: Option<u64>,
    pub(crate) idle_grace: Option<u64>,
    pub(crate) reload: Option<Vec<SignalArg>>,
    pub(crate) stop: Option<Vec<SignalArg>>,
    pub(crate) worker_threads: Option<usize>,
    /// `"master"` or `"single"`.
    pub(crate) mode: Option<String>,
    pub(crate) pid_file: Option<syn::LitStr>,
    pub(crate) header_timeout: Option<u64>,
    pub(crate) idle_timeout: Option<u64>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_header_size: Option<usize>,
    pub(crate) max_draining: Option<usize>,
    pub(crate) watch: Option<bool>,
    pub(crate) control_socket: Option<syn::LitStr>,
    pub(crate) watchdog: Option<u64>,
    pub(crate) upgrade_master: Option<bool>,
    pub(crate) shutdown_delay: Option<u64>,
    pub(crate) watch_paths: Option<Vec<syn::LitStr>>,
    pub(crate) user: Option<syn::LitStr>,
    pub(crate) group: Option<syn::LitStr>,
    pub(crate) version: Option<syn::LitStr>,
}

/// Collects errors so that every mistake is reported, not just the first.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        let error = syn::Error::new(span, message);
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }
}

impl Config {
    pub(crate) fn from_args(args: RawArgs) -> syn::Result<Config> {
        let mut config = Config::default();
        let mut errors = Errors::default();
        let mut seen: HashMap<String, Span> = HashMap::new();

        for RawArg { key, value } in args.0 {
            let name = key.to_string();
            if !KEYS.contains(&name.as_str()) {
                errors.push(
                    key.span(),
                    format!(
                        "unknown option `{name}`; expected one of {}",
                        KEYS.iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                continue;
            }
            if seen.insert(name.clone(), key.span()).is_some() {
                errors.push(
                    key.span(),
                    format!("`{name}` is set twice; remove one of them"),
                );
                continue;
            }
            match name.as_str() {
                "stop_timeout" => config.stop_timeout = duration(&key, &value, true, &mut errors),
                "ready_timeout" => {
                    config.ready_timeout = duration(&key, &value, false, &mut errors)
                }
                "idle_grace" => config.idle_grace = duration(&key, &value, true, &mut errors),
                "watch_paths" => config.watch_paths = paths(&key, &value, &mut errors),
                "shutdown_delay" => {
                    config.shutdown_delay = duration(&key, &value, true, &mut errors)
                }
                "reload" => config.reload = signals(&key, &value, true, &mut errors),
                "stop" => config.stop = signals(&key, &value, false, &mut errors),
                "worker_threads" => {
                    config.worker_threads = count(&key, &value, "threads", 1, "4", &mut errors)
                }
                "header_timeout" => {
                    config.header_timeout = duration(&key, &value, false, &mut errors)
                }
                "idle_timeout" => config.idle_timeout = duration(&key, &value, false, &mut errors),
                "max_connections" => {
                    config.max_connections =
                        count(&key, &value, "connections", 1, "10000", &mut errors)
                }
                "watch" => config.watch = flag(&key, &value, &mut errors),
                "upgrade_master" => config.upgrade_master = flag(&key, &value, &mut errors),
                "max_draining" => {
                    config.max_draining = count(&key, &value, "workers", 1, "4", &mut errors)
                }
                "max_header_size" => {
                    config.max_header_size =
                        count(&key, &value, "bytes", MIN_HEADER_SIZE, "65536", &mut errors)
                }
                "mode" => config.mode = mode(&key, &value, &mut errors),
                "pid_file" => config.pid_file = path(&key, &value, &mut errors),
                "control_socket" => config.control_socket = path(&key, &value, &mut errors),
                "user" => config.user = account(&key, &value, "www-data", &mut errors),
                "group" => config.group = account(&key, &value, "www-data", &mut errors),
                "version" => config.version = version(&value, &mut errors),
                "watchdog" => {
                    config.watchdog = duration(&key, &value, false, &mut errors);
                    if config.watchdog.is_some_and(|ms| ms < MIN_WATCHDOG_MS) {
                        errors.push(
                            value.span(),
                            format!(
                                "`watchdog` must be at least {MIN_WATCHDOG_MS}ms: a worker needs time to answer a check"
                            ),
                        );
                    }
                }
                _ => unreachable!("every key in KEYS is handled"),
            }
        }

        // Workers serve as another user only under a master that keeps the
        // privileges, and a group only goes with a user.
        if let Some(group) = &config.group {
            if !seen.contains_key("user") {
                errors.push(
                    group.span(),
                    "`group` needs `user`: a worker that keeps the master's user keeps its groups too; set `user` as well",
                );
            }
        }
        if let (Some(user), Some("single")) = (&config.user, config.mode.as_deref()) {
            errors.push(
                user.span(),
                "`user` needs master mode: in single mode the process that serves also binds new addresses and starts the next version, so it cannot give up its privileges",
            );
        }

        // A signal cannot both reload and stop the service.
        if let (Some(reload), Some(stop)) = (&config.reload, &config.stop) {
            for s in stop {
                if reload.iter().any(|r| r.name == s.name) {
                    errors.push(
                        s.span,
                        format!(
                            "`{}` is in both `reload` and `stop`; a signal can do only one of them",
                            s.name
                        ),
                    );
                }
            }
        } else if let Some(list) = config.reload.as_ref().or(config.stop.as_ref()) {
            // One list is given and the other is the default: check against the default.
            let (other, other_default): (&str, &[&str]) = if config.reload.is_some() {
                ("stop", &["SIGTERM", "SIGINT"])
            } else {
                ("reload", &["SIGHUP", "SIGUSR1"])
            };
            for s in list {
                if other_default.contains(&s.name.as_str()) {
                    errors.push(
                        s.span,
                        format!(
                            "`{}` is also a default `{other}` signal; set `{other} = [...]` without it",
                            s.name
                        ),
                    );
                }
            }
        }

        match errors.0 {
            Some(e) => Err(e),
            None => Ok(config),
        }
    }
}

fn duration(key: &Ident, value: &RawValue, zero_ok: bool, errors: &mut Errors) -> Option<u64> {
    let help = format!("`{key}` takes a duration like \"20s\", \"500ms\" or \"1m30s\"");
    let RawValue::Str(lit) = value else {
        errors.push(value.span(), format!("{help}, not {}", value.kind()));
        return None;
    };
    match parse_duration_ms(&lit.value()) {
        Ok(0) if !zero_ok => {
            errors.push(lit.span(), format!("`{key}` must be longer than zero"));
            None
        }
        Ok(ms) => Some(ms),
        Err(why) => {
            errors.push(lit.span(), format!("{help}: {why}"));
            None
        }
    }
}

fn signals(
    key: &Ident,
    value: &RawValue,
    empty_ok: bool,
    errors: &mut Errors,
) -> Option<Vec<SignalArg>> {
    let RawValue::List(items, span) = value else {
        errors.push(
            value.span(),
            format!(
                "`{key}` takes a list of signals like `[SIGHUP, SIGUSR1]`, not {}",
                value.kind()
            ),
        );
        return None;
    };
    if items.is_empty() && !empty_ok {
        errors.push(
            *span,
            format!("`{key}` needs at least one signal, or the service cannot be stopped"),
        );
        return None;
    }
    let mut out: Vec<SignalArg> = Vec::new();
    let mut ok = true;
    for ident in items {
        let name = ident.to_string();
        if let Some(message) = signal_error(&name) {
            errors.push(ident.span(), message);
            ok = false;
        } else if out.iter().any(|s| s.name == name) {
            errors.push(ident.span(), format!("`{name}` is listed twice in `{key}`"));
            ok = false;
        } else {
            out.push(SignalArg {
                name,
                span: ident.span(),
            });
        }
    }
    ok.then_some(out)
}

fn signal_error(name: &str) -> Option<String> {
    if SIGNALS.contains(&name) {
        return None;
    }
    if name == "SIGKILL" || name == "SIGSTOP" {
        return Some(format!(
            "`{name}` cannot be caught or handled by any process, so it cannot be used here; \
             use one of {}",
            SIGNALS.join(", ")
        ));
    }
    let upper = name.to_ascii_uppercase();
    let with_prefix = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if SIGNALS.contains(&with_prefix.as_str()) {
        return Some(format!("unknown signal `{name}`; write `{with_prefix}`"));
    }
    if let Some(close) = SIGNALS.iter().find(|s| edit_distance(s, &with_prefix) <= 2) {
        return Some(format!("unknown signal `{name}`; did you mean `{close}`?"));
    }
    Some(format!(
        "unknown signal `{name}`; expected one of {}",
        SIGNALS.join(", ")
    ))
}

/// Levenshtein distance, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// `true` or `false`.
fn flag(key: &Ident, value: &RawValue, errors: &mut Errors) -> Option<bool> {
    match value {
        RawValue::Bool(lit) => Some(lit.value),
        other => {
            errors.push(
                other.span(),
                format!("`{key}` is `true` or `false`, not {}", other.kind()),
            );
            None
        }
    }
}

/// A whole number of `unit`, at least `least`, like `example`.
fn count(
    key: &Ident,
    value: &RawValue,
    unit: &str,
    least: usize,
    example: &str,
    errors: &mut Errors,
) -> Option<usize> {
    let RawValue::Int(lit) = value else {
        errors.push(
            value.span(),
            format!(
                "`{key}` takes a number of {unit} like `{example}`, not {}",
                value.kind()
            ),
        );
        return None;
    };
    match lit.base10_parse::<usize>() {
        Ok(n) if n >= least => Some(n),
        _ => {
            errors.push(
                lit.span(),
                format!("`{key}` must be a whole number of {unit}, at least {least}"),
            );
            None
        }
    }
}

fn mode(key: &Ident, value: &RawValue, errors: &mut Errors) -> Option<String> {
    let help = format!("`{key}` is \"master\" (the default) or \"single\"");
    let RawValue::Str(lit) = value else {
        errors.push(value.span(), format!("{help}, not {}", value.kind()));
        return None;
    };
    let mode = lit.value();
    if MODES.contains(&mode.as_str()) {
        Some(mode)
    } else {
        errors.push(lit.span(), format!("unknown mode {mode:?}; {help}"));
        None
    }
}

/// A list of paths, each non-empty; `[]` is none.
fn paths(key: &Ident, value: &RawValue, errors: &mut Errors) -> Option<Vec<syn::LitStr>> {
    match value {
        RawValue::List(items, _) if items.is_empty() => Some(Vec::new()),
        RawValue::Strings(items, _) => {
            let mut ok = true;
            for lit in items {
                if lit.value().is_empty() {
                    errors.push(
                        lit.span(),
                        format!("`{key}` needs paths, not an empty string"),
                    );
                    ok = false;
                }
            }
            ok.then(|| items.clone())
        }
        other => {
            errors.push(
                other.span(),
                format!(
                    "`{key}` takes a list of paths like `[\"/etc/app/config.toml\", \"/etc/tls/\"]`, not {}",
                    other.kind()
                ),
            );
            None
        }
    }
}

fn path(key: &Ident, value: &RawValue, errors: &mut Errors) -> Option<syn::LitStr> {
    match value {
        RawValue::Str(lit) if !lit.value().is_empty() => Some(lit.clone()),
        RawValue::Str(lit) => {
            errors.push(
                lit.span(),
                format!("`{key}` needs a path, not an empty string"),
            );
            None
        }
        other => {
            errors.push(
                other.span(),
                format!(
                    "`{key}` takes a path like \"/run/app.pid\", not {}",
                    other.kind()
                ),
            );
            None
        }
    }
}

/// A user or group, by name or number; never root, whose workers would keep
/// every privilege.
fn account(
    key: &Ident,
    value: &RawValue,
    example: &str,
    errors: &mut Errors,
) -> Option<syn::LitStr> {
    let RawValue::Str(lit) = value else {
        errors.push(
            value.span(),
            format!(
                "`{key}` takes a name or a number like \"{example}\", not {}",
                value.kind()
            ),
        );
        return None;
    };
    match lit.value().as_str() {
        "" => errors.push(
            lit.span(),
            format!("`{key}` needs a name or a number, not an empty string"),
        ),
        "root" | "0" if key == "user" => errors.push(
            lit.span(),
            "`user` names an unprivileged user: workers that run as root keep every privilege; leave `user` out to keep the master's",
        ),
        _ => return Some(lit.clone()),
    }
    None
}

/// The longest `version`, in bytes (the runtime's `MAX_VERSION`).
const MAX_VERSION: usize = 100;

/// `version = "1.4.2"`: one line of text of at most [`MAX_VERSION`]
/// bytes, as the runtime shows it in the status.
fn version(value: &RawValue, errors: &mut Errors) -> Option<syn::LitStr> {
    let RawValue::Str(lit) = value else {
        errors.push(
            value.span(),
            format!(
                "`version` takes the build's name like \"1.4.2\", not {}",
                value.kind()
            ),
        );
        return None;
    };
    let text = lit.value();
    if text.trim().is_empty() {
        errors.push(
            lit.span(),
            "`version` needs the build's name; leave it out to show the package's name and version",
        );
    } else if text.len() > MAX_VERSION {
        errors.push(
            lit.span(),
            format!(
                "`version` is {} bytes long; it is at most {MAX_VERSION}",
                text.len()
            ),
        );
    } else if text.contains(char::is_control) {
        errors.push(
            lit.span(),
            "`version` is one line of text, without control characters",
        );
    } else {
        return Some(lit.clone());
    }
    None
}

/// Parses `"20s"`, `"500ms"`, `"1m30s"`, `"4h"` into milliseconds.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err("the string is empty".into());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{}` is too large", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" => return Err(format!("`{number}` has no unit; add h, m, s or ms")),
            other => return Err(format!("unknown unit `{other}`; use h, m, s or ms")),
        };
        total = number
            .checked_mul(scale)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| "the duration is too long".to_string())?;
    }
    // graceful's own bound on every duration option (config.rs,
    // MAX_DURATION), told here where the mistake is written.
    if total > MAX_DURATION_MS {
        return Err(
            "it is longer than a year (365 days, 8760h), the longest a duration \
             option may be"
                .into(),
        );
    }
    Ok(total)
}

/// A year in milliseconds: the longest a duration option may be.
const MAX_DURATION_MS: u64 = 365 * 24 * 3_600_000;

#[cfg(test)]
mod tests {
    use super::{parse_duration_ms, Config};
    use crate::args::RawArgs;

    /// The arguments `args` (as written inside `#[graceful::main(...)]`)
    /// validated.
    fn config(args: &str) -> syn::Result<Config> {
        Config::from_args(syn::parse_str::<RawArgs>(args).expect("the arguments parse"))
    }

    /// Each error `args` gives: its message, the text of `args` its span
    /// covers, which must be the offending token, and that text's column.
    fn errors(args: &str) -> Vec<(String, String, usize)> {
        let Err(all) = config(args) else {
            panic!("`{args}` was accepted");
        };
        all.into_iter()
            .map(|e| {
                let (start, end) = (e.span().start(), e.span().end());
                assert_eq!((start.line, end.line), (1, 1), "{e}");
                (
                    e.to_string(),
                    args[start.column..end.column].to_string(),
                    start.column,
                )
            })
            .collect()
    }

    /// The one error `args` gives, which must name `message` and point at
    /// `token`: the column `token` starts at, for a token written twice.
    #[track_caller]
    fn error(args: &str, message: &str, token: &str) -> usize {
        let errors = errors(args);
        assert_eq!(errors.len(), 1, "`{args}`: {errors:?}");
        let (said, at, column) = &errors[0];
        assert!(said.contains(message), "`{args}`: {said}");
        assert_eq!(at, token, "`{args}`: {said}");
        *column
    }

    #[test]
    fn every_option_is_read_into_its_value() {
        let c = config(
            r#"stop_timeout = "20s", ready_timeout = "1m30s", idle_grace = "0s",
               reload = [SIGHUP, SIGUSR1], stop = [SIGTERM], worker_threads = 4,
               mode = "master", pid_file = "/run/app.pid", header_timeout = "5s",
               idle_timeout = "90s", max_connections = 10000, max_header_size = 8192,
               max_draining = 1, watch = true, control_socket = "/run/app.sock",
               watchdog = "100ms", upgrade_master = false, user = "www-data",
               group = "0", shutdown_delay = "0s", watch_paths = ["/etc/app", "/etc/tls"],
               version = "1.4.2+8c0ffee""#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.stop_timeout, Some(20_000));
        assert_eq!(c.ready_timeout, Some(90_000));
        assert_eq!(c.idle_grace, Some(0));
        let names = |list: &Option<Vec<super::SignalArg>>| {
            list.as_ref()
                .map(|l| l.iter().map(|s| s.name.clone()).collect::<Vec<_>>())
        };
        assert_eq!(
            names(&c.reload),
            Some(vec!["SIGHUP".into(), "SIGUSR1".into()])
        );
        assert_eq!(names(&c.stop), Some(vec!["SIGTERM".into()]));
        assert_eq!(c.worker_threads, Some(4));
        assert_eq!(c.mode.as_deref(), Some("master"));
        assert_eq!(
            c.pid_file.map(|l| l.value()).as_deref(),
            Some("/run/app.pid")
        );
        assert_eq!(c.header_timeout, Some(5_000));
        assert_eq!(c.idle_timeout, Some(90_000));
        assert_eq!(c.max_connections, Some(10_000));
        assert_eq!(c.max_header_size, Some(8192));
        assert_eq!(c.max_draining, Some(1));
        assert_eq!(c.watch, Some(true));
        assert_eq!(
            c.control_socket.map(|l| l.value()).as_deref(),
            Some("/run/app.sock")
        );
        assert_eq!(c.watchdog, Some(100));
        assert_eq!(c.upgrade_master, Some(false));
        assert_eq!(c.user.map(|l| l.value()).as_deref(), Some("www-data"));
        assert_eq!(c.group.map(|l| l.value()).as_deref(), Some("0"));
        assert_eq!(c.shutdown_delay, Some(0));
        let paths = c.watch_paths.unwrap();
        let paths: Vec<String> = paths.iter().map(syn::LitStr::value).collect();
        assert_eq!(paths, ["/etc/app", "/etc/tls"]);
        assert_eq!(
            c.version.map(|l| l.value()).as_deref(),
            Some("1.4.2+8c0ffee")
        );
        // Nothing set: every option is the runtime's default.
        let c = config("").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.stop_timeout.is_none() && c.reload.is_none() && c.mode.is_none());
    }

    #[test]
    fn a_version_is_one_short_line_of_text() {
        error(
            "version = 1",
            "`version` takes the build's name like \"1.4.2\", not an integer",
            "1",
        );
        error(
            r#"version = " ""#,
            "`version` needs the build's name; leave it out",
            r#"" ""#,
        );
        error(
            r#"version = "1.0\nready""#,
            "`version` is one line of text, without control characters",
            r#""1.0\nready""#,
        );
        let long = format!(r#"version = "{}""#, "a".repeat(101));
        error(
            &long,
            "`version` is 101 bytes long; it is at most 100",
            &long[10..],
        );
        let longest = format!(r#"version = "{}""#, "é".repeat(50));
        assert!(config(&longest).is_ok());
    }

    #[test]
    fn an_unknown_or_repeated_option_is_named() {
        error(
            r#"stop_timout = "20s""#,
            "unknown option `stop_timout`; expected one of `stop_timeout`, `ready_timeout`",
            "stop_timout",
        );
        error(
            r#"stop_timeout = "1s", stop_timeout = "2s""#,
            "`stop_timeout` is set twice; remove one of them",
            "stop_timeout",
        );
        // The second is the one pointed at.
        let at = error(
            "watch = true, watch = false",
            "`watch` is set twice",
            "watch",
        );
        assert_eq!(at, 14);
    }

    #[test]
    fn durations_are_strings_with_units_and_zero_only_where_it_means_none() {
        for key in [
            "stop_timeout",
            "ready_timeout",
            "idle_grace",
            "header_timeout",
            "idle_timeout",
            "watchdog",
            "shutdown_delay",
        ] {
            error(
                &format!("{key} = 20"),
                &format!(
                    "`{key}` takes a duration like \"20s\", \"500ms\" or \"1m30s\", not an integer"
                ),
                "20",
            );
            error(
                &format!(r#"{key} = "20""#),
                "`20` has no unit; add h, m, s or ms",
                r#""20""#,
            );
        }
        for key in ["stop_timeout", "idle_grace", "shutdown_delay"] {
            assert!(config(&format!(r#"{key} = "0s""#)).is_ok(), "{key}");
        }
        for key in [
            "ready_timeout",
            "header_timeout",
            "idle_timeout",
            "watchdog",
        ] {
            error(
                &format!(r#"{key} = "0ms""#),
                &format!("`{key}` must be longer than zero"),
                r#""0ms""#,
            );
        }
    }

    #[test]
    fn the_watchdog_is_at_least_100ms() {
        error(
            r#"watchdog = "99ms""#,
            "`watchdog` must be at least 100ms: a worker needs time to answer a check",
            r#""99ms""#,
        );
        assert_eq!(config(r#"watchdog = "100ms""#).unwrap().watchdog, Some(100));
    }

    #[test]
    fn signal_lists_name_catchable_signals_once_each() {
        error(
            r#"reload = "SIGHUP""#,
            "`reload` takes a list of signals like `[SIGHUP, SIGUSR1]`, not a string",
            r#""SIGHUP""#,
        );
        // No reload signal is allowed (reloads then come from code or the
        // control socket); no stop signal is not.
        assert_eq!(config("reload = []").unwrap().reload.unwrap().len(), 0);
        error(
            "stop = []",
            "`stop` needs at least one signal, or the service cannot be stopped",
            "[]",
        );
        error(
            "reload = [SIGHUP, SIGKILL]",
            "`SIGKILL` cannot be caught or handled by any process",
            "SIGKILL",
        );
        error(
            "reload = [hup]",
            "unknown signal `hup`; write `SIGHUP`",
            "hup",
        );
        let at = error(
            "reload = [SIGUSR1, SIGUSR1]",
            "`SIGUSR1` is listed twice in `reload`",
            "SIGUSR1",
        );
        assert_eq!(at, 19, "the second one");
    }

    #[test]
    fn a_signal_either_reloads_or_stops() {
        let at = error(
            "reload = [SIGUSR2], stop = [SIGTERM, SIGUSR2]",
            "`SIGUSR2` is in both `reload` and `stop`; a signal can do only one of them",
            "SIGUSR2",
        );
        assert_eq!(at, 37, "the one in `stop`");
        // Against the other list's default when only one is given.
        error(
            "reload = [SIGINT]",
            "`SIGINT` is also a default `stop` signal; set `stop = [...]` without it",
            "SIGINT",
        );
        error(
            "reload = [SIGTERM]",
            "`SIGTERM` is also a default `stop` signal",
            "SIGTERM",
        );
        error(
            "stop = [SIGUSR1]",
            "`SIGUSR1` is also a default `reload` signal; set `reload = [...]` without it",
            "SIGUSR1",
        );
        error(
            "stop = [SIGHUP]",
            "`SIGHUP` is also a default `reload` signal",
            "SIGHUP",
        );
        // Disjoint lists, and lists clear of the other's default, pass.
        assert!(config("reload = [SIGHUP], stop = [SIGINT]").is_ok());
        assert!(config("reload = [SIGUSR2]").is_ok());
        assert!(config("stop = [SIGQUIT]").is_ok());
        assert!(config("reload = [SIGTERM], stop = [SIGQUIT]").is_ok());
    }

    #[test]
    fn counts_are_whole_numbers_from_their_least() {
        for (key, unit, least) in [
            ("worker_threads", "threads", 1),
            ("max_connections", "connections", 1),
            ("max_draining", "workers", 1),
            ("max_header_size", "bytes", 8192),
        ] {
            error(
                &format!("{key} = {}", least - 1),
                &format!("`{key}` must be a whole number of {unit}, at least {least}"),
                &(least - 1).to_string(),
            );
            error(
                &format!(r#"{key} = "4""#),
                &format!("`{key}` takes a number of {unit} like `"),
                r#""4""#,
            );
            assert!(config(&format!("{key} = {least}")).is_ok(), "{key}");
        }
    }

    #[test]
    fn flags_modes_and_paths_take_their_kind_of_value() {
        for key in ["watch", "upgrade_master"] {
            error(
                &format!(r#"{key} = "yes""#),
                &format!("`{key}` is `true` or `false`, not a string"),
                r#""yes""#,
            );
        }
        error(
            r#"mode = "solo""#,
            r#"unknown mode "solo"; `mode` is "master" (the default) or "single""#,
            r#""solo""#,
        );
        error(
            "mode = 1",
            "`mode` is \"master\" (the default) or \"single\", not an integer",
            "1",
        );
        assert_eq!(
            config(r#"mode = "single""#).unwrap().mode.as_deref(),
            Some("single")
        );
        for key in ["pid_file", "control_socket"] {
            error(
                &format!(r#"{key} = """#),
                &format!("`{key}` needs a path, not an empty string"),
                r#""""#,
            );
            error(
                &format!("{key} = true"),
                &format!("`{key}` takes a path like \"/run/app.pid\", not `true` or `false`"),
                "true",
            );
        }
        assert_eq!(
            config("watch_paths = []")
                .unwrap()
                .watch_paths
                .unwrap()
                .len(),
            0
        );
        error(
            r#"watch_paths = ["/etc/app", ""]"#,
            "`watch_paths` needs paths, not an empty string",
            r#""""#,
        );
        error(
            r#"watch_paths = "/etc/app""#,
            "`watch_paths` takes a list of paths like",
            r#""/etc/app""#,
        );
        error(
            "watch_paths = [SIGHUP]",
            "`watch_paths` takes a list of paths like",
            "[SIGHUP]",
        );
    }

    #[test]
    fn user_and_group_name_an_unprivileged_account_in_master_mode() {
        for root in ["root", "0"] {
            error(
                &format!(r#"user = "{root}""#),
                "`user` names an unprivileged user",
                &format!(r#""{root}""#),
            );
        }
        for (key, before) in [("user", ""), ("group", r#"user = "www-data", "#)] {
            error(
                &format!(r#"{before}{key} = """#),
                &format!("`{key}` needs a name or a number, not an empty string"),
                r#""""#,
            );
            error(
                &format!("{before}{key} = 33"),
                &format!("`{key}` takes a name or a number like \"www-data\", not an integer"),
                "33",
            );
        }
        error(
            r#"group = "www-data""#,
            "`group` needs `user`",
            r#""www-data""#,
        );
        error(
            r#"user = "www-data", mode = "single""#,
            "`user` needs master mode",
            r#""www-data""#,
        );
        let c = config(r#"user = "www-data", group = "root", mode = "master""#).unwrap();
        assert_eq!(c.group.map(|l| l.value()).as_deref(), Some("root"));
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let errors = errors(r#"stop_timeout = 5, mode = "solo", bogus = 1, reload = [SIGFOO]"#);
        let at: Vec<&str> = errors.iter().map(|(_, at, _)| at.as_str()).collect();
        assert_eq!(at, ["5", r#""solo""#, "bogus", "SIGFOO"], "{errors:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("20s"), Ok(20_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("4h"), Ok(14_400_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("20").unwrap_err().contains("no unit"));
        assert!(parse_duration_ms("20x")
            .unwrap_err()
            .contains("unknown unit `x`"));
        assert!(parse_duration_ms("s").is_err());
        assert!(parse_duration_ms("99999999999999999999s").is_err());
        assert!(parse_duration_ms("99999999999999999s").is_err());
        assert_eq!(parse_duration_ms("8760h"), Ok(31_536_000_000));
        for long in ["8760h1ms", "8761h", "1000000h"] {
            assert!(parse_duration_ms(long)
                .unwrap_err()
                .contains("longer than a year (365 days, 8760h)"));
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(super::edit_distance("SIGHUPP", "SIGHUP"), 1);
        assert_eq!(super::edit_distance("SIGTREM", "SIGTERM"), 2);
        assert_eq!(super::edit_distance("XSIGHUP", "SIGHUP"), 1);
        assert_eq!(super::edit_distance("abc", ""), 3);
        assert_eq!(super::edit_distance("", "abc"), 3);
        assert!(super::signal_error("SIGHUPP")
            .unwrap()
            .contains("did you mean `SIGHUP`"));
        assert!(super::signal_error("SIGFOO")
            .unwrap()
            .contains("expected one of"));
        assert!(super::signal_error("SIGHUP").is_none());
    }
}
