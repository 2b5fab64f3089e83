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
mod latency;
mod opts;
mod phases;
mod probe;
mod report;
mod sdcard;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::config::{GatewayConfig, Value as TomlValue};
use harness::{Gateway, Kafka, Mosquitto};
use serde_json::Value;

use opts::Opts;
use probe::Metrics;
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

/// A gateway the bench started.
struct Running {
    gw: Gateway,
    exec_ms: u64,
    ready_ms: u64,
}

impl Running {
    fn pid(&self) -> u32 {
        self.gw.pid() as u32
    }

    fn admin(&self) -> SocketAddr {
        self.gw.admin
    }

    /// SIGTERM, then wait for the exit.
    fn stop(mut self) {
        self.gw.signal(libc::SIGTERM);
        self.gw.wait_exit(Duration::from_secs(120));
    }

    /// Poll `/metrics` every 50 ms until `done` holds: the time it did (Unix ms).
    fn wait_metric(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Metrics) -> bool,
    ) -> Res<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&Metrics::scrape(self.admin())) {
                return Ok(now_ms());
            }
            if let Some(status) = self.gw.try_wait() {
                return Err(format!(
                    "gateway exited ({status}) waiting for {what}:\n{}",
                    tail(&self.gw.log())
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("{what}: not reached in {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
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

/// The broker's heap, collector and JIT flags: `MKG_KAFKA_JVM_OPTS` when set, else a
/// fixed 512 MiB heap with Shenandoah, whose pauses stay in the low milliseconds. The
/// tests' serial collector (fast to start) stopped the broker for up to 73 ms in a quick
/// run, and both pipelines' latency with it; G1 with the full JIT compiled on both
/// cores during the latency runs.
fn kafka_jvm_opts() -> String {
    if let Ok(opts) = std::env::var("MKG_KAFKA_JVM_OPTS") {
        return opts;
    }
    const SHENANDOAH: &str =
        "-Xms512m -Xmx512m -XX:+UseShenandoahGC -XX:+AlwaysPreTouch -XX:TieredStopAtLevel=1";
    let java = std::env::var("MKG_JAVA").unwrap_or_else(|_| "java".into());
    let has_shenandoah = Command::new(&java)
        .args(["-XX:+UseShenandoahGC", "-version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_shenandoah {
        SHENANDOAH.to_string()
    } else {
        let fallback = "-Xms256m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1";
        say(format!(
            "{java} has no Shenandoah collector: Kafka runs with {fallback}; its GC pauses will show in the latency figures"
        ));
        fallback.to_string()
    }
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

impl Bench<'_> {
    fn bootstrap(&self) -> String {
        self.kafka.bootstrap()
    }

    fn tool(&self, name: &str) -> Command {
        Command::new(self.bins.join(name))
    }

    fn mosquitto_log(&self) -> String {
        std::fs::read_to_string(self.mq.dir().join("mosquitto.log")).unwrap_or_default()
    }

    fn us_per_msg(&self, ticks: u64, n: u64) -> f64 {
        round1(ticks as f64 * 1e6 / self.hz / n as f64)
    }

    /// Backlogs first, so their disk writes do not disturb the measurements.
    fn backlogs(&mut self) -> Res<()> {
        let o = self.o;
        say(format!(
            "building WAL backlogs: {} and {} records (walfill)",
            o.backlog, o.big
        ));
        let mut wals = vec![
            ("backlog", o.backlog, "load/dev"),
            ("big", o.big, "big/dev"),
        ];
        if !o.drain_windows.is_empty() {
            wals.push(("curve", o.backlog, "curve/dev"));
        }
        for (name, n, prefix) in wals {
            let out = self
                .tool("walfill")
                .arg("--dir")
                .arg(self.dir.join(format!("wal-{name}")))
                .args(["--records", &n.to_string(), "--size", &o.size.to_string()])
                .args(["--run-id", name, "--topic-prefix", prefix])
                .output()
                .map_err(|e| format!("walfill: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "walfill {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            self.r.put(
                &format!("walfill_{name}"),
                last_json(&out.stdout, "walfill")?,
            );
        }
        let _ = Command::new("sync").status();
        Ok(())
    }

    /// `loadgen` publishing `n` messages to `PREFIX/I/T` as run `run_id`, at `rate`
    /// msg/s (0: as fast as the broker takes them).
    fn loadgen_cmd(&self, prefix: &str, n: u64, run_id: &str, rate: u64) -> Res<Child> {
        let o = self.o;
        let err = std::fs::File::create(self.dir.join(format!("loadgen_{run_id}.err")))
            .map_err(|e| e.to_string())?;
        self.tool("loadgen")
            .args(["--port", &self.mq.port.to_string()])
            .args([
                "--publishers",
                &o.publishers.to_string(),
                "--messages",
                &n.to_string(),
            ])
            .args([
                "--size",
                &o.size.to_string(),
                "--qos",
                "1",
                "--topic-prefix",
                prefix,
            ])
            .args([
                "--topics",
                &TOPICS_PER_PUBLISHER.to_string(),
                "--inflight",
                &o.inflight.to_string(),
            ])
            .args(["--rate", &rate.to_string(), "--run-id", run_id])
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("loadgen: {e}"))
    }

    /// Wait for a `loadgen` and keep its result as `loadgen_RUN`.
    fn loadgen_done(&mut self, child: Child, run_id: &str) -> Res<Value> {
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let err = std::fs::read_to_string(self.dir.join(format!("loadgen_{run_id}.err")))
            .unwrap_or_default();
        if !out.status.success() {
            return Err(format!(
                "loadgen {run_id} failed: {err}{}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let v = last_json(&out.stdout, "loadgen")?;
        self.r.put(&format!("loadgen_{run_id}"), v.clone());
        Ok(v)
    }

    fn loadgen(&mut self, prefix: &str, n: u64, run_id: &str, rate: u64) -> Res<Value> {
        let child = self.loadgen_cmd(prefix, n, run_id, rate)?;
        self.loadgen_done(child, run_id)
    }

    /// `mosquitto_sub` at QoS 1 as `client_id` on `filter`, exiting after `n` messages.
    fn mosquitto_sub(&self, client_id: &str, filter: &str, n: u64, out: Stdio) -> Res<Child> {
        Command::new("mosquitto_sub")
            .args(["-p", &self.mq.port.to_string(), "-q", "1"])
            .args(["-i", client_id, "-t", filter, "-C", &n.to_string()])
            .stdout(out)
            .spawn()
            .map_err(|e| format!("mosquitto_sub: {e}"))
    }

    /// Until Mosquitto logged `client_id`'s connection, then a moment for its
    /// SUBSCRIBE (sent right after the CONNACK; Mosquitto does not log it).
    fn wait_connected(&self, client_id: &str) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.mosquitto_log().contains(&format!("as {client_id} ")) {
            if Instant::now() >= deadline {
                return Err(format!("{client_id} did not connect to Mosquitto"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// A tool's stderr file contains "ready" (it printed it once subscribed).
    fn wait_ready_line(&self, file: &Path, what: &str) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if text.contains("ready") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{what} not ready: {text}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start a gateway on `wal` forwarding `filter` to `topic` on `bootstrap`, and wait
    /// until `/readyz` says 200 (polled every 5 ms: the start-to-ready figure).
    fn gateway(
        &self,
        name: &str,
        wal: &Path,
        bootstrap: &str,
        topic: &str,
        filter: &str,
    ) -> Res<Running> {
        self.gateway_on(name, wal, bootstrap, topic, filter, None)
    }

    /// [`Bench::gateway`] on a simulated SD card (`sd`): its fsyncs slowed by the
    /// shim, and pinned to one core.
    fn gateway_on(
        &self,
        name: &str,
        wal: &Path,
        bootstrap: &str,
        topic: &str,
        filter: &str,
        sd: Option<&sdcard::SlowDisk>,
    ) -> Res<Running> {
        let mut cfg = GatewayConfig::new(self.mq.port, bootstrap)
            .top("gateway_id", format!("bench-{name}"))
            .mqtt("client_id", format!("mkg-bench-{name}"))
            // The product's defaults, not the tests' quick reconnects.
            .unset("mqtt", "keep_alive")
            .unset("mqtt", "reconnect_max_delay")
            .unset("shutdown", "grace_period")
            .topics(&[(filter, 1)])
            .topic(topic)
            .wal("dir", wal.to_str().ok_or("non-UTF-8 work dir")?);
        for (table, key, value) in self.o.sets.iter().chain(&self.extra_sets) {
            cfg = set(cfg, table, key, value)?;
        }
        let gw_dir = self.dir.join(format!("gw-{name}"));
        std::fs::create_dir_all(&gw_dir).map_err(|e| e.to_string())?;
        let exec_ms = now_ms();
        let exec = Instant::now();
        let env = sd.map(sdcard::SlowDisk::env).unwrap_or_default();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut gw = Gateway::start_with_env(
            &self.bins.join("mqtt-kafka-gateway"),
            &gw_dir,
            &cfg.toml(),
            &env,
        );
        if sd.is_some() {
            sdcard::pin_to_one_core(gw.pid() as u32)?;
        }
        loop {
            if harness::http_get(gw.admin, "/readyz").is_ok_and(|(s, _)| s == 200) {
                break;
            }
            if let Some(status) = gw.try_wait() {
                return Err(format!(
                    "gateway {name} exited ({status}):\n{}",
                    tail(&gw.log())
                ));
            }
            if exec.elapsed() > Duration::from_secs(120) {
                return Err(format!(
                    "gateway {name} not ready after 120 s:\n{}",
                    tail(&gw.log())
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready_ms = exec_ms + exec.elapsed().as_millis() as u64;
        Ok(Running {
            gw,
            exec_ms,
            ready_ms,
        })
    }
}

/// Whether `tool` is a command on PATH.
fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The drain ceiling's input: `TOPIC<TAB>PAYLOAD` lines with the checker's payloads.
fn write_records(path: &Path, n: u64, size: usize, publishers: u64) -> Res<()> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    for g in 0..n {
        let (i, seq) = (g % publishers, g / publishers);
        let mut p = format!("kcat-{i}:{seq}:0:");
        while p.len() < size {
            p.push('x');
        }
        writeln!(w, "load/dev/{i}/{}\t{p}", seq % TOPICS_PER_PUBLISHER)
            .map_err(|e| e.to_string())?;
    }
    w.flush().map_err(|e| e.to_string())
}

/// Read `topic` from the beginning to its end with kcat, handing each value to
/// `each`: the number of records.
fn read_topic(bootstrap: &str, topic: &str, mut each: impl FnMut(&str)) -> Res<u64> {
    let mut kcat = Command::new("timeout")
        .args([
            "600",
            "kcat",
            "-b",
            bootstrap,
            "-C",
            "-e",
            "-q",
            "-t",
            topic,
            "-o",
            "beginning",
        ])
        .args(["-f", "%s\\n"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("kcat: {e}"))?;
    let mut n = 0;
    let mut buf = Vec::new();
    let mut r = BufReader::new(kcat.stdout.take().ok_or("no pipe")?);
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                n += 1;
                each(&String::from_utf8_lossy(&buf[..buf.len().min(64)]));
            }
            Err(e) => return Err(format!("reading {topic}: {e}")),
        }
    }
    let status = kcat.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("kcat -C {topic} failed ({status})"));
    }
    Ok(n)
}

/// A `--set TABLE:KEY=VALUE` on the config: numbers and booleans as such, the rest
/// as strings; `kafka.properties` values are strings, as librdkafka wants them.
fn set(cfg: GatewayConfig, table: &str, key: &str, value: &str) -> Res<GatewayConfig> {
    if table == "kafka.properties" {
        return Ok(cfg.property(key, value));
    }
    const TABLES: [&str; 7] = ["", "mqtt", "kafka", "wal", "forward", "admin", "shutdown"];
    let table = TABLES.iter().find(|t| **t == table).ok_or_else(|| {
        format!("--set: unknown table {table:?} (one of {TABLES:?} or kafka.properties)")
    })?;
    let literal = value.parse::<i64>().is_ok() || value == "true" || value == "false";
    Ok(if literal {
        cfg.set(table, key, TomlValue::raw(value))
    } else {
        cfg.set(table, key, value)
    })
}
