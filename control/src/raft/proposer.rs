//! Group commit above raft: change sets proposed at the same time travel in one raft entry.
//!
//! openraft 0.9 writes each entry to the leader's log and waits for its fsync before it takes
//! the next one, so one entry per change set caps the leader at one fsync per write. The
//! proposer sends whatever has queued up as one entry, with at most [`IN_FLIGHT`] entries on
//! their way at once: under load, the batches grow; a lone writer waits for nobody. A change
//! set proposed while nothing is queued and a slot is free is written by its caller's own task,
//! without passing through the proposer's; a caller that gives up then frees its slot while
//! its entry may still commit.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

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
    raft: Raft,
    /// Entries on their way, at most [`IN_FLIGHT`].
    slots: Arc<Semaphore>,
    /// Proposals sent to the queue and not yet taken from it.
    queued: Arc<AtomicUsize>,
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
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(raft.clone(), proposals, slots.clone(), queued.clone()));
        Self {
            queue,
            raft,
            slots,
            queued,
        }
    }

    /// Proposes `changes`; the raft index they were applied at once committed.
    pub async fn propose(&self, changes: ChangeSet) -> Result<u64, ProposeError> {
        let started = std::time::Instant::now();
        let result = match self.free_slot() {
            // Nobody to batch with: written at once, from this task.
            Some(slot) => {
                let size = size_of(&changes);
                if size > limits::MAX_ENTRY_BYTES {
                    Err(ProposeError::TooLarge { bytes: size })
                } else {
                    crate::metrics::control().raft_entries.inc();
                    let written = write(&self.raft, vec![changes]).await;
                    drop(slot);
                    written
                        .and_then(|mut answers| answers.pop().unwrap_or(Err(ProposeError::Stopped)))
                }
            }
            None => {
                let (reply, answer) = oneshot::channel();
                self.queued.fetch_add(1, Ordering::AcqRel);
                if self.queue.send(Proposal { changes, reply }).is_err() {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    return Err(ProposeError::Stopped);
                }
                answer.await.map_err(|_| ProposeError::Stopped)?
            }
        };
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

    /// A slot for an entry, when nothing is queued and one is free.
    fn free_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// Writes `batch` as one raft entry: for each change set, the index it was applied at or why it
/// was refused; the whole batch's error when the entry did not commit.
async fn write(
    raft: &Raft,
    batch: Vec<ChangeSet>,
) -> Result<Vec<Result<u64, ProposeError>>, ProposeError> {
    let len = batch.len();
    match raft.client_write(Request { batch }).await {
        Ok(written) => {
            let index = written.data.index;
            let mut refused = written.data.refused.into_iter();
            Ok((0..len)
                .map(|_| match refused.next().flatten() {
                    None => Ok(index),
                    Some(e) => Err(ProposeError::Refused(e)),
                })
                .collect())
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(ProposeError::NotLeader)
        }
        Err(other) => Err(ProposeError::Raft(Arc::new(other))),
    }
}

/// A change set's size in a raft entry (its JSON).
fn size_of(changes: &ChangeSet) -> usize {
    serde_json::to_vec(changes).map_or(usize::MAX, |b| b.len())
}

async fn run(
    raft: Raft,
    mut proposals: mpsc::UnboundedReceiver<Proposal>,
    slots: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
) {
    let take = |proposals: &mut mpsc::UnboundedReceiver<Proposal>| {
        let proposal = proposals.try_recv().ok()?;
        queued.fetch_sub(1, Ordering::AcqRel);
        Some(proposal)
    };
    // A proposal that did not fit in the last batch: it opens the next one.
    let mut carried: Option<(Proposal, usize)> = None;
    loop {
        let (first, first_size) = match carried.take() {
            Some(carried) => carried,
            None => match proposals.recv().await {
                Some(p) => {
                    queued.fetch_sub(1, Ordering::AcqRel);
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
            let Some(proposal) = take(&mut proposals) else {
                break;
            };
            let size = size_of(&proposal.changes);
            if bytes + size > limits::MAX_ENTRY_BYTES {
                carried = Some((proposal, size));
                break;
            }
            bytes += size;
            batch.push(proposal);
        }
        let raft = raft.clone();
        crate::metrics::control().raft_entries.inc();
        tokio::spawn(async move {
            let (changes, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.changes, p.reply)).unzip();
            let written = write(&raft, changes).await;
            drop(slot);
            match written {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}
