//! HTTPS upstreams on a private CA: `ca_file` makes them trusted, HTTP/2 is negotiated by
//! ALPN, and without the CA the handshake fails with a 502 (never an unverified send).

mod support;

use std::path::PathBuf;

use http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::*;
use tokenproxy::sim::echo;

struct PrivateCa {
    pem_path: PathBuf,
    leaf: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn private_ca(name: &str) -> PrivateCa {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
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
    let _ = std::fs::remove_file(&ca.pem_path);
}
