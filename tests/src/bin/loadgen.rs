//! MQTT load generator of the benchmarks (`cargo xtask bench`, docs/BENCHMARKS.md).
//!
//! ```text
//! loadgen --port 1883 [--host 127.0.0.1] --publishers 4 --messages 2000000 \
//!         --size 256 --qos 1 --topic-prefix load/dev [--topics 8] \
//!         [--inflight 1000] [--threads 2] [--run-id ID] [--rate MSGS_PER_SEC]
//! ```
//!
//! Each publisher has its own MQTT connection (clean session, `--inflight` unacked
//! QoS 1/2 messages in flight) and publishes its share of `--messages` (the first
//! `messages % publishers` publishers send one more). Payloads are the checker's format
//! (`harness::payload`): `PUBID:SEQ:` padded with `x` to `--size` bytes, PUBID being
//! `RUNID-I`; the padding starts with the send time in Unix microseconds and a colon
//! (`PUBID:SEQ:MICROS:xxx...`), which the `latency` tool reads back from Kafka. Publisher I spreads its messages round robin over `--topics` topics
//! `PREFIX/I/T`. All publishers connect first and start together. `--rate` caps the
//! total offered rate (each publisher paces itself at RATE / K messages/s); without it
//! they publish as fast as the broker takes them.
//!
//! It counts broker acknowledgements (PUBACK for QoS 1, PUBCOMP for QoS 2; for QoS 0
//! every PUBLISH written to the socket) and prints one JSON line on stdout:
//! `start_unix_ms` (when publishing started), `publish_secs` (until the last PUBLISH
//! was written), `acked_secs` (until the last acknowledgement), `acked_rate`
//! (acknowledged messages / `acked_secs`). Progress goes to stderr every 5 s.
//! Exit code 1 if a connection fails or not everything is acknowledged in
//! `--timeout` seconds (default 600).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

#[derive(Debug, Clone)]
struct Args {
    host: String,
    port: u16,
    publishers: usize,
    messages: u64,
    size: usize,
    qos: u8,
    topic_prefix: String,
    topics: u64,
    inflight: u16,
    threads: usize,
    run_id: String,
    timeout: Duration,
    /// Total offered rate in messages/s over all publishers; 0 = as fast as possible.
    rate: f64,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen --port P [--host H] [--publishers K] [--messages N] [--size BYTES] \
         [--qos 0|1|2] [--topic-prefix PREFIX] [--topics T] [--inflight I] [--threads W] \
         [--run-id ID] [--timeout SECS] [--rate MSGS_PER_SEC]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut a = Args {
        host: "127.0.0.1".into(),
        port: 0,
        publishers: 4,
        messages: 100_000,
        size: 256,
        qos: 1,
        topic_prefix: "load/dev".into(),
        topics: 8,
        inflight: 1000,
        threads: 2,
        run_id: format!("lg{}", std::process::id()),
        timeout: Duration::from_secs(600),
        rate: 0.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            usage();
        }
        let Some(v) = it.next() else {
            eprintln!("loadgen: {flag} needs a value");
            usage();
        };
        fn num<T: std::str::FromStr>(flag: &str, v: &str) -> T {
            v.replace('_', "").parse().unwrap_or_else(|_| {
                eprintln!("loadgen: bad value for {flag}: {v:?}");
                usage()
            })
        }
        match flag.as_str() {
            "--host" => a.host = v,
            "--port" => a.port = num(&flag, &v),
            "--publishers" => a.publishers = num(&flag, &v),
            "--messages" => a.messages = num(&flag, &v),
            "--size" => a.size = num(&flag, &v),
            "--qos" => a.qos = num(&flag, &v),
            "--topic-prefix" => a.topic_prefix = v,
            "--topics" => a.topics = num(&flag, &v),
            "--inflight" => a.inflight = num(&flag, &v),
            "--threads" => a.threads = num(&flag, &v),
            "--run-id" => a.run_id = v,
            "--timeout" => a.timeout = Duration::from_secs(num(&flag, &v)),
            "--rate" => a.rate = num(&flag, &v),
            _ => {
                eprintln!("loadgen: unknown flag {flag}");
                usage();
            }
        }
    }
    if a.port == 0 || a.publishers == 0 || a.topics == 0 || a.inflight == 0 || a.qos > 2 {
        usage();
    }
    a.threads = a.threads.max(1);
    a
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What one publisher did.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    sent: u64,
    acked: u64,
    last_publish: Option<Instant>,
    last_ack: Option<Instant>,
}

async fn publisher(
    a: Arc<Args>,
    idx: usize,
    count: u64,
    start: Arc<tokio::sync::Barrier>,
    t0: Arc<std::sync::OnceLock<(Instant, SystemTime)>>,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<Outcome> {
    let qos = match a.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let pubid = format!("{}-{idx}", a.run_id);
    let mut o = MqttOptions::new(format!("{pubid}-c"), a.host.clone(), a.port);
    o.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_inflight(a.inflight)
        .set_max_packet_size(1 << 20, (a.size + 1024).max(1 << 20))
        .set_request_channel_capacity(4 * a.inflight as usize);
    let (client, mut el) = AsyncClient::new(o, 4 * a.inflight as usize);

    // Connect before the common start.
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => {
                // Still release the others waiting at the start line.
                start.wait().await;
                anyhow::bail!("publisher {idx}: cannot connect: {e}")
            }
        }
    }
    start.wait().await;
    let _ = t0.set((Instant::now(), SystemTime::now()));

    let topics: Vec<String> = (0..a.topics)
        .map(|t| format!("{}/{idx}/{t}", a.topic_prefix))
        .collect();
    let sender = {
        let a = a.clone();
        let client = client.clone();
        let per_pub = a.rate / a.publishers as f64;
        let began = tokio::time::Instant::now();
        tokio::spawn(async move {
            for seq in 0..count {
                // Pace every message (not in bursts): the latency benchmark needs an
                // even offered load.
                if per_pub > 0.0 {
                    let due = began + Duration::from_secs_f64(seq as f64 / per_pub);
                    if due > tokio::time::Instant::now() {
                        tokio::time::sleep_until(due).await;
                    }
                }
                // The checker's payload format (harness::payload), built without the
                // byte-by-byte loop, with the send time (Unix µs) as the first filler
                // field, for the latency meter (`latency`).
                let sent_us = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_micros() as u64)
                    .unwrap_or(0);
                let mut p = format!("{pubid}:{seq}:{sent_us}:").into_bytes();
                if p.len() < a.size {
                    p.resize(a.size, b'x');
                }
                let topic = topics[(seq % a.topics) as usize].clone();
                if client.publish(topic, qos, false, p).await.is_err() {
                    return false;
                }
            }
            true
        })
    };

    let mut out = Outcome::default();
    let deadline = tokio::time::Instant::now() + a.timeout;
    while out.acked < count {
        let ev = tokio::select! {
            ev = el.poll() => ev,
            _ = tokio::time::sleep_until(deadline) => {
                eprintln!("loadgen: publisher {idx}: timed out with {} of {count} acknowledged", out.acked);
                break;
            }
        };
        match ev {
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                out.sent += 1;
                if out.sent == count {
                    out.last_publish = Some(Instant::now());
                }
                if qos == QoS::AtMostOnce {
                    out.acked += 1;
                    progress.fetch_add(1, Relaxed);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => {
                out.acked += 1;
                progress.fetch_add(1, Relaxed);
            }
            Ok(Event::Incoming(Packet::PubComp(_))) if qos == QoS::ExactlyOnce => {
                out.acked += 1;
                progress.fetch_add(1, Relaxed);
            }
            Ok(_) => {}
            Err(e) => anyhow::bail!(
                "publisher {idx}: connection failed after {} acknowledged: {e}",
                out.acked
            ),
        }
    }
    out.last_ack = Some(Instant::now());
    sender.abort();
    let _ = client.try_disconnect();
    let bye = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        tokio::select! {
            ev = el.poll() => match ev {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(bye) => break,
        }
    }
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let a = Arc::new(parse_args());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let k = a.publishers as u64;
    let result = rt.block_on(async {
        let start = Arc::new(tokio::sync::Barrier::new(a.publishers));
        let t0: Arc<std::sync::OnceLock<(Instant, SystemTime)>> = Arc::default();
        let progress = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..a.publishers {
            let count = a.messages / k + u64::from((i as u64) < a.messages % k);
            tasks.push(tokio::spawn(publisher(
                a.clone(),
                i,
                count,
                start.clone(),
                t0.clone(),
                progress.clone(),
            )));
        }
        let reporter = {
            let progress = progress.clone();
            let t0 = t0.clone();
            tokio::spawn(async move {
                let mut last = 0u64;
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let n = progress.load(Relaxed);
                    let since = t0.get().map(|t| t.0.elapsed().as_secs_f64()).unwrap_or(0.0);
                    eprintln!(
                        "loadgen: t={since:.1}s acked={n} ({:.0} msg/s over the last 5s)",
                        (n - last) as f64 / 5.0
                    );
                    last = n;
                }
            })
        };
        let mut outcomes = Vec::new();
        let mut error = None;
        for t in tasks {
            match t.await {
                Ok(Ok(o)) => outcomes.push(o),
                Ok(Err(e)) => error = Some(e.to_string()),
                Err(e) => error = Some(format!("publisher task failed: {e}")),
            }
        }
        reporter.abort();
        (outcomes, error, t0.get().copied())
    });
    let (outcomes, error, t0) = result;
    if let Some(e) = &error {
        eprintln!("loadgen: {e}");
    }
    let Some((t0, t0_wall)) = t0 else {
        eprintln!("loadgen: never started publishing");
        return std::process::ExitCode::FAILURE;
    };
    let acked: u64 = outcomes.iter().map(|o| o.acked).sum();
    let sent: u64 = outcomes.iter().map(|o| o.sent).sum();
    let secs = |f: fn(&Outcome) -> Option<Instant>| {
        outcomes
            .iter()
            .filter_map(f)
            .max()
            .map(|t| t.duration_since(t0).as_secs_f64())
            .unwrap_or(0.0)
    };
    let publish_secs = secs(|o| o.last_publish);
    let acked_secs = secs(|o| o.last_ack);
    let rate = if acked_secs > 0.0 {
        acked as f64 / acked_secs
    } else {
        0.0
    };
    let line = serde_json::json!({
        "publishers": a.publishers,
        "messages": a.messages,
        "size": a.size,
        "qos": a.qos,
        "topics_per_publisher": a.topics,
        "inflight": a.inflight,
        "rate": a.rate,
        "run_id": a.run_id,
        "start_unix_ms": unix_ms(t0_wall),
        "sent": sent,
        "acked": acked,
        "publish_secs": (publish_secs * 1000.0).round() / 1000.0,
        "acked_secs": (acked_secs * 1000.0).round() / 1000.0,
        "acked_rate": rate.round(),
        "error": error,
    });
    println!("{line}");
    if error.is_some() || acked < a.messages {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
