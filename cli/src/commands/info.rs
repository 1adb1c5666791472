//! `shoal info`: the daemon's version, the node's name and platform, and its swarm state.

use serde::{Deserialize, Serialize};
use shoal_api::DaemonHost;

use crate::{
    Failure,
    output::{Format, human_bytes},
};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Format the output: json (Docker's field names), or a Go template
    /// ({{.Swarm.LocalNodeState}})
    #[arg(short, long)]
    format: Option<Format>,
}

/// What `GET /info` answers that `shoal info` shows (Docker's `SystemInfo`, and Shoal's
/// `Swarm.StoreIndex`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InfoResponse {
    server_version: String,
    name: String,
    kernel_version: String,
    operating_system: String,
    architecture: String,
    #[serde(rename = "NCPU")]
    ncpu: u32,
    mem_total: u64,
    docker_root_dir: String,
    swarm: SwarmInfo,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct SwarmInfo {
    local_node_state: String,
    #[serde(rename = "NodeID")]
    node_id: String,
    node_addr: String,
    control_available: bool,
    remote_managers: Option<Vec<RemoteManager>>,
    nodes: Option<usize>,
    managers: Option<usize>,
    cluster: Option<ClusterInfo>,
    store_index: Option<u64>,
    raft_term: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RemoteManager {
    addr: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct ClusterInfo {
    #[serde(rename = "ID")]
    id: String,
}

/// The daemon's answer to `GET /info`.
async fn fetch(host: &DaemonHost) -> Result<InfoResponse, Failure> {
    let answer = crate::api::client(host).get("/info").await?;
    serde_json::from_value(answer).map_err(|e| Failure(format!("reading /info: {e}")))
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
fn swarm_state(info: &InfoResponse) -> &str {
    match info.swarm.local_node_state.as_str() {
        "" => "inactive",
        state => state,
    }
}

/// The swarm part of the answer.
fn local_swarm(info: &InfoResponse) -> shoal_api::swarm::LocalSwarm {
    let swarm = &info.swarm;
    shoal_api::swarm::LocalSwarm {
        state: swarm_state(info).to_owned(),
        node_id: swarm.node_id.clone(),
        cluster_id: swarm
            .cluster
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default(),
        is_manager: swarm.control_available,
        managers: swarm
            .remote_managers
            .iter()
            .flatten()
            .map(|m| m.addr.clone())
            .collect(),
        manager_count: swarm.managers,
        node_count: swarm.nodes,
        node_addr: swarm.node_addr.clone(),
        store_index: swarm.store_index,
        raft_term: swarm.raft_term,
    }
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
        root = info.docker_root_dir,
    )
}

/// `shoal info --format json`, keyed as Docker's `docker info --format '{{json .}}'`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Info<'a> {
    server_version: &'a str,
    name: &'a str,
    swarm: Swarm<'a>,
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
struct Swarm<'a> {
    local_node_state: &'a str,
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
    /// The raft term this manager is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    raft_term: Option<u64>,
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
                    raft_term: swarm.raft_term,
                }
            },
            kernel_version: &info.kernel_version,
            operating_system: &info.operating_system,
            os_type: "linux",
            architecture: &info.architecture,
            ncpu: info.ncpu,
            mem_total: info.mem_total,
            shoal_root_dir: &info.docker_root_dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InfoResponse {
        serde_json::from_value(serde_json::json!({
            "ServerVersion": "0.1.0",
            "Name": "node1",
            "DockerRootDir": "/var/lib/shoal",
            "KernelVersion": "6.18.0",
            "OperatingSystem": "Debian GNU/Linux 12 (bookworm)",
            "Architecture": "x86_64",
            "NCPU": 2,
            "MemTotal": 25_198_723_072_u64,
            "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "RemoteManagers": null}
        }))
        .unwrap()
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
