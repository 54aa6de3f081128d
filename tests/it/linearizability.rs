//! Linearizability: concurrent clients put, get and compare-and-swap a few keys while their calls are
//! recorded with the moments they began and ended; a checker written here (in the manner of
//! porcupine: Wing & Gong's search with memoised states, one key at a time) then looks for an order
//! of the calls that respects real time and a single register's semantics. Watchers running
//! alongside must see exactly the committed writes of their key, in revision order.

use crate::requests::*;
use crate::support::{Process, Strata};
use crate::watch::{create, Stream};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use strata::proto::etcdserverpb::compare::{
    CompareResult as R, CompareTarget as T, TargetUnion as U,
};
use strata::proto::etcdserverpb::watch_request::RequestUnion;

/// What a call did to, or saw of, one register.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    Put(u32),
    /// The value read (None: no key).
    Get(Option<u32>),
    /// Compare-and-swap from `from` to `to`, and whether it swapped.
    Cas {
        from: u32,
        to: u32,
        swapped: bool,
    },
}

/// A call on one key, from its invocation to its response (in nanoseconds since the start).
#[derive(Clone, Debug)]
struct Recorded {
    call: Call,
    began: u128,
    ended: u128,
}

impl Call {
    /// The register after this call from `state`, if the call could have returned what it did.
    fn step(&self, state: Option<u32>) -> Option<Option<u32>> {
        match *self {
            Call::Put(v) => Some(Some(v)),
            Call::Get(seen) => (seen == state).then_some(state),
            Call::Cas { from, to, swapped } => match (state == Some(from), swapped) {
                (true, true) => Some(Some(to)),
                (false, false) => Some(state),
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
    // Two swaps from the same value cannot both succeed.
    assert!(!linearizable(&[
        r(Call::Put(1), 0, 1),
        r(
            Call::Cas {
                from: 1,
                to: 2,
                swapped: true
            },
            2,
            10
        ),
        r(
            Call::Cas {
                from: 1,
                to: 3,
                swapped: true
            },
            2,
            10
        ),
    ]));
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
                        let t = txn(
                            vec![cmp(
                                &key,
                                T::Value,
                                R::Equal,
                                U::Value(b(&from.to_string())),
                            )],
                            vec![op::put(&key, &value.to_string())],
                            vec![],
                        );
                        let r = kv.txn(t).await.unwrap().into_inner();
                        let swapped = r.succeeded;
                        let rev = r.header.unwrap().revision;
                        (
                            Call::Cas {
                                from,
                                to: value,
                                swapped,
                            },
                            swapped.then_some(rev),
                        )
                    }
                };
                let ended = start.elapsed().as_nanos();
                history
                    .lock()
                    .unwrap()
                    .entry(k)
                    .or_default()
                    .push(Recorded { call, began, ended });
                if let Some(rev) = written {
                    writes
                        .lock()
                        .unwrap()
                        .entry(k)
                        .or_default()
                        .push((rev, value));
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
            Call::Cas { swapped, .. } => Some(swapped),
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
