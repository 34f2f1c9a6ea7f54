//! A strict reader in front of hyper's HTTP/1 parser. hyper (through httparse) accepts bare
//! LF line ends, which lets a request be read differently by a lenient and a strict parser
//! along the way: a request-smuggling vector. This guard follows the request framing
//! (head, `Content-Length` body, chunked body) line by line and, at the first bare LF in a
//! head, a chunk-size line or a trailer, turns that byte into NUL, which hyper refuses with
//! a 400 before anything is forwarded. HTTP/2 (the prior-knowledge preface) and upgraded
//! connections pass through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Longest header line the guard looks into for `Content-Length` / `Transfer-Encoding`;
/// hyper refuses longer header blocks anyway.
const MAX_LINE: usize = 16 * 1024;

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
    /// HTTP/2, an upgraded connection, or framing the guard gave up on: bytes pass.
    Passthrough,
}

pub struct StrictHttp1<T> {
    inner: T,
    state: State,
    previous: u8,
    line: Vec<u8>,
    content_length: Option<u64>,
    chunked: bool,
    upgrade: bool,
    chunk_size: u64,
    /// Bytes seen at the start of the connection, to recognise the HTTP/2 preface.
    seen: usize,
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
            upgrade: false,
            chunk_size: 0,
            seen: 0,
        }
    }

    /// Follows the framing over `data`, defusing bare LFs in place. Lines are found with a
    /// search for LF, not byte by byte; only header lines are looked into.
    fn inspect(&mut self, data: &mut [u8]) {
        if self.seen < H2_PREFACE.len() {
            let expected = &H2_PREFACE[self.seen..];
            let overlap = expected.len().min(data.len());
            if data[..overlap] == expected[..overlap] {
                self.seen += overlap;
                if self.seen == H2_PREFACE.len() {
                    self.state = State::Passthrough;
                    return;
                }
            } else {
                self.seen = usize::MAX;
            }
        }
        let mut index = 0;
        while index < data.len() {
            match self.state {
                State::Passthrough => return,
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
                    let rest = &data[index..];
                    let Some(at) = rest.iter().position(|byte| *byte == b'\n') else {
                        self.take_line_bytes(index, data);
                        return;
                    };
                    let newline = index + at;
                    let before = if at > 0 {
                        data[newline - 1]
                    } else {
                        self.previous
                    };
                    self.take_line_bytes(index, &data[..newline]);
                    // A bare LF, or a head whose framing two parsers could read differently:
                    // the defused byte makes hyper answer 400; nothing after it matters.
                    if before != b'\r' || self.end_line() {
                        data[newline] = 0;
                        self.state = State::Passthrough;
                        return;
                    }
                    self.previous = b'\n';
                    index = newline + 1;
                }
            }
        }
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

    /// A whole line arrived (its CRLF seen); true when the head just ended with framing
    /// that two parsers could read differently (`Content-Length` and `Transfer-Encoding`).
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
                    Some(size) => {
                        self.chunk_size = size;
                        State::ChunkData(size)
                    }
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
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
    }

    fn body_state(&mut self) -> State {
        if self.upgrade {
            // After a 101 the connection is a tunnel.
            State::Passthrough
        } else if self.chunked {
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
        self.upgrade = false;
        State::Head { trailers: false }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StrictHttp1<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let this = &mut *self;
            if this.state != State::Passthrough {
                this.inspect(&mut buf.filled_mut()[before..]);
            }
        }
        result
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
        let mut guard = StrictHttp1::new(());
        let mut output = Vec::new();
        for piece in input.chunks(step) {
            let mut piece = piece.to_vec();
            if guard.state != State::Passthrough {
                guard.inspect(&mut piece);
            }
            output.extend(piece);
        }
        output
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
    fn http2_and_upgrades_pass_through() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\n\x04";
        assert_eq!(through(h2, 5), h2);
        let upgraded =
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nraw\nbytes";
        assert_eq!(through(upgraded, 4), upgraded);
    }
}
