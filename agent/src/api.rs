//! The local API served on the daemon's socket.

use shoal_api::v1::{InfoRequest, InfoResponse, LocalNodeState, daemon_server::Daemon};
use tonic::{Request, Response, Status};

use crate::NodeFacts;

/// The `shoal.v1.Daemon` service.
#[derive(Debug)]
pub(crate) struct DaemonApi {
    facts: NodeFacts,
}

impl DaemonApi {
    pub(crate) fn new(facts: NodeFacts) -> Self {
        Self { facts }
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
}
