//! The routing mesh: a published port's packets are balanced over the service's backends with
//! Maglev and a connection table, rewritten and redirected into the ingress network; replies are
//! rewritten back on their way out. Map layouts are `shoal_abi::mesh`'s.
//!
//! Which path a balanced packet takes out (a native XDP redirect, or the TC entry when that would
//! go wrong) is [`crate::egress`]'s; the TC entry is [`crate::paths`]'s, its counters
//! [`crate::counters`]'.
//!
//! Only unfragmented IPv4 TCP and UDP in untagged Ethernet is balanced. Everything else — IPv6,
//! VLAN-tagged frames, fragments, other protocols, ports not published, addresses that are not
//! the node's — is passed to the kernel untouched, as are truncated or malformed headers.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibLookup,
    bindings::{BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, xdp_action},
    helpers::generated::{
        bpf_fib_lookup, bpf_redirect, bpf_sk_lookup_udp, bpf_sk_release, bpf_xdp_adjust_head,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use shoal_abi::{
    mesh::{
        Backend, Config, Conn, FLAG_CLIENT_IP, FlowKey, Frontend, FrontendKey, Learned,
        MAX_BACKENDS, MAX_FRONTENDS, MAX_LEARNED, MAX_LOCAL_ADDRS, MAX_SERVICES, NAT_PORT_PROBES,
        Rewrite, TABLE_CAPACITY, TUNNEL_OVERHEAD, Timeouts, Tunnel, csum, flow_hash, nat_port,
        port, state, tunnel_headers,
    },
    wire::{ETH_HLEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, TCP_HLEN, UDP_HLEN},
};

use crate::counters::{port_stats, stats};
use crate::egress;
use crate::flow::{
    self, ACK, CONNS, CONNS_NEW, Claim, FIN, LRU_FLAGS, REPLIES, REPLIES_NEW, RST, SYN, expired,
};
use crate::packet::{Header, Packet};

#[map(name = "MESH_FRONTENDS")]
static FRONTENDS: HashMap<FrontendKey, Frontend> = HashMap::with_max_entries(MAX_FRONTENDS, 0);

#[map(name = "MESH_LOCAL_ADDRS")]
static LOCAL_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);

#[map(name = "MESH_BACKENDS")]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "MESH_SERVICES")]
static SERVICES: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

#[map(name = "MESH_TABLES")]
static TABLES: Array<u32> = Array::with_max_entries(TABLE_CAPACITY, 0);

#[map(name = "MESH_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// One connection's worth of room per CPU, to build a new flow in.
#[map(name = "MESH_SCRATCH")]
static SCRATCH: PerCpuArray<Conn> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "MESH_LEARNED")]
static LEARNED: LruHashMap<FlowKey, Learned> = LruHashMap::with_max_entries(MAX_LEARNED, LRU_FLAGS);

/// `TC_ACT_OK` (linux/pkt_cls.h): let the packet continue.
pub(crate) const TC_OK: i32 = 0;
/// `TC_ACT_SHOT`: drop it.
pub(crate) const TC_SHOT: i32 = 2;

/// `ETH_P_IP` as it sits in the packet.
const ETH_P_IP_RAW: u16 = ETH_P_IP.to_be();
/// IPv4 checksum offset.
const IP_CHECK: usize = ETH_HLEN + 10;
/// IPv4 source address offset.
const IP_SADDR: usize = ETH_HLEN + 12;
/// IPv4 destination address offset.
const IP_DADDR: usize = ETH_HLEN + 16;

/// Where a packet arrived: what balancing a new flow needs to know of it.
pub(crate) struct Arrival {
    /// The interface it came in on.
    pub(crate) ifindex: u32,
    /// Its Ethernet source (the client's side of the way back).
    pub(crate) src_mac: [u8; 6],
    /// Its Ethernet destination (this node's MAC on that interface).
    pub(crate) dst_mac: [u8; 6],
    /// The program's context (`xdp_md` or `__sk_buff`), for the kernel's FIB lookup.
    pub(crate) ctx: *mut c_void,
}

/// What becomes of a packet that has no connection to follow.
pub(crate) enum Verdict {
    /// Not for the mesh: to the node's stack.
    Pass,
    /// A published port without backends: to the node's stack, which refuses it. The TC entry
    /// counts it (it runs behind XDP wherever the mesh attaches, so XDP leaves it uncounted).
    Refused(u32, u32),
    /// A TCP packet that is not a SYN of a new flow, and has none: to the node's stack (which
    /// resets it), no state kept. Counted by the TC entry (against the published port's
    /// service, if it is one).
    Untracked,
    /// Dropped (no translation port was free).
    Drop,
}

/// What the forward path needs of a TCP header.
#[derive(Clone, Copy)]
pub(crate) struct Tcp {
    pub(crate) flags: u8,
    /// Sequence number, host order.
    pub(crate) seq: u32,
}

/// The connection a packet of flow `key` follows: its flow (moved along by the packet), or a
/// new one (balanced now) when the packet may open one.
#[inline(always)]
pub(crate) fn connection(
    arrival: &Arrival,
    key: &FlowKey,
    tcp: Option<Tcp>,
) -> Result<*const Conn, Verdict> {
    let now = flow::now();
    let timeouts = flow::timeouts();
    if let Some(conn) = known_flow(arrival, key, tcp, now, timeouts) {
        return Ok(conn);
    }
    // Only a SYN (without ACK) opens a TCP flow: anything else without one is the stack's (a
    // reply to the node's own connection, or a flow forgotten: reset).
    if tcp.is_some_and(|t| !opens(t)) {
        return Err(Verdict::Untracked);
    }
    match decide(arrival, key, tcp, now, timeouts) {
        Decision::Pass => Err(Verdict::Pass),
        Decision::Refused(service, slot) => Err(Verdict::Refused(service, slot)),
        Decision::Drop(service) => {
            if let Some(s) = stats(service) {
                s.dropped += 1;
            }
            Err(Verdict::Drop)
        }
        Decision::Balanced(conn) => Ok(conn),
    }
}

/// What becomes of a packet whose flow has no usable connection entry.
enum Decision {
    /// Not for the mesh: pass it on.
    Pass,
    /// A published port without backends: the node's stack refuses it.
    Refused(u32, u32),
    /// No translation port was free.
    Drop(u32),
    /// Balanced: the new flow, as kept.
    Balanced(*const Conn),
}

/// XDP entry: balances published-port packets, passes everything else.
#[inline(always)]
pub(crate) fn forward(ctx: &XdpContext) -> u32 {
    let packet = Packet::new(ctx);
    let Some(eth) = packet.header::<ETH_HLEN>(0) else {
        return xdp_action::XDP_PASS;
    };
    if eth.raw16::<12>() != ETH_P_IP_RAW {
        return xdp_action::XDP_PASS;
    }
    let Some(ip) = packet.header::<IPV4_HLEN>(ETH_HLEN) else {
        return xdp_action::XDP_PASS;
    };
    let version_ihl = ip.u8::<0>();
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4
        || header_len < IPV4_HLEN
        || !packet.holds(ETH_HLEN, header_len)
        || ip.be16::<6>() & 0x3fff != 0
    {
        return xdp_action::XDP_PASS;
    }
    let l4 = ETH_HLEN + header_len;
    match ip.u8::<9>() {
        IPPROTO_TCP => match packet.header::<TCP_HLEN>(l4) {
            // A data offset below 5, or options cut short: malformed, left to the stack.
            Some(tcp)
                if tcp.u8::<12>() >> 4 >= 5
                    && packet.holds(l4, usize::from(tcp.u8::<12>() >> 4) * 4) =>
            {
                let seen = Tcp {
                    flags: tcp.u8::<13>(),
                    seq: u32::from_be(tcp.raw32::<4>()),
                };
                balance::<TCP_HLEN, 16>(ctx, &packet, &eth, &ip, &tcp, IPPROTO_TCP, Some(seen))
            }
            _ => xdp_action::XDP_PASS,
        },
        IPPROTO_UDP => match packet.header::<UDP_HLEN>(l4) {
            Some(udp) => balance::<UDP_HLEN, 6>(ctx, &packet, &eth, &ip, &udp, IPPROTO_UDP, None),
            None => xdp_action::XDP_PASS,
        },
        _ => xdp_action::XDP_PASS,
    }
}

/// Whether a TCP packet may open a flow: a SYN without ACK, RST or FIN.
#[inline(always)]
fn opens(tcp: Tcp) -> bool {
    tcp.flags & (SYN | ACK | RST | FIN) == SYN
}

/// The flow `key` as kept, if it is alive: refreshed by this packet, moved to the established
/// maps when it becomes established. A flow that expired, whose backend or service went, that
/// lost its way back, or that closed and now sees a new SYN is forgotten (both its entries).
/// Entries are changed in place.
#[inline(always)]
fn known_flow(
    arrival: &Arrival,
    key: &FlowKey,
    tcp: Option<Tcp>,
    now: u32,
    timeouts: &Timeouts,
) -> Option<*const Conn> {
    let (conn, established) = match CONNS.get_ptr_mut(key) {
        Some(conn) => (conn, true),
        None => (CONNS_NEW.get_ptr_mut(key)?, false),
    };
    // SAFETY: a map value, changed in place for the length of this program run (another CPU
    // may write the same flow's entry: the fields are independent words, and the last write
    // wins).
    let entry = unsafe { &mut *conn };
    let reopened = entry.state == state::TCP_CLOSED && tcp.is_some_and(opens);
    if reopened
        || expired(entry, now)
        || !still_valid(entry)
        || !retarget(arrival, key, entry)
        || (!established && !flow::holds_way_back(key, entry))
    {
        if established {
            flow::forget(key, entry);
        } else {
            flow::forget_new(key, entry);
        }
        return None;
    }
    match tcp {
        Some(tcp) => {
            if entry.state == state::TCP_SYN_RECV && tcp.flags & (ACK | SYN | RST) == ACK {
                // The client's ACK of the backend's SYN-ACK: established.
                entry.state = state::TCP_ESTABLISHED;
            } else if entry.state == state::TCP_SYN_SENT && opens(tcp) {
                // The client tries again: the backend's SYN-ACK must acknowledge this SYN.
                entry.isn = tcp.seq;
            }
            flow::tcp_step(entry, tcp.flags, true);
        }
        // More of a flow the backend answered: a stream.
        None if entry.state == state::UDP_REPLIED => entry.state = state::UDP_STREAM,
        None => {}
    }
    flow::refresh(entry, now, timeouts);
    if !established && state::assured(entry.state) {
        if let Some(promoted) = flow::promote(key, conn) {
            return Some(promoted);
        }
        if let Some(s) = stats(entry.rewrite.service) {
            s.full += 1;
        }
    }
    Some(conn)
}

/// Whether a UDP datagram answers a socket of the node itself (connected to the sender): a
/// reply to the node's own traffic, never the mesh's, even on a published port.
#[inline(always)]
fn own_udp_socket(arrival: &Arrival, key: &FlowKey) -> bool {
    // SAFETY: all-zero is a valid tuple (plain integers).
    let mut tuple: aya_ebpf::bindings::bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // SAFETY: writing the IPv4 member of the union it is.
    unsafe {
        let v4 = &mut tuple.__bindgen_anon_1.ipv4;
        v4.saddr = key.saddr;
        v4.daddr = key.daddr;
        v4.sport = key.sport;
        v4.dport = key.dport;
    }
    let size = size_of::<aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>();
    // SAFETY: the helper reads `size` bytes of `tuple`, which lives for the call; the current
    // network namespace (-1), no flags.
    let sock = unsafe { bpf_sk_lookup_udp(arrival.ctx, &mut tuple, size as u32, u64::MAX, 0) };
    if sock.is_null() {
        return false;
    }
    // SAFETY: a socket the helper returned, read before it is released below.
    let connected = unsafe { (*sock).dst_ip4 == key.saddr && (*sock).dst_port == key.sport };
    // SAFETY: releases the reference the lookup took, on every path that got one.
    unsafe { bpf_sk_release(sock.cast()) };
    connected
}

#[inline(always)]
fn balance<const L4: usize, const CHECK: usize>(
    ctx: &XdpContext,
    packet: &Packet,
    eth: &Header<ETH_HLEN>,
    ip: &Header<IPV4_HLEN>,
    l4: &Header<L4>,
    proto: u8,
    tcp: Option<Tcp>,
) -> u32 {
    let key = FlowKey {
        saddr: ip.raw32::<12>(),
        daddr: ip.raw32::<16>(),
        sport: l4.raw16::<0>(),
        dport: l4.raw16::<2>(),
        proto,
        pad: [0; 3],
    };
    let arrival = Arrival {
        ifindex: ctx.ingress_ifindex() as u32,
        src_mac: eth.mac::<6>(),
        dst_mac: eth.mac::<0>(),
        ctx: ctx.ctx.cast(),
    };
    let conn = match connection(&arrival, &key, tcp) {
        Ok(conn) => conn,
        // Counted by the TC entry, which runs behind XDP wherever the mesh attaches.
        Err(Verdict::Pass | Verdict::Refused(..) | Verdict::Untracked) => {
            return xdp_action::XDP_PASS;
        }
        Err(Verdict::Drop) => return xdp_action::XDP_DROP,
    };
    // SAFETY: a map value, read for the length of this program run.
    let conn = unsafe { &*conn };
    // A redirect that would go wrong after the program returns is left to the TC entry.
    if !egress::xdp_can_send(conn, ip, l4.raw16::<CHECK>(), proto) {
        return xdp_action::XDP_PASS;
    }
    let rw = &conn.rewrite;
    ip.write::<12, u32>(rw.saddr);
    ip.write::<16, u32>(rw.daddr);
    ip.write::<10, u16>(csum::replace32(
        csum::replace32(ip.raw16::<10>(), key.saddr, rw.saddr),
        key.daddr,
        rw.daddr,
    ));
    let check = l4.raw16::<CHECK>();
    // A UDP checksum of zero means "none": it stays zero.
    if proto == IPPROTO_TCP || check != 0 {
        let mut c = csum::replace32(check, key.saddr, rw.saddr);
        c = csum::replace32(c, key.daddr, rw.daddr);
        c = csum::replace16(c, key.sport, rw.sport);
        c = csum::replace16(c, key.dport, rw.dport);
        if proto == IPPROTO_UDP && c == 0 {
            c = 0xffff;
        }
        l4.write::<CHECK, u16>(c);
    }
    l4.write::<0, u16>(rw.sport);
    l4.write::<2, u16>(rw.dport);
    eth.write::<0, [u8; 6]>(rw.dmac);
    eth.write::<6, [u8; 6]>(rw.smac);
    let len = packet.len();
    if let Some(s) = stats(rw.service) {
        s.packets += 1;
        s.bytes += len as u64;
    }
    if let Some(p) = port_stats(rw.port_slot) {
        p.packets += 1;
        p.bytes += len as u64;
    }
    if conn.tunnel.daddr != 0 {
        if let Some(s) = stats(rw.service) {
            s.tunneled += 1;
        }
        if let Some(p) = port_stats(rw.port_slot) {
            p.tunneled += 1;
        }
        return encapsulate(ctx, &conn.tunnel, len);
    }
    // SAFETY: a plain helper call; it only records where the packet goes.
    unsafe { bpf_redirect(rw.ifindex, 0) as u32 }
}

/// Wraps the (rewritten) frame of `inner_len` bytes in VXLAN to the backend's node and sends it
/// out of the data-path interface: the entry node's bridge and VXLAN device are skipped.
#[inline(always)]
fn encapsulate(ctx: &XdpContext, t: &Tunnel, inner_len: usize) -> u32 {
    // SAFETY: a helper call on the context the kernel handed in; it only moves `data`.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(TUNNEL_OVERHEAD as i32)) } != 0 {
        return xdp_action::XDP_DROP;
    }
    let packet = Packet::new(ctx);
    let Some(h) = packet.header::<TUNNEL_OVERHEAD>(0) else {
        return xdp_action::XDP_DROP;
    };
    h.write::<0, [u8; TUNNEL_OVERHEAD]>(tunnel_headers(t, inner_len));
    // SAFETY: a plain helper call; it only records where the packet goes.
    unsafe { bpf_redirect(t.ifindex, 0) as u32 }
}

/// The route and next hop to a backend's node, from the kernel's FIB and neighbour table: the
/// encapsulation, or `None` (no route or no neighbour entry yet: the bridge path is taken).
#[inline(always)]
fn tunnel_to(arrival: &Arrival, config: &Config, vtep: u32, hash: u32) -> Option<Tunnel> {
    if vtep == 0 || config.vxlan_port == 0 {
        return None;
    }
    // SAFETY: all-zero is a valid `bpf_fib_lookup` (plain integers and unions of them).
    let mut fib: FibLookup = unsafe { core::mem::zeroed() };
    fib.family = 2; // AF_INET
    fib.l4_protocol = IPPROTO_UDP;
    fib.dport = config.vxlan_port;
    fib.ifindex = arrival.ifindex;
    fib.__bindgen_anon_3.ipv4_src = config.data_addr;
    fib.__bindgen_anon_4.ipv4_dst = vtep;
    // SAFETY: the helper reads and fills `fib`, which lives for the call. A lookup as if
    // forwarding from the interface the packet came in on (the helper requires forwarding to be
    // enabled there; the mesh enables it on the interfaces it attaches to).
    let rc = unsafe { bpf_fib_lookup(arrival.ctx, &mut fib, size_of::<FibLookup>() as i32, 0) };
    (rc == 0).then_some(Tunnel {
        saddr: config.data_addr,
        daddr: vtep,
        ifindex: fib.ifindex,
        vni: config.vni,
        // The ephemeral range, as the kernel's VXLAN picks source ports by flow.
        sport: port(49_152 | (hash as u16 & 0x3fff)),
        dport: config.vxlan_port,
        dmac: fib.dmac,
        smac: fib.smac,
    })
}

/// Whether a connection's backend still holds the ID it was balanced to, and its service is
/// still published as it was.
#[inline(always)]
fn still_valid(conn: &Conn) -> bool {
    BACKENDS
        .get(conn.backend)
        .is_some_and(|b| b.generation == conn.generation)
        && SERVICES.get(conn.rewrite.service) == Some(&conn.service_generation)
}

/// A connection made under an earlier [`Config`]: the same backend and translated port, by
/// the node's interface and encapsulation as they are now. False when it cannot keep its
/// translation (the node's ingress address changed).
#[inline(always)]
fn retarget(arrival: &Arrival, key: &FlowKey, conn: &mut Conn) -> bool {
    let Some(config) = CONFIG.get(0).copied() else {
        return false;
    };
    if conn.config_epoch == config.epoch {
        return true;
    }
    let translated = conn.rewrite.saddr != key.saddr;
    if translated && conn.rewrite.saddr != config.ingress_addr {
        return false;
    }
    let vtep = BACKENDS.get(conn.backend).map_or(0, |b| b.vtep);
    conn.rewrite.ifindex = config.ingress_ifindex;
    conn.rewrite.smac = config.ingress_mac;
    conn.tunnel = tunnel_to(arrival, &config, vtep, flow_hash(key)).unwrap_or_default();
    // The devices that take XDP frames may have changed too (they bump the epoch).
    conn.egress = egress::egress(&conn.rewrite, &conn.tunnel);
    conn.config_epoch = config.epoch;
    true
}

/// Whether `addr` is one of the addresses published ports answer on.
#[inline(always)]
pub(crate) fn is_local(addr: u32) -> bool {
    // SAFETY: only the presence is looked at.
    unsafe { LOCAL_ADDRS.get(addr) }.is_some()
}

/// A backend of the published port `key` for a connection hashed to `hash`, as the packet path
/// picks one: its address and the port it listens on. `None` when the port is not published or
/// has no backend.
#[inline(always)]
pub(crate) fn pick(key: FrontendKey, hash: u32) -> Option<(u32, u16)> {
    // SAFETY: copied out at once; the value is plain data.
    let frontend = unsafe { FRONTENDS.get(key) }.copied()?;
    if frontend.table_size == 0 {
        return None;
    }
    let slot = frontend
        .table_offset
        .wrapping_add(hash % frontend.table_size);
    let id = *TABLES.get(slot)?;
    let backend = BACKENDS.get(id).copied().filter(|b| b.addr != 0)?;
    Some((backend.addr, frontend.target_port))
}

/// The frontend a flow's destination is, when it is one of this node's published ports.
#[inline(always)]
pub(crate) fn frontend_of(key: &FlowKey) -> Option<Frontend> {
    // SAFETY: only the presence is looked at.
    unsafe { LOCAL_ADDRS.get(key.daddr) }?;
    let frontend_key = FrontendKey {
        port: key.dport,
        proto: key.proto,
        pad: 0,
    };
    // SAFETY: copied out at once; the value is plain data.
    unsafe { FRONTENDS.get(frontend_key) }.copied()
}

/// Balances a new flow: frontend, Maglev slot, backend, translated port; records the flow with
/// the new ones (its connection and its way back).
#[inline(always)]
fn decide(
    arrival: &Arrival,
    key: &FlowKey,
    tcp: Option<Tcp>,
    now: u32,
    timeouts: &Timeouts,
) -> Decision {
    let Some(frontend) = frontend_of(key) else {
        return Decision::Pass;
    };
    // A reply to the node's own traffic from a published UDP port is the node's.
    if tcp.is_none() && own_udp_socket(arrival, key) {
        return Decision::Pass;
    }
    if frontend.table_size == 0 {
        return Decision::Refused(frontend.service, frontend.port_slot);
    }
    let (Some(config), hash) = (CONFIG.get(0).copied(), flow_hash(key)) else {
        return Decision::Pass;
    };
    let slot = frontend
        .table_offset
        .wrapping_add(hash % frontend.table_size);
    let Some(&id) = TABLES.get(slot) else {
        return Decision::Pass;
    };
    // Address zero: an ID just retired, met by a packet that read the old table.
    let Some(backend) = BACKENDS.get(id).copied().filter(|b| b.addr != 0) else {
        return Decision::Pass;
    };
    let reply = Rewrite {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        ifindex: arrival.ifindex,
        service: frontend.service,
        dmac: arrival.src_mac,
        smac: arrival.dst_mac,
        port_slot: frontend.port_slot,
    };
    let mut rewrite = Rewrite {
        saddr: key.saddr,
        daddr: backend.addr,
        sport: key.sport,
        dport: frontend.target_port,
        ifindex: config.ingress_ifindex,
        service: frontend.service,
        dmac: backend.mac,
        smac: config.ingress_mac,
        port_slot: frontend.port_slot,
    };
    if frontend.flags & FLAG_CLIENT_IP != 0 {
        let _ = REPLIES_NEW.insert(rewrite.back_key(key.proto), reply, u64::from(BPF_ANY));
    } else {
        rewrite.saddr = config.ingress_addr;
        // A free port first; only then one a stale handshake holds.
        let claimed = 'claim: {
            for take_over in [false, true] {
                for probe in 0..NAT_PORT_PROBES {
                    rewrite.sport = nat_port(hash, probe);
                    let back = rewrite.back_key(key.proto);
                    match flow::claim(&back, &reply, now, timeouts, take_over) {
                        Claim::Mine => break 'claim true,
                        Claim::TakenOver => {
                            if let Some(s) = stats(frontend.service) {
                                s.taken_over += 1;
                            }
                            break 'claim true;
                        }
                        Claim::Held => {}
                    }
                }
            }
            false
        };
        if !claimed {
            if let Some(p) = port_stats(frontend.port_slot) {
                p.dropped += 1;
            }
            return Decision::Drop(frontend.service);
        }
    }
    // Built in this CPU's scratch slot (a connection is too large for the BPF stack twice over).
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Decision::Pass;
    };
    // SAFETY: this CPU's own slot; nothing else uses it while this program runs.
    let conn = unsafe { &mut *scratch };
    conn.rewrite = rewrite;
    conn.backend = id;
    conn.generation = backend.generation;
    conn.service_generation = SERVICES.get(frontend.service).copied().unwrap_or_default();
    conn.config_epoch = config.epoch;
    conn.tunnel = tunnel_to(arrival, &config, backend.vtep, hash).unwrap_or_default();
    conn.egress = egress::egress(&conn.rewrite, &conn.tunnel);
    conn.state = if tcp.is_some() {
        state::TCP_SYN_SENT
    } else {
        state::UDP_NEW
    };
    conn.fins = 0;
    conn.pad = [0; 2];
    conn.isn = tcp.map_or(0, |t| t.seq);
    conn.born = now;
    conn.expires = now;
    flow::refresh(conn, now, timeouts);
    // By reference: a copy would take the BPF stack's room.
    let built: &Conn = conn;
    let _ = CONNS_NEW.insert(key, built, u64::from(BPF_ANY));
    if let Some(s) = stats(frontend.service) {
        s.connections += 1;
    }
    if let Some(p) = port_stats(frontend.port_slot) {
        p.connections += 1;
    }
    Decision::Balanced(scratch)
}

/// A TC view of an IPv4 TCP/UDP packet: its flow and where its L4 checksum is.
pub(crate) struct TcFlow {
    pub(crate) key: FlowKey,
    pub(crate) l4: usize,
    pub(crate) check: usize,
}

/// The TCP header fields the flows follow, and the acknowledgement number (host order), of a
/// TC packet; `None` when it is not TCP or they are not there.
#[inline(always)]
pub(crate) fn tc_tcp(ctx: &TcContext, flow: &TcFlow) -> Option<(Tcp, u32)> {
    if flow.key.proto != IPPROTO_TCP {
        return None;
    }
    let tcp = Tcp {
        flags: ctx.load::<u8>(flow.l4 + 13).ok()?,
        seq: u32::from_be(ctx.load::<u32>(flow.l4 + 4).ok()?),
    };
    Some((tcp, u32::from_be(ctx.load::<u32>(flow.l4 + 8).ok()?)))
}

#[inline(always)]
pub(crate) fn tc_flow(ctx: &TcContext) -> Option<TcFlow> {
    if ctx.load::<u16>(12).ok()? != ETH_P_IP_RAW {
        return None;
    }
    let version_ihl = ctx.load::<u8>(ETH_HLEN).ok()?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?);
    if version_ihl >> 4 != 4 || header_len < IPV4_HLEN || frag & 0x3fff != 0 {
        return None;
    }
    let proto = ctx.load::<u8>(ETH_HLEN + 9).ok()?;
    let l4 = ETH_HLEN + header_len;
    let check = match proto {
        IPPROTO_TCP => l4 + 16,
        IPPROTO_UDP => l4 + 6,
        _ => return None,
    };
    // The whole checksum field must be there (the TCP header is at least that long).
    ctx.load::<u16>(check).ok()?;
    Some(TcFlow {
        key: FlowKey {
            saddr: ctx.load::<u32>(IP_SADDR).ok()?,
            daddr: ctx.load::<u32>(IP_DADDR).ok()?,
            sport: ctx.load::<u16>(l4).ok()?,
            dport: ctx.load::<u16>(l4 + 2).ok()?,
            proto,
            pad: [0; 3],
        },
        l4,
        check,
    })
}

/// What a backend's packet is to the flow it claims to answer.
enum Answer {
    /// Its flow's: translate it back.
    Deliver(Rewrite),
    /// No flow (or one that expired): the node's stack has it (a translated port: the stack
    /// resets the backend's stale connection).
    Stack,
    /// An earlier flow's, on a port another flow now holds, in client-IP mode: dropped (the
    /// stack would route it to the client).
    Drop,
}

/// The flow a backend's packet answers, its state moved by the packet.
#[inline(always)]
fn answer(ctx: &TcContext, flow: &TcFlow) -> Answer {
    let now = flow::now();
    let timeouts = flow::timeouts();
    let tcp = tc_tcp(ctx, flow);
    let proto = flow.key.proto;
    // SAFETY: copied out at once.
    if let Some(rw) = unsafe { REPLIES.get(flow.key) }.copied() {
        let client = rw.back_key(proto);
        let Some(conn) = CONNS.get_ptr_mut(client) else {
            let _ = REPLIES.remove(flow.key);
            return Answer::Stack;
        };
        // SAFETY: a map value changed in place (see `known_flow`).
        let conn = unsafe { &mut *conn };
        if expired(conn, now) {
            flow::forget(&client, conn);
            return Answer::Stack;
        }
        if let Some((tcp, _)) = tcp {
            flow::tcp_step(conn, tcp.flags, false);
        }
        flow::refresh(conn, now, timeouts);
        return Answer::Deliver(rw);
    }
    // SAFETY: copied out at once.
    let Some(rw) = (unsafe { REPLIES_NEW.get(flow.key) }).copied() else {
        return Answer::Stack;
    };
    let client = rw.back_key(proto);
    let Some(conn) = CONNS_NEW.get_ptr_mut(client) else {
        let _ = REPLIES_NEW.remove(flow.key);
        return Answer::Stack;
    };
    // SAFETY: as above.
    let conn = unsafe { &mut *conn };
    if expired(conn, now) {
        flow::forget_new(&client, conn);
        return Answer::Stack;
    }
    match tcp {
        Some((Tcp { flags, .. }, ack)) => {
            let handshake = conn.state == state::TCP_SYN_SENT;
            let syn_ack = flags & (SYN | ACK) == (SYN | ACK);
            // While the handshake runs, only the SYN-ACK (or the reset: the backend refuses) of
            // this very handshake; and a SYN-ACK in any later state must acknowledge this
            // flow's SYN too (the backend retransmitting the SYN-ACK of the port's earlier
            // holder, after this flow's own SYN-ACK moved it on). Anything else is the earlier
            // holder's of this port (or of this client's tuple).
            if handshake || syn_ack {
                let answers_syn = syn_ack || flags & (RST | ACK) == (RST | ACK);
                if !answers_syn || ack != conn.isn.wrapping_add(1) {
                    if let Some(s) = stats(rw.service) {
                        s.stale += 1;
                    }
                    // Client-IP mode (the client's own address on the backend side): the stack
                    // would route it to the client.
                    return if rw.daddr == conn.rewrite.saddr {
                        Answer::Drop
                    } else {
                        Answer::Stack
                    };
                }
                if handshake && flags & RST == 0 {
                    conn.state = state::TCP_SYN_RECV;
                }
            }
            flow::tcp_step(conn, flags, false);
        }
        None if conn.state == state::UDP_NEW => conn.state = state::UDP_REPLIED,
        None => {}
    }
    flow::refresh(conn, now, timeouts);
    Answer::Deliver(rw)
}

/// TC entry on the node's ingress interface: turns backends' replies into the node's replies.
#[inline(always)]
pub(crate) fn reply(ctx: &TcContext) -> i32 {
    let Some(flow) = tc_flow(ctx) else {
        return TC_OK;
    };
    let rw = match answer(ctx, &flow) {
        Answer::Deliver(rw) => rw,
        Answer::Stack => return TC_OK,
        Answer::Drop => return TC_SHOT,
    };
    if rewrite_tc(ctx, &flow, &rw).is_none() {
        return TC_SHOT;
    }
    if let Some(s) = stats(rw.service) {
        s.reply_packets += 1;
        s.reply_bytes += u64::from(ctx.len());
    }
    if let Some(p) = port_stats(rw.port_slot) {
        p.reply_packets += 1;
        p.reply_bytes += u64::from(ctx.len());
    }
    // SAFETY: a plain helper call; it only records where the packet goes.
    unsafe { bpf_redirect(rw.ifindex, 0) as i32 }
}

/// Rewrites addresses, ports and MACs of an skb, checksums included (the helpers also handle
/// checksums the stack left for offload).
#[inline(always)]
pub(crate) fn rewrite_tc(ctx: &TcContext, flow: &TcFlow, rw: &Rewrite) -> Option<()> {
    let k = &flow.key;
    let mangled = if k.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled;
    for (offset, old, new) in [(IP_SADDR, k.saddr, rw.saddr), (IP_DADDR, k.daddr, rw.daddr)] {
        ctx.l4_csum_replace(flow.check, u64::from(old), u64::from(new), pseudo | 4)
            .ok()?;
        ctx.l3_csum_replace(IP_CHECK, u64::from(old), u64::from(new), 4)
            .ok()?;
        ctx.store(offset, &new, 0).ok()?;
    }
    for (offset, old, new) in [
        (flow.l4, k.sport, rw.sport),
        (flow.l4 + 2, k.dport, rw.dport),
    ] {
        ctx.l4_csum_replace(flow.check, u64::from(old), u64::from(new), mangled | 2)
            .ok()?;
        ctx.store(offset, &new, 0).ok()?;
    }
    ctx.store(0, &rw.dmac, 0).ok()?;
    ctx.store(6, &rw.smac, 0).ok()?;
    Some(())
}

#[inline(always)]
fn from_outside(config: &Config, addr: u32) -> bool {
    addr & config.ingress_mask != config.ingress_net
}

/// TC entry on the ingress network's VXLAN device and the node's own port (client-IP mode,
/// backend side): remembers through which entry node each outside client's flow came.
#[inline(always)]
pub(crate) fn learn(ctx: &TcContext) -> i32 {
    if let (Some(flow), Some(config)) = (tc_flow(ctx), CONFIG.get(0))
        && from_outside(config, flow.key.saddr)
    {
        let learned = Learned {
            // SAFETY: reading a field of the context the kernel handed in.
            ifindex: unsafe { (*ctx.skb.skb).ifindex },
            mac: ctx.load::<[u8; 6]>(6).unwrap_or_default(),
            pad: [0; 2],
        };
        let key = flow.key.reversed();
        // SAFETY: compared at once.
        if unsafe { LEARNED.get(key) } != Some(&learned) {
            let _ = LEARNED.insert(key, learned, 0);
        }
    }
    TC_OK
}

/// TC entry on the ingress network's bridge (client-IP mode, backend side): a backend's reply to
/// an outside client reaches the bridge (its gateway); send it to the entry node it came from.
#[inline(always)]
pub(crate) fn steer(ctx: &TcContext) -> i32 {
    let (Some(flow), Some(config)) = (tc_flow(ctx), CONFIG.get(0)) else {
        return TC_OK;
    };
    if !from_outside(config, flow.key.daddr) {
        return TC_OK;
    }
    // SAFETY: copied out at once.
    let Some(learned) = (unsafe { LEARNED.get(flow.key) }).copied() else {
        return TC_OK;
    };
    if ctx.store(0, &learned.mac, 0).is_err() {
        return TC_OK;
    }
    // SAFETY: a plain helper call.
    unsafe { bpf_redirect(learned.ifindex, 0) as i32 }
}
