//! The swarm's API model: the arguments of `shoal swarm|node` calls ([`crate::call`]), and the
//! objects they get back ([`Node`], [`Cluster`]), serialized with Docker's field names so
//! `inspect` prints what `docker node inspect` / `docker swarm inspect` print.
//!
//! The same types travel from a manager to the leader when a call is forwarded, and are the
//! bodies of the objects in the raft store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::service::Resources;
use crate::version::Version;

/// `swarm init`'s flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitArgs {
    /// `--advertise-addr`: IP or interface, optional port.
    pub advertise_addr: Option<String>,
    /// `--listen-addr` (default `0.0.0.0:2377`).
    pub listen_addr: Option<String>,
    /// `--data-path-addr`: IP or interface.
    pub data_path_addr: Option<String>,
    /// `--data-path-port` (default 4789).
    pub data_path_port: Option<u16>,
    /// `--dispatcher-heartbeat`, seconds.
    pub dispatcher_heartbeat_s: Option<u64>,
    /// `--snapshot-interval`.
    pub snapshot_interval: Option<u64>,
    /// `--cert-expiry`, seconds (default 90 days; at least an hour).
    #[serde(default)]
    pub cert_expiry_s: Option<u64>,
    /// `--default-addr-pool`: the pools overlay subnets are carved from (default 10.0.0.0/8).
    #[serde(default)]
    pub default_addr_pool: Vec<String>,
    /// `--default-addr-pool-mask-length`: the length of those subnets (default 24).
    #[serde(default)]
    pub default_addr_pool_mask_length: Option<u8>,
    /// `--autolock`: managers' data keys are sealed with an unlock key, which a restarted
    /// manager needs (`swarm unlock`).
    #[serde(default)]
    pub autolock: bool,
}

/// `swarm join`'s flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinArgs {
    /// `--token`.
    pub token: String,
    /// The manager to join through, `HOST[:PORT]`.
    pub remote: String,
    /// `--advertise-addr`.
    pub advertise_addr: Option<String>,
    /// `--listen-addr`.
    pub listen_addr: Option<String>,
    /// `--data-path-addr`.
    pub data_path_addr: Option<String>,
}

/// `swarm update`'s flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmUpdateArgs {
    /// `--dispatcher-heartbeat`, seconds.
    pub dispatcher_heartbeat_s: Option<u64>,
    /// `--snapshot-interval`.
    pub snapshot_interval: Option<u64>,
    /// `--cert-expiry`, seconds (at least an hour).
    #[serde(default)]
    pub cert_expiry_s: Option<u64>,
    /// `--task-history-limit`: stopped tasks kept per slot.
    #[serde(default)]
    pub task_history_limit: Option<u64>,
    /// `--autolock=true|false`.
    #[serde(default)]
    pub autolock: Option<bool>,
    /// `CAConfig.ForceRotate`: a value other than the swarm's starts a root CA rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_force_rotate: Option<u64>,
    /// The version the client read, if it names one (the Engine API's `version=`): the update
    /// is refused as out of sequence if the cluster changed since, checked with the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs tasks only.
    Worker,
    /// Holds the raft store and runs the control plane.
    Manager,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        })
    }
}

/// Whether the scheduler may place tasks on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// New tasks may be placed.
    #[default]
    Active,
    /// No new tasks; running ones stay.
    Pause,
    /// No tasks: running ones move elsewhere.
    Drain,
}

impl std::str::FromStr for Availability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Self::Active),
            "pause" => Ok(Self::Pause),
            "drain" => Ok(Self::Drain),
            other => Err(format!(
                "invalid availability {other:?}: must be one of active, pause, drain"
            )),
        }
    }
}

/// What `node update|promote|demote` change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpdate {
    /// `--availability`.
    pub availability: Option<Availability>,
    /// `--role` (`promote` / `demote`).
    pub role: Option<Role>,
    /// `--label-add key=value` (or `key`).
    pub label_add: BTreeMap<String, String>,
    /// `--label-rm key`.
    pub label_rm: Vec<String>,
    /// The version the client read, if it names one (the Engine API's `version=`): the update
    /// is refused as out of sequence if the node changed since, checked with the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// A node, as `node inspect` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    /// The node ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its version.
    pub version: Version,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// What the operator set.
    pub spec: NodeSpec,
    /// What the node reported.
    pub description: NodeDescription,
    /// Ready or Down, as the managers see it.
    pub status: NodeStatus,
    /// Set on managers.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub manager_status: Option<ManagerStatus>,
    /// The node's own addresses on networks: its place on the ingress network, the routing
    /// mesh's source address.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub attachments: Vec<crate::service::NetworkAttachment>,
}

/// A node's spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeSpec {
    /// `--label-add`.
    pub labels: BTreeMap<String, String>,
    /// The role the node should have.
    pub role: Option<Role>,
    /// `--availability`.
    pub availability: Availability,
}

/// What a node says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeDescription {
    /// Its host name.
    pub hostname: String,
    /// OS and architecture.
    pub platform: Platform,
    /// CPUs and memory.
    pub resources: Resources,
    /// Where its overlay traffic goes (`--data-path-addr`; the advertise address by default).
    pub data_path_addr: String,
    /// The swarm's VXLAN port (`swarm init --data-path-port`).
    #[serde(default)]
    pub data_path_port: u16,
    /// Its WireGuard public key (base64), for encrypted networks. Its private key never leaves
    /// it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wireguard_public_key: String,
    /// The executor it runs tasks with: `exec` or `docker`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub executor: String,
    /// Its certificate: what it trusts, who issued it, when it expires.
    #[serde(rename = "TLSInfo", default)]
    pub tls_info: NodeTlsInfo,
    /// The routing mesh's path on each interface it uses, e.g. `eth0` -> `in: xdp+tc; out: tc
    /// (takes no XDP frames)` (`shoal dataplane inspect` has the details and counters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mesh_paths: BTreeMap<String, String>,
}

/// A node's certificate as the node reports it (Docker's `TLSInfo`, and its expiry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeTlsInfo {
    /// The root certificates it trusts (PEM; two during a root rotation).
    #[serde(default)]
    pub trust_root: String,
    /// Its certificate's issuer's subject (base64 of the DER).
    #[serde(default)]
    pub cert_issuer_subject: String,
    /// Its certificate's issuer's public key (base64 of the DER SubjectPublicKeyInfo).
    #[serde(default)]
    pub cert_issuer_public_key: String,
    /// When its certificate expires, RFC 3339 (Shoal's own field).
    #[serde(default)]
    pub cert_expiry: String,
}

/// OS and architecture, as Go names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Platform {
    /// e.g. `x86_64`.
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(rename = "OS")]
    pub os: String,
}

/// A node's liveness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Never heard from since this leader took over.
    #[default]
    Unknown,
    /// Heartbeating.
    Ready,
    /// Missed three heartbeat periods.
    Down,
}

/// Ready or Down.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeStatus {
    /// The state.
    pub state: NodeState,
    /// Why, when there is something to say.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub message: String,
    /// The address its heartbeats come from.
    pub addr: String,
}

/// A manager's place in the raft.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManagerStatus {
    /// Whether it leads.
    #[serde(default)]
    pub leader: bool,
    /// `reachable` or `unreachable`, as the leader sees it.
    pub reachability: String,
    /// Its advertise address (raft and the API).
    pub addr: String,
    /// Its raft ID.
    #[serde(rename = "RaftID")]
    pub raft_id: u64,
}

/// The swarm, as `swarm inspect` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Cluster {
    /// The cluster ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its version.
    pub version: Version,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Settings.
    pub spec: ClusterSpec,
    /// The root CA's certificate and the digest tokens carry.
    #[serde(rename = "TLSInfo")]
    pub tls_info: TlsInfo,
    /// The port VXLAN uses (`--data-path-port`).
    pub data_path_port: u16,
    /// The join tokens (shown only by `join-token`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub join_tokens: Option<JoinTokens>,
    /// Whether a root rotation (`swarm ca --rotate`) is under way.
    #[serde(default)]
    pub root_rotation_in_progress: bool,
    /// The pools overlay subnets are carved from (`--default-addr-pool`); empty: 10.0.0.0/8.
    #[serde(default)]
    pub default_addr_pool: Vec<String>,
    /// The length of those subnets (`--default-addr-pool-mask-length`); 0: 24.
    #[serde(default)]
    pub subnet_size: u32,
}

/// Cluster settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClusterSpec {
    /// `default`.
    pub name: String,
    /// Raft settings.
    pub raft: RaftSpec,
    /// Dispatcher settings.
    pub dispatcher: DispatcherSpec,
    /// CA settings.
    #[serde(rename = "CAConfig")]
    pub ca_config: CaConfig,
    /// Orchestration settings.
    #[serde(default)]
    pub orchestration: OrchestrationSpec,
    /// Encryption at rest.
    #[serde(default)]
    pub encryption_config: EncryptionConfig,
}

/// Encryption-at-rest settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptionConfig {
    /// Autolock: a restarted manager stays locked until `swarm unlock` gives it the key.
    pub auto_lock_managers: bool,
}

/// Orchestration settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OrchestrationSpec {
    /// Stopped tasks kept per slot (`swarm update --task-history-limit`).
    pub task_history_retention_limit: u64,
}

impl Default for OrchestrationSpec {
    /// Docker's: five.
    fn default() -> Self {
        Self {
            task_history_retention_limit: 5,
        }
    }
}

/// Raft settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RaftSpec {
    /// Entries between snapshots.
    pub snapshot_interval: u64,
    /// Snapshots kept besides the newest.
    pub keep_old_snapshots: u64,
    /// Entries kept behind a snapshot.
    pub log_entries_for_slow_followers: u64,
}

/// Dispatcher settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DispatcherSpec {
    /// Nanoseconds, as Docker prints it.
    pub heartbeat_period: u64,
}

/// CA settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaConfig {
    /// Nanoseconds.
    pub node_cert_expiry: u64,
    /// Docker's way to ask for a new root CA: a swarm update that changes this counter starts
    /// a rotation (`shoal swarm ca --rotate` and `docker swarm ca --rotate` add one).
    #[serde(default)]
    pub force_rotate: u64,
}

/// The root CA as `swarm inspect` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TlsInfo {
    /// PEM.
    pub trust_root: String,
    /// The digest join tokens carry.
    pub digest: String,
    /// The subject of the CA that signs node certificates now (base64 of the DER): the new
    /// root's during a rotation. Derived from the roots when the swarm is inspected, never
    /// stored.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert_issuer_subject: String,
    /// Its public key (base64 of the DER SubjectPublicKeyInfo). A node whose certificate has
    /// another issuer has not rotated yet. As the subject, derived, never stored.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert_issuer_public_key: String,
}

/// The join tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinTokens {
    /// For workers.
    pub worker: String,
    /// For managers.
    pub manager: String,
}

/// What a node knows of its own swarm membership (`shoal info`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSwarm {
    /// `active` or `inactive`.
    pub state: String,
    /// The node ID.
    pub node_id: String,
    /// The cluster ID.
    pub cluster_id: String,
    /// Whether it is a manager.
    pub is_manager: bool,
    /// Managers' addresses.
    pub managers: Vec<String>,
    /// Managers and nodes counted by the leader (managers only).
    pub manager_count: Option<usize>,
    /// Nodes counted by the leader (managers only).
    pub node_count: Option<usize>,
    /// The node's advertise address.
    pub node_addr: String,
    /// The index of this manager's replica of the store.
    pub store_index: Option<u64>,
    /// The raft term this manager is in (one more with each election).
    #[serde(default)]
    pub raft_term: Option<u64>,
}

/// Docker's message for cluster calls on a worker.
pub const NOT_A_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
/// Docker's message for cluster calls on a node outside any swarm.
pub const NOT_IN_SWARM: &str = "This node is not a swarm manager. Use \"shoal swarm init\" or \"shoal swarm join\" to connect this node to swarm and try again.";
/// Docker's message for `init`/`join` on a node already in a swarm.
pub const ALREADY_IN_SWARM: &str = "This node is already part of a swarm. Use \"shoal swarm leave\" to leave this swarm and join another one.";
/// Docker's message when there is no leader.
pub const NO_LEADER: &str = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's resources are Docker's `Resources` document, and a node body stored while they
    /// were a type of their own (`NanoCpus`) still reads.
    #[test]
    fn a_node_s_resources_read_both_spellings_and_write_docker_s() {
        let stored = r#"{"Hostname":"n1","Platform":{"Architecture":"x86_64","OS":"linux"},
            "Resources":{"NanoCpus":2000000000,"MemoryBytes":1073741824},"DataPathAddr":"10.1.0.1"}"#;
        let node: NodeDescription = serde_json::from_str(stored).expect("an old node body");
        assert_eq!(node.resources.nano_cpus, 2_000_000_000);
        assert_eq!(node.resources.memory_bytes, 1 << 30);
        let written = serde_json::to_value(&node).expect("plain data");
        assert_eq!(
            written["Resources"],
            serde_json::json!({"NanoCPUs": 2_000_000_000_u64, "MemoryBytes": 1_073_741_824_u64})
        );
    }
}
