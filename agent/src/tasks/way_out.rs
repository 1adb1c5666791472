//! The tasks' way out of the node (Docker's `docker_gwbridge`), as the worker decides it: which
//! tasks get one, the node-local subnet, and each task's address in it.
//!
//! A task gets a way out unless every network it is on is `--internal` (a task on no network at
//! all gets one, as in Docker). The ingress network is not internal. A network the node does not
//! know yet counts as internal, so a task never has a way out it should not have, even briefly.
//! The subnet is the first of Docker's local pools (172.18-31.0.0/16, then 192.168.0-240.0/20)
//! that no route of the node and no overlay of the swarm overlaps. A task's address is an offset
//! in that subnet, kept with the task in `tasks.json`, so a restarted daemon gives every task the
//! address it had (and its connections out survive).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The candidate subnets, in order.
fn candidates() -> impl Iterator<Item = Ipv4Net> {
    let sixteens = (18..=31).map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16).expect("a /16"));
    let twenties =
        (0..16).map(|i| Ipv4Net::new(Ipv4Addr::new(192, 168, i * 16, 0), 20).expect("a /20"));
    sixteens.chain(twenties)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first candidate that none of `taken` overlaps.
pub(crate) fn choose_subnet(taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    candidates().find(|c| !taken.iter().any(|t| overlaps(c, t)))
}

/// Whether a task on `networks` gets a way out: `internal` tells, for a network ID, whether it
/// is internal (`None`: not known yet).
pub(crate) fn has_way_out<'a>(
    mut networks: impl Iterator<Item = &'a str>,
    internal: impl Fn(&str) -> Option<bool>,
) -> bool {
    let mut any = false;
    let mut open = false;
    for network in networks.by_ref() {
        any = true;
        match internal(network) {
            None => return false,
            Some(false) => open = true,
            Some(true) => {}
        }
    }
    !any || open
}

/// The smallest offset not in `used` that is a host address of a subnet of `prefix` bits and
/// not its gateway (offset 1); `None` when the subnet is full.
pub(crate) fn free_offset(used: &BTreeSet<u32>, prefix: u8) -> Option<u32> {
    let size = 1_u64 << (32 - u32::from(prefix));
    (2..size.saturating_sub(1))
        .map(|o| o as u32)
        .find(|o| !used.contains(o))
}

/// The address at `offset` in `subnet`, when it is a host address there.
pub(crate) fn address(subnet: Ipv4Net, offset: u32) -> Option<Ipv4Addr> {
    let ip = Ipv4Addr::from(u32::from(subnet.network()).checked_add(offset)?);
    (subnet.contains(&ip) && ip != subnet.broadcast() && offset >= 2).then_some(ip)
}

/// This node's IPv4 routes, the default route aside (`/proc/net/route`), but those through
/// `except` (an interface of Shoal's own, whose routes follow from the choice being made).
pub(crate) fn host_routes(except: Option<&str>) -> Vec<Ipv4Net> {
    let Ok(table) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if except.is_some() && fields.first().copied() == except {
                return None;
            }
            let hex = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| u32::from_str_radix(f, 16).ok())
                    .map(|v| Ipv4Addr::from(v.swap_bytes()))
            };
            let (dest, mask) = (hex(1)?, hex(7)?);
            let prefix = u32::from(mask).count_ones() as u8;
            (prefix > 0)
                .then(|| Ipv4Net::new(dest, prefix).ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn the_subnet_is_the_first_pool_nothing_overlaps() {
        assert_eq!(choose_subnet(&[]), Some(net("172.18.0.0/16")));
        assert_eq!(
            choose_subnet(&[net("172.18.5.0/24"), net("172.16.0.0/12")]),
            Some(net("192.168.0.0/20"))
        );
        assert_eq!(
            choose_subnet(&[net("172.18.0.0/16"), net("10.0.0.0/8")]),
            Some(net("172.19.0.0/16"))
        );
        // A route covering a candidate takes it, as does a route inside it.
        assert_eq!(
            choose_subnet(&[net("172.16.0.0/12"), net("192.168.0.0/16")]),
            None
        );
    }

    #[test]
    fn only_tasks_on_internal_networks_alone_have_no_way_out() {
        let internal = |n: &str| match n {
            "front" | "ingress" => Some(false),
            "back" => Some(true),
            _ => None,
        };
        assert!(has_way_out(["front"].into_iter(), internal));
        assert!(has_way_out(["back", "ingress"].into_iter(), internal));
        assert!(!has_way_out(["back"].into_iter(), internal));
        assert!(
            has_way_out([].into_iter(), internal),
            "no network: Docker's gwbridge alone"
        );
        assert!(
            !has_way_out(["front", "unknown"].into_iter(), internal),
            "a network not known yet may be internal"
        );
    }

    #[test]
    fn offsets_skip_the_gateway_and_the_broadcast_address() {
        assert_eq!(free_offset(&BTreeSet::new(), 16), Some(2));
        assert_eq!(free_offset(&BTreeSet::from([2, 3, 5]), 16), Some(4));
        assert_eq!(free_offset(&BTreeSet::from([2]), 30), None);
        let subnet = net("172.18.0.0/16");
        assert_eq!(address(subnet, 2), Some(Ipv4Addr::new(172, 18, 0, 2)));
        assert_eq!(address(subnet, 65535), None, "the broadcast address");
        assert_eq!(address(subnet, 70000), None);
        assert_eq!(address(subnet, 1), None, "the gateway");
    }
}
