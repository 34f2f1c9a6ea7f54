//! Shared test helpers: the real tokenproxy server started in-process on port 0, an HTTP
//! client, and request bodies. Upstreams and token servers are `tokenproxy_sim`.
#![allow(clippy::disallowed_types)] // Real servers on the real clock: deadlines use std time.
#![allow(dead_code)]

pub mod answer;
pub mod fleet;
pub mod oidc;
pub mod redis;

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokenproxy::config::{self, ProcessSources};
use tokenproxy::server::Server;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = UnsyncBoxBody<Bytes, BoxError>;

/// The real server, started in-process from a TOML config.
pub struct TestProxy {
    pub server: Server,
}

impl TestProxy {
    /// `toml` must not set `server.listen`; the proxy listens on a free loopback port.
    pub async fn start(toml: &str) -> TestProxy {
        // Tests never touch the user's own token store unless they bring their own.
        let store = if toml.contains("[store]") {
            ""
        } else {
            "[store]\npath = \"memory\"\n"
        };
        let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n{store}{toml}");
        let config =
            config::parse(&text, "test.toml", &ProcessSources).expect("test config is valid");
        let server = Server::start(&config).await.expect("server starts");
        TestProxy { server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }
}

pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `len` bytes of the echo server's download pattern, sent in 64 KiB chunks with no
/// declared length, so they go out chunked: a streamed upload.
pub fn pattern(len: u64) -> TestBody {
    PatternBody { sent: 0, len }.boxed_unsync()
}

struct PatternBody {
    sent: u64,
    len: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let chunk = (self.len - self.sent).min(64 * 1024);
        let data: Vec<u8> = (self.sent..self.sent + chunk)
            .map(|i| (i % 251) as u8)
            .collect();
        self.sent += chunk;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A generic client-credentials token server (client `svc` with `secret`) whose protected
/// API is on the same origin.
pub async fn client_credentials_sim(
    secret: &str,
    ttl: std::time::Duration,
) -> tokenproxy_sim::oauth::OAuthSim {
    use tokenproxy_sim::oauth::{self, OAuthSimConfig, SimClient};
    oauth::start(OAuthSimConfig {
        vendor: "generic".into(),
        token_path: "/oauth/token".into(),
        clients: vec![SimClient::confidential("svc", secret)],
        allow_client_credentials: true,
        access_ttl: ttl,
        ..OAuthSimConfig::default()
    })
    .await
}

/// Upstream `name` with a `static` token; `extra` lines go into its table.
pub fn static_upstream(name: &str, target: &str, token: &str, extra: &str) -> String {
    format!(
        "[upstreams.{name}]\ntarget = \"{target}\"\n{extra}\n[upstreams.{name}.auth]\nkind = \"static\"\ntoken = \"{token}\"\n"
    )
}

/// Upstream `name` of kind `client_credentials` against `sim`'s token endpoint and API.
pub fn client_credentials_upstream(
    name: &str,
    sim: &tokenproxy_sim::oauth::OAuthSim,
    secret: &str,
) -> String {
    format!(
        "[upstreams.{name}]\ntarget = \"{}/\"\n[upstreams.{name}.auth]\nkind = \"client_credentials\"\n\
         token_url = \"{}\"\nclient_id = \"svc\"\nclient_secret = \"{secret}\"\n",
        sim.url(),
        sim.token_url()
    )
}

/// An admin action (`POST /-/upstreams/NAME/ACTION`) as the status page and the CLI send it.
pub async fn post_action(url: &str) -> http::Response<Bytes> {
    send(
        http::Request::post(url)
            .header("tokenproxy-action", "1")
            .body(empty())
            .unwrap(),
    )
    .await
}

pub async fn get(url: &str) -> Response<Bytes> {
    send(Request::get(url).body(empty()).unwrap()).await
}

pub async fn send(request: Request<TestBody>) -> Response<Bytes> {
    let response = client()
        .request(request)
        .await
        .expect("request reaches the proxy");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body arrives").to_bytes();
    Response::from_parts(parts, body)
}

pub fn json(response: &Response<Bytes>) -> serde_json::Value {
    serde_json::from_slice(response.body())
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(response.body())))
}

/// The values of header `name` in an echo report, in order.
pub fn echoed(report: &serde_json::Value, name: &str) -> Vec<String> {
    report["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap().to_owned())
        .collect()
}

/// Reads an HTTP/1 response head byte by byte from a raw connection.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("response head arrives")
            .unwrap();
        assert_eq!(read, 1, "connection closed before the response head ended");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The real `tokenproxy` binary as a daemon, in a directory of its own: config in
/// `dir/tokenproxy.toml`, store under `dir/state/`.
pub struct Daemon {
    pub child: std::process::Child,
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub addr: String,
}

pub const BINARY: &str = env!("CARGO_BIN_EXE_tokenproxy");

/// A fresh directory under the system temp dir.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenproxy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `tokenproxy` run in `dir`, with config and state looked up only there.
pub fn tokenproxy(dir: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(BINARY);
    command
        .current_dir(dir)
        .env_remove("TOKENPROXY_CONFIG")
        .env_remove("TOKENPROXY_URL")
        .env_remove("TOKENPROXY_LISTEN")
        .env_remove("TOKENPROXY_CLIENT_KEY")
        .env_remove("BROWSER")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("HOME", dir);
    command
}

/// A line collector for a child's output, shared with the thread that reads it.
pub type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// `tokenproxy login NAME --no-browser` started in `dir`, its output collected, and the device
/// code it printed.
pub async fn start_device_login(
    dir: &std::path::Path,
    name: &str,
) -> (std::process::Child, Lines, Lines, String) {
    use std::process::Stdio;
    let mut login = tokenproxy(dir)
        .args(["login", name, "--no-browser"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = capture(login.stdout.take().unwrap());
    let stderr = capture(login.stderr.take().unwrap());
    let code = printed_device_code(&stdout, &stderr).await;
    (login, stdout, stderr, code)
}

/// The device code `tokenproxy login` printed ("and enter the code:  ABCD-EFGH"), waited for.
pub async fn printed_device_code(
    stdout: &std::sync::Mutex<Vec<String>>,
    stderr: &std::sync::Mutex<Vec<String>>,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = stdout.lock().unwrap().iter().find_map(|line| {
            line.strip_prefix("and enter the code:")
                .map(|code| code.trim().to_owned())
        });
        if let Some(code) = found {
            return code;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no code printed: {:?} {:?}",
            stdout.lock().unwrap(),
            stderr.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Polls `condition` every 20 ms until it holds, so a test goes on as soon as what it waits
/// for has happened; fails the test, saying what did not happen, after `within`.
pub async fn wait_until(
    within: std::time::Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs `command` with its output in files under `dir` (no pipe a stray grandchild could
/// hold open); kills it after `limit`. `None` for the status when it was killed.
#[allow(clippy::disallowed_methods)] // Blocking by design: callers run it off the runtime.
pub fn run_bounded(
    mut command: std::process::Command,
    dir: &std::path::Path,
    limit: std::time::Duration,
) -> (Option<std::process::ExitStatus>, String, String) {
    let (out, err) = (dir.join("node.stdout"), dir.join("node.stderr"));
    let mut child = command
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("node runs (bash scripts/test.sh installs what the browser tests need)");
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let read = |path: &std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    (status, read(&out), read(&err))
}

/// Collects a child's output lines as they come.
pub fn capture(
    stream: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Waits (10 s at most) for the `listen=ADDR` start-up line in a child's captured stderr.
/// With `child`, a child that exits first fails the test with its output.
pub async fn listening_address(
    stderr: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    mut child: Option<&mut std::process::Child>,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = stderr.lock().unwrap().iter().find_map(|line| {
            line.split("listen=").nth(1).map(|rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        });
        if let Some(addr) = found {
            return addr;
        }
        if let Some(child) = child.as_deref_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tokenproxy exited with {status}: {:?}",
                    stderr.lock().unwrap()
                );
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tokenproxy did not start: {:?}",
            stderr.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

impl Daemon {
    /// Starts `tokenproxy run` in `dir` and waits until it listens.
    pub async fn start(dir: &std::path::Path) -> Daemon {
        Daemon::start_with_env(dir, &[]).await
    }

    /// `start` with extra environment variables.
    pub async fn start_with_env(dir: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = tokenproxy(dir)
            .envs(env.iter().copied())
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = capture(child.stderr.take().unwrap());
        let addr = listening_address(&stderr, Some(&mut child)).await;
        Daemon {
            child,
            stderr,
            addr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn output(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
