//! A QoS 2 publisher that keeps its side of every exchange across broker restarts,
//! written on the MQTT codec alone (rumqttc's `mqttbytes`).
//!
//! rumqttc's own client is not used here: as a QoS 2 *sender* it resends PUBLISH
//! without the DUP flag after a reconnect, numbers new messages from packet id 1 again
//! while old exchanges are still open, and drops the connection on a PUBREC it does
//! not expect, losing the PUBREL it owed. Mosquitto delivers a QoS 2 message to
//! subscribers only when its PUBREL arrives, so each of those looks like a loss (or a
//! duplicate) that no gateway could have caused.
//!
//! The state machine (MQTT 3.1.1 4.3.3 and 4.4): a PUBLISH is outstanding until its
//! PUBREC (from then on the broker owns the message: it counts as acknowledged), then
//! its PUBREL is outstanding until PUBCOMP. On every reconnect with the session present,
//! the outstanding PUBLISHes are resent with DUP set and the outstanding PUBRELs
//! resent, with their packet ids; a packet id is reused only after PUBCOMP. The run
//! ends once every message is acknowledged *and* released, so the broker has delivered
//! them all.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{Connect, Packet, PubRel, Publish, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::publisher::{ResilientOptions, ResilientOutcome};
use crate::{runtime, Published};

const MAX_PACKET: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent, PUBREC awaited.
    Published,
    /// PUBREL sent, PUBCOMP awaited.
    Released,
}

/// Publish `messages` at QoS 2 with a persistent session, riding out broker restarts,
/// until every message is acknowledged and released or `timeout` passes. Returns the
/// messages the broker acknowledged (PUBREC) and the connection statistics.
pub fn publish_qos2(
    opts: &ResilientOptions,
    port: u16,
    messages: &[(String, Vec<u8>)],
    timeout: Duration,
) -> ResilientOutcome {
    let opts = opts.clone();
    let messages = messages.to_vec();
    runtime().block_on(run(opts, port, messages, timeout))
}

struct State {
    messages: Vec<(String, Vec<u8>)>,
    to_send: VecDeque<usize>,
    /// Open exchanges by packet id, in the order they were opened.
    open: BTreeMap<u16, (usize, Stage)>,
    /// Open order, for resending in the original order.
    order: VecDeque<u16>,
    next_pkid: u16,
    acked: Vec<bool>,
    acked_count: usize,
    out: ResilientOutcome,
}

impl State {
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.open.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    fn publish_packet(&self, pkid: u16, idx: usize, dup: bool) -> Packet {
        let (topic, payload) = &self.messages[idx];
        let mut p = Publish::new(topic.clone(), QoS::ExactlyOnce, payload.clone());
        p.pkid = pkid;
        p.dup = dup;
        Packet::Publish(p)
    }

    fn done(&self) -> bool {
        self.acked_count == self.messages.len() && self.open.is_empty()
    }
}

async fn run(
    opts: ResilientOptions,
    port: u16,
    messages: Vec<(String, Vec<u8>)>,
    timeout: Duration,
) -> ResilientOutcome {
    let n = messages.len();
    let deadline = Instant::now() + timeout;
    let mut s = State {
        to_send: (0..n).collect(),
        open: BTreeMap::new(),
        order: VecDeque::new(),
        next_pkid: 0,
        acked: vec![false; n],
        acked_count: 0,
        messages,
        out: ResilientOutcome::default(),
    };
    let slot = if opts.rate_per_sec == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs(1) / opts.rate_per_sec
    };
    let start = Instant::now();
    let mut handed: u32 = 0;
    let mut first = true;
    while !s.done() && Instant::now() < deadline {
        if !first {
            tokio::time::sleep(opts.reconnect_delay).await;
        }
        first = false;
        let Ok(Ok(mut conn)) =
            tokio::time::timeout(Duration::from_secs(5), Conn::open(port, &opts.client_id)).await
        else {
            s.out.connection_errors += 1;
            continue;
        };
        match session(&mut conn, &mut s, &opts, slot, start, &mut handed, deadline).await {
            Ok(()) => {
                let _ = conn.write(&Packet::Disconnect).await;
                break;
            }
            Err(_) => s.out.connection_errors += 1,
        }
    }
    let mut out = std::mem::take(&mut s.out);
    out.published = s
        .messages
        .into_iter()
        .zip(s.acked)
        .filter(|(_, a)| *a)
        .map(|((topic, payload), _)| Published { topic, payload })
        .collect();
    out
}

/// One connection: resume the open exchanges, then publish at the pace until done.
async fn session(
    conn: &mut Conn,
    s: &mut State,
    opts: &ResilientOptions,
    slot: Duration,
    start: Instant,
    handed: &mut u32,
    deadline: Instant,
) -> std::io::Result<()> {
    let session_present = match conn.read(deadline).await? {
        Packet::ConnAck(a) => a.session_present,
        other => {
            return Err(std::io::Error::other(format!(
                "expected CONNACK, got {other:?}"
            )))
        }
    };
    s.out.connects += 1;
    if s.out.connects > 1 && !session_present && !s.open.is_empty() {
        // The broker forgot the session: what it had not acknowledged is sent again as
        // new messages; what it had acknowledged is its loss (counted by the checker).
        s.out.sessions_lost += 1;
        let mut again = Vec::new();
        for pkid in s.order.drain(..) {
            if let Some((idx, Stage::Published)) = s.open.remove(&pkid) {
                again.push(idx);
            }
        }
        s.open.clear();
        for idx in again.into_iter().rev() {
            s.to_send.push_front(idx);
        }
    }
    // Resume: PUBLISH again (DUP) until PUBREC, PUBREL again until PUBCOMP.
    let resume: Vec<u16> = s.order.iter().copied().collect();
    for pkid in resume {
        let Some(&(idx, stage)) = s.open.get(&pkid) else {
            continue;
        };
        let p = match stage {
            Stage::Published => {
                s.out.republished.push(idx);
                s.publish_packet(pkid, idx, true)
            }
            Stage::Released => Packet::PubRel(PubRel::new(pkid)),
        };
        conn.write(&p).await?;
        s.out.retransmissions += 1;
    }
    let mut last_ping = Instant::now();
    loop {
        if s.done() {
            return Ok(());
        }
        // Open new exchanges as the pace and the window allow.
        let mut wake = deadline;
        while s.open.len() < opts.inflight.max(1) as usize {
            let Some(&idx) = s.to_send.front() else { break };
            let due = start + slot * *handed;
            if due > Instant::now() {
                wake = wake.min(due);
                break;
            }
            s.to_send.pop_front();
            *handed += 1;
            let pkid = s.pkid();
            s.open.insert(pkid, (idx, Stage::Published));
            s.order.push_back(pkid);
            conn.write(&s.publish_packet(pkid, idx, false)).await?;
        }
        if last_ping.elapsed() >= Duration::from_secs(2) {
            conn.write(&Packet::PingReq).await?;
            last_ping = Instant::now();
        }
        wake = wake.min(last_ping + Duration::from_secs(2));
        let packet = tokio::select! {
            p = conn.read(deadline) => p?,
            _ = tokio::time::sleep_until(wake) => continue,
        };
        match packet {
            Packet::PubRec(r) => {
                if let Some(e) = s.open.get_mut(&r.pkid) {
                    let idx = e.0;
                    e.1 = Stage::Released;
                    if !s.acked[idx] {
                        s.acked[idx] = true;
                        s.acked_count += 1;
                        if let Some(p) = &opts.progress {
                            p.store(s.acked_count, Ordering::Relaxed);
                        }
                    }
                }
                // PUBREL for a known exchange, and for an unknown one too (the broker
                // resends PUBREC only for exchanges it still has open).
                conn.write(&Packet::PubRel(PubRel::new(r.pkid))).await?;
            }
            Packet::PubComp(c) => {
                if s.open.remove(&c.pkid).is_some() {
                    s.order.retain(|p| *p != c.pkid);
                }
            }
            Packet::PingResp => {}
            other => {
                return Err(std::io::Error::other(format!("unexpected {other:?}")));
            }
        }
    }
}

struct Conn {
    sock: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn open(port: u16, client_id: &str) -> std::io::Result<Self> {
        let sock = TcpStream::connect(("127.0.0.1", port)).await?;
        sock.set_nodelay(true)?;
        let mut c = Self {
            sock,
            buf: BytesMut::new(),
        };
        let mut connect = Connect::new(client_id);
        connect.keep_alive = 5;
        connect.clean_session = false;
        c.write(&Packet::Connect(connect)).await?;
        Ok(c)
    }

    async fn write(&mut self, p: &Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        p.write(&mut out, MAX_PACKET)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        self.sock.write_all(&out).await
    }

    async fn read(&mut self, deadline: Instant) -> std::io::Result<Packet> {
        loop {
            match Packet::read(&mut self.buf, MAX_PACKET) {
                Ok(p) => return Ok(p),
                Err(rumqttc::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(std::io::Error::other(format!("{e:?}"))),
            }
            let n = tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.buf))
                .await
                .map_err(|_| std::io::Error::other("deadline"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}
