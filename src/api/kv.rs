//! etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact.

use super::{validation, Context};
use crate::mvcc::quota;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

pub struct KvService(pub(super) Context);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        validation::range(&req)?;
        let mut resp = self.0.store.range(&req).await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        // etcd checks the quota before anything else.
        self.0.check_quota(quota::put_cost(&req)).await?;
        validation::put(&req)?;
        validation::size(&req, &self.0.limits)?;
        let mut resp = self.0.store.put(req).await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        validation::delete_range(&req)?;
        validation::size(&req, &self.0.limits)?;
        let mut resp = self.0.store.delete_range(req).await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
        validation::txn(&req, &self.0.limits)?;
        if !validation::is_read_only(&req) {
            validation::size(&req, &self.0.limits)?;
            self.0.check_quota(quota::txn_cost(&req)).await?;
        }
        let mut resp = self.0.store.txn(req).await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = req.into_inner();
        let mut resp = self.0.store.compact(req).await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}
