//! Tenants and their upstream pools. In the default mode every request is the one tenant and
//! uses the gateway's configured token. In pass-through mode a client's `X-SF-Token` is used
//! upstream: each token gets its own bounded pool (closed when idle), and its computations are
//! visible only to requests with the same token. A tenant is named by a digest of its token, so
//! the token itself never becomes a map key, a label or a log field.

use crate::upstream::pool::PoolStats;
use crate::upstream::{Pool, UpstreamConfig};
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Who is asking.
#[derive(Clone)]
pub struct Tenant {
    /// `default`, or the first 32 hex digits of the token's SHA-256.
    pub id: Arc<str>,
    /// The token to use upstream (pass-through mode only).
    pub token: Option<SecretString>,
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenant").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Tenant {
    /// The single tenant of the default mode.
    pub fn single() -> Self {
        Tenant { id: Arc::from("default"), token: None }
    }

    /// A pass-through tenant for a client token.
    pub fn for_token(token: &str) -> Self {
        let digest = Sha256::digest(token.as_bytes());
        let id: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        Tenant { id: Arc::from(id), token: Some(SecretString::from(token.to_owned())) }
    }
}

struct TenantPool {
    pool: Pool,
    cancel: CancellationToken,
    idle_since: Option<Instant>,
}

/// The default pool, and in pass-through mode one pool per token.
pub struct Pools {
    default: Option<Pool>,
    template: Option<UpstreamConfig>,
    by_tenant: Mutex<HashMap<Arc<str>, TenantPool>>,
    max: usize,
    idle_timeout: Duration,
    shutdown: CancellationToken,
    /// The counters of tenant pools closed when idle.
    retired: PoolStats,
}

/// Too many tokens hold a pool at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} tokens already hold upstream pools")]
pub struct TooManyTenants(pub usize);

impl Pools {
    /// One pool for everyone.
    pub fn single(pool: Pool) -> Self {
        Pools::new(Some(pool), None, 1, Duration::from_secs(300), CancellationToken::new())
    }

    /// Pools made on demand from `template` (its token replaced by each tenant's).
    pub fn pass_through(
        template: UpstreamConfig,
        max: usize,
        idle_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Pools::new(None, Some(template), max, idle_timeout, shutdown)
    }

    fn new(
        default: Option<Pool>,
        template: Option<UpstreamConfig>,
        max: usize,
        idle_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Pools {
            default,
            template,
            by_tenant: Mutex::new(HashMap::new()),
            max,
            idle_timeout,
            shutdown,
            retired: PoolStats::default(),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<Arc<str>, TenantPool>> {
        // Short critical sections, no await.
        self.by_tenant.lock()
    }

    /// The pool serving `tenant`, created if needed.
    pub fn for_tenant(&self, tenant: &Tenant) -> Result<Pool, TooManyTenants> {
        let (Some(template), Some(token)) = (&self.template, &tenant.token) else {
            // The default mode, or a tenant without a token: the configured pool.
            return self.default.clone().ok_or(TooManyTenants(0));
        };
        let mut pools = self.lock();
        if let Some(entry) = pools.get_mut(&tenant.id) {
            entry.idle_since = None;
            return Ok(entry.pool.clone());
        }
        if pools.len() >= self.max {
            return Err(TooManyTenants(self.max));
        }
        let mut config = template.clone();
        config.token = SecretString::from(token.expose_secret().to_owned());
        let cancel = self.shutdown.child_token();
        let pool = Pool::new(config, cancel.clone());
        tracing::info!(tenant = %tenant.id, "opened an upstream pool for a tenant");
        pools.insert(tenant.id.clone(), TenantPool { pool: pool.clone(), cancel, idle_since: None });
        Ok(pool)
    }

    /// Whether each client's token gets its own pool (`tenancy.pass_through`).
    pub fn is_pass_through(&self) -> bool {
        self.template.is_some()
    }

    /// The counters of the pools closed so far (their sockets are gone; their counts stay).
    pub fn retired_stats(&self) -> &PoolStats {
        &self.retired
    }

    /// Every pool, for readiness and metrics.
    pub fn all(&self) -> Vec<Pool> {
        let mut all: Vec<Pool> = self.default.iter().cloned().collect();
        all.extend(self.lock().values().map(|t| t.pool.clone()));
        all
    }

    /// Ready: the default pool is authenticated, or in pass-through mode no pool has failed to
    /// authenticate its last attempt (there is no token of the gateway's own to try).
    pub fn is_ready(&self) -> bool {
        match &self.default {
            Some(pool) => pool.is_ready(),
            None => self.lock().values().all(|t| t.pool.is_ready() || t.pool.status().last_error.is_none()),
        }
    }

    /// Closes tenant pools that have had no computation for the idle timeout.
    pub fn evict_idle(&self) {
        let now = Instant::now();
        let mut pools = self.lock();
        pools.retain(|tenant, entry| {
            if entry.pool.status().computations > 0 {
                entry.idle_since = None;
                return true;
            }
            let since = *entry.idle_since.get_or_insert(now);
            let keep = now.duration_since(since) < self.idle_timeout;
            if !keep {
                tracing::info!(tenant = %tenant, "closed an idle tenant pool");
                entry.pool.stats().add_counters_to(&self.retired);
                entry.cancel.cancel();
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_named_by_a_digest_never_the_token() {
        let t = Tenant::for_token("s3cret-token");
        assert_eq!(t.id.len(), 32);
        assert!(!t.id.contains("s3cret"));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert_eq!(Tenant::for_token("s3cret-token").id, t.id);
        assert_ne!(Tenant::for_token("other").id, t.id);
    }
}
