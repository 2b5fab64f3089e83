//! The README's "Coming from Mosquitto + Kafka Connect", run as written: the shell
//! blocks between its `walkthrough: begin` and `end` markers, in order, in one bash,
//! against a Mosquitto set up as the Kafka Connect guide has it (persistence, a
//! password file, an ACL for the connector's user and a device) and the shared Kafka,
//! starting from a connector's and a worker's `.properties`.
//!
//! What the test provides around the README's commands: the variables of its first
//! block (this test's directories and ports), `mqtt-kafka-gateway` on PATH, and
//! stand-ins for `systemctl` (starts Mosquitto or the gateway as the unit would) and
//! `kafka-consumer-groups.sh` (Kafka's own ConsumerGroupCommand from the jars the
//! tests use). The gateway's admin API is on its default port, 9080, as the
//! walkthrough's `status` expects: the test fails early, saying so, if it is taken.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use harness::{free_port, repo_root, unique};
use libtest_mimic::Failed;

use crate::{bin, fail, kafka};

const BRIDGE_PASSWORD: &str = "bridge-pw-0b7";
const SENSOR_PASSWORD: &str = "sensor-pw-c41";

/// The README's walkthrough blocks, in order.
fn walkthrough_blocks() -> Result<Vec<String>, Failed> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let start = readme
        .find("<!-- walkthrough: begin -->")
        .ok_or("README has no walkthrough")?;
    let end = readme[start..]
        .find("<!-- walkthrough: end -->")
        .ok_or("walkthrough not closed")?
        + start;
    let mut blocks = Vec::new();
    let mut rest = &readme[start..end];
    while let Some(open) = rest.find("```bash\n") {
        let body = &rest[open + 8..];
        let close = body.find("\n```").ok_or("unclosed block")?;
        blocks.push(body[..close + 1].to_string());
        rest = &body[close + 4..];
    }
    Ok(blocks)
}

/// Kills what the walkthrough started (the gateway, Mosquitto) by their pid files.
struct Reap<'a>(&'a Path);

impl Drop for Reap<'_> {
    fn drop(&mut self) {
        for f in ["gateway.pid", "mosquitto.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.0.join(f)) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    harness::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

pub fn readme_walkthrough_from_kafka_connect() -> Result<(), Failed> {
    if TcpListener::bind("127.0.0.1:9080").is_err() {
        return Err(fail(
            "127.0.0.1:9080 is taken (another gateway?): the walkthrough's gateway listens there",
        ));
    }
    let t = tempfile::tempdir()?;
    let root = t.path();
    let _reap = Reap(root);
    let etc = root.join("mosquitto");
    let gw_etc = root.join("mqtt-kafka-gateway");
    let var = root.join("var");
    let connect = root.join("kafka");
    for d in [
        &etc.join("conf.d"),
        &var,
        &connect,
        &root.join("mosquitto-data"),
    ] {
        std::fs::create_dir_all(d)?;
    }
    let mqtt_port = free_port();
    // The connector's topic exists on the site's Kafka.
    let topic = unique("from-connect");
    kafka().create_topic(&topic, 3);

    // The existing setup: Mosquitto as the guide configures it.
    let passwd = etc.join("passwd");
    std::fs::write(&passwd, "")?;
    for (user, pw) in [
        ("kafka-bridge", BRIDGE_PASSWORD),
        ("sensor-1", SENSOR_PASSWORD),
    ] {
        let st = Command::new("mosquitto_passwd")
            .args(["-b", passwd.to_str().unwrap(), user, pw])
            .status()?;
        if !st.success() {
            return Err(fail("mosquitto_passwd failed"));
        }
    }
    std::fs::write(
        etc.join("acl"),
        "user kafka-bridge\ntopic read sensors/#\n\nuser sensor-1\ntopic write sensors/#\n",
    )?;
    let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?;
    std::fs::write(
        etc.join("mosquitto.conf"),
        format!(
            "user {user}\npid_file {root}/mosquitto.pid\npersistence true\npersistence_location {root}/mosquitto-data/\n\
             log_dest file {root}/mosquitto.log\nlistener {mqtt_port} 127.0.0.1\nallow_anonymous false\n\
             password_file {etc}/passwd\nacl_file {etc}/acl\ninclude_dir {etc}/conf.d\n",
            user = user.trim(),
            root = root.display(),
            etc = etc.display(),
        ),
    )?;
    // The connector's and the worker's files.
    let connector = connect.join("connect-mqtt-source.properties");
    std::fs::write(
        &connector,
        format!(
            "name=mqtt-source\nconnector.class=com.evokly.kafka.connect.mqtt.MqttSourceConnector\ntasks.max=1\n\
             kafka.topic={topic}\nmqtt.client_id=kafka-connect-mqtt-source\nmqtt.clean_session=false\n\
             mqtt.connection_timeout=30\nmqtt.keep_alive_interval=60\n\
             mqtt.server_uris=tcp://127.0.0.1:{mqtt_port}\nmqtt.topic=sensors/#\nmqtt.qos=1\n\
             mqtt.user=kafka-bridge\nmqtt.password={BRIDGE_PASSWORD}\n"
        ),
    )?;
    let worker = connect.join("connect-distributed.properties");
    std::fs::write(
        &worker,
        format!(
            "bootstrap.servers={}\ngroup.id=connect-cluster\n\
             key.converter=org.apache.kafka.connect.storage.StringConverter\n\
             value.converter=org.apache.kafka.connect.converters.ByteArrayConverter\n\
             offset.storage.topic=connect-offsets\nconfig.storage.topic=connect-configs\n\
             status.storage.topic=connect-status\nplugin.path=/usr/share/java\n",
            kafka().bootstrap()
        ),
    )?;

    // PATH: the gateway under its installed name.
    let bin_dir = root.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    std::os::unix::fs::symlink(bin(), bin_dir.join("mqtt-kafka-gateway"))?;
    let libs = std::env::var("MKG_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cache/mqtt-kafka-gateway")
        })
        .join("kafka-4.1.1/libs");
    let prelude = format!(
        r#"set -euo pipefail
export MOSQ_ETC='{etc}' MQTT_HOST=127.0.0.1 MQTT_PORT={mqtt_port} CONNECTOR='{connector}'
export WORKER='{worker}' KAFKA='{kafka}' GW_ETC='{gw_etc}' SENSOR_PASSWORD='{SENSOR_PASSWORD}'
export PATH='{bin_dir}':"$PATH"
wait_port() {{
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on $1 after 30 s" >&2; return 1
}}
# What the units would do.
systemctl() {{
    case "$*" in
    "restart mosquitto")
        if [[ -f '{root}/mosquitto.pid' ]]; then
            local pid
            pid=$(cat '{root}/mosquitto.pid')
            kill "$pid"
            while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        fi
        mosquitto -d -c "$MOSQ_ETC/mosquitto.conf"
        wait_port "$MQTT_PORT" ;;
    "enable --now mqtt-kafka-gateway")
        (cd '{var}' && exec mqtt-kafka-gateway run --config "$GW_ETC/gateway.toml" \
            >'{var}/gateway.log' 2>&1 </dev/null) &
        echo $! >'{root}/gateway.pid'
        for _ in $(seq 600); do
            curl -sf http://127.0.0.1:9080/readyz >/dev/null && return 0
            sleep 0.05
        done
        echo "the gateway is not ready after 30 s" >&2; cat '{var}/gateway.log' >&2; return 1 ;;
    *) echo "walkthrough test: no stand-in for systemctl $*" >&2; return 1 ;;
    esac
}}
kafka-consumer-groups.sh() {{
    java -cp '{libs}/*' org.apache.kafka.tools.consumer.group.ConsumerGroupCommand "$@"
}}
# Mosquitto is running before the walkthrough, as on the site.
mosquitto -d -c "$MOSQ_ETC/mosquitto.conf"
wait_port "$MQTT_PORT"
"#,
        etc = etc.display(),
        connector = connector.display(),
        worker = worker.display(),
        kafka = kafka().bootstrap(),
        gw_etc = gw_etc.display(),
        bin_dir = bin_dir.display(),
        root = root.display(),
        var = var.display(),
        libs = libs.display(),
    );
    let blocks = walkthrough_blocks()?;
    if blocks.len() < 6 {
        return Err(fail(format!(
            "the README's walkthrough has {} blocks",
            blocks.len()
        )));
    }
    let script = format!("{prelude}\n{}", blocks.join("\necho '--- next block'\n"));
    std::fs::write(root.join("walkthrough.sh"), &script)?;
    let out = Command::new("timeout")
        .args(["300", "bash", root.join("walkthrough.sh").to_str().unwrap()])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let gw_log = std::fs::read_to_string(var.join("gateway.log")).unwrap_or_default();
    eprintln!("{stdout}");
    if !out.status.success() {
        return Err(fail(format!(
            "the walkthrough failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- gateway log\n{gw_log}",
            out.status
        )));
    }
    // What its commands must have shown.
    let expect = [
        "persistence_location",
        "topic read sensors/#",
        "configuration OK",
        "key=sensors/plant1/temp value={\"t\": 21.5}",
        "gateway.seq=",
        "dashboard",
    ];
    for e in expect {
        if !stdout.contains(e) {
            return Err(fail(format!(
                "the walkthrough's output lacks {e:?}:\n{stdout}\n--- stderr\n{stderr}"
            )));
        }
    }
    // The consumer group's offset is committed: lag 0 on the partition it read.
    let described: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("dashboard") && l.contains(&topic))
        .collect();
    let lags: Vec<&str> = described
        .iter()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    if !lags.contains(&"0") || lags.iter().any(|l| *l != "0" && *l != "-") {
        return Err(fail(format!("consumer group not at lag 0:\n{stdout}")));
    }
    // No secret in any output or log.
    let imported = std::fs::read_to_string(gw_etc.join("gateway.toml"))?;
    for text in [&stdout, &stderr, &gw_log, &imported] {
        for secret in [BRIDGE_PASSWORD, SENSOR_PASSWORD] {
            if text.contains(secret) {
                return Err(fail(format!("a password shows in:\n{text}")));
            }
        }
    }
    Ok(())
}
