//! A full disk: a small tmpfs holds the embedded store's data directory, or the tablespace of a
//! PostgreSQL database, and fills up under writes.

use crate::requests::*;
use crate::support::Strata;
use std::process::Command;
use strata::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use strata::proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};

/// A tmpfs of `mib` MiB mounted at a directory of its own, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Tmpfs {
        Tmpfs::mount_with(mib, "")
    }

    /// With more mount `options` (`,uid=...`).
    fn mount_with(mib: u32, options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m{options}"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(mounted.success(), "mounting a tmpfs needs root");
        Tmpfs { dir }
    }

    /// Gives the file system `mib` MiB in all: space returns.
    fn grow(&self, mib: u32) {
        let grown = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(grown.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The alarms raised, as (member, type).
async fn alarms(server: &Strata) -> Vec<(u64, i32)> {
    let answer = MaintenanceClient::new(server.channel().await)
        .alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        })
        .await
        .unwrap()
        .into_inner();
    answer
        .alarms
        .iter()
        .map(|a| (a.member_id, a.alarm))
        .collect()
}

/// 64 KiB values, put under fresh keys until a put fails; returns the failure. The values are random
/// hex, which PostgreSQL's compression of large values cannot shrink much.
async fn fill(server: &Strata, acknowledged: &mut Vec<(String, i64)>) -> tonic::Status {
    use std::hash::{BuildHasher, Hasher};
    let mut kv = server.kv().await;
    let random = std::collections::hash_map::RandomState::new();
    let value: String = (0..(64 << 10) / 16)
        .map(|i| {
            let mut h = random.build_hasher();
            h.write_u64(i);
            format!("{:016x}", h.finish())
        })
        .collect();
    loop {
        let key = format!("k{:05}", acknowledged.len());
        match kv.put(put(&key, &value)).await {
            Ok(r) => acknowledged.push((key, r.into_inner().header.unwrap().revision)),
            Err(s) => return s,
        }
        assert!(acknowledged.len() < 20_000, "the disk never filled");
    }
}

/// The put that met the full disk failed with a storage failure (`failure`), NOSPACE is raised,
/// later writes are refused with etcd's "database space exceeded", and reads go on. Returns the
/// member that raised it.
async fn nospace_raised(server: &Strata, failure: tonic::Status) -> u64 {
    assert_eq!(failure.code(), tonic::Code::Unavailable, "{failure:?}");
    assert!(
        failure.message().contains("No space left on device"),
        "{failure:?}"
    );
    let mut kv = server.kv().await;
    let read = kv.range(get("k00000")).await.unwrap().into_inner();
    assert_eq!(read.kvs[0].value.len(), 64 << 10, "reads go on");
    let member = read.header.unwrap().member_id;
    assert_eq!(
        alarms(server).await,
        vec![(member, AlarmType::Nospace as i32)]
    );
    let refused = kv.put(put("more", "v")).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert_eq!(
        refused.message(),
        "etcdserver: mvcc: database space exceeded"
    );
    member
}

/// Disarms `member`'s NOSPACE; then a write goes through, without a restart.
async fn disarm_and_write(server: &Strata, member: u64, acknowledged: &mut Vec<(String, i64)>) {
    let disarmed = MaintenanceClient::new(server.channel().await)
        .alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: member,
            alarm: AlarmType::Nospace as i32,
        })
        .await
        .unwrap();
    assert_eq!(disarmed.into_inner().alarms.len(), 1);
    let key = format!("after{:05}", acknowledged.len());
    let after = server.kv().await.put(put(&key, "v")).await.unwrap();
    acknowledged.push((key, after.into_inner().header.unwrap().revision));
}

/// After `failure`, the write that met the full disk: NOSPACE as [`nospace_raised`] checks; then the
/// disk gets `mib` MiB in all and, the alarm disarmed, writes go on.
async fn recover(
    server: &Strata,
    failure: tonic::Status,
    disk: &Tmpfs,
    mib: u32,
    acknowledged: &mut Vec<(String, i64)>,
) {
    let member = nospace_raised(server, failure).await;
    disk.grow(mib);
    disarm_and_write(server, member, acknowledged).await;
}

/// Every acknowledged write is there, at its revision.
async fn all_there(server: &Strata, acknowledged: &[(String, i64)]) {
    let mut kv = server.kv().await;
    for (key, revision) in acknowledged {
        let found = kv.range(get(key)).await.unwrap().into_inner();
        assert_eq!(
            found.kvs.first().map(|kv| kv.mod_revision),
            Some(*revision),
            "{key}"
        );
    }
}

/// The disk fills under writes: the write that meets it fails with a storage failure, NOSPACE is
/// raised, and later writes are refused with etcd's "database space exceeded" while reads go on.
/// Once space returns and the alarm is disarmed, writes go on without a restart; a SIGTERM on the
/// full disk still stops cleanly; a restart on the full disk serves every acknowledged write and
/// refuses writes until space returns; every acknowledged write is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_raises_nospace_and_loses_nothing() {
    // The write-ahead log takes 64 MiB; 16 MiB are left for the database.
    let disk = Tmpfs::mount(80);
    let data = disk.dir.path().join("data");
    let args = [
        "--backend",
        "embedded",
        "--quota-backend-bytes",
        "8000000000",
    ];
    let start = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command.arg("--data-dir").arg(&data).args(args);
        Strata::start_command(command)
    };
    let mut server = start();
    let mut acknowledged = Vec::new();
    let failure = fill(&server, &mut acknowledged).await;
    recover(&server, failure, &disk, 120, &mut acknowledged).await;

    // Full again, then stopped: the stop is clean even though the store cannot sync.
    fill(&server, &mut acknowledged).await;
    assert!(server.terminate().success(), "{}", server.log());

    // Started again on the full disk, after SIGTERM and after kill -9: every acknowledged write is
    // read (the write-ahead log's records served from memory), and writes fail as before.
    let mut server = start();
    all_there(&server, &acknowledged).await;
    server.kill();
    let server = start();
    assert!(
        server.log().contains("the disk is full"),
        "{}",
        server.log()
    );
    all_there(&server, &acknowledged).await;
    let refused = server
        .kv()
        .await
        .put(put("refused", "v"))
        .await
        .unwrap_err();
    recover(&server, refused, &disk, 200, &mut acknowledged).await;
    drop(server);
    all_there(&start(), &acknowledged).await;
}

/// PostgreSQL's disk fills: the frontend's database is in a tablespace on a small tmpfs (the
/// cluster's write-ahead log stays on its own disk: PostgreSQL stops altogether when that fills).
/// The same as for the embedded store: the put that meets it fails (PostgreSQL's "could not extend
/// file ...: No space left on device", SQLSTATE 53100), NOSPACE is raised, reads go on, and once
/// space returns and the alarm is disarmed writes go on; a new frontend finds every acknowledged
/// write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_out_of_space_raises_nospace_and_loses_nothing() {
    let disk = Tmpfs::mount_with(24, ",uid=postgres,gid=postgres,mode=0700");
    let space = Tablespace::create(&disk);
    let database = space.database();
    let frontend = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command.args([
            "--backend",
            &database,
            "--quota-backend-bytes",
            "8000000000",
        ]);
        Strata::start_command(command)
    };

    let mut server = frontend();
    let mut acknowledged = Vec::new();
    let failure = fill(&server, &mut acknowledged).await;
    recover(&server, failure, &disk, 64, &mut acknowledged).await;
    assert!(server.terminate().success(), "{}", server.log());
    let mut other = frontend();
    all_there(&other, &acknowledged).await;
    assert!(other.terminate().success(), "{}", other.log());
}

/// A tablespace of the tests' PostgreSQL on a tmpfs, with a database in it; both dropped when it
/// is (before the tmpfs is unmounted).
struct Tablespace {
    admin: String,
    name: String,
}

impl Tablespace {
    fn create(disk: &Tmpfs) -> Tablespace {
        let space = Tablespace {
            admin: crate::support::admin_postgres(),
            name: format!("strata_full_{}", std::process::id()),
        };
        let location = disk.dir.path().display();
        assert!(space.sql(&format!(
            "CREATE TABLESPACE {} LOCATION '{location}'",
            space.name
        )));
        assert!(space.sql(&format!("CREATE DATABASE {0} TABLESPACE {0}", space.name)));
        space
    }

    /// The database's connection string.
    fn database(&self) -> String {
        let (cluster, _) = self.admin.rsplit_once('/').expect("a postgres:// URL");
        format!("{cluster}/{}", self.name)
    }

    fn sql(&self, statement: &str) -> bool {
        crate::support::psql(&self.admin, statement)
    }
}

impl Drop for Tablespace {
    fn drop(&mut self) {
        self.sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
        self.sql(&format!("DROP TABLESPACE IF EXISTS {}", self.name));
    }
}
