//! The token lifecycle against a scripted `TokenSource`, on tokio's paused clock: single
//! flight, backoff, refresh scheduling, 401 replacement and the states, without a network
//! and without waiting.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use super::*;
use crate::credential::TokenState;
use crate::providers::{LoginMethod, ProviderError};
use crate::secret::Secret;
use crate::store::Store;

/// What the scripted source answers to its next token request.
enum Answer {
    /// A token valid this long.
    Token(Duration),
    Fail(ProviderError),
}

/// Answers token requests from a script (a token valid for an hour once it runs out),
/// each after `delay`, and counts them.
struct Scripted {
    answers: Mutex<VecDeque<Answer>>,
    calls: AtomicUsize,
    delay: Duration,
    login: LoginMethod,
    /// Until then every token request meets an outage (HTTP 503), script or not.
    down_until: Option<Instant>,
}

impl Scripted {
    fn new(answers: Vec<Answer>) -> Self {
        Scripted {
            answers: Mutex::new(answers.into()),
            calls: AtomicUsize::new(0),
            delay: Duration::from_millis(100),
            login: LoginMethod::Direct,
            down_until: None,
        }
    }
}

impl TokenSource for Scripted {
    fn obtain(
        &self,
        _previous: Option<&Credential>,
    ) -> impl Future<Output = Result<Credential, ProviderError>> + Send {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = if self.down_until.is_some_and(|until| Instant::now() < until) {
            outage()
        } else {
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Answer::Token(Duration::from_secs(3600)))
        };
        let delay = self.delay;
        async move {
            sleep(delay).await;
            match answer {
                Answer::Token(lifetime) => {
                    let now = Instant::now();
                    Ok(Credential {
                        expires_at: Some(now + lifetime),
                        ..Credential::without_expiry(
                            Secret::new(format!("token-{call}")),
                            Vec::new(),
                        )
                    })
                }
                Answer::Fail(cause) => Err(cause),
            }
        }
    }

    fn immediate_credential(&self) -> Option<Credential> {
        None
    }

    fn refreshes(&self) -> bool {
        true
    }

    fn login_method(&self) -> LoginMethod {
        self.login
    }
}

fn cell(source: Scripted) -> Arc<TokenCell<Scripted>> {
    Arc::new(TokenCell::new(
        "api",
        source,
        None,
        Arc::new(Store::memory()),
        "test".into(),
        None,
    ))
}

fn calls(cell: &TokenCell<Scripted>) -> usize {
    cell.provider().calls.load(Ordering::SeqCst)
}

fn outage() -> Answer {
    Answer::Fail(ProviderError::Status {
        status: 503,
        retry_after: None,
        error: None,
    })
}

/// HTTP 429 with a `Retry-After`.
fn rate_limited(seconds: u64) -> Answer {
    Answer::Fail(ProviderError::Status {
        status: 429,
        retry_after: Some(Duration::from_secs(seconds)),
        error: None,
    })
}

fn within(wait: Option<Duration>, low_ms: u64, high_ms: u64) -> bool {
    wait.is_some_and(|wait| {
        wait >= Duration::from_millis(low_ms) && wait <= Duration::from_millis(high_ms)
    })
}

#[tokio::test(start_paused = true)]
async fn a_hundred_callers_without_a_token_share_one_token_request() {
    let cell = cell(Scripted::new(vec![]));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let cell = Arc::clone(&cell);
            tokio::spawn(async move { cell.credential().await.unwrap() })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap());
    }
    assert_eq!(calls(&cell), 1);
    assert!(tokens.iter().all(|token| Arc::ptr_eq(token, &tokens[0])));
    assert_eq!(cell.state(), TokenState::Valid);
    assert_eq!(cell.report().requests_waited, 100);
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_and_requests_meanwhile_ask_nobody() {
    let cell = cell(Scripted::new(vec![outage(), outage(), outage()]));
    let first = cell.credential().await.unwrap_err();
    assert!(within(first.retry_after, 400, 600), "{first:?}");
    // During the backoff: the same answer at once, no token request.
    let again = cell.credential().await.unwrap_err();
    assert!(again.retry_after.is_some());
    assert_eq!(calls(&cell), 1);
    assert_eq!(cell.state(), TokenState::BackingOff);

    sleep(first.retry_after.unwrap()).await;
    let second = cell.credential().await.unwrap_err();
    assert_eq!(calls(&cell), 2);
    assert!(within(second.retry_after, 800, 1200), "{second:?}");
    sleep(second.retry_after.unwrap()).await;
    let third = cell.credential().await.unwrap_err();
    assert!(within(third.retry_after, 1600, 2400), "{third:?}");
    sleep(third.retry_after.unwrap()).await;
    assert!(cell.credential().await.is_ok());
    assert_eq!(calls(&cell), 4);
    assert_eq!(cell.state(), TokenState::Valid);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_is_never_undercut() {
    let cell = cell(Scripted::new(vec![rate_limited(30)]));
    let refused = cell.credential().await.unwrap_err();
    assert!(refused.retry_after.unwrap() >= Duration::from_secs(30));
    sleep(Duration::from_secs(29)).await;
    assert!(cell.credential().await.is_err());
    assert_eq!(calls(&cell), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_is_replaced_once_for_everyone_who_saw_it_fail() {
    let cell = cell(Scripted::new(vec![]));
    let refused = cell.credential().await.unwrap();
    let replacers: Vec<_> = (0..10)
        .map(|_| {
            let cell = Arc::clone(&cell);
            let refused = Arc::clone(&refused);
            tokio::spawn(async move { cell.replace_stale(&refused).await.unwrap() })
        })
        .collect();
    let mut fresh = Vec::new();
    for replacer in replacers {
        fresh.push(replacer.await.unwrap());
    }
    assert_eq!(calls(&cell), 2);
    assert!(fresh.iter().all(|token| Arc::ptr_eq(token, &fresh[0])));
    assert!(!Arc::ptr_eq(&fresh[0], &refused));
    assert_eq!(fresh[0].token.expose(), "token-2");
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_during_an_outage_is_never_sent_again_and_the_backoff_holds() {
    let cell = cell(Scripted::new(vec![
        Answer::Token(Duration::from_secs(3600)),
        outage(),
        outage(),
    ]));
    let refused = cell.credential().await.unwrap();
    let unavailable = cell.replace_stale(&refused).await.unwrap_err();
    assert_eq!(calls(&cell), 2);
    // The refused token is not handed out again, and nobody asks during the backoff.
    let meanwhile = cell.credential().await.unwrap_err();
    assert_eq!(meanwhile.cause, unavailable.cause);
    assert!(cell.replace_stale(&refused).await.is_err());
    assert_eq!(calls(&cell), 2);
    assert_eq!(cell.state(), TokenState::BackingOff);
    // The refused credential keeps its refresh token for the next request.
    assert!(cell
        .current()
        .is_some_and(|current| !current.is_valid_at(Instant::now())));
}

#[tokio::test(start_paused = true)]
async fn the_refresher_refreshes_at_three_quarters_of_a_short_lifetime() {
    let cell = cell(Scripted::new(vec![
        Answer::Token(Duration::from_secs(100)),
        Answer::Token(Duration::from_secs(100)),
    ]));
    cell.credential().await.unwrap();
    let obtained = Instant::now();
    let (_stop, shutdown) = watch::channel(false);
    spawn_refresher(Arc::clone(&cell), shutdown);
    // A quarter of 100 s before expiry: at 75 s.
    tokio::time::sleep_until(obtained + Duration::from_secs(74)).await;
    assert_eq!(calls(&cell), 1);
    tokio::time::sleep_until(obtained + Duration::from_secs(76)).await;
    assert_eq!(calls(&cell), 2);
    assert_eq!(cell.state(), TokenState::Valid);
}

#[tokio::test(start_paused = true)]
async fn the_refresher_waits_out_a_backoff_that_a_request_started() {
    let cell = cell(Scripted::new(vec![
        Answer::Token(Duration::from_secs(3600)),
        outage(),
    ]));
    let refused = cell.credential().await.unwrap();
    let (_stop, shutdown) = watch::channel(false);
    spawn_refresher(Arc::clone(&cell), shutdown);
    // The refresher is parked until the token's refresh time when the 401 comes.
    sleep(Duration::from_millis(10)).await;
    let unavailable = cell.replace_stale(&refused).await.unwrap_err();
    let backoff = unavailable.retry_after.unwrap();
    // The refresher, woken by that failure, leaves the endpoint alone until the backoff ends.
    sleep(backoff - Duration::from_millis(50)).await;
    assert_eq!(calls(&cell), 2);
    sleep(Duration::from_millis(300)).await;
    assert_eq!(calls(&cell), 3);
    assert_eq!(cell.state(), TokenState::Valid);
}

#[tokio::test(start_paused = true)]
async fn logout_of_a_kind_without_a_person_is_logged_out_until_the_next_request() {
    let cell = cell(Scripted::new(vec![]));
    cell.credential().await.unwrap();
    assert!(cell.forget().await.is_some());
    assert_eq!(cell.state(), TokenState::LoggedOut);
    cell.credential().await.unwrap();
    assert_eq!(cell.state(), TokenState::Valid);
    assert_eq!(calls(&cell), 2);
}

#[tokio::test(start_paused = true)]
async fn a_person_kind_needs_a_login_and_a_refused_client_is_invalid_credentials() {
    let mut source = Scripted::new(vec![Answer::Fail(ProviderError::NeedsLogin)]);
    source.login = LoginMethod::DeviceCode;
    let person = cell(source);
    assert_eq!(person.state(), TokenState::NeedsLogin);
    assert_eq!(
        person.credential().await.unwrap_err().cause,
        ProviderError::NeedsLogin
    );
    assert_eq!(person.state(), TokenState::NeedsLogin);
    assert_eq!(
        person.report().failures,
        0,
        "waiting for a person is no failure"
    );

    let refused = cell(Scripted::new(vec![Answer::Fail(ProviderError::OAuth {
        error: "invalid_client".into(),
        description: None,
    })]));
    let unavailable = refused.credential().await.unwrap_err();
    assert_eq!(unavailable.retry_after, None);
    assert_eq!(refused.state(), TokenState::InvalidCredentials);
    // Permanent: no retry until the config changes or someone asks for a refresh.
    assert!(refused.credential().await.is_err());
    assert_eq!(calls(&refused), 1);
    assert!(refused
        .report()
        .last_error
        .unwrap()
        .contains("upstreams.api.auth"));
}

#[tokio::test(start_paused = true)]
async fn a_login_installs_its_credential_and_clears_the_failure() {
    let mut source = Scripted::new(vec![Answer::Fail(ProviderError::LoginExpired)]);
    source.login = LoginMethod::DeviceCode;
    let cell = cell(source);
    assert!(cell.credential().await.is_err());
    assert_eq!(cell.state(), TokenState::NeedsLogin);
    let now = Instant::now();
    cell.install(Credential {
        expires_at: Some(now + Duration::from_secs(600)),
        ..Credential::without_expiry(Secret::new("logged-in"), Vec::new())
    })
    .await;
    assert_eq!(cell.state(), TokenState::Valid);
    assert_eq!(cell.credential().await.unwrap().token.expose(), "logged-in");
    assert_eq!(cell.report().last_error, None);
}

/// Asks `cell` for a credential every 20 ms for `period`, as a steady client would;
/// returns the outcomes.
async fn steady_requests(
    cell: &TokenCell<Scripted>,
    period: Duration,
) -> Vec<Result<Arc<Credential>, TokenUnavailable>> {
    let end = Instant::now() + period;
    let mut outcomes = Vec::new();
    while Instant::now() < end {
        outcomes.push(cell.credential().await);
        sleep(Duration::from_millis(20)).await;
    }
    outcomes
}

#[tokio::test(start_paused = true)]
async fn two_second_tokens_under_steady_requests_are_refreshed_before_expiry() {
    let cell = cell(Scripted::new(
        (0..20)
            .map(|_| Answer::Token(Duration::from_secs(2)))
            .collect(),
    ));
    cell.credential().await.unwrap();
    let (_stop, shutdown) = watch::channel(false);
    spawn_refresher(Arc::clone(&cell), shutdown);
    let outcomes = steady_requests(&cell, Duration::from_secs(10)).await;
    assert!(outcomes.len() > 400, "{} requests", outcomes.len());
    assert!(outcomes.iter().all(Result::is_ok), "a request met no token");
    // Only the first request waited: the refresher kept ahead of every expiry.
    assert_eq!(cell.report().requests_waited, 1);
    // A refresh 1.5 s into each 2-second lifetime (plus the 100 ms answer): 6 in 10 s.
    assert_eq!(calls(&cell), 1 + 6);
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_asked_about_at_the_backoffs_pace_and_recovery_needs_no_request() {
    let mut source = Scripted::new(vec![]);
    source.down_until = Some(Instant::now() + Duration::from_secs(10));
    let cell = cell(source);
    let (_stop, shutdown) = watch::channel(false);
    spawn_refresher(Arc::clone(&cell), shutdown);
    let outcomes = steady_requests(&cell, Duration::from_secs(10)).await;
    assert!(outcomes.len() > 400, "{} requests", outcomes.len());
    for outcome in &outcomes {
        let unavailable = outcome.as_ref().unwrap_err();
        assert!(unavailable.retry_after.is_some(), "{unavailable:?}");
    }
    // Backoff 0.5 s, 1 s, 2 s, 4 s (±20 %) after each failure: 4 or 5 requests in 10 s
    // (one per request would be 500).
    assert!(
        (4..=5).contains(&calls(&cell)),
        "{} token requests",
        calls(&cell)
    );
    assert_eq!(cell.state(), TokenState::BackingOff);
    // The endpoint is back: the refresher gets a token when the backoff ends (8 s ±20 %
    // at most), with nobody asking.
    let asked = calls(&cell);
    sleep(Duration::from_secs(10)).await;
    assert_eq!(cell.state(), TokenState::Valid);
    assert_eq!(calls(&cell), asked + 1);
}

#[tokio::test(start_paused = true)]
async fn the_refresher_honours_a_retry_after_longer_than_the_backoff() {
    let cell = cell(Scripted::new(vec![rate_limited(3)]));
    let (_stop, shutdown) = watch::channel(false);
    spawn_refresher(Arc::clone(&cell), shutdown);
    let refused = cell.credential().await.unwrap_err();
    assert!(refused.retry_after.unwrap() >= Duration::from_secs(3) - Duration::from_millis(100));
    sleep(Duration::from_millis(2800)).await;
    assert_eq!(calls(&cell), 1, "asked again within the Retry-After");
    sleep(Duration::from_millis(400)).await;
    assert_eq!(calls(&cell), 2);
    assert_eq!(cell.state(), TokenState::Valid);
}
