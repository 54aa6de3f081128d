//! The plain HTTP endpoints etcd serves beside gRPC on its client port: `/health`, `/livez`,
//! `/readyz` (each check also at `/livez/<check>` and `/readyz/<check>`), `/version` and `/metrics`;
//! and on its metrics port, all of them but `/version`.

use super::{Context, ETCD_VERSION};
use crate::proto::etcdserverpb::RangeRequest;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Everything etcd serves over plain HTTP on a client URL.
pub fn routes(context: Context) -> Router {
    probes_and_metrics(context).route("/version", get(version))
}

/// What etcd serves on `--listen-metrics-urls`: the metrics and the health probes.
pub fn probes_and_metrics(context: Context) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    for (root, checks) in [("/livez", LIVEZ), ("/readyz", READYZ)] {
        router = router.route(
            root,
            get(move |ctx, query| run_checks(ctx, query, checks.to_vec())),
        );
        for &check in checks {
            router = router.route(
                &format!("{root}/{check}"),
                get(move |ctx, query| run_checks(ctx, query, vec![check])),
            );
        }
    }
    router.with_state(context)
}

type State = axum::extract::State<Context>;

/// A request's query string, pair by pair (`?verbose` is `("verbose", "")`; names may repeat).
type Pairs = axum::extract::Query<Vec<(String, String)>>;

fn has(query: &[(String, String)], name: &str) -> bool {
    query.iter().any(|(k, _)| k == name)
}

/// A one-key read, as etcd's health checks make it.
async fn read_check(context: &Context, serializable: bool) -> Result<(), String> {
    let probe = RangeRequest {
        key: bytes::Bytes::from_static(b"health"),
        keys_only: true,
        limit: 1,
        serializable,
        ..Default::default()
    };
    context
        .store
        .range(&probe)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `{"health":"true","reason":""}`, or 503 with the reason: a single member always has a leader and
/// no alarm can be raised yet, so the read is what can fail.
async fn health(
    axum::extract::State(context): State,
    axum::extract::Query(query): Pairs,
) -> Response {
    let serializable = query
        .iter()
        .any(|(k, v)| k == "serializable" && v == "true");
    let (status, healthy, reason) = match read_check(&context, serializable).await {
        Ok(()) => (StatusCode::OK, "true", String::new()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "false",
            format!("RANGE ERROR:{e}"),
        ),
    };
    // In etcd's order of the fields, each value written by serde_json (a reason may hold quotes,
    // backslashes or newlines).
    let body = format!(
        "{{\"health\":{},\"reason\":{}}}",
        serde_json::Value::from(healthy),
        serde_json::Value::from(reason)
    );
    (status, body).into_response()
}

const LIVEZ: &[&str] = &["serializable_read"];
const READYZ: &[&str] = &[
    "data_corruption",
    "linearizable_read",
    "non_learner",
    "serializable_read",
];

/// Runs the named checks (less those in `?exclude=`): "ok", the per-check lines with `?verbose`,
/// or 503 with them when one fails.
async fn run_checks(
    axum::extract::State(context): State,
    axum::extract::Query(query): Pairs,
    checks: Vec<&str>,
) -> Response {
    let excluded: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut report = String::new();
    let mut failed = false;
    for check in checks.into_iter().filter(|c| !excluded.contains(c)) {
        let outcome = match check {
            "serializable_read" => read_check(&context, true).await,
            "linearizable_read" => read_check(&context, false).await,
            // No corruption alarm exists yet, and a Strata member is never a learner.
            _ => Ok(()),
        };
        match outcome {
            Ok(()) => report.push_str(&format!("[+]{check} ok\n")),
            Err(e) => {
                failed = true;
                report.push_str(&format!("[-]{check} failed: {e}\n"));
            }
        }
    }
    if failed {
        return (StatusCode::SERVICE_UNAVAILABLE, report).into_response();
    }
    let body = if has(&query, "verbose") {
        format!("{report}ok\n")
    } else {
        "ok\n".to_owned()
    };
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn version() -> Response {
    // In etcd's order of the fields, each value written by serde_json.
    let body = format!(
        "{{\"etcdserver\":{},\"etcdcluster\":{}}}",
        serde_json::Value::from(ETCD_VERSION),
        serde_json::Value::from(super::cluster_version())
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// etcd's metrics: the process-wide ones and those read off the store now, under etcd's names, in
/// OpenMetrics' text format (which Prometheus asks for, and reads as it reads etcd's).
async fn metrics(axum::extract::State(context): State) -> Response {
    let store = &context.store;
    let usage = store.usage();
    let revision = store.revision();
    let mut now = crate::metrics::Exposition::new();
    let gauges: [(&str, &str, i64); 12] = [
        (
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not",
            1,
        ),
        (
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise",
            1,
        ),
        (
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise",
            0,
        ),
        (
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes",
            context.quota_bytes as i64,
        ),
        (
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes",
            usage.size,
        ),
        (
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes",
            usage.in_use,
        ),
        (
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store",
            revision,
        ),
        (
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store",
            store.compacted(),
        ),
        (
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys",
            store.key_count() as i64,
        ),
        // A write is a proposal here: every revision was committed and applied, none waits.
        (
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed",
            revision,
        ),
        (
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied",
            revision,
        ),
        (
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit",
            0,
        ),
    ];
    for (name, help, value) in gauges {
        now.gauge(name, help, value);
    }
    // A member that leads from its start has seen one leader change, its own election.
    now.counter(
        "etcd_server_leader_changes_seen",
        "The number of leader changes seen",
        1,
    );
    now.labelled(
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version",
        "server_version",
        ETCD_VERSION.to_owned(),
    );
    now.labelled(
        "etcd_cluster_version",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
        "cluster_version",
        super::minor_version(),
    );
    now.labelled(
        "etcd_server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID",
        "server_id",
        format!("{:x}", store.identity().member_id),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        now.render(),
    )
        .into_response()
}
