//! Overlay networks on a 3-node lab, driven with `shoal dataplane apply` as a user would: a plain
//! and an encrypted network, tasks as bare namespaces. Needs root.

use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;
use shoal_tests::overlay::{Overlay, Task, WgKey, apply, plain_and_secret, transfer};
use shoal_tests::{Lab, LabSpec, links, output_text as text, wait_until};

const PLAIN: &str = "plain";
const SECRET: &str = "secret";

/// t1 on n1 and t2 on n2 are on both networks; t3 (n3) only on the encrypted one, t4 (n3) only
/// on the plain one.
fn cluster() -> (Lab, Overlay) {
    let mut lab = Lab::up(LabSpec::nodes(3)).expect("lab up");
    lab.spawn_shoald_all().expect("shoald starts in every node");
    let overlay = Overlay::new(
        &lab,
        plain_and_secret(),
        vec![
            Task {
                name: "t1",
                node: 0,
                on: vec![(PLAIN, 2), (SECRET, 2)],
            },
            Task {
                name: "t2",
                node: 1,
                on: vec![(PLAIN, 3), (SECRET, 3)],
            },
            Task {
                name: "t3",
                node: 2,
                on: vec![(SECRET, 4)],
            },
            Task {
                name: "t4",
                node: 2,
                on: vec![(PLAIN, 5)],
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
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Counters and clocks move; the rest must not.
    if let Some(peers) = v["wireguard_peers"].as_array_mut() {
        for p in peers {
            for k in [
                "last_handshake_seconds",
                "tx_bytes",
                "rx_bytes",
                "bad_mac1",
                "cookie_replies",
                "handshakes_limited",
                "refused_packets",
            ] {
                p.as_object_mut().unwrap().remove(k);
            }
        }
    }
    for (section, counter) in [
        ("vxlan_filter", "refused_packets"),
        ("wireguard", "not_from_a_peer"),
    ] {
        if let Some(s) = v[section].as_object_mut() {
            s.remove(counter);
        }
    }
    v
}

/// Everything in a node's namespace, with indexes (so a re-created device shows).
fn node_links(lab: &Lab, node: usize) -> String {
    let out = lab.run(&lab.nodes()[node], "ip", &["-o", "link"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tasks_reach_each_other_across_nodes_on_each_network_and_never_across_networks() {
    let (_lab, o) = cluster();
    // Across nodes on each network, with the largest packet the network's MTU allows: VXLAN takes
    // 50 bytes of the data interface's 1500, WireGuard 60 more (28 bytes of IPv4 + ICMP headers).
    for (from, to, net, mtu) in [
        ("t1", "t2", PLAIN, 1450),
        ("t2", "t4", PLAIN, 1450),
        ("t1", "t2", SECRET, 1390),
        ("t3", "t1", SECRET, 1390),
    ] {
        assert!(o.ping(from, to, net, mtu - 28), "{from} -> {to} on {net}");
        assert!(
            !o.ping(from, to, net, mtu - 27),
            "{from} -> {to} on {net}: the MTU is {mtu}"
        );
    }
    // t4 (plain only) cannot reach t3 (encrypted only), even routing through its gateway.
    let out = o
        .command("t4", "ip")
        .args(["route", "add", "10.20.0.0/24", "via", "10.10.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!o.ping("t4", "t3", SECRET, 56));
    assert!(!o.ping("t3", "t4", PLAIN, 56));

    // Multi-megabyte transfers arrive intact on both kinds of network.
    for net in [PLAIN, SECRET] {
        let bytes = transfer(
            &o.netns("t2"),
            o.ip("t2", net),
            &o.netns("t1"),
            64,
            Duration::ZERO,
        )
        .unwrap_or_else(|e| panic!("{net}: {e}"));
        assert_eq!(bytes, 64 << 16);
    }
}

/// The WireGuard engine sends runs of datagrams as one UDP GSO message. Where the data
/// interface computes no checksums (as some NICs), the kernel cuts and checksums them in
/// software, and a transfer still arrives whole. (Where the kernel refuses a GSO send outright,
/// the engine's fallback is tested in `dataplane/src/overlay/wireguard.rs`.)
#[test]
fn an_encrypted_transfer_arrives_whole_where_the_data_interface_computes_no_checksums() {
    let (lab, o) = cluster();
    for node in lab.nodes() {
        let out = node
            .command("ethtool")
            .unwrap()
            .args(["-K", node.data_if(), "tx", "off"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let bytes = transfer(
        &o.netns("t2"),
        o.ip("t2", SECRET),
        &o.netns("t1"),
        64,
        Duration::ZERO,
    )
    .unwrap_or_else(|e| panic!("{SECRET}: {e}"));
    assert_eq!(bytes, 64 << 16);
    assert!(o.ping("t3", "t1", SECRET, 1390 - 28));
}

/// Starts tcpdump on a node's interface writing to a file, and waits until it captures.
fn capture(lab: &mut Lab, node: usize, interface: &str, name: &str) -> (Child, std::path::PathBuf) {
    let host = lab.nodes()[node].clone();
    let file = lab.host_dir(&host).join(format!("{name}.pcap"));
    let _ = std::fs::remove_file(&file);
    let mut command = host.command("tcpdump").unwrap();
    command
        .args([
            "-i",
            interface,
            "--immediate-mode",
            "-U",
            "-n",
            "-s",
            "0",
            "-w",
        ])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = command
        .spawn()
        .expect("tcpdump runs (cargo xtask setup installs it)");
    wait_until("tcpdump to start", Duration::from_secs(10), || {
        Ok(std::fs::metadata(&file).is_ok_and(|m| m.len() >= 24))
    })
    .unwrap();
    (child, file)
}

fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = child.wait();
}

/// The UDP frames of a pcap file (Ethernet, IPv4): (destination port, source port, payload).
fn udp_frames(file: &std::path::Path) -> Vec<(u16, u16, Vec<u8>)> {
    let data = std::fs::read(file).unwrap();
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &data[at + 16..(at + 16 + len).min(data.len())];
        at += 16 + len;
        if frame.len() < 42 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let udp = &frame[14 + ihl..];
        let port = |i: usize| u16::from_be_bytes([udp[i], udp[i + 1]]);
        frames.push((port(2), port(0), udp[8..].to_vec()));
    }
    frames
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn captures_show_plain_traffic_readable_encrypted_traffic_sealed_and_nothing_on_the_public_interface()
 {
    let (mut lab, o) = cluster();
    let (data, data_file) = capture(&mut lab, 0, "eth1", "data");
    let (public, public_file) = capture(&mut lab, 0, "eth0", "public");
    let marker = b"shoal-marker!";
    let pattern: String = marker.iter().map(|b| format!("{b:02x}")).collect();
    for net in [PLAIN, SECRET] {
        let out = o
            .command("t1", "ping")
            .args(["-c", "3", "-i", "0.2", "-W", "2", "-p", &pattern])
            .arg(o.ip("t2", net).to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{net}: {}", text(&out));
    }
    stop(data);
    stop(public);

    let frames = udp_frames(&data_file);
    let vxlan: Vec<_> = frames
        .iter()
        .filter(|(dst, src, _)| *dst == 4789 || *src == 4789)
        .collect();
    let wireguard: Vec<_> = frames
        .iter()
        .filter(|(dst, src, _)| *dst == 51820 || *src == 51820)
        .collect();
    assert!(
        vxlan.iter().any(|(.., p)| contains(p, marker)),
        "the plain network's pings show in clear: {} UDP frames, {} VXLAN, file {} of {:?} bytes",
        frames.len(),
        vxlan.len(),
        data_file.display(),
        std::fs::metadata(&data_file).map(|m| m.len())
    );
    let vni = |p: &[u8]| u32::from_be_bytes([0, p[4], p[5], p[6]]);
    assert!(
        vxlan.iter().all(|(.., p)| vni(p) == 4096),
        "only the plain network's VNI travels as bare VXLAN"
    );
    assert!(
        !wireguard.is_empty(),
        "the encrypted network's pings travel in WireGuard"
    );
    assert!(
        wireguard.iter().all(|(.., p)| !contains(p, marker)),
        "the marker never shows in WireGuard"
    );

    let public = udp_frames(&public_file);
    assert!(
        public
            .iter()
            .all(|(dst, src, _)| ![4789, 51820].contains(dst) && ![4789, 51820].contains(src)),
        "no VXLAN or WireGuard on the public interface: {public:?}"
    );
}

#[test]
fn applying_twice_changes_nothing_and_a_restarted_daemon_restores_its_last_state() {
    let (mut lab, o) = cluster();
    let before = (inspect(&lab, 0), node_links(&lab, 0));
    let out = o.apply(&lab, 0).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing changed"), "{}", text(&out));
    assert_eq!((inspect(&lab, 0), node_links(&lab, 0)), before);

    // Frames a network's bridge forwards skip netfilter (no rule of Shoal's lives there); when
    // `br_netfilter` turns its switches back on (it does in every namespace when it loads), the
    // next apply turns them off again, and says so.
    let networks = before.0["networks"].as_object().expect("networks").clone();
    assert!(
        networks.values().all(|n| n["bridge_netfilter"] == false),
        "{networks:#?}"
    );
    let namespace = networks[PLAIN]["namespace"].as_str().expect("a path");
    let switch = |value: &str| {
        let set = format!("net.bridge.bridge-nf-call-iptables={value}");
        let net = format!("--net={namespace}");
        lab.run(
            &lab.nodes()[0],
            "nsenter",
            &[&net, "sysctl", "-q", "-w", &set],
        )
    };
    match switch("1") {
        Ok(out) if out.status.success() => {
            assert_eq!(
                inspect(&lab, 0)["networks"][PLAIN]["bridge_netfilter"],
                true
            );
            let out = o.apply(&lab, 0).unwrap();
            assert!(out.status.success(), "{}", text(&out));
            assert!(
                text(&out).contains("network plain: bridged frames skip netfilter"),
                "{}",
                text(&out)
            );
            assert_eq!(inspect(&lab, 0), before.0);
        }
        // A kernel without bridge netfilter has no switch to turn on.
        other => println!("no bridge netfilter switch here: {other:?}"),
    }

    // A new daemon finds everything in place; only the tunnel device, which lives as long as the
    // process holding it, is made again.
    let n1 = lab.nodes()[0].clone();
    lab.kill_shoald(&n1).expect("shoald on n1 killed");
    lab.spawn_shoald(&n1).expect("shoald restarts");
    assert!(
        o.ping("t1", "t2", PLAIN, 56),
        "plain traffic survives the daemon"
    );
    // The new daemon applies the last state it was given by itself: the tunnel comes back
    // without anyone applying again, and applying again then changes nothing.
    wait_until("the restored tunnel", Duration::from_secs(20), || {
        Ok(o.ping("t1", "t2", SECRET, 56))
    })
    .unwrap();
    let out = o.apply(&lab, 0).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing changed"), "{}", text(&out));
}

#[test]
fn removing_a_network_removes_everything_it_created() {
    let (lab, o) = cluster();
    let n1 = &lab.nodes()[0];
    let netns_dir = lab.host_dir(n1).join("data/netns");
    let mut state = o.state(&lab, 0);
    // Only the plain network: the encrypted one, its task interface and the tunnel go.
    state["networks"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["id"] != SECRET);
    state["attachments"]
        .as_array_mut()
        .unwrap()
        .retain(|a| a["network"] != SECRET);
    state["endpoints"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["network"] != SECRET);
    let out = apply(&lab, 0, &state).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut left: Vec<String> = std::fs::read_dir(&netns_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["ov-plain"]);
    let t1 = links(Some(&o.netns("t1")), None).unwrap();
    assert!(
        t1.contains(&"ov-plain".to_string()) && !t1.contains(&"ov-secret".to_string()),
        "{t1:?}"
    );
    assert!(o.ping("t1", "t2", PLAIN, 56));

    // And with nothing left, the node is as the lab made it.
    state["networks"] = Value::Array(vec![]);
    state["attachments"] = Value::Array(vec![]);
    state["endpoints"] = Value::Array(vec![]);
    let out = apply(&lab, 0, &state).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_dir(&netns_dir).unwrap().count(), 0);
    assert_eq!(links(Some(&o.netns("t1")), None).unwrap(), ["lo"]);
    assert_eq!(
        links(Some(&n1.netns), None).unwrap(),
        ["eth0", "eth1", "lo"]
    );
}

#[test]
fn a_node_rotates_its_key_while_a_tcp_stream_runs_across_the_encrypted_network() {
    let (lab, mut o) = cluster();
    let server = o.netns("t2");
    let (ip, client) = (o.ip("t2", SECRET), o.netns("t1"));
    // About 6 s of traffic; the rotation happens in the middle of it.
    let stream =
        std::thread::spawn(move || transfer(&server, ip, &client, 120, Duration::from_millis(50)));
    std::thread::sleep(Duration::from_secs(2));
    o.keys[0] = WgKey::generate();
    for node in 0..3 {
        let out = o.apply(&lab, node).unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let sent = stream
        .join()
        .unwrap()
        .expect("the stream survives the rotation intact");
    assert_eq!(sent, 120 << 16);
    let new_key = o.keys[0].public.clone();
    wait_until(
        "n2's session with n1 to use n1's new key",
        Duration::from_secs(20),
        || {
            let peers = inspect(&lab, 1)["wireguard_peers"].clone();
            let n1 = peers
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["node"] == "n1")
                .cloned()
                .unwrap();
            Ok(n1["public_key"] == new_key.as_str()
                && n1["rotating"] == false
                && n1["rotations"] == 1
                && n1["handshakes"].as_u64() >= Some(1))
        },
    )
    .unwrap();
    assert!(
        o.ping("t2", "t1", SECRET, 56),
        "traffic flows on the new keys"
    );
}

/// The CPUs a process's thread may run on (`Cpus_allowed_list`, e.g. `0-1`), by thread name.
fn thread_cpus(pid: i32) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        if let Some(cpus) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            threads.push((comm.trim().to_owned(), cpus.trim().to_owned()));
        }
    }
    threads.sort();
    threads
}

/// The CPUs of `shoald`'s threads named `name`.
fn cpus_of(pid: i32, name: &str) -> Vec<String> {
    thread_cpus(pid)
        .into_iter()
        .filter(|(comm, _)| comm == name)
        .map(|(_, cpus)| cpus)
        .collect()
}

/// The CPUs (as a bit set) the engine's TAP device on `node` steers what it takes in to
/// (`rps_cpus`, read from a sysfs mounted inside the daemon's tunnel namespace).
fn tap_steering(lab: &Lab, node: usize) -> u128 {
    let out = shoal_tests::overlay::in_tunnel(lab, &lab.nodes()[node], "unshare")
        .args(["--mount", "sh", "-c"])
        .arg("mount -t sysfs sysfs /sys && cat /sys/class/net/wg0/queues/rx-0/rps_cpus")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mask = String::from_utf8_lossy(&out.stdout);
    shoal_tests::overlay::cpu_mask_bits(&mask).unwrap_or_else(|| panic!("rps_cpus {mask:?}"))
}

/// `wireguard.cpus` pins the engine's encrypting and decrypting threads, traffic goes on, and a
/// state without it gives them back every CPU the daemon may use. Pinned or not, the engine's
/// TAP steers what the decrypting thread writes by flow over those CPUs (RPS), so that the
/// kernel keeps each stream's packets in order wherever the thread runs.
#[test]
fn wireguard_threads_run_on_the_cpus_the_state_names_until_it_names_none() {
    let (lab, o) = cluster();
    let pid = lab.shoald_pid(&lab.nodes()[1]).unwrap();
    let all = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned();
    let allowed: Vec<usize> = all
        .split(',')
        .flat_map(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()
        })
        .collect();
    let (first, last) = (allowed[0], *allowed.last().unwrap());
    let every = allowed.iter().fold(0u128, |m, &c| m | 1 << c);
    assert_eq!(tap_steering(&lab, 1), every, "RPS over {all}");
    assert_eq!(
        cpus_of(pid, "shoal-wg-rx"),
        [all.as_str()],
        "unpinned at first"
    );

    let mut state = o.state(&lab, 1);
    state["wireguard"]["cpus"] = serde_json::json!([first, last]);
    let out = apply(&lab, 1, &state).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(cpus_of(pid, "shoal-wg-tx"), [first.to_string()]);
    assert_eq!(cpus_of(pid, "shoal-wg-rx"), [last.to_string()]);
    // t1 (n1) sends to t2 (n2): n2's decrypting thread, pinned, delivers it all.
    let bytes = transfer(
        &o.netns("t2"),
        o.ip("t2", SECRET),
        &o.netns("t1"),
        32,
        Duration::ZERO,
    )
    .unwrap_or_else(|e| panic!("{SECRET}: {e}"));
    assert_eq!(bytes, 32 << 16);

    // One CPU pins both.
    state["wireguard"]["cpus"] = serde_json::json!([last]);
    let out = apply(&lab, 1, &state).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(cpus_of(pid, "shoal-wg-tx"), [last.to_string()]);
    assert_eq!(cpus_of(pid, "shoal-wg-rx"), [last.to_string()]);

    let out = o.apply(&lab, 1).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(cpus_of(pid, "shoal-wg-tx"), [all.as_str()]);
    assert_eq!(cpus_of(pid, "shoal-wg-rx"), [all.as_str()]);
    assert_eq!(
        tap_steering(&lab, 1),
        every,
        "RPS over {all}, whatever was pinned"
    );
    assert!(o.ping("t1", "t2", SECRET, 56), "traffic flows unpinned");
}

#[test]
fn bad_input_is_refused_naming_the_field_and_leaves_the_kernel_as_it_was() {
    let (lab, o) = cluster();
    let before = (inspect(&lab, 0), node_links(&lab, 0));
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit); 8] = [
        ("networks[1].subnet", |s| {
            s["networks"][1]["subnet"] = "10.10.0.0/16".into()
        }),
        ("networks[1].vni", |s| s["networks"][1]["vni"] = 4096.into()),
        ("attachments[0].ip", |s| {
            s["attachments"][0]["ip"] = "10.99.0.2".into()
        }),
        ("wireguard.private_key", |s| {
            s["wireguard"]["private_key"] = "bm90IGEga2V5".into()
        }),
        ("data_path.addr", |s| {
            s["data_path"]["addr"] = "172.21.250.250".into()
        }),
        ("data_path.addr", |s| s["data_path"]["addr"] = "eth7".into()),
        ("wireguard.cpus", |s| {
            s["wireguard"]["cpus"] = serde_json::json!([0, 100_000])
        }),
        ("attachments[0].netns", |s| {
            s["attachments"][0]["netns"] = "/run/netns/no-such-task".into()
        }),
    ];
    for (field, edit) in cases {
        // A new network and task alongside, so a half-applied state would show.
        let mut state = o.state(&lab, 0);
        state["networks"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "id": "extra", "vni": 5000, "subnet": "10.30.0.0/24" }));
        edit(&mut state);
        let out = apply(&lab, 0, &state).unwrap();
        assert!(!out.status.success(), "{field}: accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(field) && err.contains("nothing was applied"),
            "{field}: {err}"
        );
        assert_eq!(
            (inspect(&lab, 0), node_links(&lab, 0)),
            before,
            "{field}: the kernel changed"
        );
    }

    // The kernel refuses something half-way (the task already has an interface by that name):
    // what the apply had created is removed again.
    let dummy = o
        .command("t1", "ip")
        .args([
            "link",
            "add",
            "ov-extra",
            "type",
            "veth",
            "peer",
            "name",
            "ov-extra-peer",
        ])
        .output()
        .unwrap();
    assert!(dummy.status.success(), "{}", text(&dummy));
    let mut state = o.state(&lab, 0);
    state["networks"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "id": "extra", "vni": 5000, "subnet": "10.30.0.0/24" }));
    state["attachments"].as_array_mut().unwrap().push(serde_json::json!({
        "task": "t1", "netns": shoal_tests::Netns::named(o.netns("t1")).path(), "network": "extra", "ip": "10.30.0.2", "interface": "ov-extra"
    }));
    let out = apply(&lab, 0, &state).unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("undone"), "{}", text(&out));
    assert_eq!(
        (inspect(&lab, 0), node_links(&lab, 0)),
        before,
        "the failed apply left something behind"
    );
}
