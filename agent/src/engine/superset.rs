//! One shape for every client: an object is answered as Docker's model of it (bollard-stubs),
//! followed by what Shoal's own object holds beyond that model (a published port's `ClientIp`,
//! a node's `DataPathAddr` and WireGuard key, a task's `ServiceName`, ...). Docker's clients
//! ignore fields they do not know (Go's `encoding/json` and serde alike); the `shoal` CLI reads
//! the same answer into Shoal's types, so it and every other tool see one daemon.
//!
//! Where both have a field, Docker's value is answered: it is the one Docker's clients check.

use serde::Serialize;
use serde_json::Value;

/// `docker` as JSON, with every field of `ours` it lacks added, at every depth. `ours` is
/// taken, and Docker's fields are written over it: nothing of either is copied.
pub(crate) fn answer<M: Serialize>(docker: &M, mut ours: Value) -> Value {
    // Bollard's models are plain data: serialising one cannot fail.
    let docker = serde_json::to_value(docker).unwrap_or(Value::Null);
    overlay(&mut ours, docker);
    ours
}

/// Writes `docker` over `into`: object fields by name, array items by position when both
/// arrays have the same length (the same list, read two ways); anything else is replaced.
fn overlay(into: &mut Value, docker: Value) {
    match (into, docker) {
        (Value::Object(into), Value::Object(docker)) => {
            for (key, value) in docker {
                match into.get_mut(&key) {
                    Some(present) => overlay(present, value),
                    None => {
                        into.insert(key, value);
                    }
                }
            }
        }
        (Value::Array(into), Value::Array(docker)) if into.len() == docker.len() => {
            for (into, docker) in into.iter_mut().zip(docker) {
                overlay(into, docker);
            }
        }
        (_, Value::Null) => {}
        (into, docker) => *into = docker,
    }
}

/// Adds to `into` what `from` has and `into` lacks: object fields by name, array items by
/// position when both arrays have the same length.
pub(crate) fn add_missing(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                match into.get_mut(key) {
                    Some(present) => add_missing(present, value),
                    None if !value.is_null() => {
                        into.insert(key.clone(), value.clone());
                    }
                    None => {}
                }
            }
        }
        (Value::Array(into), Value::Array(from)) if into.len() == from.len() => {
            for (into, from) in into.iter_mut().zip(from) {
                add_missing(into, from);
            }
        }
        (into @ Value::Null, from) => *into = from.clone(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dockers_fields_come_first_and_shoals_are_added() {
        let ours = json!({
            "ID": "s1",
            "Spec": {
                "Name": "web",
                "EndpointSpec": {"Ports": [
                    {"TargetPort": 80, "PublishedPort": 8080, "ClientIp": "preserve"},
                    {"TargetPort": 443, "PublishedPort": 8443}
                ]}
            },
            "ServiceName": "web"
        });
        let docker = json!({
            "ID": "s1",
            "Spec": {
                "Name": "web",
                "EndpointSpec": {"Ports": [
                    {"TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"},
                    {"TargetPort": 443, "PublishedPort": 8443, "PublishMode": "ingress"}
                ]}
            }
        });
        let shown = answer(&docker, ours);
        let ports = &shown["Spec"]["EndpointSpec"]["Ports"];
        assert_eq!(ports[0]["ClientIp"], "preserve");
        assert_eq!(ports[0]["PublishMode"], "ingress", "Docker's fields stay");
        assert!(ports[1].get("ClientIp").is_none());
        assert_eq!(shown["ServiceName"], "web");
    }

    #[test]
    fn dockers_value_wins_and_lists_of_other_lengths_are_left_alone() {
        let shown = answer(
            &json!({"State": "ready", "Ports": [1]}),
            json!({"State": "READY", "Ports": [{"X": 1}, {"X": 2}]}),
        );
        assert_eq!(shown, json!({"State": "ready", "Ports": [1]}));
    }
}
