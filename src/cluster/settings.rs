//! Cluster mode's settings (`cluster.*`, `SFGW_CLUSTER__*`).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Without `redis_url` the gateway is one process on its own, as without cluster mode.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// `redis://[user:password@]host:port/db`; enables cluster mode. The password is masked in
    /// the settings dump.
    #[serde(serialize_with = "redacted_url")]
    pub redis_url: Option<String>,
    /// This replica's name in leases, presence and the computations' `leader` (default:
    /// hostname and process id).
    pub node_id: Option<String>,
    /// How long a leader's lease lasts without renewal: the longest a computation goes without a
    /// job after its leader dies.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often leases are renewed, presence refreshed, stop requests and takeovers checked
    /// (at most a quarter of the lease is used).
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Events a leader may hold for Redis while it cannot publish; beyond that they are dropped
    /// for the other replicas (which report the gap) and still delivered here.
    pub publish_queue: usize,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            redis_url: None,
            node_id: None,
            lease: Duration::from_secs(10),
            tick: Duration::from_millis(500),
            publish_queue: 4096,
        }
    }
}

impl ClusterSettings {
    pub fn enabled(&self) -> bool {
        self.redis_url.as_deref().is_some_and(|u| !u.trim().is_empty())
    }

    /// The node id: as configured, else `hostname-pid`.
    pub fn node(&self) -> String {
        if let Some(node) = self.node_id.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            return node.to_owned();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "gateway".into());
        format!("{host}-{}", std::process::id())
    }

    /// The interval of the lease, presence and takeover checks.
    pub fn tick(&self) -> Duration {
        self.tick.min(self.lease / 4).max(Duration::from_millis(20))
    }
}

/// `redis://user:secret@host` → `redis://***@host`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

fn redacted_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    url.as_deref().map(redact_url).serialize(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_masked_and_the_tick_stays_under_the_lease() {
        assert_eq!(redact_url("redis://user:pw@redis:6379/0"), "redis://***@redis:6379/0");
        assert_eq!(redact_url("redis://redis:6379"), "redis://redis:6379");
        let s = ClusterSettings { lease: Duration::from_secs(1), ..ClusterSettings::default() };
        assert_eq!(s.tick(), Duration::from_millis(250));
        assert!(!s.enabled());
        assert!(ClusterSettings { node_id: Some("a".into()), ..s }.node() == "a");
    }
}
