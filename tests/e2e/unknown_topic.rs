//! A route to a Kafka topic that does not exist, on a real broker with topic
//! auto-creation off: those records are parked in the dead-letter table, counted and
//! visible on the admin API, while everything else keeps flowing.

use std::time::Duration;

use harness::{check, unique, wait_until, Kafka};
use libtest_mimic::Failed;

use crate::common::{acked_all, admin_u64, Site};
use crate::{bin, fail, messages};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unknown_topic_is_parked_rest_flows() -> Result<(), Failed> {
    let own = Kafka::not_started().auto_create(false);
    own.start_again();
    let site = Site::new(&own, "good")?;
    own.create_topic(&site.topic, 3);
    let missing = unique("missing");
    let cfg = site.config_with(&format!(
        "routes = [ {{ mqtt_filter = \"lost/#\", kafka_topic = \"{missing}\" }} ]\n"
    ));
    let mut gw = site.gateway_with(&cfg, &[]);
    let admin = gw.admin;

    // Phase 1: the producer does not know the topic yet; librdkafka holds those records
    // until topic.metadata.propagation.max.ms (30 s by default), then fails them with
    // "Unknown topic or partition" in the delivery report.
    let mut msgs = messages("ok1", &["u/a".into(), "u/b".into()], 600, 200);
    for i in 0..5u64 {
        msgs.insert(
            (i * 100 + 7) as usize,
            ("lost/x".into(), harness::payload("miss", i, 200)),
        );
    }
    let mut published = site.publish(&msgs, Duration::from_secs(60));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while dead_letters(admin) < 5 {
        if std::time::Instant::now() > deadline {
            let log = gw.log();
            return Err(fail(format!(
                "5 records not parked within 90 s ({} parked); gateway log (tail):\n{}",
                dead_letters(admin),
                &log[log.len().saturating_sub(6000)..]
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Phase 2: the topic is known not to exist now; send() fails at once.
    let mut msgs2 = messages("ok2", &["u/a".into(), "u/b".into()], 400, 200);
    for i in 5..8u64 {
        msgs2.insert(
            ((i - 5) * 100 + 3) as usize,
            ("lost/y".into(), harness::payload("miss", i, 200)),
        );
    }
    published.extend(site.publish(&msgs2, Duration::from_secs(60)));
    acked_all(&published, msgs.len() + msgs2.len())?;
    wait_until("8 records parked", Duration::from_secs(60), || {
        dead_letters(admin) >= 8
    });
    wait_until("backlog to drain", Duration::from_secs(60), || {
        backlog(admin) == 0
    });
    let (good_msgs, parked): (Vec<_>, Vec<_>) = published
        .into_iter()
        .partition(|p| !p.payload.starts_with(b"miss:"));
    let consumed = site.consume(good_msgs.len(), Duration::from_secs(60));
    let report = check(&good_msgs, &consumed);
    eprintln!("{report}; parked in dead letters: {}", parked.len());
    report.assert_clean();

    // Visible: /backlog, /status and /metrics.
    let b = gw.json("/backlog");
    if b["dead_letters"]["records"] != 8 {
        return Err(fail(format!("/backlog: {b}")));
    }
    let s = gw.json("/status");
    if s["counters"]["kafka_records_dead_lettered"] != 8 {
        return Err(fail(format!("/status: {s}")));
    }
    let (_, metrics) = harness::http_get(admin, "/metrics")?;
    if !metrics.contains("mkg_kafka_records_dead_lettered_total 8")
        || !metrics.contains("mkg_dead_letter_records 8")
    {
        return Err(fail(format!("/metrics:\n{metrics}")));
    }
    if !gw.log().contains("dead-letter") {
        return Err(fail(format!("not logged:\n{}", gw.log())));
    }
    // Nothing lost: each parked message is in the dead-letter table with its reason.
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(30));
    let wal_file = site.path().join("wal/wal.redb");
    let (code, out) = harness::run_gateway_cmd(
        bin(),
        &["wal", "dump", "--dead-letters", wal_file.to_str().unwrap()],
    );
    if code != Some(0) {
        return Err(fail(format!("wal dump: {out}")));
    }
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("\"table\":\"dead_letter\""))
        .collect();
    let mut reasons: Vec<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["reason"].as_str().map(str::to_string))
        .collect();
    reasons.dedup();
    eprintln!("dead-letter reasons: {reasons:?}");
    for p in &parked {
        let id = harness::checker::message_id(&p.payload).unwrap();
        let line = lines.iter().find(|l| l.contains(&hex(id))).ok_or_else(|| {
            fail(format!(
                "{} not in the dead letters:\n{out}",
                String::from_utf8_lossy(id)
            ))
        })?;
        if !line.to_lowercase().contains("unknown topic") {
            return Err(fail(format!("reason does not say unknown topic: {line}")));
        }
    }
    if lines.len() != parked.len() {
        return Err(fail(format!(
            "{} dead letters, {} expected:\n{out}",
            lines.len(),
            parked.len()
        )));
    }
    Ok(())
}

fn dead_letters(admin: std::net::SocketAddr) -> u64 {
    admin_u64(admin, "/backlog", "/dead_letters/records").unwrap_or(0)
}

fn backlog(admin: std::net::SocketAddr) -> u64 {
    admin_u64(admin, "/backlog", "/records").unwrap_or(u64::MAX)
}
