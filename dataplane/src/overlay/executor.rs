//! The netlink executor: reads what the kernel holds into an [`Observed`], and carries out the
//! planner's operations with rtnetlink.
//!
//! Namespaces live under one directory (`<data root>/netns`): `ov-<network ID>` per network and
//! `wg` for the tunnel. Inside a network's namespace the bridge is `br0`, the VXLAN device
//! `vxlan0` (its alias says whether its socket lives in the tunnel namespace) and each task's veth
//! `vt<hash>` (see [`AttachSpec::veth_name`]). Nothing else needs remembering: a restarted process
//! reads it all back and carries on.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::rule::RuleAction;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use super::layout::{
    AttachSpec, LayoutStep, NetDevice, Observed, ObservedNet, ObservedWayOut, Tunnel, TunnelState,
    plan,
};
use super::model::{WAY_OUT_BRIDGE, WgConfig};
use super::netns;
use super::vxlan_filter::{self, Refused, VxlanFilter};
use super::way_out;
use super::wireguard::{Engine, PeerStatus, TAP_MAC, open_tun};
use crate::common::{Host, HostInterface, InvalidState, Mac, Problem};
use crate::mesh::model::INGRESS_TASK;
use crate::mesh::{IngressNamespace, Mesh, MeshError};
use crate::node::{DesiredState, Resolved};

const TUNNEL_NS: &str = "wg";
const TUN_DEVICE: &str = "wg0";
pub(crate) const BRIDGE: &str = "br0";
pub(crate) const VXLAN: &str = "vxlan0";
const ALIAS_ENCRYPTED: &str = "shoal:encrypted";
const ALIAS_PLAIN: &str = "shoal:plain";

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The state is invalid; nothing was applied.
    #[error(transparent)]
    Invalid(#[from] InvalidState),
    /// The kernel refused an operation.
    #[error("{op}: {source}\n{undone}")]
    Failed {
        /// The operation.
        op: String,
        /// The kernel's answer.
        source: io::Error,
        /// What was undone.
        undone: String,
    },
    /// The kernel's state could not be read.
    #[error("reading the data plane's state from the kernel: {0}")]
    Observe(io::Error),
    /// The overlays were applied, but the routing mesh could not be.
    #[error("the overlays were applied, but not the routing mesh: {0}")]
    Mesh(#[from] MeshError),
}

/// What an apply changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// One line per operation carried out, in order; empty when the kernel was already there.
    pub changes: Vec<String>,
    /// What the state named but could not be used, and why (a bad peer and what it carries).
    pub left_out: Vec<Problem>,
}

/// A node's overlay data plane.
pub struct Dataplane {
    root: PathBuf,
    node: Handle,
    /// Network namespaces and handles into them, by network ID.
    nets: HashMap<String, (File, Handle)>,
    tunnel: Option<(File, Handle)>,
    engine: Option<Engine>,
    wireguard: Option<WgConfig>,
    mesh: Option<Mesh>,
    /// The plain VXLAN filter the node's namespace holds: `None` until this process has
    /// written it (the next apply writes it whatever it is), `Some(None)` for no filter.
    vxlan_filter: Option<Option<VxlanFilter>>,
    /// What the last apply left out, and why.
    left_out: Vec<Problem>,
    /// The network namespace cookies of the tasks' namespaces, by path (a namespace is entered
    /// once to read it, not at every apply).
    netns_cookies: HashMap<PathBuf, u64>,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("root", &self.root)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

fn nl(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn errno_is(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

fn context(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

async fn links(h: &Handle) -> io::Result<Vec<LinkMessage>> {
    h.link().get().execute().try_collect().await.map_err(nl)
}

fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_mtu(m: &LinkMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(0)
}

async fn index_of(h: &Handle, name: &str) -> io::Result<Option<u32>> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(m) => Ok(m.map(|m| m.header.index)),
        Err(e) => {
            let e = nl(e);
            if errno_is(&e, libc::ENODEV) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

async fn require_index(h: &Handle, name: &str) -> io::Result<u32> {
    index_of(h, name)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("device {name} is missing")))
}

/// The IPv4 addresses in the namespace, by interface index (one dump; the kernel does not
/// filter by interface, so asking per interface would dump everything each time).
async fn ipv4_addrs(h: &Handle) -> io::Result<HashMap<u32, Vec<Ipv4Net>>> {
    let mut req = h.address().get();
    req.message_mut().header.family = AddressFamily::Inet;
    let msgs: Vec<_> = req.execute().try_collect().await.map_err(nl)?;
    let mut by_index: HashMap<u32, Vec<Ipv4Net>> = HashMap::new();
    for m in &msgs {
        let local = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Ipv4Net::new(*ip, m.header.prefix_len).ok(),
            _ => None,
        });
        if let Some(net) = local {
            by_index.entry(m.header.index).or_default().push(net);
        }
    }
    Ok(by_index)
}

/// The first IPv4 address of interface `index`.
async fn first_ipv4(h: &Handle, index: u32) -> io::Result<Option<Ipv4Net>> {
    Ok(ipv4_addrs(h)
        .await?
        .remove(&index)
        .and_then(|a| a.first().copied()))
}

async fn add_addr(h: &Handle, index: u32, addr: Ipv4Net) -> io::Result<()> {
    match h
        .address()
        .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
        .execute()
        .await
        .map_err(nl)
    {
        Err(e) if errno_is(&e, libc::EEXIST) => Ok(()),
        other => other,
    }
}

async fn set(h: &Handle, message: LinkMessage) -> io::Result<()> {
    h.link().change(message).execute().await.map_err(nl)
}

async fn up(h: &Handle, index: u32) -> io::Result<()> {
    set(h, LinkUnspec::new_with_index(index).up().build()).await
}

async fn delete_link(h: &Handle, name: &str) -> io::Result<()> {
    if let Some(index) = index_of(h, name).await? {
        match h.link().del(index).execute().await.map_err(nl) {
            Err(e) if errno_is(&e, libc::ENODEV) => {}
            other => other?,
        }
    }
    Ok(())
}

async fn loopback_up(h: &Handle) -> io::Result<()> {
    up(h, require_index(h, "lo").await?).await
}

/// Creates a task's network namespace on `path` (or opens the one there) with its loopback up:
/// what the `exec` executor runs a task in before the data plane plugs it into its networks.
pub async fn task_namespace(path: &std::path::Path) -> io::Result<File> {
    let ns = netns::create(path)?;
    let h = netns::connect(Some(&ns))?;
    loopback_up(&h).await?;
    Ok(ns)
}

/// Mounts an existing namespace (a container's `/proc/<pid>/ns/net`) on `path` and brings its
/// loopback up, so it can be attached to networks like one made by [`task_namespace`].
pub async fn adopt_namespace(source: &std::path::Path, path: &std::path::Path) -> io::Result<File> {
    let ns = netns::bind(source, path)?;
    let h = netns::connect(Some(&ns))?;
    loopback_up(&h).await?;
    Ok(ns)
}

impl Dataplane {
    /// A data plane keeping its namespaces under `root`. Must be called within a tokio runtime.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Dataplane> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(context(format!("creating {}", root.display())))?;
        Ok(Dataplane {
            root,
            node: netns::connect(None)?,
            nets: HashMap::new(),
            tunnel: None,
            engine: None,
            wireguard: None,
            mesh: None,
            vxlan_filter: None,
            left_out: Vec::new(),
            netns_cookies: HashMap::new(),
        })
    }

    /// The routing mesh, to change (collecting expired flows).
    pub fn mesh_mut(&mut self) -> Option<&mut Mesh> {
        self.mesh.as_mut()
    }

    /// What the last apply left out of the state it was given, and why.
    pub fn left_out(&self) -> &[Problem] {
        &self.left_out
    }

    /// Where a network's namespace is (or would be) mounted.
    pub fn network_namespace(&self, network: &str) -> PathBuf {
        self.root.join(format!("ov-{network}"))
    }

    /// The WireGuard peers and their sessions, when any network is encrypted.
    pub fn wireguard_status(&self) -> Vec<PeerStatus> {
        self.engine.as_ref().map(Engine::status).unwrap_or_default()
    }

    /// Datagrams the WireGuard engine dropped because they did not come from the data-path
    /// address of the peer they name; `None` without an engine.
    pub fn wireguard_not_from_a_peer(&self) -> Option<u64> {
        self.engine.as_ref().map(Engine::not_from_a_peer)
    }

    /// The plain VXLAN filter, and what it has dropped; `None` without one.
    pub async fn vxlan_filter(&self) -> io::Result<Option<(VxlanFilter, Refused)>> {
        let Some(Some(filter)) = &self.vxlan_filter else {
            return Ok(None);
        };
        let refused = vxlan_filter::refused().await?.unwrap_or_default();
        Ok(Some((filter.clone(), refused)))
    }

    /// The node's interfaces, for validating a desired state.
    pub async fn host(&self) -> io::Result<Host> {
        let mut addrs = ipv4_addrs(&self.node).await?;
        let interfaces = links(&self.node)
            .await?
            .iter()
            .map(|m| HostInterface {
                name: link_name(m).unwrap_or_default().to_owned(),
                mtu: link_mtu(m),
                addrs: addrs
                    .remove(&m.header.index)
                    .unwrap_or_default()
                    .iter()
                    .map(Ipv4Net::addr)
                    .collect(),
            })
            .collect();
        Ok(Host {
            interfaces,
            cpus: super::affinity::allowed_cpus()?,
        })
    }

    fn net_handle(&mut self, net: &str) -> io::Result<Option<Handle>> {
        if let Some((_, h)) = self.nets.get(net) {
            return Ok(Some(h.clone()));
        }
        let Some(ns) = netns::open(&self.network_namespace(net))? else {
            return Ok(None);
        };
        let h = netns::connect(Some(&ns))?;
        self.nets.insert(net.to_owned(), (ns, h.clone()));
        Ok(Some(h))
    }

    /// Runs `f` on this thread inside a network's namespace (for what only a thread in it can
    /// see, such as its `/proc/sys/net`).
    fn within_net<T>(&mut self, net: &str, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        self.require_net(net)?;
        let (ns, _) = &self.nets[net];
        netns::within(ns, f)
    }

    /// A handle into a network's namespace and the index of its VXLAN device.
    async fn vxlan(&mut self, net: &str) -> io::Result<(Handle, u32)> {
        let h = self.require_net(net)?;
        let vx = require_index(&h, VXLAN).await?;
        Ok((h, vx))
    }

    fn require_net(&mut self, net: &str) -> io::Result<Handle> {
        self.net_handle(net)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("network namespace of {net} is missing"),
            )
        })
    }

    /// Each network's VXLAN device counters (networks whose namespace exists on this node).
    pub async fn network_counters(
        &mut self,
    ) -> io::Result<std::collections::BTreeMap<String, super::layout::NetworkCounters>> {
        let mut out = std::collections::BTreeMap::new();
        for id in self.network_ids()? {
            let Some(h) = self.net_handle(&id)? else {
                continue;
            };
            let vxlan = links(&h)
                .await?
                .into_iter()
                .find(|m| link_name(m) == Some(VXLAN));
            let stats = vxlan.and_then(|m| {
                m.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::Stats64(s) => Some(s),
                    _ => None,
                })
            });
            if let Some(s) = stats {
                out.insert(
                    id,
                    super::layout::NetworkCounters {
                        tx_packets: s.tx_packets,
                        tx_bytes: s.tx_bytes,
                        rx_packets: s.rx_packets,
                        rx_bytes: s.rx_bytes,
                    },
                );
            }
        }
        Ok(out)
    }

    /// The IDs of the networks whose namespaces exist under the root (`ov-<id>`).
    fn network_ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_prefix("ov-")) {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }

    /// Reads what the kernel holds.
    pub async fn observe(&mut self) -> io::Result<Observed> {
        let mut observed = Observed::default();
        if netns::open(&self.root.join(TUNNEL_NS))?.is_some() {
            observed.tunnel = TunnelState::NamespaceOnly;
            // The TAP device lives only while our engine holds it, so with no engine it is gone.
            if let (Some(engine), Some((_, h))) = (&self.engine, &self.tunnel) {
                let tun = links(h)
                    .await?
                    .into_iter()
                    .find(|m| link_name(m) == Some(TUN_DEVICE));
                if let Some(m) = tun
                    && let Some(addr) = first_ipv4(h, m.header.index).await?
                {
                    observed.tunnel = TunnelState::Up(Tunnel {
                        addr: addr.addr(),
                        mtu: link_mtu(&m),
                        port: engine.port(),
                    });
                }
            }
        }
        for id in self.network_ids()? {
            let Some(h) = self.net_handle(&id)? else {
                continue;
            };
            let mut net = observe_network(&h).await?;
            net.bridge_netfilter = self.within_net(&id, bridge_netfilter_on)?;
            observed.networks.insert(id, net);
        }
        observed.way_out = observe_way_out(&self.node).await?;
        Ok(observed)
    }

    /// Converges the kernel to `state`. An invalid state changes nothing; when the kernel refuses
    /// an operation, what this apply created is removed again and the error says so.
    pub async fn apply(&mut self, state: &DesiredState) -> Result<Applied, ApplyError> {
        let host = self.host().await.map_err(ApplyError::Observe)?;
        let resolved = state.resolve(&host)?;
        let observed = self.observe().await.map_err(ApplyError::Observe)?;
        let ops = plan(&resolved.layout, &observed);
        // Everything that can be checked before touching the kernel is.
        for op in &ops {
            let field = match op {
                LayoutStep::Attach { spec, .. } => state
                    .attachments
                    .iter()
                    .position(|a| a.task == spec.task && a.netns == spec.netns)
                    .map(|i| (spec, format!("attachments[{i}].netns"))),
                LayoutStep::AttachWayOut { spec, .. } => state
                    .way_out
                    .iter()
                    .flat_map(|w| w.attachments.iter())
                    .position(|a| a.task == spec.task && a.netns == spec.netns)
                    .map(|i| (spec, format!("way_out.attachments[{i}].netns"))),
                _ => None,
            };
            if let Some((spec, field)) = field
                && netns::open(&spec.netns)
                    .map_err(ApplyError::Observe)?
                    .is_none()
            {
                return Err(InvalidState {
                    problems: vec![Problem {
                        field,
                        message: format!("{} is not a network namespace", spec.netns.display()),
                    }],
                }
                .into());
            }
        }
        // The filter first: if nftables refuses, nothing else has changed.
        let mut filter_change = None;
        if self.vxlan_filter.as_ref() != Some(&resolved.vxlan_filter) {
            vxlan_filter::install(resolved.vxlan_filter.as_ref())
                .await
                .map_err(|source| ApplyError::Failed {
                    op: "filtering plain VXLAN".to_owned(),
                    source,
                    undone: "nothing was applied".to_owned(),
                })?;
            let known = self.vxlan_filter.is_some();
            self.vxlan_filter = Some(resolved.vxlan_filter.clone());
            filter_change = match (&resolved.vxlan_filter, known) {
                (Some(f), _) => Some(format!(
                    "plain VXLAN to port {} accepted only from {} peer address(es)",
                    f.port,
                    f.peers.len()
                )),
                (None, true) => Some("plain VXLAN filter removed".to_owned()),
                // There was none to remove, as far as this process knows.
                (None, false) => None,
            };
        }
        self.wireguard = resolved.wireguard.clone();
        let mut done: Vec<&LayoutStep> = Vec::new();
        for op in &ops {
            tracing::info!(%op, "data plane");
            if let Err(source) = self.execute(op).await {
                let undone = self.undo(&done).await;
                return Err(ApplyError::Failed {
                    op: op.to_string(),
                    source,
                    undone,
                });
            }
            done.push(op);
        }
        if let (Some(engine), Some(config)) = (&self.engine, &self.wireguard) {
            engine.configure(config);
        }
        let mut changes: Vec<String> = filter_change.into_iter().collect();
        changes.extend(ops.iter().map(ToString::to_string));
        changes.extend(self.apply_mesh(&resolved)?);
        changes.extend(self.apply_vips(&resolved)?);
        for problem in &resolved.left_out {
            tracing::warn!(field = %problem.field, "left out of the data plane: {}", problem.message);
        }
        self.left_out.clone_from(&resolved.left_out);
        Ok(Applied {
            changes,
            left_out: resolved.left_out,
        })
    }

    /// The routing mesh, once the overlays (the ingress network among them) are in place.
    fn apply_mesh(&mut self, resolved: &Resolved) -> Result<Vec<String>, MeshError> {
        let Some(plan) = &resolved.mesh else {
            return Ok(match self.mesh.take() {
                Some(_) => vec!["mesh: removed (programs detached, maps freed)".to_owned()],
                None => Vec::new(),
            });
        };
        let netns_path = self.network_namespace(&plan.network);
        let netns = netns::open(&netns_path)
            .and_then(|ns| ns.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound)))
            .map_err(|source| MeshError::Io {
                context: format!("opening {}", netns_path.display()),
                source,
            })?;
        let port = resolved.layout.networks[&plan.network]
            .attachments
            .iter()
            .find(|(_, a)| a.task == INGRESS_TASK)
            .map(|(veth, _)| veth.clone())
            .unwrap_or_default();
        let mut changes = Vec::new();
        if self.mesh.is_none() {
            self.mesh = Some(Mesh::load()?);
            changes.push("mesh: programs loaded".to_owned());
        }
        let mesh = self.mesh.as_mut().expect("just loaded");
        changes.extend(mesh.apply(
            plan,
            &IngressNamespace {
                netns: &netns,
                port: &port,
            },
        )?);
        Ok(changes)
    }

    /// Service VIPs for the node's tasks: their tables, and the tasks' namespaces by cookie
    /// (the socket programs come with the routing mesh, which every swarm node has).
    fn apply_vips(&mut self, resolved: &Resolved) -> Result<Vec<String>, MeshError> {
        let Some(mesh) = self.mesh.as_mut() else {
            if resolved.vips.is_empty() {
                return Ok(Vec::new());
            }
            tracing::warn!("service VIPs are not balanced: this node has no routing mesh");
            return Ok(vec![
                "service VIPs not balanced: this node has no routing mesh".to_owned(),
            ]);
        };
        let paths: std::collections::BTreeSet<&std::path::Path> = resolved
            .layout
            .networks
            .values()
            .flat_map(|n| n.attachments.values())
            .map(|a| a.netns.as_path())
            .filter(|p| *p != std::path::Path::new(crate::mesh::model::OWN_NAMESPACE))
            .collect();
        // Only the namespaces attached now; a new one is entered once to read its cookie.
        self.netns_cookies
            .retain(|p, _| paths.contains(p.as_path()));
        let mut cookies = std::collections::BTreeSet::new();
        for path in paths {
            if let Some(cookie) = self.netns_cookies.get(path) {
                cookies.insert(*cookie);
                continue;
            }
            let io_err = |source| MeshError::Io {
                context: format!("the network namespace cookie of {}", path.display()),
                source,
            };
            let Some(ns) = netns::open(path).map_err(io_err)? else {
                continue;
            };
            let cookie = netns::within(&ns, crate::mesh::netns_cookie).map_err(io_err)?;
            self.netns_cookies.insert(path.to_path_buf(), cookie);
            cookies.insert(cookie);
        }
        mesh.apply_vips(&resolved.vips, &cookies)
    }

    /// The routing mesh, when the state has one.
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// Removes what `done` created, newest first. Removals stay: they were wanted either way.
    async fn undo(&mut self, done: &[&LayoutStep]) -> String {
        let mut undone = 0;
        for op in done.iter().rev() {
            let inverse = match op {
                LayoutStep::CreateNetwork { net, .. } => {
                    LayoutStep::DeleteNetwork { net: net.clone() }
                }
                LayoutStep::AddFdb { net, mac, dst } => LayoutStep::DelFdb {
                    net: net.clone(),
                    mac: *mac,
                    dst: *dst,
                },
                LayoutStep::AddNeigh { net, ip, mac } => LayoutStep::DelNeigh {
                    net: net.clone(),
                    ip: *ip,
                    mac: *mac,
                },
                LayoutStep::Attach { net, veth, .. } => LayoutStep::Detach {
                    net: net.clone(),
                    veth: veth.clone(),
                },
                LayoutStep::CreateWayOut(_) => LayoutStep::DeleteWayOut,
                LayoutStep::AttachWayOut { veth, .. } => {
                    LayoutStep::DetachWayOut { veth: veth.clone() }
                }
                LayoutStep::CreateTunnel(_) => {
                    // Stop the engine (its TAP device goes with it) but keep the namespace:
                    // encrypted networks' sockets may have lived there before this apply.
                    self.engine = None;
                    undone += 1;
                    continue;
                }
                _ => continue,
            };
            match self.execute(&inverse).await {
                Ok(()) => undone += 1,
                Err(e) => tracing::warn!(op = %inverse, error = %e, "undoing a failed apply"),
            }
        }
        let removed = done.len() - done.iter().filter(|op| is_creation(op)).count();
        format!(
            "nothing of this apply was left half done: its {undone} additions were undone{}",
            if removed > 0 {
                format!(" ({removed} removals it made stay removed)")
            } else {
                String::new()
            }
        )
    }

    async fn execute(&mut self, op: &LayoutStep) -> io::Result<()> {
        match op {
            LayoutStep::CreateTunnel(t) => self.create_tunnel(*t).await,
            LayoutStep::DeleteTunnel => {
                self.engine = None;
                self.tunnel = None;
                netns::remove(&self.root.join(TUNNEL_NS))
            }
            LayoutStep::CreateNetwork { net, device } => {
                let created = self.create_network(net, device).await;
                if created.is_err() {
                    self.nets.remove(net);
                    let _ = netns::remove(&self.network_namespace(net));
                }
                created
            }
            LayoutStep::DeleteNetwork { net } => {
                if let Some(h) = self.net_handle(net)? {
                    // The VXLAN device first, so its socket is released now rather than when the
                    // namespace is finally freed.
                    delete_link(&h, VXLAN).await?;
                }
                self.nets.remove(net);
                netns::remove(&self.network_namespace(net))
            }
            LayoutStep::AddFdb { net, mac, dst } => {
                let (h, vx) = self.vxlan(net).await?;
                h.neighbours()
                    .add_bridge(vx, &mac.0)
                    .flags(NeighbourFlags::Own)
                    .destination(IpAddr::V4(*dst))
                    .replace()
                    .execute()
                    .await
                    .map_err(nl)
            }
            LayoutStep::DelFdb { net, mac, dst } => {
                let (h, vx) = self.vxlan(net).await?;
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Bridge;
                m.header.ifindex = vx;
                m.header.flags = NeighbourFlags::Own;
                m.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                m.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                        *dst,
                    )));
                ignore_missing(h.neighbours().del(m).execute().await.map_err(nl))
            }
            LayoutStep::AddNeigh { net, ip, mac } => {
                let (h, vx) = self.vxlan(net).await?;
                h.neighbours()
                    .add(vx, IpAddr::V4(*ip))
                    .link_layer_address(&mac.0)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl)
            }
            LayoutStep::DelNeigh { net, ip, .. } => {
                let (h, vx) = self.vxlan(net).await?;
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Inet;
                m.header.ifindex = vx;
                m.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*ip)));
                ignore_missing(h.neighbours().del(m).execute().await.map_err(nl))
            }
            LayoutStep::Attach { net, veth, spec } => {
                let h = self.require_net(net)?;
                let attached = attach(&h, BRIDGE, veth, spec).await;
                if attached.is_err() {
                    let _ = delete_link(&h, veth).await;
                }
                attached
            }
            LayoutStep::Detach { net, veth } => {
                let h = self.require_net(net)?;
                delete_link(&h, veth).await
            }
            LayoutStep::BridgeNetfilterOff { net } => self.within_net(net, bridge_netfilter_off),
            LayoutStep::CreateWayOut(gateway) => {
                let created = self.create_way_out(*gateway).await;
                if created.is_err() {
                    let _ = delete_link(&self.node, WAY_OUT_BRIDGE).await;
                    let _ = way_out::remove().await;
                }
                created
            }
            LayoutStep::DeleteWayOut => {
                delete_link(&self.node, WAY_OUT_BRIDGE).await?;
                way_out::remove().await
            }
            LayoutStep::AttachWayOut { veth, spec } => {
                let attached = attach(&self.node, WAY_OUT_BRIDGE, veth, spec).await;
                if attached.is_err() {
                    let _ = delete_link(&self.node, veth).await;
                }
                attached
            }
            LayoutStep::DetachWayOut { veth } => delete_link(&self.node, veth).await,
        }
    }

    /// The way-out bridge in the node's namespace, holding the gateway address, and its NAT.
    async fn create_way_out(&mut self, gateway: Ipv4Net) -> io::Result<()> {
        let h = &self.node;
        h.link()
            .add(LinkMessageBuilder::<LinkBridge>::new(WAY_OUT_BRIDGE).build())
            .execute()
            .await
            .map_err(nl)
            .map_err(context("creating the way-out bridge"))?;
        let br = require_index(h, WAY_OUT_BRIDGE).await?;
        add_addr(h, br, gateway).await?;
        up(h, br).await?;
        way_out::install(gateway).await
    }

    async fn create_tunnel(&mut self, t: Tunnel) -> io::Result<()> {
        let config = self
            .wireguard
            .clone()
            .ok_or_else(|| io::Error::other("no WireGuard configuration for the tunnel"))?;
        self.engine = None;
        let ns = netns::create(&self.root.join(TUNNEL_NS))?;
        // What the decrypting thread writes is steered by flow to one CPU's queues (RPS), so
        // a stream keeps its order wherever the thread runs (see `affinity`).
        let cpus = super::affinity::allowed_cpus()?;
        let (tun, steered) = netns::within(&ns, || {
            let steered = super::affinity::steer_new_devices(&cpus)?;
            Ok((open_tun(TUN_DEVICE)?, steered))
        })?;
        if !steered {
            tracing::warn!(
                "this kernel sets no receive steering per network namespace (Linux 6.7 and \
                 newer do): a stream through the WireGuard engine may be reordered when its \
                 decrypting thread moves between CPUs (`wireguard.cpus` pins it)"
            );
        }
        let h = netns::connect(Some(&ns))?;
        let index = require_index(&h, TUN_DEVICE).await?;
        set(
            &h,
            LinkUnspec::new_with_index(index)
                .mtu(t.mtu)
                .txqueuelen(1000)
                // The engine's TAP: frames to the peers need no neighbour (there is no one to
                // ask), and those it writes are addressed to it.
                .arp(false)
                .address(TAP_MAC.to_vec())
                .build(),
        )
        .await?;
        add_addr(&h, index, Ipv4Net::new(t.addr, 32).expect("a /32")).await?;
        up(&h, index).await?;
        loopback_up(&h).await?;
        // Everything the tunnel namespace sends goes to the engine: the only way out is encrypted.
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        add_route(&h, route, "adding the tunnel's route").await?;
        self.engine = Some(Engine::start(tun, &config)?);
        self.tunnel = Some((ns, h));
        Ok(())
    }

    async fn create_network(&mut self, net: &str, d: &NetDevice) -> io::Result<()> {
        let ns = netns::create(&self.network_namespace(net))?;
        let h = netns::connect(Some(&ns))?;
        loopback_up(&h).await?;
        h.link()
            .add(
                LinkMessageBuilder::<LinkBridge>::new(BRIDGE)
                    .mtu(d.mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl)
            .map_err(context("creating the bridge"))?;
        let br = require_index(&h, BRIDGE).await?;
        add_addr(&h, br, d.gateway).await?;
        netns::within(&ns, bridge_netfilter_off)?;

        // The VXLAN device is born where its socket must live, then moved.
        let creator = if d.encrypted {
            match &self.tunnel {
                Some((_, h)) => h.clone(),
                None => return Err(io::Error::other("the tunnel is not up")),
            }
        } else {
            self.node.clone()
        };
        let temporary = format!("shv{}", d.vni);
        delete_link(&creator, &temporary).await?;
        creator
            .link()
            .add(
                LinkVxlan::new(&temporary, d.vni)
                    .local(d.local)
                    .port(d.port)
                    .learning(false)
                    .proxy(true)
                    .l2miss(false)
                    .l3miss(false)
                    // Inside WireGuard, which authenticates every byte, an outer UDP checksum
                    // is redundant work for the engine (it cuts super-packets in software).
                    .udp_csum(!d.encrypted)
                    .mtu(d.mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl)
            .map_err(context(format!(
                "creating VXLAN device for VNI {} on {}:{}",
                d.vni, d.local, d.port
            )))?;
        let vx = require_index(&creator, &temporary).await?;
        if let Err(e) = set(
            &creator,
            LinkUnspec::new_with_index(vx)
                .setns_by_fd(ns.as_raw_fd())
                .build(),
        )
        .await
        {
            let _ = delete_link(&creator, &temporary).await;
            return Err(e);
        }
        let vx = require_index(&h, &temporary).await?;
        let alias = if d.encrypted {
            ALIAS_ENCRYPTED
        } else {
            ALIAS_PLAIN
        };
        set(
            &h,
            LinkUnspec::new_with_index(vx)
                .name(VXLAN)
                .alias(alias)
                .build(),
        )
        .await?;
        set(&h, LinkUnspec::new_with_index(vx).controller(br).build()).await?;
        up(&h, vx).await?;
        set(&h, LinkUnspec::new_with_index(br).mtu(d.mtu).build()).await?;
        up(&h, br).await?;
        self.nets.insert(net.to_owned(), (ns, h));
        Ok(())
    }
}

/// `br_netfilter`'s switches, per network namespace: whether IPv4, IPv6 and ARP frames a bridge
/// forwards pass through netfilter's hooks (each such frame then gets an extension allocated, a
/// route looked up and every hook run; docs/dataplane.md has what it costs).
const BRIDGE_NETFILTER: [&str; 3] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/bridge/bridge-nf-call-arptables",
];

/// Whether the calling thread's network namespace sends bridged frames through netfilter. A
/// kernel without `br_netfilter` (or with it not loaded) has no switches: no.
fn bridge_netfilter_on() -> io::Result<bool> {
    for path in BRIDGE_NETFILTER {
        match std::fs::read_to_string(path) {
            Ok(value) if value.trim() != "0" => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(context(format!("reading {path}"))(e)),
        }
    }
    Ok(false)
}

/// Turns the calling thread's namespace's switches off (nothing to do without `br_netfilter`).
fn bridge_netfilter_off() -> io::Result<()> {
    for path in BRIDGE_NETFILTER {
        match std::fs::write(path, "0") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(context(format!("writing 0 to {path}"))(e)),
        }
    }
    Ok(())
}

fn is_creation(op: &LayoutStep) -> bool {
    matches!(
        op,
        LayoutStep::CreateTunnel(_)
            | LayoutStep::CreateNetwork { .. }
            | LayoutStep::AddFdb { .. }
            | LayoutStep::AddNeigh { .. }
            | LayoutStep::Attach { .. }
            | LayoutStep::CreateWayOut(_)
            | LayoutStep::AttachWayOut { .. }
    )
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if errno_is(&e, libc::ENOENT) || errno_is(&e, libc::ENODEV) => Ok(()),
        other => other,
    }
}

/// Plugs a task into `bridge` (in `h`'s namespace) with a veth pair: `veth` on the bridge, its
/// peer moved into the task, named, addressed and routed there.
async fn attach(h: &Handle, bridge: &str, veth: &str, spec: &AttachSpec) -> io::Result<()> {
    let task = netns::open(&spec.netns)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a network namespace", spec.netns.display()),
        )
    })?;
    let br = require_index(h, bridge).await?;
    let peer = format!("vp{}", &veth[2..]);
    h.link()
        .add(LinkVeth::new(veth, &peer).mtu(spec.mtu).build())
        .execute()
        .await
        .map_err(nl)
        .map_err(context("creating the veth pair"))?;
    let peer_index = require_index(h, &peer).await?;
    set(
        h,
        LinkUnspec::new_with_index(peer_index)
            .mtu(spec.mtu)
            .address(spec.mac.0.to_vec())
            .build(),
    )
    .await?;
    set(
        h,
        LinkUnspec::new_with_index(peer_index)
            .setns_by_fd(task.as_raw_fd())
            .build(),
    )
    .await
    .map_err(context(format!(
        "moving the veth into {}",
        spec.netns.display()
    )))?;
    let t = netns::connect(Some(&task))?;
    let inside = require_index(&t, &peer).await?;
    set(
        &t,
        LinkUnspec::new_with_index(inside)
            .name(&spec.interface)
            .build(),
    )
    .await
    .map_err(context(format!(
        "naming the task's interface {}",
        spec.interface
    )))?;
    add_addr(&t, inside, spec.addr).await?;
    up(&t, inside).await?;
    if let Some(gateway) = spec.default_route {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        add_route(&t, route, "adding the task's default route").await?;
    }
    if let Some(gateway) = spec.reply_gateway {
        reply_route(&t, inside, spec.addr, gateway).await?;
    }
    let outside = require_index(h, veth).await?;
    set(
        h,
        LinkUnspec::new_with_index(outside).controller(br).build(),
    )
    .await?;
    up(h, outside).await
}

/// Adds (or replaces) `route`; a failure says it was `what`.
async fn add_route(
    h: &Handle,
    route: rtnetlink::packet_route::route::RouteMessage,
    what: impl std::fmt::Display,
) -> io::Result<()> {
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(nl)
        .map_err(context(what))
}

/// The priority of the rules that send replies from an attachment's address back through its
/// network's gateway: before the main table (32766), so the task's default route elsewhere does
/// not take them.
const REPLY_RULE_PRIORITY: u32 = 100;

/// Makes whatever leaves the task from `addr` go through `gateway` (or straight to the subnet),
/// whatever the task's own default route: a table of its own (its ID is the address, unique in the
/// task and never one of the kernel's reserved 253-255) holding the subnet and a default route,
/// and a rule `from addr lookup <table>`. The routes go with the interface; the rule stays in the
/// task's namespace (which goes with the task), and is added once: an existing one is kept.
async fn reply_route(t: &Handle, index: u32, addr: Ipv4Net, gateway: Ipv4Addr) -> io::Result<()> {
    let table = u32::from(addr.addr());
    let subnet = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(addr.network(), addr.prefix_len())
        .output_interface(index)
        .scope(RouteScope::Link)
        .table_id(table)
        .build();
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .table_id(table)
        .build();
    for (route, what) in [(subnet, "its subnet"), (default, "its default route")] {
        let what = format!("adding {what} to the reply table of {}", addr.addr());
        add_route(t, route, what).await?;
    }
    let rule = t
        .rule()
        .add()
        .v4()
        .source_prefix(addr.addr(), 32)
        .table_id(table)
        // Unset, the kernel fails every lookup the rule matches with EINVAL.
        .action(RuleAction::ToTable)
        .priority(REPLY_RULE_PRIORITY)
        .execute()
        .await
        .map_err(nl);
    match rule {
        Err(e) if errno_is(&e, libc::EEXIST) => Ok(()),
        other => other.map_err(context(format!(
            "adding the rule for replies from {}",
            addr.addr()
        ))),
    }
}

/// The way-out bridge in the node's namespace, its address and the task veths on it.
async fn observe_way_out(h: &Handle) -> io::Result<Option<ObservedWayOut>> {
    let all = links(h).await?;
    let Some(br) = all.iter().find(|m| link_name(m) == Some(WAY_OUT_BRIDGE)) else {
        return Ok(None);
    };
    let bridge = br.header.index;
    let attachments = all
        .iter()
        .filter(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == bridge))
        })
        .filter_map(link_name)
        .filter(|n| n.starts_with("vg"))
        .map(str::to_owned)
        .collect();
    Ok(Some(ObservedWayOut {
        gateway: first_ipv4(h, bridge).await?.unwrap_or_default(),
        attachments,
    }))
}

async fn observe_network(h: &Handle) -> io::Result<ObservedNet> {
    let mut net = ObservedNet::default();
    let all = links(h).await?;
    let find = |name: &str| all.iter().find(|m| link_name(m) == Some(name));
    if let (Some(br), Some(vx)) = (find(BRIDGE), find(VXLAN)) {
        let gateway = first_ipv4(h, br.header.index).await?;
        let mut device = NetDevice {
            mtu: link_mtu(vx),
            gateway: gateway.unwrap_or_default(),
            ..NetDevice::default()
        };
        for a in &vx.attributes {
            match a {
                LinkAttribute::IfAlias(alias) => device.encrypted = alias == ALIAS_ENCRYPTED,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(attrs)) = info {
                            for x in attrs {
                                match x {
                                    InfoVxlan::Id(vni) => device.vni = *vni,
                                    InfoVxlan::Local(ip) => device.local = *ip,
                                    InfoVxlan::Port(port) => device.port = *port,
                                    _ => {}
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        // A bridge whose MTU drifted from its VXLAN device's counts as a different device.
        if link_mtu(br) != device.mtu || gateway.is_none() {
            device.mtu = 0;
        }
        net.device = device;
        let vx_index = vx.header.index;
        for m in neighbours(h, AddressFamily::Bridge, vx_index).await? {
            if let (Some(mac), Some(dst)) = (neighbour_mac(&m), neighbour_dst(&m)) {
                net.fdb.insert((mac, dst));
            }
        }
        for m in neighbours(h, AddressFamily::Inet, vx_index).await? {
            if m.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(mac), Some(ip)) = (neighbour_mac(&m), neighbour_dst(&m)) {
                net.neigh.insert((ip, mac));
            }
        }
    }
    net.attachments = all
        .iter()
        .filter(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::LinkInfo(i) if i.contains(&LinkInfo::Kind(InfoKind::Veth))))
        })
        .filter_map(link_name)
        .filter(|n| n.starts_with("vt"))
        .map(str::to_owned)
        .collect();
    Ok(net)
}

/// The neighbour (or, for `AddressFamily::Bridge`, FDB) entries of interface `index`.
async fn neighbours(
    h: &Handle,
    family: AddressFamily,
    index: u32,
) -> io::Result<Vec<NeighbourMessage>> {
    let all: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(nl)?;
    Ok(all
        .into_iter()
        .filter(|m| m.header.ifindex == index)
        .collect())
}

fn neighbour_mac(m: &NeighbourMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => Some(Mac(b.as_slice().try_into().ok()?)),
        _ => None,
    })
}

fn neighbour_dst(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
            Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        _ => None,
    })
}
