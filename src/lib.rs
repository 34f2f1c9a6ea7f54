//! tokenproxy: a local authenticating reverse proxy. A client sends
//! `http://127.0.0.1:8080/<upstream>/path`; tokenproxy forwards it to the upstream's vendor
//! with the vendor's current token injected, and streams the answer back.
//!
//! # Architecture
//! Data flows one way: config -> routes -> proxy -> transport, with each upstream's token
//! read from its `TokenCell` and written only by token requests.
//!
//! - [`config`]: finding, reading (`${ENV}`, `${file:}`) and validating the TOML config.
//! - [`schema`]: the config file as written (`Raw*`), `FieldError`, `Target`: the words
//!   `config` and `providers` share.
//! - [`providers`]: where tokens come from, one file per kind and per vendor preset.
//! - [`credential`]: a token with its header set and lifetime (`Credential`, `Injection`),
//!   and the `TokenState` every reader reports.
//! - [`tokens`]: the live credential per upstream (`ArcSwap`), its lifecycle as one state
//!   value, single-flight token requests, the background refresher; tokens come from a
//!   `TokenSource` (the providers).
//! - [`login`]: logins that need a user (device code, browser callback).
//! - [`egress`]: egress mode (`HTTPS_PROXY`): which CONNECTs are intercepted, tunnelled
//!   blindly or refused, and the local CA (limited by X.509 name constraints to the
//!   upstreams' hosts) whose leaves answer an intercepted tunnel's TLS. The listener is the
//!   server's; the requests inside a tunnel take `proxy::egress`.
//! - [`store`]: the token file that survives restarts, and its one-owner lock.
//! - [`fleet`]: fleet mode's Redis: sealed token entries written by compare-and-set, the
//!   per-upstream lease that picks the one refresher, and the fleet's events (pub/sub).
//! - [`routes`]: which upstream a request is for (listener, `Host`, normalized path prefix).
//! - [`proxy`]: the request path: admission (no open proxy), the browser guard, route,
//!   credential, header rewrite, forward (401 and reset retries), answer, counted in the
//!   metrics; `/-/` paths go to `admin`.
//! - [`admin`]: the `/-/` endpoints: the status page (askama templates, its script and
//!   stylesheet), status, health, readiness, metrics, the actions and the login callback.
//! - [`status`]: the admin endpoints' JSON as serde types (`/-/status`, the action
//!   answers), built by `admin`, read by the page and the CLI.
//! - [`transport`]: the one pooled HTTP client (rustls), for forwarding and token requests;
//!   cleartext upstream connections that follow the client connection (`affinity`), and
//!   one shared connection to each vendor that speaks HTTP/2 (`http2`).
//! - [`problem`]: the proxy's own errors and their problem+json responses.
//! - [`metrics`]: per-upstream atomics on the request path, encoded for `/-/metrics` from a
//!   snapshot the admin endpoint reads.
//! - [`server`]: listeners (TCP, Unix socket), the strict HTTP/1 framing guard in front of
//!   hyper, connection deadlines (first request, body, idle, write), HTTP/1.1 + h2c, limits,
//!   graceful shutdown, reloads (`ArcSwap<App>`), serving until a signal.
//! - [`app`]: the runtime state built from a config.
//! - [`cli`], `demo`: the command line; one-shot commands talk to a running daemon's
//!   admin endpoints, or to a server started for the command. `demo` (the default-on `demo`
//!   feature) serves the simulated vendors of the `tokenproxy-sim` crate (`crates/sim`),
//!   which the tests use too; a build without the feature has no simulator.
//! - [`clients`]: who may call (`server.client_key`, `[clients.NAME]`, known by their key's
//!   SHA-256) and each one's policy: upstreams, methods, path patterns.
//! - [`access_log`]: one line per request (JSON or combined-style text, stderr or a file),
//!   written by a thread of its own from a buffer; nothing captured while it is off.
//! - [`secret`]: the redacting type every secret and token is held in.
//! - [`scrub`]: takes secrets out of text a vendor wrote (errors that echo the request).
//!
//! # Layers
//! A module imports only modules of a lower layer (`tests/layers.rs` checks it), so no
//! two modules import each other and each layer can be read without those above it.
//!
//! 1. `secret`, `scrub`, `schema`, `transport`, `access_log`
//! 2. `credential`, `fleet`, `clients`
//! 3. `metrics`, `providers`, `store`
//! 4. `problem`, `tokens`, `config`, `status`
//! 5. `login`, `routes`
//! 6. `app`
//! 7. `admin`, `egress`
//! 8. `proxy`
//! 9. `server`
//! 10. `demo`
//! 11. `cli`

pub mod access_log;
pub mod admin;
pub mod app;
pub mod cli;
pub mod clients;
pub mod config;
pub mod credential;
#[cfg(feature = "demo")]
pub mod demo;
pub mod egress;
pub mod fleet;
pub mod login;
pub mod metrics;
pub mod problem;
pub mod providers;
pub mod proxy;
pub mod routes;
pub mod schema;
pub mod scrub;
pub mod secret;
pub mod server;
pub mod status;
pub mod store;
pub mod tokens;
pub mod transport;
