//! Build a WAL backlog directly through the `wal` crate, for the benchmarks
//! (`cargo xtask bench`): publishing 10M messages through MQTT takes minutes, this takes
//! seconds and writes the same records the gateway writes (same `Wal::commit`, same
//! format: topic, payload, QoS 1, receive time).
//!
//! ```text
//! walfill --dir WAL_DIR --records N [--size 256] [--publishers 4] [--topics 8]
//!         [--topic-prefix load/dev] [--run-id RUN] [--batch 10000]
//! ```
//!
//! Payloads are the checker's format, `RUN-I:SEQ:MICROS:xxx...` (as `loadgen` sends
//! them), spread round robin over publishers I and topics `PREFIX/I/T`. Commits are
//! not durable except the last (`Wal::sync`). Prints one JSON line with the WAL stats
//! and the time it took.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wal::{Durability, RecordRef, Wal, WalOptions, WriteBatch};

fn usage() -> ! {
    eprintln!(
        "usage: walfill --dir WAL_DIR --records N [--size BYTES] [--publishers K] [--topics T] \
         [--topic-prefix PREFIX] [--run-id RUN] [--batch B]"
    );
    std::process::exit(2);
}

fn main() -> anyhow::Result<()> {
    let (mut dir, mut n, mut size, mut pubs, mut topics, mut prefix, mut run, mut batch) = (
        String::new(),
        0u64,
        256usize,
        4u64,
        8u64,
        "load/dev".to_string(),
        "fill".to_string(),
        10_000usize,
    );
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        let num = |v: &str| {
            v.replace('_', "")
                .parse::<u64>()
                .unwrap_or_else(|_| usage())
        };
        match flag.as_str() {
            "--dir" => dir = v,
            "--records" => n = num(&v),
            "--size" => size = num(&v) as usize,
            "--publishers" => pubs = num(&v).max(1),
            "--topics" => topics = num(&v).max(1),
            "--topic-prefix" => prefix = v,
            "--run-id" => run = v,
            "--batch" => batch = num(&v).max(1) as usize,
            _ => usage(),
        }
    }
    if dir.is_empty() || n == 0 {
        usage();
    }
    let t0 = Instant::now();
    let wal = Wal::open(&dir, WalOptions::default())?;
    let names: Vec<Vec<String>> = (0..pubs)
        .map(|i| (0..topics).map(|t| format!("{prefix}/{i}/{t}")).collect())
        .collect();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let mut done = 0u64;
    let mut payloads: Vec<(usize, usize, Vec<u8>)> = Vec::with_capacity(batch);
    while done < n {
        payloads.clear();
        let k = (n - done).min(batch as u64);
        for j in 0..k {
            let g = done + j;
            let (i, seq) = (g % pubs, g / pubs);
            let mut p = format!("{run}-{i}:{seq}:{}:", now_ms * 1000).into_bytes();
            p.resize(size.max(p.len()), b'x');
            payloads.push((i as usize, (seq % topics) as usize, p));
        }
        let mut b = WriteBatch::new();
        for (i, t, p) in &payloads {
            b.append(RecordRef {
                topic: &names[*i][*t],
                payload: p,
                qos: 1,
                retain: false,
                dup: false,
                receive_time_ms: now_ms,
            });
        }
        wal.commit(&b, Durability::None)?;
        done += k;
    }
    // Like the gateway's clean stop: everything in redb, the journal empty.
    wal.checkpoint()?;
    let s = wal.stats();
    let file = std::fs::metadata(wal.path())?.len();
    println!(
        "{}",
        serde_json::json!({
            "records": s.records,
            "bytes": s.bytes,
            "file_bytes": file,
            "next_seq": s.next_seq,
            "secs": (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
