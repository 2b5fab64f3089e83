//! Bounds on the WAL besides the disk, during a Kafka outage, with the real brokers:
//! - `wal.max_bytes` with `wal.on_full = "drop_oldest"`: the oldest records make room,
//!   counted by reason and logged with their sequence range; the newest arrive once
//!   Kafka is back.
//! - `wal.max_records` with `wal.on_full = "block"` (the default): the gateway stops
//!   acknowledging MQTT at the cap and says why; Mosquitto keeps the rest; nothing
//!   is lost once Kafka is back.
//! - `wal.max_age`: expired records move to the dead-letter table, or are dropped
//!   (`wal.on_expired = "drop"`), counted.

use std::collections::BTreeSet;
use std::time::Duration;

use harness::{check, checker, wait_until, Gateway, Kafka};
use libtest_mimic::Failed;

use crate::common::{admin_u64, Site};
use crate::{bin, fail, messages};

pub fn wal_cap_drops_the_oldest_during_an_outage() -> Result<(), Failed> {
    let own = Kafka::not_started();
    let site = Site::new(&own, "capdrop")?;
    // Few records in librdkafka's hands: a dropped record may still reach Kafka if it
    // was handed over before the drop.
    let cfg = site
        .config()
        .wal("max_bytes", "2MiB")
        .wal("on_full", "drop_oldest")
        .forward("max_in_flight_records", 10);
    let gw = site.gateway_with(&cfg, &[]);
    let admin = gw.admin;
    let msgs = messages("cap", &["c/a".into(), "c/b".into()], 10_000, 256);
    let published = site.publish_all(&msgs, Duration::from_secs(60))?;
    wait_until("every message received", Duration::from_secs(60), || {
        admin_u64(admin, "/status", "/counters/wal_records_committed") == Some(10_000)
    });
    let b = gw.json("/backlog");
    let (kept, bytes) = (
        b["records"].as_u64().unwrap_or(0),
        b["bytes"].as_u64().unwrap_or(0),
    );
    let dropped = b["dropped"]["max_bytes"].as_u64().unwrap_or(0);
    eprintln!("cap: kept {kept} records ({bytes} bytes), dropped {dropped}");
    if dropped == 0 || kept + dropped != 10_000 || bytes > (2 << 20) + (64 << 10) {
        return Err(fail(format!("backlog: {b}")));
    }
    let metrics = harness::http_get(admin, "/metrics")?.1;
    if !metrics.contains(&format!(
        "mkg_wal_records_dropped_total{{reason=\"max_bytes\"}} {dropped}"
    )) {
        return Err(fail(format!("not in /metrics:\n{metrics}")));
    }
    let log = gw.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dropped records from the WAL that never reached Kafka"))
        .collect();
    if lines.is_empty() || lines.len() > 3 || !lines[0].contains("..=") {
        return Err(fail(format!("expected a few summary lines:\n{log}")));
    }

    // Kafka is back: everything still in the WAL arrives, that is the newest ones.
    own.start_again();
    wait_until("the backlog to drain", Duration::from_secs(120), || {
        admin_u64(admin, "/backlog", "/records") == Some(0)
    });
    let consumed = site.consume(kept as usize, Duration::from_secs(60));
    let newest = &published[published.len() - kept as usize..];
    let report = check(newest, &consumed);
    eprintln!("cap: newest {kept}: {report}");
    report.assert_clean();
    Ok(())
}

pub fn wal_cap_blocks_then_loses_nothing() -> Result<(), Failed> {
    let own = Kafka::not_started();
    let site = Site::new(&own, "capblock")?;
    let cfg = site.config().wal("max_records", 500);
    let gw = site.gateway_with(&cfg, &[]);
    let admin = gw.admin;
    let msgs = messages("blk", &["b/a".into(), "b/b".into()], 2_000, 128);
    // Mosquitto acknowledges the publisher and queues what the gateway does not take.
    let published = site.publish_all(&msgs, Duration::from_secs(60))?;
    wait_until("the cap to be reached", Duration::from_secs(60), || {
        admin_u64(admin, "/backlog", "/records") == Some(500)
    });
    let (code, body) = harness::http_get(admin, "/readyz")?;
    if code != 503 || !body.contains("wal.max_records (500)") {
        return Err(fail(format!("/readyz at the cap: {code} {body}")));
    }
    if admin_u64(admin, "/status", "/counters/mqtt_messages_acked") > Some(500) {
        return Err(fail("acknowledged more than the cap holds"));
    }
    own.start_again();
    let consumed = site.consume(2_000, Duration::from_secs(120));
    let report = check(&published, &consumed);
    eprintln!("block: {report}");
    report.assert_clean();
    let b = gw.json("/backlog");
    if b["dropped"]["max_records"] != 0 {
        return Err(fail(format!("dropped with on_full = block: {b}")));
    }
    Ok(())
}

pub fn expired_records_are_dead_lettered_or_dropped() -> Result<(), Failed> {
    let own = Kafka::not_started();
    for (on_expired, n) in [("dead_letter", 50u64), ("drop", 30)] {
        let site = Site::new(&own, "expire")?;
        let cfg = site
            .config()
            .wal("max_age", "2s")
            .wal("on_expired", on_expired);
        let mut gw = Gateway::start(bin(), site.path(), &cfg.toml());
        gw.wait_ready();
        let admin = gw.admin;
        let msgs = messages("old", &["e/a".into()], n, 64);
        let published = site.publish_all(&msgs, Duration::from_secs(30))?;
        wait_until("the records to expire", Duration::from_secs(30), || {
            admin_u64(admin, "/backlog", "/records") == Some(0)
                && admin_u64(admin, "/status", "/counters/wal_records_committed") == Some(n)
        });
        let b = gw.json("/backlog");
        let s = gw.json("/status");
        let ok = match on_expired {
            "dead_letter" => {
                b["dead_letters"]["records"] == n
                    && s["counters"]["wal_records_expired"] == n
                    && b["dropped"]["max_age"] == 0
            }
            _ => b["dropped"]["max_age"] == n && b["dead_letters"]["records"] == 0,
        };
        if !ok {
            return Err(fail(format!("{on_expired}: {b} {}", s["counters"])));
        }
        if on_expired == "dead_letter" {
            // Every one is in the dead-letter table, with its reason.
            gw.signal(libc::SIGTERM);
            gw.wait_exit(Duration::from_secs(30));
            let wal_file = site.path().join("wal/wal.redb");
            let (code, out) = harness::run_gateway_cmd(
                bin(),
                &["wal", "dump", "--dead-letters", wal_file.to_str().unwrap()],
            );
            if code != Some(0) || !out.contains("older than wal.max_age") {
                return Err(fail(format!("wal dump: {out}")));
            }
            let parked = out.matches("\"table\":\"dead_letter\"").count();
            let ids: BTreeSet<_> = published
                .iter()
                .filter_map(|p| checker::message_id(&p.payload))
                .collect();
            if parked != ids.len() {
                return Err(fail(format!(
                    "{parked} dead letters for {} messages",
                    ids.len()
                )));
            }
        }
    }
    Ok(())
}
