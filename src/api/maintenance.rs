//! etcdserverpb.Maintenance: Status, Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader and
//! Downgrade.

use super::{Context, ETCD_VERSION, RAFT_TERM};
use crate::error::Error;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::downgrade_request::DowngradeAction;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{AlarmMember, AlarmType, ResponseHeader};
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::snapshot;
use tonic::{Request, Response, Status};

pub struct MaintenanceService(pub(super) Context);

/// Snapshot messages read ahead of the client.
const SNAPSHOT_READ_AHEAD: usize = 8;

type SnapshotStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

impl MaintenanceService {
    /// That the sender has the root role. etcd's Defragment, Hash, HashKV and Snapshot pass a
    /// refusal on unconverted, so their clients see the auth store's own message with code
    /// Unknown.
    async fn admin_unconverted<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.0
            .allow_admin(req.metadata())
            .await
            .map_err(|e| match e {
                Error::UserEmpty => Status::unknown("auth: user name is empty"),
                Error::UserNotFound => Status::unknown("auth: user not found"),
                Error::PermissionDenied => Status::unknown("auth: permission denied"),
                Error::InvalidAuthToken => Status::unknown("auth: invalid auth token"),
                other => other.into(),
            })
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// GET lists the alarms (of one type, or all for NONE); ACTIVATE raises one and DEACTIVATE
    /// disarms one, each answering with the alarm concerned, as etcd does.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let action = AlarmAction::try_from(req.get_ref().action);
        let allow = || match action {
            Ok(AlarmAction::Get) => self.0.auth.require(info.as_ref()),
            _ => self.0.auth.check_admin(info.as_ref()),
        };
        self.0.allow_fresh(&allow).await?;
        let req = req.into_inner();
        let alarm = AlarmType::try_from(req.alarm).unwrap_or(AlarmType::None);
        let store = &self.0.store;
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => store.alarms(alarm),
            Ok(AlarmAction::Activate) => store
                .raise_alarm(req.member_id, alarm)
                .await?
                .into_iter()
                .collect(),
            Ok(AlarmAction::Deactivate) => store
                .disarm_alarm(req.member_id, alarm)
                .await?
                .into_iter()
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut resp = AlarmResponse {
            alarms: alarms
                .into_iter()
                .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                .collect(),
            ..Default::default()
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        self.0
            .allow_fresh(&|| self.0.auth.require(info.as_ref()))
            .await?;
        let usage = self.0.store.usage();
        // As etcd prints each alarm: the AlarmMember message in protobuf text form.
        let errors = self
            .0
            .store
            .alarms(AlarmType::None)
            .into_iter()
            .map(|(member, alarm)| {
                let name = AlarmType::try_from(alarm).map_or("NONE", |a| a.as_str_name());
                format!("memberID:{member} alarm:{name} ")
            })
            .collect();
        let mut resp = StatusResponse {
            version: ETCD_VERSION.to_owned(),
            db_size: usage.size,
            db_size_in_use: usage.in_use,
            raft_term: RAFT_TERM,
            errors,
            ..Default::default()
        };
        self.0.fill(&mut resp.header);
        let header = resp.header.as_ref().expect("filled");
        // One member, always its own leader; every revision is one applied raft entry.
        resp.leader = header.member_id;
        resp.raft_index = header.revision as u64;
        resp.raft_applied_index = header.revision as u64;
        Ok(Response::new(resp))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin_unconverted(&req).await?;
        self.0.store.defragment().await?;
        // etcd answers without a header.
        Ok(Response::new(DefragmentResponse::default()))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin_unconverted(&req).await?;
        let mut resp = HashResponse {
            hash: self.0.store.hash().await?,
            ..Default::default()
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admin_unconverted(&req).await?;
        let (hash, compact_revision, revision) =
            self.0.store.hash_kv(req.into_inner().revision).await?;
        let mut resp = HashKvResponse {
            header: Some(ResponseHeader {
                revision,
                ..Default::default()
            }),
            hash,
            compact_revision,
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin_unconverted(&req).await?;
        let (file, total) = snapshot::export(&self.0.store, &self.0.auth).await?;
        // Read from the file as the client takes the messages; etcd's carry no header.
        let (messages, stream) = tokio::sync::mpsc::channel(SNAPSHOT_READ_AHEAD);
        tokio::task::spawn_blocking(move || {
            snapshot::stream(file, total, |part| {
                let message = part
                    .map(|(blob, remaining_bytes)| SnapshotResponse {
                        remaining_bytes,
                        blob,
                        ..Default::default()
                    })
                    .map_err(|e| {
                        Status::from(Error::storage_caused_by(format!("snapshot file: {e}"), e))
                    });
                messages.blocking_send(message).is_ok()
            })
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(stream),
        )))
    }

    /// A single member leads already: moving leadership to itself succeeds at once, to any other
    /// member is refused, as a one-member etcd answers.
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.0.allow_admin(req.metadata()).await?;
        if req.into_inner().target_id != self.0.store.identity().member_id {
            return Err(Error::BadLeaderTransferee.into());
        }
        // etcd answers without a header.
        Ok(Response::new(MoveLeaderResponse::default()))
    }

    /// VALIDATE and CANCEL answer as a one-member etcd 3.5 with no downgrade under way: the only
    /// valid target is the previous minor version, and there is nothing to cancel. ENABLE, the
    /// first step of etcd's rolling change of binaries, is refused with the way back that works
    /// here: a snapshot.
    async fn downgrade(
        &self,
        req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.0.allow_admin(req.metadata()).await?;
        let req = req.into_inner();
        let cluster = super::cluster_version();
        let action = DowngradeAction::try_from(req.action).map_err(|_| Error::UnknownMethod)?;
        if action == DowngradeAction::Cancel {
            return Err(Error::NoInflightDowngrade.into());
        }
        let target = minor_version(&req.version).ok_or(Error::WrongDowngradeVersionFormat)?;
        let (major, minor) = minor_version(&cluster).expect("the cluster version parses");
        if target != (major, minor - 1) {
            return Err(Error::InvalidDowngradeTargetVersion.into());
        }
        if action == DowngradeAction::Enable {
            return Err(Error::DowngradeBySnapshot(format!("{}.{}", target.0, target.1)).into());
        }
        let mut resp = DowngradeResponse {
            version: cluster,
            ..Default::default()
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}

/// The major and minor version of `v`, which is semantic (`3.4.0`, `3.4.1-rc.0+build`) or
/// `major.minor`, as etcd reads a downgrade target; None for anything else.
fn minor_version(v: &str) -> Option<(u64, u64)> {
    let number = |part: &str| {
        let leading_zero = part.len() > 1 && part.starts_with('0');
        let digits = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        (digits && !leading_zero)
            .then(|| part.parse().ok())
            .flatten()
    };
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let suffix_ok = core.len() == v.len() || core.split('.').count() == 3;
    let parts: Vec<&str> = core.split('.').collect();
    match parts[..] {
        [major, minor] | [major, minor, _] if suffix_ok => {
            let patch_ok = parts.get(2).is_none_or(|p| number(p).is_some());
            patch_ok.then_some((number(major)?, number(minor)?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::minor_version;

    #[test]
    fn downgrade_targets_read_as_etcd_reads_them() {
        assert_eq!(minor_version("3.4"), Some((3, 4)));
        assert_eq!(minor_version("3.4.0"), Some((3, 4)));
        assert_eq!(minor_version("3.4.27-rc.1+git"), Some((3, 4)));
        for wrong in ["", "3", "3.x", "03.4", "3.4.0.1", "3.4-rc.1", "v3.4"] {
            assert_eq!(minor_version(wrong), None, "{wrong}");
        }
    }
}
