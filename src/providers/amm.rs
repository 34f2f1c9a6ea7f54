//! AMM (Sierra Wireless / Semtech AirLink Mobility Manager): `/api/oauth/token` with the
//! client authenticated by HTTP Basic; password, authorization-code and implicit grants;
//! single-use refresh tokens; revocation at `/api/oauth/expire`. Often on-premises on a
//! private CA (`ca_file`). The vendor's examples put parameters in the query string; the
//! text says form body, which is the default (`params_in = "query"` for the other).

use crate::schema::{FieldError, Target};
use crate::secret::Secret;
use crate::transport::TOKEN_REQUEST_TIMEOUT;

use super::fields::AuthFields;
use super::oauth::{self, ClientAuth, FlowKind, PresetDefaults, TokenEndpoint};
use super::{AuthSpec, ProviderError};

pub(super) fn spec(fields: &AuthFields, target: &Target) -> Result<AuthSpec, FieldError> {
    let flow = match fields.text("grant").as_deref() {
        None | Some("password") => FlowKind::Password,
        Some("authorization_code") => FlowKind::AuthorizationCode,
        Some("implicit") => FlowKind::Implicit,
        Some(other) => {
            return Err(fields.error(
                "grant",
                format!("{other:?} is not an AMM grant; use \"password\", \"authorization_code\" or \"implicit\""),
            ))
        }
    };
    // The token endpoint always wants the client's credentials; implicit never calls it.
    if flow != FlowKind::Implicit && fields.secret("client_secret").is_none() {
        return Err(fields.error(
            "client_secret",
            "missing; AMM authenticates the API client on every token request",
        ));
    }
    let defaults = PresetDefaults {
        token_url: Some(target.join("api/oauth/token")),
        authorize_url: Some(target.join("api/oauth/authorize")),
        expire_url: Some(target.join("api/oauth/expire")),
        client_auth: Some(ClientAuth::Basic),
        // AMM documents no PKCE.
        pkce: Some(false),
        ..PresetDefaults::default()
    };
    oauth::spec(fields, flow, defaults)
}

/// `POST {expire_url}?access_token=...` revokes the access token and its refresh token. A
/// 401 means the token was no longer valid, which is what logout wants anyway.
pub async fn expire(
    endpoint: &TokenEndpoint,
    expire_url: &str,
    token: &Secret,
) -> Result<(), ProviderError> {
    let mut url = url::Url::parse(expire_url)
        .map_err(|_| ProviderError::Malformed("expire_url is not a URL".into()))?;
    url.query_pairs_mut()
        .append_pair("access_token", token.expose());
    let request = endpoint.form_request(url.as_str(), Vec::new())?;
    let response = endpoint
        .transport()
        .send_buffered(request, TOKEN_REQUEST_TIMEOUT)
        .await?;
    match response.status().as_u16() {
        200..=299 | 401 => Ok(()),
        _ => Err(super::error_answer(&response)),
    }
}
