//! PostgreSQL failing over by itself: a pg_auto_failover formation (a monitor and two nodes with
//! synchronous replication, `scripts/pg-auto-failover`) under two frontends given both nodes with
//! `target_session_attrs=read-write`, with writers, a linearizability history with watchers, and a
//! lease kept alive on them. The primary is killed, the primary hangs (SIGSTOP until the monitor
//! has failed over, then resumed: it must come back as the secondary), the secondary is killed;
//! each twice (`STRATA_FAILOVER_ROUNDS`). Checked: no acknowledged write lost, every failure a
//! retryable `Unavailable`, the history linearizable, every watcher sees every acknowledged write
//! of its key once and in order, and the lease kept alive through it all does not expire.
//! Measured: from each fault to the first write acknowledged after it.

use crate::frontends::{frontend_on, Writers};
use crate::linearizability::check_history_through;
use crate::requests::*;
use crate::support::{on_postgres, project_script};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata::proto::etcdserverpb::kv_client::KvClient;
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, PutRequest,
};
use tonic::transport::Channel;

/// A formation in a directory of its own, stopped when dropped.
struct Formation {
    dir: tempfile::TempDir,
    url: String,
}

impl Formation {
    fn start() -> Formation {
        let dir = tempfile::tempdir().unwrap();
        let url = run("start", dir.path(), None);
        Formation { dir, url }
    }

    /// Runs `action` of the script on this formation (on `node` if named), from a blocking
    /// thread.
    async fn run(self: &Arc<Self>, action: &'static str, node: Option<String>) -> String {
        let formation = self.clone();
        tokio::task::spawn_blocking(move || run(action, formation.dir.path(), node.as_deref()))
            .await
            .unwrap()
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        run("stop", self.dir.path(), None);
    }
}

/// The last line `scripts/pg-auto-failover ACTION DIR [NODE]` printed; fails the test if it
/// failed.
fn run(action: &str, dir: &std::path::Path, node: Option<&str>) -> String {
    let dir = dir.display().to_string();
    let args: Vec<&str> = [action, dir.as_str()].into_iter().chain(node).collect();
    let out = project_script("pg-auto-failover", &args);
    out.lines().last().unwrap_or("").to_owned()
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillPrimary,
    FreezePrimary,
    KillSecondary,
}

const FAULTS: [Fault; 3] = [
    Fault::KillPrimary,
    Fault::FreezePrimary,
    Fault::KillSecondary,
];

/// How many times each fault is made: 2, or `STRATA_FAILOVER_ROUNDS`.
fn rounds() -> usize {
    std::env::var("STRATA_FAILOVER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2)
}

/// How long writes may take to resume after a fault before the test fails: the formation fails
/// over in about 5 s.
const RESUME_DEADLINE: Duration = Duration::from_secs(60);

/// Puts until a put is acknowledged; every failure meanwhile must be a retryable Unavailable.
async fn first_acknowledged(kv: &mut KvClient<Channel>, key: &str) -> Instant {
    let began = Instant::now();
    loop {
        match kv.put(put(key, "v")).await {
            Ok(_) => return Instant::now(),
            Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        }
        assert!(
            began.elapsed() < RESUME_DEADLINE,
            "no write acknowledged within {RESUME_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps lease `id` alive through `leases` every second until `stop`, whatever fails meanwhile.
/// Returns what each keep-alive got, with when it was sent (for the story of a lease that
/// expired).
async fn keep_alive(
    mut leases: LeaseClient<Channel>,
    id: i64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<String> {
    let began = Instant::now();
    let mut story = Vec::new();
    while !*stop.borrow() {
        let sent = began.elapsed();
        let request = tokio_stream::once(LeaseKeepAliveRequest { id });
        let answer = match leases.lease_keep_alive(request).await {
            Ok(answers) => match answers.into_inner().message().await {
                Ok(Some(answer)) => format!("TTL {}", answer.ttl),
                other => format!("{other:?}"),
            },
            Err(s) => format!("{:?} {}", s.code(), s.message()),
        };
        story.push(format!(
            "{sent:.1?} (answered {:.1?}): {answer}",
            began.elapsed()
        ));
        let _ = tokio::time::timeout(Duration::from_secs(1), stop.changed()).await;
    }
    story
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_auto_failover_loses_nothing_and_keeps_leases() {
    if !on_postgres() {
        eprintln!("runs in the PostgreSQL pass (scripts/test starts it)");
        return;
    }
    let formation = Arc::new(Formation::start());
    let a = frontend_on(&formation.url);
    let b = frontend_on(&formation.url);
    let (kv_a, kv_b) = (a.kv().await, b.kv().await);

    let ttl = 15;
    let lease = LeaseClient::new(a.channel().await)
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    kv_a.clone()
        .put(PutRequest {
            lease,
            ..put("kept", "alive")
        })
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let keeper = tokio::spawn(keep_alive(
        LeaseClient::new(b.channel().await),
        lease,
        stopped,
    ));

    let mut writers = Writers::start(&[kv_a.clone(), kv_b.clone()], kv_b.clone());
    writers.wait_for(0, 100).await;

    let resumed: Arc<Mutex<Vec<(Fault, Duration)>>> = Arc::default();
    let channels = vec![a.channel().await, b.channel().await];
    let (record, probe, faulty) = (resumed.clone(), kv_a.clone(), formation.clone());
    check_history_through(channels, FAULTS.len() * rounds(), move |n| {
        let (formation, record, mut probe) = (faulty.clone(), record.clone(), probe.clone());
        async move {
            let fault = FAULTS[(n - 1) % FAULTS.len()];
            let began = Instant::now();
            match fault {
                Fault::KillPrimary => formation.run("kill", None).await,
                Fault::FreezePrimary => formation.run("freeze", None).await,
                Fault::KillSecondary => {
                    // "node2 1234": the secondary's name and its postmaster's pid.
                    let secondary = formation.run("secondary", None).await;
                    let node = secondary.split_whitespace().next().unwrap().to_owned();
                    formation.run("kill", Some(node)).await
                }
            };
            let at = first_acknowledged(&mut probe, &format!("probe/{n}")).await;
            record.lock().unwrap().push((fault, at - began));
            if let Fault::FreezePrimary = fault {
                formation.run("thaw", None).await;
            }
            formation.run("wait", None).await;
        }
    })
    .await;

    let (failed, _, _) = writers.stop_and_check_kept().await;
    stop.send_replace(true);
    let story = keeper.await.unwrap();
    let mut leases = LeaseClient::new(b.channel().await);
    let mut attempts = 0;
    let left = loop {
        let asked = LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        };
        match leases.lease_time_to_live(asked).await {
            Ok(left) => break left.into_inner(),
            // As above: a connection that died under a fault fails one call.
            Err(s) if s.code() == tonic::Code::Unavailable && attempts < 20 => attempts += 1,
            Err(s) => panic!("{s:?}"),
        }
    };
    let leases_logged = |s: &crate::support::Strata| -> String {
        let log = s.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("lease")).collect();
        lines.join("\n")
    };
    assert!(
        left.ttl > 0,
        "the lease kept alive expired: {left:?}\nits keep-alives:\n{}\nfaults: {:?}\n\
         a:\n{}\nb:\n{}",
        story.join("\n"),
        resumed.lock().unwrap(),
        leases_logged(&a),
        leases_logged(&b)
    );
    assert_eq!(left.keys, vec![b"kept".to_vec()]);

    let resumed = resumed.lock().unwrap();
    for (fault, took) in resumed.iter() {
        eprintln!("{fault:?}: first write acknowledged {took:?} after the fault");
    }
    eprintln!("{failed} writes failed with Unavailable across the faults");
    assert!(failed > 0, "the writers met the failovers");
}
