//! One task per upstream that keeps its token fresh: sleep until the refresh time, get a
//! new token, and on failure retry with capped exponential backoff while the old token
//! (if still valid) keeps serving requests.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::{TokenCell, TokenSource};
use crate::providers::ProviderError;

/// Starts the refresher of `cell`, if its tokens ever change. It stops when `shutdown`
/// turns true.
pub fn spawn_refresher<S: TokenSource>(
    cell: Arc<TokenCell<S>>,
    mut shutdown: watch::Receiver<bool>,
) {
    if !cell.provider().refreshes() {
        return;
    }
    tokio::spawn(async move {
        loop {
            if cell.is_retired() {
                return;
            }
            // Logged out, or never logged in: nothing to refresh until a login (or a
            // request, for kinds that need no user) brings a token.
            if cell.current().is_none() && cell.needs_login() {
                if !wait_for_login(&cell, &mut shutdown).await {
                    return;
                }
                continue;
            }
            let Some(when) = cell.next_attempt() else {
                return;
            };
            tokio::select! {
                _ = sleep_until(when) => {}
                // A request got a new token meanwhile: recompute the refresh time.
                _ = cell.changed() => continue,
                _ = shutdown.changed() => return,
            }
            if cell
                .next_attempt()
                .is_some_and(|when| when > Instant::now())
            {
                continue;
            }
            match cell.refresh().await {
                Ok(_) => {}
                Err(unavailable) if unavailable.cause == ProviderError::NeedsLogin => {
                    if !wait_for_login(&cell, &mut shutdown).await {
                        return;
                    }
                }
                Err(_) => {
                    // Logged by the cell, which also set the backoff; a permanent failure
                    // waits for a login.
                    let Some(retry_at) = cell.retry_at() else {
                        if !wait_for_login(&cell, &mut shutdown).await {
                            return;
                        }
                        continue;
                    };
                    tokio::select! {
                        _ = sleep_until(retry_at) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    });
}

/// Waits while the cell needs a login (or failed for good). False when shutting down. Listens before looking, so
/// a login that completes in between is not missed.
async fn wait_for_login<S: TokenSource>(
    cell: &TokenCell<S>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let login = cell.wake().notified();
    tokio::pin!(login);
    login.as_mut().enable();
    if cell.needs_login() || cell.retry_at().is_none() {
        tokio::select! {
            _ = login => {}
            _ = shutdown.changed() => return false,
        }
    }
    true
}
