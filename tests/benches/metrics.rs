//! `cargo xtask bench metrics`: what observability costs, one run.
//!
//! 1. The routing mesh's per-service counters on its fast path, through BPF_PROG_TEST_RUN (the
//!    kernel's own timing, nothing attached): a packet of an established connection, 1,000,000
//!    repeats, the median of 7 rounds, with the programs as `shoald` loads them
//!    (`mesh_est_ns_with_counters`) and with the counters left out by the verifier
//!    (`lb_established_ns_per_packet`: the same object loaded with
//!    `shoal_abi::mesh::COUNTERS_GLOBAL` at 0). `counters_ns_per_packet` is the difference;
//!    the aim is at most 5 ns. The two are measured in alternating rounds. Also a connection's
//!    first packet (`mesh_new_ns_with_counters`, `lb_new_ns_without_counters`: one run per
//!    fresh flow, 5,000 flows, alternating, the medians), where the per-port counters are.
//! 2. A scrape: `GET /metrics` of a node whose store holds 100 services and 1,000 tasks (a
//!    one-manager lab swarm; each service has 10 replicas and a constraint no node meets, so its
//!    tasks stay pending: in the store, costing no process; one service in five publishes a
//!    port through the mesh, as many as the ingress network's /24 has addresses for). `scrape_ms` is the median of 20 scrapes (curl's total time, on the node),
//!    `scrape_bytes` the exposition's size.
//!
//! Writes `$SHOAL_BENCH_OUT` (default `target/bench/metrics.json`). Needs root and release
//! builds of `shoald` and `shoal` (the xtask builds them).

use std::collections::BTreeMap;

use shoal_abi::programs::XDP_MESH;
use shoal_dataplane::mesh::Mesh;
use shoal_tests::overlay::median;
use shoal_tests::swarm::Swarm;

mod common;
use common::{programmed, udp_frame};

const REPEAT: u32 = 1_000_000;
/// Fresh flows each variant's first-packet figure is the median of.
const FRESH_FLOWS: u16 = 5_000;
const ROUNDS: usize = 7;
const SERVICES: usize = 100;
const REPLICAS: usize = 10;
const SCRAPES: usize = 20;
/// One service in this many publishes a port through the mesh.
const PUBLISHED_EVERY: usize = 5;
const METRICS_PORT: u16 = 9323;

/// The established-connection figure with and without the counters.
fn counter_figures(results: &mut BTreeMap<String, f64>) {
    let mut with = programmed(Mesh::load());
    let mut without = programmed(Mesh::load_without_counters());
    let packet = udp_frame(40_000, 53);
    let run = |mesh: &mut Mesh| {
        mesh.programs()
            .test_run(XDP_MESH, &packet, REPEAT)
            .unwrap_or_else(|e| panic!("running {XDP_MESH}: {e}"))
            .per_run
            .as_nanos() as f64
    };
    // The first packet makes the connection; the figure is for the ones after it.
    run(&mut with);
    run(&mut without);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        on.push(run(&mut with));
        off.push(run(&mut without));
    }
    let (on, off) = (median(on), median(off));
    // A connection's first packet (where the per-port counters are), one run per fresh flow,
    // alternating, the median of each.
    let (mut new_on, mut new_off) = (Vec::new(), Vec::new());
    for sport in 1_000..1_000 + FRESH_FLOWS {
        let fresh = udp_frame(sport, 53);
        for (mesh, samples) in [(&mut with, &mut new_on), (&mut without, &mut new_off)] {
            samples.push(
                mesh.programs()
                    .test_run(XDP_MESH, &fresh, 1)
                    .unwrap_or_else(|e| panic!("running {XDP_MESH}: {e}"))
                    .per_run
                    .as_nanos() as f64,
            );
        }
    }
    let (new_on, new_off) = (median(new_on), median(new_off));
    println!(
        "first packet: {new_on:.0} ns with counters, {new_off:.0} ns without ({:+.0} ns)",
        new_on - new_off
    );
    results.insert("mesh_new_ns_with_counters".into(), new_on);
    results.insert("lb_new_ns_without_counters".into(), new_off);
    // The counting programs counted; the others did not.
    let counted = with.status().expect("the counters")["web"].stats.packets;
    let uncounted = without.status().expect("the counters")["web"].stats.packets;
    assert!(counted > 0, "the mesh with counters counted nothing");
    assert_eq!(uncounted, 0, "the mesh without counters counted");
    println!(
        "established packet: {on:.1} ns with counters, {off:.1} ns without ({:+.1} ns)",
        on - off
    );
    results.insert("mesh_est_ns_with_counters".into(), on);
    results.insert("lb_established_ns_per_packet".into(), off);
    results.insert("counters_ns_per_packet".into(), on - off);
}

/// The flags of benchmark service `i`: one in [`PUBLISHED_EVERY`] publishes a port (each of
/// its tasks takes an address on the ingress network, a /24 as Docker's: 200 of them).
fn flags(i: usize) -> Vec<String> {
    let mut flags: Vec<String> = [
        "service",
        "create",
        "--detach",
        "--replicas",
        &REPLICAS.to_string(),
        "--constraint",
        "node.labels.bench==nowhere",
        "--name",
        &format!("s{i}"),
    ]
    .map(str::to_owned)
    .to_vec();
    if i.is_multiple_of(PUBLISHED_EVERY) {
        flags.extend(["--publish".to_owned(), format!("{}:80", 20_000 + i)]);
    }
    flags.extend(["host".to_owned(), "true".to_owned()]);
    flags
}

fn scrape_figures(results: &mut BTreeMap<String, f64>) {
    let swarm = Swarm::up_with_daemons(
        1,
        0,
        &[],
        &["--metrics-addr", &format!("0.0.0.0:{METRICS_PORT}")],
    );
    let n1 = swarm.managers[0].clone();
    for i in 0..SERVICES {
        let args = flags(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        swarm.ok(&n1, &args);
    }
    let url = format!("http://127.0.0.1:{METRICS_PORT}/metrics");
    let scrape = || {
        let out = swarm
            .lab
            .run(
                &n1,
                "curl",
                &[
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{time_total} %{size_download}",
                    &url,
                ],
            )
            .expect("curl runs");
        assert!(out.status.success(), "curl {url}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut parts = text.split(' ');
        let seconds: f64 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .expect("curl's time");
        let bytes: f64 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .expect("curl's size");
        (seconds * 1_000.0, bytes)
    };
    // What the exposition holds: every service and task, once the orchestrator has made them
    // all (the services were created without waiting).
    let (mut services, mut tasks, mut text) = (0, 0.0, String::new());
    let complete = shoal_tests::wait_until(
        "every service and task in the exposition",
        std::time::Duration::from_secs(60),
        || {
            let body = swarm
                .lab
                .run(&n1, "curl", &["-sS", &url])
                .map_err(|e| e.to_string())?;
            text = String::from_utf8_lossy(&body.stdout).into_owned();
            services = text
                .lines()
                .filter(|l| l.starts_with("shoal_service_desired_tasks{"))
                .count();
            tasks = text
                .lines()
                .filter(|l| l.starts_with("shoal_service_tasks{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            Ok(services == SERVICES && tasks as usize == SERVICES * REPLICAS)
        },
    );
    if let Err(e) = complete {
        panic!("{e}: {services} services, {tasks} tasks:\n{text}");
    }
    scrape();
    let (mut ms, mut size) = (Vec::new(), 0.0);
    for _ in 0..SCRAPES {
        let (t, bytes) = scrape();
        ms.push(t);
        size = bytes;
    }
    let ms = median(ms);
    println!("scrape of {services} services and {tasks} tasks: {ms:.2} ms, {size} bytes");
    results.insert("scrape_ms".into(), ms);
    results.insert("scrape_bytes".into(), size);
    results.insert("scrape_services".into(), services as f64);
    results.insert("scrape_tasks".into(), tasks);
}

fn main() {
    let out = std::env::var("SHOAL_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/metrics.json").into()
    });
    let mut results = BTreeMap::new();
    counter_figures(&mut results);
    scrape_figures(&mut results);
    let cost = results["counters_ns_per_packet"];
    println!("counters cost {cost:.1} ns per established packet (aim: at most 5 ns)");
    let json = serde_json::to_string_pretty(&results).expect("figures serialize");
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).expect("the output directory");
    }
    std::fs::write(&out, json).expect("figures written");
    println!("wrote {out}");
}
