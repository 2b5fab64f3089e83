//! The Kafka side from the Connect worker's file: `bootstrap.servers`, the keys only
//! the worker itself uses (its state topics, REST API, plugins), and the producer
//! settings (`producer.rs`).

use super::plan::{toml_str, Mapper, Setting, Which};

const W: Which = Which::Worker;

/// Keys of the worker itself (exact names).
const WORKER_KEYS: &[&str] = &[
    "group.id",
    "plugin.path",
    "plugin.discovery",
    "listeners",
    "admin.listeners",
    "access.control.allow.origin",
    "access.control.allow.methods",
    "response.http.headers.config",
    "task.shutdown.graceful.timeout.ms",
    "heartbeat.interval.ms",
    "session.timeout.ms",
    "rebalance.timeout.ms",
    "worker.sync.timeout.ms",
    "worker.unsync.backoff.ms",
    "scheduled.rebalance.max.delay.ms",
    "connect.protocol",
    "connector.client.config.override.policy",
    "config.providers",
    "topic.creation.enable",
    "exactly.once.source.support",
    "internal.key.converter",
    "internal.value.converter",
    "client.id",
    "client.dns.lookup",
    "metadata.max.age.ms",
    "connections.max.idle.ms",
    "receive.buffer.bytes",
    "send.buffer.bytes",
    "request.timeout.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "retry.backoff.ms",
    "retry.backoff.max.ms",
    "socket.connection.setup.timeout.ms",
    "socket.connection.setup.timeout.max.ms",
    "metric.reporters",
    "auto.include.jmx.reporter",
    "metrics.num.samples",
    "metrics.sample.window.ms",
    "metrics.recording.level",
];

/// Prefixes of the worker's own keys.
const WORKER_PREFIXES: &[&str] = &[
    "offset.",
    "config.storage.",
    "status.storage.",
    "rest.",
    "consumer.",
    "admin.",
    "config.providers.",
    "internal.key.converter.",
    "internal.value.converter.",
    "listeners.",
    "inter.worker.",
    "metrics.context.",
];

fn is_worker_key(k: &str) -> bool {
    WORKER_KEYS.contains(&k) || WORKER_PREFIXES.iter().any(|p| k.starts_with(p))
}

/// Map `bootstrap.servers` and the worker's own keys (the producer's are mapped by
/// `producer::map`).
pub fn map(m: &mut Mapper) {
    if !m.has_worker() {
        m.note(
            "bootstrap.servers",
            "no --worker file: kafka.bootstrap_servers is left at the gateway's default (127.0.0.1:9092) with no TLS or SASL; import again with the worker's file, or set them by hand",
        );
        m.plan.kafka.insert(
            0,
            Setting::commented(
                "bootstrap_servers",
                toml_str("127.0.0.1:9092"),
                vec!["No worker file given: the gateway's default.".into()],
            ),
        );
        return;
    }
    match m.take(W, "bootstrap.servers") {
        Some(b) => {
            let list: Vec<&str> = b
                .value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if list.is_empty() {
                m.error("bootstrap.servers is empty");
            }
            m.plan.kafka.insert(
                0,
                Setting::new(
                    "bootstrap_servers",
                    toml_str(&list.join(",")),
                    vec![b.source()],
                ),
            );
        }
        None => {
            m.plan.kafka.insert(
                0,
                Setting::new(
                    "bootstrap_servers",
                    toml_str("localhost:9092"),
                    vec!["worker: bootstrap.servers not set (its default: localhost:9092)".into()],
                ),
            );
        }
    }
    for got in m.take_all(W, is_worker_key) {
        m.not_needed(
            &got,
            "the Connect worker's own settings (its state topics or files, REST API, plugins, group membership, its own clients); the gateway keeps its state in its WAL",
        );
    }
}
