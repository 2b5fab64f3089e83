//! Immediate TCP acknowledgements on the MQTT connection (Linux `TCP_QUICKACK`).
//!
//! Why: Mosquitto leaves Nagle's algorithm on by default (`set_tcp_nodelay false`), so
//! it holds each small PUBLISH to the gateway until the TCP ACK of the previous one
//! arrives. The gateway's kernel delays that ACK to piggyback it on the gateway's next
//! packet, and the gateway's next packet is the PUBACK, which waits for the fsync
//! (`wal.sync_linger`). At 1,000 msg/s that holds every message up to the whole
//! linger on its way *in* (publish -> gateway receive p50 6 ms, p99 12 ms instead of
//! 0 and 2; docs/BENCHMARKS.md). Asking for a quick ACK after reading sends the
//! pending ACK at once, so Mosquitto sends the next PUBLISH without waiting.
//!
//! rumqttc does not expose its socket, so the socket is found among the process's
//! file descriptors by its peer address once per connection. `TCP_QUICKACK` is not
//! sticky (the kernel goes back to delayed ACKs by itself), so it is set again after
//! reads: at once if the last time was at least [`MIN_INTERVAL`] ago, otherwise when
//! that interval ends ([`QuickAck::due`]). So a read is ACKed within 1 ms, and under
//! load there are at most 1,000 calls (and ACK packets) per second: each extra ACK
//! makes Mosquitto send smaller segments, which costs both sides CPU. Everything here
//! is best effort: on failure the gateway works without it, only with the delay.

use std::time::{Duration, Instant};

/// Least time between two `TCP_QUICKACK` calls (bounds the calls and the extra ACK
/// packets under load).
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// The MQTT connection's socket, if found.
#[derive(Debug, Default)]
pub struct QuickAck {
    #[cfg(target_os = "linux")]
    fd: Option<i32>,
    last: Option<Instant>,
    /// A read was not ACKed yet: ACK when `last + MIN_INTERVAL` comes.
    pending: bool,
}

impl QuickAck {
    /// Find the socket connected to `port` (and to `ip`, when the broker address is
    /// one) after a (re)connect.
    pub fn attach(&mut self, ip: Option<std::net::IpAddr>, port: u16) {
        #[cfg(target_os = "linux")]
        {
            self.fd = linux::find_peer_socket(ip, port);
            match self.fd {
                Some(fd) => tracing::debug!(fd, "MQTT socket found; quick TCP ACKs on"),
                None => tracing::debug!("MQTT socket not found; quick TCP ACKs off"),
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (ip, port);
        self.last = None;
        self.pending = false;
    }

    /// Forget the socket (the connection is gone; its descriptor may be reused).
    pub fn detach(&mut self) {
        #[cfg(target_os = "linux")]
        {
            self.fd = None;
        }
        self.pending = false;
    }

    /// After reading from the connection: send the pending TCP ACK now, or at
    /// [`QuickAck::due`] if the last one was less than [`MIN_INTERVAL`] ago.
    pub fn after_read(&mut self) {
        if !self.attached() {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < MIN_INTERVAL)
        {
            self.pending = true;
        } else {
            self.fire_at(now);
        }
    }

    /// When a deferred ACK is due, if one is.
    pub fn due(&self) -> Option<Instant> {
        if !self.pending {
            return None;
        }
        self.last.map(|t| t + MIN_INTERVAL)
    }

    /// Send the deferred ACK (call at [`QuickAck::due`]).
    pub fn fire(&mut self) {
        self.fire_at(Instant::now());
    }

    fn fire_at(&mut self, now: Instant) {
        self.pending = false;
        self.last = Some(now);
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.fd {
            if !linux::quickack(fd) {
                self.fd = None;
            }
        }
    }

    /// True while a socket is attached.
    pub fn attached(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.fd.is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod linux {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// The peer address of `fd` if it is a connected TCP socket.
    fn tcp_peer(fd: i32) -> Option<(IpAddr, u16)> {
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid out-pointers of the sizes given; a non-socket fd fails cleanly.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut ty as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 || ty != libc::SOCK_STREAM {
            return None;
        }
        // SAFETY: sockaddr_storage is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `addr` is large enough for any address family; `len` says so.
        let rc = unsafe {
            libc::getpeername(
                fd,
                (&mut addr as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        match addr.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let a: &libc::sockaddr_in =
                    unsafe { &*(&addr as *const libc::sockaddr_storage).cast() };
                Some((
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                    u16::from_be(a.sin_port),
                ))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let a: &libc::sockaddr_in6 =
                    unsafe { &*(&addr as *const libc::sockaddr_storage).cast() };
                Some((
                    IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)),
                    u16::from_be(a.sin6_port),
                ))
            }
            _ => None,
        }
    }

    /// The newest descriptor of a TCP socket connected to `port` (and `ip`, if given).
    pub fn find_peer_socket(ip: Option<IpAddr>, port: u16) -> Option<i32> {
        let dir = std::fs::read_dir("/proc/self/fd").ok()?;
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|fd| {
                tcp_peer(*fd).is_some_and(|(peer_ip, peer_port)| {
                    peer_port == port && ip.is_none_or(|ip| same_ip(ip, peer_ip))
                })
            })
            .max()
    }

    fn same_ip(a: IpAddr, b: IpAddr) -> bool {
        let canon = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        canon(a) == canon(b)
    }

    /// Set `TCP_QUICKACK`; false when `fd` is no longer a TCP socket.
    pub fn quickack(fd: i32) -> bool {
        let one: libc::c_int = 1;
        // SAFETY: a valid pointer to an int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn finds_the_socket_by_its_peer_and_sets_quickack() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let mut q = QuickAck::default();
        q.attach(Some("127.0.0.1".parse().unwrap()), port);
        assert!(q.attached(), "the connected socket was not found");
        {
            use std::os::fd::AsRawFd;
            assert_eq!(q.fd, Some(client.as_raw_fd()));
        }
        q.after_read();
        assert!(q.attached(), "TCP_QUICKACK failed on a TCP socket");
        assert_eq!(q.due(), None, "the first read is ACKed at once");
        // A second read within MIN_INTERVAL is deferred, then fired.
        q.last = Some(Instant::now());
        q.after_read();
        let due = q.due().expect("deferred");
        assert!(due <= Instant::now() + MIN_INTERVAL);
        q.fire();
        assert_eq!(q.due(), None);
        assert!(q.attached());
        // Another address, or a port nothing is connected to: not found.
        q.attach(Some("127.0.0.2".parse().unwrap()), port);
        assert!(!q.attached());
        q.attach(None, 1);
        assert!(!q.attached());
    }
}
