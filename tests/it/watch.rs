//! Watch: the same script of writes and watch requests against etcd and Strata, every response
//! compared; and what etcd 3.4 (the one Debian has) cannot be compared on, against Strata alone.

use crate::requests::*;
use crate::support::{start_both, Process, Strata};
use std::time::Duration;
use strata::proto::etcdserverpb::kv_client::KvClient;
use strata::proto::etcdserverpb::watch_client::WatchClient;
use strata::proto::etcdserverpb::watch_create_request::FilterType;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::etcdserverpb::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

/// How long a response may take before the test fails: generous, it only bounds a failing test.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Stream {
    requests: mpsc::Sender<WatchRequest>,
    /// The call, until its response headers have come: etcd sends them with its first response.
    call: Option<tokio::task::JoinHandle<Streaming<WatchResponse>>>,
    responses: Option<Streaming<WatchResponse>>,
}

impl Stream {
    pub async fn open(server: &Process) -> Stream {
        let (requests, rx) = mpsc::channel(16);
        // etcd's clients accept responses of any size, as a replay can be large.
        let mut client =
            WatchClient::new(server.channel().await).max_decoding_message_size(usize::MAX);
        let call = tokio::spawn(async move {
            client
                .watch(ReceiverStream::new(rx))
                .await
                .expect("watch stream opens")
                .into_inner()
        });
        Stream {
            requests,
            call: Some(call),
            responses: None,
        }
    }

    pub async fn send(&self, request: RequestUnion) {
        self.requests
            .send(WatchRequest {
                request_union: Some(request),
            })
            .await
            .unwrap();
    }

    /// The mod revisions of the next `n` events, whatever responses carry them.
    async fn event_revisions(&mut self, n: usize) -> Vec<i64> {
        let mut revisions = Vec::new();
        while revisions.len() < n {
            for r in self.next(1).await {
                revisions.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
            }
        }
        revisions
    }

    /// The next `n` responses, ids and term blanked, ordered by watch id (etcd sends one revision's
    /// responses to different watchers in no set order).
    pub async fn next(&mut self, n: usize) -> Vec<WatchResponse> {
        let mut out = Vec::new();
        if n == 0 {
            return out;
        }
        if let Some(call) = self.call.take() {
            let opened = tokio::time::timeout(RESPONSE_TIMEOUT, call).await;
            self.responses = Some(opened.expect("watch stream opens in time").unwrap());
        }
        let responses = self.responses.as_mut().expect("opened above");
        for i in 0..n {
            let response = tokio::time::timeout(RESPONSE_TIMEOUT, responses.message())
                .await
                .unwrap_or_else(|_| panic!("response {i} of {n} did not come; had {out:?}"))
                .expect("stream open")
                .expect("stream not ended");
            out.push(blank(response));
        }
        out.sort_by_key(|r| r.watch_id);
        out
    }
}

fn blank(mut r: WatchResponse) -> WatchResponse {
    if let Some(h) = r.header.as_mut() {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
    r
}

pub fn create(key: &str, end: &str, start_revision: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: b(key),
        range_end: b(end),
        start_revision,
        ..Default::default()
    }
}

/// One step of a script, and how many watch responses it brings.
enum Step {
    Kv(Op, usize),
    Watch(RequestUnion, usize),
}

fn watch(c: WatchCreateRequest, responses: usize) -> Step {
    Step::Watch(RequestUnion::CreateRequest(c), responses)
}

fn cancel(watch_id: i64, responses: usize) -> Step {
    Step::Watch(
        RequestUnion::CancelRequest(WatchCancelRequest { watch_id }),
        responses,
    )
}

fn kv(op: impl Into<Op>, responses: usize) -> Step {
    Step::Kv(op.into(), responses)
}

async fn play(server: &Process, script: &[Step]) -> Vec<Vec<WatchResponse>> {
    let mut kv_client: KvClient<Channel> = server.kv().await;
    let mut stream = Stream::open(server).await;
    let mut seen = Vec::new();
    for step in script {
        let n = match step {
            Step::Kv(op, n) => {
                run(&mut kv_client, op).await;
                *n
            }
            Step::Watch(request, n) => {
                stream.send(request.clone()).await;
                *n
            }
        };
        seen.push(stream.next(n).await);
    }
    seen
}

async fn same_responses(script: Vec<Step>) {
    let (etcd, strata) = start_both();
    let want = play(&etcd, &script).await;
    let got = play(&strata, &script).await;
    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "step {i}");
    }
}

#[tokio::test]
async fn history_replay_live_events_filters_and_cancel() {
    same_responses(vec![
        kv(put("a", "1"), 0),
        kv(put("b", "1"), 0),
        kv(put("a", "2"), 0),
        kv(del("a", ""), 0),
        kv(
            txn(
                vec![],
                vec![op::put("c", "1"), op::put("a", "3"), op::del("b", "")],
                vec![],
            ),
            0,
        ),
        // id 0: key a from now on.
        watch(create("a", "", 0), 1),
        // id 1: everything from revision 2, with prev_kv: created, then the history in one response.
        watch(
            WatchCreateRequest {
                prev_kv: true,
                ..create("\u{0}", "\u{0}", 2)
            },
            2,
        ),
        // id 2: [a, c) from 3 without puts.
        watch(
            WatchCreateRequest {
                filters: vec![FilterType::Noput as i32],
                ..create("a", "c", 3)
            },
            2,
        ),
        // id 100, chosen by the client: b.
        watch(
            WatchCreateRequest {
                watch_id: 100,
                ..create("b", "", 0)
            },
            1,
        ),
        // Refused: a duplicate id, and an empty range.
        watch(
            WatchCreateRequest {
                watch_id: 100,
                ..create("x", "", 0)
            },
            1,
        ),
        watch(create("c", "a", 0), 1),
        // id 3: an empty key watches from the smallest key; a future start waits.
        watch(create("", "\u{0}", 9), 1),
        // Live: one response per interested watcher, one per revision.
        kv(put("a", "4"), 2),
        kv(put("b", "2"), 2),
        kv(del("a", "c"), 5),
        kv(
            txn(
                vec![],
                vec![op::put("a", "5"), op::put("b", "3"), op::put("z", "1")],
                vec![],
            ),
            4,
        ),
        kv(put("unwatched", "x"), 2),
        cancel(100, 1),
        cancel(999, 0),
        kv(put("b", "after cancel"), 2),
        cancel(3, 1),
        kv(put("b", "again"), 1),
    ])
    .await;
}

#[tokio::test]
async fn compacted_start_revision() {
    same_responses(vec![
        kv(put("a", "1"), 0),
        kv(put("a", "2"), 0),
        kv(put("a", "3"), 0),
        kv(compact(3, true), 0),
        // Created, then canceled with the compaction revision.
        watch(create("a", "", 2), 2),
        // At the compaction revision itself: history from there.
        watch(create("a", "", 3), 2),
        kv(put("a", "4"), 1),
        // The compacted watcher is still the stream's: canceling it is answered.
        cancel(0, 1),
    ])
    .await;
}

async fn strata_stream() -> (Strata, KvClient<Channel>, Stream) {
    let strata = Strata::start_with(&["--experimental-watch-progress-notify-interval", "200ms"]);
    let kv = strata.kv().await;
    let stream = Stream::open(&strata).await;
    (strata, kv, stream)
}

/// etcd 3.5.24 and later refuse a negative start revision (Debian's 3.4 does not yet).
#[tokio::test]
async fn negative_start_revision_is_refused() {
    let (_strata, _kv, mut stream) = strata_stream().await;
    stream
        .send(RequestUnion::CreateRequest(create("a", "", -1)))
        .await;
    let r = stream.next(1).await.remove(0);
    assert!(r.created && r.canceled);
    assert_eq!(r.watch_id, -1);
    assert_eq!(
        r.cancel_reason,
        "etcdserver: mvcc: required revision has been compacted"
    );
}

/// etcd 3.5.13 and later answer a progress request only when every watcher of the stream has
/// caught up, with watch id -1, after the events it covers (Debian's 3.4 answers at once).
#[tokio::test]
async fn progress_request_follows_the_events_it_covers() {
    let (_strata, mut kv, mut stream) = strata_stream().await;
    let progress = || RequestUnion::ProgressRequest(WatchProgressRequest {});
    stream.send(progress()).await;
    stream
        .send(RequestUnion::CreateRequest(create("k", "", 0)))
        .await;
    // Nothing for the first request (no watcher yet): the first response is the creation.
    let created = stream.next(1).await.remove(0);
    assert!(created.created);
    for i in 0..5 {
        kv.put(put("k", &i.to_string())).await.unwrap();
    }
    stream.send(progress()).await;
    let mut events = 0;
    loop {
        let r = stream.next(1).await.remove(0);
        if r.watch_id == -1 {
            assert_eq!(events, 5, "progress came before all events");
            assert_eq!(r.header.unwrap().revision, 6);
            break;
        }
        events += r.events.len();
    }
}

#[tokio::test]
async fn progress_notify_reports_quiet_watchers() {
    let (_strata, mut kv, mut stream) = strata_stream().await;
    kv.put(put("k", "1")).await.unwrap();
    stream
        .send(RequestUnion::CreateRequest(WatchCreateRequest {
            progress_notify: true,
            ..create("k", "", 0)
        }))
        .await;
    assert!(stream.next(1).await[0].created);
    // With nothing happening, the next response is a periodic progress report for the watcher.
    let r = stream.next(1).await.remove(0);
    assert_eq!((r.watch_id, r.events.len()), (0, 0));
    assert_eq!(r.header.unwrap().revision, 2);
}

/// A stream whose client stops reading never holds up writes or another stream's watchers; once it
/// reads again it gets every event, in order, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_blocks_nobody_and_catches_up() {
    let (strata, kv, mut stalled) = strata_stream().await;
    let mut live = Stream::open(&strata).await;
    for s in [&stalled, &live] {
        s.send(RequestUnion::CreateRequest(create("k", "l", 0)))
            .await;
    }
    assert!(stalled.next(1).await[0].created);
    assert!(live.next(1).await[0].created);
    // Far more responses than the stalled stream's buffers and the transport's window hold.
    let writes = 3000;
    let value = "v".repeat(10_000);
    let writer = tokio::spawn(async move {
        let mut kv = kv;
        for i in 0..writes {
            kv.put(put(&format!("k{i:05}"), &value)).await.unwrap();
        }
    });
    let every = (2..2 + writes as i64).collect::<Vec<_>>();
    assert_eq!(live.event_revisions(writes).await, every);
    writer.await.unwrap();
    assert_eq!(stalled.event_revisions(writes).await, every);
}

/// The way kube-apiserver uses watch: a paged list at one revision, then a prefix watch with prev_kv
/// and progress notifications from the list's revision + 1, updates and deletes as compare-and-swap
/// txns on mod revisions, progress requests, and a relist after the watch falls behind a compaction.
#[tokio::test]
async fn kube_apiserver_shaped_list_and_watch() {
    use strata::proto::etcdserverpb::compare::{
        CompareResult as R, CompareTarget as T, TargetUnion as U,
    };
    // The default progress interval (10 minutes): no periodic report interleaves with the events.
    let strata = Strata::start();
    let mut kv = strata.kv().await;
    let mut stream = Stream::open(&strata).await;
    for i in 0..12 {
        kv.put(put(&format!("/registry/pods/ns/p{i:02}"), "spec"))
            .await
            .unwrap();
    }
    // A paged list, all pages at the first page's revision.
    let mut listed = Vec::new();
    let mut from = "/registry/pods/".to_owned();
    let mut at = 0;
    loop {
        let page = kv
            .range(RangeRequest {
                limit: 5,
                revision: at,
                ..range(&from, "/registry/pods0")
            })
            .await
            .unwrap()
            .into_inner();
        at = page.header.unwrap().revision;
        listed.extend(page.kvs.iter().cloned());
        if !page.more {
            break;
        }
        from = format!(
            "{}\u{0}",
            String::from_utf8_lossy(&page.kvs.last().unwrap().key)
        );
    }
    assert_eq!((listed.len(), at), (12, 13));
    stream
        .send(RequestUnion::CreateRequest(WatchCreateRequest {
            prev_kv: true,
            progress_notify: true,
            ..create("/registry/pods/", "/registry/pods0", at + 1)
        }))
        .await;
    assert!(stream.next(1).await[0].created);
    // GuaranteedUpdate and Delete: compare the mod revision the cache holds.
    let p03 = &listed[3];
    let update = txn(
        vec![cmp(
            "/registry/pods/ns/p03",
            T::Mod,
            R::Equal,
            U::ModRevision(p03.mod_revision),
        )],
        vec![op::put("/registry/pods/ns/p03", "spec v2")],
        vec![op::get("/registry/pods/ns/p03")],
    );
    assert!(kv.txn(update.clone()).await.unwrap().into_inner().succeeded);
    assert!(
        !kv.txn(update).await.unwrap().into_inner().succeeded,
        "stale"
    );
    let p05 = &listed[5];
    let delete = txn(
        vec![cmp(
            "/registry/pods/ns/p05",
            T::Mod,
            R::Equal,
            U::ModRevision(p05.mod_revision),
        )],
        vec![op::del("/registry/pods/ns/p05", "")],
        vec![],
    );
    assert!(kv.txn(delete).await.unwrap().into_inner().succeeded);
    let events: Vec<_> = stream
        .next(2)
        .await
        .into_iter()
        .flat_map(|r| r.events)
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b("spec"));
    assert_eq!(events[0].kv.as_ref().unwrap().mod_revision, 14);
    assert_eq!(events[1].r#type, 1);
    assert_eq!(events[1].prev_kv.as_ref().unwrap().key, p05.key);
    // The watch cache asks where the stream is.
    stream
        .send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let progress = stream.next(1).await.remove(0);
    assert_eq!(
        (progress.watch_id, progress.header.unwrap().revision),
        (-1, 15)
    );
    // After a compaction past where a new watch would start, kube relists.
    kv.compact(compact(15, false)).await.unwrap();
    stream
        .send(RequestUnion::CreateRequest(create(
            "/registry/pods/",
            "/registry/pods0",
            at + 1,
        )))
        .await;
    let refused: Vec<_> = stream.next(2).await;
    assert!(refused[1].canceled, "{refused:?}");
    assert_eq!(refused[1].compact_revision, 15);
}
