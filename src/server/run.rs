//! Running a server as a process does: started with one log line per upstream, served
//! until SIGTERM or SIGINT, reloaded on SIGHUP or a change to the config file, drained.
//! Shared by `tokenproxy run` and `tokenproxy demo`.

use crate::config::{self, Config};

use super::Server;

/// Starts serving and logs one line per upstream; a failure is reported on stderr.
pub async fn start_logged(config: &Config) -> Option<Server> {
    match Server::start(config).await {
        Ok(server) => {
            log_startup(&server);
            Some(server)
        }
        Err(error) => {
            eprintln!("tokenproxy: {error}");
            None
        }
    }
}

/// Serves until SIGTERM or SIGINT, then drains. SIGHUP, or a change to the config file
/// (checked every 2 s), reloads the config: a bad one is logged and the running one kept.
pub async fn serve_until_signal(mut server: Server) {
    let watched =
        Some(std::path::PathBuf::from(server.config_source())).filter(|path| path.is_file());
    let mut last_seen = watched.as_deref().and_then(modified);
    let mut signals = Signals::new();
    let mut poll = tokio::time::interval(CONFIG_POLL);
    loop {
        let reload = tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break,
                Signal::Reload => true,
            },
            _ = poll.tick() => {
                let now = watched.as_deref().and_then(modified);
                now != last_seen
            }
        };
        if let (true, Some(path)) = (reload, &watched) {
            last_seen = modified(path);
            match config::load_with(path, server.overrides()) {
                Ok(config) => {
                    if let Err(error) = server.reload(&config) {
                        tracing::error!(error = %error, "config reload failed; the running config stays");
                    }
                }
                Err(error) => {
                    tracing::error!(error = %error, "config reload refused; the running config stays")
                }
            }
        }
    }
    tracing::info!(drain = ?server.drain_timeout(), "shutting down");
    server.shutdown().await;
}

/// How often the config file is checked for changes.
const CONFIG_POLL: std::time::Duration = std::time::Duration::from_secs(2);

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

enum Signal {
    Stop,
    Reload,
}

/// SIGTERM and SIGINT stop (what Kubernetes and Ctrl-C send); SIGHUP reloads.
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                terminate: signal(SignalKind::terminate()).ok(),
                hangup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            let terminate = async {
                match &mut self.terminate {
                    Some(terminate) => terminate.recv().await,
                    None => std::future::pending().await,
                }
            };
            let hangup = async {
                match &mut self.hangup {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = terminate => Signal::Stop,
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                _ = hangup => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

fn log_startup(server: &Server) {
    tracing::info!(listen = %server.local_addr(), "tokenproxy {} listening", env!("CARGO_PKG_VERSION"));
    for upstream in &server.app().upstreams {
        let config = &upstream.config;
        let mut route = format!("http://{}{}/", server.local_addr(), config.prefix);
        if let Some(host) = &config.host {
            route.push_str(&format!(" and Host {host}"));
        }
        if let Some(addr) = server.upstream_addr(&config.name) {
            route.push_str(&format!(" and http://{addr}/"));
        }
        tracing::info!(
            upstream = %config.name,
            route = %route,
            target = %config.target.uri,
            kind = %config.auth.kind,
            token = %upstream.tokens.state().label(),
            "upstream"
        );
    }
}
