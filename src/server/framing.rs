//! A strict reader in front of hyper's HTTP/1 parser. hyper (through httparse) accepts bare
//! LF line ends, which lets a request be read differently by a lenient and a strict parser
//! along the way: a request-smuggling vector. This guard follows the request framing
//! (head, `Content-Length` body, chunked body) line by line and, at the first bare LF in a
//! head, a chunk-size line or a trailer (or a head with both `Content-Length` and
//! `Transfer-Encoding`, or a chunk size no other parser can hold), cuts the stream there
//! and ends it with [`POISON`]: a NUL and a blank line, so hyper has a complete, invalid
//! head or chunk and refuses it with a 400 at once; nothing after it is read. HTTP/2 (the
//! prior-knowledge preface) passes through untouched, and so does a connection once a 101
//! has switched protocols (`switch_protocols`); an `Upgrade` request alone changes nothing.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Longest header line the guard looks into for `Content-Length` / `Transfer-Encoding`;
/// hyper refuses longer header blocks anyway.
const MAX_LINE: usize = 16 * 1024;

/// Largest chunk size accepted: what a signed 64-bit length (most other parsers) holds.
const MAX_CHUNK_SIZE: u64 = i64::MAX as u64;

/// What hyper reads in place of the offending byte and everything after it: an invalid byte
/// and a blank line, so a partial head becomes a complete (refused) one.
pub const POISON: &[u8] = b"\0\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head (or chunked trailers when `trailers`).
    Head {
        trailers: bool,
    },
    /// `n` more body bytes.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// `n` more chunk bytes, then CRLF.
    ChunkData(u64),
    ChunkDataEnd,
    /// HTTP/2, a connection a 101 switched, or framing the guard gave up on: bytes pass.
    Passthrough,
    /// The stream was cut at a malformed byte; `n` bytes of [`POISON`] are still to be read.
    Poisoned(usize),
}

/// What `inspect` found in a piece of input.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// Malformed at this index: hyper reads the bytes before it, then [`POISON`].
    CutAt(usize),
}

pub struct StrictHttp1<T> {
    inner: T,
    state: State,
    previous: u8,
    line: Vec<u8>,
    content_length: Option<u64>,
    chunked: bool,
    /// Bytes seen at the start of the connection, to recognise the HTTP/2 preface.
    seen: usize,
    /// Part of a request head has arrived, and not yet its blank line.
    in_head: bool,
}

impl<T> StrictHttp1<T> {
    pub fn new(inner: T) -> Self {
        StrictHttp1 {
            inner,
            state: State::Head { trailers: false },
            previous: 0,
            line: Vec::new(),
            content_length: None,
            chunked: false,
            seen: 0,
            in_head: false,
        }
    }

    /// A 101 went out: the connection is no longer HTTP/1, so its bytes pass from now on.
    pub fn switch_protocols(&mut self) {
        if !matches!(self.state, State::Poisoned(_)) {
            self.state = State::Passthrough;
        }
    }

    /// True while a request body (or its trailers) is being read.
    pub fn reading_body(&self) -> bool {
        matches!(
            self.state,
            State::Body(_)
                | State::ChunkSize
                | State::ChunkData(_)
                | State::ChunkDataEnd
                | State::Head { trailers: true }
        )
    }

    /// True while an HTTP/1 request head has begun to arrive and not yet ended: the time
    /// `header_read_timeout` bounds.
    pub fn inside_head(&self) -> bool {
        self.in_head && self.state == (State::Head { trailers: false })
    }

    /// Follows the framing over `data`. Lines are found with a search for LF, not byte by
    /// byte; only header lines are looked into.
    fn inspect(&mut self, data: &[u8]) -> Verdict {
        if self.seen < H2_PREFACE.len() {
            let expected = &H2_PREFACE[self.seen..];
            let overlap = expected.len().min(data.len());
            if data[..overlap] == expected[..overlap] {
                self.seen += overlap;
                if self.seen == H2_PREFACE.len() {
                    self.state = State::Passthrough;
                    return Verdict::Pass;
                }
            } else {
                self.seen = usize::MAX;
            }
        }
        let mut index = 0;
        while index < data.len() {
            match self.state {
                State::Passthrough | State::Poisoned(_) => return Verdict::Pass,
                State::Body(remaining) => {
                    let take = remaining.min((data.len() - index) as u64);
                    index += take as usize;
                    self.state = if remaining == take {
                        self.next_message()
                    } else {
                        State::Body(remaining - take)
                    };
                }
                State::ChunkData(remaining) => {
                    let take = remaining.min((data.len() - index) as u64);
                    index += take as usize;
                    self.state = if remaining == take {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(remaining - take)
                    };
                }
                State::Head { .. } | State::ChunkSize | State::ChunkDataEnd => {
                    self.in_head |= self.state == (State::Head { trailers: false });
                    let rest = &data[index..];
                    let Some(at) = rest.iter().position(|byte| *byte == b'\n') else {
                        self.take_line_bytes(index, data);
                        return Verdict::Pass;
                    };
                    let newline = index + at;
                    let before = if at > 0 {
                        data[newline - 1]
                    } else {
                        self.previous
                    };
                    // A bare LF, or framing two parsers could read differently: hyper
                    // answers 400; nothing after it matters. A line that arrived whole (the
                    // usual case) is looked into where it is, without a copy.
                    let ambiguous = before != b'\r'
                        || if self.line.is_empty() && at > 0 {
                            self.line_ended(&data[index..newline - 1])
                        } else {
                            self.take_line_bytes(index, &data[..newline]);
                            self.end_line()
                        };
                    if ambiguous {
                        self.state = State::Poisoned(POISON.len());
                        return Verdict::CutAt(newline);
                    }
                    self.previous = b'\n';
                    index = newline + 1;
                }
            }
        }
        Verdict::Pass
    }

    /// Appends `data[from..]` to the current line (bounded) and remembers its last byte.
    fn take_line_bytes(&mut self, from: usize, data: &[u8]) {
        let bytes = &data[from..];
        if let Some(last) = bytes.last() {
            self.previous = *last;
        }
        let room = MAX_LINE.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// A whole line arrived (its CRLF seen); true when it ends framing that two parsers could
    /// read differently: a head with `Content-Length` and `Transfer-Encoding`, or a chunk
    /// size over [`MAX_CHUNK_SIZE`].
    fn end_line(&mut self) -> bool {
        // Taken out and put back cleared, so the buffer is reused for every line.
        let mut line = std::mem::take(&mut self.line);
        let ambiguous = self.line_ended(line.strip_suffix(b"\r").unwrap_or(&line));
        line.clear();
        self.line = line;
        ambiguous
    }

    fn line_ended(&mut self, line: &[u8]) -> bool {
        match self.state {
            State::Head { trailers } => {
                if line.is_empty() {
                    if !trailers && self.chunked && self.content_length.is_some() {
                        return true;
                    }
                    self.in_head = false;
                    self.state = if trailers {
                        self.next_message()
                    } else {
                        self.body_state()
                    };
                } else if !trailers {
                    self.header_line(line);
                }
            }
            State::ChunkSize => {
                let digits = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|text| u64::from_str_radix(text.trim(), 16).ok());
                self.state = match size {
                    Some(0) => State::Head { trailers: true },
                    Some(size) if size > MAX_CHUNK_SIZE => return true,
                    Some(size) => State::ChunkData(size),
                    // hyper refuses it; stop following.
                    None => State::Passthrough,
                };
            }
            State::ChunkDataEnd => self.state = State::ChunkSize,
            _ => {}
        }
        false
    }

    fn header_line(&mut self, line: &[u8]) {
        // Only `Content-Length` and `Transfer-Encoding` matter (no space may precede a name).
        if !matches!(line.first(), Some(b'c' | b'C' | b't' | b'T')) {
            return;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse().ok());
            self.content_length = Some(length.unwrap_or(u64::MAX));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.chunked |= value
                .split(|b| *b == b',')
                .any(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }

    fn body_state(&mut self) -> State {
        if self.chunked {
            State::ChunkSize
        } else {
            match self.content_length {
                Some(u64::MAX) => State::Passthrough,
                Some(length) if length > 0 => State::Body(length),
                _ => self.next_message(),
            }
        }
    }

    fn next_message(&mut self) -> State {
        self.content_length = None;
        self.chunked = false;
        State::Head { trailers: false }
    }
}

impl<T> StrictHttp1<T> {
    /// Hands hyper what is left of [`POISON`], as far as `buf` has room.
    fn put_poison(&mut self, buf: &mut ReadBuf<'_>) {
        if let State::Poisoned(left) = self.state {
            let from = POISON.len() - left;
            let count = left.min(buf.remaining());
            buf.put_slice(&POISON[from..from + count]);
            self.state = State::Poisoned(left - count);
        }
    }
}

/// What hyper reads when a client's bytes arrive in `pieces`: all of them, or those before a
/// malformed byte followed by [`POISON`]. For tests and the `framing` fuzz target.
pub fn read_through<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut guard = StrictHttp1::new(());
    let mut output = Vec::new();
    for piece in pieces {
        match guard.inspect(piece) {
            Verdict::Pass => output.extend_from_slice(piece),
            Verdict::CutAt(at) => {
                output.extend_from_slice(&piece[..at]);
                output.extend_from_slice(POISON);
                break;
            }
        }
    }
    output
}

impl<T: AsyncRead + Unpin> AsyncRead for StrictHttp1<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.state {
            // hyper has refused what it read: nothing more comes (the deadlines end it).
            State::Poisoned(0) => return Poll::Pending,
            State::Poisoned(_) => {
                this.put_poison(buf);
                return Poll::Ready(Ok(()));
            }
            _ => {}
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if this.state != State::Passthrough {
            if let Verdict::CutAt(at) = this.inspect(&buf.filled()[before..]) {
                buf.set_filled(before + at);
                this.put_poison(buf);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StrictHttp1<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns what hyper would read.
    fn through(input: &[u8], step: usize) -> Vec<u8> {
        read_through(input.chunks(step))
    }

    #[test]
    fn well_formed_traffic_passes_unchanged_in_any_split() {
        let traffic: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab\ncd\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\na\nb\r\n0\r\nX-T: 1\r\n\r\n\
            GET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        for step in [1, 2, 7, 1000] {
            assert_eq!(through(traffic, step), traffic, "split {step}");
        }
    }

    #[test]
    fn a_bare_lf_in_any_head_is_defused() {
        for traffic in [
            &b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..],
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\nA: b\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nokGET / HTTP/1.1\n\r\n"[..],
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n"[..],
        ] {
            let at = (1..traffic.len())
                .find(|&i| traffic[i] == b'\n' && traffic[i - 1] != b'\r')
                .unwrap();
            for step in [1, 3, 1000] {
                let output = through(traffic, step);
                assert_eq!(
                    output[at],
                    0,
                    "{:?} split {step}",
                    String::from_utf8_lossy(traffic)
                );
                assert_eq!(output.iter().filter(|b| **b == 0).count(), 1);
            }
        }
    }

    #[test]
    fn content_length_with_transfer_encoding_is_defused() {
        let traffic =
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let output = through(traffic, 1);
        assert_eq!(output.iter().position(|b| *b == 0), Some(traffic.len() - 6));
    }

    #[test]
    fn http2_and_switched_connections_pass_through() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\n\x04";
        assert_eq!(through(h2, 5), h2);
        let head = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let mut guard = StrictHttp1::new(());
        assert_eq!(guard.inspect(head), Verdict::Pass);
        guard.switch_protocols();
        assert_eq!(guard.inspect(b"raw\nbytes"), Verdict::Pass);
    }

    #[test]
    fn an_upgrade_request_alone_does_not_stop_the_checks() {
        let traffic =
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET / HTTP/1.1\nHost: x\r\n\r\n";
        let output = through(traffic, 7);
        assert!(
            output.ends_with(POISON),
            "{:?}",
            String::from_utf8_lossy(&output)
        );
    }

    #[test]
    fn a_bare_lf_ending_a_head_or_trailer_leaves_a_complete_refused_head() {
        for (traffic, kept) in [
            (&b"GET / HTTP/1.1\r\nHost: x\n\r\n"[..], 23),
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\n"[..], 25),
            (
                &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX: 1\n\r\n"
                    [..],
                60,
            ),
        ] {
            for step in [1, 4, 1000] {
                let output = through(traffic, step);
                assert_eq!(&output[..kept], &traffic[..kept], "split {step}");
                assert_eq!(&output[kept..], POISON, "split {step}");
            }
        }
    }

    #[test]
    fn chunk_sizes_beyond_a_signed_64_bit_length_are_refused() {
        let chunked = |size: &str| {
            format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nabc")
        };
        assert!(through(chunked("ffffffffffffffff").as_bytes(), 3).ends_with(POISON));
        assert!(through(chunked("8000000000000000").as_bytes(), 3).ends_with(POISON));
        let fits = chunked("7fffffffffffffff");
        assert_eq!(through(fits.as_bytes(), 3), fits.as_bytes());
    }
}
