//! The overlays' part of a node's desired state ([`crate::node::DesiredState`]): networks, local
//! attachments, remote endpoints, peers, the data path and the tasks' way out, with the checks
//! their fields get and the WireGuard configuration they resolve to.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::keys::Key;
use crate::common::{Mac, Problems};

/// The way out's bridge, in the node's namespace.
pub const WAY_OUT_BRIDGE: &str = "shoal_gw";
/// The default VXLAN port (IANA), Docker's `--data-path-port` default.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// The default WireGuard port.
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;
/// Bytes VXLAN adds over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Bytes WireGuard adds over IPv4: outer IPv4 (20) + UDP (8) + WireGuard data header and tag (32).
pub const WIREGUARD_OVERHEAD: u32 = 60;
/// The smallest overlay MTU accepted (the IPv4 minimum datagram every host must accept).
pub const MIN_MTU: u32 = 576;

/// The tasks' way out: a bridge in the node's namespace (`shoal_gw`) holding the subnet's first
/// host address, each listed task's default route through it, and source NAT to the node's own
/// address for what leaves the node. A task not listed has no way out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WayOut {
    /// Its IPv4 subnet: local to the node, apart from the overlays' subnets and the node's own
    /// addresses.
    pub subnet: String,
    /// The tasks that have a way out.
    #[serde(default)]
    pub attachments: Vec<WayOutAttachment>,
}

/// A task's way out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WayOutAttachment {
    /// The task's ID.
    pub task: String,
    /// The task's network namespace.
    pub netns: PathBuf,
    /// The task's address in the way out's subnet.
    pub ip: String,
    /// The interface's name inside the task's namespace.
    pub interface: String,
}

/// `--data-path-addr` and `--data-path-port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPath {
    /// An IPv4 address of this node, or the name of an interface holding one.
    pub addr: String,
    /// The VXLAN UDP port.
    #[serde(default = "default_vxlan_port")]
    pub port: u16,
    /// The WireGuard UDP port (the same on every node).
    #[serde(default = "default_wireguard_port")]
    pub wireguard_port: u16,
}

pub(crate) fn default_vxlan_port() -> u16 {
    DEFAULT_VXLAN_PORT
}

fn default_wireguard_port() -> u16 {
    DEFAULT_WIREGUARD_PORT
}

/// This node's WireGuard static key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuard {
    /// Base64 of the 32-byte X25519 private key, as `wg genkey` prints it.
    pub private_key: String,
    /// The CPUs the engine's I/O threads are pinned to: `[c]` both on CPU c, `[e, d]` the
    /// encrypting thread on e and the decrypting one on d. Empty (the default): the scheduler
    /// places them. Pinned, the decrypting thread's packets cannot overtake each other in the
    /// kernel's per-CPU queues (see `overlay::affinity`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<usize>,
}

impl fmt::Debug for WireGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireGuard")
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// An overlay network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayNetwork {
    /// Its ID: letters, digits, `_`, `.`, `-`; at most 64 characters.
    pub id: String,
    /// Its VXLAN network identifier, 1..=16777215.
    pub vni: u32,
    /// Its IPv4 subnet.
    pub subnet: String,
    /// The gateway address; the subnet's first host address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The MTU of its devices; derived from the data-path interface when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Whether its traffic between nodes travels inside WireGuard.
    #[serde(default)]
    pub encrypted: bool,
}

/// A local task's interface on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// The task's ID.
    pub task: String,
    /// The task's network namespace: a path such as `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub netns: PathBuf,
    /// The network's ID.
    pub network: String,
    /// The task's address on the network.
    pub ip: String,
    /// Its MAC address; derived from the IP (`02:42:` + the address) when absent, like Docker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The interface's name inside the task's namespace.
    #[serde(default = "default_interface")]
    pub interface: String,
    /// Whether the task's default route goes through this network's gateway (the routing mesh's
    /// client-IP mode needs it on the ingress network).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default_route: bool,
    /// Whether whatever leaves the task from this address goes through this network's gateway,
    /// whatever its default route (a source rule and a table of its own): on the ingress
    /// network, the routing mesh's replies to outside clients (client-IP mode and `mode=host`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replies_via_gateway: bool,
}

fn default_interface() -> String {
    "eth0".to_owned()
}

/// A task on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayEndpoint {
    /// The network's ID.
    pub network: String,
    /// The task's address.
    pub ip: String,
    /// Its MAC address; derived from the IP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The node it runs on (one of `peers`).
    pub node: String,
}

/// Another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its name.
    pub node: String,
    /// Its data-path address.
    pub data_path_addr: String,
    /// Base64 of its WireGuard public key; required when it has endpoints on an encrypted network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// This node's WireGuard configuration, derived from a valid desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgConfig {
    /// Our static private key.
    pub private_key: Key,
    /// The data-path address the engine's UDP socket binds.
    pub local: Ipv4Addr,
    /// The WireGuard port on every node.
    pub port: u16,
    /// The VXLAN port: the only inner UDP destination port accepted from peers.
    pub vxlan_port: u16,
    /// The peers that have a public key, by node name.
    pub peers: BTreeMap<String, WgPeer>,
    /// The CPUs the I/O threads are pinned to (`WireGuard::cpus`, checked).
    pub cpus: Vec<usize>,
}

/// A WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    /// Its data-path address: its endpoint, and the only inner source address accepted from it.
    pub addr: Ipv4Addr,
    /// Its static public key.
    pub public_key: Key,
    /// The VNIs of the encrypted networks it has endpoints on: the only ones accepted from it.
    /// They are the ones we send it (our FDB points those networks' MACs at it), so a peer can
    /// write only into networks it has tasks on.
    pub vnis: BTreeSet<u32>,
}

pub(crate) struct NetFacts {
    pub(crate) subnet: Ipv4Net,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) encrypted: bool,
    /// Addresses and MACs in use, with the field that took them.
    pub(crate) ips: BTreeMap<Ipv4Addr, String>,
    pub(crate) macs: BTreeMap<Mac, String>,
}

impl NetFacts {
    /// Checks an address belongs to the network and is free; records it.
    pub(crate) fn claim_ip(&mut self, field: &str, ip: Ipv4Addr, problems: &mut Problems) -> bool {
        if !self.subnet.contains(&ip) {
            problems.push(
                field,
                format!("{ip} is outside the network's subnet {}", self.subnet),
            );
            return false;
        }
        if ip == self.subnet.network() || ip == self.subnet.broadcast() {
            problems.push(
                field,
                format!("{ip} is the subnet's network or broadcast address"),
            );
            return false;
        }
        if ip == self.gateway {
            problems.push(field, format!("{ip} is the network's gateway"));
            return false;
        }
        if let Some(other) = self.ips.get(&ip) {
            problems.push(field, format!("{ip} is already used by {other}"));
            return false;
        }
        self.ips.insert(ip, field.to_owned());
        true
    }

    pub(crate) fn claim_mac(&mut self, field: &str, mac: Mac, problems: &mut Problems) -> bool {
        if !mac.is_unicast() {
            problems.push(field, format!("{mac} is not a unicast MAC address"));
            return false;
        }
        if let Some(other) = self.macs.get(&mac) {
            problems.push(field, format!("{mac} is already used by {other}"));
            return false;
        }
        self.macs.insert(mac, field.to_owned());
        true
    }
}

/// Checks the task's side of an attachment at `at`: a task ID, an absolute namespace path, and
/// an interface name that is valid and not yet used in that namespace (then recorded in
/// `interfaces`). Whether the interface can be used.
pub(crate) fn check_task_side<'a>(
    at: &str,
    (task, netns, interface): (&str, &std::path::Path, &'a str),
    interfaces: &mut BTreeMap<(PathBuf, &'a str), String>,
    problems: &mut Problems,
) -> bool {
    if task.is_empty() {
        problems.push(format!("{at}.task"), "an attachment needs a task ID");
    }
    if !netns.is_absolute() {
        problems.push(
            format!("{at}.netns"),
            format!("{} is not an absolute path", netns.display()),
        );
    }
    if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ', ':']) {
        problems.push(
            format!("{at}.interface"),
            format!("{interface:?} is not an interface name"),
        );
        return false;
    }
    if let Some(other) = interfaces.insert((netns.to_path_buf(), interface), at.to_owned()) {
        problems.push(
            format!("{at}.interface"),
            format!(
                "{interface} in {} is already used by {other}",
                netns.display()
            ),
        );
        return false;
    }
    true
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub(crate) fn parse_ipv4(field: &str, value: &str, problems: &mut Problems) -> Option<Ipv4Addr> {
    match value.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Some(ip),
        Ok(IpAddr::V6(_)) => {
            problems.push(
                field,
                format!("{value} is IPv6; overlays are IPv4 only for now"),
            );
            None
        }
        Err(_) => {
            problems.push(field, format!("{value:?} is not an IPv4 address"));
            None
        }
    }
}

pub(crate) fn parse_mac(
    field: &str,
    value: Option<&str>,
    ip: Ipv4Addr,
    problems: &mut Problems,
) -> Option<Mac> {
    match value {
        None => Some(Mac::from_ip(ip)),
        Some(s) => match s.parse() {
            Ok(mac) => Some(mac),
            Err(e) => {
                problems.push(field, e);
                None
            }
        },
    }
}

pub(crate) fn parse_key(field: &str, value: &str, problems: &mut Problems) -> Option<Key> {
    match value.parse::<Key>() {
        Ok(key) => Some(key),
        Err(e) => {
            problems.push(field, e.to_string());
            None
        }
    }
}
