//! `cargo xtask lab up|down|status` and `cargo xtask demo`: the tests' lab (`shoal_tests::Lab`),
//! kept up for people to use.

use std::process::Output;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use shoal_tests::{Lab, LabSpec, labs};

use crate::{
    process::{cargo, is_root, run as run_command},
    setup,
};

#[derive(Debug, Subcommand)]
pub(crate) enum LabCommand {
    /// Bring a lab up and keep it until `lab down`
    Up {
        /// Number of nodes
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Start shoald in every node
        #[arg(long)]
        daemons: bool,
    },
    /// Remove a lab (by prefix, e.g. shoal42, or ID), or all of them
    Down {
        /// The lab's prefix or ID
        #[arg(required_unless_present = "all")]
        lab: Option<String>,
        /// Remove every lab, and every namespace named like one
        #[arg(long, conflicts_with = "lab")]
        all: bool,
    },
    /// Show the labs on this machine
    Status,
}

pub(crate) fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Up { nodes, daemons } => {
            require_root()?;
            if daemons {
                build_binaries()?;
            }
            let lab = persistent_lab(nodes, "lab", daemons, &["--executor", "exec"])?;
            print!("{}", status_of(&lab));
            println!("remove it with: cargo xtask lab down {}", lab.prefix());
            Ok(())
        }
        LabCommand::Down { lab, all } => {
            require_root()?;
            if all {
                let removed = shoal_tests::down_all()?;
                println!(
                    "removed {}",
                    if removed.is_empty() {
                        "nothing".to_string()
                    } else {
                        removed.join(", ")
                    }
                );
            } else {
                let lab = lab.expect("clap requires it");
                println!("removed {}", shoal_tests::down(&lab)?);
            }
            Ok(())
        }
        LabCommand::Status => {
            let labs = labs();
            if labs.is_empty() {
                println!("no labs");
            }
            for lab in labs {
                print!("{lab}");
            }
            Ok(())
        }
    }
}

/// The main job: a lab with `shoald` in every node, `shoal info` run in each, a swarm of them,
/// overlays and the routing mesh.
pub(crate) fn demo(down: bool, nodes: usize) -> anyhow::Result<()> {
    require_root()?;
    remove_demo_labs()?;
    if down {
        if shoal_tests::docker::stop_started() {
            println!("stopped the Docker Engine the demo started");
        }
        println!("demo removed");
        return Ok(());
    }
    setup::run()?;
    build_binaries()?;
    let executor = demo_executor();
    let lab = persistent_lab(nodes, "demo", true, &executor.shoald_args())?;
    println!();
    print!("{}", status_of(&lab));
    let shoal = shoal_tests::binary("shoal")?;
    let shoal = shoal
        .strip_prefix(crate::workspace_root())
        .unwrap_or(&shoal)
        .to_path_buf();
    for node in lab.nodes() {
        println!(
            "\n$ ip netns exec {} {} -H unix://{} info",
            node.netns,
            shoal.display(),
            lab.socket(node).display()
        );
        let out = lab.shoal(node, &["info"])?;
        print!("{}", show(&out)?);
    }
    lab.wire_like_nics()?;
    demo_swarm(&lab, &shoal)?;
    demo_services(&lab, &shoal, &executor)?;
    println!(
        "\nThe lab stays up: `cargo xtask lab status` shows it, `cargo xtask demo --down` removes it."
    );
    Ok(())
}

/// A swarm on the demo lab: n1 initializes it, up to two more nodes join as managers, the rest
/// as workers, and `node ls` shows them all Ready with one leader.
fn demo_swarm(lab: &Lab, shoal: &std::path::Path) -> anyhow::Result<()> {
    let nodes = lab.nodes().to_vec();
    let n1 = &nodes[0];
    let run = |node: &shoal_tests::Host, args: &[&str]| -> anyhow::Result<String> {
        println!(
            "\n$ ip netns exec {} {} -H unix://{} {}",
            node.netns,
            shoal.display(),
            lab.socket(node).display(),
            args.join(" ")
        );
        let out = show(&lab.shoal(node, args)?)?;
        print!("{out}");
        Ok(out)
    };
    println!("\nThe swarm: n1 initializes it; the others join with the tokens it prints.");
    run(
        n1,
        &[
            "swarm",
            "init",
            "--advertise-addr",
            "eth0",
            "--data-path-addr",
            "eth1",
        ],
    )?;
    let manager = run(n1, &["swarm", "join-token", "-q", "manager"])?;
    let worker = run(n1, &["swarm", "join-token", "-q", "worker"])?;
    let remote = format!("{}:2377", n1.public_ip);
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let token = if i < 3 { &manager } else { &worker };
        run(
            node,
            &[
                "swarm",
                "join",
                "--token",
                token.trim(),
                "--advertise-addr",
                "eth0",
                "--data-path-addr",
                "eth1",
                &remote,
            ],
        )?;
    }
    // Every node is Ready once its first heartbeat is in; joins already count as one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = lab.shoal(n1, &["node", "ls", "--format", "json"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let ready = text
            .lines()
            .filter(|l| l.contains("\"Status\":\"Ready\""))
            .count();
        let leaders = text
            .lines()
            .filter(|l| l.contains("\"ManagerStatus\":\"Leader\""))
            .count();
        if ready == nodes.len() && leaders == 1 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the swarm did not settle within 30 s: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    run(&nodes[(nodes.len() - 1).min(2)], &["node", "ls"])?;
    Ok(())
}

/// How the demo's tasks run: containers when a Docker Engine runs or can be started, host
/// processes otherwise.
enum DemoExecutor {
    /// The `docker` executor, with this image of `shoal-labtool`.
    Docker { image: String, version: String },
    /// The `exec` executor, and why not docker.
    Exec { why: String },
}

impl DemoExecutor {
    fn shoald_args(&self) -> Vec<&'static str> {
        match self {
            DemoExecutor::Docker { .. } => vec!["--executor", "docker"],
            DemoExecutor::Exec { .. } => vec!["--executor", "exec"],
        }
    }
}

/// The docker executor if an engine answers or starts (it stays up for the demo; `demo --down`
/// stops it if the demo started it) and the image imports; exec otherwise.
fn demo_executor() -> DemoExecutor {
    let image = "shoal-labtool:demo".to_owned();
    let ready = shoal_tests::docker::Engine::ensure().and_then(|engine| {
        shoal_tests::docker::import_labtool_image(&image)?;
        let version = engine.version.clone();
        engine.keep();
        Ok(version)
    });
    match ready {
        Ok(version) => DemoExecutor::Docker { image, version },
        Err(e) => DemoExecutor::Exec { why: e.to_string() },
    }
}

/// The demo's services, a two-tier app on an encrypted overlay network `backend`: `api` (three
/// tasks of `shoal-labtool serve`, answering with their task's name) and `web` (three more,
/// published on 8080 through the routing mesh, each calling `api` by name through the embedded
/// DNS and the service's VIP, and answering with both names); containers of the image imported
/// from a rootfs holding the tool, or host processes. Then requests to every node's 8080.
fn demo_services(
    lab: &Lab,
    shoal: &std::path::Path,
    executor: &DemoExecutor,
) -> anyhow::Result<()> {
    let nodes = lab.nodes().to_vec();
    let n1 = &nodes[0];
    let run = |args: &[&str]| -> anyhow::Result<String> {
        println!(
            "\n$ ip netns exec {} {} -H unix://{} {}",
            n1.netns,
            shoal.display(),
            lab.socket(n1).display(),
            args.join(" ")
        );
        let out = show(&lab.shoal(n1, args)?)?;
        print!("{out}");
        Ok(out)
    };
    match executor {
        DemoExecutor::Docker { image, version } => println!(
            "\nTasks run with the docker executor: containers of Docker Engine {version} (network mode \
             none; Shoal plumbs their namespaces), image {image} imported from a rootfs holding \
             shoal-labtool."
        ),
        DemoExecutor::Exec { why } => println!(
            "\nTasks run with the exec executor (COMMAND from the host, in a network namespace of its \
             own): no Docker Engine ({why})."
        ),
    }
    run(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--opt",
        "encrypted",
        "backend",
    ])?;
    let tool = shoal_tests::binary("shoal-labtool")?;
    let (image, tool) = match executor {
        DemoExecutor::Docker { image, .. } => (image.clone(), "/shoal-labtool".to_owned()),
        DemoExecutor::Exec { .. } => ("host".to_owned(), tool.display().to_string()),
    };
    run(&[
        "service",
        "create",
        "--name",
        "api",
        "--replicas",
        "3",
        "--network",
        "backend",
        &image,
        &tool,
        "serve",
        "--port",
        "80",
    ])?;
    run(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--publish",
        "8080:80",
        "--network",
        "backend",
        &image,
        &tool,
        "serve",
        "--port",
        "80",
        "--upstream",
        "api:80",
    ])?;
    run(&["service", "ls"])?;
    run(&["service", "ps", "web", "api"])?;
    println!(
        "\nEvery node's 8080 answers: the routing mesh picks a `web` task on any node, which asks \
         `api` by name (embedded DNS, then the VIP picks an `api` task); each reply names both:"
    );
    for node in &nodes {
        let target = format!("{}:8080", node.public_ip);
        let out = shoal_tests::mesh::labtool(
            lab.client(),
            &[
                "ask",
                "--target",
                &target,
                "--count",
                "4",
                "--timeout-ms",
                "2000",
            ],
        )?;
        let names: Vec<String> = shoal_tests::mesh::answers(&out)
            .into_iter()
            .map(|(_, r)| r.unwrap_or_else(|e| format!("({e})")))
            .collect();
        println!(
            "  client -> {}:8080 ({}): {}",
            node.public_ip,
            node.name,
            names.join(", ")
        );
    }
    rolling_update(lab, &nodes, &run)
}

/// The demo's last act: a rolling update of `web`, start-first, two at a time, while the client
/// asks every node's 8080 twenty times a second; then how many requests were answered.
fn rolling_update(
    lab: &Lab,
    nodes: &[shoal_tests::Host],
    run: &dyn Fn(&[&str]) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    println!(
        "\nA rolling update of web, while the client asks every node's 8080 twenty times a second:"
    );
    let targets: Vec<String> = nodes
        .iter()
        .map(|node| format!("{}:8080", node.public_ip))
        .collect();
    let (updated, asked) = shoal_tests::mesh::asking_throughout(lab.client(), &targets, || {
        run(&[
            "service",
            "update",
            "--env-add",
            "VERSION=2",
            "--update-parallelism",
            "2",
            "--update-delay",
            "1s",
            "--update-order",
            "start-first",
            "web",
        ])
    });
    updated?;
    let failed: Vec<&String> = asked.iter().filter_map(|a| a.as_ref().err()).collect();
    println!(
        "  {} requests to the three nodes during the update, {} failed",
        asked.len(),
        failed.len()
    );
    for why in failed {
        println!("  failed: {why}");
    }
    run(&["service", "ps", "web"])?;
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    if !is_root() {
        bail!("labs need root: they create network namespaces (run as root)");
    }
    Ok(())
}

fn build_binaries() -> anyhow::Result<()> {
    run_command(cargo().args(["build", "--bins"]))
}

fn remove_demo_labs() -> anyhow::Result<()> {
    for lab in labs().into_iter().filter(|l| l.purpose == "demo") {
        shoal_tests::down(&lab.prefix)?;
        eprintln!("removed the previous demo lab {}", lab.prefix);
    }
    Ok(())
}

/// Builds a persistent lab; with `daemons`, starts `shoald` in each node. On any failure the
/// half-built lab is removed.
fn persistent_lab(
    nodes: usize,
    purpose: &str,
    daemons: bool,
    shoald_args: &[&str],
) -> anyhow::Result<Lab> {
    let mut lab = Lab::up(LabSpec {
        nodes,
        persistent: true,
        purpose: purpose.into(),
    })?;
    lab.set_shoald_args(shoald_args);
    let started = (|| -> anyhow::Result<()> {
        if daemons {
            lab.spawn_shoald_all()
                .context("starting shoald in every node")?;
        }
        Ok(())
    })();
    if let Err(e) = started {
        let prefix = lab.prefix().to_string();
        drop(lab);
        shoal_tests::down(&prefix)?;
        return Err(e);
    }
    Ok(lab)
}

fn status_of(lab: &Lab) -> String {
    labs()
        .into_iter()
        .find(|s| s.prefix == lab.prefix())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn show(out: &Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "shoal failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
