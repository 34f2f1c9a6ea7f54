//! The browser guard: no web page the user opens can spend tokenproxy's tokens.
//!
//! - Host allow-list (DNS rebinding): a request whose `Host` is not a loopback name, a
//!   `*.localhost` name, the listener's own IP, a configured upstream `host` or in
//!   `server.allowed_hosts` gets 421. No `Host` at all (HTTP/1.0) comes from no browser.
//! - Cross-site refusal: an `Origin` that is neither the proxy's own (as the client
//!   addressed it) nor allowed, `Origin: null`, or `Sec-Fetch-Site: cross-site`/`same-site`
//!   without an allowed `Origin` gets 403. curl, Postman and scripts send none of these.
//! - CORS for allowed origins only: their preflights are answered here (never forwarded, so
//!   never with a token), and answers carry `Access-Control-Allow-Origin` for them alone;
//!   every `Access-Control-Allow-*` a vendor sends is dropped.
//!
//! The common case (a loopback `Host`, no `Origin`, no `Sec-Fetch-Site`) allocates nothing.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::problem::ProxyError;
use crate::transport::ProxyBody;

/// A name built once: looking a header up by text parses the name at every request.
static SEC_FETCH_SITE: header::HeaderName = header::HeaderName::from_static("sec-fetch-site");

/// Why the guard refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    ForeignHost(String),
    ForeignOrigin(String),
    NullOrigin,
    CrossSiteFetch(String),
}

impl Refusal {
    /// Logs the refusal at debug level and counts it.
    pub fn record(&self, app: &App) {
        use std::sync::atomic::Ordering::Relaxed;
        tracing::debug!(refusal = ?self, "browser guard refused a request");
        let counter = match self {
            Refusal::ForeignHost(_) => &app.refusals.foreign_host,
            Refusal::ForeignOrigin(_) => &app.refusals.foreign_origin,
            Refusal::NullOrigin => &app.refusals.null_origin,
            Refusal::CrossSiteFetch(_) => &app.refusals.cross_site_fetch,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn into_error(self) -> ProxyError {
        match self {
            Refusal::ForeignHost(host) => ProxyError::MisdirectedHost { host },
            Refusal::ForeignOrigin(origin) => ProxyError::CrossOrigin {
                reason: format!("Origin {origin} is not allowed; list it in allowed_origins to let that web app call through"),
            },
            Refusal::NullOrigin => ProxyError::CrossOrigin {
                reason: "Origin: null (a sandboxed or file page) is never allowed".into(),
            },
            Refusal::CrossSiteFetch(site) => ProxyError::CrossOrigin {
                reason: format!("Sec-Fetch-Site: {site} without an allowed Origin"),
            },
        }
    }
}

/// The `Host` check, before routing.
pub fn check_host<B>(
    app: &App,
    request: &Request<B>,
    host: Option<&str>,
    local_ip: Option<std::net::IpAddr>,
) -> Result<(), Refusal> {
    let _ = request;
    let Some(authority) = host else {
        return Ok(());
    };
    let name = bare_host(authority);
    let allowed = is_loopback_name(name)
        || local_ip.is_some_and(|ip| !ip.is_unspecified() && ip_matches(name, ip))
        || app.routes.is_upstream_host(name)
        || app
            .server
            .allowed_hosts
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(name));
    if allowed {
        Ok(())
    } else {
        Err(Refusal::ForeignHost(name.to_owned()))
    }
}

/// What the origin check decided for a request that may go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No `Origin`, or the proxy's own: nothing to add.
    SameOrigin,
    /// An allowed web app: answer with CORS headers for it.
    Allowed(HeaderValue),
}

/// The `Origin` / `Sec-Fetch-Site` check, after routing (`upstream_origins`: the routed
/// upstream's own `allowed_origins`).
pub fn check_origin(
    app: &App,
    headers: &HeaderMap,
    host: Option<&str>,
    upstream_origins: &[String],
) -> Result<Verdict, Refusal> {
    let fetch_site = headers.get(&SEC_FETCH_SITE).and_then(|v| v.to_str().ok());
    let Some(origin) = headers.get(header::ORIGIN) else {
        return match fetch_site {
            Some(site @ ("cross-site" | "same-site")) => {
                Err(Refusal::CrossSiteFetch(site.to_owned()))
            }
            _ => Ok(Verdict::SameOrigin),
        };
    };
    let origin_text = origin.to_str().unwrap_or("").trim();
    if origin_text.eq_ignore_ascii_case("null") {
        return Err(Refusal::NullOrigin);
    }
    if host.is_some_and(|host| is_own_origin(origin_text, host)) {
        return Ok(Verdict::SameOrigin);
    }
    let allowed = app
        .server
        .allowed_origins
        .iter()
        .chain(upstream_origins)
        .any(|allowed| allowed.eq_ignore_ascii_case(origin_text.trim_end_matches('/')));
    if allowed {
        Ok(Verdict::Allowed(origin.clone()))
    } else {
        Err(Refusal::ForeignOrigin(
            origin_text.chars().take(200).collect(),
        ))
    }
}

/// The vendor's redirect back to `/-/callback/NAME` after a login: a top-level navigation
/// from the vendor's site, which a browser marks `Sec-Fetch-Site: cross-site` (or
/// `same-site`). It is let past the origin check (not the `Host` check): the one-time
/// `state` a login started here protects it, and a callback with an unknown or used
/// `state` is refused (400) without touching any token.
pub fn is_login_callback(method: &Method, admin_path: &str) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && admin_path
            .strip_prefix("callback/")
            .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`).
pub fn is_preflight<B>(request: &Request<B>) -> bool {
    request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The proxy's own answer to an allowed origin's preflight.
pub fn preflight_response<B>(request: &Request<B>, origin: HeaderValue) -> Response<ProxyBody> {
    use http_body_util::{BodyExt, Empty};
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    if let Some(requested) = request
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// Drops every `Access-Control-Allow-*` the vendor sent, and grants the allowed origin.
pub fn decorate(headers: &mut HeaderMap, verdict: &Verdict) {
    let vendor_cors = headers
        .keys()
        .any(|name| name.as_str().starts_with("access-control-allow-"));
    for name in [
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::ACCESS_CONTROL_ALLOW_METHODS,
    ]
    .into_iter()
    .filter(|_| vendor_cors)
    {
        headers.remove(name);
    }
    if let Verdict::Allowed(origin) = verdict {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// `Host` without port and trailing dot, as a slice of the input.
fn bare_host(authority: &str) -> &str {
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => authority,
        }
    };
    host.trim_end_matches('.')
}

fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name == "127.0.0.1"
        || name == "[::1]"
        || (name.len() > ".localhost".len()
            && name[name.len() - ".localhost".len()..].eq_ignore_ascii_case(".localhost"))
}

fn ip_matches(name: &str, ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(ip) => name.parse::<std::net::Ipv4Addr>() == Ok(ip),
        std::net::IpAddr::V6(ip) => name
            .strip_prefix('[')
            .and_then(|name| name.strip_suffix(']'))
            .is_some_and(|name| name.parse::<std::net::Ipv6Addr>() == Ok(ip)),
    }
}

/// `http://<host as the client addressed it>`: the proxy's own origin.
fn is_own_origin(origin: &str, host: &str) -> bool {
    origin
        .strip_prefix("http://")
        .is_some_and(|rest| rest.trim_end_matches('/').eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(bare_host("LocalHost.:8080"), "LocalHost");
        assert_eq!(bare_host("[::1]:8080"), "[::1]");
        assert_eq!(bare_host("bigeval.localhost"), "bigeval.localhost");
        assert!(is_loopback_name("BigEval.LOCALHOST"));
        assert!(!is_loopback_name("localhost.attacker.example"));
        assert!(!is_loopback_name("127.0.0.1.nip.io"));
        assert!(!is_loopback_name(".localhost"));
        assert!(is_own_origin("http://localhost:8080", "localhost:8080"));
        assert!(!is_own_origin("http://localhost:8080", "localhost:9090"));
        assert!(!is_own_origin("https://localhost:8080", "localhost:8080"));
    }
}
