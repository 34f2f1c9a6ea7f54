//! The real binary: config errors and exit codes, `check`, and a whole run whose output is
//! searched for every secret and token it handled.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokenproxy_sim::echo;
use tokenproxy_sim::oauth::{self, OAuthSimConfig, SimClient};

#[test]
fn each_bad_config_is_one_line_naming_file_and_field_with_exit_2() {
    let dir = temp_dir("cli-bad");
    let cases = [
        ("unknown-field.toml", "[server]\nlisen = \"127.0.0.1:1\"\n", "unknown field `lisen`; did you mean `listen`? [server] takes: listen, "),
        (
            "unknown-auth-field.toml",
            "[upstreams.b]\ntarget = \"https://b.example/\"\n[upstreams.b.auth]\nkind = \"bigeval\"\nclient_id = \"i\"\nclient_secert = \"s\"\n",
            "upstreams.b.auth.client_secert: unknown field `client_secert`; did you mean `client_secret`? kind \"bigeval\" takes: kind, ",
        ),
        (
            "duplicate-prefix.toml",
            "[upstreams.a]\ntarget = \"https://a.example/\"\nprefix = \"/x\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n[upstreams.b]\ntarget = \"https://b.example/\"\nprefix = \"/x\"\n[upstreams.b.auth]\nkind = \"static\"\ntoken = \"t\"\n",
            "upstreams.b.prefix: \"/x\" is already the prefix of upstream a",
        ),
        (
            "missing-secret.toml",
            "[upstreams.b]\ntarget = \"https://b.example/\"\n[upstreams.b.auth]\nkind = \"bigeval\"\nclient_id = \"i\"\n",
            "upstreams.b.auth.client_secret: missing",
        ),
        (
            "unset-env.toml",
            "[upstreams.b]\ntarget = \"https://b.example/\"\n[upstreams.b.auth]\nkind = \"static\"\ntoken = \"${TOKENPROXY_TEST_UNSET}\"\n",
            "upstreams.b.auth.token: environment variable TOKENPROXY_TEST_UNSET is not set",
        ),
        ("syntax.toml", "[upstreams\n", "line 1"),
        (
            "wide-without-key.toml",
            "[server]\nlisten = \"0.0.0.0:1\"\n[upstreams.b]\ntarget = \"https://b.example/\"\n[upstreams.b.auth]\nkind = \"static\"\ntoken = \"t\"\n",
            "server.client_key: required when listening beyond loopback (0.0.0.0:1)",
        ),
        (
            "wide-upstream-without-key.toml",
            "[upstreams.b]\ntarget = \"https://b.example/\"\nlisten = \"[::]:1\"\n[upstreams.b.auth]\nkind = \"static\"\ntoken = \"t\"\n",
            "server.client_key: required when listening beyond loopback ([::]:1)",
        ),
    ];
    for (file, text, expected) in cases {
        std::fs::write(dir.join(file), text).unwrap();
        for subcommand in ["check", "run"] {
            let output = tokenproxy(&dir)
                .args(["--config", file, subcommand])
                .env_remove("TOKENPROXY_TEST_UNSET")
                .output()
                .unwrap();
            let stderr = String::from_utf8(output.stderr).unwrap();
            assert_eq!(
                output.status.code(),
                Some(2),
                "{file} {subcommand}: {stderr}"
            );
            assert_eq!(
                stderr.lines().count(),
                1,
                "{file} {subcommand}: not one line: {stderr}"
            );
            assert!(
                stderr.contains(file),
                "{file}: does not name the file: {stderr}"
            );
            assert!(
                stderr.contains(expected),
                "{file}: expected {expected:?} in {stderr}"
            );
            // Only the fields of that kind: BigID's user token is none of BiG EVAL's.
            assert!(!stderr.contains("user_token"), "{stderr}");
        }
    }
}

#[test]
fn an_unauthenticated_wide_listener_is_an_explicit_choice_warned_at_every_check() {
    let dir = temp_dir("cli-wide-opt-out");
    std::fs::write(
        dir.join("tokenproxy.toml"),
        "[server]\nlisten = \"0.0.0.0:8080\"\nallowed_hosts = [\"tokenproxy\"]\nallow_unauthenticated_beyond_loopback = true\n[store]\npath = \"memory\"\n[upstreams.a]\ntarget = \"https://a.example/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n",
    )
    .unwrap();
    let output = tokenproxy(&dir).arg("check").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("server.allow_unauthenticated_beyond_loopback"),
        "{stderr}"
    );
}

#[test]
fn no_config_anywhere_says_where_it_looked() {
    let dir = temp_dir("cli-none");
    let output = tokenproxy(&dir).arg("check").output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tokenproxy.toml"), "{stderr}");
    assert!(
        stderr.contains("xdg-config/tokenproxy/config.toml"),
        "{stderr}"
    );
}

#[test]
fn config_is_found_through_the_lookup_order() {
    let dir = temp_dir("cli-lookup");
    let good = "[upstreams.a]\ntarget = \"https://a.example/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n";
    std::fs::create_dir_all(dir.join("xdg-config/tokenproxy")).unwrap();
    std::fs::write(dir.join("xdg-config/tokenproxy/config.toml"), good).unwrap();
    let output = tokenproxy(&dir).arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout)
        .contains("xdg-config/tokenproxy/config.toml: ok, 1 upstream"));

    // ./tokenproxy.toml comes before XDG, $TOKENPROXY_CONFIG before both.
    std::fs::write(dir.join("tokenproxy.toml"), good).unwrap();
    let output = tokenproxy(&dir).arg("check").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("tokenproxy.toml: ok"));
    std::fs::write(dir.join("env.toml"), "broken = ").unwrap();
    let output = tokenproxy(&dir)
        .arg("check")
        .env("TOKENPROXY_CONFIG", "env.toml")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("env.toml"));
}

#[tokio::test]
async fn a_whole_run_at_debug_level_prints_no_secret_and_exits_0_on_sigterm() {
    const CLIENT_SECRET: &str = "client-secret-7f3a9c";
    const PASSWORD: &str = "user-password-51d2e8";
    const WRONG_SECRET: &str = "wrong-secret-c0ffee";
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
        access_ttl: Duration::from_secs(300),
        refresh_ttl: Some(Duration::from_secs(600)),
        ..OAuthSimConfig::default()
    })
    .await;
    let dir = temp_dir("cli-secrets");
    std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstreams.cc]
target = "{echo}/"
[upstreams.cc.auth]
kind = "client_credentials"
token_url = "{token}"
client_id = "svc"
client_secret = "${{TEST_CLIENT_SECRET}}"
[upstreams.pw]
target = "{echo}/"
[upstreams.pw.auth]
kind = "password"
token_url = "{token}"
client_id = "svc"
client_secret = "${{TEST_CLIENT_SECRET}}"
username = "alice"
password = "${{file:{dir}/password}}"
[upstreams.wrong]
target = "{echo}/"
[upstreams.wrong.auth]
kind = "client_credentials"
token_url = "{token}"
client_id = "svc"
client_secret = "{WRONG_SECRET}"
"#,
        echo = upstream.url(),
        token = sim.token_url(),
        dir = dir.display()
    );
    std::fs::write(dir.join("tokenproxy.toml"), config).unwrap();
    let mut child = tokenproxy(&dir)
        .env("TOKENPROXY_LOG", "debug")
        .env("TEST_CLIENT_SECRET", CLIENT_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = capture(child.stderr.take().unwrap());
    let stdout = capture(child.stdout.take().unwrap());

    let addr = listening_address(&stderr, Some(&mut child)).await;

    let mut tokens = Vec::new();
    for name in ["cc", "pw"] {
        let response = get(&format!("http://{addr}/{name}/x")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let authorization = echoed(&json(&response), "authorization").remove(0);
        tokens.push(authorization.trim_start_matches("Bearer ").to_owned());
    }
    let refused = get(&format!("http://{addr}/wrong/x")).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!String::from_utf8_lossy(refused.body()).contains(WRONG_SECRET));
    let status = get(&format!("http://{addr}/-/status")).await;

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0), "graceful exit on SIGTERM");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let output = format!(
        "{}\n{}\n{}",
        stderr.lock().unwrap().join("\n"),
        stdout.lock().unwrap().join("\n"),
        String::from_utf8_lossy(status.body())
    );
    assert!(
        output.contains("token request failed"),
        "the failure was logged: {output}"
    );
    // States and lifetimes as a person reads them, not as Rust prints its values.
    // The start-up line names each token's state by its label; whether the refresher has
    // begun by then (`refreshing`) or not (`pending`) is a race.
    let states: Vec<&str> = output
        .split(" token=")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(!states.is_empty(), "{output}");
    for state in states {
        assert!(
            tokenproxy::credential::TokenState::ALL
                .iter()
                .any(|known| known.label() == state),
            "token={state} is not a state label: {output}"
        );
    }
    let lifetime = output
        .split(" expires_in=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    assert!(
        lifetime.ends_with('s') && lifetime[..lifetime.len() - 1].parse::<u64>().is_ok(),
        "expires_in={lifetime} in {output}"
    );
    for debug in ["Some(", "None", "Pending"] {
        assert!(!output.contains(debug), "{debug} in the log: {output}");
    }
    for secret in [
        CLIENT_SECRET,
        PASSWORD,
        WRONG_SECRET,
        &tokens[0],
        &tokens[1],
    ] {
        assert!(
            !output.contains(secret),
            "{secret} appears in the output:\n{output}"
        );
    }
}

/// `dir/tokenproxy.toml`: one static upstream, a memory store, `server.listen = listen`.
fn config_listening(dir: &std::path::Path, listen: &str) {
    let upstream = static_upstream("a", "https://a.example/", "t", "");
    let text = format!("[server]\nlisten = \"{listen}\"\n[store]\npath = \"memory\"\n{upstream}");
    std::fs::write(dir.join("tokenproxy.toml"), text).unwrap();
}

/// Waits until a child's captured stderr holds `words`: the thread reading the pipe may
/// still be at it when the child has exited.
async fn said_eventually(stderr: &Lines, words: &str) {
    let what = format!("{words:?} in the output");
    wait_until(std::time::Duration::from_secs(5), &what, async || {
        stderr.lock().unwrap().join("\n").contains(words)
    })
    .await;
}

/// Waits for `child` off the runtime; its exit code.
async fn exit_code(mut child: std::process::Child) -> Option<i32> {
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
        .code()
}

/// `tokenproxy run ARGS` in `dir` with `env`, its stderr collected.
fn run_with(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, Lines) {
    let mut child = tokenproxy(dir)
        .arg("run")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = capture(child.stderr.take().unwrap());
    (child, stderr)
}

#[tokio::test]
async fn run_listens_where_the_flag_or_the_variable_says_and_names_both_when_taken() {
    let dir = temp_dir("cli-listen");
    // The file's address is taken: the flag and the variable are what make it start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    config_listening(&dir, &taken_addr);
    for (args, env) in [
        (vec!["--listen", "localhost:0"], vec![]),
        (vec![], vec![("TOKENPROXY_LISTEN", "127.0.0.1:0")]),
    ] {
        let (mut child, stderr) = run_with(&dir, &args, &env);
        let addr = listening_address(&stderr, Some(&mut child)).await;
        assert!(
            addr.starts_with("127.0.0.1:") && addr != taken_addr,
            "{addr}"
        );
        assert_eq!(
            get(&format!("http://{addr}/-/health")).await.status(),
            StatusCode::OK
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    let (child, _) = run_with(&dir, &[], &[]);
    assert_eq!(exit_code(child).await, Some(1));
    let (child, stderr) = run_with(&dir, &["--listen", &taken_addr], &[]);
    assert_eq!(exit_code(child).await, Some(1));
    for words in [
        "in use",
        "--listen ADDR",
        "TOKENPROXY_LISTEN",
        "server.listen",
    ] {
        said_eventually(&stderr, words).await;
    }
    drop(taken);

    // What the flag sets is checked like the file: beyond loopback needs a client key.
    let (child, stderr) = run_with(&dir, &["--listen", "0.0.0.0:0"], &[]);
    assert_eq!(exit_code(child).await, Some(2));
    said_eventually(&stderr, "server.client_key: required").await;
    let (child, _) = run_with(&dir, &["--listen", "nowhere"], &[]);
    assert_eq!(exit_code(child).await, Some(2));
}

#[test]
fn listen_takes_localhost_and_a_bare_port() {
    let dir = temp_dir("cli-listen-forms");
    for listen in ["localhost:8080", "LOCALHOST:8080", "8080", "[::1]:8080"] {
        config_listening(&dir, listen);
        let output = tokenproxy(&dir).arg("check").output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{listen}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::write(
        dir.join("tokenproxy.toml"),
        "[server]\nlisten = \"example.com:8080\"\n",
    )
    .unwrap();
    let output = tokenproxy(&dir).arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.listen"));
}

#[test]
fn a_config_with_secrets_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("cli-readable-secrets");
    let file = dir.join("tokenproxy.toml");
    std::fs::write(
        &file,
        "[upstreams.b]\ntarget = \"https://b.example/\"\n[upstreams.b.auth]\nkind = \"bigeval\"\nclient_id = \"i\"\nclient_secret = \"literal-secret\"\n[upstreams.c]\ntarget = \"https://c.example/\"\n[upstreams.c.auth]\nkind = \"static\"\ntoken = \"${TOKENPROXY_TEST_TOKEN}\"\n",
    )
    .unwrap();
    let check = |mode| {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let output = tokenproxy(&dir)
            .arg("check")
            .env("TOKENPROXY_TEST_TOKEN", "from-the-environment")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0));
        String::from_utf8(output.stderr).unwrap()
    };
    let warned = check(0o644);
    assert!(warned.contains("chmod 600 tokenproxy.toml"), "{warned}");
    assert!(
        warned.contains("upstreams.b.auth.client_secret"),
        "{warned}"
    );
    assert!(!warned.contains("upstreams.c.auth.token"), "{warned}");
    assert!(!warned.contains("literal-secret"), "{warned}");
    assert_eq!(check(0o600), "");
}
