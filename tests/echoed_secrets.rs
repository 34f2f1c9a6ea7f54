//! A token endpoint that echoes the request it got in its error text (many do, in
//! `error_description`) must not bring a secret back: not in the log at the default level,
//! not in `/-/status`, not on the status page, not in a 503 body. One upstream per
//! secret-bearing kind, each against an endpoint that answers with its whole request.

mod support;

use http::StatusCode;
use http_body_util::BodyExt;
use support::*;
use tokenproxy_sim::{json_response, SimServer};

/// Secrets that look different raw, percent-encoded, form-encoded and in base64.
const CLIENT_SECRET: &str = "cl1ent+s3cret/=&ü x";
const PASSWORD: &str = "pa55 w0rd+/=%";
const REFRESH_TOKEN: &str = "rt.0ld/r3fresh+token==";
const USER_TOKEN: &str = "us3r-t0ken+/=";

/// Answers every request with 400 and the whole request (line, headers, body) as the
/// `error_description`.
async fn echoing_token_endpoint() -> SimServer {
    SimServer::start(|request: http::Request<hyper::body::Incoming>| async move {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let mut echo = format!("{} {}\n", parts.method, parts.uri);
        for (name, value) in &parts.headers {
            echo.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
        }
        echo.push_str(&String::from_utf8_lossy(&body));
        json_response(
            StatusCode::BAD_REQUEST,
            // OAuth style and BigID style (`success`, `message`) at once.
            &serde_json::json!({"error": "invalid_request", "error_description": echo, "success": false, "message": echo}),
        )
    })
    .await
}

fn config(token: &SimServer, echo: &str) -> String {
    let url = format!("{}/token", token.url());
    format!(
        r#"[server]
listen = "127.0.0.1:0"
[store]
path = "memory"

[upstreams.cc_body]
target = "{echo}/"
[upstreams.cc_body.auth]
kind = "client_credentials"
token_url = "{url}"
client_id = "svc"
client_secret = "{CLIENT_SECRET}"

[upstreams.cc_basic]
target = "{echo}/"
[upstreams.cc_basic.auth]
kind = "client_credentials"
token_url = "{url}"
client_id = "svc"
client_secret = "{CLIENT_SECRET}"
client_auth = "basic"

[upstreams.password]
target = "{echo}/"
[upstreams.password.auth]
kind = "password"
token_url = "{url}"
client_id = "svc"
client_secret = "{CLIENT_SECRET}"
username = "alice"
password = "{PASSWORD}"

[upstreams.refresh]
target = "{echo}/"
[upstreams.refresh.auth]
kind = "refresh_token"
token_url = "{url}"
client_id = "svc"
refresh_token = "{REFRESH_TOKEN}"

[upstreams.bigid]
target = "{token}/"
[upstreams.bigid.auth]
kind = "bigid"
user_token = "{USER_TOKEN}"
"#,
        token = token.url()
    )
}

/// Every form the secrets travel in.
fn leaks(text: &str) -> Vec<String> {
    use base64::Engine as _;
    let mut found = Vec::new();
    for secret in [CLIENT_SECRET, PASSWORD, REFRESH_TOKEN, USER_TOKEN] {
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("svc:{form}"));
        for shape in [secret.to_owned(), form, basic] {
            if text.contains(&shape) {
                found.push(shape);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_comes_back_through_a_vendors_error_text() {
    let token = echoing_token_endpoint().await;
    let echo = tokenproxy_sim::echo::start().await;
    let dir = temp_dir("echoed-secrets");
    std::fs::write(dir.join("tokenproxy.toml"), config(&token, &echo.url())).unwrap();
    let daemon = Daemon::start(&dir).await;

    let mut seen = String::new();
    for name in ["cc_body", "cc_basic", "password", "refresh", "bigid"] {
        let response = get(&daemon.url(&format!("/{name}/x"))).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{name}");
        let body = String::from_utf8_lossy(response.body()).into_owned();
        // The vendor's words are still there, less the secrets.
        assert!(body.contains("[redacted]"), "{name}: {body}");
        seen.push_str(&body);
    }
    let status = String::from_utf8_lossy(get(&daemon.url("/-/status")).await.body()).into_owned();
    assert!(status.contains("[redacted]"), "{status}");
    let page = String::from_utf8_lossy(get(&daemon.url("/-/")).await.body()).into_owned();
    seen.push_str(&status);
    seen.push_str(&page);
    seen.push_str(&daemon.output());
    assert_eq!(leaks(&seen), Vec::<String>::new(), "{seen}");
}
