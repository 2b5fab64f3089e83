//! Prometheus text exposition format 0.0.4, written by hand.
//!
//! A metrics crate would bring a global registry and its own locking; the gateway
//! already keeps its counters, so rendering a [`Snapshot`] is all that is needed.

use std::fmt::Write as _;

use crate::Snapshot;

/// Renders every metric family with its `# HELP` and `# TYPE` lines.
pub(crate) fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    for (name, help, value) in s.counters.metrics() {
        family(&mut out, name, help, "counter", "", &value.to_string());
    }

    let gauges: &[(&str, &str, String)] = &[
        (
            "mkg_backlog_records",
            "Records in the WAL not yet acknowledged by Kafka.",
            s.backlog.records.to_string(),
        ),
        (
            "mkg_backlog_bytes",
            "Payload bytes in the WAL not yet acknowledged by Kafka.",
            s.backlog.bytes.to_string(),
        ),
        (
            "mkg_backlog_oldest_age_seconds",
            "Age of the oldest unacknowledged record (0 when the backlog is empty).",
            float(s.backlog.oldest_age_seconds.unwrap_or(0.0)),
        ),
        (
            "mkg_dead_letter_records",
            "Dead-lettered records kept.",
            s.dead_letters.records.to_string(),
        ),
        (
            "mkg_dead_letter_bytes",
            "Payload bytes of dead-lettered records kept.",
            s.dead_letters.bytes.to_string(),
        ),
        (
            "mkg_kafka_in_flight",
            "Records sent to Kafka awaiting a delivery report.",
            s.kafka.in_flight.to_string(),
        ),
        (
            "mkg_kafka_topics_held",
            "Kafka topics refused as a whole (unknown, not authorized) whose records are held.",
            s.kafka.held_topics.len().to_string(),
        ),
        (
            "mkg_kafka_records_held",
            "Records held for refused Kafka topics.",
            s.kafka
                .held_topics
                .iter()
                .map(|h| h.held_records)
                .sum::<u64>()
                .to_string(),
        ),
        (
            "mkg_mqtt_connected",
            "1 if the MQTT session is up.",
            flag(s.mqtt.connected),
        ),
        (
            "mkg_mqtt_subscribed",
            "1 if the broker acknowledged every subscription on this connection.",
            flag(s.mqtt.subscribed),
        ),
        (
            "mkg_mqtt_session_present",
            "1 if the broker had the gateway's session at the last connection.",
            flag(s.mqtt.session_present),
        ),
        (
            "mkg_mqtt_qos2_pending",
            "Incoming QoS 2 exchanges stored and not yet released by the broker.",
            s.mqtt.qos2_pending.to_string(),
        ),
        (
            "mkg_mqtt_accepting",
            "1 if MQTT ingest is accepting messages (0 while paused).",
            flag(s.mqtt.accepting),
        ),
        (
            "mkg_wal_writable",
            "1 if the last WAL commit succeeded.",
            flag(s.wal.writable),
        ),
        (
            "mkg_uptime_seconds",
            "Seconds since the gateway started.",
            float(s.uptime_seconds),
        ),
    ];
    for (name, help, value) in gauges {
        family(&mut out, name, help, "gauge", "", value);
    }
    // Only what the broker reported: an absent value is not a zero.
    if let Some(b) = &s.mqtt.broker {
        let broker: [(&str, &str, Option<u64>); 3] = [
            (
                "mkg_mqtt_broker_messages_dropped",
                "The broker's $SYS/broker/publish/messages/dropped (since it started).",
                b.messages_dropped,
            ),
            (
                "mkg_mqtt_broker_store_messages",
                "The broker's $SYS/broker/store/messages/count.",
                b.store_messages,
            ),
            (
                "mkg_mqtt_broker_store_bytes",
                "The broker's $SYS/broker/store/messages/bytes.",
                b.store_bytes,
            ),
        ];
        for (name, help, value) in broker {
            if let Some(v) = value {
                family(&mut out, name, help, "gauge", "", &v.to_string());
            }
        }
    }

    let d = &s.backlog.dropped;
    let _ = write!(
        out,
        "# HELP mkg_wal_records_dropped_total Records dropped by a configured policy (they never reached Kafka), by reason, over the WAL's life.\n\
         # TYPE mkg_wal_records_dropped_total counter\n\
         mkg_wal_records_dropped_total{{reason=\"max_bytes\"}} {}\n\
         mkg_wal_records_dropped_total{{reason=\"max_records\"}} {}\n\
         mkg_wal_records_dropped_total{{reason=\"max_age\"}} {}\n",
        d.max_bytes, d.max_records, d.max_age
    );

    let r = &s.rates;
    let rates: &[(&str, &str, Option<f64>)] = &[
        ("mkg_ingest_rate_1m", "Records committed to the WAL per second, last minute.", r.ingest_1m),
        ("mkg_ingest_rate_5m", "Records committed to the WAL per second, last 5 minutes.", r.ingest_5m),
        ("mkg_drain_rate_1m", "Records Kafka acknowledged per second, last minute.", r.drain_1m),
        ("mkg_drain_rate_5m", "Records Kafka acknowledged per second, last 5 minutes.", r.drain_5m),
        (
            "mkg_backlog_eta_empty_seconds",
            "Seconds until the backlog is empty at the net drain of the last 15 s (absent while it does not shrink).",
            r.eta_empty_seconds,
        ),
        (
            "mkg_wal_disk_headroom_bytes",
            "Free bytes on the WAL's filesystem above wal.min_free_space (ingest pauses at 0).",
            r.disk_headroom_bytes.map(|b| b as f64),
        ),
        (
            "mkg_wal_disk_pause_eta_seconds",
            "Seconds until ingest pauses for disk space at the last minute's backlog growth (absent while it does not grow).",
            r.eta_ingest_pause_seconds,
        ),
    ];
    for (name, help, value) in rates {
        if let Some(v) = value {
            family(&mut out, name, help, "gauge", "", &float(*v));
        }
    }
    family(
        &mut out,
        "mkg_dead_letters_purged_total",
        "Dead letters an operator purged (deleted for good), over the WAL's life.",
        "counter",
        "",
        &s.dead_letters.purged.to_string(),
    );
    family(
        &mut out,
        "mkg_dead_letters_replayed_total",
        "Dead letters an operator replayed (put back in front of the forwarder), over the WAL's life.",
        "counter",
        "",
        &s.dead_letters.replayed.to_string(),
    );
    family(
        &mut out,
        "mkg_dead_letters_dropped_total",
        "Dead letters dropped, the oldest first, to stay under dead_letters.max_bytes, over the WAL's life.",
        "counter",
        "",
        &s.dead_letters.dropped.to_string(),
    );

    histogram(
        &mut out,
        "mkg_wal_commit_duration_seconds",
        "Durable WAL commits by duration (writes and fsync): MQTT acknowledgements wait for them; a slow or failing SD card shows here first.",
        &s.wal_commit_seconds,
    );
    histogram(
        &mut out,
        "mkg_wal_checkpoint_duration_seconds",
        "WAL checkpoints (the journal written into the database file, durably) by duration: the WAL thread commits nothing else meanwhile.",
        &s.wal_checkpoint_seconds,
    );
    histogram(
        &mut out,
        "mkg_record_durable_latency_seconds",
        "Records by time from their receipt to durable in the WAL (their MQTT acknowledgement may go).",
        &s.record_latency.durable,
    );
    histogram(
        &mut out,
        "mkg_record_produce_latency_seconds",
        "Records by time from their receipt to handed to the Kafka producer (millisecond timestamps).",
        &s.record_latency.produced,
    );
    histogram(
        &mut out,
        "mkg_record_delivery_latency_seconds",
        "Records by time from their receipt to acknowledged by Kafka (millisecond timestamps).",
        &s.record_latency.delivered,
    );
    build_info(&mut out, s);
    out
}

/// The backlog per Kafka topic (the largest `admin.topics_limit`, then `other`): one
/// family per figure, a sample per topic.
pub(crate) fn render_topics(out: &mut String, page: &crate::TopicsPage) {
    let label = |t: &str| format!("{{topic=\"{}\"}}", escape_label(t));
    let rows: Vec<(String, &crate::TopicRow)> = page
        .topics
        .iter()
        .map(|r| {
            let name = if r.route_error.is_some() {
                "(no route)"
            } else {
                r.topic.as_str()
            };
            (label(name), r)
        })
        .collect();
    let other = page.other.as_ref().map(|o| (label("(other)"), o));
    for (name, help, value) in [
        (
            "mkg_backlog_topic_records",
            "Records waiting per Kafka topic (as routed now; the largest admin.topics_limit, the rest as topic=\"(other)\").",
            (|r: &crate::TopicRow| r.records) as fn(&crate::TopicRow) -> u64,
        ),
        (
            "mkg_backlog_topic_bytes",
            "Encoded bytes waiting per Kafka topic.",
            |r: &crate::TopicRow| r.bytes,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (l, r) in &rows {
            let _ = writeln!(out, "{name}{l} {}", value(r));
        }
        if let Some((l, o)) = &other {
            let v = if name.ends_with("records") { o.records } else { o.bytes };
            let _ = writeln!(out, "{name}{l} {v}");
        }
    }
    let name = "mkg_backlog_topic_oldest_age_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Age of the oldest record waiting per Kafka topic (absent when not found among the oldest 100,000 records).\n# TYPE {name} gauge"
    );
    for (l, r) in &rows {
        if let Some(age) = r.oldest_age_seconds {
            let _ = writeln!(out, "{name}{l} {}", float(age));
        }
    }
}

fn build_info(out: &mut String, s: &Snapshot) {
    let labels = format!(
        "{{version=\"{}\",gateway_id=\"{}\"}}",
        escape_label(&s.version),
        escape_label(&s.gateway_id)
    );
    family(
        out,
        "mkg_build_info",
        "Gateway version and id; the value is always 1.",
        "gauge",
        &labels,
        "1",
    );
}

fn family(out: &mut String, name: &str, help: &str, kind: &str, labels: &str, value: &str) {
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {value}\n"
    );
}

fn histogram(out: &mut String, name: &str, help: &str, h: &crate::Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (le, n) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {n}", float(*le));
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", float(h.sum));
    let _ = writeln!(out, "{name}_count {}", h.count);
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

/// Rust prints infinities as `inf`, which Prometheus does not parse.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        v.to_string()
    }
}

/// Label values may hold anything the operator configured; an unescaped quote or
/// newline would corrupt the whole scrape, not just this line.
pub(crate) fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
