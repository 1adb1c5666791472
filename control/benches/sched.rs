//! `cargo xtask bench sched`: scheduler placements per second, in-process: 100,000 tasks (100
//! services of 1,000 replicas; half of the services constrained to a zone label, a quarter to
//! workers) on 1,000 simulated nodes (10 zones, 100 managers, 5 % down, 5 % drained).
//!
//! - `placements_per_s`: `scheduler::place`, which filters the nodes once per batch of identical
//!   tasks and spreads them through a heap;
//! - `naive_placements_per_s` (the baseline, same input): every task filters every node and scans
//!   for the least loaded one, as a scheduler without batching does.
//!
//! Writes `$SHOAL_BENCH_OUT` (default `target/bench/sched.json`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Instant,
};

use shoal_control::scheduler::{Constraint, NodeInfo, Placement, place};

const NODES: usize = 1_000;
const SERVICES: usize = 100;
const REPLICAS: usize = 1_000;

fn nodes() -> Vec<NodeInfo> {
    (0..NODES)
        .map(|i| NodeInfo {
            id: format!("node{i:05}"),
            hostname: format!("host{i:05}"),
            role: if i.is_multiple_of(10) {
                "manager"
            } else {
                "worker"
            }
            .into(),
            labels: BTreeMap::from([("zone".to_owned(), format!("z{}", i % 10))]),
            os: "linux".into(),
            arch: "x86_64".into(),
            ready: i % 20 != 7,
            active: i % 20 != 13,
            tasks: HashMap::new(),
            host_ports: BTreeSet::new(),
            available: shoal_control::scheduler::Resources {
                nano_cpus: 16_000_000_000,
                memory_bytes: 64 << 30,
            },
        })
        .collect()
}

fn placement(service: usize) -> Placement {
    let mut constraints: Vec<Constraint> = Vec::new();
    if service.is_multiple_of(2) {
        constraints.push(
            format!("node.labels.zone==z{}", service % 10)
                .parse()
                .unwrap(),
        );
    }
    if service % 4 == 1 {
        constraints.push("node.role==worker".parse().unwrap());
    }
    Placement {
        constraints,
        ..Default::default()
    }
}

/// One task at a time: filter every node, pick the least loaded.
fn naive(nodes: &mut [NodeInfo], service: &str, placement: &Placement) -> Option<usize> {
    let best = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.ready && n.active && placement.constraints.iter().all(|c| c.matches(n)))
        .min_by_key(|(_, n)| {
            (
                n.tasks.get(service).copied().unwrap_or(0),
                n.tasks.values().sum::<usize>(),
                n.id.clone(),
            )
        })
        .map(|(i, _)| i)?;
    *nodes[best].tasks.entry(service.to_owned()).or_default() += 1;
    Some(best)
}

fn main() {
    let out = std::env::var("SHOAL_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/sched.json").into()
    });
    let placements: Vec<Placement> = (0..SERVICES).map(placement).collect();

    let mut all = nodes();
    let started = Instant::now();
    let mut placed = 0;
    for (s, p) in placements.iter().enumerate() {
        placed += place(&mut all, &format!("svc{s}"), p, REPLICAS)
            .iter()
            .filter(|r| r.is_ok())
            .count();
    }
    let batched = started.elapsed().as_secs_f64();

    let mut all = nodes();
    let started = Instant::now();
    let mut naive_placed = 0;
    for (s, p) in placements.iter().enumerate() {
        let name = format!("svc{s}");
        for _ in 0..REPLICAS {
            naive_placed += usize::from(naive(&mut all, &name, p).is_some());
        }
    }
    let scanned = started.elapsed().as_secs_f64();
    assert_eq!(placed, naive_placed, "both place the same tasks");

    let figures = serde_json::json!({
        "tasks": SERVICES * REPLICAS,
        "nodes": NODES,
        "placed": placed,
        "placements_per_s": placed as f64 / batched,
        "naive_placements_per_s": naive_placed as f64 / scanned,
    });
    println!("{:<28} {:>14}", "figure", "per second");
    println!(
        "{:<28} {:>14.0}",
        "placements (batched)",
        placed as f64 / batched
    );
    println!(
        "{:<28} {:>14.0}",
        "placements (naive scan)",
        naive_placed as f64 / scanned
    );
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&figures).unwrap()).unwrap();
}
