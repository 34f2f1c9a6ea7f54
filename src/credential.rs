//! The vocabulary every layer speaks about a token: the `Credential` (its full header set
//! and lifetime), how a token becomes headers (`Injection`), and the `TokenState` status,
//! metrics and the page report. A leaf: it imports nothing of tokenproxy but `secret`.

use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::secret::Secret;

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
    pub(crate) fn refused(&self) -> Self {
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

/// The headers a token is sent in: `header: scheme token`, plus fixed extra headers
/// (CAEPE's `Organization`).
#[derive(Debug, Clone)]
pub struct Injection {
    pub header: HeaderName,
    /// `"Bearer"` by default; empty for a raw token.
    pub scheme: String,
    pub extra: Vec<(HeaderName, HeaderValue)>,
}

impl Injection {
    /// The full header set for one token. Values are marked sensitive so HTTP/2 never
    /// puts them in a compression table.
    pub fn headers_for(
        &self,
        token: &Secret,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, UnsendableToken> {
        let value = if self.scheme.is_empty() {
            token.expose().to_owned()
        } else {
            format!("{} {}", self.scheme, token.expose())
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| UnsendableToken)?;
        value.set_sensitive(true);
        let mut headers = Vec::with_capacity(1 + self.extra.len());
        headers.push((self.header.clone(), value));
        headers.extend(self.extra.iter().cloned());
        Ok(headers)
    }
}

/// A token with characters a header cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token contains characters not allowed in a header")]
pub struct UnsendableToken;

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

impl<'de> serde::Deserialize<'de> for TokenState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let label = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        TokenState::ALL
            .into_iter()
            .find(|state| state.label() == label)
            .ok_or_else(|| serde::de::Error::unknown_variant(&label, &[]))
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
