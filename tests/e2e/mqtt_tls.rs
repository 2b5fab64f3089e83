//! TLS to a real Mosquitto with certificates made for the test: `ssl://` with the CA
//! in `mqtt.tls.ca_file` carries messages end to end; a broker certificate from
//! another CA, one for another host name and an expired one are refused with a message
//! that says which; with `require_certificate true` and `use_identity_as_username true` the
//! gateway's client certificate gets it in, and without one it is refused.

use std::path::Path;
use std::time::Duration;

use harness::certs::{make_ca, make_cert, make_expired_cert};
use harness::config::{GatewayConfig, Value};
use harness::{free_port, Gateway, Mosquitto};
use libtest_mimic::Failed;

use crate::common::Site;
use crate::{bin, fail, kafka, messages};

fn tls_broker(certs: &Path, server: &str, require_cert: bool) -> (Mosquitto, u16) {
    let port = free_port();
    let p = |f: &str| certs.join(f).display().to_string();
    let conf = format!(
        "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_cert}\nuse_identity_as_username {require_cert}\n",
        p("ca.pem"),
        p(&format!("{server}.pem")),
        p(&format!("{server}.key")),
    );
    (Mosquitto::start_with(&conf), port)
}

fn gateway_cfg(site: &Site, uri: &str, tls: &str) -> GatewayConfig {
    site.config()
        .mqtt("server_uris", Value::raw(format!("[\"{uri}\"]")))
        .mqtt("tls", Value::raw(tls.to_string()))
}

/// Start a gateway with `cfg` and wait until `/readyz` names a reason containing
/// `want` (a refused TLS connection).
fn refused_with(site: &Site, cfg: &GatewayConfig, want: &str) -> Result<String, Failed> {
    let mut gw = Gateway::start(bin(), site.path(), &cfg.toml());
    gw.wait_serving();
    let admin = gw.admin;
    let mut last = String::new();
    let found = (0..300).any(|_| {
        last = harness::http_get(admin, "/readyz")
            .map(|(_, b)| b)
            .unwrap_or_default();
        if last.to_lowercase().contains(&want.to_lowercase()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(30));
    if !found {
        return Err(fail(format!("/readyz never said {want:?}; last: {last}")));
    }
    Ok(last)
}

pub fn tls_and_mutual_tls_to_mosquitto() -> Result<(), Failed> {
    let site = Site::new(kafka(), "mtls")?;
    let certs = site.path().join("certs");
    std::fs::create_dir(&certs)?;
    make_ca(&certs, "ca")?;
    make_ca(&certs, "other-ca")?;
    make_cert(
        &certs,
        "ca",
        "server",
        "localhost",
        "DNS:localhost,IP:127.0.0.1",
    )?;
    make_cert(
        &certs,
        "ca",
        "elsewhere",
        "elsewhere.example",
        "DNS:elsewhere.example",
    )?;
    make_cert(&certs, "ca", "gw", "gw", "DNS:gw")?;
    make_expired_cert(&certs, "ca", "expired", "localhost", "DNS:localhost")?;
    let p = |f: &str| certs.join(f).display().to_string();

    // TLS with the CA: end to end (published on the broker's plain listener).
    let (mqtt, tls_port) = tls_broker(&certs, "server", false);
    let ca_only = format!("{{ ca_file = \"{}\" }}", p("ca.pem"));
    let uri = format!("ssl://localhost:{tls_port}");
    let cfg = gateway_cfg(&site, &uri, &ca_only).topics(&[("tls/#", 1)]);
    {
        let mut gw = Gateway::start(bin(), site.path(), &cfg.toml());
        gw.wait_ready();
        let msgs = messages("tls", &["tls/a".into()], 300, 100);
        let published = harness::publish(mqtt.port, 1, &msgs, Duration::from_secs(60));
        let consumed = site.consume(msgs.len(), Duration::from_secs(60));
        harness::check(&published, &consumed).assert_clean();
        gw.signal(libc::SIGTERM);
        gw.wait_exit(Duration::from_secs(30));
    }
    // Another CA: the certificate is not trusted, and the reason says so.
    let other = format!("{{ ca_file = \"{}\" }}", p("other-ca.pem"));
    let why = refused_with(&site, &gateway_cfg(&site, &uri, &other), "issuer")?;
    eprintln!("another CA: {why}");
    drop(mqtt);
    // A certificate for another host name.
    let (mqtt, tls_port) = tls_broker(&certs, "elsewhere", false);
    let uri = format!("ssl://localhost:{tls_port}");
    let why = refused_with(&site, &gateway_cfg(&site, &uri, &ca_only), "name")?;
    eprintln!("another host name: {why}");
    drop(mqtt);

    // An expired certificate.
    let (mqtt, tls_port) = tls_broker(&certs, "expired", false);
    let uri = format!("ssl://localhost:{tls_port}");
    let why = refused_with(&site, &gateway_cfg(&site, &uri, &ca_only), "expired")?;
    eprintln!("expired: {why}");
    drop(mqtt);

    // Mutual TLS: the broker asks for a client certificate and takes its CN as the
    // user name.
    let (mqtt, tls_port) = tls_broker(&certs, "server", true);
    let uri = format!("ssl://localhost:{tls_port}");
    let why = refused_with(
        &site,
        &gateway_cfg(&site, &uri, &ca_only),
        "mqtt not connected",
    )?;
    eprintln!("no client certificate: {why}");
    let mutual = format!(
        "{{ ca_file = \"{}\", client_cert_file = \"{}\", client_key_file = \"{}\" }}",
        p("ca.pem"),
        p("gw.pem"),
        p("gw.key")
    );
    let cfg = gateway_cfg(&site, &uri, &mutual).topics(&[("mtls/#", 1)]);
    let mut gw = Gateway::start(bin(), site.path(), &cfg.toml());
    gw.wait_ready();
    let msgs = messages("mtls", &["mtls/a".into()], 300, 100);
    let published = harness::publish(mqtt.port, 1, &msgs, Duration::from_secs(60));
    let consumed = site.consume(msgs.len(), Duration::from_secs(60));
    harness::check(&published, &consumed).assert_clean();
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(30));
    Ok(())
}
