//! `cargo xtask bench overlay`: iperf3 task-to-task across two lab nodes, one run, four paths:
//! the raw underlay (node to node on the data network), a plain overlay, an encrypted overlay,
//! and stock `boringtun-cli` between the same two nodes; 1 and 4 streams each. Writes the
//! figures (Gbit/s) to `$SHOAL_BENCH_OUT`. Needs root, iperf3, and release builds of `shoald`,
//! `shoal` and `boringtun-cli` (the xtask builds and installs them).

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Map, json};
use shoal_dataplane::overlay::Key;
use shoal_tests::overlay::{Overlay, Task, bench_output, iperf, plain_and_secret, write_figures};
use shoal_tests::{Lab, LabSpec, wait_until};

const SECONDS: u32 = 5;

fn main() {
    let out = bench_output("overlay");
    let mut lab = Lab::up(LabSpec {
        purpose: "bench overlay".into(),
        ..LabSpec::nodes(2)
    })
    .expect("lab up");
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
    let on_node = |host: &shoal_tests::Host| host.command("iperf3").expect("the node's namespace");
    let in_task = |task: &str| o.command(task, "iperf3");
    type Side<'a> = Box<dyn Fn() -> Command + 'a>;
    let paths: Vec<(&str, Side<'_>, Side<'_>, Ipv4Addr)> = vec![
        (
            "underlay",
            Box::new(|| on_node(&n2)),
            Box::new(|| on_node(&n1)),
            n2.data_ip.unwrap(),
        ),
        (
            "plain",
            Box::new(|| in_task("t2")),
            Box::new(|| in_task("t1")),
            o.ip("t2", "plain"),
        ),
        (
            "encrypted",
            Box::new(|| in_task("t2")),
            Box::new(|| in_task("t1")),
            o.ip("t2", "secret"),
        ),
        (
            "boringtun_cli",
            Box::new(|| on_node(&n2)),
            Box::new(|| on_node(&n1)),
            boringtun.peer_ip,
        ),
    ];
    let mut figures = Map::new();
    println!("{:<14} {:>10} {:>10}", "Gbit/s", "1 stream", "4 streams");
    for (name, server, client, ip) in &paths {
        let mut row = Vec::new();
        for streams in [1, 4] {
            let gbps = iperf(server, client, *ip, streams, SECONDS).expect("iperf3 runs");
            let key = if streams == 1 {
                format!("{name}_gbps")
            } else {
                format!("{name}_gbps_4")
            };
            figures.insert(key, json!(gbps));
            row.push(gbps);
        }
        println!("{name:<14} {:>10.2} {:>10.2}", row[0], row[1]);
    }
    let ratio = |a: &str, b: &str| figures[a].as_f64().unwrap() / figures[b].as_f64().unwrap();
    let (plain, enc) = (
        ratio("plain_gbps", "underlay_gbps"),
        ratio("encrypted_gbps", "boringtun_cli_gbps"),
    );
    println!(
        "plain / underlay = {plain:.2} (aim >= 0.85); encrypted / boringtun-cli = {enc:.2} (aim >= 1)"
    );
    figures.insert("plain_over_underlay".into(), json!(plain));
    figures.insert("encrypted_over_boringtun_cli".into(), json!(enc));
    drop(boringtun);
    lab.down().expect("lab down");
    write_figures(&out, &figures).expect("writing the figures");
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
