//! The TC entry on the node's public interfaces: balances what XDP passed on untouched (see
//! [`crate::egress`] for when it does) and everything where no XDP program runs, on the skb:
//! `bpf_l3/l4_csum_replace` keep a partial checksum partial (and correct), `adjust_room` marks
//! the encapsulation so the inner checksum is finished where it must be, and `bpf_redirect`
//! transmits an skb, which every device takes.

use aya_ebpf::{
    bindings::{
        BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, bpf_adj_room_mode,
    },
    helpers::generated::bpf_redirect,
    programs::TcContext,
};
use shoal_abi::{
    mesh::{Rewrite, TUNNEL_OVERHEAD, Tunnel, tunnel_headers},
    wire::{ETH_HLEN, IPPROTO_TCP},
};

use crate::counters::{count_refused, port_stats, stats};
use crate::mesh::{
    Arrival, TC_OK, TC_SHOT, TcFlow, Verdict, connection, frontend_of, rewrite_tc, tc_flow, tc_tcp,
};

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
