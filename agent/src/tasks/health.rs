//! Health checks: a task with one is `running` for the swarm only once its check passes, and an
//! unhealthy task is stopped and reported failed, so the managers replace it. The routing mesh,
//! the VIPs and the DNS take only running tasks, so they never send to a task before it is
//! healthy, nor after it stops being so; a start-first update waits for the new task to be
//! healthy before it stops the old one.
//!
//! Exec tasks: shoald runs the check itself, every interval, in the task's network and mount
//! namespaces with the task's environment, as Docker runs it in the container. Docker tasks:
//! the engine runs it (the service's check, or the image's HEALTHCHECK), and shoald reads the
//! result.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use shoal_api::service::{HealthConfig, Task};

use super::{Executor, Runtime};

/// Docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u64 = 3;
/// How often the engine's verdict is read.
const ENGINE_POLL: Duration = Duration::from_millis(250);
/// The most of a check's output kept for its message.
const OUTPUT_MAX: usize = 512;

fn or(nanos: u64, default: Duration) -> Duration {
    match nanos {
        0 => default,
        n => Duration::from_nanos(n),
    }
}

/// A task's health check, as it goes.
pub(crate) struct Probe {
    how: How,
    interval: Duration,
    timeout: Duration,
    retries: u64,
    start_period: Duration,
    started: Instant,
    failures: u64,
    healthy: bool,
}

enum How {
    /// Run the command in the task's namespaces.
    Exec {
        command: Vec<String>,
        env: Vec<(String, String)>,
    },
    /// Read the engine's verdict.
    Engine(super::docker::Engine),
}

impl Probe {
    /// The task's check, if it has one for this executor: `None` for no check.
    pub(crate) fn new(task: &Task, env: &[(String, String)], executor: &Executor) -> Option<Probe> {
        let config: Option<&HealthConfig> = task.spec.container_spec.healthcheck.as_ref();
        if config.is_some_and(HealthConfig::disabled) {
            return None;
        }
        let how = match executor {
            Executor::Exec => How::Exec {
                command: config?.command()?,
                env: env.to_vec(),
            },
            // The engine runs the service's check or the image's; it may have none.
            Executor::Docker(engine) => How::Engine(engine.clone()),
            Executor::None => return None,
        };
        let config = config.cloned().unwrap_or_default();
        Some(Probe {
            how,
            interval: or(config.interval, DEFAULT_INTERVAL),
            timeout: or(config.timeout, DEFAULT_TIMEOUT),
            retries: match config.retries {
                0 => DEFAULT_RETRIES,
                n => n,
            },
            start_period: Duration::from_nanos(config.start_period),
            started: Instant::now(),
            failures: 0,
            healthy: false,
        })
    }

    /// Waits until the task is healthy (`Ok`) or unhealthy (`Err`, why). A docker task whose
    /// container turns out to have no check is healthy at once.
    pub(crate) async fn until_healthy(&mut self, runtime: &Runtime) -> Result<(), String> {
        while !self.healthy {
            self.step(runtime).await?;
        }
        Ok(())
    }

    /// Waits until the task turns unhealthy; why.
    pub(crate) async fn until_unhealthy(&mut self, runtime: &Runtime) -> String {
        loop {
            if let Err(why) = self.step(runtime).await {
                return why;
            }
        }
    }

    /// One check (after the interval) and its effect: `Err` once the task is unhealthy.
    async fn step(&mut self, runtime: &Runtime) -> Result<(), String> {
        match &self.how {
            How::Engine(engine) => {
                tokio::time::sleep(ENGINE_POLL).await;
                match engine.health(runtime).await {
                    None => self.healthy = true,
                    Some(Ok(healthy)) => self.healthy |= healthy,
                    Some(Err(output)) => return Err(unhealthy(&output)),
                }
                Ok(())
            }
            How::Exec { command, env } => {
                tokio::time::sleep(self.interval).await;
                let result = check(command, env, runtime, self.timeout).await;
                match result {
                    Ok(()) => {
                        self.failures = 0;
                        self.healthy = true;
                        Ok(())
                    }
                    // Failures in the start period do not count until the first success.
                    Err(_) if !self.healthy && self.started.elapsed() < self.start_period => Ok(()),
                    Err(output) => {
                        self.failures += 1;
                        if self.failures >= self.retries {
                            Err(unhealthy(&output))
                        } else {
                            Ok(())
                        }
                    }
                }
            }
        }
    }
}

/// Resolves (with why) once the task of `probe` turns unhealthy; never without a probe.
pub(crate) async fn until_unhealthy(probe: Option<&mut Probe>, runtime: &Runtime) -> String {
    match probe {
        Some(probe) => probe.until_unhealthy(runtime).await,
        None => std::future::pending().await,
    }
}

fn unhealthy(output: &str) -> String {
    let output = output.trim();
    if output.is_empty() {
        "task: unhealthy container".into()
    } else {
        format!("task: unhealthy container: {output}")
    }
}

/// Runs `command` once in the task's network and mount namespaces; `Err` with its output (or
/// why it could not run) unless it exits 0 within `timeout`.
async fn check(
    command: &[String],
    env: &[(String, String)],
    runtime: &Runtime,
    timeout: Duration,
) -> Result<(), String> {
    let (program, args) = command.split_first().ok_or("the check has no command")?;
    let net = std::fs::File::open(&runtime.netns)
        .map_err(|e| format!("opening {}: {e}", runtime.netns.display()))?;
    let mnt = std::fs::File::open(format!("/proc/{}/ns/mnt", runtime.pid))
        .map_err(|e| format!("the task's process {} is gone: {e}", runtime.pid))?;
    let mut run = tokio::process::Command::new(program);
    run.args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let (net_fd, mnt_fd) = (net.as_raw_fd(), mnt.as_raw_fd());
    // SAFETY: between fork and exec only setns(2) is called, on descriptors opened before the
    // fork and kept open by `net` and `mnt` until spawn returns; the child is single-threaded,
    // as entering a mount namespace needs.
    unsafe {
        run.pre_exec(move || {
            if libc::setns(net_fd, libc::CLONE_NEWNET) != 0
                || libc::setns(mnt_fd, libc::CLONE_NEWNS) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = run
        .spawn()
        .map_err(|e| format!("running the health check {program:?}: {e}"))?;
    drop((net, mnt));
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("waiting for the health check: {e}")),
        Err(_) => {
            return Err(format!(
                "the health check timed out after {} s",
                timeout.as_secs_f64()
            ));
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let mut end = text.len().min(OUTPUT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    Err(match text.trim() {
        "" => format!("the health check exited with {}", output.status),
        t => t.to_owned(),
    })
}
