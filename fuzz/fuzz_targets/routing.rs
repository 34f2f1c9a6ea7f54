//! Path normalisation and prefix routing on arbitrary request paths: a normalised path has
//! no empty or dot segments (also `%2e`-encoded), normalising is idempotent, and an
//! upstream is chosen only when its prefix matched on a segment boundary, so a token only
//! goes where its prefix says; and a routed path that is accepted stays under the target's
//! base path at an origin that decodes it (once or twice) and splits on `/` and `\`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokenproxy::config::{parse, Config, Sources};
use tokenproxy::routes::{climbs_above_base, normalize_path, Route, RouteTable, ADMIN_PREFIX};

const CONFIG: &str = r#"
[store]
path = "memory"

[upstreams.bigeval]
target = "https://bigeval.example/"
[upstreams.bigeval.auth]
kind = "static"
token = "t-bigeval"

[upstreams.amm]
target = "https://amm.example/base/"
[upstreams.amm.auth]
kind = "static"
token = "t-amm"

[upstreams.apiv2]
target = "https://api.example/v2/"
prefix = "/api/v2"
[upstreams.apiv2.auth]
kind = "static"
token = "t-api-v2"

[upstreams.api]
target = "https://api.example/"
prefix = "/api/"
[upstreams.api.auth]
kind = "static"
token = "t-api"
"#;

struct NoSources;

impl Sources for NoSources {
    fn env(&self, _name: &str) -> Option<String> {
        None
    }
    fn file(&self, _path: &str) -> std::io::Result<String> {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

fn fixture() -> &'static (Config, RouteTable) {
    static FIXTURE: OnceLock<(Config, RouteTable)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = parse(CONFIG, "routing.toml", &NoSources).expect("the fixed config parses");
        let mut prefixes: Vec<&str> = config.upstreams.iter().map(|u| u.prefix.as_str()).collect();
        prefixes.sort_unstable();
        assert_eq!(prefixes, ["/amm", "/api", "/api/v2", "/bigeval"]);
        let table = RouteTable::new(&config.upstreams);
        (config, table)
    })
}

fn is_dot_segment(segment: &str) -> bool {
    matches!(
        segment.to_ascii_lowercase().as_str(),
        "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."
    )
}

/// `%XX` decoded once, written independently of the proxy's own decoder.
fn decode_once(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let hex = path
            .get(i + 1..i + 3)
            .filter(|pair| pair.iter().all(u8::is_ascii_hexdigit));
        match (path[i], hex) {
            (b'%', Some(pair)) => {
                let pair = std::str::from_utf8(pair).expect("hex digits are ASCII");
                out.push(u8::from_str_radix(pair, 16).expect("two hex digits"));
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Where an origin resolves `path`: `/` and `\` separate, `;` parameters are dropped, `..`
/// pops (never above the root).
fn resolved(path: &[u8]) -> Vec<Vec<u8>> {
    let mut stack: Vec<Vec<u8>> = Vec::new();
    for segment in path.split(|b| *b == b'/' || *b == b'\\') {
        let name = match segment.iter().position(|b| *b == b';') {
            Some(at) => &segment[..at],
            None => segment,
        };
        match name {
            b"" | b"." => {}
            b".." => {
                stack.pop();
            }
            _ => stack.push(name.to_vec()),
        }
    }
    stack
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let (config, table) = fixture();

    let Some(n) = normalize_path(path) else {
        assert!(!path.starts_with('/'), "origin-form path refused: {path:?}");
        return;
    };
    assert!(n.starts_with('/'), "{path:?} -> {n:?}: not absolute");
    assert!(!n.contains("//"), "{path:?} -> {n:?}: empty segment");
    assert!(
        !n.split('/').any(is_dot_segment),
        "{path:?} -> {n:?}: dot segment left"
    );
    assert_eq!(
        normalize_path(&n).as_deref(),
        Some(&*n),
        "{path:?} -> {n:?}: normalising again changes it"
    );

    match table.route(None, None, &n) {
        Route::Upstream { index, path: rest } => {
            let upstream = &config.upstreams[index];
            assert_eq!(
                format!("{}{rest}", upstream.prefix),
                n,
                "{path:?} -> {n:?}: routed to {} with rest {rest:?}",
                upstream.name
            );
            assert!(
                rest.is_empty() || rest.starts_with('/'),
                "{path:?} -> {n:?}: prefix {} matched inside a segment (rest {rest:?})",
                upstream.prefix
            );
            if !climbs_above_base(rest) {
                let base = upstream.target.base_path.as_str();
                let mut joined = format!("{base}{rest}").into_bytes();
                for decodings in 1..=2 {
                    joined = decode_once(&joined);
                    assert!(
                        resolved(&joined).starts_with(&resolved(base.as_bytes())),
                        "{path:?} -> {n:?}: accepted, but {decodings} decoding(s) leave {}'s base {base:?}",
                        upstream.name
                    );
                }
            }
            // The longest matching prefix wins.
            for other in &config.upstreams {
                let matches = n
                    .strip_prefix(other.prefix.as_str())
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'));
                assert!(
                    !matches || other.prefix.len() <= upstream.prefix.len(),
                    "{path:?} -> {n:?}: routed to {} though {} is longer",
                    upstream.prefix,
                    other.prefix
                );
            }
        }
        Route::Admin(rest) => {
            assert!(
                n.strip_prefix(ADMIN_PREFIX) == Some(rest) || (n == "/-" && rest.is_empty()),
                "{path:?} -> {n:?}: admin route with rest {rest:?}"
            );
        }
        Route::NotFound => {
            assert!(
                !n.starts_with(ADMIN_PREFIX) && n != "/-",
                "{path:?} -> {n:?}: admin path not routed to admin"
            );
            for upstream in &config.upstreams {
                let matches = n
                    .strip_prefix(upstream.prefix.as_str())
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'));
                assert!(
                    !matches,
                    "{path:?} -> {n:?}: not found though prefix {} matches",
                    upstream.prefix
                );
            }
        }
    }
});
