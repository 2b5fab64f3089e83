//! The admin API over HTTPS (`[admin.tls]`) on a running gateway, with certificates
//! made by `openssl` for the test: curl trusts it through the test CA, plain HTTP gets
//! no answer, the token is still needed; the command line pins the config's
//! certificate or verifies with `--ca-file`; a SIGHUP serves a renewed certificate to
//! new connections; a key that does not fit its certificate is refused by
//! `check-config` naming the key; the key never reaches the log.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::certs::{make_ca, make_cert};
use harness::config::{GatewayConfig, Value};
use harness::{free_port, http_get, run_gateway_cmd, wait_until, Gateway, Mosquitto};
use libtest_mimic::Failed;

use crate::{bin, fail};

/// A CA, and `name`.pem / `name`.key signed by it for localhost and 127.0.0.1.
fn make_certs(dir: &Path, names: &[&str]) -> Result<(), Failed> {
    make_ca(dir, "ca")?;
    for name in names {
        make_cert(dir, "ca", name, "localhost", "DNS:localhost,IP:127.0.0.1")?;
    }
    Ok(())
}

/// curl over HTTPS trusting the test CA: (HTTP status, body); status 0 when it failed.
fn curl(dir: &Path, url: &str, token: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(dir.join("ca.pem"))
        .args(["-w", "\n%{http_code}", url]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let Ok(out) = c.output() else {
        return (0, String::new());
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The serial number of the certificate the server at `addr` presents.
fn served_serial(addr: &str) -> String {
    let s_client = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output();
    s_client.map_or(String::new(), |o| {
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    })
}

fn serial_of(dir: &Path, pem: &str) -> Result<String, Failed> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in", pem])
        .current_dir(dir)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn admin_api_over_https_with_a_renewed_certificate() -> Result<(), Failed> {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs)?;
    make_certs(&certs, &["server", "renewed"])?;
    std::fs::copy(certs.join("server.pem"), certs.join("admin.pem"))?;
    std::fs::copy(certs.join("server.key"), certs.join("admin.key"))?;
    let token = "tls-token-5d1e77a0";
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    let path = |p: &Path| p.to_str().map(str::to_string).ok_or("path");
    let tls = Value::raw(format!(
        "{{ cert_file = \"{}\", key_file = \"{}\" }}",
        path(&certs.join("admin.pem"))?,
        path(&certs.join("admin.key"))?
    ));
    let nowhere = format!("127.0.0.1:{}", free_port());
    let cfg = GatewayConfig::new(m.port, &nowhere)
        .topic("tls-test")
        .admin("token_file", path(&token_file)?.as_str())
        .admin("tls", tls);
    let gw = Gateway::start(bin(), dir.path(), &cfg.toml());
    let admin = gw.admin;
    let base = format!("https://localhost:{}", admin.port());

    // HTTPS with the token; the probes without.
    wait_until("the admin API over HTTPS", Duration::from_secs(60), || {
        curl(&certs, &format!("{base}/healthz"), None).0 == 200
    });
    let (status, body) = curl(&certs, &format!("{base}/backlog"), Some(token));
    if status != 200 || !body.contains("\"records\"") {
        return Err(fail(format!("GET /backlog over HTTPS: {status} {body}")));
    }
    let (status, _) = curl(&certs, &format!("{base}/backlog"), None);
    if status != 401 {
        return Err(fail(format!("GET /backlog without the token: {status}")));
    }
    // Plain HTTP gets no HTTP answer from the TLS port.
    if let Ok((status, body)) = http_get(admin, "/healthz") {
        return Err(fail(format!("plain HTTP answered: {status} {body}")));
    }

    // The command line: the config's certificate pinned (127.0.0.1 is not checked
    // against the name), or the CA with --ca-file; https without either is refused.
    let config = dir.path().join("gateway.toml");
    let config = path(&config)?;
    let cli = |args: &[&str], want: i32, shows: &str| -> Result<(), Failed> {
        let (code, out) = run_gateway_cmd(bin(), args);
        if code != Some(want) || !out.contains(shows) {
            return Err(fail(format!(
                "{args:?}: exit {code:?} (want {want}), output without {shows:?}:\n{out}"
            )));
        }
        Ok(())
    };
    cli(&["backlog", "--config", &config], 0, "backlog 0 records")?;
    let ca = path(&certs.join("ca.pem"))?;
    let tok = path(&token_file)?;
    cli(
        &[
            "status",
            "--url",
            &base,
            "--ca-file",
            &ca,
            "--token-file",
            &tok,
        ],
        0,
        "WAL",
    )?;
    cli(
        &["status", "--url", &base, "--token-file", &tok],
        2,
        "--ca-file",
    )?;
    // The wrong CA: the server's own certificate is not a CA.
    let wrong = path(&certs.join("renewed.pem"))?;
    cli(
        &[
            "status",
            "--url",
            &base,
            "--ca-file",
            &wrong,
            "--token-file",
            &tok,
        ],
        4,
        "cannot reach",
    )?;

    // A renewed certificate in the same files, then SIGHUP: new connections get it.
    let addr = format!("127.0.0.1:{}", admin.port());
    let (old, new) = (
        serial_of(&certs, "server.pem")?,
        serial_of(&certs, "renewed.pem")?,
    );
    if served_serial(&addr) != old || old == new {
        return Err(fail(format!(
            "served {:?}, the certificate is {old:?}",
            served_serial(&addr)
        )));
    }
    std::fs::copy(certs.join("renewed.pem"), certs.join("admin.pem"))?;
    std::fs::copy(certs.join("renewed.key"), certs.join("admin.key"))?;
    gw.signal(libc::SIGHUP);
    wait_until(
        "the renewed certificate served",
        Duration::from_secs(30),
        || served_serial(&addr) == new,
    );
    let (status, _) = curl(&certs, &format!("{base}/status"), Some(token));
    if status != 200 {
        return Err(fail(format!("after the renewal: {status}")));
    }

    // A key that does not fit the certificate: check-config names the key.
    std::fs::copy(certs.join("server.key"), certs.join("admin.key"))?;
    let (code, out) = run_gateway_cmd(bin(), &["check-config", "--config", &config]);
    if code != Some(2) || !out.contains("admin.tls.key_file") {
        return Err(fail(format!("mismatched key: exit {code:?}\n{out}")));
    }
    let key = std::fs::read_to_string(certs.join("server.key"))?;
    let secret_line = key.lines().nth(1).unwrap_or("none");
    if out.contains(secret_line) || gw.log().contains(secret_line) || gw.log().contains(token) {
        return Err(fail("the key or the token reached the output or the log"));
    }
    Ok(())
}
