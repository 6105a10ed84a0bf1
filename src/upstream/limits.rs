//! Pacing: a token bucket for job starts (shared by every socket of a pool, so a reconnect that
//! re-executes 250 jobs does not earn a wall of 429s) and a jittered exponential backoff.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `burst` starts at once, refilled at `per_second`.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter { per_second: per_second.max(0.001), burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Takes a token now, or says how long until one is available. Never waits, so it is safe
    /// to use in a `select!` arm (dropping the wait loses nothing).
    pub fn try_take(&self) -> Result<(), Duration> {
        // Short critical section, no await.
        let mut state = self.state.lock();
        let now = Instant::now();
        let (tokens, last) = *state;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.per_second).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }
}

/// Exponential backoff with jitter: attempt n waits a uniformly random time in
/// [d/2, d] where d = min(initial · 2ⁿ, max). The jitter spreads reconnects of many gateways;
/// the upper bound never exceeds `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), attempt: 0 }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = delay_for(self.initial, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The jittered delay for attempt `attempt` (0-based).
pub fn delay_for(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = initial.saturating_mul(2u32.saturating_pow(attempt.min(20))).min(max);
    ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_paces() {
        let limiter = RateLimiter::new(10.0, 3);
        assert!(limiter.try_take().is_ok());
        assert!(limiter.try_take().is_ok());
        assert!(limiter.try_take().is_ok());
        let wait = limiter.try_take().unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
    }

    #[test]
    fn backoff_doubles_within_jitter_and_never_exceeds_the_max() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] <= Duration::from_millis(500));
        assert!(delays[3] >= Duration::from_secs(2) && delays[3] <= Duration::from_secs(4));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(delays[11] >= Duration::from_secs(15));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }
}
