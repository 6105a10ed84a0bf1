//! Settings: built-in defaults < file (`--config` or `SFGW_CONFIG`) < environment (`SFGW_`
//! prefix, `__` between levels, e.g. `SFGW_UPSTREAM__TOKEN`) < command-line flags.
//!
//! Durations are human-readable (`"10s"`, `"5m"`). [`Settings::validate`] reports every problem
//! at once, each with the setting's name. The token is a [`SecretString`]: `Debug` and
//! [`Settings::redacted`] never show it.

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
    /// Cluster mode (many replicas sharing jobs through Redis); off without `redis_url`.
    pub cluster: crate::cluster::ClusterSettings,
    /// Longest a graceful shutdown may take.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Full websocket URL of a SignalFlow service (or a `simulate` instance).
    pub url: Option<String>,
    /// Splunk Observability realm (`us0`, `us1`, `eu0`, …); builds the URL.
    pub realm: Option<String>,
    #[serde(deserialize_with = "lenient_secret", serialize_with = "redacted_secret")]
    pub token: Option<SecretString>,
    /// HTTP CONNECT proxy; unset reads `HTTPS_PROXY`; `"none"` disables.
    #[serde(serialize_with = "redacted_proxy")]
    pub proxy: Option<String>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How long a stop waits for the service's confirmation before the gateway ends the
    /// computation itself (the client's `DELETE` never waits for it).
    #[serde(with = "humantime_serde")]
    pub stop_wait: Duration,
    pub max_connections: usize,
    pub max_channels_per_connection: usize,
    pub job_starts_per_second: f64,
    pub job_start_burst: u32,
    /// Ask the service for gzip-compressed frames.
    pub compress: bool,
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_program_bytes: usize,
    pub max_computations: usize,
    pub max_subscribers_per_computation: usize,
    pub max_subscribers_total: usize,
    /// Events queued per subscriber before it is disconnected as too slow.
    pub subscriber_queue: usize,
    /// Replay ring per computation: most events, bytes, and age kept.
    pub replay_events: usize,
    pub replay_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub replay_age: Duration,
    /// Most series whose metadata one computation caches.
    pub max_series_per_computation: usize,
    /// Whole results (`?wait=true`): most points and series; 413 beyond.
    pub max_result_points: usize,
    pub max_result_series: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// SSE comment heartbeat interval.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How long a computation outlives its last subscriber.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How long a computation created without a stream waits for its first subscriber.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long an ended computation stays readable (state, replay of its last events).
    #[serde(with = "humantime_serde")]
    pub ended_retention: Duration,
    /// How long `POST /computations` waits for the job to start (to report program errors).
    #[serde(with = "humantime_serde")]
    pub start_wait: Duration,
    /// Longest a whole-result request (`?wait=true`) may take; a `stop` further ahead is 422.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorSettings {
    /// Inventory TOML for the built-in simulator.
    pub inventory: Option<String>,
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
}

/// Client access to the gateway's API.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Accepted API keys (`Authorization: Bearer`, or `access_token` for EventSource). Empty:
    /// no key needed. From the environment: `SFGW_AUTH__API_KEYS=key1,key2`.
    #[serde(deserialize_with = "lenient_secrets", serialize_with = "redacted_secrets")]
    pub api_keys: Vec<SecretString>,
}

/// Browsers on other origins.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins allowed to call the API (`https://app.example.com`); `*` for any (only without
    /// API keys). Empty: none. From the environment: comma-separated.
    pub allowed_origins: Vec<String>,
}

/// Whose SignalFx token is used upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenancySettings {
    /// Use each client's `X-SF-Token` upstream, with a separate pool per token; a computation is
    /// visible only to requests with the same token.
    pub pass_through: bool,
    /// Most tokens with a pool at once (429 beyond).
    pub max_pools: usize,
    /// A token's pool with no computations for this long is closed.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
}

/// The SignalFlow websocket protocol served to clients (`/v2/signalflow/connect`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebsocketSettings {
    /// `KEEP_ALIVE` to every client this often (clients give up after 60 s of silence).
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Time for a client to `authenticate` after connecting (close 4401 after it).
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Most open channels per socket (the service allows 300).
    pub max_channels_per_socket: usize,
    /// Largest request frame a client may send (close 1009 beyond).
    pub max_message_bytes: usize,
    /// Frames queued per socket before its client is disconnected as too slow.
    pub outbound_queue: usize,
    /// Longest one frame write may take before the client is presumed gone.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for WebsocketSettings {
    fn default() -> Self {
        WebsocketSettings {
            keepalive_interval: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(5),
            max_channels_per_socket: 300,
            max_message_bytes: 1024 * 1024,
            outbound_queue: 1024,
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// HTTPS and WSS on the listener (HTTP/2 offered by ALPN). Both files or neither.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, server certificate first.
    pub cert_file: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }
}

impl Default for TenancySettings {
    fn default() -> Self {
        TenancySettings { pass_through: false, max_pools: 100, pool_idle_timeout: Duration::from_secs(300) }
    }
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
            cluster: crate::cluster::ClusterSettings::default(),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            url: None,
            realm: None,
            token: None,
            proxy: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(5),
            stop_wait: Duration::from_secs(5),
            max_connections: 8,
            max_channels_per_connection: 250,
            job_starts_per_second: 10.0,
            job_start_burst: 50,
            compress: true,
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            max_program_bytes: 32 * 1024,
            max_computations: 1000,
            max_subscribers_per_computation: 20_000,
            max_subscribers_total: 20_000,
            subscriber_queue: 1024,
            replay_events: 10_000,
            replay_bytes: 16 * 1024 * 1024,
            replay_age: Duration::from_secs(600),
            max_series_per_computation: 100_000,
            max_result_points: 2_000_000,
            max_result_series: 50_000,
        }
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            heartbeat: Duration::from_secs(15),
            linger: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            ended_retention: Duration::from_secs(60),
            start_wait: Duration::from_secs(10),
            max_wait: Duration::from_secs(300),
        }
    }
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        SimulatorSettings { inventory: None, keepalive_interval: Duration::from_secs(30) }
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
        use secrecy::ExposeSecret;
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        check(self.listen.parse::<std::net::SocketAddr>().is_ok(), "listen: must be an address like 127.0.0.1:8080");
        let u = &self.upstream;
        check(!(u.url.is_some() && u.realm.is_some()), "upstream.url and upstream.realm: set one, not both");
        check(
            u.realm.as_deref().is_none_or(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric())),
            "upstream.realm: letters and digits only (e.g. us1)",
        );
        check(
            u.realm.is_none() || u.token.as_ref().is_some_and(|t| !t.expose_secret().is_empty()),
            "upstream.token: required with upstream.realm",
        );
        if let Some(url) = &u.url
            && let Err(e) = crate::upstream::dial::normalize_url(url)
        {
            problems.push(format!("upstream.url: {e}"));
        }
        let mut positive = |value: usize, name: &str| {
            if value == 0 {
                problems.push(format!("{name}: must be greater than 0"));
            }
        };
        positive(u.max_connections, "upstream.max_connections");
        positive(u.max_channels_per_connection, "upstream.max_channels_per_connection");
        positive(u.max_message_bytes, "upstream.max_message_bytes");
        let l = &self.limits;
        positive(l.max_body_bytes, "limits.max_body_bytes");
        positive(l.max_program_bytes, "limits.max_program_bytes");
        positive(l.max_computations, "limits.max_computations");
        positive(l.max_subscribers_per_computation, "limits.max_subscribers_per_computation");
        positive(l.max_subscribers_total, "limits.max_subscribers_total");
        positive(l.subscriber_queue.saturating_sub(1), "limits.subscriber_queue (at least 2)");
        positive(l.replay_events, "limits.replay_events");
        positive(l.replay_bytes, "limits.replay_bytes");
        positive(l.max_series_per_computation, "limits.max_series_per_computation");
        positive(l.max_result_points, "limits.max_result_points");
        positive(l.max_result_series, "limits.max_result_series");
        if self.cors.allowed_origins.iter().any(|o| o == "*") && !self.auth.api_keys.is_empty() {
            problems.push("cors.allowed_origins: `*` is only allowed without auth.api_keys".into());
        }
        if self.auth.api_keys.iter().any(|k| k.expose_secret().trim().len() < 16) {
            problems.push("auth.api_keys: every key needs at least 16 characters".into());
        }
        if self.tenancy.pass_through && self.tenancy.max_pools == 0 {
            problems.push("tenancy.max_pools: must be greater than 0".into());
        }
        let w = &self.websocket;
        for (value, name) in [
            (w.max_channels_per_socket, "websocket.max_channels_per_socket"),
            (w.max_message_bytes, "websocket.max_message_bytes"),
            (w.outbound_queue.saturating_sub(1), "websocket.outbound_queue (at least 2)"),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be greater than 0"));
            }
        }
        for (value, name) in [
            (w.keepalive_interval, "websocket.keepalive_interval"),
            (w.auth_timeout, "websocket.auth_timeout"),
            (w.write_timeout, "websocket.write_timeout"),
        ] {
            if value.is_zero() {
                problems.push(format!("{name}: must be longer than 0s"));
            }
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            problems.push("tls.cert_file and tls.key_file: set both, or neither".into());
        }
        if u.max_channels_per_connection > 300 {
            problems.push("upstream.max_channels_per_connection: the service allows at most 300".into());
        }
        if u.job_starts_per_second.is_nan() || u.job_starts_per_second <= 0.0 {
            problems.push("upstream.job_starts_per_second: must be greater than 0".into());
        }
        for (value, name) in [
            (self.stream.heartbeat, "stream.heartbeat"),
            (u.connect_timeout, "upstream.connect_timeout"),
            (u.read_timeout, "upstream.read_timeout"),
            (u.write_timeout, "upstream.write_timeout"),
            (u.stop_wait, "upstream.stop_wait"),
        ] {
            if value.is_zero() {
                problems.push(format!("{name}: must be longer than 0s"));
            }
        }
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

const REDACTED: &str = "[redacted]";

fn redacted_secret<S: serde::Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    secret.as_ref().map(|_| REDACTED).serialize(s)
}

fn redacted_secrets<S: serde::Serializer>(secrets: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    vec![REDACTED; secrets.len()].serialize(s)
}

fn redacted_proxy<S: serde::Serializer>(proxy: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    proxy.as_deref().map(crate::upstream::dial::redact).serialize(s)
}

/// Keys from a file (a list) or the environment (one string, split on commas by the loader).
fn lenient_secrets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    let text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    Ok(match value {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => {
            items.into_iter().map(text).filter(|s| !s.is_empty()).map(SecretString::from).collect()
        }
        Some(one) => text(one)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_owned()))
            .collect(),
    })
}

/// A token from a file or the environment: a string, or digits the environment layer parsed as
/// a number.
fn lenient_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(SecretString::from(s)),
        Some(other) => Some(SecretString::from(other.to_string())),
    })
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
        ] {
            assert!(paths.iter().any(|p| p == name), "{name} missing from the dump: {paths:?}");
        }
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
