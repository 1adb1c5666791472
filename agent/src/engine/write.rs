//! The Engine API's writes (services, networks, nodes) and logs, each one call of the managers:
//! what the managers refuse is refused here with their message, and nothing is half-applied.

use shoal_api::call::{ClusterCall, NetworkCall, ServiceCall};
use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bollard::models;
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_api::logs::{LogsQuery, Stream};
use shoal_api::service::{Driver, Ipam, IpamConfig, NetworkSpec, ServiceSpec, TaskFilter};
use shoal_api::swarm::{Availability, NodeUpdate, Role};
use tokio_stream::StreamExt as _;

use super::{ApiError, Engine, call, spec, truthy};

#[derive(Debug, Default, Deserialize)]
pub(super) struct VersionQuery {
    pub(super) version: Option<String>,
    rollback: Option<String>,
    force: Option<String>,
}

/// The `version=` an update must name (Docker's clients always send it).
pub(super) fn version_of(raw: Option<&str>) -> Result<u64, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::bad_request("invalid version: missing"))?;
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid version {raw:?}: not a number")))
}

pub(super) async fn service_create(
    State(engine): State<Engine>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec: ServiceSpec = spec::convert_with::<models::ServiceSpec, ServiceSpec>(
        &body,
        "service spec",
        spec::service_defaults,
    )
    .map_err(ApiError::bad_request)?;
    let id = engine
        .swarm
        .call(ServiceCall::Create(Box::new(spec)))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "ID": id, "Warnings": [] })),
    ))
}

pub(super) async fn service_update(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    Query(query): Query<VersionQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let version = version_of(query.version.as_deref())?;
    // The body is the current spec; the rollback is to the previous one.
    let mut spec: ServiceSpec = spec::convert_with::<models::ServiceSpec, ServiceSpec>(
        &body,
        "service spec",
        spec::service_defaults,
    )
    .map_err(ApiError::bad_request)?;
    match query.rollback.as_deref() {
        Some("previous") => {
            engine
                .swarm
                .call(ServiceCall::Rollback {
                    id,
                    version: Some(version),
                })
                .await?;
        }
        Some(other) if !other.is_empty() => {
            return Err(ApiError::bad_request(format!(
                "invalid rollback {other:?}: want previous"
            )));
        }
        _ => {
            let current: Vec<shoal_api::service::Service> = super::shoal_of(
                &engine,
                ServiceCall::Inspect {
                    ids: vec![id.clone()],
                },
            )
            .await?;
            if let Some(current) = current.first() {
                spec::keep_shoal_fields(&current.spec, &mut spec);
            }
            engine
                .swarm
                .call(ServiceCall::Update {
                    id,
                    version,
                    spec: Box::new(spec),
                })
                .await?;
        }
    }
    Ok(Json(json!({ "Warnings": [] })))
}

pub(super) async fn service_remove(
    State(engine): State<Engine>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    engine
        .swarm
        .call(ServiceCall::Remove { ids: vec![id] })
        .await?;
    Ok(StatusCode::OK)
}

pub(super) async fn network_create(
    State(engine): State<Engine>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Older clients (the docker CLI 20.10) still send `CheckDuplicate`, gone from the API since
    // 1.44: names are unique among swarm networks anyway (the managers refuse a second one).
    let mut raw: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid network: {e}")))?;
    if let Some(map) = raw.as_object_mut()
        && map.get("CheckDuplicate").is_none_or(Value::is_boolean)
    {
        map.remove("CheckDuplicate");
    }
    let body = serde_json::to_vec(&raw).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let asked: models::NetworkCreateRequest =
        spec::docker_model(&body, "network").map_err(ApiError::bad_request)?;
    let spec = network_spec(asked).map_err(ApiError::bad_request)?;
    let id = engine.swarm.call(NetworkCall::Create(spec)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "Id": id, "Warning": "" })),
    ))
}

/// Docker's network request as the managers take it: overlay networks of swarm scope only.
fn network_spec(asked: models::NetworkCreateRequest) -> Result<NetworkSpec, String> {
    let driver = asked.driver.unwrap_or_default();
    if !driver.is_empty() && driver != "overlay" {
        return Err(format!(
            "invalid driver {driver:?}: swarm networks use the overlay driver"
        ));
    }
    if let Some(scope) = asked.scope.filter(|s| !s.is_empty() && s != "swarm") {
        return Err(format!(
            "network scope {scope:?} is not supported: only swarm"
        ));
    }
    let unsupported = [
        (asked.config_only == Some(true), "ConfigOnly"),
        (asked.config_from.is_some(), "ConfigFrom"),
        (asked.enable_ipv6 == Some(true), "EnableIPv6"),
        (asked.enable_ipv4 == Some(false), "EnableIPv4=false"),
    ];
    if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(format!("network: Shoal does not support {field}"));
    }
    let ipam = asked.ipam.unwrap_or_default();
    if ipam.options.as_ref().is_some_and(|o| !o.is_empty()) {
        return Err("network: Shoal does not support IPAM.Options".into());
    }
    if let Some(driver) = ipam.driver.filter(|d| !d.is_empty() && d != "default") {
        return Err(format!(
            "IPAM driver {driver:?} is not supported: only default"
        ));
    }
    let mut configs = Vec::new();
    for config in ipam.config.unwrap_or_default() {
        if config.ip_range.is_some_and(|r| !r.is_empty())
            || config.auxiliary_addresses.is_some_and(|a| !a.is_empty())
        {
            return Err("network: Shoal does not support IPRange or AuxiliaryAddresses".into());
        }
        configs.push(IpamConfig {
            subnet: config.subnet.unwrap_or_default(),
            gateway: config.gateway.unwrap_or_default(),
        });
    }
    Ok(NetworkSpec {
        name: asked.name,
        labels: asked.labels.unwrap_or_default().into_iter().collect(),
        driver_configuration: Driver {
            name: "overlay".into(),
            options: asked.options.unwrap_or_default().into_iter().collect(),
        },
        ingress: asked.ingress.unwrap_or_default(),
        internal: asked.internal.unwrap_or_default(),
        attachable: asked.attachable.unwrap_or_default(),
        ipam_options: Ipam { configs },
    })
}

pub(super) async fn network_remove(
    State(engine): State<Engine>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    engine
        .swarm
        .call(NetworkCall::Remove { ids: vec![id] })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn node_update(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    Query(query): Query<VersionQuery>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let version = version_of(query.version.as_deref())?;
    let spec: models::NodeSpec =
        spec::docker_model(&body, "node spec").map_err(ApiError::bad_request)?;
    if spec.name.as_ref().is_some_and(|n| !n.is_empty()) {
        return Err(ApiError::bad_request(
            "node spec: Shoal does not support node names (Name); the hostname names a node",
        ));
    }
    let found: Vec<models::Node> =
        call(&engine, ClusterCall::NodeInspect { ids: vec![id] }).await?;
    let node = found
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "node not found"))?;
    // The labels to drop are read here; the version is checked by the managers with the write,
    // so a node changed meanwhile is refused whole.
    let current = node.spec.unwrap_or_default().labels.unwrap_or_default();
    let wanted: BTreeMap<String, String> = spec.labels.unwrap_or_default().into_iter().collect();
    let update = NodeUpdate {
        availability: match spec.availability {
            Some(models::NodeSpecAvailabilityEnum::ACTIVE) => Some(Availability::Active),
            Some(models::NodeSpecAvailabilityEnum::PAUSE) => Some(Availability::Pause),
            Some(models::NodeSpecAvailabilityEnum::DRAIN) => Some(Availability::Drain),
            _ => None,
        },
        role: match spec.role {
            Some(models::NodeSpecRoleEnum::MANAGER) => Some(Role::Manager),
            Some(models::NodeSpecRoleEnum::WORKER) => Some(Role::Worker),
            _ => None,
        },
        version: Some(version),
        label_rm: current
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect(),
        label_add: wanted,
    };
    let id = node.id.unwrap_or_default();
    engine
        .swarm
        .call(ClusterCall::NodeUpdate { id, update })
        .await?;
    Ok(StatusCode::OK)
}

pub(super) async fn node_remove(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    Query(query): Query<VersionQuery>,
) -> Result<StatusCode, ApiError> {
    let force = truthy(query.force.as_deref());
    engine
        .swarm
        .call(ClusterCall::NodeRemove {
            ids: vec![id],
            force,
        })
        .await?;
    Ok(StatusCode::OK)
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LogsParams {
    follow: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
    timestamps: Option<String>,
    details: Option<String>,
    tail: Option<String>,
    since: Option<String>,
    /// Shoal's own: with `details`, warnings (a node whose logs cannot be read) come as
    /// `shoal.warning=1 TEXT` lines on stderr, as `shoal service logs` asks.
    warnings: Option<String>,
}

/// `GET /services/{id}/logs` and `/tasks/{id}/logs`: Docker's multiplexed stream (an 8-byte
/// header, `[stream, 0, 0, 0, length as u32 big-endian]`, before each line).
pub(super) async fn logs(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    Query(params): Query<LogsParams>,
) -> Result<Response, ApiError> {
    let (stdout, stderr) = (
        truthy(params.stdout.as_deref()),
        truthy(params.stderr.as_deref()),
    );
    if !stdout && !stderr {
        return Err(ApiError::bad_request(
            "Bad parameters: you must choose at least one stream",
        ));
    }
    let tail = match params.tail.as_deref() {
        None | Some("" | "all") => None,
        Some(n) => Some(n.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid tail {n:?}: want a number or all"))
        })?),
    };
    let since = match params
        .since
        .as_deref()
        .filter(|s| !s.is_empty() && *s != "0")
    {
        None => None,
        Some(s) => Some(rfc3339_of_unix(s).ok_or_else(|| {
            ApiError::bad_request(format!("invalid since {s:?}: want seconds since the epoch"))
        })?),
    };
    let query = LogsQuery {
        target: id,
        follow: truthy(params.follow.as_deref()),
        tail,
        since,
    };
    let timestamps = truthy(params.timestamps.as_deref());
    let details = truthy(params.details.as_deref());
    let marked_warnings = details && truthy(params.warnings.as_deref());
    let batches = engine.swarm.logs(query).await?;
    // Each line's details name its node, service and task (the docker CLI needs all three):
    // read once the subscription is open, so every task it covers is known.
    let owners: HashMap<String, (String, String)> = if details {
        let tasks: Vec<models::Task> =
            call(&engine, ServiceCall::Tasks(TaskFilter::default())).await?;
        tasks
            .into_iter()
            .filter_map(|t| {
                let owner = (
                    t.node_id.unwrap_or_default(),
                    t.service_id.unwrap_or_default(),
                );
                Some((t.id?, owner))
            })
            .collect()
    } else {
        HashMap::new()
    };
    let frames = batches.map(move |batch| -> Result<Bytes, std::io::Error> {
        let batch = batch.map_err(|status| std::io::Error::other(status.message().to_owned()))?;
        let mut out = Vec::new();
        for line in batch.lines {
            let wanted = match line.stream {
                Stream::Stdout => stdout,
                Stream::Stderr => stderr,
            };
            if !wanted {
                continue;
            }
            let mut payload = String::new();
            if timestamps {
                payload.push_str(&line.time);
                payload.push(' ');
            }
            if details {
                let (node, service) = owners
                    .get(&line.task_id)
                    .map_or(("", ""), |(n, s)| (n.as_str(), s.as_str()));
                payload.push_str(&format!(
                    "com.docker.swarm.node.id={node},com.docker.swarm.service.id={service},\
                     com.docker.swarm.task.id={} ",
                    line.task_id
                ));
            }
            payload.push_str(&line.text);
            payload.push('\n');
            let kind = match line.stream {
                Stream::Stdout => 1,
                Stream::Stderr => 2,
            };
            out.extend_from_slice(&[kind, 0, 0, 0]);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload.as_bytes());
        }
        for warning in batch.warnings {
            // With details, every frame must carry them (the docker CLI stops at one that
            // does not): a warning goes to shoald's log instead, unless the client asked for
            // them marked.
            let payload = if marked_warnings {
                format!("shoal.warning=1 {warning}\n")
            } else if details {
                tracing::warn!(%warning, "service logs");
                continue;
            } else {
                format!("{warning}\n")
            };
            out.extend_from_slice(&[2, 0, 0, 0]);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload.as_bytes());
        }
        Ok(Bytes::from(out))
    });
    let mut response = Body::from_stream(frames).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.docker.multiplexed-stream"),
    );
    Ok(response)
}

/// Docker's `since` (`1700000000` or `1700000000.5`) as RFC 3339.
fn rfc3339_of_unix(text: &str) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(shoal_api::unix_nanos(text)?)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_network_requests_become_overlay_specs() {
        let asked: models::NetworkCreateRequest = serde_json::from_str(
            r#"{"Name":"backend","Driver":"overlay","Scope":"","EnableIPv6":false,
            "IPAM":{"Driver":"default","Config":[{"Subnet":"10.9.0.0/24"}],"Options":{}},
            "Internal":false,"Attachable":true,"Ingress":false,"ConfigOnly":false,
            "Options":{"encrypted":""},"Labels":{"tier":"back"}}"#,
        )
        .unwrap();
        let spec = network_spec(asked).unwrap();
        assert_eq!(spec.name, "backend");
        assert!(spec.attachable);
        assert!(spec.driver_configuration.options.contains_key("encrypted"));
        assert_eq!(spec.ipam_options.configs[0].subnet, "10.9.0.0/24");
        assert_eq!(spec.labels["tier"], "back");
        let bridge: models::NetworkCreateRequest =
            serde_json::from_str(r#"{"Name":"b","Driver":"bridge"}"#).unwrap();
        assert!(network_spec(bridge).unwrap_err().contains("\"bridge\""));
    }

    #[test]
    fn since_reads_docker_seconds() {
        assert_eq!(
            rfc3339_of_unix("1700000000").as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            rfc3339_of_unix("1700000000.5").as_deref(),
            Some("2023-11-14T22:13:20.5Z")
        );
        assert_eq!(rfc3339_of_unix("soon"), None);
    }
}
