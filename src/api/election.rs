//! v3electionpb.Election: leader election by lease-owned keys (the recipe is in
//! [`crate::concurrency`]).

use super::Context;
use crate::concurrency;
use crate::error::Error;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct ElectionService(pub(super) Context);

/// Leaders waiting for the transport on an Observe stream.
const OBSERVE_BUFFER: usize = 16;

type ObserveStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    /// Answers once this campaign leads, however long that takes.
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let req = req.into_inner();
        self.0
            .allow_fresh(&|| self.0.allow_queue(info.as_ref(), &req.name, true))
            .await?;
        let (header, leader) =
            concurrency::campaign(&self.0.store, &req.name, req.lease, req.value).await?;
        let mut resp = CampaignResponse {
            header: Some(header),
            leader: Some(leader),
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let req = req.into_inner();
        let leader = req.leader.ok_or(Error::MissingLeaderKey)?;
        self.0
            .allow_fresh(&|| self.0.auth.check_write(info.as_ref(), &leader.key, b""))
            .await?;
        let header = concurrency::proclaim(&self.0.store, &leader, req.value).await?;
        let mut resp = ProclaimResponse {
            header: Some(header),
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let name = req.into_inner().name;
        self.0
            .allow_fresh(&|| self.0.allow_queue(info.as_ref(), &name, false))
            .await?;
        let (header, kv) = concurrency::leader(&self.0.store, &name).await?;
        let mut resp = LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    type ObserveStream = ObserveStream;

    /// Streams each leader and each value it proclaims until the client goes away.
    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let name = req.into_inner().name;
        self.0
            .allow_fresh(&|| self.0.allow_queue(info.as_ref(), &name, false))
            .await?;
        let (leaders, mut heard) = mpsc::channel(OBSERVE_BUFFER);
        let (responses, rx) = mpsc::channel(OBSERVE_BUFFER);
        let context = self.0.clone();
        tokio::spawn(async move {
            let store = context.store.clone();
            let observing = concurrency::observe(&store, &name, leaders);
            let forwarding = async {
                while let Some((header, kv)) = heard.recv().await {
                    let mut resp = LeaderResponse {
                        header: Some(header),
                        kv: Some(kv),
                    };
                    context.fill(&mut resp.header);
                    if responses.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                ended = observing => {
                    if let Err(e) = ended {
                        let _ = responses.send(Err(e.into())).await;
                    }
                }
                () = forwarding => {}
                // The client went away while no leader changed.
                () = responses.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let leader = req.into_inner().leader.ok_or(Error::MissingLeaderKey)?;
        self.0
            .allow_fresh(&|| self.0.auth.check_write(info.as_ref(), &leader.key, b""))
            .await?;
        let header = concurrency::resign(&self.0.store, &leader).await?;
        let mut resp = ResignResponse {
            header: Some(header),
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}
