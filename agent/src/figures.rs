//! The figures behind the node's metrics ([`crate::metrics`] writes them out): what the agent
//! counts as things happen ([`AgentMetrics`]), and what a scrape reads from the node's state
//! ([`Snapshot`]), filled in by the store's view and the data plane.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use shoal_api::service::TaskState;
use shoal_control::manager::RaftStatus;
use shoal_control::metrics::Label;
use shoal_dataplane::mesh::ServiceStatus;

/// What the node agent counts as it goes.
#[derive(Debug, Default)]
pub(crate) struct AgentMetrics {
    /// DNS queries from tasks, by how they ended (`answered`, `nxdomain`, `forwarded`,
    /// `failed`, `refused`).
    pub dns_queries: Family<Label, Counter>,
    /// Tasks the executor started.
    pub task_starts: Counter,
    /// Tasks that failed, by why (`start`: they never ran; `exit`: they ended with an error;
    /// `unhealthy`: their health check failed; `rejected`: refused before starting).
    pub task_failures: Family<Label, Counter>,
}

/// The process's agent counters.
pub(crate) fn agent() -> &'static AgentMetrics {
    static METRICS: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::default);
    &METRICS
}

/// A service's tasks as the store has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServiceTasks {
    /// Replicas asked for (`None`: a global service).
    pub desired: Option<u64>,
    /// Tasks meant to run, by their current state.
    pub states: BTreeMap<&'static str, u64>,
    /// Tasks meant to run that wait for a node that can take them (pending with a reason).
    pub unschedulable: u64,
}

/// A WireGuard peer's figures in the units the metrics give them (the engine's
/// `PeerStatus`, converted: bytes as `u64`, the handshake's age in seconds, the networks
/// counted).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PeerFigures {
    pub node: String,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub last_handshake_seconds: Option<f64>,
    pub rotating: bool,
    pub handshakes_limited: u64,
    pub cookie_replies: u64,
    pub refused_packets: u64,
    pub handshakes: u64,
    pub rotations: u64,
    pub networks: usize,
}

/// What a scrape reads from the node's state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// The node's name.
    pub node: String,
    /// Raft, on a manager.
    pub raft: Option<RaftStatus>,
    /// Tasks per service name, on a manager.
    pub services: BTreeMap<String, ServiceTasks>,
    /// Nodes by (state, availability), on a manager.
    pub nodes: BTreeMap<(String, String), u64>,
    /// The routing mesh's services, by name, once the mesh runs here.
    pub mesh: BTreeMap<String, ServiceStatus>,
    /// How the mesh takes packets in on each public interface (`xdp` or `tc`).
    pub entries: BTreeMap<String, &'static str>,
    /// The WireGuard engine's peers.
    pub peers: Vec<PeerFigures>,
    /// Each published port's counters on this node.
    pub ports: Vec<shoal_dataplane::mesh::PortStatus>,
    /// What each service VIP translated for this node's tasks, by service name.
    pub vips: BTreeMap<String, shoal_dataplane::mesh::VipStats>,
    /// Each overlay network's VXLAN counters on this node, by network ID.
    pub networks: BTreeMap<String, shoal_dataplane::overlay::layout::NetworkCounters>,
}

impl Snapshot {
    /// Tasks per service and nodes per state, from the store's objects.
    pub(crate) fn read_world(&mut self, world: &shoal_control::orchestrator::World) {
        for service in world.services.values() {
            let s = &service.value;
            self.services.insert(
                s.spec.name.clone(),
                ServiceTasks {
                    desired: s.spec.mode.replicated.as_ref().map(|r| r.replicas),
                    ..ServiceTasks::default()
                },
            );
        }
        for task in world.tasks.values() {
            let t = &task.value;
            if t.desired_state != TaskState::Running {
                continue;
            }
            let Some(entry) = self.services.get_mut(&t.service_name) else {
                continue;
            };
            *entry.states.entry(t.status.state.name()).or_default() += 1;
            if t.status.state == TaskState::Pending && !t.status.err.is_empty() {
                entry.unschedulable += 1;
            }
        }
        for node in world.nodes.values() {
            let n = &node.value;
            let key = (
                shoal_api::wire_name(&n.status.state),
                shoal_api::wire_name(&n.spec.availability),
            );
            *self.nodes.entry(key).or_default() += 1;
        }
    }
}
