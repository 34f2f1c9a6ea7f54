//! One task per upstream that keeps its token fresh: sleep until the refresh time, get a
//! new token, and on failure retry with capped exponential backoff while the old token
//! (if still valid) keeps serving requests.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

use super::TokenCell;

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
            let Some(when) = cell.next_refresh() else {
                return;
            };
            tokio::select! {
                _ = sleep_until(when) => {}
                // A request got a new token meanwhile: recompute the refresh time.
                _ = cell.wake.notified() => continue,
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
                Err(_) => {
                    // Logged by the cell; wait before the next attempt.
                    tokio::select! {
                        _ = sleep(retry_in) => {}
                        _ = shutdown.changed() => return,
                    }
                    retry_in = (retry_in * 2).min(MAX_RETRY);
                }
            }
        }
    });
}
