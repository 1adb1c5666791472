//! `cargo xtask bench overlay`: iperf3 task-to-task across two lab nodes, one run, four paths:
//! the raw underlay (node to node on the data network), a plain overlay, an encrypted overlay,
//! and stock `boringtun-cli` between the same two nodes; 1 and 4 streams each. Writes the
//! figures (Gbit/s) to `$SHOAL_BENCH_OUT`. Needs root, iperf3, and release builds of `shoald`,
//! `shoal` and `boringtun-cli` (the xtask builds and installs them).
//!
//! Also, for each path, the TCP segments the 1-stream run retransmitted (`<path>_retransmits`),
//! and `crypto_limit_gbps`: what one core does with boringtun's `Tunn` alone, in-process,
//! encapsulating and decapsulating 1,420-byte packets between two peers (the ceiling of a
//! one-stream encrypted path that encrypts on one core and decrypts on another).
//!
//! Then the encrypted path again: with iperf3's two ends pinned and the engines not
//! (`encrypted_apps_*`), which tells reordering by a moving application from reordering by the
//! engine; with each engine's I/O threads pinned (`wireguard.cpus`, `shoald --wireguard-cpus`):
//! `encrypted_pinned_gbps`, `encrypted_pinned_retransmits`, and their ratios to `boringtun-cli`
//! and to the crypto limit; and with both pinned (`encrypted_pinned_apps_*`).
//!
//! Last, `plain_steered_*` and `encrypted_steered_*`: the engines unpinned again and every
//! task veth steering what its task sends by flow (RPS over this process's CPUs, which Shoal
//! does not set): what the task's own veth reorders (its socket sends from two CPUs at once)
//! is then gone, and what is left is the rest of the path's.
//!
//! Why segments were sent again, from the kernel's counters around each 1-stream run:
//! `<path>_spurious_retransmits` (retransmitted segments the receiver reported it already had,
//! by D-SACK: reordering, not loss), `<path>_udp_drops` (datagrams the two nodes' UDP sockets
//! dropped for a full receive buffer: the WireGuard engines' and `boringtun-cli`'s), and
//! `<path>_reordered` (segments the receiving task's TCP queued out of order, `TCPOFOQueue`:
//! reordering on the way, or a loss; it counts reordering too small to cause a retransmit) and
//! `<path>_timeouts` (retransmission timeouts the sender took, `TCPTimeouts`: a path that
//! stalled, not one that reordered).
//!
//! The lab's links are wire-like (`Lab::wire_like_nics`), as `cargo xtask bench mesh` and the
//! demo have them; `SHOAL_BENCH_LINKS=plain` keeps plain veth pairs, and `wire_like_links` in
//! the output says which. The overlays' packets take the same way on both: a veth hands a
//! packet to the receiver's NAPI ring only when it was redirected by XDP or GRO can merge it
//! (not a TSO packet, nor UDP without `rx-udp-gro-forwarding` on the receiver); everything
//! else goes to the backlog queue of the CPU that sent it.
//!
//! `SHOAL_BENCH_PATHS=encrypted,plain` runs only those paths and prints their rows, without
//! the ratios and without writing the figures: for repeating one path while working on it.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Map, json};
use shoal_dataplane::overlay::Key;
use shoal_tests::overlay::{
    Overlay, Task, apply_each, bench_output, iperf_run, kernel_counters, plain_and_secret,
    write_figures,
};
use shoal_tests::{Lab, LabSpec, wait_until};

const SECONDS: u32 = 5;

/// Packets each side of [`crypto_limit_gbps`] handles.
const CRYPTO_PACKETS: usize = 200_000;
/// The packet size of [`crypto_limit_gbps`]: a full inner packet under a 1,500-byte MTU.
const CRYPTO_PACKET: usize = 1_420;

/// Gbit/s of inner packets one core encapsulates and decapsulates with boringtun's `Tunn` (a
/// handshake first, then [`CRYPTO_PACKETS`] packets of [`CRYPTO_PACKET`] bytes each way through
/// encapsulate then decapsulate): both halves are counted, so this is the rate one core keeps
/// up with one direction of traffic when it does both.
fn crypto_limit_gbps() -> f64 {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};
    let (a_secret, b_secret) = (StaticSecret::random(), StaticSecret::random());
    let (a_public, b_public) = (PublicKey::from(&a_secret), PublicKey::from(&b_secret));
    let mut a = Tunn::new(a_secret, b_public, None, None, 1, None);
    let mut b = Tunn::new(b_secret, a_public, None, None, 2, None);
    let mut wire = vec![0u8; 2048];
    let mut back = vec![0u8; 2048];
    // The handshake: initiation to b, response to a.
    let initiation = match a.format_handshake_initiation(&mut wire, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no handshake initiation"),
    };
    let response = match b.decapsulate(None, &initiation, &mut back) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no handshake response"),
    };
    let _ = a.decapsulate(None, &response, &mut back);
    // A valid IPv4 packet (Tunn reads its header): 10.0.0.1 -> 10.0.0.2, UDP.
    let mut packet = vec![0u8; CRYPTO_PACKET];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(CRYPTO_PACKET as u16).to_be_bytes());
    packet[8] = 64;
    packet[9] = 17;
    packet[12..16].copy_from_slice(&[10, 0, 0, 1]);
    packet[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let started = std::time::Instant::now();
    for _ in 0..CRYPTO_PACKETS {
        let sealed = match a.encapsulate(&packet, &mut wire) {
            TunnResult::WriteToNetwork(p) => p.len(),
            other => panic!("encapsulate: {other:?}"),
        };
        match b.decapsulate(None, &wire[..sealed], &mut back) {
            TunnResult::WriteToTunnelV4(p, _) => assert_eq!(p.len(), CRYPTO_PACKET),
            other => panic!("decapsulate: {other:?}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    (CRYPTO_PACKETS * CRYPTO_PACKET * 8) as f64 / seconds / 1e9
}

fn main() {
    let out = bench_output("overlay");
    let crypto_limit = crypto_limit_gbps();
    println!("crypto limit (one core, Tunn encapsulate + decapsulate): {crypto_limit:.2} Gbit/s");
    let mut lab = Lab::up(LabSpec {
        purpose: "bench overlay".into(),
        ..LabSpec::nodes(2)
    })
    .expect("lab up");
    // Wire-like links unless `SHOAL_BENCH_LINKS=plain` (see the module's doc).
    let wire_like = lab.bench_links().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "links: {}",
        if wire_like {
            "wire-like"
        } else {
            "plain veth pairs"
        }
    );
    lab.spawn_shoald_all().expect("shoald starts in every node");
    let o = Overlay::new(
        &lab,
        plain_and_secret(),
        vec![
            Task {
                name: "t1",
                node: 0,
                on: vec![("plain", 2), ("secret", 2)],
            },
            Task {
                name: "t2",
                node: 1,
                on: vec![("plain", 3), ("secret", 3)],
            },
        ],
    )
    .expect("tasks");
    o.apply_all(&lab).expect("overlays applied");
    let boringtun = BoringtunCli::start(&mut lab);

    let (n1, n2) = (lab.nodes()[0].clone(), lab.nodes()[1].clone());
    // Where each path's iperf3 server and client run.
    let on_node = |host: &shoal_tests::Host, program: &str| {
        host.command(program).expect("the node's namespace")
    };
    let in_task = |task: &str, program: &str| o.command(task, program);
    // A command in the namespace of one side of a path, for a program.
    type Side<'a> = Box<dyn Fn(&str) -> Command + 'a>;
    let paths: Vec<(&str, Side<'_>, Side<'_>, Ipv4Addr)> = vec![
        (
            "underlay",
            Box::new(|p| on_node(&n2, p)),
            Box::new(|p| on_node(&n1, p)),
            n2.data_ip.unwrap(),
        ),
        (
            "plain",
            Box::new(|p| in_task("t2", p)),
            Box::new(|p| in_task("t1", p)),
            o.ip("t2", "plain"),
        ),
        (
            "encrypted",
            Box::new(|p| in_task("t2", p)),
            Box::new(|p| in_task("t1", p)),
            o.ip("t2", "secret"),
        ),
        (
            "boringtun_cli",
            Box::new(|p| on_node(&n2, p)),
            Box::new(|p| on_node(&n1, p)),
            boringtun.peer_ip,
        ),
    ];
    let node_cmd = |i: usize, p: &str| on_node([&n1, &n2][i], p);
    let only = std::env::var("SHOAL_BENCH_PATHS").ok();
    let chosen = |name: &str| {
        only.as_deref()
            .is_none_or(|list| list.split(',').any(|p| p.trim() == name))
    };
    let mut figures = Map::new();
    figures.insert("crypto_limit_gbps".into(), json!(crypto_limit));
    figures.insert("wire_like_links".into(), json!(u8::from(wire_like)));
    println!(
        "{:<22} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10} {:>9}",
        "Gbit/s",
        "1 stream",
        "4 streams",
        "retransmits",
        "spurious",
        "UDP drops",
        "reordered",
        "timeouts"
    );
    for (name, server, client, ip) in paths.iter().filter(|p| chosen(p.0)) {
        measure(name, server, client, &node_cmd, *ip, &mut figures);
    }
    // The engines pinned (`wireguard.cpus`): encrypting on the first CPU this process may use,
    // decrypting on the last. iperf3 pinned (its `-A`): the sender on the last, the receiver on
    // the first. A process that moves between CPUs leaves its earlier packets in the first CPU's
    // backlog queue while its later ones may go first from the other's: the runs with iperf3
    // pinned tell that reordering from the engine's.
    let allowed = shoal_dataplane::overlay::affinity::allowed_cpus().expect("our CPUs");
    let cpus = [allowed[0], allowed[allowed.len() - 1]];
    let (server, client, ip) = (&paths[2].1, &paths[2].2, paths[2].3);
    let with_cpu = |side: &'_ dyn Fn(&str) -> Command, cpu: usize, p: &str| {
        let mut command = side(p);
        if p == "iperf3" {
            command.args(["-A", &cpu.to_string()]);
        }
        command
    };
    let pinned_server = |p: &str| with_cpu(server, cpus[0], p);
    let pinned_client = |p: &str| with_cpu(client, cpus[1], p);
    let (apps_server, apps_client): (Side<'_>, Side<'_>) =
        (Box::new(pinned_server), Box::new(pinned_client));
    let with_apps_pinned = |name: &str, figures: &mut Map<String, serde_json::Value>| {
        measure(name, &apps_server, &apps_client, &node_cmd, ip, figures);
    };
    if chosen("encrypted_apps") {
        // The engines unpinned, iperf3 pinned.
        with_apps_pinned("encrypted_apps", &mut figures);
    }
    if chosen("encrypted_pinned") || chosen("encrypted_pinned_apps") {
        apply_each(&lab, |node| {
            let mut state = o.state(&lab, node);
            state["wireguard"]["cpus"] = json!(cpus);
            state
        })
        .expect("the pinned state applies");
        if chosen("encrypted_pinned") {
            let name = "encrypted_pinned";
            measure(name, server, client, &node_cmd, ip, &mut figures);
        }
        if chosen("encrypted_pinned_apps") {
            with_apps_pinned("encrypted_pinned_apps", &mut figures);
        }
    }
    // Last, the engines unpinned again and every task veth steering what its task sends by flow
    // (RPS, which Shoal does not set): a task's socket may send from two CPUs at once (its
    // thread, and TCP's small-queue handler on the CPU that freed its last packet), and a veth
    // hands each packet to the sending CPU's backlog, so the task's own veth may reorder its
    // stream before Shoal sees it. What these rows still reorder is the rest of the path's.
    if chosen("plain_steered") || chosen("encrypted_steered") {
        o.apply_all(&lab).expect("the unpinned state applies");
        let mask = shoal_dataplane::overlay::affinity::cpu_mask(&allowed);
        for host in lab.nodes() {
            shoal_tests::overlay::steer_task_veths(&lab, host, &mask).expect("steering");
        }
        for (name, path) in [
            ("plain_steered", &paths[1]),
            ("encrypted_steered", &paths[2]),
        ] {
            if chosen(name) {
                measure(name, &path.1, &path.2, &node_cmd, path.3, &mut figures);
            }
        }
    }
    if only.is_some() {
        println!("SHOAL_BENCH_PATHS is set: no ratios, no figures written");
        drop(boringtun);
        lab.down().expect("lab down");
        return;
    }
    let ratio = |a: &str, b: &str| figures[a].as_f64().unwrap() / figures[b].as_f64().unwrap();
    let (plain, enc) = (
        ratio("plain_gbps", "underlay_gbps"),
        ratio("encrypted_gbps", "boringtun_cli_gbps"),
    );
    let of_limit = figures["encrypted_gbps"].as_f64().unwrap() / crypto_limit;
    println!(
        "plain / underlay = {plain:.2} (aim >= 0.85); encrypted / boringtun-cli = {enc:.2} (aim >= 4); encrypted / crypto limit = {of_limit:.2} (aim >= 0.5)"
    );
    let pinned = ratio("encrypted_pinned_gbps", "boringtun_cli_gbps");
    let pinned_of_limit = figures["encrypted_pinned_gbps"].as_f64().unwrap() / crypto_limit;
    println!(
        "pinned: encrypted / boringtun-cli = {pinned:.2}; encrypted / crypto limit = {pinned_of_limit:.2}; retransmits {}",
        figures["encrypted_pinned_retransmits"]
    );
    figures.insert("plain_over_underlay".into(), json!(plain));
    figures.insert("encrypted_over_boringtun_cli".into(), json!(enc));
    figures.insert("encrypted_over_crypto_limit".into(), json!(of_limit));
    figures.insert("encrypted_pinned_over_boringtun_cli".into(), json!(pinned));
    figures.insert(
        "encrypted_pinned_over_crypto_limit".into(),
        json!(pinned_of_limit),
    );
    drop(boringtun);
    lab.down().expect("lab down");
    write_figures(&out, &figures).expect("writing the figures");
}

/// One path's 1- and 4-stream runs: `<name>_gbps`, `<name>_gbps_4` and `<name>_retransmits`
/// (of the 1-stream run) into `figures`, and a printed row. `nodes` makes a command in each
/// node's namespace, for their counters.
fn measure(
    name: &str,
    server: &dyn Fn(&str) -> Command,
    client: &dyn Fn(&str) -> Command,
    nodes: &dyn Fn(usize, &str) -> Command,
    ip: Ipv4Addr,
    figures: &mut Map<String, serde_json::Value>,
) {
    let mut row = Vec::new();
    let (mut retransmits, mut spurious, mut udp_drops, mut reordered, mut timeouts) =
        (0, 0, 0, 0, 0);
    for streams in [1, 4] {
        // The sender's counters and both nodes', around the 1-stream run.
        let sides = || {
            (streams == 1).then(|| {
                [
                    counters(client("cat")),
                    counters(nodes(0, "cat")),
                    counters(nodes(1, "cat")),
                    counters(server("cat")),
                ]
            })
        };
        let before = sides();
        let run = iperf_run(
            &|| server("iperf3"),
            &|| client("iperf3"),
            ip,
            streams,
            SECONDS,
        )
        .expect("iperf3 runs");
        if let (Some(before), Some(after)) = (before, sides()) {
            let moved = |side: usize, counter: &str| {
                after[side].get(counter).copied().unwrap_or(0)
                    - before[side].get(counter).copied().unwrap_or(0)
            };
            spurious = moved(0, "TcpExt.TCPDSACKRecvSegs");
            udp_drops = moved(1, "Udp.RcvbufErrors") + moved(2, "Udp.RcvbufErrors");
            reordered = moved(3, "TcpExt.TCPOFOQueue");
            timeouts = moved(0, "TcpExt.TCPTimeouts");
            figures.insert(format!("{name}_timeouts"), json!(timeouts));
            figures.insert(format!("{name}_reordered"), json!(reordered));
            figures.insert(format!("{name}_spurious_retransmits"), json!(spurious));
            figures.insert(format!("{name}_udp_drops"), json!(udp_drops));
        }
        let key = if streams == 1 {
            retransmits = run.retransmits;
            figures.insert(format!("{name}_retransmits"), json!(run.retransmits));
            format!("{name}_gbps")
        } else {
            format!("{name}_gbps_4")
        };
        figures.insert(key, json!(run.gbps));
        row.push(run.gbps);
    }
    println!(
        "{name:<22} {:>10.2} {:>10.2} {:>12} {:>10} {:>10} {:>10} {:>9}",
        row[0], row[1], retransmits, spurious, udp_drops, reordered, timeouts
    );
}

/// The kernel's protocol counters in the namespace `cat` runs in.
fn counters(mut cat: Command) -> std::collections::BTreeMap<String, i64> {
    let out = cat
        .args(["/proc/net/netstat", "/proc/net/snmp"])
        .output()
        .expect("cat runs");
    kernel_counters(&String::from_utf8_lossy(&out.stdout))
}

/// Stock `boringtun-cli` on both nodes, tunnel 10.99.0.1 <-> 10.99.0.2 over the data network.
struct BoringtunCli {
    children: Vec<Child>,
    sockets: Vec<String>,
    peer_ip: Ipv4Addr,
}

impl BoringtunCli {
    fn start(lab: &mut Lab) -> BoringtunCli {
        let nodes = lab.nodes().to_vec();
        let keys: Vec<Key> = nodes.iter().map(|_| Key::generate().unwrap()).collect();
        let hex = |k: &Key| k.0.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut children = Vec::new();
        let mut sockets = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let name = format!("sbt{}n{}", lab.id(), i + 1);
            let mut command = node.command(boringtun_cli()).unwrap();
            command
                .args([
                    &name,
                    "--foreground",
                    "--disable-drop-privileges",
                    "--threads",
                    "2",
                ])
                .env("WG_SUDO", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            children.push(command.spawn().expect("boringtun-cli runs"));
            let socket = format!("/var/run/wireguard/{name}.sock");
            wait_until("boringtun-cli's socket", Duration::from_secs(10), || {
                Ok(UnixStream::connect(&socket).is_ok())
            })
            .unwrap();
            let other = 1 - i;
            let config = format!(
                "set=1\nprivate_key={}\nlisten_port=51821\nreplace_peers=true\npublic_key={}\nendpoint={}:51821\nallowed_ip=10.99.0.{}/32\n\n",
                hex(&keys[i]),
                hex(&keys[other].public()),
                nodes[other].data_ip.unwrap(),
                other + 1
            );
            let mut uapi = UnixStream::connect(&socket).unwrap();
            uapi.write_all(config.as_bytes()).unwrap();
            let mut reply = [0u8; 64];
            let n = uapi.read(&mut reply).unwrap();
            assert!(
                String::from_utf8_lossy(&reply[..n]).contains("errno=0"),
                "boringtun-cli refused its configuration"
            );
            let ip = |args: &[&str]| {
                let out = node.command("ip").unwrap().args(args).output().unwrap();
                assert!(
                    out.status.success(),
                    "ip {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            ip(&[
                "addr",
                "add",
                &format!("10.99.0.{}/24", i + 1),
                "dev",
                &name,
            ]);
            ip(&["link", "set", &name, "mtu", "1420", "up"]);
            sockets.push(socket);
        }
        BoringtunCli {
            children,
            sockets,
            peer_ip: Ipv4Addr::new(10, 99, 0, 2),
        }
    }
}

impl Drop for BoringtunCli {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}

fn boringtun_cli() -> String {
    std::env::var("BORINGTUN_CLI").unwrap_or_else(|_| "boringtun-cli".into())
}
