//! `GET /events`: the swarm's events (service, node, network, secret, config, and Shoal's task
//! state changes) from this manager's journal ([`shoal_control::events`]), as Docker streams
//! them: one JSON message per line. `since` replays the kept events from that time; `until`
//! ends the stream at that time (at once, if it is past); neither: new events, until the
//! client goes away. Only managers keep events; a worker answers 503, saying so.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_control::events::SwarmEvent;
use tokio::sync::broadcast::error::RecvError;

use super::filters::Filters;
use super::{ApiError, Engine};

/// `GET /events`'s parameters.
#[derive(Debug, Deserialize)]
pub(super) struct EventsParams {
    since: Option<String>,
    until: Option<String>,
    filters: Option<String>,
}

/// Docker's timestamp `text` (parameter `name`) as nanoseconds since the epoch.
fn unix_nanos(name: &str, text: &str) -> Result<i128, ApiError> {
    shoal_api::unix_nanos(text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid {name} {text:?}: want seconds since the epoch (1700000000.5)"
        ))
    })
}

fn now_nanos() -> i128 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos()
}

/// Whether `event` passes `filters` (`type`, `event`, `scope`).
fn wanted(filters: &Filters, event: &SwarmEvent) -> bool {
    filters.any("type", |t| t == event.kind)
        && filters.any("event", |a| a == event.action)
        && filters.any("scope", |s| s == event.scope)
}

pub(super) async fn events(
    State(engine): State<Engine>,
    Query(params): Query<EventsParams>,
) -> Result<Response, ApiError> {
    let filters = Filters::parse(params.filters.as_deref(), &["type", "event", "scope"])
        .map_err(ApiError::bad_request)?;
    let since = params
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| unix_nanos("since", s))
        .transpose()?;
    let until = params
        .until
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| unix_nanos("until", s))
        .transpose()?;
    if let (Some(since), Some(until)) = (since, until)
        && until < since
    {
        return Err(ApiError::bad_request("until is before since"));
    }
    let Some(manager) = engine.swarm.manager().await else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "This node is not a swarm manager. The swarm's events are kept by its managers: run this on a manager.",
        ));
    };
    let (past, mut live) = manager.events().follow(since.unwrap_or_else(now_nanos));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let line = |event: &SwarmEvent| {
        let mut bytes = serde_json::to_vec(event).unwrap_or_default();
        bytes.push(b'\n');
        Ok(Bytes::from(bytes))
    };
    tokio::spawn(async move {
        let in_time = |e: &SwarmEvent| until.is_none_or(|u| e.time_nano <= u);
        for event in past.iter().filter(|e| in_time(e) && wanted(&filters, e)) {
            if tx.send(line(event)).await.is_err() {
                return;
            }
        }
        let deadline = until.map(|u| {
            let wait = u.saturating_sub(now_nanos()).clamp(0, i128::from(u64::MAX));
            tokio::time::Instant::now() + std::time::Duration::from_nanos(wait as u64)
        });
        loop {
            let next = tokio::select! {
                next = live.recv() => next,
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => return,
                () = tx.closed() => return,
            };
            let event = match next {
                Ok(event) => event,
                // Events missed by a client too slow to read them: it goes on with the next.
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "an events client fell behind");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if !in_time(&event) {
                return;
            }
            if wanted(&filters, &event) && tx.send(line(&event)).await.is_err() {
                return;
            }
        }
    });
    let mut response =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_read_as_nanoseconds_and_others_are_refused() {
        assert_eq!(unix_nanos("since", "2").ok(), Some(2_000_000_000));
        assert_eq!(unix_nanos("since", "2.5").ok(), Some(2_500_000_000));
        assert_eq!(unix_nanos("since", "2.000000001").ok(), Some(2_000_000_001));
        let e = unix_nanos("until", "yesterday").err().unwrap();
        assert!(
            e.message.contains("invalid until \"yesterday\""),
            "{}",
            e.message
        );
    }
}
