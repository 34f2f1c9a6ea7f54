//! EDB BigAnimal, the OAuth path: the client id, issuer, scope and audience are discovered
//! at `{api}/auth/provider`; the user approves a device code (RFC 8628) at the issuer; the
//! issuer's "raw" access token is then exchanged at `{api}/auth/token` for the BigAnimal
//! token, the only one the API accepts. Refresh tokens rotate: each refresh returns a new
//! one and kills the old, and every new raw token is exchanged again.
//! (Access keys need none of this: `kind = "static"`, `header = "x-access-key"`.)

use serde::Deserialize;
use tokio::time::Instant;

use crate::credential::Credential;
use crate::schema::FieldError;
use crate::secret::Secret;
use crate::transport::{Transport, TOKEN_REQUEST_TIMEOUT};

use super::device::{self, DeviceAuthorization};
use super::fields::AuthFields;
use super::oauth::{ClientAuth, EndpointSpec, ParamsIn, TokenEndpoint, TokenSet, DEFAULT_TTL};
use super::{injection, jwt, AuthSpec, Injection, ProviderError, TokenSourceSpec};

pub const DEFAULT_PROVIDER_URL: &str = "https://portal.biganimal.com/api/v3/auth/provider";

#[derive(Debug, Clone)]
pub struct BigAnimalSpec {
    pub provider_url: String,
    pub exchange_url: String,
    /// Overrides of what discovery returns.
    pub client_id: Option<String>,
    pub scope: Option<Vec<String>>,
    pub audience: Option<String>,
}

pub(super) fn spec(fields: &AuthFields) -> Result<AuthSpec, FieldError> {
    let provider_url = fields
        .url("provider_url")?
        .unwrap_or_else(|| DEFAULT_PROVIDER_URL.to_owned());
    let exchange_url = match fields.url("exchange_url")? {
        Some(url) => url,
        // Both live under the same versioned API base, which has changed over time.
        None => match provider_url.trim_end_matches('/').strip_suffix("/auth/provider") {
            Some(api) => format!("{api}/auth/token"),
            None => {
                return Err(fields.error(
                    "exchange_url",
                    "missing; it cannot be derived from a provider_url that does not end in /auth/provider",
                ))
            }
        },
    };
    Ok(AuthSpec {
        kind: fields.kind().to_owned(),
        source: TokenSourceSpec::BigAnimal(Box::new(BigAnimalSpec {
            provider_url,
            exchange_url,
            client_id: fields.text("client_id"),
            scope: fields.scope(),
            audience: fields.text("audience"),
        })),
        injection: injection(fields, Vec::new(), "Bearer")?,
        refresh_skew: None,
        secrets: Vec::new(),
    })
}

/// What `{api}/auth/provider` says.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Discovery {
    client_id: String,
    issuer_uri: String,
    scope: Option<String>,
    audience: Option<String>,
}

#[derive(Deserialize)]
struct Exchanged {
    token: String,
}

pub struct BigAnimal {
    spec: BigAnimalSpec,
    injection: Injection,
    transport: Transport,
}

impl BigAnimal {
    pub fn new(spec: &BigAnimalSpec, injection: Injection, transport: Transport) -> Self {
        BigAnimal {
            spec: spec.clone(),
            injection,
            transport,
        }
    }

    /// The issuer's token endpoint, as discovery describes it (public client, no secret).
    async fn issuer(&self) -> Result<(TokenEndpoint, String), ProviderError> {
        let request = http::Request::get(&self.spec.provider_url)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|_| ProviderError::Malformed("provider_url is not a URL".into()))?;
        let response = self
            .transport
            .send_buffered(request, TOKEN_REQUEST_TIMEOUT)
            .await?;
        if !response.status().is_success() {
            return Err(super::error_answer(&response));
        }
        let discovery: Discovery = serde_json::from_slice(response.body()).map_err(|_| {
            ProviderError::Malformed("the auth provider answer lacks clientId or issuerUri".into())
        })?;
        let issuer = discovery.issuer_uri.trim_end_matches('/').to_owned();
        let endpoint = EndpointSpec {
            token_url: format!("{issuer}/oauth/token"),
            client_id: self.spec.client_id.clone().unwrap_or(discovery.client_id),
            client_secret: None,
            client_auth: ClientAuth::Body,
            params_in: ParamsIn::Body,
            scope: self.spec.scope.clone().unwrap_or_else(|| {
                discovery
                    .scope
                    .as_deref()
                    .unwrap_or("openid profile email offline_access")
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            }),
            audience: self.spec.audience.clone().or(discovery.audience),
        };
        Ok((
            TokenEndpoint::new(&endpoint, self.transport.clone())?,
            issuer,
        ))
    }

    pub async fn start_device_login(&self) -> Result<DeviceAuthorization, ProviderError> {
        let (endpoint, issuer) = self.issuer().await?;
        device::authorize(&endpoint, &format!("{issuer}/oauth/device/code")).await
    }

    pub async fn finish_device_login(
        &self,
        authorization: &DeviceAuthorization,
    ) -> Result<Credential, ProviderError> {
        let (endpoint, _) = self.issuer().await?;
        let raw = device::poll(&endpoint, authorization).await?;
        self.exchange(raw, None).await
    }

    /// Refreshes with the (single-use) refresh token, then exchanges the new raw token.
    pub async fn obtain(&self, previous: Option<&Credential>) -> Result<Credential, ProviderError> {
        let Some(refresh_token) = previous.and_then(|c| c.live_refresh_token(Instant::now()))
        else {
            return Err(ProviderError::NeedsLogin);
        };
        let (endpoint, _) = self.issuer().await?;
        match endpoint.refresh(refresh_token).await {
            Ok(raw) => self.exchange(raw, Some(refresh_token)).await,
            Err(ProviderError::OAuth { error, .. }) if error == "invalid_grant" => {
                Err(ProviderError::NeedsLogin)
            }
            Err(other) => Err(other),
        }
    }

    /// Trades the raw token for the BigAnimal token. Its lifetime is the JWT's `exp`, else
    /// the raw token's.
    async fn exchange(
        &self,
        raw: TokenSet,
        kept_refresh_token: Option<&Secret>,
    ) -> Result<Credential, ProviderError> {
        let body = serde_json::to_vec(&serde_json::json!({ "token": raw.access_token.expose() }))
            .map_err(|_| {
            ProviderError::Malformed("cannot encode the exchange request".into())
        })?;
        let request = http::Request::post(&self.spec.exchange_url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .map_err(|_| ProviderError::Malformed("exchange_url is not a URL".into()))?;
        let response = self
            .transport
            .send_buffered(request, TOKEN_REQUEST_TIMEOUT)
            .await?;
        if !response.status().is_success() {
            return Err(super::error_answer(&response));
        }
        let exchanged: Exchanged = serde_json::from_slice(response.body())
            .map_err(|_| ProviderError::Malformed("the exchange answer has no token".into()))?;
        let lifetime = jwt::remaining_lifetime(&exchanged.token)
            .map(|remaining| remaining + raw.sent_at.elapsed())
            .or(raw.lifetime);
        TokenSet {
            access_token: Secret::new(exchanged.token),
            lifetime,
            ..raw
        }
        .into_credential(&self.injection, DEFAULT_TTL, kept_refresh_token)
    }
}
