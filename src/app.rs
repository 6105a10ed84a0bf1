//! Assembling and running the gateway: [`Application::build`] binds, starts the built-in
//! simulator when no upstream is configured, the upstream pool, the hub and the router;
//! [`Application::run_until_stopped`] serves until a shutdown signal, then drains (streams get
//! `SHUTTING_DOWN`, upstream jobs are stopped) within the drain timeout.

use crate::config::{Settings, UpstreamTarget};
use crate::http::{self, AppState, HttpSettings};
use crate::hub::{Hub, HubSettings, Pools};
use crate::simulator::{self, Faults, SimulatorConfig, SimulatorHandle};
use crate::upstream::{Pool, UpstreamConfig};
use secrecy::SecretString;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The token the gateway presents to its built-in simulator (which accepts any).
const SIMULATOR_TOKEN: &str = "built-in-simulator";

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    hub: Hub,
    cluster: Option<crate::cluster::Cluster>,
    simulator: Option<SimulatorHandle>,
    cancel: CancellationToken,
    settings: Arc<Settings>,
    /// HTTPS/WSS (h2 + HTTP/1.1) when `tls.cert_file`/`tls.key_file` are set.
    tls: Option<crate::tls::Tls>,
    /// The plain-HTTP server's counters (lean event streams).
    connection_stats: Arc<http::serve::ConnectionStats>,
}

/// Why the gateway could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("binding {address}: {source}")]
    Bind { address: String, source: std::io::Error },
    #[error("simulator.inventory {path}: {reason}")]
    Inventory { path: String, reason: String },
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

impl Application {
    /// Binds `settings.listen` and builds everything.
    pub async fn build(settings: Settings) -> Result<Self, BuildError> {
        let listener = TcpListener::bind(&settings.listen)
            .await
            .map_err(|source| BuildError::Bind { address: settings.listen.clone(), source })?;
        Self::build_with_listener(settings, listener).await
    }

    /// Builds on a listener the caller bound (tests bind `127.0.0.1:0`).
    pub async fn build_with_listener(settings: Settings, listener: TcpListener) -> Result<Self, BuildError> {
        let cancel = CancellationToken::new();
        // Bad certificate files fail the start, not the first handshake.
        let tls = match (&settings.tls.cert_file, &settings.tls.key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::Tls::load(cert, key)?),
            _ => None,
        };
        let (url, token, simulator) = match settings.upstream_target() {
            UpstreamTarget::Simulator => {
                let sim = start_simulator(&settings, cancel.child_token()).await?;
                tracing::info!(url = %sim.ws_url(), "no SignalFx token or upstream URL configured: using the built-in SignalFlow simulator");
                (sim.ws_url(), SecretString::from(SIMULATOR_TOKEN), Some(sim))
            }
            UpstreamTarget::Remote(url) => {
                let token = settings.upstream.token.clone().unwrap_or_else(|| {
                    tracing::warn!(
                        "no upstream token configured; sending a placeholder (fine for a `simulate` instance)"
                    );
                    SecretString::from(SIMULATOR_TOKEN)
                });
                tracing::info!(%url, "using the SignalFlow upstream");
                (url, token, None)
            }
        };
        let config = UpstreamConfig { url, token, settings: settings.upstream.clone() };
        let pools = if settings.tenancy.pass_through {
            tracing::info!("pass-through tenancy: each client's X-SF-Token is used upstream");
            let t = &settings.tenancy;
            Pools::pass_through(config, t.max_pools, t.pool_idle_timeout, cancel.child_token())
        } else {
            Pools::single(Pool::new(config, cancel.child_token()))
        };
        let hub_settings =
            HubSettings::new(settings.limits.clone(), settings.stream.clone(), settings.upstream.connect_timeout);
        let hub = Hub::new(pools, hub_settings, cancel.child_token());
        warn_if_exposed(&settings);
        let settings = Arc::new(settings);
        let connection_stats = Arc::new(http::serve::ConnectionStats::default());
        let cluster = match settings.cluster.enabled() {
            true => Some(crate::cluster::Cluster::start(settings.cluster.clone(), hub.clone(), cancel.child_token())?),
            false => None,
        };
        let cache = Arc::new(crate::cache::ResultsCache::new(settings.cache.clone()));
        let cache_stats = {
            let cache = cache.clone();
            move || cache.stats()
        };
        let mut metrics =
            crate::metrics::Metrics::new(hub.clone(), cache_stats).with_connections(connection_stats.clone());
        if let Some(cluster) = &cluster {
            metrics = metrics.with_cluster(cluster.clone());
        }
        let metrics = Arc::new(metrics);
        let http_settings = Arc::new(HttpSettings {
            auth: settings.auth.clone(),
            cors: settings.cors.clone(),
            websocket: settings.websocket.clone(),
        });
        let state = AppState { hub: hub.clone(), cluster: cluster.clone(), settings: http_settings, metrics, cache };
        let mut router = http::router(state);
        if let Some(sim) = &simulator {
            router = router.merge(simulator::control::routes(sim.state.clone()));
        }
        Ok(Application { listener, router, hub, cluster, simulator, cancel, settings, tls, connection_stats })
    }

    /// Whether the listener speaks TLS (`https://`, `wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The router, for calling the API in process (`tower::ServiceExt::oneshot`) without a
    /// socket; the upstream and the simulator run as usual.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// Serves until `shutdown` resolves, then drains within the drain timeout.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let Application { listener, router, hub, cluster, simulator, cancel, settings, tls, connection_stats } = self;
        let stopping = CancellationToken::new();
        let signal = stopping.clone();
        // Ended below whatever happens, so it never outlives the server.
        let signal_task = tokio::spawn(async move {
            shutdown.await;
            signal.cancel();
        });
        let drained = stopping.clone();
        let serve_stopping = stopping.clone();
        let cancel_on_exit = cancel.clone();
        let drain_hub = hub.clone();
        let limit = settings.drain_timeout;
        // Open streams end only when the hub closes them, so the hub drains first; the server's
        // graceful shutdown then completes as the last responses finish.
        let graceful = async move {
            drained.cancelled().await;
            tracing::info!("shutting down: ending streams and stopping upstream jobs");
            drain_hub.shutdown(limit).await;
        };
        let serve = async move {
            match tls {
                Some(tls) => {
                    crate::tls::reload_on_sighup(tls.clone(), cancel_on_exit.clone());
                    crate::tls::serve(listener, tls, router, graceful, limit).await
                }
                None => {
                    let connections = settings.connections;
                    http::serve::serve(listener, router, connections, connection_stats, serve_stopping, graceful, limit)
                        .await
                }
            }
        };
        let result = tokio::select! {
            result = serve => result,
            // A client that never reads its last bytes must not hold the process.
            _ = async { stopping.cancelled().await; tokio::time::sleep(limit + std::time::Duration::from_secs(1)).await } => Ok(()),
        };
        // Leaders have let go of their leases (another replica takes over); relays end.
        if let Some(cluster) = cluster {
            cluster.shutdown(limit / 2).await;
        }
        // Every pool stops its jobs (with the shutdown reason) and closes its sockets.
        let pools = hub.pools().all();
        futures::future::join_all(pools.iter().map(|p| p.shutdown(limit / 2))).await;
        cancel.cancel();
        signal_task.abort();
        if let Some(sim) = simulator {
            let _ = sim.shutdown().await;
        }
        result
    }
}

/// Binding beyond loopback without API keys lets anyone who can reach the port run programs
/// with the gateway's token.
fn warn_if_exposed(settings: &Settings) {
    let loopback = settings.listen.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
    if !loopback && settings.auth.api_keys.is_empty() {
        tracing::warn!(
            listen = %settings.listen,
            "LISTENING BEYOND LOOPBACK WITHOUT API KEYS: anyone who can reach this address can run SignalFlow programs \
             with the gateway's token; set auth.api_keys (SFGW_AUTH__API_KEYS)"
        );
    }
}

async fn start_simulator(settings: &Settings, cancel: CancellationToken) -> Result<SimulatorHandle, BuildError> {
    let mut config =
        SimulatorConfig { keepalive_interval: settings.simulator.keepalive_interval, ..SimulatorConfig::default() };
    if let Some(path) = &settings.simulator.inventory {
        let inventory_error = |reason: String| BuildError::Inventory { path: path.clone(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| inventory_error(e.to_string()))?;
        config.inventory =
            Arc::new(simulator::inventory::Inventory::from_toml(&text).map_err(|e| inventory_error(e.to_string()))?);
    }
    let address = "127.0.0.1:0";
    let listener =
        TcpListener::bind(address).await.map_err(|source| BuildError::Bind { address: address.into(), source })?;
    Ok(simulator::spawn(listener, config, Faults::default(), cancel))
}
