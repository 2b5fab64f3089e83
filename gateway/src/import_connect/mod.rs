//! `import-connect`: turn a Kafka Connect setup (evokly's MQTT source connector,
//! github.com/evokly/kafka-connect-mqtt, and the Connect worker) into a gateway
//! configuration file.

pub mod properties;
