//! What the dispatcher sends a node: its own tasks and only what they need (least privilege, as
//! SwarmKit's dispatcher): the networks they are on, where the other tasks of those networks
//! run, the data-path addresses and WireGuard public keys of those nodes, and the routing mesh's
//! published ports with their running backends. Computed from a view of the store by
//! [`assignment`], a pure function; a manager streams a fresh one to each connected node
//! whenever the store changes what it would say.
//!
//! A node sees nothing of services it runs no task of, except the published ports every node
//! answers on and the addresses those are balanced to.

use std::collections::{BTreeMap, BTreeSet};

use shoal_api::service::{EndpointMode, Network, PortConfig, PublishMode, Task, TaskState};
use shoal_api::swarm::NodeState;
/// The parts of an assignment that are plain fields are used as `cluster.proto` declares them:
/// an address on another node, that node, a task the mesh balances to, a reachable service on
/// one network and its running tasks there.
pub use shoal_api::v1::{MeshBackend, PeerNode, ReachableTask, RemoteEndpoint, ServiceOnNetwork};

use crate::orchestrator::{World, address_of};

/// A node's assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// The store index it was computed at.
    pub index: u64,
    /// The node.
    pub node_id: String,
    /// The swarm's VXLAN port.
    pub data_path_port: u16,
    /// Its tasks: those to run (desired `running`) and those to stop.
    pub tasks: Vec<Task>,
    /// The networks its tasks are on, and ingress.
    pub networks: Vec<Network>,
    /// Its own address on the ingress network (`10.0.0.3/24`).
    pub ingress_addr: Option<String>,
    /// Tasks (and nodes' ingress addresses) on other nodes, on those networks.
    pub endpoints: Vec<RemoteEndpoint>,
    /// The nodes those are on.
    pub peers: Vec<PeerNode>,
    /// Published ports and their backends.
    pub mesh: Vec<MeshService>,
    /// The services its tasks can reach by name: those on a network (ingress aside) one of its
    /// tasks is on, with their VIPs, aliases and running tasks on those networks only.
    pub services: Vec<ReachableService>,
    /// The data of the secrets and configs its tasks refer to (filled in by the manager from
    /// the store; nothing else of the store's secrets reaches the node).
    pub payloads: Vec<shoal_api::secret::Payload>,
}

/// A service the node's tasks share a network with, as its tasks see it there: the data of
/// service discovery (names) and service load balancing (VIPs and backends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReachableService {
    /// Its ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `vip` or `dnsrr`.
    pub endpoint_mode: EndpointMode,
    /// Per shared network: its VIP there (`vip` mode) and its aliases.
    pub networks: Vec<ServiceOnNetwork>,
    /// Its running tasks' addresses on those networks.
    pub tasks: Vec<ReachableTask>,
}

/// A service with published ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshService {
    /// Its name.
    pub name: String,
    /// Its published ports.
    pub ports: Vec<PortConfig>,
    /// Its running tasks' ingress addresses, by task ID.
    pub backends: Vec<MeshBackend>,
}

/// Whether a task's node should still hold it: the tasks the node is told about.
fn held(task: &Task) -> bool {
    task.desired_state <= TaskState::Running || !task.status.state.is_terminal()
}

/// Whether a task takes traffic: running, meant to run, on a Ready node.
fn serving(world: &World, task: &Task) -> bool {
    task.status.state == TaskState::Running
        && task.desired_state == TaskState::Running
        && world
            .nodes
            .get(&task.node_id)
            .is_some_and(|n| n.value.status.state == NodeState::Ready)
}

/// Whether a task was told to stop and still runs, on a Ready node: it finishes the
/// connections it has and takes no new one.
fn draining(world: &World, task: &Task) -> bool {
    task.status.state == TaskState::Running
        && task.desired_state > TaskState::Running
        && world
            .nodes
            .get(&task.node_id)
            .is_some_and(|n| n.value.status.state == NodeState::Ready)
}

/// Whether a remote task's address should be reachable: it may be starting, or draining.
fn placed(world: &World, task: &Task) -> bool {
    (task.desired_state == TaskState::Running
        && (TaskState::Assigned..=TaskState::Running).contains(&task.status.state)
        && world
            .nodes
            .get(&task.node_id)
            .is_some_and(|n| n.value.status.state == NodeState::Ready))
        || draining(world, task)
}

/// `node_id`'s assignment in `world` at store index `index`.
pub fn assignment(world: &World, index: u64, node_id: &str, data_path_port: u16) -> Assignment {
    let ingress = world.ingress().map(|n| n.id.clone());
    let tasks: Vec<Task> = world
        .tasks
        .values()
        .map(|t| &t.value)
        .filter(|t| t.node_id == node_id && held(t) && t.status.state >= TaskState::Assigned)
        .cloned()
        .collect();
    let me = world.nodes.get(node_id).map(|n| &n.value);
    let ingress_addr = me.and_then(|n| {
        n.attachments
            .iter()
            .find(|a| Some(&a.network_id) == ingress.as_ref())
            .and_then(|a| a.addresses.first().cloned())
    });
    // A task told to stop keeps its networks while it still runs (it drains).
    let mut network_ids: BTreeSet<String> = tasks
        .iter()
        .filter(|t| t.desired_state == TaskState::Running || t.status.state == TaskState::Running)
        .flat_map(|t| t.networks_attachments.iter().map(|a| a.network_id.clone()))
        .collect();
    if ingress_addr.is_some()
        && let Some(ingress) = &ingress
    {
        network_ids.insert(ingress.clone());
    }
    let networks: Vec<Network> = network_ids
        .iter()
        .filter_map(|id| world.networks.get(id).map(|n| n.value.clone()))
        .collect();

    let endpoints = remote_endpoints(world, node_id, &network_ids, ingress.as_deref());
    let peers = peer_nodes(world, &endpoints);
    let mesh = match ingress.as_ref().filter(|_| ingress_addr.is_some()) {
        Some(ingress) => mesh_services(world, &tasks, ingress),
        None => Vec::new(),
    };
    let services = reachable_services(world, &network_ids, ingress.as_deref());
    Assignment {
        index,
        node_id: node_id.to_owned(),
        data_path_port,
        tasks,
        networks,
        ingress_addr,
        endpoints: endpoints.into_iter().collect(),
        peers,
        mesh,
        services,
        // The store's secrets are not part of the world: the manager adds the data.
        payloads: Vec::new(),
    }
}

/// Where the tasks on `network_ids` placed on other nodes than `node_id` are, and those nodes'
/// own addresses on `ingress` when it is one of them.
fn remote_endpoints(
    world: &World,
    node_id: &str,
    network_ids: &BTreeSet<String>,
    ingress: Option<&str>,
) -> BTreeSet<RemoteEndpoint> {
    let mut endpoints = BTreeSet::new();
    for task in world.tasks.values().map(|t| &t.value) {
        if task.node_id == node_id || !placed(world, task) {
            continue;
        }
        for a in &task.networks_attachments {
            if network_ids.contains(&a.network_id) {
                for addr in &a.addresses {
                    if let Some(ip) = address_of(addr) {
                        endpoints.insert(RemoteEndpoint {
                            network_id: a.network_id.clone(),
                            ip: ip.to_string(),
                            node_id: task.node_id.clone(),
                        });
                    }
                }
            }
        }
    }
    // Other nodes' own ingress addresses: the routing mesh's replies go back to them.
    if let Some(ingress) = ingress.filter(|i| network_ids.contains(*i)) {
        for node in world.nodes.values().map(|n| &n.value) {
            if node.id == node_id || node.status.state != NodeState::Ready {
                continue;
            }
            for a in node.attachments.iter().filter(|a| a.network_id == ingress) {
                for addr in &a.addresses {
                    if let Some(ip) = address_of(addr) {
                        endpoints.insert(RemoteEndpoint {
                            network_id: ingress.to_owned(),
                            ip: ip.to_string(),
                            node_id: node.id.clone(),
                        });
                    }
                }
            }
        }
    }
    endpoints
}

/// The nodes `endpoints` are on, with their data-path addresses and WireGuard public keys.
fn peer_nodes(world: &World, endpoints: &BTreeSet<RemoteEndpoint>) -> Vec<PeerNode> {
    let peer_ids: BTreeSet<&String> = endpoints.iter().map(|e| &e.node_id).collect();
    peer_ids
        .into_iter()
        .filter_map(|id| world.nodes.get(id))
        .map(|n| PeerNode {
            node_id: n.value.id.clone(),
            data_path_addr: n.value.description.data_path_addr.clone(),
            public_key: Some(n.value.description.wireguard_public_key.clone())
                .filter(|k| !k.is_empty()),
        })
        .collect()
}

/// The services with published ports the node answers on (through the routing mesh on
/// `ingress`), each with its backends: every ingress-mode port, and host-mode ports of the
/// services one of `tasks` (the node's) runs.
fn mesh_services(world: &World, tasks: &[Task], ingress: &str) -> Vec<MeshService> {
    let mut backends = mesh_backends(world, ingress);
    let mut mesh = Vec::new();
    for service in world.services.values().map(|s| &s.value) {
        // Host-mode ports answer only where a task of the service runs.
        let runs_here = tasks
            .iter()
            .any(|t| t.service_id == service.id && t.desired_state == TaskState::Running);
        let ports: Vec<PortConfig> = service
            .endpoint
            .ports
            .iter()
            .filter(|p| p.publish_mode == PublishMode::Ingress || runs_here)
            .cloned()
            .collect();
        if ports.is_empty() {
            continue;
        }
        mesh.push(MeshService {
            name: service.spec.name.clone(),
            ports,
            backends: backends.remove(service.id.as_str()).unwrap_or_default(),
        });
    }
    mesh
}

/// The tasks serving (or draining) with an address on `ingress`, by service ID.
fn mesh_backends<'a>(world: &'a World, ingress: &str) -> BTreeMap<&'a str, Vec<MeshBackend>> {
    let mut backends: BTreeMap<&str, Vec<MeshBackend>> = BTreeMap::new();
    for task in world.tasks.values().map(|t| &t.value) {
        let draining = draining(world, task);
        if !serving(world, task) && !draining {
            continue;
        }
        if let Some(ip) = task
            .networks_attachments
            .iter()
            .find(|a| a.network_id == ingress)
            .and_then(|a| a.addresses.first())
            .and_then(|a| address_of(a))
        {
            backends
                .entry(&task.service_id)
                .or_default()
                .push(MeshBackend {
                    task_id: task.id.clone(),
                    node_id: task.node_id.clone(),
                    ip: ip.to_string(),
                    draining,
                });
        }
    }
    backends
}

/// The services on `networks` (the node's tasks' networks; ingress is not one tasks find each
/// other on), each with what its tasks there see: VIPs, aliases, running tasks.
fn reachable_services(
    world: &World,
    networks: &BTreeSet<String>,
    ingress: Option<&str>,
) -> Vec<ReachableService> {
    let shared = |network: &str| networks.contains(network) && Some(network) != ingress;
    let mut out = Vec::new();
    for service in world.services.values().map(|s| &s.value) {
        let on: Vec<ServiceOnNetwork> = service
            .spec
            .task_template
            .networks
            .iter()
            .filter(|n| shared(&n.target))
            .map(|n| ServiceOnNetwork {
                network_id: n.target.clone(),
                vip: service
                    .endpoint
                    .virtual_ips
                    .iter()
                    .find(|v| v.network_id == n.target)
                    .and_then(|v| address_of(&v.addr))
                    .map(|ip| ip.to_string()),
                aliases: n.aliases.clone(),
            })
            .collect();
        if on.is_empty() {
            continue;
        }
        let mut tasks: Vec<ReachableTask> = world
            .tasks
            .values()
            .map(|t| &t.value)
            .filter(|t| t.service_id == service.id && serving(world, t))
            .flat_map(|t| {
                t.networks_attachments
                    .iter()
                    .filter(|a| on.iter().any(|n| n.network_id == a.network_id))
                    .filter_map(|a| {
                        Some(ReachableTask {
                            task_id: t.id.clone(),
                            slot: t.slot,
                            node_id: t.node_id.clone(),
                            network_id: a.network_id.clone(),
                            ip: address_of(a.addresses.first()?)?.to_string(),
                        })
                    })
            })
            .collect();
        tasks.sort();
        out.push(ReachableService {
            id: service.id.clone(),
            name: service.spec.name.clone(),
            endpoint_mode: service.spec.endpoint_spec.mode,
            networks: on,
            tasks,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

impl Assignment {
    /// Whether two assignments say the same (the index aside).
    pub fn same_as(&self, other: &Assignment) -> bool {
        Assignment {
            index: 0,
            ..self.clone()
        } == Assignment {
            index: 0,
            ..other.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_api::service::{
        NetworkAttachment, NetworkAttachmentConfig, NetworkSpec, PortConfig, Service, TaskStatus,
    };
    use shoal_api::swarm::{Node, NodeDescription, NodeStatus};

    use super::*;
    use crate::orchestrator::Versioned;

    fn v<T>(value: T) -> Versioned<T> {
        Versioned { version: 1, value }
    }

    fn task(id: &str, service: &str, node: &str, addrs: &[(&str, &str)]) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            node_id: node.into(),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Running,
                ..Default::default()
            },
            networks_attachments: addrs
                .iter()
                .map(|(n, a)| NetworkAttachment {
                    network_id: (*n).into(),
                    addresses: vec![(*a).into()],
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_learns_only_its_tasks_and_what_they_need() {
        let mut w = World::default();
        for (id, ingress) in [
            ("a", "10.0.0.2/24"),
            ("b", "10.0.0.3/24"),
            ("c", "10.0.0.4/24"),
        ] {
            w.nodes.insert(
                id.into(),
                v(Node {
                    id: id.into(),
                    status: NodeStatus {
                        state: NodeState::Ready,
                        ..Default::default()
                    },
                    description: NodeDescription {
                        data_path_addr: format!("192.0.2.{}", id.as_bytes()[0]),
                        wireguard_public_key: format!("key-{id}"),
                        ..Default::default()
                    },
                    attachments: vec![NetworkAttachment {
                        network_id: "ingress".into(),
                        addresses: vec![ingress.into()],
                    }],
                    ..Default::default()
                }),
            );
        }
        for (id, ingress) in [("ingress", true), ("front", false), ("secret", false)] {
            w.networks.insert(
                id.into(),
                v(Network {
                    id: id.into(),
                    spec: NetworkSpec {
                        name: id.into(),
                        ingress,
                        ..Default::default()
                    },
                    ..Default::default()
                }),
            );
        }
        let mut web = Service {
            id: "web".into(),
            ..Default::default()
        };
        web.spec.name = "web".into();
        web.endpoint.ports = vec![PortConfig {
            target_port: 80,
            published_port: 8080,
            ..Default::default()
        }];
        let mut db = Service {
            id: "db".into(),
            ..Default::default()
        };
        db.spec.name = "db".into();
        web.spec.task_template.networks = vec![NetworkAttachmentConfig {
            target: "front".into(),
            aliases: vec!["www".into()],
        }];
        web.endpoint.virtual_ips = vec![shoal_api::service::VirtualIp {
            network_id: "front".into(),
            addr: "10.1.0.100/24".into(),
        }];
        db.spec.task_template.networks = vec![NetworkAttachmentConfig {
            target: "secret".into(),
            aliases: Vec::new(),
        }];
        w.services.insert("web".into(), v(web));
        w.services.insert("db".into(), v(db));
        for t in [
            task(
                "w1",
                "web",
                "a",
                &[("ingress", "10.0.0.10/24"), ("front", "10.1.0.2/24")],
            ),
            task(
                "w2",
                "web",
                "b",
                &[("ingress", "10.0.0.11/24"), ("front", "10.1.0.3/24")],
            ),
            task("d1", "db", "c", &[("secret", "10.2.0.2/24")]),
        ] {
            w.tasks.insert(t.id.clone(), v(t));
        }

        let a = assignment(&w, 7, "a", 4789);
        assert_eq!(
            a.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["w1"]
        );
        let nets: Vec<&str> = a.networks.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(nets, ["front", "ingress"], "not the db's network");
        assert!(a.endpoints.iter().all(|e| e.network_id != "secret"));
        assert!(a.endpoints.contains(&RemoteEndpoint {
            network_id: "front".into(),
            ip: "10.1.0.3".into(),
            node_id: "b".into()
        }));
        // c is a peer only for its ingress address (the mesh's way back), never for the db.
        assert!(a.endpoints.contains(&RemoteEndpoint {
            network_id: "ingress".into(),
            ip: "10.0.0.4".into(),
            node_id: "c".into()
        }));
        assert_eq!(a.ingress_addr.as_deref(), Some("10.0.0.2/24"));
        assert_eq!(a.mesh.len(), 1, "only published services");
        assert_eq!(a.mesh[0].backends.len(), 2);
        // Discovery: the services on its tasks' networks (not the db's, not through ingress),
        // with their VIP, aliases and running tasks there.
        assert_eq!(a.services.len(), 1, "{:?}", a.services);
        let web = &a.services[0];
        assert_eq!(web.name, "web");
        assert_eq!(
            web.networks,
            [ServiceOnNetwork {
                network_id: "front".into(),
                vip: Some("10.1.0.100".into()),
                aliases: vec!["www".into()],
            }]
        );
        let ips: Vec<&str> = web.tasks.iter().map(|t| t.ip.as_str()).collect();
        assert_eq!(ips, ["10.1.0.2", "10.1.0.3"]);

        // A task told to stop that still runs drains: a backend of weight 0 everywhere, its
        // address still reachable, gone from discovery.
        w.tasks.get_mut("w2").unwrap().value.desired_state = TaskState::Shutdown;
        let a = assignment(&w, 8, "a", 4789);
        let draining: Vec<(&str, bool)> = a.mesh[0]
            .backends
            .iter()
            .map(|b| (b.task_id.as_str(), b.draining))
            .collect();
        assert_eq!(draining, [("w1", false), ("w2", true)]);
        assert!(a.endpoints.iter().any(|e| e.node_id == "b"));
        assert_eq!(a.services[0].tasks.len(), 1, "{:?}", a.services[0].tasks);
        w.tasks.get_mut("w2").unwrap().value.desired_state = TaskState::Running;

        // A Down node's tasks stop being backends and endpoints everywhere.
        w.nodes.get_mut("b").unwrap().value.status.state = NodeState::Down;
        let a = assignment(&w, 8, "a", 4789);
        assert_eq!(a.mesh[0].backends.len(), 1);
        assert!(a.endpoints.iter().all(|e| e.node_id != "b"));
        assert!(a.peers.iter().all(|p| p.node_id != "b"));
        assert_eq!(
            a.services[0].tasks.len(),
            1,
            "a Down node's task is not reachable"
        );
    }
}
