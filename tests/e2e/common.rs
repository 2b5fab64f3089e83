//! The setup most e2e tests share: a Mosquitto of their own next to a Kafka (the shared
//! one or their own), a scratch directory for the gateway, a unique Kafka topic, and
//! the publish / consume steps against them.

use std::net::SocketAddr;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use harness::config::GatewayConfig;
use harness::{
    consume, distinct_ids, publish, unique, wait_until, Consumed, Gateway, Kafka, Mosquitto,
    Published,
};
use libtest_mimic::Failed;

use crate::{bin, fail};

/// One test's brokers, gateway directory and Kafka topic.
pub struct Site<'k> {
    /// The Kafka the gateway forwards to.
    pub kafka: &'k Kafka,
    /// The test's own Mosquitto.
    pub mqtt: Mosquitto,
    /// The gateway's directory: config, WAL, logs.
    pub dir: tempfile::TempDir,
    /// A unique Kafka topic, the gateway's default topic in [`Site::config`].
    pub topic: String,
}

impl<'k> Site<'k> {
    /// Start a Mosquitto, make the directory and name a topic `unique(prefix)`.
    pub fn new(kafka: &'k Kafka, prefix: &str) -> Result<Self, Failed> {
        let mqtt = Mosquitto::start();
        let dir = tempfile::tempdir()?;
        let topic = unique(prefix);
        Ok(Self {
            kafka,
            mqtt,
            dir,
            topic,
        })
    }

    /// The gateway's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The test config for these brokers, without a Kafka topic.
    pub fn base_config(&self) -> GatewayConfig {
        GatewayConfig::new(self.mqtt.port, &self.kafka.bootstrap())
    }

    /// The test config with [`Site::topic`] as the default Kafka topic.
    pub fn config(&self) -> GatewayConfig {
        self.base_config().topic(&self.topic)
    }

    /// Start the gateway with [`Site::config`] and wait until it is ready.
    pub fn gateway(&self) -> Gateway {
        self.gateway_with(&self.config(), &[])
    }

    /// Start the gateway with `cfg` and `env` (first run only) and wait until it is
    /// ready.
    pub fn gateway_with(&self, cfg: &GatewayConfig, env: &[(&str, &str)]) -> Gateway {
        let mut gw = Gateway::start_with_env(bin(), self.path(), &cfg.toml(), env);
        gw.wait_ready();
        gw
    }

    /// Publish `msgs` at QoS 1; what the broker acknowledged.
    pub fn publish(&self, msgs: &[(String, Vec<u8>)], timeout: Duration) -> Vec<Published> {
        publish(self.mqtt.port, 1, msgs, timeout)
    }

    /// Publish `msgs` at QoS 1; an error unless the broker acknowledged them all.
    pub fn publish_all(
        &self,
        msgs: &[(String, Vec<u8>)],
        timeout: Duration,
    ) -> Result<Vec<Published>, Failed> {
        let published = self.publish(msgs, timeout);
        acked_all(&published, msgs.len())?;
        Ok(published)
    }

    /// Publish `msgs` at QoS 1 on a thread of its own; see [`joined`].
    pub fn publish_in_background(
        &self,
        msgs: Vec<(String, Vec<u8>)>,
        timeout: Duration,
    ) -> JoinHandle<Vec<Published>> {
        let port = self.mqtt.port;
        std::thread::spawn(move || publish(port, 1, &msgs, timeout))
    }

    /// Read [`Site::topic`] until `n` distinct message ids arrived or `timeout`.
    pub fn consume(&self, n: usize, timeout: Duration) -> Vec<Consumed> {
        self.consume_until(timeout, |r| distinct_ids(r) >= n)
    }

    /// Read [`Site::topic`] until `done` or `timeout`.
    pub fn consume_until(
        &self,
        timeout: Duration,
        done: impl FnMut(&[Consumed]) -> bool,
    ) -> Vec<Consumed> {
        consume(
            &self.kafka.bootstrap(),
            &[self.topic.as_str()],
            timeout,
            done,
        )
    }
}

/// An error unless the broker acknowledged all `n` messages.
pub fn acked_all(published: &[Published], n: usize) -> Result<(), Failed> {
    if published.len() != n {
        return Err(fail(format!("broker acked {} of {n}", published.len())));
    }
    Ok(())
}

/// What a publisher thread acknowledged, or an error if it panicked.
pub fn joined(publisher: JoinHandle<Vec<Published>>) -> Result<Vec<Published>, Failed> {
    publisher.join().map_err(|_| fail("publisher panicked"))
}

/// A number in an admin API JSON document (`pointer` as in
/// [`serde_json::Value::pointer`]), `None` if it cannot be read.
pub fn admin_u64(admin: SocketAddr, path: &str, pointer: &str) -> Option<u64> {
    harness::http_get(admin, path)
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v.pointer(pointer)?.as_u64())
}

/// Every record of `topic` as `kcat -C -e -q -f format` prints it (for diagnostics).
pub fn kcat_read(bootstrap: &str, topic: &str, format: &str) -> std::io::Result<String> {
    let out = std::process::Command::new("kcat")
        .args(["-b", bootstrap, "-C", "-t", topic, "-e", "-q", "-f", format])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Wait until the (Kafka) process `pid` is gone or a zombie.
pub fn wait_kafka_dead(pid: i32) {
    wait_until("kafka to die", Duration::from_secs(30), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    });
}
