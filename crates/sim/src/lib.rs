//! Vendor simulators: real HTTP servers on `127.0.0.1:0` used by tokenproxy's integration
//! tests and by `tokenproxy demo` (its `demo` feature). A crate of its own so that a release
//! build without that feature carries no simulator, test knob or TLS acceptor.
//!
//! Layout:
//! - this file: [`SimServer`] (accept loop, optional TLS), body/response helpers, [`Fnv1a`] and
//!   [`unsigned_jwt`];
//! - `grant`: token bookkeeping the vendor simulators share (expiry, revocation, refresh
//!   rotation, counts per grant type);
//! - [`echo`]: an upstream that reports exactly what it received;
//! - [`oauth`]: a scripted RFC 6749 authorization server plus a protected API, the base of every
//!   vendor simulator;
//! - [`bigeval`], [`caepe`]: vendor presets over [`oauth`];
//! - [`biganimal`], [`bigid`], [`amm`]: vendors whose flows do not fit [`oauth`] (device code
//!   plus token exchange, a raw-header token swap, Spring-style OAuth with redirects), each a
//!   server of its own built from the helpers here.
//!
//! Nothing here depends on tokenproxy itself, so the simulators can be reused unchanged.

pub mod amm;
pub mod biganimal;
pub mod bigeval;
pub mod bigid;
pub mod caepe;
pub mod echo;
mod grant;
pub mod oauth;
mod samples;

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// Response body of every simulator: boxed so streamed and buffered bodies share one type.
pub type SimBody = BoxBody<Bytes, Infallible>;

/// A TLS handshake that stalls longer than this is a broken client, not a slow one.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running simulator. Dropping it stops accepting and closes every open connection, so a
/// test can make an upstream "go away" even behind a pooled client.
pub struct SimServer {
    addr: SocketAddr,
    tls: bool,
    accept_loop: JoinHandle<()>,
}

impl SimServer {
    /// Serves plain HTTP/1.1 and h2c (prior knowledge) on `127.0.0.1:0`.
    ///
    /// Panics if no loopback port can be bound: the simulators are test and demo fixtures and
    /// cannot do anything useful without one.
    pub async fn start<H, Fut>(handler: H) -> SimServer
    where
        H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<SimBody>> + Send + 'static,
    {
        Self::spawn(None, handler).await
    }

    /// Serves HTTPS on `127.0.0.1:0` with ALPN `h2` and `http/1.1`.
    pub async fn start_tls<H, Fut>(acceptor: TlsAcceptor, handler: H) -> SimServer
    where
        H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<SimBody>> + Send + 'static,
    {
        Self::spawn(Some(acceptor), handler).await
    }

    /// Serves `handle` over `state` (a vendor simulator's), with TLS when `acceptor` is given.
    pub(crate) async fn with_state<S, Fut>(
        state: &Arc<Mutex<S>>,
        acceptor: Option<TlsAcceptor>,
        handle: fn(Request<Incoming>, Arc<Mutex<S>>) -> Fut,
    ) -> SimServer
    where
        S: Send + 'static,
        Fut: Future<Output = Response<SimBody>> + Send + 'static,
    {
        let state = state.clone();
        Self::spawn(acceptor, move |request| handle(request, state.clone())).await
    }

    async fn spawn<H, Fut>(acceptor: Option<TlsAcceptor>, handler: H) -> SimServer
    where
        H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<SimBody>> + Send + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("simulator: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("simulator: local address of a bound listener");
        let tls = acceptor.is_some();
        let handler = Arc::new(handler);
        let accept_loop = tokio::spawn(accept_loop(listener, acceptor, handler));
        SimServer {
            addr,
            tls,
            accept_loop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        // The connection tasks live in a JoinSet owned by the accept loop, so they go with it.
        self.accept_loop.abort();
    }
}

async fn accept_loop<H, Fut>(listener: TcpListener, acceptor: Option<TlsAcceptor>, handler: Arc<H>)
where
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<SimBody>> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so a long demo run does not accumulate handles.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually EMFILE; back off instead of spinning.
                tracing::warn!(%error, "simulator: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            match acceptor {
                None => serve_connection(stream, handler).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls_stream)) => serve_connection(tls_stream, handler).await,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "simulator: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "simulator: TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<IO, H, Fut>(io: IO, handler: Arc<H>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<SimBody>> + Send + 'static,
{
    let service = service_fn(move |request| {
        let response = handler(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    if let Err(error) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
    {
        // Clients hanging up mid-request is routine in proxy tests.
        tracing::debug!(%error, "simulator: connection ended with an error");
    }
}

/// A TLS acceptor offering `h2` and `http/1.1`, using the ring provider explicitly so it does
/// not depend on a process-wide default provider being installed.
pub fn tls_acceptor(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An empty body.
pub fn empty_body() -> SimBody {
    Empty::new().boxed()
}

/// A buffered body.
pub fn full_body(data: impl Into<Bytes>) -> SimBody {
    Full::new(data.into()).boxed()
}

/// A response with the given status, content type and body.
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<SimBody> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON response; `serde_json::Value` serialisation cannot fail.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<SimBody> {
    response(status, "application/json", body.to_string())
}

/// The credential after `scheme` (e.g. `"Bearer "`; auth schemes are case-insensitive, RFC
/// 9110 11.1), or `None` if the value does not start with it.
pub(crate) fn strip_scheme<'a>(value: &'a HeaderValue, scheme: &str) -> Option<&'a str> {
    let value = value.to_str().ok()?;
    value
        .get(..scheme.len())
        .is_some_and(|sent| sent.eq_ignore_ascii_case(scheme))
        .then(|| &value[scheme.len()..])
}

/// What a protected API answers an authorized request with: the vendor's list where the
/// demo calls one (`samples`), else `api_echo`.
pub(crate) fn api_answer(
    vendor: &str,
    parts: &http::request::Parts,
    body_len: u64,
) -> serde_json::Value {
    let organization = parts
        .headers
        .get("organization")
        .and_then(|value| value.to_str().ok());
    let listing = (parts.method == http::Method::GET)
        .then(|| samples::listing(vendor, parts.uri.path(), organization))
        .flatten();
    listing.unwrap_or_else(|| api_echo(vendor, parts, body_len))
}

/// What a protected API answers an authorized request with: what arrived, so a test can see
/// what the proxy forwarded.
pub(crate) fn api_echo(
    vendor: &str,
    parts: &http::request::Parts,
    body_len: u64,
) -> serde_json::Value {
    serde_json::json!({
        "vendor": vendor,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "body_len": body_len,
        "authorized": true,
    })
}

/// Sets a header whose value was built at run time; values that are not valid header text are
/// dropped rather than failing the response.
pub(crate) fn set_header(response: &mut Response<SimBody>, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64-bit of `data`: cheap, streaming and dependency-free, enough to prove a body
/// arrived byte for byte (not a cryptographic check).
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut hasher = Fnv1a::new();
    hasher.update(data);
    hasher.finish()
}

/// Incremental FNV-1a 64-bit, for bodies that are never held in memory whole.
#[derive(Clone, Debug)]
pub struct Fnv1a {
    state: u64,
}

impl Fnv1a {
    pub fn new() -> Self {
        Fnv1a {
            state: FNV_OFFSET_BASIS,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        let mut state = self.state;
        for &byte in data {
            state ^= u64::from(byte);
            state = state.wrapping_mul(FNV_PRIME);
        }
        self.state = state;
    }

    pub fn finish(&self) -> u64 {
        self.state
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

/// An unsigned JWT (`alg: none`) carrying `claims`, shaped like Keycloak's tokens so a client
/// can read `exp` without verifying anything.
pub fn unsigned_jwt(claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    // Some parsers reject an empty third segment, so carry a dummy signature.
    let signature = URL_SAFE_NO_PAD.encode(random_bytes::<16>());
    format!("{header}.{payload}.{signature}")
}

/// The claims of a JWT, without any verification; `None` if it is not a JWT.
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let decoded = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&decoded).ok()
}

/// Unpredictable-enough bytes for token values without a `rand` dependency: every
/// `RandomState` is freshly keyed, and the counter keeps values unique even if keys repeat.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos())
                .unwrap_or_default(),
        );
        let word = hasher.finish().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    out
}

/// Lower-case hex of `N` random bytes.
pub(crate) fn random_hex<const N: usize>() -> String {
    random_bytes::<N>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Seconds since the Unix epoch, for JWT `iat`/`exp`.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

/// Locks simulator state; a panicking test thread must not take every later request down.
pub(crate) fn lock_state<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Collects a small request body; `Err` is the status to answer (413 over `limit`, else 400).
pub(crate) async fn read_small_body(body: Incoming, limit: usize) -> Result<Bytes, StatusCode> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Err(_) => Err(StatusCode::BAD_REQUEST),
    }
}

/// Reads and discards a request body, returning its length: protected APIs accept uploads of
/// any size without holding them.
pub(crate) async fn drain_body(mut body: Incoming) -> u64 {
    let mut body_len = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            body_len += data.len() as u64;
        }
    }
    body_len
}

/// RFC 3986 percent-encoding of everything but unreserved characters, so a space becomes `%20`
/// (never `+`) as in the vendors' redirect URLs.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// `name=value&...` with both sides percent-encoded.
pub(crate) fn encode_pairs(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("{}={}", percent_encode(name), percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `N` random characters from `alphabet` (modulo bias is irrelevant for test fixtures).
pub(crate) fn random_chars<const N: usize>(alphabet: &[u8]) -> String {
    random_bytes::<N>()
        .iter()
        .map(|byte| char::from(alphabet[usize::from(*byte) % alphabet.len()]))
        .collect()
}
