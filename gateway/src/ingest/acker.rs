//! The acknowledgements MQTT is owed, released in arrival order once the WAL has the
//! commit they wait for on disk (rule 1).
//!
//! Every ingest command sent to the WAL thread (a record, a session change) takes the
//! next ticket; the WAL thread publishes how many are durable. An acknowledgement waits
//! for every command sent before it was queued: a PUBACK / PUBREC for its record, a
//! PUBCOMP for the release of its packet id, a PUBREC for a resent QoS 2 message for
//! the record stored the first time.
//!
//! The acknowledgements released by one durable commit are written to the socket
//! together and flushed once. Through `AsyncClient::ack`, rumqttc flushes every request
//! on its own: one 4-byte `writev` and TCP segment per message, which Mosquitto then
//! reads one per event-loop pass and falls behind on (docs/BENCHMARKS.md). So the
//! ingest task writes them itself, between two `poll()`s.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rumqttc::{EventLoop, Packet, PubAck, PubComp, PubRec};

use crate::state::Shared;

/// An acknowledgement packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// QoS 1 PUBLISH stored.
    Puback(u16),
    /// QoS 2 PUBLISH stored.
    Pubrec(u16),
    /// QoS 2 packet id released.
    Pubcomp(u16),
}

impl Ack {
    fn packet(self) -> Packet {
        match self {
            Ack::Puback(pkid) => Packet::PubAck(PubAck::new(pkid)),
            Ack::Pubrec(pkid) => Packet::PubRec(PubRec::new(pkid)),
            Ack::Pubcomp(pkid) => Packet::PubComp(PubComp { pkid }),
        }
    }
}

#[derive(Debug)]
struct Item {
    /// Durable count this acknowledgement waits for.
    ticket: u64,
    ack: Ack,
    /// Connection it belongs to; an acknowledgement never crosses connections.
    connection: u64,
}

/// The acknowledgements waiting for the WAL, and the ticket and connection counters
/// they are numbered by.
#[derive(Debug)]
pub struct Acker {
    queue: VecDeque<Item>,
    /// Ingest commands sent to the WAL thread so far.
    ticket: u64,
    /// The connection now in use (counted from 1 at each CONNACK).
    connection: u64,
    flush_timeout: Duration,
}

impl Acker {
    /// An empty queue; a flush of the socket waits at most `flush_timeout`.
    pub fn new(flush_timeout: Duration) -> Self {
        Self {
            queue: VecDeque::new(),
            ticket: 0,
            connection: 0,
            flush_timeout,
        }
    }

    /// Number the next ingest command sent to the WAL thread.
    pub fn next_ticket(&mut self) -> u64 {
        self.ticket += 1;
        self.ticket
    }

    /// Ingest commands sent so far.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// A new connection is up: what was queued for earlier ones is never sent.
    pub fn connected(&mut self) {
        self.connection += 1;
    }

    /// Owe `ack` once every command sent so far is durable.
    pub fn push(&mut self, ack: Ack) {
        self.queue.push_back(Item {
            ticket: self.ticket,
            ack,
            connection: self.connection,
        });
    }

    /// True while acknowledgements wait.
    pub fn waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// True when the first waiting acknowledgement is covered by `durable`.
    pub fn ready(&self, durable: u64) -> bool {
        self.queue.front().is_some_and(|i| i.ticket <= durable)
    }

    /// True once nothing is owed for commands sent so far.
    pub fn done(&self) -> bool {
        self.queue.is_empty()
    }

    /// Write, in arrival order, every acknowledgement covered by `durable`, and flush
    /// once. One owed on an earlier connection is dropped: the broker resends the
    /// message (or the PUBREL) on the new one and that is acknowledged instead.
    pub async fn send(&mut self, eventloop: &mut EventLoop, durable: u64, shared: &Shared) {
        let mut wrote = false;
        let mut broken = false;
        while self.queue.front().is_some_and(|i| i.ticket <= durable) {
            let item = self.queue.pop_front().expect("checked above");
            if item.connection != self.connection || broken {
                continue;
            }
            let Some(net) = eventloop.network.as_mut() else {
                continue;
            };
            #[cfg(feature = "failpoints")]
            crate::failpoint("ingest-after-commit-before-ack");
            if net.write(item.ack.packet()).await.is_ok() {
                wrote = true;
                if !matches!(item.ack, Ack::Pubcomp(_)) {
                    shared.counters.mqtt_messages_acked.fetch_add(1, Relaxed);
                }
            } else {
                // The connection is failing; poll() reports it.
                broken = true;
            }
        }
        if wrote {
            if let Some(net) = eventloop.network.as_mut() {
                // On error or timeout the bytes stay buffered; poll() flushes or fails.
                let _ = tokio::time::timeout(self.flush_timeout, net.flush()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_wait_for_every_command_sent_before_them() {
        let mut a = Acker::new(Duration::from_secs(1));
        a.connected();
        let t1 = a.next_ticket();
        a.push(Ack::Pubrec(1));
        // A resend of packet 1 before its record is durable: no new command, same wait.
        a.push(Ack::Pubrec(1));
        let _t2 = a.next_ticket();
        a.push(Ack::Pubcomp(1));
        assert!(!a.ready(t1 - 1));
        assert!(a.ready(t1));
        assert_eq!(
            a.queue.iter().map(|i| i.ticket).collect::<Vec<_>>(),
            vec![1, 1, 2]
        );
        assert!(!a.done());
    }
}
