//! Services on the lab (issue: Services I): the seeds' walkthrough with `exec` tasks, placement
//! constraints, encrypted networks, a worker lost, a manager restarted while a service scales,
//! bad input, and the `docker` executor (a Docker Engine started if none runs, an image imported
//! from a rootfs holding `shoal-labtool`). Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use shoal_tests::{
    mesh::answers,
    service::{
        create_serve, labtool_path, running_per_node, tasks, wait_answers, wait_running,
        who_answers,
    },
    swarm::Swarm,
    wait_until,
};

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

    let created = create_serve(
        &swarm,
        &n1,
        &["--name", "vote", "--replicas", "6", "--publish", "8080:80"],
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

    // Each node says how the mesh carries packets on its links: on these plain veth links XDP
    // takes packets in on eth0 and leaves them to TC where it cannot send them (eth0 is also
    // the data-path interface, and its peer takes no XDP frames).
    for node in &nodes {
        let mut paths = Value::Null;
        let waited = wait_until(
            &format!("{}'s mesh paths in node inspect", node.name),
            Duration::from_secs(40),
            || {
                paths = swarm.inspect(&n1, &node.name)["Description"]["MeshPaths"].clone();
                Ok(paths["eth0"] == "in: xdp+tc; out: tc (takes no XDP frames)"
                    && paths["shoal0"] == "out: xdp")
            },
        );
        assert!(waited.is_ok(), "{}: {paths:#}", node.name);
    }

    // Drain n2: its tasks move to n1 and n3, and n2 keeps answering on 8080.
    swarm.ok(&n1, &["node", "update", "--availability", "drain", "n2"]);
    wait_running(
        &swarm,
        &n1,
        "vote",
        "vote's tasks off n2",
        |per: &BTreeMap<String, usize>| per.get("n2").is_none() && per.values().sum::<usize>() == 6,
    );
    let n2_ip = nodes[1].public_ip.to_string();
    wait_answers(&swarm, &n2_ip, 8080, 12);
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

    // A healthy run logs no error on any node (tasks starting once made every node log a failed
    // save of tasks.json several times a second).
    for node in &nodes {
        let errors = swarm.lab.daemon_errors(node);
        assert!(errors.is_empty(), "{}: {errors:#?}", node.name);
    }
}

/// The services `service ls -q` lists.
fn service_count(swarm: &Swarm, on: &shoal_tests::Host) -> usize {
    swarm.ok(on, &["service", "ls", "-q"]).lines().count()
}

#[test]
fn constraints_place_only_where_they_hold_and_bad_input_creates_nothing() {
    let swarm = Swarm::up(2, 1);
    let n1 = swarm.managers[0].clone();
    a_constraint_places_tasks_only_where_it_holds(&swarm, &n1);
    an_unmet_constraint_leaves_tasks_waiting_with_the_reason(&swarm, &n1);
    bad_service_input_is_refused_and_creates_nothing(&swarm, &n1);
    bad_network_input_is_refused_and_a_network_in_use_stays(&swarm, &n1);
}

/// `--constraint node.role==manager`: all four replicas run on the two managers.
fn a_constraint_places_tasks_only_where_it_holds(swarm: &Swarm, n1: &shoal_tests::Host) {
    let out = create_serve(
        swarm,
        n1,
        &[
            "--name",
            "admin",
            "--replicas",
            "4",
            "--constraint",
            "node.role==manager",
        ],
    );
    assert!(out.contains("verify: Service converged"), "{out}");
    let per = running_per_node(swarm, n1, "admin");
    assert_eq!(
        per.keys().cloned().collect::<Vec<_>>(),
        vec!["n1".to_owned(), "n2".to_owned()],
        "{per:?}"
    );
}

/// A constraint no node meets: the tasks wait and say why, as Docker does.
fn an_unmet_constraint_leaves_tasks_waiting_with_the_reason(swarm: &Swarm, n1: &shoal_tests::Host) {
    let tool = labtool_path();
    swarm.ok_line(
        n1,
        &format!(
            "service create --detach --name nowhere --constraint node.labels.zone==mars host {tool} serve --port 81"
        ),
    );
    let waited = wait_until(
        "nowhere's task to explain itself",
        Duration::from_secs(20),
        || {
            Ok(tasks(swarm, n1, "nowhere").iter().any(|t| {
                t["Error"].as_str().is_some_and(|e| {
                    e.contains("no suitable node (scheduling constraints not satisfied on 3 nodes)")
                })
            }))
        },
    );
    assert!(
        waited.is_ok(),
        "{}",
        swarm.ok_line(n1, "service ps nowhere")
    );
}

/// Services that are fine (a published port, aliases in Docker's long `--network` syntax,
/// dnsrr with a host-mode port), then fourteen bad `service create`s, each refused with what
/// was wrong: the service count does not change.
fn bad_service_input_is_refused_and_creates_nothing(swarm: &Swarm, n1: &shoal_tests::Host) {
    create_serve(
        swarm,
        n1,
        &["--detach", "--name", "web", "--publish", "8080:80"],
    );
    swarm.ok_line(n1, "network create front");
    create_serve(
        swarm,
        n1,
        &[
            "--detach",
            "--name",
            "front",
            "--network",
            "name=front,alias=api,alias=www",
        ],
    );
    let inspect = swarm.ok_line(n1, "service inspect front");
    assert!(
        inspect.contains("\"Aliases\": [\n") && inspect.contains("\"www\""),
        "{inspect}"
    );
    create_serve(
        swarm,
        n1,
        &[
            "--detach",
            "--name",
            "rr",
            "--endpoint-mode",
            "dnsrr",
            "--publish",
            "published=8091,target=80,mode=host",
        ],
    );
    let before = service_count(swarm, n1);
    for (args, says) in [
        (vec!["--publish", "80:80:80"], "invalid publish"),
        (vec!["--publish", "published=90"], "missing target"),
        (
            vec!["--network", "nosuchnet"],
            "network nosuchnet not found",
        ),
        (
            vec!["--mode", "global", "--replicas", "2"],
            "replicas can only be used with replicated mode",
        ),
        (
            vec!["--constraint", "node.role=manager"],
            "invalid constraint",
        ),
        (vec!["--name", "web"], "already exists"),
        (
            vec!["--publish", "8080:81"],
            "port '8080' is already in use by service 'web'",
        ),
        (
            vec!["--network", "ingress"],
            "cannot be explicitly attached to the ingress network",
        ),
        (
            vec!["--endpoint-mode", "dnsrr", "--publish", "8090:80"],
            "port published with ingress mode can't be used with dnsrr mode",
        ),
        (
            vec!["--network", "name=front,alias=web"],
            "alias \"web\" on network",
        ),
        (vec!["--network", "name=front,colour=red"], "unknown key"),
        (vec!["--network", "alias=api"], "missing name"),
        (
            vec!["--network", "name=front,alias=a b"],
            "invalid alias name",
        ),
        (
            vec!["--name", "api"],
            "clashes with an alias of service front",
        ),
    ] {
        let mut full = vec!["service", "create", "--detach"];
        full.extend(&args);
        if !args.contains(&"--name") {
            full.extend(["--name", "bad"]);
        }
        full.extend(["host", "/bin/true"]);
        let err = swarm.fails(n1, &full);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(service_count(swarm, n1), before, "nothing was created");
}

/// Networks: a bad subnet, an overlap, a duplicate and another driver are refused; a network
/// in use is not removed until its service goes.
fn bad_network_input_is_refused_and_a_network_in_use_stays(swarm: &Swarm, n1: &shoal_tests::Host) {
    swarm.ok_line(n1, "network create --subnet 10.9.0.0/24 backend");
    for (line, says) in [
        ("--subnet 10.9.0.0/16 other", "overlaps"),
        ("--subnet 10.300.0.0/24 other", "invalid subnet"),
        ("backend", "already exists"),
        ("--driver bridge other", "overlay driver"),
    ] {
        let err = swarm.fails_line(n1, &format!("network create {line}"));
        assert!(err.contains(says), "{line}: {err}");
    }
    create_serve(
        swarm,
        n1,
        &["--detach", "--name", "db", "--network", "backend"],
    );
    let err = swarm.fails_line(n1, "network rm backend");
    assert!(
        err.contains("network backend is in use by service db"),
        "{err}"
    );
    let ls = swarm.ok_line(n1, "network ls --format json");
    assert!(
        ls.contains("\"Name\":\"backend\"") && ls.contains("\"Name\":\"ingress\""),
        "{ls}"
    );
    swarm.ok_line(n1, "service rm db");
    let waited = wait_until("backend free", Duration::from_secs(30), || {
        let out = swarm.lab.shoal(n1, &["network", "rm", "backend"]).unwrap();
        Ok(out.status.success())
    });
    assert!(waited.is_ok());
}

/// The address of the task `id` on its first interface, read in its namespace on `host`.
fn task_ip(swarm: &Swarm, host: &shoal_tests::Host, id: &str, interface: &str) -> String {
    let netns = swarm.lab.host_dir(host).join("data/tasks/netns").join(id);
    let mut command = host.command("nsenter").unwrap();
    command
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-4", "-br", "addr", "show", interface]);
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .nth(2)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {text:?}"))
        .to_owned()
}

#[test]
fn a_service_on_an_encrypted_network_talks_across_nodes() {
    let swarm = Swarm::up(1, 1);
    let n1 = swarm.managers[0].clone();
    let tool = labtool_path();
    swarm.ok(&n1, &["network", "create", "--opt", "encrypted", "secret"]);
    let inspect: Value =
        serde_json::from_str(&swarm.ok(&n1, &["network", "inspect", "secret"])).unwrap();
    assert!(
        inspect[0]["Spec"]["DriverConfiguration"]["Options"]
            .get("encrypted")
            .is_some(),
        "{inspect}"
    );
    create_serve(
        &swarm,
        &n1,
        &["--name", "secret", "--replicas", "2", "--network", "secret"],
    );
    let all = tasks(&swarm, &n1, "secret");
    let on = |node: &str| {
        all.iter()
            .find(|t| t["Node"] == node && t["DesiredState"] == "Running")
            .unwrap_or_else(|| panic!("a task on {node}: {all:?}"))
    };
    let (t1, t2) = (on("n1"), on("n2"));
    let n2 = swarm.host("n2");
    let ip2 = task_ip(&swarm, &n2, t2["ID"].as_str().unwrap(), "eth0");
    // From the task on n1 to the task on n2, over the encrypted network.
    let netns = swarm
        .lab
        .host_dir(&n1)
        .join("data/tasks/netns")
        .join(t1["ID"].as_str().unwrap());
    let mut ask = n1.command("nsenter").unwrap();
    ask.arg(format!("--net={}", netns.display())).args([
        &tool,
        "ask",
        "--target",
        &format!("{ip2}:80"),
        "--count",
        "3",
    ]);
    let out = ask.output().unwrap();
    let names: Vec<String> = answers(&out)
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .collect();
    assert_eq!(names.len(), 3, "{}", shoal_tests::output_text(&out));
    assert!(
        names.iter().all(|n| n == t2["Name"].as_str().unwrap()),
        "{names:?}"
    );
    // It went through WireGuard.
    let dp: Value = serde_json::from_str(&swarm.ok(&n1, &["dataplane", "inspect"])).unwrap();
    let peers = dp["wireguard_peers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        peers
            .iter()
            .any(|p| p["tx_bytes"].as_u64().unwrap_or(0) > 0
                && p["rx_bytes"].as_u64().unwrap_or(0) > 0),
        "{dp:#}"
    );
}

#[test]
fn a_lost_worker_s_tasks_are_replaced_and_the_mesh_stops_sending_to_them() {
    let swarm = Swarm::up_with(1, 2, &["--dispatcher-heartbeat", "1s"]);
    let n1 = swarm.managers[0].clone();
    create_serve(
        &swarm,
        &n1,
        &["--name", "vote", "--replicas", "6", "--publish", "8080:80"],
    );
    let n3 = swarm.host("n3");
    swarm.lab.kill_shoald(&n3).unwrap();
    swarm.control_link(&n3, false);
    wait_running(
        &swarm,
        &n1,
        "vote",
        "six tasks on n1 and n2",
        |per: &BTreeMap<String, usize>| !per.contains_key("n3") && per.values().sum::<usize>() == 6,
    );
    let ip = swarm.lab.nodes()[0].public_ip.to_string();
    let waited = wait_until("every request answered", Duration::from_secs(20), || {
        Ok(who_answers(&swarm, &ip, 8080, 24).len() == 24)
    });
    assert!(waited.is_ok(), "requests went to the lost node's tasks");
    let nodes = swarm.nodes(&n1);
    assert!(
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n3" && n["Status"] == "Down"),
        "{nodes:?}"
    );
}

#[test]
fn a_manager_restarted_while_a_service_scales_converges() {
    let mut swarm = Swarm::up(3, 0);
    let n1 = swarm.managers[0].clone();
    let n2 = swarm.managers[1].clone();
    create_serve(&swarm, &n1, &["--name", "grow", "--replicas", "3"]);
    swarm.ok(&n2, &["service", "scale", "--detach", "grow=15"]);
    swarm.lab.kill_shoald(&n1).unwrap();
    swarm.lab.spawn_shoald(&n1).unwrap();
    wait_running(
        &swarm,
        &n2,
        "grow",
        "fifteen tasks running",
        |per: &BTreeMap<String, usize>| per.values().sum::<usize>() == 15,
    );
    // The restarted manager's own tasks were adopted or replaced, never doubled.
    let all = tasks(&swarm, &n2, "grow");
    let live: BTreeSet<&str> = all
        .iter()
        .filter(|t| t["DesiredState"] == "Running")
        .filter_map(|t| t["Name"].as_str())
        .collect();
    assert_eq!(live.len(), 15, "{all:?}");
}

#[test]
fn the_docker_executor_runs_containers_that_shoal_plumbs() {
    let engine = shoal_tests::docker::Engine::ensure().expect("a Docker Engine runs");
    let image = "shoal-labtool:lab";
    shoal_tests::docker::import_labtool_image(image).expect("the image is imported");
    let mut swarm = Swarm::up_with_daemons(1, 2, &[], &["--executor", "docker"]);
    let n1 = swarm.managers[0].clone();
    swarm.ok(&n1, &["network", "create", "app"]);
    swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--publish",
            "8080:80",
            "--network",
            "app",
            image,
            "/shoal-labtool",
            "serve",
            "--port",
            "80",
        ],
    );
    wait_running(
        &swarm,
        &n1,
        "web",
        "one container per node",
        |per: &BTreeMap<String, usize>| per.len() == 3 && per.values().all(|n| *n == 1),
    );
    let all: BTreeSet<String> = ["web.1", "web.2", "web.3"].map(String::from).into();
    for node in swarm.lab.nodes() {
        let mut names = BTreeSet::new();
        let waited = wait_until("every task answering", Duration::from_secs(20), || {
            names = who_answers(&swarm, &node.public_ip.to_string(), 8080, 12)
                .into_iter()
                .collect();
            Ok(names == all)
        });
        assert!(waited.is_ok(), "{}:8080 answered from {names:?}", node.name);
    }
    // Containers of the engine, with no network of Docker's: Shoal plumbed them.
    let containers = || -> BTreeMap<String, String> {
        shoal_tests::docker::docker(&[
            "ps",
            "--filter",
            "label=io.shoal.service.name=web",
            "--format",
            "{{.ID}} {{.Networks}}",
        ])
        .expect("docker ps")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, net)| (id.to_owned(), net.to_owned()))
        .collect()
    };
    let before = containers();
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.values().all(|net| net == "none"), "{before:?}");
    // Their /etc/resolv.conf, through the container's DNS settings, names the embedded server,
    // which knows the service's tasks.
    let first = before.keys().next().unwrap().clone();
    let path = shoal_tests::docker::docker(&["inspect", "--format", "{{.ResolvConfPath}}", &first])
        .expect("docker inspect");
    let resolv = std::fs::read_to_string(path.trim()).expect("the container's resolv.conf");
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");
    let answer = shoal_tests::docker::docker(&[
        "exec",
        &first,
        "/shoal-labtool",
        "resolve",
        "--name",
        "tasks.web",
    ])
    .expect("docker exec");
    assert_eq!(addresses(answer.trim()).len(), 3, "{answer}");

    // A restarted shoald adopts its running container.
    let n2 = swarm.host("n2");
    swarm.lab.kill_shoald(&n2).unwrap();
    swarm.lab.spawn_shoald(&n2).unwrap();
    wait_running(&swarm, &n1, "web", "three running", |per| {
        per.values().sum::<usize>() == 3
    });
    assert_eq!(containers(), before, "a container was replaced");

    // A container that dies is replaced.
    let victim = before.keys().next().unwrap().clone();
    shoal_tests::docker::docker(&["kill", &victim]).expect("docker kill");
    let waited = wait_until(
        "the killed container's task failed and replaced",
        Duration::from_secs(60),
        || {
            let now = containers();
            Ok(now.len() == 3
                && !now.contains_key(&victim)
                && tasks(&swarm, &n1, "web").iter().any(|t| {
                    t["CurrentState"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("Failed"))
                        && t["Error"].as_str().is_some_and(|e| e.contains("137"))
                }))
        },
    );
    if let Err(e) = waited {
        panic!("{e}\n{}", swarm.ok(&n1, &["service", "ps", "web"]));
    }
    wait_running(&swarm, &n1, "web", "three running again", |per| {
        per.values().sum::<usize>() == 3
    });

    // An image the engine lacks and cannot pull: the task is rejected with the engine's word.
    swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "ghost",
            "nosuch/image:1",
        ],
    );
    let waited = wait_until("ghost's task rejected", Duration::from_secs(60), || {
        Ok(tasks(&swarm, &n1, "ghost").iter().any(|t| {
            t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Rejected"))
                && t["Error"]
                    .as_str()
                    .is_some_and(|e| e.contains("No such image: nosuch/image:1"))
        }))
    });
    if let Err(e) = waited {
        panic!("{e}\n{}", swarm.ok(&n1, &["service", "ps", "ghost"]));
    }

    // Removing the services removes their containers.
    swarm.ok(&n1, &["service", "rm", "web", "ghost"]);
    let waited = wait_until("the containers removed", Duration::from_secs(60), || {
        Ok(shoal_tests::docker::task_containers().is_empty())
    });
    assert!(
        waited.is_ok(),
        "{:?}",
        shoal_tests::docker::task_containers()
    );
    drop(swarm);
    drop(engine);
}

/// Issue Data plane III, item 5: `client-ip=preserve` in the long `--publish` syntax (Shoal's
/// own key) shows the tasks the client's address through the routing mesh from every node, a
/// port without it shows the entry node's, and a `mode=host` port answers only where a task
/// runs, with the client's address (its replies leave through the ingress network whatever the
/// task's other routes).
#[test]
fn published_ports_show_the_client_s_address_when_asked_and_in_host_mode() {
    let swarm = Swarm::up(1, 2);
    let n1 = swarm.managers[0].clone();
    let publish = ["published=8096,target=80,client-ip=preserve", "8097:80"];
    create_serve(
        &swarm,
        &n1,
        &[
            "--name",
            "keep",
            "--replicas",
            "3",
            "--publish",
            publish[0],
            "--publish",
            publish[1],
        ],
    );
    create_serve(
        &swarm,
        &n1,
        &[
            "--name",
            "local",
            "--replicas",
            "1",
            "--constraint",
            "node.hostname==n2",
            "--publish",
            "published=8098,target=80,mode=host",
        ],
    );
    let inspect = swarm.ok(&n1, &["service", "inspect", "keep"]);
    assert!(inspect.contains("\"ClientIp\": \"preserve\""), "{inspect}");
    let client = swarm.lab.client().public_ip.to_string();
    let peer = |node: usize, port: u16| -> Result<(String, String), String> {
        let ip = swarm.lab.nodes()[node].public_ip.to_string();
        let url = format!("http://{ip}:{port}/peer");
        let out = swarm
            .lab
            .run(
                swarm.lab.client(),
                "curl",
                &["-sS", "--max-time", "3", &url],
            )
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("{url}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (name, from) = body.split_once(' ').ok_or(format!("{url}: {body:?}"))?;
        Ok((name.to_owned(), from.to_owned()))
    };
    let waited = wait_until("every node publishes 8096", Duration::from_secs(30), || {
        Ok((0..3).all(|node| peer(node, 8096).is_ok()))
    });
    assert!(
        waited.is_ok(),
        "{:?}",
        (0..3).map(|n| peer(n, 8096)).collect::<Vec<_>>()
    );
    let mut names = BTreeSet::new();
    for node in 0..3 {
        for _ in 0..6 {
            let (name, from) = peer(node, 8096).expect("8096 answers");
            assert_eq!(
                from.split(':').next(),
                Some(client.as_str()),
                "node {node}: {name} saw {from}"
            );
            names.insert(name);
            let (name, from) = peer(node, 8097).expect("8097 answers");
            assert_ne!(
                from, client,
                "node {node}: 8097 translates the client to the entry node's ingress address; {name} saw it"
            );
        }
    }
    assert!(
        names.len() > 1,
        "connections spread over the tasks: {names:?}"
    );
    let (_, from) = peer(1, 8098).expect("8098 answers on n2, where its task runs");
    assert_eq!(
        from.split(':').next(),
        Some(client.as_str()),
        "mode=host keeps the client: {from}"
    );
    let refused = peer(0, 8098).expect_err("n1 runs no task of local");
    assert!(
        refused.contains("refused") || refused.contains("Failed to connect"),
        "{refused}"
    );
    // Snat does not apply to mode=host: refused by the CLI and by the managers.
    let out = swarm
        .lab
        .shoal(
            &n1,
            &[
                "service",
                "create",
                "--name",
                "bad",
                "--publish",
                "published=8099,target=80,mode=host,client-ip=snat",
                "busybox",
            ],
        )
        .expect("the CLI runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("always keeps the client's address"));
}

/// Runs `program args` inside task `id`'s network namespace on `host`.
fn in_task(
    swarm: &Swarm,
    host: &shoal_tests::Host,
    id: &str,
    program: &str,
    args: &[&str],
) -> std::process::Output {
    let netns = swarm.lab.host_dir(host).join("data/tasks/netns").join(id);
    let mut command = host.command("nsenter").unwrap();
    command
        .arg(format!("--net={}", netns.display()))
        .arg(program)
        .args(args);
    command.output().unwrap()
}

/// The PID of the process of an `exec` task (the one whose environment names it).
fn task_pid(id: &str) -> u32 {
    let needle = format!("SHOAL_TASK_ID={id}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            return pid;
        }
    }
    panic!("no process of task {id}");
}

/// Runs `program` in the network and mount namespaces of the task whose process is `pid`: as
/// the task's own programs run, with its /etc/resolv.conf.
fn in_task_namespaces(
    host: &shoal_tests::Host,
    pid: u32,
    program: &str,
    args: &[&str],
) -> std::process::Output {
    let mut command = host.command("nsenter").unwrap();
    command
        .args(["-t", &pid.to_string(), "-n", "-m"])
        .arg(program)
        .args(args);
    command.output().unwrap()
}

/// The answer of the embedded DNS server in task `id` to `name` (`<RCODE> <address>...`).
fn resolve_in(
    swarm: &Swarm,
    host: &shoal_tests::Host,
    id: &str,
    name: &str,
    extra: &[&str],
) -> String {
    let mut args = vec!["resolve", "--name", name, "--timeout-ms", "2000"];
    args.extend_from_slice(extra);
    let out = in_task(swarm, host, id, &labtool_path(), &args);
    assert!(out.status.success(), "{}", shoal_tests::output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The addresses of a [`resolve_in`] answer.
fn addresses(line: &str) -> Vec<String> {
    line.split(' ').skip(1).map(str::to_owned).collect()
}

/// The name of the task answering on each address, asked from task `id`.
fn answering(
    swarm: &Swarm,
    host: &shoal_tests::Host,
    id: &str,
    ips: &[String],
) -> BTreeSet<String> {
    ips.iter()
        .map(|ip| {
            let target = format!("{ip}:80");
            let out = in_task(
                swarm,
                host,
                id,
                &labtool_path(),
                &["ask", "--target", &target],
            );
            match answers(&out).first() {
                Some((_, Ok(name))) => name.clone(),
                _ => panic!("{ip}: {}", shoal_tests::output_text(&out)),
            }
        })
        .collect()
}

/// `count` requests to `target` by name from the task whose process is `pid`, counted per
/// answer (`ERROR ...` for a failed one).
fn by_name(
    host: &shoal_tests::Host,
    pid: u32,
    target: &str,
    count: &str,
) -> BTreeMap<String, usize> {
    let out = in_task_namespaces(
        host,
        pid,
        &labtool_path(),
        &[
            "ask",
            "--target",
            target,
            "--count",
            count,
            "--timeout-ms",
            "2000",
        ],
    );
    let mut per = BTreeMap::new();
    for (_, answer) in answers(&out) {
        *per.entry(answer.unwrap_or_else(|e| format!("ERROR {e}")))
            .or_default() += 1;
    }
    if per.is_empty() {
        per.insert(shoal_tests::output_text(&out), 1);
    }
    per
}

/// Issue Data plane III: a node that dies (daemon killed, both wires cut) takes its task out of
/// the service's DNS names and VIP backends once the managers see it down, and requests by name
/// keep succeeding.
#[test]
fn a_task_of_a_killed_node_leaves_dns_and_the_vip() {
    let swarm = Swarm::up_with(1, 2, &["--dispatcher-heartbeat", "1s"]);
    let n1 = swarm.managers[0].clone();
    swarm.ok(&n1, &["network", "create", "app"]);
    create_serve(
        &swarm,
        &n1,
        &[
            "--name",
            "api",
            "--replicas",
            "2",
            "--constraint",
            "node.role==worker",
            "--network",
            "app",
        ],
    );
    create_serve(
        &swarm,
        &n1,
        &[
            "--name",
            "client",
            "--constraint",
            "node.role==manager",
            "--network",
            "app",
        ],
    );
    wait_running(&swarm, &n1, "api", "one task on each worker", |per| {
        per.get("n2") == Some(&1) && per.get("n3") == Some(&1)
    });
    wait_running(&swarm, &n1, "client", "the client", |per| {
        per.get("n1") == Some(&1)
    });
    let client = tasks(&swarm, &n1, "client")
        .into_iter()
        .find(|t| t["DesiredState"] == "Running")
        .expect("the client task");
    let id = client["ID"].as_str().unwrap().to_owned();
    let pid = task_pid(&id);
    let lost_name = tasks(&swarm, &n1, "api")
        .into_iter()
        .find(|t| t["DesiredState"] == "Running" && t["Node"] == "n3")
        .and_then(|t| t["Name"].as_str().map(str::to_owned))
        .expect("the task on n3");
    let waited = wait_until("both tasks answer by name", Duration::from_secs(30), || {
        Ok(by_name(&n1, pid, "api:80", "20").len() == 2)
    });
    assert!(waited.is_ok(), "{:?}", by_name(&n1, pid, "api:80", "20"));
    let before = addresses(&resolve_in(&swarm, &n1, &id, "tasks.api", &[]));
    let lost_ip = before
        .iter()
        .find(|ip| answering(&swarm, &n1, &id, &[(*ip).clone()]).contains(&lost_name))
        .cloned()
        .expect("the lost task's address");

    let n3 = swarm.host("n3");
    swarm.lab.kill_shoald(&n3).unwrap();
    swarm.control_link(&n3, false);
    let cut = std::process::Command::new("ip")
        .args(["-n", swarm.lab.switch(), "link", "set", "d-n3", "down"])
        .output()
        .unwrap();
    assert!(cut.status.success(), "{}", shoal_tests::output_text(&cut));

    let waited = wait_until(
        "the lost task out of tasks.api",
        Duration::from_secs(60),
        || Ok(!addresses(&resolve_in(&swarm, &n1, &id, "tasks.api", &[])).contains(&lost_ip)),
    );
    assert!(
        waited.is_ok(),
        "{}",
        resolve_in(&swarm, &n1, &id, "tasks.api", &[])
    );
    // Every request answered (the replacement takes the lost task's slot, and its name).
    let per = by_name(&n1, pid, "api:80", "100");
    assert!(per.keys().all(|k| k.starts_with("api.")), "{per:?}");
    assert_eq!(per.values().sum::<usize>(), 100, "{per:?}");
    // The replacement on n2 joins the name and the VIP.
    let waited = wait_until(
        "two tasks answer by name again",
        Duration::from_secs(60),
        || Ok(by_name(&n1, pid, "api:80", "20").len() == 2),
    );
    assert!(waited.is_ok(), "{:?}", by_name(&n1, pid, "api:80", "20"));
}

/// Issue Data plane III, item 3: a task on an ordinary network reaches a server outside the
/// swarm (the lab's client namespace) through its node's way out, and the server sees the node's
/// address; a task whose only network is `--internal` has no way out. The way out survives a
/// restart of the daemon with the same address.
#[test]
fn tasks_reach_outside_through_their_node_and_internal_networks_do_not() {
    let mut swarm = Swarm::up(1, 1);
    let n1 = swarm.managers[0].clone();
    let client = swarm.lab.client().clone();
    let mut outside = client
        .command(labtool_path())
        .expect("a command in the client's namespace");
    outside.args(["serve", "--port", "8000", "--name", "outside"]);
    swarm.lab.spawn(outside).expect("the outside server starts");
    swarm.ok(&n1, &["network", "create", "front"]);
    swarm.ok(&n1, &["network", "create", "--internal", "back"]);
    create_serve(
        &swarm,
        &n1,
        &[
            "--name",
            "open",
            "--replicas",
            "2",
            "--network",
            "front",
            "--publish",
            "8095:80",
        ],
    );
    create_serve(
        &swarm,
        &n1,
        &["--name", "closed", "--replicas", "2", "--network", "back"],
    );
    for service in ["open", "closed"] {
        wait_running(&swarm, &n1, service, "a task on each node", |per| {
            per.len() == 2
        });
    }
    let url = format!("http://{}:8000/peer", client.public_ip);
    let running = |service: &str| -> Vec<(shoal_tests::Host, String)> {
        tasks(&swarm, &n1, service)
            .into_iter()
            .filter(|t| t["DesiredState"] == "Running")
            .map(|t| {
                (
                    swarm.host(t["Node"].as_str().unwrap()),
                    t["ID"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let ask = |swarm: &Swarm, host: &shoal_tests::Host, id: &str| {
        in_task(swarm, host, id, "curl", &["-sS", "--max-time", "3", &url])
    };
    let open = running("open");
    assert_eq!(open.len(), 2);
    for (host, id) in &open {
        let out = ask(&swarm, host, id);
        assert!(
            out.status.success(),
            "{}: {}",
            host.name,
            shoal_tests::output_text(&out)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("outside {}", host.public_ip),
            "the server sees the address of the task's node"
        );
    }
    // A task reaches the swarm's published ports through any node's address, its own included.
    for (host, id) in &open {
        for node in swarm.lab.nodes() {
            let url = format!("http://{}:8095/", node.public_ip);
            let out = in_task(&swarm, host, id, "curl", &["-sS", "--max-time", "3", &url]);
            assert!(
                out.status.success(),
                "from {} to {}: {}",
                host.name,
                node.name,
                shoal_tests::output_text(&out)
            );
        }
    }
    for (host, id) in running("closed") {
        let out = ask(&swarm, &host, &id);
        assert!(
            !out.status.success(),
            "a task on an internal network reached outside from {}",
            host.name
        );
        let routes = in_task(
            &swarm,
            &host,
            &id,
            "ip",
            &["-4", "route", "show", "default"],
        );
        assert_eq!(
            String::from_utf8_lossy(&routes.stdout).trim(),
            "",
            "no default route"
        );
    }
    // A restarted daemon gives the task the way out it had: same address, still reaching out.
    let (host, id) = &open[0];
    let before = task_ip(&swarm, host, id, "eth1");
    swarm.lab.kill_shoald(host).unwrap();
    swarm.lab.spawn_shoald(host).unwrap();
    // New tasks on every node make the restarted daemon apply its whole data plane.
    swarm.ok(&n1, &["service", "scale", "open=4"]);
    wait_running(&swarm, &n1, "open", "two tasks on each node", |per| {
        per.values().all(|n| *n == 2) && per.len() == 2
    });
    let waited = wait_until(
        "the task reaches outside again",
        Duration::from_secs(30),
        || Ok(ask(&swarm, host, id).status.success()),
    );
    assert!(
        waited.is_ok(),
        "{}",
        shoal_tests::output_text(&ask(&swarm, host, id))
    );
    assert_eq!(task_ip(&swarm, host, id, "eth1"), before);
    // With no task left on a node, its way out goes: bridge, veths and NAT.
    swarm.ok(&n1, &["service", "rm", "open", "closed"]);
    for node in swarm.lab.nodes().to_vec() {
        let gone = wait_until("the way out removed", Duration::from_secs(30), || {
            let link = swarm
                .lab
                .run(&node, "ip", &["link", "show", "shoal_gw"])
                .unwrap();
            let nat = swarm
                .lab
                .run(&node, "nft", &["list", "table", "ip", "shoal_way_out"])
                .unwrap();
            Ok(!link.status.success() && !nat.status.success())
        });
        assert!(gone.is_ok(), "{}: the way out stayed", node.name);
    }
}

/// Issue Data plane III, items 1 and 2: a task finds the services on its networks by name
/// through the embedded DNS server its /etc/resolv.conf names (`api` and its alias → the VIP
/// `service inspect` shows, `tasks.api` → every running task, a dnsrr service → its tasks, a task
/// by its name), and not a service on another network; names that are not the swarm's go to the
/// node's resolvers, none reachable here, and come back as an error rather than a hang. Requests
/// to `api` by name reach its tasks on other nodes through the VIP, spread over them; a scale is
/// followed by DNS and the VIP alike, and the client sees the VIP as its peer.
#[test]
fn tasks_find_services_by_name_and_reach_them_through_their_vip() {
    let swarm = Swarm::up(1, 2);
    let n1 = swarm.managers[0].clone();
    swarm.ok(&n1, &["network", "create", "app"]);
    swarm.ok(&n1, &["network", "create", "other"]);
    create_serve(
        &swarm,
        &n1,
        &[
            "--name",
            "api",
            "--replicas",
            "2",
            "--network",
            "name=app,alias=backend",
        ],
    );
    create_serve(
        &swarm,
        &n1,
        &["--name", "client", "--replicas", "1", "--network", "app"],
    );
    create_serve(
        &swarm,
        &n1,
        &[
            "--name",
            "rr",
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            "app",
        ],
    );
    create_serve(
        &swarm,
        &n1,
        &["--name", "hidden", "--replicas", "1", "--network", "other"],
    );
    for (service, count) in [("api", 2), ("client", 1), ("rr", 2), ("hidden", 1)] {
        wait_running(&swarm, &n1, service, "its tasks", |per| {
            per.values().sum::<usize>() == count
        });
    }
    let inspect: Value =
        serde_json::from_str(&swarm.ok(&n1, &["service", "inspect", "api"])).unwrap();
    let vip = inspect[0]["Endpoint"]["VirtualIPs"][0]["Addr"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("a VIP: {inspect}"))
        .to_owned();
    let client = tasks(&swarm, &n1, "client")
        .into_iter()
        .find(|t| t["DesiredState"] == "Running")
        .expect("the client task");
    let host = swarm.host(client["Node"].as_str().unwrap());
    let id = client["ID"].as_str().unwrap().to_owned();

    // The task's resolver is the embedded one.
    let pid = task_pid(&id);
    let resolv = std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");

    let resolve = |name: &str, extra: &[&str]| resolve_in(&swarm, &host, &id, name, extra);
    let who = |ips: &[String]| answering(&swarm, &host, &id, ips);
    assert_eq!(resolve("api", &[]), format!("NOERROR {vip}"));
    assert_eq!(resolve("backend", &[]), format!("NOERROR {vip}"));
    let api_tasks = addresses(&resolve("tasks.api", &[]));
    assert_eq!(
        who(&api_tasks),
        BTreeSet::from(["api.1".to_owned(), "api.2".to_owned()]),
        "{api_tasks:?}"
    );
    // Over TCP too.
    assert_eq!(addresses(&resolve("tasks.api", &["--tcp"])), api_tasks);
    let rr = addresses(&resolve("rr", &[]));
    assert_eq!(
        who(&rr),
        BTreeSet::from(["rr.1".to_owned(), "rr.2".to_owned()]),
        "{rr:?}"
    );
    // A task by its name, as Docker names its container.
    let first = tasks(&swarm, &n1, "api")
        .into_iter()
        .find(|t| t["DesiredState"] == "Running" && t["Name"] == "api.1")
        .expect("task api.1");
    let one = addresses(&resolve(
        &format!("api.1.{}", first["ID"].as_str().unwrap()),
        &[],
    ));
    assert_eq!(who(&one), BTreeSet::from(["api.1".to_owned()]));
    // Not a service on the task's networks, not a name of the swarm: not resolved, and answered.
    for name in ["hidden", "tasks.hidden", "nowhere.invalid"] {
        let line = resolve(name, &[]);
        assert!(line == "SERVFAIL" || line == "NXDOMAIN", "{name}: {line}");
    }

    // Requests by name, as the task's programs make them (its mount namespace, its resolv.conf).
    let spread = |count: &str| by_name(&host, pid, "api:80", count);
    let waited = wait_until("the VIP answers", Duration::from_secs(30), || {
        Ok(spread("4").keys().all(|k| k.starts_with("api.")))
    });
    assert!(waited.is_ok(), "{:?}", spread("4"));
    let per = spread("300");
    assert_eq!(per.len(), 2, "{per:?}");
    for (name, n) in &per {
        assert!(name.starts_with("api."), "{per:?}");
        assert!((90..=210).contains(n), "{name} got {n} of 300: {per:?}");
    }
    // The node's socket programs counted them, under the service's name.
    let inspect: Value = serde_json::from_str(&swarm.ok(&host, &["dataplane", "inspect"]))
        .expect("dataplane inspect is JSON");
    let counted = &inspect["mesh"]["vips"]["api"];
    assert!(
        counted["connections"].as_u64() >= Some(300),
        "{}",
        inspect["mesh"]["vips"]
    );
    // The client sees the VIP as its peer.
    let script = format!(
        "import socket\ns = socket.create_connection(('{vip}', 80), timeout=3)\nprint(s.getpeername()[0])"
    );
    let out = in_task(&swarm, &host, &id, "python3", &["-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        vip,
        "{}",
        shoal_tests::output_text(&out)
    );
    // Scaled: DNS has the third task within a heartbeat, and it takes connections too.
    swarm.ok(&n1, &["service", "scale", "api=3"]);
    let waited = wait_until("three tasks in tasks.api", Duration::from_secs(30), || {
        Ok(addresses(&resolve("tasks.api", &[])).len() == 3)
    });
    assert!(waited.is_ok(), "{}", resolve("tasks.api", &[]));
    assert_eq!(who(&addresses(&resolve("tasks.api", &[]))).len(), 3);
    let waited = wait_until(
        "three tasks behind the VIP",
        Duration::from_secs(30),
        || Ok(spread("60").len() == 3),
    );
    assert!(waited.is_ok(), "{:?}", spread("60"));
}

/// Issue Services II: a rolling update of a service published through the routing mesh drops no
/// request, start-first or stop-first, while a client asks every node 20 times a second; every
/// task ends on the new spec, the old ones stay as history, and `UpdateStatus` reads completed.
#[test]
fn a_rolling_update_drops_no_request() {
    let swarm = Swarm::up(1, 2);
    let n1 = swarm.managers[0].clone();
    create_serve(
        &swarm,
        &n1,
        &["--name", "web", "--replicas", "6", "--publish", "8080:80"],
    );
    wait_running(&swarm, &n1, "web", "six tasks", |per| {
        per.values().sum::<usize>() == 6
    });
    let ips: Vec<String> = swarm
        .lab
        .nodes()
        .iter()
        .map(|n| n.public_ip.to_string())
        .collect();
    for ip in &ips {
        let waited = wait_until("every task answering", Duration::from_secs(20), || {
            let names: BTreeSet<String> = who_answers(&swarm, ip, 8080, 24).into_iter().collect();
            Ok(names.len() == 6)
        });
        assert!(waited.is_ok(), "{ip}:8080 did not answer from every task");
    }
    let client = swarm.lab.client().clone();
    for (version, order, delay) in [("2", "start-first", "2s"), ("3", "stop-first", "1s")] {
        let env = format!("VERSION={version}");
        let targets: Vec<String> = ips.iter().map(|ip| format!("{ip}:8080")).collect();
        let (updated, asked) = shoal_tests::mesh::asking_throughout(&client, &targets, || {
            // Let the clients run before and after the update too.
            std::thread::sleep(Duration::from_secs(1));
            let updated = swarm.lab.shoal(
                &n1,
                &[
                    "service",
                    "update",
                    "--env-add",
                    &env,
                    "--update-parallelism",
                    "2",
                    "--update-delay",
                    delay,
                    "--update-order",
                    order,
                    "web",
                ],
            );
            std::thread::sleep(Duration::from_secs(1));
            updated
        });
        let updated = updated.expect("the CLI runs");
        assert!(
            updated.status.success(),
            "{order}: {}",
            shoal_tests::output_text(&updated)
        );
        let failed: Vec<&String> = asked.iter().filter_map(|a| a.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "{order}: {} of {} requests failed: {failed:?}",
            failed.len(),
            asked.len()
        );
        assert!(asked.len() >= 100, "{order}: only {} requests", asked.len());
        let inspect: Value =
            serde_json::from_str(&swarm.ok(&n1, &["service", "inspect", "web"])).unwrap();
        assert_eq!(
            inspect[0]["UpdateStatus"]["State"], "completed",
            "{inspect:#}"
        );
        assert!(
            inspect[0]["PreviousSpec"]["TaskTemplate"].is_object(),
            "{inspect:#}"
        );
        // Every running task runs the new spec; the replaced ones are history.
        let all = tasks(&swarm, &n1, "web");
        let running: Vec<&Value> = all
            .iter()
            .filter(|t| t["DesiredState"] == "Running")
            .collect();
        assert_eq!(running.len(), 6, "{all:?}");
        for t in running {
            let pid = task_pid(t["ID"].as_str().unwrap());
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            assert!(
                environ.split(|b| *b == 0).any(|kv| kv == env.as_bytes()),
                "{order}: task {} does not run {env}",
                t["Name"]
            );
        }
        let history = all
            .iter()
            .filter(|t| t["DesiredState"] == "Shutdown")
            .count();
        assert!(history >= 6, "{order}: {all:?}");
    }
}

/// Issue Services II: an update whose tasks fail at once is rolled back by itself with
/// `--update-failure-action rollback` (the CLI says so and fails), or paused with `pause`, after
/// which `service rollback` restores the service; a stale update is refused.
#[test]
fn a_failed_update_rolls_back_or_pauses_and_rollback_restores_the_service() {
    let swarm = Swarm::up(1, 1);
    let n1 = swarm.managers[0].clone();
    create_serve(&swarm, &n1, &["--name", "web", "--replicas", "2"]);
    wait_running(&swarm, &n1, "web", "two tasks", |per| {
        per.values().sum::<usize>() == 2
    });
    let status = |swarm: &Swarm| -> (Value, Value) {
        let inspect: Value =
            serde_json::from_str(&swarm.ok(&n1, &["service", "inspect", "web"])).unwrap();
        (
            inspect[0]["UpdateStatus"].clone(),
            inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"].clone(),
        )
    };
    let serving = serde_json::json!(["serve", "--port", "80"]);

    let out = swarm.fails(
        &n1,
        &[
            "service",
            "update",
            "--args",
            "no-such-subcommand",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "3s",
            "web",
        ],
    );
    assert!(out.contains("rolled back due to failure"), "{out}");
    let (update, args) = status(&swarm);
    assert_eq!(update["State"], "rollback_completed", "{update}");
    assert_eq!(args, serving);
    wait_running(&swarm, &n1, "web", "two tasks again", |per| {
        per.values().sum::<usize>() == 2
    });

    let out = swarm.fails(
        &n1,
        &[
            "service",
            "update",
            "--args",
            "no-such-subcommand",
            "--update-failure-action",
            "pause",
            "web",
        ],
    );
    assert!(out.contains("update paused due to failure"), "{out}");
    let (update, args) = status(&swarm);
    assert_eq!(update["State"], "paused", "{update}");
    assert_eq!(args, serde_json::json!(["no-such-subcommand"]));
    swarm.ok(&n1, &["service", "rollback", "web"]);
    let (update, args) = status(&swarm);
    assert_eq!(update["State"], "rollback_completed", "{update}");
    assert_eq!(args, serving);
    wait_running(&swarm, &n1, "web", "two tasks after the rollback", |per| {
        per.values().sum::<usize>() == 2
    });
    // `service update --rollback` is the same rollback, after an update that worked; with
    // another change beside it, it is refused (the change would be lost).
    let env = |swarm: &Swarm| {
        let inspect: Value =
            serde_json::from_str(&swarm.ok(&n1, &["service", "inspect", "web"])).unwrap();
        inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"].clone()
    };
    swarm.ok(&n1, &["service", "update", "--env-add", "ROUND=2", "web"]);
    assert!(env(&swarm).to_string().contains("ROUND=2"));
    let said = swarm.fails(
        &n1,
        &["service", "update", "--rollback", "--env-add", "X=1", "web"],
    );
    assert!(said.contains("--rollback cannot be combined"), "{said}");
    swarm.ok(&n1, &["service", "update", "--rollback", "web"]);
    let (update, args) = status(&swarm);
    assert_eq!(update["State"], "rollback_completed", "{update}");
    assert_eq!(args, serving);
    assert!(!env(&swarm).to_string().contains("ROUND=2"));
    // Bad input changes nothing.
    for (flags, says) in [
        (vec!["--update-delay", "soon"], "invalid duration"),
        (vec!["--update-max-failure-ratio", "2"], "from 0 to 1"),
        (vec!["--publish-rm", "7070"], "publishes no such port"),
        (vec!["--network-rm", "nowhere"], "is not attached"),
    ] {
        let mut args = vec!["service", "update"];
        args.extend(flags);
        args.push("web");
        let out = swarm.fails(&n1, &args);
        assert!(out.contains(says), "{args:?}: {out}");
    }
    let (after, _) = status(&swarm);
    assert_eq!(after, update, "a refused update changed the service");

    // History: `service ps --filter`, and `swarm update --task-history-limit`.
    let rows = |filter: &str| -> usize {
        swarm
            .ok(&n1, &["service", "ps", "-q", "--filter", filter, "web"])
            .lines()
            .count()
    };
    assert_eq!(rows("desired-state=running"), 2);
    assert!(rows("desired-state=shutdown") > 2);
    swarm.ok(&n1, &["swarm", "update", "--task-history-limit", "1"]);
    let trimmed = wait_until("one old task per slot", Duration::from_secs(30), || {
        Ok(rows("desired-state=shutdown") == 2)
    });
    assert!(
        trimmed.is_ok(),
        "{}",
        swarm.ok(&n1, &["service", "ps", "web"])
    );
    let out = swarm.fails(
        &n1,
        &["service", "ps", "--filter", "desired-state=maybe", "web"],
    );
    assert!(out.contains("want running, shutdown or accepted"), "{out}");
    let out = swarm.fails(&n1, &["swarm", "update", "--task-history-limit", "1000"]);
    assert!(out.contains("at most 100"), "{out}");
}

/// Issue Services II: the rolling updater lives in the store, not in the leader's memory: when
/// the leader is SIGKILLed in the middle of an update, the new leader finishes it.
#[test]
fn a_new_leader_finishes_an_update_the_old_one_started() {
    let swarm = Swarm::up_with(3, 0, &["--dispatcher-heartbeat", "1s"]);
    let n1 = swarm.managers[0].clone();
    create_serve(&swarm, &n1, &["--name", "web", "--replicas", "6"]);
    wait_running(&swarm, &n1, "web", "six tasks", |per| {
        per.values().sum::<usize>() == 6
    });
    let leader = swarm.leader(&n1).expect("a leader");
    swarm.ok(
        &n1,
        &[
            "service",
            "update",
            "--detach",
            "--env-add",
            "VERSION=2",
            "--update-parallelism",
            "1",
            "--update-delay",
            "2s",
            "web",
        ],
    );
    // Kill the leader once the update is under way, not done.
    let waited = wait_until("a first task replaced", Duration::from_secs(30), || {
        Ok(tasks(&swarm, &n1, "web")
            .iter()
            .any(|t| t["DesiredState"] == "Shutdown"))
    });
    assert!(waited.is_ok(), "the update did not start");
    let killed = swarm.host(&leader);
    swarm.lab.kill_shoald(&killed).unwrap();
    let survivor = swarm
        .managers
        .iter()
        .find(|m| m.name != leader)
        .expect("another manager")
        .clone();
    let mut last = Value::Null;
    let waited = wait_until("the update completed", Duration::from_secs(120), || {
        let Ok(out) = swarm.lab.shoal(&survivor, &["service", "inspect", "web"]) else {
            return Ok(false);
        };
        let Ok(inspect) = serde_json::from_slice::<Value>(&out.stdout) else {
            return Ok(false);
        };
        last = inspect[0]["UpdateStatus"].clone();
        Ok(last["State"] == "completed")
    });
    assert!(waited.is_ok(), "{last}");
    assert!(
        last["StartedAt"].as_str() < last["CompletedAt"].as_str(),
        "{last}"
    );
    wait_running(
        &swarm,
        &survivor,
        "web",
        "six tasks on the new spec",
        |per| per.values().sum::<usize>() == 6 && !per.contains_key(&leader),
    );
    for t in tasks(&swarm, &survivor, "web")
        .iter()
        .filter(|t| t["DesiredState"] == "Running")
    {
        let pid = task_pid(t["ID"].as_str().unwrap());
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            environ.split(|b| *b == 0).any(|kv| kv == b"VERSION=2"),
            "task {} does not run the new spec",
            t["Name"]
        );
    }
}

/// Issue Services II, item 4: a task that ends is replaced or not as its restart policy says
/// (`none`, `on-failure`, `any`), at most `--restart-max-attempts` times; tasks that completed
/// under `none` or `on-failure` stay complete.
#[test]
fn the_restart_policy_decides_what_happens_to_a_task_that_ends() {
    let swarm = Swarm::up(1, 0);
    let n1 = swarm.managers[0].clone();
    let create = |name: &str, flags: &[&str], program: &str| {
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--restart-delay",
            "1s",
        ];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["host", program]);
        swarm.ok(&n1, &args);
    };
    create("never", &["--restart-condition", "none"], "/bin/false");
    create(
        "twice",
        &[
            "--restart-condition",
            "on-failure",
            "--restart-max-attempts",
            "2",
        ],
        "/bin/false",
    );
    create("done", &["--restart-condition", "on-failure"], "/bin/true");
    create("always", &["--restart-condition", "any"], "/bin/true");
    let ended = |service: &str, state: &str| {
        tasks(&swarm, &n1, service)
            .iter()
            .filter(|t| {
                t["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(state))
            })
            .count()
    };
    let waited = wait_until("the policies played out", Duration::from_secs(60), || {
        Ok(ended("twice", "Failed") == 3
            && ended("never", "Failed") == 1
            && ended("done", "Complete") == 1
            && ended("always", "Complete") >= 3)
    });
    assert!(
        waited.is_ok(),
        "{}",
        swarm.ok(&n1, &["service", "ps", "never", "twice", "done", "always"])
    );
    // Time for another restart, which does not come.
    std::thread::sleep(Duration::from_secs(3));
    for (service, total) in [("never", 1), ("twice", 3), ("done", 1)] {
        let all = tasks(&swarm, &n1, service);
        assert_eq!(all.len(), total, "{service}: {all:?}");
    }
    // Bad input is refused and creates nothing.
    let out = swarm.fails(
        &n1,
        &[
            "service",
            "create",
            "--restart-condition",
            "sometimes",
            "host",
            "/bin/true",
        ],
    );
    assert!(out.contains("sometimes"), "{out}");
    let out = swarm.fails(
        &n1,
        &[
            "service",
            "create",
            "--restart-delay",
            "1 minute",
            "host",
            "/bin/true",
        ],
    );
    assert!(out.contains("invalid duration"), "{out}");
    let listed = swarm.ok(&n1, &["service", "ls", "-q"]);
    assert_eq!(listed.lines().count(), 4, "{listed}");
}

/// Removes a file when dropped (a test's switch, even if the test panics).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Issue Services II, item 5: a task with a health check is running for the swarm only once the
/// check passes; one that turns unhealthy (also one adopted by a restarted daemon) is stopped,
/// reported failed with Docker's word, and replaced, and the replacements run only once they
/// pass.
#[test]
fn a_task_runs_only_while_healthy_and_an_unhealthy_one_is_replaced() {
    let mut swarm = Swarm::up(1, 1);
    let n1 = swarm.managers[0].clone();
    let sick = RemoveOnDrop(std::path::PathBuf::from(format!(
        "/tmp/shoal-test-sick-{}",
        std::process::id()
    )));
    let check = format!("test ! -e {}", sick.0.display());
    create_serve(
        &swarm,
        &n1,
        &[
            "--name",
            "web",
            "--replicas",
            "2",
            "--health-cmd",
            &check,
            "--health-interval",
            "1s",
            "--health-retries",
            "2",
        ],
    );
    wait_running(&swarm, &n1, "web", "two healthy tasks", |per| {
        per.values().sum::<usize>() == 2
    });
    let first: BTreeSet<String> = tasks(&swarm, &n1, "web")
        .iter()
        .filter_map(|t| t["ID"].as_str().map(str::to_owned))
        .collect();
    // A restarted daemon adopts its task and goes on checking it.
    let n2 = swarm.host("n2");
    swarm.lab.kill_shoald(&n2).unwrap();
    swarm.lab.spawn_shoald(&n2).unwrap();
    std::fs::write(&sick.0, b"").unwrap();
    let unhealthy = wait_until(
        "both tasks failed as unhealthy",
        Duration::from_secs(60),
        || {
            let failed = tasks(&swarm, &n1, "web")
                .iter()
                .filter(|t| first.contains(t["ID"].as_str().unwrap_or_default()))
                .filter(|t| {
                    t["CurrentState"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("Failed"))
                        && t["Error"]
                            .as_str()
                            .is_some_and(|e| e.contains("unhealthy container"))
                })
                .count();
            Ok(failed == 2)
        },
    );
    assert!(
        unhealthy.is_ok(),
        "{}",
        swarm.ok(&n1, &["service", "ps", "web"])
    );
    // Their replacements start, and stay starting while the check fails.
    let replaced = wait_until("replacements starting", Duration::from_secs(60), || {
        let all = tasks(&swarm, &n1, "web");
        let live: Vec<&Value> = all
            .iter()
            .filter(|t| t["DesiredState"] == "Running")
            .collect();
        Ok(live.len() == 2
            && live.iter().all(|t| {
                t["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Starting"))
            }))
    });
    assert!(
        replaced.is_ok(),
        "{}",
        swarm.ok(&n1, &["service", "ps", "web"])
    );
    std::fs::remove_file(&sick.0).unwrap();
    wait_running(&swarm, &n1, "web", "two healthy tasks again", |per| {
        per.values().sum::<usize>() == 2
    });
}
