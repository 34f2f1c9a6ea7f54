//! Each vendor through the real proxy against its simulator (`tokenproxy_sim`): the right
//! header shape arrives, and expiry, refresh, rotation and re-exchange happen.
#![allow(clippy::disallowed_types)] // Real servers on the real clock: deadlines use std time.

mod support;

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::*;
use tokenproxy_sim::amm::{self, AmmSimConfig};
use tokenproxy_sim::biganimal::{self, BigAnimalSimConfig};
use tokenproxy_sim::bigid::{self, BigIdMode, BigIdSimConfig};

async fn wait_for_state(proxy: &TestProxy, state: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let status = json(&get(&proxy.url("/-/status")).await);
        if status["upstreams"][0]["token"]["state"] == state {
            return status;
        }
        assert!(Instant::now() < deadline, "never {state}: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_text(proxy: &TestProxy) -> String {
    String::from_utf8_lossy(get(&proxy.url("/-/status")).await.body()).into_owned()
}

// ---------------------------------------------------------------- BigAnimal

fn biganimal_config(sim: &biganimal::BigAnimalSim) -> String {
    format!(
        "[upstreams.biganimal]\ntarget = \"{api}/\"\n[upstreams.biganimal.auth]\nkind = \"biganimal\"\nprovider_url = \"{provider}\"\n",
        api = sim.api_url(),
        provider = sim.provider_url()
    )
}

#[tokio::test]
async fn biganimal_device_login_exchange_and_rotating_refresh() {
    let sim = biganimal::start(BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        raw_ttl: Duration::from_secs(2),
        ..BigAnimalSimConfig::default()
    })
    .await;
    let proxy = TestProxy::start(&biganimal_config(&sim)).await;

    let before = get(&proxy.url("/biganimal/clusters")).await;
    assert_eq!(before.status(), StatusCode::SERVICE_UNAVAILABLE);
    let login = json(&post_action(&proxy.url("/-/upstreams/biganimal/login")).await);
    assert_eq!(login["method"], "device_code", "{login}");
    let user_code = login["user_code"].as_str().unwrap();
    assert!(login["verification_uri"]
        .as_str()
        .unwrap()
        .ends_with("/activate"));
    // The poller keeps polling while the user has not approved.
    wait_until(Duration::from_secs(5), "two polls", async || {
        sim.poll_count() >= 2
    })
    .await;
    assert_eq!(sim.slow_downs_sent(), 0, "polled faster than the interval");
    assert!(sim.approve(user_code));
    wait_for_state(&proxy, "valid", Duration::from_secs(5)).await;

    let response = get(&proxy.url("/biganimal/clusters?limit=1")).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    // BigAnimal's clusters: the simulator only lists them for a valid exchanged token.
    assert!(json(&response)["data"][0]["clusterId"].is_string());
    assert_eq!(sim.exchange_requests(), 1);

    // 2-second raw tokens: refreshed with the rotating refresh token and exchanged again.
    wait_until(Duration::from_secs(8), "two refreshes", async || {
        sim.count_for_grant("refresh_token") >= 2 && sim.exchange_requests() >= 3
    })
    .await;
    let later = get(&proxy.url("/biganimal/clusters")).await;
    assert_eq!(later.status(), StatusCode::OK, "{:?}", later.body());
    assert!(sim.count_for_grant("refresh_token") >= 2);
    assert!(sim.exchange_requests() >= 3);
    assert_eq!(sim.refresh_token_reused(), 0);
}

#[tokio::test]
async fn biganimal_denied_login_is_reported_and_a_new_login_works() {
    let sim = biganimal::start(BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        ..BigAnimalSimConfig::default()
    })
    .await;
    let proxy = TestProxy::start(&biganimal_config(&sim)).await;
    let login = json(&post_action(&proxy.url("/-/upstreams/biganimal/login")).await);
    assert!(sim.deny(login["user_code"].as_str().unwrap()));
    // A denial is final: nothing is retried until a new login.
    let status = wait_for_state(&proxy, "needs_login", Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !status_text(&proxy)
        .await
        .contains("the login was denied at the vendor")
    {
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let again = json(&post_action(&proxy.url("/-/upstreams/biganimal/login")).await);
    assert!(sim.approve(again["user_code"].as_str().unwrap()));
    wait_for_state(&proxy, "valid", Duration::from_secs(5)).await;
    assert_eq!(
        get(&proxy.url("/biganimal/clusters")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn biganimal_access_key_is_sent_as_x_access_key() {
    let sim = biganimal::start(BigAnimalSimConfig {
        access_key: Some("ba-key-123".into()),
        ..BigAnimalSimConfig::default()
    })
    .await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.ba]\ntarget = \"{}/\"\n[upstreams.ba.auth]\nkind = \"static\"\nheader = \"x-access-key\"\nscheme = \"\"\ntoken = \"ba-key-123\"\n",
        sim.api_url()
    ))
    .await;
    let response = get(&proxy.url("/ba/clusters")).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
}

// ---------------------------------------------------------------- BigID

fn bigid_config(sim: &bigid::BigIdSim, extra: &str) -> String {
    format!(
        "[upstreams.bigid]\ntarget = \"{}/\"\n[upstreams.bigid.auth]\nkind = \"bigid\"\nuser_token = \"user-token-1\"\n{extra}\n",
        sim.url()
    )
}

#[tokio::test]
async fn bigid_exchanges_the_user_token_and_sends_the_system_token_raw() {
    let sim = bigid::start(BigIdSimConfig {
        user_tokens: vec!["user-token-1".into()],
        system_ttl: Duration::from_secs(2),
        ..BigIdSimConfig::default()
    })
    .await;
    let proxy = TestProxy::start(&bigid_config(&sim, "")).await;
    let response = get(&proxy.url("/bigid/api/v1/ds-connections")).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    assert_eq!(json(&response)["status"], "success");
    // The refresh follows the JWT's 2-second exp.
    wait_until(Duration::from_secs(5), "a second exchange", async || {
        sim.exchange_requests() >= 2
    })
    .await;
    assert_eq!(
        get(&proxy.url("/bigid/api/v1/ds-connections"))
            .await
            .status(),
        StatusCode::OK
    );
    assert!(sim.exchange_requests() >= 2, "{}", sim.exchange_requests());
}

#[tokio::test]
async fn bigid_without_exp_uses_the_configured_ttl() {
    let sim = bigid::start(BigIdSimConfig {
        user_tokens: vec!["user-token-1".into()],
        exp_claim: false,
        ..BigIdSimConfig::default()
    })
    .await;
    let proxy = TestProxy::start(&bigid_config(&sim, "default_ttl = \"600s\"")).await;
    assert_eq!(
        get(&proxy.url("/bigid/api/v1/x")).await.status(),
        StatusCode::OK
    );
    let status = json(&get(&proxy.url("/-/status")).await);
    let expires_in = status["upstreams"][0]["token"]["expires_in_seconds"]
        .as_u64()
        .unwrap();
    assert!((590..=600).contains(&expires_in), "{status}");
}

#[tokio::test]
async fn bigid_success_false_and_html_with_status_200_are_failures() {
    for (mode, expected) in [
        (BigIdMode::SuccessFalse, "success: false"),
        (BigIdMode::Html, "text/html"),
    ] {
        let sim = bigid::start(BigIdSimConfig {
            user_tokens: vec!["user-token-1".into()],
            ..BigIdSimConfig::default()
        })
        .await;
        sim.set_mode(mode);
        let proxy = TestProxy::start(&bigid_config(&sim, "")).await;
        let response = get(&proxy.url("/bigid/api/v1/x")).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let problem = json(&response);
        assert_eq!(problem["upstream"], "bigid");
        assert!(
            problem["detail"].as_str().unwrap().contains(expected),
            "{problem}"
        );
        assert!(!problem["detail"].as_str().unwrap().contains("user-token-1"));
        sim.set_mode(BigIdMode::Normal);
        // Recovers by itself once the backoff has passed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(&proxy.url("/bigid/api/v1/x")).await.status() != StatusCode::OK {
            assert!(Instant::now() < deadline, "no recovery");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------- AMM

fn amm_sim_config() -> AmmSimConfig {
    AmmSimConfig {
        clients: vec![("amm-client".into(), "amm-secret".into())],
        users: vec![("operator".into(), "op-password".into())],
        default_user: "operator".into(),
        ..AmmSimConfig::default()
    }
}

fn amm_config(sim: &amm::AmmSim, grant: &str, extra: &str) -> String {
    let user = if grant == "password" {
        "username = \"operator\"\npassword = \"op-password\"\n"
    } else {
        ""
    };
    format!(
        "[upstreams.amm]\ntarget = \"{}/\"\n[upstreams.amm.auth]\nkind = \"amm\"\ngrant = \"{grant}\"\nclient_id = \"amm-client\"\nclient_secret = \"amm-secret\"\n{user}{extra}\n",
        sim.url()
    )
}

#[tokio::test]
async fn amm_password_grant_with_basic_auth_and_single_use_refresh() {
    let sim = amm::start(amm_sim_config()).await;
    sim.set_access_ttl(Duration::from_secs(2));
    let proxy = TestProxy::start(&amm_config(&sim, "password", "")).await;
    assert_eq!(
        get(&proxy.url("/amm/api/v1/systems")).await.status(),
        StatusCode::OK
    );
    wait_until(Duration::from_secs(8), "two refreshes", async || {
        sim.count_for_grant("refresh_token") >= 2
    })
    .await;
    assert_eq!(
        get(&proxy.url("/amm/api/v1/systems")).await.status(),
        StatusCode::OK
    );
    assert_eq!(sim.count_for_grant("password"), 1);
    assert!(sim.count_for_grant("refresh_token") >= 2);
    assert_eq!(sim.refresh_token_reused(), 0);
    assert_eq!(
        sim.basic_auth_requests(),
        sim.token_requests(),
        "every token request used HTTP Basic"
    );
    assert_eq!(sim.query_param_requests(), 0);
}

#[tokio::test]
async fn amm_params_in_query_puts_the_parameters_in_the_query_string() {
    let sim = amm::start(amm_sim_config()).await;
    let proxy = TestProxy::start(&amm_config(&sim, "password", "params_in = \"query\"")).await;
    assert_eq!(
        get(&proxy.url("/amm/api/v1/systems")).await.status(),
        StatusCode::OK
    );
    assert_eq!(sim.query_param_requests(), 1);
}

#[tokio::test]
async fn amm_authorization_code_login_and_logout_revokes() {
    let sim = amm::start(amm_sim_config()).await;
    let proxy = TestProxy::start(&amm_config(&sim, "authorization_code", "")).await;
    assert_eq!(
        get(&proxy.url("/amm/api/v1/systems")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    // A GET changes nothing (a link or an image cannot start a login).
    let refused = get(&proxy.url("/-/upstreams/amm/login")).await;
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    // The status page's button: the login answers with AMM's authorize URL, the browser
    // goes there, and AMM sends it back to the callback.
    let login = json(&post_action(&proxy.url("/-/upstreams/amm/login")).await);
    assert_eq!(login["method"], "browser", "{login}");
    let authorize = login["authorize_url"].as_str().unwrap().to_owned();
    assert!(authorize.starts_with(&sim.authorize_url()), "{authorize}");
    let back = get(&authorize).await;
    assert_eq!(back.status(), StatusCode::FOUND);
    let callback = back.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&proxy.url("/-/callback/amm?")),
        "{callback}"
    );
    let landed = get(&callback).await;
    assert_eq!(
        landed.status(),
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(landed.body())
    );
    assert_eq!(
        get(&proxy.url("/amm/api/v1/systems")).await.status(),
        StatusCode::OK
    );

    let logout = json(&post_action(&proxy.url("/-/upstreams/amm/logout")).await);
    assert_eq!(logout["revoked"], true, "{logout}");
    assert_eq!(sim.expire_requests(), 1);
    assert_eq!(sim.valid_access_tokens(), 0);
    assert_eq!(
        get(&proxy.url("/amm/api/v1/systems")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn amm_implicit_grant_token_is_handed_over_by_the_callback_page() {
    let sim = amm::start(amm_sim_config()).await;
    let proxy = TestProxy::start(&amm_config(&sim, "implicit", "")).await;
    let login = json(&post_action(&proxy.url("/-/upstreams/amm/login")).await);
    let back = get(login["authorize_url"].as_str().unwrap()).await;
    let callback = back.headers()["location"].to_str().unwrap().to_owned();
    let (page_url, fragment) = callback
        .split_once('#')
        .expect("the token is in the fragment");
    // The browser loads the page without the fragment; the page's script posts it.
    let page = get(page_url).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(String::from_utf8_lossy(page.body()).contains("location.hash"));
    let handed = send(
        Request::post(page_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(fragment.to_owned()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        handed.status(),
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(handed.body())
    );
    assert_eq!(
        get(&proxy.url("/amm/api/v1/systems")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn amm_rate_limit_retry_after_is_honoured() {
    let sim = amm::start(amm_sim_config()).await;
    sim.set_rate_limit(Some(3));
    let proxy = TestProxy::start(&amm_config(&sim, "password", "")).await;
    let response = get(&proxy.url("/amm/api/v1/systems")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "3");
    let asked = sim.token_requests();
    // The refresher waits the 3 seconds before asking again.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        sim.token_requests() <= asked + 1,
        "{} token requests during Retry-After",
        sim.token_requests() - asked
    );
    sim.set_rate_limit(None);
    wait_until(
        Duration::from_secs(5),
        "a token after the Retry-After",
        async || get(&proxy.url("/amm/api/v1/systems")).await.status() == StatusCode::OK,
    )
    .await;
}

// ---------------------------------------------------------------- device flow edges (RFC 8628)

/// A device-flow server scripted per poll: answers `script[n]` to the n-th poll and
/// records when each poll came.
async fn scripted_device_server(
    script: Vec<&'static str>,
    expires_in: u64,
) -> (
    tokenproxy_sim::SimServer,
    std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
) {
    use http::Response;
    use tokenproxy_sim::{json_response, SimServer};
    let polls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&polls);
    let server = SimServer::start(move |request: Request<hyper::body::Incoming>| {
        let seen = std::sync::Arc::clone(&seen);
        let script = script.clone();
        async move {
            if request.uri().path() == "/device" {
                return json_response(
                    StatusCode::OK,
                    &serde_json::json!({"device_code": "dc", "user_code": "AB-CD", "verification_uri": "http://127.0.0.1/activate", "expires_in": expires_in, "interval": 1}),
                );
            }
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push(Instant::now());
                seen.len() - 1
            };
            let answer: Response<_> = match script.get(n).copied().unwrap_or("authorization_pending") {
                "token" => json_response(StatusCode::OK, &serde_json::json!({"access_token": "device-token", "token_type": "Bearer", "expires_in": 600})),
                error => json_response(StatusCode::BAD_REQUEST, &serde_json::json!({"error": error})),
            };
            answer
        }
    })
    .await;
    (server, polls)
}

fn device_config(server: &tokenproxy_sim::SimServer, target: &str) -> String {
    format!(
        "[upstreams.dev]\ntarget = \"{target}/\"\n[upstreams.dev.auth]\nkind = \"device_code\"\ndevice_authorization_url = \"{url}/device\"\ntoken_url = \"{url}/token\"\nclient_id = \"c\"\n",
        url = server.url()
    )
}

/// The generic kind through the real server; the schedule (slow_down's 5 s more, every
/// status, expiry) is the unit tests of `providers/device.rs` on a paused clock.
#[tokio::test]
async fn device_polling_keeps_the_interval_while_pending_and_completes() {
    let (server, polls) = scripted_device_server(vec!["authorization_pending", "token"], 60).await;
    let upstream = tokenproxy_sim::echo::start().await;
    let proxy = TestProxy::start(&device_config(&server, &upstream.url())).await;
    post_action(&proxy.url("/-/upstreams/dev/login")).await;
    wait_for_state(&proxy, "valid", Duration::from_secs(10)).await;
    let polls = polls.lock().unwrap().clone();
    assert_eq!(polls.len(), 2);
    let gap = polls[1] - polls[0];
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_secs(3),
        "{gap:?}"
    );
}

#[tokio::test]
async fn an_expired_device_code_stops_polling_and_is_reported() {
    let (server, polls) = scripted_device_server(vec![], 2).await;
    let upstream = tokenproxy_sim::echo::start().await;
    let proxy = TestProxy::start(&device_config(&server, &upstream.url())).await;
    post_action(&proxy.url("/-/upstreams/dev/login")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = json(&get(&proxy.url("/-/status")).await);
        if status["upstreams"][0]["token"]["failures"] == 1 {
            break status;
        }
        assert!(Instant::now() < deadline, "never reported: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["upstreams"][0]["token"]["state"], "needs_login");
    assert!(
        status["upstreams"][0]["token"]["last_error"]
            .as_str()
            .unwrap()
            .contains("expired before anyone approved it"),
        "{status}"
    );
    let polled = polls.lock().unwrap().len();
    // More than the 1-second interval.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        polls.lock().unwrap().len(),
        polled,
        "polling went on after expiry"
    );
}

/// A refresh token the vendor refused is not tried again: after the grant is revoked,
/// requests get "needs a login" without a token request each.
#[tokio::test]
async fn a_refused_refresh_token_is_not_tried_again_on_every_request() {
    let sim = biganimal::start(BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        raw_ttl: Duration::from_secs(3600),
        ..BigAnimalSimConfig::default()
    })
    .await;
    let proxy = TestProxy::start(&biganimal_config(&sim)).await;
    let login = json(&post_action(&proxy.url("/-/upstreams/biganimal/login")).await);
    assert!(sim.approve(login["user_code"].as_str().unwrap()));
    wait_for_state(&proxy, "valid", Duration::from_secs(5)).await;
    // The vendor ends the grant; the next request's 401 makes one refresh, refused.
    sim.revoke_all();
    for _ in 0..20 {
        let refused = get(&proxy.url("/biganimal/clusters")).await;
        assert_eq!(
            refused.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{:?}",
            refused.body()
        );
    }
    assert_eq!(
        sim.count_for_grant("refresh_token"),
        1,
        "the dead refresh token was sent again"
    );
    wait_for_state(&proxy, "needs_login", Duration::from_secs(2)).await;
}
