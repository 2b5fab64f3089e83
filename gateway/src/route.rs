//! Mapping MQTT topics to Kafka topics.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::KafkaConfig;

/// Longest Kafka topic name.
pub const MAX_KAFKA_TOPIC_LEN: usize = 249;

const TEMPLATE_VAR: &str = "{mqtt_topic}";

/// True for the characters Kafka allows in topic names.
fn legal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'
}

/// Check a Kafka topic name; the error says why it is illegal.
pub fn validate_kafka_topic(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Kafka topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a legal Kafka topic name"));
    }
    if name.len() > MAX_KAFKA_TOPIC_LEN {
        return Err(format!(
            "Kafka topic name of {} characters is longer than {MAX_KAFKA_TOPIC_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| !legal_char(*c)) {
        return Err(format!(
            "Kafka topic {name:?} contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are legal"
        ));
    }
    Ok(())
}

/// Check an MQTT topic filter (MQTT 3.1.1 section 4.7).
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("topic filter is empty".into());
    }
    if filter.len() > 65535 {
        return Err("topic filter is longer than 65535 bytes".into());
    }
    if filter.contains('\0') {
        return Err("topic filter contains a NUL character".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(format!(
                "{filter:?}: '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}

/// True when MQTT `topic` matches `filter`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    // Topics starting with '$' are not matched by a leading wildcard (MQTT 4.7.2).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[derive(Debug, Clone)]
enum Target {
    Fixed(Arc<str>),
    Template { prefix: String, suffix: String },
}

#[derive(Debug, Clone)]
struct Route {
    filter: String,
    target: Target,
}

/// Decides the Kafka topic of each MQTT topic; caches results.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
    default: Arc<str>,
    separator: char,
    cache: HashMap<String, Result<Arc<str>, String>>,
}

impl Router {
    /// Build from `[kafka]`; errors carry the key and reason.
    pub fn new(k: &KafkaConfig) -> Result<Self, (String, String)> {
        validate_kafka_topic(&k.topic).map_err(|r| ("kafka.topic".to_string(), r))?;
        if !legal_char(k.topic_separator) {
            return Err((
                "kafka.topic_separator".into(),
                format!(
                    "{:?} is not legal in a Kafka topic name; use '.', '_' or '-'",
                    k.topic_separator
                ),
            ));
        }
        let mut routes = Vec::new();
        for (i, r) in k.routes.iter().enumerate() {
            let key = |f: &str| format!("kafka.routes[{i}].{f}");
            validate_filter(&r.mqtt_filter).map_err(|e| (key("mqtt_filter"), e))?;
            let target = match (&r.kafka_topic, &r.kafka_topic_template) {
                (Some(t), None) => {
                    validate_kafka_topic(t).map_err(|e| (key("kafka_topic"), e))?;
                    Target::Fixed(t.as_str().into())
                }
                (None, Some(tpl)) => {
                    let (prefix, suffix) = tpl.split_once(TEMPLATE_VAR).ok_or_else(|| {
                        (
                            key("kafka_topic_template"),
                            format!("{tpl:?} does not contain {TEMPLATE_VAR}"),
                        )
                    })?;
                    if suffix.contains(TEMPLATE_VAR) {
                        return Err((
                            key("kafka_topic_template"),
                            format!("{TEMPLATE_VAR} may appear only once"),
                        ));
                    }
                    // The literal parts must be legal on their own; the MQTT part is
                    // sanitised at run time.
                    let probe = format!("{prefix}x{suffix}");
                    validate_kafka_topic(&probe).map_err(|e| {
                        (
                            key("kafka_topic_template"),
                            e.replace(&format!("{probe:?}"), &format!("{tpl:?}")),
                        )
                    })?;
                    Target::Template {
                        prefix: prefix.into(),
                        suffix: suffix.into(),
                    }
                }
                (Some(_), Some(_)) => {
                    return Err((
                        key("kafka_topic"),
                        "set kafka_topic or kafka_topic_template, not both".into(),
                    ))
                }
                (None, None) => {
                    return Err((
                        key("kafka_topic"),
                        "set kafka_topic or kafka_topic_template".into(),
                    ))
                }
            };
            routes.push(Route {
                filter: r.mqtt_filter.clone(),
                target,
            });
        }
        Ok(Self {
            routes,
            default: k.topic.as_str().into(),
            separator: k.topic_separator,
            cache: HashMap::new(),
        })
    }

    /// The Kafka topic for MQTT `topic`, or why none can be built (then the record is
    /// dead-lettered, never dropped).
    pub fn route(&mut self, topic: &str) -> Result<Arc<str>, String> {
        if let Some(hit) = self.cache.get(topic) {
            return hit.clone();
        }
        let result = self.compute(topic);
        // Bound the cache: device topics are many but not unbounded in sane setups.
        if self.cache.len() >= 100_000 {
            self.cache.clear();
        }
        self.cache.insert(topic.to_string(), result.clone());
        result
    }

    fn compute(&self, topic: &str) -> Result<Arc<str>, String> {
        let Some(route) = self
            .routes
            .iter()
            .find(|r| filter_matches(&r.filter, topic))
        else {
            return Ok(self.default.clone());
        };
        match &route.target {
            Target::Fixed(t) => Ok(t.clone()),
            Target::Template { prefix, suffix } => {
                let mut name = String::with_capacity(prefix.len() + topic.len() + suffix.len());
                name.push_str(prefix);
                name.extend(topic.chars().map(|c| {
                    if c == '/' {
                        self.separator
                    } else if legal_char(c) {
                        c
                    } else {
                        '_'
                    }
                }));
                name.push_str(suffix);
                validate_kafka_topic(&name).map_err(|e| {
                    format!("MQTT topic {topic:?} maps to an illegal Kafka topic: {e}")
                })?;
                Ok(name.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(filter_matches("#", "a/b"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(filter_matches("+/+", "/x"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(filter_matches("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn filter_validation() {
        assert!(validate_filter("a/+/b/#").is_ok());
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a/b#").is_err());
        assert!(validate_filter("a+/b").is_err());
        assert!(validate_filter("").is_err());
    }

    #[test]
    fn routes_first_match_fixed_template_default() {
        let k = KafkaConfig {
            topic: "fallback".into(),
            routes: vec![
                RouteConfig {
                    mqtt_filter: "alarms/#".into(),
                    kafka_topic: Some("alarms".into()),
                    kafka_topic_template: None,
                },
                RouteConfig {
                    mqtt_filter: "sensors/+/+".into(),
                    kafka_topic: None,
                    kafka_topic_template: Some("edge.{mqtt_topic}.raw".into()),
                },
            ],
            ..KafkaConfig::default()
        };
        let mut r = Router::new(&k).unwrap();
        assert_eq!(&*r.route("alarms/fire/1").unwrap(), "alarms");
        assert_eq!(
            &*r.route("sensors/t1/temp").unwrap(),
            "edge.sensors.t1.temp.raw"
        );
        assert_eq!(
            &*r.route("sensors/t 1/tempé").unwrap(),
            "edge.sensors.t_1.temp_.raw"
        );
        assert_eq!(&*r.route("other").unwrap(), "fallback");
        let long = format!("sensors/{}/x", "a".repeat(300));
        assert!(r.route(&long).unwrap_err().contains("longer than 249"));
    }
}
