//! The master's control socket: the listening Unix socket the `graceful`
//! command connects to, and its connections. Non-blocking, read and written
//! from the master's one `poll` loop; what a request means is the core's
//! business, what is written back is `ctl`'s.
//!
//! Defences, since the socket sits in a directory others may share:
//! - it is created owner-only (umask 0177 around `bind`, so there is no
//!   moment when it is open to others), and on Linux a peer whose user is
//!   neither the master's nor root is refused, whatever the file's mode;
//! - a stale socket (nothing accepts on it) is replaced, but any other file
//!   at the path, or a socket another process answers on, is an error
//!   naming the path; at exit the file is removed only if it is still the
//!   one this master created;
//! - a client that sends nothing is closed after [`REQUEST_WAIT`], one that
//!   sends more than a request line is refused, and at most [`MAX_CLIENTS`]
//!   are open at once: the master never waits on a client, and a client
//!   cannot make it hold more than a few descriptors.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::addr::ListenAddr;
use crate::ctl::{self, Request, MAX_REQUEST};
use crate::fd::take_carried;
use crate::log::log;
use crate::state::{ClientState, Clock, ControlState};
use crate::Error;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// How long a client may take to send its request.
pub(super) const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// A Unix stream socket carried across the master's exec (listening or
/// not, as `listening` says), owned and close-on-exec again.
fn carried_unix(fd: RawFd, listening: bool) -> Result<OwnedFd, String> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
    let (owned, ()) = take_carried(fd, |borrowed| {
        let unix = getsockname::<UnixAddr>(fd).is_ok();
        let stream = getsockopt(&borrowed, sockopt::SockType) == Ok(SockType::Stream);
        let listens = getsockopt(&borrowed, sockopt::AcceptConn) == Ok(true);
        if unix && stream && listens == listening {
            Ok(())
        } else {
            Err(format!(
                "descriptor {fd} is not the Unix socket the state names"
            ))
        }
    })?;
    Ok(owned)
}

/// Connections open at once; more are refused with a line that says so.
pub(super) const MAX_CLIENTS: usize = 16;

#[derive(Debug)]
struct Client {
    stream: UnixStream,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Its request line so far, and when it is closed if the line has not
    /// come by then.
    Reading { line: Vec<u8>, deadline: Instant },
    /// It asked this; the answer is the master's to give.
    Asked(Request),
}

#[derive(Debug)]
pub(super) struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
    /// The socket file this master created, by device and inode.
    file: (u64, u64),
    clients: HashMap<u64, Client>,
    next_id: u64,
}

impl ControlSocket {
    /// Creates the socket at `path`, owner-only.
    pub(super) fn bind(path: &Path) -> Result<ControlSocket, Error> {
        let error = |reason: String| Error::Control {
            socket: path.to_path_buf(),
            reason,
        };
        // The master has one thread: the umask is its own for this call.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = ListenAddr::Unix(path.to_path_buf()).bind();
        nix::sys::stat::umask(old);
        let (socket, _) = bound.map_err(|e| error(e.to_string()))?;
        let listener = UnixListener::from(OwnedFd::from(socket));
        listener
            .set_nonblocking(true)
            .map_err(|e| error(format!("cannot make it non-blocking: {e}")))?;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| error(format!("cannot inspect it after bind: {e}")))?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            listener,
            file: (meta.dev(), meta.ino()),
            clients: HashMap::new(),
            next_id: 1,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket, for `poll`.
    pub(super) fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Each connection, for `poll`.
    pub(super) fn client_fds(&self) -> impl Iterator<Item = (u64, BorrowedFd<'_>)> {
        self.clients.iter().map(|(&id, c)| (id, c.stream.as_fd()))
    }

    /// When the next silent client is to be closed.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.clients
            .values()
            .filter_map(|c| match c.state {
                State::Reading { deadline, .. } => Some(deadline),
                State::Asked(_) => None,
            })
            .min()
    }

    /// Accepts every pending connection.
    pub(super) fn accept(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, most likely: the connection waits
                    // in the backlog and is tried again on the next turn.
                    log!("control socket: cannot accept: {e}");
                    return;
                }
            };
            if let Err(refusal) = self.admit(&stream) {
                let _ = stream.set_nonblocking(true);
                let _ = (&stream).write(ctl::error_line(&refusal).as_bytes());
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.clients.insert(
                id,
                Client {
                    stream,
                    state: State::Reading {
                        line: Vec::new(),
                        deadline: now + REQUEST_WAIT,
                    },
                },
            );
        }
    }

    /// Whether this peer may use the socket: why not, if not.
    fn admit(&self, stream: &UnixStream) -> Result<(), String> {
        if self.clients.len() >= MAX_CLIENTS {
            return Err(format!(
                "too many control connections ({MAX_CLIENTS} open); try again"
            ));
        }
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("cannot use the connection: {e}"))?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
            let ours = nix::unistd::geteuid().as_raw();
            match getsockopt(stream, PeerCredentials) {
                Ok(peer) if peer.uid() == ours || peer.uid() == 0 => {}
                Ok(peer) => {
                    log!(
                        "control socket: refused a client of uid {} (pid {}): only uid {ours} or root may use it",
                        peer.uid(),
                        peer.pid()
                    );
                    return Err(format!(
                        "permission denied: uid {} is neither the service's user ({ours}) nor root",
                        peer.uid()
                    ));
                }
                Err(e) => return Err(format!("cannot read the peer's credentials: {e}")),
            }
        }
        Ok(())
    }

    /// Reads what client `id` sent. Its request, once a whole line has
    /// come; a client that hung up, sent too much or something that is not
    /// a request is closed (the last with an `error` line).
    pub(super) fn read(&mut self, id: u64) -> Option<Request> {
        let client = self.clients.get_mut(&id)?;
        let mut buf = [0u8; MAX_REQUEST];
        let mut gone = false;
        loop {
            match (&client.stream).read(&mut buf) {
                Ok(0) => {
                    gone = true;
                    break;
                }
                // After its request, a client has nothing more to say:
                // anything more is read and dropped.
                Ok(n) => {
                    if let State::Reading { line, .. } = &mut client.state {
                        line.extend_from_slice(&buf[..n]);
                        if line.len() > MAX_REQUEST {
                            break;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        if let State::Reading { line, .. } = &client.state {
            let parsed = match line.iter().position(|&b| b == b'\n') {
                Some(end) => Some(Request::parse(&String::from_utf8_lossy(&line[..end]))),
                None if line.len() > MAX_REQUEST => Some(Err(format!(
                    "a request is one line of at most {MAX_REQUEST} bytes"
                ))),
                None => None,
            };
            match parsed {
                Some(Ok(request)) => {
                    client.state = State::Asked(request);
                    return Some(request);
                }
                Some(Err(why)) => {
                    self.reply(id, &ctl::error_line(&why), true);
                    return None;
                }
                None => {}
            }
        }
        if gone {
            self.clients.remove(&id);
        }
        None
    }

    /// What client `id` asked, once it has.
    pub(super) fn asked(&self, id: u64) -> Option<Request> {
        match self.clients.get(&id)?.state {
            State::Asked(request) => Some(request),
            State::Reading { .. } => None,
        }
    }

    /// Writes `text` to client `id`, and closes it with `close`. A client
    /// whose socket is full (it does not read) is closed: the master never
    /// waits for a client.
    pub(super) fn reply(&mut self, id: u64, text: &str, close: bool) {
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        let written = (&client.stream).write(text.as_bytes());
        if close || !matches!(written, Ok(n) if n == text.len()) {
            self.clients.remove(&id);
        }
    }

    /// Closes the clients that sent no request in time.
    pub(super) fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Reading { deadline, .. } if deadline <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            let why = format!("no request within {REQUEST_WAIT:?}");
            self.reply(id, &ctl::error_line(&why), true);
        }
    }

    /// The socket and its connections, for the master's upgrade in place.
    pub(super) fn to_state(&self, clock: &Clock) -> ControlState {
        ControlState {
            path: self.path.as_os_str().as_bytes().to_vec(),
            fd: self.listener.as_raw_fd(),
            dev: self.file.0,
            ino: self.file.1,
            next_id: self.next_id,
            clients: self
                .clients
                .iter()
                .map(|(&id, client)| ClientState {
                    id,
                    fd: client.stream.as_raw_fd(),
                    reading: match &client.state {
                        State::Reading { line, deadline } => {
                            Some((line.clone(), clock.rel(*deadline)))
                        }
                        State::Asked(_) => None,
                    },
                    asked: match client.state {
                        State::Asked(request) => Some(request.line().trim_end().to_string()),
                        State::Reading { .. } => None,
                    },
                })
                .collect(),
        }
    }

    /// The socket a master carried across its exec, its descriptors checked
    /// (a listening Unix stream socket; connected Unix streams) and made
    /// close-on-exec. A client that does not pass is dropped: it reads EOF.
    pub(super) fn from_state(state: ControlState, clock: &Clock) -> Result<ControlSocket, String> {
        let path = PathBuf::from(OsString::from_vec(state.path));
        let listener = carried_unix(state.fd, true)?;
        let mut clients = HashMap::new();
        for client in state.clients {
            let stream = match carried_unix(client.fd, false) {
                Ok(fd) => UnixStream::from(fd),
                Err(why) => {
                    log!(
                        "control client {} did not survive the master's upgrade: {why}",
                        client.id
                    );
                    continue;
                }
            };
            let state = match (client.reading, client.asked) {
                (Some((line, deadline)), None) => State::Reading {
                    line,
                    deadline: clock.at(deadline),
                },
                (None, Some(asked)) => match Request::parse(&asked) {
                    Ok(request) => State::Asked(request),
                    Err(why) => {
                        log!("control client {}: {why}", client.id);
                        continue;
                    }
                },
                _ => continue,
            };
            clients.insert(client.id, Client { stream, state });
        }
        Ok(ControlSocket {
            path,
            listener: UnixListener::from(listener),
            file: (state.dev, state.ino),
            clients,
            next_id: state.next_id,
        })
    }

    /// Takes over the connections of `old` (a socket at the path the
    /// previous options named), then closes `old`'s listener and removes
    /// its file.
    pub(super) fn adopt(&mut self, mut old: ControlSocket) {
        self.next_id = self.next_id.max(old.next_id);
        self.clients.extend(old.clients.drain());
        old.close();
    }

    /// Closes every connection, and removes the socket file if it is still
    /// the one this master created.
    pub(super) fn close(self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
