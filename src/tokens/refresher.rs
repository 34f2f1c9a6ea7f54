//! One task per upstream that keeps its token fresh: sleep until the refresh time, get a
//! new token, and on failure retry with capped exponential backoff while the old token
//! (if still valid) keeps serving requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

use super::TokenCell;
use crate::providers::ProviderError;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Starts the refresher of `cell`, if its tokens ever change. It stops when `shutdown`
/// turns true.
pub fn spawn_refresher(cell: Arc<TokenCell>, mut shutdown: watch::Receiver<bool>) {
    if !cell.provider().refreshes() {
        return;
    }
    tokio::spawn(async move {
        let mut retry_in = FIRST_RETRY;
        loop {
            // Logged out, or never logged in: nothing to refresh until a login (or a
            // request, for kinds that need no user) brings a token.
            if cell.current().is_none() && cell.needs_login() {
                if !wait_for_login(&cell, &mut shutdown).await {
                    return;
                }
                continue;
            }
            let Some(when) = cell.next_refresh() else {
                return;
            };
            tokio::select! {
                _ = sleep_until(when) => {}
                // A request got a new token meanwhile: recompute the refresh time.
                _ = cell.changed() => continue,
                _ = shutdown.changed() => return,
            }
            if cell
                .next_refresh()
                .is_some_and(|when| when > Instant::now())
            {
                continue;
            }
            match cell.refresh().await {
                Ok(_) => retry_in = FIRST_RETRY,
                Err(unavailable) if unavailable.cause == ProviderError::NeedsLogin => {
                    if !wait_for_login(&cell, &mut shutdown).await {
                        return;
                    }
                }
                Err(unavailable) => {
                    // Logged by the cell. Wait before the next attempt, at least as long as
                    // the server asked (429/503 `Retry-After`).
                    let wait = unavailable
                        .cause
                        .retry_after()
                        .map_or(retry_in, |asked| asked.max(retry_in));
                    tokio::select! {
                        _ = sleep(wait) => {}
                        _ = shutdown.changed() => return,
                    }
                    retry_in = (retry_in * 2).min(MAX_RETRY);
                }
            }
        }
    });
}

/// Waits while the cell needs a login. False when shutting down. Listens before looking, so
/// a login that completes in between is not missed.
async fn wait_for_login(cell: &TokenCell, shutdown: &mut watch::Receiver<bool>) -> bool {
    let login = cell.wake.notified();
    tokio::pin!(login);
    login.as_mut().enable();
    if cell.needs_login() {
        tokio::select! {
            _ = login => {}
            _ = shutdown.changed() => return false,
        }
    }
    true
}
