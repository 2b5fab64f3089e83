//! Bad configuration files: exit code 2 and a message naming the key.

use harness::run_gateway_cmd;
use libtest_mimic::Failed;

use crate::{bin, fail};

pub fn bad_files_exit_2_naming_the_key() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let cases: &[(&str, &str)] = &[
        ("[mqtt]\nserver_uri = \"tcp://x\"\n", "server_uri"),
        ("[mqtt]\nkeep_alive = 60\n", "mqtt.keep_alive"),
        (
            "[[mqtt.topics]]\nfilter = \"a\"\nqos = 7\n",
            "mqtt.topics[0].qos",
        ),
        (
            "[mqtt]\nusername = \"u\"\npassword_file = \"/nonexistent/secret\"\n",
            "mqtt.password_file",
        ),
        ("[kafka]\ntopic = \"bad topic!\"\n", "kafka.topic"),
        (
            "[[kafka.routes]]\nmqtt_filter = \"a/#\"\nkafka_topic_template = \"x:{mqtt_topic}\"\n",
            "kafka.routes[0].kafka_topic_template",
        ),
        ("[kafka.properties]\nacks = 1\n", "acks"),
        (
            "[kafka.properties]\n\"no.such.property\" = \"x\"\n",
            "no.such.property",
        ),
        ("[wal]\nmax_batch_bytes = \"lots\"\n", "wal.max_batch_bytes"),
        // An admin API on the network without a token.
        ("[admin]\nlisten = \"0.0.0.0:9080\"\n", "admin.token_file"),
        (
            "[admin]\ntoken_file = \"/nonexistent/token\"\n",
            "admin.token_file",
        ),
        ("this is not toml", "syntax"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text)?;
        for cmd in ["check-config", "run"] {
            let (code, out) = run_gateway_cmd(bin(), &[cmd, "--config", path.to_str().unwrap()]);
            if code != Some(2) {
                return Err(fail(format!(
                    "{cmd} on {text:?}: exit {code:?}, want 2\n{out}"
                )));
            }
            if !out.contains(key) {
                return Err(fail(format!(
                    "{cmd} on {text:?}: message does not name {key}:\n{out}"
                )));
            }
        }
    }
    // A missing file, and secrets never echoed.
    let (code, out) = run_gateway_cmd(bin(), &["run", "--config", "/nonexistent/gw.toml"]);
    if code != Some(2) || !out.contains("/nonexistent/gw.toml") {
        return Err(fail(format!("missing file: {code:?} {out}")));
    }
    let path = dir.path().join("secret.toml");
    std::fs::write(
        &path,
        "[mqtt]\nusername = \"u\"\npassword = \"hunter2-s3cret\"\n[kafka.properties]\n\"sasl.password\" = \"kafka-s3cret\"\n\"bogus.prop\" = 1\n",
    )?;
    let (code, out) = run_gateway_cmd(bin(), &["check-config", "--config", path.to_str().unwrap()]);
    if code != Some(2) || out.contains("s3cret") {
        return Err(fail(format!("secret case: {code:?} {out}")));
    }
    Ok(())
}

pub fn check_config_accepts_example() -> Result<(), Failed> {
    let example = harness::repo_root().join("config/gateway.example.toml");
    let (code, out) = run_gateway_cmd(
        bin(),
        &["check-config", "--config", example.to_str().unwrap()],
    );
    if code != Some(0) {
        return Err(fail(format!("example config rejected: {out}")));
    }
    Ok(())
}
