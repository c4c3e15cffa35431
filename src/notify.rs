//! A `NOTIFY_SOCKET` listener, standing in for systemd: the tests read what a
//! service tells systemd, and which process sent it.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};

pub struct Notifications {
    socket: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`: a path, or `@name` for an abstract socket.
    address: String,
    /// The temporary directory of a path socket made by [`bind`], removed
    /// when this is dropped.
    ///
    /// [`bind`]: Notifications::bind
    _dir: Option<crate::TempDir>,
}

impl Notifications {
    /// A socket at `notify.sock` in a fresh temporary directory for `name`;
    /// each receive waits up to `timeout`.
    pub fn bind(name: &str, timeout: Duration) -> Notifications {
        let dir = crate::temp_dir(name);
        let mut notes = Notifications::bind_in(&dir, timeout);
        notes._dir = Some(dir);
        notes
    }

    /// A socket at `notify.sock` in `dir`, which the caller owns: for a test
    /// whose `Notifications` moves to a thread that outlives it, so that the
    /// directory is still removed when the test ends.
    pub fn bind_in(dir: &Path, timeout: Duration) -> Notifications {
        let path = dir.join("notify.sock");
        let socket =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        Notifications::new(socket, path.to_str().unwrap().to_string(), timeout)
    }

    /// An abstract socket (Linux), named after this test process.
    pub fn bind_abstract(timeout: Duration) -> Notifications {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("graceful-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        Notifications::new(socket, format!("@{name}"), timeout)
    }

    fn new(socket: UnixDatagram, address: String, timeout: Duration) -> Notifications {
        socket.set_read_timeout(Some(timeout)).unwrap();
        // The sender's credentials come with every datagram.
        setsockopt(&socket, sockopt::PassCred, &true).unwrap();
        Notifications {
            socket,
            address,
            _dir: None,
        }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The next message; panics if none comes within the timeout.
    pub fn recv(&self) -> String {
        self.recv_with_pid().0
    }

    /// The next message and the PID that sent it.
    pub fn recv_with_pid(&self) -> (String, i32) {
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(UnixCredentials);
        let msg = recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .expect("a notification within the timeout");
        let pid = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
                _ => None,
            })
            .expect("the sender's credentials");
        let n = msg.bytes;
        (String::from_utf8(buf[..n].to_vec()).unwrap(), pid)
    }
}
