//! Services on the lab (issue: Services I): the seeds' walkthrough with `exec` tasks, placement
//! constraints, encrypted networks, a worker lost, a manager restarted while a service scales,
//! and bad input. Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use shoal_tests::{
    binary,
    mesh::{answers, labtool},
    swarm::Swarm,
    wait_until,
};

/// `service ps SERVICE --format json` rows.
fn tasks(swarm: &Swarm, on: &shoal_tests::Host, service: &str) -> Vec<Value> {
    swarm
        .ok(on, &["service", "ps", service, "--format", "json"])
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Running tasks (desired running) per node name.
fn running_per_node(
    swarm: &Swarm,
    on: &shoal_tests::Host,
    service: &str,
) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for t in tasks(swarm, on, service) {
        if t["DesiredState"] == "Running"
            && t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Running"))
        {
            *per.entry(t["Node"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    per
}

fn wait_running(
    swarm: &Swarm,
    on: &shoal_tests::Host,
    service: &str,
    what: &str,
    check: impl Fn(&BTreeMap<String, usize>) -> bool,
) {
    let mut last = BTreeMap::new();
    let waited = wait_until(what, Duration::from_secs(60), || {
        last = running_per_node(swarm, on, service);
        Ok(check(&last))
    });
    if let Err(e) = waited {
        let ps = swarm.ok(on, &["service", "ps", service]);
        panic!("{e}: running per node {last:?}\n{ps}");
    }
}

/// The names that answer `count` requests to `ip:port` from the client.
fn who_answers(swarm: &Swarm, ip: &str, port: u16, count: usize) -> Vec<String> {
    let target = format!("{ip}:{port}");
    let count = count.to_string();
    let out = labtool(
        swarm.lab.client(),
        &[
            "ask",
            "--target",
            &target,
            "--count",
            &count,
            "--timeout-ms",
            "2000",
        ],
    )
    .expect("ask runs");
    answers(&out)
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .collect()
}

fn labtool_path() -> String {
    binary("shoal-labtool")
        .expect("shoal-labtool is built")
        .display()
        .to_string()
}

#[test]
fn the_walkthrough_spreads_publishes_and_drains() {
    let swarm = Swarm::up(1, 2);
    let n1 = swarm.managers[0].clone();
    // Promote and demote, as the walkthrough does.
    swarm.ok(&n1, &["node", "promote", "n2"]);
    swarm.wait_nodes(&n1, "n2 a reachable manager", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n2" && n["ManagerStatus"] == "Reachable")
    });
    swarm.ok(&n1, &["node", "demote", "n2"]);
    swarm.wait_nodes(&n1, "n2 a worker again", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n2" && n["ManagerStatus"] == "")
    });

    let tool = labtool_path();
    let created = swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--name",
            "vote",
            "--replicas",
            "6",
            "--publish",
            "8080:80",
            "host",
            &tool,
            "serve",
            "--port",
            "80",
        ],
    );
    assert!(
        created.contains("overall progress: 6 out of 6 tasks")
            && created.contains("verify: Service converged"),
        "{created}"
    );
    let per = running_per_node(&swarm, &n1, "vote");
    assert_eq!(
        per.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{per:?}"
    );
    let ls = swarm.ok(&n1, &["service", "ls", "--format", "json"]);
    let row: Value = serde_json::from_str(ls.lines().next().unwrap()).unwrap();
    assert_eq!(row["Name"], "vote");
    assert_eq!(row["Replicas"], "6/6");
    assert_eq!(row["Ports"], "*:8080->80/tcp");

    // Every node's 8080 reaches tasks on every node.
    let nodes: Vec<_> = swarm.lab.nodes().to_vec();
    for node in &nodes {
        let ip = node.public_ip.to_string();
        let mut seen = BTreeSet::new();
        let waited = wait_until(
            &format!("{}:8080 to reach all six tasks", node.name),
            Duration::from_secs(30),
            || {
                seen.extend(who_answers(&swarm, &ip, 8080, 24));
                Ok(seen.len() == 6)
            },
        );
        assert!(waited.is_ok(), "{}: {seen:?}", node.name);
    }

    // Drain n2: its tasks move to n1 and n3, and n2 keeps answering on 8080.
    swarm.ok(&n1, &["node", "update", "--availability", "drain", "n2"]);
    wait_running(&swarm, &n1, "vote", "vote's tasks off n2", |per| {
        per.get("n2").is_none() && per.values().sum::<usize>() == 6
    });
    let n2_ip = nodes[1].public_ip.to_string();
    let answered = who_answers(&swarm, &n2_ip, 8080, 12);
    assert_eq!(answered.len(), 12, "n2:8080 while drained: {answered:?}");
    swarm.ok(&n1, &["node", "update", "--availability", "active", "n2"]);
    let ps = swarm.ok(&n1, &["service", "ps", "vote"]);
    assert!(ps.contains("Shutdown"), "{ps}");

    // Removing the service stops every task.
    swarm.ok(&n1, &["service", "rm", "vote"]);
    let waited = wait_until("vote's tasks gone", Duration::from_secs(30), || {
        Ok(swarm
            .ok(&n1, &["node", "ps", "n1", "n2", "n3", "--format", "json"])
            .lines()
            .all(|l| !l.contains("\"DesiredState\":\"Running\"")))
    });
    assert!(waited.is_ok());
}
