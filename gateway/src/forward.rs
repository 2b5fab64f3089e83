//! WAL -> Kafka. A dedicated thread reads records after its cursor, hands them to an
//! idempotent `acks=all` producer, turns out-of-order delivery reports into a
//! contiguous acknowledged prefix (the watermark) and asks the WAL thread to delete
//! that prefix. Memory is bounded by the in-flight window whatever the backlog.
//!
//! * Same key -> same partition -> kept in order by the idempotent producer, because
//!   records are submitted in sequence order and never resubmitted out of order: any
//!   failure other than a permanent one for a single record rebuilds the producer and
//!   replays from the watermark.
//! * A permanent error for one record (too large, unknown topic, not authorized...)
//!   parks it in the WAL's dead-letter table, counted and visible; the rest flows.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc as stdmpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wal::{RecordRef, Wal};

use crate::config::{KeyMode, Loaded};
use crate::route::Router;
use crate::state::{self, Shared};
use crate::writer::WalCmd;

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
}

/// rdkafka context: routes reports and errors into the forwarder.
struct Ctx {
    generation: u64,
    tx: stdmpsc::Sender<Event>,
    fatal: Arc<AtomicBool>,
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
        state::set(
            &self.shared.kafka_last_error,
            Some(format!("{error}: {reason}")),
        );
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq_low: usize) {
        let error = match result {
            Ok(_) => None,
            Err((e, _)) => Some(e.clone()),
        };
        let _ = self.tx.send(Event::Delivery {
            generation: self.generation,
            seq_low,
            error,
        });
    }
}

/// What to do after a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The record can never be delivered as is: park it.
    Permanent,
    /// Rebuild the producer and replay from the watermark.
    Retry,
}

/// Classify a Kafka error for one record.
pub fn classify(e: &KafkaError) -> Failure {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::TopicAuthorizationFailed
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
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

#[derive(Debug)]
struct Slot {
    seq: u64,
    bytes: u32,
    done: bool,
}

/// The forwarder's state; `run` drives it.
struct Forwarder {
    wal: Arc<Wal>,
    wal_tx: mpsc::Sender<WalCmd>,
    events: stdmpsc::Receiver<Event>,
    events_tx: stdmpsc::Sender<Event>,
    wake_pending: Arc<AtomicBool>,
    loaded: Arc<Loaded>,
    router: Router,
    shared: Arc<Shared>,
    opts: ForwardOptions,
    producer: ThreadedProducer<Ctx>,
    fatal: Arc<AtomicBool>,
    generation: u64,
    /// Every record sent since the watermark, in sequence order: the ones Kafka
    /// acknowledged stay until the records before them are acknowledged too.
    inflight: VecDeque<Slot>,
    /// Records in `inflight` not acknowledged yet (held by librdkafka): the window.
    pending: usize,
    /// Their encoded bytes.
    pending_bytes: usize,
    cursor: u64,
    watermark: u64,
    acked_sent: u64,
    last_ack: Instant,
    /// When the producer last reported a delivery (or was built).
    last_report: Instant,
    /// See [`stall_timeout`].
    stall_timeout: Duration,
    /// This producer has reported a delivery (see [`Forwarder::kick_producer_id`]).
    reported: bool,
    /// When this producer was built, and when it was last kicked.
    built: Instant,
    last_kick: Option<Instant>,
    /// A topic this producer sends to (for the kick's metadata request).
    kick_topic: Option<String>,
    need_rebuild: Option<String>,
    rebuild_delay: Duration,
    seq_text: String,
    time_text: String,
    /// Records Kafka refused for good once, and what to try next (see [`Suspect`]).
    suspects: BTreeMap<u64, Suspect>,
}

/// The slots kept in sequence order (acknowledged or not) are bounded at this many
/// times `max_in_flight_records` (16 bytes each).
const MAX_SLOTS_PER_RECORD: usize = 4;

/// No delivery report for this long past librdkafka's own longest silence with records
/// in flight: rebuild the producer (see [`stall_timeout`]).
const STALL_MARGIN: Duration = Duration::from_secs(30);

/// How long a producer may hold records without any delivery report before it is
/// taken as stuck and rebuilt: [`STALL_MARGIN`] past `topic.metadata.propagation.max.ms`
/// (30 s by default). Records for a topic that does not exist wait silently that long
/// before they fail and are parked; a shorter stall timeout rebuilt the producer
/// first, which restarted their wait, so they were never parked (1 run in 3 of
/// `unknown_topic::`, with both at 30 s).
fn stall_timeout(loaded: &Loaded) -> Duration {
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
const FIRST_REBUILD_DELAY: Duration = Duration::from_millis(100);

/// A record Kafka refused for good. The broker refuses whole batches (one record with
/// a bad timestamp or no key for a compacted topic fails its batch-mates too; a batch
/// above the topic's `max.message.bytes` fails although each record fits), so a
/// refused record is not parked at once: it is sent again alone, nothing else in
/// flight, and parked only if it is refused alone. Errors about the whole topic
/// (missing, not authorized) park at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suspect {
    /// Refused in a batch: send it alone, as it was.
    Alone,
    /// Refused alone with INVALID_RECORD or INVALID_TIMESTAMP: its receive time may be
    /// what the broker refused (the topic's `message.timestamp.before/after.max.ms`,
    /// or the gateway's clock was wrong when it arrived), so send it alone stamped with
    /// the time of sending; the receive time stays in the `gateway.received_at_ms`
    /// header.
    Restamped,
}

/// Build the producer for one generation.
fn producer(
    loaded: &Loaded,
    generation: u64,
    tx: stdmpsc::Sender<Event>,
    fatal: Arc<AtomicBool>,
    shared: Arc<Shared>,
    opts: &ForwardOptions,
) -> Result<ThreadedProducer<Ctx>, KafkaError> {
    producer_config(loaded, opts).create_with_context(Ctx {
        generation,
        tx,
        fatal,
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
fn widen(low: usize, base: u64) -> u64 {
    if usize::BITS >= 64 {
        low as u64
    } else {
        base.wrapping_add(low.wrapping_sub(base as usize) as u64)
    }
}

/// Run the forwarder until `shutdown` is cancelled and in-flight deliveries are done
/// (or `grace` has passed).
#[allow(clippy::too_many_arguments)]
pub fn run(
    wal: Arc<Wal>,
    wal_tx: mpsc::Sender<WalCmd>,
    events: stdmpsc::Receiver<Event>,
    events_tx: stdmpsc::Sender<Event>,
    wake_pending: Arc<AtomicBool>,
    loaded: Arc<Loaded>,
    shared: Arc<Shared>,
    opts: ForwardOptions,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let fatal = Arc::new(AtomicBool::new(false));
    let producer = producer(
        &loaded,
        0,
        events_tx.clone(),
        fatal.clone(),
        shared.clone(),
        &opts,
    )?;
    let stats = wal.stats();
    let cursor = stats.oldest_seq.unwrap_or(stats.next_seq);
    if stats.records > 0 {
        tracing::info!(
            records = stats.records,
            from_seq = cursor,
            "replaying WAL backlog to Kafka"
        );
    }
    let stall_timeout = stall_timeout(&loaded);
    let mut f = Forwarder {
        router: loaded.router.clone(),
        wal,
        wal_tx,
        events,
        events_tx,
        wake_pending,
        loaded,
        shared,
        opts,
        producer,
        fatal,
        generation: 0,
        inflight: VecDeque::new(),
        pending: 0,
        pending_bytes: 0,
        cursor,
        watermark: cursor - 1,
        acked_sent: cursor - 1,
        last_ack: Instant::now(),
        last_report: Instant::now(),
        stall_timeout,
        reported: false,
        built: Instant::now(),
        last_kick: None,
        kick_topic: None,
        need_rebuild: None,
        rebuild_delay: FIRST_REBUILD_DELAY,
        seq_text: String::new(),
        time_text: String::new(),
        suspects: BTreeMap::new(),
    };
    f.run(shutdown, grace)
}

impl Forwarder {
    fn run(&mut self, shutdown: CancellationToken, grace: Duration) -> anyhow::Result<()> {
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.shared.heartbeats.forward.beat();
            if shutdown.is_cancelled() {
                let deadline = *drain_deadline.get_or_insert_with(|| {
                    tracing::info!(
                        in_flight = self.pending,
                        "draining in-flight Kafka deliveries"
                    );
                    Instant::now() + grace
                });
                if self.inflight.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        in_flight = self.pending,
                        "grace period over; undelivered records stay in the WAL for the next start"
                    );
                    break;
                }
            }
            self.drain_events(Duration::ZERO);
            self.advance_watermark();
            self.maybe_send_ack(false)?;
            if self.fatal.load(Relaxed) && self.need_rebuild.is_none() {
                let why = self
                    .producer
                    .client()
                    .fatal_error()
                    .map(|(c, s)| format!("{c:?}: {s}"))
                    .unwrap_or_else(|| "fatal error".into());
                self.need_rebuild = Some(why);
            }
            // A producer that holds records without reporting anything for this long
            // is rebuilt: after Kafka was frozen past the client timeouts, an
            // idempotent producer was seen to stay silent for good.
            if self.pending == 0 {
                self.last_report = Instant::now(); // idle is not silence
            } else if self.need_rebuild.is_none()
                && self.last_report.elapsed() >= self.stall_timeout
            {
                self.need_rebuild = Some(format!(
                    "no delivery report for {}s with {} records in flight",
                    self.stall_timeout.as_secs(),
                    self.pending
                ));
            }
            if let Some(why) = self.need_rebuild.take() {
                if shutdown.is_cancelled() {
                    break;
                }
                self.rebuild(&why, &shutdown)?;
                continue;
            }
            let progressed = if drain_deadline.is_none() {
                self.fill()?
            } else {
                false
            };
            if !progressed {
                if !self.reported && self.pending > 0 {
                    self.kick_producer_id();
                }
                let wait = if drain_deadline.is_some() {
                    Duration::from_millis(50)
                } else {
                    self.opts.ack_interval
                };
                self.drain_events(wait);
            }
        }
        self.advance_watermark();
        self.maybe_send_ack(true)?;
        self.producer
            .purge(PurgeConfig::default().queue().inflight().non_blocking());
        self.shared.kafka_in_flight.store(0, Relaxed);
        tracing::info!(watermark = self.watermark, "forwarder stopped");
        Ok(())
    }

    /// Handle events; wait up to `wait` for the first one.
    fn drain_events(&mut self, wait: Duration) {
        let mut first = if wait.is_zero() {
            self.events.try_recv().ok()
        } else {
            self.events.recv_timeout(wait).ok()
        };
        while let Some(ev) = first.take().or_else(|| self.events.try_recv().ok()) {
            match ev {
                Event::Wake => self.wake_pending.store(false, Relaxed),
                Event::Delivery {
                    generation,
                    seq_low,
                    error,
                } => {
                    if generation != self.generation {
                        continue; // a report from a producer already replaced
                    }
                    self.last_report = Instant::now();
                    self.reported = true;
                    self.on_delivery(seq_low, error);
                }
            }
        }
    }

    fn on_delivery(&mut self, seq_low: usize, error: Option<KafkaError>) {
        let Some(front) = self.inflight.front() else {
            return;
        };
        let seq = widen(seq_low, front.seq);
        let Ok(idx) = self.inflight.binary_search_by_key(&seq, |s| s.seq) else {
            tracing::error!(seq, "delivery report for a record not in flight");
            return;
        };
        match error {
            None => {
                self.mark_done(idx);
                self.rebuild_delay = FIRST_REBUILD_DELAY;
                if self.suspects.remove(&seq) == Some(Suspect::Restamped) {
                    tracing::info!(seq, "record delivered stamped with the time of sending");
                }
                self.shared
                    .counters
                    .kafka_records_forwarded
                    .fetch_add(1, Relaxed);
            }
            Some(e) => {
                self.shared
                    .counters
                    .kafka_delivery_errors
                    .fetch_add(1, Relaxed);
                state::set(&self.shared.kafka_last_error, Some(e.to_string()));
                match classify(&e) {
                    Failure::Permanent => self.on_refused(idx, seq, &e),
                    Failure::Retry => {
                        if self.need_rebuild.is_none() {
                            self.need_rebuild =
                                Some(format!("delivery of record {seq} failed: {e}"));
                        }
                    }
                }
            }
        }
    }

    /// Kafka refused record `seq` (at `idx` in flight) for good: send it alone, then
    /// alone and restamped, and park it only when that is refused too.
    fn on_refused(&mut self, idx: usize, seq: u64, e: &KafkaError) {
        let alone = (self.inflight.iter().enumerate()).all(|(i, s)| i == idx || s.done);
        // Errors about the topic (missing, not authorized) hold for every record of
        // it: sending it alone would change nothing.
        let topic_wide = matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::UnknownPartition
                    | RDKafkaErrorCode::InvalidTopic
                    | RDKafkaErrorCode::TopicAuthorizationFailed
            )
        );
        let next = match self.suspects.get(&seq) {
            _ if topic_wide => None,
            None => Some(Suspect::Alone),
            Some(Suspect::Alone)
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::InvalidRecord | RDKafkaErrorCode::InvalidTimestamp)
                ) =>
            {
                Some(Suspect::Restamped)
            }
            // Refused even stamped with the time of sending: the gateway's clock is
            // off now. Not the record's fault: it waits in the WAL, retried with
            // backoff, until the clock is fixed.
            Some(Suspect::Restamped)
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidTimestamp) =>
            {
                tracing::error!(seq, "Kafka refuses the current time as a timestamp: the gateway's clock is off from the broker's by more than the topic allows (message.timestamp.before/after.max.ms); records wait in the WAL until the clock is fixed");
                self.need_rebuild.get_or_insert_with(|| {
                    format!("Kafka refused record {seq} stamped with the current time: is the gateway's clock wrong? {e}")
                });
                return;
            }
            Some(_) if !alone => Some(Suspect::Alone), // not isolated after all: again
            Some(_) => None,
        };
        match next {
            Some(next) => {
                if next == Suspect::Restamped {
                    tracing::warn!(seq, error = %e, "Kafka refused the record alone; its receive time may be what the broker refused (topic message.timestamp.before/after.max.ms, or the gateway's clock was wrong): sending it stamped with the time of sending");
                } else if self.suspects.is_empty() {
                    tracing::warn!(seq, error = %e, "Kafka refused a record; replaying and sending each refused record alone to find which ones are at fault");
                }
                self.suspects.insert(seq, next);
                if alone && self.suspects.get(&seq) == Some(&Suspect::Restamped) {
                    // Nothing else in flight: send it again without a rebuild (the
                    // slots before it are done; nothing was sent after it).
                    for slot in self.inflight.drain(idx..) {
                        if !slot.done {
                            self.pending -= 1;
                            self.pending_bytes -= slot.bytes as usize;
                        }
                    }
                    self.cursor = seq;
                } else {
                    self.need_rebuild
                        .get_or_insert_with(|| format!("Kafka refused record {seq}: {e}"));
                }
            }
            None => {
                tracing::warn!(seq, error = %e, "Kafka refused the record alone, for good; parking it in the dead-letter table");
                self.suspects.remove(&seq);
                self.dead_letter(seq, format!("kafka delivery failed: {e}"));
                self.mark_done(idx);
            }
        }
    }

    fn dead_letter(&mut self, seq: u64, reason: String) {
        // Sent on the same channel before any ack covering `seq`: the WAL thread moves
        // it before it could delete it (rule 3).
        let hb = &self.shared.heartbeats.forward;
        if hb
            .waiting_on_wal(|| self.wal_tx.blocking_send(WalCmd::DeadLetter(seq, reason)))
            .is_err()
        {
            tracing::error!(seq, "WAL thread gone; record stays in the WAL");
        }
    }

    /// Help a new producer get its producer id. librdkafka 2.12 drops the bootstrap
    /// connection once metadata names the broker, so the idempotent producer's first
    /// attempt to get an id finds no broker up and waits for its fixed 500 ms retry
    /// timer, holding every record back (a start with a backlog, and every rebuild,
    /// lost half a second). A metadata response also runs that state machine, so
    /// until the first delivery report, at most every 50 ms for the first 2 s, ask
    /// for the metadata of a topic being sent to; the request waits for a broker to
    /// be up.
    fn kick_producer_id(&mut self) {
        const KICK_FOR: Duration = Duration::from_secs(2);
        const KICK_EVERY: Duration = Duration::from_millis(50);
        if self.built.elapsed() >= KICK_FOR
            || self.last_kick.is_some_and(|t| t.elapsed() < KICK_EVERY)
        {
            return;
        }
        let Some(topic) = self.kick_topic.as_deref() else {
            return;
        };
        self.last_kick = Some(Instant::now());
        let _ = self
            .producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_millis(100));
    }

    /// Kafka is done with the slot at `idx` (delivered or parked).
    fn mark_done(&mut self, idx: usize) {
        let slot = &mut self.inflight[idx];
        if !slot.done {
            slot.done = true;
            self.pending -= 1;
            self.pending_bytes -= slot.bytes as usize;
        }
    }

    fn advance_watermark(&mut self) {
        while let Some(front) = self.inflight.front() {
            if !front.done {
                break;
            }
            self.watermark = front.seq;
            self.inflight.pop_front();
        }
        self.shared
            .kafka_in_flight
            .store(self.pending as u64, Relaxed);
    }

    fn maybe_send_ack(&mut self, force: bool) -> anyhow::Result<()> {
        if self.watermark > self.acked_sent
            && (force || self.last_ack.elapsed() >= self.opts.ack_interval)
        {
            #[cfg(feature = "failpoints")]
            crate::failpoint("forward-before-wal-ack");
            let ack = WalCmd::AckUpTo(self.watermark);
            self.shared
                .heartbeats
                .forward
                .waiting_on_wal(|| self.wal_tx.blocking_send(ack))
                .map_err(|_| anyhow::anyhow!("WAL thread stopped"))?;
            self.acked_sent = self.watermark;
            self.last_ack = Instant::now();
        }
        Ok(())
    }

    /// Read records after the cursor and hand them to the producer while the window
    /// has room. Returns true if anything was sent.
    fn fill(&mut self) -> anyhow::Result<bool> {
        let mut sent_any = false;
        loop {
            // The window counts the records librdkafka holds, not the acknowledged
            // ones that wait for an earlier record (of another partition, say) before
            // the prefix can be deleted: counting those stalled the drain whenever one
            // partition's batch came back later than the others'. The slots
            // themselves are small; they are bounded at MAX_SLOTS_PER_RECORD x the
            // window.
            let room = self
                .opts
                .max_in_flight_records
                .saturating_sub(self.pending)
                .min(
                    (self.opts.max_in_flight_records * MAX_SLOTS_PER_RECORD)
                        .saturating_sub(self.inflight.len()),
                );
            let room_bytes = self
                .opts
                .max_in_flight_bytes
                .saturating_sub(self.pending_bytes);
            if room == 0 || room_bytes == 0 {
                return Ok(sent_any);
            }
            // A refused record travels alone: nothing is sent while it is in flight,
            // and it is sent only when nothing else is.
            let next_suspect = self.suspects.range(self.cursor..).next().map(|(s, _)| *s);
            if next_suspect.is_some()
                && self
                    .inflight
                    .iter()
                    .any(|s| !s.done && self.suspects.contains_key(&s.seq))
            {
                return Ok(sent_any);
            }
            let idle = self.pending == 0;
            let mut alone = false;
            let mut queue_full = false;
            let mut dead = Vec::new();
            let mut sent = Vec::new();
            let wal = self.wal.clone();
            let read = wal.for_each_from(self.cursor, room.min(2048), room_bytes, |seq, rec| {
                let suspect = next_suspect.is_some_and(|s| seq >= s);
                if suspect {
                    if !(idle && sent.is_empty() && dead.is_empty()) {
                        return std::ops::ControlFlow::Break(());
                    }
                    alone = true;
                }
                match self.send(seq, &rec) {
                    Ok(()) => sent.push((seq, encoded_len(&rec))),
                    Err(SendError::QueueFull) => {
                        queue_full = true;
                        return std::ops::ControlFlow::Break(());
                    }
                    Err(SendError::Permanent(reason)) => {
                        dead.push((seq, encoded_len(&rec), reason))
                    }
                    Err(SendError::Retry(reason)) => {
                        self.need_rebuild.get_or_insert(reason);
                        return std::ops::ControlFlow::Break(());
                    }
                }
                if alone {
                    return std::ops::ControlFlow::Break(());
                }
                std::ops::ControlFlow::Continue(())
            });
            let read = match read {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, cursor = self.cursor, "cannot read the WAL; retrying");
                    // While a failed reopen keeps the WAL closed, the WAL thread's
                    // error says why; "closed" would only hide it.
                    if !self.wal.is_closed() {
                        state::set(&self.shared.wal_last_error, Some(e.to_string()));
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    return Ok(sent_any);
                }
            };
            // Merge sent and dead-lettered records back into sequence order.
            let mut all: Vec<(u64, u32, Option<String>)> = sent
                .into_iter()
                .map(|(s, b)| (s, b, None))
                .chain(dead.into_iter().map(|(s, b, r)| (s, b, Some(r))))
                .collect();
            all.sort_unstable_by_key(|x| x.0);
            for (seq, bytes, reason) in all {
                let done = reason.is_some();
                if let Some(reason) = reason {
                    self.suspects.remove(&seq);
                    tracing::warn!(seq, %reason, "record cannot be sent; parking it in the dead-letter table");
                    self.shared
                        .counters
                        .kafka_delivery_errors
                        .fetch_add(1, Relaxed);
                    self.dead_letter(seq, reason);
                }
                self.inflight.push_back(Slot { seq, bytes, done });
                if !done {
                    self.pending += 1;
                    self.pending_bytes += bytes as usize;
                }
                self.cursor = seq + 1;
                sent_any = true;
            }
            if queue_full || alone || read == 0 || self.need_rebuild.is_some() {
                return Ok(sent_any);
            }
        }
    }

    fn send(&mut self, seq: u64, rec: &RecordRef<'_>) -> Result<(), SendError> {
        let topic = self.router.route(rec.topic).map_err(SendError::Permanent)?;
        if self.kick_topic.is_none() {
            self.kick_topic = Some(topic.to_string());
        }
        use std::fmt::Write;
        self.seq_text.clear();
        let _ = write!(self.seq_text, "{seq}");
        self.time_text.clear();
        let _ = write!(self.time_text, "{}", rec.receive_time_ms);
        let qos = match rec.qos {
            0 => "0",
            1 => "1",
            _ => "2",
        };
        let headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header {
                key: headers::MQTT_TOPIC,
                value: Some(rec.topic),
            })
            .insert(Header {
                key: headers::MQTT_QOS,
                value: Some(qos),
            })
            .insert(Header {
                key: headers::MQTT_RETAIN,
                value: Some(if rec.retain { "true" } else { "false" }),
            })
            .insert(Header {
                key: headers::RECEIVED_AT,
                value: Some(self.time_text.as_str()),
            })
            .insert(Header {
                key: headers::GATEWAY_ID,
                value: Some(self.loaded.config.gateway_id.as_str()),
            })
            .insert(Header {
                key: headers::SEQ,
                value: Some(self.seq_text.as_str()),
            });
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&topic, seq as usize)
                .payload(rec.payload)
                .headers(headers);
        if self.suspects.get(&seq) != Some(&Suspect::Restamped) {
            record = record.timestamp(rec.receive_time_ms as i64);
        }
        if self.loaded.config.kafka.key == KeyMode::MqttTopic {
            record = record.key(rec.topic.as_bytes());
        }
        match self.producer.send(record) {
            Ok(()) => Ok(()),
            Err((e, _)) => {
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                    Err(SendError::QueueFull)
                } else if classify(&e) == Failure::Permanent {
                    Err(SendError::Permanent(format!("kafka refused record: {e}")))
                } else {
                    Err(SendError::Retry(format!("producer send failed: {e}")))
                }
            }
        }
    }

    /// Replace the producer and replay from the watermark.
    fn rebuild(&mut self, why: &str, shutdown: &CancellationToken) -> anyhow::Result<()> {
        tracing::warn!(reason = %why, watermark = self.watermark, delay = ?self.rebuild_delay, "rebuilding Kafka producer; replaying from the watermark");
        self.shared
            .counters
            .kafka_producer_rebuilds
            .fetch_add(1, Relaxed);
        state::set(&self.shared.kafka_last_error, Some(why.to_string()));
        self.producer
            .purge(PurgeConfig::default().queue().inflight().non_blocking());
        // Back off before reconnecting, waking early on shutdown.
        let until = Instant::now() + self.rebuild_delay;
        while Instant::now() < until && !shutdown.is_cancelled() {
            self.shared.heartbeats.forward.beat();
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        self.rebuild_delay = (self.rebuild_delay * 2).min(Duration::from_secs(10));
        self.generation += 1;
        self.fatal.store(false, Relaxed);
        self.producer = producer(
            &self.loaded,
            self.generation,
            self.events_tx.clone(),
            self.fatal.clone(),
            self.shared.clone(),
            &self.opts,
        )?;
        self.inflight.clear();
        self.pending = 0;
        self.pending_bytes = 0;
        self.cursor = self.watermark + 1;
        self.last_report = Instant::now();
        self.reported = false;
        self.built = Instant::now();
        self.last_kick = None;
        self.kick_topic = None;
        Ok(())
    }
}

enum SendError {
    QueueFull,
    Permanent(String),
    Retry(String),
}

fn encoded_len(r: &RecordRef<'_>) -> u32 {
    (13 + r.topic.len() + r.payload.len()).min(u32::MAX as usize) as u32
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
        assert_eq!(classify(&auth), Failure::Permanent);
        let transient = KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas);
        assert_eq!(classify(&transient), Failure::Retry);
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(classify(&timeout), Failure::Retry);
    }
}
