//! What the Kafka records look like: evokly's `message_processor_class` (its
//! `DumbProcessor` makes key = MQTT topic with a string schema, value = payload with a
//! bytes schema), the converters that turned those into bytes, and the generic
//! Connect connector keys around them (transforms, error handling, topic creation,
//! exactly-once).

use super::plan::{toml_str, Mapper, Setting, Which};
use crate::forward::headers;

/// evokly's default processor.
pub const DUMB_PROCESSOR: &str = "com.evokly.kafka.connect.mqtt.sample.DumbProcessor";

const STRING_CONVERTER: &str = "org.apache.kafka.connect.storage.StringConverter";
const BYTES_CONVERTER: &str = "org.apache.kafka.connect.converters.ByteArrayConverter";
const JSON_CONVERTER: &str = "org.apache.kafka.connect.json.JsonConverter";

/// Map `message_processor_class`, the converters and the generic connector keys.
pub fn map(m: &mut Mapper) {
    let processor = m.take(Which::Connector, "message_processor_class");
    let source = match &processor {
        Some(p) => p.source(),
        None => {
            format!("connector: message_processor_class not set (its default: {DUMB_PROCESSOR})")
        }
    };
    if let Some(p) = processor
        .as_ref()
        .filter(|p| p.value != DUMB_PROCESSOR && p.value != "DumbProcessor")
    {
        m.error(format!(
            "message_processor_class={}: a processor of your own (Java code that builds the records) cannot be imported. The gateway writes key = MQTT topic, value = payload unchanged, with headers {}. Move what the processor did to the consumers, or delete the key from the file to import the rest",
            p.value,
            header_list()
        ));
    }
    m.plan.kafka.push(Setting::new(
        "key",
        toml_str("mqtt_topic"),
        vec![
            source,
            "DumbProcessor made key = MQTT topic, value = payload; so does the gateway:".into(),
            "key = the MQTT topic (UTF-8), value = the payload unchanged, timestamp = when the"
                .into(),
            "gateway received it, and headers (Connect wrote none):".into(),
            header_list(),
        ],
    ));
    converter(m, "key");
    converter(m, "value");
    for which in [Which::Connector, Which::Worker] {
        for got in m.take_all(which, |k| {
            k == "header.converter" || k.starts_with("header.converter.")
        }) {
            m.not_needed(
                &got,
                "the connector's records had no headers; the gateway writes its own as UTF-8 text",
            );
        }
    }
    transforms(m);
    generic(m);
}

fn header_list() -> String {
    [
        headers::MQTT_TOPIC,
        headers::MQTT_QOS,
        headers::MQTT_RETAIN,
        headers::RECEIVED_AT,
        headers::GATEWAY_ID,
        headers::SEQ,
    ]
    .join(", ")
}

/// How Connect's converter wrote what DumbProcessor made (key: the MQTT topic as a
/// string; value: the payload as bytes), next to what the gateway writes.
fn converter(m: &mut Mapper, part: &str) {
    let key = format!("{part}.converter");
    let prefix = format!("{key}.");
    // A connector's own converter (with its own sub-keys) replaces the worker's.
    let conn = m.take(Which::Connector, &key);
    let worker = m.take(Which::Worker, &key);
    let conn_subs = m.take_all(Which::Connector, |k| k.starts_with(&prefix));
    let worker_subs = m.take_all(Which::Worker, |k| k.starts_with(&prefix));
    let (used, subs, unused_subs) = match (&conn, &worker) {
        (Some(c), _) => (Some(c.clone()), conn_subs, worker_subs),
        (None, w) => (w.clone(), worker_subs, conn_subs),
    };
    if let (Some(_), Some(w)) = (&conn, &worker) {
        m.not_needed(w, format!("the connector's own {key} replaced it"));
    }
    for s in &unused_subs {
        m.not_needed(s, format!("configures a {key} that was not used"));
    }
    let schemas = subs
        .iter()
        .find(|s| s.key.ends_with(".schemas.enable"))
        .map(|s| !s.value.eq_ignore_ascii_case("false"))
        .unwrap_or(true);
    for s in &subs {
        m.not_needed(s, format!("configures {key} (see the notes)"));
    }
    let is_key = part == "key";
    let gateway = if is_key {
        "the gateway writes the MQTT topic as plain UTF-8 bytes"
    } else {
        "the gateway writes the MQTT payload bytes unchanged"
    };
    let Some(c) = used else {
        m.note(
            &key,
            format!("not in the files given (a Connect worker file normally sets it), so Connect's format is unknown here; {gateway}"),
        );
        return;
    };
    let class = c.value.as_str();
    let same = if is_key {
        STRING_CONVERTER
    } else {
        BYTES_CONVERTER
    };
    let connect_wrote = match class {
        _ if class == same || class == short(same) => {
            m.not_needed(&c, format!("{gateway}, as {} did", short(same)));
            return;
        }
        c if c == JSON_CONVERTER || c == "JsonConverter" => {
            let inner = if is_key {
                "a JSON string (\"sensors/a\", quotes included)"
            } else {
                "the payload base64-encoded in a JSON string"
            };
            if schemas {
                format!("{inner} inside a {{\"schema\": ..., \"payload\": ...}} envelope (schemas.enable=true)")
            } else {
                inner.to_string()
            }
        }
        c if !is_key && (c == STRING_CONVERTER || c == "StringConverter") => {
            "Java's text for a byte array (such as [B@1b6d3586), not the payload".to_string()
        }
        c if is_key && (c == BYTES_CONVERTER || c == "ByteArrayConverter") => {
            "nothing: ByteArrayConverter refuses string keys, so Connect failed those records"
                .to_string()
        }
        c if c.starts_with("io.confluent.") => {
            "the Schema Registry's wire format (magic byte, schema id, encoded data)".to_string()
        }
        c => format!(
            "whatever {c} makes of a {}",
            if is_key { "string" } else { "byte array" }
        ),
    };
    let text = format!(
        "{} made Connect write the record {part} as {connect_wrote}; {gateway}: consumers that decode the old format must change",
        c.source()
    );
    m.note(&key, text);
    m.not_needed(&c, "the gateway has no converters (see the notes)");
}

fn short(class: &str) -> &str {
    class.rsplit('.').next().unwrap_or(class)
}

/// `transforms` (and `predicates`, which only transforms use).
fn transforms(m: &mut Mapper) {
    let t = m.take(Which::Connector, "transforms");
    let aliases: Vec<String> = t
        .as_ref()
        .map(|t| {
            t.value
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let subs = m.take_all(Which::Connector, |k| {
        k.starts_with("transforms.") || k == "predicates" || k.starts_with("predicates.")
    });
    if aliases.is_empty() {
        if let Some(t) = &t {
            m.not_needed(t, "empty: no transforms");
        }
        for s in &subs {
            m.not_needed(s, "no transform uses it");
        }
        return;
    }
    let described: Vec<String> = aliases
        .iter()
        .map(|a| {
            let ty = subs
                .iter()
                .find(|s| s.key == format!("transforms.{a}.type"))
                .map(|s| s.value.as_str())
                .unwrap_or("no type set");
            format!("{a} ({ty})")
        })
        .collect();
    m.error(format!(
        "transforms={}: Single Message Transforms change records with Java code, which the gateway does not run: {}. The gateway writes key = MQTT topic, value = payload; kafka.routes send MQTT filters to other Kafka topics. Delete the transforms from the file to import the rest",
        aliases.join(","),
        described.join(", ")
    ));
}

/// Why the gateway does not need a generic connector key of Connect.
fn generic_reason(k: &str) -> Option<&'static str> {
    Some(if k.starts_with("errors.") {
        "Connect's error handling for converters and transforms, which the gateway does not have: it retries Kafka without limit and parks a record Kafka refuses for good in its dead-letter table (the dead-letters command)"
    } else if k == "exactly.once.support" || k.starts_with("transaction.boundary") {
        "exactly-once source delivery: the gateway delivers at least once, and its gateway.id + gateway.seq headers identify the duplicates a crash can make"
    } else if k == "offsets.storage.topic" {
        "the connector's records carried no source offsets; the gateway keeps its position in its WAL"
    } else if k == "config.action.reload" {
        "the gateway reads its file again on SIGHUP (systemctl reload)"
    } else if k.starts_with("consumer.override.")
        || k.starts_with("admin.override.")
        || k == "tasks.max.enforce"
    {
        "settings for Connect's own clients and tasks"
    } else if k.starts_with("topic.creation.") {
        "the gateway creates no topics (see the notes)"
    } else {
        return None;
    })
}

/// The other generic connector keys of Connect.
fn generic(m: &mut Mapper) {
    let got = m.take_all(Which::Connector, |k| generic_reason(k).is_some());
    for g in &got {
        m.not_needed(g, generic_reason(&g.key).unwrap_or_default());
    }
    if got.iter().any(|g| g.key.starts_with("topic.creation.")) {
        m.note(
            "topic.creation",
            "Connect created the topic; the gateway does not: create kafka.topic beforehand or let the brokers auto-create it (auto.create.topics.enable). Records for a missing topic are held and retried for forward.unknown_topic_grace (10 minutes), then parked in the dead-letter table",
        );
    }
}
