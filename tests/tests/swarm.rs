//! The control plane on the lab (issue: Control plane I): a swarm of 3 managers and 2 workers
//! formed with `shoal swarm init|join`, leader failover, restarts, tokens, roles, and links cut
//! at the switch. Needs root.

use shoal_api::call::ClusterCall;
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
    assert_eq!(n4["Description"]["DataPathPort"], 4789);
    swarm.ok(&n1, &["swarm", "update", "--dispatcher-heartbeat", "2s"]);
    let cluster: serde_json::Value =
        serde_json::from_str(&swarm.ok(&n1, &["swarm", "inspect"])).unwrap();
    assert_eq!(
        cluster[0]["Spec"]["Dispatcher"]["HeartbeatPeriod"],
        2_000_000_000_u64
    );

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

/// `text` in base64, as a config's `Data` is sent.
fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Asks the daemon on `socket` directly over its API (the requests the CLI makes), for writes
/// in a tight loop: `POST path` with `body`, or `GET path` without one.
fn request(
    socket: &std::path::Path,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let host: shoal_api::DaemonHost = format!("unix://{}", socket.display())
            .parse()
            .map_err(|e| format!("{e}"))?;
        let api = shoal_api::Client::new(&host);
        match body {
            Some(body) => api.post(path, &body).await,
            None => api.get(path).await,
        }
        .map_err(|e| e.to_string())
    })
}

#[test]
fn a_manager_killed_during_a_stream_of_writes_keeps_every_acknowledged_one() {
    // One manager: whatever it acknowledged can only come back from its own disk.
    let mut swarm = Swarm::up(1, 0);
    let n1 = swarm.managers[0].clone();
    let socket = swarm.lab.socket(&n1);
    let mut acknowledged: Vec<String> = Vec::new();
    for (round, pause_ms) in [150_u64, 420, 777].into_iter().enumerate() {
        let writer = {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut done = Vec::new();
                for i in 0.. {
                    let name = format!("r{round}-{i}");
                    // A config: one raft write, acknowledged once committed.
                    let create = serde_json::json!({ "Name": name, "Data": "MQ==" });
                    match request(&socket, "/configs/create", Some(create)) {
                        Ok(_) => done.push(name),
                        Err(_) => break,
                    }
                }
                done
            })
        };
        std::thread::sleep(Duration::from_millis(pause_ms));
        swarm
            .lab
            .kill_shoald(&n1)
            .expect("SIGKILL the manager mid-stream");
        let written = writer.join().unwrap();
        assert!(
            !written.is_empty(),
            "round {round}: no write was acknowledged before the kill"
        );
        acknowledged.extend(written);
        swarm
            .lab
            .spawn_shoald(&n1)
            .expect("restart from the data root");
        wait_until(
            "the restarted manager to answer",
            Duration::from_secs(30),
            || Ok(request(&socket, &format!("/configs/{}", acknowledged[0]), None).is_ok()),
        )
        .unwrap();
        for name in &acknowledged {
            let got = request(&socket, &format!("/configs/{name}"), None);
            assert!(
                got.is_ok(),
                "acknowledged write {name} is lost after the restart: {got:?}"
            );
        }
    }
    assert!(
        acknowledged.len() > 10,
        "only {} writes in three rounds",
        acknowledged.len()
    );
}

#[test]
fn tokens_addresses_and_repeated_commands_are_checked_and_leave_nothing_behind() {
    let swarm = Swarm::daemons(3);
    let [n1, n2, n3] = [swarm.host("n1"), swarm.host("n2"), swarm.host("n3")];
    // Addresses: two interfaces and no choice, an unknown interface, a bad port.
    let e = swarm.fails(&n1, &["swarm", "init"]);
    assert!(
        e.contains("multiple addresses") && e.contains("--advertise-addr"),
        "{e}"
    );
    let e = swarm.fails(&n1, &["swarm", "init", "--advertise-addr", "eth9"]);
    assert!(e.contains("eth9"), "{e}");
    let e = swarm.fails(&n1, &["swarm", "init", "--advertise-addr", "eth0:99999"]);
    assert!(e.contains("99999"), "{e}");
    let e = swarm.fails(
        &n1,
        &[
            "swarm",
            "init",
            "--advertise-addr",
            "eth0",
            "--data-path-addr",
            "nope0",
        ],
    );
    assert!(e.contains("nope0"), "{e}");
    let e = swarm.fails(
        &n1,
        &[
            "swarm",
            "init",
            "--advertise-addr",
            "eth0",
            "--data-path-port",
            "80",
        ],
    );
    assert!(e.contains("1024 to 49151"), "{e}");
    assert_eq!(swarm.info(&n1)["Swarm"]["LocalNodeState"], "inactive");
    assert!(
        !swarm
            .lab
            .host_dir(&n1)
            .join("data/swarm/state.json")
            .exists()
    );

    swarm.ok(
        &n1,
        &[
            "swarm",
            "init",
            "--advertise-addr",
            "eth0",
            "--data-path-addr",
            "eth1",
        ],
    );
    let e = swarm.fails(&n1, &["swarm", "init", "--advertise-addr", "eth0"]);
    assert!(e.contains("already part of a swarm"), "{e}");
    let me = swarm.inspect(&n1, "self");
    assert_eq!(
        me["Description"]["DataPathAddr"],
        n1.data_ip.unwrap().to_string()
    );

    let remote = format!("{}:2377", n1.public_ip);
    let worker = swarm
        .ok(&n1, &["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_owned();
    let join = |token: &str| {
        swarm.fails(
            &n2,
            &[
                "swarm",
                "join",
                "--token",
                token,
                "--advertise-addr",
                "eth0",
                &remote,
            ],
        )
    };
    // Malformed.
    let e = join("SWMTKN-1-abc");
    assert!(e.contains("invalid join token"), "{e}");
    let e = join("hello");
    assert!(e.contains("invalid join token"), "{e}");
    // The right CA, a wrong secret.
    let wrong = format!("{}-{}", &worker[..worker.len() - 26], "0".repeat(25));
    let e = join(&wrong);
    assert!(e.contains("A valid join token is necessary"), "{e}");
    // A rotated token.
    let rotated = swarm.ok(&n1, &["swarm", "join-token", "--rotate", "worker"]);
    assert!(
        rotated.contains("Successfully rotated worker join token"),
        "{rotated}"
    );
    let e = join(&worker);
    assert!(e.contains("A valid join token is necessary"), "{e}");
    // Another swarm's token: its CA is not the one n1 presents.
    swarm.ok(&n3, &["swarm", "init", "--advertise-addr", "eth0"]);
    let other = swarm
        .ok(&n3, &["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_owned();
    let e = join(&other);
    assert!(
        e.contains("does not match the digest in the join token"),
        "{e}"
    );
    // Nothing was created, on either side.
    assert_eq!(swarm.nodes(&n1).len(), 1);
    assert_eq!(swarm.info(&n2)["Swarm"]["LocalNodeState"], "inactive");
    assert!(
        !swarm
            .lab
            .host_dir(&n2)
            .join("data/swarm/state.json")
            .exists()
    );

    // The current token works; joining again is refused.
    let worker = swarm
        .ok(&n1, &["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_owned();
    let join_args = [
        "swarm",
        "join",
        "--token",
        &worker,
        "--advertise-addr",
        "eth0",
        &remote,
    ];
    swarm.ok(&n2, &join_args);
    let e = swarm.fails(&n2, &join_args);
    assert!(e.contains("already part of a swarm"), "{e}");
    // Unknown nodes.
    let e = swarm.fails(&n1, &["node", "promote", "nosuchnode"]);
    assert!(e.contains("No such node: nosuchnode"), "{e}");
    let e = swarm.fails(&n1, &["node", "update", "--label-rm", "nokey", "n2"]);
    assert!(e.contains("nokey"), "{e}");
    assert_eq!(swarm.nodes(&n1).len(), 2);
}

/// The certificates in `host`'s data root.
fn credentials_of(swarm: &Swarm, host: &shoal_tests::Host) -> shoal_control::tls::Credentials {
    let certs = swarm.lab.host_dir(host).join("data/swarm/certs");
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    shoal_control::tls::Credentials {
        cert_pem: read("node.crt"),
        key_pem: read("node.key"),
        ca_pem: read("ca.crt"),
    }
}

/// From `from`'s namespace, with `credentials`, calls `node ls` on `manager`'s control service
/// and a raft vote on its raft service, directly; the two answers.
fn call_as(
    credentials: &shoal_control::tls::Credentials,
    from: &shoal_tests::Host,
    manager: &shoal_tests::Host,
) -> (Result<(), tonic::Status>, Result<(), tonic::Status>) {
    let addr = format!("{}:2377", manager.public_ip);
    shoal_tests::within(&from.netns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(async {
            let tls = credentials.client_config().unwrap();
            let channel = shoal_control::tls::channel(&addr, tls, Duration::from_secs(10)).unwrap();
            let forwarded = shoal_control::manager::protocol::Forwarded {
                op: shoal_control::manager::protocol::Op::User {
                    call: ClusterCall::NodeList.into(),
                    node_id: String::new(),
                },
                caller: None,
                from: String::new(),
                hops: 0,
            };
            let control = shoal_api::v1::control_client::ControlClient::new(channel.clone())
                .call(shoal_api::v1::Forwarded::from(forwarded))
                .await
                .map(drop);
            let raft = shoal_api::v1::raft_client::RaftClient::new(channel)
                .vote(shoal_api::v1::VoteRequest::default())
                .await
                .map(drop);
            (control, raft)
        }))
    })
    .unwrap()
}

#[test]
fn workers_cannot_reach_cluster_state_even_with_their_certificate() {
    let swarm = Swarm::up(1, 1);
    let (n1, n2) = (swarm.managers[0].clone(), swarm.workers[0].clone());
    let e = swarm.fails(&n2, &["node", "ls"]);
    assert!(
        e.contains("This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state."),
        "{e}"
    );
    // The worker's own certificate, straight at the manager's control and raft services.
    let credentials = credentials_of(&swarm, &n2);
    assert_eq!(
        credentials.identity().unwrap().role,
        shoal_control::ca::Role::Worker
    );
    let (control, raft) = call_as(&credentials, &n2, &n1);
    for (what, answer) in [("control", control), ("raft", raft)] {
        let status = answer.expect_err(what);
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{what}: {status:?}"
        );
    }
    // The worker's heartbeats still count: it is Ready.
    assert_eq!(swarm.node(&n1, "n2").unwrap()["Status"], "Ready");
}

#[test]
fn a_manager_cut_off_cannot_commit_and_catches_up_when_the_link_returns() {
    let swarm = Swarm::up_with(3, 0, &["--dispatcher-heartbeat", "1s"]);
    let n1 = swarm.managers[0].clone();
    let leader = swarm.leader(&n1).unwrap();
    let cut = swarm
        .managers
        .iter()
        .find(|m| m.name != leader)
        .unwrap()
        .clone();
    let other = swarm
        .managers
        .iter()
        .find(|m| m.name != leader && m.name != cut.name)
        .unwrap()
        .clone();
    swarm.control_link(&cut, false);
    let e = swarm.fails(&cut, &["node", "update", "--label-add", "from=cut", "self"]);
    assert!(
        e.contains("does not have a leader") || e.contains("cannot be reached"),
        "{e}"
    );
    swarm.ok(
        &other,
        &["node", "update", "--label-add", "from=majority", &cut.name],
    );
    let version = swarm.inspect(&other, &cut.name)["Version"]["Index"]
        .as_u64()
        .unwrap();
    swarm.wait_nodes(&other, "the cut manager Unreachable and Down", |nodes| {
        nodes.iter().any(|n| {
            n["Hostname"] == cut.name.as_str()
                && n["ManagerStatus"] == "Unreachable"
                && n["Status"] == "Down"
        })
    });
    assert!(
        swarm.store_index(&cut) < version,
        "the cut manager applied a write it cannot have received"
    );
    swarm.control_link(&cut, true);
    wait_until(
        "the cut manager to catch up",
        Duration::from_secs(60),
        || Ok(swarm.store_index(&cut) >= version),
    )
    .unwrap();
    swarm.wait_nodes(
        &other,
        "the cut manager Ready and Reachable again",
        |nodes| {
            nodes.iter().any(|n| {
                n["Hostname"] == cut.name.as_str()
                    && n["ManagerStatus"] == "Reachable"
                    && n["Status"] == "Ready"
            })
        },
    );
    assert_eq!(
        swarm.inspect(&cut, "self")["Spec"]["Labels"]["from"],
        "majority"
    );
}

#[test]
fn promotion_demotion_and_removal_keep_the_quorum() {
    let swarm = Swarm::up_with(3, 2, &["--dispatcher-heartbeat", "1s"]);
    let n1 = swarm.managers[0].clone();
    // Writes go on, none refused, while the membership changes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (socket, stop) = (swarm.lab.socket(&n1), stop.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let create = serde_json::json!({ "Name": format!("w{i}"), "Data": "MQ==" });
                if let Err(e) = request(&socket, "/configs/create", Some(create)) {
                    failures.push(e);
                }
                i += 1;
            }
            (i, failures)
        })
    };
    // Promote a worker: it becomes a reachable manager; demote it back.
    swarm.ok(&n1, &["node", "promote", "n4"]);
    swarm.wait_nodes(&n1, "n4 a Reachable manager", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n4" && n["ManagerStatus"] == "Reachable")
    });
    let n4 = swarm.host("n4");
    swarm.ok(&n4, &["node", "ls"]);
    let as_manager = credentials_of(&swarm, &n4);
    assert_eq!(
        as_manager.identity().unwrap().role,
        shoal_control::ca::Role::Manager
    );
    swarm.ok(&n1, &["node", "demote", "n4"]);
    swarm.wait_nodes(&n1, "n4 a worker again", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n4" && n["ManagerStatus"] == "")
    });
    wait_until(
        "n4 to stop being a manager",
        Duration::from_secs(30),
        || Ok(swarm.info(&n4)["Swarm"]["ControlAvailable"] == false),
    )
    .unwrap();
    // Its old manager certificate, still valid, no longer opens the cluster API.
    let (control, _) = call_as(&as_manager, &n4, &n1);
    let status = control.expect_err("a demoted manager's certificate");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("no longer a manager"),
        "{status:?}"
    );
    // Promoted again: it starts a manager on the same port and rejoins the raft.
    swarm.ok(&n1, &["node", "promote", "n4"]);
    swarm.wait_nodes(&n1, "n4 a Reachable manager again", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n4" && n["ManagerStatus"] == "Reachable")
    });
    swarm.ok(&n1, &["node", "demote", "n4"]);
    swarm.wait_nodes(&n1, "n4 a worker once more", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n4" && n["ManagerStatus"] == "")
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (writes, failures) = writer.join().unwrap();
    assert!(
        writes > 10 && failures.is_empty(),
        "{writes} writes, failed: {failures:?}"
    );

    // A manager must be demoted before removal; a Ready node needs --force.
    let e = swarm.fails(&n1, &["node", "rm", "n2"]);
    assert!(
        e.contains("must be demoted to worker before removal"),
        "{e}"
    );
    let e = swarm.fails(&n1, &["node", "rm", "n5"]);
    assert!(e.contains("is not down"), "{e}");

    // With one manager down, demoting another would lose the quorum: refused.
    let leader = swarm.leader(&n1).unwrap();
    let mut others = swarm.managers.iter().filter(|m| m.name != leader).cloned();
    let (down, keep) = (others.next().unwrap(), others.next().unwrap());
    let ask = swarm.host(&leader);
    swarm.lab.kill_shoald(&down).unwrap();
    swarm.wait_nodes(&ask, "the killed manager Unreachable", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == down.name.as_str() && n["ManagerStatus"] == "Unreachable")
    });
    let e = swarm.fails(&ask, &["node", "demote", &keep.name]);
    assert!(e.contains("loss of quorum"), "{e}");
    assert_eq!(
        swarm.node(&ask, &keep.name).unwrap()["ManagerStatus"],
        "Reachable"
    );
    // Demoting the manager that is down keeps the quorum (two of two remain).
    swarm.ok(&ask, &["node", "demote", &down.name]);
    swarm.wait_nodes(&ask, "the down manager demoted", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == down.name.as_str() && n["ManagerStatus"] == "")
    });
    // A worker that is down can be removed without --force once it is Down.
    swarm.wait_nodes(&ask, "the killed node Down", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == down.name.as_str() && n["Status"] == "Down")
    });
    swarm.ok(&ask, &["node", "rm", &down.name]);
    assert!(swarm.node(&ask, &down.name).is_none());
    // Leaving: a worker leaves; a manager is told to demote first.
    let n5 = swarm.host("n5");
    swarm.ok(&n5, &["swarm", "leave"]);
    let e = swarm.fails(&keep, &["swarm", "leave"]);
    assert!(e.contains("--force"), "{e}");
    // Once it is Down, the worker joins again from the same host, with the same data-path
    // address: a Down node holds none.
    swarm.wait_nodes(&ask, "the worker that left Down", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n5" && n["Status"] == "Down")
    });
    let token = swarm.ok(&ask, &["swarm", "join-token", "-q", "worker"]);
    swarm.ok(
        &n5,
        &[
            "swarm",
            "join",
            "--token",
            token.trim(),
            "--advertise-addr",
            "eth0",
            &format!("{}:2377", ask.public_ip),
        ],
    );
    swarm.wait_nodes(&ask, "the worker back, Ready", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n5" && n["Status"] == "Ready")
    });
}

#[test]
fn snapshots_compact_the_log_and_a_new_manager_starts_from_one() {
    let swarm = Swarm::up_with(1, 1, &["--snapshot-interval", "100"]);
    let (n1, n2) = (swarm.managers[0].clone(), swarm.workers[0].clone());
    let socket = swarm.lab.socket(&n1);
    // More than a snapshot interval plus the 500 entries kept for slow followers.
    for i in 0..800 {
        let data = base64_of(&i.to_string());
        let create = serde_json::json!({ "Name": format!("k{i}"), "Data": data });
        request(&socket, "/configs/create", Some(create)).unwrap();
    }
    let raft = swarm.lab.host_dir(&n1).join("data/swarm/raft");
    wait_until(
        "a snapshot and a purged log",
        Duration::from_secs(30),
        || {
            let snapshots = std::fs::read_dir(raft.join("snapshots"))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
                        .count()
                })
                .unwrap_or(0);
            let purged = std::fs::read_to_string(raft.join("purged.json")).is_ok();
            Ok(snapshots == 1 && purged)
        },
    )
    .unwrap();
    // The manager restarts from the snapshot and the log after it.
    let mut swarm = swarm;
    swarm.lab.kill_shoald(&n1).unwrap();
    swarm.lab.spawn_shoald(&n1).unwrap();
    wait_until("the manager back", Duration::from_secs(30), || {
        Ok(request(&socket, "/configs/k0", None).is_ok())
    })
    .unwrap();
    assert_eq!(
        request(&socket, "/configs/k799", None).unwrap()["Spec"]["Data"],
        base64_of("799")
    );
    // A new manager cannot get the purged entries: it is sent the snapshot.
    swarm.ok(&n1, &["node", "promote", "n2"]);
    swarm.wait_nodes(&n1, "n2 a Reachable manager", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n2" && n["ManagerStatus"] == "Reachable")
    });
    let target = swarm.store_index(&n1);
    wait_until("n2 to catch up", Duration::from_secs(30), || {
        Ok(swarm.store_index(&n2) >= target)
    })
    .unwrap();
    let n2_snapshots = swarm.lab.host_dir(&n2).join("data/swarm/raft/snapshots");
    assert_eq!(
        std::fs::read_dir(n2_snapshots).unwrap().count(),
        1,
        "n2 installed a snapshot"
    );
}
