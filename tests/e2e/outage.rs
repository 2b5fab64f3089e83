//! Kafka down for minutes while traffic continues, then started again. The outage
//! length comes from `MKG_KAFKA_OUTAGE_SECS` (default 60 s, the bounded CI version;
//! run it by hand with 300 or more).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::checker::{check_with_faults, now_ms, BacklogSampler, FaultEvent};
use harness::{payload, publish, until_distinct, wait_until, Kafka};
use libtest_mimic::Failed;

use crate::common::{joined, wait_kafka_dead, Site};
use crate::fail;

pub fn kafka_down_for_minutes_while_traffic_continues() -> Result<(), Failed> {
    let outage = Duration::from_secs(
        std::env::var("MKG_KAFKA_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let own = Kafka::start();
    let site = Site::new(&own, "outage")?;
    let mut gw = site.gateway();
    let admin = gw.admin;
    let sampler = BacklogSampler::start(Arc::new(Mutex::new(admin)), Duration::from_millis(500));

    // A paced publisher (about 500 msg/s over 8 device topics) for the whole run.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (stop, port) = (stop.clone(), site.mqtt.port);
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut seq = 0u64;
            let mut next = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                next += Duration::from_millis(200);
                let chunk: Vec<(String, Vec<u8>)> = (seq..seq + 100)
                    .map(|s| (format!("o/dev{}", s % 8), payload("out", s, 200)))
                    .collect();
                seq += 100;
                acked.extend(publish(port, 1, &chunk, Duration::from_secs(60)));
            }
            acked
        })
    };
    wait_until("traffic flowing to Kafka", Duration::from_secs(60), || {
        gw.json("/status")["counters"]["kafka_records_forwarded"]
            .as_u64()
            .is_some_and(|n| n >= 1_000)
    });
    // Kill Kafka for the outage; traffic continues into the WAL.
    let down_at = now_ms();
    let pid = own.pid().ok_or_else(|| fail("no kafka pid"))?;
    harness::kill(pid, libc::SIGKILL);
    let killed = Instant::now();
    wait_kafka_dead(pid);
    // The outage length is the scenario itself: wait it out, watching the gateway.
    wait_until(
        "the outage to last its length",
        outage + Duration::from_secs(30),
        || {
            if let Some(status) = gw.try_wait() {
                panic!("gateway exited during the outage: {status}");
            }
            killed.elapsed() >= outage
        },
    );
    let backlog_at_restart = gw.json("/backlog")["records"].as_u64().unwrap_or(0);
    let ready_during = harness::http_get(admin, "/readyz")
        .map(|(s, _)| s)
        .unwrap_or(0);
    own.start_again();
    let up_at = now_ms();
    // Traffic goes on a little after the restart, then stops.
    wait_until(
        "traffic after the restart",
        Duration::from_secs(120),
        || {
            gw.json("/status")["counters"]["kafka_records_forwarded"]
                .as_u64()
                .is_some_and(|n| n >= 2_000)
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = joined(publisher)?;
    let consumed = site.consume_until(Duration::from_secs(300), until_distinct(published.len()));
    wait_until("backlog to drain", Duration::from_secs(120), || {
        gw.json("/backlog")["records"] == 0
    });
    let series = sampler.finish();
    let faults = [FaultEvent {
        at_ms: down_at,
        until_ms: up_at,
        kind: "kafka down".into(),
    }];
    let report = check_with_faults(&published, &consumed, &faults);
    eprintln!(
        "Kafka down {outage:?}: {report}; backlog at restart {backlog_at_restart} (max {}), drained {:.1?} s after restart; /readyz during outage {ready_during}\nbacklog: {}",
        series.max(),
        series.drain_ms(up_at).map(|ms| ms as f64 / 1000.0),
        series.compact(30)
    );
    report.assert_clean();
    if backlog_at_restart == 0 {
        return Err(fail("no backlog built while Kafka was down"));
    }
    Ok(())
}
