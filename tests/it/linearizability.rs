//! Linearizability: concurrent clients put, get and compare-and-swap a few keys while their calls are
//! recorded with the moments they began and ended; a checker written here (in the manner of
//! porcupine: Wing & Gong's search with memoised states, one key at a time) then looks for an order
//! of the calls that respects real time and a single register's semantics. Watchers running
//! alongside must see exactly the committed writes of their key, in revision order.

use crate::requests::*;
use crate::support::{free_port, Process, Strata};
use crate::watch::{create, Stream};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use strata::proto::etcdserverpb::compare::{
    CompareResult as R, CompareTarget as T, TargetUnion as U,
};
use strata::proto::etcdserverpb::kv_client::KvClient;
use strata::proto::etcdserverpb::watch_request::RequestUnion;
use strata::proto::mvccpb::event::EventType;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

/// What a call did to, or saw of, one register.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    Put(u32),
    Delete,
    /// The value read (None: no key).
    Get(Option<u32>),
    /// Compare-and-swap from `from` to `to`, and whether it swapped (None: the call failed, so
    /// nobody knows).
    Cas {
        from: u32,
        to: u32,
        swapped: Option<bool>,
    },
}

/// A call on one key, from its invocation to its response (in nanoseconds since the start). A
/// write that failed may still have happened: it has no end ([`NEVER`]), so the search may place
/// it anywhere after its start, the very end (where it changes nothing anyone saw) included.
#[derive(Clone, Debug)]
struct Recorded {
    call: Call,
    began: u128,
    ended: u128,
}

/// The end of a call that never answered.
const NEVER: u128 = u128::MAX;

impl Call {
    /// The register after this call from `state`, if the call could have returned what it did.
    fn step(&self, state: Option<u32>) -> Option<Option<u32>> {
        match *self {
            Call::Put(v) => Some(Some(v)),
            Call::Delete => Some(None),
            Call::Get(seen) => (seen == state).then_some(state),
            Call::Cas { from, to, swapped } => match (state == Some(from), swapped) {
                (true, Some(true) | None) => Some(Some(to)),
                (false, Some(false) | None) => Some(state),
                _ => None,
            },
        }
    }
}

/// True if the calls on one register have a linearization: Wing & Gong's search over the calls
/// that may go next (those begun before every pending call ended), memoising (done, state) pairs.
fn linearizable(calls: &[Recorded]) -> bool {
    let n = calls.len();
    assert!(n <= 128, "the search keeps done-sets in a u128");
    let mut seen: HashSet<(u128, Option<u32>)> = HashSet::new();
    let mut stack: Vec<(u128, Option<u32>)> = vec![(0, None)];
    while let Some((done, state)) = stack.pop() {
        if done.count_ones() as usize == n {
            return true;
        }
        if !seen.insert((done, state)) {
            continue;
        }
        // A call can go next only if it began before the earliest end among the calls not done.
        let earliest_end = (0..n)
            .filter(|i| done & (1 << i) == 0)
            .map(|i| calls[i].ended)
            .min()
            .expect("some call is not done");
        for (i, c) in calls.iter().enumerate() {
            if done & (1 << i) != 0 || c.began > earliest_end {
                continue;
            }
            if let Some(next) = c.call.step(state) {
                stack.push((done | (1 << i), next));
            }
        }
    }
    false
}

#[test]
fn the_checker_tells_linearizable_histories_apart() {
    let r = |call, began, ended| Recorded { call, began, ended };
    // A read that overlaps a put may see either value.
    assert!(linearizable(&[
        r(Call::Put(1), 0, 10),
        r(Call::Get(Some(1)), 5, 6),
    ]));
    assert!(linearizable(&[
        r(Call::Put(1), 0, 10),
        r(Call::Get(None), 5, 6)
    ]));
    // A read after a put has ended must see it.
    assert!(!linearizable(&[
        r(Call::Put(1), 0, 1),
        r(Call::Get(None), 5, 6),
    ]));
    // Two reads may not see two values in an order no put order explains.
    assert!(!linearizable(&[
        r(Call::Put(1), 0, 100),
        r(Call::Put(2), 0, 100),
        r(Call::Get(Some(1)), 10, 11),
        r(Call::Get(Some(2)), 20, 21),
        r(Call::Get(Some(1)), 30, 31),
    ]));
    // A put that failed may have happened: before a read that saw it, or not at all.
    assert!(linearizable(&[
        r(Call::Put(1), 0, NEVER),
        r(Call::Get(Some(1)), 5, 6),
    ]));
    assert!(linearizable(&[
        r(Call::Put(1), 0, NEVER),
        r(Call::Get(None), 5, 6),
    ]));
    // Not before it began, though; and a delete empties the register.
    assert!(!linearizable(&[
        r(Call::Get(Some(1)), 0, 1),
        r(Call::Put(1), 5, NEVER),
    ]));
    assert!(!linearizable(&[
        r(Call::Put(1), 0, 1),
        r(Call::Delete, 2, 3),
        r(Call::Get(Some(1)), 5, 6),
    ]));
    // Two swaps from the same value cannot both succeed.
    assert!(!linearizable(&[
        r(Call::Put(1), 0, 1),
        r(
            Call::Cas {
                from: 1,
                to: 2,
                swapped: Some(true)
            },
            2,
            10
        ),
        r(
            Call::Cas {
                from: 1,
                to: 3,
                swapped: Some(true)
            },
            2,
            10
        ),
    ]));
}

/// Adds `item` to what `shared` holds for key `k`.
fn push<T>(shared: &Shared<T>, k: u32, item: T) {
    shared.lock().unwrap().entry(k).or_default().push(item);
}

/// A txn that puts `to` if the key holds `from`.
fn swap(key: &str, from: u32, to: u32) -> strata::proto::etcdserverpb::TxnRequest {
    txn(
        vec![cmp(key, T::Value, R::Equal, U::Value(b(&from.to_string())))],
        vec![op::put(key, &to.to_string())],
        vec![],
    )
}

/// What the clients record, by key.
type Shared<T> = Arc<Mutex<BTreeMap<u32, Vec<T>>>>;

const KEYS: u32 = 4;
const CLIENTS: usize = 8;
const CALLS_PER_CLIENT: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_see_a_linearizable_store() {
    let strata = Strata::start();
    check_history(&[&strata]).await;
}

/// Runs concurrent clients and watchers spread over `servers` (frontends of one cluster), and
/// checks their history: linearizable per key, and every watcher seeing exactly its key's writes.
pub async fn check_history(servers: &[&Process]) {
    let start = Instant::now();
    let history: Shared<Recorded> = Arc::default();
    // Every committed write of each key, as (revision, value), as the writers learned them.
    let writes: Shared<(i64, u32)> = Arc::default();

    let mut watchers = Vec::new();
    for k in 0..KEYS {
        let mut s = Stream::open(servers[k as usize % servers.len()]).await;
        s.send(RequestUnion::CreateRequest(create(
            &format!("lin/{k}"),
            "",
            0,
        )))
        .await;
        assert!(s.next(1).await[0].created);
        watchers.push(s);
    }

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let mut kv = servers[c % servers.len()].kv().await;
        let (history, writes) = (history.clone(), writes.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..CALLS_PER_CLIENT {
                let k = ((c * 7 + i * 3) as u32) % KEYS;
                let key = format!("lin/{k}");
                let value = (c * 1000 + i) as u32;
                let began = start.elapsed().as_nanos();
                let (call, written) = match i % 3 {
                    0 => {
                        let r = kv.put(put(&key, &value.to_string())).await.unwrap();
                        let rev = r.into_inner().header.unwrap().revision;
                        (Call::Put(value), Some(rev))
                    }
                    1 => {
                        let r = kv.range(get(&key)).await.unwrap().into_inner();
                        let seen = r
                            .kvs
                            .first()
                            .map(|kv| std::str::from_utf8(&kv.value).unwrap().parse().unwrap());
                        (Call::Get(seen), None)
                    }
                    _ => {
                        // Swap from what client c + 2 put on this same key two calls ago.
                        let from = ((c + 2) % CLIENTS * 1000 + i.saturating_sub(2)) as u32;
                        let t = swap(&key, from, value);
                        let r = kv.txn(t).await.unwrap().into_inner();
                        let swapped = r.succeeded;
                        let rev = r.header.unwrap().revision;
                        (
                            Call::Cas {
                                from,
                                to: value,
                                swapped: Some(swapped),
                            },
                            swapped.then_some(rev),
                        )
                    }
                };
                let ended = start.elapsed().as_nanos();
                push(&history, k, Recorded { call, began, ended });
                if let Some(rev) = written {
                    push(&writes, k, (rev, value));
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }

    let swaps: Vec<bool> = history
        .lock()
        .unwrap()
        .values()
        .flatten()
        .filter_map(|r| match r.call {
            Call::Cas { swapped, .. } => swapped,
            _ => None,
        })
        .collect();
    assert!(
        swaps.contains(&true) && swaps.contains(&false),
        "the history should hold swaps that succeed and swaps that fail"
    );
    for (k, calls) in history.lock().unwrap().iter() {
        assert!(
            linearizable(calls),
            "the history of lin/{k} is not linearizable: {calls:?}"
        );
    }
    // Each watcher saw exactly its key's committed writes, in revision order.
    for (k, watcher) in watchers.iter_mut().enumerate() {
        let mut expected = writes
            .lock()
            .unwrap()
            .remove(&(k as u32))
            .unwrap_or_default();
        expected.sort_unstable();
        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            for r in watcher.next(1).await {
                for e in r.events {
                    let kv = e.kv.unwrap();
                    let value = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    seen.push((kv.mod_revision, value));
                }
            }
        }
        assert_eq!(seen, expected, "watcher of lin/{k}");
    }
}

/// The value that ends a watcher's run.
const END: u32 = u32::MAX;

/// Watches `lin/{k}` from now on, through restarts: when the stream breaks it waits for the next
/// server and watches again from the revision after the last event it saw. Returns every event as
/// (revision, value; None for a delete), up to the put of [`END`].
async fn watch_through_restarts(
    channel: Channel,
    k: u32,
    mut generation: tokio::sync::watch::Receiver<usize>,
    ready: Arc<Semaphore>,
) -> Vec<(i64, Option<u32>)> {
    use strata::proto::etcdserverpb::watch_client::WatchClient;
    use strata::proto::etcdserverpb::WatchRequest;
    let mut seen = Vec::new();
    let mut next = 0;
    loop {
        let now = *generation.borrow_and_update();
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create(
                &format!("lin/{k}"),
                "",
                next,
            ))),
        };
        let requests = crate::support::open_ended(create);
        if let Ok(stream) = WatchClient::new(channel.clone()).watch(requests).await {
            let mut stream = stream.into_inner();
            while let Ok(Some(response)) = stream.message().await {
                if response.created {
                    if next == 0 {
                        next = response.header.unwrap().revision + 1;
                        ready.add_permits(1);
                    }
                    continue;
                }
                for e in response.events {
                    let kv = e.kv.unwrap();
                    let value = (e.r#type == EventType::Put as i32)
                        .then(|| std::str::from_utf8(&kv.value).unwrap().parse().unwrap());
                    seen.push((kv.mod_revision, value));
                    next = kv.mod_revision + 1;
                    if value == Some(END) {
                        return seen;
                    }
                }
            }
        }
        generation.wait_for(|g| *g > now).await.unwrap();
    }
}

/// A server that a test kills and starts again at the same URL.
pub struct Restartable {
    pub url: String,
    pub start: Box<dyn Fn(&str) -> Strata + Send>,
    pub server: Strata,
}

impl Restartable {
    /// Starts a server with `start` on a free loopback port.
    pub fn new(start: impl Fn(&str) -> Strata + Send + 'static) -> Restartable {
        let url = format!("http://127.0.0.1:{}", free_port());
        let server = start(&url);
        Restartable {
            url,
            start: Box::new(start),
            server,
        }
    }

    pub fn kill_and_restart(&mut self) {
        self.server.kill();
        self.server = (self.start)(&self.url);
    }
}

/// Clients put, get, delete and compare-and-swap while the server is killed with SIGKILL and
/// restarted twice on the same port. A call that failed may or may not have happened (see
/// [`Recorded`]); with that, each key's history must be linearizable. Each watcher, opened again
/// from the revision after the last event it saw, must see every acknowledged write of its key
/// exactly once, in revision order, and nothing that no call tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_through_kill_9_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let server =
        Restartable::new(move |url| Strata::start_in(&data, &["--listen-client-urls", url]));
    check_history_through_restarts(vec![server]).await;
}

/// The history of clients and watchers spread over `servers` (frontends of one cluster) while
/// they are killed and restarted in turn, twice in all: see the test above.
pub async fn check_history_through_restarts(mut servers: Vec<Restartable>) {
    let channels: Vec<Channel> = servers
        .iter()
        .map(|s| Channel::from_shared(s.url.clone()).unwrap().connect_lazy())
        .collect();
    check_history_through(channels, 2, move |restart| {
        let victim = restart % servers.len();
        servers[victim].kill_and_restart();
        std::future::ready(())
    })
    .await;
}

/// The history of clients and watchers spread over `channels` (to frontends of one cluster)
/// through `faults` faults, fault `n` (from 1) made by `fault(n)` once a share of the calls has
/// been answered, and over when its future is done. A client whose call failed waits for that
/// before its next call; a watcher whose stream broke opens it again from the revision after the
/// last event it saw. See the test above for what is checked.
pub async fn check_history_through<F, Done>(channels: Vec<Channel>, faults: usize, mut fault: F)
where
    F: FnMut(usize) -> Done,
    Done: std::future::Future<Output = ()>,
{
    let channel = |i: usize| channels[i % channels.len()].clone();
    // Moved on after each restart; whoever saw a call fail waits for the next one.
    let (up, generation) = tokio::sync::watch::channel(0usize);
    let start = Instant::now();
    let history: Shared<Recorded> = Arc::default();
    let acknowledged: Shared<(i64, Option<u32>)> = Arc::default();
    let tried: Shared<Option<u32>> = Arc::default();
    let answered = Arc::new(Semaphore::new(0));

    let ready = Arc::new(Semaphore::new(0));
    let watchers: Vec<_> = (0..KEYS)
        .map(|k| {
            tokio::spawn(watch_through_restarts(
                channel(k as usize),
                k,
                generation.clone(),
                ready.clone(),
            ))
        })
        .collect();
    ready.acquire_many(KEYS).await.unwrap().forget();

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let mut kv = KvClient::new(channel(c));
        let mut generation = generation.clone();
        let (history, acknowledged, tried, answered) = (
            history.clone(),
            acknowledged.clone(),
            tried.clone(),
            answered.clone(),
        );
        clients.push(tokio::spawn(async move {
            for i in 0..CALLS_PER_CLIENT {
                let k = ((c * 7 + i * 3) as u32) % KEYS;
                let key = format!("lin/{k}");
                let value = (c * 1000 + i) as u32;
                let now = *generation.borrow_and_update();
                let began = start.elapsed().as_nanos();
                // The call, what it wrote if it was acknowledged, and whether it was.
                let (call, written, ok) = match i % 4 {
                    0 => {
                        push(&tried, k, Some(value));
                        match kv.put(put(&key, &value.to_string())).await {
                            Ok(r) => {
                                let rev = r.into_inner().header.unwrap().revision;
                                (Some(Call::Put(value)), Some((rev, Some(value))), true)
                            }
                            Err(_) => (Some(Call::Put(value)), None, false),
                        }
                    }
                    1 => match kv.range(get(&key)).await {
                        Ok(r) => {
                            let r = r.into_inner();
                            let seen = r
                                .kvs
                                .first()
                                .map(|kv| std::str::from_utf8(&kv.value).unwrap().parse().unwrap());
                            (Some(Call::Get(seen)), None, true)
                        }
                        // A read that failed did nothing.
                        Err(_) => (None, None, false),
                    },
                    2 => {
                        push(&tried, k, Some(value));
                        let from = ((c + 2) % CLIENTS * 1000 + i.saturating_sub(4)) as u32;
                        let t = swap(&key, from, value);
                        let cas = |swapped| Call::Cas {
                            from,
                            to: value,
                            swapped,
                        };
                        match kv.txn(t).await {
                            Ok(r) => {
                                let r = r.into_inner();
                                let rev = r.header.unwrap().revision;
                                let written = r.succeeded.then_some((rev, Some(value)));
                                (Some(cas(Some(r.succeeded))), written, true)
                            }
                            Err(_) => (Some(cas(None)), None, false),
                        }
                    }
                    _ => {
                        push(&tried, k, None);
                        match kv.delete_range(del(&key, "")).await {
                            Ok(r) => {
                                let r = r.into_inner();
                                let rev = r.header.unwrap().revision;
                                // Deleting nothing takes no revision and makes no event.
                                let written = (r.deleted > 0).then_some((rev, None));
                                (Some(Call::Delete), written, true)
                            }
                            Err(_) => (Some(Call::Delete), None, false),
                        }
                    }
                };
                let ended = if ok {
                    start.elapsed().as_nanos()
                } else {
                    NEVER
                };
                if let Some(call) = call {
                    push(&history, k, Recorded { call, began, ended });
                }
                if let Some(w) = written {
                    push(&acknowledged, k, w);
                }
                if ok {
                    answered.add_permits(1);
                } else {
                    generation.wait_for(|g| *g > now).await.unwrap();
                }
            }
        }));
    }
    for n in 1..=faults {
        let calls = CLIENTS * CALLS_PER_CLIENT / (faults + 1);
        answered.acquire_many(calls as u32).await.unwrap().forget();
        fault(n).await;
        up.send(n).unwrap();
    }
    for c in clients {
        c.await.unwrap();
    }
    let mut kv = KvClient::new(channel(0));
    for k in 0..KEYS {
        kv.put(put(&format!("lin/{k}"), &END.to_string()))
            .await
            .unwrap();
    }

    let history = std::mem::take(&mut *history.lock().unwrap());
    let unknown = history
        .values()
        .flatten()
        .filter(|r| r.ended == NEVER)
        .count();
    assert!(unknown > 0, "no call failed: no fault met the load");
    eprintln!(
        "{} calls through {faults} faults over {} servers, {unknown} of them failed (outcome \
         unknown)",
        history.values().map(Vec::len).sum::<usize>(),
        channels.len()
    );
    for (k, calls) in history.iter() {
        assert!(
            linearizable(calls),
            "the history of lin/{k} is not linearizable: {calls:?}"
        );
    }
    for (k, watcher) in watchers.into_iter().enumerate() {
        let k = k as u32;
        let mut seen = watcher.await.unwrap();
        assert_eq!(seen.pop().map(|(_, v)| v), Some(Some(END)));
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "lin/{k}: events out of order or twice: {seen:?}"
        );
        for write in acknowledged.lock().unwrap().remove(&k).unwrap_or_default() {
            assert!(seen.contains(&write), "lin/{k}: {write:?} never seen");
        }
        let tried = tried.lock().unwrap().remove(&k).unwrap_or_default();
        for (revision, value) in &seen {
            assert!(
                tried.contains(value),
                "lin/{k}: {value:?} at {revision} was never written"
            );
        }
    }
}
