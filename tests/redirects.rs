//! A vendor's redirect keeps the client behind the proxy: a `Location` into the upstream's
//! target comes back as the proxy route, and following it reaches the vendor with the
//! token; every other `Location` is left alone. A vendor's HTTP/1.0 answer reaches the
//! client as HTTP/1.1.

mod support;

use http::StatusCode;
use support::*;
use tokenproxy_sim::echo;
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "redirect-token";

/// GET `url` with the echo server asked to answer 302 to `location`; the `Location` the
/// client gets.
async fn redirected(url: &str, location: &str) -> String {
    let response = send(
        http::Request::get(url)
            .header("x-echo-status", "302")
            .header("x-echo-location", location)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    response.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_location_into_the_target_is_followed_through_the_proxy_with_the_token() {
    let vendor = echo::start().await;
    let other = echo::start().await;
    let target = format!("{}/base/", vendor.url());
    let proxy = TestProxy::start(&format!(
        "{}{}",
        static_upstream("api", &target, TOKEN, ""),
        static_upstream("hosted", &target, TOKEN, "host = \"hosted.localhost\""),
    ))
    .await;
    let start = proxy.url("/api/start");

    let location = redirected(&start, &format!("{}/base/next?page=2", vendor.url())).await;
    assert_eq!(location, "/api/next?page=2");
    assert_eq!(redirected(&start, "/base/next").await, "/api/next");
    // Followed as curl -L would: through the proxy, to the vendor, with the token.
    let followed = json(&get(&proxy.url(&location)).await);
    assert_eq!(followed["uri"], "/base/next?page=2");
    assert_eq!(
        echoed(&followed, "authorization"),
        [format!("Bearer {TOKEN}")]
    );

    // Anywhere else: as the vendor wrote it.
    for elsewhere in [
        format!("{}/base/next", other.url()),
        format!("{}/outside/next", vendor.url()),
        "https://login.vendor.example/base/next".to_owned(),
        "/outside".to_owned(),
        "next".to_owned(),
    ] {
        assert_eq!(redirected(&start, &elsewhere).await, elsewhere);
    }

    // A host route forwards the whole path: the location is the vendor's path after the
    // base, on the same host.
    let hosted = send(
        http::Request::get(proxy.url("/start"))
            .header("host", "hosted.localhost")
            .header("x-echo-status", "302")
            .header("x-echo-location", format!("{}/base/next", vendor.url()))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(hosted.headers()["location"], "/next");
}

#[tokio::test]
async fn an_http_1_0_answer_reaches_the_client_as_http_1_1() {
    let vendor = echo::start().await;
    let proxy = TestProxy::start(&static_upstream(
        "api",
        &format!("{}/", vendor.url()),
        TOKEN,
        "",
    ))
    .await;
    // The echo server itself answers HTTP/1.0 when asked: the proxy is what changes it.
    for (addr, path, expected) in [
        (vendor.addr(), "/x", "HTTP/1.0 200"),
        (proxy.addr(), "/api/x", "HTTP/1.1 200"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nx-echo-http10: 1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with(expected), "{addr}: {head}");
    }
}
