//! Fleet mode against a real `redis-server`: several tokenproxies share one vendor
//! credential, exactly one of them (the lease holder) calls the token endpoint, the others
//! follow, and a rotating single-use refresh token is never used twice.

#![allow(clippy::disallowed_types)]

mod support;

use std::time::Duration;

use http::StatusCode;
use support::fleet::{eventually, replica_fleet, start_replica};
use support::redis::Redis;
use support::*;
use tokenproxy_sim::amm::{self, AmmSimConfig};

const KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
const CLIENT_SECRET: &str = "amm-secret-never-in-redis";
const PASSWORD: &str = "op-password-never-in-redis";

fn amm_sim_config() -> AmmSimConfig {
    AmmSimConfig {
        clients: vec![("amm-client".into(), CLIENT_SECRET.into())],
        users: vec![("operator".into(), PASSWORD.into())],
        default_user: "operator".into(),
        access_ttl: Duration::from_secs(2),
        reuse_live_token: false,
        ..AmmSimConfig::default()
    }
}

fn fleet_config(redis: &Redis, sim: &amm::AmmSim, extra_store: &str) -> String {
    format!(
        "[store]\nredis = \"{}\"\nkey_prefix = \"fleet-test:\"\nencryption_key = \"{KEY}\"\nlease_ttl = \"2s\"\n{extra_store}\n\
         [upstreams.amm]\ntarget = \"{}/\"\n[upstreams.amm.auth]\nkind = \"amm\"\ngrant = \"password\"\n\
         client_id = \"amm-client\"\nclient_secret = \"{CLIENT_SECRET}\"\nusername = \"operator\"\npassword = \"{PASSWORD}\"\n",
        redis.url(),
        sim.url()
    )
}

/// `count` in-process replicas on a fresh Redis and an AMM whose tokens live for `ttl`,
/// each having served one request (so all hold the fleet's token).
async fn warm_fleet(
    name: &str,
    count: usize,
    ttl: Duration,
) -> (Redis, amm::AmmSim, String, Vec<TestProxy>) {
    let redis = Redis::start(name).await;
    let sim = amm::start(AmmSimConfig {
        access_ttl: ttl,
        ..amm_sim_config()
    })
    .await;
    let config = fleet_config(&redis, &sim, "");
    let mut replicas = Vec::new();
    for _ in 0..count {
        let replica = TestProxy::start(&config).await;
        assert_eq!(
            get(&replica.url("/amm/api/v1/systems")).await.status(),
            StatusCode::OK
        );
        replicas.push(replica);
    }
    (redis, sim, config, replicas)
}

async fn fleet_status(proxy: &TestProxy) -> serde_json::Value {
    json(&get(&proxy.url("/-/status")).await)["upstreams"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_token_chain_with_one_refresher() {
    let redis = Redis::start("share").await;
    let sim = amm::start(amm_sim_config()).await;
    let config = fleet_config(&redis, &sim, "");
    let replicas = [
        TestProxy::start(&config).await,
        TestProxy::start(&config).await,
        TestProxy::start(&config).await,
    ];
    // 6 s of requests through every replica: three 2-s token lifetimes.
    let until = std::time::Instant::now() + Duration::from_secs(6);
    let mut requests = 0;
    while std::time::Instant::now() < until {
        for replica in &replicas {
            let response = get(&replica.url("/amm/api/v1/systems")).await;
            assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
            requests += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(requests > 100);
    assert_eq!(
        sim.refresh_token_reused(),
        0,
        "a single-use refresh token was used twice"
    );
    assert_eq!(
        sim.count_for_grant("password"),
        1,
        "one replica made the first grant"
    );
    let refreshes = sim.count_for_grant("refresh_token");
    assert!(
        (2..=8).contains(&refreshes),
        "about one refresh per lifetime for the whole fleet, not per replica: {refreshes}"
    );
    // Exactly one holder, the same one seen by all.
    let mut holders = Vec::new();
    let mut mine = 0;
    for replica in &replicas {
        let fleet = fleet_status(replica).await["fleet"].clone();
        holders.push(fleet["holder"].as_str().unwrap().to_owned());
        mine += usize::from(fleet["this_replica"].as_bool().unwrap());
        assert_eq!(fleet["redis_reachable"], true);
        assert_eq!(fleet["when_redis_down"], "fetch_locally");
    }
    assert_eq!(mine, 1, "{holders:?}");
    let status = json(&get(&replicas[0].url("/-/status")).await);
    assert_eq!(status["store"], "redis");
    assert!(
        holders.windows(2).all(|pair| pair[0] == pair[1]),
        "{holders:?}"
    );

    // The metrics say who refreshed: one holder made every fleet refresh.
    let mut acquisitions = 0.0;
    let mut fleet_refreshes = 0.0;
    for replica in &replicas {
        let text =
            String::from_utf8(get(&replica.url("/-/metrics")).await.body().to_vec()).unwrap();
        let value = |series: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        acquisitions += value("tokenproxy_fleet_lease_acquisitions_total{upstream=\"amm\"}");
        fleet_refreshes += value("tokenproxy_fleet_refreshes_total{upstream=\"amm\"}");
        assert_eq!(value("tokenproxy_fleet_redis_errors_total"), 0.0);
    }
    assert_eq!(acquisitions, 1.0, "one lease for the whole run");
    assert_eq!(
        fleet_refreshes,
        (refreshes + 1) as f64,
        "the first grant and every refresh"
    );

    // Nothing in Redis can be used or read: no token, no refresh token, no secret.
    let dump = redis.dump();
    assert!(dump.contains("fleet-test:token:amm"), "{dump}");
    assert!(dump.contains("tp1."), "values are sealed: {dump}");
    for secret in [
        CLIENT_SECRET,
        PASSWORD,
        "operator",
        "access_token",
        "refresh_token",
        "eyJ",
    ] {
        assert!(!dump.contains(secret), "{secret} in redis:\n{dump}");
    }
    for token in sim.issued_tokens() {
        assert!(!dump.contains(&token), "a token in redis:\n{dump}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_on_the_followers_makes_one_refresh_by_the_holder() {
    let (_redis, sim, _, replicas) = warm_fleet("refused", 3, Duration::from_secs(3600)).await;
    assert_eq!(sim.token_requests(), 1);
    // The vendor stops taking the fleet's token: both replicas that do not hold the lease
    // get a 401 at once (the holder sees no request), and ask the holder for a new one.
    sim.revoke_access_tokens();
    let mut followers = Vec::new();
    for replica in &replicas {
        if fleet_status(replica).await["fleet"]["this_replica"] == false {
            followers.push(replica.url("/amm/api/v1/systems"));
        }
    }
    assert_eq!(followers.len(), 2);
    let asked = std::time::Instant::now();
    let answers = futures_join_all(
        followers
            .into_iter()
            .map(|url| async move { get(&url).await }),
    )
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    for answer in &answers {
        assert_eq!(answer.status(), StatusCode::OK, "{:?}", answer.body());
    }
    assert_eq!(
        sim.count_for_grant("refresh_token"),
        1,
        "one replacement for the fleet, not one per replica"
    );
    assert_eq!(sim.refresh_token_reused(), 0);
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_with_sigkill_hands_over_and_logout_reaches_every_replica() {
    let mut redis = Redis::start("failover").await;
    let sim = amm::start(amm_sim_config()).await;
    let config = fleet_config(&redis, &sim, "");
    let mut replicas = Vec::new();
    for name in ["a", "b", "c"] {
        replicas.push(start_replica(name, &config).await);
    }
    for replica in &replicas {
        let url = format!("http://{}/amm/api/v1/systems", replica.addr);
        assert_eq!(get(&url).await.status(), StatusCode::OK);
    }
    let mut holder = None;
    for (index, replica) in replicas.iter().enumerate() {
        if replica_fleet(replica).await["fleet"]["this_replica"] == true {
            holder = Some(index);
        }
    }
    let holder = holder.expect("one replica holds the lease");
    let generation = replica_fleet(&replicas[holder]).await["fleet"]["generation"]
        .as_u64()
        .unwrap();

    // Killed just after a refresh was written (a holder killed between spending a refresh
    // token and writing its successor takes that one with it: nobody can help that).
    let before = sim.count_for_grant("refresh_token");
    eventually("a refresh", || async {
        sim.count_for_grant("refresh_token") > before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut killed = replicas.remove(holder);
    killed.child.kill().unwrap();
    let _ = killed.child.wait();

    // The survivors serve on through the takeover (requests wait for the new token) and a
    // Redis restart (its append-only file keeps the keys).
    let until = std::time::Instant::now() + Duration::from_secs(8);
    let mut restarted = false;
    while std::time::Instant::now() < until {
        for replica in &replicas {
            let url = format!("http://{}/amm/api/v1/systems", replica.addr);
            let response = get(&url).await;
            assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
        }
        if !restarted && until - std::time::Instant::now() < Duration::from_secs(3) {
            redis.restart().await;
            restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sim.refresh_token_reused(), 0);
    assert_eq!(
        sim.count_for_grant("password"),
        1,
        "the chain went on from Redis"
    );
    let mut new_holders = 0;
    for replica in &replicas {
        let fleet = replica_fleet(replica).await["fleet"].clone();
        if fleet["this_replica"] == true {
            new_holders += 1;
            assert!(
                fleet["generation"].as_u64().unwrap() > generation,
                "{fleet}"
            );
        }
    }
    assert_eq!(new_holders, 1);

    // A logout on one replica: every replica forgets within a second.
    let logout = post_action(&format!(
        "http://{}/-/upstreams/amm/logout",
        replicas[0].addr
    ))
    .await;
    assert_eq!(logout.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    eventually("the other replica forgets", || async {
        replica_fleet(&replicas[1]).await["token"]["state"] == "logged_out"
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_rotating_tokens_serve_until_expiry_and_independent_ones_are_fetched_alone() {
    let mut redis = Redis::start("down").await;
    let sim = amm::start(amm_sim_config()).await;
    // `amm` is told to keep its held token (as rotating refresh tokens must); `amm2` has
    // the password grant's default, fetching alone.
    let config = fleet_config(&redis, &sim, "")
        .replace("[upstreams.amm.auth]", "when_redis_down = \"keep_held_token\"\n[upstreams.amm.auth]")
        + &format!(
            "[upstreams.amm2]\ntarget = \"{}/\"\n[upstreams.amm2.auth]\nkind = \"amm\"\ngrant = \"password\"\n\
             client_id = \"amm-client\"\nclient_secret = \"{CLIENT_SECRET}\"\nusername = \"operator\"\npassword = \"{PASSWORD}\"\n",
            sim.url()
        );
    let replica = TestProxy::start(&config).await;
    for upstream in ["amm", "amm2"] {
        let url = replica.url(&format!("/{upstream}/api/v1/systems"));
        assert_eq!(get(&url).await.status(), StatusCode::OK);
    }
    redis.kill();
    let killed = std::time::Instant::now();
    let requests_before = sim.token_requests();
    let mut refused_after = None;
    while killed.elapsed() < Duration::from_secs(4) {
        let held = get(&replica.url("/amm/api/v1/systems")).await;
        match held.status() {
            StatusCode::OK => assert!(refused_after.is_none(), "a 200 after a 503"),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(held.headers().contains_key("retry-after"));
                let problem = String::from_utf8_lossy(held.body()).to_string();
                assert!(problem.contains("fleet token store"), "{problem}");
                refused_after.get_or_insert(killed.elapsed());
            }
            other => panic!("{other}"),
        }
        let alone = get(&replica.url("/amm2/api/v1/systems")).await;
        assert_eq!(alone.status(), StatusCode::OK, "{:?}", alone.body());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused_after = refused_after.expect("the held token expired and was not replaced");
    assert!(
        refused_after > Duration::from_millis(100),
        "{refused_after:?}: served the held token first"
    );
    assert_eq!(sim.refresh_token_reused(), 0);
    assert!(
        sim.count_for_grant("password") >= 3,
        "amm2 fetched alone: {}",
        sim.count_for_grant("password")
    );
    assert!(sim.token_requests() > requests_before);

    // Redis back: the rotating upstream recovers by itself.
    redis.restart().await;
    eventually("amm recovers", || async {
        get(&replica.url("/amm/api/v1/systems")).await.status() == StatusCode::OK
    })
    .await;
    assert_eq!(sim.refresh_token_reused(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_password_from_a_file() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let dir = temp_dir("fleet-tls");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Names of their own: OpenSSL (redis-server's) takes a leaf named like its issuer
    // for a self-signed certificate.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tokenproxy test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "redis");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let secure = support::redis::Secure {
        cert: write("redis.crt", &leaf.pem()),
        key: write("redis.key", &leaf_key.serialize_pem()),
        ca: write("ca.pem", &ca.pem()),
        password: "redis-password-never-logged".into(),
    };
    let ca_path = secure.ca.clone();
    let password_file = write("redis-password", "redis-password-never-logged\n");
    let redis = Redis::start_secure("tls", secure).await;
    let sim = amm::start(amm_sim_config()).await;
    let store = format!(
        "redis_password = \"${{file:{}}}\"\nredis_ca_file = \"{}\"",
        password_file.display(),
        ca_path.display()
    );
    let replica = TestProxy::start(&fleet_config(&redis, &sim, &store)).await;
    assert_eq!(
        get(&replica.url("/amm/api/v1/systems")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        fleet_status(&replica).await["fleet"]["redis_reachable"],
        true
    );
    assert!(
        redis.dump().contains("fleet-test:token:amm"),
        "{}",
        redis.dump()
    );

    // Without the CA, the server's certificate is not trusted: nothing is shared.
    let untrusting = TestProxy::start(&fleet_config(
        &redis,
        &sim,
        &format!("redis_password = \"${{file:{}}}\"", password_file.display()),
    ))
    .await;
    let _ = get(&untrusting.url("/amm/api/v1/systems")).await;
    assert_eq!(
        fleet_status(&untrusting).await["fleet"]["redis_reachable"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenproxy_token_prints_the_fleets_token_without_asking_the_vendor() {
    let (_redis, sim, config, replicas) = warm_fleet("token", 1, Duration::from_secs(3600)).await;
    let replica = &replicas[0];
    assert_eq!(sim.token_requests(), 1);

    // A one-shot command with the fleet's config, no daemon of its own: it reads the token
    // from Redis, and leaves the lease to the fleet.
    let dir = temp_dir("fleet-token-cli");
    std::fs::write(
        dir.join("tokenproxy.toml"),
        format!("[server]\nlisten = \"127.0.0.1:9\"\n{config}"),
    )
    .unwrap();
    let output = tokenproxy(&dir).args(["token", "amm"]).output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(sim.issued_tokens().contains(&printed), "{printed}");
    assert_eq!(sim.token_requests(), 1, "the vendor was not asked again");
    assert_eq!(fleet_status(replica).await["fleet"]["this_replica"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_fleet_refresh_token_ends_the_login_on_every_replica_once() {
    use tokenproxy_sim::biganimal::{self, BigAnimalSimConfig};
    let redis = Redis::start("dead-refresh").await;
    let sim = biganimal::start(BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        raw_ttl: Duration::from_secs(3600),
        ..BigAnimalSimConfig::default()
    })
    .await;
    let config = format!(
        "[store]\nredis = \"{}\"\nkey_prefix = \"dead:\"\nencryption_key = \"{KEY}\"\nlease_ttl = \"2s\"\n\
         [upstreams.biganimal]\ntarget = \"{}/\"\n[upstreams.biganimal.auth]\nkind = \"biganimal\"\nprovider_url = \"{}\"\n",
        redis.url(),
        sim.api_url(),
        sim.provider_url()
    );
    let replicas = [
        TestProxy::start(&config).await,
        TestProxy::start(&config).await,
    ];
    let login = json(&post_action(&replicas[0].url("/-/upstreams/biganimal/login")).await);
    assert!(sim.approve(login["user_code"].as_str().unwrap()));
    for replica in &replicas {
        eventually("the login reaches every replica", || async {
            fleet_status(replica).await["token"]["state"] == "valid"
        })
        .await;
    }
    // The vendor ends the grant: both replicas' requests get 401s.
    sim.revoke_all();
    for _ in 0..10 {
        for replica in &replicas {
            let refused = get(&replica.url("/biganimal/clusters")).await;
            assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    assert_eq!(
        sim.count_for_grant("refresh_token"),
        1,
        "the dead refresh token was sent again"
    );
    for replica in &replicas {
        eventually("every replica needs a login", || async {
            fleet_status(replica).await["token"]["state"] == "needs_login"
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_of_the_holder_is_answered_at_once_on_every_replica() {
    let (redis, sim, _, replicas) = warm_fleet("failed", 2, Duration::from_secs(3600)).await;
    // Under load a 2-s lease can change hands while the replicas warm up, and a replica
    // learns it at its next renewal: wait until one of them knows it follows.
    eventually("one replica follows", || async {
        for replica in &replicas {
            if fleet_status(replica).await["fleet"]["this_replica"] == false {
                return true;
            }
        }
        false
    })
    .await;
    let mut follower = None;
    for replica in &replicas {
        if fleet_status(replica).await["fleet"]["this_replica"] == false {
            follower = Some(replica);
        }
    }
    let follower = follower.expect("one replica follows");
    // The vendor refuses the token and rate-limits its token endpoint for 30 s.
    sim.revoke_access_tokens();
    sim.set_rate_limit(Some(30));
    let requests_before = sim.token_requests();
    let asked = std::time::Instant::now();
    let refused = get(&follower.url("/amm/api/v1/systems")).await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((20..=31).contains(&retry_after), "{retry_after}");
    let problem = String::from_utf8_lossy(refused.body()).to_string();
    assert!(problem.contains("could not refresh the token"), "{problem}");
    assert!(problem.contains("429"), "the holder's reason: {problem}");
    // Asking again meanwhile asks nobody.
    for _ in 0..5 {
        let again = get(&follower.url("/amm/api/v1/systems")).await;
        assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        sim.token_requests(),
        requests_before + 1,
        "one refresh for the fleet"
    );
    // Nothing of the failure is readable in Redis either.
    assert!(!redis.dump().contains("429"), "{}", redis.dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_loses_no_login_the_replicas_write_the_newest_back() {
    let redis = Redis::start("flushed").await;
    let sim = amm::start(amm_sim_config()).await;
    let config = fleet_config(&redis, &sim, "");
    let replicas = [
        TestProxy::start(&config).await,
        TestProxy::start(&config).await,
        TestProxy::start(&config).await,
    ];
    let load = |seconds: u64| {
        let urls: Vec<String> = replicas
            .iter()
            .map(|replica| replica.url("/amm/api/v1/systems"))
            .collect();
        async move {
            let until = std::time::Instant::now() + Duration::from_secs(seconds);
            while std::time::Instant::now() < until {
                for url in &urls {
                    let response = get(url).await;
                    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    load(2).await;
    // Twenty refreshes: every replica's token comes from a version well above 1.
    for _ in 0..20 {
        let refreshed = post_action(&replicas[0].url("/-/upstreams/amm/refresh")).await;
        assert_eq!(refreshed.status(), StatusCode::OK);
    }
    load(1).await;
    // Redis forgets everything (a restart without persistence, a failover that lost writes).
    assert_eq!(redis.cli(&["FLUSHALL"]).as_deref(), Some("OK"));
    let refreshes_before = sim.count_for_grant("refresh_token");
    load(6).await;
    let refreshes = sim.count_for_grant("refresh_token") - refreshes_before;
    assert!(refreshes <= 6, "{refreshes} refreshes in 6 s of 2-s tokens");
    assert_eq!(sim.refresh_token_reused(), 0);
    assert_eq!(
        sim.count_for_grant("password"),
        1,
        "the chain went on from the replicas' memory"
    );
    assert!(
        redis.dump().contains("fleet-test:token:amm"),
        "written back: {}",
        redis.dump()
    );
}
