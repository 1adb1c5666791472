//! `cargo xtask bench hardening`: what Shoal's defences cost, and what attacks cost Shoal. Each
//! section measures its figures and the baseline they are compared with in the same run, and adds
//! them to one flat object written to `$SHOAL_BENCH_OUT` (default `target/bench/hardening.json`).
//! Needs root, iperf3, and release builds of `shoald`, `shoal` and `shoal-labtool` (the xtask
//! builds them).
//!
//! Sections (add one by writing a function and listing it in [`SECTIONS`]):
//! - **handshake flood**: iperf3 task to task over an encrypted overlay between n1 and n2, alone
//!   (`enc_gbps_no_flood`) and while n3 sends n2's WireGuard port 200,000 forged handshake
//!   initiations a second with a valid MAC1 (`handshake_flood_enc_gbps`); the flood rate reached
//!   and the cookie replies it drew come with them.

use serde_json::{Map, Value, json};
use shoal_tests::overlay::{Net, Overlay, Task, bench_output, iperf, write_figures};
use shoal_tests::{Lab, LabSpec, binary, output_text, wait_until};

/// The figures so far: metric name -> number.
type Figures = Map<String, Value>;

/// A section: its name, and what measures it.
type Section = (&'static str, fn(&mut Figures));

/// The sections, in the order they run.
const SECTIONS: &[Section] = &[("handshake flood", handshake_flood)];

/// Seconds of each iperf3 run.
const SECONDS: u32 = 5;
/// Forged initiations a second.
const FLOOD_RATE: u32 = 200_000;

fn main() {
    let out = bench_output("hardening");
    let mut figures = Figures::new();
    for (name, section) in SECTIONS {
        println!("== {name}");
        section(&mut figures);
    }
    write_figures(&out, &figures).expect("writing the figures");
}

fn handshake_flood(figures: &mut Figures) {
    let mut lab = Lab::up(LabSpec {
        purpose: "bench hardening".into(),
        ..LabSpec::nodes(3)
    })
    .expect("lab up");
    lab.spawn_shoald_all().expect("shoald starts in every node");
    let secret = Net {
        id: "secret",
        vni: 4097,
        octet: 20,
        encrypted: true,
    };
    let o = Overlay::new(
        &lab,
        vec![secret],
        vec![
            Task {
                name: "t1",
                node: 0,
                on: vec![("secret", 2)],
            },
            Task {
                name: "t2",
                node: 1,
                on: vec![("secret", 3)],
            },
        ],
    )
    .expect("tasks");
    o.apply_all(&lab).expect("overlays applied");
    let ip = o.ip("t2", "secret");
    let server = || o.command("t2", "iperf3");
    let client = || o.command("t1", "iperf3");
    wait_until(
        "the encrypted network",
        std::time::Duration::from_secs(20),
        || Ok(o.ping("t1", "t2", "secret", 56)),
    )
    .expect("t1 reaches t2");

    let quiet = iperf(&server, &client, ip, 1, SECONDS).expect("iperf3 runs");

    // The flood lasts the whole iperf3 run: it starts first and ends after it.
    let (n2, n3) = (lab.nodes()[1].clone(), lab.nodes()[2].clone());
    let mut flooder = n3
        .command(binary("shoal-labtool").expect("shoal-labtool is built"))
        .expect("n3's namespace");
    flooder
        .args(["wg-flood", "--kind", "valid-mac1", "--target"])
        .arg(format!("{}:51820", n2.data_ip.unwrap()))
        .args(["--public-key", &o.keys[1].public])
        .args(["--rate", &FLOOD_RATE.to_string()])
        .args(["--seconds", &(SECONDS + 3).to_string()])
        .stdout(std::process::Stdio::piped());
    let flooder = flooder.spawn().expect("shoal-labtool runs");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let flooded = iperf(&server, &client, ip, 1, SECONDS).expect("iperf3 runs under the flood");
    let out = flooder.wait_with_output().expect("the flood ends");
    assert!(out.status.success(), "wg-flood: {}", output_text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("wg-flood's report");

    println!("{:<40} {:>10}", "encrypted overlay, Gbit/s", "1 stream");
    println!("{:<40} {quiet:>10.2}", "no flood");
    println!(
        "{:<40} {flooded:>10.2}",
        format!("{} forged initiations/s", report["pps"])
    );
    println!(
        "kept {:.0} % of the throughput; {} cookie replies",
        100.0 * flooded / quiet,
        report["cookie_replies"]
    );
    figures.insert("enc_gbps_no_flood".into(), json!(quiet));
    figures.insert("handshake_flood_enc_gbps".into(), json!(flooded));
    figures.insert("handshake_flood_kept".into(), json!(flooded / quiet));
    figures.insert("handshake_flood_pps".into(), report["pps"].clone());
    figures.insert(
        "handshake_flood_cookie_replies".into(),
        report["cookie_replies"].clone(),
    );
    lab.down().expect("lab down");
}
