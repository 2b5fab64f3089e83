//! A publisher that keeps going across broker restarts and reports exactly which
//! messages the broker acknowledged.
//!
//! It uses rumqttc with a fixed client id and `clean_session = false`. When the
//! connection breaks it keeps polling (with a short pause) so rumqttc reconnects and
//! retransmits its unacknowledged publishes. rumqttc does not say which message a
//! packet id belongs to, so the mapping is rebuilt from the event stream:
//!
//! - messages are handed to the client one by one, in order, only while connected,
//!   and only from this task, between polls (the event loop is never cancelled);
//! - `Outgoing::Publish(pkid)` for a pkid that is not outstanding is the first
//!   transmission of the oldest handed message (rumqttc keeps request order);
//!   for an outstanding pkid it is a retransmission after a reconnect;
//! - `Incoming::PubAck(pkid)` (QoS 1) / `Incoming::PubRec(pkid)` (QoS 2) marks the
//!   message of that pkid acknowledged: from then on the broker owns it.
//! - If the broker comes back without our session (`session_present = false`),
//!   rumqttc drops its pending publishes: the outstanding and not yet transmitted
//!   messages are handed again (as new publishes).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{runtime, unique, Published};

/// Settings for [`publish_resilient_with`].
#[derive(Debug, Clone)]
pub struct ResilientOptions {
    /// MQTT client id (keep it fixed: the persistent session is keyed by it).
    pub client_id: String,
    /// Most QoS 1/2 publishes awaiting acknowledgement.
    pub inflight: u16,
    /// Messages handed to the client per second (0 = no limit).
    pub rate_per_sec: u32,
    /// Pause after a connection error before polling (reconnecting) again.
    pub reconnect_delay: Duration,
    /// If set, kept equal to the number of messages acknowledged so far (for tests
    /// that act in the middle of the stream).
    pub progress: Option<Arc<AtomicUsize>>,
}

impl Default for ResilientOptions {
    fn default() -> Self {
        Self {
            client_id: unique("resilient"),
            inflight: 50,
            rate_per_sec: 2_000,
            reconnect_delay: Duration::from_millis(50),
            progress: None,
        }
    }
}

/// What [`publish_resilient_with`] did.
#[derive(Debug, Clone, Default)]
pub struct ResilientOutcome {
    /// The messages the broker acknowledged (PUBACK, or PUBREC for QoS 2; for QoS 0,
    /// those written to the connection), in message order.
    pub published: Vec<Published>,
    /// Connection errors seen (each followed by reconnect attempts).
    pub connection_errors: usize,
    /// Successful connections (CONNACKs).
    pub connects: usize,
    /// Reconnections where the broker no longer had our session.
    pub sessions_lost: usize,
    /// Publishes sent again after a reconnect (same packet id, still unacknowledged).
    pub retransmissions: usize,
    /// The messages (indices into the list given) sent again as PUBLISH after a
    /// reconnect (QoS 2 only). A broker that lost its side of such an exchange in a
    /// restart takes the resend as a new message and delivers it again: a copy the
    /// subscriber cannot tell from a new message.
    pub republished: Vec<usize>,
}

/// Publish `messages` with QoS `qos`, riding out broker restarts, until all are
/// acknowledged or `timeout` passes. Returns exactly the acknowledged messages.
pub fn publish_resilient(
    port: u16,
    qos: u8,
    messages: &[(String, Vec<u8>)],
    timeout: Duration,
) -> Vec<Published> {
    publish_resilient_with(&ResilientOptions::default(), port, qos, messages, timeout).published
}

/// [`publish_resilient`] with explicit settings and statistics.
pub fn publish_resilient_with(
    opts: &ResilientOptions,
    port: u16,
    qos: u8,
    messages: &[(String, Vec<u8>)],
    timeout: Duration,
) -> ResilientOutcome {
    let opts = opts.clone();
    let messages = messages.to_vec();
    runtime().block_on(run(opts, port, qos, messages, timeout))
}

async fn run(
    opts: ResilientOptions,
    port: u16,
    qos: u8,
    messages: Vec<(String, Vec<u8>)>,
    timeout: Duration,
) -> ResilientOutcome {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    use tokio::time::Instant;

    let qos_v = match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let n = messages.len();
    let inflight = opts.inflight.max(1);
    let mut o = MqttOptions::new(opts.client_id.clone(), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_inflight(inflight)
        .set_max_packet_size(64 << 20, 64 << 20)
        .set_clean_session(false);
    // The request channel never fills: at most `inflight` messages are handed at once.
    let (client, mut el) = AsyncClient::new(o, inflight as usize + 16);

    let mut out = ResilientOutcome::default();
    // Messages not handed to the client yet, in order.
    let mut to_send: VecDeque<usize> = (0..n).collect();
    // Handed to the client, first transmission not seen yet, in order.
    let mut queued: VecDeque<usize> = VecDeque::new();
    // Transmitted and awaiting acknowledgement: pkid -> message index.
    let mut outstanding: HashMap<u16, usize> = HashMap::new();
    let mut acked = vec![false; n];
    let mut acked_count = 0usize;
    let progress = opts.progress.clone();
    let note = |count: usize| {
        if let Some(p) = &progress {
            p.store(count, Ordering::Relaxed);
        }
    };
    let mut connected = false;

    let deadline = Instant::now() + timeout;
    let slot = if opts.rate_per_sec == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs(1) / opts.rate_per_sec
    };
    // Pacing: the k-th hand-out is due at `start + k * slot`.
    let start = Instant::now();
    let mut handed_total: u32 = 0;

    while acked_count < n && Instant::now() < deadline {
        // Hand out what the pace and the inflight window allow (only while connected,
        // so that a session loss drops exactly `outstanding` and `queued`).
        let mut next_due = None;
        if connected {
            while let Some(&idx) = to_send.front() {
                if queued.len() + outstanding.len() >= inflight as usize {
                    break;
                }
                let due = start + slot * handed_total;
                if due > Instant::now() {
                    next_due = Some(due);
                    break;
                }
                let (topic, payload) = &messages[idx];
                if client
                    .try_publish(topic.clone(), qos_v, false, payload.clone())
                    .is_err()
                {
                    break; // channel full (cannot happen with the sizes above)
                }
                to_send.pop_front();
                queued.push_back(idx);
                handed_total += 1;
            }
            if queued.is_empty() && outstanding.is_empty() {
                if let Some(due) = next_due {
                    // Nothing for the event loop to do but wait: wait for the pace.
                    tokio::time::sleep_until(due.min(deadline)).await;
                    continue;
                }
            }
        }

        // Never cancel the event loop mid-poll except at the overall deadline.
        let ev = match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(ev) => ev,
            Err(_) => break,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                out.connects += 1;
                connected = true;
                if !ack.session_present && out.connects > 1 {
                    // rumqttc cleared its pending publishes: hand them again.
                    out.sessions_lost += 1;
                    let mut again: Vec<usize> = outstanding.drain().map(|(_, i)| i).collect();
                    again.extend(queued.drain(..));
                    again.sort_unstable();
                    for idx in again.into_iter().rev() {
                        to_send.push_front(idx);
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if qos_v == QoS::AtMostOnce {
                    if let Some(idx) = queued.pop_front() {
                        acked[idx] = true;
                        acked_count += 1;
                        note(acked_count);
                    }
                } else {
                    match outstanding.entry(pkid) {
                        Entry::Occupied(_) => out.retransmissions += 1,
                        Entry::Vacant(v) => {
                            if let Some(idx) = queued.pop_front() {
                                v.insert(idx);
                            }
                        }
                    }
                }
                // else: a stale event for a publish dropped with a lost session
                // (it was handed again).
            }
            Ok(Event::Incoming(Packet::PubAck(p))) if qos_v == QoS::AtLeastOnce => {
                if let Some(idx) = outstanding.remove(&p.pkid) {
                    if !acked[idx] {
                        acked[idx] = true;
                        acked_count += 1;
                        note(acked_count);
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubRec(p))) if qos_v == QoS::ExactlyOnce => {
                if let Some(idx) = outstanding.remove(&p.pkid) {
                    if !acked[idx] {
                        acked[idx] = true;
                        acked_count += 1;
                        note(acked_count);
                    }
                }
            }
            Ok(_) => {}
            Err(_) => {
                out.connection_errors += 1;
                connected = false;
                tokio::time::sleep(opts.reconnect_delay).await;
            }
        }
    }

    // Leave cleanly if we can (the session stays on the broker; harmless).
    if connected {
        let _ = client.try_disconnect();
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            match tokio::time::timeout_at(end, el.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
    }

    out.published = messages
        .into_iter()
        .zip(acked)
        .filter(|(_, a)| *a)
        .map(|((topic, payload), _)| Published { topic, payload })
        .collect();
    out
}
