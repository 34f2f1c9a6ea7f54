//! What the server runs on: the validated config turned into live upstreams (route,
//! transport, token cell) and the route table over them.

use std::sync::{Arc, OnceLock};

use crate::config::{Config, ServerConfig, UpstreamConfig};
use crate::login::Logins;
use crate::providers::{Provider, ProviderError};
use crate::routes::RouteTable;
use crate::store::SharedStore;
use crate::tokens::TokenCell;
use crate::transport::{Transport, TransportBuildError, Transports};

pub struct Upstream {
    pub config: UpstreamConfig,
    pub tokens: Arc<TokenCell>,
    pub transport: Transport,
}

pub struct App {
    pub server: ServerConfig,
    pub upstreams: Vec<Arc<Upstream>>,
    pub routes: RouteTable,
    pub logins: Arc<Logins>,
    /// `http://host:port` of the main listener once bound, for login callbacks.
    pub public_base: OnceLock<String>,
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
}

impl App {
    pub fn build(
        config: &Config,
        transports: &Transports,
        store: SharedStore,
    ) -> Result<App, BuildError> {
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for upstream in &config.upstreams {
            let transport = transports
                .get(upstream.ca_file.as_deref(), upstream.connect_timeout)
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
            let tokens = TokenCell::new(
                upstream.name.clone(),
                provider,
                upstream.auth.refresh_skew,
                Arc::clone(&store),
                fingerprint,
                stored,
            );
            upstreams.push(Arc::new(Upstream {
                config: upstream.clone(),
                tokens: Arc::new(tokens),
                transport,
            }));
        }
        Ok(App {
            server: config.server.clone(),
            routes: RouteTable::new(&config.upstreams),
            upstreams,
            logins: Arc::new(Logins::default()),
            public_base: OnceLock::new(),
        })
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

    /// Every upstream has a valid token.
    pub fn ready(&self) -> bool {
        self.upstreams
            .iter()
            .all(|upstream| upstream.tokens.state() == crate::tokens::TokenState::Valid)
    }
}
