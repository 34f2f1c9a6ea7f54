//! One upstream's token lifecycle. The credential itself sits in an `ArcSwapOption`, read
//! without a lock on every request; everything else that is known about it (the last
//! failure, the backoff, a logout, a request under way, the report) is one `Lifecycle`
//! value behind one lock, changed only by its named transitions, so `state()` reads one
//! consistent snapshot. The lock is never held across an `.await`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::fleet::FleetLink;
use super::{refresh_at, TokenReport, TokenSource, TokenUnavailable};
use crate::credential::{Credential, TokenState};
use crate::metrics::TokenMetrics;
use crate::providers::{LoginMethod, Provider, ProviderError};
use crate::secret::Secret;
use crate::store::SharedStore;

/// What is known besides the credential itself.
#[derive(Default)]
pub(super) struct Lifecycle {
    /// Why there is no token, or why the last token request failed.
    failure: Option<ProviderError>,
    /// Until when the token endpoint is left alone after failures.
    backoff: Backoff,
    /// Set by a logout, cleared by the next token.
    logged_out: bool,
    /// A token request is under way.
    obtaining: bool,
    report: TokenReport,
}

impl Lifecycle {
    /// A token arrived, from a token request or a login.
    pub(super) fn succeeded(&mut self) {
        self.failure = None;
        self.backoff = Backoff::default();
        self.logged_out = false;
        self.report.last_refresh = Some(SystemTime::now());
        self.report.refreshes += 1;
        self.report.last_error = None;
    }

    /// A token request (or a login) failed: remember why, and back off unless only a person
    /// or a config change can help. Returns how long until asking again may help.
    fn failed(&mut self, cause: &ProviderError, upstream: &str) -> Option<Duration> {
        let retry_after = if *cause == ProviderError::NeedsLogin || cause.is_permanent() {
            None
        } else {
            Some(self.backoff.failed(cause.retry_after()))
        };
        self.failure = Some(cause.clone());
        // Waiting for a person is no failed token request.
        if *cause != ProviderError::NeedsLogin {
            self.report.failures += 1;
            self.report.last_error = Some(match cause.hint(upstream) {
                Some(hint) => format!("{cause}; {hint}"),
                None => cause.to_string(),
            });
        }
        retry_after
    }

    /// Logged out: nothing is fetched ahead of time until a login, or, for kinds that need
    /// no person, the next request.
    pub(super) fn logged_out(&mut self) {
        self.failure = Some(ProviderError::NeedsLogin);
        self.backoff = Backoff::default();
        self.logged_out = true;
    }

    /// The failure requests are answered with instead of asking the token endpoint again:
    /// a permanent one until a login, any other while the backoff lasts.
    fn backing_off(&self) -> Option<TokenUnavailable> {
        let cause = self.failure.clone()?;
        if cause.is_permanent() {
            return Some(TokenUnavailable {
                cause,
                retry_after: None,
            });
        }
        let retry_after = self.backoff.remaining()?;
        Some(TokenUnavailable {
            cause,
            retry_after: Some(retry_after),
        })
    }
}

/// Clears `obtaining` however a token request ends, also when its caller goes away.
struct Obtaining<'a>(&'a Mutex<Lifecycle>);

impl<'a> Obtaining<'a> {
    fn start(lifecycle: &'a Mutex<Lifecycle>) -> Self {
        lock(lifecycle).obtaining = true;
        Obtaining(lifecycle)
    }
}

impl Drop for Obtaining<'_> {
    fn drop(&mut self) {
        lock(self.0).obtaining = false;
    }
}

/// No transition panics while holding the lock, so a poisoned lock still holds a
/// consistent value.
fn lock(lifecycle: &Mutex<Lifecycle>) -> MutexGuard<'_, Lifecycle> {
    lifecycle.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct TokenCell<S: TokenSource = Provider> {
    pub(super) upstream: String,
    pub(super) source: S,
    store: SharedStore,
    /// Identifies the auth settings in the store.
    pub(super) fingerprint: String,
    refresh_skew: Option<Duration>,
    pub(super) current: ArcSwapOption<Credential>,
    lifecycle: Mutex<Lifecycle>,
    /// Held while a token request is in flight.
    pub(super) flight: tokio::sync::Mutex<()>,
    /// Counts finished token requests, so a caller that waited on the flight lock can tell
    /// that someone else's request finished meanwhile and share its outcome.
    pub(super) finished: AtomicU64,
    /// Wakes the refresher early (a new credential or a shutdown).
    pub(super) wake: Notify,
    /// Fleet mode: the tokens are shared through Redis.
    pub(super) fleet: Option<FleetLink>,
    /// Set when a reload dropped this upstream: its refresher stops.
    retired: AtomicBool,
    metrics: Arc<TokenMetrics>,
}

impl<S: TokenSource> TokenCell<S> {
    /// `stored` is what the store kept from an earlier run, if anything.
    pub fn new(
        upstream: impl Into<String>,
        source: S,
        refresh_skew: Option<Duration>,
        store: SharedStore,
        fingerprint: String,
        stored: Option<Credential>,
    ) -> Self {
        // A static token is valid from the start; others start from the store, or empty.
        let immediate = source.immediate_credential();
        let mut lifecycle = Lifecycle::default();
        if let (None, Some(stored)) = (&immediate, &stored) {
            // The status shows when a restored token was obtained, not "never".
            let age = Instant::now().saturating_duration_since(stored.obtained_at);
            lifecycle.report.last_refresh = SystemTime::now().checked_sub(age);
        }
        let initial = immediate.or(stored).map(Arc::new);
        TokenCell {
            upstream: upstream.into(),
            source,
            store,
            fingerprint,
            refresh_skew,
            current: ArcSwapOption::new(initial),
            lifecycle: Mutex::new(lifecycle),
            flight: tokio::sync::Mutex::new(()),
            finished: AtomicU64::new(0),
            wake: Notify::new(),
            fleet: None,
            retired: AtomicBool::new(false),
            metrics: Arc::default(),
        }
    }

    /// Shares this upstream's tokens with the fleet: the local store is not used for it.
    pub fn in_fleet(mut self, link: FleetLink) -> Self {
        self.fleet = Some(link);
        self
    }

    pub fn fleet(&self) -> Option<&FleetLink> {
        self.fleet.as_ref()
    }

    pub(super) fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        lock(&self.lifecycle)
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn provider(&self) -> &S {
        &self.source
    }

    /// The credential to send now: the current one if valid (no waiting), else the outcome
    /// of one shared token request.
    pub async fn credential(&self) -> Result<Arc<Credential>, TokenUnavailable> {
        if let Some(credential) = self.valid_now() {
            return Ok(credential);
        }
        {
            let mut lifecycle = self.lifecycle();
            if let Some(unavailable) = lifecycle.backing_off() {
                return Err(unavailable);
            }
            lifecycle.report.requests_waited += 1;
        }
        // Boxed: every request's future would otherwise carry the token request's state,
        // which only the rare request that has to wait for a token needs.
        Box::pin(self.obtain(false)).await
    }

    /// Gets a new credential even if the current one is still valid (the refresher, the
    /// refresh action).
    pub async fn refresh(&self) -> Result<Arc<Credential>, TokenUnavailable> {
        self.obtain(true).await
    }

    pub fn current(&self) -> Option<Arc<Credential>> {
        self.current.load_full()
    }

    /// The current credential if it is valid now; never waits.
    pub fn valid_now(&self) -> Option<Arc<Credential>> {
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
            let lifecycle = self.lifecycle();
            if let Some(cause) = lifecycle.failure.clone() {
                let retry_after = lifecycle.backoff.remaining();
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
        if let Some(unavailable) = self.lifecycle().backing_off() {
            return Err(unavailable);
        }
        // Boxed for the same reason as in `credential`.
        Box::pin(self.fetch()).await
    }

    /// One token request (in a fleet: the fleet's protocol). The caller holds the flight lock.
    async fn fetch(&self) -> Result<Arc<Credential>, TokenUnavailable> {
        let obtaining = Obtaining::start(&self.lifecycle);
        let result = if self.fleet.is_some() {
            self.fetch_in_fleet().await
        } else {
            let previous = self.current.load_full();
            match self.request_token(previous.as_deref()).await {
                Ok(credential) => Ok(self.put(credential).await),
                Err(unavailable) => Err(unavailable),
            }
        };
        drop(obtaining);
        self.finished.fetch_add(1, Ordering::Release);
        self.wake.notify_waiters();
        result
    }

    /// Asks the source, counted and logged; a failure is recorded (backoff).
    pub(super) async fn request_token(
        &self,
        previous: Option<&Credential>,
    ) -> Result<Credential, TokenUnavailable> {
        let started = Instant::now();
        let outcome = self.source.obtain(previous).await;
        // "Needs a login" is known without asking the vendor: not a token request.
        if outcome.as_ref().err() != Some(&ProviderError::NeedsLogin) {
            self.metrics.duration.observe(started.elapsed());
            let counter = match &outcome {
                Ok(_) => &self.metrics.succeeded,
                Err(_) => &self.metrics.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        match outcome {
            Ok(credential) => {
                let lifetime = credential.expires_at.map(|expires_at| {
                    expires_at
                        .saturating_duration_since(Instant::now())
                        .as_secs()
                });
                tracing::info!(
                    upstream = %self.upstream,
                    expires_in = %lifetime.map_or_else(|| "never".to_owned(), |seconds| format!("{seconds}s")),
                    refresh_token = credential.refresh_token.is_some(),
                    "token obtained"
                );
                Ok(credential)
            }
            Err(cause) => {
                if cause == ProviderError::NeedsLogin {
                    self.drop_refused_refresh_token(previous);
                }
                let retry_after = self.record_failure(&cause);
                Err(TokenUnavailable { cause, retry_after })
            }
        }
    }

    /// The vendor refused the refresh token of `previous` and only a login helps: it is
    /// never sent again (every request would), though the access token may still serve.
    fn drop_refused_refresh_token(&self, previous: Option<&Credential>) {
        let Some(previous) = previous.filter(|p| p.refresh_token.is_some()) else {
            return;
        };
        let refused = previous.refresh_token.as_ref().map(Secret::expose);
        let Some(current) = self.current.load_full() else {
            return;
        };
        if current.refresh_token.as_ref().map(Secret::expose) == refused {
            self.current.store(Some(Arc::new(Credential {
                refresh_token: None,
                refresh_expires_at: None,
                ..(*current).clone()
            })));
        }
    }

    /// The one success path, for token requests and logins: stored before anything uses
    /// it, then current.
    pub(super) async fn put(&self, credential: Credential) -> Arc<Credential> {
        self.persist(&credential).await;
        let credential = Arc::new(credential);
        let mut lifecycle = self.lifecycle();
        self.current.store(Some(Arc::clone(&credential)));
        lifecycle.succeeded();
        credential
    }

    /// When the refresher may try again after a failure; `None` while a login is needed.
    pub fn retry_at(&self) -> Option<Instant> {
        let lifecycle = self.lifecycle();
        match &lifecycle.failure {
            Some(cause) if cause.is_permanent() || *cause == ProviderError::NeedsLogin => None,
            _ => Some(lifecycle.backoff.until.unwrap_or_else(Instant::now)),
        }
    }

    /// Writes a new credential to the store before anything uses it: a rotated refresh
    /// token must not exist only in memory. A failed write is logged, and the credential is
    /// used anyway: the old refresh token is already spent.
    async fn persist(&self, credential: &Credential) {
        if !self.source.refreshes() {
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
        let retry_after = self.lifecycle().failed(cause, &self.upstream);
        if *cause == ProviderError::NeedsLogin {
            tracing::debug!(upstream = %self.upstream, "no token: needs a login");
        } else {
            tracing::warn!(upstream = %self.upstream, error = %cause, "token request failed");
        }
        retry_after
    }

    /// Puts a credential from a completed login in place, and wakes the refresher so it
    /// schedules the next refresh from it.
    pub async fn install(&self, credential: Credential) -> Arc<Credential> {
        let _flight = self.flight.lock().await;
        let credential = self.put(credential).await;
        if self.fleet.is_some() {
            self.publish_login(&credential).await;
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
        self.lifecycle().logged_out();
        if self.fleet.is_some() {
            self.publish_logout().await;
        }
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

    /// The last failure was that a person must log in.
    pub fn needs_login(&self) -> bool {
        matches!(self.lifecycle().failure, Some(ProviderError::NeedsLogin))
    }

    /// Waits until a token request finishes or a login installs a credential.
    pub async fn changed(&self) {
        self.wake.notified().await
    }

    /// Listens for the next change before the caller looks, so a change in between is not
    /// missed (the refresher's wait for a login).
    pub(super) fn wake(&self) -> &Notify {
        &self.wake
    }

    pub fn state(&self) -> TokenState {
        let now = Instant::now();
        let lifecycle = self.lifecycle();
        let current = self.current.load();
        if current
            .as_ref()
            .is_some_and(|credential| credential.is_valid_at(now))
        {
            let overdue = self.next_refresh().is_some_and(|at| at <= now);
            return if lifecycle.obtaining {
                TokenState::Refreshing
            } else if lifecycle.failure.is_some() || overdue {
                TokenState::Expiring
            } else {
                TokenState::Valid
            };
        }
        if lifecycle.obtaining {
            return TokenState::Refreshing;
        }
        let person = self.source.login_method() != LoginMethod::Direct;
        match &lifecycle.failure {
            Some(cause) if cause.is_bad_client() => TokenState::InvalidCredentials,
            // A direct kind's grant refused for good: its fixed credentials are wrong.
            Some(cause) if cause.is_permanent() && !person => TokenState::InvalidCredentials,
            Some(ProviderError::NeedsLogin) if !person && lifecycle.logged_out => {
                TokenState::LoggedOut
            }
            Some(cause) if *cause == ProviderError::NeedsLogin || cause.is_permanent() => {
                TokenState::NeedsLogin
            }
            Some(_) if lifecycle.backoff.remaining().is_some() => TokenState::BackingOff,
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
        self.lifecycle().report.clone()
    }

    /// When the refresher may next ask the token endpoint: the refresh time, but never
    /// inside a backoff, however the failure came about (the refresher, a request, a 401).
    pub fn next_attempt(&self) -> Option<Instant> {
        let refresh = self.next_refresh()?;
        let backoff = self.lifecycle().backoff.until;
        Some(backoff.map_or(refresh, |until| refresh.max(until)))
    }

    /// When the refresher should next get a token; `None` for tokens that never change.
    pub fn next_refresh(&self) -> Option<Instant> {
        if !self.source.refreshes() {
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
