//! The one-shot commands against a running daemon through the real binary: `--url` (and
//! `$TOKENPROXY_URL`) with no config, a daemon whose store is in memory, and `header`,
//! which prints every header a forwarded request gets (CAEPE's `Organization` too).

mod support;

use std::path::Path;
use std::process::Output;

use http::StatusCode;
use support::*;
use tokenproxy_sim::{caepe, echo};

const ORGANIZATION: &str = "acme";

/// A daemon with a memory store: CAEPE's preset (token from the CAEPE simulator) in front
/// of the echo server, so a request shows exactly the headers it got.
async fn caepe_daemon(
    dir: &Path,
    echo: &echo::EchoServer,
    sim: &tokenproxy_sim::oauth::OAuthSim,
) -> Daemon {
    std::fs::write(
        dir.join("tokenproxy.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"memory\"\n\
             [upstreams.caepe]\ntarget = \"{}/\"\nheaders = {{ X-Team = \"data\" }}\n\
             [upstreams.caepe.auth]\nkind = \"caepe\"\ntoken_url = \"{}\"\n\
             username = \"{}\"\npassword = \"{}\"\norganization = \"{ORGANIZATION}\"\n",
            echo.url(),
            sim.token_url(),
            caepe::DEFAULT_USERNAME,
            caepe::DEFAULT_PASSWORD,
        ),
    )
    .unwrap();
    Daemon::start(dir).await
}

/// The CAEPE daemon in a fresh directory, and the headers a request through it carried.
async fn running(
    name: &str,
) -> (
    std::path::PathBuf,
    echo::EchoServer,
    tokenproxy_sim::oauth::OAuthSim,
    Daemon,
    Vec<String>,
) {
    let echo = echo::start().await;
    let sim = caepe::start(ORGANIZATION).await;
    let dir = temp_dir(name);
    let daemon = caepe_daemon(&dir, &echo, &sim).await;
    let sent = headers_through_the_proxy(&daemon).await;
    (dir, echo, sim, daemon, sent)
}

/// `tokenproxy ARGS` in `dir`, run off the runtime (the simulators serve meanwhile).
async fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokenproxy(dir);
    command.args(args).envs(env.iter().copied());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the exit code, and that the output (stdout or stderr) says `said`.
fn expect(output: &Output, code: i32, said: &str) {
    let text = format!("{}{}", stdout(output), stderr(output));
    assert_eq!(output.status.code(), Some(code), "{text}");
    assert!(text.contains(said), "{said:?} not in: {text}");
}

/// What the echo server received for a request through the proxy: the header lines
/// `header` should print.
async fn headers_through_the_proxy(daemon: &Daemon) -> Vec<String> {
    let response = get(&daemon.url("/caepe/anything")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let report = json(&response);
    ["x-team", "authorization", "organization"]
        .iter()
        .map(|name| format!("{name}: {}", echoed(&report, name).join(",")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_reaches_a_memory_store_daemon_with_no_config_read() {
    let (_dir, _echo, _sim, daemon, sent) = running("cli-url-daemon").await;
    let base = daemon.url("");

    // A directory with no config: only --url (or the variable) says where tokenproxy is.
    let elsewhere = temp_dir("cli-url-elsewhere");
    let token = run(&elsewhere, &["token", "caepe", "--url", &base], &[]).await;
    assert_eq!(token.status.code(), Some(0), "{}", stderr(&token));
    assert_eq!(
        format!("authorization: Bearer {}", stdout(&token).trim()),
        sent[1],
        "the token the daemon sends"
    );

    let header = run(
        &elsewhere,
        &["header", "caepe"],
        &[("TOKENPROXY_URL", &base)],
    )
    .await;
    assert_eq!(header.status.code(), Some(0), "{}", stderr(&header));
    let printed: Vec<String> = stdout(&header)
        .lines()
        .map(|line| {
            let (name, value) = line.split_once(": ").expect("Name: value");
            format!("{}: {value}", name.to_ascii_lowercase())
        })
        .collect();
    assert_eq!(printed, sent, "every header a forwarded request gets");

    let curl = run(
        &elsewhere,
        &["header", "caepe", "--curl", "--url", &base],
        &[],
    )
    .await;
    assert_eq!(
        stdout(&curl).trim(),
        format!(
            "-H 'x-team: data' -H 'authorization: Bearer {}' -H 'organization: {ORGANIZATION}'",
            stdout(&token).trim()
        )
    );

    let status = run(&elsewhere, &["status", "--url", &base], &[]).await;
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(
        stdout(&status).contains(&format!("daemon: {base}")),
        "{}",
        stdout(&status)
    );
    assert!(
        stdout(&status)
            .lines()
            .any(|line| line.starts_with("caepe") && line.contains("valid")),
        "{}",
        stdout(&status)
    );

    let logout = run(&elsewhere, &["logout", "caepe", "--url", &base], &[]).await;
    assert_eq!(logout.status.code(), Some(0), "{}", stderr(&logout));
    let login = run(&elsewhere, &["login", "caepe", "--url", &base], &[]).await;
    expect(&login, 0, "token obtained");

    // An upstream the daemon does not have is a usage error naming the ones it has.
    let unknown = run(&elsewhere, &["token", "nosuch", "--url", &base], &[]).await;
    expect(&unknown, 2, "it has: caepe");

    // Nothing listening there: says so, exit 1.
    drop(daemon);
    let gone = run(&elsewhere, &["status", "--url", &base], &[]).await;
    expect(&gone, 1, "no tokenproxy answers at");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_finds_a_memory_store_daemon_for_token_and_header() {
    let (dir, _echo, sim, daemon, sent) = running("cli-memory-daemon").await;
    // The config says listen on port 0; the daemon is found at the port it took only
    // through --url, so point the config at it as a user's would be.
    let config = std::fs::read_to_string(dir.join("tokenproxy.toml"))
        .unwrap()
        .replace("127.0.0.1:0", &daemon.addr);
    std::fs::write(dir.join("tokenproxy.toml"), config).unwrap();

    let token = run(&dir, &["token", "caepe"], &[]).await;
    assert_eq!(token.status.code(), Some(0), "{}", stderr(&token));
    assert_eq!(
        format!("authorization: Bearer {}", stdout(&token).trim()),
        sent[1]
    );
    assert_eq!(
        sim.count_for_grant("password"),
        1,
        "the daemon's token, not a new one"
    );

    let unknown = run(&dir, &["header", "nosuch"], &[]).await;
    expect(&unknown, 2, "configured: caepe");
}

#[tokio::test]
async fn the_token_action_is_refused_to_other_sites_and_to_plain_posts() {
    let echo = echo::start().await;
    let proxy = TestProxy::start(&static_upstream(
        "api",
        &format!("{}/", echo.url()),
        "tok-1",
        "",
    ))
    .await;
    let url = proxy.url("/-/upstreams/api/token");
    let refused = [
        http::Request::post(&url).body(empty()).unwrap(),
        http::Request::post(&url)
            .header("tokenproxy-action", "1")
            .header("origin", "http://evil.example")
            .body(empty())
            .unwrap(),
        http::Request::get(&url)
            .header("tokenproxy-action", "1")
            .body(empty())
            .unwrap(),
    ];
    for request in refused {
        let response = send(request).await;
        assert!(
            response.status().is_client_error(),
            "{:?}",
            response.status()
        );
        assert!(!String::from_utf8_lossy(response.body()).contains("tok-1"));
    }
    let answer = json(&post_action(&url).await);
    assert_eq!(answer["token"], "tok-1");
    assert_eq!(
        answer["headers"],
        serde_json::json!([["authorization", "Bearer tok-1"]])
    );
}
