//! The Kafka side of the forwarder: the producer's configuration, the context that
//! routes its delivery reports and errors into the forwarder thread, and how a failed
//! delivery is classified.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc as stdmpsc;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::config::Loaded;
use crate::state::Shared;

/// Header names on every Kafka record.
pub mod headers {
    /// The MQTT topic.
    pub const MQTT_TOPIC: &str = "mqtt.topic";
    /// The MQTT QoS, "0", "1" or "2".
    pub const MQTT_QOS: &str = "mqtt.qos";
    /// The MQTT retain flag, "true" or "false".
    pub const MQTT_RETAIN: &str = "mqtt.retain";
    /// Receive time at the gateway, Unix milliseconds, decimal.
    pub const RECEIVED_AT: &str = "gateway.received_at_ms";
    /// The gateway id from the config.
    pub const GATEWAY_ID: &str = "gateway.id";
    /// The WAL sequence, decimal: with the gateway id, identifies a message, so
    /// consumers can drop the duplicates at-least-once delivery may produce.
    pub const SEQ: &str = "gateway.seq";
}

/// Events into the forwarder thread.
#[derive(Debug)]
pub enum Event {
    /// A delivery report.
    Delivery {
        /// Producer generation it belongs to.
        generation: u64,
        /// Low bits of the sequence (the opaque).
        seq_low: usize,
        /// `None` on success.
        error: Option<KafkaError>,
        /// The record's topic, on failure (a refusal may hold the whole topic), and on
        /// success while topics are held.
        topic: Option<String>,
    },
    /// New records were committed.
    Wake,
}

/// Forwarder bounds.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    /// Most records in flight.
    pub max_in_flight_records: usize,
    /// Most bytes in flight.
    pub max_in_flight_bytes: usize,
    /// How often to delete the acknowledged prefix.
    pub ack_interval: Duration,
    /// How long a topic Kafka refuses (unknown, not authorized) is held and retried
    /// before its records are parked.
    pub unknown_topic_grace: Duration,
}

/// rdkafka context: routes reports and errors into the forwarder.
pub(super) struct Ctx {
    generation: u64,
    tx: stdmpsc::Sender<Event>,
    fatal: Arc<AtomicBool>,
    /// Name the topic in successful reports too (while topics are held).
    want_topics: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        match level {
            Emerg | Alert | Critical | Error => {
                tracing::error!(target: "librdkafka", "{fac}: {msg}")
            }
            Warning => tracing::warn!(target: "librdkafka", "{fac}: {msg}"),
            Notice | Info => tracing::info!(target: "librdkafka", "{fac}: {msg}"),
            Debug => tracing::debug!(target: "librdkafka", "{fac}: {msg}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Relaxed);
            tracing::error!(%reason, "fatal Kafka producer error; the producer will be rebuilt");
        } else {
            tracing::warn!(%error, %reason, "Kafka client error (retrying)");
        }
        self.shared.kafka_error(format!("{error}: {reason}"));
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq_low: usize) {
        let (error, topic) = match result {
            Ok(m) if self.want_topics.load(Relaxed) => (None, Some(m.topic().to_string())),
            Ok(_) => (None, None),
            Err((e, m)) => (Some(e.clone()), Some(m.topic().to_string())),
        };
        let _ = self.tx.send(Event::Delivery {
            generation: self.generation,
            seq_low,
            error,
            topic,
        });
    }
}

/// What to do after a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The record can never be delivered as is: park it (after the refusal ladder,
    /// `refuse`).
    Permanent,
    /// Kafka refuses the record's whole topic, for a reason an operator can fix (the
    /// topic does not exist yet, the gateway may not write it): hold the topic's records
    /// and retry, parking them only after `forward.unknown_topic_grace` (`hold`).
    Topic,
    /// Rebuild the producer and replay from the watermark.
    Retry,
}

/// Classify a Kafka error for one record.
pub fn classify(e: &KafkaError) -> Failure {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::TopicAuthorizationFailed
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition,
        ) => Failure::Topic,
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidTopic
            | C::InvalidRecord
            | C::PolicyViolation
            | C::InvalidMessage
            | C::InvalidTimestamp
            | C::InvalidArgument,
        ) => Failure::Permanent,
        _ => Failure::Retry,
    }
}

/// Why Kafka refuses a whole topic, in an operator's words first (the reason held
/// topics and their dead letters show), then Kafka's own.
pub fn topic_refusal(e: &KafkaError) -> String {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::TopicAuthorizationFailed) => format!(
            "not authorized: the gateway's principal may not write this topic (grant it WRITE and DESCRIBE) ({e})"
        ),
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => format!(
            "unknown topic: it does not exist and the broker does not create it ({e})"
        ),
        _ => e.to_string(),
    }
}

/// No delivery report for this long past librdkafka's own longest silence with records
/// in flight: rebuild the producer (see [`stall_timeout`]).
const STALL_MARGIN: Duration = Duration::from_secs(30);

/// How long a producer may hold records without any delivery report before it is
/// taken as stuck and rebuilt: [`STALL_MARGIN`] past `topic.metadata.propagation.max.ms`
/// (30 s by default). Records for a topic that does not exist wait silently that long
/// before they fail and are parked; a stall timeout no longer than that could rebuild
/// the producer first, restarting their wait, so they would never be parked.
pub(super) fn stall_timeout(loaded: &Loaded) -> Duration {
    let propagation_ms = loaded
        .producer_properties
        .iter()
        .rev()
        .find(|(k, _)| k == "topic.metadata.propagation.max.ms")
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .unwrap_or(30_000);
    Duration::from_millis(propagation_ms) + STALL_MARGIN
}

/// The first producer backoff; doubled on each rebuild up to 10 s, reset by a delivery.
pub(super) const FIRST_REBUILD_DELAY: Duration = Duration::from_millis(100);

/// Build the producer for one generation.
pub(super) fn producer(
    loaded: &Loaded,
    generation: u64,
    tx: stdmpsc::Sender<Event>,
    fatal: Arc<AtomicBool>,
    want_topics: Arc<AtomicBool>,
    shared: Arc<Shared>,
    opts: &ForwardOptions,
) -> Result<ThreadedProducer<Ctx>, KafkaError> {
    producer_config(loaded, opts).create_with_context(Ctx {
        generation,
        tx,
        fatal,
        want_topics,
        shared,
    })
}

/// The producer configuration: safe defaults, then the user's pass-through properties
/// (config validation already refused the ones that would weaken the guarantees).
pub fn producer_config(loaded: &Loaded, opts: &ForwardOptions) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &loaded.config.kafka.bootstrap_servers)
        .set("client.id", &loaded.config.gateway_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Infinite: records wait in librdkafka through an outage of any length instead
        // of failing; the in-flight window keeps memory bounded.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set(
            "queue.buffering.max.messages",
            (opts.max_in_flight_records + 1000).to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            (opts.max_in_flight_bytes / 1024 + 4096).to_string(),
        )
        .set("retry.backoff.ms", "100")
        .set("retry.backoff.max.ms", "5000")
        .set("reconnect.backoff.max.ms", "10000")
        .set("socket.keepalive.enable", "true");
    for (k, v) in &loaded.producer_properties {
        cc.set(k, v);
    }
    if let Some(pw) = &loaded.kafka_sasl_password {
        cc.set("sasl.password", pw.expose());
    }
    cc
}

/// Check that librdkafka accepts the producer configuration (unknown or invalid
/// properties) without connecting anywhere.
pub fn validate_producer_config(loaded: &Loaded, opts: &ForwardOptions) -> Result<(), String> {
    let cc = producer_config(loaded, opts);
    match cc.create::<rdkafka::producer::BaseProducer>() {
        Ok(_) => Ok(()),
        Err(KafkaError::ClientConfig(_, desc, key, _value)) => {
            // The value may be a secret (sasl.password): never echo it.
            Err(format!("kafka.properties.\"{key}\": {desc}"))
        }
        Err(e) => Err(format!("kafka.properties: {e}")),
    }
}

/// Reconstruct a full sequence from the opaque's low bits, knowing it lies within the
/// in-flight window starting at `base` (exact on 64-bit; window < 2^31 on 32-bit).
pub(super) fn widen(low: usize, base: u64) -> u64 {
    if usize::BITS >= 64 {
        low as u64
    } else {
        base.wrapping_add(low.wrapping_sub(base as usize) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widen_is_exact_on_this_platform_and_wraps_on_32_bit() {
        assert_eq!(widen(5, 3), 5);
        // The 32-bit arithmetic, checked explicitly.
        let base: u64 = (1 << 32) + 10;
        let low = ((base + 7) & 0xffff_ffff) as u32;
        let widened = base.wrapping_add(low.wrapping_sub(base as u32) as u64);
        assert_eq!(widened, base + 7);
    }

    #[test]
    fn stall_timeout_outlasts_the_unknown_topic_wait() {
        let load = |t: &str| crate::config::Config::from_toml(t, "test.toml").unwrap();
        assert_eq!(stall_timeout(&load("")), Duration::from_secs(60));
        let custom = load("[kafka.properties]\n\"topic.metadata.propagation.max.ms\" = \"5000\"\n");
        assert_eq!(stall_timeout(&custom), Duration::from_secs(35));
    }

    #[test]
    fn classification() {
        let perm = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(classify(&perm), Failure::Permanent);
        let auth = KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert_eq!(classify(&auth), Failure::Topic);
        let unknown = KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert_eq!(classify(&unknown), Failure::Topic);
        let transient = KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas);
        assert_eq!(classify(&transient), Failure::Retry);
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(classify(&timeout), Failure::Retry);
    }
}
