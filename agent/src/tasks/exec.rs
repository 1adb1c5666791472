//! The `exec` executor: a task is `COMMAND ARG...` from the host's filesystem, run in a network
//! namespace of its own (`<data root>/tasks/netns/<task>`), in a session of its own, with its
//! output in `<data root>/tasks/<task>.log`. IMAGE is recorded, never pulled.
//!
//! The process is not tied to `shoald`: it keeps running when the daemon stops or is killed, and
//! the daemon finds it again by PID and start time when it comes back.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use shoal_api::service::Task;

use super::{Exit, Runtime};

/// How long a task has to stop after SIGTERM before it gets SIGKILL (Docker's default).
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// The namespace path of a task.
pub(crate) fn netns_path(dir: &Path, task: &str) -> PathBuf {
    dir.join("netns").join(task)
}

/// Creates the task's namespace.
pub(crate) async fn prepare(dir: &Path, task: &Task) -> Result<Runtime, String> {
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
    runtime: &mut Runtime,
) -> Result<tokio::process::Child, String> {
    let spec = &task.spec.container_spec;
    let mut words = spec.command.iter().chain(spec.args.iter());
    let Some(program) = words.next() else {
        return Err(
            "the exec executor runs COMMAND from the host, and the service has none".into(),
        );
    };
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
    let resolv_c = std::ffi::CString::new(resolv.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} holds a NUL byte", resolv.display()))?;
    let log_path = dir.join(format!("{}.log", task.id));
    let log = crate::durable::private_file()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let err_log = log
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
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
    let fd = ns.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls are made: setns(2), setsid(2),
    // unshare(2), mount(2) and umask(2), on a descriptor opened before the fork and kept open by
    // `ns` until spawn returns, and on C strings made before the fork and kept by the closure.
    unsafe {
        command.pre_exec(move || {
            let check = |rc: libc::c_int| match rc {
                0.. => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            };
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
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
                resolv_c.as_ptr(),
                c"/etc/resolv.conf".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            // The task's files get the usual modes, not shoald's private 077.
            libc::umask(0o022);
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| format!("starting {program:?}: {e}"))?;
    drop(ns);
    let pid = child.id().unwrap_or_default();
    runtime.pid = pid;
    runtime.start_time = start_time(pid).unwrap_or_default();
    Ok(child)
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

/// Stops the task's process group: SIGTERM, then SIGKILL after [`STOP_GRACE`].
pub(crate) async fn stop(runtime: &Runtime) {
    if !alive(runtime) {
        return;
    }
    let group = Pid::from_raw(runtime.pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
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

/// Removes the task's namespace and its resolv.conf.
pub(crate) fn cleanup(runtime: &Runtime) {
    if !runtime.netns.as_os_str().is_empty() {
        let _ = std::fs::remove_file(resolv_conf_path(&runtime.netns));
    }
    if !runtime.netns.as_os_str().is_empty()
        && let Err(e) = shoal_dataplane::overlay::netns::remove(&runtime.netns)
    {
        tracing::warn!(error = %e, "removing a task's network namespace");
    }
}
