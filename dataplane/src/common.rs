//! What the data plane's siblings (overlays, the routing mesh, the way out) share: MAC
//! addresses, the facts about the node a desired state is checked against, and the problems a
//! check finds.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Docker's derivation: `02:42` followed by the IPv4 address.
    pub fn from_ip(ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        Mac([0x02, 0x42, a, b, c, d])
    }

    pub(crate) fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is not a MAC address (want six hex pairs like 02:42:0a:00:00:02)");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(mac))
    }
}

impl From<Mac> for String {
    fn from(mac: Mac) -> String {
        mac.to_string()
    }
}

impl TryFrom<String> for Mac {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// What validation needs to know about the node it runs on.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// The node namespace's interfaces.
    pub interfaces: Vec<HostInterface>,
    /// The CPUs the process may run on, in order (`sched_getaffinity`).
    pub cpus: Vec<usize>,
}

/// One interface of the node.
#[derive(Debug, Clone)]
pub struct HostInterface {
    /// Its name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its IPv4 addresses.
    pub addrs: Vec<Ipv4Addr>,
}

/// One problem with a desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The path of the field, e.g. `networks[1].vni`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// A desired state that cannot be applied: every problem found, nothing applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidState {
    /// The problems, in the order of the fields.
    pub problems: Vec<Problem>,
}

impl fmt::Display for InvalidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid data-plane state (nothing was applied):")?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

/// Problems found so far.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl Problems {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}
