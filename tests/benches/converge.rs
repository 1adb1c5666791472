//! `cargo xtask bench converge`: seconds from `shoal service create --replicas N` to N tasks
//! running, on a 3-manager lab with the exec executor (each task: a network namespace, its
//! ingress-less overlay plumbing, `shoal-labtool serve`), for N = 10 and N = 100 in one run.
//!
//! The clock starts before `service create --detach` and stops when `service ls` reports
//! `N/N`: orchestration, allocation, scheduling, dispatch, namespace creation, the data plane
//! and the status reports back through raft are all inside it.
//!
//! Writes `$SHOAL_BENCH_OUT` (default `target/bench/converge.json`): `converge_10_s`,
//! `converge_100_s`, `converge_100_tasks_per_s`. Anchors (not measurable here): Nomad placed
//! 3,750 containers/s end to end in its 1M-container test; Kubernetes' pod start-up objective
//! is p99 <= 5 s. Needs root and release builds (the xtask builds them).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use shoal_tests::{binary, swarm::Swarm, wait_until};

fn converge(swarm: &Swarm, name: &str, replicas: usize) -> f64 {
    let n1 = swarm.managers[0].clone();
    let tool = binary("shoal-labtool")
        .expect("built")
        .display()
        .to_string();
    let want = format!("\"Replicas\":\"{replicas}/{replicas}\"");
    let count = replicas.to_string();
    let start = Instant::now();
    swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--replicas",
            &count,
            "host",
            &tool,
            "serve",
            "--port",
            "80",
        ],
    );
    wait_until(
        &format!("{replicas} tasks of {name} running"),
        Duration::from_secs(300),
        || {
            let out = swarm
                .lab
                .shoal(&n1, &["service", "ls", "--format", "json"])
                .map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.contains(&format!("\"Name\":\"{name}\"")) && l.contains(&want)))
        },
    )
    .expect("the service converges");
    let seconds = start.elapsed().as_secs_f64();
    swarm.ok(&n1, &["service", "rm", name]);
    wait_until(
        &format!("{name}'s tasks gone"),
        Duration::from_secs(120),
        || {
            let out = swarm
                .lab
                .shoal(&n1, &["node", "ps", "n1", "n2", "n3", "-q"])
                .map_err(|e| e.to_string())?;
            Ok(out.stdout.is_empty())
        },
    )
    .expect("the tasks are removed");
    seconds
}

fn main() {
    let out = std::env::var("SHOAL_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/converge.json").into()
    });
    let swarm = Swarm::up(3, 0);
    let mut results = BTreeMap::new();
    let ten = converge(&swarm, "ten", 10);
    let hundred = converge(&swarm, "hundred", 100);
    results.insert("converge_10_s", ten);
    results.insert("converge_100_s", hundred);
    results.insert("converge_100_tasks_per_s", 100.0 / hundred);
    println!("{:<28} {:>10}", "figure", "value");
    for (k, v) in &results {
        println!("{k:<28} {v:>10.2}");
    }
    println!("anchors: Nomad 3,750 containers/s end to end; Kubernetes pod start-up p99 <= 5 s");
    std::fs::create_dir_all(std::path::Path::new(&out).parent().expect("a directory"))
        .expect("create the output directory");
    std::fs::write(&out, serde_json::to_string_pretty(&results).expect("JSON"))
        .expect("write the results");
    drop(swarm);
}
