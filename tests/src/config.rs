//! One gateway configuration builder for every test and tool of this crate (the
//! end-to-end tests in `tests/e2e`, the soak in [`crate::soak`] and the `cross-smoke`
//! binary): the settings they share are written once here, each caller states only
//! what differs. The text goes to [`crate::Gateway::start`], which fills in `{wal}` and
//! `{admin}`.
//!
//! ```
//! let toml = harness::config::GatewayConfig::new(1883, "127.0.0.1:9092")
//!     .topic("readings")
//!     .topics(&[("sensors/#", 1), ("alarms/#", 2)])
//!     .wal("max_records", 500)
//!     .toml();
//! assert!(toml.contains("max_records = 500"));
//! ```

use std::fmt;

/// A TOML value: strings are quoted, the rest written as is.
#[derive(Debug, Clone, PartialEq)]
pub struct Value(String);

impl Value {
    /// A value written as is (an array, an inline table).
    pub fn raw(toml: impl Into<String>) -> Self {
        Self(toml.into())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self(format!("{s:?}"))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self(format!("{s:?}"))
    }
}

macro_rules! literal_values {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Self(v.to_string())
            }
        }
    )*};
}
// i32 too: what a plain integer literal such as `500` is.
literal_values!(u8, u16, u32, u64, usize, i32, i64, bool);

/// The tables, in the order they are written.
const TABLES: [&str; 8] = [
    "",
    "mqtt",
    "kafka",
    "kafka.properties",
    "wal",
    "forward",
    "admin",
    "shutdown",
];

/// A gateway configuration being built.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// (table, key, value), in insertion order within each table.
    entries: Vec<(&'static str, String, Value)>,
}

impl GatewayConfig {
    /// A gateway on the Mosquitto at `mqtt_port` and the Kafka at `bootstrap`, with
    /// what every test shares: a unique client id, quick reconnects, the WAL directory
    /// and admin address as the placeholders `{wal}` and `{admin}` that
    /// [`crate::Gateway`] fills in.
    pub fn new(mqtt_port: u16, bootstrap: &str) -> Self {
        Self {
            entries: Vec::new(),
        }
        .top("gateway_id", "test-gw")
        .top("log", "info")
        .mqtt(
            "server_uris",
            Value::raw(format!("[\"tcp://127.0.0.1:{mqtt_port}\"]")),
        )
        .mqtt("client_id", crate::unique("gw"))
        .mqtt("keep_alive", "5s")
        .mqtt("reconnect_max_delay", "1s")
        .kafka("bootstrap_servers", bootstrap)
        .wal("dir", "{wal}")
        .admin("listen", "{admin}")
        .shutdown("grace_period", "10s")
    }

    /// Set `key` in `table` ("" for the top level), replacing an earlier value.
    pub fn set(mut self, table: &'static str, key: &str, value: impl Into<Value>) -> Self {
        assert!(TABLES.contains(&table), "unknown table {table}");
        let value = value.into();
        match self
            .entries
            .iter_mut()
            .find(|(t, k, _)| *t == table && k == key)
        {
            Some(e) => e.2 = value,
            None => self.entries.push((table, key.to_string(), value)),
        }
        self
    }

    /// Remove `key` from `table`.
    pub fn unset(mut self, table: &str, key: &str) -> Self {
        self.entries.retain(|(t, k, _)| !(*t == table && k == key));
        self
    }

    /// A top-level key.
    pub fn top(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("", key, value)
    }

    /// A key of `[mqtt]`.
    pub fn mqtt(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("mqtt", key, value)
    }

    /// A key of `[kafka]`.
    pub fn kafka(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("kafka", key, value)
    }

    /// A librdkafka property (`[kafka.properties]`).
    pub fn property(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("kafka.properties", &format!("{key:?}"), value)
    }

    /// A key of `[wal]`.
    pub fn wal(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("wal", key, value)
    }

    /// A key of `[forward]`.
    pub fn forward(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("forward", key, value)
    }

    /// A key of `[admin]`.
    pub fn admin(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("admin", key, value)
    }

    /// A key of `[shutdown]`.
    pub fn shutdown(self, key: &str, value: impl Into<Value>) -> Self {
        self.set("shutdown", key, value)
    }

    /// The default Kafka topic (`kafka.topic`).
    pub fn topic(self, topic: &str) -> Self {
        self.kafka("topic", topic)
    }

    /// The subscriptions (`mqtt.topics`): (filter, QoS).
    pub fn topics(self, topics: &[(&str, u8)]) -> Self {
        let list: Vec<String> = topics
            .iter()
            .map(|(f, q)| format!("{{ filter = {f:?}, qos = {q} }}"))
            .collect();
        self.mqtt("topics", Value::raw(format!("[{}]", list.join(", "))))
    }

    /// The routes (`kafka.routes`): (MQTT filter, Kafka topic).
    pub fn routes(self, routes: &[(&str, &str)]) -> Self {
        let list: Vec<String> = routes
            .iter()
            .map(|(f, t)| format!("{{ mqtt_filter = {f:?}, kafka_topic = {t:?} }}"))
            .collect();
        self.kafka("routes", Value::raw(format!("[{}]", list.join(", "))))
    }

    /// The value of `key` in `table`, as written.
    pub fn get(&self, table: &str, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(t, k, _)| *t == table && k == key)
            .map(|(_, _, v)| v.0.as_str())
    }

    /// The TOML text.
    pub fn toml(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for table in TABLES {
            let entries: Vec<_> = self
                .entries
                .iter()
                .filter(|(t, _, _)| *t == table)
                .collect();
            if entries.is_empty() {
                continue;
            }
            if !table.is_empty() {
                writeln!(f, "[{table}]")?;
            }
            for (_, k, v) in entries {
                writeln!(f, "{k} = {}", v.0)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_in_order_and_values_quoted() {
        let c = GatewayConfig::new(1883, "k:9092")
            .wal("max_records", 5u64)
            .property("linger.ms", "20")
            .topics(&[("a/#", 2)])
            .mqtt("keep_alive", "7s");
        let t = c.toml();
        assert!(t.starts_with("gateway_id = \"test-gw\"\n"), "{t}");
        let at = |s: &str| t.find(s).unwrap_or_else(|| panic!("{s} missing in {t}"));
        assert!(at("[mqtt]") < at("[kafka]") && at("[kafka]") < at("[kafka.properties]"));
        assert!(at("[kafka.properties]") < at("[wal]"));
        assert!(t.contains("max_records = 5\n"));
        assert!(t.contains("\"linger.ms\" = \"20\""));
        assert!(t.contains("topics = [{ filter = \"a/#\", qos = 2 }]"));
        assert_eq!(t.matches("keep_alive").count(), 1, "{t}");
        assert_eq!(c.get("mqtt", "keep_alive"), Some("\"7s\""));
    }
}
