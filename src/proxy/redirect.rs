//! A vendor's redirect, as the client behind the proxy must see it. A `Location` that
//! points into the upstream's own target (its scheme, host, port and base path) becomes
//! the same place behind the proxy, so the client follows it through tokenproxy and keeps
//! its token: nginx's `proxy_redirect default`. Anything else (another host, another port,
//! a path outside the base path, a relative path) is left as the vendor wrote it, so a
//! redirect can never send one upstream's requests, and token, anywhere else.

use http::HeaderValue;

use crate::schema::Target;

/// The client's `Location` for the vendor's `location`, or `None` to leave it alone.
/// `mount` is the part of the client's path that routed to the upstream: its prefix
/// (`/caepe`), or `""` for a `host` or `listen` route.
pub fn rewrite_location(
    location: &HeaderValue,
    target: &Target,
    mount: &str,
) -> Option<HeaderValue> {
    let location = location.to_str().ok()?;
    // Path-absolute: on the vendor's own host, where the request went.
    let within_target = if location.starts_with('/') && !location.starts_with("//") {
        location
    } else {
        strip_origin(location, target)?
    };
    let end = within_target
        .find(['?', '#'])
        .unwrap_or(within_target.len());
    let (path, query_and_fragment) = within_target.split_at(end);
    let rest = match path.strip_prefix(target.base_path.as_str())? {
        "" => "",
        rest if rest.starts_with('/') => rest,
        // `/apix` is not under `/api`.
        _ => return None,
    };
    // A dot segment could climb out of the route on the client's side, to another upstream.
    if rest.split('/').any(is_dot_segment) {
        return None;
    }
    let path = match (mount, rest) {
        ("", "") => "/".to_owned(),
        (mount, rest) => format!("{mount}{rest}"),
    };
    HeaderValue::try_from(format!("{path}{query_and_fragment}")).ok()
}

/// What follows the target's origin in an absolute (`https://host/...`) or network-path
/// (`//host/...`) location; `None` when it names another scheme, host or port.
fn strip_origin<'a>(location: &'a str, target: &Target) -> Option<&'a str> {
    let scheme = target.scheme.as_str();
    let after_scheme = match location.split_once("://") {
        Some((written, rest)) if written.eq_ignore_ascii_case(scheme) => rest,
        Some(_) => return None,
        None => location.strip_prefix("//")?,
    };
    let end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(end);
    let authority: http::uri::Authority = authority.parse().ok()?;
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = |authority: &http::uri::Authority| authority.port_u16().unwrap_or(default_port);
    let same = !authority.as_str().contains('@')
        && authority
            .host()
            .eq_ignore_ascii_case(target.authority.host())
        && port(&authority) == port(&target.authority);
    same.then_some(rest)
}

fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(location: &str, target: &str, mount: &str) -> Option<String> {
        let target = Target::parse(target).unwrap();
        rewrite_location(&HeaderValue::from_str(location).unwrap(), &target, mount)
            .map(|value| value.to_str().unwrap().to_owned())
    }

    #[test]
    fn locations_into_the_target_come_back_behind_the_proxy() {
        let vendor = "https://api.vendor.example/v2/";
        let local = "http://127.0.0.1:4000/";
        for (location, target, mount, expected) in [
            (
                "https://api.vendor.example/v2/apps?page=2#top",
                vendor,
                "/caepe",
                "/caepe/apps?page=2#top",
            ),
            (
                "HTTPS://API.vendor.example:443/v2/apps",
                vendor,
                "/caepe",
                "/caepe/apps",
            ),
            (
                "//api.vendor.example/v2/apps",
                vendor,
                "/caepe",
                "/caepe/apps",
            ),
            ("/v2/apps", vendor, "/caepe", "/caepe/apps"),
            ("https://api.vendor.example/v2", vendor, "/caepe", "/caepe"),
            (
                "https://api.vendor.example/v2?x=1",
                vendor,
                "/caepe",
                "/caepe?x=1",
            ),
            ("/", "https://h/", "/caepe", "/caepe/"),
            ("http://127.0.0.1:4000/next", local, "", "/next"),
            ("http://127.0.0.1:4000", local, "", "/"),
        ] {
            assert_eq!(
                rewritten(location, target, mount).as_deref(),
                Some(expected),
                "{location}"
            );
        }
    }

    #[test]
    fn every_other_location_is_left_alone() {
        let target = "https://api.vendor.example/v2/";
        for location in [
            "https://login.vendor.example/v2/apps",
            "https://api.vendor.example:8443/v2/apps",
            "http://api.vendor.example/v2/apps",
            "https://api.vendor.example/v1/apps",
            "https://api.vendor.example/v2x/apps",
            "https://api.vendor.example.evil.example/v2/apps",
            "https://user@api.vendor.example/v2/apps",
            "https://api.vendor.example/v2/../v1/apps",
            "/v2/%2e%2E/admin",
            "/v1/apps",
            "apps",
            "../apps",
            "mailto:someone@vendor.example",
        ] {
            assert_eq!(rewritten(location, target, "/caepe"), None, "{location}");
        }
    }
}
