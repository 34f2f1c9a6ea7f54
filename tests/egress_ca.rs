//! The real binary's `ca init`, `ca bundle` and `env`, and the CA they create checked by
//! standard verifiers: rustls/webpki with the CA as the only root, and `openssl x509`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use support::*;
use tokenproxy::egress::ca::CertificateAuthority;

/// Two vendors: one on the default port, one on its own.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let ca_dir = dir.join("state").join("egress-ca");
    let config = format!(
        r#"
[egress]
listen = "127.0.0.1:3128"
ca_dir = "{}"

[upstreams.bigeval]
target = "https://bigeval.example/"
[upstreams.bigeval.auth]
kind = "static"
token = "t"

[upstreams.bigid]
target = "https://api.bigid.example:8443/"
[upstreams.bigid.auth]
kind = "static"
token = "t"
"#,
        ca_dir.display()
    );
    std::fs::write(dir.join("tokenproxy.toml"), config).unwrap();
    (dir, ca_dir)
}

fn run(dir: &Path, args: &[&str]) -> Output {
    tokenproxy(dir).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// What a client that trusts only this CA decides about `leaf` for `host`.
fn verify(ca_pem: &Path, leaf: &CertificateDer<'_>, host: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca_pem).unwrap())
        .unwrap();
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_server_cert(
            leaf,
            &[],
            &ServerName::try_from(host.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

/// A leaf for `host` signed with the CA's own key, bypassing `leaf_for`: what a thief of
/// the key could make.
fn forged_leaf(ca_dir: &Path, host: &str) -> CertificateDer<'static> {
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca-key.pem")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap(),
        key,
    )
    .unwrap();
    let params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    params.signed_by(&leaf_key, &issuer).unwrap().der().clone()
}

#[test]
fn ca_init_limits_the_ca_to_the_vendors_and_a_verifier_enforces_it() {
    let (dir, ca_dir) = setup("egress-ca-init");
    let output = run(&dir, &["ca", "init"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.contains("it can sign only for: api.bigid.example, bigeval.example"),
        "{stdout}"
    );
    let (cert, key) = (ca_dir.join("ca.pem"), ca_dir.join("ca-key.pem"));
    assert_eq!(mode(&ca_dir), 0o700);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!stdout.contains(key_body) && !text(&output.stderr).contains(key_body));
    assert!(!stdout.contains("PRIVATE KEY"));

    // Leaves from the CA's own minting verify for the vendors' hosts.
    let ca = CertificateAuthority::load(&ca_dir).unwrap();
    for host in ["bigeval.example", "api.bigid.example"] {
        let (chain, _key) = ca.leaf_for(host).unwrap();
        verify(&cert, &chain[0], host).unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    assert!(ca.leaf_for("www.google.com").is_err());

    // The key alone cannot make a certificate a client accepts for anyone else.
    let control = forged_leaf(&ca_dir, "bigeval.example");
    verify(&cert, &control, "bigeval.example").expect("the same path works for a vendor host");
    let forged = forged_leaf(&ca_dir, "www.google.com");
    let refused = verify(&cert, &forged, "www.google.com").expect_err("a non-vendor leaf");
    assert!(
        format!("{refused:?}").contains("NameConstraintViolation"),
        "refused for another reason: {refused:?}"
    );

    // OpenSSL reads the constraint as critical, permitting exactly the two hosts.
    let openssl = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let described = text(&openssl.stdout);
    assert!(
        described.contains("X509v3 Name Constraints: critical"),
        "{described}"
    );
    assert!(described.contains("DNS:bigeval.example"), "{described}");
    assert!(described.contains("DNS:api.bigid.example"), "{described}");
    assert!(described.contains("CA:TRUE, pathlen:0"), "{described}");
}

#[test]
fn a_second_init_without_force_fails_and_leaves_the_ca_alone() {
    let (dir, ca_dir) = setup("egress-ca-twice");
    assert!(run(&dir, &["ca", "init"]).status.success());
    let before = (
        std::fs::read(ca_dir.join("ca.pem")).unwrap(),
        std::fs::read(ca_dir.join("ca-key.pem")).unwrap(),
    );
    let again = run(&dir, &["ca", "init"]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = text(&again.stderr);
    assert!(stderr.contains("a CA is already there"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    let after = (
        std::fs::read(ca_dir.join("ca.pem")).unwrap(),
        std::fs::read(ca_dir.join("ca-key.pem")).unwrap(),
    );
    assert_eq!(before, after);
    let forced = run(&dir, &["ca", "init", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_ne!(std::fs::read(ca_dir.join("ca-key.pem")).unwrap(), before.1);
}

#[test]
fn the_bundle_holds_system_roots_and_the_ca() {
    let (dir, ca_dir) = setup("egress-ca-bundle");
    let missing = run(&dir, &["ca", "bundle"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("tokenproxy ca init"));

    assert!(run(&dir, &["ca", "init"]).status.success());
    let out = dir.join("elsewhere.pem");
    let output = run(&dir, &["ca", "bundle", "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let ca = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap();
    for bundle in [out, ca_dir.join("bundle.pem")] {
        let pem = std::fs::read_to_string(&bundle).unwrap();
        assert!(pem.contains(ca.trim()), "{} lacks the CA", bundle.display());
        let certificates: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            certificates.len() >= 2,
            "{}: no system root besides the CA",
            bundle.display()
        );
        assert!(!pem.contains("PRIVATE KEY"));
    }
}

#[test]
fn env_prints_the_exports_a_shell_evals() {
    let (dir, ca_dir) = setup("egress-ca-env");
    assert!(run(&dir, &["ca", "init"]).status.success());
    let output = run(&dir, &["env"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let bundle = ca_dir.join("bundle.pem").display().to_string();
    let cert = ca_dir.join("ca.pem").display().to_string();
    for line in [
        "export HTTPS_PROXY=http://127.0.0.1:3128".to_owned(),
        "export HTTP_PROXY=http://127.0.0.1:3128".to_owned(),
        "export NO_PROXY=localhost,127.0.0.1,::1".to_owned(),
        format!("export SSL_CERT_FILE={bundle}"),
        format!("export REQUESTS_CA_BUNDLE={bundle}"),
        format!("export CURL_CA_BUNDLE={bundle}"),
        format!("export NODE_EXTRA_CA_CERTS={cert}"),
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} not in\n{stdout}"
        );
    }
    assert!(stdout.lines().all(|l| l.starts_with("export ")), "{stdout}");

    // With a client key the proxy URLs carry it, as clients send it (Basic), once encoded.
    let config = std::fs::read_to_string(dir.join("tokenproxy.toml")).unwrap();
    std::fs::write(
        dir.join("keyed.toml"),
        format!("[server]\nclient_key = \"k3y@with:odd/chars\"\n{config}"),
    )
    .unwrap();
    let keyed = run(&dir, &["--config", "keyed.toml", "env"]);
    assert!(keyed.status.success(), "{}", text(&keyed.stderr));
    assert!(
        text(&keyed.stdout)
            .lines()
            .any(|l| l
                == "export HTTPS_PROXY=http://tokenproxy:k3y%40with%3Aodd%2Fchars@127.0.0.1:3128"),
        "{}",
        text(&keyed.stdout)
    );
    assert!(text(&keyed.stderr).contains("keep this output private"));

    // Without [egress] there is nothing to point at: a config problem, exit 2.
    std::fs::write(
        dir.join("plain.toml"),
        "[upstreams.a]\ntarget = \"https://a.example/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n",
    )
    .unwrap();
    let plain = run(&dir, &["--config", "plain.toml", "env"]);
    assert_eq!(plain.status.code(), Some(2));
    assert!(text(&plain.stderr).contains("no [egress] table"));
}
