//! Group commit above raft: change sets proposed at the same time travel in one raft entry.
//!
//! openraft 0.9 writes each entry to the leader's log and waits for its fsync before it takes
//! the next one, so one entry per change set caps the leader at one fsync per write. The
//! proposer sends whatever has queued up as one entry, with at most [`IN_FLIGHT`] entries on
//! their way at once: under load, the batches grow; a lone writer waits for nobody.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{NodeId, Raft, RaftMember, Request};
use crate::limits;
use crate::store::{ChangeSet, StoreError};

/// Entries proposed and not yet answered, at most.
pub const IN_FLIGHT: usize = 2;
/// Change sets in one entry, at most.
pub const MAX_BATCH: usize = 512;

/// Why a proposal did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// Committed, and refused by the store (stale version, existing or missing ID).
    #[error(transparent)]
    Refused(StoreError),
    /// This manager stopped leading before the entry committed.
    #[error("leadership moved while writing; try again")]
    NotLeader,
    /// The proposer's task is gone (the manager is shutting down).
    #[error("raft: the proposer stopped")]
    Stopped,
    /// Raft failed.
    #[error("raft: {0}")]
    Raft(#[source] Arc<RaftError<NodeId, ClientWriteError<NodeId, RaftMember>>>),
    /// The change set alone is larger than a raft entry may be.
    #[error(
        "the write is {bytes} bytes, larger than the {} a raft entry may carry",
        limits::MAX_ENTRY_BYTES
    )]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
}

struct Proposal {
    changes: ChangeSet,
    reply: oneshot::Sender<Result<u64, ProposeError>>,
}

/// Hands change sets to raft in batches. Clones share the queue.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<Proposal>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").finish_non_exhaustive()
    }
}

impl Proposer {
    /// Starts proposing to `raft`; stops when every clone is dropped.
    pub fn start(raft: Raft) -> Self {
        let (queue, proposals) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, proposals));
        Self { queue }
    }

    /// Proposes `changes`; the raft index they were applied at once committed.
    pub async fn propose(&self, changes: ChangeSet) -> Result<u64, ProposeError> {
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Proposal { changes, reply })
            .map_err(|_| ProposeError::Stopped)?;
        let result = answer.await.map_err(|_| ProposeError::Stopped)?;
        let metrics = crate::metrics::control();
        let outcome = match &result {
            Ok(_) => "committed",
            Err(ProposeError::Refused(_)) => "refused",
            Err(_) => "failed",
        };
        metrics
            .proposals
            .get_or_create(&[("outcome", outcome)])
            .inc();
        metrics
            .proposal_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

/// A change set's size in a raft entry (its JSON).
fn size_of(changes: &ChangeSet) -> usize {
    serde_json::to_vec(changes).map_or(usize::MAX, |b| b.len())
}

async fn run(raft: Raft, mut proposals: mpsc::UnboundedReceiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // A proposal that did not fit in the last batch: it opens the next one.
    let mut carried: Option<(Proposal, usize)> = None;
    loop {
        let (first, first_size) = match carried.take() {
            Some(carried) => carried,
            None => match proposals.recv().await {
                Some(p) => {
                    let size = size_of(&p.changes);
                    (p, size)
                }
                None => return,
            },
        };
        if first_size > limits::MAX_ENTRY_BYTES {
            let _ = first
                .reply
                .send(Err(ProposeError::TooLarge { bytes: first_size }));
            continue;
        }
        // Waiting for a slot is when the next batch fills up.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        let mut bytes = first_size;
        while batch.len() < MAX_BATCH {
            match proposals.try_recv() {
                Ok(proposal) => {
                    let size = size_of(&proposal.changes);
                    if bytes + size > limits::MAX_ENTRY_BYTES {
                        carried = Some((proposal, size));
                        break;
                    }
                    bytes += size;
                    batch.push(proposal);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        crate::metrics::control().raft_entries.inc();
        tokio::spawn(async move {
            let (changes, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.changes, p.reply)).unzip();
            let written = raft.client_write(Request { batch: changes }).await;
            drop(slot);
            match written {
                Ok(written) => {
                    let index = written.data.index;
                    let mut refused = written.data.refused.into_iter();
                    for reply in replies {
                        let _ = reply.send(match refused.next().flatten() {
                            None => Ok(index),
                            Some(e) => Err(ProposeError::Refused(e)),
                        });
                    }
                }
                Err(e) => {
                    let error = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                            ProposeError::NotLeader
                        }
                        other => ProposeError::Raft(Arc::new(other)),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}
