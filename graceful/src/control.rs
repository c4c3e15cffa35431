//! The control channel between the master and one worker.
//!
//! One `socketpair(AF_UNIX, SOCK_SEQPACKET)` per worker: message boundaries are
//! kept, file descriptors travel as `SCM_RIGHTS`, and EOF tells either side
//! that the other is gone, with no polling. A message is one tag byte followed
//! by UTF-8 text.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// Largest message either side sends (addresses and failure reasons).
const MAX_MESSAGE: usize = 16 * 1024;

/// Worker to master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToMaster {
    /// Give me the listener for this address (canonical form).
    Listen(String),
    /// Every listener accepts and `main` returned successfully.
    Ready,
    /// The start failed; the worker exits next.
    Failed(String),
    /// `graceful::reload()` was called.
    Reload,
}

/// Master to worker.
#[derive(Debug)]
pub(crate) enum ToWorker {
    /// The listener asked for, and the address it is bound to.
    Listener(OwnedFd, String),
    /// The listener asked for could not be had.
    ListenError(String),
    /// Drain and exit.
    Stop,
}

/// Creates the pair: (master's end, worker's end). Both are CLOEXEC; the
/// master clears the flag on the worker's end in the child only.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let flags = SockFlag::SOCK_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let flags = SockFlag::empty();
    let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags)?;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    for fd in [&a, &b] {
        set_cloexec(fd.as_raw_fd())?;
    }
    Ok((a, b))
}

pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // SAFETY: the caller owns `fd` for the duration of the call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

fn send_flags() -> MsgFlags {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return MsgFlags::MSG_NOSIGNAL;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return MsgFlags::empty();
}

fn send_raw(fd: BorrowedFd<'_>, tag: u8, text: &str, pass: Option<RawFd>) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(1 + text.len());
    bytes.push(tag);
    bytes.extend_from_slice(&text.as_bytes()[..text.len().min(MAX_MESSAGE - 1)]);
    let iov = [IoSlice::new(&bytes)];
    let fds;
    let cmsgs: &[ControlMessage<'_>] = match pass {
        Some(fd) => {
            fds = [fd];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    loop {
        match sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, send_flags(), None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One received message: tag, text, and the descriptor that came with it.
type Raw = (u8, String, Option<OwnedFd>);

/// Receives one message; `Ok(None)` is EOF (the peer is gone).
fn recv_raw(fd: BorrowedFd<'_>) -> io::Result<Option<Raw>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let flags = MsgFlags::MSG_CMSG_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let flags = MsgFlags::empty();
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Ok(msg) => {
                let mut fds: Vec<OwnedFd> = Vec::new();
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(list) = c {
                        for raw in list {
                            // SAFETY: the kernel just installed `raw` in this
                            // process for us; nothing else refers to it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                        }
                    }
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    for fd in &fds {
        set_cloexec(fd.as_raw_fd())?;
    }
    let text = String::from_utf8(buf[1..len].to_vec())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "control message is not UTF-8"))?;
    Ok(Some((buf[0], text, fds.into_iter().next())))
}

fn invalid(tag: u8) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unknown control message tag {tag:#04x}"),
    )
}

pub(crate) fn send_to_master(fd: BorrowedFd<'_>, msg: &ToMaster) -> io::Result<()> {
    match msg {
        ToMaster::Listen(addr) => send_raw(fd, b'L', addr, None),
        ToMaster::Ready => send_raw(fd, b'R', "", None),
        ToMaster::Failed(reason) => send_raw(fd, b'F', reason, None),
        ToMaster::Reload => send_raw(fd, b'H', "", None),
    }
}

pub(crate) fn recv_from_worker(fd: BorrowedFd<'_>) -> io::Result<Option<ToMaster>> {
    let Some((tag, text, _stray_fd)) = recv_raw(fd)? else {
        return Ok(None);
    };
    Ok(Some(match tag {
        b'L' => ToMaster::Listen(text),
        b'R' => ToMaster::Ready,
        b'F' => ToMaster::Failed(text),
        b'H' => ToMaster::Reload,
        other => return Err(invalid(other)),
    }))
}

pub(crate) fn send_listener(
    fd: BorrowedFd<'_>,
    listener: BorrowedFd<'_>,
    local: &str,
) -> io::Result<()> {
    send_raw(fd, b'O', local, Some(listener.as_raw_fd()))
}

pub(crate) fn send_listen_error(fd: BorrowedFd<'_>, reason: &str) -> io::Result<()> {
    send_raw(fd, b'E', reason, None)
}

pub(crate) fn send_stop(fd: BorrowedFd<'_>) -> io::Result<()> {
    send_raw(fd, b'S', "", None)
}

pub(crate) fn recv_from_master(fd: BorrowedFd<'_>) -> io::Result<Option<ToWorker>> {
    let Some((tag, text, passed)) = recv_raw(fd)? else {
        return Ok(None);
    };
    Ok(Some(match (tag, passed) {
        (b'O', Some(listener)) => ToWorker::Listener(listener, text),
        (b'O', None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "listener message without a file descriptor",
            ))
        }
        (b'E', _) => ToWorker::ListenError(text),
        (b'S', _) => ToWorker::Stop,
        (other, _) => return Err(invalid(other)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_descriptors_cross_the_pair() {
        let (master, worker) = pair().unwrap();
        send_to_master(worker.as_fd(), &ToMaster::Listen("127.0.0.1:0".into())).unwrap();
        send_to_master(worker.as_fd(), &ToMaster::Ready).unwrap();
        assert_eq!(
            recv_from_worker(master.as_fd()).unwrap(),
            Some(ToMaster::Listen("127.0.0.1:0".into()))
        );
        assert_eq!(
            recv_from_worker(master.as_fd()).unwrap(),
            Some(ToMaster::Ready)
        );

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fd: OwnedFd = listener.into();
        send_listener(master.as_fd(), fd.as_fd(), "x").unwrap();
        match recv_from_master(worker.as_fd()).unwrap() {
            Some(ToWorker::Listener(fd, local)) => {
                assert_eq!(local, "x");
                let got = std::net::TcpListener::from(fd);
                assert_eq!(got.local_addr().unwrap().port(), port);
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(master);
        assert!(
            recv_from_master(worker.as_fd()).unwrap().is_none(),
            "EOF after the peer closes"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        let (master, worker) = pair().unwrap();
        send_raw(worker.as_fd(), b'?', "", None).unwrap();
        assert!(recv_from_worker(master.as_fd()).is_err());
    }
}
