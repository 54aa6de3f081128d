//! The store against a model that keeps the whole state at every revision, over random histories
//! of puts, deletes, txns, compactions and restarts; and two stores sharing one PostgreSQL database.
//! The helpers the other files' tests share (`key`, `put_request`, `keys_and_revision`) are here.

use super::*;
use crate::backend::embedded::Embedded;
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::RequestOp;
use crate::proto::mvccpb::KeyValue;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8),
    Delete(u8, u8),
    /// Puts the first key and deletes the range in one txn.
    PutAndDelete(u8, u8, u8),
    Compact(u8),
    Restart,
}

pub(in crate::mvcc) fn key(k: u8) -> bytes::Bytes {
    bytes::Bytes::from(vec![b'a' + k])
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..5u8, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0..5u8, 0..6u8).prop_map(|(k, e)| Step::Delete(k, e)),
        2 => (0..5u8, 0..5u8, 0..6u8).prop_map(|(p, k, e)| Step::PutAndDelete(p, k, e)),
        1 => any::<u8>().prop_map(Step::Compact),
        1 => Just(Step::Restart),
    ]
}

/// The state at each revision; `states[r]` is the state at revision r (0 unused, 1 empty).
struct Model {
    states: Vec<BTreeMap<bytes::Bytes, KeyValue>>,
    compacted: i64,
}

impl Model {
    fn head(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    /// Applies the changes of one txn; a txn that changes nothing takes no revision.
    fn apply(&mut self, put: Option<(u8, u8)>, delete: Option<(u8, u8)>) {
        let rev = self.head() + 1;
        let mut state = self.states.last().unwrap().clone();
        let mut changed = false;
        if let Some((k, v)) = put {
            let old = state.get(&key(k));
            let kv = KeyValue {
                key: key(k),
                create_revision: old.map_or(rev, |o| o.create_revision),
                mod_revision: rev,
                version: old.map_or(1, |o| o.version + 1),
                value: bytes::Bytes::from(vec![v]),
                lease: 0,
            };
            state.insert(key(k), kv);
            changed = true;
        }
        if let Some((k, end)) = delete {
            let before = state.len();
            state.retain(|kk, _| !(key(k) <= *kk && *kk < key(end.max(k + 1))));
            changed |= state.len() != before;
        }
        if changed {
            self.states.push(state);
        }
    }
}

fn delete_request(k: u8, end: u8) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key(k),
        range_end: key(end.max(k + 1)),
        prev_kv: false,
    }
}

pub(in crate::mvcc) fn put_request(k: u8, v: u8) -> PutRequest {
    PutRequest {
        key: key(k),
        value: bytes::Bytes::from(vec![v]),
        ..Default::default()
    }
}

async fn check(store: &Store, model: &Model) {
    assert_eq!(store.revision(), model.head());
    for rev in 1..=model.head() {
        let read = store
            .range(&RangeRequest {
                key: bytes::Bytes::from_static(b"\0"),
                range_end: bytes::Bytes::from_static(b"\0"),
                revision: rev,
                ..Default::default()
            })
            .await;
        if rev < model.compacted {
            assert_eq!(read.unwrap_err(), Error::Compacted, "at {rev}");
            continue;
        }
        let kvs = read.unwrap().kvs;
        let want: Vec<KeyValue> = model.states[rev as usize].values().cloned().collect();
        assert_eq!(kvs, want, "at {rev}");
    }
}

async fn run(steps: Vec<Step>) {
    let backend: Arc<dyn Backend> = Arc::new(Embedded::in_memory().unwrap());
    let mut store = Store::open(backend.clone()).await.unwrap();
    let mut model = Model {
        states: vec![BTreeMap::new(), BTreeMap::new()],
        compacted: -1,
    };
    for step in steps {
        match step {
            Step::Put(k, v) => {
                store.put(put_request(k, v), None).await.unwrap();
                model.apply(Some((k, v)), None);
            }
            Step::Delete(k, end) => {
                store
                    .delete_range(delete_request(k, end), None)
                    .await
                    .unwrap();
                model.apply(None, Some((k, end)));
            }
            Step::PutAndDelete(p, k, end) => {
                let result = store
                    .txn(
                        TxnRequest {
                            compare: Vec::new(),
                            success: vec![
                                RequestOp {
                                    request: Some(Request::RequestPut(put_request(p, p))),
                                },
                                RequestOp {
                                    request: Some(Request::RequestDeleteRange(delete_request(
                                        k, end,
                                    ))),
                                },
                            ],
                            failure: Vec::new(),
                        },
                        None,
                    )
                    .await;
                // The store applies what validation (in the api layer) would have refused as a
                // duplicate key: the delete then removes the key just put.
                assert!(result.unwrap().succeeded);
                model.apply(Some((p, p)), Some((k, end)));
            }
            Step::Compact(r) => {
                let r = i64::from(r) % (model.head() + 2);
                let result = store
                    .compact(CompactionRequest {
                        revision: r,
                        physical: true,
                    })
                    .await;
                if r <= model.compacted {
                    assert_eq!(result.unwrap_err(), Error::Compacted);
                } else if r > model.head() {
                    assert_eq!(result.unwrap_err(), Error::FutureRevision);
                } else {
                    result.unwrap();
                    model.compacted = r;
                }
            }
            Step::Restart => store = Store::open(backend.clone()).await.unwrap(),
        }
        check(&store, &model).await;
    }
}

pub(in crate::mvcc) async fn keys_and_revision(store: &Store) -> (Vec<bytes::Bytes>, i64) {
    let all = store
        .range(&RangeRequest {
            key: bytes::Bytes::from_static(b"\0"),
            range_end: bytes::Bytes::from_static(b"\0"),
            ..Default::default()
        })
        .await
        .unwrap();
    let keys = all.kvs.into_iter().map(|kv| kv.key).collect();
    (keys, all.header.unwrap().revision)
}

/// A write allowed under an auth state older than the newest this process changed to is refused
/// (the API allows it again under the new one), as etcd refuses a request of an old auth
/// revision; the store's own writes name no auth state and are never refused.
#[tokio::test]
async fn writes_allowed_under_an_older_auth_state_are_refused() {
    let store = Store::open(Arc::new(Embedded::in_memory().unwrap()))
        .await
        .unwrap();
    store.put(put_request(0, 1), Some(0)).await.unwrap();
    store
        .auth_installed()
        .fetch_max(1, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        store.put(put_request(1, 1), Some(0)).await,
        Err(Error::AuthStale)
    ));
    store.put(put_request(1, 1), Some(1)).await.unwrap();
    store.put(put_request(2, 1), None).await.unwrap();
    assert_eq!(
        keys_and_revision(&store).await,
        (vec![key(0), key(1), key(2)], 4)
    );
}

/// Two stores over one PostgreSQL database, as two frontends: each reads the other's writes in
/// linearizable reads and sees them in its watches, and compare-and-swap increments through both
/// at once never lose an update.
#[tokio::test]
async fn two_frontends_share_one_database() {
    use super::watch::NoticeKind;
    use crate::backend::postgres::{tests::fresh_database, Postgres};
    use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    use crate::proto::etcdserverpb::{Compare, ResponseOp};
    let config = fresh_database().await;
    let open = |name: &'static str| {
        let config = config.clone();
        async move {
            let backend = Postgres::open(config, name, Default::default())
                .await
                .unwrap();
            Store::open(Arc::new(backend)).await.unwrap()
        }
    };
    let (a, b) = (open("a").await, open("b").await);
    let (notices, mut heard) = mpsc::channel(64);
    let spec = WatchSpec {
        key: key(0),
        range_end: key(9),
        ..Default::default()
    };
    b.watch(spec, notices.clone(), notices.reserve().await.unwrap());
    assert_eq!(heard.recv().await.unwrap().kind, NoticeKind::Created);

    a.put(put_request(0, 7), None).await.unwrap();
    let (keys, revision) = keys_and_revision(&b).await;
    assert_eq!((keys, revision), (vec![key(0)], 2));
    // b's writer caught up before its own write: the next revision, not a second 2.
    let put = b.put(put_request(1, 1), None).await.unwrap();
    assert_eq!(put.header.unwrap().revision, 3);
    for expected in [2, 3] {
        let notice = heard.recv().await.unwrap();
        assert_eq!(notice.revision, expected);
        assert!(matches!(notice.kind, NoticeKind::Events(_)), "{notice:?}");
    }

    // Counter increments by compare-and-swap, half through each frontend.
    let counter = key(5);
    a.put(
        PutRequest {
            key: counter.clone(),
            value: bytes::Bytes::from_static(b"0"),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let increment = |store: Arc<Store>| {
        let counter = counter.clone();
        async move {
            loop {
                let read = RangeRequest {
                    key: counter.clone(),
                    ..Default::default()
                };
                let kv = store.range(&read).await.unwrap().kvs.remove(0);
                let n: u32 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                let swap = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Mod as i32,
                        key: counter.clone(),
                        target_union: Some(TargetUnion::ModRevision(kv.mod_revision)),
                        ..Default::default()
                    }],
                    success: vec![crate::proto::etcdserverpb::RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: counter.clone(),
                            value: bytes::Bytes::from((n + 1).to_string()),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                };
                let done = store.txn(swap, None).await.unwrap();
                if done.succeeded {
                    assert!(matches!(
                        done.responses[0].response,
                        Some(crate::proto::etcdserverpb::response_op::Response::ResponsePut(_))
                    ));
                    return;
                }
                let _: &[ResponseOp] = &done.responses;
            }
        }
    };
    let tasks: Vec<_> = (0..16)
        .map(|i| tokio::spawn(increment(if i % 2 == 0 { a.clone() } else { b.clone() })))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let read = RangeRequest {
        key: counter.clone(),
        ..Default::default()
    };
    for store in [&a, &b] {
        let r = store.range(&read).await.unwrap();
        assert_eq!(r.kvs[0].value, &b"16"[..]);
        assert_eq!(r.kvs[0].version, 17);
        assert_eq!(r.header.unwrap().revision, 4 + 16);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn store_matches_model(steps in prop::collection::vec(step(), 1..40)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(steps));
    }
}
