//! What the user asks of the swarm, by who carries it out:
//!
//! ```text
//!   Call ─┬─ Init, Join, Leave, Unlock           the node itself (swarm membership, its keys)
//!         └─ Manager(ManagerCall) ─┬─ Cluster(ClusterCall)   the leader: swarm, nodes, named data
//!                                  ├─ Service(ServiceCall)   the leader: services and their tasks
//!                                  ├─ Network(NetworkCall)   the leader: networks
//!                                  └─ Data(DataCall)         the leader: secrets and configs
//! ```
//!
//! Each layer matches the enum it owns and nothing else, so a new call is a compile error
//! until every layer that must carry it out does. A manager forwards a [`ManagerCall`] to the
//! leader as it came (JSON, externally tagged: `{"Service":{"Scale":{"id":"web","replicas":3}}}`).

use serde::{Deserialize, Serialize};

use crate::secret::{DataKind, DataSpec};
use crate::service::{NetworkSpec, ServiceSpec, TaskFilter};
use crate::swarm::{InitArgs, JoinArgs, NodeUpdate, Role, SwarmUpdateArgs};

/// What the user asks of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// `swarm init`.
    Init(InitArgs),
    /// `swarm join`.
    Join(JoinArgs),
    /// `swarm leave [--force]`.
    Leave {
        /// `--force`.
        force: bool,
    },
    /// `swarm unlock`: opens a locked manager's data key with the cluster's unlock key.
    /// Answered by the node itself (a locked manager runs no raft).
    Unlock {
        /// The unlock key.
        key: String,
    },
    /// Everything else: carried out by the leader, through this node's manager.
    Manager(ManagerCall),
}

/// What a manager carries out (on the leader, where a call is forwarded to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerCall {
    /// The swarm, its nodes and named data.
    Cluster(ClusterCall),
    /// Services and their tasks.
    Service(ServiceCall),
    /// Networks.
    Network(NetworkCall),
    /// Secrets and configs.
    Data(DataCall),
}

/// The swarm, its nodes and named data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCall {
    /// `swarm inspect`.
    Inspect,
    /// `swarm update`.
    Update(SwarmUpdateArgs),
    /// `swarm ca [--rotate] [--cert-expiry D]`: with `rotate`, starts a root rotation (a new
    /// root CA, cross-signed by the current one); the cluster as it is then.
    Ca {
        /// `--rotate`.
        rotate: bool,
        /// `--cert-expiry`, seconds.
        cert_expiry_s: Option<u64>,
    },
    /// `swarm unlock-key [--rotate]`: the cluster's unlock key (`SWMKEY-1-...`), a new one with
    /// `rotate`. Refused while autolock is off.
    UnlockKey {
        /// `--rotate`.
        rotate: bool,
    },
    /// `swarm join-token [--rotate] worker|manager`.
    JoinToken {
        /// Whose token.
        role: Role,
        /// `--rotate`.
        rotate: bool,
    },
    /// `node ls`.
    NodeList,
    /// The routing mesh's traffic per node and service, as the leader last heard it from the
    /// nodes' heartbeats (the web view's traffic panel).
    Traffic,
    /// `node inspect ID...` (IDs, ID prefixes or hostnames; `self` is the local node).
    NodeInspect {
        /// The nodes.
        ids: Vec<String>,
    },
    /// `node update`, `node promote`, `node demote`.
    NodeUpdate {
        /// The node.
        id: String,
        /// What to change.
        update: NodeUpdate,
    },
    /// `node rm [--force]`.
    NodeRemove {
        /// The nodes.
        ids: Vec<String>,
        /// `--force`.
        force: bool,
    },
    /// Creates or replaces a config object: a replicated write with nothing else attached
    /// (what `cargo xtask bench raft` and the crash tests write).
    Put {
        /// Its name.
        name: String,
        /// Its data.
        data: String,
    },
    /// Reads a config object written by [`ClusterCall::Put`].
    Get {
        /// Its name.
        name: String,
    },
}

/// Services and their tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceCall {
    /// `service create`.
    Create(Box<ServiceSpec>),
    /// `service ls`.
    List,
    /// `service inspect` (names, IDs or ID prefixes).
    Inspect {
        /// The services.
        ids: Vec<String>,
    },
    /// `service scale NAME=N`.
    Scale {
        /// The service.
        id: String,
        /// Its new replica count.
        replicas: u64,
    },
    /// `service update`: the whole new spec, computed by the client from the service it read
    /// at `version` (refused as out of sequence if the service changed since).
    Update {
        /// The service (name, ID or ID prefix).
        id: String,
        /// The version the client read.
        version: u64,
        /// The new spec.
        spec: Box<ServiceSpec>,
    },
    /// `service rollback`: back to the spec before the last update.
    Rollback {
        /// The service (name, ID or ID prefix).
        id: String,
        /// The version the client read, if it names one (the Engine API's `version=`): the
        /// rollback is refused as out of sequence if the service changed since.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// `service rm`.
    Remove {
        /// The services.
        ids: Vec<String>,
    },
    /// `service ps`, `node ps`.
    Tasks(TaskFilter),
}

/// Networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkCall {
    /// `network create`.
    Create(NetworkSpec),
    /// `network ls`.
    List,
    /// `network inspect`.
    Inspect {
        /// Names, IDs or ID prefixes.
        ids: Vec<String>,
    },
    /// `network rm`.
    Remove {
        /// Names, IDs or ID prefixes.
        ids: Vec<String>,
    },
}

/// Secrets and configs (`kind` says which).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataCall {
    /// `secret create`, `config create`: the new object's ID.
    Create {
        /// Secret or config.
        kind: DataKind,
        /// Name, labels and data.
        spec: DataSpec,
    },
    /// `secret ls`, `config ls`.
    List {
        /// Secret or config.
        kind: DataKind,
    },
    /// `secret inspect`, `config inspect` (names, IDs or ID prefixes).
    Inspect {
        /// Secret or config.
        kind: DataKind,
        /// The objects.
        ids: Vec<String>,
    },
    /// `POST /secrets/{id}/update`: only the labels may change (Docker's rule).
    Update {
        /// Secret or config.
        kind: DataKind,
        /// The object.
        id: String,
        /// The version the client read.
        version: u64,
        /// The new spec.
        spec: DataSpec,
    },
    /// `secret rm`, `config rm`: refused for one a service uses.
    Remove {
        /// Secret or config.
        kind: DataKind,
        /// The objects.
        ids: Vec<String>,
    },
}

/// Each group is a call: `ServiceCall::List.into()` is the [`Call`] to send.
macro_rules! into_call {
    ($($group:ident => $variant:ident),* $(,)?) => {$(
        impl From<$group> for ManagerCall {
            fn from(call: $group) -> Self {
                Self::$variant(call)
            }
        }
        impl From<$group> for Call {
            fn from(call: $group) -> Self {
                Self::Manager(ManagerCall::$variant(call))
            }
        }
    )*};
}

into_call!(
    ClusterCall => Cluster,
    ServiceCall => Service,
    NetworkCall => Network,
    DataCall => Data,
);

impl From<ManagerCall> for Call {
    fn from(call: ManagerCall) -> Self {
        Self::Manager(call)
    }
}
