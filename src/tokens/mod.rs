//! The live token of each upstream. `TokenCell` holds the current `Credential` in an
//! `ArcSwapOption`: the request path reads it without a lock, and only token requests
//! (from the refresher, or from requests that found no valid token) replace it. Token
//! requests are single-flight: however many callers need a token at once, one request is
//! made and all of them get its outcome. Where tokens come from is the `TokenSource` seam:
//! the vendor `Provider` in the product, a scripted source in the unit tests.

mod backoff;
mod cell;
mod refresher;
mod schedule;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::providers::{LoginMethod, Provider, ProviderError};
use crate::secret::Secret;

pub use cell::TokenCell;
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

/// A token ready to use: the full header set it is sent in, and its lifetime on the
/// monotonic clock.
#[derive(Debug, Clone)]
pub struct Credential {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The token itself, for revocation and `tokenproxy token`.
    pub token: Secret,
    pub obtained_at: Instant,
    /// `None`: valid until the upstream says otherwise (static keys).
    pub expires_at: Option<Instant>,
    pub refresh_token: Option<Secret>,
    pub refresh_expires_at: Option<Instant>,
}

impl Credential {
    pub fn without_expiry(token: Secret, headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        Credential {
            headers,
            token,
            obtained_at: Instant::now(),
            expires_at: None,
            refresh_token: None,
            refresh_expires_at: None,
        }
    }

    pub fn is_valid_at(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|expires_at| now < expires_at)
    }

    /// The same credential, no longer to be sent: the vendor refused it. Its refresh token
    /// stays, to get the next one.
    fn refused(&self) -> Self {
        Credential {
            expires_at: Some(Instant::now()),
            ..self.clone()
        }
    }

    /// The token and refresh token, to scrub from what a vendor says about them.
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.token).chain(&self.refresh_token)
    }

    pub fn live_refresh_token(&self, now: Instant) -> Option<&Secret> {
        let alive = self
            .refresh_expires_at
            .is_none_or(|expires_at| now < expires_at);
        self.refresh_token.as_ref().filter(|_| alive)
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

/// What `/-/status` and the start-up log say about a token. Never the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// No token yet, and none requested so far.
    Pending,
    Valid,
    /// A token request is under way.
    Refreshing,
    /// Still valid, but past the time it should have been replaced (the last refresh
    /// failed, or the refresher is about to run).
    Expiring,
    /// No valid token; the token endpoint is left alone until the backoff ends.
    BackingOff,
    /// The last token request failed, there is no valid token, and a retry is due.
    Failed,
    Expired,
    /// A user has to log in (device code, browser), or log in again.
    NeedsLogin,
    /// Logged out, for a kind that needs no person: the next request obtains a token.
    LoggedOut,
    /// The vendor refuses the configured client (`invalid_client`, `unauthorized_client`)
    /// or its fixed credentials: the config must change, a login does not help.
    InvalidCredentials,
}

impl serde::Serialize for TokenState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

impl TokenState {
    pub const ALL: [TokenState; 10] = [
        TokenState::Pending,
        TokenState::Valid,
        TokenState::Refreshing,
        TokenState::Expiring,
        TokenState::BackingOff,
        TokenState::Failed,
        TokenState::Expired,
        TokenState::NeedsLogin,
        TokenState::LoggedOut,
        TokenState::InvalidCredentials,
    ];

    /// The one name used in `/-/status`, the metrics and the status page.
    pub fn label(self) -> &'static str {
        match self {
            TokenState::Pending => "pending",
            TokenState::Valid => "valid",
            TokenState::Refreshing => "refreshing",
            TokenState::Expiring => "expiring",
            TokenState::BackingOff => "backing_off",
            TokenState::Failed => "failed",
            TokenState::Expired => "expired",
            TokenState::NeedsLogin => "needs_login",
            TokenState::LoggedOut => "logged_out",
            TokenState::InvalidCredentials => "invalid_credentials",
        }
    }
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
