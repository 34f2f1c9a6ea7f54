//! BigID: a long-lived user token, sent raw in `Authorization`, is exchanged at
//! `GET {base}/api/v1/refresh-access-token` for a `systemToken`, which is sent raw (no
//! `Bearer`) on API calls. Failures may come as HTTP 200 with `{"success": false}` or an
//! HTML page, so `success` is checked, not only the status. The systemToken's JWT `exp`
//! schedules the refresh; without one, `default_ttl` (1 h).

use std::time::Duration;

use http::Method;
use serde::Deserialize;
use tokio::time::Instant;

use crate::credential::Credential;
use crate::schema::{FieldError, Target};
use crate::secret::Secret;
use crate::transport::{Transport, TOKEN_REQUEST_TIMEOUT};

use super::fields::AuthFields;
use super::oauth::{TokenSet, DEFAULT_TTL};
use super::{injection, jwt, AuthSpec, Injection, ProviderError, TokenSourceSpec};

#[derive(Debug, Clone)]
pub struct BigIdSpec {
    pub token_url: String,
    pub method: Method,
    pub user_token: Secret,
    pub default_ttl: Duration,
}

pub(super) fn spec(fields: &AuthFields, target: &Target) -> Result<AuthSpec, FieldError> {
    let method = match fields.text("method").as_deref() {
        None => Method::GET,
        Some(text) => match text.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            _ => return Err(fields.error("method", format!("{text:?} is not \"GET\" or \"POST\""))),
        },
    };
    let default_ttl = fields.duration("default_ttl")?.unwrap_or(DEFAULT_TTL);
    if default_ttl.is_zero() {
        return Err(fields.error("default_ttl", "must be longer than zero"));
    }
    Ok(AuthSpec {
        kind: fields.kind().to_owned(),
        source: TokenSourceSpec::BigId(Box::new(BigIdSpec {
            token_url: fields
                .url("token_url")?
                .unwrap_or_else(|| target.join("api/v1/refresh-access-token")),
            method,
            user_token: fields.required_secret("user_token")?,
            default_ttl,
        })),
        // BigID takes its tokens raw.
        injection: injection(fields, Vec::new(), "")?,
        refresh_skew: None,
        secrets: Vec::new(),
    })
}

#[derive(Deserialize)]
struct Answer {
    success: Option<bool>,
    #[serde(rename = "systemToken")]
    system_token: Option<String>,
    message: Option<String>,
}

pub struct BigId {
    spec: BigIdSpec,
    injection: Injection,
    transport: Transport,
}

impl BigId {
    pub fn new(spec: &BigIdSpec, injection: Injection, transport: Transport) -> Self {
        BigId {
            spec: spec.clone(),
            injection,
            transport,
        }
    }

    pub async fn obtain(&self) -> Result<Credential, ProviderError> {
        let mut authorization = http::HeaderValue::from_str(self.spec.user_token.expose())
            .map_err(|_| {
                ProviderError::Malformed("the user token is not valid in a header".into())
            })?;
        authorization.set_sensitive(true);
        let request = http::Request::builder()
            .method(self.spec.method.clone())
            .uri(&self.spec.token_url)
            .header(http::header::AUTHORIZATION, authorization)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|_| ProviderError::Malformed("token_url is not a URL".into()))?;
        let sent_at = Instant::now();
        let response = self
            .transport
            .send_buffered(request, TOKEN_REQUEST_TIMEOUT)
            .await?;
        let status = response.status();
        if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
            return Err(super::error_answer(&response));
        }
        let answer: Answer = serde_json::from_slice(response.body()).map_err(|_| {
            let content_type = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no content type");
            ProviderError::Malformed(format!(
                "HTTP {status} with a {content_type} body instead of BigID's JSON"
            ))
        })?;
        let token = match answer {
            Answer {
                success: Some(true),
                system_token: Some(token),
                ..
            } if status.is_success() && !token.is_empty() => token,
            Answer { message, .. } => {
                return Err(ProviderError::Rejected(format!(
                    "BigID refused the user token (HTTP {status}, success: false): {}",
                    message.as_deref().unwrap_or("no message")
                )))
            }
        };
        let lifetime = jwt::remaining_lifetime(&token).or(Some(self.spec.default_ttl));
        TokenSet {
            access_token: Secret::new(token),
            refresh_token: None,
            lifetime,
            refresh_lifetime: None,
            sent_at,
        }
        .into_credential(&self.injection, self.spec.default_ttl, None)
    }
}
