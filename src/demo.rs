//! `tokenproxy demo`: starts the simulated vendors in-process on loopback ports, writes a
//! config for them, and serves it like `run` does, so a newcomer can try every upstream
//! with curl and no vendor account, starting from the status page. The BigAnimal device
//! login is started at once and the simulator approves it by itself (unless
//! `--manual-login`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{self, ProcessSources};
use tokenproxy_sim::{amm, biganimal, bigeval, bigid, caepe, echo};

const BIGEVAL_CLIENT_ID: &str = "e01b7ba2dd930ea97da79b0005341ee0";
const BIGEVAL_CLIENT_SECRET: &str = "demo-bigeval-secret";
const ORGANIZATION: &str = "acme";

pub async fn run(listen: SocketAddr, manual_login: bool) -> ExitCode {
    let biganimal = biganimal::start(biganimal::BigAnimalSimConfig {
        auto_approve: !manual_login,
        interval: Duration::from_secs(1),
        ..biganimal::BigAnimalSimConfig::default()
    })
    .await;
    let bigid_user_token = bigid::new_user_token();
    let bigid = bigid::start(bigid::BigIdSimConfig {
        user_tokens: vec![bigid_user_token.clone()],
        ..bigid::BigIdSimConfig::default()
    })
    .await;
    let bigeval = bigeval::start(BIGEVAL_CLIENT_ID, BIGEVAL_CLIENT_SECRET).await;
    let caepe = caepe::start(ORGANIZATION).await;
    let amm = amm::start(amm::AmmSimConfig::default()).await;
    let echo = echo::start().await;

    let text = format!(
        r#"
[server]
listen = "{listen}"

[store]
path = "memory"

[upstreams.biganimal]
target = "{biganimal_api}/"
[upstreams.biganimal.auth]
kind = "biganimal"
provider_url = "{biganimal_provider}"

[upstreams.bigid]
target = "{bigid}/"
[upstreams.bigid.auth]
kind = "bigid"
user_token = "{bigid_user_token}"

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

[upstreams.amm]
target = "{amm}/"
[upstreams.amm.auth]
kind = "amm"
client_id = "{amm_client}"
client_secret = "{amm_secret}"
username = "{amm_user}"
password = "{amm_password}"

# The echo server shows what a vendor receives: CAEPE's token and Organization header,
# from a real password grant at the CAEPE simulator.
[upstreams.echo]
target = "{echo}/"
[upstreams.echo.auth]
kind = "caepe"
token_url = "{caepe_token}"
username = "{caepe_user}"
password = "{caepe_password}"
organization = "{ORGANIZATION}"
"#,
        biganimal_api = biganimal.api_url(),
        biganimal_provider = biganimal.provider_url(),
        bigid = bigid.url(),
        bigeval = bigeval.url(),
        caepe = caepe.url(),
        caepe_token = caepe.token_url(),
        caepe_user = caepe::DEFAULT_USERNAME,
        caepe_password = caepe::DEFAULT_PASSWORD,
        amm = amm.url(),
        amm_client = amm::DEFAULT_CLIENT_ID,
        amm_secret = amm::DEFAULT_CLIENT_SECRET,
        amm_user = amm::DEFAULT_USERNAME,
        amm_password = amm::DEFAULT_PASSWORD,
        echo = echo.url(),
    );
    let config = match config::parse(&text, "(demo config)", &ProcessSources) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tokenproxy: demo config: {error}");
            return ExitCode::FAILURE;
        }
    };
    let Some(server) = crate::server::start_logged(&config).await else {
        return ExitCode::FAILURE;
    };

    // BigAnimal needs a device login; the simulator approves it on its first poll.
    if let Some(upstream) = server.app().upstream("biganimal").filter(|_| !manual_login) {
        let callback = server.app().callback_url("biganimal");
        if let Err(error) = server.app().logins.start(&upstream.tokens, &callback).await {
            tracing::warn!(error = %error, "demo: BigAnimal login did not start");
        }
    }

    let base = format!("http://{}", server.local_addr());
    println!("tokenproxy demo: open the status page: {base}/-/");
    println!("Five simulated vendors run on loopback, the proxy on {base}/.");
    if manual_login {
        println!("BigAnimal is logged out: press Log in on its row, then approve the code at the simulator's page.");
    }
    println!("Try (each answers 200 with a token the proxy obtained and injected):");
    let approval = if manual_login {
        "log in on the status page first"
    } else {
        "auto-approved"
    };
    println!("  curl -s {base}/biganimal/clusters          # BigAnimal: device login ({approval}) + token exchange");
    println!("  curl -s {base}/bigid/api/v1/ds-connections # BigID: user token exchanged for a raw systemToken");
    println!("  curl -s {base}/bigeval/api/v1/testcases    # BiG EVAL: client credentials");
    println!("  curl -s {base}/caepe/api/v1/applications   # CAEPE: Keycloak password grant + Organization header");
    println!(
        "  curl -s {base}/amm/api/v1/systems          # AMM: password grant, client by HTTP Basic"
    );
    println!("  curl -s {base}/echo/anything?x=1           # the echo shows what a vendor gets: Bearer token + Organization");
    println!(
        "  curl -s {base}/-/status                    # token state per upstream (never the token)"
    );
    println!("The command line reaches this proxy with --url (or TOKENPROXY_URL):");
    println!(
        "  tokenproxy header caepe --url {base}       # Authorization and Organization, as sent"
    );
    println!("  tokenproxy status --url {base}");
    println!("Stop with Ctrl-C.");
    crate::server::serve_until_signal(server).await;
    drop((biganimal, bigid, bigeval, caepe, amm, echo));
    std::process::ExitCode::SUCCESS
}
