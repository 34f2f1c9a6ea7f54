//! Upstream connections for cleartext upstreams: held by the client connection, handed to
//! the next client when it ends, never mixed between upstreams, and replaced when the
//! upstream closes them. Upstreams here are small HTTP servers on 127.0.0.1 that count
//! the TCP connections they accept.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers every request with `authorization|host` as it received them.
struct CountingUpstream {
    url: String,
    connections: Arc<AtomicUsize>,
    /// Every `Authorization` it received.
    authorizations: Arc<Mutex<Vec<String>>>,
}

impl CountingUpstream {
    async fn start() -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (Arc::clone(&connections), Arc::clone(&authorizations));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::clone(&seen);
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let header = |name| {
                        request
                            .headers()
                            .get(name)
                            .and_then(|value: &http::HeaderValue| value.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let (authorization, host) = (header("authorization"), header("host"));
                    seen.lock().unwrap().push(authorization.clone());
                    let body = Full::new(Bytes::from(format!("{authorization}|{host}")));
                    async move { Ok::<_, hyper::Error>(Response::new(body)) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        CountingUpstream {
            url,
            connections,
            authorizations,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn authority(&self) -> &str {
        self.url.trim_start_matches("http://").trim_end_matches('/')
    }
}

/// One keep-alive client connection to the proxy, used for requests one after another.
async fn client_connection(proxy: &TestProxy) -> http1::SendRequest<TestBody> {
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

async fn get_on(
    client: &mut http1::SendRequest<TestBody>,
    proxy: &TestProxy,
    path: &str,
) -> (StatusCode, String) {
    client.ready().await.unwrap();
    let request = Request::get(path)
        .header("host", proxy.addr().to_string())
        .body(empty())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_keep_alive_client_uses_one_upstream_connection() {
    let upstream = CountingUpstream::start().await;
    let proxy = TestProxy::start(&static_upstream("api", &upstream.url, "token-a", "")).await;
    let mut client = client_connection(&proxy).await;
    for _ in 0..5 {
        let (status, body) = get_on(&mut client, &proxy, "/api/x").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("Bearer token-a|{}", upstream.authority()));
    }
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn clients_connecting_once_per_request_reuse_idle_upstream_connections() {
    let upstream = CountingUpstream::start().await;
    let proxy = TestProxy::start(&static_upstream("api", &upstream.url, "token-a", "")).await;
    for _ in 0..4 {
        // `get` opens a new client connection and closes it after the answer, like `curl`.
        let response = get(&proxy.url("/api/x")).await;
        assert_eq!(response.status(), StatusCode::OK);
        // The proxy hands the upstream connection back once it sees the client leave.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn a_client_switching_upstreams_sends_each_token_only_to_its_own_upstream() {
    let first = CountingUpstream::start().await;
    let second = CountingUpstream::start().await;
    let config = static_upstream("first", &first.url, "token-first", "")
        + &static_upstream("second", &second.url, "token-second", "");
    let proxy = TestProxy::start(&config).await;
    let mut client = client_connection(&proxy).await;
    for _ in 0..3 {
        let (_, body) = get_on(&mut client, &proxy, "/first/x").await;
        assert_eq!(body, format!("Bearer token-first|{}", first.authority()));
        let (_, body) = get_on(&mut client, &proxy, "/second/x").await;
        assert_eq!(body, format!("Bearer token-second|{}", second.authority()));
    }
    assert_eq!(
        *first.authorizations.lock().unwrap(),
        ["Bearer token-first"; 3]
    );
    assert_eq!(
        *second.authorizations.lock().unwrap(),
        ["Bearer token-second"; 3]
    );
    // The connection each upstream's first request opened was reused every time after.
    assert_eq!((first.connections(), second.connections()), (1, 1));
}

/// An upstream that answers one request per connection and closes it 50 ms later, as a
/// server with a short keep-alive timeout does, without `Connection: close`.
async fn closing_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Requests here have no body: the head is the whole request.
                read_head(&mut stream).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    (url, connections)
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    let (url, connections) = closing_upstream().await;
    let proxy = TestProxy::start(&static_upstream("api", &url, "token-a", "")).await;
    let mut client = client_connection(&proxy).await;
    for method in ["GET", "POST", "GET", "POST"] {
        // Long enough for the upstream to have closed the connection the last request used.
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.ready().await.unwrap();
        let request = Request::builder()
            .method(method)
            .uri("/api/x")
            .header("host", proxy.addr().to_string())
            .body(empty())
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 4);
}
