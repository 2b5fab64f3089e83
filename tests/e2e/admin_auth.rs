//! The admin API's bearer token (`admin.token_file`) on a running gateway: probes
//! open, every other route 401 without the token or with a wrong one, 200 with it; a
//! SIGHUP reads the file again (rotation); the token never reaches the log.

use std::net::SocketAddr;
use std::time::Duration;

use harness::config::GatewayConfig;
use harness::{http_get, http_get_with, wait_until, Gateway, Mosquitto};
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
    Ok(())
}
