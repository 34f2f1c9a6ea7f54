//! The egress listener (`[egress] listen`): what clients put in `HTTPS_PROXY`. It speaks
//! HTTP/1.1 as a forward proxy does: the client key as `Proxy-Authorization` when one is
//! set (407 otherwise), then `CONNECT` to a vendor (TLS terminated here, the requests
//! inside served by `proxy::egress`), `CONNECT` to a passthrough host (a blind tunnel),
//! absolute-form `http://` requests to a vendor, and 403 for everything else, before
//! anything is dialed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::{Method, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::deadline::{Activity, Deadlines};
use super::drain::Drain;
use super::version;
use super::{
    framing, http_server, next_connection, spawn_admitted, tracked_service, within_drain_time,
    Limits, Listener, SharedApp,
};
use crate::access_log::{Facts, Via};
use crate::app::App;
use crate::egress::{self, Decision, Interceptor};
use crate::problem::ProxyError;
use crate::proxy::egress::Tunnel;
use crate::proxy::{self, Connection};
use crate::transport::ProxyBody;

/// What every egress connection shares.
struct Shared {
    app: SharedApp,
    interceptor: Arc<Interceptor>,
    limits: Limits,
    /// Tunnels are served after their CONNECT's connection is handed over, so they are
    /// watched for the drain on their own.
    tunnels: Drain,
    /// Inside a tunnel the client may speak HTTP/2 (its TLS offered it).
    tunnel_server: Arc<version::Server>,
}

pub(super) async fn accept_loop(
    app: SharedApp,
    listener: Listener,
    interceptor: Arc<Interceptor>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) {
    let connections = Drain::new();
    let shared = Arc::new(Shared {
        app,
        interceptor,
        limits: limits.clone(),
        tunnels: Drain::new(),
        tunnel_server: http_server(&limits, true),
    });
    // Clients speak HTTP/1.1 to a proxy; HTTP/2 begins inside a tunnel.
    let server = http_server(&limits, false);
    while let Some((stream, client, local)) = next_connection(&listener, &mut shutdown).await {
        let accepted = tokio::time::Instant::now();
        let activity = Activity::new(accepted);
        let connection = Arc::new(Connection::egress(client, local));
        let shared_here = Arc::clone(&shared);
        let service = tracked_service(&activity, move |request| {
            on_listener(Arc::clone(&shared_here), Arc::clone(&connection), request)
        });
        let io = Deadlines::new(framing::StrictHttp1::new(stream), activity, limits.timeouts);
        let connection = connections.watch(server.serve(io, service));
        spawn_admitted(connection, &limits, accepted);
    }
    drop(listener);
    within_drain_time(
        async { tokio::join!(connections.shutdown(), shared.tunnels.shutdown()) },
        &limits,
    )
    .await;
}

/// One request on the listener itself: absolute form, or CONNECT after the client key.
async fn on_listener(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let app = shared.app.load_full();
    if app.egress.is_none() {
        return ProxyError::BadRequest {
            reason: "egress is off in the current config; a restart closes this listener".into(),
        }
        .into_response();
    }
    if request.method() != Method::CONNECT {
        return proxy::egress::handle(app, connection, request, None).await;
    }
    let addr = connection.client_ip();
    proxy::logged(
        &app,
        addr,
        Via::Egress,
        request,
        |request, mut facts| async {
            let response = connect(&shared, &app, &connection, request, &mut facts).await;
            (response, facts)
        },
    )
    .await
}

/// A CONNECT: the client key, then a tunnel to a vendor (intercepted), to a passthrough
/// host (blind), or 403.
async fn connect(
    shared: &Arc<Shared>,
    app: &App,
    connection: &Connection,
    mut request: Request<Incoming>,
    facts: &mut Facts,
) -> Response<ProxyBody> {
    let Some(egress) = &app.egress else {
        unreachable!("checked by on_listener");
    };
    let key = proxy::presented_key(request.headers());
    let Ok(caller) = proxy::caller(app, || key) else {
        egress.metrics.refused_proxy_auth.fetch_add(1, Relaxed);
        return proxy::failed(facts, ProxyError::EgressKeyRequired);
    };
    proxy::note_caller(app, caller, facts);
    let Some(authority) = request.uri().authority().cloned() else {
        let reason = "CONNECT needs a host:port target".into();
        return proxy::failed(facts, ProxyError::BadRequest { reason });
    };
    let tunnel = Tunnel::new(&authority);
    match egress::decide(app, &tunnel.host, tunnel.port) {
        Decision::Intercept => {
            let tls = match shared.interceptor.server_config(&tunnel.host) {
                Ok(tls) => tls,
                Err(error) => {
                    let error = ProxyError::EgressCannotSign {
                        host: tunnel.host.to_string(),
                        reason: error.to_string(),
                    };
                    return proxy::failed(facts, error);
                }
            };
            egress.metrics.intercepted.fetch_add(1, Relaxed);
            let upgrade = hyper::upgrade::on(&mut request);
            let connection = connection.in_tunnel(key);
            tokio::spawn(intercept(
                Arc::clone(shared),
                upgrade,
                tls,
                tunnel,
                connection,
            ));
            tunnel_opened()
        }
        Decision::Passthrough => {
            let timeout = app.server.connect_timeout;
            let dialed =
                tokio::time::timeout(timeout, TcpStream::connect((&*tunnel.host, tunnel.port)))
                    .await;
            let vendor = match dialed {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return tunnel_failed(facts, &tunnel, error.to_string()),
                Err(_) => {
                    let reason = format!("no connection within {timeout:?}");
                    return tunnel_failed(facts, &tunnel, reason);
                }
            };
            egress.metrics.passthrough.fetch_add(1, Relaxed);
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(pass_through(Arc::clone(shared), upgrade, vendor));
            tunnel_opened()
        }
        Decision::Deny => {
            egress.metrics.refused_not_allowed.fetch_add(1, Relaxed);
            let authority = format!("{}:{}", tunnel.host, tunnel.port);
            proxy::failed(facts, ProxyError::EgressNotAllowed { authority })
        }
    }
}

fn tunnel_opened() -> Response<ProxyBody> {
    Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync())
}

fn tunnel_failed(facts: &mut Facts, tunnel: &Tunnel, reason: String) -> Response<ProxyBody> {
    let authority = format!("{}:{}", tunnel.host, tunnel.port);
    proxy::failed(facts, ProxyError::EgressTunnelFailed { authority, reason })
}

/// A tunnel to a vendor: tokenproxy is the TLS server (the CA's leaf for the vendor's
/// host), and each request inside goes to the vendor with its token.
async fn intercept(
    shared: Arc<Shared>,
    upgrade: OnUpgrade,
    tls: Arc<rustls::ServerConfig>,
    tunnel: Tunnel,
    connection: Connection,
) {
    let Ok(upgraded) = upgrade.await else {
        return;
    };
    let limits = &shared.limits;
    let Some(_permit) = tunnel_slot(limits).await else {
        return;
    };
    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(TokioIo::new(upgraded));
    let stream = match tokio::time::timeout(limits.timeouts.first_request, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            // Usually a client that does not trust the CA yet.
            tracing::info!(host = %tunnel.host, error = %error, "egress: the client ended the TLS handshake");
            return;
        }
        Err(_) => return,
    };
    let activity = Activity::new(tokio::time::Instant::now());
    let app = Arc::clone(&shared.app);
    let connection = Arc::new(connection);
    let service = tracked_service(&activity, move |request| {
        let (app, connection, tunnel) = (app.load_full(), Arc::clone(&connection), tunnel.clone());
        async move { proxy::egress::handle(app, connection, request, Some(&tunnel)).await }
    });
    let io = Deadlines::new(framing::StrictHttp1::new(stream), activity, limits.timeouts);
    let served = shared
        .tunnels
        .watch(shared.tunnel_server.serve(io, service));
    if let Err(error) = served.await {
        tracing::debug!(error = %error, "egress tunnel ended with an error");
    }
}

/// One of the `max_connections` slots for a tunnel: its CONNECT's own slot is given back
/// as hyper hands the connection over. `None` when none frees up in time.
async fn tunnel_slot(limits: &Limits) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let slot = Arc::clone(&limits.connections).acquire_owned();
    match tokio::time::timeout(2 * limits.timeouts.first_request, slot).await {
        Ok(Ok(permit)) => Some(permit),
        _ => None,
    }
}

/// A blind tunnel: bytes both ways until either side closes.
async fn pass_through(shared: Arc<Shared>, upgrade: OnUpgrade, mut vendor: TcpStream) {
    let Ok(upgraded) = upgrade.await else {
        return;
    };
    let Some(_permit) = tunnel_slot(&shared.limits).await else {
        return;
    };
    let mut client = TokioIo::new(upgraded);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut vendor).await;
}
