//! The output file: a header with the notes and the keys the gateway does not need,
//! then the tables, each setting under comments naming its Connect source, then the
//! gateway's own main settings commented out with their defaults.

use std::fmt::Write;
use std::path::Path;

use super::plan::{Plan, Setting};

const WIDTH: usize = 88;

/// Word-wrap `text` into comment lines: `first` starts the first line, `next` the
/// others (both with their trailing space).
pub fn wrap(text: &str, first: &str, next: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in words(text) {
        if !empty && line.len() + 1 + word.len() > WIDTH {
            lines.push(line);
            line = next.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(&word);
        empty = false;
    }
    lines.push(line);
    lines
}

/// The words of `text`; a `quoted command` counts as one word, so it stays on one line
/// and can be copied.
fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut open = false;
    for w in text.split_whitespace() {
        if open {
            let last = out.last_mut().expect("an open quote has a word");
            last.push(' ');
            last.push_str(w);
        } else {
            out.push(w.to_string());
        }
        if w.matches('`').count() % 2 == 1 {
            open = !open;
        }
    }
    out
}

fn settings(out: &mut String, list: &[Setting]) {
    for s in list {
        for c in &s.comments {
            let _ = writeln!(out, "# {c}");
        }
        let hash = if s.active { "" } else { "# " };
        let _ = writeln!(out, "{hash}{} = {}", s.key, s.value);
    }
}

/// The output file's text.
pub fn render(plan: &Plan, inputs: &[(&str, &Path)], output: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# mqtt-kafka-gateway configuration, imported from Kafka Connect by\n# `mqtt-kafka-gateway import-connect` (version {}) from",
        env!("CARGO_PKG_VERSION")
    );
    for (what, path) in inputs {
        let _ = writeln!(out, "#   {what}: {}", path.display());
    }
    let _ = writeln!(
        out,
        "# Each setting names the Connect key it comes from; no secret is written here.\n# Check the file with:\n#   mqtt-kafka-gateway check-config --config {}\n# The README's \"Configuration reference\" describes every key.",
        output.display()
    );
    if !plan.notes.is_empty() {
        out.push_str(
            "#\n# Where the gateway differs from Connect (the import printed these too):\n",
        );
        for n in &plan.notes {
            for l in wrap(&format!("{}: {}", n.key, n.text), "# - ", "#   ") {
                let _ = writeln!(out, "{l}");
            }
        }
    }
    if !plan.not_needed.is_empty() {
        out.push_str("#\n# Connect settings the gateway does not need:\n");
        // Grouped by reason, in the order they first appear.
        let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
        for (source, why) in &plan.not_needed {
            match groups.iter_mut().find(|(w, _)| w == why) {
                Some((_, sources)) => sources.push(source),
                None => groups.push((why, vec![source])),
            }
        }
        for (why, sources) in groups {
            for s in sources {
                let _ = writeln!(out, "# - {s}");
            }
            for l in wrap(why, "#     ", "#     ") {
                let _ = writeln!(out, "{l}");
            }
        }
    }
    out.push_str(
        "\n# The gateway's id in the gateway.id header of every Kafka record (default: the\n# host name).\n# gateway_id = \"edge-site-1\"\n",
    );
    for (table, list) in [
        ("mqtt", &plan.mqtt),
        ("mqtt.tls", &plan.mqtt_tls),
        ("kafka", &plan.kafka),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n[{table}]");
        settings(&mut out, list);
    }
    out.push_str(
        "\n[kafka.properties]\n# librdkafka producer properties (Java names translated). The gateway enforces\n# acks=all and enable.idempotence=true.\n",
    );
    settings(&mut out, &plan.properties);
    out.push_str(GATEWAY_DEFAULTS);
    out
}

/// The gateway's own main settings, with no Connect counterpart.
const GATEWAY_DEFAULTS: &str = r#"
# The gateway's own settings, with no Connect counterpart: uncomment to change the
# defaults shown. The README's "Configuration reference" lists the others.
#
# [wal]
# The write-ahead log: messages wait here, on disk, until Kafka has them. A relative
# path is resolved from the gateway's working directory: give an absolute one (the
# Debian package uses /var/lib/mqtt-kafka-gateway).
# dir = "./data"
# Stop acknowledging MQTT while the disk has less free space than this.
# min_free_space = "64MiB"
#
# [admin]
# The admin HTTP API (/healthz, /readyz, /backlog, /metrics) and the operator console.
# listen = "127.0.0.1:9080"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_words_whole_and_lines_short() {
        let text = "word ".repeat(40);
        let lines = wrap(&text, "# - ", "#   ");
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.len() <= WIDTH), "{lines:?}");
        assert!(lines[0].starts_with("# - word"));
        assert!(lines[1].starts_with("#   word"));
        // A word longer than the width stays whole on its own line.
        let long = "x".repeat(100);
        assert_eq!(wrap(&long, "# ", "# "), vec![format!("# {long}")]);
        // A `quoted command` is not broken.
        let cmd = format!("run `{}` now", "x y ".repeat(30).trim_end());
        let lines = wrap(&cmd, "# ", "# ");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[1].starts_with("# `x y") && lines[1].ends_with("y`"));
    }
}
