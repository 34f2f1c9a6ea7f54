//! The standard OAuth2 grants at a token endpoint (RFC 6749): `client_credentials`,
//! `password`, and `refresh_token` whenever a previous answer left a refresh token. Requests
//! and answers are built and parsed by the `oauth2` crate (5.1/5.2), sent over our own
//! transport so token requests share the forwarding pool and TLS settings.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, ExtraTokenFields, RefreshToken,
    RequestTokenError, ResourceOwnerPassword, ResourceOwnerUsername, Scope, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::FieldError;
use crate::secret::Secret;
use crate::tokens::Credential;
use crate::transport::{TokenHttpError, Transport};

use super::fields::AuthFields;
use super::{injection, AuthSpec, Injection, ProviderError, TokenSourceSpec};

/// When the server sends no `expires_in`, how long a token is assumed to live.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    Body,
    /// HTTP Basic with the url-encoded id and secret (RFC 6749 2.3.1).
    Basic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    ClientCredentials,
    Password,
}

#[derive(Debug, Clone)]
pub enum Grant {
    ClientCredentials,
    Password { username: String, password: Secret },
}

/// A validated token-endpoint configuration.
#[derive(Debug, Clone)]
pub struct OAuthSpec {
    pub grant: Grant,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub client_auth: ClientAuth,
    pub scope: Vec<String>,
    pub audience: Option<String>,
    pub default_ttl: Duration,
}

/// What a vendor preset fills in before the user's own settings.
pub struct PresetDefaults {
    pub token_url: Option<String>,
    pub scope: Vec<String>,
    pub client_id: Option<&'static str>,
    pub client_auth: ClientAuth,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
}

pub(super) fn spec(
    fields: &AuthFields,
    grant_kind: GrantKind,
    defaults: Option<PresetDefaults>,
) -> Result<AuthSpec, FieldError> {
    let defaults = defaults.unwrap_or(PresetDefaults {
        token_url: None,
        scope: Vec::new(),
        client_id: None,
        client_auth: ClientAuth::Body,
        extra_headers: Vec::new(),
    });
    let token_url = match fields.text("token_url").or(defaults.token_url) {
        Some(url) => url,
        None => {
            return Err(fields.error(
                "token_url",
                format!("missing; required by kind {:?}", fields.kind()),
            ))
        }
    };
    if TokenUrl::new(token_url.clone()).is_err()
        || !(token_url.starts_with("https://") || token_url.starts_with("http://"))
    {
        return Err(fields.error("token_url", format!("{token_url:?} is not an http(s) URL")));
    }
    let client_id = match (fields.text("client_id"), defaults.client_id) {
        (Some(id), _) if !id.is_empty() => id,
        (Some(_), _) => return Err(fields.error("client_id", "must not be empty")),
        (None, Some(default)) => default.to_owned(),
        (None, None) => {
            return Err(fields.error(
                "client_id",
                format!("missing; required by kind {:?}", fields.kind()),
            ))
        }
    };
    let client_secret = match grant_kind {
        // A confidential client is the point of client credentials.
        GrantKind::ClientCredentials => Some(fields.required_secret("client_secret")?),
        // Password grants often use a public client (CAEPE's cape-client).
        GrantKind::Password => fields.secret("client_secret").filter(|s| !s.is_empty()),
    };
    let client_auth = match fields.text("client_auth").as_deref() {
        None => defaults.client_auth,
        Some("body") => ClientAuth::Body,
        Some("basic") => ClientAuth::Basic,
        Some(other) => {
            return Err(fields.error(
                "client_auth",
                format!("{other:?} is not \"body\" or \"basic\""),
            ))
        }
    };
    let grant = match grant_kind {
        GrantKind::ClientCredentials => Grant::ClientCredentials,
        GrantKind::Password => Grant::Password {
            username: fields.required_text("username")?,
            password: fields.required_secret("password")?,
        },
    };
    let scope = fields.scope().unwrap_or(defaults.scope);
    let audience = fields.text("audience");
    let default_ttl = fields.duration("default_ttl")?.unwrap_or(DEFAULT_TTL);
    if default_ttl.is_zero() {
        return Err(fields.error("default_ttl", "must be longer than zero"));
    }
    Ok(AuthSpec {
        kind: fields.kind().to_owned(),
        source: TokenSourceSpec::OAuth(Box::new(OAuthSpec {
            grant,
            token_url,
            client_id,
            client_secret,
            client_auth,
            scope,
            audience,
            default_ttl,
        })),
        injection: injection(fields, defaults.extra_headers)?,
        refresh_skew: None,
    })
}

/// Keycloak's `refresh_expires_in`, next to the standard fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RefreshExpiry {
    #[serde(default)]
    refresh_expires_in: Option<u64>,
}

impl ExtraTokenFields for RefreshExpiry {}

type TokenAnswer = StandardTokenResponse<RefreshExpiry, BasicTokenType>;

type TokenClient = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

type GrantError = RequestTokenError<TokenHttpError, BasicErrorResponse>;

pub struct OAuthGrant {
    spec: OAuthSpec,
    client: TokenClient,
    injection: Injection,
    transport: Transport,
}

impl OAuthGrant {
    pub fn new(
        spec: &OAuthSpec,
        injection: Injection,
        transport: Transport,
    ) -> Result<Self, ProviderError> {
        let token_url = TokenUrl::new(spec.token_url.clone())
            .map_err(|_| ProviderError::Malformed("token_url is not a URL".into()))?;
        let mut client = oauth2::Client::new(ClientId::new(spec.client_id.clone()))
            .set_token_uri(token_url)
            .set_auth_type(match spec.client_auth {
                ClientAuth::Body => AuthType::RequestBody,
                ClientAuth::Basic => AuthType::BasicAuth,
            });
        if let Some(secret) = &spec.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
        }
        Ok(OAuthGrant {
            spec: spec.clone(),
            client,
            injection,
            transport,
        })
    }

    /// Uses the refresh token of `previous` when there is a live one; when the server
    /// refuses it (`invalid_grant`: expired, revoked or already used), falls back to the
    /// grant itself, which needs no user interaction for these kinds.
    pub async fn obtain(&self, previous: Option<&Credential>) -> Result<Credential, ProviderError> {
        let now = Instant::now();
        if let Some(refresh_token) = previous.and_then(|c| c.live_refresh_token(now)) {
            match self.refresh(refresh_token).await {
                Ok(credential) => return Ok(credential),
                Err(ProviderError::OAuth { error, description }) if error == "invalid_grant" => {
                    tracing::info!(
                        reason = description.as_deref().unwrap_or(""),
                        "refresh token refused; running the grant again"
                    );
                }
                Err(other) => return Err(other),
            }
        }
        self.grant().await
    }

    async fn grant(&self) -> Result<Credential, ProviderError> {
        let http = &self.transport;
        let sent_at = Instant::now();
        let answer = match &self.spec.grant {
            Grant::ClientCredentials => {
                let mut request = self
                    .client
                    .exchange_client_credentials()
                    .add_scopes(self.spec.scope.iter().cloned().map(Scope::new));
                if let Some(audience) = &self.spec.audience {
                    request = request.add_extra_param("audience", audience.clone());
                }
                request.request_async(http).await
            }
            Grant::Password { username, password } => {
                let username = ResourceOwnerUsername::new(username.clone());
                let password = ResourceOwnerPassword::new(password.expose().to_owned());
                let mut request = self
                    .client
                    .exchange_password(&username, &password)
                    .add_scopes(self.spec.scope.iter().cloned().map(Scope::new));
                if let Some(audience) = &self.spec.audience {
                    request = request.add_extra_param("audience", audience.clone());
                }
                request.request_async(http).await
            }
        };
        self.credential_from(answer, sent_at, None)
    }

    async fn refresh(&self, refresh_token: &Secret) -> Result<Credential, ProviderError> {
        let http = &self.transport;
        let sent_at = Instant::now();
        let token = RefreshToken::new(refresh_token.expose().to_owned());
        let answer = self
            .client
            .exchange_refresh_token(&token)
            .request_async(http)
            .await;
        self.credential_from(answer, sent_at, Some(refresh_token))
    }

    /// Lifetimes count from when the request was sent, so a slow answer errs early.
    fn credential_from(
        &self,
        answer: Result<TokenAnswer, GrantError>,
        sent_at: Instant,
        used_refresh_token: Option<&Secret>,
    ) -> Result<Credential, ProviderError> {
        let answer = answer.map_err(provider_error)?;
        let access_token = Secret::new(answer.access_token().secret().clone());
        if access_token.is_empty() {
            return Err(ProviderError::Malformed("access_token is empty".into()));
        }
        let lifetime = answer.expires_in().unwrap_or(self.spec.default_ttl);
        // A server may keep the refresh token (RFC 6749 6); then the old one stays ours.
        let refresh_token = match answer.refresh_token() {
            Some(token) => Some(Secret::new(token.secret().clone())),
            None => used_refresh_token.cloned(),
        };
        let refresh_lifetime = answer
            .extra_fields()
            .refresh_expires_in
            .filter(|&seconds| seconds > 0)
            .map(Duration::from_secs);
        Ok(Credential {
            headers: self.injection.headers_for(&access_token)?,
            obtained_at: sent_at,
            expires_at: Some(sent_at + lifetime),
            refresh_token,
            refresh_expires_at: refresh_lifetime.map(|lifetime| sent_at + lifetime),
        })
    }
}

/// Keeps what is safe to show: the OAuth error code and description, the HTTP status, or
/// where parsing failed. Never the body, which could hold a token.
fn provider_error(error: GrantError) -> ProviderError {
    match error {
        RequestTokenError::ServerResponse(response) => ProviderError::OAuth {
            error: response.error().as_ref().to_owned(),
            description: response.error_description().cloned(),
        },
        RequestTokenError::Request(TokenHttpError::Unreachable(reason)) => {
            ProviderError::Unreachable(reason)
        }
        RequestTokenError::Request(TokenHttpError::Timeout(after)) => ProviderError::Timeout(after),
        RequestTokenError::Request(TokenHttpError::Status {
            status,
            retry_after,
        }) => ProviderError::Status {
            status,
            retry_after,
        },
        RequestTokenError::Request(TokenHttpError::TooLarge) => {
            ProviderError::Malformed("the answer is larger than a token response can be".into())
        }
        RequestTokenError::Parse(error, _body) => {
            let inner = error.inner();
            ProviderError::Malformed(format!(
                "invalid JSON at `{}` (line {}, column {}: {:?} error)",
                error.path(),
                inner.line(),
                inner.column(),
                inner.classify()
            ))
        }
        RequestTokenError::Other(reason) => ProviderError::Malformed(reason),
    }
}
