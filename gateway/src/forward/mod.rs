//! WAL -> Kafka. A dedicated thread reads records after its cursor, hands them to an
//! idempotent `acks=all` producer, turns out-of-order delivery reports into a
//! contiguous acknowledged prefix (the watermark, [`window`]) and asks the WAL thread
//! to delete that prefix (rule 2). Memory is bounded by the in-flight window whatever
//! the backlog.
//!
//! One record, step by step: the WAL thread commits it and wakes this thread
//! ([`Event::Wake`]) -> [`Forwarder::fill`] (`read.rs`) reads it after the cursor,
//! routes it and hands it to the producer -> librdkafka delivers it and the delivery
//! report comes back as [`Event::Delivery`] -> [`Forwarder::on_delivery`] marks it done
//! in the window -> every `forward.ack_interval`, the watermark goes to the WAL thread
//! as `WalCmd::AckUpTo`, which deletes every record at or below it.
//!
//! * Same key -> same partition -> kept in order by the idempotent producer, because
//!   records are submitted in sequence order and never resubmitted out of order: any
//!   failure other than a refusal of a single record or of its topic rebuilds the
//!   producer and replays from the watermark.
//! * A record Kafka refuses for good (too large, invalid...) is sent again alone, and
//!   parked in the WAL's dead-letter table only if it is refused alone (`refuse.rs`).
//! * A topic Kafka refuses (unknown, not authorized) is held and retried, and its
//!   records are parked only after `forward.unknown_topic_grace` ([`hold`]).
//!   Everything else keeps flowing.

mod hold;
mod producer;
mod read;
mod refuse;
pub mod window;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc as stdmpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer, PurgeConfig, ThreadedProducer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use wal::Wal;

use crate::config::Loaded;
use crate::route::Router;
use crate::state::Shared;
use crate::writer::WalCmd;
use hold::Holds;
pub use producer::{
    classify, headers, producer_config, validate_producer_config, Event, Failure, ForwardOptions,
};
use producer::{producer, stall_timeout, widen, Ctx, FIRST_REBUILD_DELAY};
use refuse::Suspect;
use window::AckWindow;

/// The records read and not done are bounded at this many times
/// `max_in_flight_records` (in flight and held together).
const MAX_OPEN_PER_RECORD: usize = 4;

/// The forwarder's state; `run` drives it.
struct Forwarder {
    wal: Arc<Wal>,
    wal_tx: mpsc::Sender<WalCmd>,
    events: stdmpsc::Receiver<Event>,
    events_tx: stdmpsc::Sender<Event>,
    wake_pending: Arc<AtomicBool>,
    /// The running configuration; a reload replaces it (routes, key, forward limits).
    config: watch::Receiver<Arc<Loaded>>,
    loaded: Arc<Loaded>,
    router: Router,
    shared: Arc<Shared>,
    opts: ForwardOptions,
    producer: ThreadedProducer<Ctx>,
    fatal: Arc<AtomicBool>,
    /// Delivery reports carry the topic on success too (while topics are held).
    want_topics: Arc<AtomicBool>,
    generation: u64,
    window: AckWindow,
    acked_sent: u64,
    last_ack: Instant,
    /// When the producer last reported a delivery (or was built).
    last_report: Instant,
    /// Gives the allocator's free memory back after a burst or a drain.
    trimmer: crate::memory::Trimmer,
    /// See [`producer::stall_timeout`].
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
    /// How many Kafka errors there had been when the latest delivery succeeded, and up
    /// to which of them `/status` was cleared.
    errors_before_delivery: u64,
    errors_cleared: u64,
    seq_text: String,
    time_text: String,
    /// Records Kafka refused for good once, and what to try next (see [`Suspect`]).
    suspects: BTreeMap<u64, Suspect>,
    /// Topics Kafka refuses for now.
    holds: Holds,
    /// When the held topics were last copied to the admin view.
    holds_shown: Instant,
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
    mut config: watch::Receiver<Arc<Loaded>>,
    shared: Arc<Shared>,
    opts: ForwardOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let loaded = config.borrow_and_update().clone();
    let fatal = Arc::new(AtomicBool::new(false));
    let want_topics = Arc::new(AtomicBool::new(false));
    let producer = producer(
        &loaded,
        0,
        events_tx.clone(),
        fatal.clone(),
        want_topics.clone(),
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
    let mut f = Forwarder {
        router: loaded.router.clone(),
        stall_timeout: stall_timeout(&loaded),
        holds: Holds::new(opts.unknown_topic_grace),
        wal,
        wal_tx,
        events,
        events_tx,
        wake_pending,
        config,
        loaded,
        shared,
        opts,
        producer,
        fatal,
        want_topics,
        generation: 0,
        window: AckWindow::new(cursor),
        acked_sent: cursor - 1,
        last_ack: Instant::now(),
        last_report: Instant::now(),
        trimmer: crate::memory::Trimmer::new(0, Instant::now()),
        reported: false,
        built: Instant::now(),
        last_kick: None,
        kick_topic: None,
        need_rebuild: None,
        rebuild_delay: FIRST_REBUILD_DELAY,
        errors_before_delivery: 0,
        errors_cleared: 0,
        seq_text: String::new(),
        time_text: String::new(),
        suspects: BTreeMap::new(),
        holds_shown: Instant::now(),
    };
    f.run(shutdown)
}

impl Forwarder {
    fn run(&mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.shared.heartbeats.forward.beat();
            self.reconfigure();
            if shutdown.is_cancelled() {
                let grace = self.loaded.config.shutdown.grace_period;
                let deadline = *drain_deadline.get_or_insert_with(|| {
                    tracing::info!(
                        in_flight = self.window.in_flight(),
                        "draining in-flight Kafka deliveries"
                    );
                    Instant::now() + grace
                });
                // Held records are not in flight: they wait in the WAL.
                if self.window.in_flight() == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        in_flight = self.window.in_flight(),
                        "grace period over; undelivered records stay in the WAL for the next start"
                    );
                    break;
                }
            }
            self.drain_events(Duration::ZERO);
            self.show_progress();
            self.maybe_send_ack(false)?;
            if self.errors_before_delivery > self.errors_cleared {
                self.shared.kafka_recovered(self.errors_before_delivery);
                self.errors_cleared = self.errors_before_delivery;
            }
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
            // is rebuilt: after Kafka is frozen past the client timeouts, an
            // idempotent producer can stay silent for good (no report, no error).
            if self.window.in_flight() == 0 {
                self.last_report = Instant::now(); // idle is not silence
            } else if self.need_rebuild.is_none()
                && self.last_report.elapsed() >= self.stall_timeout
            {
                self.need_rebuild = Some(format!(
                    "no delivery report for {}s with {} records in flight",
                    self.stall_timeout.as_secs(),
                    self.window.in_flight()
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
                self.check_holds();
                self.fill()?
            } else {
                false
            };
            if !progressed {
                if !self.reported && self.window.in_flight() > 0 {
                    self.kick_producer_id();
                }
                let c = &self.shared.counters;
                let activity =
                    c.wal_records_committed.load(Relaxed) + c.kafka_records_forwarded.load(Relaxed);
                if self.trimmer.tick(activity, Instant::now()) {
                    tracing::debug!("returned free memory to the system after a burst");
                }
                let wait = if drain_deadline.is_some() {
                    Duration::from_millis(50)
                } else {
                    self.opts.ack_interval
                };
                self.drain_events(wait);
            }
        }
        self.show_progress();
        self.maybe_send_ack(true)?;
        self.producer
            .purge(PurgeConfig::default().queue().inflight().non_blocking());
        self.shared.kafka_in_flight.store(0, Relaxed);
        tracing::info!(watermark = self.window.watermark(), "forwarder stopped");
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
                    topic,
                } => {
                    if generation != self.generation {
                        continue; // a report from a producer already replaced
                    }
                    self.last_report = Instant::now();
                    self.reported = true;
                    self.on_delivery(seq_low, error, topic);
                }
            }
        }
    }

    fn on_delivery(&mut self, seq_low: usize, error: Option<KafkaError>, topic: Option<String>) {
        let seq = widen(seq_low, self.window.watermark() + 1);
        if !self.window.is_in_flight(seq) {
            tracing::error!(seq, "delivery report for a record not in flight");
            return;
        }
        match error {
            None => {
                if let Some(received) = self.window.received_ms(seq) {
                    self.shared
                        .to_delivered
                        .record_ms(crate::ingest::now_ms().saturating_sub(received));
                }
                self.window.done(seq);
                self.errors_before_delivery = self.shared.kafka_errors.load(Relaxed);
                self.rebuild_delay = FIRST_REBUILD_DELAY;
                if self.suspects.remove(&seq) == Some(Suspect::Restamped) {
                    tracing::info!(seq, "record delivered stamped with the time of sending");
                }
                self.shared
                    .counters
                    .kafka_records_forwarded
                    .fetch_add(1, Relaxed);
                if let Some(topic) = topic {
                    self.topic_delivered(&topic);
                }
            }
            Some(e) => {
                self.shared
                    .counters
                    .kafka_delivery_errors
                    .fetch_add(1, Relaxed);
                self.shared.kafka_error(e.to_string());
                match classify(&e) {
                    Failure::Permanent => self.on_refused(seq, &e),
                    Failure::Topic => self.on_topic_refused(seq, topic, &e),
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
    /// would lose half a second). A metadata response also runs that state machine, so
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

    /// Take a reloaded configuration: routes, key, forward limits, grace. Records in
    /// flight keep the topic they were sent to; the next ones read follow the new
    /// routes.
    fn reconfigure(&mut self) {
        if !self.config.has_changed().unwrap_or(false) {
            return;
        }
        let loaded = self.config.borrow_and_update().clone();
        self.router = loaded.router.clone();
        self.opts = crate::run::forward_options(&loaded);
        self.holds.set_grace(self.opts.unknown_topic_grace);
        self.loaded = loaded;
    }

    /// Copy the window's state to the admin view.
    fn show_progress(&mut self) {
        self.shared
            .kafka_in_flight
            .store(self.window.in_flight() as u64, Relaxed);
        if self.holds_shown.elapsed() >= Duration::from_millis(500) {
            self.holds_shown = Instant::now();
            self.show_holds();
        }
    }

    fn maybe_send_ack(&mut self, force: bool) -> anyhow::Result<()> {
        let watermark = self.window.watermark();
        if watermark > self.acked_sent
            && (force || self.last_ack.elapsed() >= self.opts.ack_interval)
        {
            #[cfg(feature = "failpoints")]
            crate::failpoint("forward-before-wal-ack");
            let ack = WalCmd::AckUpTo(watermark);
            self.shared
                .heartbeats
                .forward
                .waiting_on_wal(|| self.wal_tx.blocking_send(ack))
                .map_err(|_| anyhow::anyhow!("WAL thread stopped"))?;
            self.acked_sent = watermark;
            self.last_ack = Instant::now();
        }
        Ok(())
    }

    /// Replace the producer and replay from the watermark.
    fn rebuild(&mut self, why: &str, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let watermark = self.window.watermark();
        tracing::warn!(reason = %why, watermark, delay = ?self.rebuild_delay, "rebuilding Kafka producer; replaying from the watermark");
        self.shared
            .counters
            .kafka_producer_rebuilds
            .fetch_add(1, Relaxed);
        self.shared.kafka_error(why.to_string());
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
            self.want_topics.clone(),
            self.shared.clone(),
            &self.opts,
        )?;
        // Everything after the watermark is read again; held records are held again.
        self.window.restart();
        self.holds.forget_from(watermark + 1);
        self.last_report = Instant::now();
        self.reported = false;
        self.built = Instant::now();
        self.last_kick = None;
        self.kick_topic = None;
        Ok(())
    }
}
