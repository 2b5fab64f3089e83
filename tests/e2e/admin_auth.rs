//! The admin API's bearer token (`admin.token_file`) on a running gateway: probes
//! open, every other route 401 without the token or with a wrong one, 200 with it; a
//! SIGHUP reads the file again (rotation); the token never reaches the log. The
//! command line for a running gateway (`status`, `backlog`, `records`,
//! `dead-letters list`) finds the address and token in the config and says which
//! failure it met by its exit code.

use std::net::SocketAddr;
use std::time::Duration;

use harness::config::GatewayConfig;
use harness::{http_get, http_get_with, run_gateway_cmd, wait_until, Gateway, Mosquitto};
use libtest_mimic::Failed;

use crate::{bin, fail, kafka};

fn status_with(admin: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http_get_with(admin, path, &headers).map_or(0, |(s, _)| s)
}

pub fn admin_token_guards_the_api_and_rotates_on_sighup() -> Result<(), Failed> {
    let k = kafka();
    let m = Mosquitto::start();
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("admin.token");
    let (first, second) = ("first-7f3a9c0d2e", "second-91bb04c6aa");
    std::fs::write(&token_file, format!("{first}\n"))?;
    let cfg = GatewayConfig::new(m.port, &k.bootstrap())
        .admin("token_file", token_file.to_str().ok_or("path")?);
    let mut gw = Gateway::start(bin(), dir.path(), &cfg.toml());
    gw.wait_serving();
    let admin = gw.admin;
    // The probes answer without a token: systemd and load balancers use them.
    wait_until("/readyz without a token", Duration::from_secs(60), || {
        http_get(admin, "/readyz").is_ok_and(|(s, _)| s == 200)
    });
    for path in ["/status", "/backlog", "/metrics"] {
        for (token, want) in [(None, 401), (Some("wrong"), 401), (Some(first), 200)] {
            let got = status_with(admin, path, token);
            if got != want {
                return Err(fail(format!("{path} with {token:?}: {got}, want {want}")));
            }
        }
    }
    let (_, body) = http_get(admin, "/status")?;
    if !body.contains("admin.token_file") {
        return Err(fail(format!("401 does not say what to send: {body}")));
    }

    // Rotation: a new file content and SIGHUP.
    std::fs::write(&token_file, format!("{second}\n"))?;
    gw.signal(libc::SIGHUP);
    wait_until("the new token", Duration::from_secs(30), || {
        status_with(admin, "/status", Some(second)) == 200
    });
    if status_with(admin, "/status", Some(first)) != 401 {
        return Err(fail("the old token still works after the reload"));
    }
    let log = gw.log();
    if log.contains(first) || log.contains(second) {
        return Err(fail(format!("a token reached the log:\n{log}")));
    }

    // The CLI: address and token from the config, or given; exit codes 4 and 5.
    let config = dir.path().join("gateway.toml");
    let config = config.to_str().ok_or("path")?;
    let url = format!("http://{admin}");
    let token = token_file.to_str().ok_or("path")?;
    let cli = |args: &[&str], want: i32, shows: &str| -> Result<(), Failed> {
        let (code, out) = run_gateway_cmd(bin(), args);
        if code != Some(want) || !out.contains(shows) {
            return Err(fail(format!(
                "{args:?}: exit {code:?} (want {want}), output without {shows:?}:\n{out}"
            )));
        }
        if out.contains(second) {
            return Err(fail(format!("{args:?} printed the token")));
        }
        Ok(())
    };
    cli(&["status", "--config", config], 0, "MQTT   connected to")?;
    cli(&["backlog", "--config", config], 0, "backlog 0 records")?;
    cli(&["records", "--config", config], 0, "0 shown")?;
    cli(&["dead-letters", "list", "--config", config], 0, "0 shown")?;
    cli(
        &["records", "--config", config, "--json"],
        0,
        "\"records\": []",
    )?;
    cli(&["status", "--url", &url, "--token-file", token], 0, "WAL")?;
    cli(&["status", "--url", &url], 5, "asks for a token")?;
    cli(
        &["status", "--url", "http://127.0.0.1:1"],
        4,
        "cannot reach",
    )?;
    Ok(())
}
