//! Which upstream a request is for: its own listener first, then its `Host`, then the
//! longest path prefix. `/-/` is tokenproxy's own and is never forwarded.

use std::collections::HashMap;

use crate::config::{normalize_host, UpstreamConfig};

pub const ADMIN_PREFIX: &str = "/-/";

#[derive(Debug, Clone, PartialEq, Eq)]
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
        RouteTable { prefixes, hosts }
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
}
