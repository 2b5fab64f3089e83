//! The admin API server as the gateway runs it: bound at start (a failure stops the
//! start), then moved to a new address, started or stopped when a configuration
//! reload changes `admin.listen` / `admin.enabled`. A new address that cannot be bound
//! is logged and the server stays where it was.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminConfig, Loaded};

/// One running server.
struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    fn start(listener: tokio::net::TcpListener, source: Arc<dyn admin::Source>) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let stop = CancellationToken::new();
        let task = tokio::spawn(admin::serve(listener, source, stop.clone()));
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
        source: Arc<dyn admin::Source>,
    ) -> Result<Self, std::io::Error> {
        let mut api = Self {
            source,
            config: config.clone(),
            server: None,
        };
        if config.enabled {
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            api.server = Some(Server::start(listener, api.source.clone()));
            tracing::info!(addr = %api.addr().expect("started"), "admin API listening");
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
                    self.apply(loaded.config.admin.clone()).await;
                }
            }
        }
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    async fn apply(&mut self, new: AdminConfig) {
        if new == self.config {
            return;
        }
        if !new.enabled {
            if let Some(s) = self.server.take() {
                s.stop().await;
                tracing::info!("admin API stopped (admin.enabled = false)");
            }
            self.config = new;
            return;
        }
        if self.server.is_some() && new.listen == self.config.listen {
            self.config = new;
            return;
        }
        match tokio::net::TcpListener::bind(new.listen).await {
            Ok(listener) => {
                if let Some(s) = self.server.take() {
                    s.stop().await;
                }
                let server = Server::start(listener, self.source.clone());
                tracing::info!(addr = %server.addr, "admin API listening (configuration reload)");
                self.server = Some(server);
                self.config = new;
            }
            Err(e) => tracing::error!(
                addr = %new.listen,
                error = %e,
                "cannot listen on the new admin.listen; the admin API stays where it was"
            ),
        }
    }
}
