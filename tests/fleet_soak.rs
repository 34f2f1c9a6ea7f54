//! The fleet soak: 10 `tokenproxy run` processes on one `redis-server`, the AMM simulator
//! with single-use refresh tokens and 2-s access tokens, client load through all ten for
//! `FLEET_SOAK_SECONDS` (60). Every 5 s one replica is killed with SIGKILL (the lease
//! holder at least twice) and started again; `redis-server` is killed and restarted once
//! mid-run. It must show no refresh token used twice, one password grant for the whole
//! run (no `invalid_grant` fallback), about one refresh per token lifetime for the whole
//! fleet, no failed request outside the Redis outage, and during it only 503s with
//! `Retry-After` after the held token expired.
#![allow(clippy::disallowed_types)] // Real processes on the real clock.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::fleet::{replica_fleet, start_replica};
use support::redis::Redis;
use support::*;
use tokenproxy_sim::amm::{self, AmmSimConfig};

const KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
const REPLICAS: usize = 10;

/// One answer the clients got, or could not get.
#[derive(Debug, Clone)]
struct Outcome {
    at: Duration,
    status: Option<StatusCode>,
    retry_after: bool,
}

struct Shared {
    /// Live replicas' addresses by slot; `None` while a slot's process is down.
    addresses: Mutex<Vec<Option<String>>>,
    outcomes: Mutex<Vec<Outcome>>,
}

async fn holder(replicas: &[Daemon]) -> Option<usize> {
    for (slot, replica) in replicas.iter().enumerate() {
        if replica_fleet(replica).await["fleet"]["this_replica"] == true {
            return Some(slot);
        }
    }
    None
}

/// One client: requests round the live replicas until `until`. A request to a replica
/// that was killed meanwhile is no answer of the fleet's and is not counted.
async fn client_loop(shared: Arc<Shared>, start: Instant, until: Instant, offset: usize) {
    let client = client();
    let mut turn = offset;
    while Instant::now() < until {
        turn += 1;
        let slot = turn % REPLICAS;
        let Some(address) = shared.addresses.lock().unwrap()[slot].clone() else {
            continue;
        };
        let request = Request::get(format!("http://{address}/amm/api/v1/systems"))
            .body(empty())
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), client.request(request)).await;
        let still_up = shared.addresses.lock().unwrap()[slot].as_deref() == Some(&address);
        let outcome = match answer {
            Ok(Ok(response)) => Outcome {
                at: start.elapsed(),
                status: Some(response.status()),
                retry_after: response.headers().contains_key("retry-after"),
            },
            _ if !still_up => continue,
            _ => Outcome {
                at: start.elapsed(),
                status: None,
                retry_after: false,
            },
        };
        shared.outcomes.lock().unwrap().push(outcome);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_replicas_through_kills_and_a_redis_restart_share_one_refresh_chain() {
    let seconds: u64 = std::env::var("FLEET_SOAK_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(60);
    let mut redis = Redis::start("soak").await;
    let sim = amm::start(AmmSimConfig {
        clients: vec![("amm-client".into(), "amm-secret".into())],
        users: vec![("operator".into(), "op-password".into())],
        default_user: "operator".into(),
        access_ttl: Duration::from_secs(2),
        reuse_live_token: false,
        ..AmmSimConfig::default()
    })
    .await;
    // keep_held_token: this soak treats AMM's chain like any rotating one (BigAnimal's,
    // Keycloak's), which nobody may refresh without Redis.
    let config = format!(
        "[store]\nredis = \"{}\"\nkey_prefix = \"soak:\"\nencryption_key = \"{KEY}\"\nlease_ttl = \"3s\"\n\
         [upstreams.amm]\ntarget = \"{}/\"\nwhen_redis_down = \"keep_held_token\"\n[upstreams.amm.auth]\n\
         kind = \"amm\"\ngrant = \"password\"\nclient_id = \"amm-client\"\nclient_secret = \"amm-secret\"\n\
         username = \"operator\"\npassword = \"op-password\"\n",
        redis.url(),
        sim.url()
    );
    let mut replicas = Vec::new();
    for slot in 0..REPLICAS {
        replicas.push(start_replica(&format!("soak-{slot}"), &config).await);
    }
    // Everyone has the fleet's token before the load starts.
    for replica in &replicas {
        assert_eq!(
            get(&format!("http://{}/amm/api/v1/systems", replica.addr))
                .await
                .status(),
            StatusCode::OK
        );
    }
    let shared = Arc::new(Shared {
        addresses: Mutex::new(replicas.iter().map(|r| Some(r.addr.clone())).collect()),
        outcomes: Mutex::new(Vec::new()),
    });
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..4)
        .map(|offset| tokio::spawn(client_loop(Arc::clone(&shared), start, until, offset * 3)))
        .collect();

    let redis_restart_at = Duration::from_secs(seconds / 2 + 2);
    let mut outage: Option<(Duration, Duration, Duration)> = None;
    let mut holder_kills = 0;
    let mut kills = 0;
    let mut tick = 1;
    while Instant::now() + Duration::from_secs(5) < until {
        tokio::time::sleep_until((start + Duration::from_secs(5 * tick)).into()).await;
        // Ticks 1, 5, 9: the holder; the others: the next replica in turn.
        let slot = match tick % 4 == 1 {
            true => match holder(&replicas).await {
                Some(slot) => {
                    holder_kills += 1;
                    slot
                }
                None => tick as usize % REPLICAS,
            },
            false => tick as usize % REPLICAS,
        };
        shared.addresses.lock().unwrap()[slot] = None;
        replicas[slot].child.kill().unwrap();
        let _ = replicas[slot].child.wait();
        kills += 1;
        replicas[slot] = start_replica(&format!("soak-{slot}"), &config).await;
        shared.addresses.lock().unwrap()[slot] = Some(replicas[slot].addr.clone());

        if outage.is_none() && start.elapsed() >= redis_restart_at {
            // When the tokens the replicas hold expire: failures may start then.
            let mut held_until = f64::MAX;
            for replica in &replicas {
                let token = &replica_fleet(replica).await["token"];
                if let Some(expires) = token["expires_at_unix"].as_u64() {
                    held_until = held_until.min(expires as f64);
                }
            }
            let down = start.elapsed();
            redis.kill();
            let now_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let expiry = down + Duration::from_secs_f64((held_until - now_unix).max(0.0));
            tokio::time::sleep(Duration::from_secs(3)).await;
            redis.restart().await;
            outage = Some((down, expiry, start.elapsed()));
        }
        tick += 1;
    }
    for client in clients {
        client.await.unwrap();
    }

    let outcomes = shared.outcomes.lock().unwrap().clone();
    let (down, expiry, up) = outage.expect("redis was restarted");
    // After Redis is back, a replica notices within a lease tick and a re-read.
    let recovered = up + Duration::from_secs(6);
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status != Some(StatusCode::OK))
        .collect();
    let outside: Vec<&&Outcome> = failed
        .iter()
        .filter(|o| o.at < down || o.at > recovered)
        .collect();
    let early: Vec<&&Outcome> = failed
        .iter()
        .filter(|o| o.at >= down && o.at <= recovered)
        .filter(|o| {
            o.at + Duration::from_millis(1500) < expiry
                || o.status != Some(StatusCode::SERVICE_UNAVAILABLE)
                || !o.retry_after
        })
        .collect();
    let rotations = sim.count_for_grant("refresh_token");
    eprintln!(
        "fleet soak: {} requests, {} failed (outage {down:?}..{up:?}, held tokens expired at {expiry:?}), \
         {kills} kills ({holder_kills} of the holder), {} token requests: {} password, {rotations} refresh, \
         {} refresh tokens reused",
        outcomes.len(),
        failed.len(),
        sim.token_requests(),
        sim.count_for_grant("password"),
        sim.refresh_token_reused()
    );
    assert!(outcomes.len() > 500, "{}", outcomes.len());
    assert!(holder_kills >= 2, "{holder_kills}");
    assert_eq!(
        sim.refresh_token_reused(),
        0,
        "a single-use refresh token was used twice"
    );
    assert_eq!(sim.count_for_grant("password"), 1, "the chain never broke");
    // One rotation per ~1.3-2 s lifetime for the fleet; ten refreshers would make ten times as many.
    assert!(
        rotations as u64 <= seconds + 10,
        "{rotations} refreshes in {seconds} s"
    );
    assert!(
        outside.is_empty(),
        "failed outside the Redis outage: {outside:?}"
    );
    assert!(
        early.is_empty(),
        "failed before the held token expired, or not 503 + Retry-After: {early:?}"
    );
}
