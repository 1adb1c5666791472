//! Services, tasks and networks on the leader: the user's calls (`service create|ls|inspect|
//! scale|rm`, `service ps`, `network create|ls|inspect|rm`), the nodes' task status reports,
//! and the reconcile loop that turns services into placed tasks ([`crate::orchestrator`]).
//!
//! Everything a call checks is checked before anything is written, and what it writes is one
//! change set: a bad `--publish`, an unknown network or a port already taken leaves the store
//! as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;
use shoal_api::call::{NetworkCall, ServiceCall};
use shoal_api::reason::Reason;
use shoal_api::service::{
    Driver, ENCRYPTED_OPTION, Endpoint, EndpointMode, FailureAction, INGRESS, Ipam, IpamConfig,
    Network, NetworkSpec, Service, ServiceSpec, Task, TaskFilter, TaskSpec, TaskState, UpdateState,
    UpdateStatus, VNI_OPTION, VirtualIp,
};
use shoal_api::version::Version;
use tokio::sync::watch;
use tonic::Status;

use super::{
    Inner, Manager,
    cluster::data_path_port,
    names::{check_name, find},
    protocol::StatusReport,
    write::{self, Attempt, now},
};
use crate::limits;
use crate::orchestrator::{self, World, body};
use crate::scheduler::Constraint;
use crate::store::{Change, ChangeSet, Kind};

fn world(inner: &Inner) -> World {
    inner.store.view(World::read)
}

fn new_id() -> Result<String, Status> {
    crate::ca::random_id().map_err(|e| Status::internal(e.to_string()))
}

pub(super) fn find_service<'a>(world: &'a World, wanted: &str) -> Result<&'a Service, Status> {
    find(
        world
            .services
            .iter()
            .map(|(id, s)| (id.as_str(), s.value.spec.name.as_str(), &s.value)),
        wanted,
        "service",
    )
}

fn find_network<'a>(world: &'a World, wanted: &str) -> Result<&'a Network, Status> {
    find(
        world
            .networks
            .iter()
            .map(|(id, n)| (id.as_str(), n.value.spec.name.as_str(), &n.value)),
        wanted,
        "network",
    )
}

/// The user's calls on services and their tasks.
pub(super) async fn call(inner: &Inner, call: ServiceCall, me: &str) -> Result<Value, Status> {
    match call {
        ServiceCall::Create(spec) => create_service(inner, *spec).await,
        ServiceCall::List => {
            let world = inner.store.view(World::read_services);
            let mut all: Vec<&Service> = world.services.values().map(|s| &s.value).collect();
            all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
            write::encode(&all)
        }
        ServiceCall::Inspect { ids } => {
            let world = inner.store.view(World::read_services);
            ids.iter()
                .map(|id| find_service(&world, id).cloned())
                .collect::<Result<Vec<_>, _>>()
                .and_then(|found| write::encode(&found))
        }
        ServiceCall::Scale { id, replicas } => scale(inner, &id, replicas).await,
        ServiceCall::Update { id, version, spec } => {
            update_service(inner, &id, version, *spec).await
        }
        ServiceCall::Rollback { id, version } => rollback_service(inner, &id, version).await,
        ServiceCall::Remove { ids } => {
            let world = world(inner);
            let doomed: Result<Vec<Change>, Status> = ids
                .iter()
                .map(|id| {
                    find_service(&world, id).map(|s| Change::Delete {
                        kind: Kind::Service,
                        id: s.id.clone(),
                        version: s.version.index,
                    })
                })
                .collect();
            match doomed {
                Ok(doomed) => write::propose(inner, ChangeSet(doomed))
                    .await
                    .map(|_| Value::Null),
                Err(e) => Err(e),
            }
        }
        ServiceCall::Tasks(filter) => list_tasks(inner, &filter, me),
    }
}

/// The user's calls on networks.
pub(super) async fn network_call(inner: &Inner, call: NetworkCall) -> Result<Value, Status> {
    match call {
        NetworkCall::Create(spec) => create_network(inner, spec).await,
        NetworkCall::List => {
            let world = inner.store.view(World::read_networks);
            let mut all: Vec<&Network> = world.networks.values().map(|n| &n.value).collect();
            all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
            write::encode(&all)
        }
        NetworkCall::Inspect { ids } => {
            let world = inner.store.view(World::read_networks);
            ids.iter()
                .map(|id| find_network(&world, id).cloned())
                .collect::<Result<Vec<_>, _>>()
                .and_then(|found| write::encode(&found))
        }
        NetworkCall::Remove { ids } => remove_networks(inner, &ids).await,
    }
}

fn list_tasks(inner: &Inner, filter: &TaskFilter, me: &str) -> Result<Value, Status> {
    let world = world(inner);
    let services: BTreeSet<String> = filter
        .services
        .iter()
        .map(|s| find_service(&world, s).map(|s| s.id.clone()))
        .collect::<Result<_, _>>()?;
    let nodes: BTreeSet<String> = filter
        .nodes
        .iter()
        .map(|n| {
            let wanted = if n == "self" { me } else { n.as_str() };
            find(
                world
                    .nodes
                    .iter()
                    .map(|(id, n)| (id.as_str(), n.value.description.hostname.as_str(), &n.value)),
                wanted,
                "node",
            )
            .map(|n| n.id.clone())
        })
        .collect::<Result<_, _>>()?;
    let mut tasks: Vec<&Task> = world
        .tasks
        .values()
        .map(|t| &t.value)
        .filter(|t| services.is_empty() || services.contains(&t.service_id))
        .filter(|t| nodes.is_empty() || nodes.contains(&t.node_id))
        .collect();
    // By service, slot (or a global service's node), then newest first: what `docker service
    // ps` shows (a slot's tasks may have run on different nodes).
    let key = |t: &&Task| {
        (
            t.service_name.clone(),
            t.slot,
            if t.slot == 0 {
                t.node_id.clone()
            } else {
                String::new()
            },
            std::cmp::Reverse((t.created_at.clone(), t.version.index)),
        )
    };
    tasks.sort_by_key(key);
    write::encode(&tasks)
}

/// Checks a service spec's sizes against [`limits`]: what it asks for must fit in a raft entry,
/// the store and every node's routing mesh.
fn check_bounds(spec: &ServiceSpec) -> Result<(), Status> {
    let c = &spec.task_template.container_spec;
    limits::check_str("the image", &c.image, limits::MAX_IMAGE)?;
    limits::check_count("environment variables", c.env.len(), limits::MAX_ENV)?;
    limits::check_count(
        "command words and arguments",
        c.command.len() + c.args.len(),
        limits::MAX_ARGS,
    )?;
    let mut text = 0;
    for word in c.env.iter().chain(&c.command).chain(&c.args) {
        if word.len() > limits::MAX_VALUE {
            return Err(Status::invalid_argument(format!(
                "an environment variable or argument is {} bytes long: at most {} are allowed",
                word.len(),
                limits::MAX_VALUE
            )));
        }
        text += word.len();
    }
    if text > limits::MAX_SPEC_TEXT {
        return Err(Status::invalid_argument(format!(
            "the environment and arguments take {text} bytes: at most {} are allowed",
            limits::MAX_SPEC_TEXT
        )));
    }
    limits::check_count(
        "placement constraints",
        spec.task_template.placement.constraints.len(),
        limits::MAX_CONSTRAINTS,
    )?;
    for constraint in &spec.task_template.placement.constraints {
        limits::check_str("a constraint", constraint, limits::MAX_SHORT)?;
    }
    limits::check_count(
        "networks",
        spec.task_template.networks.len(),
        limits::MAX_NETWORKS,
    )?;
    limits::check_count(
        "published ports",
        spec.endpoint_spec.ports.len(),
        limits::MAX_PORTS,
    )?;
    limits::check_labels("the service's labels", &spec.labels)?;
    limits::check_labels(
        "the container's labels",
        &spec.task_template.container_spec.labels,
    )?;
    if let Some(replicas) = spec.replicas()
        && replicas > limits::MAX_REPLICAS
    {
        return Err(Status::invalid_argument(format!(
            "{replicas} replicas asked: a service has at most {}",
            limits::MAX_REPLICAS
        )));
    }
    Ok(())
}

/// Whether every node's routing mesh can hold the swarm's published services with `service`
/// as it is to be: its Maglev table (sized for its tasks), the tables of the others, and all
/// their published ports.
fn check_mesh_room(world: &World, service: &ServiceSpec, id: &str) -> Result<(), Status> {
    let ingress_ports = |s: &ServiceSpec| {
        s.endpoint_spec
            .ports
            .iter()
            .filter(|p| p.publish_mode == shoal_api::service::PublishMode::Ingress)
            .count()
    };
    let tasks = |s: &ServiceSpec| s.replicas().unwrap_or(world.nodes.len() as u64);
    if ingress_ports(service) > 0 && tasks(service) > limits::MAX_MESH_BACKENDS {
        return Err(Status::invalid_argument(format!(
            "{} tasks asked for a service published through the routing mesh: at most {} (its Maglev table holds {} slots per task, {} in all)",
            tasks(service),
            limits::MAX_MESH_BACKENDS,
            limits::MESH_SLOTS_PER_BACKEND,
            limits::MESH_TABLE_SIZES[limits::MESH_TABLE_SIZES.len() - 1]
        )));
    }
    let others = world
        .services
        .values()
        .map(|s| &s.value)
        .filter(|s| s.id != id)
        .map(|s| &s.spec);
    let mut slots = 0_u64;
    let mut ports = 0_usize;
    for s in others.chain([service]) {
        let published = ingress_ports(s);
        if published == 0 {
            continue;
        }
        ports += published;
        slots += u64::from(limits::mesh_table_size(tasks(s)).unwrap_or(u32::MAX));
    }
    // Half the table space: a table being replaced is written next to the old one.
    if slots > limits::MESH_TABLE_CAPACITY / 2 {
        return Err(Status::resource_exhausted(format!(
            "the routing mesh has no room for this service: the swarm's published services would need {slots} Maglev slots on every node, and {} are available",
            limits::MESH_TABLE_CAPACITY / 2
        )));
    }
    if ports > limits::MESH_MAX_FRONTENDS {
        return Err(Status::resource_exhausted(format!(
            "the routing mesh has no room for this service: the swarm would publish {ports} ports, and every node's mesh holds {}",
            limits::MESH_MAX_FRONTENDS
        )));
    }
    Ok(())
}

/// Checks a service spec and resolves its networks to IDs.
fn check_service(world: &World, spec: &mut ServiceSpec) -> Result<(), Status> {
    check_name(&spec.name, "service")?;
    if spec.task_template.container_spec.image.is_empty() {
        return Err(Status::invalid_argument("a service needs an image"));
    }
    check_bounds(spec)?;
    match (&spec.mode.replicated, &spec.mode.global) {
        (Some(_), Some(_)) => {
            return Err(Status::invalid_argument(
                "replicas can only be used with replicated mode",
            ));
        }
        (None, None) => spec.mode.replicated = Some(Default::default()),
        _ => {}
    }
    for c in &spec.task_template.placement.constraints {
        c.parse::<Constraint>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    check_task(&spec.task_template, spec.mode.global.is_some())?;
    for env in &spec.task_template.container_spec.env {
        if env.is_empty() || env.starts_with('=') {
            return Err(Status::invalid_argument(format!(
                "invalid environment variable {env:?}: want KEY=VALUE"
            )));
        }
    }
    for p in &spec.endpoint_spec.ports {
        if p.target_port == 0 {
            return Err(Status::invalid_argument(
                "invalid published port: the target port must be between 1 and 65535",
            ));
        }
        if p.publish_mode == shoal_api::service::PublishMode::Host
            && p.client_ip == Some(shoal_api::service::ClientIp::Snat)
        {
            return Err(Status::invalid_argument(format!(
                "invalid published port {}: client-ip=snat does not apply to mode=host, which always keeps the client's address",
                p.target_port
            )));
        }
    }
    if spec.endpoint_spec.mode == EndpointMode::Dnsrr
        && spec
            .endpoint_spec
            .ports
            .iter()
            .any(|p| p.publish_mode == shoal_api::service::PublishMode::Ingress)
    {
        return Err(Status::invalid_argument(
            "EndpointSpec: port published with ingress mode can't be used with dnsrr mode",
        ));
    }
    // A service is known by its name and its aliases on its networks: none may be another
    // service's (the same name would answer for two services).
    let others = || {
        world
            .services
            .values()
            .map(|s| &s.value)
            .filter(|s| s.spec.name != spec.name)
    };
    for attachment in &spec.task_template.networks {
        for alias in &attachment.aliases {
            check_name(alias, "alias")?;
            if let Some(other) = others().find(|s| s.spec.name == *alias) {
                return Err(Status::invalid_argument(format!(
                    "alias {alias:?} on network {} clashes with the name of service {}",
                    attachment.target, other.spec.name
                )));
            }
        }
    }
    if let Some(other) = others().find(|s| {
        s.spec
            .task_template
            .networks
            .iter()
            .any(|n| n.aliases.contains(&spec.name))
    }) {
        return Err(Status::invalid_argument(format!(
            "service name {:?} clashes with an alias of service {}",
            spec.name, other.spec.name
        )));
    }
    let mut seen = BTreeSet::new();
    for attachment in &mut spec.task_template.networks {
        let network = find_network(world, &attachment.target)?;
        if network.spec.ingress {
            return Err(Status::invalid_argument(format!(
                "service cannot be explicitly attached to the ingress network {:?}",
                network.spec.name
            )));
        }
        if !seen.insert(network.id.clone()) {
            return Err(Status::invalid_argument(format!(
                "network {} is given twice",
                network.spec.name
            )));
        }
        attachment.target.clone_from(&network.id);
    }
    Ok(())
}

/// Checks what a task reserves, its limits, placement preferences, mounts and process options.
fn check_task(task: &TaskSpec, global: bool) -> Result<(), Status> {
    let bad = |text: String| Err(Status::invalid_argument(text));
    let placement = &task.placement;
    limits::check_count(
        "placement preferences",
        placement.preferences.len(),
        limits::MAX_CONSTRAINTS,
    )?;
    for pref in &placement.preferences {
        limits::check_str(
            "a placement preference",
            &pref.spread.spread_descriptor,
            limits::MAX_SHORT,
        )?;
        pref.label().map_err(Status::invalid_argument)?;
    }
    if global && placement.max_replicas > 0 {
        return bad("replicas-max-per-node can only be used with replicated mode".into());
    }
    let memory = task.resources.limits.memory_bytes;
    if memory > 0 && memory < limits::MIN_MEMORY_LIMIT {
        return bad("Minimum memory limit allowed is 6MB".into());
    }
    let c = &task.container_spec;
    limits::check_count("mounts", c.mounts.len(), limits::MAX_MOUNTS)?;
    let mut targets = BTreeSet::new();
    for mount in &c.mounts {
        limits::check_str("a mount's source", &mount.source, limits::MAX_VALUE)?;
        limits::check_str("a mount's target", &mount.target, limits::MAX_VALUE)?;
        mount.check().map_err(Status::invalid_argument)?;
        if !targets.insert(mount.target.trim_end_matches('/')) {
            return bad(format!("duplicate mount point: {}", mount.target));
        }
    }
    for (what, value) in [("the user", &c.user), ("the hostname", &c.hostname)] {
        limits::check_str(what, value, limits::MAX_SHORT)?;
    }
    limits::check_str("the working directory", &c.dir, limits::MAX_VALUE)?;
    if !c.dir.is_empty() && !c.dir.starts_with('/') {
        return bad(format!(
            "the working directory '{}' is invalid, it needs to be an absolute path",
            c.dir
        ));
    }
    if !c.hostname.is_empty()
        && !c
            .hostname
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.')
    {
        return bad(format!(
            "invalid hostname {:?}: letters, digits, '-' and '.' only",
            c.hostname
        ));
    }
    if !c.stop_signal.is_empty() {
        shoal_api::service::signal_number(&c.stop_signal).map_err(Status::invalid_argument)?;
    }
    Ok(())
}

/// The ports the swarm itself uses on every node, and what for: never published (in either
/// protocol, in either mode), never handed out.
fn reserved_ports(world: &World, data_path_port: u16) -> BTreeMap<u16, String> {
    let mut reserved = BTreeMap::new();
    reserved.insert(
        crate::addr::DEFAULT_PORT,
        "the managers' control-plane port".to_owned(),
    );
    for node in world.nodes.values().map(|n| &n.value) {
        if let Some(port) = node
            .manager_status
            .as_ref()
            .and_then(|m| m.addr.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port())
        {
            reserved.entry(port).or_insert_with(|| {
                format!("manager {}'s control-plane port", node.description.hostname)
            });
        }
    }
    let data_path = if data_path_port == 0 {
        limits::DEFAULT_DATA_PATH_PORT
    } else {
        data_path_port
    };
    reserved.insert(data_path, "the swarm's data-path (VXLAN) port".to_owned());
    reserved.insert(
        limits::WIREGUARD_PORT,
        "the encrypted overlays' WireGuard port".to_owned(),
    );
    reserved
}

/// Gives a service its published ports and virtual IPs, refusing conflicts and the swarm's own
/// ports.
fn allocate_endpoint(
    world: &World,
    service: &mut Service,
    data_path_port: u16,
) -> Result<(), Status> {
    let reserved = reserved_ports(world, data_path_port);
    for p in &service.spec.endpoint_spec.ports {
        if let Some(what) = reserved.get(&p.published_port) {
            return Err(Status::invalid_argument(format!(
                "port {} cannot be published: it is {what}",
                p.published_port
            )));
        }
    }
    let mut allocator = orchestrator::allocator(world);
    allocator.restore_ports(
        "the swarm",
        reserved.keys().flat_map(|port| {
            [
                (shoal_api::service::PortProtocol::Tcp, *port),
                (shoal_api::service::PortProtocol::Udp, *port),
            ]
        }),
    );
    // Its own previous allocation is released first (scale keeps the same one).
    if let Some(old) = world.services.get(&service.id) {
        allocator.unpublish(&old.value.spec.name);
        for vip in &old.value.endpoint.virtual_ips {
            if let Some(ip) = orchestrator::address_of(&vip.addr) {
                allocator.release(&vip.network_id, ip);
            }
        }
    }
    let spec = service.spec.endpoint_spec.clone();
    // A port the swarm chose keeps its number across an update, as in Docker.
    let chosen_before = |p: &shoal_api::service::PortConfig| {
        world.services.get(&service.id).and_then(|old| {
            old.value
                .endpoint
                .ports
                .iter()
                .find(|o| {
                    o.target_port == p.target_port
                        && o.protocol == p.protocol
                        && o.publish_mode == p.publish_mode
                })
                .map(|o| o.published_port)
        })
    };
    let wanted: Vec<_> = spec
        .ports
        .iter()
        .filter(|p| p.publish_mode == shoal_api::service::PublishMode::Ingress)
        .map(|p| {
            (
                p.protocol,
                Some(p.published_port)
                    .filter(|p| *p != 0)
                    .or_else(|| chosen_before(p)),
            )
        })
        .collect();
    let given = allocator
        .publish(&service.spec.name, &wanted)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut given = given.into_iter();
    let mut ports = Vec::new();
    for p in &spec.ports {
        let mut p = p.clone();
        if p.publish_mode == shoal_api::service::PublishMode::Ingress {
            p.published_port = given.next().unwrap_or(p.published_port);
        } else if p.published_port == 0 {
            return Err(Status::invalid_argument(format!(
                "a host-mode port needs a published port (target {})",
                p.target_port
            )));
        }
        ports.push(p);
    }
    service.endpoint = Endpoint {
        spec: spec.clone(),
        ports,
        virtual_ips: Vec::new(),
    };
    if spec.mode == EndpointMode::Vip {
        let ingress = world.ingress().map(|n| n.id.clone());
        for network in orchestrator::task_networks(service, ingress.as_deref()) {
            // A network it stays on keeps its VIP.
            let before = world
                .services
                .get(&service.id)
                .and_then(|old| {
                    old.value
                        .endpoint
                        .virtual_ips
                        .iter()
                        .find(|v| v.network_id == network)
                })
                .and_then(|v| orchestrator::address_of(&v.addr))
                .filter(|ip| allocator.reserve(&network, *ip));
            let ip = match before {
                Some(ip) => ip,
                None => allocator
                    .address(&network)
                    .map_err(|e| Status::resource_exhausted(e.to_string()))?,
            };
            let prefix = allocator
                .network(&network)
                .map_or(24, |n| n.subnet.prefix_len());
            service.endpoint.virtual_ips.push(VirtualIp {
                network_id: network,
                addr: format!("{ip}/{prefix}"),
            });
        }
    }
    Ok(())
}

async fn create_service(inner: &Inner, mut spec: ServiceSpec) -> Result<Value, Status> {
    let id = new_id()?;
    if spec.name.is_empty() {
        spec.name = format!("service-{}", &id[..8]);
    }
    let world = world(inner);
    check_service(&world, &mut spec)?;
    super::secrets::resolve(inner, &mut spec.task_template.container_spec)?;
    if world.services.len() >= limits::MAX_SERVICES {
        return Err(Status::resource_exhausted(format!(
            "the swarm has {} services, the most it holds",
            world.services.len()
        )));
    }
    check_mesh_room(&world, &spec, &id)?;
    if world
        .services
        .values()
        .any(|s| s.value.spec.name == spec.name)
    {
        return Err(Status::already_exists(format!(
            "service {} already exists (name conflicts with an existing object)",
            spec.name
        )));
    }
    let now = now();
    let mut service = Service {
        id: id.clone(),
        created_at: now.clone(),
        updated_at: now,
        spec,
        ..Default::default()
    };
    allocate_endpoint(&world, &mut service, data_path_port(inner))?;
    write::propose(
        inner,
        ChangeSet(vec![Change::Create {
            kind: Kind::Service,
            id: id.clone(),
            body: body(&service),
        }]),
    )
    .await?;
    Ok(Value::String(id))
}

async fn scale(inner: &Inner, id: &str, replicas: u64) -> Result<Value, Status> {
    write::update(inner, "update out of sequence; try again", || {
        let world = world(inner);
        let mut service = find_service(&world, id)?.clone();
        if service.spec.mode.replicated.is_none() {
            return Err(Status::failed_precondition(format!(
                "scale can only be used with replicated mode (service {} is global)",
                service.spec.name
            )));
        }
        service.spec.mode.replicated = Some(shoal_api::service::Replicated { replicas });
        check_bounds(&service.spec)?;
        check_mesh_room(&world, &service.spec, &service.id)?;
        service.updated_at = now();
        let write = Change::Update {
            kind: Kind::Service,
            id: service.id.clone(),
            version: service.version.index,
            body: body(&service),
        };
        Ok(Attempt::Write(ChangeSet(vec![write]), Value::Null))
    })
    .await
    .map(|(value, _)| value)
}

/// Checks an update's spec against the service as it is: what Docker refuses to change.
fn check_update(current: &ServiceSpec, new: &ServiceSpec) -> Result<(), Status> {
    if new.name != current.name {
        return Err(Status::invalid_argument(format!(
            "renaming services is not supported (service {})",
            current.name
        )));
    }
    if new.mode.global.is_some() != current.mode.global.is_some() {
        return Err(Status::invalid_argument(format!(
            "service mode change is not allowed (service {} is {})",
            current.name,
            if current.mode.global.is_some() {
                "global"
            } else {
                "replicated"
            }
        )));
    }
    for (config, what) in [
        (&new.update_config, "update"),
        (&new.rollback_config, "rollback"),
    ] {
        let Some(config) = config else {
            continue;
        };
        let ratio = config.max_failure_ratio.0;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Status::invalid_argument(format!(
                "invalid --{what}-max-failure-ratio {ratio}: a fraction from 0 to 1"
            )));
        }
        if what == "rollback" && config.failure_action == FailureAction::Rollback {
            return Err(Status::invalid_argument(
                "invalid --rollback-failure-action rollback: a rollback can pause or continue",
            ));
        }
    }
    Ok(())
}

/// Whether the tasks of `a` and `b` differ: an update replaces them.
fn tasks_change(a: &Service, b: &Service) -> bool {
    a.spec.task_template != b.spec.task_template || a.endpoint.ports != b.endpoint.ports
}

/// `service update`: the client's new spec, computed from the service it read at `version`.
async fn update_service(
    inner: &Inner,
    id: &str,
    version: u64,
    mut spec: ServiceSpec,
) -> Result<Value, Status> {
    let world = world(inner);
    let current = find_service(&world, id)?.clone();
    if current.version.index != version {
        return Err(Status::aborted(format!(
            "update out of sequence: service {} is at version {}, the update was made from {version}",
            current.spec.name, current.version.index
        )));
    }
    check_update(&current.spec, &spec)?;
    check_service(&world, &mut spec)?;
    super::secrets::resolve(inner, &mut spec.task_template.container_spec)?;
    check_mesh_room(&world, &spec, &current.id)?;
    respec(
        inner,
        &world,
        current,
        spec,
        UpdateState::Updating,
        "update in progress",
    )
    .await
}

/// `service rollback`: the spec before the last update comes back (and the current one becomes
/// the previous, as in Docker).
async fn rollback_service(inner: &Inner, id: &str, version: Option<u64>) -> Result<Value, Status> {
    let world = world(inner);
    let current = find_service(&world, id)?.clone();
    // The rollback is written at the version read here (`write_service`): checked with it.
    if let Some(version) = version
        && current.version.index != version
    {
        return Err(Status::aborted(format!(
            "update out of sequence: service {} is at version {}, the rollback was asked from {version}",
            current.spec.name, current.version.index
        )));
    }
    let Some(previous) = current.previous_spec.clone() else {
        return Err(Status::failed_precondition(format!(
            "service {} does not have a previous spec",
            current.spec.name
        )));
    };
    respec(
        inner,
        &world,
        current,
        previous,
        UpdateState::RollbackStarted,
        "manually requested rollback",
    )
    .await
}

/// Gives `current` the spec `spec`, the old one kept as `PreviousSpec`, its ports and VIPs
/// allocated; when its tasks change, an update (or rollback) starts in `state`, saying `message`.
async fn respec(
    inner: &Inner,
    world: &World,
    current: Service,
    spec: ServiceSpec,
    state: UpdateState,
    message: &str,
) -> Result<Value, Status> {
    let mut service = current.clone();
    service.previous_spec = Some(current.spec.clone());
    service.spec = spec;
    service.updated_at = now();
    allocate_endpoint(world, &mut service, data_path_port(inner))?;
    if tasks_change(&current, &service) {
        service.update_status = Some(UpdateStatus {
            state,
            started_at: service.updated_at.clone(),
            completed_at: String::new(),
            message: message.into(),
        });
    }
    write_service(inner, &service).await
}

/// Writes a service at the version it was read; a concurrent change is "out of sequence".
async fn write_service(inner: &Inner, service: &Service) -> Result<Value, Status> {
    write::propose(
        inner,
        ChangeSet(vec![Change::Update {
            kind: Kind::Service,
            id: service.id.clone(),
            version: service.version.index,
            body: body(service),
        }]),
    )
    .await
    .map_err(|s| match Reason::of(&s) {
        Some(Reason::Stale) => Reason::Stale.status(format!(
            "update out of sequence: service {} changed meanwhile; read it again",
            service.spec.name
        )),
        _ => s,
    })?;
    Ok(Value::Null)
}

/// A network's stored form, its subnet, gateway and VNI allocated.
fn allocate_network(world: &World, id: &str, mut spec: NetworkSpec) -> Result<Network, Status> {
    check_name(&spec.name, "network")?;
    if world
        .networks
        .values()
        .any(|n| n.value.spec.name == spec.name)
    {
        return Err(Status::already_exists(format!(
            "network with name {} already exists",
            spec.name
        )));
    }
    if spec.driver_configuration.name.is_empty() {
        spec.driver_configuration.name = "overlay".into();
    }
    if spec.driver_configuration.name != "overlay" {
        return Err(Status::invalid_argument(format!(
            "invalid driver {:?}: swarm networks use the overlay driver",
            spec.driver_configuration.name
        )));
    }
    for key in spec.driver_configuration.options.keys() {
        if key != ENCRYPTED_OPTION && key != "com.docker.network.driver.mtu" {
            return Err(Status::invalid_argument(format!(
                "unknown driver option {key:?}: the overlay driver takes encrypted and com.docker.network.driver.mtu"
            )));
        }
    }
    let config = spec
        .ipam_options
        .configs
        .first()
        .cloned()
        .unwrap_or_default();
    if spec.ipam_options.configs.len() > 1 {
        return Err(Status::invalid_argument("one --subnet per network"));
    }
    let subnet = (!config.subnet.is_empty())
        .then(|| {
            Ipv4Net::from_str(&config.subnet).map_err(|e| {
                Status::invalid_argument(format!("invalid subnet {:?}: {e}", config.subnet))
            })
        })
        .transpose()?;
    let gateway = (!config.gateway.is_empty())
        .then(|| {
            Ipv4Addr::from_str(&config.gateway).map_err(|e| {
                Status::invalid_argument(format!("invalid gateway {:?}: {e}", config.gateway))
            })
        })
        .transpose()?;
    if gateway.is_some() && subnet.is_none() {
        return Err(Status::invalid_argument("--gateway needs --subnet"));
    }
    let mut allocator = orchestrator::allocator(world);
    let given = allocator
        .add_network(id, subnet, gateway)
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .clone();
    let now = now();
    Ok(Network {
        id: id.to_owned(),
        created_at: now.clone(),
        updated_at: now,
        spec,
        driver_state: Driver {
            name: "overlay".into(),
            options: [(VNI_OPTION.to_owned(), given.vni.to_string())].into(),
        },
        ipam_options: Ipam {
            configs: vec![IpamConfig {
                subnet: given.subnet.to_string(),
                gateway: given.gateway.to_string(),
            }],
        },
        version: Version::default(),
    })
}

/// The ingress network `swarm init` creates: 10.0.0.0/24, as Docker's.
pub fn ingress_network(id: &str, subnet: Ipv4Net) -> Network {
    let spec = NetworkSpec {
        name: INGRESS.into(),
        driver_configuration: Driver {
            name: "overlay".into(),
            options: Default::default(),
        },
        ingress: true,
        ipam_options: Ipam {
            configs: vec![IpamConfig {
                subnet: subnet.to_string(),
                gateway: String::new(),
            }],
        },
        ..Default::default()
    };
    allocate_network(&World::default(), id, spec).expect("the default ingress allocates")
}

async fn create_network(inner: &Inner, spec: NetworkSpec) -> Result<Value, Status> {
    if spec.ingress {
        return Err(Status::invalid_argument(
            "the swarm has its ingress network already",
        ));
    }
    let id = new_id()?;
    let network = allocate_network(&world(inner), &id, spec)?;
    write::propose(
        inner,
        ChangeSet(vec![Change::Create {
            kind: Kind::Network,
            id: id.clone(),
            body: body(&network),
        }]),
    )
    .await?;
    Ok(Value::String(id))
}

async fn remove_networks(inner: &Inner, ids: &[String]) -> Result<Value, Status> {
    let world = world(inner);
    let mut doomed = Vec::new();
    for wanted in ids {
        let network = find_network(&world, wanted)?;
        let users: Vec<&str> = world
            .services
            .values()
            .map(|s| &s.value)
            .filter(|s| {
                s.spec
                    .task_template
                    .networks
                    .iter()
                    .any(|n| n.target == network.id)
                    || (network.spec.ingress && !s.endpoint.ports.is_empty())
            })
            .map(|s| s.spec.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(Status::failed_precondition(format!(
                "network {} is in use by service {}",
                network.spec.name,
                users.join(", ")
            )));
        }
        let tasks = world
            .tasks
            .values()
            // Tasks being stopped, or whose service is removed (the orchestrator stops them
            // next), do not hold it: `docker stack rm` removes a stack's services, then at once
            // its networks.
            .filter(|t| {
                !t.value.status.state.is_terminal()
                    && t.value.desired_state <= TaskState::Running
                    && world.services.contains_key(&t.value.service_id)
                    && t.value
                        .networks_attachments
                        .iter()
                        .any(|a| a.network_id == network.id)
            })
            .count();
        if tasks > 0 {
            return Err(Status::failed_precondition(format!(
                "network {} is in use: {tasks} tasks are still attached to it",
                network.spec.name
            )));
        }
        doomed.push(Change::Delete {
            kind: Kind::Network,
            id: network.id.clone(),
            version: network.version.index,
        });
    }
    write::propose(inner, ChangeSet(doomed)).await?;
    Ok(Value::Null)
}

/// Applies a node's task status reports: only for its own tasks, only forward.
pub(super) async fn report(
    inner: &Inner,
    node_id: &str,
    report: StatusReport,
) -> Result<Value, Status> {
    limits::check_count(
        "task status updates in one report",
        report.updates.len(),
        limits::MAX_REPORT_UPDATES,
    )?;
    for (id, status) in &report.updates {
        limits::check_str("a reported task ID", id, limits::MAX_SHORT)?;
        limits::check_str("a task's status timestamp", &status.timestamp, 64)?;
        // Messages may span lines (an error's output); only their size is bounded.
        for (what, text) in [("message", &status.message), ("error", &status.err)] {
            if text.len() > limits::MAX_MESSAGE {
                return Err(Status::invalid_argument(format!(
                    "a task's status {what} is {} bytes long: at most {} are allowed",
                    text.len(),
                    limits::MAX_MESSAGE
                )));
            }
        }
        if let Some(c) = &status.container_status {
            limits::check_str("a container ID", &c.container_id, limits::MAX_SHORT)?;
        }
    }
    let exhausted = "task status out of sequence; report again";
    write::update(inner, exhausted, || {
        let mut changes = Vec::new();
        inner.store.view(|tx| {
            for (id, status) in &report.updates {
                let Some(object) = tx.get(Kind::Task, id) else {
                    continue;
                };
                let Ok(mut task) = serde_json::from_value::<Task>(object.body.clone()) else {
                    continue;
                };
                // Only a step forward is written: a node repeating a state (or rewording it)
                // cannot turn its reports into a stream of raft writes.
                if task.node_id != node_id || status.state <= task.status.state {
                    continue;
                }
                if status.state == TaskState::Running && task.started_at.is_empty() {
                    task.started_at = now();
                }
                task.status = status.clone();
                task.updated_at = now();
                changes.push(Change::Update {
                    kind: Kind::Task,
                    id: id.clone(),
                    version: object.version,
                    body: body(&task),
                });
            }
        });
        Ok(if changes.is_empty() {
            Attempt::Unchanged(Value::Null)
        } else {
            Attempt::Write(ChangeSet(changes), Value::Null)
        })
    })
    .await
    .map(|(value, _)| value)
}

/// The leader's reconcile loop: runs the reconciler when services, tasks, nodes or networks
/// change (the watch starts before the view it reads), and every second for restart delays.
pub(super) async fn reconcile_loop(manager: Manager, mut stopped: watch::Receiver<bool>) {
    let inner: Arc<Inner> = manager.inner.clone();
    let mut metrics = inner.raft.metrics();
    loop {
        // Wait to lead.
        loop {
            if *stopped.borrow() {
                return;
            }
            if metrics.borrow_and_update().current_leader == Some(inner.raft_id) {
                break;
            }
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
        let index = inner.store.index();
        let Ok(mut events) = inner.store.watch(index) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            if metrics.borrow().current_leader != Some(inner.raft_id) || *stopped.borrow() {
                break;
            }
            let world = world(&inner);
            let changes = orchestrator::bounded(orchestrator::reconcile(
                &world,
                time::OffsetDateTime::now_utc(),
                || crate::ca::random_id().expect("the kernel's random source works"),
            ));
            if !changes.is_empty() {
                let n = changes.len();
                let placements = placements(&changes);
                match write::propose(&inner, ChangeSet(changes)).await {
                    Ok(_) => {
                        tracing::debug!(changes = n, "reconciled");
                        crate::metrics::control().placements.inc_by(placements);
                        continue;
                    }
                    Err(e) if Reason::of(&e) == Some(Reason::Stale) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e.message(), "reconciling");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            // Quiet: wait for a change (then let a burst settle) or the next second.
            let woke = tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                event = events.next() => event.is_some(),
                () = tokio::time::sleep(Duration::from_secs(1)) => true,
            };
            if !woke {
                // The watch ended (a snapshot was installed): watch again.
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            while events.try_next().is_some() {}
        }
    }
}

/// Tasks `changes` give a node (a task is assigned once in its life: states only move forward).
fn placements(changes: &[Change]) -> u64 {
    changes
        .iter()
        .filter(|c| match c {
            Change::Create { kind, body, .. } | Change::Update { kind, body, .. } => {
                *kind == Kind::Task && body.pointer("/Status/State") == Some(&"assigned".into())
            }
            Change::Delete { .. } => false,
        })
        .count() as u64
}

/// Sends `node_id` its assignment from this manager's replica (the leader's: the stream is only
/// opened on the leader and ends when it loses the leadership), again whenever it changes, until
/// the node hangs up or the manager stops.
pub(super) async fn stream_assignments(
    inner: Arc<Inner>,
    node_id: String,
    tx: tokio::sync::mpsc::Sender<Result<shoal_api::v1::Assignment, Status>>,
) {
    let mut stopped = inner.stop.subscribe();
    let mut metrics = inner.raft.metrics();
    let mut last: Option<crate::dispatcher::Assignment> = None;
    // Set at `swarm init`, never changed: read once, not on every store event.
    let port = data_path_port(&inner);
    loop {
        let Ok(mut events) = inner.store.watch(inner.store.index()) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            // A node removed (`node rm`) is told so, and its stream ends: its certificate stays
            // valid until it expires, but it no longer hears what the swarm runs.
            if inner
                .store
                .view(|tx| tx.get(Kind::Node, &node_id).is_none())
            {
                let gone = Reason::NodeRemoved.status(format!(
                    "node {node_id} is not in the swarm: it was removed"
                ));
                let _ = tx.send(Err(gone)).await;
                return;
            }
            let assignment = inner.store.view(|view| {
                let mut assignment =
                    crate::dispatcher::assignment(&World::read(view), view.index(), &node_id, port);
                assignment.payloads = super::secrets::payloads(view, &assignment.tasks);
                assignment
            });
            if last.as_ref().is_none_or(|l| !l.same_as(&assignment)) {
                if tx.send(Ok(assignment.clone().into())).await.is_err() {
                    return;
                }
                last = Some(assignment);
            }
            let woke = tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                () = tx.closed() => return,
                event = events.next() => Some(event.is_some()),
                // The stream ends with the leadership: the node asks the new leader.
                _ = metrics.wait_for(|m| m.current_leader != Some(inner.raft_id)) => None,
            };
            let Some(woke) = woke else {
                let lost = Status::unavailable("this manager is no longer the leader");
                let _ = tx.send(Err(lost)).await;
                return;
            };
            if !woke {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            while events.try_next().is_some() {}
        }
    }
}
