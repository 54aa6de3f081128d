//! v3lockpb.Lock: distributed locks owned by leases (the recipe is in [`crate::concurrency`]).

use super::Context;
use crate::concurrency;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

pub struct LockService(pub(super) Context);

#[tonic::async_trait]
impl Lock for LockService {
    /// Answers once the lock is held, however long that takes; a client that gives up takes its
    /// place in the queue with it.
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let req = req.into_inner();
        self.0
            .allow_fresh(&|| self.0.allow_queue(info.as_ref(), &req.name, true))
            .await?;
        let (key, header) = concurrency::lock(&self.0.store, &req.name, req.lease).await?;
        let mut resp = LockResponse {
            header: Some(header),
            key,
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let key = req.into_inner().key;
        self.0
            .allow_fresh(&|| self.0.auth.check_write(info.as_ref(), &key, b""))
            .await?;
        let header = concurrency::unlock(&self.0.store, key).await?;
        let mut resp = UnlockResponse {
            header: Some(header),
        };
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}
