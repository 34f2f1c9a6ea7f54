//! CAEPE (seed `003`): Keycloak realm `biqmind` plus the CAEPE API.
//!
//! - Password grant with the public client `cape-client` returns a refresh token
//!   (`refresh_expires_in` 1800); client credentials with the confidential service-account client
//!   return none, as Keycloak does.
//! - Access tokens are JWTs living 300 s; shorten with [`OAuthSim::set_access_ttl`].
//! - Refresh tokens are single-use (Keycloak's "revoke refresh token" realm setting), the strict
//!   case a client must handle.
//! - Wrong user credentials answer 401 `invalid_grant`, as Keycloak does (RFC 6749 says 400).
//! - The API wants `Authorization: Bearer <token>` and `Organization: <org>`.

use std::time::Duration;

use super::oauth::{self, ClientAuth, OAuthSim, OAuthSimConfig, SimClient};

pub const TOKEN_PATH: &str = "/realms/biqmind/protocol/openid-connect/token";
/// The public client from the CAEPE docs, used with the password grant.
pub const PUBLIC_CLIENT_ID: &str = "cape-client";
/// The service-account client used with client credentials.
pub const SERVICE_CLIENT_ID: &str = "caepe-service";
pub const DEFAULT_SERVICE_SECRET: &str = "caepe-service-secret";
pub const DEFAULT_USERNAME: &str = "demo@caepe.example";
pub const DEFAULT_PASSWORD: &str = "demo-password";
pub const ACCESS_TTL: Duration = Duration::from_secs(300);
pub const REFRESH_TTL: Duration = Duration::from_secs(1800);

/// The CAEPE preset with the default service secret and the one default user.
pub fn config(org: &str) -> OAuthSimConfig {
    config_with(
        org,
        DEFAULT_SERVICE_SECRET,
        &[(DEFAULT_USERNAME, DEFAULT_PASSWORD)],
    )
}

/// The CAEPE preset with your own service-account secret and users.
pub fn config_with(org: &str, service_secret: &str, users: &[(&str, &str)]) -> OAuthSimConfig {
    OAuthSimConfig {
        vendor: "CAEPE".to_owned(),
        token_path: TOKEN_PATH.to_owned(),
        clients: vec![
            SimClient::public(PUBLIC_CLIENT_ID),
            SimClient::confidential(SERVICE_CLIENT_ID, service_secret),
        ],
        users: users
            .iter()
            .map(|(user, password)| ((*user).to_owned(), (*password).to_owned()))
            .collect(),
        allow_client_credentials: true,
        allow_password: true,
        access_ttl: ACCESS_TTL,
        refresh_ttl: Some(REFRESH_TTL),
        refresh_for_client_credentials: false,
        refresh_single_use: true,
        required_scope: None,
        // Keycloak accepts client_secret_post and client_secret_basic.
        client_auth: ClientAuth::Either,
        jwt_tokens: true,
        keycloak_fields: true,
        invalid_user_status: 401,
        api_header: "authorization".to_owned(),
        api_scheme: "Bearer ".to_owned(),
        api_required_headers: vec![("organization".to_owned(), org.to_owned())],
    }
}

/// Starts CAEPE for organization `org` with [`config`]'s defaults on `http://127.0.0.1:0`.
/// For other users or secrets: `oauth::start(caepe::config_with(..)).await`.
pub async fn start(org: &str) -> OAuthSim {
    oauth::start(config(org)).await
}
