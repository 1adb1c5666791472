//! The tasks' way out of the node: what the node's namespace needs around the way-out bridge
//! besides the bridge and veths the executor makes (Docker's `docker_gwbridge` and its iptables
//! rules).
//!
//! ```text
//! table ip shoal_way_out
//!   chain postrouting   hook postrouting, priority srcnat
//!     ip saddr <subnet> oifname != "shoal_gw" masquerade       (leaves with the node's address)
//!   chain forward       hook forward, priority filter
//!     iifname "shoal_gw" oifname "shoal_gw" drop                (tasks do not meet here: they
//!                                                               meet on their overlays)
//! ```
//!
//! and IPv4 forwarding on in the node's namespace (`net.ipv4.ip_forward`), as Docker sets it.
//! Why nftables masquerade rather than an eBPF SNAT: the way out carries what tasks start
//! themselves (package downloads, calls to outside APIs), where conntrack's cost per connection
//! is small next to the connection's own, and masquerade follows the node's address when it
//! changes. One `nft -f -` transaction makes the table hold exactly these rules.

use std::io;

use ipnet::Ipv4Net;

use super::model::WAY_OUT_BRIDGE;
use super::vxlan_filter::nft;

/// The table's name (family `ip`).
const TABLE: &str = "shoal_way_out";

/// The `nft` script that makes the table hold exactly the way out's rules for `subnet`.
pub fn script(subnet: Ipv4Net) -> String {
    let subnet = subnet.trunc();
    format!(
        "table ip {TABLE} {{\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         \tchain forward {{ type filter hook forward priority filter; policy accept; }}\n\
         }}\n\
         flush chain ip {TABLE} postrouting\n\
         flush chain ip {TABLE} forward\n\
         add rule ip {TABLE} postrouting ip saddr {subnet} oifname != \"{WAY_OUT_BRIDGE}\" masquerade\n\
         add rule ip {TABLE} forward iifname \"{WAY_OUT_BRIDGE}\" oifname \"{WAY_OUT_BRIDGE}\" drop\n"
    )
}

/// Installs the NAT for `subnet` and turns forwarding on in the calling thread's namespace.
pub(crate) async fn install(subnet: Ipv4Net) -> io::Result<()> {
    match nft(&["-f", "-"], &script(subnet)).await? {
        Some(_) => {}
        None => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "nft is not installed: the tasks' way out needs nftables for its source NAT \
                 (apt-get install nftables)",
            ));
        }
    }
    tokio::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("turning IPv4 forwarding on: {e}")))
}

/// Removes the NAT table, whether it exists or not (forwarding stays as it is: other software
/// on the node may rely on it).
pub(crate) async fn remove() -> io::Result<()> {
    nft(
        &["-f", "-"],
        &format!("table ip {TABLE} {{ }}\ndelete table ip {TABLE}\n"),
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_masquerades_the_subnet_and_keeps_tasks_apart() {
        let script = script("172.18.0.1/16".parse().unwrap());
        assert!(
            script.contains("ip saddr 172.18.0.0/16 oifname != \"shoal_gw\" masquerade"),
            "{script}"
        );
        assert!(script.contains("iifname \"shoal_gw\" oifname \"shoal_gw\" drop"));
        assert!(script.find("flush chain").unwrap() < script.find("add rule").unwrap());
    }
}
