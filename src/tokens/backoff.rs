//! How long to leave a failing token endpoint alone: capped exponential backoff with
//! jitter (so many tokenproxies do not retry in step), never shorter than the server's own
//! `Retry-After`.

use std::hash::BuildHasher;
use std::time::Duration;

use tokio::time::Instant;

const FIRST: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Backoff {
    failures_in_row: u32,
    pub until: Option<Instant>,
}

impl Backoff {
    /// Records one more failure; returns the wait before the next attempt.
    pub fn failed(&mut self, server_asked: Option<Duration>) -> Duration {
        self.failures_in_row = self.failures_in_row.saturating_add(1);
        let exponential = FIRST
            .saturating_mul(1 << self.failures_in_row.saturating_sub(1).min(16))
            .min(MAX);
        let wait = jitter(exponential).max(server_asked.unwrap_or_default());
        self.until = Some(Instant::now() + wait);
        wait
    }

    /// Time left before asking again, if any.
    pub fn remaining(&self) -> Option<Duration> {
        let until = self.until?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// Scales by a random factor in [0.8, 1.2).
fn jitter(duration: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    let factor = 0.8 + 0.4 * (random % 1_000) as f64 / 1_000.0;
    duration.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap_with_jitter() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..12).map(|_| backoff.failed(None)).collect();
        assert!(waits[0] >= Duration::from_millis(400) && waits[0] < Duration::from_millis(600));
        assert!(waits[3] >= Duration::from_millis(3200) && waits[3] < Duration::from_millis(4800));
        assert!(waits[11] >= Duration::from_secs(48) && waits[11] < Duration::from_secs(72));
    }

    #[test]
    fn never_sooner_than_the_server_asked() {
        let mut backoff = Backoff::default();
        assert!(backoff.failed(Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        assert!(backoff.remaining().unwrap() > Duration::from_secs(29));
    }
}
