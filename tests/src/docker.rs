//! The Docker Engine for the `docker` executor's tests and the demo: found running, or started
//! here (`dockerd` from the `docker.io` package, without a bridge or iptables rules, so the
//! host's networking is left as it was), and an image of the project's own `shoal-labtool`
//! imported from a rootfs (no registry is needed).
//!
//! An engine started here records its PID in [`PID_FILE`]; [`Engine`] stops it on drop unless
//! [`Engine::keep`] was called (the demo keeps it until `cargo xtask demo --down`).

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{LabError, binary, io_error};
use crate::wait_until;

/// The engine's socket (the default `--docker-host` of `shoald`).
pub const SOCKET: &str = "/var/run/docker.sock";
/// Where an engine started by Shoal's tooling records its PID.
pub const PID_FILE: &str = "/run/shoal-dockerd.pid";
/// Its log.
pub const LOG_FILE: &str = "/run/shoal-dockerd.log";
/// The label `shoald` puts on its containers with the daemon's data root.
pub const LABEL_DATA_ROOT: &str = "io.shoal.data-root";
/// The label `shoald` puts on its containers with their task.
pub const LABEL_TASK: &str = "io.shoal.task.id";

/// A Docker Engine that answers on [`SOCKET`].
#[derive(Debug)]
pub struct Engine {
    /// Whether this process started it (then it stops it on drop).
    started: bool,
    /// Its version, as `docker version` reports it.
    pub version: String,
}

impl Engine {
    /// The running engine, or one started now. Fails if `dockerd` is not installed or does not
    /// come up.
    pub fn ensure() -> Result<Engine, LabError> {
        if let Some(version) = answering() {
            return Ok(Engine {
                started: false,
                version,
            });
        }
        let dockerd = which("dockerd").ok_or_else(|| LabError::Io {
            what: "finding dockerd (the docker.io package; `cargo xtask setup` installs it)".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let log = fs::File::create(LOG_FILE).map_err(io_error(format!("creating {LOG_FILE}")))?;
        let mut child = Command::new(dockerd)
            .args(["--pidfile", PID_FILE, "--bridge=none", "--iptables=false"])
            .args(["--ip-masq=false", "--host", &format!("unix://{SOCKET}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_error("duplicating the log"))?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(io_error("starting dockerd"))?;
        let up = wait_until(
            "dockerd to answer",
            Duration::from_secs(60),
            || match child.try_wait() {
                Ok(Some(status)) => Err(format!(
                    "dockerd exited ({status}): {}",
                    fs::read_to_string(LOG_FILE).unwrap_or_default()
                )),
                _ => Ok(answering().is_some()),
            },
        );
        if let Err(e) = up {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Timeout(e));
        }
        Ok(Engine {
            started: true,
            version: answering().unwrap_or_default(),
        })
    }

    /// Whether this process started it.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Leaves the engine running after this handle is gone ([`stop_started`] stops it).
    pub fn keep(mut self) {
        self.started = false;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.started {
            stop_started();
        }
    }
}

/// Stops the engine Shoal's tooling started (the one in [`PID_FILE`]), if it still runs.
/// Returns whether there was one.
pub fn stop_started() -> bool {
    let Some(pid) = fs::read_to_string(PID_FILE)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return false;
    };
    let is_dockerd =
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "dockerd");
    if !is_dockerd {
        let _ = fs::remove_file(PID_FILE);
        return false;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let gone = wait_until("dockerd to exit", Duration::from_secs(30), || {
        Ok(!Path::new(&format!("/proc/{pid}")).exists())
    });
    if gone.is_err() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = fs::remove_file(PID_FILE);
    true
}

/// The engine's version if it answers on [`SOCKET`].
fn answering() -> Option<String> {
    if !Path::new(SOCKET).exists() {
        return None;
    }
    let out = docker(&["version", "--format", "{{.Server.Version}}"]).ok()?;
    Some(out.trim().to_owned())
}

/// Runs the `docker` CLI; its standard output.
pub fn docker(args: &[&str]) -> Result<String, LabError> {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{SOCKET}"))
        .output()
        .map_err(io_error(format!("running docker {}", args.join(" "))))?;
    if !out.status.success() {
        return Err(failed(format!("docker {}", args.join(" ")), &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Imports an image `reference` whose rootfs holds the project's `shoal-labtool` at
/// `/shoal-labtool` and the shared libraries it needs (as `ldd` lists them); returns its ID.
pub fn import_labtool_image(reference: &str) -> Result<String, LabError> {
    let tool = binary("shoal-labtool")?;
    let rootfs = tempdir(&format!("rootfs-{}", std::process::id()))?;
    let result = (|| {
        copy_into(&rootfs, &tool, Path::new("/shoal-labtool"))?;
        for lib in shared_libraries(&tool)? {
            copy_into(&rootfs, &lib, &lib)?;
        }
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .output()
            .map_err(io_error("running tar"))?;
        if !tar.status.success() {
            return Err(failed("tar -c", &tar));
        }
        // The previous import of this reference would stay behind as a dangling image.
        let _ = docker(&["image", "rm", reference]);
        let mut import = Command::new("docker")
            .args(["import", "-", reference])
            .env("DOCKER_HOST", format!("unix://{SOCKET}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_error("running docker import"))?;
        import
            .stdin
            .take()
            .expect("piped")
            .write_all(&tar.stdout)
            .map_err(io_error("writing to docker import"))?;
        let out = import
            .wait_with_output()
            .map_err(io_error("waiting for docker import"))?;
        if !out.status.success() {
            return Err(failed(format!("docker import - {reference}"), &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    })();
    let _ = fs::remove_dir_all(&rootfs);
    result
}

/// Removes the containers the `shoald`s with these data roots made (a lab's teardown).
pub fn remove_containers(data_roots: &[PathBuf]) -> Vec<String> {
    if answering().is_none() {
        return Vec::new();
    }
    let mut errors = Vec::new();
    for root in data_roots {
        let filter = format!("label={LABEL_DATA_ROOT}={}", root.display());
        match docker(&["ps", "-aq", "--filter", &filter]) {
            Ok(ids) => {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if ids.is_empty() {
                    continue;
                }
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                if let Err(e) = docker(&args) {
                    errors.push(e.to_string());
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    errors
}

/// Containers of Shoal tasks the engine still has: `ID NAME DATA-ROOT` lines.
pub fn task_containers() -> Vec<String> {
    if answering().is_none() {
        return Vec::new();
    }
    let filter = format!("label={LABEL_TASK}");
    let format = format!("{{{{.ID}}}} {{{{.Names}}}} {{{{.Label \"{LABEL_DATA_ROOT}\"}}}}");
    docker(&["ps", "-a", "--filter", &filter, "--format", &format])
        .map(|out| out.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn tempdir(name: &str) -> Result<PathBuf, LabError> {
    let dir = std::env::temp_dir().join(format!("shoal-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
    Ok(dir)
}

/// Copies `file` to `root` + `at` (following symlinks: the rootfs gets the library itself).
fn copy_into(root: &Path, file: &Path, at: &Path) -> Result<(), LabError> {
    let target = root.join(at.strip_prefix("/").unwrap_or(at));
    if let Some(dir) = target.parent() {
        fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
    }
    fs::copy(file, &target).map_err(io_error(format!(
        "copying {} to {}",
        file.display(),
        target.display()
    )))?;
    Ok(())
}

/// The shared libraries `binary` loads, per `ldd` (absolute paths, the loader included).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, LabError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(io_error("running ldd"))?;
    // A static binary: "not a dynamic executable" on stderr, exit 1.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn failed(command: impl Into<String>, out: &Output) -> LabError {
    LabError::Command {
        command: command.into(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}
