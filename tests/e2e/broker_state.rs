//! What the broker loses on its own, made visible (the gateway cannot save messages
//! that never reach it, but it must not hide that they are gone):
//! - Mosquitto drops messages for a client whose queue is full
//!   (`max_queued_messages`): counted from `$SYS/broker/publish/messages/dropped`,
//!   warned about, shown in `/status` and `/metrics`.
//! - Mosquitto restarted without its persistence file (persistence off, or a
//!   `persistence_location` its user cannot write): the gateway's persistent session is
//!   gone. Logged as a warning that says what may be lost and why, counted in
//!   `mkg_mqtt_sessions_lost_total`, shown in `/status`, and `/readyz` fails for
//!   `mqtt.session_lost_alert`.

use std::time::Duration;

use harness::config::GatewayConfig;
use harness::{publish, unique, wait_until, Mosquitto};
use libtest_mimic::Failed;

use crate::common::admin_u64;
use crate::{fail, kafka, messages};

pub fn broker_drops_and_lost_sessions_are_visible() -> Result<(), Failed> {
    let k = kafka();
    // The broker reports its counters every second; queues hold 100 messages.
    let mqtt = Mosquitto::start_with("sys_interval 1\nmax_queued_messages 100");
    let dir = tempfile::tempdir()?;
    let topic = unique("bstate");
    let cfg = GatewayConfig::new(mqtt.port, &k.bootstrap())
        .topic(&topic)
        .mqtt("session_lost_alert", "3s");
    let mut gw = harness::Gateway::start(crate::bin(), dir.path(), &cfg.toml());
    gw.wait_ready();
    let admin = gw.admin;
    let site_topic = |s: &str| format!("bs/{s}");

    // 1. Another client with a persistent session is away; its queue overflows while
    //    the gateway watches: the broker's drop counter grows by what it dropped.
    let idle = unique("idle-sub");
    subscribe_and_leave(mqtt.port, &idle, "idle/#");
    let sent = publish(
        mqtt.port,
        1,
        &messages("idle", &["idle/x".to_string()], 250, 16),
        Duration::from_secs(30),
    );
    if sent.len() != 250 {
        return Err(fail(format!("broker acked {} of 250", sent.len())));
    }
    wait_until(
        "the gateway to see the broker's drops",
        Duration::from_secs(30),
        || admin_u64(admin, "/status", "/counters/mqtt_broker_drops") >= Some(150),
    );
    let st = gw.json("/status");
    eprintln!("broker counters: {}", st["mqtt"]["broker"]);
    if st["mqtt"]["broker"]["messages_dropped"].as_u64() < Some(150) {
        return Err(fail(format!("drops not in /status: {st}")));
    }
    let metrics = harness::http_get(admin, "/metrics")?.1;
    if !metrics.contains("mkg_mqtt_broker_messages_dropped 150") {
        return Err(fail(format!("drops not in /metrics:\n{metrics}")));
    }
    if !gw
        .log()
        .contains("the MQTT broker dropped messages since its last report")
    {
        return Err(fail(format!("no warning in the log:\n{}", gw.log())));
    }
    // The gateway subscribes to `#` (which does not match `$SYS/...`): it received the
    // 250 messages and none of the broker's counters.
    if st["counters"]["mqtt_messages_received"] != 250 {
        return Err(fail(format!(
            "the broker's counters were stored as messages: {st}"
        )));
    }

    // 2. Mosquitto restarted without its persistence file: the session is gone.
    let published = publish(
        mqtt.port,
        1,
        &messages("before", &[site_topic("a")], 20, 16),
        Duration::from_secs(30),
    );
    if published.len() != 20 {
        return Err(fail("broker did not ack the first messages"));
    }
    mqtt.kill(libc::SIGTERM);
    std::fs::remove_file(mqtt.dir().join("mosquitto.db"))?;
    mqtt.start_again();
    wait_until(
        "the session loss to be noticed",
        Duration::from_secs(30),
        || admin_u64(admin, "/status", "/counters/mqtt_sessions_lost") == Some(1),
    );
    let (code, body) = harness::http_get(admin, "/readyz")?;
    if code != 503 || !body.contains("lost the gateway's persistent session") {
        return Err(fail(format!(
            "/readyz while the loss is recent: {code} {body}"
        )));
    }
    let log = gw.log();
    let warning = log
        .lines()
        .find(|l| l.contains("has no session for client id"))
        .ok_or_else(|| fail(format!("no session-loss warning:\n{log}")))?;
    for cause in ["persistence", "persistence_location", "expired"] {
        if !warning.contains(cause) {
            return Err(fail(format!(
                "the warning does not name {cause}: {warning}"
            )));
        }
    }
    let st = gw.json("/status");
    if st["mqtt"]["session_lost"]["alerting"] != true {
        return Err(fail(format!("no session_lost in /status: {st}")));
    }
    // After mqtt.session_lost_alert the gateway is ready again (and says so).
    gw.wait_ready();
    let metrics = harness::http_get(admin, "/metrics")?.1;
    if !metrics.contains("mkg_mqtt_sessions_lost_total 1") {
        return Err(fail(format!("not counted in /metrics:\n{metrics}")));
    }
    // A restart of the gateway against a broker that kept the session is no loss.
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(30));
    gw.restart();
    gw.wait_ready();
    if admin_u64(gw.admin, "/status", "/counters/mqtt_sessions_lost") != Some(0) {
        return Err(fail(
            "a restart with the session present was reported as a loss",
        ));
    }
    Ok(())
}

/// Subscribe `client_id` with a persistent session to `filter` at QoS 1, then leave,
/// so the broker queues for it.
fn subscribe_and_leave(port: u16, client_id: &str, filter: &str) {
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", client_id])
        .args(["-c", "-q", "1", "-t", filter, "-E"])
        .output()
        .expect("mosquitto_sub");
    assert!(out.status.success(), "mosquitto_sub: {out:?}");
}
