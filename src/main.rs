//! The `signalflow-gateway` binary: `serve` (the gateway; the default) and `simulate` (only the
//! built-in SignalFlow simulator).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use signalflow_gateway::app::Application;
use signalflow_gateway::config::{Overrides, Settings};
use signalflow_gateway::simulator::{self, Faults, InvalidRequestPolicy, SimulatorConfig};
use signalflow_gateway::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "signalflow-gateway", version, about = "HTTP + server-sent events for SignalFlow")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `serve`'s options, also accepted without the subcommand.
    #[command(flatten)]
    serve: ServeArgs,
    /// Log format (default text; also the `log_format` setting).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default). With no token and no upstream URL it runs against the
    /// built-in simulator.
    Serve(ServeArgs),
    /// Run only the built-in SignalFlow simulator (websocket + `/_sim/` control API).
    Simulate(SimulateArgs),
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    /// Settings file (TOML); also `SFGW_CONFIG`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Full websocket URL of the SignalFlow service (or a `simulate` instance).
    #[arg(long, conflicts_with = "realm")]
    upstream_url: Option<String>,
    /// Splunk Observability realm (us0, us1, eu0, …).
    #[arg(long)]
    realm: Option<String>,
    /// SignalFx access token (prefer SFGW_UPSTREAM__TOKEN: flags show up in process lists).
    #[arg(long, hide_env_values = true)]
    token: Option<String>,
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
    /// Fault: send no KEEP_ALIVE frames.
    #[arg(long)]
    pause_keepalive: bool,
    /// Fault: send `error` messages without their channel.
    #[arg(long)]
    channelless_errors: bool,
    /// Fault: stream past a job's stop time, never sending END_OF_CHANNEL.
    #[arg(long)]
    ignore_stop_time: bool,
    /// Fault: ignore `stop` requests.
    #[arg(long)]
    ignore_stop_requests: bool,
    /// Fault: ignore `detach` requests.
    #[arg(long)]
    ignore_detach: bool,
    /// Fault: stop reading connections once authenticated (requests and pings go unanswered).
    #[arg(long)]
    stop_reading: bool,
    /// Serve `wss://` and `https://` with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve TLS with a fresh CA and a certificate for localhost and 127.0.0.1, written to DIR
    /// (ca.pem, cert.pem, key.pem): give clients DIR/ca.pem to trust.
    #[arg(long, value_name = "DIR")]
    tls_self_signed: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InvalidRequestsArg {
    Close,
    Error,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Each SSE subscriber is a socket: use the whole open-files allowance, not the soft default.
    let open_files = rlimit::increase_nofile_limit(u64::MAX).ok();
    match cli.command {
        Some(Command::Simulate(args)) => {
            telemetry::init(cli.log_format.unwrap_or_default());
            simulate(args).await
        }
        Some(Command::Serve(args)) => serve(args, cli.log_format, open_files).await,
        None => serve(cli.serve, cli.log_format, open_files).await,
    }
}

async fn serve(args: ServeArgs, log_format: Option<LogFormat>, open_files: Option<u64>) -> anyhow::Result<()> {
    let overrides =
        Overrides { listen: args.listen, upstream_url: args.upstream_url, realm: args.realm, token: args.token };
    let settings = Settings::load(args.config.as_deref(), &overrides)?;
    telemetry::init(log_format.unwrap_or(settings.log_format));
    tracing::info!(settings = %settings.redacted(), ?open_files, "starting signalflow-gateway {}", env!("CARGO_PKG_VERSION"));
    let app = Application::build(settings).await?;
    let addr = app.local_addr()?;
    let scheme = if app.is_tls() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "listening");
    println!("signalflow-gateway listening on {scheme}://{addr}");
    println!(
        "try: curl -N '{scheme}://{addr}/computations/stream?program=data(%27cpu.utilization%27).mean(by%3D%5B%27region%27%5D).publish()'"
    );
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
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
        pause_keepalive: args.pause_keepalive,
        channelless_errors: args.channelless_errors,
        ignore_stop_time: args.ignore_stop_time,
        ignore_stop_requests: args.ignore_stop_requests,
        ignore_detach: args.ignore_detach,
        stop_reading: args.stop_reading,
    };
    let listener =
        tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let cancel = CancellationToken::new();
    let tls_files = match (args.tls_self_signed, args.tls_cert, args.tls_key) {
        (Some(dir), _, _) => {
            let files = signalflow_gateway::tls::write_self_signed(&dir)?;
            println!("TLS: a fresh CA is in {}; clients trust it as their CA file", dir.join("ca.pem").display());
            Some(files)
        }
        (None, Some(cert), Some(key)) => Some((cert, key)),
        _ => None,
    };
    let handle = match tls_files {
        Some((cert, key)) => {
            let tls = signalflow_gateway::tls::Tls::load(&cert, &key)?;
            simulator::spawn_tls(listener, config, faults, cancel.clone(), tls)
        }
        None => simulator::spawn(listener, config, faults, cancel.clone()),
    };
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
