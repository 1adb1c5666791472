//! What nodes and managers send each other (the JSON inside the gRPC frames).

use serde::{Deserialize, Serialize};
use shoal_api::call::ManagerCall;
use shoal_api::service::TaskStatus;
use shoal_api::swarm::{NodeDescription, Role};

use crate::ca::NodeIdentity;

/// One operation the leader carries out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// A `shoal swarm|node` call made on manager `node_id`.
    User {
        /// The call.
        call: ManagerCall,
        /// The manager the user asked (`self`, and the `*` in `node ls`).
        node_id: String,
    },
    /// A node joins with a token and a certificate request.
    Join(JoinRequest),
    /// A node asks for a certificate for the role the store gives it.
    Renew {
        /// A certificate request for its (new) key.
        csr: String,
    },
    /// A node's heartbeat.
    Heartbeat(Heartbeat),
    /// A node reports the status of its tasks.
    Report(StatusReport),
    /// A manager with a fresh manager certificate asks to be added to the raft.
    AddManager {
        /// Its raft ID.
        raft_id: u64,
        /// Where its raft and API listen.
        addr: String,
    },
}

/// An operation forwarded by a manager to the leader, on behalf of a caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    /// The operation.
    pub op: Op,
    /// Who asked (the identity in their certificate, checked by the forwarding manager).
    pub caller: Option<NodeIdentity>,
    /// The caller's IP address as the forwarding manager saw it.
    pub from: String,
    /// Managers it went through, to stop a loop while leadership moves.
    pub hops: u8,
}

/// `swarm join`: what the joining node sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token.
    pub token: String,
    /// A certificate request for the node's key.
    pub csr: String,
    /// What the node says about itself.
    pub description: NodeDescription,
    /// Its advertise address with port (used if it joins as a manager).
    pub advertise_addr: String,
}

/// What a joining node gets back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinReply {
    /// Its node ID.
    pub node_id: String,
    /// The cluster's ID.
    pub cluster_id: String,
    /// Its role (from the token).
    pub role: Role,
    /// Its certificate (PEM).
    pub cert_pem: String,
    /// The root CA (PEM).
    pub ca_pem: String,
    /// The managers' addresses.
    pub managers: Vec<String>,
    /// The heartbeat period, milliseconds.
    pub heartbeat_ms: u64,
    /// `--data-path-port`.
    pub data_path_port: u16,
}

/// A certificate renewal's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewReply {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The role it carries.
    pub role: Role,
}

/// A node's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// What the node says about itself.
    pub description: NodeDescription,
    /// Its routing mesh's counters per service name (none before the mesh runs there; none
    /// from nodes older than this field).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub mesh: std::collections::BTreeMap<String, MeshCounters>,
}

/// A service's routing-mesh counters on one node, since its programs were loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshCounters {
    /// Connections balanced.
    pub connections: u64,
    /// Client packets sent on to tasks.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What a node hears back from a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The period to heartbeat at, milliseconds.
    pub period_ms: u64,
    /// The role the node should have.
    pub role: Role,
    /// The managers' addresses, the leader's first.
    pub managers: Vec<String>,
    /// The roots the node is to trust (PEM), when they differ from those it reported: the new
    /// root joins the current one during a rotation, and replaces it at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_root: Option<String>,
    /// The public key (base64 of the DER) of the CA that signs certificates now: a node whose
    /// certificate another CA signed renews it.
    #[serde(default)]
    pub issuer_public_key: String,
}

/// Task status reports from a node, batched.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    /// (task ID, its new status).
    pub updates: Vec<(String, TaskStatus)>,
}
