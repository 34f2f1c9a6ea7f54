//! AMM, the Sierra Wireless / Semtech AirLink Mobility Manager (seed `004`): Spring-style OAuth2
//! plus the API it protects.
//!
//! - `POST /api/oauth/token`: grants `password`, `authorization_code`, `refresh_token`. Clients
//!   authenticate with HTTP Basic (the vendor's recommendation) or `client_id`/`client_secret`
//!   parameters. Parameters may come in the form body or the query string (the vendor's own
//!   examples use the query string); both are counted.
//! - `GET /api/oauth/authorize`: the configured `default_user` is signed in and consents, so it
//!   redirects at once: `?code=` for `response_type=code`, `#access_token=` for `token`.
//! - `POST /api/oauth/expire?access_token=`: revokes the access token and its refresh token.
//! - Every other path under `/api/` is the API: `Authorization: Bearer <token>`.
//!
//! Quirks kept on purpose:
//! - `token_type` is lower-case `bearer`; `scope` is always `READ WRITE`;
//! - refresh tokens are single-use (AMM >= 2.17.2): a used one answers 400 `invalid_grant`;
//! - like Spring's token services, a password, code or implicit grant for a client and user that
//!   already hold a live access token returns that same token with the *remaining* `expires_in`
//!   (turn off with `reuse_live_token`); a refresh always mints a new pair;
//! - authorization codes are 6 characters, like AMM's `nwllY5`, live 10 minutes, and are
//!   consumed by the first token request that names them, even a failing one.
//!
//! Expiry uses `tokio::time::Instant`, so tests with paused time control it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::header::{HeaderValue, ALLOW, AUTHORIZATION, LOCATION, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::grant::{self, GrantCounts, RefreshGrant, RefreshRefusal, RefreshStatus, TokenGrant};
use super::oauth::{
    error_response, form_value, is_form, no_store, parse_basic, parse_form, token_response,
    uuid_like, whole_seconds,
};
use super::{
    api_answer, drain_body, empty_body, encode_pairs, json_response, lock_state, random_chars,
    read_small_body, set_header, strip_scheme, tls_acceptor, SimBody, SimServer,
};

pub const TOKEN_PATH: &str = "/api/oauth/token";
pub const AUTHORIZE_PATH: &str = "/api/oauth/authorize";
pub const EXPIRE_PATH: &str = "/api/oauth/expire";
/// Every granted token has this scope.
pub const SCOPE: &str = "READ WRITE";
pub const DEFAULT_CLIENT_ID: &str = "amm-client";
pub const DEFAULT_CLIENT_SECRET: &str = "amm-secret";
pub const DEFAULT_USERNAME: &str = "amm-user";
pub const DEFAULT_PASSWORD: &str = "amm-password";
pub const CODE_TTL: Duration = Duration::from_secs(600);

/// Token requests are small; anything bigger is a client bug worth a 413.
const MAX_REQUEST_BODY: usize = 64 * 1024;
const CODE_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const BAD_CLIENT: &str = "Full authentication is required to access this resource";
const API_DISABLED: &str = "API access is disabled for API client, user or customer group";

#[derive(Clone, Debug)]
pub struct AmmSimConfig {
    /// Registered API clients: (client_id, client_secret).
    pub clients: Vec<(String, String)>,
    /// (username, password) pairs accepted by the password grant.
    pub users: Vec<(String, String)>,
    /// Who is signed in (and consents) at the authorize page.
    pub default_user: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// Return a subject's live access token instead of a new one (see the module doc).
    pub reuse_live_token: bool,
}

impl Default for AmmSimConfig {
    fn default() -> Self {
        AmmSimConfig {
            clients: vec![(
                DEFAULT_CLIENT_ID.to_owned(),
                DEFAULT_CLIENT_SECRET.to_owned(),
            )],
            users: vec![(DEFAULT_USERNAME.to_owned(), DEFAULT_PASSWORD.to_owned())],
            default_user: DEFAULT_USERNAME.to_owned(),
            access_ttl: Duration::from_secs(86_400),
            refresh_ttl: Duration::from_secs(30 * 86_400),
            reuse_live_token: true,
        }
    }
}

/// A running AMM. Dropping it stops the server.
pub struct AmmSim {
    server: SimServer,
    state: Arc<Mutex<SimState>>,
}

/// Starts the simulator on `http://127.0.0.1:0`.
pub async fn start(config: AmmSimConfig) -> AmmSim {
    serve(config, None).await
}

/// Starts the simulator on `https://127.0.0.1:0`: AMM is often on premises behind a
/// self-signed or private-CA certificate.
///
/// Panics if the certificate and key do not form a usable server identity.
pub async fn start_tls(
    config: AmmSimConfig,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> AmmSim {
    let acceptor = tls_acceptor(cert_chain, key).expect("amm sim: invalid TLS certificate or key");
    serve(config, Some(acceptor)).await
}

async fn serve(config: AmmSimConfig, acceptor: Option<TlsAcceptor>) -> AmmSim {
    let state = Arc::new(Mutex::new(SimState::new(config)));
    let server = SimServer::with_state(&state, acceptor, handle).await;
    AmmSim { server, state }
}

impl AmmSim {
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.server.url())
    }

    pub fn authorize_url(&self) -> String {
        format!("{}{AUTHORIZE_PATH}", self.server.url())
    }

    pub fn expire_url(&self) -> String {
        format!("{}{EXPIRE_PATH}", self.server.url())
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        lock_state(&self.state)
    }

    /// Token requests per `grant_type` as sent (counted before validation).
    pub fn count_for_grant(&self, grant_type: &str) -> usize {
        self.state().counters.grants.get(grant_type)
    }

    /// Every POST to the token endpoint, counted before any check.
    pub fn token_requests(&self) -> usize {
        self.state().counters.token_requests
    }

    /// Token requests whose client sent an `Authorization` header (HTTP Basic), valid or not.
    pub fn basic_auth_requests(&self) -> usize {
        self.state().counters.basic_auth
    }

    /// Token requests whose client sent `client_id` and `client_secret` as parameters (and no
    /// `Authorization` header), valid or not.
    pub fn form_client_auth_requests(&self) -> usize {
        self.state().counters.param_client_auth
    }

    /// Token requests with at least one parameter in the query string.
    pub fn query_param_requests(&self) -> usize {
        self.state().counters.query_params
    }

    /// Token requests with at least one parameter in a form body.
    pub fn body_param_requests(&self) -> usize {
        self.state().counters.body_params
    }

    /// Successful token responses (a reused live token counts too).
    pub fn tokens_issued(&self) -> usize {
        self.state().counters.tokens_issued
    }

    /// Attempts to use a consumed refresh token; a correct client keeps this 0.
    pub fn refresh_token_reused(&self) -> usize {
        self.state().counters.refresh_reuse
    }

    /// Every POST to the expire endpoint, counted before any check.
    pub fn expire_requests(&self) -> usize {
        self.state().counters.expire_requests
    }

    /// Access tokens revoked through the expire endpoint.
    pub fn revoked_tokens(&self) -> usize {
        self.state().counters.revoked_tokens
    }

    /// Every request to the authorize endpoint.
    pub fn authorize_requests(&self) -> usize {
        self.state().counters.authorize_requests
    }

    /// Requests to the protected API, answered 200 or not.
    pub fn api_requests(&self) -> usize {
        self.state().counters.api_requests
    }

    /// Protected API requests answered 200.
    pub fn api_authorized(&self) -> usize {
        self.state().counters.api_authorized
    }

    /// Access tokens the API would accept right now.
    pub fn valid_access_tokens(&self) -> usize {
        let now = Instant::now();
        let state = self.state();
        let tokens = state.access_tokens.values();
        tokens.filter(|access| access.life.is_valid(now)).count()
    }

    /// Every access and refresh token the simulator still knows, to look for leaks.
    pub fn issued_tokens(&self) -> Vec<String> {
        let state = self.state();
        state
            .access_tokens
            .keys()
            .chain(state.refresh_tokens.keys())
            .cloned()
            .collect()
    }

    /// Lifetime of access tokens issued from now on.
    pub fn set_access_ttl(&self, ttl: Duration) {
        self.state().config.access_ttl = ttl;
    }

    /// Lifetime of refresh tokens issued from now on.
    pub fn set_refresh_ttl(&self, ttl: Duration) {
        self.state().config.refresh_ttl = ttl;
    }

    /// While `Some(secs)`, the token and expire endpoints answer 429 with `Retry-After: secs`.
    pub fn set_rate_limit(&self, retry_after_secs: Option<u64>) {
        self.state().rate_limit = retry_after_secs;
    }

    /// While true, the token, authorize and expire endpoints and the API answer 403
    /// `access_denied`, which a client must not retry.
    pub fn set_api_disabled(&self, disabled: bool) {
        self.state().api_disabled = disabled;
    }

    /// While true, the user declines at the authorize page: redirects carry
    /// `error=access_denied`.
    pub fn set_authorize_denied(&self, denied: bool) {
        self.state().authorize_denied = denied;
    }

    /// Every access token issued so far becomes invalid; refresh tokens stay good (an
    /// administrator's session purge, a key rotation at the API).
    pub fn revoke_access_tokens(&self) {
        self.revoke(false);
    }

    /// Every access and refresh token issued so far becomes invalid.
    pub fn revoke_all(&self) {
        self.revoke(true);
    }

    fn revoke(&self, refresh_tokens_too: bool) {
        let state = &mut *self.state();
        let refresh_tokens = state
            .refresh_tokens
            .values_mut()
            .filter(|_| refresh_tokens_too);
        grant::revoke_all(
            state
                .access_tokens
                .values_mut()
                .map(|access| &mut access.life),
            refresh_tokens,
        );
    }
}

struct SimState {
    config: AmmSimConfig,
    rate_limit: Option<u64>,
    api_disabled: bool,
    authorize_denied: bool,
    access_tokens: HashMap<String, AccessGrant>,
    /// Refresh tokens with the user they were issued to.
    refresh_tokens: HashMap<String, RefreshGrant<String>>,
    codes: HashMap<String, CodeGrant>,
    /// The newest access token per subject, for `reuse_live_token`.
    latest: HashMap<Subject, String>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    token_requests: usize,
    grants: GrantCounts,
    basic_auth: usize,
    param_client_auth: usize,
    query_params: usize,
    body_params: usize,
    tokens_issued: usize,
    refresh_reuse: usize,
    expire_requests: usize,
    revoked_tokens: usize,
    authorize_requests: usize,
    api_requests: usize,
    api_authorized: usize,
}

/// Who a token is for; implicit tokens (no refresh token) are a different subject so a reused
/// token never lacks the refresh token its grant should carry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Subject {
    client_id: String,
    username: String,
    with_refresh: bool,
}

struct AccessGrant {
    client_id: String,
    refresh_token: Option<String>,
    life: TokenGrant,
}

struct CodeGrant {
    client_id: String,
    username: String,
    redirect_uri: Option<String>,
    expires_at: Instant,
}

/// What a grant hands out, before it is rendered as JSON or a fragment.
struct Issued {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: u64,
}

impl Issued {
    fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("access_token".into(), json!(self.access_token));
        body.insert("token_type".into(), json!("bearer"));
        if let Some(refresh_token) = &self.refresh_token {
            body.insert("refresh_token".into(), json!(refresh_token));
        }
        body.insert("expires_in".into(), json!(self.expires_in));
        body.insert("scope".into(), json!(SCOPE));
        Value::Object(body)
    }
}

impl SimState {
    fn new(config: AmmSimConfig) -> Self {
        SimState {
            config,
            rate_limit: None,
            api_disabled: false,
            authorize_denied: false,
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            codes: HashMap::new(),
            latest: HashMap::new(),
            counters: Counters::default(),
        }
    }

    fn client_secret_matches(&self, client_id: &str, secret: &str) -> bool {
        self.config
            .clients
            .iter()
            .any(|(id, known)| id == client_id && known == secret)
    }

    fn is_client(&self, client_id: &str) -> bool {
        self.config.clients.iter().any(|(id, _)| id == client_id)
    }

    /// Keeps the maps bounded over a long demo run. Consumed refresh tokens stay until they
    /// expire so a reuse is still recognised as one.
    fn forget_expired(&mut self, now: Instant) {
        self.access_tokens
            .retain(|_, grant| now < grant.life.expires_at);
        self.refresh_tokens
            .retain(|_, grant| now < grant.expires_at);
        self.codes.retain(|_, grant| now < grant.expires_at);
        let access_tokens = &self.access_tokens;
        self.latest
            .retain(|_, token| access_tokens.contains_key(token));
    }

    fn issue(&mut self, subject: Subject, may_reuse: bool) -> Issued {
        let now = Instant::now();
        self.forget_expired(now);
        self.counters.tokens_issued += 1;
        if may_reuse && self.config.reuse_live_token {
            let live = self
                .latest
                .get(&subject)
                .and_then(|token| Some((token, self.access_tokens.get(token)?)))
                .filter(|(_, grant)| grant.life.is_valid(now));
            if let Some((token, grant)) = live {
                return Issued {
                    access_token: token.clone(),
                    refresh_token: grant.refresh_token.clone(),
                    expires_in: whole_seconds(grant.life.expires_at.duration_since(now)),
                };
            }
        }
        let access_token = uuid_like();
        let refresh_token = subject.with_refresh.then(|| {
            let refresh_token = uuid_like();
            self.refresh_tokens.insert(
                refresh_token.clone(),
                RefreshGrant::new(
                    &subject.client_id,
                    subject.username.clone(),
                    now,
                    self.config.refresh_ttl,
                ),
            );
            refresh_token
        });
        let access_ttl = self.config.access_ttl;
        self.access_tokens.insert(
            access_token.clone(),
            AccessGrant {
                client_id: subject.client_id.clone(),
                refresh_token: refresh_token.clone(),
                life: TokenGrant::new(now, access_ttl),
            },
        );
        self.latest.insert(subject, access_token.clone());
        Issued {
            access_token,
            refresh_token,
            expires_in: whole_seconds(access_ttl),
        }
    }
}

/// An `{"error", "error_description"}` answer.
struct AmmError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl AmmError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        AmmError {
            status,
            error,
            description: description.into(),
        }
    }

    fn bad_client() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", BAD_CLIENT)
    }

    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn api_disabled() -> Self {
        Self::new(StatusCode::FORBIDDEN, "access_denied", API_DISABLED)
    }

    fn into_response(self) -> Response<SimBody> {
        let mut response = error_response(self.status, self.error, &self.description);
        if self.status == StatusCode::UNAUTHORIZED && self.description == BAD_CLIENT {
            set_header(
                &mut response,
                "www-authenticate",
                "Basic realm=\"oauth2/client\"",
            );
        }
        response
    }
}

fn rate_limited(retry_after_secs: u64) -> Response<SimBody> {
    let mut response = AmmError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        "Request has reached rate limit",
    )
    .into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

fn method_not_allowed(allowed: &'static str) -> Response<SimBody> {
    let mut response = AmmError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("Request method not supported, use {allowed}"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allowed));
    response
}

async fn handle(request: Request<Incoming>, state: Arc<Mutex<SimState>>) -> Response<SimBody> {
    let path = request.uri().path().to_owned();
    match path.as_str() {
        TOKEN_PATH => token(request, &state).await,
        AUTHORIZE_PATH => authorize(request, &state),
        EXPIRE_PATH => expire(request, &state).await,
        _ if path.starts_with("/api/") && !path.starts_with("/api/oauth/") => {
            api(request, &state).await
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": "not_found", "error_description": format!("No handler for {path}") }),
        ),
    }
}

/// Parameters from the query string and (for form bodies) the body, as Spring's
/// `getParameter` sees them; also reports which sources were used.
struct Params {
    pairs: Vec<(String, String)>,
    from_query: bool,
    from_body: bool,
}

async fn read_params(request: Request<Incoming>) -> Result<(HeaderMap, Params), AmmError> {
    let (parts, body) = request.into_parts();
    let body = read_small_body(body, MAX_REQUEST_BODY)
        .await
        .map_err(|status| AmmError::new(status, "invalid_request", "unreadable body"))?;
    let query = parse_form(parts.uri.query().unwrap_or_default().as_bytes());
    let form = if is_form(&parts.headers) {
        parse_form(&body)
    } else {
        Vec::new()
    };
    let params = Params {
        from_query: !query.is_empty(),
        from_body: !form.is_empty(),
        pairs: query.into_iter().chain(form).collect(),
    };
    // The same name with two different values is ambiguous; the same value twice is harmless.
    for (index, (name, value)) in params.pairs.iter().enumerate() {
        let conflict = params.pairs[..index]
            .iter()
            .any(|(earlier, earlier_value)| earlier == name && earlier_value != value);
        if conflict {
            return Err(AmmError::invalid_request(format!(
                "conflicting values for parameter: {name}"
            )));
        }
    }
    Ok((parts.headers, params))
}

async fn token(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    if request.method() != Method::POST {
        return method_not_allowed("POST");
    }
    lock_state(state).counters.token_requests += 1;
    let (headers, params) = match read_params(request).await {
        Ok(read) => read,
        Err(error) => return error.into_response(),
    };
    let mut state = lock_state(state);
    let counters = &mut state.counters;
    counters.query_params += usize::from(params.from_query);
    counters.body_params += usize::from(params.from_body);
    counters
        .grants
        .record(form_value(&params.pairs, "grant_type"));
    if let Some(retry_after) = state.rate_limit {
        return rate_limited(retry_after);
    }
    match token_grant(&headers, &params.pairs, &mut state) {
        Ok(issued) => token_response(&issued.to_json()),
        Err(error) => error.into_response(),
    }
}

/// The client's id once authenticated. HTTP Basic wins over parameters, as in Spring.
fn authenticate_client(
    headers: &HeaderMap,
    params: &[(String, String)],
    state: &mut SimState,
) -> Result<String, AmmError> {
    let (client_id, secret) = match headers.get(AUTHORIZATION) {
        Some(value) => {
            state.counters.basic_auth += 1;
            parse_basic(value).ok_or_else(AmmError::bad_client)?
        }
        None => {
            let client_id = form_value(params, "client_id");
            let secret = form_value(params, "client_secret");
            match (client_id, secret) {
                (Some(client_id), Some(secret)) => {
                    state.counters.param_client_auth += 1;
                    (client_id.to_owned(), secret.to_owned())
                }
                _ => return Err(AmmError::bad_client()),
            }
        }
    };
    if state.client_secret_matches(&client_id, &secret) {
        Ok(client_id)
    } else {
        Err(AmmError::bad_client())
    }
}

/// Validates the request and issues tokens. Runs under the state lock: it never awaits.
fn token_grant(
    headers: &HeaderMap,
    params: &[(String, String)],
    state: &mut SimState,
) -> Result<Issued, AmmError> {
    let client_id = authenticate_client(headers, params, state)?;
    if state.api_disabled {
        return Err(AmmError::api_disabled());
    }
    let grant_type = form_value(params, "grant_type")
        .ok_or_else(|| AmmError::invalid_request("Missing grant type"))?;
    match grant_type {
        "password" => {
            let username = form_value(params, "username").unwrap_or_default();
            let password = form_value(params, "password").unwrap_or_default();
            let known = state
                .config
                .users
                .iter()
                .any(|(user, secret)| user == username && secret == password);
            if !known {
                return Err(AmmError::invalid_grant("Bad credentials"));
            }
            let subject = Subject {
                client_id,
                username: username.to_owned(),
                with_refresh: true,
            };
            Ok(state.issue(subject, true))
        }
        "authorization_code" => {
            let code = form_value(params, "code").ok_or_else(|| {
                AmmError::invalid_request("An authorization code must be supplied.")
            })?;
            let invalid_code =
                || AmmError::invalid_grant(format!("Invalid authorization code: {code}"));
            // Consumed before any other check, as Spring does: a failed attempt burns it.
            let grant = state.codes.remove(code).ok_or_else(invalid_code)?;
            if Instant::now() >= grant.expires_at {
                return Err(invalid_code());
            }
            if grant.client_id != client_id {
                return Err(AmmError::invalid_grant("Client ID mismatch"));
            }
            if let Some(expected) = &grant.redirect_uri {
                if form_value(params, "redirect_uri") != Some(expected.as_str()) {
                    return Err(AmmError::invalid_grant("Redirect URI mismatch."));
                }
            }
            let subject = Subject {
                client_id,
                username: grant.username,
                with_refresh: true,
            };
            Ok(state.issue(subject, true))
        }
        "refresh_token" => {
            let presented = form_value(params, "refresh_token")
                .ok_or_else(|| AmmError::invalid_request("Missing refresh_token"))?;
            let invalid = || AmmError::invalid_grant("Invalid refresh token");
            let now = Instant::now();
            let Some(refresh) = state.refresh_tokens.get_mut(presented) else {
                return Err(invalid());
            };
            if let Err(refusal) = refresh.check(now) {
                if refusal == RefreshRefusal::Reused {
                    state.counters.refresh_reuse += 1;
                }
                return Err(invalid());
            }
            if refresh.client_id != client_id {
                return Err(AmmError::invalid_grant(
                    "Wrong client for this refresh token",
                ));
            }
            refresh.status = RefreshStatus::Used;
            let subject = Subject {
                client_id,
                username: refresh.grant.clone(),
                with_refresh: true,
            };
            // A refresh always mints a new pair, never hands back a live token.
            Ok(state.issue(subject, false))
        }
        other => Err(AmmError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("Unsupported grant type: {other}"),
        )),
    }
}

/// An absolute http(s) URI without a fragment that can travel in a `Location` header.
fn valid_redirect_uri(uri: &str) -> bool {
    (uri.starts_with("http://") || uri.starts_with("https://"))
        && !uri.contains('#')
        && HeaderValue::from_str(uri).is_ok()
        && uri.parse::<http::Uri>().is_ok()
}

fn borrowed<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    pairs
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}

/// A 302 to `redirect_uri` with `pairs` in its query (`?`) or fragment (`#`).
fn redirect(redirect_uri: &str, in_fragment: bool, pairs: &[(&str, &str)]) -> Response<SimBody> {
    let separator = if in_fragment {
        '#'
    } else if redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!("{redirect_uri}{separator}{}", encode_pairs(pairs));
    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::FOUND;
    match HeaderValue::from_str(&location) {
        Ok(location) => {
            response.headers_mut().insert(LOCATION, location);
            response
        }
        // Unreachable after `valid_redirect_uri`, but never send a 302 without a target.
        Err(_) => AmmError::invalid_request("redirect_uri cannot be used").into_response(),
    }
}

fn authorize(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    if request.method() != Method::GET {
        return method_not_allowed("GET");
    }
    let query = parse_form(request.uri().query().unwrap_or_default().as_bytes());
    let mut state = lock_state(state);
    state.counters.authorize_requests += 1;
    if state.api_disabled {
        return AmmError::api_disabled().into_response();
    }
    // `grant_type` (as in the vendor's examples) is tolerated and ignored.
    let client_id = form_value(&query, "client_id").unwrap_or_default();
    if !state.is_client(client_id) {
        return AmmError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("No client with requested id: {client_id}"),
        )
        .into_response();
    }
    let Some(redirect_uri) = form_value(&query, "redirect_uri") else {
        return AmmError::invalid_request("A redirect_uri must be supplied.").into_response();
    };
    if !valid_redirect_uri(redirect_uri) {
        return AmmError::invalid_request(format!("Invalid redirect: {redirect_uri}"))
            .into_response();
    }
    let client_state = form_value(&query, "state");
    let with_state = |mut pairs: Vec<(&'static str, String)>| {
        if let Some(client_state) = client_state {
            pairs.push(("state", client_state.to_owned()));
        }
        pairs
    };
    let in_fragment = match form_value(&query, "response_type") {
        Some("code") => false,
        Some("token") => true,
        other => {
            let pairs = with_state(vec![
                ("error", "unsupported_response_type".to_owned()),
                (
                    "error_description",
                    format!("Unsupported response types: {}", other.unwrap_or_default()),
                ),
            ]);
            return redirect(redirect_uri, false, &borrowed(&pairs));
        }
    };
    if state.authorize_denied {
        let pairs = with_state(vec![
            ("error", "access_denied".to_owned()),
            ("error_description", "User denied access".to_owned()),
        ]);
        return redirect(redirect_uri, in_fragment, &borrowed(&pairs));
    }
    let username = state.config.default_user.clone();
    let pairs = if in_fragment {
        // Implicit grant: no refresh token (RFC 6749 4.2.2).
        let issued = state.issue(
            Subject {
                client_id: client_id.to_owned(),
                username,
                with_refresh: false,
            },
            true,
        );
        with_state(vec![
            ("access_token", issued.access_token),
            ("token_type", "bearer".to_owned()),
            ("expires_in", issued.expires_in.to_string()),
            ("scope", SCOPE.to_owned()),
        ])
    } else {
        let now = Instant::now();
        state.forget_expired(now);
        let code = loop {
            let candidate = random_chars::<6>(CODE_ALPHABET);
            if !state.codes.contains_key(&candidate) {
                break candidate;
            }
        };
        state.codes.insert(
            code.clone(),
            CodeGrant {
                client_id: client_id.to_owned(),
                username,
                redirect_uri: Some(redirect_uri.to_owned()),
                expires_at: now + CODE_TTL,
            },
        );
        with_state(vec![("code", code)])
    };
    redirect(redirect_uri, in_fragment, &borrowed(&pairs))
}

async fn expire(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    if request.method() != Method::POST {
        return method_not_allowed("POST");
    }
    lock_state(state).counters.expire_requests += 1;
    let (headers, params) = match read_params(request).await {
        Ok(read) => read,
        Err(error) => return error.into_response(),
    };
    let mut state = lock_state(state);
    if let Some(retry_after) = state.rate_limit {
        return rate_limited(retry_after);
    }
    if state.api_disabled {
        return AmmError::api_disabled().into_response();
    }
    // The doc's example sends no client credentials; when a client does, it may only revoke
    // its own tokens.
    let client_id = match headers.get(AUTHORIZATION) {
        None => None,
        Some(value) => match parse_basic(value) {
            Some((id, secret)) if state.client_secret_matches(&id, &secret) => Some(id),
            _ => return AmmError::bad_client().into_response(),
        },
    };
    let token = form_value(&params.pairs, "access_token").unwrap_or_default();
    let now = Instant::now();
    let refresh_token = match state.access_tokens.get_mut(token) {
        Some(grant)
            if grant.life.is_valid(now)
                && client_id.as_ref().is_none_or(|id| *id == grant.client_id) =>
        {
            grant.life.revoked = true;
            grant.refresh_token.clone()
        }
        _ => {
            return AmmError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Invalid access token",
            )
            .into_response()
        }
    };
    if let Some(refresh) = refresh_token.and_then(|token| state.refresh_tokens.get_mut(&token)) {
        refresh.revoke();
    }
    state.counters.revoked_tokens += 1;
    let mut response = Response::new(empty_body());
    no_store(&mut response);
    response
}

async fn api(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    let (parts, body) = request.into_parts();
    let body_len = drain_body(body).await;
    let mut state = lock_state(state);
    state.counters.api_requests += 1;
    if state.api_disabled {
        return AmmError::api_disabled().into_response();
    }
    let unauthorized = |description: &str| {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "unauthorized", "error_description": description }),
        );
        set_header(&mut response, "www-authenticate", "Bearer realm=\"AMM\"");
        response
    };
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return unauthorized("expected exactly one Authorization: Bearer <token> header");
    };
    let Some(token) = strip_scheme(value, "Bearer ").map(str::trim) else {
        return unauthorized("expected Authorization: Bearer <token>");
    };
    let now = Instant::now();
    match state.access_tokens.get(token) {
        Some(grant) if grant.life.is_valid(now) => {}
        Some(_) => return unauthorized("Access token expired or revoked"),
        None => return unauthorized("Invalid access token"),
    }
    state.counters.api_authorized += 1;
    json_response(StatusCode::OK, &api_answer("AMM", &parts, body_len))
}
