//! Dead letters managed on the running gateway against the real broker: two records
//! above the topic's `max.message.bytes` are parked and listed with their reason; once
//! the topic takes larger records, one is replayed (by sequence) and arrives in Kafka;
//! the other is purged (by MQTT topic), counted and logged. The routes that change
//! something need the token.

use std::net::SocketAddr;
use std::time::Duration;

use harness::{check, http_request, run_gateway_cmd, wait_until};
use libtest_mimic::Failed;
use serde_json::Value;

use crate::common::Site;
use crate::{bin, fail, kafka, messages};

fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, Value), Failed> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let (status, body) = http_request(admin, method, path, &headers)?;
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, v))
}

pub fn dead_letters_listed_replayed_and_purged() -> Result<(), Failed> {
    let site = Site::new(kafka(), "dl")?;
    let token = "dl-token-5b1e";
    let token_file = site.path().join("admin.token");
    std::fs::write(&token_file, token)?;
    // The producer may send records up to 3 MB; the topic takes 1 MB (Kafka's default).
    let cfg = site
        .config()
        .property("message.max.bytes", 3_000_000)
        .admin("token_file", token_file.to_str().ok_or("path")?);
    let gw = site.gateway_with(&cfg, &[]);
    let admin = gw.admin;
    let t = Some(token);

    let mut msgs = messages("dl", &["b/x".into()], 20, 100);
    msgs.insert(10, ("c/x".into(), harness::payload("huge", 1, 1_500_000)));
    msgs.insert(5, ("b/x".into(), harness::payload("huge", 0, 1_500_000)));
    let published = site.publish_all(&msgs, Duration::from_secs(60))?;
    wait_until("both huge records parked", Duration::from_secs(90), || {
        call(admin, "GET", "/backlog", t)
            .is_ok_and(|(_, v)| v["dead_letters"]["records"] == 2 && v["records"] == 0)
    });
    let (_, listed) = call(admin, "GET", "/dead-letters", t)?;
    let parked = listed["dead_letters"].as_array().ok_or("no list")?;
    if parked.len() != 2
        || parked.iter().any(|d| {
            !d["reason"]
                .as_str()
                .is_some_and(|r| r.to_lowercase().contains("too large"))
        })
    {
        return Err(fail(format!("/dead-letters: {listed}")));
    }
    let first = parked[0]["seq"].as_u64().ok_or("no seq")?;
    if parked[0]["mqtt_topic"] != "b/x" || parked[1]["mqtt_topic"] != "c/x" {
        return Err(fail(format!("unexpected order: {listed}")));
    }

    // Changes need the token, a selection and POST.
    let replay_first = format!("/dead-letters/replay?from={first}&to={first}");
    for (method, path, token, want) in [
        ("POST", replay_first.as_str(), None, 401),
        ("POST", replay_first.as_str(), Some("wrong"), 401),
        ("POST", "/dead-letters/replay", t, 400),
        ("GET", replay_first.as_str(), t, 405),
    ] {
        let (status, body) = call(admin, method, path, token)?;
        if status != want {
            return Err(fail(format!(
                "{method} {path}: {status} {body}, want {want}"
            )));
        }
    }
    if call(admin, "GET", "/backlog", t)?.1["dead_letters"]["records"] != 2 {
        return Err(fail("a refused request changed the dead letters"));
    }

    // The cause fixed: the topic takes 3 MB records. Replay the first one.
    alter_topic(
        &site.kafka.bootstrap(),
        &site.topic,
        "max.message.bytes",
        "3000000",
    )?;
    let (status, outcome) = call(admin, "POST", &replay_first, t)?;
    if status != 200 || outcome["done"] != 1 || outcome["matched"] != 1 {
        return Err(fail(format!("replay: {status} {outcome}")));
    }
    let expected: Vec<_> = published
        .iter()
        .filter(|p| !p.payload.starts_with(b"huge:1:"))
        .cloned()
        .collect();
    let consumed = site.consume(expected.len(), Duration::from_secs(90));
    let report = check(&expected, &consumed);
    eprintln!("{report}");
    report.assert_clean();

    // Purge the other by its MQTT topic, with the CLI: it asks first (no terminal
    // here: refused without --yes); then counted, logged, gone.
    let config = site.path().join("gateway.toml");
    let config = config.to_str().ok_or("path")?;
    let purge = [
        "dead-letters",
        "purge",
        "--config",
        config,
        "--topic",
        "c/#",
    ];
    let (code, out) = run_gateway_cmd(bin(), &purge);
    if code != Some(1) || !out.contains("nothing purged") {
        return Err(fail(format!("purge without --yes: {code:?} {out}")));
    }
    let (code, out) = run_gateway_cmd(bin(), &[&purge[..], &["--yes"]].concat());
    if code != Some(0) || !out.contains("1 of 1 dead letters purged") {
        return Err(fail(format!("purge: {code:?} {out}")));
    }
    let (_, backlog) = call(admin, "GET", "/backlog", t)?;
    let d = &backlog["dead_letters"];
    if d["records"] != 0 || d["purged"] != 1 || d["replayed"] != 1 {
        return Err(fail(format!("after purge: {backlog}")));
    }
    let (_, metrics) = call(admin, "GET", "/metrics", t)?;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    if !metrics.contains("mkg_dead_letters_purged_total 1")
        || !metrics.contains("mkg_dead_letters_replayed_total 1")
    {
        return Err(fail(format!("not counted:\n{metrics}")));
    }
    let log = gw.log();
    if !log.contains("dead letters purged by an operator") || !log.contains("topic c/#") {
        return Err(fail(format!("purge not logged:\n{log}")));
    }
    if consumed.iter().any(|c| c.payload.starts_with(b"huge:1:")) {
        return Err(fail("the purged record reached Kafka"));
    }
    Ok(())
}

fn alter_topic(bootstrap: &str, topic: &str, key: &str, value: &str) -> Result<(), Failed> {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for r in rt.block_on(admin.alter_configs([&change], &opts))? {
        r.map_err(|(res, e)| fail(format!("alter {res:?}: {e}")))?;
    }
    Ok(())
}
