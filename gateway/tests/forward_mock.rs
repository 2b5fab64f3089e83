//! The forwarder against librdkafka's mock cluster, for broker errors a real broker
//! cannot produce on demand. Invariant checked in each: every appended record ends up
//! either acknowledged by Kafka (and deleted) or in the dead-letter table; none is
//! dropped.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc as stdmpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::config::Config;
use gateway::forward::{self, Event};
use gateway::state::Shared;
use gateway::writer::{self, WriterOptions};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use wal::{RecordRef, Wal, WalOptions};

struct Rig {
    wal: Arc<Wal>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    forwarder: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start(bootstrap: &str, records: usize) -> Self {
        Self::start_with(bootstrap, records, "")
    }

    /// With more `[forward]` settings (`forward` ends with a newline).
    fn start_with(bootstrap: &str, records: usize, forward: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Wal::open(dir.path(), WalOptions::default()).unwrap());
        let payload = vec![b'x'; 200];
        let topics: Vec<String> = (0..4).map(|i| format!("dev/{i}")).collect();
        let recs: Vec<RecordRef<'_>> = (0..records)
            .map(|i| RecordRef {
                topic: &topics[i % 4],
                payload: &payload,
                qos: 1,
                retain: false,
                dup: false,
                receive_time_ms: 1,
            })
            .collect();
        wal.append(&recs).unwrap();

        let loaded = Config::from_toml(
            &format!("[kafka]\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"mock\"\n[shutdown]\ngrace_period = \"5s\"\n[forward]\nmax_in_flight_records = 500\n{forward}"),
            "test",
        )
        .unwrap();
        let loaded = Arc::new(loaded);
        let shared = Arc::new(Shared::default());
        let (wal_tx, wal_rx) = mpsc::channel(1024);
        let (durable_tx, _durable_rx) = watch::channel(0u64);
        let (events_tx, events_rx) = stdmpsc::channel();
        let wake = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let writer = {
            let (wal, shared) = (wal.clone(), shared.clone());
            std::thread::spawn(move || {
                // No ingest here: its channel is closed from the start.
                let (_, no_ingest) = mpsc::channel(1);
                writer::run(
                    wal,
                    writer::Inbox::new(no_ingest, wal_rx),
                    durable_tx,
                    shared,
                    WriterOptions {
                        max_batch_records: 1000,
                        max_batch_bytes: 1 << 20,
                        linger: Duration::ZERO,
                        sync_linger: Duration::from_millis(10),
                        idle_sync: Duration::from_millis(100),
                        min_free_space: 0,
                        limits: Default::default(),
                        reload: None,
                    },
                    CancellationToken::new(),
                    || {},
                )
            })
        };
        let forwarder = {
            let (wal, shared, stop) = (wal.clone(), shared.clone(), stop.clone());
            let opts = gateway::run::forward_options(&loaded);
            std::thread::spawn(move || {
                forward::run(
                    wal,
                    wal_tx,
                    events_rx,
                    events_tx,
                    wake,
                    tokio::sync::watch::channel(loaded).1,
                    shared,
                    opts,
                    stop,
                )
            })
        };
        let _ = Event::Wake;
        Rig {
            wal,
            shared,
            stop,
            forwarder: Some(forwarder),
            writer: Some(writer),
            _dir: dir,
        }
    }

    fn wait_all_resolved(&self, total: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.wal.stats();
            if s.records == 0 && s.dead_letters + self.forwarded() >= total {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not resolved: {s:?}, forwarded {}",
                self.forwarded()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn forwarded(&self) -> u64 {
        self.shared.counters.kafka_records_forwarded.load(Relaxed)
    }

    fn stop(mut self) {
        self.stop.cancel();
        self.forwarder.take().unwrap().join().unwrap().unwrap();
        // The forwarder held the only command sender: the WAL thread exits now.
        self.writer.take().unwrap().join().unwrap();
    }
}

#[test]
fn transient_produce_errors_are_retried_without_loss() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("mock", 3, 1).unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );
    let rig = Rig::start(&cluster.bootstrap_servers(), 2000);
    rig.wait_all_resolved(2000, Duration::from_secs(60));
    assert_eq!(
        rig.wal.stats().dead_letters,
        0,
        "transient errors must not park records"
    );
    assert!(rig.forwarded() >= 2000);
    rig.stop();
}

#[test]
fn permanent_error_parks_records_and_the_rest_flows() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("mock", 1, 1).unwrap();
    // Every produce request for a while is refused: the refused batch's records are
    // sent again alone, refused again, and parked.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_POLICY_VIOLATION; 50],
    );
    let rig = Rig::start(&cluster.bootstrap_servers(), 1000);
    rig.wait_all_resolved(1000, Duration::from_secs(60));
    let s = rig.wal.stats();
    assert!(
        s.dead_letters > 0,
        "the records refused alone are parked, not dropped"
    );
    assert_eq!(
        s.dead_letters + rig.forwarded(),
        1000,
        "every record accounted for"
    );
    let parked = rig.wal.dead_letters(0, 10).unwrap();
    assert!(parked[0].reason.contains("olicy"), "{}", parked[0].reason);
    assert_eq!(
        rig.shared
            .counters
            .kafka_records_dead_lettered
            .load(Relaxed),
        s.dead_letters
    );
    rig.stop();
}

#[test]
fn a_topic_refused_for_a_while_is_held_and_delivered_not_parked() {
    // "Not authorized" for the topic for a few produce requests (an ACL added a
    // little later): the topic's records wait, the topic is looked up with backoff and
    // its records are sent again; none is parked.
    refused_then_delivered_not_parked(
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 2],
        1,
    );
}

#[test]
fn a_topic_refused_past_the_grace_is_parked() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("mock", 1, 1).unwrap();
    // Refused for good: visible in the metadata, but every write is refused.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 100_000],
    );
    let rig = Rig::start_with(
        &cluster.bootstrap_servers(),
        1000,
        "unknown_topic_grace = \"3s\"\n",
    );
    rig.wait_all_resolved(1000, Duration::from_secs(60));
    let s = rig.wal.stats();
    assert_eq!((s.dead_letters, rig.forwarded()), (1000, 0));
    let parked = rig.wal.dead_letters(0, 10).unwrap();
    assert!(
        parked[0].reason.contains("unknown_topic_grace") && parked[0].reason.contains("uthoriz"),
        "{}",
        parked[0].reason
    );
    rig.stop();
}

/// Inject `errors` on the first produce requests of 1,000 records; check that none
/// is parked, all are delivered, and at least `injected` refusals were seen.
fn refused_then_delivered_not_parked(errors: &[RDKafkaRespErr], injected: u64) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("mock", 1, 1).unwrap();
    cluster.request_errors(RDKafkaApiKey::Produce, errors);
    let rig = Rig::start(&cluster.bootstrap_servers(), 1000);
    rig.wait_all_resolved(1000, Duration::from_secs(60));
    assert_eq!(rig.wal.stats().dead_letters, 0, "records were parked");
    assert!(rig.forwarded() >= 1000);
    assert!(
        rig.shared.counters.kafka_delivery_errors.load(Relaxed) >= injected,
        "the refusals were not injected"
    );
    rig.stop();
}

#[test]
fn batch_mates_of_a_refused_batch_are_delivered_not_parked() {
    // The broker refuses a whole batch for one bad record (INVALID_RECORD). Here only
    // the first produce request is refused: sent again alone, every record of that
    // batch is accepted, so nothing may be parked.
    refused_then_delivered_not_parked(&[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD], 1);
}

#[test]
fn refused_timestamps_wait_for_the_clock_not_parked() {
    // INVALID_TIMESTAMP for the batch, for the record alone, and for the record alone
    // stamped with the current time (the gateway's clock is wrong): the record is not
    // the problem, so it waits and is retried, never parked.
    refused_then_delivered_not_parked(&[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP; 5], 3);
}

#[test]
fn kafka_down_then_up_delivers_backlog() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("mock", 3, 1).unwrap();
    cluster.broker_down(1).unwrap();
    let rig = Rig::start(&cluster.bootstrap_servers(), 3000);
    // Nothing can be delivered while the broker is down; the window bounds in-flight.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(500) {
        assert!(rig.shared.kafka_in_flight.load(Relaxed) <= 500);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(rig.wal.stats().records, 3000);
    cluster.broker_up(1).unwrap();
    rig.wait_all_resolved(3000, Duration::from_secs(60));
    assert_eq!(rig.wal.stats().dead_letters, 0);
    rig.stop();
}

#[test]
fn fatal_idempotence_error_rebuilds_producer_and_replays() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("mock", 1, 1).unwrap();
    // An out-of-order sequence on an idempotent producer is fatal in librdkafka.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let rig = Rig::start(&cluster.bootstrap_servers(), 2000);
    rig.wait_all_resolved(2000, Duration::from_secs(60));
    assert_eq!(rig.wal.stats().dead_letters, 0);
    assert!(
        rig.shared.counters.kafka_producer_rebuilds.load(Relaxed) >= 1,
        "expected a producer rebuild"
    );
    rig.stop();
}
