//! The browser guard through the real server: foreign `Host` names get 421, cross-site
//! requests 403, neither reaches the upstream; allowed web apps get CORS; curl-like and
//! Postman-like requests pass as before.

mod support;

use http::{Request, StatusCode};
use support::*;
use tokenproxy_sim::{echo, json_response, SimServer};

fn config(echo: &str, extra_server: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{extra_server}\n[store]\npath = \"memory\"\n\
         [upstreams.api]\ntarget = \"{echo}/\"\nhost = \"api.example.test\"\nallowed_origins = [\"http://localhost:5173\"]\n\
         [upstreams.api.auth]\nkind = \"static\"\ntoken = \"guarded-token\"\n\
         [upstreams.other]\ntarget = \"{echo}/\"\n[upstreams.other.auth]\nkind = \"static\"\ntoken = \"other-token\"\n"
    )
}

async fn start(config: &str) -> tokenproxy::server::Server {
    let config =
        tokenproxy::config::parse(config, "test.toml", &tokenproxy::config::ProcessSources)
            .unwrap();
    tokenproxy::server::Server::start(&config).await.unwrap()
}

async fn request(
    server: &tokenproxy::server::Server,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Response<bytes::Bytes> {
    let mut builder = Request::get(format!("http://{}{path}", server.local_addr()));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(builder.body(empty()).unwrap()).await
}

#[tokio::test]
async fn foreign_host_names_get_421_and_reach_nothing() {
    let upstream = echo::start().await;
    let server = start(&config(&upstream.url(), "allowed_hosts = [\"tokenproxy\"]")).await;
    for host in [
        "evil.example",
        "evil.example:8080",
        "127.0.0.1.nip.io",
        "localhost.attacker.example",
        "localhost.evil:80",
        "10.0.0.1",
    ] {
        let response = request(&server, "/other/x", &[("host", host)]).await;
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let response = request(&server, "/-/status", &[("host", host)]).await;
        assert_eq!(
            response.status(),
            StatusCode::MISDIRECTED_REQUEST,
            "admin for {host}"
        );
    }
    assert_eq!(upstream.request_count(), 0);
    for host in [
        "localhost",
        "LOCALHOST.",
        "localhost:8080",
        "127.0.0.1:9",
        "[::1]:8080",
        "app.localhost",
        "Api.Example.Test.",
        "tokenproxy",
        "TOKENPROXY:8080",
    ] {
        let response = request(&server, "/other/x", &[("host", host)]).await;
        assert_eq!(response.status(), StatusCode::OK, "{host}");
    }
    // HTTP/1.0 with no Host at all comes from no browser.
    let answer = raw_request(server.local_addr(), b"GET /other/x HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
}

async fn raw_request(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = vec![0u8; 2048];
    let n = stream.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn cross_site_requests_get_403_and_reach_nothing() {
    let upstream = echo::start().await;
    let server = start(&config(
        &upstream.url(),
        "allowed_origins = [\"http://localhost:3000\"]",
    ))
    .await;
    let cases: &[&[(&str, &str)]] = &[
        &[("origin", "http://evil.example")],
        &[("origin", "null")],
        &[("origin", "http://localhost:3001")],
        &[("origin", "https://localhost:3000")],
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://evil.example"),
        ],
        &[("origin", "http://localhost:5173")], // allowed for api only, not for other
    ];
    for headers in cases {
        let response = request(&server, "/other/x", headers).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{headers:?}");
        let problem = json(&response);
        assert!(
            problem["detail"].as_str().unwrap().contains("cross-site"),
            "{problem}"
        );
    }
    let post = send(
        Request::post(format!(
            "http://{}/-/upstreams/other/logout",
            server.local_addr()
        ))
        .header("origin", "http://evil.example")
        .body(empty())
        .unwrap(),
    )
    .await;
    assert_eq!(
        post.status(),
        StatusCode::FORBIDDEN,
        "admin actions are same-origin only"
    );
    assert_eq!(upstream.request_count(), 0);

    // curl, Postman, scripts; a typed URL; the proxy's own page; an allowed app.
    let own_origin = format!("http://{}", server.local_addr());
    let passing: &[&[(&str, &str)]] = &[
        &[],
        &[
            ("user-agent", "PostmanRuntime/7.36.0"),
            ("postman-token", "x"),
        ],
        &[("sec-fetch-site", "none"), ("sec-fetch-mode", "navigate")],
        &[
            ("sec-fetch-site", "same-origin"),
            ("origin", own_origin.as_str()),
        ],
        &[
            ("origin", "http://localhost:3000"),
            ("sec-fetch-site", "same-site"),
        ],
    ];
    for headers in passing {
        let response = request(&server, "/other/x", headers).await;
        assert_eq!(response.status(), StatusCode::OK, "{headers:?}");
    }
    let api = request(&server, "/api/x", &[("origin", "http://localhost:5173")]).await;
    assert_eq!(api.status(), StatusCode::OK, "per-upstream allowed origin");
    assert_eq!(
        api.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
}

#[tokio::test]
async fn allowed_origins_get_preflights_answered_here_and_vendor_cors_removed() {
    // A vendor that opens everything to everyone.
    let vendor = SimServer::start(|_request| async {
        let mut response = json_response(StatusCode::OK, &serde_json::json!({"ok": true}));
        let headers = response.headers_mut();
        headers.insert("access-control-allow-origin", "*".parse().unwrap());
        headers.insert("access-control-allow-credentials", "true".parse().unwrap());
        headers.insert("access-control-allow-headers", "*".parse().unwrap());
        response
    })
    .await;
    let counting = echo::start().await;
    let server = start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nallowed_origins = [\"http://localhost:3000\"]\n[store]\npath = \"memory\"\n\
         [upstreams.vendor]\ntarget = \"{}/\"\n[upstreams.vendor.auth]\nkind = \"static\"\ntoken = \"t\"\n\
         [upstreams.echo]\ntarget = \"{}/\"\n[upstreams.echo.auth]\nkind = \"static\"\ntoken = \"t\"\n",
        vendor.url(),
        counting.url()
    ))
    .await;
    let preflight = send(
        Request::options(format!("http://{}/echo/x", server.local_addr()))
            .header("origin", "http://localhost:3000")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, x-trace")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(
        preflight.headers()["access-control-allow-headers"],
        "content-type, x-trace"
    );
    assert!(preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_eq!(
        counting.request_count(),
        0,
        "a preflight is never forwarded"
    );

    let foreign = send(
        Request::options(format!("http://{}/echo/x", server.local_addr()))
            .header("origin", "http://evil.example")
            .header("access-control-request-method", "POST")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    assert!(foreign
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let allowed = request(&server, "/vendor/x", &[("origin", "http://localhost:3000")]).await;
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert!(allowed
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    assert!(allowed
        .headers()
        .get_all("vary")
        .iter()
        .any(|v| v == "Origin"));
    let plain = request(&server, "/vendor/x", &[]).await;
    assert_eq!(plain.status(), StatusCode::OK);
    assert!(
        plain.headers().get("access-control-allow-origin").is_none(),
        "the vendor's * is gone"
    );
    assert!(plain
        .headers()
        .get("access-control-allow-headers")
        .is_none());
}

#[test]
fn check_warns_about_a_wide_listener_without_allowed_hosts() {
    let dir = temp_dir("guard-check");
    std::fs::write(
        dir.join("tokenproxy.toml"),
        "[server]\nlisten = \"0.0.0.0:8080\"\nclient_key = \"k3y-0f-at-least-16\"\n[store]\npath = \"memory\"\n[upstreams.a]\ntarget = \"https://a.example/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n",
    )
    .unwrap();
    let output = tokenproxy(&dir).arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("allowed_hosts is empty"), "{stderr}");
}

/// Opens each page in Chromium (`tests/interop/browser.mjs`) and returns the titles they
/// ended with, by URL.
async fn browse(chromium: String, pages: Vec<String>) -> serde_json::Value {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CHROMIUM", chromium)
            .arg("tests/interop/browser.mjs")
            .args(&pages)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Serves one HTML page at every path.
async fn page(html: String) -> SimServer {
    SimServer::start(move |_request| {
        let html = html.clone();
        async move { tokenproxy_sim::response(StatusCode::OK, "text/html; charset=utf-8", html) }
    })
    .await
}

/// A real headless Chromium: a page from another loopback port tries `fetch`, a form POST
/// and an image through the proxy, and the upstream receives nothing; a page from an
/// allowed origin reads an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_a_foreign_page_spends_no_token_and_an_allowed_app_works() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "Chromium is needed at {chromium} (bash scripts/test.sh installs Debian's chromium)"
    );
    let upstream = echo::start().await;
    // The allowed app's port must be known before the proxy's config: bind its page first.
    let proxy_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    let attacker = page(format!(
        r#"<!doctype html><title>attacking</title>
<form id=f method=POST action="{proxy_url}/echo/form" target=sink><input name=a value=b></form>
<iframe name=sink></iframe><img src="{proxy_url}/echo/img">
<script>
fetch("{proxy_url}/echo/fetch", {{mode: "no-cors", method: "POST", body: "x"}}).catch(() => {{}});
fetch("{proxy_url}/echo/cors").catch(() => {{}});
document.getElementById("f").submit();
setTimeout(() => document.title = "done", 1500);
</script>"#
    ))
    .await;
    let app = page(format!(
        r#"<!doctype html><title>app</title><script>
fetch("{proxy_url}/echo/app").then(r => r.json()).then(j => document.title = "done:" + j.uri)
  .catch(e => document.title = "done:failed " + e);
</script>"#
    ))
    .await;
    let server = start(&format!(
        "[server]\nlisten = \"127.0.0.1:{proxy_port}\"\nallowed_origins = [\"{}\"]\n[store]\npath = \"memory\"\n\
         [upstreams.echo]\ntarget = \"{}/\"\n[upstreams.echo.auth]\nkind = \"static\"\ntoken = \"browser-token\"\n",
        app.url(),
        upstream.url()
    ))
    .await;
    let attack_url = format!("{}/attack", attacker.url());
    let app_url = format!("{}/app", app.url());
    let pages = [attack_url.clone(), app_url.clone()];
    let results = browse(chromium, pages.to_vec()).await;
    assert_eq!(results[&attack_url], "done", "{results}");
    assert_eq!(results[&app_url], "done:/app", "{results}");
    let seen: Vec<String> = upstream.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(
        seen,
        ["/app"],
        "only the allowed app's request reached the upstream"
    );
    drop(server);
}

/// A real headless Chromium opens a page a vendor returns through the proxy. Its script
/// tries to read `/-/status`, read another upstream's answer and log that upstream out
/// with the action header: all three are refused, because the proxied page runs in a
/// sandboxed, opaque origin, and the other upstream keeps its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_a_vendors_page_cannot_act_on_the_proxys_origin() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "Chromium is needed at {chromium} (bash scripts/test.sh installs Debian's chromium)"
    );
    let vendor = page(
        r#"<!doctype html><title>vendor</title><script>
(async () => {
  const results = {};
  const attempt = async (name, request) => {
    try { results[name] = await request(); } catch (error) { results[name] = 'refused'; }
  };
  await attempt('status', () => fetch('/-/status').then(r => r.text()).then(t => t.includes('upstreams') ? 'read' : 'unreadable'));
  await attempt('other', () => fetch('/other/x').then(r => r.text()).then(() => 'read'));
  await attempt('logout', () => fetch('/-/upstreams/other/logout', {method: 'POST', headers: {'Tokenproxy-Action': '1'}}).then(r => 'HTTP ' + r.status));
  document.title = 'done:' + JSON.stringify(results);
})();
</script>"#
            .to_owned(),
    )
    .await;
    let sim = client_credentials_sim("other-secret", std::time::Duration::from_secs(600)).await;
    let server = start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"memory\"\n\
         [upstreams.vendor]\ntarget = \"{}/\"\n[upstreams.vendor.auth]\nkind = \"static\"\ntoken = \"vendor-token\"\n{}",
        vendor.url(),
        client_credentials_upstream("other", &sim, "other-secret")
    ))
    .await;
    let base = format!("http://{}", server.local_addr());
    assert_eq!(
        get(&format!("{base}/other/x")).await.status(),
        StatusCode::OK
    );
    let url = format!("{base}/vendor/page");
    let pages = [url.clone()];
    let results = browse(chromium, pages.to_vec()).await;
    assert_eq!(
        results[&url], r#"done:{"status":"refused","other":"refused","logout":"refused"}"#,
        "{results}"
    );
    let status = json(&get(&format!("{base}/-/status")).await);
    let other = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|upstream| upstream["name"] == "other")
        .unwrap();
    assert_eq!(other["token"]["state"], "valid", "{status}");
    // Only the test's own request reached the other upstream.
    assert_eq!(sim.api_requests(), 1);
    drop(server);
}
