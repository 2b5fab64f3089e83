//! `GET /records` and `GET /dead-letters`: pages of the backlog and of the parked
//! records for operators (admin API, CLI).
//!
//! A read transaction of its own, like the forwarder's reads: redb readers do not wait
//! for the writer, so paging through the backlog does not hold up the WAL thread.

use std::ops::ControlFlow;

use admin::{DeadLetterView, DeadLettersPage, RecordView, RecordsPage, RecordsQuery};
use wal::{RecordRef, Wal};

use crate::route::{filter_matches, Router};

/// Records one request with a topic filter looks at, at most; `next` continues after.
pub const MAX_SCANNED: usize = 10_000;

/// The page `q` asks for, records routed by `router` as the forwarder would now.
pub fn records(
    wal: &Wal,
    router: &mut Router,
    q: &RecordsQuery,
    now_ms: u64,
) -> Result<RecordsPage, String> {
    let from = q.from.unwrap_or(1).max(1);
    let scan = if q.topic.is_some() {
        MAX_SCANNED
    } else {
        q.limit
    };
    let mut page = RecordsPage::default();
    let mut last = None;
    let visited = wal
        .for_each_from(from, scan, usize::MAX, |seq, rec| {
            last = Some(seq);
            if q.topic
                .as_deref()
                .is_some_and(|f| !filter_matches(f, rec.topic))
            {
                return ControlFlow::Continue(());
            }
            page.records.push(view(seq, &rec, router, now_ms));
            if page.records.len() >= q.limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .map_err(|e| e.to_string())?;
    // Whether more may follow is known only by reading on: offer the next sequence
    // whenever this page stopped at a bound.
    let full = page.records.len() >= q.limit;
    if full || visited >= scan {
        page.next = last.map(|l| l + 1);
    }
    Ok(page)
}

/// The dead letters `q` asks for (a parked record keeps its original sequence).
pub fn dead_letters(
    wal: &Wal,
    router: &mut Router,
    q: &RecordsQuery,
    now_ms: u64,
) -> Result<DeadLettersPage, String> {
    let from = q.from.unwrap_or(1).max(1);
    let scan = if q.topic.is_some() {
        MAX_SCANNED
    } else {
        q.limit
    };
    let read = wal.dead_letters(from, scan).map_err(|e| e.to_string())?;
    let mut page = DeadLettersPage::default();
    for dl in &read {
        let r = &dl.record;
        if q.topic
            .as_deref()
            .is_some_and(|f| !filter_matches(f, &r.topic))
        {
            continue;
        }
        if page.dead_letters.len() >= q.limit {
            break;
        }
        let rec = r.as_record_ref();
        page.dead_letters.push(DeadLetterView {
            record: view(r.seq, &rec, router, now_ms),
            reason: dl.reason.clone(),
            parked_at_ms: dl.parked_at_ms,
        });
    }
    let last_shown = page.dead_letters.last().map(|d| d.record.seq);
    if page.dead_letters.len() >= q.limit {
        page.next = last_shown.map(|l| l + 1);
    } else if read.len() >= scan {
        page.next = read.last().map(|d| d.record.seq + 1);
    }
    Ok(page)
}

fn view(seq: u64, rec: &RecordRef<'_>, router: &mut Router, now_ms: u64) -> RecordView {
    let (kafka_topic, route_error) = match router.route(rec.topic) {
        Ok(t) => (Some(t.to_string()), None),
        Err(e) => (None, Some(e)),
    };
    let (preview, preview_encoding, truncated) = admin::preview(rec.payload);
    RecordView {
        seq,
        mqtt_topic: rec.topic.to_string(),
        qos: rec.qos,
        retain: rec.retain,
        received_at_ms: rec.receive_time_ms,
        age_seconds: now_ms.saturating_sub(rec.receive_time_ms) as f64 / 1000.0,
        kafka_topic,
        route_error,
        size: rec.payload.len(),
        preview,
        preview_encoding,
        truncated,
    }
}

/// Dead letters a replay or purge takes at most per request.
pub const MAX_SELECTED: usize = 1_000_000;

/// The sequences of the dead letters `sel` picks, in order (at most
/// [`MAX_SELECTED`]).
pub fn select_dead_letters(wal: &Wal, sel: &admin::Selection) -> Result<Vec<u64>, String> {
    let mut from = sel.from.unwrap_or(1).max(1);
    let mut seqs = Vec::new();
    loop {
        let page = wal.dead_letters(from, 1000).map_err(|e| e.to_string())?;
        let Some(last) = page.last().map(|d| d.record.seq) else {
            break;
        };
        for dl in &page {
            let seq = dl.record.seq;
            if sel.to.is_some_and(|t| seq > t) {
                return Ok(seqs);
            }
            if sel
                .topic
                .as_deref()
                .is_some_and(|f| !filter_matches(f, &dl.record.topic))
                || sel
                    .reason
                    .as_deref()
                    .is_some_and(|r| !dl.reason.contains(r))
            {
                continue;
            }
            seqs.push(seq);
            if seqs.len() >= MAX_SELECTED {
                return Ok(seqs);
            }
        }
        from = last + 1;
    }
    Ok(seqs)
}

/// Records `/backlog/topics` reads from the oldest on, at most, to find each row's
/// oldest record (a few milliseconds; rows not found by then have none older than the
/// last record read, which the answer says).
pub const OLDEST_SCAN: usize = 100_000;

/// The backlog per Kafka topic (routed by `router` as the forwarder would now) or per
/// MQTT topic: the WAL's per-topic counts, grouped, the `limit` largest, and their
/// oldest records found by reading forward from the oldest record.
pub fn backlog_topics(
    wal: &Wal,
    router: &mut Router,
    by: admin::GroupBy,
    limit: usize,
    now_ms: u64,
) -> Result<admin::TopicsPage, String> {
    use std::collections::HashMap;

    let mut key = |mqtt_topic: &str| -> (String, Option<String>) {
        match by {
            admin::GroupBy::Mqtt => (mqtt_topic.to_string(), None),
            admin::GroupBy::Kafka => match router.route(mqtt_topic) {
                Ok(t) => (t.to_string(), None),
                Err(e) => (String::new(), Some(e)),
            },
        }
    };
    let mut rows: HashMap<String, admin::TopicRow> = HashMap::new();
    for t in wal.topic_backlog().map_err(|e| e.to_string())? {
        let (topic, route_error) = key(&t.topic);
        let row = rows
            .entry(topic.clone())
            .or_insert_with(|| admin::TopicRow {
                topic,
                route_error,
                ..admin::TopicRow::default()
            });
        row.records += t.records;
        row.bytes += t.bytes;
    }
    let mut page = admin::TopicsPage::top(by, limit, rows.into_values().collect());
    let mut missing: HashMap<String, usize> = page
        .topics
        .iter()
        .enumerate()
        .map(|(i, r)| (r.topic.clone(), i))
        .collect();
    let mut last_time = None;
    let scanned = if missing.is_empty() {
        0
    } else {
        wal.for_each_from(1, OLDEST_SCAN, usize::MAX, |_, rec| {
            last_time = Some(rec.receive_time_ms);
            if let Some(i) = missing.remove(&key(rec.topic).0) {
                let row = &mut page.topics[i];
                row.oldest_receive_time_ms = Some(rec.receive_time_ms);
                row.oldest_age_seconds =
                    Some(now_ms.saturating_sub(rec.receive_time_ms) as f64 / 1000.0);
            }
            if missing.is_empty() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .map_err(|e| e.to_string())?
    };
    page.oldest_scan = admin::OldestScan {
        records: scanned as u64,
        complete: missing.is_empty(),
        last_receive_time_ms: last_time,
    };
    Ok(page)
}
