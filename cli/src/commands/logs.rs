//! `shoal service logs SERVICE|TASK`: the lines of a service's tasks (or of one task), from the
//! nodes that ran them, prefixed as Docker prefixes them: `web.1.x7x2q3h4k0sd@n3    | ...`.

use shoal_api::call::{ClusterCall, ServiceCall};
use std::collections::HashMap;
use std::io::Write;

use http_body_util::BodyExt as _;
use shoal_api::logs::{LogLine, Stream};
use shoal_api::service::{Task, TaskFilter};
use shoal_api::{DaemonHost, escape};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::text::{go_duration, truncate_id};
use crate::Failure;

/// `service logs`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    follow: bool,
    /// Number of lines to show from the end of the logs of each task
    #[arg(short = 'n', long, default_value = "all", value_parser = tail)]
    tail: Tail,
    /// Show logs since timestamp (2013-01-02T13:23:37Z) or relative (42m for 42 minutes)
    #[arg(long, value_parser = since)]
    since: Option<String>,
    /// Show timestamps
    #[arg(short, long)]
    timestamps: bool,
    /// Do not include task IDs in output
    #[arg(long)]
    no_task_ids: bool,
    /// Do not truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Do not neatly format logs
    #[arg(long)]
    raw: bool,
    /// The service (name, ID or ID prefix) or task (ID or ID prefix)
    target: String,
}

/// `--tail`: a number of lines, or all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tail(Option<u64>);

fn tail(text: &str) -> Result<Tail, String> {
    if text == "all" {
        return Ok(Tail(None));
    }
    text.parse()
        .map(|n| Tail(Some(n)))
        .map_err(|_| format!("invalid tail {text:?}: want a number of lines or \"all\""))
}

/// `--since`: an RFC 3339 time, Unix seconds (`1700000000.5`), or a duration back from now;
/// as RFC 3339.
pub(crate) fn since(text: &str) -> Result<String, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t.format(&Rfc3339).unwrap_or_default());
    }
    let at = if let Some(nanos) = shoal_api::unix_nanos(text) {
        OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|e| e.to_string())
    } else {
        go_duration(text).map(|ns| {
            OffsetDateTime::now_utc() - time::Duration::nanoseconds(ns.min(i64::MAX as u64) as i64)
        })
    };
    at.map_err(|_| {
        format!(
            "invalid since {text:?}: want a time (2013-01-02T13:23:37Z), Unix seconds, or a duration back from now (42m)"
        )
    })
    .and_then(|t| t.format(&Rfc3339).map_err(|e| e.to_string()))
}

/// How each line is introduced.
struct Prefixes {
    by_task: HashMap<String, String>,
    width: usize,
}

impl Prefixes {
    fn new(tasks: &[Task], nodes: &HashMap<String, String>, args: &LogsArgs) -> Self {
        let by_task: HashMap<String, String> = tasks
            .iter()
            .map(|t| {
                let node = nodes.get(&t.node_id).cloned().unwrap_or(t.node_id.clone());
                let id = if args.no_trunc {
                    t.id.clone()
                } else {
                    truncate_id(&t.id)
                };
                let name = if args.no_task_ids {
                    t.name()
                } else {
                    format!("{}.{id}", t.name())
                };
                (t.id.clone(), format!("{name}@{node}"))
            })
            .collect();
        let width = by_task
            .values()
            .map(|p| p.chars().count())
            .max()
            .unwrap_or(0);
        Self { by_task, width }
    }

    fn line(&self, line: &LogLine, args: &LogsArgs) -> String {
        let stamp = if args.timestamps {
            format!("{} ", line.time)
        } else {
            String::new()
        };
        if args.raw {
            return format!("{stamp}{}\n", line.text);
        }
        let prefix = self
            .by_task
            .get(&line.task_id)
            .cloned()
            .unwrap_or_else(|| truncate_id(&line.task_id));
        format!(
            "{prefix:<width$}    | {stamp}{}\n",
            line.text,
            width = self.width
        )
    }
}

/// One frame of Docker's multiplexed log stream, as requested by [`run`]: its stream, and its
/// line's time, task and text (or a warning).
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Line(LogLine),
    Warning(String),
}

/// Reads a frame's payload: `TIME DETAILS TEXT` (the request asks for timestamps and details),
/// or Shoal's `shoal.warning=1 TEXT`.
fn parse_frame(kind: u8, payload: &[u8]) -> Frame {
    let text = String::from_utf8_lossy(payload);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if let Some(warning) = text.strip_prefix("shoal.warning=1 ") {
        return Frame::Warning(warning.to_owned());
    }
    let (time, rest) = text.split_once(' ').unwrap_or(("", text));
    let (details, line) = rest.split_once(' ').unwrap_or((rest, ""));
    let task_id = details
        .split(',')
        .find_map(|d| d.strip_prefix("com.docker.swarm.task.id="))
        .unwrap_or_default();
    Frame::Line(LogLine {
        task_id: task_id.to_owned(),
        time: time.to_owned(),
        stream: if kind == 2 {
            Stream::Stderr
        } else {
            Stream::Stdout
        },
        text: line.to_owned(),
    })
}

/// Docker's `since=` / `until=`: seconds since the epoch, from RFC 3339.
pub(crate) fn unix_seconds(rfc3339: &str) -> Result<String, Failure> {
    let at = OffsetDateTime::parse(rfc3339, &Rfc3339)
        .map_err(|e| Failure(format!("invalid time {rfc3339:?}: {e}")))?;
    Ok(format!("{}.{:09}", at.unix_timestamp(), at.nanosecond()))
}

/// Runs `service logs`: `GET /services/{target}/logs` (the daemon takes a task there too).
pub(crate) async fn run(host: &DaemonHost, args: LogsArgs) -> Result<(), Failure> {
    let tasks: Vec<Task> = serde_json::from_value(
        super::swarm::call(host, ServiceCall::Tasks(TaskFilter::default())).await?,
    )?;
    let nodes: Vec<shoal_api::swarm::Node> =
        serde_json::from_value(super::swarm::call(host, ClusterCall::NodeList).await?)?;
    let nodes: HashMap<String, String> = nodes
        .into_iter()
        .map(|n| (n.id, n.description.hostname))
        .collect();
    let prefixes = Prefixes::new(&tasks, &nodes, &args);
    let mut path = format!(
        "/services/{}/logs?stdout=1&stderr=1&timestamps=1&details=1&warnings=1&follow={}",
        escape(&args.target),
        u8::from(args.follow)
    );
    if let Some(n) = args.tail.0 {
        path.push_str(&format!("&tail={n}"));
    }
    if let Some(since) = &args.since {
        path.push_str(&format!("&since={}", unix_seconds(since)?));
    }
    let mut body = crate::api::client(host).stream(&path).await?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = body.frame().await {
        let chunk = chunk.map_err(|e| Failure(format!("reading the logs: {e}")))?;
        let Ok(data) = chunk.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        // Whole frames: an 8-byte header (stream, 0, 0, 0, length big-endian), then the line.
        let mut at = 0;
        while pending.len() - at >= 8 {
            let len = u32::from_be_bytes([
                pending[at + 4],
                pending[at + 5],
                pending[at + 6],
                pending[at + 7],
            ]) as usize;
            if pending.len() - at - 8 < len {
                break;
            }
            let frame = parse_frame(pending[at], &pending[at + 8..at + 8 + len]);
            at += 8 + len;
            let written = match frame {
                Frame::Warning(warning) => writeln!(err, "warning: {warning}"),
                Frame::Line(line) => {
                    let text = prefixes.line(&line, &args);
                    // A closed pipe (`| head`) ends the command quietly.
                    match line.stream {
                        Stream::Stdout => out.write_all(text.as_bytes()),
                        Stream::Stderr => err.write_all(text.as_bytes()),
                    }
                }
            };
            if written.is_err() {
                return Ok(());
            }
        }
        pending.drain(..at);
        let _ = out.flush();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> LogsArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LogsArgs,
        }
        let mut argv = vec!["shoal"];
        argv.extend_from_slice(flags);
        argv.push("web");
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn lines_are_prefixed_as_docker_prefixes_them() {
        let tasks = [
            Task {
                id: "abcdefghijklmnopqrstuvwxy".into(),
                service_name: "web".into(),
                slot: 1,
                node_id: "n1id".into(),
                ..Default::default()
            },
            Task {
                id: "zyxwvutsrqponmlkjihgfedcb".into(),
                service_name: "web".into(),
                slot: 10,
                node_id: "n3id".into(),
                ..Default::default()
            },
        ];
        let nodes = HashMap::from([
            ("n1id".to_owned(), "n1".to_owned()),
            ("n3id".to_owned(), "n3".to_owned()),
        ]);
        let line = LogLine {
            task_id: tasks[0].id.clone(),
            time: "2026-11-30T12:00:00.5Z".into(),
            stream: Stream::Stdout,
            text: "hello".into(),
        };
        let plain = args(&[]);
        let p = Prefixes::new(&tasks, &nodes, &plain);
        // Aligned on the longest prefix (slot 10).
        assert_eq!(p.line(&line, &plain), "web.1.abcdefghijkl@n1     | hello\n");
        let bare = args(&["--no-task-ids", "-t"]);
        let p = Prefixes::new(&tasks, &nodes, &bare);
        assert_eq!(
            p.line(&line, &bare),
            "web.1@n1     | 2026-11-30T12:00:00.5Z hello\n"
        );
        let raw = args(&["--raw"]);
        assert_eq!(
            Prefixes::new(&tasks, &nodes, &raw).line(&line, &raw),
            "hello\n"
        );
        let full = args(&["--no-trunc"]);
        let p = Prefixes::new(&tasks, &nodes, &full);
        assert!(
            p.line(&line, &full)
                .starts_with("web.1.abcdefghijklmnopqrstuvwxy@n1 ")
        );
    }

    #[test]
    fn tail_and_since_take_docker_s_forms() {
        assert!(tail("all").unwrap().0.is_none());
        assert_eq!(tail("5").unwrap().0, Some(5));
        assert!(tail("-1").unwrap_err().contains("want a number"));
        assert_eq!(
            since("2013-01-02T13:23:37Z").unwrap(),
            "2013-01-02T13:23:37Z"
        );
        assert_eq!(since("0").unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(since("1700000000.5").unwrap(), "2023-11-14T22:13:20.5Z");
        let back = OffsetDateTime::parse(&since("42m").unwrap(), &Rfc3339).unwrap();
        let minutes = (OffsetDateTime::now_utc() - back).whole_minutes();
        assert!((41..=42).contains(&minutes), "{minutes}");
        assert!(since("yesterday").unwrap_err().contains("invalid since"));
    }

    #[test]
    fn frames_read_as_the_daemon_writes_them() {
        let line = parse_frame(
            1,
            b"2026-11-30T12:00:00.5Z com.docker.swarm.node.id=n1,com.docker.swarm.service.id=s1,com.docker.swarm.task.id=t1 hello world\n",
        );
        assert_eq!(
            line,
            Frame::Line(LogLine {
                task_id: "t1".into(),
                time: "2026-11-30T12:00:00.5Z".into(),
                stream: Stream::Stdout,
                text: "hello world".into(),
            })
        );
        assert_eq!(
            parse_frame(2, b"shoal.warning=1 node n3 is down\n"),
            Frame::Warning("node n3 is down".into())
        );
        assert_eq!(
            unix_seconds("2013-01-02T13:23:37Z").unwrap(),
            "1357133017.000000000"
        );
    }
}
