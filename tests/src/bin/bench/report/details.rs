//! The detail lines under the table: rates, ceilings and CPU of each phase, every
//! latency repetition stage by stage, the WAL's fsync times, the Kafka check.

use serde_json::Value;

use super::{num, thousands as t, Results};

/// The detail lines of a run, each ending in a newline.
pub(super) fn lines(r: &Results) -> String {
    let mut out = String::new();
    let (dr, kr) = (r.n("drain_rate"), r.n("kcat_rate"));
    let rounds = r.list("ingest_rounds");
    let before = match r.n("ingest_before_paged_rate") {
        0 => r.n("ingest_rate"),
        b => b,
    };
    let kp = r.n("kprod.rate");
    let lines = [
        format!(
            "run: {}, git {}, {} s, machine busy {}% (load avg {}), 4 KiB write+fdatasync {} us, Mosquitto drop log lines {}; Kafka JVM {}, GC pauses over the run {} (longest {} ms)",
            r.s("mode"), r.s("git"), r.n("wall_s"), r.n("busy_pct"), r.s("other_load"), r.n("fsync_us"), r.n("mq_drop_lines"),
            r.s("kafka_jvm"), r.n("kafka_gc.pauses"), num(r.f("kafka_gc.max_ms"))
        ),
        format!(
            "details: publishers' ack rate in 1a {} msg/s, in 3 {} msg/s; largest backlog in 3 {} records; records per WAL commit: full speed {}, 1,000/s {} ({} commits/s), 10,000/s {}; records per fsync: 1,000/s {} ({} fsyncs/s), 10,000/s {}; disk bytes/payload byte at 10,000/s {}; gateway CPU {} us/msg at full speed; naive pipeline delivered {} records; drain rate over the first seconds of the big backlog {} msg/s; binary before strip {} B",
            t(r.n("ceiling_pub_rate")), t(r.n("e2e_ingest_rate")), t(r.n("e2e_max_backlog")), num(r.f("e2e_batch")), num(r.f("batch_1000")),
            r.n("commits_per_s_1000"), num(r.f("batch_10000")), num(r.f("sync_batch_1000")), r.n("syncs_per_s_1000"),
            num(r.f("sync_batch_10000")), num(r.f("wa_10000")), num(r.f("e2e_gw_cpu_us")), t(r.n("naive_in_kafka")),
            t(r.n("big_drain_rate")), t(r.n("bin_bytes"))
        ),
        format!(
            "ceilings in 2: kcat -P (librdkafka 2.0) {} msg/s; kprod, the same on the gateway's librdkafka 2.12, {} msg/s: drain / kprod {:.2}",
            t(kr), t(kp), dr as f64 / kp.max(1) as f64
        ),
        format!(
            "ceilings in 1, each round (mosquitto_sub -q 1 / rumqttc subscriber mqttsub -> gateway ingest, ratio): {}; gateway ingest without paging {} msg/s before the paged run, {} msg/s after it",
            rounds.iter().map(|x| format!(
                "{} / {} -> {} msg/s, {}",
                t(x["ceiling_c_rate"].as_u64().unwrap_or(0)), t(x["ceiling_rust_rate"].as_u64().unwrap_or(0)),
                t(x["ingest_rate"].as_u64().unwrap_or(0)), num(x["ratio"].as_f64().unwrap_or(0.0))
            )).collect::<Vec<_>>().join("; "),
            t(before), t(r.n("ingest_again_rate"))
        ),
        format!(
            "CPU us/msg in 1: ceiling (mosquitto_sub run): Mosquitto {}, mosquitto_sub {}; ingest: Mosquitto {}, gateway {} ({})",
            num(r.f("ceiling_mq_cpu_us")), num(r.f("ceiling_sub_cpu_us")), num(r.f("ingest_mq_cpu_us")),
            num(r.f("ingest_gw_cpu_us")), r.s("ingest_threads")
        ),
        format!(
            "CPU us/msg in 2: gateway {} (whole process incl. start: {}), Kafka {} (gateway) vs {} (kcat)",
            num(r.f("drain_gw_cpu_us")), r.s("drain_threads"), num(r.f("drain_kafka_cpu_us")), num(r.f("kcat_kafka_cpu_us"))
        ),
        format!(
            "CPU us/msg at full speed (3): gateway {} ({}), Mosquitto {}, Kafka {}",
            num(r.f("e2e_gw_cpu_us")), r.s("e2e_threads"), num(r.f("e2e_mq_cpu_us")), num(r.f("e2e_kafka_cpu_us"))
        ),
    ];
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out.push_str(&format!(
        "before 4: {} MiB not yet on disk, written back (sync) in {} ms\n",
        num((r.f("latency_dirty_before_kb") / 102.4).round() / 10.0),
        r.n("latency_sync_ms")
    ));
    for rate in crate::latency::RATES {
        for (i, run) in r.list(&format!("latency_{rate}_runs")).iter().enumerate() {
            out.push_str(&format!(
                "latency at {}/s, run {}: {}\n",
                t(rate),
                i + 1,
                latency_stages(run)
            ));
        }
    }
    for rate in [1000u64, 10000] {
        out.push_str(&format!(
            "WAL fsync times at {}/s: {}\n",
            t(rate),
            r.s(&format!("commit_times_{rate}"))
        ));
    }
    for ms in r.s("sd_delays").split(',').filter(|d| !d.is_empty()) {
        for rate in crate::sdcard::SD_RATES {
            out.push_str(&format!(
                "SD card, fsync +{ms} ms, at {}/s: WAL fsync times {}; records per fsync {}; latency p90 {} ms, max {} ms\n",
                t(rate),
                r.s(&format!("sd{ms}_commit_times_{rate}")),
                num(r.f(&format!("sd{ms}_sync_batch_{rate}"))),
                num(r.f(&format!("sd{ms}_latency_{rate}.p90_ms"))),
                num(r.f(&format!("sd{ms}_latency_{rate}.max_ms"))),
            ));
        }
    }
    out.push_str(&format!(
        "disk bytes written per WAL fsync at 1,000/s: {} (bytes/payload byte x payload size x records/fsync)\n",
        t((r.f("wa_1000") * r.f("size") * r.f("sync_batch_1000")).round() as u64)
    ));
    out.push_str(&format!(
        "Kafka check (topic bench, per run): {}\n",
        r.s("kafka_check")
    ));
    out
}

/// One latency run's stages: the gateway's, then the naive pipeline's.
fn latency_stages(run: &Value) -> String {
    let ms = |v: &Value| match v.as_f64() {
        Some(x) => format!("{} ms", num(x)),
        None => "-".into(),
    };
    let q = |v: &Value| {
        format!(
            "p50 {} / p99 {} / p99.9 {}",
            ms(&v["p50_ms"]),
            ms(&v["p99_ms"]),
            ms(&v["p999_ms"])
        )
    };
    let (g, n) = (&run["gateway"], &run["naive"]);
    let st = &g["stages"];
    format!(
        "gateway read {} (max {}), {} duplicates; from the publish: gateway receipt {}, \
         Kafka append {}; from the receipt: durable {}, to the producer {}, acknowledged {}; \
         WAL checkpoints {} (slowest <= {}), durable commits p99 {}. Naive: read {} (max {}), \
         Kafka append {}. Kafka's GC during the run: {} pauses, longest {}, {} in all",
        q(g),
        ms(&g["max_ms"]),
        num(g["duplicates"].as_f64().unwrap_or(0.0)),
        q(&g["receive"]),
        q(&g["append"]),
        q(&st["durable"]),
        q(&st["produced"]),
        q(&st["delivered"]),
        num(st["checkpoints"].as_f64().unwrap_or(0.0)),
        ms(&st["checkpoint_max_ms"]),
        ms(&st["commit_p99_ms"]),
        q(n),
        ms(&n["max_ms"]),
        q(&n["append"]),
        num(run["kafka_gc"]["pauses"].as_f64().unwrap_or(0.0)),
        ms(&run["kafka_gc"]["max_ms"]),
        ms(&run["kafka_gc"]["total_ms"]),
    )
}
