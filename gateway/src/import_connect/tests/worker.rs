//! The worker's keys: the producer settings, SASL, the Java key stores, the
//! converters.

use super::*;

const SCRAM_WORKER: &str = r#"bootstrap.servers=k1:9093, k2:9093
group.id=connect-cluster
config.storage.topic=connect-configs
offset.storage.topic=connect-offsets
status.storage.topic=connect-status
rest.port=8083
plugin.path=/usr/share/java
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.converters.ByteArrayConverter
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="worker" password="worker-pw-5150";
producer.security.protocol=SASL_SSL
producer.sasl.mechanism=SCRAM-SHA-512
producer.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
  username="gateway" \
  password="kafka-pw-8086";
producer.ssl.truststore.type=PEM
producer.ssl.truststore.location=/etc/kafka/ca.pem
producer.ssl.endpoint.identification.algorithm=
producer.compression.type=zstd
producer.compression.zstd.level=5
producer.compression.gzip.level=9
producer.linger.ms=50
producer.batch.size=65536
producer.max.request.size=2097152
producer.send.buffer.bytes=-1
producer.acks=all
producer.enable.idempotence=true
producer.retries=2147483647
producer.buffer.memory=33554432
producer.client.id=connect-producer
"#;

#[test]
fn a_sasl_scram_worker() {
    let plan = import(BASE, Some(SCRAM_WORKER));
    clean(&plan);
    let c = config(&plan);
    assert_eq!(c.kafka.bootstrap_servers, "k1:9093,k2:9093");
    for (k, v) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "gateway"),
        ("ssl.ca.location", "/etc/kafka/ca.pem"),
        ("ssl.endpoint.identification.algorithm", "none"),
        ("compression.type", "zstd"),
        ("compression.level", "5"),
        ("linger.ms", "50"),
        ("batch.size", "65536"),
        ("message.max.bytes", "2097152"),
        ("socket.send.buffer.bytes", "0"),
    ] {
        assert_eq!(prop(&c, k).as_deref(), Some(v), "{k}");
    }
    for k in [
        "acks",
        "enable.idempotence",
        "retries",
        "sasl.password",
        "client.id",
        "buffer.memory",
    ] {
        assert_eq!(prop(&c, k), None, "{k}");
    }
    assert_eq!(
        c.kafka.sasl_password_file,
        Some(PathBuf::from("/etc/gw/gateway.kafka.password"))
    );
    let file = plan
        .files
        .iter()
        .find(|f| f.what.contains("Kafka"))
        .unwrap();
    assert_eq!(
        (file.content.as_str(), file.secret),
        ("kafka-pw-8086\n", true)
    );
    // The converters match the gateway's format: nothing to note about them.
    let n = notes(&plan);
    assert!(!n.contains("converter"), "{n}");
    // The worker's own keys are listed as not needed.
    let not_needed: Vec<&str> = plan.not_needed.iter().map(|(s, _)| s.as_str()).collect();
    for k in [
        "group.id",
        "config.storage.topic",
        "offset.storage.topic",
        "status.storage.topic",
        "rest.port",
        "plugin.path",
    ] {
        assert!(
            not_needed
                .iter()
                .any(|s| s.starts_with(&format!("worker: {k}="))),
            "{k}"
        );
    }
    assert!(not_needed.contains(&"worker: producer.compression.gzip.level=9"));
    let t = text(&plan);
    for secret in ["worker-pw-5150", "kafka-pw-8086"] {
        assert!(!t.contains(secret) && !n.contains(secret), "{secret}");
        assert!(!plan
            .not_needed
            .iter()
            .any(|(s, w)| s.contains(secret) || w.contains(secret)));
    }
}

#[test]
fn worker_keys_that_differ_or_cannot_be_mapped() {
    // The worker's own security settings stand in when no producer.* one is given.
    let plan = import(
        BASE,
        Some("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=u password=p;\nproducer.acks=1\nproducer.enable.idempotence=false\nproducer.partitioner.class=com.acme.P\nproducer.max.in.flight.requests.per.connection=10\n"),
    );
    clean(&plan);
    let c = config(&plan);
    assert_eq!(
        prop(&c, "security.protocol").as_deref(),
        Some("SASL_PLAINTEXT")
    );
    assert_eq!(prop(&c, "sasl.mechanisms").as_deref(), Some("PLAIN"));
    assert_eq!(prop(&c, "max.in.flight.requests.per.connection"), None);
    assert_eq!(prop(&c, "partitioner").as_deref(), Some("murmur2_random"));
    let n = notes(&plan);
    for expect in [
        "read only producer.* keys",
        "acks=1",
        "always idempotent",
        "Java partitioner",
        "more than 5",
    ] {
        assert!(n.contains(expect), "{expect}: {n}");
    }
    // SSL keys are unused without TLS.
    let plan = import(BASE, Some("producer.ssl.truststore.location=/t.jks\n"));
    clean(&plan);
    assert!(plan
        .not_needed
        .iter()
        .any(|(_, w)| w.contains("unused with security.protocol=PLAINTEXT")));
    // The connector's producer.override.* wins over the worker's producer.*.
    let plan = import(
        &format!("{BASE}producer.override.linger.ms=7\n"),
        Some("producer.linger.ms=20\n"),
    );
    clean(&plan);
    assert_eq!(prop(&config(&plan), "linger.ms").as_deref(), Some("7"));
    for (worker, expect) in [
        ("security.protocol=SASL_SSL\nsasl.jaas.config=x required;", "GSSAPI"),
        ("producer.security.protocol=SASL_SSL\nproducer.sasl.mechanism=OAUTHBEARER", "OAUTHBEARER"),
        ("producer.security.protocol=SASL_SSL\nproducer.sasl.mechanism=PLAIN", "JAAS file"),
        (
            "producer.security.protocol=SASL_SSL\nproducer.sasl.mechanism=PLAIN\nproducer.sasl.jaas.config=com.sun.security.auth.module.Krb5LoginModule required;",
            "Krb5LoginModule",
        ),
        ("producer.security.protocol=SASL_SSL\nproducer.sasl.mechanism=PLAIN\nproducer.sasl.jaas.config=a b c", "cannot be read"),
        ("producer.security.protocol=TLS", "not PLAINTEXT"),
        ("producer.security.protocol=SSL\nproducer.ssl.truststore.type=BKS\nproducer.ssl.truststore.location=/t", "BKS"),
    ] {
        let plan = import(BASE, Some(worker));
        assert!(errors(&plan).contains(expect), "{worker}: {:?}", plan.errors);
    }
}

#[test]
fn java_key_stores_become_commands_and_commented_lines() {
    let plan = import(
        BASE,
        Some("producer.security.protocol=SSL\nproducer.ssl.truststore.location=/etc/kafka/trust.jks\nproducer.ssl.truststore.password=trust-pw-1\nproducer.ssl.keystore.type=PKCS12\nproducer.ssl.keystore.location=/etc/kafka/client.p12\nproducer.ssl.keystore.password=store-pw-2\nproducer.ssl.key.password=key-pw-3\n"),
    );
    clean(&plan);
    let c = config(&plan);
    // Commented out until the user ran the commands.
    for k in [
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.keystore.password",
        "ssl.key.password",
    ] {
        assert_eq!(prop(&c, k), None, "{k}");
    }
    let t = text(&plan);
    assert!(t.contains("#   keytool -list -rfc -keystore /etc/kafka/trust.jks -storetype JKS | sed -n '/-BEGIN CERTIFICATE-/,/-END CERTIFICATE-/p' > /etc/gw/gateway.kafka-ca.pem\n# \"ssl.ca.location\" = \"/etc/gw/gateway.kafka-ca.pem\""), "{t}");
    assert!(t.contains("openssl pkcs12 -in /etc/kafka/client.p12 -clcerts -nokeys -out /etc/gw/gateway.kafka-client.pem"), "{t}");
    assert!(t.contains("(umask 077; openssl pkcs12 -in /etc/kafka/client.p12 -nocerts -nodes -out /etc/gw/gateway.kafka-client.key)"), "{t}");
    assert!(
        t.contains("# \"ssl.key.location\" = \"/etc/gw/gateway.kafka-client.key\""),
        "{t}"
    );
    let n = notes(&plan);
    assert!(n.contains("cannot read the JKS truststore"), "{n}");
    for secret in ["trust-pw-1", "store-pw-2", "key-pw-3"] {
        assert!(!t.contains(secret) && !n.contains(secret), "{secret}");
    }
    // A JKS keystore is converted to PKCS12 first.
    let plan = import(
        BASE,
        Some("producer.security.protocol=SSL\nproducer.ssl.keystore.location=/k.jks\n"),
    );
    clean(&plan);
    let t = text(&plan);
    assert!(t.contains("keytool -importkeystore -srckeystore /k.jks -srcstoretype JKS -destkeystore /etc/gw/gateway.kafka-client.p12 -deststoretype PKCS12"), "{t}");
    // No truststore: the JVM's CAs, librdkafka's probe of the system's.
    assert_eq!(
        prop(&config(&plan), "ssl.ca.location").as_deref(),
        Some("probe")
    );
    // Inline PEM: written to files, the key with mode 0600.
    let plan = import(
        BASE,
        Some("producer.security.protocol=SSL\nproducer.ssl.keystore.type=PEM\nproducer.ssl.keystore.certificate.chain=-----BEGIN CERTIFICATE-----\\nAAA\\n-----END CERTIFICATE-----\nproducer.ssl.keystore.key=-----BEGIN PRIVATE KEY-----\\nBBB\\n-----END PRIVATE KEY-----\n"),
    );
    clean(&plan);
    let key = plan
        .files
        .iter()
        .find(|f| f.path.ends_with("gateway.kafka-client.key"))
        .unwrap();
    assert!(key.secret && key.content.contains("BBB"));
    assert!(!text(&plan).contains("BBB"));
    assert_eq!(
        prop(&config(&plan), "ssl.key.location").as_deref(),
        Some("/etc/gw/gateway.kafka-client.key")
    );
}

#[test]
fn converters_other_than_the_gateway_format_are_noted() {
    let plan = import(
        &format!("{BASE}value.converter=org.apache.kafka.connect.json.JsonConverter\nvalue.converter.schemas.enable=true\n"),
        Some("key.converter=org.apache.kafka.connect.json.JsonConverter\nkey.converter.schemas.enable=false\nvalue.converter=org.apache.kafka.connect.storage.StringConverter\n"),
    );
    clean(&plan);
    let n = notes(&plan);
    assert!(
        n.contains("key.converter: ") && n.contains("a JSON string"),
        "{n}"
    );
    assert!(
        n.contains("value.converter: connector: ") && n.contains("envelope"),
        "{n}"
    );
    // The worker's value converter was replaced by the connector's.
    assert!(plan
        .not_needed
        .iter()
        .any(|(s, w)| s.starts_with("worker: value.converter=") && w.contains("replaced")));
    // Generic keys: explained, not unknown.
    let plan = import(
        &format!("{BASE}errors.tolerance=all\nconfig.action.reload=restart\ntopic.creation.default.partitions=3\ntransforms=\nexactly.once.support=requested\n"),
        None,
    );
    clean(&plan);
    assert!(notes(&plan).contains("the gateway does not: create kafka.topic"));
}
