//! Descriptor flags: close-on-exec and non-blocking mode.

use std::io;
use std::os::fd::BorrowedFd;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};

/// Sets `FD_CLOEXEC`: the descriptor is not passed on to programs this
/// process executes.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Sets `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
