//! Plain VXLAN only from peers.
//!
//! The kernel's VXLAN device takes a frame from anyone who can reach its UDP port: with learning
//! off it does not look at the outer source at all, and its VNI picks the network. So anyone on
//! the data network (or routed to the data-path address over any interface) could write frames
//! into a plain overlay, the routing mesh's ingress network included. Its socket is bound to
//! every address of the namespace (whatever the device's `local`), so the filter covers VXLAN to
//! any local address. The node's namespace therefore gets one nftables table that drops VXLAN
//! to the node unless it comes from the data-path address of a current peer:
//!
//! ```text
//! table ip shoal_overlay
//!   set vxlan_peers       the peers' data-path addresses
//!   counter vxlan_refused
//!   chain vxlan_in        hook prerouting, priority raw (before conntrack: a flood leaves no state)
//!     udp dport <VXLAN port> fib daddr type local ip saddr != @vxlan_peers
//!       counter name vxlan_refused drop
//! ```
//!
//! Why nftables: it sees every interface of the namespace, present and future, where a TC or XDP
//! program sees only the interfaces it is attached to, and the kernel's VXLAN socket takes no
//! socket filter. One `nft -f -` transaction replaces the set and the rule together, so there is
//! no moment without a filter, and the counter survives. Encrypted networks need none of this:
//! their VXLAN sockets live in the tunnel namespace, where only the WireGuard engine writes.
//! The routing mesh's XDP program sends VXLAN from the entry node's data-path address, which is a
//! peer's, so its frames pass.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;

/// The table's name (family `ip`).
const TABLE: &str = "shoal_overlay";
/// Where `nft` may be, in order: a daemon's `PATH` may lack `/usr/sbin`.
const NFT: [&str; 3] = ["nft", "/usr/sbin/nft", "/sbin/nft"];

/// Whom plain VXLAN is accepted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanFilter {
    /// The VXLAN port.
    pub port: u16,
    /// The data-path addresses of the current peers.
    pub peers: BTreeSet<Ipv4Addr>,
}

/// What the filter has dropped since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    /// Datagrams.
    pub packets: u64,
    /// Their bytes (IP headers included).
    pub bytes: u64,
}

impl VxlanFilter {
    /// The `nft` script that makes the table hold exactly this filter, whatever it held before
    /// (the counter keeps counting).
    pub fn script(&self) -> String {
        let mut s = format!(
            "table ip {TABLE} {{\n\
             \tset vxlan_peers {{ type ipv4_addr; }}\n\
             \tcounter vxlan_refused {{ }}\n\
             \tchain vxlan_in {{ type filter hook prerouting priority raw; policy accept; }}\n\
             }}\n\
             flush set ip {TABLE} vxlan_peers\n\
             flush chain ip {TABLE} vxlan_in\n"
        );
        if !self.peers.is_empty() {
            let peers: Vec<String> = self.peers.iter().map(Ipv4Addr::to_string).collect();
            let _ = writeln!(
                s,
                "add element ip {TABLE} vxlan_peers {{ {} }}",
                peers.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "add rule ip {TABLE} vxlan_in udp dport {} fib daddr type local ip saddr != @vxlan_peers counter name vxlan_refused drop",
            self.port
        );
        s
    }
}

/// The `nft` script that removes the table, whether it exists or not.
fn removal_script() -> String {
    format!("table ip {TABLE} {{ }}\ndelete table ip {TABLE}\n")
}

/// Runs `nft ARGS` in the calling process's network namespace, `input` on its standard input;
/// its standard output. `Ok(None)` when nftables is not installed.
pub(crate) async fn nft(args: &[&str], input: &str) -> io::Result<Option<Vec<u8>>> {
    for program in NFT {
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other?,
        };
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(input.as_bytes()).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "nft {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        return Ok(Some(out.stdout));
    }
    Ok(None)
}

/// Makes the node's namespace hold `filter`, or no filter at all.
pub(crate) async fn install(filter: Option<&VxlanFilter>) -> io::Result<()> {
    match filter {
        Some(f) => match nft(&["-f", "-"], &f.script()).await? {
            Some(_) => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "nft is not installed: plain overlay networks need nftables to accept VXLAN from \
                 peers only (apt-get install nftables)",
            )),
        },
        // Without nftables there is no table to remove.
        None => nft(&["-f", "-"], &removal_script()).await.map(drop),
    }
}

/// What the filter has dropped, read from the kernel (the table must exist); `None` without
/// nftables.
pub(crate) async fn refused() -> io::Result<Option<Refused>> {
    let Some(out) = nft(&["-j", "list", "counter", "ip", TABLE, "vxlan_refused"], "").await? else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_slice(&out).map_err(io::Error::other)?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| {
            let c = &o["counter"];
            Some(Refused {
                packets: c["packets"].as_u64()?,
                bytes: c["bytes"].as_u64()?,
            })
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_replaces_the_peers_and_the_rule_in_one_transaction() {
        let filter = VxlanFilter {
            port: 4789,
            peers: BTreeSet::from([Ipv4Addr::new(172, 21, 1, 13), Ipv4Addr::new(172, 21, 1, 12)]),
        };
        let script = filter.script();
        assert!(
            script
                .contains("add element ip shoal_overlay vxlan_peers { 172.21.1.12, 172.21.1.13 }"),
            "{script}"
        );
        assert!(script.contains(
            "udp dport 4789 fib daddr type local ip saddr != @vxlan_peers counter name vxlan_refused drop"
        ));
        // Flushed before refilled: a peer that left is gone.
        let flush = script.find("flush set").unwrap();
        assert!(flush < script.find("add element").unwrap());
        // No peers: everything to the port is dropped, and the script is still valid (no empty
        // element list).
        let alone = VxlanFilter {
            peers: BTreeSet::new(),
            ..filter
        };
        assert!(!alone.script().contains("add element"));
        assert!(alone.script().contains("drop"));
    }
}
