//! `cargo xtask bench parser`: ns per packet of the XDP parser and, in the same run, of a program
//! that only returns XDP_PASS (the floor), both through BPF_PROG_TEST_RUN (the kernel's average
//! over `REPEAT` runs). Rounds alternate between the programs so drift hits both alike; the
//! figure is the median round. Writes `$SHOAL_BENCH_OUT` (default `target/bench/parser.json`).
//!
//! Needs root (CAP_BPF).

#[path = "../tests/support/mod.rs"]
#[expect(
    dead_code,
    reason = "the bench builds a few frames with the fixtures' builders"
)]
mod support;

use std::{collections::BTreeMap, env, fs, path::PathBuf, time::Duration};

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

fn median_ns(programs: &mut Programs, name: &'static str, packet: &[u8]) -> f64 {
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            programs
                .test_run(name, packet, REPEAT)
                .unwrap_or_else(|e| panic!("running {name}: {e} (the bench needs root)"))
                .per_run
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2].as_secs_f64() * 1e9
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
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "parser_udp6_ns_per_packet",
            frame(vec![eth(ETH_P_IPV6), ipv6(IPPROTO_UDP), udp()]),
        ),
        (
            "parser_vlan_udp4_ns_per_packet",
            frame(vec![
                eth(ETH_P_8021Q),
                vlan(100, ETH_P_IP),
                ipv4(IPPROTO_UDP, &[], 0),
                udp(),
            ]),
        ),
        (
            "xdp_pass_udp6_ns_per_packet",
            frame(vec![eth(ETH_P_IPV6), ipv6(IPPROTO_UDP), udp()]),
        ),
    ];

    let mut results = BTreeMap::new();
    // Alternate the floor and the parser on the same 64-byte TCP/IPv4 frame.
    let mut pass = Vec::new();
    let mut parse = Vec::new();
    for _ in 0..3 {
        pass.push(median_ns(&mut programs, XDP_PASS, &tcp4));
        parse.push(median_ns(&mut programs, XDP_PARSE, &tcp4));
    }
    pass.sort_by(f64::total_cmp);
    parse.sort_by(f64::total_cmp);
    results.insert("xdp_pass_ns_per_packet", pass[1]);
    results.insert("parser_ns_per_packet", parse[1]);
    for (key, packet) in &cases {
        let program = if key.starts_with("xdp_pass") {
            XDP_PASS
        } else {
            XDP_PARSE
        };
        results.insert(key, median_ns(&mut programs, program, packet));
    }

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
