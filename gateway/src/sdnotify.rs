//! systemd's notification protocol (`sd_notify(3)`) and watchdog, without libsystemd:
//! one datagram per message to the socket named by `NOTIFY_SOCKET` (a path, or
//! `@name` for an abstract socket).
//!
//! * `READY=1` once the WAL is open and the admin API and the loops are running
//!   (`Type=notify` units are "started" only then),
//! * `STATUS=...` lines for `systemctl status`,
//! * `WATCHDOG=1` every `WATCHDOG_USEC / 2` (`WatchdogSec=`), but only while every
//!   long-running loop has beaten within the watchdog interval
//!   ([`crate::state::Heartbeats`]): a stuck loop makes systemd kill and restart the
//!   gateway; a broker outage does not (the loops keep beating while they wait),
//! * `STOPPING=1` when shutdown begins.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) all of this is a no-op.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wal::Wal;

use crate::state::{Shared, HEARTBEAT_TICK};

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// What `NOTIFY_SOCKET` said, for messages.
    name: String,
}

/// Parse a `NOTIFY_SOCKET` value: an absolute path, or `@name` (abstract namespace).
pub fn socket_addr(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            return SocketAddr::from_abstract_name(name.as_bytes());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract sockets need Linux",
            ));
        }
    }
    if value.starts_with('/') {
        SocketAddr::from_pathname(value)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor @abstract",
        ))
    }
}

impl Notifier {
    /// Connect to the socket `value` names.
    pub fn new(value: &str) -> io::Result<Self> {
        Ok(Self {
            sock: UnixDatagram::unbound()?,
            addr: socket_addr(value)?,
            name: value.to_string(),
        })
    }

    /// From `NOTIFY_SOCKET`; `None` if it is unset or unusable (logged).
    pub fn from_env() -> Option<Self> {
        let value = std::env::var("NOTIFY_SOCKET").ok()?;
        match Self::new(&value) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(socket = %value, error = %e, "cannot use NOTIFY_SOCKET; not notifying systemd");
                None
            }
        }
    }

    /// Send one message (`KEY=value` lines). Failures are logged, never fatal.
    pub fn notify(&self, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            tracing::warn!(socket = %self.name, error = %e, "cannot notify systemd");
        }
    }
}

/// The watchdog interval from `WATCHDOG_USEC` / `WATCHDOG_PID` values: `None` if unset,
/// invalid, zero, or meant for another process.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// [`watchdog_interval`] from this process's environment.
pub fn watchdog_from_env() -> Option<Duration> {
    watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// How long a loop may stay silent before the watchdog stops being fed: the watchdog
/// interval, but never less than a few heartbeat ticks.
pub fn stale_limit(watchdog: Duration) -> Duration {
    watchdog.max(3 * HEARTBEAT_TICK)
}

fn status_line(shared: &Shared, wal: &Wal) -> String {
    let s = wal.stats();
    let mqtt = if shared.mqtt_connected.load(Relaxed) {
        "MQTT connected"
    } else {
        "MQTT not connected"
    };
    let wal_state = if shared.wal_writable.load(Relaxed) {
        ""
    } else {
        ", WAL NOT WRITABLE"
    };
    format!(
        "STATUS=Serving: {mqtt}, backlog {} records, {} dead letters{wal_state}",
        s.records, s.dead_letters
    )
}

/// Feed the watchdog (if `watchdog` is set) while the loops are healthy, keep
/// `STATUS=` current, and send `STOPPING=1` once `stopping` is cancelled.
pub async fn supervise(
    notifier: Arc<Notifier>,
    watchdog: Option<Duration>,
    shared: Arc<Shared>,
    wal: Arc<Wal>,
    stopping: CancellationToken,
) {
    let every = watchdog.map_or(Duration::from_secs(5), |w| {
        (w / 2).max(Duration::from_millis(1))
    });
    let limit = watchdog.map(stale_limit);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stuck: Option<&'static str> = None;
    let mut last_status = String::new();
    loop {
        tokio::select! {
            biased;
            _ = stopping.cancelled() => break,
            _ = tick.tick() => {}
        }
        let mut msg = String::new();
        if let Some(limit) = limit {
            match shared.heartbeats.stale(limit) {
                None => {
                    if let Some(name) = stuck.take() {
                        tracing::warn!(
                            loop_name = name,
                            "all loops beat again; feeding the systemd watchdog again"
                        );
                    }
                    msg.push_str("WATCHDOG=1\n");
                }
                Some((name, age)) => {
                    if stuck != Some(name) {
                        tracing::error!(
                            loop_name = name,
                            silent_for = ?age,
                            "loop stuck: no longer feeding the systemd watchdog (systemd restarts the gateway; the WAL keeps every record)"
                        );
                        stuck = Some(name);
                    }
                    let line = format!(
                        "STATUS=Stuck: the {name} loop has been silent for {}s; watchdog not fed",
                        age.as_secs()
                    );
                    if line != last_status {
                        msg.push_str(&line);
                        msg.push('\n');
                        last_status = line;
                    }
                }
            }
        }
        if stuck.is_none() {
            let line = status_line(&shared, &wal);
            if line != last_status {
                msg.push_str(&line);
                msg.push('\n');
                last_status = line;
            }
        }
        if !msg.is_empty() {
            notifier.notify(msg.trim_end());
        }
    }
    notifier.notify("STOPPING=1\nSTATUS=Stopping: draining Kafka deliveries, syncing the WAL");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_env_parsing() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
        assert_eq!(stale_limit(Duration::from_millis(500)), 3 * HEARTBEAT_TICK);
        assert_eq!(
            stale_limit(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn notifies_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.notify("READY=1\nSTATUS=hello");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=hello");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notifies_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("mkg-sdnotify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let n = Notifier::new(&format!("@{name}")).unwrap();
        n.notify("WATCHDOG=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn rejects_relative_paths() {
        assert!(socket_addr("relative/notify").is_err());
    }
}
