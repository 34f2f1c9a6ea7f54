//! Where tokens come from. One file per token kind and one per vendor preset; a preset only
//! fills in defaults over a generic kind, so every vendor quirk is also a plain option.
//!
//! `AuthSpec` is the validated `[upstreams.NAME.auth]` table; `Provider` is what obtains a
//! `Credential` from it at run time.

mod amm;
pub mod biganimal;
mod bigeval;
mod bigid;
pub mod browser;
mod caepe;
pub mod device;
mod fields;
mod jwt;
mod oauth;
mod revocation;
mod static_token;

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::credential::{Credential, Injection, UnsendableToken};
use crate::schema::{AuthValue, FieldError, RawAuth, Target};
use crate::secret::Secret;
use crate::transport::Transport;

pub use biganimal::BigAnimalSpec;
pub use bigid::BigIdSpec;
pub use browser::{BrowserLogin, CallbackParams};
pub use device::DeviceAuthorization;
pub use oauth::{ClientAuth, EndpointSpec, Flow, OAuthSpec, ParamsIn};

/// How an upstream authenticates, validated.
#[derive(Debug, Clone)]
pub struct AuthSpec {
    /// What the user wrote as `kind`, for status and logs.
    pub kind: String,
    pub source: TokenSourceSpec,
    pub injection: Injection,
    /// How long before expiry to refresh; `None` picks a share of the lifetime.
    pub refresh_skew: Option<Duration>,
    /// Every secret the table holds, to take out of what vendors say.
    pub secrets: Vec<Secret>,
}

#[derive(Debug, Clone)]
pub enum TokenSourceSpec {
    Static { token: Secret },
    OAuth(Box<OAuthSpec>),
    BigAnimal(Box<BigAnimalSpec>),
    BigId(Box<BigIdSpec>),
}

const KINDS: &[&str] = &[
    "static",
    "client_credentials",
    "password",
    "refresh_token",
    "device_code",
    "authorization_code",
    "bigeval",
    "caepe",
    "bigid",
    "amm",
    "biganimal",
];

impl AuthSpec {
    /// Identifies the settings a stored token was obtained with: another client or token
    /// endpoint must not inherit it.
    pub fn fingerprint(&self) -> String {
        let source = match &self.source {
            TokenSourceSpec::Static { .. } => String::new(),
            TokenSourceSpec::OAuth(oauth) => {
                format!("{} {}", oauth.endpoint.token_url, oauth.endpoint.client_id)
            }
            TokenSourceSpec::BigAnimal(biganimal) => biganimal.provider_url.clone(),
            TokenSourceSpec::BigId(bigid) => bigid.token_url.clone(),
        };
        format!("{} {source}", self.kind)
    }

    /// Validates an auth table. `field` is its dotted path, for messages.
    pub fn from_raw(raw: &RawAuth, target: &Target, field: &str) -> Result<AuthSpec, FieldError> {
        let kind = raw.kind.as_deref().ok_or_else(|| {
            FieldError::new(
                format!("{field}.kind"),
                format!("missing; one of {}", KINDS.join(", ")),
            )
        })?;
        let fields = fields::AuthFields::new(raw, field, kind);
        let mut spec = read_kind(&fields, target)?;
        // Every field the table declares a secret, so a new one cannot be forgotten here.
        spec.secrets = raw
            .present()
            .into_iter()
            .filter_map(|name| match raw.field(name) {
                Some(AuthValue::Secret(Some(secret))) if !secret.is_empty() => {
                    Some(Secret::new(secret.clone()))
                }
                _ => None,
            })
            .collect();
        fields.reject_unused()?;
        Ok(spec)
    }
}

/// The fields `raw`'s kind reads, given the rest of `raw` (a `grant` changes them), in the
/// order it reads them: what an unknown field's error lists. Empty for an unknown kind.
pub fn fields_of_kind(raw: &RawAuth) -> Vec<&'static str> {
    let Some(kind) = raw.kind.as_deref().filter(|kind| KINDS.contains(kind)) else {
        return Vec::new();
    };
    let fields = fields::AuthFields::survey(raw, kind);
    let target = Target::parse("https://survey.invalid/").expect("a valid URL");
    // A value the kind refuses may end the reading early; what was read so far is listed.
    let _ = read_kind(&fields, &target);
    fields.used()
}

/// Reads the fields of `fields`' kind into its spec.
fn read_kind(fields: &fields::AuthFields, target: &Target) -> Result<AuthSpec, FieldError> {
    let kind = fields.kind();
    let generic = |flow| oauth::spec(fields, flow, oauth::PresetDefaults::default());
    let mut spec = match kind {
        "static" => static_token::spec(fields)?,
        "client_credentials" => generic(oauth::FlowKind::ClientCredentials)?,
        "password" => generic(oauth::FlowKind::Password)?,
        "refresh_token" => generic(oauth::FlowKind::RefreshToken)?,
        "device_code" => generic(oauth::FlowKind::DeviceCode)?,
        "authorization_code" => generic(oauth::FlowKind::AuthorizationCode)?,
        "bigeval" => bigeval::spec(fields, target)?,
        "caepe" => caepe::spec(fields)?,
        "bigid" => bigid::spec(fields, target)?,
        "amm" => amm::spec(fields, target)?,
        "biganimal" => biganimal::spec(fields)?,
        other => {
            return Err(fields.error(
                "kind",
                format!("unknown kind {other:?}; one of {}", KINDS.join(", ")),
            ))
        }
    };
    spec.refresh_skew = fields.duration("refresh_skew")?;
    Ok(spec)
}

/// Reads `header`, `scheme` and `headers`, the injection options every kind has.
fn injection(
    fields: &fields::AuthFields,
    mut extra: Vec<(HeaderName, HeaderValue)>,
    default_scheme: &str,
) -> Result<Injection, FieldError> {
    let header = match fields.text("header") {
        None => http::header::AUTHORIZATION,
        Some(name) => HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| fields.error("header", format!("{name:?} is not a valid header name")))?,
    };
    let scheme = fields
        .text("scheme")
        .unwrap_or_else(|| default_scheme.to_owned());
    if scheme.contains(char::is_whitespace) {
        return Err(fields.error(
            "scheme",
            "must be one word such as \"Bearer\", or \"\" for a raw token",
        ));
    }
    if let Some(headers) = fields.headers() {
        extra.extend(crate::schema::header_pairs(
            &fields.path("headers"),
            headers,
        )?);
    }
    Ok(Injection {
        header,
        scheme,
        extra,
    })
}

/// How a token is first obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginMethod {
    /// No user needed: a request to the token endpoint does it.
    Direct,
    /// The user approves a code on another device or tab (RFC 8628).
    DeviceCode,
    /// The user goes through the vendor's page in a browser and comes back to the callback.
    Browser,
}

/// Obtains credentials for one upstream. Every error it returns has had the configured
/// secrets and the tokens of the call taken out of the vendor's words (`scrub`).
pub struct Provider {
    source: Source,
    /// The configured secrets, to scrub from vendor text.
    secrets: Vec<Secret>,
}

enum Source {
    Static(static_token::StaticToken),
    OAuth(Box<oauth::OAuthGrant>),
    BigAnimal(Box<biganimal::BigAnimal>),
    BigId(Box<bigid::BigId>),
}

impl Provider {
    pub fn new(spec: &AuthSpec, transport: Transport) -> Result<Provider, ProviderError> {
        let injection = spec.injection.clone();
        let source = match &spec.source {
            TokenSourceSpec::Static { token } => {
                Source::Static(static_token::StaticToken::new(token, &injection)?)
            }
            TokenSourceSpec::OAuth(oauth) => Source::OAuth(Box::new(oauth::OAuthGrant::new(
                oauth, injection, transport,
            )?)),
            TokenSourceSpec::BigAnimal(spec) => Source::BigAnimal(Box::new(
                biganimal::BigAnimal::new(spec, injection, transport),
            )),
            TokenSourceSpec::BigId(spec) => {
                Source::BigId(Box::new(bigid::BigId::new(spec, injection, transport)))
            }
        };
        Ok(Provider {
            source,
            secrets: spec.secrets.clone(),
        })
    }

    /// `error` without any configured secret, nor any of `live` (the tokens the call sent).
    fn scrubbed<'a>(
        &'a self,
        error: ProviderError,
        live: impl IntoIterator<Item = &'a Secret>,
    ) -> ProviderError {
        let mut secrets: Vec<&str> = self.secrets.iter().map(Secret::expose).collect();
        secrets.extend(live.into_iter().map(Secret::expose));
        error.scrubbed(&secrets)
    }

    /// A fresh credential without a user: a grant, or the refresh token of `previous`.
    /// Kinds that need a user and have no usable refresh token answer `NeedsLogin`.
    pub async fn obtain(&self, previous: Option<&Credential>) -> Result<Credential, ProviderError> {
        let outcome = match &self.source {
            Source::Static(token) => Ok(token.credential()),
            Source::OAuth(grant) => grant.obtain(previous).await,
            Source::BigAnimal(biganimal) => biganimal.obtain(previous).await,
            Source::BigId(bigid) => bigid.obtain().await,
        };
        outcome.map_err(|error| {
            self.scrubbed(error, previous.into_iter().flat_map(Credential::secrets))
        })
    }

    /// A credential available without any request: static tokens.
    pub fn immediate_credential(&self) -> Option<Credential> {
        match &self.source {
            Source::Static(token) => Some(token.credential()),
            _ => None,
        }
    }

    /// Static tokens never change, so they need no refresher.
    pub fn refreshes(&self) -> bool {
        !matches!(self.source, Source::Static(_))
    }

    /// Fleet mode's default when Redis is down: fetch alone only where a new grant forks
    /// no refresh-token chain (static keys, client credentials, password, BigID's
    /// exchange of a fixed user token).
    pub fn default_when_redis_down(&self) -> crate::fleet::WhenRedisDown {
        let independent = match &self.source {
            Source::Static(_) | Source::BigId(_) => true,
            Source::OAuth(grant) => grant.grants_independent_tokens(),
            Source::BigAnimal(_) => false,
        };
        if independent {
            crate::fleet::WhenRedisDown::FetchLocally
        } else {
            crate::fleet::WhenRedisDown::KeepHeldToken
        }
    }

    pub fn login_method(&self) -> LoginMethod {
        match &self.source {
            Source::Static(_) | Source::BigId(_) => LoginMethod::Direct,
            Source::OAuth(grant) => grant.login_method(),
            Source::BigAnimal(_) => LoginMethod::DeviceCode,
        }
    }

    pub async fn start_device_login(&self) -> Result<DeviceAuthorization, ProviderError> {
        let outcome = match &self.source {
            Source::OAuth(grant) => grant.start_device_login().await,
            Source::BigAnimal(biganimal) => biganimal.start_device_login().await,
            _ => Err(ProviderError::Malformed(
                "this upstream does not log in with a device code".into(),
            )),
        };
        outcome.map_err(|error| self.scrubbed(error, []))
    }

    pub async fn finish_device_login(
        &self,
        authorization: &DeviceAuthorization,
    ) -> Result<Credential, ProviderError> {
        let outcome = match &self.source {
            Source::OAuth(grant) => grant.finish_device_login(authorization).await,
            Source::BigAnimal(biganimal) => biganimal.finish_device_login(authorization).await,
            _ => Err(ProviderError::Malformed(
                "this upstream does not log in with a device code".into(),
            )),
        };
        outcome.map_err(|error| self.scrubbed(error, [&authorization.device_code]))
    }

    pub fn start_browser_login(
        &self,
        default_redirect_uri: &str,
    ) -> Result<BrowserLogin, ProviderError> {
        match &self.source {
            Source::OAuth(grant) => grant.start_browser_login(default_redirect_uri),
            _ => Err(ProviderError::Malformed(
                "this upstream does not log in through a browser".into(),
            )),
        }
    }

    pub async fn finish_browser_login(
        &self,
        login: &BrowserLogin,
        callback: &CallbackParams,
    ) -> Result<Credential, ProviderError> {
        let outcome = match &self.source {
            Source::OAuth(grant) => grant.finish_browser_login(login, callback).await,
            _ => Err(ProviderError::Malformed(
                "this upstream does not log in through a browser".into(),
            )),
        };
        // The code and the PKCE verifier are as secret as the token they buy.
        let code = callback.get("code").map(Secret::new);
        outcome.map_err(|error| self.scrubbed(error, code.iter().chain(&login.verifier)))
    }

    /// Revokes a credential at the vendor where it offers that (AMM, `revocation_url`).
    pub async fn revoke(&self, credential: &Credential) -> Result<Revocation, ProviderError> {
        let outcome = match &self.source {
            Source::OAuth(grant) => grant.revoke(credential).await,
            _ => Ok(Revocation::NotOffered),
        };
        outcome.map_err(|error| self.scrubbed(error, credential.secrets()))
    }
}

/// What logging out did at the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The vendor's revocation endpoint accepted it: the token is dead.
    Revoked,
    /// The vendor has no revocation endpoint (or none is configured): the token stays
    /// valid until it expires.
    NotOffered,
}

/// Why a token could not be obtained. Carries no secret and no response body, so it can be
/// logged and shown to clients as is. `Clone` so every request waiting on one token request
/// can be told the same outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// `url` has no query and no userinfo; `reason` is the cause a person can act on
    /// ("connection refused"), not the client library's wrapping.
    #[error("token endpoint {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("token endpoint did not answer within {0:?}")]
    Timeout(Duration),
    #[error("token endpoint answered HTTP {status}{}", error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        error: Option<String>,
    },
    #[error("token endpoint refused: {error}{}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    OAuth {
        error: String,
        description: Option<String>,
    },
    #[error("{0}")]
    Rejected(String),
    #[error("token endpoint answer is not a token response: {0}")]
    Malformed(String),
    #[error("no token yet: this upstream needs a login")]
    NeedsLogin,
    /// RFC 8628 `expired_token`, or the code's `expires_in` passed unapproved.
    #[error("the login code expired before anyone approved it")]
    LoginExpired,
    /// RFC 8628 / RFC 6749 `access_denied`: the person said no.
    #[error("the login was denied at the vendor")]
    LoginDenied,
    /// Fleet mode: the shared token store cannot give a token now (Redis unreachable, or
    /// the lease holder has not refreshed in time), and this upstream's tokens must not be
    /// fetched apart from the fleet.
    #[error("fleet token store: {0}")]
    Fleet(String),
}

impl ProviderError {
    /// Errors that retrying cannot fix: the server refuses the client, the grant or access
    /// itself. Retries stop until a login (or a config change).
    pub fn is_permanent(&self) -> bool {
        match self {
            ProviderError::LoginExpired | ProviderError::LoginDenied => true,
            ProviderError::OAuth { error, .. } => matches!(
                error.as_str(),
                "invalid_client"
                    | "invalid_grant"
                    | "unauthorized_client"
                    | "unsupported_grant_type"
                    | "access_denied"
            ),
            _ => false,
        }
    }

    /// The vendor refuses the configured client itself: only a config change helps, not a
    /// login.
    pub fn is_bad_client(&self) -> bool {
        matches!(
            self,
            ProviderError::OAuth { error, .. }
                if matches!(error.as_str(), "invalid_client" | "unauthorized_client" | "unsupported_grant_type")
        )
    }

    /// What a person can do about it, for errors a new login fixes.
    pub fn hint(&self, upstream: &str) -> Option<String> {
        match self {
            ProviderError::NeedsLogin => Some(format!(
                "log in with `tokenproxy login {upstream}`, Log in on the status page, or POST /-/upstreams/{upstream}/login"
            )),
            ProviderError::LoginExpired | ProviderError::LoginDenied => Some(format!(
                "start again with `tokenproxy login {upstream}` or Log in on the status page"
            )),
            _ if self.is_bad_client() => Some(format!(
                "check client_id, client_secret and the grant of upstreams.{upstream}.auth"
            )),
            _ => None,
        }
    }

    /// The same error with `secrets` taken out of every text a vendor may have written.
    pub fn scrubbed(self, secrets: &[&str]) -> ProviderError {
        let clean = |text: String| crate::scrub::scrub(&text, secrets);
        match self {
            ProviderError::Unreachable { url, reason } => ProviderError::Unreachable {
                url: clean(url),
                reason: clean(reason),
            },
            ProviderError::Status {
                status,
                retry_after,
                error,
            } => ProviderError::Status {
                status,
                retry_after,
                error: error.map(clean),
            },
            ProviderError::OAuth { error, description } => ProviderError::OAuth {
                error: clean(error),
                description: description.map(clean),
            },
            ProviderError::Rejected(message) => ProviderError::Rejected(clean(message)),
            ProviderError::Malformed(message) => ProviderError::Malformed(clean(message)),
            other @ (ProviderError::Timeout(_)
            | ProviderError::Fleet(_)
            | ProviderError::NeedsLogin
            | ProviderError::LoginExpired
            | ProviderError::LoginDenied) => other,
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The OAuth `error` code, whatever status it came with: device polls get
    /// `slow_down` as 400 (RFC 8628) or as 429 (Auth0).
    pub fn oauth_code(&self) -> Option<&str> {
        match self {
            ProviderError::OAuth { error, .. } => Some(error),
            ProviderError::Status { error, .. } => error.as_deref(),
            _ => None,
        }
    }
}

impl From<UnsendableToken> for ProviderError {
    fn from(error: UnsendableToken) -> Self {
        ProviderError::Malformed(error.to_string())
    }
}

/// An error answer from an endpoint outside the `oauth2` crate: the OAuth `error` and
/// `error_description` when the body has them, else the status.
pub(crate) fn error_answer(response: &http::Response<Vec<u8>>) -> ProviderError {
    let status = response.status();
    let retry_after = crate::transport::retry_after(response.headers());
    if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
        return ProviderError::Status {
            status: status.as_u16(),
            retry_after,
            error: crate::transport::oauth_error_code(response.body()),
        };
    }
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap_or_default();
    match (&body["error"], &body["error"]["message"]) {
        (serde_json::Value::String(error), _) => ProviderError::OAuth {
            error: error.clone(),
            description: body["error_description"].as_str().map(str::to_owned),
        },
        // BigAnimal's API style: {"error": {"status": 401, "message": "..."}}.
        (_, serde_json::Value::String(message)) => {
            ProviderError::Rejected(format!("HTTP {}: {message}", status.as_u16()))
        }
        _ => ProviderError::Status {
            status: status.as_u16(),
            retry_after,
            error: None,
        },
    }
}

/// What is wrong with a 200 answer that should hold a token, in a person's words: never
/// the body, which could hold a token.
pub(crate) fn token_json_error(path: &str, error: &serde_json::Error) -> ProviderError {
    use serde_json::error::Category;
    let text = error.to_string();
    ProviderError::Malformed(match error.classify() {
        Category::Syntax | Category::Eof => "the answer is not JSON".to_owned(),
        Category::Data => match text
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
        {
            Some((field, _)) => format!("no {field} in the token endpoint's answer"),
            // serde's other messages quote the value, which may be a token: say where only.
            None if path == "." => "a field has the wrong type or value".to_owned(),
            None => format!("`{path}` has the wrong type or value"),
        },
        Category::Io => "the answer could not be read".to_owned(),
    })
}

/// A successful token answer outside the `oauth2` crate (device polls): RFC 6749 5.1.
pub(crate) fn parse_token_json(
    body: &[u8],
    sent_at: Instant,
) -> Result<oauth::TokenSet, ProviderError> {
    #[derive(serde::Deserialize)]
    struct TokenJson {
        access_token: String,
        expires_in: Option<u64>,
        refresh_token: Option<String>,
        refresh_expires_in: Option<u64>,
    }
    let answer: TokenJson =
        serde_json::from_slice(body).map_err(|error| token_json_error(".", &error))?;
    Ok(oauth::TokenSet {
        access_token: Secret::new(answer.access_token),
        refresh_token: answer.refresh_token.map(Secret::new),
        lifetime: answer.expires_in.map(Duration::from_secs),
        refresh_lifetime: answer
            .refresh_expires_in
            .filter(|&s| s > 0)
            .map(Duration::from_secs),
        sent_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(body: &str) -> String {
        match parse_token_json(body.as_bytes(), Instant::now()) {
            Err(ProviderError::Malformed(reason)) => reason,
            other => panic!("not malformed: {:?}", other.map(|set| set.lifetime)),
        }
    }

    #[test]
    fn a_broken_token_answer_is_described_without_its_values() {
        assert_eq!(
            parse_error(r#"{"token_type":"Bearer"}"#),
            "no access_token in the token endpoint's answer"
        );
        assert_eq!(parse_error("<html>login</html>"), "the answer is not JSON");
        let wrong = parse_error(r#"{"access_token":"t","expires_in":"secret-value"}"#);
        assert_eq!(wrong, "a field has the wrong type or value");
    }

    #[test]
    fn slow_down_counts_whatever_status_it_comes_with() {
        let as_429 = ProviderError::Status {
            status: 429,
            retry_after: None,
            error: Some("slow_down".into()),
        };
        let as_400 = ProviderError::OAuth {
            error: "slow_down".into(),
            description: None,
        };
        assert_eq!(as_429.oauth_code(), Some("slow_down"));
        assert_eq!(as_400.oauth_code(), Some("slow_down"));
    }
}
