//! `cargo xtask bench mesh`: the routing mesh, one run.
//!
//! 1. Through BPF_PROG_TEST_RUN (the kernel's own timing, nothing attached): the first packet of
//!    a connection (`lb_new_ns_per_packet`, median over fresh flows, one run each, with the
//!    XDP_PASS floor measured the same way as `xdp_pass_single_ns_per_packet`), a packet of an
//!    established connection (`lb_established_ns_per_packet`, 1,000,000 repeats) and XDP_PASS
//!    (`xdp_pass_ns_per_packet`, same repeats), each the median of 7 rounds.
//! 2. End to end on a 3-node lab with six backends (two per node), the client sending to n1:
//!    new TCP connections per second (connect, HTTP GET, close; 16 at a time) and 18-byte UDP
//!    datagrams per second received by the backends (64 flows), through the mesh, through an
//!    nftables DNAT + masquerade configuration of the same topology on n1 (`nft_*`), and (TCP)
//!    through a userspace proxy on n1 (`proxy_tcp_conn_per_s`). For UDP, also the rate n1's
//!    balancing stage passed datagrams on at (`*_udp_forwarded_pps`: the mesh's counter, the
//!    nftables rule's counter), to show where the rest were lost. The same load generator
//!    (`shoal-labtool`) drives all of them; each path has its own target ports on the backends,
//!    so no path meets another's leftovers.
//!
//! 3. The entry node alone (`mesh_entry_pps`, `nft_entry_pps`): UDP frames built once (64 flows)
//!    are sent straight into n1's public interface from its switch port at the highest rate the
//!    kernel's own generator reaches (BPF_PROG_TEST_RUN live frames, one core), to a service whose
//!    four backends all live on n2 and n3; what n1 forwards is counted and dropped by an XDP
//!    program on the switch port of n1's data interface, the first hop after it, before any
//!    backend or sink costs CPU. The same for the mesh and for nftables DNAT (to the same four
//!    backends, routed into the ingress network's VXLAN device); `*_entry_sent_pps` is what the
//!    generator offered.
//!
//! The lab's links are wire-like (`Lab::wire_like_nics`: XDP carries every balanced packet);
//! `SHOAL_BENCH_LINKS=plain` keeps them plain veth pairs (the TC entry carries them), and
//! `wire_like_links` in the output says which.
//!
//! Writes `$SHOAL_BENCH_OUT` (default `target/bench/mesh.json`). Needs root and release builds
//! of `shoald`, `shoal` and `shoal-labtool` (the xtask builds them).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use aya::programs::XdpMode;
use serde_json::{Value, json};
use shoal_abi::bench::TxFrame;
use shoal_abi::programs::{XDP_BENCH_SINK, XDP_BENCH_TX, XDP_MESH, XDP_PASS};
use shoal_dataplane::bpf::Programs as Object;
use shoal_dataplane::mesh::Mesh as Programs;
use shoal_tests::mesh::{INGRESS, Mesh, Service, labtool};
use shoal_tests::overlay::{last_json, median};
use shoal_tests::{Lab, LabSpec, binary};

mod common;
use common::{programmed, udp_frame};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;
const FRESH_FLOWS: u16 = 20_000;
const SECONDS: &str = "5";
const BACKENDS: [&str; 6] = ["web1", "web2", "web3", "web4", "web5", "web6"];
/// The backends not on n1 (two per node are placed in order: web1 and web2 are n1's).
const REMOTE_BACKENDS: [&str; 4] = ["web3", "web4", "web5", "web6"];

fn test_run_figures() -> BTreeMap<String, f64> {
    let mut mesh = programmed(Programs::load());
    let established = udp_frame(40_000, 53);
    // The figure is XDP's own path: the packet is redirected, not left to TC.
    let first = mesh.programs().test_run(XDP_MESH, &established, 1);
    assert_eq!(
        first.map(|r| r.verdict).ok(),
        Some(shoal_dataplane::bpf::XdpVerdict::Redirect)
    );
    let mut run = |name: &'static str, packet: &[u8], repeat: u32| {
        mesh.programs()
            .test_run(name, packet, repeat)
            .unwrap_or_else(|e| panic!("running {name}: {e}"))
            .per_run
            .as_nanos() as f64
    };
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut sport = 1_000_u16;
    for _ in 0..ROUNDS {
        samples
            .entry("xdp_pass_ns_per_packet")
            .or_default()
            .push(run(XDP_PASS, &established, REPEAT));
        samples
            .entry("lb_established_ns_per_packet")
            .or_default()
            .push(run(XDP_MESH, &established, REPEAT));
        let (mut new, mut pass) = (Vec::new(), Vec::new());
        for _ in 0..FRESH_FLOWS / ROUNDS as u16 {
            sport = sport.wrapping_add(1).max(1_000);
            let fresh = udp_frame(sport, 53);
            new.push(run(XDP_MESH, &fresh, 1));
            pass.push(run(XDP_PASS, &fresh, 1));
        }
        samples
            .entry("lb_new_ns_per_packet")
            .or_default()
            .push(median(new));
        samples
            .entry("xdp_pass_single_ns_per_packet")
            .or_default()
            .push(median(pass));
    }
    samples
        .into_iter()
        .map(|(k, v)| (k.to_owned(), median(v)))
        .collect()
}

/// Flows (UDP source ports from 20000) the entry figure's generator rotates over.
const ENTRY_FLOWS: u16 = 64;
/// Frames per live-frames call.
const ENTRY_REPEAT: u32 = 262_144;
/// Frames per batch the generator hands the device.
const ENTRY_BATCH: u32 = 64;

/// The MAC address of `host`'s interface `name`.
fn mac_of(lab: &Lab, host: &shoal_tests::Host, name: &str) -> [u8; 6] {
    let out = lab
        .run(host, "cat", &[&format!("/sys/class/net/{name}/address")])
        .expect("cat runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("a MAC address"))
        .collect();
    bytes.try_into().expect("six bytes")
}

/// An Ethernet/IPv4/UDP frame of 60 bytes (18 bytes of payload starting with 0x00, as
/// `udp-flood` sends) with a correct IPv4 checksum and no UDP checksum.
fn wire_frame(
    (dmac, smac): ([u8; 6], [u8; 6]),
    (src, dst): (Ipv4Addr, Ipv4Addr),
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let check = !(((folded & 0xffff) + (folded >> 16)) as u16);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 26, 0, 0]);
    f.resize(60, 0);
    f
}

/// The entry node alone (see the crate doc, 3.): frames to `n1:port` sent for [`SECONDS`] from
/// n1's switch port, counted where they leave n1. Returns (offered, forwarded) packets per
/// second.
fn entry_rate(lab: &Lab, port: u16) -> (f64, f64) {
    let n1 = &lab.nodes()[0];
    let client = lab.client();
    let macs = (
        mac_of(lab, n1, n1.public_if()),
        mac_of(lab, client, client.public_if()),
    );
    let frame = TxFrame {
        bytes: wire_frame(macs, (client.public_ip, n1.public_ip), 20_000, port)
            .try_into()
            .expect("a frame of FRAME_LEN bytes"),
        flows: ENTRY_FLOWS,
        pad: 0,
    };
    let (into_n1, out_of_n1) = (format!("p-{}", n1.name), format!("d-{}", n1.name));
    let mut programs = Object::load().expect("the eBPF object loads (needs root)");
    programs
        .set_bench_frame(&frame)
        .expect("the generator's frame");
    let sink = shoal_tests::within(lab.switch(), || {
        programs
            .xdp(XDP_BENCH_SINK)
            .map_err(std::io::Error::other)?
            .attach(&out_of_n1, XdpMode::Driver)
            .map_err(std::io::Error::other)
    })
    .unwrap_or_else(|e| panic!("the sink on {out_of_n1}: {e}"));
    let before = programs.bench_sink_packets().expect("sink count");
    let seconds = SECONDS.parse::<u64>().expect("seconds");
    let (sent, elapsed) = shoal_tests::within(lab.switch(), || {
        let ifindex = nix::net::if_::if_nametoindex(into_n1.as_str())?;
        let start = std::time::Instant::now();
        let mut sent = 0_u64;
        while start.elapsed() < Duration::from_secs(seconds) {
            programs
                .send_live(
                    XDP_BENCH_TX,
                    ifindex,
                    &frame.bytes,
                    ENTRY_REPEAT,
                    ENTRY_BATCH,
                )
                .map_err(std::io::Error::other)?;
            sent += u64::from(ENTRY_REPEAT);
        }
        Ok((sent, start.elapsed().as_secs_f64()))
    })
    .unwrap_or_else(|e| panic!("sending into {into_n1}: {e}"));
    // What is still on its way (there is little: the generator's core forwards each batch).
    std::thread::sleep(Duration::from_millis(200));
    let forwarded = programs.bench_sink_packets().expect("sink count") - before;
    programs
        .xdp(XDP_BENCH_SINK)
        .expect("the sink is loaded")
        .detach(sink)
        .expect("the sink detaches");
    eprintln!("entry {port}: sent {sent} in {elapsed:.2} s, forwarded {forwarded}");
    (sent as f64 / elapsed, forwarded as f64 / elapsed)
}

/// Starts `shoal-labtool ARGS` in a task; waits for its first line (it is listening).
fn start_in_task(mesh: &Mesh, task: &str, args: &[&str]) -> Child {
    let mut child = mesh
        .overlay
        .command(
            task,
            &binary("shoal-labtool").expect("built").to_string_lossy(),
        )
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("labtool starts");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().expect("piped")),
        &mut line,
    )
    .expect("labtool says it listens");
    child
}

/// TCP connections per second from the client to `n1:port`.
fn tcp_rate(lab: &Lab, port: u16) -> f64 {
    let target = format!("{}:{port}", lab.nodes()[0].public_ip);
    let out = labtool(
        lab.client(),
        &[
            "tcp-rate",
            "--target",
            &target,
            "--seconds",
            SECONDS,
            "--concurrency",
            "16",
        ],
    )
    .expect("tcp-rate runs");
    let v = last_json(&out.stdout);
    eprintln!("tcp-rate {target}: {v}");
    v["per_s"].as_f64().unwrap_or(0.0)
}

/// Packets n1's balancing stage passed on so far: the mesh's counter for `sink`, or the packet
/// counter of the forward chain's UDP rule (the NAT chains see only a flow's first packet).
fn forwarded(lab: &Lab, nft: bool) -> f64 {
    let n1 = &lab.nodes()[0];
    if nft {
        let out = lab
            .run(
                n1,
                "nft",
                &["-j", "list", "chain", "ip", "shoal_bench", "forwarded"],
            )
            .expect("nft runs");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["rule"]["expr"].as_array())
            .flatten()
            .filter_map(|e| e["counter"]["packets"].as_f64())
            .sum()
    } else {
        let out = lab
            .shoal(n1, &["dataplane", "inspect"])
            .expect("inspect runs");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["mesh"]["services"]["sink"]["packets"]
            .as_f64()
            .unwrap_or(0.0)
    }
}

/// Datagrams per second the backends receive from a flood at `n1:port` (sinks on `target`),
/// and the rate n1's balancing stage passed them on at.
fn udp_rate(lab: &Lab, mesh: &Mesh, port: u16, target: u16, nft: bool) -> (f64, f64) {
    let target_s = target.to_string();
    let sinks: Vec<Child> = BACKENDS
        .iter()
        .map(|b| {
            start_in_task(
                mesh,
                b,
                &[
                    "udp-sink",
                    "--port",
                    &target_s,
                    "--idle-ms",
                    "1000",
                    "--max-seconds",
                    "30",
                ],
            )
        })
        .collect();
    let to = format!("{}:{port}", lab.nodes()[0].public_ip);
    let before = forwarded(lab, nft);
    let flood = labtool(
        lab.client(),
        &[
            "udp-flood",
            "--target",
            &to,
            "--seconds",
            SECONDS,
            "--flows",
            "64",
        ],
    )
    .expect("flood runs");
    eprintln!("udp-flood {to}: {}", last_json(&flood.stdout));
    let mut received = 0.0;
    for sink in sinks {
        let out = sink.wait_with_output().expect("sink ends");
        received += last_json(&out.stdout)["packets"].as_f64().unwrap_or(0.0);
    }
    let seconds = SECONDS.parse::<f64>().expect("seconds");
    (received / seconds, (forwarded(lab, nft) - before) / seconds)
}

fn main() {
    let out = std::env::var("SHOAL_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/mesh.json").into()
    });
    let mut results = test_run_figures();

    let mut lab = Lab::up(LabSpec {
        purpose: "bench mesh".into(),
        ..LabSpec::nodes(3)
    })
    .expect("lab up");
    // Wire-like links, where XDP carries every balanced packet; `SHOAL_BENCH_LINKS=plain`
    // measures the plain veth links of a new user's rig, where the TC entry carries them.
    let wire_like = lab.bench_links().unwrap_or_else(|e| panic!("{e}"));
    results.insert("wire_like_links".into(), f64::from(u8::from(wire_like)));
    lab.spawn_shoald_all().expect("shoald starts in every node");
    let tasks: Vec<(&'static str, usize, u8)> = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, name)| (*name, i / 2, 11 + i as u8))
        .collect();
    let mesh = Mesh::new(
        &mut lab,
        &tasks,
        vec![
            Service {
                name: "web",
                ports: vec![json!({ "published": 8080, "target": 80 })],
                backends: BACKENDS.to_vec(),
                client_ip: "snat",
            },
            Service {
                name: "sink",
                ports: vec![json!({ "published": 9000, "target": 9, "protocol": "udp" })],
                backends: BACKENDS.to_vec(),
                client_ip: "snat",
            },
            // The entry figure's: only n2's and n3's tasks, so all of it leaves through n1's
            // data interface.
            Service {
                name: "entry",
                ports: vec![json!({ "published": 9100, "target": 11, "protocol": "udp" })],
                backends: REMOTE_BACKENDS.to_vec(),
                client_ip: "snat",
            },
        ],
    )
    .expect("tasks");
    mesh.apply_all(&lab).expect("mesh applied");
    mesh.wait_ready().expect("responders");
    // The other paths' responders: nftables targets :81, the proxy :82.
    for b in BACKENDS {
        for port in ["81", "82"] {
            let mut serve = mesh.overlay.command(
                b,
                &binary("shoal-labtool").expect("built").to_string_lossy(),
            );
            serve
                .args(["serve", "--name", b, "--port", port])
                .stdout(Stdio::null());
            lab.spawn(serve).expect("responder starts");
        }
    }

    // nftables on n1: DNAT the published ports to the backends, masquerade out of shoal0.
    let n1 = lab.nodes()[0].clone();
    // An nftables map `index : address` over `backends`.
    let map_of = |backends: &[&str]| {
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i} : {}", mesh.overlay.ip(b, INGRESS.id)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (map, remote) = (map_of(&BACKENDS), map_of(&REMOTE_BACKENDS));
    let ruleset = format!(
        "table ip shoal_bench {{
  chain pre {{
    type nat hook prerouting priority dstnat;
    tcp dport 8081 dnat to numgen inc mod 6 map {{ {map} }} : 81
    udp dport 9001 dnat to jhash ip saddr . udp sport mod 6 map {{ {map} }} : 10
    udp dport 9101 dnat to jhash ip saddr . udp sport mod 4 map {{ {remote} }} : 11
  }}
  chain forwarded {{
    type filter hook forward priority filter;
    udp dport 10 counter
  }}
  chain post {{
    type nat hook postrouting priority srcnat;
    oifname \"shoal0\" masquerade
  }}
}}
"
    );
    let rules = lab.dir().join("nft-bench.conf");
    std::fs::write(&rules, ruleset).expect("ruleset");
    for (program, args) in [
        ("sysctl", vec!["-qw", "net.ipv4.ip_forward=1"]),
        ("nft", vec!["-f", rules.to_str().expect("path")]),
    ] {
        let o = lab.run(&n1, program, &args).expect("runs");
        assert!(
            o.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The userspace proxy on n1.
    let backends_82: Vec<String> = BACKENDS
        .iter()
        .map(|b| format!("{}:82", mesh.overlay.ip(b, INGRESS.id)))
        .collect();
    let mut proxy = n1
        .command(binary("shoal-labtool").expect("built"))
        .expect("command");
    proxy
        .args([
            "tcp-proxy",
            "--listen",
            "0.0.0.0:8082",
            "--backends",
            &backends_82.join(","),
        ])
        .stdout(Stdio::null());
    lab.spawn(proxy).expect("proxy starts");
    // Give the proxy and the responders a moment to listen.
    std::thread::sleep(Duration::from_millis(500));

    // Each path in turn, the baselines first.
    for (key, figure) in [
        ("nft_tcp_conn_per_s", tcp_rate(&lab, 8081)),
        ("proxy_tcp_conn_per_s", tcp_rate(&lab, 8082)),
        ("mesh_tcp_conn_per_s", tcp_rate(&lab, 8080)),
    ] {
        results.insert(key.to_owned(), figure.round());
    }
    for (path, port, target, nft) in [("nft", 9001, 10, true), ("mesh", 9000, 9, false)] {
        let (received, passed_on) = udp_rate(&lab, &mesh, port, target, nft);
        results.insert(format!("{path}_udp_pps"), received.round());
        results.insert(format!("{path}_udp_forwarded_pps"), passed_on.round());
    }
    for (path, port) in [("nft", 9101), ("mesh", 9100)] {
        let (offered, forwarded) = entry_rate(&lab, port);
        results.insert(format!("{path}_entry_sent_pps"), offered.round());
        results.insert(format!("{path}_entry_pps"), forwarded.round());
    }
    for (key, mesh_key, nft_key) in [
        ("mesh_over_nft_udp", "mesh_udp_pps", "nft_udp_pps"),
        (
            "mesh_over_nft_tcp",
            "mesh_tcp_conn_per_s",
            "nft_tcp_conn_per_s",
        ),
        ("mesh_over_nft_entry", "mesh_entry_pps", "nft_entry_pps"),
    ] {
        let ratio = results[mesh_key] / results[nft_key].max(1.0);
        results.insert(key.into(), (ratio * 100.0).round() / 100.0);
    }

    println!("{:<32} {:>12}", "metric", "value");
    for (k, v) in &results {
        println!("{k:<32} {v:>12.1}");
    }
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).expect("bench directory");
    }
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&results).expect("JSON") + "\n",
    )
    .unwrap_or_else(|e| panic!("writing {out}: {e}"));
    println!("wrote {out}");
    lab.down().expect("lab down");
}
