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
    let _ = child.kill();
    let _ = child.wait();
}
