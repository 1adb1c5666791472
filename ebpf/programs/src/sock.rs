//! Node-local clients of the routing mesh: a process on the node itself that connects to a
//! published port (`curl localhost:8080`, or one of the node's addresses) never passes the
//! public interfaces' XDP and TC hooks, so the translation happens at the socket instead, once
//! per `connect` (cgroup `connect4`), as Cilium's socket-level load balancing does: the socket is
//! connected to a backend's address on the ingress network, and its packets carry no NAT at
//! all. UDP datagrams sent without `connect` are translated one by one (`sendmsg4`), and their
//! replies get the published address back (`recvmsg4`); `getpeername` shows what the client
//! connected to (`getpeername4`).
//!
//! The programs are attached to the cgroup v2 root, so they see every socket of the machine;
//! they act for sockets of the node's own network namespace ([`SockConfig`]) and, for service
//! VIPs only, of its tasks' namespaces (`MESH_TASK_NETNS`): a connection from a task to `VIP:port`
//! is sent to one of the service's running tasks, the same port, by the VIP's Maglev table.
//! Other nodes of a lab and everything else on the machine are left alone.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuHashMap},
    programs::SockAddrContext,
};
use shoal_abi::{
    mesh::{
        FrontendKey, MAX_SOCK_ORIGINS, MAX_TASK_NETNS, MAX_VIPS, SockConfig, SockKey, SockOrigin,
        VIP_TABLE_CAPACITY, VipFrontend, VipStats,
    },
    wire::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::mesh;

/// `AF_INET`.
const AF_INET: u32 = 2;

#[map(name = "MESH_SOCK_CONFIG")]
static SOCK_CONFIG: Array<SockConfig> = Array::with_max_entries(1, 0);

#[map(name = "MESH_SOCK_ORIGINS")]
static SOCK_ORIGINS: LruHashMap<SockKey, SockOrigin> =
    LruHashMap::with_max_entries(MAX_SOCK_ORIGINS, 0);

#[map(name = "MESH_VIP_FRONTENDS")]
static VIP_FRONTENDS: HashMap<u32, VipFrontend> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map(name = "MESH_VIP_STATS")]
static VIP_STATS: PerCpuHashMap<u32, VipStats> = PerCpuHashMap::with_max_entries(MAX_VIPS, 0);

#[map(name = "MESH_VIP_TABLES")]
static VIP_TABLES: Array<u32> = Array::with_max_entries(VIP_TABLE_CAPACITY, 0);

#[map(name = "MESH_TASK_NETNS")]
static TASK_NETNS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_TASK_NETNS, 0);

/// Whose socket it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The node's own namespace: published ports are translated.
    Node,
    /// One of the node's tasks: service VIPs are translated.
    Task,
    /// Someone else's (another node of a lab, anything else on the machine).
    Other,
}

#[inline(always)]
fn owner(ctx: &SockAddrContext) -> Owner {
    let Some(config) = SOCK_CONFIG.get(0) else {
        return Owner::Other;
    };
    if config.netns_cookie == 0 {
        return Owner::Other;
    }
    // SAFETY: a plain helper call on the context the kernel handed in.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if cookie == config.netns_cookie {
        Owner::Node
    // SAFETY: only the presence is looked at.
    } else if unsafe { TASK_NETNS.get(cookie) }.is_some() {
        Owner::Task
    } else {
        Owner::Other
    }
}

/// A backend of the VIP `vip` for a connection hashed to `hash`.
#[inline(always)]
fn pick_vip(vip: u32, hash: u32) -> Option<u32> {
    // SAFETY: copied out at once; the value is plain data.
    let frontend = unsafe { VIP_FRONTENDS.get(vip) }.copied()?;
    if frontend.table_size == 0 {
        count_vip(vip, false);
        return None;
    }
    let slot = frontend
        .table_offset
        .wrapping_add(hash % frontend.table_size);
    let picked = VIP_TABLES.get(slot).copied().filter(|a| *a != 0);
    count_vip(vip, picked.is_some());
    picked
}

/// Counts one translation at `vip` (`sent`: to a task; else left to the VIP, no task running).
/// Statistics only: an increment lost to a preemption between its load and store is accepted.
#[inline(always)]
fn count_vip(vip: u32, sent: bool) {
    match VIP_STATS.get_ptr_mut(vip) {
        // SAFETY: this CPU's own value, from the map lookup (the program cannot migrate).
        Some(s) => unsafe {
            if sent {
                (*s).connections += 1;
            } else {
                (*s).no_backend += 1;
            }
        },
        None => {
            let first = VipStats {
                connections: u64::from(sent),
                no_backend: u64::from(!sent),
            };
            // Full (more VIPs than it holds) or raced by another CPU: this one goes uncounted.
            let _ = VIP_STATS.insert(vip, first, u64::from(BPF_NOEXIST));
        }
    }
}

/// Sends a connection or datagram for a published port on the node, or (from a task) for a
/// service VIP, to a backend.
#[inline(always)]
pub(crate) fn translate(ctx: &SockAddrContext) {
    let owner = owner(ctx);
    if owner == Owner::Other {
        return;
    }
    // SAFETY: the kernel hands in a valid context for the program's lifetime; the verifier
    // checks each field access (and allows writing the user address and port).
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_family != AF_INET {
        return;
    }
    let proto = match sa.protocol {
        p if p == u32::from(IPPROTO_TCP) => IPPROTO_TCP,
        p if p == u32::from(IPPROTO_UDP) => IPPROTO_UDP,
        _ => return,
    };
    let (daddr, dport) = (sa.user_ip4, sa.user_port as u16);
    // SAFETY: a plain helper call.
    let hash = unsafe { bpf_get_prandom_u32() };
    let (addr, port) = if owner == Owner::Task {
        // A VIP: the same port on a backend.
        let Some(addr) = pick_vip(daddr, hash) else {
            return;
        };
        (addr, dport)
    } else {
        // 127.0.0.0/8 (the first octet is the lowest byte of the network-order value).
        if daddr & 0xff != 127 && !mesh::is_local(daddr) {
            return;
        }
        let key = FrontendKey {
            port: dport,
            proto,
            pad: 0,
        };
        let Some(picked) = mesh::pick(key, hash) else {
            return;
        };
        picked
    };
    sa.user_ip4 = addr;
    sa.user_port = u32::from(port);
    // SAFETY: a plain helper call on the context the kernel handed in.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let origin = SockOrigin {
        addr: daddr,
        port: dport,
        pad: 0,
    };
    let key = SockKey {
        cookie,
        addr,
        port,
        pad: 0,
    };
    let _ = SOCK_ORIGINS.insert(key, origin, 0);
}

/// Shows the published address again where the socket's peer is a backend it was sent to.
#[inline(always)]
pub(crate) fn restore(ctx: &SockAddrContext) {
    if owner(ctx) == Owner::Other {
        return;
    }
    // SAFETY: as in `translate`.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_family != AF_INET {
        return;
    }
    // SAFETY: a plain helper call on the context the kernel handed in.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        pad: 0,
    };
    // SAFETY: copied out at once; the value is plain data.
    if let Some(origin) = unsafe { SOCK_ORIGINS.get(key) }.copied() {
        sa.user_ip4 = origin.addr;
        sa.user_port = u32::from(origin.port);
    }
}
