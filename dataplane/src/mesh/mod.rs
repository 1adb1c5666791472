//! The routing mesh: a published port answers on every node and is balanced over the service's
//! running tasks, wherever they run, by XDP.
//!
//! ```text
//!  client ─> node A public iface ── XDP shoal_xdp_mesh: published port? Maglev + LRU connection table
//!                                   rewrite dst -> backend, src -> A's ingress address (SNAT mode)
//!                                   redirect ─> shoal0 ═ veth ═ ov-ingress: br0 ─ vxlan0 ─> node B ─> task
//!  reply <─ node A public iface <── TC shoal_tc_mesh_reply on shoal0: rewrite back <── task's reply
//! ```
//!
//! - [`model`]: the `"mesh"` part of the desired state, validated into a [`model::MeshPlan`].
//! - [`maglev`]: Maglev tables (pure).
//! - [`Mesh`]: loads the programs, attaches them (native XDP with the TC entry behind it, or the
//!   TC entry alone where the driver has no native XDP; the paths reported) and programs the maps
//!   from a plan without a moment where a published port has an empty or half-written table.
//! - [`links`]: what the node's devices can take, as the kernel says: XDP redirects go natively
//!   only to devices that take XDP frames; packets whose checksum was left to offload take the
//!   TC entry too (see `ebpf/programs/src/paths.rs`).
//!
//! Client-IP mode (`"client_ip": "preserve"`, and `mode=host` ports) keeps the client's address:
//! the backend's node remembers through which entry node a flow came (`shoal_tc_mesh_learn` on
//! the ingress network's VXLAN device and on the node's own port) and sends the replies back there
//! (`shoal_tc_mesh_steer` on the ingress bridge, the tasks' gateway), where they leave as in SNAT
//! mode. See `docs/mesh.md`.

pub mod links;
pub mod maglev;
pub mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::xdp::XdpLink;
use aya::programs::{CgroupAttachMode, SchedClassifier, TcAttachType, Xdp, XdpMode};
use shoal_abi::mesh::{
    self as abi, Backend, Config, Conn, FLAG_CLIENT_IP, FLAG_HOST, FlowKey, Frontend, FrontendKey,
    MAX_BACKENDS, MAX_EGRESS, MAX_SERVICES, Rewrite, SockConfig, TABLE_CAPACITY,
};
pub use shoal_abi::mesh::{PortStats, ServiceStats, Timeouts, VipStats};
use shoal_abi::programs;

use crate::bpf::{BpfError, Programs};
use crate::common::Mac;
use model::{BackendPlan, MeshPlan, Protocol};

/// How long a retired table region or backend ID waits before it is reused: far longer than any
/// program run that may still hold an old table offset.
const QUARANTINE: Duration = Duration::from_secs(1);

/// What can go wrong driving the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Loading, attaching or a map operation failed.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// An interface or namespace operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A limit of the maps was reached.
    #[error("{0}")]
    Full(String),
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> MeshError {
    move |source| {
        MeshError::Bpf(BpfError::Map {
            name,
            source: Box::new(source),
        })
    }
}

fn program_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> MeshError {
    move |source| {
        MeshError::Bpf(BpfError::Program {
            name,
            source: Box::new(source),
        })
    }
}

/// How balanced packets arriving on a public interface are taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPath {
    /// Native XDP, with the TC entry behind it for the packets XDP cannot redirect correctly.
    Xdp,
    /// The TC entry alone: the driver has no native XDP.
    Tc,
}

impl EntryPath {
    /// `xdp+tc` or `tc`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp+tc",
            Self::Tc => "tc",
        }
    }
}

/// How the mesh uses one of the node's interfaces, for `inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// Its driver, as `ethtool -i` names it (empty if the kernel did not say).
    pub driver: String,
    /// Whether the kernel says it takes frames redirected by XDP.
    pub takes_xdp_frames: bool,
    /// How balanced packets arriving on it are taken in, if it is a public interface.
    pub entry: Option<EntryPath>,
    /// Whether balanced packets leave by it (`shoal0`, the data-path interface).
    pub egress: bool,
}

impl LinkReport {
    /// One line: `in: xdp+tc; out: tc (takes no XDP frames)`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(entry) = self.entry {
            parts.push(format!("in: {}", entry.name()));
        }
        if self.egress {
            parts.push(if self.takes_xdp_frames {
                "out: xdp".to_owned()
            } else {
                "out: tc (takes no XDP frames)".to_owned()
            });
        }
        parts.join("; ")
    }
}

/// One region of the tables map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    offset: u32,
    len: u32,
}

/// First-fit allocation of table regions, with retired regions quarantined before reuse.
#[derive(Debug)]
struct Regions {
    free: Vec<Region>,
    retired: Vec<(Region, Instant)>,
}

impl Regions {
    fn new(capacity: u32) -> Self {
        Self {
            free: vec![Region {
                offset: 0,
                len: capacity,
            }],
            retired: Vec::new(),
        }
    }

    fn allocate(&mut self, len: u32, now: Instant) -> Option<Region> {
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .retired
            .drain(..)
            .partition(|(_, at)| now.duration_since(*at) >= QUARANTINE);
        self.retired = waiting;
        self.free.extend(ready.into_iter().map(|(r, _)| r));
        self.free.sort_by_key(|r| r.offset);
        let mut merged: Vec<Region> = Vec::with_capacity(self.free.len());
        for r in self.free.drain(..) {
            match merged.last_mut() {
                Some(last) if last.offset + last.len == r.offset => last.len += r.len,
                _ => merged.push(r),
            }
        }
        self.free = merged;
        let i = self.free.iter().position(|r| r.len >= len)?;
        let region = Region {
            offset: self.free[i].offset,
            len,
        };
        self.free[i].offset += len;
        self.free[i].len -= len;
        if self.free[i].len == 0 {
            self.free.remove(i);
        }
        Some(region)
    }

    fn retire(&mut self, region: Region, now: Instant) {
        self.retired.push((region, now));
    }
}

/// A backend's identity in the maps: its address and MAC on the ingress network, and its node's
/// data-path address when remote.
type BackendKey = (Ipv4Addr, Mac, Option<Ipv4Addr>);

/// A table: which backends (with weights), in a region.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    members: Vec<(BackendKey, u32)>,
    size: u32,
    region: Option<Region>,
}

/// Which table a port uses: the service's all-backend table, or its local one (`mode=host`).
type TableKey = (String, bool);

/// What the maps hold, as userspace last wrote it.
#[derive(Debug)]
struct MapState {
    services: BTreeMap<String, u32>,
    /// Each service's published ports as last written (what its connections were made under).
    service_ports: BTreeMap<String, Vec<(FrontendKey, u16, u16)>>,
    /// The last generation each service index was given.
    service_generations: BTreeMap<u32, u32>,
    backends: BTreeMap<BackendKey, (u32, u32)>,
    /// The last generation each backend ID was given.
    generations: Vec<u32>,
    free_ids: Vec<(u32, Instant)>,
    tables: BTreeMap<TableKey, Table>,
    regions: Regions,
    frontends: BTreeMap<FrontendKey, Frontend>,
    local_addrs: BTreeSet<Ipv4Addr>,
    config: Config,
    /// The devices in the egress map (those that take native XDP redirects).
    egress: BTreeSet<u32>,
    /// The egress map changed since the config was last written: connections must pick their
    /// path again.
    egress_changed: bool,
}

impl Default for MapState {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            service_ports: BTreeMap::new(),
            service_generations: BTreeMap::new(),
            backends: BTreeMap::new(),
            generations: Vec::new(),
            free_ids: Vec::new(),
            tables: BTreeMap::new(),
            regions: Regions::new(TABLE_CAPACITY),
            frontends: BTreeMap::new(),
            local_addrs: BTreeSet::new(),
            config: Config::default(),
            egress: BTreeSet::new(),
            egress_changed: false,
        }
    }
}

impl MapState {
    /// Gives backend ID `id` its next generation: connections made with the previous one no
    /// longer match it.
    fn next_generation(&mut self, id: u32) -> u32 {
        let generation = &mut self.generations[id as usize];
        *generation = generation.wrapping_add(1);
        *generation
    }
}

/// Programs attached to interfaces; dropping a link detaches it.
#[derive(Debug, Default)]
struct Links {
    /// Public interfaces.
    entry: BTreeMap<String, EntryLinks>,
    /// `shoal0`: (ifindex, link).
    reply: Option<(u32, SchedClassifierLink)>,
    /// Inside the ingress network's namespace: the ifindexes they were attached to (the
    /// namespace's bridge, VXLAN device and the node's port), and the links.
    ingress: Option<((u32, u32, u32), IngressLinks)>,
}

/// The entry programs on a public interface.
#[derive(Debug)]
struct EntryLinks {
    ifindex: u32,
    /// Native XDP, where the driver has it.
    xdp: Option<XdpLink>,
    _tc: SchedClassifierLink,
}

#[derive(Debug)]
struct IngressLinks {
    _pass: XdpLink,
    _learn_port: SchedClassifierLink,
    _learn_vxlan: SchedClassifierLink,
    _steer: SchedClassifierLink,
}

/// Zeroes entries `indices` of the per-CPU array `name` on every CPU: a slot given to a new
/// service or port counts from nothing.
fn zero_per_cpu<T: aya::Pod + Default + Clone>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    indices: &[u32],
) -> Result<(), MeshError> {
    if indices.is_empty() {
        return Ok(());
    }
    let mut map: PerCpuArray<&mut MapData, T> =
        PerCpuArray::try_from(ebpf.map_mut(name).ok_or(BpfError::NoMap(name))?)
            .map_err(map_err(name))?;
    let cpus = aya::util::nr_cpus().map_err(|(what, source)| MeshError::Io {
        context: what.to_owned(),
        source,
    })?;
    for &index in indices {
        let zeros =
            PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|source| MeshError::Io {
                context: "per-CPU counters".into(),
                source,
            })?;
        map.set(index, zeros, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// A published port not given its counters' slot yet.
const NO_SLOT: u32 = u32::MAX;

/// A published port's counters, for `inspect` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortStatus {
    /// The service that publishes it.
    pub service: String,
    /// The published port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// Counters summed over CPUs.
    pub stats: PortStats,
}

/// Where the ingress network lives, for [`Mesh::apply`].
#[derive(Debug)]
pub struct IngressNamespace<'a> {
    /// The ingress network's namespace.
    pub netns: &'a File,
    /// The node's port in it (the network-side end of `shoal0`).
    pub port: &'a str,
}

/// Per-service counters and table facts, for `inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// Backends new connections are balanced over (draining ones, of weight 0, are not).
    pub backends: usize,
    /// The Maglev table size.
    pub table_size: u32,
    /// Counters summed over CPUs.
    pub stats: ServiceStats,
}

/// The routing mesh on a node: its programs, their attachments and their maps.
#[derive(Debug)]
pub struct Mesh {
    programs: Programs,
    state: MapState,
    links: Links,
    /// Ways back without a flow at the last collection, as they were: removed at the next if
    /// still so (one seen in a single pass may belong to a flow being moved meanwhile).
    orphans: std::collections::HashMap<FlowKey, Rewrite>,
    /// Whether node-local clients are served: `None` until the first apply tries.
    node_local: Option<Result<PathBuf, String>>,
    /// Which half of the VIP tables the programs read (the next apply writes the other).
    vip_half: u32,
    /// The VIPs and task namespaces last programmed: an apply that changes neither writes
    /// nothing.
    vips_applied: Option<(Vec<VipPlan>, BTreeSet<u64>)>,
}

/// A service VIP the node's tasks reach: its running backends (addresses on the VIP's network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipPlan {
    /// The service's name (what the VIP's counters are reported under).
    pub service: String,
    /// The VIP.
    pub vip: Ipv4Addr,
    /// The running tasks' addresses, sorted (every node builds the same table).
    pub backends: Vec<Ipv4Addr>,
}

/// The socket programs, in attach order.
const SOCK_PROGRAMS: [&str; 4] = [
    programs::SOCK_CONNECT4,
    programs::SOCK_SENDMSG4,
    programs::SOCK_RECVMSG4,
    programs::SOCK_GETPEERNAME4,
];

/// Where the cgroup v2 hierarchy is mounted (its root), from `/proc/self/mountinfo`.
fn cgroup2_root() -> io::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    mounts
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 hierarchy is mounted"))
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14).
pub(crate) fn netns_cookie() -> io::Result<u64> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a plain getsockopt on an open socket, into a u64 of the size given.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

impl Mesh {
    /// Loads the programs and creates their (empty) maps.
    pub fn load() -> Result<Self, MeshError> {
        Self::from_programs(Programs::load()?)
    }

    /// [`Mesh::load`] without the per-service counters: only for measuring what they cost
    /// (`cargo xtask bench metrics`); nothing is counted.
    pub fn load_without_counters() -> Result<Self, MeshError> {
        Self::from_programs(Programs::load_without_counters()?)
    }

    fn from_programs(mut programs: Programs) -> Result<Self, MeshError> {
        for name in [programs::XDP_MESH, programs::XDP_PASS] {
            programs.xdp(name)?;
        }
        for name in [
            programs::TC_MESH_ENTRY,
            programs::TC_MESH_REPLY,
            programs::TC_MESH_LEARN,
            programs::TC_MESH_STEER,
        ] {
            programs.tc(name)?;
        }
        for name in SOCK_PROGRAMS {
            programs.sock_addr(name)?;
        }
        let mut mesh = Self {
            programs,
            state: MapState::default(),
            links: Links::default(),
            orphans: std::collections::HashMap::new(),
            node_local: None,
            vip_half: 0,
            vips_applied: None,
        };
        mesh.set_timeouts(Timeouts::DEFAULT)?;
        Ok(mesh)
    }

    /// Whether clients on the node itself reach published ports: the cgroup v2 root the
    /// socket programs are attached to, or why they are not.
    pub fn node_local(&self) -> Option<&Result<PathBuf, String>> {
        self.node_local.as_ref()
    }

    /// Programs the service VIPs the node's tasks reach, and which network namespaces are its
    /// tasks' (by cookie): a Maglev table per VIP written into the half of the tables the
    /// programs do not read, then the VIPs switched to it, so a `connect` never reads a table
    /// being written. The changes, one line each.
    pub fn apply_vips(
        &mut self,
        vips: &[VipPlan],
        task_netns: &BTreeSet<u64>,
    ) -> Result<Vec<String>, MeshError> {
        if self
            .vips_applied
            .as_ref()
            .is_some_and(|(v, n)| v == vips && n == task_netns)
        {
            return Ok(Vec::new());
        }
        let mut changes = Vec::new();
        let half = abi::VIP_TABLE_CAPACITY / 2;
        let base = if self.vip_half == 0 { half } else { 0 };
        let mut frontends: BTreeMap<u32, abi::VipFrontend> = BTreeMap::new();
        let mut tables: Array<&mut MapData, u32> =
            array(self.programs.ebpf_mut(), abi::VIP_TABLES_MAP)?;
        let mut offset = 0_u32;
        for plan in vips {
            let keys: Vec<String> = plan.backends.iter().map(Ipv4Addr::to_string).collect();
            let input: Vec<maglev::Backend<'_>> = keys
                .iter()
                .map(|k| maglev::Backend { key: k, weight: 1 })
                .collect();
            let size = if input.is_empty() {
                0
            } else {
                maglev::next_prime(
                    (input.len() as u32)
                        .saturating_mul(maglev::SLOTS_PER_BACKEND)
                        .max(251),
                )
            };
            if offset + size > half {
                return Err(MeshError::Full(format!(
                    "the service VIPs' tables need more than {half} slots"
                )));
            }
            if size > 0 {
                let table =
                    maglev::build(&input, size).map_err(|e| MeshError::Full(e.to_string()))?;
                for (i, backend) in table.iter().enumerate() {
                    let addr = abi::addr(plan.backends[*backend as usize].octets());
                    tables
                        .set(base + offset + i as u32, addr, 0)
                        .map_err(map_err(abi::VIP_TABLES_MAP))?;
                }
            }
            frontends.insert(
                abi::addr(plan.vip.octets()),
                abi::VipFrontend {
                    table_offset: base + offset,
                    table_size: size,
                },
            );
            offset += size;
        }
        let mut map: HashMap<&mut MapData, u32, abi::VipFrontend> =
            hash(self.programs.ebpf_mut(), abi::VIP_FRONTENDS_MAP)?;
        let old: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for (vip, frontend) in &frontends {
            map.insert(vip, frontend, 0)
                .map_err(map_err(abi::VIP_FRONTENDS_MAP))?;
        }
        for vip in old.iter().filter(|v| !frontends.contains_key(v)) {
            let _ = map.remove(vip);
        }
        // A VIP gone takes its counters along: one given to another service counts from zero.
        let mut stats: PerCpuHashMap<&mut MapData, u32, VipStats> = PerCpuHashMap::try_from(
            self.programs
                .ebpf_mut()
                .map_mut(abi::VIP_STATS_MAP)
                .ok_or(BpfError::NoMap(abi::VIP_STATS_MAP))?,
        )
        .map_err(map_err(abi::VIP_STATS_MAP))?;
        let counted: Vec<u32> = stats.keys().filter_map(Result::ok).collect();
        for vip in counted.iter().filter(|v| !frontends.contains_key(v)) {
            let _ = stats.remove(vip);
        }
        changes.push(format!(
            "mesh: {} service VIP(s) balanced for the node's tasks",
            frontends.len()
        ));
        self.vip_half = if base == 0 { 0 } else { 1 };
        let mut netns: HashMap<&mut MapData, u64, u32> =
            hash(self.programs.ebpf_mut(), abi::TASK_NETNS_MAP)?;
        let known: Vec<u64> = netns.keys().filter_map(Result::ok).collect();
        for cookie in task_netns {
            netns
                .insert(cookie, 1, 0)
                .map_err(map_err(abi::TASK_NETNS_MAP))?;
        }
        for cookie in known.iter().filter(|c| !task_netns.contains(c)) {
            let _ = netns.remove(cookie);
        }
        self.vips_applied = Some((vips.to_vec(), task_netns.clone()));
        Ok(changes)
    }

    /// Attaches the socket programs to the cgroup v2 root for this node's namespace (see
    /// `ebpf/programs/src/sock.rs`). The links go with the programs when the mesh is dropped.
    fn serve_node_local(&mut self) -> Result<PathBuf, String> {
        let root = cgroup2_root().map_err(|e| e.to_string())?;
        let cookie = netns_cookie().map_err(|e| format!("the namespace's cookie: {e}"))?;
        let cgroup = File::open(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let mut config: Array<&mut MapData, SockConfig> =
            array(self.programs.ebpf_mut(), abi::SOCK_CONFIG_MAP).map_err(|e| e.to_string())?;
        config
            .set(
                0,
                SockConfig {
                    netns_cookie: cookie,
                },
                0,
            )
            .map_err(|e| format!("{}: {e}", abi::SOCK_CONFIG_MAP))?;
        for name in SOCK_PROGRAMS {
            let program = self.programs.sock_addr(name).map_err(|e| e.to_string())?;
            program
                // A BPF link: the kernel takes no flags there and always lets other programs
                // (the other nodes' of a lab, other tools') run next to it.
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|e| {
                    let cause = std::error::Error::source(&e)
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default();
                    format!("attaching {name} to {}: {e}{cause}", root.display())
                })?;
        }
        Ok(root)
    }

    /// How long flows live in each state (the defaults are Linux conntrack's, see
    /// [`Timeouts`]); tests shorten them.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) -> Result<(), MeshError> {
        let mut map: Array<&mut MapData, Timeouts> =
            array(self.programs.ebpf_mut(), abi::TIMEOUTS_MAP)?;
        map.set(0, timeouts, 0).map_err(map_err(abi::TIMEOUTS_MAP))
    }

    /// The flows the programs keep: established ones first, then the new ones, each with its
    /// connection entry.
    pub fn flows(&self) -> Result<Vec<Flow>, MeshError> {
        let mut out = Vec::new();
        for (name, established) in [(abi::CONNS_MAP, true), (abi::CONNS_NEW_MAP, false)] {
            let map = self
                .programs
                .ebpf()
                .map(name)
                .ok_or(BpfError::NoMap(name))?;
            let conns: HashMap<&MapData, FlowKey, Conn> =
                HashMap::try_from(map).map_err(map_err(name))?;
            for entry in conns.iter() {
                let Ok((key, conn)) = entry else { continue };
                out.push(Flow {
                    key,
                    conn,
                    established,
                });
            }
        }
        Ok(out)
    }

    /// Removes the established flows that expired (closed, reset, or silent past their
    /// timeout), each with its way back, and ways back without a flow. The programs already
    /// treat an expired flow as gone; this gives its room back. Flows not established yet
    /// live in LRU maps and need no collecting. How many flows were removed.
    ///
    /// The programs change the maps meanwhile, so each removal is decided on the entry as it is
    /// then: a flow only if it is still expired, a way back only if it is still that flow's,
    /// and a way back without a flow only when it was one at the previous collection too (a
    /// flow being moved to the established maps has its connection there first, its way back
    /// a moment later).
    pub fn collect_expired(&mut self) -> Result<usize, MeshError> {
        let now = monotonic_coarse_seconds();
        let mut conns: HashMap<&mut MapData, FlowKey, Conn> =
            hash(self.programs.ebpf_mut(), abi::CONNS_MAP)?;
        let expired: Vec<FlowKey> = conns
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, conn)| now >= conn.expires)
            .map(|(key, _)| key)
            .collect();
        let mut dead = Vec::new();
        for key in expired {
            // Still expired now: no packet came in between.
            if let Ok(conn) = conns.get(&key, 0)
                && now >= conn.expires
                && conns.remove(&key).is_ok()
            {
                dead.push((key, conn.rewrite.back_key(key.proto)));
            }
        }
        let live: std::collections::HashSet<FlowKey> =
            conns.keys().filter_map(Result::ok).collect();
        let mut replies: HashMap<&mut MapData, FlowKey, Rewrite> =
            hash(self.programs.ebpf_mut(), abi::REPLIES_MAP)?;
        for (key, back) in &dead {
            if replies
                .get(back, 0)
                .is_ok_and(|r| r.back_key(key.proto) == *key)
            {
                let _ = replies.remove(back);
            }
        }
        let mut orphans = std::collections::HashMap::new();
        let entries: Vec<(FlowKey, Rewrite)> = replies.iter().filter_map(Result::ok).collect();
        for (back, reply) in entries {
            if live.contains(&reply.back_key(back.proto)) {
                continue;
            }
            if self.orphans.get(&back) == Some(&reply) {
                let _ = replies.remove(&back);
            } else {
                orphans.insert(back, reply);
            }
        }
        self.orphans = orphans;
        Ok(dead.len())
    }

    /// The loaded programs (for BPF_PROG_TEST_RUN).
    pub fn programs(&mut self) -> &mut Programs {
        &mut self.programs
    }

    /// Converges attachments and maps to `plan`; the changes made, one line each. Attaches run
    /// first, so a refusal leaves the maps as they were.
    pub fn apply(
        &mut self,
        plan: &MeshPlan,
        ingress: &IngressNamespace<'_>,
    ) -> Result<Vec<String>, MeshError> {
        let mut changes = Vec::new();
        let ingress_ifindex = ifindex(model::INGRESS_INTERFACE)?;
        self.attach(plan, ingress_ifindex, ingress, &mut changes)?;
        if self.node_local.is_none() {
            let served = self.serve_node_local();
            changes.push(match &served {
                Ok(root) => format!(
                    "mesh: clients on the node reach published ports (socket programs on the cgroup v2 root {})",
                    root.display()
                ),
                Err(why) => {
                    tracing::warn!("clients on the node do not reach published ports: {why}");
                    format!("mesh: clients on the node do not reach published ports: {why}")
                }
            });
            self.node_local = Some(served);
        }
        changes.extend(self.refresh_egress()?);
        changes.extend(self.program(plan, ingress_ifindex)?);
        Ok(changes)
    }

    /// XDP on the public interfaces, TC on `shoal0` and in the ingress namespace.
    fn attach(
        &mut self,
        plan: &MeshPlan,
        ingress_ifindex: u32,
        ingress: &IngressNamespace<'_>,
        changes: &mut Vec<String>,
    ) -> Result<(), MeshError> {
        // Public interfaces.
        let wanted: BTreeMap<&str, u32> = plan
            .interfaces
            .iter()
            .map(|name| Ok((name.as_str(), ifindex(name)?)))
            .collect::<Result<_, MeshError>>()?;
        let stale: Vec<String> = self
            .links
            .entry
            .iter()
            .filter(|(name, links)| wanted.get(name.as_str()) != Some(&links.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.links.entry.remove(&name);
            changes.push(format!("mesh: detached from {name}"));
        }
        for (name, index) in wanted {
            if self.links.entry.contains_key(name) {
                continue;
            }
            // The kernel's FIB lookup, which finds the next hop to a remote backend's node,
            // answers only on an interface that forwards (Docker enables forwarding host-wide).
            let forwarding = format!("/proc/sys/net/ipv4/conf/{name}/forwarding");
            std::fs::write(&forwarding, "1").map_err(|source| MeshError::Io {
                context: format!("enabling IPv4 forwarding on {name} ({forwarding})"),
                source,
            })?;
            // TC first: from the moment XDP runs, what it passes on finds the TC entry.
            let tc = self.attach_tc(programs::TC_MESH_ENTRY, name, TcAttachType::Ingress)?;
            let xdp = self.attach_xdp(programs::XDP_MESH, name, index, false);
            changes.push(match &xdp {
                Ok(_) => format!("mesh: attached to {name} (native XDP, TC behind it)"),
                Err(e) => format!("mesh: attached to {name} (TC: no native XDP here: {e})"),
            });
            self.links.entry.insert(
                name.to_owned(),
                EntryLinks {
                    ifindex: index,
                    xdp: xdp.ok(),
                    _tc: tc,
                },
            );
        }

        // The way back, on shoal0.
        if self.links.reply.as_ref().map(|(i, _)| *i) != Some(ingress_ifindex) {
            self.links.reply = None;
            let link = self.attach_tc(
                programs::TC_MESH_REPLY,
                model::INGRESS_INTERFACE,
                TcAttachType::Ingress,
            )?;
            self.links.reply = Some((ingress_ifindex, link));
            changes.push(format!(
                "mesh: replies translated on {}",
                model::INGRESS_INTERFACE
            ));
        }

        // Inside the ingress namespace: the node's port gets an XDP program (a native redirect
        // into a veth needs one on the receiving end) and the client-IP programs.
        let inside = crate::overlay::netns::within(ingress.netns, || {
            Ok((
                ifindex_io(crate::overlay::BRIDGE)?,
                ifindex_io(crate::overlay::VXLAN)?,
                ifindex_io(ingress.port)?,
            ))
        })
        .map_err(|source| MeshError::Io {
            context: format!("finding the ingress network's devices in {}", plan.network),
            source,
        })?;
        if self.links.ingress.as_ref().map(|(i, _)| *i) != Some(inside) {
            self.links.ingress = None;
            let links = self.in_namespace(ingress.netns, |mesh| {
                let pass = mesh.attach_xdp(programs::XDP_PASS, ingress.port, inside.2, true)?;
                Ok(IngressLinks {
                    _pass: pass,
                    _learn_port: mesh.attach_tc(
                        programs::TC_MESH_LEARN,
                        ingress.port,
                        TcAttachType::Ingress,
                    )?,
                    _learn_vxlan: mesh.attach_tc(
                        programs::TC_MESH_LEARN,
                        crate::overlay::VXLAN,
                        TcAttachType::Ingress,
                    )?,
                    _steer: mesh.attach_tc(
                        programs::TC_MESH_STEER,
                        crate::overlay::BRIDGE,
                        TcAttachType::Ingress,
                    )?,
                })
            })?;
            self.links.ingress = Some((inside, links));
            changes.push(format!(
                "mesh: client-IP steering attached in network {}",
                plan.network
            ));
        }
        Ok(())
    }

    fn in_namespace<T>(
        &mut self,
        netns: &File,
        f: impl FnOnce(&mut Self) -> Result<T, MeshError>,
    ) -> Result<T, MeshError> {
        let mut result = None;
        crate::overlay::netns::within(netns, || {
            result = Some(f(self));
            Ok(())
        })
        .map_err(|source| MeshError::Io {
            context: "entering the ingress network's namespace".into(),
            source,
        })?;
        result.unwrap_or_else(|| {
            Err(MeshError::Io {
                context: "running in the ingress network's namespace".into(),
                source: io::Error::other("the namespace switch did not run the operation"),
            })
        })
    }

    /// Asks the kernel which devices take native XDP redirects and lists them in the egress
    /// map; connections pick their path again when that changed. Without an answer (a kernel
    /// before 6.3) no device is listed, and every balanced packet takes the TC entry.
    pub fn refresh_egress(&mut self) -> Result<Vec<String>, MeshError> {
        let taken = match links::xdp_frames_taken() {
            Ok(devices) => devices
                .into_iter()
                .filter(|(_, takes)| *takes)
                .map(|(index, _)| index)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which devices take XDP frames: the mesh redirects by TC only");
                BTreeSet::new()
            }
        };
        Ok(if self.set_xdp_egress(taken)? {
            vec!["mesh: the devices that take native XDP redirects changed".to_owned()]
        } else {
            Vec::new()
        })
    }

    /// Lists `devices` (ifindexes) as those native XDP redirects may go to, the rest leaving
    /// by the TC entry; whether that changed anything. [`Mesh::apply`] asks the kernel
    /// ([`Mesh::refresh_egress`]); packet tests set it themselves.
    pub fn set_xdp_egress(&mut self, devices: BTreeSet<u32>) -> Result<bool, MeshError> {
        if devices == self.state.egress {
            return Ok(false);
        }
        let devices: BTreeSet<u32> = devices.into_iter().take(MAX_EGRESS as usize).collect();
        let ebpf = self.programs.ebpf_mut();
        let mut map: HashMap<&mut MapData, u32, u32> = hash(ebpf, abi::EGRESS_MAP)?;
        for gone in self.state.egress.difference(&devices) {
            map.remove(gone).map_err(map_err(abi::EGRESS_MAP))?;
        }
        for new in devices.difference(&self.state.egress) {
            map.insert(new, 1, 0).map_err(map_err(abi::EGRESS_MAP))?;
        }
        self.state.egress = devices;
        self.state.egress_changed = true;
        Ok(true)
    }

    /// Attaches an XDP program natively, or, when `generic` and the driver cannot, generically.
    /// The mesh's entry takes no generic fallback (the TC entry takes its place: generic XDP
    /// would run on the same skb as TC, without its checksum helpers); the error says why not.
    fn attach_xdp(
        &mut self,
        name: &'static str,
        interface: &str,
        index: u32,
        generic: bool,
    ) -> Result<XdpLink, MeshError> {
        let xdp: &mut Xdp = self.programs.xdp(name)?;
        let id = match xdp.attach_to_if_index(index, XdpMode::Driver) {
            Ok(id) => id,
            Err(native) if generic => {
                xdp.attach_to_if_index(index, XdpMode::Skb)
                    .map_err(|e| MeshError::Io {
                        context: format!(
                            "attaching XDP to {interface} (native: {native}; generic)"
                        ),
                        source: io::Error::other(e.to_string()),
                    })?
            }
            Err(e) => {
                return Err(MeshError::Io {
                    context: format!("attaching native XDP to {interface}"),
                    source: io::Error::other(e.to_string()),
                });
            }
        };
        xdp.take_link(id).map_err(program_err(name))
    }

    fn attach_tc(
        &mut self,
        name: &'static str,
        interface: &str,
        direction: TcAttachType,
    ) -> Result<SchedClassifierLink, MeshError> {
        let tc: &mut SchedClassifier = self.programs.tc(name)?;
        let id = tc.attach(interface, direction).map_err(|e| MeshError::Io {
            context: format!("attaching {name} to {interface}"),
            source: io::Error::other(e.to_string()),
        })?;
        tc.take_link(id).map_err(program_err(name))
    }

    /// Programs the maps from `plan` (no attachments): what [`Mesh::apply`] does after
    /// attaching, and what packet tests drive directly. `ingress_ifindex` is `shoal0`'s index.
    /// What changed, in words.
    ///
    /// One pass over the maps, one step per map, in the order that keeps every packet on a
    /// consistent path: backends and tables are written before the frontends that point at
    /// them, and retired only after no frontend does ([`Programming`]).
    pub fn program(
        &mut self,
        plan: &MeshPlan,
        ingress_ifindex: u32,
    ) -> Result<Vec<String>, MeshError> {
        let mut pass = Programming {
            ebpf: self.programs.ebpf_mut(),
            state: &mut self.state,
            plan,
            now: Instant::now(),
            changes: Vec::new(),
        };
        pass.config(ingress_ifindex)?;
        pass.service_indices()?;
        let backends = pass.backends()?;
        let mut tables = pass.wanted_tables();
        pass.tables(&mut tables)?;
        let frontends = pass.frontends(&tables)?;
        pass.service_generations(&frontends)?;
        pass.local_addrs()?;
        pass.retire(tables, &backends)?;
        pass.state
            .services
            .retain(|name, _| plan.services.contains_key(name));
        Ok(pass.changes)
    }

    /// Per-service counters and facts, by service name.
    pub fn status(&self) -> Result<BTreeMap<String, ServiceStatus>, MeshError> {
        let map = self
            .programs
            .ebpf()
            .map(abi::STATS_MAP)
            .ok_or(BpfError::NoMap(abi::STATS_MAP))?;
        let stats: PerCpuArray<_, ServiceStats> =
            PerCpuArray::try_from(map).map_err(map_err(abi::STATS_MAP))?;
        let mut out = BTreeMap::new();
        for (name, index) in &self.state.services {
            let mut total = ServiceStats::default();
            for cpu in stats.get(index, 0).map_err(map_err(abi::STATS_MAP))?.iter() {
                total.add(cpu);
            }
            let table = self
                .state
                .tables
                .get(&(name.clone(), false))
                .or_else(|| self.state.tables.get(&(name.clone(), true)));
            out.insert(
                name.clone(),
                ServiceStatus {
                    backends: table.map_or(0, |t| {
                        t.members.iter().filter(|(_, weight)| *weight > 0).count()
                    }),
                    table_size: table.map_or(0, |t| t.size),
                    stats: total,
                },
            );
        }
        Ok(out)
    }

    /// Each published port's counters, summed over CPUs, by port and protocol.
    pub fn port_status(&self) -> Result<Vec<PortStatus>, MeshError> {
        let map = self
            .programs
            .ebpf()
            .map(abi::PORT_STATS_MAP)
            .ok_or(BpfError::NoMap(abi::PORT_STATS_MAP))?;
        let stats: PerCpuArray<_, PortStats> =
            PerCpuArray::try_from(map).map_err(map_err(abi::PORT_STATS_MAP))?;
        let mut out = Vec::new();
        for (service, ports) in &self.state.service_ports {
            for (key, _, _) in ports {
                let Some(frontend) = self.state.frontends.get(key) else {
                    continue;
                };
                let mut total = PortStats::default();
                for cpu in stats
                    .get(&frontend.port_slot, 0)
                    .map_err(map_err(abi::PORT_STATS_MAP))?
                    .iter()
                {
                    total.add(cpu);
                }
                out.push(PortStatus {
                    service: service.clone(),
                    port: abi::port_value(key.port),
                    protocol: if key.proto == Protocol::Udp.number() {
                        Protocol::Udp.name()
                    } else {
                        Protocol::Tcp.name()
                    },
                    stats: total,
                });
            }
        }
        out.sort_by(|a, b| (a.port, a.protocol).cmp(&(b.port, b.protocol)));
        Ok(out)
    }

    /// What each service VIP translated for the node's tasks, summed over CPUs, by service name.
    pub fn vip_status(&self) -> Result<BTreeMap<String, VipStats>, MeshError> {
        let Some((vips, _)) = &self.vips_applied else {
            return Ok(BTreeMap::new());
        };
        let map = self
            .programs
            .ebpf()
            .map(abi::VIP_STATS_MAP)
            .ok_or(BpfError::NoMap(abi::VIP_STATS_MAP))?;
        let stats: PerCpuHashMap<_, u32, VipStats> =
            PerCpuHashMap::try_from(map).map_err(map_err(abi::VIP_STATS_MAP))?;
        let mut out = BTreeMap::new();
        for plan in vips {
            let mut total = VipStats::default();
            if let Ok(per_cpu) = stats.get(&abi::addr(plan.vip.octets()), 0) {
                for cpu in per_cpu.iter() {
                    total.add(cpu);
                }
            }
            out.entry(plan.service.clone())
                .or_insert_with(VipStats::default)
                .add(&total);
        }
        Ok(out)
    }

    /// The interfaces the mesh takes packets in by (its public interfaces) and sends them out
    /// by (`shoal0` and the data-path interface), with the path each takes.
    pub fn links(&self) -> BTreeMap<String, LinkReport> {
        let report = |index: u32| LinkReport {
            driver: String::new(),
            takes_xdp_frames: self.state.egress.contains(&index),
            entry: None,
            egress: false,
        };
        let mut out: BTreeMap<String, LinkReport> = BTreeMap::new();
        for (name, links) in &self.links.entry {
            let entry = if links.xdp.is_some() {
                EntryPath::Xdp
            } else {
                EntryPath::Tc
            };
            out.entry(name.clone())
                .or_insert_with(|| report(links.ifindex))
                .entry = Some(entry);
        }
        let data = self.state.config.data_addr;
        let data_if = (data != 0)
            .then(|| interface_with(Ipv4Addr::from(data.to_ne_bytes())))
            .flatten();
        let ingress =
            (self.state.config.ingress_ifindex != 0).then(|| model::INGRESS_INTERFACE.to_owned());
        for name in [ingress, data_if].into_iter().flatten() {
            if let Ok(index) = ifindex_io(&name) {
                out.entry(name).or_insert_with(|| report(index)).egress = true;
            }
        }
        for (name, link) in &mut out {
            link.driver = links::driver(name).unwrap_or_default();
        }
        out
    }
}

/// `8080/tcp`.
fn describe(key: &FrontendKey) -> String {
    let protocol = if key.proto == Protocol::Udp.number() {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    format!("{}/{}", abi::port_value(key.port), protocol.name())
}

/// One programming of the maps from a plan ([`Mesh::program`]): a step per map.
struct Programming<'a> {
    ebpf: &'a mut aya::Ebpf,
    state: &'a mut MapState,
    plan: &'a MeshPlan,
    now: Instant,
    /// What changed, in words.
    changes: Vec<String>,
}

/// A published port's frontend as wanted, and its service's name.
type WantedFrontends = BTreeMap<FrontendKey, (Frontend, String)>;

impl Programming<'_> {
    /// `MESH_CONFIG`: the node's place on the ingress network, under a new epoch whenever it
    /// changes (connections made under the old one, their ingress interface and encapsulation,
    /// are re-balanced at their next packet) or the egress map changed (connections pick their
    /// path, native XDP or TC, again).
    fn config(&mut self, ingress_ifindex: u32) -> Result<(), MeshError> {
        let plan = self.plan;
        let config = Config {
            ingress_net: abi::addr(plan.subnet.network().octets()),
            ingress_mask: abi::addr(plan.subnet.netmask().octets()),
            ingress_addr: abi::addr(plan.addr.octets()),
            ingress_ifindex,
            ingress_mac: plan.mac.0,
            vxlan_port: plan.tunnel.map_or(0, |t| abi::port(t.port)),
            data_addr: plan.tunnel.map_or(0, |t| abi::addr(t.local.octets())),
            vni: plan.tunnel.map_or(0, |t| {
                let [_, a, b, c] = t.vni.to_be_bytes();
                u32::from_ne_bytes([a, b, c, 0])
            }),
            epoch: self.state.config.epoch,
        };
        let egress_changed = std::mem::take(&mut self.state.egress_changed);
        if config != self.state.config || egress_changed {
            let config = Config {
                epoch: self.state.config.epoch.wrapping_add(1),
                ..config
            };
            let mut map: Array<&mut MapData, Config> = array(self.ebpf, abi::CONFIG_MAP)?;
            map.set(0, config, 0).map_err(map_err(abi::CONFIG_MAP))?;
            self.state.config = config;
        }
        Ok(())
    }

    /// `MESH_STATS`: each new service takes the lowest free counter index, zeroed first.
    fn service_indices(&mut self) -> Result<(), MeshError> {
        let state = &mut *self.state;
        let mut used: BTreeSet<u32> = state
            .services
            .iter()
            .filter(|(name, _)| self.plan.services.contains_key(*name))
            .map(|(_, i)| *i)
            .collect();
        let mut new_services = Vec::new();
        for name in self.plan.services.keys() {
            if state.services.contains_key(name) {
                continue;
            }
            let index = (0..MAX_SERVICES)
                .find(|i| !used.contains(i) && !state.services.values().any(|v| v == i))
                .ok_or_else(|| MeshError::Full(format!("more than {MAX_SERVICES} services")))?;
            used.insert(index);
            new_services.push((name.clone(), index));
        }
        let indices: Vec<u32> = new_services.iter().map(|(_, index)| *index).collect();
        zero_per_cpu::<ServiceStats>(self.ebpf, abi::STATS_MAP, &indices)?;
        state.services.extend(new_services);
        Ok(())
    }

    /// `MESH_BACKENDS`: new backends get an ID no table points at yet. The backends wanted.
    fn backends(&mut self) -> Result<BTreeSet<BackendKey>, MeshError> {
        let wanted: BTreeSet<BackendKey> = self
            .plan
            .services
            .values()
            .flat_map(|s| s.backends.iter().map(|b| (b.addr, b.mac, b.vtep)))
            .collect();
        let mut backends: Array<&mut MapData, Backend> = array(self.ebpf, abi::BACKENDS_MAP)?;
        for key in &wanted {
            if self.state.backends.contains_key(key) {
                continue;
            }
            let id = take_id(self.state, self.now)?;
            let generation = self.state.next_generation(id);
            backends
                .set(
                    id,
                    Backend {
                        addr: abi::addr(key.0.octets()),
                        generation,
                        mac: key.1.0,
                        pad: [0; 2],
                        vtep: key.2.map_or(0, |v| abi::addr(v.octets())),
                    },
                    0,
                )
                .map_err(map_err(abi::BACKENDS_MAP))?;
            self.state.backends.insert(*key, (id, generation));
        }
        Ok(wanted)
    }

    /// The Maglev tables the plan asks for: per service, one over all its backends and one
    /// over this node's (for host-mode ports), each where it has ports.
    fn wanted_tables(&self) -> BTreeMap<TableKey, Table> {
        let mut wanted = BTreeMap::new();
        for (name, service) in &self.plan.services {
            for host in [false, true] {
                if !service.ports.iter().any(|p| p.host == host) {
                    continue;
                }
                let members: Vec<(BackendKey, u32)> = service
                    .backends_for(host)
                    .map(|b: &BackendPlan| ((b.addr, b.mac, b.vtep), b.weight))
                    .collect();
                wanted.insert(
                    (name.clone(), host),
                    Table {
                        members,
                        size: service.table_size,
                        region: None,
                    },
                );
            }
        }
        wanted
    }

    /// `MESH_TABLES`: a table whose members changed is built into a fresh region (the old one
    /// stays until no frontend points at it); an unchanged one keeps its region.
    fn tables(&mut self, wanted: &mut BTreeMap<TableKey, Table>) -> Result<(), MeshError> {
        let mut tables: Array<&mut MapData, u32> = array(self.ebpf, abi::TABLES_MAP)?;
        for (key, table) in wanted.iter_mut() {
            if let Some(old) = self.state.tables.get(key)
                && old.members == table.members
                && old.size == table.size
            {
                table.region = old.region;
                continue;
            }
            let keys: Vec<String> = table
                .members
                .iter()
                .map(|((a, ..), _)| a.to_string())
                .collect();
            let input: Vec<maglev::Backend<'_>> = keys
                .iter()
                .zip(&table.members)
                .map(|(k, (_, weight))| maglev::Backend {
                    key: k,
                    weight: *weight,
                })
                .collect();
            let slots = maglev::build(&input, table.size)
                .map_err(|e| MeshError::Full(format!("service {}: {e}", key.0)))?;
            // No running backend, or only drained ones (weight 0): new connections are
            // refused; established ones to drained backends go on.
            if slots.is_empty() {
                self.changes.push(format!(
                    "mesh: service {} has no running backend{} taking new connections",
                    key.0,
                    if key.1 { " on this node" } else { "" }
                ));
                continue;
            }
            let region = self
                .state
                .regions
                .allocate(table.size, self.now)
                .ok_or_else(|| {
                    MeshError::Full(format!(
                        "no room for service {}'s table of {} slots ({TABLE_CAPACITY} in all)",
                        key.0, table.size
                    ))
                })?;
            for (i, member) in slots.iter().enumerate() {
                let (backend_key, _) = table.members[*member as usize];
                let (id, _) = self.state.backends[&backend_key];
                tables
                    .set(region.offset + i as u32, id, 0)
                    .map_err(map_err(abi::TABLES_MAP))?;
            }
            table.region = Some(region);
            self.changes.push(format!(
                "mesh: service {} balanced over {} backend{}{} ({} slots)",
                key.0,
                table.members.len(),
                if table.members.len() == 1 { "" } else { "s" },
                if key.1 { " on this node" } else { "" },
                table.size
            ));
        }
        Ok(())
    }

    /// `MESH_FRONTENDS` (and `MESH_PORT_STATS` for new ports): each update replaces the whole
    /// value, so a port moves from its old table to its new one in one step. The frontends
    /// wanted.
    fn frontends(
        &mut self,
        tables: &BTreeMap<TableKey, Table>,
    ) -> Result<WantedFrontends, MeshError> {
        let mut wanted = self.wanted_frontends(tables);
        self.give_port_slots(&mut wanted)?;
        let state = &mut *self.state;
        let mut frontends: HashMap<&mut MapData, FrontendKey, Frontend> =
            hash(self.ebpf, abi::FRONTENDS_MAP)?;
        for (key, (frontend, service)) in &wanted {
            if state.frontends.get(key) == Some(frontend) {
                continue;
            }
            frontends
                .insert(key, frontend, 0)
                .map_err(map_err(abi::FRONTENDS_MAP))?;
            if !state.frontends.contains_key(key) {
                self.changes.push(format!(
                    "mesh: published {} for service {service}",
                    describe(key)
                ));
            }
            state.frontends.insert(*key, *frontend);
        }
        let gone: Vec<FrontendKey> = state
            .frontends
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            frontends
                .remove(&key)
                .map_err(map_err(abi::FRONTENDS_MAP))?;
            state.frontends.remove(&key);
            self.changes
                .push(format!("mesh: unpublished {}", describe(&key)));
        }
        Ok(wanted)
    }

    /// Every published port's frontend, pointing at its table; a port that stays published
    /// keeps its counter slot, a new one has none yet.
    fn wanted_frontends(&self, tables: &BTreeMap<TableKey, Table>) -> WantedFrontends {
        let mut wanted = BTreeMap::new();
        for (name, service) in &self.plan.services {
            for port in &service.ports {
                let table = &tables[&(name.clone(), port.host)];
                let key = FrontendKey {
                    port: abi::port(port.published),
                    proto: port.protocol.number(),
                    pad: 0,
                };
                let mut flags = 0;
                if port.client_ip {
                    flags |= FLAG_CLIENT_IP;
                }
                if port.host {
                    flags |= FLAG_HOST;
                }
                let frontend = Frontend {
                    service: self.state.services[name],
                    table_offset: table.region.map_or(0, |r| r.offset),
                    table_size: table.region.map_or(0, |_| table.size),
                    target_port: abi::port(port.target),
                    flags,
                    port_slot: self
                        .state
                        .frontends
                        .get(&key)
                        .map_or(NO_SLOT, |f| f.port_slot),
                };
                wanted.insert(key, (frontend, name.clone()));
            }
        }
        wanted
    }

    /// New ports take the lowest free counter slots, zeroed first (a slot a gone port had held
    /// starts again from nothing).
    fn give_port_slots(&mut self, wanted: &mut WantedFrontends) -> Result<(), MeshError> {
        if !wanted.values().any(|(f, _)| f.port_slot == NO_SLOT) {
            return Ok(());
        }
        let kept: BTreeSet<u32> = wanted
            .values()
            .map(|(f, _)| f.port_slot)
            .filter(|s| *s != NO_SLOT)
            .collect();
        let mut free = (0..abi::MAX_FRONTENDS).filter(|s| !kept.contains(s));
        let mut given = Vec::new();
        for (frontend, _) in wanted.values_mut() {
            if frontend.port_slot != NO_SLOT {
                continue;
            }
            frontend.port_slot = free.next().ok_or_else(|| {
                MeshError::Full(format!(
                    "more than {} published ports on a node",
                    abi::MAX_FRONTENDS
                ))
            })?;
            given.push(frontend.port_slot);
        }
        zero_per_cpu::<PortStats>(self.ebpf, abi::PORT_STATS_MAP, &given)
    }

    /// `MESH_SERVICES`: services that went, or whose ports changed, get a new generation, so
    /// their connections are re-balanced under the new ports (or passed on, when a port is no
    /// longer published).
    fn service_generations(&mut self, frontends: &WantedFrontends) -> Result<(), MeshError> {
        let mut ports: BTreeMap<String, Vec<(FrontendKey, u16, u16)>> = BTreeMap::new();
        for (key, (frontend, service)) in frontends {
            ports.entry(service.clone()).or_default().push((
                *key,
                frontend.target_port,
                frontend.flags,
            ));
        }
        let state = &mut *self.state;
        let changed: Vec<u32> = state
            .services
            .iter()
            .filter(|(name, _)| {
                !self.plan.services.contains_key(*name)
                    || state.service_ports.get(*name) != ports.get(*name)
            })
            .map(|(_, index)| *index)
            .collect();
        let mut generations: Array<&mut MapData, u32> = array(self.ebpf, abi::SERVICES_MAP)?;
        for index in changed {
            let generation = state.service_generations.entry(index).or_default();
            *generation = generation.wrapping_add(1);
            generations
                .set(index, *generation, 0)
                .map_err(map_err(abi::SERVICES_MAP))?;
        }
        state.service_ports = ports;
        Ok(())
    }

    /// `MESH_LOCAL_ADDRS`: the addresses published ports answer on.
    fn local_addrs(&mut self) -> Result<(), MeshError> {
        let mut addrs: HashMap<&mut MapData, u32, u32> = hash(self.ebpf, abi::LOCAL_ADDRS_MAP)?;
        for addr in self.plan.local_addrs.difference(&self.state.local_addrs) {
            addrs
                .insert(abi::addr(addr.octets()), 1, 0)
                .map_err(map_err(abi::LOCAL_ADDRS_MAP))?;
        }
        for addr in self.state.local_addrs.difference(&self.plan.local_addrs) {
            addrs
                .remove(&abi::addr(addr.octets()))
                .map_err(map_err(abi::LOCAL_ADDRS_MAP))?;
        }
        self.state.local_addrs = self.plan.local_addrs.clone();
        Ok(())
    }

    /// Now that no frontend points at them: replaced tables are retired, and removed backends.
    /// A removed backend's ID gets a new generation at once, so connections to it are
    /// re-balanced on their next packet; the ID itself is reused only after the quarantine.
    fn retire(
        &mut self,
        tables: BTreeMap<TableKey, Table>,
        backends: &BTreeSet<BackendKey>,
    ) -> Result<(), MeshError> {
        let state = &mut *self.state;
        for (key, old) in std::mem::take(&mut state.tables) {
            let kept = tables.get(&key).and_then(|t| t.region) == old.region;
            if let (false, Some(region)) = (kept, old.region) {
                state.regions.retire(region, self.now);
            }
        }
        state.tables = tables;
        let mut map: Array<&mut MapData, Backend> = array(self.ebpf, abi::BACKENDS_MAP)?;
        let gone: Vec<BackendKey> = state
            .backends
            .keys()
            .filter(|k| !backends.contains(k))
            .copied()
            .collect();
        for key in gone {
            let (id, _) = state.backends.remove(&key).expect("listed above");
            let generation = state.next_generation(id);
            // Address zero: a packet that raced the table switch finds no backend here.
            map.set(
                id,
                Backend {
                    generation,
                    ..Backend::default()
                },
                0,
            )
            .map_err(map_err(abi::BACKENDS_MAP))?;
            state.free_ids.push((id, self.now));
        }
        Ok(())
    }
}

/// A free backend ID: never used, or out of quarantine.
fn take_id(state: &mut MapState, now: Instant) -> Result<u32, MeshError> {
    if let Some(i) = state
        .free_ids
        .iter()
        .position(|(_, at)| now.duration_since(*at) >= QUARANTINE)
    {
        return Ok(state.free_ids.remove(i).0);
    }
    let next = u32::try_from(state.generations.len()).unwrap_or(u32::MAX);
    if next >= MAX_BACKENDS {
        return Err(MeshError::Full(format!(
            "more than {MAX_BACKENDS} backends (or too many replaced within {QUARANTINE:?})"
        )));
    }
    state.generations.push(0);
    Ok(next)
}

/// A flow the programs keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The client's flow, as its packets carry it.
    pub key: FlowKey,
    /// What the programs keep of it.
    pub conn: Conn,
    /// Whether it is with the established flows (else with the new ones).
    pub established: bool,
}

/// The clock the programs' flow expiries are in (`bpf_ktime_get_coarse_ns`), in seconds.
fn monotonic_coarse_seconds() -> u32 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the time into the struct it is given, which lives for the
    // call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    now.tv_sec as u32
}

/// Map `name` of `ebpf`, as an array.
fn array<'a, V: aya::Pod>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<Array<&'a mut MapData, V>, MeshError> {
    Array::try_from(ebpf.map_mut(name).ok_or(BpfError::NoMap(name))?).map_err(map_err(name))
}

/// Map `name` of `ebpf`, as a hash map.
fn hash<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>, MeshError> {
    HashMap::try_from(ebpf.map_mut(name).ok_or(BpfError::NoMap(name))?).map_err(map_err(name))
}

/// The interface holding IPv4 address `addr`, if any.
fn interface_with(addr: Ipv4Addr) -> Option<String> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let ip = a.address?.as_sockaddr_in()?.ip();
        (ip == addr).then_some(a.interface_name)
    })
}

fn ifindex_io(name: &str) -> io::Result<u32> {
    let c_name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => {
            let e = io::Error::last_os_error();
            Err(io::Error::new(
                e.kind(),
                format!("no interface {name}: {e}"),
            ))
        }
        index => Ok(index),
    }
}

fn ifindex(name: &str) -> Result<u32, MeshError> {
    ifindex_io(name).map_err(|source| MeshError::Io {
        context: format!("looking up interface {name}"),
        source,
    })
}
