//! The standard OAuth2 flows against a token endpoint: client credentials and password
//! (RFC 6749 4.4, 4.3), a configured refresh token (6), the device grant (RFC 8628) and the
//! authorization-code (with PKCE, RFC 7636) and implicit grants through the browser. Token
//! requests are built and parsed by the `oauth2` crate (5.1/5.2), sent over our own
//! transport so they share the forwarding pool and TLS settings.

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    ExtraTokenFields, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError,
    ResourceOwnerPassword, ResourceOwnerUsername, Scope, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::credential::Credential;
use crate::schema::FieldError;
use crate::secret::Secret;
use crate::transport::{QueryParams, TokenHttpError, Transport};

use super::browser::{self, BrowserLogin, CallbackParams, ResponseType};
use super::device::{self, DeviceAuthorization};
use super::fields::AuthFields;
use super::{injection, AuthSpec, Injection, ProviderError, Revocation, TokenSourceSpec};

/// When the server sends no `expires_in`, how long a token is assumed to live.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    Body,
    /// HTTP Basic with the url-encoded id and secret (RFC 6749 2.3.1).
    Basic,
}

/// Where token-request parameters go: the form body (RFC 6749), or the query string for
/// servers documented that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamsIn {
    Body,
    Query,
}

/// How to reach and authenticate to a token endpoint.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub client_auth: ClientAuth,
    pub params_in: ParamsIn,
    pub scope: Vec<String>,
    pub audience: Option<String>,
}

/// Which grant gets the first token.
#[derive(Debug, Clone)]
pub enum Flow {
    ClientCredentials,
    Password {
        username: String,
        password: Secret,
    },
    /// A refresh token the user obtained elsewhere.
    RefreshToken {
        initial: Secret,
    },
    DeviceCode {
        device_authorization_url: String,
    },
    AuthorizationCode {
        authorize_url: String,
        redirect_uri: Option<String>,
        pkce: bool,
    },
    Implicit {
        authorize_url: String,
        redirect_uri: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKind {
    ClientCredentials,
    Password,
    RefreshToken,
    DeviceCode,
    AuthorizationCode,
    Implicit,
}

/// A validated token-endpoint configuration.
#[derive(Debug, Clone)]
pub struct OAuthSpec {
    pub flow: Flow,
    pub endpoint: EndpointSpec,
    pub default_ttl: Duration,
    /// AMM-style revocation: `POST {expire_url}?access_token=...` on logout.
    pub expire_url: Option<String>,
    /// RFC 7009 revocation on logout.
    pub revocation_url: Option<String>,
}

/// What a vendor preset fills in before the user's own settings.
#[derive(Default)]
pub struct PresetDefaults {
    pub token_url: Option<String>,
    pub authorize_url: Option<String>,
    pub expire_url: Option<String>,
    pub scope: Vec<String>,
    pub client_id: Option<&'static str>,
    pub client_auth: Option<ClientAuth>,
    pub pkce: Option<bool>,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
}

pub(super) fn spec(
    fields: &AuthFields,
    flow_kind: FlowKind,
    defaults: PresetDefaults,
) -> Result<AuthSpec, FieldError> {
    let missing = |name: &str| {
        fields.error(
            name,
            format!("missing; required by kind {:?}", fields.kind()),
        )
    };
    let token_url = fields
        .url("token_url")?
        .or(defaults.token_url)
        .ok_or_else(|| missing("token_url"))?;
    let client_id = match (fields.text("client_id"), defaults.client_id) {
        (Some(id), _) if !id.is_empty() => id,
        (Some(_), _) => return Err(fields.error("client_id", "must not be empty")),
        (None, Some(default)) => default.to_owned(),
        (None, None) => return Err(missing("client_id")),
    };
    let client_secret = match flow_kind {
        // A confidential client is the point of client credentials.
        FlowKind::ClientCredentials => Some(fields.required_secret("client_secret")?),
        // The others are often public clients (CAEPE's cape-client, device and PKCE apps).
        _ => fields.secret("client_secret").filter(|s| !s.is_empty()),
    };
    let client_auth = match fields.text("client_auth").as_deref() {
        None => defaults.client_auth.unwrap_or(ClientAuth::Body),
        Some("body") => ClientAuth::Body,
        Some("basic") => ClientAuth::Basic,
        Some(other) => {
            return Err(fields.error(
                "client_auth",
                format!("{other:?} is not \"body\" or \"basic\""),
            ))
        }
    };
    let params_in = match fields.text("params_in").as_deref() {
        None | Some("body") => ParamsIn::Body,
        Some("query") => ParamsIn::Query,
        Some(other) => {
            return Err(fields.error(
                "params_in",
                format!("{other:?} is not \"body\" or \"query\""),
            ))
        }
    };
    let flow = match flow_kind {
        FlowKind::ClientCredentials => Flow::ClientCredentials,
        FlowKind::Password => Flow::Password {
            username: fields.required_text("username")?,
            password: fields.required_secret("password")?,
        },
        FlowKind::RefreshToken => Flow::RefreshToken {
            initial: fields.required_secret("refresh_token")?,
        },
        FlowKind::DeviceCode => Flow::DeviceCode {
            device_authorization_url: fields
                .url("device_authorization_url")?
                .ok_or_else(|| missing("device_authorization_url"))?,
        },
        FlowKind::AuthorizationCode => Flow::AuthorizationCode {
            authorize_url: fields
                .url("authorize_url")?
                .or(defaults.authorize_url)
                .ok_or_else(|| missing("authorize_url"))?,
            redirect_uri: fields.url("redirect_uri")?,
            pkce: fields.flag("pkce").or(defaults.pkce).unwrap_or(true),
        },
        FlowKind::Implicit => Flow::Implicit {
            authorize_url: fields
                .url("authorize_url")?
                .or(defaults.authorize_url)
                .ok_or_else(|| missing("authorize_url"))?,
            redirect_uri: fields.url("redirect_uri")?,
        },
    };
    let scope = fields.scope().unwrap_or(defaults.scope);
    let audience = fields.text("audience");
    let default_ttl = fields.duration("default_ttl")?.unwrap_or(DEFAULT_TTL);
    if default_ttl.is_zero() {
        return Err(fields.error("default_ttl", "must be longer than zero"));
    }
    let expire_url = fields.url("expire_url")?.or(defaults.expire_url);
    let revocation_url = fields.url("revocation_url")?;
    Ok(AuthSpec {
        kind: fields.kind().to_owned(),
        source: TokenSourceSpec::OAuth(Box::new(OAuthSpec {
            flow,
            endpoint: EndpointSpec {
                token_url,
                client_id,
                client_secret,
                client_auth,
                params_in,
                scope,
                audience,
            },
            default_ttl,
            expire_url,
            revocation_url,
        })),
        injection: injection(fields, defaults.extra_headers, "Bearer")?,
        refresh_skew: None,
        secrets: Vec::new(),
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

/// A token endpoint's answer, before it becomes a `Credential`. Lifetimes count from when
/// the request was sent, so a slow answer errs early.
pub struct TokenSet {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub lifetime: Option<Duration>,
    pub refresh_lifetime: Option<Duration>,
    pub sent_at: Instant,
}

impl TokenSet {
    /// `kept_refresh_token`: a server may keep the refresh token (RFC 6749 6); then the one
    /// just used stays ours.
    pub fn into_credential(
        self,
        injection: &Injection,
        default_ttl: Duration,
        kept_refresh_token: Option<&Secret>,
    ) -> Result<Credential, ProviderError> {
        if self.access_token.is_empty() {
            return Err(ProviderError::Malformed("access_token is empty".into()));
        }
        let lifetime = self.lifetime.unwrap_or(default_ttl);
        Ok(Credential {
            headers: injection.headers_for(&self.access_token)?,
            token: self.access_token,
            obtained_at: self.sent_at,
            expires_at: Some(self.sent_at + lifetime),
            refresh_token: self.refresh_token.or_else(|| kept_refresh_token.cloned()),
            refresh_expires_at: self
                .refresh_lifetime
                .map(|lifetime| self.sent_at + lifetime),
        })
    }
}

/// One token endpoint with its client authentication.
pub struct TokenEndpoint {
    client: TokenClient,
    spec: EndpointSpec,
    transport: Transport,
}

/// Sends an `oauth2` request with the parameters where the endpoint wants them.
macro_rules! send {
    ($endpoint:expr, $request:expr) => {
        match $endpoint.spec.params_in {
            ParamsIn::Body => $request.request_async(&$endpoint.transport).await,
            ParamsIn::Query => {
                $request
                    .request_async(&QueryParams(&$endpoint.transport))
                    .await
            }
        }
    };
}

impl TokenEndpoint {
    pub fn new(spec: &EndpointSpec, transport: Transport) -> Result<Self, ProviderError> {
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
        Ok(TokenEndpoint {
            client,
            spec: spec.clone(),
            transport,
        })
    }

    pub fn spec(&self) -> &EndpointSpec {
        &self.spec
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// A form POST to `url` with this endpoint's client authentication and parameter
    /// placement, for the requests the `oauth2` crate does not make (device flow, AMM's
    /// expire).
    pub fn form_request(
        &self,
        url: &str,
        mut params: Vec<(&str, String)>,
    ) -> Result<http::Request<Vec<u8>>, ProviderError> {
        let mut builder = http::Request::post(url).header(http::header::ACCEPT, "application/json");
        match (&self.spec.client_secret, self.spec.client_auth) {
            (Some(secret), ClientAuth::Basic) => {
                use base64::Engine as _;
                let encode = |text: &str| {
                    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>()
                };
                let credentials = format!(
                    "{}:{}",
                    encode(&self.spec.client_id),
                    encode(secret.expose())
                );
                let mut value = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(credentials)
                ))
                .map_err(|_| {
                    ProviderError::Malformed("client credentials are not valid in a header".into())
                })?;
                value.set_sensitive(true);
                builder = builder.header(http::header::AUTHORIZATION, value);
            }
            (secret, _) => {
                params.push(("client_id", self.spec.client_id.clone()));
                if let Some(secret) = secret {
                    params.push(("client_secret", secret.expose().to_owned()));
                }
            }
        }
        let form = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().map(|(key, value)| (*key, value.as_str())))
            .finish();
        let request = match self.spec.params_in {
            ParamsIn::Body => builder
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form.into_bytes()),
            ParamsIn::Query => {
                let separator = if url.contains('?') { '&' } else { '?' };
                builder
                    .uri(format!("{url}{separator}{form}"))
                    .body(Vec::new())
            }
        };
        request.map_err(|_| ProviderError::Malformed(format!("cannot build a request to {url}")))
    }

    fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.spec.scope.iter().cloned().map(Scope::new)
    }

    pub async fn client_credentials(&self) -> Result<TokenSet, ProviderError> {
        let sent_at = Instant::now();
        let mut request = self
            .client
            .exchange_client_credentials()
            .add_scopes(self.scopes());
        if let Some(audience) = &self.spec.audience {
            request = request.add_extra_param("audience", audience.clone());
        }
        token_set(send!(self, request), sent_at)
    }

    pub async fn password(
        &self,
        username: &str,
        password: &Secret,
    ) -> Result<TokenSet, ProviderError> {
        let sent_at = Instant::now();
        let username = ResourceOwnerUsername::new(username.to_owned());
        let password = ResourceOwnerPassword::new(password.expose().to_owned());
        let mut request = self
            .client
            .exchange_password(&username, &password)
            .add_scopes(self.scopes());
        if let Some(audience) = &self.spec.audience {
            request = request.add_extra_param("audience", audience.clone());
        }
        token_set(send!(self, request), sent_at)
    }

    pub async fn refresh(&self, refresh_token: &Secret) -> Result<TokenSet, ProviderError> {
        let sent_at = Instant::now();
        let token = RefreshToken::new(refresh_token.expose().to_owned());
        let request = self.client.exchange_refresh_token(&token);
        token_set(send!(self, request), sent_at)
    }

    pub async fn authorization_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&Secret>,
    ) -> Result<TokenSet, ProviderError> {
        let sent_at = Instant::now();
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|_| ProviderError::Malformed("redirect_uri is not a URL".into()))?;
        let mut request = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_redirect_uri(Cow::Owned(redirect));
        if let Some(verifier) = verifier {
            request =
                request.set_pkce_verifier(PkceCodeVerifier::new(verifier.expose().to_owned()));
        }
        token_set(send!(self, request), sent_at)
    }
}

fn token_set(
    answer: Result<TokenAnswer, GrantError>,
    sent_at: Instant,
) -> Result<TokenSet, ProviderError> {
    let answer = answer.map_err(provider_error)?;
    Ok(TokenSet {
        access_token: Secret::new(answer.access_token().secret().clone()),
        refresh_token: answer
            .refresh_token()
            .map(|token| Secret::new(token.secret().clone())),
        lifetime: answer.expires_in(),
        refresh_lifetime: answer
            .extra_fields()
            .refresh_expires_in
            .filter(|&seconds| seconds > 0)
            .map(Duration::from_secs),
        sent_at,
    })
}

/// Keeps what is safe to show: the OAuth error code and description, the HTTP status, or
/// where parsing failed. Never the body, which could hold a token.
pub fn provider_error(error: GrantError) -> ProviderError {
    match error {
        RequestTokenError::ServerResponse(response) => ProviderError::OAuth {
            error: response.error().as_ref().to_owned(),
            description: response.error_description().cloned(),
        },
        RequestTokenError::Request(error) => error.into(),
        RequestTokenError::Parse(error, _body) => {
            super::token_json_error(&error.path().to_string(), error.inner())
        }
        RequestTokenError::Other(reason) => ProviderError::Malformed(reason),
    }
}

impl From<TokenHttpError> for ProviderError {
    fn from(error: TokenHttpError) -> Self {
        match error {
            TokenHttpError::Unreachable { url, reason } => {
                ProviderError::Unreachable { url, reason }
            }
            TokenHttpError::Timeout(after) => ProviderError::Timeout(after),
            TokenHttpError::Status {
                status,
                retry_after,
                error,
            } => ProviderError::Status {
                status,
                retry_after,
                error,
            },
            TokenHttpError::TooLarge => {
                ProviderError::Malformed("the answer is larger than a token response can be".into())
            }
        }
    }
}

/// Obtains credentials with one of the standard flows.
pub struct OAuthGrant {
    flow: Flow,
    endpoint: TokenEndpoint,
    injection: Injection,
    default_ttl: Duration,
    expire_url: Option<String>,
    revocation_url: Option<String>,
}

impl OAuthGrant {
    pub fn new(
        spec: &OAuthSpec,
        injection: Injection,
        transport: Transport,
    ) -> Result<Self, ProviderError> {
        Ok(OAuthGrant {
            flow: spec.flow.clone(),
            endpoint: TokenEndpoint::new(&spec.endpoint, transport)?,
            injection,
            default_ttl: spec.default_ttl,
            expire_url: spec.expire_url.clone(),
            revocation_url: spec.revocation_url.clone(),
        })
    }

    pub fn login_method(&self) -> super::LoginMethod {
        match self.flow {
            Flow::ClientCredentials | Flow::Password { .. } | Flow::RefreshToken { .. } => {
                super::LoginMethod::Direct
            }
            Flow::DeviceCode { .. } => super::LoginMethod::DeviceCode,
            Flow::AuthorizationCode { .. } | Flow::Implicit { .. } => super::LoginMethod::Browser,
        }
    }

    /// Each grant gives a token of its own, independent of the others: asking again
    /// without the refresh token forks nothing.
    pub fn grants_independent_tokens(&self) -> bool {
        matches!(self.flow, Flow::ClientCredentials | Flow::Password { .. })
    }

    /// Uses the refresh token of `previous` when there is a live one. When the server
    /// refuses it (`invalid_grant`: expired, revoked or already used), grants that need no
    /// user run again; the others need a new login.
    pub async fn obtain(&self, previous: Option<&Credential>) -> Result<Credential, ProviderError> {
        let now = Instant::now();
        if let Some(refresh_token) = previous.and_then(|c| c.live_refresh_token(now)) {
            match self.refresh(refresh_token).await {
                Err(ProviderError::OAuth { error, description }) if error == "invalid_grant" => {
                    if self.login_method() != super::LoginMethod::Direct
                        || matches!(self.flow, Flow::RefreshToken { .. })
                    {
                        return Err(ProviderError::NeedsLogin);
                    }
                    tracing::info!(
                        reason = description.as_deref().unwrap_or(""),
                        "refresh token refused; running the grant again"
                    );
                }
                other => return other,
            }
        }
        let answer = match &self.flow {
            Flow::ClientCredentials => self.endpoint.client_credentials().await?,
            Flow::Password { username, password } => {
                self.endpoint.password(username, password).await?
            }
            Flow::RefreshToken { initial } if previous.is_none() => {
                return self.refresh(initial).await.map_err(|error| match error {
                    ProviderError::OAuth { error, .. } if error == "invalid_grant" => {
                        ProviderError::NeedsLogin
                    }
                    other => other,
                })
            }
            Flow::RefreshToken { .. }
            | Flow::DeviceCode { .. }
            | Flow::AuthorizationCode { .. }
            | Flow::Implicit { .. } => return Err(ProviderError::NeedsLogin),
        };
        answer.into_credential(&self.injection, self.default_ttl, None)
    }

    async fn refresh(&self, refresh_token: &Secret) -> Result<Credential, ProviderError> {
        self.endpoint.refresh(refresh_token).await?.into_credential(
            &self.injection,
            self.default_ttl,
            Some(refresh_token),
        )
    }

    pub async fn start_device_login(&self) -> Result<DeviceAuthorization, ProviderError> {
        let Flow::DeviceCode {
            device_authorization_url,
        } = &self.flow
        else {
            return Err(ProviderError::Malformed(
                "not a device-code upstream".into(),
            ));
        };
        device::authorize(&self.endpoint, device_authorization_url).await
    }

    pub async fn finish_device_login(
        &self,
        authorization: &DeviceAuthorization,
    ) -> Result<Credential, ProviderError> {
        device::poll(&self.endpoint, authorization)
            .await?
            .into_credential(&self.injection, self.default_ttl, None)
    }

    pub fn start_browser_login(
        &self,
        default_redirect_uri: &str,
    ) -> Result<BrowserLogin, ProviderError> {
        let (authorize_url, redirect_uri, response_type, pkce) = match &self.flow {
            Flow::AuthorizationCode {
                authorize_url,
                redirect_uri,
                pkce,
            } => (authorize_url, redirect_uri, ResponseType::Code, *pkce),
            Flow::Implicit {
                authorize_url,
                redirect_uri,
            } => (authorize_url, redirect_uri, ResponseType::Token, false),
            _ => {
                return Err(ProviderError::Malformed(
                    "not a browser-login upstream".into(),
                ))
            }
        };
        let redirect_uri = redirect_uri.as_deref().unwrap_or(default_redirect_uri);
        browser::start(
            authorize_url,
            self.endpoint.spec(),
            redirect_uri,
            response_type,
            pkce,
        )
    }

    pub async fn finish_browser_login(
        &self,
        login: &BrowserLogin,
        callback: &CallbackParams,
    ) -> Result<Credential, ProviderError> {
        let answer = browser::finish(&self.endpoint, login, callback).await?;
        answer.into_credential(&self.injection, self.default_ttl, None)
    }

    /// Revokes the credential where the server offers it: AMM's `expire`, or RFC 7009.
    pub async fn revoke(&self, credential: &Credential) -> Result<Revocation, ProviderError> {
        if let Some(expire_url) = &self.expire_url {
            super::amm::expire(&self.endpoint, expire_url, &credential.token).await?;
        } else if let Some(revocation_url) = &self.revocation_url {
            super::revocation::revoke(&self.endpoint, revocation_url, credential).await?;
        } else {
            return Ok(Revocation::NotOffered);
        }
        Ok(Revocation::Revoked)
    }
}
