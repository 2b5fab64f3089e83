//! The happy path: everything arrives, mapped, keyed, ordered, with headers.

use std::collections::HashMap;
use std::time::Duration;

use harness::config::Value;
use harness::{check, consume, distinct_ids, publish, unique, wait_until};
use libtest_mimic::Failed;

use crate::common::{kcat_read, Site};
use crate::{fail, kafka, messages};

pub fn ten_thousand_qos1_messages_mapped_keyed_ordered() -> Result<(), Failed> {
    let k = kafka();
    let site = Site::new(k, "fallback")?;
    let default = site.topic.clone();
    let fixed = unique("alarms");
    let prefix = unique("tpl").replace('-', "_");
    // Routes: a fixed topic, a template, and the default topic.
    let cfg = site
        .config()
        .kafka(
            "routes",
            Value::raw(format!(
                "[{{ mqtt_filter = \"site/alarm/#\", kafka_topic = \"{fixed}\" }}, \
                 {{ mqtt_filter = \"site/sensor/+\", kafka_topic_template = \"{prefix}.{{mqtt_topic}}\" }}]"
            )),
        )
        .topics(&[("site/#", 1)]);
    let gw = site.gateway_with(&cfg, &[]);

    let topics: Vec<String> = vec![
        "site/alarm/door".into(),
        "site/alarm/fire".into(),
        "site/sensor/t1".into(),
        "site/sensor/t2".into(),
        "site/other".into(),
    ];
    let msgs = messages("a", &topics, 10_000, 256);
    let published = site.publish_all(&msgs, Duration::from_secs(120))?;
    let t1 = format!("{prefix}.site.sensor.t1");
    let t2 = format!("{prefix}.site.sensor.t2");
    let kafka_topics = [fixed.as_str(), t1.as_str(), t2.as_str(), default.as_str()];
    let consumed = consume(
        &k.bootstrap(),
        &kafka_topics,
        Duration::from_secs(120),
        |r| distinct_ids(r) >= 10_000,
    );
    let report = check(&published, &consumed);
    if !report.lost.is_empty() {
        let out = std::process::Command::new("kcat")
            .args(["-b", &k.bootstrap(), "-L"])
            .output()?;
        eprintln!("topics: {}", String::from_utf8_lossy(&out.stdout));
        for t in kafka_topics {
            let out = kcat_read(&k.bootstrap(), t, "%p %k\n")?;
            eprintln!("{t}: {} records", out.lines().count());
        }
    }
    report.assert_clean();
    if !report.duplicated.is_empty() {
        return Err(fail(format!("duplicates in a fault-free run: {report}")));
    }

    // Mapping, key and headers.
    let want_topic = |mqtt: &str| -> String {
        if mqtt.starts_with("site/alarm/") {
            fixed.clone()
        } else if mqtt == "site/sensor/t1" {
            t1.clone()
        } else if mqtt == "site/sensor/t2" {
            t2.clone()
        } else {
            default.clone()
        }
    };
    let mut seqs: HashMap<String, u64> = HashMap::new();
    for c in &consumed {
        let mqtt_topic = c
            .headers
            .get("mqtt.topic")
            .ok_or_else(|| fail("missing mqtt.topic header"))?;
        if c.topic != want_topic(mqtt_topic) {
            return Err(fail(format!("{mqtt_topic} went to {}", c.topic)));
        }
        if c.key.as_deref() != Some(mqtt_topic.as_bytes()) {
            return Err(fail(format!("key {:?} != topic {mqtt_topic}", c.key)));
        }
        for (h, v) in [
            ("mqtt.qos", "1"),
            ("mqtt.retain", "false"),
            ("gateway.id", "test-gw"),
        ] {
            if c.headers.get(h).map(String::as_str) != Some(v) {
                return Err(fail(format!(
                    "header {h} = {:?}, want {v}",
                    c.headers.get(h)
                )));
            }
        }
        let seq: u64 = c.headers["gateway.seq"].parse()?;
        if let Some(prev) = seqs.insert(mqtt_topic.clone(), seq) {
            if seq <= prev {
                return Err(fail(format!("WAL seq went backwards for {mqtt_topic}")));
            }
        }
        c.headers["gateway.received_at_ms"].parse::<u64>()?;
        if c.payload.len() != 256 {
            return Err(fail("payload changed size"));
        }
    }
    // Everything acknowledged by Kafka is eventually deleted from the WAL.
    wait_until("WAL backlog to drain to 0", Duration::from_secs(30), || {
        gw.json("/backlog")["records"] == 0
    });
    eprintln!("{report}");
    Ok(())
}

pub fn qos0_qos2_binary_and_empty_payloads() -> Result<(), Failed> {
    let site = Site::new(kafka(), "mixed")?;
    let cfg = site
        .config()
        .topics(&[("q2/#", 2), ("q0/#", 0), ("odd/#", 1)]);
    let _gw = site.gateway_with(&cfg, &[]);
    let port = site.mqtt.port;

    let q2 = publish(
        port,
        2,
        &(0..200)
            .map(|i| ("q2/dev".to_string(), harness::payload("q2", i, 64)))
            .collect::<Vec<_>>(),
        Duration::from_secs(60),
    );
    // Binary payload (not UTF-8) after the id, an odd but legal topic.
    let mut binary = harness::payload("bin", 0, 0);
    binary.extend_from_slice(&[0, 159, 146, 150, 255, 0]);
    let odd_topic = "odd/ünï cödé/+plus#hash".replace(['+', '#'], "_");
    let odd = site.publish(
        &[(odd_topic.clone(), binary.clone())],
        Duration::from_secs(30),
    );
    let q0 = publish(
        port,
        0,
        &(0..50)
            .map(|i| ("q0/dev".to_string(), harness::payload("q0", i, 32)))
            .collect::<Vec<_>>(),
        Duration::from_secs(30),
    );
    let empty = site.publish(
        &[("odd/empty".to_string(), Vec::new())],
        Duration::from_secs(30),
    );
    if q2.len() != 200 || odd.len() != 1 || empty.len() != 1 {
        return Err(fail("broker did not ack everything"));
    }
    let consumed = site.consume_until(Duration::from_secs(60), |r| {
        r.iter().any(|c| c.payload.is_empty()) && distinct_ids(r) >= 201
    });
    let report = check(&[q2, odd].concat(), &consumed);
    report.assert_clean();
    let bin_rec = consumed
        .iter()
        .find(|c| c.payload.starts_with(b"bin:0:"))
        .ok_or_else(|| fail("binary record missing"))?;
    if bin_rec.payload != binary || bin_rec.headers["mqtt.topic"] != odd_topic {
        return Err(fail("binary payload or odd topic altered"));
    }
    if !consumed
        .iter()
        .any(|c| c.payload.is_empty() && c.headers["mqtt.topic"] == "odd/empty")
    {
        return Err(fail("empty payload missing"));
    }
    if !consumed
        .iter()
        .any(|c| c.headers.get("mqtt.qos").map(String::as_str) == Some("2"))
    {
        return Err(fail("qos 2 header missing"));
    }
    // QoS 0 has no acknowledgement to check; whatever arrived is intact.
    let q0_seen = consumed
        .iter()
        .filter(|c| c.payload.starts_with(b"q0:"))
        .count();
    eprintln!("{report}; qos0 delivered {q0_seen}/{}", q0.len());
    Ok(())
}

/// Messages near Kafka's size limit, many times the ingest's memory budget (8 MiB of
/// messages not yet durable) in one burst: they wait for each other's fsync instead of
/// piling up in memory, and every one arrives whole.
pub fn large_messages_pass_the_ingest_budget() -> Result<(), Failed> {
    let site = Site::new(kafka(), "large")?;
    let _gw = site.gateway();
    const SIZE: usize = 700_000;
    let msgs = messages("big", &["big/cam".into()], 40, SIZE);
    let published = site.publish_all(&msgs, Duration::from_secs(120))?;
    let consumed = site.consume(40, Duration::from_secs(120));
    let report = check(&published, &consumed);
    report.assert_clean();
    // Whole: byte for byte one of the messages published (ids differ in the first bytes).
    if let Some(c) = consumed
        .iter()
        .find(|c| !msgs.iter().any(|(_, p)| *p == c.payload))
    {
        return Err(fail(format!(
            "a record of {} bytes is not one of the {SIZE}-byte messages published",
            c.payload.len()
        )));
    }
    eprintln!("{report}");
    Ok(())
}

pub fn admin_backlog_and_metrics() -> Result<(), Failed> {
    let site = Site::new(kafka(), "admin")?;
    let gw = site.gateway();
    let published = site.publish(
        &messages("adm", &["a/b".into()], 100, 100),
        Duration::from_secs(30),
    );
    let consumed = site.consume(100, Duration::from_secs(60));
    check(&published, &consumed).assert_clean();
    wait_until(
        "metrics to show 100 forwarded",
        Duration::from_secs(30),
        || {
            harness::http_get(gw.admin, "/metrics").is_ok_and(|(_, body)| {
                body.contains("mkg_kafka_records_forwarded_total 100")
                    && body.contains("mkg_mqtt_messages_acked_total 100")
                    && body.contains("mkg_backlog_records 0")
            })
        },
    );
    // Every durable commit is in the commit-duration histogram, and only those:
    // its count equals the commits that acknowledged the 100 messages, at most 100.
    let (_, metrics) = harness::http_get(gw.admin, "/metrics")?;
    let sample = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let commits = sample("mkg_wal_commit_duration_seconds_count");
    let inf = sample("mkg_wal_commit_duration_seconds_bucket{le=\"+Inf\"}");
    if !commits.is_some_and(|n| (1.0..=100.0).contains(&n)) || inf != commits {
        return Err(fail(format!(
            "commit histogram: count {commits:?}, +Inf {inf:?}\n{metrics}"
        )));
    }
    let status = gw.json("/status");
    if status["mqtt"]["connected"] != true || status["wal"]["writable"] != true {
        return Err(fail(format!("status: {status}")));
    }
    let backlog = gw.json("/backlog");
    if backlog["next_seq"] != 101 {
        return Err(fail(format!("backlog: {backlog}")));
    }
    let (code, _) = harness::http_get(gw.admin, "/nope")?;
    if code != 404 {
        return Err(fail(format!("unknown path gave {code}")));
    }
    Ok(())
}
