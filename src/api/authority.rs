//! Go's gRPC clients of etcd 3.4 (Debian 12's `etcdctl`, for one) send the whole endpoint as the
//! HTTP/2 `:authority` of their requests: `http://127.0.0.1:2379`, or a socket's path. etcd's Go
//! server takes any authority; the HTTP/2 layer under tonic resets a stream whose authority is not
//! `host[:port]`, so `etcdctl --endpoints http://... endpoint status` failed against Strata.
//!
//! [`Lenient`] sits between a client connection and the HTTP/2 server and looks at the first
//! request's header block. If its authority is one the server would refuse, every header block of
//! the connection is decoded and written again, with the authority made `host[:port]` (its URL's,
//! or `localhost`), as literals that leave the server's header table empty; otherwise, as for every
//! HTTP/1.1 connection, the bytes pass through untouched from then on.

use axum::http::uri::Authority;
use loona_hpack::Decoder;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface of HTTP/2.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame the server takes unless it says otherwise (HTTP/2's initial
/// SETTINGS_MAX_FRAME_SIZE, which tonic keeps).
const MAX_FRAME: usize = 16_384;
/// The most of one header block held back here: past it the bytes go on as they came, for the
/// server to refuse by its own limits (nothing a client sends makes this hold more).
const MAX_BLOCK: usize = 1 << 20;

enum Mode {
    /// Reading the connection's first bytes: HTTP/2's preface, or anything else.
    Preface,
    /// Until the first header block: frames pass through.
    Frames,
    /// Every header block is written again.
    Rewriting,
    /// Bytes pass through.
    Passthrough,
}

/// A header block being gathered from a HEADERS frame and its CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    /// The HEADERS frame's priority fields, if it had them.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as they came, to pass on unchanged if the block needs no rewriting.
    original: Vec<u8>,
}

/// A client connection whose header blocks are made acceptable to the HTTP/2 server (see the
/// module's doc).
pub struct Lenient<T> {
    inner: T,
    mode: Mode,
    /// Bytes read from the client and not yet looked at.
    read: Vec<u8>,
    /// Bytes ready for the server.
    ready: Vec<u8>,
    block: Option<Block>,
    decoder: Decoder<'static>,
}

impl<T> Lenient<T> {
    pub fn new(inner: T) -> Lenient<T> {
        Lenient {
            inner,
            mode: Mode::Preface,
            read: Vec::new(),
            ready: Vec::new(),
            block: None,
            decoder: Decoder::new(),
        }
    }

    /// Moves what can be decided of `read` into `ready`.
    fn process(&mut self) {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    self.ready.append(&mut self.read);
                    return;
                }
                Mode::Preface => {
                    let seen = self.read.len().min(PREFACE.len());
                    if self.read[..seen] != PREFACE[..seen] {
                        self.mode = Mode::Passthrough;
                        continue;
                    }
                    if seen < PREFACE.len() {
                        return;
                    }
                    self.ready.extend(self.read.drain(..PREFACE.len()));
                    self.mode = Mode::Frames;
                }
                Mode::Frames | Mode::Rewriting => {
                    if self.read.len() < FRAME_HEADER {
                        return;
                    }
                    let length =
                        u32::from_be_bytes([0, self.read[0], self.read[1], self.read[2]]) as usize;
                    // A frame larger than the server takes is its to refuse, unread here.
                    if length > MAX_FRAME {
                        let read = std::mem::take(&mut self.read);
                        self.give_up(read);
                        continue;
                    }
                    if self.read.len() < FRAME_HEADER + length {
                        return;
                    }
                    let frame: Vec<u8> = self.read.drain(..FRAME_HEADER + length).collect();
                    self.frame(frame);
                }
            }
        }
    }

    /// Takes one whole frame.
    fn frame(&mut self, frame: Vec<u8>) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match kind {
            HEADERS if self.block.is_none() => {
                let Some((priority, fragment)) = headers_fields(flags, payload) else {
                    return self.give_up(frame);
                };
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                    original: Vec::new(),
                });
            }
            CONTINUATION if self.block.as_ref().is_some_and(|b| b.stream == stream) => {
                let block = self.block.as_mut().expect("a block");
                block.fragment.extend_from_slice(payload);
            }
            _ if self.block.is_some() => return self.give_up(frame),
            _ => {
                self.ready.extend_from_slice(&frame);
                return;
            }
        }
        let block = self.block.as_mut().expect("a block");
        block.original.extend_from_slice(&frame);
        if block.original.len() > MAX_BLOCK {
            return self.give_up(Vec::new());
        }
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("a block");
            self.header_block(block);
        }
    }

    /// Takes a whole header block: the first decides whether the connection is rewritten.
    fn header_block(&mut self, block: Block) {
        let Ok(headers) = self.decoder.decode(&block.fragment) else {
            return self.give_up(block.original);
        };
        let first = matches!(self.mode, Mode::Frames);
        let fixed = headers
            .iter()
            .find(|(name, _)| name == b":authority")
            .and_then(|(_, value)| acceptable(value));
        if first && fixed.is_none() {
            self.mode = Mode::Passthrough;
            self.ready.extend_from_slice(&block.original);
            return;
        }
        if first {
            tracing::debug!(
                "a client sends authorities the server refuses: rewriting its requests"
            );
        }
        self.mode = Mode::Rewriting;
        let mut encoded = Vec::new();
        for (name, value) in &headers {
            let value = match (&fixed, name.as_slice()) {
                (Some(fixed), b":authority") => fixed.as_slice(),
                _ => value.as_slice(),
            };
            literal(&mut encoded, name, value);
        }
        self.emit(&block, &encoded);
    }

    /// Writes a header block as a HEADERS frame and as many CONTINUATION frames as it needs.
    fn emit(&mut self, block: &Block, encoded: &[u8]) {
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let first = (MAX_FRAME - priority.len()).min(encoded.len());
        let (head, mut rest) = encoded.split_at(first);
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame_header(priority.len() + head.len(), HEADERS, flags, block.stream);
        self.ready.extend_from_slice(priority);
        self.ready.extend_from_slice(head);
        while !rest.is_empty() {
            let (part, after) = rest.split_at(MAX_FRAME.min(rest.len()));
            let flags = if after.is_empty() { END_HEADERS } else { 0 };
            self.frame_header(part.len(), CONTINUATION, flags, block.stream);
            self.ready.extend_from_slice(part);
            rest = after;
        }
    }

    fn frame_header(&mut self, length: usize, kind: u8, flags: u8, stream: u32) {
        self.ready
            .extend_from_slice(&(length as u32).to_be_bytes()[1..]);
        self.ready.push(kind);
        self.ready.push(flags);
        self.ready.extend_from_slice(&stream.to_be_bytes());
    }

    /// Hands the server what came as it came, and everything after it: what the server makes of it
    /// is its own answer to a client that breaks HTTP/2's rules.
    fn give_up(&mut self, bytes: Vec<u8>) {
        if let Some(block) = self.block.take() {
            self.ready.extend_from_slice(&block.original);
        }
        self.ready.extend_from_slice(&bytes);
        self.mode = Mode::Passthrough;
    }
}

/// A HEADERS frame's priority fields and header block fragment, without its padding.
fn headers_fields(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let (padding, mut rest) = if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first()?;
        (pad as usize, rest)
    } else {
        (0, payload)
    };
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields: [u8; 5] = rest.get(..5)?.try_into().ok()?;
        priority = Some(fields);
        rest = &rest[5..];
    }
    let end = rest.len().checked_sub(padding)?;
    Some((priority, &rest[..end]))
}

/// None if the server takes `authority` as it is; otherwise the `host[:port]` to send instead:
/// the URL's own (`http://host:port`), or `localhost` for a path.
fn acceptable(authority: &[u8]) -> Option<Vec<u8>> {
    if Authority::try_from(authority).is_ok() {
        return None;
    }
    let text = String::from_utf8_lossy(authority);
    let rest = text.split_once("://").map_or(&*text, |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or("");
    if !host.is_empty() && Authority::try_from(host).is_ok() {
        return Some(host.as_bytes().to_vec());
    }
    Some(b"localhost".to_vec())
}

/// A header as HPACK's literal without indexing, new name, no Huffman coding: it leaves the
/// server's header table as it is.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    for text in [name, value] {
        out.extend(loona_hpack::encoder::encode_integer(text.len(), 7));
        out.extend_from_slice(text);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lenient<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::Passthrough) && this.read.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 8192];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Ready(Ok(())) if chunk_buf.filled().is_empty() => {
                    // The end of the connection: whatever was held back goes on as it came.
                    this.ready.append(&mut this.read);
                    if let Some(block) = this.block.take() {
                        this.ready.extend_from_slice(&block.original);
                    }
                    this.mode = Mode::Passthrough;
                    if this.ready.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.read.extend_from_slice(chunk_buf.filled());
                    this.process();
                }
                other => return other,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Lenient<T> {
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

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Lenient<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A HEADERS frame of `block` on `stream`.
    fn headers_frame(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        let mut frame = (block.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([HEADERS, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend_from_slice(block);
        frame
    }

    fn block(authority: &str) -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", authority.as_bytes()),
            (b":path", b"/etcdserverpb.KV/Range"),
        ])
    }

    async fn through(bytes: Vec<u8>) -> Vec<u8> {
        let mut lenient = Lenient::new(&bytes[..]);
        let mut out = Vec::new();
        lenient.read_to_end(&mut out).await.unwrap();
        out
    }

    fn authorities(mut bytes: &[u8]) -> Vec<String> {
        bytes = &bytes[PREFACE.len()..];
        let mut decoder = Decoder::new();
        let mut found = Vec::new();
        while bytes.len() >= FRAME_HEADER {
            let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let (frame, rest) = bytes.split_at(FRAME_HEADER + length);
            if frame[3] == HEADERS {
                for (name, value) in decoder.decode(&frame[FRAME_HEADER..]).unwrap() {
                    if name == b":authority" {
                        found.push(String::from_utf8(value).unwrap());
                    }
                }
            }
            bytes = rest;
        }
        found
    }

    #[tokio::test]
    async fn authorities_the_server_refuses_are_made_host_and_port() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut bytes = PREFACE.to_vec();
        for stream in [1, 3] {
            let block = encoder.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":authority", b"http://127.0.0.1:2379"),
                (b":path", b"/etcdserverpb.KV/Range"),
            ]);
            bytes.extend(headers_frame(stream, END_HEADERS, &block));
        }
        let out = through(bytes).await;
        assert_eq!(authorities(&out), ["127.0.0.1:2379", "127.0.0.1:2379"]);
        assert_eq!(
            acceptable(b"/run/etcd.sock").as_deref(),
            Some(&b"localhost"[..])
        );
        assert_eq!(acceptable(b"localhost:2379"), None);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_passed_on_unread() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend((MAX_FRAME as u32 + 1).to_be_bytes()[1..].to_vec());
        bytes.extend([HEADERS, END_HEADERS, 0, 0, 0, 1]);
        bytes.extend(vec![0u8; 100]);
        assert_eq!(through(bytes.clone()).await, bytes);
    }

    #[tokio::test]
    async fn everything_else_passes_untouched() {
        let mut http2 = PREFACE.to_vec();
        http2.extend(headers_frame(1, END_HEADERS, &block("127.0.0.1:2379")));
        http2.extend(b"whatever follows");
        assert_eq!(through(http2.clone()).await, http2);
        let http1 = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through(http1.clone()).await, http1);
    }
}
