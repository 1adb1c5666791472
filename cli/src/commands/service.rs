//! `shoal service create|ls|ps|inspect|scale|rm`, and the task table `node ps` shares.

use shoal_api::call::{ClusterCall, NetworkCall, ServiceCall};
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::Duration;

use serde::Serialize;
use shoal_api::{
    DaemonHost,
    service::{
        ClientIp, ContainerSpec, EndpointMode, EndpointSpec, FailureAction, Global, HealthConfig,
        NetworkAttachmentConfig, Placement, PortConfig, PortProtocol, PublishMode, Ratio,
        Replicated, RestartCondition, RestartPolicy, Service, ServiceMode, ServiceSpec, Task,
        TaskFilter, TaskSpec, TaskState, UpdateConfig, UpdateOrder, UpdateState,
    },
    swarm::Node,
};

use crate::{
    Failure,
    commands::swarm::call,
    commands::task_flags::{self, TaskFlags},
    commands::text::{go_duration, truncate_id},
    output::Format,
};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a new service
    Create(Box<CreateArgs>),
    /// List services
    #[command(alias = "list")]
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Format the output: json (one object per line), or a Go template
        /// ({{.ID}}, table {{.Name}}\t{{.ID}})
        #[arg(long)]
        format: Option<Format>,
    },
    /// List the tasks of one or more services
    Ps {
        /// Only display task IDs
        #[arg(short, long)]
        quiet: bool,
        /// Format the output: json (one object per line), or a Go template
        /// ({{.ID}}, table {{.Name}}\t{{.ID}})
        #[arg(long)]
        format: Option<Format>,
        /// Filter output: desired-state=running|shutdown|accepted, id=, name=, node=
        #[arg(short, long, value_parser = parse_task_filter)]
        filter: Vec<TaskRowFilter>,
        /// Do not truncate output (task IDs, errors)
        #[arg(long)]
        no_trunc: bool,
        /// The services (name, ID or ID prefix)
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Display detailed information on one or more services
    Inspect {
        /// Print the information in a human friendly format
        #[arg(long, conflicts_with = "format")]
        pretty: bool,
        /// Format the output: json, or a Go template ({{.ID}}, {{json .Spec}})
        #[arg(short, long)]
        format: Option<Format>,
        /// The services (name, ID or ID prefix)
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Update a service
    Update(Box<UpdateArgs>),
    /// Fetch the logs of a service or task
    Logs(Box<crate::commands::logs::LogsArgs>),
    /// Revert changes to a service's configuration
    Rollback {
        /// Exit immediately instead of waiting for the service to converge
        #[arg(short, long)]
        detach: bool,
        /// Suppress progress output
        #[arg(short, long)]
        quiet: bool,
        /// The service
        service: String,
    },
    /// Scale one or multiple replicated services
    Scale {
        /// Exit immediately instead of waiting for the services to converge
        #[arg(short, long)]
        detach: bool,
        /// SERVICE=REPLICAS
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        scales: Vec<String>,
    },
    /// Remove one or more services
    #[command(alias = "remove")]
    Rm {
        /// The services
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// `service create`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// Service name
    #[arg(long)]
    name: Option<String>,
    /// Number of tasks
    #[arg(long)]
    replicas: Option<u64>,
    /// Service mode ("replicated" or "global")
    #[arg(long, value_parser = ["replicated", "global"], default_value = "replicated")]
    mode: String,
    /// Publish a port as a node port: 8080:80[/udp] or published=8080,target=80[,mode=host][,protocol=udp][,client-ip=preserve]
    #[arg(short, long, value_name = "PORT")]
    publish: Vec<String>,
    /// Network attachments: NETWORK, or name=NETWORK[,alias=ALIAS]...
    #[arg(long)]
    network: Vec<String>,
    /// Placement constraints (node.role==manager, node.labels.zone!=a, ...)
    #[arg(long)]
    constraint: Vec<String>,
    /// Placement preferences (spread=node.labels.zone)
    #[arg(long, value_parser = task_flags::placement_pref)]
    placement_pref: Vec<shoal_api::service::PlacementPreference>,
    /// Attach a filesystem mount: type=bind|volume|tmpfs,source=...,target=...[,readonly]
    #[arg(long, value_parser = task_flags::mount)]
    mount: Vec<shoal_api::service::Mount>,
    /// Give the tasks a secret at /run/secrets/TARGET: NAME or
    /// source=NAME,target=FILE,uid=UID,gid=GID,mode=0444
    #[arg(long, value_parser = task_flags::secret)]
    secret: Vec<shoal_api::secret::SecretReference>,
    /// Give the tasks a config at its target: NAME (at /NAME) or
    /// source=NAME,target=PATH,uid=UID,gid=GID,mode=0444
    #[arg(long, value_parser = task_flags::config)]
    config: Vec<shoal_api::secret::ConfigReference>,
    /// Set environment variables (KEY=VALUE)
    #[arg(short, long)]
    env: Vec<String>,
    /// Service labels (KEY=VALUE)
    #[arg(short, long)]
    label: Vec<String>,
    /// Container labels (KEY=VALUE)
    #[arg(long)]
    container_label: Vec<String>,
    /// Endpoint mode ("vip" or "dnsrr")
    #[arg(long, value_parser = ["vip", "dnsrr"], default_value = "vip")]
    endpoint_mode: String,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    rolling: RollingFlags,
    #[command(flatten)]
    restart: RestartFlags,
    #[command(flatten)]
    health: HealthFlags,
    #[command(flatten)]
    task: TaskFlags,
    /// The image (recorded by the exec executor, run by the docker executor)
    image: String,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `--update-*` and `--rollback-*`, as `service create` and `service update` take them.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct RollingFlags {
    /// Maximum number of tasks updated simultaneously (0 to update all at once)
    #[arg(long)]
    update_parallelism: Option<u64>,
    /// Delay between updates (ns|us|ms|s|m|h)
    #[arg(long, value_parser = go_duration)]
    update_delay: Option<u64>,
    /// Action on update failure ("pause", "continue", "rollback")
    #[arg(long, value_parser = ["pause", "continue", "rollback"])]
    update_failure_action: Option<String>,
    /// Duration after each task update to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long, value_parser = go_duration)]
    update_monitor: Option<u64>,
    /// Failure rate to tolerate during an update (0 to 1)
    #[arg(long, value_parser = ratio)]
    update_max_failure_ratio: Option<f64>,
    /// Update order ("start-first", "stop-first")
    #[arg(long, value_parser = ["start-first", "stop-first"])]
    update_order: Option<String>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once)
    #[arg(long)]
    rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h)
    #[arg(long, value_parser = go_duration)]
    rollback_delay: Option<u64>,
    /// Action on rollback failure ("pause", "continue")
    #[arg(long, value_parser = ["pause", "continue"])]
    rollback_failure_action: Option<String>,
    /// Duration after each task rollback to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long, value_parser = go_duration)]
    rollback_monitor: Option<u64>,
    /// Failure rate to tolerate during a rollback (0 to 1)
    #[arg(long, value_parser = ratio)]
    rollback_max_failure_ratio: Option<f64>,
    /// Rollback order ("start-first", "stop-first")
    #[arg(long, value_parser = ["start-first", "stop-first"])]
    rollback_order: Option<String>,
}

/// `--health-*` and `--no-healthcheck`, as `service create` and `service update` take them.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct HealthFlags {
    /// Command to run to check health
    #[arg(long)]
    health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h)
    #[arg(long, value_parser = go_duration)]
    health_interval: Option<u64>,
    /// Maximum time to allow one check to run (ms|s|m|h)
    #[arg(long, value_parser = go_duration)]
    health_timeout: Option<u64>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long)]
    health_retries: Option<u64>,
    /// Start period for the task to initialize before counting retries towards unstable
    #[arg(long, value_parser = go_duration)]
    health_start_period: Option<u64>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long, conflicts_with = "health_cmd")]
    no_healthcheck: bool,
}

impl HealthFlags {
    /// Applies the flags given to `check`.
    fn apply(&self, check: &mut Option<HealthConfig>) {
        if self.no_healthcheck {
            *check = Some(HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            });
            return;
        }
        let given = self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some();
        if !given {
            return;
        }
        let c = check.get_or_insert_with(HealthConfig::default);
        if c.disabled() {
            c.test.clear();
        }
        if let Some(cmd) = &self.health_cmd {
            c.test = vec!["CMD-SHELL".into(), cmd.clone()];
        }
        if let Some(n) = self.health_interval {
            c.interval = n;
        }
        if let Some(n) = self.health_timeout {
            c.timeout = n;
        }
        if let Some(n) = self.health_retries {
            c.retries = n;
        }
        if let Some(n) = self.health_start_period {
            c.start_period = n;
        }
    }
}

/// `--restart-*`, as `service create` and `service update` take them.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct RestartFlags {
    /// Restart when condition is met ("none", "on-failure", "any")
    #[arg(long, value_parser = ["none", "on-failure", "any"])]
    restart_condition: Option<String>,
    /// Delay between restart attempts (ns|us|ms|s|m|h)
    #[arg(long, value_parser = go_duration)]
    restart_delay: Option<u64>,
    /// Maximum number of restarts before giving up (0: no limit)
    #[arg(long)]
    restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h)
    #[arg(long, value_parser = go_duration)]
    restart_window: Option<u64>,
}

impl RestartFlags {
    /// Applies the flags given to `policy` (starting from Docker's default).
    fn apply(&self, policy: &mut Option<RestartPolicy>) {
        if self.restart_condition.is_none()
            && self.restart_delay.is_none()
            && self.restart_max_attempts.is_none()
            && self.restart_window.is_none()
        {
            return;
        }
        let p = policy.get_or_insert_with(RestartPolicy::default);
        if let Some(c) = &self.restart_condition {
            p.condition = match c.as_str() {
                "none" => RestartCondition::None,
                "on-failure" => RestartCondition::OnFailure,
                _ => RestartCondition::Any,
            };
        }
        if let Some(d) = self.restart_delay {
            p.delay = d;
        }
        if let Some(n) = self.restart_max_attempts {
            p.max_attempts = n;
        }
        if let Some(w) = self.restart_window {
            p.window = w;
        }
    }
}

impl RollingFlags {
    /// Applies the flags given to `update` and `rollback` (starting from Docker's defaults).
    fn apply(&self, update: &mut Option<UpdateConfig>, rollback: &mut Option<UpdateConfig>) {
        let sets = [
            (
                update,
                self.update_parallelism,
                self.update_delay,
                &self.update_failure_action,
                self.update_monitor,
                self.update_max_failure_ratio,
                &self.update_order,
            ),
            (
                rollback,
                self.rollback_parallelism,
                self.rollback_delay,
                &self.rollback_failure_action,
                self.rollback_monitor,
                self.rollback_max_failure_ratio,
                &self.rollback_order,
            ),
        ];
        for (config, parallelism, delay, action, monitor, ratio, order) in sets {
            let given = parallelism.is_some()
                || delay.is_some()
                || action.is_some()
                || monitor.is_some()
                || ratio.is_some()
                || order.is_some();
            if !given {
                continue;
            }
            let c = config.get_or_insert_with(UpdateConfig::default);
            if let Some(p) = parallelism {
                c.parallelism = p;
            }
            if let Some(d) = delay {
                c.delay = d;
            }
            if let Some(a) = action {
                c.failure_action = match a.as_str() {
                    "continue" => FailureAction::Continue,
                    "rollback" => FailureAction::Rollback,
                    _ => FailureAction::Pause,
                };
            }
            if let Some(m) = monitor {
                c.monitor = m;
            }
            if let Some(r) = ratio {
                c.max_failure_ratio = Ratio(r);
            }
            if let Some(o) = order {
                c.order = match o.as_str() {
                    "start-first" => UpdateOrder::StartFirst,
                    _ => UpdateOrder::StopFirst,
                };
            }
        }
    }
}

/// A failure ratio: a number from 0 to 1.
fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("invalid ratio {text:?}: want a number from 0 to 1")),
    }
}

/// `service update`'s flags: Docker's, each changing one part of the spec read from the swarm.
#[derive(Debug, clap::Args)]
pub(crate) struct UpdateArgs {
    /// Service image tag
    #[arg(long)]
    image: Option<String>,
    /// Number of tasks
    #[arg(long)]
    replicas: Option<u64>,
    /// Service command args (split on spaces)
    #[arg(long, allow_hyphen_values = true)]
    args: Option<String>,
    /// Add or update an environment variable (KEY=VALUE)
    #[arg(long)]
    env_add: Vec<String>,
    /// Remove an environment variable (KEY)
    #[arg(long)]
    env_rm: Vec<String>,
    /// Add or update a published port (as --publish takes it)
    #[arg(long, value_name = "PORT")]
    publish_add: Vec<String>,
    /// Remove a published port by its published or target port: PORT[/PROTOCOL]
    #[arg(long, value_name = "PORT")]
    publish_rm: Vec<String>,
    /// Add or update a placement constraint
    #[arg(long)]
    constraint_add: Vec<String>,
    /// Remove a placement constraint
    #[arg(long)]
    constraint_rm: Vec<String>,
    /// Add a placement preference (spread=node.labels.zone)
    #[arg(long, value_parser = task_flags::placement_pref)]
    placement_pref_add: Vec<shoal_api::service::PlacementPreference>,
    /// Remove a placement preference
    #[arg(long, value_parser = task_flags::placement_pref)]
    placement_pref_rm: Vec<shoal_api::service::PlacementPreference>,
    /// Add or update a mount (as --mount takes it)
    #[arg(long, value_parser = task_flags::mount)]
    mount_add: Vec<shoal_api::service::Mount>,
    /// Remove a mount by its target path
    #[arg(long)]
    mount_rm: Vec<String>,
    /// Add or update a secret (as --secret takes it)
    #[arg(long, value_parser = task_flags::secret)]
    secret_add: Vec<shoal_api::secret::SecretReference>,
    /// Remove a secret (name or ID)
    #[arg(long)]
    secret_rm: Vec<String>,
    /// Add or update a config (as --config takes it)
    #[arg(long, value_parser = task_flags::config)]
    config_add: Vec<shoal_api::secret::ConfigReference>,
    /// Remove a config (name or ID)
    #[arg(long)]
    config_rm: Vec<String>,
    /// Add a network (as --network takes it)
    #[arg(long)]
    network_add: Vec<String>,
    /// Remove a network (name or ID)
    #[arg(long)]
    network_rm: Vec<String>,
    /// Add or update a service label (KEY=VALUE)
    #[arg(long)]
    label_add: Vec<String>,
    /// Remove a label by its key
    #[arg(long)]
    label_rm: Vec<String>,
    /// Endpoint mode ("vip" or "dnsrr")
    #[arg(long, value_parser = ["vip", "dnsrr"])]
    endpoint_mode: Option<String>,
    /// Force update even if no changes require it
    #[arg(long)]
    force: bool,
    /// Roll back to the previous specification
    #[arg(long)]
    rollback: bool,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    rolling: RollingFlags,
    #[command(flatten)]
    restart: RestartFlags,
    #[command(flatten)]
    health: HealthFlags,
    #[command(flatten)]
    task: TaskFlags,
    /// The service (name, ID or ID prefix)
    service: String,
}

/// The spec `args` make of `spec` (the service as read), or what is wrong with them.
fn updated_spec(
    mut spec: ServiceSpec,
    args: &UpdateArgs,
    network_ids: &HashMap<String, String>,
) -> Result<ServiceSpec, Failure> {
    let task = &mut spec.task_template;
    if let Some(image) = &args.image {
        task.container_spec.image.clone_from(image);
    }
    if let Some(replicas) = args.replicas {
        match &mut spec.mode.replicated {
            Some(r) => r.replicas = replicas,
            None => {
                return Err(Failure(
                    "replicas can only be used with replicated mode".into(),
                ));
            }
        }
    }
    if let Some(words) = &args.args {
        task.container_spec.args = words.split_whitespace().map(str::to_owned).collect();
    }
    edit_env(&mut task.container_spec.env, args);
    for rm in &args.constraint_rm {
        task.placement.constraints.retain(|c| c != rm);
    }
    for add in &args.constraint_add {
        if !task.placement.constraints.contains(add) {
            task.placement.constraints.push(add.clone());
        }
    }
    edit_networks(&mut task.networks, &spec.name, args, network_ids)?;
    if args.force {
        task.force_update += 1;
    }
    args.restart.apply(&mut task.restart_policy);
    args.health.apply(&mut task.container_spec.healthcheck);
    args.task.apply(task);
    task_flags::edit_lists(
        task,
        &args.mount_add,
        &args.mount_rm,
        &args.placement_pref_add,
        &args.placement_pref_rm,
    )
    .map_err(Failure)?;
    task_flags::edit_data_refs(
        &mut task.container_spec,
        &args.secret_add,
        &args.secret_rm,
        &args.config_add,
        &args.config_rm,
    )
    .map_err(Failure)?;
    for rm in &args.label_rm {
        spec.labels.remove(rm);
    }
    for add in &args.label_add {
        let (k, v) = add.split_once('=').unwrap_or((add, ""));
        spec.labels.insert(k.to_owned(), v.to_owned());
    }
    edit_ports(&mut spec.endpoint_spec.ports, &spec.name, args)?;
    if let Some(mode) = &args.endpoint_mode {
        spec.endpoint_spec.mode = if mode == "dnsrr" {
            EndpointMode::Dnsrr
        } else {
            EndpointMode::Vip
        };
    }
    args.rolling
        .apply(&mut spec.update_config, &mut spec.rollback_config);
    Ok(spec)
}

/// `--env-rm`, then `--env-add` (a later entry of a key replacing an earlier one), applied to
/// a container's environment.
fn edit_env(env: &mut Vec<String>, args: &UpdateArgs) {
    let key = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k).to_owned();
    for rm in &args.env_rm {
        let k = key(rm);
        env.retain(|e| key(e) != k);
    }
    for add in &args.env_add {
        let add = env_from_client(add.clone());
        let k = key(&add);
        env.retain(|e| key(e) != k);
        env.push(add);
    }
}

/// `--network-rm`, then `--network-add`, applied to the networks of `service`'s tasks, or what
/// is wrong with them.
fn edit_networks(
    networks: &mut Vec<NetworkAttachmentConfig>,
    service: &str,
    args: &UpdateArgs,
    network_ids: &HashMap<String, String>,
) -> Result<(), Failure> {
    // Networks are kept by ID: a name given here is the network's name or ID.
    let id_of = |n: &str| network_ids.get(n).cloned().unwrap_or_else(|| n.to_owned());
    for rm in &args.network_rm {
        let id = id_of(rm);
        let before = networks.len();
        networks.retain(|n| n.target != id);
        if networks.len() == before {
            return Err(Failure(format!(
                "network {rm} is not attached to service {service}"
            )));
        }
    }
    for add in &args.network_add {
        let mut attachment = parse_network(add).map_err(Failure)?;
        attachment.target = id_of(&attachment.target);
        if networks.iter().any(|n| n.target == attachment.target) {
            return Err(Failure(format!(
                "service {service} is already attached to network {}",
                attachment.target
            )));
        }
        networks.push(attachment);
    }
    Ok(())
}

/// `--publish-rm`, then `--publish-add`, applied to the ports `service` publishes, or what is
/// wrong with them.
fn edit_ports(
    ports: &mut Vec<PortConfig>,
    service: &str,
    args: &UpdateArgs,
) -> Result<(), Failure> {
    for rm in &args.publish_rm {
        let (port, proto) = match rm.split_once('/') {
            Some((port, proto)) => (port, Some(proto)),
            None => (rm.as_str(), None),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| Failure(format!("invalid --publish-rm {rm:?}: want PORT[/PROTOCOL]")))?;
        let before = ports.len();
        ports.retain(|p| {
            let same_proto = proto.is_none_or(|want| p.protocol.to_string() == want);
            !(same_proto && (p.published_port == port || p.target_port == port))
        });
        if ports.len() == before {
            return Err(Failure(format!(
                "invalid --publish-rm {rm:?}: service {service} publishes no such port"
            )));
        }
    }
    for add in &args.publish_add {
        let port = parse_publish(add).map_err(Failure)?;
        ports.retain(|p| {
            !(p.protocol == port.protocol
                && (p.target_port == port.target_port
                    || (port.published_port != 0 && p.published_port == port.published_port)))
        });
        ports.push(port);
    }
    Ok(())
}

/// Parses `--publish` in either of Docker's syntaxes.
pub(crate) fn parse_publish(value: &str) -> Result<PortConfig, String> {
    let bad = |why: &str| format!("invalid publish {value:?}: {why}");
    let port = |s: &str, what: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(&format!(
                "the {what} port must be a number from 1 to 65535, not {s:?}"
            ))),
        }
    };
    let protocol = |s: &str| match s {
        "tcp" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        other => Err(bad(&format!("protocol must be tcp or udp, not {other:?}"))),
    };
    if value.contains('=') {
        let mut config = PortConfig::default();
        let mut target = None;
        for field in value.split(',') {
            let (key, v) = field
                .split_once('=')
                .ok_or_else(|| bad(&format!("{field:?} is not KEY=VALUE")))?;
            match key.trim() {
                "published" => config.published_port = port(v, "published")?,
                "target" => target = Some(port(v, "target")?),
                "protocol" => config.protocol = protocol(v)?,
                "mode" => {
                    config.publish_mode = match v {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        other => {
                            return Err(bad(&format!(
                                "mode must be ingress or host, not {other:?}"
                            )));
                        }
                    }
                }
                // Shoal's own: whether the tasks see the client's address.
                "client-ip" => config.client_ip = Some(ClientIp::parse(v).map_err(|e| bad(&e))?),
                other => {
                    return Err(bad(&format!(
                        "unknown key {other:?} (want published, target, protocol, mode, client-ip)"
                    )));
                }
            }
        }
        config.target_port = target.ok_or_else(|| bad("missing target"))?;
        if config.publish_mode == PublishMode::Host && config.client_ip == Some(ClientIp::Snat) {
            return Err(bad(
                "client-ip=snat does not apply to mode=host, which always keeps the client's address",
            ));
        }
        return Ok(config);
    }
    let (ports, proto) = match value.split_once('/') {
        Some((ports, proto)) => (ports, protocol(proto)?),
        None => (value, PortProtocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts[..] {
        [target] => (0, port(target, "target")?),
        [published, target] => (port(published, "published")?, port(target, "target")?),
        _ => {
            return Err(bad(
                "want [PUBLISHED:]TARGET[/PROTOCOL] (a host IP cannot be given in swarm mode)",
            ));
        }
    };
    Ok(PortConfig {
        protocol: proto,
        target_port: target,
        published_port: published,
        publish_mode: PublishMode::Ingress,
        client_ip: None,
    })
}

/// Parses `--network`: a network's name or ID, or Docker's long syntax
/// `name=NETWORK[,alias=ALIAS]...`.
pub(crate) fn parse_network(value: &str) -> Result<NetworkAttachmentConfig, String> {
    let bad = |why: &str| format!("invalid network {value:?}: {why}");
    if !value.contains('=') {
        if value.is_empty() || value.contains(',') {
            return Err(bad("want NETWORK or name=NETWORK[,alias=ALIAS]"));
        }
        return Ok(NetworkAttachmentConfig {
            target: value.to_owned(),
            aliases: Vec::new(),
        });
    }
    let mut config = NetworkAttachmentConfig::default();
    for field in value.split(',') {
        let (key, v) = field
            .split_once('=')
            .ok_or_else(|| bad(&format!("{field:?} is not KEY=VALUE")))?;
        if v.is_empty() {
            return Err(bad(&format!("{key} needs a value")));
        }
        match key.trim() {
            "name" | "target" => config.target = v.to_owned(),
            "alias" => config.aliases.push(v.to_owned()),
            other => {
                return Err(bad(&format!("unknown key {other:?} (want name, alias)")));
            }
        }
    }
    if config.target.is_empty() {
        return Err(bad("missing name"));
    }
    Ok(config)
}

/// `--env FOO` without `=`: the value of `FOO` in this command's own environment, as the docker
/// CLI does; left as `FOO` (absent in the task) when it has none.
fn env_from_client(entry: String) -> String {
    if entry.contains('=') {
        return entry;
    }
    match std::env::var(&entry) {
        Ok(value) => format!("{entry}={value}"),
        Err(_) => entry,
    }
}

/// `KEY=VALUE` labels (a bare `KEY` has an empty value).
fn labels(values: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    Ok(crate::commands::pairs(values, "label")?
        .into_iter()
        .collect())
}

/// The spec `service create` sends for `args` (also what `stack deploy` builds).
pub(crate) fn spec(args: CreateArgs) -> Result<ServiceSpec, Failure> {
    let mode = if args.mode == "global" {
        if args.replicas.is_some() {
            return Err(Failure(
                "replicas can only be used with replicated mode".into(),
            ));
        }
        ServiceMode {
            replicated: None,
            global: Some(Global {}),
        }
    } else {
        ServiceMode {
            replicated: Some(Replicated {
                replicas: args.replicas.unwrap_or(1),
            }),
            global: None,
        }
    };
    let ports = args
        .publish
        .iter()
        .map(|p| parse_publish(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure)?;
    let (command, rest) = match args.command.split_first() {
        Some((c, rest)) => (vec![c.clone()], rest.to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    let (mut update_config, mut rollback_config) = (None, None);
    args.rolling.apply(&mut update_config, &mut rollback_config);
    let mut restart_policy = None;
    args.restart.apply(&mut restart_policy);
    let mut healthcheck = None;
    args.health.apply(&mut healthcheck);
    let mut task_template = TaskSpec {
        container_spec: ContainerSpec {
            image: args.image,
            command,
            args: rest,
            env: args.env.into_iter().map(env_from_client).collect(),
            healthcheck,
            mounts: args.mount,
            secrets: args.secret,
            configs: args.config,
            labels: labels(&args.container_label)?,
            ..Default::default()
        },
        placement: Placement {
            constraints: args.constraint,
            preferences: args.placement_pref,
            max_replicas: 0,
        },
        networks: args
            .network
            .iter()
            .map(|n| parse_network(n))
            .collect::<Result<_, _>>()
            .map_err(Failure)?,
        force_update: 0,
        restart_policy,
        resources: Default::default(),
    };
    args.task.apply(&mut task_template);
    Ok(ServiceSpec {
        name: args.name.unwrap_or_default(),
        labels: labels(&args.label)?,
        task_template,
        mode,
        endpoint_spec: EndpointSpec {
            mode: if args.endpoint_mode == "dnsrr" {
                EndpointMode::Dnsrr
            } else {
                EndpointMode::Vip
            },
            ports,
        },
        update_config,
        rollback_config,
    })
}

async fn tasks(host: &DaemonHost, filter: TaskFilter) -> Result<Vec<Task>, Failure> {
    Ok(serde_json::from_value(
        call(host, ServiceCall::Tasks(filter)).await?,
    )?)
}

async fn node_names(host: &DaemonHost) -> Result<HashMap<String, String>, Failure> {
    let nodes: Vec<Node> = serde_json::from_value(call(host, ClusterCall::NodeList).await?)?;
    Ok(nodes
        .into_iter()
        .map(|n| (n.id, n.description.hostname))
        .collect())
}

fn title(state: TaskState) -> String {
    let name = state.name();
    name[..1].to_uppercase() + &name[1..]
}

/// One `ps --format json` line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TaskRow {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    image: String,
    node: String,
    desired_state: String,
    current_state: String,
    error: String,
    ports: String,
}

fn rows(tasks: &[Task], names: &HashMap<String, String>) -> Vec<TaskRow> {
    let mut previous: Option<(String, u64, String)> = None;
    tasks
        .iter()
        .map(|t| {
            let slot = (t.service_id.clone(), t.slot, t.node_id.clone());
            let history = previous.as_ref() == Some(&slot)
                || (t.slot > 0
                    && previous
                        .as_ref()
                        .is_some_and(|p| p.0 == slot.0 && p.1 == slot.1));
            previous = Some(slot);
            TaskRow {
                id: t.id.clone(),
                name: if history {
                    format!(" \\_ {}", t.name())
                } else {
                    t.name()
                },
                image: t.spec.container_spec.image.clone(),
                node: names.get(&t.node_id).cloned().unwrap_or_default(),
                desired_state: title(t.desired_state),
                current_state: format!(
                    "{} {}",
                    title(t.status.state),
                    crate::output::ago(&t.status.timestamp).to_lowercase()
                ),
                error: t.status.err.clone(),
                ports: t
                    .ports
                    .iter()
                    .filter(|p| p.publish_mode == PublishMode::Host)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })
        .collect()
}

/// Prints tasks as `service ps` and `node ps` do.
/// One `--filter` of `service ps` / `node ps`, as Docker takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TaskRowFilter {
    /// `desired-state=running|shutdown|accepted`.
    DesiredState(TaskState),
    /// `id=PREFIX`.
    Id(String),
    /// `name=PREFIX` (of `web.1`).
    Name(String),
    /// `node=ID or hostname`.
    Node(String),
}

pub(crate) fn parse_task_filter(text: &str) -> Result<TaskRowFilter, String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid filter {text:?}: want KEY=VALUE"))?;
    Ok(match key {
        "desired-state" => TaskRowFilter::DesiredState(match value {
            "running" => TaskState::Running,
            "shutdown" => TaskState::Shutdown,
            "accepted" => TaskState::Accepted,
            other => {
                return Err(format!(
                    "invalid filter 'desired-state={other}': want running, shutdown or accepted"
                ));
            }
        }),
        "id" => TaskRowFilter::Id(value.to_owned()),
        "name" => TaskRowFilter::Name(value.to_owned()),
        "node" => TaskRowFilter::Node(value.to_owned()),
        other => {
            return Err(format!(
                "invalid filter {other:?}: want desired-state, id, name or node"
            ));
        }
    })
}

impl TaskRowFilter {
    fn matches(&self, task: &Task, names: &HashMap<String, String>) -> bool {
        match self {
            Self::DesiredState(state) => task.desired_state == *state,
            Self::Id(prefix) => task.id.starts_with(prefix.as_str()),
            Self::Name(prefix) => task.name().starts_with(prefix.as_str()),
            Self::Node(node) => {
                task.node_id == *node || names.get(&task.node_id).is_some_and(|n| n == node)
            }
        }
    }
}

/// How `service ps` and `node ps` print.
pub(crate) struct Listing {
    /// `-q`.
    pub(crate) quiet: bool,
    /// `--format`.
    pub(crate) format: Option<Format>,
    /// `--no-trunc`.
    pub(crate) no_trunc: bool,
}

/// Docker's error width in `ps` unless `--no-trunc`.
const ERROR_WIDTH: usize = 30;

pub(crate) async fn print_tasks(
    host: &DaemonHost,
    filter: TaskFilter,
    row_filters: &[TaskRowFilter],
    Listing {
        quiet,
        format,
        no_trunc,
    }: Listing,
) -> Result<(), Failure> {
    let names = node_names(host).await?;
    // Filters of one key are alternatives; different keys must all hold, as in Docker.
    let tasks: Vec<Task> = tasks(host, filter)
        .await?
        .into_iter()
        .filter(|t| {
            let holds = |same: fn(&TaskRowFilter) -> bool| {
                let of_key: Vec<&TaskRowFilter> = row_filters.iter().filter(|f| same(f)).collect();
                of_key.is_empty() || of_key.iter().any(|f| f.matches(t, &names))
            };
            holds(|f| matches!(f, TaskRowFilter::DesiredState(_)))
                && holds(|f| matches!(f, TaskRowFilter::Id(_)))
                && holds(|f| matches!(f, TaskRowFilter::Name(_)))
                && holds(|f| matches!(f, TaskRowFilter::Node(_)))
        })
        .collect();
    let mut rows = rows(&tasks, &names);
    if !no_trunc {
        for row in &mut rows {
            row.id = truncate_id(&row.id);
            if row.error.chars().count() > ERROR_WIDTH {
                row.error = row.error.chars().take(ERROR_WIDTH - 1).collect::<String>() + "…";
            }
        }
    }
    if quiet {
        for row in &rows {
            println!("{}", row.id);
        }
        return Ok(());
    }
    if crate::output::print_rows(format.as_ref(), &rows)? {
        return Ok(());
    }
    let cells: Vec<[String; 8]> = rows
        .into_iter()
        .map(|r| {
            [
                r.id,
                r.name,
                r.image,
                r.node,
                r.desired_state,
                r.current_state,
                if r.error.is_empty() {
                    String::new()
                } else {
                    format!("\"{}\"", r.error)
                },
                r.ports,
            ]
        })
        .collect();
    print!(
        "{}",
        crate::output::table(
            [
                "ID",
                "NAME",
                "IMAGE",
                "NODE",
                "DESIRED STATE",
                "CURRENT STATE",
                "ERROR",
                "PORTS"
            ],
            &cells
        )
    );
    Ok(())
}

/// One `service ls --format json` line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceRow {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    mode: String,
    replicas: String,
    image: String,
    ports: String,
}

/// `service ls` (and `stack services`) of `services`.
pub(crate) async fn print_services(
    host: &DaemonHost,
    services: &[Service],
    quiet: bool,
    format: Option<&Format>,
) -> Result<(), Failure> {
    if quiet {
        for s in services {
            println!("{}", s.id);
        }
        return Ok(());
    }
    let rows = service_rows(services, &tasks(host, TaskFilter::default()).await?);
    if crate::output::print_rows(format, &rows)? {
        return Ok(());
    }
    let cells: Vec<[String; 6]> = rows
        .into_iter()
        .map(|r| [r.id, r.name, r.mode, r.replicas, r.image, r.ports])
        .collect();
    print!(
        "{}",
        crate::output::table(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &cells)
    );
    Ok(())
}

fn service_rows(services: &[Service], tasks: &[Task]) -> Vec<ServiceRow> {
    services
        .iter()
        .map(|s| {
            let live = |t: &&Task| t.service_id == s.id && t.desired_state == TaskState::Running;
            let running = tasks
                .iter()
                .filter(live)
                .filter(|t| t.status.state == TaskState::Running)
                .count();
            let (mode, desired) = match s.spec.replicas() {
                Some(n) => ("replicated", n as usize),
                None => ("global", tasks.iter().filter(live).count()),
            };
            ServiceRow {
                id: s.id.clone(),
                name: s.spec.name.clone(),
                mode: mode.into(),
                replicas: format!("{running}/{desired}"),
                image: s.spec.task_template.container_spec.image.clone(),
                ports: s
                    .endpoint
                    .ports
                    .iter()
                    .filter(|p| p.publish_mode == PublishMode::Ingress)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })
        .collect()
}

/// Where a task state sits on Docker's progress bar.
fn progress(state: TaskState) -> usize {
    match state {
        TaskState::New => 1,
        TaskState::Pending => 2,
        TaskState::Assigned => 3,
        TaskState::Accepted => 4,
        TaskState::Preparing => 5,
        TaskState::Starting => 6,
        TaskState::Running => 7,
        _ => 0,
    }
}

fn bar(state: TaskState) -> String {
    let filled = progress(state) * 50 / 7;
    if filled >= 50 {
        format!("[{}>]", "=".repeat(50))
    } else if filled == 0 {
        format!("[{}]", " ".repeat(51))
    } else {
        format!("[{}>{}]", "=".repeat(filled), " ".repeat(50 - filled))
    }
}

/// Shows convergence until every slot (or node) of `service` has a running task, as
/// `docker service create` does.
async fn converge(host: &DaemonHost, service: &str) -> Result<(), Failure> {
    converge_after(host, service, None).await
}

/// What a change of a service's tasks was asked to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `service update`: a rollback means it failed.
    Update,
    /// `service rollback`.
    Rollback,
}

/// The newest task per slot (or node) of `svc` that is meant to run, among `all` its tasks.
fn slot_tasks<'a>(svc: &Service, all: &'a [Task]) -> BTreeMap<(u64, String), &'a Task> {
    let mut slots: BTreeMap<(u64, String), &Task> = BTreeMap::new();
    for t in all.iter().filter(|t| t.desired_state == TaskState::Running) {
        let key = if t.slot > 0 {
            (t.slot, String::new())
        } else {
            (0, t.node_id.clone())
        };
        // During an update, the task on the current spec stands for its slot.
        let current = |t: &Task| t.spec == svc.spec.task_template;
        match slots.get(&key) {
            Some(seen) if current(seen) || !current(t) => {}
            _ => {
                slots.insert(key, t);
            }
        }
    }
    slots
}

/// The progress lines `converge_after` shows: the overall count, then a line per slot (or
/// node) with its state and progress bar or error.
fn progress_text(slots: &BTreeMap<(u64, String), &Task>, running: usize, desired: usize) -> String {
    let mut text = format!("overall progress: {running} out of {desired} tasks\n");
    for (i, t) in slots.values().enumerate() {
        let label = if t.slot > 0 {
            format!("{}/{desired}", t.slot)
        } else {
            t.node_id[..t.node_id.len().min(12)].to_owned()
        };
        let detail = if t.status.err.is_empty() {
            bar(t.status.state)
        } else {
            t.status.err.clone()
        };
        text += &format!("{label}: {:<9} {detail}\n", t.status.state.name());
        if i >= 200 {
            break;
        }
    }
    text
}

/// Waits for a service to converge, showing its slots. After an update or rollback made from
/// the service at `after.0` (its version then), also waits for that to end, and fails if it is
/// paused or (for an update) rolled back, saying why, as the docker CLI does.
async fn converge_after(
    host: &DaemonHost,
    service: &str,
    after: Option<(u64, Expect)>,
) -> Result<(), Failure> {
    // Why an update was rolled back, once the swarm said so.
    let mut rolled_back: Option<String> = None;
    let tty = std::io::stdout().is_terminal();
    let mut shown_lines = 0;
    let mut last = String::new();
    loop {
        let Some(svc) = inspect_one(host, service).await? else {
            return Err(Failure(format!("service {service} was removed")));
        };
        let all = tasks(
            host,
            TaskFilter {
                services: vec![svc.id.clone()],
                nodes: Vec::new(),
            },
        )
        .await?;
        let slots = slot_tasks(&svc, &all);
        let updating = svc
            .update_status
            .as_ref()
            .is_some_and(|u| u.state.in_progress());
        let desired = svc.spec.replicas().map_or(slots.len(), |n| n as usize);
        let running = slots
            .values()
            .filter(|t| t.status.state == TaskState::Running && t.spec == svc.spec.task_template)
            .count();
        let text = progress_text(&slots, running, desired);
        let done = running == desired && slots.len() == desired && !updating;
        if let Some((version, expect)) = after {
            // The service as it was before the update may still be what this node reads.
            if svc.version.index <= version {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if let Some(status) = &svc.update_status {
                let verb = if status.state.is_rollback() {
                    "rollback"
                } else {
                    "update"
                };
                if matches!(
                    status.state,
                    UpdateState::Paused | UpdateState::RollbackPaused
                ) {
                    return Err(Failure(format!("{verb} paused: {}", status.message)));
                }
                if expect == Expect::Update && status.state.is_rollback() && rolled_back.is_none() {
                    println!("rollback: {}", status.message);
                    rolled_back = Some(status.message.clone());
                }
            }
        }
        if let Some(why) = rolled_back.as_ref().filter(|_| done) {
            return Err(Failure(format!("the update was rolled back: {why}")));
        }
        if tty {
            if shown_lines > 0 {
                print!("\x1b[{shown_lines}A\x1b[J");
            }
            print!("{text}");
            shown_lines = text.lines().count();
        } else if text != last && (done || text.lines().next() != last.lines().next()) {
            // Without a terminal: a line when the count moves, and the slots at the end.
            if done {
                print!("{text}");
            } else {
                println!("{}", text.lines().next().unwrap_or_default());
            }
        }
        last = text;
        if done {
            println!("verify: Service converged");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn run(host: &DaemonHost, command: Command) -> Result<(), Failure> {
    match command {
        Command::Create(args) => create(host, *args).await?,
        Command::Ls { quiet, format } => {
            let services: Vec<Service> =
                serde_json::from_value(call(host, ServiceCall::List).await?)?;
            print_services(host, &services, quiet, format.as_ref()).await?;
        }
        Command::Ps {
            quiet,
            format,
            filter,
            no_trunc,
            services,
        } => {
            print_tasks(
                host,
                TaskFilter {
                    services,
                    nodes: Vec::new(),
                },
                &filter,
                Listing {
                    quiet,
                    format,
                    no_trunc,
                },
            )
            .await?;
        }
        Command::Logs(args) => crate::commands::logs::run(host, *args).await?,
        Command::Inspect {
            pretty,
            format,
            services,
        } => inspect(host, services, pretty, format.as_ref()).await?,
        Command::Update(args) => update(host, &args).await?,
        Command::Rollback {
            detach,
            quiet,
            service,
        } => rollback(host, &service, detach, quiet).await?,
        Command::Scale { detach, scales } => scale(host, &scales, detach).await?,
        Command::Rm { services } => {
            call(
                host,
                ServiceCall::Remove {
                    ids: services.clone(),
                },
            )
            .await?;
            for s in services {
                println!("{s}");
            }
        }
    }
    Ok(())
}

/// `service create`: creates the service and prints its ID, then shows it converge unless
/// detached or quiet.
async fn create(host: &DaemonHost, args: CreateArgs) -> Result<(), Failure> {
    let (detach, quiet) = (args.detach, args.quiet);
    let spec = spec(args)?;
    let id: String =
        serde_json::from_value(call(host, ServiceCall::Create(Box::new(spec))).await?)?;
    println!("{id}");
    if !detach && !quiet {
        converge(host, &id).await?;
    }
    Ok(())
}

/// `service inspect`: the services in `format`, or as the docker CLI's `--pretty` lays them out.
async fn inspect(
    host: &DaemonHost,
    services: Vec<String>,
    pretty: bool,
    format: Option<&Format>,
) -> Result<(), Failure> {
    let found: Vec<Service> =
        serde_json::from_value(call(host, ServiceCall::Inspect { ids: services }).await?)?;
    if pretty {
        for service in &found {
            print!("{}", crate::commands::pretty::service(service));
        }
    } else {
        crate::output::print_objects(format, &found)?;
    }
    Ok(())
}

/// The service `service` names (name, ID or ID prefix), as the swarm has it now.
async fn find(host: &DaemonHost, service: &str) -> Result<Service, Failure> {
    inspect_one(host, service)
        .await?
        .ok_or_else(|| Failure(format!("service {service} not found")))
}

/// The service `service` names, as the swarm has it now; `None` when the swarm has none.
async fn inspect_one(host: &DaemonHost, service: &str) -> Result<Option<Service>, Failure> {
    let found: Vec<Service> = serde_json::from_value(
        call(
            host,
            ServiceCall::Inspect {
                ids: vec![service.to_owned()],
            },
        )
        .await?,
    )?;
    Ok(found.into_iter().next())
}

/// `service update`: changes the service as `args` say (or rolls it back with `--rollback`, as
/// `service rollback` does), then shows it converge unless detached or quiet.
async fn update(host: &DaemonHost, args: &UpdateArgs) -> Result<(), Failure> {
    let current = find(host, &args.service).await?;
    let networks: Vec<shoal_api::service::Network> =
        serde_json::from_value(call(host, NetworkCall::List).await?)?;
    let ids: HashMap<String, String> = networks
        .into_iter()
        .flat_map(|n| [(n.spec.name.clone(), n.id.clone()), (n.id.clone(), n.id)])
        .collect();
    let spec = updated_spec(current.spec.clone(), args, &ids)?;
    if args.rollback {
        // A rollback goes back to the previous spec: a change asked for with it would be lost.
        if spec != current.spec {
            return Err(Failure(
                "--rollback cannot be combined with other changes to the service".into(),
            ));
        }
        return rollback(host, &args.service, args.detach, args.quiet).await;
    }
    call(
        host,
        ServiceCall::Update {
            id: current.id.clone(),
            version: current.version.index,
            spec: Box::new(spec),
        },
    )
    .await?;
    println!("{}", current.spec.name);
    if !args.detach && !args.quiet {
        converge_after(
            host,
            &current.id,
            Some((current.version.index, Expect::Update)),
        )
        .await?;
    }
    Ok(())
}

/// `service rollback`: reverts the service to its previous spec, then shows it converge unless
/// detached or quiet.
async fn rollback(
    host: &DaemonHost,
    service: &str,
    detach: bool,
    quiet: bool,
) -> Result<(), Failure> {
    let current = find(host, service).await?;
    call(
        host,
        ServiceCall::Rollback {
            id: current.id.clone(),
            version: None,
        },
    )
    .await?;
    println!("{}", current.spec.name);
    if !detach && !quiet {
        converge_after(
            host,
            &current.id,
            Some((current.version.index, Expect::Rollback)),
        )
        .await?;
    }
    Ok(())
}

/// `service scale`: checks every SERVICE=REPLICAS first, then scales each service in turn,
/// showing it converge unless detached.
async fn scale(host: &DaemonHost, scales: &[String], detach: bool) -> Result<(), Failure> {
    let mut parsed = Vec::new();
    for s in scales {
        let (name, n) = s.split_once('=').ok_or_else(|| {
            Failure(format!(
                "invalid scale specifier {s:?}: expected SERVICE=REPLICAS"
            ))
        })?;
        let n: u64 = n.parse().map_err(|_| {
            Failure(format!(
                "invalid replicas value {n:?} for service {name}: expected a number"
            ))
        })?;
        parsed.push((name.to_owned(), n));
    }
    for (name, replicas) in parsed {
        call(
            host,
            ServiceCall::Scale {
                id: name.clone(),
                replicas,
            },
        )
        .await?;
        println!("{name} scaled to {replicas}");
        if !detach {
            converge(host, &name).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_entry_without_a_value_takes_the_cli_s_own_or_stays_absent() {
        assert_eq!(env_from_client("A=1".into()), "A=1");
        // PATH is set for any test run; this name is not.
        assert!(env_from_client("PATH".into()).starts_with("PATH="));
        assert_eq!(
            env_from_client("SHOAL_NO_SUCH_VARIABLE_42".into()),
            "SHOAL_NO_SUCH_VARIABLE_42"
        );
    }

    #[test]
    fn durations_are_go_s() {
        assert_eq!(go_duration("10s"), Ok(10_000_000_000));
        assert_eq!(go_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(go_duration("500ms"), Ok(500_000_000));
        assert_eq!(go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(go_duration("0"), Ok(0));
        assert_eq!(go_duration("0s"), Ok(0));
        assert_eq!(go_duration("2h"), Ok(7_200_000_000_000));
        assert!(go_duration("10").unwrap_err().contains("missing unit"));
        assert!(go_duration("5x").unwrap_err().contains("unknown unit"));
        assert!(go_duration("s").unwrap_err().contains("want a number"));
        assert!(go_duration("").unwrap_err().contains("empty"));
        assert!(go_duration("9999999999h").unwrap_err().contains("too long"));
        assert!(ratio("1.5").unwrap_err().contains("from 0 to 1"));
        assert_eq!(ratio("0.25"), Ok(0.25));
    }

    fn update_args(flags: &[&str]) -> UpdateArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: UpdateArgs,
        }
        let mut argv = vec!["shoal"];
        argv.extend_from_slice(flags);
        argv.push("web");
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn update_flags_change_only_what_they_name() {
        let mut spec = ServiceSpec {
            name: "web".into(),
            mode: ServiceMode {
                replicated: Some(Replicated { replicas: 2 }),
                global: None,
            },
            ..Default::default()
        };
        spec.task_template.container_spec.image = "v1".into();
        spec.task_template.container_spec.env = vec!["A=1".into(), "B=2".into()];
        spec.task_template.placement.constraints = vec!["node.role==worker".into()];
        spec.endpoint_spec.ports = vec![parse_publish("8080:80").unwrap()];
        let ids = HashMap::from([("app".to_owned(), "n1".to_owned())]);
        let args = update_args(&[
            "--image",
            "v2",
            "--env-add",
            "A=3",
            "--env-rm",
            "B",
            "--constraint-rm",
            "node.role==worker",
            "--constraint-add",
            "node.labels.zone==a",
            "--publish-rm",
            "8080",
            "--publish-add",
            "9090:90",
            "--network-add",
            "app",
            "--label-add",
            "tier=web",
            "--update-parallelism",
            "2",
            "--update-delay",
            "10s",
            "--update-order",
            "start-first",
            "--update-failure-action",
            "rollback",
            "--force",
        ]);
        let new = updated_spec(spec.clone(), &args, &ids).unwrap();
        let c = &new.task_template.container_spec;
        assert_eq!(c.image, "v2");
        assert_eq!(c.env, ["A=3"]);
        assert_eq!(
            new.task_template.placement.constraints,
            ["node.labels.zone==a"]
        );
        assert_eq!(new.endpoint_spec.ports.len(), 1);
        assert_eq!(new.endpoint_spec.ports[0].published_port, 9090);
        assert_eq!(new.task_template.networks[0].target, "n1");
        assert_eq!(new.labels["tier"], "web");
        assert_eq!(new.task_template.force_update, 1);
        let u = new.update_config.clone().unwrap();
        assert_eq!((u.parallelism, u.delay), (2, 10_000_000_000));
        assert_eq!(u.order, UpdateOrder::StartFirst);
        assert_eq!(u.failure_action, FailureAction::Rollback);
        // Docker's defaults for what was not given.
        assert_eq!(u.monitor, 5_000_000_000);
        assert_eq!(new.replicas(), Some(2));
        assert!(new.rollback_config.is_none());

        // Nothing asked, nothing changed.
        assert_eq!(
            updated_spec(spec.clone(), &update_args(&[]), &ids).unwrap(),
            spec
        );
        // What cannot be removed is an error, not a silent no-op.
        let err = updated_spec(spec.clone(), &update_args(&["--publish-rm", "7070"]), &ids);
        assert!(err.unwrap_err().0.contains("publishes no such port"));
        let err = updated_spec(spec.clone(), &update_args(&["--network-rm", "app"]), &ids);
        assert!(err.unwrap_err().0.contains("is not attached"));
        // Bad values are refused by the flag parser.
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: UpdateArgs,
        }
        for bad in [
            ["--update-delay", "soon"],
            ["--update-max-failure-ratio", "2"],
            ["--update-order", "sideways"],
            ["--rollback-failure-action", "rollback"],
        ] {
            let argv = ["shoal", bad[0], bad[1], "web"];
            assert!(
                <Cli as clap::Parser>::try_parse_from(argv).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn publish_takes_both_of_dockers_syntaxes() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!((p.published_port, p.target_port), (8080, 80));
        assert_eq!(p.protocol, PortProtocol::Tcp);
        assert_eq!(p.publish_mode, PublishMode::Ingress);
        let p = parse_publish("53:53/udp").unwrap();
        assert_eq!(p.protocol, PortProtocol::Udp);
        let p = parse_publish("80").unwrap();
        assert_eq!((p.published_port, p.target_port), (0, 80));
        let p = parse_publish("published=8080,target=80,mode=host,protocol=udp").unwrap();
        assert_eq!((p.published_port, p.target_port), (8080, 80));
        assert_eq!(p.publish_mode, PublishMode::Host);
        assert_eq!(p.protocol, PortProtocol::Udp);
        assert!(p.keeps_client_ip(), "mode=host keeps the client's address");
        assert!(!parse_publish("8080:80").unwrap().keeps_client_ip());
        let p = parse_publish("published=8080,target=80,client-ip=preserve").unwrap();
        assert_eq!(p.client_ip, Some(ClientIp::Preserve));
        assert!(p.keeps_client_ip());
    }

    #[test]
    fn bad_publish_says_what_is_wrong() {
        for (bad, says) in [
            ("8080:", "target port"),
            ("x:80", "published port"),
            ("8080:80/sctp", "tcp or udp"),
            ("1.2.3.4:8080:80", "host IP"),
            ("published=8080", "missing target"),
            ("published=8080,target=80,mode=bridge", "ingress or host"),
            ("published=8080,target=80,colour=red", "unknown key"),
            ("0:80", "1 to 65535"),
            ("published=8080,target=80,client-ip=yes", "snat or preserve"),
            (
                "published=8080,target=80,mode=host,client-ip=snat",
                "always keeps the client's address",
            ),
            ("70000:80", "1 to 65535"),
        ] {
            let e = parse_publish(bad).unwrap_err();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn network_takes_a_name_or_dockers_long_syntax() {
        assert_eq!(parse_network("front").unwrap().target, "front");
        let n = parse_network("name=front,alias=api,alias=web").unwrap();
        assert_eq!(n.target, "front");
        assert_eq!(n.aliases, ["api", "web"]);
        for (bad, says) in [
            ("alias=api", "missing name"),
            ("name=front,alias=", "alias needs a value"),
            ("name=front,driver-opt=x=y", "unknown key"),
            ("name=front,api", "is not KEY=VALUE"),
            ("", "want NETWORK"),
        ] {
            let e = parse_network(bad).unwrap_err();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn the_progress_bar_fills_up_to_running() {
        assert!(bar(TaskState::Running).starts_with(&format!("[{}>", "=".repeat(50))));
        assert_eq!(bar(TaskState::Failed).len(), 53);
        assert!(bar(TaskState::Assigned).contains('>'));
    }
}
