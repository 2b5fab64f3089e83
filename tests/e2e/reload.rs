//! SIGHUP reloads the configuration file without stopping the gateway: subscriptions
//! (a resubscribe, and an unsubscribe of what was removed), routes, the log filter and
//! the admin listener change live; a key that needs a restart is named and left as
//! it was; a bad file is refused, counted and shown, and the running configuration
//! stays.

use std::net::SocketAddr;
use std::time::Duration;

use harness::{consume, distinct_ids, free_port, unique, wait_until, Gateway};
use libtest_mimic::Failed;

use crate::common::{admin_u64, Site};
use crate::{bin, fail, kafka, messages};

/// Write `cfg` as the gateway's file, filling in `{admin}` and `{wal}` like the
/// harness does.
fn write_config(gw: &Gateway, cfg: &str, admin: SocketAddr) -> Result<(), Failed> {
    let text = cfg
        .replace("{admin}", &admin.to_string())
        .replace("{wal}", gw.dir.join("wal").to_str().unwrap());
    std::fs::write(gw.dir.join("gateway.toml"), text)?;
    Ok(())
}

fn reloads(admin: SocketAddr) -> Option<u64> {
    admin_u64(admin, "/status", "/counters/config_reloads")
}

pub fn sighup_reloads_what_can_change_live() -> Result<(), Failed> {
    let site = Site::new(kafka(), "reload")?;
    let routed = unique("reload-b");
    let client_id = unique("gw");
    let base = site.config().mqtt("client_id", client_id.clone());
    let first = base.clone().topics(&[("r/a/#", 1)]);
    // Without RUST_LOG, which would win over the file's `log`.
    let mut gw = Gateway::start_with_env(bin(), site.path(), &first.toml(), &[("RUST_LOG", "")]);
    gw.wait_ready();
    let old_admin = gw.admin;

    // Subscribe to r/b/# too, route it to its own topic, move the admin API, raise the
    // log level; and change the client id, which needs a restart.
    let new_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let second = base
        .topics(&[("r/a/#", 1), ("r/b/#", 1)])
        .routes(&[("r/b/#", &routed)])
        .top("log", "info,gateway=debug")
        .mqtt("client_id", format!("changed-{client_id}"));
    write_config(&gw, &second.toml(), new_admin)?;
    gw.signal(libc::SIGHUP);
    wait_until(
        "the reload, on the new admin address",
        Duration::from_secs(30),
        || reloads(new_admin) == Some(1),
    );
    gw.admin = new_admin;
    if harness::http_get(old_admin, "/healthz").is_ok() {
        return Err(fail("the old admin address still answers"));
    }
    let st = gw.json("/status");
    if st["config"]["restart_needed"] != serde_json::json!(["mqtt.client_id"]) {
        return Err(fail(format!("restart_needed: {}", st["config"])));
    }
    let log = gw.log();
    let reloaded = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .ok_or_else(|| fail(format!("no reload line:\n{log}")))?;
    for key in ["mqtt.topics", "kafka.routes", "admin", "log"] {
        if !reloaded.contains(key) {
            return Err(fail(format!("{key} not named as applied: {reloaded}")));
        }
    }
    if !log
        .lines()
        .any(|l| l.contains("take effect at the next start") && l.contains("mqtt.client_id"))
    {
        return Err(fail(format!("mqtt.client_id not named:\n{log}")));
    }
    gw.wait_ready();

    let msgs_a = messages("ra", &["r/a/1".into()], 50, 32);
    let msgs_b = messages("rb", &["r/b/1".into()], 50, 32);
    site.publish_all(&msgs_a, Duration::from_secs(30))?;
    site.publish_all(&msgs_b, Duration::from_secs(30))?;
    let got_b = consume(
        &site.kafka.bootstrap(),
        &[routed.as_str()],
        Duration::from_secs(60),
        |r| distinct_ids(r) >= 50,
    );
    let got_a = site.consume(50, Duration::from_secs(60));
    if distinct_ids(&got_b) != 50 || distinct_ids(&got_a) != 50 {
        return Err(fail(format!(
            "routed {} of 50, default {} of 50",
            distinct_ids(&got_b),
            distinct_ids(&got_a)
        )));
    }

    // A bad file is refused; the gateway keeps running with what it had.
    write_config(&gw, "[mqtt\nthis is not TOML", new_admin)?;
    gw.signal(libc::SIGHUP);
    wait_until("the refusal", Duration::from_secs(30), || {
        admin_u64(new_admin, "/status", "/counters/config_reload_errors") == Some(1)
    });
    let st = gw.json("/status");
    if !st["config"]["last_reload_error"]
        .as_str()
        .is_some_and(|e| e.contains("gateway.toml"))
    {
        return Err(fail(format!(
            "no reload error in /status: {}",
            st["config"]
        )));
    }
    if gw.try_wait().is_some() {
        return Err(fail("SIGHUP with a bad file stopped the gateway"));
    }

    // r/a/# removed: unsubscribed. A message there is not taken; one on r/b after it is.
    let third = second.topics(&[("r/b/#", 1)]);
    write_config(&gw, &third.toml(), new_admin)?;
    let changed = |gw: &Gateway| {
        gw.log()
            .matches("MQTT subscriptions changed by the configuration reload")
            .count()
    };
    let changes = changed(&gw);
    gw.signal(libc::SIGHUP);
    wait_until("the third reload", Duration::from_secs(30), || {
        reloads(new_admin) == Some(2)
    });
    // The reload is counted before the ingest takes it: wait for the ingest's line,
    // then for the broker to acknowledge the new subscriptions (an UNSUBSCRIBE goes
    // out before them on the same connection, so it is done by then).
    wait_until(
        "the ingest to take the reload",
        Duration::from_secs(30),
        || changed(&gw) > changes,
    );
    gw.wait_ready();
    let before = admin_u64(new_admin, "/status", "/counters/mqtt_messages_received");
    site.publish_all(
        &messages("gone", &["r/a/2".into()], 1, 16),
        Duration::from_secs(30),
    )?;
    site.publish_all(
        &messages("after", &["r/b/2".into()], 1, 16),
        Duration::from_secs(30),
    )?;
    let got = consume(
        &site.kafka.bootstrap(),
        &[routed.as_str()],
        Duration::from_secs(60),
        |r| r.iter().any(|c| c.payload.starts_with(b"after:")),
    );
    if !got.iter().any(|c| c.payload.starts_with(b"after:")) {
        return Err(fail("the marker on r/b did not arrive"));
    }
    let after = admin_u64(new_admin, "/status", "/counters/mqtt_messages_received");
    if after.zip(before).map(|(a, b)| a - b) != Some(1) {
        return Err(fail(format!(
            "received {before:?} -> {after:?}: the removed subscription still delivers"
        )));
    }
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(30));
    if status.code() != Some(0) {
        return Err(fail(format!("exit {status}")));
    }
    // The reloaded log filter was in force: the WAL thread's last line is at debug.
    if !gw.log().contains("WAL thread stopped") {
        return Err(fail(format!(
            "the debug filter was not applied:
{}",
            gw.log()
        )));
    }
    Ok(())
}
