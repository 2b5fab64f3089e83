//! Ingest and drain rates over the last 1 and 5 minutes, what they forecast (when the
//! backlog is empty, when ingest pauses for disk space), and the history the admin
//! API's `/history` serves for charts: every 5 s for an hour, every minute for a day.
//! In memory only: a restart starts them empty.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often [`sampler`] samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const RECENT: usize = 301;
const FINE_EVERY: Duration = Duration::from_secs(5);
const FINE_POINTS: usize = 720;
const COARSE_EVERY: Duration = Duration::from_secs(60);
const COARSE_POINTS: usize = 1440;
/// The net drain the time-to-empty is computed from: short, so that a burst taken in
/// during an outage does not hide the drain after it for a whole minute, and long
/// enough to smooth the producer's batches.
const ETA_WINDOW: Duration = Duration::from_secs(15);

/// One sample of the counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When (monotonic).
    pub at: Instant,
    /// When (Unix ms, for charts).
    pub unix_ms: u64,
    /// Records committed to the WAL so far (ingest).
    pub committed: u64,
    /// Records Kafka acknowledged so far (drain).
    pub forwarded: u64,
    /// Backlog records now.
    pub backlog_records: u64,
    /// Backlog bytes now.
    pub backlog_bytes: u64,
    /// Dead letters now.
    pub dead_letters: u64,
}

/// The samples and the history.
#[derive(Debug, Default)]
pub struct Rates {
    recent: VecDeque<Sample>,
    fine: VecDeque<admin::HistoryPoint>,
    coarse: VecDeque<admin::HistoryPoint>,
    last_fine: Option<Instant>,
    last_coarse: Option<Instant>,
}

impl Rates {
    /// Take a sample.
    pub fn record(&mut self, s: Sample) {
        self.recent.push_back(s);
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        let point = admin::HistoryPoint {
            unix_ms: s.unix_ms,
            backlog_records: s.backlog_records,
            backlog_bytes: s.backlog_bytes,
            dead_letters: s.dead_letters,
            ingest_rate: self.rate(|x| x.committed, Duration::from_secs(60)),
            drain_rate: self.rate(|x| x.forwarded, Duration::from_secs(60)),
        };
        if self
            .last_fine
            .is_none_or(|t| s.at.duration_since(t) >= FINE_EVERY)
        {
            self.fine.push_back(point.clone());
            if self.fine.len() > FINE_POINTS {
                self.fine.pop_front();
            }
            self.last_fine = Some(s.at);
        }
        if self
            .last_coarse
            .is_none_or(|t| s.at.duration_since(t) >= COARSE_EVERY)
        {
            self.coarse.push_back(point);
            if self.coarse.len() > COARSE_POINTS {
                self.coarse.pop_front();
            }
            self.last_coarse = Some(s.at);
        }
    }

    /// Per second over (up to) `window`, from the oldest sample in it to the newest;
    /// `None` before two samples a second apart.
    fn rate(&self, field: impl Fn(&Sample) -> u64, window: Duration) -> Option<f64> {
        let (first, last, secs) = self.window(window)?;
        Some(field(last).saturating_sub(field(first)) as f64 / secs)
    }

    /// The oldest and newest samples within `window`, and the seconds between them
    /// (at least one).
    fn window(&self, window: Duration) -> Option<(&Sample, &Sample, f64)> {
        let last = self.recent.back()?;
        let first = self
            .recent
            .iter()
            .find(|s| last.at.duration_since(s.at) <= window)?;
        let secs = last.at.duration_since(first.at).as_secs_f64();
        (secs >= 1.0).then_some((first, last, secs))
    }

    /// The rates and forecasts, given the backlog and the free space under the WAL now.
    pub fn view(&self, backlog: u64, disk_free: Option<u64>, min_free_space: u64) -> admin::Rates {
        let m1 = Duration::from_secs(60);
        let m5 = Duration::from_secs(300);
        let ingest_1m = self.rate(|s| s.committed, m1);
        let drain_1m = self.rate(|s| s.forwarded, m1);
        let eta_empty_seconds = match (
            self.rate(|s| s.committed, ETA_WINDOW),
            self.rate(|s| s.forwarded, ETA_WINDOW),
        ) {
            _ if backlog == 0 => Some(0.0),
            (Some(i), Some(d)) if d > i => Some(backlog as f64 / (d - i)),
            _ => None,
        };
        // Net growth of the backlog's bytes over the last minute.
        let growth = self.growth(m1);
        let headroom = disk_free.map(|f| f.saturating_sub(min_free_space));
        let eta_ingest_pause_seconds = match (headroom, growth) {
            (Some(h), Some(g)) if g > 0.0 => Some(h as f64 / g),
            _ => None,
        };
        admin::Rates {
            ingest_1m,
            ingest_5m: self.rate(|s| s.committed, m5),
            drain_1m,
            drain_5m: self.rate(|s| s.forwarded, m5),
            eta_empty_seconds,
            disk_free_bytes: disk_free,
            disk_headroom_bytes: headroom,
            backlog_growth_bytes_per_second: growth,
            eta_ingest_pause_seconds,
        }
    }

    fn growth(&self, window: Duration) -> Option<f64> {
        let (first, last, secs) = self.window(window)?;
        Some((last.backlog_bytes as f64 - first.backlog_bytes as f64) / secs)
    }

    /// The history for `/history`.
    pub fn history(&self) -> admin::History {
        admin::History {
            fine_seconds: FINE_EVERY.as_secs(),
            fine: self.fine.iter().cloned().collect(),
            coarse_seconds: COARSE_EVERY.as_secs(),
            coarse: self.coarse.iter().cloned().collect(),
        }
    }
}

/// Sample the counters every [`SAMPLE_EVERY`] until `stop`.
pub async fn sampler(
    shared: std::sync::Arc<crate::state::Shared>,
    wal: std::sync::Arc<wal::Wal>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let c = &shared.counters;
        let w = wal.stats();
        let s = Sample {
            at: Instant::now(),
            unix_ms: crate::state::unix_ms(),
            committed: c
                .wal_records_committed
                .load(std::sync::atomic::Ordering::Relaxed),
            forwarded: c
                .kafka_records_forwarded
                .load(std::sync::atomic::Ordering::Relaxed),
            backlog_records: w.records,
            backlog_bytes: w.bytes,
            dead_letters: w.dead_letters,
        };
        shared
            .rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t0: Instant, secs: u64, committed: u64, forwarded: u64, bytes: u64) -> Sample {
        Sample {
            at: t0 + Duration::from_secs(secs),
            unix_ms: 1_000_000 + secs * 1000,
            committed,
            forwarded,
            backlog_records: committed - forwarded,
            backlog_bytes: bytes,
            dead_letters: 0,
        }
    }

    #[test]
    fn rates_and_forecasts_follow_the_samples() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        assert_eq!(r.view(0, Some(10), 0).ingest_1m, None);
        // 100/s in, 50/s out for two minutes: the backlog grows, 1 KB/s.
        for s in 0..=120 {
            r.record(sample(t0, s, 100 * s, 50 * s, 1000 * s));
        }
        let v = r.view(6000, Some(1_000_000 + 64), 64);
        assert_eq!((v.ingest_1m, v.drain_1m), (Some(100.0), Some(50.0)));
        assert_eq!(v.ingest_5m, Some(100.0));
        assert_eq!(v.eta_empty_seconds, None, "growing: never empty");
        assert_eq!(v.disk_headroom_bytes, Some(1_000_000));
        assert_eq!(v.backlog_growth_bytes_per_second, Some(1000.0));
        assert_eq!(v.eta_ingest_pause_seconds, Some(1000.0));
        // Then Kafka drains at 300/s while 100/s still come, for 20 s.
        let (mut c, mut f) = (12_000, 6_000);
        for s in 121..=140 {
            c += 100;
            f += 300;
            r.record(sample(t0, s, c, f, 1000));
        }
        let v = r.view(c - f, None, 0);
        let (i, d) = (v.ingest_1m.unwrap(), v.drain_1m.unwrap());
        assert!(d > i, "draining: {d} > {i}");
        // The time to empty follows the last 15 s: 300/s out, 100/s in.
        assert_eq!(v.eta_empty_seconds, Some((c - f) as f64 / 200.0));
        assert_eq!(v.eta_ingest_pause_seconds, None);
        // The history: a point every 5 s (and the first), every minute coarse.
        let h = r.history();
        assert_eq!(h.fine.len(), 29);
        assert_eq!(h.coarse.len(), 3);
        assert_eq!(h.fine[1].unix_ms - h.fine[0].unix_ms, 5000);
    }

    #[test]
    fn an_empty_backlog_is_empty_now() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        r.record(sample(t0, 0, 0, 0, 0));
        assert_eq!(r.view(0, None, 0).eta_empty_seconds, Some(0.0));
        assert_eq!(r.view(5, None, 0).eta_empty_seconds, None);
    }
}
