//! `/-/metrics` through the real server after known traffic, read by a real Prometheus server, and
//! the admin actions' same-origin rules (each checked against the token server's count).

mod support;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, StatusCode};
use support::*;
use tokenproxy_sim::echo;
use tokenproxy_sim::oauth::{self, TokenMode};

const CLIENT_SECRET: &str = "metrics-client-secret-never-shown";
const STATIC_TOKEN: &str = "metrics-static-token-never-shown";
const TOKEN_TTL: Duration = Duration::from_secs(3600);

struct Fixture {
    sim: oauth::OAuthSim,
    _echo: echo::EchoServer,
    proxy: TestProxy,
}

async fn fixture() -> Fixture {
    let sim = client_credentials_sim(CLIENT_SECRET, TOKEN_TTL).await;
    let echo = echo::start().await;
    // A port nothing listens on: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TestProxy::start(
        &(client_credentials_upstream("api", &sim, CLIENT_SECRET)
            + &static_upstream("echo", &format!("{}/", echo.url()), STATIC_TOKEN, "")
            + &static_upstream("down", &format!("http://{closed}/"), STATIC_TOKEN, "")),
    )
    .await;
    Fixture {
        sim,
        _echo: echo,
        proxy,
    }
}

async fn metrics(proxy: &TestProxy, accept: Option<&str>) -> (String, String) {
    let mut request = Request::get(proxy.url("/-/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = send(request.body(empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (
        content_type,
        String::from_utf8(response.body().to_vec()).unwrap(),
    )
}

/// `name{labels}` -> value, for every sample line.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            (series.to_owned(), value.parse().expect("a numeric value"))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series} in {samples:#?}"))
}

/// A real Prometheus server (Debian's `prometheus` package) scraping the proxy: its
/// OpenMetrics parser is the judge of the exposition, strict about every line.
struct Prometheus {
    child: std::process::Child,
    url: String,
}

impl Prometheus {
    fn start(proxy: &TestProxy) -> Prometheus {
        let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".into());
        assert!(
            std::path::Path::new(&binary).exists(),
            "prometheus is needed at {binary} (bash scripts/test.sh installs Debian's prometheus)"
        );
        let dir = temp_dir("prometheus");
        let target = proxy
            .url("")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 250ms, scrape_timeout: 250ms }}\n\
                 scrape_configs:\n  - job_name: tokenproxy\n    metrics_path: /-/metrics\n    \
                 static_configs: [{{ targets: [\"{target}\"] }}]\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = std::process::Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The one target's `health` and `lastError` once it has been scraped.
    async fn scraped_target(&self) -> (String, String) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Ok(response)) = tokio::time::timeout(
                Duration::from_secs(2),
                client().request(
                    Request::get(format!("{}/api/v1/targets", self.url))
                        .body(empty())
                        .unwrap(),
                ),
            )
            .await
            {
                use http_body_util::BodyExt;
                let body = response.into_body().collect().await.unwrap().to_bytes();
                // Until it is ready Prometheus answers 503 in plain text: asked again.
                let targets: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let target = &targets["data"]["activeTargets"][0];
                let health = target["health"].as_str().unwrap_or("").to_owned();
                if health != "unknown" && !health.is_empty() {
                    let error = target["lastError"].as_str().unwrap_or("").to_owned();
                    return (health, error);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus did not scrape within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of an instant query that selects one series.
    async fn query(&self, selector: &str) -> f64 {
        let encoded: String = selector
            .bytes()
            .map(|byte| match byte {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (byte as char).to_string(),
                _ => format!("%{byte:02X}"),
            })
            .collect();
        let answer = json(&get(&format!("{}/api/v1/query?query={encoded}", self.url)).await);
        let result = &answer["data"]["result"];
        assert_eq!(
            result.as_array().map(Vec::len),
            Some(1),
            "{selector}: {answer}"
        );
        result[0]["value"][1].as_str().unwrap().parse().unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn metrics_count_known_traffic_and_a_real_prometheus_reads_them() {
    let Fixture { sim, proxy, _echo } = fixture().await;
    for _ in 0..5 {
        assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/echo/y")).await.status(), StatusCode::OK);
    }
    let teapot = send(
        Request::get(proxy.url("/echo/z"))
            .header("x-echo-status", "418")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(teapot.status(), StatusCode::IM_A_TEAPOT);
    for _ in 0..2 {
        assert_eq!(
            get(&proxy.url("/down/x")).await.status(),
            StatusCode::BAD_GATEWAY
        );
    }
    let cross_site = send(
        Request::get(proxy.url("/echo/y"))
            .header("origin", "http://evil.example")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    // Admin endpoints and unknown paths are not counted under any upstream.
    get(&proxy.url("/-/status")).await;
    get(&proxy.url("/nowhere")).await;

    let (content_type, text) = metrics(&proxy, None).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"));
    let samples = samples(&text);
    let requests = |upstream: &str, code: u16| {
        value(
            &samples,
            &format!("tokenproxy_requests_total{{upstream=\"{upstream}\",code=\"{code}\"}}"),
        )
    };
    assert_eq!(requests("api", 200), 5.0);
    assert_eq!(requests("echo", 200), 3.0);
    assert_eq!(requests("echo", 418), 1.0);
    assert_eq!(requests("echo", 403), 1.0);
    assert_eq!(requests("down", 502), 2.0);
    let total: f64 = samples
        .iter()
        .filter(|(series, _)| series.starts_with("tokenproxy_requests_total{"))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(total, 12.0, "nothing else is counted");
    let errors = |upstream: &str, kind: &str| {
        value(
            &samples,
            &format!("tokenproxy_upstream_errors_total{{upstream=\"{upstream}\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(errors("down", "connect"), 2.0);
    // A browser-guard refusal is the client's doing: counted apart, not as the vendor's error.
    assert_eq!(
        value(
            &samples,
            "tokenproxy_refused_requests_total{upstream=\"echo\",reason=\"browser_guard\"}"
        ),
        1.0
    );
    assert!(
        !samples
            .iter()
            .any(|(series, _)| series.contains("kind=\"refused_by_guard\"")),
        "a refusal is no upstream error"
    );
    assert_eq!(errors("api", "connect"), 0.0);
    assert_eq!(errors("api", "no_token"), 0.0);
    assert_eq!(
        value(
            &samples,
            "tokenproxy_request_duration_seconds_count{upstream=\"api\"}"
        ),
        5.0
    );
    assert_eq!(
        value(
            &samples,
            "tokenproxy_request_duration_seconds_bucket{le=\"+Inf\",upstream=\"echo\"}"
        ),
        5.0
    );
    // Cumulative buckets: each at least the one below, the last one the count.
    let mut previous = 0.0;
    for bound in [
        "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0",
        "2.5", "5.0", "10.0", "30.0", "+Inf",
    ] {
        let bucket = value(
            &samples,
            &format!(
                "tokenproxy_request_duration_seconds_bucket{{le=\"{bound}\",upstream=\"api\"}}"
            ),
        );
        assert!(bucket >= previous, "{bound}: {bucket} < {previous}");
        previous = bucket;
    }
    assert_eq!(previous, 5.0);
    assert_eq!(
        value(&samples, "tokenproxy_inflight_requests{upstream=\"api\"}"),
        0.0
    );
    assert_eq!(
        value(
            &samples,
            "tokenproxy_token_refreshes_total{upstream=\"api\",outcome=\"success\"}"
        ),
        1.0
    );
    assert_eq!(sim.token_requests(), 1);
    assert_eq!(
        value(
            &samples,
            "tokenproxy_token_request_duration_seconds_count{upstream=\"api\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "tokenproxy_token_state{upstream=\"api\",state=\"valid\"}"
        ),
        1.0
    );
    let states: f64 = samples
        .iter()
        .filter(|(series, _)| series.starts_with("tokenproxy_token_state{upstream=\"api\""))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(states, 1.0, "exactly one current state");
    let expiry = value(
        &samples,
        "tokenproxy_token_expiry_timestamp_seconds{upstream=\"api\"}",
    );
    let expected = unix_now() + TOKEN_TTL.as_secs_f64();
    assert!((expiry - expected).abs() < 10.0, "{expiry} vs {expected}");
    // A static token has no expiry: no sample rather than a made-up one.
    assert!(!samples.contains_key("tokenproxy_token_expiry_timestamp_seconds{upstream=\"echo\"}"));
    assert_eq!(
        value(
            &samples,
            &format!(
                "tokenproxy_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    for secret in [
        CLIENT_SECRET,
        STATIC_TOKEN,
        "Bearer",
        "evil.example",
        "/api/x",
    ] {
        assert!(!text.contains(secret), "{secret} in the metrics");
    }

    // Prometheus scrapes and parses it (a line it cannot parse fails the whole scrape),
    // and answers queries with the counts above.
    let prometheus = Prometheus::start(&proxy);
    let (health, error) = prometheus.scraped_target().await;
    assert_eq!((health.as_str(), error.as_str()), ("up", ""));
    assert_eq!(
        prometheus
            .query("tokenproxy_requests_total{upstream=\"api\",code=\"200\"}")
            .await,
        5.0
    );
    assert_eq!(
        prometheus
            .query("tokenproxy_upstream_errors_total{upstream=\"down\",kind=\"connect\"}")
            .await,
        2.0
    );
    assert_eq!(
        prometheus
            .query("tokenproxy_request_duration_seconds_count{upstream=\"api\"}")
            .await,
        5.0
    );
    assert_eq!(
        prometheus
            .query("tokenproxy_token_state{upstream=\"api\",state=\"valid\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn refresh_failures_and_state_show_in_the_metrics() {
    let Fixture { sim, proxy, _echo } = fixture().await;
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    let (_, before) = metrics(&proxy, None).await;
    let expiry_before = value(
        &samples(&before),
        "tokenproxy_token_expiry_timestamp_seconds{upstream=\"api\"}",
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = post_action(&proxy.url("/-/upstreams/api/refresh")).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let (_, after) = metrics(&proxy, None).await;
    let after = samples(&after);
    assert_eq!(
        value(
            &after,
            "tokenproxy_token_refreshes_total{upstream=\"api\",outcome=\"success\"}"
        ),
        2.0
    );
    let expiry_after = value(
        &after,
        "tokenproxy_token_expiry_timestamp_seconds{upstream=\"api\"}",
    );
    assert!(
        expiry_after >= expiry_before + 1.0,
        "the new token's expiry: {expiry_before} -> {expiry_after}"
    );

    // The vendor breaks and revokes the token: the next request cannot get one.
    sim.set_mode(TokenMode::InvalidJson);
    sim.revoke_all();
    let failed = post_action(&proxy.url("/-/upstreams/api/refresh")).await;
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (_, text) = metrics(&proxy, None).await;
    let failed = samples(&text);
    assert_eq!(
        value(
            &failed,
            "tokenproxy_token_refreshes_total{upstream=\"api\",outcome=\"failure\"}"
        ),
        1.0
    );
    // Still valid by its expiry, but the refresh failed: expiring, not valid.
    assert_eq!(
        value(
            &failed,
            "tokenproxy_token_state{upstream=\"api\",state=\"expiring\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &failed,
            "tokenproxy_token_request_duration_seconds_count{upstream=\"api\"}"
        ),
        3.0
    );
}

#[tokio::test]
async fn no_token_is_counted_per_upstream() {
    let Fixture { sim, proxy, _echo } = fixture().await;
    sim.set_mode(TokenMode::ServerError);
    assert_eq!(
        get(&proxy.url("/api/x")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (_, text) = metrics(&proxy, None).await;
    let samples = samples(&text);
    assert_eq!(
        value(
            &samples,
            "tokenproxy_upstream_errors_total{upstream=\"api\",kind=\"no_token\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "tokenproxy_requests_total{upstream=\"api\",code=\"503\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "tokenproxy_token_state{upstream=\"api\",state=\"backing_off\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn actions_are_same_origin_posts_with_the_action_header() {
    let Fixture { sim, proxy, _echo } = fixture().await;
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);
    assert_eq!(sim.token_requests(), 1);
    let refresh = proxy.url("/-/upstreams/api/refresh");

    // What a cross-site page can send: a form POST, a fetch with the header (after a
    // refused preflight the browser would not even send it), and plain GETs.
    let refused = [
        Request::post(&refresh)
            .header("origin", "http://evil.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(empty())
            .unwrap(),
        Request::post(&refresh)
            .header("origin", "http://evil.example")
            .header("tokenproxy-action", "1")
            .body(empty())
            .unwrap(),
        Request::post(&refresh)
            .header("sec-fetch-site", "cross-site")
            .header("tokenproxy-action", "1")
            .body(empty())
            .unwrap(),
        // Same origin, but without the header: what a plain HTML form would send.
        Request::post(&refresh)
            .header("origin", format!("http://{}", proxy.addr()))
            .body(empty())
            .unwrap(),
    ];
    for request in refused {
        let response = send(request).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    for action in ["refresh", "login", "logout", "token"] {
        let response = get(&proxy.url(&format!("/-/upstreams/api/{action}"))).await;
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{action}"
        );
        assert_eq!(response.headers()["allow"], "POST", "{action}");
    }
    let post_status = send(Request::post(proxy.url("/-/status")).body(empty()).unwrap()).await;
    assert_eq!(post_status.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post_status.headers()["allow"], "GET, HEAD");
    assert_eq!(sim.token_requests(), 1, "refused actions did nothing");
    assert_eq!(get(&proxy.url("/api/x")).await.status(), StatusCode::OK);

    // The status page's own request: same origin, with the header.
    let page_like = send(
        Request::post(&refresh)
            .header("origin", format!("http://{}", proxy.addr()))
            .header("sec-fetch-site", "same-origin")
            .header("tokenproxy-action", "1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(page_like.status(), StatusCode::OK);
    assert_eq!(json(&page_like)["token"]["state"], "valid");
    assert_eq!(sim.token_requests(), 2, "exactly one token request");
}
