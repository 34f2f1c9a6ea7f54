//! A scripted OAuth2 authorization server (RFC 6749) plus the API it protects: the base of every
//! vendor simulator.
//!
//! `POST {token_path}` is the token endpoint (grants `client_credentials`, `password`,
//! `refresh_token`); every other path is the protected API. Tests steer it at run time through
//! [`OAuthSim`]: failure modes ([`TokenMode`]), revocation, TTLs, and counters.
//!
//! Expiry uses `tokio::time::Instant`, so tests running with paused time control it; JWT `exp`
//! and `iat` claims use the wall clock, as a real server's would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::grant::{self, GrantCounts, RefreshGrant, RefreshRefusal, TokenGrant};
use super::{
    api_answer, drain_body, json_response, lock_state, random_hex, response, set_header,
    strip_scheme, tls_acceptor, unix_now, unsigned_jwt, SimBody, SimServer,
};

/// Token requests are small forms; anything bigger is a client bug worth a 413.
const MAX_TOKEN_REQUEST_BODY: usize = 64 * 1024;

/// A registered OAuth client.
#[derive(Clone, Debug)]
pub struct SimClient {
    pub id: String,
    /// `None` = public client (authenticates with `client_id` only).
    pub secret: Option<String>,
}

impl SimClient {
    pub fn confidential(id: &str, secret: &str) -> Self {
        SimClient {
            id: id.to_owned(),
            secret: Some(secret.to_owned()),
        }
    }

    pub fn public(id: &str) -> Self {
        SimClient {
            id: id.to_owned(),
            secret: None,
        }
    }
}

/// Where the token endpoint accepts client credentials (RFC 6749 2.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` / `client_secret` form parameters.
    Body,
    /// `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
    Basic,
    /// Either one, but never both in the same request.
    Either,
}

/// Everything that distinguishes one vendor's server from another's.
#[derive(Clone, Debug)]
pub struct OAuthSimConfig {
    /// Shown in API answers and `WWW-Authenticate` realms.
    pub vendor: String,
    pub token_path: String,
    pub clients: Vec<SimClient>,
    /// (username, password) pairs accepted by the password grant.
    pub users: Vec<(String, String)>,
    pub allow_client_credentials: bool,
    pub allow_password: bool,
    pub access_ttl: Duration,
    /// `None` = never issue refresh tokens (and refuse the refresh grant).
    pub refresh_ttl: Option<Duration>,
    /// Keycloak issues no refresh token to client credentials.
    pub refresh_for_client_credentials: bool,
    /// A refresh token dies the moment it is used (rotation is always on).
    pub refresh_single_use: bool,
    /// The request's `scope` must contain this; the answer then carries `scope`.
    pub required_scope: Option<String>,
    pub client_auth: ClientAuth,
    /// Access (and refresh) tokens are unsigned JWTs with `exp`/`iat`/`jti` instead of 64 hex.
    pub jwt_tokens: bool,
    /// Add Keycloak's `refresh_expires_in`, `not-before-policy`, `session_state`, `scope`.
    pub keycloak_fields: bool,
    /// Status for wrong user credentials: RFC 6749 says 400, Keycloak answers 401.
    pub invalid_user_status: u16,
    /// Header the API reads the token from (lower-case).
    pub api_header: String,
    /// Prefix before the token, e.g. `"Bearer "`; `""` = raw token.
    pub api_scheme: String,
    /// Headers every API call must carry with exactly this value, e.g. `("organization", "acme")`.
    pub api_required_headers: Vec<(String, String)>,
}

impl Default for OAuthSimConfig {
    fn default() -> Self {
        OAuthSimConfig {
            vendor: "sim".to_owned(),
            token_path: "/oauth/token".to_owned(),
            clients: vec![SimClient::confidential("sim-client", "sim-secret")],
            users: vec![("sim-user".to_owned(), "sim-password".to_owned())],
            allow_client_credentials: true,
            allow_password: true,
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Some(Duration::from_secs(86400)),
            refresh_for_client_credentials: false,
            refresh_single_use: true,
            required_scope: None,
            client_auth: ClientAuth::Either,
            jwt_tokens: false,
            keycloak_fields: false,
            invalid_user_status: 400,
            api_header: "authorization".to_owned(),
            api_scheme: "Bearer ".to_owned(),
            api_required_headers: Vec::new(),
        }
    }
}

/// How the token endpoint answers; set at run time with [`OAuthSim::set_mode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenMode {
    Normal,
    /// Every token request fails with this RFC 6749 5.2 error.
    OAuthError {
        status: u16,
        error: String,
        description: String,
    },
    /// 200 `text/html`: a login page or captive portal instead of JSON.
    Html,
    /// 200 `application/json` that is not JSON.
    InvalidJson,
    /// 503 with `Retry-After: 3`.
    ServerError,
    /// 503 with no `Retry-After`: an outage behind a load balancer.
    Down,
    /// Wait, then answer normally.
    Delay(Duration),
}

/// A running authorization server + API with its run-time controls.
pub struct OAuthSim {
    server: SimServer,
    token_path: String,
    state: Arc<Mutex<SimState>>,
}

/// Starts the simulator on `http://127.0.0.1:0`.
pub async fn start(config: OAuthSimConfig) -> OAuthSim {
    serve(config, None).await
}

/// Starts the simulator on `https://127.0.0.1:0` (ALPN `h2`, `http/1.1`).
///
/// Panics if the certificate and key do not form a usable server identity.
pub async fn start_tls(
    config: OAuthSimConfig,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> OAuthSim {
    let acceptor =
        tls_acceptor(cert_chain, key).expect("oauth sim: invalid TLS certificate or key");
    serve(config, Some(acceptor)).await
}

async fn serve(config: OAuthSimConfig, acceptor: Option<TlsAcceptor>) -> OAuthSim {
    let token_path = config.token_path.clone();
    let state = Arc::new(Mutex::new(SimState::new(config)));
    let server = SimServer::with_state(&state, acceptor, handle).await;
    OAuthSim {
        server,
        token_path,
        state,
    }
}

impl OAuthSim {
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The full token endpoint URL.
    pub fn token_url(&self) -> String {
        format!("{}{}", self.server.url(), self.token_path)
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        lock_state(&self.state)
    }

    /// Every POST to the token path, counted before any check.
    pub fn token_requests(&self) -> usize {
        self.state().counters.token_requests
    }

    /// Token requests per `grant_type` as sent (counted before validation, after form parsing).
    pub fn grant_counts(&self) -> HashMap<String, usize> {
        self.state().counters.grants.all()
    }

    pub fn count_for_grant(&self, grant_type: &str) -> usize {
        self.state().counters.grants.get(grant_type)
    }

    /// Successful token responses.
    pub fn tokens_issued(&self) -> usize {
        self.state().counters.tokens_issued
    }

    /// Requests to the protected API (any path but the token path).
    pub fn api_requests(&self) -> usize {
        self.state().counters.api_requests
    }

    /// API requests that were answered 200.
    pub fn api_authorized(&self) -> usize {
        self.state().counters.api_authorized
    }

    /// Attempts to use a single-use refresh token a second time; a correct client keeps this 0.
    pub fn used_refresh_token_reused(&self) -> usize {
        self.state().counters.refresh_reuse
    }

    pub fn set_mode(&self, mode: TokenMode) {
        self.state().mode = mode;
    }

    /// Every access and refresh token issued so far becomes invalid.
    pub fn revoke_all(&self) {
        let state = &mut *self.state();
        grant::revoke_all(
            state.access_tokens.values_mut(),
            state.refresh_tokens.values_mut(),
        );
    }

    /// Lifetime of access tokens issued from now on.
    pub fn set_access_ttl(&self, ttl: Duration) {
        self.state().config.access_ttl = ttl;
    }

    /// Lifetime of refresh tokens issued from now on (`None` stops issuing them).
    pub fn set_refresh_ttl(&self, ttl: Option<Duration>) {
        self.state().config.refresh_ttl = ttl;
    }

    /// Access tokens the API would accept right now.
    pub fn valid_access_tokens(&self) -> usize {
        grant::count_valid(&self.state().access_tokens)
    }

    /// A copy of the configuration as currently in effect.
    pub fn config(&self) -> OAuthSimConfig {
        self.state().config.clone()
    }
}

struct SimState {
    config: OAuthSimConfig,
    mode: TokenMode,
    access_tokens: HashMap<String, TokenGrant>,
    refresh_tokens: HashMap<String, RefreshGrant<Granted>>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    token_requests: usize,
    grants: GrantCounts,
    tokens_issued: usize,
    api_requests: usize,
    api_authorized: usize,
    refresh_reuse: usize,
}

/// What a refresh token was issued for.
struct Granted {
    username: Option<String>,
    scope: Option<String>,
}

/// Who the tokens are for.
struct Subject {
    client_id: String,
    username: Option<String>,
    scope: Option<String>,
}

impl SimState {
    fn new(config: OAuthSimConfig) -> Self {
        SimState {
            config,
            mode: TokenMode::Normal,
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// Issues an access token (and a refresh token when the grant earns one); returns the
    /// RFC 6749 5.1 response body.
    fn issue(&mut self, subject: Subject, grant_type: &str) -> Value {
        let now = Instant::now();
        self.forget_expired(now);
        let config = &self.config;
        let access_ttl = config.access_ttl;
        let refresh_ttl = config.refresh_ttl.filter(|_| {
            grant_type != "client_credentials" || config.refresh_for_client_credentials
        });

        let access_token = self.new_token(&subject, access_ttl, "Bearer");
        self.access_tokens
            .insert(access_token.clone(), TokenGrant::new(now, access_ttl));

        let mut body = Map::new();
        body.insert("access_token".into(), json!(access_token));
        body.insert("expires_in".into(), json!(whole_seconds(access_ttl)));
        if let Some(ttl) = refresh_ttl {
            let refresh_token = self.new_token(&subject, ttl, "Refresh");
            body.insert("refresh_expires_in".into(), json!(whole_seconds(ttl)));
            body.insert("refresh_token".into(), json!(refresh_token));
            let granted = Granted {
                username: subject.username.clone(),
                scope: subject.scope.clone(),
            };
            self.refresh_tokens.insert(
                refresh_token,
                RefreshGrant::new(&subject.client_id, granted, now, ttl),
            );
        } else if self.config.keycloak_fields {
            // Keycloak reports 0 when it issues no refresh token.
            body.insert("refresh_expires_in".into(), json!(0));
        }
        if !self.config.keycloak_fields {
            body.remove("refresh_expires_in");
        }
        body.insert("token_type".into(), json!("Bearer"));
        if self.config.keycloak_fields {
            body.insert("not-before-policy".into(), json!(0));
            if subject.username.is_some() {
                body.insert("session_state".into(), json!(uuid_like()));
            }
        }
        if let Some(scope) = self.granted_scope(&subject) {
            body.insert("scope".into(), json!(scope));
        }
        self.counters.tokens_issued += 1;
        Value::Object(body)
    }

    fn granted_scope(&self, subject: &Subject) -> Option<String> {
        if self.config.keycloak_fields {
            // Keycloak always answers its default client scopes plus whatever was asked for.
            let mut scopes = vec!["profile", "email"];
            for scope in subject.scope.iter().flat_map(|scope| scope.split(' ')) {
                if !scope.is_empty() && !scopes.contains(&scope) {
                    scopes.push(scope);
                }
            }
            return Some(scopes.join(" "));
        }
        subject.scope.clone()
    }

    fn new_token(&self, subject: &Subject, ttl: Duration, token_type: &str) -> String {
        if !self.config.jwt_tokens {
            return random_hex::<32>();
        }
        let issued_at = unix_now();
        let mut claims = json!({
            "exp": issued_at + whole_seconds(ttl),
            "iat": issued_at,
            "jti": uuid_like(),
            "iss": self.config.vendor,
            "typ": token_type,
            "azp": subject.client_id,
            "sub": subject.username.clone().unwrap_or_else(|| format!("service-account-{}", subject.client_id)),
        });
        if let Some(username) = &subject.username {
            claims["preferred_username"] = json!(username);
        }
        if let Some(scope) = self.granted_scope(subject) {
            claims["scope"] = json!(scope);
        }
        unsigned_jwt(&claims)
    }

    /// Keeps the maps bounded over a long demo run. Used refresh tokens are kept until they
    /// expire so a reuse is still recognised as one.
    fn forget_expired(&mut self, now: Instant) {
        self.access_tokens.retain(|_, grant| now < grant.expires_at);
        self.refresh_tokens
            .retain(|_, grant| now < grant.expires_at);
    }
}

pub(crate) fn whole_seconds(duration: Duration) -> u64 {
    // A sub-second TTL still has to read as "expires", not "0 = no expiry information".
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

pub(crate) fn uuid_like() -> String {
    let hex = random_hex::<16>();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

async fn handle(request: Request<Incoming>, state: Arc<Mutex<SimState>>) -> Response<SimBody> {
    let token_path = lock_state(&state).config.token_path.clone();
    if request.uri().path() == token_path {
        token_endpoint(request, &state).await
    } else {
        api(request, &state).await
    }
}

/// An RFC 6749 5.2 error.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// Set when the client tried HTTP Basic, so the 401 says how to authenticate.
    basic_challenge: bool,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    fn invalid_client(description: impl Into<String>, basic_challenge: bool) -> Self {
        OAuthError {
            basic_challenge,
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
        }
    }

    fn into_response(self, vendor: &str) -> Response<SimBody> {
        let mut response = error_response(self.status, self.error, &self.description);
        if self.basic_challenge {
            set_header(
                &mut response,
                "www-authenticate",
                &format!("Basic realm=\"{vendor}\""),
            );
        }
        response
    }
}

/// RFC 6749 5.1: token responses must not be cached.
pub(crate) fn no_store(response: &mut Response<SimBody>) {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A 200 answer of a token (or device-code) endpoint, not to be cached.
pub(crate) fn token_response(body: &Value) -> Response<SimBody> {
    let mut response = json_response(StatusCode::OK, body);
    no_store(&mut response);
    response
}

/// An RFC 6749 5.2 `{"error", "error_description"}` answer, not to be cached.
pub(crate) fn error_response(
    status: StatusCode,
    error: &str,
    description: &str,
) -> Response<SimBody> {
    let mut response = json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    );
    no_store(&mut response);
    response
}

async fn token_endpoint(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    let vendor = lock_state(state).config.vendor.clone();
    if request.method() != Method::POST {
        let mut response = OAuthError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "HTTP method not allowed, use POST",
        )
        .into_response(&vendor);
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    lock_state(state).counters.token_requests += 1;

    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_TOKEN_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let status = if error.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return OAuthError::new(status, "invalid_request", format!("request body: {error}"))
                .into_response(&vendor);
        }
    };
    // Keycloak reads only form bodies: a JSON body looks like a form without grant_type.
    let form = if is_form(&parts.headers) {
        parse_form(&body)
    } else {
        Vec::new()
    };
    lock_state(state)
        .counters
        .grants
        .record(form_value(&form, "grant_type"));

    let mode = lock_state(state).mode.clone();
    match mode {
        TokenMode::Normal => {}
        TokenMode::Delay(delay) => tokio::time::sleep(delay).await,
        TokenMode::OAuthError {
            status,
            error,
            description,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            return error_response(status, &error, &description);
        }
        TokenMode::Html => {
            return response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                "<!DOCTYPE html><html><head><title>Sign in</title></head>\
                 <body><form method=\"post\"><input name=\"username\"></form></body></html>",
            );
        }
        TokenMode::InvalidJson => {
            return response(
                StatusCode::OK,
                "application/json",
                "{\"access_token\": \"truncated",
            );
        }
        TokenMode::ServerError | TokenMode::Down => {
            let mut response = response(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "Service Unavailable",
            );
            if mode == TokenMode::ServerError {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("3"));
            }
            return response;
        }
    }

    match grant(&parts.headers, &form, &mut lock_state(state)) {
        Ok(body) => token_response(&body),
        Err(error) => error.into_response(&vendor),
    }
}

/// Validates the request and issues tokens. Runs under the state lock: it never awaits.
fn grant(
    headers: &HeaderMap,
    form: &[(String, String)],
    state: &mut SimState,
) -> Result<Value, OAuthError> {
    // RFC 6749 3.2: parameters must not repeat.
    for (index, (name, _)) in form.iter().enumerate() {
        if form[..index].iter().any(|(earlier, _)| earlier == name) {
            return Err(OAuthError::invalid_request(format!(
                "duplicated parameter: {name}"
            )));
        }
    }
    let grant_type = form_value(form, "grant_type")
        .ok_or_else(|| OAuthError::invalid_request("Missing form parameter: grant_type"))?;
    let config = &state.config;
    let supported = match grant_type {
        "client_credentials" => config.allow_client_credentials,
        "password" => config.allow_password,
        "refresh_token" => config.refresh_ttl.is_some() || !state.refresh_tokens.is_empty(),
        _ => false,
    };
    if !supported {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("Unsupported grant_type: {grant_type}"),
        ));
    }
    let client = authenticate_client(config, headers, form)?;
    let client_id = client.id.clone();
    let is_public = client.secret.is_none();

    let requested_scope = form_value(form, "scope").map(str::to_owned);
    let check_scope = |scope: &Option<String>| -> Result<(), OAuthError> {
        match &config.required_scope {
            Some(required)
                if !scope
                    .as_deref()
                    .is_some_and(|scope| scope.split(' ').any(|item| item == required)) =>
            {
                Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!(
                        "Invalid scopes: {}; required: {required}",
                        scope.as_deref().unwrap_or("")
                    ),
                ))
            }
            _ => Ok(()),
        }
    };

    let subject = match grant_type {
        "client_credentials" => {
            if is_public {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    "Public client not allowed to retrieve service account",
                ));
            }
            check_scope(&requested_scope)?;
            Subject {
                client_id,
                username: None,
                scope: requested_scope,
            }
        }
        "password" => {
            let username = form_value(form, "username")
                .ok_or_else(|| OAuthError::invalid_request("Missing parameter: username"))?;
            let password = form_value(form, "password")
                .ok_or_else(|| OAuthError::invalid_request("Missing parameter: password"))?;
            let known = config
                .users
                .iter()
                .any(|(user, secret)| user == username && secret == password);
            if !known {
                let status = StatusCode::from_u16(config.invalid_user_status)
                    .unwrap_or(StatusCode::BAD_REQUEST);
                return Err(OAuthError::new(
                    status,
                    "invalid_grant",
                    "Invalid user credentials",
                ));
            }
            check_scope(&requested_scope)?;
            Subject {
                client_id,
                username: Some(username.to_owned()),
                scope: requested_scope,
            }
        }
        // Only refresh_token is left: `supported` filtered everything else.
        _ => {
            let presented = form_value(form, "refresh_token")
                .ok_or_else(|| OAuthError::invalid_request("Missing parameter: refresh_token"))?;
            let single_use = config.refresh_single_use;
            let now = Instant::now();
            let Some(refresh) = state.refresh_tokens.get_mut(presented) else {
                return Err(OAuthError::invalid_grant("Invalid refresh token"));
            };
            if refresh.client_id != client_id {
                return Err(OAuthError::invalid_grant(
                    "Invalid refresh token. Token client and authorized client don't match",
                ));
            }
            match refresh.check(now) {
                Ok(()) => {}
                Err(RefreshRefusal::Reused) => {
                    state.counters.refresh_reuse += 1;
                    return Err(OAuthError::invalid_grant(
                        "Maximum allowed refresh token reuse exceeded",
                    ));
                }
                Err(RefreshRefusal::Revoked) => {
                    return Err(OAuthError::invalid_grant("Session not active"))
                }
                Err(RefreshRefusal::Expired) => {
                    return Err(OAuthError::invalid_grant("Token is not active"))
                }
            }
            if single_use {
                refresh.status = grant::RefreshStatus::Used;
            }
            Subject {
                client_id,
                username: refresh.grant.username.clone(),
                // RFC 6749 6: omitted scope means the originally granted one.
                scope: requested_scope.or_else(|| refresh.grant.scope.clone()),
            }
        }
    };
    Ok(state.issue(subject, grant_type))
}

fn authenticate_client<'a>(
    config: &'a OAuthSimConfig,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<&'a SimClient, OAuthError> {
    let basic = match headers.get(AUTHORIZATION) {
        Some(value) => parse_basic(value).map(Some).ok_or_else(|| {
            OAuthError::invalid_client("Malformed HTTP Basic client authentication", true)
        })?,
        None => None,
    };
    let used_basic = basic.is_some();
    let form_id = form_value(form, "client_id");
    let form_secret = form_value(form, "client_secret");
    let (client_id, secret) = match (basic, config.client_auth) {
        (Some(_), ClientAuth::Body) => {
            return Err(OAuthError::invalid_client(
                "HTTP Basic client authentication is not supported; send client_id and client_secret in the body",
                true,
            ))
        }
        (None, ClientAuth::Basic) if form_secret.is_some() => {
            return Err(OAuthError::invalid_client(
                "client_secret in the body is not supported; use HTTP Basic",
                false,
            ))
        }
        (Some(_), _) if form_secret.is_some() => {
            // RFC 6749 2.3: one authentication method per request.
            return Err(OAuthError::invalid_request(
                "multiple client authentication methods",
            ));
        }
        (Some((id, secret)), _) => {
            if form_id.is_some_and(|form_id| form_id != id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the body differs from HTTP Basic",
                ));
            }
            (id, Some(secret))
        }
        (None, _) => (
            form_id
                .ok_or_else(|| OAuthError::invalid_client("Missing parameter: client_id", false))?
                .to_owned(),
            form_secret.map(str::to_owned),
        ),
    };
    let invalid =
        || OAuthError::invalid_client("Invalid client or Invalid client credentials", used_basic);
    let client = config
        .clients
        .iter()
        .find(|client| client.id == client_id)
        .ok_or_else(invalid)?;
    match &client.secret {
        // Public clients prove nothing; a stray secret is ignored, as Keycloak does.
        None => Ok(client),
        Some(expected) if secret.as_deref() == Some(expected.as_str()) => Ok(client),
        Some(_) => Err(invalid()),
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` per RFC 6749 2.3.1.
pub(crate) fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| {
            media_type
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// `application/x-www-form-urlencoded` pairs in order, empty values kept, empty names dropped.
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(name), form_decode(value))
        })
        .filter(|(name, _)| !name.is_empty())
        .collect()
}

/// Percent-decoding with `+` as space; malformed escapes are kept literally.
pub fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' => {
                let escape = bytes
                    .get(index + 1..index + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match escape {
                    Some(byte) => {
                        decoded.push(byte);
                        index += 2;
                    }
                    None => decoded.push(b'%'),
                }
            }
            byte => decoded.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

pub(crate) fn form_value<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

async fn api(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    let (parts, body) = request.into_parts();
    let body_len = drain_body(body).await;

    let mut state = lock_state(state);
    state.counters.api_requests += 1;
    let config = &state.config;
    let vendor = config.vendor.clone();
    let unauthorized = |description: &str| {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "invalid_token", "error_description": description }),
        );
        set_header(
            &mut response,
            "www-authenticate",
            &format!(
                "Bearer realm=\"{vendor}\", error=\"invalid_token\", error_description=\"{}\"",
                // A quote would end the quoted-string early (RFC 9110 5.6.4).
                description.replace('"', "'")
            ),
        );
        response
    };

    let mut credentials = parts.headers.get_all(config.api_header.as_str()).iter();
    let Some(credential) = credentials.next() else {
        return unauthorized(&format!("missing {} header", config.api_header));
    };
    if credentials.next().is_some() {
        // A proxy that appends instead of replacing shows up here.
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "invalid_request", "error_description": format!("more than one {} header", config.api_header) }),
        );
    }
    let Some(token) = strip_scheme(credential, &config.api_scheme) else {
        return unauthorized(&format!("expected \"{}<token>\"", config.api_scheme));
    };
    match state.access_tokens.get(token) {
        None => return unauthorized("unknown token"),
        Some(grant) if grant.revoked => return unauthorized("token revoked"),
        Some(grant) if Instant::now() >= grant.expires_at => return unauthorized("token expired"),
        Some(_) => {}
    }

    for (name, expected) in &config.api_required_headers {
        let values: Vec<&HeaderValue> = parts.headers.get_all(name.as_str()).iter().collect();
        let problem = match values.as_slice() {
            [] => format!("missing required header {name}"),
            [value] if value.as_bytes() == expected.as_bytes() => continue,
            [_] => format!("header {name} must be {expected}"),
            _ => format!("more than one {name} header"),
        };
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "invalid_request", "error_description": problem, "header": name }),
        );
    }

    state.counters.api_authorized += 1;
    json_response(StatusCode::OK, &api_answer(&vendor, &parts, body_len))
}
