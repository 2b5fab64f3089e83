//! Very slow fsync and I/O errors under the WAL, injected through the test-only fault
//! backend (`wal::faults`, control file named by `MKG_WAL_FAULTS`): nothing is
//! acknowledged before it is durable, the gateway reopens the database after an I/O
//! error and recovers by itself, nothing is lost.

use std::path::Path;
use std::time::Duration;

use harness::checker::{check_with_faults, now_ms, FaultEvent};
use harness::wait_until;
use libtest_mimic::Failed;

use crate::common::{acked_all, admin_u64, joined, Site};
use crate::{fail, kafka, messages};

fn counter(admin: std::net::SocketAddr, name: &str) -> u64 {
    admin_u64(admin, "/status", &format!("/counters/{name}")).unwrap_or(0)
}

/// A gateway whose WAL goes through the fault backend, controlled by `ctl`.
fn gateway_with_faults(site: &Site, ctl: &Path) -> harness::Gateway {
    site.gateway_with(&site.config(), &[("MKG_WAL_FAULTS", ctl.to_str().unwrap())])
}

fn control(path: &Path, text: &str) -> Result<(), Failed> {
    // Write then rename: the backend never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Every fsync takes 1.5 s; the gateway is SIGKILLed while a commit is in its fsync.
/// The broker's acknowledgements never run ahead of the WAL's durable commits, and
/// after a restart (normal disk) every message the broker acknowledged is in Kafka.
pub fn slow_fsync_sigkill_mid_commit_loses_nothing() -> Result<(), Failed> {
    let site = Site::new(kafka(), "slowsync")?;
    let ctl = site.path().join("wal-faults");
    control(&ctl, "sync_delay_ms=1500")?;
    let mut gw = gateway_with_faults(&site, &ctl);
    let msgs = messages(
        "slow",
        &["s/a".into(), "s/b".into(), "s/c".into()],
        4_000,
        200,
    );
    let publisher = site.publish_in_background(msgs, Duration::from_secs(180));
    // Wait until a commit is under way with messages waiting behind it: received
    // more than committed, and at least one slow commit done.
    let slow_from = now_ms();
    wait_until(
        "messages received beyond what is committed, after a slow commit",
        Duration::from_secs(60),
        || {
            let s = gw.json("/status");
            let c = &s["counters"];
            let received = c["mqtt_messages_received"].as_u64().unwrap_or(0);
            let committed = c["wal_records_committed"].as_u64().unwrap_or(0);
            committed > 0 && received >= 1_500 && received > committed
        },
    );
    let s = gw.json("/status");
    let c = &s["counters"];
    let (received, committed, acked) = (
        c["mqtt_messages_received"].as_u64().unwrap_or(0),
        c["wal_records_committed"].as_u64().unwrap_or(0),
        c["mqtt_messages_acked"].as_u64().unwrap_or(0),
    );
    let events = [FaultEvent {
        at_ms: slow_from,
        until_ms: now_ms(),
        kind: "slow fsync, then SIGKILL".into(),
    }];
    gw.sigkill();
    eprintln!("at SIGKILL: received {received}, committed {committed}, acked {acked}");
    if acked > committed {
        return Err(fail(format!(
            "acknowledged {acked} messages but only {committed} were durable"
        )));
    }
    // Restart on a normal disk.
    control(&ctl, "")?;
    gw.restart();
    gw.wait_ready();
    let published = joined(publisher)?;
    acked_all(&published, 4_000)?;
    let consumed = site.consume(4_000, Duration::from_secs(120));
    let report = check_with_faults(&published, &consumed, &events);
    eprintln!("slow fsync + SIGKILL: {report}");
    report.assert_clean();
    Ok(())
}

/// I/O errors on commit: first a few transient EIOs on write and fsync, then a disk
/// whose fsync keeps failing until it is "repaired". While commits fail nothing is
/// acknowledged, the condition is on /readyz, /status and /metrics, the process keeps
/// running and reopens the database; when the disk works again it resumes by itself.
pub fn wal_io_errors_not_acked_then_reopened() -> Result<(), Failed> {
    let site = Site::new(kafka(), "eio")?;
    let ctl = site.path().join("wal-faults");
    control(&ctl, "")?;
    let mut gw = gateway_with_faults(&site, &ctl);
    let admin = gw.admin;
    let topics: Vec<String> = vec!["e/a".into(), "e/b".into()];
    let mut published = site.publish(&messages("e1", &topics, 500, 200), Duration::from_secs(60));

    // 1. Transient: 3 failed writes and 3 failed fsyncs.
    let t1 = now_ms();
    control(&ctl, "write_eio=3 sync_eio=3")?;
    published.extend(site.publish(
        &messages("e2", &topics, 1_000, 200),
        Duration::from_secs(60),
    ));
    wait_until("commit errors counted", Duration::from_secs(60), || {
        counter(admin, "wal_commit_errors") >= 1
    });
    wait_until(
        "everything committed after the transient errors",
        Duration::from_secs(60),
        || counter(admin, "mqtt_messages_acked") >= 1_500,
    );
    let transient_errors = counter(admin, "wal_commit_errors");
    let mut events = vec![FaultEvent {
        at_ms: t1,
        until_ms: now_ms(),
        kind: "transient EIO".into(),
    }];

    // 2. Persistent: fsync fails until the control file is cleared.
    let t2 = now_ms();
    control(&ctl, "sync_fail=1")?;
    let acked_before = counter(admin, "mqtt_messages_acked");
    let msgs3 = messages("e3", &topics, 1_000, 200);
    let publisher = site.publish_in_background(msgs3, Duration::from_secs(120));
    wait_until(
        "/readyz to report the WAL failing",
        Duration::from_secs(60),
        || harness::http_get(admin, "/readyz").is_ok_and(|(s, _)| s == 503),
    );
    // Let it retry (and reopen) a few more times while the disk stays broken.
    let errors_then = counter(admin, "wal_commit_errors");
    wait_until("more failed commits", Duration::from_secs(60), || {
        counter(admin, "wal_commit_errors") >= errors_then + 3
    });
    let s = gw.json("/status");
    let why = s["wal"]["last_error"].as_str().unwrap_or("").to_string();
    let (_, metrics) = harness::http_get(admin, "/metrics")?;
    let acked_during = counter(admin, "mqtt_messages_acked");
    let received_during = counter(admin, "mqtt_messages_received");
    if let Some(status) = gw.try_wait() {
        return Err(fail(format!(
            "gateway exited on I/O errors: {status}\n{}",
            gw.log()
        )));
    }
    if acked_during != acked_before {
        return Err(fail(format!(
            "acknowledged {} messages while every fsync failed",
            acked_during - acked_before
        )));
    }
    if received_during <= acked_during {
        return Err(fail("no message arrived while the disk was broken"));
    }
    if !why.contains("Input/output error") || s["mqtt"]["accepting"] != false {
        return Err(fail(format!("status does not show the condition: {s}")));
    }
    if !metrics.contains("mkg_wal_writable 0") || !metrics.contains("mkg_mqtt_accepting 0") {
        return Err(fail(format!(
            "metrics do not show the condition:\n{metrics}"
        )));
    }

    // 3. Repaired: commits resume by themselves.
    control(&ctl, "")?;
    wait_until("/readyz ready again", Duration::from_secs(60), || {
        harness::http_get(admin, "/readyz").is_ok_and(|(s, _)| s == 200)
    });
    events.push(FaultEvent {
        at_ms: t2,
        until_ms: now_ms(),
        kind: "fsync failing".into(),
    });
    published.extend(joined(publisher)?);
    acked_all(&published, 2_500)?;
    let consumed = site.consume(2_500, Duration::from_secs(120));
    let report = check_with_faults(&published, &consumed, &events);
    let log = gw.log();
    eprintln!(
        "I/O errors: {report}; failed commits: {transient_errors} transient, {} in all; received while broken {received_during}, acked {acked_during}",
        counter(admin, "wal_commit_errors")
    );
    report.assert_clean();
    for needle in ["WAL commit failed", "WAL commits succeed again"] {
        if !log.contains(needle) {
            return Err(fail(format!("log lacks {needle:?}:\n{log}")));
        }
    }
    if gw.try_wait().is_some() {
        return Err(fail("gateway exited"));
    }
    Ok(())
}
