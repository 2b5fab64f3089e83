//! Bounds on the WAL besides the disk: a cap (`wal.max_bytes`, `wal.max_records`)
//! with a policy when it is reached (`wal.on_full`), and an age limit (`wal.max_age`)
//! with what happens to older records (`wal.on_expired`).
//!
//! `block` (the default) keeps today's behaviour: at the cap, MQTT messages are not
//! acknowledged (Mosquitto keeps them) until Kafka drains the backlog. `drop_oldest`
//! makes room by dropping the oldest records in the same transaction as the appends
//! that need it. Expired records are dropped or moved to the dead-letter table. Every
//! drop goes through `wal::WriteBatch::drop_up_to`, counted by reason in the WAL's
//! durable counters, shown in `/backlog`, `/status` and `/metrics`, and logged with its
//! sequence range ([`DropLog`], at most one line per reason every 10 s). A record
//! already handed to the producer when it is dropped may still reach Kafka.
//!
//! All of it runs on the WAL thread, the only writer; the reads that find how far to
//! drop look at the oldest records only.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde::Deserialize;
use wal::{DropReason, Wal};

/// What to do when the cap is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Stop acknowledging MQTT until Kafka drains the backlog (Mosquitto keeps the
    /// messages, up to its own `max_queued_messages`).
    #[default]
    Block,
    /// Drop the oldest records to make room, counted and logged.
    DropOldest,
}

/// What happens to records older than `wal.max_age`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExpired {
    /// Move them to the dead-letter table (kept, visible, not forwarded).
    #[default]
    DeadLetter,
    /// Drop them, counted and logged.
    Drop,
}

/// The configured bounds.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Most encoded bytes in the backlog.
    pub max_bytes: Option<u64>,
    /// Most records in the backlog.
    pub max_records: Option<u64>,
    /// At the cap.
    pub on_full: OnFull,
    /// Oldest receive time kept in the backlog.
    pub max_age: Option<Duration>,
    /// Past it.
    pub on_expired: OnExpired,
    /// Most encoded bytes in the dead-letter table; past it the oldest are dropped.
    pub dead_letters_max_bytes: Option<u64>,
}

/// Most records one drop or expiry pass looks at.
const SCAN_LIMIT: usize = 100_000;

/// Encoded size of a record, as the WAL counts it.
fn encoded(topic: &str, payload: &[u8]) -> u64 {
    (13 + topic.len() + payload.len()) as u64
}

/// Records to drop: every one up to `up_to`, `records` of them, for `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drop {
    /// Last sequence dropped.
    pub up_to: u64,
    /// First sequence dropped.
    pub from: u64,
    /// How many.
    pub records: u64,
    /// Why.
    pub reason: DropReason,
}

/// Records past the age limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// Drop them.
    Drop(Drop),
    /// Move these to the dead-letter table.
    DeadLetter(Vec<u64>),
}

impl Limits {
    /// True when a cap is set.
    pub fn capped(&self) -> bool {
        self.max_bytes.is_some() || self.max_records.is_some()
    }

    /// How far over the caps the WAL would be after appending `n` records of `bytes`:
    /// (records, bytes, the reason of the first cap passed).
    fn over(&self, wal: &Wal, n: u64, bytes: u64) -> Option<(u64, u64, DropReason)> {
        let s = wal.stats();
        let over_bytes = self
            .max_bytes
            .map_or(0, |m| (s.bytes + bytes).saturating_sub(m));
        let over_records = self
            .max_records
            .map_or(0, |m| (s.records + n).saturating_sub(m));
        let reason = if over_bytes > 0 {
            DropReason::MaxBytes
        } else {
            DropReason::MaxRecords
        };
        (over_bytes > 0 || over_records > 0).then_some((over_records, over_bytes, reason))
    }

    /// With `on_full = block`: why appending `n` records of `bytes` must wait, if it
    /// must.
    pub fn blocks(&self, wal: &Wal, n: u64, bytes: u64) -> Option<String> {
        if self.on_full != OnFull::Block {
            return None;
        }
        let (_, _, reason) = self.over(wal, n, bytes)?;
        let s = wal.stats();
        Some(match reason {
            DropReason::MaxBytes => format!(
                "WAL full: wal.max_bytes ({}) reached with {} bytes in the backlog (wal.on_full = block); waiting for Kafka to drain it",
                self.max_bytes.unwrap_or(0),
                s.bytes
            ),
            _ => format!(
                "WAL full: wal.max_records ({}) reached with {} records in the backlog (wal.on_full = block); waiting for Kafka to drain it",
                self.max_records.unwrap_or(0),
                s.records
            ),
        })
    }

    /// With `on_full = drop_oldest`: the oldest records to drop so that `n` more
    /// records of `bytes` fit, if any must go. Never more than the backlog holds: a
    /// batch larger than the cap on its own is committed whole.
    pub fn make_room(&self, wal: &Wal, n: u64, bytes: u64) -> Option<Drop> {
        if self.on_full != OnFull::DropOldest {
            return None;
        }
        let (over_records, over_bytes, reason) = self.over(wal, n, bytes)?;
        let (mut records, mut freed) = (0u64, 0u64);
        let (mut from, mut up_to) = (None, 0);
        let _ = wal.for_each_from(0, SCAN_LIMIT, usize::MAX, |seq, rec| {
            if records >= over_records && freed >= over_bytes {
                return ControlFlow::Break(());
            }
            from.get_or_insert(seq);
            up_to = seq;
            records += 1;
            freed += encoded(rec.topic, rec.payload);
            ControlFlow::Continue(())
        });
        Some(Drop {
            up_to,
            from: from?,
            records,
            reason,
        })
    }

    /// The records older than `wal.max_age` at `now_ms` (Unix ms), oldest first, at
    /// most [`SCAN_LIMIT`] of them.
    pub fn expired(&self, wal: &Wal, now_ms: u64) -> Option<Expired> {
        let max_age = self.max_age?.as_millis() as u64;
        let cutoff = now_ms.checked_sub(max_age)?;
        if wal.stats().oldest_receive_time_ms? >= cutoff {
            return None;
        }
        let mut seqs = Vec::new();
        let _ = wal.for_each_from(0, SCAN_LIMIT, usize::MAX, |seq, rec| {
            // Receive times follow the sequence except across a clock step: stop at
            // the first record young enough.
            if rec.receive_time_ms >= cutoff {
                return ControlFlow::Break(());
            }
            seqs.push(seq);
            ControlFlow::Continue(())
        });
        let (first, last) = (*seqs.first()?, *seqs.last()?);
        Some(match self.on_expired {
            OnExpired::DeadLetter => Expired::DeadLetter(seqs),
            OnExpired::Drop => Expired::Drop(Drop {
                up_to: last,
                from: first,
                records: seqs.len() as u64,
                reason: DropReason::MaxAge,
            }),
        })
    }
}

impl Limits {
    /// The oldest dead letters to drop so that the table is back under
    /// `dead_letters.max_bytes` (at most [`SCAN_LIMIT`] per call), by sequence.
    pub fn dead_letters_over_cap(&self, wal: &Wal) -> Option<Vec<u64>> {
        let cap = self.dead_letters_max_bytes?;
        let mut excess = wal.stats().dead_letter_bytes.checked_sub(cap)?;
        let mut seqs = Vec::new();
        let mut from = 0;
        while excess > 0 && seqs.len() < SCAN_LIMIT {
            let page = wal.dead_letters(from, 1000).ok()?;
            let Some(last) = page.last() else { break };
            from = last.record.seq + 1;
            for dl in &page {
                if excess == 0 {
                    break;
                }
                seqs.push(dl.record.seq);
                excess = excess.saturating_sub(dl.encoded_len);
            }
        }
        (!seqs.is_empty()).then_some(seqs)
    }
}

/// Logs drops with their sequence ranges, at most one line per reason every
/// [`DropLog::EVERY`].
#[derive(Debug, Default)]
pub struct DropLog {
    /// Per reason: first and last sequence, records, not logged yet.
    pending: BTreeMap<u16, (u64, u64, u64)>,
    last: BTreeMap<u16, Instant>,
}

impl DropLog {
    /// Least time between two lines for one reason.
    pub const EVERY: Duration = Duration::from_secs(10);

    /// Key of records moved to the dead-letter table for their age.
    const EXPIRED: u16 = 0;
    /// Key of dead letters dropped for `dead_letters.max_bytes`.
    const DEAD_OVER_CAP: u16 = 100;

    /// `n` dead letters `from..=to` were dropped to stay under `dead_letters.max_bytes`.
    pub fn dead_letters_dropped(&mut self, from: u64, to: u64, n: u64, limits: &Limits) {
        self.note(Self::DEAD_OVER_CAP, from, to, n, limits);
    }

    /// `d` was committed.
    pub fn dropped(&mut self, d: &Drop, limits: &Limits) {
        self.note(d.reason as u16, d.from, d.up_to, d.records, limits);
    }

    /// `n` records `from..=to` were moved to the dead-letter table for their age.
    pub fn expired(&mut self, from: u64, to: u64, n: u64, limits: &Limits) {
        self.note(Self::EXPIRED, from, to, n, limits);
    }

    fn note(&mut self, key: u16, from: u64, to: u64, n: u64, limits: &Limits) {
        let e = self.pending.entry(key).or_insert((from, to, 0));
        e.0 = e.0.min(from);
        e.1 = e.1.max(to);
        e.2 += n;
        self.flush(limits, false);
    }

    /// Log what is pending and due (everything with `force`).
    pub fn flush(&mut self, limits: &Limits, force: bool) {
        let now = Instant::now();
        let due: Vec<u16> = self
            .pending
            .keys()
            .copied()
            .filter(|r| force || self.last.get(r).is_none_or(|t| now - *t >= Self::EVERY))
            .collect();
        for r in due {
            let Some((from, to, n)) = self.pending.remove(&r) else {
                continue;
            };
            self.last.insert(r, now);
            if r == Self::EXPIRED {
                tracing::warn!(
                    records = n,
                    seqs = %format!("{from}..={to}"),
                    "moved records older than wal.max_age ({}) to the dead-letter table (wal.on_expired = dead_letter); they are not forwarded",
                    humantime::format_duration(limits.max_age.unwrap_or_default())
                );
                continue;
            }
            if r == Self::DEAD_OVER_CAP {
                tracing::warn!(
                    dead_letters = n,
                    seqs = %format!("{from}..={to}"),
                    "dropped the oldest dead letters for good: dead_letters.max_bytes ({}) reached (counted in /backlog dead_letters.dropped)",
                    limits.dead_letters_max_bytes.unwrap_or(0)
                );
                continue;
            }
            let why = match r {
                1 => format!(
                    "wal.max_bytes ({}) reached with wal.on_full = drop_oldest",
                    limits.max_bytes.unwrap_or(0)
                ),
                2 => format!(
                    "wal.max_records ({}) reached with wal.on_full = drop_oldest",
                    limits.max_records.unwrap_or(0)
                ),
                _ => format!(
                    "older than wal.max_age ({}) with wal.on_expired = drop",
                    humantime::format_duration(limits.max_age.unwrap_or_default())
                ),
            };
            tracing::warn!(
                records = n,
                seqs = %format!("{from}..={to}"),
                "dropped records from the WAL that never reached Kafka: {why} (counted in /backlog dropped)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wal::{Durability, RecordRef, WalOptions, WriteBatch};

    fn wal_with(n: usize, payload: usize, time: impl Fn(usize) -> u64) -> (tempfile::TempDir, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let body = vec![0u8; payload];
        for i in 0..n {
            wal.append(&[RecordRef {
                topic: "t",
                payload: &body,
                qos: 1,
                retain: false,
                dup: false,
                receive_time_ms: time(i),
            }])
            .unwrap();
        }
        (dir, wal)
    }

    #[test]
    fn the_oldest_records_make_room_for_the_new_ones() {
        // 10 records of 100 bytes (114 encoded).
        let (_d, wal) = wal_with(10, 100, |_| 0);
        let limits = Limits {
            max_bytes: Some(1140),
            on_full: OnFull::DropOldest,
            ..Limits::default()
        };
        assert_eq!(limits.make_room(&wal, 0, 0), None);
        let d = limits.make_room(&wal, 2, 228).unwrap();
        assert_eq!(
            (d.from, d.up_to, d.records, d.reason),
            (1, 2, 2, DropReason::MaxBytes)
        );
        let by_count = Limits {
            max_records: Some(8),
            on_full: OnFull::DropOldest,
            ..Limits::default()
        };
        let d = by_count.make_room(&wal, 3, 0).unwrap();
        assert_eq!(
            (d.up_to, d.records, d.reason),
            (5, 5, DropReason::MaxRecords)
        );
        // Blocking instead: a reason, no drop.
        let block = Limits {
            on_full: OnFull::Block,
            ..by_count.clone()
        };
        assert!(block.make_room(&wal, 3, 0).is_none());
        assert!(block
            .blocks(&wal, 3, 0)
            .unwrap()
            .contains("wal.max_records (8)"));
        let roomy = Limits {
            max_records: Some(20),
            ..block.clone()
        };
        assert!(roomy.blocks(&wal, 10, 0).is_none());
        assert!(roomy.blocks(&wal, 11, 0).is_some());
        // Committed, it is counted.
        let mut b = WriteBatch::new();
        b.drop_up_to(d.up_to, d.reason);
        wal.commit(&b, Durability::Immediate).unwrap();
        assert_eq!(wal.stats().dropped.max_records, 5);
    }

    #[test]
    fn records_past_the_age_limit_expire_oldest_first() {
        // Receive times 1,000 ms apart; a clock step back at the 7th.
        let (_d, wal) = wal_with(10, 10, |i| if i == 6 { 0 } else { 1_000 * i as u64 });
        let limits = Limits {
            max_age: Some(Duration::from_secs(5)),
            on_expired: OnExpired::DeadLetter,
            ..Limits::default()
        };
        assert_eq!(limits.expired(&wal, 5_000), None);
        assert_eq!(
            limits.expired(&wal, 8_500),
            Some(Expired::DeadLetter(vec![1, 2, 3, 4]))
        );
        let drop = Limits {
            on_expired: OnExpired::Drop,
            ..limits
        };
        match drop.expired(&wal, 20_000) {
            Some(Expired::Drop(d)) => assert_eq!((d.from, d.up_to, d.records), (1, 10, 10)),
            other => panic!("{other:?}"),
        }
    }
}
