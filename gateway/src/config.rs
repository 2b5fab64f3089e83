//! The configuration file (TOML): types, defaults, loading and validation.
//!
//! Every key has a default that works for a local Mosquitto on 127.0.0.1:1883 and a
//! local Kafka on 127.0.0.1:9092 with the WAL under `./data`. A bad file is rejected
//! at start with the key's name and the reason ([`ConfigError`], exit code 2).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::route::{self, Router};

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

impl WalConfig {
    /// The caps and the age limit.
    pub fn limits(&self) -> crate::policy::Limits {
        crate::policy::Limits {
            max_bytes: self.max_bytes.map(|b| b.0),
            max_records: self.max_records,
            on_full: self.on_full,
            max_age: self.max_age,
            on_expired: self.on_expired,
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

/// A size in bytes: an integer, or a string such as `"8 MiB"`, `"512KiB"`, `"1MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 1048576, \"512KiB\", \"8MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn default_gateway_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "mqtt-kafka-gateway".into())
}
fn default_log() -> String {
    "info".into()
}
fn default_server_uris() -> Vec<String> {
    vec!["tcp://127.0.0.1:1883".into()]
}
fn default_client_id() -> String {
    "mqtt-kafka-gateway".into()
}
fn default_connection_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(60)
}
fn default_topics() -> Vec<TopicSubscription> {
    vec![TopicSubscription {
        filter: "#".into(),
        qos: 1,
    }]
}
fn default_qos() -> u8 {
    1
}
fn default_max_packet_size() -> ByteSize {
    ByteSize(2 << 20)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(200)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
fn default_session_lost_alert() -> Duration {
    Duration::from_secs(300)
}
fn default_bootstrap() -> String {
    "127.0.0.1:9092".into()
}
fn default_kafka_topic() -> String {
    "mqtt".into()
}
fn default_separator() -> char {
    '.'
}
fn default_wal_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_batch_records() -> usize {
    8192
}
fn default_batch_bytes() -> ByteSize {
    ByteSize(8 << 20)
}
fn default_sync_linger() -> Duration {
    Duration::from_millis(10)
}
fn default_checkpoint_bytes() -> ByteSize {
    ByteSize(8 << 20)
}
fn default_cache_size() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_min_free() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_inflight_records() -> usize {
    20_000
}
fn default_inflight_bytes() -> ByteSize {
    ByteSize(32 << 20)
}
fn default_ack_interval() -> Duration {
    Duration::from_millis(20)
}
fn default_unknown_topic_grace() -> Duration {
    Duration::from_secs(600)
}
fn default_true() -> bool {
    true
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9080))
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // Every field has a serde default: an empty table is the default value.
                toml::from_str("").expect("defaults deserialize")
            }
        }
    )*};
}
default_from_serde!(
    Config,
    MqttConfig,
    KafkaConfig,
    WalConfig,
    ForwardConfig,
    AdminConfig,
    ShutdownConfig
);

/// A broker address parsed from `mqtt.server_uris`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUri {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS on.
    pub tls: bool,
}

impl fmt::Display for ServerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "ssl" } else { "tcp" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// Parse `tcp://host:port`, `mqtt://`, `ssl://`, `mqtts://`, `tls://` (port defaults to
/// 1883, or 8883 with TLS); a bare `host:port` means tcp.
pub fn parse_server_uri(s: &str) -> Result<ServerUri, String> {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("tcp".to_string(), s),
    };
    let tls = match scheme.as_str() {
        "tcp" | "mqtt" => false,
        "ssl" | "mqtts" | "tls" => true,
        other => {
            return Err(format!(
                "unsupported scheme {other:?} in {s:?} (use tcp:// or ssl://)"
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(stripped) = rest.strip_prefix('[') {
        // [ipv6]:port
        let (h, p) = stripped
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {s:?}"))?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("no host in {s:?}"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("invalid port {p:?} in {s:?}"))?,
        None if tls => 8883,
        None => 1883,
    };
    Ok(ServerUri { host, port, tls })
}

/// A loaded, validated configuration plus what was derived from it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file as written (with defaults).
    pub config: Config,
    /// Parsed `mqtt.server_uris`.
    pub servers: Vec<ServerUri>,
    /// The MQTT password, from `password` or `password_file`.
    pub password: Option<Secret>,
    /// The topic router.
    pub router: Router,
    /// The librdkafka properties as strings, ready for the producer.
    pub producer_properties: Vec<(String, String)>,
}

impl Config {
    /// Read, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::from_toml(&text, &file)
    }

    /// Parse and validate TOML text; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Loaded, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError {
            file: file.into(),
            key: "(syntax)".into(),
            reason: e.to_string().trim().to_string(),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let reason = inner.message().to_string();
            let location = inner
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError {
                file: file.into(),
                key: if path == "." {
                    "(top level)".into()
                } else {
                    path
                },
                reason: format!("{reason}{location}"),
            }
        })?;
        config.validate(file)
    }

    fn validate(self, file: &str) -> Result<Loaded, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: file.into(),
            key: key.into(),
            reason,
        };
        if self.gateway_id.trim().is_empty() {
            return Err(err("gateway_id", "must not be empty".into()));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|e| err("log", format!("invalid log filter: {e}")))?;

        // MQTT
        let m = &self.mqtt;
        if m.server_uris.is_empty() {
            return Err(err("mqtt.server_uris", "needs at least one URI".into()));
        }
        let mut servers = Vec::new();
        for (i, uri) in m.server_uris.iter().enumerate() {
            let s = parse_server_uri(uri).map_err(|r| err(&format!("mqtt.server_uris[{i}]"), r))?;
            if s.tls && m.tls.is_none() {
                // Webpki roots are not bundled: a TLS URI needs the CA to trust.
                return Err(err(
                    &format!("mqtt.server_uris[{i}]"),
                    format!("{uri:?} uses TLS but [mqtt.tls] ca_file is not set"),
                ));
            }
            servers.push(s);
        }
        if m.client_id.is_empty() || m.client_id.len() > 65535 {
            return Err(err("mqtt.client_id", "must be 1..65535 bytes".into()));
        }
        if m.keep_alive < Duration::from_secs(1) && !m.keep_alive.is_zero() {
            return Err(err(
                "mqtt.keep_alive",
                "must be 0 (off) or at least 1s".into(),
            ));
        }
        if m.keep_alive.as_secs() > u16::MAX as u64 {
            return Err(err("mqtt.keep_alive", "must be at most 65535s".into()));
        }
        if m.connection_timeout < Duration::from_secs(1) {
            return Err(err("mqtt.connection_timeout", "must be at least 1s".into()));
        }
        if m.reconnect_min_delay.is_zero() || m.reconnect_min_delay > m.reconnect_max_delay {
            return Err(err(
                "mqtt.reconnect_min_delay",
                "must be > 0 and <= mqtt.reconnect_max_delay".into(),
            ));
        }
        if m.topics.is_empty() {
            return Err(err("mqtt.topics", "needs at least one topic filter".into()));
        }
        for (i, t) in m.topics.iter().enumerate() {
            route::validate_filter(&t.filter)
                .map_err(|r| err(&format!("mqtt.topics[{i}].filter"), r))?;
            if t.qos > 2 {
                return Err(err(
                    &format!("mqtt.topics[{i}].qos"),
                    format!("must be 0, 1 or 2, not {}", t.qos),
                ));
            }
        }
        if m.max_packet_size.0 < 1024 || m.max_packet_size.0 > 268_435_455 {
            return Err(err(
                "mqtt.max_packet_size",
                "must be between 1 KiB and 256 MiB (the MQTT limit)".into(),
            ));
        }
        let password = match (&m.password, &m.password_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "mqtt.password_file",
                    "set either mqtt.password or mqtt.password_file, not both".into(),
                ))
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f).map_err(|e| {
                    err(
                        "mqtt.password_file",
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?;
                Some(Secret(text.trim_end_matches(['\r', '\n']).to_string()))
            }
            (None, None) => None,
        };
        if password.is_some() && m.username.is_none() {
            return Err(err(
                "mqtt.username",
                "a password is set but no username".into(),
            ));
        }
        if let Some(tls) = &m.tls {
            check_readable(&tls.ca_file).map_err(|r| err("mqtt.tls.ca_file", r))?;
            match (&tls.client_cert_file, &tls.client_key_file) {
                (Some(c), Some(k)) => {
                    check_readable(c).map_err(|r| err("mqtt.tls.client_cert_file", r))?;
                    check_readable(k).map_err(|r| err("mqtt.tls.client_key_file", r))?;
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err(err(
                        "mqtt.tls.client_key_file",
                        "client_cert_file is set, so client_key_file is needed too".into(),
                    ))
                }
                (None, Some(_)) => {
                    return Err(err(
                        "mqtt.tls.client_cert_file",
                        "client_key_file is set, so client_cert_file is needed too".into(),
                    ))
                }
            }
        }

        // Kafka
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            return Err(err("kafka.bootstrap_servers", "must not be empty".into()));
        }
        let router = Router::new(k).map_err(|(key, reason)| err(&key, reason))?;
        let mut producer_properties = Vec::new();
        for (name, value) in &k.properties {
            let key = format!("kafka.properties.\"{name}\"");
            let v = value.to_string();
            match name.as_str() {
                "bootstrap.servers" | "metadata.broker.list" => {
                    return Err(err(&key, "set kafka.bootstrap_servers instead".into()))
                }
                "acks" | "request.required.acks" if v != "all" && v != "-1" => {
                    return Err(err(
                        &key,
                        "must be \"all\": records are deleted from the WAL only once every in-sync replica has them".into(),
                    ))
                }
                "enable.idempotence" if v != "true" => {
                    return Err(err(
                        &key,
                        "must stay true: it keeps per-key order across retries".into(),
                    ))
                }
                "transactional.id" => {
                    return Err(err(&key, "transactions are not supported".into()))
                }
                "dr_msg_cb" | "dr_cb" | "opaque" | "default_topic_conf" => {
                    return Err(err(&key, "is managed by the gateway".into()))
                }
                _ => {}
            }
            producer_properties.push((name.clone(), v));
        }

        // WAL and forwarder
        if self.wal.dir.as_os_str().is_empty() {
            return Err(err("wal.dir", "must not be empty".into()));
        }
        if self.wal.max_batch_records == 0 {
            return Err(err("wal.max_batch_records", "must be at least 1".into()));
        }
        if self.wal.max_batch_bytes.0 == 0 {
            return Err(err("wal.max_batch_bytes", "must be at least 1".into()));
        }
        if self.wal.commit_linger > Duration::from_secs(1) {
            return Err(err("wal.commit_linger", "must be at most 1s".into()));
        }
        if self.wal.sync_linger > Duration::from_secs(1) {
            return Err(err("wal.sync_linger", "must be at most 1s".into()));
        }
        if self.wal.checkpoint_bytes.0 < 64 << 10 {
            return Err(err(
                "wal.checkpoint_bytes",
                "must be at least 64 KiB".into(),
            ));
        }
        if self.wal.cache_size.0 < 1 << 20 {
            return Err(err("wal.cache_size", "must be at least 1 MiB".into()));
        }
        if let Some(b) = self.wal.max_bytes {
            if b.0 < (1 << 20).max(m.max_packet_size.0) {
                return Err(err(
                    "wal.max_bytes",
                    "must be at least 1 MiB and at least mqtt.max_packet_size".into(),
                ));
            }
        }
        if self.wal.max_records == Some(0) {
            return Err(err("wal.max_records", "must be at least 1".into()));
        }
        if self.wal.max_age.is_some_and(|a| a < Duration::from_secs(1)) {
            return Err(err("wal.max_age", "must be at least 1s".into()));
        }
        if self.forward.max_in_flight_records == 0 || self.forward.max_in_flight_records > 1_000_000
        {
            return Err(err(
                "forward.max_in_flight_records",
                "must be between 1 and 1000000".into(),
            ));
        }
        if self.forward.max_in_flight_bytes.0 < m.max_packet_size.0 {
            return Err(err(
                "forward.max_in_flight_bytes",
                "must be at least mqtt.max_packet_size so the largest record fits".into(),
            ));
        }
        if self.forward.ack_interval.is_zero() {
            return Err(err("forward.ack_interval", "must be > 0".into()));
        }
        if self.shutdown.grace_period > Duration::from_secs(3600) {
            return Err(err("shutdown.grace_period", "must be at most 1h".into()));
        }
        let servers_ok = servers;
        Ok(Loaded {
            config: self,
            servers: servers_ok,
            password,
            router,
            producer_properties,
        })
    }
}

fn check_readable(p: &Path) -> Result<(), String> {
    std::fs::File::open(p)
        .map(|_| ())
        .map_err(|e| format!("cannot read {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, ConfigError> {
        Config::from_toml(text, "test.toml")
    }

    #[test]
    fn empty_file_gives_working_defaults() {
        let l = load("").unwrap();
        assert_eq!(
            l.servers,
            vec![ServerUri {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            }]
        );
        assert!(!l.config.mqtt.clean_session);
        assert_eq!(l.config.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(l.config.wal.dir, PathBuf::from("./data"));
        assert_eq!(l.config.mqtt.topics[0].filter, "#");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load("[mqtt]\nserver_uri = \"tcp://x\"\n").unwrap_err();
        assert!(e.key.contains("mqtt"), "{e}");
        assert!(e.reason.contains("server_uri"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = load("[[mqtt.topics]]\nfilter = \"a/#\"\nqos = \"high\"\n").unwrap_err();
        assert_eq!(e.key, "mqtt.topics[0].qos", "{e}");
        let e = load("[wal]\nmax_batch_records = -3\n").unwrap_err();
        assert_eq!(e.key, "wal.max_batch_records", "{e}");
        let e = load("[mqtt]\nkeep_alive = \"often\"\n").unwrap_err();
        assert_eq!(e.key, "mqtt.keep_alive", "{e}");
    }

    #[test]
    fn bad_qos_and_filter_rejected() {
        assert_eq!(
            load("[[mqtt.topics]]\nfilter = \"a/#\"\nqos = 3\n")
                .unwrap_err()
                .key,
            "mqtt.topics[0].qos"
        );
        assert_eq!(
            load("[[mqtt.topics]]\nfilter = \"a/#/b\"\n")
                .unwrap_err()
                .key,
            "mqtt.topics[0].filter"
        );
    }

    #[test]
    fn illegal_kafka_topics_rejected() {
        let e = load("[kafka]\ntopic = \"has space\"\n").unwrap_err();
        assert_eq!(e.key, "kafka.topic");
        let e = load(
            "[[kafka.routes]]\nmqtt_filter = \"a/#\"\nkafka_topic_template = \"x/{mqtt_topic}\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "kafka.routes[0].kafka_topic_template", "{e}");
        let e = load("[kafka]\ntopic_separator = \"/\"\n").unwrap_err();
        assert_eq!(e.key, "kafka.topic_separator", "{e}");
    }

    #[test]
    fn unreadable_password_file_is_named_without_leaking() {
        let e =
            load("[mqtt]\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n").unwrap_err();
        assert_eq!(e.key, "mqtt.password_file");
    }

    #[test]
    fn password_is_never_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cr3t-from-file\n").unwrap();
        let l = load(&format!(
            "[mqtt]\nusername = \"u\"\npassword_file = \"{}\"\n",
            pw.display()
        ))
        .unwrap();
        assert_eq!(l.password.as_ref().unwrap().expose(), "s3cr3t-from-file");
        assert!(!format!("{l:?}").contains("s3cr3t"));
        let l = load("[mqtt]\nusername = \"u\"\npassword = \"inline-s3cr3t\"\n").unwrap();
        assert!(!format!("{l:?}").contains("inline-s3cr3t"));
    }

    #[test]
    fn unsafe_producer_properties_rejected() {
        let e = load("[kafka.properties]\nacks = \"1\"\n").unwrap_err();
        assert!(e.key.contains("acks"), "{e}");
        let e = load("[kafka.properties]\n\"enable.idempotence\" = false\n").unwrap_err();
        assert!(e.key.contains("enable.idempotence"), "{e}");
        let l = load("[kafka.properties]\n\"linger.ms\" = 5\n\"compression.type\" = \"lz4\"\n")
            .unwrap();
        assert!(l
            .producer_properties
            .contains(&("linger.ms".into(), "5".into())));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("512 KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("8 parsecs").is_err());
        let l = load("[wal]\nmax_batch_bytes = \"4MiB\"\n").unwrap();
        assert_eq!(l.config.wal.max_batch_bytes, ByteSize(4 << 20));
    }

    #[test]
    fn server_uris_parse() {
        assert_eq!(
            parse_server_uri("ssl://broker.local").unwrap(),
            ServerUri {
                host: "broker.local".into(),
                port: 8883,
                tls: true
            }
        );
        assert_eq!(parse_server_uri("10.0.0.1:1884").unwrap().port, 1884);
        assert_eq!(parse_server_uri("tcp://[::1]:1883").unwrap().host, "::1");
        assert!(parse_server_uri("ws://x").is_err());
        assert!(parse_server_uri("tcp://x:notaport").is_err());
        let e = load("[mqtt]\nserver_uris = [\"tcp://a:1883\", \"ssl://b:8883\"]\n").unwrap_err();
        assert_eq!(e.key, "mqtt.server_uris[1]");
    }
}
