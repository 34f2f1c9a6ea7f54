//! The token store and the one-shot commands, through the real binary: tokens survive a
//! kill -9, one daemon per store, a corrupt store is moved aside, and `login`, `logout`,
//! `status` and `token` work with and without a running daemon.
#![allow(clippy::disallowed_types)] // Real servers on the real clock: deadlines use std time.

mod support;

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tokenproxy_sim::amm::{self, AmmSimConfig};
use tokenproxy_sim::biganimal::{self, BigAnimalSimConfig};

fn store_path(dir: &Path) -> PathBuf {
    dir.join("state/tokenproxy/tokens.json")
}

fn amm_config(dir: &Path, sim: &amm::AmmSim) {
    std::fs::write(
        dir.join("tokenproxy.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.amm]\ntarget = \"{}/\"\n[upstreams.amm.auth]\nkind = \"amm\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\n",
            sim.url(),
            amm::DEFAULT_CLIENT_ID,
            amm::DEFAULT_CLIENT_SECRET,
            amm::DEFAULT_USERNAME,
            amm::DEFAULT_PASSWORD
        ),
    )
    .unwrap();
}

fn stored(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(store_path(dir)).unwrap()).unwrap()
}

async fn until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_kill_9_after_a_rotation_resumes_with_the_newest_refresh_token() {
    use std::os::unix::fs::PermissionsExt;
    let sim = amm::start(AmmSimConfig::default()).await;
    sim.set_access_ttl(Duration::from_secs(2));
    let dir = temp_dir("store-kill9");
    amm_config(&dir, &sim);

    let daemon = Daemon::start(&dir).await;
    assert_eq!(
        get(&daemon.url("/amm/api/v1/systems")).await.status(),
        StatusCode::OK
    );
    let first = stored(&dir)["upstreams"]["amm"]["access_token"].clone();
    until("a rotation", Duration::from_secs(5), || {
        sim.count_for_grant("refresh_token") >= 1
    })
    .await;
    // A request that succeeds with the new token proves it is in use, so it is on disk.
    until("the new token in the store", Duration::from_secs(5), || {
        stored(&dir)["upstreams"]["amm"]["access_token"] != first
    })
    .await;
    assert_eq!(
        get(&daemon.url("/amm/api/v1/systems")).await.status(),
        StatusCode::OK
    );
    let mode = std::fs::metadata(store_path(&dir))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(store_path(&dir).parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    daemon.kill_9();

    let rotations = sim.count_for_grant("refresh_token");
    let daemon = Daemon::start(&dir).await;
    until(
        "a rotation after the restart",
        Duration::from_secs(6),
        || sim.count_for_grant("refresh_token") > rotations,
    )
    .await;
    assert_eq!(
        get(&daemon.url("/amm/api/v1/systems")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        sim.refresh_token_reused(),
        0,
        "a consumed refresh token was sent"
    );
    assert_eq!(
        sim.count_for_grant("password"),
        1,
        "the restart needed no new password grant"
    );
}

#[tokio::test]
async fn a_second_daemon_on_the_same_store_refuses_to_start() {
    let sim = amm::start(AmmSimConfig::default()).await;
    let dir = temp_dir("store-lock");
    amm_config(&dir, &sim);
    let first = Daemon::start(&dir).await;
    let second = tokenproxy(&dir).arg("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "in use by another tokenproxy (pid {}",
            first.child.id()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&first.addr),
        "names where the first listens: {stderr}"
    );
}

#[tokio::test]
async fn a_corrupt_store_is_moved_aside_with_a_message() {
    use std::os::unix::fs::PermissionsExt;
    let sim = amm::start(AmmSimConfig::default()).await;
    let dir = temp_dir("store-corrupt");
    amm_config(&dir, &sim);
    std::fs::create_dir_all(store_path(&dir).parent().unwrap()).unwrap();
    std::fs::write(
        store_path(&dir),
        b"{\"version\": 1, \"upstreams\": {\"amm\": tru",
    )
    .unwrap();
    std::fs::set_permissions(store_path(&dir), std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = Daemon::start(&dir).await;
    assert_eq!(
        get(&daemon.url("/amm/api/v1/systems")).await.status(),
        StatusCode::OK
    );
    let output = daemon.output();
    assert!(output.contains("token store is corrupt"), "{output}");
    let aside: Vec<_> = std::fs::read_dir(store_path(&dir).parent().unwrap())
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("tokens.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert!(
        std::fs::read_to_string(aside[0].path())
            .unwrap()
            .ends_with("tru"),
        "kept as it was"
    );
}

#[tokio::test]
async fn device_login_from_the_command_line_takes_effect_in_the_running_daemon() {
    let sim = biganimal::start(BigAnimalSimConfig {
        interval: Duration::from_secs(1),
        ..BigAnimalSimConfig::default()
    })
    .await;
    let dir = temp_dir("store-login");
    std::fs::write(
        dir.join("tokenproxy.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.biganimal]\ntarget = \"{}/\"\n[upstreams.biganimal.auth]\nkind = \"biganimal\"\nprovider_url = \"{}\"\n",
            sim.api_url(),
            sim.provider_url()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&dir).await;
    assert_eq!(
        get(&daemon.url("/biganimal/clusters")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    let (mut login, stdout, stderr, code) = start_device_login(&dir, "biganimal").await;
    assert!(
        sim.approve(&code),
        "the printed code is the simulator's: {code}"
    );
    let exit = tokio::task::spawn_blocking(move || login.wait().unwrap())
        .await
        .unwrap();
    assert!(
        exit.success(),
        "{:?} {:?}",
        stdout.lock().unwrap(),
        stderr.lock().unwrap()
    );
    assert!(stdout
        .lock()
        .unwrap()
        .iter()
        .any(|line| line == "Logged in to biganimal."));
    // No restart: the daemon's requests succeed now.
    assert_eq!(
        get(&daemon.url("/biganimal/clusters")).await.status(),
        StatusCode::OK
    );
}

// Multi-threaded: the commands run as blocking child processes while the simulator serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_token_and_logout_with_a_daemon_and_without() {
    let sim = amm::start(AmmSimConfig::default()).await;
    let dir = temp_dir("store-commands");
    amm_config(&dir, &sim);

    // No daemon: `token` obtains one and stores it; `status` shows the store.
    let token = tokenproxy(&dir).args(["token", "amm"]).output().unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let printed = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    assert_eq!(
        stored(&dir)["upstreams"]["amm"]["access_token"],
        printed.as_str()
    );
    let status = tokenproxy(&dir).args(["status"]).output().unwrap();
    let table = String::from_utf8(status.stdout).unwrap();
    assert!(table.contains("daemon: not running"), "{table}");
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("amm") && line.contains("valid")),
        "{table}"
    );
    assert!(!table.contains(&printed));

    // With a daemon: it reuses the stored token, and the commands ask it.
    let daemon = Daemon::start(&dir).await;
    assert_eq!(
        get(&daemon.url("/amm/api/v1/systems")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        sim.count_for_grant("password"),
        1,
        "the stored token was used at start-up"
    );
    let token = tokenproxy(&dir).args(["token", "amm"]).output().unwrap();
    assert_eq!(String::from_utf8(token.stdout).unwrap().trim(), printed);
    let json_status = tokenproxy(&dir)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let json_text = String::from_utf8(json_status.stdout).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(parsed["upstreams"][0]["token"]["state"], "valid");
    // The token came from the store, obtained by the earlier command: that is its last
    // refresh, not "never".
    assert!(
        parsed["upstreams"][0]["token"]["last_refresh_unix"].is_u64(),
        "{json_text}"
    );
    let http_status = get(&daemon.url("/-/status")).await;
    let refresh_token = stored(&dir)["upstreams"]["amm"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for text in [
        json_text.as_str(),
        &String::from_utf8_lossy(http_status.body()),
    ] {
        assert!(
            !text.contains(&printed) && !text.contains(&refresh_token),
            "a token in the status: {text}"
        );
    }

    let logout = tokenproxy(&dir).args(["logout", "amm"]).output().unwrap();
    assert!(
        logout.status.success(),
        "{}",
        String::from_utf8_lossy(&logout.stderr)
    );
    assert!(String::from_utf8_lossy(&logout.stdout).contains("revoked"));
    assert_eq!(sim.expire_requests(), 1);
    assert!(
        stored(&dir)["upstreams"].get("amm").is_none(),
        "forgotten on disk"
    );
}

#[test]
fn unknown_upstreams_are_named_with_the_configured_ones() {
    let dir = temp_dir("store-unknown");
    std::fs::write(
        dir.join("tokenproxy.toml"),
        "[store]\npath = \"memory\"\n[upstreams.a]\ntarget = \"https://a.example/\"\n[upstreams.a.auth]\nkind = \"static\"\ntoken = \"t\"\n",
    )
    .unwrap();
    let output = tokenproxy(&dir).args(["token", "b"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no upstream named \"b\""));
    let output = tokenproxy(&dir).args(["token", "a"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "t");
}
