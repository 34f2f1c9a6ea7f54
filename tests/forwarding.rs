//! The forwarding path through the real server against a real echo upstream on 127.0.0.1.

mod support;

use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use support::*;
use tokenproxy_sim::{echo, fnv1a64};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "static-token-0123456789";

/// `support::static_upstream` with this file's token.
fn static_upstream(name: &str, target: &str, extra: &str) -> String {
    support::static_upstream(name, target, TOKEN, extra)
}

#[tokio::test]
async fn injects_the_token_and_drops_the_clients_authorization() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "")).await;
    let response = send(
        Request::get(proxy.url("/echo/hello"))
            .header("authorization", "Bearer the-clients-own")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let report = json(&response);
    assert_eq!(
        echoed(&report, "authorization"),
        [format!("Bearer {TOKEN}")]
    );
}

#[tokio::test]
async fn method_path_query_and_repeated_headers_arrive_intact() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream(
        "echo",
        &format!("{}/api/", upstream.url()),
        "",
    ))
    .await;
    let response = send(
        Request::builder()
            .method(Method::PATCH)
            .uri(proxy.url("/echo/a%20b/c%2Fd?q=%C3%A9&x=1&x=2&empty="))
            .header("accept", "application/json")
            .header("accept", "text/plain")
            .header("x-custom", "one")
            .body(full("patch-body"))
            .unwrap(),
    )
    .await;
    let report = json(&response);
    assert_eq!(report["method"], "PATCH");
    assert_eq!(report["uri"], "/api/a%20b/c%2Fd?q=%C3%A9&x=1&x=2&empty=");
    assert_eq!(
        echoed(&report, "accept"),
        ["application/json", "text/plain"]
    );
    assert_eq!(echoed(&report, "x-custom"), ["one"]);
    assert_eq!(report["body_len"], 10);
    assert_eq!(report["body_fnv1a"], fnv1a64(b"patch-body"));
}

#[tokio::test]
async fn target_base_path_and_prefix_are_joined_without_doubling_slashes() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream(
        "echo",
        &format!("{}/api/v1/", upstream.url()),
        "",
    ))
    .await;
    for (path, expected) in [
        ("/echo", "/api/v1/"),
        ("/echo/", "/api/v1/"),
        ("/echo/x/y", "/api/v1/x/y"),
    ] {
        let report = json(&get(&proxy.url(path)).await);
        assert_eq!(report["uri"], expected, "for {path}");
    }
}

#[tokio::test]
async fn host_is_rewritten_and_forwarded_headers_are_added() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "")).await;
    let response = send(
        Request::get(proxy.url("/echo/"))
            .header("host", "localhost:8080")
            .header("x-forwarded-for", "10.1.2.3")
            .header("forwarded", "for=10.9.9.9;host=spoofed.example;proto=https")
            .body(empty())
            .unwrap(),
    )
    .await;
    let report = json(&response);
    assert_eq!(echoed(&report, "host"), [upstream.addr().to_string()]);
    assert_eq!(echoed(&report, "x-forwarded-for"), ["10.1.2.3, 127.0.0.1"]);
    assert_eq!(echoed(&report, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed(&report, "x-forwarded-host"), ["localhost:8080"]);
    // The client's own `Forwarded` could contradict the `X-Forwarded-*` set here.
    assert!(echoed(&report, "forwarded").is_empty(), "{report}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "")).await;
    let response = send(
        Request::get(proxy.url("/echo/"))
            .header("connection", "x-hop-named")
            .header("x-hop-named", "must not pass")
            .header("keep-alive", "timeout=1")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic c2VjcmV0")
            .header("x-echo-hop-response", "1")
            .body(empty())
            .unwrap(),
    )
    .await;
    let report = json(&response);
    for name in ["x-hop-named", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            echoed(&report, name).is_empty(),
            "{name} reached the upstream"
        );
    }
    // The upstream's own hop-by-hop headers do not reach the client.
    assert!(response.headers().get("x-drop-me").is_none());
    assert!(response.headers().get("proxy-authenticate").is_none());
    assert!(response.headers().get("keep-alive").is_none());
    assert_eq!(response.headers()["x-echo-seen"], "1");
}

#[tokio::test]
async fn a_5_mb_body_streams_both_ways_intact() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "")).await;
    const SIZE: u64 = 5 * 1024 * 1024;

    let upload = send(
        Request::post(proxy.url("/echo/upload"))
            .body(pattern(SIZE))
            .unwrap(),
    )
    .await;
    let report = json(&upload);
    assert_eq!(report["body_len"], SIZE);
    assert_eq!(report["body_fnv1a"], echo::download_pattern_fnv1a(SIZE));

    let download = client()
        .request(
            Request::get(proxy.url("/echo/download"))
                .header("x-echo-download", SIZE.to_string())
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    let mut body = download.into_body();
    let mut hash = tokenproxy_sim::Fnv1a::new();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len() as u64;
            hash.update(&data);
        }
    }
    assert_eq!(received, SIZE);
    assert_eq!(hash.finish(), echo::download_pattern_fnv1a(SIZE));
}

#[tokio::test]
async fn routes_by_prefix_host_and_dedicated_port() {
    let first = echo::start().await;
    let second = echo::start().await;
    let config = static_upstream("one", &first.url(), "host = \"one.localhost\"")
        + &static_upstream(
            "two",
            &second.url(),
            "prefix = \"/second\"\nlisten = \"127.0.0.1:0\"",
        );
    let proxy = TestProxy::start(&config).await;

    let by_prefix = json(&get(&proxy.url("/second/x")).await);
    assert_eq!(by_prefix["uri"], "/x");
    assert_eq!(second.request_count(), 1);

    let by_host = send(
        Request::get(proxy.url("/second/x"))
            .header("host", "ONE.localhost.:8080")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        json(&by_host)["uri"],
        "/second/x",
        "host routing forwards the whole path"
    );
    assert_eq!(first.request_count(), 1);

    let port = proxy
        .server
        .upstream_addr("two")
        .expect("two has its own listener");
    let by_port = json(&get(&format!("http://{port}/anything")).await);
    assert_eq!(by_port["uri"], "/anything");
    assert_eq!(second.request_count(), 2);
    assert_eq!(first.request_count(), 1);
}

#[tokio::test]
async fn no_route_is_a_404_problem() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "")).await;
    for path in ["/nothing/here", "/echoes", "/"] {
        let response = get(&proxy.url(path)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "for {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem = json(&response);
        assert_eq!(problem["status"], 404);
        assert_eq!(problem["title"], "Not Found");
    }
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn serves_cleartext_http2_with_prior_knowledge() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "")).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let response = h2
        .request(
            Request::get(proxy.url("/echo/h2?x=1"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(report["uri"], "/h2?x=1");
    assert_eq!(
        echoed(&report, "authorization"),
        [format!("Bearer {TOKEN}")]
    );
}

#[tokio::test]
async fn upgrade_requests_pass_through_as_a_tunnel() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "")).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(
            b"GET /echo/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Bearer {TOKEN}")),
        "the upgrade request carried the token: {head}"
    );
    stream.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed_back = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed_back))
        .await
        .expect("echo arrives")
        .unwrap();
    assert_eq!(&echoed_back, b"ping through the tunnel");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_problem() {
    // Bind then drop, so the port is closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TestProxy::start(&static_upstream("gone", &format!("http://{closed}/"), "")).await;
    let response = get(&proxy.url("/gone/x")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let problem = json(&response);
    assert_eq!(problem["upstream"], "gone");
    assert!(
        problem["detail"].as_str().unwrap().contains("unreachable"),
        "{problem}"
    );
    assert!(!response
        .body()
        .windows(TOKEN.len())
        .any(|w| w == TOKEN.as_bytes()));
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_problem() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream(
        "slow",
        &upstream.url(),
        "response_header_timeout = \"300ms\"",
    ))
    .await;
    let response = send(
        Request::get(proxy.url("/slow/x"))
            .header("x-echo-delay-ms", "3000")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json(&response)["upstream"], "slow");
    let metrics = String::from_utf8(get(&proxy.url("/-/metrics")).await.body().to_vec()).unwrap();
    assert!(
        metrics.contains("tokenproxy_upstream_errors_total{upstream=\"slow\",kind=\"timeout\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokenproxy_requests_total{upstream=\"slow\",code=\"504\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_connect_timeout_is_a_504_problem() {
    // 192.0.2.0/24 is TEST-NET-1: never routed. Without a route the connect fails fast
    // instead, so accept either outcome but require a problem naming the upstream.
    let proxy = TestProxy::start(&static_upstream(
        "void",
        "http://192.0.2.1:9/",
        "connect_timeout = \"200ms\"",
    ))
    .await;
    let response = get(&proxy.url("/void/x")).await;
    assert!(
        response.status() == StatusCode::GATEWAY_TIMEOUT
            || response.status() == StatusCode::BAD_GATEWAY,
        "{}",
        response.status()
    );
    assert_eq!(json(&response)["upstream"], "void");
}

#[tokio::test]
async fn the_vendors_answers_pass_through_untouched() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "")).await;
    let response = send(
        Request::get(proxy.url("/echo/x"))
            .header("x-echo-status", "418")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert!(response.headers().get("proxy-status").is_none());
    assert_eq!(json(&response)["uri"], "/x");
}

#[tokio::test]
async fn static_headers_are_added_and_cannot_be_overridden_by_the_client() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream(
        "echo",
        &upstream.url(),
        "headers = { X-Team = \"data\" }",
    ))
    .await;
    let response = send(
        Request::get(proxy.url("/echo/x"))
            .header("x-team", "spoofed")
            .header("x-team", "spoofed again")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(echoed(&json(&response), "x-team"), ["data"]);
}

#[tokio::test]
async fn an_access_key_upstream_still_drops_the_clients_authorization() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.biganimal]\ntarget = \"{}/\"\n[upstreams.biganimal.auth]\nkind = \"static\"\nheader = \"x-access-key\"\nscheme = \"\"\ntoken = \"{TOKEN}\"\n",
        upstream.url()
    ))
    .await;
    let response = send(
        Request::get(proxy.url("/biganimal/api/v3/clusters"))
            .header("authorization", "Bearer leaked-elsewhere")
            .header("x-access-key", "the-clients-own")
            .body(empty())
            .unwrap(),
    )
    .await;
    let report = json(&response);
    assert_eq!(echoed(&report, "x-access-key"), [TOKEN]);
    assert!(echoed(&report, "authorization").is_empty());
}

#[tokio::test]
async fn connect_is_refused_and_nothing_is_forwarded() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "prefix = \"/\"")).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let target = upstream.addr();
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    assert_eq!(upstream.request_count(), 0);
}

/// HTTP/1.1 lets a client send its next request before the answer to the first. Both come
/// in the connection's first read, which tells the protocol apart; hyper reads them from
/// there, and each goes to the upstream and is answered in order.
#[tokio::test]
async fn pipelined_requests_in_one_write_are_answered_in_order() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "")).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(
            b"GET /echo/first HTTP/1.1\r\nHost: localhost\r\n\r\n\
              GET /echo/second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answers = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answers))
        .await
        .expect("both answers and the close within 5 s")
        .unwrap();
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 2, "{answers}");
    let (first, second) = (answers.find("/first"), answers.find("/second"));
    assert!(first.is_some() && first < second, "{answers}");
    let uris: Vec<String> = upstream.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(uris, ["/first", "/second"]);
}
