//! The loss checker: compares what the broker acknowledged to publishers with what
//! Kafka holds. A lost message fails the run with its id.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A message Mosquitto acknowledged to a publisher.
#[derive(Debug, Clone)]
pub struct Published {
    /// MQTT topic.
    pub topic: String,
    /// Payload (starts with `publisher:seq:`).
    pub payload: Vec<u8>,
}

/// A record read from Kafka.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Kafka topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers as text.
    pub headers: BTreeMap<String, String>,
    /// Record timestamp (ms).
    pub timestamp: Option<i64>,
}

/// `publisher:seq` prefix of a checker payload.
pub fn message_id(payload: &[u8]) -> Option<&[u8]> {
    let first = payload.iter().position(|b| *b == b':')?;
    let second = payload[first + 1..].iter().position(|b| *b == b':')? + first + 1;
    Some(&payload[..second])
}

fn parse_id(id: &[u8]) -> Option<(String, u64)> {
    let s = std::str::from_utf8(id).ok()?;
    let (p, n) = s.split_once(':')?;
    Some((p.to_string(), n.parse().ok()?))
}

/// The outcome of a run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Messages acknowledged by the broker.
    pub published: usize,
    /// Records read from Kafka.
    pub consumed: usize,
    /// Ids acknowledged but never in Kafka.
    pub lost: Vec<String>,
    /// Ids seen more than once, with their count.
    pub duplicated: Vec<(String, usize)>,
    /// Per MQTT topic (= key), places where a publisher's sequence went backwards
    /// (first occurrences only, so duplicates of a replay do not count).
    pub out_of_order: Vec<String>,
    /// Duplicates whose copies carry the same `gateway.seq`: sent again from the WAL
    /// (delivered, but the delete was not durable before a crash or a producer rebuild).
    pub dup_same_seq: usize,
    /// Duplicates written to the WAL twice (different `gateway.seq`): MQTT delivered
    /// them again (not PUBACKed before a crash, or a commit that reported failure).
    pub dup_new_seq: usize,
    /// Whether fault events were given (the explained/unexplained split below).
    pub faults_known: bool,
    /// Duplicates with a fault between the first copy's receive time and the second
    /// copy (same seq: a fault after it was received; new seq: a fault between the two
    /// receive times).
    pub dup_explained: usize,
    /// Duplicates no recorded fault explains, with their id.
    pub dup_unexplained: Vec<String>,
}

/// A fault injected during a run: when (Unix ms) and what.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    /// Unix milliseconds when the fault started.
    pub at_ms: u64,
    /// Unix milliseconds when it ended (the same for instant faults such as SIGKILL).
    pub until_ms: u64,
    /// What it was.
    pub kind: String,
}

impl FaultEvent {
    /// An instant fault happening now.
    pub fn now(kind: impl Into<String>) -> Self {
        let t = now_ms();
        Self {
            at_ms: t,
            until_ms: t,
            kind: kind.into(),
        }
    }
}

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Report {
    /// Panic with the details if anything was lost or reordered.
    pub fn assert_clean(&self) {
        assert!(
            self.lost.is_empty(),
            "LOST {} of {} acknowledged messages, e.g. {:?}\n{self}",
            self.lost.len(),
            self.published,
            &self.lost[..self.lost.len().min(10)]
        );
        assert!(
            self.out_of_order.is_empty(),
            "out of order: {:?}\n{self}",
            &self.out_of_order[..self.out_of_order.len().min(10)]
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "published(acked)={} consumed={} lost={} duplicated={} out_of_order={}",
            self.published,
            self.consumed,
            self.lost.len(),
            self.duplicated.len(),
            self.out_of_order.len()
        )?;
        if !self.duplicated.is_empty() {
            write!(
                f,
                " [duplicates: {} resent from the WAL (same seq), {} redelivered by MQTT (new seq)",
                self.dup_same_seq, self.dup_new_seq
            )?;
            if self.faults_known {
                write!(
                    f,
                    "; {} explained by a fault, {} unexplained",
                    self.dup_explained,
                    self.dup_unexplained.len()
                )?;
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}

/// Compare `published` with `consumed`, and classify each duplicate against the fault
/// events of the run.
pub fn check_with_faults(
    published: &[Published],
    consumed: &[Consumed],
    faults: &[FaultEvent],
) -> Report {
    let mut report = check(published, consumed);
    report.faults_known = true;
    classify_duplicates(&mut report, consumed, faults);
    report
}

/// Tolerance when comparing receive times with fault times (same machine clock; the
/// gateway stamps a message a little after the broker got it).
const FAULT_MARGIN_MS: u64 = 1_000;

/// One copy of a duplicated message: (`gateway.seq`, `gateway.received_at_ms`).
type DupCopy = (Option<u64>, Option<u64>);

fn classify_duplicates(report: &mut Report, consumed: &[Consumed], faults: &[FaultEvent]) {
    let dup: HashMap<&str, ()> = report
        .duplicated
        .iter()
        .map(|(id, _)| (id.as_str(), ()))
        .collect();
    // id -> copies as (gateway.seq, received_at_ms)
    let mut copies: HashMap<&str, Vec<DupCopy>> = HashMap::new();
    for c in consumed {
        let Some(id) = message_id(&c.payload).and_then(|i| std::str::from_utf8(i).ok()) else {
            continue;
        };
        if !dup.contains_key(id) {
            continue;
        }
        let seq = c.headers.get("gateway.seq").and_then(|v| v.parse().ok());
        let at = c
            .headers
            .get("gateway.received_at_ms")
            .and_then(|v| v.parse().ok());
        copies.entry(id).or_default().push((seq, at));
    }
    let (mut same, mut new, mut explained) = (0, 0, 0);
    let mut unexplained = Vec::new();
    for (id, mut v) in copies {
        v.sort_by_key(|(_, at)| *at);
        let first = v[0];
        let same_seq = v.iter().all(|(s, _)| *s == first.0);
        let first_at = first.1.unwrap_or(0);
        let ok = if same_seq {
            same += 1;
            faults
                .iter()
                .any(|f| f.until_ms + FAULT_MARGIN_MS >= first_at)
        } else {
            new += 1;
            let last_at = v.last().and_then(|x| x.1).unwrap_or(u64::MAX);
            faults.iter().any(|f| {
                f.until_ms + FAULT_MARGIN_MS >= first_at && f.at_ms <= last_at + FAULT_MARGIN_MS
            })
        };
        if ok {
            explained += 1;
        } else {
            unexplained.push(id.to_string());
        }
    }
    unexplained.sort();
    report.dup_same_seq = same;
    report.dup_new_seq = new;
    report.dup_explained = explained;
    report.dup_unexplained = unexplained;
}

/// Compare `published` with `consumed`.
pub fn check(published: &[Published], consumed: &[Consumed]) -> Report {
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for c in consumed {
        if let Some(id) = message_id(&c.payload) {
            *counts.entry(id).or_default() += 1;
        }
    }
    let mut report = Report {
        published: published.len(),
        consumed: consumed.len(),
        ..Report::default()
    };
    for p in published {
        let id = message_id(&p.payload).expect("checker payload");
        if !counts.contains_key(id) {
            report.lost.push(String::from_utf8_lossy(id).into_owned());
        }
    }
    for (id, n) in &counts {
        if *n > 1 {
            report
                .duplicated
                .push((String::from_utf8_lossy(id).into_owned(), *n));
        }
    }
    // Order: per (key, publisher), the first occurrences of sequences must increase.
    // Records of one key are in one partition; read them in offset order.
    let mut by_partition: BTreeMap<(&str, i32), Vec<&Consumed>> = BTreeMap::new();
    for c in consumed {
        by_partition
            .entry((&c.topic, c.partition))
            .or_default()
            .push(c);
    }
    for recs in by_partition.values_mut() {
        recs.sort_by_key(|c| c.offset);
        let mut last: HashMap<(Option<&[u8]>, String), u64> = HashMap::new();
        let mut seen: HashMap<&[u8], ()> = HashMap::new();
        for c in recs.iter() {
            let Some(id) = message_id(&c.payload) else {
                continue;
            };
            if seen.insert(id, ()).is_some() {
                continue; // a duplicate from a replay
            }
            let Some((publisher, seq)) = parse_id(id) else {
                continue;
            };
            let k = (c.key.as_deref(), publisher);
            if let Some(prev) = last.get(&k) {
                if seq < *prev {
                    report.out_of_order.push(format!(
                        "{}[{}]@{}: {} after seq {prev}",
                        c.topic,
                        c.partition,
                        c.offset,
                        String::from_utf8_lossy(id)
                    ));
                }
            }
            last.insert(k, seq);
        }
    }
    classify_duplicates(&mut report, consumed, &[]);
    report
}

/// Samples the gateway's `/backlog` on a thread: the backlog over time.
#[derive(Debug)]
pub struct BacklogSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(u64, u64)>>>,
}

/// A sampled series: (Unix ms, backlog records).
#[derive(Debug, Clone, Default)]
pub struct BacklogSeries(pub Vec<(u64, u64)>);

impl BacklogSampler {
    /// Poll `admin`'s `/backlog` every `every` (the address may change between
    /// gateway restarts: pass a shared cell).
    pub fn start(
        admin: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
        every: std::time::Duration,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let addr = *admin.lock().unwrap();
                if let Some(n) = crate::http_get(addr, "/backlog")
                    .ok()
                    .filter(|(st, _)| *st == 200)
                    .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["records"].as_u64())
                {
                    out.push((now_ms(), n));
                }
                std::thread::sleep(every);
            }
            out
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop sampling and return the series.
    pub fn finish(mut self) -> BacklogSeries {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        BacklogSeries(
            self.thread
                .take()
                .map(|t| t.join().unwrap_or_default())
                .unwrap_or_default(),
        )
    }
}

impl BacklogSeries {
    /// Largest backlog seen.
    pub fn max(&self) -> u64 {
        self.0.iter().map(|x| x.1).max().unwrap_or(0)
    }

    /// Time from `from_ms` until the backlog was first seen at 0 (and stayed there to
    /// the end of the series), if it drained.
    pub fn drain_ms(&self, from_ms: u64) -> Option<u64> {
        let mut drained_at = None;
        for (t, n) in &self.0 {
            if *t < from_ms {
                continue;
            }
            if *n == 0 {
                drained_at.get_or_insert(*t);
            } else {
                drained_at = None;
            }
        }
        drained_at.map(|t| t - from_ms)
    }

    /// A compact text form: about `points` evenly spaced samples as `+seconds:records`
    /// relative to the first sample.
    pub fn compact(&self, points: usize) -> String {
        let Some(first) = self.0.first() else {
            return "(no samples)".into();
        };
        let step = (self.0.len() / points.max(1)).max(1);
        let mut parts: Vec<String> = self
            .0
            .iter()
            .step_by(step)
            .map(|(t, n)| format!("+{:.1}s:{n}", (t - first.0) as f64 / 1000.0))
            .collect();
        if let Some((t, n)) = self.0.last() {
            if self.0.len() > 1 && (self.0.len() - 1) % step != 0 {
                parts.push(format!("+{:.1}s:{n}", (t - first.0) as f64 / 1000.0));
            }
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(topic: &str, offset: i64, key: &str, id: &str) -> Consumed {
        Consumed {
            topic: topic.into(),
            partition: 0,
            offset,
            key: Some(key.as_bytes().to_vec()),
            payload: format!("{id}:xxx").into_bytes(),
            headers: BTreeMap::new(),
            timestamp: None,
        }
    }

    /// Publisher `p`, messages 1..=3 on key `k`.
    fn published_1_to_3() -> Vec<Published> {
        (1..=3)
            .map(|i| Published {
                topic: "k".into(),
                payload: format!("p:{i}:x").into_bytes(),
            })
            .collect()
    }

    #[test]
    fn detects_loss_duplicates_and_reordering() {
        let published = published_1_to_3();
        let consumed = vec![
            rec("t", 0, "k", "p:2"),
            rec("t", 1, "k", "p:1"),
            rec("t", 2, "k", "p:2"),
        ];
        let r = check(&published, &consumed);
        assert_eq!(r.lost, vec!["p:3".to_string()]);
        assert_eq!(r.duplicated, vec![("p:2".to_string(), 2)]);
        assert_eq!(r.out_of_order.len(), 1);
        let clean = check(
            &published[..2],
            &[rec("t", 0, "k", "p:1"), rec("t", 1, "k", "p:2")],
        );
        assert!(clean.lost.is_empty() && clean.out_of_order.is_empty());
        clean.assert_clean();
    }

    fn copy(offset: i64, id: &str, seq: u64, at: u64) -> Consumed {
        let mut c = rec("t", offset, "k", id);
        c.headers.insert("gateway.seq".into(), seq.to_string());
        c.headers
            .insert("gateway.received_at_ms".into(), at.to_string());
        c
    }

    #[test]
    fn duplicates_are_classified_by_seq_and_fault_times() {
        let published = published_1_to_3();
        let consumed = vec![
            copy(0, "p:1", 1, 10_000),
            copy(1, "p:2", 2, 20_000),
            copy(2, "p:3", 3, 30_000),
            copy(3, "p:1", 1, 10_000),  // resent from the WAL
            copy(4, "p:2", 9, 50_000),  // redelivered by MQTT
            copy(5, "p:3", 10, 35_000), // redelivered, but no fault in between
        ];
        let faults = vec![FaultEvent {
            at_ms: 40_000,
            until_ms: 45_000,
            kind: "kill".into(),
        }];
        let r = check_with_faults(&published, &consumed, &faults);
        assert_eq!(r.duplicated.len(), 3);
        assert_eq!((r.dup_same_seq, r.dup_new_seq), (1, 2));
        assert_eq!(r.dup_explained, 1 + 1);
        assert_eq!(r.dup_unexplained, vec!["p:3".to_string()]);
        assert!(r.to_string().contains("1 unexplained"), "{r}");
        let plain = check(&published, &consumed);
        assert!(!plain.faults_known && !plain.to_string().contains("unexplained"));
    }

    #[test]
    fn backlog_series_max_drain_and_compact() {
        let s = BacklogSeries(vec![
            (1_000, 0),
            (2_000, 50),
            (3_000, 20),
            (4_000, 0),
            (5_000, 0),
        ]);
        assert_eq!(s.max(), 50);
        assert_eq!(s.drain_ms(2_000), Some(2_000));
        assert_eq!(BacklogSeries(vec![(1, 5)]).drain_ms(0), None);
        assert_eq!(s.compact(10), "+0.0s:0 +1.0s:50 +2.0s:20 +3.0s:0 +4.0s:0");
    }

    #[test]
    #[should_panic(expected = "LOST")]
    fn a_lost_message_fails() {
        let published = vec![Published {
            topic: "k".into(),
            payload: b"p:1:x".to_vec(),
        }];
        check(&published, &[]).assert_clean();
    }
}
