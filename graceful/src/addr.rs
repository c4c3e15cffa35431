//! Listener addresses: parsing what the user writes, and binding a new
//! listening socket (by whichever process holds the listeners: the master, a
//! single-mode process, or the portable fallback).
//!
//! Accepted forms: `"127.0.0.1:8080"`, `"[::1]:8080"`, `":8080"` (every
//! interface, IPv4 and IPv6, as in Go), `"localhost:8080"`, port `0`, and
//! `"unix:/path/to.sock"`; for datagram handlers the same behind `udp:`
//! (`"udp:127.0.0.1:5353"`, `"udp:[::1]:5353"`, `"udp::5353"`), and
//! `"unixgram:/path/to.sock"`.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::Error;

/// Longest path a Unix socket address can hold (`sun_path` less the NUL).
#[cfg(target_os = "linux")]
const UNIX_PATH_MAX: usize = 107;
#[cfg(not(target_os = "linux"))]
const UNIX_PATH_MAX: usize = 103;

/// Why `path` cannot be a Unix socket's address, if it is too long: the
/// standard library's error ("path must be shorter than SUN_LEN") names
/// neither the length nor the limit.
pub(crate) fn unix_path_too_long(path: &Path) -> Option<String> {
    let len = path.as_os_str().len();
    (len > UNIX_PATH_MAX).then(|| {
        format!(
            "the socket path is {len} bytes long; a Unix socket's address holds at most \
             {UNIX_PATH_MAX}: choose a shorter path"
        )
    })
}

/// Backlog of every listening socket: connections made while no worker
/// accepts (during a restart) wait here instead of being refused.
const BACKLOG: i32 = 1024;

/// Why a listening socket could not be made. Each message names the
/// address or path and, where one helps, the fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindError {
    #[error("cannot resolve host `{host}`: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("host `{host}` has no address")]
    NoAddress { host: String },
    #[error("bind {addr}: {}", describe(source))]
    Bind { addr: String, source: io::Error },
    #[cfg(unix)]
    #[error("bind {}: {reason}", path.display())]
    TooLong { path: PathBuf, reason: String },
    #[cfg(unix)]
    #[error("{} exists and is not a socket; refusing to remove it", path.display())]
    NotASocket { path: PathBuf },
    #[cfg(unix)]
    #[error("{} is in use by a running listener", path.display())]
    InUse { path: PathBuf },
    #[cfg(unix)]
    #[error("cannot check whether {} is in use: {source}", path.display())]
    Check { path: PathBuf, source: io::Error },
    #[cfg(unix)]
    #[error("cannot {what} {}: {source}", path.display())]
    Path {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[cfg(not(unix))]
    #[error("unix:{} needs a Unix system; listen on a TCP address here", path.display())]
    UnixUnsupported { path: PathBuf },
    #[error("systemd passed no socket named {name:?} (set FileDescriptorName={name} in the .socket unit)")]
    NoSystemdSocket { name: String },
}

/// The operating system's error, with what usually causes it.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address already in use (another process listens there)".into(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".into()
        }
        io::ErrorKind::AddrNotAvailable => "the address is not on this machine".into(),
        _ => e.to_string(),
    }
}

/// A request for the listener of one registered address, as a serving
/// process makes it of whatever holds its listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenRequest {
    pub(crate) addr: ListenAddr,
    /// The permission bits of a Unix socket file.
    pub(crate) unix_mode: Option<u32>,
}

impl ListenRequest {
    /// The request for a registration's address and options.
    pub(crate) fn new(addr: &str, unix_mode: Option<u32>) -> Result<ListenRequest, Error> {
        let parsed = ListenAddr::parse(addr)?;
        if let Some(mode) = unix_mode {
            let invalid = |reason: String| Error::InvalidAddress {
                addr: addr.to_string(),
                reason,
            };
            if !matches!(parsed, ListenAddr::Unix(_) | ListenAddr::Unixgram(_)) {
                return Err(invalid(
                    "unix_mode applies to \"unix:\" and \"unixgram:\" addresses only".into(),
                ));
            }
            if mode > 0o7777 {
                return Err(invalid(format!(
                    "unix_mode {mode:#o} is not a file mode (0o0000 to 0o7777)"
                )));
            }
        }
        Ok(ListenRequest {
            addr: parsed,
            unix_mode,
        })
    }
}

/// A parsed listener address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ListenAddr {
    /// TCP; `host == None` means every interface.
    Tcp { host: Option<String>, port: u16 },
    /// A Unix domain stream socket at a path.
    Unix(PathBuf),
    /// UDP, for a datagram handler; `host == None` means every interface.
    Udp { host: Option<String>, port: u16 },
    /// A Unix domain datagram socket at a path, for a datagram handler.
    Unixgram(PathBuf),
    /// A socket passed by systemd socket activation, by its `FileDescriptorName=`.
    Systemd(String),
}

impl ListenAddr {
    pub(crate) fn parse(addr: &str) -> Result<ListenAddr, Error> {
        let invalid = |reason: String| Error::InvalidAddress {
            addr: addr.to_string(),
            reason,
        };
        if addr.is_empty() {
            return Err(invalid(
                "the address is empty; write \"host:port\", \":port\" or \"unix:/path\"".into(),
            ));
        }
        if let Some(name) = addr.strip_prefix("systemd:") {
            if name.is_empty() || name.contains(':') {
                return Err(invalid(
                    "`systemd:` needs the socket's name (FileDescriptorName=), as in \"systemd:web\"".into(),
                ));
            }
            return Ok(ListenAddr::Systemd(name.to_string()));
        }
        for (prefix, datagram) in [("unix:", false), ("unixgram:", true)] {
            let Some(path) = addr.strip_prefix(prefix) else {
                continue;
            };
            if path.is_empty() {
                return Err(invalid(format!(
                    "`{prefix}` needs a path, as in \"{prefix}/run/app.sock\""
                )));
            }
            if let Some(reason) = unix_path_too_long(Path::new(path)) {
                return Err(invalid(reason));
            }
            if path.contains('\0') {
                return Err(invalid("the socket path contains a NUL byte".into()));
            }
            let path = PathBuf::from(path);
            return Ok(if datagram {
                ListenAddr::Unixgram(path)
            } else {
                ListenAddr::Unix(path)
            });
        }
        if let Some(rest) = addr.strip_prefix("udp:") {
            return match ListenAddr::parse_host_port(rest, addr)? {
                ListenAddr::Tcp { host, port } => Ok(ListenAddr::Udp { host, port }),
                _ => unreachable!("parse_host_port makes a TCP address"),
            };
        }
        ListenAddr::parse_host_port(addr, addr)
    }

    /// `host:port`, `[v6]:port` or `:port` in `text`; errors name `addr`,
    /// the whole address as written.
    fn parse_host_port(text: &str, addr: &str) -> Result<ListenAddr, Error> {
        let invalid = |reason: String| Error::InvalidAddress {
            addr: addr.to_string(),
            reason,
        };
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(invalid(
                "missing port; write \"host:port\" or \":port\"".into(),
            ));
        };
        let port: u16 = match port.parse::<u64>() {
            Ok(p) if p <= u64::from(u16::MAX) => p as u16,
            Ok(p) => {
                return Err(invalid(format!(
                    "port {p} is out of range; ports go from 0 to 65535"
                )))
            }
            Err(_) if port.is_empty() => {
                return Err(invalid(
                    "missing port; write \"host:port\" or \":port\"".into(),
                ))
            }
            Err(_) => return Err(invalid(format!("port `{port}` is not a number"))),
        };
        let host = if host.is_empty() {
            None
        } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<Ipv6Addr>()
                .map_err(|_| invalid(format!("`{v6}` is not an IPv6 address")))?;
            Some(v6.to_string())
        } else if host.contains(':') || host.contains('[') || host.contains(']') {
            return Err(invalid(
                "IPv6 addresses need brackets, as in \"[::1]:8080\"".into(),
            ));
        } else if host.contains(char::is_whitespace) || host.contains('/') {
            return Err(invalid(format!(
                "`{host}` is not a host name or IP address"
            )));
        } else {
            Some(host.to_string())
        };
        Ok(ListenAddr::Tcp { host, port })
    }

    /// What the listener is held under (by the Unix listener table): the
    /// address as it will be bound,
    /// so that `"localhost:8080"` and `"127.0.0.1:8080"` (or a name whose
    /// address changed, between two versions) find the same socket.
    #[cfg(unix)]
    pub(crate) fn key(&self) -> Result<String, BindError> {
        Ok(match self {
            ListenAddr::Tcp { host: None, port } => format!(":{port}"),
            ListenAddr::Tcp {
                host: Some(host),
                port,
            } => resolve(host, *port)?.to_string(),
            ListenAddr::Udp { host: None, port } => format!("udp::{port}"),
            ListenAddr::Udp {
                host: Some(host),
                port,
            } => format!("udp:{}", resolve(host, *port)?),
            ListenAddr::Unix(_) | ListenAddr::Unixgram(_) | ListenAddr::Systemd(_) => {
                self.to_string()
            }
        })
    }

    /// Whether this is an address for a datagram handler.
    pub(crate) fn is_datagram(&self) -> bool {
        matches!(self, ListenAddr::Udp { .. } | ListenAddr::Unixgram(_))
    }

    /// Binds a new listening socket (CLOEXEC, never SO_REUSEPORT) and returns
    /// it with the address it is bound to.
    pub(crate) fn bind(&self) -> Result<(Socket, String), BindError> {
        match self {
            ListenAddr::Tcp { host, port } => bind_ip(host.as_deref(), *port, Type::STREAM),
            ListenAddr::Udp { host, port } => bind_ip(host.as_deref(), *port, Type::DGRAM),
            #[cfg(unix)]
            ListenAddr::Unix(path) => bind_unix(path, Type::STREAM),
            #[cfg(unix)]
            ListenAddr::Unixgram(path) => bind_unix(path, Type::DGRAM),
            #[cfg(not(unix))]
            ListenAddr::Unix(path) | ListenAddr::Unixgram(path) => {
                Err(BindError::UnixUnsupported { path: path.clone() })
            }
            ListenAddr::Systemd(name) => Err(BindError::NoSystemdSocket { name: name.clone() }),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp { host: None, port } => write!(f, ":{port}"),
            ListenAddr::Tcp {
                host: Some(h),
                port,
            } if h.contains(':') => write!(f, "[{h}]:{port}"),
            ListenAddr::Tcp {
                host: Some(h),
                port,
            } => write!(f, "{h}:{port}"),
            ListenAddr::Udp { host, port } => {
                let tcp = ListenAddr::Tcp {
                    host: host.clone(),
                    port: *port,
                };
                write!(f, "udp:{tcp}")
            }
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Unixgram(path) => write!(f, "unixgram:{}", path.display()),
            ListenAddr::Systemd(name) => write!(f, "systemd:{name}"),
        }
    }
}

/// A socket of `kind` bound at `addr`: a stream socket listens, a datagram
/// socket is ready to receive.
fn listen_on(
    domain: Domain,
    kind: Type,
    addr: &SockAddr,
    v6_only: Option<bool>,
) -> io::Result<Socket> {
    // socket2 sets close-on-exec (atomically where the system can, as on
    // Linux) and, on Windows, makes the socket non-inheritable.
    let socket = Socket::new(domain, kind, None)?;
    if let Some(only) = v6_only {
        socket.set_only_v6(only)?;
    }
    let stream = kind == Type::STREAM;
    if stream && domain != Domain::UNIX {
        // Lets a restarted service bind while old connections sit in
        // TIME_WAIT. Never on UDP, where it would let a second socket bind
        // the same port and share its datagrams.
        socket.set_reuse_address(true)?;
    }
    socket.bind(addr)?;
    if stream {
        socket.listen(BACKLOG)?;
    }
    Ok(socket)
}

/// Whether `socket()` failed because the machine has no IPv6.
fn no_ipv6(e: &io::Error) -> bool {
    #[cfg(unix)]
    let code = nix::libc::EAFNOSUPPORT;
    // WSAEAFNOSUPPORT
    #[cfg(not(unix))]
    let code = 10047;
    e.raw_os_error() == Some(code)
}

/// The socket address `host:port` means: the IP address itself, or the
/// first address of the name, IPv4 preferred (as Go does).
fn resolve(host: &str, port: u16) -> Result<SocketAddr, BindError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut found: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| BindError::Resolve {
            host: host.to_string(),
            source,
        })?
        .collect();
    found.sort_by_key(|a| a.is_ipv6());
    found.first().copied().ok_or_else(|| BindError::NoAddress {
        host: host.to_string(),
    })
}

/// A TCP listener or a UDP socket at `host:port`, and the address it is
/// bound to, as the listener table names it (`udp:` before a UDP one).
fn bind_ip(host: Option<&str>, port: u16, kind: Type) -> Result<(Socket, String), BindError> {
    let bind_error = |addr: &SocketAddr, source| BindError::Bind {
        addr: addr.to_string(),
        source,
    };
    let socket = match host {
        None => {
            // Every interface: one dual-stack socket, or IPv4 only where the
            // machine has no IPv6.
            let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
            match listen_on(Domain::IPV6, kind, &any6.into(), Some(false)) {
                Ok(s) => s,
                Err(e) if no_ipv6(&e) => {
                    let any4 = SocketAddr::from(([0, 0, 0, 0], port));
                    listen_on(Domain::IPV4, kind, &any4.into(), None)
                        .map_err(|e| bind_error(&any4, e))?
                }
                Err(e) => return Err(bind_error(&any6, e)),
            }
        }
        Some(host) => {
            let addr = resolve(host, port)?;
            let domain = if addr.is_ipv6() {
                Domain::IPV6
            } else {
                Domain::IPV4
            };
            let v6_only = addr.is_ipv6().then_some(true);
            listen_on(domain, kind, &addr.into(), v6_only).map_err(|e| bind_error(&addr, e))?
        }
    };
    let local = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.to_string())
        .unwrap_or_else(|| "?".into());
    let udp = if kind == Type::DGRAM { "udp:" } else { "" };
    Ok((socket, format!("{udp}{local}")))
}

/// A Unix stream listener or datagram socket at `path`, replacing a stale
/// socket file of the same kind there.
#[cfg(unix)]
fn bind_unix(path: &Path, kind: Type) -> Result<(Socket, String), BindError> {
    // Before anything at the path is touched: a stale socket there is not
    // removed for a bind that cannot succeed.
    if let Some(reason) = unix_path_too_long(path) {
        return Err(BindError::TooLong {
            path: path.to_path_buf(),
            reason,
        });
    }
    let path_error = |what, source| BindError::Path {
        what,
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(BindError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            // A socket file is stale if nothing accepts or receives on it
            // any more: a connection of the same kind is refused.
            let probe = if kind == Type::STREAM {
                std::os::unix::net::UnixStream::connect(path).map(drop)
            } else {
                std::os::unix::net::UnixDatagram::unbound().and_then(|d| d.connect(path))
            };
            match probe {
                Ok(()) => {
                    return Err(BindError::InUse {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(|e| path_error("remove the stale socket", e))?;
                }
                Err(source) => {
                    return Err(BindError::Check {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(path_error("inspect", e)),
    }
    let bind_error = |source| BindError::Bind {
        addr: path.display().to_string(),
        source,
    };
    let addr = SockAddr::unix(path).map_err(bind_error)?;
    let socket = listen_on(Domain::UNIX, kind, &addr, None).map_err(bind_error)?;
    let scheme = if kind == Type::STREAM {
        "unix"
    } else {
        "unixgram"
    };
    Ok((socket, format!("{scheme}:{}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: Option<&str>, port: u16) -> ListenAddr {
        ListenAddr::Tcp {
            host: host.map(str::to_string),
            port,
        }
    }

    #[test]
    fn parses_the_accepted_forms() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:8080").unwrap(),
            tcp(Some("127.0.0.1"), 8080)
        );
        assert_eq!(
            ListenAddr::parse("[::1]:8080").unwrap(),
            tcp(Some("::1"), 8080)
        );
        assert_eq!(ListenAddr::parse(":9222").unwrap(), tcp(None, 9222));
        assert_eq!(
            ListenAddr::parse("localhost:0").unwrap(),
            tcp(Some("localhost"), 0)
        );
        assert_eq!(
            ListenAddr::parse("unix:/tmp/a.sock").unwrap(),
            ListenAddr::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("[::1]:80").unwrap().to_string(),
            "[::1]:80"
        );
    }

    #[test]
    fn parses_the_datagram_forms() {
        let udp = |host: Option<&str>, port| ListenAddr::Udp {
            host: host.map(str::to_string),
            port,
        };
        for (text, parsed) in [
            ("udp:127.0.0.1:5353", udp(Some("127.0.0.1"), 5353)),
            ("udp:[::1]:5353", udp(Some("::1"), 5353)),
            ("udp::5353", udp(None, 5353)),
            ("udp:localhost:0", udp(Some("localhost"), 0)),
        ] {
            let addr = ListenAddr::parse(text).unwrap();
            assert_eq!(addr, parsed, "{text}");
            assert!(addr.is_datagram());
            assert_eq!(addr.to_string(), text);
        }
        let gram = ListenAddr::parse("unixgram:/run/a.sock").unwrap();
        assert_eq!(gram, ListenAddr::Unixgram("/run/a.sock".into()));
        assert!(gram.is_datagram());
        assert_eq!(gram.to_string(), "unixgram:/run/a.sock");
        assert!(!ListenAddr::parse(":53").unwrap().is_datagram());
        assert!(!ListenAddr::parse("unix:/a").unwrap().is_datagram());
        #[cfg(unix)]
        {
            // TCP and UDP on one port, or a stream and a datagram socket at
            // one path, are different sockets.
            let key = |text: &str| ListenAddr::parse(text).unwrap().key().unwrap();
            assert_eq!(key("udp::53"), "udp::53");
            assert_eq!(key("udp:localhost:53"), "udp:127.0.0.1:53");
            assert_ne!(key("udp::53"), key(":53"));
            assert_ne!(key("unixgram:/a"), key("unix:/a"));
        }
        let reason = |text: &str| ListenAddr::parse(text).unwrap_err().to_string();
        assert_eq!(
            reason("udp:"),
            "invalid address \"udp:\": missing port; write \"host:port\" or \":port\""
        );
        assert!(
            reason("udp:::1:53").contains("brackets"),
            "{}",
            reason("udp:::1:53")
        );
        assert!(reason("udp:[zz]:53").contains("not an IPv6"));
        assert!(reason("udp::99999").contains("out of range"));
        assert!(reason("unixgram:").contains("`unixgram:` needs a path"));
        assert!(reason(&format!("unixgram:/{}", "a".repeat(200)))
            .contains("201 bytes long; a Unix socket's address holds at most"));
    }

    #[test]
    fn rejects_bad_addresses_with_reasons() {
        let reason = |a: &str| match ListenAddr::parse(a) {
            Err(Error::InvalidAddress { addr, reason }) => {
                assert_eq!(addr, a);
                reason
            }
            other => panic!("{a}: expected an error, got {other:?}"),
        };
        assert!(reason("").contains("empty"));
        assert!(reason("localhost").contains("missing port"));
        assert!(reason("localhost:").contains("missing port"));
        assert!(reason(":65536").contains("out of range"));
        assert!(reason(":http").contains("not a number"));
        assert!(reason("::1:80").contains("brackets"));
        assert!(reason("[zz]:80").contains("not an IPv6"));
        assert!(reason("unix:").contains("needs a path"));
        assert!(reason("systemd:").contains("needs the socket's name"));
        assert_eq!(
            ListenAddr::parse("systemd:web").unwrap(),
            ListenAddr::Systemd("web".into())
        );
        assert!(reason(&format!("unix:/{}", "a".repeat(200)))
            .contains("201 bytes long; a Unix socket's address holds at most"));
    }

    #[test]
    fn unix_mode_is_checked_against_the_address() {
        let reason = |addr: &str, mode| match ListenRequest::new(addr, Some(mode)) {
            Err(Error::InvalidAddress { reason, .. }) => reason,
            other => panic!("{addr}: expected an error, got {other:?}"),
        };
        assert!(reason(":80", 0o600).contains("\"unix:\" and \"unixgram:\" addresses only"));
        assert!(reason("udp::80", 0o600).contains("addresses only"));
        assert_eq!(
            ListenRequest::new("unixgram:/a", Some(0o660))
                .unwrap()
                .unix_mode,
            Some(0o660)
        );
        assert!(reason("unix:/a", 0o10000).contains("not a file mode"));
        let ok = ListenRequest::new("unix:/a", Some(0o7777)).unwrap();
        assert_eq!(ok.unix_mode, Some(0o7777));
        assert_eq!(ListenRequest::new(":80", None).unwrap().addr, tcp(None, 80));
    }

    #[test]
    fn edges_of_the_address_rules() {
        // The longest Unix path is accepted, one byte more is not.
        let longest = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX - 1));
        assert!(ListenAddr::parse(&longest).is_ok());
        let longer = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX));
        let err = ListenAddr::parse(&longer).unwrap_err().to_string();
        let limit = format!(
            "the socket path is {} bytes long; a Unix socket's address holds at most {UNIX_PATH_MAX}",
            UNIX_PATH_MAX + 1
        );
        assert!(err.contains(&limit), "{err}");
        assert_eq!(ListenAddr::parse(":65535").unwrap(), tcp(None, 65535));
        // Each character that cannot be in a host, alone.
        for bad in ["[a:80", "a]:80", "a:b:80"] {
            let err = ListenAddr::parse(bad).unwrap_err().to_string();
            assert!(err.contains("need brackets"), "{bad}: {err}");
        }
        for bad in ["a b:80", "a/b:80"] {
            let err = ListenAddr::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("is not a host name or IP address"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bind_errors_say_what_usually_causes_them() {
        let bind = |kind: io::ErrorKind| {
            BindError::Bind {
                addr: "127.0.0.1:81".into(),
                source: io::Error::from(kind),
            }
            .to_string()
        };
        assert_eq!(
            bind(io::ErrorKind::AddrInUse),
            "bind 127.0.0.1:81: address already in use (another process listens there)"
        );
        assert_eq!(
            bind(io::ErrorKind::PermissionDenied),
            "bind 127.0.0.1:81: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        );
        assert_eq!(
            bind(io::ErrorKind::AddrNotAvailable),
            "bind 127.0.0.1:81: the address is not on this machine"
        );
        assert!(bind(io::ErrorKind::TimedOut).starts_with("bind 127.0.0.1:81: "));
    }

    #[cfg(unix)]
    #[test]
    fn only_a_missing_ipv6_stack_falls_back_to_ipv4() {
        assert!(no_ipv6(&io::Error::from_raw_os_error(
            nix::libc::EAFNOSUPPORT
        )));
        assert!(!no_ipv6(&io::Error::from_raw_os_error(
            nix::libc::EADDRINUSE
        )));
        // A port in use on every interface is an error naming the
        // dual-stack address, not a silent retry on IPv4.
        let (taken, local) = ListenAddr::parse(":0").unwrap().bind().unwrap();
        let port: u16 = local.rsplit(':').next().unwrap().parse().unwrap();
        let err = ListenAddr::Tcp { host: None, port }
            .bind()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("bind [::]:{port}: address already in use")),
            "{err}"
        );
        drop(taken);
    }

    #[test]
    fn tcp_listeners_reuse_addresses_in_time_wait() {
        let (socket, _) = ListenAddr::parse("127.0.0.1:0").unwrap().bind().unwrap();
        assert!(socket.reuse_address().unwrap());
    }

    #[test]
    fn udp_sockets_never_share_their_port() {
        let (socket, local) = ListenAddr::parse("udp:127.0.0.1:0")
            .unwrap()
            .bind()
            .unwrap();
        assert_eq!(socket.r#type().unwrap(), Type::DGRAM);
        assert!(!socket.reuse_address().unwrap());
        assert!(local.starts_with("udp:127.0.0.1:"), "{local}");
        let port: u16 = local.rsplit(':').next().unwrap().parse().unwrap();
        let again = ListenAddr::Udp {
            host: Some("127.0.0.1".into()),
            port,
        };
        let err = again.bind().unwrap_err().to_string();
        assert!(err.contains("address already in use"), "{err}");
    }

    #[test]
    fn binds_port_zero_and_reports_the_port() {
        let (_fd, local) = ListenAddr::parse("127.0.0.1:0").unwrap().bind().unwrap();
        assert!(local.starts_with("127.0.0.1:"));
        assert_ne!(local, "127.0.0.1:0");
    }

    #[cfg(unix)]
    #[test]
    fn unix_socket_rules() {
        let dir = std::env::temp_dir().join(format!("graceful-addr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let addr = ListenAddr::Unix(sock.clone());
        let (fd, local) = addr.bind().unwrap();
        assert_eq!(local, format!("unix:{}", sock.display()));
        // Live listener: never removed.
        assert!(addr.bind().unwrap_err().to_string().contains("in use"));
        drop(fd);
        // Stale file: replaced.
        let (_fd, _) = addr.bind().unwrap();
        // A regular file is never removed.
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = ListenAddr::Unix(file.clone())
            .bind()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert!(file.exists());
        // Nor is a directory.
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let err = ListenAddr::Unix(sub.clone())
            .bind()
            .unwrap_err()
            .to_string();
        let expected = format!("{} exists and is not a socket", sub.display());
        assert!(err.contains(&expected), "{err}");
        assert!(sub.is_dir());
        // A socket file someone else uses for datagrams: connecting fails
        // with another error than "refused", so it is not stale either.
        let dgram = dir.join("dgram.sock");
        let _datagram = std::os::unix::net::UnixDatagram::bind(&dgram).unwrap();
        let err = ListenAddr::Unix(dgram.clone())
            .bind()
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot check whether"), "{err}");
        assert!(dgram.exists());
        // A datagram socket at a path: a live one is in use, a stale one
        // is replaced, and a stream listener's file is not taken for one.
        let gram = ListenAddr::Unixgram(dir.join("g.sock"));
        let (live, local) = gram.bind().unwrap();
        assert_eq!(local, format!("unixgram:{}", dir.join("g.sock").display()));
        assert_eq!(live.r#type().unwrap(), Type::DGRAM);
        assert!(gram.bind().unwrap_err().to_string().contains("in use"));
        drop(live);
        let (_again, _) = gram.bind().unwrap();
        let stream = ListenAddr::Unix(dir.join("stream.sock"));
        let (_listener, _) = stream.bind().unwrap();
        let err = ListenAddr::Unixgram(dir.join("stream.sock"))
            .bind()
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot check whether"), "{err}");
        // A path that cannot be inspected (its parent is a file).
        let under_file = file.join("x.sock");
        let err = ListenAddr::Unix(under_file).bind().unwrap_err().to_string();
        assert!(err.starts_with("cannot inspect"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
