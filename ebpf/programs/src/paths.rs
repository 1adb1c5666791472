//! Which way a balanced packet leaves the entry node: a native XDP redirect where that is known to
//! work, the TC entry everywhere else.
//!
//! ```text
//!  public iface ── XDP shoal_xdp_mesh ── balanced ──┬─ xdp_can_send ─> XDP_REDIRECT (native)
//!                                                   └─ otherwise ────> XDP_PASS, untouched
//!              └─ TC shoal_tc_mesh_entry ── balanced ─> rewrite with the skb's checksum helpers,
//!                                                       encapsulate (adjust_room), bpf_redirect
//! ```
//!
//! A native redirect goes wrong after the program has returned, where nothing counts it, in two
//! cases, both common on veth links (nodes run as containers, test rigs):
//! - **The device it is sent to takes no XDP frames.** A veth takes them only while its peer
//!   runs an XDP program or has GRO on; otherwise the kernel drops the frame. Userspace asks the
//!   kernel which devices take them (netdev `xdp-features`: `ndo-xmit`) and lists them in
//!   `MESH_EGRESS`; a connection records whether its egress device is one ([`egress`]).
//! - **The checksum was left to offload** (the kernel's `CHECKSUM_PARTIAL`: a local sender's
//!   packet on a veth, or a GRO-merged one). The field then holds only the pseudo-header sum, to
//!   be finished by whoever transmits it. An XDP frame carries no such mark: it leaves with that
//!   partial sum as its checksum and the receiver drops it. XDP cannot see the mark, but it can
//!   see the field ([`csum::pseudo_header`]).
//!
//! Such packets are passed untouched to the TC entry on the same interface. TC works on the
//! skb: `bpf_l3/l4_csum_replace` keep a partial checksum partial (and correct), `adjust_room`
//! marks the encapsulation so the inner checksum is finished where it must be, and `bpf_redirect`
//! transmits an skb, which every device takes. Interfaces without native XDP run the TC entry
//! alone.

use aya_ebpf::{
    bindings::{
        BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, bpf_adj_room_mode,
    },
    helpers::generated::bpf_redirect,
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use shoal_abi::{
    mesh::{Conn, EGRESS_XDP, MAX_EGRESS, Rewrite, TUNNEL_OVERHEAD, Tunnel, csum, tunnel_headers},
    wire::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN},
};

use crate::mesh::{
    Arrival, TC_OK, TC_SHOT, TcFlow, Verdict, connection, count_refused, frontend_of, port_stats,
    rewrite_tc, stats, tc_flow, tc_tcp,
};
use crate::packet::Header;

#[map(name = "MESH_EGRESS")]
static EGRESS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_EGRESS, 0);

/// [`Conn::egress`] for a new connection: whether the device its packets leave by (the
/// tunnel's, or the ingress network's port) takes native XDP redirects.
#[inline(always)]
pub(crate) fn egress(rewrite: &Rewrite, tunnel: &Tunnel) -> u32 {
    let out = if tunnel.daddr != 0 {
        tunnel.ifindex
    } else {
        rewrite.ifindex
    };
    // SAFETY: only the presence is looked at.
    if unsafe { EGRESS.get(out) }.is_some() {
        EGRESS_XDP
    } else {
        0
    }
}

/// Whether XDP may redirect this packet of `conn` natively; if not, counts why (the packet is
/// then passed, untouched, to the TC entry). `check` is the L4 checksum field as it sits.
#[inline(always)]
pub(crate) fn xdp_can_send(conn: &Conn, ip: &Header<IPV4_HLEN>, check: u16, proto: u8) -> bool {
    if conn.egress & EGRESS_XDP == 0 {
        if let Some(s) = stats(conn.rewrite.service) {
            s.egress_handoffs += 1;
        }
        return false;
    }
    // A UDP checksum of zero means none: there is nothing to finish.
    if proto == IPPROTO_UDP && check == 0 {
        return true;
    }
    let header_len = u16::from(ip.u8::<0>() & 0x0f) * 4;
    let l4_len = ip.be16::<2>().wrapping_sub(header_len);
    if check == csum::pseudo_header(ip.raw32::<12>(), ip.raw32::<16>(), proto, l4_len) {
        if let Some(s) = stats(conn.rewrite.service) {
            s.checksum_handoffs += 1;
        }
        return false;
    }
    true
}

/// TC entry on the node's public interfaces: balances what XDP passed on, and everything where
/// no XDP program runs. The same flows, connections and counters as XDP's; packets that are not
/// for the mesh (and published ports without backends, which the stack refuses) go on.
#[inline(always)]
pub(crate) fn entry(ctx: &TcContext) -> i32 {
    // SAFETY: reading fields of the context the kernel handed in.
    let (vlan, ifindex) = unsafe { ((*ctx.skb.skb).vlan_present, (*ctx.skb.skb).ifindex) };
    // A tag the device took off is still a tagged frame: XDP passes those, so does TC.
    if vlan != 0 {
        return TC_OK;
    }
    let Some(flow) = tc_flow(ctx) else {
        return TC_OK;
    };
    if flow.key.proto == IPPROTO_TCP && !tcp_header_whole(ctx, &flow) {
        return TC_OK;
    }
    let (Ok(dst_mac), Ok(src_mac)) = (ctx.load::<[u8; 6]>(0), ctx.load::<[u8; 6]>(6)) else {
        return TC_OK;
    };
    let arrival = Arrival {
        ifindex,
        src_mac,
        dst_mac,
        ctx: ctx.skb.skb.cast(),
    };
    let tcp = match tc_tcp(ctx, &flow) {
        Some((tcp, _)) => Some(tcp),
        None if flow.key.proto == IPPROTO_TCP => return TC_OK,
        None => None,
    };
    let conn = match connection(&arrival, &flow.key, tcp) {
        Ok(conn) => conn,
        Err(Verdict::Pass) => return TC_OK,
        Err(Verdict::Refused(service, slot)) => {
            count_refused(service, slot);
            return TC_OK;
        }
        Err(Verdict::Untracked) => {
            if let Some(s) = frontend_of(&flow.key).and_then(|f| stats(f.service)) {
                s.untracked += 1;
            }
            return TC_OK;
        }
        Err(Verdict::Drop) => return TC_SHOT,
    };
    // SAFETY: a map value, read for the length of this program run.
    let conn = unsafe { &*conn };
    let len = ctx.len();
    if rewrite_tc(ctx, &flow, &conn.rewrite).is_none() {
        return TC_SHOT;
    }
    let rw = &conn.rewrite;
    if let Some(s) = stats(rw.service) {
        s.packets += 1;
        s.bytes += u64::from(len);
        s.tc_packets += 1;
    }
    if let Some(p) = port_stats(rw.port_slot) {
        p.packets += 1;
        p.bytes += u64::from(len);
    }
    let t = &conn.tunnel;
    if t.daddr == 0 {
        // SAFETY: a plain helper call; it only records where the packet goes.
        return unsafe { bpf_redirect(rw.ifindex, 0) as i32 };
    }
    if encapsulate(ctx, t, rw, len).is_none() {
        return TC_SHOT;
    }
    if let Some(s) = stats(rw.service) {
        s.tunneled += 1;
    }
    if let Some(p) = port_stats(rw.port_slot) {
        p.tunneled += 1;
    }
    // SAFETY: as above.
    unsafe { bpf_redirect(t.ifindex, 0) as i32 }
}

/// A TCP header with a sane data offset, options included, as XDP requires.
#[inline(always)]
fn tcp_header_whole(ctx: &TcContext, flow: &TcFlow) -> bool {
    let Ok(offset) = ctx.load::<u8>(flow.l4 + 12) else {
        return false;
    };
    let header_len = usize::from(offset >> 4) * 4;
    header_len >= 20 && flow.l4 + header_len <= ctx.len() as usize
}

/// Wraps the (rewritten) frame of `inner_len` bytes in VXLAN to `t`'s node, as XDP's
/// encapsulation does, on an skb: the room goes in after the Ethernet header, which becomes the
/// outer one, and the kernel learns where the inner headers are (a checksum left to offload is
/// then finished on the inner packet).
#[inline(always)]
fn encapsulate(ctx: &TcContext, t: &Tunnel, rw: &Rewrite, inner_len: u32) -> Option<()> {
    const FLAGS: u64 = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
        | ((ETH_HLEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);
    // Outer IPv4, UDP and VXLAN, and the inner Ethernet header.
    const ROOM: usize = TUNNEL_OVERHEAD;
    ctx.adjust_room(ROOM as i32, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, FLAGS)
        .ok()?;
    ctx.store(0, &tunnel_headers(t, inner_len as usize), 0)
        .ok()?;
    let mut inner = [0_u8; ETH_HLEN];
    inner[..6].copy_from_slice(&rw.dmac);
    inner[6..12].copy_from_slice(&rw.smac);
    inner[12..].copy_from_slice(&[0x08, 0x00]);
    ctx.store(TUNNEL_OVERHEAD, &inner, 0).ok()
}
