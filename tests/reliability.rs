//! Faults: a vendor that revokes tokens, a token endpoint that is down, connections that
//! reset, and the process-level lifecycle (SIGTERM drain, SIGHUP and file-change reloads).
#![allow(clippy::disallowed_types)] // Real servers on the real clock: deadlines use std time.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::*;
use tokenproxy_sim::echo;
use tokenproxy_sim::oauth::{self, TokenMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn cc_server() -> oauth::OAuthSim {
    client_credentials_sim("svc-secret", Duration::from_secs(300)).await
}

fn cc_upstream(name: &str, target: &str, token_url: &str) -> String {
    format!(
        "[upstreams.{name}]\ntarget = \"{target}/\"\n[upstreams.{name}.auth]\nkind = \"client_credentials\"\ntoken_url = \"{token_url}\"\nclient_id = \"svc\"\nclient_secret = \"svc-secret\"\n"
    )
}

#[tokio::test]
async fn a_token_revoked_upstream_is_replaced_with_one_token_request_and_the_request_retried() {
    let sim = cc_server().await;
    let proxy = TestProxy::start(&cc_upstream("api", &sim.url(), &sim.token_url())).await;
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    assert_eq!(sim.token_requests(), 1);
    sim.revoke_all();
    let response = send(
        Request::post(proxy.url("/api/x"))
            .body(full("small body"))
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    assert_eq!(json(&response)["body_len"], 10, "the body was sent again");
    assert_eq!(sim.token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_hitting_a_revoked_token_cause_one_refresh() {
    let sim = cc_server().await;
    let proxy = Arc::new(TestProxy::start(&cc_upstream("api", &sim.url(), &sim.token_url())).await);
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    sim.revoke_all();
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let proxy = Arc::clone(&proxy);
            tokio::spawn(async move { get(&proxy.url("/api/x")).await.status() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(sim.token_requests(), 2, "one refresh for all 200");
}

#[tokio::test]
async fn a_second_401_passes_through_and_large_bodies_are_not_replayed() {
    let sim = cc_server().await;
    let upstream = echo::start().await;
    let proxy = TestProxy::start(
        &cc_upstream("api", &upstream.url(), &sim.token_url()).replace(
            "[upstreams.api.auth]",
            "retry_body_limit = 1024\n[upstreams.api.auth]",
        ),
    )
    .await;
    let refused = send(
        Request::get(proxy.url("/api/x"))
            .header("x-echo-status", "401")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "the vendor's answer passes through"
    );
    assert!(refused.headers().get("proxy-status").is_none());
    assert_eq!(upstream.request_count(), 2, "one retry, never a loop");
    assert_eq!(sim.token_requests(), 2);

    let large = send(
        Request::post(proxy.url("/api/x"))
            .header("x-echo-status", "401")
            .body(full(vec![b'x'; 2048]))
            .unwrap(),
    )
    .await;
    assert_eq!(large.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        upstream.request_count(),
        3,
        "a body over the limit is not sent twice"
    );
    assert_eq!(json(&large)["body_len"], 2048);
}

#[tokio::test]
async fn an_outage_of_the_token_endpoint_is_503_with_retry_after_then_recovers_by_itself() {
    let sim = cc_server().await;
    sim.set_mode(TokenMode::OAuthError {
        status: 500,
        error: "server_error".into(),
        description: "down".into(),
    });
    let proxy = TestProxy::start(&cc_upstream("api", &sim.url(), &sim.token_url())).await;
    let outage = Instant::now();
    let mut answered = 0;
    // Two seconds of it; the backoff's pace over a long outage is the unit test
    // `an_outage_is_asked_about_at_the_backoffs_pace_and_recovery_needs_no_request`.
    while outage.elapsed() < Duration::from_secs(2) {
        let response = get(&proxy.url("/api/x")).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            response.headers().contains_key("retry-after"),
            "{:?}",
            response.headers()
        );
        let problem = json(&response);
        assert_eq!(problem["upstream"], "api");
        assert!(
            problem["detail"].as_str().unwrap().contains("HTTP 500"),
            "{problem}"
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered > 20, "{answered} requests");
    // Backoff 0.5 s, 1 s, 2 s (with jitter): attempts at about 0, 0.5 and 1.5 s, not one
    // per request.
    let attempts = sim.token_requests();
    assert!(
        (2..=4).contains(&attempts),
        "{attempts} token requests during the outage"
    );

    sim.set_mode(TokenMode::Normal);
    // The next attempt comes when the 2-second backoff ends.
    wait_until(Duration::from_secs(10), "a recovery", async || {
        get(&proxy.url("/api/x")).await.status() == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn a_refused_client_stops_the_retries_and_asks_for_a_login() {
    let sim = cc_server().await;
    sim.set_mode(TokenMode::OAuthError {
        status: 401,
        error: "invalid_client".into(),
        description: "unknown client".into(),
    });
    let proxy = TestProxy::start(&cc_upstream("api", &sim.url(), &sim.token_url())).await;
    for _ in 0..20 {
        assert_eq!(
            get(&proxy.url("/api/x")).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    // Twice the first backoff: a retry would have come by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sim.token_requests(), 1, "a permanent error is not retried");
    let status = json(&get(&proxy.url("/-/status")).await);
    assert_eq!(
        status["upstreams"][0]["token"]["state"], "invalid_credentials",
        "{status}"
    );
    // Fixed at the vendor, a login (here: a direct token request) brings it back.
    sim.set_mode(TokenMode::Normal);
    let login = post_action(&proxy.url("/-/upstreams/api/login")).await;
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
}

/// An upstream that resets the first connection after reading the request, then answers.
async fn resetting_upstream() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                if n == 0 {
                    let _ = stream.set_zero_linger();
                    return; // dropped with linger 0: a reset
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn an_idempotent_request_is_retried_once_after_a_reset_and_others_are_not() {
    let (addr, connections) = resetting_upstream().await;
    let config = format!("[upstreams.flaky]\ntarget = \"http://{addr}/\"\n[upstreams.flaky.auth]\nkind = \"static\"\ntoken = \"t\"\n");
    let proxy = TestProxy::start(&config).await;
    let response = get(&proxy.url("/flaky/x")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body().as_ref(), b"ok");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);

    let (addr, connections) = resetting_upstream().await;
    let config = format!("[upstreams.flaky]\ntarget = \"http://{addr}/\"\n[upstreams.flaky.auth]\nkind = \"static\"\ntoken = \"t\"\n");
    let proxy = TestProxy::start(&config).await;
    let response = send(
        Request::post(proxy.url("/flaky/x"))
            .body(full("data"))
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "POST is not retried"
    );
}

fn signal(daemon: &Daemon, name: &str) {
    let pid = daemon.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args([&format!("-{name}"), pid.as_str()])
        .status()
        .unwrap()
        .success());
}

#[tokio::test]
async fn sigterm_lets_a_slow_response_finish_and_exits_0() {
    sigterm_drains("rel-sigterm", &[]).await;
}

/// One worker thread runs everything on the single-threaded scheduler: the same drain.
#[tokio::test]
async fn sigterm_drains_on_the_single_threaded_runtime_too() {
    sigterm_drains("rel-sigterm-single", &[("TOKIO_WORKER_THREADS", "1")]).await;
}

async fn sigterm_drains(name: &str, env: &[(&str, &str)]) {
    let upstream = echo::start().await;
    let dir = temp_dir(name);
    std::fs::write(
        dir.join("tokenproxy.toml"),
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"memory\"\n[upstreams.slow]\ntarget = \"{}/\"\n[upstreams.slow.auth]\nkind = \"static\"\ntoken = \"t\"\n", upstream.url()),
    )
    .unwrap();
    let mut daemon = Daemon::start_with_env(&dir, env).await;
    let url = daemon.url("/slow/x");
    let slow = tokio::spawn(async move {
        send(
            Request::get(url)
                .header("x-echo-delay-ms", "1500")
                .body(empty())
                .unwrap(),
        )
        .await
    });
    // The signal comes while the upstream is still answering.
    wait_until(
        Duration::from_secs(5),
        "the request at the upstream",
        async || upstream.request_count() == 1,
    )
    .await;
    let started = Instant::now();
    signal(&daemon, "TERM");
    let response = slow.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the response was not cut short"
    );
    let mut child = std::mem::replace(
        &mut daemon.child,
        std::process::Command::new("true").spawn().unwrap(),
    );
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn sighup_and_file_changes_reload_keeping_tokens_and_a_bad_file_changes_nothing() {
    let sim = cc_server().await;
    let upstream = echo::start().await;
    let dir = temp_dir("rel-reload");
    let config_path = dir.join("tokenproxy.toml");
    let head = "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"memory\"\n";
    let a = cc_upstream("a", &upstream.url(), &sim.token_url());
    let b = format!(
        "[upstreams.b]\ntarget = \"{}/\"\n[upstreams.b.auth]\nkind = \"static\"\ntoken = \"t\"\n",
        upstream.url()
    );
    std::fs::write(&config_path, format!("{head}{a}")).unwrap();
    let daemon = Daemon::start(&dir).await;
    assert_eq!(get(&daemon.url("/a/x")).await.status(), StatusCode::OK);
    assert_eq!(
        get(&daemon.url("/b/x")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(sim.token_requests(), 1);

    // SIGHUP with an upstream added: it routes; a's token is kept.
    std::fs::write(&config_path, format!("{head}{a}{b}")).unwrap();
    signal(&daemon, "HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&daemon.url("/b/x")).await.status() != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "b never routed: {}",
            daemon.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&daemon.url("/a/x")).await.status(), StatusCode::OK);
    assert_eq!(
        sim.token_requests(),
        1,
        "no new token request for an unchanged upstream"
    );

    // A broken file: logged, the running config stays.
    std::fs::write(
        &config_path,
        format!("{head}{a}{b}[upstreams.c]\ntarget = 42\n"),
    )
    .unwrap();
    signal(&daemon, "HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.output().contains("config reload refused") {
        assert!(Instant::now() < deadline, "{}", daemon.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&daemon.url("/a/x")).await.status(), StatusCode::OK);
    assert_eq!(get(&daemon.url("/b/x")).await.status(), StatusCode::OK);

    // A changed file is noticed without a signal: b goes away.
    std::fs::write(&config_path, format!("{head}{a}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    while get(&daemon.url("/b/x")).await.status() != StatusCode::NOT_FOUND {
        assert!(
            Instant::now() < deadline,
            "the file change was not noticed: {}",
            daemon.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sim.token_requests(), 1);
}
