//! What the bench reads from the system and the gateway: CPU ticks, memory and disk
//! writes from `/proc`, and the gateway's `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

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

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(&format!("{key}:")))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
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

    /// The WAL commit-duration histogram: cumulative count by upper bound.
    fn commit_buckets(&self) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let le = k
                    .strip_prefix("mkg_wal_commit_duration_seconds_bucket{le=\"")?
                    .strip_suffix("\"}")?;
                Some((le.to_string(), *v as u64))
            })
            .collect()
    }
}

/// What changed in the commit-duration histogram between two scrapes: commits, their
/// p99 bucket and the share over 20 ms.
pub fn commit_times(before: &Metrics, after: &Metrics) -> String {
    let a = before.commit_buckets();
    let d: Vec<(f64, String, u64)> = after
        .commit_buckets()
        .into_iter()
        .map(|(le, n)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let delta = n.saturating_sub(a.get(&le).copied().unwrap_or(0));
            (bound, le, delta)
        })
        .collect();
    let mut d = d;
    d.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = d.last().map_or(0, |x| x.2);
    let p99 = d
        .iter()
        .find(|x| x.2 as f64 >= 0.99 * total as f64)
        .map_or("+Inf".to_string(), |x| x.1.clone());
    let under_20ms = d.iter().find(|x| x.1 == "0.02").map_or(0, |x| x.2);
    let over = total - under_20ms.min(total);
    format!(
        "{} durable commits, p99 <= {p99} s, {} ({:.1}%) over 20 ms",
        crate::report::thousands(total),
        crate::report::thousands(over),
        100.0 * over as f64 / total.max(1) as f64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "42 (tokio-rt worker) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0";
        let (name, f) = stat_fields(line).unwrap();
        assert_eq!(name, "tokio-rt_worker");
        assert_eq!(f[11] + f[12], 280);
    }
}
