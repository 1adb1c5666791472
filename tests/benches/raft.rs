//! `cargo xtask bench raft`: replicated writes on three managers, against etcd on the same lab.
//!
//! 1. Shoal: a 3-manager swarm on the lab. From the client namespace, `shoal-raft-load` writes
//!    new keys (`Put`: a config object, one raft entry each) to the leader's cluster API over
//!    mutual TLS, first 1 client then 64 concurrent ones, 5 s each. Acknowledged = committed on a
//!    majority, fsync'd.
//! 2. The daemons are stopped, and Debian's `etcd` (3 members, one per node, default settings:
//!    fsync on) takes the same load from the same client: `KV.Put` of new keys to its leader,
//!    over plain gRPC (no TLS: that favours etcd).
//!
//! 3. Failover, each system in turn: its leader is SIGKILLed five times; each time one client
//!    writes through another member until a write is acknowledged; the killed member is then
//!    restarted and caught up. `{shoal,etcd}_failover_s` is the median.
//! 4. etcd once more with mutual TLS on its client and peer URLs, as Shoal's managers always run
//!    (certificates made with `openssl`, ECDSA P-256 as Shoal's): `etcd_tls_*`, 1 and 64 clients.
//!
//! Writes `$SHOAL_BENCH_OUT` (default `target/bench/raft.json`): `{shoal,etcd}_writes_per_s_c{1,64}`,
//! `{shoal,etcd}_{mean,p50,p90,p99}_ms_c{1,64}`, `{shoal,etcd}_failover_s`, and `shoal_elections_c{1,64}`
//! (raft terms begun during each load: elections no kill caused). Needs root, `etcd` and release builds of `shoald`, `shoal`
//! and `shoal-raft-load` (the xtask builds them).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use shoal_tests::{Host, binary, swarm::Swarm, wait_until};

const SECONDS: &str = "5";

fn load(swarm: &Swarm, args: &[&str]) -> Value {
    let mut command = swarm
        .lab
        .client()
        .command(binary("shoal-raft-load").expect("built"))
        .expect("client");
    let out = command.args(args).output().expect("run shoal-raft-load");
    assert!(
        out.status.success(),
        "shoal-raft-load {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON line")
}

fn record(results: &mut BTreeMap<String, f64>, system: &str, clients: usize, run: &Value) {
    let get = |k: &str| run[k].as_f64().unwrap_or(0.0);
    results.insert(format!("{system}_writes_per_s_c{clients}"), get("per_s"));
    for figure in ["mean_ms", "p50_ms", "p90_ms", "p99_ms"] {
        results.insert(format!("{system}_{figure}_c{clients}"), get(figure));
    }
    results.insert(format!("{system}_errors_c{clients}"), get("errors"));
}

/// 1 then 64 clients writing to etcd's leader at `leader` (over TLS with the client certificate
/// in `certs`, when given), recorded as `system`.
fn load_etcd(
    swarm: &Swarm,
    results: &mut BTreeMap<String, f64>,
    system: &str,
    leader: &str,
    certs: Option<&str>,
) {
    for clients in [1, 64] {
        let c = clients.to_string();
        let mut args = vec![
            "etcd",
            "--target",
            leader,
            "--clients",
            &c,
            "--seconds",
            SECONDS,
        ];
        if let Some(certs) = certs {
            args.extend(["--certs", certs]);
        }
        let run = load(swarm, &args);
        eprintln!("{system}, {clients} clients: {run}");
        record(results, system, clients, &run);
    }
}

/// Leader kills per system.
const KILLS: usize = 5;

/// The highest raft term any manager is in.
fn term(swarm: &Swarm) -> u64 {
    swarm
        .managers
        .iter()
        .filter_map(|m| swarm.info(m)["Swarm"]["RaftTerm"].as_u64())
        .max()
        .unwrap_or(0)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The endpoint of etcd's leader, once there is one (over TLS with the client certificate in
/// `certs`, when given).
fn etcd_leader(swarm: &Swarm, endpoints: &[String], certs: Option<&str>) -> String {
    let mut leader = String::new();
    wait_until("etcd to elect a leader", Duration::from_secs(60), || {
        let mut command = swarm
            .lab
            .client()
            .command(binary("shoal-raft-load").unwrap())
            .unwrap();
        command.args(["etcd-leader", "--endpoints", &endpoints.join(",")]);
        if let Some(certs) = certs {
            command.args(["--certs", certs]);
        }
        let out = command.output().unwrap();
        leader = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(out.status.success() && !leader.is_empty())
    })
    .expect("an etcd leader");
    leader
}

/// Seconds from SIGKILL of the leading manager to the first write acknowledged through another
/// manager, [`KILLS`] times; after each, the killed manager is restarted and caught up.
fn shoal_failovers(swarm: &mut Swarm) -> Vec<f64> {
    let mut seconds = Vec::new();
    for _ in 0..KILLS {
        let any = swarm.managers[0].clone();
        let leader = swarm.host(&swarm.leader(&any).expect("a leader"));
        let survivor = swarm
            .managers
            .iter()
            .find(|m| m.name != leader.name)
            .expect("another manager")
            .clone();
        let target = format!("{}:2377", survivor.public_ip);
        let certs = swarm.lab.host_dir(&survivor).join("data/swarm/certs");
        swarm.lab.kill_shoald(&leader).expect("SIGKILL the leader");
        let run = load(
            swarm,
            &[
                "shoal",
                "--target",
                &target,
                "--certs",
                certs.to_str().unwrap(),
                "--first-write",
            ],
        );
        seconds.push(run["ms"].as_f64().unwrap_or(f64::NAN) / 1e3);
        swarm
            .lab
            .spawn_shoald(&leader)
            .expect("restart the manager");
        let names: Vec<String> = swarm.managers.iter().map(|m| m.name.clone()).collect();
        wait_until(
            "the restarted manager back and caught up",
            Duration::from_secs(60),
            || {
                let nodes = swarm.nodes(&survivor);
                let healthy = names.iter().all(|name| {
                    nodes.iter().any(|n| {
                        n["Hostname"] == name.as_str()
                            && matches!(n["ManagerStatus"].as_str(), Some("Leader" | "Reachable"))
                    })
                });
                Ok(healthy && swarm.store_index(&leader) >= swarm.store_index(&survivor))
            },
        )
        .expect("the manager back");
    }
    seconds
}

fn main() {
    let out = std::env::var("SHOAL_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/raft.json").into()
    });
    let mut results = BTreeMap::new();

    // Shoal.
    let mut swarm = Swarm::up(3, 0);
    let n1 = swarm.managers[0].clone();
    let leader = swarm.host(&swarm.leader(&n1).expect("a leader"));
    let target = format!("{}:2377", leader.public_ip);
    let certs = swarm.lab.host_dir(&leader).join("data/swarm/certs");
    let certs = certs.to_str().unwrap();
    for clients in [1, 64] {
        let c = clients.to_string();
        let terms_before = term(&swarm);
        let run = load(
            &swarm,
            &[
                "shoal",
                "--target",
                &target,
                "--certs",
                certs,
                "--clients",
                &c,
                "--seconds",
                SECONDS,
            ],
        );
        eprintln!("shoal, {clients} clients: {run}");
        record(&mut results, "shoal", clients, &run);
        // An election under load shows as a higher term.
        results.insert(
            format!("shoal_elections_c{clients}"),
            (term(&swarm) - terms_before) as f64,
        );
    }
    let failovers = shoal_failovers(&mut swarm);
    eprintln!("shoal, writable again after a leader's SIGKILL (s): {failovers:?}");
    results.insert("shoal_failover_s".into(), median(failovers));
    for node in swarm.lab.nodes().to_vec() {
        swarm.lab.kill_shoald(&node).expect("stop shoald");
    }

    // etcd on the same nodes, addresses and client.
    let nodes = swarm.lab.nodes().to_vec();
    let scheme = |tls: Option<&Path>| if tls.is_some() { "https" } else { "http" };
    let etcd = |node: &Host, home: PathBuf, tls: Option<&Path>| {
        let dir = home.join(if tls.is_some() { "etcd-tls" } else { "etcd" });
        let cluster: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}={}://{}:2380", n.name, scheme(tls), n.public_ip))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("etcd.log"))
            .unwrap();
        let mut command = node.command("etcd").expect("etcd in the node");
        command
            .args(["--name", &node.name, "--data-dir", dir.to_str().unwrap()])
            .arg(format!(
                "--listen-client-urls={}://{}:2379",
                scheme(tls),
                node.public_ip
            ))
            .arg(format!(
                "--advertise-client-urls={}://{}:2379",
                scheme(tls),
                node.public_ip
            ))
            .arg(format!(
                "--listen-peer-urls={}://{}:2380",
                scheme(tls),
                node.public_ip
            ))
            .arg(format!(
                "--initial-advertise-peer-urls={}://{}:2380",
                scheme(tls),
                node.public_ip
            ))
            .arg(format!("--initial-cluster={}", cluster.join(",")))
            .args([
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(tls) = tls {
            let file = |name: String| tls.join(name).to_str().unwrap().to_owned();
            let (cert, key, ca) = (
                file(format!("{}.crt", node.name)),
                file(format!("{}.key", node.name)),
                file("ca.crt".into()),
            );
            for (flag, value) in [
                ("--cert-file", &cert),
                ("--key-file", &key),
                ("--trusted-ca-file", &ca),
                ("--peer-cert-file", &cert),
                ("--peer-key-file", &key),
                ("--peer-trusted-ca-file", &ca),
            ] {
                command.arg(format!("{flag}={value}"));
            }
            command.args(["--client-cert-auth", "--peer-client-cert-auth"]);
        }
        command
    };
    let mut pids = BTreeMap::new();
    for node in &nodes {
        let home = swarm.lab.host_dir(node);
        let pid = swarm.lab.spawn(etcd(node, home, None)).expect("start etcd");
        pids.insert(node.name.clone(), pid);
    }
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}:2379", n.public_ip))
        .collect();
    let etcd_leader_now = etcd_leader(&swarm, &endpoints, None);
    load_etcd(&swarm, &mut results, "etcd", &etcd_leader_now, None);
    // etcd's failover, the same way: its leader SIGKILLed, the first write through another
    // member timed, the member restarted on its data and the cluster led again.
    let mut etcd_failovers = Vec::new();
    for _ in 0..KILLS {
        let leader = etcd_leader(&swarm, &endpoints, None);
        let node = nodes
            .iter()
            .find(|n| leader.starts_with(&format!("{}:", n.public_ip)))
            .expect("the leader is a lab node")
            .clone();
        let survivor = endpoints
            .iter()
            .find(|e| **e != leader)
            .expect("another member")
            .clone();
        // SAFETY: signalling a child this bench started.
        unsafe { libc::kill(pids[&node.name] as i32, libc::SIGKILL) };
        let run = load(&swarm, &["etcd", "--target", &survivor, "--first-write"]);
        etcd_failovers.push(run["ms"].as_f64().unwrap_or(f64::NAN) / 1e3);
        let home = swarm.lab.host_dir(&node);
        let pid = swarm
            .lab
            .spawn(etcd(&node, home, None))
            .expect("restart etcd");
        pids.insert(node.name.clone(), pid);
        std::thread::sleep(Duration::from_secs(3));
        etcd_leader(&swarm, &endpoints, None);
    }
    eprintln!("etcd, writable again after a leader's SIGKILL (s): {etcd_failovers:?}");
    results.insert("etcd_failover_s".into(), median(etcd_failovers));

    // etcd with mutual TLS, as Shoal's managers: a new cluster on the same nodes.
    for pid in pids.values() {
        // SAFETY: signalling a child this bench started.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    let tls = swarm.lab.dir().join("etcd-tls");
    let client_certs = etcd_certs(&tls, &nodes);
    let client_certs = client_certs.to_str().unwrap();
    // A process that has exited (a zombie until the lab reaps it) holds no socket.
    let exited = |pid: &u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3));
        matches!(state, Some("Z" | "X") | None)
    };
    wait_until("the plain etcd to exit", Duration::from_secs(30), || {
        Ok(pids.values().all(exited))
    })
    .expect("etcd stopped");
    for node in &nodes {
        let home = swarm.lab.host_dir(node);
        swarm
            .lab
            .spawn(etcd(node, home, Some(&tls)))
            .expect("start etcd with TLS");
    }
    let tls_leader = etcd_leader(&swarm, &endpoints, Some(client_certs));
    load_etcd(
        &swarm,
        &mut results,
        "etcd_tls",
        &tls_leader,
        Some(client_certs),
    );

    println!(
        "{:<28} {:>12} {:>12} {:>12}",
        "figure", "shoal", "etcd", "etcd (TLS)"
    );
    println!(
        "{:<28} {:>12.2} {:>12.2}",
        "failover_s", results["shoal_failover_s"], results["etcd_failover_s"]
    );
    for figure in [
        "writes_per_s_c1",
        "mean_ms_c1",
        "p50_ms_c1",
        "p90_ms_c1",
        "p99_ms_c1",
        "writes_per_s_c64",
        "mean_ms_c64",
        "p50_ms_c64",
        "p90_ms_c64",
        "p99_ms_c64",
    ] {
        println!(
            "{figure:<28} {:>12.1} {:>12.1} {:>12.1}",
            results[&format!("shoal_{figure}")],
            results[&format!("etcd_{figure}")],
            results[&format!("etcd_tls_{figure}")]
        );
    }
    if let Some(dir) = Path::new(&out).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
}

/// A CA, a certificate for each etcd member (its IP and `swarm-manager`, the name
/// `shoal-raft-load` verifies, server and client use) and one for the client, in `dir`, made
/// with `openssl` as ECDSA P-256 keys (Shoal's own). Returns the client's directory (`node.crt`,
/// `node.key`, `ca.crt`).
fn etcd_certs(dir: &Path, nodes: &[Host]) -> PathBuf {
    let client = dir.join("client");
    std::fs::create_dir_all(&client).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=bench etcd CA",
            ],
        ]
        .concat(),
    );
    let leaf = |name: &str, san: &str, usage: &str, cert: &str, key: &str| {
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\nsubjectAltName={san}\n"),
        )
        .unwrap();
        let csr = format!("{name}.csr");
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    };
    for node in nodes {
        leaf(
            &node.name,
            &format!("DNS:swarm-manager,IP:{}", node.public_ip),
            "serverAuth,clientAuth",
            &format!("{}.crt", node.name),
            &format!("{}.key", node.name),
        );
    }
    leaf(
        "client",
        "DNS:client",
        "clientAuth",
        "client/node.crt",
        "client/node.key",
    );
    std::fs::copy(dir.join("ca.crt"), client.join("ca.crt")).unwrap();
    client
}
