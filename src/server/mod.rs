//! Listening: the main listener plus one per upstream with its own `listen`, each serving
//! HTTP/1.1 and cleartext HTTP/2 (prior knowledge) with upgrades; a graceful drain on
//! shutdown; and reloads that swap the whole `App` atomically, so in-flight requests finish
//! on the config they started with.

mod deadline;
mod drain;
mod egress;
pub mod framing;
mod run;
mod version;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use run::{serve_until_signal, start_logged};

use crate::app::{App, BuildError};
use crate::config::Config;
use crate::fleet::{Fleet, FleetError};
use crate::proxy::{self, Connection};
use crate::store::{self, Owner, SharedStore, Store, StoreError};
use crate::tokens::{spawn_follower, spawn_refresher};
use crate::transport::ProxyBody;
use crate::transport::Transports;
use deadline::{Activity, Deadlines, Timeouts};
use drain::Drain;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store.redis: {0}")]
    Fleet(#[from] FleetError),
    #[error("egress.ca_dir: {0}")]
    EgressCa(#[from] crate::egress::ca::CaError),
    #[error(
        "cannot listen on {addr} ({field}): {source}{}",
        bind_hint(field, source)
    )]
    Bind {
        addr: SocketAddr,
        /// Where the address was set: `server.listen`, `egress.listen` or `upstreams.NAME.listen`.
        field: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    BindUnix {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to change when the address is taken: the flag for the main listener, else the
/// upstream's field.
fn bind_hint(field: &str, source: &std::io::Error) -> String {
    if source.kind() != std::io::ErrorKind::AddrInUse {
        return String::new();
    }
    let how = if field == "server.listen" {
        "`--listen ADDR` (or TOKENPROXY_LISTEN), or server.listen in the config"
    } else {
        field
    };
    format!(
        "; another program listens there (another tokenproxy?): choose another address with {how}"
    )
}

/// The app every new request is served by; replaced whole on reload.
pub type SharedApp = Arc<ArcSwap<App>>;

/// A running tokenproxy: listeners bound, refreshers started.
pub struct Server {
    app: SharedApp,
    transports: Transports,
    store: SharedStore,
    fleet: Option<Arc<Fleet>>,
    config: Config,
    refreshers: bool,
    main_addr: SocketAddr,
    upstream_addrs: Vec<(String, SocketAddr)>,
    egress_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    accept_loops: Vec<JoinHandle<()>>,
}

impl Server {
    /// Builds the app, binds every listener (all or none), and starts serving with a
    /// refresher per upstream.
    pub async fn start(config: &Config) -> Result<Server, StartError> {
        Self::start_with(config, true).await
    }

    /// As `start`; without refreshers, tokens are only obtained when asked for (the
    /// one-shot commands, which must not call every vendor).
    pub async fn start_with(config: &Config, refreshers: bool) -> Result<Server, StartError> {
        let store = Arc::new(match &config.store_path {
            Some(path) => Store::open(
                path,
                &Owner {
                    pid: std::process::id(),
                    admin: None,
                },
            )?,
            None => Store::memory(),
        });
        let fleet = config.fleet.as_ref().map(Fleet::connect).transpose()?;
        let transports = Transports::new();
        let app = App::build(
            config,
            &transports,
            Arc::clone(&store),
            fleet.as_ref(),
            None,
        )?;
        let bind = |addr: SocketAddr, field: String| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr,
                    field,
                    source,
                })
        };
        // The CA before any port: a missing one is a start-up error, not a failed handshake.
        let interceptor = config
            .egress
            .as_ref()
            .map(|egress| crate::egress::Interceptor::load(&egress.ca_dir))
            .transpose()?
            .map(Arc::new);
        let main = bind(config.server.listen, "server.listen".to_owned()).await?;
        let egress_listener = match &config.egress {
            Some(egress) => Some(bind(egress.listen, "egress.listen".to_owned()).await?),
            None => None,
        };
        let mut dedicated = Vec::new();
        for upstream in &config.upstreams {
            if let Some(addr) = upstream.listen {
                let field = format!("upstreams.{}.listen", upstream.name);
                dedicated.push((upstream.name.clone(), bind(addr, field).await?));
            }
        }

        #[cfg(unix)]
        let unix = config
            .server
            .unix_socket
            .as_deref()
            .map(bind_unix)
            .transpose()?;
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let main_addr = local_addr(&main);
        let _ = app.public_base.set(public_base(main_addr));
        let egress_addr = egress_listener.as_ref().map(local_addr);
        if let (Some(egress), Some(addr)) = (&app.egress, egress_addr) {
            let _ = egress.address.set(addr);
        }
        if let Some(path) = &config.store_path {
            // Lets `tokenproxy login` and friends find this daemon.
            store::announce(
                path,
                &Owner {
                    pid: std::process::id(),
                    admin: Some(public_base(main_addr)),
                },
            );
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        if refreshers {
            for upstream in &app.upstreams {
                spawn_refresher(Arc::clone(&upstream.tokens), shutdown_rx.clone());
                spawn_follower(Arc::clone(&upstream.tokens), shutdown_rx.clone());
            }
        }
        let app: SharedApp = Arc::new(ArcSwap::from_pointee(app));
        let limits = Limits::from(config);
        let mut upstream_addrs = Vec::new();
        let mut accept_loops = vec![tokio::spawn(accept_loop(
            Arc::clone(&app),
            Listener::Tcp(main),
            None,
            shutdown_rx.clone(),
            limits.clone(),
        ))];
        #[cfg(unix)]
        if let Some(unix) = unix {
            accept_loops.push(tokio::spawn(accept_loop(
                Arc::clone(&app),
                Listener::Unix(unix),
                None,
                shutdown_rx.clone(),
                limits.clone(),
            )));
        }
        for (name, listener) in dedicated {
            upstream_addrs.push((name.clone(), local_addr(&listener)));
            accept_loops.push(tokio::spawn(accept_loop(
                Arc::clone(&app),
                Listener::Tcp(listener),
                Some(Arc::from(name.as_str())),
                shutdown_rx.clone(),
                limits.clone(),
            )));
        }
        if let (Some(listener), Some(interceptor)) = (egress_listener, interceptor) {
            accept_loops.push(tokio::spawn(egress::accept_loop(
                Arc::clone(&app),
                Listener::Tcp(listener),
                interceptor,
                shutdown_rx.clone(),
                limits.clone(),
            )));
        }
        Ok(Server {
            app,
            transports,
            store,
            fleet,
            config: config.clone(),
            refreshers,
            main_addr,
            upstream_addrs,
            egress_addr,
            shutdown,
            accept_loops,
        })
    }

    /// The app serving new requests now.
    pub fn app(&self) -> Arc<App> {
        self.app.load_full()
    }

    /// Switches to `config`: upstreams whose settings did not change keep their tokens,
    /// new ones start refreshing, dropped ones stop. Requests under way finish on the old
    /// config. Listen addresses and the store need a restart; a change to them is reported.
    pub fn reload(&mut self, config: &Config) -> Result<(), String> {
        let mut needs_restart = Vec::new();
        if config.server.listen != self.config.server.listen {
            needs_restart.push("server.listen".to_owned());
        }
        if config.store_path != self.config.store_path {
            needs_restart.push("store.path".to_owned());
        }
        let egress_key = |config: &Config| {
            config
                .egress
                .as_ref()
                .map(|egress| (egress.listen, egress.ca_dir.clone()))
        };
        if egress_key(config) != egress_key(&self.config) {
            needs_restart.push("egress.listen, egress.ca_dir".to_owned());
        }
        let fleet_key = |config: &Config| {
            config.fleet.as_ref().map(|fleet| {
                (
                    fleet.url.expose().to_owned(),
                    fleet.key_prefix.clone(),
                    fleet.lease_ttl,
                )
            })
        };
        if fleet_key(config) != fleet_key(&self.config) {
            needs_restart.push("store.redis".to_owned());
        }
        for upstream in &config.upstreams {
            let before = self
                .config
                .upstreams
                .iter()
                .find(|old| old.name == upstream.name);
            if upstream.listen.is_some() && before.and_then(|old| old.listen) != upstream.listen {
                needs_restart.push(format!("upstreams.{}.listen", upstream.name));
            }
        }
        let current = self.app.load_full();
        let next = App::build(
            config,
            &self.transports,
            Arc::clone(&self.store),
            self.fleet.as_ref(),
            Some(&current),
        )
        .map_err(|error| error.to_string())?;
        let (_, shutdown_rx) = (&self.shutdown, self.shutdown.subscribe());
        for upstream in &next.upstreams {
            let is_new = !current
                .upstreams
                .iter()
                .any(|old| Arc::ptr_eq(&old.tokens, &upstream.tokens));
            if is_new && self.refreshers {
                spawn_refresher(Arc::clone(&upstream.tokens), shutdown_rx.clone());
                spawn_follower(Arc::clone(&upstream.tokens), shutdown_rx.clone());
            }
        }
        for dropped in current.dropped_by(&next) {
            dropped.retire();
        }
        let kept = next.upstreams.len()
            - next
                .upstreams
                .iter()
                .filter(|u| {
                    !current
                        .upstreams
                        .iter()
                        .any(|old| Arc::ptr_eq(&old.tokens, &u.tokens))
                })
                .count();
        self.app.store(Arc::new(next));
        self.config = config.clone();
        tracing::info!(
            upstreams = config.upstreams.len(),
            kept_tokens = kept,
            "config reloaded"
        );
        if !needs_restart.is_empty() {
            tracing::warn!(settings = %needs_restart.join(", "), "these changes take effect after a restart");
        }
        Ok(())
    }

    /// The main listener's address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.main_addr
    }

    /// The egress listener's address, when egress is configured.
    pub fn egress_addr(&self) -> Option<SocketAddr> {
        self.egress_addr
    }

    /// The address of an upstream's own listener.
    pub fn upstream_addr(&self, name: &str) -> Option<SocketAddr> {
        self.upstream_addrs
            .iter()
            .find(|(upstream, _)| upstream == name)
            .map(|(_, addr)| *addr)
    }

    /// Stops accepting, lets in-flight requests finish within the drain time, stops the
    /// refreshers. Every token is already in the store: it is written before use.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for accept_loop in self.accept_loops {
            let _ = accept_loop.await;
        }
        if let Some(access_log) = &self.app.load().access_log {
            access_log.flush().await;
        }
        // Fleet mode: hand the leases this replica holds over at once, not at their expiry.
        if let Some(fleet) = &self.fleet {
            for upstream in &self.app.load().upstreams {
                let holds = upstream
                    .tokens
                    .fleet()
                    .is_some_and(|link| link.view().this_replica);
                if holds {
                    let _ = fleet.release(&upstream.config.name).await;
                }
            }
        }
    }

    pub fn drain_timeout(&self) -> Duration {
        self.config.server.drain_timeout
    }

    /// Where the config came from, to read it again on reload.
    pub fn config_source(&self) -> &str {
        &self.config.source
    }

    /// What the command line set over the config file, for reloads.
    pub fn overrides(&self) -> &crate::config::Overrides {
        &self.config.overrides
    }
}

/// The address a browser on this machine uses to reach a listener: a wildcard bind is
/// reached through loopback.
fn public_base(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound TCP listener has an address")
}

/// A bound listener: TCP, or the optional Unix socket.
pub enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

/// Limits every accept loop applies.
#[derive(Clone)]
struct Limits {
    connections: Arc<tokio::sync::Semaphore>,
    max_header_bytes: usize,
    h2_keepalive_interval: Duration,
    timeouts: Timeouts,
    drain: Duration,
}

impl Limits {
    fn from(config: &Config) -> Self {
        Limits {
            connections: Arc::new(tokio::sync::Semaphore::new(config.server.max_connections)),
            max_header_bytes: config.server.max_header_bytes,
            h2_keepalive_interval: config.server.h2_keepalive_interval,
            timeouts: Timeouts {
                first_request: config.server.first_request_timeout,
                head: config.server.header_read_timeout,
                body: config.server.body_timeout,
                idle: config.server.idle_timeout,
                write: config.server.write_timeout,
            },
            drain: config.server.drain_timeout,
        }
    }
}

async fn accept_loop(
    app: SharedApp,
    listener: Listener,
    dedicated: Option<Arc<str>>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) {
    let drain_on_shutdown = Drain::new();
    let server = http_server(&limits, true);
    while let Some((stream, client, local)) = next_connection(&listener, &mut shutdown).await {
        // Accepted at once, so the listen backlog never holds a client behind silent ones.
        let accepted = tokio::time::Instant::now();
        let activity = Activity::new(accepted);
        let app = Arc::clone(&app);
        let connection_info = Arc::new(Connection::new(client, local, dedicated.clone()));
        let service = tracked_service(&activity, move |request| {
            proxy::handle(app.load_full(), Arc::clone(&connection_info), request)
        });
        let io = Deadlines::new(framing::StrictHttp1::new(stream), activity, limits.timeouts);
        let connection = drain_on_shutdown.watch(server.serve(io, service));
        spawn_admitted(connection, &limits, accepted);
    }
    drop(listener);
    within_drain_time(drain_on_shutdown.shutdown(), &limits).await;
}

/// The service of one connection: `handle` answers each request, which is tracked for the
/// connection's deadlines. The framing guard sees only requests, so this is how it learns
/// that the connection became a tunnel (a 101, or a 200 to CONNECT) and steps aside, with
/// the read deadlines.
fn tracked_service<F, Fut>(
    activity: &Arc<Activity>,
    handle: F,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<deadline::Tracked<ProxyBody>>,
    Error = Infallible,
    Future = impl std::future::Future<
        Output = Result<Response<deadline::Tracked<ProxyBody>>, Infallible>,
    > + Send
                 + 'static,
> + Clone
       + Send
       + 'static
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let activity = Arc::clone(activity);
    service_fn(move |request: Request<Incoming>| {
        let in_flight = activity.request();
        let connect = request.method() == http::Method::CONNECT;
        // Not boxed: hyper keeps the future in a slot of its own, which it allocates once
        // per connection, and never moves it there.
        deadline::TrackedAnswer::new(handle(request), in_flight, connect)
    })
}

/// Serves `connection` once it has one of the `max_connections` slots. It waits for one up
/// to twice the first-request deadline from `accepted`: one that got its slot late is
/// served if its request is there, else cut at once.
fn spawn_admitted<E: std::fmt::Display>(
    connection: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
    limits: &Limits,
    accepted: tokio::time::Instant,
) {
    let slot = Arc::clone(&limits.connections).acquire_owned();
    let slot_by = accepted + 2 * limits.timeouts.first_request;
    tokio::spawn(async move {
        let Ok(Ok(permit)) = tokio::time::timeout_at(slot_by, slot).await else {
            return;
        };
        if let Err(error) = connection.await {
            tracing::debug!(error = %error, "connection ended with an error");
        }
        drop(permit);
    });
}

/// Waits for `drained` (connections finishing) up to the drain time.
async fn within_drain_time(drained: impl std::future::Future, limits: &Limits) {
    if tokio::time::timeout(limits.drain, drained).await.is_err() {
        tracing::warn!(drain = ?limits.drain, "drain time over; closing the remaining connections");
    }
}

/// The server every connection of a listener is served by, with the limits applied:
/// HTTP/1.1, and HTTP/2 by prior knowledge when `http2`.
fn http_server(limits: &Limits, http2: bool) -> Arc<version::Server> {
    Arc::new(version::Server::new(
        limits.max_header_bytes,
        http2.then_some(limits.h2_keepalive_interval),
    ))
}

/// The next client connection, or `None` once shutdown is signalled.
async fn next_connection(
    listener: &Listener,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(Stream, Option<SocketAddr>, Option<SocketAddr>)> {
    loop {
        let accepted = tokio::select! {
            accepted = accept(listener) => accepted,
            _ = shutdown.changed() => return None,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(error) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A client connection, whatever the listener.
type Stream = Box<dyn StreamIo>;

trait StreamIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> StreamIo for T {}

async fn accept(
    listener: &Listener,
) -> std::io::Result<(Stream, Option<SocketAddr>, Option<SocketAddr>)> {
    match listener {
        Listener::Tcp(listener) => {
            let (stream, client) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            Ok((Box::new(stream), Some(client), local))
        }
        #[cfg(unix)]
        Listener::Unix(listener) => {
            let (stream, _) = listener.accept().await?;
            Ok((Box::new(stream), None, None))
        }
    }
}

/// Binds the Unix socket with mode 0600: only this user's processes may use the proxy.
#[cfg(unix)]
fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |source| StartError::BindUnix {
        path: path.to_owned(),
        source,
    };
    // A socket file left by a previous run; anything else is not ours to remove.
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if metadata.file_type().is_socket() {
            std::fs::remove_file(path).map_err(failed)?;
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    Ok(listener)
}
