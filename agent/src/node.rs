//! Facts about this node that `shoal info` shows.

use std::fs;

use crate::Config;

/// What the daemon knows about its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name (`--hostname`).
    pub name: String,
    /// The data root.
    pub data_root: String,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` of /etc/os-release.
    pub operating_system: String,
    /// `uname -m`.
    pub architecture: String,
    /// CPUs this process may run on.
    pub ncpu: u32,
    /// `MemTotal` of /proc/meminfo, in bytes.
    pub mem_total: u64,
}

impl NodeFacts {
    /// Reads the facts once, at start-up.
    pub fn gather(config: &Config) -> Self {
        let uname = nix::sys::utsname::uname().ok();
        let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
            uname
                .as_ref()
                .map(|u| f(u).to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        Self {
            name: config.hostname.clone(),
            data_root: config.data_root.display().to_string(),
            kernel_version: field(nix::sys::utsname::UtsName::release),
            operating_system: fs::read_to_string("/etc/os-release")
                .ok()
                .and_then(|s| os_release_pretty_name(&s))
                .unwrap_or_else(|| "Linux".into()),
            architecture: field(nix::sys::utsname::UtsName::machine),
            ncpu: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            mem_total: fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|s| meminfo_total_bytes(&s))
                .unwrap_or(0),
        }
    }
}

/// The host's name, for `--hostname`'s default.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

fn os_release_pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?;
        Some(value.trim_matches('"').to_string())
    })
}

fn meminfo_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_os_release_and_meminfo() {
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_release_pretty_name(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os_release_pretty_name("NAME=x\n"), None);
        let mem = "MemTotal:       24608128 kB\nMemFree:        1 kB\n";
        assert_eq!(meminfo_total_bytes(mem), Some(24_608_128 * 1024));
        assert_eq!(meminfo_total_bytes("MemFree: 1 kB\n"), None);
    }
}
