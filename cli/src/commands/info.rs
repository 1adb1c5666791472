//! `shoal info`: the daemon's version, the node's name and platform, and its swarm state.

use serde::Serialize;
use shoal_api::{
    DaemonHost, connect,
    v1::{InfoRequest, InfoResponse, LocalNodeState, daemon_client::DaemonClient},
};

use crate::{
    Failure,
    commands::rpc_failure,
    output::{Format, human_bytes},
};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Format the output: json (Docker's field names), or a Go template
    /// ({{.Swarm.LocalNodeState}})
    #[arg(short, long)]
    format: Option<Format>,
}

/// The daemon's answer to `Info`.
async fn fetch(host: &DaemonHost) -> Result<InfoResponse, Failure> {
    let mut client = DaemonClient::new(connect(host).await?);
    Ok(client
        .info(InfoRequest {})
        .await
        .map_err(|status| rpc_failure(host, &status))?
        .into_inner())
}

pub(crate) async fn run(host: &DaemonHost, args: Args) -> Result<(), Failure> {
    let info = fetch(host).await?;
    match &args.format {
        Some(Format::Json) => println!("{}", serde_json::to_string(&Info::from(&info))?),
        Some(template) => crate::output::print_objects(Some(template), &[Info::from(&info)])?,
        None => print!("{}", render(&info)),
    }
    Ok(())
}

/// What the local daemon knows of its swarm membership.
pub(crate) async fn local(host: &DaemonHost) -> Result<shoal_api::swarm::LocalSwarm, Failure> {
    Ok(local_swarm(&fetch(host).await?))
}

/// Docker's `Swarm.LocalNodeState` words.
fn swarm_state(info: &InfoResponse) -> &'static str {
    match info.local_node_state() {
        LocalNodeState::Inactive => "inactive",
        LocalNodeState::Pending => "pending",
        LocalNodeState::Active => "active",
        LocalNodeState::Error => "error",
        LocalNodeState::Locked => "locked",
    }
}

/// The swarm part of the answer (inactive when the daemon sent none).
fn local_swarm(info: &InfoResponse) -> shoal_api::swarm::LocalSwarm {
    serde_json::from_str(&info.swarm_json).unwrap_or_default()
}

fn swarm_lines(info: &InfoResponse) -> String {
    let swarm = local_swarm(info);
    if swarm.state != "active" {
        return String::new();
    }
    let mut lines = format!(
        "  NodeID: {}\n  Is Manager: {}\n",
        swarm.node_id, swarm.is_manager
    );
    if swarm.is_manager {
        lines += &format!(
            "  ClusterID: {}\n  Managers: {}\n  Nodes: {}\n",
            swarm.cluster_id,
            swarm.manager_count.map_or("?".into(), |n| n.to_string()),
            swarm.node_count.map_or("?".into(), |n| n.to_string()),
        );
    }
    lines += &format!("  Node Address: {}\n", swarm.node_addr);
    if !swarm.is_manager {
        lines += &format!(
            "  Manager Addresses:\n{}",
            swarm
                .managers
                .iter()
                .map(|m| format!("   {m}\n"))
                .collect::<String>()
        );
    }
    lines
}

fn render(info: &InfoResponse) -> String {
    format!(
        "Client:\n \
         Version:    {client}\n\
         \n\
         Server:\n \
         Server Version: {server}\n \
         Swarm: {swarm}\n{swarm_lines} \
         Kernel Version: {kernel}\n \
         Operating System: {os}\n \
         OSType: linux\n \
         Architecture: {arch}\n \
         CPUs: {cpus}\n \
         Total Memory: {memory}\n \
         Name: {name}\n \
         Shoal Root Dir: {root}\n",
        client = env!("CARGO_PKG_VERSION"),
        server = info.server_version,
        swarm = swarm_state(info),
        swarm_lines = swarm_lines(info),
        kernel = info.kernel_version,
        os = info.operating_system,
        arch = info.architecture,
        cpus = info.ncpu,
        memory = human_bytes(info.mem_total),
        name = info.name,
        root = info.data_root,
    )
}

/// `shoal info --format json`, keyed as Docker's `docker info --format '{{json .}}'`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Info<'a> {
    server_version: &'a str,
    name: &'a str,
    swarm: Swarm,
    kernel_version: &'a str,
    operating_system: &'a str,
    #[serde(rename = "OSType")]
    os_type: &'static str,
    architecture: &'a str,
    #[serde(rename = "NCPU")]
    ncpu: u32,
    mem_total: u64,
    shoal_root_dir: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Swarm {
    local_node_state: &'static str,
    #[serde(rename = "NodeID")]
    node_id: String,
    node_addr: String,
    control_available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    managers: Option<usize>,
    #[serde(rename = "ClusterID")]
    cluster_id: String,
    /// The index of this manager's replica of the store (how far it has caught up).
    #[serde(skip_serializing_if = "Option::is_none")]
    store_index: Option<u64>,
}

impl<'a> From<&'a InfoResponse> for Info<'a> {
    fn from(info: &'a InfoResponse) -> Self {
        Self {
            server_version: &info.server_version,
            name: &info.name,
            swarm: {
                let swarm = local_swarm(info);
                Swarm {
                    local_node_state: swarm_state(info),
                    node_id: swarm.node_id,
                    node_addr: swarm.node_addr,
                    control_available: swarm.is_manager,
                    nodes: swarm.node_count,
                    managers: swarm.manager_count,
                    cluster_id: swarm.cluster_id,
                    store_index: swarm.store_index,
                }
            },
            kernel_version: &info.kernel_version,
            operating_system: &info.operating_system,
            os_type: "linux",
            architecture: &info.architecture,
            ncpu: info.ncpu,
            mem_total: info.mem_total,
            shoal_root_dir: &info.data_root,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InfoResponse {
        InfoResponse {
            server_version: "0.1.0".into(),
            name: "node1".into(),
            local_node_state: LocalNodeState::Inactive.into(),
            data_root: "/var/lib/shoal".into(),
            kernel_version: "6.18.0".into(),
            operating_system: "Debian GNU/Linux 12 (bookworm)".into(),
            architecture: "x86_64".into(),
            ncpu: 2,
            mem_total: 25_198_723_072,
            swarm_json: String::new(),
        }
    }

    #[test]
    fn text_reads_like_docker_info() {
        let text = render(&sample());
        for line in [
            "Server:",
            " Server Version: 0.1.0",
            " Swarm: inactive",
            " Name: node1",
            " Total Memory: 23.47GiB",
            " CPUs: 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn json_uses_dockers_keys() {
        let info = sample();
        let json: serde_json::Value = serde_json::to_value(Info::from(&info)).unwrap();
        assert_eq!(json["Swarm"]["LocalNodeState"], "inactive");
        assert_eq!(json["Name"], "node1");
        assert_eq!(json["NCPU"], 2);
        assert_eq!(json["ServerVersion"], "0.1.0");
    }
}
