//! Lab: seeing the cluster (issue: See the cluster). A real Prometheus server (Debian's
//! `prometheus`, which `cargo xtask setup` installs) scrapes every node's `shoald
//! --metrics-addr`, and `promtool check metrics` reads each node's exposition; `shoal events`
//! and the docker CLI's `docker events` follow a service's life. Needs root.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use shoal_tests::{
    output_text,
    service::{create_serve, labtool_path, wait_answers},
    swarm::Swarm,
    wait_until,
};

/// Where every node serves its metrics.
const METRICS_PORT: u16 = 9323;
/// Where the test's Prometheus answers, in the client's namespace.
const PROMETHEUS: &str = "127.0.0.1:9390";

/// `curl -s URL` from the client; its body, or a panic.
fn curl(swarm: &Swarm, args: &[&str]) -> String {
    let out = swarm
        .lab
        .run(
            swarm.lab.client(),
            "curl",
            &[&["-sS", "--max-time", "10"], args].concat(),
        )
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client asking `ip:8080` from the client's namespace, one request after another, until
/// killed.
fn requests(swarm: &Swarm, ip: &str) -> std::process::Child {
    let mut client = swarm
        .lab
        .client()
        .command(labtool_path())
        .expect("the client's namespace");
    client
        .args(["ask", "--target", &format!("{ip}:8080")])
        .args(["--count", "1000000", "--timeout-ms", "2000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    client.spawn().expect("shoal-labtool runs")
}

/// One value of a Prometheus instant query (`None`: no series).
fn query(swarm: &Swarm, promql: &str) -> Option<f64> {
    let body = curl(
        swarm,
        &[
            &format!("http://{PROMETHEUS}/api/v1/query"),
            "--data-urlencode",
            &format!("query={promql}"),
        ],
    );
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
}

#[test]
fn prometheus_scrapes_every_node_and_sees_the_mesh_traffic_come_and_go() {
    let metrics_addr = format!("0.0.0.0:{METRICS_PORT}");
    let mut swarm = Swarm::up_with_daemons(3, 0, &[], &["--metrics-addr", &metrics_addr]);
    let n1 = swarm.managers[0].clone();
    create_serve(
        &swarm,
        &n1,
        &["--name", "web", "--replicas", "3", "--publish", "8080:80"],
    );
    let ip = n1.public_ip.to_string();
    wait_answers(&swarm, &ip, 8080, 6);

    // Each node's exposition passes Prometheus's own linter (HELP and TYPE on every metric,
    // names and units by its conventions).
    let nodes = swarm.lab.nodes().to_vec();
    for node in &nodes {
        let url = format!("http://{}:{METRICS_PORT}/metrics", node.public_ip);
        let text = curl(&swarm, &[&url]);
        assert!(text.contains("shoal_raft_term{"), "{}: {text}", node.name);
        let mut check = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs (cargo xtask setup installs prometheus)");
        std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        let checked = check.wait_with_output().unwrap();
        assert!(
            checked.status.success(),
            "promtool check metrics on {}: {}\n{text}",
            node.name,
            output_text(&checked)
        );
    }

    // A Prometheus server in the client's namespace scrapes the three nodes every second.
    let dir = swarm.lab.host_dir(swarm.lab.client()).join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let targets: Vec<String> = nodes
        .iter()
        .map(|n| format!("'{}:{METRICS_PORT}'", n.public_ip))
        .collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: shoal\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let mut prometheus = swarm
        .lab
        .client()
        .command("prometheus")
        .expect("the client's namespace");
    prometheus
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap());
    swarm.lab.spawn(prometheus).expect("prometheus starts");
    let mut last = String::new();
    let up = wait_until(
        "Prometheus to see every node up",
        Duration::from_secs(60),
        || {
            let out = swarm.lab.run(
                swarm.lab.client(),
                "curl",
                &["-sS", &format!("http://{PROMETHEUS}/api/v1/targets")],
            );
            last = out
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let v: Value = serde_json::from_str(&last).unwrap_or_default();
            let active = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            Ok(active.len() == 3
                && active
                    .iter()
                    .all(|t| t["health"] == "up" && t["lastError"] == ""))
        },
    );
    if let Err(e) = up {
        panic!("{e}: {last}");
    }

    // While a client sends requests to the published port, the mesh's packet rate for the
    // service is positive; once it stops, it falls back to zero.
    let rate = "sum(rate(shoal_mesh_packets_total{service=\"web\"}[30s]))";
    let mut traffic = requests(&swarm, &ip);
    let mut seen = None;
    let positive = wait_until(
        "a positive mesh rate for web",
        Duration::from_secs(60),
        || {
            seen = query(&swarm, rate);
            Ok(seen.is_some_and(|r| r > 0.0))
        },
    );
    let _ = traffic.kill();
    let _ = traffic.wait();
    if let Err(e) = positive {
        panic!("{e}: last {seen:?}");
    }
    let zero = wait_until(
        "the mesh rate for web back to 0",
        Duration::from_secs(90),
        || {
            seen = query(&swarm, rate);
            Ok(seen == Some(0.0))
        },
    );
    if let Err(e) = zero {
        panic!("{e}: last {seen:?}");
    }
    // The managers' raft figures reach Prometheus too: one leader among three; the leader
    // placed the three tasks; the mesh sent the requests over the ingress overlay to the other
    // nodes' tasks.
    assert_eq!(query(&swarm, "sum(shoal_raft_leader)"), Some(1.0));
    assert!(query(&swarm, "sum(shoal_scheduler_placements_total)") >= Some(3.0));
    assert!(query(&swarm, "sum(shoal_overlay_sent_packets_total)") > Some(0.0));
    // The published port counted its own connections.
    assert!(
        query(
            &swarm,
            "sum(shoal_mesh_port_connections_total{service=\"web\",port=\"8080\",protocol=\"tcp\"})"
        ) > Some(0.0)
    );
    assert_eq!(query(&swarm, "count(shoal_raft_term)"), Some(3.0));
    assert!(query(&swarm, "min(shoal_raft_commit_index)") > Some(0.0));
}

/// Seconds since the epoch, now, as `--since`/`--until` take them.
fn unix_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// The index of the first line holding every one of `parts`, after `from`; a panic naming
/// what was looked for otherwise.
fn find(lines: &[&str], from: usize, parts: &[&str]) -> usize {
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| parts.iter().all(|p| l.contains(p)))
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            panic!(
                "no line with {parts:?} after line {from}:\n{}",
                lines.join("\n")
            )
        })
}

#[test]
fn events_show_a_service_s_life_in_order() {
    let swarm = Swarm::up(1, 2);
    let n1 = swarm.managers[0].clone();
    let since = unix_now();
    create_serve(&swarm, &n1, &["--name", "web", "--replicas", "2"]);
    // The service in the docker CLI's human layout.
    let pretty = swarm.ok(&n1, &["service", "inspect", "--pretty", "web"]);
    for line in ["Name:\t\tweb", "Service Mode:\tReplicated", " Replicas:\t2"] {
        assert!(
            pretty.lines().any(|l| l == line),
            "no {line:?} in:\n{pretty}"
        );
    }
    swarm.ok(&n1, &["service", "scale", "web=3"]);
    swarm.ok(&n1, &["node", "update", "--availability", "drain", "n3"]);
    swarm.ok(&n1, &["service", "rm", "web"]);
    // Followed until now: what happened since, then the command ends.
    let until = unix_now();
    let out = swarm.ok(&n1, &["events", "--since", &since, "--until", &until]);
    let lines: Vec<&str> = out.lines().collect();
    let created = find(&lines, 0, &[" service create ", "name=web"]);
    let running = find(
        &lines,
        created,
        &[" task update ", "service=web", "state.new=running"],
    );
    let scaled = find(
        &lines,
        running,
        &[
            " service update ",
            "name=web",
            "replicas.new=3",
            "replicas.old=2",
        ],
    );
    let drained = find(
        &lines,
        scaled,
        &[
            " node update ",
            "availability.new=drain",
            "availability.old=active",
            "name=n3",
        ],
    );
    find(&lines, drained, &[" service remove ", "name=web"]);

    // Filtered, as JSON: service events only, each one Docker's message.
    let out = swarm.ok(
        &n1,
        &[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "type=service",
            "--format",
            "json",
        ],
    );
    let actions: Vec<String> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            assert_eq!(v["Type"], "service", "{l}");
            assert_eq!(v["scope"], "swarm", "{l}");
            v["Action"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(actions.first().map(String::as_str), Some("create"), "{out}");
    assert_eq!(actions.last().map(String::as_str), Some("remove"), "{out}");

    // The docker CLI reads the same stream from the same socket.
    let docker = std::process::Command::new("docker")
        .env(
            "DOCKER_HOST",
            format!("unix://{}", swarm.lab.socket(&n1).display()),
        )
        .env(
            "DOCKER_CONFIG",
            std::env::temp_dir().join("shoal-test-docker-config"),
        )
        .args([
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "type=service",
        ])
        .output()
        .expect("the docker CLI runs (cargo xtask setup installs docker.io)");
    let text = output_text(&docker);
    assert!(docker.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(" service create ") && l.contains("name=web")),
        "{text}"
    );

    // A worker keeps no events, and says where they are.
    let out = swarm.lab.shoal(&swarm.workers[0], &["events"]).unwrap();
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("not a swarm manager"),
        "{}",
        output_text(&out)
    );
    // Bad input is refused before anything is asked.
    let out = swarm
        .lab
        .shoal(&n1, &["events", "--filter", "type=container"])
        .unwrap();
    assert!(!out.status.success());
    assert!(output_text(&out).contains("invalid type \"container\""));
}

/// Where the web view's screenshots are kept: `target/test-artefacts/` of the workspace.
fn artefact(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-artefacts")
        .join(name)
}

/// Task cards in running state per node column, as the page shows them.
const RUNNING_PER_COLUMN: &str = "JSON.stringify(Object.fromEntries([...document.querySelectorAll('.node')].map(c => [c.dataset.node, c.querySelectorAll('.task[data-state=running]').length])))";

#[test]
fn the_web_view_shows_tasks_by_node_and_follows_a_scale_and_a_drain_live() {
    // Served on a loopback address: the page may drain and activate nodes. The browser runs in
    // n1's namespace, beside the manager that serves it.
    let swarm = Swarm::up_with_daemons(1, 2, &[], &["--ui-addr", "127.0.0.1:9380"]);
    let n1 = swarm.managers[0].clone();
    create_serve(
        &swarm,
        &n1,
        &["--name", "web", "--replicas", "6", "--publish", "8080:80"],
    );
    create_serve(&swarm, &n1, &["--name", "api", "--replicas", "2"]);
    let ip = n1.public_ip.to_string();
    wait_answers(&swarm, &ip, 8080, 6);
    // Some traffic through the mesh, for the traffic panel.
    let mut traffic = requests(&swarm, &ip);

    let dir = swarm.lab.host_dir(&n1).join("chromium");
    let mut browser = shoal_tests::browser::Browser::launch(&n1, &dir).expect("chromium starts");
    browser.navigate("http://127.0.0.1:9380/").unwrap();
    let mut last = Value::Null;
    let shown = wait_until(
        "six web cards over three columns",
        Duration::from_secs(60),
        || {
            last = browser
            .eval(&format!(
                "({RUNNING_PER_COLUMN}) + '|' + document.querySelectorAll('.task[data-service=web][data-state=running]').length + '|' + document.querySelectorAll('.rate').length"
            ))
            .unwrap_or_default();
            let text = last.as_str().unwrap_or_default();
            let mut parts = text.split('|');
            let columns: Value =
                serde_json::from_str(parts.next().unwrap_or("{}")).unwrap_or_default();
            let web: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let rates: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            Ok(columns.as_object().is_some_and(|c| c.len() == 3)
                && web == 6
                && columns
                    .as_object()
                    .unwrap()
                    .values()
                    .all(|n| n.as_u64().unwrap_or(0) >= 2)
                && rates >= 1)
        },
    );
    if let Err(e) = shown {
        panic!("{e}: {last}");
    }
    // Let the traffic panel show a rate, then keep the picture.
    let _ = wait_until(
        "a traffic rate on the page",
        Duration::from_secs(30),
        || {
            let text = browser
            .eval("[...document.querySelectorAll('.rate span:last-child')].map(s => s.textContent).join(' ')")
            .unwrap_or_default();
            Ok(text
                .as_str()
                .unwrap_or_default()
                .split(' ')
                .any(|t| t.parse::<f64>().is_ok_and(|r| r > 0.0)))
        },
    );
    browser.screenshot(&artefact("web-view.png")).unwrap();
    let _ = traffic.kill();
    let _ = traffic.wait();

    // A scale shows on the same page, without a reload.
    browser.eval("window.__notReloaded = true").unwrap();
    swarm.ok(&n1, &["service", "scale", "web=3"]);
    let scaled = wait_until("three web cards", Duration::from_secs(60), || {
        last = browser
            .eval("document.querySelectorAll('.task[data-service=web]').length")
            .unwrap_or_default();
        Ok(last == 3)
    });
    if let Err(e) = scaled {
        panic!("{e}: {last}");
    }
    assert_eq!(browser.eval("window.__notReloaded === true").unwrap(), true);
    browser
        .screenshot(&artefact("web-view-scaled.png"))
        .unwrap();

    // Drain n3 from the page: its tasks leave its column, and the swarm says it is drained.
    browser
        .eval("document.querySelector('.node[data-node=n3] button').click()")
        .unwrap();
    let drained = wait_until(
        "n3 drained and empty on the page",
        Duration::from_secs(60),
        || {
            last = browser
            .eval("document.querySelectorAll('.node[data-node=n3] .task').length + '|' + (document.querySelector('.node[data-node=n3] .badge.drain') !== null)")
            .unwrap_or_default();
            Ok(last == "0|true")
        },
    );
    if let Err(e) = drained {
        panic!("{e}: {last}");
    }
    let ls = swarm.ok(&n1, &["node", "ls", "--format", "json"]);
    assert!(
        ls.lines()
            .any(|l| l.contains("\"n3\"") && l.contains("Drain")),
        "{ls}"
    );
}
