//! The MQTT connection's settings: rumqttc options for one broker, the subscriptions
//! (the user's and the broker-stats watch's), and how a connection error is described
//! to an operator.

use rumqttc::{ConnectionError, MqttOptions, QoS, Transport};

use super::broker_stats::Watch;
use crate::config::{Loaded, ServerUri};

/// Build rumqttc options for one broker.
pub(super) fn mqtt_options(loaded: &Loaded, server: &ServerUri) -> anyhow::Result<MqttOptions> {
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

pub(super) fn qos_u8(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

pub(super) fn to_qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The subscriptions of `loaded`: the user's, then those of the broker-stats watch;
/// how many are the user's; the watch.
pub(super) fn subscriptions(
    loaded: &Loaded,
) -> (Vec<rumqttc::SubscribeFilter>, usize, Option<Watch>) {
    let m = &loaded.config.mqtt;
    let mut subscriptions: Vec<_> = m
        .topics
        .iter()
        .map(|t| rumqttc::SubscribeFilter::new(t.filter.clone(), to_qos(t.qos)))
        .collect();
    let user = subscriptions.len();
    let broker = m
        .broker_stats
        .then(|| Watch::new(m.topics.iter().map(|t| t.filter.as_str())));
    for f in broker.iter().flat_map(|w| w.filters()) {
        subscriptions.push(rumqttc::SubscribeFilter::new(f.into(), QoS::AtMostOnce));
    }
    (subscriptions, user, broker)
}

/// An operator's description of `e` (a refused connection names what to check).
pub(super) fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("connection refused by broker: {code:?} (check mqtt.username / password and the broker's ACL)")
        }
        other => other.to_string(),
    }
}
