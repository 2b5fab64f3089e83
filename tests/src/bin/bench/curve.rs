//! Phase 10, the window curve (`--drain-windows W,...`): the backlog of phase 2 drained
//! again with each `forward.max_in_flight_bytes`, for the drain rate and the peak RSS
//! each window gives. The default window is a point on this curve (docs/BENCHMARKS.md,
//! 5).

use std::process::Command;
use std::time::Duration;

use crate::{probe, say, Bench, Res};

impl Bench<'_> {
    pub(crate) fn window_curve(&mut self) -> Res<()> {
        let o = self.o;
        if o.drain_windows.is_empty() {
            return Ok(());
        }
        let n = o.backlog;
        let base = self.dir.join("wal-curve");
        let wal = self.dir.join("wal-curve-run");
        self.r.put("curve_windows", o.drain_windows.join(","));
        for (i, window) in o.drain_windows.iter().enumerate() {
            say(format!(
                "10. window curve: {n}-record backlog with max_in_flight_bytes = {window}"
            ));
            let _ = std::fs::remove_dir_all(&wal);
            let copied = Command::new("cp")
                .arg("-a")
                .arg(&base)
                .arg(&wal)
                .status()
                .map_err(|e| format!("cp: {e}"))?;
            if !copied.success() {
                return Err(format!("cp -a {} failed", base.display()));
            }
            let _ = Command::new("sync").status();
            self.extra_sets = vec![(
                "forward".into(),
                "max_in_flight_bytes".into(),
                window.clone(),
            )];
            let started = self.gateway(
                &format!("curve{i}"),
                &wal,
                &self.bootstrap(),
                "curve",
                "curve/#",
            );
            self.extra_sets.clear();
            let mut gw = started?;
            let done = gw.wait_metric("the backlog drained", Duration::from_secs(600), |m| {
                m.get("mkg_backlog_records") == 0 && m.get("mkg_kafka_records_forwarded_total") >= n
            })?;
            let pid = gw.pid();
            self.r.put(
                &format!("curve{i}_rate"),
                n * 1000 / (done - gw.exec_ms).max(1),
            );
            self.r
                .put(&format!("curve{i}_rss_kb"), probe::status_kb(pid, "VmHWM"));
            // Drained: after a quiet second the gateway hands its free memory back.
            std::thread::sleep(Duration::from_secs(3));
            self.r.put(
                &format!("curve{i}_after_kb"),
                probe::status_kb(pid, "VmRSS"),
            );
            gw.stop();
        }
        let _ = std::fs::remove_dir_all(&wal);
        let _ = std::fs::remove_dir_all(&base);
        Ok(())
    }
}
