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
    for url in &urls {
        loop {
            let response = get(url).await;
            if response.status() == StatusCode::OK {
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
