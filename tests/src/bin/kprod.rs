//! A second drain ceiling for the benchmarks (`cargo xtask bench`, 2): `kcat -P -K TAB -l`
//! rebuilt on the gateway's own rdkafka and librdkafka (2.12), so a gap between the
//! gateway's drain and this figure is the gateway's, not the library version's (the
//! Debian kcat links librdkafka 2.0).
//!
//! ```text
//! kprod --bootstrap HOST:PORT --topic TOPIC --file LINES [--header K=V]...
//! ```
//!
//! Each line of LINES is `KEY<TAB>VALUE`. The producer settings are kcat's in the
//! bench: `acks=all`, idempotence, `linger.ms=5`, `batch.num.messages=10000` and a
//! queue of 1,000,000 records; one thread produces and polls, like kcat, and it gets
//! the gateway's start-up fix for librdkafka 2.12's producer id (see [`kick`]). Prints one
//! JSON line: records, seconds from start to the last delivery report, rate, and
//! failed deliveries (the run fails if any).

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

/// Counts delivery reports.
#[derive(Default)]
struct Count {
    ok: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl ClientContext for Count {}

impl ProducerContext for Count {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let c = if r.is_ok() { &self.ok } else { &self.failed };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The gateway's start-up fix (`Forwarder::kick_producer_id`): until the first
/// delivery report, a metadata request every 50 ms, so librdkafka 2.12 gets its
/// producer id without waiting for its 500 ms retry timer; the ceiling gets the same
/// head start as the gateway.
fn kick(producer: &BaseProducer<Count>, topic: &str, last: &mut Instant) {
    let ctx = producer.context();
    let reported = ctx.ok.load(std::sync::atomic::Ordering::Relaxed)
        + ctx.failed.load(std::sync::atomic::Ordering::Relaxed);
    if reported == 0 && last.elapsed() >= Duration::from_millis(50) {
        *last = Instant::now();
        let _ = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_millis(100));
    }
}

fn usage() -> ! {
    eprintln!("usage: kprod --bootstrap HOST:PORT --topic TOPIC --file LINES [--header K=V]...");
    std::process::exit(2);
}

fn main() -> anyhow::Result<()> {
    let (mut bootstrap, mut topic, mut file) = (String::new(), String::new(), String::new());
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--bootstrap" => bootstrap = value(),
            "--topic" => topic = value(),
            "--file" => file = value(),
            "--header" => {
                let h = value();
                let (k, v) = h.split_once('=').unwrap_or_else(|| usage());
                headers.push((k.into(), v.into()));
            }
            _ => usage(),
        }
    }
    if bootstrap.is_empty() || topic.is_empty() || file.is_empty() {
        usage();
    }
    let data = std::fs::read(&file)?;
    let started = Instant::now();
    let producer: BaseProducer<Count> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Count::default())?;
    let mut records = 0u64;
    let mut last_kick = Instant::now();
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let tab = line.iter().position(|b| *b == b'\t');
        let (key, value) = match tab {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (&line[..0], line),
        };
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in &headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        let mut record = BaseRecord::to(&topic).key(key).payload(value).headers(h);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(100));
                }
                Err((e, _)) => anyhow::bail!("produce: {e}"),
            }
        }
        records += 1;
        producer.poll(Duration::ZERO);
        kick(&producer, &topic, &mut last_kick);
    }
    producer.flush(Duration::from_secs(300))?;
    let secs = started.elapsed().as_secs_f64();
    let ctx = producer.context();
    let failed = ctx.failed.load(std::sync::atomic::Ordering::Relaxed);
    let ok = ctx.ok.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{{\"records\":{records},\"delivered\":{ok},\"failed\":{failed},\"seconds\":{secs:.3},\"rate\":{:.0}}}",
        records as f64 / secs
    );
    if failed > 0 || ok != records {
        anyhow::bail!("{failed} deliveries failed, {ok} of {records} delivered");
    }
    Ok(())
}
