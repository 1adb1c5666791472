//! The local API served on the daemon's socket.

use shoal_api::v1::{
    DataplaneApplyRequest, DataplaneApplyResponse, DataplaneInspectRequest,
    DataplaneInspectResponse, InfoRequest, InfoResponse, LocalNodeState, daemon_server::Daemon,
};
use tonic::{Request, Response, Status};

use crate::NodeFacts;
use crate::dataplane::NodeDataplane;

/// The `shoal.v1.Daemon` service.
#[derive(Debug)]
pub(crate) struct DaemonApi {
    facts: NodeFacts,
    dataplane: NodeDataplane,
}

impl DaemonApi {
    pub(crate) fn new(facts: NodeFacts, dataplane: NodeDataplane) -> Self {
        Self { facts, dataplane }
    }
}

#[tonic::async_trait]
impl Daemon for DaemonApi {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let f = &self.facts;
        Ok(Response::new(InfoResponse {
            server_version: env!("CARGO_PKG_VERSION").into(),
            name: f.name.clone(),
            // Joining a swarm arrives with the control plane; until then every node is standalone.
            local_node_state: LocalNodeState::Inactive.into(),
            data_root: f.data_root.clone(),
            kernel_version: f.kernel_version.clone(),
            operating_system: f.operating_system.clone(),
            architecture: f.architecture.clone(),
            ncpu: f.ncpu,
            mem_total: f.mem_total,
        }))
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
