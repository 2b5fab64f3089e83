use super::values::parse_size;
use super::*;

fn load(text: &str) -> Result<Loaded, ConfigError> {
    Config::from_toml(text, "test.toml")
}

#[test]
fn empty_file_gives_working_defaults() {
    let l = load("").unwrap();
    assert_eq!(
        l.servers,
        vec![ServerUri {
            host: "127.0.0.1".into(),
            port: 1883,
            tls: false
        }]
    );
    assert!(!l.config.mqtt.clean_session);
    assert_eq!(l.config.kafka.bootstrap_servers, "127.0.0.1:9092");
    assert_eq!(l.config.wal.dir, PathBuf::from("./data"));
    assert_eq!(l.config.mqtt.topics[0].filter, "#");
}

#[test]
fn unknown_key_is_named() {
    let e = load("[mqtt]\nserver_uri = \"tcp://x\"\n").unwrap_err();
    assert!(e.key.contains("mqtt"), "{e}");
    assert!(e.reason.contains("server_uri"), "{e}");
}

#[test]
fn wrong_type_is_named() {
    let e = load("[[mqtt.topics]]\nfilter = \"a/#\"\nqos = \"high\"\n").unwrap_err();
    assert_eq!(e.key, "mqtt.topics[0].qos", "{e}");
    let e = load("[wal]\nmax_batch_records = -3\n").unwrap_err();
    assert_eq!(e.key, "wal.max_batch_records", "{e}");
    let e = load("[mqtt]\nkeep_alive = \"often\"\n").unwrap_err();
    assert_eq!(e.key, "mqtt.keep_alive", "{e}");
}

#[test]
fn bad_qos_and_filter_rejected() {
    assert_eq!(
        load("[[mqtt.topics]]\nfilter = \"a/#\"\nqos = 3\n")
            .unwrap_err()
            .key,
        "mqtt.topics[0].qos"
    );
    assert_eq!(
        load("[[mqtt.topics]]\nfilter = \"a/#/b\"\n")
            .unwrap_err()
            .key,
        "mqtt.topics[0].filter"
    );
}

#[test]
fn illegal_kafka_topics_rejected() {
    let e = load("[kafka]\ntopic = \"has space\"\n").unwrap_err();
    assert_eq!(e.key, "kafka.topic");
    let e = load(
        "[[kafka.routes]]\nmqtt_filter = \"a/#\"\nkafka_topic_template = \"x/{mqtt_topic}\"\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "kafka.routes[0].kafka_topic_template", "{e}");
    let e = load("[kafka]\ntopic_separator = \"/\"\n").unwrap_err();
    assert_eq!(e.key, "kafka.topic_separator", "{e}");
}

#[test]
fn unreadable_password_file_is_named_without_leaking() {
    let e = load("[mqtt]\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n").unwrap_err();
    assert_eq!(e.key, "mqtt.password_file");
}

#[test]
fn password_is_never_in_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cr3t-from-file\n").unwrap();
    let l = load(&format!(
        "[mqtt]\nusername = \"u\"\npassword_file = \"{}\"\n",
        pw.display()
    ))
    .unwrap();
    assert_eq!(l.password.as_ref().unwrap().expose(), "s3cr3t-from-file");
    assert!(!format!("{l:?}").contains("s3cr3t"));
    let l = load("[mqtt]\nusername = \"u\"\npassword = \"inline-s3cr3t\"\n").unwrap();
    assert!(!format!("{l:?}").contains("inline-s3cr3t"));
}

#[test]
fn kafka_sasl_password_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("kafka.pw");
    std::fs::write(&pw, "k-s3cr3t\n").unwrap();
    let l = load(&format!(
        "[kafka]\nsasl_password_file = \"{}\"\n[kafka.properties]\n\"sasl.username\" = \"gw\"\n",
        pw.display()
    ))
    .unwrap();
    assert_eq!(l.kafka_sasl_password.as_ref().unwrap().expose(), "k-s3cr3t");
    assert!(!format!("{l:?}").contains("k-s3cr3t"));
    assert!(!l
        .producer_properties
        .iter()
        .any(|(k, _)| k == "sasl.password"));
    // Both ways at once is a mistake.
    let e = load(&format!(
        "[kafka]\nsasl_password_file = \"{}\"\n[kafka.properties]\n\"sasl.password\" = \"x\"\n",
        pw.display()
    ))
    .unwrap_err();
    assert_eq!(e.key, "kafka.sasl_password_file", "{e}");
    std::fs::write(&pw, "\n").unwrap();
    let e = load(&format!(
        "[kafka]\nsasl_password_file = \"{}\"\n",
        pw.display()
    ))
    .unwrap_err();
    assert!(e.reason.contains("empty"), "{e}");
    let e = load("[kafka]\nsasl_password_file = \"/nonexistent/kpw\"\n").unwrap_err();
    assert_eq!(e.key, "kafka.sasl_password_file", "{e}");
}

#[test]
fn unsafe_producer_properties_rejected() {
    let e = load("[kafka.properties]\nacks = \"1\"\n").unwrap_err();
    assert!(e.key.contains("acks"), "{e}");
    let e = load("[kafka.properties]\n\"enable.idempotence\" = false\n").unwrap_err();
    assert!(e.key.contains("enable.idempotence"), "{e}");
    let l =
        load("[kafka.properties]\n\"linger.ms\" = 5\n\"compression.type\" = \"lz4\"\n").unwrap();
    assert!(l
        .producer_properties
        .contains(&("linger.ms".into(), "5".into())));
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
    assert_eq!(parse_size("512 KiB").unwrap(), 512 << 10);
    assert_eq!(parse_size("1000").unwrap(), 1000);
    assert!(parse_size("8 parsecs").is_err());
    let l = load("[wal]\nmax_batch_bytes = \"4MiB\"\n").unwrap();
    assert_eq!(l.config.wal.max_batch_bytes, ByteSize(4 << 20));
}

#[test]
fn server_uris_parse() {
    assert_eq!(
        parse_server_uri("ssl://broker.local").unwrap(),
        ServerUri {
            host: "broker.local".into(),
            port: 8883,
            tls: true
        }
    );
    assert_eq!(parse_server_uri("10.0.0.1:1884").unwrap().port, 1884);
    assert_eq!(parse_server_uri("tcp://[::1]:1883").unwrap().host, "::1");
    assert!(parse_server_uri("ws://x").is_err());
    assert!(parse_server_uri("tcp://x:notaport").is_err());
    let e = load("[mqtt]\nserver_uris = [\"tcp://a:1883\", \"ssl://b:8883\"]\n").unwrap_err();
    assert_eq!(e.key, "mqtt.server_uris[1]");
}

#[test]
fn admin_token_from_file_and_required_off_loopback() {
    let e = load("[admin]\nlisten = \"0.0.0.0:9080\"\n").unwrap_err();
    assert_eq!(e.key, "admin.token_file", "{e}");
    assert!(e.reason.contains("0.0.0.0:9080"), "{e}");
    // Loopback (v4 and v6) or a disabled API needs no token.
    load("[admin]\nlisten = \"127.0.0.1:9080\"\n").unwrap();
    load("[admin]\nlisten = \"[::1]:9080\"\n").unwrap();
    load("[admin]\nenabled = false\nlisten = \"0.0.0.0:9080\"\n").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, "tok-s3cr3t\n").unwrap();
    let l = load(&format!(
        "[admin]\nlisten = \"0.0.0.0:9080\"\ntoken_file = \"{}\"\n",
        tok.display()
    ))
    .unwrap();
    assert_eq!(l.admin_token.as_ref().unwrap().expose(), "tok-s3cr3t");
    assert!(!format!("{l:?}").contains("tok-s3cr3t"));

    for bad in ["\n", "two words\n"] {
        std::fs::write(&tok, bad).unwrap();
        let e = load(&format!("[admin]\ntoken_file = \"{}\"\n", tok.display())).unwrap_err();
        assert_eq!(e.key, "admin.token_file", "{e}");
        assert!(
            !e.reason.contains("words"),
            "the file's content leaked: {e}"
        );
    }
}
