//! The gRPC face of a [`CoordinatorService`]: each call is the service's method, its
//! [`ApiError`] mapped to a status code (see [`super::error`]).

use std::sync::Arc;

use spotbatch_proto::api::coordinator_server::Coordinator;
use spotbatch_proto::api::{
    CancelReply, CancelRequest, HeartbeatReply, HeartbeatRequest, JobStatus, ListJobsReply,
    ListJobsRequest, PeersReply, PeersRequest, RegisterReply, RegisterRequest, StatusRequest,
    SubmitReply, SubmitRequest,
};
use tonic::{Request, Response, Status};

use super::CoordinatorService;

/// The gRPC face of a [`CoordinatorService`].
#[derive(Clone)]
pub struct Api(pub Arc<CoordinatorService>);

#[tonic::async_trait]
impl Coordinator for Api {
    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<SubmitReply>, Status> {
        Ok(Response::new(self.0.submit(req.into_inner()).await?))
    }

    async fn cancel(&self, req: Request<CancelRequest>) -> Result<Response<CancelReply>, Status> {
        let was_running = self.0.cancel(&req.into_inner().job_id).await?;
        Ok(Response::new(CancelReply { was_running }))
    }

    async fn list_jobs(
        &self,
        _req: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsReply>, Status> {
        Ok(Response::new(ListJobsReply {
            jobs: self.0.list().await,
        }))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<JobStatus>, Status> {
        Ok(Response::new(
            self.0.status(&req.into_inner().job_id).await?,
        ))
    }

    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        Ok(Response::new(self.0.register(req.into_inner())?))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        Ok(Response::new(self.0.heartbeat(req.into_inner()).await?))
    }

    async fn peers(&self, req: Request<PeersRequest>) -> Result<Response<PeersReply>, Status> {
        Ok(Response::new(self.0.peers(req.into_inner())?))
    }
}
