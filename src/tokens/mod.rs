//! The live token of each upstream. `TokenCell` holds the current `Credential` in an
//! `ArcSwapOption`: the request path reads it without a lock, and only token requests
//! (from the refresher, or from requests that found no valid token) replace it. Token
//! requests are single-flight: however many callers need a token at once, one request is
//! made and all of them get its outcome. Where tokens come from is the `TokenSource` seam:
//! the vendor `Provider` in the product, a scripted source in the unit tests.

mod backoff;
mod cell;
mod fleet;
mod refresher;
mod schedule;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::credential::Credential;
use crate::providers::{LoginMethod, Provider, ProviderError};

pub use cell::TokenCell;
pub use fleet::{spawn_follower, FleetLink, FleetView};
pub use refresher::spawn_refresher;
pub use schedule::refresh_at;

/// Where a cell's tokens come from: the seam between the token lifecycle (single flight,
/// backoff, refresh scheduling, 401 replacement) and the vendors.
pub trait TokenSource: Send + Sync + 'static {
    /// A fresh credential without a person: a grant, or the refresh token of `previous`.
    fn obtain(
        &self,
        previous: Option<&Credential>,
    ) -> impl Future<Output = Result<Credential, ProviderError>> + Send;
    /// A credential that needs no request at all (a static token).
    fn immediate_credential(&self) -> Option<Credential>;
    /// False for tokens that never change: no refresher, no logout.
    fn refreshes(&self) -> bool;
    fn login_method(&self) -> LoginMethod;
}

impl TokenSource for Provider {
    fn obtain(
        &self,
        previous: Option<&Credential>,
    ) -> impl Future<Output = Result<Credential, ProviderError>> + Send {
        Provider::obtain(self, previous)
    }

    fn immediate_credential(&self) -> Option<Credential> {
        Provider::immediate_credential(self)
    }

    fn refreshes(&self) -> bool {
        Provider::refreshes(self)
    }

    fn login_method(&self) -> LoginMethod {
        Provider::login_method(self)
    }
}

/// What a request sees when there is no valid token.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no valid token: {cause}")]
pub struct TokenUnavailable {
    pub cause: ProviderError,
    /// When asking again may help: the backoff or the server's `Retry-After`.
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct TokenReport {
    pub last_refresh: Option<SystemTime>,
    pub last_error: Option<String>,
    pub refreshes: u64,
    pub failures: u64,
    /// Requests that found no valid token and had to wait for a token request. Stays at
    /// zero while the refresher keeps ahead of expiry.
    pub requests_waited: u64,
}
