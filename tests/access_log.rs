//! The access log: one JSON line per request with who did what, the request id going
//! round (client, vendor, answer, log), and, at every log level, no token, key or secret in
//! the access log or the daemon's output.
#![allow(clippy::disallowed_types)] // Real servers on the real clock.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use support::*;
use tokenproxy_sim::echo;

/// The access log's lines so far, each parsed as JSON (a line that is not fails the test).
fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

async fn lines_when(path: &std::path::Path, count: usize) -> Vec<serde_json::Value> {
    wait_until(Duration::from_secs(5), "access-log lines", async || {
        lines(path).len() >= count
    })
    .await;
    lines(path)
}

#[tokio::test]
async fn the_request_id_goes_round_and_a_line_says_who_did_what() {
    let echo = echo::start().await;
    let dir = temp_dir("access-log-id");
    let log = dir.join("access.log");
    let target = format!("{}/", echo.url());
    let proxy = TestProxy::start(&format!(
        "[access_log]\nto = \"{}\"\n{}",
        log.display(),
        static_upstream("bigid", &target, "id-test-token", "")
    ))
    .await;

    // The client's own id reaches the vendor, comes back, and is in the line.
    let response = send(
        Request::get(proxy.url("/bigid/items?page=2"))
            .header("x-request-id", "client-chosen-id-42")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "client-chosen-id-42");
    let seen = echo.last_request().unwrap();
    assert_eq!(seen.header_values("x-request-id"), ["client-chosen-id-42"]);

    // Without one (or with one that could break a line), one is made, the same everywhere.
    for sent in [None, Some("has a \"quote\"")] {
        let mut request = Request::put(proxy.url("/bigid/items/7"));
        if let Some(id) = sent {
            request = request.header("x-request-id", id);
        }
        let response = send(request.body(full("twelve bytes")).unwrap()).await;
        let made = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(made.len(), 20, "{made}");
        assert_eq!(
            echo.last_request().unwrap().header_values("x-request-id"),
            [made.as_str()]
        );
    }
    // The status page's reads are not logged; a 404 is.
    assert_eq!(get(&proxy.url("/-/status")).await.status(), StatusCode::OK);
    assert_eq!(
        get(&proxy.url("/nowhere")).await.status(),
        StatusCode::NOT_FOUND
    );

    let logged = lines_when(&log, 4).await;
    assert_eq!(logged.len(), 4, "{logged:?}");
    let first = &logged[0];
    assert_eq!(first["request_id"], "client-chosen-id-42");
    assert_eq!(first["upstream"], "bigid");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/bigid/items");
    assert!(
        first.get("query").is_none(),
        "the query is left out by default"
    );
    assert_eq!(first["status"], 200);
    assert_eq!(first["via"], "listen");
    assert_eq!(first["addr"], "127.0.0.1");
    assert!(first["client"].is_null());
    assert!(first["bytes_out"].as_u64().unwrap() > 0);
    assert!(first["upstream_ms"].as_f64().is_some());
    assert!(first["error"].is_null());
    let put = &logged[1];
    assert_eq!(put["bytes_in"], 12);
    assert_eq!(put["method"], "PUT");
    assert_ne!(put["request_id"], logged[2]["request_id"]);
    let missing = &logged[3];
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["error"], "no_route");
    assert_eq!(missing["fault"], "client");
    assert!(missing["upstream"].is_null());
}

#[tokio::test]
async fn without_the_access_log_no_request_id_is_made() {
    let echo = echo::start().await;
    let target = format!("{}/", echo.url());
    let proxy = TestProxy::start(&static_upstream("bigid", &target, "t0ken-value", "")).await;
    let response = get(&proxy.url("/bigid/items")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("x-request-id").is_none());
    assert!(echo
        .last_request()
        .unwrap()
        .header("x-request-id")
        .is_none());
}

/// Key, method, path, an extra header, the status expected and the error logged.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<(&'a str, &'a str)>,
    u16,
    Option<&'a str>,
);

const CLIENT_SECRET: &str = "log-client-secret-5b1e";
const STATIC_TOKEN: &str = "log-static-token-9a0c";
const SERVER_KEY: &str = "log-server-key-0f0f0f0f0f";
const READER_KEY: &str = "log-reader-key-3c3c3c3c3c";
const QUERY_SECRET: &str = "log-query-secret-7d7d";

#[tokio::test]
async fn a_run_at_every_log_level_logs_every_request_as_json_and_no_secret() {
    use tokenproxy_sim::oauth::{self, OAuthSimConfig, SimClient};
    let upstream = echo::start().await;
    let sim = oauth::start(OAuthSimConfig {
        token_path: "/token".into(),
        clients: vec![SimClient::confidential("svc", CLIENT_SECRET)],
        allow_client_credentials: true,
        access_ttl: Duration::from_secs(600),
        ..OAuthSimConfig::default()
    })
    .await;
    let reader_sha256 = tokenproxy::clients::KeyDigest::of(READER_KEY.as_bytes()).to_hex();
    // Below info the start-up line the test waits for is not printed; trace has it all.
    for level in ["trace", "debug", "info"] {
        let dir = temp_dir(&format!("access-log-{level}"));
        let log = dir.join("access.log");
        std::fs::write(
            dir.join("tokenproxy.toml"),
            format!(
                r#"
[server]
listen = "127.0.0.1:0"
client_key = "{SERVER_KEY}"
[store]
path = "memory"
[access_log]
to = "{log}"
[upstreams.cc]
target = "{echo}/"
[upstreams.cc.auth]
kind = "client_credentials"
token_url = "{token}"
client_id = "svc"
client_secret = "{CLIENT_SECRET}"
[upstreams.fixed]
target = "{echo}/"
[upstreams.fixed.auth]
kind = "static"
token = "{STATIC_TOKEN}"
[clients.reader]
key_sha256 = "{reader_sha256}"
upstreams = ["fixed"]
methods = ["GET"]
"#,
                log = log.display(),
                echo = upstream.url(),
                token = sim.token_url()
            ),
        )
        .unwrap();
        let daemon = Daemon::start_with_env(&dir, &[("TOKENPROXY_LOG", level)]).await;
        let call = async |key: &str, method: &str, path: &str, extra: Option<(&str, &str)>| {
            let mut request = Request::builder()
                .method(method)
                .uri(daemon.url(path))
                .header("proxy-authorization", format!("Bearer {key}"));
            if let Some((name, value)) = extra {
                request = request.header(name, value);
            }
            send(request.body(empty()).unwrap()).await.status()
        };
        let query = format!("/cc/items?api_key={QUERY_SECRET}");
        let expected: [Case; 6] = [
            (SERVER_KEY, "GET", &query, None, 200, None),
            // The vendor refuses the token: it is replaced and the request sent again.
            (
                SERVER_KEY,
                "GET",
                "/cc/items",
                Some(("x-echo-status", "401")),
                401,
                None,
            ),
            (READER_KEY, "GET", "/fixed/items", None, 200, None),
            (
                READER_KEY,
                "DELETE",
                "/fixed/items/1",
                None,
                403,
                Some("client_policy"),
            ),
            (
                "not-a-key-of-anyone-here",
                "GET",
                "/fixed/items",
                None,
                407,
                Some("client_key_required"),
            ),
            (
                READER_KEY,
                "GET",
                "/fixed/items",
                Some(("origin", "https://evil.example")),
                403,
                Some("cross_origin"),
            ),
        ];
        for (key, method, path, extra, status, _) in &expected {
            assert_eq!(
                call(key, method, path, *extra).await.as_u16(),
                *status,
                "{method} {path}"
            );
        }
        let logged = lines_when(&log, expected.len()).await;
        assert_eq!(logged.len(), expected.len(), "{level}: {logged:?}");
        for (line, (_, method, _, _, status, error)) in logged.iter().zip(&expected) {
            assert_eq!(line["method"], *method, "{line}");
            assert_eq!(line["status"], *status, "{line}");
            assert_eq!(line["error"].as_str(), *error, "{line}");
            for field in ["time", "request_id", "path", "via"] {
                assert!(line[field].is_string(), "{field}: {line}");
            }
            if error.is_some() {
                assert!(line["reason"].is_string(), "a refusal says why: {line}");
            }
        }
        assert_eq!(logged[0]["client"], "server.client_key");
        assert_eq!(logged[0]["retried_401"], false);
        assert_eq!(logged[1]["retried_401"], true);
        assert_eq!(logged[1]["token_refreshed"], true);
        assert_eq!(logged[2]["client"], "reader");
        assert!(logged[3]["reason"]
            .as_str()
            .unwrap()
            .contains("clients.reader.methods"));
        assert!(logged[4]["client"].is_null());
        assert!(logged[5]["reason"]
            .as_str()
            .unwrap()
            .contains("evil.example"));

        let output = format!(
            "{}\n{}",
            std::fs::read_to_string(&log).unwrap(),
            daemon.output()
        );
        let mut secrets: Vec<String> = [
            CLIENT_SECRET,
            STATIC_TOKEN,
            SERVER_KEY,
            READER_KEY,
            QUERY_SECRET,
            &reader_sha256,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every token the vendor was sent.
        for request in upstream.requests() {
            for value in request.header_values("authorization") {
                secrets.push(value.trim_start_matches("Bearer ").to_owned());
            }
        }
        for secret in secrets {
            assert!(
                !output.contains(&secret),
                "{level}: {secret} appears in the output"
            );
        }
    }
}

#[tokio::test]
async fn the_query_is_logged_only_when_asked_for_and_text_lines_are_combined_style() {
    let echo = echo::start().await;
    let dir = temp_dir("access-log-query");
    let log = dir.join("access.log");
    let target = format!("{}/", echo.url());
    let proxy = TestProxy::start(&format!(
        "[access_log]\nto = \"{}\"\nformat = \"text\"\nquery = true\n{}",
        log.display(),
        static_upstream("bigid", &target, "query-test-token", "")
    ))
    .await;
    let response = get(&proxy.url("/bigid/items?page=2&sort=name")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut text = String::new();
    wait_until(Duration::from_secs(5), "a text line", async || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.ends_with('\n')
    })
    .await;
    assert!(
        text.starts_with("127.0.0.1 - - ["),
        "combined: addr, no identity, no client: {text}"
    );
    assert!(
        text.contains("] \"GET /bigid/items?page=2&sort=name HTTP/1.1\" 200 "),
        "{text}"
    );
    assert!(text.contains(" upstream=bigid "), "{text}");
}

/// `$TOKENPROXY_ACCESS_LOG` as `value`; the rest of the environment empty.
struct AccessLogEnv(Option<&'static str>);

impl tokenproxy::config::Sources for AccessLogEnv {
    fn env(&self, name: &str) -> Option<String> {
        (name == tokenproxy::config::ACCESS_LOG_ENV)
            .then(|| self.0.map(str::to_owned))
            .flatten()
    }

    fn file(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

#[test]
fn the_table_or_else_the_environment_turns_the_access_log_on() {
    use tokenproxy::access_log::{AccessLogSettings, Destination, Format};
    let upstream = static_upstream("bigid", "http://127.0.0.1:9/", "t0ken-value", "");
    let parse = |table: &str, env: Option<&'static str>| {
        let text = format!("[store]\npath = \"memory\"\n{table}\n{upstream}");
        tokenproxy::config::parse(&text, "test.toml", &AccessLogEnv(env))
    };
    let settings = |to, format| {
        Some(AccessLogSettings {
            to,
            format,
            query: false,
        })
    };
    let file = || Destination::File("/var/log/tokenproxy.log".into());
    assert_eq!(parse("", None).unwrap().access_log, None, "off by default");
    assert_eq!(
        parse("", Some("stderr")).unwrap().access_log,
        settings(Destination::Stderr, Format::Json)
    );
    assert_eq!(parse("", Some("off")).unwrap().access_log, None);
    assert_eq!(
        parse("", Some("/var/log/tokenproxy.log"))
            .unwrap()
            .access_log,
        settings(file(), Format::Json)
    );
    let table = "[access_log]\nto = \"/var/log/tokenproxy.log\"\nformat = \"text\"";
    assert_eq!(
        parse(table, Some("stderr")).unwrap().access_log,
        settings(file(), Format::Text),
        "the config's own table wins"
    );
    assert_eq!(
        parse("[access_log]", None).unwrap().access_log,
        settings(Destination::Stderr, Format::Json)
    );
    let error = parse("[access_log]\nformat = \"xml\"", None).unwrap_err();
    assert_eq!(
        error.to_string(),
        "test.toml: access_log.format: \"xml\" is not one of \"json\", \"text\""
    );
}
