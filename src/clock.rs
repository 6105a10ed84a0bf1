//! Wall-clock time in epoch milliseconds, the unit of every SignalFlow timestamp.
//!
//! Tools that replay time (the dashboard bench drives one simulated hour in seconds) may shift
//! this process's clock with [`set_offset_ms`]; the service itself never does, so its clock is
//! the system's.

use std::sync::atomic::{AtomicI64, Ordering};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Now, in milliseconds since the Unix epoch (0 if the system clock is before it), plus the
/// offset a replay tool set (none in the service).
pub fn now_ms() -> i64 {
    let system = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    system.saturating_add(OFFSET_MS.load(Ordering::Relaxed))
}

/// Shifts this process's clock (gateway and built-in simulator alike) by `offset_ms` from the
/// system clock. For benches and tools that replay time; never called by the service.
pub fn set_offset_ms(offset_ms: i64) {
    OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}
