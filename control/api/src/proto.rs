//! The API's types as the [`v1`] protobuf messages between nodes, and back. Encoding cannot
//! fail; decoding checks what proto3 cannot say: that a message a field needs is there, that an
//! enum is one this version knows, that a port fits in 16 bits.

use crate::{
    logs::{LogBatch, LogLine, LogsQuery, Stream},
    service::{ContainerStatus, TaskState, TaskStatus},
    swarm::{NodeDescription, NodeTlsInfo, Platform, Resources, Role},
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

impl From<Role> for v1::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Worker => Self::Worker,
            Role::Manager => Self::Manager,
        }
    }
}

/// The role a `message` carries in its `role` field.
pub fn role(value: i32, message: &'static str) -> Result<Role, WireError> {
    match v1::Role::try_from(value) {
        Ok(v1::Role::Worker) => Ok(Role::Worker),
        Ok(v1::Role::Manager) => Ok(Role::Manager),
        Ok(v1::Role::Unspecified) | Err(_) => Err(WireError::Unknown {
            message,
            field: "role",
            value,
        }),
    }
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

/// Both ways between the API's task states and the protobuf's.
const TASK_STATES: [(TaskState, v1::TaskState); 13] = [
    (TaskState::New, v1::TaskState::New),
    (TaskState::Pending, v1::TaskState::Pending),
    (TaskState::Assigned, v1::TaskState::Assigned),
    (TaskState::Accepted, v1::TaskState::Accepted),
    (TaskState::Preparing, v1::TaskState::Preparing),
    (TaskState::Starting, v1::TaskState::Starting),
    (TaskState::Running, v1::TaskState::Running),
    (TaskState::Complete, v1::TaskState::Complete),
    (TaskState::Shutdown, v1::TaskState::Shutdown),
    (TaskState::Failed, v1::TaskState::Failed),
    (TaskState::Rejected, v1::TaskState::Rejected),
    (TaskState::Remove, v1::TaskState::Remove),
    (TaskState::Orphaned, v1::TaskState::Orphaned),
];

impl From<TaskState> for v1::TaskState {
    fn from(state: TaskState) -> Self {
        match state {
            TaskState::New => Self::New,
            TaskState::Pending => Self::Pending,
            TaskState::Assigned => Self::Assigned,
            TaskState::Accepted => Self::Accepted,
            TaskState::Preparing => Self::Preparing,
            TaskState::Starting => Self::Starting,
            TaskState::Running => Self::Running,
            TaskState::Complete => Self::Complete,
            TaskState::Shutdown => Self::Shutdown,
            TaskState::Failed => Self::Failed,
            TaskState::Rejected => Self::Rejected,
            TaskState::Remove => Self::Remove,
            TaskState::Orphaned => Self::Orphaned,
        }
    }
}

/// The task state a `message` carries in its `state` field.
pub fn task_state(value: i32, message: &'static str) -> Result<TaskState, WireError> {
    TASK_STATES
        .iter()
        .find(|(_, wire)| *wire as i32 == value)
        .map(|(state, _)| *state)
        .ok_or(WireError::Unknown {
            message,
            field: "state",
            value,
        })
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
            state: v1::TaskState::from(status.state).into(),
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
            state: task_state(status.state, "task status")?,
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
        let stream = match line.stream {
            Stream::Stdout => v1::LogStream::Stdout,
            Stream::Stderr => v1::LogStream::Stderr,
        };
        Self {
            task_id: line.task_id,
            time: line.time,
            stream: stream.into(),
            text: line.text,
        }
    }
}

impl TryFrom<v1::LogLine> for LogLine {
    type Error = WireError;

    fn try_from(line: v1::LogLine) -> Result<Self, WireError> {
        let stream = match v1::LogStream::try_from(line.stream) {
            Ok(v1::LogStream::Stdout) => Stream::Stdout,
            Ok(v1::LogStream::Stderr) => Stream::Stderr,
            Ok(v1::LogStream::Unspecified) | Err(_) => {
                return Err(WireError::Unknown {
                    message: "log line",
                    field: "stream",
                    value: line.stream,
                });
            }
        };
        Ok(Self {
            task_id: line.task_id,
            time: line.time,
            stream,
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
        for (state, _) in TASK_STATES {
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
        assert!(role(0, "renewal").is_err());
        assert_eq!(role(2, "renewal"), Ok(Role::Manager));
    }
}
