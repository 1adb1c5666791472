//! Raft's messages over the managers' mutual-TLS gRPC: the client side openraft calls
//! ([`RaftClients`]), and the server side ([`RaftService`]) that hands them to the local node.
//! Both carry openraft's requests and answers as the typed messages of `raft.proto`
//! ([`super::wire`] converts).
//!
//! The leader sends appends on one long-lived connection per follower, answered in order: on
//! the appends' own protocol ([`super::appends`]), or on a gRPC stream
//! (`AppendEntriesStream`) to a manager that does not speak it. Votes and snapshot chunks are
//! gRPC calls of their own.
//!
//! The client side also records when each peer last answered: the leader's view of which
//! managers are reachable (`node ls`'s MANAGER STATUS, and the quorum check before a demotion).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use openraft::{
    RaftNetwork, RaftNetworkFactory,
    error::{
        Infallible, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError,
        RemoteError, Unreachable,
    },
    network::RPCOption,
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
};
use prost::Message as _;
use rustls::ClientConfig;
use shoal_api::v1::{self, raft_client::RaftClient, raft_server};
use tokio::{
    io::{AsyncWriteExt as _, BufReader},
    sync::{mpsc, watch},
};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Status};

use super::{
    NodeId, Raft, RaftMember, TypeConfig,
    appends::{self, AppendsConn},
    guard::{self, InBounds},
    log::Durability,
    wire,
};
use crate::{
    ca::{NodeIdentity, Role},
    store::Store,
    tls::{TlsConn, TlsPeer},
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
    appends_tls: Arc<ClientConfig>,
    contacts: Contacts,
    durability: Durability,
}

impl RaftClients {
    /// Clients that call peers with `tls`, recording answers in `contacts`, telling them no
    /// commit index past what this manager's log holds on disk (`durability`).
    pub fn new(tls: Arc<ClientConfig>, contacts: Contacts, durability: Durability) -> Self {
        Self {
            appends_tls: appends::client_config(&tls),
            tls,
            contacts,
            durability,
        }
    }
}

/// A client to one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<tonic::transport::Channel>>,
    appends: Option<Appends>,
    /// False once the peer refused the appends' protocol: the gRPC stream then.
    speaks_appends: bool,
    tls: Arc<ClientConfig>,
    appends_tls: Arc<ClientConfig>,
    contacts: Contacts,
    durability: Durability,
}

/// The open connection of appends to a peer: one message out, its answer back, in turn.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per peer, made when a connection opens and never moved after"
)]
enum Appends {
    /// The appends' own protocol.
    Framed(AppendsConn),
    /// A gRPC stream (a peer that does not speak it).
    Grpc {
        requests: mpsc::Sender<v1::AppendEntriesRequest>,
        replies: tonic::Streaming<v1::AppendEntriesReply>,
    },
}

impl Appends {
    /// Sends one message.
    async fn send(&mut self, message: v1::AppendEntriesRequest) -> Result<(), Status> {
        match self {
            Self::Framed(conn) => conn.send(&message).await,
            Self::Grpc { requests, .. } => {
                requests.send(message).await.map_err(|_| stream_closed())
            }
        }
    }

    /// Reads the answer to the message sent last.
    async fn answer(&mut self) -> Result<v1::AppendEntriesReply, Status> {
        match self {
            Self::Framed(conn) => conn.answer().await,
            Self::Grpc { replies, .. } => match replies.message().await {
                Ok(Some(reply)) => Ok(reply),
                Ok(None) => Err(stream_closed()),
                Err(status) => Err(status),
            },
        }
    }
}

/// The gRPC stream of appends ended under a message.
fn stream_closed() -> Status {
    Status::unavailable("the stream of appends closed")
}

impl RaftNetworkFactory<TypeConfig> for RaftClients {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &RaftMember) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            client: None,
            appends: None,
            speaks_appends: true,
            tls: self.tls.clone(),
            appends_tls: self.appends_tls.clone(),
            contacts: self.contacts.clone(),
            durability: self.durability.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

/// A raft call's failure, as openraft takes it (`E`: the call's own error).
type CallError<E> = RPCError<NodeId, RaftMember, RaftError<NodeId, E>>;

/// A transport failure openraft retries.
fn network<E: std::error::Error>(e: impl std::error::Error + 'static) -> CallError<E> {
    RPCError::Network(NetworkError::new(&e))
}

/// The peer at `addr` refused a call, or could not be reached.
fn refused_by<E: std::error::Error>(addr: &str, status: &Status) -> CallError<E> {
    let failed = Failed(format!("{addr}: {}", status.message()));
    if status.code() == tonic::Code::Unavailable {
        RPCError::Unreachable(Unreachable::new(&failed))
    } else {
        network(failed)
    }
}

/// The peer at `addr` did not answer within `ttl`.
fn no_answer<E: std::error::Error>(addr: &str, ttl: Duration) -> CallError<E> {
    let failed = Failed(format!("{addr}: no answer within {ttl:?}"));
    RPCError::Unreachable(Unreachable::new(&failed))
}

#[expect(
    clippy::result_large_err,
    reason = "openraft's RaftNetwork answers with its RPCError, whose size is openraft's"
)]
impl PeerClient {
    /// Refuses a message of `len` bytes (carrying `entries` log entries, for append-entries)
    /// over what the peer accepts: openraft then sends fewer entries at once.
    fn check_size<E: std::error::Error>(
        &self,
        len: usize,
        entries: Option<usize>,
    ) -> Result<(), CallError<E>> {
        if len <= MAX_MESSAGE {
            return Ok(());
        }
        Err(match entries {
            Some(n) if n > 1 => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(n as u64 / 2))
            }
            _ => network(Failed(format!(
                "{}: a raft message of {len} bytes, over the {MAX_MESSAGE} a peer accepts",
                self.addr
            ))),
        })
    }

    /// The client to the peer, connected on first use.
    fn connect<E: std::error::Error>(
        &mut self,
        option: &RPCOption,
    ) -> Result<RaftClient<tonic::transport::Channel>, CallError<E>> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let channel = crate::tls::channel(&self.addr, self.tls.clone(), option.hard_ttl())
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let client = RaftClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Waits for `call`'s answer within the call's deadline; a peer that does not answer, or
    /// refuses the call, as openraft's errors.
    async fn answer<T, E: std::error::Error>(
        &self,
        option: &RPCOption,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, CallError<E>> {
        match tokio::time::timeout(option.hard_ttl(), call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(refused_by(&self.addr, &status)),
            Err(_) => Err(no_answer(&self.addr, option.hard_ttl())),
        }
    }

    /// Sends `message` on the connection of appends (opened on first use) and waits for its
    /// answer within the call's deadline. The connection is out of `self` while a message is on
    /// it, and goes back only after a clean answer: after a failure, or when this future is
    /// dropped (openraft times each append out itself, with the same deadline), the next append
    /// opens another, so an answer is never taken for another message's.
    async fn exchange<E: std::error::Error>(
        &mut self,
        message: v1::AppendEntriesRequest,
        option: &RPCOption,
    ) -> Result<v1::AppendEntriesReply, CallError<E>> {
        let ttl = option.hard_ttl();
        let open = self.appends.take();
        let (appends, answer) =
            match tokio::time::timeout(ttl, self.send_append(open, message, option)).await {
                Ok(done) => done,
                Err(_) => return Err(no_answer(&self.addr, ttl)),
            };
        match answer {
            Ok(reply) => {
                self.appends = appends;
                Ok(reply)
            }
            Err(e) => {
                // A gRPC stream broke: the peer may speak the appends' protocol by now (it
                // restarted, upgraded); the next connection asks it again.
                if matches!(appends, Some(Appends::Grpc { .. })) {
                    self.speaks_appends = true;
                }
                Err(e)
            }
        }
    }

    /// Sends `message` on `appends`, or on a connection opened for it, and reads its answer:
    /// the connection it went on (if any) and the answer.
    async fn send_append<E: std::error::Error>(
        &mut self,
        appends: Option<Appends>,
        message: v1::AppendEntriesRequest,
        option: &RPCOption,
    ) -> (
        Option<Appends>,
        Result<v1::AppendEntriesReply, CallError<E>>,
    ) {
        let mut appends = match appends {
            Some(mut appends) => match appends.send(message).await {
                Ok(()) => appends,
                Err(status) => return (None, Err(refused_by(&self.addr, &status))),
            },
            None => match self.open_appends(message, option).await {
                Ok(appends) => appends,
                Err(e) => return (None, Err(e)),
            },
        };
        let answer = appends
            .answer()
            .await
            .map_err(|status| refused_by(&self.addr, &status));
        (Some(appends), answer)
    }

    /// Opens a connection of appends with `message` on it: the appends' own protocol, or a gRPC
    /// stream to a peer that refuses it.
    async fn open_appends<E: std::error::Error>(
        &mut self,
        message: v1::AppendEntriesRequest,
        option: &RPCOption,
    ) -> Result<Appends, CallError<E>> {
        if self.speaks_appends {
            match AppendsConn::open(&self.addr, self.appends_tls.clone(), option.hard_ttl()).await {
                Ok(mut conn) => {
                    conn.send(&message)
                        .await
                        .map_err(|status| refused_by(&self.addr, &status))?;
                    return Ok(Appends::Framed(conn));
                }
                Err(e) if appends::not_spoken(&e) => {
                    tracing::info!(peer = %self.addr, "the peer does not speak the appends' protocol: appends go on a gRPC stream");
                    self.speaks_appends = false;
                }
                Err(e) => {
                    let failed = Failed(format!("{}: {e}", self.addr));
                    return Err(RPCError::Unreachable(Unreachable::new(&failed)));
                }
            }
        }
        // The first message is queued before the stream opens, so it leaves with the stream's
        // headers: opening costs no round trip of its own.
        let (requests, outgoing) = mpsc::channel(1);
        if requests.try_send(message).is_err() {
            return Err(refused_by(&self.addr, &stream_closed()));
        }
        let mut client = self.connect(option)?;
        let replies = client
            .append_entries_stream(ReceiverStream::new(outgoing))
            .await
            .map_err(|status| refused_by(&self.addr, &status))?
            .into_inner();
        Ok(Appends::Grpc { requests, replies })
    }

    /// What the peer answered, as openraft sees it: refused when out of bounds
    /// ([`InBounds`]); the peer's contact recorded.
    fn answered<Resp: InBounds, E: std::error::Error>(
        &self,
        answer: Result<Result<Resp, RaftError<NodeId, E>>, wire::WireError>,
    ) -> Result<Resp, CallError<E>> {
        let answer = answer.map_err(|e| network(Failed(format!("{}: {e}", self.addr))))?;
        if let Ok(resp) = &answer
            && let Some(why) = resp.out_of_bounds()
        {
            return Err(network(Failed(format!("{}: {why}", self.addr))));
        }
        self.contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.target, Instant::now());
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// `request` with the call's deadline.
    fn request<T>(message: T, option: &RPCOption) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(option.hard_ttl());
        request
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, CallError<Infallible>> {
        let mut rpc = rpc;
        // A follower applies what it hears is committed: never an entry this leader does not
        // hold on disk yet (raft/log.rs).
        rpc.leader_commit = self.durability.bound(rpc.leader_commit);
        if rpc.entries.is_empty() {
            // A heartbeat, or a new commit index: openraft sends one to each follower as an
            // entry commits, just before it applies the entry and answers the client. It can
            // wait for those (the tasks woken with it) to run first.
            tokio::task::yield_now().await;
        }
        let message = wire::to_append(&rpc);
        self.check_size(message.encoded_len(), Some(rpc.entries.len()))?;
        let reply = self.exchange(message, &option).await?;
        self.answered(wire::from_append_reply(reply))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, CallError<InstallSnapshotError>> {
        let message = wire::to_snapshot(rpc);
        self.check_size(message.encoded_len(), None)?;
        let mut client = self.connect(&option)?;
        let call = client.install_snapshot(Self::request(message, &option));
        let reply = self.answer(&option, call).await?;
        self.answered(wire::from_snapshot_reply(reply))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, CallError<Infallible>> {
        let message = wire::to_vote_request(&rpc);
        let mut client = self.connect(&option)?;
        let call = client.vote(Self::request(message, &option));
        let reply = self.answer(&option, call).await?;
        self.answered(wire::from_vote_reply(reply))
    }
}

/// Only managers may call the cluster API's managers-only services.
pub(crate) fn require_manager<T>(request: &Request<T>) -> Result<(), Status> {
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
    manager_identity(extensions.get::<TlsPeer>())
}

/// The identity of `peer`'s certificate, when it is a manager's.
fn manager_identity(peer: Option<&TlsPeer>) -> Result<&NodeIdentity, Status> {
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
        raft_member(&self.raft, &self.store, request.extensions().get())?;
        Ok(request)
    }
}

/// The identity of `peer`'s certificate and whom it speaks for, when it is a manager's whose
/// node holds a raft membership here ([`guard::speaker`]).
fn raft_member<'a>(
    raft: &Raft,
    store: &Store,
    peer: Option<&'a TlsPeer>,
) -> Result<(&'a NodeIdentity, guard::Speaker), Status> {
    let identity = manager_identity(peer)?;
    Ok((identity, guard::speaker(raft, store, &identity.node_id)?))
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
    pub fn new(raft: Raft, store: Store) -> Self {
        Self {
            raft,
            store,
            snapshots: Arc::default(),
        }
    }

    /// The gRPC service, which reads a message only from a raft member ([`RaftMembersOnly`]).
    pub fn grpc(
        self,
    ) -> tonic::service::interceptor::InterceptedService<
        raft_server::RaftServer<Self>,
        RaftMembersOnly,
    > {
        let check = RaftMembersOnly {
            raft: self.raft.clone(),
            store: self.store.clone(),
        };
        tonic::service::interceptor::InterceptedService::new(
            raft_server::RaftServer::new(self).max_decoding_message_size(MAX_MESSAGE),
            check,
        )
    }

    /// Serves one connection that chose the appends' own protocol ([`appends`]), until the
    /// leader closes it, it stays silent or takes no answer for [`appends::IDLE`], a message is
    /// refused, or `stop` turns true.
    pub async fn serve_appends(self, conn: TlsConn, mut stop: watch::Receiver<bool>) {
        let peer = conn.peer().clone();
        let mut conn = BufReader::new(conn);
        tokio::select! {
            () = self.answer_appends(&mut conn, &peer) => {}
            _ = stop.wait_for(|stop| *stop) => {}
        }
        // A peer that takes nothing does not hold the task: the TLS close is not waited for.
        let _ = tokio::time::timeout(appends::IDLE, conn.shutdown()).await;
        // What the leader sent after a refusal is read and dropped until it closes too (for a
        // short while): closing with it unread would reset the connection, and the reset can
        // reach the leader before it has read the refusal.
        appends::linger(&mut conn).await;
    }

    async fn answer_appends(&self, conn: &mut BufReader<TlsConn>, peer: &TlsPeer) {
        let answered = async {
            // As the gRPC service's check: before any message is read.
            let node_id = self.member(peer)?;
            while let Some(message) = appends::next_append(conn, MAX_MESSAGE).await? {
                let reply = self.append(&node_id, message).await?;
                if appends::send_reply(conn, &reply).await.is_err() {
                    break;
                }
            }
            Ok::<_, Status>(())
        };
        if let Err(status) = answered.await {
            tracing::debug!(peer = %peer.addr, error = %status.message(), "refusing a raft append");
            appends::send_refusal(conn, &status).await;
        }
    }

    /// The node ID of `peer` when its certificate is a manager's whose node holds a raft
    /// membership here: the check [`RaftMembersOnly`] makes, for the appends' own protocol.
    fn member(&self, peer: &TlsPeer) -> Result<String, Status> {
        raft_member(&self.raft, &self.store, Some(peer)).map(|(id, _)| id.node_id.clone())
    }

    /// Whom the caller's certificate speaks for (checked again: membership may have changed
    /// while the body was read).
    fn speaker<T>(&self, request: &Request<T>) -> Result<guard::Speaker, Status> {
        raft_member(&self.raft, &self.store, request.extensions().get()).map(|(_, s)| s)
    }

    /// One append from the manager `node_id`, checked as it arrives (on a stream, its
    /// membership may end between two messages).
    async fn append(
        &self,
        node_id: &str,
        message: v1::AppendEntriesRequest,
    ) -> Result<v1::AppendEntriesReply, Status> {
        let speaker = guard::speaker(&self.raft, &self.store, node_id)?;
        let rpc = wire::from_append(message).map_err(refused)?;
        guard::check_append(&rpc, &speaker)?;
        let answer = self.raft.append_entries(rpc).await;
        Ok(wire::to_append_reply(&answer))
    }
}

/// The answers on a stream of appends, in the order of the messages.
pub type AppendAnswers = Pin<Box<dyn Stream<Item = Result<v1::AppendEntriesReply, Status>> + Send>>;

/// A raft message that does not decode: the caller's error.
fn refused(e: wire::WireError) -> Status {
    Status::invalid_argument(format!("decoding the raft message: {e}"))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<v1::AppendEntriesRequest>,
    ) -> Result<tonic::Response<v1::AppendEntriesReply>, Status> {
        let node_id = manager_peer(request.extensions())?.node_id.clone();
        let reply = self.append(&node_id, request.into_inner()).await?;
        Ok(tonic::Response::new(reply))
    }

    type AppendEntriesStreamStream = AppendAnswers;

    async fn append_entries_stream(
        &self,
        request: Request<tonic::Streaming<v1::AppendEntriesRequest>>,
    ) -> Result<tonic::Response<AppendAnswers>, Status> {
        let node_id = manager_peer(request.extensions())?.node_id.clone();
        let context = Arc::new((self.clone(), node_id));
        // One message at a time: the next is read once this one is answered.
        let answers = request.into_inner().then(move |message| {
            let context = context.clone();
            async move {
                let (service, node_id) = &*context;
                service.append(node_id, message?).await
            }
        });
        Ok(tonic::Response::new(Box::pin(answers)))
    }

    async fn vote(
        &self,
        request: Request<v1::VoteRequest>,
    ) -> Result<tonic::Response<v1::VoteReply>, Status> {
        let speaker = self.speaker(&request)?;
        let rpc = wire::from_vote_request(request.into_inner()).map_err(refused)?;
        guard::check_vote(&rpc, &speaker)?;
        let answer = self.raft.vote(rpc).await;
        Ok(tonic::Response::new(wire::to_vote_reply(&answer)))
    }

    async fn install_snapshot(
        &self,
        request: Request<v1::InstallSnapshotRequest>,
    ) -> Result<tonic::Response<v1::InstallSnapshotReply>, Status> {
        let speaker = self.speaker(&request)?;
        let rpc = wire::from_snapshot(request.into_inner()).map_err(refused)?;
        let chunk = self.snapshots.admit(&rpc, &speaker).await?;
        let answer = self.raft.install_snapshot(rpc).await;
        if answer.is_ok() {
            chunk.taken();
        }
        Ok(tonic::Response::new(wire::to_snapshot_reply(&answer)))
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

    /// A follower that answers each append with a higher vote of the append's own term (so an
    /// answer says which append it is for), on its first connection only after `delay`.
    async fn echoing_follower(live: Arc<crate::tls::LiveTls>, delay: Duration) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(live.server_config().unwrap());
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let slow = std::mem::take(&mut first);
                tokio::spawn(async move {
                    let mut conn = BufReader::new(tls);
                    while let Ok(Some(message)) = appends::next_append(&mut conn, MAX_MESSAGE).await
                    {
                        if slow {
                            tokio::time::sleep(delay).await;
                        }
                        let term = message.vote.map_or(0, |v| v.term);
                        let reply = v1::AppendEntriesReply {
                            answer: Some(v1::append_entries_reply::Answer::HigherVote(v1::Vote {
                                term,
                                node_id: 2,
                                committed: true,
                            })),
                        };
                        if appends::send_reply(&mut conn, &reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// openraft times each append out itself and drops it mid-flight; the answer that append
    /// was waiting for must never be taken for the next one's (a stale success would count a
    /// follower for entries it has not written).
    #[tokio::test]
    async fn an_append_dropped_mid_flight_never_lends_its_answer_to_the_next() {
        let live = crate::raft::test_tls::manager_tls();
        let addr = echoing_follower(live.clone(), Duration::from_millis(300)).await;
        let tls = live.client_config().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = crate::keys::DataKey::generate().unwrap();
        let log = crate::raft::log::LogStore::open(dir.path(), key, 1).unwrap();
        let mut peer = PeerClient {
            target: 2,
            addr,
            client: None,
            appends: None,
            speaks_appends: true,
            appends_tls: appends::client_config(&tls),
            tls,
            contacts: Contacts::default(),
            durability: log.durability(),
        };
        let append = |term: u64| AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(term, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        let option = || RPCOption::new(Duration::from_secs(2));
        // As openraft's own timeout does: the append is dropped before its answer comes.
        let dropped = tokio::time::timeout(
            Duration::from_millis(50),
            peer.append_entries(append(7), option()),
        )
        .await;
        assert!(
            dropped.is_err(),
            "the first append was answered: {dropped:?}"
        );
        match peer.append_entries(append(8), option()).await {
            Ok(AppendEntriesResponse::HigherVote(vote)) => assert_eq!(vote.leader_id.term, 8),
            other => panic!("expected the second append's own answer, got {other:?}"),
        }
    }

    /// A batch of entries larger than a peer accepts is sent in smaller batches: openraft is
    /// told so (with a hint of half as many), never the peer.
    #[tokio::test]
    async fn a_batch_over_the_message_limit_asks_openraft_for_fewer_entries() {
        let tls = ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let dir = tempfile::tempdir().unwrap();
        let key = crate::keys::DataKey::generate().unwrap();
        let log = crate::raft::log::LogStore::open(dir.path(), key, 1).unwrap();
        let mut peer = PeerClient {
            target: 2,
            // Nothing listens there; the batch must be refused before any connection.
            addr: "127.0.0.1:9".to_owned(),
            client: None,
            appends: None,
            speaks_appends: true,
            appends_tls: appends::client_config(&tls),
            tls: Arc::new(tls),
            contacts: Contacts::default(),
            durability: log.durability(),
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
