//! The typed object store: the main copy of the cluster state, in memory, as SwarmKit's
//! `MemoryStore` has it. Raft orders the changes; this store applies them.
//!
//! ```text
//!   update(|tx| ...) ── a ChangeSet (creates, updates with the version they saw, deletes)
//!        │                     └─> proposed to raft ── committed at index i ──┐
//!        └───────────────────────────────────────────── apply(i, changeset) <─┘
//!                                        │ stale version? the whole set is refused
//!                                        └─> objects at version i ─> watchers (from any index)
//! ```
//!
//! - An object's version is the raft index of the entry that last changed it.
//! - An update carries the version it read. If the object has changed since, the whole change
//!   set is refused ([`StoreError::Stale`]), so concurrent writers cannot overwrite each other.
//! - [`Store::view`] gives a consistent read of everything at one index.
//! - [`Store::watch`] returns the events after a given index (from a bounded history) followed by
//!   live ones. A reconciler starts its watch at the index of the view it read, and so misses
//!   nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

/// Kinds of objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The cluster object (one).
    Cluster,
    /// Nodes.
    Node,
    /// Services.
    Service,
    /// Tasks.
    Task,
    /// Networks.
    Network,
    /// Named data of `ClusterCall::Put` (what `cargo xtask bench raft` and the crash tests write).
    Data,
    /// Secrets (`secret create`).
    Secret,
    /// Configs (`config create`).
    Config,
}

/// A stored object: its kind, ID, version and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// Its kind.
    pub kind: Kind,
    /// Its ID (unique within its kind).
    pub id: String,
    /// The raft index that last changed it.
    pub version: u64,
    /// The raft index that created it.
    pub created: u64,
    /// Its body.
    pub body: Value,
}

/// One change of a change set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A new object; refused if the ID exists.
    Create {
        /// Its kind.
        kind: Kind,
        /// Its ID.
        id: String,
        /// Its body.
        body: Value,
    },
    /// A new body for an object last seen at `version`.
    Update {
        /// Its kind.
        kind: Kind,
        /// Its ID.
        id: String,
        /// The version the writer read.
        version: u64,
        /// Its new body.
        body: Value,
    },
    /// Removes an object last seen at `version`.
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its ID.
        id: String,
        /// The version the writer read.
        version: u64,
    },
}

/// Changes applied together, or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet(pub Vec<Change>);

/// What a watcher sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An object was created.
    Created(Object),
    /// An object was updated (the new state).
    Updated(Object),
    /// An object was deleted (its last state).
    Deleted(Object),
}

impl Event {
    /// The object the event is about.
    pub fn object(&self) -> &Object {
        match self {
            Self::Created(o) | Self::Updated(o) | Self::Deleted(o) => o,
        }
    }
}

/// Why a change set or a watch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    /// A create of an ID that exists.
    #[error("{kind:?} {id:?} already exists")]
    Exists {
        /// Its kind.
        kind: Kind,
        /// Its ID.
        id: String,
    },
    /// An update or delete of an ID that does not exist.
    #[error("{kind:?} {id:?} does not exist")]
    Missing {
        /// Its kind.
        kind: Kind,
        /// Its ID.
        id: String,
    },
    /// An update or delete based on a version that is no longer current.
    #[error(
        "{kind:?} {id:?} changed since it was read (read at version {read}, now {current}): read it again and retry"
    )]
    Stale {
        /// Its kind.
        kind: Kind,
        /// Its ID.
        id: String,
        /// The version the writer read.
        read: u64,
        /// The version it has.
        current: u64,
    },
    /// An index that does not follow the store's.
    #[error("index {index} does not follow the store's index {current}")]
    OutOfOrder {
        /// The index given.
        index: u64,
        /// The store's.
        current: u64,
    },
    /// A watch from an index older than the history kept.
    #[error(
        "events before index {oldest} are no longer kept (asked from {from}): read a fresh view and watch from its index"
    )]
    Compacted {
        /// The index asked for.
        from: u64,
        /// The oldest index kept.
        oldest: u64,
    },
}

/// Events kept for watchers that start from a past index.
pub const WATCH_REPLAY_EVENTS: usize = 10_000;

#[derive(Debug)]
struct State {
    index: u64,
    objects: BTreeMap<(Kind, String), Object>,
    /// Recent events with the index they were applied at.
    history: VecDeque<(u64, Event)>,
    /// The index before which history was dropped.
    dropped_before: u64,
    /// Live events; replaced (ending every watch) when a snapshot replaces the contents.
    events: broadcast::Sender<(u64, Event)>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            index: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            dropped_before: 0,
            events: broadcast::channel(WATCH_REPLAY_EVENTS).0,
        }
    }
}

/// Everything in the store at one index: what a raft snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The index of the last change set applied.
    pub index: u64,
    /// Every object.
    pub objects: Vec<Object>,
}

/// A consistent read of the store at one index.
#[derive(Debug)]
pub struct ReadTx<'a> {
    state: &'a State,
}

impl ReadTx<'_> {
    /// The index this read is at.
    pub fn index(&self) -> u64 {
        self.state.index
    }

    /// One object.
    pub fn get(&self, kind: Kind, id: &str) -> Option<&Object> {
        self.state.objects.get(&(kind, id.to_owned()))
    }

    /// Every object of a kind, by ID.
    pub fn list(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.state
            .objects
            .range((kind, String::new())..)
            .take_while(move |((k, _), _)| *k == kind)
            .map(|(_, o)| o)
    }
}

/// The store. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Store {
    state: Arc<RwLock<State>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store at index 0.
    pub fn new() -> Self {
        Self {
            state: Arc::new(RwLock::new(State::default())),
        }
    }

    /// A copy of everything, at the index it was read at.
    pub fn image(&self) -> Image {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        Image {
            index: state.index,
            objects: state.objects.values().cloned().collect(),
        }
    }

    /// Replaces the contents with `image` (a raft snapshot being installed). Every watch
    /// ends (`next` returns `None`): a watcher reads a fresh view and watches from its index.
    pub fn restore(&self, image: Image) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        *state = State {
            index: image.index,
            objects: image
                .objects
                .into_iter()
                .map(|o| ((o.kind, o.id.clone()), o))
                .collect(),
            history: VecDeque::new(),
            dropped_before: image.index + 1,
            events: broadcast::channel(WATCH_REPLAY_EVENTS).0,
        };
    }

    /// Runs `f` on a consistent read of the store.
    pub fn view<T>(&self, f: impl FnOnce(&ReadTx<'_>) -> T) -> T {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&ReadTx { state: &state })
    }

    /// The index of the last applied change set.
    pub fn index(&self) -> u64 {
        self.view(|tx| tx.index())
    }

    /// Checks `changes` against the current state without applying them: what a proposer does
    /// before sending them to raft (they are checked again when applied).
    pub fn check(&self, changes: &ChangeSet) -> Result<(), StoreError> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        check(&state, changes)
    }

    /// Applies a committed change set at raft index `index` (which must be above the store's):
    /// all its changes, or none. A refused set still advances the index (the raft entry is
    /// consumed), and the error says why it was refused.
    pub fn apply(&self, index: u64, changes: &ChangeSet) -> Result<(), StoreError> {
        self.apply_batch(index, std::slice::from_ref(changes))
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Applies the change sets of one raft entry at index `index`, in order, each whole or not
    /// at all: a set is judged against the state the sets before it left. Objects changed by
    /// the entry all get version `index`, so a set that read an object another set of the same
    /// entry changed is stale, as if they were separate entries.
    pub fn apply_batch(&self, index: u64, batch: &[ChangeSet]) -> Vec<Result<(), StoreError>> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if index <= state.index {
            let refused = StoreError::OutOfOrder {
                index,
                current: state.index,
            };
            return batch.iter().map(|_| Err(refused.clone())).collect();
        }
        state.index = index;
        batch
            .iter()
            .map(|changes| {
                check(&state, changes)?;
                Self::apply_checked(&mut state, index, changes);
                Ok(())
            })
            .collect()
    }

    /// Applies a checked change set.
    fn apply_checked(state: &mut State, index: u64, changes: &ChangeSet) {
        for change in &changes.0 {
            let event = match change {
                Change::Create { kind, id, body } => {
                    let object = Object {
                        kind: *kind,
                        id: id.clone(),
                        version: index,
                        created: index,
                        body: body.clone(),
                    };
                    state.objects.insert((*kind, id.clone()), object.clone());
                    Event::Created(object)
                }
                Change::Update { kind, id, body, .. } => {
                    let object = state
                        .objects
                        .get_mut(&(*kind, id.clone()))
                        .expect("checked above");
                    object.version = index;
                    object.body = body.clone();
                    Event::Updated(object.clone())
                }
                Change::Delete { kind, id, .. } => {
                    let object = state
                        .objects
                        .remove(&(*kind, id.clone()))
                        .expect("checked above");
                    Event::Deleted(object)
                }
            };
            state.history.push_back((index, event.clone()));
            while state.history.len() > WATCH_REPLAY_EVENTS {
                if let Some((dropped, _)) = state.history.pop_front() {
                    state.dropped_before = dropped + 1;
                }
            }
            // Nobody listening is fine.
            let _ = state.events.send((index, event));
        }
    }

    /// The events applied after index `from`, then live ones. Start from the index of the view
    /// the watcher read: nothing is missed and nothing is seen twice.
    pub fn watch(&self, from: u64) -> Result<Watch, StoreError> {
        // Subscribe under the lock, so no event falls between the replay and the live stream.
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if from + 1 < state.dropped_before {
            return Err(StoreError::Compacted {
                from,
                oldest: state.dropped_before,
            });
        }
        let replay: VecDeque<(u64, Event)> = state
            .history
            .iter()
            .filter(|(index, _)| *index > from)
            .cloned()
            .collect();
        let last = state.index.max(from);
        Ok(Watch {
            replay,
            live: state.events.subscribe(),
            last,
        })
    }
}

fn check(state: &State, changes: &ChangeSet) -> Result<(), StoreError> {
    // Versions as this set leaves them, so two changes to one object within a set are judged
    // in order.
    let mut seen: BTreeMap<(Kind, String), Option<u64>> = BTreeMap::new();
    for change in &changes.0 {
        let (kind, id) = match change {
            Change::Create { kind, id, .. }
            | Change::Update { kind, id, .. }
            | Change::Delete { kind, id, .. } => (*kind, id.clone()),
        };
        let current = seen
            .get(&(kind, id.clone()))
            .copied()
            .unwrap_or_else(|| state.objects.get(&(kind, id.clone())).map(|o| o.version));
        let after = match (change, current) {
            (Change::Create { .. }, Some(_)) => return Err(StoreError::Exists { kind, id }),
            (Change::Create { .. }, None) => Some(0),
            (Change::Update { .. } | Change::Delete { .. }, None) => {
                return Err(StoreError::Missing { kind, id });
            }
            (Change::Update { version, .. } | Change::Delete { version, .. }, Some(v))
                if *version != v =>
            {
                return Err(StoreError::Stale {
                    kind,
                    id,
                    read: *version,
                    current: v,
                });
            }
            (Change::Update { .. }, Some(v)) => Some(v),
            (Change::Delete { .. }, Some(_)) => None,
        };
        seen.insert((kind, id), after);
    }
    Ok(())
}

/// A stream of store events from an index on.
#[derive(Debug)]
pub struct Watch {
    replay: VecDeque<(u64, Event)>,
    live: broadcast::Receiver<(u64, Event)>,
    /// The index up to which events were taken from history.
    last: u64,
}

impl Watch {
    /// The next event with its index. `None` when the store is gone, or the watcher fell more
    /// than [`WATCH_REPLAY_EVENTS`] events behind (it must read a fresh view and watch again).
    pub async fn next(&mut self) -> Option<(u64, Event)> {
        if let Some(e) = self.replay.pop_front() {
            return Some(e);
        }
        loop {
            match self.live.recv().await {
                // Already replayed from history.
                Ok((index, _)) if index <= self.last => continue,
                Ok(e) => return Some(e),
                Err(_) => return None,
            }
        }
    }

    /// An event already waiting, if any (a lagging or ended watch gives `None` here, and
    /// `None` from [`Watch::next`]).
    pub fn try_next(&mut self) -> Option<(u64, Event)> {
        if let Some(e) = self.replay.pop_front() {
            return Some(e);
        }
        loop {
            match self.live.try_recv() {
                Ok((index, _)) if index <= self.last => continue,
                Ok(e) => return Some(e),
                Err(_) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn create(kind: Kind, id: &str, body: Value) -> Change {
        Change::Create {
            kind,
            id: id.into(),
            body,
        }
    }

    #[test]
    fn a_batch_applies_its_sets_in_order_each_whole_or_not_at_all() {
        let store = Store::new();
        store
            .apply(1, &ChangeSet(vec![create(Kind::Node, "n1", json!(1))]))
            .unwrap();
        let update = |body| Change::Update {
            kind: Kind::Node,
            id: "n1".into(),
            version: 1,
            body,
        };
        let results = store.apply_batch(
            2,
            &[
                ChangeSet(vec![update(json!(2))]),
                // Read version 1 too: the set before it moved the object to 2.
                ChangeSet(vec![update(json!(3)), create(Kind::Node, "n2", json!(0))]),
                ChangeSet(vec![create(Kind::Node, "n3", json!(0))]),
            ],
        );
        assert!(results[0].is_ok());
        assert!(matches!(
            results[1],
            Err(StoreError::Stale {
                read: 1,
                current: 2,
                ..
            })
        ));
        assert!(results[2].is_ok());
        let (n1, n2, n3) = store.view(|tx| {
            (
                tx.get(Kind::Node, "n1").cloned(),
                tx.get(Kind::Node, "n2").is_some(),
                tx.get(Kind::Node, "n3").map(|o| o.version),
            )
        });
        assert_eq!(n1.map(|o| (o.version, o.body)), Some((2, json!(2))));
        assert!(!n2, "a refused set leaves nothing behind");
        assert_eq!(n3, Some(2));
        assert_eq!(store.index(), 2);
    }

    #[test]
    fn versions_are_raft_indices_and_stale_writes_are_refused_whole() {
        let store = Store::new();
        store
            .apply(
                3,
                &ChangeSet(vec![create(Kind::Node, "n1", json!({"a": 1}))]),
            )
            .unwrap();
        let n1 = store.view(|tx| tx.get(Kind::Node, "n1").cloned()).unwrap();
        assert_eq!((n1.version, n1.created), (3, 3));

        // Two writers read version 3; the first wins, the second is refused, and its other
        // change (a create) does not happen either.
        let update = |body| Change::Update {
            kind: Kind::Node,
            id: "n1".into(),
            version: 3,
            body,
        };
        store
            .apply(4, &ChangeSet(vec![update(json!({"a": 2}))]))
            .unwrap();
        let refused = store.apply(
            5,
            &ChangeSet(vec![
                create(Kind::Node, "n2", json!({})),
                update(json!({"a": 3})),
            ]),
        );
        assert_eq!(
            refused,
            Err(StoreError::Stale {
                kind: Kind::Node,
                id: "n1".into(),
                read: 3,
                current: 4
            })
        );
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("read it again and retry")
        );
        store.view(|tx| {
            assert_eq!(tx.index(), 5, "a refused entry is still consumed");
            assert!(tx.get(Kind::Node, "n2").is_none());
            assert_eq!(tx.get(Kind::Node, "n1").unwrap().body, json!({"a": 2}));
        });
        assert!(matches!(
            store.apply(5, &ChangeSet::default()),
            Err(StoreError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn creates_of_existing_and_changes_of_missing_objects_are_refused() {
        let store = Store::new();
        store
            .apply(1, &ChangeSet(vec![create(Kind::Service, "s", json!(1))]))
            .unwrap();
        assert!(matches!(
            store.apply(2, &ChangeSet(vec![create(Kind::Service, "s", json!(2))])),
            Err(StoreError::Exists { .. })
        ));
        let delete = Change::Delete {
            kind: Kind::Service,
            id: "t".into(),
            version: 1,
        };
        assert!(matches!(
            store.check(&ChangeSet(vec![delete])),
            Err(StoreError::Missing { .. })
        ));
        // Within one set, changes are judged in order: create then update at version 0.
        let set = ChangeSet(vec![
            create(Kind::Task, "t1", json!(1)),
            Change::Update {
                kind: Kind::Task,
                id: "t1".into(),
                version: 0,
                body: json!(2),
            },
        ]);
        store.apply(3, &set).unwrap();
        store.view(|tx| assert_eq!(tx.get(Kind::Task, "t1").unwrap().body, json!(2)));
        assert_eq!(store.view(|tx| tx.list(Kind::Service).count()), 1);
    }

    #[tokio::test]
    async fn a_watch_from_a_views_index_sees_every_later_change_once() {
        let store = Store::new();
        store
            .apply(1, &ChangeSet(vec![create(Kind::Node, "a", json!(1))]))
            .unwrap();
        let seen_at = store.index();
        store
            .apply(2, &ChangeSet(vec![create(Kind::Node, "b", json!(2))]))
            .unwrap();
        let mut watch = store.watch(seen_at).unwrap();
        store
            .apply(
                3,
                &ChangeSet(vec![Change::Delete {
                    kind: Kind::Node,
                    id: "a".into(),
                    version: 1,
                }]),
            )
            .unwrap();
        let (i, e) = watch.next().await.unwrap();
        assert_eq!((i, e.object().id.as_str()), (2, "b"));
        assert!(matches!(e, Event::Created(_)));
        let (i, e) = watch.next().await.unwrap();
        assert_eq!((i, e.object().id.as_str()), (3, "a"));
        assert!(matches!(e, Event::Deleted(_)));
        // Nothing else is pending.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(50), watch.next()).await;
        assert!(pending.is_err(), "no event was delivered twice");
    }

    #[test]
    fn a_watch_from_before_the_kept_history_is_refused() {
        let store = Store::new();
        for i in 1..=(WATCH_REPLAY_EVENTS as u64 + 10) {
            store
                .apply(
                    i,
                    &ChangeSet(vec![create(Kind::Task, &i.to_string(), json!(i))]),
                )
                .unwrap();
        }
        let err = store.watch(0).unwrap_err();
        assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
        assert!(store.watch(20).is_ok());
    }
}
