//! etcdserverpb.Cluster: the member list. Membership changes need more than one member; they come
//! with the PostgreSQL backend, where frontends join and leave by themselves.

use super::{unimplemented, Context};
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

pub struct ClusterService(pub(super) Context);

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let member = Member {
            id: self.0.store.identity().member_id,
            name: self.0.name.clone(),
            peer_ur_ls: Vec::new(),
            client_ur_ls: self.0.client_urls.clone(),
            is_learner: false,
        };
        let mut resp = MemberListResponse {
            members: vec![member],
            ..Default::default()
        };
        self.0.fill(&mut resp.header);
        // etcd leaves the revision of cluster responses at zero.
        if let Some(h) = resp.header.as_mut() {
            h.revision = 0;
        }
        Ok(Response::new(resp))
    }

    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        unimplemented("etcdserverpb.Cluster/MemberAdd")
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        unimplemented("etcdserverpb.Cluster/MemberRemove")
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        unimplemented("etcdserverpb.Cluster/MemberUpdate")
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        unimplemented("etcdserverpb.Cluster/MemberPromote")
    }
}
