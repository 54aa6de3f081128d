//! gRPC's health service (`grpc.health.v1.Health`), as etcd registers it on its client URLs: the
//! server as a whole (service "") is always SERVING (etcd turns it to NOT_SERVING only while it
//! defragments with `--experimental-stop-grpc-service-on-defrag`); any other name is unknown.

use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::health_server::{Health, HealthServer};
use crate::proto::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct HealthService;

pub fn server() -> HealthServer<HealthService> {
    HealthServer::new(HealthService)
}

/// The status of `service`, None when it is not one this server knows.
fn status(service: &str) -> Option<ServingStatus> {
    service.is_empty().then_some(ServingStatus::Serving)
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match status(&request.get_ref().service) {
            Some(s) => Ok(Response::new(response(s))),
            None => Err(Status::not_found("unknown service")),
        }
    }

    /// Every service this server knows, with its status: the server as a whole.
    async fn list(
        &self,
        _: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        let statuses = [(String::new(), response(ServingStatus::Serving))];
        Ok(Response::new(HealthListResponse {
            statuses: statuses.into_iter().collect(),
        }))
    }

    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

    /// The status now, then nothing more: it never changes here. An unknown service is
    /// SERVICE_UNKNOWN, and the stream stays open, as gRPC's health protocol says.
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let now = status(&request.get_ref().service).unwrap_or(ServingStatus::ServiceUnknown);
        let first = tokio_stream::once(Ok(response(now)));
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::chain(
            first,
            tokio_stream::pending(),
        ))))
    }
}
