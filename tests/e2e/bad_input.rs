//! Bad input from /work/shared/RELIABILITY.md not covered elsewhere, end to end: a
//! retained MQTT message, and malformed / oversized / unknown admin HTTP requests
//! against the running gateway. Each gets a clear answer and the process keeps running
//! and forwarding.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::{check, Published};
use libtest_mimic::Failed;

use crate::common::Site;
use crate::{fail, kafka, messages};

/// Send raw bytes, return what came back (until close or 5 s).
fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

pub fn retained_message_and_bad_admin_requests() -> Result<(), Failed> {
    let site = Site::new(kafka(), "bad")?;
    // A retained message published before the gateway subscribes: the broker hands it
    // over with the retain flag set when the gateway subscribes.
    let retained = harness::payload("ret", 0, 64);
    let out = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &site.mqtt.port.to_string(),
            "-q",
            "1",
            "-r",
            "-t",
            "r/state",
        ])
        .arg("-m")
        .arg(std::str::from_utf8(&retained).unwrap())
        .output()
        .map_err(|e| {
            fail(format!(
                "mosquitto_pub (mosquitto-clients, scripts/install-deps.sh): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(fail(format!(
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut gw = site.gateway();
    let admin = gw.admin;

    // Admin HTTP bad input over the wire.
    let cases: [(&str, &[u8], &[&str]); 4] = [
        ("unknown path", b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &["404"]),
        ("malformed request line", b"THIS IS NOT HTTP\r\n\r\n", &["400", ""]),
        (
            "huge announced body",
            b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\nConnection: close\r\n\r\n",
            &["413", "405", "400"],
        ),
        ("unknown method", b"BREW /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &["405", "400", "501"]),
    ];
    for (what, req, ok) in cases {
        let resp = raw(admin, req);
        let status = resp.split_whitespace().nth(1).unwrap_or("").to_string();
        if !ok.iter().any(|s| *s == status) {
            return Err(fail(format!(
                "{what}: unexpected answer {status:?}: {resp}"
            )));
        }
        eprintln!(
            "admin {what}: {}",
            if status.is_empty() {
                "connection closed".into()
            } else {
                status
            }
        );
    }
    if let Some(status) = gw.try_wait() {
        return Err(fail(format!("gateway exited: {status}\n{}", gw.log())));
    }

    // Still forwarding: the retained message and a normal stream arrive.
    let mut published = vec![Published {
        topic: "r/state".into(),
        payload: retained.clone(),
    }];
    published.extend(site.publish(
        &messages("after", &["a/1".into()], 200, 100),
        Duration::from_secs(60),
    ));
    let consumed = site.consume(201, Duration::from_secs(60));
    let report = check(&published, &consumed);
    eprintln!("retained + after bad admin requests: {report}");
    report.assert_clean();
    let ret = consumed
        .iter()
        .find(|c| c.payload == retained)
        .ok_or_else(|| fail("retained message missing"))?;
    if ret.headers.get("mqtt.retain").map(String::as_str) != Some("true") {
        return Err(fail(format!("retained message headers: {:?}", ret.headers)));
    }
    if harness::http_get(admin, "/healthz")
        .map(|(s, _)| s)
        .unwrap_or(0)
        != 200
    {
        return Err(fail("admin API stopped answering"));
    }
    Ok(())
}
