//! Reading the WAL into the producer: [`Forwarder::fill`] reads records after the
//! cursor while the window has room, routes each one and sends, holds or parks it;
//! [`Forwarder::send`] builds the Kafka record (key, timestamp, headers).

use std::ops::ControlFlow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use wal::RecordRef;

use super::hold::Stage;
use super::producer::topic_refusal;
use super::refuse::Suspect;
use super::{classify, headers, Failure, Forwarder, MAX_OPEN_PER_RECORD};
use crate::config::KeyMode;
use crate::state;

/// Why a record could not be handed to the producer.
pub(super) enum SendError {
    /// librdkafka's queue is full: try again later.
    QueueFull,
    /// The record can never be sent as is.
    Permanent(String),
    /// Its topic is refused for now.
    Topic(String),
    /// Rebuild the producer.
    Retry(String),
}

/// What became of one record read.
enum Outcome {
    /// Handed to the producer (window bytes, receipt in Unix ms).
    Sent(u32, u64),
    /// Parked at once (no valid topic for it, or refused by the producer for good).
    Dead(String),
    /// Its topic is held: it waits.
    Held(u32, u64, Arc<str>),
    /// The producer refused its topic just now: hold the topic.
    Refused(u32, u64, Arc<str>, String),
    /// Its topic is past the grace: parked as read.
    Parked(Arc<str>),
}

/// What a record costs the in-flight window: what librdkafka holds for it until Kafka
/// acknowledges it, not only its size in the WAL, so that `max_in_flight_bytes`
/// bounds the process's memory. librdkafka keeps the message (payload, key, the six
/// headers) and, once it is in a produce request, that request's encoding of it: two
/// copies; plus its bookkeeping (the message, one allocation per header, the header
/// list), [`RECORD_BOOKKEEPING`] bytes. Measured (docs/BENCHMARKS.md, 5): the peak
/// RSS while draining grows by 1.3-1.8 KiB per record in flight with 256-byte
/// payloads; this counts 1.6 KiB for them.
pub(super) fn window_cost(r: &RecordRef<'_>, key: bool, gateway_id: usize) -> u32 {
    let key = if key { r.topic.len() } else { 0 };
    let message = r.payload.len() + key + r.topic.len() + gateway_id + HEADER_BYTES;
    (2 * message + RECORD_BOOKKEEPING).min(u32::MAX as usize) as u32
}

/// The six header names and the values besides the MQTT topic and the gateway id
/// (QoS, retain, receive time, sequence), rounded up.
const HEADER_BYTES: usize = 128;

/// librdkafka's per-message bookkeeping, see [`window_cost`].
const RECORD_BOOKKEEPING: usize = 768;

impl Forwarder {
    /// Send held records of released topics again, then read records after the cursor
    /// and hand them to the producer while the window has room. Returns true if
    /// anything was read or sent.
    pub(super) fn fill(&mut self) -> anyhow::Result<bool> {
        let mut sent_any = false;
        loop {
            // The window counts the records librdkafka holds, not the acknowledged
            // ones that wait for an earlier record (of another partition, say) before
            // the prefix can be deleted. Records in flight and held together are
            // bounded at MAX_OPEN_PER_RECORD x the window.
            let max = self.opts.max_in_flight_records;
            let room = max
                .saturating_sub(self.window.in_flight())
                .min((max * MAX_OPEN_PER_RECORD).saturating_sub(self.window.open()));
            let room_bytes = self
                .opts
                .max_in_flight_bytes
                .saturating_sub(self.window.in_flight_bytes());
            if room == 0 || room_bytes == 0 {
                return Ok(sent_any);
            }
            if let Some((topic, seq)) = self.holds.pop_release() {
                match self.resend_held(seq, &topic) {
                    Ok(()) => {
                        sent_any = true;
                        continue;
                    }
                    Err(()) => {
                        self.holds.unpop(&topic, seq);
                        return Ok(sent_any);
                    }
                }
            }
            // A refused record travels alone: nothing is sent while it is in flight,
            // and it is sent only when nothing else is.
            let cursor = self.window.cursor();
            let next_suspect = self.suspects.range(cursor..).next().map(|(s, _)| *s);
            if next_suspect.is_some() && self.suspects.keys().any(|s| self.window.is_in_flight(*s))
            {
                return Ok(sent_any);
            }
            let idle = self.window.in_flight() == 0;
            let mut alone = false;
            // The next record is a suspect and others are in flight: it waits for
            // their delivery reports (fill returns, the loop drains events).
            let mut suspect_waits = false;
            let mut queue_full = false;
            let mut outcomes: Vec<(u64, Outcome)> = Vec::new();
            let wal = self.wal.clone();
            let keyed = self.loaded.config.kafka.key == KeyMode::MqttTopic;
            let gateway_id = self.loaded.config.gateway_id.len();
            // The WAL stops at `room_bytes` of records as stored; the window counts
            // more per record (window_cost), so this pass stops on its own count too.
            let mut spent = 0usize;
            let now_ms = crate::ingest::now_ms();
            let read = wal.for_each_from(cursor, room.min(2048), room_bytes, |seq, rec| {
                let bytes = window_cost(&rec, keyed, gateway_id);
                let topic = match self.router.route(rec.topic) {
                    Ok(t) => t,
                    Err(reason) => {
                        outcomes.push((seq, Outcome::Dead(reason)));
                        return ControlFlow::Continue(());
                    }
                };
                match self.holds.on_read(&topic) {
                    Some(Stage::Parking) => {
                        outcomes.push((seq, Outcome::Parked(topic)));
                        return ControlFlow::Continue(());
                    }
                    Some(_) => {
                        outcomes.push((seq, Outcome::Held(bytes, rec.receive_time_ms, topic)));
                        return ControlFlow::Continue(());
                    }
                    None => {}
                }
                if next_suspect.is_some_and(|s| seq >= s) {
                    if !(idle && outcomes.is_empty()) {
                        suspect_waits = true;
                        return ControlFlow::Break(());
                    }
                    alone = true;
                }
                match self.send(seq, &rec, &topic) {
                    Ok(()) => {
                        let received = rec.receive_time_ms;
                        self.shared
                            .to_produced
                            .record_ms(now_ms.saturating_sub(received));
                        outcomes.push((seq, Outcome::Sent(bytes, received)));
                        spent += bytes as usize;
                        if spent >= room_bytes {
                            return ControlFlow::Break(());
                        }
                    }
                    Err(SendError::QueueFull) => {
                        queue_full = true;
                        return ControlFlow::Break(());
                    }
                    Err(SendError::Permanent(reason)) => {
                        outcomes.push((seq, Outcome::Dead(reason)))
                    }
                    Err(SendError::Topic(reason)) => outcomes.push((
                        seq,
                        Outcome::Refused(bytes, rec.receive_time_ms, topic, reason),
                    )),
                    Err(SendError::Retry(reason)) => {
                        self.need_rebuild.get_or_insert(reason);
                        return ControlFlow::Break(());
                    }
                }
                if alone {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            });
            let read = match read {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, cursor, "cannot read the WAL; retrying");
                    // While a failed reopen keeps the WAL closed, the WAL thread's
                    // error says why; "closed" would only hide it.
                    if !self.wal.is_closed() {
                        state::set(&self.shared.wal_last_error, Some(e.to_string()));
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    return Ok(sent_any);
                }
            };
            sent_any |= !outcomes.is_empty();
            for (seq, outcome) in outcomes {
                self.apply(seq, outcome);
            }
            if queue_full || alone || suspect_waits || read == 0 || self.need_rebuild.is_some() {
                return Ok(sent_any);
            }
        }
    }

    /// Record in the window (and the holds) what became of record `seq`.
    fn apply(&mut self, seq: u64, outcome: Outcome) {
        match outcome {
            Outcome::Sent(bytes, received) => self.window.sent(seq, bytes, received),
            Outcome::Dead(reason) => {
                self.suspects.remove(&seq);
                tracing::warn!(seq, %reason, "record cannot be sent; parking it in the dead-letter table");
                self.shared
                    .counters
                    .kafka_delivery_errors
                    .fetch_add(1, Relaxed);
                self.dead_letter(seq, reason);
                self.window.skipped(seq);
            }
            Outcome::Held(bytes, received, topic) => {
                self.window.held(seq, bytes, received);
                self.holds.add(&topic, seq);
            }
            Outcome::Refused(bytes, received, topic, reason) => {
                self.window.held(seq, bytes, received);
                self.hold_topic(&topic, seq, &reason);
            }
            Outcome::Parked(topic) => {
                self.window.skipped(seq);
                let reason = self.holds.reason(&topic).unwrap_or_default();
                self.dead_letter(
                    seq,
                    format!("kafka refused topic {topic} for longer than forward.unknown_topic_grace: {reason}"),
                );
                if let Some(n) = self.holds.parked_on_read(&topic, Instant::now()) {
                    tracing::warn!(%topic, records = n, "parked more records of a Kafka topic that is still refused, as they were read");
                }
            }
        }
    }

    /// Send held record `seq` of `topic` again. Err when it must wait (the producer's
    /// queue is full, or a rebuild is due).
    fn resend_held(&mut self, seq: u64, topic: &Arc<str>) -> Result<(), ()> {
        let wal = self.wal.clone();
        let mut result = None;
        let read = wal.for_each_from(seq, 1, usize::MAX, |s, rec| {
            if s == seq {
                result = Some(self.send(seq, &rec, topic));
            }
            ControlFlow::Break(())
        });
        match (read, result) {
            (Err(e), _) => {
                tracing::error!(error = %e, seq, "cannot read a held record from the WAL; retrying");
                Err(())
            }
            // Not in the WAL (cannot happen: it is above the watermark): nothing to send.
            (Ok(_), None) => {
                self.window.done(seq);
                Ok(())
            }
            (Ok(_), Some(Ok(()))) => {
                self.window.resend(seq);
                Ok(())
            }
            (Ok(_), Some(Err(SendError::QueueFull))) => Err(()),
            (Ok(_), Some(Err(SendError::Retry(reason)))) => {
                self.need_rebuild.get_or_insert(reason);
                Err(())
            }
            (Ok(_), Some(Err(SendError::Topic(reason)))) => {
                self.hold_topic(topic, seq, &reason);
                Ok(())
            }
            (Ok(_), Some(Err(SendError::Permanent(reason)))) => {
                tracing::warn!(seq, %reason, "record cannot be sent; parking it in the dead-letter table");
                self.dead_letter(seq, reason);
                self.window.done(seq);
                Ok(())
            }
        }
    }

    /// Hand record `seq` to the producer for Kafka topic `topic`.
    pub(super) fn send(
        &mut self,
        seq: u64,
        rec: &RecordRef<'_>,
        topic: &Arc<str>,
    ) -> Result<(), SendError> {
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
            BaseRecord::with_opaque_to(topic, seq as usize)
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
                    return Err(SendError::QueueFull);
                }
                match classify(&e) {
                    Failure::Permanent => {
                        Err(SendError::Permanent(format!("kafka refused record: {e}")))
                    }
                    Failure::Topic => Err(SendError::Topic(topic_refusal(&e))),
                    Failure::Retry => Err(SendError::Retry(format!("producer send failed: {e}"))),
                }
            }
        }
    }
}
