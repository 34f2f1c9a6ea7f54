//! What the server runs on: the validated config turned into live upstreams (route,
//! transport, token cell) and the route table over them.

use std::sync::{Arc, OnceLock};

use http::HeaderValue;

use crate::access_log::{AccessLog, OpenError};
use crate::clients::{Client, Clients};
use crate::config::{Config, PassthroughRule, ServerConfig, UpstreamConfig};
use crate::fleet::Fleet;
use crate::login::Logins;
use crate::metrics::{ClientMetrics, EgressMetrics, RequestMetrics};
use crate::providers::{Provider, ProviderError};
use crate::routes::RouteTable;
use crate::store::SharedStore;
use crate::tokens::{FleetLink, TokenCell};
use crate::transport::{AddressOverride, TlsSettings, Transport, TransportBuildError, Transports};

pub struct Upstream {
    /// `config.name`, shared with every access-log line of this upstream.
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    pub tokens: Arc<TokenCell>,
    pub transport: Transport,
    /// Request counts and latencies (kept across reloads, by name).
    pub metrics: Arc<RequestMetrics>,
    /// The `Host` a cleartext target gets, set with the rest of the request head so the
    /// map has room for it. `None` for HTTPS: hyper's client names the host for HTTP/1.1,
    /// and HTTP/2 carries `:authority` instead.
    pub cleartext_host: Option<HeaderValue>,
}

pub struct App {
    pub server: ServerConfig,
    pub upstreams: Vec<Arc<Upstream>>,
    pub routes: RouteTable,
    pub logins: Arc<Logins>,
    /// `http://host:port` of the main listener once bound, for login callbacks.
    pub public_base: OnceLock<String>,
    /// Requests the browser guard refused, by reason (kept across reloads).
    pub refusals: Arc<Refusals>,
    /// Where tokens are kept: `file`, `memory` or `redis` (fleet mode).
    pub store_backend: &'static str,
    /// Egress mode (`[egress]`), when configured.
    pub egress: Option<Egress>,
    /// Every caller with a key; empty when none is asked for.
    pub clients: Clients,
    /// Each client's figures, in the order of `clients` (kept across reloads, by name).
    pub client_metrics: Vec<Arc<ClientMetrics>>,
    /// `None` while the access log is off (kept across reloads that do not change it).
    pub access_log: Option<Arc<AccessLog>>,
}

/// Egress mode's part of the app: what a reload may change, and what it keeps.
pub struct Egress {
    pub passthrough: Vec<PassthroughRule>,
    /// Kept across reloads.
    pub metrics: Arc<EgressMetrics>,
    /// The egress listener's address once bound (kept across reloads).
    pub address: Arc<OnceLock<std::net::SocketAddr>>,
}

/// Counts of the browser guard's refusals, by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    pub foreign_host: std::sync::atomic::AtomicU64,
    pub foreign_origin: std::sync::atomic::AtomicU64,
    pub null_origin: std::sync::atomic::AtomicU64,
    pub cross_site_fetch: std::sync::atomic::AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream {upstream}: {source}")]
    Transport {
        upstream: String,
        #[source]
        source: TransportBuildError,
    },
    #[error("upstream {upstream}: {source}")]
    Provider {
        upstream: String,
        #[source]
        source: ProviderError,
    },
    #[error(transparent)]
    AccessLog(#[from] OpenError),
}

impl App {
    /// Builds the runtime state. With `previous` (a reload), upstreams whose target and
    /// auth settings did not change keep their token cell, tokens and refresher.
    pub fn build(
        config: &Config,
        transports: &Transports,
        store: SharedStore,
        fleet: Option<&Arc<Fleet>>,
        previous: Option<&App>,
    ) -> Result<App, BuildError> {
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for upstream in &config.upstreams {
            let metrics = previous
                .and_then(|app| app.upstream(&upstream.name))
                .map(|old| Arc::clone(&old.metrics))
                .unwrap_or_default();
            let kept = previous
                .and_then(|app| app.upstream(&upstream.name))
                .filter(|old| old.config.auth_key.expose() == upstream.auth_key.expose())
                // A new address needs a new transport.
                .filter(|old| old.config.address == upstream.address);
            if let Some(old) = kept {
                upstreams.push(Arc::new(Upstream {
                    name: Arc::clone(&old.name),
                    config: upstream.clone(),
                    tokens: Arc::clone(&old.tokens),
                    transport: old.transport.clone(),
                    metrics,
                    cleartext_host: cleartext_host(upstream),
                }));
                continue;
            }
            let tls = TlsSettings {
                ca_file: upstream.ca_file.clone(),
                client_cert: upstream.client_cert.clone(),
                insecure_skip_verify: upstream.insecure_skip_verify,
            };
            let transport = transports
                .get(
                    &tls,
                    upstream.connect_timeout,
                    upstream.address.map(|ip| AddressOverride {
                        host: upstream
                            .target
                            .authority
                            .host()
                            .trim_matches(['[', ']'])
                            .to_owned(),
                        ip,
                    }),
                )
                .map_err(|source| BuildError::Transport {
                    upstream: upstream.name.clone(),
                    source,
                })?;
            let provider = Provider::new(&upstream.auth, transport.clone()).map_err(|source| {
                BuildError::Provider {
                    upstream: upstream.name.clone(),
                    source,
                }
            })?;
            let fingerprint = upstream.auth.fingerprint();
            let stored = store.credential(&upstream.name, &fingerprint, &upstream.auth.injection);
            let when_redis_down = upstream
                .when_redis_down
                .unwrap_or_else(|| provider.default_when_redis_down());
            let mut tokens = TokenCell::new(
                upstream.name.clone(),
                provider,
                upstream.auth.refresh_skew,
                Arc::clone(&store),
                fingerprint,
                stored,
            );
            if let Some(fleet) = fleet {
                tokens = tokens.in_fleet(FleetLink::new(
                    Arc::clone(fleet),
                    upstream.auth.injection.clone(),
                    when_redis_down,
                ));
            }
            upstreams.push(Arc::new(Upstream {
                name: Arc::from(upstream.name.as_str()),
                config: upstream.clone(),
                tokens: Arc::new(tokens),
                transport,
                metrics,
                cleartext_host: cleartext_host(upstream),
            }));
        }
        let store_backend = match (fleet, store.path()) {
            (Some(_), _) => "redis",
            (None, Some(_)) => "file",
            (None, None) => "memory",
        };
        let client_metrics = config
            .clients
            .iter()
            .map(|client| {
                previous
                    .and_then(|app| {
                        let index = app.clients.iter().position(|old| old.name == client.name)?;
                        app.client_metrics.get(index).cloned()
                    })
                    .unwrap_or_default()
            })
            .collect();
        let access_log = match (
            &config.access_log,
            previous.and_then(|app| app.access_log.as_ref()),
        ) {
            (None, _) => None,
            (Some(settings), Some(open)) if open.settings == *settings => Some(Arc::clone(open)),
            (Some(settings), _) => Some(Arc::new(AccessLog::open(settings.clone())?)),
        };
        Ok(App {
            access_log,
            clients: config.clients.clone(),
            client_metrics,
            store_backend,
            server: config.server.clone(),
            routes: RouteTable::new(&config.upstreams),
            upstreams,
            logins: previous
                .map(|app| Arc::clone(&app.logins))
                .unwrap_or_default(),
            public_base: previous
                .and_then(|app| app.public_base.get().cloned())
                .map(OnceLock::from)
                .unwrap_or_default(),
            refusals: previous
                .map(|app| Arc::clone(&app.refusals))
                .unwrap_or_default(),
            egress: config.egress.as_ref().map(|egress| {
                let before = previous.and_then(|app| app.egress.as_ref());
                Egress {
                    passthrough: egress.passthrough.clone(),
                    metrics: before
                        .map(|old| Arc::clone(&old.metrics))
                        .unwrap_or_default(),
                    address: before
                        .map(|old| Arc::clone(&old.address))
                        .unwrap_or_default(),
                }
            }),
        })
    }

    /// A client known by its index in `clients`, with its figures.
    pub fn client(&self, index: usize) -> Option<(&Arc<Client>, &ClientMetrics)> {
        Some((self.clients.get(index)?, self.client_metrics.get(index)?))
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.upstreams
            .iter()
            .position(|upstream| upstream.config.name == name)
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams
            .iter()
            .find(|upstream| upstream.config.name == name)
    }

    /// Where the vendor sends the browser back after a login for `upstream`.
    pub fn callback_url(&self, upstream: &str) -> String {
        let base = self
            .public_base
            .get()
            .map(String::as_str)
            .unwrap_or("http://127.0.0.1:8080");
        format!("{base}/-/callback/{upstream}")
    }

    /// The upstreams of `self` that `next` does not keep: their refreshers must stop.
    pub fn dropped_by(&self, next: &App) -> Vec<Arc<TokenCell>> {
        self.upstreams
            .iter()
            .filter(|old| {
                !next
                    .upstreams
                    .iter()
                    .any(|new| Arc::ptr_eq(&new.tokens, &old.tokens))
            })
            .map(|old| Arc::clone(&old.tokens))
            .collect()
    }

    /// Every upstream has a valid token.
    pub fn ready(&self) -> bool {
        self.upstreams
            .iter()
            .all(|upstream| upstream.tokens.has_valid_token())
    }
}

fn cleartext_host(upstream: &UpstreamConfig) -> Option<HeaderValue> {
    let target = &upstream.target;
    (target.scheme == http::uri::Scheme::HTTP)
        .then(|| crate::transport::host_header(&target.authority))
}
