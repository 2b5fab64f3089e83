//! What the forwarder does when Kafka refuses a record (the refusal ladder) or a
//! whole topic (a hold, [`super::hold`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;

use super::hold::{Lookup, Stage, Verdict};
use super::Forwarder;

/// A record Kafka refused for good. The broker refuses whole batches (one record with
/// a bad timestamp or no key for a compacted topic fails its batch-mates too; a batch
/// above the topic's `max.message.bytes` fails although each record fits), so a
/// refused record is not parked at once: it is sent again alone, nothing else in
/// flight, and parked only if it is refused alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Suspect {
    /// Refused in a batch: send it alone, as it was.
    Alone,
    /// Refused alone with INVALID_RECORD or INVALID_TIMESTAMP: its receive time may be
    /// what the broker refused (the topic's `message.timestamp.before/after.max.ms`,
    /// or the gateway's clock was wrong when it arrived), so send it alone stamped with
    /// the time of sending; the receive time stays in the `gateway.received_at_ms`
    /// header.
    Restamped,
}

impl Forwarder {
    /// Kafka refused in-flight record `seq` for good: send it alone, then alone and
    /// restamped, and park it only when that is refused too.
    pub(super) fn on_refused(&mut self, seq: u64, e: &KafkaError) {
        let alone = self.window.in_flight() == 1;
        // An illegal topic name holds for every record of it: sending it alone would
        // change nothing.
        let topic_wide = e.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidTopic);
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
                if alone && next == Suspect::Restamped {
                    // Nothing else in flight: read it again without a rebuild.
                    self.window.rewind(seq);
                    self.holds.forget_from(seq);
                } else {
                    self.need_rebuild
                        .get_or_insert_with(|| format!("Kafka refused record {seq}: {e}"));
                }
            }
            None => {
                tracing::warn!(seq, error = %e, "Kafka refused the record alone, for good; parking it in the dead-letter table");
                self.suspects.remove(&seq);
                self.dead_letter(seq, format!("kafka delivery failed: {e}"));
                self.window.done(seq);
            }
        }
    }

    /// Kafka refused in-flight record `seq`'s whole topic (`topic`, as the delivery
    /// report named it).
    pub(super) fn on_topic_refused(&mut self, seq: u64, topic: Option<String>, e: &KafkaError) {
        let Some(topic) = topic else {
            // Every failed report names its topic; without one, the ladder decides.
            return self.on_refused(seq, e);
        };
        self.suspects.remove(&seq);
        self.window.hold(seq);
        self.hold_topic(&Arc::from(topic), seq, &super::producer::topic_refusal(e));
    }

    /// Hold record `seq` (already held in the window) under refused topic `topic`.
    pub(super) fn hold_topic(&mut self, topic: &Arc<str>, seq: u64, reason: &str) {
        if self.holds.refuse(topic, seq, reason, Instant::now()) {
            tracing::warn!(
                %topic,
                error = %reason,
                grace = %humantime::format_duration(self.opts.unknown_topic_grace),
                "Kafka refuses this topic: holding its records and retrying with backoff while the other topics flow; \
                 they are parked in the dead-letter table if it is still refused after forward.unknown_topic_grace \
                 (create the topic, or allow the gateway to write it)"
            );
        }
        self.want_topics.store(self.holds.any_released(), Relaxed);
        self.show_holds();
    }

    /// A record of `topic` was delivered (reports name the topic while topics are
    /// held).
    pub(super) fn topic_delivered(&mut self, topic: &str) {
        if let Some(h) = self.holds.delivered(topic) {
            tracing::info!(
                topic,
                refused_for = %humantime::format_duration(Duration::from_secs(h.since.elapsed().as_secs())),
                parked = h.parked,
                "Kafka accepts this topic again"
            );
            self.want_topics.store(self.holds.any_released(), Relaxed);
            self.show_holds();
        }
    }

    /// Look the held topics that are due up in fresh metadata: release them, park their
    /// records (the grace is over) or keep waiting.
    pub(super) fn check_holds(&mut self) {
        if self.holds.is_empty() {
            return;
        }
        let now = Instant::now();
        for topic in self.holds.due(now) {
            let found = self.lookup(&topic);
            match self.holds.looked_up(&topic, found, Instant::now()) {
                Verdict::Release => tracing::info!(
                    %topic,
                    "the Kafka topic is in the metadata now: sending its held records again, in order"
                ),
                Verdict::Park(seqs) => {
                    let reason = self.holds.reason(&topic).unwrap_or_default();
                    tracing::warn!(
                        %topic,
                        records = seqs.len(),
                        grace = %humantime::format_duration(self.opts.unknown_topic_grace),
                        error = %reason,
                        "Kafka still refuses this topic after forward.unknown_topic_grace: parked its held records in the dead-letter table; \
                         its further records are parked as they are read until it accepts them"
                    );
                    let why = format!("kafka refused topic {topic} for longer than forward.unknown_topic_grace: {reason}");
                    for seq in seqs {
                        self.dead_letter(seq, why.clone());
                        self.window.done(seq);
                    }
                }
                Verdict::Wait => {}
            }
        }
        // Only a released topic waits for a delivery to end its hold.
        self.want_topics.store(self.holds.any_released(), Relaxed);
        self.show_holds();
    }

    /// Ask the cluster about `topic` (with auto-creation on, this creates it).
    fn lookup(&mut self, topic: &str) -> Lookup {
        let hb = &self.shared.heartbeats.forward;
        hb.beat();
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(2));
        hb.beat();
        let Ok(md) = md else {
            return Lookup::Unknown;
        };
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Lookup::Unknown;
        };
        use rdkafka::types::RDKafkaRespErr as E;
        match t.error() {
            None if !t.partitions().is_empty() => Lookup::Present,
            Some(
                E::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART
                | E::RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC
                | E::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            ) => Lookup::Refused,
            // Being created (no leader yet), or anything else: ask again later.
            _ => Lookup::Unknown,
        }
    }

    /// Copy the held topics to the admin view.
    pub(super) fn show_holds(&mut self) {
        let held: Vec<crate::state::HeldTopic> = self
            .holds
            .iter()
            .map(|(topic, h)| crate::state::HeldTopic {
                topic: topic.to_string(),
                reason: h.reason.clone(),
                refused_for: h.since.elapsed(),
                held_records: h.seqs.len() as u64,
                parked_records: h.parked,
                parking: h.stage == Stage::Parking,
            })
            .collect();
        *self
            .shared
            .kafka_held_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = held;
        self.holds_shown = Instant::now();
    }
}
