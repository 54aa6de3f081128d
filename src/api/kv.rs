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
        let info = self.0.auth_info(req.metadata()).await?;
        let req = req.into_inner();
        validation::range(&req)?;
        let allow = || self.0.allow_range(info.as_ref(), &req);
        let allowed = self.0.allow_fresh(&allow).await?;
        let mut resp = self.0.store.range(&req).await?;
        self.0.recheck_read(allowed, allow).await?;
        // An answer read while auth changed is refused, as etcd refuses it.
        self.0.auth.check_unchanged(info.as_ref())?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let req = req.into_inner();
        // etcd checks the quota before anything else.
        self.0.check_quota(quota::put_cost(&req)).await?;
        validation::put(&req)?;
        validation::size(&req, &self.0.limits)?;
        let mut resp = self
            .0
            .checked_write(
                || self.0.allow_put(info.as_ref(), &req),
                |auth| self.0.store.put(req.clone(), Some(auth)),
            )
            .await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let req = req.into_inner();
        validation::delete_range(&req)?;
        validation::size(&req, &self.0.limits)?;
        let mut resp = self
            .0
            .checked_write(
                || self.0.allow_delete_range(info.as_ref(), &req),
                |auth| self.0.store.delete_range(req.clone(), Some(auth)),
            )
            .await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let req = req.into_inner();
        validation::txn(&req, &self.0.limits)?;
        let read_only = validation::is_read_only(&req);
        if !read_only {
            validation::size(&req, &self.0.limits)?;
            self.0.check_quota(quota::txn_cost(&req)).await?;
        }
        let mut resp = self
            .0
            .checked_write(
                || self.0.allow_txn(info.as_ref(), &req),
                |auth| self.0.store.txn(req.clone(), Some(auth)),
            )
            .await?;
        if read_only {
            self.0.auth.check_unchanged(info.as_ref())?;
        }
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // Any user may compact, as in etcd; only the token must be valid.
        self.0.auth_info(req.metadata()).await?;
        let req = req.into_inner();
        let mut resp = self.0.store.compact(req).await?;
        self.0.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}
