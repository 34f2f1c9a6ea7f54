//! `tokenproxy-bench-floor run --config FILE`: reads `listen` and the first `target` from a
//! tokenproxy config (as `bench/ab.sh` writes it) and proxies `/o/...` to the target with an
//! 800-byte bearer token and `Organization: acme`. No routing, checks, metrics or retries:
//! the stack's own cost per request. With `FLOOR_AFFINITY=1` it uses no pool: each client
//! connection has its own upstream connection (`hyper::client::conn::http1`), the leanest
//! way hyper can proxy.

use std::convert::Infallible;

use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;

/// The quoted value of the first `key = "..."` line.
fn setting(config: &str, key: &str) -> String {
    config
        .lines()
        .find_map(|line| line.trim().strip_prefix(key)?.trim().strip_prefix('='))
        .and_then(|value| value.trim().strip_prefix('"')?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no {key} in the config"))
        .to_owned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let config = match args.as_slice() {
        [_, run, flag, path] if run == "run" && flag == "--config" => {
            std::fs::read_to_string(path).expect("readable config")
        }
        _ => panic!("usage: tokenproxy-bench-floor run --config FILE"),
    };
    let listen: std::net::SocketAddr = setting(&config, "listen").parse().expect("listen");
    let origin = setting(&config, "target").trim_end_matches('/').to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let token = HeaderValue::from_str(&format!("Bearer {}", "t".repeat(800))).unwrap();
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .http1_writev(false)
            .build::<_, Incoming>(https);
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        if std::env::var_os("FLOOR_AFFINITY").is_some() {
            affinity(listener, origin, token).await;
            return;
        }
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (client, origin, token) = (client.clone(), origin.clone(), token.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    let client = client.clone();
                    let path = request.uri().path().strip_prefix("/o").unwrap_or("/");
                    let uri: Result<Uri, _> = format!("{origin}{path}").parse();
                    if let Ok(uri) = uri {
                        *request.uri_mut() = uri;
                    }
                    inject(&mut request, &token);
                    async move { Ok::<_, Infallible>(answer(client.request(request).await)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// `FLOOR_AFFINITY=1`: no pool. Each client connection gets its own upstream connection
/// (`hyper::client::conn::http1`), used for that client's requests one after another.
async fn affinity(listener: tokio::net::TcpListener, origin: String, token: HeaderValue) {
    let authority = origin.trim_start_matches("http://").to_owned();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (authority, token) = (authority.clone(), token.clone());
        tokio::spawn(async move {
            let Ok(upstream) = tokio::net::TcpStream::connect(&authority).await else {
                return;
            };
            let _ = upstream.set_nodelay(true);
            let Ok((sender, connection)) = hyper::client::conn::http1::Builder::new()
                .writev(false)
                .handshake::<_, Incoming>(TokioIo::new(upstream))
                .await
            else {
                return;
            };
            tokio::spawn(connection);
            let sender = std::sync::Arc::new(tokio::sync::Mutex::new(sender));
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let sender = std::sync::Arc::clone(&sender);
                let path = request.uri().path().strip_prefix("/o").unwrap_or("/");
                if let Ok(uri) = path.parse::<Uri>() {
                    *request.uri_mut() = uri;
                }
                inject(&mut request, &token);
                async move {
                    let mut sender = sender.lock().await;
                    let _ = sender.ready().await;
                    Ok::<_, Infallible>(answer(sender.send_request(request).await))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The two headers every proxy in the benchmark injects.
fn inject(request: &mut Request<Incoming>, token: &HeaderValue) {
    let headers = request.headers_mut();
    headers.insert("authorization", token.clone());
    headers.insert("organization", HeaderValue::from_static("acme"));
}

/// The vendor's answer streamed back, or a bare 502.
fn answer<E>(result: Result<Response<Incoming>, E>) -> Response<Body> {
    match result {
        Ok(response) => response.map(|body| body.boxed_unsync()),
        Err(_) => Response::builder()
            .status(502)
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap(),
    }
}
