//! A manager: the raft node, the object store it feeds, and the gRPC services other nodes call
//! over mutual TLS on the advertise address.
//!
//! ```text
//!   node ──mTLS──> Ca.Join (token) / Ca.Renew / Dispatcher.Heartbeat / Control.Call / Raft.*
//!                        │
//!                        └─> Manager::submit(op) ── leader? ──yes──> ops.rs: read the store, propose
//!                                                        └──no───> Control.Call on the leader
//! ```
//!
//! Everything goes to the leader, as in SwarmKit: it alone writes, it alone hears heartbeats (so
//! it alone decides a node is Down), and it alone knows which managers answer its raft RPCs
//! (MANAGER STATUS). A follower forwards calls on behalf of the caller whose certificate it
//! checked.

mod cluster;
pub mod genesis;
pub mod logs;
mod names;
mod ops;
pub mod protocol;
pub mod quorum;
mod secrets;
pub mod services;
pub mod traffic;
pub mod wire;
pub mod write;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use protocol::{Forwarded, HeartbeatReply, JoinReply, Op, RenewReply};
use rustls::ClientConfig;
use serde_json::Value;
use shoal_api::{
    logs::{LogBatch, LogsQuery},
    reason::Reason,
    swarm::NO_LEADER,
    v1::{self, ca_server, control_client::ControlClient, control_server, dispatcher_server},
};
use tokio::sync::watch;
use tonic::{Request, Response, Status, transport::Channel};

use crate::{
    ca::NodeIdentity,
    raft::{
        Raft, RaftSettings,
        network::{
            Check, Contacts, MAX_MESSAGE, RaftClients, RaftService, managers_only, nodes_only,
            require_manager,
        },
        proposer::Proposer,
    },
    store::Store,
    tls::{Credentials, LiveTls, TlsPeer},
};

/// How a manager is set up.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Its raft storage (`<data root>/swarm/raft`).
    pub dir: PathBuf,
    /// Its manager certificate.
    pub credentials: Credentials,
    /// Its raft ID.
    pub raft_id: u64,
    /// Where other managers and nodes reach it.
    pub advertise: SocketAddr,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Raft timing and snapshots.
    pub settings: RaftSettings,
    /// The data key that seals the raft storage, opened from `dir` ([`crate::keys`]).
    pub keys: crate::keys::DataKeys,
}

/// Why a manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The raft storage could not be opened.
    #[error("opening the raft store in {dir}: {source}")]
    Storage {
        /// Where.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The listen address could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Raft's settings were refused.
    #[error("starting raft: {0}")]
    RaftConfig(#[source] Box<openraft::ConfigError>),
    /// Raft refused to start.
    #[error("starting raft: {0}")]
    Raft(#[source] openraft::error::Fatal<crate::raft::NodeId>),
}

pub(crate) struct Inner {
    raft: Raft,
    proposer: Proposer,
    store: Store,
    raft_id: u64,
    advertise: SocketAddr,
    identity: NodeIdentity,
    /// Its certificate and the roots it trusts, replaced in place on renewal and rotation.
    live: Arc<LiveTls>,
    client_tls: Arc<ClientConfig>,
    contacts: Contacts,
    settings: RaftSettings,
    /// The data key, kept sealed with the cluster's unlock key (see `ops::maintain`).
    keys: crate::keys::DataKeys,
    /// Last heartbeat per node ID (the leader's).
    heartbeats: Mutex<HashMap<String, Instant>>,
    /// Serialises the writes of node descriptions (so that two nodes cannot both claim one
    /// data-path address or key), with when each node's description was last written.
    descriptions: tokio::sync::Mutex<HashMap<String, Instant>>,
    /// When this manager last became leader.
    leader_since: Mutex<Option<Instant>>,
    /// The swarm's events as this manager saw them.
    events: Arc<crate::events::Journal>,
    /// The mesh traffic the nodes' heartbeats reported (on the leader).
    traffic: Mutex<traffic::Traffic>,
    /// The last commit index raft told the log (the metrics' commit index).
    committed_index: Arc<std::sync::atomic::AtomicU64>,
    clients: Mutex<HashMap<String, ControlClient<Channel>>>,
    /// The nodes' log sessions and open `service logs` requests (the leader's).
    logs: Arc<logs::Broker>,
    stop: watch::Sender<bool>,
    /// The server and accept tasks: awaited on shutdown, so the port is free afterwards.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Where a manager's raft stands ([`Manager::raft_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// The term it is in.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Whether it leads.
    pub leads: bool,
    /// The index of the last entry in its log.
    pub last_log_index: u64,
    /// The last commit index raft told its log (0 until the first it hears of).
    pub commit_index: u64,
    /// The index of the last entry applied to its store (committed, so at most the commit
    /// index; the leader applies as soon as it commits).
    pub applied_index: u64,
    /// The index its last snapshot covers.
    pub snapshot_index: u64,
    /// The raft members that vote.
    pub voters: usize,
}

/// The cluster port's connections for gRPC: one that chose raft's appends' protocol is served
/// beside it ([`crate::raft::appends`]), until it ends or `stopped`.
fn route_appends(
    incoming: impl tokio_stream::Stream<Item = std::io::Result<crate::tls::TlsConn>>,
    raft_service: RaftService,
    stopped: watch::Receiver<bool>,
) -> impl tokio_stream::Stream<Item = std::io::Result<crate::tls::TlsConn>> {
    tokio_stream::StreamExt::filter_map(incoming, move |conn| match conn {
        Ok(conn) if conn.protocol() == Some(crate::raft::appends::ALPN) => {
            tokio::spawn(raft_service.clone().serve_appends(conn, stopped.clone()));
            None
        }
        other => Some(other),
    })
}

/// Counts leader changes and new snapshots from raft's metrics, until `stopped`.
async fn count_raft_changes(
    mut metrics: watch::Receiver<
        openraft::RaftMetrics<crate::raft::NodeId, crate::raft::RaftMember>,
    >,
    mut stopped: watch::Receiver<bool>,
) {
    let (mut leader, mut snapshot) = {
        let m = metrics.borrow();
        (m.current_leader, m.snapshot)
    };
    let counters = crate::metrics::control();
    loop {
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stopped.wait_for(|s| *s) => return,
        }
        let m = metrics.borrow_and_update();
        if m.current_leader != leader {
            leader = m.current_leader;
            counters.leader_changes.inc();
        }
        if m.snapshot != snapshot {
            snapshot = m.snapshot;
            counters.snapshots.inc();
        }
    }
}

/// A running manager. Clones share it.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("raft_id", &self.inner.raft_id)
            .field("advertise", &self.inner.advertise)
            .finish_non_exhaustive()
    }
}

/// The largest `Ca` request (a join: token, CSR, description).
const MAX_CA_MESSAGE: usize = 64 * 1024;
/// Concurrent streams on one connection.
const MAX_STREAMS: u32 = 256;
/// File descriptors kept out of the cluster API's reach, for raft's log and snapshots, the
/// data plane and the tasks.
pub const RESERVED_DESCRIPTORS: u64 = 1_024;

/// Connections the cluster API may hold: the process's open-file limit less
/// [`RESERVED_DESCRIPTORS`].
fn connection_budget() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1_024, |(soft, _)| soft);
    usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX)
}

/// How long a forwarded call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a call waits for a leader to be elected.
const LEADER_WAIT: Duration = Duration::from_secs(8);

/// The raft log and state machine in `config`'s directory, the machine feeding `store`.
fn open_storage(
    config: &ManagerConfig,
    store: &Store,
) -> std::io::Result<(crate::raft::log::LogStore, crate::raft::sm::StateMachine)> {
    let ManagerConfig { dir, keys, .. } = config;
    crate::raft::open_storage(dir, store.clone(), keys.key(), config.raft_id)
}

impl Manager {
    /// Opens the raft store, starts raft and serves the cluster's gRPC services. A manager
    /// whose store is empty waits to be initialized ([`Manager::bootstrap`]) or added by the
    /// leader.
    pub async fn start(config: ManagerConfig) -> Result<Self, ManagerError> {
        let store = Store::new();
        let (log, sm) = open_storage(&config, &store).map_err(|source| ManagerError::Storage {
            dir: config.dir.clone(),
            source,
        })?;
        let durability = log.durability();
        let committed_index = log.committed_index();
        let identity = config.credentials.identity()?;
        let live = LiveTls::new(&config.credentials)?;
        let client_tls = live.client_config()?;
        let contacts: Contacts = Arc::default();
        let mut raft_config = config
            .settings
            .config(&identity.cluster_id)
            .map_err(ManagerError::RaftConfig)?;
        // Snapshots are triggered by the maintenance loop from the cluster's setting (which
        // `swarm update --snapshot-interval` changes at run time).
        raft_config.snapshot_policy = openraft::SnapshotPolicy::Never;
        let raft = Raft::new(
            config.raft_id,
            Arc::new(raft_config),
            RaftClients::new(client_tls.clone(), contacts.clone(), durability),
            log,
            sm,
        )
        .await
        .map_err(ManagerError::Raft)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ManagerError::Listen {
                addr: config.listen,
                source,
            })?;
        let (stop, stopped) = watch::channel(false);
        let inner = Arc::new(Inner {
            proposer: Proposer::start(raft.clone()),
            raft: raft.clone(),
            store,
            raft_id: config.raft_id,
            advertise: config.advertise,
            identity,
            live: live.clone(),
            client_tls,
            contacts,
            settings: config.settings,
            keys: config.keys,
            heartbeats: Mutex::default(),
            descriptions: tokio::sync::Mutex::default(),
            leader_since: Mutex::default(),
            events: Arc::default(),
            traffic: Mutex::default(),
            committed_index,
            clients: Mutex::default(),
            logs: Arc::default(),
            stop,
            tasks: Mutex::default(),
        });
        let manager = Self { inner };
        let services = Services {
            manager: manager.clone(),
        };
        let (incoming, accepting) = crate::tls::incoming(
            listener,
            live,
            crate::tls::ConnectionLimits::within(connection_budget()),
        )?;
        let raft_service = RaftService::new(raft.clone(), manager.inner.store.clone());
        let raft_metrics = raft.metrics();
        let mut until = stopped.clone();
        let incoming = route_appends(incoming, raft_service.clone(), stopped.clone());
        let serving = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                // A peer that stops answering is dropped; no connection holds more streams
                // than a node uses.
                .http2_keepalive_interval(Some(Duration::from_secs(15)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .max_concurrent_streams(Some(MAX_STREAMS))
                .http2_max_header_list_size(16 * 1024)
                .add_service(raft_service.grpc())
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    control_server::ControlServer::new(services.clone())
                        .max_decoding_message_size(MAX_MESSAGE),
                    managers_only as Check,
                ))
                // A join's token, CSR and description fit in a few KiB.
                .add_service(
                    ca_server::CaServer::new(services.clone())
                        .max_decoding_message_size(MAX_CA_MESSAGE),
                )
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    dispatcher_server::DispatcherServer::new(services),
                    nodes_only as Check,
                ))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = until.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the cluster API stopped");
            }
        });
        tokio::spawn(count_raft_changes(raft_metrics, stopped.clone()));
        tokio::spawn(crate::events::record(
            manager.inner.store.clone(),
            manager.inner.events.clone(),
            stopped.clone(),
        ));
        tokio::spawn(ops::maintain(manager.clone(), stopped.clone()));
        tokio::spawn(services::reconcile_loop(manager.clone(), stopped));
        manager
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([serving, accepting]);
        Ok(manager)
    }

    /// Makes this manager the first member of a new raft and writes the first state: the
    /// cluster object, this node and the ingress network.
    pub async fn bootstrap(
        &self,
        cluster: Value,
        cluster_id: &str,
        node: Value,
        node_id: &str,
        ingress_subnet: ipnet::Ipv4Net,
    ) -> Result<(), Status> {
        let mut members = BTreeMap::new();
        members.insert(
            self.inner.raft_id,
            crate::raft::RaftMember::new(
                self.inner.advertise.to_string(),
                self.inner.identity.node_id.clone(),
            ),
        );
        self.inner
            .raft
            .initialize(members)
            .await
            .map_err(|e| Status::internal(format!("initializing raft: {e}")))?;
        self.wait_leader(LEADER_WAIT).await?;
        self.heartbeat_seen(node_id);
        let ingress_id = crate::ca::random_id().map_err(|e| Status::internal(e.to_string()))?;
        let ingress = services::ingress_network(&ingress_id, ingress_subnet);
        write::propose(
            &self.inner,
            crate::store::ChangeSet(vec![
                crate::store::Change::Create {
                    kind: crate::store::Kind::Network,
                    id: ingress_id,
                    body: crate::orchestrator::body(&ingress),
                },
                crate::store::Change::Create {
                    kind: crate::store::Kind::Cluster,
                    id: cluster_id.to_owned(),
                    body: cluster,
                },
                crate::store::Change::Create {
                    kind: crate::store::Kind::Node,
                    id: node_id.to_owned(),
                    body: node,
                },
            ]),
        )
        .await?;
        // `swarm init --autolock`: sealed before init answers.
        ops::follow_unlock_key(&self.inner);
        Ok(())
    }

    /// The object store (this manager's replica).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The swarm's events as this manager saw them (`GET /events`).
    pub fn events(&self) -> &crate::events::Journal {
        &self.inner.events
    }

    /// Where this manager's raft stands, for the metrics.
    pub fn raft_status(&self) -> RaftStatus {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        RaftStatus {
            term: m.current_term,
            leader: m.current_leader,
            leads: m.current_leader == Some(self.inner.raft_id),
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: self
                .inner
                .committed_index
                .load(std::sync::atomic::Ordering::Relaxed),
            applied_index: m.last_applied.map_or(0, |id| id.index),
            snapshot_index: m.snapshot.map_or(0, |id| id.index),
            voters: m.membership_config.membership().voter_ids().count(),
        }
    }

    /// The raft term this manager is in: it grows by one with each election.
    pub fn raft_term(&self) -> u64 {
        self.inner.raft.metrics().borrow().current_term
    }

    /// Carries out `op` for `caller`, here if this manager leads, on the leader otherwise.
    pub async fn submit(
        &self,
        op: Op,
        caller: Option<NodeIdentity>,
        from: String,
    ) -> Result<Value, Status> {
        self.route(Forwarded {
            op,
            caller,
            from,
            hops: 0,
        })
        .await
    }

    async fn route(&self, forwarded: Forwarded) -> Result<Value, Status> {
        let (leader, addr) = self.wait_leader_addr(LEADER_WAIT).await?;
        if leader == self.inner.raft_id {
            return ops::execute(&self.inner, forwarded).await;
        }
        if forwarded.hops >= 2 {
            return Err(Reason::NoLeader.status(NO_LEADER));
        }
        let mut client = self.client(&addr)?;
        let mut request = Request::new(v1::Forwarded::from(Forwarded {
            hops: forwarded.hops + 1,
            ..forwarded
        }));
        request.set_timeout(FORWARD_TIMEOUT);
        match tokio::time::timeout(FORWARD_TIMEOUT, client.call(request)).await {
            Ok(Ok(reply)) => wire::answer_value(reply.into_inner()),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                if Reason::of(&status) == Some(Reason::NoLeader) {
                    return Err(status);
                }
                Err(Reason::NoLeader.status(format!(
                    "{NO_LEADER} (the leader at {addr} cannot be reached: {})",
                    status.message()
                )))
            }
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Reason::NoLeader.status(format!(
                "{NO_LEADER} (the leader at {addr} did not answer within {}s)",
                FORWARD_TIMEOUT.as_secs()
            ))),
        }
    }

    /// `service logs`: the lines of the tasks `query` names, from the nodes that ran them,
    /// through the leader's broker (asked directly when this manager leads).
    pub async fn logs(&self, query: LogsQuery) -> Result<LogStream, Status> {
        let (leader, addr) = self.wait_leader_addr(LEADER_WAIT).await?;
        if leader == self.inner.raft_id {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            logs::serve(&self.inner, query, tx)?;
            return Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)));
        }
        let mut client = self.client(&addr)?;
        let stream = client
            .logs(Request::new(v1::LogsQuery::from(query)))
            .await?
            .into_inner();
        Ok(Box::pin(tokio_stream::StreamExt::map(stream, |batch| {
            batch.and_then(|batch| {
                LogBatch::try_from(batch)
                    .map_err(|e| Status::internal(format!("decoding the leader's logs: {e}")))
            })
        })))
    }

    fn client(&self, addr: &str) -> Result<ControlClient<Channel>, Status> {
        let mut clients = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(addr) {
            return Ok(client.clone());
        }
        let channel = crate::tls::channel(addr, self.inner.client_tls.clone(), FORWARD_TIMEOUT)
            .map_err(|e| Status::internal(e.to_string()))?;
        let client = ControlClient::new(channel).max_decoding_message_size(64 << 20);
        clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// The leader's raft ID, waiting up to `timeout` for one to be elected.
    async fn wait_leader(&self, timeout: Duration) -> Result<u64, Status> {
        self.wait_leader_addr(timeout)
            .await
            .map(|(leader, _)| leader)
    }

    /// The leader's raft ID and address, waiting up to `timeout` for a leader this manager
    /// knows the address of (a manager that just joined learns the leader before the
    /// membership that names its address).
    async fn wait_leader_addr(&self, timeout: Duration) -> Result<(u64, String), Status> {
        let mut metrics = self.inner.raft.metrics();
        let found = tokio::time::timeout(timeout, async {
            loop {
                {
                    let now = metrics.borrow_and_update();
                    if let Some(leader) = now.current_leader {
                        if leader == self.inner.raft_id {
                            return Some((leader, self.inner.advertise.to_string()));
                        }
                        if let Some(node) = now.membership_config.membership().get_node(&leader) {
                            return Some((leader, node.addr.clone()));
                        }
                    }
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match found {
            Ok(Some(found)) => Ok(found),
            _ => Err(Reason::NoLeader.status(NO_LEADER)),
        }
    }

    fn heartbeat_seen(&self, node_id: &str) {
        self.inner
            .heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_owned(), Instant::now());
    }

    /// Stops serving and shuts raft down.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "shutting raft down");
        }
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            // Open connections are given a moment; the listener itself closes at once.
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("the cluster API did not stop within 5 s");
            }
        }
    }

    /// The data key sealing this manager's raft storage (and, under autolock, its key files).
    pub fn keys(&self) -> &crate::keys::DataKeys {
        &self.inner.keys
    }

    /// The identity in this manager's certificate.
    pub fn identity(&self) -> &NodeIdentity {
        &self.inner.identity
    }

    /// Serves and calls with `credentials` from now on (a renewed certificate, new roots):
    /// no listener or client is rebuilt; connections verified under other roots are checked
    /// again.
    pub fn update_credentials(
        &self,
        credentials: &Credentials,
    ) -> Result<(), crate::tls::TlsError> {
        // The roots are the store's once it has them (see `follow_trust`): the node's own view
        // may lag behind the end of a root rotation, and must not bring the old root back.
        let mut credentials = credentials.clone();
        if let Some(bundle) = ops::trusted_roots(&self.inner)
            && crate::tls::chain_trusted(&credentials.cert_pem, &bundle)
        {
            credentials.ca_pem = bundle;
        }
        self.inner.live.update(&credentials)?;
        self.inner
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }
}

/// The lines `service logs` gets, as they come.
pub type LogStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<LogBatch, Status>> + Send + 'static>>;

/// A stream of messages `M` a gRPC method answers with.
type Answers<M> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<M, Status>> + Send + 'static>>;

/// The messages of `stream`'s items.
fn answers<T: Send + 'static, M: From<T>>(
    stream: impl tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static,
) -> Answers<M> {
    Box::pin(tokio_stream::StreamExt::map(stream, |item| {
        item.map(M::from)
    }))
}

/// The gRPC services, all of which end in [`Manager::submit`] (but logs).
#[derive(Clone)]
struct Services {
    manager: Manager,
}

fn peer<T>(request: &Request<T>) -> (Option<NodeIdentity>, String) {
    let peer = request.extensions().get::<TlsPeer>();
    (
        peer.and_then(|p| p.identity.clone()),
        peer.map(|p| p.addr.ip().to_string()).unwrap_or_default(),
    )
}

/// The leader's answer (JSON while `Control.Call` carries it) as the typed message `M` of
/// the call's service.
fn typed<T: serde::de::DeserializeOwned, M: From<T>>(
    value: Result<Value, Status>,
) -> Result<Response<M>, Status> {
    let answer: T = serde_json::from_value(value?)
        .map_err(|e| Status::internal(format!("decoding the leader's answer: {e}")))?;
    Ok(Response::new(answer.into()))
}

#[tonic::async_trait]
impl control_server::Control for Services {
    async fn call(
        &self,
        request: Request<v1::Forwarded>,
    ) -> Result<Response<v1::CallAnswer>, Status> {
        require_manager(&request)?;
        let (identity, from) = peer(&request);
        let mut forwarded = Forwarded::try_from(request.into_inner()).map_err(wire::refused)?;
        if forwarded.hops == 0 {
            // Called directly, not forwarded: the caller is whoever holds the certificate.
            forwarded.caller = identity;
            forwarded.from = from;
        } else if let Some(forwarder) = &identity {
            // A caller named in the body is believed only from a manager that still is one.
            ops::require_current_manager(&self.manager.inner, forwarder)?;
        }
        let answer = self.manager.route(forwarded).await?;
        Ok(Response::new(wire::call_answer(&answer)))
    }

    type LogsStream = Answers<v1::LogBatch>;

    /// A manager forwards a `service logs` request: served here if this manager leads.
    async fn logs(
        &self,
        request: Request<v1::LogsQuery>,
    ) -> Result<Response<Answers<v1::LogBatch>>, Status> {
        require_manager(&request)?;
        let query = LogsQuery::from(request.into_inner());
        let inner = &self.manager.inner;
        if inner.raft.metrics().borrow().current_leader != Some(inner.raft_id) {
            return Err(Reason::NoLeader.status(NO_LEADER));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        logs::serve(inner, query, tx)?;
        Ok(Response::new(answers(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[tonic::async_trait]
impl ca_server::Ca for Services {
    async fn join(
        &self,
        request: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinReply>, Status> {
        let (_, from) = peer(&request);
        let join = request.into_inner().try_into().map_err(wire::refused)?;
        typed::<JoinReply, _>(self.manager.submit(Op::Join(join), None, from).await)
    }

    async fn renew(
        &self,
        request: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewReply>, Status> {
        let (caller, from) = peer(&request);
        if caller.is_none() {
            return Err(Status::unauthenticated(
                "renewing a certificate needs the current one",
            ));
        }
        let csr = request.into_inner().csr;
        typed::<RenewReply, _>(self.manager.submit(Op::Renew { csr }, caller, from).await)
    }
}

#[tonic::async_trait]
impl dispatcher_server::Dispatcher for Services {
    async fn heartbeat(
        &self,
        request: Request<v1::Heartbeat>,
    ) -> Result<Response<v1::HeartbeatReply>, Status> {
        let (caller, from) = peer(&request);
        if caller.is_none() {
            return Err(Status::unauthenticated("a node certificate is required"));
        }
        let heartbeat = request.into_inner().try_into().map_err(wire::refused)?;
        crate::metrics::control().heartbeats.inc();
        typed::<HeartbeatReply, _>(
            self.manager
                .submit(Op::Heartbeat(heartbeat), caller, from)
                .await,
        )
    }

    type AssignmentsStream = Answers<v1::Assignment>;

    /// Streams the caller's assignment from this manager's replica: now, and again whenever
    /// what it says changes.
    async fn assignments(
        &self,
        request: Request<v1::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let (caller, _) = peer(&request);
        let node_id = caller
            .ok_or_else(|| Status::unauthenticated("a node certificate is required"))?
            .node_id;
        let inner = self.manager.inner.clone();
        if inner
            .store
            .view(|tx| tx.get(crate::store::Kind::Node, &node_id).is_none())
        {
            return Err(Status::not_found(format!(
                "node {node_id} is not in the swarm"
            )));
        }
        // Only the leader's replica is known to be current: a follower cut off from the leader
        // would keep serving what it last saw.
        if inner.raft.metrics().borrow().current_leader != Some(inner.raft_id) {
            return Err(Status::unavailable(
                "this manager is not the leader: assignments come from the leader",
            ));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _session = crate::metrics::SessionGuard::open();
            services::stream_assignments(inner, node_id, tx).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report(
        &self,
        request: Request<v1::StatusReport>,
    ) -> Result<Response<v1::ReportReply>, Status> {
        let (caller, from) = peer(&request);
        if caller.is_none() {
            return Err(Status::unauthenticated("a node certificate is required"));
        }
        let report = request.into_inner().try_into().map_err(wire::refused)?;
        self.manager
            .submit(Op::Report(report), caller, from)
            .await?;
        Ok(Response::new(v1::ReportReply {}))
    }

    type LogsStream = Answers<v1::NodeLogRequest>;

    /// A node's log session: requests for its tasks' lines go down, the lines come up.
    async fn logs(
        &self,
        request: Request<tonic::Streaming<v1::NodeLogReply>>,
    ) -> Result<Response<Answers<v1::NodeLogRequest>>, Status> {
        let node_id = request
            .extensions()
            .get::<TlsPeer>()
            .and_then(|p| p.identity.clone())
            .ok_or_else(|| Status::unauthenticated("a node certificate is required"))?
            .node_id;
        let inner = self.manager.inner.clone();
        if inner.raft.metrics().borrow().current_leader != Some(inner.raft_id) {
            return Err(Status::unavailable(
                "this manager is not the leader: log sessions are with the leader",
            ));
        }
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let broker = inner.logs.clone();
        let session = broker.connect(&node_id, tx);
        let mut stopped = inner.stop.subscribe();
        let mut metrics = inner.raft.metrics();
        let me = inner.raft_id;
        tokio::spawn(async move {
            loop {
                // The session ends with the leadership (the node asks the new leader) and with
                // the manager.
                let message = tokio::select! {
                    message = incoming.message() => message,
                    _ = stopped.wait_for(|s| *s) => break,
                    _ = metrics.wait_for(|m| m.current_leader != Some(me)) => break,
                };
                let Ok(Some(message)) = message else { break };
                match logs::FromNode::try_from(message) {
                    Ok(message) => broker.deliver(&node_id, message).await,
                    Err(e) => {
                        tracing::debug!(node = %node_id, error = %e, "an undecodable log message");
                        break;
                    }
                }
            }
            broker.disconnect(&node_id, session);
        });
        Ok(Response::new(answers(tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Ok::<_, Status>,
        ))))
    }
}
