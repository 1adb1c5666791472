//! The data plane a node should have, from the leader's [`Assignment`] and the tasks the node
//! runs: a pure translation (no lock held, nothing read from the kernel), so it reads and tests
//! on its own. The worker gathers [`Here`] under its lock and hands the result to the data
//! plane ([`shoal_dataplane::node`]).
//!
//! What the assignment says becomes:
//! - its networks with a subnet and VNI → [`OverlayNetwork`]s (encrypted ones turn WireGuard
//!   on);
//! - this node's attached tasks → [`Attachment`]s on the networks present here, and their way
//!   out ([`WayOut`]) in a subnet no route and no overlay overlaps;
//! - its services in VIP mode → [`VipSpec`]s on the networks present here;
//! - its endpoints and peers → the overlay's [`OverlayEndpoint`]s and [`Peer`]s;
//! - its published services → the routing mesh ([`MeshSpec`]), with this node's own backends
//!   only while they run.

use std::collections::BTreeMap;
use std::path::Path;

use ipnet::Ipv4Net;
use shoal_api::service::{EndpointMode, PortConfig, PortProtocol, Task};
use shoal_control::dispatcher::{Assignment, MeshBackend, MeshService};
use shoal_control::limits;
use shoal_dataplane::mesh::model::{
    BackendSpec, BackendState, ClientIp, IngressSpec, MeshServiceSpec, MeshSpec, PortSpec,
    Protocol, PublishMode,
};
use shoal_dataplane::node::{DesiredState, VipSpec};
use shoal_dataplane::overlay::model::{
    Attachment, DEFAULT_VXLAN_PORT, DEFAULT_WIREGUARD_PORT, DataPath, OverlayEndpoint,
    OverlayNetwork, Peer, WayOut, WayOutAttachment, WireGuard,
};

use super::{Context, way_out};

/// What the node itself contributes: who it is, the tasks it plugs into networks, and the
/// routes it has (which the way out's subnet must not overlap).
pub(crate) struct Here<'a> {
    /// The node's ID, data-path address and WireGuard key.
    pub context: &'a Context,
    /// `--wireguard-cpus`: where the WireGuard engine's I/O threads run (empty: anywhere).
    pub wireguard_cpus: &'a [usize],
    /// Its tasks the data plane should plug into their networks.
    pub tasks: Vec<LocalTask<'a>>,
    /// The node's routes, less the way out's own bridge.
    pub routes: Vec<Ipv4Net>,
}

/// A task of this node, as the data plane needs it.
pub(crate) struct LocalTask<'a> {
    /// The task as assigned.
    pub task: &'a Task,
    /// Its network namespace, once it has one.
    pub netns: Option<&'a Path>,
    /// Its address in the way out's subnet, as an offset.
    pub way_out: Option<u32>,
    /// Whether it runs.
    pub running: bool,
}

/// The data plane wanted, and whether tasks that need a way out have none (no subnet left).
pub(crate) struct Desired {
    /// The data plane wanted.
    pub state: DesiredState,
    /// Tasks want a way out, and every candidate subnet overlaps a route or an overlay.
    pub no_way_out: bool,
}

/// The data plane `here` should have under assignment `a`.
pub(crate) fn desired(a: &Assignment, here: &Here<'_>) -> Desired {
    let networks = networks(a);
    let present = |network: &str| networks.iter().any(|n| n.id == network);
    let ingress = a.networks.iter().find(|n| n.spec.ingress);
    let ingress_id = ingress.map_or("", |n| n.id.as_str());
    let (attachments, attached_ips) = attachments(here, &present, ingress_id);
    let (way_out, no_way_out) = way_out(a, here);
    let mesh = match (&a.ingress_addr, ingress) {
        (Some(addr), Some(ingress)) if present(&ingress.id) => {
            let running_here = |task: &str, ip: &str| {
                attached_ips
                    .get(&(ingress.id.clone(), ip.to_owned()))
                    .map(String::as_str)
                    == Some(task)
                    && here.tasks.iter().any(|l| l.task.id == task && l.running)
            };
            Some(MeshSpec {
                ingress: IngressSpec {
                    network: ingress.id.clone(),
                    ip: addr.split('/').next().unwrap_or_default().to_owned(),
                },
                interfaces: None,
                services: a
                    .mesh
                    .iter()
                    .map(|m| {
                        mesh_service(m, &ingress.id, |b| {
                            b.node_id != here.context.node_id || running_here(&b.task_id, &b.ip)
                        })
                    })
                    .collect(),
            })
        }
        _ => None,
    };
    let encrypted = networks.iter().any(|n| n.encrypted);
    let state = DesiredState {
        node: here.context.node_id.clone(),
        data_path: DataPath {
            addr: here.context.data_path_addr.clone(),
            port: if a.data_path_port == 0 {
                DEFAULT_VXLAN_PORT
            } else {
                a.data_path_port
            },
            wireguard_port: DEFAULT_WIREGUARD_PORT,
        },
        wireguard: encrypted.then(|| WireGuard {
            private_key: here.context.private_key.clone(),
            cpus: here.wireguard_cpus.to_vec(),
        }),
        attachments,
        endpoints: endpoints(a, &present),
        peers: peers(a),
        mesh,
        way_out,
        vips: vips(a, &present),
        networks,
    };
    Desired { state, no_way_out }
}

/// The assignment's networks that have a subnet and a VNI, as the overlay builds them.
fn networks(a: &Assignment) -> Vec<OverlayNetwork> {
    a.networks
        .iter()
        .filter_map(|n| {
            let ipam = n.subnet()?;
            Some(OverlayNetwork {
                id: n.id.clone(),
                vni: n.vni()?,
                subnet: ipam.subnet.clone(),
                gateway: Some(ipam.gateway.clone()).filter(|g| !g.is_empty()),
                mtu: None,
                encrypted: n.encrypted(),
            })
        })
        .collect()
}

/// Each task's attachments to the networks present here (`eth0`, `eth1`, ... in the order
/// of its attachments), and which task holds each (network, address).
fn attachments(
    here: &Here<'_>,
    present: &dyn Fn(&str) -> bool,
    ingress_id: &str,
) -> (Vec<Attachment>, BTreeMap<(String, String), String>) {
    let mut attachments = Vec::new();
    let mut attached_ips = BTreeMap::new();
    for local in &here.tasks {
        let Some(netns) = local.netns else {
            continue;
        };
        for (i, a) in local.task.networks_attachments.iter().enumerate() {
            let Some(ip) = a.addresses.first().and_then(|a| a.split('/').next()) else {
                continue;
            };
            if !present(&a.network_id) {
                continue;
            }
            attached_ips.insert((a.network_id.clone(), ip.to_owned()), local.task.id.clone());
            attachments.push(Attachment {
                task: local.task.id.clone(),
                netns: netns.to_path_buf(),
                network: a.network_id.clone(),
                ip: ip.to_owned(),
                mac: None,
                interface: format!("eth{i}"),
                default_route: false,
                // The routing mesh's replies to outside clients (client-IP ports and
                // mode=host) go back through the ingress network, whatever the way out.
                replies_via_gateway: a.network_id == ingress_id,
            });
        }
    }
    (attachments, attached_ips)
}

/// The way out: the tasks given an address, in a subnet no route of the node and no overlay
/// overlaps. Also whether tasks want one and no subnet is left.
fn way_out(a: &Assignment, here: &Here<'_>) -> (Option<WayOut>, bool) {
    let mut taken = here.routes.clone();
    taken.extend(
        a.networks
            .iter()
            .filter_map(|n| n.subnet()?.subnet.parse::<Ipv4Net>().ok()),
    );
    let subnet = way_out::choose_subnet(&taken);
    let mut attachments = Vec::new();
    for local in &here.tasks {
        let (Some(netns), Some(offset), Some(subnet)) = (local.netns, local.way_out, subnet) else {
            continue;
        };
        let Some(ip) = way_out::address(subnet, offset) else {
            continue;
        };
        attachments.push(WayOutAttachment {
            task: local.task.id.clone(),
            netns: netns.to_path_buf(),
            ip: ip.to_string(),
            interface: format!("eth{}", local.task.networks_attachments.len()),
        });
    }
    let no_way_out = subnet.is_none() && here.tasks.iter().any(|l| l.way_out.is_some());
    let way_out = subnet
        .filter(|_| !attachments.is_empty())
        .map(|subnet| WayOut {
            subnet: subnet.to_string(),
            attachments,
        });
    (way_out, no_way_out)
}

/// Service VIPs the node's tasks reach: on the networks present here, their running tasks on
/// the VIP's network.
fn vips(a: &Assignment, present: &dyn Fn(&str) -> bool) -> Vec<VipSpec> {
    a.services
        .iter()
        .filter(|s| s.endpoint_mode == EndpointMode::Vip)
        .flat_map(|s| {
            s.networks
                .iter()
                .filter(|n| present(&n.network_id))
                .filter_map(move |n| {
                    Some(VipSpec {
                        service: s.name.clone(),
                        network: n.network_id.clone(),
                        vip: n.vip.clone()?,
                        backends: s
                            .tasks
                            .iter()
                            .filter(|t| t.network_id == n.network_id)
                            .map(|t| t.ip.clone())
                            .collect(),
                    })
                })
        })
        .collect()
}

/// Tasks on other nodes, on the networks present here.
fn endpoints(a: &Assignment, present: &dyn Fn(&str) -> bool) -> Vec<OverlayEndpoint> {
    a.endpoints
        .iter()
        .filter(|e| present(&e.network_id))
        .map(|e| OverlayEndpoint {
            network: e.network_id.clone(),
            ip: e.ip.clone(),
            mac: None,
            node: e.node_id.clone(),
        })
        .collect()
}

/// The other nodes of the overlays.
fn peers(a: &Assignment) -> Vec<Peer> {
    a.peers
        .iter()
        .map(|p| Peer {
            node: p.node_id.clone(),
            data_path_addr: p.data_path_addr.clone(),
            public_key: p.public_key.clone(),
        })
        .collect()
}

/// A published service as the mesh balances it, over the backends `usable` keeps (this
/// node's own only while they run), on the ingress network `ingress`.
fn mesh_service(
    m: &MeshService,
    ingress: &str,
    usable: impl Fn(&MeshBackend) -> bool,
) -> MeshServiceSpec {
    MeshServiceSpec {
        name: m.name.clone(),
        ports: m.ports.iter().map(port).collect(),
        backends: m
            .backends
            .iter()
            .filter(|b| usable(b))
            .map(|b| BackendSpec {
                task: b.task_id.clone(),
                network: ingress.to_owned(),
                ip: b.ip.clone(),
                // Weight 0 drains: its connections stay, no new one.
                weight: u32::from(!b.draining),
                state: BackendState::Running,
            })
            .collect(),
        client_ip: ClientIp::default(),
        // Sized for its tasks (the managers keep the sum within every node's table space).
        table_size: limits::mesh_table_size(
            m.backends.iter().filter(|b| !b.draining).count() as u64
        ),
    }
}

/// A published port as the mesh takes it.
fn port(p: &PortConfig) -> PortSpec {
    PortSpec {
        published: u32::from(p.published_port),
        target: u32::from(p.target_port),
        protocol: match p.protocol {
            PortProtocol::Tcp => Protocol::Tcp,
            PortProtocol::Udp => Protocol::Udp,
        },
        mode: match p.publish_mode {
            shoal_api::service::PublishMode::Ingress => PublishMode::Ingress,
            shoal_api::service::PublishMode::Host => PublishMode::Host,
        },
        // mode=host keeps it anyway.
        client_ip: (p.publish_mode == shoal_api::service::PublishMode::Ingress).then(|| {
            match p.keeps_client_ip() {
                true => ClientIp::Preserve,
                false => ClientIp::Snat,
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use shoal_api::service::{
        Driver, Ipam, IpamConfig, Network as SwarmNetwork, NetworkAttachment, VNI_OPTION,
    };

    use super::*;

    /// An overlay network as the leader assigns it (`ingress` for the routing mesh's).
    fn network(id: &str, subnet: &str, vni: u32, ingress: bool) -> SwarmNetwork {
        let mut n = SwarmNetwork {
            id: id.into(),
            driver_state: Driver {
                name: "overlay".into(),
                options: [(VNI_OPTION.to_owned(), vni.to_string())].into(),
            },
            ipam_options: Ipam {
                configs: vec![IpamConfig {
                    subnet: subnet.into(),
                    gateway: String::new(),
                }],
            },
            ..SwarmNetwork::default()
        };
        n.spec.ingress = ingress;
        n
    }

    fn task(id: &str, attachments: &[(&str, &str)]) -> Task {
        Task {
            id: id.into(),
            networks_attachments: attachments
                .iter()
                .map(|(network, addr)| NetworkAttachment {
                    network_id: (*network).into(),
                    addresses: vec![(*addr).into()],
                })
                .collect(),
            ..Task::default()
        }
    }

    fn context() -> Context {
        Context {
            node_id: "n1".into(),
            data_path_addr: "192.0.2.1".into(),
            private_key: String::new(),
        }
    }

    #[test]
    fn tasks_are_plugged_into_the_networks_present_and_own_backends_count_while_they_run() {
        let assignment = Assignment {
            networks: vec![
                network("ing", "10.255.0.0/16", 4096, true),
                network("app", "10.0.1.0/24", 4097, false),
                // No subnet yet: not built, and nothing is plugged into it.
                SwarmNetwork {
                    id: "later".into(),
                    ..SwarmNetwork::default()
                },
            ],
            ingress_addr: Some("10.255.0.2/16".into()),
            mesh: vec![MeshService {
                name: "web".into(),
                ports: vec![PortConfig {
                    target_port: 80,
                    published_port: 8080,
                    ..PortConfig::default()
                }],
                backends: ["t1", "t2", "t3"]
                    .iter()
                    .zip(["n1", "n1", "n2"])
                    .enumerate()
                    .map(|(i, (task, node))| MeshBackend {
                        task_id: (*task).into(),
                        node_id: node.into(),
                        ip: format!("10.255.0.{}", i + 10),
                        draining: *task == "t3",
                    })
                    .collect(),
            }],
            ..Assignment::default()
        };
        let (t1, t2) = (
            task("t1", &[("ing", "10.255.0.10/16"), ("app", "10.0.1.5/24")]),
            task("t2", &[("ing", "10.255.0.11/16"), ("later", "10.9.0.2/24")]),
        );
        let netns = PathBuf::from("/run/netns/t");
        let context = context();
        let here = Here {
            context: &context,
            wireguard_cpus: &[],
            tasks: vec![
                LocalTask {
                    task: &t1,
                    netns: Some(&netns),
                    way_out: None,
                    running: true,
                },
                LocalTask {
                    task: &t2,
                    netns: Some(&netns),
                    way_out: None,
                    running: false,
                },
            ],
            routes: Vec::new(),
        };
        let wanted = desired(&assignment, &here).state;
        let ids: Vec<&str> = wanted.networks.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["ing", "app"]);
        let plugged: Vec<(&str, &str, &str, bool)> = wanted
            .attachments
            .iter()
            .map(|a| {
                (
                    a.task.as_str(),
                    a.network.as_str(),
                    a.interface.as_str(),
                    a.replies_via_gateway,
                )
            })
            .collect();
        assert_eq!(
            plugged,
            [
                ("t1", "ing", "eth0", true),
                ("t1", "app", "eth1", false),
                ("t2", "ing", "eth0", true),
            ]
        );
        let mesh = wanted.mesh.expect("the mesh");
        let backends: Vec<(&str, u32)> = mesh.services[0]
            .backends
            .iter()
            .map(|b| (b.task.as_str(), b.weight))
            .collect();
        // t2 is this node's and does not run; t3 is another node's, draining.
        assert_eq!(backends, [("t1", 1), ("t3", 0)]);
        assert_eq!(mesh.services[0].ports[0].client_ip, Some(ClientIp::Snat));
        assert!(wanted.wireguard.is_none());
        assert_eq!(wanted.data_path.port, DEFAULT_VXLAN_PORT);
    }

    #[test]
    fn tasks_that_want_a_way_out_get_one_outside_every_route_or_are_told_there_is_none() {
        let t1 = task("t1", &[]);
        let netns = PathBuf::from("/run/netns/t1");
        let context = context();
        let local = || LocalTask {
            task: &t1,
            netns: Some(&netns),
            way_out: Some(2),
            running: true,
        };
        let here = Here {
            context: &context,
            wireguard_cpus: &[],
            tasks: vec![local()],
            routes: vec!["172.18.0.0/16".parse().expect("a route")],
        };
        let wanted = desired(&Assignment::default(), &here);
        let way_out = wanted.state.way_out.expect("a way out");
        assert!(!wanted.no_way_out);
        let subnet: Ipv4Net = way_out.subnet.parse().expect("a subnet");
        assert!(!subnet.contains(&"172.18.0.1".parse::<std::net::Ipv4Addr>().expect("ip")));
        assert_eq!(way_out.attachments[0].interface, "eth0");
        let everything = Here {
            context: &context,
            wireguard_cpus: &[],
            tasks: vec![local()],
            routes: vec![
                "172.16.0.0/12".parse().expect("a route"),
                "192.168.0.0/16".parse().expect("a route"),
            ],
        };
        let wanted = desired(&Assignment::default(), &everything);
        assert!(wanted.state.way_out.is_none());
        assert!(wanted.no_way_out);
    }
}
