//! Who may speak raft to this manager, and what they may say, checked before openraft sees a
//! message (openraft 0.9 trusts its peers: it adopts any higher vote, seeks to any snapshot
//! offset, and never bounds a term).
//!
//! - **Identity.** The caller's certificate names a node ID. It speaks for the raft IDs that
//!   node holds: the raft members recorded with that node ID (voters and learners, joint
//!   configurations included), and the raft ID the store gives that node while the store says
//!   it is a manager. A certificate that speaks for none — a demoted or removed manager's, still
//!   valid until it expires — is refused before the message is read. A manager whose raft has no
//!   membership yet (it is being added) takes any manager certificate: it cannot know better.
//! - **The message is the sender's.** The candidate of a vote, the leader of entries or of a
//!   snapshot must be one of the raft IDs the certificate speaks for; a leader's vote is
//!   committed, a candidate's is not.
//! - **Bounds.** Terms at most [`MAX_TERM`] (a term that reaches `u64::MAX` can never be beaten:
//!   every election would overflow), indices at most [`MAX_INDEX`], entries one after another
//!   from where the leader says they follow, no entry of a later term than its leader's. The
//!   same term bound applies to the answers peers send back (a higher vote makes a leader step
//!   down).
//! - **Snapshots** arrive in chunks: one snapshot at a time per sender, a chunk starting within
//!   what has arrived (a resent chunk is fine, a gap is not), at most [`MAX_SNAPSHOT`] bytes in
//!   all, with the vote and ID of the chunk that began it. A chunk at offset 2^40 used to make
//!   the manager allocate a terabyte and abort.

use std::collections::BTreeSet;

use openraft::{
    LogId, RaftLogId, Vote,
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
};
use shoal_api::swarm::{Node, Role};
use tonic::Status;

use super::{NodeId, Raft, TypeConfig};
use crate::store::{Kind, Store};

/// The highest term a message may carry: 2^48 elections is millions of years at one a second,
/// and far from the `u64::MAX` at which `term + 1` overflows.
pub const MAX_TERM: u64 = 1 << 48;
/// The highest log index a message may name.
pub const MAX_INDEX: u64 = 1 << 62;
/// The largest snapshot a manager receives, in bytes.
pub const MAX_SNAPSHOT: u64 = 512 << 20;

/// Whom a caller's certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Speaker {
    /// This manager's raft has no membership yet (it is being added): any manager.
    Anyone,
    /// These raft IDs.
    Members(BTreeSet<NodeId>),
}

impl Speaker {
    fn may_speak_for(&self, raft_id: NodeId) -> bool {
        match self {
            Speaker::Anyone => true,
            Speaker::Members(ids) => ids.contains(&raft_id),
        }
    }
}

fn refused(message: impl Into<String>) -> Status {
    Status::permission_denied(message.into())
}

fn bad(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

/// Whom `node_id`'s certificate speaks for on this manager: the raft members the membership
/// records for that node, or, when it records none (a membership written before members had
/// node IDs), the raft ID the store gives the node while it is a manager; refused if none.
pub fn speaker(raft: &Raft, store: &Store, node_id: &str) -> Result<Speaker, Status> {
    let mut ids = BTreeSet::new();
    let empty = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        for (id, member) in membership.nodes() {
            if member.node_id == node_id {
                ids.insert(*id);
            }
        }
        membership.nodes().next().is_none()
    };
    if empty {
        return Ok(Speaker::Anyone);
    }
    // The membership says (the common case): no read of the store on every message.
    if !ids.is_empty() {
        return Ok(Speaker::Members(ids));
    }
    let stored = store.view(|tx| {
        tx.get(Kind::Node, node_id)
            .and_then(|o| serde_json::from_value::<Node>(o.body.clone()).ok())
    });
    if let Some(node) = stored
        && node.spec.role == Some(Role::Manager)
        && let Some(status) = node.manager_status
    {
        ids.insert(status.raft_id);
    }
    if ids.is_empty() {
        return Err(refused(format!(
            "node {node_id} is not a member of this swarm's raft: its manager certificate is no longer accepted"
        )));
    }
    Ok(Speaker::Members(ids))
}

fn check_term(what: &str, term: u64) -> Result<(), Status> {
    if term > MAX_TERM {
        return Err(bad(format!(
            "{what} carries term {term}, above the highest accepted ({MAX_TERM})"
        )));
    }
    Ok(())
}

fn check_log_id(what: &str, log_id: Option<&LogId<NodeId>>) -> Result<(), Status> {
    if let Some(log_id) = log_id {
        check_term(what, log_id.leader_id.term)?;
        if log_id.index > MAX_INDEX {
            return Err(bad(format!(
                "{what} names log index {}, above the highest accepted ({MAX_INDEX})",
                log_id.index
            )));
        }
    }
    Ok(())
}

/// The vote's candidate or leader, checked against the speaker, the bound, and whether a
/// committed vote is expected.
fn check_sender(
    what: &str,
    vote: &Vote<NodeId>,
    committed: bool,
    speaker: &Speaker,
) -> Result<(), Status> {
    check_term(what, vote.leader_id().term)?;
    let sender = vote.leader_id().voted_for().unwrap_or_default();
    if !speaker.may_speak_for(sender) {
        return Err(refused(format!(
            "{what} speaks for raft member {sender:x}, which the caller's certificate does not hold"
        )));
    }
    if vote.is_committed() != committed {
        return Err(bad(format!(
            "{what} carries a{} vote",
            if committed {
                "n uncommitted"
            } else {
                " committed"
            }
        )));
    }
    Ok(())
}

/// A vote request: the candidate's own, within bounds.
pub fn check_vote(rpc: &VoteRequest<NodeId>, speaker: &Speaker) -> Result<(), Status> {
    check_sender("a vote request", &rpc.vote, false, speaker)?;
    check_log_id("a vote request", rpc.last_log_id.as_ref())
}

/// Entries: the leader's own, within bounds, one after another from where they are said to
/// follow, none of a later term than the leader's.
pub fn check_append(
    rpc: &AppendEntriesRequest<TypeConfig>,
    speaker: &Speaker,
) -> Result<(), Status> {
    let what = "an append-entries request";
    check_sender(what, &rpc.vote, true, speaker)?;
    let term = rpc.vote.leader_id().term;
    check_log_id(what, rpc.prev_log_id.as_ref())?;
    check_log_id(what, rpc.leader_commit.as_ref())?;
    let first = rpc.prev_log_id.map_or(0, |l| l.index + 1);
    for (next, entry) in (first..).zip(&rpc.entries) {
        let log_id = entry.get_log_id();
        check_log_id(what, Some(log_id))?;
        if log_id.index != next {
            return Err(bad(format!(
                "{what} holds entry {} where entry {next} comes next",
                log_id.index
            )));
        }
        if log_id.leader_id.term > term {
            return Err(bad(format!(
                "{what} holds an entry of term {}, later than its leader's {term}",
                log_id.leader_id.term
            )));
        }
    }
    Ok(())
}

/// A snapshot being received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Receiving {
    id: String,
    vote: Vote<NodeId>,
    received: u64,
}

/// Chunks of the snapshot being received: see the module's notes. Hold [`SnapshotGuard::lock`]
/// across the chunk's check and its delivery to raft, so chunks are judged in order.
#[derive(Debug, Default)]
pub struct SnapshotGuard {
    receiving: tokio::sync::Mutex<Option<Receiving>>,
}

/// The snapshot guard, locked for one chunk.
#[derive(Debug)]
pub struct SnapshotChunk<'a> {
    receiving: tokio::sync::MutexGuard<'a, Option<Receiving>>,
    next: Option<Receiving>,
}

impl SnapshotGuard {
    /// Checks one chunk; the lock to keep while raft takes it, then [`SnapshotChunk::taken`].
    pub async fn admit(
        &self,
        rpc: &InstallSnapshotRequest<TypeConfig>,
        speaker: &Speaker,
    ) -> Result<SnapshotChunk<'_>, Status> {
        let receiving = self.receiving.lock().await;
        let next = next_state(receiving.as_ref(), rpc, speaker)?;
        Ok(SnapshotChunk { receiving, next })
    }
}

impl SnapshotChunk<'_> {
    /// Raft took the chunk: remember how far the snapshot has come.
    pub fn taken(mut self) {
        *self.receiving = self.next.take();
    }
}

/// What the guard holds after `rpc` is taken, or why it is refused.
fn next_state(
    current: Option<&Receiving>,
    rpc: &InstallSnapshotRequest<TypeConfig>,
    speaker: &Speaker,
) -> Result<Option<Receiving>, Status> {
    let what = "a snapshot chunk";
    check_sender(what, &rpc.vote, true, speaker)?;
    check_log_id(what, rpc.meta.last_log_id.as_ref())?;
    let end = rpc
        .offset
        .checked_add(rpc.data.len() as u64)
        .filter(|end| *end <= MAX_SNAPSHOT)
        .ok_or_else(|| {
            bad(format!(
                "{what} at offset {} would take the snapshot past {MAX_SNAPSHOT} bytes",
                rpc.offset
            ))
        })?;
    let id = &rpc.meta.snapshot_id;
    let received = if rpc.offset == 0 {
        0
    } else {
        match current {
            Some(r) if r.id == *id && r.vote == rpc.vote => {
                if rpc.offset > r.received {
                    return Err(bad(format!(
                        "{what} at offset {} leaves a gap: {} bytes of snapshot {id} have arrived",
                        rpc.offset, r.received
                    )));
                }
                r.received
            }
            _ => {
                return Err(bad(format!(
                    "{what} at offset {} continues snapshot {id}, which this manager is not receiving from that leader",
                    rpc.offset
                )));
            }
        }
    };
    Ok((!rpc.done).then(|| Receiving {
        id: id.clone(),
        vote: rpc.vote,
        received: received.max(end),
    }))
}

/// Answers from peers, bounded before openraft acts on them.
pub trait InBounds {
    /// Why the answer is refused, if it is.
    fn out_of_bounds(&self) -> Option<String>;
}

fn vote_out_of_bounds(vote: &Vote<NodeId>) -> Option<String> {
    let term = vote.leader_id().term;
    (term > MAX_TERM).then(|| format!("an answer carries term {term}, above {MAX_TERM}"))
}

impl InBounds for VoteResponse<NodeId> {
    fn out_of_bounds(&self) -> Option<String> {
        vote_out_of_bounds(&self.vote).or_else(|| {
            check_log_id("an answer", self.last_log_id.as_ref())
                .err()
                .map(|s| s.message().to_owned())
        })
    }
}

impl InBounds for AppendEntriesResponse<NodeId> {
    fn out_of_bounds(&self) -> Option<String> {
        match self {
            AppendEntriesResponse::HigherVote(vote) => vote_out_of_bounds(vote),
            // openraft's own followers never answer so; taken at its word it would move the
            // leader's idea of what the follower holds.
            AppendEntriesResponse::PartialSuccess(_) => {
                Some("an answer claims a partial success, which no follower sends".into())
            }
            AppendEntriesResponse::Success | AppendEntriesResponse::Conflict => None,
        }
    }
}

impl InBounds for InstallSnapshotResponse<NodeId> {
    fn out_of_bounds(&self) -> Option<String> {
        vote_out_of_bounds(&self.vote)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, SnapshotMeta, StoredMembership};

    use super::*;
    use crate::raft::{Entry, Request};

    fn members(ids: &[u64]) -> Speaker {
        Speaker::Members(ids.iter().copied().collect())
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Request { batch: Vec::new() }),
        }
    }

    fn append(
        term: u64,
        leader: u64,
        prev: Option<u64>,
        entries: &[(u64, u64)],
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, leader),
            prev_log_id: prev.map(|i| log_id(term, i)),
            entries: entries.iter().map(|(t, i)| entry(*t, *i)).collect(),
            leader_commit: None,
        }
    }

    fn chunk(
        leader: u64,
        id: &str,
        offset: u64,
        len: usize,
        done: bool,
    ) -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest {
            vote: Vote::new_committed(5, leader),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(5, 100)),
                last_membership: StoredMembership::default(),
                snapshot_id: id.into(),
            },
            offset,
            data: vec![0; len],
            done,
        }
    }

    #[test]
    fn a_message_must_come_from_the_member_whose_certificate_sent_it() {
        let vote = VoteRequest {
            vote: Vote::new(3, 7),
            last_log_id: None,
        };
        assert!(check_vote(&vote, &members(&[7])).is_ok());
        assert!(check_vote(&vote, &Speaker::Anyone).is_ok());
        let e = check_vote(&vote, &members(&[8])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        let e = check_append(&append(3, 7, None, &[]), &members(&[8])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        // A leader's vote is committed; a candidate's is not.
        let uncommitted = AppendEntriesRequest {
            vote: Vote::new(3, 7),
            ..append(3, 7, None, &[])
        };
        assert!(check_append(&uncommitted, &members(&[7])).is_err());
    }

    #[test]
    fn absurd_terms_and_indices_are_refused() {
        let huge = VoteRequest {
            vote: Vote::new(u64::MAX, 7),
            last_log_id: None,
        };
        let e = check_vote(&huge, &members(&[7])).unwrap_err();
        assert!(e.message().contains("above the highest accepted"), "{e}");
        assert!(check_append(&append(u64::MAX, 7, None, &[]), &members(&[7])).is_err());
        assert!(check_append(&append(3, 7, Some(u64::MAX), &[]), &members(&[7])).is_err());
        assert!(
            AppendEntriesResponse::<NodeId>::HigherVote(Vote::new_committed(u64::MAX, 2))
                .out_of_bounds()
                .is_some()
        );
        assert!(
            AppendEntriesResponse::<NodeId>::HigherVote(Vote::new_committed(9, 2))
                .out_of_bounds()
                .is_none()
        );
        assert!(
            AppendEntriesResponse::<NodeId>::PartialSuccess(None)
                .out_of_bounds()
                .is_some()
        );
    }

    #[test]
    fn entries_follow_one_another_and_never_outrun_their_leader() {
        let ok = append(3, 7, Some(4), &[(2, 5), (3, 6)]);
        assert!(check_append(&ok, &members(&[7])).is_ok());
        assert!(check_append(&append(3, 7, Some(4), &[(3, 6)]), &members(&[7])).is_err());
        assert!(check_append(&append(3, 7, Some(4), &[(3, 5), (3, 5)]), &members(&[7])).is_err());
        assert!(check_append(&append(3, 7, Some(4), &[(4, 5)]), &members(&[7])).is_err());
        assert!(check_append(&append(3, 7, None, &[(1, 0), (1, 1)]), &members(&[7])).is_ok());
    }

    #[test]
    fn snapshot_chunks_come_in_order_without_gaps_and_within_the_bound() {
        let who = members(&[7]);
        let first = next_state(None, &chunk(7, "s1", 0, 100, false), &who).unwrap();
        assert_eq!(first.as_ref().map(|r| r.received), Some(100));
        // A resent chunk, then the next one.
        let again = next_state(first.as_ref(), &chunk(7, "s1", 0, 100, false), &who).unwrap();
        let second = next_state(again.as_ref(), &chunk(7, "s1", 100, 50, false), &who).unwrap();
        assert_eq!(second.as_ref().map(|r| r.received), Some(150));
        // A gap, another snapshot's continuation, an offset past the bound: refused.
        assert!(next_state(second.as_ref(), &chunk(7, "s1", 151, 1, false), &who).is_err());
        assert!(next_state(second.as_ref(), &chunk(7, "s2", 150, 1, false), &who).is_err());
        let far =
            next_state(second.as_ref(), &chunk(7, "s1", 1 << 40, 1, false), &who).unwrap_err();
        assert!(far.message().contains("past"), "{far}");
        assert!(next_state(None, &chunk(7, "s1", u64::MAX, 1, false), &who).is_err());
        // The last chunk ends it; another sender's chunk is refused.
        assert_eq!(
            next_state(second.as_ref(), &chunk(7, "s1", 150, 10, true), &who).unwrap(),
            None
        );
        assert!(next_state(None, &chunk(8, "s1", 0, 1, false), &who).is_err());
    }
}
