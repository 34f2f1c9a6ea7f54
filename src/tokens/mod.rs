//! The live token of each upstream. `TokenCell` holds the current `Credential` in an
//! `ArcSwapOption`: the request path reads it without a lock, and only token requests
//! (from the refresher, or from requests that found no valid token) replace it. Token
//! requests are single-flight: however many callers need a token at once, one request is
//! made and all of them get its outcome.

mod backoff;
mod refresher;
mod schedule;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::TokenMetrics;
use crate::providers::{Provider, ProviderError};
use crate::secret::Secret;
use crate::store::SharedStore;

use backoff::Backoff;
pub use refresher::spawn_refresher;
pub use schedule::refresh_at;

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

pub struct TokenCell {
    upstream: String,
    provider: Provider,
    store: SharedStore,
    /// Identifies the auth settings in the store.
    fingerprint: String,
    refresh_skew: Option<Duration>,
    current: ArcSwapOption<Credential>,
    /// Held while a token request is in flight.
    flight: tokio::sync::Mutex<()>,
    /// Counts finished token requests, so a caller that waited on the flight lock can tell
    /// that someone else's request finished meanwhile and share its outcome.
    finished: AtomicU64,
    last_failure: Mutex<Option<ProviderError>>,
    /// Until when the token endpoint is left alone after failures.
    backoff: Mutex<Backoff>,
    report: Mutex<TokenReport>,
    /// Wakes the refresher early (a new credential or a shutdown).
    wake: Notify,
    /// Set when a reload dropped this upstream: its refresher stops.
    retired: std::sync::atomic::AtomicBool,
    /// Set by a logout, cleared by the next token.
    logged_out: std::sync::atomic::AtomicBool,
    metrics: Arc<TokenMetrics>,
}

impl TokenCell {
    /// `stored` is what the store kept from an earlier run, if anything.
    pub fn new(
        upstream: impl Into<String>,
        provider: Provider,
        refresh_skew: Option<Duration>,
        store: SharedStore,
        fingerprint: String,
        stored: Option<Credential>,
    ) -> Self {
        // A static token is valid from the start; others start from the store, or empty.
        let initial = provider.immediate_credential().or(stored).map(Arc::new);
        TokenCell {
            upstream: upstream.into(),
            provider,
            store,
            fingerprint,
            refresh_skew,
            current: ArcSwapOption::new(initial),
            flight: tokio::sync::Mutex::new(()),
            finished: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            backoff: Mutex::new(Backoff::default()),
            report: Mutex::new(TokenReport::default()),
            wake: Notify::new(),
            retired: std::sync::atomic::AtomicBool::new(false),
            logged_out: std::sync::atomic::AtomicBool::new(false),
            metrics: Arc::default(),
        }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// The credential to send now: the current one if valid (no waiting), else the outcome
    /// of one shared token request.
    pub async fn credential(&self) -> Result<Arc<Credential>, TokenUnavailable> {
        if let Some(credential) = self.valid_now() {
            return Ok(credential);
        }
        if let Some(unavailable) = self.backing_off() {
            return Err(unavailable);
        }
        self.report.lock().expect("poisoned").requests_waited += 1;
        // Boxed: every request's future would otherwise carry the token request's state,
        // which only the rare request that has to wait for a token needs.
        Box::pin(self.obtain(false)).await
    }

    /// Gets a new credential even if the current one is still valid (the refresher).
    pub async fn refresh(&self) -> Result<Arc<Credential>, TokenUnavailable> {
        self.obtain(true).await
    }

    pub fn current(&self) -> Option<Arc<Credential>> {
        self.current.load_full()
    }

    fn valid_now(&self) -> Option<Arc<Credential>> {
        let current = self.current.load();
        match current.as_ref() {
            Some(credential) if credential.is_valid_at(Instant::now()) => {
                Some(Arc::clone(credential))
            }
            _ => None,
        }
    }

    async fn obtain(&self, force: bool) -> Result<Arc<Credential>, TokenUnavailable> {
        let finished_before = self.finished.load(Ordering::Acquire);
        let _flight = self.flight.lock().await;
        if self.finished.load(Ordering::Acquire) != finished_before {
            // A token request finished while we waited: its outcome is ours too.
            if let Some(credential) = self.valid_now() {
                return Ok(credential);
            }
            if let Some(cause) = self.last_failure.lock().expect("poisoned").clone() {
                let retry_after = self.backoff.lock().expect("poisoned").remaining();
                return Err(TokenUnavailable { cause, retry_after });
            }
        } else if !force {
            if let Some(credential) = self.valid_now() {
                return Ok(credential);
            }
        }

        self.fetch().await
    }

    /// After the vendor refused `used` (401): the current credential if someone already
    /// replaced it, else a new one. `used` is never sent again: it is marked expired, so
    /// requests meanwhile wait for a token (or get the backoff's 503) instead of collecting
    /// another 401. Every request that saw the same token fail shares one token request,
    /// and a failing token endpoint is left alone for the backoff like any other.
    pub async fn replace_stale(
        &self,
        used: &Arc<Credential>,
    ) -> Result<Arc<Credential>, TokenUnavailable> {
        let _flight = self.flight.lock().await;
        let current = self.current.load_full();
        match &current {
            Some(current) if Arc::ptr_eq(current, used) => {
                tracing::info!(upstream = %self.upstream, "the upstream refused the current token; getting a new one");
                self.current.store(Some(Arc::new(used.refused())));
            }
            Some(current) if current.is_valid_at(Instant::now()) => {
                return Ok(Arc::clone(current));
            }
            _ => {}
        }
        if let Some(unavailable) = self.backing_off() {
            return Err(unavailable);
        }
        // Boxed for the same reason as in `credential`.
        Box::pin(self.fetch()).await
    }

    /// One token request. The caller holds the flight lock.
    async fn fetch(&self) -> Result<Arc<Credential>, TokenUnavailable> {
        let previous = self.current.load_full();
        let started = Instant::now();
        let outcome = self.provider.obtain(previous.as_deref()).await;
        // "Needs a login" is known without asking the vendor: not a token request.
        if outcome.as_ref().err() != Some(&ProviderError::NeedsLogin) {
            self.metrics.duration.observe(started.elapsed());
            let counter = match &outcome {
                Ok(_) => &self.metrics.succeeded,
                Err(_) => &self.metrics.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let result = match outcome {
            Ok(credential) => {
                let lifetime = credential.expires_at.map(|expires_at| {
                    expires_at
                        .saturating_duration_since(Instant::now())
                        .as_secs()
                });
                tracing::info!(
                    upstream = %self.upstream,
                    expires_in_seconds = ?lifetime,
                    refresh_token = credential.refresh_token.is_some(),
                    "token obtained"
                );
                self.persist(&credential).await;
                let credential = Arc::new(credential);
                self.current.store(Some(Arc::clone(&credential)));
                *self.last_failure.lock().expect("poisoned") = None;
                *self.backoff.lock().expect("poisoned") = Backoff::default();
                self.logged_out.store(false, Ordering::Release);
                let mut report = self.report.lock().expect("poisoned");
                report.last_refresh = Some(SystemTime::now());
                report.refreshes += 1;
                report.last_error = None;
                Ok(credential)
            }
            Err(cause) => {
                let retry_after = self.record_failure(&cause);
                Err(TokenUnavailable { cause, retry_after })
            }
        };
        self.finished.fetch_add(1, Ordering::Release);
        self.wake.notify_waiters();
        result
    }

    /// The last failure, while backing off: requests are answered with it instead of
    /// asking the token endpoint again. Permanent failures (a refused client or grant) wait
    /// for a login.
    fn backing_off(&self) -> Option<TokenUnavailable> {
        let cause = self.last_failure.lock().expect("poisoned").clone()?;
        if cause.is_permanent() {
            return Some(TokenUnavailable {
                cause,
                retry_after: None,
            });
        }
        let retry_after = self.backoff.lock().expect("poisoned").remaining()?;
        Some(TokenUnavailable {
            cause,
            retry_after: Some(retry_after),
        })
    }

    /// When the refresher may try again after a failure; `None` while a login is needed.
    pub fn retry_at(&self) -> Option<Instant> {
        let failure = self.last_failure.lock().expect("poisoned").clone();
        match failure {
            Some(cause) if cause.is_permanent() || cause == ProviderError::NeedsLogin => None,
            _ => Some(
                self.backoff
                    .lock()
                    .expect("poisoned")
                    .until
                    .unwrap_or_else(Instant::now),
            ),
        }
    }

    /// Writes a new credential to the store before anything uses it: a rotated refresh
    /// token must not exist only in memory. A failed write is logged, and the credential is
    /// used anyway: the old refresh token is already spent.
    async fn persist(&self, credential: &Credential) {
        if !self.provider.refreshes() {
            return;
        }
        if let Err(error) = self
            .store
            .save(&self.upstream, &self.fingerprint, credential)
            .await
        {
            tracing::error!(upstream = %self.upstream, error = %error, "could not write the token store");
        }
    }

    /// Remembers why there is no token, for status and for requests that ask, and backs
    /// off: capped exponential with jitter, never sooner than the server's `Retry-After`.
    /// Returns how long until asking again may help.
    pub fn record_failure(&self, cause: &ProviderError) -> Option<Duration> {
        let retry_after = if *cause == ProviderError::NeedsLogin || cause.is_permanent() {
            None
        } else {
            Some(
                self.backoff
                    .lock()
                    .expect("poisoned")
                    .failed(cause.retry_after()),
            )
        };
        if *cause == ProviderError::NeedsLogin {
            tracing::debug!(upstream = %self.upstream, "no token: needs a login");
        } else {
            tracing::warn!(upstream = %self.upstream, error = %cause, "token request failed");
        }
        *self.last_failure.lock().expect("poisoned") = Some(cause.clone());
        // Waiting for a user is no failed token request.
        if *cause != ProviderError::NeedsLogin {
            let mut report = self.report.lock().expect("poisoned");
            report.failures += 1;
            report.last_error = Some(match cause.hint(&self.upstream) {
                Some(hint) => format!("{cause}; {hint}"),
                None => cause.to_string(),
            });
        }
        retry_after
    }

    /// Puts a credential from a completed login in place, and wakes the refresher so it
    /// schedules the next refresh from it.
    pub async fn install(&self, credential: Credential) -> Arc<Credential> {
        let _flight = self.flight.lock().await;
        self.persist(&credential).await;
        let credential = Arc::new(credential);
        self.current.store(Some(Arc::clone(&credential)));
        *self.last_failure.lock().expect("poisoned") = None;
        *self.backoff.lock().expect("poisoned") = Backoff::default();
        self.logged_out.store(false, Ordering::Release);
        {
            let mut report = self.report.lock().expect("poisoned");
            report.last_refresh = Some(SystemTime::now());
            report.refreshes += 1;
            report.last_error = None;
        }
        self.metrics.logins.fetch_add(1, Ordering::Relaxed);
        tracing::info!(upstream = %self.upstream, "logged in");
        self.finished.fetch_add(1, Ordering::Release);
        self.wake.notify_waiters();
        credential
    }

    /// Forgets the current credential (logout). Returns it, for revocation.
    pub async fn forget(&self) -> Option<Arc<Credential>> {
        let _flight = self.flight.lock().await;
        let previous = self.current.swap(None);
        if let Err(error) = self.store.remove(&self.upstream).await {
            tracing::error!(upstream = %self.upstream, error = %error, "could not remove the stored tokens");
        }
        // Logged out: nothing is fetched ahead of time until a login, or, for kinds that
        // need no user, the next request.
        *self.last_failure.lock().expect("poisoned") = Some(ProviderError::NeedsLogin);
        *self.backoff.lock().expect("poisoned") = Backoff::default();
        self.logged_out.store(true, Ordering::Release);
        self.finished.fetch_add(1, Ordering::Release);
        self.wake.notify_waiters();
        previous
    }

    /// Stops the refresher: a reload dropped or replaced this upstream.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The last failure was that a user must log in.
    pub fn needs_login(&self) -> bool {
        matches!(
            *self.last_failure.lock().expect("poisoned"),
            Some(ProviderError::NeedsLogin)
        )
    }

    /// Waits until a token request finishes or a login installs a credential.
    pub async fn changed(&self) {
        self.wake.notified().await
    }

    pub fn state(&self) -> TokenState {
        let now = Instant::now();
        let failure = self.last_failure.lock().expect("poisoned").clone();
        let refreshing = self.flight.try_lock().is_err();
        let current = self.current.load();
        if current
            .as_ref()
            .is_some_and(|credential| credential.is_valid_at(now))
        {
            let overdue = self.next_refresh().is_some_and(|at| at <= now);
            return if refreshing {
                TokenState::Refreshing
            } else if failure.is_some() || overdue {
                TokenState::Expiring
            } else {
                TokenState::Valid
            };
        }
        if refreshing {
            return TokenState::Refreshing;
        }
        let person = self.provider.login_method() != crate::providers::LoginMethod::Direct;
        match failure {
            Some(cause) if cause.is_bad_client() => TokenState::InvalidCredentials,
            // A direct kind's grant refused for good: its fixed credentials are wrong.
            Some(cause) if cause.is_permanent() && !person => TokenState::InvalidCredentials,
            Some(ProviderError::NeedsLogin)
                if !person && self.logged_out.load(Ordering::Acquire) =>
            {
                TokenState::LoggedOut
            }
            Some(cause) if cause == ProviderError::NeedsLogin || cause.is_permanent() => {
                TokenState::NeedsLogin
            }
            Some(_) if self.backoff.lock().expect("poisoned").remaining().is_some() => {
                TokenState::BackingOff
            }
            Some(_) => TokenState::Failed,
            None if current.is_some() => TokenState::Expired,
            None if person => TokenState::NeedsLogin,
            None => TokenState::Pending,
        }
    }

    /// There is a token that may be sent now.
    pub fn has_valid_token(&self) -> bool {
        self.valid_now().is_some()
    }

    pub fn metrics(&self) -> Arc<TokenMetrics> {
        Arc::clone(&self.metrics)
    }

    pub fn report(&self) -> TokenReport {
        self.report.lock().expect("poisoned").clone()
    }

    /// When the refresher may next ask the token endpoint: the refresh time, but never
    /// inside a backoff, however the failure came about (the refresher, a request, a 401).
    pub fn next_attempt(&self) -> Option<Instant> {
        let refresh = self.next_refresh()?;
        let backoff = self.backoff.lock().expect("poisoned").until;
        Some(backoff.map_or(refresh, |until| refresh.max(until)))
    }

    /// When the refresher should next get a token; `None` for tokens that never change.
    pub fn next_refresh(&self) -> Option<Instant> {
        if !self.provider.refreshes() {
            return None;
        }
        match self.current.load().as_ref() {
            None => Some(Instant::now()),
            Some(credential) => Some(
                credential
                    .expires_at
                    .map(|expires_at| {
                        refresh_at(credential.obtained_at, expires_at, self.refresh_skew)
                    })
                    .unwrap_or_else(Instant::now),
            ),
        }
    }
}
