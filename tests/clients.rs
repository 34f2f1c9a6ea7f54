//! Named clients (`[clients.NAME]`): each key reaches exactly what its policy allows, on
//! the main listener and through the egress listener; a refusal is 403 problem+json naming
//! the client and the rule, and never reaches the upstream. `server.client_key` keeps full
//! access. Bad client config is one line naming the field.

#![allow(clippy::disallowed_types)] // Real servers on the real clock.

mod support;

use std::time::Duration;

use http::{Method, Request, StatusCode};
use support::*;
use tokenproxy::config::{self, ProcessSources};
use tokenproxy_sim::echo;

const READER_KEY: &str = "reader-key-0123456789abcdef";
/// `printf %s reader-key-0123456789abcdef | sha256sum`: what a user writes by hand.
const READER_SHA256: &str = "75b38889ff0e52878a7637a97ae16cbe0af0f5542459765a705db1e2e8b7d33d";
const RUNNER_KEY: &str = "runner-key-fedcba9876543210";
const SERVER_KEY: &str = "server-key-000111222333444";

/// Two upstreams on one echo server; `reader` may only read bigid, `runner` may do
/// anything on bigid but only list and run test cases on bigeval.
fn policies(echo: &echo::EchoServer, key_file: &std::path::Path) -> String {
    let target = format!("{}/", echo.url());
    format!(
        r#"{bigid}{bigeval}
[clients.reader]
key_sha256 = "{READER_SHA256}"
upstreams = ["bigid"]
methods = ["GET", "HEAD"]

[clients.runner]
key = "${{file:{key_file}}}"
upstreams = ["bigid", "bigeval"]
[clients.runner.rules.bigeval]
methods = ["GET", "POST"]
paths = ["/api/v1/testcases", "/api/v1/testcases/*/run"]
"#,
        bigid = static_upstream("bigid", &target, "bigid-token-value", ""),
        bigeval = static_upstream("bigeval", &target, "bigeval-token-value", ""),
        key_file = key_file.display(),
    )
}

async fn call(proxy: &TestProxy, key: Option<&str>, method: Method, path: &str) -> Response {
    let mut request = Request::builder().method(method).uri(proxy.url(path));
    if let Some(key) = key {
        request = request.header("proxy-authorization", format!("Bearer {key}"));
    }
    send(request.body(empty()).unwrap()).await
}

type Response = http::Response<bytes::Bytes>;

#[tokio::test]
async fn each_client_gets_exactly_its_allowed_set_and_refusals_never_reach_the_upstream() {
    let echo = echo::start().await;
    let dir = temp_dir("clients-policy");
    let key_file = dir.join("runner_key");
    std::fs::write(&key_file, format!("{RUNNER_KEY}\n")).unwrap();
    let toml = policies(&echo, &key_file);
    let proxy = TestProxy::start(&toml).await;
    // TestProxy's own [server] table comes first: the key goes straight after it.
    let full = TestProxy::start(&format!(
        "client_key = \"{SERVER_KEY}\"\n[store]\npath = \"memory\"\n{toml}"
    ))
    .await;

    // (client key, method, path, allowed, rule that refuses it)
    let cases: &[(&str, Method, &str, Option<&str>)] = &[
        (READER_KEY, Method::GET, "/bigid/api/v1/items", None),
        (READER_KEY, Method::HEAD, "/bigid/api/v1/items", None),
        (
            READER_KEY,
            Method::DELETE,
            "/bigid/api/v1/items/1",
            Some("clients.reader.methods"),
        ),
        (
            READER_KEY,
            Method::POST,
            "/bigid/api/v1/items",
            Some("clients.reader.methods"),
        ),
        (
            READER_KEY,
            Method::GET,
            "/bigeval/api/v1/testcases",
            Some("clients.reader.upstreams"),
        ),
        (RUNNER_KEY, Method::DELETE, "/bigid/api/v1/items/1", None),
        (RUNNER_KEY, Method::GET, "/bigeval/api/v1/testcases", None),
        (
            RUNNER_KEY,
            Method::POST,
            "/bigeval/api/v1/testcases/42/run",
            None,
        ),
        (
            RUNNER_KEY,
            Method::DELETE,
            "/bigeval/api/v1/testcases/42",
            Some("clients.runner.rules.bigeval.methods"),
        ),
        (
            RUNNER_KEY,
            Method::GET,
            "/bigeval/api/v1/users",
            Some("clients.runner.rules.bigeval.paths"),
        ),
        (
            RUNNER_KEY,
            Method::POST,
            "/bigeval/api/v1/testcases/42/run/extra",
            Some("clients.runner.rules.bigeval.paths"),
        ),
        (
            RUNNER_KEY,
            Method::POST,
            "/bigeval/api/v1/testcases/42%2F..%2F..%2Fusers/run",
            Some("clients.runner.rules.bigeval.paths"),
        ),
    ];
    for (key, method, path, refused_by) in cases {
        let before = echo.request_count();
        let response = call(&proxy, Some(key), method.clone(), path).await;
        let client = if *key == READER_KEY {
            "reader"
        } else {
            "runner"
        };
        match refused_by {
            None => {
                assert_eq!(
                    response.status(),
                    StatusCode::OK,
                    "{client} {method} {path}"
                );
                assert_eq!(echo.request_count(), before + 1, "{client} {method} {path}");
                let seen = echo.last_request().unwrap();
                assert_eq!(
                    seen.header("proxy-authorization"),
                    None,
                    "the key is never forwarded"
                );
            }
            Some(rule) => {
                assert_eq!(
                    response.status(),
                    StatusCode::FORBIDDEN,
                    "{client} {method} {path}"
                );
                assert_eq!(
                    response.headers()["content-type"],
                    "application/problem+json"
                );
                let problem = json(&response);
                assert_eq!(problem["client"], *client, "{problem}");
                assert_eq!(problem["rule"], *rule, "{problem}");
                assert!(
                    problem["detail"].as_str().unwrap().contains(rule),
                    "{problem}"
                );
                assert_eq!(
                    echo.request_count(),
                    before,
                    "refused, yet forwarded: {method} {path}"
                );
            }
        }
    }

    // No key, an unknown key: 407; the probes answer anyone.
    for key in [None, Some("not-a-configured-key-at-all")] {
        let response = call(&proxy, key, Method::GET, "/bigid/api/v1/items").await;
        assert_eq!(response.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    }
    assert_eq!(get(&proxy.url("/-/health")).await.status(), StatusCode::OK);
    // The admin endpoints beyond the probes are for admin clients only.
    let status = call(&proxy, Some(READER_KEY), Method::GET, "/-/status").await;
    assert_eq!(status.status(), StatusCode::FORBIDDEN);
    assert_eq!(json(&status)["rule"], "clients.reader.admin");

    // With server.client_key too, that key reaches everything, the others keep their limits.
    let before = echo.request_count();
    for path in ["/bigid/api/v1/items/1", "/bigeval/api/v1/users"] {
        let response = call(&full, Some(SERVER_KEY), Method::DELETE, path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    assert_eq!(echo.request_count(), before + 2);
    let status = call(&full, Some(SERVER_KEY), Method::GET, "/-/status").await;
    assert_eq!(status.status(), StatusCode::OK);
    let refused = call(&full, Some(READER_KEY), Method::DELETE, "/bigid/x").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // Each client's figures: in the metrics, the status and on the page; never a key.
    let metrics = call(&full, Some(SERVER_KEY), Method::GET, "/-/metrics").await;
    let metrics = String::from_utf8_lossy(metrics.body()).into_owned();
    for sample in [
        "tokenproxy_client_requests_total{client=\"reader\"} 1",
        "tokenproxy_client_refused_total{client=\"reader\",rule=\"method\"} 1",
        "tokenproxy_client_refused_total{client=\"reader\",rule=\"path\"} 0",
        "tokenproxy_client_refused_total{client=\"runner\",rule=\"upstream\"} 0",
        "tokenproxy_refused_requests_total{upstream=\"bigid\",reason=\"client_policy\"} 1",
    ] {
        assert!(metrics.contains(sample), "{sample} not in:\n{metrics}");
    }
    let status = json(&call(&full, Some(SERVER_KEY), Method::GET, "/-/status").await);
    let clients = status["clients"].as_array().unwrap();
    let names: Vec<&str> = clients
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["server.client_key", "reader", "runner"]);
    let reader = &clients[1];
    assert_eq!(reader["policy"], "bigid GET, HEAD");
    assert_eq!(reader["upstreams"], serde_json::json!(["bigid"]));
    assert_eq!(reader["requests"], 1);
    assert_eq!(reader["refused"]["method"], 1);
    assert!(
        clients[0]["upstreams"].is_null(),
        "server.client_key: every upstream"
    );
    let page = call(&full, Some(SERVER_KEY), Method::GET, "/-/").await;
    let page = String::from_utf8_lossy(page.body()).into_owned();
    assert!(page.contains("<tr data-client=\"reader\">"), "{page}");
    assert!(
        page.contains("<td class=\"num refused\">1 (method 1)</td>"),
        "{page}"
    );
    for shown in [&metrics, &status.to_string(), &page] {
        for key in [READER_KEY, RUNNER_KEY, SERVER_KEY, READER_SHA256] {
            assert!(!shown.contains(key), "a key is shown");
        }
    }
}

#[tokio::test]
async fn the_egress_listener_applies_the_same_policies() {
    use tokenproxy::egress::ca;
    let echo = echo::start().await;
    let dir = temp_dir("clients-egress");
    let key_file = dir.join("runner_key");
    std::fs::write(&key_file, RUNNER_KEY).unwrap();
    let ca_dir = dir.join("ca");
    let log = dir.join("access.log");
    let port = echo.addr().port();
    // The vendor is reached by its own URL through the egress listener.
    let toml = format!(
        r#"[egress]
listen = "127.0.0.1:0"
ca_dir = "{ca_dir}"
[access_log]
to = "{log}"
{bigid}{bigeval}
[clients.reader]
key_sha256 = "{READER_SHA256}"
upstreams = ["bigid"]
methods = ["GET"]
"#,
        ca_dir = ca_dir.display(),
        log = log.display(),
        bigid = static_upstream(
            "bigid",
            &format!("http://bigid.example:{port}/"),
            "bigid-token-value",
            "address = \"127.0.0.1\"",
        ),
        bigeval = static_upstream(
            "bigeval",
            &format!("http://bigeval.example:{port}/"),
            "bigeval-token-value",
            "address = \"127.0.0.1\"",
        ),
    );
    let scope_config = config::parse(
        &format!("[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"memory\"\n{toml}"),
        "test.toml",
        &ProcessSources,
    )
    .unwrap();
    ca::init(&ca_dir, &ca::scope_of(&scope_config), false).unwrap();
    let proxy = TestProxy::start(&toml).await;
    let egress = proxy.server.egress_addr().unwrap();

    let through = |method: Method, host: &str, key: Option<&str>| {
        // Absolute form, as a client sends a plain-http URL to its HTTP_PROXY.
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{host}:{port}/api/items"))
            .header("host", format!("{host}:{port}"));
        if let Some(key) = key {
            use base64::Engine;
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("tokenproxy:{key}"));
            request = request.header("proxy-authorization", format!("Basic {basic}"));
        }
        let request = request.body(empty()).unwrap();
        async move {
            let stream = tokio::net::TcpStream::connect(egress).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let response = sender.send_request(request).await.unwrap();
            let (parts, body) = response.into_parts();
            use http_body_util::BodyExt;
            let body = body.collect().await.unwrap().to_bytes();
            http::Response::from_parts(parts, body)
        }
    };
    let before = echo.request_count();
    let allowed = through(Method::GET, "bigid.example", Some(READER_KEY)).await;
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(echo.request_count(), before + 1);
    for (method, host, rule) in [
        (Method::POST, "bigid.example", "clients.reader.methods"),
        (Method::GET, "bigeval.example", "clients.reader.upstreams"),
    ] {
        let refused = through(method, host, Some(READER_KEY)).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(json(&refused)["rule"], rule);
    }
    let anonymous = through(Method::GET, "bigid.example", None).await;
    assert_eq!(
        anonymous.status(),
        StatusCode::PROXY_AUTHENTICATION_REQUIRED
    );
    assert_eq!(
        echo.request_count(),
        before + 1,
        "a refusal reached the vendor"
    );
}

#[test]
fn bad_client_config_is_one_line_naming_the_field() {
    let upstream = static_upstream("bigid", "http://127.0.0.1:9/", "t", "");
    let cases = [
        (
            "upstreams = [\"nosuch\"]\nkey_sha256 = \"".to_owned() + READER_SHA256 + "\"",
            "test.toml: clients.ci.upstreams: \"nosuch\" is not a configured upstream",
        ),
        (
            "upstreams = [\"bigid\"]\nkey_sha256 = \"abc\"".to_owned(),
            "test.toml: clients.ci.key_sha256: must be 64 hex digits (a SHA-256)",
        ),
        (
            "upstreams = [\"bigid\"]\nkey = \"short\"".to_owned(),
            "test.toml: clients.ci.key: must be at least 16 characters",
        ),
        (
            format!("upstreams = [\"bigid\"]\nkey_sha256 = \"{READER_SHA256}\"\nmethods = [\"get\"]"),
            "test.toml: clients.ci.methods: \"get\" is not an HTTP method such as \"GET\"",
        ),
        (
            format!("upstreams = [\"bigid\"]\nkey_sha256 = \"{READER_SHA256}\"\n[clients.ci.rules.other]\nmethods = [\"GET\"]"),
            "test.toml: clients.ci.rules.other: \"other\" is not in clients.ci.upstreams",
        ),
    ];
    for (client, expected) in cases {
        let text = format!("[store]\npath = \"memory\"\n{upstream}\n[clients.ci]\n{client}\n");
        let error = config::parse(&text, "test.toml", &ProcessSources).unwrap_err();
        assert_eq!(error.to_string(), expected);
    }
}

/// `tokenproxy ARGS` in `dir`: its exit code, stdout and stderr.
fn run_cli(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokenproxy(dir).args(args).output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

fn sighup(daemon: &Daemon) {
    let pid = daemon.child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[tokio::test]
async fn client_add_change_and_remove_take_effect_on_a_running_daemon_at_reload() {
    let echo = echo::start().await;
    let dir = temp_dir("clients-add");
    let config = format!(
        "# The team's proxy: keep this comment.\n[server]\nlisten = \"127.0.0.1:0\"  # any port\nclient_key = \"{SERVER_KEY}\"\n[store]\npath = \"memory\"\n{}",
        static_upstream("bigid", &format!("{}/", echo.url()), "bigid-token-value", "")
    );
    std::fs::write(dir.join("tokenproxy.toml"), &config).unwrap();
    let daemon = Daemon::start(&dir).await;
    let call = async |key: &str, method: Method| {
        let request = Request::builder()
            .method(method)
            .uri(daemon.url("/bigid/api/items"))
            .header("proxy-authorization", format!("Bearer {key}"));
        send(request.body(empty()).unwrap()).await
    };

    let (code, key, said) = run_cli(
        &dir,
        &["client", "add", "ci", "--upstream", "bigid", "--read-only"],
    );
    assert_eq!(code, Some(0), "{said}");
    let key = key.trim().to_owned();
    assert!(key.len() >= 40, "{key}");
    let written = std::fs::read_to_string(dir.join("tokenproxy.toml")).unwrap();
    assert!(
        written.starts_with(&config),
        "the file as it was stays: {written}"
    );
    assert!(!written.contains(&key), "only the key's hash is written");
    assert!(written.contains("[clients.ci]"), "{written}");

    sighup(&daemon);
    wait_until(
        Duration::from_secs(10),
        "the new key accepted",
        async || call(&key, Method::GET).await.status() == StatusCode::OK,
    )
    .await;
    let refused = call(&key, Method::DELETE).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(json(&refused)["rule"], "clients.ci.methods");
    assert_eq!(
        call(SERVER_KEY, Method::DELETE).await.status(),
        StatusCode::OK
    );

    let (code, listed, _) = run_cli(&dir, &["client", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        listed.contains("ci") && listed.contains("bigid GET, HEAD"),
        "{listed}"
    );
    assert!(listed.contains("server.client_key"), "{listed}");
    let hash = tokenproxy::clients::KeyDigest::of(key.as_bytes()).to_hex();
    for secret in [key.as_str(), &hash, SERVER_KEY] {
        assert!(
            !listed.contains(secret),
            "client list shows a key: {listed}"
        );
    }

    // A name taken, an unknown upstream: exit 2, the file untouched.
    let before = std::fs::read_to_string(dir.join("tokenproxy.toml")).unwrap();
    for args in [
        &["client", "add", "ci", "--upstream", "bigid"][..],
        &["client", "add", "other", "--upstream", "nosuch"][..],
    ] {
        let (code, printed, said) = run_cli(&dir, args);
        assert_eq!(code, Some(2), "{args:?}: {said}");
        assert!(printed.is_empty(), "no key printed for a refused add");
        assert_eq!(said.lines().count(), 1, "{said}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("tokenproxy.toml")).unwrap(),
        before
    );

    // A changed policy takes effect at the next reload, with the same key.
    let widened = before.replace(
        "methods = [\"GET\", \"HEAD\"]",
        "methods = [\"GET\", \"HEAD\", \"DELETE\"]",
    );
    assert_ne!(widened, before);
    std::fs::write(dir.join("tokenproxy.toml"), &widened).unwrap();
    sighup(&daemon);
    wait_until(Duration::from_secs(10), "the widened policy", async || {
        call(&key, Method::DELETE).await.status() == StatusCode::OK
    })
    .await;

    // Removed, and reloaded: the key stops working.
    let (code, _, said) = run_cli(&dir, &["client", "remove", "ci"]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(
        std::fs::read_to_string(dir.join("tokenproxy.toml")).unwrap(),
        config
    );
    sighup(&daemon);
    wait_until(
        Duration::from_secs(10),
        "the removed key refused",
        async || {
            call(&key, Method::GET).await.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED
        },
    )
    .await;
}
