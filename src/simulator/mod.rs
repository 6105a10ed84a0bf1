//! The built-in SignalFlow backend: the default upstream when no SignalFx token is configured,
//! the fixture for every integration test, and a product of its own (`signalflow-gateway
//! simulate`) for anyone testing a SignalFlow client.
//!
//! - [`server`]: the websocket endpoint, one actor per connection; [`requests`]: what each
//!   request does.
//! - [`job`]: one running job's message sequence and pacing; [`source`]: its numbers, TSIDs and
//!   metadata.
//! - [`language`]: the SignalFlow subset; [`inventory`]: synthetic series and their values.
//! - [`fixtures`]: FakeBackend-style fixed series and errors; [`control`]: the `/_sim/` API;
//!   [`state`]: what connections and the control API share, including injected faults.

pub mod control;
pub mod fixtures;
pub mod inventory;
pub mod job;
pub mod language;
pub mod requests;
pub mod server;
pub mod source;
pub mod state;

pub use state::{Faults, InvalidRequestPolicy, SimState, SimulatorConfig};

use axum::Router;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `simulator.*`: the simulator a gateway runs when no upstream is configured.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorSettings {
    /// Inventory TOML for the built-in simulator.
    pub inventory: Option<String>,
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        SimulatorSettings { inventory: None, keepalive_interval: Duration::from_secs(30) }
    }
}

/// The simulator's routes (websocket and control API), for serving alone or mounted beside the
/// gateway's.
pub fn router(state: Arc<SimState>) -> Router {
    server::routes(state.clone()).merge(control::routes(state))
}

/// A simulator running on its own listener.
pub struct SimulatorHandle {
    pub addr: SocketAddr,
    pub state: Arc<SimState>,
    cancel: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    /// Background fault injection, ended by `cancel`.
    faults_task: JoinHandle<()>,
    /// Served over TLS (`wss://`, `https://`).
    secure: bool,
}

impl SimulatorHandle {
    /// The websocket URL clients connect to.
    pub fn ws_url(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{}/v2/signalflow/connect", self.addr)
    }

    /// Base URL of the control API (`…/_sim/`).
    pub fn control_url(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}/_sim", self.addr)
    }

    /// Drops every connection abruptly; returns how many there were.
    pub fn kill_connections(&self) -> usize {
        control::kill_all(&self.state)
    }

    /// Stops accepting, drops every connection, and waits for the server task.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.cancel.cancel();
        control::kill_all(&self.state);
        let _ = self.faults_task.await;
        self.task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Serves the simulator on `listener` until `cancel` fires.
pub fn spawn(
    listener: TcpListener,
    config: SimulatorConfig,
    faults: Faults,
    cancel: CancellationToken,
) -> SimulatorHandle {
    serve(listener, config, faults, cancel, None)
}

/// Serves the simulator over TLS (`wss://`, `https://`; h2 and HTTP/1.1 by ALPN) on `listener`
/// until `cancel` fires.
pub fn spawn_tls(
    listener: TcpListener,
    config: SimulatorConfig,
    faults: Faults,
    cancel: CancellationToken,
    tls: crate::tls::Tls,
) -> SimulatorHandle {
    serve(listener, config, faults, cancel, Some(tls))
}

fn serve(
    listener: TcpListener,
    config: SimulatorConfig,
    faults: Faults,
    cancel: CancellationToken,
    tls: Option<crate::tls::Tls>,
) -> SimulatorHandle {
    let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let state = SimState::new(config, faults);
    let faults_task = spawn_fault_tasks(state.clone(), cancel.clone());
    let app = router(state.clone());
    let shutdown = cancel.clone();
    let stopped = async move { shutdown.cancelled().await };
    let secure = tls.is_some();
    let task = match tls {
        None => tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app).with_graceful_shutdown(stopped).await
        }),
        Some(tls) => {
            crate::tls::reload_on_sighup(tls.clone(), cancel.clone());
            tokio::spawn(crate::tls::serve(listener, tls, app, stopped, Duration::from_secs(1)))
        }
    };
    SimulatorHandle { addr, state, cancel, task, faults_task, secure }
}

/// Background fault injection that is not tied to a request: dropping every connection
/// periodically (`dropEveryMs`).
pub fn spawn_fault_tasks(state: Arc<SimState>, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let wait = state.faults().drop_every_ms.map_or(Duration::from_millis(250), Duration::from_millis);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if state.faults().drop_every_ms.is_some() {
                let killed = control::kill_all(&state);
                tracing::info!(killed, "simulator fault: dropped every connection");
            }
        }
    })
}
