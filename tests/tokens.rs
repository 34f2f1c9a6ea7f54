//! Token kinds, refresh and single flight through the real server against real token
//! servers (`tokenproxy_sim`) on 127.0.0.1.
#![allow(clippy::disallowed_types)] // Real servers on the real clock: deadlines use std time.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::*;
use tokenproxy_sim::oauth::{self, OAuthSimConfig, SimClient, TokenMode};
use tokenproxy_sim::{bigeval, caepe};

const SECRET: &str = "cc-secret-do-not-print";

async fn cc_server(ttl: Duration) -> oauth::OAuthSim {
    client_credentials_sim(SECRET, ttl).await
}

fn cc_config(sim: &oauth::OAuthSim) -> String {
    client_credentials_upstream("api", sim, SECRET)
}

#[tokio::test]
async fn bigeval_preset_gets_a_client_credentials_token_and_uses_it() {
    let sim = bigeval::start("e01b7ba2", SECRET).await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.bigeval]\ntarget = \"{}/\"\n[upstreams.bigeval.auth]\nkind = \"bigeval\"\nclient_id = \"e01b7ba2\"\nclient_secret = \"{SECRET}\"\n",
        sim.url()
    ))
    .await;
    let response = get(&proxy.url("/bigeval/api/v1/testcases?page=1")).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    let answer = json(&response);
    // BiG EVAL's own list: the simulator only gives it for a valid token.
    assert!(answer["items"][0]["testType"].is_string(), "{answer}");
    assert_eq!(sim.token_requests(), 1);
}

#[tokio::test]
async fn caepe_sends_organization_and_refreshes_with_its_refresh_token() {
    let sim = caepe::start("acme").await;
    sim.set_access_ttl(Duration::from_secs(2));
    let (user, password) = (caepe::DEFAULT_USERNAME, caepe::DEFAULT_PASSWORD);
    let proxy = TestProxy::start(&format!(
        r#"
[upstreams.caepe]
target = "{}/"
[upstreams.caepe.auth]
kind = "caepe"
token_url = "{}"
username = "{user}"
password = "{password}"
organization = "acme"
"#,
        sim.url(),
        sim.token_url()
    ))
    .await;
    let first = get(&proxy.url("/caepe/api/v1/applications")).await;
    assert_eq!(first.status(), StatusCode::OK, "{:?}", first.body());
    // At 1.5 s of the 2-second lifetime the refresher uses the refresh token.
    wait_until(
        Duration::from_secs(5),
        "a refresh with the refresh token",
        async || sim.count_for_grant("refresh_token") >= 1,
    )
    .await;
    let later = get(&proxy.url("/caepe/api/v1/applications")).await;
    assert_eq!(later.status(), StatusCode::OK, "{:?}", later.body());
    assert_eq!(sim.count_for_grant("password"), 1);
    assert!(sim.count_for_grant("refresh_token") >= 1);
    assert_eq!(sim.used_refresh_token_reused(), 0);
}

#[tokio::test]
async fn a_refused_refresh_token_falls_back_to_the_password_grant() {
    let sim = caepe::start("acme").await;
    sim.set_access_ttl(Duration::from_secs(1));
    let (user, password) = (caepe::DEFAULT_USERNAME, caepe::DEFAULT_PASSWORD);
    let proxy = TestProxy::start(&format!(
        "[upstreams.caepe]\ntarget = \"{}/\"\n[upstreams.caepe.auth]\nkind = \"caepe\"\ntoken_url = \"{}\"\nusername = \"{user}\"\npassword = \"{password}\"\norganization = \"acme\"\n",
        sim.url(),
        sim.token_url()
    ))
    .await;
    assert_eq!(get(&proxy.url("/caepe/x")).await.status(), StatusCode::OK);
    sim.revoke_all();
    // The refresher's refresh (at 0.75 s of the 1-second lifetime) is refused.
    wait_until(
        Duration::from_secs(5),
        "a second password grant",
        async || sim.count_for_grant("password") >= 2,
    )
    .await;
    let response = get(&proxy.url("/caepe/x")).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    assert!(
        sim.count_for_grant("password") >= 2,
        "{:?}",
        sim.grant_counts()
    );
}

/// Two refresh cycles through the real server; the pace over many cycles is the unit test
/// `two_second_tokens_under_steady_requests_are_refreshed_before_expiry` (paused time).
#[tokio::test]
async fn two_second_tokens_are_refreshed_before_expiry_with_no_failed_request() {
    let sim = cc_server(Duration::from_secs(2)).await;
    let proxy = Arc::new(TestProxy::start(&cc_config(&sim)).await);
    wait_until_ready(&proxy).await;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let proxy = Arc::clone(&proxy);
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while started.elapsed() < Duration::from_secs(4) {
                statuses.push(get(&proxy.url("/api/resource")).await.status());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        }));
    }
    let mut total = 0;
    for worker in workers {
        let statuses = worker.await.unwrap();
        total += statuses.len();
        let failed: Vec<_> = statuses.iter().filter(|s| **s != StatusCode::OK).collect();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
    }
    assert!(total > 80, "only {total} requests were made");
    // The refresher stayed ahead: no request ever waited for a token request.
    let status = json(&get(&proxy.url("/-/status")).await);
    assert_eq!(
        status["upstreams"][0]["token"]["requests_waited"], 0,
        "{status}"
    );
    // 4 s of 2-second tokens refreshed at 1.5 s: the first and two or three refreshes.
    let token_requests = sim.token_requests();
    assert!(
        (3..=5).contains(&token_requests),
        "{token_requests} token requests"
    );
}

async fn wait_until_ready(proxy: &TestProxy) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&proxy.url("/-/ready")).await.status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "not ready after 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_hundred_concurrent_requests_without_a_token_cause_one_token_request() {
    let sim = cc_server(Duration::from_secs(300)).await;
    // Slow token endpoint: all 100 requests arrive while the first token request is out.
    sim.set_mode(TokenMode::Delay(Duration::from_millis(500)));
    let proxy = Arc::new(TestProxy::start(&cc_config(&sim)).await);
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let proxy = Arc::clone(&proxy);
            tokio::spawn(async move { get(&proxy.url("/api/x")).await.status() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(sim.token_requests(), 1);
}

#[tokio::test]
async fn an_oauth_error_is_a_503_naming_the_upstream_and_the_error_but_not_the_secret() {
    let sim = cc_server(Duration::from_secs(300)).await;
    sim.set_mode(TokenMode::OAuthError {
        status: 401,
        error: "invalid_client".into(),
        description: "Client authentication failed".into(),
    });
    let proxy = TestProxy::start(&cc_config(&sim)).await;
    let response = get(&proxy.url("/api/x")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem = json(&response);
    assert_eq!(problem["upstream"], "api");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("invalid_client"), "{detail}");
    assert!(detail.contains("Client authentication failed"), "{detail}");
    assert!(!String::from_utf8_lossy(response.body()).contains(SECRET));
}

#[tokio::test]
async fn garbage_from_the_token_endpoint_is_a_503_and_the_proxy_recovers() {
    let sim = cc_server(Duration::from_secs(300)).await;
    let proxy = TestProxy::start(&cc_config(&sim)).await;
    for mode in [TokenMode::Html, TokenMode::InvalidJson, TokenMode::Down] {
        sim.set_mode(mode.clone());
        let fresh = TestProxy::start(&cc_config(&sim)).await;
        let response = get(&fresh.url("/api/x")).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "for {mode:?}"
        );
        let problem = json(&response);
        assert_eq!(problem["upstream"], "api", "for {mode:?}");
        assert!(
            !problem["detail"].as_str().unwrap().contains("<html"),
            "{problem}"
        );
        sim.set_mode(TokenMode::Normal);
        // None asked for a `Retry-After`: it recovers after the first backoff (0.5 s).
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(&fresh.url("/api/x")).await.status() != StatusCode::OK {
            assert!(Instant::now() < deadline, "no recovery after {mode:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_server_error_with_retry_after_is_passed_on() {
    let sim = cc_server(Duration::from_secs(300)).await;
    sim.set_mode(TokenMode::ServerError);
    let proxy = TestProxy::start(&cc_config(&sim)).await;
    let response = get(&proxy.url("/api/x")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "3");
}

#[tokio::test]
async fn a_valid_token_is_used_without_waiting_for_the_token_endpoint() {
    let sim = cc_server(Duration::from_secs(300)).await;
    let proxy = TestProxy::start(&cc_config(&sim)).await;
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    // Token endpoint now hangs; requests must not notice.
    sim.set_mode(TokenMode::Delay(Duration::from_secs(30)));
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(sim.token_requests(), 1);
}

#[tokio::test]
async fn ready_reflects_whether_every_upstream_has_a_token() {
    let sim = cc_server(Duration::from_secs(300)).await;
    sim.set_mode(TokenMode::OAuthError {
        status: 400,
        error: "invalid_scope".into(),
        description: "no".into(),
    });
    let proxy = TestProxy::start(&cc_config(&sim)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        get(&proxy.url("/-/ready")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let status = json(&get(&proxy.url("/-/status")).await);
    // Just failed: the token endpoint is left alone for a while.
    assert_eq!(status["upstreams"][0]["token"]["state"], "backing_off");
    assert!(status["upstreams"][0]["token"]["last_error"]
        .as_str()
        .unwrap()
        .contains("invalid_scope"));
    sim.set_mode(TokenMode::Normal);
    // Recovery comes by itself once the backoff has passed.
    wait_until_ready(&proxy).await;
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    assert_eq!(get(&proxy.url("/-/health")).await.status(), StatusCode::OK);
    let status = get(&proxy.url("/-/status")).await;
    assert!(!String::from_utf8_lossy(status.body()).contains(SECRET));
}

#[tokio::test]
async fn basic_client_authentication_is_supported() {
    let sim = oauth::start(OAuthSimConfig {
        token_path: "/token".into(),
        clients: vec![SimClient {
            id: "id with space".into(),
            secret: Some("s:e/c+ret".into()),
        }],
        allow_client_credentials: true,
        client_auth: oauth::ClientAuth::Basic,
        access_ttl: Duration::from_secs(60),
        ..OAuthSimConfig::default()
    })
    .await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.api]\ntarget = \"{}/\"\n[upstreams.api.auth]\nkind = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = \"id with space\"\nclient_secret = \"s:e/c+ret\"\nclient_auth = \"basic\"\n",
        sim.url(),
        sim.token_url()
    ))
    .await;
    let response = send(Request::get(proxy.url("/api/x")).body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
}
