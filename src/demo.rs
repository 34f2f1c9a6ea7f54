//! `tokenproxy demo`: the simulated vendors in-process, and the proxy in front of them.

use std::net::SocketAddr;
use std::process::ExitCode;

pub async fn run(_listen: SocketAddr) -> ExitCode {
    eprintln!("tokenproxy: demo is not built yet");
    ExitCode::FAILURE
}
