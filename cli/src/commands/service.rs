//! `shoal service create|ls|ps|inspect|scale|rm`, and the task table `node ps` shares.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::Duration;

use serde::Serialize;
use shoal_api::{
    DaemonHost,
    service::{
        ClientIp, ContainerSpec, EndpointMode, EndpointSpec, Global, NetworkAttachmentConfig,
        Placement, PortConfig, PortProtocol, PublishMode, Replicated, Service, ServiceMode,
        ServiceSpec, Task, TaskFilter, TaskSpec, TaskState,
    },
    swarm::{Call, Node},
};

use crate::{Failure, commands::swarm::call, output::Format};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a new service
    Create(Box<CreateArgs>),
    /// List services
    #[command(alias = "list")]
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Print one JSON object per service (Docker's column names)
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// List the tasks of one or more services
    Ps {
        /// Only display task IDs
        #[arg(short, long)]
        quiet: bool,
        /// Print one JSON object per task (Docker's column names)
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// The services (name, ID or ID prefix)
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Display detailed information on one or more services
    Inspect {
        /// The services (name, ID or ID prefix)
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Scale one or multiple replicated services
    Scale {
        /// Exit immediately instead of waiting for the services to converge
        #[arg(short, long)]
        detach: bool,
        /// SERVICE=REPLICAS
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        scales: Vec<String>,
    },
    /// Remove one or more services
    #[command(alias = "remove")]
    Rm {
        /// The services
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// `service create`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// Service name
    #[arg(long)]
    name: Option<String>,
    /// Number of tasks
    #[arg(long)]
    replicas: Option<u64>,
    /// Service mode ("replicated" or "global")
    #[arg(long, value_parser = ["replicated", "global"], default_value = "replicated")]
    mode: String,
    /// Publish a port as a node port: 8080:80[/udp] or published=8080,target=80[,mode=host][,protocol=udp][,client-ip=preserve]
    #[arg(short, long, value_name = "PORT")]
    publish: Vec<String>,
    /// Network attachments: NETWORK, or name=NETWORK[,alias=ALIAS]...
    #[arg(long)]
    network: Vec<String>,
    /// Placement constraints (node.role==manager, node.labels.zone!=a, ...)
    #[arg(long)]
    constraint: Vec<String>,
    /// Set environment variables (KEY=VALUE)
    #[arg(short, long)]
    env: Vec<String>,
    /// Endpoint mode ("vip" or "dnsrr")
    #[arg(long, value_parser = ["vip", "dnsrr"], default_value = "vip")]
    endpoint_mode: String,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    quiet: bool,
    /// The image (recorded by the exec executor, run by the docker executor)
    image: String,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Parses `--publish` in either of Docker's syntaxes.
pub(crate) fn parse_publish(value: &str) -> Result<PortConfig, String> {
    let bad = |why: &str| format!("invalid publish {value:?}: {why}");
    let port = |s: &str, what: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(&format!(
                "the {what} port must be a number from 1 to 65535, not {s:?}"
            ))),
        }
    };
    let protocol = |s: &str| match s {
        "tcp" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        other => Err(bad(&format!("protocol must be tcp or udp, not {other:?}"))),
    };
    if value.contains('=') {
        let mut config = PortConfig::default();
        let mut target = None;
        for field in value.split(',') {
            let (key, v) = field
                .split_once('=')
                .ok_or_else(|| bad(&format!("{field:?} is not KEY=VALUE")))?;
            match key.trim() {
                "published" => config.published_port = port(v, "published")?,
                "target" => target = Some(port(v, "target")?),
                "protocol" => config.protocol = protocol(v)?,
                "mode" => {
                    config.publish_mode = match v {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        other => {
                            return Err(bad(&format!(
                                "mode must be ingress or host, not {other:?}"
                            )));
                        }
                    }
                }
                // Shoal's own: whether the tasks see the client's address.
                "client-ip" => config.client_ip = Some(ClientIp::parse(v).map_err(|e| bad(&e))?),
                other => {
                    return Err(bad(&format!(
                        "unknown key {other:?} (want published, target, protocol, mode, client-ip)"
                    )));
                }
            }
        }
        config.target_port = target.ok_or_else(|| bad("missing target"))?;
        if config.publish_mode == PublishMode::Host && config.client_ip == Some(ClientIp::Snat) {
            return Err(bad(
                "client-ip=snat does not apply to mode=host, which always keeps the client's address",
            ));
        }
        return Ok(config);
    }
    let (ports, proto) = match value.split_once('/') {
        Some((ports, proto)) => (ports, protocol(proto)?),
        None => (value, PortProtocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts[..] {
        [target] => (0, port(target, "target")?),
        [published, target] => (port(published, "published")?, port(target, "target")?),
        _ => {
            return Err(bad(
                "want [PUBLISHED:]TARGET[/PROTOCOL] (a host IP cannot be given in swarm mode)",
            ));
        }
    };
    Ok(PortConfig {
        protocol: proto,
        target_port: target,
        published_port: published,
        publish_mode: PublishMode::Ingress,
        client_ip: None,
    })
}

/// Parses `--network`: a network's name or ID, or Docker's long syntax
/// `name=NETWORK[,alias=ALIAS]...`.
pub(crate) fn parse_network(value: &str) -> Result<NetworkAttachmentConfig, String> {
    let bad = |why: &str| format!("invalid network {value:?}: {why}");
    if !value.contains('=') {
        if value.is_empty() || value.contains(',') {
            return Err(bad("want NETWORK or name=NETWORK[,alias=ALIAS]"));
        }
        return Ok(NetworkAttachmentConfig {
            target: value.to_owned(),
            aliases: Vec::new(),
        });
    }
    let mut config = NetworkAttachmentConfig::default();
    for field in value.split(',') {
        let (key, v) = field
            .split_once('=')
            .ok_or_else(|| bad(&format!("{field:?} is not KEY=VALUE")))?;
        if v.is_empty() {
            return Err(bad(&format!("{key} needs a value")));
        }
        match key.trim() {
            "name" | "target" => config.target = v.to_owned(),
            "alias" => config.aliases.push(v.to_owned()),
            other => {
                return Err(bad(&format!("unknown key {other:?} (want name, alias)")));
            }
        }
    }
    if config.target.is_empty() {
        return Err(bad("missing name"));
    }
    Ok(config)
}

/// `--env FOO` without `=`: the value of `FOO` in this command's own environment, as the docker
/// CLI does; left as `FOO` (absent in the task) when it has none.
fn env_from_client(entry: String) -> String {
    if entry.contains('=') {
        return entry;
    }
    match std::env::var(&entry) {
        Ok(value) => format!("{entry}={value}"),
        Err(_) => entry,
    }
}

fn spec(args: CreateArgs) -> Result<ServiceSpec, Failure> {
    let mode = if args.mode == "global" {
        if args.replicas.is_some() {
            return Err(Failure(
                "replicas can only be used with replicated mode".into(),
            ));
        }
        ServiceMode {
            replicated: None,
            global: Some(Global {}),
        }
    } else {
        ServiceMode {
            replicated: Some(Replicated {
                replicas: args.replicas.unwrap_or(1),
            }),
            global: None,
        }
    };
    let ports = args
        .publish
        .iter()
        .map(|p| parse_publish(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure)?;
    let (command, rest) = match args.command.split_first() {
        Some((c, rest)) => (vec![c.clone()], rest.to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    Ok(ServiceSpec {
        name: args.name.unwrap_or_default(),
        labels: BTreeMap::new(),
        task_template: TaskSpec {
            container_spec: ContainerSpec {
                image: args.image,
                command,
                args: rest,
                env: args.env.into_iter().map(env_from_client).collect(),
            },
            placement: Placement {
                constraints: args.constraint,
            },
            networks: args
                .network
                .iter()
                .map(|n| parse_network(n))
                .collect::<Result<_, _>>()
                .map_err(Failure)?,
        },
        mode,
        endpoint_spec: EndpointSpec {
            mode: if args.endpoint_mode == "dnsrr" {
                EndpointMode::Dnsrr
            } else {
                EndpointMode::Vip
            },
            ports,
        },
    })
}

async fn tasks(host: &DaemonHost, filter: TaskFilter) -> Result<Vec<Task>, Failure> {
    Ok(serde_json::from_value(
        call(host, &Call::TaskList(filter)).await?,
    )?)
}

async fn node_names(host: &DaemonHost) -> Result<HashMap<String, String>, Failure> {
    let nodes: Vec<Node> = serde_json::from_value(call(host, &Call::NodeList).await?)?;
    Ok(nodes
        .into_iter()
        .map(|n| (n.id, n.description.hostname))
        .collect())
}

fn title(state: TaskState) -> String {
    let name = state.name();
    name[..1].to_uppercase() + &name[1..]
}

/// One `ps --format json` line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TaskRow {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    image: String,
    node: String,
    desired_state: String,
    current_state: String,
    error: String,
    ports: String,
}

fn rows(tasks: &[Task], names: &HashMap<String, String>) -> Vec<TaskRow> {
    let mut previous: Option<(String, u64, String)> = None;
    tasks
        .iter()
        .map(|t| {
            let slot = (t.service_id.clone(), t.slot, t.node_id.clone());
            let history = previous.as_ref() == Some(&slot)
                || (t.slot > 0
                    && previous
                        .as_ref()
                        .is_some_and(|p| p.0 == slot.0 && p.1 == slot.1));
            previous = Some(slot);
            TaskRow {
                id: t.id.clone(),
                name: if history {
                    format!(" \\_ {}", t.name())
                } else {
                    t.name()
                },
                image: t.spec.container_spec.image.clone(),
                node: names.get(&t.node_id).cloned().unwrap_or_default(),
                desired_state: title(t.desired_state),
                current_state: format!(
                    "{} {}",
                    title(t.status.state),
                    crate::output::ago(&t.status.timestamp).to_lowercase()
                ),
                error: t.status.err.clone(),
                ports: t
                    .ports
                    .iter()
                    .filter(|p| p.publish_mode == PublishMode::Host)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })
        .collect()
}

/// Prints tasks as `service ps` and `node ps` do.
pub(crate) async fn print_tasks(
    host: &DaemonHost,
    filter: TaskFilter,
    quiet: bool,
    format: Option<Format>,
) -> Result<(), Failure> {
    let tasks = tasks(host, filter).await?;
    if quiet {
        for t in &tasks {
            println!("{}", t.id);
        }
        return Ok(());
    }
    let rows = rows(&tasks, &node_names(host).await?);
    if let Some(Format::Json) = format {
        return Ok(crate::output::json_lines(&rows)?);
    }
    let cells: Vec<[String; 8]> = rows
        .into_iter()
        .map(|r| {
            [
                r.id,
                r.name,
                r.image,
                r.node,
                r.desired_state,
                r.current_state,
                if r.error.is_empty() {
                    String::new()
                } else {
                    format!("\"{}\"", r.error)
                },
                r.ports,
            ]
        })
        .collect();
    print!(
        "{}",
        crate::output::table(
            [
                "ID",
                "NAME",
                "IMAGE",
                "NODE",
                "DESIRED STATE",
                "CURRENT STATE",
                "ERROR",
                "PORTS"
            ],
            &cells
        )
    );
    Ok(())
}

/// One `service ls --format json` line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceRow {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    mode: String,
    replicas: String,
    image: String,
    ports: String,
}

fn service_rows(services: &[Service], tasks: &[Task]) -> Vec<ServiceRow> {
    services
        .iter()
        .map(|s| {
            let live = |t: &&Task| t.service_id == s.id && t.desired_state == TaskState::Running;
            let running = tasks
                .iter()
                .filter(live)
                .filter(|t| t.status.state == TaskState::Running)
                .count();
            let (mode, desired) = match s.spec.replicas() {
                Some(n) => ("replicated", n as usize),
                None => ("global", tasks.iter().filter(live).count()),
            };
            ServiceRow {
                id: s.id.clone(),
                name: s.spec.name.clone(),
                mode: mode.into(),
                replicas: format!("{running}/{desired}"),
                image: s.spec.task_template.container_spec.image.clone(),
                ports: s
                    .endpoint
                    .ports
                    .iter()
                    .filter(|p| p.publish_mode == PublishMode::Ingress)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })
        .collect()
}

/// Where a task state sits on Docker's progress bar.
fn progress(state: TaskState) -> usize {
    match state {
        TaskState::New => 1,
        TaskState::Pending => 2,
        TaskState::Assigned => 3,
        TaskState::Accepted => 4,
        TaskState::Preparing => 5,
        TaskState::Starting => 6,
        TaskState::Running => 7,
        _ => 0,
    }
}

fn bar(state: TaskState) -> String {
    let filled = progress(state) * 50 / 7;
    if filled >= 50 {
        format!("[{}>]", "=".repeat(50))
    } else if filled == 0 {
        format!("[{}]", " ".repeat(51))
    } else {
        format!("[{}>{}]", "=".repeat(filled), " ".repeat(50 - filled))
    }
}

/// Shows convergence until every slot (or node) of `service` has a running task, as
/// `docker service create` does.
async fn converge(host: &DaemonHost, service: &str) -> Result<(), Failure> {
    let tty = std::io::stdout().is_terminal();
    let mut shown_lines = 0;
    let mut last = String::new();
    loop {
        let found: Vec<Service> = serde_json::from_value(
            call(
                host,
                &Call::ServiceInspect {
                    ids: vec![service.to_owned()],
                },
            )
            .await?,
        )?;
        let Some(svc) = found.into_iter().next() else {
            return Err(Failure(format!("service {service} was removed")));
        };
        let all = tasks(
            host,
            TaskFilter {
                services: vec![svc.id.clone()],
                nodes: Vec::new(),
            },
        )
        .await?;
        // The newest task per slot (or node) that is meant to run, and the latest error seen.
        let mut slots: BTreeMap<(u64, String), &Task> = BTreeMap::new();
        for t in all.iter().filter(|t| t.desired_state == TaskState::Running) {
            let key = if t.slot > 0 {
                (t.slot, String::new())
            } else {
                (0, t.node_id.clone())
            };
            slots.entry(key).or_insert(t);
        }
        let desired = svc.spec.replicas().map_or(slots.len(), |n| n as usize);
        let running = slots
            .values()
            .filter(|t| t.status.state == TaskState::Running)
            .count();
        let mut text = format!("overall progress: {running} out of {desired} tasks\n");
        for (i, t) in slots.values().enumerate() {
            let label = if t.slot > 0 {
                format!("{}/{desired}", t.slot)
            } else {
                t.node_id[..t.node_id.len().min(12)].to_owned()
            };
            let detail = if t.status.err.is_empty() {
                bar(t.status.state)
            } else {
                t.status.err.clone()
            };
            text += &format!("{label}: {:<9} {detail}\n", t.status.state.name());
            if i >= 200 {
                break;
            }
        }
        let done = running == desired && slots.len() == desired;
        if tty {
            if shown_lines > 0 {
                print!("\x1b[{shown_lines}A\x1b[J");
            }
            print!("{text}");
            shown_lines = text.lines().count();
        } else if text != last && (done || text.lines().next() != last.lines().next()) {
            // Without a terminal: a line when the count moves, and the slots at the end.
            if done {
                print!("{text}");
            } else {
                println!("{}", text.lines().next().unwrap_or_default());
            }
        }
        last = text;
        if done {
            println!("verify: Service converged");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn run(host: &DaemonHost, command: Command) -> Result<(), Failure> {
    match command {
        Command::Create(args) => {
            let (detach, quiet) = (args.detach, args.quiet);
            let spec = spec(*args)?;
            let id: String = serde_json::from_value(call(host, &Call::ServiceCreate(spec)).await?)?;
            println!("{id}");
            if !detach && !quiet {
                converge(host, &id).await?;
            }
        }
        Command::Ls { quiet, format } => {
            let services: Vec<Service> =
                serde_json::from_value(call(host, &Call::ServiceList).await?)?;
            if quiet {
                for s in &services {
                    println!("{}", s.id);
                }
                return Ok(());
            }
            let rows = service_rows(&services, &tasks(host, TaskFilter::default()).await?);
            if let Some(Format::Json) = format {
                return Ok(crate::output::json_lines(&rows)?);
            }
            let cells: Vec<[String; 6]> = rows
                .into_iter()
                .map(|r| [r.id, r.name, r.mode, r.replicas, r.image, r.ports])
                .collect();
            print!(
                "{}",
                crate::output::table(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &cells)
            );
        }
        Command::Ps {
            quiet,
            format,
            services,
        } => {
            print_tasks(
                host,
                TaskFilter {
                    services,
                    nodes: Vec::new(),
                },
                quiet,
                format,
            )
            .await?;
        }
        Command::Inspect { services } => {
            let found: Vec<Service> =
                serde_json::from_value(call(host, &Call::ServiceInspect { ids: services }).await?)?;
            println!("{}", serde_json::to_string_pretty(&found)?);
        }
        Command::Scale { detach, scales } => {
            let mut parsed = Vec::new();
            for s in &scales {
                let (name, n) = s.split_once('=').ok_or_else(|| {
                    Failure(format!(
                        "invalid scale specifier {s:?}: expected SERVICE=REPLICAS"
                    ))
                })?;
                let n: u64 = n.parse().map_err(|_| {
                    Failure(format!(
                        "invalid replicas value {n:?} for service {name}: expected a number"
                    ))
                })?;
                parsed.push((name.to_owned(), n));
            }
            for (name, replicas) in parsed {
                call(
                    host,
                    &Call::ServiceScale {
                        id: name.clone(),
                        replicas,
                    },
                )
                .await?;
                println!("{name} scaled to {replicas}");
                if !detach {
                    converge(host, &name).await?;
                }
            }
        }
        Command::Rm { services } => {
            call(
                host,
                &Call::ServiceRemove {
                    ids: services.clone(),
                },
            )
            .await?;
            for s in services {
                println!("{s}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_entry_without_a_value_takes_the_cli_s_own_or_stays_absent() {
        assert_eq!(env_from_client("A=1".into()), "A=1");
        // PATH is set for any test run; this name is not.
        assert!(env_from_client("PATH".into()).starts_with("PATH="));
        assert_eq!(
            env_from_client("SHOAL_NO_SUCH_VARIABLE_42".into()),
            "SHOAL_NO_SUCH_VARIABLE_42"
        );
    }

    #[test]
    fn publish_takes_both_of_dockers_syntaxes() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!((p.published_port, p.target_port), (8080, 80));
        assert_eq!(p.protocol, PortProtocol::Tcp);
        assert_eq!(p.publish_mode, PublishMode::Ingress);
        let p = parse_publish("53:53/udp").unwrap();
        assert_eq!(p.protocol, PortProtocol::Udp);
        let p = parse_publish("80").unwrap();
        assert_eq!((p.published_port, p.target_port), (0, 80));
        let p = parse_publish("published=8080,target=80,mode=host,protocol=udp").unwrap();
        assert_eq!((p.published_port, p.target_port), (8080, 80));
        assert_eq!(p.publish_mode, PublishMode::Host);
        assert_eq!(p.protocol, PortProtocol::Udp);
        assert!(p.keeps_client_ip(), "mode=host keeps the client's address");
        assert!(!parse_publish("8080:80").unwrap().keeps_client_ip());
        let p = parse_publish("published=8080,target=80,client-ip=preserve").unwrap();
        assert_eq!(p.client_ip, Some(ClientIp::Preserve));
        assert!(p.keeps_client_ip());
    }

    #[test]
    fn bad_publish_says_what_is_wrong() {
        for (bad, says) in [
            ("8080:", "target port"),
            ("x:80", "published port"),
            ("8080:80/sctp", "tcp or udp"),
            ("1.2.3.4:8080:80", "host IP"),
            ("published=8080", "missing target"),
            ("published=8080,target=80,mode=bridge", "ingress or host"),
            ("published=8080,target=80,colour=red", "unknown key"),
            ("0:80", "1 to 65535"),
            ("published=8080,target=80,client-ip=yes", "snat or preserve"),
            (
                "published=8080,target=80,mode=host,client-ip=snat",
                "always keeps the client's address",
            ),
            ("70000:80", "1 to 65535"),
        ] {
            let e = parse_publish(bad).unwrap_err();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn network_takes_a_name_or_dockers_long_syntax() {
        assert_eq!(parse_network("front").unwrap().target, "front");
        let n = parse_network("name=front,alias=api,alias=web").unwrap();
        assert_eq!(n.target, "front");
        assert_eq!(n.aliases, ["api", "web"]);
        for (bad, says) in [
            ("alias=api", "missing name"),
            ("name=front,alias=", "alias needs a value"),
            ("name=front,driver-opt=x=y", "unknown key"),
            ("name=front,api", "is not KEY=VALUE"),
            ("", "want NETWORK"),
        ] {
            let e = parse_network(bad).unwrap_err();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn the_progress_bar_fills_up_to_running() {
        assert!(bar(TaskState::Running).starts_with(&format!("[{}>", "=".repeat(50))));
        assert_eq!(bar(TaskState::Failed).len(), 53);
        assert!(bar(TaskState::Assigned).contains('>'));
    }
}
