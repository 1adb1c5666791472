//! The swarm's events, as `docker events` shows swarm objects: each manager follows its store's
//! watch and turns every change into an event (`service create`, `node update` with
//! `availability.new=drain, availability.old=active`, `task update` with `state.new=running`),
//! kept in memory ([`Journal`], the last [`KEPT`]) and handed live to those who follow.
//!
//! ```text
//!   store watch ──(index, Created|Updated|Deleted)──> record ──> Journal ──> GET /events
//!                        old summaries (per object) ─┘             (kept + live)
//! ```
//!
//! An event's time is when this manager applied the change. A manager keeps the events it saw
//! since it started: one that restarts replays its log and shows those changes again, at the
//! time it applied them again. Updates of a node or a task that change none of the attributes
//! an event carries (a node's description refreshed, a task's message) are not events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::store::{Event, Kind, Object, Store};

/// Events kept by a manager, at most.
pub const KEPT: usize = 10_000;

/// The object an event is about, as Docker names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Its ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// What the event says of it: `name`, and `X.new` / `X.old` for what an update changed.
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

/// One event, in the shape of Docker's `GET /events` messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmEvent {
    /// `service`, `node`, `network`, `secret`, `config` or `task`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `create`, `update` or `remove`.
    #[serde(rename = "Action")]
    pub action: String,
    /// What it is about.
    #[serde(rename = "Actor")]
    pub actor: Actor,
    /// Always `swarm`.
    pub scope: String,
    /// Seconds since the epoch.
    pub time: i64,
    /// Nanoseconds since the epoch.
    #[serde(rename = "timeNano")]
    pub time_nano: i128,
}

/// The attributes an event carries for an object: `(type, name → value)`; `None` for objects
/// that make no events (the cluster object, raw data).
fn summary(object: &Object) -> Option<(&'static str, Summary)> {
    let body = &object.body;
    let fields: &[(&'static str, &str)] = match object.kind {
        Kind::Service => &[
            ("name", "/Spec/Name"),
            ("replicas", "/Spec/Mode/Replicated/Replicas"),
            ("image", "/Spec/TaskTemplate/ContainerSpec/Image"),
            ("updatestate", "/UpdateStatus/State"),
        ],
        Kind::Node => &[
            ("name", "/Description/Hostname"),
            ("availability", "/Spec/Availability"),
            ("role", "/Spec/Role"),
            ("state", "/Status/State"),
        ],
        Kind::Network | Kind::Secret | Kind::Config => &[("name", "/Spec/Name")],
        Kind::Task => &[
            ("service", "/ServiceName"),
            ("slot", "/Slot"),
            ("node.id", "/NodeID"),
            ("state", "/Status/State"),
            ("desiredstate", "/DesiredState"),
        ],
        Kind::Cluster | Kind::Data => return None,
    };
    let kind = match object.kind {
        Kind::Service => "service",
        Kind::Node => "node",
        Kind::Network => "network",
        Kind::Secret => "secret",
        Kind::Config => "config",
        Kind::Task => "task",
        Kind::Cluster | Kind::Data => return None,
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let attributes = fields
        .iter()
        .filter_map(|(name, pointer)| {
            let value = text(body.pointer(pointer)?);
            (!value.is_empty()).then_some((*name, value))
        })
        .collect();
    Some((kind, attributes))
}

/// What an object's last event said of it: its attributes by name.
type Summary = BTreeMap<&'static str, String>;

/// Attributes that say which object it is, carried by every event about it.
const IDENTITY: &[&str] = &["name", "service", "slot"];

/// The event for a store change, given what the object's last event said of it (`old`).
fn translate(event: &Event, old: Option<&Summary>, time_nano: i128) -> Option<SwarmEvent> {
    let object = event.object();
    let (kind, new) = summary(object)?;
    let (action, attributes) = match event {
        Event::Created(_) => (
            "create",
            new.iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        ),
        Event::Deleted(_) => (
            "remove",
            new.iter()
                .filter(|(k, _)| IDENTITY.contains(k))
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        ),
        Event::Updated(_) => {
            let empty = BTreeMap::new();
            let old = old.unwrap_or(&empty);
            let mut attributes: BTreeMap<String, String> = new
                .iter()
                .filter(|(k, _)| IDENTITY.contains(k))
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            let mut changed = false;
            for key in new.keys().chain(old.keys()) {
                let (before, after) = (old.get(key), new.get(key));
                if before != after && !IDENTITY.contains(key) {
                    changed = true;
                    attributes.insert(format!("{key}.new"), after.cloned().unwrap_or_default());
                    attributes.insert(format!("{key}.old"), before.cloned().unwrap_or_default());
                }
            }
            // A node's or a task's update that changes nothing an event tells is not one (a
            // description refreshed, a message); any update of what a user declares is.
            if !changed && matches!(object.kind, Kind::Node | Kind::Task) {
                return None;
            }
            ("update", attributes)
        }
    };
    Some(SwarmEvent {
        kind: kind.to_owned(),
        action: action.to_owned(),
        actor: Actor {
            id: object.id.clone(),
            attributes,
        },
        scope: "swarm".to_owned(),
        time: i64::try_from(time_nano.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
        time_nano,
    })
}

/// A manager's events: the last [`KEPT`], and a channel for those who follow.
#[derive(Debug)]
pub struct Journal {
    kept: Mutex<VecDeque<SwarmEvent>>,
    live: broadcast::Sender<SwarmEvent>,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            kept: Mutex::new(VecDeque::new()),
            live: broadcast::channel(1_024).0,
        }
    }
}

impl Journal {
    /// The events kept from `since_nano` on, and the live ones after them: taken together, so
    /// none falls between.
    pub fn follow(&self, since_nano: i128) -> (Vec<SwarmEvent>, broadcast::Receiver<SwarmEvent>) {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let past = kept
            .iter()
            .filter(|e| e.time_nano >= since_nano)
            .cloned()
            .collect();
        (past, self.live.subscribe())
    }

    fn push(&self, event: SwarmEvent) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(event.clone());
        // Nobody following is fine.
        let _ = self.live.send(event);
    }
}

fn now_nano() -> i128 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos()
}

/// Follows `store` and records its changes in `journal` until `stopped`. A watch that ends (a
/// snapshot installed, or too far behind) is opened again from a fresh view: the changes in
/// between are not events.
pub async fn record(store: Store, journal: Arc<Journal>, mut stopped: watch::Receiver<bool>) {
    loop {
        let (index, mut last): (u64, HashMap<(Kind, String), Summary>) = store.view(|tx| {
            let last = [
                Kind::Service,
                Kind::Node,
                Kind::Network,
                Kind::Secret,
                Kind::Config,
                Kind::Task,
            ]
            .into_iter()
            .flat_map(|kind| tx.list(kind))
            .filter_map(|o| Some(((o.kind, o.id.clone()), summary(o)?.1)))
            .collect();
            (tx.index(), last)
        });
        let Ok(mut changes) = store.watch(index) else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let next = tokio::select! {
                next = changes.next() => next,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let Some((_, event)) = next else { break };
            let object = event.object();
            let key = (object.kind, object.id.clone());
            if let Some(e) = translate(&event, last.get(&key), now_nano()) {
                journal.push(e);
            }
            match &event {
                Event::Deleted(_) => {
                    last.remove(&key);
                }
                _ => {
                    if let Some((_, s)) = summary(object) {
                        last.insert(key, s);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(kind: Kind, id: &str, body: Value) -> Object {
        Object {
            kind,
            id: id.into(),
            version: 1,
            created: 1,
            body,
        }
    }

    fn service(replicas: u64) -> Object {
        object(
            Kind::Service,
            "s1",
            json!({"Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": replicas}},
                   "TaskTemplate": {"ContainerSpec": {"Image": "nginx"}}}}),
        )
    }

    fn task(state: &str, message: &str) -> Object {
        object(
            Kind::Task,
            "t1",
            json!({"ServiceName": "web", "Slot": 1, "NodeID": "n1",
                   "Status": {"State": state, "Message": message}, "DesiredState": "running"}),
        )
    }

    fn attrs(e: &SwarmEvent) -> Vec<(String, String)> {
        e.actor
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_scale_is_a_service_update_with_the_old_and_new_replicas() {
        let (_, old) = summary(&service(2)).unwrap();
        let e = translate(&Event::Updated(service(3)), Some(&old), 5_000_000_000).unwrap();
        assert_eq!((e.kind.as_str(), e.action.as_str()), ("service", "update"));
        assert_eq!(
            attrs(&e),
            pairs(&[
                ("name", "web"),
                ("replicas.new", "3"),
                ("replicas.old", "2")
            ])
        );
        assert_eq!((e.time, e.scope.as_str()), (5, "swarm"));
    }

    #[test]
    fn creates_carry_every_attribute_and_removes_only_the_name() {
        let e = translate(&Event::Created(service(2)), None, 0).unwrap();
        assert_eq!(e.action, "create");
        assert_eq!(
            attrs(&e),
            pairs(&[("image", "nginx"), ("name", "web"), ("replicas", "2")])
        );
        let e = translate(&Event::Deleted(service(2)), None, 0).unwrap();
        assert_eq!(e.action, "remove");
        assert_eq!(attrs(&e), pairs(&[("name", "web")]));
    }

    #[test]
    fn a_task_update_is_an_event_only_when_its_state_moves() {
        let (_, starting) = summary(&task("starting", "")).unwrap();
        assert_eq!(
            translate(
                &Event::Updated(task("starting", "pulling")),
                Some(&starting),
                0
            ),
            None
        );
        let e = translate(&Event::Updated(task("running", "")), Some(&starting), 0).unwrap();
        assert_eq!((e.kind.as_str(), e.action.as_str()), ("task", "update"));
        assert_eq!(
            attrs(&e),
            pairs(&[
                ("service", "web"),
                ("slot", "1"),
                ("state.new", "running"),
                ("state.old", "starting"),
            ])
        );
    }

    #[test]
    fn the_cluster_object_and_raw_data_make_no_events() {
        for kind in [Kind::Cluster, Kind::Data] {
            let o = object(kind, "x", json!({}));
            assert_eq!(translate(&Event::Created(o), None, 0), None);
        }
    }

    #[test]
    fn the_journal_keeps_the_last_events_and_follows_from_a_time() {
        let journal = Journal::default();
        for t in 0..(KEPT as i128 + 5) {
            journal.push(translate(&Event::Created(service(1)), None, t).unwrap());
        }
        let (all, _) = journal.follow(0);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].time_nano, 5);
        let (late, mut live) = journal.follow(KEPT as i128 + 3);
        assert_eq!(late.len(), 2);
        journal.push(translate(&Event::Deleted(service(1)), None, 1 << 40).unwrap());
        assert_eq!(live.try_recv().unwrap().action, "remove");
    }

    #[tokio::test]
    async fn recorded_changes_come_out_in_order() {
        use crate::store::{Change, ChangeSet};
        let store = Store::new();
        let journal = Arc::new(Journal::default());
        let (stop, stopped) = watch::channel(false);
        let recording = tokio::spawn(record(store.clone(), journal.clone(), stopped));
        let (_, mut live) = journal.follow(0);
        // Let the recorder open its watch first.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let create = |kind, id: &str, body| Change::Create {
            kind,
            id: id.into(),
            body,
        };
        store
            .apply(
                1,
                &ChangeSet(vec![create(Kind::Service, "s1", service(2).body)]),
            )
            .unwrap();
        store
            .apply(
                2,
                &ChangeSet(vec![Change::Update {
                    kind: Kind::Service,
                    id: "s1".into(),
                    version: 1,
                    body: service(3).body,
                }]),
            )
            .unwrap();
        store
            .apply(
                3,
                &ChangeSet(vec![Change::Delete {
                    kind: Kind::Service,
                    id: "s1".into(),
                    version: 2,
                }]),
            )
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let e = live.recv().await.unwrap();
            seen.push(format!("{} {}", e.kind, e.action));
        }
        assert_eq!(seen, ["service create", "service update", "service remove"]);
        let _ = stop.send(true);
        recording.await.unwrap();
    }
}
