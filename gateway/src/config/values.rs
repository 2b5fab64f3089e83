//! The value syntaxes: sizes (`"8 MiB"`) and broker URIs (`ssl://host:8883`).

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A size in bytes: an integer, or a string such as `"8 MiB"`, `"512KiB"`, `"1MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 1048576, \"512KiB\", \"8MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// A broker address parsed from `mqtt.server_uris`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUri {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS on.
    pub tls: bool,
}

impl fmt::Display for ServerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "ssl" } else { "tcp" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// Parse `tcp://host:port`, `mqtt://`, `ssl://`, `mqtts://`, `tls://` (port defaults to
/// 1883, or 8883 with TLS); a bare `host:port` means tcp.
pub fn parse_server_uri(s: &str) -> Result<ServerUri, String> {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("tcp".to_string(), s),
    };
    let tls = match scheme.as_str() {
        "tcp" | "mqtt" => false,
        "ssl" | "mqtts" | "tls" => true,
        other => {
            return Err(format!(
                "unsupported scheme {other:?} in {s:?} (use tcp:// or ssl://)"
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(stripped) = rest.strip_prefix('[') {
        // [ipv6]:port
        let (h, p) = stripped
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {s:?}"))?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("no host in {s:?}"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("invalid port {p:?} in {s:?}"))?,
        None if tls => 8883,
        None => 1883,
    };
    Ok(ServerUri { host, port, tls })
}
