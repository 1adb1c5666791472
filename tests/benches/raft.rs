//! `cargo xtask bench raft`: replicated writes on three managers, against etcd on the same lab.
//!
//! 1. Shoal: a 3-manager swarm on the lab. From the client namespace, `shoal-raft-load` writes
//!    new keys (`Put`: a config object, one raft entry each) to the leader's cluster API over
//!    mutual TLS, first 1 client then 64 concurrent ones, 5 s each. Acknowledged = committed on a
//!    majority, fsync'd.
//! 2. The daemons are stopped, and Debian's `etcd` (3 members, one per node, default settings:
//!    fsync on) takes the same load from the same client: `KV.Put` of new keys to its leader,
//!    over plain gRPC (no TLS: that favours etcd).
//!
//! Writes `$SHOAL_BENCH_OUT` (default `target/bench/raft.json`): `{shoal,etcd}_writes_per_s_c{1,64}`,
//! `{shoal,etcd}_p{50,99}_ms_c{1,64}`. Needs root, `etcd` and release builds of `shoald`, `shoal`
//! and `shoal-raft-load` (the xtask builds them).

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use serde_json::Value;
use shoal_tests::{binary, swarm::Swarm, wait_until};

const SECONDS: &str = "5";

fn load(swarm: &Swarm, args: &[&str]) -> Value {
    let mut command = swarm
        .lab
        .client()
        .command(binary("shoal-raft-load").expect("built"))
        .expect("client");
    let out = command.args(args).output().expect("run shoal-raft-load");
    assert!(
        out.status.success(),
        "shoal-raft-load {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON line")
}

fn record(results: &mut BTreeMap<String, f64>, system: &str, clients: usize, run: &Value) {
    let get = |k: &str| run[k].as_f64().unwrap_or(0.0);
    results.insert(format!("{system}_writes_per_s_c{clients}"), get("per_s"));
    results.insert(format!("{system}_p50_ms_c{clients}"), get("p50_ms"));
    results.insert(format!("{system}_p99_ms_c{clients}"), get("p99_ms"));
    results.insert(format!("{system}_errors_c{clients}"), get("errors"));
}

fn main() {
    let out = std::env::var("SHOAL_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/raft.json").into()
    });
    let mut results = BTreeMap::new();

    // Shoal.
    let mut swarm = Swarm::up(3, 0);
    let n1 = swarm.managers[0].clone();
    let leader = swarm.host(&swarm.leader(&n1).expect("a leader"));
    let target = format!("{}:2377", leader.public_ip);
    let certs = swarm.lab.host_dir(&leader).join("data/swarm/certs");
    let certs = certs.to_str().unwrap();
    for clients in [1, 64] {
        let c = clients.to_string();
        let run = load(
            &swarm,
            &[
                "shoal",
                "--target",
                &target,
                "--certs",
                certs,
                "--clients",
                &c,
                "--seconds",
                SECONDS,
            ],
        );
        eprintln!("shoal, {clients} clients: {run}");
        record(&mut results, "shoal", clients, &run);
    }
    for node in swarm.lab.nodes().to_vec() {
        swarm.lab.kill_shoald(&node).expect("stop shoald");
    }

    // etcd on the same nodes, addresses and client.
    let nodes = swarm.lab.nodes().to_vec();
    let cluster: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}=http://{}:2380", n.name, n.public_ip))
        .collect();
    for node in &nodes {
        let dir = swarm.lab.host_dir(node).join("etcd");
        let log = std::fs::File::create(swarm.lab.host_dir(node).join("etcd.log")).unwrap();
        let mut command = node.command("etcd").expect("etcd in the node");
        command
            .args(["--name", &node.name, "--data-dir", dir.to_str().unwrap()])
            .arg(format!(
                "--listen-client-urls=http://{}:2379",
                node.public_ip
            ))
            .arg(format!(
                "--advertise-client-urls=http://{}:2379",
                node.public_ip
            ))
            .arg(format!("--listen-peer-urls=http://{}:2380", node.public_ip))
            .arg(format!(
                "--initial-advertise-peer-urls=http://{}:2380",
                node.public_ip
            ))
            .arg(format!("--initial-cluster={}", cluster.join(",")))
            .args([
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        swarm.lab.spawn(command).expect("start etcd");
    }
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}:2379", n.public_ip))
        .collect();
    let mut etcd_leader = String::new();
    wait_until("etcd to elect a leader", Duration::from_secs(60), || {
        let mut command = swarm
            .lab
            .client()
            .command(binary("shoal-raft-load").unwrap())
            .unwrap();
        let out = command
            .args(["etcd-leader", "--endpoints", &endpoints.join(",")])
            .output()
            .unwrap();
        etcd_leader = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(out.status.success() && !etcd_leader.is_empty())
    })
    .expect("an etcd leader");
    for clients in [1, 64] {
        let c = clients.to_string();
        let run = load(
            &swarm,
            &[
                "etcd",
                "--target",
                &etcd_leader,
                "--clients",
                &c,
                "--seconds",
                SECONDS,
            ],
        );
        eprintln!("etcd, {clients} clients: {run}");
        record(&mut results, "etcd", clients, &run);
    }

    println!("{:<28} {:>12} {:>12}", "figure", "shoal", "etcd");
    for figure in [
        "writes_per_s_c1",
        "p50_ms_c1",
        "p99_ms_c1",
        "writes_per_s_c64",
        "p50_ms_c64",
        "p99_ms_c64",
    ] {
        println!(
            "{figure:<28} {:>12.1} {:>12.1}",
            results[&format!("shoal_{figure}")],
            results[&format!("etcd_{figure}")]
        );
    }
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
}
