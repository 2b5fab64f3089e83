//! MQTT -> WAL. The ingest task polls rumqttc's event loop and hands each PUBLISH to
//! the WAL thread, and acknowledges (PUBACK / PUBREC) each one only once the commit
//! holding it is durable, in the order received.
//!
//! The acknowledgements released by one durable commit are written to the socket
//! together and flushed once. Through `AsyncClient::ack`, rumqttc 0.25 flushes every
//! request on its own: one 4-byte `writev` and TCP segment per message, which Mosquitto
//! then reads one per event-loop pass and falls behind on (docs/BENCHMARKS.md). So the
//! ingest task writes them itself, between two `poll()`s: after each event, and when
//! the durable count moves while `poll()` waits (that drops the waiting `poll()`
//! future, which rumqttc's own `select!` does to it all the time too).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, PubAck, PubRec, QoS,
    Transport,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Loaded, ServerUri};
use crate::state::{self, Shared};
use crate::writer::{Pending, WalCmd};

/// One message waiting for its durable commit before being acknowledged.
#[derive(Debug)]
struct AckItem {
    /// Position in the append order (1-based).
    ticket: u64,
    pkid: u16,
    qos: QoS,
    /// Connection the message came on; an ack never crosses connections.
    connection: u64,
}

/// Build rumqttc options for one broker.
fn mqtt_options(loaded: &Loaded, server: &ServerUri) -> anyhow::Result<MqttOptions> {
    let m = &loaded.config.mqtt;
    let mut o = MqttOptions::new(m.client_id.clone(), server.host.clone(), server.port);
    o.set_manual_acks(true)
        .set_clean_session(m.clean_session)
        .set_keep_alive(m.keep_alive)
        .set_max_packet_size(m.max_packet_size.0 as usize, m.max_packet_size.0 as usize)
        .set_request_channel_capacity(65_536)
        .set_inflight(100);
    if let (Some(user), Some(pw)) = (&m.username, &loaded.password) {
        o.set_credentials(user.clone(), pw.expose());
    } else if let Some(user) = &m.username {
        o.set_credentials(user.clone(), "");
    }
    if server.tls {
        o.set_transport(Transport::tls_with_config(crate::tls::client_config(m)?));
    }
    Ok(o)
}

fn qos_u8(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn to_qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Run MQTT ingest until `shutdown` is cancelled; then acknowledge what is already
/// durable, disconnect and return.
pub async fn run(
    loaded: Arc<Loaded>,
    wal_tx: mpsc::Sender<WalCmd>,
    durable: watch::Receiver<u64>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let servers = &loaded.servers;
    let mut server_idx = 0usize;
    let (client, mut eventloop) = AsyncClient::new(mqtt_options(&loaded, &servers[0])?, 65_536);
    eventloop
        .network_options
        .set_connection_timeout(loaded.config.mqtt.connection_timeout.as_secs().max(1));

    let mut durable = durable;
    let mut connection = 0u64;
    let mut acks: VecDeque<AckItem> = VecDeque::new();
    let mut acked_ticket = 0u64;
    let flush_timeout = loaded
        .config
        .mqtt
        .connection_timeout
        .max(Duration::from_secs(1));

    let mut backoff = backoff::ExponentialBackoff {
        initial_interval: loaded.config.mqtt.reconnect_min_delay,
        max_interval: loaded.config.mqtt.reconnect_max_delay,
        randomization_factor: 0.3,
        multiplier: 2.0,
        max_elapsed_time: None,
        ..backoff::ExponentialBackoff::default()
    };
    let subscriptions: Vec<rumqttc::SubscribeFilter> = loaded
        .config
        .mqtt
        .topics
        .iter()
        .map(|t| rumqttc::SubscribeFilter::new(t.filter.clone(), to_qos(t.qos)))
        .collect();

    let mut ticket = 0u64;
    let mut last_acked_ticket = 0u64;
    let mut quick = crate::quickack::QuickAck::default();
    // One timer for the deferred quick ACK, moved only when its deadline does (at most
    // once per `quickack::MIN_INTERVAL`), not a new one for every message.
    let quick_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(quick_timer);
    let mut quick_armed: Option<std::time::Instant> = None;
    let mut connected = false;
    let mut failures_logged = 0u32;

    loop {
        let due = quick.due();
        if due != quick_armed {
            if let Some(t) = due {
                quick_timer.as_mut().reset(t.into());
            }
            quick_armed = due;
        }
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = durable.changed(), if !acks.is_empty() => {
                if r.is_err() {
                    anyhow::bail!("WAL thread stopped");
                }
                let d = *durable.borrow_and_update();
                send_acks(&mut eventloop, &mut acks, d, connection, &shared, &mut acked_ticket, flush_timeout).await;
                continue;
            }
            // A deferred quick TCP ACK (quickack.rs).
            _ = &mut quick_timer, if quick_armed.is_some() => {
                quick.fire();
                continue;
            }
            ev = state::beating(&shared.heartbeats.ingest, eventloop.poll()) => ev,
        };
        if acks.front().is_some_and(|a| a.ticket <= *durable.borrow()) {
            let d = *durable.borrow_and_update();
            send_acks(
                &mut eventloop,
                &mut acks,
                d,
                connection,
                &shared,
                &mut acked_ticket,
                flush_timeout,
            )
            .await;
        }
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                quick.after_read();
                ticket += 1;
                shared.counters.mqtt_messages_received.fetch_add(1, Relaxed);
                if p.qos != QoS::AtMostOnce {
                    last_acked_ticket = ticket;
                    acks.push_back(AckItem {
                        ticket,
                        pkid: p.pkid,
                        qos: p.qos,
                        connection,
                    });
                }
                let pending = Pending {
                    topic: p.topic,
                    payload: p.payload,
                    qos: qos_u8(p.qos),
                    retain: p.retain,
                    dup: p.dup,
                    receive_time_ms: now_ms(),
                };
                let send = wal_tx.send(WalCmd::Append(pending));
                if state::beating(&shared.heartbeats.ingest, send)
                    .await
                    .is_err()
                {
                    anyhow::bail!("WAL thread stopped");
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected = true;
                failures_logged = 0;
                backoff.reset();
                connection += 1;
                let server = &servers[server_idx];
                quick.attach(server.host.parse().ok(), server.port);
                shared.mqtt_connected.store(true, Relaxed);
                state::set(&shared.mqtt_server, Some(servers[server_idx].to_string()));
                state::set(&shared.mqtt_last_error, None);
                tracing::info!(
                    server = %servers[server_idx],
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                if let Err(e) = client.try_subscribe_many(subscriptions.clone()) {
                    tracing::error!(error = %e, "cannot queue SUBSCRIBE");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                for (code, sub) in s.return_codes.iter().zip(&subscriptions) {
                    if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                        let msg = format!("broker refused subscription to {:?}", sub.path);
                        tracing::error!("{msg} (check the broker's ACL for this user)");
                        state::set(&shared.mqtt_last_error, Some(msg));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                quick.detach();
                let was_connected = connected;
                connected = false;
                shared.mqtt_connected.store(false, Relaxed);
                shared.counters.mqtt_reconnects.fetch_add(1, Relaxed);
                let msg = describe(&e);
                state::set(&shared.mqtt_last_error, Some(msg.clone()));
                if was_connected {
                    tracing::warn!(server = %servers[server_idx], error = %msg, "MQTT connection lost; reconnecting");
                } else {
                    // Never connected (or the reconnect failed): try the next URI.
                    if failures_logged == 0 {
                        tracing::warn!(server = %servers[server_idx], error = %msg, "cannot connect to MQTT broker; retrying with backoff");
                    } else {
                        tracing::debug!(server = %servers[server_idx], error = %msg, "MQTT connect failed");
                    }
                    failures_logged += 1;
                    if servers.len() > 1 {
                        server_idx = (server_idx + 1) % servers.len();
                        eventloop.mqtt_options = mqtt_options(&loaded, &servers[server_idx])?;
                    }
                }
                let delay = backoff
                    .next_backoff()
                    .unwrap_or(loaded.config.mqtt.reconnect_max_delay);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = state::beating(&shared.heartbeats.ingest, tokio::time::sleep(delay)) => {}
                }
            }
        }
    }

    // Shutdown: take nothing new; acknowledge what is (or becomes) durable, so the
    // broker does not resend it; what was not acknowledged stays with the broker.
    shared.mqtt_accepting.store(false, Relaxed);
    if connected && last_acked_ticket > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let d = *durable.borrow_and_update();
            send_acks(
                &mut eventloop,
                &mut acks,
                d,
                connection,
                &shared,
                &mut acked_ticket,
                flush_timeout,
            )
            .await;
            if acked_ticket >= last_acked_ticket {
                break;
            }
            tokio::select! {
                r = durable.changed() => if r.is_err() { break },
                ev = eventloop.poll() => if ev.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("some durable messages were not acknowledged before shutdown; the broker will resend them (duplicates)");
                    break;
                }
            }
        }
    }
    if connected {
        let _ = client.try_disconnect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            tokio::select! {
                ev = eventloop.poll() => match ev {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    shared.mqtt_connected.store(false, Relaxed);
    tracing::info!("MQTT ingest stopped");
    Ok(())
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("connection refused by broker: {code:?} (check mqtt.username / password and the broker's ACL)")
        }
        other => other.to_string(),
    }
}

/// Acknowledge, in arrival order, every queued message whose ticket is `<= durable`,
/// writing the packets to the socket together and flushing once.
async fn send_acks(
    eventloop: &mut EventLoop,
    acks: &mut VecDeque<AckItem>,
    durable: u64,
    connection: u64,
    shared: &Shared,
    acked_ticket: &mut u64,
    flush_timeout: Duration,
) {
    let mut wrote = false;
    let mut broken = false;
    while acks.front().is_some_and(|a| a.ticket <= durable) {
        let item = acks.pop_front().expect("checked above");
        // A message from an earlier (or failing) connection is not acknowledged: the
        // broker resends it (with DUP) and the resend is acknowledged instead.
        if item.connection == connection && !broken {
            if let Some(net) = eventloop.network.as_mut() {
                #[cfg(feature = "failpoints")]
                crate::failpoint("ingest-after-commit-before-ack");
                let packet = match item.qos {
                    QoS::ExactlyOnce => Packet::PubRec(PubRec::new(item.pkid)),
                    _ => Packet::PubAck(PubAck::new(item.pkid)),
                };
                if net.write(packet).await.is_ok() {
                    wrote = true;
                    shared.counters.mqtt_messages_acked.fetch_add(1, Relaxed);
                } else {
                    // The connection is failing; poll() reports it.
                    broken = true;
                }
            }
        }
        *acked_ticket = item.ticket;
    }
    if wrote {
        if let Some(net) = eventloop.network.as_mut() {
            // On error or timeout the bytes stay buffered; poll() flushes or fails.
            let _ = tokio::time::timeout(flush_timeout, net.flush()).await;
        }
    }
}
