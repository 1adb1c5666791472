//! The replicated store: openraft over a durable log ([`log`]) and a state machine that feeds
//! the in-memory object store ([`sm`]). Raft's messages travel over the managers' mutual-TLS
//! gRPC ([`network`]), a leader's appends on a protocol of their own on the same port
//! ([`appends`]).
//!
//! A raft entry's payload is a [`Request`]: a batch of change sets proposed together (the
//! [`proposer`] groups what arrives while earlier entries are being written), each applied
//! whole or refused whole by every replica alike (the check is deterministic: versions are raft
//! indices). Each proposer learns which from the [`Response`].

pub mod appends;
pub mod guard;
pub mod log;
pub mod network;
pub mod proposer;
pub mod sm;
pub mod wire;

use std::{io::Cursor, path::Path};

use serde::{Deserialize, Serialize};

use crate::store::{ChangeSet, StoreError};

/// A manager's raft ID (distinct from its node ID, as in SwarmKit).
pub type NodeId = u64;
/// What raft knows of a manager: the address its raft RPCs go to, and the node ID its
/// certificate carries (so that a message is taken only from the member that sends it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMember {
    /// Where its raft and cluster API listen.
    pub addr: String,
    /// Its node ID (empty in memberships written before it was recorded).
    #[serde(default)]
    pub node_id: String,
}

impl RaftMember {
    /// The member at `addr` whose certificate names `node_id`.
    pub fn new(addr: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            node_id: node_id.into(),
        }
    }
}

/// One raft entry's payload: change sets, applied in order, each whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The change sets.
    pub batch: Vec<ChangeSet>,
}

/// What applying an entry did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The raft index the entry was applied at (the new version of what it changed).
    pub index: u64,
    /// For each change set of the batch: why it was refused, if it was.
    pub refused: Vec<Option<StoreError>>,
}

openraft::declare_raft_types!(
    /// Shoal's raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = RaftMember,
);

/// A raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A running raft node.
pub type Raft = openraft::Raft<TypeConfig>;

/// What the raft storage (log and state machine) answers openraft.
pub(crate) type StorageResult<T> = Result<T, openraft::StorageError<NodeId>>;

/// Raft settings (`swarm init`/`swarm update` flags where Docker has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftSettings {
    /// Entries between snapshots (SwarmKit: 10,000; `--snapshot-interval`).
    pub snapshot_interval: u64,
    /// Entries kept behind a snapshot for slow followers (SwarmKit: 500).
    pub log_entries_for_slow_followers: u64,
    /// Leader heartbeat, milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout range, milliseconds.
    pub election_ms: (u64, u64),
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            snapshot_interval: 10_000,
            log_entries_for_slow_followers: 500,
            // etcd's heartbeat; elections after half a second to a second of silence. openraft
            // refuses votes while the last leader's lease (the longest election timeout) runs,
            // so a killed leader is replaced within one to two timeouts: 1 to 2 s.
            heartbeat_ms: 100,
            election_ms: (500, 1_000),
        }
    }
}

impl RaftSettings {
    /// openraft's configuration for these settings.
    pub fn config(&self, cluster: &str) -> Result<openraft::Config, Box<openraft::ConfigError>> {
        openraft::Config {
            cluster_name: cluster.to_owned(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_ms.0,
            election_timeout_max: self.election_ms.1,
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_interval),
            max_in_snapshot_log_to_keep: self.log_entries_for_slow_followers,
            ..Default::default()
        }
        .validate()
        .map_err(Box::new)
    }
}

/// Opens a manager's raft storage in `dir`: the log, and the state machine over `store` (loaded
/// from the newest snapshot), both sealed with `key` ([`crate::keys`]), for the manager whose
/// raft ID is `me`. The state machine applies nothing the log does not hold on disk.
pub fn open_storage(
    dir: &Path,
    store: crate::store::Store,
    key: &crate::keys::DataKey,
    me: NodeId,
) -> std::io::Result<(log::LogStore, sm::StateMachine)> {
    std::fs::create_dir_all(dir)?;
    let log = log::LogStore::open(dir, key.clone(), me)?;
    let sm = sm::StateMachine::open(dir, store, key.clone(), log.durability())?;
    Ok((log, sm))
}

#[cfg(test)]
mod tests {
    use openraft::{
        StorageError,
        testing::{StoreBuilder, Suite},
    };

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, log::LogStore, sm::StateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, log::LogStore, sm::StateMachine), StorageError<NodeId>>
        {
            let dir = tempfile::tempdir().expect("temporary directory");
            let keys = crate::keys::DataKeys::open(dir.path(), None).expect("data key");
            let (log, sm) =
                open_storage(dir.path(), crate::store::Store::new(), keys.key(), 1).expect("open");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage test suite against the durable log and the state machine.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("openraft's storage suite");
    }
}

/// TLS for tests that speak between managers.
#[cfg(test)]
pub(crate) mod test_tls {
    use std::{sync::Arc, time::Duration};

    use crate::{
        ca::{NodeIdentity, Role, RootCa, node_request},
        tls::{Credentials, LiveTls},
    };

    /// A manager's TLS as the swarm's CA would issue it.
    pub(crate) fn manager_tls() -> Arc<LiveTls> {
        let ca = RootCa::generate().expect("a CA");
        let (csr, key_pem) = node_request().expect("a request");
        let node = NodeIdentity {
            node_id: "m1".into(),
            role: Role::Manager,
            cluster_id: "c".into(),
        };
        let cert_pem = ca
            .sign(&csr, &node, Duration::from_secs(3600))
            .expect("signed");
        LiveTls::new(&Credentials {
            cert_pem,
            key_pem,
            ca_pem: ca.cert_pem().to_owned(),
        })
        .expect("TLS from the credentials")
    }
}
