//! Logging setup: a `tracing` subscriber writing human-readable or JSON lines to stderr,
//! filtered by `RUST_LOG` (default `info`). Secrets are kept out by construction: tokens are
//! `SecretString`s, and the libraries that would log raw frames are capped (see [`CAPPED`]).

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Targets capped below `trace` whatever `RUST_LOG` says: at `trace` the websocket library logs
/// whole frame payloads, and the upstream `authenticate` frame carries the token.
const CAPPED: [&str; 2] = ["tungstenite=debug", "tokio_tungstenite=debug"];

/// The filter: `RUST_LOG` (default `info`) with [`CAPPED`] applied on top.
pub fn filter() -> EnvFilter {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for directive in CAPPED {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = filter();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
