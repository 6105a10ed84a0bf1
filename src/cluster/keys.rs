//! Redis key names and fleet-wide ids. Every key of a computation lives under
//! `sfgw:{tenant}:c:{id}`, where the tenant is `default` or a hash of the token (never the
//! token itself).

use crate::hub::SpecKey;
use crate::protocol::Tsid;
use sha2::{Digest, Sha256};

/// The keys of one computation.
#[derive(Debug, Clone)]
pub struct Keys {
    base: String,
    index: String,
}

impl Keys {
    pub fn new(tenant: &str, id: &str) -> Self {
        Keys { base: format!("sfgw:{tenant}:c:{id}"), index: index_key(tenant) }
    }

    /// Hash: the spec, creation time, last complete timestamp, stop request, end.
    pub fn record(&self) -> String {
        self.base.clone()
    }

    /// `node|epoch` of the leader, with the lease as its expiry.
    pub fn lease(&self) -> String {
        format!("{}:lease", self.base)
    }

    /// The fencing epoch, incremented at each change of leader.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.base)
    }

    /// The stream of rendered events; entry ids are `epoch-sequence`.
    pub fn events(&self) -> String {
        format!("{}:events", self.base)
    }

    /// Hash: the metadata snapshot, tsId → rendered JSON.
    pub fn metadata(&self) -> String {
        format!("{}:meta", self.base)
    }

    /// Sorted set: replicas with subscribers, scored by when their record expires (ms).
    pub fn presence(&self) -> String {
        format!("{}:presence", self.base)
    }

    /// Sorted set of the tenant's live computations, scored by creation time.
    pub fn index(&self) -> &str {
        &self.index
    }
}

pub fn index_key(tenant: &str) -> String {
    format!("sfgw:{tenant}:index")
}

/// The fleet-wide id of a shared computation: a hash of the sharing key (tenant and normalised
/// spec), as an 11-character URL-safe id like the random ones.
pub fn shared_id(key: &SpecKey) -> String {
    let digest = Sha256::digest(key.as_str().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Tsid(u64::from_be_bytes(first)).to_string()
}

/// A random id (`share: false`).
pub fn random_id() -> String {
    Tsid(fastrand::u64(..)).to_string()
}
