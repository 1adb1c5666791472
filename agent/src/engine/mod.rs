//! The Docker Engine API for swarm mode, the one API served on the daemon's socket (HTTP/1.1 and
//! JSON): the `shoal` CLI, the `docker` CLI, bollard and other Swarm tools read and drive the
//! cluster through it, as in `DOCKER_HOST=unix:///run/shoal/shoal.sock docker node ls`. Shoal's
//! own operations, with no Docker equivalent, are under [`shoal_api::SHOAL_PREFIX`].
//!
//! - Paths are Docker's, with or without a `/v1.NN` prefix (1.24 and newer; [`API_VERSION`]
//!   advertised by `/_ping`).
//! - Replies are bollard's models of Docker's API (bollard-stubs): the managers' objects,
//!   which carry Docker's field names, are read into them, so what is served has Docker's
//!   types; Shoal's own fields follow (superset.rs).
//! - Errors are `{"message": ...}` with Docker's status codes (404 for what is missing, 400 for
//!   bad input, 503 where there is no swarm or no leader).
//!
//! `docs/api.md` lists what is served and what is not.

mod cluster;
mod data;
mod defaults;
mod events;
mod filters;
mod spec;
mod superset;
mod write;

use shoal_api::call::{Call, ClusterCall, NetworkCall, ServiceCall};
use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bollard::models;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shoal_api::SHOAL_PREFIX;
use shoal_api::service::TaskFilter;
use tower::ServiceExt as _;

use crate::NodeFacts;
use crate::dataplane::NodeDataplane;
use crate::swarm::SwarmNode;
use filters::Filters;

/// The API version `/_ping` advertises: clients use the lower of theirs and this one.
pub(crate) const API_VERSION: &str = "1.47";
/// The oldest API version served (Docker's minimum).
pub(crate) const MIN_API_VERSION: &str = "1.24";

/// What the handlers share.
#[derive(Debug, Clone)]
struct Engine {
    facts: NodeFacts,
    swarm: SwarmNode,
    dataplane: NodeDataplane,
}

/// An error as Docker's API answers it.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "message": self.message })),
        )
            .into_response()
    }
}

/// The managers' answers mapped to Docker's status codes.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let code = match status.code() {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied | Code::Unauthenticated => StatusCode::FORBIDDEN,
            Code::FailedPrecondition | Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(code, status.message())
    }
}

type Reply<T> = Result<Json<T>, ApiError>;

/// The Engine API as one router, for the daemon's socket: the version prefix is taken off,
/// then the request is routed.
pub(crate) fn router(facts: NodeFacts, swarm: SwarmNode, dataplane: NodeDataplane) -> Router {
    let routes = Router::new()
        .route("/_ping", get(ping).head(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/swarm", get(swarm_inspect))
        .route("/events", get(events::events))
        .route("/swarm/init", post(cluster::init))
        .route("/swarm/join", post(cluster::join))
        .route("/swarm/leave", post(cluster::leave))
        .route("/swarm/update", post(cluster::update))
        .route("/swarm/unlockkey", get(cluster::unlock_key))
        .route("/swarm/unlock", post(cluster::unlock))
        .route("/nodes", get(node_list))
        .route("/nodes/{id}", get(node_inspect).delete(write::node_remove))
        .route("/nodes/{id}/update", post(write::node_update))
        .route("/services", get(service_list))
        .route("/services/create", post(write::service_create))
        .route(
            "/services/{id}",
            get(service_inspect).delete(write::service_remove),
        )
        .route("/services/{id}/update", post(write::service_update))
        .route("/services/{id}/logs", get(write::logs))
        .route("/tasks", get(task_list))
        .route("/tasks/{id}", get(task_inspect))
        .route("/tasks/{id}/logs", get(write::logs))
        .route("/networks", get(network_list))
        .route("/networks/create", post(write::network_create))
        .route(
            "/networks/{id}",
            get(network_inspect).delete(write::network_remove),
        )
        .route("/distribution/{*image}", get(distribution))
        .merge(data::routes())
        // Shoal's own, with no Docker equivalent.
        .route(&format!("{SHOAL_PREFIX}/dataplane"), get(dataplane_inspect))
        .route(&format!("{SHOAL_PREFIX}/traffic"), get(traffic))
        .route(
            &format!("{SHOAL_PREFIX}/dataplane/apply"),
            post(dataplane_apply),
        )
        .fallback(unknown_path)
        .layer(axum::middleware::map_response(json_errors))
        .with_state(Engine {
            facts,
            swarm,
            dataplane,
        });
    Router::new().fallback(move |request: Request| {
        let routes = routes.clone();
        async move {
            match unversioned(request) {
                Ok(request) => match routes.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                Err(e) => e.into_response(),
            }
        }
    })
}

/// axum's own refusals (a query string or path that does not decode, a body over the limit)
/// in Docker's error shape, `{"message": ...}`, as every other error here is.
async fn json_errors(response: Response) -> Response {
    let failed = response.status().is_client_error() || response.status().is_server_error();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !failed || json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_owned()
    } else {
        text
    };
    ApiError::new(parts.status, message).into_response()
}

/// `request` without its `/v1.NN` prefix; an older version than [`MIN_API_VERSION`] is
/// refused with Docker's message.
fn unversioned(mut request: Request) -> Result<Request, ApiError> {
    let path = request.uri().path();
    let Some((version, rest)) = path
        .strip_prefix("/v")
        .and_then(|p| p.split_once('/'))
        .filter(|(v, _)| parse_version(v).is_some())
    else {
        return Ok(request);
    };
    if parse_version(version) < parse_version(MIN_API_VERSION) {
        return Err(ApiError::bad_request(format!(
            "client version {version} is too old. Minimum supported API version is \
             {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    let rewritten = match request.uri().query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    *request.uri_mut() = rewritten
        .parse()
        .map_err(|e| ApiError::bad_request(format!("invalid path {rewritten:?}: {e}")))?;
    Ok(request)
}

/// `1.44` as (1, 44).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// `GET /distribution/{image}/json` (what `docker service create` asks to pin a tag to its
/// digest): asked of this node's Docker Engine, which asks the registry. A node without an
/// engine says so (the docker CLI then warns and keeps the tag, as it does when a registry
/// cannot be reached).
async fn distribution(
    State(engine): State<Engine>,
    Path(image): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<models::DistributionInspect>, ApiError> {
    let Some(image) = image.strip_suffix("/json").filter(|i| !i.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("page not found: GET /distribution/{image}"),
        ));
    };
    let Some(docker) = engine.swarm.worker().engine() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "this node has no Docker Engine to ask the registry for {image}'s digest (shoald runs with --executor exec or none)"
            ),
        ));
    };
    // `--with-registry-auth`: the client's credentials for that registry, base64url JSON.
    let credentials = headers
        .get("x-registry-auth")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE
                .decode(v.trim())
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v.trim()))
                .ok()
        })
        .and_then(|json| serde_json::from_slice(&json).ok());
    docker
        .distribution(image, credentials)
        .await
        .map(Json)
        .map_err(|(status, message)| {
            ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                message,
            )
        })
}

/// `POST /shoal/v1/dataplane/apply` with a desired state (docs/dataplane.md): converges this
/// node's data plane to it; answers `{"Changes": [...]}`, one line per change made.
async fn dataplane_apply(State(engine): State<Engine>, body: Bytes) -> Reply<Value> {
    let state = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("invalid desired state: not UTF-8"))?;
    let changes = engine.dataplane.apply(state).await?;
    Ok(Json(serde_json::json!({ "Changes": changes })))
}

/// `GET /shoal/v1/dataplane`: what this node's data plane holds, read back from the kernel.
/// The routing mesh's traffic per node and service, as the leader last heard it.
async fn traffic(State(engine): State<Engine>) -> Reply<Value> {
    Ok(Json(engine.swarm.call(ClusterCall::Traffic).await?))
}

async fn dataplane_inspect(State(engine): State<Engine>) -> Reply<Value> {
    Ok(Json(engine.dataplane.inspect().await?))
}

async fn unknown_path(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "page not found: {} {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The swarm state `/_ping`'s `Swarm` header gives (`inactive`, `active/manager`, ...).
async fn swarm_header(engine: &Engine) -> String {
    let local = engine.swarm.local_state().await;
    match (local.state.as_str(), local.is_manager) {
        ("active", true) => "active/manager".into(),
        ("active", false) => "active/worker".into(),
        (state, _) => state.to_owned(),
    }
}

async fn ping(State(engine): State<Engine>) -> Response {
    let swarm = swarm_header(&engine).await;
    let mut response = "OK".into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("api-version", API_VERSION.to_owned()),
        ("ostype", "linux".to_owned()),
        ("docker-experimental", "false".to_owned()),
        ("builder-version", "1".to_owned()),
        ("swarm", swarm),
        (
            "cache-control",
            "no-cache, no-store, must-revalidate".to_owned(),
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn version(State(engine): State<Engine>) -> Json<models::SystemVersion> {
    let f = &engine.facts;
    let version = env!("CARGO_PKG_VERSION").to_owned();
    Json(models::SystemVersion {
        platform: Some(models::SystemVersionPlatform {
            name: "Shoal".into(),
        }),
        components: Some(vec![models::SystemVersionComponents {
            name: "Engine".into(),
            version: version.clone(),
            details: Some(HashMap::from([
                ("ApiVersion".to_owned(), API_VERSION.to_owned()),
                ("MinAPIVersion".to_owned(), MIN_API_VERSION.to_owned()),
                ("Os".to_owned(), "linux".to_owned()),
                ("Arch".to_owned(), go_arch(&f.architecture).to_owned()),
                ("KernelVersion".to_owned(), f.kernel_version.clone()),
            ])),
        }]),
        version: Some(version),
        api_version: Some(API_VERSION.into()),
        min_api_version: Some(MIN_API_VERSION.into()),
        git_commit: Some(String::new()),
        go_version: Some(String::new()),
        os: Some("linux".into()),
        arch: Some(go_arch(&f.architecture).into()),
        kernel_version: Some(f.kernel_version.clone()),
        experimental: Some(false),
        build_time: Some(String::new()),
    })
}

/// `uname -m` as Go (and so Docker) names the architecture.
fn go_arch(machine: &str) -> &str {
    match machine {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

async fn info(State(engine): State<Engine>) -> Json<Value> {
    let f = &engine.facts;
    let local = engine.swarm.info().await;
    let mut swarm = models::SwarmInfo {
        node_id: Some(local.node_id.clone()),
        node_addr: Some(local.node_addr.clone()),
        local_node_state: Some(match local.state.as_str() {
            "active" => models::LocalNodeState::ACTIVE,
            "locked" => models::LocalNodeState::LOCKED,
            _ => models::LocalNodeState::INACTIVE,
        }),
        control_available: Some(local.is_manager),
        error: Some(String::new()),
        remote_managers: Some(
            local
                .managers
                .iter()
                .map(|addr| models::PeerNode {
                    node_id: None,
                    addr: Some(addr.clone()),
                })
                .collect(),
        ),
        nodes: local.node_count.map(|n| n as i64),
        managers: local.manager_count.map(|n| n as i64),
        cluster: None,
    };
    if local.is_manager
        && let Ok(value) = engine.swarm.call(ClusterCall::Inspect).await
        && let Ok(cluster) = serde_json::from_value::<models::ClusterInfo>(value)
    {
        swarm.cluster = Some(cluster);
    }
    let info = models::SystemInfo {
        id: Some(local.node_id.clone()),
        name: Some(f.name.clone()),
        server_version: Some(env!("CARGO_PKG_VERSION").into()),
        kernel_version: Some(f.kernel_version.clone()),
        operating_system: Some(f.operating_system.clone()),
        os_type: Some("linux".into()),
        architecture: Some(f.architecture.clone()),
        ncpu: Some(i64::from(f.ncpu)),
        mem_total: Some(f.mem_total as i64),
        docker_root_dir: Some(f.data_root.clone()),
        containers: Some(0),
        containers_running: Some(0),
        containers_paused: Some(0),
        containers_stopped: Some(0),
        images: Some(0),
        driver: Some(String::new()),
        logging_driver: Some("json-file".into()),
        cgroup_driver: None,
        experimental_build: Some(false),
        swarm: Some(swarm),
        ..Default::default()
    };
    // Shoal's own: how far this manager's replica of the store has caught up, and its raft
    // term.
    let ours = match (local.store_index, local.raft_term) {
        (Some(index), Some(term)) => {
            serde_json::json!({ "Swarm": { "StoreIndex": index, "RaftTerm": term } })
        }
        _ => serde_json::json!({}),
    };
    Json(superset::answer(&info, ours))
}

/// Calls the managers through this node and reads the answer into Docker's model.
async fn call<T: DeserializeOwned>(engine: &Engine, call: impl Into<Call>) -> Result<T, ApiError> {
    let value = engine.swarm.call(call).await?;
    typed(value)
}

/// A manager's object: Docker's model of it, and the object as the managers keep it.
struct Object<M> {
    docker: M,
    ours: Value,
}

impl<M: DeserializeOwned + serde::Serialize> Object<M> {
    fn read(ours: Value) -> Result<Self, ApiError> {
        Ok(Self {
            docker: M::deserialize(&ours).map_err(misfit)?,
            ours,
        })
    }

    /// Docker's fields, then Shoal's (`superset`). The managers' objects carry Docker's names
    /// and types, so Docker's model read from one writes back what it read: the object, which
    /// [`Object::read`] checked against Docker's model, is the answer as it is. Debug builds
    /// (every lab test) check that writing Docker's model over it changes nothing.
    fn answer(self) -> Value {
        if cfg!(debug_assertions) {
            let overlaid = superset::answer(&self.docker, self.ours.clone());
            assert_eq!(
                overlaid, self.ours,
                "Docker's model of a manager's object says something else than the object"
            );
        }
        self.ours
    }

    /// Docker's model, changed here (defaults filled in, a status counted), then Shoal's
    /// fields.
    fn answer_changed(self) -> Value {
        superset::answer(&self.docker, self.ours)
    }
}

/// The managers' list for `call`, each object read two ways.
async fn objects<M: DeserializeOwned + serde::Serialize>(
    engine: &Engine,
    call: impl Into<Call>,
) -> Result<Vec<Object<M>>, ApiError> {
    read_all(engine.swarm.call(call).await?)
}

/// A list the managers answered, each object read two ways.
fn read_all<M: DeserializeOwned + serde::Serialize>(
    list: Value,
) -> Result<Vec<Object<M>>, ApiError> {
    match list {
        Value::Array(items) => items.into_iter().map(Object::read).collect(),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the managers answered {other} where a list was due"),
        )),
    }
}

/// Objects as answered.
fn answers<M: DeserializeOwned + serde::Serialize>(
    objects: impl IntoIterator<Item = Object<M>>,
) -> Json<Value> {
    Json(Value::Array(
        objects.into_iter().map(|o| o.answer()).collect(),
    ))
}

/// A manager's object read into Docker's model of it.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(misfit)
}

/// A manager's object that does not fit Docker's model.
fn misfit(e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the manager's answer does not fit Docker's model: {e}"),
    )
}

/// The one object an inspect call answers with.
fn the_one<T>(mut found: Vec<T>, what: &str, id: &str) -> Result<T, ApiError> {
    found
        .pop()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("{what} {id} not found")))
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    filters: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// `true`, `1` (and Docker's other spellings of true).
fn truthy(value: Option<&str>) -> bool {
    matches!(value, Some("1" | "true" | "True" | "TRUE" | "t" | "T"))
}

async fn swarm_inspect(State(engine): State<Engine>) -> Reply<Value> {
    let swarm = Object::<models::Swarm>::read(engine.swarm.call(ClusterCall::Inspect).await?)?;
    Ok(Json(swarm.answer()))
}

async fn node_list(State(engine): State<Engine>, Query(query): Query<ListQuery>) -> Reply<Value> {
    let filters = Filters::parse(
        query.filters.as_deref(),
        &["id", "label", "membership", "name", "node.label", "role"],
    )
    .map_err(ApiError::bad_request)?;
    let nodes = objects::<models::Node>(&engine, ClusterCall::NodeList).await?;
    Ok(answers(
        nodes
            .into_iter()
            .filter(|n| node_matches(&filters, &n.docker)),
    ))
}

fn node_matches(filters: &Filters, node: &models::Node) -> bool {
    let spec = node.spec.clone().unwrap_or_default();
    let hostname = node
        .description
        .as_ref()
        .and_then(|d| d.hostname.clone())
        .unwrap_or_default();
    let engine_labels = node
        .description
        .as_ref()
        .and_then(|d| d.engine.as_ref())
        .and_then(|e| e.labels.clone())
        .unwrap_or_default();
    filters.prefix_of("id", node.id.as_deref().unwrap_or_default())
        && filters.prefix_of("name", &hostname)
        && filters.any("role", |r| {
            spec.role.map(|role| role.to_string()).as_deref() == Some(r)
        })
        // Nodes join with a valid token and are accepted at once: none is pending.
        && filters.any("membership", |m| m == "accepted")
        && filters.labels("node.label", &spec.labels.clone().unwrap_or_default())
        && filters.labels("label", &engine_labels)
}

async fn node_inspect(State(engine): State<Engine>, Path(id): Path<String>) -> Reply<Value> {
    let found = objects::<models::Node>(
        &engine,
        ClusterCall::NodeInspect {
            ids: vec![id.clone()],
        },
    )
    .await?;
    Ok(Json(the_one(found, "node", &id)?.answer()))
}

async fn service_list(
    State(engine): State<Engine>,
    Query(query): Query<ListQuery>,
) -> Reply<Value> {
    let filters = Filters::parse(query.filters.as_deref(), &["id", "label", "mode", "name"])
        .map_err(ApiError::bad_request)?;
    let services = objects::<models::Service>(&engine, ServiceCall::List).await?;
    let mut services: Vec<_> = services
        .into_iter()
        .filter(|s| service_matches(&filters, &s.docker))
        .collect();
    if truthy(query.status.as_deref()) {
        let tasks: Vec<models::Task> =
            call(&engine, ServiceCall::Tasks(TaskFilter::default())).await?;
        let nodes: Vec<models::Node> = call(&engine, ClusterCall::NodeList).await?;
        for service in &mut services {
            service.docker.service_status = Some(service_status(&service.docker, &tasks, &nodes));
        }
        return Ok(Json(Value::Array(
            services.into_iter().map(Object::answer_changed).collect(),
        )));
    }
    Ok(answers(services))
}

fn service_matches(filters: &Filters, service: &models::Service) -> bool {
    let spec = service.spec.clone().unwrap_or_default();
    let mode = spec.mode.unwrap_or_default();
    let mode = if mode.global.is_some() {
        "global"
    } else {
        "replicated"
    };
    filters.prefix_of("id", service.id.as_deref().unwrap_or_default())
        && filters.prefix_of("name", spec.name.as_deref().unwrap_or_default())
        && filters.any("mode", |m| m == mode)
        && filters.labels("label", &spec.labels.unwrap_or_default())
}

/// `ServiceStatus` as Docker counts it: running tasks on nodes that are not down, against the
/// replicas asked for (global: one per node that is not down and runs one or should).
fn service_status(
    service: &models::Service,
    tasks: &[models::Task],
    nodes: &[models::Node],
) -> models::ServiceServiceStatus {
    let up = |node_id: &Option<String>| {
        nodes.iter().any(|n| {
            n.id == *node_id
                && n.status.as_ref().and_then(|s| s.state) != Some(models::NodeState::DOWN)
        })
    };
    let mine = tasks.iter().filter(|t| t.service_id == service.id);
    let running = mine
        .clone()
        .filter(|t| {
            t.status.as_ref().and_then(|s| s.state) == Some(models::TaskState::RUNNING)
                && up(&t.node_id)
        })
        .count() as u64;
    let mode = service
        .spec
        .as_ref()
        .and_then(|s| s.mode.clone())
        .unwrap_or_default();
    let desired = match mode.replicated {
        Some(r) => r.replicas.unwrap_or(1).max(0) as u64,
        None => mine
            .filter(|t| t.desired_state == Some(models::TaskState::RUNNING) && up(&t.node_id))
            .count() as u64,
    };
    models::ServiceServiceStatus {
        running_tasks: Some(running),
        desired_tasks: Some(desired),
        completed_tasks: Some(0),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InspectQuery {
    insert_defaults: Option<String>,
}

async fn service_inspect(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    Query(query): Query<InspectQuery>,
) -> Reply<Value> {
    let asked = ServiceCall::Inspect {
        ids: vec![id.clone()],
    };
    let found = objects::<models::Service>(&engine, asked).await?;
    let mut service = the_one(found, "service", &id)?;
    if truthy(query.insert_defaults.as_deref())
        && let Some(spec) = &mut service.docker.spec
    {
        defaults::insert(spec);
        return Ok(Json(service.answer_changed()));
    }
    Ok(Json(service.answer()))
}

async fn task_list(State(engine): State<Engine>, Query(query): Query<ListQuery>) -> Reply<Value> {
    let filters = Filters::parse(
        query.filters.as_deref(),
        &[
            "_up-to-date",
            "desired-state",
            "id",
            "label",
            "name",
            "node",
            "service",
        ],
    )
    .map_err(ApiError::bad_request)?;
    for state in filters.values("desired-state") {
        if !["running", "shutdown", "accepted"].contains(&state.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Invalid desired-state filter: {state}: want running, shutdown or accepted"
            )));
        }
    }
    // The managers resolve services and nodes by ID, prefix or name, and say what is unknown.
    let asked = TaskFilter {
        services: filters.values("service").to_vec(),
        nodes: filters.values("node").to_vec(),
    };
    let raw_tasks = engine.swarm.call(ServiceCall::Tasks(asked)).await?;
    let needs_services = ["_up-to-date", "label", "name"]
        .iter()
        .any(|key| !filters.values(key).is_empty());
    let raw_services = if needs_services {
        engine.swarm.call(ServiceCall::List).await?
    } else {
        Value::Array(Vec::new())
    };
    let up_to_date = filters
        .values("_up-to-date")
        .iter()
        .any(|v| truthy(Some(v)));
    // Up to date as the orchestrator judges it (spec and published ports), on Shoal's types.
    let current: std::collections::HashSet<String> = if up_to_date {
        let ours: Vec<shoal_api::service::Task> = typed(raw_tasks.clone())?;
        let services: Vec<shoal_api::service::Service> = typed(raw_services.clone())?;
        ours.into_iter()
            .filter(|t| {
                services
                    .iter()
                    .find(|s| s.id == t.service_id)
                    .is_some_and(|s| !shoal_control::orchestrator::is_dirty(t, s))
            })
            .map(|t| t.id)
            .collect()
    } else {
        Default::default()
    };
    let tasks = read_all::<models::Task>(raw_tasks)?;
    let services: Vec<models::Service> = typed(raw_services)?;
    Ok(answers(tasks.into_iter().filter(
        |Object { docker: t, .. }| {
            let service = services.iter().find(|s| s.id == t.service_id);
            filters.prefix_of("id", t.id.as_deref().unwrap_or_default())
                && filters.prefix_of("name", &task_name(t, service))
                && filters.any("desired-state", |want| {
                    t.desired_state.map(|s| s.to_string()).as_deref() == Some(want)
                })
                && filters.labels(
                    "label",
                    &service
                        .and_then(|s| s.spec.as_ref())
                        .and_then(|s| s.labels.clone())
                        .unwrap_or_default(),
                )
                && (!up_to_date || t.id.as_ref().is_some_and(|id| current.contains(id)))
        },
    )))
}

/// A task's name as Docker shows it: `<service>.<slot>` (global: `<service>.<node>`).
fn task_name(task: &models::Task, service: Option<&models::Service>) -> String {
    let service = service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.name.clone())
        .unwrap_or_default();
    match task.slot {
        Some(slot) if slot > 0 => format!("{service}.{slot}"),
        _ => format!("{service}.{}", task.node_id.clone().unwrap_or_default()),
    }
}

async fn task_inspect(State(engine): State<Engine>, Path(id): Path<String>) -> Reply<Value> {
    let tasks = objects::<models::Task>(&engine, ServiceCall::Tasks(TaskFilter::default())).await?;
    let found: Vec<_> = tasks
        .into_iter()
        .filter(|t| {
            t.docker
                .id
                .as_deref()
                .is_some_and(|tid| tid.starts_with(&id))
        })
        .collect();
    if found.len() > 1 {
        return Err(ApiError::bad_request(format!(
            "task {id} is ambiguous ({} matches found)",
            found.len()
        )));
    }
    Ok(Json(the_one(found, "task", &id)?.answer()))
}

async fn network_list(
    State(engine): State<Engine>,
    Query(query): Query<ListQuery>,
) -> Reply<Value> {
    let filters = Filters::parse(
        query.filters.as_deref(),
        &["driver", "id", "label", "name", "scope", "type"],
    )
    .map_err(ApiError::bad_request)?;
    let networks = network_objects(&engine, NetworkCall::List).await?;
    let shown = networks.into_iter().filter(|Object { docker: n, .. }| {
        filters.prefix_of("id", n.id.as_deref().unwrap_or_default())
            && filters.prefix_of("name", n.name.as_deref().unwrap_or_default())
            && filters.any("driver", |d| n.driver.as_deref() == Some(d))
            && filters.any("scope", |s| s == "swarm")
            && filters.any("type", |t| {
                t == "custom" || (t == "builtin" && n.ingress == Some(true))
            })
            && filters.labels("label", &n.labels.clone().unwrap_or_default())
    });
    // The Engine's shape is not the managers': Docker's fields are written over theirs.
    Ok(Json(Value::Array(
        shown.map(Object::answer_changed).collect(),
    )))
}

async fn network_inspect(State(engine): State<Engine>, Path(id): Path<String>) -> Reply<Value> {
    let found = network_objects(
        &engine,
        NetworkCall::Inspect {
            ids: vec![id.clone()],
        },
    )
    .await?;
    Ok(Json(the_one(found, "network", &id)?.answer_changed()))
}

/// Networks in the Engine API's shape, each with the managers' object.
async fn network_objects(
    engine: &Engine,
    call: impl Into<Call>,
) -> Result<Vec<Object<models::Network>>, ApiError> {
    let raw: Vec<Value> = typed(engine.swarm.call(call).await?)?;
    raw.into_iter()
        .map(|ours| {
            let network = shoal_api::service::Network::deserialize(&ours).map_err(misfit)?;
            Ok(Object {
                docker: engine_network(&network),
                ours,
            })
        })
        .collect()
}

/// Calls the managers and reads the answer as Shoal's own type (for objects whose Docker
/// shape differs from the managers').
async fn shoal_of<T: DeserializeOwned>(
    engine: &Engine,
    call: impl Into<Call>,
) -> Result<T, ApiError> {
    typed(engine.swarm.call(call).await?)
}

/// A swarm network as the Engine API shows networks (`Name`, `Id`, `Scope`, `IPAM`, ...),
/// where the managers keep SwarmKit's shape (`ID`, `Spec`, `DriverState`).
fn engine_network(network: &shoal_api::service::Network) -> models::Network {
    let spec = &network.spec;
    let options: HashMap<String, String> = network
        .driver_state
        .options
        .iter()
        .chain(&spec.driver_configuration.options)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    models::Network {
        name: Some(spec.name.clone()),
        id: Some(network.id.clone()),
        created: Some(network.created_at.clone())
            .filter(|c| !c.is_empty())
            .and_then(|c| serde_json::from_value(Value::String(c)).ok()),
        scope: Some("swarm".into()),
        driver: Some(
            Some(network.driver_state.name.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "overlay".into()),
        ),
        enable_ipv4: Some(true),
        enable_ipv6: Some(false),
        ipam: Some(models::Ipam {
            driver: Some("default".into()),
            config: Some(
                network
                    .ipam_options
                    .configs
                    .iter()
                    .map(|c| models::IpamConfig {
                        subnet: Some(c.subnet.clone()).filter(|s| !s.is_empty()),
                        gateway: Some(c.gateway.clone()).filter(|g| !g.is_empty()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            options: None,
        }),
        internal: Some(spec.internal),
        attachable: Some(spec.attachable),
        ingress: Some(spec.ingress),
        config_only: Some(false),
        options: Some(options),
        labels: Some(spec.labels.clone().into_iter().collect()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes_come_off_and_old_versions_are_refused() {
        let path = |uri: &str| {
            unversioned(
                Request::builder()
                    .uri(uri)
                    .body(Default::default())
                    .unwrap(),
            )
            .map(|r| r.uri().to_string())
            .map_err(|e| (e.status, e.message))
        };
        assert_eq!(path("/v1.47/nodes").unwrap(), "/nodes");
        assert_eq!(
            path("/v1.41/tasks?filters=%7B%7D").unwrap(),
            "/tasks?filters=%7B%7D"
        );
        assert_eq!(path("/nodes").unwrap(), "/nodes");
        assert_eq!(path("/_ping").unwrap(), "/_ping");
        assert_eq!(path("/vx/nodes").unwrap(), "/vx/nodes", "not a version");
        let (status, message) = path("/v1.12/nodes").unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("1.12 is too old"), "{message}");
    }

    #[test]
    fn networks_take_the_engine_shape() {
        let mut network = shoal_api::service::Network {
            id: "n1".into(),
            ..Default::default()
        };
        network.spec.name = "backend".into();
        network.spec.attachable = true;
        network
            .spec
            .driver_configuration
            .options
            .insert("encrypted".into(), String::new());
        network
            .ipam_options
            .configs
            .push(shoal_api::service::IpamConfig {
                subnet: "10.1.0.0/24".into(),
                gateway: "10.1.0.1".into(),
            });
        let shown = serde_json::to_value(engine_network(&network)).unwrap();
        assert_eq!(shown["Name"], "backend");
        assert_eq!(shown["Id"], "n1");
        assert_eq!(shown["Scope"], "swarm");
        assert_eq!(shown["Driver"], "overlay");
        assert_eq!(shown["Attachable"], true);
        assert_eq!(shown["Options"]["encrypted"], "");
        assert_eq!(shown["IPAM"]["Config"][0]["Subnet"], "10.1.0.0/24");
        assert_eq!(shown["IPAM"]["Config"][0]["Gateway"], "10.1.0.1");
    }
}
