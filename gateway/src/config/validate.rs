//! Loading a file and the checks that need more than one key.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::route::{self, Router};

/// A loaded, validated configuration plus what was derived from it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file as written (with defaults).
    pub config: Config,
    /// Parsed `mqtt.server_uris`.
    pub servers: Vec<ServerUri>,
    /// The MQTT password, from `password` or `password_file`.
    pub password: Option<Secret>,
    /// The admin API's bearer token, from `admin.token_file`.
    pub admin_token: Option<Secret>,
    /// The admin API's TLS configuration, from `[admin.tls]`.
    pub admin_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// The topic router.
    pub router: Router,
    /// The librdkafka properties as strings, ready for the producer (without
    /// `sasl.password`, which is `kafka_sasl_password`).
    pub producer_properties: Vec<(String, String)>,
    /// The Kafka SASL password, from `kafka.sasl_password_file` or
    /// `kafka.properties."sasl.password"`.
    pub kafka_sasl_password: Option<Secret>,
}

impl Config {
    /// Read, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::from_toml(&text, &file)
    }

    /// Parse and validate TOML text; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Loaded, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError {
            file: file.into(),
            key: "(syntax)".into(),
            reason: e.to_string().trim().to_string(),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let reason = inner.message().to_string();
            let location = inner
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError {
                file: file.into(),
                key: if path == "." {
                    "(top level)".into()
                } else {
                    path
                },
                reason: format!("{reason}{location}"),
            }
        })?;
        config.validate(file)
    }

    fn validate(self, file: &str) -> Result<Loaded, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: file.into(),
            key: key.into(),
            reason,
        };
        if self.gateway_id.trim().is_empty() {
            return Err(err("gateway_id", "must not be empty".into()));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|e| err("log", format!("invalid log filter: {e}")))?;

        // MQTT
        let m = &self.mqtt;
        if m.server_uris.is_empty() {
            return Err(err("mqtt.server_uris", "needs at least one URI".into()));
        }
        let mut servers = Vec::new();
        for (i, uri) in m.server_uris.iter().enumerate() {
            let s = parse_server_uri(uri).map_err(|r| err(&format!("mqtt.server_uris[{i}]"), r))?;
            if s.tls && m.tls.is_none() {
                // Webpki roots are not bundled: a TLS URI needs the CA to trust.
                return Err(err(
                    &format!("mqtt.server_uris[{i}]"),
                    format!("{uri:?} uses TLS but [mqtt.tls] ca_file is not set"),
                ));
            }
            servers.push(s);
        }
        if m.client_id.is_empty() || m.client_id.len() > 65535 {
            return Err(err("mqtt.client_id", "must be 1..65535 bytes".into()));
        }
        if m.keep_alive < Duration::from_secs(1) && !m.keep_alive.is_zero() {
            return Err(err(
                "mqtt.keep_alive",
                "must be 0 (off) or at least 1s".into(),
            ));
        }
        if m.keep_alive.as_secs() > u16::MAX as u64 {
            return Err(err("mqtt.keep_alive", "must be at most 65535s".into()));
        }
        if m.connection_timeout < Duration::from_secs(1) {
            return Err(err("mqtt.connection_timeout", "must be at least 1s".into()));
        }
        if m.reconnect_min_delay.is_zero() || m.reconnect_min_delay > m.reconnect_max_delay {
            return Err(err(
                "mqtt.reconnect_min_delay",
                "must be > 0 and <= mqtt.reconnect_max_delay".into(),
            ));
        }
        if m.topics.is_empty() {
            return Err(err("mqtt.topics", "needs at least one topic filter".into()));
        }
        for (i, t) in m.topics.iter().enumerate() {
            route::validate_filter(&t.filter)
                .map_err(|r| err(&format!("mqtt.topics[{i}].filter"), r))?;
            if t.qos > 2 {
                return Err(err(
                    &format!("mqtt.topics[{i}].qos"),
                    format!("must be 0, 1 or 2, not {}", t.qos),
                ));
            }
        }
        if m.max_packet_size.0 < 1024 || m.max_packet_size.0 > 268_435_455 {
            return Err(err(
                "mqtt.max_packet_size",
                "must be between 1 KiB and 256 MiB (the MQTT limit)".into(),
            ));
        }
        let password = match (&m.password, &m.password_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "mqtt.password_file",
                    "set either mqtt.password or mqtt.password_file, not both".into(),
                ))
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f).map_err(|e| {
                    err(
                        "mqtt.password_file",
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?;
                Some(Secret(text.trim_end_matches(['\r', '\n']).to_string()))
            }
            (None, None) => None,
        };
        if password.is_some() && m.username.is_none() {
            return Err(err(
                "mqtt.username",
                "a password is set but no username".into(),
            ));
        }
        if let Some(tls) = &m.tls {
            check_readable(&tls.ca_file).map_err(|r| err("mqtt.tls.ca_file", r))?;
            match (&tls.client_cert_file, &tls.client_key_file) {
                (Some(c), Some(k)) => {
                    check_readable(c).map_err(|r| err("mqtt.tls.client_cert_file", r))?;
                    check_readable(k).map_err(|r| err("mqtt.tls.client_key_file", r))?;
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err(err(
                        "mqtt.tls.client_key_file",
                        "client_cert_file is set, so client_key_file is needed too".into(),
                    ))
                }
                (None, Some(_)) => {
                    return Err(err(
                        "mqtt.tls.client_cert_file",
                        "client_key_file is set, so client_cert_file is needed too".into(),
                    ))
                }
            }
        }

        // Kafka
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            return Err(err("kafka.bootstrap_servers", "must not be empty".into()));
        }
        let router = Router::new(k).map_err(|(key, reason)| err(&key, reason))?;
        let mut producer_properties = Vec::new();
        let mut kafka_sasl_password = None;
        for (name, value) in &k.properties {
            let key = format!("kafka.properties.\"{name}\"");
            let v = value.to_string();
            match name.as_str() {
                "bootstrap.servers" | "metadata.broker.list" => {
                    return Err(err(&key, "set kafka.bootstrap_servers instead".into()))
                }
                "acks" | "request.required.acks" if v != "all" && v != "-1" => {
                    return Err(err(
                        &key,
                        "must be \"all\": records are deleted from the WAL only once every in-sync replica has them".into(),
                    ))
                }
                "enable.idempotence" if v != "true" => {
                    return Err(err(
                        &key,
                        "must stay true: it keeps per-key order across retries".into(),
                    ))
                }
                "transactional.id" => {
                    return Err(err(&key, "transactions are not supported".into()))
                }
                "dr_msg_cb" | "dr_cb" | "opaque" | "default_topic_conf" => {
                    return Err(err(&key, "is managed by the gateway".into()))
                }
                "sasl.password" => {
                    kafka_sasl_password = Some(Secret(v));
                    continue;
                }
                _ => {}
            }
            producer_properties.push((name.clone(), v));
        }
        if let Some(f) = &k.sasl_password_file {
            if kafka_sasl_password.is_some() {
                return Err(err(
                    "kafka.sasl_password_file",
                    "set either kafka.sasl_password_file or kafka.properties.\"sasl.password\", not both".into(),
                ));
            }
            let text = std::fs::read_to_string(f).map_err(|e| {
                err(
                    "kafka.sasl_password_file",
                    format!("cannot read {}: {e}", f.display()),
                )
            })?;
            let pw = text.trim_end_matches(['\r', '\n']);
            if pw.is_empty() {
                return Err(err(
                    "kafka.sasl_password_file",
                    format!("{} is empty", f.display()),
                ));
            }
            kafka_sasl_password = Some(Secret(pw.to_string()));
        }

        // WAL and forwarder
        if self.wal.dir.as_os_str().is_empty() {
            return Err(err("wal.dir", "must not be empty".into()));
        }
        if self.wal.max_batch_records == 0 {
            return Err(err("wal.max_batch_records", "must be at least 1".into()));
        }
        if self.wal.max_batch_bytes.0 == 0 {
            return Err(err("wal.max_batch_bytes", "must be at least 1".into()));
        }
        if self.wal.commit_linger > Duration::from_secs(1) {
            return Err(err("wal.commit_linger", "must be at most 1s".into()));
        }
        if self.wal.sync_linger > Duration::from_secs(1) {
            return Err(err("wal.sync_linger", "must be at most 1s".into()));
        }
        if self.wal.checkpoint_bytes.0 < 64 << 10 {
            return Err(err(
                "wal.checkpoint_bytes",
                "must be at least 64 KiB".into(),
            ));
        }
        if self.wal.cache_size.0 < 1 << 20 {
            return Err(err("wal.cache_size", "must be at least 1 MiB".into()));
        }
        if let Some(b) = self.wal.max_bytes {
            if b.0 < (1 << 20).max(m.max_packet_size.0) {
                return Err(err(
                    "wal.max_bytes",
                    "must be at least 1 MiB and at least mqtt.max_packet_size".into(),
                ));
            }
        }
        if self.wal.max_records == Some(0) {
            return Err(err("wal.max_records", "must be at least 1".into()));
        }
        if self.wal.max_age.is_some_and(|a| a < Duration::from_secs(1)) {
            return Err(err("wal.max_age", "must be at least 1s".into()));
        }
        if self.forward.max_in_flight_records == 0 || self.forward.max_in_flight_records > 1_000_000
        {
            return Err(err(
                "forward.max_in_flight_records",
                "must be between 1 and 1000000".into(),
            ));
        }
        if self.forward.max_in_flight_bytes.0 < m.max_packet_size.0 {
            return Err(err(
                "forward.max_in_flight_bytes",
                "must be at least mqtt.max_packet_size so the largest record fits".into(),
            ));
        }
        if self.forward.ack_interval.is_zero() {
            return Err(err("forward.ack_interval", "must be > 0".into()));
        }
        if self.shutdown.grace_period > Duration::from_secs(3600) {
            return Err(err("shutdown.grace_period", "must be at most 1h".into()));
        }
        let admin_token = self.admin_token().map_err(|(k, r)| err(k, r))?;
        if !(1..=admin::MAX_TOPICS_LIMIT).contains(&self.admin.topics_limit) {
            return Err(err(
                "admin.topics_limit",
                format!("must be 1 to {}", admin::MAX_TOPICS_LIMIT),
            ));
        }
        let admin_tls = match &self.admin.tls {
            None => None,
            Some(t) => Some(crate::tls::server_config(t).map_err(|(k, r)| err(k, r))?),
        };
        let servers_ok = servers;
        Ok(Loaded {
            config: self,
            servers: servers_ok,
            password,
            admin_token,
            admin_tls,
            router,
            producer_properties,
            kafka_sasl_password,
        })
    }
}

impl Config {
    /// The admin token from `admin.token_file`; refused: an empty file, and an admin
    /// API on a non-loopback address without a token (anyone on the network could
    /// read the backlog and, with the routes that change it, drop it).
    fn admin_token(&self) -> Result<Option<Secret>, (&'static str, String)> {
        let a = &self.admin;
        let token = match &a.token_file {
            None => None,
            Some(f) => {
                let text = std::fs::read_to_string(f).map_err(|e| {
                    (
                        "admin.token_file",
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?;
                let t = text.trim_end_matches(['\r', '\n']);
                if t.trim().is_empty() {
                    return Err(("admin.token_file", format!("{} is empty", f.display())));
                }
                if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err((
                        "admin.token_file",
                        format!(
                            "{} holds white space or control characters; a token is one word (e.g. `openssl rand -hex 32`)",
                            f.display()
                        ),
                    ));
                }
                Some(Secret(t.to_string()))
            }
        };
        if a.enabled && token.is_none() && !a.listen.ip().is_loopback() {
            return Err((
                "admin.token_file",
                format!(
                    "admin.listen = {} is not a loopback address: set admin.token_file so that the admin API asks for a token (or listen on 127.0.0.1)",
                    a.listen
                ),
            ));
        }
        Ok(token)
    }
}

fn check_readable(p: &Path) -> Result<(), String> {
    std::fs::File::open(p)
        .map(|_| ())
        .map_err(|e| format!("cannot read {}: {e}", p.display()))
}
