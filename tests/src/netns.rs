//! Named network namespaces, as `ip netns` keeps them (`/run/netns/NAME`), and running processes
//! inside them.

use std::{
    ffi::OsStr,
    fs::{self, File},
    io,
    os::{
        fd::AsRawFd,
        unix::{fs::MetadataExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::Command,
};

/// Where `ip netns` mounts named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// A named network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// The namespace called `name` (which may or may not exist).
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its mount point.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Whether it exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Every named namespace on the machine.
    pub fn list() -> Vec<String> {
        let Ok(entries) = fs::read_dir(NETNS_DIR) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// The processes whose network namespace is this one (found by the namespace's inode, as
    /// `ip netns pids` does).
    pub fn pids(&self) -> Vec<i32> {
        let Ok(ns) = fs::metadata(self.path()) else {
            return Vec::new();
        };
        let Ok(procs) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        let me = std::process::id() as i32;
        procs
            .filter_map(|entry| {
                let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let net = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
                (net.ino() == ns.ino() && net.dev() == ns.dev() && pid != me).then_some(pid)
            })
            .collect()
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> io::Result<Command> {
        in_netns(&self.name, program)
    }
}

/// The names of the links in `netns` (the root namespace when `None`), enslaved to `master` when
/// given, sorted, as `ip -br link` lists them (without the `@peer` suffix).
pub fn links(netns: Option<&str>, master: Option<&str>) -> io::Result<Vec<String>> {
    let mut command = Command::new("ip");
    if let Some(ns) = netns {
        command.args(["-n", ns]);
    }
    command.args(["-br", "link", "show"]);
    if let Some(master) = master {
        command.args(["master", master]);
    }
    let out = command.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// A command that runs `program` inside the named network namespace `netns`, as
/// `ip netns exec` would, without the wrapper process: between fork and exec the child joins the
/// namespace with `setns(2)`, then takes a private mount namespace and mounts a fresh `/sys`, so
/// `/sys/class/net` shows the namespace's own interfaces.
pub fn in_netns(netns: &str, program: impl AsRef<OsStr>) -> io::Result<Command> {
    let path = Netns::named(netns).path();
    let ns = File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    let mut command = Command::new(program);
    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // (setns, unshare, mount, umount2) on data prepared before the fork: nothing allocates or
    // locks. `ns` is owned by the closure, so its descriptor is open until the command is
    // dropped (O_CLOEXEC closes it in the child at exec).
    unsafe {
        command.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            };
            check(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted below propagates back to the host.
            check(libc::mount(
                c"".as_ptr(),
                c"/".as_ptr(),
                c"none".as_ptr(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            ))?;
            // The old /sys may be busy; a lazy unmount is what `ip netns exec` does too.
            libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH);
            check(libc::mount(
                c"sysfs".as_ptr(),
                c"/sys".as_ptr(),
                c"sysfs".as_ptr(),
                0,
                std::ptr::null(),
            ))
        });
    }
    Ok(command)
}
