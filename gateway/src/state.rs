//! Shared counters and status flags, and the admin API's view of them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

/// The gateway's counters (declared once, in `admin::counters`).
pub use admin::AtomicCounters as Counters;

/// The configuration file as the gateway runs it.
#[derive(Debug, Clone, Default)]
pub struct ConfigStatus {
    /// The file, if the gateway was started with one.
    pub path: Option<String>,
    /// When it was last reloaded (SIGHUP), Unix ms.
    pub reloaded_at_ms: Option<u64>,
    /// Why the last reload was refused, if it was.
    pub last_error: Option<String>,
    /// Keys changed in the file that take effect only at the next start.
    pub restart_needed: Vec<String>,
}

/// Upper bounds (seconds) of the duration histograms. 20 ms is the publish-to-Kafka
/// latency target at 1,000 msg/s (docs/BENCHMARKS.md); the steps around it are fine
/// enough for a p99 read off the buckets (the bench does).
pub const BUCKETS: [f64; 18] = [
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0,
];

/// A histogram of durations, lock-free (any number of writers).
#[derive(Debug, Default)]
pub struct Timings {
    /// Observations per bucket of [`BUCKETS`] (not cumulative), then above the last.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Timings {
    /// Count one observation of `d`.
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// Count one observation of `ms` milliseconds (from Unix-ms timestamps).
    pub fn record_ms(&self, ms: u64) {
        self.record(Duration::from_millis(ms));
    }

    /// The cumulative histogram for `/metrics`.
    pub fn histogram(&self) -> admin::Histogram {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len());
        for (le, n) in BUCKETS.iter().zip(&self.counts) {
            total += n.load(Relaxed);
            buckets.push((*le, total));
        }
        total += self.counts[BUCKETS.len()].load(Relaxed);
        admin::Histogram {
            buckets,
            sum: self.sum_us.load(Relaxed) as f64 / 1e6,
            count: total,
        }
    }
}

/// How often a loop that is waiting (idle, or for a broker) still beats.
pub const HEARTBEAT_TICK: Duration = Duration::from_secs(1);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// When a long-running loop last showed it is not stuck (for the systemd watchdog).
/// A loop beats on every turn and every [`HEARTBEAT_TICK`] while it waits, so an
/// outage (a broker down, nothing to do) is not a hang; a stuck loop goes silent.
#[derive(Debug)]
pub struct Heartbeat {
    last_ms: AtomicU64,
    waiting_on_wal: AtomicBool,
}

impl Default for Heartbeat {
    fn default() -> Self {
        let h = Self {
            last_ms: AtomicU64::new(0),
            waiting_on_wal: AtomicBool::new(false),
        };
        h.beat();
        h
    }
}

impl Heartbeat {
    /// The loop is alive now.
    pub fn beat(&self) {
        self.last_ms
            .store(epoch().elapsed().as_millis() as u64, Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let now = epoch().elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Relaxed)))
    }

    /// Run `f`, a blocking send to the WAL thread's (full) channel. Meanwhile the
    /// loop counts as alive: it waits for the WAL thread, whose own heartbeat shows
    /// whether that one is stuck (it keeps beating while a full disk holds it up).
    pub fn waiting_on_wal<R>(&self, f: impl FnOnce() -> R) -> R {
        self.waiting_on_wal.store(true, Relaxed);
        let r = f();
        self.waiting_on_wal.store(false, Relaxed);
        self.beat();
        r
    }

    /// Silent for longer than `limit` (and not just waiting for the WAL thread).
    fn stale(&self, limit: Duration) -> Option<Duration> {
        let age = self.age();
        (age > limit && !self.waiting_on_wal.load(Relaxed)).then_some(age)
    }
}

/// Await `fut`; if it has to wait, beat `hb` then and every [`HEARTBEAT_TICK`] while it
/// is pending. `fut` is never cancelled by the ticks.
pub async fn beating<F: Future>(hb: &Heartbeat, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    // Most awaits here are ready at once (a packet already read, room in a channel),
    // several per message in the ingest loop: those take no clock reading and no timer.
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    if let Poll::Ready(out) = first {
        return out;
    }
    hb.beat();
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT_TICK, HEARTBEAT_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            _ = tick.tick() => hb.beat(),
        }
    }
}

/// Heartbeats of the loops the watchdog watches.
#[derive(Debug, Default)]
pub struct Heartbeats {
    /// The WAL thread ([`crate::writer`]).
    pub wal: Heartbeat,
    /// The MQTT ingest loop ([`crate::ingest`]).
    pub ingest: Heartbeat,
    /// The forwarder thread ([`crate::forward`]).
    pub forward: Heartbeat,
    /// The WAL's sync thread (`crate::writer`): a wedged fsync stops it, not the WAL
    /// thread, which goes on committing.
    pub wal_sync: Heartbeat,
}

impl Heartbeats {
    /// The loop that has been silent longest, if longer than `limit`.
    pub fn stale(&self, limit: Duration) -> Option<(&'static str, Duration)> {
        [
            ("WAL writer", self.wal.stale(limit)),
            ("MQTT ingest", self.ingest.stale(limit)),
            ("Kafka forwarder", self.forward.stale(limit)),
            ("WAL sync", self.wal_sync.stale(limit)),
        ]
        .into_iter()
        .filter_map(|(name, age)| Some((name, age?)))
        .max_by_key(|(_, age)| *age)
    }
}

/// State shared by the ingest, WAL, forwarder and admin parts.
#[derive(Debug)]
pub struct Shared {
    /// Counters.
    pub counters: Counters,
    /// How long durable WAL commits take.
    pub commit_times: Timings,
    /// How long WAL checkpoints take (the journal into redb's file, durably).
    pub checkpoint_times: Timings,
    /// Where a record's time goes, from its receipt: durable in the WAL, handed to
    /// the Kafka producer, acknowledged by Kafka.
    pub to_durable: Timings,
    /// See `to_durable`.
    pub to_produced: Timings,
    /// See `to_durable`.
    pub to_delivered: Timings,
    /// An MQTT session is up.
    pub mqtt_connected: AtomicBool,
    /// The broker acknowledged every subscription on this connection.
    pub mqtt_subscribed: AtomicBool,
    /// Subscriptions the broker refused on this connection (filters).
    pub mqtt_refused: Mutex<Vec<String>>,
    /// New MQTT messages are being written (false while the WAL cannot commit).
    pub mqtt_accepting: AtomicBool,
    /// The broker currently used.
    pub mqtt_server: Mutex<Option<String>>,
    /// The broker had the session at the last CONNACK.
    pub mqtt_session_present: AtomicBool,
    /// Incoming QoS 2 exchanges stored and not yet released by the broker.
    pub mqtt_qos2_pending: AtomicU64,
    /// The last time the broker had lost the persistent session.
    pub mqtt_session_lost: Mutex<Option<SessionLost>>,
    /// The broker's own counters (`mqtt.broker_stats`).
    pub broker_stats: Mutex<BrokerStats>,
    /// The configuration file and its reloads.
    pub config: Mutex<ConfigStatus>,
    /// How long a lost session keeps `/readyz` failing (`mqtt.session_lost_alert`).
    pub session_lost_alert: Mutex<Duration>,
    /// Last MQTT error, if any.
    pub mqtt_last_error: Mutex<Option<String>>,
    /// The last commit succeeded.
    pub wal_writable: AtomicBool,
    /// Last WAL error, if any.
    pub wal_last_error: Mutex<Option<String>>,
    /// Last Kafka error, until Kafka took records after it (see [`Shared::kafka_error`]).
    pub kafka_last_error: Mutex<Option<String>>,
    /// Kafka errors so far: a delivery tells which of them it came after.
    pub kafka_errors: AtomicU64,
    /// Records handed to the producer and not yet acknowledged.
    pub kafka_in_flight: AtomicU64,
    /// Topics Kafka refuses for now.
    pub kafka_held_topics: Mutex<Vec<HeldTopic>>,
    /// Liveness of the long-running loops.
    pub heartbeats: Heartbeats,
    /// Ingest and drain rates, forecasts and history (`crate::rates`).
    pub rates: Mutex<crate::rates::Rates>,
    pub(crate) started: Instant,
}

impl Shared {
    /// A Kafka error (a failed delivery, a client error): shown in `/status` until
    /// [`Shared::kafka_recovered`] clears it.
    pub fn kafka_error(&self, error: String) {
        let mut slot = self
            .kafka_last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *slot = Some(error);
        self.kafka_errors.fetch_add(1, Relaxed);
    }

    /// Kafka acknowledged a record after the first `seen` errors: the last error is
    /// over, unless a newer one came since (both under the same lock, so a new error
    /// is never wiped by an older success).
    pub fn kafka_recovered(&self, seen: u64) {
        let mut slot = self
            .kafka_last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.kafka_errors.load(Relaxed) == seen {
            *slot = None;
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            counters: Counters::default(),
            commit_times: Timings::default(),
            checkpoint_times: Timings::default(),
            to_durable: Timings::default(),
            to_produced: Timings::default(),
            to_delivered: Timings::default(),
            mqtt_connected: AtomicBool::new(false),
            mqtt_subscribed: AtomicBool::new(false),
            mqtt_refused: Mutex::new(Vec::new()),
            mqtt_accepting: AtomicBool::new(true),
            mqtt_server: Mutex::new(None),
            mqtt_session_present: AtomicBool::new(false),
            mqtt_qos2_pending: AtomicU64::new(0),
            mqtt_session_lost: Mutex::new(None),
            broker_stats: Mutex::new(BrokerStats::default()),
            config: Mutex::new(ConfigStatus::default()),
            session_lost_alert: Mutex::new(Duration::from_secs(300)),
            mqtt_last_error: Mutex::new(None),
            wal_writable: AtomicBool::new(true),
            wal_last_error: Mutex::new(None),
            kafka_last_error: Mutex::new(None),
            kafka_errors: AtomicU64::new(0),
            kafka_in_flight: AtomicU64::new(0),
            kafka_held_topics: Mutex::new(Vec::new()),
            heartbeats: Heartbeats::default(),
            rates: Mutex::default(),
            started: Instant::now(),
        }
    }
}

/// The latest counters the MQTT broker reported about itself (`$SYS`; see
/// `ingest::broker_stats`).
#[derive(Debug, Clone, Default)]
pub struct BrokerStats {
    /// `$SYS/broker/publish/messages/dropped`.
    pub messages_dropped: Option<u64>,
    /// `$SYS/broker/store/messages/count`.
    pub store_messages: Option<u64>,
    /// `$SYS/broker/store/messages/bytes`.
    pub store_bytes: Option<u64>,
    /// When the last value arrived.
    pub updated: Option<Instant>,
}

/// A Kafka topic refused as a whole, held by the forwarder (`forward/hold.rs`).
#[derive(Debug, Clone)]
pub struct HeldTopic {
    /// The topic.
    pub topic: String,
    /// The last refusal, as Kafka said it.
    pub reason: String,
    /// Since the first refusal.
    pub refused_for: Duration,
    /// Records waiting.
    pub held_records: u64,
    /// Records parked after `forward.unknown_topic_grace`.
    pub parked_records: u64,
    /// The grace is over: its records are parked as they are read.
    pub parking: bool,
}

/// When and how the broker lost the gateway's session.
#[derive(Debug, Clone)]
pub struct SessionLost {
    /// When it was noticed.
    pub at: Instant,
    /// The same, Unix milliseconds.
    pub at_ms: u64,
    /// What may have been lost and why (the warning that was logged).
    pub message: String,
}

impl Shared {
    /// Record a reload of the configuration file: applied (`Ok`, with the keys that
    /// wait for a restart) or refused.
    pub fn config_reloaded(&self, result: Result<(), String>, restart_needed: Vec<String>) {
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        c.reloaded_at_ms = Some(unix_ms());
        match result {
            Ok(()) => {
                c.last_error = None;
                c.restart_needed = restart_needed;
            }
            Err(e) => c.last_error = Some(e),
        }
    }

    /// Record that the broker lost the persistent session.
    pub fn session_lost(&self, message: String) {
        let lost = SessionLost {
            at: Instant::now(),
            at_ms: unix_ms(),
            message,
        };
        *self
            .mqtt_session_lost
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(lost);
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Store `value` in a status slot.
pub fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = value;
}

pub(crate) fn get(slot: &Mutex<Option<String>>) -> Option<String> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Make a heartbeat look fresh (age 0) or silent since the epoch.
    fn set(h: &Heartbeat, fresh: bool) {
        h.last_ms.store(if fresh { u64::MAX } else { 0 }, Relaxed);
    }

    #[test]
    fn timings_are_cumulative_with_everything_in_count() {
        let t = Timings::default();
        for ms in [0.3, 0.3, 1.5, 20.0, 30.0, 9_000.0] {
            t.record(Duration::from_secs_f64(ms / 1000.0));
        }
        let h = t.histogram();
        let at = |le: f64| h.buckets.iter().find(|(b, _)| *b == le).unwrap().1;
        assert_eq!(at(0.0005), 2);
        assert_eq!(at(0.002), 3);
        assert_eq!(at(0.02), 4); // 20 ms is inside the 20 ms bucket
        assert_eq!(at(0.05), 5);
        assert_eq!(at(5.0), 5);
        assert_eq!(h.count, 6); // the 9 s commit only in +Inf
        assert!((h.sum - 9.0521).abs() < 1e-6, "{}", h.sum);
        assert!(h
            .buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn stale_names_the_silent_loop_unless_it_waits_for_the_wal() {
        let _ = epoch();
        std::thread::sleep(Duration::from_millis(5));
        let h = Heartbeats::default();
        for b in [&h.wal, &h.ingest, &h.forward] {
            set(b, true);
        }
        assert_eq!(h.stale(Duration::ZERO), None);
        set(&h.forward, false);
        assert_eq!(
            h.stale(Duration::ZERO).map(|(name, _)| name),
            Some("Kafka forwarder")
        );
        // Blocked on a full WAL channel: alive as long as the WAL thread is.
        let inside = h.forward.waiting_on_wal(|| h.stale(Duration::ZERO));
        assert_eq!(inside, None);
        set(&h.wal, false);
        let inside = h.forward.waiting_on_wal(|| h.stale(Duration::ZERO));
        assert_eq!(inside.map(|(name, _)| name), Some("WAL writer"));
        // Leaving the wait counts as a beat.
        assert!(h.forward.age() < Duration::from_secs(60));
    }

    #[test]
    fn a_kafka_error_is_cleared_only_by_a_delivery_after_it() {
        let s = Shared::default();
        s.kafka_error("broker down".into());
        let between = s.kafka_errors.load(Relaxed);
        s.kafka_error("still down".into());
        // A delivery that succeeded between the two errors: the second one stays.
        s.kafka_recovered(between);
        assert_eq!(get(&s.kafka_last_error).as_deref(), Some("still down"));
        s.kafka_recovered(s.kafka_errors.load(Relaxed));
        assert_eq!(get(&s.kafka_last_error), None);
    }

    #[tokio::test]
    async fn beating_beats_when_a_wait_starts_and_while_it_lasts() {
        let _ = epoch();
        std::thread::sleep(Duration::from_millis(5));
        // (`set(_, false)` puts the last beat at the epoch: 0.)
        let hb = std::sync::Arc::new(Heartbeat::default());
        let silent = |h: &Heartbeat| h.last_ms.load(Relaxed) == 0;
        // Ready at once: no beat, nothing to wait for.
        set(&hb, false);
        assert_eq!(beating(&hb, std::future::ready(7)).await, 7);
        assert!(silent(&hb));
        // Pending once: a beat when the wait starts.
        beating(&hb, tokio::task::yield_now()).await;
        assert!(!silent(&hb));
        // Pending for long: the ticks beat while it waits.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let waiter = tokio::spawn({
            let hb = hb.clone();
            async move { beating(&hb, done_rx).await }
        });
        tokio::task::yield_now().await;
        set(&hb, false);
        let deadline = Instant::now() + HEARTBEAT_TICK * 5;
        while silent(&hb) {
            assert!(Instant::now() < deadline, "no beat while waiting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done_tx.send(()).unwrap();
        assert!(waiter.await.unwrap().is_ok());
    }
}
