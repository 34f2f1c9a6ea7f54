//! The config file as written: every table rejects fields it does not know, so a typo
//! is an error instead of a silently ignored setting. `validate` turns this into `Config`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub connect_timeout: Option<RawDuration>,
    pub response_header_timeout: Option<RawDuration>,
    pub drain_timeout: Option<RawDuration>,
    pub retry_body_limit: Option<u64>,
    pub client_key: Option<String>,
    pub allow_unauthenticated_beyond_loopback: Option<bool>,
    pub unix_socket: Option<String>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub header_read_timeout: Option<RawDuration>,
    pub first_request_timeout: Option<RawDuration>,
    pub idle_timeout: Option<RawDuration>,
    pub body_timeout: Option<RawDuration>,
    pub write_timeout: Option<RawDuration>,
    pub h2_keepalive_interval: Option<RawDuration>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub path: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub target: Option<String>,
    pub prefix: Option<String>,
    pub host: Option<String>,
    pub listen: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub ca_file: Option<String>,
    pub connect_timeout: Option<RawDuration>,
    pub response_header_timeout: Option<RawDuration>,
    pub retry_body_limit: Option<u64>,
    pub client_cert: Option<String>,
    pub client_cert_key: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub allowed_origins: Option<Vec<String>>,
    pub auth: Option<RawAuth>,
}

/// Every auth option of every kind. Which ones a kind accepts is checked in
/// `providers::AuthSpec::from_raw`, so a field that means nothing for the chosen kind is an
/// error too.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub kind: Option<String>,
    pub grant: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_auth: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub scope: Option<RawScope>,
    pub audience: Option<String>,
    pub organization: Option<String>,
    pub header: Option<String>,
    pub scheme: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub refresh_skew: Option<RawDuration>,
    pub default_ttl: Option<RawDuration>,
    pub refresh_token: Option<String>,
    pub device_authorization_url: Option<String>,
    pub authorize_url: Option<String>,
    pub redirect_uri: Option<String>,
    pub pkce: Option<bool>,
    pub params_in: Option<String>,
    pub expire_url: Option<String>,
    pub revocation_url: Option<String>,
    pub provider_url: Option<String>,
    pub exchange_url: Option<String>,
    pub user_token: Option<String>,
    pub method: Option<String>,
}

/// `scope = "a b"` or `scope = ["a", "b"]`.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum RawScope {
    Joined(String),
    List(Vec<String>),
}

/// `"90s"`, `"5m"`, `"250ms"`, or a plain number of seconds.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(u64),
    Text(String),
}
