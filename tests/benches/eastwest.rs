//! `cargo xtask bench eastwest`: what translating a connection at the socket costs, the
//! mechanism of service VIPs and of node-local clients (one translation per `connect`, no NAT on
//! the packets), against connecting to the same task directly.
//!
//! On a 3-node lab, a service `one` has a single task (`web3`, on n2), published on 8090 and
//! with the VIP 10.255.0.200 on the ingress network. From a task on n1 (`web1`):
//! - `vip_conn_per_s`: new TCP connections per second (connect, HTTP GET, close; 16 at a time)
//!   to the VIP, port 80, which the cgroup `connect4` program sends to `web3`;
//!   `direct_conn_per_s`: the same to `web3`'s address.
//! - `vip_rr_us` and `direct_rr_us`: the median round trip of one line on one connection (10,000
//!   of them), and the 99th percentile (`*_rr_p99_us`).
//!
//! And from n1's own namespace, `node_sock_lb_*` (to `127.0.0.1:8090`) against `node_direct_*`
//! (to `web3`'s address). Each is measured three times, the paths alternating; the figure is the
//! median. Goals (issue Data plane III): VIP conn/s ≥ 0.9 × direct, VIP request latency ≤ 1.05 ×
//! direct.
//!
//! Then, on a one-node swarm driven by the CLI (services `api` and `client` on a network `app`),
//! the embedded DNS server from the client task: `dns_qps` (A queries for `api` over UDP, 8 in
//! flight, 3 s) and `dns_p50_us`/`dns_p99_us`, the median of three runs. No resolver of the
//! same kind runs here to compare with: Docker's embedded one does not answer under a
//! dockerd started with `--iptables=false`, as the lab's is.
//!
//! On the same swarm, the tasks' way out: `way_out_conn_per_s` and `way_out_rr_us` from the
//! client task to a server in the lab's client namespace (outside the swarm; the task's default
//! route, nftables masquerade to the node's address) against `node_out_*`, the node itself
//! connecting to the same server.
//!
//! Writes `$SHOAL_BENCH_OUT` (default `target/bench/eastwest.json`). Needs root and release
//! builds of `shoald`, `shoal` and `shoal-labtool` (the xtask builds them).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, json};
use shoal_tests::mesh::{INGRESS, Mesh, Service, labtool};
use shoal_tests::overlay::{apply, last_json, median, write_figures};
use shoal_tests::service::{create_serve, tasks, wait_running};
use shoal_tests::swarm::Swarm;
use shoal_tests::{Lab, LabSpec, binary, wait_until};

const TASKS: &[(&str, usize, u8)] = &[("web1", 0, 11), ("web3", 1, 13), ("web5", 2, 15)];
const ROUNDS: usize = 3;
/// The service's VIP on the ingress network.
const VIP: &str = "10.255.0.200";

/// Where the load generator runs.
#[derive(Clone, Copy)]
enum From<'a> {
    /// n1's own namespace.
    Node(&'a Lab),
    /// A task's namespace.
    Task(&'a Mesh, &'static str),
}

fn tool(from: From<'_>, args: &[&str]) -> std::process::Output {
    match from {
        From::Node(lab) => labtool(&lab.nodes()[0], args).expect("labtool runs"),
        From::Task(mesh, task) => mesh
            .overlay
            .command(
                task,
                &binary("shoal-labtool").expect("built").to_string_lossy(),
            )
            .args(args)
            .output()
            .expect("labtool runs"),
    }
}

/// Connections per second to `target`.
fn conn_rate(from: From<'_>, target: &str) -> f64 {
    let out = tool(
        from,
        &[
            "tcp-rate",
            "--target",
            target,
            "--seconds",
            "5",
            "--concurrency",
            "16",
        ],
    );
    let v = last_json(&out.stdout);
    eprintln!("tcp-rate {target}: {v}");
    assert_eq!(v["errors"], 0, "{v}");
    v["per_s"].as_f64().unwrap_or(0.0)
}

/// Median and 99th percentile round trip (µs) on one connection to `target`.
fn round_trip(from: From<'_>, target: &str) -> (f64, f64) {
    let out = tool(from, &["tcp-rr", "--target", target, "--count", "10000"]);
    let v = last_json(&out.stdout);
    eprintln!("tcp-rr {target}: {v}");
    (
        v["p50_us"].as_f64().unwrap_or(f64::NAN),
        v["p99_us"].as_f64().unwrap_or(f64::NAN),
    )
}

fn main() {
    let out = std::env::var("SHOAL_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/eastwest.json").into()
    });
    let mut lab = Lab::up(LabSpec {
        purpose: "bench eastwest".into(),
        ..LabSpec::nodes(3)
    })
    .expect("lab up");
    lab.spawn_shoald_all().expect("shoald starts in every node");
    let mesh = Mesh::new(
        &mut lab,
        TASKS,
        vec![Service {
            name: "one",
            ports: vec![json!({ "published": 8090, "target": 80 })],
            backends: vec!["web3"],
            client_ip: "snat",
        }],
    )
    .expect("tasks");
    // Every node's state, with the VIP for its tasks.
    let web3 = mesh.overlay.ip("web3", INGRESS.id);
    for node in 0..3 {
        let mut state = mesh.state(&lab, node);
        state["vips"] = json!([{
            "service": "one", "network": INGRESS.id, "vip": VIP, "backends": [web3.to_string()]
        }]);
        let out = apply(&lab, node, &state).expect("apply runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    mesh.wait_ready().expect("responders");
    let node_lb = "127.0.0.1:8090".to_owned();
    let vip = format!("{VIP}:80");
    let direct = format!("{web3}:80");
    let (node, task) = (From::Node(&lab), From::Task(&mesh, "web1"));
    // Every path answers before anything is counted.
    for (from, target) in [
        (node, &node_lb),
        (node, &direct),
        (task, &vip),
        (task, &direct),
    ] {
        let out = tool(from, &["ask", "--target", target, "--count", "3"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("web3"),
            "{target}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..ROUNDS {
        for (prefix, from, target) in [
            ("vip", task, &vip),
            ("direct", task, &direct),
            ("node_sock_lb", node, &node_lb),
            ("node_direct", node, &direct),
        ] {
            let conn = conn_rate(from, target);
            let (p50, p99) = round_trip(from, target);
            for (suffix, value) in [("conn_per_s", conn), ("rr_us", p50), ("rr_p99_us", p99)] {
                samples
                    .entry(format!("{prefix}_{suffix}"))
                    .or_default()
                    .push(value);
            }
        }
    }
    drop(mesh);
    drop(lab);
    for (name, values) in swarm_samples() {
        samples.insert(name, values);
    }
    let mut figures = Map::new();
    for (name, values) in samples {
        figures.insert(name, json!(median(values)));
    }
    let ratio =
        |a: &str, b: &str| figures[a].as_f64().unwrap_or(0.0) / figures[b].as_f64().unwrap_or(1.0);
    let conn_ratio = ratio("vip_conn_per_s", "direct_conn_per_s");
    let rr_ratio = ratio("vip_rr_us", "direct_rr_us");
    let node_conn_ratio = ratio("node_sock_lb_conn_per_s", "node_direct_conn_per_s");
    let node_rr_ratio = ratio("node_sock_lb_rr_us", "node_direct_rr_us");
    let way_out_conn_ratio = ratio("way_out_conn_per_s", "node_out_conn_per_s");
    let way_out_rr_ratio = ratio("way_out_rr_us", "node_out_rr_us");
    figures.insert("way_out_conn_ratio".into(), json!(way_out_conn_ratio));
    figures.insert("way_out_rr_ratio".into(), json!(way_out_rr_ratio));
    figures.insert("vip_conn_ratio".into(), json!(conn_ratio));
    figures.insert("vip_rr_ratio".into(), json!(rr_ratio));
    figures.insert("node_sock_lb_conn_ratio".into(), json!(node_conn_ratio));
    figures.insert("node_sock_lb_rr_ratio".into(), json!(node_rr_ratio));
    println!("\neastwest (median of {ROUNDS} alternating runs; to one task on n2)");
    println!(
        "{:<22} {:>12} {:>13} {:>12} {:>13}",
        "", "task: VIP", "task: direct", "node: local", "node: direct"
    );
    for (label, suffix) in [
        ("connections/s", "conn_per_s"),
        ("round trip p50 (µs)", "rr_us"),
        ("round trip p99 (µs)", "rr_p99_us"),
    ] {
        let f = |p: &str| figures[&format!("{p}_{suffix}")].as_f64().unwrap_or(0.0);
        println!(
            "{label:<22} {:>12.1} {:>13.1} {:>12.1} {:>13.1}",
            f("vip"),
            f("direct"),
            f("node_sock_lb"),
            f("node_direct")
        );
    }
    println!(
        "VIP: conn/s ratio {conn_ratio:.3} (goal ≥ 0.9), latency ratio {rr_ratio:.3} (goal ≤ 1.05); node-local: {node_conn_ratio:.3}, {node_rr_ratio:.3}"
    );
    println!(
        "embedded DNS: {:.0} queries/s, p50 {:.1} µs, p99 {:.1} µs",
        figures["dns_qps"].as_f64().unwrap_or(0.0),
        figures["dns_p50_us"].as_f64().unwrap_or(0.0),
        figures["dns_p99_us"].as_f64().unwrap_or(0.0)
    );
    println!(
        "way out (task -> outside, masquerade): {:.0} connections/s, {:.1} µs; the node itself: {:.0}, {:.1} µs (ratios {way_out_conn_ratio:.3}, {way_out_rr_ratio:.3})",
        figures["way_out_conn_per_s"].as_f64().unwrap_or(0.0),
        figures["way_out_rr_us"].as_f64().unwrap_or(0.0),
        figures["node_out_conn_per_s"].as_f64().unwrap_or(0.0),
        figures["node_out_rr_us"].as_f64().unwrap_or(0.0)
    );
    let out = std::path::PathBuf::from(out);
    write_figures(&out, &figures).expect("figures written");
    println!("wrote {}", out.display());
}

/// The embedded DNS server's rate and latency, and the way out's cost, from a task of a
/// one-node swarm.
fn swarm_samples() -> BTreeMap<String, Vec<f64>> {
    let mut swarm = Swarm::up(1, 0);
    let n1 = swarm.managers[0].clone();
    let outside = swarm.lab.client().clone();
    // Two servers: the task's connections, masqueraded to the node's address, and the node's own
    // would otherwise share the same address pairs and collide in conntrack and TIME_WAIT.
    for port in ["8000", "8001"] {
        let mut server = outside
            .command(binary("shoal-labtool").expect("built"))
            .expect("a command in the client's namespace");
        server.args(["serve", "--port", port, "--name", "outside"]);
        swarm.lab.spawn(server).expect("the outside server starts");
    }
    let node_outside = format!("{}:8001", outside.public_ip);
    let outside = format!("{}:8000", outside.public_ip);
    swarm.ok(&n1, &["network", "create", "app"]);
    for name in ["api", "client"] {
        create_serve(&swarm, &n1, &["--name", name, "--network", "app"]);
        wait_running(&swarm, &n1, name, "its task", |per| {
            per.values().sum::<usize>() == 1
        });
    }
    let client = tasks(&swarm, &n1, "client")
        .into_iter()
        .find(|t| t["DesiredState"] == "Running")
        .expect("the client task");
    let netns = swarm
        .lab
        .host_dir(&n1)
        .join("data/tasks/netns")
        .join(client["ID"].as_str().expect("an ID"));
    let run = |args: &[&str]| {
        let mut command = n1.command("nsenter").expect("nsenter");
        command
            .arg(format!("--net={}", netns.display()))
            .arg(binary("shoal-labtool").expect("built"))
            .args(args);
        command.output().expect("labtool runs")
    };
    let ready = wait_until(
        "the client's resolver answers",
        Duration::from_secs(30),
        || {
            let out = run(&["resolve", "--name", "api"]);
            Ok(String::from_utf8_lossy(&out.stdout).starts_with("NOERROR 10."))
        },
    );
    assert!(ready.is_ok(), "{ready:?}");
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // The way out (the task's default route, masquerade to the node's address) against the
    // node's own connections to the same server.
    let node_tool = |args: &[&str]| labtool(&n1, args).expect("labtool runs");
    let ready = wait_until(
        "the outside server answers the task",
        Duration::from_secs(30),
        || {
            let out = run(&["ask", "--target", &outside]);
            Ok(String::from_utf8_lossy(&out.stdout).contains("outside"))
        },
    );
    assert!(ready.is_ok(), "{ready:?}");
    for _ in 0..ROUNDS {
        for (prefix, out) in [("way_out", true), ("node_out", false)] {
            let target = if out { &outside } else { &node_outside };
            let rate_args = [
                "tcp-rate",
                "--target",
                target,
                "--seconds",
                "5",
                "--concurrency",
                "16",
            ];
            let rr_args = ["tcp-rr", "--target", target, "--count", "10000"];
            let (rate, rr) = match out {
                true => (run(&rate_args), run(&rr_args)),
                false => (node_tool(&rate_args), node_tool(&rr_args)),
            };
            let (rate, rr) = (last_json(&rate.stdout), last_json(&rr.stdout));
            eprintln!("{prefix}: {rate} {rr}");
            assert_eq!(rate["errors"], 0, "{rate}");
            for (suffix, value) in [
                ("conn_per_s", rate["per_s"].as_f64()),
                ("rr_us", rr["p50_us"].as_f64()),
            ] {
                samples
                    .entry(format!("{prefix}_{suffix}"))
                    .or_default()
                    .push(value.unwrap_or(f64::NAN));
            }
        }
    }
    for _ in 0..ROUNDS {
        let out = run(&[
            "dns-rate",
            "--name",
            "api",
            "--seconds",
            "3",
            "--window",
            "8",
        ]);
        let v = last_json(&out.stdout);
        eprintln!("dns-rate api: {v}");
        assert_eq!(v["lost"], 0, "{v}");
        for (name, key) in [
            ("dns_qps", "qps"),
            ("dns_p50_us", "p50_us"),
            ("dns_p99_us", "p99_us"),
        ] {
            samples
                .entry(name.into())
                .or_default()
                .push(v[key].as_f64().unwrap_or(f64::NAN));
        }
    }
    samples
}
