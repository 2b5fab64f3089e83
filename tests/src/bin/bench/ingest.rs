//! Phase 1: the gateway's durable ingest with Kafka stopped, against Mosquitto's
//! delivery ceiling measured in the same round, and the same while an operator pages
//! through the backlog.

use std::process::Stdio;
use std::time::Duration;

use crate::probe::{self, Metrics};
use crate::{last_json, round2, say, wait_sampling, Bench, Res};

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

/// One round of 1: the ceiling and the gateway's durable ingest, one right after the
/// other.
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
    /// ceiling and the gateway next to each other, so both see the same state of the
    /// machine; the figure is the median round, since a single pair swings by +-20%
    /// on 2 shared cores.
    pub(crate) fn ingest(&mut self) -> Res<()> {
        let n = self.o.ingest;
        let mq_pid = self.mq.pid().ok_or("Mosquitto not running")? as u32;
        let mut rounds = Vec::new();
        for round in 1..=self.o.ingest_rounds {
            let name = if round == 1 {
                "ingest".to_string()
            } else {
                format!("ingest{round}")
            };
            let gateway = |b: &mut Self| {
                say(format!(
                    "1b. gateway ingest with Kafka stopped: {n} messages (round {round})"
                ));
                b.ingest_run(&name, n, mq_pid, false, None)
            };
            // Odd rounds measure the ceiling first, even ones the gateway: a drift over
            // the phase (Mosquitto warming up, the machine's neighbours) then favours
            // neither side.
            let (ceiling, rate) = if round % 2 == 1 {
                let ceiling = self.ceiling(round, n, mq_pid)?;
                (ceiling, gateway(self)?)
            } else {
                let rate = gateway(self)?;
                (self.ceiling(round, n, mq_pid)?, rate)
            };
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
}
