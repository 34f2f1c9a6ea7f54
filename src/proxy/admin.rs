//! tokenproxy's own endpoints under `/-/`: health, readiness and status. Never forwarded.

use http::{Method, Request, StatusCode};
use tokio::time::Instant;

use crate::app::App;
use crate::problem::{json_response, ProxyError};
use crate::transport::ProxyBody;

pub fn handle<B>(app: &App, path: &str, request: &Request<B>) -> http::Response<ProxyBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return ProxyError::BadRequest {
            reason: format!("/-/{path} answers GET only"),
        }
        .into_response();
    }
    match path {
        "health" => json_response(
            StatusCode::OK,
            "application/json",
            &serde_json::json!({"status": "ok"}),
        ),
        "ready" => {
            let ready = app.ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(
                status,
                "application/json",
                &serde_json::json!({"ready": ready}),
            )
        }
        "status" => json_response(StatusCode::OK, "application/json", &status(app)),
        _ => ProxyError::NoRoute {
            path: format!("/-/{path}"),
        }
        .into_response(),
    }
}

/// Per upstream: route, target, kind, token state and timings. Never a token.
pub fn status(app: &App) -> serde_json::Value {
    let now = Instant::now();
    let upstreams: Vec<serde_json::Value> = app
        .upstreams
        .iter()
        .map(|upstream| {
            let config = &upstream.config;
            let current = upstream.tokens.current();
            let expires_in = current
                .as_ref()
                .and_then(|credential| credential.expires_at)
                .map(|expires_at| expires_at.saturating_duration_since(now).as_secs());
            let report = upstream.tokens.report();
            serde_json::json!({
                "name": config.name,
                "prefix": config.prefix,
                "host": config.host,
                "listen": config.listen.map(|addr| addr.to_string()),
                "target": config.target.uri.to_string(),
                "kind": config.auth.kind,
                "token": {
                    "state": upstream.tokens.state(),
                    "expires_in_seconds": expires_in,
                    "last_refresh_unix": report.last_refresh.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                    "last_error": report.last_error,
                    "refreshes": report.refreshes,
                    "failures": report.failures,
                    "requests_waited": report.requests_waited,
                },
            })
        })
        .collect();
    serde_json::json!({ "ready": app.ready(), "upstreams": upstreams })
}
