//! Requests that reach a vendor through the egress listener (`HTTPS_PROXY`): inside a
//! CONNECT tunnel whose TLS tokenproxy terminated, or in absolute form for a plain-http
//! target. They are routed by the vendor URL the client used; from there they take the
//! reverse-proxy path's own checks, forward, retries and metrics. What differs: the origin
//! check knows no "own origin" (every `Origin` must be allowed), and no `X-Forwarded-*` is
//! added.

use std::sync::Arc;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;

use super::{
    answer, caller, count_in_flight, failed, framing_admissible, logged, note_caller,
    presented_key, request_host, respond, Connection, Routed, UnknownKey,
};
use crate::access_log::{Facts, Via};
use crate::app::App;
use crate::problem::ProxyError;
use crate::routes::{self, Route};
use crate::transport::ProxyBody;

/// The vendor a CONNECT tunnel was opened to.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// Lower case, no trailing dot.
    pub host: Arc<str>,
    pub port: u16,
}

impl Tunnel {
    pub fn new(authority: &Authority) -> Tunnel {
        Tunnel {
            host: Arc::from(bare(authority.host()).to_ascii_lowercase()),
            port: authority.port_u16().unwrap_or(443),
        }
    }
}

/// Handles one request that came through the egress listener; `tunnel` is the CONNECT it
/// came inside, `None` for an absolute-form request on the listener itself. Never fails:
/// every error becomes a response here.
pub async fn handle(
    app: Arc<App>,
    connection: Arc<Connection>,
    request: Request<Incoming>,
    tunnel: Option<&Tunnel>,
) -> Response<ProxyBody> {
    let addr = connection.client_ip();
    logged(
        &app,
        addr,
        Via::Egress,
        request,
        |request, mut facts| async {
            let response = serve(&app, &connection, request, tunnel, &mut facts).await;
            (response, facts)
        },
    )
    .await
}

async fn serve(
    app: &App,
    connection: &Connection,
    request: Request<Incoming>,
    tunnel: Option<&Tunnel>,
    facts: &mut Facts,
) -> Response<ProxyBody> {
    // Inside a tunnel the CONNECT presented the key (checked again against the clients of
    // the moment: a reload may remove one); on the listener every request carries its own.
    let key = || match tunnel {
        Some(_) => connection.tunnel_key().copied(),
        None => presented_key(request.headers()),
    };
    let caller = match caller(app, key) {
        Ok(caller) => caller,
        Err(UnknownKey) => {
            if let Some(egress) = &app.egress {
                use std::sync::atomic::Ordering::Relaxed;
                egress.metrics.refused_proxy_auth.fetch_add(1, Relaxed);
            }
            return failed(facts, ProxyError::EgressKeyRequired);
        }
    };
    note_caller(app, caller, facts);
    let destination = match destination(&request, tunnel) {
        Ok(destination) => destination,
        Err(error) => return failed(facts, error),
    };
    // A clone of the URI shares its bytes; the request itself moves on below.
    let uri = request.uri().clone();
    let Some(path) = routes::normalize_path(uri.path()) else {
        let reason = "the request target must be a path starting with /".into();
        return failed(facts, ProxyError::BadRequest { reason });
    };
    let Destination { https, host, port } = destination;
    let Some((index, rest)) = app.routes.by_target(https, &host, port, &path) else {
        let url = format!(
            "{}://{host}:{port}{path}",
            if https { "https" } else { "http" }
        );
        let error = match tunnel {
            // A vendor's host, outside every base path configured for it.
            Some(_) => ProxyError::NoRoute { path: url },
            None => {
                if let Some(egress) = &app.egress {
                    use std::sync::atomic::Ordering::Relaxed;
                    egress.metrics.refused_not_allowed.fetch_add(1, Relaxed);
                }
                ProxyError::EgressNotAllowed {
                    authority: format!("{host}:{port}"),
                }
            }
        };
        return failed(facts, error);
    };
    app.upstreams[index].metrics.count_egress();
    let routed = Routed {
        route: Route::Upstream { index, path: rest },
        path: &path,
        // No host for the origin check: a page on the vendor's own site is no more the
        // proxy's own than any other.
        host_value: None,
        caller,
    };
    let in_flight = count_in_flight(app, &routed, &request, facts);
    let answered = match answer(app, connection, request, routed, facts) {
        Ok((answering, verdict)) => answering.await.map(|response| (response, verdict)),
        Err(error) => Err(error),
    };
    respond(in_flight, answered, facts)
}

/// Where a request goes, as its client named it.
#[derive(Debug, PartialEq, Eq)]
struct Destination {
    https: bool,
    host: String,
    port: u16,
}

/// Inside a tunnel: the tunnel's vendor, which the request's own host (when it names one)
/// must match. On the listener: an absolute `http://` URL.
fn destination<B>(
    request: &Request<B>,
    tunnel: Option<&Tunnel>,
) -> Result<Destination, ProxyError> {
    framing_admissible(request)?;
    let Some(tunnel) = tunnel else {
        let uri = request.uri();
        return match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(authority)) => Ok(Destination {
                https: false,
                host: bare(authority.host()).to_ascii_lowercase(),
                port: authority.port_u16().unwrap_or(80),
            }),
            (Some(_), Some(_)) => Err(ProxyError::BadRequest {
                reason: "only http:// URLs are sent to a proxy in absolute form; https:// goes through CONNECT".into(),
            }),
            _ => Err(ProxyError::BadRequest {
                reason: "this is tokenproxy's egress listener: set it as HTTPS_PROXY or HTTP_PROXY; requests to http://127.0.0.1/<upstream>/ go to server.listen".into(),
            }),
        };
    };
    if let Some(named) = request_host(request) {
        let named = named
            .to_str()
            .ok()
            .and_then(|named| named.parse::<Authority>().ok());
        let matches = named.as_ref().is_some_and(|named| {
            named.port_u16().unwrap_or(443) == tunnel.port
                && bare(named.host()).eq_ignore_ascii_case(&tunnel.host)
        });
        if !matches {
            return Err(ProxyError::EgressMisdirected {
                host: named.map_or_else(|| "another host".to_owned(), |named| named.to_string()),
                tunnel: format!("{}:{}", tunnel.host, tunnel.port),
            });
        }
    }
    Ok(Destination {
        https: true,
        host: tunnel.host.to_string(),
        port: tunnel.port,
    })
}

/// A host without its trailing dot.
fn bare(host: &str) -> &str {
    host.trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::get(target);
        if let Some(host) = host {
            builder = builder.header(http::header::HOST, host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn a_tunnel_takes_requests_for_its_own_vendor_only() {
        let tunnel = Tunnel::new(&"API.Example.:443".parse().unwrap());
        let ours = Destination {
            https: true,
            host: "api.example".into(),
            port: 443,
        };
        for host in ["api.example", "API.EXAMPLE:443", "api.example."] {
            let answer = destination(&request("/x", Some(host)), Some(&tunnel));
            assert_eq!(answer.unwrap(), ours, "{host}");
        }
        for host in ["other.example", "api.example:8443", "api.example.evil"] {
            let answer = destination(&request("/x", Some(host)), Some(&tunnel));
            assert!(
                matches!(answer, Err(ProxyError::EgressMisdirected { .. })),
                "{host}"
            );
        }
        // HTTP/2's authority is in the target.
        let mut h2 = request("https://other.example/x", None);
        *h2.version_mut() = http::Version::HTTP_2;
        let h2 = destination(&h2, Some(&tunnel));
        assert!(matches!(h2, Err(ProxyError::EgressMisdirected { .. })));
    }

    #[test]
    fn the_listener_itself_takes_absolute_http_urls_only() {
        let plain = destination(&request("http://Plain.example:8080/a", Some("x")), None);
        assert_eq!(
            plain.unwrap(),
            Destination {
                https: false,
                host: "plain.example".into(),
                port: 8080
            }
        );
        for target in ["https://api.example/a", "/a"] {
            let refused = destination(&request(target, Some("api.example")), None);
            assert!(
                matches!(refused, Err(ProxyError::BadRequest { .. })),
                "{target}"
            );
        }
    }
}
