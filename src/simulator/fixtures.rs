//! FakeBackend parity: fixed series per program with given metadata and values, and programs
//! that fail with a registered error (the Go client's `FakeBackend` offered exactly these).
//!
//! A program registered here is served from the fixtures instead of being compiled; values can
//! be changed or removed while its jobs run, and the next interval shows the change. Every
//! table is bounded ([`MAX_ENTRIES`]); the control API answers 409 past it.

use crate::protocol::Tsid;
use crate::protocol::Value as PointValue;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Most entries in any one fixture table.
pub const MAX_ENTRIES: usize = 100_000;

/// The fixture tables.
#[derive(Debug, Default)]
pub struct Fixtures {
    programs: HashMap<String, Vec<Tsid>>,
    metadata: HashMap<Tsid, Map<String, Value>>,
    values: HashMap<Tsid, PointValue>,
    errors: HashMap<String, String>,
}

/// A fixture table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fixture table is full ({MAX_ENTRIES} entries)")]
pub struct FixturesFull;

fn insert_bounded<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) -> Result<(), FixturesFull> {
    if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
        return Err(FixturesFull);
    }
    map.insert(key, value);
    Ok(())
}

impl Fixtures {
    /// `AddProgramTSIDs`: the program's output is exactly these series (those with a value).
    pub fn set_program(&mut self, program: &str, tsids: Vec<Tsid>) -> Result<(), FixturesFull> {
        insert_bounded(&mut self.programs, program.trim().to_owned(), tsids)
    }

    /// `AddTSIDMetadata`.
    pub fn set_metadata(&mut self, tsid: Tsid, properties: Map<String, Value>) -> Result<(), FixturesFull> {
        insert_bounded(&mut self.metadata, tsid, properties)
    }

    /// `SetTSIDFloatData` (an integer stays an exact integer on the wire).
    pub fn set_value(&mut self, tsid: Tsid, value: PointValue) -> Result<(), FixturesFull> {
        insert_bounded(&mut self.values, tsid, value)
    }

    /// `RemoveTSIDData`: the series stops appearing in data messages.
    pub fn remove_value(&mut self, tsid: Tsid) -> bool {
        self.values.remove(&tsid).is_some()
    }

    /// `AddProgramError`: executing this program yields an `error` with this message.
    pub fn set_error(&mut self, program: &str, message: &str) -> Result<(), FixturesFull> {
        insert_bounded(&mut self.errors, program.trim().to_owned(), message.to_owned())
    }

    pub fn error_for(&self, program: &str) -> Option<&str> {
        self.errors.get(program.trim()).map(String::as_str)
    }

    pub fn program(&self, program: &str) -> Option<&[Tsid]> {
        self.programs.get(program.trim()).map(Vec::as_slice)
    }

    pub fn metadata(&self, tsid: Tsid) -> Option<&Map<String, Value>> {
        self.metadata.get(&tsid)
    }

    pub fn value(&self, tsid: Tsid) -> Option<PointValue> {
        self.values.get(&tsid).copied()
    }

    /// Resolution a fixture program runs at when the execute gives none: the largest
    /// `sf_resolutionMs` of its series' metadata, else 1 s (as the Go fake does).
    pub fn native_resolution_ms(&self, tsids: &[Tsid]) -> i64 {
        tsids
            .iter()
            .filter_map(|t| self.metadata.get(t)?.get("sf_resolutionMs")?.as_i64())
            .filter(|r| *r > 0)
            .max()
            .unwrap_or(1000)
    }

    pub fn clear(&mut self) {
        *self = Fixtures::default();
    }

    /// Counts for the control API.
    pub fn summary(&self) -> Value {
        serde_json::json!({
            "programs": self.programs.len(),
            "metadata": self.metadata.len(),
            "values": self.values.len(),
            "errors": self.errors.len(),
        })
    }
}
