//! Micro-benchmarks of the WAL: `cargo bench -p mkg-wal` (see docs/BENCHMARKS.md).
//!
//! * `append_batch/{durable,none}/N`: one commit appending N records of 256-byte
//!   payloads (the gateway's group commit). `durable` is `Durability::Immediate`
//!   (fsync: measures the disk as much as redb), `none` is redb's own CPU cost.
//! * `read_range/N`: visit N records from the middle of a 100,000-record log
//!   (`for_each_from`, what the forwarder does) and the owned copy (`read_from`).
//! * `ack_prefix/{durable,none}/N`: delete the oldest N records of the log in one
//!   commit (`ack_up_to`), refilling the log between samples.
//!
//! The WAL lives in a temp dir under `$MKG_BENCH_DIR` (default: the system temp dir),
//! so the disk under test can be chosen.

use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wal::{Durability, RecordRef, Wal, WalOptions, WriteBatch};

const PAYLOAD: usize = 256;
const TOPIC: &str = "load/dev/0/3";

fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("MKG_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("temp dir in MKG_BENCH_DIR"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut p = format!("bench-0:{i}:").into_bytes();
            p.resize(PAYLOAD, b'x');
            p
        })
        .collect()
}

fn batch(payloads: &[Vec<u8>]) -> WriteBatch<'_> {
    let mut b = WriteBatch::new();
    for p in payloads {
        b.append(RecordRef {
            topic: TOPIC,
            payload: p,
            qos: 1,
            retain: false,
            dup: false,
            receive_time_ms: 1_700_000_000_000,
        });
    }
    b
}

fn durability(name: &str) -> Durability {
    if name == "durable" {
        Durability::Immediate
    } else {
        Durability::None
    }
}

/// Fill `wal` with `n` records in commits of 10,000 (not durable, then one sync).
fn fill(wal: &Wal, n: usize) {
    let p = payloads(10_000);
    let mut left = n;
    while left > 0 {
        let k = left.min(p.len());
        wal.commit(&batch(&p[..k]), Durability::None)
            .expect("fill commit");
        left -= k;
    }
    wal.sync().expect("sync");
}

fn append_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_batch");
    for mode in ["durable", "none"] {
        for n in [1usize, 10, 100, 1000] {
            let dir = tempdir();
            let wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
            let p = payloads(n);
            let b = batch(&p);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(mode, n), &n, |bench, _| {
                bench.iter(|| {
                    wal.commit(&b, durability(mode)).expect("commit");
                    // Keep the log short so every sample appends to a similar tree.
                    if wal.stats().records > 200_000 {
                        let s = wal.stats();
                        wal.ack_up_to(s.newest_seq.unwrap_or(0), Durability::None)
                            .expect("trim");
                    }
                })
            });
        }
    }
    g.finish();
}

fn read_range(c: &mut Criterion) {
    let dir = tempdir();
    let wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    fill(&wal, 100_000);
    let from = wal.stats().oldest_seq.expect("records") + 50_000;
    let mut g = c.benchmark_group("read_range");
    for n in [100usize, 2048, 10_000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("for_each_from", n), &n, |bench, &n| {
            bench.iter(|| {
                let mut bytes = 0usize;
                let visited = wal
                    .for_each_from(from, n, usize::MAX, |seq, r| {
                        bytes += r.payload.len() + seq as usize % 2;
                        ControlFlow::Continue(())
                    })
                    .expect("read");
                assert_eq!(visited, n);
                black_box(bytes)
            })
        });
        g.bench_with_input(BenchmarkId::new("read_from", n), &n, |bench, &n| {
            bench.iter(|| black_box(wal.read_from(from, n, usize::MAX).expect("read")))
        });
    }
    g.finish();
}

fn ack_prefix(c: &mut Criterion) {
    let mut g = c.benchmark_group("ack_prefix");
    for mode in ["durable", "none"] {
        for n in [100usize, 2048, 20_000] {
            let dir = tempdir();
            let wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
            fill(&wal, 100_000);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(mode, n), &n, |bench, &n| {
                // Time only the delete; refill outside the measurement when it runs low.
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        if wal.stats().records < 50_000 {
                            fill(&wal, 100_000);
                        }
                        let oldest = wal.stats().oldest_seq.expect("records");
                        let t = Instant::now();
                        let freed = wal
                            .ack_up_to(oldest + n as u64 - 1, durability(mode))
                            .expect("ack");
                        total += t.elapsed();
                        assert_eq!(freed, n as u64);
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = append_batch, read_range, ack_prefix
}
criterion_main!(benches);
