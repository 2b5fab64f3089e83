//! The default of every key: together they make a gateway for a local Mosquitto on
//! 127.0.0.1:1883 and a local Kafka on 127.0.0.1:9092 with the WAL under `./data`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

pub(super) fn default_gateway_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "mqtt-kafka-gateway".into())
}
pub(super) fn default_log() -> String {
    "info".into()
}
pub(super) fn default_server_uris() -> Vec<String> {
    vec!["tcp://127.0.0.1:1883".into()]
}
pub(super) fn default_client_id() -> String {
    "mqtt-kafka-gateway".into()
}
pub(super) fn default_connection_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_keep_alive() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_topics() -> Vec<TopicSubscription> {
    vec![TopicSubscription {
        filter: "#".into(),
        qos: 1,
    }]
}
pub(super) fn default_qos() -> u8 {
    1
}
pub(super) fn default_max_packet_size() -> ByteSize {
    ByteSize(2 << 20)
}
pub(super) fn default_reconnect_min() -> Duration {
    Duration::from_millis(200)
}
pub(super) fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_session_lost_alert() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_bootstrap() -> String {
    "127.0.0.1:9092".into()
}
pub(super) fn default_kafka_topic() -> String {
    "mqtt".into()
}
pub(super) fn default_separator() -> char {
    '.'
}
pub(super) fn default_wal_dir() -> PathBuf {
    PathBuf::from("./data")
}
pub(super) fn default_batch_records() -> usize {
    8192
}
pub(super) fn default_batch_bytes() -> ByteSize {
    ByteSize(8 << 20)
}
pub(super) fn default_sync_linger() -> Duration {
    Duration::from_millis(10)
}
pub(super) fn default_checkpoint_bytes() -> ByteSize {
    ByteSize(8 << 20)
}
pub(super) fn default_cache_size() -> ByteSize {
    ByteSize(4 << 20)
}
pub(super) fn default_min_free() -> ByteSize {
    ByteSize(64 << 20)
}
pub(super) fn default_inflight_records() -> usize {
    20_000
}
pub(super) fn default_inflight_bytes() -> ByteSize {
    ByteSize(8 << 20)
}
pub(super) fn default_ack_interval() -> Duration {
    Duration::from_millis(20)
}
pub(super) fn default_unknown_topic_grace() -> Duration {
    Duration::from_secs(600)
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9080))
}
pub(super) fn default_topics_limit() -> usize {
    admin::DEFAULT_TOPICS_LIMIT
}
pub(super) fn default_grace() -> Duration {
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
