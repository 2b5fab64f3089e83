//! The operator console (`GET /`) in a real headless Chromium against a running
//! gateway with a token, a real Mosquitto and a Kafka of its own: during a Kafka outage
//! the page asks for the token, then shows the backlog the API reports, Kafka not
//! delivering, the last-hour chart, the per-topic table (or that it is not
//! available), the dead letters and a peek at the backlog; Replay and Purge (after a
//! confirmation) change the dead letters as the API then reports; on a phone-size
//! screen nothing overflows; once Kafka is back the page shows it delivering and the
//! backlog empty. Screenshots: `target/console-page.png` (desktop, during the outage)
//! and `target/console-page-phone.png`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::browser::Browser;
use harness::{http_request, payload, repo_root, wait_until, Kafka};
use libtest_mimic::Failed;
use serde_json::Value;

use crate::common::{wait_kafka_dead, Site};
use crate::{fail, messages};

const TOKEN: &str = "console-token-8d41f0";

/// GET or POST an admin route with the token; (status, JSON or the text).
fn call(admin: SocketAddr, method: &str, path: &str) -> Result<(u16, Value), Failed> {
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = http_request(admin, method, path, &[("Authorization", &auth)])?;
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, v))
}

/// A JSON route that must answer 200.
fn get(admin: SocketAddr, path: &str) -> Result<Value, Failed> {
    match call(admin, "GET", path)? {
        (200, v) => Ok(v),
        (status, v) => Err(fail(format!("GET {path}: {status} {v}"))),
    }
}

/// A number the page shows in `data-value` (`None` until it shows one).
fn shown(b: &Browser, css: &str) -> Option<u64> {
    b.attr(css, "data-value").ok()??.parse().ok()
}

/// `n` with thousands separators, as the page writes counts.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The `data-seq` of every row of the table body `css`.
fn seqs(b: &Browser, css: &str) -> Vec<u64> {
    b.script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tr[data-seq]')).map(function (r) { return +r.getAttribute('data-seq'); });",
        &[css.into()],
    )
    .ok()
    .and_then(|v| serde_json::from_value(v).ok())
    .unwrap_or_default()
}

fn screenshot_path(name: &str) -> PathBuf {
    repo_root().join("target").join(name)
}

pub fn operator_console_in_a_real_browser() -> Result<(), Failed> {
    let started = Instant::now();
    // The browser first: a machine without Chromium fails here, at once.
    let browser = Browser::start(1280, 1024)?;
    let own = Kafka::start();
    let site = Site::new(&own, "console")?;
    let token_file = site.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    // The producer may send records up to 3 MB; the topic takes 1 MB (Kafka's default):
    // two bigger ones become dead letters.
    let cfg = site
        .config()
        .property("message.max.bytes", 3_000_000)
        .admin("token_file", token_file.to_str().ok_or("path")?);
    let gw = site.gateway_with(&cfg, &[]);
    let admin = gw.admin;

    let mut msgs = messages("cp", &["site/ok".into()], 10, 100);
    msgs.insert(3, ("site/big/a".into(), payload("huge", 0, 1_500_000)));
    msgs.insert(7, ("site/big/b".into(), payload("huge", 1, 1_500_000)));
    site.publish_all(&msgs, Duration::from_secs(60))?;
    wait_until(
        "two dead letters and no backlog",
        Duration::from_secs(90),
        || {
            get(admin, "/backlog")
                .is_ok_and(|v| v["dead_letters"]["records"] == 2 && v["records"] == 0)
        },
    );

    // The outage: Kafka killed, traffic goes on into the WAL.
    let pid = own.pid().ok_or_else(|| fail("no kafka pid"))?;
    harness::kill(pid, libc::SIGKILL);
    wait_kafka_dead(pid);
    let topics: Vec<String> = (1..=3).map(|i| format!("site/dev{i}")).collect();
    let outage = 1_234;
    site.publish_all(
        &messages("cpo", &topics, outage, 120),
        Duration::from_secs(60),
    )?;
    wait_until(
        "the outage's records in the WAL",
        Duration::from_secs(30),
        || get(admin, "/backlog").is_ok_and(|v| v["records"] == outage),
    );

    // The page asks for the token (a form, not a dialog), keeps it in the tab.
    let url = format!("http://{admin}/");
    browser.goto(&url)?;
    wait_until("the token form", Duration::from_secs(30), || {
        browser.visible("#auth").unwrap_or(false)
    });
    let asked = browser.text("#auth-message")?;
    if !asked.contains("token") {
        return Err(fail(format!("the token form says {asked:?}")));
    }
    browser.type_into("#token", TOKEN)?;
    browser.click("#token-submit")?;
    let deadline = Duration::from_secs(30);
    wait_until(
        "the page to show the backlog /backlog reports",
        deadline,
        || {
            let api = get(admin, "/backlog")
                .ok()
                .and_then(|v| v["records"].as_u64());
            api.is_some() && shown(&browser, "#backlog-records") == api
        },
    );
    let records = shown(&browser, "#backlog-records").unwrap_or(0);
    let text = browser.text("#backlog-records")?;
    if text != thousands(records) || browser.visible("#auth")? {
        return Err(fail(format!(
            "backlog shown as {text:?} for {records}, or the token form still open"
        )));
    }
    let location = browser.script("return location.href;", &[])?;
    let kept = browser.script("return sessionStorage.getItem('mkg-admin-token');", &[])?;
    if location != url.as_str() || kept != TOKEN {
        return Err(fail(format!(
            "the token is in the URL or not kept: {location} {kept}"
        )));
    }
    // Styled: the policy let the page's own style in.
    let style = browser.script(
        "return getComputedStyle(document.getElementById('kafka')).borderLeftWidth;",
        &[],
    )?;
    if style != "6px" {
        return Err(fail(format!("the page's style is not applied ({style})")));
    }

    // Status: Kafka not delivering, with its last error; MQTT and the WAL fine.
    wait_until("Kafka shown as not delivering", deadline, || {
        browser
            .attr("#kafka", "data-state")
            .ok()
            .flatten()
            .as_deref()
            == Some("bad")
    });
    for (card, want) in [("#mqtt", "ok"), ("#wal", "ok")] {
        let state = browser.attr(card, "data-state")?;
        if state.as_deref() != Some(want) {
            return Err(fail(format!("{card} is {state:?}, want {want}")));
        }
    }
    let kafka_error = browser.text("#kafka-error")?;
    if !kafka_error.starts_with("Last error: ") {
        return Err(fail(format!("no Kafka error shown: {kafka_error:?}")));
    }
    let age = browser.text("#backlog-oldest-age")?;
    let eta = browser.text("#eta-empty")?;
    if !age.contains(" s") || eta != "not draining" {
        return Err(fail(format!("oldest {age:?}, empty in {eta:?}")));
    }

    // The per-topic table, or that this gateway has none.
    let (status, by_topic) = call(admin, "GET", "/backlog/topics?by=kafka&limit=50")?;
    if status == 404 {
        wait_until("per-topic backlog said unavailable", deadline, || {
            browser
                .text("#topics-status")
                .is_ok_and(|t| t.contains("per-topic backlog not available"))
        });
    } else {
        let topic = by_topic["topics"][0]["topic"]
            .as_str()
            .ok_or_else(|| fail(format!("/backlog/topics: {status} {by_topic}")))?
            .to_string();
        wait_until("the per-topic table", deadline, || {
            browser
                .attr("#topics-rows tr", "data-topic")
                .ok()
                .flatten()
                .as_deref()
                == Some(topic.as_str())
        });
    }

    // The chart of the last hour, drawn from /history.
    wait_until("the backlog in the chart", deadline, || {
        browser
            .attr("#chart-backlog path[data-series=backlog]", "data-points")
            .ok()
            .flatten()
            .is_some_and(|n| n.parse::<u64>().unwrap_or(0) >= 1)
    });

    // The dead letters, as /dead-letters lists them.
    let listed = get(admin, "/dead-letters")?;
    let parked: Vec<u64> = listed["dead_letters"]
        .as_array()
        .ok_or("no list")?
        .iter()
        .filter_map(|d| d["seq"].as_u64())
        .collect();
    if parked.len() != 2 || seqs(&browser, "#dl-rows") != parked {
        return Err(fail(format!(
            "dead letters shown {:?}, API {parked:?}",
            seqs(&browser, "#dl-rows")
        )));
    }

    // Peek: the oldest records, then the next page.
    let first = get(admin, "/records?limit=20")?;
    let want: Vec<u64> = first["records"]
        .as_array()
        .ok_or("no records")?
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    if want.len() != 20 || seqs(&browser, "#peek-rows") != want {
        return Err(fail(format!(
            "peek shows {:?}, /records {want:?}",
            seqs(&browser, "#peek-rows")
        )));
    }
    // An operator's query: five records of one topic, then the next five.
    browser.type_into("#peek-limit", "5")?;
    browser.type_into("#peek-topic", "site/dev2")?;
    browser.click("#peek-go")?;
    let query = get(admin, "/records?limit=5&topic=site%2Fdev2")?;
    let want: Vec<u64> = query["records"]
        .as_array()
        .ok_or("no records")?
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    wait_until("the peek of one topic", deadline, || {
        seqs(&browser, "#peek-rows") == want
    });
    let shot = Browser::save_png(
        &screenshot_path("console-page.png"),
        &browser.full_page_screenshot()?,
    )?;
    eprintln!("screenshot during the Kafka outage: {}", shot.display());
    let next = query["next"].as_u64().ok_or("no next page")?;
    let then = get(
        admin,
        &format!("/records?limit=5&topic=site%2Fdev2&from={next}"),
    )?;
    let want: Vec<u64> = then["records"]
        .as_array()
        .ok_or("no records")?
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    browser.click("#peek-next")?;
    wait_until("the next page of the peek", deadline, || {
        seqs(&browser, "#peek-rows") == want
    });

    // Replay the first dead letter, chosen by typing its sequence.
    let seq = parked[0].to_string();
    browser.type_into("#dl-from", &seq)?;
    browser.type_into("#dl-to", &seq)?;
    browser.click("#dl-replay")?;
    wait_until("the dead letter replayed", deadline, || {
        get(admin, "/backlog").is_ok_and(|v| {
            v["dead_letters"]["replayed"] == 1
                && v["dead_letters"]["records"] == 1
                && v["records"] == outage + 1
        })
    });
    wait_until("the replay reported and listed", deadline, || {
        browser
            .text("#dl-result")
            .is_ok_and(|t| t.starts_with("Replayed 1 of 1 dead letters"))
            && seqs(&browser, "#dl-rows") == parked[1..]
    });

    // Purge all: nothing happens until the operator confirms.
    browser.type_into("#dl-from", "")?;
    browser.type_into("#dl-to", "")?;
    browser.click("#dl-all")?;
    browser.click("#dl-purge")?;
    if !browser.visible("#dl-confirm")? || !browser.text("#dl-confirm-text")?.contains("all") {
        return Err(fail("purge did not ask for confirmation"));
    }
    if get(admin, "/backlog")?["dead_letters"]["records"] != 1 {
        return Err(fail("purged before the confirmation"));
    }
    browser.click("#dl-confirm-yes")?;
    wait_until("the dead letters purged", deadline, || {
        get(admin, "/backlog")
            .is_ok_and(|v| v["dead_letters"]["records"] == 0 && v["dead_letters"]["purged"] == 1)
    });
    let metrics = get(admin, "/metrics")?;
    if !metrics
        .as_str()
        .is_some_and(|m| m.contains("mkg_dead_letters_purged_total 1"))
    {
        return Err(fail(format!("purge not counted: {metrics}")));
    }
    wait_until("the purge reported, the list empty", deadline, || {
        browser
            .text("#dl-result")
            .is_ok_and(|t| t.starts_with("Purged 1 of 1 dead letters"))
            && seqs(&browser, "#dl-rows").is_empty()
            && shown(&browser, "#backlog-dead-letters") == Some(0)
    });

    // A phone: the page fits its width (wide tables scroll inside their box).
    browser.emulate_screen(390, 844, 2.0, true)?;
    wait_until("the phone layout", deadline, || {
        browser
            .script("return window.innerWidth;", &[])
            .is_ok_and(|w| w == 390)
    });
    let overflow = browser.script(
        "return document.documentElement.scrollWidth - window.innerWidth;",
        &[],
    )?;
    if overflow.as_i64().unwrap_or(1) > 0 {
        return Err(fail(format!(
            "the page is {overflow} px wider than a phone"
        )));
    }
    browser.script("window.scrollTo(0, 0);", &[])?;
    let phone = Browser::save_png(
        &screenshot_path("console-page-phone.png"),
        &browser.screenshot()?,
    )?;
    eprintln!("phone-size screenshot: {}", phone.display());
    browser.emulate_screen(1280, 1024, 1.0, false)?;

    // The page's own script and style never broke the policy (the console does
    // have the failed loads: the first 401s, and 404s without /backlog/topics).
    let log = browser.console_log()?;
    if let Some(v) = log.iter().find(|l| l.contains("Content Security Policy")) {
        return Err(fail(format!("policy violation: {v}")));
    }
    if !log
        .iter()
        .any(|l| l.contains("/status") && l.contains("401"))
    {
        return Err(fail(format!(
            "the browser's console log is not read: {log:?}"
        )));
    }

    // Kafka back: the backlog drains (the replayed record is parked again: the topic
    // still refuses it) and the page says so.
    own.start_again();
    wait_until("the backlog drained", Duration::from_secs(120), || {
        get(admin, "/backlog").is_ok_and(|v| v["records"] == 0)
    });
    wait_until("the page showing Kafka delivering", deadline, || {
        shown(&browser, "#backlog-records") == Some(0)
            && browser
                .attr("#kafka", "data-state")
                .ok()
                .flatten()
                .as_deref()
                == Some("ok")
            && browser.text("#eta-empty").is_ok_and(|t| t == "empty now")
    });
    eprintln!(
        "console page test took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
