//! The MQTT session as the ingest sees it: which broker session the WAL's records come
//! from, and the incoming QoS 2 exchanges not yet released (kept durably in the WAL,
//! `wal::session`, so that QoS 2 is exactly-once into the WAL across crashes).
//!
//! A QoS 2 message goes: PUBLISH (stored with its packet id) -> PUBREC once durable ->
//! PUBREL -> the packet id forgotten -> PUBCOMP once that is durable. A crash anywhere
//! in between is resumed: a PUBLISH the broker resends with DUP for a packet id still
//! remembered is answered with PUBREC without being stored again; a PUBREL for a
//! packet id already forgotten is answered with PUBCOMP.
//!
//! The session id is a hash of the client id: a broker that answers a reconnect of
//! the same client id with `session_present = false` has lost what it queued for the
//! gateway ([`Connack::lost`]).

use std::collections::HashSet;

use crate::writer::SessionOp;

/// What a CONNACK means for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connack {
    /// The gateway had a persistent session with this client id, and the broker no
    /// longer has it: whatever it had queued for the gateway is gone.
    pub lost: bool,
    /// First connection of this WAL with this client id.
    pub first: bool,
    /// A session change to make durable before anything of this session is stored.
    pub reset: Option<SessionOp>,
}

/// What to do with a QoS 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2 {
    /// Store it, remembering its packet id.
    Store,
    /// A resend of a message already stored: answer PUBREC only.
    Duplicate,
}

/// The session state, loaded from the WAL at start and changed in step with the
/// commands sent to the WAL thread.
#[derive(Debug)]
pub struct Session {
    id: u64,
    clean: bool,
    /// The session the WAL's state belongs to.
    stored: Option<u64>,
    /// QoS 2 packet ids stored (or on their way to disk) and not released.
    qos2: HashSet<u16>,
    /// A PUBLISH without DUP for a remembered packet id was seen (logged once).
    warned_reuse: bool,
}

/// The session id of `client_id` (FNV-1a, stable across builds and platforms).
pub fn session_id(client_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Session {
    /// The session of `client_id` (with `clean_session`), from the WAL's state.
    pub fn new(client_id: &str, clean: bool, wal: &wal::MqttSession) -> Self {
        Self {
            id: session_id(client_id),
            clean,
            stored: wal.id,
            qos2: wal.qos2.iter().map(|(pkid, _)| *pkid).collect(),
            warned_reuse: false,
        }
    }

    /// QoS 2 exchanges not yet released.
    pub fn qos2_pending(&self) -> usize {
        self.qos2.len()
    }

    /// The broker answered CONNECT.
    pub fn on_connack(&mut self, session_present: bool) -> Connack {
        let ours = self.stored == Some(self.id);
        let lost = !self.clean && !session_present && ours;
        let first = !ours;
        // The broker forgot every exchange (no session), or the WAL's state belongs to
        // another session: start afresh, durably, before storing anything new.
        let reset = (first || (!session_present && !self.qos2.is_empty()))
            .then_some(SessionOp::Reset(self.id));
        if reset.is_some() {
            self.qos2.clear();
            self.stored = Some(self.id);
        }
        Connack { lost, first, reset }
    }

    /// A QoS 2 PUBLISH arrived.
    pub fn on_publish(&mut self, pkid: u16, dup: bool) -> Qos2 {
        if !self.qos2.insert(pkid) {
            if dup {
                return Qos2::Duplicate;
            }
            // The broker reuses a packet id only after PUBCOMP, so this is not a
            // resend: store it (a copy at worst, never a loss).
            if !self.warned_reuse {
                self.warned_reuse = true;
                tracing::warn!(
                    pkid,
                    "MQTT broker sent a new QoS 2 message (no DUP flag) with a packet id whose exchange is not released; storing it"
                );
            }
        }
        Qos2::Store
    }

    /// A PUBREL arrived: the change to make durable before PUBCOMP, if the packet id
    /// was remembered.
    pub fn on_pubrel(&mut self, pkid: u16) -> Option<SessionOp> {
        self.qos2.remove(&pkid).then_some(SessionOp::Release(pkid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_state(id: Option<u64>, pkids: &[u16]) -> wal::MqttSession {
        wal::MqttSession {
            id,
            qos2: pkids.iter().map(|p| (*p, 1)).collect(),
        }
    }

    #[test]
    fn a_fresh_wal_starts_its_session_without_calling_it_lost() {
        let mut s = Session::new("gw", false, &wal_state(None, &[]));
        let c = s.on_connack(false);
        assert_eq!(
            c,
            Connack {
                lost: false,
                first: true,
                reset: Some(SessionOp::Reset(session_id("gw")))
            }
        );
        // The next connection finds the broker's session.
        assert_eq!(
            s.on_connack(true),
            Connack {
                lost: false,
                first: false,
                reset: None
            }
        );
    }

    #[test]
    fn a_broker_without_our_session_lost_it() {
        let id = session_id("gw");
        let mut s = Session::new("gw", false, &wal_state(Some(id), &[4, 5]));
        let c = s.on_connack(false);
        assert!(c.lost && !c.first);
        assert_eq!(c.reset, Some(SessionOp::Reset(id)));
        assert_eq!(s.qos2_pending(), 0);
        // Nothing to forget the second time: no reset.
        assert_eq!(s.on_connack(false).reset, None);
        // A clean session is never "lost".
        let mut clean = Session::new("gw", true, &wal_state(Some(id), &[]));
        assert!(!clean.on_connack(false).lost);
    }

    #[test]
    fn another_client_id_starts_another_session() {
        let mut s = Session::new("new-id", false, &wal_state(Some(session_id("old")), &[1]));
        let c = s.on_connack(true);
        assert!(!c.lost && c.first);
        assert_eq!(c.reset, Some(SessionOp::Reset(session_id("new-id"))));
    }

    #[test]
    fn qos2_resends_are_recognised_until_released() {
        let mut s = Session::new("gw", false, &wal_state(Some(session_id("gw")), &[9]));
        // Remembered from before a crash: the resend is a copy.
        assert_eq!(s.on_publish(9, true), Qos2::Duplicate);
        assert_eq!(s.on_publish(10, false), Qos2::Store);
        assert_eq!(s.on_publish(10, true), Qos2::Duplicate);
        assert_eq!(s.on_pubrel(10), Some(SessionOp::Release(10)));
        // Released: a PUBREL again (resumed after a reconnect) has nothing to forget,
        // and the packet id is free for a new message.
        assert_eq!(s.on_pubrel(10), None);
        assert_eq!(s.on_publish(10, false), Qos2::Store);
        // Without DUP it is not a resend: stored again rather than lost.
        assert_eq!(s.on_publish(10, false), Qos2::Store);
        assert_eq!(s.qos2_pending(), 2);
    }
}
