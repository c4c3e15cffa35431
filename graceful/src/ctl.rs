//! The master's control socket, from the operator's side: the `graceful`
//! command that asks a running service to reload and waits for the outcome,
//! or reads its status.
//!
//! A service opts in with `control_socket = "/run/hello/graceful.sock"` (or
//! `GRACEFUL_CONTROL_SOCKET`). Its master then owns that Unix socket, created
//! owner-only, and answers only peers of its own user or root. The command,
//! in turn, believes a service of another user only if its socket lies in a
//! directory that not everyone can write to (not `/tmp`). Then:
//!
//! ```text
//! $ graceful reload /run/hello/graceful.sock
//! reloaded: generation 4 (pid 31207) is serving; it was ready in 38 ms
//! $ echo $?
//! 0
//! ```
//!
//! A reload that is rolled back prints the reason the master logged and
//! exits 1; a service that cannot be asked (no socket, not running, not
//! allowed) exits 2. The command is not the service's own binary, so a new
//! build that cannot even start still gets its failure reported.
//!
//! The protocol is lines of text. The client sends one request line:
//! `reload`, `status` or `status json`. For `reload` the master answers
//! `pending MS` at once (the longest the outcome can take) and, when the
//! reload is over, `ok GENERATION PID TEXT` or `error TEXT`. For `status` it
//! sends the status, as text or as one line of JSON. Then it closes the
//! connection.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::state::MasterInfo;
use crate::status::{Outcome, Status, WorkerStatus};
use crate::{Error, Reloaded};

/// The longest request line the master reads.
pub(crate) const MAX_REQUEST: usize = 64;
/// How long the client waits for the first answer line, and beyond the
/// master's bound for the outcome.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Reload,
    Status {
        json: bool,
    },
    /// The metrics, in the Prometheus text format.
    Metrics,
}

impl Request {
    /// The request in a line the client sent (without its newline).
    pub(crate) fn parse(line: &str) -> Result<Request, String> {
        match line.trim() {
            "reload" => Ok(Request::Reload),
            "status" => Ok(Request::Status { json: false }),
            "status json" => Ok(Request::Status { json: true }),
            "metrics" => Ok(Request::Metrics),
            other => Err(format!(
                "unknown request {:?}; expected \"reload\", \"status\", \"status json\" or \"metrics\"",
                other.chars().take(MAX_REQUEST).collect::<String>()
            )),
        }
    }

    /// The request as the client writes it, newline included.
    pub(crate) fn line(self) -> &'static str {
        match self {
            Request::Reload => "reload\n",
            Request::Status { json: false } => "status\n",
            Request::Status { json: true } => "status json\n",
            Request::Metrics => "metrics\n",
        }
    }
}

/// The first answer to `reload`: the longest the outcome can take.
pub(crate) fn pending_line(bound: Duration) -> String {
    format!("pending {}\n", bound.as_millis())
}

/// The last answer to `reload`.
pub(crate) fn outcome_line(outcome: &Outcome) -> String {
    let text = outcome.line().replace('\n', " ");
    match outcome {
        Outcome::Reloaded {
            generation, pid, ..
        } => format!("ok {generation} {pid} {text}\n"),
        Outcome::Failed(_) => format!("error {text}\n"),
    }
}

/// An `error` line for a request the master refuses.
pub(crate) fn error_line(reason: &str) -> String {
    format!("error {}\n", reason.replace('\n', " "))
}

/// What the master adds to the core's [`Status`] to answer a query.
#[derive(Debug)]
pub(crate) struct View<'a> {
    pub(crate) master_pid: u32,
    /// The build the master runs, since when, and how often it was upgraded
    /// in place since it first started.
    pub(crate) master: &'a MasterInfo,
    pub(crate) status: &'a Status,
    /// The addresses the master holds, as it logged them.
    pub(crate) listeners: Vec<String>,
    /// The instant the status was taken, and the wall clock then.
    pub(crate) now: Instant,
    pub(crate) wall: SystemTime,
}

impl View<'_> {
    fn wall_time(&self, at: Instant) -> SystemTime {
        self.wall - self.now.saturating_duration_since(at)
    }

    fn when(&self, at: Instant) -> String {
        humantime::format_rfc3339_seconds(self.wall_time(at)).to_string()
    }

    fn ago(&self, at: Instant) -> String {
        let secs = self.now.saturating_duration_since(at).as_secs();
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    }

    fn worker_text(&self, w: &WorkerStatus) -> String {
        let pid = match (w.pid, &w.build) {
            (Some(p), Some(build)) => format!(" (pid {p}, {build})"),
            (Some(p), None) => format!(" (pid {p})"),
            (None, Some(build)) => format!(" ({build})"),
            (None, None) => String::new(),
        };
        let connections = match w.connections {
            Some(1) => ", 1 open connection".to_string(),
            Some(n) => format!(", {n} open connections"),
            None => String::new(),
        };
        format!(
            "worker {}{pid} since {} ({} ago){connections}",
            w.generation,
            self.when(w.since),
            self.ago(w.since)
        )
    }

    /// The status for a person.
    pub(crate) fn text(&self) -> String {
        let status = self.status;
        let mut out = format!(
            "state:       {} (master mode, master pid {})\n",
            status.state, self.master_pid
        );
        let master = self.master;
        let _ = writeln!(out, "master:      {}", master.build);
        let _ = writeln!(
            out,
            "             running since {}, started {}, {} upgrade(s) in place",
            unix_ms_text(master.image_ms),
            unix_ms_text(master.started_ms),
            master.upgrades
        );
        let none = "none".to_string();
        let line = |w: Option<&WorkerStatus>| w.map_or(none.clone(), |w| self.worker_text(w));
        let _ = writeln!(out, "serving:     {}", line(status.serving.as_ref()));
        if let Some(starting) = &status.starting {
            let _ = writeln!(out, "starting:    {}", self.worker_text(starting));
        }
        if status.draining.is_empty() {
            let _ = writeln!(out, "draining:    none");
        }
        for w in &status.draining {
            let _ = writeln!(out, "draining:    {}", self.worker_text(w));
        }
        let _ = writeln!(out, "listeners:   {}", self.listeners.join(", "));
        let last = match &status.last_reload {
            None => "none since the master started".to_string(),
            Some((at, outcome)) => {
                let result = match outcome {
                    Outcome::Reloaded { .. } => "ok",
                    Outcome::Failed(_) => "failed",
                };
                format!(
                    "{result} at {} ({} ago): {}",
                    self.when(*at),
                    self.ago(*at),
                    outcome.line()
                )
            }
        };
        let _ = writeln!(out, "last reload: {last}");
        if status.reloads_queued {
            let _ = writeln!(out, "queued:      one more reload runs after this one");
        }
        out
    }

    fn worker_json(&self, w: &WorkerStatus) -> serde_json::Value {
        serde_json::json!({
            "generation": w.generation,
            "pid": w.pid,
            "version": w.build,
            "since": self.when(w.since),
            "connections": w.connections,
        })
    }

    /// The status as one line of JSON.
    pub(crate) fn json(&self) -> String {
        let status = self.status;
        let last_reload = status.last_reload.as_ref().map(|(at, outcome)| {
            let (ok, generation, pid) = match outcome {
                Outcome::Reloaded {
                    generation, pid, ..
                } => (true, Some(*generation), Some(*pid)),
                Outcome::Failed(_) => (false, None, None),
            };
            serde_json::json!({
                "at": self.when(*at),
                "ok": ok,
                "generation": generation,
                "pid": pid,
                "message": outcome.line(),
            })
        });
        let value = serde_json::json!({
            "mode": "master",
            "master_pid": self.master_pid,
            "master": {
                "build": self.master.build,
                "version": env!("CARGO_PKG_VERSION"),
                "since": unix_ms_text(self.master.image_ms),
                "started": unix_ms_text(self.master.started_ms),
                "upgrades": self.master.upgrades,
            },
            "state": status.state,
            "serving": status.serving.as_ref().map(|w| self.worker_json(w)),
            "starting": status.starting.as_ref().map(|w| self.worker_json(w)),
            "draining": status.draining.iter().map(|w| self.worker_json(w)).collect::<Vec<_>>(),
            "listeners": self.listeners,
            "last_reload": last_reload,
            "reload_queued": status.reloads_queued,
        });
        format!("{value}\n")
    }
}

/// Unix milliseconds as RFC 3339, to the second.
fn unix_ms_text(ms: u64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Connects to the control socket at `socket`.
fn connect(socket: &Path) -> Result<UnixStream, Error> {
    let error = |reason: String| Error::Control {
        socket: socket.to_path_buf(),
        reason,
    };
    if let Some(reason) = crate::addr::unix_path_too_long(socket) {
        return Err(error(reason));
    }
    let stream = UnixStream::connect(socket).map_err(|e| {
        error(match e.kind() {
            std::io::ErrorKind::NotFound => {
                "no such socket: is the service running, with this control_socket?".into()
            }
            // Refused too for a file that is not a socket, such as the PID
            // file given by mistake: not to be told as a service down.
            std::io::ErrorKind::ConnectionRefused => match std::fs::metadata(socket) {
                Ok(meta) if !meta.file_type().is_socket() => format!(
                    "not a socket but {}: give the path of the service's control socket",
                    what_file(meta.file_type())
                ),
                _ => "nothing answers on it: the service is not running".into(),
            },
            std::io::ErrorKind::PermissionDenied => {
                "permission denied: run this as the service's user or root".into()
            }
            _ => format!("cannot connect: {e}"),
        })
    })?;
    let peer = peer_uid(&stream, socket).map_err(&error)?;
    let dir = match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir_mode = std::fs::metadata(dir)
        .map_err(|e| error(format!("cannot read its directory {}: {e}", dir.display())))?
        .mode();
    let ours = nix::unistd::geteuid().as_raw();
    trusted(peer, ours, dir_mode, dir).map_err(error)?;
    Ok(stream)
}

/// Whether the answers of a process of user `peer` on a socket in `dir`
/// (whose permission bits are `dir_mode`) may be believed by a client of
/// user `ours`: a process of our own user or root, or one whose socket
/// lies in a directory that not everyone can write to. In a directory
/// anyone can write to, such as `/tmp`, anyone can put a socket at the
/// path while the service is down, and tell a deploy script that the
/// reload it asked for succeeded.
fn trusted(peer: u32, ours: u32, dir_mode: u32, dir: &Path) -> Result<(), String> {
    if peer == ours || peer == 0 || dir_mode & 0o002 == 0 {
        return Ok(());
    }
    Err(format!(
        "the process answering on it runs as uid {peer}, which is neither yours ({ours}) nor \
         root, and anyone may create files in {}: not trusting its answer; put the control \
         socket in a directory that only the service's user can write, such as /run/app/, or \
         run this as the service's user",
        dir.display()
    ))
}

/// The user of the process on the other end of `stream`, connected to
/// `socket`: from the kernel where it tells (`SO_PEERCRED`, `getpeereid`),
/// else the socket file's owner.
fn peer_uid(stream: &UnixStream, socket: &Path) -> Result<u32, String> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket;
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        getsockopt(stream, PeerCredentials)
            .map(|peer| peer.uid())
            .map_err(|e| format!("cannot read the credentials of the process answering: {e}"))
    }
    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    ))]
    {
        let _ = socket;
        nix::unistd::getpeereid(stream)
            .map(|(uid, _)| uid.as_raw())
            .map_err(|e| format!("cannot read the credentials of the process answering: {e}"))
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly"
    )))]
    {
        let _ = stream;
        std::fs::metadata(socket)
            .map(|meta| meta.uid())
            .map_err(|e| format!("cannot read the socket's owner: {e}"))
    }
}

/// What kind of file a file that is not a socket is, for an error message.
fn what_file(kind: std::fs::FileType) -> &'static str {
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "another kind of file"
    }
}

/// What the master answered.
#[derive(Debug, Default)]
struct Answered {
    /// Whether it accepted a reload request (`pending`).
    pending: bool,
    lines: Vec<String>,
}

/// One exchange: sends `request` and returns what was answered. The first
/// line is waited for a few seconds; after a `pending` line, for as long as
/// it says plus that margin.
fn exchange(socket: &Path, request: Request) -> Result<Answered, Error> {
    let error = |reason: String| Error::Control {
        socket: socket.to_path_buf(),
        reason,
    };
    let mut stream = connect(socket)?;
    // A master that refuses the connection writes why and closes it: the
    // send then fails, and the reason is still there to read.
    let sent = stream.write_all(request.line().as_bytes());
    let _ = stream.set_read_timeout(Some(ANSWER_MARGIN));
    let mut reader = BufReader::new(stream);
    let mut answered = Answered::default();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {
                let line = line.trim_end_matches('\n').to_string();
                if let Some(ms) = line.strip_prefix("pending ") {
                    let ms: u64 = ms
                        .parse()
                        .map_err(|_| error(format!("unexpected answer {line:?}")))?;
                    let wait = Duration::from_millis(ms) + ANSWER_MARGIN;
                    let _ = reader.get_ref().set_read_timeout(Some(wait));
                    answered.pending = true;
                    continue;
                }
                answered.lines.push(line);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(error(
                    "no answer in time: the master may be stuck; see its log".into(),
                ))
            }
            Err(_) if !answered.lines.is_empty() => break,
            Err(e) => return Err(error(format!("cannot read the answer: {e}"))),
        }
    }
    // Refused before the request was read: the reason, not the request's
    // fate.
    if !answered.pending {
        if let Some(reason) = answered
            .lines
            .first()
            .and_then(|l| l.strip_prefix("error "))
        {
            return Err(error(reason.to_string()));
        }
    }
    if let Err(e) = sent {
        if answered.lines.is_empty() {
            return Err(error(format!("cannot send the request: {e}")));
        }
    }
    Ok(answered)
}

/// Asks the service whose master owns the control socket `socket` to reload,
/// and waits until the new worker serves or the reload is rolled back.
///
/// Reloads that are asked for while one runs are coalesced, as with
/// signals: each caller is told the outcome of the reload that covers its
/// request. Returns [`Error::ReloadFailed`] with the reason the master
/// logged when the reload was rolled back, and [`Error::Control`] when the
/// service could not be asked.
pub fn reload(socket: impl AsRef<Path>) -> Result<Reloaded, Error> {
    let socket = socket.as_ref();
    let answered = exchange(socket, Request::Reload)?;
    parse_outcome(answered.lines.last().map(String::as_str)).map_err(|reason| match reason {
        Answer::Failed(reason) => Error::ReloadFailed { reason },
        Answer::Malformed(reason) => Error::Control {
            socket: socket.to_path_buf(),
            reason,
        },
    })
}

/// Reads the status of the service whose master owns the control socket
/// `socket`: for a person, or as one line of JSON.
pub fn status(socket: impl AsRef<Path>, json: bool) -> Result<String, Error> {
    text(socket.as_ref(), Request::Status { json })
}

/// Reads the metrics of the service whose master owns the control socket
/// `socket`, in the Prometheus text format (`graceful metrics`): reloads by
/// outcome, worker starts and crashes, workers by state, open connections
/// by generation, reload durations, connections drained and cut, and the
/// version and master PID.
pub fn metrics(socket: impl AsRef<Path>) -> Result<String, Error> {
    text(socket.as_ref(), Request::Metrics)
}

/// The whole answer to `request`, as text.
fn text(socket: &Path, request: Request) -> Result<String, Error> {
    let lines = exchange(socket, request)?.lines;
    if lines.is_empty() {
        return Err(Error::Control {
            socket: socket.to_path_buf(),
            reason: "the connection closed without an answer".into(),
        });
    }
    Ok(lines.join("\n") + "\n")
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Failed(String),
    Malformed(String),
}

fn parse_outcome(line: Option<&str>) -> Result<Reloaded, Answer> {
    let Some(line) = line else {
        return Err(Answer::Malformed(
            "the connection closed before the outcome".into(),
        ));
    };
    if let Some(reason) = line.strip_prefix("error ") {
        return Err(Answer::Failed(reason.to_string()));
    }
    let malformed = || Answer::Malformed(format!("unexpected answer {line:?}"));
    let mut fields = line
        .strip_prefix("ok ")
        .ok_or_else(malformed)?
        .splitn(3, ' ');
    let generation = fields.next().and_then(|g| g.parse().ok());
    let pid = fields.next().and_then(|p| p.parse().ok());
    let message = fields.next().unwrap_or_default().to_string();
    match (generation, pid) {
        (Some(generation), Some(pid)) => Ok(Reloaded {
            generation,
            pid,
            version: build_in(&message),
            message,
        }),
        _ => Err(malformed()),
    }
}

/// The build named in an `ok` answer's text (`generation 4 (pid 31207) is
/// serving app 1.4.2; it was ready in 38 ms`): the line is the one way the
/// answer says it that a master of any version sends and a command of any
/// version reads. `None` from a master that does not name builds, or for a
/// worker that did not say its own.
fn build_in(message: &str) -> Option<String> {
    let (_, rest) = message.split_once(") is serving ")?;
    let (build, _) = rest.rsplit_once("; it was ready in ")?;
    Some(build.to_string())
}

const USAGE: &str = "\
usage: graceful reload [--json] [SOCKET]
       graceful status [--json] [SOCKET]
       graceful metrics [SOCKET]

Asks a graceful service's master, through its control socket, to reload
(and waits for the outcome), for its status, or for its metrics in the
Prometheus text format. SOCKET defaults to $GRACEFUL_CONTROL_SOCKET.

exit status: 0 done; 1 the reload failed and was rolled back (the old
worker still serves); 2 the service could not be asked, or bad usage. A
reload's exit status is its outcome even when its answer cannot be written.";

/// The `graceful` command: `graceful reload [--json] [SOCKET]` or `graceful
/// status [--json] [SOCKET]`, with the socket defaulting to
/// `GRACEFUL_CONTROL_SOCKET`. Installed by `cargo install graceful-reload`;
/// call it from a binary of your own to ship the command with a service.
///
/// Exit status: 0 when done, 1 when the reload failed and was rolled back,
/// 2 when the service could not be asked or the usage is wrong. A reload's
/// exit status is its outcome even when its answer cannot be written.
pub fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env = std::env::var_os(crate::config::ENV_CONTROL_SOCKET);
    let said = run(&args, env.map(PathBuf::from));
    let code = said.deliver(&mut std::io::stdout().lock(), &mut std::io::stderr().lock());
    std::process::ExitCode::from(code)
}

/// What the command has to say: its answer for standard output, a message
/// for standard error, and its exit status.
#[derive(Debug, PartialEq, Eq)]
struct Said {
    out: String,
    err: String,
    code: u8,
    /// The exit status is a reload's outcome, which stands whether or not
    /// the answer is written; otherwise the answer is the command's whole
    /// point, and one that cannot be written is a failure.
    outcome: bool,
}

impl Said {
    fn answer(out: String) -> Said {
        Said {
            out,
            err: String::new(),
            code: 0,
            outcome: false,
        }
    }

    fn failure(code: u8, err: String) -> Said {
        Said {
            out: String::new(),
            err,
            code,
            outcome: false,
        }
    }

    /// Writes what was said and returns the exit status. Neither stream may
    /// make the command panic (as `println!` does on a write error): a
    /// reader that went away (`graceful status | head -1`) had what it
    /// wanted, and any other failure to write the answer (a full disk) is
    /// said on standard error, and is exit status 2 unless the status is a
    /// reload's outcome. A message that cannot be written to standard error
    /// is lost, and the exit status still tells.
    fn deliver(self, out: &mut impl Write, err: &mut impl Write) -> u8 {
        if !self.err.is_empty() {
            let _ = err
                .write_all(self.err.as_bytes())
                .and_then(|()| err.flush());
        }
        if self.out.is_empty() {
            return self.code;
        }
        match out
            .write_all(self.out.as_bytes())
            .and_then(|()| out.flush())
        {
            Ok(()) => self.code,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => self.code,
            Err(e) => {
                let _ = writeln!(
                    err,
                    "graceful: cannot write the answer to standard output: {e}"
                )
                .and_then(|()| err.flush());
                if self.outcome {
                    self.code
                } else {
                    2
                }
            }
        }
    }
}

/// The command with its arguments (`args`, without the program's name)
/// and `GRACEFUL_CONTROL_SOCKET`'s value (`env`), run: what it has to say.
fn run(args: &[String], env: Option<PathBuf>) -> Said {
    let mut json = false;
    let mut words = Vec::new();
    for arg in args {
        match arg.as_str() {
            "--json" => json = true,
            "-h" | "--help" => return Said::answer(format!("{USAGE}\n")),
            other if other.starts_with('-') => {
                return Said::failure(
                    2,
                    format!("graceful: unknown option {other:?}\n\n{USAGE}\n"),
                )
            }
            other => words.push(other),
        }
    }
    let (command, socket) = match words.as_slice() {
        [command] => (*command, None),
        [command, socket] => (*command, Some(PathBuf::from(socket))),
        _ => return Said::failure(2, format!("{USAGE}\n")),
    };
    if command == "metrics" && json {
        return Said::failure(
            2,
            format!(
                "graceful: graceful metrics has no --json: the metrics are Prometheus text\n\n{USAGE}\n"
            ),
        );
    }
    let Some(socket) = socket.or(env.filter(|v| !v.as_os_str().is_empty())) else {
        return Said::failure(
            2,
            format!(
                "graceful: no control socket: give its path, or set {}\n",
                crate::config::ENV_CONTROL_SOCKET
            ),
        );
    };
    match command {
        "reload" => reload_said(reload(&socket), json),
        "metrics" => printed(metrics(&socket)),
        "status" => printed(status(&socket, json)),
        _ => Said::failure(
            2,
            format!("graceful: unknown command {command:?}\n\n{USAGE}\n"),
        ),
    }
}

/// A reload's outcome, for a person or as one line of JSON, and as the exit
/// status.
fn reload_said(outcome: Result<Reloaded, Error>, json: bool) -> Said {
    let said = match outcome {
        Ok(reloaded) if json => {
            let value = serde_json::json!({
                "ok": true,
                "generation": reloaded.generation,
                "pid": reloaded.pid,
                "version": reloaded.version,
                "message": reloaded.message,
            });
            Said::answer(format!("{value}\n"))
        }
        Ok(reloaded) => Said::answer(format!("reloaded: {}\n", reloaded.message)),
        Err(Error::ReloadFailed { reason }) if json => Said {
            code: 1,
            ..Said::answer(format!(
                "{}\n",
                serde_json::json!({ "ok": false, "reason": reason })
            ))
        },
        Err(e @ Error::ReloadFailed { .. }) => Said::failure(1, format!("graceful: {e}\n")),
        Err(e) => Said::failure(2, format!("graceful: {e}\n")),
    };
    Said {
        outcome: true,
        ..said
    }
}

/// The text asked for (exit 0), or why it could not be had (exit 2).
fn printed(text: Result<String, Error>) -> Said {
    match text {
        Ok(text) => Said::answer(text),
        Err(e) => Said::failure(2, format!("graceful: {e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_the_three_lines_and_nothing_else() {
        for request in [
            Request::Reload,
            Request::Status { json: false },
            Request::Status { json: true },
            Request::Metrics,
        ] {
            assert_eq!(Request::parse(request.line()), Ok(request));
        }
        let refused = Request::parse("shutdown").unwrap_err();
        assert!(refused.contains("\"shutdown\""), "{refused}");
        let long = Request::parse(&"x".repeat(10_000)).unwrap_err();
        assert!(long.len() < 200, "{}", long.len());
    }

    #[test]
    fn pending_and_error_lines_are_one_line_each() {
        assert_eq!(
            pending_line(Duration::from_millis(72_500)),
            "pending 72500\n"
        );
        assert_eq!(error_line("too many\nclients"), "error too many clients\n");
    }

    #[test]
    fn an_outcome_crosses_as_one_line_and_back() {
        let ok = Outcome::Reloaded {
            generation: 4,
            pid: 31207,
            took: Duration::from_millis(38),
            build: Some("hello 1.4.2".into()),
        };
        let line = outcome_line(&ok);
        assert_eq!(
            line,
            "ok 4 31207 generation 4 (pid 31207) is serving hello 1.4.2; it was ready in 38 ms\n"
        );
        assert_eq!(
            parse_outcome(Some(line.trim_end())),
            Ok(Reloaded {
                generation: 4,
                pid: 31207,
                message: "generation 4 (pid 31207) is serving hello 1.4.2; it was ready in 38 ms"
                    .into(),
                version: Some("hello 1.4.2".into()),
            })
        );
        // From a master that names no build, or a worker that said none.
        let unnamed = Outcome::Reloaded {
            generation: 4,
            pid: 31207,
            took: Duration::from_millis(38),
            build: None,
        };
        let line = outcome_line(&unnamed);
        assert_eq!(
            parse_outcome(Some(line.trim_end())).map(|r| r.version),
            Ok(None)
        );
        // A build with the answer's own words in it is read whole.
        assert_eq!(
            build_in("generation 4 (pid 1) is serving a) is serving b; it was ready in c; it was ready in 3 ms"),
            Some("a) is serving b; it was ready in c".into())
        );
        let failed = Outcome::Failed("reload failed: worker 5 exited\nwith status 3".into());
        let line = outcome_line(&failed);
        assert_eq!(line, "error reload failed: worker 5 exited with status 3\n");
        assert_eq!(
            parse_outcome(Some(line.trim_end())),
            Err(Answer::Failed(
                "reload failed: worker 5 exited with status 3".into()
            ))
        );
        assert!(matches!(parse_outcome(None), Err(Answer::Malformed(_))));
        assert!(matches!(
            parse_outcome(Some("ok x 1 y")),
            Err(Answer::Malformed(_))
        ));
        assert!(matches!(
            parse_outcome(Some("fine")),
            Err(Answer::Malformed(_))
        ));
    }

    fn status() -> (Status, Instant) {
        let now = Instant::now();
        let ago = |s| now - Duration::from_secs(s);
        let status = Status {
            state: "reloading",
            serving: Some(WorkerStatus {
                generation: 3,
                pid: Some(300),
                build: Some("hello 1.4.2".into()),
                since: ago(60),
                connections: Some(1),
            }),
            starting: Some(WorkerStatus {
                generation: 4,
                pid: Some(400),
                build: None,
                since: ago(1),
                connections: None,
            }),
            draining: vec![WorkerStatus {
                generation: 2,
                pid: Some(200),
                build: Some("hello 1.4.1".into()),
                since: ago(60),
                connections: Some(12),
            }],
            last_reload: Some((
                ago(60),
                Outcome::Reloaded {
                    generation: 3,
                    pid: 300,
                    took: Duration::from_millis(7),
                    build: None,
                },
            )),
            reloads_queued: true,
            counters: None,
        };
        (status, now)
    }

    #[test]
    fn the_status_reads_for_a_person() {
        let (status, now) = status();
        let view = View {
            master_pid: 100,
            master: &master(),
            status: &status,
            listeners: vec!["127.0.0.1:8080".into(), "unix:/run/a.sock".into()],
            now,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000),
        };
        assert_eq!(
            view.text(),
            "state:       reloading (master mode, master pid 100)\n\
             master:      graceful 0.1.0 (state format 1), /srv/app\n\
             \x20            running since 2025-11-24T15:58:00Z, started 2025-11-24T15:00:00Z, 2 upgrade(s) in place\n\
             serving:     worker 3 (pid 300, hello 1.4.2) since 2025-11-24T15:59:00Z (1m ago), 1 open connection\n\
             starting:    worker 4 (pid 400) since 2025-11-24T15:59:59Z (1s ago)\n\
             draining:    worker 2 (pid 200, hello 1.4.1) since 2025-11-24T15:59:00Z (1m ago), 12 open connections\n\
             listeners:   127.0.0.1:8080, unix:/run/a.sock\n\
             last reload: ok at 2025-11-24T15:59:00Z (1m ago): generation 3 (pid 300) is serving; it was ready in 7 ms\n\
             queued:      one more reload runs after this one\n"
        );
    }

    fn master() -> MasterInfo {
        MasterInfo {
            started_ms: 1_764_000_000_000 - 3_600_000,
            image_ms: 1_764_000_000_000 - 120_000,
            upgrades: 2,
            build: "graceful 0.1.0 (state format 1), /srv/app".into(),
        }
    }

    #[test]
    fn the_status_is_one_line_of_json() {
        let (status, now) = status();
        let view = View {
            master_pid: 100,
            master: &master(),
            status: &status,
            listeners: vec!["127.0.0.1:8080".into()],
            now,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000),
        };
        let json = view.json();
        assert_eq!(json.matches('\n').count(), 1);
        assert!(json.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["state"], "reloading");
        assert_eq!(value["master_pid"], 100);
        assert_eq!(value["master"]["since"], "2025-11-24T15:58:00Z");
        assert_eq!(value["master"]["upgrades"], 2);
        assert_eq!(
            value["master"]["build"],
            "graceful 0.1.0 (state format 1), /srv/app"
        );
        assert_eq!(value["serving"]["pid"], 300);
        assert_eq!(value["serving"]["version"], "hello 1.4.2");
        assert_eq!(value["starting"]["version"], serde_json::Value::Null);
        assert_eq!(value["serving"]["since"], "2025-11-24T15:59:00Z");
        assert_eq!(value["starting"]["connections"], serde_json::Value::Null);
        assert_eq!(value["draining"][0]["connections"], 12);
        assert_eq!(value["listeners"][0], "127.0.0.1:8080");
        assert_eq!(value["last_reload"]["ok"], true);
        assert_eq!(value["last_reload"]["generation"], 3);
        assert_eq!(value["reload_queued"], true);
    }

    /// A stream that takes nothing: every write fails with `kind`.
    struct Refusing(std::io::ErrorKind);

    impl Write for Refusing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn delivered(said: Said, out: &mut impl Write) -> (u8, String) {
        let mut err = Vec::new();
        let code = said.deliver(out, &mut err);
        (code, String::from_utf8(err).unwrap())
    }

    #[test]
    fn an_answer_is_written_whole_to_its_stream_with_its_exit_status() {
        let said = Said {
            out: "{\"ok\":false}\n".into(),
            err: "graceful: reload failed\n".into(),
            code: 1,
            outcome: true,
        };
        let mut out = Vec::new();
        let (code, err) = delivered(said, &mut out);
        assert_eq!(code, 1);
        assert_eq!(out, b"{\"ok\":false}\n");
        assert_eq!(err, "graceful: reload failed\n");
    }

    #[test]
    fn an_answer_that_cannot_be_written_fails_the_command_unless_its_status_is_an_outcome() {
        use std::io::ErrorKind::{BrokenPipe, StorageFull};
        let status = || Said::answer("serving: generation 2\n".into());
        let reloaded = || Said {
            outcome: true,
            ..Said::answer("reloaded: generation 2\n".into())
        };
        let failed = || Said {
            code: 1,
            ..reloaded()
        };
        // A reader that went away, as `| head -1` leaves: nothing to say.
        for said in [status(), reloaded(), failed()] {
            let code = said.code;
            assert_eq!(
                delivered(said, &mut Refusing(BrokenPipe)),
                (code, String::new())
            );
        }
        // A full disk: said, and the status stands only for a reload.
        let (code, err) = delivered(status(), &mut Refusing(StorageFull));
        assert_eq!(code, 2);
        assert!(
            err.starts_with("graceful: cannot write the answer to standard output: "),
            "{err}"
        );
        assert_eq!(delivered(reloaded(), &mut Refusing(StorageFull)).0, 0);
        assert_eq!(delivered(failed(), &mut Refusing(StorageFull)).0, 1);
        // Nothing to write cannot fail.
        let quiet = Said::failure(2, "graceful: no control socket\n".into());
        assert_eq!(delivered(quiet, &mut Refusing(StorageFull)).0, 2);
    }

    #[test]
    fn a_message_that_cannot_be_written_leaves_the_exit_status() {
        use std::io::ErrorKind::StorageFull;
        let said = Said::failure(1, "graceful: reload failed\n".into());
        let code = said.deliver(&mut Vec::new(), &mut Refusing(StorageFull));
        assert_eq!(code, 1);
        let said = Said::answer("metrics\n".into());
        let code = said.deliver(&mut Refusing(StorageFull), &mut Refusing(StorageFull));
        assert_eq!(code, 2);
    }

    #[test]
    fn usage_mistakes_and_a_missing_socket_are_exit_2_with_their_reason() {
        let run = |args: &[&str], env: Option<&str>| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            run(&args, env.map(PathBuf::from))
        };
        let help = run(&["--help"], None);
        assert_eq!(
            (help.code, help.out.as_str()),
            (0, format!("{USAGE}\n").as_str())
        );
        let cases: [(&[&str], Option<&str>, &str); 6] = [
            (
                &["--force", "reload"],
                None,
                "graceful: unknown option \"--force\"",
            ),
            (&[], None, "usage: graceful reload"),
            (&["reload", "a", "b"], None, "usage: graceful reload"),
            (
                &["metrics", "--json"],
                None,
                "graceful: graceful metrics has no --json",
            ),
            (
                &["reload"],
                Some(""),
                "graceful: no control socket: give its path, or set GRACEFUL_CONTROL_SOCKET",
            ),
            (
                &["restart", "/nonexistent/s"],
                None,
                "graceful: unknown command \"restart\"",
            ),
        ];
        for (args, env, reason) in cases {
            let said = run(args, env);
            assert_eq!(said.code, 2, "{args:?}");
            assert!(said.out.is_empty(), "{args:?}");
            assert!(said.err.starts_with(reason), "{args:?}: {}", said.err);
            assert!(said.err.ends_with('\n'), "{args:?}");
        }
        // Each command, with or without --json where it has one, asks the
        // socket it is given.
        for args in [
            &["reload", "/nonexistent/s"][..],
            &["reload", "--json", "/nonexistent/s"],
            &["status", "/nonexistent/s"],
            &["status", "--json", "/nonexistent/s"],
            &["metrics", "/nonexistent/s"],
        ] {
            let said = run(args, None);
            assert_eq!(said.code, 2, "{args:?}");
            assert!(
                said.err
                    .starts_with("graceful: control socket \"/nonexistent/s\": no such socket"),
                "{args:?}: {}",
                said.err
            );
        }
        // The socket from the environment, when none is given.
        let asked = run(&["status"], Some("/nonexistent/graceful.sock"));
        assert_eq!(asked.code, 2);
        assert!(
            asked.err.contains("/nonexistent/graceful.sock"),
            "{}",
            asked.err
        );
    }

    #[test]
    fn a_reload_is_said_for_a_person_or_as_json_and_its_status_is_the_outcome() {
        let reloaded = || {
            Ok(Reloaded {
                generation: 4,
                pid: 31207,
                message: "generation 4 (pid 31207) is serving app 1.4.2".into(),
                version: Some("app 1.4.2".into()),
            })
        };
        let failed = || {
            Err(Error::ReloadFailed {
                reason: "reload failed: worker 5 (pid 9) exited".into(),
            })
        };
        let said = reload_said(reloaded(), false);
        assert_eq!(
            said,
            Said {
                out: "reloaded: generation 4 (pid 31207) is serving app 1.4.2\n".into(),
                err: String::new(),
                code: 0,
                outcome: true,
            }
        );
        let said = reload_said(reloaded(), true);
        assert_eq!((said.code, said.outcome, said.err.as_str()), (0, true, ""));
        let value: serde_json::Value = serde_json::from_str(&said.out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "ok": true,
                "generation": 4,
                "pid": 31207,
                "version": "app 1.4.2",
                "message": "generation 4 (pid 31207) is serving app 1.4.2",
            })
        );
        let said = reload_said(failed(), false);
        assert_eq!(
            said,
            Said {
                out: String::new(),
                err: "graceful: reload failed: worker 5 (pid 9) exited\n".into(),
                code: 1,
                outcome: true,
            }
        );
        let said = reload_said(failed(), true);
        assert_eq!((said.code, said.outcome, said.err.as_str()), (1, true, ""));
        assert_eq!(
            said.out,
            "{\"ok\":false,\"reason\":\"reload failed: worker 5 (pid 9) exited\"}\n"
        );
        for json in [false, true] {
            let unasked = Error::Control {
                socket: "/run/app.sock".into(),
                reason: "no such socket".into(),
            };
            let said = reload_said(Err(unasked), json);
            assert_eq!((said.code, said.out.as_str()), (2, ""), "{json}");
            assert!(said.err.contains("/run/app.sock"), "{}", said.err);
        }
    }

    #[test]
    fn a_socket_anyone_could_have_put_there_is_trusted_only_from_our_user_or_root() {
        let tmp = Path::new("/tmp");
        // A directory others may write to: only our user and root.
        for peer in [1000, 0] {
            assert_eq!(trusted(peer, 1000, 0o41777, tmp), Ok(()), "{peer}");
        }
        assert_eq!(trusted(0, 0, 0o40777, tmp), Ok(()));
        let refused = trusted(65534, 0, 0o41777, tmp).unwrap_err();
        assert_eq!(
            refused,
            "the process answering on it runs as uid 65534, which is neither yours (0) nor root, \
             and anyone may create files in /tmp: not trusting its answer; put the control \
             socket in a directory that only the service's user can write, such as /run/app/, \
             or run this as the service's user"
        );
        assert!(trusted(1001, 1000, 0o40777, tmp).is_err());
        assert!(trusted(1001, 1000, 0o40703, tmp).is_err());
        // Writable by its owner and group only: whoever owns it put the
        // socket there (systemd's RuntimeDirectory=, /run/app/).
        for mode in [0o40755, 0o40775, 0o40700, 0o41775, 0o40000] {
            assert_eq!(
                trusted(65534, 0, mode, Path::new("/run/app")),
                Ok(()),
                "{mode:o}"
            );
        }
    }

    #[test]
    fn the_peers_user_is_the_kernels_word() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        assert_eq!(
            peer_uid(&ours, Path::new("unnamed")),
            Ok(nix::unistd::geteuid().as_raw())
        );
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_named_as_such_and_not_as_a_service_down() {
        let dir = std::env::temp_dir().join(format!("graceful-ctl-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("dir")).unwrap();
        std::fs::write(dir.join("app.pid"), "123\n").unwrap();
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let reason = |path: &Path| match connect(path) {
            Err(Error::Control { socket, reason }) => {
                assert_eq!(socket, path);
                reason
            }
            other => panic!("{path:?}: {other:?}"),
        };
        assert_eq!(
            reason(&dir.join("app.pid")),
            "not a socket but a regular file: give the path of the service's control socket"
        );
        assert!(reason(&dir.join("dir")).starts_with("not a socket but a directory: "));
        assert!(reason(Path::new("/dev/null")).starts_with("not a socket but a device: "));
        assert_eq!(
            reason(&stale),
            "nothing answers on it: the service is not running"
        );
        assert!(reason(&dir.join("missing")).starts_with("no such socket"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
