//! How a one-shot command reaches tokenproxy: the running daemon if there is one (found
//! through the store's lock file, or at the configured address when the store is in
//! memory), else a local instance of the server started for the command alone. Either way
//! the command speaks to the same admin endpoints, so a login takes effect in a daemon
//! at once, and status and token never refresh behind a daemon's back.

use std::time::Duration;

use http::{Request, StatusCode};

use crate::config::Config;
use crate::server::Server;
use crate::store;
use crate::transport::{Transport, Transports};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(35);

pub struct Admin {
    base: String,
    transport: Transport,
    local: Option<Server>,
}

impl Admin {
    /// Finds the daemon, or starts a local server. `configured_listen`: a browser login's
    /// callback must come back to the configured address; other commands use any port.
    pub async fn connect(config: &Config, configured_listen: bool) -> Result<Admin, String> {
        let transport = Transports::new()
            .get(&Default::default(), Duration::from_secs(2), None)
            .map_err(|error| error.to_string())?;
        if let Some(base) = find_daemon(config, &transport).await {
            return Ok(Admin {
                base,
                transport,
                local: None,
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
        })
    }

    pub fn daemon(&self) -> Option<&str> {
        self.local.is_none().then_some(self.base.as_str())
    }

    pub fn local(&self) -> Option<&Server> {
        self.local.as_ref()
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
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::ACCEPT, "application/json")
            .header(crate::admin::ACTION_HEADER, "1")
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
            let listen = config.server.listen;
            let ip = if listen.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                listen.ip()
            };
            let base = format!("http://{}", std::net::SocketAddr::new(ip, listen.port()));
            let request = Request::get(format!("{base}/-/health"))
                .body(Vec::new())
                .ok()?;
            let response = transport
                .send_buffered(request, Duration::from_secs(1))
                .await
                .ok()?;
            let body: serde_json::Value = serde_json::from_slice(response.body()).ok()?;
            (response.status() == StatusCode::OK && body["status"] == "ok").then_some(base)
        }
    }
}
