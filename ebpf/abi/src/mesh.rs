//! The routing mesh's maps, shared by the XDP/TC programs and the userspace loader.
//!
//! ```text
//!  client ─> public iface ─ XDP shoal_xdp_mesh ─ CONNS hit? ── yes ─> rewrite ─> redirect ─> shoal0
//!                                                   │ no                                     (ingress
//!                          LOCAL_ADDRS, FRONTENDS ──┤                                         network)
//!                          TABLES[offset + hash % size] ─> BACKENDS[id] ─> REPLIES (NAT) + CONNS
//!
//!  backend reply ─> shoal0 ─ TC shoal_tc_mesh_reply ─ REPLIES hit ─> rewrite ─> redirect ─> public iface
//! ```
//!
//! Addresses and ports are kept exactly as they sit in the packet (network byte order), loaded
//! as native integers: the programs never swap bytes, and userspace converts with
//! [`addr`]/[`port`]. Every value is `repr(C)` with explicit padding, so both sides agree on
//! layouts by construction.
//!
//! Atomicity: the programs read [`Frontend`]s from a hash map, whose updates replace an element
//! as a whole, so a service's table offset, size and flags always change together. Tables are
//! written into a region of [`TABLES_MAP`] no frontend points at, and only then published by
//! updating the frontend: no packet ever sees a half-written table.

/// Established flows (a TCP connection both ends have answered, a UDP flow that got a reply and
/// went on): the rewrite applied to a client's packets (hash, [`FlowKey`] -> [`Conn`]). Nothing
/// evicts them: they leave when they close or expire ([`Timeouts`]), so an idle connection keeps
/// its backend as long as Linux conntrack would keep it.
pub const CONNS_MAP: &str = "MESH_CONNS";
/// Flows not established yet (a TCP handshake in progress, a UDP flow without a reply): LRU
/// hash, [`FlowKey`] -> [`Conn`]. A flood of them evicts only its own kind.
pub const CONNS_NEW_MAP: &str = "MESH_CONNS_NEW";
/// The way back of established flows: a backend's reply (as it arrives) -> the rewrite that
/// makes it the node's reply to the client (hash, [`FlowKey`] -> [`Rewrite`]). The reply key's
/// translated port is the flow's claim on that port.
pub const REPLIES_MAP: &str = "MESH_REPLIES";
/// The way back of flows not established yet (LRU hash, [`FlowKey`] -> [`Rewrite`]).
pub const REPLIES_NEW_MAP: &str = "MESH_REPLIES_NEW";
/// How long flows live in each state (array of one [`Timeouts`]).
pub const TIMEOUTS_MAP: &str = "MESH_TIMEOUTS";
/// Published ports (hash, [`FrontendKey`] -> [`Frontend`]).
pub const FRONTENDS_MAP: &str = "MESH_FRONTENDS";
/// The node's addresses published ports answer on (hash, address -> 1).
pub const LOCAL_ADDRS_MAP: &str = "MESH_LOCAL_ADDRS";
/// Backends by ID (array of [`Backend`]).
pub const BACKENDS_MAP: &str = "MESH_BACKENDS";
/// Per service index: a generation, bumped when the service goes or its ports change, so its
/// connections are re-balanced (or passed on, when the port is no longer published).
pub const SERVICES_MAP: &str = "MESH_SERVICES";
/// Every service's Maglev table, each in its own region (array of backend IDs).
pub const TABLES_MAP: &str = "MESH_TABLES";
/// Per-service, per-CPU counters (per-CPU array of [`ServiceStats`], indexed by service).
pub const STATS_MAP: &str = "MESH_STATS";
/// A read-only global (`u32`, 1 by default): 0 makes the programs count nothing in
/// [`STATS_MAP`]. Only `cargo xtask bench metrics` sets it, to measure what counting costs; the
/// verifier sees the constant and leaves the unused branch out.
pub const COUNTERS_GLOBAL: &str = "MESH_COUNTERS";
/// The node's place in the ingress network (array of one [`Config`]).
pub const CONFIG_MAP: &str = "MESH_CONFIG";
/// Client-IP mode, backend side: which entry node a client flow came through (LRU hash,
/// [`FlowKey`] of the backend's reply -> [`Learned`]).
pub const LEARNED_MAP: &str = "MESH_LEARNED";

/// Devices a native XDP redirect may send frames to (hash, ifindex -> 1): those the kernel says
/// take XDP frames (netdev `xdp-features` has `ndo-xmit`). A veth does only while its peer runs
/// an XDP program or has GRO on; a redirect to any other device is dropped after the program
/// returns, unseen. Connections to others are carried by the TC entry.
pub const EGRESS_MAP: &str = "MESH_EGRESS";

/// Services with counters (indices of [`STATS_MAP`]).
pub const MAX_SERVICES: u32 = 1024;
/// Published ports.
pub const MAX_FRONTENDS: u32 = 4096;
/// Backend IDs.
pub const MAX_BACKENDS: u32 = 65_536;
/// Slots of [`TABLES_MAP`]: 64 default-size (16381) tables, double-buffered.
pub const TABLE_CAPACITY: u32 = 1 << 21;
/// Established flows the entry node tracks.
pub const MAX_CONNS: u32 = 262_144;
/// Their reply translations (one per flow).
pub const MAX_REPLIES: u32 = 262_144;
/// Flows not established yet; the least recently used is forgotten first.
pub const MAX_NEW_CONNS: u32 = 262_144;
/// Their reply translations.
pub const MAX_NEW_REPLIES: u32 = 262_144;
/// Client flows remembered by backends' nodes in client-IP mode.
pub const MAX_LEARNED: u32 = 262_144;
/// Addresses published ports answer on.
pub const MAX_LOCAL_ADDRS: u32 = 256;
/// Devices in [`EGRESS_MAP`].
pub const MAX_EGRESS: u32 = 256;

/// [`Conn::egress`]: the device the connection's packets leave by takes native XDP redirects.
pub const EGRESS_XDP: u32 = 1;

/// Source ports the entry node translates clients to: `NAT_PORT_MIN..=65535`.
pub const NAT_PORT_MIN: u16 = 1024;
/// Candidate ports tried for a new connection before it is dropped.
pub const NAT_PORT_PROBES: u32 = 8;

/// [`Frontend::flags`]: keep the client's source address (no SNAT); replies return through the
/// entry node by the backend node's steering.
pub const FLAG_CLIENT_IP: u16 = 1;
/// [`Frontend::flags`]: `mode=host` — only this node's tasks, straight to them.
pub const FLAG_HOST: u16 = 2;

/// An IPv4 address as the programs hold it.
pub const fn addr(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// A port as the programs hold it.
pub const fn port(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// The host-order value of a port as the programs hold it.
pub const fn port_value(raw: u16) -> u16 {
    u16::from_be_bytes(raw.to_ne_bytes())
}

/// A flow, as the packet carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol (TCP or UDP).
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 3],
}

impl FlowKey {
    /// The flow in the other direction.
    pub const fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            pad: [0; 3],
        }
    }
}

/// The socket programs' settings (index 0 of [`SOCK_CONFIG_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockConfig {
    /// The node's network namespace cookie: sockets of other namespaces (tasks, other nodes of a
    /// lab) are left alone. 0: the programs do nothing.
    pub netns_cookie: u64,
}

/// A translated socket's backend, as `getpeername` and `recvmsg` see it: the socket's cookie
/// and the backend's address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    /// The backend's address.
    pub addr: u32,
    /// The backend's port.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

/// What the client asked for: the published address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOrigin {
    /// The address the client connected or sent to.
    pub addr: u32,
    /// The published port.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

/// A service VIP: where its Maglev table lies in [`VIP_TABLES_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipFrontend {
    /// The table's first slot.
    pub table_offset: u32,
    /// The table's size (a prime); 0: no running backend.
    pub table_size: u32,
}

/// `add` for a struct of `u64` counters: counter by counter, wrapping (summing CPUs).
macro_rules! summed {
    ($t:ty: $($field:ident),+) => {
        impl $t {
            /// Adds `other`, counter by counter (summing CPUs).
            pub fn add(&mut self, other: &Self) {
                $(self.$field = self.$field.wrapping_add(other.$field);)+
            }
        }
    };
}

/// Service VIPs: address -> [`VipFrontend`].
pub const VIP_FRONTENDS_MAP: &str = "MESH_VIP_FRONTENDS";
/// What each service VIP translated, per CPU (per-CPU hash: address -> [`VipStats`]).
pub const VIP_STATS_MAP: &str = "MESH_VIP_STATS";

/// A service VIP's counters on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    /// Connections (and datagrams of unconnected sockets) sent to a running task.
    pub connections: u64,
    /// Those left to the VIP itself, which nothing answers: the service had no running task.
    pub no_backend: u64,
}

summed!(VipStats: connections, no_backend);
/// The VIPs' Maglev tables: backend addresses (two halves, written in turn).
pub const VIP_TABLES_MAP: &str = "MESH_VIP_TABLES";
/// The network namespaces of the node's tasks (cookie -> 1): the sockets VIPs are translated for.
pub const TASK_NETNS_MAP: &str = "MESH_TASK_NETNS";
/// VIPs a node holds.
pub const MAX_VIPS: u32 = 4096;
/// Slots of the VIPs' tables (both halves).
pub const VIP_TABLE_CAPACITY: u32 = 1 << 19;
/// Task namespaces a node holds.
pub const MAX_TASK_NETNS: u32 = 4096;

/// The socket programs' settings.
pub const SOCK_CONFIG_MAP: &str = "MESH_SOCK_CONFIG";
/// Translated sockets: [`SockKey`] -> [`SockOrigin`] (LRU).
pub const SOCK_ORIGINS_MAP: &str = "MESH_SOCK_ORIGINS";
/// How many translated sockets are remembered for `getpeername` and `recvmsg`.
pub const MAX_SOCK_ORIGINS: u32 = 65_536;

/// A published port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    /// The published port.
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub pad: u8,
}

/// Where a published port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// The service's index in [`STATS_MAP`].
    pub service: u32,
    /// The first slot of the service's table in [`TABLES_MAP`].
    pub table_offset: u32,
    /// The table's size (a prime), or 0 when the service has no backend: the packet then goes to
    /// the node's own stack, which refuses it.
    pub table_size: u32,
    /// The port the backends listen on.
    pub target_port: u16,
    /// [`FLAG_CLIENT_IP`], [`FLAG_HOST`].
    pub flags: u16,
    /// The published port's entry in [`PORT_STATS_MAP`] (below [`MAX_FRONTENDS`]).
    pub port_slot: u32,
}

/// Per-published-port, per-CPU counters (per-CPU array of [`PortStats`], indexed by
/// [`Frontend::port_slot`]).
pub const PORT_STATS_MAP: &str = "MESH_PORT_STATS";

/// A published port's counters on one CPU (the service's own, [`ServiceStats`], sum its ports').
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Client packets sent on to a backend.
    pub packets: u64,
    /// Their bytes (Ethernet frames).
    pub bytes: u64,
    /// Reply packets sent back to clients.
    pub reply_packets: u64,
    /// Their bytes.
    pub reply_bytes: u64,
    /// Connections balanced.
    pub connections: u64,
    /// Packets to the port while its service had no backend (left to the stack, refused).
    pub refused: u64,
    /// New flows dropped because no translation port was free.
    pub dropped: u64,
    /// Client packets encapsulated straight to the backend's node.
    pub tunneled: u64,
}

summed!(PortStats: packets, bytes, reply_packets, reply_bytes, connections, refused, dropped, tunneled);

/// A backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Its address on the ingress network.
    pub addr: u32,
    /// Bumped each time the ID is given to another backend: connections remember the generation
    /// they were made with and are re-balanced when it no longer matches.
    pub generation: u32,
    /// Its MAC on the ingress network.
    pub mac: [u8; 6],
    /// Zero.
    pub pad: [u8; 2],
    /// Its node's data-path address when it runs on another node and the entry node may
    /// encapsulate straight to it (0: through the ingress network's bridge).
    pub vtep: u32,
}

/// The VXLAN encapsulation a connection to a remote backend gets right in XDP: outer Ethernet,
/// IPv4, UDP and VXLAN headers, and the interface it leaves by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tunnel {
    /// Outer source: this node's data-path address.
    pub saddr: u32,
    /// Outer destination: the backend's node (0: no encapsulation).
    pub daddr: u32,
    /// The data-path interface.
    pub ifindex: u32,
    /// The VNI, as the VXLAN header carries it (3 bytes, then a reserved zero).
    pub vni: u32,
    /// Outer UDP source port (flow entropy).
    pub sport: u16,
    /// Outer UDP destination port (the VXLAN port).
    pub dport: u16,
    /// Outer destination MAC (the next hop's).
    pub dmac: [u8; 6],
    /// Outer source MAC (the data-path interface's).
    pub smac: [u8; 6],
}

/// Bytes the encapsulation adds: Ethernet, IPv4, UDP, VXLAN.
pub const TUNNEL_OVERHEAD: usize = 14 + 20 + 8 + 8;

/// The headers put in front of a frame of `inner_len` bytes (its Ethernet header included) to
/// carry it to `t`'s node, exactly as the kernel's VXLAN device would: outer Ethernet to the
/// next hop; IPv4 without options, DF clear, TTL 64; UDP without checksum (allowed for VXLAN
/// over IPv4); VXLAN with the I flag and the VNI.
#[inline(always)]
pub fn tunnel_headers(t: &Tunnel, inner_len: usize) -> [u8; TUNNEL_OVERHEAD] {
    let mut h = [0_u8; TUNNEL_OVERHEAD];
    let put = |h: &mut [u8; TUNNEL_OVERHEAD], at: usize, bytes: &[u8]| {
        let mut i = 0;
        while i < bytes.len() {
            h[at + i] = bytes[i];
            i += 1;
        }
    };
    put(&mut h, 0, &t.dmac);
    put(&mut h, 6, &t.smac);
    put(&mut h, 12, &[0x08, 0x00, 0x45, 0]);
    put(&mut h, 16, &((inner_len + 36) as u16).to_be_bytes());
    put(&mut h, 22, &[64, 17]);
    put(&mut h, 26, &t.saddr.to_ne_bytes());
    put(&mut h, 30, &t.daddr.to_ne_bytes());
    let mut sum: u32 = 0;
    let mut i = 14;
    while i < 34 {
        sum += u32::from(u16::from_ne_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    put(&mut h, 24, &(!csum::fold(sum)).to_ne_bytes());
    put(&mut h, 34, &t.sport.to_ne_bytes());
    put(&mut h, 36, &t.dport.to_ne_bytes());
    put(&mut h, 38, &((inner_len + 16) as u16).to_be_bytes());
    put(&mut h, 42, &[0x08, 0, 0, 0]);
    put(&mut h, 46, &t.vni.to_ne_bytes());
    h
}

/// A packet rewrite: the new addresses and ports, Ethernet addresses and the interface the
/// packet is redirected to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// New source address.
    pub saddr: u32,
    /// New destination address.
    pub daddr: u32,
    /// New source port.
    pub sport: u16,
    /// New destination port.
    pub dport: u16,
    /// The interface the packet leaves by.
    pub ifindex: u32,
    /// The service's index in [`STATS_MAP`].
    pub service: u32,
    /// New destination MAC.
    pub dmac: [u8; 6],
    /// New source MAC.
    pub smac: [u8; 6],
    /// The published port's entry in [`PORT_STATS_MAP`] ([`Frontend::port_slot`]).
    pub port_slot: u32,
}

/// Where a flow is in its life ([`Conn::state`]).
pub mod state {
    /// TCP: the client's SYN was balanced; the backend has not answered.
    pub const TCP_SYN_SENT: u8 = 1;
    /// TCP: the backend answered with SYN-ACK; the client has not acknowledged it.
    pub const TCP_SYN_RECV: u8 = 2;
    /// TCP: both ends spoke; the flow is established.
    pub const TCP_ESTABLISHED: u8 = 3;
    /// TCP: one end of an established connection sent FIN; data may still flow the other way.
    pub const TCP_CLOSING: u8 = 4;
    /// TCP: both ends sent FIN, or one reset the connection, or the handshake ended before it
    /// completed. A new SYN on the same tuple starts a new flow.
    pub const TCP_CLOSED: u8 = 5;
    /// UDP: the client's first datagram was balanced; no reply yet.
    pub const UDP_NEW: u8 = 6;
    /// UDP: the backend replied once.
    pub const UDP_REPLIED: u8 = 7;
    /// UDP: traffic both ways: an established stream.
    pub const UDP_STREAM: u8 = 8;

    /// Whether a flow in `state` has been answered both ways (conntrack's "assured"): it lives
    /// in the established maps, and never yields its translated port. A handshake that ends
    /// (FIN or RST) before it completes is [`TCP_CLOSED`], never assured.
    pub const fn assured(state: u8) -> bool {
        matches!(state, TCP_ESTABLISHED | TCP_CLOSING | UDP_STREAM)
    }
}

/// [`Conn::fins`]: the client sent FIN.
pub const FIN_CLIENT: u8 = 1;
/// [`Conn::fins`]: the backend sent FIN.
pub const FIN_BACKEND: u8 = 2;

/// How long a flow lives in each state, in seconds since its last packet (Linux conntrack's
/// defaults where it has one), and how old a flow not established yet must be before a new
/// flow may take its translated port when every candidate port is held.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP handshake in progress (conntrack: 120 s SYN_SENT, 60 s SYN_RECV; shorter here, a
    /// client's retransmitted SYN makes the same flow again).
    pub tcp_half_open: u32,
    /// An established TCP connection (conntrack: 5 days).
    pub tcp_established: u32,
    /// A TCP connection one end has closed (conntrack: 120 s FIN_WAIT).
    pub tcp_closing: u32,
    /// A TCP connection closed or reset (conntrack: 10 s CLOSE).
    pub tcp_closed: u32,
    /// A UDP flow without an answer, or with one answer (conntrack: 30 s).
    pub udp: u32,
    /// A UDP stream (conntrack: 120 s).
    pub udp_stream: u32,
    /// The age from which a flow not established yet yields its translated port to a new flow
    /// when every candidate port is held (conntrack's early drop of unassured entries). 0 by
    /// default: under a flood a real client's handshake wins a port at once, and one taken from
    /// a live handshake costs that client one SYN retransmission (the backend's answer to the
    /// earlier holder is never delivered, see [`ServiceStats::stale`]).
    pub takeover: u32,
    /// Zero.
    pub pad: u32,
}

impl Timeouts {
    /// The defaults.
    pub const DEFAULT: Self = Self {
        tcp_half_open: 10,
        tcp_established: 432_000,
        tcp_closing: 120,
        tcp_closed: 10,
        udp: 30,
        udp_stream: 120,
        takeover: 0,
        pad: 0,
    };

    /// How long a flow in `state` lives after its last packet.
    pub const fn of(&self, flow_state: u8) -> u32 {
        match flow_state {
            state::TCP_SYN_SENT | state::TCP_SYN_RECV => self.tcp_half_open,
            state::TCP_ESTABLISHED => self.tcp_established,
            state::TCP_CLOSING => self.tcp_closing,
            state::TCP_CLOSED => self.tcp_closed,
            state::UDP_STREAM => self.udp_stream,
            _ => self.udp,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A connection the entry node balanced.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    /// What the client's packets become.
    pub rewrite: Rewrite,
    /// The backend's ID.
    pub backend: u32,
    /// The backend ID's generation when the connection was made.
    pub generation: u32,
    /// The service's generation ([`SERVICES_MAP`]) when the connection was made.
    pub service_generation: u32,
    /// [`Config::epoch`] when the connection was made.
    pub config_epoch: u32,
    /// The encapsulation to the backend's node, when `tunnel.daddr` is set.
    pub tunnel: Tunnel,
    /// Where the flow is in its life ([`state`]).
    pub state: u8,
    /// [`FIN_CLIENT`], [`FIN_BACKEND`].
    pub fins: u8,
    /// Zero.
    pub pad: [u8; 2],
    /// TCP: the client's initial sequence number (host order): a backend's SYN-ACK must
    /// acknowledge it, or it belongs to an earlier flow that held the same translated port.
    pub isn: u32,
    /// When the flow was made (seconds of the kernel's monotonic clock).
    pub born: u32,
    /// When it expires unless a packet comes (same clock).
    pub expires: u32,
    /// [`EGRESS_XDP`] when the device the packets leave by (the ingress interface, or the
    /// tunnel's) takes native XDP redirects; otherwise XDP leaves them to the TC entry.
    pub egress: u32,
}

impl Rewrite {
    /// The key of the packets that travel against this translation: for a client's rewrite, the
    /// backend's replies (a translated port's key); for a reply's, the client flow it belongs to.
    pub const fn back_key(&self, proto: u8) -> FlowKey {
        FlowKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto,
            pad: [0; 3],
        }
    }
}

/// The node's place in the ingress network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The ingress network's address.
    pub ingress_net: u32,
    /// Its netmask.
    pub ingress_mask: u32,
    /// This node's address on it: the source of translated (SNAT) connections.
    pub ingress_addr: u32,
    /// The node's interface on it (`shoal0`).
    pub ingress_ifindex: u32,
    /// That interface's MAC.
    pub ingress_mac: [u8; 6],
    /// The ingress network's VXLAN port (0: no encapsulation in XDP, e.g. an encrypted ingress
    /// network, whose traffic must go through WireGuard).
    pub vxlan_port: u16,
    /// This node's data-path address.
    pub data_addr: u32,
    /// The ingress network's VNI, as the VXLAN header carries it.
    pub vni: u32,
    /// Bumped whenever the rest changes: connections remember it and are re-balanced when it no
    /// longer matches.
    pub epoch: u32,
}

/// Where a client flow came from (client-IP mode, backend side).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// The interface it arrived on (the VXLAN device, or the node's own port).
    pub ifindex: u32,
    /// The entry node's MAC on the ingress network.
    pub mac: [u8; 6],
    /// Zero.
    pub pad: [u8; 2],
}

/// A service's counters on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Client packets sent on to a backend.
    pub packets: u64,
    /// Their bytes (Ethernet frames).
    pub bytes: u64,
    /// Reply packets sent back to clients.
    pub reply_packets: u64,
    /// Their bytes.
    pub reply_bytes: u64,
    /// Connections balanced (first packets, and re-balanced ones).
    pub connections: u64,
    /// Packets to a published port of a service without backends (left to the node's stack,
    /// which refuses them).
    pub refused: u64,
    /// New flows dropped because no translation port was free (every candidate held by a
    /// live flow): port exhaustion.
    pub dropped: u64,
    /// Client packets encapsulated straight to the backend's node (a subset of `packets`).
    pub tunneled: u64,
    /// TCP packets that are not a SYN of a new flow and have no flow: left to the node's stack
    /// (which resets them); no state is kept for them.
    pub untracked: u64,
    /// Backend packets of an earlier flow on a translated port now another's: never delivered
    /// (left to the node's stack, which resets the stale connection).
    pub stale: u64,
    /// Flows that stayed with the new ones because the established maps were full.
    pub full: u64,
    /// Ports taken from a handshake older than [`Timeouts::takeover`] by a new flow.
    pub taken_over: u64,
    /// Client packets balanced by the TC entry rather than XDP (a subset of `packets`).
    pub tc_packets: u64,
    /// Packets XDP left to the TC entry because their checksum was left to offload (a local
    /// sender's on a veth): a native redirect would send them with a wrong one.
    pub checksum_handoffs: u64,
    /// Packets XDP left to the TC entry because the device they leave by takes no XDP frames.
    pub egress_handoffs: u64,
}

summed!(ServiceStats: packets, bytes, reply_packets, reply_bytes, connections, refused, dropped, tunneled, untracked, stale, full, taken_over, tc_packets, checksum_handoffs, egress_handoffs);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all impls below): each type is `repr(C)`, made only of integers and byte arrays
    // with explicit padding fields (no implicit padding), and every bit pattern is valid.
    macro_rules! pod {
        ($($t:ty),*) => { $(
            // SAFETY: see above.
            unsafe impl aya::Pod for $t {}
        )* };
    }
    pod!(
        super::VipFrontend,
        super::VipStats,
        super::PortStats,
        super::SockConfig,
        super::SockKey,
        super::SockOrigin,
        super::FlowKey,
        super::FrontendKey,
        super::Frontend,
        super::Backend,
        super::Rewrite,
        super::Tunnel,
        super::Conn,
        super::Config,
        super::Learned,
        super::ServiceStats,
        super::Timeouts
    );
}

/// The MurmurHash3 32-bit finaliser: every input bit affects every output bit.
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash that picks a flow's Maglev slot (`hash % table size`) and its translation ports.
/// The programs and the userspace model compute it with this very function.
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let ports = ((key.sport as u32) << 16) | key.dport as u32;
    let h = fmix(key.saddr ^ 0x9e37_79b9);
    let h = fmix(h ^ key.daddr);
    fmix(h ^ ports ^ ((key.proto as u32) << 24))
}

/// The `probe`th candidate translation port of a flow (as the programs hold ports).
pub const fn nat_port(hash: u32, probe: u32) -> u16 {
    let span = 65_536 - NAT_PORT_MIN as u32;
    let value = NAT_PORT_MIN as u32 + (hash.wrapping_add(probe.wrapping_mul(0x9e37)) % span);
    port(value as u16)
}

/// Internet checksum arithmetic (RFC 1071, incremental update per RFC 1624) on 16-bit words as
/// loaded from the packet: one's-complement sums do not depend on byte order, as long as the
/// checksum and the words are loaded alike.
pub mod csum {
    /// Folds a 32-bit sum into 16 bits.
    pub const fn fold(mut sum: u32) -> u16 {
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        sum as u16
    }

    /// The checksum after replacing 32-bit word `old` by `new` in the covered data (RFC 1624,
    /// eq. 3: HC' = ~(~HC + ~m + m')).
    pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
        let sum = (!check) as u32
            + (!(old as u16)) as u32
            + (!((old >> 16) as u16)) as u32
            + (new & 0xffff)
            + (new >> 16);
        !fold(sum)
    }

    /// The pseudo-header sum of an IPv4 TCP or UDP packet (`l4_len` in host order), folded:
    /// what its checksum field holds while the checksum is left to offload (the kernel's
    /// `CHECKSUM_PARTIAL`: the device, or whoever finishes it, adds the rest). A complete checksum
    /// holds this value only by chance (about one packet in 65,536).
    pub const fn pseudo_header(saddr: u32, daddr: u32, proto: u8, l4_len: u16) -> u16 {
        let sum = (saddr & 0xffff)
            + (saddr >> 16)
            + (daddr & 0xffff)
            + (daddr >> 16)
            + u16::from_ne_bytes([0, proto]) as u32
            + u16::from_ne_bytes(l4_len.to_be_bytes()) as u32;
        fold(sum)
    }

    /// The checksum after replacing 16-bit word `old` by `new`.
    pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
        let sum = (!check) as u32 + (!old) as u32 + new as u32;
        !fold(sum)
    }

    /// The checksum of `data` (an even number of bytes is assumed; a trailing byte is padded
    /// with zero), with words loaded natively, as [`replace32`] expects.
    pub fn compute(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut chunks = data.chunks(2);
        for chunk in &mut chunks {
            let word = match chunk {
                [a, b] => u16::from_ne_bytes([*a, *b]),
                [a] => u16::from_ne_bytes([*a, 0]),
                _ => 0,
            };
            sum = sum.wrapping_add(word as u32);
            if sum > 0xffff_0000 {
                sum = fold(sum) as u32;
            }
        }
        !fold(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_addresses_round_trip_through_the_packet_form() {
        assert_eq!(port_value(port(8080)), 8080);
        assert_eq!(port(0x1f90).to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(addr([10, 0, 0, 1]).to_ne_bytes(), [10, 0, 0, 1]);
    }

    #[test]
    fn nat_ports_stay_in_range() {
        for hash in [0, 1, 64_511, 64_512, u32::MAX] {
            for probe in 0..NAT_PORT_PROBES {
                assert!(port_value(nat_port(hash, probe)) >= NAT_PORT_MIN);
            }
        }
        assert_ne!(nat_port(7, 0), nat_port(7, 1));
    }

    #[test]
    fn incremental_checksum_matches_recomputation() {
        // An IPv4 header with its checksum, then its addresses replaced.
        let mut header = [
            0x45, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 192, 168, 1, 10, 10, 0, 0, 7,
        ];
        let check = csum::compute(&header);
        header[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(csum::compute(&header), 0, "a correct header sums to zero");
        let old = u32::from_ne_bytes([10, 0, 0, 7]);
        let new = u32::from_ne_bytes([172, 31, 255, 1]);
        header[16..20].copy_from_slice(&new.to_ne_bytes());
        let updated = csum::replace32(check, old, new);
        header[10..12].copy_from_slice(&updated.to_ne_bytes());
        assert_eq!(csum::compute(&header), 0);
    }

    #[test]
    fn a_checksum_left_to_offload_is_the_folded_pseudo_header_and_completes_to_a_valid_one() {
        // A UDP datagram from 192.168.1.10:40000 to 10.0.0.2:8080 with 5 bytes of payload.
        let (saddr, daddr) = (addr([192, 168, 1, 10]), addr([10, 0, 0, 2]));
        let mut udp = [
            0x9c, 0x40, 0x1f, 0x90, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o',
        ];
        let partial = csum::pseudo_header(saddr, daddr, 17, 13);
        // What a device finishing it does: sum from the L4 header on, seeded by the field.
        udp[6..8].copy_from_slice(&partial.to_ne_bytes());
        let finished = csum::compute(&udp);
        let mut whole = [0_u8; 12 + 13];
        whole[..12].copy_from_slice(&[192, 168, 1, 10, 10, 0, 0, 2, 0, 17, 0, 13]);
        whole[12..].copy_from_slice(&udp);
        whole[12 + 6..12 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(finished, csum::compute(&whole));
    }

    #[test]
    fn tunnel_headers_carry_a_valid_ipv4_checksum_and_the_lengths() {
        let t = Tunnel {
            saddr: addr([192, 0, 2, 1]),
            daddr: addr([192, 0, 2, 2]),
            ifindex: 3,
            vni: u32::from_ne_bytes([0, 0x10, 0x04, 0]),
            sport: port(50_000),
            dport: port(4789),
            dmac: [2, 0, 0, 0, 0, 2],
            smac: [2, 0, 0, 0, 0, 1],
        };
        let h = tunnel_headers(&t, 100);
        assert_eq!(csum::compute(&h[14..34]), 0);
        assert_eq!(h[0..12], [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        assert_eq!(h[12..16], [0x08, 0, 0x45, 0]);
        assert_eq!(u16::from_be_bytes([h[16], h[17]]), 136);
        assert_eq!(h[23], 17);
        assert_eq!(h[26..34], [192, 0, 2, 1, 192, 0, 2, 2]);
        assert_eq!(u16::from_be_bytes([h[34], h[35]]), 50_000);
        assert_eq!(u16::from_be_bytes([h[36], h[37]]), 4789);
        assert_eq!(u16::from_be_bytes([h[38], h[39]]), 116);
        assert_eq!(h[40..50], [0, 0, 0x08, 0, 0, 0, 0, 0x10, 0x04, 0]);
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let key = FlowKey {
            saddr: addr([192, 168, 0, 1]),
            daddr: addr([192, 168, 0, 2]),
            sport: port(40_000),
            dport: port(8080),
            proto: 6,
            pad: [0; 3],
        };
        let base = flow_hash(&key);
        let variants = [
            FlowKey {
                saddr: addr([192, 168, 0, 3]),
                ..key
            },
            FlowKey {
                daddr: addr([192, 168, 0, 3]),
                ..key
            },
            FlowKey {
                sport: port(40_001),
                ..key
            },
            FlowKey {
                dport: port(8081),
                ..key
            },
            FlowKey { proto: 17, ..key },
        ];
        for v in variants {
            assert_ne!(flow_hash(&v), base, "{v:?}");
        }
    }
}
