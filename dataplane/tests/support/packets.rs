//! Packet fixtures for the XDP programs: packets built layer by layer, each layer knowing what the
//! parser must report when the packet is complete and when it is cut inside that layer. The
//! expectations come from the layers' structure, not from a second parser.

use shoal_abi::{
    parse::Counter,
    wire::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS,
        IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_ROUTING,
        IPPROTO_TCP, IPPROTO_UDP,
    },
};

/// One header (or the payload) of a fixture.
#[derive(Debug, Clone)]
pub struct Layer {
    pub bytes: Vec<u8>,
    /// Features the parser reports once this layer is complete.
    pub features: &'static [Counter],
    /// The outcome when the packet ends inside this layer (`None`: the fixture's own outcome,
    /// for payload the parser does not look at).
    pub truncated: Option<Counter>,
}

/// A packet and what the parser must make of it.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: &'static str,
    pub layers: Vec<Layer>,
    /// The outcome of the complete packet.
    pub outcome: Counter,
}

/// What the parser must report for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub outcome: Counter,
    pub features: Vec<Counter>,
}

impl Fixture {
    pub fn new(name: &'static str, outcome: Counter, layers: Vec<Layer>) -> Self {
        Self {
            name,
            layers,
            outcome,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.layers.iter().flat_map(|l| l.bytes.clone()).collect()
    }

    /// What the parser must report when the packet is cut to `len` bytes.
    pub fn expect(&self, len: usize) -> Expected {
        let mut features = Vec::new();
        let mut start = 0;
        for layer in &self.layers {
            let end = start + layer.bytes.len();
            if len < end {
                return Expected {
                    outcome: layer.truncated.unwrap_or(self.outcome),
                    features,
                };
            }
            for feature in layer.features {
                if !features.contains(feature) {
                    features.push(*feature);
                }
            }
            start = end;
        }
        Expected {
            outcome: self.outcome,
            features,
        }
    }
}

const MAC_A: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
const MAC_B: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x03];

pub fn eth(ethertype: u16) -> Layer {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&MAC_B);
    b.extend_from_slice(&MAC_A);
    b.extend_from_slice(&ethertype.to_be_bytes());
    Layer {
        bytes: b,
        features: &[],
        truncated: Some(Counter::TruncatedL2),
    }
}

/// An 802.1Q/802.1ad tag: TCI then the inner EtherType.
pub fn vlan(vid: u16, ethertype: u16) -> Layer {
    let mut b = (vid & 0x0fff).to_be_bytes().to_vec();
    b.extend_from_slice(&ethertype.to_be_bytes());
    Layer {
        bytes: b,
        features: &[Counter::Vlan],
        truncated: Some(Counter::TruncatedL2),
    }
}

/// An IPv4 header with `options` (a multiple of 4 bytes) and the flags/fragment-offset field.
pub fn ipv4(protocol: u8, options: &[u8], flags_fragment: u16) -> Layer {
    assert_eq!(options.len() % 4, 0, "IPv4 options come in 32-bit words");
    let ihl = 5 + options.len() / 4;
    let mut b = vec![(4 << 4) | ihl as u8, 0];
    b.extend_from_slice(&(1500_u16).to_be_bytes()); // total length: not checked by the parser
    b.extend_from_slice(&0x1c46_u16.to_be_bytes()); // identification
    b.extend_from_slice(&flags_fragment.to_be_bytes());
    b.extend_from_slice(&[64, protocol, 0, 0]); // TTL, protocol, checksum
    b.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    b.extend_from_slice(options);
    Layer {
        bytes: b,
        features: if options.is_empty() {
            &[Counter::Ipv4]
        } else {
            &[Counter::Ipv4, Counter::Ipv4Options]
        },
        truncated: Some(Counter::TruncatedL3),
    }
}

/// 20 bytes of IPv4 header that cannot be right (bad version or IHL): no features.
pub fn ipv4_bad(version_ihl: u8) -> Layer {
    let mut layer = ipv4(IPPROTO_TCP, &[], 0);
    layer.bytes[0] = version_ihl;
    layer.features = &[];
    layer
}

pub fn ipv6(next_header: u8) -> Layer {
    let mut b = vec![0x60, 0, 0, 0];
    b.extend_from_slice(&1000_u16.to_be_bytes()); // payload length: not checked
    b.extend_from_slice(&[next_header, 64]);
    b.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    b.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    Layer {
        bytes: b,
        features: &[Counter::Ipv6],
        truncated: Some(Counter::TruncatedL3),
    }
}

/// A hop-by-hop, routing or destination-options header of `(units + 1) * 8` bytes.
pub fn ipv6_ext(next_header: u8, units: u8) -> Layer {
    let len = (usize::from(units) + 1) * 8;
    let mut b = vec![next_header, units];
    // PadN filling the rest, as a real options header would.
    b.push(1);
    b.push((len - 4) as u8);
    b.resize(len, 0);
    Layer {
        bytes: b,
        features: &[Counter::Ipv6Ext],
        truncated: Some(Counter::TruncatedL3),
    }
}

pub fn ipv6_fragment(next_header: u8, offset_units: u16, more: bool) -> Layer {
    let mut b = vec![next_header, 0];
    b.extend_from_slice(&((offset_units << 3) | u16::from(more)).to_be_bytes());
    b.extend_from_slice(&0xdead_beef_u32.to_be_bytes());
    Layer {
        bytes: b,
        features: &[Counter::Ipv6Ext],
        truncated: Some(Counter::TruncatedL3),
    }
}

/// A TCP header with `options` (a multiple of 4 bytes).
pub fn tcp(options: &[u8]) -> Layer {
    assert_eq!(options.len() % 4, 0, "TCP options come in 32-bit words");
    let data_offset = 5 + options.len() / 4;
    let mut b = Vec::new();
    b.extend_from_slice(&40000_u16.to_be_bytes());
    b.extend_from_slice(&8080_u16.to_be_bytes());
    b.extend_from_slice(&1_u32.to_be_bytes()); // seq
    b.extend_from_slice(&0_u32.to_be_bytes()); // ack
    b.extend_from_slice(&[(data_offset as u8) << 4, 0x02]); // SYN
    b.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]); // window, checksum, urgent
    b.extend_from_slice(options);
    Layer {
        bytes: b,
        features: &[],
        truncated: Some(Counter::TruncatedL4),
    }
}

/// A TCP header whose data offset is below 5.
pub fn tcp_bad_offset() -> Layer {
    let mut layer = tcp(&[]);
    layer.bytes[12] = 4 << 4;
    layer
}

pub fn udp() -> Layer {
    let mut b = Vec::new();
    b.extend_from_slice(&40000_u16.to_be_bytes());
    b.extend_from_slice(&53_u16.to_be_bytes());
    b.extend_from_slice(&16_u16.to_be_bytes());
    b.extend_from_slice(&0_u16.to_be_bytes());
    Layer {
        bytes: b,
        features: &[],
        truncated: Some(Counter::TruncatedL4),
    }
}

/// Bytes the parser does not look at: its outcome is already decided.
pub fn payload(bytes: &[u8]) -> Layer {
    Layer {
        bytes: bytes.to_vec(),
        features: &[],
        truncated: None,
    }
}

/// Every fixture the parser is tested with.
pub fn all() -> Vec<Fixture> {
    use Counter::*;
    let data = payload(b"shoal-fixture-payload");
    // Router alert (4 bytes) and a full 40 bytes of options (NOPs then EOL).
    let router_alert = [0x94, 0x04, 0x00, 0x00];
    let mut max_options = [0x01_u8; 40];
    max_options[39] = 0x00;
    // MSS, SACK permitted, window scale, NOP padding: 12 bytes.
    let tcp_options = [2, 4, 0x05, 0xb4, 4, 2, 3, 3, 7, 1, 1, 1];
    let mf = 0x2000;
    vec![
        Fixture::new(
            "tcp4",
            Tcp,
            vec![
                eth(ETH_P_IP),
                ipv4(IPPROTO_TCP, &[], 0),
                tcp(&[]),
                data.clone(),
            ],
        ),
        Fixture::new(
            "tcp4 with options, DF",
            Tcp,
            vec![
                eth(ETH_P_IP),
                ipv4(IPPROTO_TCP, &[], 0x4000),
                tcp(&tcp_options),
                data.clone(),
            ],
        ),
        Fixture::new(
            "udp4",
            Udp,
            vec![
                eth(ETH_P_IP),
                ipv4(IPPROTO_UDP, &[], 0),
                udp(),
                data.clone(),
            ],
        ),
        Fixture::new(
            "tcp6",
            Tcp,
            vec![eth(ETH_P_IPV6), ipv6(IPPROTO_TCP), tcp(&[]), data.clone()],
        ),
        Fixture::new(
            "udp6",
            Udp,
            vec![eth(ETH_P_IPV6), ipv6(IPPROTO_UDP), udp(), data.clone()],
        ),
        Fixture::new(
            "802.1Q tcp4",
            Tcp,
            vec![
                eth(ETH_P_8021Q),
                vlan(100, ETH_P_IP),
                ipv4(IPPROTO_TCP, &[], 0),
                tcp(&[]),
                data.clone(),
            ],
        ),
        Fixture::new(
            "802.1ad+802.1Q (QinQ) udp6",
            Udp,
            vec![
                eth(ETH_P_8021AD),
                vlan(10, ETH_P_8021Q),
                vlan(20, ETH_P_IPV6),
                ipv6(IPPROTO_UDP),
                udp(),
                data.clone(),
            ],
        ),
        Fixture::new(
            "three VLAN tags (not parsed)",
            OtherL3,
            vec![
                eth(ETH_P_8021Q),
                vlan(1, ETH_P_8021Q),
                vlan(2, ETH_P_8021Q),
                payload(&[0, 3, 0x08, 0x00]),
                payload(&ipv4(IPPROTO_TCP, &[], 0).bytes),
            ],
        ),
        Fixture::new(
            "ipv4 router-alert option, tcp",
            Tcp,
            vec![
                eth(ETH_P_IP),
                ipv4(IPPROTO_TCP, &router_alert, 0),
                tcp(&[]),
                data.clone(),
            ],
        ),
        Fixture::new(
            "ipv4 40 bytes of options (IHL 15), udp",
            Udp,
            vec![
                eth(ETH_P_IP),
                ipv4(IPPROTO_UDP, &max_options, 0),
                udp(),
                data.clone(),
            ],
        ),
        Fixture::new(
            "802.1Q ipv4 options udp",
            Udp,
            vec![
                eth(ETH_P_8021Q),
                vlan(7, ETH_P_IP),
                ipv4(IPPROTO_UDP, &router_alert, 0),
                udp(),
                data.clone(),
            ],
        ),
        Fixture::new(
            "ipv4 first fragment (MF, offset 0)",
            Fragment,
            vec![
                eth(ETH_P_IP),
                ipv4(IPPROTO_UDP, &[], mf),
                payload(&udp().bytes),
                data.clone(),
            ],
        ),
        Fixture::new(
            "ipv4 middle fragment",
            Fragment,
            vec![
                eth(ETH_P_IP),
                ipv4(IPPROTO_UDP, &[], mf | 185),
                data.clone(),
            ],
        ),
        Fixture::new(
            "ipv4 last fragment",
            Fragment,
            vec![eth(ETH_P_IP), ipv4(IPPROTO_TCP, &[], 370), data.clone()],
        ),
        Fixture::new(
            "ipv6 fragment header",
            Fragment,
            vec![
                eth(ETH_P_IPV6),
                ipv6(IPPROTO_FRAGMENT),
                ipv6_fragment(IPPROTO_UDP, 0, true),
                payload(&udp().bytes),
                data.clone(),
            ],
        ),
        Fixture::new(
            "ipv6 hop-by-hop + routing + destination options, tcp",
            Tcp,
            vec![
                eth(ETH_P_IPV6),
                ipv6(IPPROTO_HOPOPTS),
                ipv6_ext(IPPROTO_ROUTING, 0),
                ipv6_ext(IPPROTO_DSTOPTS, 2),
                ipv6_ext(IPPROTO_TCP, 1),
                tcp(&tcp_options),
                data.clone(),
            ],
        ),
        Fixture::new(
            "ipv6 destination options then fragment",
            Fragment,
            vec![
                eth(ETH_P_IPV6),
                ipv6(IPPROTO_DSTOPTS),
                ipv6_ext(IPPROTO_FRAGMENT, 0),
                ipv6_fragment(IPPROTO_TCP, 3, false),
                data.clone(),
            ],
        ),
        Fixture::new(
            "ipv6 five extension headers (more than parsed)",
            OtherL4,
            vec![
                eth(ETH_P_IPV6),
                ipv6(IPPROTO_HOPOPTS),
                ipv6_ext(IPPROTO_DSTOPTS, 0),
                ipv6_ext(IPPROTO_ROUTING, 0),
                ipv6_ext(IPPROTO_DSTOPTS, 0),
                ipv6_ext(IPPROTO_DSTOPTS, 0),
                payload(&ipv6_ext(IPPROTO_TCP, 0).bytes),
                payload(&tcp(&[]).bytes),
            ],
        ),
        Fixture::new(
            "arp",
            OtherL3,
            vec![
                eth(ETH_P_ARP),
                payload(&[0, 1, 8, 0, 6, 4, 0, 1]),
                data.clone(),
            ],
        ),
        Fixture::new(
            "icmp4",
            OtherL4,
            vec![
                eth(ETH_P_IP),
                ipv4(IPPROTO_ICMP, &[], 0),
                payload(&[8, 0, 0, 0, 0, 1, 0, 1]),
            ],
        ),
        Fixture::new(
            "icmp6",
            OtherL4,
            vec![
                eth(ETH_P_IPV6),
                ipv6(IPPROTO_ICMPV6),
                payload(&[128, 0, 0, 0]),
            ],
        ),
        Fixture::new(
            "ipv4 IHL 4 (malformed)",
            Malformed,
            vec![eth(ETH_P_IP), ipv4_bad(0x44), payload(&tcp(&[]).bytes)],
        ),
        Fixture::new(
            "EtherType IPv4, version 6 (malformed)",
            Malformed,
            vec![eth(ETH_P_IP), ipv4_bad(0x65), payload(&udp().bytes)],
        ),
        Fixture::new(
            "EtherType IPv6, version 4 (malformed)",
            Malformed,
            vec![
                eth(ETH_P_IPV6),
                {
                    let mut l = ipv6(IPPROTO_TCP);
                    l.bytes[0] = 0x45;
                    l.features = &[];
                    l
                },
                payload(&tcp(&[]).bytes),
            ],
        ),
        Fixture::new(
            "tcp data offset 4 (malformed)",
            Malformed,
            vec![
                eth(ETH_P_IP),
                ipv4(IPPROTO_TCP, &[], 0),
                tcp_bad_offset(),
                data,
            ],
        ),
    ]
}
