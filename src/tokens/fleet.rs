//! A token cell in a fleet: its tokens live in Redis, shared by every replica, and only
//! the replica holding the upstream's lease calls the token endpoint.
//!
//! - A token request (the refresher's, a request that found no valid token, a 401) first
//!   reads the entry: a newer token than ours is adopted without asking the vendor.
//! - Otherwise the lease decides: its holder refreshes with the newest refresh token and
//!   writes the result by compare-and-set; everyone else asks the holder (after a 401) and
//!   waits for the `changed` message, re-reading and trying the lease meanwhile, so a dead
//!   holder is replaced once its lease expires.
//! - A background task per cell follows the fleet: adopts every newer entry it hears of (or
//!   finds in the periodic re-read), renews or takes the lease, and serves `wanted` messages
//!   when this replica holds it.
//! - Redis unreachable: the held token serves until it expires. Kinds whose tokens are
//!   independent of each other may fetch locally (`when_redis_down`); such a token is never
//!   written to Redis. Rotating refresh tokens are never used without Redis.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::{TokenCell, TokenSource, TokenUnavailable};
use crate::credential::{Credential, Injection};
use crate::fleet::{Entry, Event, Fleet, FleetError, Lease, WhenRedisDown, Written};
use crate::providers::{LoginMethod, ProviderError};
use crate::store::{restore, stored, StoredToken};

/// A cell's tie to the fleet.
pub struct FleetLink {
    pub(super) fleet: Arc<Fleet>,
    injection: Injection,
    when_down: WhenRedisDown,
    /// The entry version our credential came from (0: none, or fetched locally).
    version: AtomicU64,
    lease: Mutex<Lease>,
    pub lease_changes: AtomicU64,
    /// Token requests this replica made as the lease holder.
    pub fleet_refreshes: AtomicU64,
    /// A follower task renews the lease; without one (a one-shot command) the lease is
    /// let go right after use.
    followed: AtomicBool,
}

/// The fleet part of `/-/status`.
#[derive(Debug, Clone)]
pub struct FleetView {
    pub holder: String,
    pub generation: u64,
    pub this_replica: bool,
    pub version: u64,
    pub when_redis_down: WhenRedisDown,
}

impl FleetLink {
    pub fn new(fleet: Arc<Fleet>, injection: Injection, when_down: WhenRedisDown) -> FleetLink {
        FleetLink {
            fleet,
            injection,
            when_down,
            version: AtomicU64::new(0),
            lease: Mutex::default(),
            lease_changes: AtomicU64::new(0),
            fleet_refreshes: AtomicU64::new(0),
            followed: AtomicBool::new(false),
        }
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn lease(&self) -> Lease {
        self.lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn saw_lease(&self, lease: &Lease) {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = lease.clone();
        if lease.acquired {
            self.lease_changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn reachable(&self) -> bool {
        self.fleet.reachable()
    }

    pub fn redis_errors(&self) -> u64 {
        self.fleet.metrics.redis_errors.load(Ordering::Relaxed)
    }

    pub fn view(&self) -> FleetView {
        let lease = self.lease();
        FleetView {
            holder: lease.holder,
            generation: lease.generation,
            this_replica: lease.mine,
            version: self.version(),
            when_redis_down: self.when_down,
        }
    }
}

/// How long a replica waits for the lease holder's new token before answering 503.
fn follow_limit(fleet: &Fleet) -> Duration {
    fleet.lease_ttl + Duration::from_secs(15)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// How often a waiting replica looks again (a lost message, a lease that expired).
const FOLLOW_POLL: Duration = Duration::from_millis(500);

impl<S: TokenSource> TokenCell<S> {
    fn link(&self) -> &FleetLink {
        self.fleet
            .as_ref()
            .expect("only called for cells in a fleet")
    }

    /// The credential sealed in `entry`; `None` if it holds none (or cannot be opened,
    /// which is logged: another fleet's key, or another config).
    fn entry_credential(&self, entry: &Entry) -> Option<Credential> {
        let link = self.link();
        let sealed = entry.sealed.as_deref()?;
        let opened = link
            .fleet
            .open(sealed, &self.upstream, &self.fingerprint)
            .and_then(|plain| {
                serde_json::from_slice::<StoredToken>(&plain)
                    .map_err(|error| FleetError::Redis(format!("unreadable entry: {error}")))
            });
        match opened {
            Ok(stored) => restore(&stored, &link.injection),
            Err(error) => {
                tracing::warn!(upstream = %self.upstream, error = %error, "ignoring the fleet's entry");
                None
            }
        }
    }

    /// A credential as the fleet's entries hold it: the store's form, sealed to this
    /// fleet, upstream and auth settings.
    fn seal_credential(&self, credential: &Credential) -> String {
        let plain = serde_json::to_vec(&stored(&self.fingerprint, credential))
            .expect("a stored token serializes");
        self.link()
            .fleet
            .seal(&plain, &self.upstream, &self.fingerprint)
    }

    /// Makes the entry's token current, if it is newer than ours. A logout's entry forgets
    /// ours. Returns the adopted credential.
    fn adopt(&self, entry: &Entry) -> Option<Arc<Credential>> {
        let link = self.link();
        if entry.version <= link.version() {
            return None;
        }
        link.version.store(entry.version, Ordering::Release);
        let Some(credential) = self.entry_credential(entry) else {
            if entry.sealed.is_none() && self.current.load().is_some() {
                tracing::info!(upstream = %self.upstream, writer = %entry.writer, "logged out in the fleet");
                self.current.store(None);
                self.lifecycle().logged_out();
                self.announce_change();
            }
            return None;
        };
        if !credential.is_valid_at(Instant::now()) && self.valid_now().is_some() {
            // Ours (fetched while Redis was away) still serves; the entry's refresh token
            // is used at the next refresh.
            return None;
        }
        let credential = Arc::new(credential);
        self.current.store(Some(Arc::clone(&credential)));
        self.lifecycle().succeeded();
        tracing::debug!(upstream = %self.upstream, version = entry.version, writer = %entry.writer, "token from the fleet");
        self.announce_change();
        Some(credential)
    }

    fn announce_change(&self) {
        self.finished.fetch_add(1, Ordering::Release);
        self.wake.notify_waiters();
    }

    /// A token request in a fleet. The caller holds the flight lock.
    pub(super) async fn fetch_in_fleet(&self) -> Result<Arc<Credential>, TokenUnavailable> {
        let link = self.link();
        let started = Instant::now();
        let deadline = started + follow_limit(&link.fleet);
        let mut asked = false;
        loop {
            let entry = match link.fleet.read(&self.upstream).await {
                Ok(entry) => entry,
                Err(error) => return self.without_redis(error).await,
            };
            if self.restore_lost(&entry).await {
                continue;
            }
            if let Some(adopted) = self.adopt(&entry) {
                if adopted.is_valid_at(Instant::now()) && !self.refresh_due() {
                    return Ok(adopted);
                }
            }
            if entry.sealed.is_none() && self.source.login_method() != LoginMethod::Direct {
                // Nobody in the fleet is logged in (or the vendor ended the login): only a
                // person helps, on any replica; no replica asks the vendor.
                let cause = ProviderError::NeedsLogin;
                let retry_after = self.record_failure(&cause);
                return Err(TokenUnavailable { cause, retry_after });
            }
            let lease = match link.fleet.lease(&self.upstream).await {
                Ok(lease) => lease,
                Err(error) => return self.without_redis(error).await,
            };
            link.saw_lease(&lease);
            if lease.mine {
                match self.refresh_as_holder(&entry, lease.generation).await? {
                    Some(credential) => return Ok(credential),
                    // Someone wrote first: read again.
                    None => continue,
                }
            }
            let current = self.current.load_full();
            if let Some(current) = current.as_ref().filter(|c| c.is_valid_at(Instant::now())) {
                // Ours still serves; the holder refreshes it in time.
                if self.refresh_due() && Instant::now() < deadline.min(started + FOLLOW_POLL * 4) {
                    self.wait_for_change(link, FOLLOW_POLL).await;
                    continue;
                }
                return Ok(Arc::clone(current));
            }
            if let Some(unavailable) = self.holder_failure(&entry) {
                return Err(unavailable);
            }
            if !asked {
                // The vendor refused ours, or it expired: the holder replaces it once for all.
                let _ = link.fleet.want(&self.upstream, entry.version).await;
                asked = true;
            }
            if Instant::now() >= deadline {
                let cause = ProviderError::Fleet(format!(
                    "no new token from the fleet within {}s; {} refreshes it (its status shows why not)",
                    follow_limit(&link.fleet).as_secs(),
                    lease.holder,
                ));
                let retry_after = self.record_failure(&cause);
                return Err(TokenUnavailable { cause, retry_after });
            }
            self.wait_for_change(link, FOLLOW_POLL).await;
        }
    }

    /// The refresh time of the current credential has come.
    fn refresh_due(&self) -> bool {
        self.next_refresh().is_some_and(|at| at <= Instant::now())
    }

    /// Waits for a `changed` message of this upstream, at most `limit`.
    async fn wait_for_change(&self, link: &FleetLink, limit: Duration) {
        let mut events = link.fleet.events();
        let upstream = self.upstream.as_str();
        let _ = tokio::time::timeout(limit, async {
            loop {
                match events.recv().await {
                    Ok(
                        Event::Changed { upstream: name, .. }
                        | Event::Failed { upstream: name, .. },
                    ) if name == upstream => return,
                    Ok(Event::Reconnected) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        })
        .await;
    }

    /// As the lease holder: one token request with the newest refresh token, written by
    /// compare-and-set. `None` if another write got there first.
    async fn refresh_as_holder(
        &self,
        entry: &Entry,
        generation: u64,
    ) -> Result<Option<Arc<Credential>>, TokenUnavailable> {
        let link = self.link();
        let newest = self
            .entry_credential(entry)
            .or_else(|| self.current.load_full().map(|c| (*c).clone()));
        link.fleet_refreshes.fetch_add(1, Ordering::Relaxed);
        let credential = self.request_token(newest.as_ref()).await;
        if !link.followed.load(Ordering::Relaxed) {
            let _ = link.fleet.release(&self.upstream).await;
        }
        let credential = match credential {
            Ok(credential) => credential,
            Err(unavailable) => {
                let dead_refresh_token = unavailable.cause == ProviderError::NeedsLogin
                    && newest.as_ref().is_some_and(|c| c.refresh_token.is_some());
                if dead_refresh_token {
                    // The vendor refused the fleet's refresh token: every replica needs a
                    // login, and nobody sends that refresh token again.
                    if let Ok(Written::Stored(version)) = link
                        .fleet
                        .write(&self.upstream, entry.version, generation, "")
                        .await
                    {
                        link.version.store(version, Ordering::Release);
                    }
                } else {
                    self.publish_failure(entry.version, &unavailable).await;
                }
                return Err(unavailable);
            }
        };
        let sealed = self.seal_credential(&credential);
        match link
            .fleet
            .write(&self.upstream, entry.version, generation, &sealed)
            .await
        {
            Ok(Written::Stored(version)) => {
                link.version.store(version, Ordering::Release);
                Ok(Some(self.put(credential).await))
            }
            Ok(Written::Superseded(version)) => {
                tracing::warn!(upstream = %self.upstream, read = entry.version, now = version, "a newer token was written meanwhile; using it, not ours");
                Ok(None)
            }
            Err(error) => {
                // The vendor may have spent the old refresh token: ours is the only live
                // one. Use it; the next write carries it to the fleet.
                tracing::error!(upstream = %self.upstream, error = %error, "could not write the new token to redis");
                Ok(Some(self.put(credential).await))
            }
        }
    }

    /// Redis has an older version than our token came from: it lost writes (a restart
    /// without persistence, a failover). Ours is newer, and may hold the only live refresh
    /// token: put it back above every version seen. True if something was written (by us,
    /// or by a replica with a newer one): read again.
    async fn restore_lost(&self, entry: &Entry) -> bool {
        let link = self.link();
        let ours = link.version();
        if entry.version >= ours {
            return false;
        }
        let Some(current) = self.current.load_full() else {
            return false;
        };
        let sealed = self.seal_credential(&current);
        match link
            .fleet
            .restore(&self.upstream, entry.version, ours + 1, &sealed)
            .await
        {
            Ok(Written::Stored(version)) => {
                tracing::warn!(upstream = %self.upstream, redis_had = entry.version, restored = version, "redis had lost the newest token; wrote ours back");
                link.version.store(version, Ordering::Release);
                true
            }
            Ok(Written::Superseded(_)) => true,
            Err(_) => false,
        }
    }

    /// Tells the replicas waiting for this refresh why it failed and when asking again
    /// may help, so they answer at once instead of waiting out `follow_limit`.
    async fn publish_failure(&self, version: u64, unavailable: &TokenUnavailable) {
        let link = self.link();
        // Permanent failures (a refused client) wait for a person: a minute between asks.
        let wait = unavailable.retry_after.unwrap_or(Duration::from_secs(60));
        let retry_at = unix_now() + wait.as_secs_f64();
        let reason = unavailable.cause.to_string();
        let sealed = link
            .fleet
            .seal(reason.as_bytes(), &self.upstream, &self.fingerprint);
        if let Err(error) = link
            .fleet
            .fail(&self.upstream, version, &sealed, retry_at)
            .await
        {
            tracing::debug!(upstream = %self.upstream, error = %error, "could not tell the fleet about the failed refresh");
        }
    }

    /// The holder's failed refresh of `entry`'s token, while asking again would not help.
    fn holder_failure(&self, entry: &Entry) -> Option<TokenUnavailable> {
        let failure = entry
            .failure
            .as_ref()
            .filter(|f| f.version == entry.version)?;
        let wait = failure.retry_at_unix - unix_now();
        if wait <= 0.0 {
            return None;
        }
        let reason = self
            .link()
            .fleet
            .open(&failure.sealed_reason, &self.upstream, &self.fingerprint)
            .ok()
            .and_then(|plain| String::from_utf8(plain).ok())
            .unwrap_or_else(|| "(unreadable)".into());
        let cause = ProviderError::Fleet(format!(
            "the lease holder {} could not refresh the token: {reason}",
            failure.holder
        ));
        self.record_failure(&cause);
        Some(TokenUnavailable {
            cause,
            retry_after: Some(Duration::from_secs_f64(wait.ceil())),
        })
    }

    /// Redis did not answer.
    async fn without_redis(&self, error: FleetError) -> Result<Arc<Credential>, TokenUnavailable> {
        let link = self.link();
        if link.when_down == WhenRedisDown::FetchLocally {
            // A token of our own, from the kind's grant, not the shared refresh token; it is
            // never written to the fleet.
            let credential = self.request_token(None).await?;
            link.version.store(0, Ordering::Release);
            let credential = Arc::new(credential);
            self.current.store(Some(Arc::clone(&credential)));
            self.lifecycle().succeeded();
            return Ok(credential);
        }
        if let Some(current) = self.valid_now() {
            // Recorded, so the refresher backs off instead of asking Redis in a loop;
            // requests keep getting the held token while it is valid.
            self.record_failure(&ProviderError::Fleet(error.to_string()));
            return Ok(current);
        }
        let cause = ProviderError::Fleet(format!(
            "{error}; this upstream's tokens are refreshed only through the fleet (when_redis_down = \"keep_held_token\")"
        ));
        let retry_after = self.record_failure(&cause);
        Err(TokenUnavailable { cause, retry_after })
    }

    /// After a login: the new token is the fleet's newest, whatever was there.
    pub(super) async fn publish_login(&self, credential: &Credential) {
        let link = self.link();
        let sealed = self.seal_credential(credential);
        match link.fleet.overwrite(&self.upstream, Some(&sealed)).await {
            Ok(version) => link.version.store(version, Ordering::Release),
            Err(error) => {
                tracing::error!(upstream = %self.upstream, error = %error, "the login could not be written to redis; only this replica has it")
            }
        }
    }

    /// After a logout: every replica forgets.
    pub(super) async fn publish_logout(&self) {
        let link = self.link();
        match link.fleet.overwrite(&self.upstream, None).await {
            Ok(version) => link.version.store(version, Ordering::Release),
            Err(error) => {
                tracing::error!(upstream = %self.upstream, error = %error, "the logout could not be written to redis; other replicas keep the token")
            }
        }
    }
}

/// Follows the fleet for one cell until shutdown or retirement: adopts newer entries,
/// keeps or takes the lease, serves `wanted` messages as the holder.
pub fn spawn_follower<S: TokenSource>(
    cell: Arc<TokenCell<S>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(link) = cell.fleet.as_ref() else {
        return;
    };
    link.followed.store(true, Ordering::Relaxed);
    let fleet = Arc::clone(&link.fleet);
    let mut events = fleet.events();
    tokio::spawn(async move {
        let mut lease_tick = tokio::time::interval(fleet.lease_ttl / 3);
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reread = tokio::time::interval(fleet.reread_interval);
        reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if cell.is_retired() {
                return;
            }
            tokio::select! {
                _ = lease_tick.tick() => {
                    if cell.source.refreshes() {
                        cell.keep_lease().await;
                    }
                }
                _ = reread.tick() => cell.follow().await,
                event = events.recv() => match event {
                    Ok(Event::Changed { upstream, version }) if upstream == cell.upstream
                        && version > cell.link().version() => cell.follow().await,
                    Ok(Event::Wanted { upstream, version }) if upstream == cell.upstream => {
                        cell.serve_want(version).await
                    }
                    Ok(Event::Reconnected) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        cell.follow().await
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                    Ok(_) => {}
                },
                _ = shutdown.changed() => {
                    // Hand the lease over at once instead of after its expiry.
                    if cell.link().lease().mine {
                        let _ = fleet.release(&cell.upstream).await;
                    }
                    return;
                }
            }
        }
    });
}

impl<S: TokenSource> TokenCell<S> {
    /// Reads the entry and adopts it if it is newer.
    async fn follow(&self) {
        let Ok(entry) = self.link().fleet.read(&self.upstream).await else {
            return;
        };
        if self.restore_lost(&entry).await {
            return;
        }
        // Never in the middle of our own token request, which reads the entry itself; and
        // never waiting for one, which would hold up the lease renewals of this task.
        if entry.version > self.link().version() {
            if let Ok(_flight) = self.flight.try_lock() {
                self.adopt(&entry);
            }
        }
    }

    async fn keep_lease(&self) {
        let link = self.link();
        match link.fleet.lease(&self.upstream).await {
            Ok(lease) => {
                let before = link.lease();
                if lease.acquired {
                    tracing::info!(upstream = %self.upstream, generation = lease.generation, "this replica now refreshes the fleet's token");
                } else if before.mine && !lease.mine {
                    tracing::warn!(upstream = %self.upstream, holder = %lease.holder, "lost the fleet lease");
                }
                link.saw_lease(&lease);
            }
            Err(error) => {
                tracing::debug!(upstream = %self.upstream, error = %error, "cannot renew the fleet lease");
            }
        }
    }

    /// Another replica's request got a 401 with the token of `version`: as the holder,
    /// replace it (once: a later `wanted` for the same version finds it replaced).
    async fn serve_want(&self, version: u64) {
        let link = self.link();
        if !link.lease().mine || version < link.version() {
            return;
        }
        if let Some(current) = self.current.load_full() {
            if link.version() == version {
                let _ = self.replace_stale(&current).await;
            }
        } else {
            let _ = self.refresh().await;
        }
    }
}
