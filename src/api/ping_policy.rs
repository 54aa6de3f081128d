//! etcd's `--grpc-keepalive-min-time`: how often a client may ping. etcd's gRPC server (grpc-go's
//! keepalive enforcement policy, with pings not permitted without calls) counts a strike for a
//! client's PING that comes sooner than the minimum time after the one before while a call is open,
//! or within two hours of it while none is; the first ping is free, and any HEADERS or DATA frame
//! the server sends clears the strikes. On the third strike the server sends GOAWAY with
//! ENHANCE_YOUR_CALM and "too_many_pings", sends nothing more, and closes the connection once the
//! client has (reading and dropping what it sends meanwhile) or a second has passed: closed with
//! unread bytes, a connection is reset, and the client may lose the GOAWAY. The HTTP/2 layer under tonic
//! has no such policy, so [`Paced`] keeps it from outside: it follows the frames both ways (their
//! 9-byte headers only) and writes the GOAWAY itself.
//!
//! etcd applies the policy where grpc-go serves the connection itself: on plain client URLs, and on
//! TLS ones that serve only gRPC (`--listen-client-http-urls` given). On TLS URLs that serve HTTP
//! too, Go's HTTP/2 server carries the calls and nothing is enforced; Strata does the same.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const TOO_MANY_PINGS: &[u8] = b"too_many_pings";
/// How close pings may come with no call open (grpc-go's `defaultPingTimeout`).
const IDLE_MIN_TIME: Duration = Duration::from_secs(2 * 60 * 60);
/// Strikes allowed; the next one closes the connection (grpc-go's `maxPingStrikes`).
const MAX_STRIKES: u32 = 2;
/// How long a connection stays open after its GOAWAY, unless the client closes it first
/// (grpc-go's wait for its reader before it closes a connection).
const LINGER: Duration = Duration::from_secs(1);

/// A frame header.
#[derive(Clone, Copy)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Follows the frames of one direction of a connection, byte by byte as they pass.
#[derive(Default)]
struct Frames {
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
}

impl Frames {
    /// Follows `bytes`, the next of the stream, calling `seen` with each frame header they complete.
    fn follow(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Frame)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == FRAME_HEADER {
                let h = self.header;
                self.have = 0;
                self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                seen(Frame {
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                });
            }
        }
    }

    /// Whether the bytes so far end with a whole frame.
    fn between_frames(&self) -> bool {
        self.have == 0 && self.skip == 0
    }
}

/// The policy's state for one connection.
struct Policy {
    min_time: Duration,
    last_ping: Option<Instant>,
    strikes: u32,
    /// The server sent HEADERS or DATA since the last ping.
    clear: bool,
    /// The client's streams the server has not ended.
    open: HashSet<u32>,
    /// The highest stream the client opened: the last one a GOAWAY says was taken.
    last_stream: u32,
}

impl Policy {
    /// A frame from the client; true if it is one ping too many.
    fn client_sent(&mut self, frame: Frame, now: Instant) -> bool {
        match frame.kind {
            PING if frame.flags & ACK == 0 => return self.ping(now),
            HEADERS if frame.stream > self.last_stream => {
                self.last_stream = frame.stream;
                self.open.insert(frame.stream);
            }
            RST_STREAM => {
                self.open.remove(&frame.stream);
            }
            _ => {}
        }
        false
    }

    /// A frame from the server.
    fn server_sent(&mut self, frame: Frame) {
        match frame.kind {
            DATA | HEADERS => {
                self.clear = true;
                if frame.flags & END_STREAM != 0 {
                    self.open.remove(&frame.stream);
                }
            }
            RST_STREAM => {
                self.open.remove(&frame.stream);
            }
            _ => {}
        }
    }

    fn ping(&mut self, now: Instant) -> bool {
        let last = self.last_ping.replace(now);
        if std::mem::take(&mut self.clear) {
            self.strikes = 0;
            return false;
        }
        let min_time = if self.open.is_empty() {
            IDLE_MIN_TIME
        } else {
            self.min_time
        };
        if last.is_some_and(|last| now < last + min_time) {
            self.strikes += 1;
        }
        self.strikes > MAX_STRIKES
    }

    /// The GOAWAY that ends a connection pinged too often.
    fn goaway(&self) -> Vec<u8> {
        let length = (8 + TOO_MANY_PINGS.len()) as u32;
        let mut frame = Vec::with_capacity(FRAME_HEADER + length as usize);
        frame.extend_from_slice(&length.to_be_bytes()[1..]);
        frame.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&self.last_stream.to_be_bytes());
        frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        frame.extend_from_slice(TOO_MANY_PINGS);
        frame
    }
}

enum State {
    /// Reading the client's first bytes: HTTP/2's preface (how much of it so far), or anything else.
    Preface(usize),
    /// An HTTP/2 connection under the policy.
    Following,
    /// Pinged too often: the GOAWAY (what of it is left to write), then the end.
    Closing(Vec<u8>),
    /// The GOAWAY is out: what the client sends is dropped until it closes or the wait ends.
    Draining(Pin<Box<tokio::time::Sleep>>),
    /// Reads end.
    Closed,
    /// Not HTTP/2, or no policy: bytes pass through.
    Off,
}

/// A client connection held to the policy (see the module's doc); `None` turns it off.
pub struct Paced<T> {
    inner: T,
    state: State,
    policy: Policy,
    from_client: Frames,
    from_server: Frames,
    /// A read waiting for the GOAWAY to go out.
    reader: Option<Waker>,
}

impl<T> Paced<T> {
    pub fn new(inner: T, min_time: Option<Duration>) -> Paced<T> {
        Paced {
            inner,
            state: if min_time.is_some() {
                State::Preface(0)
            } else {
                State::Off
            },
            policy: Policy {
                min_time: min_time.unwrap_or_default(),
                last_ping: None,
                strikes: 0,
                clear: false,
                open: HashSet::new(),
                last_stream: 0,
            },
            from_client: Frames::default(),
            from_server: Frames::default(),
            reader: None,
        }
    }

    /// Follows bytes that came from the client.
    fn follow_client(&mut self, mut bytes: &[u8]) {
        if let State::Preface(matched) = self.state {
            let n = (PREFACE.len() - matched).min(bytes.len());
            if bytes[..n] != PREFACE[matched..matched + n] {
                self.state = State::Off;
                return;
            }
            bytes = &bytes[n..];
            self.state = match matched + n {
                all if all == PREFACE.len() => State::Following,
                some => State::Preface(some),
            };
        }
        if !matches!(self.state, State::Following) {
            return;
        }
        let now = Instant::now();
        let policy = &mut self.policy;
        let mut too_many = false;
        self.from_client
            .follow(bytes, |frame| too_many |= policy.client_sent(frame, now));
        if too_many {
            tracing::warn!("a client pinged more often than --grpc-keepalive-min-time allows: closing its connection");
            self.state = State::Closing(self.policy.goaway());
        }
    }

    /// Follows bytes the server wrote.
    fn follow_server(&mut self, bytes: &[u8]) {
        let policy = &mut self.policy;
        self.from_server
            .follow(bytes, |frame| policy.server_sent(frame));
        if !self.from_server.between_frames() {
            return;
        }
        if let (State::Closing(_), Some(reader)) = (&self.state, self.reader.take()) {
            // The GOAWAY may go now: the waiting read sends it.
            reader.wake();
        }
    }
}

impl<T: AsyncWrite + Unpin> Paced<T> {
    /// Writes what is left of the GOAWAY, once the server's bytes end with a whole frame.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let State::Closing(goaway) = &mut self.state else {
            return Poll::Ready(Ok(()));
        };
        if !self.from_server.between_frames() {
            return Poll::Ready(Ok(()));
        }
        while !goaway.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, goaway))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            goaway.drain(..n);
        }
        std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.state = State::Draining(Box::pin(tokio::time::sleep(LINGER)));
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the GOAWAY is out, after which nothing more is sent.
    fn went_away(&self) -> bool {
        matches!(self.state, State::Draining(_) | State::Closed)
    }
}

impl<T: AsyncRead + Unpin> Paced<T> {
    /// After the GOAWAY: drops what the client sends until it closes the connection or the wait
    /// ends, then ends the server's reads.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let State::Draining(linger) = &mut self.state else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 1024];
        loop {
            let mut dropped = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut dropped) {
                Poll::Ready(Ok(())) if !dropped.filled().is_empty() => {}
                // Closed by the client, or failed.
                Poll::Ready(_) => break,
                Poll::Pending if linger.as_mut().poll(cx).is_pending() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        self.state = State::Closed;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Paced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.state {
            State::Off => return Pin::new(&mut this.inner).poll_read(cx, buf),
            // The end, for the server: the connection closes.
            State::Closed => return Poll::Ready(Ok(())),
            State::Draining(_) => return this.poll_drain(cx),
            State::Closing(_) => {
                std::task::ready!(this.poll_goaway(cx))?;
                if this.went_away() {
                    return this.poll_drain(cx);
                }
                // The server is in the middle of a frame: the write that ends it sends the GOAWAY.
                this.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            State::Preface(_) | State::Following => {}
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.follow_client(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Paced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.state, State::Off) {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        std::task::ready!(this.poll_goaway(cx))?;
        if this.went_away() {
            return Poll::Ready(Ok(buf.len()));
        }
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.follow_server(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.state, State::Off) {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        std::task::ready!(this.poll_goaway(cx))?;
        if this.went_away() {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let mut n = std::task::ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let written = n;
        for buf in bufs {
            let taken = n.min(buf.len());
            this.follow_server(&buf[..taken]);
            n -= taken;
            if n == 0 {
                break;
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_goaway(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_goaway(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Paced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ping() -> Vec<u8> {
        frame(PING, 0, 0, &[0; 8])
    }

    fn paced(min_time: Duration) -> Paced<Vec<u8>> {
        let mut p = Paced::new(Vec::new(), Some(min_time));
        p.follow_client(PREFACE);
        p
    }

    fn closing(p: &Paced<Vec<u8>>) -> bool {
        matches!(p.state, State::Closing(_))
    }

    #[test]
    fn the_third_strike_closes_and_the_first_ping_is_free() {
        // No call open: any ping within two hours of the last is a strike.
        let mut p = paced(Duration::from_secs(5));
        for _ in 0..3 {
            p.follow_client(&ping());
            assert!(!closing(&p));
        }
        p.follow_client(&ping());
        assert!(closing(&p));
        let State::Closing(goaway) = &p.state else {
            unreachable!()
        };
        assert_eq!(goaway[3], GOAWAY);
        assert_eq!(&goaway[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
        assert_eq!(&goaway[17..], TOO_MANY_PINGS);
    }

    #[test]
    fn with_a_call_open_only_pings_sooner_than_the_minimum_strike() {
        let mut p = paced(Duration::from_secs(5));
        p.follow_client(&frame(HEADERS, 0x4, 1, b"x"));
        let start = Instant::now();
        let mut at = |secs: u64| {
            let frame = Frame {
                kind: PING,
                flags: 0,
                stream: 0,
            };
            p.policy
                .client_sent(frame, start + Duration::from_secs(secs))
        };
        // 6 s apart: no strike, however many.
        assert!(!(0..10).any(|i| at(i * 6)));
        // Three within 5 s of the one before: the third closes.
        assert!(!at(61));
        assert!(!at(62));
        assert!(!at(63));
        assert!(at(64));
        assert_eq!(p.policy.goaway()[9..13], 1u32.to_be_bytes());
    }

    #[test]
    fn what_the_server_sends_clears_the_strikes() {
        let mut p = paced(Duration::from_secs(5));
        for _ in 0..3 {
            p.follow_client(&ping());
        }
        // The server answers something: the next ping clears the strikes.
        p.follow_server(&frame(HEADERS, 0x4, 1, b"x"));
        p.follow_client(&ping());
        assert_eq!(p.policy.strikes, 0);
        p.follow_client(&ping());
        p.follow_client(&ping());
        assert!(!closing(&p));
        p.follow_client(&ping());
        assert!(closing(&p));
    }

    #[test]
    fn frames_split_anywhere_are_followed() {
        let mut p = paced(Duration::from_secs(5));
        let bytes: Vec<u8> = (0..4).flat_map(|_| ping()).collect();
        for byte in bytes.chunks(1) {
            p.follow_client(byte);
        }
        assert!(closing(&p));
    }

    #[test]
    fn http_1_connections_pass_through() {
        let mut p = Paced::new(Vec::<u8>::new(), Some(Duration::from_secs(5)));
        p.follow_client(b"GET /health HTTP/1.1\r\n\r\n");
        assert!(matches!(p.state, State::Off));
    }
}
