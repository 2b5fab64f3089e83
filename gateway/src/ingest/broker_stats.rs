//! The broker's own counters of what it dropped (`mqtt.broker_stats`).
//!
//! Mosquitto drops messages silently when a client's queue is full
//! (`max_queued_messages` / `max_queued_bytes`, while the gateway is away or behind)
//! and counts them only in `$SYS/broker/publish/messages/dropped`. Those messages
//! never reach the gateway, so no WAL can save them; the operator can only see it
//! here. The gateway subscribes to that topic and the store counters at QoS 0 (Mosquitto
//! republishes them every `sys_interval`, 10 s by default, retained), exports them,
//! and warns when the drop counter grows.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::route::filter_matches;
use crate::state::Shared;

/// The broker's count of messages dropped for full queues or in-flight limits.
pub const DROPPED: &str = "$SYS/broker/publish/messages/dropped";
/// Messages the broker holds (retained and queued).
pub const STORE_MESSAGES: &str = "$SYS/broker/store/messages/count";
/// Payload bytes of those.
pub const STORE_BYTES: &str = "$SYS/broker/store/messages/bytes";

/// The topics watched.
pub const TOPICS: [&str; 3] = [DROPPED, STORE_MESSAGES, STORE_BYTES];

/// Watches the broker's counters.
#[derive(Debug)]
pub struct Watch {
    /// The user's subscriptions cover these topics already (then their messages are
    /// stored as well, like any other).
    covered: Vec<bool>,
    /// Drop counter at the last report (kept across reconnects: drops while the
    /// gateway was away show at the next report).
    last_dropped: Option<u64>,
}

impl Watch {
    /// A watch next to the user's subscription `filters`.
    pub fn new<'a>(filters: impl Iterator<Item = &'a str> + Clone) -> Self {
        let covered = TOPICS
            .iter()
            .map(|t| filters.clone().any(|f| filter_matches(f, t)))
            .collect();
        Self {
            covered,
            last_dropped: None,
        }
    }

    /// Take the filters of `new` (a configuration reload), keeping what was learned.
    pub fn refilter(&mut self, new: Watch) {
        self.covered = new.covered;
    }

    /// Filters to subscribe to (QoS 0) besides the user's.
    pub fn filters(&self) -> impl Iterator<Item = &'static str> + '_ {
        TOPICS
            .iter()
            .zip(&self.covered)
            .filter(|(_, c)| !**c)
            .map(|(t, _)| *t)
    }

    /// A message on `topic` arrived. Returns true when it is one of the broker's
    /// counters that only the watch subscribed to (not to be stored).
    pub fn on_message(&mut self, topic: &str, payload: &[u8], shared: &Shared) -> bool {
        let Some(i) = TOPICS.iter().position(|t| *t == topic) else {
            return false;
        };
        let value = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let Some(v) = value {
            let mut stats = shared
                .broker_stats
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            stats.updated = Some(Instant::now());
            match topic {
                DROPPED => {
                    stats.messages_dropped = Some(v);
                    match self.last_dropped {
                        // A lower value: the broker restarted and counts from 0 again.
                        Some(before) if v > before => {
                            let n = v - before;
                            shared.counters.mqtt_broker_drops.fetch_add(n, Relaxed);
                            tracing::warn!(
                                dropped = n,
                                total = v,
                                "the MQTT broker dropped messages since its last report ($SYS/broker/publish/messages/dropped): \
                                 a client's queue was full (max_queued_messages / max_queued_bytes) or over its in-flight limit. \
                                 If the gateway was away or behind, these were the gateway's and never reached it: raise \
                                 max_queued_messages in mosquitto.conf (docs/DEPLOY.md)"
                            );
                        }
                        None if v > 0 => tracing::warn!(
                            total = v,
                            "the MQTT broker has dropped messages since it started ($SYS/broker/publish/messages/dropped), \
                             before the gateway watched: if the gateway was away longer than the broker's max_queued_messages \
                             allows, some were the gateway's and never reached it (docs/DEPLOY.md)"
                        ),
                        _ => {}
                    }
                    self.last_dropped = Some(v);
                }
                STORE_MESSAGES => stats.store_messages = Some(v),
                _ => stats.store_bytes = Some(v),
            }
        }
        !self.covered[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_of_the_drop_counter_is_counted_once_per_report() {
        let shared = Shared::default();
        let mut w = Watch::new(["sensors/#"].into_iter());
        assert_eq!(w.filters().count(), 3);
        assert!(w.on_message(DROPPED, b"5", &shared));
        assert!(w.on_message(DROPPED, b"5", &shared));
        assert!(w.on_message(DROPPED, b"12", &shared));
        assert_eq!(shared.counters.mqtt_broker_drops.load(Relaxed), 7);
        // A restarted broker counts from 0: not a drop; its next drops are.
        assert!(w.on_message(DROPPED, b"0", &shared));
        assert!(w.on_message(DROPPED, b"2", &shared));
        assert!(w.on_message(STORE_BYTES, b"4096\n", &shared));
        assert_eq!(shared.counters.mqtt_broker_drops.load(Relaxed), 9);
        let stats = shared.broker_stats.lock().unwrap().clone();
        assert_eq!(stats.messages_dropped, Some(2));
        assert_eq!(stats.store_bytes, Some(4096));
        assert!(!w.on_message("sensors/a", b"1", &shared));
    }

    #[test]
    fn topics_the_user_subscribed_to_are_stored_too() {
        let shared = Shared::default();
        let mut w = Watch::new(["$SYS/broker/publish/#"].into_iter());
        assert_eq!(
            w.filters().collect::<Vec<_>>(),
            vec![STORE_MESSAGES, STORE_BYTES]
        );
        // Counted and also stored (the user asked for it).
        assert!(!w.on_message(DROPPED, b"3", &shared));
        assert!(w.on_message(STORE_MESSAGES, b"3", &shared));
    }
}
