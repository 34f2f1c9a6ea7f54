//! Which upstream a request is for: its own listener first, then its `Host`, then the
//! longest path prefix. `/-/` is tokenproxy's own and is never forwarded.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::{normalize_host, UpstreamConfig};

pub const ADMIN_PREFIX: &str = "/-/";

/// The one form of a request path that is routed and forwarded: dot segments resolved
/// (also when written `%2e`), empty segments (`//`) collapsed, never above the root.
/// Encoded `/` (`%2F`) and `\` stay as they are and are not separators, so
/// `/bigeval%2F..%2Famm/x` is one segment and matches no prefix. `None` for a path that is
/// not origin-form (`*`, or not starting with `/`).
pub fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        return None;
    }
    // Nearly every path is already normal: no copy then. Without a dot, a `%` or an empty
    // segment it is, and one pass over the bytes tells.
    let mut previous = 0u8;
    let plain = path.bytes().all(|byte| {
        let plain_byte = byte != b'.' && byte != b'%' && !(byte == b'/' && previous == b'/');
        previous = byte;
        plain_byte
    });
    if plain {
        return Some(Cow::Borrowed(path));
    }
    let mut rest = path[1..].split('/').peekable();
    let mut normal = true;
    while let Some(segment) = rest.next() {
        let last = rest.peek().is_none();
        if (segment.is_empty() && !last) || is_dot_segment(segment) {
            normal = false;
            break;
        }
    }
    if normal {
        return Some(Cow::Borrowed(path));
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        if segment.is_empty() || is_single_dot(segment) {
            continue;
        }
        if is_dot_segment(segment) {
            segments.pop();
        } else {
            segments.push(segment);
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for segment in &segments {
        normalized.push('/');
        normalized.push_str(segment);
    }
    // A trailing slash is meaningful to many APIs; keep it.
    let trailing = path.ends_with('/') || path.rsplit('/').next().is_some_and(is_dot_segment);
    if normalized.is_empty() || trailing {
        normalized.push('/');
    }
    Some(Cow::Owned(normalized))
}

/// `.` or `..`, also percent-encoded (`%2e`, any case).
fn is_dot_segment(segment: &str) -> bool {
    is_single_dot(segment)
        || [".%2e", "%2e.", "%2e%2e", ".."]
            .iter()
            .any(|dots| segment.eq_ignore_ascii_case(dots))
}

fn is_single_dot(segment: &str) -> bool {
    segment == "." || segment.eq_ignore_ascii_case("%2e")
}

/// Whether a routed path, joined under the target's base path, would climb above that base
/// at an origin that decodes what tokenproxy keeps as it is: `%2F` and `%5C` decoded, `/` and
/// `\` both separators, `;` path parameters cut (`..;x` is `..` to Tomcat), and a `..` ever
/// leaving more segments than were entered. Checked as received, decoded once, and decoded
/// twice (an origin behind one more decoding hop: `%252F`); deeper encodings are data, which
/// bounds the work per request. `group%2Fproject` has no `..` and passes at every level.
pub fn climbs_above_base(path: &str) -> bool {
    // Without a dot or an escape there is no `..` at any level: the usual path.
    if !path.bytes().any(|byte| matches!(byte, b'.' | b'%')) {
        return false;
    }
    let mut level = Cow::Borrowed(path.as_bytes());
    for _decodings in 0..3 {
        if climbs(&level) {
            return true;
        }
        match percent_decoded(&level) {
            Some(decoded) => level = Cow::Owned(decoded),
            None => return false,
        }
    }
    false
}

fn climbs(path: &[u8]) -> bool {
    let mut depth = 0usize;
    for segment in path.split(|byte| matches!(byte, b'/' | b'\\')) {
        let name = segment
            .split(|byte| *byte == b';')
            .next()
            .unwrap_or_default();
        match name {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

/// `path` with every valid `%XX` decoded; `None` when that changes nothing.
fn percent_decoded(path: &[u8]) -> Option<Vec<u8>> {
    let hex = |byte: Option<&u8>| byte.and_then(|byte| (*byte as char).to_digit(16));
    let mut decoded = Vec::with_capacity(path.len());
    let mut rest = path;
    while let Some((&byte, tail)) = rest.split_first() {
        match (byte, hex(tail.first()), hex(tail.get(1))) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits are at most 0xff.
                decoded.push((high * 16 + low) as u8);
                rest = &tail[2..];
            }
            _ => {
                decoded.push(byte);
                rest = tail;
            }
        }
    }
    (decoded.len() != path.len()).then_some(decoded)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// An admin endpoint; the path after `/-/`.
    Admin(&'a str),
    /// Upstream number `index`; `path` is what to append to its target's base path.
    Upstream {
        index: usize,
        path: &'a str,
    },
    NotFound,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// Longest first, so `/api/v2` wins over `/api`.
    prefixes: Vec<(String, usize)>,
    hosts: HashMap<String, usize>,
    /// Egress mode: upstreams by their target URL, longest base path first.
    targets: Vec<TargetRoute>,
}

/// Where an upstream's target lives, as a client names it in egress mode.
#[derive(Debug)]
struct TargetRoute {
    https: bool,
    /// Lower case, no trailing dot.
    host: String,
    port: u16,
    base_path: String,
    index: usize,
}

impl RouteTable {
    pub fn new(upstreams: &[UpstreamConfig]) -> Self {
        let mut prefixes: Vec<(String, usize)> = upstreams
            .iter()
            .enumerate()
            .map(|(index, upstream)| (upstream.prefix.clone(), index))
            .collect();
        prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let hosts = upstreams
            .iter()
            .enumerate()
            .filter_map(|(index, upstream)| upstream.host.clone().map(|host| (host, index)))
            .collect();
        let mut targets: Vec<TargetRoute> = upstreams
            .iter()
            .enumerate()
            .map(|(index, upstream)| TargetRoute {
                https: upstream.target.scheme == http::uri::Scheme::HTTPS,
                host: upstream.target.host(),
                port: upstream.target.port(),
                base_path: upstream.target.base_path.clone(),
                index,
            })
            .collect();
        targets.sort_by_key(|target| std::cmp::Reverse(target.base_path.len()));
        RouteTable {
            prefixes,
            hosts,
            targets,
        }
    }

    /// Whether `host:port` is an https upstream's target: a CONNECT tokenproxy answers by
    /// terminating TLS itself.
    pub fn is_https_target(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.');
        self.targets.iter().any(|target| {
            target.https && target.port == port && target.host.eq_ignore_ascii_case(host)
        })
    }

    /// Egress mode: the upstream whose target URL holds `path` at `host:port`, and the path
    /// below its base path (`path` is normalized).
    pub fn by_target<'a>(
        &self,
        https: bool,
        host: &str,
        port: u16,
        path: &'a str,
    ) -> Option<(usize, &'a str)> {
        let host = host.trim_end_matches('.');
        self.targets.iter().find_map(|target| {
            if target.https != https
                || target.port != port
                || !target.host.eq_ignore_ascii_case(host)
            {
                return None;
            }
            let rest = path.strip_prefix(target.base_path.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((target.index, rest))
        })
    }

    /// A loopback name: `localhost`, `*.localhost`, `127.x.y.z`, `[::1]`.
    pub fn is_loopback_host(&self, authority: &str) -> bool {
        let host = normalize_host(authority);
        matches!(host.as_str(), "localhost" | "[::1]")
            || host.ends_with(".localhost")
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// A configured upstream `host`.
    pub fn is_upstream_host(&self, authority: &str) -> bool {
        self.hosts.contains_key(&normalize_host(authority))
    }

    /// `dedicated` is the upstream that owns the listener the request came in on, if any.
    pub fn route<'a>(
        &self,
        dedicated: Option<usize>,
        host: Option<&str>,
        path: &'a str,
    ) -> Route<'a> {
        if let Some(admin) = path.strip_prefix(ADMIN_PREFIX) {
            return Route::Admin(admin);
        }
        if path == "/-" {
            return Route::Admin("");
        }
        if let Some(index) = dedicated {
            return Route::Upstream { index, path };
        }
        if !self.hosts.is_empty() {
            if let Some(&index) = host.and_then(|host| self.hosts.get(&normalize_host(host))) {
                return Route::Upstream { index, path };
            }
        }
        for (prefix, index) in &self.prefixes {
            if let Some(rest) = path.strip_prefix(prefix.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return Route::Upstream {
                        index: *index,
                        path: rest,
                    };
                }
            }
        }
        Route::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_dot_segments_and_empty_segments_once() {
        let n = |p: &str| normalize_path(p).unwrap().into_owned();
        assert_eq!(n("/bigeval/../amm/x"), "/amm/x");
        assert_eq!(n("/bigeval/%2e%2e/amm/x"), "/amm/x");
        assert_eq!(n("/bigeval/%2E./amm/x"), "/amm/x");
        assert_eq!(n("//amm/x"), "/amm/x");
        assert_eq!(n("/a/./b//c/"), "/a/b/c/");
        assert_eq!(n("/../../x"), "/x");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/bigeval%2F..%2Famm/x"), "/bigeval%2F..%2Famm/x");
        assert_eq!(n("/a%20b/c%2Fd"), "/a%20b/c%2Fd");
        assert_eq!(normalize_path("*"), None);
        assert!(matches!(normalize_path("/a/b/"), Some(Cow::Borrowed(_))));
        assert!(matches!(
            normalize_path("/v1/x.json"),
            Some(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize_path("/a%20b/"), Some(Cow::Borrowed(_))));
        assert!(matches!(normalize_path("/a/b//"), Some(Cow::Owned(_))));
        assert!(matches!(normalize_path("/a//b"), Some(Cow::Owned(_))));
        assert_eq!(n("/a/%2E"), "/a/");
        assert_eq!(n("/a/b/.%2E"), "/a/");
    }

    #[test]
    fn a_path_that_decodes_to_a_climb_above_the_base_is_caught() {
        for escape in [
            "/..%2Fother/x",
            "/%2e%2e%2fother",
            "/%2E%2E%2F",
            "/..%5Cother",
            "/..\\other",
            "\\..\\",
            "/..;/other",
            "/..;jsessionid=1/other",
            "/..%3B/other",
            "/a/..%2F..%2Fother",
            "/a%2F..%2F..",
            "/..%252Fother",
            "/%252e%252e%252f",
            "/a;b/../..",
            "..",
        ] {
            assert!(climbs_above_base(escape), "{escape}");
        }
        for inside in [
            "",
            "/",
            "/x",
            "/group%2Fproject/x",
            "/a/..%2Fb",
            "/a%2F..%2Fb/c",
            "/a/.%2F./b",
            "/..x/%2e%2e.",
            "/...",
            "/a;..",
            "/%",
            "/%zz%2",
            "/..%25252Fthree-decodings-deep",
            "/caf%C3%A9",
        ] {
            assert!(!climbs_above_base(inside), "{inside}");
        }
    }

    fn table(routes: &[(&str, Option<&str>)]) -> RouteTable {
        let mut table = RouteTable::default();
        for (index, (prefix, host)) in routes.iter().enumerate() {
            table.prefixes.push((prefix.to_string(), index));
            if let Some(host) = host {
                table.hosts.insert(host.to_string(), index);
            }
        }
        table
            .prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        table
    }

    #[test]
    fn longest_prefix_on_a_segment_boundary_wins() {
        let t = table(&[("/api", None), ("/api/v2", None), ("/amm", None)]);
        assert_eq!(
            t.route(None, None, "/api/v2/x"),
            Route::Upstream {
                index: 1,
                path: "/x"
            }
        );
        assert_eq!(
            t.route(None, None, "/api/v1/x"),
            Route::Upstream {
                index: 0,
                path: "/v1/x"
            }
        );
        assert_eq!(
            t.route(None, None, "/amm"),
            Route::Upstream { index: 2, path: "" }
        );
        assert_eq!(t.route(None, None, "/ammx/y"), Route::NotFound);
        assert_eq!(t.route(None, None, "/"), Route::NotFound);
    }

    #[test]
    fn host_and_listener_route_the_whole_path() {
        let t = table(&[("/a", Some("a.localhost")), ("/b", None)]);
        assert_eq!(
            t.route(None, Some("A.Localhost.:8080"), "/b/x"),
            Route::Upstream {
                index: 0,
                path: "/b/x"
            }
        );
        assert_eq!(
            t.route(Some(1), Some("a.localhost"), "/a/x"),
            Route::Upstream {
                index: 1,
                path: "/a/x"
            }
        );
    }

    #[test]
    fn admin_paths_are_never_routed_to_an_upstream() {
        let t = table(&[("/-x", None)]);
        assert_eq!(t.route(Some(0), None, "/-/health"), Route::Admin("health"));
        assert_eq!(t.route(None, None, "/-"), Route::Admin(""));
    }

    #[test]
    fn egress_routes_by_scheme_host_port_and_the_longest_base_path() {
        let route = |https, host: &str, port, base: &str, index| TargetRoute {
            https,
            host: host.into(),
            port,
            base_path: base.into(),
            index,
        };
        let t = RouteTable {
            targets: vec![
                route(true, "api.example", 443, "/v2", 1),
                route(true, "api.example", 443, "", 0),
                route(false, "plain.example", 8080, "/api", 2),
            ],
            ..RouteTable::default()
        };
        assert_eq!(
            t.by_target(true, "API.example.", 443, "/v2/x"),
            Some((1, "/x"))
        );
        assert_eq!(
            t.by_target(true, "api.example", 443, "/v2x"),
            Some((0, "/v2x"))
        );
        assert_eq!(t.by_target(true, "api.example", 8443, "/x"), None);
        assert_eq!(t.by_target(false, "api.example", 443, "/x"), None);
        assert_eq!(
            t.by_target(false, "plain.example", 8080, "/api"),
            Some((2, ""))
        );
        assert_eq!(t.by_target(false, "plain.example", 8080, "/other"), None);
        assert!(t.is_https_target("Api.Example", 443));
        assert!(!t.is_https_target("plain.example", 8080));
        assert!(!t.is_https_target("api.example.evil", 443));
    }
}
