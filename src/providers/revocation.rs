//! RFC 7009 token revocation, for the generic kinds with a `revocation_url`: the refresh
//! token first (the server then drops the grant, and with it, usually, its access tokens),
//! then the access token, each with its `token_type_hint` and the client's authentication.

use crate::credential::Credential;
use crate::secret::Secret;
use crate::transport::TOKEN_REQUEST_TIMEOUT;

use super::oauth::TokenEndpoint;
use super::ProviderError;

/// Ok only when the server accepted every revocation: a 200 means the token is dead, or
/// was already (RFC 7009 2.2).
pub async fn revoke(
    endpoint: &TokenEndpoint,
    revocation_url: &str,
    credential: &Credential,
) -> Result<(), ProviderError> {
    if let Some(refresh_token) = &credential.refresh_token {
        revoke_one(endpoint, revocation_url, refresh_token, "refresh_token").await?;
    }
    revoke_one(endpoint, revocation_url, &credential.token, "access_token").await
}

async fn revoke_one(
    endpoint: &TokenEndpoint,
    revocation_url: &str,
    token: &Secret,
    hint: &str,
) -> Result<(), ProviderError> {
    let request = endpoint.form_request(
        revocation_url,
        vec![
            ("token", token.expose().to_owned()),
            ("token_type_hint", hint.to_owned()),
        ],
    )?;
    let response = endpoint
        .transport()
        .send_buffered(request, TOKEN_REQUEST_TIMEOUT)
        .await?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(super::error_answer(&response))
    }
}
