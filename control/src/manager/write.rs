//! Writing the store through raft: a change set proposed and waited for (`propose`), a
//! read-modify-write retried when another write got in first (`update`), and how the store's
//! refusals reach the caller.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use shoal_api::reason::Reason;
use tonic::Status;

use super::Inner;
use crate::{
    raft::proposer::ProposeError,
    store::{ChangeSet, StoreError},
};

/// The time now, RFC 3339.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// How long a write may wait to be committed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(20);

/// A store's refusal as the caller sees it (a stale version and an existing ID carry their
/// [`Reason`]).
pub(super) fn to_status(e: StoreError) -> Status {
    match e {
        StoreError::Stale { .. } => Reason::Stale.status("update out of sequence"),
        StoreError::Exists { .. } => Reason::Exists.status(e.to_string()),
        StoreError::Missing { .. } => Status::not_found(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// A stored object that does not decode.
pub(super) fn json_error(e: serde_json::Error) -> Status {
    Status::internal(format!("a stored object does not decode: {e}"))
}

/// Proposes `changes` and waits until they are committed and applied; the new index.
pub(super) async fn propose(inner: &Inner, changes: ChangeSet) -> Result<u64, Status> {
    let Ok(proposed) = tokio::time::timeout(COMMIT_TIMEOUT, inner.proposer.propose(changes)).await
    else {
        return Err(Reason::NoLeader.status(format!(
            "{} (the write was not committed within {}s; it may still be)",
            shoal_api::swarm::NO_LEADER,
            COMMIT_TIMEOUT.as_secs()
        )));
    };
    match proposed {
        Ok(index) => Ok(index),
        Err(ProposeError::Refused(e)) => Err(to_status(e)),
        Err(e @ ProposeError::TooLarge { .. }) => Err(Status::invalid_argument(e.to_string())),
        Err(ProposeError::NotLeader) => Err(Status::unavailable(
            "leadership moved while writing; try again",
        )),
        Err(e) => Err(Status::internal(e.to_string())),
    }
}

/// How many times a read-modify-write is tried before it gives up (each retry follows a write
/// that got in between its read and its own write).
const UPDATE_ATTEMPTS: usize = 5;

/// What one try of a read-modify-write ([`update`]) decided, from the store as it read it.
pub(super) enum Attempt<T> {
    /// Nothing to write: the outcome as it stands.
    Unchanged(T),
    /// Write `changes` (each at the version it read); the outcome once they are applied.
    Write(ChangeSet, T),
}

/// A read-modify-write of the store, as SwarmKit's `store.Update`: `attempt` reads what it
/// needs and says what to write. When another write got there first (a change at a version
/// that moved, or a create that lost a race) it runs again on the store as it is now, up to
/// [`UPDATE_ATTEMPTS`] times, then fails as out of sequence with `exhausted`. The outcome, and
/// the index the write was applied at (`None` when nothing was written).
pub(super) async fn update<T>(
    inner: &Inner,
    exhausted: &str,
    mut attempt: impl FnMut() -> Result<Attempt<T>, Status>,
) -> Result<(T, Option<u64>), Status> {
    for _ in 0..UPDATE_ATTEMPTS {
        let (changes, outcome) = match attempt()? {
            Attempt::Unchanged(outcome) => return Ok((outcome, None)),
            Attempt::Write(changes, outcome) => (changes, outcome),
        };
        match propose(inner, changes).await {
            Err(s) if matches!(Reason::of(&s), Some(Reason::Stale | Reason::Exists)) => {}
            Err(s) => return Err(s),
            Ok(index) => return Ok((outcome, Some(index))),
        }
    }
    Err(Status::aborted(exhausted.to_owned()))
}

/// `value` as the JSON answer of a call.
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Value, Status> {
    serde_json::to_value(value).map_err(|e| Status::internal(e.to_string()))
}
