//! `shoal node ls|inspect|update|promote|demote|rm`.

use shoal_api::call::ClusterCall;
use std::collections::BTreeMap;

use serde::Serialize;
use shoal_api::{
    DaemonHost,
    swarm::{Availability, Node, NodeState, NodeUpdate, Role},
};

use crate::{Failure, commands::swarm::call, output::Format};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List nodes in the swarm
    #[command(alias = "list")]
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Format the output: json (one object per line), or a Go template
        /// ({{.ID}}, table {{.Name}}\t{{.ID}})
        #[arg(long)]
        format: Option<Format>,
    },
    /// Display detailed information on one or more nodes
    Inspect {
        /// Print the information in a human friendly format
        #[arg(long, conflicts_with = "format")]
        pretty: bool,
        /// Format the output: json, or a Go template ({{.ID}}, {{json .Spec}})
        #[arg(short, long)]
        format: Option<Format>,
        /// Nodes (ID, ID prefix, hostname, or "self")
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// List tasks running on one or more nodes, defaults to current node
    Ps {
        /// Only display task IDs
        #[arg(short, long)]
        quiet: bool,
        /// Format the output: json (one object per line), or a Go template
        /// ({{.ID}}, table {{.Name}}\t{{.ID}})
        #[arg(long)]
        format: Option<Format>,
        /// Filter output: desired-state=running|shutdown|accepted, id=, name=, node=
        #[arg(short, long, value_parser = crate::commands::service::parse_task_filter)]
        filter: Vec<crate::commands::service::TaskRowFilter>,
        /// Do not truncate output (task IDs, errors)
        #[arg(long)]
        no_trunc: bool,
        /// Nodes (ID, ID prefix, hostname, or "self")
        nodes: Vec<String>,
    },
    /// Update a node
    Update {
        /// Availability of the node ("active", "pause", "drain")
        #[arg(long)]
        availability: Option<Availability>,
        /// Add or update a node label (key=value)
        #[arg(long = "label-add", value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        /// Remove a node label if exists
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
        /// Role of the node ("worker", "manager")
        #[arg(long, value_parser = ["worker", "manager"])]
        role: Option<String>,
        /// The node
        node: String,
    },
    /// Promote one or more nodes to manager in the swarm
    Promote {
        /// The nodes
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Demote one or more nodes from manager in the swarm
    Demote {
        /// The nodes
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove one or more nodes from the swarm
    #[command(alias = "remove")]
    Rm {
        /// Force remove a node from the swarm
        #[arg(short, long)]
        force: bool,
        /// The nodes
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// Docker's words for the columns.
fn status(node: &Node) -> &'static str {
    match node.status.state {
        NodeState::Ready => "Ready",
        NodeState::Down => "Down",
        NodeState::Unknown => "Unknown",
    }
}

fn availability(node: &Node) -> &'static str {
    match node.spec.availability {
        Availability::Active => "Active",
        Availability::Pause => "Pause",
        Availability::Drain => "Drain",
    }
}

fn manager_status(node: &Node) -> &'static str {
    match &node.manager_status {
        None => "",
        Some(m) if m.leader => "Leader",
        Some(m) if m.reachability == "reachable" => "Reachable",
        Some(_) => "Unreachable",
    }
}

/// One `node ls --format json` line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    hostname: &'a str,
    status: &'static str,
    availability: &'static str,
    manager_status: &'static str,
    #[serde(rename = "Self")]
    is_self: bool,
}

fn table(nodes: &[Node], me: &str) -> String {
    let rows: Vec<[String; 5]> = nodes
        .iter()
        .map(|n| {
            [
                format!("{}{}", n.id, if n.id == me { " *" } else { "" }),
                n.description.hostname.clone(),
                status(n).into(),
                availability(n).into(),
                manager_status(n).into(),
            ]
        })
        .collect();
    crate::output::table(
        ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"],
        &rows,
    )
}

fn pretty(node: &Node) -> String {
    let mut out = format!(
        "ID:\t\t\t{}\nHostname:\t\t{}\nJoined at:\t\t{}\nStatus:\n State:\t\t\t{}\n Availability:\t\t{}\n Address:\t\t{}\n",
        node.id,
        node.description.hostname,
        node.created_at,
        status(node),
        availability(node),
        node.status.addr
    );
    if let Some(m) = &node.manager_status {
        out += &format!(
            "Manager Status:\n Address:\t\t{}\n Raft Status:\t\t{}\n Leader:\t\t{}\n",
            m.addr,
            if m.reachability == "reachable" {
                "Reachable"
            } else {
                "Unreachable"
            },
            if m.leader { "Yes" } else { "No" }
        );
    }
    out += &format!(
        "Data Path Address:\t{}:{}\nPlatform:\n Operating System:\t{}\n Architecture:\t\t{}\nResources:\n CPUs:\t\t\t{}\n Memory:\t\t{}\n",
        node.description.data_path_addr,
        node.description.data_path_port,
        node.description.platform.os,
        node.description.platform.architecture,
        node.description.resources.nano_cpus / 1_000_000_000,
        crate::output::human_bytes(node.description.resources.memory_bytes)
    );
    let tls = &node.description.tls_info;
    if !tls.cert_expiry.is_empty() {
        // Docker prints the trust root in full; its digest says which root it is.
        let roots = tls.trust_root.matches("BEGIN CERTIFICATE").count();
        out += &format!(
            "TLS Info:\n Certificate Expiry:\t{}\n Trusted Roots:\t\t{roots}\n",
            tls.cert_expiry
        );
    }
    if !node.spec.labels.is_empty() {
        out += "Labels:\n";
        for (k, v) in &node.spec.labels {
            out += &format!(" - {k}={v}\n");
        }
    }
    out
}

fn labels(values: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    values
        .iter()
        .map(|v| {
            let (k, v) = v.split_once('=').unwrap_or((v.as_str(), ""));
            if k.is_empty() {
                return Err(Failure(format!(
                    "invalid label {v:?}: a label needs a key (key=value)"
                )));
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

async fn update(host: &DaemonHost, id: String, update: NodeUpdate) -> Result<(), Failure> {
    call(host, ClusterCall::NodeUpdate { id, update })
        .await
        .map(drop)
}

/// `node ls`: the nodes as IDs, rows in `format`, or Docker's table (this node starred).
async fn list(host: &DaemonHost, quiet: bool, format: Option<&Format>) -> Result<(), Failure> {
    let nodes: Vec<Node> = serde_json::from_value(call(host, ClusterCall::NodeList).await?)?;
    let me = crate::commands::info::local(host).await?.node_id;
    if quiet {
        for node in &nodes {
            println!("{}", node.id);
        }
    } else if format.is_some() {
        let rows: Vec<Row<'_>> = nodes
            .iter()
            .map(|node| Row {
                id: &node.id,
                hostname: &node.description.hostname,
                status: status(node),
                availability: availability(node),
                manager_status: manager_status(node),
                is_self: node.id == me,
            })
            .collect();
        crate::output::print_rows(format, &rows)?;
    } else {
        print!("{}", table(&nodes, &me));
    }
    Ok(())
}

/// `node inspect`: the nodes in `format`, or in a human friendly one with `human`.
async fn inspect(
    host: &DaemonHost,
    nodes: Vec<String>,
    human: bool,
    format: Option<&Format>,
) -> Result<(), Failure> {
    let found: Vec<Node> =
        serde_json::from_value(call(host, ClusterCall::NodeInspect { ids: nodes }).await?)?;
    if human {
        let all: Vec<String> = found.iter().map(pretty).collect();
        print!("{}", all.join("\n"));
    } else {
        crate::output::print_objects(format, &found)?;
    }
    Ok(())
}

pub(crate) async fn run(host: &DaemonHost, command: Command) -> Result<(), Failure> {
    match command {
        Command::Ls { quiet, format } => list(host, quiet, format.as_ref()).await?,
        Command::Inspect {
            pretty: human,
            format,
            nodes,
        } => inspect(host, nodes, human, format.as_ref()).await?,
        Command::Ps {
            quiet,
            format,
            filter,
            no_trunc,
            mut nodes,
        } => {
            if nodes.is_empty() {
                nodes.push("self".into());
            }
            crate::commands::service::print_tasks(
                host,
                shoal_api::service::TaskFilter {
                    services: Vec::new(),
                    nodes,
                },
                &filter,
                crate::commands::service::Listing {
                    quiet,
                    format,
                    no_trunc,
                },
            )
            .await?;
        }
        Command::Update {
            availability,
            label_add,
            label_rm,
            role,
            node,
        } => {
            let role = role.map(|r| {
                if r == "manager" {
                    Role::Manager
                } else {
                    Role::Worker
                }
            });
            update(
                host,
                node.clone(),
                NodeUpdate {
                    availability,
                    role,
                    label_add: labels(&label_add)?,
                    label_rm,
                    version: None,
                },
            )
            .await?;
            println!("{node}");
        }
        Command::Promote { nodes } => {
            for node in nodes {
                update(
                    host,
                    node.clone(),
                    NodeUpdate {
                        role: Some(Role::Manager),
                        ..Default::default()
                    },
                )
                .await?;
                println!("Node {node} promoted to a manager in the swarm.");
            }
        }
        Command::Demote { nodes } => {
            for node in nodes {
                update(
                    host,
                    node.clone(),
                    NodeUpdate {
                        role: Some(Role::Worker),
                        ..Default::default()
                    },
                )
                .await?;
                println!("Manager {node} demoted in the swarm.");
            }
        }
        Command::Rm { force, nodes } => {
            call(
                host,
                ClusterCall::NodeRemove {
                    ids: nodes.clone(),
                    force,
                },
            )
            .await?;
            for node in nodes {
                println!("{node}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use shoal_api::swarm::ManagerStatus;

    use super::*;

    #[test]
    fn node_ls_reads_like_docker() {
        let mut a = Node {
            id: "abc".into(),
            ..Default::default()
        };
        a.description.hostname = "n1".into();
        a.status.state = NodeState::Ready;
        a.manager_status = Some(ManagerStatus {
            leader: true,
            reachability: "reachable".into(),
            ..Default::default()
        });
        let mut b = Node {
            id: "def".into(),
            ..Default::default()
        };
        b.description.hostname = "n2".into();
        b.status.state = NodeState::Down;
        b.spec.availability = Availability::Drain;
        let out = table(&[a, b], "abc");
        assert_eq!(
            out,
            "ID      HOSTNAME   STATUS   AVAILABILITY   MANAGER STATUS\n\
             abc *   n1         Ready    Active         Leader\n\
             def     n2         Down     Drain\n"
        );
    }
}
