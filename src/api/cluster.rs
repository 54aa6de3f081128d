//! etcdserverpb.Cluster: the member list (every live frontend sharing the backend, by id; this
//! process alone on the embedded backend). Membership is not changed through this service: members
//! are Strata frontends, which join a cluster by starting against its backend and leave by stopping,
//! so MemberAdd, MemberRemove, MemberUpdate and MemberPromote are refused, saying so.

use super::Context;
use crate::error::Error;
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
        let mut records = self.0.store.members().await?;
        if records.is_empty() {
            records.push(self.0.member.clone());
        }
        let members = records
            .into_iter()
            .map(|m| Member {
                id: m.id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: false,
            })
            .collect();
        let mut resp = MemberListResponse {
            members,
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
        Err(Error::MembershipByFrontends("MemberAdd").into())
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(Error::MembershipByFrontends("MemberRemove").into())
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(Error::MembershipByFrontends("MemberUpdate").into())
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(Error::MembershipByFrontends("MemberPromote").into())
    }
}
