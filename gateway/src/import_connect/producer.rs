//! The producer: the worker's `producer.*` keys, the connector's `producer.override.*`
//! (which win), and the worker's own `security.protocol` / `sasl.*` / `ssl.*` as a
//! fallback; Java client names mapped to librdkafka's (`[kafka.properties]`). SASL and
//! TLS stores are in `security.rs`.

use std::collections::BTreeMap;

use super::plan::{toml_str, Got, Mapper, Setting, Which};

/// A producer setting by its Java name, and where it came from.
#[derive(Debug, Clone)]
pub struct Prop {
    /// The Java producer key (prefix removed).
    pub name: String,
    /// The key as written, with its value.
    pub got: Got,
}

/// The effective producer settings by Java name.
pub type Props = BTreeMap<String, Prop>;

/// A librdkafka property with the comment naming its source.
pub fn property(m: &mut Mapper, name: &str, value: &str, comments: Vec<String>) {
    m.plan
        .properties
        .push(Setting::new(&toml_str(name), toml_str(value), comments));
}

fn is_security(k: &str) -> bool {
    k == "security.protocol" || k.starts_with("sasl.") || k.starts_with("ssl.")
}

/// Gather the producer's settings in Connect's order of precedence.
fn collect(m: &mut Mapper) -> Props {
    let mut props = Props::new();
    for got in m.take_all(Which::Worker, is_security) {
        props.insert(
            got.key.clone(),
            Prop {
                name: got.key.clone(),
                got,
            },
        );
    }
    let layers = [
        (Which::Worker, "producer."),
        (Which::Connector, "producer.override."),
    ];
    for (which, prefix) in layers {
        for got in m.take_all(which, |k| k.starts_with(prefix)) {
            let name = got.key[prefix.len()..].to_string();
            let why = format!("replaced by {}", got.source());
            if let Some(old) = props.insert(
                name.clone(),
                Prop {
                    name,
                    got: got.clone(),
                },
            ) {
                m.not_needed(&old.got, why);
            }
        }
    }
    props
}

/// Map the producer settings.
pub fn map(m: &mut Mapper) {
    let mut props = collect(m);
    let fallback: Vec<String> = props
        .values()
        .filter(|p| p.got.key == p.name)
        .map(|p| p.got.key.clone())
        .collect();
    if !fallback.is_empty() {
        m.note(
            "producer.*",
            format!(
                "taken from the worker's own settings ({}): Connect's producers read only producer.* keys, so check that these are what the connector's producer used",
                fallback.join(", ")
            ),
        );
    }
    if let Some(b) = props.remove("bootstrap.servers") {
        let list: Vec<&str> = b.got.value.split(',').map(str::trim).collect();
        m.plan.kafka.retain(|s| s.key != "bootstrap_servers");
        m.plan.kafka.insert(
            0,
            Setting::new(
                "bootstrap_servers",
                toml_str(&list.join(",")),
                vec![b.got.source()],
            ),
        );
    }
    let protocol = props.remove("security.protocol");
    let proto = protocol
        .as_ref()
        .map(|p| p.got.value.to_ascii_uppercase())
        .unwrap_or_else(|| "PLAINTEXT".into());
    if let Some(p) = &protocol {
        if matches!(
            proto.as_str(),
            "PLAINTEXT" | "SSL" | "SASL_PLAINTEXT" | "SASL_SSL"
        ) {
            property(m, "security.protocol", &proto, vec![p.got.source()]);
        } else {
            m.error(format!(
                "{}: not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
                p.got.source()
            ));
        }
    }
    let sasl = proto.starts_with("SASL_");
    let ssl = proto.ends_with("SSL");
    if sasl {
        super::security::sasl(m, &mut props);
    }
    if ssl {
        super::security::tls(m, &mut props);
    }
    enforced(m, &mut props);
    partitioner(m, &mut props);
    let codec = props
        .get("compression.type")
        .map(|p| p.got.value.to_ascii_lowercase())
        .unwrap_or_else(|| "none".into());
    for (name, p) in props {
        let got = &p.got;
        if name.starts_with("sasl.") && !sasl || name.starts_with("ssl.") && !ssl {
            m.not_needed(got, format!("unused with security.protocol={proto}"));
            continue;
        }
        if let Some(level) = name
            .strip_prefix("compression.")
            .and_then(|n| n.strip_suffix(".level"))
        {
            if level == codec {
                property(m, "compression.level", &got.value, vec![got.source()]);
            } else {
                m.not_needed(got, format!("a level for {level}, not for {codec}"));
            }
            continue;
        }
        match name.as_str() {
            "max.in.flight.requests.per.connection" => {
                if got.value.parse::<u32>().is_ok_and(|n| n > 5) {
                    m.note(
                        &got.key,
                        "more than 5 requests in flight is not allowed with the idempotent producer the gateway uses: librdkafka's default (5) applies",
                    );
                    m.not_needed(got, "more than 5 (see the notes)");
                } else {
                    property(m, &name, &got.value, vec![got.source()]);
                }
            }
            "send.buffer.bytes" | "receive.buffer.bytes" => {
                // Java's -1 (the OS default) is librdkafka's 0.
                let v = if got.value == "-1" { "0" } else { &got.value };
                let to = format!("socket.{name}");
                property(m, &to, v, vec![got.source()]);
            }
            "interceptor.classes" | "ssl.cipher.suites" | "ssl.engine.factory.class" => {
                if !got.value.is_empty() {
                    let text = match name.as_str() {
                        "ssl.cipher.suites" => "Java cipher suite names; librdkafka takes OpenSSL's names in ssl.cipher.suites: set that by hand to restrict the suites",
                        _ => "Java classes that ran in Connect's producer; the gateway runs no Java code",
                    };
                    m.note(&got.key, text);
                }
                m.not_needed(got, "not imported (see the notes)");
            }
            _ => match rule(&name) {
                Some(Rule::Same) => property(m, &name, &got.value, vec![got.source()]),
                Some(Rule::To(to)) => property(m, to, &got.value, vec![got.source()]),
                Some(Rule::Skip(why)) => m.not_needed(got, why),
                None => m.unknown(got),
            },
        }
    }
}

/// `acks` and `enable.idempotence`: the gateway enforces them.
fn enforced(m: &mut Mapper, props: &mut Props) {
    if let Some(a) = props.remove("acks") {
        if a.got.value != "all" && a.got.value != "-1" {
            m.note(
                &a.got.key,
                format!(
                    "the connector's producer used acks={}; the gateway always uses acks=all: a record leaves its WAL only once every in-sync replica has it",
                    a.got.value
                ),
            );
        }
        m.not_needed(&a.got, "the gateway always uses acks=all");
    }
    if let Some(i) = props.remove("enable.idempotence") {
        if !i.got.value.eq_ignore_ascii_case("true") {
            m.note(
                &i.got.key,
                "the gateway's producer is always idempotent: retries keep each key's order and add no duplicates",
            );
        }
        m.not_needed(&i.got, "always true in the gateway");
    }
}

/// Java's default partitioner hashes keys with murmur2; librdkafka's default uses
/// CRC32. The gateway keeps Java's, so each MQTT topic stays on the partition Connect
/// wrote it to.
fn partitioner(m: &mut Mapper, props: &mut Props) {
    let mut comments = Vec::new();
    if let Some(p) = props.remove("partitioner.class") {
        comments.push(p.got.source());
        let default = p.got.value.ends_with(".DefaultPartitioner")
            || p.got.value.ends_with(".BuiltInPartitioner");
        if !default {
            m.note(
                &p.got.key,
                "a Java partitioner cannot be imported; the gateway uses murmur2_random, which places each key as Java's default partitioner does",
            );
        }
    }
    comments.extend([
        "Java's default partitioner: murmur2 of the key (the MQTT topic). librdkafka's own".into(),
        "default (CRC32) would move each MQTT topic to another partition than Connect used,".into(),
        "splitting its order at the switch.".into(),
    ]);
    property(m, "partitioner", "murmur2_random", comments);
}

enum Rule {
    /// The same name in librdkafka.
    Same,
    /// Another name in librdkafka.
    To(&'static str),
    /// Not needed, and why.
    Skip(&'static str),
}

/// Java producer keys that map plainly or are not needed.
fn rule(name: &str) -> Option<Rule> {
    Some(match name {
        "compression.type"
        | "linger.ms"
        | "batch.size"
        | "retry.backoff.ms"
        | "retry.backoff.max.ms"
        | "request.timeout.ms"
        | "metadata.max.age.ms"
        | "connections.max.idle.ms"
        | "reconnect.backoff.ms"
        | "reconnect.backoff.max.ms"
        | "socket.connection.setup.timeout.ms" => Rule::Same,
        "max.request.size" => Rule::To("message.max.bytes"),
        "buffer.memory" => Rule::Skip(
            "the gateway bounds what its producer holds with forward.max_in_flight_bytes (8MiB); the backlog waits in the WAL on disk",
        ),
        "retries" | "delivery.timeout.ms" | "max.block.ms" => Rule::Skip(
            "the gateway never gives up on a record: it retries without limit while the record waits in its WAL",
        ),
        "client.id" => Rule::Skip("the gateway's Kafka client.id is its gateway_id"),
        "key.serializer" | "value.serializer" => {
            Rule::Skip("Connect's byte serializers; the gateway sends bytes")
        }
        "metric.reporters"
        | "metrics.num.samples"
        | "metrics.sample.window.ms"
        | "metrics.recording.level"
        | "auto.include.jmx.reporter"
        | "enable.metrics.push" => Rule::Skip("Java metrics; the gateway serves its own at /metrics"),
        "client.dns.lookup"
        | "metadata.max.idle.ms"
        | "socket.connection.setup.timeout.max.ms"
        | "metadata.recovery.strategy"
        | "metadata.recovery.rebootstrap.trigger.ms"
        | "security.providers" => Rule::Skip("a Java client detail librdkafka does not need"),
        "partitioner.adaptive.partitioning.enable"
        | "partitioner.availability.timeout.ms"
        | "partitioner.ignore.keys" => {
            Rule::Skip("Java partitioner tuning; the gateway uses murmur2_random (see partitioner)")
        }
        "transactional.id" | "transaction.timeout.ms" => Rule::Skip(
            "the gateway uses no transactions: at least once, with duplicates identified by the gateway.id and gateway.seq headers",
        ),
        "ssl.protocol"
        | "ssl.enabled.protocols"
        | "ssl.provider"
        | "ssl.keymanager.algorithm"
        | "ssl.trustmanager.algorithm"
        | "ssl.secure.random.implementation" => {
            Rule::Skip("JVM TLS details; OpenSSL negotiates TLS 1.2 or 1.3")
        }
        n if n.starts_with("sasl.kerberos.")
            || n.starts_with("sasl.login.")
            || n.starts_with("sasl.oauthbearer.")
            || n == "sasl.client.callback.handler.class" =>
        {
            Rule::Skip("only for GSSAPI or OAUTHBEARER logins")
        }
        _ => return None,
    })
}
