//! One HTTP/2 connection per HTTPS origin known to speak it, shared by every request to it.
//!
//! hyper-util's pool did the same job at a price paid on every request: a checkout that
//! hashes the pool key (scheme and authority, a byte at a time, with SipHash) several
//! times, a clone of the connector and of the client, and their drops: some 5,500
//! instructions of the 94,000 a 100-byte request costs over HTTP/2 (`bench/instructions.sh`
//! with `INSTR_ORIGIN=https`). Here a request loads the live connection and sends on it.
//! One request at a time dials, and those waiting take its connection; a connection unused
//! for about [`IDLE_TIMEOUT`] is let go, as the pool let its idle ones go.
//! Each origin's entry ([`Origin`]) is kept by `protocols`, with what it knows of the origin.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioTimer;
use tower::Service;

use super::{Connector, ProxyBody, SendError};

/// How long a connection no request used is kept, as the pool kept its idle connections.
/// Its use is checked every third of that, so it closes between one and four thirds of
/// this after its last request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const IDLE_CHECKS: u32 = 3;

/// Sends on an origin's connection and dials it when it has none; the connections are the
/// origins' own ([`Origin`]).
pub struct Http2Client {
    /// TLS offering only `h2` by ALPN.
    connector: HttpsConnector<Connector>,
    /// The upstream's connect timeout, for the whole dial: TCP, TLS and the HTTP/2 handshake.
    /// Requests wait for the dial under way, so one must not hang.
    dial_timeout: Duration,
    idle_timeout: Duration,
}

/// An origin known to speak HTTP/2, and its connection.
pub struct Origin {
    pub authority: Authority,
    live: ArcSwapOption<Live>,
    /// Held while dialing, so that one request dials and the others wait for its connection.
    dialing: tokio::sync::Mutex<()>,
    /// Set by every request, cleared by the idle check.
    used: AtomicBool,
}

/// A connection that took the HTTP/2 handshake.
struct Live {
    sender: SendRequest<ProxyBody>,
}

impl Http2Client {
    pub fn new(connector: HttpsConnector<Connector>, dial_timeout: Duration) -> Self {
        Http2Client {
            connector,
            dial_timeout,
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// Sends `request` (absolute-form, `https`, to `origin`) on the origin's connection,
    /// dialing one if it has none. A request the connection gave back unsent (it was
    /// closing: a GOAWAY, a connection lost between two requests) is sent once more on a new
    /// one.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps each argument twice"
    )]
    pub fn send(
        &self,
        origin: Arc<Origin>,
        request: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, SendError>> + Send + '_ {
        async move {
            let mut request = request;
            let mut retried = false;
            loop {
                let live = match origin.live.load_full() {
                    Some(live) if !live.sender.is_closed() => live,
                    // Boxed: the dial's large future stays out of every request's.
                    _ => Box::pin(self.dial(&origin, request.uri())).await?,
                };
                origin.used.store(true, Ordering::Relaxed);
                let mut sender = live.sender.clone();
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok(response),
                    Err(mut error) => match error.take_message() {
                        Some(unsent) if !retried => {
                            origin.retire(Arc::as_ptr(&live));
                            request = unsent;
                            retried = true;
                        }
                        _ => return Err(SendError::Broken(error.into_error().into())),
                    },
                }
            }
        }
    }

    /// A live connection to `origin`: the one another request has just made, or a new one.
    async fn dial(&self, origin: &Arc<Origin>, uri: &Uri) -> Result<Arc<Live>, SendError> {
        let _dialing = origin.dialing.lock().await;
        if let Some(live) = origin.live.load_full() {
            if !live.sender.is_closed() {
                return Ok(live);
            }
        }
        let handshake = async {
            let io = self
                .connector
                .clone()
                .call(uri.clone())
                .await
                .map_err(SendError::Connect)?;
            // ALPN offered only h2: an origin that answers without it no longer speaks it.
            if !io.connected().is_negotiated_h2() {
                return Err(SendError::Connect(
                    "the origin did not agree to HTTP/2".into(),
                ));
            }
            hyper::client::conn::http2::Builder::new(BoxedTasks)
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|error| SendError::Connect(error.into()))
        };
        let (sender, connection) = tokio::time::timeout(self.dial_timeout, handshake)
            .await
            .map_err(|_| {
                let timeout = self.dial_timeout;
                SendError::Connect(format!("no HTTP/2 connection within {timeout:?}").into())
            })??;
        let live = Arc::new(Live { sender });
        origin.live.store(Some(Arc::clone(&live)));
        let idle_check = self.idle_timeout / IDLE_CHECKS;
        let watched = (Arc::clone(origin), Arc::downgrade(&live));
        tokio::spawn(drive(connection, watched, idle_check));
        Ok(live)
    }
}

/// Spawns the task hyper starts for every request (it waits for the answer) with its future
/// boxed, as hyper-util's pool does: tokio copies a task's future into the task when it
/// is spawned and again when it ends, and this one is large (`bench/instructions.sh`: 1,400
/// instructions a request in those copies, against a hundred for the box).
#[derive(Clone, Copy)]
struct BoxedTasks;

impl<F> hyper::rt::Executor<F> for BoxedTasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}

impl Origin {
    pub fn new(authority: Authority) -> Self {
        Origin {
            authority,
            live: ArcSwapOption::empty(),
            dialing: tokio::sync::Mutex::new(()),
            used: AtomicBool::new(false),
        }
    }

    /// Lets `live` go if it is still the origin's connection: requests under way on it
    /// finish, new ones dial.
    fn retire(&self, live: *const Live) {
        let current = self.live.load();
        if current
            .as_ref()
            .is_some_and(|current| Arc::as_ptr(current) == live)
        {
            self.live.compare_and_swap(&*current, None);
        }
    }
}

/// Runs the connection until it ends, letting it go once no request has used it for
/// [`IDLE_CHECKS`] checks in a row (hyper closes it when the last request on it is done).
async fn drive<C>(connection: C, (origin, live): (Arc<Origin>, Weak<Live>), idle_check: Duration)
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut connection = std::pin::pin!(connection);
    let mut checks = tokio::time::interval(idle_check);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_checks = 0;
    loop {
        tokio::select! {
            outcome = connection.as_mut() => {
                if let Err(error) = outcome {
                    tracing::debug!(origin = %origin.authority, "HTTP/2 connection ended: {error}");
                }
                break;
            }
            _ = checks.tick() => {
                if origin.used.swap(false, Ordering::Relaxed) {
                    idle_checks = 0;
                } else {
                    idle_checks += 1;
                    if idle_checks >= IDLE_CHECKS {
                        origin.retire(live.as_ptr());
                    }
                }
            }
        }
    }
    origin.retire(live.as_ptr());
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    /// A TLS origin on loopback for `localhost` that speaks HTTP/2 when `alpn` offers `h2`,
    /// counting the connections it accepted and those that have ended.
    struct TlsOrigin {
        port: u16,
        accepted: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
        trusted: rustls::RootCertStore,
    }

    async fn origin(alpn: &[&[u8]]) -> TlsOrigin {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut trusted = rustls::RootCertStore::empty();
        trusted.add(cert.der().clone()).unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        tls.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, ended): (Arc<AtomicUsize>, Arc<AtomicUsize>) = Default::default();
        let (accepting, ending) = (Arc::clone(&accepted), Arc::clone(&ended));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepting.fetch_add(1, Ordering::SeqCst);
                let (acceptor, ending) = (acceptor.clone(), Arc::clone(&ending));
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let service = hyper::service::service_fn(|_request| async {
                            Ok::<_, std::convert::Infallible>(Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        });
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    }
                    ending.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        TlsOrigin {
            port,
            accepted,
            ended,
            trusted,
        }
    }

    fn connections(origin: &TlsOrigin, idle_timeout: Duration) -> Http2Client {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(origin.trusted.clone())
        .with_no_client_auth();
        let mut http = Connector::new_with_resolver(super::super::Resolve::new(None));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http2()
            .wrap_connector(http);
        let mut connections = Http2Client::new(https, Duration::from_secs(5));
        connections.idle_timeout = idle_timeout;
        connections
    }

    /// The entry `protocols` would hold for the test origin.
    fn entry(origin: &TlsOrigin) -> Arc<Origin> {
        let authority = format!("localhost:{}", origin.port).parse().unwrap();
        Arc::new(Origin::new(authority))
    }

    fn request(origin: &TlsOrigin) -> Request<ProxyBody> {
        let body = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        Request::get(format!("https://localhost:{}/x", origin.port))
            .body(body)
            .unwrap()
    }

    #[tokio::test]
    async fn requests_at_once_share_one_connection_that_closes_when_idle() {
        let origin = origin(&[b"h2"]).await;
        let connections = Arc::new(connections(&origin, Duration::from_millis(300)));
        let entry = entry(&origin);
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (connections, request) = (Arc::clone(&connections), request(&origin));
            let entry = Arc::clone(&entry);
            sends.spawn(async move {
                let answer = connections.send(entry, request).await;
                answer.map(|answer| answer.status())
            });
        }
        while let Some(answer) = sends.join_next().await {
            assert_eq!(answer.unwrap().unwrap(), http::StatusCode::OK);
        }
        assert_eq!(
            origin.accepted.load(Ordering::SeqCst),
            1,
            "one dial for all"
        );
        assert_eq!(origin.ended.load(Ordering::SeqCst), 0);

        // Idle for more than four thirds of the timeout: let go, and the origin sees it close.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            origin.ended.load(Ordering::SeqCst),
            1,
            "idle connection kept"
        );
        let answer = connections.send(entry, request(&origin)).await.unwrap();
        assert_eq!(answer.status(), http::StatusCode::OK);
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_in_use_is_kept() {
        let origin = origin(&[b"h2"]).await;
        let connections = connections(&origin, Duration::from_millis(300));
        let entry = entry(&origin);
        for _ in 0..8 {
            let answer = connections.send(Arc::clone(&entry), request(&origin));
            let answer = answer.await.unwrap();
            assert_eq!(answer.status(), http::StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(75)).await;
        }
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(origin.ended.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_dial_that_hangs_ends_at_the_connect_timeout() {
        // An origin that accepts the TCP connection and never answers the TLS hello.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let origin = TlsOrigin {
            port,
            accepted: Arc::default(),
            ended: Arc::default(),
            trusted: rustls::RootCertStore::empty(),
        };
        let mut connections = connections(&origin, IDLE_TIMEOUT);
        connections.dial_timeout = Duration::from_millis(300);
        let started = tokio::time::Instant::now();
        match connections.send(entry(&origin), request(&origin)).await {
            Err(SendError::Connect(error)) => {
                assert_eq!(error.to_string(), "no HTTP/2 connection within 300ms");
            }
            Err(SendError::Broken(error)) => panic!("broken, not a connect error: {error}"),
            Ok(response) => panic!("answered {}", response.status()),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
        silent.abort();
    }

    #[tokio::test]
    async fn an_origin_that_agrees_to_no_protocol_is_a_connect_error() {
        // TLS without ALPN: the client offered only h2, the server chose nothing.
        let origin = origin(&[]).await;
        let connections = connections(&origin, IDLE_TIMEOUT);
        match connections.send(entry(&origin), request(&origin)).await {
            Err(SendError::Connect(error)) => {
                assert_eq!(error.to_string(), "the origin did not agree to HTTP/2");
            }
            Err(SendError::Broken(error)) => panic!("broken, not a connect error: {error}"),
            Ok(response) => panic!("answered {}", response.status()),
        }
    }
}
