//! Phase 9, the SD-card profile (`--sd-card MS,...`): the gateway as on a Raspberry
//! Pi's SD card, whose `fdatasync` takes milliseconds, on one core of its own.
//!
//! A shim loaded with `LD_PRELOAD` (built here with `cc`) makes every `fdatasync` and
//! `fsync` of the gateway MS milliseconds slower: it calls the real one, then sleeps.
//! The gateway's own WAL fsync times (`/metrics`) show the delay took effect. For each
//! delay: durable ingest with Kafka stopped against the same Mosquitto ceiling as 1,
//! then latency at 1,000 and 100 msg/s with the fsyncs per second, the bytes written
//! per payload byte and per day at each rate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{say, Bench, Res};

const SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

/* MKG_SLOW_FSYNC_US microseconds added to every fdatasync and fsync. */
static long delay_us(void) {
    static long us = -1;
    if (us < 0) {
        const char *e = getenv("MKG_SLOW_FSYNC_US");
        us = e ? atol(e) : 0;
    }
    return us;
}

static void slow(void) {
    long us = delay_us();
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    while (us > 0 && nanosleep(&ts, &ts) != 0) {
    }
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    slow();
    return r;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    slow();
    return r;
}
"#;

/// A gateway's simulated SD card: the shim and the delay it adds to each fsync.
#[derive(Debug, Clone)]
pub struct SlowDisk {
    shim: PathBuf,
    delay_ms: u64,
}

impl SlowDisk {
    /// The environment that loads the shim with this delay.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", self.shim.display().to_string()),
            ("MKG_SLOW_FSYNC_US", (self.delay_ms * 1000).to_string()),
        ]
    }
}

/// Build the shim in `dir`.
fn build_shim(dir: &Path) -> Res<PathBuf> {
    let src = dir.join("slowsync.c");
    let out = dir.join("slowsync.so");
    std::fs::write(&src, SHIM_C).map_err(|e| format!("{}: {e}", src.display()))?;
    let built = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("cc (needed by --sd-card): {e}"))?;
    if !built.status.success() {
        return Err(format!(
            "building the fsync shim failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    Ok(out)
}

/// Pin every thread of `pid` (and so the threads they start) to CPU 0.
pub fn pin_to_one_core(pid: u32) -> Res<()> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &pid.to_string()])
        .output()
        .map_err(|e| format!("taskset (needed by --sd-card): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "taskset -a -p -c 0 {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The rates of the latency runs on the simulated card.
pub const SD_RATES: [u64; 2] = [1000, 100];

impl Bench<'_> {
    /// 9. The SD-card profile, once per `--sd-card` delay.
    pub(crate) fn sd_card(&mut self) -> Res<()> {
        let o = self.o;
        if o.sd_card.is_empty() {
            return Ok(());
        }
        let shim = build_shim(&self.dir)?;
        let delays: Vec<String> = o.sd_card.iter().map(u64::to_string).collect();
        self.r.put("sd_delays", delays.join(","));
        let mq_pid = self.mq.pid().ok_or("Mosquitto not running")? as u32;
        for &ms in &o.sd_card {
            let sd = SlowDisk {
                shim: shim.clone(),
                delay_ms: ms,
            };
            let n = o.ingest;
            say(format!(
                "9. SD card, fsync +{ms} ms, one core: durable ingest of {n} messages with Kafka stopped"
            ));
            let rate = self.ingest_run(&format!("sd{ms}ingest"), n, mq_pid, false, Some(&sd))?;
            self.r.put(&format!("sd{ms}_ingest_rate"), rate);

            say(format!(
                "9. SD card, fsync +{ms} ms, one core: latency at {SD_RATES:?} msg/s"
            ));
            let boot = self.bootstrap();
            let name = format!("sd{ms}");
            let wal = self.dir.join(format!("wal-{name}"));
            let mut gw =
                self.gateway_on(&name, &wal, &boot, "bench", &format!("{name}/#"), Some(&sd))?;
            let warm = format!("{name}warm");
            self.loadgen(&format!("{name}/warm"), 1000, &warm, 0)?;
            gw.wait_metric("the warm-up in Kafka", Duration::from_secs(120), |m| {
                m.get("mkg_kafka_records_forwarded_total") >= 1000
                    && m.get("mkg_backlog_records") == 0
            })?;
            for rate in SD_RATES {
                self.latency(
                    &mut gw,
                    rate,
                    &format!("{name}/lat"),
                    &format!("{name}lat{rate}"),
                    &format!("sd{ms}_"),
                )?;
            }
            gw.stop();
            let _ = std::fs::remove_dir_all(wal);
        }
        Ok(())
    }
}
