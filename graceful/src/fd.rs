//! Descriptors: close-on-exec and non-blocking flags, and the limit on how
//! many a process may open.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};

/// Sets `FD_CLOEXEC`: the descriptor is not passed on to programs this
/// process executes.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Takes a descriptor that the previous image of this process (a master
/// before its exec) passed across `execve` under one entry of its state:
/// `check` inspects it while it is only borrowed and says what it is, or why
/// it is not what the state names; only then is it owned, and made
/// close-on-exec again.
pub(crate) fn take_carried<T>(
    fd: RawFd,
    check: impl FnOnce(BorrowedFd<'_>) -> Result<T, String>,
) -> Result<(OwnedFd, T), String> {
    if fd < 3 {
        return Err(format!("descriptor {fd} is stdio"));
    }
    // SAFETY: borrowed only to inspect it; taken below once it passed.
    let what = check(unsafe { BorrowedFd::borrow_raw(fd) })?;
    // SAFETY: the previous image held this descriptor under one entry of its
    // state (each descriptor is named once, checked when the state was
    // decoded) and passed it across exec to this image alone; `check` found
    // it open and of the kind the entry names.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd()).map_err(|e| format!("descriptor {fd}: {e}"))?;
    Ok((owned, what))
}

/// Sets `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The soft limit on open descriptors: how many this process may have.
pub(crate) fn open_file_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, Resource};
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raises the soft limit on open descriptors to the hard limit, as Go's
/// runtime does: the soft limit many systems start services with (1024) is
/// what a few hundred idle clients exhaust. Returns the limits before and
/// after when it changed them.
pub(crate) fn raise_open_file_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return None;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    Some((soft, hard))
}
