//! The configuration file (TOML): types, defaults, loading and validation.
//!
//! Every key has a default that works for a local Mosquitto on 127.0.0.1:1883 and a
//! local Kafka on 127.0.0.1:9092 with the WAL under `./data`. A bad file is rejected
//! at start with the key's name and the reason ([`ConfigError`], exit code 2).
//!
//! The types are here; `defaults` holds every default value, `values` the value
//! syntaxes (sizes, broker URIs), `validate` the checks that need more than one key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

mod defaults;
#[cfg(test)]
mod tests;
mod validate;
mod values;

use defaults::*;
pub use validate::Loaded;
pub use values::{parse_server_uri, ByteSize, ServerUri};

/// A configuration error, naming the key and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The file the error is in.
    pub file: String,
    /// The key, as a dotted path (e.g. `mqtt.topics[0].qos`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identifies this gateway in Kafka record headers (default: the host name).
    #[serde(default = "default_gateway_id")]
    pub gateway_id: String,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    #[serde(default = "default_log")]
    pub log: String,
    /// The MQTT side.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// The Kafka side.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// The write-ahead log.
    #[serde(default)]
    pub wal: WalConfig,
    /// The forwarder from the WAL to Kafka.
    #[serde(default)]
    pub forward: ForwardConfig,
    /// The admin HTTP API.
    #[serde(default)]
    pub dead_letters: DeadLettersConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

/// MQTT connection and subscriptions (the Kafka Connect `mqtt.*` keys).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URIs (`tcp://host:port`, `ssl://host:port`), tried in turn.
    #[serde(default = "default_server_uris")]
    pub server_uris: Vec<String>,
    /// MQTT client id; keep it fixed so the persistent session survives restarts.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Start a clean session (drops what Mosquitto queued while the gateway was away).
    #[serde(default)]
    pub clean_session: bool,
    /// Time allowed for TCP + TLS + CONNECT/CONNACK.
    #[serde(default = "default_connection_timeout", with = "humantime_serde")]
    pub connection_timeout: Duration,
    /// MQTT keep-alive interval.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (prefer `password_file`). Never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password (trailing newline ignored). Never logged.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Topic filters to subscribe to.
    #[serde(default = "default_topics")]
    pub topics: Vec<TopicSubscription>,
    /// TLS to the broker; used for `ssl://`/`mqtts://` URIs.
    #[serde(default)]
    pub tls: Option<MqttTls>,
    /// Largest MQTT packet accepted from the broker.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: ByteSize,
    /// First reconnect delay (doubles with jitter up to `reconnect_max_delay`).
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min_delay: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
    /// Watch the broker's own drop and store counters (Mosquitto's `$SYS` topics) and
    /// warn when it drops messages.
    #[serde(default = "default_true")]
    pub broker_stats: bool,
    /// How long `/readyz` fails after the broker answered a reconnect without the
    /// gateway's persistent session (it is logged and counted either way; 0 = never).
    #[serde(default = "default_session_lost_alert", with = "humantime_serde")]
    pub session_lost_alert: Duration,
}

/// One subscription.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSubscription {
    /// MQTT topic filter (wildcards `+` and `#` allowed).
    pub filter: String,
    /// Requested QoS: 0, 1 or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
}

/// TLS files for the MQTT connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// PEM file with the CA certificate(s) to trust.
    pub ca_file: PathBuf,
    /// PEM client certificate (mutual TLS).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM client private key (mutual TLS).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

/// Kafka connection, topic mapping, key and producer properties.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    #[serde(default = "default_bootstrap")]
    pub bootstrap_servers: String,
    /// Kafka topic for messages no route matches (Kafka Connect's `kafka.topic`).
    #[serde(default = "default_kafka_topic")]
    pub topic: String,
    /// Mappings from MQTT topic filters to Kafka topics; the first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Character that replaces `/` when a template inserts the MQTT topic.
    #[serde(default = "default_separator")]
    pub topic_separator: char,
    /// Record key: `mqtt_topic` (default, keeps each device's order) or `none`.
    #[serde(default)]
    pub key: KeyMode,
    /// librdkafka properties passed through (TLS, SASL, compression, linger...).
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
    /// File holding the SASL password (librdkafka's `sasl.password`; trailing newline
    /// ignored), so that the main file holds no secret. Never logged.
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
}

/// One topic mapping.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// MQTT topic filter this route applies to.
    pub mqtt_filter: String,
    /// A fixed Kafka topic.
    #[serde(default)]
    pub kafka_topic: Option<String>,
    /// A template; `{mqtt_topic}` is replaced by the MQTT topic with `/` turned into
    /// `topic_separator` and any other character Kafka forbids into `_`.
    #[serde(default)]
    pub kafka_topic_template: Option<String>,
}

/// How the Kafka record key is built.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    /// The MQTT topic (same topic -> same partition -> order kept).
    #[default]
    MqttTopic,
    /// No key (records spread over partitions; no order guarantee).
    None,
}

/// A librdkafka property value: TOML strings, integers, floats and booleans.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PropertyValue {
    /// A string.
    String(String),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyValue::String(s) => f.write_str(s),
            PropertyValue::Integer(i) => write!(f, "{i}"),
            PropertyValue::Float(x) => write!(f, "{x}"),
            PropertyValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// WAL location and group commit bounds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    /// Directory of the WAL (created if missing).
    #[serde(default = "default_wal_dir")]
    pub dir: PathBuf,
    /// Most messages in one commit.
    #[serde(default = "default_batch_records")]
    pub max_batch_records: usize,
    /// Most payload bytes in one commit.
    #[serde(default = "default_batch_bytes")]
    pub max_batch_bytes: ByteSize,
    /// Extra wait for more messages before a commit (0 = commit at once; raise on slow
    /// SD cards to trade latency for fewer fsyncs).
    #[serde(default, with = "humantime_serde")]
    pub commit_linger: Duration,
    /// Longest a committed message waits for the fsync that makes it durable (and
    /// releases its MQTT acknowledgement). Records are forwarded to Kafka meanwhile, so
    /// this adds to the PUBACK time, not to the time to Kafka. Fewer fsyncs write fewer
    /// bytes (SD card wear). 0 = one fsync per commit.
    #[serde(default = "default_sync_linger", with = "humantime_serde")]
    pub sync_linger: Duration,
    /// Make commits durable through an append-only journal (`journal.log`) in front of
    /// redb: far fewer bytes written per commit. `false` = a durable redb commit each
    /// time.
    #[serde(default = "default_true")]
    pub journal: bool,
    /// With the journal: write everything to redb durably and empty the journal once it
    /// holds this much (bounds the journal and the replay after a crash).
    #[serde(default = "default_checkpoint_bytes")]
    pub checkpoint_bytes: ByteSize,
    /// redb page cache.
    #[serde(default = "default_cache_size")]
    pub cache_size: ByteSize,
    /// Faster reopen after a crash with a big backlog, at the cost of a second fsync
    /// per commit.
    #[serde(default)]
    pub quick_repair: bool,
    /// Stop acknowledging new MQTT messages while the WAL's filesystem has less free
    /// space than this (unless the WAL file has room inside): the reserve lets the
    /// deletes of acknowledged records still commit, so the gateway recovers by itself.
    #[serde(default = "default_min_free")]
    pub min_free_space: ByteSize,
    /// Most encoded bytes in the backlog (none = only the disk bounds it).
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
    /// Most records in the backlog (none = no limit).
    #[serde(default)]
    pub max_records: Option<u64>,
    /// At `max_bytes` / `max_records`: `block` (stop acknowledging MQTT until Kafka
    /// drains the backlog) or `drop_oldest` (counted and logged).
    #[serde(default)]
    pub on_full: crate::policy::OnFull,
    /// Records older than this (by receive time) are expired (none = kept).
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Expired records: `dead_letter` (kept, not forwarded) or `drop` (counted and
    /// logged).
    #[serde(default)]
    pub on_expired: crate::policy::OnExpired,
}

impl Config {
    /// The caps and the age limit of the WAL, and the dead letters' cap.
    pub fn limits(&self) -> crate::policy::Limits {
        let w = &self.wal;
        crate::policy::Limits {
            max_bytes: w.max_bytes.map(|b| b.0),
            max_records: w.max_records,
            on_full: w.on_full,
            max_age: w.max_age,
            on_expired: w.on_expired,
            dead_letters_max_bytes: self.dead_letters.max_bytes.map(|b| b.0),
        }
    }
}

/// Forwarder bounds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Most records handed to the producer and not yet acknowledged by Kafka.
    #[serde(default = "default_inflight_records")]
    pub max_in_flight_records: usize,
    /// Most bytes handed to the producer and not yet acknowledged by Kafka.
    #[serde(default = "default_inflight_bytes")]
    pub max_in_flight_bytes: ByteSize,
    /// How often the acknowledged prefix is deleted from the WAL.
    #[serde(default = "default_ack_interval", with = "humantime_serde")]
    pub ack_interval: Duration,
    /// How long a Kafka topic that is refused as a whole (unknown topic, not
    /// authorized) is held and retried, other topics flowing, before its records are
    /// parked in the dead-letter table.
    #[serde(default = "default_unknown_topic_grace", with = "humantime_serde")]
    pub unknown_topic_grace: Duration,
}

/// The dead-letter table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersConfig {
    /// Most encoded bytes kept in the dead-letter table: past it the oldest dead
    /// letters are dropped, counted and logged. None: no cap (the disk is the bound).
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

/// Admin HTTP API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin API.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Listen address (loopback by default).
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// File holding the bearer token every route but `/healthz` and `/readyz` asks
    /// for (trailing newline ignored). Needed to listen on a non-loopback address.
    /// Never logged.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Rows of the backlog per topic (`/backlog/topics`, `backlog --topics`) before the
    /// rest is summed in one "other" row (1 to 1000).
    #[serde(default = "default_topics_limit")]
    pub topics_limit: usize,
    /// Serve the admin API over HTTPS (for access over a LAN).
    #[serde(default)]
    pub tls: Option<AdminTls>,
}

/// The admin API's certificate (`[admin.tls]`); read again on SIGHUP, so a renewed
/// certificate is served without a restart.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTls {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Never logged.
    pub key_file: PathBuf,
}

/// Shutdown.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Time allowed on SIGTERM/SIGINT for in-flight Kafka deliveries to finish.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace_period: Duration,
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret value (only to hand to a client library).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}
