//! Soak: a random schedule of faults against real brokers while publishers keep
//! sending (QoS 1 on `soak/#`, QoS 2 on `alarms/#`), then the checker's report. Used by
//! `cargo xtask soak` (any duration) and by a bounded end-to-end test in CI.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checker::{check_with_faults, now_ms, BacklogSampler, BacklogSeries, FaultEvent};
use crate::config::GatewayConfig;
use crate::publisher::{publish_resilient_with, ResilientOptions};
use crate::qos2pub::publish_qos2;
use crate::{
    consume, payload, unique, until_distinct, wait_until, Gateway, Kafka, Mosquitto, Published,
    Report,
};

/// Faults the soak injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the gateway, restart it.
    KillGateway,
    /// SIGTERM the gateway (graceful), restart it.
    TermGateway,
    /// SIGKILL Kafka, restart it after a while.
    KillKafka,
    /// SIGSTOP Kafka for a while, then SIGCONT.
    PauseKafka,
    /// SIGTERM Mosquitto (it saves its persistence file) and start it again.
    RestartMosquitto,
}

/// The soak's result.
#[derive(Debug)]
pub struct SoakReport {
    /// The checker's report over the whole run.
    pub report: Report,
    /// Faults injected, in order, with their time offset.
    pub faults: Vec<(Duration, Fault)>,
    /// Largest backlog seen on `/backlog`.
    pub max_backlog: u64,
    /// Time from the end of the last fault until everything was in Kafka.
    pub drain_time: Duration,
    /// `/backlog` sampled every 250 ms over the run.
    pub backlog: BacklogSeries,
    /// Time from the end of the last fault until `/backlog` showed 0, if seen.
    pub backlog_drain: Option<Duration>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |k: Fault| self.faults.iter().filter(|(_, x)| *x == k).count();
        writeln!(f, "soak: {:.0?} elapsed", self.elapsed)?;
        writeln!(
            f,
            "faults: {} (gateway SIGKILL {}, gateway SIGTERM {}, Kafka SIGKILL {}, Kafka SIGSTOP {}, Mosquitto restart {})",
            self.faults.len(),
            count(Fault::KillGateway),
            count(Fault::TermGateway),
            count(Fault::KillKafka),
            count(Fault::PauseKafka),
            count(Fault::RestartMosquitto)
        )?;
        writeln!(
            f,
            "max backlog: {} records; all in Kafka {:.1?} after the last fault; /backlog at 0 after {:?}",
            self.max_backlog, self.drain_time, self.backlog_drain
        )?;
        writeln!(f, "backlog over time: {}", self.backlog.compact(40))?;
        write!(f, "{}", self.report)
    }
}

/// xorshift64*: reproducible schedules from a seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn backlog(admin: std::net::SocketAddr) -> Option<u64> {
    crate::http_get(admin, "/backlog")
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["records"].as_u64())
}

/// Run a soak of `duration` with the gateway binary `bin`; `seed` picks the schedule.
pub fn run(bin: &Path, duration: Duration, seed: u64) -> SoakReport {
    let started = Instant::now();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let kafka = Kafka::start();
    // QoS 1 and QoS 2 mixed: Mosquitto 2.0.11 (Debian 12) reorders a client's queue on
    // its own then unless the in-flight limit is off (tests/e2e/order.rs); the soak
    // checks the gateway, so it runs Mosquitto the way the README says for this case.
    let m = Mosquitto::start_with("max_inflight_messages 0");
    let dir = tempfile::Builder::new()
        .prefix("mkg-soak")
        .tempdir()
        .unwrap();
    let topic = unique("soak");
    let cfg = GatewayConfig::new(m.port, &kafka.bootstrap())
        .top("gateway_id", "soak")
        .mqtt("client_id", unique("soak-gw"))
        .topics(&[("soak/#", 1), ("alarms/#", 2)])
        .topic(&topic)
        .shutdown("grace_period", "5s");
    let mut gw = Gateway::start(bin, dir.path(), &cfg.toml());
    gw.wait_ready();

    // Publishers, until told to stop: QoS 1 over 8 device topics (~2,000 msg/s) and
    // QoS 2 over 4 alarm topics (~500 msg/s), each with a persistent session that
    // rides out Mosquitto restarts. The point is faults, not throughput.
    let stop = Arc::new(AtomicBool::new(false));
    let published: Arc<Mutex<Vec<Published>>> = Arc::default();
    let publisher = |name: &'static str, qos: u8, per_chunk: u64, topics: u64| {
        let (stop, published, port) = (stop.clone(), published.clone(), m.port);
        std::thread::spawn(move || {
            let opts = ResilientOptions {
                client_id: unique(&format!("soak-{name}")),
                rate_per_sec: 0,
                ..ResilientOptions::default()
            };
            let mut seq = 0u64;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                next += Duration::from_millis(200);
                let chunk: Vec<(String, Vec<u8>)> = (0..per_chunk)
                    .map(|i| {
                        let s = seq + i;
                        (format!("{name}/dev{}", s % topics), payload(name, s, 200))
                    })
                    .collect();
                seq += per_chunk;
                let timeout = Duration::from_secs(60);
                let acked = if qos == 2 {
                    publish_qos2(&opts, port, &chunk, timeout).published
                } else {
                    publish_resilient_with(&opts, port, qos, &chunk, timeout).published
                };
                published.lock().unwrap().extend(acked);
            }
        })
    };
    let publishers = [publisher("soak", 1, 400, 8), publisher("alarms", 2, 100, 4)];

    let mut faults = Vec::new();
    let mut events: Vec<FaultEvent> = Vec::new();
    let sampler = BacklogSampler::start(Arc::new(Mutex::new(gw.admin)), Duration::from_millis(250));
    while started.elapsed() + Duration::from_secs(5) < duration {
        // The time between faults is the schedule itself (the only fixed wait).
        std::thread::sleep(Duration::from_millis(500 + rng.below(2500)));
        let fault = match rng.below(5) {
            0 => Fault::KillGateway,
            1 => Fault::TermGateway,
            2 => Fault::KillKafka,
            3 => Fault::PauseKafka,
            _ => Fault::RestartMosquitto,
        };
        faults.push((started.elapsed(), fault));
        let fault_start = now_ms();
        match fault {
            Fault::KillGateway => {
                gw.sigkill();
                gw.restart();
                gw.wait_ready();
            }
            Fault::TermGateway => {
                gw.signal(libc::SIGTERM);
                let status = gw.wait_exit(Duration::from_secs(30));
                assert!(status.success(), "SIGTERM exit: {status}\n{}", gw.log());
                gw.restart();
                gw.wait_ready();
            }
            Fault::KillKafka => {
                if let Some(pid) = kafka.pid() {
                    crate::kill(pid, libc::SIGKILL);
                    wait_until("kafka to die", Duration::from_secs(30), || {
                        std::fs::read_to_string(format!("/proc/{pid}/stat"))
                            .map_or(true, |s| s.contains(") Z "))
                    });
                }
                std::thread::sleep(Duration::from_millis(500 + rng.below(3000)));
                kafka.start_again();
            }
            Fault::PauseKafka => {
                if let Some(pid) = kafka.pid() {
                    crate::kill(pid, libc::SIGSTOP);
                    std::thread::sleep(Duration::from_millis(500 + rng.below(5000)));
                    crate::kill(pid, libc::SIGCONT);
                }
            }
            Fault::RestartMosquitto => {
                m.kill(libc::SIGTERM);
                m.start_again();
                gw.wait_ready();
            }
        }
        events.push(FaultEvent {
            at_ms: fault_start,
            until_ms: now_ms(),
            kind: format!("{fault:?}"),
        });
    }
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().expect("publisher");
    }
    let last_fault_end = Instant::now();
    let last_fault_end_ms = now_ms();
    let published = std::mem::take(&mut *published.lock().unwrap());
    let n = published.len();
    let consumed = consume(
        &kafka.bootstrap(),
        &[topic.as_str()],
        Duration::from_secs(300),
        until_distinct(n),
    );
    let drain_time = last_fault_end.elapsed();
    let admin = gw.admin;
    wait_until(
        "/backlog at 0 after the run",
        Duration::from_secs(120),
        || backlog(admin) == Some(0),
    );
    let series = sampler.finish();
    let report = check_with_faults(&published, &consumed, &events);
    SoakReport {
        report,
        faults,
        max_backlog: series.max(),
        drain_time,
        backlog_drain: series
            .drain_ms(last_fault_end_ms)
            .map(Duration::from_millis),
        backlog: series,
        elapsed: started.elapsed(),
    }
}
