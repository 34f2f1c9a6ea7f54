//! Forwarding one request to its upstream, in three named phases:
//! 1. `prepare`: with the credential and the body (kept when small; both had without
//!    waiting in the usual case), the rewritten head (target, hop-by-hop out, the client's
//!    credentials out, token and `X-Forwarded-*` in);
//! 2. `exchange`: send, and send again where `retry` says so (a reset before any answer
//!    to an idempotent request; a 401 answered with a replaced token);
//! 3. `finish`: the answer's hop-by-hop headers out, a `Location` into the target
//!    brought behind the proxy, HTTP/1.1 whatever the vendor spoke, the sandbox in; or a
//!    tunnel for a 101.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{replay_body, replayable, ClientBodyError, Replay};
use super::response_timer::{Elapsed, ResponseTimer};
use super::{headers, redirect, Connection};
use crate::access_log::{Counted, Facts};
use crate::app::Upstream;
use crate::credential::Credential;
use crate::problem::ProxyError;
use crate::tokens::TokenUnavailable;
use crate::transport::{error_chain, Affinity, BoxError, ProxyBody, SendError};

/// The request as it goes to the vendor, with what a second attempt needs.
struct Prepared {
    parts: http::request::Parts,
    /// The first attempt's body; `replay` keeps a copy when it was small enough to keep.
    body: Option<ProxyBody>,
    replay: Option<Bytes>,
    credential: Arc<Credential>,
    /// The client's side of an `Upgrade`, joined to the vendor's on a 101.
    client_upgrade: Option<OnUpgrade>,
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps each argument twice"
)]
pub(super) fn forward<'a>(
    upstream: &'a Arc<Upstream>,
    connection: &'a Connection,
    mut request: Request<Incoming>,
    target: Uri,
    original_host: Option<HeaderValue>,
    mount: Option<&'a str>,
    facts: &'a mut Facts,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + 'a {
    async move {
        let Connection {
            forwarded_for,
            affinity,
            response_timer,
            egress,
            ..
        } = connection;
        // The common case is decided without waiting: a valid token, no body to read. The
        // waits are boxed, so this future (moved at every await around it) stays small.
        let credential = match upstream.tokens.valid_now() {
            Some(credential) => credential,
            None => {
                facts.token_refreshed |= facts.enabled;
                Box::pin(upstream.tokens.credential())
                    .await
                    .map_err(|unavailable| no_token(upstream, unavailable))?
            }
        };
        let upgrade = if request.version() == Version::HTTP_11 {
            headers::upgrade_protocol(request.headers())
        } else {
            None
        };
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        // A small body is kept so the request can be sent again (a 401 with a stale token, a
        // connection reset); anything else streams through untouched.
        let body = if upgrade.is_some() {
            Replay::Streaming(body.map_err(Into::into).boxed_unsync())
        } else if http_body::Body::is_end_stream(&body) {
            Replay::Kept(Bytes::new())
        } else {
            Box::pin(replayable(body, upstream.config.retry_body_limit)).await?
        };
        // Through the egress listener the client addressed the vendor itself: no hop to tell of.
        let forwarded = (!egress).then(|| (forwarded_for.clone(), original_host));
        let head = Head {
            parts,
            target,
            upgrade,
            forwarded,
        };
        let mut prepared = prepare(upstream, head, body, credential, client_upgrade, facts);
        // An upgraded connection is never reused, so upgrades take a pooled one.
        let affinity = prepared.client_upgrade.is_none().then_some(&**affinity);
        let sent = facts.enabled.then(tokio::time::Instant::now);
        let response = exchange(upstream, &mut prepared, affinity, response_timer, facts).await;
        if let Some(sent) = sent {
            facts.upstream_time = Some(sent.elapsed());
        }
        let response = response?;
        Ok(finish(upstream, mount, response, prepared.client_upgrade))
    }
}

fn no_token(upstream: &Upstream, unavailable: TokenUnavailable) -> ProxyError {
    ProxyError::NoToken {
        upstream: upstream.config.name.clone(),
        cause: unavailable.cause,
        retry_after: unavailable.retry_after,
    }
}

/// The client's request head and what `prepare` rewrites it with.
struct Head {
    parts: http::request::Parts,
    target: Uri,
    /// The protocol of an `Upgrade` request, carried to the vendor.
    upgrade: Option<HeaderValue>,
    /// The client's address and the host it used, for `X-Forwarded-*` (`None`: no hop to
    /// tell of).
    forwarded: Option<(Option<HeaderValue>, Option<HeaderValue>)>,
}

/// Phase 1: the head as the vendor gets it, with the credential, and the body.
fn prepare(
    upstream: &Upstream,
    head: Head,
    body: Replay,
    credential: Arc<Credential>,
    client_upgrade: Option<OnUpgrade>,
    facts: &mut Facts,
) -> Prepared {
    let Head {
        mut parts,
        target,
        upgrade,
        forwarded,
    } = head;
    parts.uri = target;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    headers::strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers::set_upgrade(headers, protocol);
    }
    // Room for what is added, in one step.
    headers.reserve(4 + upstream.config.headers.len() + credential.headers.len());
    match &upstream.cleartext_host {
        Some(host) => headers.insert(header::HOST, host.clone()),
        None => headers.remove(header::HOST),
    };
    if let Some((forwarded_for, original_host)) = forwarded {
        headers::add_forwarded(headers, forwarded_for, original_host);
    }
    // The client's own credentials never reach the vendor, nor can it override ours: the
    // first of our values for a name replaces the client's, a second one joins it.
    let ours = || upstream.config.headers.iter().chain(&credential.headers);
    if !ours().any(|(name, _)| name == header::AUTHORIZATION) {
        headers.remove(header::AUTHORIZATION);
    }
    for (index, (name, value)) in ours().enumerate() {
        if ours().take(index).any(|(earlier, _)| earlier == name) {
            headers.append(name.clone(), value.clone());
        } else {
            headers.insert(name.clone(), value.clone());
        }
    }

    let (body, replay) = match body {
        Replay::Kept(bytes) => {
            facts.bytes_in = bytes.len() as u64;
            (replay_body(&bytes), Some(bytes))
        }
        Replay::Streaming(body) if facts.enabled => {
            let tally = Arc::default();
            facts.bytes_in_streamed = Some(Arc::clone(&tally));
            (Counted { body, tally }.boxed_unsync(), None)
        }
        Replay::Streaming(body) => (body, None),
    };
    Prepared {
        parts,
        body: Some(body),
        replay,
        credential,
        client_upgrade,
    }
}

/// What the attempts so far were.
#[derive(Default)]
struct Attempts {
    sent: u32,
    token_replaced: bool,
}

/// How an attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Answered(StatusCode),
    /// The connection broke after it was established, before any answer.
    Reset,
    /// Could not connect, or no answer in time.
    Failed,
}

impl Ended {
    fn of(outcome: &Result<Response<Incoming>, SendFailure>) -> Ended {
        match outcome {
            Ok(response) => Ended::Answered(response.status()),
            Err(SendFailure::Reset(_)) => Ended::Reset,
            Err(SendFailure::Timeout(_) | SendFailure::Connect(_)) => Ended::Failed,
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, PartialEq, Eq)]
enum Retry {
    No,
    /// The connection broke before any answer: once more, on a fresh connection.
    FreshConnection,
    /// The vendor refused the token: once more, with a replaced one.
    NewToken,
}

/// The one retry policy. Only a kept body can be sent again. A reset is retried once, for
/// the first attempt of an idempotent request (a request the vendor may have acted on is
/// never sent twice); a 401 once, when the token can be replaced. A second 401 passes
/// through.
fn retry(
    ended: Ended,
    attempts: &Attempts,
    method: &Method,
    kept_body: bool,
    refreshes: bool,
) -> Retry {
    if !kept_body {
        return Retry::No;
    }
    let idempotent = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    match ended {
        Ended::Reset if idempotent && attempts.sent == 1 => Retry::FreshConnection,
        Ended::Answered(StatusCode::UNAUTHORIZED) if refreshes && !attempts.token_replaced => {
            Retry::NewToken
        }
        _ => Retry::No,
    }
}

/// Phase 2: the attempts, as `retry` allows them.
async fn exchange(
    upstream: &Upstream,
    prepared: &mut Prepared,
    affinity: Option<&Affinity>,
    timer: &ResponseTimer,
    facts: &mut Facts,
) -> Result<Response<Incoming>, ProxyError> {
    let name = &upstream.config.name;
    let refreshes = upstream.tokens.provider().refreshes();
    let mut attempts = Attempts::default();
    loop {
        let body = match prepared.body.take() {
            Some(body) => body,
            None => replay_body(prepared.replay.as_ref().unwrap_or(&Bytes::new())),
        };
        let request = outgoing(&mut prepared.parts, body);
        let timeout = upstream.config.response_header_timeout;
        let sent = timer
            .bound(timeout, upstream.transport.send(request, affinity))
            .await;
        let outcome = SendFailure::of(sent, timeout);
        attempts.sent += 1;
        let kept_body = prepared.replay.is_some();
        let ended = Ended::of(&outcome);
        match retry(
            ended,
            &attempts,
            &prepared.parts.method,
            kept_body,
            refreshes,
        ) {
            Retry::No => return outcome.map_err(|failure| failure.into_error(name, upstream)),
            Retry::FreshConnection => {
                if let Err(SendFailure::Reset(error)) = &outcome {
                    tracing::debug!(upstream = %name, error = %error, "connection reset; retrying once on a fresh connection");
                }
            }
            Retry::NewToken => {
                attempts.token_replaced = true;
                // One refresh, shared by every request that saw the same token fail.
                let fresh = upstream
                    .tokens
                    .replace_stale(&prepared.credential)
                    .await
                    .map_err(|unavailable| no_token(upstream, unavailable))?;
                if Arc::ptr_eq(&fresh, &prepared.credential) {
                    return outcome.map_err(|failure| failure.into_error(name, upstream));
                }
                tracing::info!(upstream = %name, "401 from the upstream; retrying with a new token");
                facts.token_refreshed = true;
                facts.retried_401 = true;
                swap_credential(
                    &mut prepared.parts.headers,
                    &prepared.credential,
                    &fresh,
                    &upstream.config.headers,
                );
                prepared.credential = fresh;
            }
        }
    }
}

/// Phase 3: the answer as the client gets it. `mount`: the client's path prefix that
/// routed here, for redirects (`None`: leave them as the vendor wrote them).
fn finish(
    upstream: &Upstream,
    mount: Option<&str>,
    mut response: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
) -> Response<ProxyBody> {
    let name = &upstream.config.name;
    match (client_upgrade, response.status()) {
        (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) => {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let protocol = response.headers().get(header::UPGRADE).cloned();
            headers::strip_hop_by_hop(response.headers_mut());
            if let Some(protocol) = protocol {
                headers::set_upgrade(response.headers_mut(), protocol);
            }
            tokio::spawn(tunnel(name.to_owned(), client_upgrade, upstream_upgrade));
        }
        _ => headers::strip_hop_by_hop(response.headers_mut()),
    }
    let location = response.headers().get(header::LOCATION).zip(mount);
    if let Some(rewritten) = location.and_then(|(location, mount)| {
        redirect::rewrite_location(location, &upstream.config.target, mount)
    }) {
        response.headers_mut().insert(header::LOCATION, rewritten);
    }
    // The client talks to tokenproxy, which speaks HTTP/1.1 (or 2) whatever the vendor does.
    *response.version_mut() = Version::HTTP_11;
    headers::sandbox(response.headers_mut());
    response.map(|body| body.map_err(Into::into).boxed_unsync())
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
    /// How an attempt bounded by the response-header timeout (`timeout`) ended.
    fn of(
        sent: Result<Result<Response<Incoming>, SendError>, Elapsed>,
        timeout: std::time::Duration,
    ) -> Result<Response<Incoming>, SendFailure> {
        match sent {
            Err(Elapsed) => Err(SendFailure::Timeout(timeout)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(SendError::Connect(error))) => Err(SendFailure::Connect(error)),
            Ok(Err(SendError::Broken(error))) => Err(SendFailure::Reset(error)),
        }
    }

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

/// One attempt's request: the prepared one (credential included) with `body`.
fn outgoing(parts: &mut http::request::Parts, body: ProxyBody) -> Request<ProxyBody> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    // A copy is kept for a retry (a clone copies the tables whole; re-inserting header by
    // header rehashes). The map itself goes out: hyper reuses it for the response's head,
    // and a clone has no room to spare.
    let kept = parts.headers.clone();
    *request.headers_mut() = std::mem::replace(&mut parts.headers, kept);
    request
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
    fn the_retry_policy_sends_again_only_what_is_safe_to_send_again() {
        let first = Attempts {
            sent: 1,
            token_replaced: false,
        };
        let after_reset = Attempts {
            sent: 2,
            token_replaced: false,
        };
        let after_new_token = Attempts {
            sent: 2,
            token_replaced: true,
        };
        let unauthorized = Ended::Answered(StatusCode::UNAUTHORIZED);
        let get = &Method::GET;
        let post = &Method::POST;
        // A reset: once, for an idempotent request with a kept body.
        assert_eq!(
            retry(Ended::Reset, &first, get, true, true),
            Retry::FreshConnection
        );
        assert_eq!(
            retry(Ended::Reset, &after_reset, get, true, true),
            Retry::No
        );
        assert_eq!(retry(Ended::Reset, &first, post, true, true), Retry::No);
        assert_eq!(retry(Ended::Reset, &first, get, false, true), Retry::No);
        assert_eq!(retry(Ended::Failed, &first, get, true, true), Retry::No);
        // A 401: once, with a new token, for any method whose body was kept.
        assert_eq!(
            retry(unauthorized, &first, post, true, true),
            Retry::NewToken
        );
        assert_eq!(
            retry(unauthorized, &after_reset, get, true, true),
            Retry::NewToken
        );
        assert_eq!(
            retry(unauthorized, &after_new_token, get, true, true),
            Retry::No
        );
        assert_eq!(retry(unauthorized, &first, get, true, false), Retry::No);
        assert_eq!(retry(unauthorized, &first, post, false, true), Retry::No);
        assert_eq!(
            retry(Ended::Answered(StatusCode::OK), &first, get, true, true),
            Retry::No
        );
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
