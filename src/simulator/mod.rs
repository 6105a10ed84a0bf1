//! The built-in SignalFlow backend.

pub mod inventory;
pub mod language;
