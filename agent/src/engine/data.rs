//! `/secrets` and `/configs`: list (filters `id`, `label`, `name`, `names`), create, inspect,
//! update (labels only) and remove, as `docker secret|config` and `docker stack deploy` send
//! them. A secret's `Data` is never answered; a config's is.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use bollard::models;
use serde_json::{Value, json};
use shoal_api::call::DataCall;
use shoal_api::secret::{DataKind, DataObject, DataSpec};

use super::filters::Filters;
use super::write::{VersionQuery, version_of};
use super::{ApiError, Engine, ListQuery, Object, call, spec, the_one};

/// The routes of both kinds.
pub(super) fn routes() -> Router<Engine> {
    let mut router = Router::new();
    for (kind, base) in [
        (DataKind::Secret, "/secrets"),
        (DataKind::Config, "/configs"),
    ] {
        router = router
            .route(base, get(move |engine, query| list(engine, query, kind)))
            .route(
                &format!("{base}/create"),
                post(move |engine, body| create(engine, body, kind)),
            )
            .route(
                &format!("{base}/{{id}}"),
                get(move |engine, id| inspect(engine, id, kind))
                    .delete(move |engine, id| remove(engine, id, kind)),
            )
            .route(
                &format!("{base}/{{id}}/update"),
                post(move |engine, id, query, body| update(engine, id, query, body, kind)),
            );
    }
    router
}

/// Docker's JSON of an object, then Shoal's fields (a secret's data was left out by the
/// managers).
fn answer(object: Value, kind: DataKind) -> Result<Value, ApiError> {
    Ok(match kind {
        DataKind::Secret => Object::<models::Secret>::read(object)?.answer(),
        DataKind::Config => Object::<models::Config>::read(object)?.answer(),
    })
}

async fn list(
    State(engine): State<Engine>,
    Query(query): Query<ListQuery>,
    kind: DataKind,
) -> Result<Json<Vec<Value>>, ApiError> {
    let filters = Filters::parse(query.filters.as_deref(), &["id", "label", "name", "names"])
        .map_err(ApiError::bad_request)?;
    let all: Vec<DataObject> = call(&engine, DataCall::List { kind }).await?;
    all.into_iter()
        .filter(|o| {
            filters.prefix_of("id", &o.id)
                && filters.prefix_of("name", &o.spec.name)
                && filters.any("names", |n| n == o.spec.name)
                && filters.labels("label", &o.spec.labels.clone().into_iter().collect())
        })
        .map(|o| answer(json!(o), kind))
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

/// The body as the managers take it: Docker's spec, with `Driver` and `Templating` refused by
/// name (Shoal keeps the data itself and does not template it).
fn read_spec(body: &[u8], kind: DataKind) -> Result<DataSpec, ApiError> {
    let what = format!("{kind} spec");
    match kind {
        DataKind::Secret => {
            spec::convert_with::<models::SecretSpec, DataSpec>(body, &what, |_| Ok(()))
        }
        DataKind::Config => {
            spec::convert_with::<models::ConfigSpec, DataSpec>(body, &what, |_| Ok(()))
        }
    }
    .map_err(ApiError::bad_request)
}

async fn create(
    State(engine): State<Engine>,
    body: Bytes,
    kind: DataKind,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec = read_spec(&body, kind)?;
    let id = engine.swarm.call(DataCall::Create { kind, spec }).await?;
    Ok((StatusCode::CREATED, Json(json!({ "ID": id }))))
}

async fn inspect(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    kind: DataKind,
) -> Result<Json<Value>, ApiError> {
    let found: Vec<Value> = call(
        &engine,
        DataCall::Inspect {
            kind,
            ids: vec![id.clone()],
        },
    )
    .await?;
    Ok(Json(answer(the_one(found, kind.name(), &id)?, kind)?))
}

async fn update(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    Query(query): Query<VersionQuery>,
    body: Bytes,
    kind: DataKind,
) -> Result<StatusCode, ApiError> {
    let version = version_of(query.version.as_deref())?;
    let spec = read_spec(&body, kind)?;
    engine
        .swarm
        .call(DataCall::Update {
            kind,
            id,
            version,
            spec,
        })
        .await?;
    Ok(StatusCode::OK)
}

async fn remove(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    kind: DataKind,
) -> Result<StatusCode, ApiError> {
    engine
        .swarm
        .call(DataCall::Remove {
            kind,
            ids: vec![id],
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
