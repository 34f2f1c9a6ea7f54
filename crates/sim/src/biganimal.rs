//! EDB BigAnimal (seed `000`): the portal API plus its Auth0-like authorization server, played by
//! one server (`issuerUri` is the simulator's own URL).
//!
//! - `GET /api/v3/auth/provider`: discovery (`clientId`, `issuerUri`, `scope`, `audience`).
//! - `POST /oauth/device/code`, `POST /oauth/token`: RFC 8628 device flow with Auth0's statuses
//!   (403 for `authorization_pending`, 429 for `slow_down`; both settable, and `slow_down` can
//!   be forced for the first polls), then `refresh_token` with rotation:
//!   every refresh returns a new refresh token and the old one dies at once.
//! - `POST /api/v3/auth/token`: exchanges the raw Auth0 access token for the BigAnimal token.
//! - `GET|POST /activate`: the page a human uses to approve or deny a device.
//! - Every other path under `/api/v3/` is the protected API: `Authorization: Bearer <exchanged
//!   token>` (a raw token is refused) or `x-access-key: <key>`.
//!
//! Quirks kept on purpose:
//! - a refresh token is only issued when the granted scope contains `offline_access`, as Auth0
//!   does (the provider's default scope asks for it);
//! - the token endpoint also accepts a JSON body, as Auth0 does;
//! - `auto_approve`: the first poll of a device code answers `authorization_pending` and approves
//!   it, so the next poll (one interval later) gets the tokens, and the demo still shows the
//!   pending step.
//!
//! Expiry uses `tokio::time::Instant`; JWT `exp`/`iat` use the wall clock.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::grant::{self, GrantCounts, RefreshGrant, RefreshStatus, TokenGrant};
use super::oauth::{
    error_response, form_value, is_form, parse_form, token_response, uuid_like, whole_seconds,
};
use super::{
    api_answer, drain_body, json_response, lock_state, percent_encode, random_chars, random_hex,
    read_small_body, response, strip_scheme, unix_now, unsigned_jwt, SimBody, SimServer,
};

pub const PROVIDER_PATH: &str = "/api/v3/auth/provider";
pub const EXCHANGE_PATH: &str = "/api/v3/auth/token";
pub const API_PREFIX: &str = "/api/v3";
pub const DEVICE_CODE_PATH: &str = "/oauth/device/code";
pub const TOKEN_PATH: &str = "/oauth/token";
pub const ACTIVATE_PATH: &str = "/activate";
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
pub const DEFAULT_CLIENT_ID: &str = "ba-client-id";
/// Advertised as `freetrialClientId` and accepted like the main client.
pub const FREETRIAL_CLIENT_ID: &str = "ba-freetrial-client-id";
pub const SCOPE: &str = "openid profile email offline_access";
pub const AUDIENCE: &str = "https://portal.biganimal.com/api";
/// The user every approved device logs in as.
pub const USER_EMAIL: &str = "demo@biganimal.example";
/// RFC 8628 3.5: each `slow_down` adds this to the interval the client must keep.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// Token requests are small forms; anything bigger is a client bug worth a 413.
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Expired device codes are remembered this long so a late poll reads `expired_token`, not
/// `invalid_grant`.
const EXPIRED_DEVICE_CODE_MEMORY: Duration = Duration::from_secs(600);
/// Consonants only, as Auth0 does, so a user code never spells a word.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

#[derive(Clone, Debug)]
pub struct BigAnimalSimConfig {
    pub client_id: String,
    /// When set, the API also accepts `x-access-key: <key>` (EDB's current recommendation).
    pub access_key: Option<String>,
    /// Lifetime (`expires_in`) of the raw Auth0 access token.
    pub raw_ttl: Duration,
    /// Lifetime (`exp`) of the exchanged BigAnimal token; `None` = same as `raw_ttl`.
    pub exchanged_ttl: Option<Duration>,
    pub refresh_ttl: Duration,
    pub device_code_ttl: Duration,
    /// The polling interval announced with a device code and enforced with `slow_down`.
    pub interval: Duration,
    /// Approve every device code at its first poll (see the module doc).
    pub auto_approve: bool,
    /// The status `slow_down` comes with: Auth0 sends 429; RFC 8628 3.5 says 400.
    pub slow_down_status: StatusCode,
    /// The status `authorization_pending` comes with: Auth0 sends 403; RFC 8628 says 400.
    pub pending_status: StatusCode,
    /// The first this many polls of each device code answer `slow_down` whatever their
    /// pace, as a rate-limited tenant does; each adds 5 s to the interval it then enforces.
    pub slow_down_first_polls: u32,
}

impl Default for BigAnimalSimConfig {
    fn default() -> Self {
        BigAnimalSimConfig {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            access_key: None,
            raw_ttl: Duration::from_secs(86_400),
            exchanged_ttl: None,
            refresh_ttl: Duration::from_secs(30 * 86_400),
            device_code_ttl: Duration::from_secs(600),
            interval: Duration::from_secs(5),
            auto_approve: false,
            slow_down_status: StatusCode::TOO_MANY_REQUESTS,
            pending_status: StatusCode::FORBIDDEN,
            slow_down_first_polls: 0,
        }
    }
}

/// A running BigAnimal portal + auth server. Dropping it stops the server.
pub struct BigAnimalSim {
    server: SimServer,
    state: Arc<Mutex<SimState>>,
}

/// Starts the simulator on `http://127.0.0.1:0`.
pub async fn start(config: BigAnimalSimConfig) -> BigAnimalSim {
    // The URL (issuer, verification URI) is only known once bound; no client can reach the
    // server before this returns, so filling it in afterwards races with nothing.
    let state = Arc::new(Mutex::new(SimState::new(config)));
    let server = SimServer::with_state(&state, None, handle).await;
    lock_state(&state).base_url = server.url();
    BigAnimalSim { server, state }
}

impl BigAnimalSim {
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The discovery URL a client starts from.
    pub fn provider_url(&self) -> String {
        format!("{}{PROVIDER_PATH}", self.server.url())
    }

    /// The API base, as configured in a client (`{api}/auth/provider`, `{api}/auth/token`).
    pub fn api_url(&self) -> String {
        format!("{}{API_PREFIX}", self.server.url())
    }

    /// `issuerUri + /oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.server.url())
    }

    /// `issuerUri + /oauth/device/code`.
    pub fn device_code_url(&self) -> String {
        format!("{}{DEVICE_CODE_PATH}", self.server.url())
    }

    /// `api_url() + /auth/token`.
    pub fn exchange_url(&self) -> String {
        format!("{}{EXCHANGE_PATH}", self.server.url())
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        lock_state(&self.state)
    }

    /// What the human does at the verification page. False if no pending, unexpired device
    /// code has this user code (case and dashes do not matter).
    pub fn approve(&self, user_code: &str) -> bool {
        self.state()
            .decide(user_code, DeviceStatus::Approved, Instant::now())
    }

    pub fn deny(&self, user_code: &str) -> bool {
        self.state()
            .decide(user_code, DeviceStatus::Denied, Instant::now())
    }

    /// User codes waiting for a decision, oldest first.
    pub fn pending_user_codes(&self) -> Vec<String> {
        let now = Instant::now();
        let state = self.state();
        let mut pending: Vec<&DeviceGrant> = state
            .device_codes
            .values()
            .filter(|grant| grant.status == DeviceStatus::Pending && now < grant.expires_at)
            .collect();
        pending.sort_by_key(|grant| grant.issued_at);
        pending
            .into_iter()
            .map(|grant| grant.user_code.clone())
            .collect()
    }

    /// Every POST to `/oauth/device/code`, counted before any check.
    pub fn device_code_requests(&self) -> usize {
        self.state().counters.device_code_requests
    }

    /// Requests to `/oauth/token` per `grant_type` as sent (counted before validation).
    pub fn count_for_grant(&self, grant_type: &str) -> usize {
        self.state().counters.grants.get(grant_type)
    }

    /// Device-code polls (= `count_for_grant(DEVICE_CODE_GRANT)`).
    pub fn poll_count(&self) -> usize {
        self.count_for_grant(DEVICE_CODE_GRANT)
    }

    /// When each device-code poll arrived, to measure a client's pace.
    pub fn poll_times(&self) -> Vec<Instant> {
        self.state().counters.poll_times.clone()
    }

    /// `slow_down` answers: a client that waits `interval` after each response keeps this 0.
    pub fn slow_downs_sent(&self) -> usize {
        self.state().counters.slow_downs
    }

    /// Every POST to `/api/v3/auth/token`, counted before any check.
    pub fn exchange_requests(&self) -> usize {
        self.state().counters.exchange_requests
    }

    /// Attempts to use an already rotated refresh token; a correct client keeps this 0.
    pub fn refresh_token_reused(&self) -> usize {
        self.state().counters.refresh_reuse
    }

    /// Requests to the protected API, answered 200 or not.
    pub fn api_requests(&self) -> usize {
        self.state().counters.api_requests
    }

    /// Protected API requests answered 200.
    pub fn api_authorized(&self) -> usize {
        self.state().counters.api_authorized
    }

    /// Raw, exchanged and refresh tokens issued so far all become invalid.
    pub fn revoke_all(&self) {
        let state = &mut *self.state();
        grant::revoke_all(
            state
                .raw_tokens
                .values_mut()
                .chain(state.exchanged_tokens.values_mut()),
            state.refresh_tokens.values_mut(),
        );
    }

    /// Lifetime of raw tokens issued from now on.
    pub fn set_raw_ttl(&self, ttl: Duration) {
        self.state().config.raw_ttl = ttl;
    }

    /// Lifetime of exchanged tokens issued from now on (`None` = same as raw).
    pub fn set_exchanged_ttl(&self, ttl: Option<Duration>) {
        self.state().config.exchanged_ttl = ttl;
    }

    /// Exchanged tokens the API would accept right now.
    pub fn valid_exchanged_tokens(&self) -> usize {
        grant::count_valid(&self.state().exchanged_tokens)
    }
}

struct SimState {
    config: BigAnimalSimConfig,
    /// Set right after binding; the issuer and verification URIs are built from it.
    base_url: String,
    device_codes: HashMap<String, DeviceGrant>,
    raw_tokens: HashMap<String, TokenGrant>,
    exchanged_tokens: HashMap<String, TokenGrant>,
    /// Refresh tokens with the scope they were granted.
    refresh_tokens: HashMap<String, RefreshGrant<String>>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    device_code_requests: usize,
    grants: GrantCounts,
    slow_downs: usize,
    /// When each device-code poll arrived, across codes.
    poll_times: Vec<Instant>,
    exchange_requests: usize,
    refresh_reuse: usize,
    api_requests: usize,
    api_authorized: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeviceStatus {
    Pending,
    Approved,
    Denied,
    /// Tokens were issued; the code cannot be redeemed again.
    Redeemed,
}

struct DeviceGrant {
    user_code: String,
    client_id: String,
    scope: String,
    issued_at: Instant,
    expires_at: Instant,
    status: DeviceStatus,
    /// The interval the client must keep now; grows with every `slow_down`.
    interval: Duration,
    last_poll: Option<Instant>,
    polls: u32,
}

/// An Auth0-style `{"error", "error_description"}` answer.
struct AuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl AuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        AuthError {
            status,
            error,
            description: description.into(),
        }
    }

    fn into_response(self) -> Response<SimBody> {
        error_response(self.status, self.error, &self.description)
    }
}

/// The BigAnimal API's error shape: `{"error": {"status", "message", "errors": [..]}}`.
fn api_error(status: StatusCode, message: &str, reason: &str) -> Response<SimBody> {
    json_response(
        status,
        &json!({
            "error": {
                "status": status.as_u16(),
                "message": message,
                "errors": [{ "reason": reason, "message": message }],
            }
        }),
    )
}

/// Upper-case letters and digits only, so `abcd-efgh`, `ABCDEFGH` and `ABCD-EFGH` match.
fn normalize_user_code(user_code: &str) -> String {
    user_code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl SimState {
    fn new(config: BigAnimalSimConfig) -> Self {
        SimState {
            config,
            base_url: String::new(),
            device_codes: HashMap::new(),
            raw_tokens: HashMap::new(),
            exchanged_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            counters: Counters::default(),
        }
    }

    fn is_known_client(&self, client_id: &str) -> bool {
        client_id == self.config.client_id || client_id == FREETRIAL_CLIENT_ID
    }

    fn decide(&mut self, user_code: &str, decision: DeviceStatus, now: Instant) -> bool {
        let wanted = normalize_user_code(user_code);
        let grant = self.device_codes.values_mut().find(|grant| {
            grant.status == DeviceStatus::Pending
                && now < grant.expires_at
                && normalize_user_code(&grant.user_code) == wanted
        });
        match grant {
            Some(grant) => {
                grant.status = decision;
                true
            }
            None => false,
        }
    }

    /// Keeps the maps bounded over a long demo run. Rotated refresh tokens stay until they
    /// expire so a reuse is still recognised as one.
    fn forget_expired(&mut self, now: Instant) {
        self.device_codes
            .retain(|_, grant| now < grant.expires_at + EXPIRED_DEVICE_CODE_MEMORY);
        self.raw_tokens.retain(|_, grant| now < grant.expires_at);
        self.exchanged_tokens
            .retain(|_, grant| now < grant.expires_at);
        self.refresh_tokens
            .retain(|_, grant| now < grant.expires_at);
    }

    fn new_device_code(&mut self, client_id: &str, scope: &str) -> Value {
        let now = Instant::now();
        self.forget_expired(now);
        let taken: HashSet<String> = self
            .device_codes
            .values()
            .map(|grant| grant.user_code.clone())
            .collect();
        let user_code = loop {
            let letters = random_chars::<8>(USER_CODE_ALPHABET);
            let candidate = format!("{}-{}", &letters[..4], &letters[4..]);
            if !taken.contains(&candidate) {
                break candidate;
            }
        };
        let device_code = random_hex::<24>();
        let config = &self.config;
        let body = json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": format!("{}{ACTIVATE_PATH}", self.base_url),
            "verification_uri_complete": format!("{}{ACTIVATE_PATH}?user_code={}", self.base_url, percent_encode(&user_code)),
            "expires_in": whole_seconds(config.device_code_ttl),
            "interval": whole_seconds(config.interval),
        });
        self.device_codes.insert(
            device_code,
            DeviceGrant {
                user_code,
                client_id: client_id.to_owned(),
                scope: scope.to_owned(),
                issued_at: now,
                expires_at: now + config.device_code_ttl,
                status: DeviceStatus::Pending,
                interval: config.interval,
                last_poll: None,
                polls: 0,
            },
        );
        body
    }

    /// The Auth0 token response: raw JWT access token, id token, and a fresh refresh token when
    /// `offline_access` was granted.
    fn issue(&mut self, client_id: &str, scope: &str) -> Value {
        let now = Instant::now();
        self.forget_expired(now);
        let raw_ttl = self.config.raw_ttl;
        let issued_at = unix_now();
        let issuer = format!("{}/", self.base_url);
        let access_token = unsigned_jwt(&json!({
            "iss": issuer,
            "sub": "auth0|biganimal-sim-user",
            "aud": [AUDIENCE, format!("{}/userinfo", self.base_url)],
            "iat": issued_at,
            "exp": issued_at + whole_seconds(raw_ttl),
            "jti": uuid_like(),
            "azp": client_id,
            "scope": scope,
        }));
        self.raw_tokens
            .insert(access_token.clone(), TokenGrant::new(now, raw_ttl));
        let mut body = json!({
            "access_token": access_token,
            "scope": scope,
            "expires_in": whole_seconds(raw_ttl),
            "token_type": "Bearer",
        });
        let scopes: Vec<&str> = scope.split(' ').collect();
        if scopes.contains(&"openid") {
            body["id_token"] = json!(unsigned_jwt(&json!({
                "iss": issuer,
                "sub": "auth0|biganimal-sim-user",
                "aud": client_id,
                "iat": issued_at,
                "exp": issued_at + 36_000,
                "jti": uuid_like(),
                "email": USER_EMAIL,
                "name": "BigAnimal Demo User",
            })));
        }
        if scopes.contains(&"offline_access") {
            let refresh_token = random_hex::<32>();
            self.refresh_tokens.insert(
                refresh_token.clone(),
                RefreshGrant::new(client_id, scope.to_owned(), now, self.config.refresh_ttl),
            );
            body["refresh_token"] = json!(refresh_token);
        }
        body
    }
}

async fn handle(request: Request<Incoming>, state: Arc<Mutex<SimState>>) -> Response<SimBody> {
    let path = request.uri().path().to_owned();
    match path.as_str() {
        PROVIDER_PATH => provider(request.method(), &state),
        DEVICE_CODE_PATH => device_code(request, &state).await,
        TOKEN_PATH => token(request, &state).await,
        EXCHANGE_PATH => exchange(request, &state).await,
        ACTIVATE_PATH => activate(request, &state).await,
        _ if path.starts_with("/api/v3/") => api(request, &state).await,
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": "not_found", "error_description": format!("no route for {path}") }),
        ),
    }
}

fn method_not_allowed(allowed: &'static str) -> Response<SimBody> {
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "error": "method_not_allowed", "error_description": format!("use {allowed}") }),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allowed));
    response
}

fn provider(method: &Method, state: &Mutex<SimState>) -> Response<SimBody> {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let state = lock_state(state);
    json_response(
        StatusCode::OK,
        &json!({
            "clientId": state.config.client_id,
            "freetrialClientId": FREETRIAL_CLIENT_ID,
            "issuerUri": state.base_url,
            "scope": SCOPE,
            "audience": AUDIENCE,
        }),
    )
}

/// Form parameters, or a flat JSON object of strings (Auth0 takes both).
async fn read_params(request: Request<Incoming>) -> Result<Vec<(String, String)>, AuthError> {
    let (parts, body) = request.into_parts();
    let body = read_small_body(body, MAX_REQUEST_BODY)
        .await
        .map_err(|status| {
            AuthError::new(status, "invalid_request", "unreadable or oversized body")
        })?;
    if is_form(&parts.headers) {
        return Ok(parse_form(&body));
    }
    if is_json(&parts.headers) {
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&body) else {
            return Err(AuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "body is not a JSON object",
            ));
        };
        return Ok(object
            .into_iter()
            .filter_map(|(name, value)| value.as_str().map(|value| (name, value.to_owned())))
            .collect());
    }
    Ok(Vec::new())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

async fn device_code(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    if request.method() != Method::POST {
        return method_not_allowed("POST");
    }
    lock_state(state).counters.device_code_requests += 1;
    let params = match read_params(request).await {
        Ok(params) => params,
        Err(error) => return error.into_response(),
    };
    let mut state = lock_state(state);
    let Some(client_id) = form_value(&params, "client_id") else {
        return AuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: client_id",
        )
        .into_response();
    };
    if !state.is_known_client(client_id) {
        return AuthError::new(
            StatusCode::FORBIDDEN,
            "unauthorized_client",
            format!("Unauthorized or unknown client: {client_id}"),
        )
        .into_response();
    }
    let Some(audience) = form_value(&params, "audience") else {
        return AuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: audience",
        )
        .into_response();
    };
    if audience != AUDIENCE {
        return AuthError::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            format!("Service not found: {audience}"),
        )
        .into_response();
    }
    let scope = form_value(&params, "scope").unwrap_or_default().to_owned();
    token_response(&state.new_device_code(client_id, &scope))
}

async fn token(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    if request.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let params = match read_params(request).await {
        Ok(params) => params,
        Err(error) => return error.into_response(),
    };
    let mut state = lock_state(state);
    state
        .counters
        .grants
        .record(form_value(&params, "grant_type"));
    let result = match form_value(&params, "grant_type") {
        Some(DEVICE_CODE_GRANT) => device_code_grant(&params, &mut state),
        Some("refresh_token") => refresh_grant(&params, &mut state),
        Some(other) => Err(AuthError::new(
            StatusCode::FORBIDDEN,
            "unsupported_grant_type",
            format!("Grant type '{other}' not allowed for the client."),
        )),
        None => Err(AuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: grant_type",
        )),
    };
    match result {
        Ok(body) => token_response(&body),
        Err(error) => error.into_response(),
    }
}

fn known_client<'a>(
    params: &'a [(String, String)],
    state: &SimState,
) -> Result<&'a str, AuthError> {
    match form_value(params, "client_id") {
        Some(client_id) if state.is_known_client(client_id) => Ok(client_id),
        Some(client_id) => Err(AuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            format!("Unknown client: {client_id}"),
        )),
        None => Err(AuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Missing required parameter: client_id",
        )),
    }
}

/// RFC 8628 3.4/3.5 with Auth0's status codes. Runs under the state lock: it never awaits.
fn device_code_grant(
    params: &[(String, String)],
    state: &mut SimState,
) -> Result<Value, AuthError> {
    let client_id = known_client(params, state)?;
    let device_code = form_value(params, "device_code").ok_or_else(|| {
        AuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: device_code",
        )
    })?;
    let invalid_grant = || {
        AuthError::new(
            StatusCode::FORBIDDEN,
            "invalid_grant",
            "Invalid or expired device code.",
        )
    };
    let now = Instant::now();
    let auto_approve = state.config.auto_approve;
    let slow_down_status = state.config.slow_down_status;
    let pending_status = state.config.pending_status;
    let forced_slow_downs = state.config.slow_down_first_polls;
    let Some(grant) = state.device_codes.get_mut(device_code) else {
        return Err(invalid_grant());
    };
    if grant.client_id != client_id || grant.status == DeviceStatus::Redeemed {
        return Err(invalid_grant());
    }
    if now >= grant.expires_at {
        return Err(AuthError::new(
            StatusCode::FORBIDDEN,
            "expired_token",
            "The device_code has expired.",
        ));
    }
    let previous_poll = grant.last_poll.replace(now);
    grant.polls += 1;
    state.counters.poll_times.push(now);
    let too_fast =
        previous_poll.is_some_and(|previous| now.duration_since(previous) < grant.interval);
    if too_fast || grant.polls <= forced_slow_downs {
        // RFC 8628 3.5: the interval grows by 5 s for this and all later requests.
        grant.interval += SLOW_DOWN_STEP;
        let wait = whole_seconds(grant.interval);
        state.counters.slow_downs += 1;
        return Err(AuthError::new(
            slow_down_status,
            "slow_down",
            format!("You are polling faster than allowed. Try again in {wait} seconds."),
        ));
    }
    match grant.status {
        DeviceStatus::Pending => {
            if auto_approve {
                grant.status = DeviceStatus::Approved;
            }
            Err(AuthError::new(
                pending_status,
                "authorization_pending",
                "User has yet to authorize device code.",
            ))
        }
        DeviceStatus::Denied => Err(AuthError::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            "User denied the device authorization.",
        )),
        DeviceStatus::Redeemed => Err(invalid_grant()),
        DeviceStatus::Approved => {
            grant.status = DeviceStatus::Redeemed;
            let scope = grant.scope.clone();
            let client_id = client_id.to_owned();
            Ok(state.issue(&client_id, &scope))
        }
    }
}

/// Refresh with rotation: the presented token dies, a new one comes back.
fn refresh_grant(params: &[(String, String)], state: &mut SimState) -> Result<Value, AuthError> {
    let client_id = known_client(params, state)?.to_owned();
    let presented = form_value(params, "refresh_token").ok_or_else(|| {
        AuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: refresh_token",
        )
    })?;
    let invalid = || {
        AuthError::new(
            StatusCode::FORBIDDEN,
            "invalid_grant",
            "Unknown or invalid refresh token.",
        )
    };
    let now = Instant::now();
    let Some(refresh) = state.refresh_tokens.get_mut(presented) else {
        return Err(invalid());
    };
    if refresh.client_id != client_id {
        return Err(invalid());
    }
    if let Err(refusal) = refresh.check(now) {
        if refusal == grant::RefreshRefusal::Reused {
            state.counters.refresh_reuse += 1;
        }
        return Err(invalid());
    }
    refresh.status = RefreshStatus::Used;
    let scope = refresh.grant.clone();
    Ok(state.issue(&client_id, &scope))
}

async fn exchange(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    if request.method() != Method::POST {
        return method_not_allowed("POST");
    }
    lock_state(state).counters.exchange_requests += 1;
    let body = match read_small_body(request.into_body(), MAX_REQUEST_BODY).await {
        Ok(body) => body,
        Err(status) => return api_error(status, "unreadable or oversized body", "bad_request"),
    };
    let raw_token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|value| value.get("token")?.as_str().map(str::to_owned));
    let Some(raw_token) = raw_token else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "request body must be JSON {\"token\": \"<raw access token>\"}",
            "bad_request",
        );
    };
    let mut state = lock_state(state);
    let now = Instant::now();
    let problem = match state.raw_tokens.get(&raw_token) {
        None => Some("invalid access token"),
        Some(grant) if grant.revoked => Some("access token has been revoked"),
        Some(grant) if now >= grant.expires_at => Some("access token has expired"),
        Some(_) => None,
    };
    if let Some(problem) = problem {
        return api_error(StatusCode::UNAUTHORIZED, problem, "unauthorized");
    }
    let ttl = state.config.exchanged_ttl.unwrap_or(state.config.raw_ttl);
    let issued_at = unix_now();
    let token = unsigned_jwt(&json!({
        "iss": state.base_url,
        "sub": "auth0|biganimal-sim-user",
        "email": USER_EMAIL,
        "iat": issued_at,
        "exp": issued_at + whole_seconds(ttl),
        "jti": uuid_like(),
    }));
    state
        .exchanged_tokens
        .insert(token.clone(), TokenGrant::new(now, ttl));
    token_response(&json!({ "token": token }))
}

async fn api(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    let (parts, body) = request.into_parts();
    let body_len = drain_body(body).await;
    let mut state = lock_state(state);
    state.counters.api_requests += 1;
    if let Err(problem) = authorize_api(&parts.headers, &state) {
        return api_error(StatusCode::UNAUTHORIZED, &problem, "unauthorized");
    }
    state.counters.api_authorized += 1;
    json_response(StatusCode::OK, &api_answer("BigAnimal", &parts, body_len))
}

/// Either credential may carry the request; the message names what was wrong.
fn authorize_api(headers: &HeaderMap, state: &SimState) -> Result<(), String> {
    let access_keys: Vec<&HeaderValue> = headers.get_all("x-access-key").iter().collect();
    let authorizations: Vec<&HeaderValue> = headers.get_all(AUTHORIZATION).iter().collect();
    let key_problem = match (access_keys.as_slice(), &state.config.access_key) {
        ([], _) => None,
        ([_], None) => Some("access keys are not enabled".to_owned()),
        ([presented], Some(expected)) if presented.as_bytes() == expected.as_bytes() => {
            return Ok(())
        }
        ([_], Some(_)) => Some("invalid access key".to_owned()),
        _ => Some("more than one x-access-key header".to_owned()),
    };
    let bearer_problem = match authorizations.as_slice() {
        [] => None,
        [value] => match bearer_problem(value, state) {
            None => return Ok(()),
            problem => problem,
        },
        _ => Some("more than one Authorization header".to_owned()),
    };
    Err(bearer_problem.or(key_problem).unwrap_or_else(|| {
        "missing credentials: send Authorization: Bearer <token> or x-access-key".to_owned()
    }))
}

fn bearer_problem(value: &HeaderValue, state: &SimState) -> Option<String> {
    let Some(token) = strip_scheme(value, "Bearer ").map(str::trim) else {
        return Some("expected \"Authorization: Bearer <token>\"".to_owned());
    };
    let now = Instant::now();
    match state.exchanged_tokens.get(token) {
        Some(grant) if grant.revoked => Some("token has been revoked".to_owned()),
        Some(grant) if now >= grant.expires_at => Some("token has expired".to_owned()),
        Some(_) => None,
        None if state.raw_tokens.contains_key(token) => Some(format!(
            "this is a raw access token from the auth server; exchange it at {API_PREFIX}/auth/token for a BigAnimal token"
        )),
        None => Some("invalid token".to_owned()),
    }
}

async fn activate(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    match *request.method() {
        Method::GET => {
            let query = request.uri().query().unwrap_or_default().as_bytes();
            let query = parse_form(query);
            let user_code = form_value(&query, "user_code").unwrap_or_default();
            html_page(StatusCode::OK, &activate_form(user_code))
        }
        Method::POST => {
            let body = match read_small_body(request.into_body(), MAX_REQUEST_BODY).await {
                Ok(body) => body,
                Err(status) => return html_page(status, "<p>Unreadable request.</p>"),
            };
            let form = parse_form(&body);
            let user_code = form_value(&form, "user_code").unwrap_or_default();
            let decision = match form_value(&form, "action") {
                Some("approve") => DeviceStatus::Approved,
                Some("deny") => DeviceStatus::Denied,
                _ => return html_page(StatusCode::BAD_REQUEST, "<p>Choose Approve or Deny.</p>"),
            };
            if !lock_state(state).decide(user_code, decision, Instant::now()) {
                let page = format!(
                    "<p class=\"bad\">The code <code>{}</code> is unknown, expired or already used.</p>{}",
                    html_escape(user_code),
                    activate_form("")
                );
                return html_page(StatusCode::BAD_REQUEST, &page);
            }
            let message = if decision == DeviceStatus::Approved {
                "<p class=\"ok\">Device approved. You can close this window and return to your terminal.</p>"
            } else {
                "<p class=\"bad\">Access denied. The device will not be signed in.</p>"
            };
            html_page(StatusCode::OK, message)
        }
        _ => method_not_allowed("GET, POST"),
    }
}

fn activate_form(user_code: &str) -> String {
    format!(
        "<p>Enter the code shown on your device, then approve or deny access as <b>{USER_EMAIL}</b>.</p>\
         <form method=\"post\" action=\"{ACTIVATE_PATH}\">\
         <input name=\"user_code\" value=\"{}\" placeholder=\"ABCD-EFGH\" autofocus>\
         <button name=\"action\" value=\"approve\">Approve</button>\
         <button name=\"action\" value=\"deny\">Deny</button></form>",
        html_escape(user_code)
    )
}

fn html_page(status: StatusCode, content: &str) -> Response<SimBody> {
    let page = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>BigAnimal device activation (simulator)</title>\
         <style>body{{font-family:sans-serif;max-width:32em;margin:3em auto}}input{{font-size:1.4em;width:9em;text-transform:uppercase}}\
         button{{font-size:1.1em;margin-left:.5em}}.ok{{color:#186a3b}}.bad{{color:#922b21}}</style></head>\
         <body><h1>Device activation</h1>{content}</body></html>"
    );
    response(status, "text/html; charset=utf-8", page)
}

/// The user code comes from the query string: it must not become markup.
fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}
