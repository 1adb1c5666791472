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
            let lab = persistent_lab(nodes, "lab", daemons)?;
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
        println!("demo removed");
        return Ok(());
    }
    setup::run()?;
    build_binaries()?;
    let mut lab = persistent_lab(nodes, "demo", true)?;
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
    demo_swarm(&lab, &shoal)?;
    demo_network(&mut lab, &shoal)?;
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

/// Overlays and the routing mesh on the demo lab, driven the way the control plane will drive
/// them: a plain `frontend` and an encrypted `backend` network, and a `web` service of six tasks
/// (two per node, answering with their names) published on 8080 through the ingress network.
/// Tasks are bare namespaces.
fn demo_network(lab: &mut Lab, shoal: &std::path::Path) -> anyhow::Result<()> {
    use shoal_tests::mesh::{INGRESS, Mesh, Service};
    use shoal_tests::overlay::{Net, Overlay, Task};
    let nodes = lab.nodes().len();
    let last = nodes - 1;
    let mut tasks = vec![Task {
        name: "db",
        node: 1.min(last),
        on: vec![("backend", 3)],
    }];
    const WEB: [&str; 6] = ["web1", "web2", "web3", "web4", "web5", "web6"];
    for (i, name) in WEB.iter().enumerate() {
        let mut on = vec![(INGRESS.id, 11 + i as u8)];
        match i {
            0 => on.extend([("frontend", 2), ("backend", 2)]),
            1 => on.push(("frontend", 4)),
            _ => {}
        }
        tasks.push(Task {
            name,
            node: i * nodes / WEB.len(),
            on,
        });
    }
    let overlay = Overlay::new(
        lab,
        vec![
            Net {
                id: "frontend",
                vni: 4096,
                octet: 10,
                encrypted: false,
            },
            Net {
                id: "backend",
                vni: 4097,
                octet: 20,
                encrypted: true,
            },
            INGRESS,
        ],
        tasks,
    )?;
    let mesh = Mesh::over(
        lab,
        overlay,
        &WEB,
        vec![Service::web("web", 8080, WEB.to_vec())],
    )?;
    mesh.apply_all(lab).map_err(anyhow::Error::msg)?;
    mesh.wait_ready().map_err(anyhow::Error::msg)?;
    let overlay = &mesh.overlay;
    let n1 = &lab.nodes()[0];
    println!(
        "\nNetworks: each node's desired state is in {}/<node>/state.json; applied with\n\
         $ ip netns exec {} {} -H unix://{} dataplane apply {}",
        lab.dir().display(),
        n1.netns,
        shoal.display(),
        lab.socket(n1).display(),
        lab.host_dir(n1).join("state.json").display()
    );
    for (from, to, net) in [("web1", "web2", "frontend"), ("web1", "db", "backend")] {
        let ip = overlay.ip(to, net);
        let out = overlay
            .command(from, "ping")
            .args(["-c", "1", "-W", "2"])
            .arg(ip.to_string())
            .output()?;
        println!(
            "$ ip netns exec {} ping -c 1 {ip}    # {from} -> {to} on {net}{}\n{}",
            overlay.netns(from),
            if net == "backend" { " (encrypted)" } else { "" },
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .unwrap_or("no answer")
        );
    }
    println!(
        "\nThe routing mesh: service web (6 tasks, 2 per node) published on 8080 of every node;\n\
         requests from the client namespace {}:",
        lab.client().netns
    );
    for node in lab.nodes() {
        let mut answers = Vec::new();
        for _ in 0..4 {
            let out = lab.run(
                lab.client(),
                "curl",
                &[
                    "-s",
                    "--max-time",
                    "3",
                    &format!("http://{}:8080/", node.public_ip),
                ],
            )?;
            let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            answers.push(if body.is_empty() {
                "no answer".to_owned()
            } else {
                body
            });
        }
        println!(
            "$ ip netns exec {} curl http://{}:8080/    # x4, {}: {}",
            lab.client().netns,
            node.public_ip,
            node.name,
            answers.join(", ")
        );
    }
    let out = lab.shoal(n1, &["dataplane", "inspect"])?;
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    println!(
        "{}: XDP on {} ({}), web counters {}",
        n1.name,
        n1.public_if(),
        inspect["mesh"]["interfaces"][n1.public_if()]["xdp"],
        inspect["mesh"]["services"]["web"]
    );
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
fn persistent_lab(nodes: usize, purpose: &str, daemons: bool) -> anyhow::Result<Lab> {
    let mut lab = Lab::up(LabSpec {
        nodes,
        persistent: true,
        purpose: purpose.into(),
    })?;
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
