//! Who may call through the proxy, and what each caller may do. The callers are the named
//! clients of `[clients.NAME]` and `server.client_key` (a client with full access), each
//! known only by the SHA-256 of its key. A routed request is checked against its client's
//! policy (upstream, method, path) before anything is forwarded; the check allocates only
//! when it refuses.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::Method;

use crate::schema::{FieldError, RawClient, RawClientRule};
use crate::secret::Secret;

/// The name `server.client_key` goes by in the access log, the metrics and the status. A
/// `[clients.NAME]` name cannot contain a dot, so it never clashes.
pub const SERVER_KEY_CLIENT: &str = "server.client_key";

/// Keys shorter than this are refused: a client key is a password for every upstream.
pub const MIN_KEY_LEN: usize = 16;

/// A key's SHA-256: all the proxy keeps of a named client's key. Prints redacted.
#[derive(Clone, Copy)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    pub fn of(key: &[u8]) -> KeyDigest {
        let digest = ring::digest::digest(&ring::digest::SHA256, key);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        KeyDigest(bytes)
    }

    /// 64 hex digits, either case.
    pub fn from_hex(text: &str) -> Option<KeyDigest> {
        let text = text.trim().as_bytes();
        if text.len() != 64 {
            return None;
        }
        let nibble = |byte: u8| char::from(byte).to_digit(16).map(|n| n as u8);
        let mut bytes = [0u8; 32];
        for (index, pair) in text.chunks_exact(2).enumerate() {
            bytes[index] = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(KeyDigest(bytes))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Compared in constant time: how much of a digest matched is not told by timing.
    fn matches(&self, other: &KeyDigest) -> bool {
        let difference = self
            .0
            .iter()
            .zip(&other.0)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b));
        difference == 0
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One caller and its policy.
#[derive(Debug)]
pub struct Client {
    /// Shared with every access-log line of this client.
    pub name: Arc<str>,
    key: KeyDigest,
    pub access: Access,
    /// May use the `/-/` endpoints beyond health and readiness (status, metrics, actions).
    pub admin: bool,
}

#[derive(Debug)]
pub enum Access {
    /// Every upstream, any method and path.
    Full,
    /// Only these upstreams, each with its limits.
    Scoped(Vec<Grant>),
}

/// What a client may do on one upstream.
#[derive(Debug)]
pub struct Grant {
    pub upstream: String,
    /// `None`: any method.
    pub methods: Option<Limit<Method>>,
    /// `None`: any path.
    pub paths: Option<Limit<PathPattern>>,
}

/// Allowed values and the config field they come from, named in a refusal.
#[derive(Debug)]
pub struct Limit<T> {
    pub allowed: Vec<T>,
    pub field: String,
}

/// Which rule refused a request: a fixed set, for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Upstream,
    Method,
    Path,
    Admin,
}

impl RuleKind {
    pub const ALL: [RuleKind; 4] = [
        RuleKind::Upstream,
        RuleKind::Method,
        RuleKind::Path,
        RuleKind::Admin,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RuleKind::Upstream => "upstream",
            RuleKind::Method => "method",
            RuleKind::Path => "path",
            RuleKind::Admin => "admin",
        }
    }
}

/// A request outside its client's policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client {client} may not {action} (rule {rule})")]
pub struct PolicyRefusal {
    pub client: String,
    pub kind: RuleKind,
    /// The config field that refused it: `clients.ci.rules.bigid.methods`.
    pub rule: String,
    pub action: String,
    /// The upstream asked for; `None` for the admin endpoints.
    pub upstream: Option<String>,
}

impl Client {
    /// Whether this client may send `method` to `path` (as routed: after the prefix) on
    /// `upstream`.
    pub fn check(&self, upstream: &str, method: &Method, path: &str) -> Result<(), PolicyRefusal> {
        let grants = match &self.access {
            Access::Full => return Ok(()),
            Access::Scoped(grants) => grants,
        };
        let Some(grant) = grants.iter().find(|grant| grant.upstream == upstream) else {
            return Err(self.refusal(
                RuleKind::Upstream,
                format!("clients.{}.upstreams", self.name),
                format!("use upstream {upstream}"),
                Some(upstream),
            ));
        };
        if let Some(methods) = &grant.methods {
            if !methods.allowed.contains(method) {
                return Err(self.refusal(
                    RuleKind::Method,
                    methods.field.clone(),
                    format!(
                        "send {method} to upstream {upstream} (allowed: {})",
                        join(&methods.allowed)
                    ),
                    Some(upstream),
                ));
            }
        }
        if let Some(paths) = &grant.paths {
            let allowed = !ambiguous(path) && paths.allowed.iter().any(|p| p.matches(path));
            if !allowed {
                return Err(self.refusal(
                    RuleKind::Path,
                    paths.field.clone(),
                    format!(
                        "reach {path} on upstream {upstream} (allowed: {})",
                        join(&paths.allowed)
                    ),
                    Some(upstream),
                ));
            }
        }
        Ok(())
    }

    /// Whether this client may use the admin endpoints beyond health and readiness.
    pub fn check_admin(&self) -> Result<(), PolicyRefusal> {
        if self.admin {
            return Ok(());
        }
        Err(self.refusal(
            RuleKind::Admin,
            format!("clients.{}.admin", self.name),
            "use the /-/ endpoints".to_owned(),
            None,
        ))
    }

    fn refusal(
        &self,
        kind: RuleKind,
        rule: String,
        action: String,
        upstream: Option<&str>,
    ) -> PolicyRefusal {
        PolicyRefusal {
            client: self.name.to_string(),
            kind,
            rule,
            action,
            upstream: upstream.map(str::to_owned),
        }
    }

    /// The policy in words, for `tokenproxy client list` and the status: never the key.
    pub fn policy(&self) -> String {
        let grants = match &self.access {
            Access::Full => return "every upstream, any method and path".to_owned(),
            Access::Scoped(grants) => grants,
        };
        grants
            .iter()
            .map(|grant| {
                let mut text = grant.upstream.clone();
                match &grant.methods {
                    Some(methods) => text.push_str(&format!(" {}", join(&methods.allowed))),
                    None => text.push_str(" any method"),
                }
                if let Some(paths) = &grant.paths {
                    text.push_str(&format!(" on {}", join(&paths.allowed)));
                }
                text
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The upstreams this client may use; `None` for every one.
    pub fn upstreams(&self) -> Option<Vec<&str>> {
        match &self.access {
            Access::Full => None,
            Access::Scoped(grants) => Some(grants.iter().map(|g| g.upstream.as_str()).collect()),
        }
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A path some vendor could read as another path: an encoded `/` or `\`, a `\`, or a `;`
/// parameter (`..;/`). Never matched by a pattern, so a pattern cannot be stepped around.
fn ambiguous(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().any(|byte| matches!(byte, b'\\' | b';'))
        || bytes.windows(3).any(|window| {
            window[0] == b'%'
                && (window[1..].eq_ignore_ascii_case(b"2f")
                    || window[1..].eq_ignore_ascii_case(b"5c"))
        })
}

/// A path pattern: `*` matches within one segment, a `**` segment any number of segments
/// (none too). `/api/v1/items/*` matches `/api/v1/items/7`; `/reports/**` matches
/// `/reports` and everything below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern(String);

impl PathPattern {
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?} must start with '/'"));
        }
        let misplaced = text
            .split('/')
            .any(|segment| segment.contains("**") && segment != "**");
        if misplaced {
            return Err(format!(
                "{text:?}: ** stands for whole segments only, as in /reports/**"
            ));
        }
        Ok(PathPattern(text.to_owned()))
    }

    pub fn matches(&self, path: &str) -> bool {
        segments_match(&self.0[1..], path.strip_prefix('/').unwrap_or(path))
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `pattern` and `path` without their leading `/`, compared segment by segment.
fn segments_match(pattern: &str, path: &str) -> bool {
    let (head, pattern_rest) = match pattern.split_once('/') {
        Some((head, rest)) => (head, Some(rest)),
        None => (pattern, None),
    };
    if head == "**" {
        let Some(pattern_rest) = pattern_rest else {
            return true;
        };
        // `**` takes no segment, or one more, until the rest of the pattern fits.
        let mut remaining = path;
        loop {
            if segments_match(pattern_rest, remaining) {
                return true;
            }
            match remaining.split_once('/') {
                Some((_, rest)) => remaining = rest,
                None => return false,
            }
        }
    }
    let (segment, path_rest) = match path.split_once('/') {
        Some((segment, rest)) => (segment, Some(rest)),
        None => (path, None),
    };
    if !glob(head.as_bytes(), segment.as_bytes()) {
        return false;
    }
    match (pattern_rest, path_rest) {
        (None, None) => true,
        (Some(pattern_rest), Some(path_rest)) => segments_match(pattern_rest, path_rest),
        // `/reports/**` also matches `/reports`.
        (Some("**"), None) => true,
        _ => false,
    }
}

/// `*` matches any run of bytes in one segment.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|byte| *byte == b'*')
}

/// Every caller the proxy knows: `server.client_key` first, then the named clients.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    entries: Vec<Arc<Client>>,
}

impl Clients {
    /// Checks `[clients]` against the configured upstream names.
    pub fn from_config(
        raw: &BTreeMap<String, RawClient>,
        upstreams: &[&str],
        server_key: Option<&Secret>,
    ) -> Result<Clients, FieldError> {
        let mut entries = Vec::with_capacity(raw.len() + 1);
        if let Some(key) = server_key {
            entries.push(Arc::new(Client {
                name: Arc::from(SERVER_KEY_CLIENT),
                key: KeyDigest::of(key.expose().as_bytes()),
                access: Access::Full,
                admin: true,
            }));
        }
        for (name, client) in raw {
            let client = validate(name, client, upstreams)?;
            if let Some(other) = entries.iter().find(|other| other.key.matches(&client.key)) {
                return Err(FieldError::new(
                    format!("clients.{name}"),
                    format!(
                        "has the same key as {}; every client needs its own",
                        other.name
                    ),
                ));
            }
            entries.push(Arc::new(client));
        }
        Ok(Clients { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.entries.iter()
    }

    pub fn get(&self, index: usize) -> Option<&Arc<Client>> {
        self.entries.get(index)
    }

    /// The index of the client whose key has this digest. Every entry is compared, in
    /// constant time each.
    pub fn identify(&self, presented: &KeyDigest) -> Option<usize> {
        let mut found = None;
        for (index, client) in self.entries.iter().enumerate() {
            if client.key.matches(presented) {
                found = Some(index);
            }
        }
        found
    }
}

fn validate(name: &str, raw: &RawClient, upstreams: &[&str]) -> Result<Client, FieldError> {
    let field = |leaf: &str| format!("clients.{name}.{leaf}");
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_name {
        return Err(FieldError::new(
            format!("clients.{name}"),
            "a client name may use only a-z, 0-9, '-' and '_'",
        ));
    }
    let key = match (&raw.key_sha256, &raw.key) {
        (Some(hex), None) => KeyDigest::from_hex(hex).ok_or_else(|| {
            FieldError::new(field("key_sha256"), "must be 64 hex digits (a SHA-256)")
        })?,
        (None, Some(key)) if key.len() >= MIN_KEY_LEN => KeyDigest::of(key.as_bytes()),
        (None, Some(_)) => {
            return Err(FieldError::new(
                field("key"),
                format!("must be at least {MIN_KEY_LEN} characters"),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                field("key"),
                "give key_sha256 or key, not both",
            ))
        }
        (None, None) => {
            return Err(FieldError::new(
                field("key_sha256"),
                "missing; `tokenproxy client add` makes a key and writes its hash (or key = \"${file:/path}\")",
            ))
        }
    };
    let names = raw.upstreams.as_deref().ok_or_else(|| {
        FieldError::new(
            field("upstreams"),
            "missing; the upstreams this client may use, or [\"*\"] for every one",
        )
    })?;
    let every = names.iter().any(|upstream| upstream == "*");
    for upstream in names.iter().filter(|upstream| *upstream != "*") {
        if !upstreams.contains(&upstream.as_str()) {
            return Err(FieldError::new(
                field("upstreams"),
                format!("{upstream:?} is not a configured upstream"),
            ));
        }
    }
    let rules = raw.rules.as_ref();
    for upstream in rules.into_iter().flat_map(BTreeMap::keys) {
        if !every && !names.contains(upstream) {
            return Err(FieldError::new(
                field(&format!("rules.{upstream}")),
                format!("{upstream:?} is not in clients.{name}.upstreams"),
            ));
        }
    }
    let unlimited = raw.methods.is_none() && raw.paths.is_none() && rules.is_none();
    let access = if every && unlimited {
        Access::Full
    } else {
        let granted: Vec<&str> = if every {
            upstreams.to_vec()
        } else {
            names.iter().map(String::as_str).collect()
        };
        let mut grants = Vec::with_capacity(granted.len());
        for upstream in granted {
            let rule = rules.and_then(|rules| rules.get(upstream));
            grants.push(grant(name, upstream, raw, rule)?);
        }
        Access::Scoped(grants)
    };
    Ok(Client {
        name: Arc::from(name),
        key,
        access,
        admin: raw.admin.unwrap_or(false),
    })
}

/// One upstream's limits: its own `rules.UPSTREAM` entries, else the client's.
fn grant(
    name: &str,
    upstream: &str,
    raw: &RawClient,
    rule: Option<&RawClientRule>,
) -> Result<Grant, FieldError> {
    let own = |leaf: &str| format!("clients.{name}.rules.{upstream}.{leaf}");
    let shared = |leaf: &str| format!("clients.{name}.{leaf}");
    let (methods, methods_field) = match rule.and_then(|rule| rule.methods.as_ref()) {
        Some(methods) => (Some(methods), own("methods")),
        None => (raw.methods.as_ref(), shared("methods")),
    };
    let (paths, paths_field) = match rule.and_then(|rule| rule.paths.as_ref()) {
        Some(paths) => (Some(paths), own("paths")),
        None => (raw.paths.as_ref(), shared("paths")),
    };
    let methods = methods
        .map(|methods| {
            let allowed = methods
                .iter()
                .map(|method| parse_method(method).map_err(|p| FieldError::new(&methods_field, p)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, FieldError>(Limit {
                allowed,
                field: methods_field,
            })
        })
        .transpose()?;
    let paths = paths
        .map(|paths| {
            let allowed = paths
                .iter()
                .map(|path| PathPattern::parse(path).map_err(|p| FieldError::new(&paths_field, p)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, FieldError>(Limit {
                allowed,
                field: paths_field,
            })
        })
        .transpose()?;
    Ok(Grant {
        upstream: upstream.to_owned(),
        methods,
        paths,
    })
}

/// An upper-case method token (`GET`, `PROPFIND`).
fn parse_method(text: &str) -> Result<Method, String> {
    let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase());
    valid
        .then(|| Method::from_bytes(text.as_bytes()).ok())
        .flatten()
        .ok_or_else(|| format!("{text:?} is not an HTTP method such as \"GET\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> PathPattern {
        PathPattern::parse(text).unwrap()
    }

    #[test]
    fn patterns_match_whole_segments() {
        let one = pattern("/api/v1/items/*");
        assert!(one.matches("/api/v1/items/7"));
        assert!(!one.matches("/api/v1/items/7/delete"));
        assert!(!one.matches("/api/v1/items"));
        assert!(!one.matches("/api/v1/itemsx/7"));
        let below = pattern("/reports/**");
        for path in ["/reports", "/reports/", "/reports/a", "/reports/a/b/c"] {
            assert!(below.matches(path), "{path}");
        }
        assert!(!below.matches("/reportsx/a"));
        let middle = pattern("/a/**/z");
        for path in ["/a/z", "/a/b/z", "/a/b/c/z"] {
            assert!(middle.matches(path), "{path}");
        }
        assert!(!middle.matches("/a/b/c"));
        let partial = pattern("/files/*.csv");
        assert!(partial.matches("/files/x.csv"));
        assert!(!partial.matches("/files/x.json"));
        assert!(PathPattern::parse("reports").is_err());
        assert!(PathPattern::parse("/a**").is_err());
    }

    #[test]
    fn a_path_another_parser_could_split_differently_never_matches() {
        let client = Client {
            name: Arc::from("ci"),
            key: KeyDigest::of(b"0123456789abcdef"),
            access: Access::Scoped(vec![Grant {
                upstream: "bigid".into(),
                methods: None,
                paths: Some(Limit {
                    allowed: vec![pattern("/public/*")],
                    field: "clients.ci.paths".into(),
                }),
            }]),
            admin: false,
        };
        assert!(client.check("bigid", &Method::GET, "/public/x").is_ok());
        for path in [
            "/public/x%2F..%2Fsecret",
            "/public/..;",
            "/public/a%5cb",
            "/public/a\\b",
        ] {
            let refused = client.check("bigid", &Method::GET, path).unwrap_err();
            assert_eq!(refused.kind, RuleKind::Path, "{path}");
        }
    }

    #[test]
    fn digests_read_back_from_hex() {
        let digest = KeyDigest::of(b"some key value here");
        let again = KeyDigest::from_hex(&digest.to_hex().to_uppercase()).unwrap();
        assert!(digest.matches(&again));
        assert!(!digest.matches(&KeyDigest::of(b"another key value")));
        assert!(KeyDigest::from_hex("abc").is_none());
        assert!(KeyDigest::from_hex(&"g".repeat(64)).is_none());
        assert_eq!(format!("{digest:?}"), "[redacted]");
    }
}
