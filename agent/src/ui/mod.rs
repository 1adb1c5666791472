//! `shoald --ui-addr ADDR:PORT`: a live web view of the swarm, served by a manager. Nodes are
//! columns, tasks are cards (service colour, slot, state), and each service's routing-mesh
//! traffic per entry node sits beside them.
//!
//! ```text
//!   GET /              the page (HTML, CSS and script compiled into the binary: no CDN)
//!   GET /api/state     nodes, services and tasks at a store index
//!   GET /api/watch     server-sent events from that index: each change to a node, service or
//!                      task as it is applied (`change`), the traffic every 2 s (`traffic`)
//!   POST /api/nodes/{id}/availability   {"availability": "drain"}: only when the page is
//!                      served on a loopback address; read-only otherwise
//! ```
//!
//! The page reads the state once and then applies the changes the store's watch sends: it
//! never polls the whole state. A watch that cannot go on (a snapshot installed on this
//! manager) tells the page to read the state again.

use shoal_api::call::ClusterCall;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shoal_api::service::{Service, Task, TaskState};
use shoal_api::swarm::{Availability, Node, NodeUpdate, Role};
use shoal_control::orchestrator::World;
use shoal_control::store::{Event, Kind, Object};

use crate::swarm::SwarmNode;

/// The page: HTML with its style and script inline.
const PAGE: &str = include_str!("index.html");

/// How often the traffic is sent to the page.
const TRAFFIC_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Ui {
    swarm: SwarmNode,
    /// Whether the page may change the swarm (served on a loopback address).
    writable: bool,
}

/// Serves the web view on `addr` until the process ends. Binding happens before this returns,
/// so a busy port is the daemon's error at start.
pub(crate) async fn serve(addr: SocketAddr, swarm: SwarmNode) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let ui = Ui {
        swarm,
        writable: addr.ip().is_loopback(),
    };
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/api/state", get(state))
        .route("/api/watch", get(watch))
        .route("/api/nodes/{id}/availability", post(availability))
        .with_state(ui);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the web view stopped");
        }
    });
    Ok(())
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

fn refused(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "message": message.into() }))).into_response()
}

fn not_a_manager() -> Response {
    refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "this node is not a swarm manager: the web view shows a manager's replica of the store",
    )
}

/// A node as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NodeView {
    id: String,
    hostname: String,
    role: &'static str,
    availability: &'static str,
    state: String,
    leader: bool,
    addr: String,
}

/// A service as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ServiceView {
    id: String,
    name: String,
    /// `None`: global.
    replicas: Option<u64>,
    /// `8080:80/tcp`, one per published port.
    ports: Vec<String>,
}

/// A task as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TaskView {
    id: String,
    service_id: String,
    service: String,
    slot: u64,
    node_id: String,
    state: &'static str,
    desired_state: &'static str,
    message: String,
}

fn availability_name(a: Availability) -> &'static str {
    match a {
        Availability::Active => "active",
        Availability::Pause => "pause",
        Availability::Drain => "drain",
    }
}

fn node_view(node: &Node, leader_raft_id: Option<u64>) -> NodeView {
    let manager = node.spec.role == Some(Role::Manager) || node.manager_status.is_some();
    NodeView {
        id: node.id.clone(),
        hostname: node.description.hostname.clone(),
        role: if manager { "manager" } else { "worker" },
        availability: availability_name(node.spec.availability),
        state: shoal_api::wire_name(&node.status.state),
        leader: node
            .manager_status
            .as_ref()
            .is_some_and(|m| Some(m.raft_id) == leader_raft_id),
        addr: node.status.addr.clone(),
    }
}

fn service_view(service: &Service) -> ServiceView {
    ServiceView {
        id: service.id.clone(),
        name: service.spec.name.clone(),
        replicas: service.spec.mode.replicated.as_ref().map(|r| r.replicas),
        ports: service
            .endpoint
            .ports
            .iter()
            .map(|p| {
                let protocol = shoal_api::wire_name(&p.protocol);
                format!("{}:{}/{protocol}", p.published_port, p.target_port)
            })
            .collect(),
    }
}

fn task_view(task: &Task) -> TaskView {
    TaskView {
        id: task.id.clone(),
        service_id: task.service_id.clone(),
        service: task.service_name.clone(),
        slot: task.slot,
        node_id: task.node_id.clone(),
        state: task.status.state.name(),
        desired_state: task.desired_state.name(),
        message: if task.status.err.is_empty() {
            task.status.message.clone()
        } else {
            task.status.err.clone()
        },
    }
}

/// Whether the page shows `task`: meant to run, or still running on its way out.
fn shown(task: &Task) -> bool {
    task.desired_state == TaskState::Running || !task.status.state.is_terminal()
}

/// The whole view at one store index.
pub(crate) fn view(world: &World, index: u64, leader: Option<u64>) -> Value {
    let nodes: Vec<NodeView> = world
        .nodes
        .values()
        .map(|n| node_view(&n.value, leader))
        .collect();
    let services: Vec<ServiceView> = world
        .services
        .values()
        .map(|s| service_view(&s.value))
        .collect();
    let tasks: Vec<TaskView> = world
        .tasks
        .values()
        .filter(|t| shown(&t.value))
        .map(|t| task_view(&t.value))
        .collect();
    json!({ "index": index, "nodes": nodes, "services": services, "tasks": tasks })
}

/// One store change as the page applies it: `put` (created or updated) or `delete`, of a
/// node, service or task; `None` for other objects and for bodies that do not decode.
pub(crate) fn change(event: &Event, leader: Option<u64>) -> Option<Value> {
    let object: &Object = event.object();
    let deleted = matches!(event, Event::Deleted(_));
    let body = &object.body;
    let (kind, view) = match object.kind {
        Kind::Node => (
            "node",
            serde_json::to_value(node_view(
                &serde_json::from_value(body.clone()).ok()?,
                leader,
            )),
        ),
        Kind::Service => (
            "service",
            serde_json::to_value(service_view(&serde_json::from_value(body.clone()).ok()?)),
        ),
        Kind::Task => {
            let task: Task = serde_json::from_value(body.clone()).ok()?;
            // A task the page no longer shows goes away from it.
            if !deleted && !shown(&task) {
                return Some(json!({ "op": "delete", "kind": "task", "id": object.id }));
            }
            ("task", serde_json::to_value(task_view(&task)))
        }
        _ => return None,
    };
    Some(if deleted {
        json!({ "op": "delete", "kind": kind, "id": object.id })
    } else {
        json!({ "op": "put", "kind": kind, "object": view.ok()? })
    })
}

async fn state(State(ui): State<Ui>) -> Response {
    let Some(manager) = ui.swarm.manager().await else {
        return not_a_manager();
    };
    let leader = manager.raft_status().leader;
    let (world, index) = manager.store().view(|tx| (World::read(tx), tx.index()));
    let mut body = view(&world, index, leader);
    body["writable"] = Value::Bool(ui.writable);
    body["node"] = Value::String(ui.swarm.node_name().to_owned());
    Json(body).into_response()
}

#[derive(Debug, Deserialize)]
struct WatchParams {
    from: u64,
}

async fn watch(State(ui): State<Ui>, Query(params): Query<WatchParams>) -> Response {
    let Some(manager) = ui.swarm.manager().await else {
        return not_a_manager();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(256);
    let swarm = ui.swarm.clone();
    tokio::spawn(async move {
        let reload = || Ok(SseEvent::default().event("reload").data("{}"));
        let Ok(mut changes) = manager.store().watch(params.from) else {
            let _ = tx.send(reload()).await;
            return;
        };
        let mut traffic = tokio::time::interval(TRAFFIC_EVERY);
        loop {
            tokio::select! {
                next = changes.next() => {
                    let Some((index, event)) = next else {
                        let _ = tx.send(reload()).await;
                        return;
                    };
                    let leader = manager.raft_status().leader;
                    if let Some(mut data) = change(&event, leader) {
                        data["index"] = Value::from(index);
                        let sse = SseEvent::default().event("change").data(data.to_string());
                        if tx.send(Ok(sse)).await.is_err() {
                            return;
                        }
                    }
                }
                _ = traffic.tick() => {
                    // Rates by node ID and service name, as the leader heard them; nothing
                    // while there is no leader.
                    let rates = swarm.call(ClusterCall::Traffic).await.unwrap_or(Value::Null);
                    let sse = SseEvent::default().event("traffic").data(rates.to_string());
                    if tx.send(Ok(sse)).await.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Debug, Deserialize)]
struct AvailabilityBody {
    availability: String,
}

async fn availability(
    State(ui): State<Ui>,
    Path(id): Path<String>,
    Json(body): Json<AvailabilityBody>,
) -> Response {
    if !ui.writable {
        return refused(
            StatusCode::FORBIDDEN,
            "the web view is read-only: it changes the swarm only when served on a loopback address (shoald --ui-addr 127.0.0.1:PORT)",
        );
    }
    let availability = match body.availability.as_str() {
        "active" => Availability::Active,
        "pause" => Availability::Pause,
        "drain" => Availability::Drain,
        other => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("invalid availability {other:?}: want active, pause or drain"),
            );
        }
    };
    let call = ClusterCall::NodeUpdate {
        id,
        update: NodeUpdate {
            availability: Some(availability),
            ..NodeUpdate::default()
        },
    };
    match ui.swarm.call(call).await {
        Ok(_) => Json(json!({})).into_response(),
        Err(status) => refused(
            match status.code() {
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            status.message(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, state: &str, desired: &str) -> Object {
        let mut body = serde_json::to_value(Task::default()).unwrap();
        body["ID"] = json!(id);
        body["ServiceID"] = json!("s1");
        body["ServiceName"] = json!("web");
        body["Slot"] = json!(2);
        body["NodeID"] = json!("n1");
        body["Status"]["State"] = json!(state);
        body["DesiredState"] = json!(desired);
        Object {
            kind: Kind::Task,
            id: id.into(),
            version: 1,
            created: 1,
            body,
        }
    }

    #[test]
    fn a_task_change_is_a_put_until_the_task_is_no_longer_shown() {
        let put = change(&Event::Updated(task("t1", "running", "running")), None).unwrap();
        assert_eq!(put["op"], "put", "{put}");
        assert_eq!(put["object"]["service"], "web");
        assert_eq!(put["object"]["slot"], 2);
        assert_eq!(put["object"]["state"], "running");
        // Still running while it is stopped: shown, on its way out.
        let stopping = change(&Event::Updated(task("t1", "running", "shutdown")), None).unwrap();
        assert_eq!(stopping["op"], "put");
        let gone = change(&Event::Updated(task("t1", "shutdown", "shutdown")), None).unwrap();
        assert_eq!(gone, json!({"op": "delete", "kind": "task", "id": "t1"}));
        let removed = change(&Event::Deleted(task("t1", "shutdown", "shutdown")), None).unwrap();
        assert_eq!(removed["op"], "delete");
    }

    #[test]
    fn other_objects_are_not_the_page_s() {
        let data = Object {
            kind: Kind::Data,
            id: "k".into(),
            version: 1,
            created: 1,
            body: json!("v"),
        };
        assert_eq!(change(&Event::Created(data), None), None);
    }

    #[test]
    fn the_page_is_self_contained() {
        // No CDN, no external fonts: every URL the page loads is its own.
        for needle in ["http://", "https://", "//cdn", "@import", "fonts.g"] {
            assert!(!PAGE.contains(needle), "the page loads {needle}");
        }
    }
}
