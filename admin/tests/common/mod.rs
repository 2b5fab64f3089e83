//! Shared test fixtures: a fake gateway state.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use admin::{
    Access, Backlog, Counters, DeadLetters, Histogram, KafkaStatus, MqttStatus, Snapshot, Source,
    WalStatus,
};

/// Stands in for the gateway; tests swap the snapshot and count how often it is read.
#[derive(Debug, Default)]
pub struct FakeSource {
    pub snap: Mutex<Snapshot>,
    pub reads: AtomicUsize,
    pub access: Access,
}

impl FakeSource {
    pub fn new(snap: Snapshot) -> Self {
        Self {
            snap: Mutex::new(snap),
            reads: AtomicUsize::new(0),
            access: Access::new(None),
        }
    }

    /// The same, asking for `token`.
    pub fn with_token(snap: Snapshot, token: &str) -> Self {
        Self {
            access: Access::new(Some(token)),
            ..Self::new(snap)
        }
    }

    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

impl Source for FakeSource {
    fn access(&self) -> &Access {
        &self.access
    }

    fn snapshot(&self) -> Snapshot {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.snap.lock().unwrap().clone()
    }
}

/// A healthy gateway with a small backlog and distinct counter values.
pub fn healthy() -> Snapshot {
    Snapshot {
        gateway_id: "edge-7".into(),
        version: "1.2.3".into(),
        uptime_seconds: 12.5,
        mqtt: MqttStatus {
            connected: true,
            subscribed: true,
            refused_subscriptions: vec![],
            server: Some("mqtt://broker:1883".into()),
            last_error: None,
            accepting: true,
            session_present: true,
            session_lost: None,
            qos2_pending: 3,
            broker: Some(admin::BrokerStats {
                messages_dropped: Some(7),
                store_messages: Some(1500),
                store_bytes: None,
                age_seconds: 4.0,
            }),
        },
        wal: WalStatus {
            path: "/var/lib/mkg/wal.redb".into(),
            writable: true,
            last_error: None,
        },
        kafka: KafkaStatus {
            last_error: None,
            in_flight: 4,
            held_topics: vec![],
        },
        backlog: Backlog {
            records: 10,
            bytes: 2048,
            oldest_seq: Some(90),
            newest_seq: Some(99),
            oldest_age_seconds: Some(3.25),
            next_seq: 100,
            dropped: admin::Dropped {
                max_bytes: 0,
                max_records: 6,
                max_age: 0,
            },
        },
        dead_letters: DeadLetters {
            records: 2,
            bytes: 300,
            purged: 4,
            replayed: 5,
            dropped: 6,
        },
        rates: admin::Rates {
            ingest_1m: Some(120.5),
            drain_1m: Some(200.0),
            eta_empty_seconds: Some(12.5),
            disk_free_bytes: Some(1000),
            disk_headroom_bytes: Some(900),
            backlog_growth_bytes_per_second: Some(-80.0),
            ..admin::Rates::default()
        },
        counters: Counters {
            mqtt_messages_received: 101,
            mqtt_messages_acked: 102,
            mqtt_reconnects: 103,
            mqtt_sessions_lost: 112,
            mqtt_qos2_duplicates: 113,
            mqtt_subscriptions_refused: 114,
            mqtt_broker_drops: 115,
            wal_records_committed: 104,
            wal_commits: 105,
            wal_syncs: 111,
            wal_commit_errors: 106,
            kafka_records_forwarded: 107,
            kafka_records_dead_lettered: 108,
            wal_records_expired: 116,
            kafka_delivery_errors: 109,
            kafka_producer_rebuilds: 110,
            config_reloads: 117,
            config_reload_errors: 118,
        },
        config: admin::ConfigStatus::default(),
        wal_commit_seconds: Histogram {
            buckets: vec![(0.001, 100), (0.02, 104)],
            sum: 0.125,
            count: 105,
        },
        wal_checkpoint_seconds: Histogram {
            buckets: vec![(0.01, 2), (0.05, 3)],
            sum: 0.07,
            count: 3,
        },
        record_latency: admin::RecordLatency {
            durable: Histogram {
                buckets: vec![(0.01, 90), (0.02, 99)],
                sum: 0.8,
                count: 100,
            },
            produced: Histogram {
                buckets: vec![(0.001, 97), (0.02, 100)],
                sum: 0.05,
                count: 100,
            },
            delivered: Histogram {
                buckets: vec![(0.01, 95), (0.02, 100)],
                sum: 0.6,
                count: 100,
            },
        },
    }
}
