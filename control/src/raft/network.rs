//! Raft's messages over the managers' mutual-TLS gRPC: the client side openraft calls
//! ([`RaftClients`]), and the server side ([`RaftService`]) that hands them to the local node.
//! Both carry openraft's own request and response types as JSON in a [`Frame`].
//!
//! The client side also records when each peer last answered: the leader's view of which
//! managers are reachable (`node ls`'s MANAGER STATUS, and the quorum check before a demotion).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use openraft::{
    RaftNetwork, RaftNetworkFactory,
    error::{
        InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
        Unreachable,
    },
    network::RPCOption,
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
};
use rustls::ClientConfig;
use serde::{Serialize, de::DeserializeOwned};
use shoal_api::v1::{Frame, raft_client::RaftClient, raft_server};
use tonic::{Request, Status};

use super::{
    NodeId, Raft, RaftMember, TypeConfig,
    guard::{self, InBounds},
};
use crate::{
    ca::{NodeIdentity, Role},
    store::Store,
    tls::TlsPeer,
};

/// The largest raft message a manager accepts (snapshots travel in chunks of a few MiB). A
/// batch of entries that would be larger goes in smaller batches (each entry is at most
/// [`crate::limits::MAX_ENTRY_BYTES`]).
pub const MAX_MESSAGE: usize = 64 << 20;

/// When each peer last answered a raft RPC from this node.
pub type Contacts = Arc<Mutex<HashMap<NodeId, Instant>>>;

/// Makes raft clients to peers.
#[derive(Debug, Clone)]
pub struct RaftClients {
    tls: Arc<ClientConfig>,
    contacts: Contacts,
}

impl RaftClients {
    /// Clients that call peers with `tls`, recording answers in `contacts`.
    pub fn new(tls: Arc<ClientConfig>, contacts: Contacts) -> Self {
        Self { tls, contacts }
    }
}

/// A client to one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<tonic::transport::Channel>>,
    tls: Arc<ClientConfig>,
    contacts: Contacts,
}

impl RaftNetworkFactory<TypeConfig> for RaftClients {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &RaftMember) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            client: None,
            tls: self.tls.clone(),
            contacts: self.contacts.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

impl PeerClient {
    /// Sends `request` (carrying `entries` log entries, for append-entries) and reads the answer.
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        request: &Req,
        entries: Option<usize>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, RaftMember, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned + InBounds,
        E: std::error::Error + DeserializeOwned,
    {
        let json =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if json.len() > MAX_MESSAGE {
            // The peer would refuse it: openraft sends fewer entries at once, at once.
            return Err(match entries {
                Some(n) if n > 1 => {
                    RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(n as u64 / 2))
                }
                _ => RPCError::Network(NetworkError::new(&Failed(format!(
                    "{}: a raft message of {} bytes, over the {MAX_MESSAGE} a peer accepts",
                    self.addr,
                    json.len()
                )))),
            });
        }
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let channel = crate::tls::channel(&self.addr, self.tls.clone(), option.hard_ttl())
                    .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
                let client = RaftClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
                self.client = Some(client.clone());
                client
            }
        };
        let mut request = Request::new(Frame { json });
        request.set_timeout(option.hard_ttl());
        let reply = match tokio::time::timeout(option.hard_ttl(), method(client, request)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => {
                let failed = Failed(format!("{}: {}", self.addr, status.message()));
                return Err(if status.code() == tonic::Code::Unavailable {
                    RPCError::Unreachable(Unreachable::new(&failed))
                } else {
                    RPCError::Network(NetworkError::new(&failed))
                });
            }
            Err(_) => {
                let failed = Failed(format!(
                    "{}: no answer within {:?}",
                    self.addr,
                    option.hard_ttl()
                ));
                return Err(RPCError::Unreachable(Unreachable::new(&failed)));
            }
        };
        let answer: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Ok(resp) = &answer
            && let Some(why) = resp.out_of_bounds()
        {
            let failed = Failed(format!("{}: {why}", self.addr));
            return Err(RPCError::Network(NetworkError::new(&failed)));
        }
        self.contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.target, Instant::now());
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// One of the raft service's client methods.
type Method = fn(
    RaftClient<tonic::transport::Channel>,
    Request<Frame>,
) -> futures_like::BoxFuture<Result<tonic::Response<Frame>, Status>>;

/// Boxed futures for the method table above (tonic's client methods borrow `&mut self`).
mod futures_like {
    use std::{future::Future, pin::Pin};
    /// A boxed, sendable future.
    pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
}

fn append(
    mut c: RaftClient<tonic::transport::Channel>,
    r: Request<Frame>,
) -> futures_like::BoxFuture<Result<tonic::Response<Frame>, Status>> {
    Box::pin(async move { c.append_entries(r).await })
}

fn vote(
    mut c: RaftClient<tonic::transport::Channel>,
    r: Request<Frame>,
) -> futures_like::BoxFuture<Result<tonic::Response<Frame>, Status>> {
    Box::pin(async move { c.vote(r).await })
}

fn snapshot(
    mut c: RaftClient<tonic::transport::Channel>,
    r: Request<Frame>,
) -> futures_like::BoxFuture<Result<tonic::Response<Frame>, Status>> {
    Box::pin(async move { c.install_snapshot(r).await })
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, RaftMember, RaftError<NodeId>>>
    {
        let entries = rpc.entries.len();
        self.call(append, &rpc, Some(entries), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, RaftMember, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(snapshot, &rpc, None, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, RaftMember, RaftError<NodeId>>> {
        self.call(vote, &rpc, None, &option).await
    }
}

/// Only managers may call the cluster API's managers-only services.
pub(crate) fn require_manager(request: &Request<Frame>) -> Result<(), Status> {
    manager_peer(request.extensions()).map(drop)
}

/// An interceptor: a check on a request's metadata and connection, before its body is read.
pub type Check = fn(Request<()>) -> Result<Request<()>, Status>;

/// An interceptor for the managers-only services: it runs before the request body is read, so
/// a caller without a manager certificate cannot make the server buffer a large message.
pub fn managers_only(request: Request<()>) -> Result<Request<()>, Status> {
    manager_peer(request.extensions())?;
    Ok(request)
}

/// An interceptor for the services only nodes of the swarm call (the dispatcher): a node
/// certificate, checked before the request body is read.
pub fn nodes_only(request: Request<()>) -> Result<Request<()>, Status> {
    let peer = request.extensions().get::<TlsPeer>();
    if peer.and_then(|p| p.identity.as_ref()).is_none() {
        return Err(Status::unauthenticated("a node certificate is required"));
    }
    Ok(request)
}

fn manager_peer(extensions: &tonic::Extensions) -> Result<&NodeIdentity, Status> {
    let peer = extensions.get::<TlsPeer>();
    match peer.and_then(|p| p.identity.as_ref()) {
        Some(identity) if identity.role == Role::Manager => Ok(identity),
        Some(_) => Err(Status::permission_denied(
            "only managers may call this: the caller's certificate is a worker's",
        )),
        None => Err(Status::unauthenticated(
            "a swarm certificate is required to call this",
        )),
    }
}

fn decode<T: DeserializeOwned>(request: Request<Frame>) -> Result<T, Status> {
    serde_json::from_slice(&request.into_inner().json)
        .map_err(|e| Status::invalid_argument(format!("decoding the raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<Frame>, Status> {
    serde_json::to_vec(value)
        .map(|json| tonic::Response::new(Frame { json }))
        .map_err(|e| Status::internal(format!("encoding the raft message: {e}")))
}

/// The raft service's check before a message is read: a manager certificate whose node holds
/// a raft membership here ([`guard::speaker`]).
#[derive(Clone)]
pub struct RaftMembersOnly {
    raft: Raft,
    store: Store,
}

impl std::fmt::Debug for RaftMembersOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftMembersOnly").finish_non_exhaustive()
    }
}

impl tonic::service::Interceptor for RaftMembersOnly {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let identity = manager_peer(request.extensions())?;
        guard::speaker(&self.raft, &self.store, &identity.node_id)?;
        Ok(request)
    }
}

/// The raft service a manager serves: hands peers' messages to the local raft node once
/// [`guard`] has checked who sent them and what they say.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    store: Store,
    snapshots: Arc<guard::SnapshotGuard>,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService").finish_non_exhaustive()
    }
}

impl RaftService {
    /// Serves `raft` to the raft members recorded in it and in `store`.
    pub fn new(
        raft: Raft,
        store: Store,
    ) -> tonic::service::interceptor::InterceptedService<
        raft_server::RaftServer<Self>,
        RaftMembersOnly,
    > {
        let check = RaftMembersOnly {
            raft: raft.clone(),
            store: store.clone(),
        };
        tonic::service::interceptor::InterceptedService::new(
            raft_server::RaftServer::new(Self {
                raft,
                store,
                snapshots: Arc::default(),
            })
            .max_decoding_message_size(MAX_MESSAGE),
            check,
        )
    }

    /// Whom the caller's certificate speaks for (checked again: membership may have changed
    /// while the body was read).
    fn speaker(&self, request: &Request<Frame>) -> Result<guard::Speaker, Status> {
        let identity = manager_peer(request.extensions())?;
        guard::speaker(&self.raft, &self.store, &identity.node_id)
    }
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<Frame>,
    ) -> Result<tonic::Response<Frame>, Status> {
        let speaker = self.speaker(&request)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request)?;
        guard::check_append(&rpc, &speaker)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<Frame>) -> Result<tonic::Response<Frame>, Status> {
        let speaker = self.speaker(&request)?;
        let rpc: VoteRequest<NodeId> = decode(request)?;
        guard::check_vote(&rpc, &speaker)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<Frame>,
    ) -> Result<tonic::Response<Frame>, Status> {
        let speaker = self.speaker(&request)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        let chunk = self.snapshots.admit(&rpc, &speaker).await?;
        let answer = self.raft.install_snapshot(rpc).await;
        if answer.is_ok() {
            chunk.taken();
        }
        encode(&answer)
    }
}

/// How long ago each peer last answered (the leader's view).
pub fn last_contact(contacts: &Contacts, peer: NodeId) -> Option<Duration> {
    contacts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&peer)
        .map(Instant::elapsed)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
    use serde_json::Value;

    use super::*;
    use crate::raft::{Entry, Request as Proposal};
    use crate::store::{Change, ChangeSet, Kind};

    /// A batch of entries larger than a peer accepts is sent in smaller batches: openraft is
    /// told so (with a hint of half as many), never the peer.
    #[tokio::test]
    async fn a_batch_over_the_message_limit_asks_openraft_for_fewer_entries() {
        let tls = ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut peer = PeerClient {
            target: 2,
            // Nothing listens there; the batch must be refused before any connection.
            addr: "127.0.0.1:9".to_owned(),
            client: None,
            tls: Arc::new(tls),
            contacts: Contacts::default(),
        };
        let body = Value::String("x".repeat(crate::limits::MAX_ENTRY_BYTES - 1024));
        let entry = |index: u64| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                batch: vec![ChangeSet(vec![Change::Create {
                    kind: Kind::Service,
                    id: format!("s{index}"),
                    body: body.clone(),
                }])],
            }),
        };
        let n = MAX_MESSAGE / crate::limits::MAX_ENTRY_BYTES + 2;
        let rpc = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: (1..=n as u64).map(entry).collect(),
            leader_commit: None,
        };
        let option = RPCOption::new(Duration::from_secs(1));
        match peer.append_entries(rpc, option).await {
            Err(RPCError::PayloadTooLarge(too_large)) => {
                assert_eq!(too_large.entries_hint(), n as u64 / 2);
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
    }
}
