//! A secured Mosquitto, as a site that replaces Kafka Connect has it: no anonymous
//! clients, a password file, an ACL that lets the gateway's user read `sensors/#` and a
//! device user write it. The right credentials work end to end; a wrong password is
//! reported (log, `/readyz`), retried with backoff (the broker sees few attempts), and
//! the gateway connects once the broker's password file is fixed.
//!
//! Mosquitto 2.0.11 grants a subscription its ACL does not let the user read (SUBACK
//! 0, then nothing delivered): no SUBACK failure to report. Checked by hand with
//! `mosquitto_sub -d -t 'secret/#'` against such a broker.

use std::time::{Duration, Instant};

use harness::{publish_as, wait_until, Gateway, Mosquitto};
use libtest_mimic::Failed;

use crate::common::Site;
use crate::{bin, fail, kafka, messages};

const ACL: &str = "user gw\ntopic read sensors/#\n\nuser device\ntopic write sensors/#\n";

/// TCP connections the broker logged (`log_type notice`), refused or not.
fn connections_logged(m: &Mosquitto) -> usize {
    std::fs::read_to_string(m.dir().join("mosquitto.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("New connection from"))
        .count()
}

pub fn password_file_and_acl() -> Result<(), Failed> {
    let site = Site::new(kafka(), "secured")?;
    let mqtt = Mosquitto::start_secured(&[("gw", "gw-pass-31f"), ("device", "dev-pass-9a2")], ACL);
    let secret = site.path().join("mqtt.password");
    std::fs::write(&secret, "gw-pass-31f\n")?;
    let cfg = site
        .config()
        .mqtt(
            "server_uris",
            harness::config::Value::raw(format!("[\"tcp://127.0.0.1:{}\"]", mqtt.port)),
        )
        .mqtt("username", "gw")
        .mqtt("password_file", secret.to_str().ok_or("path")?)
        .topics(&[("sensors/#", 1)]);
    let mut gw = Gateway::start(bin(), site.path(), &cfg.toml());
    gw.wait_ready();

    // The right credentials: end to end.
    let msgs = messages("sec", &["sensors/a".into(), "sensors/b".into()], 500, 100);
    let published = publish_as(
        mqtt.port,
        Some(("device", "dev-pass-9a2")),
        1,
        &msgs,
        Duration::from_secs(60),
    );
    if published.len() != msgs.len() {
        return Err(fail(format!(
            "the device user published {} of {}",
            published.len(),
            msgs.len()
        )));
    }
    let consumed = site.consume(msgs.len(), Duration::from_secs(60));
    harness::check(&published, &consumed).assert_clean();

    // The broker's password for the gateway changes: a restarted gateway is refused.
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(30));
    mqtt.set_password("gw", "rotated-7d0");
    gw.restart();
    gw.wait_serving();
    let admin = gw.admin;
    wait_until(
        "/readyz to name the refusal",
        Duration::from_secs(30),
        || {
            harness::http_get(admin, "/readyz")
                .is_ok_and(|(s, b)| s == 503 && b.contains("refused"))
        },
    );
    let (_, why) = harness::http_get(admin, "/readyz")?;
    // Backoff (the tests' mqtt.reconnect_max_delay is 1 s): over 10 s the broker sees
    // about ten attempts, not a loop.
    let before = connections_logged(&mqtt);
    let start = Instant::now();
    wait_until("10 s of refused attempts", Duration::from_secs(20), || {
        start.elapsed() >= Duration::from_secs(10)
    });
    let attempts = connections_logged(&mqtt) - before;
    let log = gw.log();
    eprintln!("refused: /readyz {why}; {attempts} attempts in 10 s");
    if !(2..=15).contains(&attempts) {
        return Err(fail(format!(
            "{attempts} connection attempts in 10 s (want 2 to 15: retried, with backoff)"
        )));
    }
    if !log.contains("cannot connect to MQTT broker") || log.contains("gw-pass-31f") {
        return Err(fail(format!(
            "the log does not say it, or shows the password:\n{log}"
        )));
    }
    // The broker's file fixed: the gateway connects on its next attempt.
    mqtt.set_password("gw", "gw-pass-31f");
    wait_until("ready again", Duration::from_secs(90), || {
        harness::http_get(admin, "/readyz").is_ok_and(|(s, _)| s == 200)
    });

    Ok(())
}
