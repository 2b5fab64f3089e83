//! Accept loop and per-connection HTTP/1 serving with graceful shutdown.

use std::convert::Infallible;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
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
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let shutdown = shutdown.clone();
                    conns.spawn(async move {
                        let mut conn = pin!(conn);
                        let res = tokio::select! {
                            res = conn.as_mut() => res,
                            () = shutdown.cancelled() => {
                                // Finish the request in progress, then close; idle
                                // keep-alive connections close at once.
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        };
                        if let Err(e) = res {
                            // Client-side trouble (resets, header timeouts) is routine.
                            tracing::debug!(%peer, error = %e, "admin connection ended with error");
                        }
                    });
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
