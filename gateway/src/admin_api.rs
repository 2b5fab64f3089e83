//! The admin API server as the gateway runs it: bound at start (a failure stops the
//! start), then moved to a new address, started or stopped when a configuration
//! reload changes `admin.listen` / `admin.enabled` / whether `[admin.tls]` is set. A
//! new address that cannot be bound is logged and the server stays where it was. With
//! TLS, a reload serves the certificate read again (renewed) to new connections.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminConfig, Loaded};

type TlsConfig = Option<Arc<rustls::ServerConfig>>;

/// One running server.
struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    fn start(
        listener: tokio::net::TcpListener,
        source: Arc<dyn admin::Source>,
        tls: Option<admin::Tls>,
    ) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let stop = CancellationToken::new();
        let task = match tls {
            None => tokio::spawn(admin::serve(listener, source, stop.clone())),
            Some(tls) => tokio::spawn(admin::serve_tls(listener, source, stop.clone(), tls)),
        };
        Self { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The admin API server and its configuration.
pub struct AdminApi {
    source: Arc<dyn admin::Source>,
    config: AdminConfig,
    server: Option<Server>,
    /// The running server's TLS configuration, when it serves HTTPS.
    tls: Option<admin::Tls>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("addr", &self.addr())
            .finish()
    }
}

impl AdminApi {
    /// Start serving `source` as `config` says.
    pub async fn start(
        config: &AdminConfig,
        tls: TlsConfig,
        source: Arc<dyn admin::Source>,
    ) -> Result<Self, std::io::Error> {
        let mut api = Self {
            source,
            config: config.clone(),
            server: None,
            tls: None,
        };
        if config.enabled {
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            api.tls = tls.map(admin::Tls::new);
            api.server = Some(Server::start(listener, api.source.clone(), api.tls.clone()));
            tracing::info!(addr = %api.addr().expect("started"), https = api.tls.is_some(), "admin API listening");
        }
        Ok(api)
    }

    /// The address it listens on, if it serves.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(|s| s.addr)
    }

    /// Follow reloads of the configuration until `stop`; then stop serving.
    pub async fn follow(
        mut self,
        mut config: watch::Receiver<Arc<Loaded>>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                r = config.changed() => {
                    if r.is_err() {
                        stop.cancelled().await;
                        break;
                    }
                    let loaded = config.borrow_and_update().clone();
                    self.source
                        .access()
                        .set(loaded.admin_token.as_ref().map(|t| t.expose()));
                    self.apply(loaded.config.admin.clone(), loaded.admin_tls.clone()).await;
                }
            }
        }
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    async fn apply(&mut self, new: AdminConfig, tls: TlsConfig) {
        if !new.enabled {
            if let Some(s) = self.server.take() {
                s.stop().await;
                tracing::info!("admin API stopped (admin.enabled = false)");
            }
            self.config = new;
            return;
        }
        let same_scheme = self.tls.is_some() == tls.is_some();
        if self.server.is_some() && new.listen == self.config.listen && same_scheme {
            // A renewed certificate (the files are read on every reload).
            if let (Some(current), Some(fresh)) = (&self.tls, tls) {
                current.set(fresh);
                tracing::info!(
                    "admin API certificate read again (admin.tls); new connections get it"
                );
            }
            self.config = new;
            return;
        }
        // Switching between HTTP and HTTPS on the same address: free it first.
        if self.server.is_some() && new.listen == self.config.listen {
            if let Some(s) = self.server.take() {
                s.stop().await;
            }
        }
        match tokio::net::TcpListener::bind(new.listen).await {
            Ok(listener) => {
                if let Some(s) = self.server.take() {
                    s.stop().await;
                }
                self.tls = tls.map(admin::Tls::new);
                let server = Server::start(listener, self.source.clone(), self.tls.clone());
                tracing::info!(addr = %server.addr, https = self.tls.is_some(), "admin API listening (configuration reload)");
                self.server = Some(server);
                self.config = new;
            }
            Err(e) if self.server.is_some() => tracing::error!(
                addr = %new.listen,
                error = %e,
                "cannot listen on the new admin.listen; the admin API stays where it was"
            ),
            Err(e) => tracing::error!(
                addr = %new.listen,
                error = %e,
                "cannot listen on admin.listen; the admin API is stopped until a reload can bind it"
            ),
        }
    }
}
