//! Publish -> readable-in-Kafka latency meter of the benchmarks (`cargo xtask bench`).
//!
//! ```text
//! latency --bootstrap 127.0.0.1:9092 --topic bench --run-id RUN --messages N [--timeout SECS]
//! ```
//!
//! Assigns every partition of `--topic` at its current end (so only records produced
//! after it started are read), prints `ready` on stderr, then reads until it has seen
//! `--messages` distinct messages of run `RUN` (payloads `RUN-I:SEQ:MICROS:...` from
//! `loadgen`, the checker's format with the send time in Unix microseconds). For each
//! message, the first time it is read, latency = read time - send time (same host,
//! same clock). Prints one JSON line: count, duplicates, p50/p90/p99/p99.9/max in ms,
//! and the same quantiles of the stages on the way, each counted from the publish:
//! `receive` (the record's `gateway.received_at_ms` header, absent for the naive
//! pipeline) and `append` (the record's timestamp when the topic has
//! `message.timestamp.type=LogAppendTime`: when Kafka appended it); millisecond
//! resolution both. `read` - `append` is the meter's own consumer.
//! Exit code 1 if not every message arrived before the timeout.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::checker::message_id;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, Timestamp, TopicPartitionList};

fn usage() -> ! {
    eprintln!(
        "usage: latency --bootstrap HOST:PORT --topic T --run-id RUN --messages N [--timeout SECS]"
    );
    std::process::exit(2);
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn main() -> std::process::ExitCode {
    let (mut bootstrap, mut topic, mut run_id, mut n, mut timeout) =
        (String::new(), String::new(), String::new(), 0usize, 600u64);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--bootstrap" => bootstrap = v,
            "--topic" => topic = v,
            "--run-id" => run_id = v,
            "--messages" => n = v.parse().unwrap_or_else(|_| usage()),
            "--timeout" => timeout = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if bootstrap.is_empty() || topic.is_empty() || run_id.is_empty() || n == 0 {
        usage();
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("latency-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.error.backoff.ms", "10")
        .create()
        .expect("Kafka consumer");
    let md = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    let parts = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    if parts == 0 {
        eprintln!("latency: topic {topic} does not exist (create it first)");
        return std::process::ExitCode::FAILURE;
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        let (_, high) = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .expect("watermarks");
        tpl.add_partition_offset(&topic, p, Offset::Offset(high))
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    // One poll so the fetchers are running before the publishers start.
    let _ = consumer.poll(Duration::from_millis(200));
    eprintln!("ready");

    let prefix = format!("{run_id}-");
    let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(n);
    let mut lat_us: Vec<u64> = Vec::with_capacity(n);
    let mut to_gw_ms: Vec<u64> = Vec::with_capacity(n);
    let mut to_append_ms: Vec<u64> = Vec::with_capacity(n);
    let mut dups = 0u64;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    while seen.len() < n && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let t = now_us();
        let Ok(m) = m else { continue };
        let payload = m.payload().unwrap_or_default();
        if !payload.starts_with(prefix.as_bytes()) {
            continue;
        }
        let Some(id) = message_id(payload) else {
            continue;
        };
        if !seen.insert(id.to_vec()) {
            dups += 1;
            continue;
        }
        let sent: Option<u64> = payload[id.len() + 1..]
            .split(|b| *b == b':')
            .next()
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| f.parse().ok());
        if let Some(sent) = sent {
            lat_us.push(t.saturating_sub(sent));
            // The gateway's receive time (ms) splits the latency in two legs.
            let received_ms = m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == "gateway.received_at_ms")
                    .and_then(|x| std::str::from_utf8(x.value?).ok()?.parse::<u64>().ok())
            });
            if let Some(r) = received_ms {
                to_gw_ms.push(r.saturating_sub(sent / 1000));
            }
            if let Timestamp::LogAppendTime(a) = m.timestamp() {
                to_append_ms.push((a.max(0) as u64).saturating_sub(sent / 1000));
            }
        }
    }
    lat_us.sort_unstable();
    to_gw_ms.sort_unstable();
    to_append_ms.sort_unstable();
    let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
    // Quantiles of a millisecond stage; null when no record carried it.
    let stage = |v: &[u64]| {
        if v.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::json!({
            "p50_ms": quantile(v, 0.50),
            "p99_ms": quantile(v, 0.99),
            "p999_ms": quantile(v, 0.999),
            "max_ms": v.last().copied().unwrap_or(0),
        })
    };
    let line = serde_json::json!({
        "messages": n,
        "received": seen.len(),
        "duplicates": dups,
        "p50_ms": ms(quantile(&lat_us, 0.50)),
        "p90_ms": ms(quantile(&lat_us, 0.90)),
        "p99_ms": ms(quantile(&lat_us, 0.99)),
        "p999_ms": ms(quantile(&lat_us, 0.999)),
        "max_ms": ms(lat_us.last().copied().unwrap_or(0)),
        "to_gateway_p50_ms": quantile(&to_gw_ms, 0.50),
        "to_gateway_p99_ms": quantile(&to_gw_ms, 0.99),
        "receive": stage(&to_gw_ms),
        "append": stage(&to_append_ms),
    });
    println!("{line}");
    if seen.len() < n {
        eprintln!("latency: only {} of {n} messages arrived", seen.len());
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
