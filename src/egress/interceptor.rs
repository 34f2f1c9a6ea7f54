//! The TLS side of an intercepted tunnel: one rustls server config per vendor host, holding
//! the leaf the CA minted for it, offering HTTP/2 and HTTP/1.1 (ALPN). A CA replaced on
//! disk (`tokenproxy ca init --force`) is taken up at the next tunnel, without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use tokio::time::Instant;

use super::ca::{self, CaError, CertificateAuthority};

/// Rebuilt this often, taking the CA's current leaf: the CA renews a leaf an hour before
/// its end, so a config never serves one that has expired.
const REBUILD_AFTER: Duration = Duration::from_secs(30 * 60);

pub struct Interceptor {
    ca_dir: PathBuf,
    state: Mutex<State>,
}

struct State {
    ca: CertificateAuthority,
    /// The CA certificate file's modification time when it was loaded.
    loaded: Option<SystemTime>,
    configs: HashMap<String, (Arc<ServerConfig>, Instant)>,
}

impl Interceptor {
    /// Loads the CA from `ca_dir`; a missing one says how to create it.
    pub fn load(ca_dir: &Path) -> Result<Interceptor, CaError> {
        let loaded = modified(ca_dir);
        Ok(Interceptor {
            ca_dir: ca_dir.to_owned(),
            state: Mutex::new(State {
                ca: CertificateAuthority::load(ca_dir)?,
                loaded,
                configs: HashMap::new(),
            }),
        })
    }

    /// The TLS config that answers a tunnel to `host` (lower case); the CA refuses hosts
    /// outside its name constraints.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        // A poisoned lock only means another build panicked; the state is still whole.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.take_up_a_new_ca(&mut state);
        if let Some((config, built)) = state.configs.get(host) {
            if built.elapsed() < REBUILD_AFTER {
                return Ok(Arc::clone(config));
            }
        }
        let (chain, key) = state.ca.leaf_for(host)?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|error| CaError::Tls(error.to_string()))?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|error| CaError::Tls(error.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        state
            .configs
            .insert(host.to_owned(), (Arc::clone(&config), Instant::now()));
        Ok(config)
    }

    /// Loads the CA again when its certificate file changed; a CA that cannot be loaded
    /// leaves the current one serving.
    fn take_up_a_new_ca(&self, state: &mut State) {
        let now = modified(&self.ca_dir);
        if now == state.loaded {
            return;
        }
        match CertificateAuthority::load(&self.ca_dir) {
            Ok(ca) => {
                tracing::info!(ca_dir = %self.ca_dir.display(), "egress: the CA changed on disk; new tunnels use the new one");
                state.ca = ca;
                state.configs.clear();
                state.loaded = now;
            }
            Err(error) => {
                tracing::warn!(error = %error, "egress: the CA changed on disk but cannot be loaded; keeping the one loaded")
            }
        }
    }
}

fn modified(ca_dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(ca_dir.join(ca::CERT_FILE))
        .and_then(|metadata| metadata.modified())
        .ok()
}
