//! Fleet mode against a real, independent OAuth server: ten `tokenproxy run` processes on
//! one `redis-server` share a device login at `oidc-provider`, whose refresh tokens rotate
//! at every use and whose reuse detection revokes the whole grant. One login reaches every
//! replica within a second, and the fleet refreshes once per rotation, never twice with the
//! same refresh token, also when the lease holder is killed with SIGKILL.
#![allow(clippy::disallowed_types)] // Real servers on the real clock: deadlines use std time.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::oidc::{post_form, OidcProvider};
use support::redis::Redis;
use support::*;
use tokenproxy_sim::echo;

const REPLICAS: usize = 10;
/// oidc-provider's access token lifetime, seconds.
const ACCESS_TTL: u64 = 2;
const KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

/// Every replica's config but its own `[server]`: one fleet, one device-code upstream `dev`
/// at oidc-provider's public `device-client`, forwarding to the echo server.
fn replica_config(redis: &Redis, oidc: &OidcProvider, echo: &str) -> String {
    format!(
        "[store]\nredis = \"{redis}\"\nkey_prefix = \"interop:\"\nencryption_key = \"{KEY}\"\nlease_ttl = \"2s\"\n\n\
         [upstreams.dev]\ntarget = \"{echo}/\"\n[upstreams.dev.auth]\nkind = \"device_code\"\n\
         device_authorization_url = \"{device}\"\ntoken_url = \"{token}\"\nclient_id = \"device-client\"\n\
         scope = \"openid offline_access api:read\"\n",
        redis = redis.url(),
        device = oidc.device_authorization_url(),
        token = oidc.token_url(),
    )
}

/// `tokenproxy run` processes, each in a directory of its own with the same fleet config.
async fn start_fleet(config: &str) -> Vec<Daemon> {
    let mut replicas = Vec::with_capacity(REPLICAS);
    for index in 0..REPLICAS {
        let dir = temp_dir(&format!("fleet-interop-{index}"));
        let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}");
        std::fs::write(dir.join("tokenproxy.toml"), text).unwrap();
        replicas.push(Daemon::start(&dir).await);
    }
    replicas
}

async fn token_state(replica: &Daemon) -> String {
    let status = json(&get(&replica.url("/-/status")).await);
    status["upstreams"][0]["token"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A request through `replica` to the echo server: its status and the `Authorization` the
/// echo server saw (empty unless 200).
async fn through(replica: &Daemon) -> (StatusCode, String) {
    let response = get(&replica.url("/dev/resource")).await;
    if response.status() != StatusCode::OK {
        let body = String::from_utf8_lossy(response.body()).into_owned();
        return (response.status(), body);
    }
    let report = json(&response);
    let bearer = echoed(&report, "authorization")
        .first()
        .cloned()
        .unwrap_or_default();
    (response.status(), bearer)
}

fn grant_count(stats: &serde_json::Value, grant: &str) -> u64 {
    stats["token_requests"][grant].as_u64().unwrap_or(0)
}

/// RFC 7662 introspection: whether oidc-provider still takes `token` (a revoked grant's
/// access tokens are revoked with it).
async fn active(oidc: &OidcProvider, token: &str) -> bool {
    let endpoint = oidc.discovery()["introspection_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let form = [("token", token), ("client_id", "device-client")];
    let (status, answer) = post_form(&endpoint, &form, None).await;
    assert_eq!(status, 200, "{answer}");
    answer["active"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_replicas_share_one_device_login_and_one_rotating_refresh_chain() {
    let redis = Redis::start("interop").await;
    let oidc = OidcProvider::start_with(&[("ACCESS_TTL", &ACCESS_TTL.to_string())]).await;
    let upstream = echo::start().await;
    let mut replicas = start_fleet(&replica_config(&redis, &oidc, &upstream.url())).await;
    for replica in &replicas {
        assert_ne!(
            token_state(replica).await,
            "valid",
            "no token before the login"
        );
    }

    // a) One login with `tokenproxy login` on replica 0: the command's config names replica
    // 0's address as `server.listen`, where the command finds the daemon and has it log in.
    let cli_dir = temp_dir("fleet-interop-cli");
    std::fs::write(
        cli_dir.join("tokenproxy.toml"),
        format!(
            "[server]\nlisten = \"{}\"\n{}",
            replicas[0].addr,
            replica_config(&redis, &oidc, &upstream.url())
        ),
    )
    .unwrap();
    let (mut login, stdout, stderr, user_code) = start_device_login(&cli_dir, "dev").await;
    oidc.approve_device(&user_code).await;
    // When each replica first reports a valid token; the login completed when the first
    // one (the replica that polled the device code) did.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut valid_at: Vec<Option<Instant>> = vec![None; REPLICAS];
    while valid_at.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "not every replica got the login within 15 s: {valid_at:?}"
        );
        for (index, replica) in replicas.iter().enumerate() {
            if valid_at[index].is_none() && token_state(replica).await == "valid" {
                valid_at[index] = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let valid_at: Vec<Instant> = valid_at.into_iter().flatten().collect();
    let completed = *valid_at.iter().min().unwrap();
    let spread = *valid_at.iter().max().unwrap() - completed;
    eprintln!("login to all {REPLICAS} replicas: {spread:?} after the first one had it");
    for replica in &replicas {
        let (status, bearer) = through(replica).await;
        assert_eq!(status, StatusCode::OK, "{bearer}");
        assert!(bearer.starts_with("Bearer "), "{bearer}");
    }
    assert!(
        completed.elapsed() < Duration::from_secs(1),
        "every replica served the login's token {:?} after it completed",
        completed.elapsed()
    );
    let finished = login.wait().unwrap();
    assert!(
        finished.success(),
        "tokenproxy login: {:?} {:?}",
        stdout.lock().unwrap(),
        stderr.lock().unwrap()
    );
    assert!(
        stderr
            .lock()
            .unwrap()
            .iter()
            .all(|line| !line.contains("no daemon answers")),
        "the command logged in through replica 0: {:?}",
        stderr.lock().unwrap()
    );

    // b) Requests through every replica for three token lifetimes.
    let stats = oidc.stats().await;
    let refreshes_before = grant_count(&stats, "refresh_token");
    let run = Duration::from_secs(3 * ACCESS_TTL);
    let mut clients = tokio::task::JoinSet::new();
    for replica in &replicas {
        let url = replica.url("/dev/resource");
        clients.spawn(async move {
            let started = Instant::now();
            let mut answers = Vec::new();
            while started.elapsed() < run && answers.len() < 500 {
                let response = get(&url).await;
                answers.push((response.status(), json(&response)));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        });
    }
    let mut bearers = BTreeSet::new();
    let mut requests = 0;
    while let Some(answers) = clients.join_next().await {
        for (status, report) in answers.unwrap() {
            assert_eq!(status, StatusCode::OK, "{report}");
            bearers.insert(echoed(&report, "authorization").remove(0));
            requests += 1;
        }
    }
    let stats = oidc.stats().await;
    let refreshes = grant_count(&stats, "refresh_token") - refreshes_before;
    eprintln!(
        "{requests} requests through {REPLICAS} replicas in {run:?}: {refreshes} refreshes, \
         {} access tokens seen; provider stats {stats}",
        bearers.len()
    );
    assert!(requests > 10 * REPLICAS, "{requests}");
    assert_eq!(
        stats["invalid_grant"], 0,
        "a refresh token was reused: {stats}"
    );
    // The device code's polls before the approval are the only errors.
    let errors = stats["token_errors"].as_object().unwrap();
    let pending = errors.get("authorization_pending").and_then(|n| n.as_u64());
    assert_eq!(errors.len(), usize::from(pending.is_some()), "{stats}");
    let device_grant = "urn:ietf:params:oauth:grant-type:device_code";
    assert_eq!(
        grant_count(&stats, device_grant) - pending.unwrap_or(0),
        1,
        "one device login: {stats}"
    );
    // Each lifetime wants one refresh (about two, as tokenproxy refreshes before expiry);
    // ten replicas refreshing on their own would make ten times as many.
    let lifetimes = run.as_secs() / ACCESS_TTL;
    assert!(
        (lifetimes..=3 * lifetimes).contains(&refreshes),
        "{refreshes} refreshes in {lifetimes} token lifetimes"
    );
    assert!(
        bearers.len() as u64 <= refreshes + 2,
        "{} access tokens seen, {refreshes} refreshes",
        bearers.len()
    );

    // c) The lease holder killed with SIGKILL just after a refresh: a survivor takes over
    // with the newest refresh token once the lease expires, and requests through the
    // survivors wait for it rather than fail.
    let mut holder = None;
    for (index, replica) in replicas.iter().enumerate() {
        let status = json(&get(&replica.url("/-/status")).await);
        if status["upstreams"][0]["fleet"]["this_replica"] == true {
            holder = Some(index);
        }
    }
    let holder = holder.expect("one replica holds the lease");
    let before = grant_count(&oidc.stats().await, "refresh_token");
    let deadline = Instant::now() + Duration::from_secs(2 * ACCESS_TTL + 2);
    while grant_count(&oidc.stats().await, "refresh_token") == before {
        assert!(Instant::now() < deadline, "no refresh before the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut killed = replicas.remove(holder);
    killed.child.kill().unwrap();
    let _ = killed.child.wait();
    let takeover = Instant::now();
    while takeover.elapsed() < Duration::from_secs(3 * ACCESS_TTL + 2) {
        for replica in &replicas {
            let (status, bearer) = through(replica).await;
            assert_eq!(status, StatusCode::OK, "after the kill: {bearer}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = oidc.stats().await;
    assert_eq!(stats["invalid_grant"], 0, "after the takeover: {stats}");

    // The grant is alive: the fleet's next refresh works and its token is taken.
    let deadline = Instant::now() + Duration::from_secs(2 * ACCESS_TTL + 2);
    let after = grant_count(&oidc.stats().await, "refresh_token");
    while grant_count(&oidc.stats().await, "refresh_token") == after {
        assert!(Instant::now() < deadline, "no refresh after the run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for replica in &replicas {
        let (status, bearer) = through(replica).await;
        assert_eq!(status, StatusCode::OK, "{bearer}");
        let token = bearer.strip_prefix("Bearer ").unwrap();
        assert!(active(&oidc, token).await, "the grant was revoked");
    }
    let stats = oidc.stats().await;
    assert_eq!(stats["invalid_grant"], 0, "{stats}");
}
