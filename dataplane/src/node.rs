//! The node's desired data-plane state, as the control plane (or an operator with `shoal
//! dataplane apply`) hands it over, above its three parts: the overlays ([`crate::overlay`]),
//! the routing mesh ([`crate::mesh`]) and the tasks' way out. [`DesiredState::resolve`] checks
//! it all against the node ([`Host`]) and derives what each part must hold ([`Resolved`]).
//!
//! Validation is pure: the only facts it needs from the kernel (which interfaces exist, their
//! addresses and MTUs) come in as a [`Host`]. Every problem is reported with the path of the
//! field that caused it (`networks[1].vni`), all of them at once, before anything touches the
//! kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::common::{Host, InvalidState, Mac, Problem, Problems};
use crate::mesh::{
    self, VipPlan,
    model::{INGRESS_INTERFACE, INGRESS_TASK, MeshPlan, MeshSpec, OWN_NAMESPACE},
};
use crate::overlay::keys::Key;
use crate::overlay::layout::{AttachSpec, Layout, NetDevice, NetLayout, Tunnel, WayOutLayout};
use crate::overlay::model::{
    Attachment, DataPath, MIN_MTU, NetFacts, OverlayEndpoint, OverlayNetwork, Peer, VXLAN_OVERHEAD,
    WAY_OUT_BRIDGE, WIREGUARD_OVERHEAD, WayOut, WgConfig, WgPeer, WireGuard, check_task_side,
    parse_ipv4, parse_key, parse_mac, valid_id,
};
use crate::overlay::vxlan_filter::VxlanFilter;

/// A node's desired data-plane state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// This node's name, as peers and endpoints refer to nodes.
    #[serde(default)]
    pub node: String,
    /// Where overlay traffic enters and leaves this node.
    pub data_path: DataPath,
    /// This node's WireGuard identity; required when any network is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireGuard>,
    /// Overlay networks present on this node.
    #[serde(default)]
    pub networks: Vec<OverlayNetwork>,
    /// Local tasks plugged into those networks.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Tasks on other nodes this node must be able to reach.
    #[serde(default)]
    pub endpoints: Vec<OverlayEndpoint>,
    /// The other nodes.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// The routing mesh: published ports and their backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshSpec>,
    /// The tasks' way out of the node (Docker's `docker_gwbridge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub way_out: Option<WayOut>,
    /// Service VIPs the node's tasks reach, and their running backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<VipSpec>,
}

/// A service's VIP on a network, balanced at the socket for the node's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSpec {
    /// The service's name.
    pub service: String,
    /// The network's ID (one of `networks`).
    pub network: String,
    /// The VIP, an address of the network's subnet.
    pub vip: String,
    /// The running tasks' addresses on the network.
    #[serde(default)]
    pub backends: Vec<String>,
}

/// A validated desired state: the kernel layout to converge to, and the WireGuard engine's
/// configuration when any network is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// What the kernel must hold.
    pub layout: Layout,
    /// What the WireGuard engine must run, if anything.
    pub wireguard: Option<WgConfig>,
    /// Whom plain VXLAN is accepted from, when any network is plain.
    pub vxlan_filter: Option<VxlanFilter>,
    /// The resolved data-path address.
    pub data_path_addr: Ipv4Addr,
    /// The routing mesh, if any.
    pub mesh: Option<MeshPlan>,
    /// What was left out, and why: peers whose description is unusable (a bad, duplicate or
    /// IPv6 address, a bad or duplicate key), with their endpoints and routing-mesh backends.
    /// One bad peer degrades only what it carries; the rest is applied.
    pub left_out: Vec<Problem>,
    /// Service VIPs and their backends.
    pub vips: Vec<VipPlan>,
}

/// Usable peers by node name: their data-path address and WireGuard key.
type UsablePeers<'a> = BTreeMap<&'a str, (Ipv4Addr, Option<Key>)>;

/// The networks as resolved so far, and what the steps after them add to their layout.
struct Nets<'a> {
    /// The valid networks' facts (subnet, gateway, addresses and MACs in use), by ID.
    facts: BTreeMap<&'a str, NetFacts>,
    /// The network each VNI is used by.
    vnis: BTreeMap<u32, String>,
    /// What the kernel must hold.
    layout: Layout,
}

/// What the remote endpoints leave for the routing mesh and WireGuard.
struct Remote<'a> {
    /// The network and address of each endpoint left out, so that backends there are too.
    dropped_ips: BTreeSet<(String, Ipv4Addr)>,
    /// The VNIs of the encrypted networks each peer has endpoints on, by node name.
    peer_vnis: BTreeMap<&'a str, BTreeSet<u32>>,
}

/// Parses the subnet of the network `net` (at `at`): an IPv4 CIDR subnet of at most a /30,
/// without host bits.
fn parse_subnet(at: &str, net: &OverlayNetwork, problems: &mut Problems) -> Option<Ipv4Net> {
    match net.subnet.parse::<Ipv4Net>() {
        Ok(s) if s.prefix_len() > 30 => {
            problems.push(
                format!("{at}.subnet"),
                format!("{s} is too small: a /30 at most"),
            );
            None
        }
        Ok(s) if s != s.trunc() => {
            problems.push(
                format!("{at}.subnet"),
                format!("{s} has host bits set; did you mean {}?", s.trunc()),
            );
            None
        }
        Ok(s) => Some(s),
        Err(_) => {
            problems.push(
                format!("{at}.subnet"),
                format!("{:?} is not an IPv4 CIDR subnet", net.subnet),
            );
            None
        }
    }
}

impl DesiredState {
    /// Parses a desired state from JSON, naming the line and column of a syntax or type error.
    pub fn from_json(text: &str) -> Result<Self, InvalidState> {
        serde_json::from_str(text).map_err(|e| InvalidState {
            problems: vec![Problem {
                field: format!("line {} column {}", e.line(), e.column()),
                message: e.to_string(),
            }],
        })
    }

    /// Checks the state against itself and the host and derives the layout to converge to.
    pub fn resolve(&self, host: &Host) -> Result<Resolved, InvalidState> {
        let mut problems = Problems::default();

        // The data path.
        let data_path = self.resolve_data_path(host, &mut problems);
        for (field, port) in [
            ("data_path.port", self.data_path.port),
            ("data_path.wireguard_port", self.data_path.wireguard_port),
        ] {
            if port == 0 {
                problems.push(field, "the port must be between 1 and 65535");
            }
        }
        let underlay_mtu = data_path.map_or(1500, |(_, mtu)| mtu);

        // Peers: each one that cannot be used is left out on its own (with its endpoints and
        // backends below), and said; the rest applies.
        let mut left_out = Problems::default();
        let own_public = self
            .wireguard
            .as_ref()
            .and_then(|w| w.private_key.parse::<Key>().ok())
            .map(|k| k.public());
        let (peers, dropped_peers) = self.usable_peers(
            data_path.map(|(a, _)| a),
            own_public.as_ref(),
            &mut left_out,
        );

        // Networks.
        let local = data_path.map_or(Ipv4Addr::UNSPECIFIED, |(a, _)| a);
        let mut nets = self.resolve_networks(underlay_mtu, local, &mut problems);

        // Local attachments, and the node's own place on the routing mesh's ingress network.
        let ingress = self.ingress_attachment();
        let mut interfaces: BTreeMap<(PathBuf, &str), String> = BTreeMap::new();
        self.resolve_attachments(ingress.as_ref(), &mut nets, &mut interfaces, &mut problems);

        nets.layout.way_out =
            self.resolve_way_out(host, &nets.facts, &mut interfaces, &mut problems);

        // Service VIPs: on a known network, in its subnet, with backends there.
        let vips = self.resolve_vips(&nets.facts, &mut problems);

        // Remote endpoints.
        let remote = self.resolve_endpoints(
            &peers,
            &dropped_peers,
            &mut nets,
            &mut problems,
            &mut left_out,
        );
        let mut layout = nets.layout;

        // The routing mesh.
        let mesh = self.mesh.as_ref().and_then(|m| {
            let reserved = [self.data_path.port, self.data_path.wireguard_port];
            mesh::model::resolve(
                m,
                &layout,
                host,
                &reserved,
                &remote.dropped_ips,
                &mut problems,
                &mut left_out,
            )
        });

        // WireGuard.
        let private_key = self
            .wireguard
            .as_ref()
            .and_then(|w| parse_key("wireguard.private_key", &w.private_key, &mut problems));
        let cpus = self
            .wireguard
            .as_ref()
            .map_or(&[][..], |w| w.cpus.as_slice());
        check_cpus(cpus, host, &mut problems);

        if !problems.0.is_empty() {
            return Err(InvalidState {
                problems: problems.0,
            });
        }
        let (data_path_addr, underlay_mtu) =
            data_path.expect("no problems, so the data path resolved");
        let wireguard = self.wireguard_config(
            &mut layout,
            (data_path_addr, underlay_mtu),
            private_key,
            cpus,
            &peers,
            &remote.peer_vnis,
        );
        // Plain networks' VXLAN sockets take datagrams to any address of the node's namespace,
        // where anyone can reach them: only the peers may.
        let vxlan_filter = layout
            .networks
            .values()
            .any(|n| !n.device.encrypted)
            .then(|| VxlanFilter {
                port: self.data_path.port,
                peers: peers.values().map(|(addr, _)| *addr).collect(),
            });
        Ok(Resolved {
            layout,
            wireguard,
            vxlan_filter,
            data_path_addr,
            mesh,
            left_out: left_out.0,
            vips,
        })
    }

    /// The networks: each one's ID, VNI, subnet, gateway and MTU checked against the others and
    /// the data path (`underlay_mtu`, `local`), and the valid ones laid out.
    fn resolve_networks(
        &self,
        underlay_mtu: u32,
        local: Ipv4Addr,
        problems: &mut Problems,
    ) -> Nets<'_> {
        let mut nets = Nets {
            facts: BTreeMap::new(),
            vnis: BTreeMap::new(),
            layout: Layout::default(),
        };
        for (i, net) in self.networks.iter().enumerate() {
            let at = format!("networks[{i}]");
            let Some((subnet, gateway, mtu)) =
                self.check_network(&at, net, &nets, underlay_mtu, problems)
            else {
                continue;
            };
            nets.vnis.insert(net.vni, format!("network {:?}", net.id));
            nets.facts.insert(
                &net.id,
                NetFacts {
                    subnet,
                    gateway,
                    encrypted: net.encrypted,
                    ips: BTreeMap::new(),
                    macs: BTreeMap::new(),
                },
            );
            nets.layout.networks.insert(
                net.id.clone(),
                NetLayout {
                    device: NetDevice {
                        vni: net.vni,
                        local,
                        port: self.data_path.port,
                        mtu,
                        encrypted: net.encrypted,
                        gateway: Ipv4Net::new(gateway, subnet.prefix_len())
                            .expect("prefix from a subnet"),
                    },
                    ..NetLayout::default()
                },
            );
        }
        nets
    }

    /// Checks the network `net` (at `at`) against itself, the networks before it (`nets`) and
    /// the data-path interface's MTU. Its subnet, gateway and MTU when it is valid.
    fn check_network(
        &self,
        at: &str,
        net: &OverlayNetwork,
        nets: &Nets<'_>,
        underlay_mtu: u32,
        problems: &mut Problems,
    ) -> Option<(Ipv4Net, Ipv4Addr, u32)> {
        if !valid_id(&net.id) {
            problems.push(
                format!("{at}.id"),
                format!(
                    "{:?} is not a network ID (1 to 64 letters, digits, '_', '.', '-')",
                    net.id
                ),
            );
            return None;
        }
        if nets.facts.contains_key(net.id.as_str()) {
            problems.push(
                format!("{at}.id"),
                format!("network {:?} is listed twice", net.id),
            );
            return None;
        }
        let mut ok = true;
        if !(1..=0x00ff_ffff).contains(&net.vni) {
            problems.push(
                format!("{at}.vni"),
                format!("{} is not a VNI (1 to 16777215)", net.vni),
            );
            ok = false;
        } else if let Some(other) = nets.vnis.get(&net.vni) {
            problems.push(
                format!("{at}.vni"),
                format!("VNI {} is already used by {other}", net.vni),
            );
            ok = false;
        }
        let subnet = parse_subnet(at, net, problems)?;
        if let Some((other, _)) = nets.facts.iter().find(|(_, f)| {
            f.subnet.contains(&subnet.network()) || subnet.contains(&f.subnet.network())
        }) {
            problems.push(
                format!("{at}.subnet"),
                format!("{subnet} overlaps the subnet of network {other:?}"),
            );
            ok = false;
        }
        let gateway = match &net.gateway {
            None => subnet.hosts().next(),
            Some(g) => parse_ipv4(&format!("{at}.gateway"), g, problems),
        };
        let gateway = gateway?;
        if !subnet.contains(&gateway)
            || gateway == subnet.network()
            || gateway == subnet.broadcast()
        {
            problems.push(
                format!("{at}.gateway"),
                format!("{gateway} is not a host address of {subnet}"),
            );
            ok = false;
        }
        let max_mtu = underlay_mtu
            .saturating_sub(VXLAN_OVERHEAD + if net.encrypted { WIREGUARD_OVERHEAD } else { 0 });
        let mtu = net.mtu.unwrap_or(max_mtu);
        if mtu > max_mtu || mtu < MIN_MTU {
            problems.push(
                format!("{at}.mtu"),
                format!(
                    "{mtu} does not fit: the data-path interface's MTU {underlay_mtu} leaves {MIN_MTU}..={max_mtu} for {} network",
                    if net.encrypted { "an encrypted" } else { "a" }
                ),
            );
            ok = false;
        }
        if net.encrypted && self.wireguard.is_none() {
            problems.push(
                "wireguard.private_key",
                format!(
                    "network {:?} is encrypted, so this node needs a WireGuard private key",
                    net.id
                ),
            );
        }
        ok.then_some((subnet, gateway, mtu))
    }

    /// Whether the network `id` (named at `field`) is valid; when it is not, says so unless it
    /// is listed in networks (where its own problems were said).
    fn known_net(
        &self,
        field: &str,
        id: &str,
        nets: &BTreeMap<&str, NetFacts>,
        problems: &mut Problems,
    ) -> bool {
        if nets.contains_key(id) {
            true
        } else {
            if !self.networks.iter().any(|n| n.id == id) {
                problems.push(field, format!("no network {id:?} in networks"));
            }
            false
        }
    }

    /// The node's own attachment to the routing mesh's ingress network, when there is a mesh.
    fn ingress_attachment(&self) -> Option<Attachment> {
        self.mesh.as_ref().map(|m| Attachment {
            task: INGRESS_TASK.to_owned(),
            netns: PathBuf::from(OWN_NAMESPACE),
            network: m.ingress.network.clone(),
            ip: m.ingress.ip.clone(),
            mac: None,
            interface: INGRESS_INTERFACE.to_owned(),
            default_route: false,
            replies_via_gateway: false,
        })
    }

    /// The local attachments, then the node's own `ingress` attachment: each task side checked
    /// (its interface recorded in `interfaces`), its address and MAC claimed on a known
    /// network, and laid out there.
    fn resolve_attachments<'a>(
        &'a self,
        ingress: Option<&'a Attachment>,
        nets: &mut Nets<'_>,
        interfaces: &mut BTreeMap<(PathBuf, &'a str), String>,
        problems: &mut Problems,
    ) {
        for (i, a) in self.attachments.iter().chain(ingress).enumerate() {
            let at = if i == self.attachments.len() {
                "mesh.ingress".to_owned()
            } else {
                format!("attachments[{i}]")
            };
            check_task_side(&at, (&a.task, &a.netns, &a.interface), interfaces, problems);
            if !self.known_net(&format!("{at}.network"), &a.network, &nets.facts, problems) {
                continue;
            }
            let Some(ip) = parse_ipv4(&format!("{at}.ip"), &a.ip, problems) else {
                continue;
            };
            let Some(mac) = parse_mac(&format!("{at}.mac"), a.mac.as_deref(), ip, problems) else {
                continue;
            };
            let facts = nets
                .facts
                .get_mut(a.network.as_str())
                .expect("checked above");
            if !facts.claim_ip(&format!("{at}.ip"), ip, problems)
                | !facts.claim_mac(&format!("{at}.mac"), mac, problems)
            {
                continue;
            }
            let net = nets
                .layout
                .networks
                .get_mut(&a.network)
                .expect("checked above");
            let spec = AttachSpec {
                task: a.task.clone(),
                netns: a.netns.clone(),
                interface: a.interface.clone(),
                addr: Ipv4Net::new(ip, facts.subnet.prefix_len()).expect("prefix from a subnet"),
                mac,
                mtu: net.device.mtu,
                default_route: a.default_route.then_some(facts.gateway),
                reply_gateway: a.replies_via_gateway.then_some(facts.gateway),
            };
            net.attachments.insert(spec.veth_name(), spec);
        }
    }

    /// The service VIPs: each on a known network, in its subnet and listed once, with its
    /// backends there (sorted, without duplicates).
    fn resolve_vips(
        &self,
        nets: &BTreeMap<&str, NetFacts>,
        problems: &mut Problems,
    ) -> Vec<VipPlan> {
        let mut vips = Vec::new();
        let mut seen_vips = BTreeSet::new();
        for (i, v) in self.vips.iter().enumerate() {
            let at = format!("vips[{i}]");
            let Some(facts) = nets.get(v.network.as_str()) else {
                if !self.networks.iter().any(|n| n.id == v.network) {
                    problems.push(
                        format!("{at}.network"),
                        format!("no network {:?} in networks", v.network),
                    );
                }
                continue;
            };
            let in_subnet = |field: String, value: &str, problems: &mut Problems| {
                let ip = parse_ipv4(&field, value, problems)?;
                if facts.subnet.contains(&ip) {
                    Some(ip)
                } else {
                    problems.push(
                        field,
                        format!("{ip} is outside the network's subnet {}", facts.subnet),
                    );
                    None
                }
            };
            let Some(vip) = in_subnet(format!("{at}.vip"), &v.vip, problems) else {
                continue;
            };
            if !seen_vips.insert(vip) {
                problems.push(format!("{at}.vip"), format!("{vip} is listed twice"));
                continue;
            }
            let mut backends: Vec<Ipv4Addr> = v
                .backends
                .iter()
                .enumerate()
                .filter_map(|(j, b)| in_subnet(format!("{at}.backends[{j}]"), b, problems))
                .collect();
            backends.sort();
            backends.dedup();
            vips.push(VipPlan {
                service: v.service.clone(),
                vip,
                backends,
            });
        }
        vips
    }

    /// The remote endpoints: each on a known network with its address and MAC claimed there,
    /// on a usable peer (`peers`), and laid out as FDB and neighbour entries. Those whose node
    /// was left out (`dropped_peers`), or which are on an encrypted network but their peer has
    /// no key, go to `left_out`.
    fn resolve_endpoints<'a>(
        &'a self,
        peers: &UsablePeers<'_>,
        dropped_peers: &BTreeSet<&str>,
        nets: &mut Nets<'_>,
        problems: &mut Problems,
        left_out: &mut Problems,
    ) -> Remote<'a> {
        let mut dropped_ips: BTreeSet<(String, Ipv4Addr)> = BTreeSet::new();
        let mut peer_vnis: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}]");
            if !self.known_net(&format!("{at}.network"), &e.network, &nets.facts, problems) {
                continue;
            }
            let Some(ip) = parse_ipv4(&format!("{at}.ip"), &e.ip, problems) else {
                continue;
            };
            let Some(mac) = parse_mac(&format!("{at}.mac"), e.mac.as_deref(), ip, problems) else {
                continue;
            };
            let facts = nets
                .facts
                .get_mut(e.network.as_str())
                .expect("checked above");
            if dropped_peers.contains(e.node.as_str()) {
                left_out.push(
                    format!("{at}.node"),
                    format!(
                        "{} on network {:?}: its node {:?} was left out",
                        ip, e.network, e.node
                    ),
                );
                dropped_ips.insert((e.network.clone(), ip));
                continue;
            }
            let ip_ok = facts.claim_ip(&format!("{at}.ip"), ip, problems);
            let mac_ok = facts.claim_mac(&format!("{at}.mac"), mac, problems);
            let Some((node_addr, key)) = peers.get(e.node.as_str()) else {
                if e.node == self.node {
                    problems.push(
                        format!("{at}.node"),
                        "endpoints on this node belong in attachments",
                    );
                } else if !self.peers.iter().any(|p| p.node == e.node) {
                    problems.push(
                        format!("{at}.node"),
                        format!("no node {:?} in peers", e.node),
                    );
                }
                continue;
            };
            if facts.encrypted && key.is_none() {
                left_out.push(
                    format!("{at}.node"),
                    format!(
                        "network {:?} is encrypted but peer {:?} has no public_key",
                        e.network, e.node
                    ),
                );
                dropped_ips.insert((e.network.clone(), ip));
                continue;
            }
            if !(ip_ok && mac_ok) {
                continue;
            }
            let net = nets
                .layout
                .networks
                .get_mut(&e.network)
                .expect("checked above");
            net.fdb.insert((mac, *node_addr));
            net.neigh.insert((ip, mac));
            if facts.encrypted {
                peer_vnis
                    .entry(e.node.as_str())
                    .or_default()
                    .insert(net.device.vni);
            }
        }
        Remote {
            dropped_ips,
            peer_vnis,
        }
    }

    /// The WireGuard engine's configuration, when any network in `layout` is encrypted and the
    /// node has a private key: the engine on the data path (`data_path`, its address and MTU),
    /// and each usable peer with a key, with the VNIs of the encrypted networks it has
    /// endpoints on (`peer_vnis`). Sets the layout's tunnel to go with it.
    fn wireguard_config<'a>(
        &self,
        layout: &mut Layout,
        (data_path_addr, underlay_mtu): (Ipv4Addr, u32),
        private_key: Option<Key>,
        cpus: &[usize],
        peers: &UsablePeers<'a>,
        peer_vnis: &BTreeMap<&'a str, BTreeSet<u32>>,
    ) -> Option<WgConfig> {
        let encrypted = layout.networks.values().any(|n| n.device.encrypted);
        match (encrypted, private_key) {
            (true, Some(private_key)) => {
                layout.tunnel = Some(Tunnel {
                    addr: data_path_addr,
                    mtu: underlay_mtu - WIREGUARD_OVERHEAD,
                    port: self.data_path.wireguard_port,
                });
                Some(WgConfig {
                    private_key,
                    local: data_path_addr,
                    port: self.data_path.wireguard_port,
                    vxlan_port: self.data_path.port,
                    cpus: cpus.to_vec(),
                    peers: peers
                        .iter()
                        .filter_map(|(node, (addr, key))| {
                            Some((
                                (*node).to_owned(),
                                WgPeer {
                                    addr: *addr,
                                    public_key: key.clone()?,
                                    vnis: peer_vnis.get(node).cloned().unwrap_or_default(),
                                },
                            ))
                        })
                        .collect(),
                })
            }
            _ => None,
        }
    }

    /// The way out: its subnet apart from the overlays' and the node's addresses, each task's
    /// address in it once, its interface free in the task, and no other default route there.
    fn resolve_way_out<'a>(
        &'a self,
        host: &Host,
        nets: &BTreeMap<&str, NetFacts>,
        interfaces: &mut BTreeMap<(PathBuf, &'a str), String>,
        problems: &mut Problems,
    ) -> Option<WayOutLayout> {
        let way_out = self.way_out.as_ref()?;
        let subnet = match way_out.subnet.parse::<Ipv4Net>() {
            Ok(s) if s.prefix_len() > 30 || s != s.trunc() => {
                problems.push(
                    "way_out.subnet",
                    format!("{s} is not a subnet of at least 4 addresses without host bits"),
                );
                return None;
            }
            Ok(s) => s,
            Err(_) => {
                problems.push(
                    "way_out.subnet",
                    format!("{:?} is not an IPv4 CIDR subnet", way_out.subnet),
                );
                return None;
            }
        };
        if let Some((other, _)) = nets.iter().find(|(_, f)| {
            f.subnet.contains(&subnet.network()) || subnet.contains(&f.subnet.network())
        }) {
            problems.push(
                "way_out.subnet",
                format!("{subnet} overlaps the subnet of network {other:?}"),
            );
            return None;
        }
        if let Some(i) = host
            .interfaces
            .iter()
            .find(|i| i.name != WAY_OUT_BRIDGE && i.addrs.iter().any(|a| subnet.contains(a)))
        {
            problems.push(
                "way_out.subnet",
                format!(
                    "{subnet} holds an address of the node's interface {}",
                    i.name
                ),
            );
            return None;
        }
        let gateway = subnet.hosts().next().expect("a /30 at most has hosts");
        let mtu = host
            .interfaces
            .iter()
            .filter(|i| i.name != "lo" && i.name != WAY_OUT_BRIDGE && i.mtu > 0)
            .map(|i| i.mtu)
            .min()
            .unwrap_or(1500);
        let mut facts = NetFacts {
            subnet,
            gateway,
            encrypted: false,
            ips: BTreeMap::new(),
            macs: BTreeMap::new(),
        };
        let mut layout = WayOutLayout {
            gateway: Ipv4Net::new(gateway, subnet.prefix_len()).expect("prefix from a subnet"),
            attachments: BTreeMap::new(),
        };
        for (i, a) in way_out.attachments.iter().enumerate() {
            let at = format!("way_out.attachments[{i}]");
            if let Some(other) = self
                .attachments
                .iter()
                .position(|o| o.default_route && o.netns == a.netns)
            {
                problems.push(
                    format!("{at}.netns"),
                    format!("the task's default route is through attachments[{other}] already"),
                );
            }
            if !check_task_side(&at, (&a.task, &a.netns, &a.interface), interfaces, problems) {
                continue;
            }
            let Some(ip) = parse_ipv4(&format!("{at}.ip"), &a.ip, problems) else {
                continue;
            };
            if !facts.claim_ip(&format!("{at}.ip"), ip, problems) {
                continue;
            }
            let spec = AttachSpec {
                task: a.task.clone(),
                netns: a.netns.clone(),
                interface: a.interface.clone(),
                addr: Ipv4Net::new(ip, subnet.prefix_len()).expect("prefix from a subnet"),
                mac: Mac::from_ip(ip),
                mtu,
                default_route: Some(gateway),
                reply_gateway: None,
            };
            layout.attachments.insert(spec.way_out_veth_name(), spec);
        }
        Some(layout)
    }

    /// The peers that can be used, by node name (their data-path address and key), and the
    /// names of those left out. A peer is left out, with the reason in `left_out`, when it has
    /// no name, is this node, or its address is not an IPv4 address, is this node's own, or is
    /// claimed by another peer; or when its key does not parse, is this node's own, or is
    /// claimed by another peer. Duplicates leave out every claimant: which one is genuine cannot
    /// be told here (the managers refuse such descriptions in the first place).
    fn usable_peers<'a>(
        &'a self,
        own_addr: Option<Ipv4Addr>,
        own_public: Option<&Key>,
        left_out: &mut Problems,
    ) -> (UsablePeers<'a>, BTreeSet<&'a str>) {
        let mut candidates: Vec<(usize, &str, Ipv4Addr, Option<Key>)> = Vec::new();
        let mut dropped: BTreeSet<&str> = BTreeSet::new();
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for peer in &self.peers {
            *names.entry(peer.node.as_str()).or_default() += 1;
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let at = format!("peers[{i}]");
            let mut drop = |field: &str, message: String| {
                left_out.push(format!("{at}.{field}"), message);
                dropped.insert(peer.node.as_str());
            };
            if peer.node.is_empty() {
                drop("node", "a peer needs a node name".into());
                continue;
            }
            if peer.node == self.node {
                drop("node", format!("{:?} is this node itself", peer.node));
                continue;
            }
            if names[peer.node.as_str()] > 1 {
                drop(
                    "node",
                    format!("node {:?} is listed more than once", peer.node),
                );
                continue;
            }
            let mut parsed = Problems::default();
            let Some(addr) = parse_ipv4("data_path_addr", &peer.data_path_addr, &mut parsed) else {
                let message = parsed.0.pop().map(|p| p.message).unwrap_or_default();
                drop("data_path_addr", message);
                continue;
            };
            if addr.is_unspecified()
                || addr.is_loopback()
                || addr.is_multicast()
                || addr.is_broadcast()
            {
                drop(
                    "data_path_addr",
                    format!("{addr} cannot be a data-path address"),
                );
                continue;
            }
            if Some(addr) == own_addr {
                drop(
                    "data_path_addr",
                    format!("{addr} is this node's own data-path address"),
                );
                continue;
            }
            let key = match peer.public_key.as_deref().map(str::parse::<Key>) {
                None => None,
                Some(Ok(key)) if Some(&key) == own_public => {
                    drop("public_key", "this node's own WireGuard public key".into());
                    continue;
                }
                Some(Ok(key)) => Some(key),
                Some(Err(e)) => {
                    drop("public_key", e.to_string());
                    continue;
                }
            };
            candidates.push((i, &peer.node, addr, key));
        }
        // Addresses and keys claimed twice: every claimant is left out.
        let mut by_addr: BTreeMap<Ipv4Addr, Vec<usize>> = BTreeMap::new();
        let mut by_key: BTreeMap<[u8; 32], Vec<usize>> = BTreeMap::new();
        for (n, (_, _, addr, key)) in candidates.iter().enumerate() {
            by_addr.entry(*addr).or_default().push(n);
            if let Some(key) = key {
                by_key.entry(key.0).or_default().push(n);
            }
        }
        let mut shared: BTreeMap<usize, (&str, String)> = BTreeMap::new();
        for claimants in by_addr.values().filter(|c| c.len() > 1) {
            let (_, _, addr, _) = candidates[claimants[0]];
            for n in claimants {
                shared.entry(*n).or_insert_with(|| {
                    (
                        "data_path_addr",
                        format!("{addr} is claimed by {} peers", claimants.len()),
                    )
                });
            }
        }
        for claimants in by_key.values().filter(|c| c.len() > 1) {
            for n in claimants {
                shared.entry(*n).or_insert_with(|| {
                    (
                        "public_key",
                        format!(
                            "the same WireGuard key is claimed by {} peers",
                            claimants.len()
                        ),
                    )
                });
            }
        }
        let mut peers = BTreeMap::new();
        for (n, (i, node, addr, key)) in candidates.into_iter().enumerate() {
            match shared.remove(&n) {
                Some((field, message)) => {
                    left_out.push(format!("peers[{i}].{field}"), message);
                    dropped.insert(node);
                }
                None => {
                    peers.insert(node, (addr, key));
                }
            }
        }
        (peers, dropped)
    }

    fn resolve_data_path(&self, host: &Host, problems: &mut Problems) -> Option<(Ipv4Addr, u32)> {
        let value = self.data_path.addr.trim();
        if value.is_empty() {
            problems.push(
                "data_path.addr",
                "a data-path address (an IPv4 address or interface name) is required",
            );
            return None;
        }
        match value.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => match host.interfaces.iter().find(|i| i.addrs.contains(&ip)) {
                Some(i) => Some((ip, i.mtu)),
                None => {
                    problems.push(
                        "data_path.addr",
                        format!("{ip} is not an address of this node"),
                    );
                    None
                }
            },
            Ok(IpAddr::V6(_)) => {
                problems.push(
                    "data_path.addr",
                    format!("{value} is IPv6; the data path is IPv4 only for now"),
                );
                None
            }
            Err(_) => match host.interfaces.iter().find(|i| i.name == value) {
                None => {
                    problems.push(
                        "data_path.addr",
                        format!(
                            "{value:?} is neither an IPv4 address nor an interface of this node"
                        ),
                    );
                    None
                }
                Some(i) => match i.addrs.as_slice() {
                    [ip] => Some((*ip, i.mtu)),
                    [] => {
                        problems.push(
                            "data_path.addr",
                            format!("interface {value} has no IPv4 address"),
                        );
                        None
                    }
                    many => {
                        let list: Vec<String> = many.iter().map(Ipv4Addr::to_string).collect();
                        problems.push(
                            "data_path.addr",
                            format!(
                                "interface {value} has several IPv4 addresses ({}); name one",
                                list.join(", ")
                            ),
                        );
                        None
                    }
                },
            },
        }
    }
}

/// `wireguard.cpus`: at most two, each one the process may run on.
fn check_cpus(cpus: &[usize], host: &Host, problems: &mut Problems) {
    if let Err(why) = super::overlay::affinity::check(cpus, &host.cpus) {
        problems.push("wireguard.cpus", why);
    }
}
