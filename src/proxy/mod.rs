//! The request path. A request's life, in order:
//! 1. route: admin endpoint, upstream, or 404;
//! 2. credential: the upstream's current token, read without waiting while it is valid;
//! 3. rewrite: target URL, hop-by-hop headers out, client `Authorization` out, token and
//!    `X-Forwarded-*` in;
//! 4. send on the pooled transport, bounded by the response-header timeout;
//! 5. answer: the vendor's response streamed back (or a tunnel for `Upgrade`), or a
//!    problem+json for the proxy's own failures.

mod admin;
mod headers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::app::{App, Upstream};
use crate::problem::ProxyError;
use crate::routes::Route;
use crate::transport::{error_chain, ProxyBody};

pub use admin::status;

/// Where a connection came from and which listener it arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub client: SocketAddr,
    /// The upstream owning this listener, for per-upstream `listen` ports.
    pub dedicated: Option<usize>,
}

/// Handles one request. Never fails: every error becomes a response here.
pub async fn handle(
    app: Arc<App>,
    connection: Connection,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if request.method() == http::Method::CONNECT {
        // A reverse proxy has no business opening tunnels to arbitrary hosts.
        return Ok(ProxyError::BadRequest {
            reason: "CONNECT is not supported: tokenproxy is a reverse proxy, not a forward proxy"
                .into(),
        }
        .into_response());
    }
    let host = request_host(&request);
    let route = app
        .routes
        .route(connection.dedicated, host.as_deref(), request.uri().path());
    let response = match route {
        Route::Admin(path) => {
            let path = path.to_owned();
            admin::handle(&app, &path, request).await
        }
        Route::NotFound => ProxyError::NoRoute {
            path: request.uri().path().to_owned(),
        }
        .into_response(),
        Route::Upstream { index, path } => {
            let upstream = Arc::clone(&app.upstreams[index]);
            let target = match target_uri(&upstream, path, request.uri().query()) {
                Ok(uri) => uri,
                Err(error) => return Ok(error.into_response()),
            };
            forward(&upstream, connection, request, target, host)
                .await
                .unwrap_or_else(ProxyError::into_response)
        }
    };
    Ok(response)
}

/// The host the client addressed: `Host` for HTTP/1, `:authority` for HTTP/2.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()))
}

/// The target's base path plus the routed path, with the query exactly as received.
fn target_uri(upstream: &Upstream, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let target = &upstream.config.target;
    let mut path_and_query = String::with_capacity(
        target.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1) + 1,
    );
    path_and_query.push_str(&target.base_path);
    if !path.starts_with('/') {
        path_and_query.push('/');
    }
    path_and_query.push_str(path);
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::BadRequest {
            reason: "the request path cannot be forwarded".into(),
        })
}

async fn forward(
    upstream: &Upstream,
    connection: Connection,
    mut request: Request<Incoming>,
    target: Uri,
    original_host: Option<String>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let name = &upstream.config.name;
    let credential =
        upstream
            .tokens
            .credential()
            .await
            .map_err(|unavailable| ProxyError::NoToken {
                upstream: name.clone(),
                cause: unavailable.cause,
            })?;

    let upgrade = if request.version() == Version::HTTP_11 {
        headers::upgrade_protocol(request.headers())
    } else {
        None
    };
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));

    let (mut parts, body) = request.into_parts();
    parts.uri = target;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    headers::strip_hop_by_hop(headers);
    if let Some(protocol) = &upgrade {
        headers::set_upgrade(headers, protocol.clone());
    }
    // The client's own credentials never reach the vendor, nor can it override ours.
    headers.remove(header::HOST);
    headers.remove(header::AUTHORIZATION);
    for (name, _) in credential.headers.iter().chain(&upstream.config.headers) {
        headers.remove(name);
    }
    headers::add_forwarded(
        headers,
        connection.client.ip(),
        original_host.and_then(|host| HeaderValue::from_str(&host).ok()),
    );
    for (name, value) in upstream.config.headers.iter().chain(&credential.headers) {
        headers.append(name.clone(), value.clone());
    }
    let outgoing = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());

    let timeout = upstream.config.response_header_timeout;
    let mut response =
        match tokio::time::timeout(timeout, upstream.transport.request(outgoing)).await {
            Err(_elapsed) => {
                return Err(ProxyError::UpstreamTimeout {
                    upstream: name.clone(),
                    after: timeout,
                })
            }
            Ok(Err(error)) => return Err(send_error(name, upstream, &error)),
            Ok(Ok(response)) => response,
        };

    match (client_upgrade, response.status()) {
        (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) => {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let protocol = response.headers().get(header::UPGRADE).cloned();
            headers::strip_hop_by_hop(response.headers_mut());
            if let Some(protocol) = protocol {
                headers::set_upgrade(response.headers_mut(), protocol);
            }
            tokio::spawn(tunnel(name.clone(), client_upgrade, upstream_upgrade));
        }
        _ => headers::strip_hop_by_hop(response.headers_mut()),
    }
    Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
}

/// Copies bytes both ways between an upgraded client and upstream connection.
async fn tunnel(
    upstream: String,
    client: hyper::upgrade::OnUpgrade,
    vendor: hyper::upgrade::OnUpgrade,
) {
    let (client, vendor) = match tokio::try_join!(client, vendor) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%upstream, error = %error, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut vendor = TokioIo::new(vendor);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut vendor).await {
        tracing::debug!(%upstream, error = %error, "upgraded connection ended");
    }
}

/// A connect timeout is the vendor not answering (504); anything else before a response
/// is the vendor being unreachable (502).
fn send_error(
    name: &str,
    upstream: &Upstream,
    error: &hyper_util::client::legacy::Error,
) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut timed_out = false;
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = cause.source();
    }
    if error.is_connect() && timed_out {
        ProxyError::ConnectTimeout {
            upstream: name.to_owned(),
            after: upstream.config.connect_timeout,
        }
    } else {
        ProxyError::UpstreamUnreachable {
            upstream: name.to_owned(),
            reason: error_chain(error),
        }
    }
}
