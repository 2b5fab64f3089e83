//! Accept loop and per-connection HTTP/1 serving with graceful shutdown.

use std::convert::Infallible;
use std::io;
use std::pin::pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::{rustls, TlsAcceptor};
use tokio_util::sync::CancellationToken;

use crate::{routes::handle, Source};

/// Slow-loris guard: a client that trickles its request head is dropped after this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight connections get to finish after shutdown; the admin API must
/// never hold up the gateway's own shutdown grace period.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause after an accept error that is not about a single connection (EMFILE,
/// ENFILE, ENOMEM...): retrying at once would spin and flood the log, and fds are
/// only freed as other work finishes. Hyper 0.14's `AddrIncoming` used the same 1 s.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Serve the admin API on an already-bound listener until `shutdown` is cancelled.
///
/// Accept errors are logged and retried, so this only returns once `shutdown` fires
/// and in-flight connections have finished (or a 2 s drain bound ran out). The
/// `io::Result` leaves room for fallible setup later without breaking callers.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn Source>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    run(listener, source, shutdown, None).await
}

/// [`serve`] over TLS: each connection's handshake uses the configuration `tls` holds
/// when it arrives, so [`Tls::set`] takes effect for new connections at once.
pub async fn serve_tls(
    listener: TcpListener,
    source: Arc<dyn Source>,
    shutdown: CancellationToken,
    tls: Tls,
) -> io::Result<()> {
    run(listener, source, shutdown, Some(tls)).await
}

/// The admin API's TLS server configuration, replaceable while serving (a renewed
/// certificate).
#[derive(Debug, Clone)]
pub struct Tls(Arc<RwLock<Arc<rustls::ServerConfig>>>);

impl Tls {
    /// Serve with `config`.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self(Arc::new(RwLock::new(config)))
    }

    /// Serve new connections with `config`.
    pub fn set(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

async fn run(
    listener: TcpListener,
    source: Arc<dyn Source>,
    shutdown: CancellationToken,
    tls: Option<Tls>,
) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);

    let mut conns = JoinSet::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin server listening");
    }

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            // Reap finished connections so the set does not grow for the process lifetime.
            Some(res) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = res {
                    if e.is_panic() {
                        tracing::error!(error = %e, "admin connection task panicked");
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let source = Arc::clone(&source);
                    let service = service_fn(move |req| {
                        let source = Arc::clone(&source);
                        async move { Ok::<_, Infallible>(handle(req, &*source).await) }
                    });
                    let shutdown = shutdown.clone();
                    let builder = builder.clone();
                    match tls.as_ref().map(Tls::acceptor) {
                        None => {
                            conns.spawn(async move {
                                connection(&builder, stream, service, shutdown, peer).await;
                            });
                        }
                        Some(acceptor) => {
                            conns.spawn(async move {
                                // The handshake gets the same bound as a request head.
                                let accepted = tokio::select! {
                                    r = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)) => r,
                                    () = shutdown.cancelled() => return,
                                };
                                match accepted {
                                    Ok(Ok(stream)) => {
                                        connection(&builder, stream, service, shutdown, peer).await;
                                    }
                                    // A plain-HTTP client or an untrusting one: routine.
                                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin TLS handshake failed"),
                                    Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "admin accept: connection failed before accept");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed; backing off");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                    }
                }
            }
        }
    }

    // Stop accepting before draining so new clients are refused rather than left hanging.
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!(
            remaining = conns.len(),
            "admin connections did not finish in time; aborting them"
        );
        conns.abort_all();
    }
    tracing::info!("admin server stopped");
    Ok(())
}

/// Serve one connection until it ends; at shutdown, finish the request in progress.
async fn connection<I, S>(
    builder: &http1::Builder,
    io: I,
    service: S,
    shutdown: CancellationToken,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        () = shutdown.cancelled() => {
            // Finish the request in progress, then close; idle keep-alive connections
            // close at once.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        // Client-side trouble (resets, header timeouts) is routine.
        tracing::debug!(%peer, error = %e, "admin connection ended with error");
    }
}

/// Errors about one connection that died between SYN and accept; the listener is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}
