//! Settings: built-in defaults < file (`--config` or `SFGW_CONFIG`) < environment (`SFGW_`
//! prefix, `__` between levels, e.g. `SFGW_UPSTREAM__TOKEN`) < command-line flags.
//!
//! One tree, composed of the parts' own settings structs: each part (the upstream, the hub, the
//! HTTP layer, TLS, the simulator) owns its defaults and its checks; this module loads the
//! tree and checks what spans parts.
//!
//! Durations are human-readable (`"10s"`, `"5m"`). [`Settings::validate`] reports every problem
//! at once, each with the setting's name. The token is a [`SecretString`]: `Debug` and
//! [`Settings::redacted`] never show it.

pub use crate::http::access::{AuthSettings, CorsSettings};
pub use crate::http::serve::ConnectionSettings;
pub use crate::http::signalflow_ws::WebsocketSettings;
pub use crate::hub::{Limits, StreamSettings, TenancySettings};
pub use crate::simulator::SimulatorSettings;
pub use crate::tls::TlsSettings;
pub use crate::upstream::UpstreamSettings;

use crate::settings::Problems;
use crate::telemetry::LogFormat;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP API listens on.
    pub listen: String,
    pub log_format: LogFormat,
    pub upstream: UpstreamSettings,
    pub limits: Limits,
    pub stream: StreamSettings,
    pub simulator: SimulatorSettings,
    pub auth: AuthSettings,
    pub cors: CorsSettings,
    pub tenancy: TenancySettings,
    pub websocket: WebsocketSettings,
    pub tls: TlsSettings,
    /// The results cache for bounded queries (`cache.*`).
    pub cache: crate::cache::CacheSettings,
    /// Cluster mode (many replicas sharing jobs through Redis); off without `redis_url`.
    pub cluster: crate::cluster::ClusterSettings,
    pub connections: ConnectionSettings,
    /// Longest a graceful shutdown may take.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8080".into(),
            log_format: LogFormat::Text,
            upstream: UpstreamSettings::default(),
            limits: Limits::default(),
            stream: StreamSettings::default(),
            simulator: SimulatorSettings::default(),
            auth: AuthSettings::default(),
            cors: CorsSettings::default(),
            tenancy: TenancySettings::default(),
            websocket: WebsocketSettings::default(),
            tls: TlsSettings::default(),
            cache: crate::cache::CacheSettings::default(),
            cluster: crate::cluster::ClusterSettings::default(),
            connections: ConnectionSettings::default(),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the gateway gets its SignalFlow from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// The built-in simulator, started in-process.
    Simulator,
    /// A websocket URL (complete, see [`crate::upstream::dial::normalize_url`]).
    Remote(String),
}

/// Command-line values, applied last.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream_url: Option<String>,
    pub realm: Option<String>,
    pub token: Option<String>,
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid settings:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl Settings {
    /// Loads every layer. `file` is `--config`; without it `SFGW_CONFIG` is consulted.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = file.map(Path::to_path_buf).or_else(|| std::env::var_os("SFGW_CONFIG").map(Into::into));
        let mut builder = config::Config::builder();
        if let Some(path) = &file {
            builder = builder.add_source(config::File::from(path.as_path()).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("SFGW")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("auth.api_keys")
                .with_list_parse_key("cors.allowed_origins")
                .try_parsing(true)
                .ignore_empty(true),
        );
        let mut layered: serde_json::Value = builder.build()?.try_deserialize()?;
        // `SFGW_CONFIG` names the file; it is not a setting.
        if let Some(map) = layered.as_object_mut() {
            map.remove("config");
        }
        let mut settings: Settings = serde_json::from_value(layered).map_err(|e| {
            let mut problem = e.to_string();
            if problem.starts_with("unknown field") {
                problem.push_str(
                    " (settings come from the --config file and from SFGW_* environment variables, \
                     where SFGW_A__B sets a.b; remove or rename the variable if it is not meant for the gateway)",
                );
            }
            ConfigError::Invalid(vec![problem])
        })?;
        settings.apply(overrides);
        settings.validate()?;
        Ok(settings)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(listen) = &o.listen {
            self.listen = listen.clone();
        }
        if let Some(url) = &o.upstream_url {
            self.upstream.url = Some(url.clone());
        }
        if let Some(realm) = &o.realm {
            self.upstream.realm = Some(realm.clone());
        }
        if let Some(token) = &o.token {
            self.upstream.token = Some(SecretString::from(token.clone()));
        }
    }

    /// Every problem, each naming its setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        problems.check(
            self.listen.parse::<std::net::SocketAddr>().is_ok(),
            "listen: must be an address like 127.0.0.1:8080",
        );
        self.upstream.check(&mut problems);
        self.limits.check(&mut problems);
        self.stream.check(&mut problems);
        self.auth.check(&mut problems);
        self.cors.check(&mut problems);
        self.tenancy.check(&mut problems);
        self.websocket.check(&mut problems);
        self.tls.check(&mut problems);
        self.connections.check(&mut problems);
        problems.check(
            !self.cors.allows_any() || self.auth.api_keys.is_empty(),
            "cors.allowed_origins: `*` is only allowed without auth.api_keys",
        );
        self.cache.check(&mut problems);
        let problems = problems.into_vec();
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// Where to connect: a realm or URL, else the built-in simulator.
    pub fn upstream_target(&self) -> UpstreamTarget {
        match (&self.upstream.url, &self.upstream.realm) {
            (Some(url), _) => {
                UpstreamTarget::Remote(crate::upstream::dial::normalize_url(url).unwrap_or_else(|_| url.clone()))
            }
            (None, Some(realm)) => UpstreamTarget::Remote(crate::upstream::dial::url_for_realm(realm)),
            (None, None) => UpstreamTarget::Simulator,
        }
    }

    /// The effective settings as JSON, every setting under its own name, secrets replaced by
    /// `[redacted]` and proxy credentials masked: for the startup log and dumps. Derived from
    /// the settings structs themselves, so a new setting cannot be left out.
    pub fn redacted(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_use_the_simulator() {
        let s = Settings::default();
        s.validate().unwrap();
        assert_eq!(s.upstream_target(), UpstreamTarget::Simulator);
        assert_eq!(s.listen, "127.0.0.1:8080");
    }

    #[test]
    fn validation_reports_every_problem_with_its_setting() {
        let mut s = Settings { listen: "nowhere".into(), ..Settings::default() };
        s.upstream.realm = Some("us1".into());
        s.upstream.url = Some("ftp://x".into());
        s.limits.max_computations = 0;
        s.stream.heartbeat = Duration::ZERO;
        let ConfigError::Invalid(problems) = s.validate().unwrap_err() else { panic!() };
        let text = problems.join("\n");
        for name in [
            "listen:",
            "upstream.url and upstream.realm",
            "upstream.token:",
            "upstream.url:",
            "limits.max_computations:",
            "stream.heartbeat:",
        ] {
            assert!(text.contains(name), "missing {name} in:\n{text}");
        }
    }

    /// Leaf paths of a JSON document (`upstream.token`, …).
    fn leaves(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    leaves(v, &if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, out)
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }

    #[test]
    fn every_setting_is_in_the_dump_and_every_secret_is_redacted() {
        let mut s = Settings::default();
        s.upstream.token = Some(SecretString::from("tok-s3cret"));
        s.upstream.proxy = Some("http://user:pr0xy-pass@proxy:3128".into());
        s.auth.api_keys =
            vec![SecretString::from("key-s3cret-0123456789"), SecretString::from("key-s3cret-abcdefghij")];
        let dump = s.redacted();
        let text = dump.to_string();
        for secret in ["s3cret", "pr0xy-pass"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(dump["upstream"]["token"], "[redacted]");
        assert_eq!(dump["auth"]["api_keys"], serde_json::json!(["[redacted]", "[redacted]"]));
        assert_eq!(dump["upstream"]["proxy"], "http://***@proxy:3128");
        // Every dumped key is a setting the loader accepts (unknown fields are refused), and
        // reading the dump back gives the same dump: nothing is missing or renamed.
        let back: Settings = serde_json::from_value(dump.clone()).expect("the dump reads back as settings");
        assert_eq!(back.redacted(), dump);
        // The settings the hand-written dump used to miss.
        let mut paths = Vec::new();
        leaves(&dump, "", &mut paths);
        for name in [
            "limits.max_result_points",
            "limits.max_result_series",
            "stream.ended_retention",
            "stream.start_wait",
            "stream.max_wait",
            "upstream.max_message_bytes",
            "upstream.stop_wait",
            "websocket.outbound_queue",
            "simulator.keepalive_interval",
            "drain_timeout",
            "cache.max_bytes",
            "cache.fresh_margin",
            "cache.max_tails",
            "cache.tail_wait",
            "cache.max_stream_bytes",
        ] {
            assert!(paths.iter().any(|p| p == name), "{name} missing from the dump: {paths:?}");
        }
    }

    /// Whether a row of the README's settings table names `path` (`upstream.read_timeout`):
    /// in full, or by its last part in a row that names another setting of its section.
    fn documented(rows: &[&str], path: &str) -> bool {
        let full = format!("`{path}`");
        match path.rsplit_once('.') {
            None => rows.iter().any(|r| r.contains(&full)),
            Some((section, key)) => rows
                .iter()
                .any(|r| r.contains(&full) || (r.contains(&format!("`{section}.")) && r.contains(&format!("`{key}`")))),
        }
    }

    #[test]
    fn every_setting_is_in_the_readme_table() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let table = readme.split("## Configuration").nth(1).expect("a Configuration section");
        let rows: Vec<&str> =
            table.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).collect();
        assert!(rows.len() > 10, "the settings table: {rows:?}");
        let mut paths = Vec::new();
        leaves(&Settings::default().redacted(), "", &mut paths);
        let missing: Vec<&String> = paths.iter().filter(|p| !documented(&rows, p)).collect();
        assert!(missing.is_empty(), "settings missing from README.md's table: {missing:?}");
    }

    #[test]
    fn cluster_settings_read_from_a_file_and_mask_the_redis_password() {
        let s: Settings = toml::from_str(
            "[cluster]\nredis_url = \"redis://u:s3cret@redis:6379/0\"\nlease = \"3s\"\nnode_id = \"a\"\n",
        )
        .unwrap();
        assert!(s.cluster.enabled());
        assert_eq!(s.cluster.lease, Duration::from_secs(3));
        let dump = s.redacted();
        assert_eq!(dump["cluster"]["redis_url"], "redis://***@redis:6379/0");
        assert!(!dump.to_string().contains("s3cret"));
        assert!(!Settings::default().cluster.enabled(), "cluster mode is off by default");
    }

    #[test]
    fn the_token_never_shows_in_debug_or_the_dump() {
        let mut s = Settings::default();
        s.upstream.token = Some(SecretString::from("tok-s3cret"));
        s.upstream.realm = Some("us1".into());
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(!s.redacted().to_string().contains("s3cret"));
        assert_eq!(
            s.upstream_target(),
            UpstreamTarget::Remote("wss://stream.us1.signalfx.com/v2/signalflow/connect".into())
        );
    }
}
