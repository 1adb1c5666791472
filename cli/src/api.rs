//! What each command asks, as the requests of the API `shoald` serves on its socket: Docker's
//! Engine API (what the docker CLI sends for the same command) and, for what Docker has no
//! request for, Shoal's own under `/shoal/v1/`. The answers are Docker's objects with Shoal's
//! fields after them, read here into Shoal's types.
//!
//! The commands speak in [`Call`]s (the managers' vocabulary); [`call`] turns each into its
//! requests. Writes that name several objects (`rm a b`) resolve every name first, so a typo
//! removes nothing.

use serde::Serialize;
use serde_json::{Value, json};
use shoal_api::call::{Call, ClusterCall, DataCall, ManagerCall, NetworkCall, ServiceCall};
use shoal_api::secret::DataKind;
use shoal_api::swarm::{Availability, InitArgs, JoinArgs, Role, SwarmUpdateArgs};
use shoal_api::{Client, ClientError, DaemonHost, StatusCode, escape};

use crate::Failure;

/// The daemon at `host`.
pub(crate) fn client(host: &DaemonHost) -> Client {
    Client::new(host)
}

/// The path of one object: `/services/web`.
fn object(base: &str, id: &str) -> String {
    format!("{base}/{}", escape(id))
}

/// Docker's `filters=` query for `key`s values.
fn filters(pairs: &[(&str, &[String])]) -> String {
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(key, values)| ((*key).to_owned(), json!(values)))
        .collect();
    if map.is_empty() {
        String::new()
    } else {
        format!("?filters={}", escape(&Value::Object(map).to_string()))
    }
}

/// `true`/`false` as a query value.
fn flag(on: bool) -> &'static str {
    if on { "1" } else { "0" }
}

/// The base path of a kind of data.
fn data_base(kind: DataKind) -> &'static str {
    match kind {
        DataKind::Secret => "/secrets",
        DataKind::Config => "/configs",
    }
}

/// Each of `ids` read from `base`: all of them, or the first that is missing.
async fn each(api: &Client, base: &str, ids: &[String]) -> Result<Vec<Value>, ClientError> {
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        found.push(api.get(&object(base, id)).await?);
    }
    Ok(found)
}

/// Removes each of `ids` at `base` once every one of them is known to exist.
async fn remove_all(
    api: &Client,
    base: &str,
    ids: &[String],
    query: &str,
) -> Result<Value, ClientError> {
    let found = each(api, base, ids).await?;
    for object in &found {
        let id = id_of(object).as_str().unwrap_or_default();
        api.delete(&format!("{}{query}", self::object(base, id)))
            .await?;
    }
    Ok(Value::Null)
}

/// How often a read-modify-write the user did not pin to a version is tried again when the
/// object changed between the read and the write (the managers answer 409, "update out of
/// sequence"): the change asked (a label, a replica count, a swarm setting) is applied again to
/// what was read afresh, as the managers applied it to their latest version before this API.
const STALE_RETRIES: usize = 5;

/// `attempt` until it is not refused as stale, at most [`STALE_RETRIES`] more times when
/// `retry` (the user named no version).
async fn fresh<F, Fut>(retry: bool, mut attempt: F) -> Result<Value, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Value, ClientError>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(e)
                if retry && tries < STALE_RETRIES && e.status() == Some(StatusCode::CONFLICT) =>
            {
                tries += 1;
            }
            done => return done,
        }
    }
}

/// An object's `Version.Index`.
fn version(object: &Value) -> u64 {
    object["Version"]["Index"].as_u64().unwrap_or_default()
}

/// `GET /swarm`, then `POST /swarm/update` with its spec as `change` leaves it and `query`'s
/// rotations: the docker CLI's read-modify-write, checked by the managers against the version
/// read (a swarm changed meanwhile is refused, never overwritten).
async fn update_swarm(
    api: &Client,
    query: &str,
    version_asked: Option<u64>,
    change: impl Fn(&mut Value),
) -> Result<(), ClientError> {
    fresh(version_asked.is_none(), || async {
        let swarm = api.get("/swarm").await?;
        let version = version_asked.unwrap_or_else(|| version(&swarm));
        let mut spec = swarm["Spec"].clone();
        change(&mut spec);
        api.post(&format!("/swarm/update?version={version}{query}"), &spec)
            .await
    })
    .await
    .map(drop)
}

/// Docker's swarm init request for `args`.
fn init_request(args: &InitArgs) -> Value {
    let mut spec = json!({});
    if let Some(s) = args.dispatcher_heartbeat_s {
        spec["Dispatcher"] = json!({ "HeartbeatPeriod": s * 1_000_000_000 });
    }
    if let Some(n) = args.snapshot_interval {
        spec["Raft"] = json!({ "SnapshotInterval": n });
    }
    if let Some(s) = args.cert_expiry_s {
        spec["CAConfig"] = json!({ "NodeCertExpiry": s * 1_000_000_000 });
    }
    json!({
        "ListenAddr": args.listen_addr.clone().unwrap_or_default(),
        "AdvertiseAddr": args.advertise_addr.clone().unwrap_or_default(),
        "DataPathAddr": args.data_path_addr.clone().unwrap_or_default(),
        "DataPathPort": args.data_path_port.unwrap_or(0),
        "DefaultAddrPool": args.default_addr_pool,
        "SubnetSize": args.default_addr_pool_mask_length.unwrap_or(0),
        "AutoLockManagers": args.autolock,
        "Spec": spec,
    })
}

/// Docker's swarm join request for `args`.
fn join_request(args: &JoinArgs) -> Value {
    json!({
        "ListenAddr": args.listen_addr.clone().unwrap_or_default(),
        "AdvertiseAddr": args.advertise_addr.clone().unwrap_or_default(),
        "DataPathAddr": args.data_path_addr.clone().unwrap_or_default(),
        "RemoteAddrs": [args.remote],
        "JoinToken": args.token,
    })
}

/// A swarm spec as `args` changes it.
fn apply_update(spec: &mut Value, args: &SwarmUpdateArgs) {
    if let Some(s) = args.dispatcher_heartbeat_s {
        spec["Dispatcher"]["HeartbeatPeriod"] = json!(s * 1_000_000_000);
    }
    if let Some(n) = args.snapshot_interval {
        spec["Raft"]["SnapshotInterval"] = json!(n);
    }
    if let Some(s) = args.cert_expiry_s {
        spec["CAConfig"]["NodeCertExpiry"] = json!(s * 1_000_000_000);
    }
    if let Some(n) = args.task_history_limit {
        spec["Orchestration"]["TaskHistoryRetentionLimit"] = json!(n);
    }
    if let Some(on) = args.autolock {
        spec["EncryptionConfig"]["AutoLockManagers"] = json!(on);
    }
}

/// A node's spec as `update` changes it (labels added, then removed: removing one the node does
/// not have is refused, as Docker refuses it).
fn node_spec(current: &Value, update: &shoal_api::swarm::NodeUpdate) -> Result<Value, ClientError> {
    let mut spec = current.clone();
    if let Some(availability) = update.availability {
        spec["Availability"] = json!(match availability {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        });
    }
    if let Some(role) = update.role {
        spec["Role"] = json!(match role {
            Role::Worker => "worker",
            Role::Manager => "manager",
        });
    }
    let mut labels = spec["Labels"].as_object().cloned().unwrap_or_default();
    if let Some(missing) = update.label_rm.iter().find(|k| !labels.contains_key(*k)) {
        return Err(ClientError::Daemon {
            status: StatusCode::BAD_REQUEST,
            message: format!("key {missing} doesn't exist in node's labels"),
        });
    }
    for (key, value) in &update.label_add {
        labels.insert(key.clone(), json!(value));
    }
    for key in &update.label_rm {
        labels.remove(key);
    }
    spec["Labels"] = Value::Object(labels);
    Ok(spec)
}

/// Docker's network create request for a network spec.
fn network_request(spec: &shoal_api::service::NetworkSpec) -> Value {
    json!({
        "Name": spec.name,
        "Driver": match spec.driver_configuration.name.as_str() {
            "" => "overlay",
            driver => driver,
        },
        "Scope": "swarm",
        "Options": spec.driver_configuration.options,
        "Labels": spec.labels,
        "Internal": spec.internal,
        "Attachable": spec.attachable,
        "Ingress": spec.ingress,
        "IPAM": {
            "Driver": "default",
            "Config": spec.ipam_options.configs.iter().map(|c| {
                let mut config = json!({});
                if !c.subnet.is_empty() {
                    config["Subnet"] = json!(c.subnet);
                }
                if !c.gateway.is_empty() {
                    config["Gateway"] = json!(c.gateway);
                }
                config
            }).collect::<Vec<_>>(),
        },
    })
}

/// An object's or a create's answer's ID (`ID`, or `Id` for networks as the Engine shows them).
fn id_of(object: &Value) -> &Value {
    object
        .get("ID")
        .or_else(|| object.get("Id"))
        .unwrap_or(&Value::Null)
}

/// Posts `spec` as the new spec of the service `current`.
async fn post_service_spec<S: Serialize + ?Sized>(
    api: &Client,
    current: &Value,
    version: u64,
    spec: &S,
    query: &str,
) -> Result<Value, ClientError> {
    let id = current["ID"].as_str().unwrap_or_default();
    api.post(
        &format!(
            "{}/update?version={version}{query}",
            object("/services", id)
        ),
        spec,
    )
    .await
}

/// Sends `call` as the API's requests; the answer in the shape the managers give it.
pub(crate) async fn call(host: &DaemonHost, call: impl Into<Call>) -> Result<Value, Failure> {
    let api = client(host);
    Ok(send(&api, &call.into()).await?)
}

async fn send(api: &Client, call: &Call) -> Result<Value, ClientError> {
    match call {
        Call::Init(args) => api.post("/swarm/init", &init_request(args)).await,
        Call::Join(args) => {
            api.post("/swarm/join", &join_request(args)).await?;
            let info = api.get("/info").await?;
            Ok(json!(
                if info["Swarm"]["ControlAvailable"].as_bool() == Some(true) {
                    "manager"
                } else {
                    "worker"
                }
            ))
        }
        Call::Leave { force } => {
            api.post(&format!("/swarm/leave?force={}", flag(*force)), &json!({}))
                .await
        }
        Call::Unlock { key } => {
            api.post("/swarm/unlock", &json!({ "UnlockKey": key }))
                .await
        }
        Call::Manager(ManagerCall::Cluster(call)) => send_cluster(api, call).await,
        Call::Manager(ManagerCall::Service(call)) => send_service(api, call).await,
        Call::Manager(ManagerCall::Network(call)) => send_network(api, call).await,
        Call::Manager(ManagerCall::Data(call)) => send_data(api, call).await,
    }
}

/// The swarm's and the nodes' calls.
async fn send_cluster(api: &Client, call: &ClusterCall) -> Result<Value, ClientError> {
    match call {
        ClusterCall::Inspect => api.get("/swarm").await,
        ClusterCall::Traffic => {
            api.get(&format!("{}/traffic", shoal_api::SHOAL_PREFIX))
                .await
        }
        ClusterCall::Update(args) => {
            update_swarm(api, "", args.version, |spec| apply_update(spec, args)).await?;
            Ok(Value::Null)
        }
        ClusterCall::Ca {
            rotate,
            cert_expiry_s,
        } => {
            if cert_expiry_s.is_some() && !rotate {
                return Err(ClientError::Daemon {
                    status: StatusCode::BAD_REQUEST,
                    message: "`--cert-expiry` flag requires the `--rotate` flag to update the CA"
                        .into(),
                });
            }
            if *rotate {
                update_swarm(api, "", None, |spec| {
                    let ca = &mut spec["CAConfig"];
                    ca["ForceRotate"] = json!(ca["ForceRotate"].as_u64().unwrap_or(0) + 1);
                    if let Some(s) = cert_expiry_s {
                        ca["NodeCertExpiry"] = json!(s * 1_000_000_000);
                    }
                })
                .await?;
            }
            api.get("/swarm").await
        }
        ClusterCall::UnlockKey { rotate } => {
            if *rotate {
                update_swarm(api, "&rotateManagerUnlockKey=1", None, |_| {}).await?;
            }
            api.get("/swarm/unlockkey").await
        }
        ClusterCall::JoinToken { role, rotate } => {
            let name = match role {
                Role::Worker => "Worker",
                Role::Manager => "Manager",
            };
            if *rotate {
                let query = format!("&rotate{name}Token=1");
                update_swarm(api, &query, None, |_| {}).await?;
            }
            let swarm = api.get("/swarm").await?;
            Ok(swarm["JoinTokens"][name].clone())
        }
        ClusterCall::NodeList => api.get("/nodes").await,
        ClusterCall::NodeInspect { ids } => Ok(Value::Array(each(api, "/nodes", ids).await?)),
        ClusterCall::NodeUpdate { id, update } => {
            fresh(update.version.is_none(), || async {
                let node = api.get(&object("/nodes", id)).await?;
                let version = update.version.unwrap_or_else(|| version(&node));
                let spec = node_spec(&node["Spec"], update)?;
                let id = node["ID"].as_str().unwrap_or(id);
                api.post(
                    &format!("{}/update?version={version}", object("/nodes", id)),
                    &spec,
                )
                .await
            })
            .await
        }
        ClusterCall::NodeRemove { ids, force } => {
            remove_all(api, "/nodes", ids, &format!("?force={}", flag(*force))).await
        }
        ClusterCall::Put { .. } | ClusterCall::Get { .. } => Err(ClientError::Answer(
            "raw store reads and writes are not served on the daemon's socket".into(),
        )),
    }
}

/// Services and their tasks.
async fn send_service(api: &Client, call: &ServiceCall) -> Result<Value, ClientError> {
    match call {
        ServiceCall::Create(spec) => Ok(id_of(&api.post("/services/create", spec).await?).clone()),
        ServiceCall::List => api.get("/services").await,
        ServiceCall::Inspect { ids } => Ok(Value::Array(each(api, "/services", ids).await?)),
        ServiceCall::Scale { id, replicas } => {
            fresh(true, || async {
                let current = api.get(&object("/services", id)).await?;
                let mut spec = current["Spec"].clone();
                if spec["Mode"].get("Replicated").is_none() {
                    return Err(ClientError::Daemon {
                        status: StatusCode::BAD_REQUEST,
                        message: format!(
                            "scale can only be used with replicated mode (service {} is global)",
                            spec["Name"].as_str().unwrap_or(id)
                        ),
                    });
                }
                spec["Mode"]["Replicated"]["Replicas"] = json!(replicas);
                post_service_spec(api, &current, version(&current), &spec, "").await
            })
            .await
        }
        ServiceCall::Update { id, version, spec } => {
            let current = api.get(&object("/services", id)).await?;
            post_service_spec(api, &current, *version, spec, "").await
        }
        ServiceCall::Rollback { id, version } => {
            let current = api.get(&object("/services", id)).await?;
            let version = version.unwrap_or_else(|| self::version(&current));
            post_service_spec(
                api,
                &current,
                version,
                &current["Spec"],
                "&rollback=previous",
            )
            .await
        }
        ServiceCall::Remove { ids } => remove_all(api, "/services", ids, "").await,
        ServiceCall::Tasks(filter) => {
            let query = filters(&[("service", &filter.services), ("node", &filter.nodes)]);
            api.get(&format!("/tasks{query}")).await
        }
    }
}

/// Networks.
async fn send_network(api: &Client, call: &NetworkCall) -> Result<Value, ClientError> {
    match call {
        NetworkCall::Create(spec) => {
            let answer = api.post("/networks/create", &network_request(spec)).await?;
            Ok(id_of(&answer).clone())
        }
        NetworkCall::List => api.get("/networks").await,
        NetworkCall::Inspect { ids } => Ok(Value::Array(each(api, "/networks", ids).await?)),
        NetworkCall::Remove { ids } => remove_all(api, "/networks", ids, "").await,
    }
}

/// Secrets and configs.
async fn send_data(api: &Client, call: &DataCall) -> Result<Value, ClientError> {
    match call {
        DataCall::Create { kind, spec } => {
            let answer = api
                .post(&format!("{}/create", data_base(*kind)), spec)
                .await?;
            Ok(id_of(&answer).clone())
        }
        DataCall::List { kind } => api.get(data_base(*kind)).await,
        DataCall::Inspect { kind, ids } => {
            Ok(Value::Array(each(api, data_base(*kind), ids).await?))
        }
        DataCall::Update {
            kind,
            id,
            version,
            spec,
        } => {
            api.post(
                &format!("{}/update?version={version}", object(data_base(*kind), id)),
                spec,
            )
            .await
        }
        DataCall::Remove { kind, ids } => remove_all(api, data_base(*kind), ids, "").await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_sends_dockers_request() {
        let request = init_request(&InitArgs {
            advertise_addr: Some("10.0.0.1".into()),
            dispatcher_heartbeat_s: Some(5),
            autolock: true,
            ..Default::default()
        });
        assert_eq!(request["AdvertiseAddr"], "10.0.0.1");
        assert_eq!(
            request["Spec"]["Dispatcher"]["HeartbeatPeriod"],
            5_000_000_000_u64
        );
        assert_eq!(request["AutoLockManagers"], true);
        assert!(request["Spec"].get("Raft").is_none());
    }

    #[test]
    fn filters_are_dockers_json_escaped() {
        assert_eq!(filters(&[("service", &[]), ("node", &[])]), "");
        assert_eq!(
            filters(&[("service", &["web".to_owned()])]),
            "?filters=%7B%22service%22%3A%5B%22web%22%5D%7D"
        );
    }

    #[test]
    fn networks_are_asked_as_docker_asks() {
        let mut spec = shoal_api::service::NetworkSpec {
            name: "backend".into(),
            attachable: true,
            ..Default::default()
        };
        spec.driver_configuration
            .options
            .insert("encrypted".into(), String::new());
        let request = network_request(&spec);
        assert_eq!(request["Driver"], "overlay");
        assert_eq!(request["Options"]["encrypted"], "");
        assert_eq!(request["Attachable"], true);
        assert_eq!(request["IPAM"]["Config"], json!([]));
    }

    #[test]
    fn a_node_update_changes_only_what_it_names() {
        let current =
            json!({"Role": "worker", "Availability": "active", "Labels": {"a": "1", "b": "2"}});
        let update = shoal_api::swarm::NodeUpdate {
            availability: Some(Availability::Drain),
            label_add: [("c".to_owned(), "3".to_owned())].into(),
            label_rm: vec!["a".into()],
            ..Default::default()
        };
        assert_eq!(
            node_spec(&current, &update).unwrap(),
            json!({"Role": "worker", "Availability": "drain", "Labels": {"b": "2", "c": "3"}})
        );
        let missing = shoal_api::swarm::NodeUpdate {
            label_rm: vec!["nokey".into()],
            ..Default::default()
        };
        let e = node_spec(&current, &missing).unwrap_err().to_string();
        assert!(
            e.ends_with("key nokey doesn't exist in node's labels"),
            "{e}"
        );
    }
}
