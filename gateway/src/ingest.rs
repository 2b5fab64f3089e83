//! MQTT -> WAL. The ingest task polls rumqttc's event loop and hands each PUBLISH to
//! the WAL thread; the acker task acknowledges (PUBACK / PUBREC) each one only once the
//! commit holding it is durable, in the order received.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, Transport};
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

    let connection = Arc::new(AtomicU64::new(0));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<AckItem>();
    let (acked_tx, mut acked_rx) = watch::channel(0u64);
    let acker = tokio::spawn(acker(
        client.clone(),
        ack_rx,
        durable.clone(),
        connection.clone(),
        acked_tx,
        shared.clone(),
    ));

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
    let mut connected = false;
    let mut failures_logged = 0u32;

    loop {
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            ev = state::beating(&shared.heartbeats.ingest, eventloop.poll()) => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                ticket += 1;
                shared.counters.mqtt_messages_received.fetch_add(1, Relaxed);
                if p.qos != QoS::AtMostOnce {
                    last_acked_ticket = ticket;
                    let _ = ack_tx.send(AckItem {
                        ticket,
                        pkid: p.pkid,
                        qos: p.qos,
                        connection: connection.load(Relaxed),
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
                connection.fetch_add(1, Relaxed);
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
            if *acked_rx.borrow() >= last_acked_ticket {
                break;
            }
            tokio::select! {
                r = acked_rx.changed() => if r.is_err() { break },
                ev = eventloop.poll() => if ev.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("some durable messages were not acknowledged before shutdown; the broker will resend them (duplicates)");
                    break;
                }
            }
        }
    }
    drop(ack_tx);
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
    acker.abort();
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

/// Acknowledge each message, in arrival order, once the WAL says it is durable.
async fn acker(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<AckItem>,
    mut durable: watch::Receiver<u64>,
    connection: Arc<AtomicU64>,
    acked: watch::Sender<u64>,
    shared: Arc<Shared>,
) {
    while let Some(item) = rx.recv().await {
        if *durable.borrow() < item.ticket && durable.wait_for(|d| *d >= item.ticket).await.is_err()
        {
            return; // WAL thread gone: never ack what is not durable.
        }
        if item.connection == connection.load(Relaxed) {
            #[cfg(feature = "failpoints")]
            crate::failpoint("ingest-after-commit-before-ack");
            let mut p = rumqttc::Publish::new("", item.qos, Vec::<u8>::new());
            p.pkid = item.pkid;
            if client.ack(&p).await.is_err() {
                return;
            }
            shared.counters.mqtt_messages_acked.fetch_add(1, Relaxed);
        }
        // Else it came on an earlier connection: the broker resends it (with DUP) and
        // the resend is acknowledged instead.
        acked.send_replace(item.ticket);
    }
}
