//! A few requests over real HTTP/1.1 to check `serve`, hyper wiring and shutdown.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{healthy, FakeSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for anything a test waits on; generous so slow CI does not flake.
const DEADLINE: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(source: FakeSource) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(admin::serve(listener, Arc::new(source), shutdown.clone()));
    Server {
        addr,
        shutdown,
        task,
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Reads one response, using content-length to find its end (every admin response
/// has one), so it works on keep-alive connections too.
async fn read_response(stream: &mut TcpStream, head_request: bool) -> Resp {
    tokio::time::timeout(DEADLINE, async {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&buf[..head_end]).unwrap().to_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: HashMap<String, String> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let len: usize = if head_request {
            0
        } else {
            headers["content-length"].parse().unwrap()
        };
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(body.len(), len, "extra bytes after the body");
        Resp {
            status,
            headers,
            body: String::from_utf8(body).unwrap(),
        }
    })
    .await
    .expect("response within deadline")
}

async fn send(stream: &mut TcpStream, method: &str, path: &str, extra_headers: &str) {
    let req = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n{extra_headers}\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
}

/// One request on a fresh connection.
async fn request(addr: SocketAddr, method: &str, path: &str, extra_headers: &str) -> Resp {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    send(&mut stream, method, path, extra_headers).await;
    read_response(&mut stream, method == "HEAD").await
}

/// Reads until EOF, proving the server closed its side.
async fn expect_eof(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
        .await
        .expect("server closes the connection")
        .ok();
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
}

async fn stop(server: Server) {
    server.shutdown.cancel();
    let res = tokio::time::timeout(DEADLINE, server.task)
        .await
        .expect("serve returns after cancel")
        .unwrap();
    assert!(res.is_ok(), "{res:?}");
}

#[tokio::test]
async fn routes_over_http() {
    let mut snap = healthy();
    snap.wal.writable = false;
    snap.wal.last_error = Some("no space".into());
    let server = start(FakeSource::new(snap)).await;

    let r = request(server.addr, "GET", "/healthz", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok\n");

    let r = request(server.addr, "GET", "/readyz", "").await;
    assert_eq!(r.status, 503);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["reasons"][0], "wal not writable: no space");

    let r = request(server.addr, "GET", "/metrics", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(r.body.contains("\nmkg_wal_writable 0\n"));

    // HEAD announces the GET length but sends nothing after the head.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    send(&mut stream, "HEAD", "/status", "connection: close\r\n").await;
    let r = read_response(&mut stream, true).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-length"].parse::<usize>().unwrap() > 0);
    expect_eof(&mut stream).await;

    let r = request(server.addr, "POST", "/status", "content-length: 0\r\n").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, HEAD");

    let r = request(server.addr, "GET", "/missing", "").await;
    assert_eq!(r.status, 404);

    stop(server).await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests() {
    let server = start(FakeSource::new(healthy())).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for path in ["/healthz", "/backlog", "/healthz"] {
        send(&mut stream, "GET", path, "").await;
        let r = read_response(&mut stream, false).await;
        assert_eq!(r.status, 200, "{path}");
    }
    stop(server).await;
}

#[tokio::test]
async fn huge_announced_body_is_refused_without_reading_it() {
    let server = start(FakeSource::new(healthy())).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Announce 1 GiB and send none of it: the answer must come anyway.
    send(
        &mut stream,
        "POST",
        "/status",
        "content-length: 1073741824\r\n",
    )
    .await;
    let r = read_response(&mut stream, false).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.headers["connection"], "close");
    expect_eof(&mut stream).await;
    stop(server).await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_accepting() {
    let server = start(FakeSource::new(healthy())).await;
    let addr = server.addr;

    // An idle keep-alive connection must not hold shutdown up.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    send(&mut idle, "GET", "/healthz", "").await;
    assert_eq!(read_response(&mut idle, false).await.status, 200);

    stop(server).await;
    expect_eof(&mut idle).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener is closed after serve returns"
    );
}

#[tokio::test]
async fn cancel_before_any_connection_returns() {
    let server = start(FakeSource::new(healthy())).await;
    stop(server).await;
}

#[tokio::test]
async fn the_console_page_over_http_with_a_token_configured() {
    let server = start(FakeSource::with_token(healthy(), "t0k3n")).await;
    let r = request(server.addr, "GET", "/", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert!(r.headers["content-security-policy"].starts_with("default-src 'none'; "));
    assert!(r.body.starts_with("<!doctype html>"));
    // What the page then fetches still needs the token.
    let r = request(server.addr, "GET", "/status", "").await;
    assert_eq!(r.status, 401);
    stop(server).await;
}
