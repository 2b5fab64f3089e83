//! Wiring: open the WAL, start the WAL thread, the forwarder, the admin server and
//! MQTT ingest; on shutdown stop them in the order that loses nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc as stdmpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use wal::{Wal, WalOptions};

use crate::admin_api::AdminApi;
use crate::config::Loaded;
use crate::forward::{self, ForwardOptions};
use crate::reload::{LogFilter, Reloader};
use crate::state::Shared;
use crate::view::AdminView;
use crate::writer::{self, WriterOptions};
use crate::{ingest, sdnotify, state};

/// Capacity of the channel from the MQTT ingest to the WAL thread (messages).
const INGEST_QUEUE: usize = 4096;

/// Why the gateway stopped with an error; maps to the exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The WAL cannot be opened (exit code 3). The file is left untouched.
    #[error("{0}")]
    WalOpen(#[from] wal::OpenError),
    /// The admin listener cannot be bound (exit code 1).
    #[error("cannot listen on admin address {addr}: {source}")]
    AdminBind {
        /// Address from the config.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Anything else (exit code 1).
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Forwarder options from the config.
pub fn forward_options(loaded: &Loaded) -> ForwardOptions {
    let f = &loaded.config.forward;
    ForwardOptions {
        max_in_flight_records: f.max_in_flight_records,
        max_in_flight_bytes: f.max_in_flight_bytes.0 as usize,
        ack_interval: f.ack_interval,
        unknown_topic_grace: f.unknown_topic_grace,
    }
}

/// A running gateway's handles, for callers that embed it.
#[derive(Debug)]
pub struct Ready {
    /// Address the admin API listens on, if enabled.
    pub admin_addr: Option<std::net::SocketAddr>,
}

/// How the binary drives a running gateway, besides stopping it.
#[derive(Default)]
pub struct Control {
    /// The configuration file, read again on each reload request.
    pub config_path: Option<PathBuf>,
    /// Reload requests (SIGHUP).
    pub reload: Option<mpsc::UnboundedReceiver<()>>,
    /// Applies a reloaded log filter.
    pub log: Option<LogFilter>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("config_path", &self.config_path)
            .finish()
    }
}

/// Run the gateway until `shutdown` is cancelled. `on_ready` is called once the WAL
/// is open and the admin API is serving.
pub async fn run(
    loaded: Loaded,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    run_with(loaded, Control::default(), shutdown, on_ready).await
}

/// [`run`], reloading the configuration on `control`'s requests.
pub async fn run_with(
    loaded: Loaded,
    control: Control,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    let loaded = Arc::new(loaded);
    let cfg = &loaded.config;
    let shared = Arc::new(Shared::default());
    shared.config.lock().unwrap_or_else(|e| e.into_inner()).path = control
        .config_path
        .as_ref()
        .map(|p| p.display().to_string());
    // The running configuration: a reload sends the parts that change live.
    let (config_tx, config_rx) = watch::channel(loaded.clone());
    let reloader = Arc::new(Reloader::new(
        control.config_path,
        config_tx,
        shared.clone(),
        control.log,
    ));
    if let Some(mut requests) = control.reload {
        let reloader = reloader.clone();
        tokio::spawn(async move {
            while requests.recv().await.is_some() {
                let r = reloader.clone();
                let _ = tokio::task::spawn_blocking(move || r.reload()).await;
            }
        });
    }
    // systemd (Type=notify): a no-op when not started by systemd.
    let notifier = sdnotify::Notifier::from_env().map(Arc::new);
    if let Some(n) = &notifier {
        n.notify("STATUS=Opening the WAL");
    }

    let dir = cfg.wal.dir.clone();
    let wal_opts = WalOptions {
        cache_size: cfg.wal.cache_size.0 as usize,
        quick_repair: cfg.wal.quick_repair,
        journal: cfg.wal.journal,
        checkpoint_bytes: checkpoint_bytes(cfg.wal.checkpoint_bytes.0, cfg.wal.min_free_space.0),
    };
    let opened = tokio::task::spawn_blocking(move || Wal::open(dir, wal_opts))
        .await
        .map_err(anyhow::Error::from)?;
    let wal = match opened {
        Ok(w) => w,
        Err(e) => {
            if let Some(n) = &notifier {
                n.notify(&format!("STATUS=The WAL cannot be opened: {e}"));
            }
            return Err(e.into());
        }
    };
    let wal = Arc::new(wal);
    let recovered = wal.recovered();
    if recovered.frames > 0 {
        tracing::info!(
            commits = recovered.frames,
            records = recovered.records,
            "replayed the WAL journal (the last run did not stop cleanly)"
        );
    }
    if let Some(tail) = &recovered.torn_tail {
        tracing::warn!(
            %tail,
            "ignored the torn end of the WAL journal: the commit being written when the last run stopped, never acknowledged to MQTT"
        );
    }
    let st = wal.stats();
    let mqtt_session = wal.mqtt_session().map_err(anyhow::Error::from)?;
    tracing::info!(
        path = %wal.path().display(),
        backlog = st.records,
        dead_letters = st.dead_letters,
        next_seq = st.next_seq,
        qos2_unreleased = mqtt_session.qos2.len(),
        "WAL open"
    );
    *shared
        .session_lost_alert
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = cfg.mqtt.session_lost_alert;

    // The forwarder's channel to the WAL thread; the admin API's dead-letter commands
    // share it (through a weak sender: it must not keep the WAL thread alive).
    let (forward_wal_tx, forward_wal_rx) = mpsc::channel(1024);
    // Admin API first, so the backlog is visible even while brokers are down.
    let view: Arc<dyn admin::Source> = Arc::new(AdminView {
        shared: shared.clone(),
        wal: wal.clone(),
        gateway_id: cfg.gateway_id.clone(),
        access: admin::Access::new(loaded.admin_token.as_ref().map(|t| t.expose())),
        config: config_rx.clone(),
        wal_tx: forward_wal_tx.downgrade(),
    });
    let admin_api = AdminApi::start(&cfg.admin, loaded.admin_tls.clone(), view)
        .await
        .map_err(|source| RunError::AdminBind {
            addr: cfg.admin.listen,
            source,
        })?;
    let admin_addr = admin_api.addr();
    let admin_token = CancellationToken::new();
    let admin_task = tokio::spawn(admin_api.follow(config_rx.clone(), admin_token.clone()));
    // Rates, forecasts and history for the admin API; stops with it.
    let rates_task = tokio::spawn(crate::rates::sampler(
        shared.clone(),
        wal.clone(),
        admin_token.clone(),
    ));

    // WAL thread. The channel from the ingest is what arrives while the WAL thread is
    // busy with one commit (an fsync, a checkpoint): 4,096 messages are about 60 ms at
    // full speed. When it is full the ingest waits and the broker keeps the rest; each
    // message waiting here costs about 0.5 KiB of RSS (256-byte payloads), and
    // Mosquitto 2.0.11 was seen to send 24,000 unacknowledged messages with
    // `max_inflight_messages 1000` (docs/BENCHMARKS.md, 5).
    let (wal_tx, wal_rx) = mpsc::channel(INGEST_QUEUE);
    let (durable_tx, durable_rx) = watch::channel(0u64);
    let (events_tx, events_rx) = stdmpsc::channel();
    let wake_pending = Arc::new(AtomicBool::new(false));
    let writer_abort = CancellationToken::new();
    let writer_thread = {
        let wal = wal.clone();
        let shared = shared.clone();
        let abort = writer_abort.clone();
        let events_tx = events_tx.clone();
        let wake_pending = wake_pending.clone();
        let opts = WriterOptions {
            max_batch_records: cfg.wal.max_batch_records,
            max_batch_bytes: cfg.wal.max_batch_bytes.0 as usize,
            linger: cfg.wal.commit_linger,
            sync_linger: cfg.wal.sync_linger,
            idle_sync: Duration::from_secs(1),
            min_free_space: cfg.wal.min_free_space.0,
            limits: cfg.limits(),
            reload: Some(config_rx.clone()),
        };
        std::thread::Builder::new()
            .name("wal".into())
            .spawn(move || {
                let inbox = writer::Inbox::new(wal_rx, forward_wal_rx);
                writer::run(wal, inbox, durable_tx, shared, opts, abort, move || {
                    if !wake_pending.swap(true, Relaxed) {
                        let _ = events_tx.send(forward::Event::Wake);
                    }
                })
            })
            .map_err(anyhow::Error::from)?
    };

    // Forwarder thread.
    let forward_stop = CancellationToken::new();
    let forwarder_thread = {
        let wal = wal.clone();
        let wal_tx = forward_wal_tx;
        let config = config_rx.clone();
        let shared = shared.clone();
        let stop = forward_stop.clone();
        let opts = forward_options(&loaded);
        let failed = shutdown.clone();
        std::thread::Builder::new()
            .name("forward".into())
            .spawn(move || {
                let r = forward::run(
                    wal,
                    wal_tx,
                    events_rx,
                    events_tx,
                    wake_pending,
                    config,
                    shared,
                    opts,
                    stop,
                );
                if let Err(e) = &r {
                    tracing::error!(error = %e, "forwarder failed; shutting down");
                    failed.cancel();
                }
                r
            })
            .map_err(anyhow::Error::from)?
    };

    on_ready(&Ready { admin_addr });

    // Tell systemd we are up; feed its watchdog while the loops beat; STOPPING=1 as
    // soon as shutdown begins.
    let stopping = shutdown.child_token();
    let supervisor = notifier.map(|n| {
        let watchdog = sdnotify::watchdog_from_env();
        if let Some(w) = watchdog {
            tracing::info!(interval = ?w, "systemd watchdog enabled");
        }
        n.notify(&format!(
            "READY=1\nSTATUS=Serving (admin API: {})",
            admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string())
        ));
        tokio::spawn(sdnotify::supervise(
            n,
            watchdog,
            shared.clone(),
            wal.clone(),
            stopping.clone(),
        ))
    });

    // MQTT ingest runs until shutdown.
    // As a task on a worker thread, not on the thread that called `block_on`: the
    // workers drive the I/O and timer drivers, so a socket read or a timer wakes the
    // ingest task on the same thread instead of waking another one (a futex wake and
    // two context switches per wakeup; docs/BENCHMARKS.md, 3).
    let ingest_result = match tokio::spawn(ingest::run(
        config_rx.clone(),
        wal_tx,
        durable_rx,
        shared.clone(),
        mqtt_session,
        shutdown.clone(),
    ))
    .await
    {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("MQTT ingest task failed: {e}")),
    };
    if let Err(e) = &ingest_result {
        tracing::error!(error = %e, "MQTT ingest failed; shutting down");
    }
    stopping.cancel();
    if let Some(t) = supervisor {
        let _ = t.await;
    }

    // Then drain Kafka deliveries within the grace period, then let the WAL thread
    // apply the final watermark and sync.
    forward_stop.cancel();
    let grace = config_rx.borrow().config.shutdown.grace_period;
    let forward_result = tokio::task::spawn_blocking(move || forwarder_thread.join())
        .await
        .map_err(anyhow::Error::from)?;
    let writer_deadline = tokio::time::sleep(grace + Duration::from_secs(5));
    let abort = writer_abort.clone();
    let writer_join = tokio::task::spawn_blocking(move || writer_thread.join());
    tokio::pin!(writer_join);
    tokio::select! {
        r = &mut writer_join => { let _ = r; }
        _ = writer_deadline => {
            abort.cancel();
            let _ = writer_join.await;
        }
    }
    let st = wal.stats();
    tracing::info!(
        backlog = st.records,
        oldest_seq = ?st.oldest_seq,
        next_seq = st.next_seq,
        "stopped; the backlog stays in the WAL for the next start"
    );
    state::set(&shared.mqtt_last_error, None);
    admin_token.cancel();
    let _ = admin_task.await;
    let _ = rates_task.await;
    ingest_result?;
    match forward_result {
        Ok(r) => r?,
        Err(_) => return Err(anyhow::anyhow!("forwarder thread panicked").into()),
    }
    Ok(())
}

/// The journal's size bound: `wal.checkpoint_bytes`, but at most half the free-space
/// reserve. Until a checkpoint, the journal's records take disk space twice (journal
/// and redb); on a nearly full disk the checkpoint that frees the journal must fit in
/// the reserve.
fn checkpoint_bytes(configured: u64, min_free_space: u64) -> u64 {
    if min_free_space == 0 {
        return configured;
    }
    configured.min((min_free_space / 2).max(64 << 10))
}

#[cfg(test)]
mod tests {
    #[test]
    fn checkpoint_bytes_fit_in_half_the_reserve() {
        use super::checkpoint_bytes;
        assert_eq!(checkpoint_bytes(8 << 20, 64 << 20), 8 << 20);
        assert_eq!(checkpoint_bytes(8 << 20, 1 << 20), 512 << 10);
        assert_eq!(checkpoint_bytes(8 << 20, 1), 64 << 10);
        assert_eq!(checkpoint_bytes(8 << 20, 0), 8 << 20);
    }
}
