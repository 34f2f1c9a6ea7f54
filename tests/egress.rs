//! Egress mode end to end: real clients (curl, Python requests, Node fetch through undici)
//! keep the vendor's URL and only get `HTTPS_PROXY` and a CA to trust; tokenproxy
//! terminates their TLS with a leaf from its local CA and forwards to a BiG EVAL simulator
//! over verified TLS with the token, which the client never sees. Plain-http vendors are
//! reached in absolute form. Everything else is refused before anything is dialed.
#![allow(clippy::disallowed_types)] // Real servers on the real clock.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use support::*;
use tokenproxy::config::{self, ProcessSources};
use tokenproxy::egress::ca;
use tokenproxy_sim::{bigeval, echo, oauth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENT_ID: &str = "egress-client";
const CLIENT_SECRET: &str = "egress-secret-value";
const PLAIN_TOKEN: &str = "plain-static-token";
const CLIENT_KEY: &str = "egress-client-key-0123456789";

/// A BiG EVAL server at `https://bigeval.example:PORT` (really 127.0.0.1, with a
/// certificate from a CA of the test's: the vendor's public CA), a plain-http vendor at
/// `http://plain.example:PORT`, and tokenproxy with egress on and its own CA made by
/// `ca init` for the config.
struct Setup {
    proxy: TestProxy,
    bigeval: oauth::OAuthSim,
    plain: echo::EchoServer,
    dir: PathBuf,
    ca_pem: PathBuf,
}

struct Options<'a> {
    client_key: bool,
    passthrough: &'a [String],
    /// The hosts `ca init` sees: the config's own when `None`.
    ca_for: Option<&'a str>,
}

const DEFAULTS: Options<'static> = Options {
    client_key: false,
    passthrough: &[],
    ca_for: None,
};

impl Setup {
    async fn start(name: &str, options: Options<'_>) -> Setup {
        let dir = temp_dir(&format!("egress-{name}"));
        let (vendor_ca, leaf, key) = vendor_certificate(&dir);
        let bigeval =
            oauth::start_tls(bigeval::config(CLIENT_ID, CLIENT_SECRET), vec![leaf], key).await;
        let plain = echo::start().await;
        let ca_dir = dir.join("egress-ca");
        let passthrough: Vec<String> = options
            .passthrough
            .iter()
            .map(|rule| format!("{rule:?}"))
            .collect();
        let server = if options.client_key {
            format!("client_key = \"{CLIENT_KEY}\"\n")
        } else {
            String::new()
        };
        let port = bigeval.addr().port();
        let toml = format!(
            r#"{server}[store]
path = "memory"

[egress]
listen = "127.0.0.1:0"
ca_dir = "{ca_dir}"
passthrough = [{passthrough}]

[upstreams.bigeval]
target = "https://bigeval.example:{port}/"
address = "127.0.0.1"
ca_file = "{vendor_ca}"
[upstreams.bigeval.auth]
kind = "bigeval"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
token_url = "https://127.0.0.1:{port}/connect/token"

[upstreams.plain]
target = "http://plain.example:{plain_port}/"
address = "127.0.0.1"
[upstreams.plain.auth]
kind = "static"
token = "{PLAIN_TOKEN}"
"#,
            ca_dir = ca_dir.display(),
            passthrough = passthrough.join(", "),
            vendor_ca = vendor_ca.display(),
            plain_port = plain.addr().port(),
        );
        let ca_config = match options.ca_for {
            Some(other) => toml.replace("bigeval.example", other),
            None => toml.clone(),
        };
        let ca_config = config::parse(
            &format!("[server]\nlisten = \"127.0.0.1:0\"\n{ca_config}"),
            "test.toml",
            &ProcessSources,
        )
        .unwrap();
        ca::init(&ca_dir, &ca::scope_of(&ca_config), false).unwrap();
        let proxy = TestProxy::start(&toml).await;
        Setup {
            proxy,
            bigeval,
            plain,
            dir,
            ca_pem: ca_dir.join(ca::CERT_FILE),
        }
    }

    fn egress(&self) -> String {
        format!("http://{}", self.proxy.server.egress_addr().unwrap())
    }

    fn vendor_url(&self, path: &str) -> String {
        format!(
            "https://bigeval.example:{}{path}",
            self.bigeval.addr().port()
        )
    }

    fn plain_url(&self, path: &str) -> String {
        format!("http://plain.example:{}{path}", self.plain.addr().port())
    }

    /// BiG EVAL's current access token, as tokenproxy holds it.
    fn token(&self) -> String {
        let app = self.proxy.server.app();
        let credential = app.upstream("bigeval").unwrap().tokens.current().unwrap();
        let (_, value) = credential
            .headers
            .iter()
            .find(|(name, _)| name == http::header::AUTHORIZATION)
            .unwrap();
        let value = value.to_str().unwrap();
        value.strip_prefix("Bearer ").unwrap_or(value).to_owned()
    }

    /// Runs a client with only the proxy environment it is given.
    async fn run(&self, mut command: Command, env: &[(&str, String)]) -> (bool, String, String) {
        for variable in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
            "SSL_CERT_FILE",
            "CURL_CA_BUNDLE",
        ] {
            command.env_remove(variable);
        }
        command.envs(env.iter().map(|(name, value)| (*name, value.as_str())));
        let dir = self.dir.clone();
        let (status, out, err) = tokio::task::spawn_blocking(move || {
            run_bounded(command, &dir, Duration::from_secs(60))
        })
        .await
        .unwrap();
        (status.is_some_and(|status| status.success()), out, err)
    }

    /// One of `tests/interop`'s client scripts, fetching `url`: what it printed.
    async fn script(
        &self,
        interpreter: &str,
        script: &str,
        url: &str,
        env: &[(&str, String)],
    ) -> String {
        let mut command = Command::new(interpreter);
        command
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/interop")
                    .join(script),
            )
            .arg(url);
        let (ok, out, err) = self.run(command, env).await;
        assert!(ok, "{interpreter} {script}: {err}");
        out
    }

    async fn status(&self) -> serde_json::Value {
        let request = http::Request::get(self.proxy.url("/-/status"))
            .header("proxy-authorization", format!("Bearer {CLIENT_KEY}"))
            .body(empty())
            .unwrap();
        json(&send(request).await)
    }
}

/// The vendor's own CA and its leaf for `bigeval.example` (and 127.0.0.1, where its token
/// endpoint is reached).
fn vendor_certificate(dir: &Path) -> (PathBuf, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let vendor_ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["bigeval.example".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &vendor_ca)
        .unwrap();
    let path = dir.join("vendor-ca.pem");
    std::fs::write(&path, vendor_ca.pem()).unwrap();
    (
        path,
        leaf.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn curl(args: &[&str]) -> Command {
    let mut command = Command::new("curl");
    command.args(["--silent", "--show-error", "--max-time", "20"]);
    command.args(args);
    command
}

fn answer_of(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("not JSON: {out}"))
}

#[tokio::test]
async fn curl_keeps_the_vendor_url_and_the_vendor_gets_the_token_over_http1_and_http2() {
    let setup = Setup::start("curl", DEFAULTS).await;
    let ca = setup.ca_pem.display().to_string();
    let url = setup.vendor_url("/api/v1/testcases");
    for version in ["--http1.1", "--http2"] {
        // `-x` on the command line.
        let (ok, out, err) = setup
            .run(
                curl(&[
                    "-x",
                    &setup.egress(),
                    "--cacert",
                    &ca,
                    version,
                    "--write-out",
                    "\n%{http_code} %{http_version}",
                    "--include",
                    &url,
                ]),
                &[],
            )
            .await;
        assert!(ok, "{version}: {err}");
        let last = out.lines().last().unwrap();
        let expected = if version == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        assert_eq!(last, expected, "{out}");
        assert!(
            !out.contains(&setup.token()) && !out.contains(CLIENT_SECRET),
            "the client saw a secret: {out}"
        );
    }
    // `HTTPS_PROXY` and `CURL_CA_BUNDLE` alone.
    let (ok, out, err) = setup
        .run(
            curl(&["--write-out", "%{http_code}", "--output", "/dev/null", &url]),
            &[("HTTPS_PROXY", setup.egress()), ("CURL_CA_BUNDLE", ca)],
        )
        .await;
    assert!(ok, "{err}");
    assert_eq!(out, "200");
    // Every request reached the vendor's API with a token it issued, one token for all.
    assert_eq!(setup.bigeval.api_authorized(), 3);
    assert_eq!(setup.bigeval.tokens_issued(), 1);

    let status = setup.status().await;
    let bigeval = &status["upstreams"][0];
    assert_eq!(bigeval["name"], "bigeval");
    assert_eq!(bigeval["requests"]["egress"], 3, "{status}");
    assert_eq!(status["egress"]["intercepted_tunnels"], 3, "{status}");
    let metrics = get(&setup.proxy.url("/-/metrics")).await;
    let metrics = String::from_utf8_lossy(metrics.body()).into_owned();
    for line in [
        "tokenproxy_egress_requests_total{upstream=\"bigeval\"} 3",
        "tokenproxy_egress_tunnels_total{kind=\"intercepted\"} 3",
        "tokenproxy_egress_refused_total{reason=\"not_allowed\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn python_requests_and_node_fetch_work_from_the_environment_alone() {
    let setup = Setup::start("sdk", DEFAULTS).await;
    let url = setup.vendor_url("/api/v1/testcases");
    let ca = setup.ca_pem.display().to_string();
    let out = setup
        .script(
            "python3",
            "egress_requests.py",
            &url,
            &[
                ("HTTPS_PROXY", setup.egress()),
                ("REQUESTS_CA_BUNDLE", ca.clone()),
            ],
        )
        .await;
    assert_eq!(answer_of(&out)["status"], 200, "{out}");
    let out = setup
        .script(
            "node",
            "egress_fetch.mjs",
            &url,
            &[("HTTPS_PROXY", setup.egress()), ("NODE_EXTRA_CA_CERTS", ca)],
        )
        .await;
    assert_eq!(answer_of(&out)["status"], 200, "{out}");
    assert!(!out.contains(&setup.token()));
    assert_eq!(setup.bigeval.api_authorized(), 2);

    // The same clients reach the plain-http vendor in absolute form through HTTP_PROXY.
    let url = setup.plain_url("/items?page=2");
    let out = setup
        .script(
            "python3",
            "egress_requests.py",
            &url,
            &[("HTTP_PROXY", setup.egress())],
        )
        .await;
    assert_eq!(answer_of(&out)["status"], 200, "{out}");
    let seen = setup.plain.last_request().unwrap();
    assert_eq!(seen.uri, "/items?page=2");
    let header = |name: &str| {
        seen.headers
            .iter()
            .filter(|(header, _)| header == name)
            .map(|(_, value)| value.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(header("authorization"), [format!("Bearer {PLAIN_TOKEN}")]);
    assert_eq!(
        header("host"),
        [format!("plain.example:{}", setup.plain.addr().port())]
    );
    // The client addressed the vendor itself: no hop to report.
    assert!(header("x-forwarded-for").is_empty() && header("x-forwarded-host").is_empty());
}

/// A raw HTTP/1.1 exchange on the egress listener: the answer's head and body.
async fn raw(setup: &Setup, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(setup.proxy.server.egress_addr().unwrap())
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    let length = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .map_or(0, |length| length.trim().parse::<usize>().unwrap());
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn anything_but_a_vendor_is_refused_and_nothing_is_dialed() {
    let bystander = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bystander_addr = bystander.local_addr().unwrap();
    let setup = Setup::start("deny", DEFAULTS).await;
    for request in [
        format!("CONNECT {bystander_addr} HTTP/1.1\r\nHost: {bystander_addr}\r\n\r\n"),
        format!(
            "CONNECT localhost:{0} HTTP/1.1\r\nHost: localhost:{0}\r\n\r\n",
            bystander_addr.port()
        ),
        // A vendor's name on another port is not the vendor.
        format!(
            "CONNECT bigeval.example:{0} HTTP/1.1\r\nHost: bigeval.example:{0}\r\n\r\n",
            bystander_addr.port()
        ),
        format!("GET http://{bystander_addr}/ HTTP/1.1\r\nHost: {bystander_addr}\r\n\r\n"),
    ] {
        let (head, body) = raw(&setup, &request).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{request}: {head}");
        assert!(head
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"));
        assert!(body.contains("not an open proxy"), "{body}");
    }
    // The bystander's first connection is ours: tokenproxy never dialed it.
    let mut ours = TcpStream::connect(bystander_addr).await.unwrap();
    let (_, peer) = tokio::time::timeout(Duration::from_secs(5), bystander.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer, ours.local_addr().unwrap());
    ours.shutdown().await.unwrap();
    assert_eq!(setup.status().await["egress"]["refused_not_allowed"], 4);

    // A request sent to the egress listener as if it were the reverse proxy.
    let (head, body) = raw(&setup, "GET /bigeval/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(body.contains("HTTPS_PROXY"), "{body}");
    // And the reverse proxy refuses CONNECT, pointing at the egress listener.
    let mut stream = TcpStream::connect(setup.proxy.addr()).await.unwrap();
    stream
        .write_all(b"CONNECT bigeval.example:443 HTTP/1.1\r\nHost: bigeval.example:443\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 400"));
    assert_eq!(setup.bigeval.api_requests(), 0);
}

#[tokio::test]
async fn passthrough_hosts_are_tunnelled_blindly_on_their_port_only() {
    // A TCP service that answers every line with "pong: <line>".
    let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = service.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = service.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 64];
                while let Ok(read) = stream.read(&mut buffer).await {
                    if read == 0 || stream.write_all(b"pong: ").await.is_err() {
                        break;
                    }
                    let _ = stream.write_all(&buffer[..read]).await;
                }
            });
        }
    });
    let rules = [format!("localhost:{port}")];
    let setup = Setup::start(
        "passthrough",
        Options {
            passthrough: &rules,
            ..DEFAULTS
        },
    )
    .await;
    let mut stream = TcpStream::connect(setup.proxy.server.egress_addr().unwrap())
        .await
        .unwrap();
    stream
        .write_all(
            format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Not HTTP: the framing guard must not read the tunnel's bytes as a request.
    stream.write_all(b"ping\n\x00\r\n").await.unwrap();
    let mut echoed = vec![0u8; "pong: ping\n\x00\r\n".len()];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"pong: ping\n\x00\r\n");
    // The same host on another port is not in the rule.
    let (head, _) = raw(
        &setup,
        "CONNECT localhost:1 HTTP/1.1\r\nHost: localhost:1\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let status = setup.status().await;
    assert_eq!(status["egress"]["passthrough_tunnels"], 1, "{status}");
}

#[tokio::test]
async fn with_a_client_key_the_egress_listener_asks_for_it_as_proxy_authorization() {
    let setup = Setup::start(
        "key",
        Options {
            client_key: true,
            ..DEFAULTS
        },
    )
    .await;
    let url = setup.vendor_url("/api/v1/testcases");
    let ca = setup.ca_pem.display().to_string();
    let (head, body) = raw(
        &setup,
        "CONNECT bigeval.example:443 HTTP/1.1\r\nHost: bigeval.example:443\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert!(
        head.contains("proxy-authenticate: Basic realm=\"tokenproxy\""),
        "{head}"
    );
    assert!(
        body.contains("HTTPS_PROXY=http://tokenproxy:<client key>@"),
        "{body}"
    );
    // A wrong key: curl gets the 407 for its CONNECT.
    let wrong = setup
        .egress()
        .replace("http://", "http://tokenproxy:wrong-key@");
    let (ok, _, err) = setup
        .run(curl(&["--cacert", &ca, &url]), &[("HTTPS_PROXY", wrong)])
        .await;
    assert!(!ok && err.contains("407"), "{err}");
    // The key in the proxy URL, as every client sends it (Basic).
    let right = setup
        .egress()
        .replace("http://", &format!("http://tokenproxy:{CLIENT_KEY}@"));
    let (ok, out, err) = setup
        .run(
            curl(&[
                "--cacert",
                &ca,
                "--write-out",
                "%{http_code}",
                "--output",
                "/dev/null",
                &url,
            ]),
            &[("HTTPS_PROXY", right)],
        )
        .await;
    assert!(ok, "{err}");
    assert_eq!(out, "200");
    let status = setup.status().await;
    assert_eq!(status["egress"]["refused_proxy_auth"], 2, "{status}");
    assert_eq!(setup.bigeval.api_authorized(), 1);
}

/// A TLS connection through the egress listener to `host:port`, trusting tokenproxy's CA.
async fn tunnel(
    setup: &Setup,
    host: &str,
    port: u16,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut stream = TcpStream::connect(setup.proxy.server.egress_addr().unwrap())
        .await
        .unwrap();
    stream
        .write_all(
            format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&setup.ca_pem).unwrap();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host.to_owned()).unwrap(), stream)
        .await
        .unwrap()
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .map(Result::unwrap)
        .collect()
}

/// One HTTP/1.1 request inside a tunnel: the answer's head and body.
async fn inside(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
    request: &str,
) -> (String, String) {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn inside_a_tunnel_only_its_vendor_is_served_and_web_pages_are_refused() {
    let setup = Setup::start("inside", DEFAULTS).await;
    let port = setup.bigeval.addr().port();
    // Another host named inside a tunnel to BiG EVAL: its token must not go there.
    let mut stream = tunnel(&setup, "bigeval.example", port).await;
    let (head, body) = inside(
        &mut stream,
        "GET /api/v1/testcases HTTP/1.1\r\nHost: plain.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 421"), "{head}");
    assert!(
        body.contains("tunnel was opened to bigeval.example"),
        "{body}"
    );
    // A web page's request (a browser set to use the proxy) never spends the token.
    let mut stream = tunnel(&setup, "bigeval.example", port).await;
    let (head, _) = inside(
        &mut stream,
        &format!("GET /api/v1/testcases HTTP/1.1\r\nHost: bigeval.example:{port}\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // A bare LF inside the tunnel is refused as on the reverse-proxy listener.
    let mut stream = tunnel(&setup, "bigeval.example", port).await;
    let (head, _) = inside(
        &mut stream,
        &format!("GET /api/v1/testcases HTTP/1.1\nHost: bigeval.example:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(setup.bigeval.api_requests(), 0);
    // The vendor's own request goes through.
    let mut stream = tunnel(&setup, "bigeval.example", port).await;
    let (head, _) = inside(
        &mut stream,
        &format!("GET /api/v1/testcases HTTP/1.1\r\nHost: bigeval.example:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(setup.bigeval.api_authorized(), 1);
}

#[tokio::test]
async fn a_ca_made_before_the_vendor_was_configured_cannot_sign_for_it_until_made_again() {
    let setup = Setup::start(
        "stale-ca",
        Options {
            ca_for: Some("older.example"),
            ..DEFAULTS
        },
    )
    .await;
    let port = setup.bigeval.addr().port();
    let (head, body) = raw(
        &setup,
        &format!("CONNECT bigeval.example:{port} HTTP/1.1\r\nHost: bigeval.example:{port}\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    assert!(body.contains("tokenproxy ca init --force"), "{body}");
    assert_eq!(setup.bigeval.api_requests(), 0);

    // `ca init --force` for the current upstreams: the running proxy takes the new CA up
    // at the next tunnel.
    let scope = ca::Scope::Limited(vec![
        ca::Host::Dns("bigeval.example".into()),
        ca::Host::Dns("plain.example".into()),
    ]);
    ca::init(setup.ca_pem.parent().unwrap(), &scope, true).unwrap();
    let (ok, out, err) = setup
        .run(
            curl(&[
                "-x",
                &setup.egress(),
                "--cacert",
                &setup.ca_pem.display().to_string(),
                "--write-out",
                "%{http_code}",
                "--output",
                "/dev/null",
                &setup.vendor_url("/api/v1/testcases"),
            ]),
            &[],
        )
        .await;
    assert!(ok, "{err}");
    assert_eq!(out, "200");
}

#[tokio::test]
async fn egress_without_a_ca_does_not_start_and_says_how_to_make_one() {
    let dir = temp_dir("egress-no-ca");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"memory\"\n[egress]\nlisten = \"127.0.0.1:0\"\nca_dir = \"{}\"\n{}",
        dir.join("nothing-here").display(),
        static_upstream("vendor", "https://vendor.example/", "t", "")
    );
    let config = config::parse(&text, "test.toml", &ProcessSources).unwrap();
    let Err(error) = tokenproxy::server::Server::start(&config).await else {
        panic!("started without a CA");
    };
    let message = error.to_string();
    assert!(
        message.starts_with("egress.ca_dir: ") && message.contains("tokenproxy ca init"),
        "{message}"
    );
}
