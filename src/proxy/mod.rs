//! The request path. A request's life, in order:
//! 1. route: admin endpoint, upstream, or 404;
//! 2. credential: the upstream's current token, read without waiting while it is valid;
//! 3. rewrite: target URL, hop-by-hop headers out, client `Authorization` out, token and
//!    `X-Forwarded-*` in;
//! 4. send on the transport (for a cleartext upstream, the connection the client
//!    connection holds; else the pool), bounded by the response-header timeout;
//! 5. answer: the vendor's response streamed back (or a tunnel for `Upgrade`), or a
//!    problem+json for the proxy's own failures; the upstream's metrics count it.

mod guard;
mod headers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::app::{App, Upstream};
use crate::credential::Credential;
use crate::problem::{HostProblem, ProxyError};
use crate::routes::{self, Route};
use crate::tokens::TokenUnavailable;
use crate::transport::{error_chain, Affinity, BoxError, ProxyBody, SendError};

/// Longest request target (path and query) forwarded; longer ones get 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Where a connection came from, which listener it arrived on, and the upstream
/// connection it holds.
#[derive(Clone)]
pub struct Connection {
    /// The address the client connected to (`None` on the Unix socket).
    pub local: Option<SocketAddr>,
    /// The upstream owning this listener, for per-upstream `listen` ports.
    pub dedicated: Option<Arc<str>>,
    /// The client's IP as header text, formatted once per connection for
    /// `X-Forwarded-For` (`None` for a Unix-socket client).
    forwarded_for: Option<HeaderValue>,
    /// The upstream connection its requests to a cleartext upstream reuse.
    affinity: Arc<Affinity>,
}

impl Connection {
    pub fn new(
        client: Option<SocketAddr>,
        local: Option<SocketAddr>,
        dedicated: Option<Arc<str>>,
    ) -> Self {
        let forwarded_for = client.and_then(|client| {
            // An IP address is always valid header text.
            HeaderValue::from_str(&client.ip().to_string()).ok()
        });
        Connection {
            local,
            dedicated,
            forwarded_for,
            affinity: Arc::default(),
        }
    }
}

/// Handles one request. Never fails: every error becomes a response here.
pub async fn handle(
    app: Arc<App>,
    connection: Connection,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if let Err(error) = admissible(&app, &request, connection.local.map(|local| local.port())) {
        return Ok(error.into_response());
    }
    let host_value = request_host(&request);
    let host = host_value.as_ref().and_then(|host| host.to_str().ok());
    if let Err(refusal) = guard::check_host(
        &app,
        &request,
        host,
        connection.local.map(|local| local.ip()),
    ) {
        refusal.record(&app);
        return Ok(refusal.into_error().into_response());
    }
    // A clone of the URI shares its bytes; the request itself moves on below.
    let uri = request.uri().clone();
    let Some(path) = routes::normalize_path(uri.path()) else {
        return Ok(ProxyError::BadRequest {
            reason: "the request target must be a path starting with /".into(),
        }
        .into_response());
    };
    // Before routing: a 404 without the key would tell which routes exist.
    if let Err(error) = client_key_accepted(&app, &request, &path) {
        return Ok(error.into_response());
    }
    let dedicated = match connection.dedicated.as_deref() {
        // The upstream owning this listener was removed by a reload.
        Some(name) => match app.index_of(name) {
            Some(index) => Some(index),
            None => {
                return Ok(ProxyError::NoRoute {
                    path: path.into_owned(),
                }
                .into_response())
            }
        },
        None => None,
    };
    // What is routed is exactly what is forwarded: the normalized path.
    let route = app.routes.route(dedicated, host, &path);
    let routed_to = match route {
        Route::Upstream { index, .. } => Some(&app.upstreams[index]),
        _ => None,
    };
    // Counted from here to the response headers; the guard also counts a dropped request
    // out of the in-flight gauge.
    let in_flight = routed_to.map(|upstream| upstream.metrics.start());
    let (response, error_kind) =
        match answer(&app, connection, request, route, &path, host_value.as_ref()).await {
            Ok((mut response, Some(verdict))) => {
                guard::decorate(response.headers_mut(), &verdict);
                (response, None)
            }
            // The proxy's own preflight answer: its CORS headers stay.
            Ok((response, None)) => (response, None),
            Err(error) => {
                let kind = error.upstream_error_kind();
                (error.into_response(), kind)
            }
        };
    if let Some(in_flight) = in_flight {
        in_flight.finish(response.status(), error_kind);
    }
    Ok(response)
}

/// Everything after routing: the origin check, then the admin endpoint or the forward.
/// The verdict comes back for the CORS decoration (`None`: a preflight answered here).
async fn answer(
    app: &App,
    connection: Connection,
    request: Request<Incoming>,
    route: Route<'_>,
    path: &str,
    host_value: Option<&HeaderValue>,
) -> Result<(Response<ProxyBody>, Option<guard::Verdict>), ProxyError> {
    let host = host_value.and_then(|host| host.to_str().ok());
    let upstream_origins: &[String] = match route {
        Route::Upstream { index, .. } => &app.upstreams[index].config.allowed_origins,
        _ => &[],
    };
    let verdict = match route {
        Route::Admin(admin_path) if guard::is_login_callback(request.method(), admin_path) => {
            guard::Verdict::SameOrigin
        }
        _ => guard::check_origin(app, request.headers(), host, upstream_origins).map_err(
            |refusal| {
                refusal.record(app);
                refusal.into_error()
            },
        )?,
    };
    if let guard::Verdict::Allowed(origin) = &verdict {
        if guard::is_preflight(&request) {
            // Answered here: a preflight is never forwarded, so never carries a token.
            return Ok((guard::preflight_response(&request, origin.clone()), None));
        }
    }
    let response = match route {
        Route::Admin(admin_path) => {
            let admin_path = admin_path.to_owned();
            // Boxed: proxied requests' futures need not carry the admin endpoints' state.
            let same_origin = verdict == guard::Verdict::SameOrigin;
            Box::pin(crate::admin::handle(app, &admin_path, same_origin, request)).await
        }
        Route::NotFound => {
            return Err(ProxyError::NoRoute {
                path: path.to_owned(),
            })
        }
        Route::Upstream { index, path: rest } => {
            let upstream = &app.upstreams[index];
            let target = target_uri(upstream, rest, request.uri().query())?;
            forward(upstream, connection, request, target, host_value.cloned()).await?
        }
    };
    Ok((response, Some(verdict)))
}

/// Refuses what a reverse proxy must never act on: `CONNECT`, absolute-form targets naming
/// a host that is not this proxy's, and ambiguous framing (`Content-Length` with
/// `Transfer-Encoding`, a request-smuggling vector).
fn admissible<B>(
    app: &App,
    request: &Request<B>,
    local_port: Option<u16>,
) -> Result<(), ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest {
            reason: "CONNECT is not supported: tokenproxy is a reverse proxy, not a forward proxy"
                .into(),
        });
    }
    let headers = request.headers();
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(ProxyError::BadRequest {
            reason: "a request may not have both Content-Length and Transfer-Encoding".into(),
        });
    }
    // hyper removes only `chunked`; another coding would reach the vendor undone and unnamed.
    if let Some(coding) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(<[u8]>::trim_ascii)
        .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"chunked"))
    {
        return Err(ProxyError::UnsupportedTransferCoding {
            coding: String::from_utf8_lossy(coding).into_owned(),
        });
    }
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if length > MAX_URI_BYTES {
        return Err(ProxyError::UriTooLong {
            length,
            limit: MAX_URI_BYTES,
        });
    }
    if request.version() < Version::HTTP_2 {
        host_problem(request.version(), headers).map_err(ProxyError::InvalidHost)?;
    }
    // HTTP/1 absolute-form (`GET http://host/ HTTP/1.1`) is how clients talk to a forward
    // proxy; only our own names are accepted. HTTP/2 always carries an authority.
    if request.version() < Version::HTTP_2 {
        if let Some(authority) = request.uri().authority() {
            // Our own names count only with the port the client connected to.
            let port = authority.port_u16().unwrap_or(80);
            let ours = app.routes.is_upstream_host(authority.as_str())
                || (app.routes.is_loopback_host(authority.as_str()) && Some(port) == local_port);
            if !ours {
                return Err(ProxyError::BadRequest {
                    reason: format!(
                        "absolute-form request for {authority} refused: tokenproxy is not an open proxy"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// RFC 9112 3.2: one `Host` holding a host and an optional port (empty is allowed), and an
/// HTTP/1.1 request must have it.
fn host_problem(version: Version, headers: &http::HeaderMap) -> Result<(), HostProblem> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => Err(HostProblem::Missing),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(HostProblem::Repeated),
        (Some(host), None) => {
            let valid = host.is_empty()
                || (!host.as_bytes().contains(&b'@')
                    && http::uri::Authority::try_from(host.as_bytes()).is_ok());
            valid.then_some(()).ok_or(HostProblem::Malformed)
        }
    }
}

/// With `server.client_key`, every request but the health and readiness probes must carry
/// `Proxy-Authorization: Bearer <key>` (compared in constant time). `path` is normalized.
fn client_key_accepted<B>(app: &App, request: &Request<B>, path: &str) -> Result<(), ProxyError> {
    let Some(key) = &app.server.client_key else {
        return Ok(());
    };
    if matches!(path, "/-/health" | "/-/ready") {
        return Ok(());
    }
    let presented = request
        .headers()
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), key.expose().as_bytes()) {
        Ok(())
    } else {
        Err(ProxyError::ClientKeyRequired)
    }
}

/// Equal without revealing, through timing, how much of the prefix matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (index, byte) in b.iter().enumerate() {
        difference |= usize::from(a.get(index).copied().unwrap_or(0) ^ byte);
    }
    difference == 0
}

/// The host the client addressed: the request target's authority when it has one
/// (HTTP/2 `:authority`, HTTP/1 absolute-form), else `Host`.
fn request_host<B>(request: &Request<B>) -> Option<HeaderValue> {
    match request.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        // A clone of a header value shares its bytes.
        None => request
            .headers()
            .get(header::HOST)
            .filter(|host| host.to_str().is_ok())
            .cloned(),
    }
}

/// The target's base path plus the routed path, with the query exactly as received. A path
/// that an origin decoding `%2F` would resolve above the base path is refused, never rewritten.
fn target_uri(upstream: &Upstream, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    if routes::climbs_above_base(path) {
        return Err(ProxyError::PathAboveBase {
            upstream: upstream.config.name.clone(),
        });
    }
    let target = &upstream.config.target;
    let slash = !path.starts_with('/');
    // Exactly the length: a string without spare room becomes the URI's bytes as it is.
    let mut path_and_query = String::with_capacity(
        target.base_path.len() + usize::from(slash) + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    path_and_query.push_str(&target.base_path);
    if slash {
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
    upstream: &Arc<Upstream>,
    connection: Connection,
    mut request: Request<Incoming>,
    target: Uri,
    original_host: Option<HeaderValue>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let name = &upstream.config.name;
    let no_token = |unavailable: TokenUnavailable| ProxyError::NoToken {
        upstream: name.clone(),
        cause: unavailable.cause,
        retry_after: unavailable.retry_after,
    };
    let credential = upstream.tokens.credential().await.map_err(no_token)?;

    let upgrade = if request.version() == Version::HTTP_11 {
        headers::upgrade_protocol(request.headers())
    } else {
        None
    };
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    // An upgraded connection is never reused, so upgrades take a pooled one.
    let affinity = upgrade.is_none().then_some(&*connection.affinity);

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
    // Room for what is added, in one step.
    headers.reserve(3 + upstream.config.headers.len() + credential.headers.len());
    headers::add_forwarded(headers, connection.forwarded_for, original_host);
    for (name, value) in upstream.config.headers.iter().chain(&credential.headers) {
        headers.append(name.clone(), value.clone());
    }

    // A small body is kept so the request can be sent again (a 401 with a stale token, a
    // connection reset); anything else streams through untouched.
    let replay = match upgrade {
        Some(_) => Replay::Streaming(body.map_err(Into::into).boxed_unsync()),
        None => replayable(body, upstream.config.retry_body_limit).await?,
    };
    let (body, replay) = match replay {
        Replay::Kept(bytes) => (replay_body(&bytes), Some(bytes)),
        Replay::Streaming(body) => (body, None),
    };

    let idempotent = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let mut response = match send(upstream, &parts, body, affinity).await {
        Err(SendFailure::Reset(error)) if idempotent && replay.is_some() => {
            tracing::debug!(upstream = %name, error = %error, "connection reset; retrying once on a fresh connection");
            let body = replay_body(replay.as_ref().unwrap_or(&Bytes::new()));
            send(upstream, &parts, body, affinity)
                .await
                .map_err(|failure| failure.into_error(name, upstream))?
        }
        other => other.map_err(|failure| failure.into_error(name, upstream))?,
    };

    if response.status() == StatusCode::UNAUTHORIZED && upstream.tokens.provider().refreshes() {
        if let Some(bytes) = replay {
            // The vendor no longer takes this token: one refresh, shared by every request
            // that saw the same token fail, then one retry. A second 401 passes through.
            let fresh = upstream
                .tokens
                .replace_stale(&credential)
                .await
                .map_err(no_token)?;
            if !Arc::ptr_eq(&fresh, &credential) {
                tracing::info!(upstream = %name, "401 from the upstream; retrying with a new token");
                swap_credential(
                    &mut parts.headers,
                    &credential,
                    &fresh,
                    &upstream.config.headers,
                );
                response = send(upstream, &parts, replay_body(&bytes), affinity)
                    .await
                    .map_err(|failure| failure.into_error(name, upstream))?;
            }
        }
    }

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
    headers::sandbox(response.headers_mut());
    Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
}

enum Replay {
    Kept(Bytes),
    Streaming(ProxyBody),
}

/// Reads the body into memory when it is declared no larger than `limit` (or is empty).
async fn replayable(body: Incoming, limit: u64) -> Result<Replay, ProxyError> {
    let declared = body.size_hint().exact();
    if body.is_end_stream() {
        return Ok(Replay::Kept(Bytes::new()));
    }
    match declared {
        Some(length) if length <= limit => {
            let bytes = body
                .collect()
                .await
                .map_err(|error| ClientBodyError(error).to_proxy_error())?
                .to_bytes();
            Ok(Replay::Kept(bytes))
        }
        _ => Ok(Replay::Streaming(first_frame_checked(body).await?)),
    }
}

/// Reads a streamed body's first frame before anything is forwarded, so a body that is
/// broken from the start (an invalid chunk size) gets a 400 and never reaches the vendor.
async fn first_frame_checked(mut body: Incoming) -> Result<ProxyBody, ProxyError> {
    let first = match body.frame().await {
        None => None,
        Some(Ok(frame)) => Some(frame),
        Some(Err(error)) => return Err(ClientBodyError(error).to_proxy_error()),
    };
    Ok(Prepended { first, rest: body }.boxed_unsync())
}

/// The client's request body failed (malformed framing, or no progress within
/// `body_timeout`): the client's fault, not the vendor's, when it ends a forward.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ClientBodyError(hyper::Error);

impl ClientBodyError {
    fn to_proxy_error(&self) -> ProxyError {
        let reason = error_chain(&self.0);
        if is_timeout(&self.0) {
            ProxyError::BodyTimeout { reason }
        } else {
            ProxyError::MalformedBody { reason }
        }
    }
}

fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

/// A body whose first frame was already read.
struct Prepended {
    first: Option<http_body::Frame<Bytes>>,
    rest: Incoming,
}

impl http_body::Body for Prepended {
    type Data = Bytes;
    type Error = crate::transport::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(frame)));
        }
        std::pin::Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map_err(|error| ClientBodyError(error).into())
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self.rest.size_hint();
        let extra = self
            .first
            .as_ref()
            .and_then(|frame| frame.data_ref())
            .map_or(0, |data| data.len() as u64);
        let mut hint = http_body::SizeHint::new();
        // Upper before lower: a lower bound above the upper one panics.
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + extra);
        }
        hint.set_lower(rest.lower() + extra);
        hint
    }
}

/// A kept request body, to send (again). An empty one costs no allocation.
fn replay_body(bytes: &Bytes) -> ProxyBody {
    if bytes.is_empty() {
        return http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync();
    }
    Full::new(bytes.clone())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Replaces `previous`'s headers with `fresh`'s. A configured header that shares a name
/// with one of them is kept.
fn swap_credential(
    headers: &mut http::HeaderMap,
    previous: &Credential,
    fresh: &Credential,
    configured: &[(header::HeaderName, HeaderValue)],
) {
    let previous_names = || previous.headers.iter().map(|(name, _)| name);
    for name in previous_names() {
        headers.remove(name);
    }
    for (name, value) in configured {
        if previous_names().any(|previous| previous == name) {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in &fresh.headers {
        headers.append(name.clone(), value.clone());
    }
}

/// Why a send got no response.
enum SendFailure {
    Timeout(std::time::Duration),
    /// The connection failed before any response byte, after it was established.
    Reset(BoxError),
    /// Could not connect.
    Connect(BoxError),
}

impl SendFailure {
    fn into_error(self, name: &str, upstream: &Upstream) -> ProxyError {
        match self {
            SendFailure::Timeout(after) => ProxyError::UpstreamTimeout {
                upstream: name.to_owned(),
                after,
            },
            SendFailure::Reset(error) => send_error(name, upstream, &*error, false),
            SendFailure::Connect(error) => send_error(name, upstream, &*error, true),
        }
    }
}

/// One attempt: the prepared request (credential included), bounded by the
/// response-header timeout.
async fn send(
    upstream: &Upstream,
    parts: &http::request::Parts,
    body: ProxyBody,
    affinity: Option<&Affinity>,
) -> Result<Response<Incoming>, SendFailure> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    // Kept for a retry. A clone of the map copies its tables whole; re-inserting header
    // by header rehashes.
    *request.headers_mut() = parts.headers.clone();
    let timeout = upstream.config.response_header_timeout;
    match tokio::time::timeout(timeout, upstream.transport.send(request, affinity)).await {
        Err(_elapsed) => Err(SendFailure::Timeout(timeout)),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(SendError::Connect(error))) => Err(SendFailure::Connect(error)),
        Ok(Err(SendError::Broken(error))) => Err(SendFailure::Reset(error)),
    }
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

/// A rustls error, also inside (nested) `io::Error`s, whose `source()` skips what they wrap.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    if error.is::<rustls::Error>() {
        return true;
    }
    error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        .is_some_and(|inner| is_tls_failure(inner))
}

/// A connect timeout is the vendor not answering (504); anything else before a response
/// is the vendor being unreachable (502).
fn send_error(
    name: &str,
    upstream: &Upstream,
    error: &(dyn std::error::Error + 'static),
    connecting: bool,
) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut timed_out = false;
    let mut tls = false;
    while let Some(cause) = source {
        if let Some(client) = cause.downcast_ref::<ClientBodyError>() {
            // The upstream request was aborted because the client's body broke.
            return client.to_proxy_error();
        }
        tls |= is_tls_failure(cause);
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = cause.source();
    }
    if connecting && timed_out {
        ProxyError::ConnectTimeout {
            upstream: name.to_owned(),
            after: upstream.config.connect_timeout,
        }
    } else if tls {
        ProxyError::UpstreamTls {
            upstream: name.to_owned(),
            reason: error_chain(error),
        }
    } else {
        ProxyError::UpstreamUnreachable {
            upstream: name.to_owned(),
            reason: error_chain(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn credential(pairs: &[(&'static str, &'static str)]) -> Credential {
        let headers = pairs
            .iter()
            .map(|(name, value)| {
                (
                    header::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect();
        Credential::without_expiry(Secret::new("t"), headers)
    }

    #[test]
    fn a_new_credential_replaces_the_old_ones_headers_and_keeps_configured_ones() {
        let old = credential(&[("authorization", "Bearer old"), ("organization", "acme")]);
        let fresh = credential(&[("authorization", "Bearer new"), ("organization", "acme")]);
        let configured = [(
            header::HeaderName::from_static("organization"),
            HeaderValue::from_static("configured"),
        )];
        let mut headers = http::HeaderMap::new();
        headers.append("accept", HeaderValue::from_static("*/*"));
        headers.append("organization", HeaderValue::from_static("configured"));
        for (name, value) in &old.headers {
            headers.append(name.clone(), value.clone());
        }
        swap_credential(&mut headers, &old, &fresh, &configured);
        let values = |name| -> Vec<&str> {
            let mut values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .map(|value| value.to_str().unwrap())
                .collect();
            values.sort_unstable();
            values
        };
        assert_eq!(values("authorization"), ["Bearer new"]);
        assert_eq!(values("organization"), ["acme", "configured"]);
        assert_eq!(values("accept"), ["*/*"]);
    }
}
