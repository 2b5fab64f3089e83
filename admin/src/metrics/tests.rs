//! The Prometheus text: families, histograms, escaping.

use super::*;

#[test]
fn histogram_buckets_are_cumulative_with_inf_sum_and_count() {
    let s = Snapshot {
        wal_commit_seconds: crate::Histogram {
            buckets: vec![(0.001, 3), (0.02, 7)],
            sum: 0.0425,
            count: 9,
        },
        ..Snapshot::default()
    };
    let text = render(&s);
    for line in [
        "# TYPE mkg_wal_commit_duration_seconds histogram",
        "mkg_wal_commit_duration_seconds_bucket{le=\"0.001\"} 3",
        "mkg_wal_commit_duration_seconds_bucket{le=\"0.02\"} 7",
        "mkg_wal_commit_duration_seconds_bucket{le=\"+Inf\"} 9",
        "mkg_wal_commit_duration_seconds_sum 0.0425",
        "mkg_wal_commit_duration_seconds_count 9",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

/// Every metric the example alerts and the Grafana dashboard in docs/ use is one
/// the gateway exports (with every forecast known and a per-topic backlog).
#[test]
fn the_docs_use_only_exported_metrics() {
    let s = Snapshot {
        rates: crate::Rates {
            ingest_1m: Some(1.0),
            ingest_5m: Some(1.0),
            drain_1m: Some(1.0),
            drain_5m: Some(1.0),
            eta_empty_seconds: Some(1.0),
            disk_free_bytes: Some(1),
            disk_headroom_bytes: Some(1),
            backlog_growth_bytes_per_second: Some(1.0),
            eta_ingest_pause_seconds: Some(1.0),
        },
        ..Snapshot::default()
    };
    let mut text = render(&s);
    let page = crate::TopicsPage::top(
        crate::GroupBy::Kafka,
        5,
        vec![crate::TopicRow {
            topic: "t".into(),
            records: 1,
            oldest_age_seconds: Some(1.0),
            ..Default::default()
        }],
    );
    render_topics(&mut text, &page);
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/");
    for doc in ["prometheus-alerts.yml", "grafana-dashboard.json"] {
        let body = std::fs::read_to_string(format!("{dir}{doc}")).unwrap();
        let mut used = 0;
        for (i, _) in body.match_indices("mkg_") {
            let name: String = body[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|x| name.strip_suffix(x))
                .unwrap_or(&name);
            assert!(
                exported.contains(base),
                "{doc} uses {name}, which is not exported"
            );
            used += 1;
        }
        assert!(used > 5, "{doc}: only {used} metrics found");
    }
}

#[test]
fn topics_render_one_sample_per_row_and_other() {
    let mut page = crate::TopicsPage::top(
        crate::GroupBy::Kafka,
        1,
        vec![
            crate::TopicRow {
                topic: "tele\"metry".into(),
                records: 5,
                bytes: 50,
                oldest_age_seconds: Some(2.5),
                ..Default::default()
            },
            crate::TopicRow {
                topic: "alarms".into(),
                records: 1,
                bytes: 10,
                ..Default::default()
            },
        ],
    );
    page.oldest_scan.complete = true;
    let mut out = String::new();
    render_topics(&mut out, &page);
    assert!(
        out.contains("mkg_backlog_topic_records{topic=\"tele\\\"metry\"} 5\n"),
        "{out}"
    );
    assert!(
        out.contains("mkg_backlog_topic_bytes{topic=\"(other)\"} 10\n"),
        "{out}"
    );
    assert!(
        out.contains("mkg_backlog_topic_oldest_age_seconds{topic=\"tele\\\"metry\"} 2.5\n"),
        "{out}"
    );
    assert!(
        !out.contains("oldest_age_seconds{topic=\"(other)\"}"),
        "{out}"
    );
}

#[test]
fn escapes_label_values() {
    assert_eq!(escape_label("plain"), "plain");
    assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
}

#[test]
fn floats_use_prometheus_spelling() {
    assert_eq!(float(1.5), "1.5");
    assert_eq!(float(0.0), "0");
    assert_eq!(float(f64::INFINITY), "+Inf");
    assert_eq!(float(f64::NEG_INFINITY), "-Inf");
    assert_eq!(float(f64::NAN), "NaN");
}

#[test]
fn every_sample_has_help_and_type() {
    let text = render(&Snapshot::default());
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        samples += 1;
        let sample = line.split(['{', ' ']).next().unwrap();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = sample.strip_suffix(suffix)?;
                text.contains(&format!("# TYPE {base} histogram"))
                    .then_some(base)
            })
            .unwrap_or(sample);
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "no TYPE for {name}"
        );
        assert!(name.starts_with("mkg_"), "{name} lacks the mkg_ prefix");
    }
    assert_eq!(samples, 55);
    assert!(text.ends_with('\n'));
}
