//! The `Host` header's shape (RFC 9112 3.2), checked on every HTTP/1 request before
//! anything reads it.

use http::{header, HeaderMap, Version};

use crate::problem::HostProblem;

/// One `Host` holding a host and an optional port (empty is allowed), and an HTTP/1.1
/// request must have it.
pub(super) fn host_problem(version: Version, headers: &HeaderMap) -> Result<(), HostProblem> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => Err(HostProblem::Missing),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(HostProblem::Repeated),
        (Some(host), None) => {
            let valid = host.is_empty() || is_authority(host.as_bytes());
            valid.then_some(()).ok_or(HostProblem::Malformed)
        }
    }
}

/// Whether `http::uri::Authority` accepts `host` whole, with no user info: decided by its
/// parser's rules without building one, which would copy the bytes at every request.
/// URI characters only; a `%` only inside `[...]`; one pair of brackets; at most eight
/// colons up to the `]` and one after it. `@` (user info) and what ends an authority (`/`,
/// `?`, `#`) make it no host.
fn is_authority(host: &[u8]) -> bool {
    let mut colons = 0u32;
    let (mut opened, mut closed, mut percent) = (false, false, false);
    for &byte in host {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => {}
            b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+'
            | b',' | b';' | b'=' => {}
            b':' if colons < 8 => colons += 1,
            b'[' if !opened && !percent => opened = true,
            b']' if opened && !closed => {
                closed = true;
                colons = 0;
                percent = false;
            }
            b'%' => percent = true,
            _ => return false,
        }
    }
    !host.is_empty() && opened == closed && colons <= 1 && !percent
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the check replaced: `http`'s own parser, with `@` refused.
    fn by_http(host: &[u8]) -> bool {
        !host.contains(&b'@') && http::uri::Authority::try_from(host).is_ok()
    }

    #[test]
    fn the_host_check_agrees_with_http_on_every_short_string_of_telling_bytes() {
        let alphabet: &[u8] = b"a1:[]%@/?#. \"\\\xc3~";
        let mut host = Vec::new();
        let mut checked = 0;
        // Every string of up to five of these bytes.
        for length in 0..=5u32 {
            for mut index in 0..alphabet.len().pow(length) {
                host.clear();
                for _ in 0..length {
                    host.push(alphabet[index % alphabet.len()]);
                    index /= alphabet.len();
                }
                assert_eq!(
                    is_authority(&host),
                    by_http(&host),
                    "{:?}",
                    String::from_utf8_lossy(&host)
                );
                checked += 1;
            }
        }
        assert!(checked > 800_000);
    }

    #[test]
    fn the_host_check_agrees_with_http_on_real_and_hostile_hosts() {
        for host in [
            "localhost",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[fe80::1%25eth0]:80",
            "[FEDC:BA98:7654:3210:FEDC:BA98:7654:3210]:80",
            "[1:2:3:4:5:6:7:8:9]",
            "[1:2:3:4:5:6:7:8:9:0]",
            "api.example.com.",
            "a:1:2",
            "user@host",
            "host/path",
            "exa mple",
            "%41",
            "[::1",
            "::1]",
            "[]",
            ":",
        ] {
            assert_eq!(
                is_authority(host.as_bytes()),
                by_http(host.as_bytes()),
                "{host}"
            );
        }
        assert!(is_authority(b"[::1]:8080"));
        assert!(!is_authority(b"user@host"));
    }
}
