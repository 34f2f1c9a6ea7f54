//! The request path. A request's life, in order:
//! 1. admit: no open proxy, strict `Host`, the browser guard, the client key;
//! 2. route: admin endpoint, upstream, or 404;
//! 3. forward (`forward`), in three phases: `prepare` (the upstream's current token, read
//!    without waiting while it is valid; target URL, hop-by-hop headers out, client
//!    `Authorization` out, token and `X-Forwarded-*` in; the body, kept when small),
//!    `exchange` (send on the transport: for a cleartext upstream the connection the
//!    client connection holds, else the pool; again where the retry policy says so) and
//!    `finish` (the vendor's response streamed back, or a tunnel for `Upgrade`);
//! 4. respond: the proxy's own failures as problem+json, counted by who was at fault.
//!
//! `serve` runs it all as one future: the checks before and after the one wait (the
//! forward, or the admin endpoint) are plain functions (`answer`, `respond`), because
//! every `async fn` layer copied the request and the futures below it (`bench/`:
//! 3.5k of 45k instructions per request).

mod body;
pub mod egress;
mod forward;
mod guard;
mod headers;
mod host;
mod redirect;
mod response_timer;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::access_log::{Facts, Via};
use crate::app::{App, Upstream};
use crate::clients::KeyDigest;
use crate::metrics::InFlight;
use crate::problem::ProxyError;
use crate::routes::{self, Route};
use crate::transport::{Affinity, ProxyBody};
use response_timer::ResponseTimer;

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
    /// The client's IP (`None` for a Unix-socket client), and as header text, formatted
    /// once per connection for `X-Forwarded-For`.
    client_ip: Option<IpAddr>,
    forwarded_for: Option<HeaderValue>,
    /// The upstream connection its requests to a cleartext upstream reuse.
    affinity: Arc<Affinity>,
    /// The timer its requests' response-header timeouts reuse.
    response_timer: Arc<ResponseTimer>,
    /// It came through the egress listener: the client addressed the vendor itself, so
    /// no `X-Forwarded-*` describes a hop it did not see.
    egress: bool,
    /// Inside an egress tunnel: the key its CONNECT presented, checked again for every
    /// request in it against the clients of the moment (a reload may remove one).
    tunnel_key: Option<KeyDigest>,
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
            client_ip: client.map(|client| client.ip()),
            forwarded_for,
            affinity: Arc::default(),
            response_timer: Arc::default(),
            egress: false,
            tunnel_key: None,
        }
    }

    /// A connection on the egress listener (or a tunnel inside one).
    pub fn egress(client: Option<SocketAddr>, local: Option<SocketAddr>) -> Self {
        Connection {
            egress: true,
            ..Connection::new(client, local, None)
        }
    }

    /// The connection of a tunnel whose CONNECT presented `key`.
    pub fn in_tunnel(&self, key: Option<KeyDigest>) -> Self {
        Connection {
            tunnel_key: key,
            ..self.clone()
        }
    }

    pub fn tunnel_key(&self) -> Option<&KeyDigest> {
        self.tunnel_key.as_ref()
    }

    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }
}

/// Who sent a request: a client by its index in `App::clients`, or `None` when the
/// config asks for no key.
pub type Caller = Option<usize>;

/// The presented key was missing or no client's.
#[derive(Debug)]
pub struct UnknownKey;

/// The caller whose key `presented` reads, counted in its figures. With no client
/// configured anyone may call, and no header is read.
pub fn caller(
    app: &App,
    presented: impl FnOnce() -> Option<KeyDigest>,
) -> Result<Caller, UnknownKey> {
    if app.clients.is_empty() {
        return Ok(None);
    }
    let index = presented()
        .and_then(|digest| app.clients.identify(&digest))
        .ok_or(UnknownKey)?;
    if let Some((_, metrics)) = app.client(index) {
        metrics.count_request();
    }
    Ok(Some(index))
}

/// Handles one request. Never fails: every error becomes a response here.
///
/// This and the functions it awaits are plain functions returning an `async move` block,
/// not `async fn`s: an `async fn`'s state machine holds each argument twice (as passed and
/// as the local it is moved into), and these futures are moved whole for every request.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps each argument twice"
)]
pub fn handle(
    app: Arc<App>,
    connection: Arc<Connection>,
    mut request: Request<Incoming>,
) -> impl Future<Output = Response<ProxyBody>> {
    async move {
        let Some(log) = &app.access_log else {
            return serve(&app, &connection, request, &mut Facts::off()).await;
        };
        let pending = log.begin(&mut request, connection.client_ip, Via::Listen);
        let mut facts = Facts::on();
        let response = serve(&app, &connection, request, &mut facts).await;
        pending
            .finish(response, facts)
            .map(http_body_util::BodyExt::boxed_unsync)
    }
}

/// Runs `serve` with an access-log line for the request when the log is on; when it is
/// off, nothing is captured.
pub async fn logged<Fut>(
    app: &App,
    addr: Option<IpAddr>,
    via: Via,
    mut request: Request<Incoming>,
    serve: impl FnOnce(Request<Incoming>, Facts) -> Fut,
) -> Response<ProxyBody>
where
    Fut: Future<Output = (Response<ProxyBody>, Facts)>,
{
    let Some(log) = &app.access_log else {
        return serve(request, Facts::off()).await.0;
    };
    let pending = log.begin(&mut request, addr, via);
    let (response, facts) = serve(request, Facts::on()).await;
    pending
        .finish(response, facts)
        .map(http_body_util::BodyExt::boxed_unsync)
}

/// The proxy's own error as the answer, noted for the access log.
pub fn failed(facts: &mut Facts, error: ProxyError) -> Response<ProxyBody> {
    note_error(facts, &error);
    error.into_response()
}

fn note_error(facts: &mut Facts, error: &ProxyError) {
    if facts.enabled {
        facts.error = Some(error.kind());
        facts.fault = Some(error.fault().label());
        if error.is_refusal() {
            facts.reason = Some(error.to_string());
        }
    }
}

/// Names the caller in the access log.
pub fn note_caller(app: &App, caller: Caller, facts: &mut Facts) {
    if facts.enabled {
        if let Some((client, _)) = caller.and_then(|index| app.client(index)) {
            facts.client = Some(Arc::clone(&client.name));
        }
    }
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps each argument twice"
)]
fn serve<'a>(
    app: &'a App,
    connection: &'a Connection,
    request: Request<Incoming>,
    facts: &'a mut Facts,
) -> impl Future<Output = Response<ProxyBody>> + 'a {
    async move {
        if let Err(error) = admissible(app, &request, connection.local.map(|local| local.port())) {
            return failed(facts, error);
        }
        let host_value = request_host(&request);
        let host = host_value.as_ref().and_then(|host| host.to_str().ok());
        if let Err(refusal) = guard::check_host(
            app,
            &request,
            host,
            connection.local.map(|local| local.ip()),
        ) {
            refusal.record(app);
            return failed(facts, refusal.into_error());
        }
        // A clone of the URI shares its bytes; the request itself moves on below.
        let uri = request.uri().clone();
        let Some(path) = routes::normalize_path(uri.path()) else {
            let reason = "the request target must be a path starting with /".into();
            return failed(facts, ProxyError::BadRequest { reason });
        };
        // Before routing: a 404 without the key would tell which routes exist.
        let caller = match caller(app, || presented_key(request.headers())) {
            Ok(caller) => caller,
            // The probes answer anyone.
            Err(UnknownKey) if matches!(&*path, "/-/health" | "/-/ready") => None,
            Err(UnknownKey) => return failed(facts, ProxyError::ClientKeyRequired),
        };
        note_caller(app, caller, facts);
        let dedicated = match connection.dedicated.as_deref() {
            // The upstream owning this listener was removed by a reload.
            Some(name) => match app.index_of(name) {
                Some(index) => Some(index),
                None => {
                    let path = path.into_owned();
                    return failed(facts, ProxyError::NoRoute { path });
                }
            },
            None => None,
        };
        // What is routed is exactly what is forwarded: the normalized path.
        let route = app.routes.route(dedicated, host, &path);
        let routed = Routed {
            route,
            path: &path,
            host_value: host_value.as_ref(),
            caller,
        };
        let in_flight = count_in_flight(app, &routed, &request, facts);
        let answered = match answer(app, connection, request, routed, facts) {
            Ok((answering, verdict)) => answering.await.map(|response| (response, verdict)),
            Err(error) => Err(error),
        };
        respond(in_flight, answered, facts)
    }
}

/// Where a request goes, its normalized path, the host it named and who sent it.
#[derive(Clone, Copy)]
struct Routed<'a> {
    route: Route<'a>,
    path: &'a str,
    host_value: Option<&'a HeaderValue>,
    caller: Caller,
}

/// An answer under way: the admin endpoint's or the forward's, which `serve` waits for.
/// Boxed: the forward's state machine (2.5 KiB) is the bulk of a request's, and inline
/// every future around it would hold it and copy it.
type Answering<'a> =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'a>>;

/// Notes a routed request for the access log and counts it in flight in its upstream's
/// metrics, up to its response headers (a dropped request is counted out by the guard).
fn count_in_flight<'a, B>(
    app: &'a App,
    routed: &Routed<'_>,
    request: &Request<B>,
    facts: &mut Facts,
) -> Option<InFlight<'a>> {
    let routed_to = match routed.route {
        Route::Upstream { index, .. } => Some(&app.upstreams[index]),
        _ => None,
    };
    if facts.enabled {
        facts.upstream = routed_to.map(|upstream| Arc::clone(&upstream.name));
        // The status page polls: its reads are logged only when they fail.
        facts.quiet = matches!(routed.route, Route::Admin(_))
            && matches!(*request.method(), Method::GET | Method::HEAD);
    }
    routed_to.map(|upstream| upstream.metrics.start())
}

/// The answer as the client gets it: CORS headers for an allowed origin, or the proxy's
/// own failure as problem+json; counted in the upstream's metrics.
fn respond(
    in_flight: Option<InFlight<'_>>,
    answered: Result<(Response<ProxyBody>, Option<guard::Verdict>), ProxyError>,
    facts: &mut Facts,
) -> Response<ProxyBody> {
    let (response, error_kind) = match answered {
        Ok((mut response, Some(verdict))) => {
            guard::decorate(response.headers_mut(), &verdict);
            (response, None)
        }
        // The proxy's own preflight answer: its CORS headers stay.
        Ok((response, None)) => (response, None),
        Err(error) => {
            let counted = error.counted_as();
            (failed(facts, error), counted)
        }
    };
    if let Some(in_flight) = in_flight {
        in_flight.finish(response.status(), error_kind);
    }
    response
}

/// Everything after routing: the policy and origin checks, then the admin endpoint or the
/// forward, started for `serve` to wait for. The verdict comes with it, for the CORS
/// decoration (`None`: a preflight answered here).
fn answer<'a>(
    app: &'a App,
    connection: &'a Connection,
    request: Request<Incoming>,
    routed: Routed<'a>,
    facts: &'a mut Facts,
) -> Result<(Answering<'a>, Option<guard::Verdict>), ProxyError> {
    let Routed {
        route,
        path,
        host_value,
        caller,
    } = routed;
    within_policy(app, caller, &route, request.method())?;
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
            let response = guard::preflight_response(&request, origin.clone());
            return Ok((Box::pin(std::future::ready(Ok(response))), None));
        }
    }
    let answering: Answering<'a> = match route {
        Route::Admin(admin_path) => {
            let same_origin = verdict == guard::Verdict::SameOrigin;
            Box::pin(async move {
                Ok(crate::admin::handle(app, admin_path, same_origin, request).await)
            })
        }
        Route::NotFound => {
            return Err(ProxyError::NoRoute {
                path: path.to_owned(),
            })
        }
        Route::Upstream { index, path: rest } => {
            let upstream = &app.upstreams[index];
            let target = target_uri(upstream, rest, request.uri().query())?;
            // The prefix the client's path had (none for host and listen routes), for
            // redirects; an egress client addressed the vendor itself, so its redirects
            // already point where it went.
            let mount = (!connection.egress).then(|| path.strip_suffix(rest).unwrap_or_default());
            let host = host_value.cloned();
            Box::pin(forward::forward(
                upstream, connection, request, target, host, mount, facts,
            ))
        }
    };
    Ok((answering, Some(verdict)))
}

/// The caller's policy: the upstream, method and path it may use; the admin endpoints
/// beyond the probes only for an admin client. A refusal is counted for the client.
fn within_policy(
    app: &App,
    caller: Caller,
    route: &Route<'_>,
    method: &Method,
) -> Result<(), ProxyError> {
    let Some((client, metrics)) = caller.and_then(|index| app.client(index)) else {
        return Ok(());
    };
    let checked = match *route {
        Route::Upstream { index, path } => {
            client.check(&app.upstreams[index].config.name, method, path)
        }
        Route::Admin("health" | "ready") | Route::NotFound => Ok(()),
        Route::Admin(_) => client.check_admin(),
    };
    checked.map_err(|refusal| {
        metrics.count_refusal(refusal.kind);
        ProxyError::ClientPolicy(refusal)
    })
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
            reason: "CONNECT is not supported here: this is the reverse-proxy listener; tunnels go to the egress listener ([egress] listen)"
                .into(),
        });
    }
    framing_admissible(request)?;
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

/// Ambiguous framing (`Content-Length` with `Transfer-Encoding`, a request-smuggling
/// vector), codings hyper would pass on undone, overlong targets, and a bad `Host`.
fn framing_admissible<B>(request: &Request<B>) -> Result<(), ProxyError> {
    let headers = request.headers();
    let codings = headers.get_all(header::TRANSFER_ENCODING);
    if codings.iter().next().is_some() && headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest {
            reason: "a request may not have both Content-Length and Transfer-Encoding".into(),
        });
    }
    // hyper removes only `chunked`; another coding would reach the vendor undone and unnamed.
    if let Some(coding) = codings
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
        host::host_problem(request.version(), headers).map_err(ProxyError::InvalidHost)?;
    }
    Ok(())
}

/// The digest of the key `Proxy-Authorization` carries: `Bearer <key>`, or `Basic` with
/// the key as the password (any user name), which is what clients send for a proxy URL
/// `http://user:<key>@host:port`. Compared to the clients' keys in constant time.
pub fn presented_key(headers: &http::HeaderMap) -> Option<KeyDigest> {
    let value = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|value| value.to_str().ok())?;
    let (scheme, credentials) = value.trim().split_once(' ').unwrap_or((value, ""));
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(KeyDigest::of(credentials.as_bytes()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let password = match decoded.iter().position(|byte| *byte == b':') {
            Some(colon) => &decoded[colon + 1..],
            None => &decoded[..],
        };
        return Some(KeyDigest::of(password));
    }
    None
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
