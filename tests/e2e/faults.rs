//! Faults from issue 2: Kafka down at start, SIGKILL mid-stream, SIGTERM drain, a
//! damaged WAL file.

use std::time::Duration;

use harness::checker::{check_with_faults, FaultEvent};
use harness::config::GatewayConfig;
use harness::{check, distinct_ids, wait_until, Gateway, Kafka};
use libtest_mimic::Failed;

use crate::common::{acked_all, admin_u64, joined, kcat_read, wait_kafka_dead, Site};
use crate::{bin, fail, kafka, messages};

/// Kafka down at start, then up with topic auto-creation on: the destination topic
/// does not exist yet when the records are sent. Whatever the first answers say, the
/// records are delivered, none parked (librdkafka's metadata wait is 2 s here, shorter
/// than the outage).
pub fn kafka_down_at_start_backlog_then_drains() -> Result<(), Failed> {
    let own = Kafka::not_started();
    let site = Site::new(&own, "down")?;
    let gw = site.gateway_with(
        &site
            .config()
            .property("topic.metadata.propagation.max.ms", "2000"),
        &[],
    );

    let msgs = messages(
        "down",
        &["d/1".into(), "d/2".into(), "d/3".into()],
        3_000,
        256,
    );
    // Acknowledged to MQTT although Kafka is down: the WAL holds them.
    let published = site.publish_all(&msgs, Duration::from_secs(60))?;
    wait_until(
        "backlog of 3000 on /backlog",
        Duration::from_secs(30),
        || gw.json("/backlog")["records"] == 3000,
    );
    let b = gw.json("/backlog");
    if b["oldest_seq"] != 1
        || b["newest_seq"] != 3000
        || b["bytes"].as_u64().unwrap_or(0) < 3000 * 256
    {
        return Err(fail(format!("backlog: {b}")));
    }
    // Down for longer than librdkafka's metadata wait.
    wait_until(
        "the gateway to run for 3 s",
        Duration::from_secs(30),
        || gw.json("/status")["uptime_seconds"].as_f64() >= Some(3.0),
    );
    let last_error = || gw.json("/status")["kafka"]["last_error"].clone();
    wait_until(
        "/status to show the Kafka error",
        Duration::from_secs(30),
        || last_error().is_string(),
    );
    own.start_again();
    let consumed = site.consume(3000, Duration::from_secs(120));
    let report = check(&published, &consumed);
    report.assert_clean();
    wait_until("backlog to drain", Duration::from_secs(60), || {
        gw.json("/backlog")["records"] == 0
    });
    // Kafka took the records after the error: /status no longer shows it.
    wait_until(
        "/status to clear the Kafka error",
        Duration::from_secs(30),
        || last_error().is_null(),
    );
    let b = gw.json("/backlog");
    if b["dead_letters"]["records"] != 0 {
        return Err(fail(format!("records were parked: {b}")));
    }
    eprintln!("{report}");
    Ok(())
}

pub fn sigkill_mid_stream_loses_nothing() -> Result<(), Failed> {
    let k = kafka();
    let site = Site::new(k, "kill")?;
    let mut gw = site.gateway();

    let topics: Vec<String> = (0..4).map(|i| format!("k/dev{i}")).collect();
    let msgs = messages("kill", &topics, 20_000, 256);
    let publisher = site.publish_in_background(msgs, Duration::from_secs(180));
    let mut events = Vec::new();
    // Kill in the middle of the stream, twice.
    for round in 0..2 {
        let admin = gw.admin;
        let want = 4_000 * (round + 1);
        wait_until(
            "gateway to receive part of the stream",
            Duration::from_secs(60),
            || {
                admin_u64(admin, "/status", "/counters/mqtt_messages_received")
                    .is_some_and(|n| n >= want)
            },
        );
        events.push(FaultEvent::now("gateway SIGKILL"));
        gw.sigkill();
        gw.restart();
        gw.wait_ready();
    }
    let published = joined(publisher)?;
    acked_all(&published, 20_000)?;
    let consumed = site.consume(20_000, Duration::from_secs(180));
    let report = check_with_faults(&published, &consumed, &events);
    eprintln!("{report}");
    if !report.lost.is_empty() {
        eprintln!("status: {}", gw.json("/status"));
        let again = site.consume(20_000, Duration::from_secs(30));
        eprintln!("second read: {}", check(&published, &again));
        let text = kcat_read(&k.bootstrap(), &site.topic, "%p %o %k %s\n").unwrap();
        let mut per: std::collections::BTreeMap<String, usize> = Default::default();
        for l in text.lines() {
            *per.entry(l.split(' ').take(1).collect::<String>())
                .or_default() += 1;
        }
        eprintln!(
            "kcat per partition: {per:?}; lost example present: {}",
            text.contains(&format!("{}:", report.lost[0]))
        );
    }
    report.assert_clean();
    Ok(())
}

pub fn sigterm_drains_and_exits_0() -> Result<(), Failed> {
    let site = Site::new(kafka(), "term")?;
    let mut gw = site.gateway();
    let msgs = messages("term", &["t/a".into(), "t/b".into()], 5_000, 256);
    let published = site.publish(&msgs, Duration::from_secs(60));
    // SIGTERM right after the last PUBACK from the broker: deliveries are in flight.
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(30));
    if status.code() != Some(0) {
        return Err(fail(format!("exit {status}:\n{}", gw.log())));
    }
    let log = gw.log();
    if !log.contains("forwarder stopped") {
        return Err(fail(format!("no orderly stop in log:\n{log}")));
    }
    // Whatever the gateway acknowledged is in Kafka now, or in the WAL for the next
    // start; restart to deliver any rest and check nothing is lost.
    gw.restart();
    gw.wait_ready();
    let consumed = site.consume(published.len(), Duration::from_secs(120));
    let report = check(&published, &consumed);
    eprintln!("{report}");
    report.assert_clean();
    Ok(())
}

pub fn corrupted_wal_exit_3_file_kept() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let wal_dir = dir.path().join("wal");
    std::fs::create_dir_all(&wal_dir)?;
    let file = wal_dir.join("wal.redb");
    std::fs::write(&file, vec![0x5Au8; 100_000])?;
    // Brokers are not needed: the WAL is opened first.
    let cfg = GatewayConfig::new(1, "127.0.0.1:1");
    let mut gw = Gateway::start(bin(), dir.path(), &cfg.toml());
    let status = gw.wait_exit(Duration::from_secs(30));
    let log = gw.log();
    if status.code() != Some(3) {
        return Err(fail(format!("exit {status}, want 3:\n{log}")));
    }
    if !log.contains(file.to_str().unwrap()) {
        return Err(fail(format!("message does not name the file:\n{log}")));
    }
    if std::fs::read(&file)?.len() != 100_000 {
        return Err(fail("the damaged file was modified"));
    }
    // Told to, it moves the file aside (never deletes it) and then starts clean.
    let cfg_path = dir.path().join("gateway.toml");
    let cfg_arg = cfg_path.to_str().unwrap();
    let (code, out) = harness::run_gateway_cmd(bin(), &["wal", "move-aside", "--config", cfg_arg]);
    if code != Some(0) {
        return Err(fail(format!("move-aside failed: {out}")));
    }
    let moved: Vec<_> = std::fs::read_dir(&wal_dir)?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("wal.redb.damaged-")
        })
        .collect();
    if moved.len() != 1 || std::fs::metadata(moved[0].path())?.len() != 100_000 || file.exists() {
        return Err(fail("damaged file not moved aside intact"));
    }
    let (code, out) =
        harness::run_gateway_cmd(bin(), &["wal", "dump", moved[0].path().to_str().unwrap()]);
    if code == Some(0) || !out.contains("cannot be read") {
        return Err(fail(format!(
            "dump of garbage should report it cannot be read: {out}"
        )));
    }
    let (code, out) = harness::run_gateway_cmd(bin(), &["wal", "stats", "--config", cfg_arg]);
    if code != Some(0) || !out.contains("\"records\":0") {
        return Err(fail(format!("fresh WAL stats: {code:?} {out}")));
    }
    Ok(())
}

/// `wal dump` prints what a (healthy or repairable) WAL holds without changing it.
pub fn wal_dump_reads_backlog() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    {
        let w = wal::Wal::open(dir.path(), wal::WalOptions::default())?;
        w.append(&[wal::RecordRef {
            topic: "d/1",
            payload: &[0xde, 0xad],
            qos: 1,
            retain: true,
            dup: false,
            receive_time_ms: 7,
        }])?;
    }
    let file = dir.path().join("wal.redb");
    let before = std::fs::read(&file)?;
    let (code, out) = harness::run_gateway_cmd(bin(), &["wal", "dump", file.to_str().unwrap()]);
    if code != Some(0)
        || !out.contains("\"payload_hex\":\"dead\"")
        || !out.contains("\"topic\":\"d/1\"")
    {
        return Err(fail(format!("dump: {code:?} {out}")));
    }
    if std::fs::read(&file)? != before {
        return Err(fail("dump changed the file"));
    }
    Ok(())
}

/// Crash at chosen points through the test-only failpoints: after the WAL commit and
/// before the PUBACK; after Kafka's delivery report and before the WAL delete; inside
/// a commit. Then restart: every message the broker acknowledged arrives.
pub fn failpoint_crashes_lose_nothing() -> Result<(), Failed> {
    let k = kafka();
    for (point, skip) in [
        ("ingest-after-commit-before-ack", "1500"),
        ("forward-before-wal-ack", "1"), // the 2nd ack: a fast run may make only a few
        ("wal-inside-commit", "3"),
    ] {
        let site = Site::new(k, "fp")?;
        let mut gw = site.gateway_with(
            &site.config(),
            &[("MKG_FAILPOINT", point), ("MKG_FAILPOINT_SKIP", skip)],
        );
        let msgs = messages(
            "fp",
            &["f/a".into(), "f/b".into(), "f/c".into()],
            6_000,
            128,
        );
        let publisher = site.publish_in_background(msgs, Duration::from_secs(120));
        let admin = gw.admin;
        let status = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gw.wait_exit(Duration::from_secs(60))
        })) {
            Ok(s) => s,
            Err(_) => {
                let st = harness::http_get(admin, "/status")
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                return Err(fail(format!(
                    "{point}: no crash; status {st}; publisher done: {}",
                    publisher.is_finished()
                )));
            }
        };
        let events = [FaultEvent::now(format!("failpoint {point}"))];
        if status.success() || !gw.log().contains(&format!("failpoint {point}")) {
            return Err(fail(format!(
                "{point}: did not crash at the failpoint ({status}):\n{}",
                gw.log()
            )));
        }
        gw.restart();
        gw.wait_ready();
        let published = joined(publisher)?;
        if published.len() != 6_000 {
            return Err(fail(format!(
                "{point}: broker acked {} of 6000",
                published.len()
            )));
        }
        let consumed = site.consume(6_000, Duration::from_secs(120));
        let report = check_with_faults(&published, &consumed, &events);
        eprintln!("{point}: {report}");
        report.assert_clean();
    }
    Ok(())
}

/// Kafka killed (SIGKILL) while traffic continues, then started again; and Kafka
/// frozen with SIGSTOP, then resumed. The gateway keeps acknowledging into the WAL and
/// drains afterwards.
pub fn kafka_killed_and_paused_mid_stream() -> Result<(), Failed> {
    let own = Kafka::start();
    let site = Site::new(&own, "kk")?;
    let gw = site.gateway();
    let mut published = Vec::new();
    let topics: Vec<String> = vec!["kk/a".into(), "kk/b".into()];
    published.extend(site.publish(
        &messages("k1", &topics, 2_000, 200),
        Duration::from_secs(60),
    ));

    // Kill Kafka hard while publishing continues.
    kill_kafka(&own, libc::SIGKILL);
    published.extend(site.publish(
        &messages("k2", &topics, 2_000, 200),
        Duration::from_secs(60),
    ));
    let admin = gw.admin;
    wait_until(
        "backlog to build while Kafka is down",
        Duration::from_secs(30),
        || backlog(admin) >= 1,
    );
    own.start_again();

    // Freeze it (SIGSTOP) while publishing continues, then thaw.
    let pid = own.pid().ok_or_else(|| fail("no kafka pid"))?;
    harness::kill(pid, libc::SIGSTOP);
    published.extend(site.publish(
        &messages("k3", &topics, 2_000, 200),
        Duration::from_secs(60),
    ));
    wait_until(
        "backlog to build while Kafka is frozen",
        Duration::from_secs(30),
        || backlog(admin) >= 2_000,
    );
    harness::kill(pid, libc::SIGCONT);

    acked_all(&published, 6_000)?;
    let consumed = site.consume(6_000, Duration::from_secs(180));
    let report = check(&published, &consumed);
    eprintln!("{report}");
    report.assert_clean();
    wait_until("backlog to drain", Duration::from_secs(60), || {
        backlog(admin) == 0
    });
    Ok(())
}

fn backlog(admin: std::net::SocketAddr) -> u64 {
    admin_u64(admin, "/backlog", "/records").unwrap_or(0)
}

fn kill_kafka(k: &Kafka, sig: i32) {
    if let Some(pid) = k.pid() {
        harness::kill(pid, sig);
        wait_kafka_dead(pid);
    }
}

struct TmpfsMount(std::path::PathBuf);

impl TmpfsMount {
    fn new(path: &std::path::Path, size: &str) -> Result<Self, Failed> {
        std::fs::create_dir_all(path)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()?;
        if !out.status.success() {
            return Err(fail(format!(
                "cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Disk full under the WAL (a small tmpfs) while Kafka is down: the gateway stops
/// acknowledging MQTT (Mosquitto keeps the messages), says so on /readyz and
/// /metrics, does not crash, and resumes by itself once forwarding frees space.
pub fn disk_full_stops_acking_then_resumes() -> Result<(), Failed> {
    let own = Kafka::not_started();
    let site = Site::new(&own, "full")?;
    let _mount = TmpfsMount::new(&site.path().join("wal"), "6m")?;
    let cfg = site.config().wal("min_free_space", "1MiB");
    let mut gw = site.gateway_with(&cfg, &[]);
    let msgs = messages("full", &["f/1".into(), "f/2".into()], 12_000, 1000);
    // Mosquitto acknowledges publishers whatever the gateway does.
    let published = site.publish_all(&msgs, Duration::from_secs(120))?;
    let admin = gw.admin;
    wait_until(
        "/readyz to report ingest paused for disk space",
        Duration::from_secs(60),
        || harness::http_get(admin, "/readyz").is_ok_and(|(s, _)| s == 503),
    );
    let status = gw.json("/status");
    let why = status["wal"]["last_error"].as_str().unwrap_or("");
    if status["mqtt"]["accepting"] != false || !why.contains("disk") {
        return Err(fail(format!(
            "status does not show the condition: {status}"
        )));
    }
    let (_, metrics) = harness::http_get(admin, "/metrics")?;
    if !metrics.contains("mkg_mqtt_accepting 0") {
        return Err(fail(format!(
            "metrics do not show the condition:\n{metrics}"
        )));
    }
    if let Some(status) = gw.try_wait() {
        return Err(fail(format!(
            "gateway exited on disk full: {status}\n{}",
            gw.log()
        )));
    }
    let acked_while_full = gw.json("/status")["counters"]["mqtt_messages_acked"]
        .as_u64()
        .unwrap_or(0);
    if acked_while_full >= 12_000 {
        return Err(fail(
            "everything was acknowledged although the disk is full",
        ));
    }
    // Kafka comes back: forwarding frees space, commits resume, everything arrives.
    own.start_again();
    let consumed = site.consume(12_000, Duration::from_secs(240));
    let report = check(&published, &consumed);
    eprintln!("{report}; acknowledged before space freed: {acked_while_full}");
    if !report.lost.is_empty() {
        eprintln!("status: {}\n{}", gw.json("/status"), gw.log());
    }
    report.assert_clean();
    wait_until("/readyz ready again", Duration::from_secs(60), || {
        harness::http_get(admin, "/readyz").is_ok_and(|(s, _)| s == 200)
    });
    gw.sigkill();
    Ok(())
}

/// A payload above Kafka's `message.max.bytes` is parked in the dead-letter table,
/// counted and visible; one just under the limit and everything around them flow.
pub fn oversized_record_is_parked_rest_flows() -> Result<(), Failed> {
    let site = Site::new(kafka(), "big")?;
    let gw = site.gateway();
    let mut msgs = messages("small", &["b/x".into()], 100, 100);
    msgs.insert(50, ("b/x".into(), harness::payload("huge", 0, 1_500_000)));
    msgs.insert(20, ("b/x".into(), harness::payload("near", 0, 900_000)));
    let published = site.publish_all(&msgs, Duration::from_secs(60))?;
    let admin = gw.admin;
    wait_until(
        "the huge record to be parked",
        Duration::from_secs(60),
        || {
            harness::http_get(admin, "/backlog")
                .is_ok_and(|(_, b)| b.contains("\"dead_letters\":{\"records\":1"))
        },
    );
    let consumed = site.consume(101, Duration::from_secs(60));
    let expected: Vec<_> = published
        .iter()
        .filter(|p| !p.payload.starts_with(b"huge:"))
        .cloned()
        .collect();
    let report = check(&expected, &consumed);
    eprintln!("{report}");
    report.assert_clean();
    if consumed.iter().any(|c| c.payload.starts_with(b"huge:")) {
        return Err(fail("the oversized record reached Kafka?"));
    }
    let (_, metrics) = harness::http_get(admin, "/metrics")?;
    if !metrics.contains("mkg_kafka_records_dead_lettered_total 1") {
        return Err(fail(format!("dead letter not counted:\n{metrics}")));
    }
    wait_until("backlog to drain", Duration::from_secs(30), || {
        backlog(admin) == 0
    });
    // The running gateway lists it with its reason (GET /dead-letters).
    let (status, body) = harness::http_get(admin, "/dead-letters")?;
    let page: serde_json::Value = serde_json::from_str(&body)?;
    let parked = &page["dead_letters"];
    if status != 200
        || parked.as_array().map(Vec::len) != Some(1)
        || parked[0]["size"] != 1_500_000
        || parked[0]["mqtt_topic"] != "b/x"
        || !parked[0]["reason"]
            .as_str()
            .is_some_and(|r| r.to_lowercase().contains("too large"))
        || !parked[0]["preview"]
            .as_str()
            .is_some_and(|p| p.starts_with("huge:0:"))
    {
        return Err(fail(format!("/dead-letters: {status} {body:.2000}")));
    }
    drop(gw);
    // The parked record is still readable, with its reason.
    let wal_file = site.path().join("wal/wal.redb");
    let (code, out) = harness::run_gateway_cmd(
        bin(),
        &["wal", "dump", "--dead-letters", wal_file.to_str().unwrap()],
    );
    if code != Some(0)
        || !out.contains("\"table\":\"dead_letter\"")
        || !out.to_lowercase().contains("too large")
    {
        return Err(fail(format!(
            "dead letter not in dump: {}",
            &out[..out.len().min(2000)]
        )));
    }
    Ok(())
}

/// Kafka frozen (SIGSTOP) for longer than every client timeout of the producer (set
/// low here so the run stays short: 3 s socket and request timeouts, 12 s pause).
pub fn kafka_paused_longer_than_client_timeouts() -> Result<(), Failed> {
    let own = Kafka::start();
    let site = Site::new(&own, "pause")?;
    let cfg = site
        .config()
        .property("socket.timeout.ms", 3000)
        .property("request.timeout.ms", 3000)
        .property("socket.connection.setup.timeout.ms", 3000);
    let gw = site.gateway_with(&cfg, &[]);
    let topics: Vec<String> = vec!["p/a".into(), "p/b".into()];
    let mut published = site.publish(
        &messages("p1", &topics, 1_000, 200),
        Duration::from_secs(60),
    );
    let admin = gw.admin;
    wait_until("first part delivered", Duration::from_secs(60), || {
        backlog(admin) == 0
    });
    let pid = own.pid().ok_or_else(|| fail("no kafka pid"))?;
    harness::kill(pid, libc::SIGSTOP);
    let paused = std::time::Instant::now();
    published.extend(site.publish(
        &messages("p2", &topics, 3_000, 200),
        Duration::from_secs(60),
    ));
    // Stay frozen well past the 3 s timeouts; wait on the gateway's view meanwhile.
    wait_until(
        "backlog while Kafka is frozen",
        Duration::from_secs(60),
        || backlog(admin) >= 3_000,
    );
    wait_until("12 s of pause", Duration::from_secs(30), || {
        paused.elapsed() >= Duration::from_secs(12)
    });
    harness::kill(pid, libc::SIGCONT);
    published.extend(site.publish(
        &messages("p3", &topics, 1_000, 200),
        Duration::from_secs(60),
    ));
    acked_all(&published, 5_000)?;
    let mut consumed = site.consume(5_000, Duration::from_secs(90));
    if distinct_ids(&consumed) < 5_000 {
        // Tell a gateway that did not deliver from a broker or a reader that did not
        // answer, then read again from the beginning with a new consumer: a record the
        // gateway lost is missing from both reads.
        let warnings: Vec<String> = gw
            .log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_string)
            .collect();
        eprintln!(
            "first read: {} records\nbacklog: {}\nkafka status: {}\ngateway warnings (last 30):\n{}\nbroker log:\n{}",
            consumed.len(),
            gw.json("/backlog"),
            gw.json("/status")["kafka"],
            warnings[warnings.len().saturating_sub(30)..].join("\n"),
            own.log_excerpt(40)
        );
        consumed = site.consume(5_000, Duration::from_secs(60));
    }
    let report = check(&published, &consumed);
    eprintln!(
        "{report}; producer rebuilds: {}",
        gw.json("/status")["counters"]["kafka_producer_rebuilds"]
    );
    report.assert_clean();
    wait_until("backlog to drain", Duration::from_secs(60), || {
        backlog(admin) == 0
    });
    Ok(())
}

/// A crash during recovery: the gateway is SIGKILLed with a backlog (so the next open
/// must repair the file), then aborts in the middle of that repair (failpoint
/// `wal-during-repair`), then starts again: the backlog is intact and reaches Kafka.
pub fn crash_during_recovery_loses_nothing() -> Result<(), Failed> {
    let own = Kafka::not_started();
    let site = Site::new(&own, "recov")?;
    let cfg = site.config();
    let mut gw = site.gateway_with(&cfg, &[]);
    let published = site.publish(
        &messages("rc", &["r/1".into(), "r/2".into()], 3_000, 300),
        Duration::from_secs(60),
    );
    let admin = gw.admin;
    // All acknowledged too (the fsync follows the commit within wal.sync_linger): an
    // unacknowledged message would come again from Mosquitto after the restart.
    wait_until(
        "backlog of 3000, all acknowledged",
        Duration::from_secs(30),
        || {
            backlog(admin) == 3_000
                && gw.json("/status")["counters"]["mqtt_messages_acked"] == 3_000
        },
    );
    gw.sigkill();
    drop(gw);
    let mut gw = Gateway::start_with_env(
        bin(),
        site.path(),
        &cfg.toml(),
        &[("MKG_FAILPOINT", "wal-during-repair")],
    );
    let status = gw.wait_exit(Duration::from_secs(60));
    if status.success() || !gw.log().contains("failpoint wal-during-repair") {
        return Err(fail(format!(
            "did not crash during repair ({status}):\n{}",
            gw.log()
        )));
    }
    gw.restart();
    gw.wait_ready();
    let admin = gw.admin;
    if backlog(admin) != 3_000 {
        return Err(fail(format!(
            "backlog after crash in recovery: {}",
            gw.json("/backlog")
        )));
    }
    own.start_again();
    let consumed = site.consume(3_000, Duration::from_secs(120));
    let report = check(&published, &consumed);
    eprintln!("{report}");
    report.assert_clean();
    Ok(())
}

/// A bounded soak (40 s of random faults) as CI's version of `cargo xtask soak`.
pub fn bounded_soak_loses_nothing() -> Result<(), Failed> {
    let seed = 20261126;
    let r = harness::soak::run(bin(), Duration::from_secs(40), seed);
    eprintln!("{r}\nseed: {seed}");
    if r.faults.is_empty() || r.report.published == 0 {
        return Err(fail("soak injected no fault or published nothing"));
    }
    r.report.assert_clean();
    Ok(())
}
