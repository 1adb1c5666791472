//! Hardening (issue: Hardening I) on the lab: what one hostile node, a busy port or time could
//! break. A misbehaving node is played by `shoal-hostile`, which speaks the cluster's protocol
//! with what a real `shoald` never sends. Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use shoal_tests::{
    Host, binary, output_text,
    service::{create_serve, labtool_path, tasks, wait_running, who_answers},
    swarm::Swarm,
    wait_until,
};

/// Runs `shoal-hostile args` in `host`'s namespace; its one JSON answer.
fn hostile(on: &Host, args: &[&str]) -> Value {
    let mut command = on
        .command(binary("shoal-hostile").expect("shoal-hostile is built"))
        .expect("a command in the namespace");
    command.args(args);
    let out = command.output().expect("shoal-hostile runs");
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)))
}

/// Asserts a hostile call was refused with `code`, saying `words`.
fn refused(answer: &Value, code: &str, words: &str) {
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["code"], code, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains(words), "{words:?} not in {answer}");
}

/// Asserts a hostile call failed in the connection, before any server code answered: a status the
/// server sends has no source, one the client makes from a broken connection (a refused TLS
/// handshake surfaces as "transport error" or, when the alert races the request, as a cancelled
/// call) has a transport error under it.
fn refused_by_transport(answer: &Value) {
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["causes"][0], "transport error", "{answer}");
}

/// Issue item 1: a fourth node joining with another node's or an IPv6 data-path address, and a
/// heartbeat carrying a malformed, a changed or a duplicate key or address, all while a service
/// scales: each is refused with what was wrong, and every other task runs and answers.
#[test]
fn one_node_cannot_break_the_others_data_plane() {
    let swarm = Swarm::up_with_spare(1, 2, 1, &[], &[]);
    let n1 = swarm.managers[0].clone();
    let (n2, n3, n4) = (swarm.host("n2"), swarm.host("n3"), swarm.host("n4"));
    create_serve(
        &swarm,
        &n1,
        &[
            "--detach",
            "--name",
            "web",
            "--replicas",
            "6",
            "--publish",
            "8080:80",
        ],
    );
    wait_running(&swarm, &n1, "web", "web's 6 tasks", |per| {
        per.values().sum::<usize>() == 6
    });
    swarm.ok(&n1, &["service", "scale", "--detach", "web=9"]);

    let manager = format!("{}:2377", n1.public_ip);
    let token = swarm.ok(&n1, &["swarm", "join-token", "-q", "worker"]);
    let token = token.trim();
    let n2_addr = n2.public_ip.to_string();

    // A fourth node asks for n2's data-path address: refused before anything is created. An
    // IPv6 data-path address is refused by the node itself, and by the managers from a node
    // that does not check (below).
    let join_with = |data_path: &str| {
        swarm.fails(
            &n4,
            &[
                "swarm",
                "join",
                "--token",
                token,
                "--advertise-addr",
                "eth0",
                "--data-path-addr",
                data_path,
                &manager,
            ],
        )
    };
    let said = join_with(&n2_addr);
    assert!(
        said.contains("is already node n2") && said.contains("--data-path-addr"),
        "{said}"
    );
    let said = join_with("fd00::14");
    assert!(said.contains("IPv4 only"), "{said}");
    let join = |addr: &str, key: &str| {
        hostile(
            &n4,
            &[
                "join",
                "--manager",
                &manager,
                "--token",
                token,
                "--hostname",
                "n4",
                "--data-path-addr",
                addr,
                "--wireguard-key",
                key,
            ],
        )
    };
    refused(&join("fd00::14", ""), "InvalidArgument", "IPv4 only");
    refused(
        &join(&n2_addr, ""),
        "FailedPrecondition",
        "is already node n2",
    );
    refused(
        &join("172.20.99.14", "bm90IGEga2V5"),
        "InvalidArgument",
        "not a WireGuard public key",
    );
    let n2_key = swarm.inspect(&n1, "n2")["Description"]["WireguardPublicKey"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!n2_key.is_empty());
    refused(
        &join("172.20.99.14", &n2_key),
        "FailedPrecondition",
        "is already node n2",
    );

    // n3's own certificate, heartbeating with a bad description.
    let certs = swarm.lab.host_dir(&n3).join("data/swarm/certs");
    let certs = certs.to_str().expect("a UTF-8 path");
    let n3_addr = n3.public_ip.to_string();
    let beat = |addr: &str, key: &str| {
        hostile(
            &swarm.lab.client().clone(),
            &[
                "heartbeat",
                "--manager",
                &manager,
                "--certs",
                certs,
                "--hostname",
                "n3",
                "--data-path-addr",
                addr,
                "--wireguard-key",
                key,
            ],
        )
    };
    refused(
        &beat(&n3_addr, "!!not-base64!!"),
        "InvalidArgument",
        "not a WireGuard public key",
    );
    refused(&beat(&n3_addr, &n2_key), "FailedPrecondition", "changed");
    let n3_key = swarm.inspect(&n1, "n3")["Description"]["WireguardPublicKey"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    refused(
        &beat(&n2_addr, &n3_key),
        "FailedPrecondition",
        "is already node n2",
    );
    refused(&beat("::1", &n3_key), "InvalidArgument", "IPv4 only");

    // Nothing of it reached the store, and every task runs and answers on every node.
    let nodes: Vec<Value> = swarm.nodes(&n1);
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    wait_running(&swarm, &n1, "web", "web's 9 tasks", |per| {
        per.values().sum::<usize>() == 9
    });
    for node in [&n1, &n2, &n3] {
        let ip = node.public_ip.to_string();
        let mut seen = BTreeSet::new();
        let waited = wait_until(
            &format!("{}:8080 to reach all nine tasks", node.name),
            Duration::from_secs(30),
            || {
                seen.extend(who_answers(&swarm, &ip, 8080, 27));
                Ok(seen.len() == 9)
            },
        );
        assert!(waited.is_ok(), "{}: {seen:?}", node.name);
    }
    assert_eq!(
        swarm.inspect(&n1, "n3")["Description"]["WireguardPublicKey"],
        n3_key.as_str()
    );
}

/// The raft ID `node` holds, from `node inspect` on `on`.
fn raft_id(swarm: &Swarm, on: &Host, node: &str) -> String {
    swarm.inspect(on, node)["ManagerStatus"]["RaftID"]
        .as_u64()
        .unwrap_or_else(|| panic!("{node} is a manager"))
        .to_string()
}

/// Issue item 2: raft takes messages only from its members, each speaking for itself, within
/// bounds. A demoted manager's saved (still valid) certificate is refused; a member claiming a
/// term of u64::MAX or another member's leadership, or a snapshot chunk at offset 2^40, is
/// refused; the swarm keeps its leader and its writes.
#[test]
fn raft_only_talks_to_its_members() {
    let swarm = Swarm::up(3, 0);
    let (n1, n2, n3) = (swarm.host("n1"), swarm.host("n2"), swarm.host("n3"));
    let (id1, id2, id3) = (
        raft_id(&swarm, &n1, "n1"),
        raft_id(&swarm, &n1, "n2"),
        raft_id(&swarm, &n1, "n3"),
    );
    let certs = |host: &Host| swarm.lab.host_dir(host).join("data/swarm/certs");
    // n3's manager certificate, kept before it is demoted (it stays valid for 90 days).
    let saved = swarm.lab.dir().join("n3-manager-certs");
    std::fs::create_dir_all(&saved).expect("a directory for the saved certificates");
    for file in ["node.crt", "node.key", "ca.crt"] {
        std::fs::copy(certs(&n3).join(file), saved.join(file)).expect("copy a certificate file");
    }
    swarm.ok(&n1, &["node", "demote", "n3"]);
    swarm.wait_nodes(&n1, "n3 a worker, out of the raft", |nodes| {
        nodes
            .iter()
            .any(|n| n["Hostname"] == "n3" && n["ManagerStatus"] == "" && n["Status"] == "Ready")
    });

    let saved = saved.to_str().expect("a UTF-8 path").to_owned();
    let n2_certs = certs(&n2).to_str().expect("a UTF-8 path").to_owned();
    let max = u64::MAX.to_string();
    let far = (1_u64 << 40).to_string();
    let client = swarm.lab.client().clone();
    for target in [&n1, &n2] {
        let manager = format!("{}:2377", target.public_ip);
        let call = |args: &[&str]| {
            let mut all = vec![args[0], "--manager", &manager];
            all.extend_from_slice(&args[1..]);
            hostile(&client, &all)
        };
        // The demoted manager: whatever it says, it is no longer heard.
        for (which, role) in [
            ("raft-append", "--leader"),
            ("raft-append-stream", "--leader"),
            ("raft-append-framed", "--leader"),
            ("raft-vote", "--candidate"),
        ] {
            refused(
                &call(&[which, "--certs", &saved, role, &id3, "--term", &max]),
                "PermissionDenied",
                "not a member",
            );
        }
        refused(
            &call(&[
                "raft-snapshot",
                "--certs",
                &saved,
                "--leader",
                &id3,
                "--term",
                "1",
                "--offset",
                &far,
            ]),
            "PermissionDenied",
            "not a member",
        );
        // A member: only for itself, and within bounds, on a stream of appends and on the
        // appends' own protocol too.
        for append in ["raft-append", "raft-append-stream", "raft-append-framed"] {
            refused(
                &call(&[
                    append, "--certs", &n2_certs, "--leader", &id2, "--term", &max,
                ]),
                "InvalidArgument",
                "above the highest accepted",
            );
            refused(
                &call(&[
                    append, "--certs", &n2_certs, "--leader", &id1, "--term", "2",
                ]),
                "PermissionDenied",
                "does not hold",
            );
        }
        // A frame that claims more than the largest raft message is refused from its header,
        // before the follower reads (or makes room for) its body.
        let over = (shoal_control::raft::network::MAX_MESSAGE + 1).to_string();
        refused(
            &call(&[
                "raft-append-framed",
                "--certs",
                &n2_certs,
                "--leader",
                &id2,
                "--term",
                "2",
                "--claim-bytes",
                &over,
            ]),
            "InvalidArgument",
            &format!("a frame of {over} bytes, over the"),
        );
        refused(
            &call(&[
                "raft-snapshot",
                "--certs",
                &n2_certs,
                "--leader",
                &id2,
                "--term",
                "1000",
                "--offset",
                &far,
            ]),
            "InvalidArgument",
            "past",
        );
    }

    // The swarm still has its leader, and takes writes through either manager.
    for (on, label) in [(&n1, "after=1"), (&n2, "after=2")] {
        swarm.ok(on, &["node", "update", "--label-add", label, "n1"]);
    }
    let nodes = swarm.nodes(&n1);
    assert!(
        nodes.iter().any(|n| n["ManagerStatus"] == "Leader"),
        "{nodes:?}"
    );
    assert!(nodes.iter().all(|n| n["Status"] == "Ready"), "{nodes:?}");
    assert_eq!(swarm.inspect(&n2, "n1")["Spec"]["Labels"]["after"], "2");
}

/// Issue item 4: 1,100 idle TLS connections without a certificate and large requests from
/// clients without one do not stop the swarm: `node ls` and writes go on through every manager,
/// the manager closes what it does not keep, and its memory stays bounded.
#[test]
fn the_cluster_port_holds_against_clients_without_a_certificate() {
    let swarm = Swarm::up(3, 0);
    let (n1, n2) = (swarm.host("n1"), swarm.host("n2"));
    let token = swarm.ok(&n1, &["swarm", "join-token", "-q", "worker"]);
    let before = swarm.lab.shoald_rss_mib(&n1).expect("n1's memory");
    let mut flood = swarm
        .lab
        .client()
        .command(binary("shoal-hostile").expect("shoal-hostile is built"))
        .expect("a command in the client's namespace");
    flood
        .args([
            "conn-flood",
            "--manager",
            &format!("{}:2377", n1.public_ip),
            "--token",
            token.trim(),
            "--connections",
            "1100",
            "--frames",
            "4",
            "--seconds",
            "15",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let flood = flood.spawn().expect("the flood starts");
    std::thread::sleep(Duration::from_secs(3));
    let mut peak = before;
    for round in 0..10 {
        for on in [&n1, &n2] {
            let nodes = swarm.nodes(on);
            assert_eq!(nodes.len(), 3, "{nodes:?}");
            swarm.ok(
                on,
                &[
                    "node",
                    "update",
                    "--label-add",
                    &format!("round={round}"),
                    "n3",
                ],
            );
        }
        peak = peak.max(swarm.lab.shoald_rss_mib(&n1).expect("n1's memory"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = flood.wait_with_output().expect("the flood ends");
    assert!(out.status.success(), "{}", output_text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("the flood's report");
    println!(
        "conn flood on n1: {report}; shoald RSS {before:.0} MiB before, {peak:.0} MiB at most"
    );
    // The manager refused or closed all but a few of them (16 at most from one address), and
    // took no large request without a certificate.
    let count = |key: &str| report[key].as_u64().unwrap_or_default();
    // The manager was there: every connection reached it, TLS came up on some of them, and
    // large requests were sent.
    assert_eq!(count("unreachable"), 0, "{report}");
    assert!(count("closed_by_manager") + count("held") > 0, "{report}");
    assert!(count("frames") > 0, "{report}");
    assert_eq!(
        count("refused_by_manager") + count("closed_by_manager") + count("held"),
        1_100,
        "{report}"
    );
    assert!(count("held") <= 16, "{report}");
    assert_eq!(report["frames"], report["frames_refused"], "{report}");
    // Refused by the manager's checks: `Ca.Join` bodies over 64 KiB, `Dispatcher` calls
    // without a node certificate.
    let codes = &report["frame_codes"];
    assert!(codes["OutOfRange"].as_u64() > Some(0), "{report}");
    assert!(codes["Unauthenticated"].as_u64() > Some(0), "{report}");
    assert!(
        peak - before < 256.0,
        "RSS grew from {before:.0} to {peak:.0} MiB"
    );
    assert_eq!(swarm.inspect(&n2, "n3")["Spec"]["Labels"]["round"], "9");
}

/// What each node reports of its certificate, what the cluster says of the rotation, and each
/// daemon's errors: the evidence when a rotation does not converge.
fn rotation_report(swarm: &Swarm) -> String {
    let n1 = swarm.host("n1");
    // Never panics: it runs while a failure is being reported.
    let said = |args: &[&str]| match swarm.lab.shoal(&n1, args) {
        Ok(out) => output_text(&out),
        Err(e) => e.to_string(),
    };
    let mut report = format!("swarm inspect: {}\n", said(&["swarm", "inspect"]));
    for node in swarm.nodes(&n1) {
        let id = node["ID"].as_str().unwrap_or_default();
        report += &format!(
            "{} {} {}: {}\n",
            node["Hostname"],
            node["Status"],
            node["ManagerStatus"],
            said(&[
                "node",
                "inspect",
                "--format",
                "{{json .Description.TLSInfo}}",
                id
            ])
        );
    }
    for host in ["n1", "n2", "n3", "n4"] {
        let errors = swarm.lab.daemon_errors(&swarm.host(host));
        report += &format!("{host}'s errors: {errors:#?}\n");
    }
    report
}

/// Issue item 3: certificates renew themselves and the root rotates without an outage.
/// `--cert-expiry` takes at least an hour; `swarm ca --rotate` on 3 managers and a worker,
/// under a steady stream of writes and heartbeats, fails nothing and ends with every node on
/// the new root; a manager certificate of the old root and the old join token are then refused.
#[test]
fn the_root_rotates_under_load_and_the_old_root_is_refused() {
    let swarm = Swarm::up_with(3, 1, &["--dispatcher-heartbeat", "1s"]);
    let (n1, n2, n3) = (swarm.host("n1"), swarm.host("n2"), swarm.host("n3"));
    let said = swarm.fails(&n1, &["swarm", "update", "--cert-expiry", "30m"]);
    assert!(
        said.contains("minimum certificate expiry time is: 1h0m0s"),
        "{said}"
    );
    swarm.ok(&n1, &["swarm", "update", "--cert-expiry", "2h"]);
    let cluster = |on: &Host| -> Value {
        serde_json::from_str::<Value>(&swarm.ok(on, &["swarm", "inspect"])).expect("JSON")[0]
            .clone()
    };
    assert_eq!(
        cluster(&n1)["Spec"]["CAConfig"]["NodeCertExpiry"],
        7_200_000_000_000_u64
    );
    let before = cluster(&n1);
    let old_token = swarm.ok(&n1, &["swarm", "join-token", "-q", "worker"]);
    let saved = swarm.lab.dir().join("n3-old-root-certs");
    std::fs::create_dir_all(&saved).expect("a directory for the saved certificates");
    let certs = swarm.lab.host_dir(&n3).join("data/swarm/certs");
    for file in ["node.crt", "node.key", "ca.crt"] {
        std::fs::copy(certs.join(file), saved.join(file)).expect("copy a certificate file");
    }

    // A steady stream of writes through two managers, and every node Ready, all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let lab = &swarm;
        let (n1, n2) = (n1.clone(), n2.clone());
        move || {
            let (mut writes, mut failures, mut not_ready) = (0, Vec::new(), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let on = if writes % 2 == 0 { &n1 } else { &n2 };
                let label = format!("w={writes}");
                let update = ["node", "update", "--label-add", &label, "n4"];
                match lab.lab.shoal_within(on, &update, Duration::from_secs(60)) {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => failures.push(output_text(&out)),
                    Err(e) => failures.push(e.to_string()),
                }
                writes += 1;
                if writes % 5 == 0 {
                    let nodes = lab.nodes(&n1);
                    if nodes.len() != 4 || nodes.iter().any(|n| n["Status"] != "Ready") {
                        not_ready.push(format!("{nodes:?}"));
                    }
                }
            }
            (writes, failures, not_ready)
        }
    };
    let (rotated, (writes, failures, not_ready)) = std::thread::scope(|scope| {
        let writing = scope.spawn(writer);
        std::thread::sleep(Duration::from_secs(1));
        // No panic in here: the writer would never be told to stop, and the scope would wait.
        // Bounded: the CLI waits for every node to report the new root, and a node that never
        // does must fail the test with what each node reports, not hang it.
        let rotated =
            swarm
                .lab
                .shoal_within(&n1, &["swarm", "ca", "--rotate"], Duration::from_secs(120));
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (rotated, writing.join().expect("the writer"))
    });
    let rotated = rotated.unwrap_or_else(|e| panic!("{e}\n{}", rotation_report(&swarm)));
    assert!(rotated.status.success(), "{}", output_text(&rotated));
    let rotated = String::from_utf8_lossy(&rotated.stdout).into_owned();
    println!("{writes} writes during the rotation");
    assert!(writes > 0, "no write was made during the rotation");
    assert!(
        failures.is_empty(),
        "{} of {writes} writes failed: {failures:#?}",
        failures.len()
    );
    assert!(not_ready.is_empty(), "a node was not Ready: {not_ready:#?}");
    assert!(
        rotated.contains("rotated TLS certificates:  4/4 nodes"),
        "{rotated}"
    );
    assert!(
        rotated.trim_end().ends_with("-----END CERTIFICATE-----"),
        "{rotated}"
    );

    // Every node ends on the new root, and reports it.
    let after = cluster(&n1);
    assert_ne!(after["TLSInfo"]["Digest"], before["TLSInfo"]["Digest"]);
    assert_eq!(after["RootRotationInProgress"], false);
    let waited = wait_until(
        "every node to report the new root",
        Duration::from_secs(30),
        || {
            Ok(swarm.nodes(&n1).iter().all(|n| {
                let id = n["ID"].as_str().unwrap_or_default();
                let tls = &swarm.inspect(&n1, id)["Description"]["TLSInfo"];
                tls["TrustRoot"] == after["TLSInfo"]["TrustRoot"]
                    && tls["CertIssuerPublicKey"] == after["TLSInfo"]["CertIssuerPublicKey"]
            }))
        },
    );
    assert!(waited.is_ok(), "{waited:?}");
    let pretty = swarm.ok(&n1, &["node", "inspect", "--pretty", "n4"]);
    assert!(pretty.contains("Certificate Expiry:"), "{pretty}");

    // The old root's manager certificate and join token are refused by every manager. The
    // client trusts the new root (as the managers present it), so that what refuses is the
    // manager; the same calls with n3's current certificate are the control.
    let saved = saved.to_str().expect("a UTF-8 path");
    let current = swarm.lab.dir().join("n3-new-root-certs");
    std::fs::create_dir_all(&current).expect("a directory for the current certificates");
    for file in ["node.crt", "node.key", "ca.crt"] {
        std::fs::copy(certs.join(file), current.join(file)).expect("copy a certificate file");
    }
    let current = current.to_str().expect("a UTF-8 path");
    let new_roots = format!("{current}/ca.crt");
    let new_token = swarm.ok(&n1, &["swarm", "join-token", "-q", "worker"]);
    let (old_secret, new_digest) = (
        old_token.trim().rsplit('-').next().expect("a secret"),
        new_token.trim().rsplit('-').nth(1).expect("a digest"),
    );
    // The new root's digest (the managers' own), with the secret of the old token.
    let stale_token = format!("SWMTKN-1-{new_digest}-{old_secret}");
    let client = swarm.lab.client().clone();
    // n3's description as stored: a heartbeat that changes nothing.
    let described = swarm.inspect(&n1, "n3")["Description"].clone();
    let text = |field: &str| described[field].as_str().unwrap_or_default().to_owned();
    let (data_path, key) = (text("DataPathAddr"), text("WireguardPublicKey"));
    let heartbeat = |certs: &str, addr: &str| {
        hostile(
            &client,
            &[
                "heartbeat",
                "--manager",
                addr,
                "--certs",
                certs,
                "--ca",
                &new_roots,
                "--hostname",
                "n3",
                "--data-path-addr",
                &data_path,
                "--wireguard-key",
                &key,
            ],
        )
    };
    for manager in [&n1, &n2, &n3] {
        let addr = format!("{}:2377", manager.public_ip);
        let control = heartbeat(current, &addr);
        assert_eq!(control["ok"], true, "the control: {control}");
        // The same heartbeat with the old certificate: the connection is refused (at the TLS
        // level: the call never reaches the dispatcher).
        let answer = heartbeat(saved, &addr);
        refused_by_transport(&answer);
        let append = |which: &str| {
            hostile(
                &client,
                &[
                    which,
                    "--manager",
                    &addr,
                    "--certs",
                    saved,
                    "--ca",
                    &new_roots,
                    "--leader",
                    "1",
                    "--term",
                    "1",
                ],
            )
        };
        refused_by_transport(&append("raft-append"));
        // On the appends' own protocol: the TLS handshake refuses it, no follower answers.
        let answer = append("raft-append-framed");
        assert_eq!(answer["ok"], false, "{answer}");
        assert_eq!(answer["code"], "Unavailable", "{answer}");
        let answer = hostile(
            &client,
            &[
                "join",
                "--manager",
                &addr,
                "--token",
                &stale_token,
                "--hostname",
                "n9",
                "--data-path-addr",
                "172.20.99.19",
            ],
        );
        assert_eq!(answer["ok"], false, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("valid join token")),
            "{answer}"
        );
    }
    // And the swarm goes on.
    swarm.ok(
        &n3,
        &["node", "update", "--label-add", "after=rotation", "n4"],
    );
}

/// Issue item 10: a removed node's certificate, valid until it expires, no longer reports task
/// status nor hears its assignment.
#[test]
fn a_removed_node_is_no_longer_heard() {
    let swarm = Swarm::up(1, 2);
    let (n1, n3) = (swarm.host("n1"), swarm.host("n3"));
    create_serve(
        &swarm,
        &n1,
        &["--detach", "--name", "web", "--replicas", "3"],
    );
    wait_running(&swarm, &n1, "web", "web's 3 tasks", |per| {
        per.values().sum::<usize>() == 3
    });
    let saved = swarm.lab.dir().join("n3-certs");
    std::fs::create_dir_all(&saved).expect("a directory for the saved certificates");
    let certs = swarm.lab.host_dir(&n3).join("data/swarm/certs");
    for file in ["node.crt", "node.key", "ca.crt"] {
        std::fs::copy(certs.join(file), saved.join(file)).expect("copy a certificate file");
    }
    let saved = saved.to_str().expect("a UTF-8 path").to_owned();
    let manager = format!("{}:2377", n1.public_ip);
    let client = swarm.lab.client().clone();
    // While n3 is a member, its certificate opens its stream.
    let answer = hostile(
        &client,
        &["assignments", "--manager", &manager, "--certs", &saved],
    );
    assert_eq!(answer["ok"], true, "{answer}");
    let n3_task = tasks(&swarm, &n1, "web")
        .into_iter()
        .find(|t| t["Node"] == "n3")
        .and_then(|t| t["ID"].as_str().map(str::to_owned))
        .expect("a task on n3");
    swarm.ok(&n1, &["node", "rm", "--force", "n3"]);
    for which in ["assignments", "report"] {
        let answer = hostile(
            &client,
            &[
                which,
                "--manager",
                &manager,
                "--certs",
                &saved,
                "--task",
                &n3_task,
            ],
        );
        refused(&answer, "NotFound", "not in the swarm");
    }
    wait_running(&swarm, &n1, "web", "web's 3 tasks on n1 and n2", |per| {
        !per.contains_key("n3") && per.values().sum::<usize>() == 3
    });
}

/// Issue items 6 and 7: the swarm's own ports are never published, and numbers and strings
/// out of bounds are refused with what the bound is; nothing is created.
#[test]
fn the_swarm_s_own_ports_and_numbers_out_of_bounds_are_refused() {
    let swarm = Swarm::up(1, 0);
    let n1 = swarm.host("n1");
    let tool = labtool_path();
    let create = |extra: &[&str]| {
        let mut args = vec!["service", "create", "--detach", "--name", "bad"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["host", &tool, "serve", "--port", "80"]);
        let out = swarm.lab.shoal(&n1, &args).expect("run shoal");
        assert!(!out.status.success(), "{args:?} was accepted");
        output_text(&out)
    };
    for (publish, words) in [
        ("2377:80", "control-plane port"),
        (
            "published=4789,target=80,protocol=udp",
            "data-path (VXLAN) port",
        ),
        ("51820:80", "WireGuard port"),
        ("published=2377,target=80,mode=host", "control-plane port"),
    ] {
        let said = create(&["--publish", publish]);
        assert!(
            said.contains("cannot be published") && said.contains(words),
            "{said}"
        );
    }
    let said = create(&["--replicas", "100000"]);
    assert!(said.contains("at most 10000"), "{said}");
    let said = create(&["--replicas", "2000", "--publish", "8080:80"]);
    assert!(
        said.contains("routing mesh") && said.contains("at most 1310"),
        "{said}"
    );
    let long = "x".repeat(40_000);
    let said = create(&["--env", &format!("BIG={long}")]);
    assert!(said.contains("at most"), "{said}");
    assert_eq!(swarm.ok(&n1, &["service", "ls", "-q"]).trim(), "");
    for (args, words) in [
        (
            vec!["swarm", "update", "--dispatcher-heartbeat", "100000h"],
            "between 1s and 86400s",
        ),
        (
            vec!["swarm", "update", "--snapshot-interval", "0"],
            "between 1 and",
        ),
        (
            vec!["node", "update", "--label-add", &format!("k={long}"), "n1"],
            "at most",
        ),
    ] {
        let said = swarm.fails(&n1, &args);
        assert!(said.contains(words), "{args:?}: {said}");
    }
    // A node's labels are counted as they will be: at the limit, a new key is refused, while a
    // changed value, or a key removed as another is added, is not.
    let labels: Vec<String> = (0..256).map(|i| format!("l{i}=v")).collect();
    let mut args = vec!["node", "update"];
    for label in &labels {
        args.extend_from_slice(&["--label-add", label]);
    }
    args.push("n1");
    swarm.ok(&n1, &args);
    let said = swarm.fails(&n1, &["node", "update", "--label-add", "extra=1", "n1"]);
    assert!(said.contains("at most"), "{said}");
    swarm.ok(&n1, &["node", "update", "--label-add", "l0=changed", "n1"]);
    swarm.ok(
        &n1,
        &[
            "node",
            "update",
            "--label-rm",
            "l1",
            "--label-add",
            "extra=1",
            "n1",
        ],
    );

    // Issue item 9: shoald's private umask (077) is its own; an exec task's files get the usual
    // modes.
    swarm.ok(
        &n1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "umask",
            "host",
            "/bin/sh",
            "-c",
            "umask; sleep 600",
        ],
    );
    wait_running(&swarm, &n1, "umask", "the umask task", |per| {
        per.values().sum::<usize>() == 1
    });
    let mut said = String::new();
    let logged = wait_until("the task's umask", Duration::from_secs(10), || {
        said = swarm.ok(&n1, &["service", "logs", "--raw", "umask"]);
        Ok(!said.trim().is_empty())
    });
    assert!(logged.is_ok(), "{logged:?}");
    assert_eq!(said.trim(), "0022");
}

/// Issue item 7: the ingress network comes from `--default-addr-pool`, in subnets of
/// `--default-addr-pool-mask-length`, and skips a range the host routes; bad pools are refused.
#[test]
fn the_ingress_subnet_comes_from_the_address_pool_and_shadows_no_host_route() {
    let swarm = Swarm::daemons(1);
    let n1 = swarm.host("n1");
    for (pool, length, words) in [
        ("10.1.2.3/16", "24", "host bits"),
        ("10.99.0.0/28", "26", "smaller than one /26"),
        ("10.0.0.0/8", "31", "between 8 and 29"),
    ] {
        let said = swarm.fails(
            &n1,
            &[
                "swarm",
                "init",
                "--advertise-addr",
                "eth0",
                "--default-addr-pool",
                pool,
                "--default-addr-pool-mask-length",
                length,
            ],
        );
        assert!(said.contains(words), "{pool} /{length}: {said}");
    }
    // The host reaches 10.99.0.0/26 through its data interface: the ingress network takes the
    // next subnet.
    let out = swarm
        .lab
        .run(&n1, "ip", &["route", "add", "10.99.0.0/26", "dev", "eth1"])
        .expect("run ip");
    assert!(out.status.success(), "{}", output_text(&out));
    swarm.ok(
        &n1,
        &[
            "swarm",
            "init",
            "--advertise-addr",
            "eth0",
            "--default-addr-pool",
            "10.99.0.0/16",
            "--default-addr-pool-mask-length",
            "26",
        ],
    );
    let subnet = |name: &str| -> String {
        let out = swarm.ok(&n1, &["network", "inspect", name]);
        let all: Value = serde_json::from_str(&out).expect("JSON");
        all[0]["IPAMOptions"]["Configs"][0]["Subnet"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(subnet("ingress"), "10.99.0.64/26");
    swarm.ok(
        &n1,
        &["network", "create", "--driver", "overlay", "backend"],
    );
    assert_eq!(subnet("backend"), "10.99.0.0/26");
    let cluster: Value = serde_json::from_str(&swarm.ok(&n1, &["swarm", "inspect"])).expect("JSON");
    assert_eq!(cluster[0]["DefaultAddrPool"][0], "10.99.0.0/16");
    assert_eq!(cluster[0]["SubnetSize"], 26);
}

/// Issue item 5: 400,000 spoofed SYNs at a one-replica service through n1: real clients are
/// served right after (no waiting), each gets its own answer, and none is ever sent another
/// flow's handshake (every SYN-ACK the client gets acknowledges a SYN it sent on that port).
#[test]
fn a_syn_flood_cannot_starve_a_published_service() {
    let swarm = Swarm::up(1, 1);
    let n1 = swarm.host("n1");
    create_serve(
        &swarm,
        &n1,
        &[
            "--detach",
            "--name",
            "web",
            "--replicas",
            "1",
            "--publish",
            "8080:80",
        ],
    );
    wait_running(&swarm, &n1, "web", "web's task", |per| {
        per.values().sum::<usize>() == 1
    });
    let target = format!("{}:8080", n1.public_ip);
    let waited = wait_until("web to answer through n1", Duration::from_secs(30), || {
        Ok(who_answers(&swarm, &n1.public_ip.to_string(), 8080, 1).len() == 1)
    });
    assert!(waited.is_ok(), "{waited:?}");

    let client = swarm.lab.client().clone();
    let mut handshakes = client
        .command("tcpdump")
        .expect("tcpdump in the client's namespace");
    handshakes
        .args(["-i", "eth0", "-n", "-l", "-S"])
        .arg(format!(
            "host {} and tcp port 8080 and tcp[tcpflags] & tcp-syn != 0",
            client.public_ip
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let handshakes = handshakes.spawn().expect("tcpdump starts");
    std::thread::sleep(Duration::from_millis(500));
    let flood = hostile(
        &client,
        &["syn-flood", "--target", &target, "--count", "400000"],
    );
    assert_eq!(flood["sent"], 400_000, "{flood}");
    // At once: 40 requests, one connection each.
    let answered = who_answers(&swarm, &n1.public_ip.to_string(), 8080, 40);
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(handshakes.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let captured = handshakes.wait_with_output().expect("tcpdump ends");
    let inspect: Value = serde_json::from_str(&swarm.ok(&n1, &["dataplane", "inspect"]))
        .expect("dataplane inspect is JSON");
    let counters = &inspect["mesh"]["services"]["web"];
    println!("{flood}; web on n1: {counters}");
    assert_eq!(
        answered.len(),
        40,
        "answers right after the flood: {answered:?}"
    );
    let name = answered.first().cloned().unwrap_or_default();
    assert!(answered.iter().all(|a| *a == name), "{answered:?}");
    // Every SYN-ACK the client got acknowledges the SYN it sent from that port.
    let captured = String::from_utf8_lossy(&captured.stdout);
    let field = |line: &str, name: &str| -> Option<u32> {
        line.split(&format!(" {name} "))
            .nth(1)?
            .split([',', ' '])
            .next()?
            .parse()
            .ok()
    };
    let client_ip = client.public_ip.to_string();
    let mut sent: BTreeMap<String, u32> = BTreeMap::new();
    let mut acknowledged = 0;
    for line in captured.lines() {
        let Some((from, rest)) = line
            .split_once(" IP ")
            .map(|(_, r)| r)
            .and_then(|r| r.split_once(" > "))
        else {
            continue;
        };
        let to = rest.split(':').next().unwrap_or_default();
        if line.contains("Flags [S],") && from.starts_with(&client_ip) {
            sent.insert(from.to_owned(), field(line, "seq").expect("a SYN's seq"));
        } else if line.contains("Flags [S.],") && to.starts_with(&client_ip) {
            let ack = field(line, "ack").expect("a SYN-ACK's ack");
            assert_eq!(
                sent.get(to).map(|seq| seq.wrapping_add(1)),
                Some(ack),
                "a SYN-ACK for a handshake the client did not start on {to}: {line}"
            );
            acknowledged += 1;
        }
    }
    assert!(
        acknowledged >= 40,
        "{acknowledged} handshakes seen:\n{captured}"
    );
    assert!(
        counters["connections"].as_u64().unwrap_or_default() >= 40,
        "{counters}"
    );
}
