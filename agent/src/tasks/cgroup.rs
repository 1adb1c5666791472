//! A cgroup of an exec task's own, holding its `--limit-cpu`, `--limit-memory` and
//! `--limit-pids`: `shoal-<task>` under the cgroup v2 hierarchy when it offers the `cpu`,
//! `memory` and `pids` controllers, else under each cgroup v1 controller's hierarchy (hosts
//! that still mount v1, as this lab's machine does). The task's process joins it between fork
//! and exec, so whatever it starts is bounded too; the cgroup is removed when the task ends.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use shoal_api::service::Resources;

/// The CFS period a CPU limit is expressed over (Docker's).
const CPU_PERIOD_US: u64 = 100_000;

/// The controllers a limit needs.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Where the limits of `task` live.
#[derive(Debug, Clone)]
pub(crate) enum Cgroup {
    /// One directory in the unified hierarchy.
    V2(PathBuf),
    /// One directory per v1 controller: (controller, directory).
    V1(Vec<(&'static str, PathBuf)>),
}

/// The mount points of cgroup hierarchies: the v2 root, and each v1 controller's.
fn mounts() -> (Option<PathBuf>, Vec<(String, PathBuf)>) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in info.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = before.split_whitespace().nth(4) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        match (fields.next(), fields.nth(1)) {
            (Some("cgroup2"), _) => v2 = Some(PathBuf::from(mount_point)),
            (Some("cgroup"), Some(options)) => {
                for option in options.split(',') {
                    if CONTROLLERS.contains(&option) {
                        v1.push((option.to_owned(), PathBuf::from(mount_point)));
                    }
                }
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// The CFS quota (µs per [`CPU_PERIOD_US`]) of a limit in billionths of a CPU, at least 1 ms.
fn cpu_quota_us(nano_cpus: u64) -> u64 {
    (nano_cpus / 1_000_000_000 * CPU_PERIOD_US + nano_cpus % 1_000_000_000 / 10_000).max(1_000)
}

fn name(task: &str) -> String {
    format!("shoal-{task}")
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

impl Cgroup {
    /// Creates the task's cgroup with `limits` set. `None` when there is no limit to set.
    pub(crate) fn create(task: &str, limits: &Resources) -> Result<Option<Cgroup>, String> {
        if limits.is_empty() {
            return Ok(None);
        }
        let (v2, v1) = mounts();
        let offered = |root: &Path| {
            let controllers =
                fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            CONTROLLERS
                .iter()
                .all(|c| controllers.split_whitespace().any(|have| have == *c))
        };
        if let Some(root) = v2.filter(|root| offered(root)) {
            // Children of the root may only use the controllers the root hands down.
            let _ = write(&root.join("cgroup.subtree_control"), "+cpu +memory +pids");
            let dir = root.join(name(task));
            make(&dir)?;
            let cgroup = Cgroup::V2(dir.clone());
            let set = || -> Result<(), String> {
                if limits.nano_cpus > 0 {
                    let quota = cpu_quota_us(limits.nano_cpus);
                    write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                if limits.memory_bytes > 0 {
                    write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                }
                if limits.pids > 0 {
                    write(&dir.join("pids.max"), &limits.pids.to_string())?;
                }
                Ok(())
            };
            return match set() {
                Ok(()) => Ok(Some(cgroup)),
                Err(e) => {
                    cgroup.remove();
                    Err(e)
                }
            };
        }
        let find = |controller: &str| {
            v1.iter()
                .find(|(c, _)| c == controller)
                .map(|(_, root)| root.join(name(task)))
                .ok_or_else(|| {
                    format!(
                        "this node has no cgroup controller {controller:?} (neither in cgroup v2 nor v1) to limit the task with"
                    )
                })
        };
        let mut dirs = Vec::new();
        let mut wanted: Vec<(&'static str, &'static str, String)> = Vec::new();
        if limits.nano_cpus > 0 {
            let quota = cpu_quota_us(limits.nano_cpus);
            wanted.push(("cpu", "cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
            wanted.push(("cpu", "cpu.cfs_quota_us", quota.to_string()));
        }
        if limits.memory_bytes > 0 {
            wanted.push((
                "memory",
                "memory.limit_in_bytes",
                limits.memory_bytes.to_string(),
            ));
        }
        if limits.pids > 0 {
            wanted.push(("pids", "pids.max", limits.pids.to_string()));
        }
        let result = (|| {
            for (controller, file, value) in &wanted {
                if !dirs.iter().any(|(c, _)| c == controller) {
                    let dir = find(controller)?;
                    make(&dir)?;
                    dirs.push((*controller, dir));
                }
                let (_, dir) = dirs
                    .iter()
                    .find(|(c, _)| c == controller)
                    .expect("made above");
                write(&dir.join(file), value)?;
            }
            Ok(())
        })();
        let cgroup = Cgroup::V1(dirs);
        match result {
            Ok(()) => Ok(Some(cgroup)),
            Err(e) => {
                cgroup.remove();
                Err(e)
            }
        }
    }

    /// The `cgroup.procs` files to write `0` to (the writer joins), opened before the fork.
    pub(crate) fn procs(&self) -> Result<Vec<OwnedFd>, String> {
        let dirs: Vec<&Path> = match self {
            Cgroup::V2(dir) => vec![dir],
            Cgroup::V1(dirs) => dirs.iter().map(|(_, d)| d.as_path()).collect(),
        };
        dirs.into_iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| format!("opening {}: {e}", path.display()))
            })
            .collect()
    }

    /// Removes the cgroup, killing what is left in it.
    pub(crate) fn remove(&self) {
        match self {
            Cgroup::V2(dir) => remove_dir(dir),
            Cgroup::V1(dirs) => {
                for (_, dir) in dirs {
                    remove_dir(dir);
                }
            }
        }
    }

    /// Removes whatever cgroup `task` had, found by name (after a restart of the daemon).
    pub(crate) fn remove_for(task: &str) {
        let (v2, v1) = mounts();
        for root in v2.into_iter().chain(v1.into_iter().map(|(_, root)| root)) {
            remove_dir(&root.join(name(task)));
        }
    }
}

/// Removes a task's cgroup directory. Processes still in it (a child that left the task's
/// process group, one still exiting) are killed first: the task ended, so must they.
fn remove_dir(dir: &Path) {
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    // SAFETY: kill(2) of a process in the ended task's cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "removing a task's cgroup");
                return;
            }
            _ => return,
        }
    }
    tracing::warn!(cgroup = %dir.display(), "a task's cgroup stays busy: not removed");
}

fn make(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("creating the task's cgroup {}: {e}", dir.display())),
    }
}

/// Between fork and exec: moves the calling process into each cgroup whose `cgroup.procs` is
/// open on `fds`. Only write(2) on descriptors opened before the fork: async-signal-safe.
pub(crate) fn join(fds: &[OwnedFd]) -> std::io::Result<()> {
    for fd in fds {
        // SAFETY: write(2) of a static buffer to a descriptor owned by the caller.
        let rc = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
