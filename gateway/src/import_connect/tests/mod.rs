//! Mapping tests: each connector key, what is refused, and that no secret leaves the
//! password files (the worker's keys: `worker.rs`).

use std::path::{Path, PathBuf};

use super::*;
use crate::config::{Config, PropertyValue};

mod worker;

const EVOKLY_EXAMPLE: &str =
    include_str!("../../../../tests/fixtures/import-connect/mqtt.properties");

const BASE: &str =
    "name=site-7\nconnector.class=com.evokly.kafka.connect.mqtt.MqttSourceConnector\n";

fn out() -> OutPaths {
    OutPaths {
        dir: PathBuf::from("/etc/gw"),
        stem: "gateway".into(),
    }
}

fn import(connector: &str, worker: Option<&str>) -> Plan {
    let c = properties::parse(connector).unwrap();
    let w = worker.map(|w| properties::parse(w).unwrap());
    map(
        (&c, "c.properties".into()),
        w.as_ref().map(|w| (w, "w.properties".into())),
        &out(),
    )
}

fn text(plan: &Plan) -> String {
    render::render(plan, &[], Path::new("/etc/gw/gateway.toml"))
}

/// The output as the gateway reads it (without the checks that read files).
fn config(plan: &Plan) -> Config {
    let t = text(plan);
    toml::from_str(&t).unwrap_or_else(|e| panic!("{e}\n{t}"))
}

fn clean(plan: &Plan) {
    assert!(plan.unknown.is_empty(), "unknown: {:?}", plan.unknown);
    assert!(plan.errors.is_empty(), "errors: {:?}", plan.errors);
}

fn notes(plan: &Plan) -> String {
    plan.notes
        .iter()
        .map(|n| format!("{}: {}\n", n.key, n.text))
        .collect()
}

fn prop(c: &Config, k: &str) -> Option<String> {
    c.kafka.properties.get(k).map(PropertyValue::to_string)
}

fn errors(plan: &Plan) -> String {
    plan.errors.join("\n")
}

#[test]
fn the_evokly_example_maps_to_the_connector_defaults() {
    let plan = import(EVOKLY_EXAMPLE, None);
    clean(&plan);
    let c = config(&plan);
    assert_eq!(c.mqtt.server_uris, vec!["tcp://localhost:1883"]);
    assert_eq!(c.mqtt.client_id, "mqtt-kafka-gateway-mqtt");
    assert!(!c.mqtt.clean_session);
    assert_eq!(c.mqtt.connection_timeout.as_secs(), 30);
    assert_eq!(c.mqtt.keep_alive.as_secs(), 60);
    assert_eq!(c.mqtt.topics.len(), 1);
    assert_eq!(
        (c.mqtt.topics[0].filter.as_str(), c.mqtt.topics[0].qos),
        ("#", 1)
    );
    assert_eq!(c.kafka.topic, "mqtt");
    assert_eq!(c.kafka.key, crate::config::KeyMode::MqttTopic);
    assert_eq!(prop(&c, "partitioner").as_deref(), Some("murmur2_random"));
    assert!(c.mqtt.tls.is_none() && c.mqtt.username.is_none());
    let n = notes(&plan);
    assert!(
        n.contains("mqtt.clean_session: ") && n.contains("clean_session = false"),
        "{n}"
    );
    assert!(
        n.contains("mqtt.client_id: ") && n.contains("random"),
        "{n}"
    );
    assert!(n.contains("bootstrap.servers: no --worker file"), "{n}");
    assert!(plan
        .not_needed
        .iter()
        .any(|(s, _)| s == "connector: tasks.max=1"));
    let t = text(&plan);
    assert!(t.contains("# bootstrap_servers = "), "{t}");
    assert!(
        t.contains("# connector: mqtt.topic not set (its default: #)"),
        "{t}"
    );
    assert!(t.contains("# dir = \"./data\"") && t.contains("# listen = \"127.0.0.1:9080\""));
}

#[test]
fn every_connector_key() {
    let connector = format!(
        "{BASE}tasks.max=3\nmqtt.server_uris = tcp://a:1883, ssl://b:8883 ,\nmqtt.topic=sensors/+/temp\nmqtt.qos=2\n\
         mqtt.client_id=edge-gw\nmqtt.clean_session=false\nmqtt.connection_timeout=10\nmqtt.keep_alive_interval=0\n\
         mqtt.user=gw\nmqtt.password=  mqtt-pw-1234  \nmqtt.ssl.ca_cert=/etc/mqtt/ca.pem\nmqtt.ssl.cert=/etc/mqtt/c.pem\n\
         mqtt.ssl.key=/etc/mqtt/c.key\nkafka.topic=readings\n\
         message_processor_class=com.evokly.kafka.connect.mqtt.sample.DumbProcessor\n"
    );
    let plan = import(&connector, None);
    clean(&plan);
    let c = config(&plan);
    assert_eq!(c.mqtt.server_uris, vec!["tcp://a:1883", "ssl://b:8883"]);
    assert_eq!(
        (c.mqtt.topics[0].filter.as_str(), c.mqtt.topics[0].qos),
        ("sensors/+/temp", 2)
    );
    assert_eq!(c.mqtt.client_id, "edge-gw");
    assert!(!c.mqtt.clean_session);
    assert_eq!(c.mqtt.connection_timeout.as_secs(), 10);
    assert_eq!(c.mqtt.keep_alive.as_secs(), 0);
    assert_eq!(c.mqtt.username.as_deref(), Some("gw"));
    assert!(c.mqtt.password.is_none());
    assert_eq!(
        c.mqtt.password_file,
        Some(PathBuf::from("/etc/gw/gateway.mqtt.password"))
    );
    // Trimmed as Connect's ConfigDef trims, with a line end for the file.
    let file = &plan.files[0];
    assert_eq!(
        (file.content.as_str(), file.secret),
        ("mqtt-pw-1234\n", true)
    );
    let tls = c.mqtt.tls.unwrap();
    assert_eq!(tls.ca_file, PathBuf::from("/etc/mqtt/ca.pem"));
    assert_eq!(tls.client_cert_file, Some(PathBuf::from("/etc/mqtt/c.pem")));
    assert_eq!(tls.client_key_file, Some(PathBuf::from("/etc/mqtt/c.key")));
    assert_eq!(c.kafka.topic, "readings");
    let n = notes(&plan);
    assert!(n.contains("clean session anyway"), "{n}");
    assert!(
        n.contains("stop the connector before starting the gateway"),
        "{n}"
    );
    assert!(plan
        .not_needed
        .iter()
        .any(|(s, _)| s == "connector: name=site-7"));
    // Every line names its source.
    let t = text(&plan);
    for key in [
        "mqtt.server_uris=",
        "mqtt.qos=2",
        "mqtt.keep_alive_interval=0",
        "kafka.topic=readings",
        "mqtt.ssl.key=",
    ] {
        assert!(t.contains(&format!("# connector: {key}")), "{key} in\n{t}");
    }
    assert!(
        t.contains("# connector: mqtt.password=(secret, not shown)"),
        "{t}"
    );
    assert!(!t.contains("mqtt-pw-1234") && !n.contains("mqtt-pw-1234"));
}

#[test]
fn connector_values_that_differ_or_cannot_be_mapped() {
    // A connection timeout of 0 (no limit) becomes the gateway's 30 s.
    let plan = import(&format!("{BASE}mqtt.connection_timeout=0\n"), None);
    clean(&plan);
    assert_eq!(config(&plan).mqtt.connection_timeout.as_secs(), 30);
    assert!(notes(&plan).contains("no time limit"));
    // An ssl:// broker without a CA: the system's bundle, noted.
    let plan = import(&format!("{BASE}mqtt.server_uris=ssl://b\n"), None);
    clean(&plan);
    let tls = config(&plan).mqtt.tls.unwrap();
    assert_eq!(
        tls.ca_file,
        PathBuf::from("/etc/ssl/certs/ca-certificates.crt")
    );
    assert!(notes(&plan).contains("JVM's default CAs"));
    // A password without a user: Paho never sent it.
    let plan = import(&format!("{BASE}mqtt.password=pw-only-77\n"), None);
    clean(&plan);
    assert!(config(&plan).mqtt.password_file.is_none() && plan.files.is_empty());
    assert!(notes(&plan).contains("Paho sends a password only with a user name"));
    for (line, expect) in [
        ("mqtt.qos=3", "mqtt.qos"),
        ("mqtt.server_uris=ws://h:80", "unsupported scheme"),
        ("mqtt.keep_alive_interval=-1", "negative"),
        ("mqtt.keep_alive_interval=70000", "65535"),
        ("mqtt.connection_timeout=ten", "whole number"),
        ("mqtt.clean_session=yes", "true or false"),
        ("mqtt.topic=a/#/b", "mqtt.topic"),
        ("kafka.topic=bad topic", "kafka.topic"),
        ("mqtt.ssl.cert=/c.pem", "go together"),
        ("message_processor_class=com.acme.JsonProcessor", "com.acme.JsonProcessor"),
        ("connector.class=io.confluent.connect.mqtt.MqttSourceConnector", "not evokly's"),
        ("transforms=route\ntransforms.route.type=org.apache.kafka.connect.transforms.RegexRouter", "RegexRouter"),
    ] {
        let plan = import(&format!("{BASE}{line}\n"), None);
        assert!(errors(&plan).contains(expect), "{line}: {:?}", plan.errors);
        assert!(plan.unknown.is_empty(), "{line}: {:?}", plan.unknown);
    }
    let plan = import("mqtt.topic=a\n", None);
    assert!(errors(&plan).contains("connector.class is not set"));
}

#[test]
fn client_ids_from_the_connector_name() {
    assert_eq!(
        connector::stable_client_id(Some(" plant 1/mqtt ")),
        "mqtt-kafka-gateway-plant-1-mqtt"
    );
    assert_eq!(connector::stable_client_id(None), "mqtt-kafka-gateway");
    assert_eq!(connector::stable_client_id(Some("")), "mqtt-kafka-gateway");
}

#[test]
fn unknown_keys_are_all_named_with_their_lines() {
    let plan = import(
        &format!("{BASE}mqtt.sever_uris=tcp://x\n"),
        Some("bootstrap.servers=k:9092\nproducer.no.such.thing=1\nfoo=bar\n"),
    );
    assert_eq!(
        plan.unknown,
        vec![
            "c.properties: mqtt.sever_uris (line 3)",
            "w.properties: producer.no.such.thing (line 2)",
            "w.properties: foo (line 3)",
        ]
    );
}

#[test]
fn the_command_writes_secret_files_0600_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let connector = dir.path().join("mqtt.properties");
    std::fs::write(
        &connector,
        format!("{BASE}mqtt.user=gw\nmqtt.password=mqtt-pw-4242\nmqtt.topic=sensors/#\n"),
    )
    .unwrap();
    let args = Args {
        connector: connector.clone(),
        worker: None,
        output: dir.path().join("gw.toml"),
        force: false,
    };
    run(&args).unwrap();
    let secret = dir.path().join("gw.mqtt.password");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "mqtt-pw-4242\n");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let toml = std::fs::read_to_string(&args.output).unwrap();
    assert!(!toml.contains("mqtt-pw-4242"));
    let loaded = Config::load(&args.output).unwrap();
    assert_eq!(loaded.password.unwrap().expose(), "mqtt-pw-4242");
    // Again: refused, unless --force, which also narrows a widened mode.
    assert!(matches!(run(&args), Err(Stop::Io(e)) if e.contains("--force")));
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    run(&Args {
        force: true,
        ..args.clone()
    })
    .unwrap();
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // An unknown key: nothing written.
    std::fs::write(&connector, format!("{BASE}mqtt.toppic=x\n")).unwrap();
    let fresh = Args {
        output: dir.path().join("other.toml"),
        ..args
    };
    assert!(
        matches!(run(&fresh), Err(Stop::Input(l)) if l.iter().any(|l| l.contains("mqtt.toppic (line 3)")))
    );
    assert!(!fresh.output.exists());
}
