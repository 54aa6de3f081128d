//! A full disk under the embedded store: a small tmpfs holds the data directory and fills up under
//! writes.

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
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
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

/// The disk fills under writes: the write that meets it fails with a storage failure, NOSPACE is
/// raised, and later writes are refused with etcd's "database space exceeded" while reads go on.
/// Once space returns and the alarm is disarmed, writes go on without a restart; a SIGTERM on the
/// full disk still stops cleanly; every acknowledged write is there after a restart.
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
    let mut kv = server.kv().await;
    let value = "v".repeat(64 << 10);
    let mut acknowledged = Vec::new();
    let failure = loop {
        let key = format!("k{:04}", acknowledged.len());
        match kv.put(put(&key, &value)).await {
            Ok(r) => acknowledged.push((key, r.into_inner().header.unwrap().revision)),
            Err(s) => break s,
        }
        assert!(acknowledged.len() < 2000, "the disk never filled");
    };
    assert_eq!(failure.code(), tonic::Code::Unavailable, "{failure:?}");
    assert!(
        failure.message().contains("No space left on device"),
        "{failure:?}"
    );
    let member = server.kv().await.range(get("k0000")).await.unwrap();
    let member = member.into_inner().header.unwrap().member_id;
    assert_eq!(
        alarms(&server).await,
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
    let read = kv.range(get("k0000")).await.unwrap().into_inner();
    assert_eq!(read.kvs[0].value.len(), value.len(), "reads go on");

    disk.grow(120);
    let disarmed = MaintenanceClient::new(server.channel().await)
        .alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: member,
            alarm: AlarmType::Nospace as i32,
        })
        .await
        .unwrap();
    assert_eq!(disarmed.into_inner().alarms.len(), 1);
    let after = kv.put(put("after", "v")).await.unwrap().into_inner();
    acknowledged.push(("after".to_owned(), after.header.unwrap().revision));

    // Full again, then stopped: the stop is clean even though the store cannot sync.
    loop {
        let key = format!("k{:04}", acknowledged.len());
        match kv.put(put(&key, &value)).await {
            Ok(r) => acknowledged.push((key, r.into_inner().header.unwrap().revision)),
            Err(_) => break,
        }
    }
    assert!(server.terminate().success(), "{}", server.log());
    disk.grow(200);
    let server = start();
    let mut kv = server.kv().await;
    for (key, revision) in &acknowledged {
        let found = kv.range(get(key)).await.unwrap().into_inner();
        assert_eq!(
            found.kvs.first().map(|kv| kv.mod_revision),
            Some(*revision),
            "{key}"
        );
    }
}
