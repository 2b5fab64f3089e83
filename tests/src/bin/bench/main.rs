//! The benchmark: every figure next to its ceiling, in one run, one table
//! (docs/BENCHMARKS.md). `cargo xtask bench [--quick]` builds the release gateway and
//! the tools, then runs this; `--help` lists the options.
//!
//! It starts its own Mosquitto and Kafka on free loopback ports (the harness's, as the
//! tests do) and measures, with 256-byte payloads at QoS 1:
//!
//! 1. ingest: Mosquitto's delivery ceiling (the better of `mosquitto_sub -q 1` and a
//!    rumqttc subscriber, `mqttsub`; both acknowledge at once) vs the gateway's durable
//!    ingest (committed and PUBACKed) with Kafka down, and the same while a client
//!    pages through the backlog (`/records`, `/backlog/topics`) in a loop, against the
//!    mean of the runs without paging before and after it;
//! 2. drain: a WAL backlog forwarded to Kafka vs `kcat -P` (and `kprod`, the same on
//!    the gateway's librdkafka) producing the same records from a file;
//! 3. end to end: `loadgen` -> Mosquitto -> gateway -> Kafka vs the naive, not durable
//!    `mosquitto_sub -q 1 | kcat -P`;
//! 4. latency: publish -> readable in Kafka at 1,000 and 10,000 msg/s (`latency`);
//! 5. RSS idle, under full load (3), draining the backlog (2) and with a 10x backlog;
//! 6. disk bytes written per payload byte at 1,000/s and at full speed;
//! 7. start to ready with the big backlog;
//! 8. the stripped release binary;
//! 9. with `--sd-card`: ingest, latency, fsyncs and bytes written per day with every
//!    fsync made slower (an SD card) and the gateway on one core;
//! 10. with `--drain-windows`: the backlog of 2 drained with each in-flight window,
//!     drain rate and peak RSS (the memory / speed curve).
//!
//! Backlogs are written by `walfill` through the `wal` crate (the records the gateway
//! writes): publishing 10M messages through Mosquitto would take longer than the
//! whole bench. At the end every message of every run must be in Kafka.

mod curve;
mod ingest;
mod latency;
mod opts;
mod phases;
mod probe;
mod procs;
mod report;
mod sdcard;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{Kafka, Mosquitto};
use serde_json::Value;

use opts::Opts;
use procs::{kafka_jvm_opts, on_path, read_topic, write_records, Running};
use report::Results;

type Res<T> = Result<T, String>;

/// Topics of the Kafka checks: the gateway's (`bench`, `big`) and the ceilings'.
const TOPICS: [&str; 5] = ["bench", "big", "kcatref", "kprodref", "naive"];
/// Topics whose records carry Kafka's append time (the latency stages).
const APPEND_TIME_TOPICS: [&str; 2] = ["bench", latency::NAIVE_TOPIC];
/// MQTT topics per publisher.
const TOPICS_PER_PUBLISHER: u64 = 8;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{}", opts::HELP);
        return;
    }
    let o = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    let dir = o.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mkg-bench.{}.{}", std::process::id(), now_ms()))
    });
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("bench: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let result = run(&o, &dir);
    if o.keep || result.is_err() {
        eprintln!("bench: work dir kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Err(e) = result {
        eprintln!("bench: error: {e}");
        std::process::exit(1);
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The last line of a tool's stdout as JSON.
fn last_json(stdout: &[u8], what: &str) -> Res<Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("{what}: no JSON result ({e}): {text}"))
}

/// Wait for `child` to exit, reading its CPU ticks every few milliseconds until then:
/// the exit time (Unix ms), the exit status and its CPU ticks.
fn wait_sampling(child: &mut Child, what: &str) -> Res<(u64, u64)> {
    let pid = child.id();
    let mut ticks = 0;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok((now_ms(), ticks)),
            Ok(Some(status)) => return Err(format!("{what} failed ({status})")),
            Ok(None) => {}
            Err(e) => return Err(format!("{what}: {e}")),
        }
        ticks = ticks.max(probe::cpu_ticks(pid));
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One benchmark run's brokers, tools and results.
struct Bench<'o> {
    o: &'o Opts,
    dir: PathBuf,
    /// Where the release tools and the gateway are (next to this binary).
    bins: PathBuf,
    hz: f64,
    mq: Mosquitto,
    kafka: Kafka,
    /// The broker's GC log.
    gc: probe::GcLog,
    r: Results,
    /// Settings for the next gateways started, after `--set`'s (the window curve).
    extra_sets: Vec<(String, String, String)>,
}

fn run(o: &Opts, dir: &Path) -> Res<()> {
    let bins = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .ok_or("no directory for the bench binary")?
        .to_path_buf();
    for tool in [
        "mosquitto",
        "mosquitto_sub",
        "kcat",
        "java",
        "strip",
        "timeout",
    ] {
        if !on_path(tool) {
            return Err(format!(
                "{tool} not found; run scripts/install-deps.sh (installs Mosquitto, kcat and the Kafka jars)"
            ));
        }
    }
    for tool in ["cc", "taskset"] {
        if !o.sd_card.is_empty() && !on_path(tool) {
            return Err(format!("{tool} not found (needed by --sd-card)"));
        }
    }
    for b in [
        "mqtt-kafka-gateway",
        "loadgen",
        "latency",
        "walfill",
        "mqttsub",
        "kprod",
    ] {
        if !bins.join(b).is_file() {
            return Err(format!(
                "missing {} (run the bench with `cargo xtask bench`)",
                bins.join(b).display()
            ));
        }
    }
    let mode = if o.quick { "quick" } else { "default" };
    say(format!("work dir {} ({mode} run)", dir.display()));
    let mut r = Results::default();
    r.put("mode", mode);
    r.put("size", o.size as u64);
    r.put("git", git_describe());
    binary_size(&bins.join("mqtt-kafka-gateway"), dir, &mut r)?;
    r.put(
        "fsync_us",
        probe::fsync_us(dir).map_err(|e| format!("disk probe: {e}"))?,
    );
    let started = Instant::now();
    let idle0 = probe::idle_ticks();

    say("starting Mosquitto and Kafka");
    // Mosquitto's own autosave_interval (1800 s) by default, not the tests' 1 s: its
    // save blocks its only thread and stalls delivery to every subscriber.
    let mq = Mosquitto::start_with(&format!("autosave_interval {}", o.autosave));
    let gc = probe::GcLog(dir.join("kafka-gc.log"));
    let jvm = kafka_jvm_opts();
    r.put("kafka_jvm", jvm.clone());
    // scripts/kafka-local.sh reads its JVM flags from here; the harness starts it.
    std::env::set_var(
        "MKG_KAFKA_JVM_OPTS",
        format!("{jvm} -Xlog:gc:file={}:uptime", gc.0.display()),
    );
    let kafka = Kafka::start();
    for t in TOPICS.iter().filter(|t| !APPEND_TIME_TOPICS.contains(t)) {
        kafka.create_topic(t, 3);
    }
    for t in APPEND_TIME_TOPICS {
        kafka.create_topic_with(t, 3, &[("message.timestamp.type", "LogAppendTime")]);
    }
    let mut b = Bench {
        o,
        dir: dir.to_path_buf(),
        bins,
        hz: probe::clock_ticks(),
        mq,
        kafka,
        gc,
        r,
        extra_sets: Vec::new(),
    };
    b.backlogs()?;
    b.ingest()?;
    b.live()?;
    b.drain()?;
    b.big()?;
    b.sd_card()?;
    b.window_curve()?;
    b.kafka_check()?;

    b.r.put("kafka_gc", b.gc.pauses_since(0));
    let wall = started.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let idle = probe::idle_ticks().saturating_sub(idle0) as f64 / b.hz;
    b.r.put("wall_s", wall.round() as u64);
    b.r.put(
        "busy_pct",
        (100.0 * (1.0 - idle / (wall * cores))).round() as i64,
    );
    b.r.put(
        "other_load",
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    );
    b.r.put(
        "mq_drop_lines",
        b.mosquitto_log()
            .matches("Outgoing messages are being dropped")
            .count() as u64,
    );
    let (table, _) = report::render(&b.r);
    print!("{table}");
    if let Some(path) = &o.results {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(f, "{}", Value::Object(b.r.0.clone())).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The commit, `-dirty` if the gateway's sources differ from it.
fn git_describe() -> String {
    let root = harness::repo_root();
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(head) = head else {
        return "unknown".into();
    };
    let clean = Command::new("git")
        .args([
            "diff",
            "--quiet",
            "HEAD",
            "--",
            "gateway",
            "wal",
            "admin",
            "Cargo.lock",
        ])
        .current_dir(&root)
        .status()
        .is_ok_and(|s| s.success());
    if clean {
        head
    } else {
        format!("{head}-dirty")
    }
}

/// 8. The release binary's size (the profile strips it; `strip` again to be sure).
fn binary_size(bin: &Path, dir: &Path, r: &mut Results) -> Res<()> {
    let copy = dir.join("gw-stripped");
    std::fs::copy(bin, &copy).map_err(|e| format!("copy {}: {e}", bin.display()))?;
    let _ = Command::new("strip").arg(&copy).status();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    r.put("bin_bytes", size(bin));
    r.put("bin_stripped_bytes", size(&copy));
    let _ = std::fs::remove_file(copy);
    Ok(())
}
