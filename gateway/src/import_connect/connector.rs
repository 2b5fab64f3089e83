//! The MQTT side: evokly's `MqttSourceConnector` keys (`MqttSourceConstant.java`) with
//! the defaults of `MqttSourceConnectorConfig.java`, and how `MqttSourceTask.java` used
//! them with Paho 1.0.2. What the records look like (`message_processor_class`,
//! converters, transforms) is in `records.rs`.

use std::path::PathBuf;

use super::plan::{toml_str, Got, Mapper, Setting, Which};
use crate::config::parse_server_uri;

/// The connector class this imports (Connect also accepts the simple class name and
/// the alias without `Connector`).
pub const CONNECTOR_CLASS: &str = "com.evokly.kafka.connect.mqtt.MqttSourceConnector";

/// The system's CA bundle on Debian, for `ssl://` brokers the connector trusted through
/// the JVM's default CAs.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

const C: Which = Which::Connector;

/// A connector key's value, or its default (`None`: the connector's default is null).
struct Value {
    got: Option<Got>,
    key: &'static str,
    default: Option<&'static str>,
}

impl Value {
    fn get(m: &mut Mapper, key: &'static str, default: Option<&'static str>) -> Self {
        Self {
            got: m.take(C, key),
            key,
            default,
        }
    }

    fn value(&self) -> Option<&str> {
        self.got.as_ref().map(|g| g.value.as_str()).or(self.default)
    }

    /// The comment naming the key and its value or default.
    fn source(&self) -> String {
        match (&self.got, self.default) {
            (Some(g), _) => g.source(),
            (None, Some(d)) => format!("connector: {} not set (its default: {d})", self.key),
            (None, None) => format!("connector: {} not set", self.key),
        }
    }
}

/// Map the MQTT connection keys and `name`, `connector.class`, `tasks.max`.
pub fn map(m: &mut Mapper) {
    connector_class(m);
    let name = m.take(C, "name");
    if let Some(t) = m.take(C, "tasks.max") {
        m.not_needed(
            &t,
            "one gateway process reads MQTT and writes Kafka, there are no tasks (the connector itself always ran one task, whatever tasks.max said)",
        );
    }
    let tls = server_uris(m);
    client_id(m, name);
    clean_session(m);
    seconds(m, "mqtt.connection_timeout", "connection_timeout", "30");
    seconds(m, "mqtt.keep_alive_interval", "keep_alive", "60");
    credentials(m);
    ssl_files(m, tls);
    topics(m);
    let topic = Value::get(m, "kafka.topic", Some("mqtt"));
    let name = topic.value().unwrap_or("mqtt").to_string();
    if let Err(e) = crate::route::validate_kafka_topic(&name) {
        m.error(format!("kafka.topic: {e}"));
    }
    m.plan
        .kafka
        .push(Setting::new("topic", toml_str(&name), vec![topic.source()]));
}

fn connector_class(m: &mut Mapper) {
    let Some(c) = m.take(C, "connector.class") else {
        m.error(format!(
            "connector.class is not set: this imports the connector file of {CONNECTOR_CLASS}"
        ));
        return;
    };
    if !matches!(
        c.value.as_str(),
        CONNECTOR_CLASS | "MqttSourceConnector" | "MqttSource"
    ) {
        m.error(format!(
            "connector.class={} is not evokly's MQTT source connector ({CONNECTOR_CLASS}): its keys mean other things, so it cannot be imported",
            c.value
        ));
    }
}

/// `mqtt.server_uris`; returns true when a URI uses TLS.
fn server_uris(m: &mut Mapper) -> bool {
    let v = Value::get(m, "mqtt.server_uris", Some("tcp://localhost:1883"));
    let list = v.value().unwrap_or_default().to_string();
    // Java's split(",") drops trailing empty strings; Paho refuses other empty ones.
    let mut uris: Vec<&str> = list.split(',').map(str::trim).collect();
    while uris.last() == Some(&"") {
        uris.pop();
    }
    let mut tls = false;
    if uris.is_empty() {
        m.error("mqtt.server_uris is empty");
    }
    for uri in &uris {
        match parse_server_uri(uri) {
            Ok(s) => tls |= s.tls,
            Err(e) => m.error(format!(
                "mqtt.server_uris: {e}; the gateway takes tcp:// and ssl:// (Paho's local:// has no equivalent)"
            )),
        }
    }
    let value = format!(
        "[{}]",
        uris.iter()
            .map(|u| toml_str(u))
            .collect::<Vec<_>>()
            .join(", ")
    );
    m.plan.mqtt.push(Setting::new(
        "server_uris",
        value,
        vec![v.source(), "Tried in turn, as Paho did.".into()],
    ));
    tls
}

/// A client id that stays the same across restarts, from the connector's name.
pub fn stable_client_id(name: Option<&str>) -> String {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        None => "mqtt-kafka-gateway".into(),
        Some(n) => {
            let clean: String = n
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("mqtt-kafka-gateway-{clean}")
        }
    }
}

fn client_id(m: &mut Mapper, name: Option<Got>) {
    let v = Value::get(m, "mqtt.client_id", None);
    let mut comments = vec![v.source()];
    let id = match v.value().filter(|s| !s.is_empty()) {
        Some(id) => {
            let id = id.to_string();
            m.note(
                "mqtt.client_id",
                format!(
                    "the gateway connects with the connector's client id {id:?}: stop the connector before starting the gateway (two clients with one id take the connection from each other)"
                ),
            );
            comments
                .push("Kept: Mosquitto keeps the gateway's persistent session by this id.".into());
            if let Some(n) = &name {
                m.not_needed(
                    n,
                    "the connector's name in Connect; the gateway names itself by gateway_id (the host name by default)",
                );
            }
            id
        }
        None => {
            let id = stable_client_id(name.as_ref().map(|n| n.value.as_str()));
            if let Some(n) = &name {
                comments.push(format!("{} (made from it)", n.source()));
            }
            m.note(
                "mqtt.client_id",
                format!(
                    "the connector made a random client id at every start; the gateway needs a fixed one, because Mosquitto keeps its persistent session by it: {id:?} (from the connector's name). Keep it unique among the broker's clients"
                ),
            );
            comments.push(
                "The gateway needs a FIXED id: Mosquitto keeps its persistent session by it."
                    .into(),
            );
            id
        }
    };
    if id.len() > 65535 {
        m.error("mqtt.client_id is longer than 65535 bytes");
    }
    m.plan
        .mqtt
        .push(Setting::new("client_id", toml_str(&id), comments));
}

fn clean_session(m: &mut Mapper) {
    let v = Value::get(m, "mqtt.clean_session", Some("true"));
    let said = v.value().unwrap_or("true").to_ascii_lowercase();
    if said != "true" && said != "false" {
        m.error(format!(
            "mqtt.clean_session={said:?} is not true or false (Connect refuses it too)"
        ));
    }
    let why = if said == "false" {
        "the connector ran with a clean session anyway (it only ever set true, Paho's default), so what Mosquitto held for it while it was away was lost"
    } else {
        "the connector used a clean session: what was published while it was away was lost"
    };
    m.note(
        "mqtt.clean_session",
        format!(
            "{why}. The gateway is set to clean_session = false, a persistent session: Mosquitto queues QoS 1 and 2 messages while the gateway is away and hands them over when it is back (size max_queued_messages in mosquitto.conf, see the README). Set true only to drop them"
        ),
    );
    m.plan.mqtt.push(Setting::new(
        "clean_session",
        "false".into(),
        vec![
            v.source(),
            "false = persistent session (recommended): Mosquitto queues messages while the".into(),
            "gateway is away. The connector always used a clean session (see the notes).".into(),
        ],
    ));
}

/// A whole number of seconds (Paho) as a duration string.
fn seconds(m: &mut Mapper, key: &'static str, gateway_key: &str, default: &'static str) {
    let v = Value::get(m, key, Some(default));
    let text = v.value().unwrap_or(default).to_string();
    let Ok(n) = text.parse::<i32>() else {
        m.error(format!("{key}={text:?} is not a whole number of seconds"));
        return;
    };
    let mut comments = vec![v.source(), "Paho took whole seconds.".into()];
    let secs = match n {
        n if n < 0 => {
            m.error(format!("{key}={n} is negative (Paho refuses it too)"));
            return;
        }
        0 if gateway_key == "connection_timeout" => {
            m.note(
                key,
                "0 meant no time limit to Paho; the gateway needs one and uses its default, 30 s",
            );
            comments.push("0 (no limit) is not allowed here: the gateway's default.".into());
            30
        }
        n if gateway_key == "keep_alive" && n > 65535 => {
            m.error(format!("{key}={n}: MQTT allows at most 65535 seconds"));
            return;
        }
        n => n,
    };
    m.plan.mqtt.push(Setting::new(
        gateway_key,
        toml_str(&format!("{secs}s")),
        comments,
    ));
}

fn credentials(m: &mut Mapper) {
    let user = m.take(C, "mqtt.user");
    let password = m.take(C, "mqtt.password");
    if let Some(u) = &user {
        m.plan.mqtt.push(Setting::new(
            "username",
            toml_str(&u.value),
            vec![u.source()],
        ));
    }
    let Some(p) = password else { return };
    if user.is_none() {
        m.note(
            "mqtt.password",
            "set without mqtt.user: Paho sends a password only with a user name, so the connector never used it; not imported",
        );
        m.not_needed(&p, "Paho ignored it without mqtt.user");
        return;
    }
    if p.value.ends_with(['\n', '\r']) {
        m.error("mqtt.password ends with a line break, which a password file cannot hold");
        return;
    }
    let path = m.out.file("mqtt.password");
    m.plan.files.push(super::plan::OutFile {
        path: path.clone(),
        content: format!("{}\n", p.value),
        secret: true,
        what: "the MQTT password",
    });
    m.plan.mqtt.push(Setting::new(
        "password_file",
        toml_str(&path.display().to_string()),
        vec![format!("{}: written to this file (mode 0600)", p.source())],
    ));
}

/// `mqtt.ssl.*`: PEM files (evokly's `SslUtils` reads them with Bouncy Castle's
/// `PEMParser`), used only when all three are set.
fn ssl_files(m: &mut Mapper, tls_uri: bool) {
    let ca = m.take(C, "mqtt.ssl.ca_cert");
    let cert = m.take(C, "mqtt.ssl.cert");
    let key = m.take(C, "mqtt.ssl.key");
    let all = ca.is_some() && cert.is_some() && key.is_some();
    let any = ca.is_some() || cert.is_some() || key.is_some();
    if any && !all {
        m.note(
            "mqtt.ssl",
            "the connector used mqtt.ssl.ca_cert, mqtt.ssl.cert and mqtt.ssl.key only when all three were set, so it ignored these; the gateway uses what it can (a CA alone is enough for ssl:// brokers)",
        );
    }
    if any && !tls_uri {
        m.note(
            "mqtt.ssl",
            "no ssl:// URI in mqtt.server_uris: the gateway uses [mqtt.tls] only for ssl:// brokers",
        );
    }
    if cert.is_some() != key.is_some() {
        m.error(
            "mqtt.ssl.cert and mqtt.ssl.key go together (a client certificate needs its key): set both or neither",
        );
        return;
    }
    let ca_setting = match &ca {
        Some(ca) => {
            let path = PathBuf::from(&ca.value);
            m.refers_to("mqtt.ssl.ca_cert", &path);
            Setting::new(
                "ca_file",
                toml_str(&ca.value),
                vec![ca.source(), "PEM, as the connector read it.".into()],
            )
        }
        None if tls_uri || cert.is_some() => {
            m.note(
                "mqtt.ssl.ca_cert",
                format!(
                    "not set: the connector trusted the JVM's default CAs; the gateway needs a CA file and is given the system's bundle {SYSTEM_CA_BUNDLE}. Use your broker's CA instead if it is a private one"
                ),
            );
            m.refers_to("mqtt.ssl.ca_cert", std::path::Path::new(SYSTEM_CA_BUNDLE));
            Setting::new(
                "ca_file",
                toml_str(SYSTEM_CA_BUNDLE),
                vec![
                    "connector: mqtt.ssl.ca_cert not set: the JVM's default CAs".into(),
                    "The system's CA bundle stands in for them.".into(),
                ],
            )
        }
        None => return,
    };
    m.plan.mqtt_tls.push(ca_setting);
    if let (Some(cert), Some(key)) = (cert, key) {
        for (got, name) in [(cert, "client_cert_file"), (key, "client_key_file")] {
            m.refers_to(&got.key, &PathBuf::from(&got.value));
            m.plan
                .mqtt_tls
                .push(Setting::new(name, toml_str(&got.value), vec![got.source()]));
        }
        m.note(
            "mqtt.ssl.key",
            "the gateway reads an unencrypted PEM key (PKCS#1, SEC1 or PKCS#8), as the connector's was (it decrypted with an empty password)",
        );
    }
}

fn topics(m: &mut Mapper) {
    let topic = Value::get(m, "mqtt.topic", Some("#"));
    let qos = Value::get(m, "mqtt.qos", Some("1"));
    let filter = topic.value().unwrap_or("#").to_string();
    if let Err(e) = crate::route::validate_filter(&filter) {
        m.error(format!("mqtt.topic: {e}"));
    }
    let q = qos.value().unwrap_or("1").to_string();
    let q = match q.parse::<u8>() {
        Ok(q @ 0..=2) => q,
        _ => {
            m.error(format!("mqtt.qos={q:?}: must be 0, 1 or 2"));
            return;
        }
    };
    m.plan.mqtt.push(Setting::new(
        "topics",
        format!("[{{ filter = {}, qos = {q} }}]", toml_str(&filter)),
        vec![
            topic.source(),
            qos.source(),
            "One filter, as the connector subscribed; add more filters here.".into(),
        ],
    ));
}
