//! The lab itself: nodes reach each other on both networks, the client reaches every node's public
//! address and not the data network, and teardown leaves nothing behind, also after a panic or
//! when the owner was killed. Needs root.

use std::{net::Ipv4Addr, panic, process::Command, sync::Mutex, time::Duration};

use shoal_tests::{Host, Lab, LabSpec, Netns, links, sweep_orphans, wait_until};

/// One ICMP echo from `from` to `to` (through `dev`), retried until the deadline: the first
/// packet on a fresh link waits for ARP.
fn reaches(lab: &Lab, from: &Host, to: Ipv4Addr, dev: &str) -> Result<(), String> {
    wait_until(
        &format!("{} to reach {to} over {dev}", from.name),
        Duration::from_secs(10),
        || {
            let out = lab
                .run(
                    from,
                    "ping",
                    &["-c", "1", "-W", "1", "-I", dev, &to.to_string()],
                )
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(true)
            } else {
                Err(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        },
    )
}

fn cannot_reach(lab: &Lab, from: &Host, to: Ipv4Addr) -> bool {
    let out = lab
        .run(from, "ping", &["-c", "1", "-W", "1", &to.to_string()])
        .expect("ping runs");
    !out.status.success()
}

/// The ports of `bridge` in the lab's switch namespace.
fn bridge_ports(lab: &Lab, bridge: &str) -> Vec<String> {
    links(Some(&format!("{}-sw", lab.prefix())), Some(bridge)).unwrap()
}

/// Links in the root namespace, to check the lab never touches it.
fn root_links() -> Vec<String> {
    links(None, None).unwrap()
}

/// Asserts that nothing named `prefix` remains: namespaces, state directory, processes.
fn assert_gone(prefix: &str, pids: &[i32]) {
    let leftover_ns: Vec<String> = Netns::list()
        .into_iter()
        .filter(|ns| ns.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(leftover_ns.is_empty(), "namespaces left: {leftover_ns:?}");
    assert!(
        !std::path::Path::new("/tmp/shoal-lab").join(prefix).exists(),
        "state directory of {prefix} left"
    );
    for pid in pids {
        assert!(!running(*pid), "process {pid} of {prefix} still running");
    }
}

/// Whether `pid` exists and is not a zombie (an orphan's zombie waits for init to reap it).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) S ...": the state follows the last ')'.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
    })
}

#[test]
fn three_nodes_reach_each_other_on_both_networks_and_teardown_leaves_nothing() {
    let links_before = root_links();
    let mut lab = Lab::up(LabSpec::nodes(3)).expect("lab up");
    let prefix = lab.prefix().to_string();
    let nodes = lab.nodes().to_vec();
    assert_eq!(nodes.len(), 3);
    for ns in lab.namespaces() {
        assert!(Netns::named(ns.as_str()).exists(), "{ns} missing");
        assert!(
            ns.starts_with(&format!("{prefix}-")),
            "{ns} lacks the prefix"
        );
    }

    for a in &nodes {
        for b in nodes.iter().filter(|b| b != &a) {
            reaches(&lab, a, b.public_ip, a.public_if()).unwrap();
            reaches(&lab, a, b.data_ip.unwrap(), a.data_if()).unwrap();
        }
    }
    let client = lab.client().clone();
    for node in &nodes {
        reaches(&lab, &client, node.public_ip, client.public_if()).unwrap();
        assert!(
            cannot_reach(&lab, &client, node.data_ip.unwrap()),
            "the client must not be on the data network"
        );
    }

    // A long-running process in every node, as a daemon would be.
    for node in &nodes {
        let mut sleep = node.command("sleep").unwrap();
        sleep.arg("3600");
        lab.spawn(sleep).unwrap();
    }
    let pids = lab.pids();
    assert_eq!(pids.len(), 3, "one process per node namespace");
    // The data network is the nodes' alone; the public one has the client too.
    assert_eq!(bridge_ports(&lab, "br-data"), ["d-n1", "d-n2", "d-n3"]);
    assert_eq!(
        bridge_ports(&lab, "br-pub"),
        ["p-client", "p-n1", "p-n2", "p-n3"]
    );
    assert_eq!(
        root_links(),
        links_before,
        "the lab must not touch the root namespace"
    );

    lab.down().expect("teardown");
    assert_gone(&prefix, &pids);
    assert_eq!(root_links(), links_before);
}

#[test]
fn a_panicking_test_still_tears_its_lab_down() {
    let seen: Mutex<Option<(String, Vec<i32>)>> = Mutex::new(None);
    let result = panic::catch_unwind(|| {
        let mut lab = Lab::up(LabSpec::nodes(2)).expect("lab up");
        let node = lab.nodes()[0].clone();
        let mut sleep = node.command("sleep").unwrap();
        sleep.arg("3600");
        lab.spawn(sleep).unwrap();
        *seen.lock().unwrap() = Some((lab.prefix().to_string(), lab.pids()));
        panic!("a failed assertion");
    });
    assert!(result.is_err());
    let (prefix, pids) = seen.lock().unwrap().take().expect("the lab came up");
    assert_eq!(pids.len(), 1);
    assert_gone(&prefix, &pids);
}

#[test]
fn labs_of_a_killed_owner_are_swept() {
    // A test killed by its timeout never drops its lab: forget one, and make its record name an
    // owner that has exited.
    let mut lab = Lab::up(LabSpec::nodes(1)).expect("lab up");
    let node = lab.nodes()[0].clone();
    let mut sleep = node.command("sleep").unwrap();
    sleep.arg("3600");
    lab.spawn(sleep).unwrap();
    let prefix = lab.prefix().to_string();
    let record_path = lab.dir().join("lab.json");
    let orphan_pids = lab.pids();
    assert_eq!(orphan_pids.len(), 1);
    std::mem::forget(lab);

    let mut exited = Command::new("true").spawn().unwrap();
    exited.wait().unwrap();
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    record["owner_pid"] = exited.id().into();
    std::fs::write(&record_path, record.to_string()).unwrap();

    // A concurrent test's `Lab::up` may sweep it first: what matters is that it is gone.
    sweep_orphans().expect("sweep");
    assert_gone(&prefix, &orphan_pids);
}

#[test]
fn commands_in_a_node_see_its_own_interfaces_in_sys() {
    // As with `ip netns exec`: /sys/class/net lists the namespace's links, not the root's.
    let lab = Lab::up(LabSpec::nodes(1)).expect("lab up");
    let node = &lab.nodes()[0];
    let out = lab.run(node, "ls", &["/sys/class/net"]).unwrap();
    let mut links: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    links.sort();
    assert_eq!(links, ["eth0", "eth1", "lo"]);
    // The remount stayed in the child: this process still sees the root namespace's links.
    let mut own: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    own.sort();
    assert_eq!(own, root_links());
}
