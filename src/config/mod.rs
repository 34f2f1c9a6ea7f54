//! Configuration: where it is found, how it is read, and the checks that turn the file
//! into a `Config` the server can trust. Nothing here binds a port, so a bad config is
//! reported before anything listens.

mod interpolate;
mod suggest;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::schema::AuthValue;
pub use crate::schema::{parse_duration, FieldError, RawAuth, RawDuration, RawScope, Target};
pub use interpolate::{ProcessSources, Sources};
use serde::Deserialize;

use crate::access_log::{AccessLogSettings, Destination, Format};
use crate::clients::Clients;
use crate::fleet::{FleetSettings, WhenRedisDown};
use crate::providers::AuthSpec;
use crate::schema::{
    duration_or, header_pairs, RawAccessLog, RawConfig, RawEgress, RawStore, RawUpstream,
};
use crate::secret::Secret;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Request bodies up to 64 KiB are kept for a retry after a 401 or a reset.
pub const DEFAULT_RETRY_BODY_LIMIT: u64 = 64 * 1024;

/// A config that failed to load. Displays as one line: file, field, problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no config file found; looked for {looked}. Create one with `tokenproxy init`")]
    NotFound { looked: String },
    #[error("{file}: cannot read: {source}")]
    Unreadable {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: line {line}: {problem}")]
    Syntax {
        file: String,
        line: usize,
        problem: String,
    },
    #[error("{file}: {field}: {problem}")]
    Invalid {
        file: String,
        field: String,
        problem: String,
    },
}

/// Names the file in a field's error: one line, whatever the key holds.
fn in_file(error: FieldError, file: &str) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        // A TOML key may hold any character; the message stays one line.
        field: error.field.escape_debug().to_string(),
        problem: one_line(&error.problem),
    }
}

impl ConfigError {
    /// Replaces every substituted value in the message.
    fn without(self, values: &[String]) -> ConfigError {
        let scrub = |mut text: String| {
            for value in values.iter().filter(|value| value.len() >= 3) {
                text = text.replace(value.as_str(), "[value from ${...}]");
                // Values are shown debug-quoted too.
                let quoted = format!("{value:?}");
                let quoted = &quoted[1..quoted.len() - 1];
                if !quoted.is_empty() {
                    text = text.replace(quoted, "[value from ${...}]");
                }
            }
            text
        };
        match self {
            ConfigError::Invalid {
                file,
                field,
                problem,
            } => ConfigError::Invalid {
                file,
                field: scrub(field),
                problem: scrub(problem),
            },
            ConfigError::Syntax {
                file,
                line,
                problem,
            } => ConfigError::Syntax {
                file,
                line,
                problem: scrub(problem),
            },
            other => other,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: String,
    pub server: ServerConfig,
    pub store_path: Option<PathBuf>,
    /// Fleet mode: tokens shared through Redis (`store.redis`); then `store_path` is unused.
    pub fleet: Option<FleetSettings>,
    pub upstreams: Vec<UpstreamConfig>,
    /// `[egress]`: parsed and checked; nothing listens on it yet.
    pub egress: Option<EgressConfig>,
    /// Every caller with a key: `server.client_key` and `[clients.NAME]`. Empty: no key
    /// is asked for.
    pub clients: Clients,
    /// `[access_log]`; `None` when it is off.
    pub access_log: Option<AccessLogSettings>,
    /// What the command line set over the file; a reload applies it again.
    pub overrides: Overrides,
    /// Fields whose secret is written in the file itself, not `${ENV}` or `${file:}`.
    pub literal_secrets: Vec<String>,
    /// The file holds secrets and others may read it.
    pub readable_by_others: bool,
}

/// Settings the command line puts over the file's: `run --listen ADDR` (or
/// `$TOKENPROXY_LISTEN`) for `server.listen`. Applied before validation, so every check
/// (a listener beyond loopback needs a client key) holds for them too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub listen: Option<String>,
}

/// Where the access log goes when the config has no `[access_log]`: `stderr`, a file path,
/// or `off` (the container image sets `stderr`).
pub const ACCESS_LOG_ENV: &str = "TOKENPROXY_ACCESS_LOG";

/// One `egress.passthrough` entry: a host or `*.` pattern (lower case) and the one port it
/// opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassthroughRule {
    pub host: String,
    pub port: u16,
}

impl PassthroughRule {
    /// Whether a CONNECT to `host:port` may be tunnelled blindly. `*.example.com` matches
    /// names below `example.com`, not `example.com` itself.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        let host = host.trim_end_matches('.');
        match self.host.strip_prefix("*.") {
            Some(domain) => host.len().checked_sub(domain.len() + 1).is_some_and(|dot| {
                host.as_bytes()[dot] == b'.' && host[dot + 1..].eq_ignore_ascii_case(domain)
            }),
            None => host.eq_ignore_ascii_case(&self.host),
        }
    }
}

/// Egress mode: clients keep the vendors' URLs and send them through this proxy address.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    pub listen: SocketAddr,
    /// Where the local CA's key and certificate live (`tokenproxy ca init`).
    pub ca_dir: PathBuf,
    /// Hosts tunnelled blindly (no interception, no token): `example.com`, `*.example.com`,
    /// each on port 443 unless the rule names another (`git.example.com:8443`).
    pub passthrough: Vec<PassthroughRule>,
    /// Serve egress beyond loopback without `server.client_key`. Explicit, warned at every start.
    pub allow_unauthenticated_beyond_loopback: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub drain_timeout: Duration,
    /// Request bodies up to this size are kept so a request can be retried.
    pub retry_body_limit: u64,
    /// Clients must send `Proxy-Authorization: Bearer <key>` when set.
    pub client_key: Option<Secret>,
    /// Serve a listener beyond loopback without `client_key`. Explicit, warned at every start.
    pub allow_unauthenticated_beyond_loopback: bool,
    /// A Unix socket to listen on as well (mode 0600), for sidecars and shared hosts.
    pub unix_socket: Option<PathBuf>,
    pub max_connections: usize,
    /// Larger request header blocks get 431.
    pub max_header_bytes: usize,
    /// A client has this long to send a request's headers (slowloris).
    pub header_read_timeout: Duration,
    /// From accept (the wait for a free connection slot included) until the first request.
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A request body that makes no progress for this long is cut.
    pub body_timeout: Duration,
    /// A response write that makes no progress (the client stopped reading) for this long.
    pub write_timeout: Duration,
    /// HTTP/2 connections are pinged this often; no answer in 20 s closes them.
    pub h2_keepalive_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub target: Target,
    /// Path prefix that routes here, without a trailing slash (`/bigeval`).
    pub prefix: String,
    /// Host name that routes here, lower-cased, without port or trailing dot.
    pub host: Option<String>,
    /// A listener of its own: every request on it goes to this upstream.
    pub listen: Option<SocketAddr>,
    /// Static extra headers, sent on every forwarded request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub retry_body_limit: u64,
    /// mTLS: the client certificate chain and key (PEM) presented to the upstream.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Skip certificate verification. Explicit, per upstream, warned about at every start.
    pub insecure_skip_verify: bool,
    /// Browser origins (web apps) allowed to call this upstream through the proxy.
    pub allowed_origins: Vec<String>,
    pub auth: AuthSpec,
    /// Fleet mode, Redis unreachable: `None` is the kind's default.
    pub when_redis_down: Option<WhenRedisDown>,
    /// Connect to this IP for the target's host instead of resolving it (curl's
    /// `--resolve`); the port, `Host` and the TLS name stay the target's.
    pub address: Option<std::net::IpAddr>,
    /// The target and auth settings as written: equal keys mean a reload may keep the
    /// upstream's tokens.
    pub auth_key: Secret,
}

/// Finds the config file: `--config`, `$TOKENPROXY_CONFIG`, `./tokenproxy.toml`,
/// `$XDG_CONFIG_HOME/tokenproxy/config.toml`.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    if let Some(path) = std::env::var_os("TOKENPROXY_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if std::env::var_os(CONFIG_TOML_ENV).is_some_and(|text| !text.is_empty()) {
        return Ok(PathBuf::from(format!("${CONFIG_TOML_ENV}")));
    }
    let candidates = [Some(PathBuf::from("tokenproxy.toml")), xdg_config_file()];
    let candidates: Vec<PathBuf> = candidates.into_iter().flatten().collect();
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        return Ok(found.clone());
    }
    let looked = std::iter::once(format!("--config, $TOKENPROXY_CONFIG, ${CONFIG_TOML_ENV}"))
        .chain(candidates.iter().map(|p| p.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(ConfigError::NotFound { looked })
}

/// Where `tokenproxy init` writes: `$XDG_CONFIG_HOME/tokenproxy/config.toml`.
pub fn default_config_file() -> Option<PathBuf> {
    xdg_config_file()
}

fn xdg_config_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("tokenproxy").join("config.toml"))
}

/// The whole config as one environment variable, for containers.
pub const CONFIG_TOML_ENV: &str = "TOKENPROXY_CONFIG_TOML";

/// Reads, interpolates and validates the file at `path` (or, for `$TOKENPROXY_CONFIG_TOML`,
/// that variable's text).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, &Overrides::default())
}

/// `load`, with the command line's `overrides` over the file.
pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = if file == format!("${CONFIG_TOML_ENV}") {
        std::env::var(CONFIG_TOML_ENV).unwrap_or_default()
    } else {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            file: file.clone(),
            source,
        })?
    };
    let mut config = parse_with(&text, &file, &ProcessSources, overrides)?;
    #[cfg(unix)]
    if !config.literal_secrets.is_empty() {
        use std::os::unix::fs::PermissionsExt;
        config.readable_by_others = std::fs::metadata(path)
            .is_ok_and(|metadata| metadata.permissions().mode() & 0o077 != 0);
    }
    Ok(config)
}

/// Parses config text; `file` only names it in errors.
pub fn parse(text: &str, file: &str, sources: &dyn Sources) -> Result<Config, ConfigError> {
    parse_with(text, file, sources, &Overrides::default())
}

/// `parse`, with the command line's `overrides` over the text.
pub fn parse_with(
    text: &str,
    file: &str,
    sources: &dyn Sources,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let mut tree: toml::Value = text
        .parse::<toml::Table>()
        .map(toml::Value::Table)
        .map_err(|error| ConfigError::Syntax {
            file: file.to_owned(),
            line: error
                .span()
                .map(|span| line_of(text, span.start))
                .unwrap_or(1),
            problem: one_line(error.message()),
        })?;
    let literal_secrets = literal_secrets(&tree);
    let mut resolved = Vec::new();
    interpolate::interpolate_tree(&mut tree, &mut Vec::new(), sources, &mut resolved)
        .map_err(|error| in_file(FieldError::new(error.field, error.problem), file))?;
    if let (Some(listen), Some(table)) = (&overrides.listen, tree.as_table_mut()) {
        let server = table
            .entry("server")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(server) = server.as_table_mut() {
            server.insert("listen".into(), toml::Value::String(listen.clone()));
        }
    }
    if let (Some(table), Some(to)) = (tree.as_table_mut(), sources.env(ACCESS_LOG_ENV)) {
        if !to.is_empty() && !table.contains_key("access_log") {
            let mut access_log = toml::Table::new();
            access_log.insert("to".into(), toml::Value::String(to));
            table.insert("access_log".into(), toml::Value::Table(access_log));
        }
    }
    // A value that came from the environment or a secret file may be a secret: whichever
    // check refuses it, the error shows where it came from, not what it is.
    let mut config = checked(tree, file).map_err(|error| error.without(&resolved))?;
    config.overrides = overrides.clone();
    config.literal_secrets = literal_secrets;
    Ok(config)
}

/// The fields of `tree` (as written, before `${...}`) that hold a secret itself rather
/// than a reference to one.
fn literal_secrets(tree: &toml::Value) -> Vec<String> {
    let literal = |value: Option<&toml::Value>| {
        value
            .and_then(toml::Value::as_str)
            .is_some_and(|text| !text.is_empty() && !text.contains("${"))
    };
    let mut fields: Vec<String> = [
        ("server", "client_key"),
        ("store", "redis_password"),
        ("store", "encryption_key"),
    ]
    .into_iter()
    .filter(|(table, key)| literal(tree.get(table).and_then(|table| table.get(key))))
    .map(|(table, key)| format!("{table}.{key}"))
    .collect();
    let upstreams = tree.get("upstreams").and_then(toml::Value::as_table);
    for (name, upstream) in upstreams.into_iter().flatten() {
        let Some(auth) = upstream.get("auth") else {
            continue;
        };
        let Ok(raw) = RawAuth::deserialize(auth.clone()) else {
            continue;
        };
        for key in raw.present() {
            if matches!(raw.field(key), Some(AuthValue::Secret(_))) && literal(auth.get(key)) {
                fields.push(format!("upstreams.{name}.auth.{key}"));
            }
        }
    }
    fields
}

fn checked(tree: toml::Value, file: &str) -> Result<Config, ConfigError> {
    let auth_keys = auth_keys(&tree);
    // Kept to say what an unknown field's table takes.
    let written = tree.clone();
    let raw: RawConfig = serde_path_to_error::deserialize(tree).map_err(|error| {
        let field = error.path().to_string();
        let message = one_line(&error.into_inner().to_string());
        let problem = suggest::unknown_field(&message, &field, &written).unwrap_or(message);
        let field = if field == "." {
            "(top level)".into()
        } else {
            field
        };
        in_file(FieldError::new(field, problem), file)
    })?;
    let mut config = validate(raw, file).map_err(|error| in_file(error, file))?;
    for upstream in &mut config.upstreams {
        let auth = auth_keys.get(&upstream.name).cloned().unwrap_or_default();
        // Token requests share the upstream's transport: its CA and timeout count too.
        upstream.auth_key = Secret::new(format!(
            "{}\n{:?}\n{:?}\n{:?}\n{}\n{auth}",
            upstream.target.uri,
            upstream.ca_file,
            upstream.connect_timeout,
            upstream.client_cert,
            upstream.insecure_skip_verify
        ));
    }
    Ok(config)
}

/// Each upstream's auth table as written (after interpolation), to tell on reload whether
/// its settings changed. It holds secrets, so it is kept as one.
fn auth_keys(tree: &toml::Value) -> std::collections::HashMap<String, String> {
    tree.get("upstreams")
        .and_then(toml::Value::as_table)
        .map(|upstreams| {
            upstreams
                .iter()
                .filter_map(|(name, upstream)| {
                    let auth = upstream.get("auth")?;
                    Some((name.clone(), toml::to_string(auth).ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn validate(raw: RawConfig, file: &str) -> Result<Config, FieldError> {
    let server = &raw.server;
    let listen = parse_listen(
        "server.listen",
        server.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
    )?;
    let connect_timeout = duration_or(
        "server.connect_timeout",
        &server.connect_timeout,
        Duration::from_secs(10),
    )?;
    let response_header_timeout = duration_or(
        "server.response_header_timeout",
        &server.response_header_timeout,
        Duration::from_secs(60),
    )?;
    let drain_timeout = duration_or(
        "server.drain_timeout",
        &server.drain_timeout,
        Duration::from_secs(10),
    )?;
    let server_config = ServerConfig {
        listen,
        allowed_hosts: server.allowed_hosts.clone().unwrap_or_default(),
        allowed_origins: origins("server.allowed_origins", server.allowed_origins.as_deref())?,
        connect_timeout,
        response_header_timeout,
        drain_timeout,
        retry_body_limit: server.retry_body_limit.unwrap_or(DEFAULT_RETRY_BODY_LIMIT),
        client_key: match server.client_key.as_deref() {
            Some("") => return Err(FieldError::new("server.client_key", "must not be empty")),
            Some(key) if key.len() < 16 => {
                return Err(FieldError::new(
                    "server.client_key",
                    "must be at least 16 characters",
                ))
            }
            key => key.map(Secret::new),
        },
        allow_unauthenticated_beyond_loopback: server
            .allow_unauthenticated_beyond_loopback
            .unwrap_or(false),
        unix_socket: server.unix_socket.as_deref().map(PathBuf::from),
        max_connections: match server.max_connections {
            Some(0) => {
                return Err(FieldError::new(
                    "server.max_connections",
                    "must be at least 1",
                ))
            }
            limit => limit.unwrap_or(1024),
        },
        max_header_bytes: match server.max_header_bytes {
            Some(bytes) if bytes < 8192 => {
                return Err(FieldError::new(
                    "server.max_header_bytes",
                    "must be at least 8192",
                ))
            }
            limit => limit.unwrap_or(64 * 1024),
        },
        header_read_timeout: duration_or(
            "server.header_read_timeout",
            &server.header_read_timeout,
            Duration::from_secs(10),
        )?,
        first_request_timeout: timeout_or(
            "server.first_request_timeout",
            &server.first_request_timeout,
            Duration::from_secs(10),
        )?,
        idle_timeout: timeout_or(
            "server.idle_timeout",
            &server.idle_timeout,
            Duration::from_secs(60),
        )?,
        body_timeout: timeout_or(
            "server.body_timeout",
            &server.body_timeout,
            Duration::from_secs(30),
        )?,
        write_timeout: timeout_or(
            "server.write_timeout",
            &server.write_timeout,
            Duration::from_secs(30),
        )?,
        h2_keepalive_interval: timeout_or(
            "server.h2_keepalive_interval",
            &server.h2_keepalive_interval,
            Duration::from_secs(30),
        )?,
    };

    let fleet = fleet_settings(&raw.store)?;
    let store_path = match raw.store.path.as_deref() {
        Some(_) if fleet.is_some() => {
            return Err(FieldError::new(
                "store.path",
                "not used with store.redis: the fleet keeps its tokens in Redis; remove one",
            ))
        }
        None if fleet.is_some() => None,
        Some("memory") => None,
        Some("") => return Err(FieldError::new("store.path", "must not be empty")),
        Some(path) => Some(PathBuf::from(path)),
        None => default_store_path(),
    };

    if raw.upstreams.is_empty() {
        return Err(FieldError::new(
            "upstreams",
            "no upstream is configured; add an [upstreams.NAME] table",
        ));
    }
    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (name, upstream) in &raw.upstreams {
        upstreams.push(validate_upstream(name, upstream, &server_config)?);
    }
    let egress = raw.egress.as_ref().map(validate_egress).transpose()?;
    let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    let clients = Clients::from_config(&raw.clients, &names, server_config.client_key.as_ref())?;
    check_routes_are_unique(&upstreams, listen, egress.as_ref())?;
    check_wide_listeners_have_a_key(&server_config, &clients, &upstreams)?;
    if let Some(egress) = &egress {
        check_wide_egress_has_a_key(&clients, egress)?;
        check_egress_targets_are_distinct(&upstreams)?;
    }

    Ok(Config {
        source: file.to_owned(),
        server: server_config,
        store_path,
        fleet,
        upstreams,
        egress,
        overrides: Overrides::default(),
        literal_secrets: Vec::new(),
        readable_by_others: false,
        clients,
        access_log: raw
            .access_log
            .as_ref()
            .map(access_log)
            .transpose()?
            .flatten(),
    })
}

/// `[access_log]`: `to` defaults to stderr and `format` to JSON; `to = "off"` is none.
fn access_log(raw: &RawAccessLog) -> Result<Option<AccessLogSettings>, FieldError> {
    let to = match raw.to.as_deref().map(str::trim) {
        None | Some("stderr") => Destination::Stderr,
        Some("off") => return Ok(None),
        Some("") => {
            return Err(FieldError::new(
                "access_log.to",
                "must be \"stderr\", \"off\" or a file path",
            ))
        }
        Some(path) => Destination::File(PathBuf::from(path)),
    };
    let format = match raw.format.as_deref() {
        None => Format::Json,
        Some(text) => Format::parse(text).ok_or_else(|| {
            FieldError::new(
                "access_log.format",
                format!("{text:?} is not one of \"json\", \"text\""),
            )
        })?,
    };
    Ok(Some(AccessLogSettings {
        to,
        format,
        query: raw.query.unwrap_or(false),
    }))
}

fn validate_upstream(
    name: &str,
    raw: &RawUpstream,
    server: &ServerConfig,
) -> Result<UpstreamConfig, FieldError> {
    let field = |leaf: &str| format!("upstreams.{name}.{leaf}");
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_name || name == "-" {
        return Err(FieldError::new(
            format!("upstreams.{name}"),
            "an upstream name may use only a-z, 0-9, '-' and '_'",
        ));
    }
    let target_text = raw
        .target
        .as_deref()
        .ok_or_else(|| FieldError::new(field("target"), "missing; the vendor's base URL"))?;
    let target =
        Target::parse(target_text).map_err(|problem| FieldError::new(field("target"), problem))?;

    let prefix = match raw.prefix.as_deref() {
        None => format!("/{name}"),
        Some(prefix) => {
            if !prefix.starts_with('/') {
                return Err(FieldError::new(field("prefix"), "must start with '/'"));
            }
            let trimmed = prefix.trim_end_matches('/');
            if trimmed == "/-" || trimmed.starts_with("/-/") {
                return Err(FieldError::new(
                    field("prefix"),
                    "/-/ is reserved for tokenproxy's own endpoints",
                ));
            }
            if trimmed.contains("//") || trimmed.split('/').any(|s| s == "." || s == "..") {
                return Err(FieldError::new(field("prefix"), "must be a plain path"));
            }
            trimmed.to_owned()
        }
    };
    let host = raw
        .host
        .as_deref()
        .map(|host| {
            let host = normalize_host(host);
            if host.is_empty() || host.contains(['/', ' ', ':']) {
                Err(FieldError::new(field("host"), "must be a bare host name"))
            } else {
                Ok(host)
            }
        })
        .transpose()?;
    let listen = raw
        .listen
        .as_deref()
        .map(|addr| parse_listen(&field("listen"), addr))
        .transpose()?;
    let headers = raw
        .headers
        .as_ref()
        .map(|headers| header_pairs(&field("headers"), headers))
        .transpose()?
        .unwrap_or_default();
    let ca_file = raw.ca_file.as_deref().map(PathBuf::from);
    if let Some(path) = &ca_file {
        if !path.is_file() {
            return Err(FieldError::new(
                field("ca_file"),
                format!("{} is not a readable file", path.display()),
            ));
        }
    }
    let auth_raw = raw.auth.as_ref().ok_or_else(|| {
        FieldError::new(
            field("auth"),
            "missing; add [upstreams.NAME.auth] with a kind",
        )
    })?;
    let auth = AuthSpec::from_raw(auth_raw, &target, &field("auth"))?;
    let when_redis_down = raw
        .when_redis_down
        .as_deref()
        .map(|text| {
            WhenRedisDown::parse(text).ok_or_else(|| {
                FieldError::new(
                    field("when_redis_down"),
                    format!("{text:?} is not one of \"keep_held_token\", \"fetch_locally\""),
                )
            })
        })
        .transpose()?;
    let address = raw
        .address
        .as_deref()
        .map(|text| {
            text.trim_matches(['[', ']']).parse().map_err(|_| {
                FieldError::new(
                    field("address"),
                    format!("{text:?} is not an IP address such as \"127.0.0.1\" (the port stays the target's)"),
                )
            })
        })
        .transpose()?;
    Ok(UpstreamConfig {
        when_redis_down,
        address,
        name: name.to_owned(),
        target,
        prefix,
        host,
        listen,
        headers,
        ca_file,
        connect_timeout: duration_or(
            &field("connect_timeout"),
            &raw.connect_timeout,
            server.connect_timeout,
        )?,
        response_header_timeout: duration_or(
            &field("response_header_timeout"),
            &raw.response_header_timeout,
            server.response_header_timeout,
        )?,
        retry_body_limit: raw.retry_body_limit.unwrap_or(server.retry_body_limit),
        client_cert: match (&raw.client_cert, &raw.client_cert_key) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(FieldError::new(
                    field("client_cert_key"),
                    "missing; client_cert needs its key",
                ))
            }
            (None, Some(_)) => {
                return Err(FieldError::new(
                    field("client_cert"),
                    "missing; client_cert_key needs its certificate",
                ))
            }
        },
        insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
        allowed_origins: origins(&field("allowed_origins"), raw.allowed_origins.as_deref())?,
        auth,
        auth_key: Secret::default(),
    })
}

fn validate_egress(raw: &RawEgress) -> Result<EgressConfig, FieldError> {
    let listen = raw.listen.as_deref().ok_or_else(|| {
        FieldError::new(
            "egress.listen",
            "missing; the proxy address clients put in HTTPS_PROXY, such as \"127.0.0.1:3128\"",
        )
    })?;
    let ca_dir = match raw.ca_dir.as_deref() {
        Some("") => return Err(FieldError::new("egress.ca_dir", "must not be empty")),
        Some(dir) => PathBuf::from(dir),
        None => default_ca_dir().ok_or_else(|| {
            FieldError::new(
                "egress.ca_dir",
                "has no default without $XDG_STATE_HOME or $HOME; set it",
            )
        })?,
    };
    let passthrough = raw
        .passthrough
        .iter()
        .flatten()
        .map(|pattern| {
            passthrough_rule(pattern).ok_or_else(|| {
                FieldError::new(
                    "egress.passthrough",
                    format!(
                        "{pattern:?} is not a host name or a pattern such as \"*.example.com\" (with an optional \":port\", 443 when absent)"
                    ),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(EgressConfig {
        listen: parse_listen("egress.listen", listen)?,
        ca_dir,
        passthrough,
        allow_unauthenticated_beyond_loopback: raw
            .allow_unauthenticated_beyond_loopback
            .unwrap_or(false),
    })
}

/// `example.com` or `*.example.com`, lower-cased, with an optional `:port`; `None` for
/// anything else (paths, a `*` inside a label, a bare `*`, port 0).
fn passthrough_rule(text: &str) -> Option<PassthroughRule> {
    let text = text.trim();
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().ok().filter(|port| *port != 0)?),
        None => (text, 443),
    };
    let host = host_pattern(host)?;
    Some(PassthroughRule { host, port })
}

fn host_pattern(pattern: &str) -> Option<String> {
    let pattern = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (name.len() <= 253 && name.split('.').all(label_ok)).then_some(pattern)
}

fn check_routes_are_unique(
    upstreams: &[UpstreamConfig],
    main_listen: SocketAddr,
    egress: Option<&EgressConfig>,
) -> Result<(), FieldError> {
    // Each route, with who has it, so a clash names the other one.
    let mut prefixes: HashMap<&str, &str> = HashMap::new();
    let mut hosts: HashMap<&str, &str> = HashMap::new();
    let mut ports: HashMap<SocketAddr, String> =
        HashMap::from([(main_listen, "server.listen".to_owned())]);
    if let Some(egress) = egress.filter(|egress| egress.listen.port() != 0) {
        if egress.listen == main_listen {
            return Err(FieldError::new(
                "egress.listen",
                format!("{} is already used by server.listen", egress.listen),
            ));
        }
        ports.insert(egress.listen, "egress.listen".to_owned());
    }
    for upstream in upstreams {
        let name = upstream.name.as_str();
        let field = |leaf: &str| format!("upstreams.{name}.{leaf}");
        if let Some(other) = prefixes.insert(&upstream.prefix, name) {
            return Err(FieldError::new(
                field("prefix"),
                format!(
                    "{:?} is already the prefix of upstream {other}; give one of them another prefix",
                    upstream.prefix
                ),
            ));
        }
        if let Some(host) = &upstream.host {
            if let Some(other) = hosts.insert(host, name) {
                return Err(FieldError::new(
                    field("host"),
                    format!("{host:?} is already the host of upstream {other}"),
                ));
            }
        }
        // Port 0 asks the system for a free port, so it can never clash.
        if let Some(listen) = upstream.listen.filter(|addr| addr.port() != 0) {
            if let Some(other) = ports.insert(listen, field("listen")) {
                return Err(FieldError::new(
                    field("listen"),
                    format!("{listen} is already used by {other}"),
                ));
            }
        }
    }
    Ok(())
}

/// A browser sends neither `Origin` nor `Sec-Fetch-*` on a cross-site GET to a plain-http
/// name that is not loopback, so beyond loopback the browser guard cannot tell a web page
/// from a client: only the client key can.
fn check_wide_listeners_have_a_key(
    server: &ServerConfig,
    clients: &Clients,
    upstreams: &[UpstreamConfig],
) -> Result<(), FieldError> {
    if !clients.is_empty() || server.allow_unauthenticated_beyond_loopback {
        return Ok(());
    }
    match listeners(server, upstreams).find(|listen| !listen.ip().is_loopback()) {
        Some(listen) => Err(FieldError::new(
            "server.client_key",
            format!(
                "required when listening beyond loopback ({listen}): browsers there send no Origin or Sec-Fetch-* headers, so any web page could spend the tokens; set server.client_key or a [clients.NAME] key, or server.allow_unauthenticated_beyond_loopback = true"
            ),
        )),
        None => Ok(()),
    }
}

/// The same rule for the egress listener, with its own explicit opt-out.
fn check_wide_egress_has_a_key(clients: &Clients, egress: &EgressConfig) -> Result<(), FieldError> {
    if !clients.is_empty()
        || egress.allow_unauthenticated_beyond_loopback
        || egress.listen.ip().is_loopback()
    {
        return Ok(());
    }
    Err(FieldError::new(
        "server.client_key",
        format!(
            "required when egress listens beyond loopback ({}): any machine or web page that can reach it could spend the tokens; set server.client_key or a [clients.NAME] key, or egress.allow_unauthenticated_beyond_loopback = true",
            egress.listen
        ),
    ))
}

/// Egress routes a request by the vendor URL the client used, so two upstreams at one
/// URL (two accounts at one vendor) could not be told apart: the token of either could go
/// to the other's requests.
fn check_egress_targets_are_distinct(upstreams: &[UpstreamConfig]) -> Result<(), FieldError> {
    let mut seen = HashMap::new();
    for upstream in upstreams {
        let target = &upstream.target;
        let url = (
            target.scheme.as_str().to_owned(),
            target.host(),
            target.port(),
            target.base_path.clone(),
        );
        if let Some(other) = seen.insert(url, upstream.name.as_str()) {
            return Err(FieldError::new(
                format!("upstreams.{}.target", upstream.name),
                format!(
                    "is upstream {other}'s URL too; egress routes by the vendor's URL and could not tell them apart: serve the second account from a tokenproxy of its own, or leave [egress] out"
                ),
            ));
        }
    }
    Ok(())
}

/// `server.listen` and every upstream's own `listen`.
fn listeners<'a>(
    server: &ServerConfig,
    upstreams: &'a [UpstreamConfig],
) -> impl Iterator<Item = SocketAddr> + 'a {
    std::iter::once(server.listen).chain(upstreams.iter().filter_map(|u| u.listen))
}

/// Origins as browsers send them: `scheme://host[:port]`, no path.
fn origins(field: &str, origins: Option<&[String]>) -> Result<Vec<String>, FieldError> {
    origins
        .unwrap_or_default()
        .iter()
        .map(|origin| {
            let trimmed = origin.trim_end_matches('/');
            let valid = url::Url::parse(trimmed).is_ok_and(|url| {
                matches!(url.scheme(), "http" | "https")
                    && url.has_host()
                    && url.path() == "/"
                    && url.query().is_none()
            }) && !trimmed.contains('*');
            if valid {
                Ok(trimmed.to_owned())
            } else {
                Err(FieldError::new(
                    field,
                    format!("{origin:?} is not an origin such as \"http://localhost:3000\""),
                ))
            }
        })
        .collect()
}

impl Config {
    /// Settings that work but are probably not what the user wants.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for listen in listeners(&self.server, &self.upstreams) {
            if !listen.ip().is_loopback() {
                if self.clients.is_empty() {
                    warnings.push(format!(
                        "listening on {listen}, beyond loopback, without server.client_key (server.allow_unauthenticated_beyond_loopback = true): other machines, and any web page a browser there opens, can spend these tokens"
                    ));
                }
                if self.server.allowed_hosts.is_empty() {
                    warnings.push(format!(
                        "{listen} is not loopback and server.allowed_hosts is empty: clients must use a loopback name or the listen IP; list the names they use (a sidecar's service name)"
                    ));
                }
            }
        }
        if let Some(egress) = self
            .egress
            .as_ref()
            .filter(|egress| !egress.listen.ip().is_loopback() && self.clients.is_empty())
        {
            warnings.push(format!(
                "egress listens on {}, beyond loopback, without server.client_key (egress.allow_unauthenticated_beyond_loopback = true): other machines can spend these tokens",
                egress.listen
            ));
        }
        if self.readable_by_others {
            warnings.push(format!(
                "{} holds secrets ({}) and others can read it: chmod 600 {}, or take them from ${{ENV}} or ${{file:...}}",
                self.source,
                self.literal_secrets.join(", "),
                self.source
            ));
        }
        for upstream in &self.upstreams {
            if upstream.insecure_skip_verify {
                warnings.push(format!(
                    "upstreams.{}.insecure_skip_verify: its certificate is NOT verified",
                    upstream.name
                ));
            }
        }
        warnings
    }
}

/// Lower-cases a host and drops its port and trailing dot, the one form routing compares.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop what follows them.
        rest.split_once(']')
            .map(|(inside, _)| format!("[{inside}]"))
            .unwrap_or_else(|| host.to_owned())
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map(|(name, _)| name.to_owned())
            .unwrap_or_else(|| host.to_owned())
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

fn parse_listen(field: &str, text: &str) -> Result<SocketAddr, FieldError> {
    listen_address(text).map_err(|problem| FieldError::new(field, problem))
}

/// A listen address as a user writes it: `127.0.0.1:8080`, `[::1]:8080`, `0.0.0.0:8080`,
/// `localhost:8080` (loopback), or just a port, `8080` (loopback, as `kubectl proxy
/// --port`). Names other than `localhost` are not resolved: an address to listen on is
/// the machine's own.
pub fn listen_address(text: &str) -> Result<SocketAddr, String> {
    let loopback = |port: &str| {
        port.parse::<u16>()
            .ok()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let parsed = text.parse().ok().or_else(|| match text.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => loopback(port),
        Some(_) => None,
        None => loopback(text),
    });
    parsed.ok_or_else(|| {
        format!(
            "{text:?} is not an address:port such as {DEFAULT_LISTEN}, localhost:8080 or a port"
        )
    })
}

/// `duration_or` for a timeout, which cannot be zero.
fn timeout_or(
    field: &str,
    raw: &Option<RawDuration>,
    default: Duration,
) -> Result<Duration, FieldError> {
    match duration_or(field, raw, default)? {
        Duration::ZERO => Err(FieldError::new(field, "must be more than 0")),
        timeout => Ok(timeout),
    }
}

/// `[store]` with `redis`: the fleet's settings. The other fleet fields without `redis`
/// are an error, not silently ignored.
fn fleet_settings(store: &RawStore) -> Result<Option<FleetSettings>, FieldError> {
    let Some(url) = store.redis.as_deref() else {
        let stray = [
            ("redis_password", store.redis_password.is_some()),
            ("redis_ca_file", store.redis_ca_file.is_some()),
            ("key_prefix", store.key_prefix.is_some()),
            ("encryption_key", store.encryption_key.is_some()),
            (
                "previous_encryption_keys",
                store.previous_encryption_keys.is_some(),
            ),
            ("lease_ttl", store.lease_ttl.is_some()),
            ("reread_interval", store.reread_interval.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set);
        return match stray {
            Some((name, _)) => Err(FieldError::new(
                format!("store.{name}"),
                "only means something with store.redis (fleet mode)",
            )),
            None => Ok(None),
        };
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(FieldError::new(
            "store.redis",
            "must be a redis:// or rediss:// (TLS) URL, such as redis://127.0.0.1:6379/0",
        ));
    }
    let key_prefix = store
        .key_prefix
        .clone()
        .unwrap_or_else(|| "tokenproxy:".into());
    if key_prefix.is_empty() || key_prefix.contains(char::is_whitespace) {
        return Err(FieldError::new(
            "store.key_prefix",
            "must be a non-empty word such as \"tokenproxy:\"",
        ));
    }
    let key = store.encryption_key.as_deref().ok_or_else(|| {
        FieldError::new(
            "store.encryption_key",
            "missing: tokens in Redis are sealed; give 32 random bytes in base64 (openssl rand -base64 32), best as \"${file:/path}\"",
        )
    })?;
    let mut encryption_keys = vec![Secret::new(key.to_owned())];
    for previous in store.previous_encryption_keys.iter().flatten() {
        encryption_keys.push(Secret::new(previous.clone()));
    }
    for (index, key) in encryption_keys.iter().enumerate() {
        if let Err(problem) = crate::fleet::seal::SealKey::parse(key) {
            let name = match index {
                0 => "store.encryption_key".to_owned(),
                n => format!("store.previous_encryption_keys[{}]", n - 1),
            };
            return Err(FieldError::new(name, problem));
        }
    }
    let ca_file = store.redis_ca_file.as_deref().map(PathBuf::from);
    if let Some(path) = &ca_file {
        if !url.starts_with("rediss://") {
            return Err(FieldError::new(
                "store.redis_ca_file",
                "only means something with a rediss:// (TLS) URL",
            ));
        }
        if !path.is_file() {
            return Err(FieldError::new(
                "store.redis_ca_file",
                format!("{} is not a readable file", path.display()),
            ));
        }
    }
    Ok(Some(FleetSettings {
        url: Secret::new(url.to_owned()),
        password: store.redis_password.clone().map(Secret::new),
        ca_file,
        key_prefix,
        encryption_keys,
        lease_ttl: timeout_or("store.lease_ttl", &store.lease_ttl, Duration::from_secs(10))?,
        reread_interval: timeout_or(
            "store.reread_interval",
            &store.reread_interval,
            Duration::from_secs(5),
        )?,
    }))
}

fn default_store_path() -> Option<PathBuf> {
    Some(xdg_state_dir()?.join("tokens.json"))
}

/// Where `[egress] ca_dir` defaults to: `$XDG_STATE_HOME/tokenproxy/ca`.
pub fn default_ca_dir() -> Option<PathBuf> {
    Some(xdg_state_dir()?.join("ca"))
}

/// `$XDG_STATE_HOME/tokenproxy`, else `~/.local/state/tokenproxy`.
fn xdg_state_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state"))
        })?;
    Some(base.join("tokenproxy"))
}

#[cfg(test)]
mod tests;
