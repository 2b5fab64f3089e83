//! QoS 2 exchanges resumed across connections, against a scripted broker that sends
//! exactly the packets a real one sends after a reconnect (Mosquitto does the same, but
//! only at moments a test cannot choose; tests/e2e/qos2.rs runs it for real).
//!
//! Checks the patched rumqttc (vendor/README.md) and the gateway's session state:
//! a PUBREL for a packet id the client never saw on this connection is answered with
//! PUBCOMP and the connection stays up; a PUBLISH resent with DUP for a packet id
//! already stored is answered with PUBREC and not stored twice; PUBCOMP follows PUBREL.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use gateway::config::Config;
use rumqttc::SubscribeReasonCode;
use rumqttc::{ConnAck, ConnectReturnCode, Packet, PubRel, Publish, QoS, SubAck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const MAX: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(20);

/// One connection of the scripted broker.
struct Conn {
    sock: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn accept(listener: &TcpListener) -> Self {
        let (sock, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the gateway did not connect")
            .unwrap();
        Self {
            sock,
            buf: BytesMut::new(),
        }
    }

    /// The next packet from the gateway; panics on EOF or after [`WAIT`].
    async fn read(&mut self) -> Packet {
        tokio::time::timeout(WAIT, async {
            loop {
                match Packet::read(&mut self.buf, MAX) {
                    Ok(p) => return p,
                    Err(rumqttc::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("bad packet from the gateway: {e:?}"),
                }
                let n = self.sock.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "the gateway closed the connection");
            }
        })
        .await
        .expect("no packet from the gateway in time")
    }

    /// The next packet that is not a PINGREQ.
    async fn next(&mut self) -> Packet {
        loop {
            match self.read().await {
                Packet::PingReq => {
                    self.write(Packet::PingResp).await;
                }
                p => return p,
            }
        }
    }

    async fn write(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, MAX).unwrap();
        self.sock.write_all(&out).await.unwrap();
    }

    /// Answer CONNECT and SUBSCRIBE.
    async fn handshake(&mut self, session_present: bool) {
        assert!(matches!(self.next().await, Packet::Connect(..)));
        self.write(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            session_present,
        )))
        .await;
        match self.next().await {
            Packet::Subscribe(s) => {
                let codes = s
                    .filters
                    .iter()
                    .map(|f| SubscribeReasonCode::Success(f.qos))
                    .collect();
                self.write(Packet::SubAck(SubAck::new(s.pkid, codes))).await
            }
            other => panic!("expected SUBSCRIBE, got {other:?}"),
        }
    }
}

fn publish(pkid: u16, dup: bool, payload: &str) -> Packet {
    let mut p = Publish::new("alarms/door", QoS::ExactlyOnce, payload.as_bytes().to_vec());
    p.pkid = pkid;
    p.dup = dup;
    Packet::Publish(p)
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_qos2_exchanges_are_answered_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = format!(
        r#"
[mqtt]
server_uris = ["tcp://127.0.0.1:{port}"]
client_id = "resume-test"
reconnect_min_delay = "10ms"
reconnect_max_delay = "50ms"
topics = [{{ filter = "alarms/#", qos = 2 }}]
[kafka]
bootstrap_servers = "127.0.0.1:9"
[wal]
dir = "{}"
[admin]
listen = "127.0.0.1:0"
[shutdown]
grace_period = "100ms"
"#,
        dir.path().join("wal").display()
    );
    let loaded = Config::from_toml(&cfg, "test.toml").unwrap();
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let gw = tokio::spawn(gateway::run::run(loaded, shutdown.clone(), move |r| {
        let _ = ready_tx.send(r.admin_addr.unwrap());
    }));
    let admin = ready_rx.await.unwrap();

    // First connection: a new session. A message is stored and PUBRECed.
    let mut c = Conn::accept(&listener).await;
    c.handshake(false).await;
    c.write(publish(10, false, "open")).await;
    assert_eq!(c.next().await, Packet::PubRec(rumqttc::PubRec::new(10)));
    drop(c);

    // Second connection, session resumed: the broker did not get that PUBREC, so it
    // resends the PUBLISH with DUP; then releases it; then releases an exchange from
    // before this client's time (rumqttc forgot all of them at the reconnect).
    let mut c = Conn::accept(&listener).await;
    c.handshake(true).await;
    c.write(publish(10, true, "open")).await;
    assert_eq!(c.next().await, Packet::PubRec(rumqttc::PubRec::new(10)));
    c.write(Packet::PubRel(PubRel::new(10))).await;
    assert_eq!(
        c.next().await,
        Packet::PubComp(rumqttc::PubComp { pkid: 10 })
    );
    c.write(Packet::PubRel(PubRel::new(11))).await;
    assert_eq!(
        c.next().await,
        Packet::PubComp(rumqttc::PubComp { pkid: 11 })
    );
    // Packet id 10 is free again: a new message with it is stored.
    c.write(publish(10, false, "closed")).await;
    assert_eq!(c.next().await, Packet::PubRec(rumqttc::PubRec::new(10)));

    let s = status(admin).await;
    assert_eq!(s["backlog"]["records"], 2, "{s}");
    assert_eq!(s["counters"]["mqtt_qos2_duplicates"], 1, "{s}");
    assert_eq!(
        s["counters"]["mqtt_reconnects"], 1,
        "connection dropped: {s}"
    );
    assert_eq!(s["mqtt"]["qos2_pending"], 1, "{s}");
    assert_eq!(s["mqtt"]["session_present"], true, "{s}");

    shutdown.cancel();
    drop(c);
    tokio::time::timeout(WAIT, gw)
        .await
        .expect("gateway did not stop")
        .unwrap()
        .unwrap();

    // The exchange still open (packet id 10, "closed") survives a restart: its resend
    // is a copy. The WAL's session is this client id's, and the broker still has it.
    let loaded = Config::from_toml(&cfg, "test.toml").unwrap();
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let gw = tokio::spawn(gateway::run::run(loaded, shutdown.clone(), move |r| {
        let _ = ready_tx.send(r.admin_addr.unwrap());
    }));
    let admin = ready_rx.await.unwrap();
    let mut c = Conn::accept(&listener).await;
    c.handshake(true).await;
    c.write(publish(10, true, "closed")).await;
    assert_eq!(c.next().await, Packet::PubRec(rumqttc::PubRec::new(10)));
    let s = status(admin).await;
    assert_eq!(s["backlog"]["records"], 2, "{s}");
    assert_eq!(s["counters"]["mqtt_qos2_duplicates"], 1, "{s}");
    assert_eq!(s["counters"]["mqtt_sessions_lost"], 0, "{s}");
    shutdown.cancel();
    drop(c);
    tokio::time::timeout(WAIT, gw)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The packets read in the same batch as a broken one are stored, but never
/// acknowledged on the next connection (their packet ids belong to the old one; a
/// broker that counts such acknowledgements as free in-flight slots reorders its
/// queue): only the broker's resends are acknowledged, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_read_before_a_broken_connection_are_not_acknowledged_on_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = format!(
        r#"
[mqtt]
server_uris = ["tcp://127.0.0.1:{port}"]
client_id = "stale-test"
reconnect_min_delay = "10ms"
reconnect_max_delay = "50ms"
topics = [{{ filter = "alarms/#", qos = 2 }}]
broker_stats = false
[kafka]
bootstrap_servers = "127.0.0.1:9"
[wal]
dir = "{}"
[admin]
listen = "127.0.0.1:0"
[shutdown]
grace_period = "100ms"
"#,
        dir.path().join("wal").display()
    );
    let loaded = Config::from_toml(&cfg, "test.toml").unwrap();
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let gw = tokio::spawn(gateway::run::run(loaded, shutdown.clone(), move |r| {
        let _ = ready_tx.send(r.admin_addr.unwrap());
    }));
    let admin = ready_rx.await.unwrap();
    let q1 = |pkid: u16, dup: bool| {
        let mut p = Publish::new("alarms/x", QoS::AtLeastOnce, vec![pkid as u8]);
        p.pkid = pkid;
        p.dup = dup;
        Packet::Publish(p)
    };

    // Three publishes (QoS 1 and QoS 2) and a damaged packet in one segment: the
    // client reads the three, then fails on the fourth.
    let mut c = Conn::accept(&listener).await;
    c.handshake(false).await;
    let mut out = BytesMut::new();
    for p in [q1(1, false), q1(2, false), publish(3, false, "q2")] {
        p.write(&mut out, MAX).unwrap();
    }
    out.extend_from_slice(&[0x00, 0x00]);
    c.sock.write_all(&out).await.unwrap();

    // The broker resends them (DUP), then a new message.
    let mut c = Conn::accept(&listener).await;
    c.handshake(true).await;
    for p in [
        q1(1, true),
        q1(2, true),
        publish(3, true, "q2"),
        q1(4, false),
    ] {
        c.write(p).await;
    }
    let mut acks = Vec::new();
    while acks.len() < 4 {
        match c.next().await {
            Packet::PubAck(a) => acks.push(a.pkid),
            Packet::PubRec(r) => acks.push(r.pkid),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        acks,
        vec![1, 2, 3, 4],
        "acknowledgements of the old connection were sent"
    );
    let s = status(admin).await;
    // QoS 1: stored when read and again when resent; QoS 2: once.
    assert_eq!(s["backlog"]["records"], 6, "{s}");
    assert_eq!(s["counters"]["mqtt_qos2_duplicates"], 1, "{s}");
    shutdown.cancel();
    drop(c);
    tokio::time::timeout(WAIT, gw)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The broker lost the session: said loudly, and the exchanges it forgot are
/// forgotten here too (a new message reusing a packet id is stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_is_reported_and_its_exchanges_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = format!(
        r#"
[mqtt]
server_uris = ["tcp://127.0.0.1:{port}"]
client_id = "lost-test"
reconnect_min_delay = "10ms"
reconnect_max_delay = "50ms"
topics = [{{ filter = "alarms/#", qos = 2 }}]
[kafka]
bootstrap_servers = "127.0.0.1:9"
[wal]
dir = "{}"
[admin]
listen = "127.0.0.1:0"
[shutdown]
grace_period = "100ms"
"#,
        dir.path().join("wal").display()
    );
    let loaded = Config::from_toml(&cfg, "test.toml").unwrap();
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let gw = tokio::spawn(gateway::run::run(loaded, shutdown.clone(), move |r| {
        let _ = ready_tx.send(r.admin_addr.unwrap());
    }));
    let admin = ready_rx.await.unwrap();
    let mut c = Conn::accept(&listener).await;
    c.handshake(false).await;
    c.write(publish(3, false, "a")).await;
    assert_eq!(c.next().await, Packet::PubRec(rumqttc::PubRec::new(3)));
    drop(c);
    let s = status(admin).await;
    assert_eq!(s["counters"]["mqtt_sessions_lost"], 0, "{s}");

    // The broker restarted without persistence: no session.
    let mut c = Conn::accept(&listener).await;
    c.handshake(false).await;
    c.write(publish(3, true, "b")).await;
    assert_eq!(c.next().await, Packet::PubRec(rumqttc::PubRec::new(3)));
    let s = status(admin).await;
    assert_eq!(s["counters"]["mqtt_sessions_lost"], 1, "{s}");
    assert_eq!(
        s["backlog"]["records"], 2,
        "the new message was taken for a copy: {s}"
    );
    assert!(
        s["mqtt"]["session_lost"]["message"]
            .as_str()
            .unwrap()
            .contains("persistence"),
        "{s}"
    );
    let (code, body) = {
        let mut sock = TcpStream::connect(admin).await.unwrap();
        sock.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        sock.read_to_string(&mut text).await.unwrap();
        (text[9..12].to_string(), text)
    };
    assert_eq!(code, "503", "{body}");
    assert!(
        body.contains("lost the gateway's persistent session"),
        "{body}"
    );
    shutdown.cancel();
    drop(c);
    tokio::time::timeout(WAIT, gw)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
