//! The master's upgrade in place, the parts that touch the OS: blocking the
//! signals across the exec, the state pipe, opening the new worker's
//! executable once, asking that file to read the state (its check role)
//! before the master commits to it, and the exec of that same file. What
//! the state holds is `state.rs`; when to upgrade is the core's decision;
//! the loop in the parent module puts it together.

use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal as NixSignal};

use crate::exec::Executable;
use crate::role::{ENV_MASTER_STATE, ENV_ROLE, ROLE_CHECK};
use crate::state::{MasterState, FORMAT};
use crate::{Error, Signal};

/// How long the new executable may take to read the state in its check
/// role. The master's loop waits for it, so it is short; a build that needs
/// longer keeps the current master, which says so.
pub(super) const CHECK_WAIT: Duration = Duration::from_secs(5);

/// The signals the master handles, blocked from before the state is taken
/// until the new image has installed its handlers (the mask survives
/// `execve`, and a blocked signal stays pending across it), or until the
/// old image carries on.
#[derive(Debug)]
pub(super) struct Blocked {
    set: SigSet,
}

/// `signals` and SIGCHLD.
fn set_of<'a>(signals: impl IntoIterator<Item = &'a Signal>) -> SigSet {
    let mut set = SigSet::empty();
    for signal in signals {
        set.add(signal.to_nix());
    }
    set.add(NixSignal::SIGCHLD);
    set
}

impl Blocked {
    pub(super) fn block(signals: &[Signal]) -> Blocked {
        let set = set_of(signals);
        // Cannot fail with a valid `how`.
        let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
        Blocked { set }
    }

    /// Unblocks them: pending ones are delivered now, to the handlers
    /// installed by then.
    pub(super) fn unblock(self) {
        let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&self.set), None);
    }
}

/// After an exec: unblocks every signal the previous image may have
/// blocked, once this image's handlers are installed.
pub(super) fn unblock_inherited(signals: &[Signal]) {
    let set = set_of(Signal::ALL.iter().chain(signals));
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
}

/// A pipe holding `bytes`, its write end closed: the reader gets the
/// bytes, then EOF. Close-on-exec; the caller passes it on explicitly.
pub(super) fn state_pipe(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe()?;
    for fd in [read.as_fd(), write.as_fd()] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if bytes.len() > 60 * 1024 {
        // The default pipe holds 64 KiB; a larger state needs a larger pipe
        // (up to /proc/sys/fs/pipe-max-size), or it cannot be written here
        // without a reader.
        let size = nix::libc::c_int::try_from(bytes.len() + 4096).unwrap_or(nix::libc::c_int::MAX);
        fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(size))?;
    }
    crate::fd::set_nonblocking(write.as_fd())?;
    let mut file = std::fs::File::from(write);
    file.write_all(bytes).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "the state ({} bytes) does not fit in a pipe: {e}",
                bytes.len()
            ),
        )
    })?;
    Ok(read)
}

/// The executable at `executable`'s path, opened once: the check runs this
/// file and the exec executes it, so a build written to the path in
/// between is not run unchecked (it waits for the next reload). Where the
/// exec cannot take a descriptor, [`exec`] checks that the path still
/// leads to this file. On Linux the master opens its new worker's file
/// instead ([`open_run_by`]), and this path only where it cannot.
fn open(executable: &Executable) -> Result<OwnedFd, String> {
    use nix::fcntl::OFlag;
    // O_PATH: execute permission is enough, as for execve.
    #[cfg(target_os = "linux")]
    let flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    #[cfg(not(target_os = "linux"))]
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    nix::fcntl::open(executable.path(), flags, nix::sys::stat::Mode::empty())
        .map_err(|e| format!("cannot open {}: {}", executable.path().display(), e.desc()))
}

/// The executable worker `pid` runs, opened (`/proc/PID/exe`): the very
/// file it was started from, even if a newer build has been written to the
/// path since, or the file deleted, so that the master becomes the build
/// that has just proved itself ready, not whatever the path holds by then.
/// Fails where the worker's executable cannot be read: a worker that
/// changed its user, for a master without `CAP_SYS_PTRACE` (root in a
/// container, by default).
#[cfg(target_os = "linux")]
fn open_run_by(pid: u32) -> Result<OwnedFd, String> {
    use nix::fcntl::OFlag;
    let link = format!("/proc/{pid}/exe");
    nix::fcntl::open(
        link.as_str(),
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("cannot open {link}: {}", e.desc()))
}

/// The build worker `generation` (process `worker`, while the master knows
/// it) runs, opened once, so that what is checked is what is executed: on
/// Linux the very file the worker runs ([`open_run_by`]), so that a build
/// written to the path since it started waits for the next reload; where
/// that cannot be opened, the master says so and opens the path
/// ([`open`]), as it does on other systems.
pub(super) fn open_build_of(
    executable: &Executable,
    generation: u64,
    worker: Option<u32>,
) -> Result<OwnedFd, String> {
    #[cfg(target_os = "linux")]
    if let Some(pid) = worker {
        match open_run_by(pid) {
            Ok(file) => return Ok(file),
            Err(why) => crate::log::log!(
                "{why}; the master upgrades into the file at {} instead of worker {generation}'s",
                executable.path().display()
            ),
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (generation, worker);
    open(executable)
}

/// The path that runs `file` in a child, which inherits it: the descriptor
/// itself where the OS names it so.
fn program_of(executable: &Executable, file: &OwnedFd) -> std::path::PathBuf {
    if cfg!(target_os = "linux") {
        format!("/proc/self/fd/{}", file.as_raw_fd()).into()
    } else {
        executable.path().to_path_buf()
    }
}

/// Runs `file` (opened by [`open`]) in its check role on the state `bytes`:
/// `Ok` once it answered that it reads it, or why not (its answer, its
/// exit, or no answer within [`CHECK_WAIT`], after which it is killed). The
/// child is reaped here.
pub(super) fn check(executable: &Executable, file: &OwnedFd, bytes: &[u8]) -> Result<(), String> {
    let pipe = state_pipe(bytes).map_err(|e| format!("cannot pass it the state: {e}"))?;
    let raw = pipe.as_raw_fd();
    // Inherited, so that a script run by its descriptor can be read by its
    // interpreter.
    let program = file.as_raw_fd();
    let mut command = executable.command_at(program_of(executable, file));
    command
        .env(ENV_MASTER_STATE, raw.to_string())
        .env(ENV_ROLE, ROLE_CHECK)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let ignored: Vec<i32> = Signal::ALL.iter().map(|s| s.number()).collect();
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (fcntl, signal), on memory allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            for fd in [raw, program] {
                if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // A signal to the service's process group is the master's
            // business, not the check's.
            for &sig in &ignored {
                nix::libc::signal(sig, nix::libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", executable.path().display()))?;
    drop(pipe);
    let answer = child
        .stdout
        .take()
        .map(|out| read_bounded(out.into(), Instant::now() + CHECK_WAIT));
    let status = match answer {
        Some(Err(why)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(why);
        }
        _ => child
            .wait()
            .map_err(|e| format!("cannot wait for the check: {e}"))?,
    };
    let answer = answer.and_then(Result::ok).unwrap_or_default();
    let answer = answer.trim();
    match answer.strip_prefix("ok ") {
        Some(format) if status.success() && format == FORMAT.to_string() => Ok(()),
        _ if answer.is_empty() => Err(format!("its check {}", describe(status))),
        _ => Err(answer.strip_prefix("error ").unwrap_or(answer).to_string()),
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code} and no answer"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended with no answer".to_string(),
    }
}

/// Reads `fd` to EOF (at most 64 KiB), until `deadline`.
fn read_bounded(fd: OwnedFd, deadline: Instant) -> Result<String, String> {
    crate::fd::set_nonblocking(fd.as_fd()).map_err(|e| e.to_string())?;
    let mut file = std::fs::File::from(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("it did not answer within {CHECK_WAIT:?}"));
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("cannot wait for its answer: {e}")),
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if out.len() + n <= 64 * 1024 => out.extend_from_slice(&buf[..n]),
            Ok(_) => return Err("its answer is too long".into()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read its answer: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Re-executes this process as `file` (opened by [`open`] from
/// `executable`'s path, and checked) with `executable`'s arguments and the
/// state on `pipe`, passing `carried` (and the pipe) across: their
/// close-on-exec flags are cleared just before, and set again if the exec
/// fails. Returns only on failure, with the reason.
pub(super) fn exec(
    executable: &Executable,
    file: &OwnedFd,
    pipe: &OwnedFd,
    carried: &[RawFd],
) -> String {
    let cstring = |bytes: &[u8]| CString::new(bytes).map_err(|_| "a NUL byte".to_string());
    let built = (|| -> Result<(Vec<CString>, Vec<CString>), String> {
        let argv = executable
            .argv()
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| k != ENV_MASTER_STATE && k != ENV_ROLE)
            .map(|(k, v)| cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<Result<_, _>>()?;
        env.push(cstring(
            format!("{ENV_MASTER_STATE}={}", pipe.as_raw_fd()).as_bytes(),
        )?);
        Ok((argv, env))
    })();
    let (argv, env) = match built {
        Ok(built) => built,
        Err(why) => return format!("cannot build its command line: {why}"),
    };
    let all: Vec<RawFd> = carried.iter().copied().chain([pipe.as_raw_fd()]).collect();
    let set = |flag: FdFlag| {
        for &fd in &all {
            // SAFETY: each descriptor is one this master owns and keeps
            // open for the whole call.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let _ = fcntl(fd, FcntlArg::F_SETFD(flag));
        }
    };
    #[cfg(not(target_os = "linux"))]
    let path = match still_at(executable.path(), file) {
        Ok(path) => path,
        Err(why) => return why,
    };
    set(FdFlag::empty());
    #[cfg(target_os = "linux")]
    let error = nix::unistd::fexecve(file, &argv, &env).unwrap_err();
    #[cfg(not(target_os = "linux"))]
    let error = nix::unistd::execve(&path, &argv, &env).unwrap_err();
    set(FdFlag::FD_CLOEXEC);
    let shown = executable.path().display();
    #[cfg(target_os = "linux")]
    if error == nix::errno::Errno::ENOENT {
        // The file is open, so it exists: a script, whose interpreter
        // cannot read a descriptor closed by the exec.
        return format!(
            "cannot execute {shown} from its descriptor ({error}): the executable must be the \
             program itself, not a script"
        );
    }
    format!("cannot execute {shown}: {error}")
}

/// After an exec from a descriptor: names this process after its
/// executable's file (at most 15 bytes), as an exec of the path does, for
/// `ps` and `top`. Kernels before 6.14 name it after the descriptor's
/// number.
#[cfg(target_os = "linux")]
pub(super) fn name_after(executable: &Executable) {
    if let Some(name) = executable.path().file_name() {
        let name = &name.as_bytes()[..name.len().min(15)];
        if let Ok(name) = CString::new(name) {
            let _ = nix::sys::prctl::set_name(&name);
        }
    }
}

/// `path`, for an exec that takes a path, if it still leads to `file`.
#[cfg(not(target_os = "linux"))]
fn still_at(path: &std::path::Path, file: &OwnedFd) -> Result<CString, String> {
    let opened = nix::sys::stat::fstat(file).map_err(|e| format!("cannot stat it: {e}"))?;
    match nix::sys::stat::stat(path) {
        Ok(now) if (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino) => {
            CString::new(path.as_os_str().as_bytes())
                .map_err(|_| format!("{} holds a NUL byte", path.display()))
        }
        Ok(_) => Err(format!(
            "{} was replaced after its check; the next reload tries the new file",
            path.display()
        )),
        Err(e) => Err(format!("cannot stat {}: {e}", path.display())),
    }
}

/// The check role: reads the state on `pipe`, and answers on stdout `ok
/// FORMAT` if this build can take it over, or `error REASON`. The options
/// of this build were validated before the role was known, so a build
/// whose options are invalid fails here too, with that error.
pub(crate) fn check_state(pipe: OwnedFd) -> Result<(), Error> {
    let answer = read_state(pipe);
    let mut out = std::io::stdout().lock();
    match answer {
        Ok(_) => {
            // The master compares this with the format it wrote, which is
            // this build's own as long as it reads one format. A build that
            // reads more than one must answer the format of the state it
            // read, or the masters of this version refuse to upgrade into it.
            let _ = writeln!(out, "ok {FORMAT}");
            Ok(())
        }
        Err(why) => {
            let _ = writeln!(out, "error {why}");
            Err(Error::StartFailed { reason: why })
        }
    }
}

/// Reads the state on `pipe`: for the image that resumes from it, and for
/// the check role.
pub(super) fn read_state(pipe: OwnedFd) -> Result<MasterState, String> {
    let mut bytes = Vec::new();
    std::fs::File::from(pipe)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the state: {e}"))?;
    MasterState::decode(&bytes).map_err(|e| e.to_string())
}

/// An OS string as bytes, for the state.
pub(super) fn bytes(text: &OsStr) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// An optional path from the state.
pub(super) fn path(bytes: &Option<Vec<u8>>) -> Option<std::path::PathBuf> {
    bytes.clone().map(|b| os(b).into())
}

/// Bytes from the state as an OS string.
pub(super) fn os(bytes: Vec<u8>) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the check of a script whose body is `body`, opened before it
    /// is replaced by `then` (if any).
    fn check_script(name: &str, body: &str, then: Option<&str>) -> Result<(), String> {
        let dir =
            std::env::temp_dir().join(format!("graceful-check-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Written by a child process: a descriptor open for writing in
        // this process could be inherited by another test's fork and make
        // the exec fail with ETXTBSY.
        let write = |path: &std::path::Path, body: &str| {
            let status = std::process::Command::new("sh")
                .args([
                    "-c",
                    "printf '#!/bin/sh\n%s\n' \"$1\" > \"$2\" && chmod 755 \"$2\"",
                ])
                .arg("sh")
                .arg(body)
                .arg(path)
                .status()
                .unwrap();
            assert!(status.success());
        };
        let app = dir.join("app");
        write(&app, body);
        let executable = Executable::from_parts(app.clone(), vec![app.clone().into()]);
        let file = open(&executable).unwrap();
        if let Some(then) = then {
            let staged = dir.join("app.new");
            write(&staged, then);
            std::fs::rename(&staged, &app).unwrap();
        }
        let answer = check(&executable, &file, b"state");
        std::fs::remove_dir_all(&dir).unwrap();
        answer
    }

    #[test]
    fn the_check_runs_the_file_opened_even_a_script_and_reports_its_answer() {
        let ok = format!("echo ok {FORMAT}");
        assert_eq!(check_script("ok", &ok, None), Ok(()));
        assert_eq!(
            check_script("refuses", "echo 'error cannot read it'; exit 1", None),
            Err("cannot read it".to_string())
        );
        assert_eq!(
            check_script("exits", "exit 3", None),
            Err("its check exited with status 3 and no answer".to_string())
        );
        // Replaced after it was opened: the opened file is what runs.
        #[cfg(target_os = "linux")]
        assert_eq!(check_script("replaced", &ok, Some("exit 3")), Ok(()));
        #[cfg(target_os = "linux")]
        assert_eq!(
            check_script("replaced-broken", "exit 3", Some(&ok)),
            Err("its check exited with status 3 and no answer".to_string())
        );
    }

    #[test]
    fn a_missing_executable_is_named() {
        let path = std::env::temp_dir().join(format!("graceful-missing-{}", std::process::id()));
        let executable = Executable::from_parts(path.clone(), vec![]);
        assert_eq!(
            open(&executable).unwrap_err(),
            format!("cannot open {}: No such file or directory", path.display())
        );
    }
}
