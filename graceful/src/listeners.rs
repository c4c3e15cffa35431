//! The listening sockets a service holds across generations: bound once,
//! found again by the key they were registered under, and closed (and their
//! Unix socket files removed) when no generation needs them.
//!
//! The master keeps one table for all its workers. In single-process mode
//! each process keeps one, and hands all of it to its successor by
//! inheritance ([`Listeners::export`] and [`Listeners::import`]).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::activation::{Activated, Local};
use crate::addr::{BindError, ListenAddr, ListenRequest};
use crate::fd::set_cloexec;
use crate::log::log;
use crate::state::{ListenerKind, ListenerState};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Why a listener could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListenError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("systemd passed no socket named {name:?}; it passed: {}", passed_names(.passed))]
    NoActivatedSocket { name: String, passed: Vec<String> },
    #[error("cannot set mode {mode:#o} on {}: {source}", path.display())]
    SetMode {
        mode: u32,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn passed_names(names: &[String]) -> String {
    if names.is_empty() {
        "none (is the service socket-activated?)".to_string()
    } else {
        names.join(", ")
    }
}

/// Why an inherited table cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    #[error("malformed entry {0:?}")]
    Malformed(String),
    #[error("descriptor {fd} for {key:?} is not a socket: {source}")]
    NotASocket {
        fd: RawFd,
        key: String,
        source: std::io::Error,
    },
    #[error("descriptor {fd}: {source}")]
    Flags { fd: RawFd, source: std::io::Error },
    #[error("descriptor {fd} for {key:?} is refused: {why}")]
    Refused { fd: RawFd, key: String, why: String },
}

/// A listening socket held across generations.
#[derive(Debug)]
pub(crate) struct Held {
    fd: OwnedFd,
    /// Where it listens, for the log.
    local: String,
    /// Generations that asked for it and are alive.
    users: HashSet<u64>,
    /// A Unix socket file to remove when the socket is closed for good, with
    /// the device and inode it had when it was bound.
    unix_path: Option<(PathBuf, u64, u64)>,
    /// Passed by systemd socket activation: kept for the life of the service
    /// and never unlinked.
    activated: Option<Local>,
    /// A datagram socket (UDP, Unix datagram), for a datagram handler.
    datagram: bool,
}

/// The table of held listeners, by key: the address as registered (`":8080"`,
/// `"unix:/run/app.sock"`) or `systemd:NAME` for an activated socket.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    map: HashMap<String, Held>,
    /// Keys of the last generation that serves: kept open even while no
    /// process uses them (after a crash), so clients wait in the backlog.
    kept: HashSet<String>,
}

impl Listeners {
    /// A table that starts with the sockets systemd passed.
    pub(crate) fn new(activated: Vec<Activated>) -> Listeners {
        let mut listeners = Listeners::default();
        for (index, socket) in activated.into_iter().enumerate() {
            let mut key = format!("systemd:{}", socket.name);
            if listeners.map.contains_key(&key) {
                // Same name twice: the second is reachable by its address.
                key = format!("systemd:#{index}");
            }
            let held = Held {
                local: socket.local.describe(),
                fd: socket.fd,
                users: HashSet::new(),
                unix_path: None,
                datagram: socket.local.is_datagram(),
                activated: Some(socket.local),
            };
            listeners.map.insert(key, held);
        }
        listeners
    }

    /// Finds or makes the listener for `request` and records `user` as a
    /// user of it.
    pub(crate) fn acquire(
        &mut self,
        user: u64,
        request: &ListenRequest,
    ) -> Result<&OwnedFd, ListenError> {
        let key = self.find_or_bind(user, request)?;
        Ok(&self.map[&key].fd)
    }

    /// The key `addr` is held under: the address in canonical form, or the
    /// key of an activated socket that listens there.
    fn find_or_bind(&mut self, user: u64, request: &ListenRequest) -> Result<String, ListenError> {
        let addr = &request.addr;
        let key = addr.key()?;
        if let Some(held) = self.map.get_mut(&key) {
            held.users.insert(user);
            return Ok(key);
        }
        // An address that an activated socket listens on means that socket.
        let activated = self.map.iter_mut().find(|(_, held)| {
            held.activated
                .as_ref()
                .is_some_and(|local| local.matches(addr))
        });
        if let Some((activated_key, held)) = activated {
            held.users.insert(user);
            return Ok(activated_key.clone());
        }
        if let ListenAddr::Systemd(name) = addr {
            let mut passed: Vec<String> = self
                .map
                .keys()
                .filter_map(|k| k.strip_prefix("systemd:"))
                .map(str::to_string)
                .collect();
            passed.sort_unstable();
            return Err(ListenError::NoActivatedSocket {
                name: name.clone(),
                passed,
            });
        }
        let (socket, local) = addr.bind()?;
        let fd = OwnedFd::from(socket);
        let unix_path = match addr {
            ListenAddr::Unix(path) | ListenAddr::Unixgram(path) => {
                // The mode is set once, here, on the file this process has
                // just created, and never through a symlink: a later
                // acquire does not touch the path, which anyone who can
                // write to its directory may have replaced meanwhile.
                if let Some(mode) = request.unix_mode {
                    set_mode(path, mode)?;
                }
                file_id(path).map(|(dev, ino)| (path.clone(), dev, ino))
            }
            ListenAddr::Tcp { .. } | ListenAddr::Udp { .. } | ListenAddr::Systemd(_) => None,
        };
        crate::log::event!(
            Info,
            { event = "listening", address = local.as_str(), registered = key.as_str() },
            "listening on {local} (registered as {key:?})"
        );
        let held = Held {
            fd,
            local,
            users: HashSet::from([user]),
            unix_path,
            activated: None,
            datagram: addr.is_datagram(),
        };
        self.map.insert(key.clone(), held);
        Ok(key)
    }

    /// `user` serves now: its listeners are the ones kept open from here on,
    /// and the others close once no live user has them.
    pub(crate) fn keep(&mut self, user: u64) {
        self.kept = self
            .map
            .iter()
            .filter(|(_, held)| held.users.contains(&user))
            .map(|(key, _)| key.clone())
            .collect();
    }

    /// `user` has exited: it no longer keeps anything open.
    pub(crate) fn release(&mut self, user: u64) {
        for held in self.map.values_mut() {
            held.users.remove(&user);
        }
    }

    /// Closes listeners that no live user has and the serving user (see
    /// [`keep`](Listeners::keep)) does not have. Activated sockets are kept.
    pub(crate) fn collect(&mut self) {
        let unused: Vec<String> = self
            .map
            .iter()
            .filter(|(key, held)| {
                held.users.is_empty() && !self.kept.contains(*key) && held.activated.is_none()
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in unused {
            if let Some(held) = self.map.remove(&key) {
                close(held);
            }
        }
    }

    /// Where each held listener listens, sorted, for a status answer.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.map.values().map(|held| held.local.clone()).collect();
        names.sort();
        names
    }

    /// Closes every listener for good.
    pub(crate) fn close_all(&mut self) {
        for (_, held) in self.map.drain() {
            close(held);
        }
    }

    /// The table as an environment value, and the descriptors a successor
    /// must inherit for it. Each entry is `fd,kind,dev,ino,key,path` with
    /// the strings hex-encoded; kind is `a` (activated), `u` (a Unix stream
    /// socket this service bound), `g` (a Unix datagram socket it bound),
    /// `d` (UDP) or `t` (TCP).
    pub(crate) fn export(&self) -> (String, Vec<RawFd>) {
        let mut entries = Vec::new();
        let mut fds = Vec::new();
        for (key, held) in &self.map {
            let fd = held.fd.as_raw_fd();
            fds.push(fd);
            let (kind, dev, ino, path) = match (&held.activated, &held.unix_path) {
                (Some(_), _) => ('a', 0, 0, String::new()),
                (None, Some((path, dev, ino))) => (
                    if held.datagram { 'g' } else { 'u' },
                    *dev,
                    *ino,
                    path.to_string_lossy().into_owned(),
                ),
                (None, None) => (if held.datagram { 'd' } else { 't' }, 0, 0, String::new()),
            };
            entries.push(format!(
                "{fd},{kind},{dev},{ino},{},{}",
                hex(key),
                hex(&path)
            ));
        }
        (entries.join(";"), fds)
    }

    /// The table a predecessor exported. Every entry is checked before any
    /// descriptor is taken: a listening stream socket or a bound datagram
    /// socket of the kind the entry states (a Unix socket at the entry's
    /// path, a TCP or UDP socket), each descriptor once, and never
    /// `control`. Then the descriptors are made
    /// close-on-exec and owned from here on.
    pub(crate) fn import(value: &str, control: RawFd) -> Result<Listeners, ImportError> {
        let mut checked = Vec::new();
        let mut seen = HashSet::from([control]);
        for entry in value.split(';').filter(|e| !e.is_empty()) {
            let bad = || ImportError::Malformed(entry.to_string());
            let fields: Vec<&str> = entry.split(',').collect();
            let [fd, kind, dev, ino, key, path] = fields[..] else {
                return Err(bad());
            };
            let fd: RawFd = fd.parse().map_err(|_| bad())?;
            let key = unhex(key).ok_or_else(bad)?;
            let path = unhex(path).ok_or_else(bad)?;
            if fd < 3 {
                return Err(bad());
            }
            if !seen.insert(fd) {
                return Err(ImportError::Refused {
                    fd,
                    key,
                    why: "the descriptor is named twice, or is the control socket".into(),
                });
            }
            // SAFETY: borrowed only to inspect it; nothing is taken until
            // every entry has passed.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            let local = Local::of(borrowed).map_err(|source| ImportError::NotASocket {
                fd,
                key: key.clone(),
                source,
            })?;
            let refused = |why: &str| ImportError::Refused {
                fd,
                key: key.clone(),
                why: why.to_string(),
            };
            if !servable(borrowed) {
                return Err(refused(
                    "neither a listening stream socket nor a datagram socket",
                ));
            }
            let (unix_path, activated) = match (kind, &local) {
                ("a", _) => (None, Some(local.clone())),
                ("u", Local::Unix(bound)) | ("g", Local::Unixgram(bound))
                    if *bound == Path::new(&path) =>
                {
                    let dev = dev.parse().map_err(|_| bad())?;
                    let ino = ino.parse().map_err(|_| bad())?;
                    (Some((PathBuf::from(path), dev, ino)), None)
                }
                ("u", _) => return Err(refused("not a Unix socket bound at the entry's path")),
                ("g", _) => {
                    return Err(refused(
                        "not a Unix datagram socket bound at the entry's path",
                    ))
                }
                ("t", Local::Tcp(_)) | ("d", Local::Udp(_)) => (None, None),
                ("t", _) => return Err(refused("not a TCP socket")),
                ("d", _) => return Err(refused("not a UDP socket")),
                _ => return Err(bad()),
            };
            checked.push((fd, key, local, unix_path, activated));
        }
        let mut listeners = Listeners::default();
        for (fd, key, local, unix_path, activated) in checked {
            // SAFETY: the predecessor passed this open socket to this process
            // alone, under this one entry (each descriptor once, checked).
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            set_cloexec(fd.as_fd()).map_err(|source| ImportError::Flags {
                fd: fd.as_raw_fd(),
                source,
            })?;
            let held = Held {
                fd,
                local: local.describe(),
                users: HashSet::new(),
                unix_path,
                activated,
                datagram: local.is_datagram(),
            };
            listeners.map.insert(key, held);
        }
        Ok(listeners)
    }
}

/// The table across a master's upgrade in place: every socket by its
/// descriptor number, with who uses it and whether it is kept.
impl Listeners {
    pub(crate) fn to_state(&self) -> Vec<ListenerState> {
        self.map
            .iter()
            .map(|(key, held)| ListenerState {
                key: key.clone(),
                fd: held.fd.as_raw_fd(),
                kind: match (&held.activated, &held.unix_path) {
                    (Some(_), _) => ListenerKind::Activated,
                    (None, Some((path, dev, ino))) => {
                        let (path, dev, ino) = (path.as_os_str().as_bytes().to_vec(), *dev, *ino);
                        if held.datagram {
                            ListenerKind::Unixgram { path, dev, ino }
                        } else {
                            ListenerKind::Unix { path, dev, ino }
                        }
                    }
                    (None, None) if held.datagram => ListenerKind::Udp,
                    (None, None) => ListenerKind::Tcp,
                },
                users: held.users.iter().copied().collect(),
                kept: self.kept.contains(key),
            })
            .collect()
    }

    /// The table a master carried across its exec. Each descriptor is
    /// checked as [`import`](Listeners::import) checks a successor's, and
    /// made close-on-exec again; one that fails is logged and left out
    /// (its clients then see the port closed, which the log names), and
    /// the rest are taken.
    pub(crate) fn from_state(state: Vec<ListenerState>) -> Listeners {
        let mut listeners = Listeners::default();
        for entry in state {
            match take_carried(&entry) {
                Ok((fd, local)) => {
                    let (unix_path, activated) = match entry.kind {
                        ListenerKind::Activated => (None, Some(local.clone())),
                        ListenerKind::Unix { path, dev, ino }
                        | ListenerKind::Unixgram { path, dev, ino } => (
                            Some((PathBuf::from(OsString::from_vec(path)), dev, ino)),
                            None,
                        ),
                        ListenerKind::Tcp | ListenerKind::Udp => (None, None),
                    };
                    if entry.kept {
                        listeners.kept.insert(entry.key.clone());
                    }
                    listeners.map.insert(
                        entry.key,
                        Held {
                            fd,
                            local: local.describe(),
                            users: entry.users.into_iter().collect(),
                            unix_path,
                            activated,
                            datagram: local.is_datagram(),
                        },
                    );
                }
                Err(why) => log!(
                    "listener {:?} (descriptor {}) did not survive the master's upgrade: {why}",
                    entry.key,
                    entry.fd
                ),
            }
        }
        listeners
    }
}

/// Takes one carried listener: an open, listening stream socket or a
/// datagram socket of the kind the entry states, made close-on-exec.
fn take_carried(entry: &ListenerState) -> Result<(OwnedFd, Local), String> {
    crate::fd::take_carried(entry.fd, |borrowed| {
        let local = Local::of(borrowed).map_err(|e| e.to_string())?;
        if !servable(borrowed) {
            return Err("neither a listening stream socket nor a datagram socket".into());
        }
        match (&entry.kind, &local) {
            (ListenerKind::Tcp, Local::Tcp(_))
            | (ListenerKind::Udp, Local::Udp(_))
            | (ListenerKind::Activated, _) => Ok(local),
            (ListenerKind::Unix { path, .. }, Local::Unix(bound))
            | (ListenerKind::Unixgram { path, .. }, Local::Unixgram(bound))
                if bound.as_os_str().as_bytes() == path.as_slice() =>
            {
                Ok(local)
            }
            _ => Err("not a socket of the kind the state names".into()),
        }
    })
}

/// Whether `fd` can be served: a stream socket that listens, or a datagram
/// socket (which needs no more than its bound address).
fn servable(fd: BorrowedFd<'_>) -> bool {
    use nix::sys::socket::{getsockopt, sockopt, SockType};
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => getsockopt(&fd, sockopt::AcceptConn) == Ok(true),
        Ok(SockType::Datagram) => true,
        _ => false,
    }
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<String> {
    if text.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Sets the permission bits of the socket file at `path`, refusing a
/// symlink there (`AT_SYMLINK_NOFOLLOW`) and anything that is not a socket.
fn set_mode(path: &Path, mode: u32) -> Result<(), ListenError> {
    use nix::sys::stat::{fchmodat, FchmodatFlags, Mode};
    use std::os::unix::fs::FileTypeExt;
    let error = |source: std::io::Error| ListenError::SetMode {
        mode,
        path: path.to_path_buf(),
        source,
    };
    let kind = std::fs::symlink_metadata(path).map_err(error)?.file_type();
    if !kind.is_socket() {
        return Err(error(std::io::Error::other(
            "it is no longer the socket that was bound there",
        )));
    }
    fchmodat(
        nix::fcntl::AT_FDCWD,
        path,
        // mode_t is narrower than u32 on some systems; the value is at most
        // 0o7777 (checked when the request was made).
        Mode::from_bits_truncate(mode as nix::libc::mode_t),
        FchmodatFlags::NoFollowSymlink,
    )
    .map_err(|e| error(e.into()))
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

fn close(held: Held) {
    log!("closed listener {}", held.local);
    if let Some((path, dev, ino)) = &held.unix_path {
        // Remove the file only if it is still the one we created.
        if file_id(path) == Some((*dev, *ino)) {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_any_key() {
        for key in ["", ":8080", "unix:/tmp/a;b,c\td", "systemd:wéb"] {
            assert_eq!(unhex(&hex(key)).as_deref(), Some(key));
        }
        assert_eq!(unhex("4"), None);
        assert_eq!(unhex("zz"), None);
    }

    fn request(addr: &str) -> ListenRequest {
        ListenRequest {
            addr: ListenAddr::parse(addr).unwrap(),
            unix_mode: None,
        }
    }

    #[test]
    fn an_exported_table_imports_with_the_same_keys_and_sockets() {
        let mut table = Listeners::default();
        let fd = table
            .acquire(1, &request("127.0.0.1:0"))
            .unwrap()
            .as_raw_fd();
        let (value, fds) = table.export();
        assert_eq!(fds, vec![fd]);
        // Import a duplicate, as a successor inherits its own copy.
        let dup = nix::unistd::dup(&table.map["127.0.0.1:0"].fd).unwrap();
        let value = value.replacen(&fds[0].to_string(), &dup.as_raw_fd().to_string(), 1);
        std::mem::forget(dup);
        let imported = Listeners::import(&value, -1).unwrap();
        let held = &imported.map["127.0.0.1:0"];
        assert_eq!(held.local, table.map["127.0.0.1:0"].local);
        assert!(held.activated.is_none() && held.unix_path.is_none());
    }

    #[test]
    fn the_serving_generations_listeners_outlive_it_and_others_close() {
        let mut table = Listeners::default();
        let first = table
            .acquire(1, &request("127.0.0.1:0"))
            .unwrap()
            .as_raw_fd();
        table.keep(1);
        // Generation 1 crashed: its listener stays open for the next one.
        table.release(1);
        table.collect();
        assert_eq!(
            table
                .acquire(2, &request("127.0.0.1:0"))
                .unwrap()
                .as_raw_fd(),
            first
        );
        // Generation 2 also listens elsewhere, then generation 3 serves
        // without that address: it closes once 2 is gone.
        table.acquire(2, &request("[::1]:0").clone()).ok();
        table.acquire(3, &request("127.0.0.1:0")).unwrap();
        table.keep(3);
        table.collect();
        assert_eq!(
            table.map.len(),
            1 + usize::from(table.map.contains_key("[::1]:0"))
        );
        table.release(2);
        table.collect();
        assert_eq!(table.map.keys().collect::<Vec<_>>(), ["127.0.0.1:0"]);
    }

    #[test]
    fn unix_mode_is_set_once_at_bind_and_never_through_a_later_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("graceful-mode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("app.sock");
        let request = ListenRequest {
            addr: ListenAddr::Unix(sock.clone()),
            unix_mode: Some(0o660),
        };
        let mut table = Listeners::default();
        table.acquire(1, &request).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&sock), 0o660);
        // A tmp cleaner removes the file and someone puts a symlink to a
        // file of theirs there: the next generation's acquire must neither
        // fail nor change that file's mode.
        let victim = dir.join("victim");
        std::fs::write(&victim, b"x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&sock).unwrap();
        std::os::unix::fs::symlink(&victim, &sock).unwrap();
        table.acquire(2, &request).unwrap();
        assert_eq!(mode(&victim), 0o600);
        // Nor is the symlink removed as if it were the socket.
        table.release(1);
        table.release(2);
        table.collect();
        assert!(std::fs::symlink_metadata(&sock).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_mode_is_never_set_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("graceful-nofollow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"x").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = set_mode(&link, 0o666).unwrap_err().to_string();
        assert!(err.contains("no longer the socket"), "{err}");
        use std::os::unix::fs::PermissionsExt;
        assert_ne!(
            std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o666
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_table_crosses_the_exec_with_each_socket_as_the_kind_it_is() {
        let dir = std::env::temp_dir().join(format!("graceful-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let gram = dir.join("g.sock");
        let mut table = Listeners::default();
        for addr in [
            "127.0.0.1:0".to_string(),
            "udp:127.0.0.1:0".to_string(),
            format!("unixgram:{}", gram.display()),
        ] {
            table.acquire(1, &request(&addr)).unwrap();
        }
        table.keep(1);
        let state = table.to_state();
        let kinds: HashMap<String, ListenerKind> = state
            .iter()
            .map(|entry| (entry.key.clone(), entry.kind.clone()))
            .collect();
        assert_eq!(kinds["127.0.0.1:0"], ListenerKind::Tcp);
        assert_eq!(kinds["udp:127.0.0.1:0"], ListenerKind::Udp);
        assert!(matches!(
            &kinds[&format!("unixgram:{}", gram.display())],
            ListenerKind::Unixgram { path, .. } if path == gram.as_os_str().as_bytes()
        ));
        // Across execve the descriptors stay open and pass to the new
        // image's table, which takes them from the state.
        std::mem::forget(table);
        let resumed = Listeners::from_state(state);
        let datagram: HashMap<&str, bool> = resumed
            .map
            .iter()
            .map(|(key, held)| (key.as_str(), held.datagram))
            .collect();
        assert_eq!(datagram.len(), 3, "{datagram:?}");
        assert!(!datagram["127.0.0.1:0"] && datagram["udp:127.0.0.1:0"]);
        assert_eq!(resumed.kept.len(), 3);
        // A state that calls a UDP socket TCP, or names another path for a
        // datagram socket file, does not get it.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = std::os::unix::net::UnixDatagram::bind(dir.join("other.sock")).unwrap();
        let lying = vec![
            ListenerState {
                key: "udp:x".into(),
                fd: udp.as_raw_fd(),
                kind: ListenerKind::Tcp,
                users: vec![],
                kept: true,
            },
            ListenerState {
                key: "unixgram:x".into(),
                fd: other.as_raw_fd(),
                kind: ListenerKind::Unixgram {
                    path: b"/elsewhere".to_vec(),
                    dev: 0,
                    ino: 0,
                },
                users: vec![],
                kept: true,
            },
        ];
        assert!(Listeners::from_state(lying).map.is_empty());
        drop(resumed);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_host_name_and_its_address_find_the_same_socket() {
        let mut table = Listeners::default();
        let by_name = table
            .acquire(1, &request("localhost:0"))
            .unwrap()
            .as_raw_fd();
        let by_address = table
            .acquire(2, &request("127.0.0.1:0"))
            .unwrap()
            .as_raw_fd();
        assert_eq!(by_name, by_address);
        assert_eq!(table.map.keys().collect::<Vec<_>>(), ["127.0.0.1:0"]);
    }

    #[test]
    fn a_missing_activated_name_lists_the_names_passed() {
        let err = Listeners::default()
            .acquire(1, &request("systemd:web"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "systemd passed no socket named \"web\"; it passed: none (is the service socket-activated?)"
        );
    }

    #[test]
    fn only_listening_stream_and_datagram_sockets_of_the_stated_kind_are_taken() {
        use std::os::fd::IntoRawFd;
        let entry = |fd: RawFd, kind: &str, path: &str| {
            format!("{fd},{kind},0,0,{},{}", hex("k"), hex(path))
        };
        let refused = |value: &str, control: RawFd| match Listeners::import(value, control) {
            Err(ImportError::Refused { why, .. }) => why,
            other => panic!("{value}: expected a refusal, got {other:?}"),
        };
        // A UDP socket is not TCP, nor a TCP listener UDP, and a connected
        // TCP socket is neither a listener nor a datagram socket.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(refused(&entry(udp.as_raw_fd(), "t", ""), -1).contains("not a TCP socket"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(refused(&entry(listener.as_raw_fd(), "d", ""), -1).contains("not a UDP socket"));
        let connected = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(
            refused(&entry(connected.as_raw_fd(), "t", ""), -1),
            "neither a listening stream socket nor a datagram socket"
        );
        // A TCP listener stated as a Unix socket at some path: refused, so
        // that its closing can never remove that path.
        let victim = std::env::temp_dir().join(format!("graceful-victim-{}", std::process::id()));
        std::fs::write(&victim, b"x").unwrap();
        let as_unix = entry(listener.as_raw_fd(), "u", victim.to_str().unwrap());
        assert!(refused(&as_unix, -1).contains("not a Unix socket bound at the entry's path"));
        assert!(victim.exists());
        std::fs::remove_file(&victim).unwrap();
        // One descriptor twice, or the control socket: refused, and nothing
        // is taken (the descriptors stay open, owned by their owners).
        let fd = listener.as_raw_fd();
        let twice = format!("{};{}", entry(fd, "t", ""), entry(fd, "t", ""));
        assert!(refused(&twice, -1).contains("named twice"));
        assert!(refused(&entry(fd, "t", ""), fd).contains("control socket"));
        assert!(
            Local::of(listener.as_fd()).is_ok(),
            "the listener was closed"
        );
        // A Unix datagram socket stated at another path, or as a stream
        // socket: refused.
        let dir = std::env::temp_dir().join(format!("graceful-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.sock");
        let gram = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let elsewhere = entry(gram.as_raw_fd(), "g", "/elsewhere");
        assert!(refused(&elsewhere, -1).contains("not a Unix datagram socket bound at"));
        let as_stream = entry(gram.as_raw_fd(), "u", path.to_str().unwrap());
        assert!(refused(&as_stream, -1).contains("not a Unix socket bound at"));
        // The real things are taken, each as the kind it is.
        let keyed = |key: &str, fd: RawFd, kind: &str, path: &str| {
            format!("{fd},{kind},0,0,{},{}", hex(key), hex(path))
        };
        let value = [
            keyed("tcp", listener.into_raw_fd(), "t", ""),
            keyed("udp", udp.into_raw_fd(), "d", ""),
            keyed("gram", gram.into_raw_fd(), "g", path.to_str().unwrap()),
        ]
        .join(";");
        let taken = Listeners::import(&value, -1).unwrap();
        let datagram: HashMap<&str, bool> = taken
            .map
            .iter()
            .map(|(key, held)| (key.as_str(), held.datagram))
            .collect();
        assert_eq!(
            datagram,
            HashMap::from([("tcp", false), ("udp", true), ("gram", true)])
        );
        let mut kinds: Vec<String> = taken
            .export()
            .0
            .split(';')
            .map(|e| e.split(',').nth(1).unwrap().to_string())
            .collect();
        kinds.sort();
        assert_eq!(kinds, ["d", "g", "t"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_listener_in_use_outlives_a_collection_and_names_are_sorted() {
        let dir = std::env::temp_dir().join(format!("graceful-collect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let unix = |name: &str| format!("unix:{}", dir.join(name).display());
        let mut table = Listeners::default();
        // Acquired out of order, and held in a hash map: four names are
        // sorted by chance once in 24.
        for name in ["c.sock", "a.sock", "b.sock"] {
            table.acquire(1, &request(&unix(name))).unwrap();
        }
        table.acquire(2, &request("127.0.0.1:0")).unwrap();
        let names = table.names();
        assert!(names[0].starts_with("127.0.0.1:"), "{names:?}");
        assert_eq!(names[1..], [unix("a.sock"), unix("b.sock"), unix("c.sock")]);
        // Nothing kept, but each has a user: none is closed.
        table.collect();
        assert_eq!(table.names(), names);
        table.release(1);
        table.release(2);
        table.collect();
        assert_eq!(table.names(), Vec::<String>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_activated_socket_imports_as_activated_and_stdio_is_refused() {
        use std::os::fd::IntoRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = Local::of(listener.as_fd()).unwrap();
        let value = format!("{},a,0,0,{},", listener.into_raw_fd(), hex("systemd:web"));
        let taken = Listeners::import(&value, -1).unwrap();
        let held = &taken.map["systemd:web"];
        assert_eq!(held.activated.as_ref(), Some(&local));
        assert_eq!(taken.export().0.split(',').nth(1), Some("a"));
        // Standard input, output and error are never a predecessor's
        // listeners: refused as malformed before they are looked at.
        for fd in 0..3 {
            let entry = format!("{fd},t,0,0,{},", hex(":1"));
            assert!(
                matches!(
                    Listeners::import(&entry, -1),
                    Err(ImportError::Malformed(_))
                ),
                "descriptor {fd} was not refused as malformed"
            );
        }
    }

    #[test]
    fn a_malformed_or_closed_entry_is_an_error() {
        assert!(Listeners::import("garbage", -1)
            .unwrap_err()
            .to_string()
            .contains("malformed entry"));
        let closed = format!("999,t,0,0,{},", hex(":1"));
        let err = Listeners::import(&closed, -1).unwrap_err().to_string();
        assert!(
            err.contains("descriptor 999 for \":1\" is not a socket"),
            "{err}"
        );
    }
}
