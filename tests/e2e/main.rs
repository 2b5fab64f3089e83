//! End-to-end tests against a real Mosquitto and a real Kafka.
//!
//! One Kafka broker is shared by the tests that do not need to break it (unique topic
//! names per test); tests that stop or pause Kafka start their own. Each test starts
//! its own Mosquitto (it starts in milliseconds).

use std::path::Path;
use std::sync::OnceLock;

use harness::{payload, Kafka};
use libtest_mimic::{Arguments, Failed, Trial};

mod admin_auth;
mod admin_tls;
mod backlog_topics;
mod bad_input;
mod basic;
mod broker_state;
mod clock;
mod common;
mod config_errors;
mod console_page;
mod dead_letters;
mod faults;
mod import_connect;
mod kafka_sasl;
mod mosquitto_restart;
mod mqtt_tls;
mod order;
mod outage;
mod peek;
mod policies;
mod qos2;
mod reload;
mod secured;
mod suback_refused;
mod systemd;
mod timestamps;
mod unknown_topic;
mod wal_faults;
mod walkthrough;

const BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");

fn bin() -> &'static Path {
    Path::new(BIN)
}

/// The shared broker, started on first use.
fn shared_kafka() -> &'static Kafka {
    static K: OnceLock<Kafka> = OnceLock::new();
    K.get_or_init(Kafka::start)
}

fn messages(publisher: &str, topics: &[String], n: u64, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                topics[(i as usize) % topics.len()].clone(),
                payload(publisher, i, size),
            )
        })
        .collect()
}

type TestFn = fn() -> Result<(), Failed>;

/// `module::function` list -> (name, fn) pairs.
macro_rules! trials {
    ($($m:ident :: $f:ident),* $(,)?) => {
        vec![$((concat!(stringify!($m), "::", stringify!($f)), $m::$f as TestFn)),*]
    };
}

fn main() {
    let args = Arguments::from_args();
    let tests: Vec<(&str, TestFn)> = trials![
        config_errors::bad_files_exit_2_naming_the_key,
        config_errors::check_config_accepts_example,
        import_connect::evokly_example_with_a_scram_worker_passes_check_config,
        import_connect::unknown_keys_exit_2_and_write_nothing,
        import_connect::imported_config_carries_messages_end_to_end,
        basic::ten_thousand_qos1_messages_mapped_keyed_ordered,
        basic::qos0_qos2_binary_and_empty_payloads,
        basic::admin_backlog_and_metrics,
        basic::large_messages_pass_the_ingest_budget,
        admin_auth::admin_token_guards_the_api_and_rotates_on_sighup,
        admin_tls::admin_api_over_https_with_a_renewed_certificate,
        peek::records_pages_the_backlog_with_previews,
        backlog_topics::backlog_per_topic_and_time_to_empty_through_an_outage,
        dead_letters::dead_letters_listed_replayed_and_purged,
        console_page::operator_console_in_a_real_browser,
        faults::kafka_down_at_start_backlog_then_drains,
        faults::sigkill_mid_stream_loses_nothing,
        faults::sigterm_drains_and_exits_0,
        faults::corrupted_wal_exit_3_file_kept,
        faults::wal_dump_reads_backlog,
        faults::disk_full_stops_acking_then_resumes,
        faults::oversized_record_is_parked_rest_flows,
        faults::kafka_paused_longer_than_client_timeouts,
        faults::crash_during_recovery_loses_nothing,
        faults::bounded_soak_loses_nothing,
        faults::kafka_killed_and_paused_mid_stream,
        faults::failpoint_crashes_lose_nothing,
        mosquitto_restart::mosquitto_restarts_lose_nothing,
        qos2::qos2_exactly_once_into_the_wal_across_crashes_and_restarts,
        broker_state::broker_drops_and_lost_sessions_are_visible,
        order::mosquitto_restart_while_draining_a_backlog_keeps_order,
        policies::wal_cap_drops_the_oldest_during_an_outage,
        policies::wal_cap_blocks_then_loses_nothing,
        policies::expired_records_are_dead_lettered_or_dropped,
        reload::sighup_reloads_what_can_change_live,
        secured::password_file_and_acl,
        suback_refused::refused_subscription_fails_readyz_and_is_retried,
        mqtt_tls::tls_and_mutual_tls_to_mosquitto,
        kafka_sasl::sasl_ssl_scram_sasl_plain_and_acls,
        walkthrough::readme_walkthrough_from_kafka_connect,
        unknown_topic::unknown_topics_are_held_then_delivered_or_parked,
        wal_faults::slow_fsync_sigkill_mid_commit_loses_nothing,
        wal_faults::wal_io_errors_not_acked_then_reopened,
        clock::clock_jumps_back_and_forward_lose_nothing,
        outage::kafka_down_for_minutes_while_traffic_continues,
        bad_input::retained_message_and_bad_admin_requests,
        systemd::notify_ready_watchdog_stopping_and_stuck_loop,
        timestamps::refused_timestamps_are_restamped_not_stalled,
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| Trial::test(name, f))
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Stop the shared broker (statics are not dropped at exit).
    if let Some(k) = SHARED.get() {
        k.stop();
    }
    conclusion.exit();
}

static SHARED: OnceLock<&'static Kafka> = OnceLock::new();

/// The shared broker, remembered for the final stop.
fn kafka() -> &'static Kafka {
    let k = shared_kafka();
    let _ = SHARED.set(k);
    k
}

/// Shorthand for building a failure.
fn fail(msg: impl Into<String>) -> Failed {
    msg.into().into()
}
