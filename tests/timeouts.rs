//! Connections that send nothing, stall a body, stop reading or go idle are cut, so they
//! cannot hold `max_connections` slots: raw sockets against the real server on port 0.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;
use tokenproxy_sim::echo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The proxy in front of an echo upstream, with `server` lines added to `[server]`.
async fn proxy_with(server: &str) -> (TestProxy, echo::EchoServer) {
    let upstream = echo::start().await;
    let config = format!(
        "{server}\n[store]\npath = \"memory\"\n{}",
        static_upstream("echo", &format!("{}/", upstream.url()), "t", "")
    );
    (TestProxy::start(&config).await, upstream)
}

/// A `GET` on a fresh connection; its status, or `None` if it took longer than `within`.
async fn served_within(proxy: &TestProxy, path: &str, within: Duration) -> Option<StatusCode> {
    tokio::time::timeout(within, get(&proxy.url(path)))
        .await
        .ok()
        .map(|response| response.status())
}

/// Waits until the server closes `stream` (EOF or reset), reading and dropping what it sends.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_partial_http2_prefaces_cannot_lock_clients_out() {
    let (proxy, _upstream) =
        proxy_with("max_connections = 20\nfirst_request_timeout = \"1s\"").await;
    let addr = proxy.addr();
    let openers: Vec<_> = (0..1100)
        .map(|index| {
            tokio::spawn(async move {
                let connect =
                    tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr));
                let Ok(Ok(mut stream)) = connect.await else {
                    return None;
                };
                // Silence, half an HTTP/2 preface, or a whole preface and nothing more.
                let bytes: &[u8] = match index % 3 {
                    0 => b"",
                    1 => b"PRI * HTTP/2.0\r\n",
                    _ => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                };
                let _ = stream.write_all(bytes).await;
                Some(stream)
            })
        })
        .collect();
    let mut silent = Vec::new();
    for opener in openers {
        silent.extend(opener.await.unwrap());
    }
    assert!(
        silent.len() >= 1000,
        "only {} connections opened",
        silent.len()
    );
    let started = Instant::now();
    let status = served_within(&proxy, "/echo/x", Duration::from_secs(2)).await;
    assert_eq!(
        status,
        Some(StatusCode::OK),
        "a normal client was not served within first_request_timeout + 1 s"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The silent ones were cut, not just outnumbered.
    let first = &mut silent[0];
    assert!(closed_within(first, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_after_body_timeout() {
    let (proxy, _upstream) = proxy_with("max_connections = 1\nbody_timeout = \"1s\"").await;
    let mut stalled = TcpStream::connect(proxy.addr()).await.unwrap();
    stalled
        .write_all(b"POST /echo/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert!(closed_within(&mut stalled, Duration::from_secs(3)).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let status = served_within(&proxy, "/echo/x", Duration::from_secs(2)).await;
    assert_eq!(status, Some(StatusCode::OK));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_write_timeout() {
    let (proxy, _upstream) = proxy_with("max_connections = 1\nwrite_timeout = \"1s\"").await;
    let mut reader = TcpStream::connect(proxy.addr()).await.unwrap();
    // 256 MiB that the client never reads: the proxy's writes stall once the buffers fill.
    reader
        .write_all(
            b"GET /echo/big HTTP/1.1\r\nHost: localhost\r\nx-echo-download: 268435456\r\n\r\n",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let status = served_within(&proxy, "/echo/x", Duration::from_secs(4)).await;
    assert_eq!(status, Some(StatusCode::OK), "the only slot stayed taken");
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(reader);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_idle_timeout() {
    let (proxy, _upstream) = proxy_with("idle_timeout = \"1s\"").await;
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(proxy.url("/echo/x"))
        .body(empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(4), connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn a_request_in_flight_longer_than_the_timeouts_is_not_cut() {
    let (proxy, _upstream) = proxy_with(
        "first_request_timeout = \"500ms\"\nidle_timeout = \"500ms\"\nbody_timeout = \"500ms\"\nheader_read_timeout = \"500ms\"",
    )
    .await;
    let response = send(
        http::Request::get(proxy.url("/echo/slow"))
            .header("x-echo-delay-ms", "1500")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// Reads one whole response (head and `Content-Length` body) from a kept-alive connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn a_slow_head_on_a_kept_alive_connection_is_cut_after_header_read_timeout() {
    let (proxy, _upstream) = proxy_with(
        "header_read_timeout = \"600ms\"\nidle_timeout = \"30s\"\nfirst_request_timeout = \"30s\"",
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let request = b"GET /echo/a HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stream.write_all(request).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Idle for longer than header_read_timeout: an idle connection answers to idle_timeout
    // only, so the next request is served on it.
    tokio::time::sleep(Duration::from_millis(900)).await;
    stream.write_all(request).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // A head trickled a byte every 100 ms never ends: cut about 600 ms after it began,
    // although bytes keep coming.
    let started = Instant::now();
    let trickle = async {
        for byte in b"GET /echo/slow HTTP/1.1\r\nHost: localhost\r\nX-Long: "
            .iter()
            .cycle()
        {
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(5) {
                return;
            }
        }
    };
    trickle.await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "the slow head was not cut: {elapsed:?}"
    );
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
}
