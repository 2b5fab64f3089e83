//! Phase 4, latency: publish -> readable in Kafka, the gateway next to its ceiling, the
//! naive pipeline (`mosquitto_sub -q 1 | kcat -P` with the gateway's producer
//! settings, not durable), at 1,000 and 10,000 msg/s, each repeated `--lat-reps`
//! times. At 1,000 msg/s the two run at the same time, each at the rate, on topics of
//! their own: a pause of Kafka or of the machine shows in both, and the ratio stays
//! meaningful. At 10,000 msg/s they run one after the other: two such pipelines at
//! once take both cores of the reference machine, and both stall for seconds.
//!
//! Where the time goes, per stage and each counted from the publish or the receipt:
//! the meter (`latency`) reads the gateway's receive time from the record's header
//! and Kafka's append time from its timestamp (both topics are created with
//! `message.timestamp.type=LogAppendTime`); the gateway's histograms give receipt ->
//! durable, -> handed to the producer, -> acknowledged by Kafka (`probe::stages`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::probe::{self, Metrics};
use crate::{last_json, round1, round2, say, Bench, Res, Running};

/// The latency phases' rates, msg/s.
pub(crate) const RATES: [u64; 2] = [1000, 10000];
/// Up to this rate the gateway and the naive pipeline are measured at the same time.
const TOGETHER_UP_TO: u64 = 1000;
/// The naive pipeline's latency topic.
pub(crate) const NAIVE_TOPIC: &str = "naivelat";

/// A running `latency` meter.
pub(crate) struct Meter {
    child: Child,
    err: std::path::PathBuf,
    what: String,
}

impl Meter {
    /// Its JSON line once every message was read.
    pub(crate) fn result(self) -> Res<Value> {
        let out = self.child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                self.what,
                std::fs::read_to_string(&self.err).unwrap_or_default()
            ));
        }
        last_json(&out.stdout, "latency")
    }
}

/// `kcat -P` with the gateway's producer settings, producing stdin's lines to `topic`.
pub(crate) fn kcat_producer(bootstrap: &str, topic: &str) -> Command {
    let mut kcat = Command::new("kcat");
    kcat.args(["-P", "-b", bootstrap, "-t", topic])
        .args([
            "-X",
            "acks=all",
            "-X",
            "enable.idempotence=true",
            "-X",
            "linger.ms=5",
        ])
        .args([
            "-X",
            "batch.num.messages=10000",
            "-X",
            "queue.buffering.max.messages=1000000",
        ]);
    kcat
}

impl Bench<'_> {
    /// The latency phases on the running gateway `gw`: `lat_reps` times, at each rate,
    /// the gateway and the naive pipeline, side by side up to [`TOGETHER_UP_TO`], then
    /// one after the other. `latency_{rate}` is the gateway's worst run (by p99),
    /// `latency_{rate}_runs` every run with the naive pipeline's beside it.
    pub(crate) fn latencies(&mut self, gw: &mut Running) -> Res<()> {
        // The phases before wrote their records into the gateway's topic and none into
        // the naive pipeline's: the kernel writing them back during the first
        // repetition would weigh on one side only. Written back before it starts.
        let dirty_kb = probe::dirty_kb();
        let t = std::time::Instant::now();
        let synced = Command::new("sync")
            .status()
            .map_err(|e| format!("sync: {e}"))?;
        if !synced.success() {
            return Err(format!("sync failed ({synced})"));
        }
        self.r.put("latency_dirty_before_kb", dirty_kb);
        self.r
            .put("latency_sync_ms", t.elapsed().as_millis() as u64);
        let mut runs: Vec<(u64, Vec<Value>)> = RATES.iter().map(|r| (*r, Vec::new())).collect();
        for rep in 1..=self.o.lat_reps {
            for (rate, list) in runs.iter_mut() {
                let run_id = format!("lat{rate}r{rep}");
                let gc_mark = self.gc.mark();
                let (gateway, naive) = if *rate <= TOGETHER_UP_TO {
                    self.latency_with(gw, *rate, "load/lat", &run_id, "", true)?
                } else {
                    let naive = self.naive_latency(*rate, &format!("n{run_id}"))?;
                    let gateway = self.latency(gw, *rate, "load/lat", &run_id, "")?;
                    (gateway, naive)
                };
                let kafka_gc = self.gc.pauses_since(gc_mark);
                list.push(json!({ "gateway": gateway, "naive": naive, "kafka_gc": kafka_gc }));
            }
        }
        for (rate, list) in runs {
            let p99 = |v: &Value| v["gateway"]["p99_ms"].as_f64().unwrap_or(0.0);
            let worst = list
                .iter()
                .max_by(|a, b| p99(a).total_cmp(&p99(b)))
                .map_or(Value::Null, |v| v["gateway"].clone());
            self.r.put(&format!("latency_{rate}"), worst);
            self.r
                .put(&format!("latency_{rate}_runs"), Value::Array(list));
        }
        Ok(())
    }

    /// The naive pipeline's latency alone at `rate` msg/s for `lat_secs` (run `run_id`).
    fn naive_latency(&mut self, rate: u64, run_id: &str) -> Res<Value> {
        let n = rate * self.o.lat_secs;
        say(format!(
            "4. latency of the naive pipeline at {rate} msg/s: {n} messages ({run_id})"
        ));
        let (mut sub, mut kcat, meter) = self.naive_pipeline(run_id, n)?;
        self.loadgen(&format!("{run_id}/dev"), n, run_id, rate)?;
        let result = meter.result();
        // mosquitto_sub exits after n messages; kcat at the end of its input.
        let _ = sub.wait();
        let _ = kcat.wait();
        result
    }

    /// The naive pipeline for run `run_id` (`n` messages on `{run_id}/#`): its
    /// `mosquitto_sub` and `kcat`, connected, and its meter, ready.
    fn naive_pipeline(&mut self, run_id: &str, n: u64) -> Res<(Child, Child, Meter)> {
        let mut sub = self.mosquitto_sub(run_id, &format!("{run_id}/#"), n, Stdio::piped())?;
        let kcat = kcat_producer(&self.bootstrap(), NAIVE_TOPIC)
            .stdin(sub.stdout.take().ok_or("no pipe")?)
            .spawn()
            .map_err(|e| format!("kcat: {e}"))?;
        self.wait_connected(run_id)?;
        let meter = self.meter(NAIVE_TOPIC, run_id, n)?;
        Ok((sub, kcat, meter))
    }

    /// Start a `latency` meter on `topic` for `n` messages of run `run_id`; returns
    /// once it reads from the end of every partition.
    pub(crate) fn meter(&self, topic: &str, run_id: &str, n: u64) -> Res<Meter> {
        let err = self.dir.join(format!("latency_{run_id}.err"));
        let child = self
            .tool("latency")
            .args(["--bootstrap", &self.bootstrap(), "--topic", topic])
            .args(["--run-id", run_id, "--messages", &n.to_string()])
            .args(["--timeout", &(self.o.lat_secs + 120).to_string()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("latency: {e}"))?;
        self.wait_ready_line(&err, "latency consumer")?;
        Ok(Meter {
            child,
            err,
            what: format!("latency of {run_id}"),
        })
    }

    /// One gateway latency run at `rate` msg/s for `lat_secs`, with the WAL's commit
    /// and disk figures at that rate and the gateway's stages (`stages`); messages
    /// published under `prefix` as run `run_id`, figures named `{key}latency_{rate}`,
    /// `{key}wa_{rate}`...
    pub(crate) fn latency(
        &mut self,
        gw: &mut Running,
        rate: u64,
        prefix: &str,
        run_id: &str,
        key: &str,
    ) -> Res<Value> {
        Ok(self.latency_with(gw, rate, prefix, run_id, key, false)?.0)
    }

    /// [`Bench::latency`], with `naive`: and the naive pipeline's at the same time
    /// (run `n{run_id}`), returned second.
    fn latency_with(
        &mut self,
        gw: &mut Running,
        rate: u64,
        prefix: &str,
        run_id: &str,
        key: &str,
        naive: bool,
    ) -> Res<(Value, Value)> {
        let o = self.o;
        let n = rate * o.lat_secs;
        let naive_id = format!("n{run_id}");
        say(if naive {
            format!("4. latency at {rate} msg/s: {n} messages ({run_id}), and the naive pipeline's ({naive_id})")
        } else {
            format!("4. latency at {rate} msg/s: {n} messages ({run_id})")
        });
        let pipeline = if naive {
            Some(self.naive_pipeline(&naive_id, n)?)
        } else {
            None
        };
        let meter = self.meter("bench", run_id, n)?;
        let pid = gw.pid();
        let m0 = Metrics::scrape(gw.admin());
        let w0 = probe::write_bytes(pid);
        let naive_load = match &pipeline {
            Some(_) => Some(self.loadgen_cmd(&format!("{naive_id}/dev"), n, &naive_id, rate)?),
            None => None,
        };
        let load = self.loadgen_cmd(prefix, n, run_id, rate)?;
        self.loadgen_done(load, run_id)?;
        let mut result = meter.result()?;
        let mut naive_result = Value::Null;
        if let (Some(load), Some((mut sub, mut kcat, meter))) = (naive_load, pipeline) {
            self.loadgen_done(load, &naive_id)?;
            naive_result = meter.result()?;
            // mosquitto_sub exits after n messages; kcat at the end of its input.
            let _ = sub.wait();
            let _ = kcat.wait();
        }
        gw.wait_metric("an empty backlog", Duration::from_secs(60), |m| {
            m.get("mkg_backlog_records") == 0
        })?;
        let m1 = Metrics::scrape(gw.admin());
        let d = |k: &str| m1.get(k).saturating_sub(m0.get(k));
        let (records, commits, syncs) = (
            d("mkg_wal_records_committed_total"),
            d("mkg_wal_commits_total"),
            d("mkg_wal_syncs_total"),
        );
        let secs = o.lat_secs as f64;
        let figures = [
            (
                "wa",
                json!(round2(
                    (probe::write_bytes(pid) - w0) as f64 / (n * o.size as u64) as f64
                )),
            ),
            (
                "batch",
                json!(round1(records as f64 / commits.max(1) as f64)),
            ),
            (
                "commits_per_s",
                json!((commits as f64 / secs).round() as u64),
            ),
            (
                "sync_batch",
                json!(round1(records as f64 / syncs.max(1) as f64)),
            ),
            ("syncs_per_s", json!((syncs as f64 / secs).round() as u64)),
            ("commit_times", json!(probe::commit_times(&m0, &m1))),
        ];
        for (name, v) in figures {
            self.r.put(&format!("{key}{name}_{rate}"), v);
        }
        result["stages"] = probe::stages(&m0, &m1);
        self.r.put(&format!("{key}latency_{rate}"), result.clone());
        Ok((result, naive_result))
    }
}
