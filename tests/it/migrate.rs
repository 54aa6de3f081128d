//! `strata migrate`: a running etcd (or Strata) copied into a new store while it takes writes,
//! then cut over. After it, Strata on the copy answers every read at every kept revision, the
//! leases and the users as the source does, and goes on from the source's revision.

use crate::requests::*;
use crate::snapshot::{history, same_answers};
use crate::support::{
    enable_auth, free_port, on_postgres, postgres_database, root_token, Etcd, Process, Strata,
};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use strata::proto::etcdserverpb::auth_client::AuthClient;
use strata::proto::etcdserverpb::lease_client::LeaseClient;
use strata::proto::etcdserverpb::request_op::Request;
use strata::proto::etcdserverpb::*;

/// How long a migration may take to say what a test waits for.
const PATIENCE: Duration = Duration::from_secs(60);

/// A `strata migrate` process, its standard error read line by line.
pub(crate) struct Migration {
    /// None once waited for.
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    said: Vec<String>,
}

impl Migration {
    /// Starts copying `source` into `target` (the arguments naming the new store).
    pub(crate) fn start(source: &Process, target: &[String], extra: &[&str]) -> Migration {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["migrate", "--from", &source.endpoint()])
            .args(target)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("strata migrate starts");
        let stderr = child.stderr.take().expect("piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        Migration {
            child: Some(child),
            lines,
            said: Vec::new(),
        }
    }

    /// Waits for a line containing `text`.
    pub(crate) fn wait_for(&mut self, text: &str) {
        while !self.said.iter().any(|l| l.contains(text)) {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => self.said.push(line),
                Err(_) => panic!(
                    "the migration never said {text:?}; it said {:#?}",
                    self.said
                ),
            }
        }
    }

    /// Waits for the migration to end by itself, however it ends; returns whether it succeeded
    /// and what it said on standard error.
    fn wait(mut self) -> (bool, String) {
        let child = self.child.take().expect("not waited for yet");
        let output = child.wait_with_output().expect("the migration ends");
        let mut said = std::mem::take(&mut self.said);
        said.extend(self.lines.iter());
        (output.status.success(), said.join("\n"))
    }

    /// Waits for the migration to end by itself; returns what it printed on standard output.
    fn finish(mut self) -> (String, Vec<String>) {
        let child = self.child.take().expect("not waited for yet");
        let output = child.wait_with_output().expect("the migration ends");
        // Until the reader has passed on the last line: it ends at the pipe's end.
        self.said.extend(self.lines.iter());
        assert!(output.status.success(), "{output:?} {:#?}", self.said);
        (
            String::from_utf8(output.stdout).unwrap(),
            std::mem::take(&mut self.said),
        )
    }

    /// SIGTERM: cut over.
    pub(crate) fn cut_over(self) -> (String, Vec<String>) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        self.finish()
    }
}

impl Drop for Migration {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The arguments of `strata migrate` that name a new store in `dir`: on the backend the tests run
/// on, or on the other one.
pub(crate) fn target(dir: &Path, postgres: bool) -> Vec<String> {
    if postgres {
        vec!["--backend".into(), postgres_database(dir)]
    } else {
        vec!["--data-dir".into(), dir.join("data").display().to_string()]
    }
}

/// Changes of every kind, written while the migration follows the source: puts, a txn, a range
/// delete, a lease granted with keys, lease 42 revoked (deleting its key), a lease with no keys.
/// Returns the last revision.
async fn more_history(server: &Process) -> i64 {
    let mut kv = server.kv().await;
    let mut lease = LeaseClient::new(server.channel().await);
    for i in 0..30 {
        kv.put(put(&format!("live{}", i % 4), &format!("w{i}")))
            .await
            .unwrap();
    }
    kv.txn(txn(
        Vec::new(),
        vec![
            Request::RequestPut(put("t1", "again")),
            Request::RequestDeleteRange(DeleteRangeRequest {
                key: "k1".into(),
                ..Default::default()
            }),
            Request::RequestPut(put("t3", "c")),
        ],
        Vec::new(),
    ))
    .await
    .unwrap();
    kv.delete_range(DeleteRangeRequest {
        key: "live".into(),
        range_end: "livf".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    lease
        .lease_grant(LeaseGrantRequest { ttl: 500, id: 77 })
        .await
        .unwrap();
    for key in ["held1", "held2"] {
        kv.put(PutRequest {
            lease: 77,
            ..put(key, "x")
        })
        .await
        .unwrap();
    }
    lease
        .lease_revoke(LeaseRevokeRequest { id: 42 })
        .await
        .unwrap();
    lease
        .lease_grant(LeaseGrantRequest { ttl: 90, id: 99 })
        .await
        .unwrap();
    kv.put(put("last", "1"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision
}

/// Every lease with its granted TTL and keys.
async fn leases(server: &Process) -> Vec<(i64, i64, Vec<bytes::Bytes>)> {
    let mut lease = LeaseClient::new(server.channel().await);
    let mut all = Vec::new();
    let ids = lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases;
    for id in ids {
        let ttl = lease
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: id.id,
                keys: true,
            })
            .await
            .unwrap()
            .into_inner();
        // etcd lists a lease's keys in no particular order.
        let mut keys = ttl.keys;
        keys.sort();
        all.push((id.id, ttl.granted_ttl, keys));
    }
    all.sort();
    all
}

/// What the source and the copy must share after the move.
async fn same_after_move(source: &Process, copy: &Process, head: i64) {
    same_answers(source, copy, head).await;
    assert_eq!(leases(copy).await, leases(source).await);
    assert_eq!(leases(copy).await.len(), 2, "leases 77 and 99");
    let next = copy.kv().await.put(put("after", "move")).await.unwrap();
    assert_eq!(next.into_inner().header.unwrap().revision, head + 1);
}

/// Strata on the copy in `dir`.
pub(crate) fn serve_copy(dir: &Path, postgres: bool) -> Strata {
    if postgres {
        Strata::frontend(dir, "copy")
    } else {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command.arg("--data-dir").arg(dir.join("data"));
        Strata::start_command(command)
    }
}

#[tokio::test]
async fn a_live_etcd_moves_with_its_revisions() {
    let etcd = Etcd::start();
    history(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let mut migration = Migration::start(&etcd, &target(dir.path(), on_postgres()), &[]);
    migration.wait_for("following the source from revision");
    let head = more_history(&etcd).await;

    let (printed, said) = migration.cut_over();
    assert!(
        printed.contains(&format!("up to revision {head} ")),
        "{printed}"
    );
    assert!(printed.contains("with 2 leases"), "{printed}");
    // Debian's etcd 3.4 has no AuthStatus: the migration says it cannot check the users.
    let status = AuthClient::new(etcd.channel().await)
        .auth_status(AuthStatusRequest {})
        .await;
    assert_eq!(
        said.iter().any(|l| l.contains("cannot tell whether users")),
        status.is_err_and(|s| s.code() == tonic::Code::Unimplemented),
        "{said:#?}"
    );
    let copy = serve_copy(dir.path(), on_postgres());
    same_after_move(&etcd, &copy, head).await;
}

/// Strata to Strata, from the backend the tests run on to the other one: the way to move from the
/// embedded store to PostgreSQL (or back) without stopping. Users added meanwhile come along.
#[tokio::test]
async fn a_live_strata_moves_to_the_other_backend() {
    let source = Strata::start();
    history(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let postgres = !on_postgres();
    let mut migration = Migration::start(&source, &target(dir.path(), postgres), &[]);
    migration.wait_for("following the source from revision");
    let head = more_history(&source).await;
    let mut auth = AuthClient::new(source.channel().await);
    auth.user_add(AuthUserAddRequest {
        name: "bob".into(),
        password: "pw2".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let (printed, said) = migration.cut_over();
    assert!(
        printed.contains(&format!("up to revision {head} ")),
        "{printed}"
    );
    assert!(
        said.iter().any(|l| l.contains("users or roles changed")),
        "{said:#?}"
    );
    let copy = serve_copy(dir.path(), postgres);
    let users = |server: &Process| {
        let endpoint = server.endpoint();
        async move {
            let mut auth = AuthClient::connect(endpoint).await.unwrap();
            let list = auth.user_list(AuthUserListRequest {}).await.unwrap();
            list.into_inner().users
        }
    };
    assert_eq!(users(&copy).await, ["alice", "bob"]);
    same_after_move(&source, &copy, head).await;
}

/// With `--cutover` the migration stops by itself once it has caught up.
#[tokio::test]
async fn cutover_stops_once_caught_up() {
    let etcd = Etcd::start();
    let head = history(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let migration = Migration::start(&etcd, &target(dir.path(), on_postgres()), &["--cutover"]);
    let (printed, said) = migration.finish();
    assert!(
        printed.contains(&format!("up to revision {head} ")),
        "{printed}"
    );
    assert!(
        said.iter()
            .any(|l| l.contains(&format!("source's revision {head}"))),
        "{said:#?}"
    );
    let copy = serve_copy(dir.path(), on_postgres());
    same_answers(&etcd, &copy, head).await;
}

/// The source goes away under the migration (killed, then started again on the same data and
/// port): the migration opens its watch again from the copy's head and carries on, missing
/// nothing and repeating nothing.
#[tokio::test]
async fn a_migration_outlives_a_restart_of_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let serve = || Strata::start_in(dir.path(), &["--listen-client-urls", &url]);
    let mut source = serve();
    history(&source).await;
    let copy_dir = tempfile::tempdir().unwrap();
    let mut migration = Migration::start(&source, &target(copy_dir.path(), on_postgres()), &[]);
    migration.wait_for("following the source from revision");
    source.kv().await.put(put("before", "kill")).await.unwrap();
    source.kill();
    let source = serve();
    let head = more_history(&source).await;

    let (printed, said) = migration.cut_over();
    assert!(
        printed.contains(&format!("up to revision {head} ")),
        "{printed}"
    );
    assert!(
        said.iter().any(|l| l.contains("opening it again")),
        "{said:#?}"
    );
    let copy = serve_copy(copy_dir.path(), on_postgres());
    same_after_move(&source, &copy, head).await;
}

/// A source with auth on is read as the user `--from-user` names; without it the migration stops
/// at once, saying why. The copy has auth on, with the same users.
#[tokio::test]
async fn a_source_with_auth_on_is_read_as_root() {
    let source = Strata::start();
    let head = history(&source).await;
    enable_auth(&source).await;

    let dir = tempfile::tempdir().unwrap();
    let refused = Migration::start(&source, &target(dir.path(), on_postgres()), &["--cutover"]);
    let (succeeded, said) = refused.wait();
    assert!(!succeeded);
    assert!(said.contains("user name is empty"), "{said}");

    let dir = tempfile::tempdir().unwrap();
    let as_root = ["--cutover", "--from-user", "root:rootpw"];
    let (printed, _) =
        Migration::start(&source, &target(dir.path(), on_postgres()), &as_root).finish();
    // Enabling auth takes no revision.
    assert!(
        printed.contains(&format!("up to revision {head} ")),
        "{printed}"
    );
    let copy = serve_copy(dir.path(), on_postgres());
    /// Every key, read as root.
    async fn everything(server: &Process) -> Vec<strata::proto::mvccpb::KeyValue> {
        let token = root_token(server).await;
        let mut request = tonic::Request::new(RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("token", token.parse().unwrap());
        server
            .kv()
            .await
            .range(request)
            .await
            .unwrap()
            .into_inner()
            .kvs
    }
    assert_eq!(everything(&copy).await, everything(&source).await);
    let anonymous = copy.kv().await.range(get("k1")).await.unwrap_err();
    assert_eq!(anonymous.message(), "etcdserver: user name is empty");
}
