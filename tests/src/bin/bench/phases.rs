//! The phases of a run, in the order they run: 1 ingest, then 3 / 4 / 5 / 6 on one
//! gateway with an empty WAL, 2 drain, 7 start with the big backlog, and the check
//! that every message is in Kafka.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use crate::probe::{self, Metrics};
use crate::{
    last_json, now_ms, read_topic, round1, round2, say, wait_sampling, write_records, Bench, Res,
};

/// Mosquitto's two ceilings in one round of 1, msg/s.
#[derive(Debug, Clone, Copy)]
struct Ceiling {
    c_rate: u64,
    rust_rate: u64,
}

impl Ceiling {
    fn best(&self) -> u64 {
        self.c_rate.max(self.rust_rate)
    }
}

/// One round of 1: the ceiling, then the gateway's durable ingest right after it.
#[derive(Debug, Clone, Copy)]
struct IngestRound {
    ceiling: Ceiling,
    rate: u64,
}

impl IngestRound {
    fn ratio(&self) -> f64 {
        self.rate as f64 / self.ceiling.best().max(1) as f64
    }

    /// The round with the median ratio (the lower middle one of an even count).
    fn median(rounds: &[IngestRound]) -> IngestRound {
        let mut sorted = rounds.to_vec();
        sorted.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
        sorted[(sorted.len() - 1) / 2]
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ceiling_c_rate": self.ceiling.c_rate,
            "ceiling_rust_rate": self.ceiling.rust_rate,
            "ingest_rate": self.rate,
            "ratio": round2(self.ratio()),
        })
    }
}

impl Bench<'_> {
    /// Phase 1, ingest vs Mosquitto's ceiling, in rounds: each round measures the
    /// ceiling and then the gateway, so both see the same state of the machine; the
    /// figure is the median round (a single pair swung by +-20% run to run on 2 cores).
    pub(crate) fn ingest(&mut self) -> Res<()> {
        let n = self.o.ingest;
        let mq_pid = self.mq.pid().ok_or("Mosquitto not running")? as u32;
        let mut rounds = Vec::new();
        for round in 1..=self.o.ingest_rounds {
            let ceiling = self.ceiling(round, n, mq_pid)?;
            say(format!(
                "1b. gateway ingest with Kafka stopped: {n} messages (round {round})"
            ));
            let name = if round == 1 {
                "ingest".to_string()
            } else {
                format!("ingest{round}")
            };
            let rate = self.ingest_run(&name, n, mq_pid, false, None)?;
            rounds.push(IngestRound { ceiling, rate });
        }
        let median = IngestRound::median(&rounds);
        self.r.put("ceiling_c_rate", median.ceiling.c_rate);
        self.r.put("ceiling_rust_rate", median.ceiling.rust_rate);
        self.r.put("ceiling_rate", median.ceiling.best());
        self.r.put("ingest_rate", median.rate);
        self.r.put("ingest_ratio", round2(median.ratio()));
        self.r.put(
            "ingest_ratio_min",
            round2(
                rounds
                    .iter()
                    .map(IngestRound::ratio)
                    .fold(f64::MAX, f64::min),
            ),
        );
        self.r.put(
            "ingest_rounds",
            rounds.iter().map(IngestRound::json).collect::<Vec<_>>(),
        );
        let last = rounds.last().map_or(0, |r| r.rate);
        say(format!(
            "1c. the same while an operator pages through the backlog in a loop: {n} messages"
        ));
        let rate = self.ingest_run("ingestpaged", n, mq_pid, true, None)?;
        self.r.put("ingest_paged_rate", rate);
        // Without paging once more: the paged run is compared with the mean of the
        // runs right before and after it, so a drift over the phase does not pass for
        // its effect.
        say(format!(
            "1b'. gateway ingest with Kafka stopped, again: {n} messages"
        ));
        let rate = self.ingest_run("ingestagain", n, mq_pid, false, None)?;
        self.r.put("ingest_before_paged_rate", last);
        self.r.put("ingest_again_rate", rate);
        Ok(())
    }

    /// Mosquitto's ceiling for one round: `n` messages to `mosquitto_sub -q 1`, then to a
    /// rumqttc subscriber with automatic acks (written in bulk per read, like the
    /// gateway's). The better of the two is the ceiling.
    fn ceiling(&mut self, round: u64, n: u64, mq_pid: u32) -> Res<Ceiling> {
        // Round 1 keeps the names of a single-round run.
        let sfx = if round == 1 {
            String::new()
        } else {
            format!("r{round}")
        };
        say(format!(
            "1a. Mosquitto ceiling: {n} messages to mosquitto_sub -q 1 (round {round})"
        ));
        let client = format!("ceiling{sfx}");
        let mut sub = self.mosquitto_sub(&client, &format!("ceil{sfx}/#"), n, Stdio::null())?;
        self.wait_connected(&client)?;
        let m0 = probe::cpu_ticks(mq_pid);
        let run_id = format!("ceil{sfx}");
        let lg = self.loadgen_cmd(&format!("ceil{sfx}/dev"), n, &run_id, 0)?;
        let (end_ms, sub_ticks) = wait_sampling(&mut sub, "mosquitto_sub")?;
        let lg = self.loadgen_done(lg, &run_id)?;
        let start = lg["start_unix_ms"].as_u64().unwrap_or(0);
        if round == 1 {
            self.r.put(
                "ceiling_mq_cpu_us",
                self.us_per_msg(probe::cpu_ticks(mq_pid) - m0, n),
            );
            self.r
                .put("ceiling_sub_cpu_us", self.us_per_msg(sub_ticks, n));
            self.r.put("ceiling_pub_rate", lg["acked_rate"].clone());
        }
        let c_rate = n * 1000 / (end_ms - start).max(1);

        say(format!(
            "1a. Mosquitto ceiling: {n} messages to a rumqttc QoS 1 subscriber (mqttsub, round {round})"
        ));
        let err_path = self.dir.join(format!("mqttsub{sfx}.err"));
        let sub = self
            .tool("mqttsub")
            .args([
                "--port",
                &self.mq.port.to_string(),
                "--topic",
                &format!("ceil2{sfx}/#"),
            ])
            .args([
                "--messages",
                &n.to_string(),
                "--client-id",
                &format!("ceiling2{sfx}"),
            ])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err_path).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("mqttsub: {e}"))?;
        self.wait_ready_line(&err_path, "mqttsub")?;
        let lg = self.loadgen(&format!("ceil2{sfx}/dev"), n, &format!("ceil2{sfx}"), 0)?;
        let out = sub.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "mqttsub failed: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            ));
        }
        let end = last_json(&out.stdout, "mqttsub")?["end_unix_ms"]
            .as_u64()
            .unwrap_or(0);
        let start = lg["start_unix_ms"].as_u64().unwrap_or(0);
        let rust_rate = n * 1000 / (end - start).max(1);
        Ok(Ceiling { c_rate, rust_rate })
    }

    /// One durable-ingest run of `n` messages with Kafka stopped; with `paging`, a
    /// client reads the backlog page after page (`/records?limit=1000`, following
    /// `next`, from the oldest again at the end) and `/backlog/topics` between pages,
    /// without pause, for the whole run. Returns messages per second; the first run
    /// also records CPU and thread figures. With `sd`, on a simulated SD card.
    pub(crate) fn ingest_run(
        &mut self,
        name: &str,
        n: u64,
        mq_pid: u32,
        paging: bool,
        sd: Option<&crate::sdcard::SlowDisk>,
    ) -> Res<u64> {
        // Nothing listens on this port: Kafka is "stopped".
        let dead = format!("127.0.0.1:{}", harness::free_port());
        let wal = self.dir.join(format!("wal-{name}"));
        let prefix = format!("{name}/#");
        let mut gw = self.gateway_on(name, &wal, &dead, "bench", &prefix, sd)?;
        let a0 = Metrics::scrape(gw.admin()).get("mkg_mqtt_messages_acked_total");
        let (g0, m0) = (probe::cpu_ticks(gw.pid()), probe::cpu_ticks(mq_pid));
        let threads0 = probe::thread_ticks(gw.pid());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pager = paging.then(|| {
            let (admin, stop) = (gw.admin(), stop.clone());
            std::thread::spawn(move || {
                let (mut pages, mut from) = (0u64, 1u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let page =
                        harness::http_get(admin, &format!("/records?from={from}&limit=1000"))
                            .ok()
                            .and_then(|(_, body)| {
                                serde_json::from_str::<serde_json::Value>(&body).ok()
                            });
                    from = page.as_ref().and_then(|p| p["next"].as_u64()).unwrap_or(1);
                    let _ = harness::http_get(admin, "/backlog/topics");
                    pages += 1;
                }
                pages
            })
        });
        let lg = self.loadgen(&format!("{name}/dev"), n, name, 0)?;
        let done = gw.wait_metric(
            "commit and acknowledge every message",
            Duration::from_secs(300),
            |m| {
                m.get("mkg_mqtt_messages_acked_total") >= a0 + n
                    && m.get("mkg_wal_records_committed_total") >= a0 + n
            },
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(p) = pager {
            let pages = p.join().map_err(|_| "the pager panicked")?;
            self.r.put("ingest_paged_pages", pages);
        }
        let done = done?;
        let start = lg["start_unix_ms"].as_u64().unwrap_or(0);
        let rate = n * 1000 / (done - start).max(1);
        if !paging && name == "ingest" {
            self.r.put(
                "ingest_commits",
                Metrics::scrape(gw.admin()).get("mkg_wal_commits_total"),
            );
            self.r.put(
                "ingest_gw_cpu_us",
                self.us_per_msg(probe::cpu_ticks(gw.pid()) - g0, n),
            );
            self.r.put(
                "ingest_mq_cpu_us",
                self.us_per_msg(probe::cpu_ticks(mq_pid) - m0, n),
            );
            let threads1 = probe::thread_ticks(gw.pid());
            self.r.put(
                "ingest_threads",
                probe::threads_per_msg(&threads0, &threads1, n, self.hz),
            );
        }
        gw.stop();
        let _ = std::fs::remove_dir_all(wal);
        Ok(rate)
    }

    /// 3, 4, 5 and 6 on one gateway with an empty WAL.
    pub(crate) fn live(&mut self) -> Res<()> {
        let o = self.o;
        say("starting the gateway for end to end and latency");
        let boot = self.bootstrap();
        let mut gw = self.gateway("live", &self.dir.join("wal-live"), &boot, "bench", "load/#")?;
        let pid = gw.pid();
        // Warm-up: connections, metadata, first batches.
        self.loadgen("load/warm", 2000, "warm", 0)?;
        gw.wait_metric("the warm-up in Kafka", Duration::from_secs(120), |m| {
            m.get("mkg_kafka_records_forwarded_total") >= 2000 && m.get("mkg_backlog_records") == 0
        })?;
        // Idle is idle: after the warm-up's batches and timers have settled.
        std::thread::sleep(Duration::from_secs(3));
        self.r.put("rss_idle_kb", probe::status_kb(pid, "VmRSS"));

        let n = o.e2e;
        say(format!("3a. end to end: {n} messages through the gateway"));
        let mq_pid = self.mq.pid().ok_or("Mosquitto not running")? as u32;
        let k_pid = self.kafka.pid().ok_or("Kafka not running")? as u32;
        let m = Metrics::scrape(gw.admin());
        let (c0, k0) = (
            m.get("mkg_wal_records_committed_total"),
            m.get("mkg_wal_commits_total"),
        );
        probe::reset_hwm(pid);
        let w0 = probe::write_bytes(pid);
        let (g0, mq0, kc0) = (
            probe::cpu_ticks(pid),
            probe::cpu_ticks(mq_pid),
            probe::cpu_ticks(k_pid),
        );
        let threads0 = probe::thread_ticks(pid);
        let lg = self.loadgen_cmd("load/dev", n, "e2e", 0)?;
        // How far Kafka falls behind: the peak RSS under full load follows it.
        let max_backlog = std::cell::Cell::new(0);
        let done = gw.wait_metric("every message forwarded", Duration::from_secs(900), |m| {
            let backlog = m.get("mkg_backlog_records");
            max_backlog.set(max_backlog.get().max(backlog));
            m.get("mkg_wal_records_committed_total") >= c0 + n && backlog == 0
        })?;
        self.r.put("e2e_max_backlog", max_backlog.get());
        let lg = self.loadgen_done(lg, "e2e")?;
        let start = lg["start_unix_ms"].as_u64().unwrap_or(0);
        self.r.put("e2e_rate", n * 1000 / (done - start).max(1));
        self.r.put("e2e_ingest_rate", lg["acked_rate"].clone());
        self.r.put("rss_load_kb", probe::status_kb(pid, "VmHWM"));
        let payload_bytes = (n * o.size as u64) as f64;
        self.r.put(
            "wa_full",
            round2((probe::write_bytes(pid) - w0) as f64 / payload_bytes),
        );
        let m = Metrics::scrape(gw.admin());
        let commits = m.get("mkg_wal_commits_total").saturating_sub(k0).max(1);
        self.r.put(
            "e2e_batch",
            round1((m.get("mkg_wal_records_committed_total") - c0) as f64 / commits as f64),
        );
        self.r.put(
            "e2e_gw_cpu_us",
            self.us_per_msg(probe::cpu_ticks(pid) - g0, n),
        );
        self.r.put(
            "e2e_mq_cpu_us",
            self.us_per_msg(probe::cpu_ticks(mq_pid) - mq0, n),
        );
        self.r.put(
            "e2e_kafka_cpu_us",
            self.us_per_msg(probe::cpu_ticks(k_pid) - kc0, n),
        );
        let threads1 = probe::thread_ticks(pid);
        self.r.put(
            "e2e_threads",
            probe::threads_per_msg(&threads0, &threads1, n, self.hz),
        );
        // After the burst, with nothing to do: the gateway hands its free memory back
        // after a quiet second.
        std::thread::sleep(Duration::from_secs(3));
        self.r
            .put("rss_after_burst_kb", probe::status_kb(pid, "VmRSS"));

        self.naive(n)?;
        self.latencies(&mut gw)?;
        gw.stop();
        Ok(())
    }

    /// 3b. The naive pipeline: `mosquitto_sub -q 1 | kcat -P`, not durable.
    fn naive(&mut self, n: u64) -> Res<()> {
        say(format!(
            "3b. naive pipeline: mosquitto_sub -q 1 | kcat -P, {n} messages"
        ));
        let mut sub = self.mosquitto_sub("naive", "naive/#", n, Stdio::piped())?;
        let mut kcat = crate::latency::kcat_producer(&self.bootstrap(), "naive")
            .stdin(sub.stdout.take().ok_or("no pipe")?)
            .spawn()
            .map_err(|e| format!("kcat: {e}"))?;
        self.wait_connected("naive")?;
        let lg = self.loadgen_cmd("naive/dev", n, "naive", 0)?;
        let (end_ms, _) = wait_sampling(&mut kcat, "kcat -P (naive)")?;
        sub.wait().map_err(|e| e.to_string())?;
        let lg = self.loadgen_done(lg, "naive")?;
        let start = lg["start_unix_ms"].as_u64().unwrap_or(0);
        self.r.put("naive_rate", n * 1000 / (end_ms - start).max(1));
        let count = read_topic(&self.bootstrap(), "naive", |_| {})?;
        self.r.put("naive_in_kafka", count);
        Ok(())
    }

    /// 2. Drain vs `kcat -P` and `kprod` producing the same records from a file.
    pub(crate) fn drain(&mut self) -> Res<()> {
        let o = self.o;
        let n = o.backlog;
        let k_pid = self.kafka.pid().ok_or("Kafka not running")? as u32;
        say(format!("2a. kcat -P: {n} records from a file"));
        let records = self.dir.join("records.txt");
        write_records(&records, n, o.size, o.publishers as u64)?;
        let headers = [
            "mqtt.topic=load/dev/0/0",
            "mqtt.qos=1",
            "mqtt.retain=false",
            "gateway.received_at_ms=1700000000000",
            "gateway.id=bench-drain",
            "gateway.seq=1234567",
        ];
        let t0 = now_ms();
        let kk0 = probe::cpu_ticks(k_pid);
        let mut kcat = crate::latency::kcat_producer(&self.bootstrap(), "kcatref");
        kcat.args(["-K", "\t", "-l"]);
        for h in headers {
            kcat.args(["-H", h]);
        }
        let status = kcat
            .arg(&records)
            .status()
            .map_err(|e| format!("kcat: {e}"))?;
        if !status.success() {
            return Err(format!("kcat -P failed ({status})"));
        }
        self.r.put("kcat_rate", n * 1000 / (now_ms() - t0).max(1));
        self.r.put(
            "kcat_kafka_cpu_us",
            self.us_per_msg(probe::cpu_ticks(k_pid) - kk0, n),
        );
        // The same records through the gateway's own librdkafka (kcat links Debian's,
        // an older one): what the client library alone reaches here.
        say(format!(
            "2a. kprod (kcat -P on the gateway's librdkafka): {n} records from a file"
        ));
        let mut kprod = self.tool("kprod");
        kprod
            .args([
                "--bootstrap",
                &self.bootstrap(),
                "--topic",
                "kprodref",
                "--file",
            ])
            .arg(&records);
        for h in headers {
            kprod.args(["--header", h]);
        }
        let out = kprod.output().map_err(|e| format!("kprod: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "kprod failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.r.put("kprod", last_json(&out.stdout, "kprod")?);
        let _ = std::fs::remove_file(&records);

        say(format!("2b. gateway drain of a {n}-record backlog"));
        let kd0 = probe::cpu_ticks(k_pid);
        let wal = self.dir.join("wal-backlog");
        let boot = self.bootstrap();
        let mut gw = self.gateway("drain", &wal, &boot, "bench", "load/#")?;
        self.r.put("ready_backlog_ms", gw.ready_ms - gw.exec_ms);
        let done = gw.wait_metric("the backlog drained", Duration::from_secs(600), |m| {
            m.get("mkg_backlog_records") == 0 && m.get("mkg_kafka_records_forwarded_total") >= n
        })?;
        let pid = gw.pid();
        self.r
            .put("drain_rate", n * 1000 / (done - gw.exec_ms).max(1));
        self.r
            .put("drain_gw_cpu_us", self.us_per_msg(probe::cpu_ticks(pid), n));
        self.r.put(
            "drain_kafka_cpu_us",
            self.us_per_msg(probe::cpu_ticks(k_pid) - kd0, n),
        );
        let threads = probe::thread_ticks(pid);
        self.r.put(
            "drain_threads",
            probe::threads_per_msg(&Default::default(), &threads, n, self.hz),
        );
        self.r.put("rss_backlog_kb", probe::status_kb(pid, "VmHWM"));
        gw.stop();
        let _ = std::fs::remove_dir_all(wal);
        Ok(())
    }

    /// 7. Start to ready with the big backlog; 5. the peak RSS while it drains.
    pub(crate) fn big(&mut self) -> Res<()> {
        let o = self.o;
        say(format!(
            "7. start to ready with {} records; draining for {} s",
            o.big, o.big_secs
        ));
        let boot = self.bootstrap();
        let gw = self.gateway("big", &self.dir.join("wal-big"), &boot, "big", "big/#")?;
        self.r.put("ready_big_ms", gw.ready_ms - gw.exec_ms);
        std::thread::sleep(Duration::from_secs(o.big_secs));
        let forwarded = Metrics::scrape(gw.admin()).get("mkg_kafka_records_forwarded_total");
        self.r.put(
            "big_drain_rate",
            forwarded * 1000 / (now_ms() - gw.exec_ms).max(1),
        );
        self.r
            .put("rss_big_kb", probe::status_kb(gw.pid(), "VmHWM"));
        gw.stop();
        Ok(())
    }

    /// Nothing lost: every message of every run that went through the gateway into
    /// topic `bench` is there (distinct `PUBID:SEQ` per run; duplicates counted).
    pub(crate) fn kafka_check(&mut self) -> Res<()> {
        say("checking topic bench");
        let mut runs: HashMap<String, (HashSet<(u32, u64)>, u64)> = HashMap::new();
        read_topic(&self.bootstrap(), "bench", |line| {
            let mut parts = line.splitn(3, ':');
            let (Some(publisher), Some(seq)) = (parts.next(), parts.next()) else {
                return;
            };
            let (Some((run, idx)), Ok(seq)) = (publisher.rsplit_once('-'), seq.parse::<u64>())
            else {
                return;
            };
            let Ok(idx) = idx.parse::<u32>() else { return };
            let e = runs.entry(run.to_string()).or_default();
            if !e.0.insert((idx, seq)) {
                e.1 += 1;
            }
        })?;
        let mut names: Vec<&String> = runs.keys().collect();
        names.sort();
        let summary: Vec<String> = names
            .iter()
            .map(|r| format!("{r} {} distinct + {} dup", runs[*r].0.len(), runs[*r].1))
            .collect();
        self.r.put("kafka_check", summary.join(", "));
        let o = self.o;
        let mut expected = vec![
            ("e2e".to_string(), o.e2e),
            ("backlog".to_string(), o.backlog),
        ];
        for rep in 1..=o.lat_reps {
            for rate in crate::latency::RATES {
                expected.push((format!("lat{rate}r{rep}"), rate * o.lat_secs));
            }
        }
        for ms in &o.sd_card {
            for rate in crate::sdcard::SD_RATES {
                expected.push((format!("sd{ms}lat{rate}"), rate * o.lat_secs));
            }
        }
        for (run, want) in expected {
            let got = runs.get(&run).map_or(0, |e| e.0.len() as u64);
            if got != want {
                return Err(format!(
                    "topic bench holds {got} distinct messages of run {run}, expected {want}"
                ));
            }
        }
        Ok(())
    }
}
