//! Where tokens come from. One file per token kind and one per vendor preset; a preset only
//! fills in defaults over a generic kind, so every vendor quirk is also a plain option.
//!
//! `AuthSpec` is the validated `[upstreams.NAME.auth]` table; `Provider` is what obtains a
//! `Credential` from it at run time.

mod bigeval;
mod caepe;
mod fields;
mod oauth;
mod static_token;

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::config::{FieldError, RawAuth, Target};
use crate::secret::Secret;
use crate::tokens::Credential;
use crate::transport::Transport;

pub use oauth::{ClientAuth, Grant, OAuthSpec};

/// How an upstream authenticates, validated.
#[derive(Debug, Clone)]
pub struct AuthSpec {
    /// What the user wrote as `kind`, for status and logs.
    pub kind: String,
    pub source: TokenSourceSpec,
    pub injection: Injection,
    /// How long before expiry to refresh; `None` picks a share of the lifetime.
    pub refresh_skew: Option<Duration>,
}

#[derive(Debug, Clone)]
pub enum TokenSourceSpec {
    Static { token: Secret },
    OAuth(Box<OAuthSpec>),
}

/// The headers a token is sent in: `header: scheme token`, plus fixed extra headers
/// (CAEPE's `Organization`).
#[derive(Debug, Clone)]
pub struct Injection {
    pub header: HeaderName,
    /// `"Bearer"` by default; empty for a raw token.
    pub scheme: String,
    pub extra: Vec<(HeaderName, HeaderValue)>,
}

impl Injection {
    /// The full header set for one token. Values are marked sensitive so HTTP/2 never
    /// puts them in a compression table.
    pub fn headers_for(
        &self,
        token: &Secret,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, ProviderError> {
        let value = if self.scheme.is_empty() {
            token.expose().to_owned()
        } else {
            format!("{} {}", self.scheme, token.expose())
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            ProviderError::Malformed("the token contains characters not allowed in a header".into())
        })?;
        value.set_sensitive(true);
        let mut headers = Vec::with_capacity(1 + self.extra.len());
        headers.push((self.header.clone(), value));
        headers.extend(self.extra.iter().cloned());
        Ok(headers)
    }
}

impl AuthSpec {
    /// Validates an auth table. `field` is its dotted path, for messages.
    pub fn from_raw(raw: &RawAuth, target: &Target, field: &str) -> Result<AuthSpec, FieldError> {
        let kind = raw.kind.as_deref().ok_or_else(|| {
            FieldError::new(
                format!("{field}.kind"),
                format!("missing; one of {}", KINDS.join(", ")),
            )
        })?;
        let fields = fields::AuthFields::new(raw, field, kind);
        let mut spec = match kind {
            "static" => static_token::spec(&fields)?,
            "client_credentials" => {
                oauth::spec(&fields, oauth::GrantKind::ClientCredentials, None)?
            }
            "password" => oauth::spec(&fields, oauth::GrantKind::Password, None)?,
            "bigeval" => bigeval::spec(&fields, target)?,
            "caepe" => caepe::spec(&fields)?,
            other => {
                return Err(FieldError::new(
                    format!("{field}.kind"),
                    format!("unknown kind {other:?}; one of {}", KINDS.join(", ")),
                ))
            }
        };
        spec.refresh_skew = fields.duration("refresh_skew")?;
        fields.reject_unused()?;
        Ok(spec)
    }
}

const KINDS: &[&str] = &[
    "static",
    "client_credentials",
    "password",
    "bigeval",
    "caepe",
];

/// Obtains credentials for one upstream.
pub enum Provider {
    Static(static_token::StaticToken),
    OAuth(Box<oauth::OAuthGrant>),
}

impl Provider {
    pub fn new(spec: &AuthSpec, transport: Transport) -> Result<Provider, ProviderError> {
        Ok(match &spec.source {
            TokenSourceSpec::Static { token } => {
                Provider::Static(static_token::StaticToken::new(token, &spec.injection)?)
            }
            TokenSourceSpec::OAuth(oauth) => Provider::OAuth(Box::new(oauth::OAuthGrant::new(
                oauth,
                spec.injection.clone(),
                transport,
            )?)),
        })
    }

    /// A fresh credential. `previous` lets a grant use its refresh token.
    pub async fn obtain(&self, previous: Option<&Credential>) -> Result<Credential, ProviderError> {
        match self {
            Provider::Static(token) => Ok(token.credential()),
            Provider::OAuth(grant) => grant.obtain(previous).await,
        }
    }

    /// A credential available without any request: static tokens.
    pub fn immediate_credential(&self) -> Option<Credential> {
        match self {
            Provider::Static(token) => Some(token.credential()),
            Provider::OAuth(_) => None,
        }
    }

    /// Static tokens never change, so they need no refresher.
    pub fn refreshes(&self) -> bool {
        !matches!(self, Provider::Static(_))
    }
}

/// Why a token could not be obtained. Carries no secret and no response body, so it can be
/// logged and shown to clients as is. `Clone` so every request waiting on one token request
/// can be told the same outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("token endpoint did not answer within {0:?}")]
    Timeout(Duration),
    #[error("token endpoint answered HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("token endpoint refused: {error}{}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    OAuth {
        error: String,
        description: Option<String>,
    },
    #[error("token endpoint answer is not a token response: {0}")]
    Malformed(String),
}

/// Reads `header`, `scheme` and `headers`, the injection options every kind has.
fn injection(
    fields: &fields::AuthFields,
    mut extra: Vec<(HeaderName, HeaderValue)>,
) -> Result<Injection, FieldError> {
    let header = match fields.text("header") {
        None => http::header::AUTHORIZATION,
        Some(name) => HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| fields.error("header", format!("{name:?} is not a valid header name")))?,
    };
    let scheme = fields.text("scheme").unwrap_or_else(|| "Bearer".to_owned());
    if scheme.contains(char::is_whitespace) {
        return Err(fields.error(
            "scheme",
            "must be one word such as \"Bearer\", or \"\" for a raw token",
        ));
    }
    if let Some(headers) = fields.headers() {
        extra.extend(crate::config::header_pairs(
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
