//! HTTP/1.1 or HTTP/2: which one a client connection speaks, and serving it in that one.
//!
//! A connection that begins with the HTTP/2 preface speaks HTTP/2 (prior knowledge, as
//! `curl --http2-prior-knowledge` and gRPC clients do); any other speaks HTTP/1.1.
//! hyper-util's `auto` server decides the same, but reads at most the preface's 24 bytes
//! and hands them to hyper as a first read of their own: hyper, finding 24 bytes in a
//! buffer it wants 8 KiB free in, doubled that buffer to 16 KiB for the connection's life
//! (`bench/connection-memory.sh`). Here the first read is as large as hyper's, so the first
//! request head usually arrives whole and hyper's buffer stays at its 8 KiB.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::drain::Finish;
use crate::transport::BoxError;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first read: hyper's own initial read buffer size.
const FIRST_READ: usize = 8 * 1024;

/// The HTTP/1.1 and HTTP/2 servers a listener's connections are served by.
pub struct Server {
    http1: http1::Builder,
    /// `None`: HTTP/1.1 only, nothing is read to decide.
    http2: Option<http2::Builder<TokioExecutor>>,
}

impl Server {
    /// `max_header_bytes` bounds a request head (431 over it) in both protocols;
    /// `h2_keepalive_interval` is how often an HTTP/2 connection is pinged (`None`: HTTP/1.1
    /// only).
    pub fn new(max_header_bytes: usize, h2_keepalive_interval: Option<Duration>) -> Server {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .keep_alive(true)
            // Slow heads (slowloris) meet `Deadlines`' head clock instead: hyper's own makes
            // and drops a timer for every request.
            .header_read_timeout(None)
            // The head's size itself: the buffer bound alone is crossed whenever one read
            // brings in the rest of a head, as the buffer grows in steps of its own.
            .max_header_size(max_header_bytes)
            .max_buf_size(max_header_bytes);
        let http2 = h2_keepalive_interval.map(|interval| {
            let mut http2 = http2::Builder::new(TokioExecutor::new());
            http2
                .timer(TokioTimer::new())
                // Dead peers are found by pings; idle ones by the idle deadline.
                .keep_alive_interval(interval)
                .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
            http2
        });
        Server { http1, http2 }
    }

    /// Serves `io` with `service` in the protocol the client speaks; HTTP/1.1 connections
    /// may be upgraded (a 101, a CONNECT tunnel).
    pub fn serve<T, S, B>(self: &Arc<Self>, io: T, service: S) -> Served<T, S>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<Incoming, ResBody = B>,
        S::Error: Into<BoxError>,
        B: Body + 'static,
        B::Error: Into<BoxError>,
    {
        if self.http2.is_none() {
            let io = TokioIo::new(Prefixed::new(Bytes::new(), io));
            return Served::Http1 {
                connection: self.http1.serve_connection(io, service).with_upgrades(),
            };
        }
        Served::Detecting {
            detecting: Box::pin(detect(io)),
            service: Some(service),
            server: Arc::clone(self),
            closing: false,
        }
    }
}

/// Reads until the bytes so far either are the preface (`true`: HTTP/2) or are not the
/// start of it (`false`), and returns them with the connection to be read again first.
async fn detect<T: AsyncRead + Unpin>(mut io: T) -> io::Result<(bool, Prefixed<T>)> {
    let mut read = BytesMut::with_capacity(FIRST_READ);
    let http2 = loop {
        // The end of the stream: hyper sees it too, and ends the connection.
        if io.read_buf(&mut read).await? == 0 {
            break false;
        }
        let compared = read.len().min(H2_PREFACE.len());
        if read[..compared] != H2_PREFACE[..compared] {
            break false;
        }
        if compared == H2_PREFACE.len() {
            break true;
        }
    };
    Ok((http2, Prefixed::new(read.freeze(), io)))
}

pin_project_lite::pin_project! {
    /// A client connection being served.
    #[project = ServedProjection]
    pub enum Served<T, S>
    where
        S: HttpService<Incoming>,
    {
        /// Its first bytes are read to tell the protocol; `closing`: the drain began
        /// meanwhile, so it is closed without being served.
        Detecting {
            detecting: Pin<Box<dyn Future<Output = io::Result<(bool, Prefixed<T>)>> + Send>>,
            service: Option<S>,
            server: Arc<Server>,
            closing: bool,
        },
        Http1 {
            #[pin]
            connection: http1::UpgradeableConnection<TokioIo<Prefixed<T>>, S>,
        },
        Http2 {
            #[pin]
            connection: http2::Connection<TokioIo<Prefixed<T>>, S, TokioExecutor>,
        },
    }
}

impl<T, S, B> Future for Served<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                ServedProjection::Detecting {
                    detecting,
                    service,
                    server,
                    closing,
                } => {
                    if *closing {
                        return Poll::Ready(Ok(()));
                    }
                    let (http2, io) = ready!(detecting.as_mut().poll(cx))?;
                    let server = Arc::clone(server);
                    let service = service.take().expect("taken once, as the state changes");
                    let io = TokioIo::new(io);
                    let next = match (http2, &server.http2) {
                        (true, Some(builder)) => Served::Http2 {
                            connection: builder.serve_connection(io, service),
                        },
                        _ => Served::Http1 {
                            connection: server.http1.serve_connection(io, service).with_upgrades(),
                        },
                    };
                    self.set(next);
                }
                ServedProjection::Http1 { connection } => {
                    return connection.poll(cx).map_err(Into::into)
                }
                ServedProjection::Http2 { connection } => {
                    return connection.poll(cx).map_err(Into::into)
                }
            }
        }
    }
}

impl<T, S, B> Finish for Served<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn finish(self: Pin<&mut Self>) {
        match self.project() {
            ServedProjection::Detecting { closing, .. } => *closing = true,
            ServedProjection::Http1 { connection } => connection.graceful_shutdown(),
            ServedProjection::Http2 { connection } => connection.graceful_shutdown(),
        }
    }
}

/// A connection whose first bytes were read already: they are read again first.
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let taken = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..taken]);
        self.prefix.advance(taken);
        if self.prefix.is_empty() {
            // Lets the first read's buffer go.
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// `detect` on bytes written in `pieces`, the writer closed after them.
    async fn detect_pieces(pieces: &[&[u8]]) -> (bool, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|piece| piece.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for piece in pieces {
                client.write_all(&piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let (http2, prefixed) = detect(server).await.unwrap();
        writer.await.unwrap();
        (http2, prefixed.prefix.to_vec())
    }

    #[tokio::test]
    async fn the_preface_is_http2_even_in_pieces_and_anything_else_http1() {
        let (http2, read) = detect_pieces(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n\0\0"]).await;
        assert!(http2);
        assert_eq!(read, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0");

        // `POST` begins like the preface and parts from it at its second byte.
        let (http2, read) = detect_pieces(&[b"P", b"OST / HTTP/1.1\r\n"]).await;
        assert!(!http2);
        assert_eq!(read, b"POST / HTTP/1.1\r\n");

        // A start of the preface and then the end of the stream.
        let (http2, read) = detect_pieces(&[b"PRI * "]).await;
        assert!(!http2);
        assert_eq!(read, b"PRI * ");
    }

    #[tokio::test]
    async fn a_head_that_arrives_whole_is_read_whole_in_one_read() {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n",
            "c".repeat(4000)
        );
        let (http2, read) = detect_pieces(&[head.as_bytes()]).await;
        assert!(!http2);
        assert_eq!(read, head.as_bytes());
    }

    #[tokio::test]
    async fn the_prefix_is_read_first_then_the_connection() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut prefixed = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut read = Vec::new();
        prefixed.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"hello world");
    }
}
