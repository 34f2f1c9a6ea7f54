//! Deadlines on a client connection, so that doing nothing cannot hold one of the
//! `max_connections` slots. A deadline that passes turns the pending read or write into a
//! `TimedOut` error, and hyper closes the connection:
//! - first request: from accept (the wait for a slot included) until a request reaches the
//!   proxy: silence and partial HTTP/2 prefaces;
//! - head: an HTTP/1 request head that has begun to arrive and not ended within
//!   `header_read_timeout` (slowloris). Kept here rather than by hyper, which makes and
//!   drops a timer for every request;
//! - body: an HTTP/1 request body that has had no new byte for `body_timeout`;
//! - idle: no request in flight for `idle_timeout` (HTTP/2 pings do not count);
//! - write: a write that has made no progress for `write_timeout` (the client stopped reading).
//!
//! Once a 101 has switched protocols the read deadlines end: a tunnel may be quiet.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::framing::StrictHttp1;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub first_request: Duration,
    pub head: Duration,
    pub body: Duration,
    pub idle: Duration,
    pub write: Duration,
}

/// What the service tells a connection's deadlines: requests starting and ending, and a 101.
pub struct Activity {
    accepted: Instant,
    started: AtomicBool,
    in_flight: AtomicUsize,
    /// When the last request in flight ended, in milliseconds since `accepted`.
    idle_since: AtomicU64,
    switched: AtomicBool,
}

impl Activity {
    pub fn new(accepted: Instant) -> Arc<Activity> {
        Arc::new(Activity {
            accepted,
            started: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            switched: AtomicBool::new(false),
        })
    }

    /// A request reached the proxy; it is in flight until the returned value (moved into its
    /// response body) is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// A 101 went out: from now on the connection is a tunnel.
    pub fn switched_protocols(&self) {
        self.switched.store(true, Ordering::Relaxed);
    }

    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::Relaxed));
        Some(self.accepted + since + idle)
    }
}

/// A request in flight; see [`Activity::request`].
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let since = u64::try_from(activity.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since.store(since, Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A request's answer under way. Once it comes, its body keeps the request in flight,
    /// and a switch to a tunnel (a 101, or a 200 to CONNECT) is noted. A plain future, not
    /// an `async` block: hyper places it once, and an `async` block would copy the answer's
    /// future again when it first awaits it.
    pub struct TrackedAnswer<F> {
        #[pin]
        answer: F,
        in_flight: Option<InFlight>,
        connect: bool,
    }
}

impl<F> TrackedAnswer<F> {
    pub fn new(answer: F, in_flight: InFlight, connect: bool) -> Self {
        TrackedAnswer {
            answer,
            in_flight: Some(in_flight),
            connect,
        }
    }
}

impl<F, B> Future for TrackedAnswer<F>
where
    F: Future<Output = http::Response<B>>,
{
    type Output = Result<http::Response<Tracked<B>>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Poll::Ready(response) = this.answer.poll(cx) else {
            return Poll::Pending;
        };
        let in_flight = this.in_flight.take().expect("polled after it was ready");
        let status = response.status();
        if status == http::StatusCode::SWITCHING_PROTOCOLS
            || (*this.connect && status == http::StatusCode::OK)
        {
            in_flight.switched_protocols();
        }
        Poll::Ready(Ok(response.map(|body| in_flight.track(body))))
    }
}

/// A response body that keeps its request in flight until hyper is done with it.
pub struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl InFlight {
    pub fn track<B>(self, body: B) -> Tracked<B> {
        Tracked {
            body,
            _in_flight: self,
        }
    }

    pub fn switched_protocols(&self) {
        self.0.switched_protocols();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One deadline: when the current wait started, and a timer made on first use.
#[derive(Default)]
struct Clock {
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Clock {
    /// Progress: the next wait starts its own clock.
    fn progressed(&mut self) {
        self.waiting_since = None;
    }

    /// When the current wait started.
    fn waiting_since(&mut self) -> Instant {
        *self.waiting_since.get_or_insert_with(Instant::now)
    }

    /// The operation is pending and fails at `deadline`, if it has one.
    fn pending(&mut self, cx: &mut Context<'_>, deadline: Option<Instant>) -> io::Result<()> {
        let Some(deadline) = deadline else {
            return Ok(());
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::from(io::ErrorKind::TimedOut)),
            Poll::Pending => Ok(()),
        }
    }
}

/// The client connection with its deadlines, around the HTTP/1 framing guard.
pub struct Deadlines<S> {
    inner: StrictHttp1<S>,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    switched: bool,
    /// When the head now arriving began to (as first seen by a read).
    head_since: Option<Instant>,
    read: Clock,
    write: Clock,
}

impl<S> Deadlines<S> {
    pub fn new(inner: StrictHttp1<S>, activity: Arc<Activity>, timeouts: Timeouts) -> Self {
        Deadlines {
            inner,
            activity,
            timeouts,
            switched: false,
            head_since: None,
            read: Clock::default(),
            write: Clock::default(),
        }
    }

    /// When a read that started waiting at `since` fails, if it may fail at all.
    fn read_deadline(&self, since: Instant) -> Option<Instant> {
        if self.switched {
            return None;
        }
        let activity = &self.activity;
        let deadline = if !activity.started.load(Ordering::Relaxed) {
            Some(activity.accepted + self.timeouts.first_request)
        } else if self.inner.reading_body() {
            Some(since + self.timeouts.body)
        } else {
            activity.idle_deadline(self.timeouts.idle)
        };
        match self.head_since {
            Some(head_since) => {
                let head = head_since + self.timeouts.head;
                Some(deadline.map_or(head, |deadline| deadline.min(head)))
            }
            None => deadline,
        }
    }

    /// Counts a write's outcome against the write deadline.
    fn written<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_pending() {
            let deadline = self.write.waiting_since() + self.timeouts.write;
            self.write.pending(cx, Some(deadline))?;
        } else {
            self.write.progressed();
        }
        result
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.switched && this.activity.switched.load(Ordering::Relaxed) {
            this.switched = true;
            this.inner.switch_protocols();
        }
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        // A head that arrives whole in one read (the usual case) never starts the clock.
        if result.is_ready() {
            if this.inner.inside_head() {
                this.head_since.get_or_insert_with(Instant::now);
            } else {
                this.head_since = None;
            }
        }
        if result.is_pending() {
            let since = this.read.waiting_since();
            let deadline = this.read_deadline(since);
            this.read.pending(cx, deadline)?;
        } else {
            this.read.progressed();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        self.written(cx, result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.written(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.written(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, buffers);
        self.written(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
