//! The proxy's own errors, and the one place they become responses: RFC 9457
//! `application/problem+json` with `title`, `status`, `detail` and `upstream`, plus an
//! RFC 9209 `Proxy-Status` header so a client can tell them from the vendor's answers.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::clients::PolicyRefusal;
use crate::metrics::{Counted, UpstreamErrorKind};
use crate::providers::ProviderError;
use crate::transport::ProxyBody;

/// Who a failure is due to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    TokenEndpoint,
    Proxy,
}

impl Fault {
    pub fn label(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::TokenEndpoint => "token_endpoint",
            Fault::Proxy => "proxy",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no upstream is configured for {path}")]
    NoRoute { path: String },
    #[error("{reason}")]
    BadRequest { reason: String },
    #[error("the path, once decoded, climbs above upstream {upstream}'s base path (.. with an encoded / or \\, or ..;)")]
    PathAboveBase { upstream: String },
    #[error("{0}")]
    InvalidHost(HostProblem),
    #[error("the request target is {length} bytes; at most {limit} are accepted")]
    UriTooLong { length: usize, limit: usize },
    #[error("Transfer-Encoding {coding:?} is not supported; only chunked is")]
    UnsupportedTransferCoding { coding: String },
    #[error("the request body is malformed: {reason}")]
    MalformedBody { reason: String },
    #[error("the request body made no progress for too long: {reason}")]
    BodyTimeout { reason: String },
    #[error("{method} is not allowed here; use {allow}")]
    MethodNotAllowed {
        method: String,
        /// The methods the resource takes, for the `Allow` header (RFC 9110 15.5.6).
        allow: &'static str,
    },
    #[error("this tokenproxy requires Proxy-Authorization: Bearer <client key>")]
    ClientKeyRequired,
    #[error("{0}")]
    ClientPolicy(PolicyRefusal),
    #[error("Host {host} is not one of this proxy's names; a sidecar lists its service name in server.allowed_hosts")]
    MisdirectedHost { host: String },
    #[error("cross-site request refused: {reason}")]
    CrossOrigin { reason: String },
    #[error(
        "no valid token for upstream {upstream}: {cause}{}",
        login_hint(upstream, cause)
    )]
    NoToken {
        upstream: String,
        cause: ProviderError,
        retry_after: Option<Duration>,
    },
    #[error(
        "upstream {upstream} sends the fixed token from its config: there is nothing to {action}"
    )]
    StaticToken { upstream: String, action: String },
    #[error("upstream {upstream} is unreachable: {reason}")]
    UpstreamUnreachable { upstream: String, reason: String },
    #[error("upstream {upstream}: the TLS handshake failed: {reason}")]
    UpstreamTls { upstream: String, reason: String },
    #[error("upstream {upstream} did not answer within {after:?}")]
    UpstreamTimeout { upstream: String, after: Duration },
    #[error("upstream {upstream} could not be connected to within {after:?}")]
    ConnectTimeout { upstream: String, after: Duration },
    #[error("{authority} is neither a configured upstream's target nor in egress.passthrough; tokenproxy is not an open proxy, and nothing was dialed")]
    EgressNotAllowed { authority: String },
    #[error("this egress proxy requires the client key: put it in the proxy URL, HTTPS_PROXY=http://tokenproxy:<client key>@host:port")]
    EgressKeyRequired,
    #[error("the request is for {host}, but its tunnel was opened to {tunnel}")]
    EgressMisdirected { host: String, tunnel: String },
    #[error("the egress CA cannot sign for {host}: {reason}; `tokenproxy ca init --force` makes a CA for the current upstreams (clients must then trust it)")]
    EgressCannotSign { host: String, reason: String },
    #[error("the passthrough tunnel to {authority} could not be opened: {reason}")]
    EgressTunnelFailed { authority: String, reason: String },
}

/// How a request breaks RFC 9112 3.2: an HTTP/1.1 request has exactly one valid `Host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostProblem {
    #[error("an HTTP/1.1 request must have a Host header")]
    Missing,
    #[error("a request may have only one Host header")]
    Repeated,
    #[error("the Host header is not a host name or address with an optional port")]
    Malformed,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::BadRequest { .. }
            | ProxyError::PathAboveBase { .. }
            | ProxyError::InvalidHost(_)
            | ProxyError::MalformedBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::UnsupportedTransferCoding { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ClientKeyRequired => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ProxyError::MisdirectedHost { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::CrossOrigin { .. } | ProxyError::ClientPolicy(_) => StatusCode::FORBIDDEN,
            ProxyError::NoToken { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::StaticToken { .. } => StatusCode::CONFLICT,
            ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamTls { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } | ProxyError::ConnectTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::EgressNotAllowed { .. } => StatusCode::FORBIDDEN,
            ProxyError::EgressKeyRequired => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ProxyError::EgressMisdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::EgressCannotSign { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::EgressTunnelFailed { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// What went wrong, as one word: the access log's `error`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::BadRequest { .. } => "bad_request",
            ProxyError::PathAboveBase { .. } => "path_above_base",
            ProxyError::InvalidHost(_) => "invalid_host",
            ProxyError::UriTooLong { .. } => "uri_too_long",
            ProxyError::UnsupportedTransferCoding { .. } => "unsupported_transfer_coding",
            ProxyError::MalformedBody { .. } => "malformed_body",
            ProxyError::BodyTimeout { .. } => "body_timeout",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::ClientKeyRequired => "client_key_required",
            ProxyError::ClientPolicy(_) => "client_policy",
            ProxyError::MisdirectedHost { .. } => "misdirected_host",
            ProxyError::CrossOrigin { .. } => "cross_origin",
            ProxyError::NoToken { .. } => "no_token",
            ProxyError::StaticToken { .. } => "static_token",
            ProxyError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ProxyError::UpstreamTls { .. } => "upstream_tls",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::EgressNotAllowed { .. } => "egress_not_allowed",
            ProxyError::EgressKeyRequired => "egress_key_required",
            ProxyError::EgressMisdirected { .. } => "egress_misdirected",
            ProxyError::EgressCannotSign { .. } => "egress_cannot_sign",
            ProxyError::EgressTunnelFailed { .. } => "egress_tunnel_failed",
        }
    }

    /// A refusal (the guard, a client key, a client's policy, egress's allow list): the
    /// access log says why, in the problem's words.
    pub fn is_refusal(&self) -> bool {
        self.proxy_status() == "http_request_denied"
    }

    /// The RFC 9209 error type.
    fn proxy_status(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "destination_not_found",
            ProxyError::BadRequest { .. }
            | ProxyError::PathAboveBase { .. }
            | ProxyError::InvalidHost(_)
            | ProxyError::UriTooLong { .. }
            | ProxyError::UnsupportedTransferCoding { .. }
            | ProxyError::MalformedBody { .. }
            | ProxyError::BodyTimeout { .. }
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::StaticToken { .. } => "http_request_error",
            ProxyError::ClientKeyRequired
            | ProxyError::ClientPolicy(_)
            | ProxyError::MisdirectedHost { .. }
            | ProxyError::CrossOrigin { .. }
            | ProxyError::EgressNotAllowed { .. }
            | ProxyError::EgressKeyRequired
            | ProxyError::EgressMisdirected { .. } => "http_request_denied",
            ProxyError::NoToken { .. } => "proxy_internal_response",
            ProxyError::EgressCannotSign { .. } => "proxy_configuration_error",
            ProxyError::UpstreamUnreachable { .. } | ProxyError::EgressTunnelFailed { .. } => {
                "destination_unavailable"
            }
            ProxyError::UpstreamTls { .. } => "tls_protocol_error",
            ProxyError::UpstreamTimeout { .. } => "http_response_timeout",
            ProxyError::ConnectTimeout { .. } => "connection_timeout",
        }
    }

    fn upstream(&self) -> Option<&str> {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::BadRequest { .. }
            | ProxyError::InvalidHost(_)
            | ProxyError::UriTooLong { .. }
            | ProxyError::UnsupportedTransferCoding { .. }
            | ProxyError::MalformedBody { .. }
            | ProxyError::BodyTimeout { .. }
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::ClientKeyRequired
            | ProxyError::MisdirectedHost { .. }
            | ProxyError::CrossOrigin { .. }
            | ProxyError::EgressNotAllowed { .. }
            | ProxyError::EgressKeyRequired
            | ProxyError::EgressMisdirected { .. }
            | ProxyError::EgressCannotSign { .. }
            | ProxyError::EgressTunnelFailed { .. } => None,
            ProxyError::ClientPolicy(refusal) => refusal.upstream.as_deref(),
            ProxyError::NoToken { upstream, .. }
            | ProxyError::PathAboveBase { upstream }
            | ProxyError::StaticToken { upstream, .. }
            | ProxyError::UpstreamUnreachable { upstream, .. }
            | ProxyError::UpstreamTls { upstream, .. }
            | ProxyError::UpstreamTimeout { upstream, .. }
            | ProxyError::ConnectTimeout { upstream, .. } => Some(upstream),
        }
    }

    /// What the metrics count this as, for errors on the way to a vendor.
    /// Who caused it (Pingora's error source): the client, the vendor, the vendor's token
    /// endpoint, or the proxy itself (a token it has not got yet).
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::BadRequest { .. }
            | ProxyError::PathAboveBase { .. }
            | ProxyError::InvalidHost(_)
            | ProxyError::UriTooLong { .. }
            | ProxyError::UnsupportedTransferCoding { .. }
            | ProxyError::MalformedBody { .. }
            | ProxyError::BodyTimeout { .. }
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::ClientKeyRequired
            | ProxyError::ClientPolicy(_)
            | ProxyError::MisdirectedHost { .. }
            | ProxyError::CrossOrigin { .. }
            | ProxyError::StaticToken { .. }
            | ProxyError::EgressNotAllowed { .. }
            | ProxyError::EgressKeyRequired
            | ProxyError::EgressMisdirected { .. } => Fault::Client,
            ProxyError::EgressCannotSign { .. } => Fault::Proxy,
            ProxyError::EgressTunnelFailed { .. } => Fault::Upstream,
            ProxyError::NoToken { cause, .. } => match cause {
                ProviderError::NeedsLogin
                | ProviderError::LoginExpired
                | ProviderError::LoginDenied
                | ProviderError::Fleet(_) => Fault::Proxy,
                _ => Fault::TokenEndpoint,
            },
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::ConnectTimeout { .. } => Fault::Upstream,
        }
    }

    /// What the metrics count it as besides its status: upstream errors only when the
    /// vendor or its token endpoint is at fault, refusals of the browser guard apart.
    pub fn counted_as(&self) -> Option<Counted> {
        match self {
            ProxyError::CrossOrigin { .. } => Some(Counted::RefusedByGuard),
            ProxyError::ClientPolicy(_) => Some(Counted::RefusedByPolicy),
            _ => self.upstream_error_kind().map(Counted::Upstream),
        }
    }

    /// The vendor-side kind of a failure that is not the client's (`fault` classifies every
    /// variant; only those it does not blame on the client are looked at here).
    fn upstream_error_kind(&self) -> Option<UpstreamErrorKind> {
        if self.fault() == Fault::Client {
            return None;
        }
        match self {
            ProxyError::NoToken { .. } => Some(UpstreamErrorKind::NoToken),
            ProxyError::UpstreamUnreachable { .. } => Some(UpstreamErrorKind::Connect),
            ProxyError::UpstreamTls { .. } => Some(UpstreamErrorKind::Tls),
            ProxyError::UpstreamTimeout { .. } | ProxyError::ConnectTimeout { .. } => {
                Some(UpstreamErrorKind::Timeout)
            }
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ProxyError::NoToken {
                retry_after, cause, ..
            } => retry_after.or(cause.retry_after()),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let mut problem = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
            "fault": self.fault().label(),
        });
        if let Some(upstream) = self.upstream() {
            problem["upstream"] = upstream.into();
        }
        if let ProxyError::ClientPolicy(refusal) = &self {
            problem["client"] = refusal.client.as_str().into();
            problem["rule"] = refusal.rule.as_str().into();
        }
        let mut response = problem_response(status, &problem);
        let headers = response.headers_mut();
        headers.insert(
            "proxy-status",
            HeaderValue::from_str(&format!("tokenproxy; error={}", self.proxy_status()))
                .expect("static text is a valid header"),
        );
        match self {
            ProxyError::ClientKeyRequired => {
                headers.insert(
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            // What curl, Python requests and Node send from a proxy URL's user info.
            ProxyError::EgressKeyRequired => {
                headers.insert(
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"tokenproxy\""),
                );
            }
            _ => {}
        }
        if let ProxyError::MethodNotAllowed { allow, .. } = &self {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(after) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs_f64().ceil().max(1.0) as u64),
            );
        }
        response
    }
}

fn login_hint(upstream: &str, cause: &ProviderError) -> String {
    cause
        .hint(upstream)
        .map(|hint| format!("; {hint}"))
        .unwrap_or_default()
}

pub fn problem_response(status: StatusCode, problem: &serde_json::Value) -> Response<ProxyBody> {
    json_response(status, "application/problem+json", problem)
}

pub fn json_response(
    status: StatusCode,
    content_type: &'static str,
    value: &serde_json::Value,
) -> Response<ProxyBody> {
    let body = Bytes::from(serde_json::to_vec(value).expect("a JSON value serializes"));
    let mut response = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
