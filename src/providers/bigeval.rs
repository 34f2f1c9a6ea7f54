//! BiG EVAL: IdentityServer client credentials at `{server}/connect/token` with scope
//! `bigeval-api-v1`. Tokens are opaque and long-lived; `expires_in` is trusted over the
//! documentation's "90 days".

use crate::schema::{FieldError, Target};

use super::fields::AuthFields;
use super::oauth::{self, ClientAuth, FlowKind, PresetDefaults};
use super::AuthSpec;

pub(super) fn spec(fields: &AuthFields, target: &Target) -> Result<AuthSpec, FieldError> {
    let defaults = PresetDefaults {
        token_url: Some(target.join("connect/token")),
        scope: vec!["bigeval-api-v1".to_owned()],
        client_auth: Some(ClientAuth::Body),
        ..PresetDefaults::default()
    };
    oauth::spec(fields, FlowKind::ClientCredentials, defaults)
}
