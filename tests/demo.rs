//! `tokenproxy demo` as a newcomer runs it: the real binary, every curl line it prints
//! answers 200 through the proxy.
#![allow(clippy::disallowed_types)] // Real servers on the real clock: deadlines use std time.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

#[tokio::test]
async fn every_printed_curl_line_answers_200() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokenproxy"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|line| !line.starts_with("Stop with"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let urls: Vec<String> = lines
        .iter()
        .filter_map(|line| line.trim().strip_prefix("curl -s "))
        .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        .collect();
    for vendor in ["biganimal", "bigid", "bigeval", "caepe", "amm"] {
        assert!(
            urls.iter().any(|url| url.contains(&format!("/{vendor}/"))),
            "no line for {vendor}: {lines:?}"
        );
    }
    // BigAnimal's device login is approved by its simulator within a couple of seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answers = std::collections::HashMap::new();
    for url in &urls {
        loop {
            let response = get(url).await;
            if response.status() == StatusCode::OK {
                let upstream = url.split('/').nth(3).unwrap().to_owned();
                answers.insert(upstream, json(&response));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url} answered {}: {:?}",
                response.status(),
                response.body()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Each vendor answers with data shaped like its API, not a bare "authorized".
    let shaped = [
        ("biganimal", "/data/0/clusterName"),
        ("bigid", "/data/ds_connections/0/type"),
        ("bigeval", "/items/0/testType"),
        ("caepe", "/items/0/status"),
        ("amm", "/items/0/gateway/imei"),
    ];
    for (vendor, pointer) in shaped {
        let answer = &answers[vendor];
        assert!(
            answer
                .pointer(pointer)
                .is_some_and(|value| value.is_string()),
            "{vendor}: {answer}"
        );
        assert!(answer.get("authorized").is_none(), "{vendor}: {answer}");
    }
    assert_eq!(
        answers["caepe"]["organization"], "acme",
        "scoped by the injected header"
    );
    // The echo shows the injection itself: a token from a real grant, and Organization.
    let echo = &answers["echo"];
    let authorization = echoed(echo, "authorization");
    assert!(
        authorization.len() == 1
            && authorization[0].len() > "Bearer ".len() + 16
            && authorization[0].starts_with("Bearer "),
        "{echo}"
    );
    assert_eq!(echoed(echo, "organization"), ["acme"], "{echo}");

    // The command lines it prints reach it too, from a directory with no config.
    let commands: Vec<Vec<String>> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("  tokenproxy "))
        .map(|rest| {
            let command = rest.split('#').next().unwrap();
            command.split_whitespace().map(str::to_owned).collect()
        })
        .collect();
    assert!(!commands.is_empty(), "no command line printed: {lines:?}");
    let elsewhere = temp_dir("demo-cli");
    for args in commands {
        let mut command = tokenproxy(&elsewhere);
        command.args(&args);
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if args[0] == "header" {
            assert!(
                stdout
                    .lines()
                    .any(|line| line.starts_with("authorization: Bearer "))
                    && stdout.lines().any(|line| line == "organization: acme"),
                "{args:?}: {stdout}"
            );
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
