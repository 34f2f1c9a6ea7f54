//! The access log: one line per request, JSON or a combined-style text line, to stderr or
//! a file. Never a token, key or secret: a line holds only what is listed in [`Line`], and
//! the query string only when `query = true`.
//!
//! Off, it costs the request path nothing: no [`AccessLog`] exists and nothing is
//! captured. On, the request path captures a few owned values (shared, not copied) and
//! hands the finished line to a writer thread through a bounded channel. The thread wakes
//! every [`FLUSH_EVERY`], not per line (a wake-up per line cost more than the line), takes
//! what is there, formats it into a buffer and writes it at once. A full channel drops the
//! line (counted, warned) rather than stall a request.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use serde::Serialize;

/// `X-Request-Id`: taken from the client when it is sane, else generated; forwarded to
/// the vendor and returned to the client.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Lines waiting for the writer; beyond this they are dropped.
const CHANNEL_LINES: usize = 16 * 1024;

/// How often the writer takes the lines handed over and writes them.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A client's request id longer than this, or with other than these bytes, is replaced.
const MAX_REQUEST_ID: usize = 128;

/// `[access_log]` as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub to: Destination,
    pub format: Format,
    /// Log the query string too (it may hold secrets: off by default).
    pub query: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    /// Appended to; created with mode 0600.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    /// nginx's `combined` fields first, then `key=value` pairs.
    Text,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "json" => Some(Format::Json),
            "text" => Some(Format::Text),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("access_log.to: cannot open {path}: {source}")]
pub struct OpenError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// A running access log: the sending end of its writer thread's channel.
pub struct AccessLog {
    pub settings: AccessLogSettings,
    lines: SyncSender<Box<Line>>,
    /// Asks the writer to write out what it has now, and to say when it did (shutdown).
    flushes: SyncSender<tokio::sync::oneshot::Sender<()>>,
    /// Lines dropped because the writer fell behind.
    dropped: Arc<AtomicU64>,
    /// Request ids are this process's random prefix and a counter.
    id_prefix: u32,
    next_id: AtomicU64,
}

impl AccessLog {
    /// Opens the destination and starts the writer thread.
    pub fn open(settings: AccessLogSettings) -> Result<AccessLog, OpenError> {
        let out: Box<dyn Write + Send> = match &settings.to {
            Destination::Stderr => Box::new(std::io::stderr()),
            Destination::File(path) => {
                let mut options = std::fs::OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                Box::new(options.open(path).map_err(|source| OpenError {
                    path: path.display().to_string(),
                    source,
                })?)
            }
        };
        let (lines, receiver) = sync_channel(CHANNEL_LINES);
        let (flushes, flush_requests) = sync_channel(4);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            out: std::io::BufWriter::with_capacity(64 * 1024, out),
            format: settings.format,
            dropped: Arc::clone(&dropped),
            reported: 0,
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(receiver, flush_requests))
            .map_err(|source| OpenError {
                path: "the writer thread".into(),
                source,
            })?;
        let mut seed = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        Ok(AccessLog {
            settings,
            lines,
            flushes,
            dropped,
            id_prefix: u32::from_ne_bytes(seed),
            next_id: AtomicU64::new(0),
        })
    }

    /// The start of a request's line: its time, what it asks for, and its request id
    /// (set on the request, so the vendor gets it too).
    pub fn begin<B>(&self, request: &mut Request<B>, addr: Option<IpAddr>, via: Via) -> Pending {
        // Copied, not shared: the parts of a request head share its read buffer, which a
        // line waiting for the writer would otherwise keep alive.
        let request_id = match request.headers().get(REQUEST_ID) {
            Some(id) if sane_request_id(id) => {
                HeaderValue::from_bytes(id.as_bytes()).unwrap_or_else(|_| id.clone())
            }
            _ => {
                let id = self.new_request_id();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        Pending {
            time: SystemTime::now(),
            started: tokio::time::Instant::now(),
            request_id,
            via,
            addr,
            method: request.method().clone(),
            path: request.uri().path().into(),
            query: match self.settings.query {
                true => request.uri().query().map(Into::into),
                false => None,
            },
            version: request.version(),
            lines: self.lines.clone(),
            dropped: Arc::clone(&self.dropped),
        }
    }

    fn new_request_id(&self) -> HeaderValue {
        let count = self.next_id.fetch_add(1, Relaxed);
        let text = format!("{:08x}{:012x}", self.id_prefix, count & 0xffff_ffff_ffff);
        HeaderValue::from_str(&text).expect("hex digits are a valid header value")
    }

    /// Writes out every line handed over so far (at shutdown).
    pub async fn flush(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        // Never blocks: with requests already queued, the writer is about to write anyway.
        if self.flushes.try_send(done).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), flushed).await;
        }
    }
}

/// Printable ASCII without spaces or quotes, so it cannot break a line in either format.
fn sane_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_graphic() && !matches!(byte, b'"' | b'\\'))
}

/// Which listener a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `server.listen`, an upstream's own `listen`, or the Unix socket.
    Listen,
    /// The egress listener (`HTTPS_PROXY`), a CONNECT or a request inside its tunnel.
    Egress,
}

/// What the request path learned about a request on its way; all of it is optional.
#[derive(Debug, Default)]
pub struct Facts {
    /// Capture at all: false when the log is off, so nothing is cloned or formatted.
    pub enabled: bool,
    pub client: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    /// The proxy's own error: its kind and who was at fault.
    pub error: Option<&'static str>,
    pub fault: Option<&'static str>,
    /// Why a refusal refused (guard, client key, policy): the problem's detail.
    pub reason: Option<String>,
    /// From the first send to the vendor's response headers, retries included.
    pub upstream_time: Option<Duration>,
    /// The request waited for a new token: none was valid, or a 401 replaced it.
    pub token_refreshed: bool,
    /// The vendor answered 401; with a replaced token the request was sent again.
    pub retried_401: bool,
    /// The request body's size: known when it was kept, else counted as it streamed.
    pub bytes_in: u64,
    pub bytes_in_streamed: Option<Arc<AtomicU64>>,
    /// A read of a `/-/` endpoint: logged only when it fails (the status page polls).
    pub quiet: bool,
}

impl Facts {
    pub fn off() -> Facts {
        Facts::default()
    }

    pub fn on() -> Facts {
        Facts {
            enabled: true,
            ..Facts::default()
        }
    }
}

/// A request whose line waits for its answer.
pub struct Pending {
    time: SystemTime,
    started: tokio::time::Instant,
    request_id: HeaderValue,
    via: Via,
    addr: Option<IpAddr>,
    method: Method,
    path: Box<str>,
    /// Only with `query = true`.
    query: Option<Box<str>>,
    version: Version,
    lines: SyncSender<Box<Line>>,
    dropped: Arc<AtomicU64>,
}

impl Pending {
    /// The answer goes out with the request id; its line is written once its body has
    /// been sent (or dropped), with the bytes that went.
    pub fn finish<B>(self, mut response: Response<B>, facts: Facts) -> Response<Logged<B>> {
        if !response.headers().contains_key(REQUEST_ID) {
            // The vendor's own request id, when it sends one, passes through untouched.
            response
                .headers_mut()
                .insert(REQUEST_ID, self.request_id.clone());
        }
        let status = response.status().as_u16();
        let skip = facts.quiet && status < 400;
        response.map(|body| Counted {
            body,
            tally: LineAtEnd {
                bytes_out: 0,
                line: (!skip).then(|| Box::new((self, facts, status))),
            },
        })
    }
}

/// A body that tallies the data bytes it carries.
pub struct Counted<B, T> {
    pub body: B,
    pub tally: T,
}

/// Where a [`Counted`] body adds up its bytes.
pub trait Tally {
    fn add(&mut self, bytes: u64);
}

/// A streamed upload's `bytes_in`, read when its line is written.
impl Tally for Arc<AtomicU64> {
    fn add(&mut self, bytes: u64) {
        self.fetch_add(bytes, Relaxed);
    }
}

impl<B, T> Body for Counted<B, T>
where
    B: Body<Data = Bytes> + Unpin,
    T: Tally + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.tally.add(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that writes its request's line when it is done.
pub type Logged<B> = Counted<B, LineAtEnd>;

/// A request's line, written with the bytes its answer carried when the answer is dropped.
pub struct LineAtEnd {
    bytes_out: u64,
    line: Option<Box<(Pending, Facts, u16)>>,
}

impl Tally for LineAtEnd {
    fn add(&mut self, bytes: u64) {
        self.bytes_out += bytes;
    }
}

impl Drop for LineAtEnd {
    // At the end of the body, or when the client went away before it.
    fn drop(&mut self) {
        let Some(line) = self.line.take() else {
            return;
        };
        let (pending, facts, status) = *line;
        let bytes_in = facts
            .bytes_in_streamed
            .as_ref()
            .map_or(facts.bytes_in, |counted| counted.load(Relaxed));
        let line = Line {
            time: pending.time,
            duration: pending.started.elapsed(),
            request_id: pending.request_id,
            via: pending.via,
            addr: pending.addr,
            client: facts.client,
            upstream: facts.upstream,
            method: pending.method,
            path: pending.path,
            query: pending.query,
            version: pending.version,
            status,
            bytes_in,
            bytes_out: self.bytes_out,
            upstream_time: facts.upstream_time,
            token_refreshed: facts.token_refreshed,
            retried_401: facts.retried_401,
            error: facts.error,
            fault: facts.fault,
            reason: facts.reason,
        };
        match pending.lines.try_send(Box::new(line)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                pending.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Everything one line says. No header but the request id, no body, no query unless
/// asked for: nothing here can hold a token or a key.
struct Line {
    time: SystemTime,
    duration: Duration,
    request_id: HeaderValue,
    via: Via,
    addr: Option<IpAddr>,
    client: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    method: Method,
    path: Box<str>,
    query: Option<Box<str>>,
    version: Version,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    upstream_time: Option<Duration>,
    token_refreshed: bool,
    retried_401: bool,
    error: Option<&'static str>,
    fault: Option<&'static str>,
    reason: Option<String>,
}

/// A line in JSON: the field names are the documented contract.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    request_id: &'a str,
    via: Via,
    client: Option<&'a str>,
    addr: Option<IpAddr>,
    upstream: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    token_refreshed: bool,
    retried_401: bool,
    error: Option<&'a str>,
    fault: Option<&'a str>,
    reason: Option<&'a str>,
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

struct Writer {
    out: std::io::BufWriter<Box<dyn Write + Send>>,
    format: Format,
    dropped: Arc<AtomicU64>,
    reported: u64,
}

impl Writer {
    /// Every `FLUSH_EVERY` (or when asked to): write what was handed over, at once. Ends
    /// when the log and every request that may still hand over a line are gone.
    fn run(
        mut self,
        lines: Receiver<Box<Line>>,
        flushes: Receiver<tokio::sync::oneshot::Sender<()>>,
    ) {
        let mut text = String::with_capacity(512);
        loop {
            let open = self.write_waiting(&lines, &mut text);
            self.report_drops();
            if !open {
                return;
            }
            // Asleep between batches, and not on `lines`: a line handed over wakes no one.
            match flushes.recv_timeout(FLUSH_EVERY) {
                Ok(done) => {
                    self.write_waiting(&lines, &mut text);
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // The log was replaced or closed: the requests under way finish it.
                    while let Ok(line) = lines.recv() {
                        self.write(&line, &mut text);
                        self.write_waiting(&lines, &mut text);
                    }
                    return;
                }
            }
        }
    }

    /// Writes every line waiting, then flushes; false once every sender is gone.
    fn write_waiting(&mut self, lines: &Receiver<Box<Line>>, text: &mut String) -> bool {
        let open = loop {
            match lines.try_recv() {
                Ok(line) => self.write(&line, text),
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        let _ = self.out.flush();
        open
    }

    fn write(&mut self, line: &Line, text: &mut String) {
        text.clear();
        self.format_line(line, text);
        let _ = self.out.write_all(text.as_bytes());
    }

    fn report_drops(&mut self) {
        let dropped = self.dropped.load(Relaxed);
        if dropped > self.reported {
            tracing::warn!(
                dropped = dropped - self.reported,
                "access log: the writer fell behind; lines were dropped"
            );
            self.reported = dropped;
        }
    }

    fn format_line(&self, line: &Line, text: &mut String) {
        let query = line.query.as_deref();
        match self.format {
            Format::Json => {
                let json = JsonLine {
                    time: rfc3339(line.time),
                    request_id: line.request_id.to_str().unwrap_or("-"),
                    via: line.via,
                    client: line.client.as_deref(),
                    addr: line.addr,
                    upstream: line.upstream.as_deref(),
                    method: line.method.as_str(),
                    path: &line.path,
                    query,
                    status: line.status,
                    bytes_in: line.bytes_in,
                    bytes_out: line.bytes_out,
                    duration_ms: millis(line.duration),
                    upstream_ms: line.upstream_time.map(millis),
                    token_refreshed: line.token_refreshed,
                    retried_401: line.retried_401,
                    error: line.error,
                    fault: line.fault,
                    reason: line.reason.as_deref(),
                };
                if let Ok(json) = serde_json::to_string(&json) {
                    text.push_str(&json);
                }
            }
            Format::Text => text_line(line, query, text),
        }
        text.push('\n');
    }
}

/// `addr - client [time] "METHOD path HTTP/1.1" status bytes_out "-" "-"` (nginx's
/// `combined`, with no referer or user agent), then `key=value` pairs.
fn text_line(line: &Line, query: Option<&str>, text: &mut String) {
    use std::fmt::Write as _;
    let dash = |value: Option<&str>| value.unwrap_or("-").to_owned();
    let addr = line
        .addr
        .map_or_else(|| "-".to_owned(), |addr| addr.to_string());
    let target = match query {
        Some(query) => format!("{}?{query}", line.path),
        None => line.path.to_string(),
    };
    let _ = write!(
        text,
        "{addr} - {client} [{time}] \"{method} {target} {version:?}\" {status} {bytes_out} \"-\" \"-\" request_id={id} via={via} upstream={upstream} bytes_in={bytes_in} duration_ms={duration} upstream_ms={upstream_ms} token_refreshed={refreshed} retried_401={retried} error={error} fault={fault}",
        client = dash(line.client.as_deref()),
        time = combined_time(line.time),
        method = line.method,
        target = escaped(&target),
        version = line.version,
        status = line.status,
        bytes_out = line.bytes_out,
        id = line.request_id.to_str().unwrap_or("-"),
        via = match line.via {
            Via::Listen => "listen",
            Via::Egress => "egress",
        },
        upstream = dash(line.upstream.as_deref()),
        bytes_in = line.bytes_in,
        duration = millis(line.duration),
        upstream_ms = line
            .upstream_time
            .map_or_else(|| "-".to_owned(), |time| millis(time).to_string()),
        refreshed = line.token_refreshed,
        retried = line.retried_401,
        error = dash(line.error),
        fault = dash(line.fault),
    );
    if let Some(reason) = &line.reason {
        let _ = write!(text, " reason=\"{}\"", escaped(reason));
    }
}

/// Quotes, backslashes and control characters escaped, so a value stays inside its quotes.
fn escaped(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c if c.is_control() => c.escape_default().collect(),
            c => vec![c],
        })
        .collect()
}

fn utc(time: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(time)
}

/// `2026-11-30T23:57:36.123Z`
fn rfc3339(time: SystemTime) -> String {
    let t = utc(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// `30/Nov/2026:23:57:36 +0000`
fn combined_time(time: SystemTime) -> String {
    let t = utc(time);
    let month = t.month().to_string();
    format!(
        "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
        t.day(),
        &month[..3],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(reason: Option<&str>) -> Line {
        Line {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_083_056_123),
            duration: Duration::from_micros(1500),
            request_id: HeaderValue::from_static("abc-1"),
            via: Via::Egress,
            addr: Some("127.0.0.1".parse().unwrap()),
            client: Some(Arc::from("ci")),
            upstream: Some(Arc::from("bigid")),
            method: Method::GET,
            path: "/bigid/items".into(),
            query: None,
            version: Version::HTTP_11,
            status: 403,
            bytes_in: 0,
            bytes_out: 120,
            upstream_time: None,
            token_refreshed: false,
            retried_401: false,
            error: Some("client_policy"),
            fault: Some("client"),
            reason: reason.map(str::to_owned),
        }
    }

    fn writer(format: Format) -> Writer {
        Writer {
            out: std::io::BufWriter::new(Box::new(std::io::sink())),
            format,
            dropped: Arc::default(),
            reported: 0,
        }
    }

    #[test]
    fn a_json_line_has_the_documented_fields_and_the_query_only_when_kept() {
        let mut text = String::new();
        writer(Format::Json).format_line(&line(Some("a \"quoted\" reason")), &mut text);
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["time"], "2026-11-30T23:57:36.123Z");
        assert_eq!(json["via"], "egress");
        assert_eq!(json["path"], "/bigid/items");
        assert_eq!(json["duration_ms"], 1.5);
        assert_eq!(json["reason"], "a \"quoted\" reason");
        assert!(json.get("query").is_none());
        text.clear();
        let with_query = Line {
            query: Some("page=2".into()),
            ..line(None)
        };
        writer(Format::Json).format_line(&with_query, &mut text);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["query"], "page=2");
    }

    #[test]
    fn a_text_line_starts_as_combined_and_keeps_values_in_their_quotes() {
        let mut text = String::new();
        writer(Format::Text).format_line(&line(Some("say \"hi\"\n")), &mut text);
        assert!(
            text.starts_with(
                "127.0.0.1 - ci [30/Nov/2026:23:57:36 +0000] \"GET /bigid/items HTTP/1.1\" 403 120 \"-\" \"-\" request_id=abc-1 via=egress"
            ),
            "{text}"
        );
        assert!(text.ends_with(" reason=\"say \\\"hi\\\"\\n\"\n"), "{text}");
        assert_eq!(text.matches('\n').count(), 1);
    }

    #[test]
    fn only_a_sane_request_id_is_taken_from_the_client() {
        for id in ["abc-123", "f47ac10b-58cc-4372-a567-0e02b2c3d479"] {
            assert!(sane_request_id(&HeaderValue::from_static(id)), "{id}");
        }
        for id in ["", "a b", "a\"b", &"x".repeat(129)] {
            assert!(
                !sane_request_id(&HeaderValue::from_str(id).unwrap()),
                "{id}"
            );
        }
    }
}
