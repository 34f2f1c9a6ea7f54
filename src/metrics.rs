//! Prometheus metrics for `/-/metrics`.
//!
//! The request path only touches plain atomics in [`RequestMetrics`] (one per upstream,
//! kept across reloads): no lock, no label lookup, no allocation. A scrape reads them, and
//! each token cell's figures, into a snapshot that `prometheus-client`'s encoder writes as
//! OpenMetrics 1.0 text, as is. Prometheus (since 2.5), the OpenTelemetry collector,
//! VictoriaMetrics and Grafana Alloy choose their parser by the answer's content type; the
//! library has no classic-text encoder, and rewriting its output by hand is what we avoid.
//!
//! Label values are bounded: the upstream's configured name, a status code, and small
//! fixed sets (error kind, refresh outcome, token state). Never a path, a client address,
//! a token or a secret.

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::clients::RuleKind;
use crate::credential::TokenState;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status codes 100..=999, as `http::StatusCode` allows.
const FIRST_CODE: usize = 100;
const CODES: usize = 900;

/// A latency histogram on atomics: one counter per bucket (not cumulative; summed at
/// scrape) and the sum in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// `(sum in seconds, count, per-bucket counts)` as the encoder wants them (it makes
    /// them cumulative itself).
    fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(index, counter)| {
                let bound = LATENCY_BUCKETS.get(index).copied().unwrap_or(f64::INFINITY);
                (bound, counter.load(Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        let sum = Duration::from_nanos(self.sum_nanos.load(Relaxed)).as_secs_f64();
        (sum, count, buckets)
    }
}

/// Why tokenproxy could not get a vendor's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The vendor could not be reached, or the connection failed before an answer.
    Connect,
    /// Connecting or the response headers took longer than allowed.
    Timeout,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// No valid token could be had.
    NoToken,
}

/// Why a request counts as more than its status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The vendor or its token endpoint failed it: an upstream error.
    Upstream(UpstreamErrorKind),
    /// The browser guard refused it: never forwarded, and no fault of the vendor's.
    RefusedByGuard,
    /// Its client's policy refused it: never forwarded.
    RefusedByPolicy,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::NoToken,
    ];

    fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::NoToken => "no_token",
        }
    }
}

/// One upstream's request figures, updated on the request path.
#[derive(Debug)]
pub struct RequestMetrics {
    by_code: Box<[AtomicU64; CODES]>,
    duration: Histogram,
    errors: [AtomicU64; UpstreamErrorKind::ALL.len()],
    refused_by_guard: AtomicU64,
    refused_by_policy: AtomicU64,
    inflight: AtomicI64,
    /// Requests that came through the egress listener (`HTTPS_PROXY`).
    egress: AtomicU64,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            by_code: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            duration: Histogram::default(),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            refused_by_guard: AtomicU64::new(0),
            refused_by_policy: AtomicU64::new(0),
            inflight: AtomicI64::new(0),
            egress: AtomicU64::new(0),
        }
    }
}

impl RequestMetrics {
    /// Counts a request in flight until the returned guard records its answer.
    pub fn start(&self) -> InFlight<'_> {
        self.inflight.fetch_add(1, Relaxed);
        InFlight {
            metrics: self,
            started: Instant::now(),
        }
    }

    pub fn total(&self) -> u64 {
        self.by_code.iter().map(|count| count.load(Relaxed)).sum()
    }

    /// Counts a request that came through the egress listener.
    pub fn count_egress(&self) {
        self.egress.fetch_add(1, Relaxed);
    }

    pub fn egress_requests(&self) -> u64 {
        self.egress.load(Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.iter().map(|count| count.load(Relaxed)).sum()
    }

    fn count_error(&self, kind: UpstreamErrorKind) {
        // `ALL` lists the kinds in declaration order, so a kind's discriminant is its slot.
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }
}

/// A request between its routing and its response headers.
pub struct InFlight<'a> {
    metrics: &'a RequestMetrics,
    started: Instant,
}

impl InFlight<'_> {
    /// Records the answer's status, and what else it counts as.
    pub fn finish(self, status: StatusCode, counted: Option<Counted>) {
        let metrics = self.metrics;
        metrics.duration.observe(self.started.elapsed());
        let index = usize::from(status.as_u16()).saturating_sub(FIRST_CODE);
        if let Some(count) = metrics.by_code.get(index) {
            count.fetch_add(1, Relaxed);
        }
        match counted {
            Some(Counted::Upstream(kind)) => metrics.count_error(kind),
            Some(Counted::RefusedByGuard) => {
                metrics.refused_by_guard.fetch_add(1, Relaxed);
            }
            Some(Counted::RefusedByPolicy) => {
                metrics.refused_by_policy.fetch_add(1, Relaxed);
            }
            None => {}
        }
    }
}

impl Drop for InFlight<'_> {
    // Also runs when the client went away before an answer: the gauge never leaks.
    fn drop(&mut self) {
        self.metrics.inflight.fetch_sub(1, Relaxed);
    }
}

/// One client's figures (kept across reloads, by name): its requests, and its refusals
/// by the rule that refused them.
#[derive(Debug, Default)]
pub struct ClientMetrics {
    requests: AtomicU64,
    refused: [AtomicU64; RuleKind::ALL.len()],
}

impl ClientMetrics {
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn count_refusal(&self, kind: RuleKind) {
        // `ALL` lists the kinds in declaration order, so a kind's discriminant is its slot.
        self.refused[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// `(rule, count)` for every rule.
    pub fn refusals(&self) -> impl Iterator<Item = (RuleKind, u64)> + '_ {
        RuleKind::ALL
            .into_iter()
            .zip(&self.refused)
            .map(|(kind, count)| (kind, count.load(Relaxed)))
    }
}

/// The egress listener's own figures: what was asked of it, before any upstream (kept
/// across reloads).
#[derive(Debug, Default)]
pub struct EgressMetrics {
    /// CONNECT tunnels to a vendor, TLS terminated here.
    pub intercepted: AtomicU64,
    /// CONNECT tunnels opened blindly under `egress.passthrough`.
    pub passthrough: AtomicU64,
    /// 403: neither a vendor nor a passthrough host; nothing was dialed.
    pub refused_not_allowed: AtomicU64,
    /// 407: no or a wrong client key.
    pub refused_proxy_auth: AtomicU64,
}

impl EgressMetrics {
    fn tunnels(&self) -> [(&'static str, u64); 2] {
        [
            ("intercepted", self.intercepted.load(Relaxed)),
            ("passthrough", self.passthrough.load(Relaxed)),
        ]
    }

    fn refusals(&self) -> [(&'static str, u64); 2] {
        [
            ("not_allowed", self.refused_not_allowed.load(Relaxed)),
            ("proxy_auth", self.refused_proxy_auth.load(Relaxed)),
        ]
    }
}

/// One upstream's token-request figures (rare: kept with its token cell).
#[derive(Debug, Default)]
pub struct TokenMetrics {
    pub duration: Histogram,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Credentials installed by a completed user login.
    pub logins: AtomicU64,
}

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The whole exposition in OpenMetrics text (counters named `x` in `# TYPE`, sampled as
/// `x_total`; ends with `# EOF`).
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// Everything a scrape reports, read once by the admin endpoint.
#[derive(Debug)]
pub struct Snapshot {
    pub upstreams: Vec<UpstreamSnapshot>,
    /// Fleet mode: commands Redis did not answer.
    pub redis_errors: Option<u64>,
    /// Egress mode's listener figures.
    pub egress: Option<Arc<EgressMetrics>>,
    /// Every client with a key, by name.
    pub clients: Vec<(String, Arc<ClientMetrics>)>,
}

/// One upstream's part in the fleet, for this replica.
#[derive(Debug, Clone, Copy)]
pub struct FleetFigures {
    /// Times this replica became the lease holder.
    pub lease_acquisitions: u64,
    /// Token requests this replica made as the holder.
    pub refreshes: u64,
    pub holds_lease: bool,
}

#[derive(Debug)]
pub struct UpstreamSnapshot {
    pub name: String,
    pub requests: Arc<RequestMetrics>,
    pub tokens: Arc<TokenMetrics>,
    pub state: TokenState,
    pub expires_at_unix: Option<f64>,
    pub fleet: Option<FleetFigures>,
}

/// The wall-clock time of a monotonic instant.
pub fn unix_seconds(wall_now: SystemTime, now: Instant, at: Instant) -> f64 {
    let wall_at = if at >= now {
        wall_now + (at - now)
    } else {
        wall_now - (now - at)
    };
    wall_at
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

fn upstream_label(name: &str) -> Labels<'_> {
    vec![("upstream", Cow::Borrowed(name))]
}

impl Snapshot {
    /// One histogram per upstream.
    fn encode_histograms(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        histogram: impl Fn(&UpstreamSnapshot) -> &Histogram,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for upstream in &self.upstreams {
            let (sum, count, buckets) = histogram(upstream).read();
            family
                .encode_family(&upstream_label(&upstream.name))?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }

    /// Counters per upstream and one more label, whose values and counts `counts` lists.
    fn encode_counters<'s, I>(
        &'s self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        label: &'static str,
        counts: impl Fn(&'s UpstreamSnapshot) -> I,
    ) -> Result<(), std::fmt::Error>
    where
        I: Iterator<Item = (Cow<'s, str>, u64)>,
    {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for upstream in &self.upstreams {
            for (value, count) in counts(upstream) {
                let mut labels = upstream_label(&upstream.name);
                labels.push((label, value));
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
        Ok(())
    }
}

impl Snapshot {
    /// Egress mode only: requests per upstream, tunnels by kind, refusals by reason.
    fn encode_egress(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(egress) = &self.egress else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "tokenproxy_egress_requests",
            "Requests that reached an upstream through the egress listener (HTTPS_PROXY).",
            None,
            MetricType::Counter,
        )?;
        for upstream in &self.upstreams {
            family
                .encode_family(&upstream_label(&upstream.name))?
                .encode_counter::<NoLabelSet, _, u64>(&upstream.requests.egress_requests(), None)?;
        }
        let families: [CounterFamily; 2] = [
            (
                "tokenproxy_egress_tunnels",
                "CONNECT tunnels the egress listener opened: to a vendor with TLS terminated here, or blindly under egress.passthrough.",
                "kind",
                egress.tunnels(),
            ),
            (
                "tokenproxy_egress_refused",
                "Egress requests refused before anything was dialed, by reason.",
                "reason",
                egress.refusals(),
            ),
        ];
        for (name, help, label, counts) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (value, count) in counts {
                family
                    .encode_family(&vec![(label, value)])?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
        Ok(())
    }
}

impl Snapshot {
    /// Per client: requests, and refusals by the rule that refused them.
    fn encode_clients(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.clients.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "tokenproxy_client_requests",
            "Requests that presented this client's key.",
            None,
            MetricType::Counter,
        )?;
        for (name, metrics) in &self.clients {
            family
                .encode_family(&vec![("client", name.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&metrics.requests(), None)?;
        }
        let mut family = encoder.encode_descriptor(
            "tokenproxy_client_refused",
            "Requests of this client its policy refused (never forwarded), by rule.",
            None,
            MetricType::Counter,
        )?;
        for (name, metrics) in &self.clients {
            for (rule, count) in metrics.refusals() {
                family
                    .encode_family(&vec![("client", name.as_str()), ("rule", rule.label())])?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
        Ok(())
    }
}

/// A counter family with one label: name, help, the label's name, `(value, count)` pairs.
type CounterFamily = (
    &'static str,
    &'static str,
    &'static str,
    [(&'static str, u64); 2],
);

/// Reads one figure of an upstream's fleet part.
type FleetFigure = fn(&FleetFigures) -> u64;

impl Snapshot {
    /// Fleet mode only: lease changes, the holder's token requests, Redis errors.
    fn encode_fleet(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(redis_errors) = self.redis_errors else {
            return Ok(());
        };
        let in_fleet = || {
            self.upstreams
                .iter()
                .filter_map(|upstream| upstream.fleet.map(|fleet| (upstream, fleet)))
        };
        let counters: [(&str, &str, FleetFigure); 2] = [
            (
                "tokenproxy_fleet_lease_acquisitions",
                "Times this replica became the upstream's lease holder (its one refresher).",
                |fleet| fleet.lease_acquisitions,
            ),
            (
                "tokenproxy_fleet_refreshes",
                "Token requests this replica made for the fleet as the lease holder.",
                |fleet| fleet.refreshes,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (upstream, fleet) in in_fleet() {
                family
                    .encode_family(&upstream_label(&upstream.name))?
                    .encode_counter::<NoLabelSet, _, u64>(&value(&fleet), None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "tokenproxy_fleet_lease_held",
            "1 while this replica holds the upstream's lease.",
            None,
            MetricType::Gauge,
        )?;
        for (upstream, fleet) in in_fleet() {
            family
                .encode_family(&upstream_label(&upstream.name))?
                .encode_gauge(&i64::from(fleet.holds_lease))?;
        }
        let mut family = encoder.encode_descriptor(
            "tokenproxy_fleet_redis_errors",
            "Commands to the fleet's Redis that failed (unreachable, timed out, refused).",
            None,
            MetricType::Counter,
        )?;
        family.encode_counter::<NoLabelSet, _, u64>(&redis_errors, None)?;
        Ok(())
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_counters(
            &mut encoder,
            "tokenproxy_requests",
            "Requests routed to an upstream, by the status code answered.",
            "code",
            |upstream| {
                let by_code = upstream.requests.by_code.iter().enumerate();
                by_code.filter_map(|(index, count)| {
                    let count = count.load(Relaxed);
                    (count > 0).then(|| (Cow::Owned((index + FIRST_CODE).to_string()), count))
                })
            },
        )?;
        self.encode_histograms(
            &mut encoder,
            "tokenproxy_request_duration_seconds",
            "Time from routing a request to its response headers.",
            |upstream| &upstream.requests.duration,
        )?;
        self.encode_counters(
            &mut encoder,
            "tokenproxy_upstream_errors",
            "Requests that got no answer from the vendor, by reason.",
            "kind",
            |upstream| {
                let errors = UpstreamErrorKind::ALL.iter().zip(&upstream.requests.errors);
                errors.map(|(kind, count)| (Cow::Borrowed(kind.label()), count.load(Relaxed)))
            },
        )?;
        self.encode_counters(
            &mut encoder,
            "tokenproxy_refused_requests",
            "Requests refused before forwarding, by reason; not upstream errors.",
            "reason",
            |upstream| {
                let requests = &upstream.requests;
                [
                    ("browser_guard", &requests.refused_by_guard),
                    ("client_policy", &requests.refused_by_policy),
                ]
                .into_iter()
                .map(|(reason, count)| (Cow::Borrowed(reason), count.load(Relaxed)))
            },
        )?;
        self.encode_counters(
            &mut encoder,
            "tokenproxy_token_refreshes",
            "Token requests by outcome; `login` counts tokens installed by a user login.",
            "outcome",
            |upstream| {
                let tokens = &upstream.tokens;
                [
                    ("success", &tokens.succeeded),
                    ("failure", &tokens.failed),
                    ("login", &tokens.logins),
                ]
                .into_iter()
                .map(|(outcome, count)| (Cow::Borrowed(outcome), count.load(Relaxed)))
            },
        )?;
        self.encode_histograms(
            &mut encoder,
            "tokenproxy_token_request_duration_seconds",
            "Time a token request to the vendor took.",
            |upstream| &upstream.tokens.duration,
        )?;

        let mut family = encoder.encode_descriptor(
            "tokenproxy_token_expiry_timestamp_seconds",
            "When the current token expires (Unix time); absent for tokens without an expiry.",
            None,
            MetricType::Gauge,
        )?;
        for upstream in &self.upstreams {
            if let Some(expires_at) = upstream.expires_at_unix {
                family
                    .encode_family(&upstream_label(&upstream.name))?
                    .encode_gauge(&expires_at.floor())?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "tokenproxy_token_state",
            "1 for the token's current state, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for upstream in &self.upstreams {
            for state in TokenState::ALL {
                let mut labels = upstream_label(&upstream.name);
                labels.push(("state", Cow::Borrowed(state.label())));
                family
                    .encode_family(&labels)?
                    .encode_gauge(&i64::from(state == upstream.state))?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "tokenproxy_inflight_requests",
            "Requests waiting for the vendor's response headers.",
            None,
            MetricType::Gauge,
        )?;
        for upstream in &self.upstreams {
            family
                .encode_family(&upstream_label(&upstream.name))?
                .encode_gauge(&upstream.requests.inflight.load(Relaxed))?;
        }

        self.encode_fleet(&mut encoder)?;
        self.encode_egress(&mut encoder)?;
        self.encode_clients(&mut encoder)?;

        let mut family = encoder.encode_descriptor(
            "tokenproxy_build_info",
            "Always 1; the version is in the label.",
            None,
            MetricType::Gauge,
        )?;
        family
            .encode_family(&vec![("version", env!("CARGO_PKG_VERSION"))])?
            .encode_gauge(&1i64)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_each_observation_in_one_bucket() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(300));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        let (sum, count, buckets) = histogram.read();
        assert_eq!(count, 3);
        assert!((sum - 60.0033).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 1));
        assert_eq!(buckets[LATENCY_BUCKETS.len() - 1], (30.0, 0));
        assert_eq!(buckets.last().unwrap().1, 1);
        assert!(buckets.last().unwrap().0.is_infinite());
    }

    #[test]
    fn inflight_guard_counts_and_always_decrements() {
        let metrics = RequestMetrics::default();
        let first = metrics.start();
        let second = metrics.start();
        assert_eq!(metrics.inflight.load(Relaxed), 2);
        first.finish(StatusCode::OK, None);
        drop(second);
        assert_eq!(metrics.inflight.load(Relaxed), 0);
        assert_eq!(metrics.total(), 1);
        metrics.start().finish(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Counted::Upstream(UpstreamErrorKind::NoToken)),
        );
        assert_eq!(metrics.by_code[503 - FIRST_CODE].load(Relaxed), 1);
        assert_eq!(metrics.errors(), 1);
    }

    #[test]
    fn every_error_kind_has_its_own_slot() {
        for (slot, kind) in UpstreamErrorKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, slot, "{kind:?}");
        }
    }
}
