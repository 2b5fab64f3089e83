//! Request routing and the JSON/text responses of each route.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::{
    Backlog, DeadLetterAction, DeadLetters, Denied, Rates, RecordsQuery, Selection, Snapshot,
    Source, TopicsQuery,
};

/// Largest request body the admin API accepts; larger requests get 413 without being read.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// Methods the reading routes answer; kept in one place so the 405 `allow` header
/// stays truthful.
const ALLOW: &str = "GET, HEAD";
/// Methods the routes that change something answer.
const ALLOW_CHANGE: &str = "POST";

const CONTENT_TYPE_JSON: &str = "application/json";
const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";
const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const CONTENT_TYPE_HTML: &str = "text/html; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Page,
    Healthz,
    Readyz,
    Backlog,
    BacklogTopics,
    Status,
    Metrics,
    Records,
    History,
    DeadLetters,
    Replay,
    Purge,
}

/// The whole API surface; adding a route means one line here and one arm in `respond`.
const ROUTES: &[(&str, Route)] = &[
    ("/", Route::Page),
    ("/healthz", Route::Healthz),
    ("/readyz", Route::Readyz),
    ("/backlog", Route::Backlog),
    ("/backlog/topics", Route::BacklogTopics),
    ("/status", Route::Status),
    ("/metrics", Route::Metrics),
    ("/records", Route::Records),
    ("/history", Route::History),
    ("/dead-letters", Route::DeadLetters),
    ("/dead-letters/replay", Route::Replay),
    ("/dead-letters/purge", Route::Purge),
];

impl Route {
    /// Probes answer without a token: they reveal only "up" and why not ready. The
    /// console page holds no data (its script fetches the other routes with the token).
    fn is_open(self) -> bool {
        matches!(self, Route::Healthz | Route::Readyz | Route::Page)
    }

    /// Routes that change the gateway's state: `POST`, and only with a token.
    fn changes(self) -> bool {
        matches!(self, Route::Replay | Route::Purge)
    }
}

fn route(path: &str) -> Option<Route> {
    ROUTES.iter().find(|(p, _)| *p == path).map(|(_, r)| *r)
}

/// Answer one request (used by `serve` and directly by tests).
///
/// The body is never read (the `POST` routes take their selection from the query
/// string), so there is nothing to buffer and a client cannot make us hold memory by
/// streaming one.
pub async fn handle<B>(req: Request<B>, source: &dyn Source) -> Response<Full<Bytes>>
where
    B: Body,
{
    // Size is checked before routing so an oversized upload is refused cheaply
    // whatever it targets, and with `connection: close` so hyper does not try to
    // drain it for keep-alive.
    match announced_body_len(&req) {
        Err(()) => return json_error(StatusCode::BAD_REQUEST, "invalid content-length", None),
        Ok(len) if len > MAX_BODY_BYTES => {
            let mut resp = json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large",
                Some(("limit", MAX_BODY_BYTES.into())),
            );
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        Ok(_) => {}
    }

    let path = req.uri().path();
    let Some(route) = route(path) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not found",
            Some(("path", path.into())),
        );
    };

    let method = req.method();
    let allowed = if route.changes() {
        method == Method::POST
    } else {
        method == Method::GET || method == Method::HEAD
    };
    if !allowed {
        let mut resp = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
            Some(("method", method.as_str().into())),
        );
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static(if route.changes() { ALLOW_CHANGE } else { ALLOW }),
        );
        return resp;
    }

    if !route.is_open() {
        if let Err(denied) = source.access().check(req.headers(), route.changes()) {
            return refuse(denied);
        }
    }

    if route.changes() {
        let action = if route == Route::Replay {
            DeadLetterAction::Replay
        } else {
            DeadLetterAction::Purge
        };
        return match Selection::parse(req.uri().query()) {
            Err(e) => json_error(
                StatusCode::BAD_REQUEST,
                "bad query",
                Some(("detail", e.into())),
            ),
            Ok(sel) => match source.dead_letter_action(action, sel).await {
                Ok(outcome) => json(StatusCode::OK, &outcome),
                Err(e) => json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not done",
                    Some(("detail", e.into())),
                ),
            },
        };
    }

    let resp = respond(route, req.uri().query(), source);
    if method == Method::HEAD {
        strip_body(resp)
    } else {
        resp
    }
}

fn respond(route: Route, query: Option<&str>, source: &dyn Source) -> Response<Full<Bytes>> {
    match route {
        Route::Page => page_html(),
        Route::Records => page(query, |q| source.records(q)),
        Route::History => json(StatusCode::OK, &source.history()),
        Route::BacklogTopics => match TopicsQuery::parse(query) {
            Err(e) => json_error(
                StatusCode::BAD_REQUEST,
                "bad query",
                Some(("detail", e.into())),
            ),
            Ok(q) => match source.backlog_topics(&q) {
                Ok(page) => json(StatusCode::OK, &page),
                Err(e) => json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot read the WAL",
                    Some(("detail", e.into())),
                ),
            },
        },
        Route::DeadLetters => page(query, |q| source.dead_letters(q)),
        // Answered in `handle` (they are asynchronous); never reached.
        Route::Replay | Route::Purge => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST", None)
        }
        Route::Healthz => text(StatusCode::OK, CONTENT_TYPE_TEXT, "ok\n".into()),
        Route::Readyz => readyz(&source.snapshot()),
        Route::Backlog => {
            let snap = source.snapshot();
            json(
                StatusCode::OK,
                &BacklogView {
                    backlog: &snap.backlog,
                    dead_letters: &snap.dead_letters,
                    rates: &snap.rates,
                },
            )
        }
        Route::Status => json(StatusCode::OK, &source.snapshot()),
        Route::Metrics => {
            let mut body = crate::metrics::render(&source.snapshot());
            // A WAL that cannot be read now leaves these out; the rest still answers.
            if let Ok(page) = source.backlog_topics(&TopicsQuery::default()) {
                crate::metrics::render_topics(&mut body, &page);
            }
            text(StatusCode::OK, CONTENT_TYPE_PROMETHEUS, body.into_bytes())
        }
    }
}

/// Length the client says it will send: the `content-length` header, or failing
/// that the body's own lower bound (which is how hyper reports a known length and
/// how a directly-built request reports its size).
fn announced_body_len<B: Body>(req: &Request<B>) -> Result<u64, ()> {
    let hint = req.body().size_hint().lower();
    let mut values = req.headers().get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(hint);
    };
    let parse = |v: &HeaderValue| -> Result<u64, ()> {
        let s = v.to_str().map_err(|_| ())?;
        // `u64::from_str` accepts a leading '+', which HTTP does not.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        s.parse().map_err(|_| ())
    };
    let len = parse(first)?;
    // Disagreeing duplicates are a request-smuggling shape; refuse rather than pick one.
    for v in values {
        if parse(v)? != len {
            return Err(());
        }
    }
    Ok(len.max(hint))
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
}

fn readyz(snap: &Snapshot) -> Response<Full<Bytes>> {
    let mut reasons = Vec::new();
    if !snap.mqtt.connected {
        reasons.push(with_cause("mqtt not connected", &snap.mqtt.last_error));
    } else if !snap.mqtt.refused_subscriptions.is_empty() {
        reasons.push(format!(
            "mqtt broker refused subscription to {} (check its ACL for this user)",
            snap.mqtt.refused_subscriptions.join(", ")
        ));
    } else if !snap.mqtt.subscribed {
        reasons.push("mqtt subscriptions not acknowledged yet".to_owned());
    }
    if !snap.wal.writable {
        reasons.push(with_cause("wal not writable", &snap.wal.last_error));
    }
    if !snap.mqtt.accepting {
        // Paused by the WAL (full disk, cap): say why, unless said above already.
        let cause = if snap.wal.writable {
            &snap.wal.last_error
        } else {
            &None
        };
        reasons.push(with_cause("mqtt ingest paused", cause));
    }
    if let Some(lost) = snap.mqtt.session_lost.as_ref().filter(|l| l.alerting) {
        reasons.push(format!(
            "mqtt broker lost the gateway's persistent session {:.0}s ago: messages it had queued may be lost (see /status mqtt.session_lost)",
            lost.age_seconds
        ));
    }
    let ready = reasons.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &Readiness { ready, reasons })
}

fn with_cause(what: &str, cause: &Option<String>) -> String {
    match cause {
        Some(cause) => format!("{what}: {cause}"),
        None => what.to_owned(),
    }
}

#[derive(Serialize)]
struct BacklogView<'a> {
    #[serde(flatten)]
    backlog: &'a Backlog,
    dead_letters: &'a DeadLetters,
    rates: &'a Rates,
}

/// A page of records or dead letters: 400 for a bad query, 503 when the WAL cannot
/// be read now.
fn page<T: Serialize>(
    query: Option<&str>,
    read: impl FnOnce(&RecordsQuery) -> Result<T, String>,
) -> Response<Full<Bytes>> {
    match RecordsQuery::parse(query) {
        Err(e) => json_error(
            StatusCode::BAD_REQUEST,
            "bad query",
            Some(("detail", e.into())),
        ),
        Ok(q) => match read(&q) {
            Ok(page) => json(StatusCode::OK, &page),
            Err(e) => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read the WAL",
                Some(("detail", e.into())),
            ),
        },
    }
}

/// 401 (with the `WWW-Authenticate` challenge) or 403.
fn refuse(denied: Denied) -> Response<Full<Bytes>> {
    match denied {
        Denied::Unauthorized => {
            let mut resp = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                Some((
                    "hint",
                    "send the token of admin.token_file as Authorization: Bearer TOKEN".into(),
                )),
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mqtt-kafka-gateway\""),
            );
            resp
        }
        Denied::NoTokenConfigured => json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            Some((
                "hint",
                "changes through the admin API need a token: set admin.token_file".into(),
            )),
        ),
    }
}

/// Uniform error body `{"error": ..., <field>: ...}` so clients can rely on one shape.
fn json_error(
    status: StatusCode,
    error: &str,
    field: Option<(&str, serde_json::Value)>,
) -> Response<Full<Bytes>> {
    let mut body = serde_json::Map::new();
    body.insert("error".to_owned(), error.into());
    if let Some((k, v)) = field {
        body.insert(k.to_owned(), v);
    }
    json(status, &body)
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            // Trailing newline so `curl` output does not run into the prompt.
            body.push(b'\n');
            text(status, CONTENT_TYPE_JSON, body)
        }
        // Our types only hold strings, numbers and options, so this is unreachable in
        // practice; still answer rather than panic.
        Err(e) => {
            tracing::error!(error = %e, "failed to serialize admin response");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                CONTENT_TYPE_JSON,
                b"{\"error\":\"internal error\"}\n".to_vec(),
            )
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let len = body.len();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // Stats are live; an intermediary serving a cached copy would mislead operators.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The console page, with a policy that lets it run only its own inline script and
/// style and talk only to this origin.
fn page_html() -> Response<Full<Bytes>> {
    let mut resp = text(
        StatusCode::OK,
        CONTENT_TYPE_HTML,
        crate::page::HTML.as_bytes().to_vec(),
    );
    let headers = resp.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(crate::page::content_security_policy()) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// HEAD keeps the GET headers (including content-length) but sends no body; hyper
/// accepts a content-length without a body only for HEAD.
fn strip_body(resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}
