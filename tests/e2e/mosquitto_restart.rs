//! Mosquitto restarted under the gateway while publishers keep sending: once with
//! SIGTERM (it saves its persistence file on the way out) and once with SIGKILL (it
//! only has what its last autosave wrote: `autosave_interval 1`, but Mosquitto 2.0
//! saves when `last_backup + interval < now` in whole seconds, so up to ~2 s old).
//! The gateway keeps a persistent session (`clean_session = false`); the publishers
//! too (`harness::publisher`), and they retransmit what the broker had not
//! acknowledged.
//!
//! The two restarts are separate streams (different publisher ids), checked
//! separately:
//! - SIGTERM: nothing Mosquitto acknowledged may be lost, nothing reordered.
//! - SIGKILL: what the gateway guarantees is asserted over the whole topic: every
//!   record carries valid headers, and every WAL seq the gateway assigned (= every
//!   message it received; it acknowledges only after the commit) is in Kafka.
//!   Mosquitto itself can lose messages it acknowledged to a publisher after its last
//!   autosave if it still held them in memory (queued beyond the gateway's inflight
//!   window) - its loss, not the gateway's. Messages it had already written to the
//!   gateway's connection survive the kill. So when the gateway kept up at the kill
//!   (the normal case here), lost must be 0; if it lagged by half the window or more,
//!   a loss is printed with the evidence that the gateway never received it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::publisher::{publish_resilient_with, ResilientOptions, ResilientOutcome};
use harness::{check, checker, unique, wait_until, Consumed, Report};
use libtest_mimic::Failed;

use crate::common::Site;
use crate::{fail, kafka, messages};

const PER_PHASE: u64 = 6_000;
/// Mosquitto's `max_inflight_messages` (scripts/mosquitto-local.sh): it writes up to
/// this many unacknowledged messages to the gateway's connection; beyond that it
/// queues them in memory, where a SIGKILL loses those not yet autosaved.
const MOSQUITTO_INFLIGHT: u64 = 1_000;
const GATEWAY_ID: &str = "test-gw";

fn status(admin: SocketAddr) -> Option<serde_json::Value> {
    harness::http_get(admin, "/status")
        .ok()
        .filter(|(s, _)| *s == 200)
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
}

fn received(admin: SocketAddr) -> u64 {
    status(admin)
        .and_then(|v| v["counters"]["mqtt_messages_received"].as_u64())
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Phase {
    name: &'static str,
    publisher_id: String,
    outcome: ResilientOutcome,
    /// Wall clock (ms) when the signal was sent.
    signal_at_ms: u64,
    /// Gateway's received counter just before the signal.
    received_at_signal: u64,
    /// Messages Mosquitto had acknowledged to the publisher but the gateway had not
    /// yet received, just before the signal (an upper bound).
    lag_at_signal: u64,
}

pub fn mosquitto_restarts_lose_nothing() -> Result<(), Failed> {
    let site = Site::new(kafka(), "mrestart")?;
    let m = &site.mqtt;
    let gw = site.gateway();
    let admin = gw.admin;
    let mqtt_topics: Vec<String> = (0..3).map(|i| format!("mr/dev{i}")).collect();

    let mut phases = Vec::new();
    for (name, sig) in [("sigterm", libc::SIGTERM), ("sigkill", libc::SIGKILL)] {
        let publisher_id = unique(&format!("mr{name}"));
        let msgs = messages(&publisher_id, &mqtt_topics, PER_PHASE, 128);
        let progress = Arc::new(AtomicUsize::new(0));
        let opts = ResilientOptions {
            client_id: unique(&format!("mr-pub-{name}")),
            progress: Some(progress.clone()),
            ..ResilientOptions::default()
        };
        let before = received(admin);
        let port = m.port;
        let publisher = std::thread::spawn(move || {
            publish_resilient_with(&opts, port, 1, &msgs, Duration::from_secs(60))
        });
        // Restart in the middle of the stream (the publisher sends ~2,000/s).
        let want = before + PER_PHASE * 2 / 5;
        wait_until(
            "gateway to receive part of the stream",
            Duration::from_secs(30),
            || received(admin) >= want,
        );
        if publisher.is_finished() {
            return Err(fail(format!(
                "{name}: the publisher finished before the restart"
            )));
        }
        // Gateway first, publisher second: the difference over-estimates the lag.
        let received_at_signal = received(admin);
        let lag_at_signal =
            (progress.load(Ordering::Relaxed) as u64).saturating_sub(received_at_signal - before);
        let signal_at_ms = now_ms();
        let t = Instant::now();
        m.kill(sig);
        m.start_again();
        eprintln!(
            "{name}: Mosquitto down and up again in {:?} (gateway had received {} of this stream, \
             {lag_at_signal} behind the publisher's acks)",
            t.elapsed(),
            received_at_signal - before
        );
        let outcome = publisher
            .join()
            .map_err(|_| fail(format!("{name}: publisher panicked")))?;
        eprintln!(
            "{name}: publisher: acked {} of {PER_PHASE}, connects {}, connection errors {}, \
             retransmissions {}, sessions lost {}",
            outcome.published.len(),
            outcome.connects,
            outcome.connection_errors,
            outcome.retransmissions,
            outcome.sessions_lost
        );
        if outcome.published.len() as u64 != PER_PHASE {
            return Err(fail(format!(
                "{name}: broker acked {} of {PER_PHASE}",
                outcome.published.len()
            )));
        }
        if outcome.connects < 2 {
            return Err(fail(format!(
                "{name}: the publisher never reconnected: the restart missed the stream"
            )));
        }
        phases.push(Phase {
            name,
            publisher_id,
            outcome,
            signal_at_ms,
            received_at_signal,
            lag_at_signal,
        });
    }

    // Let the gateway settle: connected, everything received committed and forwarded,
    // and nothing new arriving for a second.
    let mut last = (u64::MAX, Instant::now());
    wait_until("gateway to settle", Duration::from_secs(60), || {
        let Some(s) = status(admin) else {
            return false;
        };
        let c = &s["counters"];
        let rec = c["mqtt_messages_received"].as_u64().unwrap_or(0);
        if rec != last.0 {
            last = (rec, Instant::now());
            return false;
        }
        s["mqtt"]["connected"] == true
            && c["wal_records_committed"].as_u64() == Some(rec)
            && s["backlog"]["records"] == 0
            && s["kafka"]["in_flight"] == 0
            && last.1.elapsed() >= Duration::from_secs(1)
    });
    let st = gw.json("/status");
    let received_total = st["counters"]["mqtt_messages_received"]
        .as_u64()
        .unwrap_or(0);
    let last_seq = st["backlog"]["next_seq"].as_u64().unwrap_or(1) - 1;
    if last_seq != received_total {
        return Err(fail(format!(
            "WAL seqs 1..={last_seq} but {received_total} messages received: {st}"
        )));
    }

    let seqs_of = |r: &[Consumed]| -> usize {
        r.iter()
            .filter_map(|c| c.headers.get("gateway.seq"))
            .collect::<BTreeSet<_>>()
            .len()
    };
    let consumed = site.consume_until(Duration::from_secs(60), |r| seqs_of(r) as u64 >= last_seq);

    // What the gateway guarantees, over the whole topic: valid headers on every
    // record, every seq it assigned (it acknowledges only after the WAL commit) in
    // Kafka.
    let mut by_seq: BTreeMap<u64, Vec<&Consumed>> = BTreeMap::new();
    for c in &consumed {
        header_problems(c, &mqtt_topics).map_err(|e| {
            fail(format!(
                "record {}[{}]@{}: {e}: {:?}",
                c.topic, c.partition, c.offset, c.headers
            ))
        })?;
        let seq: u64 = c.headers["gateway.seq"].parse()?;
        by_seq.entry(seq).or_default().push(c);
    }
    let missing_seqs: Vec<u64> = (1..=last_seq).filter(|s| !by_seq.contains_key(s)).collect();
    let beyond: Vec<u64> = by_seq.range(last_seq + 1..).map(|(s, _)| *s).collect();
    let dup_seqs = by_seq.values().filter(|v| v.len() > 1).count();
    eprintln!(
        "gateway: received {received_total}, WAL seqs 1..={last_seq}, Kafka records {}, \
         distinct seqs {}, seqs missing in Kafka {}, seqs written twice {dup_seqs}",
        consumed.len(),
        by_seq.len(),
        missing_seqs.len()
    );
    if !missing_seqs.is_empty() || !beyond.is_empty() {
        return Err(fail(format!(
            "records the gateway acknowledged are missing from Kafka: seqs {:?}; unexpected seqs {:?}",
            &missing_seqs[..missing_seqs.len().min(20)],
            &beyond[..beyond.len().min(20)]
        )));
    }

    // Per stream: what Mosquitto acknowledged to the publisher vs. Kafka.
    let mut reports: HashMap<&str, Report> = HashMap::new();
    for p in &phases {
        let prefix = format!("{}:", p.publisher_id);
        let mine: Vec<Consumed> = consumed
            .iter()
            .filter(|c| c.payload.starts_with(prefix.as_bytes()))
            .cloned()
            .collect();
        let report = check(&p.outcome.published, &mine);
        eprintln!(
            "{}: {report} (duplicated ids: {})",
            p.name,
            report.duplicated.len()
        );
        if !report.lost.is_empty() {
            explain_loss(p, &report, &mine);
        }
        reports.insert(p.name, report);
    }

    // SIGTERM: Mosquitto saved everything it acknowledged.
    reports["sigterm"].assert_clean();
    // SIGKILL: the gateway lost nothing (asserted above). Mosquitto itself loses what it
    // acknowledged after its last autosave and still held in memory: messages queued
    // for the gateway beyond its inflight window. Messages it had already written to
    // the gateway's connection survive (they are in the gateway's socket). So while
    // the gateway kept up (lag below the window), nothing may be lost; otherwise the
    // loss is Mosquitto's, printed, not asserted.
    let kill_phase = phases.iter().find(|p| p.name == "sigkill").unwrap();
    let kill = &reports["sigkill"];
    if !kill.out_of_order.is_empty() {
        return Err(fail(format!(
            "sigkill: out of order {:?}",
            &kill.out_of_order[..kill.out_of_order.len().min(10)]
        )));
    }
    if !kill.lost.is_empty() {
        let msg = format!(
            "sigkill: Mosquitto lost {} messages it had acknowledged to the publisher; the \
             gateway never received them (its WAL seqs 1..={last_seq} are all in Kafka); \
             the gateway was {} messages behind at the kill (Mosquitto's inflight window: \
             {MOSQUITTO_INFLIGHT})",
            kill.lost.len(),
            kill_phase.lag_at_signal
        );
        if kill_phase.lag_at_signal < MOSQUITTO_INFLIGHT / 2 {
            return Err(fail(msg));
        }
        eprintln!("NOTE {msg}");
    }
    Ok(())
}

/// Why a record's headers are not what the gateway promises, if they are not.
fn header_problems(c: &Consumed, mqtt_topics: &[String]) -> Result<(), String> {
    let h = &c.headers;
    let get = |k: &str| h.get(k).ok_or_else(|| format!("no {k} header"));
    if get("gateway.id")? != GATEWAY_ID {
        return Err("wrong gateway.id".into());
    }
    let seq: u64 = get("gateway.seq")?
        .parse()
        .map_err(|_| "gateway.seq not a number")?;
    if seq == 0 {
        return Err("gateway.seq 0".into());
    }
    let at: i64 = get("gateway.received_at_ms")?
        .parse()
        .map_err(|_| "gateway.received_at_ms not a number")?;
    if c.timestamp != Some(at) {
        return Err("timestamp differs from gateway.received_at_ms".into());
    }
    let t = get("mqtt.topic")?;
    if !mqtt_topics.contains(t) || c.key.as_deref() != Some(t.as_bytes()) {
        return Err("mqtt.topic / key mismatch".into());
    }
    if get("mqtt.qos")? != "1" || get("mqtt.retain")? != "false" {
        return Err("wrong mqtt.qos / mqtt.retain".into());
    }
    if checker::message_id(&c.payload).is_none() || c.payload.len() != 128 {
        return Err("payload changed".into());
    }
    Ok(())
}

/// Print where the lost messages sit in the stream: the neighbours the gateway did
/// receive, with their WAL seqs and receive times, next to the moment of the signal.
fn explain_loss(p: &Phase, report: &Report, mine: &[Consumed]) {
    let seq_of_id = |n: u64| -> Option<(u64, i64)> {
        let id = format!("{}:{n}:", p.publisher_id);
        mine.iter()
            .filter(|c| c.payload.starts_with(id.as_bytes()))
            .map(|c| {
                (
                    c.headers["gateway.seq"].parse().unwrap_or(0),
                    c.headers["gateway.received_at_ms"].parse().unwrap_or(0),
                )
            })
            .min()
    };
    let mut lost: Vec<u64> = report
        .lost
        .iter()
        .filter_map(|id| id.rsplit(':').next()?.parse().ok())
        .collect();
    lost.sort_unstable();
    let (first, last) = (lost[0], lost[lost.len() - 1]);
    eprintln!(
        "{}: lost publisher seqs {first}..={last} ({} ids, contiguous: {}); signal at {} ms, \
         gateway had received {} messages then",
        p.name,
        lost.len(),
        last - first + 1 == lost.len() as u64,
        p.signal_at_ms,
        p.received_at_signal
    );
    for (label, n) in [("before", first.checked_sub(1)), ("after", Some(last + 1))] {
        if let Some(n) = n {
            match seq_of_id(n) {
                Some((seq, at)) => eprintln!(
                    "  {label}: publisher seq {n} -> gateway.seq {seq}, received at {at} ms ({:+} ms from the signal)",
                    at - p.signal_at_ms as i64
                ),
                None => eprintln!("  {label}: publisher seq {n} not in Kafka"),
            }
        }
    }
}
