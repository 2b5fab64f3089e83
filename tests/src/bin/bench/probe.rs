//! What the bench reads from the system and the gateway: CPU ticks, memory and disk
//! writes from `/proc`, and the gateway's `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The Kafka JVM's GC log (`-Xlog:gc:file=...`): the pauses logged after a mark, so a
/// latency run shows whether the broker stopped during it.
#[derive(Debug, Clone)]
pub struct GcLog(pub PathBuf);

impl GcLog {
    /// The current end of the log.
    pub fn mark(&self) -> u64 {
        std::fs::metadata(&self.0).map_or(0, |m| m.len())
    }

    /// The pauses logged since `from` (a [`GcLog::mark`]): count, longest and total ms.
    pub fn pauses_since(&self, from: u64) -> serde_json::Value {
        let text = std::fs::read(&self.0).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
        gc_pauses(&text)
    }
}

/// Count the stop-the-world pauses in `-Xlog:gc` lines (`... Pause Young ... 12.345ms`;
/// a collector's concurrent phases are not pauses).
fn gc_pauses(text: &str) -> serde_json::Value {
    let ms: Vec<f64> = text
        .lines()
        .filter(|l| l.contains(" Pause "))
        .filter_map(|l| l.rsplit(' ').next()?.strip_suffix("ms")?.parse().ok())
        .collect();
    let max = ms.iter().copied().fold(0.0, f64::max);
    serde_json::json!({
        "pauses": ms.len(),
        "max_ms": (max * 100.0).round() / 100.0,
        "total_ms": (ms.iter().sum::<f64>() * 10.0).round() / 10.0,
    })
}

/// Clock ticks per second of the `/proc` CPU times.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The fields of a `/proc/.../stat` line after the command name, and the name.
fn stat_fields(text: &str) -> Option<(String, Vec<u64>)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].replace(' ', "_");
    // Field 3 (state) is a letter; keep its position with a 0.
    let fields = text[close + 2..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Some((name, fields))
}

/// User + system CPU ticks of a process (or thread, with its `task/N/stat` path).
fn ticks_of(stat: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(stat).ok()?;
    let (name, f) = stat_fields(&text)?;
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some((name, f.get(11)? + f.get(12)?))
}

/// User + system CPU ticks of process `pid` (0 once it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    ticks_of(Path::new(&format!("/proc/{pid}/stat"))).map_or(0, |(_, t)| t)
}

/// CPU ticks per thread name (threads of the same name summed).
pub fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Some((name, ticks)) = ticks_of(&t.path().join("stat")) {
            *out.entry(name).or_insert(0) += ticks;
        }
    }
    out
}

/// "thread us/msg, ..." between two [`thread_ticks`] snapshots, for `n` messages.
pub fn threads_per_msg(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    n: u64,
    hz: f64,
) -> String {
    after
        .iter()
        .filter_map(|(name, t)| {
            let d = t.saturating_sub(before.get(name).copied().unwrap_or(0)) as f64;
            let us = d * 1e6 / hz / n as f64;
            (us > 0.0).then(|| format!("{name} {us:.1}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The number of a `KEY: N kB` line (`/proc/PID/status`, `/proc/meminfo`); 0 if absent.
fn kb_line(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    kb_line(&status, key)
}

/// Data in the page cache not yet on disk, kB (`Dirty` + `Writeback` of `/proc/meminfo`).
pub fn dirty_kb() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    kb_line(&meminfo, "Dirty") + kb_line(&meminfo, "Writeback")
}

/// Reset the peak RSS (`VmHWM`) of `pid`.
pub fn reset_hwm(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Bytes `pid` caused to be written to storage (`write_bytes` of `/proc/PID/io`).
pub fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("write_bytes:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Idle + iowait ticks of the whole machine (`/proc/stat`).
pub fn idle_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let cpu = s.lines().find(|l| l.starts_with("cpu "))?;
            let f: Vec<u64> = cpu
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            Some(f.get(3)? + f.get(4)?)
        })
        .unwrap_or(0)
}

/// Microseconds of one 4 KiB write + fdatasync in `dir` (the mean of 300).
pub fn fsync_us(dir: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let path = dir.join(".probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let t = std::time::Instant::now();
    for _ in 0..300 {
        f.write_all(&block)?;
        f.sync_data()?;
    }
    let us = t.elapsed().as_micros() as u64 / 300;
    std::fs::remove_file(&path)?;
    Ok(us)
}

/// One scrape of the gateway's `/metrics`: value by series (name with its labels).
#[derive(Debug, Default, Clone)]
pub struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    /// Scrape `admin`; empty if it does not answer.
    pub fn scrape(admin: SocketAddr) -> Self {
        let Ok((200, body)) = harness::http_get(admin, "/metrics") else {
            return Self::default();
        };
        Self(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (name, v) = l.rsplit_once(' ')?;
                    Some((name.to_string(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// A series' value, 0 if absent.
    pub fn get(&self, series: &str) -> u64 {
        self.0.get(series).copied().unwrap_or(0.0) as u64
    }

    /// A histogram family's cumulative counts by upper bound, ascending (`+Inf` last).
    fn buckets(&self, family: &str) -> Vec<(f64, u64)> {
        let prefix = format!("{family}_bucket{{le=\"");
        let mut v: Vec<(f64, u64)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, *v as u64))
            })
            .collect();
        v.sort_by(|x, y| x.0.total_cmp(&y.0));
        v
    }
}

/// What histogram `family` gained between two scrapes: cumulative counts by upper
/// bound, ascending.
pub fn hist_delta(before: &Metrics, after: &Metrics, family: &str) -> Vec<(f64, u64)> {
    let a = before.buckets(family);
    after
        .buckets(family)
        .into_iter()
        .map(|(le, n)| {
            let was = a.iter().find(|x| x.0 == le).map_or(0, |x| x.1);
            (le, n.saturating_sub(was))
        })
        .collect()
}

/// Quantile `q` of a histogram delta in ms, interpolated linearly inside its bucket
/// (Prometheus' `histogram_quantile`); the highest finite bound when it falls in
/// `+Inf`; None without observations.
pub fn hist_quantile(d: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = d.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(le, n) in d {
        if n as f64 >= rank {
            if le.is_infinite() {
                return Some(lower * 1000.0);
            }
            let share = (rank - below as f64) / (n - below).max(1) as f64;
            return Some((lower + (le - lower) * share) * 1000.0);
        }
        (lower, below) = (le, n);
    }
    Some(lower * 1000.0)
}

/// The upper bound (ms) of the highest bucket with an observation: "every one took at
/// most this" (`+Inf` as infinity).
fn hist_max_ms(d: &[(f64, u64)]) -> Option<f64> {
    let total = d.last()?.1;
    if total == 0 {
        return None;
    }
    d.iter().find(|x| x.1 == total).map(|x| x.0 * 1000.0)
}

/// What changed in the commit-duration histogram between two scrapes: commits, their
/// p99 and the share over 20 ms.
pub fn commit_times(before: &Metrics, after: &Metrics) -> String {
    let d = hist_delta(before, after, "mkg_wal_commit_duration_seconds");
    let total = d.last().map_or(0, |x| x.1);
    let under_20ms = d.iter().find(|x| x.0 == 0.02).map_or(0, |x| x.1);
    let over = total - under_20ms.min(total);
    format!(
        "{} durable commits, p99 {} ms, {} ({:.1}%) over 20 ms",
        crate::report::thousands(total),
        crate::round2(hist_quantile(&d, 0.99).unwrap_or(0.0)),
        crate::report::thousands(over),
        100.0 * over as f64 / total.max(1) as f64
    )
}

/// Where the gateway's time went between two scrapes, from its histograms: each stage
/// counted from a record's receipt (durable in the WAL, handed to the producer,
/// acknowledged by Kafka) as p50 / p99 / p99.9 in ms, and the WAL's checkpoints
/// (count, the bound of the slowest) and durable commits (p99).
pub fn stages(before: &Metrics, after: &Metrics) -> serde_json::Value {
    let q = |family: &str| {
        let d = hist_delta(before, after, family);
        let at = |x: f64| hist_quantile(&d, x).map(crate::round2);
        serde_json::json!({
            "records": d.last().map_or(0, |x| x.1),
            "p50_ms": at(0.50),
            "p99_ms": at(0.99),
            "p999_ms": at(0.999),
        })
    };
    let ckpt = hist_delta(before, after, "mkg_wal_checkpoint_duration_seconds");
    let commits = hist_delta(before, after, "mkg_wal_commit_duration_seconds");
    serde_json::json!({
        "durable": q("mkg_record_durable_latency_seconds"),
        "produced": q("mkg_record_produce_latency_seconds"),
        "delivered": q("mkg_record_delivery_latency_seconds"),
        "checkpoints": ckpt.last().map_or(0, |x| x.1),
        "checkpoint_max_ms": hist_max_ms(&ckpt),
        "commit_p99_ms": hist_quantile(&commits, 0.99).map(crate::round2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kb_lines_match_the_whole_key() {
        let meminfo =
            "MemFree:  100 kB\nDirty:        652 kB\nWritebackTmp:   9 kB\nWriteback:    14 kB\n";
        assert_eq!(kb_line(meminfo, "Dirty"), 652);
        assert_eq!(kb_line(meminfo, "Writeback"), 14);
        assert_eq!(kb_line(meminfo, "VmHWM"), 0);
    }

    #[test]
    fn gc_pauses_count_stop_the_world_lines_only() {
        let log = "\
[0.006s] Using Shenandoah
[95.438s] GC(18) Pause Init Mark (unload classes) 0.078ms
[95.470s] GC(18) Concurrent marking (unload classes) 31.937ms
[95.473s] GC(18) Pause Final Mark (unload classes) 0.228ms
[12.3s] GC(5) Pause Young (Allocation Failure) 150M->20M(490M) 12.345ms
";
        let v = gc_pauses(log);
        assert_eq!(v["pauses"], 3);
        assert_eq!(v["max_ms"], 12.35);
        assert_eq!(v["total_ms"], 12.7);
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket_and_stop_below_inf() {
        // 100 observations: 50 <= 1 ms, 40 in (1, 2] ms, 9 in (2, 20] ms, 1 above.
        let d = [(0.001, 50), (0.002, 90), (0.02, 99), (f64::INFINITY, 100)];
        assert_eq!(hist_quantile(&d, 0.5), Some(1.0));
        assert!((hist_quantile(&d, 0.7).unwrap() - 1.5).abs() < 1e-9);
        assert!((hist_quantile(&d, 0.99).unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(hist_quantile(&d, 0.999), Some(20.0)); // in +Inf: the last bound
        assert_eq!(hist_max_ms(&d), Some(f64::INFINITY));
        assert_eq!(hist_quantile(&[(0.001, 0), (f64::INFINITY, 0)], 0.5), None);
    }

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "42 (tokio-rt worker) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0";
        let (name, f) = stat_fields(line).unwrap();
        assert_eq!(name, "tokio-rt_worker");
        assert_eq!(f[11] + f[12], 280);
    }
}
