//! BigID (seed `001`): a long-lived user token is swapped for a short-lived `systemToken`.
//!
//! - `GET` (or `POST`) `/api/v1/refresh-access-token` with `Authorization: <user token>` raw, no
//!   `Bearer` -> `{"success": true, "systemToken": "<JWT>"}`.
//! - The quirk: a bad user token (a `Bearer `-prefixed one included) answers **HTTP 200**
//!   `{"success": false, "message": "Invalid token"}`; only a missing header is a 401. Clients
//!   must check `success`, not the status.
//! - Every other path under `/api/v1/` is the API: `Authorization: <systemToken>` raw.
//!
//! Expiry uses `tokio::time::Instant`; JWT `exp`/`iat` use the wall clock.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::header::{HeaderValue, ALLOW, AUTHORIZATION, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::time::Instant;

use super::grant::{self, TokenGrant};
use super::oauth::{token_response, uuid_like, whole_seconds};
use super::{
    api_answer, drain_body, json_response, lock_state, response, unix_now, unsigned_jwt, SimBody,
    SimServer,
};

pub const TOKEN_PATH: &str = "/api/v1/refresh-access-token";
pub const API_PREFIX: &str = "/api/v1";
/// BigID caps user tokens at 999 days.
pub const USER_TOKEN_MAX_TTL: Duration = Duration::from_secs(999 * 86_400);

#[derive(Clone, Debug)]
pub struct BigIdSimConfig {
    /// User tokens the exchange accepts, compared byte for byte.
    pub user_tokens: Vec<String>,
    /// Server-side lifetime of a systemToken (and its `exp` when `exp_claim`).
    pub system_ttl: Duration,
    /// false = the systemToken carries no `exp`, so a client must fall back to its own TTL.
    pub exp_claim: bool,
}

impl Default for BigIdSimConfig {
    fn default() -> Self {
        BigIdSimConfig {
            user_tokens: Vec::new(),
            system_ttl: Duration::from_secs(3600),
            exp_claim: true,
        }
    }
}

/// A user token shaped like BigID's (a JWT living 999 days), for configs and the demo.
pub fn new_user_token() -> String {
    let issued_at = unix_now();
    unsigned_jwt(&json!({
        "user": "bigid-demo-user",
        "tokenType": "user",
        "iat": issued_at,
        "exp": issued_at + USER_TOKEN_MAX_TTL.as_secs(),
        "jti": uuid_like(),
    }))
}

/// How the exchange endpoint answers; see [`BigIdSim::set_mode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BigIdMode {
    Normal,
    /// 200 `{"success": false, "message": "Invalid token"}` whatever the token.
    SuccessFalse,
    /// 200 `text/html`: a login page instead of JSON.
    Html,
    /// 503 with `Retry-After: 3`.
    ServerError,
}

/// A running BigID server. Dropping it stops the server.
pub struct BigIdSim {
    server: SimServer,
    state: Arc<Mutex<SimState>>,
}

/// Starts the simulator on `http://127.0.0.1:0`.
pub async fn start(config: BigIdSimConfig) -> BigIdSim {
    let state = Arc::new(Mutex::new(SimState {
        config,
        mode: BigIdMode::Normal,
        revoked_user_tokens: HashSet::new(),
        system_tokens: HashMap::new(),
        exchange_requests: 0,
        tokens_issued: 0,
        api_requests: 0,
        api_authorized: 0,
    }));
    let server = SimServer::with_state(&state, None, handle).await;
    BigIdSim { server, state }
}

impl BigIdSim {
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `{url}/api/v1/refresh-access-token`.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.server.url())
    }

    /// `{url}/api/v1`.
    pub fn api_url(&self) -> String {
        format!("{}{API_PREFIX}", self.server.url())
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        lock_state(&self.state)
    }

    /// Requests to the exchange endpoint, counted before any check.
    pub fn exchange_requests(&self) -> usize {
        self.state().exchange_requests
    }

    /// Exchanges answered `success: true`.
    pub fn tokens_issued(&self) -> usize {
        self.state().tokens_issued
    }

    /// Every systemToken issued so far becomes invalid.
    pub fn revoke_system_tokens(&self) {
        for grant in self.state().system_tokens.values_mut() {
            grant.revoked = true;
        }
    }

    /// The user token is refused from now on (as if deleted in the BigID UI).
    pub fn revoke_user_token(&self, user_token: &str) {
        self.state()
            .revoked_user_tokens
            .insert(user_token.to_owned());
    }

    /// Lifetime of systemTokens issued from now on.
    pub fn set_system_ttl(&self, ttl: Duration) {
        self.state().config.system_ttl = ttl;
    }

    pub fn set_mode(&self, mode: BigIdMode) {
        self.state().mode = mode;
    }

    /// Requests to the protected API, answered 200 or not.
    pub fn api_requests(&self) -> usize {
        self.state().api_requests
    }

    /// Protected API requests answered 200.
    pub fn api_authorized(&self) -> usize {
        self.state().api_authorized
    }

    /// systemTokens the API would accept right now.
    pub fn valid_system_tokens(&self) -> usize {
        grant::count_valid(&self.state().system_tokens)
    }
}

struct SimState {
    config: BigIdSimConfig,
    mode: BigIdMode,
    revoked_user_tokens: HashSet<String>,
    system_tokens: HashMap<String, TokenGrant>,
    exchange_requests: usize,
    tokens_issued: usize,
    api_requests: usize,
    api_authorized: usize,
}

async fn handle(request: Request<Incoming>, state: Arc<Mutex<SimState>>) -> Response<SimBody> {
    let path = request.uri().path();
    if path == TOKEN_PATH {
        exchange(request, &state).await
    } else if path.starts_with("/api/v1/") {
        api(request, &state).await
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            &json!({ "status": "error", "statusCode": 404, "message": format!("Cannot {} {path}", request.method()) }),
        )
    }
}

/// The exactly-one `Authorization` header as text, or why not.
fn single_authorization(headers: &HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or("Authorization header is missing")?;
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    value
        .to_str()
        .map_err(|_| "Authorization header is not text")
}

async fn exchange(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    if request.method() != Method::GET && request.method() != Method::POST {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "success": false, "message": "use GET or POST" }),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, POST"));
        return response;
    }
    let (parts, body) = request.into_parts();
    drain_body(body).await;
    let mut state = lock_state(state);
    state.exchange_requests += 1;
    match state.mode {
        BigIdMode::Normal => {}
        BigIdMode::SuccessFalse => return invalid_token(),
        BigIdMode::Html => {
            return response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                "<!DOCTYPE html><html><head><title>BigID - Login</title></head>\
                 <body><form method=\"post\" action=\"/login\"><input name=\"username\">\
                 <input name=\"password\" type=\"password\"></form></body></html>",
            );
        }
        BigIdMode::ServerError => {
            let mut response = response(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "Service Unavailable",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("3"));
            return response;
        }
    }
    let user_token = match single_authorization(&parts.headers) {
        Ok(user_token) => user_token,
        Err(problem) => {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &json!({ "success": false, "message": problem }),
            )
        }
    };
    // Compared as sent: a `Bearer ` prefix makes it a different, unknown token.
    let known = state
        .config
        .user_tokens
        .iter()
        .any(|known| known == user_token)
        && !state.revoked_user_tokens.contains(user_token);
    if !known {
        return invalid_token();
    }

    let ttl = state.config.system_ttl;
    let issued_at = unix_now();
    let mut claims = json!({
        "user": "bigid-demo-user",
        "tokenType": "system",
        "iat": issued_at,
        "jti": uuid_like(),
    });
    if state.config.exp_claim {
        claims["exp"] = json!(issued_at + whole_seconds(ttl));
    }
    let system_token = unsigned_jwt(&claims);
    let now = Instant::now();
    // Keeps the map bounded over a long demo run.
    state
        .system_tokens
        .retain(|_, grant| now < grant.expires_at);
    state
        .system_tokens
        .insert(system_token.clone(), TokenGrant::new(now, ttl));
    state.tokens_issued += 1;
    token_response(&json!({ "success": true, "systemToken": system_token }))
}

/// BigID's failure answer: HTTP 200 with `success: false`.
fn invalid_token() -> Response<SimBody> {
    json_response(
        StatusCode::OK,
        &json!({ "success": false, "message": "Invalid token" }),
    )
}

async fn api(request: Request<Incoming>, state: &Mutex<SimState>) -> Response<SimBody> {
    let (parts, body) = request.into_parts();
    let body_len = drain_body(body).await;
    let mut state = lock_state(state);
    state.api_requests += 1;
    let unauthorized = |message: &str| {
        json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "status": "error", "statusCode": 401, "message": message }),
        )
    };
    let system_token = match single_authorization(&parts.headers) {
        Ok(system_token) => system_token,
        Err(problem) => return unauthorized(problem),
    };
    let now = Instant::now();
    match state.system_tokens.get(system_token) {
        Some(grant) if grant.revoked => return unauthorized("token has been revoked"),
        Some(grant) if now >= grant.expires_at => return unauthorized("token has expired"),
        Some(_) => {}
        None if system_token
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer ")) =>
        {
            return unauthorized("send the systemToken as is, without \"Bearer \"")
        }
        None => return unauthorized("invalid token"),
    }
    state.api_authorized += 1;
    let mut answer = api_answer("BigID", &parts, body_len);
    if answer.get("status").is_none() {
        // Not a list the demo calls: what arrived, in BigID's envelope.
        answer["status"] = json!("success");
        answer["statusCode"] = json!(200);
        answer["data"] = json!({});
    }
    json_response(StatusCode::OK, &answer)
}
