//! The ABI between Shoal's eBPF programs (`ebpf/programs`, built for `bpfel-unknown-none`) and the
//! userspace data plane (`dataplane`): program and map names, map key/value layouts and counter
//! indices. One definition of each, used by both sides.
//!
//! ```text
//!   ebpf/programs (no_std, bpfel)  ──┐
//!                                    ├── shoal-abi  (this crate: #![no_std], repr(C) types, consts)
//!   dataplane (std, aya loader)    ──┘      └── feature `user`: aya::Pod impls for the loader
//! ```
//!
//! Everything here is `#![no_std]` and free of logic that depends on the target: the kernel side and
//! the user side compile the very same definitions, so a layout change cannot drift between them.
//! Start with [`parse`], the counters of the packet parser, and [`mesh`], the routing mesh's maps,
//! flow hash and checksum arithmetic.
#![no_std]

/// Names of the programs in the object file, as the loader looks them up.
pub mod programs {
    /// The packet parser with per-CPU counters (XDP). It always returns `XDP_PASS`.
    pub const XDP_PARSE: &str = "shoal_xdp_parse";
    /// A program that does nothing but return `XDP_PASS`: the floor every benchmark compares with.
    pub const XDP_PASS: &str = "shoal_xdp_pass";
    /// The routing mesh's entry (XDP, on the node's public interfaces): published-port packets
    /// are rewritten towards a backend and redirected into the ingress network.
    pub const XDP_MESH: &str = "shoal_xdp_mesh";
    /// The routing mesh's entry as a TC program (TC ingress, on the same interfaces): balances
    /// what XDP cannot redirect correctly (checksums left to offload, egress devices that take
    /// no XDP frames), and everything on interfaces without native XDP.
    pub const TC_MESH_ENTRY: &str = "shoal_tc_mesh_entry";
    /// The routing mesh's way back (TC ingress, on the node's interface in the ingress network):
    /// backends' replies are rewritten to come from the address the client contacted and sent
    /// out of the interface the client's packet came in on.
    pub const TC_MESH_REPLY: &str = "shoal_tc_mesh_reply";
    /// Client-IP mode, backend side (TC ingress on the ingress network's VXLAN device and on the
    /// node's own port): remembers which entry node each client flow came through.
    pub const TC_MESH_LEARN: &str = "shoal_tc_mesh_learn";
    /// Client-IP mode, backend side (TC ingress on the ingress network's bridge): sends a
    /// backend's reply to the entry node the flow came through.
    pub const TC_MESH_STEER: &str = "shoal_tc_mesh_steer";
    /// Benchmark traffic generator (XDP, run with BPF_PROG_TEST_RUN's live-frames mode, never
    /// attached): see [`crate::bench`].
    pub const XDP_BENCH_TX: &str = "shoal_xdp_bench_tx";
    /// Benchmark sink (XDP, attached where a benchmark counts what arrives): see
    /// [`crate::bench`].
    pub const XDP_BENCH_SINK: &str = "shoal_xdp_bench_sink";
    /// Node-local clients (cgroup `connect4`, on the cgroup v2 root, for the node's own network
    /// namespace only): a connection to a published port on the node is sent to a backend.
    pub const SOCK_CONNECT4: &str = "shoal_sock_connect4";
    /// The same for UDP datagrams sent without `connect` (cgroup `sendmsg4`).
    pub const SOCK_SENDMSG4: &str = "shoal_sock_sendmsg4";
    /// Replies to those datagrams come from the published port again (cgroup `recvmsg4`).
    pub const SOCK_RECVMSG4: &str = "shoal_sock_recvmsg4";
    /// `getpeername` shows the published port the client connected to (cgroup `getpeername4`).
    pub const SOCK_GETPEERNAME4: &str = "shoal_sock_getpeername4";
}

/// The benchmarks' packet generator and sink (`cargo xtask bench mesh`, the entry figures).
///
/// The generator runs in BPF_PROG_TEST_RUN's live-frames mode, where the kernel recycles the
/// frames it sends without restoring their bytes (whoever received a frame may have rewritten
/// it). So the program writes the whole frame from [`TX_FRAME_MAP`] each time, with the UDP
/// source port of the next of `flows` flows (per CPU, round robin from the template's port),
/// and sends it back out of the interface it runs on (`XDP_TX`).
///
/// The sink counts VXLAN datagrams (IPv4 without options, UDP destination port 4789) per CPU
/// in [`SINK_MAP`] and drops them; everything else (ARP above all) passes.
pub mod bench {
    /// Bytes of a generated frame: Ethernet, IPv4, UDP and 18 bytes of payload.
    pub const FRAME_LEN: usize = 60;
    /// Offset of the UDP source port in it.
    pub const SPORT_OFFSET: usize = 34;
    /// The generator's template: one [`TxFrame`] at index 0.
    pub const TX_FRAME_MAP: &str = "BENCH_TX_FRAME";
    /// The generator's per-CPU sequence number (a `u32` at index 0).
    pub const TX_SEQ_MAP: &str = "BENCH_TX_SEQ";
    /// The sink's per-CPU packet count (a `u64` at index 0).
    pub const SINK_MAP: &str = "BENCH_SINK";

    /// What the generator sends.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TxFrame {
        /// The frame, with the first flow's source port.
        pub bytes: [u8; FRAME_LEN],
        /// How many source ports (flows) to rotate over, from the template's (0 counts as 1).
        pub flows: u16,
        /// Zero.
        pub pad: u16,
    }

    // SAFETY: `TxFrame` is `repr(C)`, 60 bytes then two `u16`s (no padding), and every bit
    // pattern is a valid value.
    #[cfg(feature = "user")]
    unsafe impl aya::Pod for TxFrame {}
}

/// The packet parser's statistics.
///
/// Every packet the parser sees increments [`Counter::Packets`] and exactly one *outcome*
/// counter ([`Counter::is_outcome`]); it may also increment any of the *feature* counters
/// ([`Counter::is_feature`]) for what it found on the way.
pub mod parse {
    /// Name of the per-CPU array holding one [`ParseStats`] per CPU at index 0. One lookup per
    /// packet, whatever the number of counters it increments.
    pub const STATS_MAP: &str = "PARSE_STATS";

    /// Number of counters in [`ParseStats`].
    pub const COUNTERS: usize = Counter::ALL.len();

    /// The parser's counters on one CPU (the value type of [`STATS_MAP`]).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ParseStats {
        /// Indexed by [`Counter::index`].
        pub counts: [u64; COUNTERS],
    }

    impl ParseStats {
        /// The value of one counter.
        pub const fn get(&self, counter: Counter) -> u64 {
            self.counts[counter.index()]
        }

        /// Adds `other` counter by counter (summing CPUs, or taking a delta's complement).
        pub fn add(&mut self, other: &Self) {
            for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
                *mine = mine.wrapping_add(*theirs);
            }
        }

        /// `self - earlier`, counter by counter.
        pub fn since(&self, earlier: &Self) -> Self {
            let mut delta = *self;
            for (mine, theirs) in delta.counts.iter_mut().zip(earlier.counts.iter()) {
                *mine = mine.wrapping_sub(*theirs);
            }
            delta
        }
    }

    // SAFETY: `ParseStats` is `repr(C)`, made only of `u64`s (no padding), and every bit pattern is
    // a valid value.
    #[cfg(feature = "user")]
    unsafe impl aya::Pod for ParseStats {}

    /// Most 802.1Q/802.1ad tags the parser walks (QinQ); a third tag is not parsed.
    pub const MAX_VLAN_TAGS: usize = 2;

    /// Most IPv6 extension headers the parser walks before it gives up on finding L4.
    pub const MAX_IPV6_EXT_HEADERS: usize = 4;

    /// A counter of [`ParseStats`].
    #[repr(u32)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Counter {
        /// Every packet the program ran on.
        Packets = 0,
        // --- features: any number of these per packet ---
        /// At least one complete 802.1Q / 802.1ad tag.
        Vlan = 1,
        /// A complete IPv4 header (with its options, if any).
        Ipv4 = 2,
        /// An IPv4 header with options (IHL > 5).
        Ipv4Options = 3,
        /// A complete fixed IPv6 header.
        Ipv6 = 4,
        /// At least one complete IPv6 extension header.
        Ipv6Ext = 5,
        // --- outcomes: exactly one of these per packet ---
        /// A complete TCP header (with its options) of an unfragmented packet.
        Tcp = 6,
        /// A complete UDP header of an unfragmented packet.
        Udp = 7,
        /// An IP fragment (IPv4 MF/offset, or an IPv6 fragment header): L4 is not parsed.
        Fragment = 8,
        /// Not IP (ARP, LLDP, a third VLAN tag, ...).
        OtherL3 = 9,
        /// IP, but neither TCP nor UDP (ICMP, SCTP, too many IPv6 extension headers, ...).
        OtherL4 = 10,
        /// The packet ends inside the Ethernet header or a VLAN tag.
        TruncatedL2 = 11,
        /// The packet ends inside the IP header, its options or an IPv6 extension header.
        TruncatedL3 = 12,
        /// The packet ends inside the TCP or UDP header.
        TruncatedL4 = 13,
        /// Headers that cannot be right: IPv4 IHL < 5, an IP version that does not match the
        /// EtherType, a TCP data offset < 5.
        Malformed = 14,
    }

    impl Counter {
        /// Every counter, in index order.
        pub const ALL: [Self; 15] = [
            Self::Packets,
            Self::Vlan,
            Self::Ipv4,
            Self::Ipv4Options,
            Self::Ipv6,
            Self::Ipv6Ext,
            Self::Tcp,
            Self::Udp,
            Self::Fragment,
            Self::OtherL3,
            Self::OtherL4,
            Self::TruncatedL2,
            Self::TruncatedL3,
            Self::TruncatedL4,
            Self::Malformed,
        ];
        /// A feature: zero or more per packet (`Vlan`..=`Ipv6Ext`).
        pub const fn is_feature(self) -> bool {
            self as u32 >= Self::Vlan as u32 && self as u32 <= Self::Ipv6Ext as u32
        }

        /// An outcome: exactly one per packet (`Tcp`..=`Malformed`).
        pub const fn is_outcome(self) -> bool {
            self as u32 >= Self::Tcp as u32
        }

        /// The counter's index in [`ParseStats::counts`].
        pub const fn index(self) -> usize {
            self as usize
        }

        /// A short, stable name for tables and JSON.
        pub const fn name(self) -> &'static str {
            match self {
                Self::Packets => "packets",
                Self::Vlan => "vlan",
                Self::Ipv4 => "ipv4",
                Self::Ipv4Options => "ipv4_options",
                Self::Ipv6 => "ipv6",
                Self::Ipv6Ext => "ipv6_ext",
                Self::Tcp => "tcp",
                Self::Udp => "udp",
                Self::Fragment => "fragment",
                Self::OtherL3 => "other_l3",
                Self::OtherL4 => "other_l4",
                Self::TruncatedL2 => "truncated_l2",
                Self::TruncatedL3 => "truncated_l3",
                Self::TruncatedL4 => "truncated_l4",
                Self::Malformed => "malformed",
            }
        }
    }
}

pub mod mesh;

/// Wire constants the parser and the tests agree on.
pub mod wire {
    /// Ethernet header length.
    pub const ETH_HLEN: usize = 14;
    /// One 802.1Q / 802.1ad tag.
    pub const VLAN_HLEN: usize = 4;
    /// IPv4 header without options.
    pub const IPV4_HLEN: usize = 20;
    /// Fixed IPv6 header.
    pub const IPV6_HLEN: usize = 40;
    /// TCP header without options.
    pub const TCP_HLEN: usize = 20;
    /// UDP header.
    pub const UDP_HLEN: usize = 8;
    /// IPv6 fragment extension header.
    pub const IPV6_FRAG_HLEN: usize = 8;

    /// EtherType of IPv4.
    pub const ETH_P_IP: u16 = 0x0800;
    /// EtherType of IPv6.
    pub const ETH_P_IPV6: u16 = 0x86dd;
    /// EtherType of ARP.
    pub const ETH_P_ARP: u16 = 0x0806;
    /// EtherType of an 802.1Q tag.
    pub const ETH_P_8021Q: u16 = 0x8100;
    /// EtherType of an 802.1ad (QinQ service) tag.
    pub const ETH_P_8021AD: u16 = 0x88a8;

    /// IP protocol numbers.
    pub const IPPROTO_HOPOPTS: u8 = 0;
    /// ICMP.
    pub const IPPROTO_ICMP: u8 = 1;
    /// TCP.
    pub const IPPROTO_TCP: u8 = 6;
    /// UDP.
    pub const IPPROTO_UDP: u8 = 17;
    /// IPv6 routing header.
    pub const IPPROTO_ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const IPPROTO_FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const IPPROTO_ICMPV6: u8 = 58;
    /// IPv6 destination options header.
    pub const IPPROTO_DSTOPTS: u8 = 60;
}

#[cfg(test)]
mod tests {
    use super::parse::Counter;

    #[test]
    fn counters_are_listed_in_index_order_and_split_into_features_and_outcomes() {
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(counter.index(), i, "{counter:?}");
            // Packets is neither: every packet counts there.
            let kinds = [counter.is_feature(), counter.is_outcome()];
            let expected = match counter {
                Counter::Packets => [false, false],
                Counter::Vlan
                | Counter::Ipv4
                | Counter::Ipv4Options
                | Counter::Ipv6
                | Counter::Ipv6Ext => [true, false],
                _ => [false, true],
            };
            assert_eq!(kinds, expected, "{counter:?}");
        }
    }
}
