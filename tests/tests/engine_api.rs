//! Issue "Speak Docker" (17), the read path: the docker CLI (Debian's 20.10, and the newest one
//! on the machine when there is one) and bollard read a Shoal swarm through the Docker Engine
//! API that `shoald` serves on its socket, and get what `shoal` shows.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use shoal_tests::{
    Host, output_text,
    service::{create_serve, labtool_path, running_per_node, wait_answers, wait_running},
    swarm::Swarm,
};

/// The docker CLIs to drive Shoal with: Debian's (setup installs it) and a newer one if the
/// machine has it.
fn clis() -> Vec<&'static str> {
    let found: Vec<&str> = ["/usr/bin/docker", "/usr/local/bin/docker"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect();
    assert!(
        !found.is_empty(),
        "no docker CLI: `cargo xtask setup` installs docker.io"
    );
    found
}

/// `cli args` against `host`'s shoald, as a user with `DOCKER_HOST` set runs it.
fn docker_command(swarm: &Swarm, host: &Host, cli: &str, args: &[&str]) -> Command {
    let mut command = Command::new(cli);
    command
        .env(
            "DOCKER_HOST",
            format!("unix://{}", swarm.lab.socket(host).display()),
        )
        .env(
            "DOCKER_CONFIG",
            std::env::temp_dir().join("shoal-test-docker-config"),
        )
        .args(args);
    command
}

/// [`docker_command`], run to its end.
fn docker(swarm: &Swarm, host: &Host, cli: &str, args: &[&str]) -> Output {
    docker_command(swarm, host, cli, args)
        .output()
        .expect("the docker CLI runs")
}

/// [`docker`]'s standard output, which must succeed.
fn docker_ok(swarm: &Swarm, host: &Host, cli: &str, args: &[&str]) -> String {
    let out = docker(swarm, host, cli, args);
    assert!(
        out.status.success(),
        "{cli} {args:?}: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// [`docker`]'s standard error, which must fail.
fn docker_fails(swarm: &Swarm, host: &Host, cli: &str, args: &[&str]) -> String {
    let out = docker(swarm, host, cli, args);
    assert!(
        !out.status.success(),
        "{cli} {args:?} succeeded: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

fn lines(text: &str) -> BTreeSet<String> {
    text.lines().map(|l| l.trim().to_owned()).collect()
}

/// Every docker CLI on the machine lists and inspects nodes, services, tasks and networks of a
/// three-node swarm as Docker would show them, and gets Docker's errors for what is wrong;
/// bollard, as a library client, lists the same nodes, services and tasks as `shoal`.
#[test]
fn docker_clients_read_the_swarm_through_the_engine_api() {
    let swarm = Swarm::up(1, 2);
    let n1 = swarm.managers[0].clone();
    let n2 = swarm.workers[0].clone();
    swarm.ok(&n1, &["network", "create", "--opt", "encrypted", "backend"]);
    create_serve(
        &swarm,
        &n1,
        &["--name", "web", "--replicas", "3", "--publish", "8080:80"],
    );
    wait_running(&swarm, &n1, "web", "three tasks", |per| {
        per.values().sum::<usize>() == 3
    });
    let node_ids: BTreeSet<String> = swarm
        .nodes(&n1)
        .iter()
        .map(|n| n["ID"].as_str().unwrap().to_owned())
        .collect();

    for cli in clis() {
        let run = |args: &[&str]| docker_ok(&swarm, &n1, cli, args);
        assert_eq!(
            run(&[
                "version",
                "--format",
                "{{.Server.APIVersion}} {{.Server.Os}}"
            ]),
            "1.47 linux"
        );
        assert_eq!(
            run(&[
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.Nodes}} {{.Swarm.Managers}}",
            ]),
            "active true 3 1"
        );
        assert_eq!(
            lines(&run(&[
                "node",
                "ls",
                "--format",
                "{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}} {{.Self}}",
            ])),
            lines("n1 Ready Active Leader true\nn2 Ready Active  false\nn3 Ready Active  false"),
        );
        assert_eq!(
            run(&[
                "node",
                "inspect",
                "self",
                "--format",
                "{{.Description.Hostname}}"
            ]),
            "n1"
        );
        assert_eq!(
            run(&[
                "service",
                "ls",
                "--format",
                "{{.Name}} {{.Mode}} {{.Replicas}} {{.Ports}}",
            ]),
            "web replicated 3/3 *:8080->80/tcp"
        );
        assert_eq!(
            run(&[
                "service",
                "inspect",
                "web",
                "--format",
                "{{.Spec.Name}} {{.Spec.Mode.Replicated.Replicas}}",
            ]),
            "web 3"
        );
        // `inspect` asks for Docker's defaults where the spec sets nothing.
        assert_eq!(
            run(&[
                "service",
                "inspect",
                "web",
                "--format",
                "{{.Spec.UpdateConfig.Order}} {{.Spec.TaskTemplate.RestartPolicy.Condition}} {{.Spec.EndpointSpec.Mode}}",
            ]),
            "stop-first any vip"
        );
        // `service ps` resolves the service by name and each task's node by ID.
        let ps = run(&[
            "service",
            "ps",
            "web",
            "--format",
            "{{.Name}} {{.DesiredState}} {{.Node}}",
        ]);
        let names: BTreeSet<&str> = ps.lines().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(names, BTreeSet::from(["web.1", "web.2", "web.3"]), "{ps}");
        assert!(
            ps.lines().all(|l| l.contains(" Running n")),
            "every task running on a named node: {ps}"
        );
        let networks = lines(&run(&[
            "network",
            "ls",
            "--format",
            "{{.Name}} {{.Driver}} {{.Scope}}",
        ]));
        assert!(networks.contains("backend overlay swarm"), "{networks:?}");
        assert!(networks.contains("ingress overlay swarm"), "{networks:?}");
        assert_eq!(
            run(&[
                "network",
                "inspect",
                "backend",
                "--format",
                "{{.Name}} {{.Scope}} {{index .Options \"encrypted\"}}|",
            ]),
            "backend swarm |"
        );

        // Docker's errors.
        let missing = docker_fails(&swarm, &n1, cli, &["service", "inspect", "nosuch"]);
        assert!(missing.contains("nosuch"), "{missing}");
        let filter = docker_fails(&swarm, &n1, cli, &["node", "ls", "--filter", "colour=red"]);
        assert!(filter.contains("invalid filter 'colour'"), "{filter}");
        // A worker has no cluster view, and says so as Docker does.
        let worker = docker_fails(&swarm, &n2, cli, &["node", "ls"]);
        assert!(worker.contains("not a swarm manager"), "{worker}");
    }

    // bollard, as a library client: the same nodes, services and tasks as `shoal`.
    let socket = swarm.lab.socket(&n1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (nodes, services, tasks) = runtime.block_on(async {
        let docker = bollard::Docker::connect_with_unix(
            socket.to_str().unwrap(),
            30,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap();
        // A node without a Docker Engine cannot pin an image to its digest, and says why.
        match docker.inspect_registry_image("nginx:alpine", None).await {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            }) => {
                assert_eq!(status_code, 501, "{message}");
                assert!(message.contains("no Docker Engine"), "{message}");
            }
            other => panic!("distribution without an engine: {other:?}"),
        }
        (
            docker.list_nodes(None).await.unwrap(),
            docker.list_services(None).await.unwrap(),
            docker.list_tasks(None).await.unwrap(),
        )
    });
    let bollard_nodes: BTreeSet<String> = nodes.iter().filter_map(|n| n.id.clone()).collect();
    assert_eq!(bollard_nodes, node_ids);
    let shoal_services: Value =
        serde_json::from_str(&swarm.ok(&n1, &["service", "inspect", "web"])).unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].id.as_deref(), shoal_services[0]["ID"].as_str());
    let shoal_tasks: BTreeSet<String> = shoal_tests::service::tasks(&swarm, &n1, "web")
        .iter()
        .map(|t| t["ID"].as_str().unwrap().to_owned())
        .collect();
    let bollard_tasks: BTreeSet<String> = tasks.iter().filter_map(|t| t.id.clone()).collect();
    assert_eq!(bollard_tasks, shoal_tasks);

    // Bad input over HTTP: Docker's status codes and messages, and nothing changed.
    let before = inspect_service(&swarm, &n1, "web");
    let (stale, unknown_field, missing, huge) = runtime.block_on(async {
        let docker = bollard::Docker::connect_with_unix(
            socket.to_str().unwrap(),
            30,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap();
        let current = docker.inspect_service("web", None).await.unwrap();
        let mut spec = current.spec.clone().unwrap();
        spec.labels = Some([("changed".to_owned(), "yes".to_owned())].into());
        let at = current.version.unwrap().index.unwrap() as i32;
        let options = bollard::query_parameters::UpdateServiceOptionsBuilder::default()
            .version(at - 1)
            .build();
        let stale = docker.update_service("web", spec, options, None).await;
        let missing = docker.inspect_service("nosuch", None).await;
        (
            stale,
            raw_post(
                &socket,
                "/v1.41/services/create",
                br#"{"Name":"x","Nmae":"y"}"#,
            )
            .await,
            missing,
            raw_post(&socket, "/services/create", &vec![b' '; 3 << 20]).await,
        )
    });
    let status = |r: Result<(), bollard::errors::Error>| match r {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        }) => (status_code, message),
        other => panic!("not a refusal: {other:?}"),
    };
    let (code, message) = status(stale.map(drop));
    assert_eq!(code, 409, "{message}");
    assert!(message.contains("out of sequence"), "{message}");
    let (code, message) = status(missing.map(drop));
    assert_eq!(code, 404, "{message}");
    assert!(message.contains("nosuch"), "{message}");
    assert_eq!(unknown_field.0, 400, "{}", unknown_field.1);
    assert!(
        unknown_field.1.contains("unknown field Nmae"),
        "{}",
        unknown_field.1
    );
    assert_eq!(huge.0, 413, "{}", huge.1);
    assert_eq!(
        inspect_service(&swarm, &n1, "web"),
        before,
        "nothing changed"
    );
    let services = swarm.ok(&n1, &["service", "ls"]);
    assert!(!services.contains(" x "), "{services}");

    // A wrong type is 400 naming it; so is an ambiguous ID prefix (secrets are made until two
    // IDs share their first character: at most 37, by pigeonhole).
    let (code, body) = runtime.block_on(raw_post(
        &socket,
        "/services/create",
        br#"{"Name":5,"TaskTemplate":{"ContainerSpec":{"Image":"x"}}}"#,
    ));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid type"), "{body}");
    let mut firsts = BTreeSet::new();
    let shared = (0..37)
        .find_map(|i| {
            let (code, body) = runtime.block_on(raw_post(
                &socket,
                "/secrets/create",
                format!(r#"{{"Name":"s{i}","Data":"eA=="}}"#).as_bytes(),
            ));
            assert_eq!(code, 201, "{body}");
            let id = body.split("\"ID\":\"").nth(1)?.get(..1)?.to_owned();
            (!firsts.insert(id.clone())).then_some(id)
        })
        .expect("two IDs share a first character");
    let (code, body) = runtime.block_on(raw_get(&socket, &format!("/secrets/{shared}")));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("is ambiguous"), "{body}");

    // A query string that does not decode gets Docker's error shape too.
    let (code, answer) = runtime.block_on(raw_get(&socket, "/services?status=1&status=2"));
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("{\"message\":"), "{answer}");

    // A stale version= on a node or the swarm is refused by the managers with the write.
    let node = node_ids.iter().next().unwrap();
    for (path, body) in [
        (
            format!("/nodes/{node}/update?version=1"),
            &br#"{"Role":"manager","Availability":"active"}"#[..],
        ),
        ("/swarm/update?version=1".to_owned(), &b"{}"[..]),
    ] {
        let (code, answer) = runtime.block_on(raw_post(&socket, &path, body));
        assert_eq!(code, 409, "{path}: {answer}");
        assert!(answer.contains("out of sequence"), "{path}: {answer}");
    }
}

/// GETs `path` on the Engine API at `socket`: the status and the body.
async fn raw_get(socket: &Path, path: &str) -> (u16, String) {
    raw(socket, "GET", path, None).await
}

/// POSTs `body` to `path` on the Engine API at `socket`: the status and the body.
async fn raw_post(socket: &Path, path: &str, body: &[u8]) -> (u16, String) {
    raw(socket, "POST", path, Some(body)).await
}

/// One HTTP/1.1 request, written by hand (so it can be what no client library would send).
async fn raw(socket: &Path, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n");
    if let Some(body) = body {
        head += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    head += "\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and close) before it has read a body it refuses.
    let _ = stream.write_all(body.unwrap_or_default()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer)
}

/// `shoal service inspect NAME` as JSON (the first object).
fn inspect_service(swarm: &Swarm, on: &Host, name: &str) -> Value {
    let all: Value = serde_json::from_str(&swarm.ok(on, &["service", "inspect", name])).unwrap();
    all[0].clone()
}

/// Every docker CLI on the machine changes the swarm as a Docker user would: networks, services
/// (create waiting for convergence, scale, update, rollback, logs, rm) and nodes (labels,
/// availability), and `shoal` sees each change; what Shoal cannot do is refused by name.
#[test]
fn the_docker_cli_changes_the_swarm_through_the_engine_api() {
    let swarm = Swarm::up(1, 2);
    let n1 = swarm.managers[0].clone();
    let tool = labtool_path();
    for (i, cli) in clis().into_iter().enumerate() {
        let run = |args: &[&str]| docker_ok(&swarm, &n1, cli, args);
        let net = format!("net{i}");
        let api = format!("api{i}");
        let talk = format!("talk{i}");
        run(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--opt",
            "encrypted",
            &net,
        ]);
        let created: Value =
            serde_json::from_str(&swarm.ok(&n1, &["network", "inspect", &net])).unwrap();
        assert!(
            created[0]["Spec"]["DriverConfiguration"]["Options"]
                .get("encrypted")
                .is_some(),
            "{created:#}"
        );

        // Without --detach the CLI waits for convergence with its own progress display.
        run(&[
            "service",
            "create",
            "--name",
            &api,
            "--replicas",
            "2",
            "--network",
            &net,
            "--publish",
            &format!("{}:80", 8080 + i),
            "host",
            &tool,
            "serve",
            "--port",
            "80",
        ]);
        assert_eq!(
            running_per_node(&swarm, &n1, &api).values().sum::<usize>(),
            2
        );
        run(&["service", "scale", "--detach", &format!("{api}=3")]);
        wait_running(&swarm, &n1, &api, "three tasks", |per| {
            per.values().sum::<usize>() == 3
        });
        run(&[
            "service",
            "update",
            "--detach",
            "--env-add",
            "VERSION=2",
            &api,
        ]);
        let env = |s: &Value| s["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"].clone();
        assert_eq!(
            env(&inspect_service(&swarm, &n1, &api)),
            serde_json::json!(["VERSION=2"])
        );
        run(&["service", "rollback", "--detach", &api]);
        let rolled = inspect_service(&swarm, &n1, &api);
        assert!(
            env(&rolled).as_array().is_none_or(|e| e.is_empty()),
            "{rolled:#}"
        );

        // Shoal's own `client-ip=preserve`, which Docker's model cannot show, survives an
        // update the docker CLI makes from what it read.
        let keep = format!("keep{i}");
        swarm.ok(
            &n1,
            &[
                "service",
                "create",
                "--detach",
                "--name",
                &keep,
                "--publish",
                &format!("published={},target=80,client-ip=preserve", 8180 + i),
                "host",
                &tool,
                "serve",
                "--port",
                "80",
            ],
        );
        run(&["service", "update", "--detach", "--env-add", "A=1", &keep]);
        let kept = inspect_service(&swarm, &n1, &keep);
        assert_eq!(
            kept["Spec"]["EndpointSpec"]["Ports"][0]["ClientIp"], "preserve",
            "{kept:#}"
        );
        assert_eq!(env(&kept), serde_json::json!(["A=1"]));
        run(&["service", "rm", &keep]);

        // Logs, through the multiplexed stream.
        run(&[
            "service",
            "create",
            "--detach",
            "--name",
            &talk,
            "host",
            "sh",
            "-c",
            "echo said-hello; echo said-oops >&2; sleep 3600",
        ]);
        wait_running(&swarm, &n1, &talk, "the talker", |per| {
            per.values().sum::<usize>() == 1
        });
        let waited = shoal_tests::wait_until(
            "the talker's lines",
            std::time::Duration::from_secs(20),
            || {
                let out = docker(&swarm, &n1, cli, &["service", "logs", "--raw", &talk]);
                let both = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(both.contains("said-hello") && both.contains("said-oops"))
            },
        );
        assert!(waited.is_ok(), "{waited:?}");
        // One line with --tail 1 (which of the two streams wrote last is the node's to say);
        // with timestamps and the task named.
        let last = docker(
            &swarm,
            &n1,
            cli,
            &["service", "logs", "--raw", "--tail", "1", &talk],
        );
        let last = format!(
            "{}{}",
            String::from_utf8_lossy(&last.stdout),
            String::from_utf8_lossy(&last.stderr)
        );
        assert!(
            ["said-hello", "said-oops"].contains(&last.trim()),
            "one line: {last}"
        );
        let stamped = run(&["service", "logs", "--timestamps", "--no-trunc", &talk]);
        assert!(
            stamped.starts_with("20")
                && stamped.contains(&format!("{talk}.1."))
                && stamped.contains("| said-hello"),
            "{stamped}"
        );
        // Filters the CLI offers.
        let running = run(&[
            "service",
            "ps",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Name}}",
            &api,
        ]);
        assert_eq!(running.lines().count(), 3, "{running}");
        let on_n1 = run(&["node", "ps", "n1", "--format", "{{.Node}}"]);
        assert!(on_n1.lines().all(|l| l == "n1"), "{on_n1}");

        // Nodes.
        run(&["node", "update", "--label-add", &format!("zone{i}=a"), "n2"]);
        let n2: Value = serde_json::from_str(&swarm.ok(&n1, &["node", "inspect", "n2"])).unwrap();
        assert_eq!(n2[0]["Spec"]["Labels"][format!("zone{i}")], "a", "{n2:#}");
        run(&["node", "update", "--availability", "drain", "n3"]);
        assert_eq!(swarm.node(&n1, "n3").unwrap()["Availability"], "Drain");
        run(&["node", "update", "--availability", "active", "n3"]);
        assert_eq!(swarm.node(&n1, "n3").unwrap()["Availability"], "Active");

        // What Shoal cannot do is refused by name, and nothing is created.
        let dns = docker_fails(
            &swarm,
            &n1,
            cli,
            &[
                "service",
                "create",
                "--detach",
                "--name",
                "dns",
                "--dns",
                "192.0.2.53",
                "host",
                "true",
            ],
        );
        assert!(dns.contains("DNSConfig.Nameservers"), "{dns}");
        let bridge = docker_fails(
            &swarm,
            &n1,
            cli,
            &["network", "create", "-d", "bridge", "nope"],
        );
        assert!(bridge.contains("\"bridge\""), "{bridge}");

        run(&["service", "rm", &api, &talk]);
        // Tasks of removed services do not hold their network.
        run(&["network", "rm", &net]);
        let services = swarm.ok(&n1, &["service", "ls"]);
        assert!(
            !services.contains(&api) && !services.contains("dns"),
            "{services}"
        );
        let networks = swarm.ok(&n1, &["network", "ls"]);
        assert!(
            !networks.contains(&net) && !networks.contains("nope"),
            "{networks}"
        );
    }
}

/// A swarm formed and changed with the docker CLI alone: `swarm init` (advertise and data path
/// addresses), `join-token`, `join`, `swarm update`, `node promote/demote`, `swarm leave`.
#[test]
fn the_docker_cli_forms_the_swarm() {
    let cli = clis()[0];
    let swarm = Swarm::daemons(3);
    let nodes = swarm.lab.nodes().to_vec();
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let run = |host: &Host, args: &[&str]| docker_ok(&swarm, host, cli, args);
    let inactive = run(n1, &["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert_eq!(inactive, "inactive");
    let data_ip = n1.data_ip.unwrap_or(n1.public_ip).to_string();
    let said = run(
        n1,
        &[
            "swarm",
            "init",
            "--advertise-addr",
            "eth0",
            "--data-path-addr",
            &data_ip,
        ],
    );
    assert!(said.contains("Swarm initialized"), "{said}");
    let token = run(n1, &["swarm", "join-token", "-q", "worker"]);
    let manager_token = run(n1, &["swarm", "join-token", "-q", "manager"]);
    assert!(
        token.starts_with("SWMTKN-1-") && token != manager_token,
        "{token}"
    );
    let remote = format!("{}:2377", n1.public_ip);
    for node in [n2, n3] {
        run(
            node,
            &[
                "swarm",
                "join",
                "--token",
                &token,
                "--advertise-addr",
                "eth0",
                &remote,
            ],
        );
    }
    swarm.wait_nodes(n1, "three nodes Ready", |nodes| {
        nodes.len() == 3 && nodes.iter().all(|n| n["Status"] == "Ready")
    });
    assert_eq!(
        run(
            n2,
            &[
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"
            ]
        ),
        "active false"
    );
    let n1_inspect: Value =
        serde_json::from_str(&swarm.ok(n1, &["node", "inspect", "n1"])).unwrap();
    assert_eq!(
        n1_inspect[0]["Description"]["DataPathAddr"], data_ip,
        "{n1_inspect:#}"
    );

    run(n1, &["swarm", "update", "--task-history-limit", "3"]);
    let cluster: Value = serde_json::from_str(&swarm.ok(n1, &["swarm", "inspect"])).unwrap();
    assert_eq!(
        cluster[0]["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"], 3,
        "{cluster:#}"
    );
    // The root CA rotated as the docker CLI asks it (`CAConfig.ForceRotate` plus one).
    let root = |cluster: &Value| cluster[0]["TLSInfo"]["TrustRoot"].clone();
    let before = root(&cluster);
    run(n1, &["swarm", "ca", "--rotate", "--detach"]);
    let inspect =
        || -> Value { serde_json::from_str(&swarm.ok(n1, &["swarm", "inspect"])).unwrap() };
    shoal_tests::wait_until(
        "the new root in place",
        std::time::Duration::from_secs(90),
        || {
            let now = inspect();
            Ok(root(&now) != before && now[0]["RootRotationInProgress"] == false)
        },
    )
    .unwrap();
    let rotated = inspect();
    assert_eq!(
        rotated[0]["Spec"]["CAConfig"]["ForceRotate"], 1,
        "{rotated:#}"
    );
    run(n1, &["node", "promote", "n2"]);
    swarm.wait_nodes(n1, "n2 a reachable manager", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n2" && n["ManagerStatus"] == "Reachable")
    });
    run(n1, &["node", "demote", "n2"]);
    swarm.wait_nodes(n1, "n2 a worker again", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n2" && n["ManagerStatus"] == "")
    });

    run(n3, &["swarm", "leave"]);
    assert_eq!(
        run(n3, &["info", "--format", "{{.Swarm.LocalNodeState}}"]),
        "inactive"
    );
    swarm.wait_nodes(n1, "n3 down", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n3" && n["Status"] == "Down")
    });
}

/// [`docker`] with `input` on its standard input (the docker CLI reads an unlock key from there
/// when it is not a terminal).
fn docker_with_input(swarm: &Swarm, host: &Host, cli: &str, args: &[&str], input: &str) -> Output {
    with_input(docker_command(swarm, host, cli, args), input)
}

/// `command` run to its end with `input` on its standard input.
fn with_input(mut command: Command, input: &str) -> Output {
    use std::io::Write as _;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the command runs");
    let _ = child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes());
    child.wait_with_output().expect("the command ends")
}

/// Every file under `root` whose bytes contain `needle`, as paths relative to `root`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

/// Encryption at rest and autolock, driven by the docker CLI: nothing a manager writes holds a
/// service's environment or the CA's key in the clear; with autolock on, a restarted manager is
/// locked (and says so) until `swarm unlock` gets the key, a wrong key is refused, and the
/// swarm is all there after it; `unlock-key --rotate` changes the key; autolock off again lets
/// a manager restart by itself.
#[test]
fn a_managers_data_is_sealed_and_autolock_locks_a_restarted_manager() {
    let cli = clis()[0];
    // Snapshots every few entries, so a snapshot file is on disk too.
    let mut swarm = Swarm::up_with(1, 1, &["--snapshot-interval", "5"]);
    let n1 = swarm.managers[0].clone();
    let marker = format!("shoal-marker-{}", std::process::id());
    create_serve(
        &swarm,
        &n1,
        &[
            "--name",
            "marked",
            "--replicas",
            "2",
            "--env",
            &format!("TOKEN={marker}"),
        ],
    );
    wait_running(&swarm, &n1, "marked", "two tasks", |per| {
        per.values().sum::<usize>() == 2
    });
    for i in 0..6 {
        swarm.ok(&n1, &["service", "scale", &format!("marked={}", 2 + i % 2)]);
    }
    let data_roots: Vec<_> = swarm
        .lab
        .nodes()
        .iter()
        .map(|h| swarm.lab.host_dir(h).join("data"))
        .collect();
    let snapshots = data_roots[0].join("swarm/raft/snapshots");
    shoal_tests::wait_until(
        "a raft snapshot on n1",
        std::time::Duration::from_secs(30),
        || Ok(std::fs::read_dir(&snapshots).is_ok_and(|mut d| d.next().is_some())),
    )
    .unwrap();
    let sealed_everywhere = |when: &str| {
        for root in &data_roots {
            assert_eq!(
                files_containing(root, marker.as_bytes()),
                Vec::<String>::new(),
                "{when}: the service's environment in the clear under {}",
                root.display()
            );
            // The node's own TLS key is the only private key PEM: the CA's key is sealed in
            // the raft store.
            let keys = files_containing(root, b"PRIVATE KEY");
            assert!(
                keys.iter().all(|f| f.ends_with("/node.key")),
                "{when}: a private key in the clear under {}: {keys:?}",
                root.display()
            );
        }
    };
    sealed_everywhere("autolock off");
    assert_eq!(
        docker_fails(&swarm, &n1, cli, &["swarm", "unlock-key"]),
        "no unlock key is set"
    );

    let said = docker_ok(&swarm, &n1, cli, &["swarm", "update", "--autolock=true"]);
    assert!(said.contains("SWMKEY-1-"), "{said}");
    let key = docker_ok(&swarm, &n1, cli, &["swarm", "unlock-key", "-q"]);
    assert!(said.contains(&key), "{said}\n{key}");
    let spec: Value = serde_json::from_str(&swarm.ok(&n1, &["swarm", "inspect"])).unwrap();
    assert_eq!(
        spec[0]["Spec"]["EncryptionConfig"]["AutoLockManagers"],
        true
    );
    sealed_everywhere("autolock on");
    assert!(
        files_containing(&data_roots[0], key.as_bytes()).is_empty(),
        "the unlock key in the clear on n1"
    );
    // The manager's own TLS key is sealed too (a worker's is not: workers are not locked).
    assert_eq!(
        files_containing(&data_roots[0], b"PRIVATE KEY"),
        Vec::<String>::new(),
        "a private key in the clear on the locked manager"
    );
    assert_eq!(files_containing(&data_roots[1], b"PRIVATE KEY").len(), 1);

    swarm.lab.stop_shoald(&n1).unwrap();
    swarm.lab.spawn_shoald(&n1).unwrap();
    let state = |swarm: &Swarm| {
        docker_ok(
            swarm,
            &n1,
            cli,
            &["info", "--format", "{{.Swarm.LocalNodeState}}"],
        )
    };
    assert_eq!(state(&swarm), "locked");
    let refused = docker_fails(&swarm, &n1, cli, &["node", "ls"]);
    assert!(
        refused.contains("Swarm is encrypted and needs to be unlocked"),
        "{refused}"
    );
    let refused = swarm.fails(&n1, &["service", "ls"]);
    assert!(refused.contains("unlock"), "{refused}");
    let wrong = "SWMKEY-1-".to_owned() + &"A".repeat(43) + "\n";
    let out = docker_with_input(&swarm, &n1, cli, &["swarm", "unlock"], &wrong);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("invalid key"),
        "{}",
        output_text(&out)
    );
    let out = docker_with_input(&swarm, &n1, cli, &["swarm", "unlock"], "not-a-key\n");
    assert!(
        output_text(&out).contains("invalid unlock key"),
        "{}",
        output_text(&out)
    );
    assert_eq!(state(&swarm), "locked");

    let out = docker_with_input(&swarm, &n1, cli, &["swarm", "unlock"], &format!("{key}\n"));
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(state(&swarm), "active");
    let out = docker_with_input(&swarm, &n1, cli, &["swarm", "unlock"], &format!("{key}\n"));
    assert!(
        output_text(&out).contains("swarm is not locked"),
        "{}",
        output_text(&out)
    );
    assert_eq!(
        docker_ok(
            &swarm,
            &n1,
            cli,
            &["service", "ls", "--format", "{{.Name}}"]
        ),
        "marked"
    );
    wait_running(
        &swarm,
        &n1,
        "marked",
        "the service's tasks after the unlock",
        |per| per.values().sum::<usize>() >= 2,
    );

    // A new key: the old one no longer opens a restarted manager, the new one does.
    let rotated = swarm.ok(&n1, &["swarm", "unlock-key", "--rotate", "-q"]);
    let rotated = rotated.trim();
    assert!(
        rotated.starts_with("SWMKEY-1-") && rotated != key,
        "{rotated}"
    );
    assert_eq!(
        docker_ok(&swarm, &n1, cli, &["swarm", "unlock-key", "-q"]),
        rotated
    );
    swarm.lab.stop_shoald(&n1).unwrap();
    swarm.lab.spawn_shoald(&n1).unwrap();
    assert_eq!(state(&swarm), "locked");
    let out = docker_with_input(&swarm, &n1, cli, &["swarm", "unlock"], &format!("{key}\n"));
    assert!(
        output_text(&out).contains("invalid key"),
        "{}",
        output_text(&out)
    );
    let out = with_input(
        swarm.lab.shoal_command(&n1, &["swarm", "unlock"]).unwrap(),
        rotated,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(state(&swarm), "active");

    // Autolock off: the data key is kept in the clear again, and a restart needs no key.
    docker_ok(&swarm, &n1, cli, &["swarm", "update", "--autolock=false"]);
    swarm.lab.stop_shoald(&n1).unwrap();
    swarm.lab.spawn_shoald(&n1).unwrap();
    assert_eq!(state(&swarm), "active");
    swarm.wait_nodes(&n1, "both nodes Ready", |nodes| {
        nodes.len() == 2 && nodes.iter().all(|n| n["Status"] == "Ready")
    });
    sealed_everywhere("after the restarts");
    // Autolock off: the key is back in the clear.
    assert_eq!(files_containing(&data_roots[0], b"PRIVATE KEY").len(), 1);
}

/// Secrets and configs through the docker CLI: created, listed, inspected (a secret's data never
/// comes back), mounted into exec tasks on both nodes (a secret at /run/secrets with its mode
/// and owner, a config over its target, which stays as it was on the node), refused while in
/// use, never written under a data root, and removed; bad input gets Docker's answers.
#[test]
fn the_docker_cli_manages_secrets_and_configs_and_tasks_read_them() {
    let cli = clis()[0];
    let swarm = Swarm::up(1, 1);
    let n1 = swarm.managers[0].clone();
    let run = |args: &[&str]| docker_ok(&swarm, &n1, cli, args);
    let dir = std::env::temp_dir().join(format!("shoal-test-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = format!("secret-marker-{}", std::process::id());
    let secret_file = dir.join("secret.txt");
    std::fs::write(&secret_file, &marker).unwrap();
    let config_file = dir.join("app.conf");
    std::fs::write(&config_file, "color=blue").unwrap();
    // The config's target on the node (an exec task shares the node's file system).
    let target = dir.join("target.conf");
    std::fs::write(&target, "as on the node").unwrap();
    let target = target.to_str().unwrap().to_owned();

    let id = run(&[
        "secret",
        "create",
        "--label",
        "team=a",
        "s1",
        secret_file.to_str().unwrap(),
    ]);
    assert_eq!(id.len(), 25, "{id}");
    run(&["config", "create", "c1", config_file.to_str().unwrap()]);
    assert_eq!(run(&["secret", "ls", "--format", "{{.Name}}"]), "s1");
    assert_eq!(run(&["config", "ls", "--format", "{{.Name}}"]), "c1");
    let inspected = run(&["secret", "inspect", "s1"]);
    assert!(!inspected.contains("\"Data\""), "{inspected}");
    assert!(inspected.contains("\"team\": \"a\""), "{inspected}");
    assert_eq!(
        run(&["config", "inspect", "c1", "--format", "{{json .Spec.Data}}"]),
        "\"Y29sb3I9Ymx1ZQ==\""
    );
    let again = docker_fails(
        &swarm,
        &n1,
        cli,
        &["secret", "create", "s1", secret_file.to_str().unwrap()],
    );
    assert!(again.contains("already exists"), "{again}");
    let huge = dir.join("huge");
    std::fs::write(&huge, vec![b'x'; 600 * 1024]).unwrap();
    let refused = docker_fails(
        &swarm,
        &n1,
        cli,
        &["secret", "create", "big", huge.to_str().unwrap()],
    );
    assert!(refused.contains("less than 512000 bytes"), "{refused}");
    let missing = docker_fails(
        &swarm,
        &n1,
        cli,
        &[
            "service", "create", "--detach", "--secret", "nope", "host", "true",
        ],
    );
    assert!(missing.contains("nope"), "{missing}");

    let script = format!(
        // The secret shouted (a task that logs its secret as is would put it on disk itself).
        "echo mode=$(stat -c %a:%u /run/secrets/db) secret=$(tr a-z A-Z < /run/secrets/db) config=$(cat {target}); exec sleep 600"
    );
    run(&[
        "service",
        "create",
        "--name",
        "reader",
        "--replicas",
        "2",
        "--secret",
        "source=s1,target=db,mode=0400,uid=0",
        "--config",
        &format!("source=c1,target={target}"),
        "host",
        "sh",
        "-c",
        &script,
    ]);
    wait_running(&swarm, &n1, "reader", "two readers", |per| per.len() == 2);
    let want = format!(
        "mode=400:0 secret={} config=color=blue",
        marker.to_uppercase()
    );
    shoal_tests::wait_until(
        "both readers' lines",
        std::time::Duration::from_secs(30),
        || {
            let logs = docker_ok(&swarm, &n1, cli, &["service", "logs", "--raw", "reader"]);
            Ok(logs.matches(&want).count() == 2)
        },
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "as on the node");
    let in_use = docker_fails(&swarm, &n1, cli, &["secret", "rm", "s1"]);
    assert!(
        in_use.contains("in use by the following service: reader"),
        "{in_use}"
    );
    let in_use = docker_fails(&swarm, &n1, cli, &["config", "rm", "c1"]);
    assert!(in_use.contains("in use"), "{in_use}");
    for node in swarm.lab.nodes() {
        let root = swarm.lab.host_dir(node).join("data");
        assert_eq!(
            files_containing(&root, marker.as_bytes()),
            Vec::<String>::new(),
            "the secret in the clear under {}",
            root.display()
        );
    }

    // Labels change; the data does not.
    let version = run(&["secret", "inspect", "s1", "--format", "{{.Version.Index}}"]);
    let socket = swarm.lab.socket(&n1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = rt.block_on(raw_post(
        &socket,
        &format!("/v1.41/secrets/s1/update?version={version}"),
        br#"{"Name":"s1","Labels":{"team":"b"},"Data":"b3RoZXI="}"#,
    ));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("only updates to Labels"), "{body}");
    let (status, body) = rt.block_on(raw_post(
        &socket,
        &format!("/v1.41/secrets/s1/update?version={version}"),
        br#"{"Name":"s1","Labels":{"team":"b"}}"#,
    ));
    assert_eq!(status, 200, "{body}");
    let (status, body) = rt.block_on(raw_post(
        &socket,
        &format!("/v1.41/secrets/s1/update?version={version}"),
        br#"{"Name":"s1","Labels":{"team":"c"}}"#,
    ));
    assert_eq!(status, 409, "{body}");
    let (status, body) = rt.block_on(raw_post(
        &socket,
        "/v1.41/secrets/create",
        br#"{"Name":"t1","Data":"eA==","Templating":{"Name":"golang"}}"#,
    ));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Templating"), "{body}");
    let (status, body) = rt.block_on(raw_post(
        &socket,
        "/v1.41/secrets/create",
        br#"{"Name":"t1","Data":"not base64!"}"#,
    ));
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        run(&[
            "secret",
            "inspect",
            "s1",
            "--format",
            "{{index .Spec.Labels \"team\"}}"
        ]),
        "b"
    );

    // shoal's own commands: a second secret takes the first one's place in the service.
    let second = dir.join("second.txt");
    std::fs::write(&second, "second-value").unwrap();
    swarm.ok(&n1, &["secret", "create", "s2", second.to_str().unwrap()]);
    assert!(swarm.ok(&n1, &["secret", "ls"]).contains("s2"));
    // shoal's --format takes Go templates, as Docker's does.
    assert_eq!(
        swarm
            .ok(
                &n1,
                &[
                    "secret",
                    "inspect",
                    "--format",
                    "{{.Spec.Name}} {{json .Spec.Labels}}",
                    "s2"
                ]
            )
            .trim(),
        "s2 {}"
    );
    assert_eq!(
        swarm.ok(
            &n1,
            &["service", "ls", "--format", r"table {{.Name}}\t{{.Mode}}"]
        ),
        "NAME     MODE\nreader   replicated\n"
    );
    swarm.ok(
        &n1,
        &[
            "service",
            "update",
            "--secret-rm",
            "s1",
            "--secret-add",
            "source=s2,target=db,mode=0400",
            "reader",
        ],
    );
    shoal_tests::wait_until(
        "the readers with s2",
        std::time::Duration::from_secs(60),
        || {
            let logs = docker_ok(&swarm, &n1, cli, &["service", "logs", "--raw", "reader"]);
            Ok(logs.matches("secret=SECOND-VALUE").count() >= 2)
        },
    )
    .unwrap();
    swarm.ok(&n1, &["secret", "rm", "s1"]);
    let in_use = swarm.fails(&n1, &["secret", "rm", "s2"]);
    assert!(in_use.contains("in use"), "{in_use}");

    run(&["service", "rm", "reader"]);
    swarm.ok(&n1, &["secret", "rm", "s2"]);
    run(&["config", "rm", "c1"]);
    assert_eq!(run(&["secret", "ls", "-q"]), "");
    assert_eq!(run(&["config", "ls", "-q"]), "");
    let gone = docker_fails(&swarm, &n1, cli, &["secret", "inspect", "s1"]);
    assert!(gone.contains("No such secret: s1"), "{gone}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `docker stack deploy` of a compose file (two services on an overlay network, one published)
/// runs on Shoal: the CLI translates the file, Shoal resolves the network by name; `stack ls`,
/// `stack services`, `stack ps` and `stack rm` work.
#[test]
fn the_docker_cli_deploys_a_stack() {
    let swarm = Swarm::up(1, 2);
    let n1 = swarm.managers[0].clone();
    let tool = labtool_path();
    let dir = std::env::temp_dir().join(format!("shoal-test-stack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let compose = dir.join("compose.yml");
    std::fs::write(
        &compose,
        format!(
            r#"version: "3.8"
services:
  web:
    image: host
    command: ["{tool}", "serve", "--port", "80"]
    ports: ["8090:80"]
    networks: [front]
    deploy:
      replicas: 2
      labels:
        tier: web
  api:
    image: host
    command: ["sh", "-c", "echo token=$$(cat /run/secrets/token); exec {tool} serve --port 80"]
    networks: [front]
    secrets: [token]
networks:
  front:
    driver: overlay
secrets:
  token:
    file: ./token.txt
"#
        ),
    )
    .unwrap();
    let marker = format!("stack-secret-{}", std::process::id());
    std::fs::write(dir.join("token.txt"), &marker).unwrap();
    let cli = clis()[0];
    let run = |args: &[&str]| docker_ok(&swarm, &n1, cli, args);
    let deployed = run(&["stack", "deploy", "-c", compose.to_str().unwrap(), "demo"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(deployed.contains("Creating service demo_web"), "{deployed}");
    assert!(
        deployed.contains("Creating secret demo_token"),
        "{deployed}"
    );
    wait_running(&swarm, &n1, "demo_web", "two web tasks", |per| {
        per.values().sum::<usize>() == 2
    });
    wait_running(&swarm, &n1, "demo_api", "one api task", |per| {
        per.values().sum::<usize>() == 1
    });
    let web = inspect_service(&swarm, &n1, "demo_web");
    assert_eq!(
        web["Spec"]["Labels"]["com.docker.stack.namespace"], "demo",
        "{web:#}"
    );
    assert_eq!(web["Spec"]["Labels"]["tier"], "web", "{web:#}");
    assert_eq!(
        run(&["stack", "ls", "--format", "{{.Name}} {{.Services}}"]),
        "demo 2"
    );
    assert_eq!(
        lines(&run(&[
            "stack",
            "services",
            "demo",
            "--format",
            "{{.Name}} {{.Replicas}}"
        ])),
        lines("demo_api 1/1\ndemo_web 2/2")
    );
    let ps = run(&["stack", "ps", "demo", "--format", "{{.Name}}"]);
    assert_eq!(ps.lines().count(), 3, "{ps}");
    // The published port answers on every node; the api task read its secret.
    for node in swarm.lab.nodes() {
        wait_answers(&swarm, &node.public_ip.to_string(), 8090, 4);
    }
    assert_eq!(
        run(&["secret", "ls", "--format", "{{.Name}}"]),
        "demo_token"
    );
    shoal_tests::wait_until(
        "the api task's line with its secret",
        std::time::Duration::from_secs(30),
        || {
            Ok(swarm
                .ok(&n1, &["service", "logs", "demo_api"])
                .contains(&format!("token={marker}")))
        },
    )
    .unwrap();
    run(&["stack", "rm", "demo"]);
    let gone = shoal_tests::wait_until(
        "the stack removed",
        std::time::Duration::from_secs(30),
        || {
            let services = swarm.ok(&n1, &["service", "ls"]);
            let networks = swarm.ok(&n1, &["network", "ls"]);
            let secrets = swarm.ok(&n1, &["secret", "ls", "-q"]);
            Ok(!services.contains("demo_")
                && !networks.contains("demo_front")
                && secrets.trim().is_empty())
        },
    );
    assert!(gone.is_ok(), "{gone:?}");
}

/// `shoal stack deploy` does natively what `docker stack deploy` does: a compose file with two
/// services, an overlay network, a published port and a file secret; the port answers on every
/// node and the task reads its secret; a second deploy updates in place; `stack ls/services/ps`
/// show it and `stack rm` removes services, secret and network.
#[test]
fn shoal_deploys_a_stack_without_the_docker_cli() {
    let swarm = Swarm::up(1, 2);
    let n1 = swarm.managers[0].clone();
    let tool = labtool_path();
    let dir = std::env::temp_dir().join(format!("shoal-test-native-stack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = format!("native-secret-{}", std::process::id());
    std::fs::write(dir.join("token.txt"), &marker).unwrap();
    let compose = dir.join("compose.yml");
    let file = |replicas: u32| {
        format!(
            r#"version: "3.8"
services:
  web:
    image: host
    command: ["{tool}", "serve", "--port", "80"]
    ports: ["8091:80"]
    networks: [front]
    deploy:
      replicas: {replicas}
      labels: {{tier: web}}
  api:
    image: host
    command: sh -c 'echo token=$$(tr a-z A-Z < /run/secrets/token); exec {tool} serve --port 80'
    networks:
      front: {{aliases: [backend]}}
    secrets: [token]
networks:
  front:
    driver: overlay
secrets:
  token:
    file: ./token.txt
"#
        )
    };
    std::fs::write(&compose, file(2)).unwrap();
    let compose_path = compose.to_str().unwrap();
    let deployed = swarm.ok(&n1, &["stack", "deploy", "-c", compose_path, "app"]);
    assert!(
        deployed.contains("Creating network app_front"),
        "{deployed}"
    );
    assert!(deployed.contains("Creating secret app_token"), "{deployed}");
    assert!(deployed.contains("Creating service app_web"), "{deployed}");
    wait_running(&swarm, &n1, "app_web", "two web tasks", |per| {
        per.values().sum::<usize>() == 2
    });
    wait_running(&swarm, &n1, "app_api", "one api task", |per| {
        per.values().sum::<usize>() == 1
    });
    for node in swarm.lab.nodes() {
        wait_answers(&swarm, &node.public_ip.to_string(), 8091, 4);
    }
    shoal_tests::wait_until(
        "the api task's line with its secret",
        std::time::Duration::from_secs(30),
        || {
            Ok(swarm
                .ok(&n1, &["service", "logs", "app_api"])
                .contains(&format!("token={}", marker.to_uppercase())))
        },
    )
    .unwrap();
    assert_eq!(
        swarm
            .ok(&n1, &["stack", "ls", "--format", "{{.Name}} {{.Services}}"])
            .trim(),
        "app 2"
    );
    assert_eq!(
        lines(&swarm.ok(
            &n1,
            &[
                "stack",
                "services",
                "app",
                "--format",
                "{{.Name}} {{.Replicas}}"
            ]
        )),
        lines("app_api 1/1\napp_web 2/2")
    );
    let ps = swarm.ok(&n1, &["stack", "ps", "app", "-q"]);
    assert_eq!(ps.lines().count(), 3, "{ps}");
    let web = inspect_service(&swarm, &n1, "app_web");
    assert_eq!(web["Spec"]["Labels"]["tier"], "web", "{web:#}");

    // A second deploy updates in place.
    std::fs::write(&compose, file(3)).unwrap();
    let updated = swarm.ok(&n1, &["stack", "deploy", "-c", compose_path, "app"]);
    assert!(updated.contains("Updating service app_web"), "{updated}");
    wait_running(&swarm, &n1, "app_web", "three web tasks", |per| {
        per.values().sum::<usize>() == 3
    });

    // What Shoal does not take is refused by name, and nothing changes.
    std::fs::write(
        &compose,
        "services:\n  web:\n    image: host\n    privileged: true\n",
    )
    .unwrap();
    let refused = swarm.fails(&n1, &["stack", "deploy", "-c", compose_path, "app"]);
    assert!(
        refused.contains("services.web: Shoal does not support `privileged`"),
        "{refused}"
    );

    let removed = swarm.ok(&n1, &["stack", "rm", "app"]);
    assert!(removed.contains("Removing network app_front"), "{removed}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(swarm.ok(&n1, &["service", "ls", "-q"]).trim().is_empty());
    assert!(swarm.ok(&n1, &["secret", "ls", "-q"]).trim().is_empty());
    assert!(!swarm.ok(&n1, &["network", "ls"]).contains("app_front"));
    let nothing = swarm.fails(&n1, &["stack", "ps", "app"]);
    assert!(nothing.contains("Nothing found in stack: app"), "{nothing}");
}
