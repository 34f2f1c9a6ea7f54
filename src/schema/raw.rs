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
    /// Egress mode (`HTTPS_PROXY`); absent means off.
    pub egress: Option<RawEgress>,
    /// Named client keys, each with what it may do.
    #[serde(default)]
    pub clients: BTreeMap<String, RawClient>,
    /// The access log; absent means off (unless `$TOKENPROXY_ACCESS_LOG` says otherwise).
    pub access_log: Option<RawAccessLog>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `"stderr"`, `"off"`, or a file path.
    pub to: Option<String>,
    /// `"json"` or `"text"`.
    pub format: Option<String>,
    pub query: Option<bool>,
}

/// `[clients.NAME]`: one client's key and policy.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// The key's SHA-256, in hex: what `tokenproxy client add` writes.
    pub key_sha256: Option<String>,
    /// The key itself, best as `${file:...}`.
    pub key: Option<String>,
    /// Upstream names, or `["*"]` for every one.
    pub upstreams: Option<Vec<String>>,
    /// Methods allowed on every upstream of the client (default any).
    pub methods: Option<Vec<String>>,
    /// Path patterns allowed on every upstream of the client (default any).
    pub paths: Option<Vec<String>>,
    /// Per upstream, `methods` and `paths` that replace the client's own.
    pub rules: Option<BTreeMap<String, RawClientRule>>,
    /// May use the `/-/` endpoints beyond health and readiness.
    pub admin: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientRule {
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    pub listen: Option<String>,
    pub ca_dir: Option<String>,
    pub passthrough: Option<Vec<String>>,
    pub allow_unauthenticated_beyond_loopback: Option<bool>,
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
    pub redis: Option<String>,
    pub redis_password: Option<String>,
    pub redis_ca_file: Option<String>,
    pub key_prefix: Option<String>,
    pub encryption_key: Option<String>,
    pub previous_encryption_keys: Option<Vec<String>>,
    pub lease_ttl: Option<RawDuration>,
    pub reread_interval: Option<RawDuration>,
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
    pub when_redis_down: Option<String>,
    pub address: Option<String>,
    pub auth: Option<RawAuth>,
}

/// Every auth option of every kind. Which ones a kind accepts is checked in
/// `providers::AuthSpec::from_raw`, so a field that means nothing for the chosen kind is an
/// error too.
/// Declares every `[auth]` field once, with its kind of value: the struct serde fills, the
/// lookup by name (`RawAuth::field`) and the list of fields that are set, in one order.
macro_rules! auth_fields {
    ($($name:ident: $kind:ident),* $(,)?) => {
        #[derive(Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawAuth {
            pub kind: Option<String>,
            $(pub $name: auth_field!(type $kind),)*
        }

        impl RawAuth {
            /// The field called `name`, with its kind; `None` for a name that is no field.
            pub fn field(&self, name: &str) -> Option<AuthValue<'_>> {
                match name {
                    $(stringify!($name) => Some(auth_field!(value $kind, &self.$name)),)*
                    _ => None,
                }
            }

            /// The fields that are set (`kind` aside), in declaration order.
            pub fn present(&self) -> Vec<&'static str> {
                let mut set = Vec::new();
                $(if self.$name.is_some() {
                    set.push(stringify!($name));
                })*
                set
            }
        }
    };
}

macro_rules! auth_field {
    (type text) => { Option<String> };
    (type secret) => { Option<String> };
    (type flag) => { Option<bool> };
    (type duration) => { Option<RawDuration> };
    (type scope) => { Option<RawScope> };
    (type headers) => { Option<BTreeMap<String, String>> };
    (value text, $field:expr) => { AuthValue::Text($field) };
    (value secret, $field:expr) => { AuthValue::Secret($field) };
    (value flag, $field:expr) => { AuthValue::Flag(*$field) };
    (value duration, $field:expr) => { AuthValue::Duration($field) };
    (value scope, $field:expr) => { AuthValue::Scope($field) };
    (value headers, $field:expr) => { AuthValue::Headers($field) };
}

/// One `[auth]` field as `RawAuth::field` finds it.
pub enum AuthValue<'a> {
    Text(&'a Option<String>),
    Secret(&'a Option<String>),
    Flag(Option<bool>),
    Duration(&'a Option<RawDuration>),
    Scope(&'a Option<RawScope>),
    Headers(&'a Option<BTreeMap<String, String>>),
}

auth_fields! {
    grant: text,
    token_url: text,
    client_id: text,
    client_secret: secret,
    client_auth: text,
    username: text,
    password: secret,
    token: secret,
    scope: scope,
    audience: text,
    organization: text,
    header: text,
    scheme: text,
    headers: headers,
    refresh_skew: duration,
    default_ttl: duration,
    refresh_token: secret,
    device_authorization_url: text,
    authorize_url: text,
    redirect_uri: text,
    pkce: flag,
    params_in: text,
    expire_url: text,
    revocation_url: text,
    provider_url: text,
    exchange_url: text,
    user_token: secret,
    method: text,
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
