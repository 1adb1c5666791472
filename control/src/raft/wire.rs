//! Raft's messages on the wire: openraft's requests and answers as the typed protobuf messages
//! of `proto/shoal/v1/raft.proto` (`shoal_api::v1`), and back.
//!
//! Both sides' types are foreign to this crate, so the conversions are functions, not `From`
//! impls: `to_*` builds the wire message, `from_*` reads one and refuses what openraft could not
//! have sent (a missing vote, an entry without a payload, a change set that does not decode)
//! with a [`WireError`] saying which field was wrong.
//!
//! An entry's change sets travel as their JSON encoding (version 1, what the log and snapshots
//! hold); everything around them is protobuf.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{
    CommittedLeaderId, EntryPayload, LeaderId, LogId, Membership, SnapshotMeta, SnapshotSegmentId,
    StoredMembership, Vote,
    error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
};
use shoal_api::v1;

use super::{Entry, NodeId, RaftMember, Request, TypeConfig};

/// A raft message that does not say what openraft needs.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A field openraft requires is absent.
    #[error("the raft message has no {0}")]
    Missing(&'static str),
    /// An entry's change sets do not decode.
    #[error("an entry's change sets do not decode: {0}")]
    ChangeSets(#[source] serde_json::Error),
    /// The receiving raft node failed (its answer says how).
    #[error("the peer's raft failed: {0}")]
    Failed(String),
}

fn to_vote(vote: &Vote<NodeId>) -> v1::Vote {
    v1::Vote {
        term: vote.leader_id.term,
        node_id: vote.leader_id.node_id,
        committed: vote.committed,
    }
}

fn from_vote(vote: Option<v1::Vote>) -> Result<Vote<NodeId>, WireError> {
    let vote = vote.ok_or(WireError::Missing("vote"))?;
    Ok(Vote {
        leader_id: LeaderId::new(vote.term, vote.node_id),
        committed: vote.committed,
    })
}

fn to_log_id(id: &LogId<NodeId>) -> v1::LogId {
    v1::LogId {
        term: id.leader_id.term,
        node_id: id.leader_id.node_id,
        index: id.index,
    }
}

fn from_log_id(id: v1::LogId) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(id.term, id.node_id), id.index)
}

fn to_membership(m: &Membership<NodeId, RaftMember>) -> v1::Membership {
    v1::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|ids| v1::MemberIds {
                ids: ids.iter().copied().collect(),
            })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, member)| {
                let member = v1::RaftMember {
                    addr: member.addr.clone(),
                    node_id: member.node_id.clone(),
                };
                (*id, member)
            })
            .collect(),
    }
}

fn from_membership(m: v1::Membership) -> Membership<NodeId, RaftMember> {
    let configs: Vec<BTreeSet<NodeId>> = m
        .configs
        .into_iter()
        .map(|c| c.ids.into_iter().collect())
        .collect();
    let nodes: BTreeMap<NodeId, RaftMember> = m
        .nodes
        .into_iter()
        .map(|(id, n)| (id, RaftMember::new(n.addr, n.node_id)))
        .collect();
    Membership::new(configs, nodes)
}

fn to_entry(entry: &Entry) -> v1::Entry {
    let payload = match &entry.payload {
        EntryPayload::Blank => v1::entry::Payload::Blank(v1::Empty {}),
        EntryPayload::Normal(request) => v1::entry::Payload::Normal(encode_change_sets(request)),
        EntryPayload::Membership(m) => v1::entry::Payload::Membership(to_membership(m)),
    };
    v1::Entry {
        log_id: Some(to_log_id(&entry.log_id)),
        payload: Some(payload),
    }
}

fn from_entry(entry: v1::Entry) -> Result<Entry, WireError> {
    let log_id = from_log_id(entry.log_id.ok_or(WireError::Missing("entry's log ID"))?);
    let payload = match entry.payload.ok_or(WireError::Missing("entry's payload"))? {
        v1::entry::Payload::Blank(_) => EntryPayload::Blank,
        v1::entry::Payload::Normal(bytes) => {
            EntryPayload::Normal(serde_json::from_slice(&bytes).map_err(WireError::ChangeSets)?)
        }
        v1::entry::Payload::Membership(m) => EntryPayload::Membership(from_membership(m)),
    };
    Ok(Entry { log_id, payload })
}

/// An entry's change sets in their encoding (JSON, version 1).
fn encode_change_sets(request: &Request) -> Vec<u8> {
    serde_json::to_vec(request)
        .expect("a raft request is plain data (strings, numbers, JSON values with string keys)")
}

/// An append-entries request as sent.
pub fn to_append(rpc: &AppendEntriesRequest<TypeConfig>) -> v1::AppendEntriesRequest {
    v1::AppendEntriesRequest {
        vote: Some(to_vote(&rpc.vote)),
        prev_log_id: rpc.prev_log_id.as_ref().map(to_log_id),
        entries: rpc.entries.iter().map(to_entry).collect(),
        leader_commit: rpc.leader_commit.as_ref().map(to_log_id),
    }
}

/// An append-entries request as received.
pub fn from_append(
    rpc: v1::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, WireError> {
    Ok(AppendEntriesRequest {
        vote: from_vote(rpc.vote)?,
        prev_log_id: rpc.prev_log_id.map(from_log_id),
        entries: rpc
            .entries
            .into_iter()
            .map(from_entry)
            .collect::<Result<_, _>>()?,
        leader_commit: rpc.leader_commit.map(from_log_id),
    })
}

/// A raft node's failure, as its answer carries it.
fn to_failure(fatal: &Fatal<NodeId>) -> v1::RaftFailure {
    let kind = match fatal {
        Fatal::Stopped => v1::raft_failure::Kind::Stopped,
        Fatal::Panicked => v1::raft_failure::Kind::Panicked,
        Fatal::StorageError(_) => v1::raft_failure::Kind::Storage,
    };
    v1::RaftFailure {
        kind: kind.into(),
        message: fatal.to_string(),
    }
}

/// A failure the answer reported: openraft's own, where it has one; a storage failure stays
/// text (its cause is the peer's).
fn from_failure<E>(failure: &v1::RaftFailure) -> Result<RaftError<NodeId, E>, WireError>
where
    E: std::error::Error,
{
    match failure.kind() {
        v1::raft_failure::Kind::Stopped => Ok(RaftError::Fatal(Fatal::Stopped)),
        v1::raft_failure::Kind::Panicked => Ok(RaftError::Fatal(Fatal::Panicked)),
        v1::raft_failure::Kind::Storage => Err(WireError::Failed(failure.message.clone())),
    }
}

/// An append-entries answer as sent.
pub fn to_append_reply(
    answer: &Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>,
) -> v1::AppendEntriesReply {
    use v1::append_entries_reply::Answer;
    let answer = match answer {
        Ok(AppendEntriesResponse::Success) => Answer::Success(v1::Empty {}),
        Ok(AppendEntriesResponse::PartialSuccess(matching)) => {
            Answer::PartialSuccess(v1::PartialSuccess {
                matching: matching.as_ref().map(to_log_id),
            })
        }
        Ok(AppendEntriesResponse::Conflict) => Answer::Conflict(v1::Empty {}),
        Ok(AppendEntriesResponse::HigherVote(vote)) => Answer::HigherVote(to_vote(vote)),
        Err(RaftError::Fatal(fatal)) => Answer::Failure(to_failure(fatal)),
        Err(RaftError::APIError(never)) => match *never {},
    };
    v1::AppendEntriesReply {
        answer: Some(answer),
    }
}

/// An append-entries answer as received.
pub fn from_append_reply(
    reply: v1::AppendEntriesReply,
) -> Result<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>, WireError> {
    use v1::append_entries_reply::Answer;
    Ok(match reply.answer.ok_or(WireError::Missing("answer"))? {
        Answer::Success(_) => Ok(AppendEntriesResponse::Success),
        Answer::PartialSuccess(p) => Ok(AppendEntriesResponse::PartialSuccess(
            p.matching.map(from_log_id),
        )),
        Answer::Conflict(_) => Ok(AppendEntriesResponse::Conflict),
        Answer::HigherVote(vote) => Ok(AppendEntriesResponse::HigherVote(from_vote(Some(vote))?)),
        Answer::Failure(failure) => Err(from_failure(&failure)?),
    })
}

/// A vote request as sent.
pub fn to_vote_request(rpc: &VoteRequest<NodeId>) -> v1::VoteRequest {
    v1::VoteRequest {
        vote: Some(to_vote(&rpc.vote)),
        last_log_id: rpc.last_log_id.as_ref().map(to_log_id),
    }
}

/// A vote request as received.
pub fn from_vote_request(rpc: v1::VoteRequest) -> Result<VoteRequest<NodeId>, WireError> {
    Ok(VoteRequest {
        vote: from_vote(rpc.vote)?,
        last_log_id: rpc.last_log_id.map(from_log_id),
    })
}

/// A vote answer as sent.
pub fn to_vote_reply(answer: &Result<VoteResponse<NodeId>, RaftError<NodeId>>) -> v1::VoteReply {
    use v1::vote_reply::Answer;
    let answer = match answer {
        Ok(response) => Answer::Response(v1::VoteResponse {
            vote: Some(to_vote(&response.vote)),
            vote_granted: response.vote_granted,
            last_log_id: response.last_log_id.as_ref().map(to_log_id),
        }),
        Err(RaftError::Fatal(fatal)) => Answer::Failure(to_failure(fatal)),
        Err(RaftError::APIError(never)) => match *never {},
    };
    v1::VoteReply {
        answer: Some(answer),
    }
}

/// A vote answer as received.
pub fn from_vote_reply(
    reply: v1::VoteReply,
) -> Result<Result<VoteResponse<NodeId>, RaftError<NodeId>>, WireError> {
    use v1::vote_reply::Answer;
    Ok(match reply.answer.ok_or(WireError::Missing("answer"))? {
        Answer::Response(r) => Ok(VoteResponse {
            vote: from_vote(r.vote)?,
            vote_granted: r.vote_granted,
            last_log_id: r.last_log_id.map(from_log_id),
        }),
        Answer::Failure(failure) => Err(from_failure(&failure)?),
    })
}

/// A snapshot chunk as sent (its data moved, not copied).
pub fn to_snapshot(rpc: InstallSnapshotRequest<TypeConfig>) -> v1::InstallSnapshotRequest {
    let meta = &rpc.meta;
    v1::InstallSnapshotRequest {
        vote: Some(to_vote(&rpc.vote)),
        meta: Some(v1::SnapshotMeta {
            last_log_id: meta.last_log_id.as_ref().map(to_log_id),
            last_membership: Some(v1::StoredMembership {
                log_id: meta.last_membership.log_id().as_ref().map(to_log_id),
                membership: Some(to_membership(meta.last_membership.membership())),
            }),
            snapshot_id: meta.snapshot_id.clone(),
        }),
        offset: rpc.offset,
        data: rpc.data,
        done: rpc.done,
    }
}

/// A snapshot chunk as received.
pub fn from_snapshot(
    rpc: v1::InstallSnapshotRequest,
) -> Result<InstallSnapshotRequest<TypeConfig>, WireError> {
    let meta = rpc.meta.ok_or(WireError::Missing("snapshot's meta"))?;
    let stored = meta
        .last_membership
        .ok_or(WireError::Missing("snapshot's membership"))?;
    let membership = from_membership(
        stored
            .membership
            .ok_or(WireError::Missing("snapshot's membership"))?,
    );
    Ok(InstallSnapshotRequest {
        vote: from_vote(rpc.vote)?,
        meta: SnapshotMeta {
            last_log_id: meta.last_log_id.map(from_log_id),
            last_membership: StoredMembership::new(stored.log_id.map(from_log_id), membership),
            snapshot_id: meta.snapshot_id,
        },
        offset: rpc.offset,
        data: rpc.data,
        done: rpc.done,
    })
}

fn to_segment(segment: &SnapshotSegmentId) -> v1::SnapshotSegment {
    v1::SnapshotSegment {
        id: segment.id.clone(),
        offset: segment.offset,
    }
}

fn from_segment(segment: Option<v1::SnapshotSegment>) -> Result<SnapshotSegmentId, WireError> {
    let segment = segment.ok_or(WireError::Missing("snapshot segment"))?;
    Ok(SnapshotSegmentId {
        id: segment.id,
        offset: segment.offset,
    })
}

/// A snapshot chunk's answer as sent.
pub fn to_snapshot_reply(
    answer: &Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
) -> v1::InstallSnapshotReply {
    use v1::install_snapshot_reply::Answer;
    let answer = match answer {
        Ok(response) => Answer::Vote(to_vote(&response.vote)),
        Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
            Answer::Mismatch(v1::SnapshotMismatch {
                expect: Some(to_segment(&m.expect)),
                got: Some(to_segment(&m.got)),
            })
        }
        Err(RaftError::Fatal(fatal)) => Answer::Failure(to_failure(fatal)),
    };
    v1::InstallSnapshotReply {
        answer: Some(answer),
    }
}

/// A snapshot chunk's answer as received.
pub fn from_snapshot_reply(
    reply: v1::InstallSnapshotReply,
) -> Result<
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    WireError,
> {
    use v1::install_snapshot_reply::Answer;
    Ok(match reply.answer.ok_or(WireError::Missing("answer"))? {
        Answer::Vote(vote) => Ok(InstallSnapshotResponse {
            vote: from_vote(Some(vote))?,
        }),
        Answer::Mismatch(m) => Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
            SnapshotMismatch {
                expect: from_segment(m.expect)?,
                got: from_segment(m.got)?,
            },
        ))),
        Answer::Failure(failure) => Err(from_failure(&failure)?),
    })
}

#[cfg(test)]
mod tests {
    use openraft::error::Fatal;
    use serde_json::json;

    use super::*;
    use crate::store::{Change, ChangeSet, Kind};

    fn log_id(term: u64, node: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn membership() -> Membership<NodeId, RaftMember> {
        let nodes: BTreeMap<NodeId, RaftMember> = [
            (1, RaftMember::new("10.0.0.1:2377", "n1")),
            (2, RaftMember::new("10.0.0.2:2377", "n2")),
            (3, RaftMember::new("10.0.0.3:2377", "n3")),
        ]
        .into();
        // A joint configuration: 1 and 2 moving to 2 and 3.
        Membership::new(vec![[1, 2].into(), [2, 3].into()], nodes)
    }

    #[test]
    fn every_raft_message_reads_back_as_openraft_sent_it_and_bad_ones_say_what_is_missing() {
        let request = Request {
            batch: vec![ChangeSet(vec![Change::Create {
                kind: Kind::Service,
                id: "s1".into(),
                body: json!({"Spec": {"Name": "web"}}),
            }])],
        };
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(2, 1, 9)),
            entries: vec![
                Entry {
                    log_id: log_id(3, 1, 10),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(3, 1, 11),
                    payload: EntryPayload::Normal(request),
                },
                Entry {
                    log_id: log_id(3, 1, 12),
                    payload: EntryPayload::Membership(membership()),
                },
            ],
            leader_commit: Some(log_id(3, 1, 10)),
        };
        let back = from_append(to_append(&append)).expect("an append reads back");
        assert_eq!(back.vote, append.vote);
        assert_eq!(back.prev_log_id, append.prev_log_id);
        assert_eq!(back.leader_commit, append.leader_commit);
        assert_eq!(back.entries, append.entries);

        for answer in [
            Ok(AppendEntriesResponse::Success),
            Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(
                3, 1, 11,
            )))),
            Ok(AppendEntriesResponse::Conflict),
            Ok(AppendEntriesResponse::HigherVote(Vote::new(4, 2))),
            Err(RaftError::Fatal(Fatal::Stopped)),
        ] {
            let back = from_append_reply(to_append_reply(&answer)).expect("an answer reads back");
            assert_eq!(format!("{back:?}"), format!("{answer:?}"));
        }

        let vote = VoteRequest::new(Vote::new(5, 3), Some(log_id(4, 2, 20)));
        assert_eq!(
            from_vote_request(to_vote_request(&vote)).expect("a vote reads back"),
            vote
        );
        let granted = Ok(VoteResponse::new(
            Vote::new(5, 3),
            Some(log_id(4, 2, 20)),
            true,
        ));
        let back = from_vote_reply(to_vote_reply(&granted)).expect("a vote answer reads back");
        assert_eq!(back.ok(), granted.ok());

        let chunk = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(5, 3),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(5, 3, 40)),
                last_membership: StoredMembership::new(Some(log_id(4, 2, 12)), membership()),
                snapshot_id: "5-3-40".into(),
            },
            offset: 1 << 20,
            data: vec![7; 1024],
            done: false,
        };
        let back = from_snapshot(to_snapshot(chunk.clone())).expect("a chunk reads back");
        assert_eq!(back.vote, chunk.vote);
        assert_eq!(back.meta, chunk.meta);
        assert_eq!(
            (back.offset, back.data, back.done),
            (chunk.offset, chunk.data, chunk.done)
        );
        let mismatch: Result<InstallSnapshotResponse<NodeId>, _> = Err(RaftError::APIError(
            InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                expect: SnapshotSegmentId {
                    id: "5-3-40".into(),
                    offset: 0,
                },
                got: SnapshotSegmentId {
                    id: "5-3-40".into(),
                    offset: 1 << 20,
                },
            }),
        ));
        let back = from_snapshot_reply(to_snapshot_reply(&mismatch)).expect("a mismatch");
        assert_eq!(format!("{back:?}"), format!("{mismatch:?}"));

        // What openraft could not have sent is refused, saying which field is wrong.
        let mut bad = to_append(&append);
        bad.vote = None;
        let e = from_append(bad).expect_err("no vote");
        assert_eq!(e.to_string(), "the raft message has no vote");
        let mut bad = to_append(&append);
        bad.entries[1].payload = Some(v1::entry::Payload::Normal(b"{not json".to_vec()));
        let e = from_append(bad).expect_err("change sets that do not decode");
        assert!(
            e.to_string()
                .starts_with("an entry's change sets do not decode"),
            "{e}"
        );
    }
}
