//! The gateway's counters, declared once: the live atomics the gateway increments
//! ([`AtomicCounters`]), the copy a snapshot carries (and `/status` shows,
//! [`Counters`]), and their Prometheus names and help (`/metrics`). Adding a counter is
//! one line here.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

macro_rules! counters {
    ($( $field:ident => $metric:literal, $help:literal; )*) => {
        /// Monotonic counters since process start, exported as Prometheus `_total`
        /// counters.
        #[derive(Debug, Clone, Default, Serialize)]
        pub struct Counters {
            $( #[doc = $help] pub $field: u64, )*
        }

        /// The counters as the gateway keeps them: lock-free, incremented where things
        /// happen, copied into a [`Counters`] for each answer.
        #[derive(Debug, Default)]
        pub struct AtomicCounters {
            $( #[doc = $help] pub $field: AtomicU64, )*
        }

        impl AtomicCounters {
            /// A copy of every counter now.
            pub fn snapshot(&self) -> Counters {
                Counters { $( $field: self.$field.load(Relaxed), )* }
            }
        }

        impl Counters {
            /// (Prometheus name, help, value) of every counter.
            pub(crate) fn metrics(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![ $( ($metric, $help, self.$field), )* ]
            }
        }
    };
}

counters! {
    mqtt_messages_received => "mkg_mqtt_messages_received_total", "MQTT publishes received.";
    mqtt_messages_acked => "mkg_mqtt_messages_acked_total", "MQTT publishes acknowledged (PUBACK / PUBREC) after a durable WAL commit.";
    mqtt_reconnects => "mkg_mqtt_reconnects_total", "MQTT connections lost (or never made) and retried.";
    mqtt_sessions_lost => "mkg_mqtt_sessions_lost_total", "Reconnects on which the broker had lost the gateway's persistent session (what it had queued may be lost).";
    mqtt_subscriptions_refused => "mkg_mqtt_subscriptions_refused_total", "Subscriptions the broker refused (SUBACK failure; its ACL), per filter and connection.";
    mqtt_broker_drops => "mkg_mqtt_broker_drops_total", "Growth of the broker's $SYS/broker/publish/messages/dropped seen by the gateway: messages it dropped for full queues or in-flight limits (all clients).";
    mqtt_qos2_duplicates => "mkg_mqtt_qos2_duplicates_total", "QoS 2 messages the broker resent that were already stored (answered, not stored again).";
    wal_records_committed => "mkg_wal_records_committed_total", "Records committed durably to the WAL.";
    wal_commits => "mkg_wal_commits_total", "WAL write transactions committed (each may hold many records).";
    wal_syncs => "mkg_wal_syncs_total", "WAL fsyncs that made appended records durable (each may cover many commits).";
    wal_commit_errors => "mkg_wal_commit_errors_total", "Failed WAL commits, fsyncs and reopens (retried).";
    wal_records_expired => "mkg_wal_records_expired_total", "Records moved to the dead-letter table for being older than wal.max_age.";
    kafka_records_forwarded => "mkg_kafka_records_forwarded_total", "Records acknowledged by Kafka.";
    kafka_records_dead_lettered => "mkg_kafka_records_dead_lettered_total", "Records parked in the dead-letter table (refused by Kafka, or expired).";
    kafka_delivery_errors => "mkg_kafka_delivery_errors_total", "Failed Kafka deliveries (retried, held or parked).";
    kafka_producer_rebuilds => "mkg_kafka_producer_rebuilds_total", "Kafka producers rebuilt after a fatal or unrecoverable error.";
    config_reloads => "mkg_config_reloads_total", "Configuration reloads applied (SIGHUP).";
    config_reload_errors => "mkg_config_reload_errors_total", "Configuration reloads refused for a bad file (the running configuration stayed).";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_copies_every_counter_and_names_each_once() {
        let live = AtomicCounters::default();
        live.wal_syncs.fetch_add(3, Relaxed);
        let snap = live.snapshot();
        assert_eq!(snap.wal_syncs, 3);
        let metrics = snap.metrics();
        let mut names: Vec<_> = metrics.iter().map(|(n, _, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), metrics.len());
        assert!(metrics
            .iter()
            .all(|(n, h, _)| n.starts_with("mkg_") && n.ends_with("_total") && !h.is_empty()));
    }
}
