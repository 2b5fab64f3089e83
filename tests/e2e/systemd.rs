//! systemd's notification protocol, checked from systemd's side: the test binds the
//! `NOTIFY_SOCKET` datagram socket itself (systemd is not PID 1 here; the protocol is
//! one datagram of `KEY=value` lines per notification).
//!
//! 1. A path socket, real Kafka and Mosquitto: `READY=1` arrives once the admin API
//!    serves, `WATCHDOG=1` keeps coming while messages flow and while Mosquitto is
//!    down (an outage is not a hang), `STOPPING=1` on SIGTERM, exit 0.
//! 2. An abstract socket (`@name`), Kafka down: `WATCHDOG=1` keeps coming; then the
//!    WAL writer thread hangs (failpoint) and the gateway stops feeding the watchdog
//!    and says which loop is stuck.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use harness::{check, http_get, unique, Gateway, Kafka};
use libtest_mimic::Failed;

use crate::common::Site;
use crate::{bin, fail, kafka, messages};

/// `WATCHDOG_USEC` given to the gateway: it feeds every half of it.
const WATCHDOG: Duration = Duration::from_secs(3);

/// The systemd end of the notification socket.
struct NotifySocket {
    sock: UnixDatagram,
    /// Every datagram received, in order.
    seen: Vec<String>,
}

impl NotifySocket {
    fn new(sock: UnixDatagram) -> Self {
        Self {
            sock,
            seen: Vec::new(),
        }
    }

    /// The next datagram, or `None` at `deadline`.
    fn next(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.checked_duration_since(Instant::now())?;
        self.sock
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.seen.push(msg.clone());
        Some(msg)
    }

    /// Wait for a datagram with a line for which `pred` holds.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, Failed> {
        let deadline = Instant::now() + timeout;
        while let Some(msg) = self.next(deadline) {
            if msg.lines().any(&pred) {
                return Ok(msg);
            }
        }
        Err(fail(format!(
            "no {what} within {timeout:?}; received: {:?}",
            self.seen
        )))
    }

    /// Wait for `n` more `WATCHDOG=1`, failing on a "Stuck" status.
    fn watchdog_pings(&mut self, n: usize, timeout: Duration) -> Result<(), Failed> {
        let deadline = Instant::now() + timeout;
        let mut got = 0;
        while got < n {
            let Some(msg) = self.next(deadline) else {
                return Err(fail(format!(
                    "only {got} of {n} WATCHDOG=1 within {timeout:?}; received: {:?}",
                    self.seen
                )));
            };
            if msg.contains("STATUS=Stuck") {
                return Err(fail(format!("a loop was reported stuck: {msg}")));
            }
            got += msg.lines().filter(|l| *l == "WATCHDOG=1").count();
        }
        Ok(())
    }
}

pub fn notify_ready_watchdog_stopping_and_stuck_loop() -> Result<(), Failed> {
    let watchdog_usec = WATCHDOG.as_micros().to_string();

    // 1. Path socket, healthy gateway, then a Mosquitto outage, then SIGTERM.
    {
        let site = Site::new(kafka(), "sdnotify")?;
        let sock_path = site.path().join("notify.sock");
        let mut notify = NotifySocket::new(UnixDatagram::bind(&sock_path)?);
        let mut gw = Gateway::start_with_env(
            bin(),
            site.path(),
            &site.config().toml(),
            &[
                ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
                ("WATCHDOG_USEC", &watchdog_usec),
            ],
        );
        let ready = notify.wait_for("READY=1", Duration::from_secs(60), |l| l == "READY=1")?;
        // READY=1 means serving: the admin API answers at once.
        match http_get(gw.admin, "/healthz") {
            Ok((200, _)) => {}
            other => {
                return Err(fail(format!(
                    "READY=1 ({ready:?}) but /healthz answered {other:?}"
                )))
            }
        }
        if notify
            .seen
            .iter()
            .take(notify.seen.len() - 1)
            .any(|m| m.contains("WATCHDOG=1"))
        {
            return Err(fail(format!(
                "WATCHDOG=1 before READY=1: {:?}",
                notify.seen
            )));
        }
        notify.watchdog_pings(2, Duration::from_secs(30))?;

        // Messages flow while it notifies.
        gw.wait_ready();
        let msgs = messages("sd", &["sd/1".into(), "sd/2".into()], 500, 64);
        let published = site.publish_all(&msgs, Duration::from_secs(60))?;
        let consumed = site.consume(msgs.len(), Duration::from_secs(60));
        check(&published, &consumed).assert_clean();
        notify.watchdog_pings(2, Duration::from_secs(30))?;

        // Mosquitto gone: the ingest loop waits and retries, which is not a hang.
        site.mqtt.kill(libc::SIGKILL);
        notify.watchdog_pings(4, Duration::from_secs(30))?;
        site.mqtt.start_again();

        gw.signal(libc::SIGTERM);
        notify.wait_for("STOPPING=1", Duration::from_secs(30), |l| l == "STOPPING=1")?;
        let status = gw.wait_exit(Duration::from_secs(60));
        if status.code() != Some(0) {
            return Err(fail(format!("exit {status} after SIGTERM:\n{}", gw.log())));
        }
    }

    // 2. Abstract socket, Kafka down; then the WAL writer thread hangs.
    {
        use std::os::linux::net::SocketAddrExt;
        let own = Kafka::not_started();
        let site = Site::new(&own, "sdhang")?;
        let name = unique("mkg-notify");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let mut notify = NotifySocket::new(UnixDatagram::bind_addr(&addr)?);
        let mut gw = Gateway::start_with_env(
            bin(),
            site.path(),
            &site.base_config().toml(),
            &[
                ("NOTIFY_SOCKET", &format!("@{name}")),
                ("WATCHDOG_USEC", &watchdog_usec),
                ("MKG_FAILPOINT", "wal-writer-before-commit"),
                ("MKG_FAILPOINT_ACTION", "hang"),
                // The first commit starts the MQTT session (ingest/session.rs).
                ("MKG_FAILPOINT_SKIP", "1"),
            ],
        );
        notify.wait_for("READY=1", Duration::from_secs(60), |l| l == "READY=1")?;
        gw.wait_ready();
        // Kafka unreachable: still healthy.
        notify.watchdog_pings(4, Duration::from_secs(30))?;

        // One message makes the WAL thread commit, and it hangs there.
        let msgs = messages("hang", &["sensors/x".into()], 1, 16);
        site.publish(&msgs, Duration::from_secs(30));
        let stuck = notify.wait_for("STATUS=Stuck", Duration::from_secs(30), |l| {
            l.starts_with("STATUS=Stuck")
        })?;
        if !stuck.contains("WAL writer") {
            return Err(fail(format!("stuck status names another loop: {stuck}")));
        }
        // From now on the watchdog is starved: no WATCHDOG=1 for several intervals.
        let deadline = Instant::now() + 3 * WATCHDOG;
        while let Some(msg) = notify.next(deadline) {
            if msg.contains("WATCHDOG=1") {
                return Err(fail(format!(
                    "WATCHDOG=1 after the stuck report: {:?}\n{}",
                    notify.seen,
                    gw.log()
                )));
            }
        }
        let log = gw.log();
        if !log.contains("loop stuck")
            || !log.contains("failpoint wal-writer-before-commit: hanging")
        {
            return Err(fail(format!("log does not show the hang:\n{log}")));
        }
        // The process is still alive: systemd would kill it (SIGABRT) and restart it.
        if let Some(s) = gw.try_wait() {
            return Err(fail(format!(
                "gateway exited ({s}) instead of hanging:\n{log}"
            )));
        }
        gw.sigkill();
    }
    Ok(())
}
