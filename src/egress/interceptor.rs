//! The TLS side of an intercepted tunnel: one rustls server config per vendor host, holding
//! the leaf the CA minted for it, offering HTTP/2 and HTTP/1.1 (ALPN).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::time::Instant;

use super::ca::{CaError, CertificateAuthority};

/// Rebuilt this often, taking the CA's current leaf: the CA renews a leaf an hour before
/// its end, so a config never serves one that has expired.
const REBUILD_AFTER: Duration = Duration::from_secs(30 * 60);

pub struct Interceptor {
    ca: CertificateAuthority,
    configs: Mutex<HashMap<String, (Arc<ServerConfig>, Instant)>>,
}

impl Interceptor {
    /// Loads the CA from `ca_dir`; a missing one says how to create it.
    pub fn load(ca_dir: &Path) -> Result<Interceptor, CaError> {
        Ok(Interceptor {
            ca: CertificateAuthority::load(ca_dir)?,
            configs: Mutex::new(HashMap::new()),
        })
    }

    /// The TLS config that answers a tunnel to `host` (lower case); the CA refuses hosts
    /// outside its name constraints.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        // A poisoned lock only means another build panicked; the map is still whole.
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((config, built)) = configs.get(host) {
            if built.elapsed() < REBUILD_AFTER {
                return Ok(Arc::clone(config));
            }
        }
        let (chain, key) = self.ca.leaf_for(host)?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|error| CaError::Tls(error.to_string()))?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|error| CaError::Tls(error.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        configs.insert(host.to_owned(), (Arc::clone(&config), Instant::now()));
        Ok(config)
    }
}
