//! Differential tests: the same requests to a fresh etcd and a fresh Strata, responses compared
//! field by field (cluster id, member id and raft term aside). Both start at revision 1, so every
//! revision must match too.

use crate::requests::*;
use crate::support::start_both;
use strata::proto::etcdserverpb::compare::{
    CompareResult as R, CompareTarget as T, TargetUnion as U,
};
use strata::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use strata::proto::etcdserverpb::*;

pub(crate) async fn differential(ops: Vec<Op>) {
    let (etcd, strata) = start_both();
    let mut e = etcd.kv().await;
    let mut s = strata.kv().await;
    for (i, op) in ops.iter().enumerate() {
        let want = run(&mut e, op).await;
        let got = run(&mut s, op).await;
        assert_eq!(got, want, "step {i} differs: {op:?}");
    }
}

fn keys(n: usize) -> Vec<Op> {
    (0..n)
        .map(|i| put(&format!("k{i:02}"), &format!("v{}", (i * 7) % n)).into())
        .collect()
}

#[tokio::test]
async fn put_and_get() {
    differential(vec![
        get("a").into(),
        put("a", "1").into(),
        put("a", "2").into(),
        PutRequest {
            prev_kv: true,
            ..put("a", "3")
        }
        .into(),
        PutRequest {
            prev_kv: true,
            ..put("new", "x")
        }
        .into(),
        get("a").into(),
        put("b", "").into(),
        put("\u{0}bin\u{1}", "\u{0}").into(),
        range("a", "c").into(),
        range("a", "\u{0}").into(),
        range("\u{0}", "\u{0}").into(),
        range("c", "a").into(),
        range("a", "a").into(),
        get("missing").into(),
    ])
    .await;
}

#[tokio::test]
async fn range_limit_count_and_projection() {
    let mut ops = keys(10);
    for limit in [-1, 0, 1, 3, 9, 10, 11] {
        ops.push(
            RangeRequest {
                limit,
                ..range("k", "l")
            }
            .into(),
        );
    }
    ops.extend([
        RangeRequest {
            count_only: true,
            ..range("k", "l")
        }
        .into(),
        RangeRequest {
            count_only: true,
            limit: 2,
            ..range("k", "l")
        }
        .into(),
        RangeRequest {
            keys_only: true,
            limit: 4,
            ..range("k", "l")
        }
        .into(),
        RangeRequest {
            serializable: true,
            ..range("k03", "k06")
        }
        .into(),
    ]);
    differential(ops).await;
}

#[tokio::test]
async fn range_sorting() {
    let mut ops = keys(8);
    // Distinct versions and create revisions, so that no sort has ties.
    ops.push(put("k03", "again").into());
    ops.push(put("k03", "and again").into());
    ops.push(put("k06", "once more").into());
    for target in [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ] {
        for order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
            for limit in [0, 3] {
                ops.push(
                    RangeRequest {
                        sort_target: target as i32,
                        sort_order: order as i32,
                        limit,
                        ..range("k", "l")
                    }
                    .into(),
                );
            }
        }
    }
    differential(ops).await;
}

#[tokio::test]
async fn range_revision_filters() {
    let mut ops = keys(6);
    ops.push(put("k01", "x").into());
    ops.push(put("k04", "y").into());
    for (min_mod, max_mod, min_create, max_create) in [
        (4, 0, 0, 0),
        (0, 4, 0, 0),
        (3, 8, 0, 0),
        (0, 0, 3, 0),
        (0, 0, 0, 4),
        (0, 0, 3, 5),
        (8, 0, 0, 3),
    ] {
        for limit in [0, 2] {
            ops.push(
                RangeRequest {
                    min_mod_revision: min_mod,
                    max_mod_revision: max_mod,
                    min_create_revision: min_create,
                    max_create_revision: max_create,
                    limit,
                    ..range("k", "l")
                }
                .into(),
            );
        }
    }
    differential(ops).await;
}

#[tokio::test]
async fn historical_reads_and_compaction() {
    let mut ops: Vec<Op> = vec![
        put("a", "1").into(),
        put("a", "2").into(),
        put("b", "1").into(),
        del("a", "").into(),
        put("a", "3").into(),
        put("c", "1").into(),
    ];
    for revision in [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8] {
        ops.push(
            RangeRequest {
                revision,
                ..range("a", "z")
            }
            .into(),
        );
    }
    ops.extend([
        compact(8, false).into(),
        compact(3, false).into(),
        compact(3, false).into(),
        compact(2, true).into(),
    ]);
    for revision in [2, 3, 4, 7] {
        ops.push(
            RangeRequest {
                revision,
                ..range("a", "z")
            }
            .into(),
        );
    }
    ops.extend([
        compact(7, true).into(),
        RangeRequest {
            revision: 7,
            ..range("a", "z")
        }
        .into(),
        put("a", "4").into(),
        RangeRequest {
            revision: 7,
            ..get("a")
        }
        .into(),
    ]);
    differential(ops).await;
}

#[tokio::test]
async fn put_options_and_errors() {
    differential(vec![
        PutRequest {
            ignore_value: true,
            ..put("a", "")
        }
        .into(),
        PutRequest {
            ignore_lease: true,
            ..put("a", "v")
        }
        .into(),
        put("a", "v1").into(),
        PutRequest {
            ignore_value: true,
            prev_kv: true,
            ..put("a", "")
        }
        .into(),
        PutRequest {
            ignore_value: true,
            ..put("a", "x")
        }
        .into(),
        PutRequest {
            ignore_lease: true,
            lease: 5,
            ..put("a", "x")
        }
        .into(),
        PutRequest {
            ignore_lease: true,
            ..put("a", "v2")
        }
        .into(),
        PutRequest {
            lease: 12345,
            ..put("a", "x")
        }
        .into(),
        put("", "x").into(),
        get("").into(),
        del("", "").into(),
        get("a").into(),
    ])
    .await;
}

#[tokio::test]
async fn delete_ranges() {
    let mut ops = keys(6);
    ops.extend([
        del("nothing", "").into(),
        DeleteRangeRequest {
            prev_kv: true,
            ..del("k01", "")
        }
        .into(),
        del("k01", "").into(),
        DeleteRangeRequest {
            prev_kv: true,
            ..del("k02", "k04")
        }
        .into(),
        del("k9", "k0").into(),
        range("k", "l").into(),
        put("k02", "back").into(),
        RangeRequest {
            revision: 8,
            ..range("k", "l")
        }
        .into(),
        DeleteRangeRequest {
            prev_kv: true,
            ..del("k04", "\u{0}")
        }
        .into(),
        range("\u{0}", "\u{0}").into(),
    ]);
    differential(ops).await;
}

fn all_compares(key: &str) -> Vec<Compare> {
    let mut out = Vec::new();
    for result in [R::Equal, R::Greater, R::Less, R::NotEqual] {
        out.push(cmp(key, T::Version, result, U::Version(2)));
        out.push(cmp(key, T::Create, result, U::CreateRevision(2)));
        out.push(cmp(key, T::Mod, result, U::ModRevision(3)));
        out.push(cmp(key, T::Value, result, U::Value(b("v2"))));
        out.push(cmp(key, T::Lease, result, U::Lease(0)));
    }
    out
}

#[tokio::test]
async fn txn_compares() {
    let mut ops: Vec<Op> = vec![put("a", "v1").into(), put("a", "v2").into()];
    // Each compare alone, on an existing and a missing key; the branch taken tells its result.
    for key in ["a", "missing"] {
        for c in all_compares(key) {
            ops.push(txn(vec![c], vec![op::get("a")], vec![op::get("missing")]).into());
        }
    }
    // A wrong kind of operand for the target, and compares over ranges.
    ops.extend([
        txn(
            vec![cmp("a", T::Version, R::Equal, U::Value(b("x")))],
            vec![op::get("a")],
            vec![],
        )
        .into(),
        put("b", "v2").into(),
        txn(
            vec![Compare {
                range_end: b("c"),
                ..cmp("a", T::Value, R::Equal, U::Value(b("v2")))
            }],
            vec![op::put("ok", "1")],
            vec![op::put("ok", "0")],
        )
        .into(),
        txn(
            vec![Compare {
                range_end: b("c"),
                ..cmp("a", T::Version, R::Equal, U::Version(2))
            }],
            vec![op::put("ok", "1")],
            vec![op::put("ok", "0")],
        )
        .into(),
        txn(
            vec![Compare {
                range_end: b("\u{0}"),
                ..cmp("x", T::Create, R::Equal, U::CreateRevision(0))
            }],
            vec![op::get("ok")],
            vec![],
        )
        .into(),
    ]);
    differential(ops).await;
}

#[tokio::test]
async fn txn_ops_nesting_and_revisions() {
    differential(vec![
        put("a", "1").into(),
        // Read-only txn: no new revision.
        txn(vec![], vec![op::get("a"), op::get("b")], vec![]).into(),
        // Reads see the txn's own writes; one revision for all of it.
        txn(
            vec![],
            vec![
                op::get("a"),
                op::put("a", "2"),
                op::get("a"),
                op::put("b", "1"),
                op::del("zz", ""),
                op::range(range("a", "z")),
            ],
            vec![],
        )
        .into(),
        // A write txn whose branch writes nothing takes no revision.
        txn(
            vec![cmp("a", T::Value, R::Equal, U::Value(b("nope")))],
            vec![op::put("c", "1")],
            vec![op::get("a"), op::del("nothing", "")],
        )
        .into(),
        // Nested txns: inner compares see the state before the outer txn.
        txn(
            vec![],
            vec![
                op::put("a", "3"),
                op::txn(txn(
                    vec![cmp("a", T::Value, R::Equal, U::Value(b("2")))],
                    vec![op::put("inner", "then"), op::get("a")],
                    vec![op::put("inner", "else")],
                )),
                op::txn(txn(vec![], vec![], vec![])),
            ],
            vec![],
        )
        .into(),
        range("a", "z").into(),
        // Historical reads inside a txn, and their errors.
        txn(
            vec![],
            vec![op::range(RangeRequest {
                revision: 2,
                ..get("a")
            })],
            vec![],
        )
        .into(),
        txn(
            vec![],
            vec![op::range(RangeRequest {
                revision: 99,
                ..get("a")
            })],
            vec![],
        )
        .into(),
        // ignore_value inside a txn on a missing key fails the whole txn.
        txn(
            vec![],
            vec![
                op::put("x", "1"),
                request_op::Request::RequestPut(PutRequest {
                    ignore_value: true,
                    ..put("missing", "")
                }),
            ],
            vec![],
        )
        .into(),
        get("x").into(),
    ])
    .await;
}

#[tokio::test]
async fn txn_validation_errors() {
    let many = |n: usize| {
        (0..n)
            .map(|i| op::put(&format!("k{i}"), "v"))
            .collect::<Vec<_>>()
    };
    differential(vec![
        txn(vec![], vec![op::put("a", "1"), op::put("a", "2")], vec![]).into(),
        txn(vec![], vec![op::put("b", "1"), op::del("a", "c")], vec![]).into(),
        txn(vec![], vec![op::del("a", "c"), op::del("b", "d")], vec![]).into(),
        txn(vec![], vec![op::put("a", "1")], vec![op::put("a", "2")]).into(),
        txn(
            vec![],
            vec![
                op::put("a", "1"),
                op::txn(txn(vec![], vec![op::put("a", "2")], vec![])),
            ],
            vec![],
        )
        .into(),
        txn(
            vec![],
            vec![op::txn(txn(
                vec![],
                vec![op::put("a", "1")],
                vec![op::put("a", "2")],
            ))],
            vec![],
        )
        .into(),
        txn(vec![], many(128), vec![]).into(),
        txn(vec![], many(129), vec![]).into(),
        txn(
            vec![cmp("", T::Version, R::Equal, U::Version(0))],
            vec![],
            vec![],
        )
        .into(),
        txn(vec![], vec![op::get("")], vec![]).into(),
        TxnRequest {
            success: vec![RequestOp { request: None }],
            ..Default::default()
        }
        .into(),
        range("a", "z").into(),
    ])
    .await;
}

#[tokio::test]
async fn request_size_limit() {
    let big = "x".repeat(1_600_000);
    differential(vec![
        put("small", "x").into(),
        put("big", &big).into(),
        get("big").into(),
        put("fits", &"y".repeat(1_500_000)).into(),
        RangeRequest {
            keys_only: true,
            ..get("fits")
        }
        .into(),
    ])
    .await;
}
