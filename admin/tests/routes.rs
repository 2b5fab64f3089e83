//! Every route and status code, by calling `handle` directly (no sockets).

mod common;

use admin::{handle, Snapshot, MAX_BODY_BYTES};
use bytes::Bytes;
use common::{healthy, FakeSource};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body;
use hyper::{header, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

fn req(method: Method, uri: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())
        .unwrap()
}

fn get(uri: &str) -> Request<Empty<Bytes>> {
    req(Method::GET, uri)
}

async fn call<B: Body>(source: &FakeSource, r: Request<B>) -> (StatusCode, Response<()>, String) {
    let resp = handle(r, source).await;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    (parts.status, Response::from_parts(parts, ()), text)
}

fn header_of(resp: &Response<()>, name: header::HeaderName) -> &str {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn healthz_is_ok_without_reading_the_snapshot() {
    let src = FakeSource::new(healthy());
    let (status, resp, body) = call(&src, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok\n");
    assert!(header_of(&resp, header::CONTENT_TYPE).starts_with("text/plain"));
    assert_eq!(src.reads(), 0, "liveness must not depend on the gateway");
}

#[tokio::test]
async fn query_string_does_not_affect_routing() {
    let src = FakeSource::new(healthy());
    let (status, _, body) = call(&src, get("/healthz?verbose=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok\n");
}

#[tokio::test]
async fn readyz_ready() {
    let src = FakeSource::new(healthy());
    let (status, resp, body) = call(&src, get("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_of(&resp, header::CONTENT_TYPE), "application/json");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, json!({"ready": true}));
}

#[tokio::test]
async fn readyz_lists_every_reason() {
    let mut snap = healthy();
    snap.mqtt.connected = false;
    snap.mqtt.last_error = Some("connection refused".into());
    snap.mqtt.accepting = false;
    snap.wal.writable = false;
    snap.wal.last_error = Some("disk \"full\"".into());
    let src = FakeSource::new(snap);
    let (status, _, body) = call(&src, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({
            "ready": false,
            "reasons": [
                "mqtt not connected: connection refused",
                "wal not writable: disk \"full\"",
                "mqtt ingest paused",
            ]
        })
    );
}

#[tokio::test]
async fn readyz_single_reason_without_cause() {
    for (snap, reason) in [
        (
            Snapshot {
                wal: admin::WalStatus {
                    writable: false,
                    ..healthy().wal
                },
                ..healthy()
            },
            "wal not writable",
        ),
        (
            Snapshot {
                mqtt: admin::MqttStatus {
                    connected: false,
                    ..healthy().mqtt
                },
                ..healthy()
            },
            "mqtt not connected",
        ),
        (
            Snapshot {
                mqtt: admin::MqttStatus {
                    accepting: false,
                    ..healthy().mqtt
                },
                ..healthy()
            },
            "mqtt ingest paused",
        ),
        (
            Snapshot {
                mqtt: admin::MqttStatus {
                    subscribed: false,
                    ..healthy().mqtt
                },
                ..healthy()
            },
            "mqtt subscriptions not acknowledged yet",
        ),
        (
            Snapshot {
                mqtt: admin::MqttStatus {
                    subscribed: false,
                    refused_subscriptions: vec!["secret/#".into(), "$SYS/#".into()],
                    ..healthy().mqtt
                },
                ..healthy()
            },
            "mqtt broker refused subscription to secret/#, $SYS/# (check its ACL for this user)",
        ),
    ] {
        let src = FakeSource::new(snap);
        let (status, _, body) = call(&src, get("/readyz")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reason}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, json!({"ready": false, "reasons": [reason]}));
    }
}

#[tokio::test]
async fn readyz_fails_while_a_lost_session_is_recent() {
    let lost = |alerting| {
        let mut snap = healthy();
        snap.mqtt.session_lost = Some(admin::SessionLost {
            at_ms: 1,
            age_seconds: 42.4,
            message: "the broker restarted without persistence".into(),
            alerting,
        });
        snap
    };
    let (status, _, body) = call(&FakeSource::new(lost(true)), get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("lost the gateway's persistent session 42s ago"),
        "{body}"
    );
    let (status, _, _) = call(&FakeSource::new(lost(false)), get("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn backlog_includes_dead_letters() {
    let src = FakeSource::new(healthy());
    let (status, _, body) = call(&src, get("/backlog")).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({
            "records": 10, "bytes": 2048,
            "oldest_seq": 90, "newest_seq": 99,
            "oldest_age_seconds": 3.25,
            "next_seq": 100,
            "dropped": {"max_bytes": 0, "max_records": 6, "max_age": 0},
            "dead_letters": {"records": 2, "bytes": 300, "purged": 4, "replayed": 5, "dropped": 6},
            "rates": {
                "ingest_1m": 120.5, "ingest_5m": null, "drain_1m": 200.0, "drain_5m": null,
                "eta_empty_seconds": 12.5, "disk_free_bytes": 1000, "disk_headroom_bytes": 900,
                "backlog_growth_bytes_per_second": -80.0, "eta_ingest_pause_seconds": null
            }
        })
    );
}

#[tokio::test]
async fn backlog_empty_has_nulls() {
    let src = FakeSource::new(Snapshot::default());
    let (status, _, body) = call(&src, get("/backlog")).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["oldest_seq"], Value::Null);
    assert_eq!(v["oldest_age_seconds"], Value::Null);
    assert_eq!(v["records"], 0);
}

#[tokio::test]
async fn status_is_the_whole_snapshot() {
    let src = FakeSource::new(healthy());
    let (status, _, body) = call(&src, get("/status")).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::to_value(healthy()).unwrap());
    assert_eq!(v["gateway_id"], "edge-7");
    assert_eq!(v["mqtt"]["server"], "mqtt://broker:1883");
    assert_eq!(v["counters"]["kafka_producer_rebuilds"], 110);
    assert_eq!(src.reads(), 1);
}

#[tokio::test]
async fn metrics_exposition() {
    let src = FakeSource::new(healthy());
    let (status, resp, body) = call(&src, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header_of(&resp, header::CONTENT_TYPE),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    for (name, kind, value) in [
        ("mkg_mqtt_messages_received_total", "counter", "101"),
        ("mkg_mqtt_messages_acked_total", "counter", "102"),
        ("mkg_mqtt_reconnects_total", "counter", "103"),
        ("mkg_mqtt_sessions_lost_total", "counter", "112"),
        ("mkg_mqtt_subscriptions_refused_total", "counter", "114"),
        ("mkg_mqtt_broker_drops_total", "counter", "115"),
        ("mkg_mqtt_qos2_duplicates_total", "counter", "113"),
        ("mkg_wal_records_committed_total", "counter", "104"),
        ("mkg_wal_commits_total", "counter", "105"),
        ("mkg_wal_syncs_total", "counter", "111"),
        ("mkg_wal_commit_errors_total", "counter", "106"),
        ("mkg_kafka_records_forwarded_total", "counter", "107"),
        ("mkg_kafka_records_dead_lettered_total", "counter", "108"),
        ("mkg_wal_records_expired_total", "counter", "116"),
        ("mkg_kafka_delivery_errors_total", "counter", "109"),
        ("mkg_kafka_producer_rebuilds_total", "counter", "110"),
        ("mkg_config_reloads_total", "counter", "117"),
        ("mkg_config_reload_errors_total", "counter", "118"),
        ("mkg_backlog_records", "gauge", "10"),
        ("mkg_backlog_bytes", "gauge", "2048"),
        ("mkg_backlog_oldest_age_seconds", "gauge", "3.25"),
        ("mkg_dead_letter_records", "gauge", "2"),
        ("mkg_dead_letter_bytes", "gauge", "300"),
        ("mkg_kafka_in_flight", "gauge", "4"),
        ("mkg_mqtt_connected", "gauge", "1"),
        ("mkg_mqtt_subscribed", "gauge", "1"),
        ("mkg_mqtt_session_present", "gauge", "1"),
        ("mkg_mqtt_qos2_pending", "gauge", "3"),
        ("mkg_mqtt_accepting", "gauge", "1"),
        ("mkg_mqtt_broker_messages_dropped", "gauge", "7"),
        ("mkg_mqtt_broker_store_messages", "gauge", "1500"),
        ("mkg_wal_writable", "gauge", "1"),
        ("mkg_uptime_seconds", "gauge", "12.5"),
    ] {
        assert!(body.contains(&format!("# HELP {name} ")), "HELP {name}");
        assert!(
            body.contains(&format!("\n# TYPE {name} {kind}\n")),
            "TYPE {name}"
        );
        assert!(
            body.lines().any(|l| l == format!("{name} {value}")),
            "sample {name} {value} in\n{body}"
        );
    }
    assert!(body.contains("# TYPE mkg_build_info gauge\n"));
    assert!(body
        .lines()
        .any(|l| l == r#"mkg_build_info{version="1.2.3",gateway_id="edge-7"} 1"#));
    assert!(body.contains("\n# TYPE mkg_wal_commit_duration_seconds histogram\n"));
    for line in [
        r#"mkg_wal_commit_duration_seconds_bucket{le="0.02"} 104"#,
        r#"mkg_wal_commit_duration_seconds_bucket{le="+Inf"} 105"#,
        "mkg_wal_commit_duration_seconds_count 105",
        r#"mkg_wal_checkpoint_duration_seconds_bucket{le="0.05"} 3"#,
        "mkg_wal_checkpoint_duration_seconds_count 3",
        r#"mkg_record_durable_latency_seconds_bucket{le="0.02"} 99"#,
        r#"mkg_record_durable_latency_seconds_bucket{le="+Inf"} 100"#,
        r#"mkg_record_produce_latency_seconds_bucket{le="0.001"} 97"#,
        "mkg_record_delivery_latency_seconds_count 100",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} in\n{body}");
    }
}

#[tokio::test]
async fn metrics_empty_backlog_and_down_flags_are_zero() {
    let src = FakeSource::new(Snapshot::default());
    let (_, _, body) = call(&src, get("/metrics")).await;
    for line in [
        "mkg_backlog_oldest_age_seconds 0",
        "mkg_mqtt_connected 0",
        "mkg_mqtt_accepting 0",
        "mkg_wal_writable 0",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} in\n{body}");
    }
}

#[tokio::test]
async fn metrics_escape_label_values() {
    let mut snap = healthy();
    snap.version = "1.0 \"beta\"".into();
    snap.gateway_id = "a\\b\nc".into();
    let src = FakeSource::new(snap);
    let (_, _, body) = call(&src, get("/metrics")).await;
    let expected = r#"mkg_build_info{version="1.0 \"beta\"",gateway_id="a\\b\nc"} 1"#;
    assert!(body.lines().any(|l| l == expected), "{expected} in\n{body}");
    // The raw newline must not split the sample over two lines.
    assert!(!body.lines().any(|l| l.starts_with("c\"")));
}

#[tokio::test]
async fn unknown_path_is_404_json() {
    let src = FakeSource::new(healthy());
    let (status, resp, body) = call(&src, get("/nope%22%5C/x")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(header_of(&resp, header::CONTENT_TYPE), "application/json");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, json!({"error": "not found", "path": "/nope%22%5C/x"}));
    // Prefixes and trailing slashes are distinct paths, not aliases (`/` is the
    // console page, and only `/`).
    for path in ["/index.html", "//", "/healthz/", "/metricsx", "/HEALTHZ"] {
        let (status, _, _) = call(&src, get(path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let src = FakeSource::new(healthy());
    for path in ["/healthz", "/readyz", "/backlog", "/status", "/metrics"] {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let (status, resp, body) = call(&src, req(method.clone(), path)).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(header_of(&resp, header::ALLOW), "GET, HEAD");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"], "method not allowed");
            assert_eq!(v["method"], method.as_str());
        }
    }
    assert_eq!(
        src.reads(),
        0,
        "a refused request must not touch the gateway"
    );
}

#[tokio::test]
async fn head_has_get_headers_and_no_body() {
    let src = FakeSource::new(healthy());
    let (_, get_resp, get_body) = call(&src, get("/status")).await;
    let (status, resp, body) = call(&src, req(Method::HEAD, "/status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "");
    assert_eq!(
        header_of(&resp, header::CONTENT_LENGTH),
        get_body.len().to_string()
    );
    assert_eq!(
        header_of(&resp, header::CONTENT_TYPE),
        header_of(&get_resp, header::CONTENT_TYPE)
    );
}

#[tokio::test]
async fn oversized_content_length_is_413() {
    let src = FakeSource::new(healthy());
    for path in ["/status", "/nope"] {
        let r = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_LENGTH, MAX_BODY_BYTES + 1)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (status, resp, body) = call(&src, r).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert_eq!(header_of(&resp, header::CONNECTION), "close");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, json!({"error": "payload too large", "limit": 65536}));
    }
    assert_eq!(src.reads(), 0);
}

#[tokio::test]
async fn oversized_body_without_header_is_413() {
    let src = FakeSource::new(healthy());
    let big = Full::new(Bytes::from(vec![b'x'; MAX_BODY_BYTES as usize + 1]));
    let r = Request::builder().uri("/status").body(big).unwrap();
    let (status, _, _) = call(&src, r).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn body_at_the_limit_is_accepted() {
    let src = FakeSource::new(healthy());
    let r = Request::builder()
        .uri("/healthz")
        .header(header::CONTENT_LENGTH, MAX_BODY_BYTES)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (status, _, body) = call(&src, r).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok\n");
}

#[tokio::test]
async fn malformed_content_length_is_400() {
    let src = FakeSource::new(healthy());
    for values in [
        &["abc"][..],
        &["+5"],
        &["-1"],
        &[""],
        &["99999999999999999999999"],
        &["5", "6"],
    ] {
        let mut b = Request::builder().uri("/healthz");
        for v in values {
            b = b.header(header::CONTENT_LENGTH, *v);
        }
        let (status, _, body) = call(&src, b.body(Empty::<Bytes>::new()).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{values:?}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "invalid content-length");
    }
}

#[tokio::test]
async fn responses_are_not_cacheable() {
    let src = FakeSource::new(healthy());
    for path in ["/healthz", "/readyz", "/status", "/metrics", "/nope"] {
        let (_, resp, _) = call(&src, get(path)).await;
        assert_eq!(
            header_of(&resp, header::CACHE_CONTROL),
            "no-store",
            "{path}"
        );
    }
}

fn with_bearer(uri: &str, token: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn a_configured_token_guards_every_route_but_the_probes() {
    let src = FakeSource::with_token(healthy(), "t0k3n");
    for path in ["/backlog", "/status", "/metrics"] {
        let (status, resp, body) = call(&src, get(path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(header_of(&resp, header::WWW_AUTHENTICATE).starts_with("Bearer"));
        assert!(body.contains("admin.token_file"), "{body}");
        assert!(!body.contains("t0k3n"), "the token leaked: {body}");
        let (status, _, _) = call(&src, with_bearer(path, "wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _, _) = call(&src, with_bearer(path, "t0k3n")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let reads = src.reads();
    let (status, _, _) = call(&src, get("/status")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(src.reads(), reads, "refused before the snapshot is taken");
    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = call(&src, get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path} must stay open for probes");
    }
    // Unknown paths still answer 404, with or without the token.
    let (status, _, _) = call(&src, get("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn records_checks_its_query_and_says_when_it_cannot_read() {
    let src = FakeSource::new(healthy());
    let (status, _, body) = call(&src, get("/records?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("limit"), "{body}");
    // The fake has no WAL: 503 with the reason, not a 500 or an empty page.
    let (status, _, body) = call(&src, get("/records?from=5&limit=3")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let src = FakeSource::with_token(healthy(), "t");
    let (status, _, _) = call(&src, get("/records")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn history_answers_what_the_source_keeps() {
    let src = FakeSource::new(healthy());
    let (status, _, body) = call(&src, get("/history")).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["fine"], json!([]));
    let src = FakeSource::with_token(healthy(), "t");
    let (status, _, _) = call(&src, get("/history")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The console page's policy: nothing but its own inline script and style, and fetches
/// to this origin.
fn assert_strict_policy(resp: &Response<()>) {
    let csp = header_of(resp, header::CONTENT_SECURITY_POLICY);
    for part in [
        "default-src 'none'",
        "script-src 'sha256-",
        "style-src 'sha256-",
        "connect-src 'self'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{part} missing from {csp:?}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header_of(resp, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(header_of(resp, header::REFERRER_POLICY), "no-referrer");
}

#[tokio::test]
async fn the_console_page_is_served_without_a_token_and_holds_no_data() {
    for src in [
        FakeSource::new(healthy()),
        FakeSource::with_token(healthy(), "t0k3n"),
    ] {
        let (status, resp, body) = call(&src, get("/")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            header_of(&resp, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header_of(&resp, header::CACHE_CONTROL), "no-store");
        assert_strict_policy(&resp);
        assert!(body.starts_with("<!doctype html>"), "{}", &body[..40]);
        assert!(body.contains("name=\"viewport\""));
        for id in [
            "backlog-records",
            "kafka-state",
            "dl-replay",
            "peek-rows",
            "token",
        ] {
            assert!(body.contains(&format!("id=\"{id}\"")), "no #{id}");
        }
        // Small: it is compiled into the binary and fetched over slow uplinks.
        assert!(body.len() < 30 * 1024, "{} bytes", body.len());
        assert_eq!(
            header_of(&resp, header::CONTENT_LENGTH),
            body.len().to_string()
        );
        // No gateway state in it: it never reads the snapshot, and the same page
        // comes back whatever the gateway's state.
        assert!(!body.contains("edge-7"));
        assert_eq!(src.reads(), 0);

        let (status, head, head_body) = call(&src, req(Method::HEAD, "/")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(head_body, "");
        assert_eq!(
            header_of(&head, header::CONTENT_LENGTH),
            body.len().to_string()
        );
        assert_strict_policy(&head);

        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let (status, resp, _) = call(&src, req(method.clone(), "/")).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(header_of(&resp, header::ALLOW), "GET, HEAD");
        }
    }
    // With a token, the page is open but what it reads is not.
    let src = FakeSource::with_token(healthy(), "t0k3n");
    let (status, _, _) = call(&src, get("/?token=t0k3n")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&src, get("/status?token=t0k3n")).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a token in the URL is no token"
    );
}
