//! etcdserverpb.Watch: one bidirectional stream carrying many watchers.
//!
//! Each stream has two tasks. The receiving side turns create, cancel and progress requests into
//! calls on the store; the sending side turns the stream's [`Notice`]s — from the watch hub and from
//! the receiving side, through one channel, so in the order the client must see them — into
//! responses, filling prev_kv and fragmenting as each watcher asked. When the client goes away the
//! sending side stops every watcher of the stream.

use super::{access, Context};
use crate::config::GRPC_OVERHEAD_BYTES;
use crate::mvcc::watch::{Notice, NoticeKind, WatchSpec, WatcherKey};
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// Notices waiting for one stream's client (etcd's chanBufLen). A watcher that finds it full falls
/// behind and catches up from the log later.
const NOTICE_BUFFER: usize = 128;
/// Responses encoded and waiting for the transport.
const RESPONSE_BUFFER: usize = 16;

/// The client's watch id for a watcher that is not one (creation refused, progress of a stream).
const NO_WATCH_ID: i64 = -1;

pub struct WatchService(pub(super) Context);

/// What a stream knows of one of its watchers.
struct Watching {
    key: WatcherKey,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// No events were sent to it since the last periodic progress report.
    quiet: bool,
}

/// The watchers of one stream, by the client's watch id.
#[derive(Default)]
struct Watchers {
    by_id: HashMap<i64, Watching>,
    /// The next watch id the server assigns (etcd counts from 0, skipping ids in use).
    next_id: i64,
}

type Shared = Arc<Mutex<Watchers>>;

type WatchStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let credentials = access::Credentials::of(req.metadata());
        let requests = req.into_inner();
        let (notices, notices_rx) = mpsc::channel(NOTICE_BUFFER);
        let (responses, responses_rx) = mpsc::channel(RESPONSE_BUFFER);
        let watchers = Shared::default();
        tokio::spawn(receive(
            self.0.clone(),
            credentials,
            requests,
            notices.clone(),
            watchers.clone(),
        ));
        tokio::spawn(send(
            self.0.clone(),
            notices,
            notices_rx,
            responses,
            watchers,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(responses_rx))))
    }
}

/// Handles the client's requests until it stops sending. Watchers live on after that (etcd keeps
/// streaming to a client that closed its sending side) until the client goes away.
async fn receive(
    context: Context,
    credentials: access::Credentials,
    mut requests: Streaming<WatchRequest>,
    notices: mpsc::Sender<Notice>,
    watchers: Shared,
) {
    while let Some(Ok(request)) = requests.next().await {
        if let Some(RequestUnion::CreateRequest(c)) = &request.request_union {
            context.store.prepare_watch(c.start_revision).await;
            // As for every refusal: on a shared backend it stands only if this frontend's auth
            // state is the stored one (another frontend may have just turned auth off or granted
            // the permission). allow_fresh takes the stored state if so; `create` then answers.
            let key = watched_key(&c.key);
            let _ = context
                .allow_fresh(&|| may_read(&context, &credentials, &key, &c.range_end))
                .await;
        }
        // Reserving first keeps the stream's order: nothing about a watcher can be queued between
        // the check of a request and its answer.
        let Ok(permit) = notices.reserve().await else {
            return;
        };
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                self::create(&context, &credentials, create, &notices, permit, &watchers)
            }
            Some(RequestUnion::CancelRequest(cancel)) => {
                let removed = watchers
                    .lock()
                    .expect("watchers")
                    .by_id
                    .remove(&cancel.watch_id);
                // An unknown id gets no answer, as in etcd.
                if let Some(w) = removed {
                    context.store.unwatch(w.key);
                    permit.send(Notice {
                        watch_id: cancel.watch_id,
                        revision: context.store.revision(),
                        kind: NoticeKind::Canceled,
                    });
                }
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                drop(permit);
                let keys: Vec<WatcherKey> = {
                    let watchers = watchers.lock().expect("watchers");
                    watchers.by_id.values().map(|w| w.key).collect()
                };
                context.store.watch_progress(&keys, NO_WATCH_ID, &notices);
            }
            None => {}
        }
    }
}

/// The key a watch of `key` starts from: an empty key watches from the smallest key.
fn watched_key(key: &Bytes) -> Bytes {
    if key.is_empty() {
        Bytes::from_static(b"\0")
    } else {
        key.clone()
    }
}

/// Whether the sender may read what a watch of `key` (already "\0" for an empty one) asks for;
/// if not, the reason its refusal gives.
fn permitted(
    context: &Context,
    credentials: &access::Credentials,
    key: &[u8],
    range_end: &[u8],
) -> std::result::Result<(), String> {
    // etcd gives the reason as Go prints a gRPC status error.
    may_read(context, credentials, key, range_end)
        .map_err(|e| format!("rpc error: code = {:?} desc = {e}", e.code()))
}

/// Whether the sender may read what a watch of `key` asks for, by this frontend's auth state.
fn may_read(
    context: &Context,
    credentials: &access::Credentials,
    key: &[u8],
    range_end: &[u8],
) -> crate::error::Result<()> {
    // As etcd checks it: a range end of "\0" (every key from the key on) becomes empty, so that
    // only the key itself is checked.
    let range_end = if range_end == [0] { b"" } else { range_end };
    context
        .sender(credentials)
        .and_then(|info| context.auth.check_read(info.as_ref(), key, range_end))
}

fn create(
    context: &Context,
    credentials: &access::Credentials,
    create: WatchCreateRequest,
    notices: &mpsc::Sender<Notice>,
    permit: mpsc::Permit<'_, Notice>,
    watchers: &Shared,
) {
    let refuse = |permit: mpsc::Permit<'_, Notice>, reason: &str| {
        permit.send(Notice {
            watch_id: NO_WATCH_ID,
            revision: context.store.revision(),
            kind: NoticeKind::Refused(reason.to_owned()),
        })
    };
    let key = watched_key(&create.key);
    if let Err(reason) = permitted(context, credentials, &key, &create.range_end) {
        return refuse(permit, &reason);
    }
    // etcd 3.5.24 and later refuse a negative start revision so; 3.4 and older 3.5 did not.
    if create.start_revision < 0 {
        return refuse(permit, &crate::error::Error::Compacted.to_string());
    }
    if !create.range_end.is_empty() && create.range_end[..] != [0] && key >= create.range_end {
        return refuse(permit, "mvcc: watcher range is empty");
    }
    let mut watchers = watchers.lock().expect("watchers");
    let watch_id = match create.watch_id {
        0 => {
            while watchers.by_id.contains_key(&watchers.next_id) {
                watchers.next_id += 1;
            }
            let id = watchers.next_id;
            watchers.next_id += 1;
            id
        }
        id if watchers.by_id.contains_key(&id) => {
            return refuse(
                permit,
                "mvcc: duplicate watch ID provided on the WatchStream",
            );
        }
        id => id,
    };
    let has = |f: FilterType| create.filters.contains(&(f as i32));
    let spec = WatchSpec {
        watch_id,
        key,
        range_end: create.range_end,
        start_revision: create.start_revision,
        no_put: has(FilterType::Noput),
        no_delete: has(FilterType::Nodelete),
    };
    let key = context.store.watch(spec, notices.clone(), permit);
    watchers.by_id.insert(
        watch_id,
        Watching {
            key,
            prev_kv: create.prev_kv,
            fragment: create.fragment,
            progress_notify: create.progress_notify,
            quiet: true,
        },
    );
}

/// Turns notices into responses until the client goes away, then stops the stream's watchers.
async fn send(
    context: Context,
    notices: mpsc::Sender<Notice>,
    mut queue: mpsc::Receiver<Notice>,
    responses: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: Shared,
) {
    let _open = crate::metrics::hold(&crate::metrics::WATCH_STREAMS);
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + context.watch_progress_interval,
        context.watch_progress_interval,
    );
    loop {
        tokio::select! {
            () = responses.closed() => break,
            _ = ticker.tick() => report_quiet_watchers(&context, &notices, &watchers),
            notice = queue.recv() => {
                let Some(notice) = notice else { break };
                let mut sent = true;
                for response in respond(&context, notice, &watchers).await {
                    sent &= responses.send(Ok(response)).await.is_ok();
                }
                if !sent {
                    break;
                }
            }
        }
    }
    let gone = std::mem::take(&mut watchers.lock().expect("watchers").by_id);
    for w in gone.into_values() {
        context.store.unwatch(w.key);
    }
}

/// Periodic progress (`progress_notify`): a report for each watcher that was sent no events since
/// the last one, if it is caught up.
fn report_quiet_watchers(context: &Context, notices: &mpsc::Sender<Notice>, watchers: &Shared) {
    let quiet: Vec<(i64, WatcherKey)> = {
        let mut watchers = watchers.lock().expect("watchers");
        let mut quiet = Vec::new();
        for (id, w) in watchers.by_id.iter_mut() {
            if w.progress_notify && w.quiet {
                quiet.push((*id, w.key));
            }
            w.quiet = true;
        }
        quiet
    };
    for (id, key) in quiet {
        context.store.watch_progress(&[key], id, notices);
    }
}

/// The response (or fragments) for one notice.
async fn respond(context: &Context, notice: Notice, watchers: &Shared) -> Vec<WatchResponse> {
    let mut response = WatchResponse {
        watch_id: notice.watch_id,
        ..Default::default()
    };
    let mut header_revision = notice.revision;
    match notice.kind {
        NoticeKind::Created => response.created = true,
        NoticeKind::Refused(reason) => {
            response.created = true;
            response.canceled = true;
            response.cancel_reason = reason;
        }
        NoticeKind::Canceled => response.canceled = true,
        NoticeKind::Compacted(revision) => {
            response.canceled = true;
            response.compact_revision = revision;
            // etcd's compaction response carries no revision of its own.
            header_revision = 0;
        }
        NoticeKind::Progress => {}
        NoticeKind::Events(mut events) => {
            let (prev_kv, fragment) = {
                let mut watchers = watchers.lock().expect("watchers");
                match watchers.by_id.get_mut(&notice.watch_id) {
                    Some(w) => {
                        w.quiet = false;
                        (w.prev_kv, w.fragment)
                    }
                    // Canceled since: its events are not sent.
                    None => return Vec::new(),
                }
            };
            if prev_kv {
                context.store.fill_prev_kvs(&mut events).await;
            }
            response.events = events;
            context.fill(&mut response.header);
            if let Some(h) = response.header.as_mut() {
                h.revision = header_revision;
            }
            if fragment {
                return fragments(
                    response,
                    context.limits.max_request_bytes + GRPC_OVERHEAD_BYTES,
                );
            }
            return vec![response];
        }
    }
    context.fill(&mut response.header);
    if let Some(h) = response.header.as_mut() {
        h.revision = header_revision;
    }
    vec![response]
}

/// Splits a response of several events that reaches `limit` bytes into fragments below it (but
/// always at least one event each), all marked `fragment` but the last, as etcd does.
fn fragments(mut whole: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if whole.events.len() < 2 || whole.encoded_len() < limit {
        return vec![whole];
    }
    let events = std::mem::take(&mut whole.events);
    let empty = whole;
    let mut out = Vec::new();
    let mut current = empty.clone();
    for event in events {
        current.events.push(event);
        if current.events.len() > 1 && current.encoded_len() >= limit {
            let event = current.events.pop().expect("just pushed");
            current.fragment = true;
            out.push(std::mem::replace(&mut current, empty.clone()));
            current.events.push(event);
        }
    }
    out.push(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::{Event, KeyValue};

    fn event(size: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(vec![b'x'; size]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fragments_stay_below_the_limit_and_mark_all_but_the_last() {
        let whole = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|_| event(100)).collect(),
            ..Default::default()
        };
        let parts = fragments(whole.clone(), 350);
        assert!(parts.len() > 1);
        assert_eq!(
            parts.iter().map(|p| p.events.len()).sum::<usize>(),
            whole.events.len()
        );
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.fragment, i + 1 < parts.len());
            assert_eq!(p.watch_id, 3);
            assert!(p.encoded_len() < 350 || p.events.len() == 1);
        }
        // Small enough, or a single event: sent whole.
        assert_eq!(fragments(whole.clone(), 1 << 20), vec![whole]);
        let one = WatchResponse {
            events: vec![event(1000)],
            ..Default::default()
        };
        assert_eq!(fragments(one.clone(), 10), vec![one]);
    }
}
