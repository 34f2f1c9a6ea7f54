//! Token bookkeeping every simulator keeps the same way: issued tokens that expire or are
//! revoked, refresh tokens that rotate (a used one is remembered so its reuse is counted), and
//! token requests counted per `grant_type`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// An issued access (or exchanged, or system) token.
pub(crate) struct TokenGrant {
    pub expires_at: Instant,
    pub revoked: bool,
}

impl TokenGrant {
    pub fn new(now: Instant, ttl: Duration) -> Self {
        TokenGrant {
            expires_at: now + ttl,
            revoked: false,
        }
    }

    pub fn is_valid(&self, now: Instant) -> bool {
        !self.revoked && now < self.expires_at
    }
}

/// How many of `grants` an API would accept right now.
pub(crate) fn count_valid(grants: &HashMap<String, TokenGrant>) -> usize {
    let now = Instant::now();
    grants.values().filter(|grant| grant.is_valid(now)).count()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefreshStatus {
    Active,
    /// Rotated away: using it again is a reuse.
    Used,
    Revoked,
}

/// Why a presented refresh token cannot be redeemed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefreshRefusal {
    Reused,
    Revoked,
    Expired,
}

/// A refresh token for `client_id`; `grant` is what it was issued for (user, scope), which
/// each vendor records differently.
pub(crate) struct RefreshGrant<G> {
    pub client_id: String,
    pub grant: G,
    pub expires_at: Instant,
    pub status: RefreshStatus,
}

impl<G> RefreshGrant<G> {
    pub fn new(client_id: &str, grant: G, now: Instant, ttl: Duration) -> Self {
        RefreshGrant {
            client_id: client_id.to_owned(),
            grant,
            expires_at: now + ttl,
            status: RefreshStatus::Active,
        }
    }

    /// Whether it may be redeemed at `now`.
    pub fn check(&self, now: Instant) -> Result<(), RefreshRefusal> {
        match self.status {
            RefreshStatus::Used => Err(RefreshRefusal::Reused),
            RefreshStatus::Revoked => Err(RefreshRefusal::Revoked),
            RefreshStatus::Active if now >= self.expires_at => Err(RefreshRefusal::Expired),
            RefreshStatus::Active => Ok(()),
        }
    }

    /// A used token stays used, so its reuse is still counted as one.
    pub fn revoke(&mut self) {
        if self.status == RefreshStatus::Active {
            self.status = RefreshStatus::Revoked;
        }
    }
}

/// Every token issued so far becomes invalid: the simulators' `revoke_all`.
pub(crate) fn revoke_all<'a, G: 'a>(
    tokens: impl IntoIterator<Item = &'a mut TokenGrant>,
    refresh_tokens: impl IntoIterator<Item = &'a mut RefreshGrant<G>>,
) {
    for grant in tokens {
        grant.revoked = true;
    }
    for grant in refresh_tokens {
        grant.revoke();
    }
}

/// Token requests per `grant_type` as sent, counted before validation.
#[derive(Default)]
pub(crate) struct GrantCounts(HashMap<String, usize>);

impl GrantCounts {
    pub fn record(&mut self, grant_type: Option<&str>) {
        if let Some(grant_type) = grant_type {
            *self.0.entry(grant_type.to_owned()).or_default() += 1;
        }
    }

    pub fn get(&self, grant_type: &str) -> usize {
        self.0.get(grant_type).copied().unwrap_or(0)
    }

    pub fn all(&self) -> HashMap<String, usize> {
        self.0.clone()
    }
}
