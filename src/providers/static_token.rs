//! `kind = "static"`: a fixed token or API key (BigAnimal access keys, personal tokens).

use crate::credential::Credential;
use crate::schema::FieldError;
use crate::secret::Secret;

use super::fields::AuthFields;
use super::{injection, AuthSpec, Injection, ProviderError, TokenSourceSpec};

pub(super) fn spec(fields: &AuthFields) -> Result<AuthSpec, FieldError> {
    Ok(AuthSpec {
        kind: fields.kind().to_owned(),
        source: TokenSourceSpec::Static {
            token: fields.required_secret("token")?,
        },
        injection: injection(fields, Vec::new(), "Bearer")?,
        refresh_skew: None,
        secrets: Vec::new(),
    })
}

pub struct StaticToken {
    token: Secret,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl StaticToken {
    pub fn new(token: &Secret, injection: &Injection) -> Result<Self, ProviderError> {
        Ok(StaticToken {
            token: token.clone(),
            headers: injection.headers_for(token)?,
        })
    }

    pub fn credential(&self) -> Credential {
        Credential::without_expiry(self.token.clone(), self.headers.clone())
    }
}
