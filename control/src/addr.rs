//! `--advertise-addr`, `--listen-addr` and `--data-path-addr` as Docker takes them: an IP
//! address or an interface name, with an optional port. Without a value, the node's only
//! non-loopback address is used. If there are several, the node stops and asks for one.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The control-plane port (Docker's 2377).
pub const DEFAULT_PORT: u16 = 2377;

/// One of the node's interfaces, as address resolution sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
}

/// Why an address could not be resolved. The messages name the flag and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Nothing to choose from.
    #[error("this node has no non-loopback address to use: specify one with --{flag}")]
    NoAddress {
        /// The flag.
        flag: &'static str,
    },
    /// Several addresses and no choice made.
    #[error(
        "could not choose an IP address to use since this system has multiple addresses ({found}) - specify one with --{flag}"
    )]
    Ambiguous {
        /// The flag.
        flag: &'static str,
        /// The candidates, `addr on iface`.
        found: String,
    },
    /// An interface that does not exist.
    #[error("--{flag}: this node has no interface {name:?} (and it is not an IP address)")]
    NoInterface {
        /// The flag.
        flag: &'static str,
        /// The name given.
        name: String,
    },
    /// An interface without an address, or with several.
    #[error("--{flag}: interface {name:?} has {what}: specify the address itself")]
    InterfaceAddress {
        /// The flag.
        flag: &'static str,
        /// The interface.
        name: String,
        /// `no address` or `several addresses (...)`.
        what: String,
    },
    /// A port that is not one.
    #[error("--{flag}: {port:?} is not a port (1 to 65535)")]
    Port {
        /// The flag.
        flag: &'static str,
        /// What was given.
        port: String,
    },
}

/// A flag's value: an address or an interface, and maybe a port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target<'a> {
    Ip(IpAddr),
    Interface(&'a str),
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Interface(name) => write!(f, "{name}"),
        }
    }
}

/// Splits `value` into a target and an optional port: `IP`, `IP:PORT`, `[IPv6]:PORT`, `IPv6`,
/// `IFACE`, `IFACE:PORT`.
fn split<'a>(value: &'a str, flag: &'static str) -> Result<(Target<'a>, Option<u16>), AddrError> {
    let value = value.trim();
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok((Target::Ip(ip), None));
    }
    if let Ok(sa) = value.parse::<SocketAddr>() {
        return Ok((
            Target::Ip(sa.ip()),
            Some(checked_port(&sa.port().to_string(), flag)?),
        ));
    }
    match value.rsplit_once(':') {
        Some((host, port)) => {
            let port = checked_port(port, flag)?;
            match host.parse::<IpAddr>() {
                Ok(ip) => Ok((Target::Ip(ip), Some(port))),
                Err(_) => Ok((Target::Interface(host), Some(port))),
            }
        }
        None => Ok((Target::Interface(value), None)),
    }
}

fn checked_port(port: &str, flag: &'static str) -> Result<u16, AddrError> {
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(AddrError::Port {
            flag,
            port: port.to_owned(),
        }),
    }
}

fn usable(ip: &IpAddr) -> bool {
    !ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Resolves a flag's value (or its absence) on a node with `interfaces`; the port defaults to
/// `default_port`.
pub fn resolve(
    value: Option<&str>,
    interfaces: &[Interface],
    flag: &'static str,
    default_port: u16,
) -> Result<SocketAddr, AddrError> {
    let (ip, port) = match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => (only_address(interfaces, flag)?, None),
        Some(value) => match split(value, flag)? {
            (Target::Ip(ip), port) => (ip, port),
            (Target::Interface(name), port) => (interface_address(interfaces, name, flag)?, port),
        },
    };
    Ok(SocketAddr::new(ip, port.unwrap_or(default_port)))
}

fn only_address(interfaces: &[Interface], flag: &'static str) -> Result<IpAddr, AddrError> {
    let candidates: Vec<(IpAddr, &str)> = interfaces
        .iter()
        .flat_map(|i| {
            i.addrs
                .iter()
                .filter(|a| usable(a))
                .map(|a| (*a, i.name.as_str()))
        })
        .filter(|(a, _)| a.is_ipv4())
        .collect();
    match candidates[..] {
        [] => Err(AddrError::NoAddress { flag }),
        [(ip, _)] => Ok(ip),
        _ => Err(AddrError::Ambiguous {
            flag,
            found: candidates
                .iter()
                .map(|(a, i)| format!("{a} on {i}"))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn interface_address(
    interfaces: &[Interface],
    name: &str,
    flag: &'static str,
) -> Result<IpAddr, AddrError> {
    let Some(interface) = interfaces.iter().find(|i| i.name == name) else {
        return Err(AddrError::NoInterface {
            flag,
            name: name.to_owned(),
        });
    };
    let v4: Vec<IpAddr> = interface
        .addrs
        .iter()
        .filter(|a| a.is_ipv4())
        .copied()
        .collect();
    match v4[..] {
        [ip] => Ok(ip),
        [] => Err(AddrError::InterfaceAddress {
            flag,
            name: name.to_owned(),
            what: "no IPv4 address".into(),
        }),
        _ => Err(AddrError::InterfaceAddress {
            flag,
            name: name.to_owned(),
            what: format!(
                "several IPv4 addresses ({})",
                v4.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Vec<Interface> {
        let iface = |name: &str, addrs: &[&str]| Interface {
            name: name.into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        };
        vec![
            iface("lo", &["127.0.0.1", "::1"]),
            iface("eth0", &["10.0.0.5", "fe80::1"]),
            iface("eth1", &["192.168.7.5"]),
            iface("eth2", &["172.16.0.1", "172.16.0.2"]),
            iface("eth3", &[]),
        ]
    }

    #[test]
    fn values_resolve_as_docker_takes_them() {
        let n = node();
        let r = |v: &str| resolve(Some(v), &n, "advertise-addr", DEFAULT_PORT);
        assert_eq!(r("10.0.0.5").unwrap(), "10.0.0.5:2377".parse().unwrap());
        assert_eq!(
            r("10.0.0.5:4000").unwrap(),
            "10.0.0.5:4000".parse().unwrap()
        );
        assert_eq!(r("eth1").unwrap(), "192.168.7.5:2377".parse().unwrap());
        assert_eq!(r("eth1:4000").unwrap(), "192.168.7.5:4000".parse().unwrap());
        assert_eq!(
            r("[fd00::1]:4000").unwrap(),
            "[fd00::1]:4000".parse().unwrap()
        );
        assert_eq!(r("fd00::1").unwrap(), "[fd00::1]:2377".parse().unwrap());
    }

    #[test]
    fn without_a_value_the_only_address_is_used_or_the_node_asks_for_one() {
        let one = vec![node()[0].clone(), node()[1].clone()];
        assert_eq!(
            resolve(None, &one, "advertise-addr", DEFAULT_PORT).unwrap(),
            "10.0.0.5:2377".parse().unwrap()
        );
        let err = resolve(None, &node(), "advertise-addr", DEFAULT_PORT).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("multiple addresses"), "{text}");
        assert!(
            text.contains("10.0.0.5 on eth0") && text.contains("192.168.7.5 on eth1"),
            "{text}"
        );
        assert!(
            text.ends_with("specify one with --advertise-addr"),
            "{text}"
        );
        let lo = vec![node()[0].clone()];
        assert_eq!(
            resolve(None, &lo, "advertise-addr", DEFAULT_PORT),
            Err(AddrError::NoAddress {
                flag: "advertise-addr"
            })
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let n = node();
        let r = |v: &str| {
            resolve(Some(v), &n, "listen-addr", DEFAULT_PORT)
                .unwrap_err()
                .to_string()
        };
        assert!(r("eth9").contains("no interface \"eth9\""), "{}", r("eth9"));
        assert!(r("eth2").contains("several IPv4 addresses (172.16.0.1, 172.16.0.2)"));
        assert!(r("eth3").contains("no IPv4 address"));
        assert!(r("10.0.0.5:0").contains("\"0\" is not a port"));
        assert!(r("eth1:http").contains("\"http\" is not a port"));
        assert!(r("10.0.0.5:70000").contains("is not a port"));
    }
}
