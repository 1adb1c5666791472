//! The API's types as the [`v1`] protobuf messages between nodes, and back. Encoding cannot
//! fail; decoding checks what proto3 cannot say: that a message a field needs is there, that an
//! enum is one this version knows, that a port fits in 16 bits.

use crate::{
    call::{ClusterCall, DataCall, ManagerCall, NetworkCall, ServiceCall},
    logs::{LogBatch, LogLine, LogsQuery, Stream},
    secret::{DataKind, Payload},
    service::{
        ClientIp, ContainerStatus, EndpointMode, PortConfig, PortProtocol, PublishMode, Resources,
        TaskFilter, TaskState, TaskStatus,
    },
    swarm::{
        Availability, NodeDescription, NodeTlsInfo, NodeUpdate, Platform, Role, SwarmUpdateArgs,
    },
    v1,
};

/// A message between nodes that does not say what its receiver needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A field proto3 leaves optional is required.
    #[error("the {message} has no {field}")]
    Missing {
        /// The message.
        message: &'static str,
        /// Its field.
        field: &'static str,
    },
    /// An enum field holds a value this version does not know (or none).
    #[error("the {message}'s {field} is {value}, not one this version knows")]
    Unknown {
        /// The message.
        message: &'static str,
        /// Its field.
        field: &'static str,
        /// The number it holds.
        value: i32,
    },
    /// An embedded Engine API document that does not parse.
    #[error("the {message}'s {field} is not a {document} of the Engine API: {error}")]
    Document {
        /// The message.
        message: &'static str,
        /// Its field.
        field: &'static str,
        /// The document it should hold.
        document: &'static str,
        /// Why it does not parse.
        error: String,
    },
    /// A port over 65535.
    #[error("the {message}'s {field} is {value}, not a port")]
    NotAPort {
        /// The message.
        message: &'static str,
        /// Its field.
        field: &'static str,
        /// What it holds.
        value: u32,
    },
}

/// `value`, the `field` of a `message`, which must be there.
pub fn required<T>(
    value: Option<T>,
    message: &'static str,
    field: &'static str,
) -> Result<T, WireError> {
    value.ok_or(WireError::Missing { message, field })
}

/// A port carried in a `uint32`.
pub fn port(value: u32, message: &'static str, field: &'static str) -> Result<u16, WireError> {
    u16::try_from(value).map_err(|_| WireError::NotAPort {
        message,
        field,
        value,
    })
}

/// An API enum carried as a protobuf enum, whose zero means "not said" and is refused.
pub trait WireEnum: Sized {
    /// The field's name in error messages.
    const FIELD: &'static str;
    /// The value a protobuf enum number stands for; `None` for zero and unknown numbers.
    fn from_number(value: i32) -> Option<Self>;
}

/// The enum a `message` carries as `value`.
pub fn decode_enum<T: WireEnum>(value: i32, message: &'static str) -> Result<T, WireError> {
    T::from_number(value).ok_or(WireError::Unknown {
        message,
        field: T::FIELD,
        value,
    })
}

/// Both ways between an API enum and its protobuf enum, variant for variant: the encoding is
/// an exhaustive match, so a new variant does not compile until it has a number.
macro_rules! wire_enum {
    ($api:ident as $wire:ident, $field:literal { $($variant:ident => $number:ident),+ $(,)? }) => {
        impl From<$api> for v1::$wire {
            fn from(value: $api) -> Self {
                match value {
                    $($api::$variant => Self::$number,)+
                }
            }
        }

        impl From<$api> for i32 {
            fn from(value: $api) -> Self {
                v1::$wire::from(value).into()
            }
        }

        impl WireEnum for $api {
            const FIELD: &'static str = $field;

            fn from_number(value: i32) -> Option<Self> {
                match v1::$wire::try_from(value) {
                    $(Ok(v1::$wire::$number) => Some($api::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

wire_enum!(Role as Role, "role" { Worker => Worker, Manager => Manager });
wire_enum!(TaskState as TaskState, "state" {
    New => New,
    Pending => Pending,
    Assigned => Assigned,
    Accepted => Accepted,
    Preparing => Preparing,
    Starting => Starting,
    Running => Running,
    Complete => Complete,
    Shutdown => Shutdown,
    Failed => Failed,
    Rejected => Rejected,
    Remove => Remove,
    Orphaned => Orphaned,
});
wire_enum!(Stream as LogStream, "stream" { Stdout => Stdout, Stderr => Stderr });
wire_enum!(PortProtocol as PortProtocol, "protocol" { Tcp => Tcp, Udp => Udp });
wire_enum!(PublishMode as PublishMode, "publish mode" { Ingress => Ingress, Host => Host });
wire_enum!(ClientIp as ClientIp, "client IP" { Snat => Snat, Preserve => Preserve });
wire_enum!(EndpointMode as EndpointMode, "endpoint mode" { Vip => Vip, Dnsrr => Dnsrr });
wire_enum!(DataKind as DataKind, "kind" { Secret => Secret, Config => Config });
wire_enum!(Availability as Availability, "availability" {
    Active => Active,
    Pause => Pause,
    Drain => Drain,
});

/// An Engine API document as the JSON a message carries it in.
pub fn engine_json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("the API's documents serialize")
}

/// The Engine API document `T` in `bytes`, the `field` of a `message`.
pub fn from_engine_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    message: &'static str,
    field: &'static str,
    document: &'static str,
) -> Result<T, WireError> {
    serde_json::from_slice(bytes).map_err(|e| WireError::Document {
        message,
        field,
        document,
        error: e.to_string(),
    })
}

impl From<Platform> for v1::Platform {
    fn from(platform: Platform) -> Self {
        Self {
            architecture: platform.architecture,
            os: platform.os,
        }
    }
}

impl From<v1::Platform> for Platform {
    fn from(platform: v1::Platform) -> Self {
        Self {
            architecture: platform.architecture,
            os: platform.os,
        }
    }
}

impl From<Resources> for v1::NodeResources {
    fn from(resources: Resources) -> Self {
        Self {
            nano_cpus: resources.nano_cpus,
            memory_bytes: resources.memory_bytes,
        }
    }
}

impl From<v1::NodeResources> for Resources {
    fn from(resources: v1::NodeResources) -> Self {
        Self {
            nano_cpus: resources.nano_cpus,
            memory_bytes: resources.memory_bytes,
            pids: 0,
        }
    }
}

impl From<NodeTlsInfo> for v1::NodeTlsInfo {
    fn from(info: NodeTlsInfo) -> Self {
        Self {
            trust_root: info.trust_root,
            cert_issuer_subject: info.cert_issuer_subject,
            cert_issuer_public_key: info.cert_issuer_public_key,
            cert_expiry: info.cert_expiry,
        }
    }
}

impl From<v1::NodeTlsInfo> for NodeTlsInfo {
    fn from(info: v1::NodeTlsInfo) -> Self {
        Self {
            trust_root: info.trust_root,
            cert_issuer_subject: info.cert_issuer_subject,
            cert_issuer_public_key: info.cert_issuer_public_key,
            cert_expiry: info.cert_expiry,
        }
    }
}

impl From<NodeDescription> for v1::NodeDescription {
    fn from(node: NodeDescription) -> Self {
        Self {
            hostname: node.hostname,
            platform: Some(node.platform.into()),
            resources: Some(node.resources.into()),
            data_path_addr: node.data_path_addr,
            data_path_port: node.data_path_port.into(),
            wireguard_public_key: node.wireguard_public_key,
            executor: node.executor,
            tls_info: Some(node.tls_info.into()),
            mesh_paths: node.mesh_paths.into_iter().collect(),
        }
    }
}

impl TryFrom<v1::NodeDescription> for NodeDescription {
    type Error = WireError;

    fn try_from(node: v1::NodeDescription) -> Result<Self, WireError> {
        const MESSAGE: &str = "node description";
        Ok(Self {
            hostname: node.hostname,
            platform: required(node.platform, MESSAGE, "platform")?.into(),
            resources: required(node.resources, MESSAGE, "resources")?.into(),
            data_path_addr: node.data_path_addr,
            data_path_port: port(node.data_path_port, MESSAGE, "data path port")?,
            wireguard_public_key: node.wireguard_public_key,
            executor: node.executor,
            tls_info: required(node.tls_info, MESSAGE, "TLS info")?.into(),
            mesh_paths: node.mesh_paths.into_iter().collect(),
        })
    }
}

impl From<ContainerStatus> for v1::ContainerStatus {
    fn from(status: ContainerStatus) -> Self {
        Self {
            container_id: status.container_id,
            pid: status.pid,
            exit_code: status.exit_code,
        }
    }
}

impl From<v1::ContainerStatus> for ContainerStatus {
    fn from(status: v1::ContainerStatus) -> Self {
        Self {
            container_id: status.container_id,
            pid: status.pid,
            exit_code: status.exit_code,
        }
    }
}

impl From<TaskStatus> for v1::TaskStatus {
    fn from(status: TaskStatus) -> Self {
        Self {
            timestamp: status.timestamp,
            state: status.state.into(),
            message: status.message,
            err: status.err,
            container_status: status.container_status.map(Into::into),
        }
    }
}

impl TryFrom<v1::TaskStatus> for TaskStatus {
    type Error = WireError;

    fn try_from(status: v1::TaskStatus) -> Result<Self, WireError> {
        Ok(Self {
            timestamp: status.timestamp,
            state: decode_enum(status.state, "task status")?,
            message: status.message,
            err: status.err,
            container_status: status.container_status.map(Into::into),
        })
    }
}

impl From<LogsQuery> for v1::LogsQuery {
    fn from(query: LogsQuery) -> Self {
        Self {
            target: query.target,
            follow: query.follow,
            tail: query.tail,
            since: query.since,
        }
    }
}

impl From<v1::LogsQuery> for LogsQuery {
    fn from(query: v1::LogsQuery) -> Self {
        Self {
            target: query.target,
            follow: query.follow,
            tail: query.tail,
            since: query.since,
        }
    }
}

impl From<LogLine> for v1::LogLine {
    fn from(line: LogLine) -> Self {
        Self {
            task_id: line.task_id,
            time: line.time,
            stream: line.stream.into(),
            text: line.text,
        }
    }
}

impl TryFrom<v1::LogLine> for LogLine {
    type Error = WireError;

    fn try_from(line: v1::LogLine) -> Result<Self, WireError> {
        Ok(Self {
            task_id: line.task_id,
            time: line.time,
            stream: decode_enum(line.stream, "log line")?,
            text: line.text,
        })
    }
}

/// Lines as their messages.
pub fn log_lines(lines: Vec<LogLine>) -> Vec<v1::LogLine> {
    lines.into_iter().map(Into::into).collect()
}

/// Messages as lines; the first that does not decode refuses them all.
pub fn from_log_lines(lines: Vec<v1::LogLine>) -> Result<Vec<LogLine>, WireError> {
    lines.into_iter().map(TryInto::try_into).collect()
}

impl From<LogBatch> for v1::LogBatch {
    fn from(batch: LogBatch) -> Self {
        Self {
            lines: log_lines(batch.lines),
            warnings: batch.warnings,
        }
    }
}

impl TryFrom<v1::LogBatch> for LogBatch {
    type Error = WireError;

    fn try_from(batch: v1::LogBatch) -> Result<Self, WireError> {
        Ok(Self {
            lines: from_log_lines(batch.lines)?,
            warnings: batch.warnings,
        })
    }
}

impl From<PortConfig> for v1::PortConfig {
    fn from(port: PortConfig) -> Self {
        Self {
            protocol: port.protocol.into(),
            target_port: port.target_port.into(),
            published_port: port.published_port.into(),
            publish_mode: port.publish_mode.into(),
            client_ip: port.client_ip.map(Into::into),
        }
    }
}

impl TryFrom<v1::PortConfig> for PortConfig {
    type Error = WireError;

    fn try_from(port: v1::PortConfig) -> Result<Self, WireError> {
        const MESSAGE: &str = "published port";
        Ok(Self {
            protocol: decode_enum(port.protocol, MESSAGE)?,
            target_port: self::port(port.target_port, MESSAGE, "target port")?,
            published_port: self::port(port.published_port, MESSAGE, "published port")?,
            publish_mode: decode_enum(port.publish_mode, MESSAGE)?,
            client_ip: port
                .client_ip
                .map(|mode| decode_enum(mode, MESSAGE))
                .transpose()?,
        })
    }
}

impl From<Payload> for v1::Payload {
    fn from(payload: Payload) -> Self {
        Self {
            kind: payload.kind.into(),
            id: payload.id,
            data: payload.data,
        }
    }
}

impl TryFrom<v1::Payload> for Payload {
    type Error = WireError;

    fn try_from(payload: v1::Payload) -> Result<Self, WireError> {
        Ok(Self {
            kind: decode_enum(payload.kind, "payload")?,
            id: payload.id,
            data: payload.data,
        })
    }
}

impl From<SwarmUpdateArgs> for v1::SwarmUpdate {
    fn from(args: SwarmUpdateArgs) -> Self {
        Self {
            dispatcher_heartbeat_s: args.dispatcher_heartbeat_s,
            snapshot_interval: args.snapshot_interval,
            cert_expiry_s: args.cert_expiry_s,
            task_history_limit: args.task_history_limit,
            autolock: args.autolock,
            ca_force_rotate: args.ca_force_rotate,
            version: args.version,
        }
    }
}

impl From<v1::SwarmUpdate> for SwarmUpdateArgs {
    fn from(args: v1::SwarmUpdate) -> Self {
        Self {
            dispatcher_heartbeat_s: args.dispatcher_heartbeat_s,
            snapshot_interval: args.snapshot_interval,
            cert_expiry_s: args.cert_expiry_s,
            task_history_limit: args.task_history_limit,
            autolock: args.autolock,
            ca_force_rotate: args.ca_force_rotate,
            version: args.version,
        }
    }
}

/// `node update` of node `id`.
fn node_update(id: String, update: NodeUpdate) -> v1::NodeUpdate {
    v1::NodeUpdate {
        id,
        availability: update.availability.map(Into::into),
        role: update.role.map(Into::into),
        label_add: update.label_add.into_iter().collect(),
        label_rm: update.label_rm,
        version: update.version,
    }
}

/// The node a `node update` is for, and the update.
fn from_node_update(update: v1::NodeUpdate) -> Result<(String, NodeUpdate), WireError> {
    const MESSAGE: &str = "node update";
    let decoded = NodeUpdate {
        availability: update
            .availability
            .map(|a| decode_enum(a, MESSAGE))
            .transpose()?,
        role: update.role.map(|r| decode_enum(r, MESSAGE)).transpose()?,
        label_add: update.label_add.into_iter().collect(),
        label_rm: update.label_rm,
        version: update.version,
    };
    Ok((update.id, decoded))
}

const NOTHING: v1::NoArguments = v1::NoArguments {};

impl From<ClusterCall> for v1::ClusterCall {
    fn from(call: ClusterCall) -> Self {
        use v1::cluster_call::Call as C;
        let call = match call {
            ClusterCall::Inspect => C::Inspect(NOTHING),
            ClusterCall::Update(args) => C::Update(args.into()),
            ClusterCall::Ca {
                rotate,
                cert_expiry_s,
            } => C::Ca(v1::CaRotation {
                rotate,
                cert_expiry_s,
            }),
            ClusterCall::UnlockKey { rotate } => C::UnlockKey(v1::Rotation { rotate }),
            ClusterCall::JoinToken { role, rotate } => C::JoinToken(v1::JoinTokenCall {
                role: role.into(),
                rotate,
            }),
            ClusterCall::NodeList => C::NodeList(NOTHING),
            ClusterCall::Traffic => C::Traffic(NOTHING),
            ClusterCall::NodeInspect { ids } => C::NodeInspect(v1::Ids { ids }),
            ClusterCall::NodeUpdate { id, update } => C::NodeUpdate(node_update(id, update)),
            ClusterCall::NodeRemove { ids, force } => C::NodeRemove(v1::NodeRemove { ids, force }),
            ClusterCall::Put { name, data } => C::Put(v1::ConfigPut { name, data }),
            ClusterCall::Get { name } => C::Get(v1::ConfigGet { name }),
        };
        Self { call: Some(call) }
    }
}

impl TryFrom<v1::ClusterCall> for ClusterCall {
    type Error = WireError;

    fn try_from(call: v1::ClusterCall) -> Result<Self, WireError> {
        use v1::cluster_call::Call as C;
        Ok(match required(call.call, "cluster call", "call")? {
            C::Inspect(_) => Self::Inspect,
            C::Update(args) => Self::Update(args.into()),
            C::Ca(ca) => Self::Ca {
                rotate: ca.rotate,
                cert_expiry_s: ca.cert_expiry_s,
            },
            C::UnlockKey(key) => Self::UnlockKey { rotate: key.rotate },
            C::JoinToken(token) => Self::JoinToken {
                role: decode_enum(token.role, "join-token call")?,
                rotate: token.rotate,
            },
            C::NodeList(_) => Self::NodeList,
            C::Traffic(_) => Self::Traffic,
            C::NodeInspect(ids) => Self::NodeInspect { ids: ids.ids },
            C::NodeUpdate(update) => {
                let (id, update) = from_node_update(update)?;
                Self::NodeUpdate { id, update }
            }
            C::NodeRemove(remove) => Self::NodeRemove {
                ids: remove.ids,
                force: remove.force,
            },
            C::Put(put) => Self::Put {
                name: put.name,
                data: put.data,
            },
            C::Get(get) => Self::Get { name: get.name },
        })
    }
}

impl From<ServiceCall> for v1::ServiceCall {
    fn from(call: ServiceCall) -> Self {
        use v1::service_call::Call as C;
        let call = match call {
            ServiceCall::Create(spec) => C::Create(engine_json(&spec)),
            ServiceCall::List => C::List(NOTHING),
            ServiceCall::Inspect { ids } => C::Inspect(v1::Ids { ids }),
            ServiceCall::Scale { id, replicas } => C::Scale(v1::Scale { id, replicas }),
            ServiceCall::Update { id, version, spec } => C::Update(v1::ServiceUpdate {
                id,
                version,
                spec: engine_json(&spec),
            }),
            ServiceCall::Rollback { id, version } => C::Rollback(v1::Rollback { id, version }),
            ServiceCall::Remove { ids } => C::Remove(v1::Ids { ids }),
            ServiceCall::Tasks(filter) => C::Tasks(v1::TaskFilter {
                services: filter.services,
                nodes: filter.nodes,
            }),
        };
        Self { call: Some(call) }
    }
}

impl TryFrom<v1::ServiceCall> for ServiceCall {
    type Error = WireError;

    fn try_from(call: v1::ServiceCall) -> Result<Self, WireError> {
        use v1::service_call::Call as C;
        const MESSAGE: &str = "service call";
        Ok(match required(call.call, MESSAGE, "call")? {
            C::Create(spec) => Self::Create(Box::new(from_engine_json(
                &spec,
                MESSAGE,
                "create",
                "ServiceSpec",
            )?)),
            C::List(_) => Self::List,
            C::Inspect(ids) => Self::Inspect { ids: ids.ids },
            C::Scale(scale) => Self::Scale {
                id: scale.id,
                replicas: scale.replicas,
            },
            C::Update(update) => Self::Update {
                id: update.id,
                version: update.version,
                spec: Box::new(from_engine_json(
                    &update.spec,
                    MESSAGE,
                    "update's spec",
                    "ServiceSpec",
                )?),
            },
            C::Rollback(rollback) => Self::Rollback {
                id: rollback.id,
                version: rollback.version,
            },
            C::Remove(ids) => Self::Remove { ids: ids.ids },
            C::Tasks(filter) => Self::Tasks(TaskFilter {
                services: filter.services,
                nodes: filter.nodes,
            }),
        })
    }
}

impl From<NetworkCall> for v1::NetworkCall {
    fn from(call: NetworkCall) -> Self {
        use v1::network_call::Call as C;
        let call = match call {
            NetworkCall::Create(spec) => C::Create(engine_json(&spec)),
            NetworkCall::List => C::List(NOTHING),
            NetworkCall::Inspect { ids } => C::Inspect(v1::Ids { ids }),
            NetworkCall::Remove { ids } => C::Remove(v1::Ids { ids }),
        };
        Self { call: Some(call) }
    }
}

impl TryFrom<v1::NetworkCall> for NetworkCall {
    type Error = WireError;

    fn try_from(call: v1::NetworkCall) -> Result<Self, WireError> {
        use v1::network_call::Call as C;
        const MESSAGE: &str = "network call";
        Ok(match required(call.call, MESSAGE, "call")? {
            C::Create(spec) => Self::Create(from_engine_json(
                &spec,
                MESSAGE,
                "create",
                "NetworkCreateRequest",
            )?),
            C::List(_) => Self::List,
            C::Inspect(ids) => Self::Inspect { ids: ids.ids },
            C::Remove(ids) => Self::Remove { ids: ids.ids },
        })
    }
}

impl From<DataCall> for v1::DataCall {
    fn from(call: DataCall) -> Self {
        use v1::data_call::Call as C;
        let (kind, call) = match call {
            DataCall::Create { kind, spec } => (kind, C::Create(engine_json(&spec))),
            DataCall::List { kind } => (kind, C::List(NOTHING)),
            DataCall::Inspect { kind, ids } => (kind, C::Inspect(v1::Ids { ids })),
            DataCall::Update {
                kind,
                id,
                version,
                spec,
            } => (
                kind,
                C::Update(v1::DataUpdate {
                    id,
                    version,
                    spec: engine_json(&spec),
                }),
            ),
            DataCall::Remove { kind, ids } => (kind, C::Remove(v1::Ids { ids })),
        };
        Self {
            kind: kind.into(),
            call: Some(call),
        }
    }
}

impl TryFrom<v1::DataCall> for DataCall {
    type Error = WireError;

    fn try_from(call: v1::DataCall) -> Result<Self, WireError> {
        use v1::data_call::Call as C;
        const MESSAGE: &str = "secret or config call";
        let kind = decode_enum(call.kind, MESSAGE)?;
        let spec =
            |json: &[u8], field| from_engine_json(json, MESSAGE, field, "SecretSpec or ConfigSpec");
        Ok(match required(call.call, MESSAGE, "call")? {
            C::Create(json) => Self::Create {
                kind,
                spec: spec(&json, "create")?,
            },
            C::List(_) => Self::List { kind },
            C::Inspect(ids) => Self::Inspect { kind, ids: ids.ids },
            C::Update(update) => Self::Update {
                kind,
                id: update.id,
                version: update.version,
                spec: spec(&update.spec, "update's spec")?,
            },
            C::Remove(ids) => Self::Remove { kind, ids: ids.ids },
        })
    }
}

impl From<ManagerCall> for v1::user_call::Call {
    fn from(call: ManagerCall) -> Self {
        match call {
            ManagerCall::Cluster(call) => Self::Cluster(call.into()),
            ManagerCall::Service(call) => Self::Service(call.into()),
            ManagerCall::Network(call) => Self::Network(call.into()),
            ManagerCall::Data(call) => Self::Data(call.into()),
        }
    }
}

impl TryFrom<v1::user_call::Call> for ManagerCall {
    type Error = WireError;

    fn try_from(call: v1::user_call::Call) -> Result<Self, WireError> {
        use v1::user_call::Call as C;
        Ok(match call {
            C::Cluster(call) => Self::Cluster(call.try_into()?),
            C::Service(call) => Self::Service(call.try_into()?),
            C::Network(call) => Self::Network(call.try_into()?),
            C::Data(call) => Self::Data(call.try_into()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every field survives the trip, and every task state maps to its own number.
    #[test]
    fn node_descriptions_and_task_statuses_round_trip() {
        let node = NodeDescription {
            hostname: "n1".into(),
            platform: Platform {
                architecture: "x86_64".into(),
                os: "linux".into(),
            },
            resources: Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
                pids: 0,
            },
            data_path_addr: "10.1.0.1".into(),
            data_path_port: 4789,
            wireguard_public_key: "key".into(),
            executor: "exec".into(),
            tls_info: NodeTlsInfo {
                trust_root: "root".into(),
                cert_issuer_subject: "subject".into(),
                cert_issuer_public_key: "public".into(),
                cert_expiry: "2027-03-01T00:00:00Z".into(),
            },
            mesh_paths: BTreeMap::from([("eth0".into(), "in: xdp+tc".into())]),
        };
        let back = NodeDescription::try_from(v1::NodeDescription::from(node.clone()));
        assert_eq!(back, Ok(node));
        let states = [
            TaskState::New,
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Accepted,
            TaskState::Preparing,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Complete,
            TaskState::Shutdown,
            TaskState::Failed,
            TaskState::Rejected,
            TaskState::Remove,
            TaskState::Orphaned,
        ];
        for state in states {
            let status = TaskStatus {
                timestamp: "2026-12-01T00:00:00Z".into(),
                state,
                message: "started".into(),
                err: String::new(),
                container_status: Some(ContainerStatus {
                    container_id: String::new(),
                    pid: 42,
                    exit_code: Some(1),
                }),
            };
            let back = TaskStatus::try_from(v1::TaskStatus::from(status.clone()));
            assert_eq!(back, Ok(status));
        }
        let batch = LogBatch {
            lines: vec![LogLine {
                task_id: "task".into(),
                time: "2026-12-01T00:00:00.000000001Z".into(),
                stream: Stream::Stderr,
                text: "hello".into(),
            }],
            warnings: vec!["node n3 is down".into()],
        };
        assert_eq!(
            LogBatch::try_from(v1::LogBatch::from(batch.clone())),
            Ok(batch)
        );
        let query = LogsQuery {
            target: "web".into(),
            follow: true,
            tail: Some(10),
            since: None,
        };
        assert_eq!(LogsQuery::from(v1::LogsQuery::from(query.clone())), query);
    }

    /// Every call a manager forwards survives the trip, field for field.
    #[test]
    fn every_manager_call_round_trips() {
        use crate::{
            call::{ClusterCall, DataCall, ManagerCall, NetworkCall, ServiceCall},
            secret::DataSpec,
            service::{NetworkSpec, ServiceSpec, TaskFilter},
            swarm::{Availability, NodeUpdate, SwarmUpdateArgs},
        };
        let spec = || {
            Box::new(ServiceSpec {
                name: "web".into(),
                ..ServiceSpec::default()
            })
        };
        let data = DataSpec {
            name: "key".into(),
            data: Some("aGVsbG8=".into()),
            ..DataSpec::default()
        };
        let ids = || vec!["a".to_owned(), "b".to_owned()];
        let calls: Vec<ManagerCall> = vec![
            ClusterCall::Inspect.into(),
            ClusterCall::Update(SwarmUpdateArgs {
                dispatcher_heartbeat_s: Some(5),
                snapshot_interval: None,
                cert_expiry_s: Some(3600),
                task_history_limit: Some(2),
                autolock: Some(false),
                ca_force_rotate: Some(1),
                version: Some(9),
            })
            .into(),
            ClusterCall::Ca {
                rotate: true,
                cert_expiry_s: Some(60),
            }
            .into(),
            ClusterCall::UnlockKey { rotate: true }.into(),
            ClusterCall::JoinToken {
                role: Role::Manager,
                rotate: false,
            }
            .into(),
            ClusterCall::NodeList.into(),
            ClusterCall::Traffic.into(),
            ClusterCall::NodeInspect { ids: ids() }.into(),
            ClusterCall::NodeUpdate {
                id: "n1".into(),
                update: NodeUpdate {
                    availability: Some(Availability::Drain),
                    role: Some(Role::Worker),
                    label_add: [("zone".to_owned(), "a".to_owned())].into(),
                    label_rm: vec!["old".into()],
                    version: Some(3),
                },
            }
            .into(),
            ClusterCall::NodeRemove {
                ids: ids(),
                force: true,
            }
            .into(),
            ClusterCall::Put {
                name: "k".into(),
                data: "v".into(),
            }
            .into(),
            ClusterCall::Get { name: "k".into() }.into(),
            ServiceCall::Create(spec()).into(),
            ServiceCall::List.into(),
            ServiceCall::Inspect { ids: ids() }.into(),
            ServiceCall::Scale {
                id: "web".into(),
                replicas: 3,
            }
            .into(),
            ServiceCall::Update {
                id: "web".into(),
                version: 4,
                spec: spec(),
            }
            .into(),
            ServiceCall::Rollback {
                id: "web".into(),
                version: Some(5),
            }
            .into(),
            ServiceCall::Remove { ids: ids() }.into(),
            ServiceCall::Tasks(TaskFilter {
                services: vec!["web".into()],
                nodes: vec!["n1".into()],
            })
            .into(),
            NetworkCall::Create(NetworkSpec {
                name: "front".into(),
                ..NetworkSpec::default()
            })
            .into(),
            NetworkCall::List.into(),
            NetworkCall::Inspect { ids: ids() }.into(),
            NetworkCall::Remove { ids: ids() }.into(),
            DataCall::Create {
                kind: DataKind::Secret,
                spec: data.clone(),
            }
            .into(),
            DataCall::List {
                kind: DataKind::Config,
            }
            .into(),
            DataCall::Inspect {
                kind: DataKind::Secret,
                ids: ids(),
            }
            .into(),
            DataCall::Update {
                kind: DataKind::Config,
                id: "c".into(),
                version: 2,
                spec: data,
            }
            .into(),
            DataCall::Remove {
                kind: DataKind::Secret,
                ids: ids(),
            }
            .into(),
        ];
        assert_eq!(calls.len(), 29);
        for call in calls {
            let back = ManagerCall::try_from(v1::user_call::Call::from(call.clone()));
            assert_eq!(back, Ok(call));
        }
        let e = ServiceCall::try_from(v1::ServiceCall {
            call: Some(v1::service_call::Call::Create(b"{".to_vec())),
        })
        .expect_err("not a spec");
        assert!(
            e.to_string()
                .starts_with("the service call's create is not a ServiceSpec of the Engine API"),
            "{e}"
        );
    }

    /// What a receiver cannot act on is refused with the field's name.
    #[test]
    fn missing_fields_unknown_enums_and_wide_ports_are_refused() {
        let mut node = v1::NodeDescription::from(NodeDescription::default());
        node.platform = None;
        let e = NodeDescription::try_from(node).expect_err("no platform");
        assert_eq!(e.to_string(), "the node description has no platform");
        let mut node = v1::NodeDescription::from(NodeDescription::default());
        node.data_path_port = 70_000;
        let e = NodeDescription::try_from(node).expect_err("not a port");
        assert_eq!(
            e.to_string(),
            "the node description's data path port is 70000, not a port"
        );
        let status = v1::TaskStatus {
            state: 99,
            ..Default::default()
        };
        let e = TaskStatus::try_from(status).expect_err("an unknown state");
        assert_eq!(
            e.to_string(),
            "the task status's state is 99, not one this version knows"
        );
        let line = v1::LogLine::default();
        let e = LogLine::try_from(line).expect_err("no stream");
        assert_eq!(
            e.to_string(),
            "the log line's stream is 0, not one this version knows"
        );
        assert!(decode_enum::<Role>(0, "renewal").is_err());
        assert_eq!(decode_enum(2, "renewal"), Ok(Role::Manager));
        let port = v1::PortConfig {
            protocol: 1,
            target_port: 80,
            published_port: 8080,
            publish_mode: 1,
            client_ip: Some(0),
        };
        let e = PortConfig::try_from(port).expect_err("client IP zero");
        assert_eq!(
            e.to_string(),
            "the published port's client IP is 0, not one this version knows"
        );
    }
}
