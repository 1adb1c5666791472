//! The local API served on the daemon's socket.

use shoal_api::v1::{
    DataplaneApplyRequest, DataplaneApplyResponse, DataplaneInspectRequest,
    DataplaneInspectResponse, Frame, InfoRequest, InfoResponse, LocalNodeState,
    daemon_server::Daemon,
};
use tonic::{Request, Response, Status};

use crate::NodeFacts;
use crate::dataplane::NodeDataplane;
use crate::swarm::SwarmNode;

/// The `shoal.v1.Daemon` service.
#[derive(Debug)]
pub(crate) struct DaemonApi {
    facts: NodeFacts,
    dataplane: NodeDataplane,
    swarm: SwarmNode,
}

impl DaemonApi {
    pub(crate) fn new(facts: NodeFacts, dataplane: NodeDataplane, swarm: SwarmNode) -> Self {
        Self {
            facts,
            dataplane,
            swarm,
        }
    }
}

#[tonic::async_trait]
impl Daemon for DaemonApi {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let f = &self.facts;
        let swarm = self.swarm.info().await;
        let local_node_state = if swarm.state == "active" {
            LocalNodeState::Active
        } else {
            LocalNodeState::Inactive
        };
        Ok(Response::new(InfoResponse {
            server_version: env!("CARGO_PKG_VERSION").into(),
            name: f.name.clone(),
            local_node_state: local_node_state.into(),
            data_root: f.data_root.clone(),
            kernel_version: f.kernel_version.clone(),
            operating_system: f.operating_system.clone(),
            architecture: f.architecture.clone(),
            ncpu: f.ncpu,
            mem_total: f.mem_total,
            swarm_json: serde_json::to_string(&swarm).expect("plain data serializes"),
        }))
    }

    async fn swarm(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let call = serde_json::from_slice(&request.into_inner().json)
            .map_err(|e| Status::invalid_argument(format!("decoding the call: {e}")))?;
        let reply = self.swarm.call(call).await.map_err(|status| {
            // `Unavailable` on this socket means "the daemon is gone" to the CLI; a swarm that
            // cannot answer is something else (Docker reports it as `Unknown` too).
            if status.code() == tonic::Code::Unavailable {
                Status::unknown(status.message())
            } else {
                status
            }
        })?;
        Ok(Response::new(Frame {
            json: serde_json::to_vec(&reply).expect("JSON values serialise"),
        }))
    }

    type LogsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Frame, Status>> + Send + 'static>>;

    async fn logs(&self, request: Request<Frame>) -> Result<Response<Self::LogsStream>, Status> {
        let query = serde_json::from_slice(&request.into_inner().json)
            .map_err(|e| Status::invalid_argument(format!("decoding the request: {e}")))?;
        let stream = self.swarm.logs(query).await?;
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            stream,
            |batch| {
                batch.map(|batch| Frame {
                    json: serde_json::to_vec(&batch).expect("plain data serializes"),
                })
            },
        ))))
    }

    async fn dataplane_apply(
        &self,
        request: Request<DataplaneApplyRequest>,
    ) -> Result<Response<DataplaneApplyResponse>, Status> {
        let changes = self
            .dataplane
            .apply(&request.into_inner().state_json)
            .await?;
        Ok(Response::new(DataplaneApplyResponse { changes }))
    }

    async fn dataplane_inspect(
        &self,
        _: Request<DataplaneInspectRequest>,
    ) -> Result<Response<DataplaneInspectResponse>, Status> {
        let json = self.dataplane.inspect().await?;
        Ok(Response::new(DataplaneInspectResponse {
            json: serde_json::to_string_pretty(&json).expect("JSON values serialise"),
        }))
    }
}
