//! What the admin API sees of the gateway: a snapshot of the shared state and the
//! WAL's O(1) stats per request, the records for `/records`, the token.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use wal::Wal;

use crate::state::{get, unix_ms, Shared};

/// How long an operator's replay or purge waits for the WAL thread to take it.
const OPERATOR_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The admin API's data source.
#[derive(Debug)]
pub struct AdminView {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// The WAL, for its O(1) stats.
    pub wal: Arc<Wal>,
    /// Gateway id from the config.
    pub gateway_id: String,
    /// The admin token (`admin.token_file`), replaced on a reload.
    pub access: admin::Access,
    /// The running configuration (routes for `/records`).
    pub config: tokio::sync::watch::Receiver<Arc<crate::config::Loaded>>,
    /// The WAL thread, for operators' dead-letter commands (weak: it must not keep
    /// the thread alive at shutdown).
    pub wal_tx: tokio::sync::mpsc::WeakSender<crate::writer::WalCmd>,
}

impl admin::Source for AdminView {
    fn access(&self) -> &admin::Access {
        &self.access
    }

    fn history(&self) -> admin::History {
        self.shared
            .rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .history()
    }

    fn records(&self, query: &admin::RecordsQuery) -> Result<admin::RecordsPage, String> {
        // The configured router's cache stays empty: the forwarder routes with its own.
        let mut router = self.config.borrow().router.clone();
        crate::peek::records(&self.wal, &mut router, query, unix_ms())
    }

    fn backlog_topics(&self, query: &admin::TopicsQuery) -> Result<admin::TopicsPage, String> {
        let (mut router, limit) = {
            let c = self.config.borrow();
            (c.router.clone(), c.config.admin.topics_limit)
        };
        crate::peek::backlog_topics(
            &self.wal,
            &mut router,
            query.by,
            query.limit.unwrap_or(limit),
            unix_ms(),
        )
    }

    fn dead_letter_action(
        &self,
        action: admin::DeadLetterAction,
        selection: admin::Selection,
    ) -> admin::BoxFuture<'_, Result<admin::ActionOutcome, String>> {
        Box::pin(async move {
            let wal = self.wal.clone();
            let sel = selection.clone();
            let seqs =
                tokio::task::spawn_blocking(move || crate::peek::select_dead_letters(&wal, &sel))
                    .await
                    .map_err(|e| e.to_string())??;
            let matched = seqs.len() as u64;
            let describe = selection.describe();
            if seqs.is_empty() {
                return Ok(admin::ActionOutcome {
                    action,
                    selection: describe,
                    matched,
                    done: 0,
                    first_seq: None,
                });
            }
            let (reply, done) = tokio::sync::oneshot::channel();
            let claim = crate::writer::operator::Claim::default();
            let op = crate::writer::operator::DeadLetterOp {
                replay: action == admin::DeadLetterAction::Replay,
                seqs,
                selection: describe.clone(),
                reply,
                claim: claim.clone(),
            };
            let busy = || {
                format!(
                    "the WAL is busy (its thread did not get to the request within {} s; a failing disk shows in /status wal.last_error); nothing was changed, try again",
                    OPERATOR_WAIT.as_secs()
                )
            };
            let tx = self.wal_tx.upgrade().ok_or("the WAL thread has stopped")?;
            let sent = tokio::time::timeout(OPERATOR_WAIT, async {
                tx.send(crate::writer::WalCmd::Operator(op)).await.is_ok()
            })
            .await;
            drop(tx);
            match sent {
                Ok(true) => {}
                Ok(false) => return Err("the WAL thread has stopped".to_string()),
                Err(_) => return Err(busy()),
            }
            let mut done = done;
            let answer = match tokio::time::timeout(OPERATOR_WAIT, &mut done).await {
                Ok(answer) => answer,
                // Started already: its one commit answers soon.
                Err(_) if !claim.give_up() => done.await,
                Err(_) => return Err(busy()),
            };
            let done =
                answer.map_err(|_| "the WAL thread stopped before it was done".to_string())??;
            Ok(admin::ActionOutcome {
                action,
                selection: describe,
                matched,
                done: done.done,
                first_seq: done.first_seq,
            })
        })
    }

    fn dead_letters(&self, query: &admin::RecordsQuery) -> Result<admin::DeadLettersPage, String> {
        let mut router = self.config.borrow().router.clone();
        crate::peek::dead_letters(&self.wal, &mut router, query, unix_ms())
    }

    fn snapshot(&self) -> admin::Snapshot {
        let s = &self.shared;
        let c = &s.counters;
        let w = self.wal.stats();
        let now_ms = unix_ms();
        let session_lost = s
            .mqtt_session_lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|l| admin::SessionLost {
                at_ms: l.at_ms,
                age_seconds: l.at.elapsed().as_secs_f64(),
                message: l.message.clone(),
                alerting: l.at.elapsed()
                    < *s.session_lost_alert
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()),
            });
        admin::Snapshot {
            gateway_id: self.gateway_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: s.started.elapsed().as_secs_f64(),
            mqtt: admin::MqttStatus {
                connected: s.mqtt_connected.load(Relaxed),
                subscribed: s.mqtt_subscribed.load(Relaxed),
                refused_subscriptions: s
                    .mqtt_refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                server: get(&s.mqtt_server),
                last_error: get(&s.mqtt_last_error),
                accepting: s.mqtt_accepting.load(Relaxed),
                session_present: s.mqtt_session_present.load(Relaxed),
                session_lost,
                qos2_pending: s.mqtt_qos2_pending.load(Relaxed),
                broker: {
                    let b = s.broker_stats.lock().unwrap_or_else(|e| e.into_inner());
                    b.updated.map(|at| admin::BrokerStats {
                        messages_dropped: b.messages_dropped,
                        store_messages: b.store_messages,
                        store_bytes: b.store_bytes,
                        age_seconds: at.elapsed().as_secs_f64(),
                    })
                },
            },
            wal: admin::WalStatus {
                path: self.wal.path().display().to_string(),
                writable: s.wal_writable.load(Relaxed),
                last_error: get(&s.wal_last_error),
            },
            kafka: admin::KafkaStatus {
                last_error: get(&s.kafka_last_error),
                in_flight: s.kafka_in_flight.load(Relaxed),
                held_topics: s
                    .kafka_held_topics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|h| admin::HeldTopic {
                        topic: h.topic.clone(),
                        reason: h.reason.clone(),
                        refused_for_seconds: h.refused_for.as_secs_f64(),
                        held_records: h.held_records,
                        parked_records: h.parked_records,
                        parking: h.parking,
                    })
                    .collect(),
            },
            backlog: admin::Backlog {
                records: w.records,
                bytes: w.bytes,
                oldest_seq: w.oldest_seq,
                newest_seq: w.newest_seq,
                // Wall time is only used for this display; a clock jump skews the age,
                // never order or identity.
                oldest_age_seconds: w
                    .oldest_receive_time_ms
                    .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0),
                next_seq: w.next_seq,
                dropped: admin::Dropped {
                    max_bytes: w.dropped.max_bytes,
                    max_records: w.dropped.max_records,
                    max_age: w.dropped.max_age,
                },
            },
            rates: {
                let free = self.wal.path().parent().and_then(crate::writer::fs_free);
                let min_free = self.config.borrow().config.wal.min_free_space.0;
                s.rates
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .view(w.records, free, min_free)
            },
            dead_letters: admin::DeadLetters {
                records: w.dead_letters,
                bytes: w.dead_letter_bytes,
                purged: w.dead_letters_purged,
                replayed: w.dead_letters_replayed,
                dropped: w.dead_letters_dropped,
            },
            counters: c.snapshot(),
            wal_commit_seconds: s.commit_times.histogram(),
            wal_checkpoint_seconds: s.checkpoint_times.histogram(),
            record_latency: admin::RecordLatency {
                durable: s.to_durable.histogram(),
                produced: s.to_produced.histogram(),
                delivered: s.to_delivered.histogram(),
            },
            config: {
                let c = s.config.lock().unwrap_or_else(|e| e.into_inner());
                admin::ConfigStatus {
                    path: c.path.clone(),
                    reloaded_at_ms: c.reloaded_at_ms,
                    last_reload_error: c.last_error.clone(),
                    restart_needed: c.restart_needed.clone(),
                }
            },
        }
    }
}
