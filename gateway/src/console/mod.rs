//! The command line for a running gateway: `status`, `backlog`, `records` and
//! `dead-letters list` read its admin API (address and token from `--config`, or
//! `--url` / `--token-file`) and print tables, or the JSON with `--json`.
//!
//! Exit codes besides those of [`crate::cli`]: [`EXIT_UNREACHABLE`] when the gateway
//! does not answer, [`EXIT_UNAUTHORIZED`] when it refuses the token.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

mod client;

pub use client::{Client, Failure, Target, EXIT_UNAUTHORIZED, EXIT_UNREACHABLE};

/// `status`: the gateway's state in a few lines.
pub fn status(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "gateway {} (version {}), up {}",
        s(&v["gateway_id"]),
        s(&v["version"]),
        secs(&v["uptime_seconds"])
    );
    let m = &v["mqtt"];
    let _ = writeln!(
        o,
        "MQTT   {} {}, subscribed {}, accepting {}{}",
        if m["connected"] == true {
            "connected to"
        } else {
            "NOT connected to"
        },
        s(&m["server"]),
        yes(&m["subscribed"]),
        yes(&m["accepting"]),
        err(&m["last_error"])
    );
    let w = &v["wal"];
    let _ = writeln!(
        o,
        "WAL    {}, writable {}{}",
        s(&w["path"]),
        yes(&w["writable"]),
        err(&w["last_error"])
    );
    let k = &v["kafka"];
    let held = k["held_topics"].as_array().map_or(0, Vec::len);
    let _ = writeln!(
        o,
        "Kafka  in flight {}, topics held {held}{}",
        n(&k["in_flight"]),
        err(&k["last_error"])
    );
    o.push_str(&backlog(v));
    o
}

/// `backlog`: what waits, how old, what was dropped or parked.
pub fn backlog(v: &Value) -> String {
    let b = &v["backlog"];
    let d = &v["dead_letters"];
    let dropped = &b["dropped"];
    format!(
        "backlog {} records, {} bytes, oldest {} ago (seq {}..{})\n\
         dead letters {} records, {} bytes; dropped by policy: max_bytes {}, max_records {}, max_age {}\n",
        n(&b["records"]),
        n(&b["bytes"]),
        secs(&b["oldest_age_seconds"]),
        n(&b["oldest_seq"]),
        n(&b["newest_seq"]),
        n(&d["records"]),
        n(&d["bytes"]),
        n(&dropped["max_bytes"]),
        n(&dropped["max_records"]),
        n(&dropped["max_age"]),
    ) + &rates(&v["rates"])
}

/// The rates and forecasts, when the answer has them.
fn rates(r: &Value) -> String {
    if r.is_null() {
        return String::new();
    }
    let rate = |x: &Value| x.as_f64().map_or("-".into(), |x| format!("{x:.1}/s"));
    let bytes = |x: &Value| x.as_u64().map_or("-".into(), |x| x.to_string());
    format!(
        "ingest {} (1m) {} (5m), drain {} (1m) {} (5m); empty in {}\n         disk headroom {} bytes; ingest pauses for disk space in {}\n",
        rate(&r["ingest_1m"]),
        rate(&r["ingest_5m"]),
        rate(&r["drain_1m"]),
        rate(&r["drain_5m"]),
        secs(&r["eta_empty_seconds"]),
        bytes(&r["disk_headroom_bytes"]),
        secs(&r["eta_ingest_pause_seconds"]),
    )
}

/// `backlog --topics`: one line per topic, the largest first.
pub fn topics(v: &Value) -> String {
    let by = if v["by"] == "mqtt" { "MQTT" } else { "KAFKA" };
    let mut o = format!(
        "{:<40}  {:>10}  {:>12}  {:>14}\n",
        format!("{by} TOPIC"),
        "RECORDS",
        "BYTES",
        "OLDEST AGE"
    );
    for r in v["topics"].as_array().into_iter().flatten() {
        let name = match r["route_error"].as_str() {
            Some(e) => format!("(no route: {e})"),
            None => s(&r["topic"]),
        };
        let age = if r["oldest_age_seconds"].is_null() {
            "newer".to_string()
        } else {
            secs(&r["oldest_age_seconds"])
        };
        let _ = writeln!(
            o,
            "{name:<40}  {:>10}  {:>12}  {age:>14}",
            n(&r["records"]),
            n(&r["bytes"])
        );
    }
    let other = &v["other"];
    if !other.is_null() {
        let _ = writeln!(
            o,
            "{:<40}  {:>10}  {:>12}",
            format!("({} other topics)", n(&other["topics"])),
            n(&other["records"]),
            n(&other["bytes"])
        );
    }
    if v["oldest_scan"]["complete"] == false {
        let _ = writeln!(
            o,
            "\"newer\": no record among the oldest {} read (the oldest is younger than those)",
            n(&v["oldest_scan"]["records"])
        );
    }
    o
}

/// `records`: one line per record.
pub fn records(v: &Value) -> String {
    let rows = v["records"].as_array().cloned().unwrap_or_default();
    let mut o = format!(
        "{:>10}  {:>9}  {:>3}  {:<28}  {:<20}  {:>8}  PREVIEW\n",
        "SEQ", "AGE", "QOS", "MQTT TOPIC", "KAFKA TOPIC", "BYTES"
    );
    for r in &rows {
        let _ = writeln!(
            o,
            "{:>10}  {:>9}  {:>3}  {:<28}  {:<20}  {:>8}  {}",
            n(&r["seq"]),
            secs(&r["age_seconds"]),
            n(&r["qos"]),
            cut(&s(&r["mqtt_topic"]), 28),
            cut(
                &r["kafka_topic"]
                    .as_str()
                    .map_or_else(|| format!("({})", s(&r["route_error"])), str::to_string),
                20
            ),
            n(&r["size"]),
            preview(r)
        );
    }
    footer(&mut o, rows.len(), &v["next"]);
    o
}

/// `dead-letters list`: one line per parked record.
pub fn dead_letters(v: &Value) -> String {
    let rows = v["dead_letters"].as_array().cloned().unwrap_or_default();
    let mut o = format!(
        "{:>10}  {:<28}  {:>8}  {:<40}  PREVIEW\n",
        "SEQ", "MQTT TOPIC", "BYTES", "REASON"
    );
    for r in &rows {
        let _ = writeln!(
            o,
            "{:>10}  {:<28}  {:>8}  {:<40}  {}",
            n(&r["seq"]),
            cut(&s(&r["mqtt_topic"]), 28),
            n(&r["size"]),
            cut(&s(&r["reason"]), 40),
            preview(r)
        );
    }
    footer(&mut o, rows.len(), &v["next"]);
    o
}

/// `dead-letters replay|purge`: what was done.
pub fn action(v: &Value) -> String {
    let verb = if v["action"] == "replay" {
        "replayed"
    } else {
        "purged"
    };
    let mut o = format!(
        "{} of {} dead letters {verb} (selection: {})",
        n(&v["done"]),
        n(&v["matched"]),
        s(&v["selection"])
    );
    if let Some(first) = v["first_seq"].as_u64() {
        let _ = write!(o, "; back in the backlog from sequence {first}");
    }
    o.push('\n');
    o
}

fn footer(o: &mut String, shown: usize, next: &Value) {
    match next.as_u64() {
        Some(next) => {
            let _ = writeln!(o, "{shown} shown; more from --from {next}");
        }
        None => {
            let _ = writeln!(o, "{shown} shown");
        }
    }
}

fn preview(r: &Value) -> String {
    let p = s(&r["preview"]);
    let p = if r["preview_encoding"] == "base64" {
        format!("base64:{p}")
    } else {
        // One line per record: control characters escaped, the rest as sent.
        p.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    cut(&p, 60)
}

fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut t: String = text.chars().take(width.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn n(v: &Value) -> String {
    v.as_u64().map(|x| x.to_string()).unwrap_or_else(|| s(v))
}

fn yes(v: &Value) -> &'static str {
    if v == true {
        "yes"
    } else {
        "NO"
    }
}

fn err(v: &Value) -> String {
    v.as_str()
        .map(|e| format!("; last error: {e}"))
        .unwrap_or_default()
}

fn secs(v: &Value) -> String {
    let Some(x) = v.as_f64() else {
        return "-".into();
    };
    let d = Duration::from_secs(x.max(0.0) as u64);
    if d.is_zero() {
        format!("{x:.1}s")
    } else {
        humantime::format_duration(d).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_show_what_an_operator_needs() {
        let page = json!({"records": [
            {"seq": 7, "age_seconds": 3725.2, "qos": 1, "mqtt_topic": "sensors/a/temp",
             "kafka_topic": "telemetry", "size": 4, "preview": "21.5", "preview_encoding": "utf8"},
            {"seq": 8, "age_seconds": 0.2, "qos": 2, "mqtt_topic": "x", "kafka_topic": null,
             "route_error": "no route", "size": 3, "preview": "/wAQ", "preview_encoding": "base64"}
        ], "next": 9});
        let t = records(&page);
        assert!(
            t.contains("sensors/a/temp") && t.contains("1h 2m 5s") && t.contains("21.5"),
            "{t}"
        );
        assert!(t.contains("(no route)") && t.contains("base64:/wAQ"), "{t}");
        assert!(t.contains("2 shown; more from --from 9"), "{t}");
        let dl = json!({"dead_letters": [{"seq": 3, "mqtt_topic": "b/x", "size": 1500000,
            "reason": "kafka refused record: message too large", "preview": "huge:0:", "preview_encoding": "utf8"}],
            "next": null});
        let t = dead_letters(&dl);
        assert!(
            t.contains("message too large") && t.contains("1500000") && t.ends_with("1 shown\n"),
            "{t}"
        );
        assert_eq!(cut("abcdef", 4), "abc…");
        let r = json!({"preview": "{\"t\": 1}\nnext", "preview_encoding": "utf8"});
        assert_eq!(preview(&r), "{\"t\": 1}\\nnext");
    }

    #[test]
    fn topics_and_rates_read_as_a_table() {
        let page = json!({"by": "kafka", "limit": 2, "total_topics": 4, "topics": [
            {"topic": "telemetry", "records": 900, "bytes": 90000, "oldest_age_seconds": 125.0},
            {"topic": "", "route_error": "no route for x", "records": 5, "bytes": 50,
             "oldest_age_seconds": null}],
            "other": {"topics": 2, "records": 3, "bytes": 30},
            "oldest_scan": {"records": 100000, "complete": false}});
        let t = topics(&page);
        assert!(t.contains("KAFKA TOPIC") && t.contains("telemetry"), "{t}");
        assert!(
            t.contains("2m 5s") && t.contains("(no route: no route for x)"),
            "{t}"
        );
        assert!(t.contains("(2 other topics)") && t.contains("newer"), "{t}");
        let b = backlog(&json!({"backlog": {"records": 3}, "dead_letters": {},
            "rates": {"ingest_1m": 10.0, "drain_1m": 50.5, "eta_empty_seconds": 61.0}}));
        assert!(
            b.contains("ingest 10.0/s (1m)") && b.contains("drain 50.5/s"),
            "{b}"
        );
        assert!(b.contains("empty in 1m 1s"), "{b}");
    }
}
