//! `/swarm`: init, join, leave and update, as `docker swarm ...` sends them. Docker's requests
//! carry every setting with its default; a setting Shoal cannot honour is refused by name
//! unless it is Docker's default.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use bollard::models;
use serde::Deserialize;
use serde_json::Value;
use shoal_api::call::{Call, ClusterCall};
use shoal_api::swarm::{InitArgs, JoinArgs, Role, SwarmUpdateArgs};

use super::{ApiError, Engine, truthy};

/// Seconds in a Docker duration (integer nanoseconds), refusing what is not whole seconds.
fn whole_seconds(nanos: Option<i64>, what: &str) -> Result<Option<u64>, String> {
    match nanos {
        None | Some(0) => Ok(None),
        Some(n) if n > 0 && n % 1_000_000_000 == 0 => Ok(Some((n / 1_000_000_000) as u64)),
        Some(n) => Err(format!("{what} {n}ns: Shoal takes whole seconds")),
    }
}

/// Top-level fields of a request besides those of bollard's model, with the values Shoal takes.
fn check_extras(raw: &Value, model_keys: &[&str]) -> Result<(), String> {
    let Value::Object(map) = raw else {
        return Err("want a JSON object".into());
    };
    for (key, value) in map {
        if model_keys.contains(&key.as_str()) {
            continue;
        }
        let fine = match key.as_str() {
            // `--availability` at init and join: only active (a node is drained after it joins).
            "Availability" => matches!(value.as_str(), None | Some("" | "active")),
            // `--autolock` at init: read by `init`.
            "AutoLockManagers" => value.is_boolean() || value.is_null(),
            _ => return Err(format!("unknown field {key}")),
        };
        if !fine {
            return Err(format!("Shoal does not support {key}={value} (yet)"));
        }
    }
    Ok(())
}

/// The parts of a swarm spec Shoal keeps: heartbeat, snapshot interval, certificate expiry and
/// task history; the rest must be Docker's defaults.
struct SpecArgs {
    autolock: Option<bool>,
    dispatcher_heartbeat_s: Option<u64>,
    snapshot_interval: Option<u64>,
    cert_expiry_s: Option<u64>,
    task_history_limit: Option<u64>,
    ca_force_rotate: Option<u64>,
}

fn spec_args(spec: Option<models::SwarmSpec>) -> Result<SpecArgs, String> {
    let spec = spec.unwrap_or_default();
    let raft = spec.raft.unwrap_or_default();
    let ca = spec.ca_config.unwrap_or_default();
    let task_defaults_set = spec
        .task_defaults
        .as_ref()
        .and_then(|t| t.log_driver.as_ref())
        .is_some_and(|d| d.name.as_ref().is_some_and(|n| !n.is_empty()));
    let unsupported = [
        (
            spec.name
                .as_ref()
                .is_some_and(|n| !n.is_empty() && n != "default"),
            "Name",
        ),
        (
            spec.labels.as_ref().is_some_and(|l| !l.is_empty()),
            "Labels",
        ),
        (task_defaults_set, "TaskDefaults.LogDriver"),
        (
            raft.log_entries_for_slow_followers
                .is_some_and(|n| n != 0 && n != 500),
            "Raft.LogEntriesForSlowFollowers",
        ),
        (
            ca.signing_ca_key.as_ref().is_some_and(|k| !k.is_empty()),
            "CAConfig.SigningCAKey",
        ),
        (
            raft.election_tick.is_some_and(|t| t != 0 && t != 10),
            "Raft.ElectionTick",
        ),
        (
            raft.heartbeat_tick.is_some_and(|t| t != 0 && t != 1),
            "Raft.HeartbeatTick",
        ),
        (
            raft.keep_old_snapshots.is_some_and(|k| k != 0),
            "Raft.KeepOldSnapshots",
        ),
        (
            ca.external_cas.as_ref().is_some_and(|c| !c.is_empty()),
            "CAConfig.ExternalCAs",
        ),
        (
            ca.signing_ca_cert.as_ref().is_some_and(|c| !c.is_empty()),
            "CAConfig.SigningCACert",
        ),
    ];
    if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(format!("Shoal does not support {field} (yet)"));
    }
    Ok(SpecArgs {
        autolock: spec.encryption_config.and_then(|e| e.auto_lock_managers),
        dispatcher_heartbeat_s: whole_seconds(
            spec.dispatcher.and_then(|d| d.heartbeat_period),
            "Dispatcher.HeartbeatPeriod",
        )?,
        // Checked by the managers (0 is out of bounds); `init` takes 0 as "not given".
        snapshot_interval: raft.snapshot_interval,
        cert_expiry_s: whole_seconds(ca.node_cert_expiry, "CAConfig.NodeCertExpiry")?,
        task_history_limit: spec
            .orchestration
            .and_then(|o| o.task_history_retention_limit)
            .map(|l| l.max(0) as u64),
        ca_force_rotate: ca.force_rotate,
    })
}

/// Reads `body` as `M` after checking its top-level fields.
fn request<M: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
    keys: &[&str],
) -> Result<M, ApiError> {
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid {what}: {e}")))?;
    check_extras(&raw, keys).map_err(|e| ApiError::bad_request(format!("invalid {what}: {e}")))?;
    serde_json::from_value(raw).map_err(|e| ApiError::bad_request(format!("invalid {what}: {e}")))
}

/// Docker's empty addresses mean "not given".
fn given(addr: Option<String>) -> Option<String> {
    addr.filter(|a| !a.is_empty())
}

pub(super) async fn init(
    State(engine): State<Engine>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let asked: models::SwarmInitRequest = request(
        &body,
        "swarm init request",
        &[
            "ListenAddr",
            "AdvertiseAddr",
            "DataPathAddr",
            "DataPathPort",
            "DefaultAddrPool",
            "ForceNewCluster",
            "SubnetSize",
            "Spec",
        ],
    )?;
    if asked.force_new_cluster == Some(true) {
        return Err(ApiError::bad_request(
            "Shoal does not support --force-new-cluster (yet)",
        ));
    }
    let spec = spec_args(asked.spec).map_err(ApiError::bad_request)?;
    if spec.ca_force_rotate.is_some_and(|n| n != 0) {
        return Err(ApiError::bad_request(
            "Shoal does not support CAConfig.ForceRotate at init: a new swarm has a new root CA",
        ));
    }
    let data_path_port = match asked.data_path_port.unwrap_or(0) {
        0 => None,
        port => Some(u16::try_from(port).map_err(|_| {
            ApiError::bad_request(format!("invalid DataPathPort {port}: not a port"))
        })?),
    };
    let pool = asked.default_addr_pool.unwrap_or_default();
    let args = InitArgs {
        advertise_addr: given(asked.advertise_addr),
        listen_addr: given(asked.listen_addr),
        data_path_addr: given(asked.data_path_addr),
        data_path_port,
        dispatcher_heartbeat_s: spec.dispatcher_heartbeat_s,
        snapshot_interval: spec.snapshot_interval.filter(|s| *s != 0),
        cert_expiry_s: spec.cert_expiry_s,
        // The docker CLI sends its default subnet size (24) with or without a pool.
        default_addr_pool_mask_length: asked
            .subnet_size
            .filter(|s| *s != 0 && !pool.is_empty())
            .map(|s| u8::try_from(s).unwrap_or(u8::MAX)),
        default_addr_pool: pool,
        // `--autolock` (a top-level field bollard's model lacks; `request` checked its type).
        autolock: serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|raw| raw.get("AutoLockManagers").and_then(Value::as_bool))
            .unwrap_or(false)
            || spec.autolock.unwrap_or(false),
    };
    let node_id = engine.swarm.call(Call::Init(args)).await?;
    // Docker's default history limit is Shoal's too; another one is set once the swarm is up.
    if let Some(limit) = spec.task_history_limit.filter(|l| *l != 5) {
        engine
            .swarm
            .call(ClusterCall::Update(SwarmUpdateArgs {
                task_history_limit: Some(limit),
                ..Default::default()
            }))
            .await?;
    }
    Ok(Json(node_id))
}

pub(super) async fn join(
    State(engine): State<Engine>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let asked: models::SwarmJoinRequest = request(
        &body,
        "swarm join request",
        &[
            "ListenAddr",
            "AdvertiseAddr",
            "DataPathAddr",
            "RemoteAddrs",
            "JoinToken",
        ],
    )?;
    let remote = asked
        .remote_addrs
        .unwrap_or_default()
        .into_iter()
        .find(|a| !a.is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid swarm join request: no RemoteAddrs"))?;
    let args = JoinArgs {
        token: asked.join_token.unwrap_or_default(),
        remote,
        advertise_addr: given(asked.advertise_addr),
        listen_addr: given(asked.listen_addr),
        data_path_addr: given(asked.data_path_addr),
    };
    engine.swarm.call(Call::Join(args)).await?;
    Ok(StatusCode::OK)
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LeaveQuery {
    force: Option<String>,
}

pub(super) async fn leave(
    State(engine): State<Engine>,
    Query(query): Query<LeaveQuery>,
) -> Result<StatusCode, ApiError> {
    let force = truthy(query.force.as_deref());
    engine.swarm.call(Call::Leave { force }).await?;
    Ok(StatusCode::OK)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UpdateQuery {
    version: Option<String>,
    rotate_worker_token: Option<String>,
    rotate_manager_token: Option<String>,
    rotate_manager_unlock_key: Option<String>,
}

pub(super) async fn update(
    State(engine): State<Engine>,
    Query(query): Query<UpdateQuery>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let version = super::write::version_of(query.version.as_deref())?;
    let asked: models::SwarmSpec = request(
        &body,
        "swarm spec",
        &[
            "Name",
            "Labels",
            "Orchestration",
            "Raft",
            "Dispatcher",
            "CAConfig",
            "EncryptionConfig",
            "TaskDefaults",
        ],
    )?;
    let spec = spec_args(Some(asked)).map_err(ApiError::bad_request)?;
    engine
        .swarm
        .call(ClusterCall::Update(SwarmUpdateArgs {
            dispatcher_heartbeat_s: spec.dispatcher_heartbeat_s,
            snapshot_interval: spec.snapshot_interval,
            cert_expiry_s: spec.cert_expiry_s,
            task_history_limit: spec.task_history_limit,
            autolock: spec.autolock,
            ca_force_rotate: spec.ca_force_rotate,
            // Checked by the managers with the write.
            version: Some(version),
        }))
        .await?;
    if truthy(query.rotate_manager_unlock_key.as_deref()) {
        engine
            .swarm
            .call(ClusterCall::UnlockKey { rotate: true })
            .await?;
    }
    for (asked, role) in [
        (&query.rotate_worker_token, Role::Worker),
        (&query.rotate_manager_token, Role::Manager),
    ] {
        if truthy(asked.as_deref()) {
            engine
                .swarm
                .call(ClusterCall::JoinToken { role, rotate: true })
                .await?;
        }
    }
    Ok(StatusCode::OK)
}

/// `GET /swarm/unlockkey`: `{"UnlockKey": ""}` while autolock is off, as Docker answers.
pub(super) async fn unlock_key(State(engine): State<Engine>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        engine
            .swarm
            .call(ClusterCall::UnlockKey { rotate: false })
            .await?,
    ))
}

/// `POST /swarm/unlock` with `{"UnlockKey": "SWMKEY-1-..."}`.
pub(super) async fn unlock(
    State(engine): State<Engine>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let asked: models::SwarmUnlockRequest = request(&body, "swarm unlock request", &["UnlockKey"])?;
    let key = asked.unlock_key.unwrap_or_default();
    engine.swarm.call(Call::Unlock { key }).await?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_defaults_pass_and_the_rest_is_named() {
        let spec: models::SwarmSpec = serde_json::from_str(
            r#"{"Orchestration":{"TaskHistoryRetentionLimit":5},"Raft":{"SnapshotInterval":10000,
            "ElectionTick":10,"HeartbeatTick":1,"KeepOldSnapshots":0,
            "LogEntriesForSlowFollowers":500},"Dispatcher":{"HeartbeatPeriod":5000000000},
            "CAConfig":{"NodeCertExpiry":7776000000000000},"EncryptionConfig":
            {"AutoLockManagers":false},"TaskDefaults":{}}"#,
        )
        .unwrap();
        let args = spec_args(Some(spec)).unwrap();
        assert_eq!(args.dispatcher_heartbeat_s, Some(5));
        assert_eq!(args.cert_expiry_s, Some(7_776_000));
        assert_eq!(args.snapshot_interval, Some(10_000));
        assert_eq!(args.task_history_limit, Some(5));
        let autolock: models::SwarmSpec =
            serde_json::from_str(r#"{"EncryptionConfig":{"AutoLockManagers":true}}"#).unwrap();
        assert_eq!(spec_args(Some(autolock)).unwrap().autolock, Some(true));
        let half: models::SwarmSpec =
            serde_json::from_str(r#"{"Dispatcher":{"HeartbeatPeriod":1500000000}}"#).unwrap();
        assert!(
            spec_args(Some(half))
                .err()
                .unwrap()
                .contains("whole seconds")
        );
    }

    #[test]
    fn extra_fields_are_docker_defaults_or_refused() {
        let keys = ["ListenAddr"];
        let ok = serde_json::json!({"ListenAddr": "0.0.0.0:2377", "Availability": "active",
            "AutoLockManagers": false});
        assert!(check_extras(&ok, &keys).is_ok());
        let autolock = serde_json::json!({"AutoLockManagers": true});
        assert!(check_extras(&autolock, &keys).is_ok());
        let wrong = serde_json::json!({"AutoLockManagers": "yes"});
        assert!(check_extras(&wrong, &keys).is_err());
        let drain = serde_json::json!({"Availability": "drain"});
        assert!(
            check_extras(&drain, &keys)
                .unwrap_err()
                .contains("Availability")
        );
        let typo = serde_json::json!({"ListenAdr": "x"});
        assert_eq!(
            check_extras(&typo, &keys).unwrap_err(),
            "unknown field ListenAdr"
        );
    }
}
