//! Fleet replicas as real `tokenproxy run` processes, and waiting on what they report.

use std::time::Duration;

use super::{get, json, temp_dir, Daemon};

/// A replica as its own process: `tokenproxy run` in a directory of its own.
pub async fn start_replica(name: &str, config: &str) -> Daemon {
    let dir = temp_dir(&format!("fleet-{name}"));
    std::fs::write(
        dir.join("tokenproxy.toml"),
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}"),
    )
    .unwrap();
    Daemon::start(&dir).await
}

pub async fn replica_fleet(replica: &Daemon) -> serde_json::Value {
    json(&get(&format!("http://{}/-/status", replica.addr)).await)["upstreams"][0].clone()
}

/// Waits until `condition` holds, 10 s at most.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    condition: impl Fn() -> F,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
