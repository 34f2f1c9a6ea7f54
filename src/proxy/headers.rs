//! Header rewriting between client and upstream.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 7.6.1, plus the obsolete ones still seen in the wild) and
/// `Upgrade`. They describe one connection, so they are never passed on (an upgrade the
/// proxy passes through is put back).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The protocol of an `Upgrade` request (`websocket`), if it is one. An upgrade offering
/// `h2c` is ignored (served as plain HTTP/1.1, `Upgrade` dropped): an h2c tunnel would carry
/// requests past the proxy's checks with the token's connection.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    let offers_h2c = connection_tokens(headers.get_all(header::UPGRADE))
        .any(|protocol| protocol.eq_ignore_ascii_case("h2c"));
    (!offers_h2c
        && connection_tokens(headers.get_all(header::CONNECTION))
            .any(|token| token.eq_ignore_ascii_case("upgrade")))
    .then(|| upgrade.clone())
}

/// The options listed in `Connection` header values.
fn connection_tokens<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = &'a str> {
    values
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Every upstream and `/-/` share one origin (the proxy's), so a page a vendor returns would
/// run with the right to read `/-/status`, other upstreams' answers, and to press the
/// status page's buttons. The CSP sandbox puts a vendor's document in an opaque origin of
/// its own: its scripts still run, but every request they make to the proxy is
/// cross-origin (`Origin: null`), which the browser guard refuses. Added next to any policy
/// the vendor sends; a browser enforces both.
const SANDBOX: HeaderValue = HeaderValue::from_static(
    "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads",
);

pub fn sandbox(headers: &mut HeaderMap) {
    headers.append(http::header::CONTENT_SECURITY_POLICY, SANDBOX);
}

/// Removes hop-by-hop headers, including every header the `Connection` header names, and
/// `Upgrade`. An upgrade the proxy passes through is put back by the caller.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The usual request has none and the usual response only `Connection: keep-alive`: one
    // pass over the names notes those present (a bit each), and nothing is allocated
    // unless `Connection` names a header that is not hop-by-hop anyway.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(index) = hop_by_hop_index(name) {
            present |= 1 << index;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection: keep-alive`, as most responses have it, names no other header: its
    // options are parsed only when it lists something else.
    let only_keep_alive = headers
        .get_all(header::CONNECTION)
        .iter()
        .all(|value| value.as_bytes().eq_ignore_ascii_case(b"keep-alive"));
    let named: Vec<HeaderName> = if only_keep_alive {
        Vec::new()
    } else {
        connection_tokens(headers.get_all(header::CONNECTION))
            .filter(|token| {
                !HOP_BY_HOP
                    .iter()
                    .any(|hop| token.eq_ignore_ascii_case(hop.as_str()))
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect()
    };
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(name);
        }
    }
    for name in &named {
        headers.remove(name);
    }
}

/// Where `name` is in `HOP_BY_HOP`. Most names are ruled out by their length alone, which
/// spares the usual response's eight headers some seventy comparisons.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    // The lengths of the names in `HOP_BY_HOP`.
    if !matches!(name.as_str().len(), 2 | 7 | 10 | 16..=19) {
        return None;
    }
    HOP_BY_HOP.iter().position(|hop| hop == name)
}

/// Marks a request or response as an upgrade to `protocol`.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Appends the client (its IP as header text) to `X-Forwarded-For` and sets
/// `X-Forwarded-Proto` and `-Host` to what the client used to reach the proxy.
/// A Unix-socket client has no address to add. The client's own RFC 7239 `Forwarded` is
/// dropped: left alone it could claim another client, host or scheme than `X-Forwarded-*`.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: Option<HeaderValue>,
    original_host: Option<HeaderValue>,
) {
    headers.remove(header::FORWARDED);
    if let Some(client) = client {
        // One lookup: the entry is read and replaced in place.
        match headers.entry(X_FORWARDED_FOR.clone()) {
            // The usual case: no proxy before us, so the value is just the client.
            header::Entry::Vacant(vacant) => {
                vacant.insert(client);
            }
            header::Entry::Occupied(mut occupied) => {
                let earlier = occupied.get().to_str().unwrap_or("").trim();
                let value = if earlier.is_empty() {
                    client
                } else {
                    let mut joined = Vec::with_capacity(earlier.len() + 2 + client.len());
                    joined.extend_from_slice(earlier.as_bytes());
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(client.as_bytes());
                    // Visible text joined by a comma stays valid header text.
                    HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).unwrap_or(client)
                };
                occupied.insert(value);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    match original_host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_filter_lets_every_hop_by_hop_name_through_and_no_other() {
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(index), "{name}");
        }
        for name in ["host", "content-length", "x-upgrade", "tes", "proxy"] {
            assert_eq!(hop_by_hop_index(&HeaderName::from_static(name)), None);
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn strips_hop_by_hop_and_what_connection_names() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Custom-Hop"),
            ("connection", "x-second"),
            ("keep-alive", "timeout=5"),
            ("x-custom-hop", "1"),
            ("x-second", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic abc"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
            ("accept", "a"),
            ("accept", "b"),
        ]);
        strip_hop_by_hop(&mut headers);
        // Removal may reorder different names, which carries no meaning in HTTP.
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-kept"]);
        assert_eq!(headers.get_all("accept").iter().count(), 2);

        // The usual response: nothing else named; and a second value that names one.
        let mut usual = map(&[("connection", "Keep-Alive"), ("etag", "1")]);
        strip_hop_by_hop(&mut usual);
        assert_eq!(usual.keys().collect::<Vec<_>>(), ["etag"]);
        let mut second = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-second"),
            ("x-second", "1"),
            ("etag", "1"),
        ]);
        strip_hop_by_hop(&mut second);
        assert_eq!(second.keys().collect::<Vec<_>>(), ["etag"]);
    }

    #[test]
    fn recognises_upgrades_only_with_connection_upgrade() {
        assert!(
            upgrade_protocol(&map(&[("connection", "Upgrade"), ("upgrade", "websocket")]))
                .is_some()
        );
        assert!(upgrade_protocol(&map(&[("upgrade", "websocket")])).is_none());
        for offer in ["h2c", "websocket, H2C"] {
            assert!(
                upgrade_protocol(&map(&[("connection", "upgrade"), ("upgrade", offer)])).is_none()
            );
        }
    }

    #[test]
    fn appends_to_forwarded_for() {
        let mut headers = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "spoofed"),
            ("forwarded", "for=10.9.9.9;host=spoofed"),
        ]);
        add_forwarded(
            &mut headers,
            Some(HeaderValue::from_static("127.0.0.1")),
            Some(HeaderValue::from_static("localhost:8080")),
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "localhost:8080");
        assert!(headers.get("forwarded").is_none());
    }
}
