//! A broker that refuses a subscription (SUBACK return code 0x80). Mosquitto 2.0.11
//! never does (its ACL grants the subscription and then delivers nothing, see
//! `secured.rs`); brokers with authorization at subscribe time do (EMQX, HiveMQ,
//! Mosquitto with an auth plugin). So this broker is a minimal MQTT 3.1.1 server here,
//! speaking through rumqttc's own packet codec: it refuses `secret/#` on the first
//! connection and grants everything on the next.
//!
//! The gateway: `/readyz` 503 naming the filter, `mkg_mqtt_subscriptions_refused_total`
//! counted, an error in the log; subscribed again at its next connection, ready again.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use harness::config::GatewayConfig;
use harness::{http_get, wait_until, Gateway};
use libtest_mimic::Failed;
use rumqttc::mqttbytes::v4::{ConnAck, Packet, SubAck};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use rumqttc::{ConnectReturnCode, SubscribeReasonCode};

use crate::{bin, fail, kafka};

const REFUSED: &str = "secret/#";

/// The broker's side of one connection: answers CONNECT, SUBSCRIBE (refusing
/// [`REFUSED`] while `subscribes` is 0) and PINGREQ; closes when `drop_now` is set.
fn serve(mut s: TcpStream, subscribes: Arc<AtomicUsize>, drop_now: Arc<AtomicBool>) {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if drop_now.swap(false, SeqCst) {
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => return,
        }
        loop {
            let reply = match Packet::read(&mut buf, 1 << 20) {
                Ok(Packet::Connect(_)) => {
                    Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))
                }
                Ok(Packet::Subscribe(sub)) => {
                    let first = subscribes.fetch_add(1, SeqCst) == 0;
                    let codes = sub
                        .filters
                        .iter()
                        .map(|f| {
                            if first && f.path == REFUSED {
                                SubscribeReasonCode::Failure
                            } else {
                                SubscribeReasonCode::Success(QoS::AtLeastOnce)
                            }
                        })
                        .collect();
                    Packet::SubAck(SubAck::new(sub.pkid, codes))
                }
                Ok(Packet::PingReq) => Packet::PingResp,
                Ok(Packet::Disconnect) => return,
                Ok(_) => continue,
                Err(CodecError::InsufficientBytes(_)) => break,
                Err(_) => return,
            };
            let mut out = BytesMut::new();
            reply.write(&mut out, 1 << 20).unwrap();
            if s.write_all(&out).is_err() {
                return;
            }
        }
    }
}

pub fn refused_subscription_fails_readyz_and_is_retried() -> Result<(), Failed> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let subscribes = Arc::new(AtomicUsize::new(0));
    let drop_now = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicUsize::new(0));
    {
        let (subscribes, drop_now, connections) =
            (subscribes.clone(), drop_now.clone(), connections.clone());
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                connections.fetch_add(1, SeqCst);
                let (subscribes, drop_now) = (subscribes.clone(), drop_now.clone());
                std::thread::spawn(move || serve(s, subscribes, drop_now));
            }
        });
    }
    let dir = tempfile::tempdir()?;
    let cfg = GatewayConfig::new(port, &kafka().bootstrap())
        .topic(&harness::unique("suback"))
        .topics(&[("sensors/#", 1), (REFUSED, 1)])
        .mqtt("broker_stats", false)
        // This broker keeps no session: not what is tested here.
        .mqtt("session_lost_alert", "0s")
        .mqtt("reconnect_min_delay", "100ms");
    let mut gw = Gateway::start(bin(), dir.path(), &cfg.toml());
    gw.wait_serving();
    let admin = gw.admin;
    wait_until(
        "/readyz to name the refused filter",
        Duration::from_secs(30),
        || http_get(admin, "/readyz").is_ok_and(|(s, b)| s == 503 && b.contains(REFUSED)),
    );
    let (_, why) = http_get(admin, "/readyz")?;
    let refused_metric = |n: u64| {
        http_get(admin, "/metrics").is_ok_and(|(_, m)| {
            m.lines()
                .any(|l| l == format!("mkg_mqtt_subscriptions_refused_total {n}"))
        })
    };
    if !refused_metric(1) {
        return Err(fail(format!(
            "mkg_mqtt_subscriptions_refused_total is not 1:\n{}",
            http_get(admin, "/metrics")?.1
        )));
    }
    if !gw.log().contains("MQTT broker refused the subscription") {
        return Err(fail(format!("the log does not say it:\n{}", gw.log())));
    }
    // Not a terminal: plain text, no colour codes (journald, files).
    if gw.log().contains('\u{1b}') {
        return Err(fail(format!(
            "escape codes in a log that is not a terminal:\n{}",
            gw.log()
        )));
    }
    eprintln!("refused: /readyz {why}");
    // The broker drops the connection: the gateway subscribes again and is granted.
    drop_now.store(true, SeqCst);
    wait_until(
        "ready after the next connection",
        Duration::from_secs(30),
        || http_get(admin, "/readyz").is_ok_and(|(s, _)| s == 200),
    );
    if subscribes.load(SeqCst) < 2 || connections.load(SeqCst) < 2 || !refused_metric(1) {
        return Err(fail(format!(
            "{} SUBSCRIBEs over {} connections",
            subscribes.load(SeqCst),
            connections.load(SeqCst)
        )));
    }
    Ok(())
}
