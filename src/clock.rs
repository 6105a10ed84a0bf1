//! Wall-clock time in epoch milliseconds, the unit of every SignalFlow timestamp.

/// Now, in milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
