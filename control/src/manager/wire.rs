//! The managers' messages that are typed on the wire, as their `v1` protobuf messages and back:
//! the CA's join and renewal, the dispatcher's heartbeat and task reports ([`super::protocol`]),
//! a node's assignment ([`crate::dispatcher`]), a node's log session ([`super::logs`]), and what
//! a manager forwards to the leader ([`Forwarded`]). The API's own types convert in
//! [`shoal_api::proto`]; this adds the envelopes.

use shoal_api::{
    proto::{self, WireError, required},
    v1,
};
use tonic::Status;

use super::{
    super::dispatcher::{Assignment, MeshService, ReachableService},
    logs::{FromNode, ToNode},
    protocol::{
        Forwarded, Heartbeat, HeartbeatReply, JoinReply, JoinRequest, MeshCounters, Op, RenewReply,
        StatusReport,
    },
};
use crate::ca::NodeIdentity;

/// A request that does not decode: the caller's error.
pub fn refused(e: WireError) -> Status {
    Status::invalid_argument(format!("decoding the request: {e}"))
}

/// A manager's answer that does not decode.
pub fn unreadable(e: WireError) -> Status {
    Status::internal(format!("decoding the manager's answer: {e}"))
}

/// A call's answer as it travels.
pub fn call_answer(answer: &serde_json::Value) -> v1::CallAnswer {
    v1::CallAnswer {
        json: proto::engine_json(answer),
    }
}

/// A call's answer as it came back.
pub fn answer_value(answer: v1::CallAnswer) -> Result<serde_json::Value, Status> {
    serde_json::from_slice(&answer.json)
        .map_err(|e| Status::internal(format!("decoding the leader's answer: {e}")))
}

impl From<JoinRequest> for v1::JoinRequest {
    fn from(join: JoinRequest) -> Self {
        Self {
            token: join.token,
            csr: join.csr,
            description: Some(join.description.into()),
            advertise_addr: join.advertise_addr,
        }
    }
}

impl TryFrom<v1::JoinRequest> for JoinRequest {
    type Error = WireError;

    fn try_from(join: v1::JoinRequest) -> Result<Self, WireError> {
        Ok(Self {
            token: join.token,
            csr: join.csr,
            description: required(join.description, "join request", "node description")?
                .try_into()?,
            advertise_addr: join.advertise_addr,
        })
    }
}

impl From<JoinReply> for v1::JoinReply {
    fn from(reply: JoinReply) -> Self {
        Self {
            node_id: reply.node_id,
            cluster_id: reply.cluster_id,
            role: reply.role.into(),
            cert_pem: reply.cert_pem,
            ca_pem: reply.ca_pem,
            managers: reply.managers,
            heartbeat_ms: reply.heartbeat_ms,
            data_path_port: reply.data_path_port.into(),
        }
    }
}

impl TryFrom<v1::JoinReply> for JoinReply {
    type Error = WireError;

    fn try_from(reply: v1::JoinReply) -> Result<Self, WireError> {
        Ok(Self {
            node_id: reply.node_id,
            cluster_id: reply.cluster_id,
            role: proto::decode_enum(reply.role, "join reply")?,
            cert_pem: reply.cert_pem,
            ca_pem: reply.ca_pem,
            managers: reply.managers,
            heartbeat_ms: reply.heartbeat_ms,
            data_path_port: proto::port(reply.data_path_port, "join reply", "data path port")?,
        })
    }
}

impl From<RenewReply> for v1::RenewReply {
    fn from(reply: RenewReply) -> Self {
        Self {
            cert_pem: reply.cert_pem,
            role: reply.role.into(),
        }
    }
}

impl TryFrom<v1::RenewReply> for RenewReply {
    type Error = WireError;

    fn try_from(reply: v1::RenewReply) -> Result<Self, WireError> {
        Ok(Self {
            cert_pem: reply.cert_pem,
            role: proto::decode_enum(reply.role, "renewal's answer")?,
        })
    }
}

impl From<MeshCounters> for v1::MeshCounters {
    fn from(counters: MeshCounters) -> Self {
        Self {
            connections: counters.connections,
            packets: counters.packets,
            bytes: counters.bytes,
        }
    }
}

impl From<v1::MeshCounters> for MeshCounters {
    fn from(counters: v1::MeshCounters) -> Self {
        Self {
            connections: counters.connections,
            packets: counters.packets,
            bytes: counters.bytes,
        }
    }
}

impl From<Heartbeat> for v1::Heartbeat {
    fn from(heartbeat: Heartbeat) -> Self {
        Self {
            description: Some(heartbeat.description.into()),
            mesh: heartbeat
                .mesh
                .into_iter()
                .map(|(service, counters)| (service, counters.into()))
                .collect(),
        }
    }
}

impl TryFrom<v1::Heartbeat> for Heartbeat {
    type Error = WireError;

    fn try_from(heartbeat: v1::Heartbeat) -> Result<Self, WireError> {
        Ok(Self {
            description: required(heartbeat.description, "heartbeat", "node description")?
                .try_into()?,
            mesh: heartbeat
                .mesh
                .into_iter()
                .map(|(service, counters)| (service, counters.into()))
                .collect(),
        })
    }
}

impl From<HeartbeatReply> for v1::HeartbeatReply {
    fn from(reply: HeartbeatReply) -> Self {
        Self {
            period_ms: reply.period_ms,
            role: reply.role.into(),
            managers: reply.managers,
            trust_root: reply.trust_root,
            issuer_public_key: reply.issuer_public_key,
        }
    }
}

impl TryFrom<v1::HeartbeatReply> for HeartbeatReply {
    type Error = WireError;

    fn try_from(reply: v1::HeartbeatReply) -> Result<Self, WireError> {
        Ok(Self {
            period_ms: reply.period_ms,
            role: proto::decode_enum(reply.role, "heartbeat's answer")?,
            managers: reply.managers,
            trust_root: reply.trust_root,
            issuer_public_key: reply.issuer_public_key,
        })
    }
}

impl From<StatusReport> for v1::StatusReport {
    fn from(report: StatusReport) -> Self {
        Self {
            updates: report
                .updates
                .into_iter()
                .map(|(task_id, status)| v1::TaskUpdate {
                    task_id,
                    status: Some(status.into()),
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::StatusReport> for StatusReport {
    type Error = WireError;

    fn try_from(report: v1::StatusReport) -> Result<Self, WireError> {
        let updates = report
            .updates
            .into_iter()
            .map(|update| {
                let status = required(update.status, "task update", "status")?;
                Ok((update.task_id, status.try_into()?))
            })
            .collect::<Result<_, WireError>>()?;
        Ok(Self { updates })
    }
}

impl From<MeshService> for v1::MeshService {
    fn from(service: MeshService) -> Self {
        Self {
            name: service.name,
            ports: service.ports.into_iter().map(Into::into).collect(),
            backends: service.backends,
        }
    }
}

impl TryFrom<v1::MeshService> for MeshService {
    type Error = WireError;

    fn try_from(service: v1::MeshService) -> Result<Self, WireError> {
        Ok(Self {
            name: service.name,
            ports: decode_all(service.ports)?,
            backends: service.backends,
        })
    }
}

impl From<ReachableService> for v1::ReachableService {
    fn from(service: ReachableService) -> Self {
        Self {
            id: service.id,
            name: service.name,
            endpoint_mode: service.endpoint_mode.into(),
            networks: service.networks,
            tasks: service.tasks,
        }
    }
}

impl TryFrom<v1::ReachableService> for ReachableService {
    type Error = WireError;

    fn try_from(service: v1::ReachableService) -> Result<Self, WireError> {
        Ok(Self {
            id: service.id,
            name: service.name,
            endpoint_mode: proto::decode_enum(service.endpoint_mode, "reachable service")?,
            networks: service.networks,
            tasks: service.tasks,
        })
    }
}

/// Every message of `items` decoded; the first that does not refuses them all.
fn decode_all<M, T: TryFrom<M, Error = WireError>>(items: Vec<M>) -> Result<Vec<T>, WireError> {
    items.into_iter().map(T::try_from).collect()
}

impl From<Assignment> for v1::Assignment {
    fn from(a: Assignment) -> Self {
        Self {
            index: a.index,
            node_id: a.node_id,
            data_path_port: a.data_path_port.into(),
            tasks: a.tasks.iter().map(proto::engine_json).collect(),
            networks: a.networks.iter().map(proto::engine_json).collect(),
            ingress_addr: a.ingress_addr,
            endpoints: a.endpoints,
            peers: a.peers,
            mesh: a.mesh.into_iter().map(Into::into).collect(),
            services: a.services.into_iter().map(Into::into).collect(),
            payloads: a.payloads.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<v1::Assignment> for Assignment {
    type Error = WireError;

    fn try_from(a: v1::Assignment) -> Result<Self, WireError> {
        const MESSAGE: &str = "assignment";
        fn documents<T: serde::de::DeserializeOwned>(
            items: &[Vec<u8>],
            field: &'static str,
            document: &'static str,
        ) -> Result<Vec<T>, WireError> {
            items
                .iter()
                .map(|json| proto::from_engine_json(json, MESSAGE, field, document))
                .collect()
        }
        Ok(Self {
            index: a.index,
            node_id: a.node_id,
            data_path_port: proto::port(a.data_path_port, MESSAGE, "data path port")?,
            tasks: documents(&a.tasks, "tasks", "Task")?,
            networks: documents(&a.networks, "networks", "Network")?,
            ingress_addr: a.ingress_addr,
            endpoints: a.endpoints,
            peers: a.peers,
            mesh: decode_all(a.mesh)?,
            services: decode_all(a.services)?,
            payloads: decode_all(a.payloads)?,
        })
    }
}

impl From<NodeIdentity> for v1::NodeIdentity {
    fn from(identity: NodeIdentity) -> Self {
        Self {
            node_id: identity.node_id,
            role: identity.role.into(),
            cluster_id: identity.cluster_id,
        }
    }
}

impl TryFrom<v1::NodeIdentity> for NodeIdentity {
    type Error = WireError;

    fn try_from(identity: v1::NodeIdentity) -> Result<Self, WireError> {
        Ok(Self {
            node_id: identity.node_id,
            role: proto::decode_enum(identity.role, "caller")?,
            cluster_id: identity.cluster_id,
        })
    }
}

impl From<Op> for v1::forwarded::Op {
    fn from(op: Op) -> Self {
        match op {
            Op::User { call, node_id } => Self::User(v1::UserCall {
                node_id,
                call: Some(call.into()),
            }),
            Op::Join(join) => Self::Join(join.into()),
            Op::Renew { csr } => Self::Renew(v1::RenewRequest { csr }),
            Op::Heartbeat(heartbeat) => Self::Heartbeat(heartbeat.into()),
            Op::Report(report) => Self::Report(report.into()),
            Op::AddManager { raft_id, addr } => Self::AddManager(v1::AddManager { raft_id, addr }),
        }
    }
}

impl TryFrom<v1::forwarded::Op> for Op {
    type Error = WireError;

    fn try_from(op: v1::forwarded::Op) -> Result<Self, WireError> {
        use v1::forwarded::Op as W;
        Ok(match op {
            W::User(user) => Op::User {
                call: required(user.call, "user call", "call")?.try_into()?,
                node_id: user.node_id,
            },
            W::Join(join) => Op::Join(join.try_into()?),
            W::Renew(renew) => Op::Renew { csr: renew.csr },
            W::Heartbeat(heartbeat) => Op::Heartbeat(heartbeat.try_into()?),
            W::Report(report) => Op::Report(report.try_into()?),
            W::AddManager(add) => Op::AddManager {
                raft_id: add.raft_id,
                addr: add.addr,
            },
        })
    }
}

impl From<Forwarded> for v1::Forwarded {
    fn from(forwarded: Forwarded) -> Self {
        Self {
            op: Some(forwarded.op.into()),
            caller: forwarded.caller.map(Into::into),
            from: forwarded.from,
            hops: forwarded.hops.into(),
        }
    }
}

impl TryFrom<v1::Forwarded> for Forwarded {
    type Error = WireError;

    fn try_from(forwarded: v1::Forwarded) -> Result<Self, WireError> {
        Ok(Self {
            op: required(forwarded.op, "forwarded call", "op")?.try_into()?,
            caller: forwarded.caller.map(TryInto::try_into).transpose()?,
            from: forwarded.from,
            // A count this large is a loop; the manager refuses it past two.
            hops: u8::try_from(forwarded.hops).unwrap_or(u8::MAX),
        })
    }
}

impl From<ToNode> for v1::NodeLogRequest {
    fn from(ask: ToNode) -> Self {
        let ask = match ask {
            ToNode::Subscribe { id, tasks, query } => {
                v1::node_log_request::Ask::Subscribe(v1::LogSubscription {
                    id,
                    task_ids: tasks,
                    query: Some(query.into()),
                })
            }
            ToNode::Cancel { id } => v1::node_log_request::Ask::Cancel(v1::LogCancel { id }),
        };
        Self { ask: Some(ask) }
    }
}

impl TryFrom<v1::NodeLogRequest> for ToNode {
    type Error = WireError;

    fn try_from(request: v1::NodeLogRequest) -> Result<Self, WireError> {
        Ok(match required(request.ask, "log request", "ask")? {
            v1::node_log_request::Ask::Subscribe(subscription) => ToNode::Subscribe {
                id: subscription.id,
                tasks: subscription.task_ids,
                query: required(subscription.query, "log subscription", "query")?.into(),
            },
            v1::node_log_request::Ask::Cancel(cancel) => ToNode::Cancel { id: cancel.id },
        })
    }
}

impl From<FromNode> for v1::NodeLogReply {
    fn from(reply: FromNode) -> Self {
        Self {
            id: reply.id,
            lines: proto::log_lines(reply.lines),
            warnings: reply.warnings,
            done: reply.done,
        }
    }
}

impl TryFrom<v1::NodeLogReply> for FromNode {
    type Error = WireError;

    fn try_from(reply: v1::NodeLogReply) -> Result<Self, WireError> {
        Ok(Self {
            id: reply.id,
            lines: proto::from_log_lines(reply.lines)?,
            warnings: reply.warnings,
            done: reply.done,
        })
    }
}

#[cfg(test)]
mod tests {
    use shoal_api::{
        service::{TaskState, TaskStatus},
        swarm::{NodeDescription, Role},
    };

    use super::*;

    /// The CA's and the dispatcher's messages survive the trip, field for field.
    #[test]
    fn join_heartbeat_and_report_messages_round_trip() {
        let description = NodeDescription {
            hostname: "n2".into(),
            data_path_addr: "10.1.0.2".into(),
            ..NodeDescription::default()
        };
        let join = JoinRequest {
            token: "SWMTKN-1-x-y".into(),
            csr: "csr".into(),
            description: description.clone(),
            advertise_addr: "10.0.0.2:2377".into(),
        };
        let back = JoinRequest::try_from(v1::JoinRequest::from(join.clone())).expect("decodes");
        assert_eq!(
            serde_json::to_value(back).ok(),
            serde_json::to_value(join).ok()
        );
        let reply = JoinReply {
            node_id: "node".into(),
            cluster_id: "cluster".into(),
            role: Role::Manager,
            cert_pem: "cert".into(),
            ca_pem: "ca".into(),
            managers: vec!["10.0.0.1:2377".into()],
            heartbeat_ms: 5000,
            data_path_port: 4789,
        };
        let back = JoinReply::try_from(v1::JoinReply::from(reply.clone())).expect("decodes");
        assert_eq!(
            serde_json::to_value(back).ok(),
            serde_json::to_value(reply).ok()
        );
        let heartbeat = Heartbeat {
            description,
            mesh: [(
                "web".to_owned(),
                MeshCounters {
                    connections: 1,
                    packets: 2,
                    bytes: 3,
                },
            )]
            .into(),
        };
        let back = Heartbeat::try_from(v1::Heartbeat::from(heartbeat.clone())).expect("decodes");
        assert_eq!(
            serde_json::to_value(back).ok(),
            serde_json::to_value(heartbeat).ok()
        );
        let answer = HeartbeatReply {
            period_ms: 5000,
            role: Role::Worker,
            managers: vec!["10.0.0.1:2377".into()],
            trust_root: Some("root".into()),
            issuer_public_key: "key".into(),
        };
        let back = HeartbeatReply::try_from(v1::HeartbeatReply::from(answer.clone()));
        assert_eq!(
            serde_json::to_value(back.expect("decodes")).ok(),
            serde_json::to_value(answer).ok()
        );
        let report = StatusReport {
            updates: vec![(
                "task".into(),
                TaskStatus {
                    timestamp: "2026-12-01T00:00:00Z".into(),
                    state: TaskState::Running,
                    ..TaskStatus::default()
                },
            )],
        };
        let back = StatusReport::try_from(v1::StatusReport::from(report.clone())).expect("decodes");
        assert_eq!(
            serde_json::to_value(back).ok(),
            serde_json::to_value(report).ok()
        );
    }

    /// An assignment survives the trip whole: its Engine API documents as their JSON, the rest
    /// field for field. A task that is not one is refused, naming the field.
    #[test]
    fn an_assignment_round_trips_and_a_task_that_is_not_one_is_refused() {
        use shoal_api::{
            secret::{DataKind, Payload},
            service::{
                ClientIp, EndpointMode, Network, PortConfig, PortProtocol, PublishMode, Task,
            },
        };
        let assignment = Assignment {
            index: 42,
            node_id: "n1".into(),
            data_path_port: 4789,
            tasks: vec![Task {
                id: "task".into(),
                node_id: "n1".into(),
                ..Task::default()
            }],
            networks: vec![Network {
                id: "net".into(),
                ..Network::default()
            }],
            ingress_addr: Some("10.0.0.3/24".into()),
            endpoints: vec![v1::RemoteEndpoint {
                network_id: "net".into(),
                ip: "10.0.1.5".into(),
                node_id: "n2".into(),
            }],
            peers: vec![v1::PeerNode {
                node_id: "n2".into(),
                data_path_addr: "10.1.0.2".into(),
                public_key: Some("key".into()),
            }],
            mesh: vec![MeshService {
                name: "web".into(),
                ports: vec![PortConfig {
                    protocol: PortProtocol::Udp,
                    target_port: 80,
                    published_port: 8080,
                    publish_mode: PublishMode::Ingress,
                    client_ip: Some(ClientIp::Preserve),
                }],
                backends: vec![v1::MeshBackend {
                    task_id: "task".into(),
                    node_id: "n1".into(),
                    ip: "10.0.0.7".into(),
                    draining: true,
                }],
            }],
            services: vec![ReachableService {
                id: "svc".into(),
                name: "api".into(),
                endpoint_mode: EndpointMode::Dnsrr,
                networks: vec![v1::ServiceOnNetwork {
                    network_id: "net".into(),
                    vip: None,
                    aliases: vec!["backend".into()],
                }],
                tasks: vec![v1::ReachableTask {
                    task_id: "t2".into(),
                    slot: 2,
                    node_id: "n2".into(),
                    network_id: "net".into(),
                    ip: "10.0.1.5".into(),
                }],
            }],
            payloads: vec![Payload {
                kind: DataKind::Config,
                id: "cfg".into(),
                data: "aGVsbG8=".into(),
            }],
        };
        let back = Assignment::try_from(v1::Assignment::from(assignment.clone()));
        assert_eq!(back, Ok(assignment.clone()));
        let mut message = v1::Assignment::from(assignment);
        message.tasks[0] = b"[]".to_vec();
        let e = Assignment::try_from(message).expect_err("not a task");
        assert!(
            e.to_string()
                .starts_with("the assignment's tasks is not a Task of the Engine API: "),
            "{e}"
        );
    }

    /// A forwarded call keeps its operation, caller, address and hop count; one without an
    /// operation is refused.
    #[test]
    fn forwarded_calls_round_trip() {
        use shoal_api::call::ServiceCall;
        let ops = [
            Op::User {
                call: ServiceCall::Scale {
                    id: "web".into(),
                    replicas: 3,
                }
                .into(),
                node_id: "m1".into(),
            },
            Op::Renew { csr: "csr".into() },
            Op::AddManager {
                raft_id: 7,
                addr: "10.0.0.2:2377".into(),
            },
            Op::Report(StatusReport::default()),
        ];
        for op in ops {
            let forwarded = Forwarded {
                op,
                caller: Some(NodeIdentity {
                    node_id: "n2".into(),
                    role: Role::Manager,
                    cluster_id: "cluster".into(),
                }),
                from: "10.0.0.2".into(),
                hops: 1,
            };
            let back = Forwarded::try_from(v1::Forwarded::from(forwarded.clone()));
            assert_eq!(
                serde_json::to_value(back.expect("decodes")).ok(),
                serde_json::to_value(forwarded).ok()
            );
        }
        let e = Forwarded::try_from(v1::Forwarded::default()).expect_err("no op");
        assert_eq!(e.to_string(), "the forwarded call has no op");
    }

    /// A log session's messages survive the trip; a request that asks nothing is refused.
    #[test]
    fn log_session_messages_round_trip() {
        let ask = ToNode::Subscribe {
            id: 7,
            tasks: vec!["task".into()],
            query: shoal_api::logs::LogsQuery {
                target: String::new(),
                follow: true,
                tail: Some(5),
                since: Some("1700000000".into()),
            },
        };
        let back = ToNode::try_from(v1::NodeLogRequest::from(ask.clone())).expect("decodes");
        assert_eq!(
            serde_json::to_value(back).ok(),
            serde_json::to_value(ask).ok()
        );
        let cancel = ToNode::try_from(v1::NodeLogRequest::from(ToNode::Cancel { id: 7 }));
        assert!(matches!(cancel, Ok(ToNode::Cancel { id: 7 })));
        let reply = FromNode {
            id: 7,
            lines: vec![shoal_api::logs::LogLine {
                task_id: "task".into(),
                time: "2026-12-01T00:00:00Z".into(),
                stream: shoal_api::logs::Stream::Stdout,
                text: "hello".into(),
            }],
            warnings: vec!["gone".into()],
            done: true,
        };
        let back = FromNode::try_from(v1::NodeLogReply::from(reply.clone())).expect("decodes");
        assert_eq!(
            serde_json::to_value(back).ok(),
            serde_json::to_value(reply).ok()
        );
        let e = ToNode::try_from(v1::NodeLogRequest::default()).expect_err("asks nothing");
        assert_eq!(e.to_string(), "the log request has no ask");
    }

    /// A message without what the manager needs is refused, saying which field.
    #[test]
    fn a_join_without_a_description_or_a_report_without_a_status_is_refused() {
        let e = JoinRequest::try_from(v1::JoinRequest::default()).expect_err("no description");
        assert_eq!(e.to_string(), "the join request has no node description");
        let report = v1::StatusReport {
            updates: vec![v1::TaskUpdate {
                task_id: "task".into(),
                status: None,
            }],
        };
        let e = StatusReport::try_from(report).expect_err("no status");
        assert_eq!(e.to_string(), "the task update has no status");
        let e = JoinReply::try_from(v1::JoinReply::default()).expect_err("no role");
        assert_eq!(
            e.to_string(),
            "the join reply's role is 0, not one this version knows"
        );
    }
}
