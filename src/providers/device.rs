//! The device authorization grant (RFC 8628): ask for a device code, show the user where to
//! approve it, and poll the token endpoint until they do, deny, or the code expires.

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
/// expires: the user may still be approving. The error codes count whatever status they
/// come with: RFC 8628 says 400, Auth0 sends `slow_down` as 429 and pending as 403.
pub async fn poll(
    endpoint: &TokenEndpoint,
    authorization: &DeviceAuthorization,
) -> Result<TokenSet, ProviderError> {
    let deadline = authorization.issued_at + authorization.expires_in;
    let mut interval = authorization.interval;
    loop {
        // The last wait ends at the deadline, so an expired code is reported when it expires.
        sleep_until((Instant::now() + interval).min(deadline)).await;
        if Instant::now() >= deadline {
            return Err(ProviderError::LoginExpired);
        }
        let request = endpoint.form_request(
            &endpoint.spec().token_url,
            vec![
                ("grant_type", DEVICE_GRANT.to_owned()),
                ("device_code", authorization.device_code.expose().to_owned()),
            ],
        )?;
        let sent_at = Instant::now();
        let response = match endpoint
            .transport()
            .send_buffered(request, TOKEN_REQUEST_TIMEOUT)
            .await
        {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(error = %error, "device poll failed; polling on");
                continue;
            }
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
