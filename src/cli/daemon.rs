//! How a one-shot command reaches tokenproxy: the daemon at `--url` (or
//! `$TOKENPROXY_URL`), no config needed; else the config's daemon (found through the
//! store's lock file, or at the configured address when the store is in memory); else a
//! local instance of the server started for the command alone. With no config at all, a
//! tokenproxy answering at the default address (`tokenproxy demo`) is used. Either way
//! the command speaks to the same admin endpoints, so a login takes effect in a daemon at
//! once, and status and token never refresh behind a daemon's back.

use std::time::Duration;

use http::{Request, StatusCode};

use super::CommandError;
use crate::config::{Config, ConfigError};
use crate::secret::Secret;
use crate::server::Server;
use crate::store;
use crate::transport::{Transport, Transports};

/// Where a one-shot command was told to find tokenproxy.
pub enum Reach {
    /// `--url` / `$TOKENPROXY_URL`: the daemon there; no config is read.
    Url(String),
    /// The config's daemon, or a local server on the config's store.
    Config(Box<Config>),
    /// No config file anywhere: the daemon at the default address if one answers there,
    /// else this error.
    NoConfig(ConfigError),
}

/// `server.client_key` for a daemon reached by `--url`: the variable the examples put the
/// key in.
const CLIENT_KEY_ENV: &str = "TOKENPROXY_CLIENT_KEY";

const ADMIN_TIMEOUT: Duration = Duration::from_secs(35);

pub struct Admin {
    base: String,
    transport: Transport,
    local: Option<Server>,
    /// Sent as `Proxy-Authorization` to a daemon that requires a client key.
    client_key: Option<Secret>,
}

pub fn admin_transport() -> Result<Transport, String> {
    Transports::new()
        .get(&Default::default(), Duration::from_secs(2), None)
        .map_err(|error| error.to_string())
}

impl Admin {
    /// Reaches tokenproxy as `reach` says. `configured_listen`: a browser login's callback
    /// must come back to the configured address; other commands use any port.
    pub async fn reach(reach: &Reach, configured_listen: bool) -> Result<Admin, CommandError> {
        match reach {
            Reach::Url(url) => Ok(Admin::at(url).await?),
            Reach::Config(config) => Ok(Admin::connect(config, configured_listen).await?),
            Reach::NoConfig(error) => {
                let default = base_of(crate::config::DEFAULT_LISTEN.parse().expect("valid"));
                match Admin::at(&default).await {
                    Ok(admin) => Ok(admin),
                    Err(_) => Err(CommandError::Config(error.to_string())),
                }
            }
        }
    }

    /// The daemon at `url` (`http://127.0.0.1:8080`, a trailing `/` or `/-/` allowed), if
    /// a tokenproxy answers its health check there.
    async fn at(url: &str) -> Result<Admin, String> {
        let base = url.trim_end_matches('/');
        let base = base.strip_suffix("/-").unwrap_or(base).to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(format!(
                "--url {url}: not an http:// URL of a tokenproxy (like http://127.0.0.1:8080)"
            ));
        }
        let transport = admin_transport()?;
        if let Err(why) = health(&transport, &base).await {
            return Err(format!("no tokenproxy answers at {base}: {why}"));
        }
        Ok(Admin {
            base,
            transport,
            local: None,
            client_key: std::env::var(CLIENT_KEY_ENV)
                .ok()
                .filter(|key| !key.is_empty())
                .map(Secret::new),
        })
    }

    /// Finds the config's daemon, or starts a local server.
    async fn connect(config: &Config, configured_listen: bool) -> Result<Admin, String> {
        let transport = admin_transport()?;
        let client_key = config.server.client_key.clone();
        if let Some(base) = find_daemon(config, &transport).await {
            return Ok(Admin {
                base,
                transport,
                local: None,
                client_key,
            });
        }
        let mut local = config.clone();
        if !configured_listen {
            local.server.listen = "127.0.0.1:0".parse().expect("a valid address");
        }
        for upstream in &mut local.upstreams {
            upstream.listen = None;
        }
        let server = Server::start_with(&local, false)
            .await
            .map_err(|error| error.to_string())?;
        let base = server
            .app()
            .public_base
            .get()
            .cloned()
            .unwrap_or_else(|| format!("http://{}", server.local_addr()));
        Ok(Admin {
            base,
            transport,
            local: Some(server),
            client_key,
        })
    }

    /// `http://IP:PORT` of the tokenproxy this speaks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn daemon(&self) -> Option<&str> {
        self.local.is_none().then_some(self.base.as_str())
    }

    pub async fn get(&self, path: &str) -> Result<(StatusCode, serde_json::Value), String> {
        self.send(http::Method::GET, path).await
    }

    pub async fn post(&self, path: &str) -> Result<(StatusCode, serde_json::Value), String> {
        self.send(http::Method::POST, path).await
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
    ) -> Result<(StatusCode, serde_json::Value), String> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::ACCEPT, "application/json")
            .header(crate::admin::ACTION_HEADER, "1");
        if let Some(key) = &self.client_key {
            let mut value = http::HeaderValue::try_from(format!("Bearer {}", key.expose()))
                .map_err(|_| "the client key cannot be sent in a header".to_owned())?;
            value.set_sensitive(true);
            request = request.header(http::header::PROXY_AUTHORIZATION, value);
        }
        let request = request
            .body(Vec::new())
            .map_err(|error| error.to_string())?;
        let response = self
            .transport
            .send_buffered(request, ADMIN_TIMEOUT)
            .await
            .map_err(|error| format!("{url}: {error}"))?;
        let body = serde_json::from_slice(response.body()).unwrap_or_default();
        Ok((response.status(), body))
    }

    /// Stops the local server, if one was started (the store is already written).
    pub async fn close(self) {
        if let Some(server) = self.local {
            server.shutdown().await;
        }
    }
}

/// The problem+json `detail` of an error answer, or its status.
pub fn detail(status: StatusCode, body: &serde_json::Value) -> String {
    body["detail"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"))
}

async fn find_daemon(config: &Config, transport: &Transport) -> Option<String> {
    match &config.store_path {
        Some(path) => store::current_owner(path).and_then(|owner| owner.admin),
        None => {
            let base = base_of(config.server.listen);
            health(transport, &base).await.ok().map(|()| base)
        }
    }
}

/// `http://IP:PORT` of a listen address; an unspecified IP (`0.0.0.0`) is reached on
/// loopback.
pub fn base_of(listen: std::net::SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        listen.ip()
    };
    format!("http://{}", std::net::SocketAddr::new(ip, listen.port()))
}

/// `Ok` when `base` answers `/-/health` as tokenproxy does; else why not.
async fn health(transport: &Transport, base: &str) -> Result<(), String> {
    let response = get(
        transport,
        &format!("{base}/-/health"),
        Duration::from_secs(2),
    )
    .await?;
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap_or_default();
    if response.status() == StatusCode::OK && body["status"] == "ok" {
        Ok(())
    } else {
        Err(format!(
            "it answered HTTP {} to /-/health, not as tokenproxy does",
            response.status().as_u16()
        ))
    }
}

/// `GET url`, or why it could not be asked (`connection refused`).
pub async fn get(
    transport: &Transport,
    url: &str,
    timeout: Duration,
) -> Result<http::Response<Vec<u8>>, String> {
    let request = Request::get(url)
        .body(Vec::new())
        .map_err(|_| "not a URL".to_owned())?;
    transport
        .send_buffered(request, timeout)
        .await
        .map_err(|error| match error {
            crate::transport::TokenHttpError::Unreachable { reason, .. } => reason,
            other => other.to_string(),
        })
}
