//! The allocator: what networks, tasks and services are given. Pure bookkeeping, rebuilt from
//! the store: subnets, VNIs, addresses (VIPs and task addresses alike), published ports.
//!
//! Defaults follow SwarmKit:
//! - subnets are carved from the pool 10.0.0.0/8 in /24s, unless the network names its own
//!   (`--subnet`), which must not overlap any other network's;
//! - the gateway is the first address unless `--gateway` names another in the subnet;
//! - VNIs are handed out from 4096 up;
//! - published ports are the ones asked for, or, when only the target is given, the first free
//!   one from 30000 to 32767.
//!
//! Every operation is whole or nothing: an error changes nothing, and says what was wrong.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;

use shoal_api::service::PortProtocol;

/// The first VNI handed out.
pub const FIRST_VNI: u32 = 4096;
/// The last VNI (24 bits).
pub const LAST_VNI: u32 = (1 << 24) - 1;
/// The range auto-assigned published ports come from.
pub const AUTO_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Why an allocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// `--subnet` overlaps another network's subnet.
    #[error(
        "invalid pool request: subnet {subnet} overlaps the subnet {other} of network {network}"
    )]
    Overlap {
        /// The subnet asked for.
        subnet: Ipv4Net,
        /// The one it overlaps.
        other: Ipv4Net,
        /// That network.
        network: String,
    },
    /// The default pool has no free subnet left.
    #[error(
        "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network"
    )]
    PoolExhausted,
    /// `--gateway` outside the subnet, or on its network or broadcast address.
    #[error("invalid gateway {gateway}: it must be a host address of the subnet {subnet}")]
    Gateway {
        /// The gateway asked for.
        gateway: Ipv4Addr,
        /// The subnet.
        subnet: Ipv4Net,
    },
    /// A subnet too small for a gateway and a task.
    #[error("invalid subnet {0}: it must hold a gateway and at least one address (/30 or larger)")]
    TooSmall(Ipv4Net),
    /// Every VNI is taken.
    #[error("no VXLAN network identifier is free")]
    NoVni,
    /// The network is unknown.
    #[error("network {0} not found")]
    NoNetwork(String),
    /// The network already exists.
    #[error("network with name {0} already exists")]
    Exists(String),
    /// Addresses of the network are still handed out.
    #[error("network {network} is in use: {addresses} addresses are still allocated on it")]
    InUse {
        /// The network.
        network: String,
        /// How many addresses.
        addresses: usize,
    },
    /// The subnet has no free address.
    #[error("no address left in the subnet {subnet} of network {network}")]
    Full {
        /// The network.
        network: String,
        /// Its subnet.
        subnet: Ipv4Net,
    },
    /// A published port is taken by another service.
    #[error("port '{port}' is already in use by service '{service}' as a {protocol} port")]
    PortInUse {
        /// The port.
        port: u16,
        /// tcp or udp.
        protocol: &'static str,
        /// The service holding it.
        service: String,
    },
    /// The same port asked for twice by one service.
    #[error("port '{port}' is published twice as a {protocol} port")]
    PortTwice {
        /// The port.
        port: u16,
        /// tcp or udp.
        protocol: &'static str,
    },
    /// No free port in the auto range.
    #[error("no free port left in the range 30000-32767 to publish")]
    NoPort,
}

/// What a network was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAllocation {
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// Its gateway.
    pub gateway: Ipv4Addr,
    /// Its VNI.
    pub vni: u32,
    used: BTreeSet<Ipv4Addr>,
}

/// The allocator's state.
#[derive(Debug, Clone)]
pub struct Allocator {
    pools: Vec<Ipv4Net>,
    subnet_len: u8,
    networks: BTreeMap<String, NetworkAllocation>,
    ports: BTreeMap<(PortProtocol, u16), String>,
}

/// The pool overlay subnets come from unless `swarm init --default-addr-pool` says otherwise.
pub const DEFAULT_POOL: &str = "10.0.0.0/8";
/// Their length unless `--default-addr-pool-mask-length` says otherwise.
pub const DEFAULT_SUBNET_LEN: u8 = 24;

impl Default for Allocator {
    fn default() -> Self {
        Self::new(
            vec![DEFAULT_POOL.parse().expect("a valid pool")],
            DEFAULT_SUBNET_LEN,
        )
    }
}

/// Checks `swarm init --default-addr-pool` and `--default-addr-pool-mask-length`: IPv4 pools,
/// none overlapping another, each at least as large as one subnet of `subnet_len` (at most 29,
/// so that a subnet holds hosts). The pools, parsed.
pub fn parse_pools(pools: &[String], subnet_len: u8) -> Result<Vec<Ipv4Net>, String> {
    if !(8..=29).contains(&subnet_len) {
        return Err(format!(
            "invalid --default-addr-pool-mask-length {subnet_len}: it must be between 8 and 29"
        ));
    }
    let mut parsed: Vec<Ipv4Net> = Vec::new();
    for pool in pools {
        let net: Ipv4Net = pool
            .parse()
            .map_err(|_| format!("invalid --default-addr-pool {pool:?}: not an IPv4 CIDR"))?;
        if net != net.trunc() {
            return Err(format!(
                "invalid --default-addr-pool {pool}: it has host bits set (did you mean {}?)",
                net.trunc()
            ));
        }
        if net.prefix_len() > subnet_len {
            return Err(format!(
                "invalid --default-addr-pool {pool}: it is smaller than one /{subnet_len} subnet"
            ));
        }
        if let Some(other) = parsed.iter().find(|o| overlaps(o, &net)) {
            return Err(format!(
                "invalid --default-addr-pool {pool}: it overlaps {other}"
            ));
        }
        parsed.push(net);
    }
    Ok(parsed)
}

/// Whether two subnets share an address (one holds the other).
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Allocator {
    /// An allocator carving subnets of length `subnet_len` out of `pools`, in order.
    pub fn new(pools: Vec<Ipv4Net>, subnet_len: u8) -> Self {
        let widest = pools.iter().map(Ipv4Net::prefix_len).max().unwrap_or(0);
        Self {
            pools,
            subnet_len: subnet_len.max(widest),
            networks: BTreeMap::new(),
            ports: BTreeMap::new(),
        }
    }

    /// The first subnet of the pools no network holds and `avoid` says nothing against (the
    /// host's routes, at `swarm init`).
    pub fn free_subnet(&self, avoid: impl Fn(Ipv4Net) -> bool) -> Option<Ipv4Net> {
        self.pools.iter().find_map(|pool| {
            pool.subnets(self.subnet_len.max(pool.prefix_len()))
                .ok()?
                .find(|s| self.overlapping(*s).is_none() && !avoid(*s))
        })
    }

    /// What `network` was given.
    pub fn network(&self, network: &str) -> Option<&NetworkAllocation> {
        self.networks.get(network)
    }

    fn overlapping(&self, subnet: Ipv4Net) -> Option<(&String, Ipv4Net)> {
        self.networks
            .iter()
            .find(|(_, n)| overlaps(&n.subnet, &subnet))
            .map(|(name, n)| (name, n.subnet))
    }

    /// Gives `network` a subnet (`subnet`, or the next free one of the pool), a gateway and a
    /// VNI.
    pub fn add_network(
        &mut self,
        network: &str,
        subnet: Option<Ipv4Net>,
        gateway: Option<Ipv4Addr>,
    ) -> Result<&NetworkAllocation, AllocError> {
        if self.networks.contains_key(network) {
            return Err(AllocError::Exists(network.to_owned()));
        }
        let subnet = match subnet {
            Some(subnet) => {
                let subnet = subnet.trunc();
                if subnet.prefix_len() > 30 {
                    return Err(AllocError::TooSmall(subnet));
                }
                if let Some((other_name, other)) = self.overlapping(subnet) {
                    return Err(AllocError::Overlap {
                        subnet,
                        other,
                        network: other_name.clone(),
                    });
                }
                subnet
            }
            None => self
                .free_subnet(|_| false)
                .ok_or(AllocError::PoolExhausted)?,
        };
        let first_host = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let gateway = gateway.unwrap_or(first_host);
        if !subnet.contains(&gateway)
            || gateway == subnet.network()
            || gateway == subnet.broadcast()
        {
            return Err(AllocError::Gateway { gateway, subnet });
        }
        let taken: BTreeSet<u32> = self.networks.values().map(|n| n.vni).collect();
        let vni = (FIRST_VNI..=LAST_VNI)
            .find(|v| !taken.contains(v))
            .ok_or(AllocError::NoVni)?;
        let allocation = NetworkAllocation {
            subnet,
            gateway,
            vni,
            used: BTreeSet::new(),
        };
        Ok(self
            .networks
            .entry(network.to_owned())
            .or_insert(allocation))
    }

    /// Takes back a network as it was given before (rebuilding from the store).
    pub fn restore_network(&mut self, network: &str, subnet: Ipv4Net, gateway: Ipv4Addr, vni: u32) {
        self.networks.insert(
            network.to_owned(),
            NetworkAllocation {
                subnet,
                gateway,
                vni,
                used: BTreeSet::new(),
            },
        );
    }

    /// Marks `address` of `network` as handed out (rebuilding from the store). False if it
    /// was already, or is not an address of the network.
    pub fn reserve(&mut self, network: &str, address: Ipv4Addr) -> bool {
        match self.networks.get_mut(network) {
            Some(n) if n.subnet.contains(&address) && address != n.gateway => {
                n.used.insert(address)
            }
            _ => false,
        }
    }

    /// Marks published ports as `service`'s (rebuilding from the store).
    pub fn restore_ports(
        &mut self,
        service: &str,
        ports: impl IntoIterator<Item = (PortProtocol, u16)>,
    ) {
        for key in ports {
            self.ports.insert(key, service.to_owned());
        }
    }

    /// Removes `network`, refused while addresses on it are handed out.
    pub fn remove_network(&mut self, network: &str) -> Result<(), AllocError> {
        let allocation = self
            .networks
            .get(network)
            .ok_or_else(|| AllocError::NoNetwork(network.to_owned()))?;
        if !allocation.used.is_empty() {
            return Err(AllocError::InUse {
                network: network.to_owned(),
                addresses: allocation.used.len(),
            });
        }
        self.networks.remove(network);
        Ok(())
    }

    /// The next free address of `network` (a VIP or a task's).
    pub fn address(&mut self, network: &str) -> Result<Ipv4Addr, AllocError> {
        let allocation = self
            .networks
            .get_mut(network)
            .ok_or_else(|| AllocError::NoNetwork(network.to_owned()))?;
        let first = u32::from(allocation.subnet.network()) + 1;
        let last = u32::from(allocation.subnet.broadcast()) - 1;
        let free = (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| *a != allocation.gateway && !allocation.used.contains(a))
            .ok_or_else(|| AllocError::Full {
                network: network.to_owned(),
                subnet: allocation.subnet,
            })?;
        allocation.used.insert(free);
        Ok(free)
    }

    /// Gives an address back.
    pub fn release(&mut self, network: &str, address: Ipv4Addr) {
        if let Some(allocation) = self.networks.get_mut(network) {
            allocation.used.remove(&address);
        }
    }

    /// Publishes `service`'s ports: each `(protocol, Some(port))` as asked, each
    /// `(protocol, None)` on the first free port of [`AUTO_PORTS`]. Replaces what the service
    /// published before; all or nothing.
    pub fn publish(
        &mut self,
        service: &str,
        ports: &[(PortProtocol, Option<u16>)],
    ) -> Result<Vec<u16>, AllocError> {
        let mut taken: BTreeMap<(PortProtocol, u16), String> = self
            .ports
            .iter()
            .filter(|(_, owner)| owner.as_str() != service)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut mine = BTreeSet::new();
        let mut given = Vec::with_capacity(ports.len());
        // Explicit ports first, so an auto-assigned one never takes a port asked for.
        for (protocol, port) in ports {
            if let Some(port) = port {
                if let Some(owner) = taken.get(&(*protocol, *port)) {
                    return Err(AllocError::PortInUse {
                        port: *port,
                        protocol: protocol.name(),
                        service: owner.clone(),
                    });
                }
                if !mine.insert((*protocol, *port)) {
                    return Err(AllocError::PortTwice {
                        port: *port,
                        protocol: protocol.name(),
                    });
                }
            }
        }
        for (protocol, port) in ports {
            let port = match port {
                Some(port) => *port,
                None => {
                    let free = AUTO_PORTS
                        .clone()
                        .find(|p| {
                            !taken.contains_key(&(*protocol, *p))
                                && !mine.contains(&(*protocol, *p))
                        })
                        .ok_or(AllocError::NoPort)?;
                    mine.insert((*protocol, free));
                    free
                }
            };
            given.push(port);
        }
        for key in mine {
            taken.insert(key, service.to_owned());
        }
        self.ports = taken;
        Ok(given)
    }

    /// Releases `service`'s published ports.
    pub fn unpublish(&mut self, service: &str) {
        self.ports.retain(|_, owner| owner != service);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn address_pools_are_checked_and_subnets_come_from_them_in_order() {
        let pools = parse_pools(&["10.99.0.0/16".into(), "172.30.0.0/24".into()], 26).unwrap();
        let mut a = Allocator::new(pools, 26);
        assert_eq!(
            a.add_network("one", None, None).unwrap().subnet.to_string(),
            "10.99.0.0/26"
        );
        // A subnet the host routes is avoided when asked (the ingress network at init).
        let taken: Ipv4Net = "10.99.0.64/26".parse().unwrap();
        assert_eq!(
            a.free_subnet(|s| s == taken).map(|s| s.to_string()),
            Some("10.99.0.128/26".into())
        );
        for (pools, len, words) in [
            (vec!["10.1.2.3/16"], 24, "host bits"),
            (vec!["10.0.0.0/16", "10.0.128.0/17"], 24, "overlaps"),
            (vec!["10.0.0.0/28"], 24, "smaller than one /24"),
            (vec!["fd00::/64"], 24, "not an IPv4 CIDR"),
            (vec!["10.0.0.0/8"], 30, "between 8 and 29"),
        ] {
            let pools: Vec<String> = pools.into_iter().map(String::from).collect();
            let e = parse_pools(&pools, len).unwrap_err();
            assert!(e.contains(words), "{pools:?} /{len}: {e}");
        }
    }

    #[test]
    fn networks_get_24s_from_the_default_pool_gateways_and_vnis_from_4096() {
        let mut a = Allocator::default();
        let first = a.add_network("ingress", None, None).unwrap().clone();
        assert_eq!(first.subnet.to_string(), "10.0.0.0/24");
        assert_eq!(first.gateway, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(first.vni, 4096);
        let second = a.add_network("web", None, None).unwrap().clone();
        assert_eq!(second.subnet.to_string(), "10.0.1.0/24");
        assert_eq!(second.vni, 4097);
        assert_eq!(a.address("web").unwrap(), Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(a.address("web").unwrap(), Ipv4Addr::new(10, 0, 1, 3));
    }

    #[test]
    fn a_named_subnet_is_checked_and_the_pool_skips_it() {
        let mut a = Allocator::default();
        a.add_network(
            "own",
            Some("10.0.0.0/16".parse().unwrap()),
            Some("10.0.0.254".parse().unwrap()),
        )
        .unwrap();
        let e = a
            .add_network("clash", Some("10.0.3.0/24".parse().unwrap()), None)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid pool request: subnet 10.0.3.0/24 overlaps the subnet 10.0.0.0/16 of network own"
        );
        assert_eq!(
            a.add_network("next", None, None)
                .unwrap()
                .subnet
                .to_string(),
            "10.1.0.0/24"
        );
        let e = a
            .add_network(
                "gw",
                Some("192.168.0.0/24".parse().unwrap()),
                Some("192.168.1.1".parse().unwrap()),
            )
            .unwrap_err();
        assert!(e.to_string().contains("invalid gateway 192.168.1.1"), "{e}");
        let e = a
            .add_network("tiny", Some("192.168.9.0/31".parse().unwrap()), None)
            .unwrap_err();
        assert!(e.to_string().contains("/30 or larger"), "{e}");
        let e = a.add_network("own", None, None).unwrap_err();
        assert_eq!(e.to_string(), "network with name own already exists");
        // Nothing half-made: the refused networks hold nothing.
        assert!(a.network("clash").is_none() && a.network("gw").is_none());
    }

    #[test]
    fn a_network_in_use_is_not_removed() {
        let mut a = Allocator::default();
        a.add_network("web", None, None).unwrap();
        let vip = a.address("web").unwrap();
        let e = a.remove_network("web").unwrap_err();
        assert_eq!(
            e.to_string(),
            "network web is in use: 1 addresses are still allocated on it"
        );
        a.release("web", vip);
        a.remove_network("web").unwrap();
        // Its VNI and subnet are free again.
        let again = a.add_network("db", None, None).unwrap();
        assert_eq!(
            (again.vni, again.subnet.to_string().as_str()),
            (4096, "10.0.0.0/24")
        );
    }

    #[test]
    fn a_full_subnet_says_so() {
        let mut a = Allocator::default();
        a.add_network("small", Some("192.168.5.0/30".parse().unwrap()), None)
            .unwrap();
        assert_eq!(a.address("small").unwrap(), Ipv4Addr::new(192, 168, 5, 2));
        let e = a.address("small").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no address left in the subnet 192.168.5.0/30 of network small"
        );
    }

    #[test]
    fn published_ports_are_explicit_or_from_30000_and_conflicts_change_nothing() {
        let mut a = Allocator::default();
        assert_eq!(
            a.publish(
                "web",
                &[(PortProtocol::Tcp, Some(8080)), (PortProtocol::Tcp, None)]
            )
            .unwrap(),
            [8080, 30000]
        );
        // The same number over UDP is another port.
        assert_eq!(
            a.publish(
                "dns",
                &[(PortProtocol::Udp, Some(8080)), (PortProtocol::Tcp, None)]
            )
            .unwrap(),
            [8080, 30001]
        );
        let e = a
            .publish(
                "api",
                &[(PortProtocol::Tcp, None), (PortProtocol::Tcp, Some(8080))],
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "port '8080' is already in use by service 'web' as a tcp port"
        );
        let e = a
            .publish(
                "api",
                &[
                    (PortProtocol::Tcp, Some(9000)),
                    (PortProtocol::Tcp, Some(9000)),
                ],
            )
            .unwrap_err();
        assert!(e.to_string().contains("published twice"), "{e}");
        // The refused calls took nothing.
        assert_eq!(
            a.publish("api", &[(PortProtocol::Tcp, None)]).unwrap(),
            [30002]
        );
        // A service republishing keeps its own ports; unpublishing frees them.
        assert_eq!(
            a.publish("web", &[(PortProtocol::Tcp, Some(8080))])
                .unwrap(),
            [8080]
        );
        a.unpublish("web");
        assert_eq!(
            a.publish("api", &[(PortProtocol::Tcp, Some(8080))])
                .unwrap(),
            [8080]
        );
    }

    proptest! {
        /// Addresses handed out are unique, inside the subnet, never the network, gateway or
        /// broadcast address; releasing and asking again reuses them.
        #[test]
        fn addresses_are_unique_host_addresses(prefix in 24_u8..=29, take in 1_usize..300) {
            let mut a = Allocator::default();
            let subnet: Ipv4Net = format!("172.16.0.0/{prefix}").parse().unwrap();
            a.add_network("n", Some(subnet), None).unwrap();
            let gateway = a.network("n").unwrap().gateway;
            let room = (1_usize << (32 - prefix)) - 3;
            let mut seen = BTreeSet::new();
            for i in 0..take {
                match a.address("n") {
                    Ok(address) => {
                        prop_assert!(i < room);
                        prop_assert!(subnet.contains(&address));
                        prop_assert!(address != subnet.network() && address != subnet.broadcast() && address != gateway);
                        prop_assert!(seen.insert(address));
                    }
                    Err(AllocError::Full { .. }) => prop_assert!(i >= room),
                    Err(e) => prop_assert!(false, "{e}"),
                }
            }
        }
    }
}
