//! `GET /backlog/topics`: the backlog per Kafka topic (as the records would be routed
//! now) or per MQTT topic, the largest first, a bounded number of rows.

use serde::Serialize;

use crate::records::percent_decode;

/// Rows unless the gateway's `admin.topics_limit` or the request's `limit` says otherwise.
pub const DEFAULT_TOPICS_LIMIT: usize = 50;
/// Most rows a request may ask for.
pub const MAX_TOPICS_LIMIT: usize = 1000;

/// What the rows are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// The Kafka topic each record is routed to now.
    #[default]
    Kafka,
    /// The MQTT topic it was published on.
    Mqtt,
}

/// What a `/backlog/topics` request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicsQuery {
    /// Kafka or MQTT topics.
    pub by: GroupBy,
    /// Rows at most; `None`: the gateway's configured default.
    pub limit: Option<usize>,
}

impl TopicsQuery {
    /// Parse a query string (`by=kafka|mqtt&limit=N`); `Err` names the bad key.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut q = Self::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| format!("{k}: bad percent-encoding"))?;
            match k {
                "by" => {
                    q.by = match v.as_str() {
                        "kafka" => GroupBy::Kafka,
                        "mqtt" => GroupBy::Mqtt,
                        _ => return Err(format!("by: kafka or mqtt, not {v:?}")),
                    }
                }
                "limit" => {
                    let n: usize = v
                        .parse()
                        .map_err(|_| format!("limit: not a number: {v:?}"))?;
                    if n == 0 || n > MAX_TOPICS_LIMIT {
                        return Err(format!("limit: must be 1 to {MAX_TOPICS_LIMIT}"));
                    }
                    q.limit = Some(n);
                }
                other => return Err(format!("unknown parameter {other:?} (by, limit)")),
            }
        }
        Ok(q)
    }
}

/// The backlog of one topic.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TopicRow {
    /// The Kafka or MQTT topic; empty for the MQTT topics that route nowhere now
    /// (`route_error` says why).
    pub topic: String,
    /// Records waiting.
    pub records: u64,
    /// Their encoded bytes in the WAL.
    pub bytes: u64,
    /// Receive time of its oldest record (Unix ms), when the read for it reached it
    /// (see [`TopicsPage::oldest_scan`]).
    pub oldest_receive_time_ms: Option<u64>,
    /// Age of that record.
    pub oldest_age_seconds: Option<f64>,
    /// Why these records route nowhere now (by Kafka topic only).
    pub route_error: Option<String>,
}

/// The topics past the row limit, together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OtherTopics {
    /// How many topics.
    pub topics: u64,
    /// Their records.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// How far the read for the oldest records went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OldestScan {
    /// Records read from the oldest on.
    pub records: u64,
    /// Every row's oldest record was found.
    pub complete: bool,
    /// Receive time (Unix ms) of the last record read: the rows without an oldest
    /// record have none older than this.
    pub last_receive_time_ms: Option<u64>,
}

/// The answer to `/backlog/topics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TopicsPage {
    /// What the rows are.
    pub by: GroupBy,
    /// Rows at most.
    pub limit: usize,
    /// Topics with records in the backlog.
    pub total_topics: u64,
    /// The largest `limit` topics by records (ties by name).
    pub topics: Vec<TopicRow>,
    /// The rest, when there is a rest.
    pub other: Option<OtherTopics>,
    /// How the oldest records were found.
    pub oldest_scan: OldestScan,
}

impl TopicsPage {
    /// The largest `limit` of `rows` by records (ties by topic), the rest summed in
    /// `other`; the oldest records are left to fill in.
    pub fn top(by: GroupBy, limit: usize, mut rows: Vec<TopicRow>) -> Self {
        rows.sort_by(|a, b| {
            b.records
                .cmp(&a.records)
                .then_with(|| a.topic.cmp(&b.topic))
        });
        let total_topics = rows.len() as u64;
        let rest = rows.split_off(limit.min(rows.len()));
        let other = (!rest.is_empty()).then(|| OtherTopics {
            topics: rest.len() as u64,
            records: rest.iter().map(|r| r.records).sum(),
            bytes: rest.iter().map(|r| r.bytes).sum(),
        });
        Self {
            by,
            limit,
            total_topics,
            topics: rows,
            other,
            oldest_scan: OldestScan::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(topic: &str, records: u64) -> TopicRow {
        TopicRow {
            topic: topic.into(),
            records,
            bytes: records * 10,
            ..TopicRow::default()
        }
    }

    #[test]
    fn query_parses_and_names_bad_keys() {
        assert_eq!(TopicsQuery::parse(None).unwrap(), TopicsQuery::default());
        let q = TopicsQuery::parse(Some("by=mqtt&limit=7")).unwrap();
        assert_eq!((q.by, q.limit), (GroupBy::Mqtt, Some(7)));
        for (bad, key) in [
            ("by=device", "by"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("from=1", "from"),
        ] {
            let e = TopicsQuery::parse(Some(bad)).unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn top_keeps_the_largest_and_sums_the_rest() {
        let p = TopicsPage::top(
            GroupBy::Kafka,
            2,
            vec![row("a", 1), row("b", 5), row("c", 5), row("d", 2)],
        );
        let names: Vec<&str> = p.topics.iter().map(|r| r.topic.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(p.total_topics, 4);
        assert_eq!(
            p.other,
            Some(OtherTopics {
                topics: 2,
                records: 3,
                bytes: 30
            })
        );
        let all = TopicsPage::top(GroupBy::Mqtt, 50, vec![row("a", 1)]);
        assert_eq!((all.topics.len(), all.other), (1, None));
    }
}
