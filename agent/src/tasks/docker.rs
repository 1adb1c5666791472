//! The `docker` executor: a task is a container of the Docker Engine (through bollard), made
//! with network mode `none`. Shoal plumbs the container's network namespace itself: once the
//! container runs, its `/proc/<pid>/ns/net` is mounted on `<data root>/tasks/netns/<task>` and
//! the data plane attaches it to the task's networks there, exactly as for the `exec` executor.
//! The task is reported running only once that is done.
//!
//! Unlike Docker's own swarm mode (which plumbs from a runtime hook before the container's first
//! instruction), the container's process starts with only `lo` and gets its interfaces a few
//! milliseconds later; a server binding the wildcard address does not notice.
//!
//! Containers are named `<service>.<slot>.<task>` as in Docker's swarm mode and carry the labels
//! below, so `docker ps --filter label=io.shoal.task.id` lists them. They are removed when their
//! task ends. The engine keeps their logs (`docker logs`).

use std::collections::HashMap;
use std::path::Path;
use std::pin::pin;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use shoal_api::logs::{LogLine, LogsQuery, Stream};
use shoal_api::service::{Mount, MountKind, Task};
use tokio_stream::StreamExt;

use super::{Exit, Runtime};

/// Where the Docker Engine listens unless `--docker-host` or `DOCKER_HOST` says otherwise.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// The task a container runs.
pub const LABEL_TASK: &str = "io.shoal.task.id";
/// The service of that task.
pub const LABEL_SERVICE: &str = "io.shoal.service.name";
/// The node that runs it.
pub const LABEL_NODE: &str = "io.shoal.node.id";
/// The data root of the `shoald` that made it (several daemons may share one engine).
pub const LABEL_DATA_ROOT: &str = "io.shoal.data-root";

/// The oldest engine API spoken (Docker 20.10).
const API_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Nanoseconds as the engine takes them.
fn nanos(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A connection to the Docker Engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    host: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("host", &self.host).finish()
    }
}

impl Engine {
    /// Connects to the engine at `host` (`unix://PATH`) and checks that it answers.
    pub async fn connect(host: &str) -> Result<Engine, String> {
        let path = host
            .strip_prefix("unix://")
            .ok_or_else(|| format!("--docker-host {host:?}: only unix:// sockets are supported"))?;
        let cannot = |e: DockerError| format!("cannot reach the Docker Engine at {host}: {e}");
        let docker = Docker::connect_with_unix(path, 120, &API_VERSION).map_err(cannot)?;
        let version = docker.version().await.map_err(cannot)?;
        tracing::info!(
            host,
            version = version.version.as_deref().unwrap_or("?"),
            api = version.api_version.as_deref().unwrap_or("?"),
            "docker executor: engine reached"
        );
        Ok(Engine {
            docker,
            host: host.to_owned(),
        })
    }

    /// Makes the task's container (pulling its image if the engine lacks it).
    pub(crate) async fn prepare(
        &self,
        data_root: &Path,
        task: &Task,
        node: &str,
        env: &[(String, String)],
        binds: &[(String, String)],
    ) -> Result<Runtime, String> {
        let spec = &task.spec.container_spec;
        // A bind source is a path of this node: say so plainly when it is missing.
        for m in &spec.mounts {
            if m.kind == MountKind::Bind && !Path::new(&m.source).exists() {
                return Err(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {}",
                    m.source
                ));
            }
        }
        self.ensure_image(&spec.image).await?;
        let words: Vec<String> = spec
            .command
            .iter()
            .chain(spec.args.iter())
            .cloned()
            .collect();
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.extend([
            (LABEL_TASK.to_owned(), task.id.clone()),
            (LABEL_SERVICE.to_owned(), task.service_name.clone()),
            (LABEL_NODE.to_owned(), node.to_owned()),
            (LABEL_DATA_ROOT.to_owned(), data_root.display().to_string()),
        ]);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!words.is_empty()).then_some(words),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            user: Some(spec.user.clone()).filter(|u| !u.is_empty()),
            working_dir: Some(spec.dir.clone()).filter(|d| !d.is_empty()),
            hostname: Some(spec.hostname.clone()).filter(|h| !h.is_empty()),
            stop_signal: Some(spec.stop_signal.clone()).filter(|s| !s.is_empty()),
            stop_timeout: spec
                .stop_grace_period
                .map(|ns| nanos(ns.div_ceil(1_000_000_000))),
            // The service's health check, for the engine to run (unset: the image's).
            healthcheck: spec
                .healthcheck
                .as_ref()
                .map(|h| bollard::models::HealthConfig {
                    test: Some(h.test.clone()).filter(|t| !t.is_empty()),
                    interval: Some(nanos(h.interval)),
                    timeout: Some(nanos(h.timeout)),
                    retries: Some(i64::try_from(h.retries).unwrap_or(i64::MAX)),
                    start_period: Some(nanos(h.start_period)),
                    start_interval: None,
                }),
            host_config: Some({
                // The embedded DNS server, through the container's own DNS settings: Docker
                // writes them into the container's /etc/resolv.conf.
                let (search, options) =
                    crate::dns::resolv_settings(&crate::dns::host_resolv_conf());
                let limits = &task.spec.resources.limits;
                let limit = |n: u64| (n > 0).then(|| nanos(n));
                HostConfig {
                    // The task's secrets and configs: files on a tmpfs of this node, read-only.
                    mounts: Some(
                        spec.mounts
                            .iter()
                            .map(engine_mount)
                            .chain(binds.iter().map(|(source, target)| bollard::models::Mount {
                                source: Some(source.clone()),
                                target: Some(target.clone()),
                                typ: Some(bollard::models::MountType::BIND),
                                read_only: Some(true),
                                ..Default::default()
                            }))
                            .collect(),
                    )
                    .filter(|m: &Vec<_>| !m.is_empty()),
                    readonly_rootfs: spec.read_only.then_some(true),
                    init: spec.init,
                    nano_cpus: limit(limits.nano_cpus),
                    memory: limit(limits.memory_bytes),
                    pids_limit: limit(limits.pids),
                    network_mode: Some("none".into()),
                    dns: Some(vec![crate::dns::ADDR.ip().to_string()]),
                    dns_search: Some(search),
                    dns_options: Some(options),
                    ..Default::default()
                }
            }),
            ..Default::default()
        };
        let name = container_name(task);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = match self
            .docker
            .create_container(Some(options), body.clone())
            .await
        {
            // A container of this task left by a daemon killed between create and record.
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                self.remove(&name).await;
                let options = CreateContainerOptionsBuilder::default().name(&name).build();
                self.docker.create_container(Some(options), body).await
            }
            other => other,
        }
        .map_err(|e| format!("creating the container: {}", message(e)))?;
        Ok(Runtime {
            container: Some(created.id),
            ..Default::default()
        })
    }

    async fn ensure_image(&self, image: &str) -> Result<(), String> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(format!("inspecting image {image}: {}", message(e))),
        }
        let (name, tag) = split_reference(image);
        let mut options = CreateImageOptionsBuilder::default().from_image(name);
        if !tag.is_empty() {
            options = options.tag(tag);
        }
        let options = options.build();
        let mut pull = pin!(self.docker.create_image(Some(options), None, None));
        while let Some(step) = pull.next().await {
            if let Err(e) = step {
                return Err(format!(
                    "No such image: {image} (pulling it: {})",
                    message(e)
                ));
            }
        }
        Ok(())
    }

    /// Starts the container, mounts its namespace on `<dir>/netns/<task>` and records its
    /// process.
    pub(crate) async fn start(
        &self,
        dir: &Path,
        task: &Task,
        runtime: &mut Runtime,
    ) -> Result<(), String> {
        let id = runtime.container.clone().unwrap_or_default();
        self.docker
            .start_container(&id, None)
            .await
            .map_err(|e| format!("starting the container: {}", message(e)))?;
        let inspected = self
            .docker
            .inspect_container(&id, None)
            .await
            .map_err(|e| format!("inspecting the container: {}", message(e)))?;
        let state = inspected.state.unwrap_or_default();
        let pid = state.pid.unwrap_or_default();
        if state.running != Some(true) || pid <= 0 {
            return Err(format!(
                "the container stopped at once (exit code {})",
                state.exit_code.unwrap_or_default()
            ));
        }
        let pid = pid as u32;
        runtime.pid = pid;
        runtime.start_time = super::exec::start_time(pid).unwrap_or_default();
        let netns = super::exec::netns_path(dir, &task.id);
        let source = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
        shoal_dataplane::overlay::adopt_namespace(&source, &netns)
            .await
            .map_err(|e| format!("taking the container's network namespace: {e}"))?;
        runtime.netns = netns;
        Ok(())
    }

    /// The engine's word on the container's health: `None` when it has no health check, else
    /// whether it is healthy (`Some(Ok)`), unhealthy (`Some(Err(the last check's output))`) or
    /// still starting (`Some(Ok(false))`).
    pub(crate) async fn health(&self, runtime: &Runtime) -> Option<Result<bool, String>> {
        use bollard::models::HealthStatusEnum;
        let id = runtime.container.clone()?;
        let inspected = self.docker.inspect_container(&id, None).await.ok()?;
        let health = inspected.state?.health?;
        match health.status? {
            HealthStatusEnum::HEALTHY => Some(Ok(true)),
            HealthStatusEnum::STARTING => Some(Ok(false)),
            HealthStatusEnum::UNHEALTHY => {
                let last = health
                    .log
                    .and_then(|log| log.last().and_then(|r| r.output.clone()))
                    .unwrap_or_default();
                Some(Err(last.trim().to_owned()))
            }
            _ => None,
        }
    }

    /// Waits until the container stops; its exit code.
    pub(crate) async fn wait(&self, runtime: &Runtime) -> Exit {
        let id = runtime.container.clone().unwrap_or_default();
        loop {
            let waited = pin!(self.docker.wait_container(&id, None)).next().await;
            match waited {
                Some(Ok(response)) => return Exit::Code(response.status_code as i32),
                Some(Err(DockerError::DockerContainerWaitError { code, .. })) => {
                    return Exit::Code(code as i32);
                }
                Some(Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                })) => return Exit::Unknown("the container was removed".into()),
                Some(Err(e)) => {
                    // The engine restarted or the connection broke: ask again.
                    tracing::debug!(container = %id, error = %e, "waiting for a container");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Stops the container: SIGTERM, then SIGKILL after `grace` (the engine does both).
    pub(crate) async fn stop(&self, runtime: &Runtime, grace: Duration) {
        let Some(id) = &runtime.container else {
            return;
        };
        let options = StopContainerOptionsBuilder::default()
            .t(grace.as_secs() as i32)
            .build();
        if let Err(e) = self.docker.stop_container(id, Some(options)).await {
            tracing::debug!(container = %id, error = %e, "stopping a container");
        }
    }

    /// Copies the container's logs (the last [`super::logs::FILE_MAX`] bytes' worth of lines
    /// at most) into the task's log on this node.
    pub(crate) async fn keep_logs(&self, container: &str, tasks_dir: &Path, task: &str) {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .tail("10000")
            .build();
        let mut writer = match super::logs::keeper(tasks_dir, task) {
            Ok(writer) => writer,
            Err(e) => {
                tracing::warn!(task, error = %e, "keeping a container's logs");
                return;
            }
        };
        // Written as they come: the log's own bound holds, whatever the engine sends.
        let mut stream = pin!(self.docker.logs(container, Some(options)));
        while let Some(Ok(output)) = stream.next().await {
            if let Some((stream, line)) = engine_line(output)
                && let Err(e) = writer.stamped(stream, &line)
            {
                tracing::warn!(task, error = %e, "keeping a container's logs");
                return;
            }
        }
    }

    /// The running container's lines as `query` asks, sent to `out` in batches until they end
    /// (or, with `follow`, until `out` closes).
    pub(crate) async fn serve_logs(
        &self,
        container: &str,
        task: &str,
        query: &LogsQuery,
        out: &tokio::sync::mpsc::Sender<Vec<LogLine>>,
    ) {
        let mut options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(query.follow);
        if let Some(tail) = query.tail {
            options = options.tail(&tail.to_string());
        }
        if let Some(since) = super::logs::since_of(query) {
            options = options.since(i32::try_from(since.unix_timestamp()).unwrap_or(0));
        }
        let mut stream = pin!(self.docker.logs(container, Some(options.build())));
        let since = super::logs::since_of(query);
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                () = out.closed() => return,
            };
            let Some(Ok(output)) = next else { return };
            let Some((stream, line)) = engine_line(output) else {
                continue;
            };
            let (time, text) = line.split_once(' ').unwrap_or((&line, ""));
            // The engine's --since is in whole seconds.
            if !super::logs::after(time, since.as_ref()) {
                continue;
            }
            let line = LogLine {
                task_id: task.to_owned(),
                time: time.to_owned(),
                stream,
                text: text.to_owned(),
            };
            if out.send(vec![line]).await.is_err() {
                return;
            }
        }
    }

    /// Removes the container (and anything it still runs).
    /// `GET /distribution/{image}/json` asked of this engine (it asks the image's registry):
    /// the manifest's descriptor and platforms, or the engine's status and message.
    pub(crate) async fn distribution(
        &self,
        image: &str,
        credentials: Option<bollard::auth::DockerCredentials>,
    ) -> Result<bollard::models::DistributionInspect, (u16, String)> {
        self.docker
            .inspect_registry_image(image, credentials)
            .await
            .map_err(|e| match e {
                DockerError::DockerResponseServerError {
                    status_code,
                    message,
                } => (status_code, message),
                e => (502, format!("asking this node's Docker Engine: {e}")),
            })
    }

    pub(crate) async fn remove(&self, id: &str) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => tracing::warn!(container = %id, error = %e, "removing a container"),
        }
    }
}

/// A line of the engine's log stream, with its stream.
fn engine_line(output: bollard::container::LogOutput) -> Option<(Stream, String)> {
    use bollard::container::LogOutput;
    let (stream, message) = match output {
        LogOutput::StdOut { message } | LogOutput::Console { message } => (Stream::Stdout, message),
        LogOutput::StdErr { message } => (Stream::Stderr, message),
        LogOutput::StdIn { .. } => return None,
    };
    let text = String::from_utf8_lossy(&message);
    Some((stream, text.trim_end_matches(['\n', '\r']).to_owned()))
}

/// A service's mount as the engine takes it.
fn engine_mount(m: &Mount) -> bollard::models::Mount {
    use bollard::models::{MountTmpfsOptions, MountType};
    bollard::models::Mount {
        target: Some(m.target.clone()),
        source: Some(m.source.clone()).filter(|s| !s.is_empty()),
        typ: Some(match m.kind {
            MountKind::Bind => MountType::BIND,
            MountKind::Volume => MountType::VOLUME,
            MountKind::Tmpfs => MountType::TMPFS,
        }),
        read_only: m.read_only.then_some(true),
        tmpfs_options: m.tmpfs_options.as_ref().map(|t| MountTmpfsOptions {
            size_bytes: (t.size_bytes > 0).then(|| nanos(t.size_bytes)),
            mode: (t.mode > 0).then_some(i64::from(t.mode)),
            options: None,
        }),
        ..Default::default()
    }
}

/// `<service>.<slot>.<task>` (`<service>.<node>.<task>` for a global service), as Docker names
/// swarm tasks' containers.
pub(crate) fn container_name(task: &Task) -> String {
    let middle = if task.slot > 0 {
        task.slot.to_string()
    } else {
        task.node_id.clone()
    };
    format!("{}.{middle}.{}", task.service_name, task.id)
}

/// `name[:tag]` (a `:` after the last `/` separates the tag; `latest` by default); a digest
/// reference (`name@sha256:...`) is pulled whole, without a tag.
fn split_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => (&image[..name_start + i], &image[name_start + i + 1..]),
        None => (image, "latest"),
    }
}

/// The engine's own message when it gave one.
fn message(e: DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message,
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_and_tag() {
        assert_eq!(split_reference("web"), ("web", "latest"));
        assert_eq!(split_reference("web:1.2"), ("web", "1.2"));
        assert_eq!(
            split_reference("registry:5000/team/web"),
            ("registry:5000/team/web", "latest")
        );
        assert_eq!(
            split_reference("registry:5000/team/web:v2"),
            ("registry:5000/team/web", "v2")
        );
        assert_eq!(split_reference("web@sha256:0a1b"), ("web@sha256:0a1b", ""));
    }

    #[test]
    fn containers_are_named_as_docker_names_swarm_tasks() {
        let mut task = Task {
            id: "abc".into(),
            service_name: "web".into(),
            slot: 3,
            node_id: "n1".into(),
            ..Default::default()
        };
        assert_eq!(container_name(&task), "web.3.abc");
        task.slot = 0;
        assert_eq!(container_name(&task), "web.n1.abc");
    }
}
