//! MQTT -> WAL. The ingest task polls rumqttc's event loop, hands each PUBLISH to the
//! WAL thread, and acknowledges it (PUBACK / PUBREC) only once the commit holding it
//! is durable, in the order received ([`acker`]). QoS 2 exchanges and the broker
//! session are tracked in [`session`], durably with the records.
//!
//! One message, step by step: `poll()` returns a PUBLISH -> [`Ingest::on_publish`]
//! numbers it (a ticket), sends `WalCmd::Append` and queues its acknowledgement -> the
//! WAL thread commits and, after the fsync, publishes the durable count -> the
//! `durable.changed()` branch of the loop writes every acknowledgement that count
//! covers, between two `poll()`s (dropping the waiting `poll()` future, which
//! rumqttc's own `select!` does to it all the time too).

mod acker;
mod broker_stats;
mod connect;
mod connection;
mod session;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Loaded;
use crate::state::{self, Shared};
use crate::writer::{Pending, WalCmd};
use acker::{Ack, Acker};
use broker_stats::Watch;
use connect::{mqtt_options, qos_u8, subscriptions};
use session::{Qos2, Session};

/// The receive time stamped on a record (milliseconds since the epoch).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The ingest task's state.
struct Ingest {
    /// The running configuration; a reload changes the subscriptions.
    config: watch::Receiver<Arc<Loaded>>,
    loaded: Arc<Loaded>,
    wal_tx: mpsc::Sender<WalCmd>,
    durable: watch::Receiver<u64>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    client: AsyncClient,
    eventloop: EventLoop,
    acker: Acker,
    session: Session,
    server_idx: usize,
    connected: bool,
    failures_logged: u32,
    /// The user's subscriptions, then the broker-stats ones.
    subscriptions: Vec<rumqttc::SubscribeFilter>,
    /// How many of `subscriptions` are the user's.
    user_subscriptions: usize,
    /// The broker's counters (`mqtt.broker_stats`).
    broker: Option<Watch>,
    /// Bytes of messages received and not yet committed and synced ([`QUEUE_BYTES`]).
    queue_bytes: Arc<Semaphore>,
}

/// Most bytes (payload and topic) of messages received and not yet durable in the WAL:
/// what waits in the channel to the WAL thread, in its batch and for its fsync. The
/// channel's count (4,096) bounds small messages; this bounds large ones (at 64 KiB,
/// 128 of them), whatever the broker sends before it gets the PUBACKs.
const QUEUE_BYTES: usize = 8 << 20;

/// Run MQTT ingest until `shutdown` is cancelled; then acknowledge what is already
/// durable, disconnect and return. `session` is the WAL's MQTT session state.
pub async fn run(
    mut config: watch::Receiver<Arc<Loaded>>,
    wal_tx: mpsc::Sender<WalCmd>,
    durable: watch::Receiver<u64>,
    shared: Arc<Shared>,
    session: wal::MqttSession,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let loaded = config.borrow_and_update().clone();
    let m = &loaded.config.mqtt;
    let (client, mut eventloop) =
        AsyncClient::new(mqtt_options(&loaded, &loaded.servers[0])?, 65_536);
    eventloop
        .network_options
        .set_connection_timeout(m.connection_timeout.as_secs().max(1));
    let session = Session::new(&m.client_id, m.clean_session, &session);
    shared
        .mqtt_qos2_pending
        .store(session.qos2_pending() as u64, Relaxed);
    let (subscriptions, user_subscriptions, broker) = subscriptions(&loaded);
    let mut ingest = Ingest {
        acker: Acker::new(m.connection_timeout.max(Duration::from_secs(1))),
        config,
        loaded: loaded.clone(),
        wal_tx,
        durable,
        shared,
        shutdown,
        client,
        eventloop,
        session,
        server_idx: 0,
        connected: false,
        failures_logged: 0,
        subscriptions,
        user_subscriptions,
        broker,
        queue_bytes: Arc::new(Semaphore::new(QUEUE_BYTES)),
    };
    ingest.serve().await?;
    ingest.stop().await;
    Ok(())
}

impl Ingest {
    /// Take a reloaded configuration: subscribe to what is new or changed, unsubscribe
    /// from what is gone (the broker keeps the persistent session's subscriptions
    /// across reconnects, so a removed filter must be unsubscribed).
    fn reconfigure(&mut self) {
        let loaded = self.config.borrow_and_update().clone();
        let (subscriptions, user, broker) = subscriptions(&loaded);
        self.loaded = loaded;
        if subscriptions == self.subscriptions {
            return;
        }
        let gone: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|old| !subscriptions.iter().any(|s| s.path == old.path))
            .map(|s| s.path.clone())
            .collect();
        // Not subscribed as configured until the broker acknowledges the change; set
        // before the log line, so that whoever sees the line sees /readyz wait too.
        if self.connected {
            self.shared.mqtt_subscribed.store(false, Relaxed);
        }
        tracing::info!(
            subscriptions = %subscriptions.iter().map(|s| format!("{} (QoS {})", s.path, qos_u8(s.qos))).collect::<Vec<_>>().join(", "),
            unsubscribed = %gone.join(", "),
            "MQTT subscriptions changed by the configuration reload"
        );
        self.subscriptions = subscriptions;
        self.user_subscriptions = user;
        // Keep what the watch learned about the broker's counters.
        match (self.broker.as_mut(), broker) {
            (Some(w), Some(new)) => w.refilter(new),
            (_, new) => self.broker = new,
        }
        if self.connected {
            for f in gone {
                if let Err(e) = self.client.try_unsubscribe(f) {
                    tracing::error!(error = %e, "cannot queue UNSUBSCRIBE");
                }
            }
            if let Err(e) = self.client.try_subscribe_many(self.subscriptions.clone()) {
                tracing::error!(error = %e, "cannot queue SUBSCRIBE");
            }
        }
    }

    /// The receive loop, until shutdown.
    async fn serve(&mut self) -> anyhow::Result<()> {
        let mut backoff = backoff::ExponentialBackoff {
            initial_interval: self.loaded.config.mqtt.reconnect_min_delay,
            max_interval: self.loaded.config.mqtt.reconnect_max_delay,
            randomization_factor: 0.3,
            multiplier: 2.0,
            max_elapsed_time: None,
            ..backoff::ExponentialBackoff::default()
        };
        let mut quick = crate::quickack::QuickAck::default();
        // One timer for the deferred quick ACK, moved only when its deadline does (at
        // most once per `quickack::MIN_INTERVAL`), not a new one for every message.
        let quick_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(quick_timer);
        let mut quick_armed: Option<std::time::Instant> = None;
        let mut config_open = true;

        loop {
            let due = quick.due();
            if due != quick_armed {
                if let Some(t) = due {
                    quick_timer.as_mut().reset(t.into());
                }
                quick_armed = due;
            }
            // While rumqttc connects (no network yet), `poll()` must not be dropped:
            // that would drop the half-made connection, after the broker may already
            // have taken the session over. Acknowledgements cannot be written then
            // anyway, and a reload is taken between two attempts.
            let up = self.eventloop.network.is_some();
            if !up && config_open && self.config.has_changed().unwrap_or(false) {
                self.reconfigure();
            }
            let event = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(()),
                r = self.durable.changed(), if up && self.acker.waiting() => {
                    if r.is_err() {
                        anyhow::bail!("WAL thread stopped");
                    }
                    self.send_acks().await;
                    continue;
                }
                // A deferred quick TCP ACK (quickack.rs).
                _ = &mut quick_timer, if up && quick_armed.is_some() => {
                    quick.fire();
                    continue;
                }
                r = self.config.changed(), if up && config_open => {
                    match r {
                        Ok(()) => self.reconfigure(),
                        // No more reloads (the sender is gone with the runtime).
                        Err(_) => config_open = false,
                    }
                    continue;
                }
                ev = state::beating(&self.shared.heartbeats.ingest, self.eventloop.poll()) => ev,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    quick.after_read();
                    self.on_publish(p).await?;
                }
                Ok(Event::Incoming(Packet::PubRel(r))) => {
                    if let Some(op) = self.session.on_pubrel(r.pkid) {
                        self.send_to_wal(WalCmd::Session(op)).await?;
                        self.update_qos2_gauge();
                    }
                    // After the release is durable: then the broker may reuse the id.
                    self.acker.push(Ack::Pubcomp(r.pkid));
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.failures_logged = 0;
                    backoff.reset();
                    let server = &self.loaded.servers[self.server_idx];
                    quick.attach(server.host.parse().ok(), server.port);
                    if !self.on_connack(ack.session_present).await? {
                        return Ok(());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => self.on_suback(&s),
                Ok(_) => {}
                Err(e) => {
                    quick.detach();
                    self.take_stale_events().await?;
                    self.on_connection_error(&e)?;
                    let delay = backoff
                        .next_backoff()
                        .unwrap_or(self.loaded.config.mqtt.reconnect_max_delay);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(()),
                        _ = state::beating(&self.shared.heartbeats.ingest, tokio::time::sleep(delay)) => {}
                    }
                }
            }
            // Also those queued just now for commands already on disk (a resent QoS 2
            // PUBLISH, a PUBREL with nothing to forget).
            if self.acker.ready(*self.durable.borrow()) {
                self.send_acks().await;
            }
        }
    }

    /// The packets rumqttc read in its last batch before the connection failed stay in
    /// its state (`MqttState::events`; `clean()` keeps them) and would come out of
    /// `poll()` after the next CONNACK, looking like arrivals on the new connection:
    /// their PUBACK / PUBREC would go out on it, for packet ids of the old one.
    /// Mosquitto 2.0.11 counts each such acknowledgement as a free in-flight slot
    /// without moving its queue on, and the next message a publisher sends then
    /// overtakes everything queued for the gateway (per-key order broken after a
    /// broker restart, `tests/e2e/order.rs`). So take them now, while the old
    /// connection is still the acker's: the publishes are stored and their
    /// acknowledgements dropped with the connection (the broker resends them; a QoS 2
    /// resend is recognised by its packet id), anything else is dropped (a PUBREL is
    /// resent too).
    async fn take_stale_events(&mut self) -> anyhow::Result<()> {
        let stale: Vec<Event> = self.eventloop.state.events.drain(..).collect();
        for ev in stale {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                self.on_publish(p).await?;
            }
        }
        Ok(())
    }

    /// Wait until the messages on their way to the WAL hold less than [`QUEUE_BYTES`]
    /// (a message larger than that waits until it is alone).
    async fn take_budget(&mut self, bytes: usize) -> anyhow::Result<OwnedSemaphorePermit> {
        let n = bytes.clamp(1, QUEUE_BYTES) as u32;
        let take = self.queue_bytes.clone().acquire_many_owned(n);
        match state::beating(&self.shared.heartbeats.ingest, take).await {
            Ok(permit) => Ok(permit),
            Err(_) => anyhow::bail!("ingest memory budget closed"),
        }
    }

    /// Send an ingest command to the WAL thread (numbered by the acker).
    async fn send_to_wal(&mut self, cmd: WalCmd) -> anyhow::Result<()> {
        self.acker.next_ticket();
        let send = self.wal_tx.send(cmd);
        if state::beating(&self.shared.heartbeats.ingest, send)
            .await
            .is_err()
        {
            anyhow::bail!("WAL thread stopped");
        }
        Ok(())
    }

    async fn on_publish(&mut self, p: rumqttc::Publish) -> anyhow::Result<()> {
        if p.topic.starts_with('$') {
            if let Some(w) = self.broker.as_mut() {
                if w.on_message(&p.topic, &p.payload, &self.shared) {
                    return Ok(());
                }
            }
        }
        let c = &self.shared.counters;
        c.mqtt_messages_received.fetch_add(1, Relaxed);
        let mut qos2_pkid = None;
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {}
            QoS::ExactlyOnce => match self.session.on_publish(p.pkid, p.dup) {
                Qos2::Duplicate => {
                    // Stored before (maybe not yet durable): PUBREC once everything
                    // sent so far is on disk, without a second copy.
                    tracing::debug!(pkid = p.pkid, topic = %p.topic, "QoS 2 resend of a stored message: PUBREC without storing it again");
                    c.mqtt_qos2_duplicates.fetch_add(1, Relaxed);
                    self.acker.push(Ack::Pubrec(p.pkid));
                    return Ok(());
                }
                Qos2::Store => {
                    qos2_pkid = Some(p.pkid);
                    self.update_qos2_gauge();
                }
            },
        }
        let (pkid, qos) = (p.pkid, p.qos);
        let budget = self.take_budget(p.payload.len() + p.topic.len()).await?;
        let pending = Pending {
            topic: p.topic,
            payload: p.payload,
            qos: qos_u8(p.qos),
            retain: p.retain,
            dup: p.dup,
            receive_time_ms: now_ms(),
            received: std::time::Instant::now(),
            qos2_pkid,
            budget: Some(budget),
        };
        self.send_to_wal(WalCmd::Append(pending)).await?;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.acker.push(Ack::Puback(pkid)),
            QoS::ExactlyOnce => self.acker.push(Ack::Pubrec(pkid)),
        }
        Ok(())
    }

    fn update_qos2_gauge(&self) {
        self.shared
            .mqtt_qos2_pending
            .store(self.session.qos2_pending() as u64, Relaxed);
    }

    async fn send_acks(&mut self) {
        let d = *self.durable.borrow_and_update();
        self.acker.send(&mut self.eventloop, d, &self.shared).await;
    }

    /// Shutdown: take nothing new; acknowledge what is (or becomes) durable, so the
    /// broker does not resend it; what was not acknowledged stays with the broker.
    async fn stop(&mut self) {
        self.shared.mqtt_accepting.store(false, Relaxed);
        if self.connected && self.acker.waiting() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                self.send_acks().await;
                if self.acker.done() {
                    break;
                }
                tokio::select! {
                    r = self.durable.changed() => if r.is_err() { break },
                    ev = self.eventloop.poll() => if ev.is_err() { break },
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::warn!("some durable messages were not acknowledged before shutdown; the broker will resend them (duplicates)");
                        break;
                    }
                }
            }
        }
        if self.connected {
            let _ = self.client.try_disconnect();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                tokio::select! {
                    ev = self.eventloop.poll() => match ev {
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        self.shared.mqtt_connected.store(false, Relaxed);
        self.shared.mqtt_subscribed.store(false, Relaxed);
        tracing::info!("MQTT ingest stopped");
    }
}
