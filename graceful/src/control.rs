//! The control channel between a process and the one it started (the master
//! and a worker, or a single-mode process and its successor): the typed
//! messages in each direction, their encoding, and the socket they cross.
//!
//! One `socketpair(AF_UNIX, SOCK_SEQPACKET)` per child: message boundaries
//! are kept, file descriptors travel as `SCM_RIGHTS`, and EOF tells either
//! side that the other is gone, with no polling. A message is one tag byte
//! and a payload that depends on the tag.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::addr::{ListenAddr, ListenRequest};
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
use crate::fd::set_cloexec;
use crate::fd::set_nonblocking;
use crate::status::Outcome;

/// Largest message either side sends (addresses and failure reasons).
const MAX_MESSAGE: usize = 16 * 1024;

/// Child to parent: a worker to its master, or a successor to its
/// predecessor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToMaster {
    /// Give me the listener for this address.
    Listen(ListenRequest),
    /// Every listener accepts and `main` returned successfully; with what
    /// the worker's build can take over, when its master asked (a build
    /// older than master upgrades sends none).
    Ready(Option<Readiness>),
    /// The start failed, for this reason; the child exits next.
    Failed(String),
    /// `graceful::reload()` was called; the outcome is answered with
    /// `Reloaded`.
    Reload,
    /// The answer to `Check`, from the runtime: it runs, with this many
    /// connections open.
    Alive { check: u64, connections: u64 },
    /// Told to stop, this worker no longer accepts: every accept loop has
    /// ended and dropped its listener, so new connections go to the others.
    StoppedAccepting,
    /// The drain is over: this many connections ended in it, this many
    /// were cut at `stop_timeout`. Sent only to a master that counts them.
    Drained { drained: u64, cut: u64 },
    /// `graceful::metrics` was asked: the master answers with `Metrics`.
    Metrics,
    /// The application's build (`version`), sent before `Ready` to a
    /// master that shows it (`GRACEFUL_MASTER_BUILDS`).
    Build(String),
    /// This worker's build reads a reload's outcome that names the new
    /// build (`Reloaded` with one); sent before `Ready` to a master that
    /// sends such outcomes (`GRACEFUL_MASTER_BUILDS` 2 or more). A master
    /// answers any other worker without the build, which an older build's
    /// decoder would refuse.
    TakesBuilds,
}

/// What a ready worker's build can take over from its master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// The master state formats it reads, oldest and newest.
    pub(crate) reads: (u32, u32),
    /// Its graceful version.
    pub(crate) version: String,
}

/// Parent to child. `Fd` is the listener: borrowed when sent, owned when
/// received.
#[derive(Debug)]
pub(crate) enum ToWorker<Fd> {
    /// The listener asked for.
    Listener(Fd),
    /// The listener asked for could not be had, for this reason.
    ListenError(String),
    /// Drain and exit.
    Stop,
    /// The service is stopping, and this worker serves on for the
    /// `shutdown_delay`: health checks are told it is not ready.
    LameDuck,
    /// Answer with `Alive` from the runtime.
    Check(u64),
    /// How the reload this process asked for ended.
    Reloaded(Outcome),
    /// The answer to `Metrics`: the service's metrics, as text.
    Metrics(String),
}

/// Why received bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("empty control message")]
    Empty,
    #[error("unknown control message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("control message {tag:?} is malformed: {why}")]
    Malformed { tag: char, why: String },
    #[error("listener message without a file descriptor")]
    MissingDescriptor,
}

const LISTEN: u8 = b'L';
const READY: u8 = b'R';
const FAILED: u8 = b'F';
const RELOAD: u8 = b'H';
const LISTENER: u8 = b'O';
const LISTEN_ERROR: u8 = b'E';
const STOP: u8 = b'S';
const ALIVE: u8 = b'A';
const CHECK: u8 = b'C';
const RELOADED: u8 = b'D';
const STOPPED_ACCEPTING: u8 = b'N';
const LAME_DUCK: u8 = b'K';
const DRAINED: u8 = b'X';
const METRICS: u8 = b'M';
const BUILD: u8 = b'B';
const TAKES_BUILDS: u8 = b'T';

/// A message as it is sent.
pub(crate) trait Encode {
    /// The bytes, and the descriptor that goes with them.
    fn encode(&self) -> (Vec<u8>, Option<BorrowedFd<'_>>);
}

/// A message as it is received.
pub(crate) trait Decode: Sized {
    /// The message in `bytes`, with the descriptor that came with them (a
    /// descriptor the message does not expect is closed).
    fn decode(bytes: &[u8], fd: Option<OwnedFd>) -> Result<Self, DecodeError>;
}

/// `tag` followed by `text`, cut at a character boundary so that the message
/// fits and stays valid UTF-8.
fn tagged(tag: u8, text: &str) -> Vec<u8> {
    let mut end = text.len().min(MAX_MESSAGE - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut bytes = Vec::with_capacity(1 + end);
    bytes.push(tag);
    bytes.extend_from_slice(&text.as_bytes()[..end]);
    bytes
}

/// A human-readable reason: invalid UTF-8 is replaced, never a reason to
/// lose the text.
fn reason(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

/// A big-endian `u64` at the start of `payload`, and the rest.
fn be_u64(tag: u8, payload: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
    match payload.split_first_chunk::<8>() {
        Some((bytes, rest)) => Ok((u64::from_be_bytes(*bytes), rest)),
        None => Err(DecodeError::Malformed {
            tag: char::from(tag),
            why: format!("{} byte(s) where a number of 8 was expected", payload.len()),
        }),
    }
}

fn no_payload<M>(tag: u8, payload: &[u8], message: M) -> Result<M, DecodeError> {
    if payload.is_empty() {
        Ok(message)
    } else {
        Err(DecodeError::Malformed {
            tag: char::from(tag),
            why: format!("{} unexpected byte(s)", payload.len()),
        })
    }
}

impl Encode for ToMaster {
    fn encode(&self) -> (Vec<u8>, Option<BorrowedFd<'_>>) {
        let bytes = match self {
            ToMaster::Listen(request) => {
                // Tag, then a 0/1 byte and 4 bytes of mode, then the address.
                let mut bytes = vec![LISTEN, u8::from(request.unix_mode.is_some())];
                bytes.extend_from_slice(&request.unix_mode.unwrap_or(0).to_be_bytes());
                bytes.extend_from_slice(request.addr.to_string().as_bytes());
                bytes
            }
            ToMaster::Ready(None) => vec![READY],
            ToMaster::Ready(Some(readiness)) => {
                // Tag, the oldest and newest format (u32 BE each), the version.
                let mut bytes = vec![READY];
                bytes.extend_from_slice(&readiness.reads.0.to_be_bytes());
                bytes.extend_from_slice(&readiness.reads.1.to_be_bytes());
                bytes.extend_from_slice(&tagged(READY, &readiness.version)[1..]);
                bytes
            }
            ToMaster::Failed(why) => tagged(FAILED, why),
            ToMaster::Reload => vec![RELOAD],
            ToMaster::StoppedAccepting => vec![STOPPED_ACCEPTING],
            ToMaster::Drained { drained, cut } => {
                let mut bytes = vec![DRAINED];
                bytes.extend_from_slice(&drained.to_be_bytes());
                bytes.extend_from_slice(&cut.to_be_bytes());
                bytes
            }
            ToMaster::Metrics => vec![METRICS],
            ToMaster::Build(build) => tagged(BUILD, build),
            ToMaster::TakesBuilds => vec![TAKES_BUILDS],
            ToMaster::Alive { check, connections } => {
                let mut bytes = vec![ALIVE];
                bytes.extend_from_slice(&check.to_be_bytes());
                bytes.extend_from_slice(&connections.to_be_bytes());
                bytes
            }
        };
        (bytes, None)
    }
}

impl Decode for ToMaster {
    fn decode(bytes: &[u8], _stray: Option<OwnedFd>) -> Result<ToMaster, DecodeError> {
        let (&tag, payload) = bytes.split_first().ok_or(DecodeError::Empty)?;
        match tag {
            LISTEN => {
                let malformed = |why: String| DecodeError::Malformed { tag: 'L', why };
                let Some((&[has_mode, m0, m1, m2, m3], addr)) = payload.split_first_chunk::<5>()
                else {
                    return Err(malformed("shorter than its header".into()));
                };
                let unix_mode = match has_mode {
                    0 => None,
                    1 => Some(u32::from_be_bytes([m0, m1, m2, m3])),
                    other => return Err(malformed(format!("mode flag {other}"))),
                };
                let addr = std::str::from_utf8(addr)
                    .map_err(|_| malformed("the address is not UTF-8".into()))?;
                let addr = ListenAddr::parse(addr).map_err(|e| malformed(e.to_string()))?;
                Ok(ToMaster::Listen(ListenRequest { addr, unix_mode }))
            }
            READY if payload.is_empty() => Ok(ToMaster::Ready(None)),
            READY => {
                let Some((&[a0, a1, a2, a3, b0, b1, b2, b3], version)) =
                    payload.split_first_chunk::<8>()
                else {
                    return Err(DecodeError::Malformed {
                        tag: 'R',
                        why: format!("{} byte(s) where formats of 8 were expected", payload.len()),
                    });
                };
                Ok(ToMaster::Ready(Some(Readiness {
                    reads: (
                        u32::from_be_bytes([a0, a1, a2, a3]),
                        u32::from_be_bytes([b0, b1, b2, b3]),
                    ),
                    version: reason(version),
                })))
            }
            FAILED => Ok(ToMaster::Failed(reason(payload))),
            RELOAD => no_payload(tag, payload, ToMaster::Reload),
            STOPPED_ACCEPTING => no_payload(tag, payload, ToMaster::StoppedAccepting),
            DRAINED => {
                let (drained, rest) = be_u64(tag, payload)?;
                let (cut, rest) = be_u64(tag, rest)?;
                no_payload(tag, rest, ToMaster::Drained { drained, cut })
            }
            METRICS => no_payload(tag, payload, ToMaster::Metrics),
            // Shown on a line of the status and the log: one line of text,
            // cut to the `version` option's length, so that a worker (which
            // may serve as a less trusted user) cannot swell every status,
            // metrics page and log line that names it.
            BUILD => match std::str::from_utf8(payload) {
                Ok(build) if !build.is_empty() && !build.contains(char::is_control) => {
                    let mut build = build.to_string();
                    crate::log::cut(&mut build, crate::config::MAX_VERSION);
                    Ok(ToMaster::Build(build))
                }
                _ => Err(DecodeError::Malformed {
                    tag: 'B',
                    why: "not one line of text".into(),
                }),
            },
            TAKES_BUILDS => no_payload(tag, payload, ToMaster::TakesBuilds),
            ALIVE => {
                let (check, rest) = be_u64(tag, payload)?;
                let (connections, rest) = be_u64(tag, rest)?;
                no_payload(tag, rest, ToMaster::Alive { check, connections })
            }
            other => Err(DecodeError::UnknownTag(other)),
        }
    }
}

impl Encode for ToWorker<BorrowedFd<'_>> {
    fn encode(&self) -> (Vec<u8>, Option<BorrowedFd<'_>>) {
        match self {
            ToWorker::Listener(fd) => (vec![LISTENER], Some(*fd)),
            ToWorker::ListenError(why) => (tagged(LISTEN_ERROR, why), None),
            ToWorker::Stop => (vec![STOP], None),
            ToWorker::LameDuck => (vec![LAME_DUCK], None),
            ToWorker::Metrics(text) => (tagged(METRICS, text), None),
            ToWorker::Check(check) => {
                let mut bytes = vec![CHECK];
                bytes.extend_from_slice(&check.to_be_bytes());
                (bytes, None)
            }
            // With the build only where the master was told the worker
            // reads it (`TakesBuilds`): an older build's decoder takes
            // flag 1 and its three numbers, no more.
            ToWorker::Reloaded(Outcome::Reloaded {
                generation,
                pid,
                took,
                build,
            }) => {
                // 1, or 2 with the build after them; then the generation,
                // the PID and the milliseconds.
                let flag = if build.is_some() { 2 } else { 1 };
                let mut bytes = vec![RELOADED, flag];
                bytes.extend_from_slice(&generation.to_be_bytes());
                bytes.extend_from_slice(&pid.to_be_bytes());
                bytes.extend_from_slice(&crate::log::millis(*took).to_be_bytes());
                if let Some(build) = build {
                    bytes.extend_from_slice(&tagged(RELOADED, build)[1..]);
                }
                (bytes, None)
            }
            ToWorker::Reloaded(Outcome::Failed(why)) => {
                // 0, then the reason.
                (tagged(RELOADED, &format!("\0{why}")), None)
            }
        }
    }
}

impl Decode for ToWorker<OwnedFd> {
    fn decode(bytes: &[u8], fd: Option<OwnedFd>) -> Result<ToWorker<OwnedFd>, DecodeError> {
        let (&tag, payload) = bytes.split_first().ok_or(DecodeError::Empty)?;
        match tag {
            LISTENER => {
                let fd = fd.ok_or(DecodeError::MissingDescriptor)?;
                no_payload(tag, payload, ToWorker::Listener(fd))
            }
            LISTEN_ERROR => Ok(ToWorker::ListenError(reason(payload))),
            STOP => no_payload(tag, payload, ToWorker::Stop),
            LAME_DUCK => no_payload(tag, payload, ToWorker::LameDuck),
            METRICS => Ok(ToWorker::Metrics(reason(payload))),
            CHECK => {
                let (check, rest) = be_u64(tag, payload)?;
                no_payload(tag, rest, ToWorker::Check(check))
            }
            RELOADED => match payload.split_first() {
                Some((0, why)) => Ok(ToWorker::Reloaded(Outcome::Failed(reason(why)))),
                Some((&flag @ (1 | 2), rest)) => {
                    let (generation, rest) = be_u64(tag, rest)?;
                    let Some((pid, rest)) = rest.split_first_chunk::<4>() else {
                        return Err(DecodeError::Malformed {
                            tag: 'D',
                            why: "no PID".into(),
                        });
                    };
                    let (ms, rest) = be_u64(tag, rest)?;
                    // After flag 2's numbers, the build: one line of text.
                    let (build, rest) = match (flag, std::str::from_utf8(rest)) {
                        (1, _) => (None, rest),
                        (_, Ok(build))
                            if !build.is_empty() && !build.contains(char::is_control) =>
                        {
                            (Some(build.to_string()), &[][..])
                        }
                        _ => {
                            return Err(DecodeError::Malformed {
                                tag: 'D',
                                why: "the build is not one line of text".into(),
                            })
                        }
                    };
                    let outcome = Outcome::Reloaded {
                        generation,
                        pid: u32::from_be_bytes(*pid),
                        took: std::time::Duration::from_millis(ms),
                        build,
                    };
                    no_payload(tag, rest, ToWorker::Reloaded(outcome))
                }
                Some((other, _)) => Err(DecodeError::Malformed {
                    tag: 'D',
                    why: format!("outcome flag {other}"),
                }),
                None => Err(DecodeError::Malformed {
                    tag: 'D',
                    why: "no outcome".into(),
                }),
            },
            other => Err(DecodeError::UnknownTag(other)),
        }
    }
}

/// A parent's end of a channel carried across the master's exec: checked to
/// be a `SOCK_SEQPACKET` socket, owned and made close-on-exec again.
pub(crate) fn carried(fd: RawFd) -> Result<OwnedFd, String> {
    use nix::sys::socket::{getsockopt, sockopt};
    let (owned, ()) = crate::fd::take_carried(fd, |borrowed| {
        if getsockopt(&borrowed, sockopt::SockType) == Ok(SockType::SeqPacket) {
            Ok(())
        } else {
            Err(format!("descriptor {fd} is not a control channel"))
        }
    })?;
    Ok(owned)
}

/// Creates the pair: (parent's end, child's end). Both are close-on-exec;
/// the child's end is made inheritable in the child only, between fork and
/// exec.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let flags = SockFlag::SOCK_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let flags = SockFlag::empty();
    let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags)?;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    for fd in [&a, &b] {
        set_cloexec(fd.as_fd())?;
    }
    Ok((a, b))
}

fn send_flags() -> MsgFlags {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return MsgFlags::MSG_NOSIGNAL;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return MsgFlags::empty();
}

fn send_raw(fd: BorrowedFd<'_>, bytes: &[u8], pass: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let fds: Vec<RawFd> = pass.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, send_flags(), None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `message` on `fd`.
pub(crate) fn send<M: Encode>(fd: BorrowedFd<'_>, message: &M) -> io::Result<()> {
    let (bytes, pass) = message.encode();
    send_raw(fd, &bytes, pass)
}

/// Receives one message's bytes and descriptor; `Ok(None)` is EOF (the peer
/// is gone).
fn recv_raw(fd: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    // Room for the most descriptors one message can carry (Linux's
    // SCM_MAX_FD), so that the control data is never truncated: nix does not
    // hand out a truncated buffer's descriptors, which would then leak. Each
    // one is owned here and closed unless the message wants it.
    let mut cmsg = nix::cmsg_space!([RawFd; 253]);
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
        set_cloexec(fd.as_fd())?;
    }
    buf.truncate(len);
    // One descriptor per message; any more are closed here.
    Ok(Some((buf, fds.into_iter().next())))
}

/// Receives one message; `Ok(None)` is EOF. Bytes that are not a message
/// are an `InvalidData` error that says why.
pub(crate) fn recv<M: Decode>(fd: BorrowedFd<'_>) -> io::Result<Option<M>> {
    let Some((bytes, passed)) = recv_raw(fd)? else {
        return Ok(None);
    };
    M::decode(&bytes, passed)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// One end of a channel, on the async runtime: the only reader of a
/// serving process's control socket.
pub(crate) struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Channel").field(self.fd.get_ref()).finish()
    }
}

impl Channel {
    /// Takes `fd` onto the current runtime (non-blocking from here on).
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Channel> {
        set_nonblocking(fd.as_fd())?;
        // SAFETY: the AsyncFd owns the OwnedFd, which keeps the descriptor
        // open, and pointing at the same socket, for as long as it is
        // registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Channel { fd })
    }

    /// The socket, for a plain send from outside the runtime.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }

    /// Sends without waiting: messages are small, and the peer reads its
    /// end whenever it is readable.
    pub(crate) fn send<M: Encode>(&self, message: &M) -> io::Result<()> {
        send(self.fd.get_ref().as_fd(), message)
    }

    /// Waits for the next message; `Ok(None)` is EOF.
    pub(crate) async fn recv<M: Decode>(&self) -> io::Result<Option<M>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| recv(fd.get_ref().as_fd())) {
                Err(_would_block) => continue,
                Ok(result) => return result,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_seqpacket_socket_is_taken_as_a_carried_channel() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag};
        use std::os::fd::IntoRawFd;
        let pair = |kind| socketpair(AddressFamily::Unix, kind, None, SockFlag::empty()).unwrap();
        let (channel, _peer) = pair(SockType::SeqPacket);
        assert!(carried(channel.into_raw_fd()).is_ok());
        let (stream, _peer) = pair(SockType::Stream);
        let fd = stream.as_raw_fd();
        assert_eq!(
            carried(fd).unwrap_err(),
            format!("descriptor {fd} is not a control channel")
        );
    }

    fn listen(addr: &str, unix_mode: Option<u32>) -> ToMaster {
        ToMaster::Listen(ListenRequest {
            addr: ListenAddr::parse(addr).unwrap(),
            unix_mode,
        })
    }

    fn round_trip(message: &ToMaster) -> ToMaster {
        let (bytes, fd) = message.encode();
        assert!(fd.is_none());
        ToMaster::decode(&bytes, None).unwrap()
    }

    #[test]
    fn every_message_to_the_master_round_trips() {
        for message in [
            listen(":8080", None),
            listen("[::1]:0", None),
            listen("unix:/run/a b;c\td.sock", Some(0o660)),
            listen("systemd:web", None),
            ToMaster::Ready(None),
            ToMaster::Ready(Some(Readiness {
                reads: (1, u32::MAX),
                version: "0.1.0".into(),
            })),
            ToMaster::Ready(Some(Readiness {
                reads: (0, 0),
                version: String::new(),
            })),
            ToMaster::Failed("main panicked: wé".into()),
            ToMaster::Failed(String::new()),
            ToMaster::Reload,
            ToMaster::StoppedAccepting,
            ToMaster::Alive {
                check: u64::MAX,
                connections: 0,
            },
            ToMaster::Alive {
                check: 7,
                connections: 10_000,
            },
            ToMaster::Drained {
                drained: 12,
                cut: u64::MAX,
            },
            ToMaster::Metrics,
            ToMaster::Build("hello 1.4.2+wé".into()),
            ToMaster::TakesBuilds,
            listen("udp::5353", None),
            listen("unixgram:/run/log.sock", Some(0o666)),
        ] {
            assert_eq!(round_trip(&message), message);
        }
        // A drain report is two numbers, nothing less or more.
        for bytes in [&b"X"[..], &[b'X'; 9][..], &[b'X'; 18][..]] {
            assert!(ToMaster::decode(bytes, None).is_err(), "{bytes:?}");
        }
        assert!(ToMaster::decode(b"Mx", None).is_err());
        assert!(ToMaster::decode(b"T\x01", None).is_err());
        // A build longer than the option allows is cut, at a character.
        let long = [&b"B"[..], "é".repeat(60).as_bytes()].concat();
        assert_eq!(
            ToMaster::decode(&long, None).unwrap(),
            ToMaster::Build("é".repeat(50))
        );
        // A build is one line of text, not empty.
        for bytes in [&b"B"[..], b"B1.0\nready", b"B1.0\x1b[2J", b"B\xff"] {
            assert_eq!(
                ToMaster::decode(bytes, None),
                Err(DecodeError::Malformed {
                    tag: 'B',
                    why: "not one line of text".into()
                }),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn every_message_to_a_worker_without_a_descriptor_round_trips() {
        let round_trip = |message: ToWorker<BorrowedFd<'_>>| {
            let (bytes, fd) = message.encode();
            assert!(fd.is_none());
            ToWorker::<OwnedFd>::decode(&bytes, None).unwrap()
        };
        assert!(matches!(round_trip(ToWorker::Stop), ToWorker::Stop));
        assert!(matches!(round_trip(ToWorker::LameDuck), ToWorker::LameDuck));
        let text = "graceful_info{version=\"0.1.0\",pid=\"1\"} 1\n";
        assert!(matches!(
            round_trip(ToWorker::Metrics(text.into())),
            ToWorker::Metrics(got) if got == text
        ));
        assert!(matches!(
            round_trip(ToWorker::Check(u64::MAX - 1)),
            ToWorker::Check(n) if n == u64::MAX - 1
        ));
        assert!(matches!(
            round_trip(ToWorker::ListenError("in use".into())),
            ToWorker::ListenError(why) if why == "in use"
        ));
        for outcome in [
            Outcome::Reloaded {
                generation: 1 << 40,
                pid: u32::MAX,
                took: std::time::Duration::from_millis(1234),
                build: None,
            },
            Outcome::Reloaded {
                generation: 4,
                pid: 31207,
                took: std::time::Duration::from_millis(38),
                build: Some("app 1.4.2+wé".into()),
            },
            Outcome::Failed("worker 2 (pid 9) exited with status 3: é".into()),
            Outcome::Failed(String::new()),
        ] {
            match round_trip(ToWorker::Reloaded(outcome.clone())) {
                ToWorker::Reloaded(got) => assert_eq!(got, outcome),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn an_outcome_without_a_build_is_what_older_workers_read() {
        // Flag 1, the generation, the PID and the milliseconds, and nothing
        // after them: an older build's decoder refuses any more.
        let (bytes, _) = ToWorker::Reloaded(Outcome::Reloaded {
            generation: 2,
            pid: 7,
            took: std::time::Duration::from_millis(3),
            build: None,
        })
        .encode();
        assert_eq!(
            bytes,
            [
                &b"D\x01"[..],
                &2u64.to_be_bytes(),
                &7u32.to_be_bytes(),
                &3u64.to_be_bytes()
            ]
            .concat()
        );
        // With a build: flag 2, the same numbers, then the build, which is
        // one line of text and not empty.
        let numbers = [
            &2u64.to_be_bytes()[..],
            &7u32.to_be_bytes(),
            &3u64.to_be_bytes(),
        ]
        .concat();
        let with = |flag: &[u8], build: &[u8]| [&b"D"[..], flag, &numbers, build].concat();
        match ToWorker::<OwnedFd>::decode(&with(b"\x02", b"app 2"), None).unwrap() {
            ToWorker::Reloaded(Outcome::Reloaded { build, .. }) => {
                assert_eq!(build.as_deref(), Some("app 2"))
            }
            other => panic!("unexpected {other:?}"),
        }
        for build in [&b""[..], b"app\n2", b"\xff"] {
            assert_eq!(
                ToWorker::<OwnedFd>::decode(&with(b"\x02", build), None).unwrap_err(),
                DecodeError::Malformed {
                    tag: 'D',
                    why: "the build is not one line of text".into()
                },
                "{build:?}"
            );
        }
        assert!(matches!(
            ToWorker::<OwnedFd>::decode(&with(b"\x01", b"app 2"), None),
            Err(DecodeError::Malformed { tag: 'D', .. })
        ));
    }

    #[test]
    fn a_reason_under_16_kib_crosses_whole() {
        let reason = "r".repeat(10_000);
        assert_eq!(
            round_trip(&ToMaster::Failed(reason.clone())),
            ToMaster::Failed(reason)
        );
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        // 'é' is two bytes, at even offsets: 16 KiB less the tag byte is
        // odd, so the cut must step back one byte.
        let long = "é".repeat(MAX_MESSAGE);
        let (bytes, _) = ToMaster::Failed(long.clone()).encode();
        assert_eq!(bytes.len(), 16 * 1024 - 1);
        let ToMaster::Failed(got) = ToMaster::decode(&bytes, None).unwrap() else {
            panic!("not a failure");
        };
        assert!(
            long.starts_with(&got) && got.len() >= MAX_MESSAGE - 2,
            "{}",
            got.len()
        );
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        let decode = |bytes: &[u8]| ToMaster::decode(bytes, None).unwrap_err();
        assert_eq!(decode(b""), DecodeError::Empty);
        assert_eq!(decode(b"?"), DecodeError::UnknownTag(b'?'));
        assert_eq!(
            decode(b"Rx"),
            DecodeError::Malformed {
                tag: 'R',
                why: "1 byte(s) where formats of 8 were expected".into()
            }
        );
        assert_eq!(
            decode(b"N\0"),
            DecodeError::Malformed {
                tag: 'N',
                why: "1 unexpected byte(s)".into()
            }
        );
        assert!(matches!(
            decode(b"L\0\0"),
            DecodeError::Malformed { tag: 'L', .. }
        ));
        assert!(matches!(
            decode(b"L\x07\0\0\0\0:80"),
            DecodeError::Malformed { tag: 'L', .. }
        ));
        let bad_addr = decode(b"L\0\0\0\0\0:http");
        assert!(bad_addr.to_string().contains("not a number"), "{bad_addr}");
        assert!(matches!(
            decode(b"L\0\0\0\0\0\xff\xfe"),
            DecodeError::Malformed { tag: 'L', .. }
        ));
        let to_worker = |bytes: &[u8]| ToWorker::<OwnedFd>::decode(bytes, None).unwrap_err();
        assert_eq!(to_worker(b"O"), DecodeError::MissingDescriptor);
        let (_, stray) = pair().unwrap();
        assert!(matches!(
            ToWorker::<OwnedFd>::decode(b"Ox", Some(stray)),
            Err(DecodeError::Malformed { tag: 'O', .. })
        ));
        assert_eq!(to_worker(b"L"), DecodeError::UnknownTag(b'L'));
        assert!(matches!(
            to_worker(b"S!"),
            DecodeError::Malformed { tag: 'S', .. }
        ));
        // Numbers that are cut short, or followed by more.
        assert_eq!(
            to_worker(b"C\0\0\0"),
            DecodeError::Malformed {
                tag: 'C',
                why: "3 byte(s) where a number of 8 was expected".into()
            }
        );
        assert!(matches!(
            to_worker(b"C\0\0\0\0\0\0\0\x01!"),
            DecodeError::Malformed { tag: 'C', .. }
        ));
        assert!(matches!(
            decode(b"A\0\0\0\0\0\0\0\x01\0"),
            DecodeError::Malformed { tag: 'A', .. }
        ));
        // An outcome without its flag, with an unknown flag, or cut short.
        assert!(matches!(
            to_worker(b"D"),
            DecodeError::Malformed { tag: 'D', .. }
        ));
        assert!(matches!(
            to_worker(b"D\x02"),
            DecodeError::Malformed { tag: 'D', .. }
        ));
        assert!(matches!(
            to_worker(b"D\x01\0\0\0\0\0\0\0\x02\0\0"),
            DecodeError::Malformed { tag: 'D', .. }
        ));
    }

    #[test]
    fn invalid_utf8_in_a_reason_still_reaches_the_reader() {
        assert_eq!(
            ToMaster::decode(b"Fbad \xff byte", None).unwrap(),
            ToMaster::Failed("bad \u{fffd} byte".into())
        );
        match ToWorker::<OwnedFd>::decode(b"Ein \xc3", None).unwrap() {
            ToWorker::ListenError(reason) => assert_eq!(reason, "in \u{fffd}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn messages_and_descriptors_cross_the_pair() {
        let (master, worker) = pair().unwrap();
        send(worker.as_fd(), &listen("127.0.0.1:0", None)).unwrap();
        send(worker.as_fd(), &ToMaster::Ready(None)).unwrap();
        assert_eq!(
            recv(master.as_fd()).unwrap(),
            Some(listen("127.0.0.1:0", None))
        );
        assert_eq!(
            recv::<ToMaster>(master.as_fd()).unwrap(),
            Some(ToMaster::Ready(None))
        );

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fd: OwnedFd = listener.into();
        send(master.as_fd(), &ToWorker::Listener(fd.as_fd())).unwrap();
        match recv::<ToWorker<OwnedFd>>(worker.as_fd()).unwrap() {
            Some(ToWorker::Listener(fd)) => {
                let got = std::net::TcpListener::from(fd);
                assert_eq!(got.local_addr().unwrap().port(), port);
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(master);
        assert!(
            recv::<ToWorker<OwnedFd>>(worker.as_fd()).unwrap().is_none(),
            "EOF after the peer closes"
        );
    }

    #[test]
    fn the_async_channel_sends_and_receives() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, b) = pair().unwrap();
            let (a, b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
            assert!(format!("{a:?}").starts_with("Channel("));
            a.send(&ToMaster::Reload).unwrap();
            assert_eq!(b.recv::<ToMaster>().await.unwrap(), Some(ToMaster::Reload));
            drop(a);
            assert_eq!(b.recv::<ToMaster>().await.unwrap(), None);
        });
    }

    #[test]
    fn descriptors_a_message_does_not_want_are_closed_not_leaked() {
        use std::os::fd::IntoRawFd;
        let (master, worker) = pair().unwrap();
        // 50 copies of a pipe's write end, sent with one message that wants
        // none (a fake worker's doing).
        let (read, write) = nix::unistd::pipe().unwrap();
        let copies: Vec<RawFd> = (0..50)
            .map(|_| write.try_clone().unwrap().into_raw_fd())
            .collect();
        let iov = [IoSlice::new(&[READY])];
        sendmsg::<()>(
            worker.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&copies)],
            send_flags(),
            None,
        )
        .unwrap();
        for fd in copies {
            // SAFETY: each is a copy made above and owned by nobody else.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        drop(write);
        assert_eq!(
            recv::<ToMaster>(master.as_fd()).unwrap(),
            Some(ToMaster::Ready(None))
        );
        // Every write end is closed again: the pipe reads end of file. A
        // leaked copy would keep it open (EAGAIN on a non-blocking read).
        set_nonblocking(read.as_fd()).unwrap();
        assert_eq!(nix::unistd::read(&read, &mut [0u8; 1]), Ok(0));
    }

    #[test]
    fn garbage_on_the_socket_is_an_error_not_a_crash() {
        let (master, worker) = pair().unwrap();
        send_raw(worker.as_fd(), b"?", None).unwrap();
        let err = recv::<ToMaster>(master.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("unknown control message tag 0x3f"),
            "{err}"
        );
    }
}
