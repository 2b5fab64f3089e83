//! The results of one run: every figure by name (also written as one JSON line with
//! `--results`), and the table and detail lines printed at the end.

use serde_json::{Map, Value};

mod details;

/// Every figure of a run by name.
#[derive(Debug, Default)]
pub struct Results(pub Map<String, Value>);

impl Results {
    /// Record a figure.
    pub fn put(&mut self, key: &str, v: impl Into<Value>) {
        self.0.insert(key.to_string(), v.into());
    }

    fn v(&self, path: &str) -> &Value {
        let mut v = self.0.get(path.split('.').next().unwrap_or(path));
        for part in path.split('.').skip(1) {
            v = v.and_then(|x| x.get(part));
        }
        v.unwrap_or(&Value::Null)
    }

    /// A number (0 if missing).
    pub fn f(&self, path: &str) -> f64 {
        self.v(path).as_f64().unwrap_or(0.0)
    }

    /// An integer (0 if missing).
    pub fn n(&self, path: &str) -> u64 {
        self.f(path).round() as u64
    }

    /// The elements of an array (none if missing).
    pub fn list(&self, path: &str) -> Vec<Value> {
        self.v(path).as_array().cloned().unwrap_or_default()
    }

    /// A value as text.
    pub fn s(&self, path: &str) -> String {
        match self.v(path) {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A number as JSON shows it: integers without a fraction.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// The table (markdown) and the detail lines; whether every target was met.
pub fn render(r: &Results) -> (String, bool) {
    let mut rows: Vec<[String; 7]> = Vec::new();
    let mut all_met = true;
    let mut row =
        |n: u32, what: String, fig: String, ceil: &str, ratio: String, target: &str, ok: bool| {
            all_met &= ok;
            rows.push([
                n.to_string(),
                what,
                fig,
                ceil.to_string(),
                ratio,
                target.to_string(),
                if ok { "pass" } else { "MISS" }.to_string(),
            ]);
        };
    let t = thousands;
    let (ir, cr) = (r.n("ingest_rate"), r.n("ceiling_rate"));
    let best = if r.n("ceiling_c_rate") >= r.n("ceiling_rust_rate") {
        "mosquitto_sub -q 1"
    } else {
        "rumqttc subscriber"
    };
    let rounds = r.list("ingest_rounds");
    // The median round's rates: its exact ratio is judged, not the rounded one.
    let ratio = ir as f64 / cr.max(1) as f64;
    // Three decimals where two would round a miss up to the target.
    let shown = if ratio < 0.9 && (ratio * 100.0).round() >= 90.0 {
        format!("{ratio:.3}")
    } else {
        format!("{ratio:.2}")
    };
    let (what, ratio_text) = if rounds.len() > 1 {
        (
            format!(
                "durable ingest, Kafka stopped (median of {} rounds)",
                rounds.len()
            ),
            format!("{shown} (lowest {:.2})", r.f("ingest_ratio_min")),
        )
    } else {
        ("durable ingest, Kafka stopped".to_string(), shown)
    };
    row(
        1,
        what,
        format!("{} msg/s", t(ir)),
        &format!("{} msg/s ({best})", t(cr)),
        ratio_text,
        ">= 0.9",
        ratio >= 0.9,
    );
    let pr = r.n("ingest_paged_rate");
    let before = match r.n("ingest_before_paged_rate") {
        0 => ir,
        b => b,
    };
    let without = (before + r.n("ingest_again_rate")) / 2;
    row(
        1,
        format!(
            "durable ingest while paging the backlog ({} pages of 1,000)",
            t(r.n("ingest_paged_pages"))
        ),
        format!("{} msg/s", t(pr)),
        &format!("{} msg/s (without, before and after)", t(without)),
        format!("{:.2}", pr as f64 / without.max(1) as f64),
        ">= 0.95",
        pr as f64 >= 0.95 * without as f64,
    );
    let (dr, kr) = (r.n("drain_rate"), r.n("kcat_rate"));
    let backlog = t(r.n("walfill_backlog.records"));
    let big = t(r.n("walfill_big.records"));
    row(
        2,
        format!("drain of {backlog} records"),
        format!("{} msg/s", t(dr)),
        &format!("{} msg/s (kcat -P)", t(kr)),
        format!("{:.2}", dr as f64 / kr.max(1) as f64),
        ">= 0.8",
        dr as f64 >= 0.8 * kr as f64,
    );
    let (er, nr) = (r.n("e2e_rate"), r.n("naive_rate"));
    row(
        3,
        "end to end, durable".into(),
        format!("{} msg/s", t(er)),
        &format!("{} msg/s (mosquitto_sub \\| kcat -P)", t(nr)),
        format!("{:.2}", er as f64 / nr.max(1) as f64),
        ">= 1.0",
        er >= nr,
    );
    for rate in crate::latency::RATES {
        let runs = r.list(&format!("latency_{rate}_runs"));
        let p99 = |v: &Value, who: &str| v[who]["p99_ms"].as_f64().unwrap_or(0.0);
        let join = |who: &str| {
            let v: Vec<String> = runs.iter().map(|x| num(p99(x, who))).collect();
            v.join(" / ")
        };
        let ratios: Vec<f64> = runs
            .iter()
            .map(|x| p99(x, "gateway") / p99(x, "naive").max(0.01))
            .collect();
        let worst = ratios.iter().copied().fold(0.0, f64::max);
        let (target, ok) = if rate == 1000 {
            (
                "p99 <= 20 ms and <= 1.5x, every run",
                !runs.is_empty() && runs.iter().all(|x| p99(x, "gateway") <= 20.0) && worst <= 1.5,
            )
        } else {
            ("-", true)
        };
        row(
            4,
            format!("latency at {}/s p99, each of {} runs", t(rate), runs.len()),
            format!("{} ms", join("gateway")),
            &format!("{} ms (naive pipeline)", join("naive")),
            format!("{worst:.2} (worst)"),
            target,
            ok,
        );
        let l = |k: &str| num(r.f(&format!("latency_{rate}.{k}")));
        row(
            4,
            format!("latency at {}/s p50 / p99 / p99.9, worst run", t(rate)),
            format!("{} / {} / {} ms", l("p50_ms"), l("p99_ms"), l("p999_ms")),
            "-",
            "-".into(),
            "-",
            true,
        );
    }
    // Pi-class boards: every phase within 40 MiB.
    const RSS_MAX_KB: u64 = 40 << 10;
    let mut rss_row = |what: String, kb: u64, ceiling: &str, ratio: String| {
        row(
            5,
            what,
            mib(kb),
            ceiling,
            ratio,
            "<= 40 MiB",
            kb <= RSS_MAX_KB,
        );
    };
    rss_row("RSS idle".into(), r.n("rss_idle_kb"), "-", "-".into());
    rss_row(
        "RSS peak under full load (3)".into(),
        r.n("rss_load_kb"),
        "-",
        "-".into(),
    );
    rss_row(
        "RSS 3 s after the burst of 3".into(),
        r.n("rss_after_burst_kb"),
        "-",
        "-".into(),
    );
    let (b1, b2) = (r.n("rss_backlog_kb"), r.n("rss_big_kb"));
    rss_row(
        format!("RSS peak draining {backlog} backlog"),
        b1,
        "-",
        "-".into(),
    );
    rss_row(
        format!("RSS peak with {big} backlog (start + drain)"),
        b2,
        &format!("{} (smaller backlog)", mib(b1)),
        format!("{:.2}", b2 as f64 / b1.max(1) as f64),
    );
    let kcat = r.n("kcat_rate");
    for (i, window) in r
        .s("curve_windows")
        .split(',')
        .filter(|w| !w.is_empty())
        .enumerate()
    {
        let rate = r.n(&format!("curve{i}_rate"));
        row(
            5,
            format!("window {window}: drain rate / peak RSS / RSS 3 s after"),
            format!(
                "{} msg/s / {} / {}",
                t(rate),
                mib(r.n(&format!("curve{i}_rss_kb"))),
                mib(r.n(&format!("curve{i}_after_kb")))
            ),
            &format!("{} msg/s (kcat -P, 2)", t(kcat)),
            format!("{:.2}", rate as f64 / kcat.max(1) as f64),
            "-",
            true,
        );
    }
    row(
        6,
        "disk bytes / payload byte at 1,000/s".into(),
        num(r.f("wa_1000")),
        "-",
        "-".into(),
        "<= 3",
        r.f("wa_1000") <= 3.0,
    );
    row(
        6,
        "disk bytes / payload byte at full speed (3)".into(),
        num(r.f("wa_full")),
        "-",
        "-".into(),
        "-",
        true,
    );
    row(
        7,
        format!("start to ready, {big} backlog"),
        format!("{} ms", r.n("ready_big_ms")),
        &format!("{} ms ({backlog} backlog)", r.n("ready_backlog_ms")),
        "-".into(),
        "<= 1 s",
        r.n("ready_big_ms") <= 1000,
    );
    let sb = r.n("bin_stripped_bytes");
    row(
        8,
        "release binary, stripped".into(),
        format!("{:.1} MiB ({} B)", sb as f64 / (1u64 << 20) as f64, t(sb)),
        "-",
        "-".into(),
        "-",
        true,
    );
    for ms in r.s("sd_delays").split(',').filter(|d| !d.is_empty()) {
        let k = |name: &str| format!("sd{ms}_{name}");
        // The targets are set for a 10 ms fsync; other delays show the curve.
        let at10 = ms == "10";
        let sr = r.n(&k("ingest_rate"));
        row(
            9,
            format!("SD card, fsync +{ms} ms, one core: durable ingest, Kafka stopped"),
            format!("{} msg/s", t(sr)),
            &format!("{} msg/s (as in 1)", t(cr)),
            format!("{:.2}", sr as f64 / cr.max(1) as f64),
            if at10 { ">= 0.9" } else { "-" },
            !at10 || sr as f64 >= 0.9 * cr as f64,
        );
        let l = |x: &str| num(r.f(&format!("sd{ms}_latency_1000.{x}")));
        let p99 = r.f(&format!("sd{ms}_latency_1000.p99_ms"));
        row(
            9,
            format!("SD card, fsync +{ms} ms: latency at 1,000/s p50 / p99 / p99.9"),
            format!("{} / {} / {} ms", l("p50_ms"), l("p99_ms"), l("p999_ms")),
            "-",
            "-".into(),
            if at10 { "p99 <= 50 ms" } else { "-" },
            !at10 || p99 <= 50.0,
        );
        for rate in crate::sdcard::SD_RATES {
            let wa = r.f(&k(&format!("wa_{rate}")));
            let per_day = wa * r.f("size") * rate as f64 * 86_400.0;
            row(
                9,
                format!(
                    "SD card, fsync +{ms} ms: at {}/s, fsyncs/s, disk bytes / payload byte, written per day",
                    t(rate)
                ),
                format!(
                    "{} fsyncs/s, {}, {:.2} GB/day",
                    r.n(&k(&format!("syncs_per_s_{rate}"))),
                    num(wa),
                    per_day / 1e9
                ),
                "-",
                "-".into(),
                if at10 { "<= 3" } else { "-" },
                !at10 || wa <= 3.0,
            );
        }
    }

    let mut out =
        String::from("\n| # | measurement | figure | ceiling | ratio | target | result |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for x in &rows {
        out.push_str(&format!("| {} |\n", x.join(" | ")));
    }
    out.push('\n');
    out.push_str(&details::lines(r));
    (out, all_met)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(14_744_944), "14,744,944");
    }

    #[test]
    fn a_missed_target_is_reported() {
        let mut r = Results::default();
        r.put("ingest_rate", 50);
        r.put("ceiling_rate", 100);
        let (table, met) = render(&r);
        assert!(!met);
        assert!(table.contains("| 1 | durable ingest, Kafka stopped | 50 msg/s | 100 msg/s"));
        assert!(table.contains("MISS"));
    }
}
