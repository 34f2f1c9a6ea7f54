//! The simulators over real HTTP on 127.0.0.1: what the proxy's own tests rely on.
#![allow(clippy::disallowed_types)] // Real servers on the real clock: deadlines use std time.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::answer::Answer;
use support::read_head;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tokenproxy_sim::echo::{self, Recorded};
use tokenproxy_sim::oauth::{self, ClientAuth, OAuthSimConfig, SimClient, TokenMode};
use tokenproxy_sim::{bigeval, caepe, fnv1a64, jwt_claims, unsigned_jwt, Fnv1a};

async fn send(request: Request<Full<Bytes>>) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.expect("request failed");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("response body").to_bytes(),
    }
}

fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into())).expect("valid request")
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    send(request(Method::GET, url, headers, Bytes::new())).await
}

async fn post_form(url: &str, form: &str) -> Answer {
    post_form_with(url, form, &[]).await
}

async fn post_form_with(url: &str, form: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    send(request(Method::POST, url, &all, form.to_owned())).await
}

// ---------------------------------------------------------------- shared helpers

#[test]
fn fnv1a_matches_reference_vectors_and_streams() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    let mut streamed = Fnv1a::new();
    streamed.update(b"foo");
    streamed.update(b"bar");
    assert_eq!(streamed.finish(), fnv1a64(b"foobar"));
}

#[test]
fn unsigned_jwt_has_three_unpadded_segments_and_round_trips() {
    let claims = serde_json::json!({ "exp": 123, "iat": 100, "jti": "x" });
    let token = unsigned_jwt(&claims);
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3);
    assert!(segments.iter().all(|segment| !segment.is_empty()));
    assert!(!token.contains('='));
    assert_eq!(
        STANDARD.decode(to_standard(segments[0])).expect("base64"),
        br#"{"alg":"none","typ":"JWT"}"#
    );
    assert_eq!(jwt_claims(&token), Some(claims));
}

fn to_standard(url_safe: &str) -> String {
    let mut text = url_safe.replace('-', "+").replace('_', "/");
    while !text.len().is_multiple_of(4) {
        text.push('=');
    }
    text
}

// ---------------------------------------------------------------- echo

#[tokio::test]
async fn echo_reports_method_uri_headers_and_body_exactly() {
    let server = echo::start().await;
    assert!(server.url().starts_with("http://127.0.0.1:"));
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let expected_hash = fnv1a64(&body);
    let mut upload = request(
        Method::PUT,
        &format!("{}/a/../b%2Fc?x=1&y=%20&x=2", server.url()),
        &[("x-rep", "one"), ("x-other", "o"), ("x-rep", "two")],
        body,
    );
    upload
        .headers_mut()
        .append("x-rep", "three".parse().expect("header value"));

    let answer = send(upload).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("x-echo-seen"), Some("1"));
    let reported: Recorded = serde_json::from_slice(&answer.body).expect("Recorded JSON");
    assert_eq!(reported.method, "PUT");
    assert_eq!(reported.uri, "/a/../b%2Fc?x=1&y=%20&x=2");
    assert_eq!(reported.version, "HTTP/1.1");
    assert_eq!(reported.header_values("x-rep"), ["one", "two", "three"]);
    assert_eq!(reported.header("x-other"), Some("o"));
    assert_eq!(reported.body_len, 5_000_000);
    assert_eq!(reported.body_fnv1a, expected_hash);
    assert_eq!(server.requests(), vec![reported]);
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn echo_speaks_h2c_with_prior_knowledge() {
    let server = echo::start().await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let response = client
        .request(request(
            Method::POST,
            &format!("{}/h2?q", server.url()),
            &[],
            "hi",
        ))
        .await
        .expect("h2c request");
    assert_eq!(response.status(), StatusCode::OK);
    let reported: Recorded = serde_json::from_slice(
        &response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes(),
    )
    .expect("Recorded JSON");
    assert_eq!(reported.version, "HTTP/2.0");
    assert_eq!(reported.uri, "/h2?q");
    assert_eq!(reported.body_fnv1a, fnv1a64(b"hi"));
}

#[tokio::test]
async fn echo_download_streams_the_documented_pattern() {
    let server = echo::start().await;
    // Not a multiple of the chunk size or the pattern period.
    let len: u64 = 3 * 65_536 + 1_000;
    let answer = get(&server.url(), &[("x-echo-download", &len.to_string())]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        answer.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(answer.body.len() as u64, len);
    assert_eq!(answer.body[250], 250);
    assert_eq!(answer.body[251], 0);
    assert_eq!(answer.body[65_537], (65_537 % 251) as u8);
    assert_eq!(fnv1a64(&answer.body), echo::download_pattern_fnv1a(len));
    assert_eq!(echo::download_pattern_fnv1a(3), fnv1a64(&[0, 1, 2]));
}

#[tokio::test]
async fn echo_honours_status_delay_and_hop_by_hop_controls() {
    let server = echo::start().await;
    let teapot = get(&server.url(), &[("x-echo-status", "418")]).await;
    assert_eq!(teapot.status.as_u16(), 418);
    assert_eq!(teapot.json()["method"], "GET");

    let started = Instant::now();
    let delayed = get(&server.url(), &[("x-echo-delay-ms", "300")]).await;
    assert_eq!(delayed.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let plain = get(&server.url(), &[]).await;
    assert_eq!(plain.header("x-drop-me"), None);
    let hop = get(&server.url(), &[("x-echo-hop-response", "1")]).await;
    assert_eq!(hop.header("connection"), Some("x-drop-me"));
    assert_eq!(hop.header("x-drop-me"), Some("secret-hop"));
    assert_eq!(hop.header("keep-alive"), Some("timeout=5"));
    assert_eq!(hop.header("proxy-authenticate"), Some("Basic"));
    assert_eq!(hop.header("x-echo-seen"), Some("1"));

    let invalid = get(&server.url(), &[("x-echo-status", "abc")]).await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert_eq!(server.request_count(), 5);
}

#[tokio::test]
async fn echo_upgrade_switches_protocols_and_echoes_bytes() {
    let server = echo::start().await;
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(
            b"GET /ws?room=1 HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nAuthorization: Bearer tunnel-token\r\n\r\n",
        )
        .await
        .expect("write upgrade request");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "head: {head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "head: {head}");
    assert!(lower.contains("connection: upgrade"), "head: {head}");
    assert!(
        lower.contains("x-echo-authorization: bearer tunnel-token"),
        "head: {head}"
    );

    stream.write_all(b"ping\x00\xffpong").await.expect("write");
    let mut echoed = [0u8; 10];
    stream.read_exact(&mut echoed).await.expect("read echo");
    assert_eq!(&echoed, b"ping\x00\xffpong");
    stream.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("echo closes after EOF")
        .expect("read to end");
    assert!(rest.is_empty());

    let recorded = server.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].uri, "/ws?room=1");
    assert_eq!(recorded[0].header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn echo_over_tls_negotiates_h2_by_alpn() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let server = echo::start_tls(vec![cert.clone()], key).await;
    assert!(server.url().starts_with("https://127.0.0.1:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(server.addr()).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let response = sender
        .send_request(request(
            Method::GET,
            "https://localhost/secure?a=b",
            &[],
            Bytes::new(),
        ))
        .await
        .expect("h2 request");
    assert_eq!(response.status(), StatusCode::OK);
    let recorded = server.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].version, "HTTP/2.0");
    assert_eq!(recorded[0].uri, "/secure?a=b");
}

#[tokio::test]
async fn dropping_a_server_refuses_new_connections() {
    let server = echo::start().await;
    let addr = server.addr();
    // A kept-alive connection, as a pooled client would hold it.
    let mut kept_alive = TcpStream::connect(addr).await.expect("connect");
    kept_alive
        .write_all(b"GET /first HTTP/1.1\r\nHost: echo\r\nx-echo-download: 0\r\n\r\n")
        .await
        .expect("write request");
    let head = read_head(&mut kept_alive).await;
    assert!(head.starts_with("HTTP/1.1 200"), "head: {head}");

    drop(server);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(2), kept_alive.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "open connections close with the server");
}

// ---------------------------------------------------------------- generic OAuth

fn generic_config() -> OAuthSimConfig {
    OAuthSimConfig {
        clients: vec![
            SimClient::confidential("app", "app-secret"),
            // Characters that RFC 6749 2.3.1 makes a client urlencode before Basic.
            SimClient::confidential("my client", "s3:cr+t"),
            SimClient::public("cli"),
        ],
        users: vec![("alice".to_owned(), "wonderland".to_owned())],
        ..OAuthSimConfig::default()
    }
}

fn basic(id_and_secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(id_and_secret))
}

#[tokio::test]
async fn token_endpoint_error_paths_follow_rfc6749() {
    let sim = oauth::start(generic_config()).await;
    let url = sim.token_url();

    let get_answer = get(&url, &[]).await;
    assert_eq!(get_answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get_answer.header("allow"), Some("POST"));

    let json_body = send(request(
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        r#"{"grant_type":"client_credentials","client_id":"app","client_secret":"app-secret"}"#,
    ))
    .await;
    let description = json_body.assert_error(400, "invalid_request");
    assert_eq!(description, "Missing form parameter: grant_type");

    post_form(&url, "client_id=app&client_secret=app-secret")
        .await
        .assert_error(400, "invalid_request");
    post_form(
        &url,
        "grant_type=authorization_code&code=x&client_id=app&client_secret=app-secret",
    )
    .await
    .assert_error(400, "unsupported_grant_type");
    post_form(
        &url,
        "grant_type=client_credentials&client_id=app&client_id=app&client_secret=app-secret",
    )
    .await
    .assert_error(400, "invalid_request");

    let bad_secret = post_form(
        &url,
        "grant_type=client_credentials&client_id=app&client_secret=nope",
    )
    .await;
    bad_secret.assert_error(401, "invalid_client");
    assert_eq!(bad_secret.header("www-authenticate"), None);
    let bad_basic = post_form_with(
        &url,
        "grant_type=client_credentials",
        &[("authorization", &basic("app:nope"))],
    )
    .await;
    bad_basic.assert_error(401, "invalid_client");
    assert!(bad_basic
        .header("www-authenticate")
        .is_some_and(|value| value.starts_with("Basic")));
    post_form(
        &url,
        "grant_type=client_credentials&client_id=stranger&client_secret=x",
    )
    .await
    .assert_error(401, "invalid_client");
    post_form(&url, "grant_type=client_credentials")
        .await
        .assert_error(401, "invalid_client");
    post_form_with(
        &url,
        "grant_type=client_credentials&client_secret=app-secret",
        &[("authorization", &basic("app:app-secret"))],
    )
    .await
    .assert_error(400, "invalid_request");

    let wrong_password = post_form(
        &url,
        "grant_type=password&client_id=cli&username=alice&password=guess",
    )
    .await;
    assert_eq!(
        wrong_password.assert_error(400, "invalid_grant"),
        "Invalid user credentials"
    );
    post_form(
        &url,
        "grant_type=refresh_token&client_id=cli&refresh_token=made-up",
    )
    .await
    .assert_error(400, "invalid_grant");
    post_form(&url, "grant_type=client_credentials&client_id=cli")
        .await
        .assert_error(400, "unauthorized_client");

    // The GET is not a token request; every POST is, whatever became of it.
    assert_eq!(sim.token_requests(), 12);
    assert_eq!(sim.count_for_grant("client_credentials"), 7);
    assert_eq!(sim.tokens_issued(), 0);
}

#[tokio::test]
async fn token_endpoint_issues_tokens_through_body_and_urlencoded_basic_auth() {
    let sim = oauth::start(generic_config()).await;
    let url = sim.token_url();
    let by_body = post_form(
        &url,
        "grant_type=client_credentials&client_id=app&client_secret=app-secret",
    )
    .await;
    assert_eq!(by_body.status, StatusCode::OK, "{:?}", by_body.body);
    assert_eq!(by_body.header("cache-control"), Some("no-store"));
    assert_eq!(by_body.header("content-type"), Some("application/json"));
    let token = by_body.json();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 3600);
    assert!(
        token.get("refresh_token").is_none(),
        "client credentials earn no refresh token"
    );
    let access = token["access_token"].as_str().expect("access_token");
    assert_eq!(access.len(), 64);
    assert!(access.bytes().all(|byte| byte.is_ascii_hexdigit()));

    let by_basic = post_form_with(
        &url,
        "grant_type=client_credentials",
        &[("authorization", &basic("my+client:s3%3Acr%2Bt"))],
    )
    .await;
    assert_eq!(by_basic.status, StatusCode::OK, "{:?}", by_basic.body);
    // Percent-decoding of the form itself: the space in the username arrives as '+'.
    let mut config = generic_config();
    config.users = vec![("a b".to_owned(), "p&w=d".to_owned())];
    let users = oauth::start(config).await;
    let login = post_form(
        &users.token_url(),
        "grant_type=password&client_id=cli&username=a+b&password=p%26w%3Dd",
    )
    .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    assert_eq!(sim.tokens_issued(), 2);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_used_one_is_refused_and_counted() {
    let sim = oauth::start(generic_config()).await;
    let url = sim.token_url();
    let login = post_form(
        &url,
        "grant_type=password&client_id=cli&username=alice&password=wonderland",
    )
    .await;
    assert_eq!(login.status, StatusCode::OK);
    let first = login.json()["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();

    let refreshed = post_form(
        &url,
        &format!("grant_type=refresh_token&client_id=cli&refresh_token={first}"),
    )
    .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{:?}", refreshed.body);
    let second = refreshed.json()["refresh_token"]
        .as_str()
        .expect("rotated refresh_token")
        .to_owned();
    assert_ne!(first, second);
    assert_eq!(sim.used_refresh_token_reused(), 0);

    post_form(
        &url,
        &format!("grant_type=refresh_token&client_id=cli&refresh_token={first}"),
    )
    .await
    .assert_error(400, "invalid_grant");
    assert_eq!(sim.used_refresh_token_reused(), 1);

    // Another client cannot use it either.
    post_form(&url, &format!("grant_type=refresh_token&client_id=app&client_secret=app-secret&refresh_token={second}"))
        .await
        .assert_error(400, "invalid_grant");
    let again = post_form(
        &url,
        &format!("grant_type=refresh_token&client_id=cli&refresh_token={second}"),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(sim.count_for_grant("refresh_token"), 4);
    assert_eq!(sim.count_for_grant("password"), 1);

    sim.revoke_all();
    let third = again.json()["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    post_form(
        &url,
        &format!("grant_type=refresh_token&client_id=cli&refresh_token={third}"),
    )
    .await
    .assert_error(400, "invalid_grant");
    assert_eq!(sim.used_refresh_token_reused(), 1, "revoked is not reused");
}

#[tokio::test]
async fn refresh_tokens_expire() {
    let mut config = generic_config();
    config.refresh_ttl = Some(Duration::from_millis(300));
    let sim = oauth::start(config).await;
    let url = sim.token_url();
    let login = post_form(
        &url,
        "grant_type=password&client_id=cli&username=alice&password=wonderland",
    )
    .await;
    let refresh = login.json()["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let expired = post_form(
        &url,
        &format!("grant_type=refresh_token&client_id=cli&refresh_token={refresh}"),
    )
    .await;
    expired.assert_error(400, "invalid_grant");
}

async fn client_credentials_token(sim: &oauth::OAuthSim) -> String {
    let answer = post_form(
        &sim.token_url(),
        "grant_type=client_credentials&client_id=app&client_secret=app-secret",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

#[tokio::test]
async fn api_accepts_a_live_token_and_refuses_after_revoke() {
    let sim = oauth::start(generic_config()).await;
    let token = client_credentials_token(&sim).await;
    let bearer = format!("Bearer {token}");

    let ok = get(
        &format!("{}/v1/items?limit=2", sim.url()),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let json = ok.json();
    assert_eq!(json["authorized"], true);
    assert_eq!(json["path"], "/v1/items");
    assert_eq!(json["query"], "limit=2");
    assert_eq!(json["vendor"], "sim");
    assert_eq!(sim.valid_access_tokens(), 1);

    let missing = get(&format!("{}/v1/items", sim.url()), &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(missing
        .header("www-authenticate")
        .is_some_and(|value| value.contains("error=\"invalid_token\"")));
    let raw = get(&sim.url(), &[("authorization", &token)]).await;
    assert_eq!(
        raw.status,
        StatusCode::UNAUTHORIZED,
        "the scheme is required"
    );
    let doubled = send(request(
        Method::GET,
        &sim.url(),
        &[("authorization", &bearer), ("authorization", &bearer)],
        Bytes::new(),
    ))
    .await;
    assert_eq!(doubled.status, StatusCode::BAD_REQUEST);

    sim.revoke_all();
    let revoked = get(&sim.url(), &[("authorization", &bearer)]).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    assert_eq!(revoked.json()["error"], "invalid_token");
    assert_eq!(sim.valid_access_tokens(), 0);
    assert_eq!(sim.api_requests(), 5);
    assert_eq!(sim.api_authorized(), 1);
}

#[tokio::test]
async fn api_refuses_an_expired_token() {
    let sim = oauth::start(generic_config()).await;
    sim.set_access_ttl(Duration::from_secs(1));
    let answer = post_form(
        &sim.token_url(),
        "grant_type=client_credentials&client_id=app&client_secret=app-secret",
    )
    .await;
    assert_eq!(answer.json()["expires_in"], 1);
    let bearer = format!(
        "Bearer {}",
        answer.json()["access_token"]
            .as_str()
            .expect("access_token")
    );
    assert_eq!(
        get(&sim.url(), &[("authorization", &bearer)]).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let expired = get(&sim.url(), &[("authorization", &bearer)]).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert!(expired
        .header("www-authenticate")
        .is_some_and(|value| value.starts_with("Bearer")));
}

#[tokio::test]
async fn token_modes_script_failures() {
    let sim = oauth::start(generic_config()).await;
    let url = sim.token_url();
    let form = "grant_type=client_credentials&client_id=app&client_secret=app-secret";

    sim.set_mode(TokenMode::OAuthError {
        status: 400,
        error: "invalid_client".to_owned(),
        description: "disabled".to_owned(),
    });
    assert_eq!(
        post_form(&url, form)
            .await
            .assert_error(400, "invalid_client"),
        "disabled"
    );

    sim.set_mode(TokenMode::Html);
    let html = post_form(&url, form).await;
    assert_eq!(html.status, StatusCode::OK);
    assert!(html
        .header("content-type")
        .is_some_and(|value| value.starts_with("text/html")));

    sim.set_mode(TokenMode::InvalidJson);
    let garbage = post_form(&url, form).await;
    assert_eq!(garbage.header("content-type"), Some("application/json"));
    assert!(serde_json::from_slice::<Value>(&garbage.body).is_err());

    sim.set_mode(TokenMode::ServerError);
    let unavailable = post_form(&url, form).await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unavailable.header("retry-after"), Some("3"));

    sim.set_mode(TokenMode::Delay(Duration::from_millis(250)));
    let started = Instant::now();
    assert_eq!(post_form(&url, form).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(250));

    sim.set_mode(TokenMode::Normal);
    assert_eq!(post_form(&url, form).await.status, StatusCode::OK);
    assert_eq!(sim.token_requests(), 6);
    assert_eq!(sim.tokens_issued(), 2);
}

#[tokio::test]
async fn basic_only_servers_refuse_secrets_in_the_body() {
    let sim = oauth::start(OAuthSimConfig {
        client_auth: ClientAuth::Basic,
        ..generic_config()
    })
    .await;
    let url = sim.token_url();
    post_form(
        &url,
        "grant_type=client_credentials&client_id=app&client_secret=app-secret",
    )
    .await
    .assert_error(401, "invalid_client");
    let ok = post_form_with(
        &url,
        "grant_type=client_credentials",
        &[("authorization", &basic("app:app-secret"))],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
}

// ---------------------------------------------------------------- BiG EVAL

#[tokio::test]
async fn bigeval_issues_long_lived_opaque_tokens_for_the_api_scope() {
    let sim = bigeval::start(
        "e01b7ba2dd930ea97da79b0005341ee0",
        "5d1b205aae2d4fec90d424469a3f88ac",
    )
    .await;
    assert_eq!(sim.token_url(), format!("{}/connect/token", sim.url()));
    let credentials =
        "client_id=e01b7ba2dd930ea97da79b0005341ee0&client_secret=5d1b205aae2d4fec90d424469a3f88ac";

    let answer = post_form(
        &sim.token_url(),
        &format!("grant_type=client_credentials&scope=bigeval-api-v1&{credentials}"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let token = answer.json();
    assert_eq!(token["expires_in"], 62_208_000);
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["scope"], "bigeval-api-v1");
    assert!(token.get("refresh_token").is_none());
    let access = token["access_token"].as_str().expect("access_token");
    assert_eq!(access.len(), 64);
    assert!(jwt_claims(access).is_none(), "BiG EVAL tokens are opaque");

    post_form(
        &sim.token_url(),
        &format!("grant_type=client_credentials&{credentials}"),
    )
    .await
    .assert_error(400, "invalid_scope");
    post_form(
        &sim.token_url(),
        &format!("grant_type=password&username=u&password=p&scope=bigeval-api-v1&{credentials}"),
    )
    .await
    .assert_error(400, "unsupported_grant_type");
    post_form_with(
        &sim.token_url(),
        "grant_type=client_credentials&scope=bigeval-api-v1",
        &[(
            "authorization",
            &basic("e01b7ba2dd930ea97da79b0005341ee0:5d1b205aae2d4fec90d424469a3f88ac"),
        )],
    )
    .await
    .assert_error(401, "invalid_client");

    let api = get(
        &format!("{}/api/v1/testcases", sim.url()),
        &[("authorization", &format!("Bearer {access}"))],
    )
    .await;
    assert_eq!(api.status, StatusCode::OK);
    // The list the demo shows, shaped like BiG EVAL's API.
    assert!(
        api.json()["items"][0]["testType"].is_string(),
        "{}",
        api.json()
    );
    sim.revoke_all();
    let revoked = get(
        &format!("{}/api/v1/testcases", sim.url()),
        &[("authorization", &format!("Bearer {access}"))],
    )
    .await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------- CAEPE

#[tokio::test]
async fn caepe_password_grant_gives_keycloak_shaped_jwts() {
    let sim = caepe::start("acme").await;
    let url = sim.token_url();
    assert!(url.ends_with("/realms/biqmind/protocol/openid-connect/token"));
    let login = post_form(
        &url,
        &format!(
            "grant_type=password&client_id=cape-client&username={}&password={}",
            caepe::DEFAULT_USERNAME.replace('@', "%40"),
            caepe::DEFAULT_PASSWORD
        ),
    )
    .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    let token = login.json();
    assert_eq!(token["expires_in"], 300);
    assert_eq!(token["refresh_expires_in"], 1800);
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["not-before-policy"], 0);
    assert!(token["session_state"].is_string());
    assert!(token["scope"]
        .as_str()
        .is_some_and(|scope| scope.contains("profile")));
    let access = token["access_token"].as_str().expect("access_token");
    let claims = jwt_claims(access).expect("JWT access token");
    let lifetime = claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat");
    assert_eq!(lifetime, 300);
    assert!(claims["jti"].is_string());
    assert!(token["refresh_token"].is_string());

    let bearer = format!("Bearer {access}");
    let no_org = get(
        &format!("{}/api/v1/applications", sim.url()),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(no_org.status, StatusCode::BAD_REQUEST);
    assert!(no_org.json()["error_description"]
        .as_str()
        .is_some_and(|text| text.contains("organization")));
    let wrong_org = get(
        &sim.url(),
        &[("authorization", &bearer), ("organization", "other")],
    )
    .await;
    assert_eq!(wrong_org.status, StatusCode::BAD_REQUEST);
    let ok = get(
        &format!("{}/api/v1/applications", sim.url()),
        &[("authorization", &bearer), ("organization", "acme")],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        ok.json()["organization"],
        "acme",
        "the organization's applications"
    );
    assert!(ok.json()["items"][0]["name"].is_string(), "{}", ok.json());
}

#[tokio::test]
async fn caepe_service_account_and_keycloak_errors() {
    let sim = oauth::start(caepe::config_with("acme", "svc-secret", &[("ops", "pw")])).await;
    let url = sim.token_url();
    let service = post_form(
        &url,
        "grant_type=client_credentials&client_id=caepe-service&client_secret=svc-secret",
    )
    .await;
    assert_eq!(service.status, StatusCode::OK, "{:?}", service.body);
    let token = service.json();
    assert!(token.get("refresh_token").is_none());
    assert_eq!(token["refresh_expires_in"], 0);
    // Keycloak also takes client_secret_basic.
    let by_basic = post_form_with(
        &url,
        "grant_type=client_credentials",
        &[("authorization", &basic("caepe-service:svc-secret"))],
    )
    .await;
    assert_eq!(by_basic.status, StatusCode::OK);

    // Keycloak answers 401 (not RFC 6749's 400) for wrong user credentials.
    post_form(
        &url,
        "grant_type=password&client_id=cape-client&username=ops&password=wrong",
    )
    .await
    .assert_error(401, "invalid_grant");
    post_form(&url, "grant_type=client_credentials&client_id=cape-client")
        .await
        .assert_error(400, "unauthorized_client");
    let json_body = send(request(
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        r#"{"grant_type":"password","client_id":"cape-client","username":"ops","password":"pw"}"#,
    ))
    .await;
    json_body.assert_error(400, "invalid_request");
}

#[tokio::test]
async fn caepe_tokens_expire_with_a_shortened_ttl_and_refresh_is_single_use() {
    let sim = caepe::start("acme").await;
    sim.set_access_ttl(Duration::from_secs(1));
    let url = sim.token_url();
    let login = post_form(
        &url,
        &format!(
            "grant_type=password&client_id=cape-client&username={}&password={}",
            caepe::DEFAULT_USERNAME,
            caepe::DEFAULT_PASSWORD
        ),
    )
    .await
    .json();
    assert_eq!(login["expires_in"], 1);
    let headers = |token: &str| (format!("Bearer {token}"), "acme");
    let (bearer, org) = headers(login["access_token"].as_str().expect("access_token"));
    assert_eq!(
        get(
            &sim.url(),
            &[("authorization", &bearer), ("organization", org)]
        )
        .await
        .status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        get(
            &sim.url(),
            &[("authorization", &bearer), ("organization", org)]
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );

    let refresh = login["refresh_token"].as_str().expect("refresh_token");
    let form = format!("grant_type=refresh_token&client_id=cape-client&refresh_token={refresh}");
    let refreshed = post_form(&url, &form).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{:?}", refreshed.body);
    let (bearer, org) = headers(
        refreshed.json()["access_token"]
            .as_str()
            .expect("access_token"),
    );
    assert_eq!(
        get(
            &sim.url(),
            &[("authorization", &bearer), ("organization", org)]
        )
        .await
        .status,
        StatusCode::OK
    );
    post_form(&url, &form)
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(sim.used_refresh_token_reused(), 1);
}
