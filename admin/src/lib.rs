//! Admin HTTP API of the gateway: health, readiness, backlog (with rates and
//! forecasts), history, records, dead letters, status and metrics, and the operator
//! console (`GET /`, a page that reads them).
//!
//! This crate owns HTTP and nothing else. The gateway hands it a [`Source`] that
//! produces a [`Snapshot`] of its state; the admin server never reaches into the WAL
//! or the MQTT/Kafka clients itself, so a slow or wedged admin client can never hold
//! a lock on the data path.
//!
//! Invariants:
//! - Request bodies are never read (the two `POST` routes take their selection from
//!   the query string), and a request announcing more than [`MAX_BODY_BYTES`] is
//!   refused with 413 before anything else happens.
//! - The routes that change something (`POST /dead-letters/replay`, `/purge`) need the
//!   token, and are refused (403) when none is configured.
//! - Every route but `/healthz`, `/readyz` and the console page `/` asks for the
//!   bearer token once one is configured ([`Access`]); the token is compared in
//!   constant time and never logged. The page holds no data: its script asks for the
//!   token and sends it with each request.
//! - `/healthz` does not call [`Source::snapshot`]: liveness must not depend on the
//!   gateway's internals, only on this server answering.
//! - [`handle`] never panics on client input; hyper has already rejected malformed
//!   HTTP before it gets here.

mod access;
mod counters;
mod metrics;
mod page;
mod records;
mod routes;
mod server;
mod topics;

use serde::Serialize;

pub use access::{Access, Denied};
pub use counters::{AtomicCounters, Counters};
pub use records::{
    preview, ActionOutcome, DeadLetterAction, DeadLetterView, DeadLettersPage, RecordView,
    RecordsPage, RecordsQuery, Selection,
};

/// A boxed future, as [`Source`]'s asynchronous methods return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
pub use routes::{handle, MAX_BODY_BYTES};
pub use server::{serve, serve_tls, Tls};
pub use topics::{
    GroupBy, OldestScan, OtherTopics, TopicRow, TopicsPage, TopicsQuery, DEFAULT_TOPICS_LIMIT,
    MAX_TOPICS_LIMIT,
};

/// What the gateway exposes to the admin server; implemented by the gateway.
pub trait Source: Send + Sync + 'static {
    /// Point-in-time copy of the gateway's state; called once per request, so keep it cheap and non-blocking.
    fn snapshot(&self) -> Snapshot;

    /// Who may use the API (`admin.token_file`). By default no token: the read-only
    /// routes are open and routes that change anything are refused.
    fn access(&self) -> &Access {
        &access::NO_TOKEN
    }

    /// The history of the backlog and the rates (`GET /history`).
    fn history(&self) -> History {
        History::default()
    }

    /// A page of the backlog (`GET /records`); `Err` says why it cannot be read now.
    /// Reading must not hold up the WAL's writer.
    fn records(&self, query: &RecordsQuery) -> Result<RecordsPage, String> {
        let _ = query;
        Err("this gateway does not show records".into())
    }

    /// The backlog per Kafka or MQTT topic (`GET /backlog/topics`); `Err` says why it
    /// cannot be read now. Reading must not hold up the WAL's writer.
    fn backlog_topics(&self, query: &TopicsQuery) -> Result<TopicsPage, String> {
        let _ = query;
        Err("this gateway does not count the backlog per topic".into())
    }

    /// A page of the dead-letter table (`GET /dead-letters`), same query as
    /// [`Source::records`].
    fn dead_letters(&self, query: &RecordsQuery) -> Result<DeadLettersPage, String> {
        let _ = query;
        Err("this gateway does not show dead letters".into())
    }

    /// Replay or purge the dead letters `selection` picks (`POST /dead-letters/replay`,
    /// `/dead-letters/purge`); answers once the change is durable.
    fn dead_letter_action(
        &self,
        action: DeadLetterAction,
        selection: Selection,
    ) -> BoxFuture<'_, Result<ActionOutcome, String>> {
        let _ = (action, selection);
        Box::pin(async { Err("this gateway does not change dead letters".to_string()) })
    }
}

/// Everything the admin API reports, copied out of the gateway in one go so a response is self-consistent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Identifies this gateway among many at the edge.
    pub gateway_id: String,
    /// Version of the gateway binary.
    pub version: String,
    /// Seconds since the process started.
    pub uptime_seconds: f64,
    /// MQTT ingest side.
    pub mqtt: MqttStatus,
    /// Write-ahead log.
    pub wal: WalStatus,
    /// Kafka forwarding side.
    pub kafka: KafkaStatus,
    /// Records committed to the WAL but not yet acknowledged by Kafka.
    pub backlog: Backlog,
    /// Records Kafka refused permanently and that were set aside.
    pub dead_letters: DeadLetters,
    /// Ingest and drain rates, and what they forecast.
    pub rates: Rates,
    /// Monotonic counters since process start.
    pub counters: Counters,
    /// How long each durable WAL commit took (write and fsync): `/metrics` only.
    #[serde(skip)]
    pub wal_commit_seconds: Histogram,
    /// How long each WAL checkpoint took: `/metrics` only.
    #[serde(skip)]
    pub wal_checkpoint_seconds: Histogram,
    /// Record receipt to durable in the WAL, to handed to the Kafka producer, and to
    /// acknowledged by Kafka: `/metrics` only.
    #[serde(skip)]
    pub record_latency: RecordLatency,
    /// The configuration file and its reloads (SIGHUP).
    pub config: ConfigStatus,
}

/// Where records' time goes between their receipt and Kafka's acknowledgement, each
/// stage counted from the receipt.
#[derive(Debug, Clone, Default)]
pub struct RecordLatency {
    /// Receipt to durable in the WAL (the MQTT acknowledgement may go).
    pub durable: Histogram,
    /// Receipt to handed to the Kafka producer.
    pub produced: Histogram,
    /// Receipt to acknowledged by Kafka (the delivery report).
    pub delivered: Histogram,
}

/// The configuration file as the gateway runs it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    /// The file, if the gateway was started with one.
    pub path: Option<String>,
    /// When it was last reloaded (SIGHUP), Unix ms.
    pub reloaded_at_ms: Option<u64>,
    /// Why the last reload was refused (the running configuration stayed).
    pub last_reload_error: Option<String>,
    /// Keys changed in the file that take effect only at the next start.
    pub restart_needed: Vec<String>,
}

/// A cumulative histogram, as Prometheus reads one.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// (upper bound in seconds, observations <= it), bounds ascending; the `+Inf`
    /// bucket is `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// State of the MQTT ingest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MqttStatus {
    /// Whether the broker session is up.
    pub connected: bool,
    /// Whether the broker acknowledged every subscription on this connection (messages
    /// flow only then).
    pub subscribed: bool,
    /// Filters the broker refused on this connection (its ACL), retried on reconnect.
    pub refused_subscriptions: Vec<String>,
    /// Broker address, if configured.
    pub server: Option<String>,
    /// Most recent connection error, kept after reconnecting so operators can see what flapped.
    pub last_error: Option<String>,
    /// False while ingest is paused (e.g. the WAL cannot commit), so publishes are not acked.
    pub accepting: bool,
    /// The broker had the gateway's session at the last connection.
    pub session_present: bool,
    /// The last time the broker had lost the gateway's persistent session, if ever.
    pub session_lost: Option<SessionLost>,
    /// Incoming QoS 2 exchanges stored and not yet released by the broker.
    pub qos2_pending: u64,
    /// The broker's own counters (`$SYS`), once it reported any.
    pub broker: Option<BrokerStats>,
}

/// What the MQTT broker reports about itself (Mosquitto's `$SYS` topics).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BrokerStats {
    /// Messages the broker dropped for full client queues or in-flight limits (all
    /// clients, since the broker started).
    pub messages_dropped: Option<u64>,
    /// Messages the broker holds (retained and queued).
    pub store_messages: Option<u64>,
    /// Payload bytes of those.
    pub store_bytes: Option<u64>,
    /// Seconds since the last report.
    pub age_seconds: f64,
}

/// The broker answered a reconnect without the gateway's persistent session: what it
/// had queued for the gateway may be lost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionLost {
    /// When it was noticed, Unix milliseconds.
    pub at_ms: u64,
    /// Seconds since.
    pub age_seconds: f64,
    /// What may have been lost and the likely causes.
    pub message: String,
    /// Still recent enough to fail `/readyz` (`mqtt.session_lost_alert`).
    pub alerting: bool,
}

/// State of the write-ahead log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalStatus {
    /// Path of the WAL file.
    pub path: String,
    /// Whether the last commit succeeded.
    pub writable: bool,
    /// Most recent commit error.
    pub last_error: Option<String>,
}

/// State of the Kafka forwarder.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KafkaStatus {
    /// Most recent delivery or producer error; cleared once Kafka acknowledges a
    /// record sent after it.
    pub last_error: Option<String>,
    /// Records handed to the producer whose delivery report has not arrived.
    pub in_flight: u64,
    /// Topics Kafka refuses for now (unknown, not authorized): their records wait,
    /// and are parked after `forward.unknown_topic_grace`.
    pub held_topics: Vec<HeldTopic>,
}

/// A Kafka topic refused as a whole, whose records are held.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeldTopic {
    /// The topic.
    pub topic: String,
    /// The last refusal, as Kafka said it.
    pub reason: String,
    /// Seconds since the first refusal.
    pub refused_for_seconds: f64,
    /// Records waiting.
    pub held_records: u64,
    /// Records parked after the grace.
    pub parked_records: u64,
    /// The grace is over: its records are parked as they are read.
    pub parking: bool,
}

/// Records durable in the WAL and not yet acknowledged by Kafka.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Backlog {
    /// Number of records in the backlog.
    pub records: u64,
    /// Payload bytes in the backlog.
    pub bytes: u64,
    /// Lowest seq still held, `None` when empty.
    pub oldest_seq: Option<u64>,
    /// Highest seq held, `None` when empty.
    pub newest_seq: Option<u64>,
    /// Age of the oldest record, `None` when empty.
    pub oldest_age_seconds: Option<f64>,
    /// Seq the next appended record will get.
    pub next_seq: u64,
    /// Records dropped by a configured policy (`wal.on_full = drop_oldest`,
    /// `wal.on_expired = drop`), by reason, over the WAL's life: they never reached
    /// Kafka.
    pub dropped: Dropped,
}

/// Ingest and drain rates (records per second; `None` until there are samples) and
/// what they forecast.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates {
    /// Records committed to the WAL per second, last minute.
    pub ingest_1m: Option<f64>,
    /// The same over 5 minutes.
    pub ingest_5m: Option<f64>,
    /// Records Kafka acknowledged per second, last minute.
    pub drain_1m: Option<f64>,
    /// The same over 5 minutes.
    pub drain_5m: Option<f64>,
    /// Seconds until the backlog is empty at the net drain of the last 15 s (`None`: not
    /// draining faster than it grows).
    pub eta_empty_seconds: Option<f64>,
    /// Free bytes on the WAL's filesystem.
    pub disk_free_bytes: Option<u64>,
    /// Free bytes above `wal.min_free_space` (where ingest pauses).
    pub disk_headroom_bytes: Option<u64>,
    /// How fast the backlog's bytes grew per second, last minute (negative: draining).
    pub backlog_growth_bytes_per_second: Option<f64>,
    /// Seconds until ingest pauses for disk space at that growth (`None`: not growing).
    pub eta_ingest_pause_seconds: Option<f64>,
}

/// One point of the history (`GET /history`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistoryPoint {
    /// When, Unix ms.
    pub unix_ms: u64,
    /// Backlog records.
    pub backlog_records: u64,
    /// Backlog bytes.
    pub backlog_bytes: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Ingest rate over the minute before (records/s).
    pub ingest_rate: Option<f64>,
    /// Drain rate over the minute before (records/s).
    pub drain_rate: Option<f64>,
}

/// The in-memory history: lost on restart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    /// Seconds between two points of `fine`.
    pub fine_seconds: u64,
    /// The last hour.
    pub fine: Vec<HistoryPoint>,
    /// Seconds between two points of `coarse`.
    pub coarse_seconds: u64,
    /// The last day.
    pub coarse: Vec<HistoryPoint>,
}

/// Records dropped by a policy, by reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dropped {
    /// To stay under `wal.max_bytes`.
    pub max_bytes: u64,
    /// To stay under `wal.max_records`.
    pub max_records: u64,
    /// Older than `wal.max_age`.
    pub max_age: u64,
}

/// Records Kafka rejected permanently.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLetters {
    /// Number of dead-lettered records kept.
    pub records: u64,
    /// Payload bytes of dead-lettered records kept.
    pub bytes: u64,
    /// Dead letters an operator purged, over the WAL's life.
    pub purged: u64,
    /// Dead letters an operator replayed, over the WAL's life.
    pub replayed: u64,
    /// Dead letters dropped, the oldest first, for `dead_letters.max_bytes`, over the
    /// WAL's life.
    pub dropped: u64,
}
