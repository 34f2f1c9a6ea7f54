//! Which HTTPS origins answer over HTTP/2.
//!
//! The pool that lets ALPN choose the protocol dials once for every request that finds it
//! without a connection, and keeps one of those connections when they turn out to be
//! HTTP/2: at start, and each time the vendor closes its connection (nginx does after 1,000
//! requests by default), 16 requests in flight made 16 TLS handshakes for one kept
//! connection. Requests to an origin that has answered over HTTP/2 therefore go over its
//! one connection (`http2`), dialled by one request at a time; its entry here carries that
//! connection, so a request looks the origin up once. An origin that answered over HTTP/1.1
//! stays on the ALPN pool; one whose HTTP/2 connection cannot be made is forgotten and
//! learnt again.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::Authority;

use super::http2::Origin;

/// More origins than any config names: past this, new ones are not remembered.
const MAX_ORIGINS: usize = 256;

/// What an origin answered with last.
#[derive(Clone)]
pub enum Protocol {
    Http1,
    /// With the origin's entry for `http2`: one per origin, so one connection.
    Http2(Arc<Origin>),
}

impl Protocol {
    fn is_http2(&self) -> bool {
        matches!(self, Protocol::Http2(_))
    }
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
            .map(|(_, protocol)| protocol.clone())
    }

    /// Notes what `origin` answered with (`http2` or HTTP/1.1). An origin already known to
    /// speak HTTP/2 keeps its entry, and so its connection.
    pub fn learn(&self, origin: &Authority, http2: bool) {
        let same = |protocol: &Protocol| protocol.is_http2() == http2;
        if self.of(origin).as_ref().is_some_and(same) {
            return;
        }
        let learnt = if http2 {
            Protocol::Http2(Arc::new(Origin::new(origin.clone())))
        } else {
            Protocol::Http1
        };
        self.known.rcu(|known| {
            // Learnt meanwhile by another request: theirs is kept.
            if known
                .iter()
                .any(|(other, protocol)| other == origin && same(protocol))
            {
                return Arc::clone(known);
            }
            let mut known: Vec<_> = known
                .iter()
                .filter(|(other, _)| other != origin)
                .cloned()
                .collect();
            if known.len() < MAX_ORIGINS {
                known.push((origin.clone(), learnt.clone()));
            }
            Arc::new(known)
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

    /// What `protocols` knows of `origin`, as text.
    fn known(protocols: &Protocols, origin: &Authority) -> Option<&'static str> {
        protocols.of(origin).map(|protocol| match protocol {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2(_) => "h2",
        })
    }

    #[test]
    fn an_origin_is_learnt_relearnt_and_forgotten_alone() {
        let protocols = Protocols::default();
        let (a, b) = (origin("a.example:443"), origin("b.example:443"));
        assert_eq!(known(&protocols, &a), None);
        protocols.learn(&a, true);
        protocols.learn(&b, false);
        assert_eq!(known(&protocols, &a), Some("h2"));
        assert_eq!(known(&protocols, &b), Some("http/1.1"));
        protocols.learn(&a, false);
        assert_eq!(known(&protocols, &a), Some("http/1.1"));
        protocols.forget(&a);
        assert_eq!(known(&protocols, &a), None);
        assert_eq!(known(&protocols, &b), Some("http/1.1"));
        assert_eq!(known(&protocols, &origin("a.example:8443")), None);
    }

    #[test]
    fn an_http2_origin_learnt_again_keeps_its_entry_and_so_its_connection() {
        let protocols = Protocols::default();
        let a = origin("a.example:443");
        protocols.learn(&a, true);
        let Some(Protocol::Http2(first)) = protocols.of(&a) else {
            panic!("not learnt as h2");
        };
        protocols.learn(&a, true);
        let Some(Protocol::Http2(again)) = protocols.of(&a) else {
            panic!("no longer h2");
        };
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.authority, a);
    }

    #[test]
    fn no_more_than_the_bound_is_remembered() {
        let protocols = Protocols::default();
        for port in 0..(MAX_ORIGINS as u16 + 10) {
            let origin: Authority = format!("o.example:{}", 1000 + port).parse().unwrap();
            protocols.learn(&origin, true);
        }
        assert_eq!(protocols.known.load().len(), MAX_ORIGINS);
    }
}
