//! What the leader does with each operation, and its maintenance loop (nodes Down after three
//! missed heartbeats; snapshots every `SnapshotInterval` entries).

use std::{
    collections::BTreeSet,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use openraft::ChangeMembers;
use serde_json::{Value, json};
use shoal_api::call::{ClusterCall, ManagerCall};
use shoal_api::reason::Reason;
use shoal_api::swarm::{
    JoinTokens, ManagerStatus, Node, NodeDescription, NodeState, NodeStatus, NodeUpdate, Role,
    SwarmUpdateArgs,
};
use shoal_api::version::Version;
use tokio::sync::watch;
use tonic::Status;

use super::{
    Inner, Manager,
    cluster::{ClusterRecord, RootRotation, cluster, heartbeat_period},
    protocol::{Forwarded, Heartbeat, HeartbeatReply, JoinReply, JoinRequest, Op, RenewReply},
    quorum,
    write::{Attempt, encode, json_error, now, propose, update},
};
use crate::{
    ca::{self, JoinToken, NodeIdentity, RootCa},
    limits,
    raft::{RaftMember, network::last_contact},
    store::{Change, ChangeSet, Kind, Object},
};

/// A peer is reachable if it answered a raft RPC this recently.
const REACHABLE: Duration = Duration::from_secs(3);

fn decode_node(object: &Object) -> Result<Node, Status> {
    let mut node: Node = serde_json::from_value(object.body.clone()).map_err(json_error)?;
    node.id.clone_from(&object.id);
    node.version = Version {
        index: object.version,
    };
    Ok(node)
}

fn nodes(inner: &Inner) -> Result<Vec<(Object, Node)>, Status> {
    inner.store.view(|tx| {
        tx.list(Kind::Node)
            .map(|o| decode_node(o).map(|n| (o.clone(), n)))
            .collect()
    })
}

/// Finds a node by ID, ID prefix or hostname (`self` is `me`).
fn resolve(inner: &Inner, wanted: &str, me: &str) -> Result<(Object, Node), Status> {
    let wanted = if wanted == "self" { me } else { wanted };
    let all = nodes(inner)?;
    if let Some(found) = all.iter().find(|(_, n)| n.id == wanted) {
        return Ok(found.clone());
    }
    let by_name: Vec<_> = all
        .iter()
        .filter(|(_, n)| n.description.hostname == wanted)
        .collect();
    if let [one] = by_name[..] {
        return Ok(one.clone());
    }
    let by_prefix: Vec<_> = all
        .iter()
        .filter(|(_, n)| n.id.starts_with(wanted))
        .collect();
    match (by_name.len(), by_prefix[..].len()) {
        (0, 1) => Ok(by_prefix[0].clone()),
        (0, 0) => Err(Status::not_found(format!("No such node: {wanted}"))),
        (n, _) if n > 1 => Err(Status::failed_precondition(format!(
            "node {wanted} is ambiguous ({n} nodes have this hostname)"
        ))),
        (_, n) => Err(Status::failed_precondition(format!(
            "node {wanted} is ambiguous ({n} matches found)"
        ))),
    }
}

struct RaftView {
    leader: Option<u64>,
    voters: BTreeSet<u64>,
    members: BTreeSet<u64>,
}

fn raft_view(inner: &Inner) -> RaftView {
    let metrics = inner.raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    RaftView {
        leader: metrics.current_leader,
        voters: membership.voter_ids().collect(),
        members: membership.nodes().map(|(id, _)| *id).collect(),
    }
}

fn reachable(inner: &Inner, view: &RaftView) -> BTreeSet<u64> {
    view.voters
        .iter()
        .copied()
        .filter(|id| {
            *id == inner.raft_id
                || last_contact(&inner.contacts, *id).is_some_and(|d| d < REACHABLE)
        })
        .collect()
}

/// The node as the user sees it: with its place in the raft as the leader sees it now.
fn view(inner: &Inner, raft: &RaftView, mut node: Node) -> Node {
    node.manager_status = node.manager_status.take().and_then(|status| {
        if !raft.members.contains(&status.raft_id) {
            return None;
        }
        let leader = raft.leader == Some(status.raft_id);
        let answered = status.raft_id == inner.raft_id
            || last_contact(&inner.contacts, status.raft_id).is_some_and(|d| d < REACHABLE);
        Some(ManagerStatus {
            leader,
            reachability: if leader || answered {
                "reachable"
            } else {
                "unreachable"
            }
            .into(),
            ..status
        })
    });
    node
}

fn manager_addrs(inner: &Inner) -> Vec<String> {
    let metrics = inner.raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let mut addrs: Vec<(bool, String)> = membership
        .nodes()
        .filter(|(id, _)| membership.voter_ids().any(|v| v == **id))
        .map(|(id, node)| (metrics.current_leader != Some(*id), node.addr.clone()))
        .collect();
    addrs.sort();
    addrs.into_iter().map(|(_, a)| a).collect()
}

/// Reads a node, lets `change` edit it, and writes it back ([`update`]).
async fn update_node(
    inner: &Inner,
    id: &str,
    mut change: impl FnMut(&mut Node) -> Result<bool, Status>,
) -> Result<Node, Status> {
    let exhausted = "update out of sequence: the node kept changing; try again";
    let (mut node, index) = update(inner, exhausted, || {
        let object = inner
            .store
            .view(|tx| tx.get(Kind::Node, id).cloned())
            .ok_or_else(|| Status::not_found(format!("No such node: {id}")))?;
        let mut node = decode_node(&object)?;
        if !change(&mut node)? {
            return Ok(Attempt::Unchanged(node));
        }
        node.updated_at = now();
        let body = serde_json::to_value(&node).map_err(json_error)?;
        let write = Change::Update {
            kind: Kind::Node,
            id: id.to_owned(),
            version: object.version,
            body,
        };
        Ok(Attempt::Write(ChangeSet(vec![write]), node))
    })
    .await?;
    if let Some(index) = index {
        node.version = Version { index };
    }
    Ok(node)
}

async fn update_cluster(
    inner: &Inner,
    change: impl FnMut(&mut ClusterRecord) -> Result<(), Status>,
) -> Result<ClusterRecord, Status> {
    update_cluster_at(inner, None, change).await
}

/// [`update_cluster`], refused as out of sequence unless the cluster is at `version` when the
/// change is written (the check and the write see the same version).
async fn update_cluster_at(
    inner: &Inner,
    version: Option<u64>,
    mut change: impl FnMut(&mut ClusterRecord) -> Result<(), Status>,
) -> Result<ClusterRecord, Status> {
    let exhausted = "update out of sequence: the cluster kept changing; try again";
    let (record, _) = update(inner, exhausted, || {
        let (object, mut record) = cluster(inner)?;
        if let Some(version) = version
            && object.version != version
        {
            return Err(Status::aborted(format!(
                "update out of sequence: the swarm is at version {}, the update was made from {version}",
                object.version
            )));
        }
        change(&mut record)?;
        record.cluster.updated_at = now();
        let body = serde_json::to_value(&record).map_err(json_error)?;
        let write = Change::Update {
            kind: Kind::Cluster,
            id: object.id.clone(),
            version: object.version,
            body,
        };
        Ok(Attempt::Write(ChangeSet(vec![write]), record))
    })
    .await?;
    Ok(record)
}

fn require_manager(caller: &Option<NodeIdentity>) -> Result<&NodeIdentity, Status> {
    match caller {
        Some(identity) if identity.role == Role::Manager => Ok(identity),
        Some(_) => Err(Status::permission_denied(shoal_api::swarm::NOT_A_MANAGER)),
        None => Err(Status::unauthenticated("a manager certificate is required")),
    }
}

fn require_node(caller: &Option<NodeIdentity>) -> Result<&NodeIdentity, Status> {
    caller
        .as_ref()
        .ok_or_else(|| Status::unauthenticated("a node certificate is required"))
}

/// Carries out one operation on the leader.
pub(super) async fn execute(inner: &Inner, forwarded: Forwarded) -> Result<Value, Status> {
    let Forwarded {
        op, caller, from, ..
    } = forwarded;
    match op {
        Op::User { call, node_id } => {
            require_current_manager(inner, require_manager(&caller)?)?;
            user(inner, call, &node_id).await
        }
        Op::Join(request) => encode(&join(inner, request, &from).await?),
        Op::Renew { csr } => {
            let caller = require_node(&caller)?;
            let Some(object) = inner
                .store
                .view(|tx| tx.get(Kind::Node, &caller.node_id).cloned())
            else {
                return Err(confirmed_removed(inner, &caller.node_id).await);
            };
            let node = decode_node(&object)?;
            let role = node.spec.role.unwrap_or(Role::Worker);
            let cert_pem = sign(inner, &csr, &caller.node_id, role)?;
            encode(&RenewReply { cert_pem, role })
        }
        Op::Heartbeat(heartbeat) => {
            encode(&beat(inner, require_node(&caller)?, heartbeat, &from).await?)
        }
        Op::Report(report) => {
            let caller = require_node(&caller)?;
            // A removed node's certificate stays valid until it expires: its reports are not
            // taken.
            if inner
                .store
                .view(|tx| tx.get(Kind::Node, &caller.node_id).is_none())
            {
                return Err(confirmed_removed(inner, &caller.node_id).await);
            }
            super::services::report(inner, &caller.node_id, report).await
        }
        Op::AddManager { raft_id, addr } => {
            let caller = require_manager(&caller)?;
            add_manager(inner, &caller.node_id, raft_id, addr).await?;
            Ok(Value::Null)
        }
    }
}

/// "Removed" makes a node wipe its membership: said only by a leader that has confirmed it
/// still leads and has applied everything committed (a deposed leader's store may be stale).
async fn confirmed_removed(inner: &Inner, node_id: &str) -> Status {
    if inner.raft.ensure_linearizable().await.is_err() {
        return Reason::NoLeader.status(shoal_api::swarm::NO_LEADER);
    }
    if inner.store.view(|tx| tx.get(Kind::Node, node_id).is_some()) {
        return Status::unavailable("the node's record was being written; try again");
    }
    Reason::NodeRemoved.status(format!(
        "node {node_id} is not in the swarm: it was removed"
    ))
}

/// Whether `identity`'s node is, in the store, still to be a manager: a demoted or removed
/// manager's certificate (valid until it expires) no longer opens the cluster API.
pub(super) fn require_current_manager(
    inner: &Inner,
    identity: &NodeIdentity,
) -> Result<(), Status> {
    let role = inner.store.view(|tx| {
        tx.get(Kind::Node, &identity.node_id)
            .and_then(|o| decode_node(o).ok())
            .and_then(|n| n.spec.role)
    });
    match role {
        Some(Role::Manager) => Ok(()),
        _ => Err(Status::permission_denied(format!(
            "node {} is no longer a manager of this swarm",
            identity.node_id
        ))),
    }
}

/// A certificate for `node_id` in `role`, valid for `--cert-expiry`, from the CA that signs now
/// (with the cross-signed new root along during a rotation).
fn sign(inner: &Inner, csr: &str, node_id: &str, role: Role) -> Result<String, Status> {
    let (object, record) = cluster(inner)?;
    let (ca, along) = record.signer()?;
    let leaf = ca
        .sign(
            csr,
            &NodeIdentity {
                node_id: node_id.to_owned(),
                role,
                cluster_id: object.id,
            },
            ca::node_validity(record.cluster.spec.ca_config.node_cert_expiry),
        )
        .map_err(|e| Status::invalid_argument(format!("signing the certificate request: {e}")))?;
    Ok(format!("{leaf}{along}"))
}

/// `swarm ca --rotate`: a new root, cross-signed by the current one. A rotation already under
/// way is replaced (its new root was never the only one trusted).
async fn start_rotation(inner: &Inner, cert_expiry_s: Option<u64>) -> Result<(), Status> {
    let new = RootCa::generate().map_err(|e| Status::internal(e.to_string()))?;
    update_cluster(inner, |record| {
        begin_rotation(record, &new, cert_expiry_s)?;
        record.cluster.spec.ca_config.force_rotate += 1;
        Ok(())
    })
    .await
    .map(drop)
}

/// A rotation to `new` begun in `record`: the current root cross-signs it.
fn begin_rotation(
    record: &mut ClusterRecord,
    new: &RootCa,
    cert_expiry_s: Option<u64>,
) -> Result<(), Status> {
    let current = RootCa::from_pem(&record.cluster.tls_info.trust_root, &record.ca_key)
        .map_err(|e| Status::internal(format!("loading the root CA: {e}")))?;
    let cross_signed = current
        .cross_sign(new)
        .map_err(|e| Status::internal(e.to_string()))?;
    record.root_rotation = Some(RootRotation {
        ca_cert: new.cert_pem().to_owned(),
        ca_key: new.key_pem(),
        cross_signed,
    });
    if let Some(s) = cert_expiry_s {
        record.cluster.spec.ca_config.node_cert_expiry = s * 1_000_000_000;
    }
    Ok(())
}

/// The end of a rotation, once every node (Down ones too: they block it until they come back
/// or are removed) reports a certificate of the new root: the new root replaces the old one,
/// whose key is forgotten, and the join tokens are new (the new root's digest, new secrets).
async fn finish_rotation(inner: &Inner) {
    let Ok((_, record)) = cluster(inner) else {
        return;
    };
    let Some(rotation) = record.root_rotation.clone() else {
        return;
    };
    let (subject, key) = record.issuer();
    let Ok(all) = nodes(inner) else { return };
    let converged = all.iter().all(|(_, n)| {
        n.description.tls_info.cert_issuer_public_key == key
            && n.description.tls_info.cert_issuer_subject == subject
    });
    if !converged {
        return;
    }
    let finished = update_cluster(inner, |record| {
        if record.root_rotation.as_ref() != Some(&rotation) {
            return Err(Status::aborted("the rotation changed meanwhile"));
        }
        let new = RootCa::from_pem(&rotation.ca_cert, &rotation.ca_key)
            .map_err(|e| Status::internal(e.to_string()))?;
        record.cluster.tls_info = shoal_api::swarm::TlsInfo {
            trust_root: rotation.ca_cert.clone(),
            digest: new.digest(),
            ..Default::default()
        };
        record.ca_key.clone_from(&rotation.ca_key);
        record.root_rotation = None;
        let token = || {
            JoinToken::generate(&new)
                .map(|t| t.to_string())
                .map_err(|e| Status::internal(e.to_string()))
        };
        record.cluster.join_tokens = Some(JoinTokens {
            worker: token()?,
            manager: token()?,
        });
        Ok(())
    })
    .await;
    match finished {
        Ok(_) => {
            tracing::info!("root rotation finished: every node holds a certificate of the new root")
        }
        Err(e) => tracing::debug!(error = %e.message(), "finishing the root rotation"),
    }
}

/// Every manager trusts what the store says (the new root too during a rotation, only the new
/// one after it) from the moment it applies it: a certificate under a root that was replaced is
/// refused at once, and connections made under it are checked again.
fn follow_trust(inner: &Inner) {
    let Ok((_, record)) = cluster(inner) else {
        return;
    };
    let bundle = record.trust_bundle();
    if inner.live.trusts(&bundle) {
        return;
    }
    let mut credentials = inner.live.credentials();
    // A manager whose own certificate the new trust would refuse renews first (its node does,
    // hearing the issuer from its heartbeat); the trust follows at the next pass.
    if !crate::tls::chain_trusted(&credentials.cert_pem, &bundle) {
        return;
    }
    credentials.ca_pem = bundle;
    if let Err(e) = inner.live.update(&credentials) {
        tracing::warn!(error = %e, "taking the swarm's new roots");
    }
}

/// Keeps this manager's data key sealed with the cluster's unlock key (in the clear when
/// autolock is off), as the store says from the moment it applies it.
pub(super) fn follow_unlock_key(inner: &Inner) {
    let Ok((_, record)) = cluster(inner) else {
        return;
    };
    let unlock = if record.unlock_key.is_empty() {
        None
    } else {
        match record.unlock_key.parse::<crate::keys::UnlockKey>() {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::error!(error = %e, "the cluster's unlock key");
                return;
            }
        }
    };
    if let Err(e) = inner.keys.set_unlock_key(unlock.as_ref()) {
        tracing::error!(error = %e, "sealing the data key with the cluster's unlock key");
    }
}

/// The roots the store says to trust, when it says (a manager that has applied the cluster
/// object).
pub(super) fn trusted_roots(inner: &Inner) -> Option<String> {
    cluster(inner).ok().map(|(_, record)| record.trust_bundle())
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0_u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Checks what a node says about itself (on joining, `node_id` None; on a heartbeat, its ID)
/// against the bounds and against every other node: a unicast IPv4 data-path address and a
/// WireGuard key no other node has, and the key it advertised first. A node that breaks one of
/// these is refused, and degrades only itself.
fn check_description(
    description: &NodeDescription,
    node_id: Option<&str>,
    all: &[(Object, Node)],
) -> Result<(), Status> {
    let d = description;
    if d.hostname.is_empty() {
        return Err(Status::invalid_argument("a node needs a hostname"));
    }
    limits::check_str("the hostname", &d.hostname, limits::MAX_SHORT)?;
    limits::check_str("the platform's OS", &d.platform.os, limits::MAX_SHORT)?;
    limits::check_str(
        "the platform's architecture",
        &d.platform.architecture,
        limits::MAX_SHORT,
    )?;
    limits::check_str("the executor", &d.executor, 16)?;
    let tls = &d.tls_info;
    if tls.trust_root.len() > 16 * 1024 {
        return Err(Status::invalid_argument(
            "the node's trust root is larger than 16 KiB",
        ));
    }
    limits::check_str(
        "the certificate issuer's subject",
        &tls.cert_issuer_subject,
        1024,
    )?;
    limits::check_str(
        "the certificate issuer's key",
        &tls.cert_issuer_public_key,
        1024,
    )?;
    limits::check_str("the certificate's expiry", &tls.cert_expiry, 64)?;
    if d.mesh_paths.len() > limits::MAX_MESH_PATHS {
        return Err(Status::invalid_argument(format!(
            "the node reports mesh paths for {} interfaces: at most {} are allowed",
            d.mesh_paths.len(),
            limits::MAX_MESH_PATHS
        )));
    }
    for (interface, path) in &d.mesh_paths {
        limits::check_str("a mesh interface's name", interface, 15)?;
        limits::check_str("a mesh path", path, limits::MAX_SHORT)?;
    }
    if let Some(problem) = limits::data_path_problem(&d.data_path_addr) {
        return Err(Status::invalid_argument(format!(
            "the node's data-path address: {problem}"
        )));
    }
    if d.data_path_port != 0 && !limits::DATA_PATH_PORTS.contains(&d.data_path_port) {
        return Err(Status::invalid_argument(format!(
            "the node's data-path port {} is outside 1024-49151",
            d.data_path_port
        )));
    }
    if !d.wireguard_public_key.is_empty()
        && let Some(problem) = limits::public_key_problem(&d.wireguard_public_key)
    {
        return Err(Status::invalid_argument(format!(
            "the node's WireGuard key: {problem}"
        )));
    }
    if let Some((_, me)) = all.iter().find(|(_, n)| Some(n.id.as_str()) == node_id) {
        let kept = &me.description.wireguard_public_key;
        if !kept.is_empty() && *kept != d.wireguard_public_key {
            return Err(Status::failed_precondition(
                "the node's WireGuard key changed: a node keeps the first key it advertised (leave the swarm and join again to change it)",
            ));
        }
    }
    // A Down node holds nothing: a node that left can join again from the same host. If the
    // Down node comes back, this check runs again for it.
    for (_, other) in all {
        if Some(other.id.as_str()) == node_id || other.status.state == NodeState::Down {
            continue;
        }
        if other.description.data_path_addr == d.data_path_addr {
            return Err(Status::failed_precondition(format!(
                "data-path address {} is already node {} ({})'s: each node needs its own --data-path-addr (a node that left holds its address until it is Down)",
                d.data_path_addr, other.description.hostname, other.id
            )));
        }
        if !d.wireguard_public_key.is_empty()
            && other.description.wireguard_public_key == d.wireguard_public_key
        {
            return Err(Status::failed_precondition(format!(
                "the node's WireGuard public key is already node {} ({})'s",
                other.description.hostname, other.id
            )));
        }
    }
    Ok(())
}

async fn join(inner: &Inner, request: JoinRequest, from: &str) -> Result<JoinReply, Status> {
    let token =
        JoinToken::from_str(&request.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let (cluster_object, record) = cluster(inner)?;
    if token.digest != record.cluster.tls_info.digest {
        return Err(Status::invalid_argument(
            "the join token is for another swarm: its CA digest does not match this swarm's root CA",
        ));
    }
    let tokens = record.cluster.join_tokens.clone().unwrap_or_default();
    let secret_of = |t: &str| JoinToken::from_str(t).map(|t| t.secret).unwrap_or_default();
    let role = if same_secret(&token.secret, &secret_of(&tokens.manager)) {
        Role::Manager
    } else if same_secret(&token.secret, &secret_of(&tokens.worker)) {
        Role::Worker
    } else {
        return Err(Status::invalid_argument(
            "A valid join token is necessary to join this cluster: this token is not (it may have been rotated)",
        ));
    };
    // One description write at a time: two nodes joining at once cannot claim one address.
    let mut written = inner.descriptions.lock().await;
    check_description(&request.description, None, &nodes(inner)?)?;
    let node_id = ca::random_id().map_err(|e| Status::internal(e.to_string()))?;
    // Sign first: a bad request creates nothing.
    let cert_pem = sign(inner, &request.csr, &node_id, role)?;
    let created = now();
    let node = Node {
        id: node_id.clone(),
        version: Version::default(),
        created_at: created.clone(),
        updated_at: created,
        spec: shoal_api::swarm::NodeSpec {
            role: Some(role),
            ..Default::default()
        },
        description: NodeDescription {
            // A joining node learns the swarm's data-path port from the answer to this call.
            data_path_port: match request.description.data_path_port {
                0 => record.cluster.data_path_port,
                port => port,
            },
            ..request.description
        },
        status: NodeStatus {
            state: NodeState::Ready,
            message: String::new(),
            addr: from.to_owned(),
        },
        manager_status: None,
        attachments: Vec::new(),
    };
    inner
        .heartbeats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(node_id.clone(), Instant::now());
    propose(
        inner,
        ChangeSet(vec![Change::Create {
            kind: Kind::Node,
            id: node_id.clone(),
            body: serde_json::to_value(&node).map_err(json_error)?,
        }]),
    )
    .await?;
    written.insert(node_id.clone(), Instant::now());
    drop(written);
    Ok(JoinReply {
        node_id,
        cluster_id: cluster_object.id,
        role,
        cert_pem,
        ca_pem: record.trust_bundle(),
        managers: manager_addrs(inner),
        heartbeat_ms: record.heartbeat_period().as_millis() as u64,
        data_path_port: record.cluster.data_path_port,
    })
}

async fn beat(
    inner: &Inner,
    caller: &NodeIdentity,
    heartbeat: Heartbeat,
    from: &str,
) -> Result<HeartbeatReply, Status> {
    let id = caller.node_id.clone();
    let Some(current) = inner.store.view(|tx| tx.get(Kind::Node, &id).cloned()) else {
        return Err(confirmed_removed(inner, &id).await);
    };
    let current = decode_node(&current)?;
    let described = current.description == heartbeat.description;
    // A description that changed, or a node back from Down, is checked against every other
    // node, one node at a time (two must not claim one address at once); a changed one is
    // written at most once per DESCRIPTION_REWRITE_S: a node cannot make every heartbeat a raft
    // write. An ordinary heartbeat reads only its own node.
    let mut written = None;
    let mut rewrite = false;
    if !described || current.status.state == NodeState::Down {
        let guard = inner.descriptions.lock().await;
        check_description(&heartbeat.description, Some(&id), &nodes(inner)?)?;
        rewrite = !described
            && guard.get(&id).is_none_or(|at| {
                at.elapsed() >= Duration::from_secs(limits::DESCRIPTION_REWRITE_S)
            });
        written = Some(guard);
    }
    inner
        .heartbeats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), Instant::now());
    inner
        .traffic
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(
            &id,
            Instant::now(),
            // A node reports its own mesh: no more services than a swarm has, names no longer
            // than a name may be (a node cannot grow the leader's memory with its heartbeat).
            heartbeat
                .mesh
                .iter()
                .filter(|(name, _)| name.len() <= limits::MAX_SHORT)
                .take(limits::MAX_SERVICES)
                .map(|(name, counters)| (name.clone(), *counters))
                .collect(),
        );
    let node = update_node(inner, &id, |node| {
        let changed = node.status.state != NodeState::Ready
            || node.status.addr != from
            || (rewrite && node.description != heartbeat.description);
        node.status = NodeStatus {
            state: NodeState::Ready,
            message: String::new(),
            addr: from.to_owned(),
        };
        if rewrite {
            node.description = heartbeat.description.clone();
        }
        Ok(changed)
    })
    .await?;
    if let Some(mut written) = written.filter(|_| rewrite) {
        written.insert(id.clone(), Instant::now());
    }
    // A demoted manager stays one until the raft has let it go: it keeps its raft running
    // until then, so the membership change never waits for a member that already left.
    let member = node
        .manager_status
        .as_ref()
        .is_some_and(|m| raft_view(inner).members.contains(&m.raft_id));
    let (_, record) = cluster(inner)?;
    let bundle = record.trust_bundle();
    Ok(HeartbeatReply {
        period_ms: record.heartbeat_period().as_millis() as u64,
        role: if member {
            Role::Manager
        } else {
            node.spec.role.unwrap_or(Role::Worker)
        },
        managers: manager_addrs(inner),
        trust_root: (heartbeat.description.tls_info.trust_root != bundle).then_some(bundle),
        issuer_public_key: record.issuer().1,
    })
}

async fn add_manager(
    inner: &Inner,
    node_id: &str,
    raft_id: u64,
    addr: String,
) -> Result<(), Status> {
    let status = ManagerStatus {
        leader: false,
        reachability: String::new(),
        addr: addr.clone(),
        raft_id,
    };
    update_node(inner, node_id, |node| {
        if node.spec.role != Some(Role::Manager) {
            return Err(Status::permission_denied(format!(
                "node {node_id} is not to be a manager (its role is worker)"
            )));
        }
        let changed = node.manager_status.as_ref() != Some(&status);
        node.manager_status = Some(status.clone());
        Ok(changed)
    })
    .await?;
    if raft_view(inner).voters.contains(&raft_id) {
        return Ok(());
    }
    // A learner first: it becomes a voter only once it has caught up, so the quorum never
    // waits for a node that is still copying the log.
    inner
        .raft
        .add_learner(raft_id, RaftMember::new(addr, node_id), true)
        .await
        .map_err(|e| Status::unavailable(format!("adding the manager to the raft: {e}")))?;
    inner
        .raft
        .change_membership(ChangeMembers::AddVoterIds([raft_id].into()), false)
        .await
        .map_err(|e| Status::unavailable(format!("making the manager a raft voter: {e}")))?;
    Ok(())
}

/// Carries out a user's call on the leader, each group by the layer that owns it.
async fn user(inner: &Inner, call: ManagerCall, me: &str) -> Result<Value, Status> {
    match call {
        ManagerCall::Cluster(call) => cluster_call(inner, call, me).await,
        ManagerCall::Service(call) => super::services::call(inner, call, me).await,
        ManagerCall::Network(call) => super::services::network_call(inner, call).await,
        ManagerCall::Data(call) => super::secrets::call(inner, call).await,
    }
}

/// The swarm's, the nodes' and named data's calls.
async fn cluster_call(inner: &Inner, call: ClusterCall, me: &str) -> Result<Value, Status> {
    match call {
        ClusterCall::Traffic => traffic(inner),
        ClusterCall::Inspect => inspect_cluster(inner),
        ClusterCall::Update(args) => update_swarm(inner, args).await,
        ClusterCall::UnlockKey { rotate } => unlock_key(inner, rotate).await,
        ClusterCall::Ca {
            rotate,
            cert_expiry_s,
        } => rotate_ca(inner, rotate, cert_expiry_s).await,
        ClusterCall::JoinToken { role, rotate } => join_token(inner, role, rotate).await,
        ClusterCall::NodeList => {
            let raft = raft_view(inner);
            let mut all: Vec<Node> = nodes(inner)?
                .into_iter()
                .map(|(_, n)| view(inner, &raft, n))
                .collect();
            all.sort_by(|a, b| {
                (&a.description.hostname, &a.id).cmp(&(&b.description.hostname, &b.id))
            });
            encode(&all)
        }
        ClusterCall::NodeInspect { ids } => {
            let raft = raft_view(inner);
            let found = ids
                .iter()
                .map(|id| resolve(inner, id, me).map(|(_, n)| view(inner, &raft, n)))
                .collect::<Result<Vec<_>, _>>()?;
            encode(&found)
        }
        ClusterCall::NodeUpdate { id, update } => {
            let (_, node) = resolve(inner, &id, me)?;
            node_update(inner, node, update).await?;
            Ok(Value::Null)
        }
        ClusterCall::NodeRemove { ids, force } => remove_nodes(inner, &ids, force, me).await,
        ClusterCall::Put { name, data } => put(inner, &name, data).await,
        ClusterCall::Get { name } => inner
            .store
            .view(|tx| tx.get(Kind::Data, &name).map(|o| o.body["Data"].clone()))
            .ok_or_else(|| Status::not_found(format!("No such config: {name}"))),
    }
}

/// The leader's traffic rates per node and service (the web view's panel).
fn traffic(inner: &Inner) -> Result<Value, Status> {
    // Nodes heard from within three heartbeat periods; the others' rates are stale.
    let fresh = 3 * heartbeat_period(inner);
    let rates = inner
        .traffic
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .rates(Instant::now(), fresh);
    serde_json::to_value(rates).map_err(json_error)
}

/// `swarm inspect`: the cluster as users see it.
fn inspect_cluster(inner: &Inner) -> Result<Value, Status> {
    let (object, mut record) = cluster(inner)?;
    let (subject, key) = record.issuer();
    record.cluster.tls_info.cert_issuer_subject = subject;
    record.cluster.tls_info.cert_issuer_public_key = key;
    record.cluster.root_rotation_in_progress = record.root_rotation.is_some();
    record.cluster.id = object.id;
    record.cluster.version = Version {
        index: object.version,
    };
    encode(&record.cluster)
}

/// `swarm update`: every argument checked before the write.
async fn update_swarm(inner: &Inner, args: SwarmUpdateArgs) -> Result<Value, Status> {
    if let Some(s) = args.dispatcher_heartbeat_s {
        limits::check_heartbeat(s)?;
    }
    if let Some(n) = args.snapshot_interval {
        limits::check_snapshot_interval(n)?;
    }
    if let Some(s) = args.cert_expiry_s {
        ca::check_cert_expiry(s).map_err(Status::invalid_argument)?;
    }
    let fresh_unlock = match args.autolock {
        Some(true) => Some(
            crate::keys::UnlockKey::generate()
                .map_err(|e| Status::internal(e.to_string()))?
                .to_string(),
        ),
        _ => None,
    };
    if let Some(n) = args.task_history_limit
        && n > limits::MAX_TASK_HISTORY
    {
        return Err(Status::invalid_argument(format!(
            "--task-history-limit {n}: at most {} stopped tasks are kept per slot",
            limits::MAX_TASK_HISTORY
        )));
    }
    // A new root for a changed `CAConfig.ForceRotate`, made before the write.
    let new_root = match args.ca_force_rotate {
        Some(_) => Some(RootCa::generate().map_err(|e| Status::internal(e.to_string()))?),
        None => None,
    };
    update_cluster_at(inner, args.version, |record| {
        if let (Some(n), Some(new)) = (args.ca_force_rotate, &new_root)
            && n != record.cluster.spec.ca_config.force_rotate
        {
            begin_rotation(record, new, args.cert_expiry_s)?;
            record.cluster.spec.ca_config.force_rotate = n;
        }
        if let Some(s) = args.dispatcher_heartbeat_s {
            record.cluster.spec.dispatcher.heartbeat_period = s * 1_000_000_000;
        }
        if let Some(n) = args.snapshot_interval {
            record.cluster.spec.raft.snapshot_interval = n;
        }
        if let Some(s) = args.cert_expiry_s {
            record.cluster.spec.ca_config.node_cert_expiry = s * 1_000_000_000;
        }
        if let Some(n) = args.task_history_limit {
            record
                .cluster
                .spec
                .orchestration
                .task_history_retention_limit = n;
        }
        match args.autolock {
            // Turned on: a new key; already on: the key stays.
            Some(true) if record.unlock_key.is_empty() => {
                record.unlock_key = fresh_unlock.clone().unwrap_or_default();
            }
            Some(false) => record.unlock_key.clear(),
            _ => {}
        }
        record.cluster.spec.encryption_config.auto_lock_managers = !record.unlock_key.is_empty();
        Ok(())
    })
    .await?;
    follow_unlock_key(inner);
    Ok(Value::Null)
}

/// `swarm unlock-key [--rotate]`.
async fn unlock_key(inner: &Inner, rotate: bool) -> Result<Value, Status> {
    let record = if rotate {
        let fresh = crate::keys::UnlockKey::generate()
            .map_err(|e| Status::internal(e.to_string()))?
            .to_string();
        let record = update_cluster(inner, |record| {
            if record.unlock_key.is_empty() {
                return Err(Status::failed_precondition(
                    "cannot rotate because autolock is not turned on",
                ));
            }
            record.unlock_key.clone_from(&fresh);
            Ok(())
        })
        .await?;
        follow_unlock_key(inner);
        record
    } else {
        cluster(inner)?.1
    };
    // Empty while autolock is off: clients say "no unlock key is set" (Docker's API).
    Ok(json!({ "UnlockKey": record.unlock_key }))
}

/// `swarm ca [--rotate] [--cert-expiry]`: the cluster as it is after.
async fn rotate_ca(
    inner: &Inner,
    rotate: bool,
    cert_expiry_s: Option<u64>,
) -> Result<Value, Status> {
    if let Some(s) = cert_expiry_s {
        ca::check_cert_expiry(s).map_err(Status::invalid_argument)?;
        if !rotate {
            return Err(Status::invalid_argument(
                "`--cert-expiry` flag requires the `--rotate` flag to update the CA",
            ));
        }
    }
    if rotate {
        start_rotation(inner, cert_expiry_s).await?;
    }
    inspect_cluster(inner)
}

/// `swarm join-token [--rotate] ROLE`.
async fn join_token(inner: &Inner, role: Role, rotate: bool) -> Result<Value, Status> {
    let record = if rotate {
        update_cluster(inner, |record| {
            let current = record
                .cluster
                .join_tokens
                .get_or_insert_with(JoinTokens::default);
            let ca = RootCa::from_pem(&record.cluster.tls_info.trust_root, &record.ca_key)
                .map_err(|e| Status::internal(e.to_string()))?;
            let fresh = JoinToken::generate(&ca)
                .map_err(|e| Status::internal(e.to_string()))?
                .to_string();
            match role {
                Role::Worker => current.worker = fresh,
                Role::Manager => current.manager = fresh,
            }
            Ok(())
        })
        .await?
    } else {
        cluster(inner)?.1
    };
    let tokens = record.cluster.join_tokens.unwrap_or_default();
    Ok(json!(match role {
        Role::Worker => tokens.worker,
        Role::Manager => tokens.manager,
    }))
}

/// `node rm [--force]`: every node checked before any is removed (all or nothing).
async fn remove_nodes(
    inner: &Inner,
    ids: &[String],
    force: bool,
    me: &str,
) -> Result<Value, Status> {
    let raft = raft_view(inner);
    let mut doomed = Vec::new();
    for id in ids {
        let (object, node) = resolve(inner, id, me)?;
        let in_raft = node
            .manager_status
            .as_ref()
            .is_some_and(|m| raft.members.contains(&m.raft_id));
        if in_raft || node.spec.role == Some(Role::Manager) {
            return Err(Status::failed_precondition(format!(
                "rpc error: node {} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal",
                node.id
            )));
        }
        if node.status.state == NodeState::Ready && !force {
            return Err(Status::failed_precondition(format!(
                "node {} is not down and can't be removed (use --force to remove it anyway)",
                node.id
            )));
        }
        doomed.push(Change::Delete {
            kind: Kind::Node,
            id: object.id.clone(),
            version: object.version,
        });
    }
    propose(inner, ChangeSet(doomed)).await?;
    Ok(Value::Null)
}

/// Creates or replaces a config object ([`ClusterCall::Put`]): the index it was written at.
async fn put(inner: &Inner, name: &str, data: String) -> Result<Value, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("a config needs a name"));
    }
    let body = json!({ "Data": data });
    let (_, index) = update(inner, "update out of sequence; try again", || {
        let current = inner
            .store
            .view(|tx| tx.get(Kind::Data, name).map(|o| o.version));
        let write = match current {
            None => Change::Create {
                kind: Kind::Data,
                id: name.to_owned(),
                body: body.clone(),
            },
            Some(version) => Change::Update {
                kind: Kind::Data,
                id: name.to_owned(),
                version,
                body: body.clone(),
            },
        };
        Ok(Attempt::Write(ChangeSet(vec![write]), ()))
    })
    .await?;
    Ok(json!(index))
}

async fn node_update(inner: &Inner, node: Node, update: NodeUpdate) -> Result<(), Status> {
    for key in update.label_add.keys().chain(&update.label_rm) {
        if key.is_empty() {
            return Err(Status::invalid_argument("a label needs a key"));
        }
    }
    limits::check_labels("the node's labels", &update.label_add)?;
    // The labels as they will be (added, then removed, as the update below applies them).
    let mut labels = node.spec.labels.clone();
    labels.extend(update.label_add.clone());
    for key in &update.label_rm {
        labels.remove(key);
    }
    let after = labels.len();
    limits::check_count("labels on the node", after, limits::MAX_LABELS)?;
    if let Some(missing) = update
        .label_rm
        .iter()
        .find(|k| !node.spec.labels.contains_key(*k))
    {
        return Err(Status::invalid_argument(format!(
            "key {missing} doesn't exist in node's labels"
        )));
    }
    let raft_id = node.manager_status.as_ref().map(|m| m.raft_id);
    let member = raft_id.is_some_and(|id| raft_view(inner).members.contains(&id));
    // Based on the raft too: a demotion cut short (leadership moved) can be run again.
    let demote =
        update.role == Some(Role::Worker) && (node.spec.role == Some(Role::Manager) || member);
    if demote {
        let raft = raft_view(inner);
        if let Some(raft_id) = raft_id {
            quorum::check_removal(&raft.voters, &reachable(inner, &raft), raft_id).map_err(
                |e| Status::failed_precondition(format!("can't demote node {}: {e}", node.id)),
            )?;
        }
    }
    update_node(inner, &node.id, |node| {
        // Checked against what is written (`update_node` proposes at the version it read).
        if let Some(version) = update.version
            && node.version.index != version
        {
            return Err(Status::aborted(format!(
                "update out of sequence: node {} is at version {}, the update was made from {version}",
                node.id, node.version.index
            )));
        }
        if let Some(availability) = update.availability {
            node.spec.availability = availability;
        }
        if let Some(role) = update.role {
            node.spec.role = Some(role);
        }
        node.spec.labels.extend(update.label_add.clone());
        for key in &update.label_rm {
            node.spec.labels.remove(key);
        }
        Ok(true)
    })
    .await?;
    if demote && let Some(raft_id) = raft_id {
        leave_raft(inner, raft_id).await?;
    }
    Ok(())
}

/// Takes `raft_id` out of the raft, whether it votes or only learns. Done if it is already out
/// (another change got there first).
async fn leave_raft(inner: &Inner, raft_id: u64) -> Result<(), Status> {
    let raft = raft_view(inner);
    let change = if raft.voters.contains(&raft_id) {
        ChangeMembers::RemoveVoters([raft_id].into())
    } else if raft.members.contains(&raft_id) {
        ChangeMembers::RemoveNodes([raft_id].into())
    } else {
        return Ok(());
    };
    match inner.raft.change_membership(change, false).await {
        Ok(_) => Ok(()),
        Err(_) if !raft_view(inner).members.contains(&raft_id) => Ok(()),
        Err(e) => Err(Status::unavailable(format!(
            "removing the manager from the raft: {e}"
        ))),
    }
}

/// Raft members no node claims, or whose node is to be a worker (a demotion or a promotion cut
/// short): the leader takes them out, one per pass, when the quorum allows.
async fn reconcile_members(inner: &Inner) {
    let raft = raft_view(inner);
    let Ok(all) = nodes(inner) else { return };
    let stray = raft.members.iter().copied().find(|id| {
        *id != inner.raft_id
            && !all.iter().any(|(_, n)| {
                n.spec.role == Some(Role::Manager)
                    && n.manager_status.as_ref().is_some_and(|m| m.raft_id == *id)
            })
    });
    let Some(stray) = stray else { return };
    if quorum::check_removal(&raft.voters, &reachable(inner, &raft), stray).is_err() {
        return;
    }
    tracing::info!(raft_id = stray, "removing a raft member no manager claims");
    if let Err(e) = leave_raft(inner, stray).await {
        tracing::debug!(error = %e.message(), "removing a stray raft member");
    }
}

/// The leader's housekeeping: marks nodes Down after three missed heartbeats, and every
/// manager snapshots its store every `SnapshotInterval` entries.
pub(super) async fn maintain(manager: Manager, mut stopped: watch::Receiver<bool>) {
    let inner: Arc<Inner> = manager.inner.clone();
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        snapshot_if_due(&inner).await;
        follow_trust(&inner);
        follow_unlock_key(&inner);
        let leading = inner.raft.metrics().borrow().current_leader == Some(inner.raft_id);
        let since = {
            let mut since = inner.leader_since.lock().unwrap_or_else(|e| e.into_inner());
            if !leading {
                *since = None;
                continue;
            }
            *since.get_or_insert_with(Instant::now)
        };
        reconcile_members(&inner).await;
        finish_rotation(&inner).await;
        let deadline = 3 * heartbeat_period(&inner);
        let Ok(all) = nodes(&inner) else { continue };
        for (_, node) in all {
            if node.status.state == NodeState::Down {
                continue;
            }
            let last = inner
                .heartbeats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&node.id)
                .copied()
                .unwrap_or(since)
                .max(since);
            if last.elapsed() > deadline {
                tracing::info!(node = %node.id, "no heartbeat for three periods: the node is down");
                // Times the change below was made (a retry after a conflict makes it again).
                let mut marks = 0;
                let marked = update_node(&inner, &node.id, |node| {
                    let stale = inner
                        .heartbeats
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&node.id)
                        .is_none_or(|t| t.elapsed() > deadline);
                    if !stale || node.status.state == NodeState::Down {
                        return Ok(false);
                    }
                    node.status.state = NodeState::Down;
                    node.status.message = "heartbeat failure".into();
                    marks += 1;
                    Ok(true)
                })
                .await;
                match marked {
                    Ok(_) if marks > 0 => {
                        crate::metrics::control().missed_heartbeats.inc();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "marking a node down"),
                }
            }
        }
    }
}

async fn snapshot_if_due(inner: &Inner) {
    let interval = cluster(inner)
        .map(|(_, c)| c.cluster.spec.raft.snapshot_interval)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(inner.settings.snapshot_interval);
    let (applied, snapshot) = {
        let metrics = inner.raft.metrics();
        let metrics = metrics.borrow();
        (
            metrics.last_applied.map_or(0, |l| l.index),
            metrics.snapshot.map_or(0, |l| l.index),
        )
    };
    if applied.saturating_sub(snapshot) >= interval
        && let Err(e) = inner.raft.trigger().snapshot().await
    {
        tracing::warn!(error = %e, "triggering a snapshot");
    }
}
