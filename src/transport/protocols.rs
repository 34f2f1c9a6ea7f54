//! Which HTTPS origins answer over HTTP/2.
//!
//! The pool that lets ALPN choose the protocol dials once for every request that finds it
//! without a connection, and keeps one of those connections when they turn out to be
//! HTTP/2: at start, and each time the vendor closes its connection (nginx does after 1,000
//! requests by default), 16 requests in flight made 16 TLS handshakes for one kept
//! connection. Requests to an origin that has answered over HTTP/2 therefore go over the
//! one connection `http2` holds for it, dialled by one request at a time. An origin that
//! answered over HTTP/1.1 stays on the ALPN pool; one whose HTTP/2 connection cannot be
//! made is forgotten and learnt again.

use arc_swap::ArcSwap;
use http::uri::Authority;

/// More origins than any config names: past this, new ones are not remembered.
const MAX_ORIGINS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// What each origin (`host:port`) answered with last. Read on every HTTPS request, written
/// only when that changes, so a copy-on-write list.
#[derive(Default)]
pub struct Protocols {
    known: ArcSwap<Vec<(Authority, Protocol)>>,
}

impl Protocols {
    pub fn of(&self, origin: &Authority) -> Option<Protocol> {
        self.known
            .load()
            .iter()
            .find(|(known, _)| known == origin)
            .map(|(_, protocol)| *protocol)
    }

    pub fn learn(&self, origin: &Authority, protocol: Protocol) {
        if self.of(origin) == Some(protocol) {
            return;
        }
        self.known.rcu(|known| {
            let mut known: Vec<_> = known
                .iter()
                .filter(|(other, _)| other != origin)
                .cloned()
                .collect();
            if known.len() < MAX_ORIGINS {
                known.push((origin.clone(), protocol));
            }
            known
        });
    }

    pub fn forget(&self, origin: &Authority) {
        if self.of(origin).is_none() {
            return;
        }
        self.known.rcu(|known| {
            known
                .iter()
                .filter(|(other, _)| other != origin)
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &'static str) -> Authority {
        Authority::from_static(text)
    }

    #[test]
    fn an_origin_is_learnt_relearnt_and_forgotten_alone() {
        let protocols = Protocols::default();
        let (a, b) = (origin("a.example:443"), origin("b.example:443"));
        assert_eq!(protocols.of(&a), None);
        protocols.learn(&a, Protocol::Http2);
        protocols.learn(&b, Protocol::Http1);
        assert_eq!(protocols.of(&a), Some(Protocol::Http2));
        assert_eq!(protocols.of(&b), Some(Protocol::Http1));
        protocols.learn(&a, Protocol::Http1);
        assert_eq!(protocols.of(&a), Some(Protocol::Http1));
        protocols.forget(&a);
        assert_eq!(protocols.of(&a), None);
        assert_eq!(protocols.of(&b), Some(Protocol::Http1));
        assert_eq!(protocols.of(&origin("a.example:8443")), None);
    }

    #[test]
    fn no_more_than_the_bound_is_remembered() {
        let protocols = Protocols::default();
        for port in 0..(MAX_ORIGINS as u16 + 10) {
            let origin: Authority = format!("o.example:{}", 1000 + port).parse().unwrap();
            protocols.learn(&origin, Protocol::Http2);
        }
        assert_eq!(protocols.known.load().len(), MAX_ORIGINS);
    }
}
