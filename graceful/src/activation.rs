//! systemd socket activation: the sockets systemd passes to the master
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), taken before anything else
//! runs and handed to workers like any other listener, by name
//! (`"systemd:web"`) or by address (`":8080"`).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use crate::addr::ListenAddr;
use crate::fd::set_cloexec;
use crate::log::log;

/// First descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// One activated socket.
#[derive(Debug)]
pub(crate) struct Activated {
    pub(crate) name: String,
    pub(crate) fd: OwnedFd,
    pub(crate) local: Local,
}

/// Where an activated socket listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Local {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// A UDP socket.
    Udp(SocketAddr),
    /// A Unix datagram socket bound at a path.
    Unixgram(PathBuf),
    Other,
}

impl Local {
    /// Where the socket `fd` listens; an error if it is not a socket.
    pub(crate) fn of(fd: BorrowedFd<'_>) -> std::io::Result<Local> {
        let socket = socket2::SockRef::from(&fd);
        let addr = socket.local_addr()?;
        let datagram = match socket.r#type()? {
            socket2::Type::STREAM => false,
            socket2::Type::DGRAM => true,
            _ => return Ok(Local::Other),
        };
        Ok(match (addr.as_socket(), addr.as_pathname(), datagram) {
            (Some(ip), _, false) => Local::Tcp(ip),
            (Some(ip), _, true) => Local::Udp(ip),
            (None, Some(path), false) => Local::Unix(path.to_path_buf()),
            (None, Some(path), true) => Local::Unixgram(path.to_path_buf()),
            _ => Local::Other,
        })
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Local::Tcp(addr) => addr.to_string(),
            Local::Unix(path) => format!("unix:{}", path.display()),
            Local::Udp(addr) => format!("udp:{addr}"),
            Local::Unixgram(path) => format!("unixgram:{}", path.display()),
            Local::Other => "?".into(),
        }
    }

    /// A datagram socket: UDP or Unix datagram.
    pub(crate) fn is_datagram(&self) -> bool {
        matches!(self, Local::Udp(_) | Local::Unixgram(_))
    }

    /// Whether a `register!` address means this socket.
    pub(crate) fn matches(&self, addr: &ListenAddr) -> bool {
        let ip_matches = |local: &SocketAddr, host: &Option<String>, port: u16| match host {
            None => port != 0 && local.port() == port && local.ip().is_unspecified(),
            Some(host) => {
                port != 0 && local.port() == port && host.parse().ok() == Some(local.ip())
            }
        };
        match (self, addr) {
            (Local::Tcp(local), ListenAddr::Tcp { host, port })
            | (Local::Udp(local), ListenAddr::Udp { host, port }) => ip_matches(local, host, *port),
            (Local::Unix(local), ListenAddr::Unix(path))
            | (Local::Unixgram(local), ListenAddr::Unixgram(path)) => local == path,
            _ => false,
        }
    }
}

/// The number of descriptors `LISTEN_FDS` passes: a number from 0 up to what
/// this process may have open (`limit`, the soft `RLIMIT_NOFILE`) less the
/// three standard ones.
fn parse_count(text: &str, limit: u64) -> Result<i32, String> {
    let count: u64 = text.parse().map_err(|_| "not a number".to_string())?;
    let most = limit
        .saturating_sub(FIRST_FD as u64)
        .min(i32::MAX as u64 - FIRST_FD as u64);
    if count > most {
        return Err(format!(
            "more descriptors than this process may have open ({most} at most)"
        ));
    }
    Ok(count as i32)
}

/// Takes the activated sockets, if they are for this process, and removes
/// the variables so that workers do not see them.
pub(crate) fn take() -> Vec<Activated> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let Some(count) = count else {
        return Vec::new();
    };
    match pid.as_deref() {
        // As `systemfd --no-pid` passes sockets to `cargo watch`, whose
        // child is this process: the sockets are meant for whoever runs.
        None => log!(
            "LISTEN_FDS={count} without LISTEN_PID (as systemfd --no-pid passes them): taking them"
        ),
        Some(pid) if pid.parse::<u32>().ok() == Some(std::process::id()) => {}
        Some(pid) => {
            log!("ignoring LISTEN_FDS={count}: LISTEN_PID={pid} is not this process");
            return Vec::new();
        }
    }
    let limit = crate::fd::open_file_limit().unwrap_or(1024);
    let count = match parse_count(&count, limit) {
        Ok(count) => count,
        Err(why) => {
            log!("ignoring LISTEN_FDS={count:?}: {why}");
            return Vec::new();
        }
    };
    let names: Vec<String> = names
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (index, raw) in (FIRST_FD..FIRST_FD + count).enumerate() {
        // SAFETY: borrowed only to inspect it; systemd passed it to this
        // process and nothing else here refers to it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        let local = match Local::of(borrowed) {
            Ok(local) => local,
            Err(e) => {
                log!("ignoring activated descriptor {raw}: not a socket ({e})");
                continue;
            }
        };
        if let Err(e) = set_cloexec(borrowed) {
            log!("ignoring activated descriptor {raw}: {e}");
            continue;
        }
        // SAFETY: the descriptor is open (getsockname succeeded) and from now
        // on owned by the master alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = names
            .get(index)
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        log!(
            "socket activation: {} as {:?} (descriptor {})",
            local.describe(),
            name,
            fd.as_raw_fd()
        );
        out.push(Activated { name, fd, local });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn tcp(addr: &str) -> ListenAddr {
        ListenAddr::parse(addr).unwrap()
    }

    #[test]
    fn an_activated_socket_is_meant_by_its_address() {
        let any = Local::Tcp("0.0.0.0:8080".parse().unwrap());
        let any6 = Local::Tcp("[::]:8080".parse().unwrap());
        let lo = Local::Tcp("127.0.0.1:8080".parse().unwrap());
        for every in [&any, &any6] {
            assert!(every.matches(&tcp(":8080")));
            assert!(!every.matches(&tcp(":8081")));
            assert!(!every.matches(&tcp(":0")), "port 0 means a new socket");
            assert!(!every.matches(&tcp("127.0.0.1:8080")));
        }
        assert!(!lo.matches(&tcp(":8080")), "not every interface");
        assert!(lo.matches(&tcp("127.0.0.1:8080")));
        assert!(!lo.matches(&tcp("127.0.0.2:8080")));
        assert!(!lo.matches(&tcp("127.0.0.1:8081")));
        assert!(!lo.matches(&tcp("127.0.0.1:0")));
        assert!(
            !lo.matches(&tcp("localhost:8080")),
            "names are not resolved here"
        );
        let unix = Local::Unix("/run/app.sock".into());
        assert!(unix.matches(&tcp("unix:/run/app.sock")));
        assert!(!unix.matches(&tcp("unix:/run/other.sock")));
        assert!(!unix.matches(&tcp(":8080")));
        assert!(!lo.matches(&tcp("unix:/run/app.sock")));
        assert!(!Local::Other.matches(&tcp(":8080")));
        // Datagram sockets are meant by datagram addresses only.
        let udp = Local::Udp("0.0.0.0:5353".parse().unwrap());
        assert!(udp.matches(&tcp("udp::5353")));
        assert!(!udp.matches(&tcp(":5353")));
        assert!(!udp.matches(&tcp("udp::0")));
        assert!(!any.matches(&tcp("udp::8080")));
        let udp_lo = Local::Udp("127.0.0.1:5353".parse().unwrap());
        assert!(udp_lo.matches(&tcp("udp:127.0.0.1:5353")));
        assert!(!udp_lo.matches(&tcp("udp::5353")));
        let gram = Local::Unixgram("/run/app.sock".into());
        assert!(gram.matches(&tcp("unixgram:/run/app.sock")));
        assert!(!gram.matches(&tcp("unix:/run/app.sock")));
        assert!(!unix.matches(&tcp("unixgram:/run/app.sock")));
        assert!(udp.is_datagram() && gram.is_datagram() && !unix.is_datagram());
        assert_eq!(udp.describe(), "udp:0.0.0.0:5353");
        assert_eq!(gram.describe(), "unixgram:/run/app.sock");
    }

    #[test]
    fn where_a_socket_listens() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        assert_eq!(Local::of(tcp.as_fd()).unwrap(), Local::Tcp(addr));
        let path = std::env::temp_dir().join(format!("graceful-local-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(Local::of(unix.as_fd()).unwrap(), Local::Unix(path.clone()));
        std::fs::remove_file(&path).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = udp.local_addr().unwrap();
        assert_eq!(Local::of(udp.as_fd()).unwrap(), Local::Udp(at));
        let gram = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        assert_eq!(
            Local::of(gram.as_fd()).unwrap(),
            Local::Unixgram(path.clone())
        );
        std::fs::remove_file(&path).unwrap();
        let seqpacket =
            socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
        assert_eq!(Local::of(seqpacket.as_fd()).unwrap(), Local::Other);
        let (unnamed, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(Local::of(unnamed.as_fd()).unwrap(), Local::Other);
        assert_eq!(Local::Other.describe(), "?");
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(Local::of(file.as_fd()).is_err(), "not a socket");
    }

    #[test]
    fn listen_fds_is_a_bounded_number() {
        // With no limit, the most that 3 + count can hold.
        assert_eq!(parse_count("2147483644", u64::MAX), Ok(i32::MAX - 3));
        assert_eq!(parse_count("0", 1024), Ok(0));
        assert_eq!(parse_count("2", 1024), Ok(2));
        assert_eq!(parse_count("1021", 1024), Ok(1021));
        let too_many = parse_count("1022", 1024).unwrap_err();
        assert_eq!(
            too_many,
            "more descriptors than this process may have open (1021 at most)"
        );
        assert!(parse_count("100000", 1024).is_err());
        // 3 + i32::MAX would overflow: refused even with no limit.
        assert!(parse_count(&(i32::MAX as u64).to_string(), u64::MAX).is_err());
        assert_eq!(parse_count("-1", 1024), Err("not a number".to_string()));
        assert_eq!(parse_count("two", 1024), Err("not a number".to_string()));
    }
}
