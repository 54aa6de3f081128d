//! `--grpc-keepalive-min-time`: a client that pings too often is sent GOAWAY (ENHANCE_YOUR_CALM,
//! "too_many_pings") and its connection closed a second later, as etcd's gRPC server does it; one that keeps to
//! the minimum keeps its connection. Raw HTTP/2 connections to etcd and to Strata, the same frames
//! sent to both, and what each did compared.

use crate::support::{Etcd, Process, Strata};
use prost::Message;
use std::time::Duration;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// How long a server may take to answer a frame here.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A client's HTTP/2 connection, written and read frame by frame.
struct Raw {
    connection: TcpStream,
    received: Vec<u8>,
    /// SETTINGS frames of ours sent, and acknowledged by the server.
    settings_sent: usize,
    settings_acked: usize,
}

/// What ended a wait for an answer.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The answer came, with no GOAWAY before it.
    Answered,
    /// GOAWAY (last stream, error code, debug data), then the connection closed: at once, or
    /// (true) only after half a second or more with the client sending on.
    GoAway(u32, u32, String, bool),
}

impl Raw {
    async fn connect(server: &Process) -> Raw {
        let address = server.endpoint().trim_start_matches("http://").to_owned();
        let mut connection = TcpStream::connect(address).await.unwrap();
        connection
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Raw {
            connection,
            received: Vec::new(),
            settings_sent: 0,
            settings_acked: 0,
        };
        assert_eq!(raw.settings().await, Ended::Answered);
        raw
    }

    /// Sends `bytes`; a connection the server closed already is found by the next read.
    async fn send(&mut self, bytes: Vec<u8>) {
        let _ = self.connection.write_all(&bytes).await;
    }

    async fn ping(&mut self) {
        self.send(frame(PING, 0, 0, b"12345678")).await;
    }

    /// The next frame from the server; None once it closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.received.len() >= 9 {
                let r = &self.received;
                let length = u32::from_be_bytes([0, r[0], r[1], r[2]]) as usize;
                if r.len() >= 9 + length {
                    let f = Frame {
                        kind: r[3],
                        flags: r[4],
                        stream: u32::from_be_bytes([r[5], r[6], r[7], r[8]]),
                        payload: r[9..9 + length].to_vec(),
                    };
                    self.received.drain(..9 + length);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(ANSWER_WITHIN, self.connection.read(&mut chunk))
                .await
                .expect("the server answers or closes");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until `answer` comes, or GOAWAY and the end.
    async fn until(&mut self, answer: impl Fn(&Frame) -> bool) -> Ended {
        while let Some(f) = self.next().await {
            if f.kind == SETTINGS && f.flags & ACK != 0 {
                self.settings_acked += 1;
            }
            if f.kind == GOAWAY {
                let word =
                    |at: usize| u32::from_be_bytes(f.payload[at..at + 4].try_into().unwrap());
                let debug = String::from_utf8_lossy(&f.payload[8..]).into_owned();
                // The connection then closes, once the server has read what the client sent
                // (with unread bytes a close is a reset, which may lose the GOAWAY).
                let went_away = std::time::Instant::now();
                self.ping().await;
                while self.next().await.is_some() {}
                let lingered = went_away.elapsed() >= Duration::from_millis(500);
                return Ended::GoAway(word(0) & 0x7fff_ffff, word(4), debug, lingered);
            }
            if answer(&f) {
                return Ended::Answered;
            }
        }
        panic!("closed without GOAWAY");
    }

    /// Sends SETTINGS and waits for its acknowledgement: everything sent before it was taken.
    async fn settings(&mut self) -> Ended {
        self.send(frame(SETTINGS, 0, 0, &[])).await;
        self.settings_sent += 1;
        let mut ended = Ended::Answered;
        while self.settings_acked < self.settings_sent && ended == Ended::Answered {
            ended = self
                .until(|f| f.kind == SETTINGS && f.flags & ACK != 0)
                .await;
        }
        ended
    }

    /// Opens a watch on stream 1 and waits for the server to say it was created.
    async fn watch(&mut self, authority: &str) {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Watch/Watch"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            // A literal field without indexing, with a new name (RFC 7541, 6.2.2).
            block.push(0);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        self.send(frame(HEADERS, END_HEADERS, 1, &block)).await;
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"k".to_vec().into(),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        let mut message = vec![0];
        message.extend_from_slice(&(create.len() as u32).to_be_bytes());
        message.extend_from_slice(&create);
        self.send(frame(DATA, 0, 1, &message)).await;
        let created = self.until(|f| f.kind == DATA && f.stream == 1).await;
        assert_eq!(created, Ended::Answered);
    }
}

/// What a server did with the same pings: (idle: 3 at once, then 4 at once), (a watch open: 4
/// spaced by more than the minimum, then 4 at once).
async fn pings_answered(server: &Process) -> Vec<Ended> {
    let mut seen = Vec::new();
    let mut idle = Raw::connect(server).await;
    for _ in 0..3 {
        idle.ping().await;
    }
    seen.push(idle.settings().await);
    let mut idle = Raw::connect(server).await;
    for _ in 0..4 {
        idle.ping().await;
    }
    seen.push(idle.settings().await);

    let mut watching = Raw::connect(server).await;
    let authority = server.endpoint().trim_start_matches("http://").to_owned();
    watching.watch(&authority).await;
    for _ in 0..4 {
        watching.ping().await;
        let acked = watching
            .until(|f| f.kind == PING && f.flags & ACK != 0)
            .await;
        assert_eq!(acked, Ended::Answered);
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    seen.push(watching.settings().await);
    for _ in 0..4 {
        watching.ping().await;
    }
    seen.push(watching.settings().await);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_too_often_are_refused_as_etcd_refuses_them() {
    const MIN_TIME: [&str; 2] = ["--grpc-keepalive-min-time", "1s"];
    let etcd = Etcd::start_with(&MIN_TIME);
    let strata = Strata::start_with(&MIN_TIME);
    let (from_etcd, from_strata) = tokio::join!(pings_answered(&etcd), pings_answered(&strata));
    let too_many = |last| Ended::GoAway(last, 0xb, "too_many_pings".into(), true);
    assert_eq!(
        from_etcd,
        [Ended::Answered, too_many(0), Ended::Answered, too_many(1)],
        "etcd"
    );
    assert_eq!(from_strata, from_etcd);
}
