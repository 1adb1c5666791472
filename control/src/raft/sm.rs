//! The raft state machine: committed change sets applied to the in-memory [`Store`], and
//! snapshots of it on disk.
//!
//! A snapshot is one file, `<dir>/snapshots/<term>-<index>.snap`: the store's image and raft's
//! metadata as JSON, sealed with the manager's data key ([`crate::keys`]), written whole (tmp,
//! fsync, rename, fsync dir). At open the newest one
//! is loaded into the store, and openraft replays the log from there. Older snapshots are
//! removed once a newer one is durable (SwarmKit keeps none by default either).

use std::{
    fs,
    io::{self, Cursor},
    path::{Path, PathBuf},
    sync::Arc,
};

use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    storage::RaftStateMachine,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{
    Entry, NodeId, RaftMember, Request, Response, StorageResult, TypeConfig, log::Durability,
};
use crate::{
    keys::{DataKey, Purpose},
    store::{Image, Store},
};

/// What a snapshot file holds.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, RaftMember>,
    image: Image,
}

#[derive(Debug, Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, RaftMember>,
    /// The newest durable snapshot: its metadata and bytes.
    current: Option<(SnapshotMeta<NodeId, RaftMember>, Vec<u8>)>,
}

/// The state machine handed to openraft. Clones share it.
#[derive(Debug, Clone)]
pub struct StateMachine {
    store: Store,
    dir: PathBuf,
    /// Seals snapshot files.
    key: DataKey,
    applied: Arc<Mutex<Applied>>,
    /// The log's: nothing is applied before the log holds it on disk (raft/log.rs).
    durability: Durability,
}

fn snapshot_error(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::Snapshot(None),
            ErrorVerb::Write,
            AnyError::new(&e),
        ),
    }
}

impl StateMachine {
    /// Opens the snapshots in `dir` and loads the newest into `store`; entries are applied
    /// once `durability` (the log's) says they are on disk.
    pub fn open(
        dir: &Path,
        store: Store,
        key: DataKey,
        durability: Durability,
    ) -> io::Result<Self> {
        let dir = dir.join("snapshots");
        fs::create_dir_all(&dir)?;
        let mut newest: Option<((u64, u64), PathBuf)> = None;
        for item in fs::read_dir(&dir)? {
            let path = item?.path();
            let key = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".snap"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(t, i)| Some((t.parse().ok()?, i.parse().ok()?)));
            match key {
                Some(key) if newest.as_ref().is_none_or(|(k, _)| key > *k) => {
                    newest = Some((key, path))
                }
                // Temporary files from a crash mid-write, or older snapshots.
                _ => {}
            }
        }
        let mut applied = Applied::default();
        if let Some((_, path)) = newest {
            let bytes = key.open(Purpose::Snapshot, &fs::read(&path)?).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: does not open with this manager's data key (keys.json is not the one it was written with, or the file was altered)",
                        path.display()
                    ),
                )
            })?;
            let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
            store.restore(file.image);
            applied.last_applied = file.meta.last_log_id;
            applied.membership = file.meta.last_membership.clone();
            applied.current = Some((file.meta, bytes));
        }
        Ok(Self {
            store,
            dir,
            key,
            applied: Arc::new(Mutex::new(applied)),
            durability,
        })
    }

    /// The store this machine feeds.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Writes a snapshot file and makes it the current one, removing older files.
    async fn persist(
        &self,
        meta: SnapshotMeta<NodeId, RaftMember>,
        bytes: Vec<u8>,
        applied: &mut Applied,
    ) -> io::Result<()> {
        let index = meta.last_log_id.map_or(0, |l| l.index);
        let term = meta.last_log_id.map_or(0, |l| l.leader_id.term);
        let name = format!("{term:020}-{index:020}.snap");
        let path = self.dir.join(&name);
        let dir = self.dir.clone();
        let data = self.key.seal(Purpose::Snapshot, &bytes)?;
        tokio::task::spawn_blocking(move || {
            crate::durable::write_durable(&path, &data, crate::durable::FILE_MODE)?;
            for item in fs::read_dir(&dir)? {
                let old = item?.path();
                if old.file_name().and_then(|n| n.to_str()) != Some(name.as_str())
                    && old.extension().is_some_and(|e| e == "snap")
                {
                    fs::remove_file(old)?;
                }
            }
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(io::Error::other)??;
        applied.current = Some((meta, bytes));
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let mut applied = self.applied.lock().await;
        // The image and the applied log id are taken together, under the machine's lock.
        let image = self.store.image();
        let last = applied.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: applied.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index)
            ),
        };
        let bytes = serde_json::to_vec(&SnapshotFile {
            meta: meta.clone(),
            image,
        })
        .map_err(snapshot_error)?;
        self.persist(meta.clone(), bytes.clone(), &mut applied)
            .await
            .map_err(snapshot_error)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, RaftMember>)> {
        let applied = self.applied.lock().await;
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let Some(last) = entries.last() {
            self.durability
                .reach(last.log_id.index)
                .await
                .map_err(|e| StorageError::IO {
                    source: StorageIOError::new(
                        ErrorSubject::Apply(last.log_id),
                        ErrorVerb::Read,
                        AnyError::new(&e),
                    ),
                })?;
        }
        let mut applied = self.applied.lock().await;
        let mut responses = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(Request { batch }) => Response {
                    index: entry.log_id.index,
                    refused: self
                        .store
                        .apply_batch(entry.log_id.index, &batch)
                        .into_iter()
                        .map(Result::err)
                        .collect(),
                },
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::default()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, RaftMember>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(snapshot_error)?;
        let mut applied = self.applied.lock().await;
        self.persist(meta.clone(), bytes, &mut applied)
            .await
            .map_err(snapshot_error)?;
        self.store.restore(file.image);
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let applied = self.applied.lock().await;
        Ok(applied.current.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}
