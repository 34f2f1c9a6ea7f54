//! HTTPS upstreams on a private CA: `ca_file` makes them trusted, HTTP/2 is negotiated by
//! ALPN, and without the CA the handshake fails with a 502 (never an unverified send).

mod support;

use std::path::PathBuf;

use http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::*;
use tokenproxy_sim::echo;

struct PrivateCa {
    pem_path: PathBuf,
    leaf: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn private_ca(name: &str) -> PrivateCa {
    private_ca_for(name, "localhost")
}

/// A CA and a leaf it signed for `host`.
fn private_ca_for(name: &str, host: &str) -> PrivateCa {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let pem_path = std::env::temp_dir().join(format!(
        "tokenproxy-test-ca-{name}-{}.pem",
        std::process::id()
    ));
    std::fs::write(&pem_path, ca.pem()).unwrap();
    PrivateCa {
        pem_path,
        leaf: leaf.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

fn config(upstream: &echo::EchoServer, ca_file: Option<&PathBuf>) -> String {
    let ca_line = ca_file
        .map(|path| format!("ca_file = \"{}\"", path.display()))
        .unwrap_or_default();
    format!(
        "[upstreams.private]\ntarget = \"https://localhost:{}/base/\"\n{ca_line}\n[upstreams.private.auth]\nkind = \"static\"\ntoken = \"tls-token\"\n",
        upstream.addr().port()
    )
}

#[tokio::test]
async fn a_private_ca_upstream_is_reached_over_http2_with_ca_file() {
    let ca = private_ca("trusted");
    let upstream = echo::start_tls(vec![ca.leaf.clone()], ca.key.clone_key()).await;
    let proxy = TestProxy::start(&config(&upstream, Some(&ca.pem_path))).await;
    let response = get(&proxy.url("/private/x?y=1")).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    let report = json(&response);
    assert_eq!(report["uri"], "/base/x?y=1");
    assert_eq!(report["version"], "HTTP/2.0", "ALPN should pick h2");
    assert_eq!(echoed(&report, "authorization"), ["Bearer tls-token"]);
    let _ = std::fs::remove_file(&ca.pem_path);
}

#[tokio::test]
async fn without_the_ca_the_upstream_is_refused_with_a_502() {
    let ca = private_ca("untrusted");
    let upstream = echo::start_tls(vec![ca.leaf.clone()], ca.key.clone_key()).await;
    let proxy = TestProxy::start(&config(&upstream, None)).await;
    let response = get(&proxy.url("/private/x")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let detail = json(&response)["detail"].as_str().unwrap().to_owned();
    assert!(detail.to_lowercase().contains("certificate"), "{detail}");
    assert_eq!(upstream.request_count(), 0);
    // A failed handshake is told apart from a refused connection, in the answer and the metrics.
    assert_eq!(
        response.headers()["proxy-status"],
        "tokenproxy; error=tls_protocol_error"
    );
    let metrics = String::from_utf8(get(&proxy.url("/-/metrics")).await.body().to_vec()).unwrap();
    assert!(
        metrics.contains("tokenproxy_upstream_errors_total{upstream=\"private\",kind=\"tls\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("tokenproxy_upstream_errors_total{upstream=\"private\",kind=\"connect\"} 0"),
        "{metrics}"
    );
    let _ = std::fs::remove_file(&ca.pem_path);
}

#[tokio::test]
async fn insecure_skip_verify_is_an_explicit_per_upstream_choice() {
    let ca = private_ca("insecure");
    let upstream = echo::start_tls(vec![ca.leaf.clone()], ca.key.clone_key()).await;
    let config = config(&upstream, None).replace(
        "\n\n[upstreams.private.auth]",
        "\ninsecure_skip_verify = true\n[upstreams.private.auth]",
    );
    assert!(config.contains("insecure_skip_verify"), "{config}");
    let proxy = TestProxy::start(&config).await;
    assert_eq!(get(&proxy.url("/private/x")).await.status(), StatusCode::OK);
    let _ = std::fs::remove_file(&ca.pem_path);
}

#[tokio::test]
async fn mutual_tls_presents_the_configured_client_certificate() {
    use std::sync::Arc;
    let ca = private_ca("mtls");
    // The client certificate, issued by the same private CA.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let client_ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["tokenproxy-client".to_owned()])
        .unwrap()
        .signed_by(&client_key, &client_ca)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tokenproxy-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("client.pem"), client_cert.pem()).unwrap();
    std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();

    // An upstream that requires a client certificate from client_ca.
    let mut client_roots = rustls::RootCertStore::empty();
    client_roots.add(client_ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(client_roots),
        Arc::clone(&provider),
    )
    .build()
    .unwrap();
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![ca.leaf.clone()], ca.key.clone_key())
        .unwrap();
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let upstream = tokenproxy_sim::SimServer::start_tls(acceptor, |_request| async {
        tokenproxy_sim::json_response(http::StatusCode::OK, &serde_json::json!({"mtls": true}))
    })
    .await;

    let base = format!(
        "[upstreams.private]\ntarget = \"https://localhost:{}/\"\nca_file = \"{}\"\nCLIENT\n[upstreams.private.auth]\nkind = \"static\"\ntoken = \"t\"\n",
        upstream.addr().port(),
        ca.pem_path.display()
    );
    let with_cert = base.replace(
        "CLIENT",
        &format!(
            "client_cert = \"{}\"\nclient_cert_key = \"{}\"",
            dir.join("client.pem").display(),
            dir.join("client.key").display()
        ),
    );
    let proxy = TestProxy::start(&with_cert).await;
    let response = get(&proxy.url("/private/x")).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    assert_eq!(json(&response)["mtls"], true);

    let without = TestProxy::start(&base.replace("CLIENT", "")).await;
    assert_eq!(
        get(&without.url("/private/x")).await.status(),
        StatusCode::BAD_GATEWAY
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&ca.pem_path);
}

/// `address` sends the target's host to a fixed IP (curl's `--resolve`): a vendor name that
/// no DNS knows is reached on 127.0.0.1, with its own name in `Host` and in the TLS check.
#[tokio::test]
async fn address_reaches_a_vendor_name_on_a_fixed_ip_and_tls_still_checks_the_name() {
    let ca = private_ca_for("address", "bigeval.example");
    let upstream = echo::start_tls(vec![ca.leaf.clone()], ca.key.clone_key()).await;
    let port = upstream.addr().port();
    let config = |address: &str| {
        format!(
            "[upstreams.vendor]\ntarget = \"https://bigeval.example:{port}/base/\"\nca_file = \"{}\"\n{address}\n\
             [upstreams.vendor.auth]\nkind = \"static\"\ntoken = \"tls-token\"\n",
            ca.pem_path.display()
        )
    };
    let proxy = TestProxy::start(&config("address = \"127.0.0.1\"")).await;
    let response = get(&proxy.url("/vendor/x")).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    let report = json(&response);
    assert_eq!(report["uri"], "/base/x");
    assert_eq!(echoed(&report, "authorization"), ["Bearer tls-token"]);

    // Without it, the name is looked up (and not found): nothing reaches the simulator.
    let unresolved = TestProxy::start(&config("")).await;
    let response = get(&unresolved.url("/vendor/x")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(upstream.request_count(), 1);

    // The TLS check is still against the target's name: a leaf for another name fails.
    let other = private_ca_for("address-other", "other.example");
    let impostor = echo::start_tls(vec![other.leaf.clone()], other.key.clone_key()).await;
    let proxy = TestProxy::start(&format!(
        "[upstreams.vendor]\ntarget = \"https://bigeval.example:{}/\"\nca_file = \"{}\"\naddress = \"127.0.0.1\"\n\
         [upstreams.vendor.auth]\nkind = \"static\"\ntoken = \"tls-token\"\n",
        impostor.addr().port(),
        other.pem_path.display()
    ))
    .await;
    let response = get(&proxy.url("/vendor/x")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(impostor.request_count(), 0);
    let _ = std::fs::remove_file(&ca.pem_path);
    let _ = std::fs::remove_file(&other.pem_path);
}

/// An HTTPS origin that, like nginx (`keepalive_requests`, 1,000 by default, HTTP/2
/// included), ends each connection with a GOAWAY after `limit` requests. Counts the
/// connections it accepted. ALPN offers `h2` only when `http2` is set, else `http/1.1`.
struct ClosingOrigin {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for ClosingOrigin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// On `port`, or any free one with 0.
async fn closing_origin(ca: &PrivateCa, limit: usize, http2: bool, port: u16) -> ClosingOrigin {
    use hyper::server::conn::{http1, http2 as h2};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ca.leaf.clone()], ca.key.clone_key())
    .unwrap();
    tls.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    // A port just given up is free again once the old server's task has been dropped.
    let mut bound = tokio::net::TcpListener::bind(("127.0.0.1", port)).await;
    for _ in 0..50 {
        if bound.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        bound = tokio::net::TcpListener::bind(("127.0.0.1", port)).await;
    }
    let listener = bound.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            connections.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let count = AtomicUsize::new(0);
                let limit_reached = Arc::new(tokio::sync::Notify::new());
                let reached = limit_reached.clone();
                let service = hyper::service::service_fn(move |_request| {
                    if count.fetch_add(1, Ordering::SeqCst) + 1 == limit {
                        reached.notify_one();
                    }
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
                let io = TokioIo::new(tls);
                if http2 {
                    let connection =
                        h2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => return,
                        _ = limit_reached.notified() => connection.as_mut().graceful_shutdown(),
                    }
                    let _ = connection.await;
                } else {
                    let _ = http1::Builder::new().serve_connection(io, service).await;
                }
            });
        }
    });
    ClosingOrigin {
        port,
        accepted,
        server,
    }
}

fn closing_origin_config(origin: &ClosingOrigin, ca: &PrivateCa) -> String {
    format!(
        "[upstreams.vendor]\ntarget = \"https://localhost:{}/\"\nca_file = \"{}\"\n\
         [upstreams.vendor.auth]\nkind = \"static\"\ntoken = \"tls-token\"\n",
        origin.port,
        ca.pem_path.display()
    )
}

/// `waves` rounds of `concurrent` requests at once; every answer must be 200.
async fn waves_of_requests(proxy: &TestProxy, waves: usize, concurrent: usize) {
    for _ in 0..waves {
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..concurrent {
            let url = proxy.url("/vendor/x");
            requests.spawn(async move { get(&url).await.status() });
        }
        while let Some(status) = requests.join_next().await {
            assert_eq!(status.unwrap(), StatusCode::OK);
        }
    }
}

#[tokio::test]
async fn a_vendor_closing_http2_connections_costs_one_new_connection_each_time() {
    // 16 requests in flight when the vendor sends its GOAWAY used to make 16 TLS handshakes
    // for the one connection kept (the ALPN pool dials once per waiting request): 129 to 145
    // connections for these 161 requests.
    let ca = private_ca("goaway");
    let origin = closing_origin(&ca, 10, true, 0).await;
    let proxy = TestProxy::start(&closing_origin_config(&origin, &ca)).await;
    assert_eq!(get(&proxy.url("/vendor/x")).await.status(), StatusCode::OK);
    waves_of_requests(&proxy, 10, 16).await;
    // A GOAWAY after every 10th request (hyper's graceful one lets the streams already on
    // their way finish, so a connection serves a few more): a new connection for each, one
    // more when the HTTP/2-only client takes over from the first request's.
    let accepted = origin.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (3..=20).contains(&accepted),
        "{accepted} connections for 161 requests"
    );
    let _ = std::fs::remove_file(&ca.pem_path);
}

#[tokio::test]
async fn a_vendor_that_stops_speaking_http2_is_reached_over_http11_again() {
    let ca = private_ca("h2-then-h1");
    let origin = closing_origin(&ca, 1000, true, 0).await;
    let port = origin.port;
    let proxy = TestProxy::start(&closing_origin_config(&origin, &ca)).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/vendor/x")).await.status(), StatusCode::OK);
    }
    // The same port, now HTTP/1.1 only (the old connection goes with the old server).
    drop(origin);
    let _origin = closing_origin(&ca, 1000, false, port).await;
    // At most one request fails (the HTTP/2-only handshake that finds no h2), then every
    // request is answered.
    let mut failed = 0;
    for _ in 0..5 {
        if get(&proxy.url("/vendor/x")).await.status() != StatusCode::OK {
            failed += 1;
        }
    }
    assert!(
        failed <= 1,
        "{failed} of 5 requests failed after the switch"
    );
    assert_eq!(get(&proxy.url("/vendor/x")).await.status(), StatusCode::OK);
    let _ = std::fs::remove_file(&ca.pem_path);
}
