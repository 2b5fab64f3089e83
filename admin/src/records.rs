//! `GET /records`: a page of the backlog as operators read it (peek), without
//! changing anything.

use serde::Serialize;

/// Records per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 20;
/// Most records per page.
pub const MAX_LIMIT: usize = 1000;
/// Payload bytes shown.
pub const PREVIEW_BYTES: usize = 256;

/// What a `/records` request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsQuery {
    /// First sequence (the oldest record when absent).
    pub from: Option<u64>,
    /// Records at most (1..=[`MAX_LIMIT`]).
    pub limit: usize,
    /// Only records whose MQTT topic matches this filter (`+` and `#` wildcards).
    pub topic: Option<String>,
}

impl RecordsQuery {
    /// Parse a query string (`from=SEQ&limit=N&topic=FILTER`); `Err` names the bad key.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut q = Self {
            from: None,
            limit: DEFAULT_LIMIT,
            topic: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| format!("{k}: bad percent-encoding"))?;
            match k {
                "from" => {
                    q.from = Some(
                        v.parse()
                            .map_err(|_| format!("from: not a sequence number: {v:?}"))?,
                    )
                }
                "limit" => {
                    let n: usize = v
                        .parse()
                        .map_err(|_| format!("limit: not a number: {v:?}"))?;
                    if n == 0 || n > MAX_LIMIT {
                        return Err(format!("limit: must be 1 to {MAX_LIMIT}"));
                    }
                    q.limit = n;
                }
                "topic" if !v.is_empty() => q.topic = Some(v),
                "topic" => {}
                other => return Err(format!("unknown parameter {other:?} (from, limit, topic)")),
            }
        }
        Ok(q)
    }
}

/// One page of records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecordsPage {
    /// The records, oldest first.
    pub records: Vec<RecordView>,
    /// Where the next page starts (`from=`), if there may be more.
    pub next: Option<u64>,
}

/// One record as `/records` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecordView {
    /// WAL sequence number.
    pub seq: u64,
    /// MQTT topic it was published on.
    pub mqtt_topic: String,
    /// MQTT QoS it was received with.
    pub qos: u8,
    /// MQTT retain flag.
    pub retain: bool,
    /// Receive time, Unix milliseconds.
    pub received_at_ms: u64,
    /// Seconds since it was received.
    pub age_seconds: f64,
    /// The Kafka topic it is routed to now; `None` with the reason when the route
    /// refuses it.
    pub kafka_topic: Option<String>,
    /// Why it cannot be routed, if so.
    pub route_error: Option<String>,
    /// Payload bytes.
    pub size: usize,
    /// The payload's first bytes: UTF-8 text (up to [`PREVIEW_BYTES`]) or base64.
    pub preview: String,
    /// `"utf8"` or `"base64"`.
    pub preview_encoding: &'static str,
    /// True when the preview is shorter than the payload.
    pub truncated: bool,
}

/// One page of dead letters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLettersPage {
    /// The parked records, by sequence.
    pub dead_letters: Vec<DeadLetterView>,
    /// Where the next page starts (`from=`), if there may be more.
    pub next: Option<u64>,
}

/// One parked record as `/dead-letters` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLetterView {
    /// The record (its original sequence, topics, preview).
    #[serde(flatten)]
    pub record: RecordView,
    /// Why it was parked.
    pub reason: String,
    /// When it was parked, Unix milliseconds.
    pub parked_at_ms: u64,
}

/// The preview of a payload: (text, encoding, truncated).
pub fn preview(payload: &[u8]) -> (String, &'static str, bool) {
    let head = &payload[..payload.len().min(PREVIEW_BYTES)];
    let truncated = head.len() < payload.len();
    match std::str::from_utf8(head) {
        Ok(s) => (s.to_string(), "utf8", truncated),
        // Cut in the middle of a character: show the complete ones.
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 && truncated => (
            String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned(),
            "utf8",
            true,
        ),
        Err(_) => {
            let head = &payload[..payload.len().min(PREVIEW_BYTES * 3 / 4)];
            (base64(head), "base64", head.len() < payload.len())
        }
    }
}

/// Standard base64 with padding (RFC 4648).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `%XX` and `+` decoding of a query value; `None` on a bad escape or non-UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_name_the_key() {
        assert_eq!(
            RecordsQuery::parse(None).unwrap(),
            RecordsQuery {
                from: None,
                limit: DEFAULT_LIMIT,
                topic: None
            }
        );
        let q = RecordsQuery::parse(Some("from=42&limit=1000&topic=sensors%2F%2B%2Ftemp")).unwrap();
        assert_eq!(q.from, Some(42));
        assert_eq!(q.limit, 1000);
        assert_eq!(q.topic.as_deref(), Some("sensors/+/temp"));
        for (bad, key) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("from=-1", "from"),
            ("from=x", "from"),
            ("topic=%zz", "topic"),
            ("colour=red", "colour"),
        ] {
            let e = RecordsQuery::parse(Some(bad)).unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn selections_need_a_choice_or_all() {
        assert!(Selection::parse(None).unwrap_err().contains("all=true"));
        assert_eq!(
            Selection::parse(Some("all=true")).unwrap(),
            Selection::default()
        );
        let s = Selection::parse(Some("from=3&to=9&topic=a%2F%23&reason=too+large")).unwrap();
        assert_eq!(
            s.describe(),
            "from 3, to 9, topic a/#, reason containing \"too large\""
        );
        assert!(Selection::parse(Some("from=9&to=3")).is_err());
        assert!(Selection::parse(Some("seq=1")).unwrap_err().contains("seq"));
    }

    #[test]
    fn previews_are_text_or_base64() {
        assert_eq!(preview(b"21.5"), ("21.5".into(), "utf8", false));
        let long = "é".repeat(200); // 400 bytes: cut inside a character
        let (p, enc, cut) = preview(long.as_bytes());
        assert_eq!((enc, cut), ("utf8", true));
        assert_eq!(p, "é".repeat(128));
        assert_eq!(
            preview(&[0xff, 0x00, 0x10]),
            ("/wAQ".into(), "base64", false)
        );
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let (p, enc, cut) = preview(&[0xffu8; 1000]);
        assert_eq!((enc, cut, p.len()), ("base64", true, 256));
        assert_eq!(preview(b""), (String::new(), "utf8", false));
    }
}

/// Which dead letters a replay or purge takes (`POST /dead-letters/replay|purge`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Sequences from this one on.
    pub from: Option<u64>,
    /// Sequences up to this one.
    pub to: Option<u64>,
    /// MQTT topic filter (`+`, `#`).
    pub topic: Option<String>,
    /// Only those whose reason contains this text.
    pub reason: Option<String>,
}

impl Selection {
    /// Parse `from`, `to`, `topic`, `reason` and `all=true`. Nothing chosen and no
    /// `all=true` is refused: a bare request must not take the whole table.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut sel = Self::default();
        let mut all = false;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| format!("{k}: bad percent-encoding"))?;
            let seq = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}: not a sequence number: {v:?}"))
            };
            match k {
                "from" => sel.from = Some(seq(&v)?),
                "to" => sel.to = Some(seq(&v)?),
                "topic" if !v.is_empty() => sel.topic = Some(v),
                "reason" if !v.is_empty() => sel.reason = Some(v),
                "all" if v == "true" => all = true,
                "topic" | "reason" | "all" => {}
                other => {
                    return Err(format!(
                        "unknown parameter {other:?} (from, to, topic, reason, all=true)"
                    ))
                }
            }
        }
        if sel == Self::default() && !all {
            return Err(
                "choose dead letters with from, to, topic or reason, or pass all=true".into(),
            );
        }
        if let (Some(f), Some(t)) = (sel.from, sel.to) {
            if f > t {
                return Err(format!("from {f} is after to {t}"));
            }
        }
        Ok(sel)
    }

    /// The selection in words, for logs and answers.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(f) = self.from {
            parts.push(format!("from {f}"));
        }
        if let Some(t) = self.to {
            parts.push(format!("to {t}"));
        }
        if let Some(t) = &self.topic {
            parts.push(format!("topic {t}"));
        }
        if let Some(r) = &self.reason {
            parts.push(format!("reason containing {r:?}"));
        }
        if parts.is_empty() {
            "all".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Replay or purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterAction {
    /// Put them back in front of the forwarder (appended again, in their order).
    Replay,
    /// Delete them for good.
    Purge,
}

/// What a replay or purge did.
#[derive(Debug, Clone, Serialize)]
pub struct ActionOutcome {
    /// Replay or purge.
    pub action: DeadLetterAction,
    /// The selection, in words.
    pub selection: String,
    /// Dead letters the selection matched.
    pub matched: u64,
    /// Dead letters replayed or purged (fewer when some went in between).
    pub done: u64,
    /// With a replay: the sequence the first replayed record got.
    pub first_seq: Option<u64>,
}
