//! The routing mesh on a 3-node lab, driven with `shoal dataplane apply` as a user would: six
//! backend tasks (two per node, answering with their names) behind ports published on every
//! node, reached from the lab's client. Needs root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use shoal_abi::mesh::{self as abi, FlowKey, flow_hash};
use shoal_dataplane::mesh::maglev;
use shoal_tests::mesh::{INGRESS, Mesh, Service, TaskSpec, answers, labtool};
use shoal_tests::overlay::apply;
use shoal_tests::{Lab, LabSpec, binary, output_text as text};

/// Six backends, two per node, and a seventh (on n2) that no service uses at first.
const TASKS: &[TaskSpec] = &[
    ("web1", 0, 11),
    ("web2", 0, 12),
    ("web3", 1, 13),
    ("web4", 1, 14),
    ("web5", 2, 15),
    ("web6", 2, 16),
    ("web7", 1, 17),
];
const SIX: [&str; 6] = ["web1", "web2", "web3", "web4", "web5", "web6"];
const PORT: u16 = 8080;

fn cluster(services: Vec<Service>) -> (Lab, Mesh) {
    cluster_on(Links::Plain, services)
}

/// How the lab's links are tuned before the daemons start.
#[derive(Debug, Clone, Copy)]
enum Links {
    /// Plain veth pairs, as `Lab::up` makes them (a new user's rig).
    Plain,
    /// GRO on the switch's ports only.
    GroOnly,
    /// Transmit checksum offload off on the hosts only.
    ChecksumsOnly,
    /// Both: links that behave as wires and NICs do.
    WireLike,
}

fn cluster_on(links: Links, services: Vec<Service>) -> (Lab, Mesh) {
    let mut lab = Lab::up(LabSpec::nodes(3)).expect("lab up");
    match links {
        Links::Plain => Ok(()),
        Links::GroOnly => lab.gro_on_switch_ports(),
        Links::ChecksumsOnly => lab.checksums_on_the_wire(),
        Links::WireLike => lab.wire_like_nics(),
    }
    .expect("links tuned");
    lab.spawn_shoald_all().expect("shoald starts in every node");
    // A TCP port published on every node.
    let probe_port = services
        .iter()
        .flat_map(|s| &s.ports)
        .find(|p| p["mode"] != "host" && p["protocol"] != "udp")
        .and_then(|p| p["published"].as_u64())
        .map(|p| p as u16);
    let mesh = Mesh::new(&mut lab, TASKS, services).expect("tasks");
    mesh.apply_all(&lab).expect("every node applies its state");
    mesh.wait_ready().expect("responders listen");
    // Every node answers before the tests count: in the first second or so after a node's data
    // plane is built, the first connection through it can lose its first SYN-ACK (TCP's
    // retransmission brings it a second later; see docs/mesh.md, known limits). A refusal is an
    // answer too (a service without backends).
    if let Some(port) = probe_port {
        for node in 0..3 {
            let answered = shoal_tests::wait_until(
                &format!("a connection through node {node}"),
                Duration::from_secs(10),
                || {
                    let a = ask(&lab, node, port, false, (45_000, 45_000));
                    Ok(a.first().is_some_and(|(_, r)| {
                        r.as_ref().is_ok_and(|_| true)
                            || r.as_ref().is_err_and(|e| !e.contains("timed out"))
                    }))
                },
            );
            answered.expect("every node answers");
        }
    }
    (lab, mesh)
}

fn node_ip(lab: &Lab, node: usize) -> Ipv4Addr {
    lab.nodes()[node].public_ip
}

/// `shoal-labtool ask` from the client: one request per source port.
fn ask(
    lab: &Lab,
    node: usize,
    port: u16,
    udp: bool,
    sports: (u16, u16),
) -> Vec<(u16, Result<String, String>)> {
    let target = format!("{}:{port}", node_ip(lab, node));
    let range = format!("{}-{}", sports.0, sports.1);
    let mut args = vec!["ask", "--target", &target, "--sports", &range];
    if udp {
        args.push("--udp");
    }
    let out = labtool(lab.client(), &args).expect("ask runs");
    assert!(out.status.success(), "{}", text(&out));
    answers(&out)
}

/// The userspace model: which task a flow from the client to `node:port` lands on.
fn model<'a>(mesh: &Mesh, backends: &[&'a str]) -> impl Fn(FlowKey) -> &'a str + use<'a> {
    let mut sorted: Vec<(Ipv4Addr, &'a str)> = backends
        .iter()
        .map(|b| (mesh.overlay.ip(b, INGRESS.id), *b))
        .collect();
    sorted.sort();
    let keys: Vec<String> = sorted.iter().map(|(ip, _)| ip.to_string()).collect();
    let input: Vec<maglev::Backend<'_>> = keys
        .iter()
        .map(|k| maglev::Backend { key: k, weight: 1 })
        .collect();
    let table = maglev::build(&input, maglev::DEFAULT_TABLE_SIZE).expect("table");
    move |key| sorted[maglev::lookup(&table, flow_hash(&key)).expect("backends") as usize].1
}

fn flow(lab: &Lab, node: usize, sport: u16, port: u16, proto: u8) -> FlowKey {
    FlowKey {
        saddr: abi::addr(lab.client().public_ip.octets()),
        daddr: abi::addr(node_ip(lab, node).octets()),
        sport: abi::port(sport),
        dport: abi::port(port),
        proto,
        pad: [0; 3],
    }
}

fn inspect(lab: &Lab, node: usize) -> Value {
    let out = lab
        .shoal(&lab.nodes()[node], &["dataplane", "inspect"])
        .expect("inspect runs");
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn every_node_answers_and_new_connections_spread_evenly_where_the_model_says() {
    let (mut lab, mesh) = cluster(vec![Service::web("web", PORT, SIX.to_vec())]);
    let pick = model(&mesh, &SIX);

    // 600 new TCP connections, 200 through each node, from fixed source ports.
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for node in 0..3 {
        for (sport, answer) in ask(&lab, node, PORT, false, (30_000, 30_199)) {
            let name = answer.unwrap_or_else(|e| panic!("node {node}, port {sport}: {e}"));
            assert_eq!(
                name,
                pick(flow(&lab, node, sport, PORT, 6)),
                "node {node}, source port {sport}: the kernel chose another backend than the model"
            );
            *per_backend.entry(name).or_default() += 1;
        }
    }
    assert_eq!(per_backend.len(), 6, "{per_backend:?}");
    for (name, count) in &per_backend {
        assert!(
            (70..=130).contains(count),
            "{name} got {count} of 600: {per_backend:?}"
        );
    }

    // UDP through every node.
    for node in 0..3 {
        for (sport, answer) in ask(&lab, node, PORT, true, (40_000, 40_019)) {
            let name = answer.unwrap_or_else(|e| panic!("UDP via node {node}, port {sport}: {e}"));
            assert_eq!(name, pick(flow(&lab, node, sport, PORT, 17)));
        }
    }

    // A port the mesh does not publish reaches the node's own listener, untouched.
    let node = lab.nodes()[0].clone();
    let mut own = node
        .command(binary("shoal-labtool").expect("built"))
        .expect("command");
    own.args(["serve", "--name", "n1-itself", "--port", "9999"])
        .stdout(Stdio::null());
    lab.spawn(own).expect("listener starts");
    let reached =
        shoal_tests::wait_until("the node's own listener", Duration::from_secs(10), || {
            Ok(ask(&lab, 0, 9999, false, (41_000, 41_000))
                .first()
                .is_some_and(|(_, a)| a.as_deref() == Ok("n1-itself")))
        });
    assert!(reached.is_ok(), "{reached:?}");

    // Counters and the attach mode are visible; connections to tasks on other nodes went
    // straight to those nodes, encapsulated (by TC on these plain veth links).
    let mut tunneled = 0;
    for node in 0..3 {
        let v = inspect(&lab, node);
        assert_eq!(v["mesh"]["interfaces"]["eth0"]["xdp"], "native", "{v}");
        assert_eq!(v["mesh"]["interfaces"]["eth0"]["entry"], "xdp+tc", "{v}");
        let web = &v["mesh"]["services"]["web"];
        assert_eq!(web["backends"], 6, "{v}");
        assert!(web["connections"].as_u64().unwrap() >= 220, "{v}");
        assert!(web["reply_packets"].as_u64().unwrap() > 0, "{v}");
        tunneled += web["tunneled"].as_u64().unwrap();
    }
    assert!(tunneled > 0, "no packet was encapsulated");
}

#[test]
fn a_long_connection_keeps_its_backend_while_backends_change_and_new_connections_follow_the_new_table()
 {
    let (lab, mut mesh) = cluster(vec![Service::web("web", PORT, SIX.to_vec())]);

    // A long-lived connection through n2.
    let log = lab.dir().join("hold.log");
    let mut hold = lab
        .client()
        .command(binary("shoal-labtool").expect("built"))
        .expect("command");
    hold.args([
        "hold",
        "--target",
        &format!("{}:{PORT}", node_ip(&lab, 1)),
        "--seconds",
        "8",
        "--interval-ms",
        "100",
    ])
    .stdout(std::fs::File::create(&log).expect("log"));
    let mut hold = hold.spawn().expect("hold starts");
    let held = shoal_tests::wait_until(
        "the held connection's first answer",
        Duration::from_secs(5),
        || {
            Ok(std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .next()
                .is_some())
        },
    );
    assert!(held.is_ok(), "{held:?}");
    let first = std::fs::read_to_string(&log).expect("log");
    let held_by = first
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("a name")
        .to_owned();

    // Many connections through n1, then: remove one backend (not the held one), add web7. The
    // same client ports connect again: new connections (their earlier flows closed), balanced
    // by the new table, none on the removed backend.
    let before = ask(&lab, 0, PORT, false, (31_000, 31_299));
    let removed = *SIX
        .iter()
        .find(|b| **b != held_by)
        .expect("another backend");
    let mut changed: Vec<&str> = SIX.iter().copied().filter(|b| *b != removed).collect();
    changed.push("web7");
    mesh.services = vec![Service::web("web", PORT, changed.clone())];
    mesh.apply_all(&lab).expect("apply the change");
    let pick = model(&mesh, &changed);
    let after = ask(&lab, 0, PORT, false, (31_000, 31_299));
    let mut moved = 0;
    for ((sport, old), (_, new)) in before.iter().zip(&after) {
        let (old, new) = (
            old.as_ref().expect("answered"),
            new.as_ref().expect("answered"),
        );
        assert_eq!(
            new,
            pick(flow(&lab, 0, *sport, PORT, 6)),
            "port {sport}: balanced off the model"
        );
        if old == removed {
            assert_ne!(new, removed, "port {sport}: still on the removed backend");
            moved += 1;
        }
    }
    assert!(moved > 0, "no flow was on {removed}");

    // Add the removed one back while the connection still runs.
    mesh.services = vec![Service::web(
        "web",
        PORT,
        [changed.as_slice(), &[removed]].concat(),
    )];
    mesh.apply_all(&lab).expect("apply the change");

    let status = hold.wait().expect("hold ends");
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(status.success(), "the held connection broke:\n{log}");
    let names: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("done"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(names.len() > 30, "{log}");
    assert!(
        names.iter().all(|n| *n == held_by),
        "the held connection changed backend:\n{log}"
    );
}

#[test]
fn client_ip_mode_shows_the_client_address_and_host_mode_answers_only_where_tasks_run() {
    let keep = Service {
        name: "keep",
        ports: vec![json!({ "published": 8090, "target": 80 })],
        backends: SIX.to_vec(),
        client_ip: "preserve",
    };
    let local = Service {
        name: "local",
        ports: vec![json!({ "published": 8091, "target": 80, "mode": "host" })],
        backends: vec!["web1", "web3"],
        client_ip: "snat",
    };
    let (lab, _mesh) = cluster(vec![keep, local]);
    let client = lab.client().public_ip.to_string();
    let curl = |node: usize, port: u16, path: &str| -> Output {
        lab.run(
            lab.client(),
            "curl",
            &[
                "-sS",
                "--max-time",
                "3",
                &format!("http://{}:{port}{path}", node_ip(&lab, node)),
            ],
        )
        .expect("curl runs")
    };
    for node in 0..3 {
        for _ in 0..6 {
            let out = curl(node, 8090, "/peer");
            assert!(out.status.success(), "node {node}: {}", text(&out));
            let body = String::from_utf8_lossy(&out.stdout);
            let (name, peer) = body.trim().split_once(' ').expect("name and peer");
            assert!(SIX.contains(&name), "{body}");
            assert_eq!(
                peer, client,
                "node {node}: {name} saw {peer}, not the client"
            );
        }
    }
    for (node, expected) in [(0, "web1"), (1, "web3")] {
        let out = curl(node, 8091, "/");
        assert!(out.status.success(), "node {node}: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
    }
    let out = curl(2, 8091, "/");
    assert_eq!(
        out.status.code(),
        Some(7),
        "no task on n3, so its 8091 refuses: {}",
        text(&out)
    );
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_a_service_without_backends_refuses_connections() {
    let (lab, mut mesh) = cluster(vec![Service::web("web", PORT, SIX.to_vec())]);
    let good = mesh.state(&lab, 0);
    let baseline = inspect(&lab, 0);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut s = good.clone();
        f(&mut s);
        s
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "a port published twice",
            with(&|s| {
                let mut other = s["mesh"]["services"][0].clone();
                other["name"] = json!("other");
                s["mesh"]["services"].as_array_mut().unwrap().push(other);
            }),
            "8080/tcp is already published by mesh.services[0]",
        ),
        (
            "port 0",
            with(&|s| s["mesh"]["services"][0]["ports"][0]["published"] = json!(0)),
            "0 is not a port: 1 to 65535",
        ),
        (
            "port 70000",
            with(&|s| s["mesh"]["services"][0]["ports"][0]["target"] = json!(70000)),
            "70000 is not a port: 1 to 65535",
        ),
        (
            "a backend on an unknown network",
            with(&|s| s["mesh"]["services"][0]["backends"][0]["network"] = json!("nope")),
            "no network \"nope\" in networks",
        ),
        (
            "a backend no task has",
            with(&|s| s["mesh"]["services"][0]["backends"][0]["ip"] = json!("10.255.0.99")),
            "no task has 10.255.0.99 on network \"ingress\"",
        ),
        (
            "a table size that is not prime",
            with(&|s| s["mesh"]["services"][0]["table_size"] = json!(1000)),
            "1000 is not a prime number",
        ),
        (
            "a table too small",
            with(&|s| s["mesh"]["services"][0]["table_size"] = json!(101)),
            "101 slots are too few for 6 running backends",
        ),
        (
            "the VXLAN port published",
            with(&|s| s["mesh"]["services"][0]["ports"][1]["published"] = json!(4789)),
            "4789/udp carries this node's overlay traffic",
        ),
        (
            "the loopback as a public interface",
            with(&|s| s["mesh"]["interfaces"] = json!(["lo"])),
            "\"lo\" cannot carry published ports",
        ),
        (
            "an unknown field",
            with(&|s| s["mesh"]["services"][0]["replicas"] = json!(3)),
            "unknown field `replicas`",
        ),
    ];
    for (what, state, message) in cases {
        let out = apply(&lab, 0, &state).expect("apply runs");
        assert!(!out.status.success(), "{what}: accepted");
        let said = text(&out);
        assert!(
            said.contains(message),
            "{what}: expected {message:?} in:\n{said}"
        );
        assert!(said.contains("nothing was applied"), "{what}:\n{said}");
        assert_eq!(
            inspect(&lab, 0)["mesh"]["services"]["web"]["backends"],
            baseline["mesh"]["services"]["web"]["backends"],
            "{what}"
        );
    }
    assert_eq!(
        ask(&lab, 0, PORT, false, (42_000, 42_000))[0]
            .1
            .as_deref()
            .map(|n| n.starts_with("web")),
        Ok(true),
        "the mesh still answers after the refusals"
    );

    // No backends: the port refuses connections (TCP reset, ICMP port unreachable for UDP).
    mesh.services = vec![Service::web("web", PORT, Vec::new())];
    mesh.apply_all(&lab)
        .expect("zero backends is a valid state");
    let tcp = ask(&lab, 0, PORT, false, (42_001, 42_001));
    assert!(
        matches!(&tcp[0].1, Err(e) if e.contains("refused")),
        "{tcp:?}"
    );
    let udp = ask(&lab, 0, PORT, true, (42_002, 42_002));
    assert!(udp[0].1.is_err(), "{udp:?}");
    assert!(
        inspect(&lab, 0)["mesh"]["services"]["web"]["refused"]
            .as_u64()
            .unwrap()
            >= 2
    );

    mesh.services = vec![Service::web("web", PORT, SIX.to_vec())];
    mesh.apply_all(&lab).expect("backends again");
    let back = ask(&lab, 0, PORT, false, (42_003, 42_003));
    assert!(
        matches!(&back[0].1, Ok(n) if n.starts_with("web")),
        "{back:?}"
    );
}

#[test]
fn a_restarted_daemon_publishes_its_ports_again_by_itself() {
    let (mut lab, mesh) = cluster(vec![Service::web("web", PORT, SIX.to_vec())]);
    let n1 = lab.nodes()[0].clone();
    lab.kill_shoald(&n1).expect("shoald on n1 killed");
    // The programs live as long as the daemon: n1's port falls back to its stack, which refuses;
    // the other nodes go on answering, from tasks on n1 too.
    let down = ask(&lab, 0, PORT, false, (43_000, 43_000));
    assert!(
        matches!(&down[0].1, Err(e) if e.contains("refused")),
        "{down:?}"
    );
    let others = ask(&lab, 1, PORT, false, (43_001, 43_040));
    assert!(others.iter().all(|(_, a)| a.is_ok()), "{others:?}");
    assert!(
        others
            .iter()
            .any(|(_, a)| matches!(a.as_deref(), Ok("web1" | "web2"))),
        "{others:?}"
    );

    lab.spawn_shoald(&n1).expect("shoald restarts");
    let back = shoal_tests::wait_until("n1's 8080 again", Duration::from_secs(20), || {
        let a = ask(&lab, 0, PORT, false, (43_100, 43_100));
        Ok(matches!(&a[0].1, Ok(n) if n.starts_with("web")))
    });
    assert!(back.is_ok(), "{back:?}");
    let out = apply(&lab, 0, &mesh.state(&lab, 0)).expect("apply runs");
    assert!(
        text(&out).contains("nothing changed"),
        "the restored state is the applied one: {}",
        text(&out)
    );
}

#[test]
fn an_interface_without_native_xdp_gets_the_tc_entry_alone_and_says_so() {
    let (lab, mesh) = cluster(vec![Service::web("web", PORT, SIX.to_vec())]);
    let n1 = lab.nodes()[0].clone();
    // A bridge has no native XDP support.
    for args in [
        vec!["link", "add", "brx", "type", "bridge"],
        vec!["addr", "add", "192.0.2.1/24", "dev", "brx"],
        vec!["link", "set", "brx", "up"],
    ] {
        let out = lab.run(&n1, "ip", &args).expect("ip runs");
        assert!(out.status.success(), "{}", text(&out));
    }
    let mut state = mesh.state(&lab, 0);
    state["mesh"]["interfaces"] = json!(["eth0", "brx"]);
    let out = apply(&lab, 0, &state).expect("apply runs");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("mesh: attached to brx (TC: no native XDP here"),
        "{}",
        text(&out)
    );
    let v = inspect(&lab, 0);
    assert_eq!(v["mesh"]["interfaces"]["brx"]["xdp"], "none", "{v}");
    assert_eq!(v["mesh"]["interfaces"]["brx"]["path"], "in: tc", "{v}");
    assert_eq!(v["mesh"]["interfaces"]["brx"]["driver"], "bridge", "{v}");
    assert_eq!(v["mesh"]["interfaces"]["eth0"]["xdp"], "native", "{v}");
    let answers = ask(&lab, 0, PORT, false, (44_000, 44_009));
    assert!(answers.iter().all(|(_, a)| a.is_ok()), "{answers:?}");
}

/// Twenty requests through each node, TCP and UDP, half a second each: the ones that got no
/// answer, with the backend (and its node) the model says each went to.
fn unanswered(lab: &Lab, mesh: &Mesh) -> Vec<String> {
    let pick = model(mesh, &SIX);
    let mut missing = Vec::new();
    for node in 0..3 {
        for (udp, proto) in [(false, 6), (true, 17)] {
            let first = if udp { 42_000 } else { 32_000 } + 100 * node as u16;
            let target = format!("{}:{PORT}", node_ip(lab, node));
            let range = format!("{first}-{}", first + 19);
            let mut args = vec!["ask", "--target", &target, "--sports", &range];
            args.extend(["--timeout-ms", "500"]);
            if udp {
                args.push("--udp");
            }
            let out = labtool(lab.client(), &args).expect("ask runs");
            assert!(out.status.success(), "{}", text(&out));
            for (sport, answer) in answers(&out) {
                if let Err(e) = answer {
                    let backend = pick(flow(lab, node, sport, PORT, proto));
                    let on = TASKS.iter().find(|t| t.0 == backend).map_or(9, |t| t.1);
                    let name = if udp { "udp" } else { "tcp" };
                    missing.push(format!(
                        "via node {node}, {name} from {sport} to {backend} on node {on}: {e}"
                    ));
                }
            }
        }
    }
    missing
}

fn every_request_is_answered_on(links: Links) {
    let (lab, mesh) = cluster_on(links, vec![Service::web("web", PORT, SIX.to_vec())]);
    let missing = unanswered(&lab, &mesh);
    let inspected: Vec<Value> = (0..3)
        .map(|node| inspect(&lab, node)["mesh"].clone())
        .collect();
    assert!(
        missing.is_empty(),
        "{links:?} links: {} of 120 requests unanswered: {missing:#?}\nmesh: {inspected:#?}",
        missing.len()
    );
    // Each node says which path its packets took, and why.
    let data_takes_xdp = matches!(links, Links::GroOnly | Links::WireLike);
    let checksums_complete = matches!(links, Links::ChecksumsOnly | Links::WireLike);
    let sum = |counter: &str| -> u64 {
        inspected
            .iter()
            .map(|m| m["services"]["web"][counter].as_u64().expect("a counter"))
            .sum()
    };
    for m in &inspected {
        let interfaces = &m["interfaces"];
        assert_eq!(interfaces["eth0"]["path"], "in: xdp+tc", "{m:#}");
        assert_eq!(interfaces["eth0"]["driver"], "veth", "{m:#}");
        assert_eq!(interfaces["shoal0"]["path"], "out: xdp", "{m:#}");
        let data_path = if data_takes_xdp {
            "out: xdp"
        } else {
            "out: tc (takes no XDP frames)"
        };
        assert_eq!(interfaces["eth1"]["path"], data_path, "{m:#}");
    }
    assert_eq!(sum("packets"), sum("xdp_packets") + sum("tc_packets"));
    assert!(sum("tunneled") > 0, "{inspected:#?}");
    if !data_takes_xdp {
        assert!(sum("egress_handoffs") > 0, "{inspected:#?}");
    }
    if checksums_complete {
        // Once, under the load of the whole suite, 1 packet of 125 on one node came with a
        // partial checksum and took TC (cause not found; docs/mesh.md): the bound is 1 %.
        assert!(
            sum("checksum_handoffs") * 100 <= sum("packets"),
            "{inspected:#?}"
        );
    } else {
        assert!(sum("checksum_handoffs") > 0, "{inspected:#?}");
        assert_eq!(sum("xdp_packets"), 0, "{inspected:#?}");
    }
    if matches!(links, Links::WireLike) {
        assert!(sum("tc_packets") * 100 <= sum("packets"), "{inspected:#?}");
    }
}

#[test]
fn every_request_is_answered_on_plain_veth_links() {
    every_request_is_answered_on(Links::Plain);
}

#[test]
fn every_request_is_answered_with_gro_on_the_switch_only() {
    every_request_is_answered_on(Links::GroOnly);
}

#[test]
fn every_request_is_answered_with_checksums_on_the_wire_only() {
    every_request_is_answered_on(Links::ChecksumsOnly);
}

#[test]
fn every_request_is_answered_on_wire_like_links() {
    every_request_is_answered_on(Links::WireLike);
}

/// Issue Data plane III, item 4: a client on a node itself reaches a published port, by the
/// loopback address and by the node's own address, over TCP and UDP, balanced over the
/// service's tasks; `getpeername` shows the address it connected to, and a task's own
/// namespace is left alone.
#[test]
fn clients_on_the_node_itself_reach_published_ports() {
    let (lab, mesh) = cluster(vec![Service::web("web", PORT, SIX.to_vec())]);
    let n1 = lab.nodes()[0].clone();
    let v = inspect(&lab, 0);
    assert_eq!(v["mesh"]["node_local"]["served"], true, "{v}");
    for target in ["127.0.0.1".to_owned(), n1.public_ip.to_string()] {
        let mut names = std::collections::BTreeSet::new();
        for udp in [false, true] {
            let target = format!("{target}:{PORT}");
            let mut args = vec!["ask", "--target", &target, "--count", "12"];
            if udp {
                args.push("--udp");
            }
            let out = labtool(&n1, &args).expect("ask runs");
            let answers = answers(&out);
            assert_eq!(answers.len(), 12, "{}", text(&out));
            for (_, answer) in answers {
                let name = answer.unwrap_or_else(|e| panic!("{target} (udp: {udp}): {e}"));
                names.insert(name);
            }
        }
        assert!(names.len() > 1, "{target}: one task only: {names:?}");
    }
    let script = "import socket\n\
        s = socket.create_connection(('127.0.0.1', 8080), timeout=3)\n\
        print('%s:%d' % s.getpeername())";
    let out = lab
        .run(&n1, "python3", &["-c", script])
        .expect("python3 runs");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "127.0.0.1:8080"
    );
    // A task's own namespace is not the node's: its 127.0.0.1:8080 is its own (nothing there).
    let script = "import socket\n\
        try:\n    socket.create_connection(('127.0.0.1', 8080), timeout=3)\n\
        except ConnectionRefusedError:\n    print('refused')";
    let out = mesh
        .overlay
        .command("web1", "python3")
        .args(["-c", script])
        .output()
        .expect("python3 runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused",
        "{}",
        text(&out)
    );
}
