//! tokenproxy's generic kinds against a real, independent OAuth server: the certified
//! `oidc-provider` (npm), started on 127.0.0.1 by `tests/support/oidc.rs`.
#![allow(clippy::disallowed_types)] // Real servers on the real clock: deadlines use std time.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::oidc::{post_form, query_param, OidcProvider};
use support::*;
use tokenproxy_sim::echo;

async fn wait_until_ready(proxy: &TestProxy, within: Duration) {
    let deadline = Instant::now() + within;
    while get(&proxy.url("/-/ready")).await.status() != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            json(&get(&proxy.url("/-/status")).await)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn bearer(response: &http::Response<bytes::Bytes>) -> String {
    let report = json(response);
    echoed(&report, "authorization")
        .first()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn client_credentials_with_body_and_basic_client_authentication() {
    let oidc = OidcProvider::start().await;
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&format!(
        r#"
[upstreams.post]
target = "{echo}/"
[upstreams.post.auth]
kind = "client_credentials"
token_url = "{token}"
client_id = "cc-client"
client_secret = "cc-secret"
scope = "api:read"

[upstreams.basic]
target = "{echo}/"
[upstreams.basic.auth]
kind = "client_credentials"
token_url = "{token}"
client_id = "cc-basic"
client_secret = "cc-basic-secret"
client_auth = "basic"
"#,
        echo = upstream.url(),
        token = oidc.token_url()
    ))
    .await;
    for name in ["post", "basic"] {
        let response = get(&proxy.url(&format!("/{name}/resource"))).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert!(bearer(&response).starts_with("Bearer "), "{name}");
    }
    let stats = oidc.stats().await;
    assert_eq!(stats["token_requests"]["client_credentials"], 2, "{stats}");
    assert_eq!(stats["token_errors"], serde_json::json!({}), "{stats}");
}

/// Upstream `dev`: a device login at oidc-provider's public `device-client`; `extra` lines
/// follow its auth table.
fn device_upstream(oidc: &OidcProvider, echo: &str, extra: &str) -> String {
    format!(
        "[upstreams.dev]\ntarget = \"{echo}/\"\n[upstreams.dev.auth]\nkind = \"device_code\"\n\
         device_authorization_url = \"{}\"\ntoken_url = \"{}\"\nclient_id = \"device-client\"\n\
         scope = \"openid offline_access api:read\"\n{extra}",
        oidc.device_authorization_url(),
        oidc.token_url()
    )
}

#[tokio::test]
async fn device_code_login_then_rotating_refresh() {
    let oidc = OidcProvider::start_with(&[("ACCESS_TTL", "2")]).await;
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&device_upstream(&oidc, &upstream.url(), "")).await;

    let before = get(&proxy.url("/dev/x")).await;
    assert_eq!(before.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(json(&before)["detail"]
        .as_str()
        .unwrap()
        .contains("/-/upstreams/dev/login"));
    assert_eq!(
        json(&get(&proxy.url("/-/status")).await)["upstreams"][0]["token"]["state"],
        "needs_login"
    );

    let login = json(&post_action(&proxy.url("/-/upstreams/dev/login")).await);
    assert_eq!(login["method"], "device_code", "{login}");
    let user_code = login["user_code"].as_str().unwrap();
    assert!(login["verification_uri"]
        .as_str()
        .unwrap()
        .starts_with(oidc.issuer()));
    oidc.approve_device(user_code).await;
    wait_until_ready(&proxy, Duration::from_secs(15)).await;
    let first = bearer(&get(&proxy.url("/dev/x")).await);
    assert!(first.starts_with("Bearer "));

    // 2-second tokens: the refresher rotates the refresh token a few times.
    wait_until(Duration::from_secs(10), "two refreshes", async || {
        oidc.stats().await["token_requests"]["refresh_token"]
            .as_u64()
            .is_some_and(|refreshes| refreshes >= 2)
    })
    .await;
    let later = get(&proxy.url("/dev/x")).await;
    assert_eq!(later.status(), StatusCode::OK);
    assert_ne!(bearer(&later), first);
    let stats = oidc.stats().await;
    assert!(
        stats["token_requests"]["refresh_token"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    // oidc-provider revokes the whole grant if a rotated refresh token is ever reused.
    assert_eq!(stats["invalid_grant"], 0, "{stats}");
}

/// Gets a refresh token the way a user would outside tokenproxy: a device login by hand.
async fn refresh_token_by_hand(oidc: &OidcProvider) -> String {
    let (status, device) = post_form(
        oidc.device_authorization_url(),
        &[
            ("client_id", "device-client"),
            ("scope", "openid offline_access api:read"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{device}");
    oidc.approve_device(device["user_code"].as_str().unwrap())
        .await;
    let (status, tokens) = post_form(
        oidc.token_url(),
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device["device_code"].as_str().unwrap()),
            ("client_id", "device-client"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    tokens["refresh_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_configured_refresh_token_is_used_and_rotated() {
    let oidc = OidcProvider::start_with(&[("ACCESS_TTL", "2")]).await;
    let refresh_token = refresh_token_by_hand(&oidc).await;
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&format!(
        r#"
[upstreams.rt]
target = "{echo}/"
[upstreams.rt.auth]
kind = "refresh_token"
token_url = "{token}"
client_id = "device-client"
refresh_token = "{refresh_token}"
"#,
        echo = upstream.url(),
        token = oidc.token_url()
    ))
    .await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        assert_eq!(get(&proxy.url("/rt/x")).await.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = oidc.stats().await;
    assert!(
        stats["token_requests"]["refresh_token"].as_u64().unwrap() >= 3,
        "{stats}"
    );
    assert_eq!(stats["invalid_grant"], 0, "{stats}");
}

const CODE_CONFIG: &str = r#"
[upstreams.interop]
target = "ECHO/"
[upstreams.interop.auth]
kind = "authorization_code"
authorize_url = "AUTHORIZE"
token_url = "TOKEN"
client_id = "code-client"
scope = "openid offline_access api:read"
"#;

#[tokio::test]
async fn authorization_code_with_pkce_through_the_callback() {
    let oidc = OidcProvider::start_with(&[("ACCESS_TTL", "2")]).await;
    let upstream = echo::start().await;
    let proxy = TestProxy::start(
        &CODE_CONFIG
            .replace("ECHO", &upstream.url())
            .replace("AUTHORIZE", oidc.authorization_url())
            .replace("TOKEN", oidc.token_url()),
    )
    .await;
    let login = json(&post_action(&proxy.url("/-/upstreams/interop/login")).await);
    assert_eq!(login["method"], "browser", "{login}");
    let authorize_url = login["authorize_url"].as_str().unwrap();
    assert_eq!(
        query_param(authorize_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let expected_callback = format!("http://{}/-/callback/interop", proxy.addr());
    assert_eq!(
        query_param(authorize_url, "redirect_uri").as_deref(),
        Some(expected_callback.as_str())
    );

    let callback = oidc.browse_to_redirect(authorize_url).await;
    assert!(callback.starts_with(&expected_callback), "{callback}");
    assert!(query_param(&callback, "code").is_some(), "{callback}");

    // The vendor's redirect is a navigation from another site, as a browser marks it: the
    // one-time state is the callback's protection, not the origin check.
    let navigated = |url: &str| {
        send(
            http::Request::get(url)
                .header("sec-fetch-site", "cross-site")
                .header("sec-fetch-mode", "navigate")
                .body(empty())
                .unwrap(),
        )
    };
    // A forged callback with another state is refused and does not cancel the login.
    let forged = navigated(&format!("{expected_callback}?code=forged&state=forged")).await;
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);

    let landed = navigated(&callback).await;
    assert_eq!(
        landed.status(),
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(landed.body())
    );
    assert!(String::from_utf8_lossy(landed.body()).contains("Logged in"));
    // Its state is spent: the same callback again is refused.
    assert_eq!(navigated(&callback).await.status(), StatusCode::BAD_REQUEST);
    let response = get(&proxy.url("/interop/x")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let first = bearer(&response);
    assert!(first.starts_with("Bearer "));

    wait_until(Duration::from_secs(10), "a refreshed token", async || {
        bearer(&get(&proxy.url("/interop/x")).await) != first
    })
    .await;
    let later = get(&proxy.url("/interop/x")).await;
    assert_eq!(later.status(), StatusCode::OK);
    assert_ne!(bearer(&later), first, "the token was refreshed");
    let stats = oidc.stats().await;
    assert_eq!(stats["token_requests"]["authorization_code"], 1, "{stats}");
    assert!(
        stats["token_requests"]["refresh_token"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert_eq!(stats["invalid_grant"], 0, "{stats}");

    // The code was used once; replaying the callback does nothing.
    assert_eq!(get(&callback).await.status(), StatusCode::BAD_REQUEST);
}

/// RFC 7662 introspection at oidc-provider: whether the server still takes `token`.
async fn active(oidc: &OidcProvider, token: &str, client: &[(&str, &str)]) -> bool {
    let endpoint = oidc.discovery()["introspection_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut form = vec![("token", token)];
    form.extend_from_slice(client);
    let (status, answer) = post_form(&endpoint, &form, None).await;
    assert_eq!(status, 200, "{answer}");
    answer["active"] == true
}

#[tokio::test]
async fn logout_revokes_at_the_rfc_7009_endpoint_and_says_so_only_then() {
    let oidc = OidcProvider::start().await;
    let upstream = echo::start().await;
    let revocation = oidc.discovery()["revocation_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let proxy = TestProxy::start(&format!(
        r#"
[upstreams.revoking]
target = "{echo}/"
[upstreams.revoking.auth]
kind = "client_credentials"
token_url = "{token}"
client_id = "cc-client"
client_secret = "cc-secret"
scope = "api:read"
revocation_url = "{revocation}"

[upstreams.plain]
target = "{echo}/"
[upstreams.plain.auth]
kind = "client_credentials"
token_url = "{token}"
client_id = "cc-client"
client_secret = "cc-secret"
scope = "api:read"
"#,
        echo = upstream.url(),
        token = oidc.token_url()
    ))
    .await;
    let client = [("client_id", "cc-client"), ("client_secret", "cc-secret")];
    for (name, revokes) in [("revoking", true), ("plain", false)] {
        let sent = bearer(&get(&proxy.url(&format!("/{name}/x"))).await);
        let token = sent.strip_prefix("Bearer ").unwrap().to_owned();
        assert!(active(&oidc, &token, &client).await, "{name}");
        let logout = json(&post_action(&proxy.url(&format!("/-/upstreams/{name}/logout"))).await);
        assert_eq!(logout["revoked"], revokes, "{name}: {logout}");
        assert_eq!(
            logout["revocation_error"],
            serde_json::Value::Null,
            "{logout}"
        );
        // The server agrees with what logout said.
        assert_eq!(active(&oidc, &token, &client).await, !revokes, "{name}");
        assert_eq!(logout["token"]["state"], "logged_out", "{logout}");
    }
}

#[tokio::test]
async fn logout_revokes_the_refresh_token_of_a_device_login() {
    let oidc = OidcProvider::start().await;
    let store = temp_dir("interop-revoke").join("tokens.json");
    let upstream = echo::start().await;
    let extra = format!(
        "revocation_url = \"{}\"\n[store]\npath = \"{}\"\n",
        oidc.discovery()["revocation_endpoint"].as_str().unwrap(),
        store.display()
    );
    let proxy = TestProxy::start(&device_upstream(&oidc, &upstream.url(), &extra)).await;
    let login = json(&post_action(&proxy.url("/-/upstreams/dev/login")).await);
    oidc.approve_device(login["user_code"].as_str().unwrap())
        .await;
    wait_until_ready(&proxy, Duration::from_secs(15)).await;
    let sent = bearer(&get(&proxy.url("/dev/x")).await);
    let token = sent.strip_prefix("Bearer ").unwrap().to_owned();
    let client = [("client_id", "device-client")];
    assert!(active(&oidc, &token, &client).await);

    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    let refresh_token = stored["upstreams"]["dev"]["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh token stored: {stored}"))
        .to_owned();
    assert!(active(&oidc, &refresh_token, &client).await);

    let logout = json(&post_action(&proxy.url("/-/upstreams/dev/logout")).await);
    assert_eq!(logout["revoked"], true, "{logout}");
    assert_eq!(logout["token"]["state"], "needs_login", "{logout}");
    assert!(!active(&oidc, &token, &client).await);
    // The refresh token is dead too: nobody can mint new tokens from the old grant.
    assert!(!active(&oidc, &refresh_token, &client).await);
}

/// Chromium, as a person: the status page's "Log in" opens oidc-provider in a new tab, which
/// signs in and redirects back to the callback (a navigation Chromium marks as from another
/// site); the row turns valid without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_log_in_on_the_status_page_completes_a_pkce_login() {
    let oidc = OidcProvider::start().await;
    let upstream = echo::start().await;
    let proxy = TestProxy::start(
        &CODE_CONFIG
            .replace("ECHO", &upstream.url())
            .replace("AUTHORIZE", oidc.authorization_url())
            .replace("TOKEN", oidc.token_url()),
    )
    .await;
    let dir = temp_dir("browser-login");
    let mut node = std::process::Command::new("node");
    node.current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("tests/interop/browser_login.mjs")
        .arg(proxy.url("/-/"))
        .arg("interop");
    let (status, out, err) =
        tokio::task::spawn_blocking(move || run_bounded(node, &dir, Duration::from_secs(90)))
            .await
            .unwrap();
    assert!(status.is_some_and(|s| s.success()), "{err}\n{out}");
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(seen["callback_status"], 200, "{seen}");
    assert_eq!(seen["callback_heading"], "Logged in to interop", "{seen}");
    assert_eq!(get(&proxy.url("/interop/x")).await.status(), StatusCode::OK);
}
