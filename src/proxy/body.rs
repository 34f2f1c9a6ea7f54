//! The client's request body on its way to a vendor: kept in memory when small, so a
//! request can be sent again (a reset, a 401), else streamed with its first frame checked;
//! and a body that breaks on the client's side is told apart from a vendor failure.

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::problem::ProxyError;
use crate::transport::{error_chain, ProxyBody};

pub(super) enum Replay {
    Kept(Bytes),
    Streaming(ProxyBody),
}

/// Reads the body into memory when it is declared no larger than `limit` (or is empty).
pub(super) async fn replayable(body: Incoming, limit: u64) -> Result<Replay, ProxyError> {
    let declared = body.size_hint().exact();
    if body.is_end_stream() {
        return Ok(Replay::Kept(Bytes::new()));
    }
    match declared {
        Some(length) if length <= limit => {
            let bytes = body
                .collect()
                .await
                .map_err(|error| ClientBodyError(error).to_proxy_error())?
                .to_bytes();
            Ok(Replay::Kept(bytes))
        }
        _ => Ok(Replay::Streaming(first_frame_checked(body).await?)),
    }
}

/// Reads a streamed body's first frame before anything is forwarded, so a body that is
/// broken from the start (an invalid chunk size) gets a 400 and never reaches the vendor.
async fn first_frame_checked(mut body: Incoming) -> Result<ProxyBody, ProxyError> {
    let first = match body.frame().await {
        None => None,
        Some(Ok(frame)) => Some(frame),
        Some(Err(error)) => return Err(ClientBodyError(error).to_proxy_error()),
    };
    Ok(Prepended { first, rest: body }.boxed_unsync())
}

/// The client's request body failed (malformed framing, or no progress within
/// `body_timeout`): the client's fault, not the vendor's, when it ends a forward.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct ClientBodyError(hyper::Error);

impl ClientBodyError {
    pub(super) fn to_proxy_error(&self) -> ProxyError {
        let reason = error_chain(&self.0);
        if is_timeout(&self.0) {
            ProxyError::BodyTimeout { reason }
        } else {
            ProxyError::MalformedBody { reason }
        }
    }
}

fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

/// A body whose first frame was already read.
struct Prepended {
    first: Option<http_body::Frame<Bytes>>,
    rest: Incoming,
}

impl http_body::Body for Prepended {
    type Data = Bytes;
    type Error = crate::transport::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(frame)));
        }
        std::pin::Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map_err(|error| ClientBodyError(error).into())
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self.rest.size_hint();
        let extra = self
            .first
            .as_ref()
            .and_then(|frame| frame.data_ref())
            .map_or(0, |data| data.len() as u64);
        let mut hint = http_body::SizeHint::new();
        // Upper before lower: a lower bound above the upper one panics.
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + extra);
        }
        hint.set_lower(rest.lower() + extra);
        hint
    }
}

/// A kept request body, to send (again). An empty one costs no allocation.
pub(super) fn replay_body(bytes: &Bytes) -> ProxyBody {
    if bytes.is_empty() {
        return http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync();
    }
    Full::new(bytes.clone())
        .map_err(|never| match never {})
        .boxed_unsync()
}
