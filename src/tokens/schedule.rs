//! When to refresh a token: early enough that requests never meet an expired one, late
//! enough not to hammer the token endpoint.

use std::time::Duration;

use tokio::time::Instant;

/// Skew used when none is configured: a quarter of the lifetime, at most a minute. A
/// 5-minute CAEPE token is refreshed after 4 minutes, a 2-second token after 1.5 s.
const MAX_AUTO_SKEW: Duration = Duration::from_secs(60);

/// The instant to refresh a token obtained at `obtained_at` that expires at `expires_at`.
/// A configured skew longer than the lifetime would refresh continuously, so the refresh
/// never comes before half the lifetime.
pub fn refresh_at(obtained_at: Instant, expires_at: Instant, skew: Option<Duration>) -> Instant {
    let lifetime = expires_at.saturating_duration_since(obtained_at);
    let skew = skew.unwrap_or_else(|| (lifetime / 4).min(MAX_AUTO_SKEW));
    let earliest = obtained_at + lifetime / 2;
    expires_at
        .checked_sub(skew)
        .unwrap_or(earliest)
        .max(earliest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, seconds: f64) -> Instant {
        base + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn default_skew_is_a_quarter_capped_at_a_minute() {
        let t0 = Instant::now();
        assert_eq!(refresh_at(t0, at(t0, 2.0), None), at(t0, 1.5));
        assert_eq!(refresh_at(t0, at(t0, 300.0), None), at(t0, 240.0));
        assert_eq!(refresh_at(t0, at(t0, 86400.0), None), at(t0, 86340.0));
    }

    #[test]
    fn configured_skew_is_used_but_never_before_half_the_lifetime() {
        let t0 = Instant::now();
        assert_eq!(
            refresh_at(t0, at(t0, 300.0), Some(Duration::from_secs(30))),
            at(t0, 270.0)
        );
        assert_eq!(
            refresh_at(t0, at(t0, 10.0), Some(Duration::from_secs(60))),
            at(t0, 5.0)
        );
    }
}
