//! Request bodies: read as bollard's model of Docker's object first (so Docker's types are
//! checked as Docker checks them), then as Shoal's. A field the request sets that Shoal's object
//! would not keep is refused by name, never dropped in silence.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Reads `body` as bollard's model `M` of a Docker request, refusing fields Docker does not
/// have (serde would drop them). `what` names the object in messages.
pub(crate) fn docker_model<M>(body: &[u8], what: &str) -> Result<M, String>
where
    M: DeserializeOwned + Serialize,
{
    let raw: Value = serde_json::from_slice(body).map_err(|e| format!("invalid {what}: {e}"))?;
    let (model, unknown) = read_keeping::<M>(&raw, what)?;
    if unknown.is_empty() {
        Ok(model)
    } else {
        Err(format!(
            "invalid {what}: unknown field{} {}",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", ")
        ))
    }
}

/// `value` read as `T`, and the paths of what `value` sets that `T` does not keep.
fn read_keeping<T>(value: &Value, what: &str) -> Result<(T, Vec<String>), String>
where
    T: DeserializeOwned + Serialize,
{
    let read: T =
        serde_json::from_value(value.clone()).map_err(|e| format!("invalid {what}: {e}"))?;
    let kept = serde_json::to_value(&read).map_err(|e| format!("invalid {what}: {e}"))?;
    let mut lost = Vec::new();
    lost_fields(value, &kept, "", &mut lost);
    Ok((read, lost))
}

/// Reads `body` as Docker's `M`, then as Shoal's `S`. Fields Docker does not have are taken
/// when `S` keeps them (Shoal's own, as `shoal` sends them: a published port's `ClientIp`) and
/// refused as unknown otherwise; a Docker field `S` would lose is refused by name. Docker's
/// defaults for what the request leaves out are filled in by `defaults` (on Docker's model,
/// before it is read as Shoal's). `what` names the object in messages ("service spec").
pub(crate) fn convert_with<M, S>(
    body: &[u8],
    what: &str,
    defaults: impl FnOnce(&mut M) -> Result<(), String>,
) -> Result<S, String>
where
    M: DeserializeOwned + Serialize,
    S: DeserializeOwned + Serialize,
{
    let raw: Value = serde_json::from_slice(body).map_err(|e| format!("invalid {what}: {e}"))?;
    let (mut model, not_dockers) = read_keeping::<M>(&raw, what)?;
    defaults(&mut model).map_err(|e| format!("{what}: {e}"))?;
    let mut asked = serde_json::to_value(&model).map_err(|e| format!("invalid {what}: {e}"))?;
    super::superset::add_missing(&mut asked, &raw);
    let unknown = |paths: &[String]| {
        format!(
            "invalid {what}: unknown field{} {}",
            if paths.len() == 1 { "" } else { "s" },
            paths.join(", ")
        )
    };
    let (ours, lost) = match read_keeping::<S>(&asked, what) {
        Ok(read) => read,
        // Fields neither has: named before what Shoal's type says of the rest.
        Err(_) if !not_dockers.is_empty() => return Err(unknown(&not_dockers)),
        Err(e) => return Err(e),
    };
    let (not_ours, unsupported): (Vec<String>, Vec<String>) = lost
        .into_iter()
        .partition(|path| not_dockers.contains(path));
    if !not_ours.is_empty() {
        return Err(unknown(&not_ours));
    }
    if unsupported.is_empty() {
        Ok(ours)
    } else {
        Err(format!(
            "{what}: Shoal does not support {} (yet): leave {} out",
            unsupported.join(", "),
            if unsupported.len() == 1 { "it" } else { "them" }
        ))
    }
}

/// Docker's defaults for a service spec, where the request leaves them out (SwarmKit's:
/// replicated with one replica, a restart policy's `any` after 5 s, updates and rollbacks one
/// task at a time monitored for 5 s); job modes are refused.
pub(crate) fn service_defaults(spec: &mut bollard::models::ServiceSpec) -> Result<(), String> {
    use bollard::models::TaskSpecRestartPolicyConditionEnum as Condition;
    const FIVE_SECONDS: i64 = 5_000_000_000;
    let mode = spec.mode.get_or_insert_with(Default::default);
    if mode.replicated_job.is_some() || mode.global_job.is_some() {
        return Err(
            "Shoal does not support job services (Mode.ReplicatedJob, Mode.GlobalJob) yet".into(),
        );
    }
    if mode.replicated.is_none() && mode.global.is_none() {
        mode.replicated = Some(Default::default());
    }
    if let Some(replicated) = &mut mode.replicated {
        replicated.replicas.get_or_insert(1);
    }
    if let Some(restart) = spec
        .task_template
        .as_mut()
        .and_then(|t| t.restart_policy.as_mut())
    {
        if matches!(restart.condition, None | Some(Condition::EMPTY)) {
            restart.condition = Some(Condition::ANY);
        }
        restart.delay.get_or_insert(FIVE_SECONDS);
    }
    if let Some(update) = &mut spec.update_config {
        update.parallelism.get_or_insert(1);
        if update.monitor.is_none_or(|m| m == 0) {
            update.monitor = Some(FIVE_SECONDS);
        }
    }
    if let Some(rollback) = &mut spec.rollback_config {
        rollback.parallelism.get_or_insert(1);
        if rollback.monitor.is_none_or(|m| m == 0) {
            rollback.monitor = Some(FIVE_SECONDS);
        }
    }
    Ok(())
}

/// What Docker's clients send where they mean "nothing asked": Shoal has no other setting.
fn is_default(value: &Value, at: &str) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => {
            s.is_empty()
                // The only isolation and runtime there are on Linux.
                || (at.ends_with("Isolation") && s == "default")
                || (at.ends_with("Runtime") && s == "container")
        }
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.iter().all(|(k, v)| is_default(v, k)),
    }
}

/// The paths of `asked`'s values that `kept` does not hold, into `lost`.
fn lost_fields(asked: &Value, kept: &Value, at: &str, lost: &mut Vec<String>) {
    if is_default(asked, at) || asked == kept {
        return;
    }
    match (asked, kept) {
        // An object kept in part, or not at all: named down to its leaves.
        (Value::Object(asked), kept) => {
            for (key, value) in asked {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                lost_fields(value, kept.get(key).unwrap_or(&Value::Null), &path, lost);
            }
        }
        (Value::Array(asked), Value::Array(kept)) if asked.len() == kept.len() => {
            for (i, (a, k)) in asked.iter().zip(kept).enumerate() {
                lost_fields(a, k, &format!("{at}[{i}]"), lost);
            }
        }
        (Value::Number(a), Value::Number(k)) if a.as_f64() == k.as_f64() => {}
        _ => lost.push(at.to_owned()),
    }
}

/// What Docker's model of a service spec cannot carry, taken over from the spec as it is: a
/// client updates a service by sending back the spec it read through this API, which never
/// showed Shoal's own fields. Today that is a published port's `ClientIp` (`client-ip=` of
/// `shoal service create --publish`), matched by protocol, target port, mode and published
/// port; a port the update adds or changes keeps what it says.
pub(crate) fn keep_shoal_fields(
    current: &shoal_api::service::ServiceSpec,
    new: &mut shoal_api::service::ServiceSpec,
) {
    for port in &mut new.endpoint_spec.ports {
        if port.client_ip.is_some() {
            continue;
        }
        port.client_ip = current
            .endpoint_spec
            .ports
            .iter()
            .find(|p| {
                p.protocol == port.protocol
                    && p.target_port == port.target_port
                    && p.publish_mode == port.publish_mode
                    && p.published_port == port.published_port
            })
            .and_then(|p| p.client_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models;

    #[test]
    fn an_update_through_dockers_model_keeps_shoals_own_fields() {
        use shoal_api::service::{ClientIp, PortConfig, ServiceSpec};
        let port = |target: u16, published: u16, client_ip| PortConfig {
            target_port: target,
            published_port: published,
            client_ip,
            ..Default::default()
        };
        let mut current = ServiceSpec::default();
        current.endpoint_spec.ports = vec![
            port(80, 8080, Some(ClientIp::Preserve)),
            port(443, 8443, Some(ClientIp::Preserve)),
        ];
        let mut new = ServiceSpec::default();
        new.endpoint_spec.ports = vec![
            port(80, 8080, None),
            port(443, 9443, None),
            port(53, 53, Some(ClientIp::Snat)),
        ];
        keep_shoal_fields(&current, &mut new);
        let kept: Vec<_> = new
            .endpoint_spec
            .ports
            .iter()
            .map(|p| p.client_ip)
            .collect();
        assert_eq!(kept, [Some(ClientIp::Preserve), None, Some(ClientIp::Snat)]);
    }

    fn service(json: &str) -> Result<shoal_api::service::ServiceSpec, String> {
        convert_with::<models::ServiceSpec, shoal_api::service::ServiceSpec>(
            json.as_bytes(),
            "service spec",
            service_defaults,
        )
    }

    #[test]
    fn a_service_without_replicas_has_one() {
        let replicas = |mode: &str| {
            let json = format!(
                r#"{{"Name":"a","TaskTemplate":{{"ContainerSpec":{{"Image":"host"}}}}{mode}}}"#
            );
            service(&json).unwrap().replicas()
        };
        assert_eq!(replicas(r#","Mode":{"Replicated":{}}"#), Some(1));
        assert_eq!(replicas(""), Some(1));
        assert_eq!(replicas(r#","Mode":{"Global":{}}"#), None);
        let job = service(
            r#"{"Name":"a","TaskTemplate":{"ContainerSpec":{"Image":"host"}},"Mode":{"GlobalJob":{}}}"#,
        )
        .unwrap_err();
        assert!(job.contains("job services"), "{job}");
        let restart = service(
            r#"{"Name":"a","TaskTemplate":{"ContainerSpec":{"Image":"host"},"RestartPolicy":{}},
            "UpdateConfig":{"Order":"start-first"}}"#,
        )
        .unwrap();
        let policy = restart.task_template.restart_policy.unwrap();
        assert_eq!(policy.delay, 5_000_000_000);
        let update = restart.update_config.unwrap();
        assert_eq!((update.parallelism, update.monitor), (1, 5_000_000_000));
    }

    /// What `docker service create --name web --replicas 3 --publish 8080:80 --env A=1` sends.
    #[test]
    fn the_docker_clis_service_spec_is_kept_whole() {
        let spec = service(
            r#"{"Name":"web","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"host",
            "Args":["serve"],"Env":["A=1"],"Init":false,"DNSConfig":{},"Isolation":"default"},
            "Resources":{"Limits":{},"Reservations":{}},"RestartPolicy":{"Condition":"any",
            "MaxAttempts":0},"Placement":{},"Networks":[{"Target":"backend"}],"ForceUpdate":0,
            "Runtime":"container"},"Mode":{"Replicated":{"Replicas":3}},
            "UpdateConfig":{"Parallelism":1,"FailureAction":"pause","Monitor":5000000000,
            "MaxFailureRatio":0,"Order":"stop-first"},"EndpointSpec":{"Mode":"vip",
            "Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,
            "PublishMode":"ingress"}]}}"#,
        )
        .unwrap();
        assert_eq!(spec.name, "web");
        assert_eq!(spec.replicas(), Some(3));
        assert_eq!(spec.task_template.container_spec.env, ["A=1"]);
        assert_eq!(spec.endpoint_spec.ports[0].published_port, 8080);
        assert_eq!(spec.task_template.networks[0].target, "backend");
    }

    #[test]
    fn what_shoal_would_drop_is_refused_by_name() {
        let e = service(
            r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"host",
            "DNSConfig":{"Nameservers":["8.8.8.8"]}}},"Mode":{"Replicated":{"Replicas":1}}}"#,
        )
        .unwrap_err();
        assert!(
            e.contains("TaskTemplate.ContainerSpec.DNSConfig.Nameservers"),
            "{e}"
        );
        // Docker's types are checked first.
        let e =
            service(r#"{"Name":"web","Mode":{"Replicated":{"Replicas":"three"}}}"#).unwrap_err();
        assert!(e.starts_with("invalid service spec"), "{e}");
        assert!(service("{").is_err());
        // Fields Docker does not have are bad input, not ignored.
        let e = service(r#"{"Name":"web","Nmae":"x","Mode":{"Replicated":{"Replicas":1}}}"#)
            .unwrap_err();
        assert_eq!(e, "invalid service spec: unknown field Nmae");
    }

    /// What `shoal service create --publish published=8080,target=80,client-ip=preserve` sends:
    /// Docker's spec with Shoal's own field on the port.
    #[test]
    fn shoals_own_fields_are_taken_and_unknown_ones_refused() {
        use shoal_api::service::ClientIp;
        let spec = service(
            r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"host"}},
            "EndpointSpec":{"Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,
            "ClientIp":"preserve"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            spec.endpoint_spec.ports[0].client_ip,
            Some(ClientIp::Preserve)
        );
        let e = service(
            r#"{"Name":"web","EndpointSpec":{"Ports":[{"TargetPort":80,"ClientIP":"x"}]}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "invalid service spec: unknown field EndpointSpec.Ports[0].ClientIP"
        );
    }
}
