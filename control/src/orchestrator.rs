//! The reconciler the leader runs whenever services, tasks or nodes change: orchestration
//! (desired tasks per service), allocation (addresses), scheduling (nodes), in that order, as
//! one pure function from what the store holds to the changes that close the gap.
//!
//! ```text
//!   World (services, tasks, nodes, networks, each with its version)
//!     ├─ orchestrate: replicated: one live task per slot 1..=N; global: one per eligible node.
//!     │    A task whose node is Down, drained or gone, or that failed (after RESTART_DELAY),
//!     │    is shut down and replaced; slots above N are shut down; tasks of removed services
//!     │    are shut down, then deleted; TASK_HISTORY_PER_SLOT old tasks kept per slot.
//!     ├─ allocate: new tasks get an address on each of their networks (and ingress when the
//!     │    service publishes through the mesh); nodes get their ingress address.
//!     └─ schedule: pending tasks, identical ones in one batch, through scheduler::place.
//!  -> Vec<Change>, each update carrying the version it read: the store refuses the whole set
//!     if anything changed meanwhile, and the leader simply runs the reconciler again.
//! ```
//!
//! A task moves forward only: the reconciler writes its desired state and, before a node has it,
//! its state up to `assigned`; the node writes the rest (`accepted` .. `running`, `failed`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Serialize, de::DeserializeOwned};
use shoal_api::service::{
    FailureAction, Network, NetworkAttachment, PublishMode, RestartCondition, RestartPolicy,
    Service, Task, TaskState, TaskStatus, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};
use shoal_api::swarm::{Availability, Node, NodeState, Role};
use shoal_api::version::Version;
use time::OffsetDateTime;

use crate::allocator::Allocator;
use crate::limits;
use crate::scheduler::{self, Constraint, NodeInfo, Placement};
use crate::store::{Change, Kind, Object, ReadTx};

/// How long a task that failed waits before it is replaced (SwarmKit's restart delay), unless
/// its restart policy says otherwise.
pub const RESTART_DELAY: Duration = Duration::from_secs(5);
/// Old tasks kept per slot (SwarmKit's task history retention limit).
pub const TASK_HISTORY_PER_SLOT: usize = 5;

/// A decoded object and the version it was read at.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The version.
    pub version: u64,
    /// The object.
    pub value: T,
}

/// Everything the reconciler reads.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Nodes by ID.
    pub nodes: BTreeMap<String, Versioned<Node>>,
    /// Services by ID.
    pub services: BTreeMap<String, Versioned<Service>>,
    /// Tasks by ID.
    pub tasks: BTreeMap<String, Versioned<Task>>,
    /// Networks by ID.
    pub networks: BTreeMap<String, Versioned<Network>>,
    /// The pools overlay subnets come from and their length (`swarm init
    /// --default-addr-pool`); empty: the default.
    pub address_pools: (Vec<Ipv4Net>, u8),
    /// Stopped tasks kept per slot (`swarm update --task-history-limit`); `None`: [`TASK_HISTORY_PER_SLOT`].
    pub task_history: Option<usize>,
}

fn decode<T: DeserializeOwned>(object: &Object) -> Option<Versioned<T>> {
    match serde_json::from_value(object.body.clone()) {
        Ok(value) => Some(Versioned {
            version: object.version,
            value,
        }),
        Err(e) => {
            tracing::error!(kind = ?object.kind, id = %object.id, error = %e, "a stored object does not decode");
            None
        }
    }
}

/// Every object of `kind`, decoded, `fix` giving each its ID and version.
fn all<T: DeserializeOwned>(
    tx: &ReadTx<'_>,
    kind: Kind,
    mut fix: impl FnMut(&mut T, &Object),
) -> BTreeMap<String, Versioned<T>> {
    tx.list(kind)
        .filter_map(|o| {
            let mut v = decode::<T>(o)?;
            fix(&mut v.value, o);
            Some((o.id.clone(), v))
        })
        .collect()
}

fn version(o: &Object) -> Version {
    Version { index: o.version }
}

fn services(tx: &ReadTx<'_>) -> BTreeMap<String, Versioned<Service>> {
    all(tx, Kind::Service, |s: &mut Service, o| {
        s.id.clone_from(&o.id);
        s.version = version(o);
    })
}

fn networks(tx: &ReadTx<'_>) -> BTreeMap<String, Versioned<Network>> {
    all(tx, Kind::Network, |n: &mut Network, o| {
        n.id.clone_from(&o.id);
        n.version = version(o);
    })
}

impl World {
    /// Reads the world from a view of the store. IDs and versions come from the objects.
    pub fn read(tx: &ReadTx<'_>) -> Self {
        Self {
            nodes: all(tx, Kind::Node, |n: &mut Node, o| {
                n.id.clone_from(&o.id);
                n.version = version(o);
            }),
            services: services(tx),
            tasks: all(tx, Kind::Task, |t: &mut Task, o| {
                t.id.clone_from(&o.id);
                t.version = version(o);
            }),
            networks: networks(tx),
            // Two fields of the cluster object (`shoal_api::swarm::Cluster`), not the whole of
            // it (its keys and certificates) on every read.
            address_pools: tx
                .list(Kind::Cluster)
                .next()
                .map(|o| {
                    let pools = o.body["DefaultAddrPool"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.as_str()?.parse().ok())
                        .collect();
                    let length = o.body["SubnetSize"].as_u64().unwrap_or_default();
                    (pools, u8::try_from(length).unwrap_or_default())
                })
                .unwrap_or_default(),
            task_history: tx.list(Kind::Cluster).next().and_then(|o| {
                let limit =
                    o.body["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"].as_u64()?;
                usize::try_from(limit).ok()
            }),
        }
    }

    /// Only the services: for the reads that need nothing else (`service ls`, `inspect`),
    /// without decoding every task.
    pub fn read_services(tx: &ReadTx<'_>) -> Self {
        Self {
            services: services(tx),
            ..Self::default()
        }
    }

    /// Only the networks (`network ls`, `inspect`).
    pub fn read_networks(tx: &ReadTx<'_>) -> Self {
        Self {
            networks: networks(tx),
            ..Self::default()
        }
    }

    /// The ingress network (the one whose spec says `ingress`), if the swarm has one.
    pub fn ingress(&self) -> Option<&Network> {
        self.networks
            .values()
            .map(|n| &n.value)
            .find(|n| n.spec.ingress)
    }
}

/// The allocator as the store has it: networks, every address held by a live task, a VIP or a
/// node, every published port.
pub fn allocator(world: &World) -> Allocator {
    let (pools, subnet_len) = &world.address_pools;
    let mut allocator = if pools.is_empty() {
        Allocator::default()
    } else {
        Allocator::new(
            pools.clone(),
            if *subnet_len == 0 {
                crate::allocator::DEFAULT_SUBNET_LEN
            } else {
                *subnet_len
            },
        )
    };
    for network in world.networks.values().map(|n| &n.value) {
        let (Some(config), Some(vni)) = (network.subnet(), network.vni()) else {
            continue;
        };
        let (Ok(subnet), Ok(gateway)) = (
            config.subnet.parse::<Ipv4Net>(),
            config.gateway.parse::<Ipv4Addr>(),
        ) else {
            continue;
        };
        allocator.restore_network(&network.id, subnet, gateway, vni);
    }
    let mut hold = |attachments: &[NetworkAttachment]| {
        for a in attachments {
            for addr in &a.addresses {
                if let Some(ip) = address_of(addr) {
                    allocator.reserve(&a.network_id, ip);
                }
            }
        }
    };
    for task in world.tasks.values().map(|t| &t.value) {
        if !task.status.state.is_terminal() {
            hold(&task.networks_attachments);
        }
    }
    for node in world.nodes.values() {
        hold(&node.value.attachments);
    }
    for service in world.services.values().map(|s| &s.value) {
        for vip in &service.endpoint.virtual_ips {
            if let Some(ip) = address_of(&vip.addr) {
                allocator.reserve(&vip.network_id, ip);
            }
        }
        allocator.restore_ports(
            &service.spec.name,
            service
                .endpoint
                .ports
                .iter()
                .filter(|p| p.publish_mode == PublishMode::Ingress)
                .map(|p| (p.protocol, p.published_port)),
        );
    }
    allocator
}

/// The address of `10.0.0.5/24`.
pub fn address_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// The networks a service's tasks join: its own, and ingress when it publishes ports (first,
/// so it is the task's first interface).
pub fn task_networks(service: &Service, ingress: Option<&str>) -> Vec<String> {
    let mut networks = Vec::new();
    // Host-mode ports are served by the node's mesh program too, from the ingress network.
    let meshed = !service.endpoint.ports.is_empty();
    if meshed && let Some(ingress) = ingress {
        networks.push(ingress.to_owned());
    }
    for n in &service.spec.task_template.networks {
        if !networks.contains(&n.target) {
            networks.push(n.target.clone());
        }
    }
    networks
}

/// A node the scheduler may use at all (Ready; Active for new tasks is the scheduler's).
fn node_ready(node: Option<&Node>) -> bool {
    node.is_some_and(|n| n.status.state == NodeState::Ready)
}

fn node_info(node: &Node) -> NodeInfo {
    NodeInfo {
        id: node.id.clone(),
        hostname: node.description.hostname.clone(),
        role: node.spec.role.unwrap_or(Role::Worker).to_string(),
        labels: node.spec.labels.clone(),
        os: node.description.platform.os.clone(),
        arch: node.description.platform.architecture.clone(),
        ready: node.status.state == NodeState::Ready,
        // A node whose daemon runs no executor takes no tasks: "not available for new tasks".
        active: node.spec.availability == Availability::Active
            && node.description.executor != "none",
        tasks: HashMap::new(),
        host_ports: BTreeSet::new(),
        available: scheduler::Resources {
            nano_cpus: clamp(node.description.resources.nano_cpus),
            memory_bytes: clamp(node.description.resources.memory_bytes),
        },
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What a task of `spec` reserves on its node.
fn reservation(spec: &shoal_api::service::TaskSpec) -> scheduler::Resources {
    let r = &spec.resources.reservations;
    scheduler::Resources {
        nano_cpus: clamp(r.nano_cpus),
        memory_bytes: clamp(r.memory_bytes),
    }
}

fn placement(service: &Service) -> Placement {
    let template = &service.spec.task_template;
    Placement {
        reservation: reservation(template),
        max_per_node: usize::try_from(template.placement.max_replicas).unwrap_or(usize::MAX),
        spread_over: template
            .placement
            .preferences
            .iter()
            .filter_map(|p| p.label().ok().map(str::to_owned))
            .collect(),
        constraints: service
            .spec
            .task_template
            .placement
            .constraints
            .iter()
            .filter_map(|c| c.parse::<Constraint>().ok())
            .collect(),
        host_ports: service
            .endpoint
            .ports
            .iter()
            .filter(|p| p.publish_mode == PublishMode::Host)
            .map(|p| (p.protocol, p.published_port))
            .collect(),
    }
}

/// The working copy of the tasks: what changed is written back.
struct Tasks {
    all: BTreeMap<String, Task>,
    read: BTreeMap<String, u64>,
    dirty: BTreeSet<String>,
    deleted: BTreeSet<String>,
}

impl Tasks {
    fn edit(&mut self, id: &str) -> &mut Task {
        self.dirty.insert(id.to_owned());
        self.all.get_mut(id).expect("a known task")
    }

    fn add(&mut self, task: Task) {
        self.dirty.insert(task.id.clone());
        self.all.insert(task.id.clone(), task);
    }

    fn delete(&mut self, id: &str) {
        self.all.remove(id);
        self.dirty.remove(id);
        self.deleted.insert(id.to_owned());
    }
}

/// Whether a live task must be replaced, and why.
fn must_replace(task: &Task, world: &World, now: OffsetDateTime) -> Option<&'static str> {
    let node = world.nodes.get(&task.node_id).map(|n| &n.value);
    if !task.node_id.is_empty() {
        match node {
            None => return Some("the node was removed"),
            Some(n) if n.status.state == NodeState::Down => return Some("the node is down"),
            Some(n) if n.spec.availability == Availability::Drain => {
                return Some("the node is drained");
            }
            _ => {}
        }
    }
    if task.status.state.is_terminal() {
        let policy = task.spec.restart_policy.clone().unwrap_or_default();
        let failed = task.status.state != TaskState::Complete;
        let wanted = match policy.condition {
            RestartCondition::None => false,
            RestartCondition::OnFailure => failed,
            RestartCondition::Any => true,
        };
        if !wanted || restarts_exhausted(task, &policy, world, now) {
            return None;
        }
        let since = parse_time(&task.status.timestamp).unwrap_or(now);
        let delay = Duration::from_nanos(policy.delay);
        if now - since >= delay {
            return Some("the task stopped");
        }
    }
    None
}

/// Whether a slot (or a global service's node) has been restarted `max_attempts` times within
/// the policy's window: its older tasks that stopped by themselves and were replaced.
fn restarts_exhausted(
    task: &Task,
    policy: &RestartPolicy,
    world: &World,
    now: OffsetDateTime,
) -> bool {
    if policy.max_attempts == 0 {
        return false;
    }
    let window = time::Duration::nanoseconds(i64::try_from(policy.window).unwrap_or(i64::MAX));
    let same_slot = |t: &Task| {
        t.service_id == task.service_id
            && t.slot == task.slot
            && (t.slot > 0 || t.node_id == task.node_id)
    };
    let restarts = world
        .tasks
        .values()
        .map(|t| &t.value)
        .filter(|t| t.id != task.id && same_slot(t))
        .filter(|t| t.desired_state > TaskState::Running && t.status.state.is_terminal())
        // Ended by themselves (not stopped by an update or a drain), on the same spec.
        .filter(|t| t.status.state != TaskState::Shutdown && t.spec == task.spec)
        .filter(|t| {
            policy.window == 0
                || parse_time(&t.status.timestamp).is_some_and(|at| now - at < window)
        })
        .count();
    restarts as u64 >= policy.max_attempts
}

/// Whether a task runs something other than its service's current spec (an update replaces it).
pub fn is_dirty(task: &Task, service: &Service) -> bool {
    task.spec != service.spec.task_template || task.ports != service.endpoint.ports
}

/// How a service's tasks roll over now: its rollback settings during a rollback, its update
/// settings otherwise (Docker's defaults when unset).
fn update_config(service: &Service) -> UpdateConfig {
    let rollback = service
        .update_status
        .as_ref()
        .is_some_and(|u| u.state.is_rollback());
    let config = match rollback {
        true => &service.spec.rollback_config,
        false => &service.spec.update_config,
    };
    config.clone().unwrap_or_default()
}

/// What an update does in one pass of the reconciler.
#[derive(Debug, PartialEq, Eq)]
enum UpdateStep {
    /// Replace the tasks of these slots (nodes) now.
    Replace(Vec<(u64, String)>),
    /// Nothing to start yet: replacements are starting, or waiting out the delay.
    Wait,
    /// The update ends (completed, paused) or turns into a rollback.
    Status(NextStatus),
}

/// A new update status, and whether the spec goes back to the previous one.
#[derive(Debug, PartialEq, Eq)]
struct NextStatus {
    status: UpdateStatus,
    roll_back: bool,
}

/// One step of a rolling update, from the tasks as they are: a pure function of the store and
/// the clock, so a new leader resumes it where it stands.
///
/// A replaced slot is in flight until its new task has run for `delay`; at most `parallelism`
/// are in flight. A new task that fails (or is rejected) within `monitor` of starting counts
/// against the update; more than `max_failure_ratio` of the slots failing triggers the failure
/// action. The update completes once no slot runs the old spec and every new task has run for
/// `monitor`.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of one service's state"
)]
fn update_step(
    service: &Service,
    progress: &UpdateStatus,
    config: &UpdateConfig,
    all: &BTreeMap<String, Task>,
    live: &BTreeMap<(u64, String), String>,
    held: &BTreeSet<(u64, String)>,
    slots: usize,
    now: OffsetDateTime,
) -> UpdateStep {
    let rollback = progress.state.is_rollback();
    let started = parse_time(&progress.started_at).unwrap_or(now);
    let since = |t: &Task| parse_time(&t.created_at).is_some_and(|c| c >= started);
    let ran_for = |t: &Task| {
        (t.status.state == TaskState::Running)
            .then(|| parse_time(&t.status.timestamp))
            .flatten()
            .map(|at| now - at)
    };
    let nanos = |n: u64| time::Duration::nanoseconds(i64::try_from(n).unwrap_or(i64::MAX));
    let (delay, monitor) = (nanos(config.delay), nanos(config.monitor));
    // New tasks that failed early.
    let failed: Vec<&Task> = all
        .values()
        .filter(|t| t.service_id == service.id && since(t) && !is_dirty(t, service))
        .filter(|t| matches!(t.status.state, TaskState::Failed | TaskState::Rejected))
        .filter(
            |t| match (parse_time(&t.started_at), parse_time(&t.status.timestamp)) {
                (Some(run), Some(end)) => end - run < monitor,
                _ => true,
            },
        )
        .collect();
    let tolerated = config.max_failure_ratio.0 * slots.max(1) as f64;
    if let Some(first) = failed.first()
        && failed.len() as f64 > tolerated
        && config.failure_action != FailureAction::Continue
    {
        return UpdateStep::Status(failure_status(service, progress, config, &first.id, now));
    }
    let todo: Vec<(u64, String)> = live
        .iter()
        .filter(|(_, id)| is_dirty(&all[*id], service))
        .map(|(k, _)| k.clone())
        .collect();
    let fresh: Vec<&Task> = live
        .values()
        .map(|id| &all[id])
        .filter(|t| !is_dirty(t, service) && since(t))
        .collect();
    // Slots with no live task are being replaced (their old task stopping, or their new one
    // about to be made), as are those whose new task has not run for `delay` yet.
    let vacant = slots.saturating_sub(live.len()).max(held.len());
    let in_flight = vacant
        + fresh
            .iter()
            .filter(|t| ran_for(t).is_none_or(|d| d < delay))
            .count();
    if todo.is_empty() {
        let stable = vacant == 0
            && fresh
                .iter()
                .all(|t| ran_for(t).is_some_and(|d| d >= monitor));
        if !stable {
            return UpdateStep::Wait;
        }
        let (state, message) = match rollback {
            true => (UpdateState::RollbackCompleted, "rollback completed"),
            false => (UpdateState::Completed, "update completed"),
        };
        return UpdateStep::Status(NextStatus {
            status: UpdateStatus {
                state,
                started_at: progress.started_at.clone(),
                completed_at: rfc3339(now),
                message: message.into(),
            },
            roll_back: false,
        });
    }
    let room = match config.parallelism {
        0 => todo.len(),
        p => usize::try_from(p)
            .unwrap_or(usize::MAX)
            .saturating_sub(in_flight),
    };
    if room == 0 {
        return UpdateStep::Wait;
    }
    UpdateStep::Replace(todo.into_iter().take(room).collect())
}

/// The status an update (or a rollback) turns to when too many of its new tasks failed, `task`
/// first: a rollback, or a pause.
fn failure_status(
    service: &Service,
    progress: &UpdateStatus,
    config: &UpdateConfig,
    task: &str,
    now: OffsetDateTime,
) -> NextStatus {
    let rollback = progress.state.is_rollback();
    let what = if rollback { "rollback" } else { "update" };
    let wants_rollback = !rollback && config.failure_action == FailureAction::Rollback;
    // The reconciler does not allocate published ports: an update that changed them is
    // paused instead, for `service rollback` (which does) to undo.
    let ports_changed = service
        .previous_spec
        .as_ref()
        .is_none_or(|p| p.endpoint_spec != service.spec.endpoint_spec);
    let roll_back = wants_rollback && !ports_changed;
    let why = if wants_rollback && ports_changed {
        " (the update changed the published ports: `service rollback` gives them back)"
    } else {
        ""
    };
    let (state, message) = if roll_back {
        (
            UpdateState::RollbackStarted,
            format!("update rolled back due to failure or early termination of task {task}"),
        )
    } else {
        (
            if rollback {
                UpdateState::RollbackPaused
            } else {
                UpdateState::Paused
            },
            format!("{what} paused due to failure or early termination of task {task}{why}"),
        )
    };
    NextStatus {
        status: UpdateStatus {
            state,
            started_at: if roll_back {
                rfc3339(now)
            } else {
                progress.started_at.clone()
            },
            completed_at: String::new(),
            message,
        },
        roll_back,
    }
}

/// Computes the changes that bring the store closer to what the services ask for.
/// `new_id` makes task IDs.
///
/// One pass over the world, in named phases, each working on the same task set:
/// `Pass::orchestrate` (each service's slots or nodes), `Pass::reap` (tasks of removed
/// services), `Pass::trim_history` (stopped tasks per slot), `Pass::allocate` (addresses for
/// nodes and new tasks), `Pass::schedule` (nodes for pending tasks), then `Pass::changes`
/// (what differs from the store).
pub fn reconcile(
    world: &World,
    now: OffsetDateTime,
    mut new_id: impl FnMut() -> String,
) -> Vec<Change> {
    let mut pass = Pass::new(world, now);
    let service_changes = pass.orchestrate(&mut new_id);
    pass.reap();
    pass.trim_history();
    let node_changes = pass.allocate();
    pass.schedule();
    pass.changes(service_changes, node_changes)
}

/// A slot of a replicated service (`(slot, "")`) or a node of a global one (`(0, node)`).
type SlotKey = (u64, String);

/// The slot or node a task fills.
fn key_of(task: &Task) -> SlotKey {
    if task.slot > 0 {
        (task.slot, String::new())
    } else {
        (0, task.node_id.clone())
    }
}

/// One reconcile pass: the world as read, and the task set the phases change.
struct Pass<'w> {
    world: &'w World,
    now: OffsetDateTime,
    /// `now`, as the timestamps written say it.
    stamp: String,
    tasks: Tasks,
    /// The ingress network's ID.
    ingress: Option<String>,
}

impl<'w> Pass<'w> {
    fn new(world: &'w World, now: OffsetDateTime) -> Self {
        Self {
            world,
            now,
            stamp: rfc3339(now),
            tasks: Tasks {
                all: world
                    .tasks
                    .iter()
                    .map(|(id, t)| (id.clone(), t.value.clone()))
                    .collect(),
                read: world
                    .tasks
                    .iter()
                    .map(|(id, t)| (id.clone(), t.version))
                    .collect(),
                dirty: BTreeSet::new(),
                deleted: BTreeSet::new(),
            },
            ingress: world.ingress().map(|n| n.id.clone()),
        }
    }

    /// Asks task `id` to shut down, for `why`.
    fn shut_down(&mut self, id: &str, why: &str) {
        let stamp = self.stamp.clone();
        let task = self.tasks.edit(id);
        task.desired_state = TaskState::Shutdown;
        if task.status.state < TaskState::Assigned {
            // Never reached a node: nobody else will write its end.
            task.status = TaskStatus {
                timestamp: stamp,
                state: TaskState::Shutdown,
                message: why.to_owned(),
                ..Default::default()
            };
        }
    }

    /// Orchestrate: every service's slots (replicated) or nodes (global) get one live task,
    /// rolling updates take their next step. The services whose update status changed.
    fn orchestrate(&mut self, new_id: &mut dyn FnMut() -> String) -> Vec<Change> {
        let world = self.world;
        world
            .services
            .values()
            .filter_map(|service| self.orchestrate_service(service, new_id))
            .collect()
    }

    /// [`Pass::orchestrate`] for one service.
    fn orchestrate_service(
        &mut self,
        versioned: &Versioned<Service>,
        new_id: &mut dyn FnMut() -> String,
    ) -> Option<Change> {
        let service = &versioned.value;
        let (mut live, mut outgoing) = self.live_tasks(service);
        let updating = service
            .update_status
            .as_ref()
            .filter(|u| u.state.in_progress());
        let config = update_config(service);
        // Slots whose old task is stopping before its replacement starts (stop-first).
        let mut held = match updating {
            Some(_) if config.order == UpdateOrder::StopFirst => self.held(service, &live),
            _ => BTreeSet::new(),
        };
        let wanted = self.wanted(service);
        let why_unwanted = if service.spec.replicas().is_some() {
            "scaled down"
        } else {
            "the node no longer qualifies"
        };
        let unwanted: Vec<String> = live
            .iter()
            .chain(outgoing.iter())
            .filter(|(key, _)| !wanted.contains(*key))
            .map(|(_, id)| id.clone())
            .collect();
        for id in unwanted {
            self.shut_down(&id, why_unwanted);
        }
        live.retain(|k, _| wanted.contains(k));
        outgoing.retain(|k, _| wanted.contains(k));
        // A start-first replacement that runs takes over: the old task stops.
        for (key, old) in &outgoing {
            if self.tasks.all[&live[key]].status.state == TaskState::Running {
                self.shut_down(old, "replaced by the update");
            }
        }
        let mut status_change = None;
        if let Some(progress) = updating {
            let step = update_step(
                service,
                progress,
                &config,
                &self.tasks.all,
                &live,
                &held,
                wanted.len(),
                self.now,
            );
            status_change =
                self.take_step(versioned, step, config.order, &mut live, &mut held, new_id);
        }
        for key in wanted {
            if !live.contains_key(&key) && !held.contains(&key) {
                let mut task = self.template(service, key);
                task.id = new_id();
                self.tasks.add(task);
            }
        }
        status_change
    }

    /// Each slot's (or node's) live task, and during a start-first update the old task it
    /// replaces, kept until the new one runs. Tasks that must be replaced, and extras, are
    /// shut down.
    fn live_tasks(
        &mut self,
        service: &Service,
    ) -> (BTreeMap<SlotKey, String>, BTreeMap<SlotKey, String>) {
        let mine: Vec<String> = self
            .tasks
            .all
            .values()
            .filter(|t| t.service_id == service.id && t.desired_state <= TaskState::Running)
            .map(|t| t.id.clone())
            .collect();
        let mut by_key: BTreeMap<SlotKey, Vec<String>> = BTreeMap::new();
        for id in mine {
            let task = &self.tasks.all[&id];
            if let Some(reason) = must_replace(task, self.world, self.now) {
                self.shut_down(&id, reason);
                continue;
            }
            by_key.entry(key_of(task)).or_default().push(id);
        }
        let mut live = BTreeMap::new();
        let mut outgoing = BTreeMap::new();
        for (key, mut ids) in by_key {
            // The newest first: a replacement is newer than what it replaces.
            ids.sort_by(|a, b| {
                let (a, b) = (&self.tasks.all[a], &self.tasks.all[b]);
                (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id))
            });
            let primary = ids[0].clone();
            let primary_fresh = !is_dirty(&self.tasks.all[&primary], service);
            let primary_runs = self.tasks.all[&primary].status.state == TaskState::Running;
            for other in &ids[1..] {
                let stale = is_dirty(&self.tasks.all[other], service);
                if stale && primary_fresh && !primary_runs && !outgoing.contains_key(&key) {
                    outgoing.insert(key.clone(), other.clone());
                } else if stale && primary_fresh {
                    self.shut_down(other, "replaced by the update");
                } else {
                    self.shut_down(other, "a duplicate of its slot");
                }
            }
            live.insert(key, primary);
        }
        (live, outgoing)
    }

    /// The slots of a stop-first update whose old task is still stopping (on a ready node),
    /// with no live task yet.
    fn held(&self, service: &Service, live: &BTreeMap<SlotKey, String>) -> BTreeSet<SlotKey> {
        self.tasks
            .all
            .values()
            .filter(|t| {
                t.service_id == service.id
                    && t.desired_state == TaskState::Shutdown
                    && !t.status.state.is_terminal()
                    && t.status.state >= TaskState::Assigned
                    && is_dirty(t, service)
                    && node_ready(self.world.nodes.get(&t.node_id).map(|n| &n.value))
            })
            .map(key_of)
            .filter(|k| !live.contains_key(k))
            .collect()
    }

    /// The slots (replicated) or nodes (global) that should have a task.
    fn wanted(&self, service: &Service) -> BTreeSet<SlotKey> {
        match (service.spec.replicas(), &service.spec.mode.global) {
            (Some(replicas), _) => (1..=replicas).map(|slot| (slot, String::new())).collect(),
            (None, Some(_)) => {
                let placement = placement(service);
                self.world
                    .nodes
                    .values()
                    .map(|n| node_info(&n.value))
                    .filter(|n| n.ready && n.active)
                    .filter(|n| placement.constraints.iter().all(|c| c.matches(n)))
                    .map(|n| (0, n.id))
                    .collect()
            }
            (None, None) => BTreeSet::new(),
        }
    }

    /// Carries out an update's step: replaces the slots it names, or the service's update
    /// status to write.
    fn take_step(
        &mut self,
        versioned: &Versioned<Service>,
        step: UpdateStep,
        order: UpdateOrder,
        live: &mut BTreeMap<SlotKey, String>,
        held: &mut BTreeSet<SlotKey>,
        new_id: &mut dyn FnMut() -> String,
    ) -> Option<Change> {
        let service = &versioned.value;
        match step {
            UpdateStep::Replace(keys) => {
                for key in keys {
                    let old = live[&key].clone();
                    match order {
                        UpdateOrder::StopFirst => {
                            self.shut_down(&old, "shut down for an update");
                            live.remove(&key);
                            held.insert(key);
                        }
                        UpdateOrder::StartFirst => {
                            let mut task = self.template(service, key.clone());
                            task.id = new_id();
                            live.insert(key, task.id.clone());
                            self.tasks.add(task);
                        }
                    }
                }
                None
            }
            UpdateStep::Wait => None,
            UpdateStep::Status(next) => {
                let mut changed = service.clone();
                changed.update_status = Some(next.status);
                if next.roll_back
                    && let Some(previous) = changed.previous_spec.take()
                {
                    changed.previous_spec = Some(std::mem::replace(&mut changed.spec, previous));
                    changed.updated_at.clone_from(&self.stamp);
                }
                Some(Change::Update {
                    kind: Kind::Service,
                    id: service.id.clone(),
                    version: versioned.version,
                    body: body(&changed),
                })
            }
        }
    }

    /// A new task of `service` for slot or node `key` (its ID still to be given).
    fn template(&self, service: &Service, (slot, node_id): SlotKey) -> Task {
        Task {
            id: String::new(),
            created_at: self.stamp.clone(),
            updated_at: self.stamp.clone(),
            service_id: service.id.clone(),
            service_name: service.spec.name.clone(),
            slot,
            node_id,
            spec: service.spec.task_template.clone(),
            status: TaskStatus {
                timestamp: self.stamp.clone(),
                state: TaskState::New,
                message: "created".into(),
                ..Default::default()
            },
            desired_state: TaskState::Running,
            ports: service.endpoint.ports.clone(),
            ..Default::default()
        }
    }

    /// Reap: tasks of removed services are shut down, then deleted once they are down (or
    /// their node is gone, so nothing will ever say they are).
    fn reap(&mut self) {
        let world = self.world;
        let orphans: Vec<String> = self
            .tasks
            .all
            .values()
            .filter(|t| !world.services.contains_key(&t.service_id))
            .map(|t| t.id.clone())
            .collect();
        for id in orphans {
            let task = &self.tasks.all[&id];
            let node_alive = node_ready(world.nodes.get(&task.node_id).map(|n| &n.value));
            if task.status.state.is_terminal() || task.node_id.is_empty() || !node_alive {
                self.tasks.delete(&id);
            } else if task.desired_state <= TaskState::Running {
                self.shut_down(&id, "the service was removed");
            }
        }
    }

    /// Trim history: the newest stopped tasks per slot stay (`--task-history-limit`,
    /// [`TASK_HISTORY_PER_SLOT`] by default), older ones are deleted.
    fn trim_history(&mut self) {
        let mut by_slot: BTreeMap<(String, u64, String), Vec<(u64, String)>> = BTreeMap::new();
        for task in self.tasks.all.values() {
            if task.desired_state > TaskState::Running && task.status.state.is_terminal() {
                let (slot, node) = key_of(task);
                let created = self
                    .world
                    .tasks
                    .get(&task.id)
                    .map_or(u64::MAX, |t| t.version);
                by_slot
                    .entry((task.service_id.clone(), slot, node))
                    .or_default()
                    .push((created, task.id.clone()));
            }
        }
        let keep = self.world.task_history.unwrap_or(TASK_HISTORY_PER_SLOT);
        for (_, mut old) in by_slot {
            if old.len() > keep {
                old.sort();
                for (_, id) in &old[..old.len() - keep] {
                    self.tasks.delete(id);
                }
            }
        }
    }

    /// Allocate: an ingress address for every ready node without one, and addresses on its
    /// networks for every new task (which then waits to be scheduled). The nodes changed.
    fn allocate(&mut self) -> Vec<Change> {
        let mut allocator = allocator(self.world);
        let node_changes = self.attach_nodes_to_ingress(&mut allocator);
        let fresh: Vec<String> = self
            .tasks
            .all
            .values()
            .filter(|t| t.status.state == TaskState::New && t.desired_state == TaskState::Running)
            .map(|t| t.id.clone())
            .collect();
        for id in fresh {
            let Some(service) = self.world.services.get(&self.tasks.all[&id].service_id) else {
                continue;
            };
            let attached = attach(
                &mut allocator,
                task_networks(&service.value, self.ingress.as_deref()),
            );
            let stamp = self.stamp.clone();
            let task = self.tasks.edit(&id);
            match attached {
                Err(e) => task.status.err = e,
                Ok(attachments) => {
                    task.networks_attachments = attachments;
                    task.status = TaskStatus {
                        timestamp: stamp,
                        state: TaskState::Pending,
                        message: "pending task scheduling".into(),
                        ..Default::default()
                    };
                }
            }
        }
        node_changes
    }

    /// Every ready node gets an address on the ingress network (the mesh's source address).
    fn attach_nodes_to_ingress(&self, allocator: &mut Allocator) -> Vec<Change> {
        let Some(ingress) = &self.ingress else {
            return Vec::new();
        };
        let mut changes = Vec::new();
        for node in self.world.nodes.values() {
            let has = node
                .value
                .attachments
                .iter()
                .any(|a| &a.network_id == ingress);
            if has || node.value.status.state != NodeState::Ready {
                continue;
            }
            let Ok(ip) = allocator.address(ingress) else {
                continue;
            };
            let prefix = allocator
                .network(ingress)
                .map_or(24, |n| n.subnet.prefix_len());
            let mut updated = node.value.clone();
            updated.attachments.push(NetworkAttachment {
                network_id: ingress.clone(),
                addresses: vec![format!("{ip}/{prefix}")],
            });
            changes.push(Change::Update {
                kind: Kind::Node,
                id: node.value.id.clone(),
                version: node.version,
                body: body(&updated),
            });
        }
        changes
    }

    /// Schedule: each pending task gets a node (global tasks keep theirs), or says why none
    /// fits.
    fn schedule(&mut self) {
        let mut infos = self.node_infos();
        let mut waiting: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for task in self.tasks.all.values() {
            if task.status.state == TaskState::Pending && task.desired_state == TaskState::Running {
                waiting
                    .entry(task.service_id.clone())
                    .or_default()
                    .push(task.id.clone());
            }
        }
        for (service_id, ids) in waiting {
            let Some(service) = self.world.services.get(&service_id) else {
                continue;
            };
            let placement = placement(&service.value);
            // Global tasks come with their node: they only need it to still qualify.
            let (global, replicated): (Vec<String>, Vec<String>) = ids
                .into_iter()
                .partition(|id| !self.tasks.all[id].node_id.is_empty());
            for id in global {
                self.assign(&id, None);
            }
            let placed = scheduler::place(&mut infos, &service_id, &placement, replicated.len());
            for (id, result) in replicated.into_iter().zip(placed) {
                match result {
                    Ok(i) => self.assign(&id, Some(infos[i].id.clone())),
                    Err(why) => {
                        let why = why.to_string();
                        if self.tasks.all[&id].status.err != why {
                            self.tasks.edit(&id).status.err = why;
                        }
                    }
                }
            }
        }
    }

    /// The nodes as the scheduler sees them: what their live tasks hold.
    fn node_infos(&self) -> Vec<NodeInfo> {
        let mut infos: Vec<NodeInfo> = self
            .world
            .nodes
            .values()
            .map(|n| node_info(&n.value))
            .collect();
        let index: HashMap<String, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        for task in self.tasks.all.values() {
            if task.desired_state > TaskState::Running || task.status.state.is_terminal() {
                continue;
            }
            let Some(&i) = index.get(&task.node_id) else {
                continue;
            };
            *infos[i].tasks.entry(task.service_id.clone()).or_default() += 1;
            infos[i].available.take(&reservation(&task.spec));
            for p in task
                .ports
                .iter()
                .filter(|p| p.publish_mode == PublishMode::Host)
            {
                infos[i].host_ports.insert((p.protocol, p.published_port));
            }
        }
        infos
    }

    /// Task `id` assigned (to `node`, or to the node it has).
    fn assign(&mut self, id: &str, node: Option<String>) {
        let stamp = self.stamp.clone();
        let task = self.tasks.edit(id);
        if let Some(node) = node {
            task.node_id = node;
        }
        task.status = TaskStatus {
            timestamp: stamp,
            state: TaskState::Assigned,
            message: "scheduler assigned task to node".into(),
            ..Default::default()
        };
    }

    /// Changes: the services' and nodes' changes, then every task deleted, changed or created
    /// (a task written back as it was read is not a change).
    fn changes(self, service_changes: Vec<Change>, node_changes: Vec<Change>) -> Vec<Change> {
        let Self {
            world,
            stamp,
            tasks,
            ..
        } = self;
        let mut changes = service_changes;
        changes.extend(node_changes);
        for id in &tasks.deleted {
            if let Some(&version) = tasks.read.get(id) {
                changes.push(Change::Delete {
                    kind: Kind::Task,
                    id: id.clone(),
                    version,
                });
            }
        }
        for id in &tasks.dirty {
            let mut task = tasks.all[id].clone();
            task.updated_at.clone_from(&stamp);
            let change = match tasks.read.get(id) {
                Some(&version) => {
                    if world
                        .tasks
                        .get(id)
                        .is_some_and(|t| t.value == tasks.all[id])
                    {
                        continue;
                    }
                    Change::Update {
                        kind: Kind::Task,
                        id: id.clone(),
                        version,
                        body: body(&task),
                    }
                }
                None => Change::Create {
                    kind: Kind::Task,
                    id: id.clone(),
                    body: body(&task),
                },
            };
            changes.push(change);
        }
        changes
    }
}

/// Addresses on each of `networks`, in order; none (those taken given back) when one network
/// has no address left, and why.
fn attach(
    allocator: &mut Allocator,
    networks: Vec<String>,
) -> Result<Vec<NetworkAttachment>, String> {
    let mut attachments = Vec::new();
    for network in networks {
        match allocator.address(&network) {
            Ok(ip) => {
                let prefix = allocator
                    .network(&network)
                    .map_or(24, |n| n.subnet.prefix_len());
                attachments.push(NetworkAttachment {
                    network_id: network,
                    addresses: vec![format!("{ip}/{prefix}")],
                });
            }
            Err(e) => {
                for a in &attachments {
                    for addr in &a.addresses {
                        if let Some(ip) = address_of(addr) {
                            allocator.release(&a.network_id, ip);
                        }
                    }
                }
                return Err(e.to_string());
            }
        }
    }
    Ok(attachments)
}

/// At most [`limits::MAX_CHANGES_PER_PASS`] of a pass's changes, and at most half of
/// [`limits::MAX_ENTRY_BYTES`] of them, so that one pass is one modest raft entry however large
/// the service. Nodes' new addresses and task updates (shutdowns, allocations, placements) go
/// first, new tasks next, deletions of old ones last: each change stands alone (the allocator's
/// state is derived from the store every pass), so what is left out is simply done by the next
/// pass.
pub fn bounded(mut changes: Vec<Change>) -> Vec<Change> {
    let rank = |c: &Change| match c {
        Change::Update {
            kind: Kind::Node | Kind::Service,
            ..
        } => 0,
        Change::Update { .. } => 1,
        Change::Create { .. } => 2,
        Change::Delete { .. } => 3,
    };
    changes.sort_by_key(rank);
    let mut bytes = 0;
    let mut kept = 0;
    for change in &changes {
        let size = match change {
            Change::Create { body, .. } | Change::Update { body, .. } => {
                serde_json::to_vec(body).map_or(0, |b| b.len())
            }
            Change::Delete { .. } => 0,
        } + 128;
        if kept == limits::MAX_CHANGES_PER_PASS
            || (kept > 0 && bytes + size > limits::MAX_ENTRY_BYTES / 2)
        {
            break;
        }
        bytes += size;
        kept += 1;
    }
    changes.truncate(kept);
    changes
}

/// An object's stored body.
pub fn body<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("plain data serializes")
}

#[cfg(test)]
mod tests {
    use shoal_api::service::{
        Driver, Global, Ipam, IpamConfig, NetworkSpec, Placement, PortConfig, Ratio, Replicated,
        ServiceMode, ServiceSpec, VNI_OPTION,
    };
    use shoal_api::swarm::{NodeDescription, NodeSpec, NodeStatus};

    use super::*;

    fn node(id: &str, role: Role) -> Versioned<Node> {
        Versioned {
            version: 1,
            value: Node {
                id: id.into(),
                spec: NodeSpec {
                    role: Some(role),
                    ..Default::default()
                },
                description: NodeDescription {
                    hostname: id.into(),
                    ..Default::default()
                },
                status: NodeStatus {
                    state: NodeState::Ready,
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }

    fn world(nodes: &[&str]) -> World {
        let mut world = World::default();
        for (i, n) in nodes.iter().enumerate() {
            let role = if i == 0 { Role::Manager } else { Role::Worker };
            world.nodes.insert((*n).into(), node(n, role));
        }
        world.networks.insert(
            "ingress".into(),
            Versioned {
                version: 1,
                value: Network {
                    id: "ingress".into(),
                    spec: NetworkSpec {
                        name: "ingress".into(),
                        ingress: true,
                        ..Default::default()
                    },
                    driver_state: Driver {
                        name: "overlay".into(),
                        options: [(VNI_OPTION.to_owned(), "4096".to_owned())].into(),
                    },
                    ipam_options: Ipam {
                        configs: vec![IpamConfig {
                            subnet: "10.0.0.0/24".into(),
                            gateway: "10.0.0.1".into(),
                        }],
                    },
                    ..Default::default()
                },
            },
        );
        world
    }

    fn service(id: &str, replicas: Option<u64>) -> Service {
        Service {
            id: id.into(),
            spec: ServiceSpec {
                name: id.into(),
                mode: match replicas {
                    Some(replicas) => ServiceMode {
                        replicated: Some(Replicated { replicas }),
                        global: None,
                    },
                    None => ServiceMode {
                        replicated: None,
                        global: Some(Global {}),
                    },
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn add_service(world: &mut World, service: Service) {
        world.services.insert(
            service.id.clone(),
            Versioned {
                version: 1,
                value: service,
            },
        );
    }

    /// Applies `changes` to `world` as the store would (versions bumped to `index`).
    fn apply(world: &mut World, changes: Vec<Change>, index: u64) {
        for change in changes {
            match change {
                Change::Create {
                    kind: Kind::Task,
                    id,
                    body,
                }
                | Change::Update {
                    kind: Kind::Task,
                    id,
                    body,
                    ..
                } => {
                    let mut task: Task = serde_json::from_value(body).unwrap();
                    task.id.clone_from(&id);
                    world.tasks.insert(
                        id,
                        Versioned {
                            version: index,
                            value: task,
                        },
                    );
                }
                Change::Delete {
                    kind: Kind::Task,
                    id,
                    ..
                } => {
                    world.tasks.remove(&id);
                }
                Change::Update {
                    kind: Kind::Service,
                    id,
                    body,
                    ..
                } => {
                    let service: Service = serde_json::from_value(body).unwrap();
                    world.services.insert(
                        id,
                        Versioned {
                            version: index,
                            value: service,
                        },
                    );
                }
                Change::Update {
                    kind: Kind::Node,
                    id,
                    body,
                    ..
                } => {
                    let node: Node = serde_json::from_value(body).unwrap();
                    world.nodes.insert(
                        id,
                        Versioned {
                            version: index,
                            value: node,
                        },
                    );
                }
                other => panic!("unexpected change {other:?}"),
            }
        }
    }

    /// Reconciles until nothing changes; the number of rounds it took.
    fn settle(world: &mut World, now: OffsetDateTime) -> usize {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        for round in 1..20 {
            let changes = reconcile(world, now, || {
                let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("t{next:05}")
            });
            if changes.is_empty() {
                return round;
            }
            apply(world, changes, 100 + round as u64);
        }
        panic!("the reconciler does not settle");
    }

    /// Marks every assigned task running, as its node would report.
    fn run_all(world: &mut World) {
        for t in world.tasks.values_mut() {
            if t.value.status.state == TaskState::Assigned {
                t.value.status.state = TaskState::Running;
            }
        }
    }

    fn live_per_node(world: &World, service: &str) -> BTreeMap<String, usize> {
        let mut per = BTreeMap::new();
        for t in world.tasks.values().map(|t| &t.value) {
            if t.service_id == service && t.desired_state == TaskState::Running {
                *per.entry(t.node_id.clone()).or_default() += 1;
            }
        }
        per
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// Updates `service`'s image to `image` as `service update` does (the previous spec kept,
    /// the update started at `at`).
    fn update_image(
        world: &mut World,
        service: &str,
        image: &str,
        config: UpdateConfig,
        at: OffsetDateTime,
    ) {
        let entry = world.services.get_mut(service).unwrap();
        let s = &mut entry.value;
        s.previous_spec = Some(s.spec.clone());
        s.spec.task_template.container_spec.image = image.into();
        s.spec.update_config = Some(config);
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_at: rfc3339(at),
            completed_at: String::new(),
            message: "update in progress".into(),
        });
        entry.version += 1;
    }

    /// Plays the nodes for one second at `t`: assigned tasks start (or fail, if `fails` says so
    /// of their image), tasks asked to stop stop.
    fn nodes_act(world: &mut World, t: OffsetDateTime, fails: &dyn Fn(&str) -> bool) {
        for task in world.tasks.values_mut().map(|t| &mut t.value) {
            if task.desired_state == TaskState::Running && task.status.state == TaskState::Assigned
            {
                if fails(&task.spec.container_spec.image) {
                    task.status = TaskStatus {
                        timestamp: rfc3339(t),
                        state: TaskState::Failed,
                        err: "task: non-zero exit (1)".into(),
                        ..Default::default()
                    };
                } else {
                    task.status = TaskStatus {
                        timestamp: rfc3339(t),
                        state: TaskState::Running,
                        ..Default::default()
                    };
                    task.started_at = rfc3339(t);
                }
            } else if task.desired_state == TaskState::Shutdown
                && task.status.state >= TaskState::Assigned
                && !task.status.state.is_terminal()
            {
                task.status = TaskStatus {
                    timestamp: rfc3339(t),
                    state: TaskState::Shutdown,
                    ..Default::default()
                };
            }
        }
    }

    /// Runs the swarm a second at a time from `start` until `service`'s update ends (at most
    /// `seconds`), calling `watch` after every second; the time it ended.
    fn roll(
        world: &mut World,
        service: &str,
        start: OffsetDateTime,
        seconds: i64,
        fails: &dyn Fn(&str) -> bool,
        watch: &mut dyn FnMut(&World),
    ) -> OffsetDateTime {
        for second in 0..seconds {
            let t = start + time::Duration::seconds(second);
            settle(world, t);
            nodes_act(world, t, fails);
            watch(world);
            let state = world.services[service]
                .value
                .update_status
                .as_ref()
                .map(|u| u.state);
            if state.is_some_and(|s| !s.in_progress()) {
                return t;
            }
        }
        panic!(
            "the update did not end in {seconds} s: {:?}",
            world.services[service].value.update_status
        );
    }

    /// Slots of `service` with a running task, and their images.
    fn running_images(world: &World, service: &str) -> BTreeMap<u64, Vec<String>> {
        let mut per: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for t in world.tasks.values().map(|t| &t.value) {
            if t.service_id == service
                && t.desired_state == TaskState::Running
                && t.status.state == TaskState::Running
            {
                per.entry(t.slot)
                    .or_default()
                    .push(t.spec.container_spec.image.clone());
            }
        }
        per
    }

    fn config(parallelism: u64, order: UpdateOrder, action: FailureAction) -> UpdateConfig {
        UpdateConfig {
            parallelism,
            delay: 2_000_000_000,
            failure_action: action,
            monitor: 3_000_000_000,
            max_failure_ratio: Ratio(0.0),
            order,
        }
    }

    #[test]
    fn a_stop_first_update_replaces_at_most_parallelism_slots_at_a_time() {
        let mut w = world(&["a", "b"]);
        let mut web = service("web", Some(6));
        web.spec.task_template.container_spec.image = "v1".into();
        add_service(&mut w, web);
        let start = now();
        settle(&mut w, start);
        nodes_act(&mut w, start, &|_| false);
        update_image(
            &mut w,
            "web",
            "v2",
            config(2, UpdateOrder::StopFirst, FailureAction::Pause),
            start,
        );
        let mut fewest = 6;
        let end = roll(&mut w, "web", start, 120, &|_| false, &mut |w| {
            fewest = fewest.min(running_images(w, "web").len());
        });
        let images = running_images(&w, "web");
        assert_eq!(images.len(), 6, "{images:?}");
        assert!(
            images.values().all(|i| i == &["v2".to_owned()]),
            "{images:?}"
        );
        assert!(
            fewest >= 4,
            "at most 2 slots down at once, saw {fewest} running"
        );
        let status = w.services["web"].value.update_status.clone().unwrap();
        assert_eq!(status.state, UpdateState::Completed, "{status:?}");
        // Three batches of two, each waiting out the 2 s delay: not all at once.
        assert!(end - start >= time::Duration::seconds(6), "{}", end - start);
        // The old tasks stay as history.
        let old = w
            .tasks
            .values()
            .filter(|t| t.value.spec.container_spec.image == "v1")
            .count();
        assert_eq!(old, 6);
    }

    #[test]
    fn a_start_first_update_never_leaves_a_slot_without_a_running_task() {
        let mut w = world(&["a", "b"]);
        let mut web = service("web", Some(4));
        web.spec.task_template.container_spec.image = "v1".into();
        add_service(&mut w, web);
        let start = now();
        settle(&mut w, start);
        nodes_act(&mut w, start, &|_| false);
        update_image(
            &mut w,
            "web",
            "v2",
            config(1, UpdateOrder::StartFirst, FailureAction::Pause),
            start,
        );
        let mut most = 0;
        roll(&mut w, "web", start, 120, &|_| false, &mut |w| {
            let images = running_images(w, "web");
            assert_eq!(images.len(), 4, "a slot had no running task: {images:?}");
            most = most.max(images.values().map(Vec::len).sum::<usize>());
        });
        assert_eq!(most, 5, "one extra task at a time");
        let images = running_images(&w, "web");
        assert!(
            images.values().all(|i| i == &["v2".to_owned()]),
            "{images:?}"
        );
    }

    #[test]
    fn a_failing_update_rolls_back_or_pauses_as_asked() {
        for action in [FailureAction::Rollback, FailureAction::Pause] {
            let mut w = world(&["a", "b"]);
            let mut web = service("web", Some(4));
            web.spec.task_template.container_spec.image = "v1".into();
            add_service(&mut w, web);
            let start = now();
            settle(&mut w, start);
            nodes_act(&mut w, start, &|_| false);
            update_image(
                &mut w,
                "web",
                "broken",
                config(1, UpdateOrder::StopFirst, action),
                start,
            );
            let fails = |image: &str| image == "broken";
            let mut seen = Vec::new();
            roll(&mut w, "web", start, 60, &fails, &mut |w| {
                let status = w.services["web"].value.update_status.clone().unwrap();
                if seen.last() != Some(&status) {
                    seen.push(status);
                }
            });
            let service = &w.services["web"].value;
            let status = service.update_status.clone().unwrap();
            match action {
                FailureAction::Rollback => {
                    let started = seen
                        .iter()
                        .find(|s| s.state == UpdateState::RollbackStarted)
                        .unwrap_or_else(|| panic!("{seen:?}"));
                    assert!(
                        started
                            .message
                            .contains("update rolled back due to failure"),
                        "{started:?}"
                    );
                    assert_eq!(status.state, UpdateState::RollbackCompleted, "{status:?}");
                    assert_eq!(service.spec.task_template.container_spec.image, "v1");
                    assert_eq!(
                        service
                            .previous_spec
                            .as_ref()
                            .unwrap()
                            .task_template
                            .container_spec
                            .image,
                        "broken"
                    );
                    let images = running_images(&w, "web");
                    assert_eq!(images.len(), 4, "{images:?}");
                    assert!(
                        images.values().all(|i| i == &["v1".to_owned()]),
                        "{images:?}"
                    );
                }
                _ => {
                    assert_eq!(status.state, UpdateState::Paused, "{status:?}");
                    assert!(
                        status.message.contains("update paused due to failure"),
                        "{status:?}"
                    );
                    // Paused: no more old tasks are replaced (one slot was).
                    let images = running_images(&w, "web");
                    assert_eq!(
                        images.values().filter(|i| *i == &["v1".to_owned()]).count(),
                        3
                    );
                }
            }
        }
    }

    #[test]
    fn the_restart_policy_decides_which_stopped_tasks_are_replaced_and_how_often() {
        let ends = |condition: RestartCondition, max_attempts: u64, end: TaskState| {
            let mut w = world(&["a"]);
            let mut web = service("web", Some(1));
            web.spec.task_template.restart_policy = Some(RestartPolicy {
                condition,
                delay: 1_000_000_000,
                max_attempts,
                window: 0,
            });
            add_service(&mut w, web);
            let start = now();
            settle(&mut w, start);
            for second in 0..20 {
                let t = start + time::Duration::seconds(second);
                nodes_act(&mut w, t, &|_| false);
                for task in w.tasks.values_mut().map(|t| &mut t.value) {
                    if task.status.state == TaskState::Running {
                        task.status = TaskStatus {
                            timestamp: rfc3339(t),
                            state: end,
                            ..Default::default()
                        };
                    }
                }
                settle(&mut w, t + time::Duration::seconds(1));
            }
            w.tasks.len()
        };
        // Docker's default: every exit is followed by a new task, without limit.
        assert!(ends(RestartCondition::Any, 0, TaskState::Complete) > 5);
        assert_eq!(ends(RestartCondition::Any, 2, TaskState::Complete), 3);
        assert_eq!(ends(RestartCondition::OnFailure, 2, TaskState::Failed), 3);
        assert_eq!(ends(RestartCondition::OnFailure, 0, TaskState::Complete), 1);
        assert_eq!(ends(RestartCondition::None, 0, TaskState::Failed), 1);
        assert_eq!(ends(RestartCondition::None, 0, TaskState::Complete), 1);
    }

    #[test]
    fn six_replicas_spread_two_per_node_with_addresses_and_settle() {
        let mut w = world(&["a", "b", "c"]);
        let mut web = service("web", Some(6));
        web.endpoint.ports = vec![PortConfig {
            target_port: 80,
            published_port: 8080,
            ..Default::default()
        }];
        add_service(&mut w, web);
        settle(&mut w, now());
        let per = live_per_node(&w, "web");
        assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        let slots: BTreeSet<u64> = w.tasks.values().map(|t| t.value.slot).collect();
        assert_eq!(slots, (1..=6).collect());
        // Every task has a distinct ingress address; every node has its own.
        let mut addrs = BTreeSet::new();
        for t in w.tasks.values() {
            assert_eq!(t.value.status.state, TaskState::Assigned);
            assert!(addrs.insert(t.value.networks_attachments[0].addresses[0].clone()));
        }
        for n in w.nodes.values() {
            assert!(addrs.insert(n.value.attachments[0].addresses[0].clone()));
        }
        assert!(
            !addrs.contains("10.0.0.1/24"),
            "the gateway is never handed out"
        );
        // Settled: running changes nothing more.
        run_all(&mut w);
        assert!(reconcile(&w, now(), || unreachable!()).is_empty());
    }

    #[test]
    fn a_removed_node_s_ingress_address_is_free_again() {
        let mut w = world(&["a", "b", "c"]);
        let mut web = service("web", Some(3));
        web.endpoint.ports = vec![PortConfig {
            target_port: 80,
            published_port: 8080,
            ..Default::default()
        }];
        add_service(&mut w, web);
        settle(&mut w, now());
        let gone = w.nodes["c"].value.attachments[0].addresses[0].clone();
        let gone = address_of(&gone).expect("an address");
        assert_ne!(
            allocator(&w).address("ingress").ok(),
            Some(gone),
            "held while the node is there"
        );
        w.nodes.remove("c");
        let mut freed = allocator(&w);
        let handed: Vec<_> = (0..250)
            .filter_map(|_| freed.address("ingress").ok())
            .collect();
        assert!(handed.contains(&gone), "{gone} was not handed out again");
    }

    #[test]
    fn a_large_service_is_written_in_bounded_passes() {
        let mut w = world(&["a", "b", "c"]);
        add_service(&mut w, service("big", Some(2_500)));
        let mut passes = 0;
        loop {
            let changes = bounded(reconcile(&w, now(), || crate::ca::random_id().unwrap()));
            if changes.is_empty() {
                break;
            }
            assert!(changes.len() <= limits::MAX_CHANGES_PER_PASS);
            passes += 1;
            apply(&mut w, changes, 100 + passes);
            assert!(passes < 10, "it does not settle");
        }
        assert_eq!(passes, 3);
        let per = live_per_node(&w, "big");
        assert_eq!(per.values().sum::<usize>(), 2_500, "{per:?}");
    }

    #[test]
    fn scaling_down_shuts_the_highest_slots_and_up_adds_new_ones() {
        let mut w = world(&["a", "b"]);
        add_service(&mut w, service("web", Some(4)));
        settle(&mut w, now());
        run_all(&mut w);
        w.services
            .get_mut("web")
            .unwrap()
            .value
            .spec
            .mode
            .replicated = Some(Replicated { replicas: 2 });
        settle(&mut w, now());
        let live: BTreeSet<u64> = w
            .tasks
            .values()
            .filter(|t| t.value.desired_state == TaskState::Running)
            .map(|t| t.value.slot)
            .collect();
        assert_eq!(live, [1, 2].into());
        w.services
            .get_mut("web")
            .unwrap()
            .value
            .spec
            .mode
            .replicated = Some(Replicated { replicas: 5 });
        settle(&mut w, now());
        assert_eq!(live_per_node(&w, "web").values().sum::<usize>(), 5);
    }

    #[test]
    fn a_down_or_drained_node_s_tasks_are_replaced_elsewhere_and_pause_moves_nothing() {
        let mut w = world(&["a", "b", "c"]);
        add_service(&mut w, service("web", Some(6)));
        settle(&mut w, now());
        run_all(&mut w);
        w.nodes.get_mut("c").unwrap().value.status.state = NodeState::Down;
        settle(&mut w, now());
        let per = live_per_node(&w, "web");
        assert_eq!(per.get("c"), None, "{per:?}");
        assert_eq!(per.values().sum::<usize>(), 6);
        run_all(&mut w);
        w.nodes.get_mut("b").unwrap().value.spec.availability = Availability::Pause;
        assert!(reconcile(&w, now(), || unreachable!()).is_empty());
        w.nodes.get_mut("b").unwrap().value.spec.availability = Availability::Drain;
        settle(&mut w, now());
        assert_eq!(live_per_node(&w, "web").get("a"), Some(&6));
    }

    #[test]
    fn a_failed_task_is_replaced_after_the_restart_delay_and_history_is_bounded() {
        let mut w = world(&["a"]);
        add_service(&mut w, service("web", Some(1)));
        let start = now();
        settle(&mut w, start);
        for round in 0..8 {
            let t = start + RESTART_DELAY * (round + 1);
            for task in w.tasks.values_mut() {
                if task.value.desired_state == TaskState::Running {
                    task.value.status = TaskStatus {
                        timestamp: rfc3339(t),
                        state: TaskState::Failed,
                        err: "task: non-zero exit (1)".into(),
                        ..Default::default()
                    };
                }
            }
            // Not before the delay.
            let early = reconcile(&w, t, || unreachable!());
            assert!(early.is_empty(), "{early:?}");
            settle(&mut w, t + RESTART_DELAY);
        }
        let slot1 = w.tasks.values().filter(|t| t.value.slot == 1).count();
        assert_eq!(
            slot1,
            TASK_HISTORY_PER_SLOT + 1,
            "five old tasks and the live one"
        );
        // `swarm update --task-history-limit 1`.
        w.task_history = Some(1);
        settle(&mut w, start + RESTART_DELAY * 20);
        let slot1 = w.tasks.values().filter(|t| t.value.slot == 1).count();
        assert_eq!(slot1, 2, "one old task and the live one");
    }

    #[test]
    fn constraints_that_nothing_meets_leave_the_task_pending_with_dockers_reason() {
        let mut w = world(&["a", "b"]);
        let mut svc = service("web", Some(1));
        svc.spec.task_template.placement = Placement {
            constraints: vec!["node.labels.zone==mars".into()],
            ..Default::default()
        };
        add_service(&mut w, svc);
        settle(&mut w, now());
        let task = &w.tasks.values().next().unwrap().value;
        assert_eq!(task.status.state, TaskState::Pending);
        assert_eq!(
            task.status.err,
            "no suitable node (scheduling constraints not satisfied on 2 nodes)"
        );
    }

    #[test]
    fn a_global_service_runs_once_per_eligible_node_and_follows_the_nodes() {
        let mut w = world(&["a", "b", "c"]);
        add_service(&mut w, service("agent", None));
        settle(&mut w, now());
        assert_eq!(
            live_per_node(&w, "agent"),
            [("a".into(), 1), ("b".into(), 1), ("c".into(), 1)].into()
        );
        w.nodes.get_mut("b").unwrap().value.spec.availability = Availability::Drain;
        settle(&mut w, now());
        assert_eq!(live_per_node(&w, "agent").get("b"), None);
    }

    #[test]
    fn a_removed_service_s_tasks_are_shut_down_then_deleted() {
        let mut w = world(&["a"]);
        add_service(&mut w, service("web", Some(2)));
        settle(&mut w, now());
        run_all(&mut w);
        w.services.clear();
        settle(&mut w, now());
        assert!(
            w.tasks
                .values()
                .all(|t| t.value.desired_state == TaskState::Shutdown)
        );
        for t in w.tasks.values_mut() {
            t.value.status.state = TaskState::Shutdown;
        }
        settle(&mut w, now());
        assert!(w.tasks.is_empty());
    }
}
