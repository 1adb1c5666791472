//! `shoal events`: the swarm's events as `docker events` prints them, one per line:
//! `2026-12-01T16:00:00.123456789Z service update x7x2q3h4k0sd (name=web, replicas.new=3, replicas.old=2)`,
//! from `GET /events` on the node's daemon (a manager).

use std::io::Write;

use http_body_util::BodyExt as _;
use shoal_api::{DaemonHost, escape};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::logs::{since as time_flag, unix_seconds as unix};
use crate::Failure;

/// The filter keys `--filter` takes.
const FILTER_KEYS: &[&str] = &["type", "event", "scope"];
/// The types an event has.
const TYPES: &[&str] = &["service", "node", "network", "secret", "config", "task"];

/// `events`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Show events created since timestamp (2013-01-02T13:23:37Z, Unix seconds, or relative:
    /// 10m for ten minutes ago)
    #[arg(long, value_parser = time_flag)]
    since: Option<String>,
    /// Stream events until this timestamp (same forms as --since; without it, until
    /// interrupted)
    #[arg(long, value_parser = until_flag)]
    until: Option<String>,
    /// Filter output based on conditions provided: type=service|node|network|secret|config|task,
    /// event=create|update|remove, scope=swarm
    #[arg(short, long = "filter", value_name = "FILTER", value_parser = filter)]
    filters: Vec<(String, String)>,
    /// Format output: json (one JSON object per line), or the default text
    #[arg(long, value_parser = ["json"])]
    format: Option<String>,
}

fn until_flag(text: &str) -> Result<String, String> {
    time_flag(text).map_err(|e| e.replacen("invalid since", "invalid until", 1))
}

fn filter(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("bad format of filter (expected name=value): {text:?}"))?;
    if !FILTER_KEYS.contains(&key) {
        return Err(format!(
            "invalid filter {key:?}: want one of {}",
            FILTER_KEYS.join(", ")
        ));
    }
    if key == "type" && !TYPES.contains(&value) {
        return Err(format!(
            "invalid type {value:?}: want one of {}",
            TYPES.join(", ")
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// The request's path for `args`.
fn path(args: &Args) -> Result<String, Failure> {
    let mut query = Vec::new();
    if let Some(since) = &args.since {
        query.push(format!("since={}", unix(since)?));
    }
    if let Some(until) = &args.until {
        query.push(format!("until={}", unix(until)?));
    }
    if !args.filters.is_empty() {
        let mut map: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
        for (key, value) in &args.filters {
            let entry = map
                .entry(key.clone())
                .or_insert_with(|| serde_json::json!({}));
            entry[value] = serde_json::Value::Bool(true);
        }
        query.push(format!(
            "filters={}",
            escape(&serde_json::Value::Object(map).to_string())
        ));
    }
    Ok(if query.is_empty() {
        "/events".to_owned()
    } else {
        format!("/events?{}", query.join("&"))
    })
}

/// One event as `docker events` prints it.
fn text_line(event: &serde_json::Value) -> String {
    let nanos = event["timeNano"].as_i64().map_or(0, i128::from);
    let time = OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            let t = t.format(&Rfc3339).ok()?;
            // Docker prints nine digits of the second's fraction.
            let (whole, _) = t.split_once('.').unwrap_or((t.trim_end_matches('Z'), ""));
            Some(format!("{whole}.{:09}Z", nanos.rem_euclid(1_000_000_000)))
        })
        .unwrap_or_default();
    let attributes: Vec<String> = event["Actor"]["Attributes"]
        .as_object()
        .map(|a| {
            a.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let mut line = format!(
        "{time} {} {} {}",
        text(&event["Type"]),
        text(&event["Action"]),
        text(&event["Actor"]["ID"])
    );
    if !attributes.is_empty() {
        line.push_str(&format!(" ({})", attributes.join(", ")));
    }
    line
}

/// Runs `events`: prints each event as it comes, until `--until` or the user interrupts.
pub(crate) async fn run(host: &DaemonHost, args: Args) -> Result<(), Failure> {
    let path = path(&args)?;
    let mut body = crate::api::client(host).stream(&path).await?;
    let mut out = std::io::stdout();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = body.frame().await {
        let chunk = chunk.map_err(|e| Failure(format!("reading the events: {e}")))?;
        let Ok(data) = chunk.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: serde_json::Value = serde_json::from_slice(&line)
                .map_err(|e| Failure(format!("reading the events: {e}")))?;
            let printed = match args.format.as_deref() {
                Some("json") => event.to_string(),
                _ => text_line(&event),
            };
            // A closed pipe (`| head`) ends the command quietly.
            if writeln!(out, "{printed}")
                .and_then(|()| out.flush())
                .is_err()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> Result<Args, String> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let mut argv = vec!["shoal"];
        argv.extend_from_slice(flags);
        <Cli as clap::Parser>::try_parse_from(argv)
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn filters_and_times_go_in_the_query_as_docker_sends_them() {
        let a = args(&[
            "--since",
            "1700000000",
            "--until",
            "2023-11-14T22:13:21.5Z",
            "-f",
            "type=service",
            "--filter",
            "type=node",
        ])
        .unwrap();
        assert_eq!(
            path(&a).unwrap(),
            format!(
                "/events?since=1700000000.000000000&until=1700000001.500000000&filters={}",
                escape(r#"{"type":{"node":true,"service":true}}"#)
            )
        );
        assert_eq!(path(&args(&[]).unwrap()).unwrap(), "/events");
    }

    #[test]
    fn bad_filters_say_what_was_wrong() {
        let e = args(&["--filter", "colour=red"]).err().unwrap();
        assert!(e.contains("invalid filter \"colour\""), "{e}");
        let e = args(&["--filter", "type=container"]).err().unwrap();
        assert!(e.contains("invalid type \"container\""), "{e}");
        let e = args(&["--filter", "type"]).err().unwrap();
        assert!(e.contains("expected name=value"), "{e}");
        let e = args(&["--since", "last tuesday"]).err().unwrap();
        assert!(e.contains("invalid since"), "{e}");
    }

    #[test]
    fn an_event_prints_as_docker_prints_it() {
        let event = serde_json::json!({
            "Type": "service", "Action": "update",
            "Actor": {"ID": "abc", "Attributes": {"name": "web", "replicas.new": "3", "replicas.old": "2"}},
            "scope": "swarm", "time": 1_700_000_000, "timeNano": 1_700_000_000_000_000_042_i64,
        });
        assert_eq!(
            text_line(&event),
            "2023-11-14T22:13:20.000000042Z service update abc (name=web, replicas.new=3, replicas.old=2)"
        );
    }
}
