//! The `signalflow-gateway` binary: `serve` (the gateway; the default) and `simulate` (only the
//! built-in SignalFlow simulator).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use signalflow_gateway::simulator::{self, Faults, InvalidRequestPolicy, SimulatorConfig};
use signalflow_gateway::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "signalflow-gateway", version, about = "HTTP + server-sent events for SignalFlow")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format.
    #[arg(long, global = true, env = "SFGW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run only the built-in SignalFlow simulator (websocket + `/_sim/` control API).
    Simulate(SimulateArgs),
}

#[derive(Args)]
struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: String,
    /// The one token accepted; without it any non-empty token is.
    #[arg(long, env = "SFSIM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Inventory TOML file replacing the built-in demo series.
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// Interval between KEEP_ALIVE frames.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    keepalive_interval: Duration,
    /// How long a client has to authenticate.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    auth_timeout: Duration,
    /// Keep JSON messages in text frames even under `compress: true` (for Go clients).
    #[arg(long)]
    json_as_text: bool,
    /// Series one data() call may read before FIND_LIMITED_RESULT_SET.
    #[arg(long, default_value_t = 10_000)]
    max_series_per_find: usize,
    /// What to do with a request that cannot be parsed: close the socket or send an error.
    #[arg(long, value_enum, default_value_t = InvalidRequestsArg::Close)]
    invalid_requests: InvalidRequestsArg,
    /// Fault: refuse every authentication.
    #[arg(long)]
    reject_auth: bool,
    /// Fault: delay before answering each execute.
    #[arg(long, value_parser = humantime::parse_duration)]
    response_delay: Option<Duration>,
    /// Fault: jobs one connection may run ("Too many channels" beyond).
    #[arg(long, default_value_t = 300)]
    channel_limit: usize,
    /// Fault: job starts allowed per token per minute (429 beyond).
    #[arg(long)]
    job_starts_per_minute: Option<u32>,
    /// Fault: extra lag of live data (reported with JOB_DETECTED_LAG).
    #[arg(long, value_parser = humantime::parse_duration)]
    lag: Option<Duration>,
    /// Fault: drop every connection abruptly at this interval.
    #[arg(long, value_parser = humantime::parse_duration)]
    drop_every: Option<Duration>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InvalidRequestsArg {
    Close,
    Error,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Some(Command::Simulate(args)) => simulate(args).await,
        None => anyhow::bail!("the gateway (`serve`) is not built yet; try `signalflow-gateway simulate`"),
    }
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let mut config = SimulatorConfig {
        token: args.token,
        auth_timeout: args.auth_timeout,
        keepalive_interval: args.keepalive_interval,
        json_as_text: args.json_as_text,
        max_series_per_find: args.max_series_per_find,
        invalid_requests: match args.invalid_requests {
            InvalidRequestsArg::Close => InvalidRequestPolicy::Close,
            InvalidRequestsArg::Error => InvalidRequestPolicy::Error,
        },
        ..SimulatorConfig::default()
    };
    if let Some(path) = &args.inventory {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let inventory =
            simulator::inventory::Inventory::from_toml(&text).with_context(|| format!("{}", path.display()))?;
        config.inventory = Arc::new(inventory);
    }
    let faults = Faults {
        reject_auth: args.reject_auth,
        response_delay_ms: args.response_delay.map_or(0, |d| d.as_millis() as u64),
        channel_limit: args.channel_limit,
        job_starts_per_minute: args.job_starts_per_minute,
        lag_ms: args.lag.map_or(0, |d| d.as_millis() as u64),
        drop_every_ms: args.drop_every.map(|d| d.as_millis() as u64),
        pause_keepalive: false,
    };
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let cancel = CancellationToken::new();
    let handle = simulator::spawn(listener, config, faults, cancel.clone());
    tracing::info!(url = %handle.ws_url(), control = %handle.control_url(), series = handle.state.config.inventory.len(), "SignalFlow simulator listening");
    println!("SignalFlow simulator: {}  (control API: {}/)", handle.ws_url(), handle.control_url());
    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}
