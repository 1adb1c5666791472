//! `cargo xtask bench parser`: ns per packet of the XDP parser and, in the same run, of a program
//! that only returns XDP_PASS (the floor), both through BPF_PROG_TEST_RUN (the kernel's average
//! over `REPEAT` runs, in whole nanoseconds) on a 60-byte frame (the Ethernet minimum). Each
//! round runs every case once, in turn; a figure is the median of its `ROUNDS` rounds. Writes
//! `$SHOAL_BENCH_OUT` (default `target/bench/parser.json`).
//!
//! Needs root (CAP_BPF).

#[path = "../tests/support/mod.rs"]
#[expect(
    dead_code,
    reason = "the bench builds a few frames with the fixtures' builders"
)]
mod support;

use std::{collections::BTreeMap, env, fs, path::PathBuf};

use shoal_abi::{
    programs::{XDP_PARSE, XDP_PASS},
    wire::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP},
};
use shoal_dataplane::bpf::Programs;
use support::packets::{Layer, eth, ipv4, ipv6, payload, tcp, udp, vlan};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;

fn frame(layers: Vec<Layer>) -> Vec<u8> {
    let mut bytes: Vec<u8> = layers.into_iter().flat_map(|l| l.bytes).collect();
    // Pad to the 60-byte Ethernet minimum (64 with the FCS the NIC strips).
    if bytes.len() < 60 {
        bytes.resize(60, 0);
    }
    bytes
}

/// One BPF_PROG_TEST_RUN of `REPEAT` runs: the kernel's average, in whole nanoseconds.
fn ns_per_packet(programs: &mut Programs, name: &'static str, packet: &[u8]) -> f64 {
    programs
        .test_run(name, packet, REPEAT)
        .unwrap_or_else(|e| panic!("running {name}: {e} (the bench needs root)"))
        .per_run
        .as_nanos() as f64
}

fn main() {
    let mut programs =
        Programs::load().unwrap_or_else(|e| panic!("loading the eBPF object: {e} (needs root)"));
    let tcp4 = frame(vec![
        eth(ETH_P_IP),
        ipv4(IPPROTO_TCP, &[], 0),
        tcp(&[]),
        payload(b"GET /"),
    ]);
    let udp6 = frame(vec![eth(ETH_P_IPV6), ipv6(IPPROTO_UDP), udp()]);
    let vlan_udp4 = frame(vec![
        eth(ETH_P_8021Q),
        vlan(100, ETH_P_IP),
        ipv4(IPPROTO_UDP, &[], 0),
        udp(),
    ]);
    let cases: [(&str, &'static str, &[u8]); 5] = [
        ("xdp_pass_ns_per_packet", XDP_PASS, &tcp4),
        ("parser_ns_per_packet", XDP_PARSE, &tcp4),
        ("xdp_pass_udp6_ns_per_packet", XDP_PASS, &udp6),
        ("parser_udp6_ns_per_packet", XDP_PARSE, &udp6),
        ("parser_vlan_udp4_ns_per_packet", XDP_PARSE, &vlan_udp4),
    ];

    // Every round runs every case once, so drift on the machine hits all of them alike.
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..ROUNDS {
        for (key, program, packet) in &cases {
            let ns = ns_per_packet(&mut programs, program, packet);
            samples.entry(key).or_default().push(ns);
        }
    }
    let results: BTreeMap<&str, f64> = samples
        .into_iter()
        .map(|(key, mut ns)| {
            ns.sort_by(f64::total_cmp);
            (key, ns[ROUNDS / 2])
        })
        .collect();

    println!(
        "{:<34} {:>10}   (BPF_PROG_TEST_RUN, {REPEAT} repeats, median of {ROUNDS} rounds)",
        "metric", "ns/packet"
    );
    for (key, ns) in &results {
        println!("{key:<34} {ns:>10.1}");
    }
    println!(
        "parser cost above the XDP_PASS floor: {:.1} ns/packet",
        results["parser_ns_per_packet"] - results["xdp_pass_ns_per_packet"]
    );

    let out = env::var_os("SHOAL_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/parser.json")
        });
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).expect("creating the bench output directory");
    }
    let json = serde_json::to_string_pretty(&results).expect("serialising the results");
    fs::write(&out, json + "\n").unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    println!("wrote {}", out.display());
}
