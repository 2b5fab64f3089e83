//! What the broker connection's events change: a CONNACK (session present or lost,
//! resubscribe, what was owed on the old connection), a SUBACK (refused filters), a
//! connection error (backoff, the next server).

use std::sync::atomic::Ordering::Relaxed;

use rumqttc::ConnectionError;

use super::connect::{describe, mqtt_options};
use super::Ingest;
use crate::state;
use crate::writer::WalCmd;

impl Ingest {
    /// A connection is up. Returns false on shutdown.
    pub(super) async fn on_connack(&mut self, session_present: bool) -> anyhow::Result<bool> {
        self.connected = true;
        self.acker.connected();
        let server = self.loaded.servers[self.server_idx].to_string();
        let shared = self.shared.clone();
        shared.mqtt_connected.store(true, Relaxed);
        shared.mqtt_subscribed.store(false, Relaxed);
        shared.mqtt_session_present.store(session_present, Relaxed);
        state::set(&shared.mqtt_server, Some(server.clone()));
        state::set(&shared.mqtt_last_error, None);
        tracing::info!(%server, session_present, "connected to MQTT broker");
        let c = self.session.on_connack(session_present);
        let client_id = &self.loaded.config.mqtt.client_id;
        if c.lost {
            shared.counters.mqtt_sessions_lost.fetch_add(1, Relaxed);
            let msg = format!(
                "MQTT broker {server} has no session for client id {client_id:?} although the gateway had one (session_present=false): \
                 the messages it queued for the gateway while it was away, and those in flight, may be lost. \
                 Likely causes: the broker restarted without persistence, its persistence_location is not writable by its user \
                 (Mosquitto 2 drops root to user mosquitto), or the session expired (persistent_client_expiration)"
            );
            tracing::warn!("{msg}");
            shared.session_lost(msg);
        } else if c.first && !self.loaded.config.mqtt.clean_session {
            tracing::info!(
                client_id,
                session_present,
                "first connection of this WAL with this client id: the broker keeps a persistent session for it from now on"
            );
        }
        if let Some(op) = c.reset {
            self.update_qos2_gauge();
            // Durable before anything of this session is stored (wal::session): a
            // stale packet id would make a resend of a new message look like a copy.
            self.send_to_wal(WalCmd::Session(op)).await?;
            let ticket = self.acker.ticket();
            loop {
                if *self.durable.borrow() >= ticket {
                    break;
                }
                tokio::select! {
                    _ = self.shutdown.cancelled() => return Ok(false),
                    r = state::beating(&shared.heartbeats.ingest, self.durable.changed()) => {
                        if r.is_err() {
                            anyhow::bail!("WAL thread stopped");
                        }
                    }
                }
            }
        }
        if let Err(e) = self.client.try_subscribe_many(self.subscriptions.clone()) {
            tracing::error!(error = %e, "cannot queue SUBSCRIBE");
        }
        Ok(true)
    }

    pub(super) fn on_suback(&mut self, s: &rumqttc::SubAck) {
        let mut refused = Vec::new();
        for (i, (code, sub)) in s.return_codes.iter().zip(&self.subscriptions).enumerate() {
            if !matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                continue;
            }
            if i >= self.user_subscriptions {
                tracing::info!(
                    filter = %sub.path,
                    "MQTT broker refused the subscription to its own counters: its drops are not watched (allow this user to read $SYS/broker/# in the broker's ACL, or set mqtt.broker_stats = false)"
                );
                continue;
            }
            {
                tracing::error!(
                    filter = %sub.path,
                    "MQTT broker refused the subscription (check its ACL for this user); retried at the next connection"
                );
                refused.push(sub.path.clone());
            }
        }
        let c = &self.shared.counters;
        c.mqtt_subscriptions_refused
            .fetch_add(refused.len() as u64, Relaxed);
        self.shared
            .mqtt_subscribed
            .store(refused.is_empty(), Relaxed);
        *self
            .shared
            .mqtt_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = refused;
    }

    pub(super) fn on_connection_error(&mut self, e: &ConnectionError) -> anyhow::Result<()> {
        let was_connected = self.connected;
        self.connected = false;
        self.shared.mqtt_connected.store(false, Relaxed);
        self.shared.mqtt_subscribed.store(false, Relaxed);
        self.shared.counters.mqtt_reconnects.fetch_add(1, Relaxed);
        let msg = describe(e);
        state::set(&self.shared.mqtt_last_error, Some(msg.clone()));
        let servers = &self.loaded.servers;
        let server = &servers[self.server_idx];
        if was_connected {
            tracing::warn!(%server, error = %msg, "MQTT connection lost; reconnecting");
        } else {
            // Never connected (or the reconnect failed): try the next URI.
            if self.failures_logged == 0 {
                tracing::warn!(%server, error = %msg, "cannot connect to MQTT broker; retrying with backoff");
            } else {
                tracing::debug!(%server, error = %msg, "MQTT connect failed");
            }
            self.failures_logged += 1;
            if servers.len() > 1 {
                self.server_idx = (self.server_idx + 1) % servers.len();
                self.eventloop.mqtt_options =
                    mqtt_options(&self.loaded, &servers[self.server_idx])?;
            }
        }
        Ok(())
    }
}
