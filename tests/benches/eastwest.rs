//! `cargo xtask bench eastwest`: what translating a connection at the socket costs, the
//! mechanism Shoal's node-local clients use today and service VIPs are to use (one translation per
//! `connect`, no NAT on the packets), against connecting to the same task directly.
//!
//! On a 3-node lab, a service `one` publishes 8090 with a single task (`web3`, on n2). From n1's
//! own namespace:
//! - `sock_lb_conn_per_s`: new TCP connections per second (connect, HTTP GET, close; 16 at a
//!   time) to `127.0.0.1:8090`, which the cgroup `connect4` program sends to `web3`;
//!   `direct_conn_per_s`: the same to `web3`'s ingress address and port 80.
//! - `sock_lb_rr_us` and `direct_rr_us`: the median round trip of one line on one connection
//!   (10,000 of them), and the 99th percentile (`*_rr_p99_us`).
//!
//! Each is measured three times, the two paths alternating; the figure is the median.
//! Goals (issue Data plane III): conn/s through the translation ≥ 0.9 × direct, request latency
//! ≤ 1.05 × direct.
//!
//! Writes `$SHOAL_BENCH_OUT` (default `target/bench/eastwest.json`). Needs root and release
//! builds of `shoald`, `shoal` and `shoal-labtool` (the xtask builds them).

use serde_json::{Map, Value, json};
use shoal_tests::mesh::{INGRESS, Mesh, Service, labtool};
use shoal_tests::overlay::write_figures;
use shoal_tests::{Lab, LabSpec};

const TASKS: &[(&str, usize, u8)] = &[("web1", 0, 11), ("web3", 1, 13), ("web5", 2, 15)];
const ROUNDS: usize = 3;

fn json_of(output: &[u8]) -> Value {
    let text = String::from_utf8_lossy(output);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("{}");
    serde_json::from_str(line).unwrap_or(Value::Null)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Connections per second from n1 to `target`.
fn conn_rate(lab: &Lab, target: &str) -> f64 {
    let out = labtool(
        &lab.nodes()[0],
        &[
            "tcp-rate",
            "--target",
            target,
            "--seconds",
            "5",
            "--concurrency",
            "16",
        ],
    )
    .expect("tcp-rate runs");
    let v = json_of(&out.stdout);
    eprintln!("tcp-rate {target}: {v}");
    assert_eq!(v["errors"], 0, "{v}");
    v["per_s"].as_f64().unwrap_or(0.0)
}

/// Median and 99th percentile round trip (µs) on one connection from n1 to `target`.
fn round_trip(lab: &Lab, target: &str) -> (f64, f64) {
    let out = labtool(
        &lab.nodes()[0],
        &["tcp-rr", "--target", target, "--count", "10000"],
    )
    .expect("tcp-rr runs");
    let v = json_of(&out.stdout);
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
    mesh.apply_all(&lab).expect("mesh applied");
    mesh.wait_ready().expect("responders");
    let translated = "127.0.0.1:8090".to_owned();
    let direct = format!("{}:80", mesh.overlay.ip("web3", INGRESS.id));
    // Both answer before anything is counted.
    for target in [&translated, &direct] {
        let out = labtool(
            &lab.nodes()[0],
            &["ask", "--target", target, "--count", "3"],
        )
        .expect("ask runs");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("web3"),
            "{target}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let (mut lb_conn, mut direct_conn) = (Vec::new(), Vec::new());
    let (mut lb_rr, mut direct_rr, mut lb_p99, mut direct_p99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        lb_conn.push(conn_rate(&lab, &translated));
        direct_conn.push(conn_rate(&lab, &direct));
        let (p50, p99) = round_trip(&lab, &translated);
        lb_rr.push(p50);
        lb_p99.push(p99);
        let (p50, p99) = round_trip(&lab, &direct);
        direct_rr.push(p50);
        direct_p99.push(p99);
    }
    let mut figures = Map::new();
    for (name, values) in [
        ("sock_lb_conn_per_s", lb_conn),
        ("direct_conn_per_s", direct_conn),
        ("sock_lb_rr_us", lb_rr),
        ("direct_rr_us", direct_rr),
        ("sock_lb_rr_p99_us", lb_p99),
        ("direct_rr_p99_us", direct_p99),
    ] {
        figures.insert(name.into(), json!(median(values)));
    }
    let ratio =
        |a: &str, b: &str| figures[a].as_f64().unwrap_or(0.0) / figures[b].as_f64().unwrap_or(1.0);
    let conn_ratio = ratio("sock_lb_conn_per_s", "direct_conn_per_s");
    let rr_ratio = ratio("sock_lb_rr_us", "direct_rr_us");
    figures.insert("sock_lb_conn_ratio".into(), json!(conn_ratio));
    figures.insert("sock_lb_rr_ratio".into(), json!(rr_ratio));
    println!("\neastwest (median of {ROUNDS} alternating runs; from n1 to one task on n2)");
    println!("{:<24} {:>14} {:>14}", "", "translated", "direct");
    for (label, a, b) in [
        ("connections/s", "sock_lb_conn_per_s", "direct_conn_per_s"),
        ("round trip p50 (µs)", "sock_lb_rr_us", "direct_rr_us"),
        (
            "round trip p99 (µs)",
            "sock_lb_rr_p99_us",
            "direct_rr_p99_us",
        ),
    ] {
        println!(
            "{label:<24} {:>14.1} {:>14.1}",
            figures[a].as_f64().unwrap_or(0.0),
            figures[b].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "conn/s ratio {conn_ratio:.3} (goal ≥ 0.9), latency ratio {rr_ratio:.3} (goal ≤ 1.05)"
    );
    let out = std::path::PathBuf::from(out);
    write_figures(&out, &figures).expect("figures written");
    println!("wrote {}", out.display());
}
