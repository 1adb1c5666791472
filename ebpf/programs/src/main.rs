//! Shoal's eBPF programs: one object file (`shoal`), built for `bpfel-unknown-none` by
//! `cargo xtask build-ebpf` or, automatically, by `dataplane/build.rs`, and embedded in `dataplane`.
//!
//! ```text
//!   packet ──> XDP (shoal_xdp_parse) ──> parse.rs: Ethernet ─> [802.1Q/802.1ad]{0,2}
//!                                                  ─> IPv4 (+options) | IPv6 (+ext headers)
//!                                                  ─> TCP | UDP
//!                 │                       counts what it found in PARSE_STATS (per CPU)
//!                 └──> XDP_PASS
//!
//!   packet ──> XDP (shoal_xdp_mesh) ──> mesh.rs: published port? Maglev + connection table,
//!                                      rewrite, redirect into the ingress network | XDP_PASS
//!          └─> TC (shoal_tc_mesh_entry) ─> paths.rs: the same, on the skb, for what XDP
//!                                      cannot redirect correctly (checksums, egress devices)
//!   reply  ──> TC (shoal_tc_mesh_reply) ──> rewrite back, redirect out of the public interface
//!   connect/sendmsg on the node ──> cgroup sock_addr (shoal_sock_*) ──> sock.rs: to a backend
//!
//!   benchmarks only: shoal_xdp_bench_tx (live-frames generator) ──> XDP_TX
//!                    shoal_xdp_bench_sink ──> VXLAN counted in BENCH_SINK, XDP_DROP | XDP_PASS
//! ```
//!
//! Layout, Katran-style: [`packet`] is the only place that touches packet memory (every access is
//! bounds-checked, with offsets proven at compile time where they are constant); [`parse`] turns
//! headers into a [`parse::Parsed`]; this file holds the maps and the program entry points. Map
//! layouts and names come from `shoal-abi`, shared with the userspace loader.
//!
//! The programs must never panic: a reachable panic is an infinite loop, which the verifier
//! rejects, so a successful load proves the panic paths are dead.
//!
//! On the host this crate is only type-checked (`cargo clippy --workspace`), where feature
//! unification can link `std` through `shoal-abi/user`: it is `no_std`/`no_main` for BPF only.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod counters;
mod egress;
mod flow;
mod mesh;
mod packet;
mod parse;
mod paths;
mod sock;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{cgroup_sock_addr, classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use shoal_abi::bench::TxFrame;
use shoal_abi::parse::{Counter, ParseStats};

/// The parser's counters, one [`ParseStats`] per CPU at index 0 (`shoal_abi::parse::STATS_MAP`).
#[map(name = "PARSE_STATS")]
static PARSE_STATS: PerCpuArray<ParseStats> = PerCpuArray::with_max_entries(1, 0);

/// Parses every packet, counts what it found and lets it through.
#[xdp]
pub fn shoal_xdp_parse(ctx: XdpContext) -> u32 {
    let parsed = parse::parse(&packet::Packet::new(&ctx));
    if let Some(stats) = PARSE_STATS.get_ptr_mut(0) {
        // SAFETY: the pointer comes from the map lookup and is this CPU's own value: nothing else
        // writes it while this program runs (XDP runs with preemption disabled).
        let stats = unsafe { &mut *stats };
        bump(stats, Counter::Packets);
        for (present, counter) in [
            (parsed.vlan, Counter::Vlan),
            (parsed.ipv4, Counter::Ipv4),
            (parsed.ipv4_options, Counter::Ipv4Options),
            (parsed.ipv6, Counter::Ipv6),
            (parsed.ipv6_ext, Counter::Ipv6Ext),
        ] {
            if present {
                bump(stats, counter);
            }
        }
        bump(stats, parsed.outcome);
    }
    xdp_action::XDP_PASS
}

/// Does nothing but pass the packet: the floor the benchmarks compare with.
#[xdp]
pub fn shoal_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The generator's template (`shoal_abi::bench`).
#[map(name = "BENCH_TX_FRAME")]
static BENCH_TX_FRAME: Array<TxFrame> = Array::with_max_entries(1, 0);

/// The generator's sequence number, per CPU.
#[map(name = "BENCH_TX_SEQ")]
static BENCH_TX_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Packets [`shoal_xdp_bench_sink`] counted, per CPU.
#[map(name = "BENCH_SINK")]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The benchmarks' generator (`shoal_abi::bench`): the template's frame, next flow's source
/// port, back out of the interface it is run on.
#[xdp]
pub fn shoal_xdp_bench_tx(ctx: XdpContext) -> u32 {
    use shoal_abi::bench::{FRAME_LEN, SPORT_OFFSET};
    let packet = packet::Packet::new(&ctx);
    let (Some(frame), Some(seq), Some(h)) = (
        BENCH_TX_FRAME.get(0),
        BENCH_TX_SEQ.get_ptr_mut(0),
        packet.header::<FRAME_LEN>(0),
    ) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: this CPU's own value, from the map lookup; XDP runs with preemption disabled.
    let seq = unsafe {
        let this = *seq;
        *seq = this.wrapping_add(1);
        this
    };
    let base = u16::from_be_bytes([frame.bytes[SPORT_OFFSET], frame.bytes[SPORT_OFFSET + 1]]);
    let flow = (seq % u32::from(frame.flows.max(1))) as u16;
    h.write::<0, [u8; FRAME_LEN]>(frame.bytes);
    h.write::<SPORT_OFFSET, [u8; 2]>(base.wrapping_add(flow).to_be_bytes());
    xdp_action::XDP_TX
}

/// The benchmarks' sink (`shoal_abi::bench`): VXLAN datagrams are counted and dropped,
/// everything else passes.
#[xdp]
pub fn shoal_xdp_bench_sink(ctx: XdpContext) -> u32 {
    use shoal_abi::wire::{ETH_HLEN, IPPROTO_UDP, IPV4_HLEN, UDP_HLEN};
    let packet = packet::Packet::new(&ctx);
    let Some(h) = packet.header::<{ ETH_HLEN + IPV4_HLEN + UDP_HLEN }>(0) else {
        return xdp_action::XDP_PASS;
    };
    if h.be16::<12>() != 0x0800
        || h.u8::<{ ETH_HLEN }>() != 0x45
        || h.u8::<{ ETH_HLEN + 9 }>() != IPPROTO_UDP
        || h.be16::<{ ETH_HLEN + IPV4_HLEN + 2 }>() != 4789
    {
        return xdp_action::XDP_PASS;
    }
    if let Some(count) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: this CPU's own value, from the map lookup; XDP runs with preemption disabled.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}

/// Node-local clients: `connect` to a published port on the node goes to a backend (see
/// [`sock`]). Always lets the call go on (1).
#[cgroup_sock_addr(connect4)]
pub fn shoal_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx);
    1
}

/// Node-local clients: a UDP datagram sent to a published port goes to a backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn shoal_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx);
    1
}

/// Node-local clients: a reply from a backend shows the published address.
#[cgroup_sock_addr(recvmsg4)]
pub fn shoal_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::restore(&ctx);
    1
}

/// Node-local clients: `getpeername` shows the published address.
#[cgroup_sock_addr(getpeername4)]
pub fn shoal_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::restore(&ctx);
    1
}

/// The routing mesh's entry, on the node's public interfaces (see [`mesh`]).
#[xdp]
pub fn shoal_xdp_mesh(ctx: XdpContext) -> u32 {
    mesh::forward(&ctx)
}

/// The routing mesh's entry as TC, behind XDP on the same interfaces (see [`paths`]).
#[classifier]
pub fn shoal_tc_mesh_entry(ctx: TcContext) -> i32 {
    paths::entry(&ctx)
}

/// The routing mesh's way back, on the node's ingress interface.
#[classifier]
pub fn shoal_tc_mesh_reply(ctx: TcContext) -> i32 {
    mesh::reply(&ctx)
}

/// Client-IP mode: remembers which entry node a client flow came through.
#[classifier]
pub fn shoal_tc_mesh_learn(ctx: TcContext) -> i32 {
    mesh::learn(&ctx)
}

/// Client-IP mode: sends a backend's reply back to its flow's entry node.
#[classifier]
pub fn shoal_tc_mesh_steer(ctx: TcContext) -> i32 {
    mesh::steer(&ctx)
}

#[inline(always)]
fn bump(stats: &mut ParseStats, counter: Counter) {
    if let Some(count) = stats.counts.get_mut(counter.index()) {
        *count += 1;
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Unreachable in a program the verifier accepted (see the crate docs).
    loop {
        core::hint::spin_loop();
    }
}

/// The host build exists only to be type-checked; the object is built for `bpfel-unknown-none`.
#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("shoal-ebpf is a BPF object: build it with `cargo xtask build-ebpf`");
    std::process::exit(2);
}
