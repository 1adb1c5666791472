//! Which way a balanced packet leaves the entry node: a native XDP redirect where that is known to
//! work, the TC entry ([`crate::paths`]) everywhere else.
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

use aya_ebpf::{macros::map, maps::HashMap};
use shoal_abi::{
    mesh::{Conn, EGRESS_XDP, MAX_EGRESS, Rewrite, Tunnel, csum},
    wire::{IPPROTO_UDP, IPV4_HLEN},
};

use crate::counters::stats;
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
