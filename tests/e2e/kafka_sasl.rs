//! Kafka as production clusters run it: SASL_SSL with SCRAM-SHA-512 and SASL_PLAINTEXT
//! with PLAIN on the real broker, credentials made by the harness, the password in
//! `kafka.sasl_password_file`, the broker's authorizer on. End to end with the right
//! credentials; a topic the gateway may not write is parked as a dead letter
//! ("not authorized") while another flows; a wrong password and a certificate from an
//! untrusted CA are named in `/status` and in the log; no password in any log.

use std::time::Duration;

use harness::secured_kafka::SecuredKafka;
use harness::{check, consume, distinct_ids, unique, wait_until, Gateway};
use libtest_mimic::Failed;

use crate::common::Site;
use crate::{bin, fail, messages};

const GW_PASSWORD: &str = "gw-kafka-pw-5e1";
const WRONG_PASSWORD: &str = "not-the-pw-77c";

pub fn sasl_ssl_scram_sasl_plain_and_acls() -> Result<(), Failed> {
    let certs = tempfile::tempdir()?;
    let sk = SecuredKafka::start(certs.path(), &[("gw", GW_PASSWORD)], true);
    let site = Site::new(&sk.kafka, "sasl")?;
    let allowed = unique("sec.ok");
    let forbidden = unique("forbidden");
    sk.kafka.create_topic(&allowed, 3);
    sk.kafka.create_topic(&forbidden, 1);
    sk.allow("gw", &["Write", "Describe"], "sec.");

    let pw_file = site.path().join("kafka.password");
    std::fs::write(&pw_file, format!("{GW_PASSWORD}\n"))?;
    let wrong_file = site.path().join("wrong.password");
    std::fs::write(&wrong_file, format!("{WRONG_PASSWORD}\n"))?;
    let base = |bootstrap: &str, protocol: &str, mechanism: &str, pw: &std::path::Path| {
        site.config()
            .topics(&[("sensors/#", 1)])
            .routes(&[("sensors/ok/#", &allowed), ("sensors/secret/#", &forbidden)])
            .kafka("bootstrap_servers", bootstrap)
            .kafka("sasl_password_file", pw.to_str().unwrap())
            .property("security.protocol", protocol)
            .property("sasl.mechanisms", mechanism)
            .property("sasl.username", "gw")
            .forward("unknown_topic_grace", "2s")
    };
    let mut logs = Vec::new();

    // SASL_SSL + SCRAM-SHA-512, the broker's CA trusted: allowed topic end to end,
    // the forbidden one parked with the reason.
    let cfg = base(&sk.sasl_ssl(), "SASL_SSL", "SCRAM-SHA-512", &pw_file)
        .property("ssl.ca.location", sk.ca_file.to_str().unwrap());
    let mut gw = Gateway::start(bin(), &subdir(&site, "scram")?, &cfg.toml());
    gw.wait_ready();
    let ok = messages(
        "scram",
        &["sensors/ok/a".into(), "sensors/ok/b".into()],
        300,
        100,
    );
    let secret = messages("denied", &["sensors/secret/x".into()], 20, 100);
    let published = site.publish_all(&ok, Duration::from_secs(60))?;
    site.publish_all(&secret, Duration::from_secs(60))?;
    let consumed = consume(
        &sk.kafka.bootstrap(),
        &[&allowed],
        Duration::from_secs(90),
        |r| distinct_ids(r) >= 300,
    );
    check(&published, &consumed).assert_clean();
    let admin = gw.admin;
    wait_until(
        "the forbidden topic's 20 records parked",
        Duration::from_secs(90),
        || {
            harness::http_get(admin, "/backlog").is_ok_and(|(_, b)| {
                serde_json::from_str::<serde_json::Value>(&b)
                    .is_ok_and(|v| v["dead_letters"]["records"] == 20 && v["records"] == 0)
            })
        },
    );
    let listed = gw.json("/dead-letters");
    let parked = listed["dead_letters"].as_array().ok_or("no list")?;
    if parked.len() != 20
        || parked.iter().any(|d| {
            !d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("not authorized") && r.contains(&forbidden))
        })
    {
        return Err(fail(format!("/dead-letters: {listed}")));
    }
    eprintln!("parked: {}", parked[0]["reason"]);
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(30));
    logs.push(gw.log());
    drop(gw);

    // SASL_PLAINTEXT + PLAIN.
    let cfg = base(&sk.sasl_plaintext(), "SASL_PLAINTEXT", "PLAIN", &pw_file);
    let mut gw = Gateway::start(bin(), &subdir(&site, "plain")?, &cfg.toml());
    gw.wait_ready();
    let ok2 = messages("plain", &["sensors/ok/c".into()], 200, 100);
    let published = site.publish_all(&ok2, Duration::from_secs(60))?;
    let consumed = consume(
        &sk.kafka.bootstrap(),
        &[&allowed],
        Duration::from_secs(90),
        |r| distinct_ids(r) >= 500,
    );
    // The allowed topic holds the first run's records too: only losses count here.
    let report = check(&published, &consumed);
    if !report.lost.is_empty() {
        report.assert_clean();
    }
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(30));
    logs.push(gw.log());
    drop(gw);

    // A wrong password and a certificate the gateway does not trust: named in
    // /status and in the log, records kept.
    let bad = [
        (
            "wrong password",
            base(&sk.sasl_ssl(), "SASL_SSL", "SCRAM-SHA-512", &wrong_file)
                .property("ssl.ca.location", sk.ca_file.to_str().unwrap()),
            "Authentication failed",
        ),
        (
            "untrusted certificate",
            base(&sk.sasl_ssl(), "SASL_SSL", "SCRAM-SHA-512", &pw_file)
                .property("ssl.ca.location", sk.other_ca_file.to_str().unwrap()),
            "certificate verify failed",
        ),
    ];
    for (i, (what, cfg, says)) in bad.iter().enumerate() {
        let mut gw = Gateway::start(bin(), &subdir(&site, &format!("bad{i}"))?, &cfg.toml());
        gw.wait_ready();
        site.publish_all(
            &messages(&format!("bad{i}"), &["sensors/ok/d".into()], 10, 50),
            Duration::from_secs(60),
        )?;
        let admin = gw.admin;
        wait_until(
            &format!("/status to name the {what}"),
            Duration::from_secs(60),
            || {
                harness::http_get(admin, "/status").is_ok_and(|(_, b)| {
                    serde_json::from_str::<serde_json::Value>(&b).is_ok_and(|v| {
                        v["kafka"]["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains(says))
                    })
                })
            },
        );
        let status = gw.json("/status");
        eprintln!("{what}: {}", status["kafka"]["last_error"]);
        if gw.json("/backlog")["records"] != 10 {
            return Err(fail(format!("{what}: backlog {}", gw.json("/backlog"))));
        }
        if !gw.log().contains(says) {
            return Err(fail(format!("{what}: the log does not say {says:?}")));
        }
        gw.signal(libc::SIGTERM);
        gw.wait_exit(Duration::from_secs(30));
        logs.push(gw.log());
    }

    for log in &logs {
        for secret in [GW_PASSWORD, WRONG_PASSWORD] {
            if log.contains(secret) {
                return Err(fail(format!("a gateway log shows a password:\n{log}")));
            }
        }
    }
    Ok(())
}

/// A directory of its own under the site's for each gateway run.
fn subdir(site: &Site, name: &str) -> Result<std::path::PathBuf, Failed> {
    let d = site.path().join(name);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
