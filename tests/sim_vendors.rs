//! The BigAnimal, BigID and AMM simulators over real HTTP on 127.0.0.1: every endpoint's happy
//! path and every documented error, with exact statuses and bodies.

mod support;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::answer::Answer;

use tokenproxy_sim::amm::{self, AmmSimConfig};
use tokenproxy_sim::biganimal::{self, BigAnimalSim, BigAnimalSimConfig, DEVICE_CODE_GRANT};
use tokenproxy_sim::bigid::{self, BigIdMode, BigIdSimConfig};
use tokenproxy_sim::jwt_claims;
use tokenproxy_sim::oauth::parse_form;

async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body.into())).expect("valid request");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.expect("request failed");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("response body").to_bytes(),
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    send(Method::GET, url, headers, Bytes::new()).await
}

async fn post_form(url: &str, form: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    send(Method::POST, url, &all, form.to_owned()).await
}

async fn post_json(url: &str, body: &str) -> Answer {
    send(
        Method::POST,
        url,
        &[("content-type", "application/json")],
        body.to_owned(),
    )
    .await
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn str_field(json: &Value, name: &str) -> String {
    json[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} missing in {json}"))
        .to_owned()
}

// ---------------------------------------------------------------- BigAnimal

fn biganimal_config() -> BigAnimalSimConfig {
    BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        ..BigAnimalSimConfig::default()
    }
}

/// Requests a device code the way EDB's docs do and returns the answer's JSON.
async fn request_device_code(sim: &BigAnimalSim) -> Value {
    let form = format!(
        "client_id={}&scope=openid%20profile%20email%20offline_access&audience=https%3A%2F%2Fportal.biganimal.com%2Fapi",
        biganimal::DEFAULT_CLIENT_ID
    );
    let answer = post_form(&sim.device_code_url(), &form, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.json()
}

async fn poll(sim: &BigAnimalSim, device_code: &str) -> Answer {
    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={device_code}&client_id={}",
        biganimal::DEFAULT_CLIENT_ID
    );
    post_form(&sim.token_url(), &form, &[]).await
}

/// Device code, approval, first poll: the raw token response.
async fn device_login(sim: &BigAnimalSim) -> Value {
    let code = request_device_code(sim).await;
    assert!(sim.approve(&str_field(&code, "user_code")));
    let answer = poll(sim, &str_field(&code, "device_code")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.json()
}

async fn exchange(sim: &BigAnimalSim, raw_token: &str) -> Answer {
    post_json(
        &sim.exchange_url(),
        &serde_json::json!({ "token": raw_token }).to_string(),
    )
    .await
}

async fn refresh(sim: &BigAnimalSim, refresh_token: &str) -> Answer {
    let form = format!(
        "grant_type=refresh_token&client_id={}&refresh_token={refresh_token}",
        biganimal::DEFAULT_CLIENT_ID
    );
    post_form(&sim.token_url(), &form, &[]).await
}

#[tokio::test]
async fn biganimal_discovery_and_device_code_requests() {
    let sim = biganimal::start(biganimal_config()).await;
    assert_eq!(
        sim.provider_url(),
        format!("{}/api/v3/auth/provider", sim.url())
    );
    assert_eq!(sim.api_url(), format!("{}/api/v3", sim.url()));

    let provider = get(&sim.provider_url(), &[]).await;
    assert_eq!(provider.status, StatusCode::OK);
    let provider = provider.json();
    assert_eq!(provider["clientId"], "ba-client-id");
    assert_eq!(
        provider["freetrialClientId"],
        biganimal::FREETRIAL_CLIENT_ID
    );
    assert_eq!(provider["issuerUri"], sim.url());
    assert_eq!(provider["scope"], "openid profile email offline_access");
    assert_eq!(provider["audience"], "https://portal.biganimal.com/api");

    let code = request_device_code(&sim).await;
    let user_code = str_field(&code, "user_code");
    assert_eq!(user_code.len(), 9);
    assert_eq!(user_code.as_bytes()[4], b'-');
    assert!(user_code
        .chars()
        .all(|c| c == '-' || c.is_ascii_uppercase()));
    assert!(str_field(&code, "device_code").len() >= 32);
    assert_eq!(code["verification_uri"], format!("{}/activate", sim.url()));
    assert_eq!(
        code["verification_uri_complete"],
        format!("{}/activate?user_code={user_code}", sim.url())
    );
    assert_eq!(code["expires_in"], 600);
    assert_eq!(code["interval"], 1);
    assert_eq!(sim.pending_user_codes(), vec![user_code.clone()]);
    let other = request_device_code(&sim).await;
    assert_ne!(other["device_code"], code["device_code"]);
    assert_ne!(other["user_code"], code["user_code"]);

    let unknown = post_form(
        &sim.device_code_url(),
        "client_id=nope&scope=openid&audience=https%3A%2F%2Fportal.biganimal.com%2Fapi",
        &[],
    )
    .await;
    unknown.assert_error(403, "unauthorized_client");
    let no_audience = post_form(
        &sim.device_code_url(),
        "client_id=ba-client-id&scope=openid",
        &[],
    )
    .await;
    no_audience.assert_error(400, "invalid_request");
    assert_eq!(sim.device_code_requests(), 4);
}

#[tokio::test]
async fn biganimal_device_flow_pending_approve_exchange_and_api() {
    let sim = biganimal::start(biganimal_config()).await;
    let code = request_device_code(&sim).await;
    let device_code = str_field(&code, "device_code");

    let pending = poll(&sim, &device_code).await;
    assert_eq!(
        pending.assert_error(403, "authorization_pending"),
        "User has yet to authorize device code."
    );
    assert!(sim.approve(&str_field(&code, "user_code").to_lowercase()));
    assert!(sim.pending_user_codes().is_empty());
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let approved = poll(&sim, &device_code).await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text());
    assert_eq!(approved.header("cache-control"), Some("no-store"));
    let tokens = approved.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 86_400);
    assert_eq!(tokens["scope"], "openid profile email offline_access");
    assert!(tokens["refresh_token"].is_string());
    assert!(jwt_claims(&str_field(&tokens, "id_token")).is_some());
    let raw_token = str_field(&tokens, "access_token");
    let raw_claims = jwt_claims(&raw_token).expect("raw token is a JWT");
    assert!(raw_claims["exp"].as_u64() > raw_claims["iat"].as_u64());
    assert!(raw_claims["jti"].is_string());

    // A device code is redeemed once.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    poll(&sim, &device_code)
        .await
        .assert_error(403, "invalid_grant");
    assert_eq!(sim.poll_count(), 3);
    assert_eq!(sim.count_for_grant(DEVICE_CODE_GRANT), 3);
    assert_eq!(sim.slow_downs_sent(), 0);

    // The raw token is for the exchange only.
    let clusters = format!("{}/clusters/p-c6a8ztq0bm?limit=5", sim.api_url());
    let bearer_raw = format!("Bearer {raw_token}");
    let refused = get(&clusters, &[("authorization", &bearer_raw)]).await;
    assert!(refused.assert_api_error(401).contains("raw access token"));

    let exchanged = exchange(&sim, &raw_token).await;
    assert_eq!(exchanged.status, StatusCode::OK, "{}", exchanged.text());
    let token = str_field(&exchanged.json(), "token");
    assert_ne!(token, raw_token);
    let claims = jwt_claims(&token).expect("exchanged token is a JWT");
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        86_400
    );
    assert!(claims["jti"].is_string());
    assert_eq!(sim.exchange_requests(), 1);

    let bearer = format!("Bearer {token}");
    let echo = get(&clusters, &[("authorization", &bearer)])
        .await
        .assert_echo("BigAnimal", "GET", "/api/v3/clusters/p-c6a8ztq0bm");
    assert_eq!(echo["query"], "limit=5");
    let lower_scheme = format!("bearer {token}");
    get(&clusters, &[("authorization", &lower_scheme)])
        .await
        .assert_echo("BigAnimal", "GET", "/api/v3/clusters/p-c6a8ztq0bm");
    // The token without its scheme is not the right header shape.
    get(&clusters, &[("authorization", &token)])
        .await
        .assert_api_error(401);
    get(&clusters, &[]).await.assert_api_error(401);
    assert_eq!(sim.api_requests(), 5);
}

#[tokio::test]
async fn biganimal_polling_too_fast_gets_slow_down_and_a_longer_interval() {
    let sim = biganimal::start(biganimal_config()).await;
    let code = request_device_code(&sim).await;
    let device_code = str_field(&code, "device_code");
    poll(&sim, &device_code)
        .await
        .assert_error(403, "authorization_pending");
    let too_fast = poll(&sim, &device_code).await;
    assert!(too_fast
        .assert_error(429, "slow_down")
        .contains("6 seconds"));
    assert_eq!(sim.slow_downs_sent(), 1);
    // The announced 1 s is no longer enough: the interval is now 6 s.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    poll(&sim, &device_code)
        .await
        .assert_error(429, "slow_down");
    assert_eq!(sim.slow_downs_sent(), 2);
    // Another device code keeps its own interval.
    let fresh = str_field(&request_device_code(&sim).await, "device_code");
    poll(&sim, &fresh)
        .await
        .assert_error(403, "authorization_pending");
    assert_eq!(sim.poll_count(), 4);
}

#[tokio::test]
async fn biganimal_denied_expired_and_unknown_device_codes() {
    let sim = biganimal::start(BigAnimalSimConfig {
        device_code_ttl: Duration::from_secs(1),
        ..biganimal_config()
    })
    .await;
    let denied = request_device_code(&sim).await;
    assert!(sim.deny(&str_field(&denied, "user_code")));
    assert!(!sim.approve(&str_field(&denied, "user_code")));
    poll(&sim, &str_field(&denied, "device_code"))
        .await
        .assert_error(403, "access_denied");
    poll(&sim, "not-a-device-code")
        .await
        .assert_error(403, "invalid_grant");
    let wrong_client = post_form(
        &sim.token_url(),
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=x&client_id=nope",
        &[],
    )
    .await;
    wrong_client.assert_error(401, "invalid_client");

    let expiring = request_device_code(&sim).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!sim.approve(&str_field(&expiring, "user_code")));
    poll(&sim, &str_field(&expiring, "device_code"))
        .await
        .assert_error(403, "expired_token");
    let unsupported = post_form(
        &sim.token_url(),
        "grant_type=password&client_id=ba-client-id",
        &[],
    )
    .await;
    unsupported.assert_error(403, "unsupported_grant_type");
    assert_eq!(sim.count_for_grant("password"), 1);
}

#[tokio::test]
async fn biganimal_refresh_rotates_and_a_used_refresh_token_is_refused_and_counted() {
    let sim = biganimal::start(biganimal_config()).await;
    let first = device_login(&sim).await;
    let first_refresh = str_field(&first, "refresh_token");

    let rotated = refresh(&sim, &first_refresh).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text());
    let rotated = rotated.json();
    let second_refresh = str_field(&rotated, "refresh_token");
    assert_ne!(second_refresh, first_refresh);
    assert_ne!(rotated["access_token"], first["access_token"]);
    assert_eq!(rotated["expires_in"], 86_400);
    // The refreshed raw token exchanges like the first.
    let exchanged = exchange(&sim, &str_field(&rotated, "access_token")).await;
    assert_eq!(exchanged.status, StatusCode::OK);

    let reused = refresh(&sim, &first_refresh).await;
    assert_eq!(
        reused.assert_error(403, "invalid_grant"),
        "Unknown or invalid refresh token."
    );
    assert_eq!(sim.refresh_token_reused(), 1);
    refresh(&sim, "never-issued")
        .await
        .assert_error(403, "invalid_grant");
    assert_eq!(sim.refresh_token_reused(), 1);

    let third = refresh(&sim, &second_refresh).await;
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(sim.count_for_grant("refresh_token"), 4);
}

#[tokio::test]
async fn biganimal_exchange_errors_expiry_and_revocation() {
    let sim = biganimal::start(biganimal_config()).await;
    assert!(post_json(&sim.exchange_url(), "not json")
        .await
        .assert_api_error(400)
        .contains("token"));
    exchange(&sim, "not-a-raw-token")
        .await
        .assert_api_error(401);

    // The exchanged token's own exp rules the API, independent of the raw token.
    sim.set_exchanged_ttl(Some(Duration::from_secs(1)));
    let tokens = device_login(&sim).await;
    let raw_token = str_field(&tokens, "access_token");
    let short = str_field(&exchange(&sim, &raw_token).await.json(), "token");
    let claims = jwt_claims(&short).expect("JWT");
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        1
    );
    let clusters = format!("{}/clusters/p-c6a8ztq0bm", sim.api_url());
    let bearer = format!("Bearer {short}");
    get(&clusters, &[("authorization", &bearer)])
        .await
        .assert_echo("BigAnimal", "GET", "/api/v3/clusters/p-c6a8ztq0bm");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(get(&clusters, &[("authorization", &bearer)])
        .await
        .assert_api_error(401)
        .contains("expired"));
    assert_eq!(exchange(&sim, &raw_token).await.status, StatusCode::OK);

    // An expired raw token cannot be exchanged.
    sim.set_exchanged_ttl(None);
    sim.set_raw_ttl(Duration::from_secs(1));
    let expiring = device_login(&sim).await;
    assert_eq!(expiring["expires_in"], 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(exchange(&sim, &str_field(&expiring, "access_token"))
        .await
        .assert_api_error(401)
        .contains("expired"));

    // revoke_all kills raw, exchanged and refresh tokens.
    sim.set_raw_ttl(Duration::from_secs(3600));
    let live = device_login(&sim).await;
    let live_raw = str_field(&live, "access_token");
    let live_token = str_field(&exchange(&sim, &live_raw).await.json(), "token");
    let live_bearer = format!("Bearer {live_token}");
    get(&clusters, &[("authorization", &live_bearer)])
        .await
        .assert_echo("BigAnimal", "GET", "/api/v3/clusters/p-c6a8ztq0bm");
    // The earlier exchanges were made with a 1 s lifetime and have expired by now.
    assert_eq!(sim.valid_exchanged_tokens(), 1);
    sim.revoke_all();
    assert_eq!(sim.valid_exchanged_tokens(), 0);
    get(&clusters, &[("authorization", &live_bearer)])
        .await
        .assert_api_error(401);
    exchange(&sim, &live_raw).await.assert_api_error(401);
    refresh(&sim, &str_field(&live, "refresh_token"))
        .await
        .assert_error(403, "invalid_grant");
}

#[tokio::test]
async fn biganimal_access_key_is_accepted_without_bearer() {
    let sim = biganimal::start(BigAnimalSimConfig {
        access_key: Some("ba-key-123".to_owned()),
        ..biganimal_config()
    })
    .await;
    let clusters = format!("{}/clusters/p-c6a8ztq0bm", sim.api_url());
    send(
        Method::POST,
        &clusters,
        &[("x-access-key", "ba-key-123")],
        "{}",
    )
    .await
    .assert_echo("BigAnimal", "POST", "/api/v3/clusters/p-c6a8ztq0bm");
    assert!(get(&clusters, &[("x-access-key", "wrong")])
        .await
        .assert_api_error(401)
        .contains("access key"));
    get(&clusters, &[("authorization", "Bearer ba-key-123")])
        .await
        .assert_api_error(401);
    assert_eq!(sim.api_requests(), 3);

    // Without a configured key, no key is accepted.
    let keyless = biganimal::start(biganimal_config()).await;
    get(
        &format!("{}/clusters/p-c6a8ztq0bm", keyless.api_url()),
        &[("x-access-key", "ba-key-123")],
    )
    .await
    .assert_api_error(401);
}

#[tokio::test]
async fn biganimal_activate_page_approves_and_denies() {
    let sim = biganimal::start(biganimal_config()).await;
    let code = request_device_code(&sim).await;
    let user_code = str_field(&code, "user_code");
    let page = get(&str_field(&code, "verification_uri_complete"), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.contains(&format!("value=\"{user_code}\"")), "{html}");
    assert!(html.contains("value=\"approve\"") && html.contains("value=\"deny\""));
    // The query string is reflected escaped.
    let hostile = get(
        &format!("{}/activate?user_code=%3Cscript%3E", sim.url()),
        &[],
    )
    .await
    .text();
    assert!(!hostile.contains("<script>") && hostile.contains("&lt;script&gt;"));

    let approved = post_form(
        &format!("{}/activate", sim.url()),
        &format!("user_code={user_code}&action=approve"),
        &[],
    )
    .await;
    assert_eq!(approved.status, StatusCode::OK);
    assert!(approved.text().contains("approved"));
    assert_eq!(
        poll(&sim, &str_field(&code, "device_code")).await.status,
        StatusCode::OK
    );
    let again = post_form(
        &format!("{}/activate", sim.url()),
        &format!("user_code={user_code}&action=approve"),
        &[],
    )
    .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);

    let other = request_device_code(&sim).await;
    let denied = post_form(
        &format!("{}/activate", sim.url()),
        &format!("user_code={}&action=deny", str_field(&other, "user_code")),
        &[],
    )
    .await;
    assert_eq!(denied.status, StatusCode::OK);
    poll(&sim, &str_field(&other, "device_code"))
        .await
        .assert_error(403, "access_denied");
}

#[tokio::test]
async fn biganimal_auto_approve_grants_at_the_poll_after_the_first() {
    let sim = biganimal::start(BigAnimalSimConfig {
        auto_approve: true,
        ..biganimal_config()
    })
    .await;
    let code = request_device_code(&sim).await;
    let device_code = str_field(&code, "device_code");
    poll(&sim, &device_code)
        .await
        .assert_error(403, "authorization_pending");
    assert!(sim.pending_user_codes().is_empty());
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(poll(&sim, &device_code).await.status, StatusCode::OK);
}

// ---------------------------------------------------------------- BigID

const USER_TOKEN: &str = "bigid-user-token-1";

async fn bigid_sim(config: BigIdSimConfig) -> bigid::BigIdSim {
    bigid::start(BigIdSimConfig {
        user_tokens: vec![USER_TOKEN.to_owned()],
        ..config
    })
    .await
}

async fn system_token(sim: &bigid::BigIdSim) -> String {
    let answer = get(&sim.token_url(), &[("authorization", USER_TOKEN)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let json = answer.json();
    assert_eq!(json["success"], true, "{json}");
    str_field(&json, "systemToken")
}

#[tokio::test]
async fn bigid_exchange_and_raw_header_api() {
    let sim = bigid_sim(BigIdSimConfig::default()).await;
    assert_eq!(
        sim.token_url(),
        format!("{}/api/v1/refresh-access-token", sim.url())
    );
    let token = system_token(&sim).await;
    let claims = jwt_claims(&token).expect("systemToken is a JWT");
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        3600
    );
    assert!(claims["jti"].is_string());
    let posted = send(
        Method::POST,
        &sim.token_url(),
        &[("authorization", USER_TOKEN)],
        Bytes::new(),
    )
    .await;
    assert_eq!(posted.json()["success"], true);
    assert_ne!(str_field(&posted.json(), "systemToken"), token);

    let connections = format!("{}/api/v1/ds-connections/crm-postgres?skip=0", sim.url());
    let echo = get(&connections, &[("authorization", &token)])
        .await
        .assert_echo("BigID", "GET", "/api/v1/ds-connections/crm-postgres");
    assert_eq!(echo["status"], "success");
    assert_eq!(echo["statusCode"], 200);
    assert_eq!(echo["query"], "skip=0");
    // The list itself, as BigID's API shapes it.
    let list = get(
        &format!("{}/api/v1/ds-connections", sim.url()),
        &[("authorization", &token)],
    )
    .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json()["status"], "success");
    assert!(list.json()["data"]["ds_connections"][0]["type"].is_string());

    let bearer = format!("Bearer {token}");
    let refused = get(&connections, &[("authorization", &bearer)]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    // A user token is not a systemToken.
    assert_eq!(
        get(&connections, &[("authorization", USER_TOKEN)])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&connections, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(sim.exchange_requests(), 2);
    assert_eq!(sim.api_requests(), 5);
}

#[tokio::test]
async fn bigid_bad_user_tokens_answer_200_success_false() {
    let sim = bigid_sim(BigIdSimConfig::default()).await;
    for header in ["wrong-token", "Bearer bigid-user-token-1"] {
        let answer = get(&sim.token_url(), &[("authorization", header)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{header}");
        assert_eq!(
            answer.json(),
            serde_json::json!({ "success": false, "message": "Invalid token" })
        );
    }
    let missing = get(&sim.token_url(), &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json()["success"], false);
    assert!(missing.json()["message"].is_string());

    sim.revoke_user_token(USER_TOKEN);
    let revoked = get(&sim.token_url(), &[("authorization", USER_TOKEN)]).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(revoked.json()["success"], false);
    assert_eq!(sim.exchange_requests(), 4);
    assert_eq!(sim.tokens_issued(), 0);
}

#[tokio::test]
async fn bigid_modes_script_failures() {
    let sim = bigid_sim(BigIdSimConfig::default()).await;
    let user = [("authorization", USER_TOKEN)];

    sim.set_mode(BigIdMode::SuccessFalse);
    let refused = get(&sim.token_url(), &user).await;
    assert_eq!(refused.status, StatusCode::OK);
    assert_eq!(refused.json()["success"], false);

    sim.set_mode(BigIdMode::Html);
    let html = get(&sim.token_url(), &user).await;
    assert_eq!(html.status, StatusCode::OK);
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(html.text().starts_with("<!DOCTYPE html>"));

    sim.set_mode(BigIdMode::ServerError);
    let down = get(&sim.token_url(), &user).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.header("retry-after"), Some("3"));

    sim.set_mode(BigIdMode::Normal);
    system_token(&sim).await;
    assert_eq!(sim.exchange_requests(), 4);
    assert_eq!(sim.tokens_issued(), 1);
}

#[tokio::test]
async fn bigid_system_token_without_exp_still_expires_and_can_be_revoked() {
    let sim = bigid_sim(BigIdSimConfig {
        system_ttl: Duration::from_secs(1),
        exp_claim: false,
        ..BigIdSimConfig::default()
    })
    .await;
    let token = system_token(&sim).await;
    let claims = jwt_claims(&token).expect("JWT");
    assert!(claims.get("exp").is_none(), "{claims}");
    assert!(claims["iat"].is_u64());
    let connections = format!("{}/api/v1/ds-connections/crm-postgres", sim.url());
    get(&connections, &[("authorization", &token)])
        .await
        .assert_echo("BigID", "GET", "/api/v1/ds-connections/crm-postgres");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(&connections, &[("authorization", &token)]).await.status,
        StatusCode::UNAUTHORIZED
    );

    sim.set_system_ttl(Duration::from_secs(3600));
    let live = system_token(&sim).await;
    get(&connections, &[("authorization", &live)])
        .await
        .assert_echo("BigID", "GET", "/api/v1/ds-connections/crm-postgres");
    assert_eq!(sim.valid_system_tokens(), 1);
    sim.revoke_system_tokens();
    assert_eq!(
        get(&connections, &[("authorization", &live)]).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn bigid_user_tokens_are_long_lived_jwts() {
    let token = bigid::new_user_token();
    let claims = jwt_claims(&token).expect("JWT");
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        999 * 86_400
    );
    assert_ne!(bigid::new_user_token(), token);
}

// ---------------------------------------------------------------- AMM

const REDIRECT: &str = "https://app.example/authentication/callback";

fn client_basic() -> String {
    basic(amm::DEFAULT_CLIENT_ID, amm::DEFAULT_CLIENT_SECRET)
}

async fn amm_password(sim: &amm::AmmSim) -> Value {
    let answer = post_form(
        &sim.token_url(),
        "grant_type=password&username=amm-user&password=amm-password",
        &[("authorization", &client_basic())],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.json()
}

/// Follows nothing: returns the `Location` of a 302 from the authorize endpoint.
async fn authorize(sim: &amm::AmmSim, query: &str) -> String {
    let answer = get(&format!("{}?{query}", sim.authorize_url()), &[]).await;
    assert_eq!(answer.status, StatusCode::FOUND, "{}", answer.text());
    answer.header("location").expect("Location").to_owned()
}

/// The parameters after `separator` in a redirect URL.
fn redirect_params(location: &str, separator: char) -> Vec<(String, String)> {
    let (base, params) = location
        .split_once(separator)
        .unwrap_or_else(|| panic!("no {separator} in {location}"));
    assert_eq!(base, REDIRECT);
    parse_form(params.as_bytes())
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[tokio::test]
async fn amm_password_grant_with_basic_form_and_query_params() {
    let sim = amm::start(AmmSimConfig::default()).await;
    assert_eq!(sim.token_url(), format!("{}/api/oauth/token", sim.url()));
    let tokens = amm_password(&sim).await;
    assert_eq!(tokens["token_type"], "bearer");
    assert_eq!(tokens["scope"], "READ WRITE");
    assert_eq!(tokens["expires_in"], 86_400);
    let access = str_field(&tokens, "access_token");
    assert_eq!(access.len(), 36);
    assert_eq!(access.matches('-').count(), 4);
    assert!(tokens["refresh_token"].is_string());
    assert_eq!(sim.basic_auth_requests(), 1);
    assert_eq!(sim.body_param_requests(), 1);
    assert_eq!(sim.query_param_requests(), 0);

    // The vendor's own example: everything in the query string, no body.
    let query = send(
        Method::POST,
        &format!(
            "{}?grant_type=password&username=amm-user&password=amm-password",
            sim.token_url()
        ),
        &[("authorization", &client_basic())],
        Bytes::new(),
    )
    .await;
    assert_eq!(query.status, StatusCode::OK, "{}", query.text());
    assert_eq!(sim.query_param_requests(), 1);
    assert_eq!(sim.basic_auth_requests(), 2);

    // Client credentials as parameters instead of Basic.
    let params = post_form(
        &sim.token_url(),
        "grant_type=password&username=amm-user&password=amm-password&client_id=amm-client&client_secret=amm-secret",
        &[],
    )
    .await;
    assert_eq!(params.status, StatusCode::OK);
    assert_eq!(sim.form_client_auth_requests(), 1);
    assert_eq!(sim.count_for_grant("password"), 3);

    // The API: Bearer, scheme in any case.
    let systems = format!("{}/api/v1/systems/truck-12?fields=name", sim.url());
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let header = format!("{scheme} {access}");
        get(&systems, &[("authorization", &header)])
            .await
            .assert_echo("AMM", "GET", "/api/v1/systems/truck-12");
    }
    get(&systems, &[("authorization", &access)])
        .await
        .assert_error(401, "unauthorized");
    get(&systems, &[]).await.assert_error(401, "unauthorized");
    get(
        &systems,
        &[(
            "authorization",
            "Bearer 00000000-0000-0000-0000-000000000000",
        )],
    )
    .await
    .assert_error(401, "unauthorized");
    assert_eq!(sim.api_requests(), 6);
}

#[tokio::test]
async fn amm_token_endpoint_errors() {
    let sim = amm::start(AmmSimConfig::default()).await;
    let form = "grant_type=password&username=amm-user&password=amm-password";
    for header in [
        basic("amm-client", "wrong"),
        basic("nobody", "amm-secret"),
        "Bearer x".to_owned(),
    ] {
        let answer = post_form(&sim.token_url(), form, &[("authorization", &header)]).await;
        assert_eq!(
            answer.assert_error(401, "unauthorized"),
            "Full authentication is required to access this resource"
        );
    }
    post_form(&sim.token_url(), form, &[])
        .await
        .assert_error(401, "unauthorized");

    let bad_user = post_form(
        &sim.token_url(),
        "grant_type=password&username=amm-user&password=nope",
        &[("authorization", &client_basic())],
    )
    .await;
    assert_eq!(
        bad_user.assert_error(400, "invalid_grant"),
        "Bad credentials"
    );
    post_form(
        &sim.token_url(),
        "grant_type=client_credentials",
        &[("authorization", &client_basic())],
    )
    .await
    .assert_error(400, "unsupported_grant_type");
    assert_eq!(sim.token_requests(), 6);
    assert_eq!(sim.valid_access_tokens(), 0);
}

#[tokio::test]
async fn amm_refresh_tokens_are_single_use() {
    let sim = amm::start(AmmSimConfig::default()).await;
    let first = amm_password(&sim).await;
    let first_refresh = str_field(&first, "refresh_token");
    let refresh = |token: String| {
        let url = sim.token_url();
        async move {
            post_form(
                &url,
                &format!("grant_type=refresh_token&refresh_token={token}"),
                &[("authorization", &client_basic())],
            )
            .await
        }
    };
    let second = refresh(first_refresh.clone()).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    let second = second.json();
    assert_ne!(second["access_token"], first["access_token"]);
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(second["token_type"], "bearer");

    let reused = refresh(first_refresh).await;
    assert_eq!(
        reused.assert_error(400, "invalid_grant"),
        "Invalid refresh token"
    );
    assert_eq!(sim.refresh_token_reused(), 1);
    refresh("unknown".to_owned())
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(sim.refresh_token_reused(), 1);
    assert_eq!(
        refresh(str_field(&second, "refresh_token")).await.status,
        StatusCode::OK
    );
    assert_eq!(sim.count_for_grant("refresh_token"), 4);
}

#[tokio::test]
async fn amm_authorization_code_flow_carries_state_and_checks_redirect_uri() {
    let sim = amm::start(AmmSimConfig::default()).await;
    let query = format!(
        "grant_type=authorization_code&response_type=code&client_id=amm-client&redirect_uri={}&state=xyz%201",
        url_encode(REDIRECT)
    );
    let location = authorize(&sim, &query).await;
    let params = redirect_params(&location, '?');
    assert_eq!(param(&params, "state"), Some("xyz 1"));
    let code = param(&params, "code").expect("code").to_owned();
    assert_eq!(code.len(), 6);

    let exchange = |code: String, redirect_uri: &'static str| {
        let url = sim.token_url();
        async move {
            post_form(
                &url,
                &format!(
                    "grant_type=authorization_code&code={code}&redirect_uri={}",
                    url_encode(redirect_uri)
                ),
                &[("authorization", &client_basic())],
            )
            .await
        }
    };
    let tokens = exchange(code.clone(), REDIRECT).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.text());
    let tokens = tokens.json();
    assert!(tokens["refresh_token"].is_string());
    assert_eq!(tokens["scope"], "READ WRITE");
    // Single use.
    exchange(code, REDIRECT)
        .await
        .assert_error(400, "invalid_grant");

    // The redirect_uri must match the one given at authorize.
    let location = authorize(&sim, &query).await;
    let code = param(&redirect_params(&location, '?'), "code")
        .expect("code")
        .to_owned();
    assert_eq!(
        exchange(code, "https://evil.example/cb")
            .await
            .assert_error(400, "invalid_grant"),
        "Redirect URI mismatch."
    );
    assert_eq!(sim.count_for_grant("authorization_code"), 3);

    // The user declines.
    sim.set_authorize_denied(true);
    let denied = redirect_params(&authorize(&sim, &query).await, '?');
    assert_eq!(param(&denied, "error"), Some("access_denied"));
    assert_eq!(param(&denied, "state"), Some("xyz 1"));
    assert_eq!(param(&denied, "code"), None);

    // Unknown client: no redirect to an unverified place.
    let unknown = get(
        &format!(
            "{}?response_type=code&client_id=nope&redirect_uri={}",
            sim.authorize_url(),
            url_encode(REDIRECT)
        ),
        &[],
    )
    .await;
    unknown.assert_error(401, "unauthorized");
    assert_eq!(sim.authorize_requests(), 4);
}

#[tokio::test]
async fn amm_implicit_flow_returns_the_token_in_the_fragment() {
    let sim = amm::start(AmmSimConfig::default()).await;
    let location = authorize(
        &sim,
        &format!(
            "response_type=token&grant_type=implicit&client_id=amm-client&redirect_uri={}&state=s-42",
            url_encode(REDIRECT)
        ),
    )
    .await;
    assert!(location.contains("&scope=READ%20WRITE&"), "{location}");
    assert!(location.contains("token_type=bearer"), "{location}");
    let params = redirect_params(&location, '#');
    assert_eq!(param(&params, "state"), Some("s-42"));
    assert_eq!(param(&params, "expires_in"), Some("86400"));
    assert_eq!(param(&params, "refresh_token"), None);
    let access = param(&params, "access_token").expect("access_token");
    let header = format!("Bearer {access}");
    get(
        &format!("{}/api/v1/systems/truck-12", sim.url()),
        &[("authorization", &header)],
    )
    .await
    .assert_echo("AMM", "GET", "/api/v1/systems/truck-12");

    sim.set_authorize_denied(true);
    let denied = authorize(
        &sim,
        &format!(
            "response_type=token&client_id=amm-client&redirect_uri={}&state=s-43",
            url_encode(REDIRECT)
        ),
    )
    .await;
    let denied = redirect_params(&denied, '#');
    assert_eq!(param(&denied, "error"), Some("access_denied"));
    assert_eq!(param(&denied, "state"), Some("s-43"));
}

#[tokio::test]
async fn amm_expire_revokes_access_and_refresh_token() {
    let sim = amm::start(AmmSimConfig::default()).await;
    let tokens = amm_password(&sim).await;
    let access = str_field(&tokens, "access_token");
    let header = format!("Bearer {access}");
    let systems = format!("{}/api/v1/systems/truck-12", sim.url());
    get(&systems, &[("authorization", &header)])
        .await
        .assert_echo("AMM", "GET", "/api/v1/systems/truck-12");

    let expire_url = format!("{}?access_token={access}", sim.expire_url());
    let expired = send(Method::POST, &expire_url, &[], Bytes::new()).await;
    assert_eq!(expired.status, StatusCode::OK);
    assert_eq!(sim.revoked_tokens(), 1);
    assert_eq!(sim.valid_access_tokens(), 0);
    get(&systems, &[("authorization", &header)])
        .await
        .assert_error(401, "unauthorized");
    post_form(
        &sim.token_url(),
        &format!(
            "grant_type=refresh_token&refresh_token={}",
            str_field(&tokens, "refresh_token")
        ),
        &[("authorization", &client_basic())],
    )
    .await
    .assert_error(400, "invalid_grant");
    // Already revoked: 401.
    send(Method::POST, &expire_url, &[], Bytes::new())
        .await
        .assert_error(401, "unauthorized");
    assert_eq!(sim.expire_requests(), 2);
    assert_eq!(sim.revoked_tokens(), 1);

    // A fresh password grant gets a new token, not the revoked one.
    let again = amm_password(&sim).await;
    assert_ne!(again["access_token"], tokens["access_token"]);
    // A client may only expire its own tokens.
    let other = amm::start(AmmSimConfig {
        clients: vec![
            ("amm-client".to_owned(), "amm-secret".to_owned()),
            ("other".to_owned(), "other-secret".to_owned()),
        ],
        ..AmmSimConfig::default()
    })
    .await;
    let tokens = amm_password(&other).await;
    let url = format!(
        "{}?access_token={}",
        other.expire_url(),
        str_field(&tokens, "access_token")
    );
    send(
        Method::POST,
        &url,
        &[("authorization", &basic("other", "other-secret"))],
        Bytes::new(),
    )
    .await
    .assert_error(401, "unauthorized");
    let own = send(
        Method::POST,
        &url,
        &[("authorization", &client_basic())],
        Bytes::new(),
    )
    .await;
    assert_eq!(own.status, StatusCode::OK);
}

#[tokio::test]
async fn amm_rate_limit_and_disabled_api() {
    let sim = amm::start(AmmSimConfig::default()).await;
    let access = str_field(&amm_password(&sim).await, "access_token");
    let header = format!("Bearer {access}");
    let systems = format!("{}/api/v1/systems/truck-12", sim.url());

    sim.set_rate_limit(Some(7));
    let limited = post_form(
        &sim.token_url(),
        "grant_type=password&username=amm-user&password=amm-password",
        &[("authorization", &client_basic())],
    )
    .await;
    limited.assert_error(429, "too_many_requests");
    assert_eq!(limited.header("retry-after"), Some("7"));
    sim.set_rate_limit(None);

    sim.set_api_disabled(true);
    let disabled = post_form(
        &sim.token_url(),
        "grant_type=password&username=amm-user&password=amm-password",
        &[("authorization", &client_basic())],
    )
    .await;
    assert!(disabled
        .assert_error(403, "access_denied")
        .starts_with("API access is disabled"));
    get(&systems, &[("authorization", &header)])
        .await
        .assert_error(403, "access_denied");
    sim.set_api_disabled(false);
    get(&systems, &[("authorization", &header)])
        .await
        .assert_echo("AMM", "GET", "/api/v1/systems/truck-12");
    assert_eq!(sim.token_requests(), 3);
}

#[tokio::test]
async fn amm_tokens_expire_and_a_live_token_is_reused_with_its_remaining_lifetime() {
    let sim = amm::start(AmmSimConfig {
        access_ttl: Duration::from_secs(1),
        ..AmmSimConfig::default()
    })
    .await;
    let first = amm_password(&sim).await;
    // Spring-style: the same subject gets its live token back.
    let again = amm_password(&sim).await;
    assert_eq!(again["access_token"], first["access_token"]);
    assert_eq!(again["refresh_token"], first["refresh_token"]);
    assert!(again["expires_in"].as_u64().expect("expires_in") <= 1);

    let header = format!("Bearer {}", str_field(&first, "access_token"));
    let systems = format!("{}/api/v1/systems/truck-12", sim.url());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    get(&systems, &[("authorization", &header)])
        .await
        .assert_error(401, "unauthorized");
    sim.set_access_ttl(Duration::from_secs(3600));
    let fresh = amm_password(&sim).await;
    assert_ne!(fresh["access_token"], first["access_token"]);
    assert_eq!(fresh["expires_in"], 3600);

    let no_reuse = amm::start(AmmSimConfig {
        reuse_live_token: false,
        ..AmmSimConfig::default()
    })
    .await;
    assert_ne!(
        amm_password(&no_reuse).await["access_token"],
        amm_password(&no_reuse).await["access_token"]
    );
}

/// Percent-encodes a test URL for a query parameter.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn amm_over_tls_with_a_self_signed_certificate() {
    use std::sync::Arc;

    use hyper_util::rt::TokioIo;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let sim = amm::start_tls(AmmSimConfig::default(), vec![cert.clone()], key).await;
    assert!(sim.token_url().starts_with("https://127.0.0.1:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(sim.addr())
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http1 handshake");
    tokio::spawn(connection);
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/oauth/token")
        .header("host", "localhost")
        .header("authorization", client_basic())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(
            "grant_type=password&username=amm-user&password=amm-password",
        )))
        .expect("request");
    let response = sender.send_request(request).await.expect("token request");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(json["token_type"], "bearer");
    assert_eq!(sim.valid_access_tokens(), 1);
}
