//! The `exec` executor: a task is `COMMAND ARG...` from the host's filesystem, run in a network
//! namespace of its own (`<data root>/tasks/netns/<task>`), in a session and a mount namespace
//! of its own (with its bind and tmpfs mounts), in a cgroup of its own when it has limits, with
//! its output in its log (see [`super::logs`]). IMAGE is recorded, never pulled.
//!
//! The process is not tied to `shoald`: it keeps running when the daemon stops or is killed, and
//! the daemon finds it again by PID and start time when it comes back.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::ffi::CString;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use shoal_api::service::{ContainerSpec, MountKind, Task};

use super::cgroup::Cgroup;
use super::{Exit, Runtime};

/// How long a task has to stop after SIGTERM before it gets SIGKILL (Docker's default).
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// The namespace path of a task.
pub(crate) fn netns_path(dir: &Path, task: &str) -> PathBuf {
    dir.join("netns").join(task)
}

/// Checks what the task asks of this node (its mounts, user, options), then creates its
/// namespace. What cannot be had here rejects the task.
pub(crate) async fn prepare(dir: &Path, task: &Task) -> Result<Runtime, String> {
    let spec = &task.spec.container_spec;
    if spec.init == Some(true) {
        return Err(
            "--init needs the docker executor (an exec task runs its command as is)".into(),
        );
    }
    mounts(spec)?;
    user(&spec.user)?;
    let netns = netns_path(dir, &task.id);
    shoal_dataplane::overlay::task_namespace(&netns)
        .await
        .map_err(|e| format!("creating the task's network namespace: {e}"))?;
    Ok(Runtime {
        netns,
        ..Default::default()
    })
}

/// Starts the task's process in its namespace; the child to wait for.
pub(crate) fn start(
    dir: &Path,
    task: &Task,
    env: &[(String, String)],
    files: Option<super::files::ExecFiles>,
    runtime: &mut Runtime,
) -> Result<tokio::process::Child, String> {
    let spec = &task.spec.container_spec;
    let mut words = spec.command.iter().chain(spec.args.iter());
    let Some(program) = words.next() else {
        return Err(
            "the exec executor runs COMMAND from the host, and the service has none".into(),
        );
    };
    let mounts = mounts(spec)?;
    let hostname = CString::new(spec.hostname.as_bytes())
        .map_err(|_| "the hostname holds a NUL byte".to_owned())?;
    let set_hostname = !spec.hostname.is_empty();
    let read_only = spec.read_only;
    let user = user(&spec.user)?;
    let cgroup = Cgroup::create(&task.id, &task.spec.resources.limits)?;
    let procs = cgroup
        .as_ref()
        .map(Cgroup::procs)
        .transpose()?
        .unwrap_or_default();
    let ns = std::fs::File::open(&runtime.netns)
        .map_err(|e| format!("opening {}: {e}", runtime.netns.display()))?;
    // The task's /etc/resolv.conf names the embedded DNS server: a file of its own, bound over
    // the host's in a mount namespace of its own.
    let resolv = resolv_conf_path(&runtime.netns);
    std::fs::write(
        &resolv,
        crate::dns::task_resolv_conf(&crate::dns::host_resolv_conf()),
    )
    .and_then(|()| {
        // Readable by whatever user the task's processes become.
        std::fs::set_permissions(&resolv, std::os::unix::fs::PermissionsExt::from_mode(0o644))
    })
    .map_err(|e| format!("writing {}: {e}", resolv.display()))?;
    let resolv_c = CString::new(resolv.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} holds a NUL byte", resolv.display()))?;
    let (log, err_log) = super::logs::capture(dir, &task.id)?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(words)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .kill_on_drop(false);
    let dir = CString::new(spec.dir.as_bytes())
        .map_err(|_| "the working directory holds a NUL byte".to_owned())?;
    let setup = ChildSetup {
        procs,
        netns: ns.as_raw_fd(),
        resolv_conf: resolv_c,
        mounts,
        files,
        read_only,
        set_hostname,
        hostname,
        dir,
        user,
    };
    // SAFETY: between fork and exec the child only runs `ChildSetup::apply`, which makes
    // async-signal-safe calls alone, on descriptors opened before the fork and kept open by
    // `ns` and `procs` until spawn returns, and on C strings made before the fork and kept by
    // the closure.
    unsafe {
        command.pre_exec(move || setup.apply());
    }
    let child = command.spawn().map_err(|e| {
        if let Some(cgroup) = &cgroup {
            cgroup.remove();
        }
        format!("starting {program:?}: {e}")
    })?;
    drop(ns);
    let pid = child.id().unwrap_or_default();
    runtime.pid = pid;
    runtime.start_time = start_time(pid).unwrap_or_default();
    Ok(child)
}

/// What the task's process sets up between fork and exec, all made before the fork.
struct ChildSetup {
    /// The task's cgroup's `cgroup.procs` to join (none without limits).
    procs: Vec<OwnedFd>,
    /// The task's network namespace (kept open by the caller until spawn returns).
    netns: RawFd,
    /// The task's own `/etc/resolv.conf`, bound over the host's.
    resolv_conf: CString,
    /// The task's bind and tmpfs mounts.
    mounts: Vec<PreparedMount>,
    /// The task's configs and secrets.
    files: Option<super::files::ExecFiles>,
    /// Whether the root mount is made read-only.
    read_only: bool,
    /// Whether the task gets a UTS namespace with `hostname`.
    set_hostname: bool,
    /// The task's hostname.
    hostname: CString,
    /// The working directory (empty: `/`).
    dir: CString,
    /// The user and group to become.
    user: Option<(u32, Option<u32>)>,
}

impl ChildSetup {
    /// Joins the task's cgroup and namespaces, makes its mounts and files, sets its hostname,
    /// directory, user and umask: async-signal-safe, for between fork and exec.
    fn apply(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| match rc {
            0.. => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        };
        // SAFETY: write(2), setns(2), setsid(2), unshare(2), mount(2), sethostname(2),
        // chdir(2), setgroups(2), setgid(2), setuid(2) and umask(2) on a descriptor and C
        // strings owned by `self` (or kept open by the caller), made before the fork.
        unsafe {
            super::cgroup::join(&self.procs)?;
            check(libc::setns(self.netns, libc::CLONE_NEWNET))?;
            check(libc::setsid())?;
            // A mount namespace of its own, whose mounts do not propagate back to the node's.
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                self.resolv_conf.as_ptr(),
                c"/etc/resolv.conf".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            for m in &self.mounts {
                m.apply()?;
            }
            if let Some(files) = &self.files {
                files.apply()?;
            }
            if self.read_only {
                // The root mount of the task's own namespace; its other mounts stay as they are.
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    std::ptr::null(),
                ))?;
            }
            if self.set_hostname {
                check(libc::unshare(libc::CLONE_NEWUTS))?;
                check(libc::sethostname(
                    self.hostname.as_ptr(),
                    self.hostname.as_bytes().len(),
                ))?;
            }
            // In the task's mounts, and before the user changes (std would do both before
            // this closure).
            if !self.dir.as_bytes().is_empty() {
                check(libc::chdir(self.dir.as_ptr()))?;
            }
            if let Some((uid, gid)) = self.user {
                check(libc::setgroups(0, std::ptr::null()))?;
                if let Some(gid) = gid {
                    check(libc::setgid(gid))?;
                }
                check(libc::setuid(uid))?;
            }
            // The task's files get the usual modes, not shoald's private 077.
            libc::umask(0o022);
        }
        Ok(())
    }
}

/// How the child ended.
pub(crate) async fn wait(child: &mut tokio::process::Child) -> Exit {
    match child.wait().await {
        Ok(status) => match status.code() {
            Some(code) => Exit::Code(code),
            None => Exit::Signal(
                std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or_default(),
            ),
        },
        Err(e) => Exit::Unknown(format!("waiting for the task's process: {e}")),
    }
}

/// The process's start time (clock ticks since boot), field 22 of `/proc/PID/stat`.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// Whether the process `runtime` names is still the one started (not a reused PID) and alive.
pub(crate) fn alive(runtime: &Runtime) -> bool {
    if runtime.pid == 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", runtime.pid)).unwrap_or_default();
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..i + 3))
        .is_some_and(|s| s == "Z");
    !zombie && start_time(runtime.pid) == Some(runtime.start_time)
}

/// Waits until a process that is not this daemon's child is gone.
pub(crate) async fn wait_adopted(runtime: &Runtime) {
    while alive(runtime) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How a task is stopped: `--stop-signal` (SIGTERM), then SIGKILL after `--stop-grace-period`
/// ([`STOP_GRACE`]).
pub(crate) fn stop_how(spec: &ContainerSpec) -> (Signal, Duration) {
    let signal = shoal_api::service::signal_number(&spec.stop_signal)
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .unwrap_or(Signal::SIGTERM);
    let grace = spec
        .stop_grace_period
        .map_or(STOP_GRACE, Duration::from_nanos);
    (signal, grace)
}

/// Stops the task's process group: `signal`, then SIGKILL after `grace`.
pub(crate) async fn stop(runtime: &Runtime, (signal, grace): (Signal, Duration)) {
    if !alive(runtime) {
        return;
    }
    let group = Pid::from_raw(runtime.pid as i32);
    let _ = killpg(group, signal);
    let deadline = tokio::time::Instant::now() + grace;
    while alive(runtime) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(runtime) {
        let _ = killpg(group, Signal::SIGKILL);
    }
}

/// The task's `/etc/resolv.conf` (beside its namespace's mount point).
fn resolv_conf_path(netns: &Path) -> PathBuf {
    netns.with_extension("resolv.conf")
}

/// Removes the task's namespace, its resolv.conf and its cgroup.
pub(crate) fn cleanup(runtime: &Runtime) {
    if !runtime.netns.as_os_str().is_empty() {
        let _ = std::fs::remove_file(resolv_conf_path(&runtime.netns));
    }
    if let Some(task) = runtime.netns.file_name().and_then(|n| n.to_str()) {
        Cgroup::remove_for(task);
        // <data root>/tasks/netns/<task>: the tasks' directory is two levels up.
        if let Some(tasks_dir) = runtime.netns.parent().and_then(Path::parent) {
            super::logs::ended(tasks_dir, task);
        }
    }
    if !runtime.netns.as_os_str().is_empty()
        && let Err(e) = shoal_dataplane::overlay::netns::remove(&runtime.netns)
    {
        tracing::warn!(error = %e, "removing a task's network namespace");
    }
}

/// One `--mount` of an exec task, ready to be made between fork and exec.
struct PreparedMount {
    source: CString,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
    read_only: bool,
}

impl PreparedMount {
    /// mount(2), and a read-only remount of a bind: async-signal-safe.
    fn apply(&self) -> std::io::Result<()> {
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        let check = |rc: libc::c_int| match rc {
            0.. => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        };
        // SAFETY: mount(2) on C strings owned by `self`, made before the fork.
        unsafe {
            check(libc::mount(
                self.source.as_ptr(),
                self.target.as_ptr(),
                ptr(&self.fstype),
                self.flags,
                ptr(&self.data).cast(),
            ))?;
            if self.read_only {
                check(libc::mount(
                    std::ptr::null(),
                    self.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | (self.flags & libc::MS_REC),
                    std::ptr::null(),
                ))?;
            }
        }
        Ok(())
    }
}

/// The task's bind and tmpfs mounts, checked on this node: an exec task shares the node's file
/// system, so both the source of a bind and the target must exist here.
fn mounts(spec: &ContainerSpec) -> Result<Vec<PreparedMount>, String> {
    let c = |s: &str| CString::new(s).map_err(|_| format!("the mount path {s:?} holds a NUL byte"));
    spec.mounts
        .iter()
        .map(|m| {
            if !Path::new(&m.target).exists() {
                return Err(format!(
                    "invalid mount config for type {:?}: the target {} does not exist on this node (an exec task shares the node's file system)",
                    m.kind.name(),
                    m.target
                ));
            }
            match m.kind {
                MountKind::Bind => {
                    if !Path::new(&m.source).exists() {
                        return Err(format!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {}",
                            m.source
                        ));
                    }
                    Ok(PreparedMount {
                        source: c(&m.source)?,
                        target: c(&m.target)?,
                        fstype: None,
                        flags: libc::MS_BIND | libc::MS_REC,
                        data: None,
                        read_only: m.read_only,
                    })
                }
                MountKind::Tmpfs => {
                    let options = m.tmpfs_options.clone().unwrap_or_default();
                    let mut data = format!("mode={:o}", if options.mode == 0 { 0o1777 } else { options.mode });
                    if options.size_bytes > 0 {
                        data.push_str(&format!(",size={}", options.size_bytes));
                    }
                    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
                    if m.read_only {
                        flags |= libc::MS_RDONLY;
                    }
                    Ok(PreparedMount {
                        source: c("tmpfs")?,
                        target: c(&m.target)?,
                        fstype: Some(c("tmpfs")?),
                        flags,
                        data: Some(c(&data)?),
                        read_only: false,
                    })
                }
                MountKind::Volume => Err(format!(
                    "invalid mount config for type \"volume\" at {}: volumes need the docker executor (exec tasks take bind and tmpfs mounts)",
                    m.target
                )),
            }
        })
        .collect()
}

/// `--user` for an exec task: `uid[:gid]` or `name[:group]` of this node.
fn user(text: &str) -> Result<Option<(u32, Option<u32>)>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let (name, group) = match text.split_once(':') {
        Some((n, g)) => (n, Some(g)),
        None => (text, None),
    };
    let (uid, primary) = match name.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let found = nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    format!("unable to find user {name}: no matching entries in passwd file")
                })?;
            (found.uid.as_raw(), Some(found.gid.as_raw()))
        }
    };
    let gid = match group {
        None => primary,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?
                .gid
                .as_raw(),
        }),
    };
    Ok(Some((uid, gid)))
}
