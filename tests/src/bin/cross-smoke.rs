//! `cross-smoke`: end-to-end smoke test of a cross-compiled gateway (run through
//! `scripts/cross-smoke.sh`, which builds the aarch64 binary and a qemu wrapper).
//!
//! The gateway command comes from `MKG_CROSS_GATEWAY`: an executable taking the
//! gateway's own arguments, e.g. a script `exec qemu-aarch64 <binary> "$@"`. Against a
//! real Mosquitto and a real Kafka on free loopback ports it publishes QoS 1 messages,
//! SIGKILLs the gateway mid-stream, restarts it, and checks with the loss checker that
//! every message the broker acknowledged reached Kafka, in order per MQTT topic. It
//! then reads the idle RSS of the (qemu) process once the backlog is drained.
//! Exit 0 only if nothing was lost.

use std::path::PathBuf;
use std::time::Duration;

use harness::config::GatewayConfig;
use harness::{
    check, consume, distinct_ids, http_get, payload, publish, run_gateway_cmd, unique, wait_until,
    Gateway, Kafka, Mosquitto,
};

const MESSAGES: u64 = 5_000;
const KILL_AFTER: u64 = 1_500;

fn usage() -> String {
    "MKG_CROSS_GATEWAY must name an executable that runs the cross-compiled gateway \
     with the arguments it is given, e.g. a script `exec qemu-aarch64 \
     target/cross/aarch64-unknown-linux-gnu/release/mqtt-kafka-gateway \"$@\"`. \
     Run `bash scripts/cross-smoke.sh`, which builds the binary \
     (scripts/cross-build.sh), writes that wrapper and runs this test."
        .to_string()
}

fn gateway_cmd() -> Result<PathBuf, String> {
    let Some(v) = std::env::var_os("MKG_CROSS_GATEWAY") else {
        return Err(format!("MKG_CROSS_GATEWAY is not set. {}", usage()));
    };
    let p = PathBuf::from(v);
    let meta = std::fs::metadata(&p)
        .map_err(|e| format!("MKG_CROSS_GATEWAY={}: {e}. {}", p.display(), usage()))?;
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "MKG_CROSS_GATEWAY={} is not an executable file. {}",
            p.display(),
            usage()
        ));
    }
    Ok(p)
}

fn received(admin: std::net::SocketAddr) -> Option<u64> {
    let (_, body) = http_get(admin, "/status").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["counters"]["mqtt_messages_received"].as_u64()
}

fn backlog(admin: std::net::SocketAddr) -> Option<u64> {
    let (_, body) = http_get(admin, "/backlog").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["records"].as_u64()
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn smoke(bin: &std::path::Path) {
    let (code, out) = run_gateway_cmd(bin, &["--version"]);
    assert_eq!(code, Some(0), "`{} --version` failed: {out}", bin.display());
    eprintln!("cross-smoke: gateway {}: {}", bin.display(), out.trim());

    let kafka = Kafka::start();
    let mosq = Mosquitto::start();
    let dir = tempfile::Builder::new()
        .prefix("mkg-cross-smoke")
        .tempdir()
        .unwrap();
    let topic = unique("cross");
    let config = GatewayConfig::new(mosq.port, &kafka.bootstrap())
        .top("gateway_id", "cross-smoke")
        .topic(&topic);
    let mut gw = Gateway::start(bin, dir.path(), &config.toml());
    gw.wait_ready();
    eprintln!("cross-smoke: gateway ready (pid {})", gw.pid());

    let mqtt_topics: Vec<String> = (0..4).map(|i| format!("cross/dev{i}")).collect();
    let msgs: Vec<(String, Vec<u8>)> = (0..MESSAGES)
        .map(|i| {
            (
                mqtt_topics[(i as usize) % mqtt_topics.len()].clone(),
                payload("cross", i, 256),
            )
        })
        .collect();
    let port = mosq.port;
    let publisher = std::thread::spawn(move || publish(port, 1, &msgs, Duration::from_secs(300)));

    let admin = gw.admin;
    wait_until(
        "the gateway to receive part of the stream",
        Duration::from_secs(120),
        || received(admin).is_some_and(|n| n >= KILL_AFTER),
    );
    let before = received(admin).unwrap_or(0);
    gw.sigkill();
    eprintln!("cross-smoke: SIGKILLed the gateway after it had received {before} messages");
    gw.restart();
    gw.wait_ready();
    eprintln!("cross-smoke: restarted and ready (pid {})", gw.pid());

    let published = publisher.join().expect("publisher thread");
    assert_eq!(
        published.len() as u64,
        MESSAGES,
        "Mosquitto acknowledged only {} of {MESSAGES} publishes",
        published.len()
    );
    let consumed = consume(
        &kafka.bootstrap(),
        &[topic.as_str()],
        Duration::from_secs(300),
        |r| distinct_ids(r) >= MESSAGES as usize,
    );
    let report = check(&published, &consumed);
    eprintln!("cross-smoke: {report}");
    report.assert_clean();
    assert!(report.consumed >= MESSAGES as usize, "{report}");

    let admin = gw.admin;
    wait_until(
        "the WAL backlog to drain to 0",
        Duration::from_secs(120),
        || backlog(admin) == Some(0),
    );
    // Idle: everything delivered and deleted, no traffic.
    let (rss, hwm) = rss_kib(gw.pid());
    assert!(rss > 0, "could not read /proc/{}/status", gw.pid());
    eprintln!(
        "cross-smoke: idle RSS of the gateway process {} KiB (peak {} KiB)",
        rss, hwm
    );
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(60));
    assert!(
        status.success(),
        "gateway exited {status} after SIGTERM:\n{}",
        gw.log()
    );
    println!(
        "cross-smoke: {MESSAGES} acknowledged, {} records read, lost 0, out of order 0, {} duplicated after SIGKILL, idle RSS {rss} KiB",
        report.consumed,
        report.duplicated.len()
    );
}

fn main() -> std::process::ExitCode {
    let bin = match gateway_cmd() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cross-smoke: ERROR: {e}");
            println!("smoke: 0 passed, 1 failed");
            return std::process::ExitCode::FAILURE;
        }
    };
    match std::panic::catch_unwind(|| smoke(&bin)) {
        Ok(()) => {
            println!("smoke: 1 passed, 0 failed");
            std::process::ExitCode::SUCCESS
        }
        Err(_) => {
            println!("smoke: 0 passed, 1 failed");
            std::process::ExitCode::FAILURE
        }
    }
}
