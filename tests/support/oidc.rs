//! Test helper: a real, independent OAuth2 / OpenID Connect server
//! (`oidc-provider` on Node.js, see `tests/interop/`) for interop tests.
//!
//! ```ignore
//! let op = OidcProvider::start().await;
//! // client_credentials: cc-client/cc-secret (client_secret_post),
//! //                     cc-basic/cc-basic-secret (client_secret_basic)
//! // device_code:        device-client (public)
//! // authorization_code: code-client (public, PKCE S256, any loopback port)
//! let token_url = op.token_url();
//! ```
//!
//! Requires `node` on PATH and `npm ci --prefix tests/interop` to have been run.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A normal start takes under 2 s, also with the other tests running.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const START_ATTEMPTS: u32 = 3;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HOPS: usize = 20;

/// A running `tests/interop/server.mjs`. The server is killed when this is dropped.
pub struct OidcProvider {
    child: Child,
    stdin: Option<ChildStdin>,
    issuer: String,
    token_url: String,
    device_authorization_url: String,
    authorization_url: String,
    discovery: serde_json::Value,
}

impl OidcProvider {
    /// Starts the server with default settings (access token TTL 60 s,
    /// refresh token TTL 3600 s, device code TTL 600 s).
    pub async fn start() -> OidcProvider {
        Self::start_with(&[]).await
    }

    /// Starts the server with extra environment variables, e.g.
    /// `[("ACCESS_TTL", "2")]`. Known: `ACCESS_TTL`, `REFRESH_TTL`,
    /// `DEVICE_TTL` (seconds), `DEBUG` (e.g. `oidc-provider:*`, to stderr).
    ///
    /// Now and then (about one start in 20 under the test harness, never when started by
    /// hand) node stops for good between loading oidc-provider and listening, its main
    /// thread parked on a futex; not understood yet. A start that does not report within
    /// `START_TIMEOUT` is killed and tried again, at most `START_ATTEMPTS` times.
    pub async fn start_with(env: &[(&str, &str)]) -> OidcProvider {
        for attempt in 1..=START_ATTEMPTS {
            if let Some(started) = Self::start_once(env).await {
                return started;
            }
            eprintln!("oidc-provider did not print its issuer within {START_TIMEOUT:?} (attempt {attempt}); starting it again");
        }
        panic!("oidc-provider did not start in {START_ATTEMPTS} attempts");
    }

    /// One start; `None` when the server says nothing within `START_TIMEOUT` (it is killed).
    async fn start_once(env: &[(&str, &str)]) -> Option<OidcProvider> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let interop = root.join("tests").join("interop");
        if !interop.join("node_modules").join("oidc-provider").is_dir() {
            panic!(
                "interop tests need oidc-provider installed in {}: run `npm ci --prefix tests/interop` \
                 (from {}) first",
                interop.join("node_modules").display(),
                root.display()
            );
        }

        let mut cmd = Command::new("node");
        cmd.arg(Path::new("tests").join("interop").join("server.mjs"))
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("failed to spawn `node tests/interop/server.mjs`: {e} (is Node.js installed?)")
        });
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");

        // Server logs go through eprintln! from a thread spawned here; libtest
        // captures them and only shows them for failing tests.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(line) => eprintln!("[oidc-provider] {line}"),
                    Err(_) => break,
                }
            }
        });

        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = tx.send(first);
            // Keep draining so the pipe stays open; nothing else is expected.
            for line in lines {
                match line {
                    Ok(line) => eprintln!("[oidc-provider stdout] {line}"),
                    Err(_) => break,
                }
            }
        });

        // Build the struct early so that the child is killed on any panic below.
        let mut op = OidcProvider {
            child,
            stdin,
            issuer: String::new(),
            token_url: String::new(),
            device_authorization_url: String::new(),
            authorization_url: String::new(),
            discovery: serde_json::Value::Null,
        };

        let line = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => String::new(),
            Err(_) => return None,
        };
        let ready: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
            let status = op.child.try_wait().ok().flatten();
            panic!("oidc-provider did not start (first stdout line {line:?}: {e}; exit status {status:?}); see its stderr above")
        });
        op.issuer = ready["issuer"]
            .as_str()
            .unwrap_or_else(|| panic!("no issuer in {line:?}"))
            .to_string();

        let (status, body) = http(
            "GET",
            &format!("{}/.well-known/openid-configuration", op.issuer),
            &[],
            None,
        )
        .await;
        assert_eq!(
            status,
            200,
            "discovery failed: {}",
            String::from_utf8_lossy(&body)
        );
        let discovery: serde_json::Value = serde_json::from_slice(&body).expect("discovery JSON");
        let endpoint = |name: &str| -> String {
            discovery[name]
                .as_str()
                .unwrap_or_else(|| panic!("discovery has no {name}: {discovery}"))
                .to_string()
        };
        op.token_url = endpoint("token_endpoint");
        op.device_authorization_url = endpoint("device_authorization_endpoint");
        op.authorization_url = endpoint("authorization_endpoint");
        op.discovery = discovery;
        Some(op)
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    pub fn device_authorization_url(&self) -> &str {
        &self.device_authorization_url
    }

    pub fn authorization_url(&self) -> &str {
        &self.authorization_url
    }

    /// The full `/.well-known/openid-configuration` document.
    pub fn discovery(&self) -> &serde_json::Value {
        &self.discovery
    }

    /// Approves a pending device code (by its `user_code`, dashes optional) as
    /// user `alice` with every requested scope; the next poll then succeeds.
    /// Panics unless the server answers 200 (404: unknown/expired code,
    /// 409: already approved or denied).
    pub async fn approve_device(&self, user_code: &str) {
        let body = serde_json::json!({ "user_code": user_code }).to_string();
        let (status, resp) = http(
            "POST",
            &format!("{}/test/device/approve", self.issuer),
            &[("content-type", "application/json")],
            Some(body.into_bytes()),
        )
        .await;
        assert_eq!(
            status,
            200,
            "approving device user_code {user_code:?} failed: {}",
            String::from_utf8_lossy(&resp)
        );
    }

    /// Counters since start:
    /// `{"token_requests": {"<grant_type>": n, ..}, "token_errors": {"<error>": n, ..}, "invalid_grant": n}`.
    /// The device grant is counted as `urn:ietf:params:oauth:grant-type:device_code`.
    pub async fn stats(&self) -> serde_json::Value {
        let (status, body) = http("GET", &format!("{}/test/stats", self.issuer), &[], None).await;
        assert_eq!(
            status,
            200,
            "stats failed: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).expect("stats JSON")
    }

    /// Acts as the user's browser: GETs `authorize_url`, follows redirects
    /// (with a cookie jar) through the auto-completing login/consent
    /// interactions, and returns the first redirect target that starts with
    /// `http://127.0.0.1:` and contains `/-/callback/` — without requesting it.
    /// Panics on a non-redirect response (e.g. an OAuth error page, whose JSON
    /// body is included in the message) or after 20 hops.
    pub async fn browse_to_redirect(&self, authorize_url: &str) -> String {
        let mut jar = CookieJar::default();
        let mut url = authorize_url.to_string();
        for _ in 0..MAX_HOPS {
            let (origin, path) = split_url(&url);
            let mut headers = vec![("accept", "text/html".to_string())];
            if let Some(cookie) = jar.header(&origin, &path) {
                headers.push(("cookie", cookie));
            }
            let header_refs: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let resp = request("GET", &url, &header_refs, None).await;
            for value in resp.headers.get_all(http::header::SET_COOKIE) {
                if let Ok(value) = value.to_str() {
                    jar.store(&origin, &path, value);
                }
            }
            let location = resp
                .headers
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok());
            let location = match (resp.status / 100, location) {
                (3, Some(location)) => location,
                _ => panic!(
                    "browse_to_redirect: GET {url} answered {} without redirect: {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                ),
            };
            let next = resolve_url(&url, location);
            if next.starts_with("http://127.0.0.1:") && next.contains("/-/callback/") {
                return next;
            }
            url = next;
        }
        panic!("browse_to_redirect: no callback redirect after {MAX_HOPS} hops (last URL {url})");
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        // Closing stdin alone makes the server exit; kill it to be sure.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub fn form_urlencode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Value of query parameter `name` in `url` (percent-decoded, `+` as space).
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or("");
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// POSTs a form to `url` (optionally with HTTP Basic client authentication)
/// and returns the status and the JSON body (`Value::Null` if not JSON).
pub async fn post_form(
    url: &str,
    form: &[(&str, &str)],
    basic_auth: Option<(&str, &str)>,
) -> (u16, serde_json::Value) {
    let mut headers = vec![
        (
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept", "application/json".to_string()),
    ];
    if let Some((user, pass)) = basic_auth {
        // RFC 6749 2.3.1: form-encode the client id and secret, then base64.
        let creds = format!("{}:{}", percent_encode(user), percent_encode(pass));
        headers.push((
            "authorization",
            format!("Basic {}", base64(creds.as_bytes())),
        ));
    }
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = http(
        "POST",
        url,
        &header_refs,
        Some(form_urlencode(form).into_bytes()),
    )
    .await;
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// --- minimal HTTP/1 client -------------------------------------------------------

struct Response {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, Bytes) {
    let resp = request(method, url, headers, body).await;
    (resp.status, resp.body)
}

async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Response {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap_or_else(|e| panic!("bad request {method} {url}: {e}"));
    let fut = async {
        let resp = client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading body failed: {e}"))
            .to_bytes();
        Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(HTTP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {url} timed out after {HTTP_TIMEOUT:?}"))
}

// --- URLs and cookies ----------------------------------------------------------------

/// Splits an absolute `http://host[:port]/path?query` URL into
/// (`http://host[:port]`, `/path`).
fn split_url(url: &str) -> (String, String) {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = url[..scheme_end + authority_end].to_string();
    let path_and_more = &rest[authority_end..];
    let path = path_and_more.split(['?', '#']).next().unwrap_or("");
    let path = if path.is_empty() { "/" } else { path };
    (origin, path.to_string())
}

/// Resolves a `Location` header value against the URL it was received from.
fn resolve_url(base: &str, location: &str) -> String {
    if location.contains("://")
        && location
            .split("://")
            .next()
            .is_some_and(|s| !s.contains(['/', '?']))
    {
        return location.to_string();
    }
    let (origin, path) = split_url(base);
    if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.split("://").next().unwrap_or("http");
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    if location.starts_with('?') {
        return format!("{origin}{path}{location}");
    }
    let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
    format!("{origin}{dir}{location}")
}

struct Cookie {
    origin: String,
    name: String,
    value: String,
    path: String,
}

#[derive(Default)]
struct CookieJar {
    cookies: Vec<Cookie>,
}

impl CookieJar {
    /// Stores (or, for expired / empty ones, removes) a `Set-Cookie` value.
    /// Host-only cookies; `Domain` is ignored, `Path` honoured.
    fn store(&mut self, origin: &str, request_path: &str, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            return;
        };
        let (name, value) = (name.trim().to_string(), value.trim().to_string());
        let mut path = None;
        let mut expired = value.is_empty();
        for attr in parts {
            let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "path" if v.starts_with('/') => path = Some(v.to_string()),
                "max-age" => expired |= v.parse::<i64>().map(|n| n <= 0).unwrap_or(false),
                "expires" => expired |= v.contains("1970"),
                _ => {}
            }
        }
        let path = path.unwrap_or_else(|| {
            // RFC 6265 5.1.4 default-path
            match request_path.rfind('/') {
                Some(0) | None => "/".to_string(),
                Some(i) => request_path[..i].to_string(),
            }
        });
        self.cookies
            .retain(|c| !(c.origin == origin && c.name == name && c.path == path));
        if !expired {
            self.cookies.push(Cookie {
                origin: origin.to_string(),
                name,
                value,
                path,
            });
        }
    }

    fn header(&self, origin: &str, request_path: &str) -> Option<String> {
        let mut matching: Vec<&Cookie> = self
            .cookies
            .iter()
            .filter(|c| c.origin == origin && path_matches(request_path, &c.path))
            .collect();
        // RFC 6265 5.4: longer paths first.
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        (!matching.is_empty()).then(|| {
            matching
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

fn path_matches(request_path: &str, cookie_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/') || request_path[cookie_path.len()..].starts_with('/')))
}
