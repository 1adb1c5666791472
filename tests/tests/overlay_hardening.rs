//! The overlays against a hostile data network, on a 3-node lab driven with `shoal dataplane
//! apply`: forged WireGuard handshakes flooding a node while an encrypted stream runs, a peer
//! sending into an encrypted network it has no task on through its own tunnel, and VXLAN in the
//! clear from an address that is no peer's. `shoal-labtool wg-flood` and `vxlan-send` play the
//! attacker. Needs root.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::overlay::{Net, Overlay, Task, plain_and_secret, transfer};
use shoal_tests::{Host, Lab, LabSpec, binary, output_text as text, wait_until, within};

const PLAIN: &str = "plain";
const SECRET: &str = "secret";
/// A second encrypted network, which n3 has no task on.
const VAULT: &str = "vault";

/// `plain` (VNI 4096), `secret` (4097, encrypted) and `vault` (4098, encrypted). t1 (n1) and t2
/// (n2) are on all three; t3 (n3) on `plain` and `secret` only, so n3 shares `vault` with nobody.
fn cluster() -> (Lab, Overlay) {
    let mut lab = Lab::up(LabSpec::nodes(3)).expect("lab up");
    lab.spawn_shoald_all().expect("shoald starts in every node");
    let mut nets = plain_and_secret();
    nets.push(Net {
        id: VAULT,
        vni: 4098,
        octet: 30,
        encrypted: true,
    });
    let overlay = Overlay::new(
        &lab,
        nets,
        vec![
            Task {
                name: "t1",
                node: 0,
                on: vec![(PLAIN, 2), (SECRET, 2), (VAULT, 2)],
            },
            Task {
                name: "t2",
                node: 1,
                on: vec![(PLAIN, 3), (SECRET, 3), (VAULT, 3)],
            },
            Task {
                name: "t3",
                node: 2,
                on: vec![(PLAIN, 4), (SECRET, 4)],
            },
        ],
    )
    .expect("tasks");
    overlay
        .apply_all(&lab)
        .expect("every node applies its state");
    (lab, overlay)
}

fn inspect(lab: &Lab, node: usize) -> Value {
    let out = lab
        .shoal(&lab.nodes()[node], &["dataplane", "inspect"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A counter of `node`'s WireGuard peer `peer` in `dataplane inspect`.
fn peer_counter(lab: &Lab, node: usize, peer: &str, counter: &str) -> u64 {
    let v = inspect(lab, node);
    let peers = v["wireguard_peers"].as_array().cloned().unwrap_or_default();
    let p = peers
        .iter()
        .find(|p| p["node"] == peer)
        .unwrap_or_else(|| panic!("{peer} is a WireGuard peer of node {node}: {v:#}"));
    p[counter]
        .as_u64()
        .unwrap_or_else(|| panic!("{counter} of {peer}: {p:#}"))
}

/// `shoal-labtool ARGS` in `host`'s namespace, or in its daemon's tunnel namespace (where the
/// encrypted networks' VXLAN sockets live, and whose only way out is the WireGuard engine).
fn labtool(lab: &Lab, host: &Host, in_tunnel: bool, args: &[&str]) -> Command {
    let tool = binary("shoal-labtool").expect("shoal-labtool is built");
    let mut command = if in_tunnel {
        shoal_tests::overlay::in_tunnel(lab, host, tool)
    } else {
        host.command(tool).unwrap()
    };
    command.args(args);
    command
}

fn run_ok(mut command: Command) -> Value {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// A UDP socket on `port` in a task's namespace.
fn listen(o: &Overlay, task: &str, port: u16) -> UdpSocket {
    let socket = within(&o.netns(task), || {
        UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
    })
    .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    socket
}

/// The payloads `socket` receives until one equals `last` (failing after 10 s), and for half a
/// second more: what was sent before `last` on the same path has had every chance to arrive.
fn received_until(socket: &UdpSocket, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut until = start + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(n) = socket.recv(&mut buf) {
            let payload = String::from_utf8_lossy(&buf[..n]).into_owned();
            if payload == last && !got.contains(&payload) {
                until = Instant::now() + Duration::from_millis(500);
            }
            got.push(payload);
        }
    }
    assert!(
        got.iter().any(|p| p == last),
        "{last:?} never arrived (got {got:?})"
    );
    got
}

#[test]
fn a_flood_of_forged_handshakes_is_answered_with_cookies_while_an_encrypted_stream_runs() {
    let (lab, o) = cluster();
    let n1 = lab.nodes()[0].clone();
    let n3 = lab.nodes()[2].clone();
    wait_until(
        "t1 and t2 on the encrypted network",
        Duration::from_secs(20),
        || Ok(o.ping("t1", "t2", SECRET, 56)),
    )
    .unwrap();

    // About 4 s of traffic from t1 (n1) to t2 (n2), while n3 floods n1's WireGuard port with
    // 200,000 datagrams a second for 3 s: initiations with a valid MAC1 (it knows n1's public
    // key), initiations with a wrong one, and junk. n3 is a peer of n1, so its address passes
    // the first filter; spoofing any other peer's address is as easy.
    let server = o.netns("t2");
    let (ip, client) = (o.ip("t2", SECRET), o.netns("t1"));
    let stream =
        std::thread::spawn(move || transfer(&server, ip, &client, 80, Duration::from_millis(50)));
    let target = format!("{}:51820", n1.data_ip.unwrap());
    let flood = run_ok(labtool(
        &lab,
        &n3,
        false,
        &[
            "wg-flood",
            "--target",
            &target,
            "--public-key",
            &o.keys[0].public,
            "--seconds",
            "3",
            "--rate",
            "200000",
            "--kind",
            "mixed",
        ],
    ));
    let sent = stream
        .join()
        .unwrap()
        .expect("the stream completes intact through the flood");
    assert_eq!(sent, 80 << 16);

    // Past its handshake budget, n1 demanded cookies instead of doing X25519, and the wrong
    // MAC1s were refused before any.
    assert!(
        flood["cookie_replies"].as_u64().unwrap() > 0,
        "n1 answers a flood with cookies: {flood}"
    );
    assert!(peer_counter(&lab, 0, "n3", "cookie_replies") > 0);
    assert!(peer_counter(&lab, 0, "n3", "bad_mac1") > 0);
    assert!(peer_counter(&lab, 0, "n3", "handshakes_limited") > 0);
    // And n3's own traffic with n1 still flows.
    assert!(o.ping("t3", "t1", SECRET, 56));
}

#[test]
fn a_peer_cannot_send_into_an_encrypted_network_it_has_no_task_on() {
    let (lab, o) = cluster();
    let (n1, n3) = (lab.nodes()[0].clone(), lab.nodes()[2].clone());
    wait_until(
        "t3 and t1 on the encrypted network",
        Duration::from_secs(20),
        || Ok(o.ping("t3", "t1", SECRET, 56)),
    )
    .unwrap();
    let socket = listen(&o, "t1", 7000);
    let (n1_data, n3_data) = (
        n1.data_ip.unwrap().to_string(),
        n3.data_ip.unwrap().to_string(),
    );
    // n3 writes VXLAN frames itself into its tunnel towards n1: first for `vault`, which it has
    // no task on, then for `secret`, which it has. Both are sealed with n3's genuine session and
    // come from n3's own address.
    for (vni, to, payload) in [
        ("4098", o.ip("t1", VAULT), "into vault"),
        ("4097", o.ip("t1", SECRET), "into secret"),
    ] {
        run_ok(labtool(
            &lab,
            &n3,
            true,
            &[
                "vxlan-send",
                "--from",
                &n3_data,
                "--to",
                &n1_data,
                "--vni",
                vni,
                "--inner-dst",
                &format!("{to}:7000"),
                "--payload",
                payload,
                "--count",
                "20",
            ],
        ));
    }
    let got = received_until(&socket, "into secret");
    assert!(
        !got.iter().any(|p| p == "into vault"),
        "a frame for vault came through n3's tunnel: {got:?}"
    );
    assert!(peer_counter(&lab, 0, "n3", "refused_packets") >= 20);
    // t2 (n2) shares vault with t1, and still reaches it.
    assert!(o.ping("t2", "t1", VAULT, 56));
}

#[test]
fn plain_vxlan_is_accepted_only_from_the_data_path_addresses_of_peers() {
    let (lab, o) = cluster();
    let (n1, n3) = (lab.nodes()[0].clone(), lab.nodes()[2].clone());
    // A stranger on the data network: an address no node's state names, on n3's data interface.
    let stranger = Ipv4Addr::new(172, 21, lab.id(), 99).to_string();
    let out = lab
        .run(
            &n3,
            "ip",
            &[
                "addr",
                "add",
                &format!("{stranger}/24"),
                "dev",
                n3.data_if(),
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // A second address of n1's: the VXLAN socket takes datagrams to any of them.
    let n1_other = Ipv4Addr::new(172, 21, lab.id(), 98).to_string();
    let out = lab
        .run(
            &n1,
            "ip",
            &[
                "addr",
                "add",
                &format!("{n1_other}/24"),
                "dev",
                n1.data_if(),
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let socket = listen(&o, "t1", 7001);
    let (n1_data, n3_data) = (
        n1.data_ip.unwrap().to_string(),
        n3.data_ip.unwrap().to_string(),
    );
    let inner = format!("{}:7001", o.ip("t1", PLAIN));
    for (from, to, payload) in [
        (&stranger, &n1_data, "from a stranger"),
        (&stranger, &n1_other, "from a stranger to another address"),
        (&n3_data, &n1_data, "from a peer"),
    ] {
        run_ok(labtool(
            &lab,
            &n3,
            false,
            &[
                "vxlan-send",
                "--from",
                from,
                "--to",
                to,
                "--vni",
                "4096",
                "--inner-dst",
                &inner,
                "--payload",
                payload,
                "--count",
                "20",
            ],
        ));
    }
    let got = received_until(&socket, "from a peer");
    assert!(
        !got.iter().any(|p| p.starts_with("from a stranger")),
        "VXLAN from a non-peer reached a task: {got:?}"
    );
    let filter = &inspect(&lab, 0)["vxlan_filter"];
    assert!(
        filter["refused_packets"].as_u64().is_some_and(|n| n >= 40),
        "{filter:#}"
    );
    // Ordinary traffic between peers is untouched.
    assert!(o.ping("t3", "t1", PLAIN, 56));
}
