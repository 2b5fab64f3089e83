//! `GET /records` on a running gateway whose Kafka is unreachable: the backlog paged
//! in order with the published payloads, a topic filter, and bad queries refused.

use std::time::Duration;

use harness::config::GatewayConfig;
use harness::{free_port, http_get, publish, unique, wait_until, Gateway, Mosquitto};
use libtest_mimic::Failed;
use serde_json::Value;

use crate::{bin, fail};

fn page(gw: &Gateway, query: &str) -> Result<Value, Failed> {
    let (status, body) = http_get(gw.admin, &format!("/records{query}"))?;
    if status != 200 {
        return Err(fail(format!("/records{query}: {status} {body}")));
    }
    Ok(serde_json::from_str(&body)?)
}

pub fn records_pages_the_backlog_with_previews() -> Result<(), Failed> {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir()?;
    let topic = unique("peek");
    let nowhere = format!("127.0.0.1:{}", free_port());
    let cfg = GatewayConfig::new(m.port, &nowhere).topic(&topic);
    let mut gw = Gateway::start(bin(), dir.path(), &cfg.toml());
    gw.wait_subscribed();

    // 30 text messages over two topics, then one binary payload.
    let mut msgs: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            let t = if i % 3 == 0 { "p/b/x" } else { "p/a/x" };
            (t.to_string(), format!("reading {i}").into_bytes())
        })
        .collect();
    msgs.push(("p/a/bin".into(), vec![0xff, 0x00, 0x10]));
    if publish(m.port, 1, &msgs, Duration::from_secs(60)).len() != msgs.len() {
        return Err(fail("broker did not ack every message"));
    }
    wait_until("31 records in the WAL", Duration::from_secs(30), || {
        gw.json("/backlog")["records"] == 31
    });

    let first = page(&gw, "?limit=10")?;
    let recs = first["records"].as_array().ok_or("no records array")?;
    if recs.len() != 10 {
        return Err(fail(format!("limit=10 gave {}: {first}", recs.len())));
    }
    for (i, r) in recs.iter().enumerate() {
        let want = String::from_utf8(msgs[i].1.clone())?;
        if r["preview"] != want.as_str()
            || r["mqtt_topic"] != msgs[i].0.as_str()
            || r["kafka_topic"] != topic.as_str()
            || r["size"] != want.len()
            || r["qos"] != 1
            || r["preview_encoding"] != "utf8"
        {
            return Err(fail(format!(
                "record {i}: {r}, want {want:?} on {}",
                msgs[i].0
            )));
        }
    }
    let next = first["next"].as_u64().ok_or("no next")?;
    if next != recs[9]["seq"].as_u64().unwrap_or(0) + 1 {
        return Err(fail(format!("next {next} after {}", recs[9])));
    }
    // The rest, in pages, ends with the binary one in base64.
    let rest = page(&gw, &format!("?from={next}&limit=1000"))?;
    let rest = rest["records"].as_array().ok_or("no records array")?;
    let last = rest.last().ok_or("empty second page")?;
    if rest.len() != 21 || last["preview"] != "/wAQ" || last["preview_encoding"] != "base64" {
        return Err(fail(format!(
            "second page: {} records, last {last}",
            rest.len()
        )));
    }
    // A topic filter (wildcards, percent-encoded).
    let b = page(&gw, "?topic=p%2Fb%2F%23&limit=1000")?;
    let b = b["records"].as_array().ok_or("no records array")?;
    if b.len() != 10 || b.iter().any(|r| r["mqtt_topic"] != "p/b/x") {
        return Err(fail(format!("topic filter gave {b:?}")));
    }
    for bad in ["?limit=0", "?limit=5000", "?from=x", "?colour=red"] {
        let (status, body) = http_get(gw.admin, &format!("/records{bad}"))?;
        if status != 400 {
            return Err(fail(format!("/records{bad}: {status} {body}")));
        }
    }
    // Reading changed nothing.
    if gw.json("/backlog")["records"] != 31 {
        return Err(fail("the backlog changed"));
    }
    // Rates, forecasts and history are there (Kafka is unreachable: no drain, so no
    // time to empty).
    let rates = &gw.json("/backlog")["rates"];
    let free = rates["disk_free_bytes"]
        .as_u64()
        .ok_or("no disk_free_bytes")?;
    let headroom = rates["disk_headroom_bytes"].as_u64().ok_or("no headroom")?;
    if headroom > free || !rates["eta_empty_seconds"].is_null() {
        return Err(fail(format!("rates: {rates}")));
    }
    wait_until("a point in /history", Duration::from_secs(10), || {
        gw.json("/history")["fine"]
            .as_array()
            .is_some_and(|p| p.last().is_some_and(|p| p["backlog_records"] == 31))
    });
    let (_, metrics) = http_get(gw.admin, "/metrics")?;
    if !metrics.contains("mkg_wal_disk_headroom_bytes ") {
        return Err(fail(format!("no headroom metric:\n{metrics}")));
    }
    Ok(())
}
