//! The node's tasks: what the dispatcher assigns, run through an executor, plumbed into their
//! networks by the data plane, reported back.
//!
//! ```text
//!   Dispatcher.Assignments (stream) ─> Worker::assign ─┬─ new task: supervise(): prepare
//!                                                      │    (exec: namespace; docker: container)
//!                                                      │    ─> start, with a data-plane apply
//!                                                      │    (attachments) before it (exec) or
//!                                                      │    after it (docker) ─> running
//!                                                      │    ─> exit / stop ─> detach, clean up
//!                                                      └─ gone or desired shutdown: stop it
//!   every status change ─> unreported ─> Dispatcher.Report (batched)
//!   every change of tasks or assignment ─> one data-plane apply for all of them (coalesced)
//! ```
//!
//! What runs is kept in `<data root>/tasks/tasks.json`: after a restart, a task whose process is
//! still the one started (same PID, same start time) is adopted again; one that is gone is
//! reported failed and replaced by the managers.

pub(crate) mod cgroup;
pub(crate) mod desired;
pub(crate) mod docker;
pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod health;
pub(crate) mod logs;
pub(crate) mod session;
pub(crate) mod way_out;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_api::service::{ContainerStatus, Task, TaskState, TaskStatus};
use shoal_control::dispatcher::Assignment;
use shoal_dataplane::node::DesiredState;
use shoal_dataplane::overlay::model::WAY_OUT_BRIDGE;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// What runs on this node, under `<data root>/tasks`.
const TASKS_FILE: &str = "tasks.json";

use crate::dataplane::NodeDataplane;

/// How a task is run on this node (`shoald --executor`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExecutorKind {
    /// `docker` when a Docker Engine answers at `--docker-host`, otherwise none: the node runs
    /// no tasks (and the scheduler gives it none) until it is restarted with one.
    #[default]
    Auto,
    /// `COMMAND ARG...` from the host, as root, in a namespace of its own. Opt-in only.
    Exec,
    /// A container of the Docker Engine, network mode `none`, plumbed by Shoal.
    Docker,
    /// No tasks on this node.
    None,
}

impl ExecutorKind {
    /// `auto`, `exec`, `docker` or `none`: as nodes report it (a node never reports `auto`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Exec => "exec",
            Self::Docker => "docker",
            Self::None => "none",
        }
    }
}

impl std::str::FromStr for ExecutorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "exec" => Ok(Self::Exec),
            "docker" => Ok(Self::Docker),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown executor {other:?}: docker, exec (host commands as root, opt-in), none, or auto"
            )),
        }
    }
}

/// The executor a node runs its tasks with.
#[derive(Debug, Clone)]
pub(crate) enum Executor {
    /// See [`exec`].
    Exec,
    /// See [`docker`].
    Docker(docker::Engine),
    /// Tasks are refused (the scheduler places none here).
    None,
}

/// Why a task cannot run on a node without an executor.
const NO_EXECUTOR: &str = "this node runs no tasks: no Docker Engine answered when shoald started (start one and restart shoald, or choose --executor exec to run host commands as root)";

impl Executor {
    /// Connects what `kind` needs (the Docker Engine at `docker_host`). `Auto` takes the engine
    /// if it answers, and no executor otherwise.
    pub(crate) async fn new(kind: ExecutorKind, docker_host: &str) -> Result<Executor, String> {
        Ok(match kind {
            ExecutorKind::Exec => Executor::Exec,
            ExecutorKind::Docker => Executor::Docker(docker::Engine::connect(docker_host).await?),
            ExecutorKind::None => Executor::None,
            ExecutorKind::Auto => match docker::Engine::connect(docker_host).await {
                Ok(engine) => Executor::Docker(engine),
                Err(e) => {
                    tracing::warn!(
                        "{e}: this node will run no tasks (start a Docker Engine and restart shoald, or use --executor exec)"
                    );
                    Executor::None
                }
            },
        })
    }

    fn kind(&self) -> ExecutorKind {
        match self {
            Executor::Exec => ExecutorKind::Exec,
            Executor::Docker(_) => ExecutorKind::Docker,
            Executor::None => ExecutorKind::None,
        }
    }
}

/// A started task, to wait for.
enum Started {
    /// The `exec` executor's child process.
    Child(tokio::process::Child),
    /// A container (its ID is in the task's [`Runtime`]).
    Container,
}

/// What a running task holds on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Runtime {
    /// Its network namespace.
    pub netns: PathBuf,
    /// Its main process.
    pub pid: u32,
    /// That process's start time (to tell a reused PID apart).
    pub start_time: u64,
    /// Its container's ID (the `docker` executor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// How a task's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Exited with a code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
    /// Not known (the process was adopted, or waiting failed).
    Unknown(String),
}

/// A task this node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Local {
    task: Task,
    status: TaskStatus,
    runtime: Option<Runtime>,
    /// Whether the data plane should plug it into its networks.
    attached: bool,
    /// Its address in the way out's subnet, as an offset (see [`way_out`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    way_out: Option<u32>,
}

/// The environment a task's process runs with, as `KEY=VALUE` (less the variables shoald adds),
/// from `/proc/<pid>/environ`: what `tasks.json` does not keep.
fn environment_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .filter(|kv| {
            !kv.starts_with("SHOAL_TASK_")
                && !kv.starts_with("SHOAL_SERVICE_NAME=")
                && !kv.starts_with("SHOAL_NODE_ID=")
        })
        .collect()
}

/// Who this node is, for the data plane.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// Its node ID.
    pub node_id: String,
    /// `--data-path-addr`.
    pub data_path_addr: String,
    /// Its WireGuard private key (base64).
    pub private_key: String,
}

#[derive(Debug, Default)]
struct State {
    context: Option<Context>,
    assignment: Option<Assignment>,
    tasks: BTreeMap<String, Local>,
    stops: HashMap<String, watch::Sender<bool>>,
    unreported: BTreeMap<String, TaskStatus>,
}

struct Inner {
    dir: PathBuf,
    data_root: PathBuf,
    /// `tasks.json`, written by a thread of its own.
    saved: crate::durable::Latest,
    executor: Executor,
    dataplane: NodeDataplane,
    /// `--wireguard-cpus`.
    wireguard_cpus: Vec<usize>,
    /// The tasks' embedded DNS servers.
    dns: crate::dns::Dns,
    state: Mutex<State>,
    applies: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
    reports: Notify,
}

/// The node's tasks. Clones share them.
#[derive(Clone)]
pub(crate) struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn now() -> String {
    shoal_control::manager::write::now()
}

fn status(state: TaskState, message: impl Into<String>) -> TaskStatus {
    TaskStatus {
        timestamp: now(),
        state,
        message: message.into(),
        ..Default::default()
    }
}

impl Worker {
    /// The node's data plane, which plumbs the tasks.
    pub(crate) fn dataplane(&self) -> &NodeDataplane {
        &self.inner.dataplane
    }

    /// The tasks kept under `<data_root>/tasks`, run with `executor`, plumbed by `dataplane`,
    /// whose WireGuard engine's threads run on `wireguard_cpus` (`--wireguard-cpus`).
    pub(crate) fn new(
        data_root: &Path,
        executor: Executor,
        dataplane: NodeDataplane,
        wireguard_cpus: Vec<usize>,
    ) -> Self {
        let (applies, requests) = mpsc::unbounded_channel();
        let worker = Self {
            inner: Arc::new(Inner {
                saved: crate::durable::Latest::new(data_root.join("tasks").join(TASKS_FILE)),
                dir: data_root.join("tasks"),
                data_root: data_root.to_owned(),
                executor,
                dataplane,
                wireguard_cpus,
                dns: crate::dns::Dns::default(),
                state: Mutex::default(),
                applies,
                reports: Notify::new(),
            }),
        };
        tokio::spawn(applier(Arc::downgrade(&worker.inner), requests));
        worker
    }

    /// This node's Docker Engine, when it runs docker tasks.
    pub(crate) fn engine(&self) -> Option<&docker::Engine> {
        match &self.inner.executor {
            Executor::Docker(engine) => Some(engine),
            _ => None,
        }
    }

    /// The executor's name, as nodes report it.
    pub(crate) fn executor(&self) -> &'static str {
        self.inner.executor.kind().name()
    }

    /// The routing mesh's path on each interface it uses, as nodes report it.
    pub(crate) fn mesh_paths(&self) -> BTreeMap<String, String> {
        self.inner.dataplane.mesh_paths()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes back the tasks kept on disk: running ones are supervised again, those that ended
    /// while the daemon was away are reported failed. A file that cannot be read is an error
    /// naming it: the daemon does not start rather than forget the tasks that run.
    pub(crate) async fn restore(&self) -> Result<(), String> {
        let path = self.inner.dir.join(TASKS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(format!(
                    "reading the node's tasks in {}: {e}",
                    path.display()
                ));
            }
        };
        let tasks: BTreeMap<String, Local> = serde_json::from_str(&text).map_err(|e| {
            format!(
                "the node's tasks in {} do not decode ({e}); the tasks it names may still run: \
                 stop them, then move the file aside to start afresh",
                path.display()
            )
        })?;
        let mut adopt = Vec::new();
        let mut ended = Vec::new();
        {
            let mut state = self.lock();
            for (id, mut local) in tasks {
                if !local.status.state.is_terminal() {
                    match &local.runtime {
                        Some(runtime) if exec::alive(runtime) => {
                            local.task.spec.container_spec.env = environment_of(runtime.pid);
                            let (stop, stopped) = watch::channel(false);
                            state.stops.insert(id.clone(), stop);
                            adopt.push((id.clone(), runtime.clone(), stopped));
                        }
                        runtime => {
                            ended.extend(runtime.clone());
                            local.runtime = None;
                            local.attached = false;
                            local.status = TaskStatus {
                                err: "the task's process ended while shoald was not running".into(),
                                ..status(TaskState::Failed, "failed")
                            };
                            state.unreported.insert(id.clone(), local.status.clone());
                        }
                    }
                }
                state.tasks.insert(id, local);
            }
        }
        for runtime in &ended {
            self.cleanup(runtime).await;
        }
        // An exec task's output waited in its pipes: take it into its log again.
        for (id, runtime, _) in &adopt {
            if runtime.container.is_none()
                && let Err(e) = logs::resume(&self.inner.dir, id)
            {
                tracing::warn!(task = %id, error = %e, "the task's logs");
            }
        }
        tracing::info!(adopted = adopt.len(), "node tasks restored");
        for (id, runtime, stopped) in adopt {
            let worker = self.clone();
            tokio::spawn(async move { worker.supervise_adopted(id, runtime, stopped).await });
        }
        self.save();
        Ok(())
    }

    /// Sets who this node is (on joining or resuming), or clears it (on leaving).
    pub(crate) fn set_context(&self, context: Option<Context>) {
        self.lock().context = context;
    }

    /// Takes a new assignment: starts what is new, stops what is no longer wanted.
    pub(crate) fn assign(&self, assignment: Assignment) {
        let mut start = Vec::new();
        {
            let mut state = self.lock();
            let wanted: BTreeMap<&str, &Task> = assignment
                .tasks
                .iter()
                .map(|t| (t.id.as_str(), t))
                .collect();
            for (id, task) in &wanted {
                let run = task.desired_state == TaskState::Running;
                match state.tasks.get_mut(*id) {
                    Some(local) => {
                        local.task = (*task).clone();
                        if !run
                            && !local.status.state.is_terminal()
                            && let Some(stop) = state.stops.get(*id)
                        {
                            let _ = stop.send(true);
                        }
                    }
                    None if run && !task.status.state.is_terminal() => {
                        let accepted = status(TaskState::Accepted, "accepted");
                        state.tasks.insert(
                            (*id).to_owned(),
                            Local {
                                task: (*task).clone(),
                                status: accepted.clone(),
                                runtime: None,
                                attached: false,
                                way_out: None,
                            },
                        );
                        state.unreported.insert((*id).to_owned(), accepted);
                        let (stop, stopped) = watch::channel(false);
                        state.stops.insert((*id).to_owned(), stop);
                        start.push(((*id).to_owned(), stopped));
                    }
                    None if !task.status.state.is_terminal() => {
                        // Assigned here, never started, and no longer wanted.
                        state
                            .unreported
                            .insert((*id).to_owned(), status(TaskState::Shutdown, "shutdown"));
                    }
                    None => {}
                }
            }
            let gone: Vec<String> = state
                .tasks
                .keys()
                .filter(|id| !wanted.contains_key(id.as_str()))
                .cloned()
                .collect();
            for id in gone {
                if state.tasks[&id].status.state.is_terminal() {
                    state.tasks.remove(&id);
                    state.stops.remove(&id);
                    state.unreported.remove(&id);
                } else if let Some(stop) = state.stops.get(&id) {
                    let _ = stop.send(true);
                }
            }
            state.assignment = Some(assignment);
        }
        self.inner.reports.notify_one();
        self.save();
        for (id, stopped) in start {
            let worker = self.clone();
            tokio::spawn(async move { worker.supervise(id, stopped).await });
        }
        // Endpoints, peers and backends may have changed.
        drop(self.request_apply());
    }

    /// Stops every task and takes the node's networks down (the node left the swarm).
    pub(crate) async fn stop_all(&self) {
        let stops: Vec<watch::Sender<bool>> = {
            let mut state = self.lock();
            state.assignment = None;
            state.stops.drain().map(|(_, s)| s).collect()
        };
        for stop in &stops {
            let _ = stop.send(true);
        }
        // Wait for the supervisors to finish.
        for _ in 0..((exec::STOP_GRACE.as_millis() / 100) + 50) {
            let busy = self
                .lock()
                .tasks
                .values()
                .any(|l| !l.status.state.is_terminal() && l.runtime.is_some());
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.apply().await;
        let mut state = self.lock();
        state.tasks.clear();
        state.unreported.clear();
        drop(state);
        self.save();
    }

    /// Status changes not yet reported.
    pub(crate) fn take_reports(&self) -> Vec<(String, TaskStatus)> {
        std::mem::take(&mut self.lock().unreported)
            .into_iter()
            .collect()
    }

    /// Puts back reports that could not be sent (unless newer ones came meanwhile).
    pub(crate) fn requeue(&self, reports: Vec<(String, TaskStatus)>) {
        let mut state = self.lock();
        for (id, status) in reports {
            state.unreported.entry(id).or_insert(status);
        }
    }

    /// Says there is something to report (what was put back with [`Worker::requeue`]).
    pub(crate) fn wake_reports(&self) {
        self.inner.reports.notify_one();
    }

    /// Waits until there is something to report.
    pub(crate) async fn reports_waiting(&self) {
        self.inner.reports.notified().await;
    }

    fn report(&self, id: &str, status: TaskStatus) {
        {
            let mut state = self.lock();
            let Some(local) = state.tasks.get_mut(id) else {
                return;
            };
            local.status = status.clone();
            state.unreported.insert(id.to_owned(), status);
        }
        self.inner.reports.notify_one();
        self.save();
    }

    fn set_runtime(&self, id: &str, runtime: Option<Runtime>, attached: bool) {
        {
            let mut state = self.lock();
            if let Some(local) = state.tasks.get_mut(id) {
                local.runtime = runtime;
                local.attached = attached;
            }
        }
        self.save();
    }

    /// Hands what runs to `tasks.json`'s writer (atomic, durable, off the async runtime). The
    /// text is taken under the state's lock, so a later save always carries a later state.
    /// Tasks' environments are left out: no service's environment reaches the disk in the clear
    /// (a restart reads an adopted task's back from its process, [`environment_of`]).
    fn save(&self) {
        let state = self.lock();
        let kept: BTreeMap<&String, Local> = state
            .tasks
            .iter()
            .map(|(id, local)| {
                let mut local = local.clone();
                local.task.spec.container_spec.env.clear();
                (id, local)
            })
            .collect();
        let text = serde_json::to_string(&kept).expect("plain data serializes");
        self.inner.saved.save(text);
    }

    /// Waits until every save so far is on disk.
    pub(crate) async fn flush(&self) {
        let saved = self.inner.saved.clone();
        let _ = tokio::task::spawn_blocking(move || saved.flush()).await;
    }

    fn request_apply(&self) -> oneshot::Receiver<Result<(), String>> {
        let (done, result) = oneshot::channel();
        let _ = self.inner.applies.send(done);
        result
    }

    /// Applies the data plane for the current tasks and assignment (coalesced with other
    /// requests made meanwhile).
    async fn apply(&self) -> Result<(), String> {
        self.request_apply()
            .await
            .unwrap_or_else(|_| Err("the data-plane applier stopped".into()))
    }

    fn env(&self, task: &Task) -> Vec<(String, String)> {
        let node = self.node_id();
        let mut env: Vec<(String, String)> = task
            .spec
            .container_spec
            .env
            .iter()
            // `FOO` without `=` is absent in the task, as in Docker (the CLI has already taken its
            // own value, if it had one); never this daemon's own variable.
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        env.extend([
            ("SHOAL_TASK_ID".to_owned(), task.id.clone()),
            ("SHOAL_TASK_SLOT".to_owned(), task.slot.to_string()),
            ("SHOAL_SERVICE_NAME".to_owned(), task.service_name.clone()),
            ("SHOAL_NODE_ID".to_owned(), node),
        ]);
        env
    }

    /// Prepares `task` to start: its secrets' and configs' files (from the assignment, in
    /// memory only), then the executor's namespace or container. The runtime, and the exec
    /// executor's files; why it cannot run.
    async fn prepare(
        &self,
        task: &Task,
        env: &[(String, String)],
    ) -> Result<(Runtime, Option<files::ExecFiles>), String> {
        let payloads = self
            .lock()
            .assignment
            .as_ref()
            .map(|a| a.payloads.clone())
            .unwrap_or_default();
        let task_files = files::for_task(task, &payloads)?;
        let mut exec_files = None;
        let prepared = match &self.inner.executor {
            Executor::None => Err(NO_EXECUTOR.to_owned()),
            Executor::Exec => match files::prepare_exec(&task_files) {
                Ok(ready) => {
                    exec_files = Some(ready);
                    exec::prepare(&self.inner.dir, task).await
                }
                Err(e) => Err(e),
            },
            Executor::Docker(engine) => match files::write_for_docker(&task.id, &task_files) {
                Ok(binds) => {
                    let node = self.node_id();
                    engine
                        .prepare(&self.inner.data_root, task, &node, env, &binds)
                        .await
                }
                Err(e) => Err(e),
            },
        };
        drop(task_files);
        if prepared.is_err() {
            // A docker task's files, if some were written: no task, no files.
            files::remove_for_docker(&task.id);
        }
        prepared.map(|runtime| (runtime, exec_files))
    }

    /// A task whose health check never passed (or that was stopped while it waited, `why`
    /// empty): stopped, and reported failed (or shut down).
    async fn never_healthy(
        &self,
        id: &str,
        task: &Task,
        mut started: Started,
        runtime: Runtime,
        why: String,
    ) {
        self.stop_runtime(&runtime, &task.spec.container_spec).await;
        if let Started::Child(child) = &mut started {
            let _ = child.wait().await;
        }
        let state = match why.is_empty() {
            true => TaskState::Shutdown,
            false => {
                count_failure("unhealthy");
                TaskState::Failed
            }
        };
        self.finish(id, Some(runtime), state, why).await;
    }

    /// Runs one task from start to end.
    async fn supervise(&self, id: String, mut stopped: watch::Receiver<bool>) {
        let Some(task) = self.lock().tasks.get(&id).map(|l| l.task.clone()) else {
            return;
        };
        self.report(&id, status(TaskState::Preparing, "preparing"));
        let env = self.env(&task);
        let (mut runtime, mut exec_files) = match self.prepare(&task, &env).await {
            Ok(prepared) => prepared,
            Err(e) => return self.finish(&id, None, TaskState::Rejected, e).await,
        };
        // The exec executor's namespace exists before its process: plumb it first. A container's
        // namespace comes with it: plumb it once started.
        let plumb_first = matches!(self.inner.executor, Executor::Exec);
        if plumb_first && let Err(e) = self.plumb(&id, &runtime).await {
            return self
                .finish(&id, Some(runtime), TaskState::Rejected, e)
                .await;
        }
        self.set_runtime(&id, Some(runtime.clone()), plumb_first);
        if *stopped.borrow() {
            return self
                .finish(&id, Some(runtime), TaskState::Shutdown, String::new())
                .await;
        }
        self.report(&id, status(TaskState::Starting, "starting"));
        let started = match &self.inner.executor {
            Executor::None => Err(NO_EXECUTOR.to_owned()),
            Executor::Exec => exec::start(
                &self.inner.dir,
                &task,
                &env,
                exec_files.take(),
                &mut runtime,
            )
            .map(Started::Child),
            Executor::Docker(engine) => engine
                .start(&self.inner.dir, &task, &mut runtime)
                .await
                .map(|()| Started::Container),
        };
        // Recorded before anything else can fail, so that the process is found again.
        self.set_runtime(&id, Some(runtime.clone()), plumb_first);
        let mut started = match started {
            Ok(started) => {
                crate::figures::agent().task_starts.inc();
                started
            }
            Err(e) => {
                count_failure("start");
                return self.finish(&id, Some(runtime), TaskState::Failed, e).await;
            }
        };
        if !plumb_first && let Err(e) = self.plumb(&id, &runtime).await {
            self.stop_runtime(&runtime, &task.spec.container_spec).await;
            return self
                .finish(&id, Some(runtime), TaskState::Rejected, e)
                .await;
        }
        // With a health check, the task is running for the swarm only once it is healthy.
        let mut probe = health::Probe::new(&task, &env, &self.inner.executor);
        if let Some(probe) = probe.as_mut() {
            let verdict = tokio::select! {
                exit = self.wait(&mut started, &runtime) => {
                    return self.exited(&id, runtime, exit).await;
                }
                () = until_stopped(&mut stopped) => Err(String::new()),
                verdict = probe.until_healthy(&runtime) => verdict,
            };
            if let Err(why) = verdict {
                return self.never_healthy(&id, &task, started, runtime, why).await;
            }
        }
        self.report_running(&id, &runtime);
        let unhealthy = health::until_unhealthy(probe.as_mut(), &runtime);
        tokio::select! {
            exit = self.wait(&mut started, &runtime) => self.exited(&id, runtime, exit).await,
            () = until_stopped(&mut stopped) => {
                drain(&mut started, self, &runtime).await;
                self.stop_runtime(&runtime, &task.spec.container_spec).await;
                if let Started::Child(child) = &mut started {
                    let _ = child.wait().await;
                }
                self.finish(&id, Some(runtime), TaskState::Shutdown, String::new()).await;
            }
            why = unhealthy => {
                // Stopped, then reported failed: the managers replace it, and every node's
                // mesh, VIPs and DNS drop it.
                count_failure("unhealthy");
                self.stop_runtime(&runtime, &task.spec.container_spec).await;
                if let Started::Child(child) = &mut started {
                    let _ = child.wait().await;
                }
                self.finish(&id, Some(runtime), TaskState::Failed, why).await;
            }
        }
    }

    /// Serves one log request of the leader: the lines of `tasks` this node has, sent up as
    /// `FromNode` messages of subscription `id`, then `done` (never, with `follow`: the request
    /// is cancelled instead).
    pub(crate) async fn serve_logs(
        &self,
        id: u64,
        tasks: Vec<String>,
        query: shoal_api::logs::LogsQuery,
        up: mpsc::Sender<shoal_api::v1::NodeLogReply>,
    ) {
        use shoal_control::manager::logs::FromNode;
        let send = |message: FromNode| {
            let up = up.clone();
            async move { up.send(message.into()).await.is_ok() }
        };
        let (tx, mut rx) = mpsc::channel(16);
        let reading = Arc::new(tokio::sync::Semaphore::new(2));
        let mut jobs = tokio::task::JoinSet::new();
        let mut warnings = Vec::new();
        for task in tasks {
            let container = self
                .lock()
                .tasks
                .get(&task)
                .and_then(|l| l.runtime.as_ref()?.container.clone());
            let (tx, query, dir) = (tx.clone(), query.clone(), self.inner.dir.clone());
            match (container, &self.inner.executor) {
                (Some(container), Executor::Docker(engine))
                    if !logs::has(&self.inner.dir, &task) =>
                {
                    let engine = engine.clone();
                    jobs.spawn(async move {
                        engine.serve_logs(&container, &task, &query, &tx).await;
                    });
                }
                _ if logs::has(&self.inner.dir, &task) => {
                    let reading = reading.clone();
                    jobs.spawn(
                        async move { logs::serve(&dir, &task, &query, &tx, &reading).await },
                    );
                }
                _ => warnings.push(format!("task {task} has no logs on this node")),
            }
        }
        drop(tx);
        if !warnings.is_empty()
            && !send(FromNode {
                id,
                warnings,
                ..Default::default()
            })
            .await
        {
            return;
        }
        while let Some(lines) = rx.recv().await {
            let message = FromNode {
                id,
                lines,
                ..Default::default()
            };
            if !send(message).await {
                return;
            }
        }
        send(FromNode {
            id,
            done: true,
            ..Default::default()
        })
        .await;
    }

    /// Reports a started task running, with its process (and container).
    fn report_running(&self, id: &str, runtime: &Runtime) {
        self.report(
            id,
            TaskStatus {
                container_status: Some(ContainerStatus {
                    container_id: runtime.container.clone().unwrap_or_default(),
                    pid: runtime.pid,
                    ..Default::default()
                }),
                ..status(TaskState::Running, "started")
            },
        );
    }

    /// Attaches the task's namespace to its networks (one coalesced data-plane apply).
    async fn plumb(&self, id: &str, runtime: &Runtime) -> Result<(), String> {
        self.set_runtime(id, Some(runtime.clone()), true);
        self.apply()
            .await
            .map_err(|e| format!("plugging the task into its networks: {e}"))
    }

    fn node_id(&self) -> String {
        self.lock()
            .context
            .as_ref()
            .map(|c| c.node_id.clone())
            .unwrap_or_default()
    }

    /// Waits until a started task ends.
    async fn wait(&self, started: &mut Started, runtime: &Runtime) -> Exit {
        match (started, &self.inner.executor) {
            (Started::Child(child), _) => exec::wait(child).await,
            (Started::Container, Executor::Docker(engine)) => engine.wait(runtime).await,
            (Started::Container, Executor::Exec | Executor::None) => {
                exec::wait_adopted(runtime).await;
                Exit::Unknown("its exit status is unknown".into())
            }
        }
    }

    /// Stops a task's process or container: its stop signal (SIGTERM), then SIGKILL after its
    /// grace period ([`exec::STOP_GRACE`]).
    async fn stop_runtime(&self, runtime: &Runtime, spec: &shoal_api::service::ContainerSpec) {
        let how = exec::stop_how(spec);
        match &self.inner.executor {
            // The container was made with the stop signal.
            Executor::Docker(engine) if runtime.container.is_some() => {
                engine.stop(runtime, how.1).await;
            }
            _ => exec::stop(runtime, how).await,
        }
    }

    /// Removes what a task left: its namespace's mount and its container.
    async fn cleanup(&self, runtime: &Runtime) {
        exec::cleanup(runtime);
        if let (Some(id), Executor::Docker(engine)) = (&runtime.container, &self.inner.executor) {
            engine.remove(id).await;
        }
        if let Some(task) = runtime.netns.file_name().and_then(|n| n.to_str()) {
            files::remove_for_docker(task);
        }
    }

    /// Watches a task found running after a restart.
    async fn supervise_adopted(
        &self,
        id: String,
        runtime: Runtime,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut started = Started::Container;
        let known = self
            .lock()
            .tasks
            .get(&id)
            .map(|l| (l.task.clone(), l.status.state));
        let Some((task, state)) = known else {
            return;
        };
        // Its health check goes on; a task that was not yet healthy (or not yet reported
        // running) when the daemon stopped is reported running once it is.
        let env = self.env(&task);
        let mut probe = health::Probe::new(&task, &env, &self.inner.executor);
        let healthy = async {
            match probe.as_mut() {
                Some(probe) if state < TaskState::Running => probe.until_healthy(&runtime).await,
                _ => Ok(()),
            }
        };
        let verdict = tokio::select! {
            exit = self.wait(&mut started, &runtime) => Some(Err(exit)),
            () = until_stopped(&mut stopped) => None,
            verdict = healthy => Some(Ok(verdict)),
        };
        match verdict {
            Some(Ok(Ok(()))) => {
                if state < TaskState::Running {
                    self.report_running(&id, &runtime);
                }
            }
            Some(Ok(Err(why))) => {
                self.stop_runtime(&runtime, &task.spec.container_spec).await;
                return self
                    .finish(&id, Some(runtime), TaskState::Failed, why)
                    .await;
            }
            Some(Err(exit)) => return self.adopted_exit(&id, runtime, exit).await,
            None => {
                self.stop_runtime(&runtime, &task.spec.container_spec).await;
                return self
                    .finish(&id, Some(runtime), TaskState::Shutdown, String::new())
                    .await;
            }
        }
        let unhealthy = health::until_unhealthy(probe.as_mut(), &runtime);
        tokio::select! {
            exit = self.wait(&mut started, &runtime) => self.adopted_exit(&id, runtime, exit).await,
            () = until_stopped(&mut stopped) => {
                drain(&mut started, self, &runtime).await;
                self.stop_runtime(&runtime, &task.spec.container_spec).await;
                self.finish(&id, Some(runtime), TaskState::Shutdown, String::new()).await;
            }
            why = unhealthy => {
                self.stop_runtime(&runtime, &task.spec.container_spec).await;
                self.finish(&id, Some(runtime), TaskState::Failed, why).await;
            }
        }
    }

    /// An adopted task's end: its exit status is the engine's, or unknown for a process that is
    /// not this daemon's child.
    async fn adopted_exit(&self, id: &str, runtime: Runtime, exit: Exit) {
        let exit = match exit {
            Exit::Unknown(_) => {
                Exit::Unknown("its exit status is unknown: shoald restarted while it ran".into())
            }
            exit => exit,
        };
        self.exited(id, runtime, exit).await;
    }

    async fn exited(&self, id: &str, runtime: Runtime, exit: Exit) {
        let (state, err) = match exit {
            Exit::Code(0) => (TaskState::Complete, String::new()),
            Exit::Code(code) => (TaskState::Failed, format!("task: non-zero exit ({code})")),
            Exit::Signal(signal) => (
                TaskState::Failed,
                format!("task: killed by signal {signal}"),
            ),
            Exit::Unknown(why) => (TaskState::Failed, format!("task: exited; {why}")),
        };
        if state == TaskState::Failed {
            count_failure("exit");
        }
        self.finish(id, Some(runtime), state, err).await;
    }

    /// Ends a task: detaches it, cleans up, reports its final state.
    async fn finish(&self, id: &str, runtime: Option<Runtime>, state: TaskState, err: String) {
        if let Some(runtime) = &runtime {
            self.set_runtime(id, Some(runtime.clone()), false);
            if let Err(e) = self.apply().await {
                tracing::warn!(task = %id, error = %e, "detaching a task");
            }
            // A container's logs go with it: keep them as an exec task's are kept.
            if let (Some(container), Executor::Docker(engine)) =
                (&runtime.container, &self.inner.executor)
            {
                engine.keep_logs(container, &self.inner.dir, id).await;
            }
            self.cleanup(runtime).await;
        }
        self.set_runtime(id, None, false);
        if state == TaskState::Rejected {
            count_failure("rejected");
        }
        let message = match state {
            TaskState::Complete => "finished",
            TaskState::Shutdown => "shutdown",
            TaskState::Rejected => "rejected",
            _ => "failed",
        };
        if !err.is_empty() {
            tracing::info!(task = %id, error = %err, "task ended");
        }
        self.report(
            id,
            TaskStatus {
                err,
                ..status(state, message)
            },
        );
    }

    /// Gives each plugged task that should have a way out an address in its subnet, and takes
    /// it from those that should not (or no longer run); saved when anything changed.
    fn assign_way_outs(&self) {
        let changed = {
            let mut state = self.lock();
            let internal = |network: &str| {
                state
                    .assignment
                    .as_ref()?
                    .networks
                    .iter()
                    .find(|n| n.id == network)
                    .map(|n| n.spec.internal)
            };
            let wanted: BTreeMap<String, bool> = state
                .tasks
                .iter()
                .map(|(id, local)| {
                    let wants = local.attached
                        && local.runtime.is_some()
                        && way_out::has_way_out(
                            local
                                .task
                                .networks_attachments
                                .iter()
                                .map(|a| a.network_id.as_str()),
                            internal,
                        );
                    (id.clone(), wants)
                })
                .collect();
            let mut used: std::collections::BTreeSet<u32> =
                state.tasks.values().filter_map(|l| l.way_out).collect();
            let mut changed = false;
            for (id, wants) in wanted {
                let local = state.tasks.get_mut(&id).expect("listed above");
                match (wants, local.way_out) {
                    (true, None) => {
                        // A /16 at least: 65,533 tasks on one node before none is free.
                        local.way_out = way_out::free_offset(&used, 16);
                        used.extend(local.way_out);
                        changed |= local.way_out.is_some();
                    }
                    (false, Some(offset)) => {
                        used.remove(&offset);
                        local.way_out = None;
                        changed = true;
                    }
                    _ => {}
                }
            }
            changed
        };
        if changed {
            self.save();
        }
    }

    /// The names the node's tasks resolve, and the plugged tasks that ask (each with its
    /// networks, ingress aside).
    fn dns_plan(&self) -> (crate::dns::Records, Vec<crate::dns::Asker>) {
        let state = self.lock();
        let Some(a) = state
            .assignment
            .as_ref()
            .filter(|_| state.context.is_some())
        else {
            return (crate::dns::Records::default(), Vec::new());
        };
        let ingress = a
            .networks
            .iter()
            .find(|n| n.spec.ingress)
            .map(|n| n.id.as_str());
        let askers = state
            .tasks
            .values()
            .filter(|l| l.attached && !l.status.state.is_terminal())
            .filter_map(|l| {
                Some(crate::dns::Asker {
                    netns: l.runtime.as_ref()?.netns.clone(),
                    networks: l
                        .task
                        .networks_attachments
                        .iter()
                        .map(|n| n.network_id.clone())
                        .filter(|n| Some(n.as_str()) != ingress)
                        .collect(),
                })
            })
            .collect();
        (crate::dns::Records::new(&a.services), askers)
    }

    /// The data plane this node should have now ([`desired::desired`], from what the worker
    /// holds under its lock).
    fn desired(&self) -> Option<DesiredState> {
        let state = self.lock();
        let context = state.context.as_ref()?;
        let empty = Assignment::default();
        let assignment = state.assignment.as_ref().unwrap_or(&empty);
        let here = desired::Here {
            context,
            wireguard_cpus: &self.inner.wireguard_cpus,
            tasks: state
                .tasks
                .values()
                .filter(|l| l.attached)
                .map(|l| desired::LocalTask {
                    task: &l.task,
                    netns: l.runtime.as_ref().map(|r| r.netns.as_path()),
                    way_out: l.way_out,
                    running: l.status.state == TaskState::Running,
                })
                .collect(),
            routes: way_out::host_routes(Some(WAY_OUT_BRIDGE)),
        };
        let wanted = desired::desired(assignment, &here);
        if wanted.no_way_out {
            tracing::warn!(
                "no subnet for the tasks' way out: every one of 172.18-31.0.0/16 and 192.168.0-240.0/20 overlaps a route of this node or an overlay"
            );
        }
        Some(wanted.state)
    }
}

/// Applies the data plane whenever asked, once for all the requests that arrived meanwhile.
async fn applier(
    worker: std::sync::Weak<Inner>,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Some(first) = requests.recv().await {
        // Let a burst of task starts arrive, then apply once for all.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut waiting = vec![first];
        while let Ok(more) = requests.try_recv() {
            waiting.push(more);
        }
        let Some(inner) = worker.upgrade() else {
            return;
        };
        let worker = Worker { inner };
        worker.assign_way_outs();
        let result = match worker.desired() {
            None => Ok(()),
            Some(state) => worker
                .inner
                .dataplane
                .apply_state(state)
                .await
                .map(drop)
                .map_err(|e| e.message().to_owned()),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "applying the data plane for the node's tasks");
        }
        let (records, askers) = worker.dns_plan();
        worker.inner.dns.update(records, askers).await;
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}

/// How long a task asked to stop keeps running at least before it is signalled. The managers
/// stopped sending it new connections when they asked (every node's routing mesh keeps it at
/// weight 0, so the connections it has stay with it; VIPs and DNS dropped it in the same
/// assignment). An update or a scale-down then drops no request.
const DRAIN: Duration = Duration::from_secs(1);

/// Beyond [`DRAIN`], the task keeps running until this long has passed with no new TCP
/// connection reaching its network namespace: a node that applied the change late still had a
/// client's connection land on it.
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// The longest a task drains, however busy it stays.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// Waits until a running task asked to stop has drained (see [`DRAIN`] and [`DRAIN_QUIET`]),
/// unless it ends by itself meanwhile.
async fn drain(started: &mut Started, worker: &Worker, runtime: &Runtime) {
    let quiet = async {
        let start = tokio::time::Instant::now();
        let mut seen = arrivals(runtime.pid);
        let mut last_arrival = start;
        loop {
            tokio::time::sleep(DRAIN_QUIET / 2).await;
            let now = tokio::time::Instant::now();
            let arrived = arrivals(runtime.pid);
            if arrived != seen {
                seen = arrived;
                last_arrival = now;
            }
            let drained =
                now - start >= DRAIN && (seen.is_none() || now - last_arrival >= DRAIN_QUIET);
            if drained || now - start >= DRAIN_MAX {
                return;
            }
        }
    };
    tokio::select! {
        _ = worker.wait(started, runtime) => {}
        () = quiet => {}
    }
}

/// The TCP connections process `pid`'s network namespace has accepted, from
/// `/proc/<pid>/net/snmp`. `None` when that cannot be read. (UDP is not counted: the replies to
/// the task's own DNS lookups arrive in the same namespace.)
fn arrivals(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).ok()?;
    arrivals_in(&text)
}

/// [`arrivals`] from the text of a `/proc/net/snmp`: `Tcp: PassiveOpens` (a header line, then
/// a value line).
fn arrivals_in(snmp: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = lines.next()?.split_whitespace().skip(1);
    let values = lines.next()?.split_whitespace().skip(1);
    names
        .zip(values)
        .find(|(name, _)| *name == "PassiveOpens")
        .and_then(|(_, v)| v.parse().ok())
}

/// Resolves once a stop was asked for (or the asker is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Counts a task failure in `shoal_task_failures_total` by `reason`.
fn count_failure(reason: &'static str) {
    crate::figures::agent()
        .task_failures
        .get_or_create(&[("reason", reason)])
        .inc();
}

#[cfg(test)]
mod tests {
    use shoal_control::limits;
    use shoal_dataplane::mesh::maglev;

    /// An adopted task's environment is read back from its process, less shoald's variables.
    #[test]
    fn an_adopted_tasks_environment_comes_from_its_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env_clear()
            .env("TOKEN", "a=b")
            .env("SHOAL_TASK_ID", "t1")
            .env("SHOAL_NODE_ID", "n1")
            .spawn()
            .expect("sleep starts");
        let env = super::environment_of(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(env, vec!["TOKEN=a=b".to_owned()]);
    }

    /// A draining task's arrivals: the TCP connections it accepted.
    #[test]
    fn arrivals_count_accepted_connections() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\n\
            Tcp: 1 200 120000 -1 7 42 0\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams\nUdp: 5 1 0 9\n\
            UdpLite: InDatagrams NoPorts\nUdpLite: 100 0\n";
        assert_eq!(super::arrivals_in(snmp), Some(42));
        assert_eq!(super::arrivals_in("Tcp: PassiveOpens\n"), None);
        assert_eq!(super::arrivals_in(""), None);
    }

    /// The managers bound published services with the mesh's own figures.
    #[test]
    fn the_managers_mesh_bounds_are_the_data_planes() {
        assert_eq!(
            limits::MESH_SLOTS_PER_BACKEND,
            u64::from(maglev::SLOTS_PER_BACKEND)
        );
        assert_eq!(
            *limits::MESH_TABLE_SIZES.last().expect("sizes"),
            maglev::MAX_TABLE_SIZE
        );
        assert_eq!(
            limits::WIREGUARD_PORT,
            shoal_dataplane::overlay::model::DEFAULT_WIREGUARD_PORT
        );
        for size in limits::MESH_TABLE_SIZES {
            assert!(maglev::is_prime(size), "{size}");
        }
    }
}
