//! The routing mesh's part of a node's desired state (`"mesh"` in the data-plane state file),
//! and its validation into a [`MeshPlan`].
//!
//! ```json
//! "mesh": {
//!   "ingress": { "network": "ingress", "ip": "10.255.0.2" },
//!   "services": [{
//!     "name": "web",
//!     "ports": [{ "published": 8080, "target": 80, "protocol": "tcp", "mode": "ingress" }],
//!     "backends": [{ "task": "web.1", "network": "ingress", "ip": "10.255.0.11" }],
//!     "client_ip": "snat"
//!   }]
//! }
//! ```
//!
//! The node joins the ingress network itself (interface `shoal0`, address `ingress.ip`): balanced
//! connections reach backends from there. Backends are tasks on the ingress network, local
//! (`attachments`) or remote (`endpoints`); only `running` ones with a positive weight get new
//! connections.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use shoal_abi::mesh as abi;

use super::maglev::{self, DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE, SLOTS_PER_BACKEND};
use crate::common::{Host, Mac, Problems};
use crate::overlay::layout::{Layout, NetLayout};

/// The interface the node gets on the ingress network.
pub const INGRESS_INTERFACE: &str = "shoal0";
/// The task name of the node's own attachment to the ingress network.
pub const INGRESS_TASK: &str = "shoal-ingress";
/// The namespace of that attachment: the daemon's own (its main thread never leaves it).
pub const OWN_NAMESPACE: &str = "/proc/self/ns/net";

/// The routing mesh on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSpec {
    /// The node's place on the ingress network.
    pub ingress: IngressSpec,
    /// The interfaces published ports answer on; every interface with an IPv4 address but the
    /// loopback when absent (as Docker publishes on all addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    /// Services with published ports.
    #[serde(default)]
    pub services: Vec<MeshServiceSpec>,
}

/// The node on the ingress network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSpec {
    /// The ingress network's ID (one of `networks`).
    pub network: String,
    /// The node's address on it: the source of translated connections.
    pub ip: String,
}

/// A service whose ports are published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshServiceSpec {
    /// Its name (unique).
    pub name: String,
    /// Its published ports.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Its tasks on the ingress network.
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    /// `snat` (default): backends see the node's ingress address as the client, which works on
    /// any network. `preserve`: backends see the client's own address (see docs/mesh.md for what
    /// that asks of the network). The default of the service's ports; each may set its own.
    #[serde(default)]
    pub client_ip: ClientIp,
    /// The Maglev table size: a prime of at least 100 x the backends. Default 16381.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
}

/// How backends see the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientIp {
    /// Translated to the entry node's ingress address.
    #[default]
    Snat,
    /// The client's own address.
    Preserve,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// The port clients connect to (1-65535).
    pub published: u32,
    /// The port the tasks listen on (1-65535).
    pub target: u32,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// `ingress` (default): on every node, balanced over all tasks. `host`: only on nodes running
    /// a task, straight to the local tasks.
    #[serde(default)]
    pub mode: PublishMode,
    /// This port's own `client_ip`, over the service's; `mode: host` always keeps the client's
    /// address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIp>,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// `tcp` or `udp`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Docker's publish modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// The routing mesh.
    #[default]
    Ingress,
    /// Only where a task runs.
    Host,
}

/// A task of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// The task's ID.
    pub task: String,
    /// The network it is reached on: the ingress network.
    pub network: String,
    /// Its address there.
    pub ip: String,
    /// Its share of new connections relative to the others; 0 drains it (its connections stay).
    #[serde(default = "one")]
    pub weight: u32,
    /// The task's state; only `running` tasks receive connections.
    #[serde(default)]
    pub state: BackendState,
}

fn one() -> u32 {
    1
}

/// The states of a task the mesh distinguishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Serving.
    #[default]
    Running,
    /// Not yet serving.
    Starting,
    /// Stopping or stopped.
    Stopped,
    /// Failed.
    Failed,
}

/// A validated mesh: what the maps and attachments must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPlan {
    /// The ingress network's ID.
    pub network: String,
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// The node's address on it.
    pub addr: Ipv4Addr,
    /// The node's MAC on it.
    pub mac: Mac,
    /// Interfaces to attach the entry program to.
    pub interfaces: Vec<String>,
    /// Their addresses: the addresses published ports answer on.
    pub local_addrs: BTreeSet<Ipv4Addr>,
    /// The ingress network's VXLAN, for encapsulating to remote backends right in XDP; `None`
    /// when its traffic must go through the WireGuard engine (an encrypted ingress network).
    pub tunnel: Option<TunnelPlan>,
    /// Services, by name.
    pub services: BTreeMap<String, ServicePlan>,
}

/// The ingress network's VXLAN as seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelPlan {
    /// This node's data-path address (the outer source).
    pub local: Ipv4Addr,
    /// The VXLAN port.
    pub port: u16,
    /// The VNI.
    pub vni: u32,
}

/// A validated service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// The Maglev table size.
    pub table_size: u32,
    /// Published ports.
    pub ports: Vec<PortPlan>,
    /// Running tasks, sorted by address (every node builds the same table).
    pub backends: Vec<BackendPlan>,
}

/// A validated published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPlan {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Published port.
    pub published: u16,
    /// Target port.
    pub target: u16,
    /// `mode=host`.
    pub host: bool,
    /// Keep the client's address (always for `mode=host`).
    pub client_ip: bool,
}

/// A validated backend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackendPlan {
    /// Its address on the ingress network.
    pub addr: Ipv4Addr,
    /// Its MAC there.
    pub mac: Mac,
    /// Its task.
    pub task: String,
    /// Its weight.
    pub weight: u32,
    /// Whether it runs on this node.
    pub local: bool,
    /// Its node's data-path address, when it runs on another node.
    pub vtep: Option<Ipv4Addr>,
}

impl ServicePlan {
    /// The backends a port balances over: all of them, or this node's for `mode=host`.
    pub fn backends_for(&self, host: bool) -> impl Iterator<Item = &BackendPlan> {
        self.backends.iter().filter(move |b| !host || b.local)
    }
}

fn port_number(field: String, value: u32, problems: &mut Problems) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            problems.push(field, format!("{value} is not a port: 1 to 65535"));
            None
        }
    }
}

/// Validates the mesh against the overlay layout (networks, local attachments, remote
/// endpoints) and the host. The node's own ingress attachment is already in `layout`.
pub(crate) fn resolve(
    spec: &MeshSpec,
    layout: &Layout,
    host: &Host,
    reserved_udp: &[u16],
    dropped: &BTreeSet<(String, Ipv4Addr)>,
    problems: &mut Problems,
    left_out: &mut Problems,
) -> Option<MeshPlan> {
    let before = problems.len();
    let network = spec.ingress.network.as_str();
    let Some(net) = layout.networks.get(network) else {
        // The overlay validation already named a missing network, or the network itself had
        // problems: either way, said.
        return None;
    };
    let subnet = net.device.gateway.trunc();
    let addr = spec.ingress.ip.parse::<Ipv4Addr>().ok()?;
    let mac = Mac::from_ip(addr);

    let ingress = Ingress {
        network,
        layout,
        dropped,
        on_network: network_members(net),
        addr,
    };
    let tunnel = (!net.device.encrypted).then_some(TunnelPlan {
        local: net.device.local,
        port: net.device.port,
        vni: net.device.vni,
    });

    let interfaces = mesh_interfaces(spec, host, problems);
    let local_addrs: BTreeSet<Ipv4Addr> = host
        .interfaces
        .iter()
        .filter(|h| interfaces.contains(&h.name))
        .flat_map(|h| h.addrs.iter().copied())
        .collect();

    let mut services = BTreeMap::new();
    let mut published: BTreeMap<(Protocol, u16), String> = BTreeMap::new();
    for (i, s) in spec.services.iter().enumerate() {
        let at = format!("mesh.services[{i}]");
        if s.name.is_empty() {
            problems.push(format!("{at}.name"), "a service needs a name");
            continue;
        }
        if services.contains_key(&s.name) {
            problems.push(
                format!("{at}.name"),
                format!("service {:?} is listed twice", s.name),
            );
            continue;
        }
        let ports = service_ports(&at, s, reserved_udp, &mut published, problems);
        let backends = ingress.backends(&at, s, problems, left_out);
        let table_size = service_table_size(&at, s, &backends, problems);
        services.insert(
            s.name.clone(),
            ServicePlan {
                table_size,
                ports,
                backends,
            },
        );
    }
    check_limits(spec, &services, published.len(), &local_addrs, problems);
    (problems.len() == before).then_some(MeshPlan {
        network: network.to_owned(),
        subnet,
        addr,
        mac,
        interfaces,
        local_addrs,
        tunnel,
        services,
    })
}

/// Who is on the ingress network: local attachments and remote endpoints (with their node's
/// data-path address), by address.
fn network_members(net: &NetLayout) -> BTreeMap<Ipv4Addr, (Mac, Option<Ipv4Addr>)> {
    let mut on_network: BTreeMap<Ipv4Addr, (Mac, Option<Ipv4Addr>)> = BTreeMap::new();
    for a in net.attachments.values() {
        on_network.insert(a.addr.addr(), (a.mac, None));
    }
    for (ip, mac) in &net.neigh {
        let vtep = net.fdb.iter().find(|(m, _)| m == mac).map(|(_, dst)| *dst);
        on_network.insert(*ip, (*mac, vtep));
    }
    on_network
}

/// The interfaces published ports answer on: the ones named (each checked to be a public
/// interface of the node), or every interface with an address but the loopback and the node's
/// ingress interface.
fn mesh_interfaces(spec: &MeshSpec, host: &Host, problems: &mut Problems) -> Vec<String> {
    match &spec.interfaces {
        Some(names) => {
            for (i, name) in names.iter().enumerate() {
                if name == "lo" || name == INGRESS_INTERFACE {
                    problems.push(
                        format!("mesh.interfaces[{i}]"),
                        format!("{name:?} cannot carry published ports: name public interfaces"),
                    );
                } else if !host.interfaces.iter().any(|h| &h.name == name) {
                    problems.push(
                        format!("mesh.interfaces[{i}]"),
                        format!("this node has no interface {name:?}"),
                    );
                }
            }
            names.clone()
        }
        None => host
            .interfaces
            .iter()
            .filter(|h| h.name != "lo" && h.name != INGRESS_INTERFACE && !h.addrs.is_empty())
            .map(|h| h.name.clone())
            .collect(),
    }
}

/// Validates the published ports of the service `s` (at `at`): port numbers, none of the
/// overlay's own UDP ports, each published once across services (recorded in `published`), and
/// no `snat` for `mode: host`.
fn service_ports(
    at: &str,
    s: &MeshServiceSpec,
    reserved_udp: &[u16],
    published: &mut BTreeMap<(Protocol, u16), String>,
    problems: &mut Problems,
) -> Vec<PortPlan> {
    let mut ports = Vec::new();
    for (j, p) in s.ports.iter().enumerate() {
        let pat = format!("{at}.ports[{j}]");
        let published_port = port_number(format!("{pat}.published"), p.published, problems);
        let target = port_number(format!("{pat}.target"), p.target, problems);
        let (Some(published_port), Some(target)) = (published_port, target) else {
            continue;
        };
        if p.protocol == Protocol::Udp && reserved_udp.contains(&published_port) {
            problems.push(
                format!("{pat}.published"),
                format!(
                    "{published_port}/udp carries this node's overlay traffic (VXLAN or WireGuard) and cannot be published"
                ),
            );
            continue;
        }
        if let Some(other) =
            published.insert((p.protocol, published_port), format!("{at} ({:?})", s.name))
        {
            problems.push(
                format!("{pat}.published"),
                format!(
                    "{published_port}/{} is already published by {other}",
                    p.protocol.name()
                ),
            );
            continue;
        }
        let host = p.mode == PublishMode::Host;
        if host && p.client_ip == Some(ClientIp::Snat) {
            problems.push(
                format!("{pat}.client_ip"),
                "snat does not apply to mode host, which always keeps the client's address",
            );
            continue;
        }
        ports.push(PortPlan {
            protocol: p.protocol,
            published: published_port,
            target,
            host,
            client_ip: host || p.client_ip.unwrap_or(s.client_ip) == ClientIp::Preserve,
        });
    }
    ports
}

/// The ingress network as a service's backends are checked against it.
struct Ingress<'a> {
    /// The ingress network's ID.
    network: &'a str,
    /// The overlay layout, to tell another network from a missing one.
    layout: &'a Layout,
    /// Addresses on networks whose node was left out.
    dropped: &'a BTreeSet<(String, Ipv4Addr)>,
    /// Who is on the ingress network, by address: the MAC, and the node's data-path address
    /// when remote.
    on_network: BTreeMap<Ipv4Addr, (Mac, Option<Ipv4Addr>)>,
    /// The node's own address on it.
    addr: Ipv4Addr,
}

impl Ingress<'_> {
    /// Validates the backends of the service `s` (at `at`): tasks on the ingress network, in
    /// attachments or endpoints, not the node itself, each listed once. Returns the running
    /// ones, sorted; those whose node was left out go to `left_out`.
    fn backends(
        &self,
        at: &str,
        s: &MeshServiceSpec,
        problems: &mut Problems,
        left_out: &mut Problems,
    ) -> Vec<BackendPlan> {
        let network = self.network;
        let mut backends = Vec::new();
        let mut seen = BTreeSet::new();
        for (j, b) in s.backends.iter().enumerate() {
            let bat = format!("{at}.backends[{j}]");
            if b.network != network {
                let known = self.layout.networks.contains_key(&b.network);
                problems.push(
                    format!("{bat}.network"),
                    if known {
                        format!(
                            "the routing mesh reaches tasks on the ingress network {network:?}, not on {:?}",
                            b.network
                        )
                    } else {
                        format!("no network {:?} in networks", b.network)
                    },
                );
                continue;
            }
            let Ok(ip) = b.ip.parse::<Ipv4Addr>() else {
                problems.push(
                    format!("{bat}.ip"),
                    format!("{:?} is not an IPv4 address", b.ip),
                );
                continue;
            };
            if self.dropped.contains(&(network.to_owned(), ip)) {
                left_out.push(
                    format!("{bat}.ip"),
                    format!("{ip} of service {:?}: its node was left out", s.name),
                );
                continue;
            }
            let Some(&(mac, vtep)) = self.on_network.get(&ip) else {
                problems.push(
                    format!("{bat}.ip"),
                    format!(
                        "no task has {ip} on network {network:?}: a backend must be in attachments or endpoints"
                    ),
                );
                continue;
            };
            if ip == self.addr {
                problems.push(
                    format!("{bat}.ip"),
                    format!("{ip} is this node's own ingress address"),
                );
                continue;
            }
            if !seen.insert(ip) {
                problems.push(
                    format!("{bat}.ip"),
                    format!("{ip} is listed twice in service {:?}", s.name),
                );
                continue;
            }
            // Weight 0 drains: the backend keeps its ID (its connections stay) but gets no slot.
            if b.state == BackendState::Running {
                backends.push(BackendPlan {
                    addr: ip,
                    mac,
                    task: b.task.clone(),
                    weight: b.weight,
                    local: vtep.is_none(),
                    vtep,
                });
            }
        }
        backends.sort();
        backends
    }
}

/// The Maglev table size of the service `s` (at `at`), checked to be a prime no larger than the
/// maximum with enough slots for its weighted `backends`.
fn service_table_size(
    at: &str,
    s: &MeshServiceSpec,
    backends: &[BackendPlan],
    problems: &mut Problems,
) -> u32 {
    let table_size = s.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
    let weighted = backends.iter().filter(|b| b.weight > 0).count();
    let needed = u32::try_from(weighted)
        .unwrap_or(u32::MAX)
        .saturating_mul(SLOTS_PER_BACKEND);
    if !maglev::is_prime(table_size) {
        problems.push(
            format!("{at}.table_size"),
            format!("{table_size} is not a prime number"),
        );
    } else if table_size > MAX_TABLE_SIZE {
        problems.push(
            format!("{at}.table_size"),
            format!("{table_size} is larger than the maximum {MAX_TABLE_SIZE}"),
        );
    } else if table_size < needed {
        problems.push(
            format!("{at}.table_size"),
            format!(
                "{table_size} slots are too few for {weighted} running backends: at least {SLOTS_PER_BACKEND} per backend ({needed}); try {}",
                maglev::next_prime(needed.min(MAX_TABLE_SIZE)),
            ),
        );
    }
    table_size
}

/// Checks the maps' limits (services, `published` ports, local addresses, Maglev slots), so
/// that a state either fits or is refused before anything changes.
fn check_limits(
    spec: &MeshSpec,
    services: &BTreeMap<String, ServicePlan>,
    published: usize,
    local_addrs: &BTreeSet<Ipv4Addr>,
    problems: &mut Problems,
) {
    let mut limits = vec![
        (
            "mesh.services",
            services.len(),
            abi::MAX_SERVICES as usize,
            "services",
        ),
        (
            "mesh.services",
            published,
            abi::MAX_FRONTENDS as usize,
            "published ports",
        ),
    ];
    if spec.interfaces.is_some() || !local_addrs.is_empty() {
        limits.push((
            "mesh.interfaces",
            local_addrs.len(),
            abi::MAX_LOCAL_ADDRS as usize,
            "addresses on the mesh's interfaces",
        ));
    }
    // Every table twice over: a changed table is written beside the one in use.
    let slots: usize = services
        .values()
        .map(|s| {
            let tables = [false, true]
                .iter()
                .filter(|host| s.ports.iter().any(|p| p.host == **host))
                .count();
            tables * s.table_size as usize * 2
        })
        .sum();
    limits.push((
        "mesh.services",
        slots,
        abi::TABLE_CAPACITY as usize,
        "Maglev table slots (each table counted twice, for its replacement)",
    ));
    for (field, count, max, what) in limits {
        if count > max {
            problems.push(field, format!("{count} {what}: at most {max}"));
        }
    }
}
