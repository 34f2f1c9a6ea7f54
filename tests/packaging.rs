//! The script-helper and container commands through the real binary: `init`, `health`,
//! `curl`, `completions`, and a whole config from the environment.

mod support;

use std::process::Stdio;

use support::*;
use tokenproxy_sim::echo;

#[test]
fn init_writes_a_private_starter_config_that_passes_check_and_is_not_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("pkg-init");
    let output = tokenproxy(&dir).arg("check").output().unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("tokenproxy init"),
        "the hint names init"
    );
    let output = tokenproxy(&dir).arg("init").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = dir.join("xdg-config/tokenproxy/config.toml");
    assert_eq!(
        std::fs::metadata(&written).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&written).unwrap();
    for vendor in ["biganimal", "bigid", "bigeval", "caepe", "amm"] {
        assert!(
            text.contains(&format!("[upstreams.{vendor}]")),
            "no section for {vendor}"
        );
    }
    let check = tokenproxy(&dir).arg("check").output().unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // A file in the way is a usage error: exit 2.
    let again = tokenproxy(&dir).arg("init").output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

#[test]
fn completions_for_every_shell() {
    let dir = temp_dir("pkg-completions");
    for (shell, marker) in [
        ("bash", "_tokenproxy()"),
        ("zsh", "#compdef tokenproxy"),
        ("fish", "complete -c tokenproxy"),
    ] {
        let output = tokenproxy(&dir)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success());
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..script.len().min(200)]
        );
        assert!(
            script.contains("login") && script.contains("token"),
            "{shell} knows the subcommands"
        );
    }
}

// Multi-threaded: the commands run as blocking child processes while the servers serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_config_from_the_environment_with_a_secret_file_and_health() {
    let upstream = echo::start().await;
    let dir = temp_dir("pkg-env");
    std::fs::write(dir.join("token"), "env-config-token\n").unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"memory\"\n[upstreams.api]\ntarget = \"{}/\"\n[upstreams.api.auth]\nkind = \"static\"\ntoken = \"${{file:{}}}\"\n",
        upstream.url(),
        dir.join("token").display()
    );
    let check = tokenproxy(&dir)
        .arg("check")
        .env("TOKENPROXY_CONFIG_TOML", &toml)
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("$TOKENPROXY_CONFIG_TOML: ok"));

    let mut child = tokenproxy(&dir)
        .arg("run")
        .env("TOKENPROXY_CONFIG_TOML", &toml)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = capture(child.stderr.take().unwrap());
    let addr = listening_address(&stderr, Some(&mut child)).await;
    let response = get(&format!("http://{addr}/api/x")).await;
    assert_eq!(
        echoed(&json(&response), "authorization"),
        ["Bearer env-config-token"]
    );
    let health = tokenproxy(&dir)
        .args(["health", "--url", &format!("http://{addr}/-/health")])
        .output()
        .unwrap();
    assert_eq!(health.status.code(), Some(0));
    let _ = child.kill();
    let _ = child.wait();
    let health = tokenproxy(&dir)
        .args(["health", "--url", &format!("http://{addr}/-/health")])
        .output()
        .unwrap();
    assert_eq!(health.status.code(), Some(1), "nothing listens any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_calls_the_upstream_with_its_token_headers() {
    let upstream = echo::start().await;
    let dir = temp_dir("pkg-curl");
    std::fs::write(
        dir.join("tokenproxy.toml"),
        format!(
            "[store]\npath = \"memory\"\n[upstreams.caepe-like]\ntarget = \"{}/api/\"\n[upstreams.caepe-like.auth]\nkind = \"static\"\ntoken = \"curl-token\"\nheaders = {{ Organization = \"acme\" }}\n",
            upstream.url()
        ),
    )
    .unwrap();
    let output = tokenproxy(&dir)
        .args([
            "curl",
            "caepe-like",
            "/v1/apps?x=1",
            "-s",
            "-H",
            "x-extra: yes",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["uri"], "/api/v1/apps?x=1");
    assert_eq!(echoed(&report, "authorization"), ["Bearer curl-token"]);
    assert_eq!(echoed(&report, "organization"), ["acme"]);
    assert_eq!(echoed(&report, "x-extra"), ["yes"]);
}

#[test]
fn bash_completion_offers_the_configured_upstream_names() {
    let dir = temp_dir("pkg-complete-names");
    let two = format!(
        "[store]\npath = \"memory\"\n{}{}",
        static_upstream("alpha", "https://a.example/", "t", ""),
        static_upstream("beta", "https://b.example/", "t", "")
    );
    std::fs::write(dir.join("tokenproxy.toml"), two).unwrap();
    std::fs::write(
        dir.join("other.toml"),
        static_upstream("gamma", "https://g.example/", "t", ""),
    )
    .unwrap();
    let bin_dir = std::path::Path::new(BINARY).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let complete = |words: &str| {
        let script = format!(
            "source <(tokenproxy completions bash); COMP_WORDS=({words}); \
             COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _tokenproxy_names; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let mut command = tokenproxy(&dir);
        command.env("PATH", &path);
        let output = std::process::Command::new("bash")
            .args(["-c", &script])
            .current_dir(&dir)
            .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{words}: {said}");
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(complete("tokenproxy login ''"), "alpha\nbeta\n");
    assert_eq!(complete("tokenproxy header b"), "beta\n");
    assert_eq!(complete("tokenproxy -c other.toml token ''"), "gamma\n");
    // Not where a name does not go: a second argument, or a command without one.
    assert!(!complete("tokenproxy curl alpha ''").contains("beta"));
    assert!(!complete("tokenproxy status ''").contains("alpha"));
}
