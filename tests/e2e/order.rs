//! Per-key order when the gateway is behind Mosquitto's queue for it (it was away
//! while publishers kept sending) and Mosquitto is restarted (SIGTERM) while the
//! gateway drains that queue, publishers still sending. Lost 0, out of order 0 (first
//! copies, per key), in two runs:
//!
//! 1. QoS 1 only, Mosquitto as the README configures it. This failed (3 runs in 4)
//!    before the gateway stopped acknowledging, on a new connection, the packets
//!    rumqttc had read on the old one (`Ingest::take_stale_events`): Mosquitto 2.0.11
//!    counts every PUBACK as a free in-flight slot before looking the packet id up, so
//!    each stray one let the next message a publisher sent overtake the whole queue.
//! 2. QoS 1 on `sensors/#` and QoS 2 on `alarms/#` (as in the example config), with
//!    `max_inflight_messages 0`. With QoS 2 in the mix and the default in-flight limit,
//!    Mosquitto 2.0.11 reorders on its own (2 runs in 3): it moves queued messages into
//!    flight by list position rather than by its quota, the in-flight list grows far
//!    past the limit, QoS 2 messages waiting for PUBCOMP stay at its head, every PUBACK
//!    behind them frees a slot that moves nothing, and new messages overtake the queue.
//!    Fixed in Mosquitto 2.0.13 (commit 330bf6ef, issue #2306); without the limit there
//!    is no quota to leak. docs/RELIABILITY.md has the reproduction.
//!
//! A restart like this also produces thousands of copies written twice: Mosquitto
//! resends every message it had in flight to the gateway whose acknowledgement it had
//! not processed when it stopped, and a QoS 1 resend cannot be told from a new message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::config::GatewayConfig;
use harness::publisher::{publish_resilient_with, ResilientOptions};
use harness::qos2pub::publish_qos2;
use harness::{check, unique, wait_until, Gateway, Mosquitto, Published};
use libtest_mimic::Failed;

use crate::common::admin_u64;
use crate::{bin, fail, kafka, messages};

pub fn mosquitto_restart_while_draining_a_backlog_keeps_order() -> Result<(), Failed> {
    restart_while_draining("qos1", "", false)?;
    restart_while_draining("qos1+2", "max_inflight_messages 0", true)
}

fn restart_while_draining(name: &str, mosquitto_conf: &str, qos2: bool) -> Result<(), Failed> {
    let k = kafka();
    let mqtt = Mosquitto::start_with(mosquitto_conf);
    let dir = tempfile::tempdir()?;
    let topic = unique("order");
    let topics: &[(&str, u8)] = if qos2 {
        &[("sensors/#", 1), ("alarms/#", 2)]
    } else {
        &[("sensors/#", 1)]
    };
    let cfg = GatewayConfig::new(mqtt.port, &k.bootstrap())
        .topics(topics)
        .topic(&topic);
    let mut gw = Gateway::start(bin(), dir.path(), &cfg.toml());
    gw.wait_ready();
    let admin = gw.admin;
    // The gateway goes away; the publishers go on.
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(30));
    let port = mqtt.port;
    let q1_topics: Vec<String> = (0..4).map(|i| format!("sensors/dev{i}")).collect();
    let q2_topics: Vec<String> = (0..2).map(|i| format!("alarms/dev{i}")).collect();
    let q1_msgs = messages(&unique("ord1"), &q1_topics, 30_000, 64);
    let q2_msgs = messages(
        &unique("ord2"),
        &q2_topics,
        if qos2 { 6_000 } else { 0 },
        64,
    );
    let expected = q1_msgs.len() + q2_msgs.len();
    let progress = Arc::new(AtomicUsize::new(0));
    let q1 = {
        let opts = ResilientOptions {
            rate_per_sec: 3_000,
            inflight: 100,
            progress: Some(progress.clone()),
            ..ResilientOptions::default()
        };
        std::thread::spawn(move || {
            publish_resilient_with(&opts, port, 1, &q1_msgs, Duration::from_secs(180)).published
        })
    };
    let q2 = std::thread::spawn(move || {
        let opts = ResilientOptions {
            rate_per_sec: 600,
            ..ResilientOptions::default()
        };
        publish_qos2(&opts, port, &q2_msgs, Duration::from_secs(180)).published
    });
    // A queue of ~15,000 builds; then the gateway comes back and drains it, and
    // Mosquitto restarts in the middle of that.
    wait_until("a queue to build", Duration::from_secs(60), || {
        progress.load(Ordering::Relaxed) >= 12_000
    });
    gw.restart();
    gw.wait_ready();
    wait_until(
        "the gateway to drain part of it",
        Duration::from_secs(60),
        || admin_u64(admin, "/status", "/counters/mqtt_messages_received") >= Some(5_000),
    );
    mqtt.kill(libc::SIGTERM);
    mqtt.start_again();
    let mut published: Vec<Published> = q1.join().map_err(|_| fail("publisher panicked"))?;
    published.extend(q2.join().map_err(|_| fail("publisher panicked"))?);
    if published.len() != expected {
        return Err(fail(format!(
            "{name}: broker acked {} of {expected}",
            published.len()
        )));
    }
    wait_until("the backlog to drain", Duration::from_secs(120), || {
        admin_u64(admin, "/backlog", "/records") == Some(0)
            && admin_u64(admin, "/status", "/kafka/in_flight") == Some(0)
    });
    let consumed = harness::consume(
        &k.bootstrap(),
        &[topic.as_str()],
        Duration::from_secs(120),
        harness::until_distinct(expected),
    );
    let report = check(&published, &consumed);
    eprintln!("order {name}: {report}");
    report.assert_clean();
    Ok(())
}
