//! Egress mode: clients keep the vendors' real URLs and reach them through `HTTPS_PROXY`.
//! A CONNECT to a configured upstream's target is intercepted: tokenproxy answers the TLS
//! handshake with a leaf its local CA (`ca`) mints for that host (`Interceptor`), and the
//! requests inside take the reverse-proxy path (`proxy::egress`). A CONNECT to a host in
//! `egress.passthrough` is tunnelled blindly; any other is refused before anything is
//! dialed (`decide`). The listener itself is the server's (`server::egress`).

pub mod ca;
mod interceptor;

pub use interceptor::Interceptor;

use crate::app::App;

/// What a CONNECT to `host:port` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A vendor: TLS terminated here, the token injected.
    Intercept,
    /// A host in `egress.passthrough`: bytes tunnelled, nothing read or added.
    Passthrough,
    /// Anything else: 403, and nothing dialed.
    Deny,
}

/// Vendors first, so a passthrough pattern can never take a vendor's requests past the
/// token injection (or its token past tokenproxy's checks).
pub fn decide(app: &App, host: &str, port: u16) -> Decision {
    if app.routes.is_https_target(host, port) {
        return Decision::Intercept;
    }
    let passthrough = app.egress.as_ref().is_some_and(|egress| {
        egress
            .passthrough
            .iter()
            .any(|rule| rule.matches(host, port))
    });
    if passthrough {
        Decision::Passthrough
    } else {
        Decision::Deny
    }
}
