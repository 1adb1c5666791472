//! Network namespaces kept alive by bind mounts (the way `ip netns add` and Docker do it), and
//! netlink connections and TUN devices opened inside them.
//!
//! A socket belongs to the namespace of the thread that created it. To open one elsewhere, the
//! calling thread enters the namespace with `setns(2)`, creates the socket and returns at once,
//! with nothing in between that could yield to other work.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// `NSFS_MAGIC` from `linux/magic.h`.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Opens `path` if it is a mounted network namespace; `None` if it does not exist or is only the
/// empty file a mount point leaves behind (as after a reboot).
pub fn open(path: &Path) -> io::Result<Option<File>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let stat = nix::sys::statfs::fstatfs(&file).map_err(io::Error::from)?;
    Ok((stat.filesystem_type().0 as i64 == NSFS_MAGIC).then_some(file))
}

/// Creates a new network namespace and mounts it on `path` (created, or reused when it is a
/// stale mount point).
pub fn create(path: &Path) -> io::Result<File> {
    if let Some(existing) = open(path)? {
        return Ok(existing);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::create(path)?;
    let target = path.to_owned();
    // A fresh thread: it leaves its namespace behind when it ends.
    let made = std::thread::spawn(move || -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(io::Error::new(
            e.kind(),
            format!("creating network namespace {}: {e}", path.display()),
        ));
    }
    open(path)?.ok_or_else(|| {
        io::Error::other(format!(
            "{} is not a namespace after mounting it",
            path.display()
        ))
    })
}

/// Mounts the namespace `source` names (another process's, e.g. `/proc/<pid>/ns/net` of a
/// container) on `path`, so it can be found and entered by path like the ones [`create`] makes.
pub fn bind(source: &Path, path: &Path) -> io::Result<File> {
    if let Some(existing) = open(path)? {
        return Ok(existing);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::create(path)?;
    if let Err(e) = mount(
        Some(source),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(path);
        return Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("mounting {} on {}: {e}", source.display(), path.display()),
        ));
    }
    open(path)?
        .ok_or_else(|| io::Error::other(format!("{} is not a network namespace", source.display())))
}

/// Unmounts and removes a namespace's mount point; the namespace goes once nothing uses it.
pub fn remove(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("unmounting {}: {e}", path.display()),
            ));
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs `f` with the calling thread inside `netns`, then returns the thread to where it was.
pub fn within<T>(netns: &impl AsFd, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let home: OwnedFd = File::open("/proc/thread-self/ns/net")?.into();
    setns(netns, CloneFlags::CLONE_NEWNET)?;
    let result = f();
    if let Err(e) = setns(&home, CloneFlags::CLONE_NEWNET) {
        // A thread stuck in the wrong namespace would misroute everything it does later.
        panic!(
            "cannot return to the original network namespace (fd {}): {e}",
            home.as_raw_fd()
        );
    }
    result
}

/// A netlink handle inside `netns` (`None`: the caller's own). Must be called within a tokio
/// runtime: the connection runs as a task on it.
pub fn connect(netns: Option<&File>) -> io::Result<rtnetlink::Handle> {
    let open = || {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(handle)
    };
    match netns {
        None => open(),
        Some(ns) => within(ns, open),
    }
}
