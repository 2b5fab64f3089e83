//! Routes to Kafka topics that do not exist, on a real broker with topic
//! auto-creation off. A refused topic is held, not parked at once: its records wait
//! while everything else keeps flowing, and the topic is looked up with backoff.
//! - `late`: created by hand while its records wait: they are delivered, none parked.
//! - `missing`: never created: once `forward.unknown_topic_grace` is over its records
//!   are parked in the dead-letter table with one log line for the topic (not one per
//!   record), and later ones are parked as they are read; counted and visible on the
//!   admin API, each with its reason. Once an operator creates it, the parked records
//!   are replayed through the admin API and arrive.

use std::collections::BTreeSet;
use std::time::Duration;

use harness::{check, consume, unique, wait_until, Kafka};
use libtest_mimic::Failed;

use crate::common::{acked_all, admin_u64, Site};
use crate::{bin, fail, messages};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `/status` `kafka.held_topics`, as (topic, held records).
fn held(admin: std::net::SocketAddr) -> Vec<(String, u64, f64)> {
    harness::http_get(admin, "/status")
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["kafka"]["held_topics"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|h| {
            (
                h["topic"].as_str().unwrap_or_default().to_string(),
                h["held_records"].as_u64().unwrap_or(0),
                h["refused_for_seconds"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

pub fn unknown_topics_are_held_then_delivered_or_parked() -> Result<(), Failed> {
    let own = Kafka::not_started().auto_create(false);
    own.start_again();
    let site = Site::new(&own, "good")?;
    own.create_topic(&site.topic, 3);
    let (missing, late) = (unique("missing"), unique("late"));
    let cfg = site
        .config()
        .routes(&[("lost/#", &missing), ("late/#", &late)])
        .property("topic.metadata.propagation.max.ms", "3000")
        .forward("unknown_topic_grace", "40s");
    let mut gw = site.gateway_with(&cfg, &[]);
    let admin = gw.admin;

    let mut msgs = messages("ok1", &["u/a".into(), "u/b".into()], 600, 200);
    for i in 0..5u64 {
        msgs.insert(
            (i * 100 + 7) as usize,
            ("lost/x".into(), harness::payload("miss", i, 200)),
        );
        msgs.insert(
            (i * 100 + 9) as usize,
            ("late/x".into(), harness::payload("late", i, 200)),
        );
    }
    let mut published = site.publish(&msgs, Duration::from_secs(60));
    acked_all(&published, msgs.len())?;

    // Both topics held with their records; the other topics flow meanwhile.
    wait_until("both topics held", Duration::from_secs(60), || {
        let h = held(admin);
        [&missing, &late]
            .iter()
            .all(|t| h.iter().any(|(n, r, _)| n == *t && *r == 5))
    });
    let good: Vec<_> = published
        .iter()
        .filter(|p| p.payload.starts_with(b"ok1:"))
        .cloned()
        .collect();
    let consumed = site.consume(good.len(), Duration::from_secs(60));
    check(&good, &consumed).assert_clean();
    if admin_u64(admin, "/backlog", "/dead_letters/records") != Some(0) {
        return Err(fail("records were parked before the grace"));
    }

    // An operator creates `late` a while after its records were refused: they arrive.
    wait_until(
        "late to be refused for 15 s",
        Duration::from_secs(60),
        || held(admin).iter().any(|(n, _, s)| *n == late && *s >= 15.0),
    );
    own.create_topic(&late, 1);
    let late_records = consume(
        &own.bootstrap(),
        &[late.as_str()],
        Duration::from_secs(60),
        |r| r.len() >= 5,
    );
    let ids: BTreeSet<_> = late_records
        .iter()
        .filter_map(|c| harness::checker::message_id(&c.payload))
        .collect();
    if ids.len() != 5 {
        return Err(fail(format!("{} of 5 late records delivered", ids.len())));
    }
    wait_until("the hold of late to end", Duration::from_secs(30), || {
        held(admin).iter().all(|(n, _, _)| *n != late)
    });

    // `missing` is parked once the grace is over: one log line for the topic.
    wait_until("5 records parked", Duration::from_secs(90), || {
        admin_u64(admin, "/backlog", "/dead_letters/records") == Some(5)
    });
    let log = gw.log();
    let topic_lines = log
        .lines()
        .filter(|l| l.contains("parked its held records"))
        .count();
    let record_lines = log
        .lines()
        .filter(|l| l.contains("parking it in the dead-letter table"))
        .count();
    if topic_lines != 1 || record_lines != 0 {
        return Err(fail(format!(
            "expected one log line for the topic, got {topic_lines} (and {record_lines} per record):\n{log}"
        )));
    }

    // Past the grace, more records of it are parked as they are read.
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
        admin_u64(admin, "/backlog", "/dead_letters/records") == Some(8)
    });
    wait_until("backlog to drain", Duration::from_secs(60), || {
        admin_u64(admin, "/backlog", "/records") == Some(0)
    });
    let good: Vec<_> = published
        .iter()
        .filter(|p| p.payload.starts_with(b"ok"))
        .cloned()
        .collect();
    let parked: Vec<_> = published
        .iter()
        .filter(|p| p.payload.starts_with(b"miss:"))
        .cloned()
        .collect();
    let consumed = site.consume(good.len(), Duration::from_secs(60));
    let report = check(&good, &consumed);
    eprintln!("{report}; parked in dead letters: {}", parked.len());
    report.assert_clean();

    // Visible: /backlog, /status and /metrics.
    let s = gw.json("/status");
    if s["counters"]["kafka_records_dead_lettered"] != 8 || s["dead_letters"]["records"] != 8 {
        return Err(fail(format!("/status: {s}")));
    }
    let (_, metrics) = harness::http_get(admin, "/metrics")?;
    if !metrics.contains("mkg_kafka_records_dead_lettered_total 8")
        || !metrics.contains("mkg_dead_letter_records 8")
        || !metrics.contains("mkg_kafka_topics_held 1")
    {
        return Err(fail(format!("/metrics:\n{metrics}")));
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
    for p in &parked {
        let id = harness::checker::message_id(&p.payload).unwrap();
        let line = lines.iter().find(|l| l.contains(&hex(id))).ok_or_else(|| {
            fail(format!(
                "{} not in the dead letters:\n{out}",
                String::from_utf8_lossy(id)
            ))
        })?;
        let l = line.to_lowercase();
        if !l.contains("unknown topic") || !l.contains(&missing) {
            return Err(fail(format!(
                "reason does not name the topic and unknown topic: {line}"
            )));
        }
    }
    if lines.len() != parked.len() {
        return Err(fail(format!(
            "{} dead letters, {} expected:\n{out}",
            lines.len(),
            parked.len()
        )));
    }

    // The cause fixed: an operator creates the topic and replays the parked records
    // (changes need a token: the gateway comes back with one); they arrive, in order.
    let token = "ut-token-0c9d41";
    let token_file = site.path().join("admin.token");
    std::fs::write(&token_file, token)?;
    let config = site.path().join("gateway.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replace(
            "[admin]\n",
            &format!("[admin]\ntoken_file = \"{}\"\n", token_file.display()),
        ),
    )?;
    own.create_topic(&missing, 1);
    gw.restart();
    gw.wait_serving();
    let auth = format!("Bearer {token}");
    let (status, body) = harness::http_request(
        admin,
        "POST",
        "/dead-letters/replay?all=true",
        &[("Authorization", auth.as_str())],
    )?;
    let outcome: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if status != 200 || outcome["done"] != 8 {
        return Err(fail(format!("replay: {status} {body}")));
    }
    let replayed = consume(
        &own.bootstrap(),
        &[missing.as_str()],
        Duration::from_secs(90),
        |r| r.len() >= parked.len(),
    );
    let report = check(&parked, &replayed);
    eprintln!("replayed after the topic was created: {report}");
    report.assert_clean();
    Ok(())
}
