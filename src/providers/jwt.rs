//! Reading a JWT's `exp` claim to schedule a refresh. Nothing is verified: the token is
//! only ever sent back to the server that issued it, which verifies it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// How long until the token's `exp`, if it is a JWT that has one. Zero if already past.
pub fn remaining_lifetime(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some(Duration::from_secs_f64((exp - now).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims))
    }

    #[test]
    fn reads_exp_relative_to_now() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let lifetime = remaining_lifetime(&jwt(&format!("{{\"exp\":{}}}", now + 600))).unwrap();
        assert!(lifetime > Duration::from_secs(590) && lifetime <= Duration::from_secs(600));
        assert_eq!(
            remaining_lifetime(&jwt("{\"exp\":1}")),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn anything_else_has_no_lifetime() {
        assert_eq!(remaining_lifetime(&jwt("{\"sub\":\"x\"}")), None);
        assert_eq!(remaining_lifetime("628aa2ab34cbcd5d"), None);
        assert_eq!(remaining_lifetime("a.!!!.c"), None);
    }
}
