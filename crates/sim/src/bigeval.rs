//! BiG EVAL's IdentityServer (seed `002`): client credentials only, credentials in the form body,
//! scope `bigeval-api-v1`, opaque tokens that live `expires_in` = 62208000 s (the seed's text says
//! 90 days, its sample says 720; clients must trust `expires_in`), no refresh token.

use std::time::Duration;

use super::oauth::{self, ClientAuth, OAuthSim, OAuthSimConfig, SimClient};

pub const TOKEN_PATH: &str = "/connect/token";
pub const SCOPE: &str = "bigeval-api-v1";
/// The seed's sample `expires_in`.
pub const ACCESS_TTL: Duration = Duration::from_secs(62_208_000);

pub fn config(client_id: &str, client_secret: &str) -> OAuthSimConfig {
    OAuthSimConfig {
        vendor: "BiG EVAL".to_owned(),
        token_path: TOKEN_PATH.to_owned(),
        clients: vec![SimClient::confidential(client_id, client_secret)],
        users: Vec::new(),
        allow_client_credentials: true,
        allow_password: false,
        access_ttl: ACCESS_TTL,
        refresh_ttl: None,
        refresh_for_client_credentials: false,
        refresh_single_use: false,
        required_scope: Some(SCOPE.to_owned()),
        client_auth: ClientAuth::Body,
        jwt_tokens: false,
        keycloak_fields: false,
        invalid_user_status: 400,
        api_header: "authorization".to_owned(),
        api_scheme: "Bearer ".to_owned(),
        api_required_headers: Vec::new(),
    }
}

/// Starts a BiG EVAL server on `http://127.0.0.1:0`; the token URL is `{url}/connect/token`.
pub async fn start(client_id: &str, client_secret: &str) -> OAuthSim {
    oauth::start(config(client_id, client_secret)).await
}
