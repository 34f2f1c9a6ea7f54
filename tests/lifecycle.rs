//! The token lifecycle as vendors really answer: a 401 during a token-endpoint outage,
//! `slow_down` and `authorization_pending` with Auth0's status codes, codes that expire or
//! are denied, logout that says what happened at the vendor, states after logout, and
//! error texts a person can act on. Real proxy, simulators on 127.0.0.1.
#![allow(clippy::disallowed_types)] // Real servers on the real clock: deadlines use std time.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tokenproxy_sim::biganimal::{self, BigAnimalSimConfig};
use tokenproxy_sim::oauth::TokenMode;
use tokenproxy_sim::{json_response, SimServer};

const SECRET: &str = "lifecycle-secret";

async fn status_of(proxy: &TestProxy, name: &str) -> serde_json::Value {
    let status = json(&get(&proxy.url("/-/status")).await);
    status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|upstream| upstream["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no upstream {name} in {status}"))
}

async fn wait_for_state(
    proxy: &TestProxy,
    name: &str,
    state: &str,
    within: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let upstream = status_of(proxy, name).await;
        if upstream["token"]["state"] == state {
            return upstream;
        }
        assert!(Instant::now() < deadline, "never {state}: {upstream}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------ a 401 during an outage

#[tokio::test]
async fn a_refused_token_is_never_sent_again_and_token_requests_back_off() {
    let sim = client_credentials_sim(SECRET, Duration::from_secs(3600)).await;
    let proxy = TestProxy::start(&client_credentials_upstream("api", &sim, SECRET)).await;
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    let token_requests = sim.token_requests();
    let api_requests = sim.api_requests();

    // The vendor stops taking the token, and its token endpoint goes down.
    sim.revoke_all();
    sim.set_mode(TokenMode::Down);
    let started = Instant::now();
    for n in 0..20u32 {
        tokio::time::sleep_until((started + Duration::from_millis(100) * n).into()).await;
        let response = get(&proxy.url("/api/x")).await;
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "request {n}"
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(
            response.headers().contains_key("retry-after"),
            "request {n} has no Retry-After"
        );
    }
    // 20 requests in 2 s: one vendor call (the first 401), and token requests at the
    // backoff's pace (at about 0, 0.5 and 1.5 s, with ±20 % jitter), not one per request.
    let vendor_calls = sim.api_requests() - api_requests;
    let token_calls = sim.token_requests() - token_requests;
    println!("20 requests in 2 s: {vendor_calls} vendor calls, {token_calls} token requests");
    assert_eq!(vendor_calls, 1, "the refused token was sent again");
    assert!(
        (2..=4).contains(&token_calls),
        "{token_calls} token requests in 2 s"
    );
    let upstream = status_of(&proxy, "api").await;
    assert_eq!(upstream["token"]["state"], "backing_off", "{upstream}");

    // The endpoint comes back: the proxy recovers by itself, within the backoff.
    sim.set_mode(TokenMode::Normal);
    wait_until(Duration::from_secs(12), "a recovery", async || {
        get(&proxy.url("/api/x")).await.status() == StatusCode::OK
    })
    .await;
}

// ------------------------------------------------------------ device polls as Auth0 answers

fn biganimal_config(sim: &biganimal::BigAnimalSim) -> String {
    format!(
        "[upstreams.biganimal]\ntarget = \"{api}/\"\n[upstreams.biganimal.auth]\nkind = \"biganimal\"\nprovider_url = \"{provider}\"\n",
        api = sim.api_url(),
        provider = sim.provider_url()
    )
}

/// Starts a device login and approves its code at once, as a quick user would.
async fn log_in_approved(proxy: &TestProxy, sim: &biganimal::BigAnimalSim) {
    let login = json(&post_action(&proxy.url("/-/upstreams/biganimal/login")).await);
    assert!(sim.approve(login["user_code"].as_str().unwrap()), "{login}");
}

fn slowed_down_once(slow_down_status: StatusCode) -> BigAnimalSimConfig {
    BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        slow_down_status,
        slow_down_first_polls: 1,
        ..BigAnimalSimConfig::default()
    }
}

/// Through the real server, once: the login completes 1 + 5 s after a `slow_down`. The
/// schedule itself (every status, later polls, expiry) is the unit tests of
/// `providers/device.rs` on a paused clock.
#[tokio::test]
async fn slow_down_as_http_429_like_auth0_slows_the_polls_and_the_login_completes() {
    let sim = biganimal::start(slowed_down_once(StatusCode::TOO_MANY_REQUESTS)).await;
    let proxy = TestProxy::start(&biganimal_config(&sim)).await;
    log_in_approved(&proxy, &sim).await;
    wait_for_state(&proxy, "biganimal", "valid", Duration::from_secs(15)).await;
    let polls = sim.poll_times();
    assert_eq!(polls.len(), 2, "{polls:?}");
    assert_eq!(sim.slow_downs_sent(), 1);
    // RFC 8628 3.5: after slow_down the interval is 1 + 5 seconds.
    let gap = polls[1] - polls[0];
    assert!(gap >= Duration::from_millis(5950), "{gap:?}");
    assert_eq!(
        get(&proxy.url("/biganimal/clusters")).await.status(),
        StatusCode::OK
    );
}

/// The code is approved at once, so a poll 1 s after the `slow_down` (the interval, or an
/// outage's retry) would complete the login: none comes for 2 s.
#[tokio::test]
async fn slow_down_as_http_400_like_rfc_8628_slows_the_polls() {
    let sim = biganimal::start(slowed_down_once(StatusCode::BAD_REQUEST)).await;
    let proxy = TestProxy::start(&biganimal_config(&sim)).await;
    log_in_approved(&proxy, &sim).await;
    wait_until(Duration::from_secs(5), "a slow_down", async || {
        sim.slow_downs_sent() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sim.poll_count(), 1, "{:?}", sim.poll_times());
    let upstream = status_of(&proxy, "biganimal").await;
    assert_eq!(upstream["token"]["state"], "needs_login", "{upstream}");
    assert!(!upstream["pending_login"].is_null(), "{upstream}");
}

#[tokio::test]
async fn authorization_pending_as_http_429_keeps_polling() {
    let sim = biganimal::start(BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        pending_status: StatusCode::TOO_MANY_REQUESTS,
        ..BigAnimalSimConfig::default()
    })
    .await;
    let proxy = TestProxy::start(&biganimal_config(&sim)).await;
    let login = json(&post_action(&proxy.url("/-/upstreams/biganimal/login")).await);
    // Approved after the first (pending) poll: only a poll after it can complete the login.
    wait_until(Duration::from_secs(5), "a first poll", async || {
        sim.poll_count() == 1
    })
    .await;
    assert!(sim.approve(login["user_code"].as_str().unwrap()));
    wait_for_state(&proxy, "biganimal", "valid", Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_expired_code_says_so_and_how_to_start_again() {
    let sim = biganimal::start(BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        device_code_ttl: Duration::from_secs(2),
        ..BigAnimalSimConfig::default()
    })
    .await;
    let proxy = TestProxy::start(&biganimal_config(&sim)).await;
    post_action(&proxy.url("/-/upstreams/biganimal/login")).await;
    let deadline = Instant::now() + Duration::from_secs(6);
    let upstream = loop {
        let upstream = status_of(&proxy, "biganimal").await;
        if upstream["token"]["failures"] == 1 {
            break upstream;
        }
        assert!(Instant::now() < deadline, "no outcome: {upstream}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(upstream["token"]["state"], "needs_login", "{upstream}");
    let error = upstream["token"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("expired before anyone approved it")
            && error.contains("`tokenproxy login biganimal`"),
        "{upstream}"
    );
    assert!(upstream["pending_login"].is_null(), "{upstream}");
}

// ------------------------------------------------------------ the CLI's words

/// `tokenproxy login biganimal` with no daemon; `decide` acts on the printed code.
async fn cli_login(
    sim: &biganimal::BigAnimalSim,
    name: &str,
    decide: impl Fn(&str),
) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
    let dir = temp_dir(name);
    std::fs::write(
        dir.join("tokenproxy.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"memory\"\n{}",
            biganimal_config(sim)
        ),
    )
    .unwrap();
    let (mut login, stdout, stderr, code) = start_device_login(&dir, "biganimal").await;
    decide(&code);
    let exit = tokio::task::spawn_blocking(move || login.wait().unwrap())
        .await
        .unwrap();
    let stdout = stdout.lock().unwrap().clone();
    let stderr = stderr.lock().unwrap().clone();
    (exit, stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_command_reports_an_expired_code_as_expired() {
    let sim = biganimal::start(BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        device_code_ttl: Duration::from_secs(2),
        ..BigAnimalSimConfig::default()
    })
    .await;
    let (exit, stdout, stderr) = cli_login(&sim, "login-expired", |_| {}).await;
    assert_eq!(exit.code(), Some(1), "{stdout:?} {stderr:?}");
    let said = stderr.join("\n");
    assert!(
        said.contains("expired before anyone approved it")
            && said.contains("`tokenproxy login biganimal`")
            && !said.contains("timed out"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_command_reports_a_denied_login_as_denied() {
    let sim = biganimal::start(BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        ..BigAnimalSimConfig::default()
    })
    .await;
    let (exit, stdout, stderr) = cli_login(&sim, "login-denied", |code| {
        assert!(sim.deny(code));
    })
    .await;
    assert_eq!(exit.code(), Some(1), "{stdout:?} {stderr:?}");
    assert!(
        stderr
            .join("\n")
            .contains("the login was denied at the vendor"),
        "{stderr:?}"
    );
}

// ------------------------------------------------------------ logout and the states after it

#[tokio::test]
async fn logout_without_a_revocation_endpoint_does_not_claim_revocation() {
    let sim = client_credentials_sim(SECRET, Duration::from_secs(600)).await;
    let proxy = TestProxy::start(&client_credentials_upstream("api", &sim, SECRET)).await;
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    let logout = json(&post_action(&proxy.url("/-/upstreams/api/logout")).await);
    assert_eq!(logout["revoked"], false, "{logout}");
    assert_eq!(logout["had_token"], true, "{logout}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until = logout["still_valid_until_unix"].as_u64().unwrap();
    assert!(until > now + 500 && until <= now + 600, "{logout}");
    // The vendor still takes the forgotten token: not revoked, as reported.
    assert_eq!(sim.valid_access_tokens(), 1);
}

#[tokio::test]
async fn after_logout_a_kind_without_a_person_is_logged_out_and_the_next_request_gets_a_token() {
    let sim = client_credentials_sim(SECRET, Duration::from_secs(600)).await;
    let proxy = TestProxy::start(&client_credentials_upstream("api", &sim, SECRET)).await;
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    let logout = json(&post_action(&proxy.url("/-/upstreams/api/logout")).await);
    assert_eq!(logout["token"]["state"], "logged_out", "{logout}");
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    let upstream = status_of(&proxy, "api").await;
    assert_eq!(upstream["token"]["state"], "valid", "{upstream}");
}

#[tokio::test]
async fn after_logout_a_device_kind_needs_a_login() {
    let sim = biganimal::start(BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        ..BigAnimalSimConfig::default()
    })
    .await;
    let proxy = TestProxy::start(&biganimal_config(&sim)).await;
    log_in_approved(&proxy, &sim).await;
    wait_for_state(&proxy, "biganimal", "valid", Duration::from_secs(5)).await;
    let logout = json(&post_action(&proxy.url("/-/upstreams/biganimal/logout")).await);
    assert_eq!(logout["token"]["state"], "needs_login", "{logout}");
    assert_eq!(logout["revoked"], false, "{logout}");
}

#[tokio::test]
async fn a_static_token_offers_no_refresh_login_or_logout() {
    let upstream = tokenproxy_sim::echo::start().await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.fixed]\ntarget = \"{}/\"\n[upstreams.fixed.auth]\nkind = \"static\"\ntoken = \"fixed-token\"\n",
        upstream.url()
    ))
    .await;
    let status = status_of(&proxy, "fixed").await;
    assert_eq!(status["actions"], serde_json::json!([]), "{status}");
    for action in ["refresh", "login", "logout"] {
        let response = post_action(&proxy.url(&format!("/-/upstreams/fixed/{action}"))).await;
        assert_eq!(response.status(), StatusCode::CONFLICT, "{action}");
        let problem = json(&response);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("fixed token from its config"),
            "{problem}"
        );
    }
    // The client asked for what a static token does not do.
    let refused = json(&post_action(&proxy.url("/-/upstreams/fixed/logout")).await);
    assert_eq!(refused["fault"], "client", "{refused}");
    // Still sent as before.
    assert_eq!(get(&proxy.url("/fixed/x")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_refused_client_shows_invalid_credentials_not_needs_login() {
    let sim = client_credentials_sim(SECRET, Duration::from_secs(600)).await;
    sim.set_mode(TokenMode::OAuthError {
        status: 401,
        error: "invalid_client".into(),
        description: "Client authentication failed".into(),
    });
    let proxy = TestProxy::start(&client_credentials_upstream("api", &sim, SECRET)).await;
    let response = get(&proxy.url("/api/x")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let upstream = status_of(&proxy, "api").await;
    assert_eq!(
        upstream["token"]["state"], "invalid_credentials",
        "{upstream}"
    );
    let error = upstream["token"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("invalid_client") && error.contains("upstreams.api.auth"),
        "{error}"
    );
}

// ------------------------------------------------------------ error texts

#[tokio::test]
async fn an_unreachable_token_endpoint_is_named_with_the_operating_systems_words() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let upstream = tokenproxy_sim::echo::start().await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.api]\ntarget = \"{}/\"\n[upstreams.api.auth]\nkind = \"client_credentials\"\n\
         token_url = \"http://user:pw@127.0.0.1:{port}/oauth/token?tenant=t1\"\nclient_id = \"svc\"\nclient_secret = \"{SECRET}\"\n",
        upstream.url()
    ))
    .await;
    let problem = json(&get(&proxy.url("/api/x")).await);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "token endpoint http://127.0.0.1:{port}/oauth/token unreachable: connection refused"
        )),
        "{detail}"
    );
    assert!(
        !detail.contains("pw") && !detail.contains("tenant"),
        "{detail}"
    );
    assert_eq!(problem["fault"], "token_endpoint", "{problem}");
}

#[tokio::test]
async fn a_200_answer_without_access_token_says_so() {
    let token_endpoint = SimServer::start(|_request| async {
        json_response(
            StatusCode::OK,
            &serde_json::json!({"token_type": "Bearer", "expires_in": 60}),
        )
    })
    .await;
    let upstream = tokenproxy_sim::echo::start().await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.api]\ntarget = \"{}/\"\n[upstreams.api.auth]\nkind = \"client_credentials\"\n\
         token_url = \"{}/token\"\nclient_id = \"svc\"\nclient_secret = \"{SECRET}\"\n",
        upstream.url(),
        token_endpoint.url()
    ))
    .await;
    let problem = json(&get(&proxy.url("/api/x")).await);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("no access_token in the token endpoint's answer"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_prints_the_status_code_or_the_connection_error() {
    let dir = temp_dir("health-words");
    let unhealthy = SimServer::start(|_request| async {
        json_response(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({}))
    })
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    for (url, expected) in [
        (format!("{}/-/health", unhealthy.url()), "answered HTTP 503"),
        (
            format!("http://127.0.0.1:{port}/-/health"),
            "connection refused",
        ),
    ] {
        let output = tokio::task::spawn_blocking({
            let mut command = tokenproxy(&dir);
            command.args(["health", "--url", &url]);
            move || command.output().unwrap()
        })
        .await
        .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{url}: {stderr}");
    }
}
