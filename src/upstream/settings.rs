//! The upstream's settings (`upstream.*`): where the SignalFlow service is, the token, and how
//! the pool dials, paces and times out. Defaults and checks live here, and only here.

use crate::settings::{Problems, lenient_secret, redacted_secret};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Full websocket URL of a SignalFlow service (or a `simulate` instance).
    pub url: Option<String>,
    /// Splunk Observability realm (`us0`, `us1`, `eu0`, …); builds the URL.
    pub realm: Option<String>,
    #[serde(deserialize_with = "lenient_secret", serialize_with = "redacted_secret")]
    pub token: Option<SecretString>,
    /// HTTP CONNECT proxy; unset reads `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`; `"none"` disables.
    #[serde(serialize_with = "redacted_proxy")]
    pub proxy: Option<String>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time for the service to answer `authenticate`.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// No frame for this long (data or `KEEP_ALIVE`) ⇒ the socket is presumed dead; a ping is
    /// sent at half of it.
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
    /// A socket with no jobs for this long is closed (except the first).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Reconnect backoff: doubles from the initial delay up to the max, jittered.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    pub job_starts_per_second: f64,
    pub job_start_burst: u32,
    /// Refused starts (429, "Too many channels") before a computation fails.
    pub max_start_refusals: u32,
    /// Ask the service for gzip-compressed frames.
    pub compress: bool,
    /// Largest websocket message, and largest decompressed body.
    pub max_message_bytes: usize,
    /// Events queued per computation before it is failed as too slow.
    pub consumer_queue: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            url: None,
            realm: None,
            token: None,
            proxy: None,
            connect_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(5),
            stop_wait: Duration::from_secs(5),
            max_connections: 8,
            max_channels_per_connection: 250,
            idle_timeout: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            job_starts_per_second: 10.0,
            job_start_burst: 50,
            max_start_refusals: 50,
            compress: true,
            max_message_bytes: 64 * 1024 * 1024,
            consumer_queue: 4096,
        }
    }
}

impl UpstreamSettings {
    pub fn check(&self, problems: &mut Problems) {
        use secrecy::ExposeSecret;
        problems
            .check(!(self.url.is_some() && self.realm.is_some()), "upstream.url and upstream.realm: set one, not both");
        problems.check(
            self.realm.as_deref().is_none_or(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric())),
            "upstream.realm: letters and digits only (e.g. us1)",
        );
        problems.check(
            self.realm.is_none() || self.token.as_ref().is_some_and(|t| !t.expose_secret().is_empty()),
            "upstream.token: required with upstream.realm",
        );
        if let Some(url) = &self.url
            && let Err(e) = super::dial::normalize_url(url)
        {
            problems.check(false, format!("upstream.url: {e}"));
        }
        problems.positive(self.max_connections, "upstream.max_connections");
        problems.positive(self.max_channels_per_connection, "upstream.max_channels_per_connection");
        problems.check(
            self.max_channels_per_connection <= 300,
            "upstream.max_channels_per_connection: the service allows at most 300",
        );
        problems.positive(self.max_message_bytes, "upstream.max_message_bytes");
        problems.positive(self.consumer_queue, "upstream.consumer_queue");
        problems.positive(self.job_start_burst as usize, "upstream.job_start_burst");
        problems.check(self.job_starts_per_second > 0.0, "upstream.job_starts_per_second: must be greater than 0");
        for (value, name) in [
            (self.connect_timeout, "upstream.connect_timeout"),
            (self.auth_timeout, "upstream.auth_timeout"),
            (self.read_timeout, "upstream.read_timeout"),
            (self.write_timeout, "upstream.write_timeout"),
            (self.stop_wait, "upstream.stop_wait"),
            (self.backoff_initial, "upstream.backoff_initial"),
        ] {
            problems.nonzero(value, name);
        }
        problems.check(
            self.backoff_max >= self.backoff_initial,
            "upstream.backoff_max: must be at least upstream.backoff_initial",
        );
    }
}

fn redacted_proxy<S: serde::Serializer>(proxy: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    proxy.as_deref().map(super::dial::redact).serialize(s)
}
