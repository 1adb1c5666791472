//! What the kernel holds for a node's overlays, and the planner that turns the difference between
//! the desired and the observed layout into an ordered list of operations.
//!
//! A [`Layout`] is the desired side, an [`Observed`] what the executor read back from the kernel.
//! They differ in one place: a task's veth is named after everything that defines it (see
//! [`AttachSpec::veth_name`]), so the observed side only needs the names.
//!
//! Ordering rules, which [`Observed::apply`] enforces and the property tests check on every plan:
//! everything that goes away goes first (so addresses and names are free again), a network's
//! attachments leave before the network does, and encrypted networks leave before the tunnel their
//! VXLAN socket lives behind; the way out's veths leave before its bridge does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::common::Mac;

/// The desired kernel layout of a node's overlays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// The WireGuard tunnel namespace, present when any network is encrypted.
    pub tunnel: Option<Tunnel>,
    /// The networks by ID.
    pub networks: BTreeMap<String, NetLayout>,
    /// The tasks' way out of the node, when any task has one.
    pub way_out: Option<WayOutLayout>,
}

/// The tasks' way out (Docker's `docker_gwbridge`): a bridge in the node's own namespace holding
/// the gateway address, a veth per task with its default route through it, and source NAT to the
/// node's address for whatever leaves through another interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WayOutLayout {
    /// The gateway address and the subnet's prefix length, held by the bridge.
    pub gateway: Ipv4Net,
    /// The tasks' veths, by name (`vg` and the hash of [`AttachSpec::veth_name`]).
    pub attachments: BTreeMap<String, AttachSpec>,
}

/// The namespace encrypted networks' VXLAN sockets live in: a TAP device holding the data-path
/// address, routed into the WireGuard engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// The data-path address, held by the TAP device.
    pub addr: Ipv4Addr,
    /// The TAP device's MTU.
    pub mtu: u32,
    /// The WireGuard UDP port the engine's socket binds.
    pub port: u16,
}

/// One network on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetLayout {
    /// The bridge and VXLAN device.
    pub device: NetDevice,
    /// Remote MACs and the data-path address of the node each lives on.
    pub fdb: BTreeSet<(Mac, Ipv4Addr)>,
    /// Remote addresses and their MACs (answered by the VXLAN device's ARP proxy).
    pub neigh: BTreeSet<(Ipv4Addr, Mac)>,
    /// Local tasks, by veth name.
    pub attachments: BTreeMap<String, AttachSpec>,
}

/// Everything that defines a network's bridge and VXLAN device: a change to any of it means a new
/// network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetDevice {
    /// The VXLAN network identifier.
    pub vni: u32,
    /// The data-path address the VXLAN socket binds.
    pub local: Ipv4Addr,
    /// The VXLAN UDP port.
    pub port: u16,
    /// The MTU of the bridge, the VXLAN device and the veths.
    pub mtu: u32,
    /// Whether the VXLAN socket lives behind the WireGuard tunnel.
    pub encrypted: bool,
    /// The gateway address and the subnet's prefix length, held by the bridge.
    pub gateway: Ipv4Net,
}

impl Default for NetDevice {
    fn default() -> Self {
        NetDevice {
            vni: 0,
            local: Ipv4Addr::UNSPECIFIED,
            port: 0,
            mtu: 0,
            encrypted: false,
            gateway: Ipv4Net::default(),
        }
    }
}

/// A task's interface on a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachSpec {
    /// The task.
    pub task: String,
    /// Its network namespace.
    pub netns: PathBuf,
    /// The interface name inside it.
    pub interface: String,
    /// Its address and the subnet's prefix length.
    pub addr: Ipv4Net,
    /// Its MAC.
    pub mac: Mac,
    /// Its MTU.
    pub mtu: u32,
    /// The gateway the task's default route goes through, when it has one on this network.
    pub default_route: Option<Ipv4Addr>,
    /// The gateway that whatever leaves from this address goes through, whatever the default
    /// route (source routing: the routing mesh's replies to outside clients).
    pub reply_gateway: Option<Ipv4Addr>,
}

impl AttachSpec {
    /// The name of the veth end that stays in the network's namespace: `vt` and 12 hex digits of a
    /// hash of every field, so a changed attachment gets a new veth and the kernel's names alone
    /// tell what is there.
    pub fn veth_name(&self) -> String {
        // FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let fields = [
            self.task.as_bytes(),
            self.netns.as_os_str().as_encoded_bytes(),
            self.interface.as_bytes(),
            &self.addr.addr().octets(),
            &[self.addr.prefix_len()],
            &self.mac.0,
            &self.mtu.to_be_bytes(),
            // Only when set, so attachments without a route keep the names they had.
            match &self.default_route {
                Some(gateway) => &gateway.octets()[..],
                None => &[][..],
            },
            match &self.reply_gateway {
                Some(gateway) => &gateway.octets()[..],
                None => &[][..],
            },
        ];
        for field in fields {
            for &b in field.iter().chain(&[0xff]) {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        format!("vt{:012x}", hash >> 16)
    }

    /// The name of the veth end that stays in the node's namespace when this attachment is a way
    /// out: as [`AttachSpec::veth_name`], with `vg` for `vt`.
    pub fn way_out_veth_name(&self) -> String {
        format!("vg{}", &self.veth_name()[2..])
    }
}

/// The tunnel as the kernel has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TunnelState {
    /// No tunnel namespace.
    #[default]
    Absent,
    /// The namespace is there (encrypted networks' sockets may live in it) but not the TAP device,
    /// as after a restart: the device dies with the process that held it.
    NamespaceOnly,
    /// Namespace and TAP device, with this address and MTU.
    Up(Tunnel),
}

/// A network's VXLAN device counters on this node: what its tasks sent to tasks on other nodes
/// (`tx`) and received from them (`rx`), as frames inside VXLAN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkCounters {
    /// Frames sent.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames received.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
}

/// What the executor read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The tunnel.
    pub tunnel: TunnelState,
    /// The networks by ID.
    pub networks: BTreeMap<String, ObservedNet>,
    /// The way out, when its bridge exists.
    pub way_out: Option<ObservedWayOut>,
}

/// The way out as the kernel has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedWayOut {
    /// The bridge's address.
    pub gateway: Ipv4Net,
    /// Names of the task veths on the bridge.
    pub attachments: BTreeSet<String>,
}

/// One network as the kernel has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedNet {
    /// The bridge and VXLAN device.
    pub device: NetDevice,
    /// FDB entries of the VXLAN device.
    pub fdb: BTreeSet<(Mac, Ipv4Addr)>,
    /// Neighbour entries of the VXLAN device.
    pub neigh: BTreeSet<(Ipv4Addr, Mac)>,
    /// Names of the task veths in the network's namespace.
    pub attachments: BTreeSet<String>,
    /// Whether frames the namespace's bridge forwards pass netfilter's IP hooks
    /// (`br_netfilter`'s `bridge-nf-call-*` switches, on by default in every namespace where the
    /// kernel has it). Shoal keeps no netfilter rule in a network's namespace, so a desired
    /// layout always has them off.
    pub bridge_netfilter: bool,
}

impl Layout {
    /// What the kernel holds once this layout is applied.
    pub fn observed(&self) -> Observed {
        Observed {
            tunnel: self.tunnel.map_or(TunnelState::Absent, TunnelState::Up),
            networks: self
                .networks
                .iter()
                .map(|(id, net)| {
                    (
                        id.clone(),
                        ObservedNet {
                            device: net.device,
                            fdb: net.fdb.clone(),
                            neigh: net.neigh.clone(),
                            attachments: net.attachments.keys().cloned().collect(),
                            bridge_netfilter: false,
                        },
                    )
                })
                .collect(),
            way_out: self.way_out.as_ref().map(|w| ObservedWayOut {
                gateway: w.gateway,
                attachments: w.attachments.keys().cloned().collect(),
            }),
        }
    }
}

/// One step towards the desired layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutStep {
    /// Removes a task's veth pair.
    Detach { net: String, veth: String },
    /// Removes a neighbour entry.
    DelNeigh { net: String, ip: Ipv4Addr, mac: Mac },
    /// Removes an FDB entry.
    DelFdb {
        net: String,
        mac: Mac,
        dst: Ipv4Addr,
    },
    /// Removes a network: VXLAN device, bridge, namespace.
    DeleteNetwork { net: String },
    /// Stops the WireGuard engine and removes the tunnel namespace.
    DeleteTunnel,
    /// Creates (or completes, after a restart) the tunnel namespace and its TAP device.
    CreateTunnel(Tunnel),
    /// Creates a network's namespace, bridge and VXLAN device.
    CreateNetwork { net: String, device: NetDevice },
    /// Adds an FDB entry: frames for `mac` go to the node at `dst`.
    AddFdb {
        net: String,
        mac: Mac,
        dst: Ipv4Addr,
    },
    /// Adds a permanent neighbour entry.
    AddNeigh { net: String, ip: Ipv4Addr, mac: Mac },
    /// Turns off netfilter for the frames a network's bridge forwards (`br_netfilter` turned it
    /// on: in a namespace created before it loaded, or when it loaded after).
    BridgeNetfilterOff { net: String },
    /// Creates a task's veth pair and configures the task's end.
    Attach {
        net: String,
        veth: String,
        spec: AttachSpec,
    },
    /// Removes a task's way out.
    DetachWayOut { veth: String },
    /// Removes the way-out bridge and its NAT.
    DeleteWayOut,
    /// Creates the way-out bridge with this gateway address, and its NAT.
    CreateWayOut(Ipv4Net),
    /// Gives a task its way out: a veth on the bridge, the default route through it.
    AttachWayOut { veth: String, spec: AttachSpec },
}

impl fmt::Display for LayoutStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutStep::Detach { net, veth } => write!(f, "network {net}: detach {veth}"),
            LayoutStep::DelNeigh { net, ip, mac } => {
                write!(f, "network {net}: remove neighbour {ip} {mac}")
            }
            LayoutStep::DelFdb { net, mac, dst } => {
                write!(f, "network {net}: remove fdb {mac} via {dst}")
            }
            LayoutStep::DeleteNetwork { net } => write!(f, "network {net}: delete"),
            LayoutStep::BridgeNetfilterOff { net } => {
                write!(f, "network {net}: bridged frames skip netfilter")
            }
            LayoutStep::DeleteTunnel => write!(f, "tunnel: delete"),
            LayoutStep::CreateTunnel(t) => write!(
                f,
                "tunnel: create {} mtu {} wireguard port {}",
                t.addr, t.mtu, t.port
            ),
            LayoutStep::CreateNetwork { net, device: d } => write!(
                f,
                "network {net}: create vni {} {}:{} mtu {} gateway {}{}",
                d.vni,
                d.local,
                d.port,
                d.mtu,
                d.gateway,
                if d.encrypted { " encrypted" } else { "" }
            ),
            LayoutStep::AddFdb { net, mac, dst } => {
                write!(f, "network {net}: add fdb {mac} via {dst}")
            }
            LayoutStep::AddNeigh { net, ip, mac } => {
                write!(f, "network {net}: add neighbour {ip} {mac}")
            }
            LayoutStep::Attach { net, veth, spec } => write!(
                f,
                "network {net}: attach task {} as {} {} ({veth}) in {}",
                spec.task,
                spec.interface,
                spec.addr,
                spec.netns.display()
            ),
            LayoutStep::DetachWayOut { veth } => write!(f, "way out: detach {veth}"),
            LayoutStep::DeleteWayOut => write!(f, "way out: delete"),
            LayoutStep::CreateWayOut(gateway) => write!(f, "way out: create gateway {gateway}"),
            LayoutStep::AttachWayOut { veth, spec } => write!(
                f,
                "way out: attach task {} as {} {} ({veth}) in {}",
                spec.task,
                spec.interface,
                spec.addr,
                spec.netns.display()
            ),
        }
    }
}

/// The operations that take the kernel from `observed` to `desired`, in an order that never
/// strands a device (see the module documentation).
pub fn plan(desired: &Layout, observed: &Observed) -> Vec<LayoutStep> {
    let mut removals = Vec::new();
    let mut creations = Vec::new();

    let tunnel_goes = match (observed.tunnel, desired.tunnel) {
        (TunnelState::Absent, _) => false,
        (TunnelState::Up(have), Some(want)) => have != want,
        (TunnelState::NamespaceOnly, Some(_)) => false,
        (_, None) => true,
    };

    let kept = plan_network_removals(desired, observed, tunnel_goes, &mut removals);
    plan_way_out(desired, observed, &mut removals, &mut creations);

    if tunnel_goes {
        removals.push(LayoutStep::DeleteTunnel);
    }
    if let Some(want) = desired.tunnel
        && (tunnel_goes || observed.tunnel != TunnelState::Up(want))
    {
        creations.push(LayoutStep::CreateTunnel(want));
    }

    plan_network_creations(desired, observed, &kept, &mut creations);

    removals.extend(creations);
    removals
}

/// Pushes what goes away from the observed networks onto `removals`: whole networks that are no
/// longer desired or must be recreated (a changed device, or an encrypted one whose tunnel goes),
/// and the stale attachments, neighbours and FDB entries of the others. Returns the IDs of the
/// networks kept.
fn plan_network_removals<'a>(
    desired: &Layout,
    observed: &'a Observed,
    tunnel_goes: bool,
    removals: &mut Vec<LayoutStep>,
) -> BTreeSet<&'a str> {
    let mut kept = BTreeSet::new();
    for (id, have) in &observed.networks {
        let want = desired.networks.get(id);
        let recreate = match want {
            None => true,
            Some(want) => want.device != have.device || (have.device.encrypted && tunnel_goes),
        };
        let detach = |veth: &String| LayoutStep::Detach {
            net: id.clone(),
            veth: veth.clone(),
        };
        if recreate {
            removals.extend(have.attachments.iter().map(detach));
            removals.push(LayoutStep::DeleteNetwork { net: id.clone() });
            continue;
        }
        let want = want.expect("not recreated, so desired");
        kept.insert(id.as_str());
        removals.extend(
            have.attachments
                .iter()
                .filter(|v| !want.attachments.contains_key(*v))
                .map(detach),
        );
        removals.extend(have.neigh.difference(&want.neigh).map(|&(ip, mac)| {
            LayoutStep::DelNeigh {
                net: id.clone(),
                ip,
                mac,
            }
        }));
        removals.extend(
            have.fdb
                .difference(&want.fdb)
                .map(|&(mac, dst)| LayoutStep::DelFdb {
                    net: id.clone(),
                    mac,
                    dst,
                }),
        );
    }
    kept
}

/// Pushes the way out's operations: its stale veths (and its bridge, when the gateway changes or
/// no way out is desired) onto `removals`, and the bridge and veths to create onto `creations`.
fn plan_way_out(
    desired: &Layout,
    observed: &Observed,
    removals: &mut Vec<LayoutStep>,
    creations: &mut Vec<LayoutStep>,
) {
    let mut way_out_kept = false;
    if let Some(have) = &observed.way_out {
        let want = desired
            .way_out
            .as_ref()
            .filter(|want| want.gateway == have.gateway);
        let detach = |veth: &String| LayoutStep::DetachWayOut { veth: veth.clone() };
        match want {
            None => {
                removals.extend(have.attachments.iter().map(detach));
                removals.push(LayoutStep::DeleteWayOut);
            }
            Some(want) => {
                way_out_kept = true;
                removals.extend(
                    have.attachments
                        .iter()
                        .filter(|v| !want.attachments.contains_key(*v))
                        .map(detach),
                );
            }
        }
    }
    if let Some(want) = &desired.way_out {
        let have = observed.way_out.as_ref().filter(|_| way_out_kept);
        if have.is_none() {
            creations.push(LayoutStep::CreateWayOut(want.gateway));
        }
        creations.extend(
            want.attachments
                .iter()
                .filter(|(veth, _)| have.is_none_or(|h| !h.attachments.contains(*veth)))
                .map(|(veth, spec)| LayoutStep::AttachWayOut {
                    veth: veth.clone(),
                    spec: spec.clone(),
                }),
        );
    }
}

/// Pushes what the desired networks need onto `creations`: the networks not in `kept`, and the
/// FDB entries, neighbours and attachments the kernel lacks.
fn plan_network_creations(
    desired: &Layout,
    observed: &Observed,
    kept: &BTreeSet<&str>,
    creations: &mut Vec<LayoutStep>,
) {
    for (id, want) in &desired.networks {
        let have = observed
            .networks
            .get(id)
            .filter(|_| kept.contains(id.as_str()));
        if have.is_none() {
            creations.push(LayoutStep::CreateNetwork {
                net: id.clone(),
                device: want.device,
            });
        }
        if have.is_some_and(|have| have.bridge_netfilter) {
            creations.push(LayoutStep::BridgeNetfilterOff { net: id.clone() });
        }
        let empty = ObservedNet::default();
        let have = have.unwrap_or(&empty);
        creations.extend(
            want.fdb
                .difference(&have.fdb)
                .map(|&(mac, dst)| LayoutStep::AddFdb {
                    net: id.clone(),
                    mac,
                    dst,
                }),
        );
        creations.extend(want.neigh.difference(&have.neigh).map(|&(ip, mac)| {
            LayoutStep::AddNeigh {
                net: id.clone(),
                ip,
                mac,
            }
        }));
        creations.extend(
            want.attachments
                .iter()
                .filter(|(veth, _)| !have.attachments.contains(*veth))
                .map(|(veth, spec)| LayoutStep::Attach {
                    net: id.clone(),
                    veth: veth.clone(),
                    spec: spec.clone(),
                }),
        );
    }
}

impl Observed {
    /// Applies one operation to this model of the kernel, refusing it when the kernel would: a
    /// device that exists already, a parent that is missing, or a removal that would strand
    /// something that depends on what is removed.
    pub fn apply(&mut self, op: &LayoutStep) -> Result<(), String> {
        let fail = |what: &str| Err(format!("{op}: {what}"));
        match op {
            LayoutStep::Detach { net: id, .. }
            | LayoutStep::DelNeigh { net: id, .. }
            | LayoutStep::DelFdb { net: id, .. }
            | LayoutStep::AddFdb { net: id, .. }
            | LayoutStep::AddNeigh { net: id, .. }
            | LayoutStep::Attach { net: id, .. }
            | LayoutStep::BridgeNetfilterOff { net: id } => {
                let Some(net) = self.networks.get_mut(id) else {
                    return fail(&format!("no network {id}"));
                };
                net.apply(op).or_else(&fail)?;
            }
            LayoutStep::DeleteNetwork { net: id } => {
                match self.networks.get(id) {
                    None => return fail(&format!("no network {id}")),
                    Some(n) if !n.attachments.is_empty() => {
                        return fail("tasks are still attached");
                    }
                    Some(_) => {}
                }
                self.networks.remove(id);
            }
            LayoutStep::DeleteTunnel => {
                if self.tunnel == TunnelState::Absent {
                    return fail("no tunnel");
                }
                if self.networks.values().any(|n| n.device.encrypted) {
                    return fail("encrypted networks still use it");
                }
                self.tunnel = TunnelState::Absent;
            }
            LayoutStep::CreateTunnel(t) => {
                if matches!(self.tunnel, TunnelState::Up(_)) {
                    return fail("the tunnel is up already");
                }
                self.tunnel = TunnelState::Up(*t);
            }
            LayoutStep::CreateNetwork { net: id, device } => {
                if self.networks.contains_key(id) {
                    return fail("exists already");
                }
                if device.encrypted
                    && !matches!(self.tunnel, TunnelState::Up(t) if t.addr == device.local)
                {
                    return fail("an encrypted network needs the tunnel up on its address");
                }
                if self.networks.values().any(|n| n.device.vni == device.vni) {
                    return fail("the VNI is in use");
                }
                self.networks.insert(
                    id.clone(),
                    ObservedNet {
                        device: *device,
                        ..ObservedNet::default()
                    },
                );
            }
            LayoutStep::DetachWayOut { veth } => {
                let Some(w) = &mut self.way_out else {
                    return fail("no way out");
                };
                if !w.attachments.remove(veth) {
                    return fail("no such veth");
                }
            }
            LayoutStep::DeleteWayOut => match &self.way_out {
                None => return fail("no way out"),
                Some(w) if !w.attachments.is_empty() => return fail("tasks are still attached"),
                Some(_) => self.way_out = None,
            },
            LayoutStep::CreateWayOut(gateway) => {
                if self.way_out.is_some() {
                    return fail("exists already");
                }
                self.way_out = Some(ObservedWayOut {
                    gateway: *gateway,
                    attachments: BTreeSet::new(),
                });
            }
            LayoutStep::AttachWayOut { veth, .. } => {
                let Some(w) = &mut self.way_out else {
                    return fail("no way out");
                };
                if !w.attachments.insert(veth.clone()) {
                    return fail("exists already");
                }
            }
        }
        Ok(())
    }
}

impl ObservedNet {
    /// Applies one operation inside this network (as [`Observed::apply`]); what the kernel would
    /// refuse it for.
    fn apply(&mut self, op: &LayoutStep) -> Result<(), &'static str> {
        let (done, refused) = match op {
            LayoutStep::Detach { veth, .. } => (self.attachments.remove(veth), "no such veth"),
            LayoutStep::DelNeigh { ip, mac, .. } => {
                (self.neigh.remove(&(*ip, *mac)), "no such neighbour")
            }
            LayoutStep::DelFdb { mac, dst, .. } => {
                (self.fdb.remove(&(*mac, *dst)), "no such fdb entry")
            }
            LayoutStep::AddFdb { mac, dst, .. } => {
                (self.fdb.insert((*mac, *dst)), "exists already")
            }
            LayoutStep::AddNeigh { ip, mac, .. } => (
                !self.neigh.iter().any(|(i, _)| i == ip) && self.neigh.insert((*ip, *mac)),
                "the address has a neighbour entry already",
            ),
            LayoutStep::Attach { veth, .. } => {
                (self.attachments.insert(veth.clone()), "exists already")
            }
            LayoutStep::BridgeNetfilterOff { .. } => (
                std::mem::replace(&mut self.bridge_netfilter, false),
                "off already",
            ),
            _ => (false, "not an operation inside a network"),
        };
        if done { Ok(()) } else { Err(refused) }
    }
}
