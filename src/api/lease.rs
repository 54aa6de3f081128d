//! etcdserverpb.Lease: grant, revoke, keep-alive, time-to-live and the lease list.

use super::{access, Context};
use crate::mvcc::quota;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

pub struct LeaseService(pub(super) Context);

/// Keep-alive answers waiting for the transport.
const KEEP_ALIVE_BUFFER: usize = 16;

type KeepAliveStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        self.0
            .allow_fresh(&|| self.0.auth.require(info.as_ref()))
            .await?;
        let req = req.into_inner();
        self.0.check_quota(quota::LEASE_GRANT_COST).await?;
        let (id, ttl) = self.0.store.lease_grant(req.id, req.ttl).await?;
        let mut resp = LeaseGrantResponse {
            id,
            ttl,
            ..Default::default()
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let id = req.into_inner().id;
        let allow = || {
            self.0.auth.require(info.as_ref())?;
            self.0.allow_lease_keys(info.as_ref(), id)
        };
        let mut resp = self
            .0
            .checked_write(allow, |auth| self.0.store.lease_revoke(id, Some(auth)))
            .await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Each request renews its lease and is answered with the TTL granted again, or 0 for a lease
    /// that does not exist (any more), as etcd answers.
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let credentials = access::Credentials::of(req.metadata());
        let mut requests = req.into_inner();
        let (responses, rx) = mpsc::channel(KEEP_ALIVE_BUFFER);
        let context = self.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                // Each renewal is checked as it comes: auth may have changed meanwhile.
                let renewal = async {
                    let info = context.identify(&credentials).await?;
                    let allow = || {
                        context.auth.require(info.as_ref())?;
                        context.allow_lease_keys(info.as_ref(), request.id)
                    };
                    context.allow_fresh(&allow).await?;
                    context.store.lease_renew(request.id).await
                };
                let answer = match renewal.await {
                    Ok(ttl) => {
                        let mut resp = LeaseKeepAliveResponse {
                            id: request.id,
                            ttl: ttl.unwrap_or(0),
                            ..Default::default()
                        };
                        context.fill(&mut resp.header);
                        Ok(resp)
                    }
                    Err(e) => Err(Status::from(e)),
                };
                let failed = answer.is_err();
                if responses.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// An unknown lease is answered with TTL -1, not an error, as etcd answers it.
    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let req = req.into_inner();
        let allow = || {
            self.0.auth.require(info.as_ref())?;
            if req.keys {
                self.0.allow_lease_reads(info.as_ref(), &[req.id])?;
            }
            Ok(())
        };
        self.0.allow_fresh(&allow).await?;
        let mut resp = match self.0.store.lease_time_to_live(req.id, req.keys).await? {
            Some((ttl, granted_ttl, keys)) => LeaseTimeToLiveResponse {
                id: req.id,
                ttl,
                granted_ttl,
                keys,
                ..Default::default()
            },
            None => LeaseTimeToLiveResponse {
                id: req.id,
                ttl: -1,
                ..Default::default()
            },
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let ids = self.0.store.lease_ids().await?;
        self.0
            .allow_fresh(&|| self.0.allow_lease_reads(info.as_ref(), &ids))
            .await?;
        let mut resp = LeaseLeasesResponse {
            leases: ids.into_iter().map(|id| LeaseStatus { id }).collect(),
            ..Default::default()
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}
