//! The device authorization grant (RFC 8628): ask for a device code, show the user where to
//! approve it, and poll the token endpoint until they do, deny, or the code expires.

use std::future::Future;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::{sleep_until, Instant};

use crate::secret::Secret;
use crate::transport::TOKEN_REQUEST_TIMEOUT;

use super::oauth::{TokenEndpoint, TokenSet};
use super::ProviderError;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// RFC 8628 3.5: after `slow_down`, the interval grows by 5 seconds from then on.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// What the user needs to approve a login, and what the poller needs to finish it.
pub struct DeviceAuthorization {
    pub device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
    pub issued_at: Instant,
}

#[derive(Deserialize)]
struct DeviceAnswer {
    device_code: String,
    user_code: String,
    #[serde(alias = "verification_url")]
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: u64,
    interval: Option<u64>,
}

/// Requests a device code (RFC 8628 3.1).
pub async fn authorize(
    endpoint: &TokenEndpoint,
    device_authorization_url: &str,
) -> Result<DeviceAuthorization, ProviderError> {
    let spec = endpoint.spec();
    let mut params = Vec::new();
    if !spec.scope.is_empty() {
        params.push(("scope", spec.scope.join(" ")));
    }
    if let Some(audience) = &spec.audience {
        params.push(("audience", audience.clone()));
    }
    let request = endpoint.form_request(device_authorization_url, params)?;
    let issued_at = Instant::now();
    let response = endpoint
        .transport()
        .send_buffered(request, TOKEN_REQUEST_TIMEOUT)
        .await?;
    if !response.status().is_success() {
        return Err(super::error_answer(&response));
    }
    let answer: DeviceAnswer = serde_json::from_slice(response.body()).map_err(|error| {
        ProviderError::Malformed(format!(
            "device authorization answer: {:?} error at line {} column {}",
            error.classify(),
            error.line(),
            error.column()
        ))
    })?;
    Ok(DeviceAuthorization {
        device_code: Secret::new(answer.device_code),
        user_code: answer.user_code,
        verification_uri: answer.verification_uri,
        verification_uri_complete: answer.verification_uri_complete,
        expires_in: Duration::from_secs(answer.expires_in),
        interval: Duration::from_secs(answer.interval.unwrap_or(5).max(1)),
        issued_at,
    })
}

/// Polls until the user approves (the tokens), denies (`LoginDenied`) or the code
/// expires (`LoginExpired`). Network trouble while polling is retried until the code
/// expires: the user may still be approving.
pub async fn poll(
    endpoint: &TokenEndpoint,
    authorization: &DeviceAuthorization,
) -> Result<TokenSet, ProviderError> {
    let deadline = authorization.issued_at + authorization.expires_in;
    poll_until(deadline, authorization.interval, || async {
        let request = endpoint.form_request(
            &endpoint.spec().token_url,
            vec![
                ("grant_type", DEVICE_GRANT.to_owned()),
                ("device_code", authorization.device_code.expose().to_owned()),
            ],
        )?;
        match endpoint
            .transport()
            .send_buffered(request, TOKEN_REQUEST_TIMEOUT)
            .await
        {
            Ok(response) => Ok(Some(response)),
            Err(error) => {
                tracing::debug!(error = %error, "device poll failed; polling on");
                Ok(None)
            }
        }
    })
    .await
}

/// The schedule of RFC 8628 3.5 around `poll_once`, which sends one poll and returns its
/// answer (`None`: no answer, poll on). The error codes count whatever status they come
/// with: RFC 8628 says 400, Auth0 sends `slow_down` as 429 and pending as 403. The seam
/// lets the unit tests script the answers on a paused clock.
async fn poll_until<F, Answer>(
    deadline: Instant,
    mut interval: Duration,
    mut poll_once: F,
) -> Result<TokenSet, ProviderError>
where
    F: FnMut() -> Answer,
    Answer: Future<Output = Result<Option<http::Response<Vec<u8>>>, ProviderError>>,
{
    loop {
        // The last wait ends at the deadline, so an expired code is reported when it expires.
        sleep_until((Instant::now() + interval).min(deadline)).await;
        if Instant::now() >= deadline {
            return Err(ProviderError::LoginExpired);
        }
        let sent_at = Instant::now();
        let Some(response) = poll_once().await? else {
            continue;
        };
        if response.status().is_success() {
            return super::parse_token_json(response.body(), sent_at);
        }
        let refused = super::error_answer(&response);
        match refused.oauth_code() {
            Some("authorization_pending") => {}
            Some("slow_down") => {
                interval += SLOW_DOWN_STEP;
                tracing::debug!(?interval, "token endpoint asked to slow down");
            }
            Some("expired_token") => return Err(ProviderError::LoginExpired),
            Some("access_denied") => return Err(ProviderError::LoginDenied),
            // An outage or a rate limit without a code: the user may still approve.
            _ if matches!(refused, ProviderError::Status { .. }) => {}
            _ => return Err(refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use http::StatusCode;

    use super::*;

    /// One scripted poll answer: a status and an OAuth `error`, a token, or no answer.
    fn refused(status: StatusCode, error: &str) -> Option<http::Response<Vec<u8>>> {
        let body = serde_json::json!({ "error": error }).to_string();
        Some(
            http::Response::builder()
                .status(status)
                .body(body.into_bytes())
                .unwrap(),
        )
    }

    fn token() -> Option<http::Response<Vec<u8>>> {
        let body = r#"{"access_token":"device-token","token_type":"Bearer","expires_in":600}"#;
        Some(http::Response::new(body.as_bytes().to_vec()))
    }

    fn pending() -> Option<http::Response<Vec<u8>>> {
        refused(StatusCode::BAD_REQUEST, "authorization_pending")
    }

    /// Polls a code issued now, valid `expires_in`, with interval `interval`, answering
    /// from `script` (pending once it runs out). Returns the outcome and how long after
    /// the start each poll came.
    async fn run(
        interval: u64,
        expires_in: u64,
        script: Vec<Option<http::Response<Vec<u8>>>>,
    ) -> (Result<TokenSet, ProviderError>, Vec<Duration>, Duration) {
        let started = Instant::now();
        let script = Mutex::new(VecDeque::from(script));
        let polls = Mutex::new(Vec::new());
        let outcome = poll_until(
            started + Duration::from_secs(expires_in),
            Duration::from_secs(interval),
            || {
                polls.lock().unwrap().push(started.elapsed());
                let answer = script.lock().unwrap().pop_front().unwrap_or_else(pending);
                async move { Ok(answer) }
            },
        )
        .await;
        let polls = polls.into_inner().unwrap();
        (outcome, polls, started.elapsed())
    }

    fn seconds(polls: &[Duration]) -> Vec<u64> {
        polls.iter().map(Duration::as_secs).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn polls_at_the_interval_until_approved() {
        let (outcome, polls, _) = run(5, 600, vec![pending(), pending(), token()]).await;
        assert_eq!(outcome.unwrap().access_token.expose(), "device-token");
        assert_eq!(polls, [5, 10, 15].map(Duration::from_secs));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_down_adds_five_seconds_from_then_on_whatever_its_status() {
        // RFC 8628 sends it as 400, Auth0 as 429.
        for status in [StatusCode::BAD_REQUEST, StatusCode::TOO_MANY_REQUESTS] {
            let script = vec![
                pending(),
                refused(status, "slow_down"),
                pending(),
                refused(status, "slow_down"),
                token(),
            ];
            let (outcome, polls, _) = run(1, 600, script).await;
            assert!(outcome.is_ok(), "{status}");
            assert_eq!(seconds(&polls), [1, 2, 8, 14, 25], "{status}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pending_as_auth0_sends_it_and_outages_keep_polling() {
        let script = vec![
            refused(StatusCode::FORBIDDEN, "authorization_pending"),
            refused(StatusCode::TOO_MANY_REQUESTS, "authorization_pending"),
            Some(
                http::Response::builder()
                    .status(503)
                    .body(Vec::new())
                    .unwrap(),
            ),
            None,
            token(),
        ];
        let (outcome, polls, _) = run(2, 600, script).await;
        assert!(outcome.is_ok());
        assert_eq!(seconds(&polls), [2, 4, 6, 8, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unapproved_code_expires_at_its_deadline_without_another_poll() {
        let (outcome, polls, ended) = run(2, 7, Vec::new()).await;
        assert!(matches!(outcome, Err(ProviderError::LoginExpired)));
        assert_eq!(seconds(&polls), [2, 4, 6]);
        assert_eq!(ended, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_token_access_denied_and_other_errors_end_the_polling_at_once() {
        let invalid_client = ProviderError::OAuth {
            error: "invalid_client".into(),
            description: None,
        };
        for (status, error, expected) in [
            (
                StatusCode::BAD_REQUEST,
                "expired_token",
                ProviderError::LoginExpired,
            ),
            (
                StatusCode::FORBIDDEN,
                "access_denied",
                ProviderError::LoginDenied,
            ),
            (StatusCode::BAD_REQUEST, "invalid_client", invalid_client),
        ] {
            let (outcome, polls, _) = run(1, 600, vec![refused(status, error)]).await;
            assert_eq!(outcome.err(), Some(expected), "{error}");
            assert_eq!(polls.len(), 1, "{error}");
        }
    }
}
