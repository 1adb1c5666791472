//! Services, their tasks, and networks, as `shoal service|network` show them: the JSON keys are
//! Docker's (`docker service inspect`, `docker network inspect`), so tools written for Docker
//! read them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// The routing mesh's network, created by `swarm init`.
pub const INGRESS: &str = "ingress";

/// A network, as `network inspect` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Network {
    /// Its ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its version.
    pub version: Version,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// What the user asked for.
    pub spec: NetworkSpec,
    /// The driver's allocation: the VXLAN ID.
    pub driver_state: Driver,
    /// The subnet and gateway it was given.
    #[serde(rename = "IPAMOptions")]
    pub ipam_options: Ipam,
}

impl Network {
    /// Its VXLAN network identifier.
    pub fn vni(&self) -> Option<u32> {
        self.driver_state.options.get(VNI_OPTION)?.parse().ok()
    }

    /// Its subnet and gateway.
    pub fn subnet(&self) -> Option<&IpamConfig> {
        self.ipam_options.configs.first()
    }

    /// Whether `--opt encrypted` was given.
    pub fn encrypted(&self) -> bool {
        self.spec
            .driver_configuration
            .options
            .contains_key(ENCRYPTED_OPTION)
    }
}

/// The driver option naming a network's VNI, as Docker's overlay driver keeps it.
pub const VNI_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";
/// `--opt encrypted`.
pub const ENCRYPTED_OPTION: &str = "encrypted";

/// `network create`'s flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSpec {
    /// Its name (unique).
    pub name: String,
    /// `--label`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `--driver` (overlay) and `--opt`.
    pub driver_configuration: Driver,
    /// Whether it is the routing mesh's network.
    #[serde(default)]
    pub ingress: bool,
    /// `--internal`: no route out of the network.
    #[serde(default)]
    pub internal: bool,
    /// `--attachable`.
    #[serde(default)]
    pub attachable: bool,
    /// `--subnet`, `--gateway`.
    #[serde(rename = "IPAMOptions", default)]
    pub ipam_options: Ipam,
}

/// A driver and its options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Driver {
    /// `overlay`.
    pub name: String,
    /// Options.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Address management.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipam {
    /// Subnets (one).
    #[serde(default)]
    pub configs: Vec<IpamConfig>,
}

/// A subnet and its gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfig {
    /// e.g. `10.0.1.0/24`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    /// e.g. `10.0.1.1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}

/// A service, as `service inspect` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    /// Its ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its version.
    pub version: Version,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// What the user asked for.
    pub spec: ServiceSpec,
    /// What the allocator gave it: published ports and virtual IPs.
    #[serde(default)]
    pub endpoint: Endpoint,
    /// The spec before the last `service update` (what `service rollback` returns to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    /// The last update or rollback of its tasks and how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
}

/// How the last update (or rollback) of a service's tasks went, as Docker reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStatus {
    /// Where it is.
    pub state: UpdateState,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub started_at: String,
    /// RFC 3339, once it ended.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub completed_at: String,
    /// What happened, in words.
    #[serde(default)]
    pub message: String,
}

/// `UpdateStatus.State`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Tasks are being replaced with the new spec.
    #[default]
    Updating,
    /// Stopped after too many failures (`--update-failure-action pause`).
    Paused,
    /// Every task runs the new spec.
    Completed,
    /// Tasks are being returned to the previous spec.
    RollbackStarted,
    /// A rollback stopped after too many failures.
    RollbackPaused,
    /// Every task runs the previous spec again.
    RollbackCompleted,
}

impl UpdateState {
    /// Whether tasks are being replaced now.
    pub fn in_progress(self) -> bool {
        matches!(self, Self::Updating | Self::RollbackStarted)
    }

    /// Whether it is (or ended as) a rollback.
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            Self::RollbackStarted | Self::RollbackPaused | Self::RollbackCompleted
        )
    }
}

/// `--update-*` and `--rollback-*`: how a new task template rolls over a service's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateConfig {
    /// Tasks replaced at once (0: all at once).
    pub parallelism: u64,
    /// Nanoseconds to wait after a task is replaced before the next (per parallel worker).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay: u64,
    /// What a failed update does.
    #[serde(default)]
    pub failure_action: FailureAction,
    /// Nanoseconds after a new task starts during which its failure counts against the update.
    #[serde(default)]
    pub monitor: u64,
    /// The fraction of replaced tasks that may fail before the failure action.
    #[serde(default)]
    pub max_failure_ratio: Ratio,
    /// Stop the old task first, or start the new one first.
    #[serde(default)]
    pub order: UpdateOrder,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Default for UpdateConfig {
    /// Docker's defaults: one at a time, no delay, pause on failure, watched for 5 s, no failure
    /// tolerated, stop first.
    fn default() -> Self {
        Self {
            parallelism: 1,
            delay: 0,
            failure_action: FailureAction::Pause,
            monitor: 5_000_000_000,
            max_failure_ratio: Ratio(0.0),
            order: UpdateOrder::StopFirst,
        }
    }
}

/// `--update-failure-action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop updating; `service update` or `service rollback` goes on.
    #[default]
    Pause,
    /// Go on updating.
    Continue,
    /// Return to the previous spec (not for a rollback itself).
    Rollback,
}

impl FailureAction {
    /// Its name, as the flag takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Continue => "continue",
            Self::Rollback => "rollback",
        }
    }
}

/// `--update-order`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// The old task stops, then its replacement starts.
    #[default]
    StopFirst,
    /// The replacement starts; the old task stops once it runs.
    StartFirst,
}

/// A fraction from 0 to 1 (`--update-max-failure-ratio`), a JSON number.
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ratio(pub f64);

// Checked to be within 0..=1 where it is read, so never NaN.
impl Eq for Ratio {}

/// `service create`'s flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    /// `--name` (unique).
    pub name: String,
    /// `--label`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What each task runs.
    pub task_template: TaskSpec,
    /// `--mode`, `--replicas`.
    pub mode: ServiceMode,
    /// `--endpoint-mode`, `--publish`.
    #[serde(default)]
    pub endpoint_spec: EndpointSpec,
    /// `--update-*` (Docker's defaults when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    /// `--rollback-*` (Docker's defaults when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
}

impl ServiceSpec {
    /// The replica count of a replicated service.
    pub fn replicas(&self) -> Option<u64> {
        self.mode.replicated.as_ref().map(|r| r.replicas)
    }
}

/// What a task runs, and where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskSpec {
    /// The program.
    pub container_spec: ContainerSpec,
    /// `--constraint`.
    #[serde(default)]
    pub placement: Placement,
    /// `--network`: network IDs.
    #[serde(default)]
    pub networks: Vec<NetworkAttachmentConfig>,
    /// Raised by `service update --force`: every task is replaced though nothing else changed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub force_update: u64,
    /// `--restart-*` (Docker's default when unset: any exit, after 5 s, without limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// `--reserve-*`, `--limit-*`.
    #[serde(default, skip_serializing_if = "ResourceRequirements::is_empty")]
    pub resources: ResourceRequirements,
}

/// What each task reserves on its node and may use at most, as Docker's `Resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceRequirements {
    /// `--limit-cpu`, `--limit-memory`, `--limit-pids`: enforced by the node (the engine, or a
    /// cgroup of the task's own for exec tasks).
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub limits: Resources,
    /// `--reserve-cpu`, `--reserve-memory`: what the scheduler sets aside on the node.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub reservations: Resources,
}

impl ResourceRequirements {
    fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.reservations.is_empty()
    }
}

/// CPUs, memory and processes: what a task asks for (0: none asked), or what a node has (its
/// `Description.Resources`, without processes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Resources {
    /// In billionths of a CPU. Node bodies stored before this type served both said `NanoCpus`.
    #[serde(
        rename = "NanoCPUs",
        alias = "NanoCpus",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub nano_cpus: u64,
    /// In bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_bytes: u64,
    /// Processes (limits only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pids: u64,
}

impl Resources {
    /// Whether nothing is asked.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A file system mounted into each task, as Docker's `Mount`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Mount {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: MountKind,
    /// A path on the node (bind), a volume name (volume, empty: an anonymous one), nothing
    /// (tmpfs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// The absolute path in the task.
    pub target: String,
    /// `readonly`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// `tmpfs-size`, `tmpfs-mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_options: Option<TmpfsOptions>,
}

/// `--mount type=...`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A path of the node.
    Bind,
    /// A named volume of the engine (docker tasks only).
    #[default]
    Volume,
    /// A file system in memory.
    Tmpfs,
}

impl MountKind {
    /// As `--mount type=` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::Volume => "volume",
            Self::Tmpfs => "tmpfs",
        }
    }
}

/// A tmpfs mount's size and mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TmpfsOptions {
    /// Bytes (0: the kernel's default, half the memory).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size_bytes: u64,
    /// Permission bits of its root (0: 1777).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Mount {
    /// What is wrong with it, if anything (paths absolute and clean, options that fit the type).
    pub fn check(&self) -> Result<(), String> {
        let kind = self.kind.name();
        let clean = |path: &str| {
            path.starts_with('/')
                && !path.contains('\0')
                && !path.split('/').any(|part| part == "..")
        };
        if self.target.is_empty() {
            return Err(format!(
                "invalid mount config for type {kind:?}: the target is missing"
            ));
        }
        if !clean(&self.target) {
            return Err(format!(
                "invalid mount target {:?}: it must be an absolute path without \"..\"",
                self.target
            ));
        }
        if self.target == "/" {
            return Err("invalid mount target \"/\": a mount cannot replace the root".into());
        }
        match self.kind {
            MountKind::Bind if self.source.is_empty() => Err(format!(
                "invalid mount config for type {kind:?}: the source is missing"
            )),
            MountKind::Bind if !clean(&self.source) => Err(format!(
                "invalid mount config for type {kind:?}: the source {:?} must be an absolute path without \"..\"",
                self.source
            )),
            MountKind::Tmpfs if !self.source.is_empty() => Err(format!(
                "invalid mount config for type {kind:?}: a tmpfs has no source"
            )),
            MountKind::Volume
                if self.source.contains('/') || self.source.chars().any(|c| c.is_whitespace()) =>
            {
                Err(format!(
                    "invalid mount config for type {kind:?}: {:?} is not a volume name",
                    self.source
                ))
            }
            _ if self.tmpfs_options.is_some() && self.kind != MountKind::Tmpfs => Err(format!(
                "invalid mount config for type {kind:?}: tmpfs options apply only to type \"tmpfs\""
            )),
            _ => Ok(()),
        }
    }
}

/// When a task that stopped by itself is replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    /// `none`, `on-failure` or `any`.
    pub condition: RestartCondition,
    /// Nanoseconds between the task's end and its replacement.
    #[serde(default)]
    pub delay: u64,
    /// Replacements at most (0: no limit), counted over `window`.
    #[serde(default)]
    pub max_attempts: u64,
    /// Nanoseconds over which replacements are counted (0: the service's whole life).
    #[serde(default)]
    pub window: u64,
}

impl Default for RestartPolicy {
    /// Docker's: any exit, after 5 s, without limit.
    fn default() -> Self {
        Self {
            condition: RestartCondition::Any,
            delay: 5_000_000_000,
            max_attempts: 0,
            window: 0,
        }
    }
}

/// `--restart-condition`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// A task that stopped stays stopped.
    None,
    /// Replaced when it failed (non-zero exit, killed, rejected), not when it completed.
    OnFailure,
    /// Replaced however it ended.
    #[default]
    Any,
}

/// The program a task runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSpec {
    /// IMAGE (the `exec` executor records it and runs COMMAND from the host).
    pub image: String,
    /// COMMAND (the first word after IMAGE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// ARG...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `--container-label KEY=VALUE`: the docker executor's container carries them (beside
    /// Shoal's own, which win); the exec executor keeps them as the task's metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `--env KEY=VALUE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// `--health-*`, `--no-healthcheck` (unset: the image's HEALTHCHECK for docker tasks, none
    /// for exec tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    /// `--mount`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// `--read-only`: the root file system (docker tasks).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// `--user` (`name`, `uid`, `uid:gid`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `--workdir`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// `--hostname`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// `--stop-signal` (empty: SIGTERM).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// `--stop-grace-period`, nanoseconds (unset: 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<u64>,
    /// `--init`: an init process reaps the task's zombies (docker tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// `--secret`: secrets mounted at `/run/secrets/<target>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::secret::SecretReference>,
    /// `--config`: configs mounted at their target path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<crate::secret::ConfigReference>,
}

/// A health check, as Docker's `HealthConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["CMD-SHELL", command]`, `["CMD", program, args...]`, or `["NONE"]` (no check, not even
    /// the image's); empty: the image's test with these settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// Nanoseconds between checks (0: 30 s).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    /// Nanoseconds a check may take (0: 30 s).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    /// Failed checks in a row that make the task unhealthy (0: 3).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u64,
    /// Nanoseconds after the start during which failed checks do not count (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
}

impl HealthConfig {
    /// The command to run, if the check is one (`CMD-SHELL` through `/bin/sh -c`).
    pub fn command(&self) -> Option<Vec<String>> {
        match self.test.split_first()? {
            (kind, rest) if kind == "CMD-SHELL" && !rest.is_empty() => {
                Some(["/bin/sh".to_owned(), "-c".to_owned(), rest.join(" ")].to_vec())
            }
            (kind, rest) if kind == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
            _ => None,
        }
    }

    /// Whether it turns every check off (`--no-healthcheck`).
    pub fn disabled(&self) -> bool {
        self.test.first().is_some_and(|t| t == "NONE")
    }
}

/// Where tasks may go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Placement {
    /// e.g. `node.role==manager`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// `--placement-pref spread=node.labels.<name>`, outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<PlacementPreference>,
    /// `--replicas-max-per-node` (0: no limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_replicas: u64,
}

/// One `--placement-pref`, as Docker's `{"Spread": {"SpreadDescriptor": "node.labels.zone"}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PlacementPreference {
    /// Spread tasks evenly over the values of a label.
    pub spread: SpreadOver,
}

/// What `spread=` names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SpreadOver {
    /// `node.labels.<name>`.
    pub spread_descriptor: String,
}

impl PlacementPreference {
    /// Parses `spread=node.labels.<name>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((strategy, descriptor)) = text.split_once('=') else {
            return Err(format!(
                "invalid placement preference {text:?}: expected spread=node.labels.<name>"
            ));
        };
        if strategy != "spread" {
            return Err(format!(
                "invalid placement preference {text:?}: the only strategy is spread, not {strategy:?}"
            ));
        }
        let this = Self {
            spread: SpreadOver {
                spread_descriptor: descriptor.to_owned(),
            },
        };
        this.label()?;
        Ok(this)
    }

    /// The node label it spreads over.
    pub fn label(&self) -> Result<&str, String> {
        let descriptor = &self.spread.spread_descriptor;
        match descriptor.strip_prefix("node.labels.") {
            Some(label) if !label.is_empty() => Ok(label),
            _ => Err(format!(
                "invalid placement preference spread={descriptor}: it spreads over node.labels.<name>"
            )),
        }
    }

    /// As `--placement-pref` takes it.
    pub fn text(&self) -> String {
        format!("spread={}", self.spread.spread_descriptor)
    }
}

/// A network a service's tasks join.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkAttachmentConfig {
    /// The network's ID.
    pub target: String,
    /// Other names the service has on this network (`--network name=N,alias=A`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Replicated or global.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceMode {
    /// `--mode replicated` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicated: Option<Replicated>,
    /// `--mode global`: one task on every node that passes the constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<Global>,
}

/// A replicated service's size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Replicated {
    /// `--replicas`.
    pub replicas: u64,
}

/// A global service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Global {}

/// How a service is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSpec {
    /// `vip` (default) or `dnsrr`.
    #[serde(default)]
    pub mode: EndpointMode,
    /// `--publish`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
}

/// `--endpoint-mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// A virtual IP per network, balanced over the tasks.
    #[default]
    Vip,
    /// No virtual IP: the tasks' own addresses.
    Dnsrr,
}

/// A published port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortConfig {
    /// `tcp` or `udp`.
    pub protocol: PortProtocol,
    /// The port the tasks listen on.
    pub target_port: u16,
    /// The port clients use; 0 in a spec asks for one from 30000-32767.
    #[serde(default)]
    pub published_port: u16,
    /// `ingress` or `host`.
    #[serde(default)]
    pub publish_mode: PublishMode,
    /// Shoal's own (`client-ip=` in the long `--publish` syntax): whether the tasks see the
    /// client's address. Unset: translated for `mode=ingress`, kept for `mode=host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIp>,
}

impl PortConfig {
    /// Whether the tasks see the client's own address on this port.
    pub fn keeps_client_ip(&self) -> bool {
        match self.client_ip {
            Some(mode) => mode == ClientIp::Preserve,
            None => self.publish_mode == PublishMode::Host,
        }
    }
}

impl fmt::Display for PortConfig {
    /// As `service ls` shows it: `*:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "*:{}->{}/{}",
            self.published_port, self.target_port, self.protocol
        )
    }
}

/// `protocol=`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl PortProtocol {
    /// Its name, as Docker writes it (`tcp`, `udp`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `mode=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node, through the routing mesh.
    #[default]
    Ingress,
    /// On the nodes running a task, to that task.
    Host,
}

/// `client-ip=`: how the tasks behind a published port see the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientIp {
    /// Translated to the entry node's address on the ingress network (works on any network).
    Snat,
    /// The client's own address and port.
    Preserve,
}

impl ClientIp {
    /// Parses `snat` or `preserve`.
    pub fn parse(value: &str) -> Result<ClientIp, String> {
        match value {
            "snat" => Ok(ClientIp::Snat),
            "preserve" => Ok(ClientIp::Preserve),
            other => Err(format!("client-ip must be snat or preserve, not {other:?}")),
        }
    }
}

/// What the allocator gave a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Endpoint {
    /// The spec it was allocated for.
    #[serde(default)]
    pub spec: EndpointSpec,
    /// The published ports, auto-assigned ones filled in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
    /// A virtual IP per network.
    #[serde(rename = "VirtualIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<VirtualIp>,
}

/// A service's address on a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VirtualIp {
    /// The network's ID.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// e.g. `10.0.0.2/24`.
    pub addr: String,
}

/// A task's state, in SwarmKit's order: a task only moves forward.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created by the orchestrator.
    #[default]
    New,
    /// Given its addresses; waiting for a node.
    Pending,
    /// Given a node.
    Assigned,
    /// The node has it.
    Accepted,
    /// The node is preparing it (namespace, image).
    Preparing,
    /// Started, not yet confirmed running.
    Starting,
    /// Running.
    Running,
    /// Exited with status 0.
    Complete,
    /// Stopped on request.
    Shutdown,
    /// Exited with an error, or could not start.
    Failed,
    /// The node refused it.
    Rejected,
    /// To be removed.
    Remove,
    /// Its node is gone.
    Orphaned,
}

impl TaskState {
    /// Whether the task has stopped for good.
    pub fn is_terminal(self) -> bool {
        self > Self::Running
    }

    /// Lower-case, as Docker prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Pending => "pending",
            Self::Assigned => "assigned",
            Self::Accepted => "accepted",
            Self::Preparing => "preparing",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Complete => "complete",
            Self::Shutdown => "shutdown",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Remove => "remove",
            Self::Orphaned => "orphaned",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A task, as `service ps` and `inspect` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    /// Its ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its version.
    pub version: Version,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Its service.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Its service's name.
    pub service_name: String,
    /// Its slot (replicated services), from 1.
    #[serde(default)]
    pub slot: u64,
    /// Its node, once scheduled.
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    /// What it runs (the service's template when it was created).
    pub spec: TaskSpec,
    /// Where it is.
    pub status: TaskStatus,
    /// Where the orchestrator wants it: running or shutdown.
    pub desired_state: TaskState,
    /// RFC 3339: when its node first reported it running (Shoal's; a rolling update watches a
    /// new task for failure from then on).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub started_at: String,
    /// Its addresses, one per network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks_attachments: Vec<NetworkAttachment>,
    /// Its service's published ports when it was created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
}

impl Task {
    /// Docker's name: `service.slot` (global services: `service.node`).
    pub fn name(&self) -> String {
        if self.slot > 0 {
            format!("{}.{}", self.service_name, self.slot)
        } else {
            format!("{}.{}", self.service_name, self.node_id)
        }
    }
}

/// A task's state and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatus {
    /// RFC 3339: when it reached this state.
    pub timestamp: String,
    /// The state.
    pub state: TaskState,
    /// What happened, in a few words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The error, when it failed or could not be placed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
    /// The process (exec) or container (docker) running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_status: Option<ContainerStatus>,
}

/// The process behind a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerStatus {
    /// The Docker container ID (docker executor).
    #[serde(
        rename = "ContainerID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub container_id: String,
    /// Its PID on the node.
    #[serde(rename = "PID", default)]
    pub pid: u32,
    /// Its exit code, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// A task's address on a network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkAttachment {
    /// The network's ID.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// e.g. `10.0.0.7/24`.
    pub addresses: Vec<String>,
}

/// Which tasks `service ps` / `node ps` list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFilter {
    /// Services (names, IDs or ID prefixes).
    #[serde(default)]
    pub services: Vec<String>,
    /// Nodes (names, IDs, ID prefixes; `self`).
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// The number of a signal as Docker takes it (`SIGTERM`, `TERM`, `15`), or why not.
pub fn signal_number(text: &str) -> Result<i32, String> {
    const NAMES: [(&str, i32); 21] = [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("BUS", 7),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("STKFLT", 16),
        ("CHLD", 17),
        ("CONT", 18),
        ("STOP", 19),
        ("TSTP", 20),
        ("WINCH", 28),
    ];
    if let Ok(n) = text.parse::<i32>() {
        return match n {
            1..=64 => Ok(n),
            _ => Err(format!("invalid signal: {text}")),
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, number)| *number)
        .ok_or_else(|| format!("invalid signal: {text}"))
}
