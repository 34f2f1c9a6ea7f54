//! Security: malformed HTTP/1 never reaches an upstream, paths cannot be confused into the
//! wrong upstream's token, the proxy is no open proxy, the client key, the Unix socket, and
//! no secret at any log level.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use support::*;
use tokenproxy_sim::echo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `support::static_upstream` with the target's root as the base path.
fn static_upstream(name: &str, target: &str, token: &str, extra: &str) -> String {
    support::static_upstream(name, &format!("{target}/"), token, extra)
}

/// Sends raw bytes; returns the status line of the answer (or what happened instead).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await {
        Ok(Ok(0)) => "closed".into(),
        Ok(Ok(n)) => String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        Ok(Err(error)) => format!("error: {error}"),
        Err(_) => "no answer".into(),
    }
}

#[tokio::test]
async fn malformed_http1_gets_400_or_431_and_never_reaches_the_upstream() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "t", "")).await;
    let big = format!(
        "GET /echo/a HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("content-length with transfer-encoding", b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), "400"),
        ("differing content-lengths", b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".to_vec(), "400"),
        ("invalid chunk size", b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(), "400"),
        ("obsolete line folding", b"GET /echo/a HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n continued\r\n\r\n".to_vec(), "400"),
        ("bare LF line ends", b"GET /echo/a HTTP/1.1\nHost: localhost\n\n".to_vec(), "400"),
        ("one bare LF", b"GET /echo/a HTTP/1.1\r\nHost: localhost\nX-B: 2\r\n\r\n".to_vec(), "400"),
        ("header block over the limit", big.into_bytes(), "431"),
    ];
    for (name, bytes, status) in cases {
        let answer = raw(proxy.addr(), &bytes).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{name}: {answer}"
        );
    }
    assert_eq!(upstream.request_count(), 0, "{:?}", upstream.requests());
    // Well-formed requests still pass on the same listener.
    let ok = raw(proxy.addr(), b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

/// hyper bounds its read buffer by `max_buf_size`, but a read takes all the room the buffer
/// has grown to, so a head that arrives whole in one read slips past that bound: the head's
/// own size is what must be checked.
#[tokio::test]
async fn a_head_over_max_header_bytes_gets_431_however_its_bytes_arrive() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&format!(
        "max_header_bytes = 10000\n[store]\npath = \"memory\"\n{}",
        static_upstream("echo", &upstream.url(), "t", "")
    ))
    .await;
    let head = |size: usize| {
        format!(
            "GET /echo/a HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        )
    };
    for size in [10_500, 12_000, 20_000, 40_000] {
        let answer = raw(proxy.addr(), head(size).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{size}: {answer}");
    }
    assert_eq!(upstream.request_count(), 0);
    let answer = raw(proxy.addr(), head(9_000).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn slow_header_clients_are_disconnected_and_connections_are_limited() {
    let upstream = echo::start().await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"500ms\"\nmax_connections = 2\n[store]\npath = \"memory\"\n{}",
        static_upstream("echo", &upstream.url(), "t", "")
    );
    let config =
        tokenproxy::config::parse(&config, "test.toml", &tokenproxy::config::ProcessSources)
            .unwrap();
    let server = tokenproxy::server::Server::start(&config).await.unwrap();
    let mut slow = TcpStream::connect(server.local_addr()).await.unwrap();
    slow.write_all(b"GET /echo/a HTTP/1.1\r\nHo").await.unwrap();
    let mut buffer = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match slow.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow client was not disconnected");

    // max_connections = 2: two idle clients hold both slots; a third waits until one leaves.
    let first = TcpStream::connect(server.local_addr()).await.unwrap();
    let _second = TcpStream::connect(server.local_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!("http://{}/echo/third", server.local_addr());
    let third = tokio::spawn(async move { get(&url).await.status() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond the limit"
    );
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(3), third)
        .await
        .expect("served once a slot is free");
    assert_eq!(status.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn paths_cannot_carry_one_upstreams_token_to_another() {
    let bigeval = echo::start().await;
    let amm = echo::start().await;
    let proxy = TestProxy::start(
        &(static_upstream("bigeval", &bigeval.url(), "bigeval-token", "")
            + &static_upstream("amm", &amm.url(), "amm-token", "")),
    )
    .await;
    let cases = [
        ("/bigeval/../amm/x", Some(("amm", "/x"))),
        ("/bigeval/%2e%2e/amm/x", Some(("amm", "/x"))),
        ("/bigeval/%2E%2e/amm/x", Some(("amm", "/x"))),
        ("//amm/x", Some(("amm", "/x"))),
        ("/amm/./x", Some(("amm", "/x"))),
        ("/bigeval%2F..%2Famm/x", None),
        ("/bigeval%2f..%2famm/x", None),
        // Climbs above AMM's base once `%2F` is decoded: refused (400), not forwarded.
        ("/amm/..%2Fbigeval/x", None),
        ("/amm\\..\\bigeval/x", None),
        ("/bigeval/../../amm/../bigeval/y", Some(("bigeval", "/y"))),
    ];
    for (path, expected) in cases {
        let before = (bigeval.request_count(), amm.request_count());
        let response = send(
            Request::get(format!("http://{}{path}", proxy.addr()))
                .body(empty())
                .unwrap(),
        )
        .await;
        match expected {
            None => {
                assert!(
                    response.status().is_client_error(),
                    "{path}: {}",
                    response.status()
                );
                assert_eq!(
                    (bigeval.request_count(), amm.request_count()),
                    before,
                    "{path} was forwarded"
                );
            }
            Some((upstream, forwarded)) => {
                assert_eq!(response.status(), StatusCode::OK, "{path}");
                let report = json(&response);
                let token = if upstream == "amm" {
                    "Bearer amm-token"
                } else {
                    "Bearer bigeval-token"
                };
                assert_eq!(echoed(&report, "authorization"), [token], "{path}");
                assert_eq!(report["uri"], forwarded, "{path}");
                let (seen, other) = if upstream == "amm" {
                    (&amm, &bigeval)
                } else {
                    (&bigeval, &amm)
                };
                assert_eq!(
                    seen.request_count(),
                    if upstream == "amm" {
                        before.1
                    } else {
                        before.0
                    } + 1
                );
                assert_eq!(
                    other.request_count(),
                    if upstream == "amm" {
                        before.0
                    } else {
                        before.1
                    }
                );
            }
        }
    }
}

#[tokio::test]
async fn a_path_cannot_climb_above_the_targets_base_path() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&support::static_upstream(
        "bigeval",
        &format!("{}/tenant-a/", upstream.url()),
        "t",
        "host = \"tenant.localhost\"\nlisten = \"127.0.0.1:0\"",
    ))
    .await;
    let dedicated = proxy.server.upstream_addr("bigeval").unwrap();
    let escapes = [
        "/..%2Fother/x",
        "/..%2fother/x",
        "/%2e%2e%2fother/x",
        "/%2E%2E%2Fother/x",
        "/..%5Cother/x",
        "/..\\other/x",
        "/..;/other/x",
        "/..;jsessionid=1/other/x",
        "/a/..%2F..%2Fother",
        "/a%2F..%2F..%2Fother",
        "/..%2F",
        "/..%252Fother/x",
    ];
    for escape in escapes {
        let by_prefix = format!("GET /bigeval{escape} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let by_host = format!("GET {escape} HTTP/1.1\r\nHost: tenant.localhost\r\n\r\n");
        let by_port = format!("GET {escape} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        for (how, addr, request) in [
            ("prefix", proxy.addr(), by_prefix),
            ("host", proxy.addr(), by_host),
            ("listen", dedicated, by_port),
        ] {
            let answer = raw(addr, request.as_bytes()).await;
            assert!(
                answer.starts_with("HTTP/1.1 400"),
                "{how} {escape}: {answer}"
            );
        }
    }
    assert_eq!(upstream.request_count(), 0, "{:?}", upstream.requests());
    let refused = send(
        Request::get(proxy.url("/bigeval/..%2Fother/x"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(json(&refused)["status"], 400);
    // Encoded slashes inside a name, and `..` that stays inside the base, pass verbatim.
    for (path, forwarded) in [
        ("/bigeval/group%2Fproject/x", "/tenant-a/group%2Fproject/x"),
        ("/bigeval/a/..%2Fb", "/tenant-a/a/..%2Fb"),
        ("/bigeval/a%2F..%2Fb/c", "/tenant-a/a%2F..%2Fb/c"),
    ] {
        let response = get(&proxy.url(path)).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(json(&response)["uri"], forwarded, "{path}");
    }
}

/// A loopback listener that counts the connections it gets.
async fn bystander() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, count)
}

#[tokio::test]
async fn it_is_not_an_open_proxy() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream(
        "echo",
        &upstream.url(),
        "t",
        "prefix = \"/\"",
    ))
    .await;
    let (other, connections) = bystander().await;
    for request in [
        format!("GET http://{other}/x HTTP/1.1\r\nHost: {other}\r\n\r\n"),
        format!("GET http://{other}/echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        format!("CONNECT {other} HTTP/1.1\r\nHost: {other}\r\n\r\n"),
        "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n".to_string(),
    ] {
        let answer = raw(proxy.addr(), request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the proxy connected to a host it does not route to"
    );
    assert_eq!(upstream.request_count(), 0);
    // Absolute-form naming the proxy itself is an ordinary request.
    let own = raw(
        proxy.addr(),
        format!(
            "GET http://{}/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
            proxy.addr()
        )
        .as_bytes(),
    )
    .await;
    assert!(own.starts_with("HTTP/1.1 200"), "{own}");
}

#[tokio::test]
async fn the_client_key_is_required_and_never_forwarded() {
    let upstream = echo::start().await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nclient_key = \"k3y-0f-at-least-16\"\n[store]\npath = \"memory\"\n{}",
        static_upstream("echo", &upstream.url(), "t", "")
    );
    let config =
        tokenproxy::config::parse(&config, "test.toml", &tokenproxy::config::ProcessSources)
            .unwrap();
    let server = tokenproxy::server::Server::start(&config).await.unwrap();
    let url = |path: &str| format!("http://{}{path}", server.local_addr());
    for key in [
        None,
        Some("Bearer wrong-key-of-16-chars"),
        Some("Bearer k3y-0f-at-least-1"),
        Some("k3y-0f-at-least-16"),
    ] {
        let mut request = Request::get(url("/echo/x"));
        if let Some(key) = key {
            request = request.header("proxy-authorization", key);
        }
        let response = send(request.body(empty()).unwrap()).await;
        assert_eq!(
            response.status(),
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "{key:?}"
        );
        assert_eq!(response.headers()["proxy-authenticate"], "Bearer");
    }
    // Checked before routing: without the key, no answer tells which routes exist.
    for path in ["/nothing/here", "/", "/-/nothing"] {
        let response = get(&url(path)).await;
        assert_eq!(
            response.status(),
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "{path}"
        );
    }
    assert_eq!(upstream.request_count(), 0);
    let unknown = send(
        Request::get(url("/nothing/here"))
            .header("proxy-authorization", "Bearer k3y-0f-at-least-16")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let response = send(
        Request::get(url("/echo/x"))
            .header("proxy-authorization", "Bearer k3y-0f-at-least-16")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        echoed(&json(&response), "proxy-authorization").is_empty(),
        "the key went upstream"
    );
    assert_eq!(
        get(&url("/-/health")).await.status(),
        StatusCode::OK,
        "probes need no key"
    );
    assert_eq!(
        get(&url("/-/status")).await.status(),
        StatusCode::PROXY_AUTHENTICATION_REQUIRED
    );
}

#[tokio::test]
async fn the_unix_socket_is_private_to_its_user_and_serves() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = echo::start().await;
    let dir = temp_dir("sec-unix");
    let socket = dir.join("tokenproxy.sock");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nunix_socket = \"{}\"\n[store]\npath = \"memory\"\n{}",
        socket.display(),
        static_upstream("echo", &upstream.url(), "unix-token", "")
    );
    let config =
        tokenproxy::config::parse(&config, "test.toml", &tokenproxy::config::ProcessSources)
            .unwrap();
    let _server = tokenproxy::server::Server::start(&config).await.unwrap();
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    stream
        .write_all(b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Bearer unix-token"), "{answer}");
}

#[tokio::test]
async fn a_whole_run_at_trace_level_prints_no_secret_or_token() {
    use tokenproxy_sim::oauth::{self, OAuthSimConfig, SimClient};
    const CLIENT_SECRET: &str = "trace-client-secret-91f3";
    const PASSWORD: &str = "trace-password-77ab";
    const STATIC_TOKEN: &str = "trace-static-token-5e2d";
    const CLIENT_KEY: &str = "trace-client-key-c0ffee-beef";
    let upstream = echo::start().await;
    let sim = oauth::start(OAuthSimConfig {
        token_path: "/token".into(),
        clients: vec![SimClient {
            id: "svc".into(),
            secret: Some(CLIENT_SECRET.into()),
        }],
        users: vec![("alice".into(), PASSWORD.into())],
        allow_client_credentials: true,
        allow_password: true,
        access_ttl: Duration::from_secs(2),
        refresh_ttl: Some(Duration::from_secs(600)),
        ..OAuthSimConfig::default()
    })
    .await;
    let dir = temp_dir("sec-trace");
    std::fs::write(
        dir.join("tokenproxy.toml"),
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
client_key = "{CLIENT_KEY}"
[store]
path = "memory"
[upstreams.cc]
target = "{echo}/"
[upstreams.cc.auth]
kind = "client_credentials"
token_url = "{token}"
client_id = "svc"
client_secret = "{CLIENT_SECRET}"
client_auth = "basic"
[upstreams.pw]
target = "{echo}/"
[upstreams.pw.auth]
kind = "password"
token_url = "{token}"
client_id = "svc"
client_secret = "{CLIENT_SECRET}"
username = "alice"
password = "{PASSWORD}"
[upstreams.fixed]
target = "{echo}/"
[upstreams.fixed.auth]
kind = "static"
token = "{STATIC_TOKEN}"
"#,
            echo = upstream.url(),
            token = sim.token_url()
        ),
    )
    .unwrap();
    let mut daemon = {
        let mut child = tokenproxy(&dir)
            .env("TOKENPROXY_LOG", "trace")
            .arg("run")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = capture(child.stdout.take().unwrap());
        let stderr = capture(child.stderr.take().unwrap());
        (child, stdout, stderr)
    };
    let addr = listening_address(&daemon.2, Some(&mut daemon.0)).await;
    // The tokens each upstream sends now.
    let round = async || {
        let mut sent = Vec::new();
        for name in ["cc", "pw", "fixed"] {
            let response = send(
                Request::get(format!("http://{addr}/{name}/x"))
                    .header("proxy-authorization", format!("Bearer {CLIENT_KEY}"))
                    .body(empty())
                    .unwrap(),
            )
            .await;
            assert_eq!(response.status(), StatusCode::OK);
            let authorization = echoed(&json(&response), "authorization").remove(0);
            sent.push(authorization.trim_start_matches("Bearer ").to_owned());
        }
        sent
    };
    // Grants, then refreshes and rotations of the 2-second tokens (at 1.5 s), all at trace
    // level, until the refreshed tokens are sent.
    let first = round().await;
    let mut tokens = first.clone();
    wait_until(Duration::from_secs(5), "refreshed tokens", async || {
        let now = round().await;
        let refreshed = now[0] != first[0] && now[1] != first[1];
        for token in now {
            if !tokens.contains(&token) {
                tokens.push(token);
            }
        }
        refreshed
    })
    .await;
    tokens.push(STATIC_TOKEN.to_owned());
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let output = format!(
        "{}\n{}",
        daemon.1.lock().unwrap().join("\n"),
        daemon.2.lock().unwrap().join("\n")
    );
    assert!(
        output.contains("TRACE") || output.contains("DEBUG"),
        "not at trace level"
    );
    assert!(
        sim.count_for_grant("refresh_token") >= 1,
        "refreshes happened"
    );
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("svc:{CLIENT_SECRET}"));
    for secret in [CLIENT_SECRET, PASSWORD, CLIENT_KEY, &basic]
        .iter()
        .map(|s| s.to_string())
        .chain(tokens)
    {
        assert!(
            !output.contains(&secret),
            "{secret} appears in the trace output"
        );
    }
}

/// Reads one HTTP/1 response (head and `Content-Length` body) from a raw connection; its
/// status line, or what happened instead within `within`.
async fn response_on(stream: &mut TcpStream, within: Duration) -> String {
    let read = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return "closed".to_owned(),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if stream.read_exact(&mut body).await.is_err() {
            return "closed in the body".to_owned();
        }
        head.lines().next().unwrap_or_default().to_owned()
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or_else(|_| "no answer".into())
}

#[tokio::test]
async fn after_an_upgrade_answered_without_101_the_connection_is_still_checked() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "t", "")).await;
    let smuggled: [&[u8]; 3] = [
        b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"GET /echo/a HTTP/1.1\nHost: localhost\n\n",
    ];
    // Answered by the proxy itself (404, 200): no 101, so no tunnel.
    for upgrade_path in ["/nowhere", "/-/health"] {
        for bytes in smuggled {
            let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
            let upgrade = format!(
                "GET {upgrade_path} HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            );
            stream.write_all(upgrade.as_bytes()).await.unwrap();
            let first = response_on(&mut stream, Duration::from_secs(5)).await;
            assert!(!first.contains(" 101 "), "{upgrade_path}: {first}");
            stream.write_all(bytes).await.unwrap();
            let second = response_on(&mut stream, Duration::from_secs(5)).await;
            assert!(
                second.starts_with("HTTP/1.1 400") || second == "closed",
                "{upgrade_path} then {:?}: {second}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
    assert_eq!(upstream.request_count(), 0, "{:?}", upstream.requests());
    // A real 101 still switches the connection to a tunnel.
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET /echo/ws HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"raw\nbytes\r\n").await.unwrap();
    let mut echoed = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .expect("tunnel echoes")
        .unwrap();
    assert_eq!(&echoed, b"raw\nbytes\r\n");
}

#[tokio::test]
async fn framing_edge_cases_get_their_status_at_once_and_never_reach_the_upstream() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "t", "")).await;
    let long_uri = format!(
        "GET /echo/{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a".repeat(9000)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bare LF ending the last header line", b"GET /echo/a HTTP/1.1\r\nHost: localhost\n\r\n".to_vec(), "400"),
        ("bare LF ending the head", b"GET /echo/a HTTP/1.1\r\nHost: localhost\r\n\n".to_vec(), "400"),
        ("chunk size ffffffffffffffff", b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc".to_vec(), "400"),
        ("no Host", b"GET /echo/a HTTP/1.1\r\n\r\n".to_vec(), "400"),
        ("two Host lines", b"GET /echo/a HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n".to_vec(), "400"),
        ("malformed Host", b"GET /echo/a HTTP/1.1\r\nHost: local host\r\n\r\n".to_vec(), "400"),
        ("Host with user info", b"GET /echo/a HTTP/1.1\r\nHost: user@localhost\r\n\r\n".to_vec(), "400"),
        ("gzip, chunked", b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(), "501"),
        ("URI over the limit", long_uri.into_bytes(), "414"),
    ];
    for (name, bytes, status) in cases {
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let answer = response_on(&mut stream, Duration::from_secs(2)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{name}: {answer}"
        );
    }
    assert_eq!(upstream.request_count(), 0, "{:?}", upstream.requests());
    // HTTP/1.0 may leave out Host.
    let ok = raw(proxy.addr(), b"GET /echo/a HTTP/1.0\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
}

#[tokio::test]
async fn a_malformed_chunk_mid_body_gets_400_and_aborts_the_upstream_request() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "t", "")).await;
    for bad in [
        &b"zz\r\n"[..],
        b"5\nhello\r\n",
        b"ffffffffffffffff\r\n",
        b"0\r\nX-T: 1\n\r\n",
    ] {
        let before = upstream.request_count();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        stream
            .write_all(b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await
            .unwrap();
        // The first chunk is forwarded before the broken one arrives.
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(bad).await.unwrap();
        let answer = response_on(&mut stream, Duration::from_secs(3)).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?}: {answer}",
            String::from_utf8_lossy(bad)
        );
        // The upstream saw the request start and its body break off.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while upstream.request_count() == before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let recorded = upstream
            .last_request()
            .expect("the upstream saw the request");
        assert_eq!(recorded.body_len, 5);
    }
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_forwarded() {
    let upstream = echo::start().await;
    let proxy = TestProxy::start(&static_upstream("echo", &upstream.url(), "t", "")).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET /echo/a HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
        .await
        .unwrap();
    let answer = response_on(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let recorded = upstream.last_request().unwrap();
    assert!(recorded.header_values("upgrade").is_empty(), "{recorded:?}");
    assert!(recorded.header_values("http2-settings").is_empty());
}
