//! The packet parser the routing mesh builds on: Ethernet, up to two 802.1Q/802.1ad tags, IPv4
//! (with options) or IPv6 (with up to four extension headers), then TCP or UDP.
//!
//! It never fails: every packet ends in exactly one outcome (`shoal_abi::parse::Counter::is_outcome`).
//! Fragments are reported as such and their L4 header is not looked at, as Katran does: a
//! non-first fragment has none. The routing mesh extends [`Parsed`] with the offsets, addresses
//! and ports it reads.

use shoal_abi::{
    parse::{Counter, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS},
    wire::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS,
        IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN,
        IPV6_FRAG_HLEN, IPV6_HLEN, TCP_HLEN, UDP_HLEN, VLAN_HLEN,
    },
};

use crate::packet::Packet;

/// What the parser found in one packet.
pub(crate) struct Parsed {
    /// Exactly one outcome (`Counter::is_outcome`).
    pub(crate) outcome: Counter,
    pub(crate) vlan: bool,
    pub(crate) ipv4: bool,
    pub(crate) ipv4_options: bool,
    pub(crate) ipv6: bool,
    pub(crate) ipv6_ext: bool,
}

impl Parsed {
    const fn new() -> Self {
        Self {
            outcome: Counter::OtherL3,
            vlan: false,
            ipv4: false,
            ipv4_options: false,
            ipv6: false,
            ipv6_ext: false,
        }
    }

    #[inline(always)]
    fn ends(mut self, outcome: Counter) -> Self {
        self.outcome = outcome;
        self
    }
}

/// Parses the headers of `packet`.
#[inline(always)]
pub(crate) fn parse(packet: &Packet) -> Parsed {
    let mut parsed = Parsed::new();
    let Some(eth) = packet.header::<ETH_HLEN>(0) else {
        return parsed.ends(Counter::TruncatedL2);
    };
    let mut ethertype = eth.be16::<12>();
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tag) = packet.header::<VLAN_HLEN>(offset) else {
            return parsed.ends(Counter::TruncatedL2);
        };
        parsed.vlan = true;
        ethertype = tag.be16::<2>();
        offset += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => ipv4(packet, offset, parsed),
        ETH_P_IPV6 => ipv6(packet, offset, parsed),
        // Also a third VLAN tag: not parsed.
        _ => parsed.ends(Counter::OtherL3),
    }
}

#[inline(always)]
fn ipv4(packet: &Packet, offset: usize, mut parsed: Parsed) -> Parsed {
    let Some(ip) = packet.header::<IPV4_HLEN>(offset) else {
        return parsed.ends(Counter::TruncatedL3);
    };
    let version_ihl = ip.u8::<0>();
    // At most 60: the verifier sees a bounded variable offset.
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_HLEN {
        return parsed.ends(Counter::Malformed);
    }
    if !packet.holds(offset, header_len) {
        return parsed.ends(Counter::TruncatedL3);
    }
    parsed.ipv4 = true;
    parsed.ipv4_options = header_len > IPV4_HLEN;
    // More-fragments flag or a fragment offset: a fragment.
    if ip.be16::<6>() & 0x3fff != 0 {
        return parsed.ends(Counter::Fragment);
    }
    transport(packet, offset + header_len, ip.u8::<9>(), parsed)
}

#[inline(always)]
fn ipv6(packet: &Packet, offset: usize, mut parsed: Parsed) -> Parsed {
    let Some(ip) = packet.header::<IPV6_HLEN>(offset) else {
        return parsed.ends(Counter::TruncatedL3);
    };
    if ip.u8::<0>() >> 4 != 6 {
        return parsed.ends(Counter::Malformed);
    }
    parsed.ipv6 = true;
    let mut next = ip.u8::<6>();
    let mut offset = offset + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(ext) = packet.header::<2>(offset) else {
                    return parsed.ends(Counter::TruncatedL3);
                };
                // (Hdr Ext Len + 1) * 8: at most 2048, a bounded variable offset.
                let len = (usize::from(ext.u8::<1>()) + 1) * 8;
                if !packet.holds(offset, len) {
                    return parsed.ends(Counter::TruncatedL3);
                }
                parsed.ipv6_ext = true;
                next = ext.u8::<0>();
                offset += len;
            }
            IPPROTO_FRAGMENT => {
                if !packet.holds(offset, IPV6_FRAG_HLEN) {
                    return parsed.ends(Counter::TruncatedL3);
                }
                parsed.ipv6_ext = true;
                return parsed.ends(Counter::Fragment);
            }
            _ => break,
        }
    }
    if matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
    ) {
        // More extension headers than the parser walks.
        return parsed.ends(Counter::OtherL4);
    }
    transport(packet, offset, next, parsed)
}

#[inline(always)]
fn transport(packet: &Packet, offset: usize, protocol: u8, parsed: Parsed) -> Parsed {
    match protocol {
        IPPROTO_TCP => {
            let Some(tcp) = packet.header::<TCP_HLEN>(offset) else {
                return parsed.ends(Counter::TruncatedL4);
            };
            let header_len = usize::from(tcp.u8::<12>() >> 4) * 4;
            if header_len < TCP_HLEN {
                return parsed.ends(Counter::Malformed);
            }
            if !packet.holds(offset, header_len) {
                return parsed.ends(Counter::TruncatedL4);
            }
            parsed.ends(Counter::Tcp)
        }
        IPPROTO_UDP if packet.holds(offset, UDP_HLEN) => parsed.ends(Counter::Udp),
        IPPROTO_UDP => parsed.ends(Counter::TruncatedL4),
        _ => parsed.ends(Counter::OtherL4),
    }
}
