//! The backlog per topic during a real Kafka outage: traffic to three Kafka topics
//! builds a backlog that `/backlog/topics` and `backlog --topics` break down by Kafka
//! and by MQTT topic, with the oldest record of each; once Kafka is back the time until
//! the backlog is empty appears and falls while it drains.

use std::time::{Duration, Instant};

use harness::{run_gateway_cmd, unique, wait_until, Kafka};
use libtest_mimic::Failed;
use serde_json::Value;

use crate::common::{wait_kafka_dead, Site};
use crate::{bin, fail};

pub fn backlog_per_topic_and_time_to_empty_through_an_outage() -> Result<(), Failed> {
    let own = Kafka::start();
    let site = Site::new(&own, "topics")?;
    let names = [unique("ta"), unique("tb"), unique("tc")];
    for t in &names {
        own.create_topic(t, 1);
    }
    // One record in flight at a time: a drain slow enough to watch, on any machine.
    let cfg = site
        .base_config()
        .routes(&[
            ("s/a/#", names[0].as_str()),
            ("s/b/#", names[1].as_str()),
            ("s/c/#", names[2].as_str()),
        ])
        .forward("max_in_flight_records", 1)
        .admin("topics_limit", 2);
    let gw = site.gateway_with(&cfg, &[]);
    let pid = own.pid().ok_or_else(|| fail("no kafka pid"))?;
    harness::kill(pid, libc::SIGKILL);
    wait_kafka_dead(pid);

    // 1,200 / 800 / 400 messages, from 4 devices per Kafka topic.
    let counts = [1200u64, 800, 400];
    let mut msgs = Vec::new();
    for (k, n) in counts.iter().enumerate() {
        let letter = ["a", "b", "c"][k];
        for i in 0..*n {
            msgs.push((format!("s/{letter}/dev{}", i % 4), vec![b'x'; 100]));
        }
    }
    let first_publish = harness::checker::now_ms();
    if site.publish(&msgs, Duration::from_secs(120)).len() != msgs.len() {
        return Err(fail("the broker did not acknowledge every message"));
    }
    let total: u64 = counts.iter().sum();
    wait_until(
        "the whole backlog in the WAL",
        Duration::from_secs(60),
        || gw.json("/backlog")["records"] == total,
    );

    // By Kafka topic, two rows (admin.topics_limit) and the third summed.
    let page = gw.json("/backlog/topics");
    let rows = page["topics"].as_array().ok_or("no topics")?;
    let row = |i: usize| (rows[i]["topic"].clone(), rows[i]["records"].clone());
    if rows.len() != 2
        || row(0) != (Value::from(names[0].as_str()), Value::from(1200))
        || row(1) != (Value::from(names[1].as_str()), Value::from(800))
        || page["other"]["topics"] != 1
        || page["other"]["records"] != 400
        || page["total_topics"] != 3
    {
        return Err(fail(format!("by Kafka topic: {page}")));
    }
    let backlog_bytes = gw.json("/backlog")["bytes"].as_u64().unwrap_or(0);
    let row_bytes: u64 = rows
        .iter()
        .map(|r| r["bytes"].as_u64().unwrap_or(0))
        .sum::<u64>()
        + page["other"]["bytes"].as_u64().unwrap_or(0);
    if row_bytes != backlog_bytes || backlog_bytes == 0 {
        return Err(fail(format!(
            "bytes per topic add up to {row_bytes}, the backlog has {backlog_bytes}"
        )));
    }
    // Each row's oldest record: received after the first publish, no later than now.
    for r in rows {
        let t = r["oldest_receive_time_ms"].as_u64().unwrap_or(0);
        if t < first_publish || r["oldest_age_seconds"].as_f64().is_none() {
            return Err(fail(format!("oldest record of {r}")));
        }
    }
    // All three with a limit, and by MQTT topic: 12 devices.
    let all = gw.json("/backlog/topics?limit=10");
    if all["topics"].as_array().map_or(0, Vec::len) != 3 || !all["other"].is_null() {
        return Err(fail(format!("limit=10: {all}")));
    }
    let by_mqtt = gw.json("/backlog/topics?by=mqtt&limit=1000");
    let devices = by_mqtt["topics"].as_array().ok_or("no topics")?;
    if devices.len() != 12 || devices[0]["records"] != 300 || devices[0]["topic"] != "s/a/dev0" {
        return Err(fail(format!("by MQTT topic: {by_mqtt}")));
    }
    let (status, body) = harness::http_get(gw.admin, "/backlog/topics?by=device")?;
    if status != 400 || !body.contains("by") {
        return Err(fail(format!("by=device: {status} {body}")));
    }
    // The CLI shows the same table.
    let config = site.path().join("gateway.toml");
    let config = config.to_str().ok_or("path")?;
    let (code, out) = run_gateway_cmd(bin(), &["backlog", "--topics", "--config", config]);
    if code != Some(0)
        || !out.contains(names[0].as_str())
        || !out.contains("1200")
        || !out.contains("(1 other topics)")
    {
        return Err(fail(format!("backlog --topics: exit {code:?}\n{out}")));
    }
    let (code, out) = run_gateway_cmd(
        bin(),
        &[
            "backlog", "--topics", "--by", "mqtt", "--limit", "3", "--config", config,
        ],
    );
    if code != Some(0) || !out.contains("s/a/dev0") || !out.contains("(9 other topics)") {
        return Err(fail(format!(
            "backlog --topics --by mqtt: exit {code:?}\n{out}"
        )));
    }
    // /metrics: the same rows as gauges.
    let (_, metrics) = harness::http_get(gw.admin, "/metrics")?;
    for want in [
        format!("mkg_backlog_topic_records{{topic=\"{}\"}} 1200\n", names[0]),
        format!("mkg_backlog_topic_records{{topic=\"{}\"}} 800\n", names[1]),
        "mkg_backlog_topic_records{topic=\"(other)\"} 400\n".to_string(),
    ] {
        if !metrics.contains(&want) {
            return Err(fail(format!("no {want:?} in /metrics:\n{metrics}")));
        }
    }
    // Nothing drains while Kafka is down: no time to empty.
    if !gw.json("/backlog")["rates"]["eta_empty_seconds"].is_null() {
        return Err(fail(format!(
            "a time to empty while nothing drains: {}",
            gw.json("/backlog")
        )));
    }

    // Kafka back: the time to empty appears and falls as the backlog drains.
    own.start_again();
    let mut etas: Vec<(u64, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let b = gw.json("/backlog");
        let records = b["records"].as_u64().unwrap_or(u64::MAX);
        if records == 0 {
            break;
        }
        if let Some(eta) = b["rates"]["eta_empty_seconds"].as_f64() {
            if etas.last().is_none_or(|(r, _)| *r != records) {
                etas.push((records, eta));
            }
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "the backlog did not drain: {b}; times to empty {etas:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let falling = etas.windows(2).filter(|w| w[1].1 < w[0].1).count();
    if etas.len() < 3 || falling * 2 < etas.len() - 1 {
        return Err(fail(format!(
            "the time to empty did not fall while draining (records, seconds): {etas:?}"
        )));
    }
    eprintln!("draining (records, seconds to empty): {etas:?}");
    let empty = gw.json("/backlog/topics");
    if empty["topics"].as_array().map_or(1, Vec::len) != 0 || empty["total_topics"] != 0 {
        return Err(fail(format!("after the drain: {empty}")));
    }
    if gw.json("/backlog")["rates"]["eta_empty_seconds"] != 0.0 {
        return Err(fail("an empty backlog is not empty now"));
    }
    Ok(())
}
