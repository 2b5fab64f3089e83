//! Reloading the configuration file on SIGHUP (`systemctl reload`).
//!
//! The file is read and checked like at start. A bad file is refused: logged, counted
//! and shown in `/status`, and the running configuration stays. A good one is split:
//! what can change while running is applied at once (the parts read it from a watch
//! channel), what cannot is named in a log line and in `/status` and left as it was
//! until the next start. SIGHUP never stops the process.
//!
//! Applied live: `log`, `mqtt.topics` (a resubscribe), `mqtt.broker_stats`,
//! `mqtt.session_lost_alert`, `kafka.topic`, `kafka.routes`, `kafka.topic_separator`,
//! `kafka.key`, every `forward.*`, `wal.max_bytes`, `wal.max_records`, `wal.on_full`,
//! `wal.max_age`, `wal.on_expired`, `dead_letters.max_bytes`, `admin.enabled`, `admin.listen`, `admin.token_file`
//! (the token is read again, so a reload rotates it), `admin.tls` (the certificate
//! and key are read again: a renewed certificate is served to new connections),
//! `shutdown.grace_period`. Everything else needs a restart: the MQTT connection
//! (brokers, client id, session, credentials, TLS, timeouts), the Kafka connection
//! (`kafka.bootstrap_servers`, `kafka.properties`), the WAL's files and commits,
//! `gateway_id`.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Config, Loaded};
use crate::state::Shared;

/// Changes the process's log filter (set up by the binary; `None` in tests).
pub type LogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The effective configuration after taking `new`'s live keys into `old`, and the
/// keys of `new` that differ but need a restart.
pub fn merge(old: &Loaded, new: &Loaded) -> (Loaded, Vec<&'static str>) {
    let mut eff = old.clone();
    let (c, n) = (&mut eff.config, &new.config);
    c.log = n.log.clone();
    c.mqtt.topics = n.mqtt.topics.clone();
    c.mqtt.broker_stats = n.mqtt.broker_stats;
    c.mqtt.session_lost_alert = n.mqtt.session_lost_alert;
    c.kafka.topic = n.kafka.topic.clone();
    c.kafka.routes = n.kafka.routes.clone();
    c.kafka.topic_separator = n.kafka.topic_separator;
    c.kafka.key = n.kafka.key;
    c.forward = n.forward.clone();
    c.wal.max_bytes = n.wal.max_bytes;
    c.wal.max_records = n.wal.max_records;
    c.wal.on_full = n.wal.on_full;
    c.wal.max_age = n.wal.max_age;
    c.wal.on_expired = n.wal.on_expired;
    c.dead_letters = n.dead_letters.clone();
    c.admin = n.admin.clone();
    c.shutdown = n.shutdown.clone();
    eff.router = new.router.clone();
    eff.admin_token = new.admin_token.clone();
    eff.admin_tls = new.admin_tls.clone();
    let (e, n) = (&eff.config, &new.config);
    let mut restart = Vec::new();
    macro_rules! differ {
        ($($key:literal => $($field:ident).+),* $(,)?) => {$(
            if e.$($field).+ != n.$($field).+ {
                restart.push($key);
            }
        )*};
    }
    differ!(
        "gateway_id" => gateway_id,
        "mqtt.server_uris" => mqtt.server_uris,
        "mqtt.client_id" => mqtt.client_id,
        "mqtt.clean_session" => mqtt.clean_session,
        "mqtt.connection_timeout" => mqtt.connection_timeout,
        "mqtt.keep_alive" => mqtt.keep_alive,
        "mqtt.username" => mqtt.username,
        "mqtt.password" => mqtt.password,
        "mqtt.password_file" => mqtt.password_file,
        "mqtt.tls" => mqtt.tls,
        "mqtt.max_packet_size" => mqtt.max_packet_size,
        "mqtt.reconnect_min_delay" => mqtt.reconnect_min_delay,
        "mqtt.reconnect_max_delay" => mqtt.reconnect_max_delay,
        "kafka.bootstrap_servers" => kafka.bootstrap_servers,
        "kafka.properties" => kafka.properties,
        "kafka.sasl_password_file" => kafka.sasl_password_file,
        "wal.dir" => wal.dir,
        "wal.max_batch_records" => wal.max_batch_records,
        "wal.max_batch_bytes" => wal.max_batch_bytes,
        "wal.commit_linger" => wal.commit_linger,
        "wal.sync_linger" => wal.sync_linger,
        "wal.journal" => wal.journal,
        "wal.checkpoint_bytes" => wal.checkpoint_bytes,
        "wal.cache_size" => wal.cache_size,
        "wal.quick_repair" => wal.quick_repair,
        "wal.min_free_space" => wal.min_free_space,
    );
    // A changed password file's contents count too.
    if e.mqtt.password_file.is_some() && old.password != new.password {
        restart.push("mqtt.password_file (contents)");
    }
    if e.kafka.sasl_password_file.is_some() && old.kafka_sasl_password != new.kafka_sasl_password {
        restart.push("kafka.sasl_password_file (contents)");
    }
    (eff, restart)
}

/// The keys whose live value changed from `old` to `new` (both effective).
fn applied(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    macro_rules! changed {
        ($($key:literal => $($field:ident).+),* $(,)?) => {$(
            if old.$($field).+ != new.$($field).+ {
                keys.push($key);
            }
        )*};
    }
    changed!(
        "log" => log,
        "mqtt.topics" => mqtt.topics,
        "mqtt.broker_stats" => mqtt.broker_stats,
        "mqtt.session_lost_alert" => mqtt.session_lost_alert,
        "kafka.topic" => kafka.topic,
        "kafka.routes" => kafka.routes,
        "kafka.topic_separator" => kafka.topic_separator,
        "kafka.key" => kafka.key,
        "forward" => forward,
        "wal.max_bytes" => wal.max_bytes,
        "wal.max_records" => wal.max_records,
        "wal.on_full" => wal.on_full,
        "wal.max_age" => wal.max_age,
        "wal.on_expired" => wal.on_expired,
        "dead_letters.max_bytes" => dead_letters.max_bytes,
        "admin" => admin,
        "shutdown.grace_period" => shutdown.grace_period,
    );
    keys
}

/// Reloads the configuration file into the running gateway.
pub struct Reloader {
    path: Option<PathBuf>,
    tx: watch::Sender<Arc<Loaded>>,
    shared: Arc<Shared>,
    log: Option<LogFilter>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish()
    }
}

impl Reloader {
    /// A reloader of `path` (none: started without a file, nothing to reload) that
    /// publishes the effective configuration on `tx`.
    pub fn new(
        path: Option<PathBuf>,
        tx: watch::Sender<Arc<Loaded>>,
        shared: Arc<Shared>,
        log: Option<LogFilter>,
    ) -> Self {
        Self {
            path,
            tx,
            shared,
            log,
        }
    }

    /// Read the file again and apply what can change while running.
    pub fn reload(&self) {
        let Some(path) = &self.path else {
            tracing::warn!("SIGHUP: started without --config, nothing to reload");
            return;
        };
        let new = match Config::load(path) {
            Ok(l) => l,
            Err(e) => {
                self.shared
                    .counters
                    .config_reload_errors
                    .fetch_add(1, Relaxed);
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                self.shared.config_reloaded(Err(e.to_string()), Vec::new());
                return;
            }
        };
        let old = self.tx.borrow().clone();
        let (eff, restart) = merge(&old, &new);
        if let Some(set) = &self.log {
            if eff.config.log != old.config.log {
                if let Err(e) = set(&eff.config.log) {
                    tracing::error!(error = %e, "cannot apply the new log filter");
                }
            }
        }
        *self
            .shared
            .session_lost_alert
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = eff.config.mqtt.session_lost_alert;
        let keys = applied(&old.config, &eff.config);
        self.shared.counters.config_reloads.fetch_add(1, Relaxed);
        if keys.is_empty() && restart.is_empty() {
            tracing::info!(file = %path.display(), "configuration reloaded: no change");
        } else {
            tracing::info!(
                file = %path.display(),
                applied = %keys.join(", "),
                "configuration reloaded"
            );
        }
        if !restart.is_empty() {
            tracing::warn!(
                keys = %restart.join(", "),
                "these configuration changes take effect at the next start; the running values stay"
            );
        }
        self.shared
            .config_reloaded(Ok(()), restart.iter().map(|k| k.to_string()).collect());
        self.tx.send_replace(Arc::new(eff));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Loaded {
        Config::from_toml(text, "test.toml").unwrap()
    }

    #[test]
    fn live_keys_are_taken_and_the_others_named() {
        let old = load("[mqtt]\nclient_id = \"a\"\n[kafka]\ntopic = \"t1\"\n");
        let new = load(
            "log = \"debug\"\n[mqtt]\nclient_id = \"b\"\ntopics = [{ filter = \"x/#\", qos = 2 }]\n\
             [kafka]\ntopic = \"t2\"\nbootstrap_servers = \"k:9092\"\n[wal]\nmax_records = 10\n",
        );
        let (eff, restart) = merge(&old, &new);
        assert_eq!(eff.config.log, "debug");
        assert_eq!(eff.config.kafka.topic, "t2");
        assert_eq!(eff.config.mqtt.topics[0].filter, "x/#");
        assert_eq!(eff.config.wal.max_records, Some(10));
        // Not live: the running values stay.
        assert_eq!(eff.config.mqtt.client_id, "a");
        assert_eq!(eff.config.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(restart, vec!["mqtt.client_id", "kafka.bootstrap_servers"]);
        assert_eq!(
            applied(&old.config, &eff.config),
            vec!["log", "mqtt.topics", "kafka.topic", "wal.max_records"]
        );
        // The router follows the new routes.
        let mut router = eff.router.clone();
        assert_eq!(&*router.route("any").unwrap(), "t2");
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let old = load("[kafka]\ntopic = \"t\"\n");
        let (eff, restart) = merge(&old, &load("[kafka]\ntopic = \"t\"\n"));
        assert!(restart.is_empty());
        assert!(applied(&old.config, &eff.config).is_empty());
    }
}
