//! `service logs` on the managers: the leader's log broker, as SwarmKit's. Each node keeps a log
//! session with the leader (`Dispatcher.Logs`, both ways streaming); a request names a service
//! or a task, the leader finds the nodes that ran its tasks in the store, asks each of them for
//! those tasks' lines over its session, and relays what comes back to the asker. Nothing goes
//! through raft. Another manager forwards the request to the leader (`Control.Logs`).
//!
//! ```text
//!   shoal service logs ─> shoald (manager) ─Control.Logs─> leader ─ToNode─> node A, node C
//!                      <─────────── LogBatch ───────────         <─FromNode─
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use shoal_api::logs::{LogBatch, LogLine, LogsQuery};
use shoal_api::service::Task;
use tokio::sync::mpsc;
use tonic::Status;

use super::Inner;
use crate::orchestrator::World;

/// Lines a node sends in one message, at most (the leader drops a larger message's excess):
/// with lines of [`MAX_LINE`] bytes, even escaped, a message stays under gRPC's 4 MiB.
pub const MAX_LINES_PER_MESSAGE: usize = 32;
/// The longest line kept (Docker splits longer ones at 16 KiB too).
pub const MAX_LINE: usize = 16 * 1024;
/// Tasks one request may name (a service's history included).
const MAX_TASKS: usize = 10_000;
/// How long a node's message waits for an asker that reads no more (a paused `logs -f`, a pipe
/// nobody drains) before that asker's subscription ends: meanwhile the node's other
/// subscriptions wait too, as they share its session.
const STALLED: std::time::Duration = std::time::Duration::from_secs(5);

/// What the leader asks a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToNode {
    /// Send the lines of `tasks` (those this node ran), as `query` says.
    Subscribe {
        /// The subscription, named in every answer.
        id: u64,
        /// The tasks.
        tasks: Vec<String>,
        /// `follow`, `tail`, `since` (its `target` is not used).
        query: LogsQuery,
    },
    /// The asker hung up: stop sending for `id`.
    Cancel {
        /// The subscription.
        id: u64,
    },
}

/// What a node sends back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FromNode {
    /// The subscription.
    pub id: u64,
    /// Lines, in the order each task wrote them.
    #[serde(default)]
    pub lines: Vec<LogLine>,
    /// Tasks whose logs are not here, and why.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Nothing more will come for this subscription (the logs ended, without `follow`).
    #[serde(default)]
    pub done: bool,
}

/// A subscription's asker and the node it is for.
struct Subscription {
    node: String,
    /// The node's session it was asked on.
    session: u64,
    to: mpsc::Sender<FromNode>,
    /// Ended by the leader (its asker stalled): the node's further messages for it are dropped.
    stalled: bool,
}

/// The leader's broker: the nodes' sessions and the open subscriptions.
#[derive(Default)]
pub(crate) struct Broker {
    nodes: Mutex<HashMap<String, (u64, mpsc::Sender<ToNode>)>>,
    subscriptions: Mutex<HashMap<u64, Subscription>>,
    next: AtomicU64,
}

impl Broker {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A node's session opened: requests for it go to `to` from now on. Returns the session's
    /// number (to close only this one).
    pub(crate) fn connect(&self, node: &str, to: mpsc::Sender<ToNode>) -> u64 {
        let session = self.next_id();
        lock(&self.nodes).insert(node.to_owned(), (session, to));
        session
    }

    /// A node's session ended: its open subscriptions end with a warning.
    pub(crate) fn disconnect(&self, node: &str, session: u64) {
        let node = node.to_owned();
        let mut nodes = lock(&self.nodes);
        if nodes.get(&node).is_some_and(|(s, _)| *s == session) {
            nodes.remove(&node);
        }
        drop(nodes);
        let ended: Vec<(u64, mpsc::Sender<FromNode>)> = lock(&self.subscriptions)
            .iter()
            .filter(|(_, s)| s.node == node && s.session == session)
            .map(|(id, s)| (*id, s.to.clone()))
            .collect();
        for (id, to) in ended {
            let node = node.clone();
            tokio::spawn(async move {
                let _ = to
                    .send(FromNode {
                        id,
                        warnings: vec![format!("node {node} went away: its logs stop here")],
                        done: true,
                        ..Default::default()
                    })
                    .await;
            });
        }
    }

    /// A message from `node`: relayed to its subscription's asker if the subscription is this
    /// node's (a node cannot answer for another).
    pub(crate) async fn deliver(&self, node: &str, mut message: FromNode) {
        let to = {
            let subscriptions = lock(&self.subscriptions);
            match subscriptions.get(&message.id) {
                Some(s) if s.node == node && !s.stalled => s.to.clone(),
                _ => return,
            }
        };
        message.lines.truncate(MAX_LINES_PER_MESSAGE);
        for line in &mut message.lines {
            crate::limits::clip(&mut line.text, MAX_LINE);
        }
        message.warnings.truncate(16);
        let id = message.id;
        if tokio::time::timeout(STALLED, to.send(message))
            .await
            .is_ok()
        {
            return;
        }
        // The asker stalled: its subscription ends, so the node's others go on.
        if let Some(s) = lock(&self.subscriptions).get_mut(&id) {
            s.stalled = true;
        }
        let session = lock(&self.nodes).get(node).map(|(_, s)| s.clone());
        let node = node.to_owned();
        tokio::spawn(async move {
            // Awaited: a full session queue must not lose the node's cancel.
            if let Some(session) = session {
                let _ = session.send(ToNode::Cancel { id }).await;
            }
            let _ = to
                .send(FromNode {
                    id,
                    warnings: vec![format!(
                        "the logs of node {node} stop here: not read for {}s",
                        STALLED.as_secs()
                    )],
                    done: true,
                    ..Default::default()
                })
                .await;
        });
    }

    /// Asks the nodes for the lines of `tasks` (grouped by node) and relays them to `out` until
    /// every node is done (or, with `follow`, until `out` is closed).
    fn subscribe(
        self: &Arc<Self>,
        by_node: BTreeMap<String, Vec<String>>,
        query: LogsQuery,
        out: mpsc::Sender<Result<LogBatch, Status>>,
    ) {
        let (to, mut from) = mpsc::channel::<FromNode>(64);
        let mut open = Vec::new();
        let mut warnings = Vec::new();
        for (node, tasks) in by_node {
            let found = lock(&self.nodes).get(&node).cloned();
            let Some((session_id, session)) = found else {
                warnings.push(format!(
                    "node {node} is not connected: the logs of its {} task(s) are not available",
                    tasks.len()
                ));
                continue;
            };
            let id = self.next_id();
            lock(&self.subscriptions).insert(
                id,
                Subscription {
                    node: node.clone(),
                    session: session_id,
                    to: to.clone(),
                    stalled: false,
                },
            );
            let asked = ToNode::Subscribe {
                id,
                tasks,
                query: query.clone(),
            };
            if session.try_send(asked).is_err() {
                lock(&self.subscriptions).remove(&id);
                warnings.push(format!("node {node} is busy: its logs are not available"));
                continue;
            }
            open.push((id, node, session));
        }
        drop(to);
        let broker = self.clone();
        tokio::spawn(async move {
            if !warnings.is_empty()
                && out
                    .send(Ok(LogBatch {
                        warnings,
                        ..Default::default()
                    }))
                    .await
                    .is_err()
            {
                broker.cancel(&open);
                return;
            }
            let mut pending = open.len();
            while pending > 0 {
                let message = tokio::select! {
                    message = from.recv() => message,
                    () = out.closed() => None,
                };
                let Some(message) = message else { break };
                if message.done && lock(&broker.subscriptions).remove(&message.id).is_some() {
                    pending -= 1;
                }
                if message.lines.is_empty() && message.warnings.is_empty() {
                    continue;
                }
                let batch = LogBatch {
                    lines: message.lines,
                    warnings: message.warnings,
                };
                if out.send(Ok(batch)).await.is_err() {
                    break;
                }
            }
            broker.cancel(&open);
        });
    }

    /// Ends subscriptions: forgotten here, and the nodes told to stop.
    fn cancel(&self, open: &[(u64, String, mpsc::Sender<ToNode>)]) {
        let mut subscriptions = lock(&self.subscriptions);
        for (id, _, session) in open {
            if subscriptions.remove(id).is_some() {
                let _ = session.try_send(ToNode::Cancel { id: *id });
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tasks `target` names: a service's (all it keeps, history included), or one task, by ID,
/// name or unique ID prefix.
fn tasks_of<'a>(world: &'a World, target: &str) -> Result<Vec<&'a Task>, Status> {
    if let Ok(service) = super::services::find_service(world, target) {
        let mut tasks: Vec<&Task> = world
            .tasks
            .values()
            .map(|t| &t.value)
            .filter(|t| t.service_id == service.id)
            .collect();
        tasks.sort_by(|a, b| (a.slot, &a.created_at).cmp(&(b.slot, &b.created_at)));
        return Ok(tasks);
    }
    let matches: Vec<&Task> = world
        .tasks
        .values()
        .map(|t| &t.value)
        .filter(|t| !target.is_empty() && t.id.starts_with(target))
        .collect();
    match matches[..] {
        [task] => Ok(vec![task]),
        [] => Err(Status::not_found(format!(
            "no such task or service: {target}"
        ))),
        _ => Err(Status::failed_precondition(format!(
            "task {target} is ambiguous ({} matches found)",
            matches.len()
        ))),
    }
}

/// Serves `query` on the leader: its lines go to `out`.
pub(super) fn serve(
    inner: &Inner,
    query: LogsQuery,
    out: mpsc::Sender<Result<LogBatch, Status>>,
) -> Result<(), Status> {
    if let Some(since) = &query.since
        && time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
            .is_err()
    {
        return Err(Status::invalid_argument(format!(
            "invalid since {since:?}: want an RFC 3339 time"
        )));
    }
    let world = inner.store.view(World::read);
    let tasks = tasks_of(&world, &query.target)?;
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for task in tasks.iter().take(MAX_TASKS) {
        if !task.node_id.is_empty() {
            by_node
                .entry(task.node_id.clone())
                .or_default()
                .push(task.id.clone());
        }
    }
    inner.logs.subscribe(by_node, query, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine {
            task_id: "t".into(),
            time: "2026-12-01T00:00:00Z".into(),
            stream: Default::default(),
            text: text.into(),
        }
    }

    /// The subscription `node` was asked for.
    async fn asked(node: &mut mpsc::Receiver<ToNode>) -> u64 {
        match node.recv().await {
            Some(ToNode::Subscribe { id, .. }) => id,
            other => panic!("not a subscription: {other:?}"),
        }
    }

    /// An asker that stops reading ends its own subscription, with a warning, and the node is
    /// told to stop sending it; another asker of the same node goes on being served.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_asker_does_not_stall_the_nodes_other_subscriptions() {
        let broker = Arc::new(Broker::default());
        let (session, mut node) = mpsc::channel(16);
        broker.connect("a", session);
        let follow = LogsQuery {
            follow: true,
            ..Default::default()
        };
        let tasks = || BTreeMap::from([("a".to_owned(), vec!["t".to_owned()])]);
        let (paused_out, mut paused) = mpsc::channel(1);
        broker.subscribe(tasks(), follow.clone(), paused_out);
        let stalled = asked(&mut node).await;
        let (read_out, mut read) = mpsc::channel(1);
        broker.subscribe(tasks(), follow, read_out);
        let served = asked(&mut node).await;

        // The paused asker's buffers fill, then its subscription ends.
        for n in 0..200 {
            broker
                .deliver(
                    "a",
                    FromNode {
                        id: stalled,
                        lines: vec![line(&format!("line {n}"))],
                        ..Default::default()
                    },
                )
                .await;
        }
        match node.recv().await {
            Some(ToNode::Cancel { id }) => assert_eq!(id, stalled),
            other => panic!("the node was not told to stop: {other:?}"),
        }
        broker
            .deliver(
                "a",
                FromNode {
                    id: served,
                    lines: vec![line("still here")],
                    ..Default::default()
                },
            )
            .await;
        let batch = read.recv().await.expect("a batch").expect("lines");
        assert_eq!(batch.lines[0].text, "still here");

        // What the paused asker reads when it reads again: its first lines, then the warning.
        let mut warnings = Vec::new();
        while let Some(batch) = paused.recv().await {
            warnings.extend(batch.expect("lines").warnings);
        }
        assert_eq!(
            warnings,
            ["the logs of node a stop here: not read for 5s"],
            "{warnings:?}"
        );
    }
}
