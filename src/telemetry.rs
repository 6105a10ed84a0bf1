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

/// The filter: `RUST_LOG` (default `info`) with [`CAPPED`] applied on top when it asks for
/// `trace` anywhere (a cap added to a quieter filter would raise those targets to `debug`).
pub fn filter() -> EnvFilter {
    let spec = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default();
    filter_for(&spec)
}

fn filter_for(spec: &str) -> EnvFilter {
    let mut filter = match spec.trim() {
        "" => EnvFilter::new("info"),
        spec => EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info")),
    };
    if !spec.to_ascii_lowercase().contains("trace") {
        return filter;
    }
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
        LogFormat::Json => builder.json().flatten_event(true).with_span_list(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::filter_for;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn the_cap_lowers_trace_and_never_raises_a_quieter_filter() {
        assert_eq!(filter_for("warn").max_level_hint(), Some(LevelFilter::WARN));
        assert_eq!(filter_for("").max_level_hint(), Some(LevelFilter::INFO));
        let traced = filter_for("trace").to_string();
        assert!(traced.contains("tungstenite=debug"), "{traced}");
    }
}
