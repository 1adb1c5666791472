//! Secrets and configs on the managers: `secret|config create|ls|inspect|rm`, the references a
//! service's tasks make to them, and the data a node's assignment carries for its tasks.
//!
//! Both live in the raft store, which is sealed at rest ([`crate::keys`]). A secret's data is
//! never answered through the API (inspect and list leave it out); it leaves the managers only
//! in the assignment of a node that runs a task referring to it, over mutual TLS. Docker's rules:
//! names as services' names, data at most 500 KiB (secrets) or 1000 KiB (configs), only labels
//! change after creation, and one in use by a service cannot be removed.

use std::collections::BTreeSet;

use serde_json::Value;
use shoal_api::{
    call::DataCall,
    secret::{DataKind, DataObject, DataSpec, FileTarget, Payload},
    service::{ContainerSpec, Task, TaskState},
    version::Version,
};
use tonic::Status;

use super::{
    Inner,
    names::{check_name, find},
    write::{self, now},
};
use crate::{
    orchestrator::World,
    store::{Change, ChangeSet, Kind, ReadTx},
};

fn kind_of(kind: DataKind) -> Kind {
    match kind {
        DataKind::Secret => Kind::Secret,
        DataKind::Config => Kind::Config,
    }
}

/// Every secret or config in the store, with its data.
fn all(tx: &ReadTx<'_>, kind: DataKind) -> Vec<DataObject> {
    tx.list(kind_of(kind))
        .filter_map(|o| {
            let mut object: DataObject = serde_json::from_value(o.body.clone()).ok()?;
            object.id.clone_from(&o.id);
            object.version = Version { index: o.version };
            Some(object)
        })
        .collect()
}

fn find_data<'a>(
    objects: &'a [DataObject],
    wanted: &str,
    kind: DataKind,
) -> Result<&'a DataObject, Status> {
    find(
        objects
            .iter()
            .map(|o| (o.id.as_str(), o.spec.name.as_str(), o)),
        wanted,
        kind.name(),
    )
}

/// What the API answers: a secret without its data.
fn shown(mut object: DataObject, kind: DataKind) -> DataObject {
    if kind == DataKind::Secret {
        object.spec.data = None;
    }
    object
}

/// The data of `spec`, decoded and checked against Docker's limit.
fn check_data(spec: &DataSpec, kind: DataKind) -> Result<(), Status> {
    use base64::Engine as _;
    let Some(data) = &spec.data else {
        return Err(Status::invalid_argument(format!(
            "a {kind} needs data (Spec.Data, base64)"
        )));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| Status::invalid_argument(format!("{kind} data is not base64: {e}")))?;
    if bytes.is_empty() || bytes.len() > kind.max_data() {
        return Err(Status::invalid_argument(format!(
            "{kind} data must be larger than 0 and less than {} bytes",
            kind.max_data()
        )));
    }
    Ok(())
}

/// The user's calls on secrets and configs.
pub(super) async fn call(inner: &Inner, call: DataCall) -> Result<Value, Status> {
    match call {
        DataCall::Create { kind, spec } => create(inner, kind, spec).await,
        DataCall::List { kind } => {
            let mut found: Vec<DataObject> = inner
                .store
                .view(|tx| all(tx, kind))
                .into_iter()
                .map(|o| shown(o, kind))
                .collect();
            found.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
            write::encode(&found)
        }
        DataCall::Inspect { kind, ids } => {
            let objects = inner.store.view(|tx| all(tx, kind));
            ids.iter()
                .map(|id| find_data(&objects, id, kind).map(|o| shown(o.clone(), kind)))
                .collect::<Result<Vec<_>, _>>()
                .and_then(|found| write::encode(&found))
        }
        DataCall::Update {
            kind,
            id,
            version,
            spec,
        } => update(inner, kind, &id, version, spec).await,
        DataCall::Remove { kind, ids } => remove(inner, kind, &ids).await,
    }
}

async fn create(inner: &Inner, kind: DataKind, spec: DataSpec) -> Result<Value, Status> {
    check_name(&spec.name, kind.name())?;
    crate::limits::check_labels(&format!("the {kind}'s labels"), &spec.labels)?;
    check_data(&spec, kind)?;
    let objects = inner.store.view(|tx| all(tx, kind));
    if objects.iter().any(|o| o.spec.name == spec.name) {
        return Err(Status::already_exists(format!(
            "{kind} {} already exists",
            spec.name
        )));
    }
    let id = crate::ca::random_id().map_err(|e| Status::internal(e.to_string()))?;
    let at = now();
    let object = DataObject {
        id: id.clone(),
        version: Version::default(),
        created_at: at.clone(),
        updated_at: at,
        spec,
    };
    write::propose(
        inner,
        ChangeSet(vec![Change::Create {
            kind: kind_of(kind),
            id: id.clone(),
            body: write::encode(&object)?,
        }]),
    )
    .await?;
    Ok(Value::String(id))
}

async fn update(
    inner: &Inner,
    kind: DataKind,
    id: &str,
    version: u64,
    spec: DataSpec,
) -> Result<Value, Status> {
    let objects = inner.store.view(|tx| all(tx, kind));
    let mut object = find_data(&objects, id, kind)?.clone();
    if object.version.index != version {
        return Err(Status::aborted(format!(
            "update out of sequence: {kind} {} is at version {}, the update was made from {version}",
            object.spec.name, object.version.index
        )));
    }
    if spec.name != object.spec.name
        || spec
            .data
            .as_ref()
            .is_some_and(|d| Some(d) != object.spec.data.as_ref())
    {
        return Err(Status::invalid_argument(format!(
            "only updates to Labels are allowed ({kind} {})",
            object.spec.name
        )));
    }
    crate::limits::check_labels(&format!("the {kind}'s labels"), &spec.labels)?;
    object.spec.labels = spec.labels;
    object.updated_at = now();
    write::propose(
        inner,
        ChangeSet(vec![Change::Update {
            kind: kind_of(kind),
            id: object.id.clone(),
            version,
            body: write::encode(&object)?,
        }]),
    )
    .await?;
    Ok(Value::Null)
}

/// The IDs of the secrets (or configs) `spec` refers to.
fn referred(spec: &ContainerSpec, kind: DataKind) -> Vec<&str> {
    match kind {
        DataKind::Secret => spec.secrets.iter().map(|r| r.secret_id.as_str()).collect(),
        DataKind::Config => spec.configs.iter().map(|r| r.config_id.as_str()).collect(),
    }
}

async fn remove(inner: &Inner, kind: DataKind, ids: &[String]) -> Result<Value, Status> {
    let (objects, world) = inner
        .store
        .view(|tx| (all(tx, kind), World::read_services(tx)));
    let mut doomed = Vec::new();
    for wanted in ids {
        let object = find_data(&objects, wanted, kind)?;
        let users: Vec<&str> = world
            .services
            .values()
            .filter(|s| {
                referred(&s.value.spec.task_template.container_spec, kind)
                    .contains(&object.id.as_str())
            })
            .map(|s| s.value.spec.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{kind} '{}' is in use by the following service{}: {}",
                object.spec.name,
                if users.len() == 1 { "" } else { "s" },
                users.join(", ")
            )));
        }
        doomed.push(Change::Delete {
            kind: kind_of(kind),
            id: object.id.clone(),
            version: object.version.index,
        });
    }
    write::propose(inner, ChangeSet(doomed)).await?;
    Ok(Value::Null)
}

/// A secret's file name under `/run/secrets`: one path component.
fn check_secret_target(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!(
            "invalid secret target {name:?}: a file name under /run/secrets (no '/')"
        ));
    }
    Ok(())
}

/// A config's path: absolute (Docker puts a relative one under `/`), normal, not `/`.
fn config_target(name: &str) -> Result<String, String> {
    let path = if name.starts_with('/') {
        name.to_owned()
    } else {
        format!("/{name}")
    };
    let normal = path[1..]
        .split('/')
        .all(|part| !matches!(part, "" | "." | ".."));
    if !normal || path.contains('\0') {
        return Err(format!("invalid config target {name:?}: a file path"));
    }
    Ok(path)
}

fn check_owner(file: &mut FileTarget, what: &str) -> Result<(), String> {
    for (value, field) in [(&mut file.uid, "uid"), (&mut file.gid, "gid")] {
        if value.is_empty() {
            *value = "0".into();
        }
        if value.parse::<u32>().is_err() {
            return Err(format!(
                "invalid {field} {value:?} of {what}: want a number"
            ));
        }
    }
    if file.mode > 0o7777 {
        return Err(format!("invalid mode {:o} of {what}", file.mode));
    }
    Ok(())
}

/// Resolves the secrets and configs `spec` refers to (by ID, or by name when the ID is left
/// out), fills in their IDs and names, and checks the targets: each names an existing object,
/// no two share a target.
pub(super) fn resolve(inner: &Inner, spec: &mut ContainerSpec) -> Result<(), Status> {
    if spec.secrets.is_empty() && spec.configs.is_empty() {
        return Ok(());
    }
    let (secrets, configs) = inner
        .store
        .view(|tx| (all(tx, DataKind::Secret), all(tx, DataKind::Config)));
    resolve_with(&secrets, &configs, spec).map_err(Status::invalid_argument)
}

fn lookup<'a>(
    objects: &'a [DataObject],
    id: &str,
    name: &str,
    kind: DataKind,
) -> Result<&'a DataObject, String> {
    let found = if id.is_empty() {
        objects.iter().find(|o| o.spec.name == name)
    } else {
        objects.iter().find(|o| o.id == id)
    };
    match found {
        Some(o) if name.is_empty() || o.spec.name == name => Ok(o),
        Some(o) => Err(format!("{kind} {id} is named {}, not {name}", o.spec.name)),
        None => Err(format!(
            "{kind} not found: {}",
            if id.is_empty() { name } else { id }
        )),
    }
}

fn resolve_with(
    secrets: &[DataObject],
    configs: &[DataObject],
    spec: &mut ContainerSpec,
) -> Result<(), String> {
    let mut targets = BTreeSet::new();
    for r in &mut spec.secrets {
        let found = lookup(secrets, &r.secret_id, &r.secret_name, DataKind::Secret)?;
        r.secret_id.clone_from(&found.id);
        r.secret_name.clone_from(&found.spec.name);
        check_secret_target(&r.file.name)?;
        check_owner(&mut r.file, &format!("secret {}", r.secret_name))?;
        if !targets.insert(r.file.name.clone()) {
            return Err(format!(
                "secret references have a conflicting target: /run/secrets/{}",
                r.file.name
            ));
        }
    }
    let mut targets = BTreeSet::new();
    for r in &mut spec.configs {
        let found = lookup(configs, &r.config_id, &r.config_name, DataKind::Config)?;
        r.config_id.clone_from(&found.id);
        r.config_name.clone_from(&found.spec.name);
        r.file.name = config_target(&r.file.name)?;
        check_owner(&mut r.file, &format!("config {}", r.config_name))?;
        if !targets.insert(r.file.name.clone()) {
            return Err(format!(
                "config references have a conflicting target: {}",
                r.file.name
            ));
        }
    }
    Ok(())
}

/// The data of every secret and config that `tasks` (a node's) refer to and still run or are
/// to: what the node's assignment carries, and nothing more.
pub(super) fn payloads(tx: &ReadTx<'_>, tasks: &[Task]) -> Vec<Payload> {
    let mut wanted: BTreeSet<(DataKind, &str)> = BTreeSet::new();
    for task in tasks {
        if task.desired_state != TaskState::Running || task.status.state.is_terminal() {
            continue;
        }
        let spec = &task.spec.container_spec;
        wanted.extend(
            spec.secrets
                .iter()
                .map(|r| (DataKind::Secret, r.secret_id.as_str())),
        );
        wanted.extend(
            spec.configs
                .iter()
                .map(|r| (DataKind::Config, r.config_id.as_str())),
        );
    }
    wanted
        .into_iter()
        .filter_map(|(kind, id)| {
            let object: DataObject =
                serde_json::from_value(tx.get(kind_of(kind), id)?.body.clone()).ok()?;
            Some(Payload {
                kind,
                id: id.to_owned(),
                data: object.spec.data?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use shoal_api::secret::{ConfigReference, SecretReference};

    use super::*;

    fn object(id: &str, name: &str) -> DataObject {
        DataObject {
            id: id.into(),
            spec: DataSpec {
                name: name.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn secret(id: &str, name: &str, target: &str) -> SecretReference {
        SecretReference {
            file: FileTarget {
                name: target.into(),
                ..Default::default()
            },
            secret_id: id.into(),
            secret_name: name.into(),
        }
    }

    #[test]
    fn references_resolve_by_name_or_id_and_targets_are_checked() {
        let secrets = [object("s1id", "s1"), object("s2id", "s2")];
        let configs = [object("c1id", "c1")];
        let mut spec = ContainerSpec {
            secrets: vec![secret("", "s1", "s1"), secret("s2id", "", "db")],
            configs: vec![ConfigReference {
                file: FileTarget {
                    name: "c1".into(),
                    mode: 0o400,
                    ..Default::default()
                },
                config_id: String::new(),
                config_name: "c1".into(),
            }],
            ..Default::default()
        };
        resolve_with(&secrets, &configs, &mut spec).unwrap();
        assert_eq!(spec.secrets[0].secret_id, "s1id");
        assert_eq!(spec.secrets[1].secret_name, "s2");
        assert_eq!(spec.secrets[1].file.uid, "0");
        assert_eq!(spec.configs[0].config_id, "c1id");
        assert_eq!(spec.configs[0].file.name, "/c1");

        let refused = |secrets_refs: Vec<SecretReference>| {
            let mut spec = ContainerSpec {
                secrets: secrets_refs,
                ..Default::default()
            };
            resolve_with(&secrets, &configs, &mut spec).unwrap_err()
        };
        assert_eq!(
            refused(vec![secret("", "nope", "x")]),
            "secret not found: nope"
        );
        assert!(refused(vec![secret("s1id", "s2", "x")]).contains("is named s1"));
        assert!(refused(vec![secret("", "s1", "../etc/passwd")]).contains("invalid secret target"));
        assert!(
            refused(vec![secret("", "s1", "a"), secret("", "s2", "a")]).contains("conflicting")
        );
        let mut bad_uid = secret("", "s1", "a");
        bad_uid.file.uid = "root".into();
        assert!(refused(vec![bad_uid]).contains("invalid uid"));
    }

    #[test]
    fn config_targets_are_absolute_file_paths() {
        assert_eq!(config_target("c1").unwrap(), "/c1");
        assert_eq!(config_target("/etc/app.conf").unwrap(), "/etc/app.conf");
        for bad in ["/", "/etc/../passwd", "/etc/", "a/./b", "//x"] {
            assert!(config_target(bad).is_err(), "{bad}");
        }
    }
}
