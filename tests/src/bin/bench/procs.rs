//! The processes a run starts and talks to: the gateway ([`Running`]), `loadgen`,
//! `mosquitto_sub`, the tools next to the bench binary, Kafka's JVM flags, and reading
//! a topic back.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::config::{GatewayConfig, Value as TomlValue};
use harness::Gateway;
use serde_json::Value;

use crate::probe::Metrics;
use crate::{last_json, now_ms, round1, say, sdcard, Bench, Res, TOPICS_PER_PUBLISHER};

/// A gateway the bench started.
pub(crate) struct Running {
    pub(crate) gw: Gateway,
    pub(crate) exec_ms: u64,
    pub(crate) ready_ms: u64,
}

impl Running {
    pub(crate) fn pid(&self) -> u32 {
        self.gw.pid() as u32
    }

    pub(crate) fn admin(&self) -> SocketAddr {
        self.gw.admin
    }

    /// SIGTERM, then wait for the exit.
    pub(crate) fn stop(mut self) {
        self.gw.signal(libc::SIGTERM);
        self.gw.wait_exit(Duration::from_secs(120));
    }

    /// Poll `/metrics` every 50 ms until `done` holds: the time it did (Unix ms).
    pub(crate) fn wait_metric(
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

pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The broker's heap, collector and JIT flags: `MKG_KAFKA_JVM_OPTS` when set, else a
/// fixed 512 MiB heap with Shenandoah, whose pauses stay in the low milliseconds. The
/// tests' serial collector (fast to start) stopped the broker for up to 73 ms in a quick
/// run, and both pipelines' latency with it; G1 with the full JIT compiled on both
/// cores during the latency runs.
pub(crate) fn kafka_jvm_opts() -> String {
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

impl Bench<'_> {
    pub(crate) fn bootstrap(&self) -> String {
        self.kafka.bootstrap()
    }

    pub(crate) fn tool(&self, name: &str) -> Command {
        Command::new(self.bins.join(name))
    }

    pub(crate) fn mosquitto_log(&self) -> String {
        std::fs::read_to_string(self.mq.dir().join("mosquitto.log")).unwrap_or_default()
    }

    pub(crate) fn us_per_msg(&self, ticks: u64, n: u64) -> f64 {
        round1(ticks as f64 * 1e6 / self.hz / n as f64)
    }

    /// `loadgen` publishing `n` messages to `PREFIX/I/T` as run `run_id`, at `rate`
    /// msg/s (0: as fast as the broker takes them).
    pub(crate) fn loadgen_cmd(&self, prefix: &str, n: u64, run_id: &str, rate: u64) -> Res<Child> {
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
    pub(crate) fn loadgen_done(&mut self, child: Child, run_id: &str) -> Res<Value> {
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

    pub(crate) fn loadgen(&mut self, prefix: &str, n: u64, run_id: &str, rate: u64) -> Res<Value> {
        let child = self.loadgen_cmd(prefix, n, run_id, rate)?;
        self.loadgen_done(child, run_id)
    }

    /// `mosquitto_sub` at QoS 1 as `client_id` on `filter`, exiting after `n` messages.
    pub(crate) fn mosquitto_sub(
        &self,
        client_id: &str,
        filter: &str,
        n: u64,
        out: Stdio,
    ) -> Res<Child> {
        Command::new("mosquitto_sub")
            .args(["-p", &self.mq.port.to_string(), "-q", "1"])
            .args(["-i", client_id, "-t", filter, "-C", &n.to_string()])
            .stdout(out)
            .spawn()
            .map_err(|e| format!("mosquitto_sub: {e}"))
    }

    /// Until Mosquitto logged `client_id`'s connection, then a moment for its
    /// SUBSCRIBE (sent right after the CONNACK; Mosquitto does not log it).
    pub(crate) fn wait_connected(&self, client_id: &str) -> Res<()> {
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
    pub(crate) fn wait_ready_line(&self, file: &Path, what: &str) -> Res<()> {
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
    pub(crate) fn gateway(
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
    pub(crate) fn gateway_on(
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
pub(crate) fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The drain ceiling's input: `TOPIC<TAB>PAYLOAD` lines with the checker's payloads.
pub(crate) fn write_records(path: &Path, n: u64, size: usize, publishers: u64) -> Res<()> {
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
pub(crate) fn read_topic(bootstrap: &str, topic: &str, mut each: impl FnMut(&str)) -> Res<u64> {
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
pub(crate) fn set(cfg: GatewayConfig, table: &str, key: &str, value: &str) -> Res<GatewayConfig> {
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
