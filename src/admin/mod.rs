//! tokenproxy's own endpoints under `/-/`, never forwarded: the status page (`/-/` and its
//! assets), health, readiness, status, metrics, the per-upstream actions
//! (`POST /-/upstreams/NAME/{login,logout,refresh,token}`) and the login callback
//! (`/-/callback/NAME`). The proxy hands it every `/-/` request that passed its guards;
//! the JSON it answers is typed in [`crate::status`].

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::app::{App, Upstream};
use crate::clients::{Client, RuleKind};
use crate::metrics::{self, ClientMetrics};
use crate::problem::{json_response, ProxyError};
use crate::providers::{LoginMethod, Revocation};
use crate::status::{
    Action, ClientStatus, EgressStatus, FleetStatus, LoginAnswer, Logout, LogoutAnswer,
    PolicyRefusals, Refusals, RequestCounts, Status, TokenAnswer, TokenStatus, UpstreamStatus,
};
use crate::transport::ProxyBody;

mod callback;
mod page;

/// The largest body an admin endpoint reads (an implicit-grant fragment).
const MAX_ADMIN_BODY: usize = 16 * 1024;

/// The header every action must carry. No HTML form can send it, and a cross-site
/// script can only after a CORS preflight, which the browser guard refuses.
pub const ACTION_HEADER: &str = "tokenproxy-action";

/// A token that expires sooner than this is refreshed before the token action hands it
/// out: a script gets a token it can still use.
const TOKEN_MIN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Answers `/-/{path}`. `same_origin`: the request came from the status page's own origin,
/// or from no browser at all (the browser guard's verdict), which actions require.
pub async fn handle(
    app: &App,
    path: &str,
    same_origin: bool,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let segments: Vec<&str> = path.split('/').collect();
    let method = request.method().clone();
    let result = match (&method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, [""]) => Ok(page::status_page(&status(app))),
        (&Method::GET | &Method::HEAD, ["assets", name]) => {
            page::asset(name).ok_or_else(|| ProxyError::NoRoute {
                path: format!("/-/{path}"),
            })
        }
        (&Method::GET | &Method::HEAD, ["health"]) => {
            Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
        }
        (&Method::GET | &Method::HEAD, ["ready"]) => {
            let ready = app.ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Ok(json(status, &serde_json::json!({ "ready": ready })))
        }
        (&Method::GET | &Method::HEAD, ["status"]) => Ok(json(StatusCode::OK, &status(app))),
        (&Method::GET | &Method::HEAD, ["metrics"]) => Ok(metrics_response(app)),
        (&Method::POST, ["upstreams", name, action]) => match action_allowed(same_origin, &request)
        {
            Ok(()) => upstream_action(app, name, action).await,
            Err(error) => Err(error),
        },
        (&Method::GET, ["callback", name]) => callback::get(app, name, request.uri().query()).await,
        (&Method::POST, ["callback", name]) => callback::post(app, name, request).await,
        (_, [""] | ["health" | "ready" | "status" | "metrics"] | ["assets", _]) => {
            Err(not_allowed(&method, "GET, HEAD"))
        }
        (_, ["upstreams", _, _]) => Err(not_allowed(&method, "POST")),
        (_, ["callback", _]) => Err(not_allowed(&method, "GET, POST")),
        _ => Err(ProxyError::NoRoute {
            path: format!("/-/{path}"),
        }),
    };
    result.unwrap_or_else(ProxyError::into_response)
}

fn not_allowed(method: &Method, allow: &'static str) -> ProxyError {
    ProxyError::MethodNotAllowed {
        method: method.to_string(),
        allow,
    }
}

/// Actions change state, so they are same-origin only: the page's own origin (or no
/// browser at all), and the action header.
fn action_allowed(same_origin: bool, request: &Request<Incoming>) -> Result<(), ProxyError> {
    if !same_origin {
        return Err(ProxyError::CrossOrigin {
            reason: "actions are accepted from the status page's own origin only".into(),
        });
    }
    if !request.headers().contains_key(ACTION_HEADER) {
        return Err(ProxyError::CrossOrigin {
            reason: format!(
                "an action needs the header `{ACTION_HEADER}: 1` (the status page and the CLI send it)"
            ),
        });
    }
    Ok(())
}

/// OpenMetrics 1.0, prometheus-client's own encoding, whatever the scraper's `Accept`:
/// Prometheus picks its parser by the answer's content type.
fn metrics_response(app: &App) -> Response<ProxyBody> {
    let text = metrics::render(metrics_snapshot(app));
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::OPENMETRICS_CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What a scrape reports, read once from every upstream.
fn metrics_snapshot(app: &App) -> metrics::Snapshot {
    use std::sync::atomic::Ordering::Relaxed;
    let now = Instant::now();
    let wall = std::time::SystemTime::now();
    let upstreams = app
        .upstreams
        .iter()
        .map(|upstream| metrics::UpstreamSnapshot {
            name: upstream.config.name.clone(),
            requests: std::sync::Arc::clone(&upstream.metrics),
            tokens: upstream.tokens.metrics(),
            state: upstream.tokens.state(),
            expires_at_unix: upstream
                .tokens
                .current()
                .and_then(|credential| credential.expires_at)
                .map(|expires_at| metrics::unix_seconds(wall, now, expires_at)),
            fleet: upstream.tokens.fleet().map(|link| metrics::FleetFigures {
                lease_acquisitions: link.lease_changes.load(Relaxed),
                refreshes: link.fleet_refreshes.load(Relaxed),
                holds_lease: link.view().this_replica,
            }),
        })
        .collect();
    let redis_errors = app
        .upstreams
        .iter()
        .find_map(|upstream| upstream.tokens.fleet())
        .map(|link| link.redis_errors());
    metrics::Snapshot {
        upstreams,
        redis_errors,
        egress: app
            .egress
            .as_ref()
            .map(|egress| std::sync::Arc::clone(&egress.metrics)),
        clients: app
            .clients
            .iter()
            .zip(&app.client_metrics)
            .map(|(client, metrics)| (client.name.to_string(), std::sync::Arc::clone(metrics)))
            .collect(),
    }
}

/// Through a `serde_json::Value`, whose keys are sorted, as the answers always were.
fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ProxyBody> {
    let value = serde_json::to_value(value).expect("an admin answer serializes");
    json_response(status, "application/json", &value)
}

fn find<'a>(app: &'a App, name: &str) -> Result<&'a std::sync::Arc<Upstream>, ProxyError> {
    app.upstream(name).ok_or_else(|| ProxyError::NoRoute {
        path: format!("/-/upstreams/{name}"),
    })
}

fn no_token(name: &str, cause: crate::providers::ProviderError) -> ProxyError {
    ProxyError::NoToken {
        upstream: name.to_owned(),
        retry_after: cause.retry_after(),
        cause,
    }
}

async fn upstream_action(
    app: &App,
    name: &str,
    action: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upstream = find(app, name)?;
    let tokens = &upstream.tokens;
    if action == "token" {
        return Ok(json(StatusCode::OK, &token_answer(upstream).await?));
    }
    if !tokens.provider().refreshes() && matches!(action, "login" | "refresh" | "logout") {
        return Err(ProxyError::StaticToken {
            upstream: name.to_owned(),
            action: action.to_owned(),
        });
    }
    match action {
        "login" => {
            let started = app
                .logins
                .start(tokens, &app.callback_url(name))
                .await
                .map_err(|cause| no_token(name, cause))?;
            let answer = LoginAnswer {
                upstream: name.to_owned(),
                started,
            };
            Ok(json(StatusCode::OK, &answer))
        }
        "refresh" => {
            tokens
                .refresh()
                .await
                .map_err(|unavailable| no_token(name, unavailable.cause))?;
            Ok(json(StatusCode::OK, &upstream_status(app, upstream)))
        }
        "logout" => {
            app.logins.cancel(name);
            let forgotten = tokens.forget().await;
            let (revoked, revocation_error) = match &forgotten {
                Some(credential) => match tokens.provider().revoke(credential).await {
                    Ok(revocation) => (revocation == Revocation::Revoked, None),
                    Err(error) => {
                        tracing::warn!(upstream = %name, error = %error, "revocation failed; the token is forgotten anyway");
                        (false, Some(error.to_string()))
                    }
                },
                None => (false, None),
            };
            // What a client that copied the token can still do with it.
            let still_valid_until = forgotten
                .as_ref()
                .filter(|_| !revoked)
                .and_then(|credential| credential.expires_at)
                .filter(|&at| at > Instant::now())
                .map(|at| {
                    metrics::unix_seconds(std::time::SystemTime::now(), Instant::now(), at).floor()
                        as u64
                });
            let answer = LogoutAnswer {
                upstream: upstream_status(app, upstream),
                logout: Logout {
                    had_token: forgotten.is_some(),
                    revoked,
                    still_valid_until_unix: still_valid_until,
                    revocation_error,
                },
            };
            Ok(json(StatusCode::OK, &answer))
        }
        _ => Err(ProxyError::NoRoute {
            path: format!("/-/upstreams/{name}/{action}"),
        }),
    }
}

/// The token to hand out, refreshed first if it is about to expire, with the full header
/// set a forwarded request carries.
async fn token_answer(upstream: &Upstream) -> Result<TokenAnswer, ProxyError> {
    let name = upstream.config.name.as_str();
    let tokens = &upstream.tokens;
    let mut credential = tokens
        .credential()
        .await
        .map_err(|unavailable| no_token(name, unavailable.cause))?;
    let expires_soon =
        |at: Instant| at.saturating_duration_since(Instant::now()) < TOKEN_MIN_LIFETIME;
    if tokens.provider().refreshes() && credential.expires_at.is_some_and(expires_soon) {
        credential = tokens
            .refresh()
            .await
            .map_err(|unavailable| no_token(name, unavailable.cause))?;
    }
    let headers = upstream
        .config
        .headers
        .iter()
        .chain(&credential.headers)
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(TokenAnswer {
        upstream: name.to_owned(),
        token: credential.token.expose().to_owned(),
        headers,
        expires_in_seconds: credential
            .expires_at
            .map(|at| at.saturating_duration_since(Instant::now()).as_secs()),
    })
}

fn upstream_status(app: &App, upstream: &Upstream) -> UpstreamStatus {
    let now = Instant::now();
    let config = &upstream.config;
    let current = upstream.tokens.current();
    let expires_at = current
        .as_ref()
        .and_then(|credential| credential.expires_at);
    let expires_in = expires_at.map(|at| at.saturating_duration_since(now).as_secs());
    let expires_at_unix = expires_at
        .map(|at| metrics::unix_seconds(std::time::SystemTime::now(), now, at).floor() as u64);
    let report = upstream.tokens.report();
    UpstreamStatus {
        name: config.name.clone(),
        prefix: config.prefix.clone(),
        host: config.host.clone(),
        listen: config.listen.map(|addr| addr.to_string()),
        target: config.target.uri.to_string(),
        kind: config.auth.kind.clone(),
        login: upstream.tokens.provider().login_method(),
        actions: actions(upstream),
        token: TokenStatus {
            state: upstream.tokens.state(),
            expires_in_seconds: expires_in,
            expires_at_unix,
            last_refresh_unix: report
                .last_refresh
                .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|since| since.as_secs()),
            last_error: report.last_error,
            refreshes: report.refreshes,
            failures: report.failures,
            requests_waited: report.requests_waited,
        },
        requests: RequestCounts {
            total: upstream.metrics.total(),
            errors: upstream.metrics.errors(),
            egress: upstream.metrics.egress_requests(),
        },
        pending_login: app.logins.pending_device(&config.name),
        fleet: upstream.tokens.fleet().map(|link| {
            let view = link.view();
            FleetStatus {
                holder: view.holder,
                generation: view.generation,
                this_replica: view.this_replica,
                version: view.version,
                redis_reachable: link.reachable(),
                when_redis_down: view.when_redis_down.label().to_owned(),
            }
        }),
    }
}

/// The actions an upstream offers: a static token has none.
fn actions(upstream: &Upstream) -> Vec<Action> {
    let provider = upstream.tokens.provider();
    if !provider.refreshes() {
        return Vec::new();
    }
    match provider.login_method() {
        LoginMethod::Direct => vec![Action::Refresh, Action::Logout],
        LoginMethod::DeviceCode | LoginMethod::Browser => {
            vec![Action::Refresh, Action::Login, Action::Logout]
        }
    }
}

/// The `/-/status` document.
pub fn status(app: &App) -> Status {
    use std::sync::atomic::Ordering::Relaxed;
    let refusals = &app.refusals;
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        now_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
        ready: app.ready(),
        upstreams: app
            .upstreams
            .iter()
            .map(|upstream| upstream_status(app, upstream))
            .collect(),
        browser_guard_refusals: Refusals {
            foreign_host: refusals.foreign_host.load(Relaxed),
            foreign_origin: refusals.foreign_origin.load(Relaxed),
            null_origin: refusals.null_origin.load(Relaxed),
            cross_site_fetch: refusals.cross_site_fetch.load(Relaxed),
        },
        store: app.store_backend.to_owned(),
        egress: app.egress.as_ref().map(|egress| {
            let figures = &egress.metrics;
            EgressStatus {
                listen: egress.address.get().map(ToString::to_string),
                intercepted_tunnels: figures.intercepted.load(Relaxed),
                passthrough_tunnels: figures.passthrough.load(Relaxed),
                refused_not_allowed: figures.refused_not_allowed.load(Relaxed),
                refused_proxy_auth: figures.refused_proxy_auth.load(Relaxed),
            }
        }),
        clients: app
            .clients
            .iter()
            .zip(&app.client_metrics)
            .map(|(client, metrics)| client_status(client, metrics))
            .collect(),
    }
}

fn client_status(client: &Client, metrics: &ClientMetrics) -> ClientStatus {
    let mut refused = PolicyRefusals::default();
    for (rule, count) in metrics.refusals() {
        *match rule {
            RuleKind::Upstream => &mut refused.upstream,
            RuleKind::Method => &mut refused.method,
            RuleKind::Path => &mut refused.path,
            RuleKind::Admin => &mut refused.admin,
        } = count;
    }
    ClientStatus {
        name: client.name.to_string(),
        policy: client.policy(),
        upstreams: client
            .upstreams()
            .map(|names| names.into_iter().map(str::to_owned).collect()),
        admin: client.admin,
        requests: metrics.requests(),
        refused,
    }
}
