//! `import-connect`: a Kafka Connect setup (evokly's MQTT source connector and the
//! Connect worker) turned into a gateway configuration.
//!
//! - evokly's own example connector file (`tests/fixtures/import-connect/`) with a
//!   SASL/SCRAM worker: the output passes `check-config` from another directory, no
//!   secret shows in it nor on the terminal, the password files hold them (mode 0600);
//! - an unknown key: exit 2, named, nothing written;
//! - end to end: a connector file for a secured Mosquitto and a worker file for the
//!   shared Kafka, imported, then the gateway runs on the imported file and carries
//!   what a device publishes to Kafka.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{publish_as, unique, Gateway, Mosquitto};
use libtest_mimic::Failed;

use crate::common::Site;
use crate::{bin, fail, kafka, messages};

const CONNECTOR_CLASS: &str = "com.evokly.kafka.connect.mqtt.MqttSourceConnector";

/// Exit code, stdout and stderr of the binary run with `args` in `cwd`.
fn run_in(cwd: &Path, args: &[&str]) -> Result<(Option<i32>, String, String), Failed> {
    let out = Command::new(bin()).args(args).current_dir(cwd).output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn import(
    cwd: &Path,
    connector: &Path,
    worker: &Path,
    output: &Path,
) -> Result<(Option<i32>, String, String), Failed> {
    run_in(
        cwd,
        &[
            "import-connect",
            "--connector",
            path(connector)?,
            "--worker",
            path(worker)?,
            "--output",
            path(output)?,
        ],
    )
}

fn path(p: &Path) -> Result<&str, Failed> {
    p.to_str().ok_or_else(|| fail("a non-UTF-8 path"))
}

/// The secret file's content, checked to be mode 0600.
fn secret_file(p: &Path) -> Result<String, Failed> {
    let mode = std::fs::metadata(p)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        return Err(fail(format!("{} has mode {mode:o}, want 600", p.display())));
    }
    Ok(std::fs::read_to_string(p)?)
}

pub fn evokly_example_with_a_scram_worker_passes_check_config() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    harness::certs::make_ca(d, "kafka-ca").map_err(fail)?;
    let example = harness::repo_root().join("tests/fixtures/import-connect/mqtt.properties");
    let worker = d.join("connect-standalone.properties");
    std::fs::write(
        &worker,
        format!(
            "bootstrap.servers=kafka-1.example:9094,kafka-2.example:9094\n\
             group.id=connect-cluster\n\
             key.converter=org.apache.kafka.connect.storage.StringConverter\n\
             value.converter=org.apache.kafka.connect.converters.ByteArrayConverter\n\
             offset.storage.file.filename=/tmp/connect.offsets\n\
             plugin.path=/usr/share/java\n\
             producer.security.protocol=SASL_SSL\n\
             producer.sasl.mechanism=SCRAM-SHA-512\n\
             producer.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n\
             \x20   username=\"edge-gateway\" password=\"kafka-S3cret-61\";\n\
             producer.ssl.truststore.type=PEM\n\
             producer.ssl.truststore.location={}\n\
             producer.compression.type=lz4\n",
            d.join("kafka-ca.pem").display()
        ),
    )?;
    let out = d.join("site/gateway.toml");
    std::fs::create_dir(d.join("site"))?;
    let (code, stdout, stderr) = import(d, &example, &worker, &out)?;
    if code != Some(0) {
        return Err(fail(format!("import: exit {code:?}\n{stdout}{stderr}")));
    }
    for expect in ["note: mqtt.clean_session:", "note: mqtt.client_id:"] {
        if !stderr.contains(expect) {
            return Err(fail(format!("stderr lacks {expect:?}:\n{stderr}")));
        }
    }
    let toml = std::fs::read_to_string(&out)?;
    let kafka_pw = secret_file(&d.join("site/gateway.kafka.password"))?;
    if kafka_pw != "kafka-S3cret-61\n" {
        return Err(fail("the Kafka password file does not hold the password"));
    }
    for (text, what) in [
        (&toml, "the output"),
        (&stdout, "stdout"),
        (&stderr, "stderr"),
    ] {
        if text.contains("S3cret") {
            return Err(fail(format!("{what} shows a secret:\n{text}")));
        }
    }
    for expect in [
        "\"compression.type\" = \"lz4\"",
        "\"sasl.mechanisms\" = \"SCRAM-SHA-512\"",
        "\"sasl.username\" = \"edge-gateway\"",
        "clean_session = false",
        "client_id = \"mqtt-kafka-gateway-mqtt\"",
        "# - connector: tasks.max=1",
        "# worker: producer.compression.type=lz4",
    ] {
        if !toml.contains(expect) {
            return Err(fail(format!("the output lacks {expect:?}:\n{toml}")));
        }
    }
    // check-config from another directory: the output's paths do not depend on it.
    let elsewhere = tempfile::tempdir()?;
    let (code, o, e) = run_in(elsewhere.path(), &["check-config", "--config", path(&out)?])?;
    if code != Some(0) {
        return Err(fail(format!("check-config: exit {code:?}\n{o}{e}")));
    }

    // The same connector file with MQTT credentials: a second password file.
    let with_login = d.join("mqtt-login.properties");
    let text = std::fs::read_to_string(&example)?;
    std::fs::write(
        &with_login,
        format!("{text}mqtt.user=gateway\nmqtt.password=mqtt-S3cret-93\n"),
    )?;
    let out2 = d.join("site/login.toml");
    let (code, stdout, stderr) = import(d, &with_login, &worker, &out2)?;
    if code != Some(0) {
        return Err(fail(format!(
            "import with a login: exit {code:?}\n{stdout}{stderr}"
        )));
    }
    let toml = std::fs::read_to_string(&out2)?;
    if secret_file(&d.join("site/login.mqtt.password"))? != "mqtt-S3cret-93\n" {
        return Err(fail("the MQTT password file does not hold the password"));
    }
    for text in [&toml, &stdout, &stderr] {
        if text.contains("S3cret") {
            return Err(fail(format!("a secret shows:\n{text}")));
        }
    }
    let (code, o, e) = run_in(
        elsewhere.path(),
        &["check-config", "--config", path(&out2)?],
    )?;
    if code != Some(0) {
        return Err(fail(format!("check-config (login): exit {code:?}\n{o}{e}")));
    }
    Ok(())
}

pub fn unknown_keys_exit_2_and_write_nothing() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let connector = d.join("mqtt.properties");
    std::fs::write(
        &connector,
        format!("name=x\nconnector.class={CONNECTOR_CLASS}\nmqtt.sever_uris=tcp://h:1883\nmqtt.user=u\nmqtt.password=pw-S3cret\n"),
    )?;
    let worker = d.join("worker.properties");
    std::fs::write(&worker, "bootstrap.servers=k:9092\nproducer.lingerms=5\n")?;
    let out = d.join("gateway.toml");
    let (code, stdout, stderr) = import(d, &connector, &worker, &out)?;
    if code != Some(2) {
        return Err(fail(format!("exit {code:?}, want 2\n{stdout}{stderr}")));
    }
    for expect in ["mqtt.sever_uris (line 3)", "producer.lingerms (line 2)"] {
        if !stderr.contains(expect) {
            return Err(fail(format!("stderr does not name {expect}:\n{stderr}")));
        }
    }
    let left: Vec<PathBuf> = std::fs::read_dir(d)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p != &connector && p != &worker)
        .collect();
    if !left.is_empty() || stdout.contains("S3cret") || stderr.contains("S3cret") {
        return Err(fail(format!("written: {left:?}\n{stdout}{stderr}")));
    }
    Ok(())
}

pub fn imported_config_carries_messages_end_to_end() -> Result<(), Failed> {
    let site = Site::new(kafka(), "import")?;
    let acl = "user gw\ntopic read sensors/#\n\nuser device\ntopic write sensors/#\n";
    let mqtt = Mosquitto::start_secured(&[("gw", "gw-S3cret-17"), ("device", "dev-pass-4c1")], acl);
    let import_dir = site.path().join("import");
    std::fs::create_dir(&import_dir)?;
    let connector = import_dir.join("mqtt.properties");
    std::fs::write(
        &connector,
        format!(
            "# The connector as Connect ran it.\nname={}\nconnector.class={CONNECTOR_CLASS}\ntasks.max=1\n\
             mqtt.server_uris=tcp://127.0.0.1:{}\nmqtt.topic=sensors/#\nmqtt.qos=1\n\
             mqtt.user=gw\nmqtt.password=gw-S3cret-17\nmqtt.keep_alive_interval=5\n\
             kafka.topic={}\nmessage_processor_class=com.evokly.kafka.connect.mqtt.sample.DumbProcessor\n",
            unique("site"),
            mqtt.port,
            site.topic
        ),
    )?;
    let worker = import_dir.join("connect-standalone.properties");
    std::fs::write(
        &worker,
        format!(
            "bootstrap.servers={}\nkey.converter=org.apache.kafka.connect.storage.StringConverter\n\
             value.converter=org.apache.kafka.connect.converters.ByteArrayConverter\n\
             offset.storage.file.filename=/tmp/connect.offsets\nproducer.compression.type=lz4\nproducer.linger.ms=5\n",
            site.kafka.bootstrap()
        ),
    )?;
    let out = import_dir.join("gateway.toml");
    let (code, stdout, stderr) = import(&import_dir, &connector, &worker, &out)?;
    if code != Some(0) || stdout.contains("S3cret") || stderr.contains("S3cret") {
        return Err(fail(format!("import: exit {code:?}\n{stdout}{stderr}")));
    }

    // Test-only changes: the WAL in the test's directory, the admin API on a free port
    // (Gateway fills in {wal} and {admin}), quick reconnects.
    let mut config: toml::Table = std::fs::read_to_string(&out)?.parse()?;
    let table = |c: &mut toml::Table, name: &str| -> Result<toml::Table, Failed> {
        match c.remove(name) {
            Some(toml::Value::Table(t)) => Ok(t),
            None => Ok(toml::Table::new()),
            Some(other) => Err(fail(format!("[{name}] is {other:?}"))),
        }
    };
    let mut wal = table(&mut config, "wal")?;
    wal.insert("dir".into(), "{wal}".into());
    config.insert("wal".into(), wal.into());
    let mut admin = table(&mut config, "admin")?;
    admin.insert("listen".into(), "{admin}".into());
    config.insert("admin".into(), admin.into());
    let mut mqtt_table = table(&mut config, "mqtt")?;
    mqtt_table.insert("reconnect_max_delay".into(), "1s".into());
    config.insert("mqtt".into(), mqtt_table.into());
    let mut gw = Gateway::start(bin(), site.path(), &toml::to_string(&config)?);
    gw.wait_ready();

    let msgs = messages("imp", &["sensors/a".into(), "sensors/b/c".into()], 300, 64);
    let published = publish_as(
        mqtt.port,
        Some(("device", "dev-pass-4c1")),
        1,
        &msgs,
        Duration::from_secs(60),
    );
    if published.len() != msgs.len() {
        return Err(fail(format!(
            "the device published {} of {}",
            published.len(),
            msgs.len()
        )));
    }
    let consumed = site.consume(msgs.len(), Duration::from_secs(60));
    harness::check(&published, &consumed).assert_clean();
    // DumbProcessor's format: key = MQTT topic, value = payload; plus the headers.
    for c in &consumed {
        let topic = c.headers.get("mqtt.topic").cloned().unwrap_or_default();
        if c.key.as_deref() != Some(topic.as_bytes()) || !topic.starts_with("sensors/") {
            return Err(fail(format!(
                "record at {}:{}: key {:?}, mqtt.topic header {topic:?}",
                c.partition, c.offset, c.key
            )));
        }
    }
    if gw.log().contains("gw-S3cret-17") {
        return Err(fail("the gateway's log shows the MQTT password"));
    }
    Ok(())
}
