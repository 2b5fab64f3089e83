//! The broker refuses a record's timestamp: records are stamped with their MQTT receive
//! time, and a topic with `message.timestamp.before.max.ms` (or a gateway clock that
//! was wrong when they arrived) makes Kafka refuse them with INVALID_TIMESTAMP. They
//! must not stall the backlog forever: the gateway re-sends them stamped with the time
//! of sending and keeps the receive time in the `gateway.received_at_ms` header.

use std::time::{Duration, Instant};

use harness::config::GatewayConfig;
use harness::{
    check, consume, distinct_ids, free_port, publish, unique, wait_until, Gateway, Mosquitto,
};
use libtest_mimic::Failed;

use crate::{bin, fail, kafka, messages};

/// Refuse records more than this much older than the broker's clock.
const BEFORE_MAX_MS: u64 = 2000;

pub fn refused_timestamps_are_restamped_not_stalled() -> Result<(), Failed> {
    let k = kafka();
    let topic = unique("stamp");
    create_topic_refusing_old(&k.bootstrap(), &topic)?;
    let m = Mosquitto::start();
    let dir = tempfile::tempdir()?;
    // The same gateway (client id, WAL) first without Kafka, then with it.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let cut_off = GatewayConfig::new(m.port, &nowhere).topic(&topic);
    let connected = cut_off.clone().kafka("bootstrap_servers", k.bootstrap());

    // 1. Kafka unreachable: everything waits in the WAL.
    let mut gw = Gateway::start(bin(), dir.path(), &cut_off.toml());
    // Not ready without Kafka, but subscribed: on this first connection the broker
    // keeps nothing for the gateway before its SUBACK.
    gw.wait_subscribed();
    let msgs = messages("ts", &["t/a".into(), "t/b".into()], 1000, 100);
    let published = publish(m.port, 2, &msgs, Duration::from_secs(60));
    let last_publish = Instant::now();
    if published.len() != msgs.len() {
        return Err(fail(format!(
            "broker acked {} of {}",
            published.len(),
            msgs.len()
        )));
    }
    // All acknowledged too (the fsync follows the commit within wal.sync_linger): a
    // message not acknowledged before the kill would come again from Mosquitto, as a
    // fresh record that Kafka accepts ahead of the refused originals.
    wait_until(
        "1000 records in the WAL, all acknowledged",
        Duration::from_secs(30),
        || {
            gw.json("/backlog")["records"] == 1000
                && gw.json("/status")["counters"]["mqtt_messages_acked"] == 1000
        },
    );
    gw.sigkill();

    // 2. Once every receive time is older than the topic allows, point the same WAL at
    //    the real broker.
    wait_until(
        "the receive times to be older than the topic allows",
        Duration::from_secs(30),
        || last_publish.elapsed() > Duration::from_millis(BEFORE_MAX_MS + 1000),
    );
    let mut gw = Gateway::start(bin(), dir.path(), &connected.toml());
    gw.wait_serving();
    wait_until("the backlog to drain", Duration::from_secs(90), || {
        gw.json("/backlog")["records"] == 0
    });
    let consumed = consume(
        &k.bootstrap(),
        &[topic.as_str()],
        Duration::from_secs(60),
        |r| distinct_ids(r) >= published.len(),
    );
    let report = check(&published, &consumed);
    eprintln!("{report}");
    if !report.lost.is_empty() {
        eprintln!("/backlog {}\n{}", gw.json("/backlog"), gw.log());
    }
    report.assert_clean();

    // Every record was refused once and re-sent stamped with the time of sending; the
    // receive time travels in its header.
    for r in &consumed {
        let received: i64 = r
            .headers
            .get("gateway.received_at_ms")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| fail(format!("no gateway.received_at_ms header: {r:?}")))?;
        let ts = r
            .timestamp
            .ok_or_else(|| fail("record without timestamp"))?;
        if ts < received + BEFORE_MAX_MS as i64 {
            return Err(fail(format!(
                "record at offset {} kept its receive time {received} as timestamp {ts}",
                r.offset
            )));
        }
    }
    if !gw
        .log()
        .contains("sending it stamped with the time of sending")
    {
        return Err(fail(format!("not logged:\n{}", gw.log())));
    }
    if gw.json("/status")["counters"]["kafka_delivery_errors"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        return Err(fail("refusals not counted in kafka_delivery_errors"));
    }
    Ok(())
}

fn create_topic_refusing_old(bootstrap: &str, topic: &str) -> Result<(), Failed> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let before = BEFORE_MAX_MS.to_string();
    let new = NewTopic::new(topic, 2, TopicReplication::Fixed(1))
        .set("message.timestamp.before.max.ms", &before);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for r in rt.block_on(admin.create_topics([&new], &opts))? {
        r.map_err(|(t, e)| fail(format!("create topic {t}: {e}")))?;
    }
    Ok(())
}
