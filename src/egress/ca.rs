//! The local CA of egress mode. `init` creates a key and a self-signed certificate whose
//! X.509 name constraints (critical) permit only the configured upstreams' target hosts, so
//! a stolen key cannot impersonate any other site to a client that trusts it. `load` then
//! mints short-lived leaves per vendor host (`leaf_for`), and refuses every other host by
//! asking the same verifier a client uses.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType, SerialNumber,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::config::Config;

/// The CA certificate, for clients to trust (`NODE_EXTRA_CA_CERTS`).
pub const CERT_FILE: &str = "ca.pem";
/// The CA's private key: mode 0600, never logged or served.
pub const KEY_FILE: &str = "ca-key.pem";
/// System roots plus this CA, for clients that replace their trust (`SSL_CERT_FILE`).
pub const BUNDLE_FILE: &str = "bundle.pem";

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves live a day: a leaked one is soon worthless, and minting is cheap.
const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// A cached leaf this close to its end is minted again.
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(3600);
/// Clocks of clients a little behind ours still accept a new certificate.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: a CA is already there; `tokenproxy ca init --force` replaces it (clients must then trust the new one)", dir.display())]
    AlreadyExists { dir: PathBuf },
    #[error("{}: no CA there; create one with `tokenproxy ca init`", dir.display())]
    Missing { dir: PathBuf },
    #[error("{}: mode {mode:o} lets others in; give the CA a directory of its own (chmod 700)", dir.display())]
    DirectoryTooOpen { dir: PathBuf, mode: u32 },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The files are there but do not make a CA (rcgen's reason names no key material).
    #[error("{}: not a CA certificate and key tokenproxy can use: {reason}", dir.display())]
    Unusable { dir: PathBuf, reason: String },
    #[error("cannot create a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{host:?} is not a host name or IP address")]
    InvalidHost { host: String },
    #[error("{host:?} is not one of the hosts this CA may sign for")]
    OutsideConstraints { host: String },
    #[error("cannot serve the minted certificate: {0}")]
    Tls(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A host a certificate can name: a DNS name (lower case, no trailing dot) or an IP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    Dns(String),
    Ip(IpAddr),
}

impl Host {
    /// `None` for text that is neither a DNS name nor an IP address (`[::1]` is one).
    pub fn parse(text: &str) -> Option<Host> {
        let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let bare = text
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(&text);
        match ServerName::try_from(bare).ok()? {
            ServerName::DnsName(_) if bare.contains('*') => None,
            ServerName::DnsName(name) => Some(Host::Dns(name.as_ref().to_owned())),
            ServerName::IpAddress(ip) => Some(Host::Ip(IpAddr::from(ip))),
            _ => None,
        }
    }

    fn server_name(&self) -> ServerName<'static> {
        match self {
            Host::Dns(name) => ServerName::try_from(name.clone()).expect("parsed as a DNS name"),
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        }
    }

    fn san(&self) -> Result<SanType, rcgen::Error> {
        Ok(match self {
            Host::Dns(name) => SanType::DnsName(name.as_str().try_into()?),
            Host::Ip(ip) => SanType::IpAddress(*ip),
        })
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Dns(name) => f.write_str(name),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// What a new CA may sign for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Only these hosts (and, as X.509 has it, names below a DNS host).
    Limited(Vec<Host>),
    /// A target host no name constraint can express: the CA is not limited.
    Unlimited { unexpressible: String },
}

/// The configured upstreams' target hosts, each once.
pub fn scope_of(config: &Config) -> Scope {
    let mut hosts = BTreeSet::new();
    for upstream in &config.upstreams {
        let host = upstream.target.authority.host();
        match Host::parse(host) {
            Some(parsed) => hosts.insert(parsed),
            None => {
                return Scope::Unlimited {
                    unexpressible: host.to_owned(),
                }
            }
        };
    }
    Scope::Limited(hosts.into_iter().collect())
}

/// Permitted subtrees for exactly `hosts`. A name type with no permitted subtree would be
/// unconstrained (RFC 5280 4.2.1.10), so with no IP host every address is excluded, and
/// with no DNS host only the reserved `invalid` domain is permitted.
pub fn name_constraints(hosts: &[Host]) -> NameConstraints {
    let mut permitted = Vec::new();
    let mut excluded = Vec::new();
    for host in hosts {
        permitted.push(match host {
            Host::Dns(name) => GeneralSubtree::DnsName(name.clone()),
            Host::Ip(ip) => {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(*ip, prefix))
            }
        });
    }
    if !hosts.iter().any(|host| matches!(host, Host::Dns(_))) {
        permitted.push(GeneralSubtree::DnsName("invalid".into()));
    }
    if !hosts.iter().any(|host| matches!(host, Host::Ip(_))) {
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix(
            [0; 4], 0,
        )));
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
            [0; 16], 0,
        )));
    }
    NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    }
}

/// Creates the CA in `dir`: key 0600, certificate 0644, directory 0700. An existing CA is
/// kept unless `force`.
pub fn init(dir: &Path, scope: &Scope, force: bool) -> Result<(), CaError> {
    prepare_directory(dir)?;
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(CaError::AlreadyExists {
            dir: dir.to_owned(),
        });
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "tokenproxy egress CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "tokenproxy (local)");
    // Path length 0: it signs leaves, never another CA that would escape its constraints.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    if let Scope::Limited(hosts) = scope {
        params.name_constraints = Some(name_constraints(hosts));
    }
    set_validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key)?;
    // The key first: a certificate is never left without its key.
    write_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert.pem().as_bytes(), 0o644)
}

/// Writes `<dir>/bundle.pem` (or `out`): the system's roots, then this CA. Returns where
/// it went and how many system roots it holds.
pub fn write_bundle(dir: &Path, out: Option<&Path>) -> Result<(PathBuf, usize), CaError> {
    let ca_pem = read_ca_file(dir, CERT_FILE)?;
    // Roots the system cannot load are skipped, as every rustls client does.
    let roots = rustls_native_certs::load_native_certs().certs;
    let mut bundle = String::new();
    for root in &roots {
        bundle.push_str(&pem_block(root));
    }
    bundle.push_str(&ca_pem);
    let path = out.map_or_else(|| dir.join(BUNDLE_FILE), Path::to_owned);
    write_atomically(&path, bundle.as_bytes(), 0o644)?;
    Ok((path, roots.len()))
}

/// A file of the CA; a missing one says how to create the CA.
fn read_ca_file(dir: &Path, name: &str) -> Result<String, CaError> {
    let path = dir.join(name);
    fs::read_to_string(&path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => CaError::Missing {
            dir: dir.to_owned(),
        },
        _ => io_error(&path)(error),
    })
}

fn pem_block(der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut block = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        block.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        block.push('\n');
    }
    block.push_str("-----END CERTIFICATE-----\n");
    block
}

/// A loaded CA that mints leaves for the hosts its constraints permit.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// Verifies minted leaves with this CA as the only root: a host the constraints
    /// forbid is refused exactly as a client would refuse it.
    verifier: Arc<WebPkiServerVerifier>,
    leaves: Mutex<HashMap<Host, Leaf>>,
}

struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    not_after: SystemTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    pub fn load(dir: &Path) -> Result<CertificateAuthority, CaError> {
        let (cert_pem, key_pem) = (read_ca_file(dir, CERT_FILE)?, read_ca_file(dir, KEY_FILE)?);
        let unusable = |reason: String| CaError::Unusable {
            dir: dir.to_owned(),
            reason,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|error| unusable(error.to_string()))?;
        let cert_der = pem_certificate(&cert_pem)
            .ok_or_else(|| unusable(format!("{CERT_FILE} holds no certificate")))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|error| unusable(error.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(cert_der)
            .map_err(|error| unusable(error.to_string()))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|error| unusable(error.to_string()))?;
        Ok(CertificateAuthority {
            issuer,
            verifier,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// A certificate chain and key for `host` (SAN = the host), minted once and cached
    /// until shortly before it expires. Hosts the CA may not sign for are refused.
    pub fn leaf_for(
        &self,
        host: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let parsed = Host::parse(host).ok_or_else(|| CaError::InvalidHost {
            host: host.to_owned(),
        })?;
        // A poisoned lock only means another minting panicked; the cache is still whole.
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = |leaf: &Leaf| {
            leaf.not_after
                .duration_since(SystemTime::now())
                .is_ok_and(|left| left > LEAF_RENEW_BEFORE)
        };
        if let Some(leaf) = leaves.get(&parsed).filter(|leaf| fresh(leaf)) {
            return Ok((leaf.chain.clone(), leaf.key.clone_key().into()));
        }
        let leaf = self.mint(&parsed)?;
        let answer = (leaf.chain.clone(), leaf.key.clone_key().into());
        leaves.insert(parsed, leaf);
        Ok(answer)
    }

    fn mint(&self, host: &Host) -> Result<Leaf, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, host.to_string());
        params.subject_alt_names = vec![host.san()?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = set_validity(&mut params, LEAF_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = vec![cert.der().clone()];
        let refused = self.verifier.verify_server_cert(
            &chain[0],
            &[],
            &host.server_name(),
            &[],
            UnixTime::now(),
        );
        if refused.is_err() {
            return Err(CaError::OutsideConstraints {
                host: host.to_string(),
            });
        }
        Ok(Leaf {
            chain,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_after,
        })
    }
}

/// The first certificate of a PEM text.
fn pem_certificate(pem: &str) -> Option<CertificateDer<'static>> {
    let body: String = pem
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)?
        .split("-----END CERTIFICATE-----")
        .next()?
        .split_whitespace()
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    Some(CertificateDer::from(der))
}

/// From a little before now for `validity`; a random serial. Returns the end.
fn set_validity(params: &mut CertificateParams, validity: Duration) -> SystemTime {
    let now = SystemTime::now();
    let not_after = now + validity;
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    let mut serial = [0u8; 16];
    // An unpredictable serial; the top bit clear keeps the DER integer positive.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial).is_ok() {
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
    }
    not_after
}

/// Creates `dir` with mode 0700, or accepts an existing one only others cannot enter.
fn prepare_directory(dir: &Path) -> Result<(), CaError> {
    #[cfg(unix)]
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.exists() {
        #[cfg(unix)]
        {
            let mode = fs::metadata(dir)
                .map_err(io_error(dir))?
                .permissions()
                .mode()
                & 0o7777;
            if mode & 0o077 != 0 {
                return Err(CaError::DirectoryTooOpen {
                    dir: dir.to_owned(),
                    mode,
                });
            }
        }
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir).map_err(io_error(dir))
}

/// A new file beside `path` with `mode` from the start, synced, then renamed over it: a
/// reader sees the old file or the new one, and the key is never readable by others.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&temp);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let written = options.open(&temp).and_then(|mut file| {
        // The mode asked for exactly, whatever the umask.
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()
    });
    let renamed = written.and_then(|()| fs::rename(&temp, path));
    if renamed.is_err() {
        let _ = fs::remove_file(&temp);
    }
    renamed.map_err(io_error(path))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
