//! A task's secrets and configs as files: secrets at `/run/secrets/<target>`, configs at their
//! target path, each with its owner and mode, read-only, on a tmpfs (in memory: their data never
//! touches this node's disks).
//!
//! The data comes with the node's assignment, for the tasks it runs only, and is held in memory.
//! - **exec tasks** (the node's file system, a mount namespace of their own): between fork and
//!   exec the child mounts a tmpfs on `/run/secrets` and writes the secrets there, then remounts
//!   it read-only; each config is written to a staging tmpfs and bound onto its target, which must
//!   exist on the node. Nothing shows in the node's own mounts (`/run/secrets` is created empty
//!   on the node if missing, as a mount point).
//! - **docker tasks**: the files are written under `/dev/shm/shoal-task-files/<task>/` (a tmpfs
//!   the engine sees too, 0700) and bound read-only into the container; removed with the task.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use shoal_api::secret::{DataKind, Payload};
use shoal_api::service::Task;

/// Where secrets appear in a task.
pub(crate) const SECRETS_DIR: &str = "/run/secrets";
/// Where a docker task's files are kept on the node, one directory per task.
const HOST_DIR: &str = "/dev/shm/shoal-task-files";

/// One secret or config file of a task.
#[derive(Clone)]
pub(crate) struct TaskFile {
    /// Secret or config.
    pub kind: DataKind,
    /// Its name (for messages).
    pub name: String,
    /// A secret's file name under [`SECRETS_DIR`]; a config's absolute path.
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for TaskFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFile")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The files of `task`, with the data from `payloads` (the node's assignment); a reference whose
/// data did not come is an error naming it.
pub(crate) fn for_task(task: &Task, payloads: &[Payload]) -> Result<Vec<TaskFile>, String> {
    let spec = &task.spec.container_spec;
    let refs = spec
        .secrets
        .iter()
        .map(|r| (DataKind::Secret, &r.secret_id, &r.secret_name, &r.file))
        .chain(
            spec.configs
                .iter()
                .map(|r| (DataKind::Config, &r.config_id, &r.config_name, &r.file)),
        );
    refs.map(|(kind, id, name, file)| {
        let payload = payloads
            .iter()
            .find(|p| p.kind == kind && &p.id == id)
            .ok_or_else(|| format!("the data of {kind} {name} did not reach this node"))?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(&payload.data)
            .map_err(|e| format!("the data of {kind} {name} is not base64: {e}"))?;
        let number = |text: &str, what: &str| {
            if text.is_empty() {
                Ok(0)
            } else {
                text.parse::<u32>()
                    .map_err(|_| format!("{kind} {name}: invalid {what} {text:?}"))
            }
        };
        Ok(TaskFile {
            kind,
            name: name.clone(),
            target: file.name.clone(),
            uid: number(&file.uid, "uid")?,
            gid: number(&file.gid, "gid")?,
            mode: file.mode,
            data,
        })
    })
    .collect()
}

fn c(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("the path {text:?} holds a NUL byte"))
}

/// One file to write between fork and exec.
struct Prepared {
    path: CString,
    /// A config's target, bound over by `path`.
    target: Option<CString>,
    uid: u32,
    gid: u32,
    mode: u32,
    data: Vec<u8>,
}

/// An exec task's files, ready to be made in its mount namespace between fork and exec.
pub(crate) struct ExecFiles {
    dir: CString,
    configs: Vec<Prepared>,
    secrets: Vec<Prepared>,
}

impl std::fmt::Debug for ExecFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecFiles")
            .field("configs", &self.configs.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// Checks what an exec task's files need of the node (a config's target must exist: the task
/// shares the node's file system) and makes `/run/secrets` as a mount point if missing.
pub(crate) fn prepare_exec(files: &[TaskFile]) -> Result<ExecFiles, String> {
    let mut prepared = ExecFiles {
        dir: c(SECRETS_DIR)?,
        configs: Vec::new(),
        secrets: Vec::new(),
    };
    if files.is_empty() {
        return Ok(prepared);
    }
    std::fs::create_dir_all(SECRETS_DIR)
        .map_err(|e| format!("creating {SECRETS_DIR} as a mount point: {e}"))?;
    for (n, file) in files.iter().enumerate() {
        match file.kind {
            DataKind::Secret => prepared.secrets.push(Prepared {
                path: c(&format!("{SECRETS_DIR}/{}", file.target))?,
                target: None,
                uid: file.uid,
                gid: file.gid,
                mode: file.mode,
                data: file.data.clone(),
            }),
            DataKind::Config => {
                if !Path::new(&file.target).is_file() {
                    return Err(format!(
                        "config {}'s target {} is not a file on this node: an exec task shares the node's file system, so give the config a target that exists (--config source={},target=PATH)",
                        file.name, file.target, file.name
                    ));
                }
                prepared.configs.push(Prepared {
                    path: c(&format!("{SECRETS_DIR}/config-{n}"))?,
                    target: Some(c(&file.target)?),
                    uid: file.uid,
                    gid: file.gid,
                    mode: file.mode,
                    data: file.data.clone(),
                });
            }
        }
    }
    Ok(prepared)
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `file` whole: open(2), write(2), fchown(2), fchmod(2), close(2); async-signal-safe.
fn write_file(file: &Prepared) -> std::io::Result<()> {
    // SAFETY: system calls on a C string and a buffer owned by `file`, made before the fork.
    unsafe {
        let fd = libc::open(
            file.path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600,
        );
        check(fd)?;
        let mut at = 0;
        let written = loop {
            if at == file.data.len() {
                break Ok(());
            }
            let n = libc::write(fd, file.data[at..].as_ptr().cast(), file.data.len() - at);
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(e);
            }
            at += n as usize;
        };
        let owned = written
            .and_then(|()| check(libc::fchown(fd, file.uid, file.gid)))
            .and_then(|()| check(libc::fchmod(fd, file.mode)));
        libc::close(fd);
        owned
    }
}

fn tmpfs(dir: &CString, mode: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: mount(2) on C strings made before the fork.
    check(unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            dir.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            mode.as_ptr().cast(),
        )
    })
}

impl ExecFiles {
    /// Makes the files in the calling process's mount namespace (private to the task): to be
    /// called between fork and exec. Only async-signal-safe calls.
    pub(crate) fn apply(&self) -> std::io::Result<()> {
        if !self.configs.is_empty() {
            // A staging tmpfs: each config is written there and bound onto its target, then the
            // staging mount is detached (the binds keep its files).
            tmpfs(&self.dir, c"mode=0700")?;
            for file in &self.configs {
                write_file(file)?;
                let target = file.target.as_ref().expect("a config has a target");
                // SAFETY: mount(2) on C strings made before the fork.
                unsafe {
                    check(libc::mount(
                        file.path.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                    check(libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
            }
            // SAFETY: umount2(2) on a C string made before the fork.
            check(unsafe { libc::umount2(self.dir.as_ptr(), libc::MNT_DETACH) })?;
        }
        if !self.secrets.is_empty() {
            tmpfs(&self.dir, c"mode=0755")?;
            for file in &self.secrets {
                write_file(file)?;
            }
            // SAFETY: mount(2) on a C string made before the fork.
            check(unsafe {
                libc::mount(
                    std::ptr::null(),
                    self.dir.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    c"mode=0755".as_ptr().cast(),
                )
            })?;
        }
        Ok(())
    }
}

/// A docker task's file directory on the node.
fn host_dir(task: &str) -> PathBuf {
    Path::new(HOST_DIR).join(task)
}

/// Writes a docker task's files under [`HOST_DIR`] and returns the binds: (path on the node,
/// path in the container).
pub(crate) fn write_for_docker(
    task: &str,
    files: &[TaskFile],
) -> Result<Vec<(String, String)>, String> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let dir = host_dir(task);
    let fail =
        |what: &str, e: std::io::Error| format!("{what} for the task's secrets and configs: {e}");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| fail("creating a directory in /dev/shm", e))?;
    let secrets = dir.join("secrets");
    let mut binds = Vec::new();
    for (n, file) in files.iter().enumerate() {
        let path = match file.kind {
            DataKind::Secret => {
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&secrets)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| fail("creating the secrets directory", e))?;
                secrets.join(&file.target)
            }
            DataKind::Config => dir.join(format!("config-{n}")),
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| fail("writing a file", e))?;
        std::io::Write::write_all(&mut out, &file.data).map_err(|e| fail("writing a file", e))?;
        std::os::unix::fs::fchown(&out, Some(file.uid), Some(file.gid))
            .map_err(|e| fail("setting a file's owner", e))?;
        out.set_permissions(std::fs::Permissions::from_mode(file.mode))
            .map_err(|e| fail("setting a file's mode", e))?;
        if file.kind == DataKind::Config {
            binds.push((path.display().to_string(), file.target.clone()));
        }
    }
    if secrets.exists() {
        binds.push((secrets.display().to_string(), SECRETS_DIR.to_owned()));
    }
    Ok(binds)
}

/// Removes a docker task's files, if it had any.
pub(crate) fn remove_for_docker(task: &str) {
    let dir = host_dir(task);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "removing a task's secrets and configs");
    }
}

#[cfg(test)]
mod tests {
    use shoal_api::secret::{FileTarget, SecretReference};

    use super::*;

    #[test]
    fn a_tasks_files_come_from_its_assignment_and_a_missing_one_is_named() {
        let mut task = Task::default();
        task.spec.container_spec.secrets = vec![SecretReference {
            file: FileTarget {
                name: "db".into(),
                uid: "33".into(),
                gid: String::new(),
                mode: 0o400,
            },
            secret_id: "s1id".into(),
            secret_name: "s1".into(),
        }];
        let payloads = vec![Payload {
            kind: DataKind::Secret,
            id: "s1id".into(),
            data: base64::engine::general_purpose::STANDARD.encode("hunter2"),
        }];
        let files = for_task(&task, &payloads).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].target, "db");
        assert_eq!((files[0].uid, files[0].gid, files[0].mode), (33, 0, 0o400));
        assert_eq!(files[0].data, b"hunter2");
        assert!(!format!("{files:?}").contains("hunter2"));
        assert_eq!(
            for_task(&task, &[]).unwrap_err(),
            "the data of secret s1 did not reach this node"
        );
    }
}
