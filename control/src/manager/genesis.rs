//! `swarm init`'s first state: a root CA, join tokens, the cluster object and the first node's
//! manager certificate. Nothing is written here; the caller writes the certificates, starts the
//! manager and proposes these objects as raft's first entry.

use serde_json::Value;
use shoal_api::swarm::{
    CaConfig, Cluster, ClusterSpec, DispatcherSpec, JoinTokens, ManagerStatus, Node,
    NodeDescription, NodeSpec, NodeState, NodeStatus, RaftSpec, Role, TlsInfo,
};

use super::{cluster::ClusterRecord, write::now};
use crate::{
    ca::{self, CaError, JoinToken, NodeIdentity, RootCa},
    tls::Credentials,
};

/// What `swarm init` decides.
#[derive(Debug)]
pub struct Genesis {
    /// The new cluster's ID.
    pub cluster_id: String,
    /// The cluster object's body.
    pub cluster: Value,
    /// The first node's ID.
    pub node_id: String,
    /// The first node's body.
    pub node: Value,
    /// The first node's manager certificate.
    pub credentials: Credentials,
    /// Its raft ID.
    pub raft_id: u64,
}

/// Settings `swarm init` takes.
#[derive(Debug, Clone)]
pub struct GenesisArgs {
    /// The node's description.
    pub description: NodeDescription,
    /// The advertise address with port.
    pub advertise: String,
    /// `--data-path-port`.
    pub data_path_port: u16,
    /// `--dispatcher-heartbeat`, seconds.
    pub heartbeat_s: u64,
    /// `--snapshot-interval`.
    pub snapshot_interval: u64,
    /// `--cert-expiry`, seconds.
    pub cert_expiry_s: u64,
    /// `--default-addr-pool` (checked).
    pub default_addr_pool: Vec<String>,
    /// `--default-addr-pool-mask-length`; 0 for the default.
    pub subnet_size: u32,
    /// `--autolock`.
    pub autolock: bool,
}

/// Creates the root CA, tokens, the cluster object and the first node.
pub fn genesis(args: GenesisArgs) -> Result<Genesis, CaError> {
    let root = RootCa::generate()?;
    let validity = ca::node_validity(args.cert_expiry_s.saturating_mul(1_000_000_000));
    let cluster_id = ca::random_id()?;
    let node_id = ca::random_id()?;
    let raft_id = ca::random_u64()?;
    let (csr, key_pem) = ca::node_request()?;
    let cert_pem = root.sign(
        &csr,
        &NodeIdentity {
            node_id: node_id.clone(),
            role: Role::Manager,
            cluster_id: cluster_id.clone(),
        },
        validity,
    )?;
    let created = now();
    let record = ClusterRecord {
        cluster: Cluster {
            id: cluster_id.clone(),
            created_at: created.clone(),
            updated_at: created.clone(),
            spec: ClusterSpec {
                name: "default".into(),
                raft: RaftSpec {
                    snapshot_interval: args.snapshot_interval,
                    keep_old_snapshots: 0,
                    log_entries_for_slow_followers: 500,
                },
                dispatcher: DispatcherSpec {
                    heartbeat_period: args.heartbeat_s * 1_000_000_000,
                },
                ca_config: CaConfig {
                    node_cert_expiry: validity.as_nanos() as u64,
                    force_rotate: 0,
                },
                orchestration: Default::default(),
                encryption_config: shoal_api::swarm::EncryptionConfig {
                    auto_lock_managers: args.autolock,
                },
            },
            tls_info: TlsInfo {
                trust_root: root.cert_pem().to_owned(),
                digest: root.digest(),
                ..TlsInfo::default()
            },
            data_path_port: args.data_path_port,
            default_addr_pool: args.default_addr_pool.clone(),
            subnet_size: args.subnet_size,
            join_tokens: Some(JoinTokens {
                worker: JoinToken::generate(&root)?.to_string(),
                manager: JoinToken::generate(&root)?.to_string(),
            }),
            ..Default::default()
        },
        ca_key: root.key_pem(),
        root_rotation: None,
        unlock_key: if args.autolock {
            crate::keys::UnlockKey::generate()
                .map_err(CaError::Random)?
                .to_string()
        } else {
            String::new()
        },
    };
    let node = Node {
        id: node_id.clone(),
        created_at: created.clone(),
        updated_at: created,
        spec: NodeSpec {
            role: Some(Role::Manager),
            ..Default::default()
        },
        status: NodeStatus {
            state: NodeState::Ready,
            message: String::new(),
            addr: args
                .advertise
                .rsplit_once(':')
                .map_or(args.advertise.clone(), |(ip, _)| ip.to_owned()),
        },
        description: args.description,
        manager_status: Some(ManagerStatus {
            leader: false,
            reachability: String::new(),
            addr: args.advertise,
            raft_id,
        }),
        ..Default::default()
    };
    Ok(Genesis {
        cluster_id,
        cluster: serde_json::to_value(&record).expect("plain data serializes"),
        node_id,
        node: serde_json::to_value(&node).expect("plain data serializes"),
        credentials: Credentials {
            cert_pem,
            key_pem,
            ca_pem: root.cert_pem().to_owned(),
        },
        raft_id,
    })
}
