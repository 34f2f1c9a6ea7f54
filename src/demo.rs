//! `tokenproxy demo`: starts the simulated vendors in-process on loopback ports, writes a
//! config for them, and serves it like `run` does, so a newcomer can try every upstream
//! with curl and no vendor account.

use std::net::SocketAddr;
use std::process::ExitCode;

use crate::config::{self, ProcessSources};
use crate::sim::{bigeval, caepe, echo};

const BIGEVAL_CLIENT_ID: &str = "e01b7ba2dd930ea97da79b0005341ee0";
const BIGEVAL_CLIENT_SECRET: &str = "demo-bigeval-secret";
const ORGANIZATION: &str = "acme";
const ECHO_KEY: &str = "demo-access-key";

pub async fn run(listen: SocketAddr) -> ExitCode {
    let bigeval = bigeval::start(BIGEVAL_CLIENT_ID, BIGEVAL_CLIENT_SECRET).await;
    let caepe = caepe::start(ORGANIZATION).await;
    let echo = echo::start().await;

    let text = format!(
        r#"
[server]
listen = "{listen}"

[store]
path = "memory"

[upstreams.bigeval]
target = "{bigeval}/"
[upstreams.bigeval.auth]
kind = "bigeval"
client_id = "{BIGEVAL_CLIENT_ID}"
client_secret = "{BIGEVAL_CLIENT_SECRET}"

[upstreams.caepe]
target = "{caepe}/"
[upstreams.caepe.auth]
kind = "caepe"
token_url = "{caepe_token}"
username = "{caepe_user}"
password = "{caepe_password}"
organization = "{ORGANIZATION}"

[upstreams.echo]
target = "{echo}/"
[upstreams.echo.auth]
kind = "static"
header = "x-access-key"
scheme = ""
token = "{ECHO_KEY}"
"#,
        bigeval = bigeval.url(),
        caepe = caepe.url(),
        caepe_token = caepe.token_url(),
        caepe_user = caepe::DEFAULT_USERNAME,
        caepe_password = caepe::DEFAULT_PASSWORD,
        echo = echo.url(),
    );
    let config = match config::parse(&text, "(demo config)", &ProcessSources) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tokenproxy: demo config: {error}");
            return ExitCode::FAILURE;
        }
    };

    println!("tokenproxy demo: simulated vendors on loopback, the proxy on http://{listen}/");
    println!("Try (each answers 200 with a token the proxy obtained and injected):");
    println!("  curl -s http://{listen}/bigeval/api/v1/testcases   # BiG EVAL: client credentials");
    println!("  curl -s http://{listen}/caepe/api/v1/applications  # CAEPE: Keycloak password grant + Organization");
    println!("  curl -s http://{listen}/echo/anything?x=1          # static access key; the echo shows what arrived");
    println!("  curl -s http://{listen}/-/status                   # token state per upstream (never the token)");
    println!("Stop with Ctrl-C.");
    let code = crate::cli::serve(config).await;
    drop((bigeval, caepe, echo));
    code
}
