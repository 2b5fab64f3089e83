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
        )
    }
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
    report
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

    #[test]
    fn detects_loss_duplicates_and_reordering() {
        let published: Vec<Published> = (1..=3)
            .map(|i| Published {
                topic: "k".into(),
                payload: format!("p:{i}:x").into_bytes(),
            })
            .collect();
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
