//! The phases of a run after the backlogs and 1 (`ingest`), in the order they run:
//! 3 / 4 / 5 / 6 on one gateway with an empty WAL, 2 drain, 7 start with the big
//! backlog, and the check that every message is in Kafka.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::probe::{self, Metrics};
use crate::{
    last_json, now_ms, read_topic, round1, round2, say, wait_sampling, write_records, Bench, Res,
};

impl Bench<'_> {
    /// Backlogs first, so their disk writes do not disturb the measurements.
    pub(crate) fn backlogs(&mut self) -> Res<()> {
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
