//! Clock jumps: the gateway runs under libfaketime (Debian package `faketime`) with the
//! monotonic clock left alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`), and its wall clock
//! is moved through a timestamp file while messages flow: back an hour, then forward a
//! day. Order and identity come from the WAL sequence, so nothing is lost or
//! reordered, and no timer stalls (they run on the monotonic clock). Each phase's
//! records must carry the phase's clock in `gateway.received_at_ms`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{check, wait_until, Consumed};
use libtest_mimic::Failed;

use crate::common::{acked_all, admin_u64, Site};
use crate::{fail, kafka, messages};

fn libfaketime() -> Result<PathBuf, Failed> {
    for dir in [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/arm-linux-gnueabihf/faketime",
        "/usr/lib/faketime",
    ] {
        let p = Path::new(dir).join("libfaketimeMT.so.1");
        if p.exists() {
            return Ok(p);
        }
    }
    Err(fail(
        "libfaketime not found: install the Debian package `faketime` (scripts/install-deps.sh does)",
    ))
}

fn set_clock(file: &Path, offset: &str) -> Result<(), Failed> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset}\n"))?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

/// The records of `publisher` whose `gateway.received_at_ms`, less `offset_ms`, is not
/// within the real-time window `[from, to]` (a second of slack each side), as
/// (payload id, stamp less the real time at `to`); and how many records were checked.
fn stamped_outside(
    consumed: &[Consumed],
    publisher: &str,
    offset_ms: i64,
    (from, to): (i64, i64),
) -> (Vec<(String, i64)>, usize) {
    let prefix = format!("{publisher}:");
    let mut bad = Vec::new();
    let mut n = 0;
    for c in consumed
        .iter()
        .filter(|c| c.payload.starts_with(prefix.as_bytes()))
    {
        n += 1;
        let stamp: Option<i64> = c
            .headers
            .get("gateway.received_at_ms")
            .and_then(|t| t.parse().ok());
        let real = stamp.map(|t| t - offset_ms);
        if !real.is_some_and(|r| r >= from - 1_000 && r <= to + 1_000) {
            let id = harness::checker::message_id(&c.payload).unwrap_or_default();
            bad.push((
                String::from_utf8_lossy(id).into_owned(),
                stamp.map_or(i64::MIN, |t| t - to),
            ));
        }
    }
    (bad, n)
}

/// A libfaketime offset such as `-1d`, `-25h` or `+0` in milliseconds.
fn offset_ms(offset: &str) -> i64 {
    let (sign, rest) = offset.split_at(1);
    let sign = if sign == "-" { -1 } else { 1 };
    let (n, unit) = match rest.strip_suffix('d') {
        Some(n) => (n, 86_400_000),
        None => match rest.strip_suffix('h') {
            Some(n) => (n, 3_600_000),
            None => (rest, 1_000),
        },
    };
    sign * n.parse::<i64>().expect("offset") * unit
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Publish probes (publisher `probe<phase>`) until one reaches Kafka stamped by the
/// gateway with the real time plus `offset_ms` (within 10 minutes); the probes sent.
fn wait_for_clock(
    site: &Site,
    topics: &[String],
    phase: usize,
    offset_ms: i64,
) -> Result<Vec<harness::Published>, Failed> {
    let publisher = format!("probe{phase}");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut sent = Vec::new();
    let mut seen = Vec::new();
    for k in 0_u64.. {
        if std::time::Instant::now() > deadline {
            return Err(fail(format!(
                "the gateway did not take up the clock offset of phase {phase} ({offset_ms} ms) within 90 s; its offsets seen: {seen:?}"
            )));
        }
        let probe = (topics[0].clone(), harness::payload(&publisher, k, 64));
        let id = format!("{publisher}:{k}:");
        let p = site.publish(std::slice::from_ref(&probe), Duration::from_secs(30));
        acked_all(&p, 1)?;
        sent.extend(p);
        let expected = now_ms() + offset_ms;
        let got = site.consume_until(Duration::from_secs(30), |r| {
            r.iter().any(|c| c.payload.starts_with(id.as_bytes()))
        });
        let stamped = got
            .iter()
            .find(|c| c.payload.starts_with(id.as_bytes()))
            .and_then(|c| c.headers.get("gateway.received_at_ms")?.parse::<i64>().ok());
        match stamped {
            Some(t) if (t - expected).abs() < 600_000 => return Ok(sent),
            Some(t) => seen.push(t - now_ms()),
            None => return Err(fail(format!("probe {id} not in Kafka within 30 s"))),
        }
    }
    unreachable!("the probe loop returns")
}

pub fn clock_jumps_back_and_forward_lose_nothing() -> Result<(), Failed> {
    let lib = libfaketime()?;
    let site = Site::new(kafka(), "clock")?;
    let clock = site.path().join("faketime");
    // Start a day behind, jump back an hour, then forward a day. The fake clock stays
    // behind the real one: libfaketime 0.9.10 fakes timespec_get() but waits in
    // pthread_cond_timedwait() on the real clock when the monotonic clock is not
    // faked, so with a clock *ahead* librdkafka's timed waits would last the offset
    // (its first idempotent-PID retry never fired under +1d): an artifact of the
    // preload, not of a real jump, where both use the same clock.
    let plan = ["-1d", "-25h", "-1h", "-1h"];
    // Start on the real time and go a day behind only once serving: started a day
    // behind, librdkafka's first producer (config validation) sometimes spun in its
    // gettimeofday()-based timed waits under libfaketime's lock and the gateway never
    // served (3 of 15 starts here; 0 of 15 started on the real time). Another preload
    // artifact: the first jump (to -1d) still happens with the gateway running.
    set_clock(&clock, "+0")?;
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let mut gw = site.gateway_with(&site.config(), &env);
    let topics: Vec<String> = vec!["c/a".into(), "c/b".into()];
    let mut published = Vec::new();
    let phases = ["c0", "back", "fwd", "c3"];
    let mut windows = Vec::new();
    for (phase, (publisher, offset)) in phases.into_iter().zip(plan).enumerate() {
        set_clock(&clock, offset)?;
        let from = now_ms();
        // Check that the gateway itself stamps a probe with the new time before the
        // phase's messages go.
        published.extend(wait_for_clock(&site, &topics, phase, offset_ms(offset))?);
        published.extend(site.publish_all(
            &messages(publisher, &topics, 1_000, 200),
            Duration::from_secs(60),
        )?);
        // Mosquitto acknowledged the phase to the publisher; the gateway may still be
        // reading it. Let it stamp the whole phase before the clock moves again.
        let n = published.len() as u64;
        wait_until(
            "the gateway to receive the phase",
            Duration::from_secs(60),
            || admin_u64(gw.admin, "/status", "/counters/mqtt_messages_received") >= Some(n),
        );
        windows.push((from, now_ms()));
    }
    let n = published.len();
    let consumed = site.consume(n, Duration::from_secs(120));
    let report = check(&published, &consumed);
    eprintln!(
        "clock jumps ({plan:?}): {report}; status {}",
        gw.json("/status")["counters"]
    );
    if !report.lost.is_empty() {
        let log = gw.log();
        eprintln!(
            "gateway log (tail):\n{}",
            &log[log.len().saturating_sub(4000)..]
        );
    }
    report.assert_clean();
    // The jumps really happened inside the gateway (libfaketime works with it): every
    // record is stamped with the real time of its phase plus the phase's offset.
    for ((publisher, offset), window) in phases.into_iter().zip(plan).zip(windows) {
        let (bad, checked) = stamped_outside(&consumed, publisher, offset_ms(offset), window);
        if checked < 1_000 || !bad.is_empty() {
            return Err(fail(format!(
                "phase {publisher} ({offset}): {checked} records, {} not stamped with the real time {offset} (id, stamp - real ms): {:?}",
                bad.len(),
                &bad[..bad.len().min(5)]
            )));
        }
    }
    // Identity: gateway.seq grows with the publish order whatever the wall clock did.
    let mut seqs: Vec<(u64, u64)> = consumed
        .iter()
        .filter_map(|c| {
            let seq: u64 = c.headers.get("gateway.seq")?.parse().ok()?;
            let id = harness::checker::message_id(&c.payload)?;
            let s = std::str::from_utf8(id).ok()?;
            let (p, n) = s.split_once(':')?;
            let phase = phases.iter().position(|x| *x == p)? as u64;
            Some((phase * 1_000_000 + n.parse::<u64>().ok()?, seq))
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup_by_key(|x| x.0);
    if seqs.windows(2).any(|w| w[1].1 <= w[0].1) {
        return Err(fail("gateway.seq does not follow the publish order"));
    }
    if gw.try_wait().is_some() {
        return Err(fail(format!("gateway exited:\n{}", gw.log())));
    }
    Ok(())
}
