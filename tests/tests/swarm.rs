//! The control plane on the lab (issue: Control plane I): a swarm of 3 managers and 2 workers
//! formed with `shoal swarm init|join`, leader failover, restarts, tokens, roles, and links cut
//! at the switch. Needs root.

use std::time::Duration;

use shoal_tests::{swarm::Swarm, wait_until};

#[test]
fn three_managers_and_two_workers_form_a_swarm() {
    let swarm = Swarm::up(3, 2);
    let n1 = swarm.managers[0].clone();
    let nodes = swarm.nodes(&n1);
    assert_eq!(nodes.len(), 5);
    let leaders: Vec<_> = nodes
        .iter()
        .filter(|n| n["ManagerStatus"] == "Leader")
        .collect();
    assert_eq!(leaders.len(), 1, "{nodes:#?}");
    swarm.wait_nodes(&n1, "two managers Reachable", |nodes| {
        nodes
            .iter()
            .filter(|n| n["ManagerStatus"] == "Reachable")
            .count()
            == 2
    });
    for worker in &swarm.workers {
        let row = swarm.node(&n1, &worker.name).unwrap();
        assert_eq!(row["ManagerStatus"], "", "{row}");
        assert_eq!(row["Availability"], "Active");
    }
    // Every manager answers node ls, and marks itself.
    for manager in &swarm.managers {
        let table = swarm.ok(manager, &["node", "ls"]);
        assert!(table.starts_with("ID "), "{table}");
        let mine: Vec<_> = table.lines().filter(|l| l.contains(" * ")).collect();
        assert_eq!(mine.len(), 1, "{table}");
        assert!(mine[0].contains(&format!(" {} ", manager.name)), "{table}");
    }
    let info = swarm.ok(&swarm.workers[0], &["info"]);
    assert!(
        info.contains(" Swarm: active") && info.contains("  Is Manager: false"),
        "{info}"
    );
    let info = swarm.ok(&n1, &["info"]);
    assert!(
        info.contains("  Managers: 3") && info.contains("  Nodes: 5"),
        "{info}"
    );

    // Addresses: the advertise address, and the data-path address defaulting to it.
    let n4 = swarm.inspect(&n1, "n4");
    assert_eq!(n4["Status"]["Addr"], swarm.workers[0].public_ip.to_string());
    assert_eq!(
        n4["Description"]["DataPathAddr"],
        swarm.workers[0].public_ip.to_string()
    );
    let cluster: serde_json::Value =
        serde_json::from_str(&swarm.ok(&n1, &["swarm", "inspect"])).unwrap();
    assert_eq!(cluster[0]["DataPathPort"], 4789);
    assert_eq!(
        cluster[0]["Spec"]["Dispatcher"]["HeartbeatPeriod"],
        5_000_000_000_u64
    );
    assert_eq!(cluster[0]["Spec"]["Raft"]["SnapshotInterval"], 10_000);

    // Labels and availability, written through a follower.
    let follower = swarm
        .managers
        .iter()
        .find(|m| swarm.leader(&n1).as_deref() != Some(m.name.as_str()))
        .unwrap()
        .clone();
    swarm.ok(
        &follower,
        &[
            "node",
            "update",
            "--label-add",
            "zone=a",
            "--availability",
            "drain",
            "n5",
        ],
    );
    let n5 = swarm.inspect(&n1, "n5");
    assert_eq!(n5["Spec"]["Labels"]["zone"], "a");
    assert_eq!(n5["Spec"]["Availability"], "drain");
    swarm.ok(
        &n1,
        &[
            "node",
            "update",
            "--label-rm",
            "zone",
            "--availability",
            "active",
            "n5",
        ],
    );
    let n5 = swarm.inspect(&n1, "n5");
    assert!(n5["Spec"]["Labels"].get("zone").is_none(), "{n5}");
    let pretty = swarm.ok(&n1, &["node", "inspect", "--pretty", "self"]);
    assert!(
        pretty.contains("Hostname:\t\tn1") && pretty.contains("Leader:"),
        "{pretty}"
    );
}

#[test]
fn the_leader_dies_a_new_one_takes_writes_and_the_old_one_catches_up() {
    let mut swarm = Swarm::up(3, 2);
    let n1 = swarm.managers[0].clone();
    swarm.ok(
        &n1,
        &[
            "node",
            "update",
            "--label-add",
            "written=before-the-kill",
            "n4",
        ],
    );
    let old = swarm.host(&swarm.leader(&n1).expect("a leader"));
    swarm.lab.kill_shoald(&old).expect("SIGKILL the leader");
    let survivor = swarm
        .managers
        .iter()
        .find(|m| m.name != old.name)
        .unwrap()
        .clone();
    swarm.wait_nodes(&survivor, "a new leader", |nodes| {
        nodes
            .iter()
            .any(|n| n["ManagerStatus"] == "Leader" && n["Hostname"] != old.name.as_str())
    });
    swarm.wait_nodes(&survivor, "the old leader Unreachable", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == old.name.as_str() && n["ManagerStatus"] == "Unreachable")
    });
    // The acknowledged write survived, and the swarm takes new ones.
    assert_eq!(
        swarm.inspect(&survivor, "n4")["Spec"]["Labels"]["written"],
        "before-the-kill"
    );
    swarm.ok(
        &survivor,
        &[
            "node",
            "update",
            "--label-add",
            "written=after-the-kill",
            "n5",
        ],
    );
    let version = swarm.inspect(&survivor, "n5")["Version"]["Index"]
        .as_u64()
        .unwrap();

    // The old leader restarts from its data root and catches up.
    swarm.lab.spawn_shoald(&old).expect("restart");
    swarm.wait_nodes(&survivor, "the old leader Reachable again", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == old.name.as_str() && n["ManagerStatus"] == "Reachable")
    });
    wait_until(
        "the restarted manager to catch up",
        Duration::from_secs(30),
        || Ok(swarm.store_index(&old) >= version),
    )
    .unwrap();
    assert_eq!(
        swarm.inspect(&old, "n5")["Spec"]["Labels"]["written"],
        "after-the-kill"
    );
}
