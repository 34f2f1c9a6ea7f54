//! Upstream connections that follow the client connection, for cleartext upstreams.
//!
//! The shared pool checks a connection out for every request: a lookup under a lock, and a
//! task per response that hands the connection back once the body is read. For a client on
//! a keep-alive connection that is pure overhead, because HTTP/1 requests on one connection
//! come one after another: the upstream connection the previous request used is free again
//! when the next one arrives. So the client connection holds its upstream connection, and
//! when the client leaves, the upstream connection goes to an idle list for the next
//! client (a script running `curl` once per call still reuses connections).
//! `bench/ab.sh`: +5 % req/s at 16 connections, +9 % at 128.
//!
//! HTTPS upstreams (ALPN may pick HTTP/2, which multiplexes on its own) and upgrades use
//! the shared pool.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use tokio::time::Instant;
use tower::ServiceExt;

use super::{ProxyBody, SendError, POOL_IDLE_TIMEOUT};

/// Idle connections kept per upstream address; further ones are closed.
const MAX_IDLE_PER_ADDRESS: usize = 256;

/// How often idle connections past `POOL_IDLE_TIMEOUT` are closed.
const REAP_INTERVAL: Duration = Duration::from_secs(30);

/// An upstream HTTP/1 connection.
struct Held {
    authority: Authority,
    sender: SendRequest<ProxyBody>,
    idle_since: Instant,
    /// The idle list it goes back to (weak: the list holds connections, not the reverse).
    home: Weak<IdleConnections>,
}

impl Held {
    fn go_home(self) {
        if let Some(home) = self.home.upgrade() {
            home.put(self);
        }
    }

    /// Neither closed by the server nor idle for too long.
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.duration_since(self.idle_since) < POOL_IDLE_TIMEOUT
    }

    fn belongs_to(&self, idle: &Arc<IdleConnections>, authority: &Authority) -> bool {
        std::ptr::eq(self.home.as_ptr(), Arc::as_ptr(idle)) && self.authority == *authority
    }
}

/// The upstream connection one client connection holds. When the client connection ends
/// (this is dropped), the upstream connection goes back to its idle list.
#[derive(Default)]
pub struct Affinity {
    held: Mutex<Option<Held>>,
}

impl Affinity {
    /// The held connection, if it goes to `authority` through `idle`'s transport and is free.
    fn take(&self, idle: &Arc<IdleConnections>, authority: &Authority) -> Option<Held> {
        let mut slot = self.held.lock().expect("poisoned");
        let held = slot.as_ref()?;
        if !held.belongs_to(idle, authority) {
            // The client moved on to another upstream: the old connection is free for others.
            let other = slot.take()?;
            drop(slot);
            other.go_home();
            return None;
        }
        if held.sender.is_ready() {
            return slot.take();
        }
        if held.sender.is_closed() {
            *slot = None;
        }
        // Otherwise busy with a concurrent request (an HTTP/2 client): left where it is.
        None
    }

    /// Keeps `held` for the next request, unless a connection is already held.
    fn keep(&self, held: Held) {
        let mut slot = self.held.lock().expect("poisoned");
        if slot.is_none() {
            *slot = Some(held);
        } else {
            drop(slot);
            held.go_home();
        }
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        if let Some(held) = self.held.get_mut().ok().and_then(Option::take) {
            held.go_home();
        }
    }
}

/// Upstream connections no client connection holds, per address, most recently used last.
#[derive(Default)]
pub struct IdleConnections {
    by_address: Mutex<HashMap<Authority, Vec<Held>>>,
    reaper_started: AtomicBool,
}

impl IdleConnections {
    /// The most recently used free connection to `authority`. Closed and expired ones are
    /// dropped on the way; busy ones (handed back while a response was still streaming)
    /// stay for later.
    fn take(&self, authority: &Authority) -> Option<Held> {
        let mut by_address = self.by_address.lock().expect("poisoned");
        let list = by_address.get_mut(authority)?;
        let now = Instant::now();
        list.retain(|held| held.usable(now));
        let index = list.iter().rposition(|held| held.sender.is_ready())?;
        Some(list.remove(index))
    }

    fn put(self: Arc<Self>, mut held: Held) {
        if held.sender.is_closed() {
            return;
        }
        held.idle_since = Instant::now();
        {
            let mut by_address = self.by_address.lock().expect("poisoned");
            let list = by_address.entry(held.authority.clone()).or_default();
            if list.len() >= MAX_IDLE_PER_ADDRESS {
                // Dropping it closes the connection.
                return;
            }
            list.push(held);
        }
        if !self.reaper_started.swap(true, Ordering::Relaxed) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(reap(Arc::downgrade(&self)));
            }
        }
    }

    /// Closes connections idle for longer than `POOL_IDLE_TIMEOUT`, or closed by the server.
    fn prune(&self) {
        let now = Instant::now();
        let mut by_address = self.by_address.lock().expect("poisoned");
        for list in by_address.values_mut() {
            list.retain(|held| held.usable(now));
        }
        by_address.retain(|_, list| !list.is_empty());
    }
}

/// Runs as long as the idle list exists.
async fn reap(idle: Weak<IdleConnections>) {
    loop {
        tokio::time::sleep(REAP_INTERVAL).await;
        match idle.upgrade() {
            Some(idle) => idle.prune(),
            None => return,
        }
    }
}

/// Sends `request` (absolute-form, `http`) over the connection `affinity` holds, a free idle
/// one, or a new one. A request the connection never started to send (it closed while idle)
/// is sent once more on a new connection, whatever its method.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps each argument twice"
)]
pub(super) fn send<'a>(
    connector: &'a super::Connector,
    idle: &'a Arc<IdleConnections>,
    affinity: &'a Affinity,
    mut request: Request<ProxyBody>,
) -> impl Future<Output = Result<Response<Incoming>, SendError>> + 'a {
    async move {
        let authority = request
            .uri()
            .authority()
            .cloned()
            .ok_or_else(|| SendError::Broken("the request has no upstream address".into()))?;
        let origin_form = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(origin_form);

        // The common case: the held connection (or a free idle one) is ready, and the request
        // goes out at once. Everything else is boxed, so this future, which every request's
        // future holds and moves, stays small.
        let ready = affinity
            .take(idle, &authority)
            .or_else(|| idle.take(&authority));
        let mut reuse = true;
        if let Some(mut held) = ready {
            match send_on(&mut held, request).await {
                Ok(response) => {
                    affinity.keep(held);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) => {
                        request = unsent;
                        reuse = false;
                    }
                    None => return Err(SendError::Broken(error.into_error().into())),
                },
            }
        }
        let slowly = Box::pin(send_slowly(
            connector, idle, affinity, &authority, request, reuse,
        ));
        slowly.await
    }
}

/// `send` when no ready connection was at hand, or the one at hand closed before the
/// request went out (`reuse` false: only a new connection will do).
async fn send_slowly(
    connector: &super::Connector,
    idle: &Arc<IdleConnections>,
    affinity: &Affinity,
    authority: &Authority,
    mut request: Request<ProxyBody>,
    mut reuse: bool,
) -> Result<Response<Incoming>, SendError> {
    loop {
        let reused = if reuse {
            affinity
                .take(idle, authority)
                .or_else(|| idle.take(authority))
        } else {
            None
        };
        let mut held = match reused {
            Some(held) => held,
            None => connect(connector, idle, authority).await?,
        };
        if let Err(error) = held.sender.ready().await {
            if reuse {
                reuse = false;
                continue;
            }
            return Err(SendError::Broken(error.into()));
        }
        match send_on(&mut held, request).await {
            Ok(response) => {
                affinity.keep(held);
                return Ok(response);
            }
            Err(mut error) => match error.take_message() {
                Some(unsent) if reuse => {
                    request = unsent;
                    reuse = false;
                }
                _ => return Err(SendError::Broken(error.into_error().into())),
            },
        }
    }
}

/// Sends `request` on `held`; the caller keeps `held` once an answer came. A request that
/// never went out comes back in the error. A plain function, not an `async` one: the
/// request path awaits hyper's future directly, one layer less to copy it through.
fn send_on(
    held: &mut Held,
    request: Request<ProxyBody>,
) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<ProxyBody>>>> + Send {
    debug_assert!(
        request.headers().contains_key(header::HOST),
        "the caller names the host (see `Transport::send`)"
    );
    held.sender.try_send_request(request)
}

async fn connect(
    connector: &super::Connector,
    idle: &Arc<IdleConnections>,
    authority: &Authority,
) -> Result<Held, SendError> {
    let address = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|error| SendError::Connect(error.into()))?;
    let io = connector
        .clone()
        .oneshot(address)
        .await
        .map_err(|error| SendError::Connect(error.into()))?;
    let (sender, connection) = http1::Builder::new()
        // Requests are mostly a head and a small body: one copy into one write (see
        // `build`, which sets the same for the pool).
        .writev(false)
        .handshake(io)
        .await
        .map_err(|error| SendError::Connect(error.into()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %error, "upstream connection ended with an error");
        }
    });
    Ok(Held {
        authority: authority.clone(),
        sender,
        idle_since: Instant::now(),
        home: Arc::downgrade(idle),
    })
}
