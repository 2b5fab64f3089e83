//! Power loss: a storage backend that keeps written and synced bytes apart. At a "power
//! cut", everything never fsynced is lost, except a random subset of the unsynced
//! writes that reached the disk anyway (torn, out-of-order writes). A cut can also hit
//! in the middle of a commit (writes start failing). After reopening, every record whose
//! commit returned `Ok` with `Durability::Immediate` must be there, unchanged, unless
//! it was acknowledged (deleted) by a durable commit; sequences are never reused.
//!
//! It runs twice: with the commit journal (the default: the journal file and the redb
//! file are two disks of their own, cut at the same moment, with checkpoints every few
//! KiB so that cuts land before, during and after them) and without it.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use wal::{Durability, RecordRef, Wal, WalOptions, WriteBatch};

#[derive(Debug, Default)]
struct Disk {
    /// What the OS page cache holds (what reads see).
    volatile: Vec<u8>,
    /// What survived the last fsync.
    durable: Vec<u8>,
    /// Writes since the last fsync, in order.
    pending: Vec<(u64, Vec<u8>)>,
    /// After this many more writes, every write fails (power is going down).
    fail_after: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct PowerCutBackend(Arc<Mutex<Disk>>);

impl wal::Storage for PowerCutBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.0.lock().unwrap().volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let d = self.0.lock().unwrap();
        let start = offset as usize;
        let src = d
            .volatile
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read past end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut d = self.0.lock().unwrap();
        d.volatile.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut d = self.0.lock().unwrap();
        if d.fail_after == Some(0) {
            return Err(io::Error::other("power failing"));
        }
        d.durable = d.volatile.clone();
        d.pending.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut d = self.0.lock().unwrap();
        match &mut d.fail_after {
            Some(0) => return Err(io::Error::other("power failing")),
            Some(n) => *n -= 1,
            None => {}
        }
        let end = offset as usize + data.len();
        if d.volatile.len() < end {
            d.volatile.resize(end, 0);
        }
        d.volatile[offset as usize..end].copy_from_slice(data);
        d.pending.push((offset, data.to_vec()));
        Ok(())
    }
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

impl PowerCutBackend {
    /// Cut power: keep the durable image plus a random subset of unsynced writes.
    fn cut(&self, rng: &mut Rng) -> PowerCutBackend {
        let d = self.0.lock().unwrap();
        let mut image = d.durable.clone();
        for (offset, data) in &d.pending {
            if rng.below(3) == 0 {
                let end = *offset as usize + data.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                // Torn: maybe only a prefix of the write made it.
                let keep = if rng.below(2) == 0 {
                    data.len()
                } else {
                    rng.below(data.len() as u64 + 1) as usize
                };
                image[*offset as usize..*offset as usize + keep].copy_from_slice(&data[..keep]);
            }
        }
        PowerCutBackend(Arc::new(Mutex::new(Disk {
            volatile: image.clone(),
            durable: image,
            pending: Vec::new(),
            fail_after: None,
        })))
    }
}

fn payload_for(seq_hint: u64, rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(300) as usize;
    let mut p = format!("{seq_hint}:").into_bytes();
    p.extend((0..len).map(|i| (i as u8).wrapping_mul(31)));
    p
}

#[test]
fn acknowledged_records_survive_power_cuts() {
    for seed in 1..=40u64 {
        run_seed(seed, false);
    }
}

#[test]
fn acknowledged_records_survive_power_cuts_with_the_journal() {
    for seed in 1..=80u64 {
        run_seed(seed, true);
    }
}

fn run_seed(seed: u64, with_journal: bool) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut backend = PowerCutBackend::default();
    let mut journal = PowerCutBackend::default();
    let options = WalOptions {
        checkpoint_bytes: 1024 + rng.below(32 * 1024),
        ..WalOptions::default()
    };
    let seed = if with_journal {
        format!(
            "{seed} (journal, checkpoint every {} B)",
            options.checkpoint_bytes
        )
    } else {
        format!("{seed} (no journal)")
    };
    // Records whose durable commit returned Ok, by sequence.
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    // Highest prefix deleted by a commit that returned Ok (durable or not), and the
    // highest prefix whose delete is known durable.
    let mut ack_max = 0u64;
    let mut ack_durable = 0u64;
    let mut highest_seq_ever = 0u64;

    for _power_cycle in 0..4 {
        let opened = if with_journal {
            Wal::open_with_backends(
                backend.clone(),
                journal.clone(),
                "power-cut-test",
                options.clone(),
            )
        } else {
            Wal::open_with_backend(backend.clone(), "power-cut-test", options.clone())
        };
        let wal =
            opened.unwrap_or_else(|e| panic!("seed {seed}: reopen after power cut failed: {e}"));
        // Check the promise.
        let present: BTreeMap<u64, Vec<u8>> = wal
            .read_from(0, usize::MAX, usize::MAX)
            .unwrap_or_else(|e| panic!("seed {seed}: read after power cut: {e}"))
            .into_iter()
            .map(|r| (r.seq, r.payload))
            .collect();
        for (seq, payload) in acked.range(ack_max + 1..) {
            assert_eq!(
                present.get(seq),
                Some(payload),
                "seed {seed}: acknowledged record {seq} lost or changed after power cut"
            );
        }
        if let Some((seq, _)) = present.range(..=ack_durable).next() {
            panic!("seed {seed}: record {seq} came back after a durable delete");
        }
        for seq in present.keys() {
            assert!(*seq <= highest_seq_ever.max(*seq), "seed {seed}");
        }
        let stats = wal.stats();
        assert_eq!(
            stats.records,
            present.len() as u64,
            "seed {seed}: counter drift"
        );
        assert!(
            stats.next_seq > acked.keys().next_back().copied().unwrap_or(0),
            "seed {seed}: sequence would be reused"
        );
        // Non-durable deletes may have been lost: those records are unacknowledged again.
        acked.retain(|s, _| present.contains_key(s));
        ack_max = ack_durable;
        highest_seq_ever = highest_seq_ever.max(stats.next_seq - 1);

        // Work until power fails.
        let ops = 1 + rng.below(12);
        for op in 0..ops {
            let cut_mid_commit = op == ops - 1 && rng.below(2) == 0;
            if cut_mid_commit {
                backend.0.lock().unwrap().fail_after = Some(rng.below(20));
                journal.0.lock().unwrap().fail_after = Some(rng.below(4));
            }
            if rng.below(4) == 0 && !acked.is_empty() {
                // Acknowledge a prefix, non-durably or durably.
                let upto = *acked
                    .keys()
                    .nth(rng.below(acked.len() as u64) as usize)
                    .unwrap();
                let durability = if rng.below(2) == 0 {
                    Durability::None
                } else {
                    Durability::Immediate
                };
                let durable = matches!(durability, Durability::Immediate);
                if wal.ack_up_to(upto, durability).is_ok() {
                    ack_max = ack_max.max(upto);
                    if durable {
                        ack_durable = ack_max;
                    }
                }
            } else {
                let n = 1 + rng.below(50);
                let next = wal.stats().next_seq;
                let payloads: Vec<Vec<u8>> =
                    (0..n).map(|i| payload_for(next + i, &mut rng)).collect();
                let mut batch = WriteBatch::new();
                for p in &payloads {
                    batch.append(RecordRef {
                        topic: "dev/1",
                        payload: p,
                        qos: 1,
                        retain: false,
                        dup: false,
                        receive_time_ms: 0,
                    });
                }
                if let Ok(out) = wal.commit(&batch, Durability::Immediate) {
                    let first = out.first_appended.unwrap();
                    assert!(
                        first > highest_seq_ever,
                        "seed {seed}: sequence {first} reused"
                    );
                    for (i, p) in payloads.into_iter().enumerate() {
                        acked.insert(first + i as u64, p);
                    }
                    highest_seq_ever = first + n - 1;
                    // A durable commit also makes earlier non-durable deletes durable.
                    ack_durable = ack_max;
                }
            }
            if cut_mid_commit {
                break;
            }
        }
        drop(wal);
        backend = backend.cut(&mut rng);
        journal = journal.cut(&mut rng);
    }
}
