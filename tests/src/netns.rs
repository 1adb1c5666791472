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
    in_host(netns, None, program)
}

/// Like [`in_netns`], but when `mount_ns` names a mount namespace (a lab node's, see
/// [`create_mount_ns`]) the child joins that one instead of taking a private one, so what the
/// program mounts (a daemon's network namespaces) outlives it, as on a real host.
pub fn in_host(
    netns: &str,
    mount_ns: Option<&Path>,
    program: impl AsRef<OsStr>,
) -> io::Result<Command> {
    let path = Netns::named(netns).path();
    let ns = File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    let mnt = mount_ns
        .map(|p| {
            File::open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", p.display())))
        })
        .transpose()?;
    let mut command = Command::new(program);
    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // (setns, unshare, mount, umount2) on data prepared before the fork: nothing allocates or
    // locks. `ns` and `mnt` are owned by the closure, so their descriptors are open until the
    // command is dropped (O_CLOEXEC closes them in the child at exec).
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
            if let Some(mnt) = &mnt {
                // The node's mount namespace already has the node's /sys.
                return check(libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS));
            }
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

/// Creates a persistent mount namespace for the network namespace `netns`, bound on `file`: a
/// copy of the host's mounts that receives the host's later mounts (`/run/netns`) but keeps its
/// own, with a `/sys` showing `netns`'s interfaces. Remove it with [`remove_mount_ns`].
pub fn create_mount_ns(netns: &str, file: &Path) -> io::Result<()> {
    // `unshare` itself stays in the host's mount namespace, where it binds the new one on `file`.
    let mut command = Command::new("unshare");
    command
        .arg(format!("--mount={}", file.display()))
        .args(["--propagation", "slave", "nsenter"])
        .arg(format!("--net={}", Netns::named(netns).path().display()))
        // A sysfs of the node's own network namespace hides the host's cgroup mounts: they are
        // held aside and moved back over it, so the node sees the host's cgroup hierarchies (v2,
        // and the v1 controllers where the host still mounts them) where the host has them.
        .args([
            "sh",
            "-c",
            "hold=$(mktemp -d /run/shoal-cgroups.XXXXXX) && mount --rbind /sys/fs/cgroup \"$hold\" \
             && umount -l /sys && mount -t sysfs sysfs /sys \
             && mount --move \"$hold\" /sys/fs/cgroup && rmdir \"$hold\"",
        ]);
    let output = command.output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "creating the mount namespace {}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Unmounts a mount namespace made by [`create_mount_ns`]; its mounts go with it once no process
/// is in it.
pub fn remove_mount_ns(file: &Path) -> io::Result<()> {
    let path =
        std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    let err = io::Error::last_os_error();
    if rc != 0 && !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
        return Err(io::Error::new(
            err.kind(),
            format!("unmounting {}: {err}", file.display()),
        ));
    }
    match fs::remove_file(file) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs `f` with the calling thread inside the named network namespace, then returns the thread
/// to where it was: sockets `f` opens belong to that namespace. (`shoal_dataplane::overlay::netns`
/// has the same for open namespaces; this crate cannot depend on the data plane, which embeds the
/// eBPF object, because xtask uses it before the eBPF toolchain is installed.)
pub fn within<T>(netns: &str, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    use nix::sched::{CloneFlags, setns};
    let target = File::open(Netns::named(netns).path())?;
    let home = File::open("/proc/thread-self/ns/net")?;
    setns(&target, CloneFlags::CLONE_NEWNET)?;
    let result = f();
    if let Err(e) = setns(&home, CloneFlags::CLONE_NEWNET) {
        panic!("cannot return to the original network namespace: {e}");
    }
    result
}
