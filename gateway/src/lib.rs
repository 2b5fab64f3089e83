//! mqtt-kafka-gateway: MQTT -> durable WAL (redb) -> Kafka, at least once.
//!
//! The data path, top to bottom:
//! 1. [`ingest`]: rumqttc event loop receives a PUBLISH and hands it to the WAL thread.
//! 2. [`writer`]: the WAL thread group-commits queued messages with one fsync and
//!    publishes the durable count.
//! 3. [`ingest`]'s acker sends PUBACK / PUBREC for each message, in arrival order, once
//!    the durable count covers it (rule 1).
//! 4. [`forward`]: the forwarder reads records after its cursor, produces them to Kafka
//!    (`acks=all`, idempotent), folds delivery reports into a contiguous watermark.
//! 5. [`writer`]: the WAL thread deletes the acknowledged prefix (rule 2), or parks a
//!    permanently refused record in the dead-letter table (rule 3).

pub mod admin_api;
pub mod cli;
pub mod config;
pub mod console;
pub mod forward;
pub mod import_connect;
pub mod ingest;
pub mod memory;
pub mod peek;
pub mod policy;
pub mod quickack;
pub mod rates;
pub mod reload;
pub mod route;
pub mod run;
pub mod sdnotify;
pub mod state;
pub mod tls;
pub mod view;
pub mod waltool;
pub mod writer;

/// Abort the process at a named point (test builds only; see [`wal::failpoint`]).
/// With `MKG_FAILPOINT_ACTION=hang` the calling thread hangs there instead (for the
/// watchdog test: a stuck loop).
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint(name: &str) {
    if !wal::failpoint_fires(name) {
        return;
    }
    if std::env::var("MKG_FAILPOINT_ACTION").is_ok_and(|a| a == "hang") {
        eprintln!("failpoint {name}: hanging this thread");
        loop {
            std::thread::park();
        }
    }
    eprintln!("failpoint {name}: aborting");
    std::process::abort();
}
